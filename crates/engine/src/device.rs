//! Which device runs the encoder, decided once at load beside instruction set and precision.
//!
//! The CPU always embeds the tokens (the 250,002-row word table stays mapped on the CPU; only a
//! batch's rows travel) and pools the result. The device decides where the encoder's blocks run:
//! on the CPU kernels ([`crate::kernels`]) or, with the `gpu` cargo feature, on a wgpu adapter
//! (Vulkan, Metal, DX12: [`crate::gpu`]). `auto` takes a discrete or integrated GPU when there is
//! one and the CPU otherwise; a software adapter (Mesa's lavapipe) runs only when `gpu` is asked
//! for. What was chosen, and why anything differs from what was asked, is the [`DevicePlan`].

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::precision::Precision;

/// The environment variable that sets the device where a front end's option does not.
pub const DEVICE_ENV: &str = "JINA_DEVICE";

/// The device a user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum DeviceChoice {
    /// The CPU kernels (the default of [`crate::LoadOptions`]).
    #[default]
    Cpu,
    /// A GPU through wgpu; a software adapter counts. An error when there is none.
    Gpu,
    /// A hardware GPU when there is one, else the CPU.
    Auto,
}

impl DeviceChoice {
    /// Every choice, in the order the help lists them.
    pub const ALL: [DeviceChoice; 3] = [DeviceChoice::Cpu, DeviceChoice::Gpu, DeviceChoice::Auto];

    /// The name on the command line, in `JINA_DEVICE` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Gpu => "gpu",
            DeviceChoice::Auto => "auto",
        }
    }

    /// `JINA_DEVICE` when it is set (an unknown value is an error naming it), else `default`.
    pub fn from_env_or(default: DeviceChoice) -> Result<DeviceChoice> {
        match std::env::var(DEVICE_ENV) {
            Ok(value) if !value.trim().is_empty() => value.trim().parse().map_err(|_| {
                Error::InvalidRequest(format!(
                    "{DEVICE_ENV}={value:?} is not a device; accepted values are cpu, gpu, auto"
                ))
            }),
            _ => Ok(default),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        DeviceChoice::ALL
            .into_iter()
            .find(|d| d.name() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "device {s:?} is not supported; accepted values are cpu, gpu, auto"
                ))
            })
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What kind of adapter a GPU is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuKind {
    /// A GPU with its own memory.
    Discrete,
    /// A GPU sharing the CPU's memory (Apple silicon, laptops).
    Integrated,
    /// A GPU behind a hypervisor.
    Virtual,
    /// A driver that runs the shaders on the CPU (Mesa's lavapipe, WARP).
    Software,
    /// Anything else the driver reports.
    Other,
}

impl GpuKind {
    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            GpuKind::Discrete => "discrete",
            GpuKind::Integrated => "integrated",
            GpuKind::Virtual => "virtual",
            GpuKind::Software => "software",
            GpuKind::Other => "other",
        }
    }

    /// Whether `auto` may take it: a real GPU, not the CPU behind a Vulkan driver.
    pub fn is_hardware(self) -> bool {
        matches!(
            self,
            GpuKind::Discrete | GpuKind::Integrated | GpuKind::Virtual
        )
    }
}

/// The GPU adapter a plan runs on, with the limits that size its batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuAdapterInfo {
    /// The adapter's name (`llvmpipe (LLVM 19.1.7, 256 bits)`, `NVIDIA L4`, `Apple M2`).
    pub name: String,
    /// The API wgpu drives it through: Vulkan, Metal, Dx12.
    pub backend: String,
    /// Driver name and version, as the driver reports them.
    pub driver: String,
    /// Discrete, integrated, virtual or software.
    pub kind: GpuKind,
    /// Largest storage buffer one shader may bind (lavapipe: 128 MiB).
    pub max_storage_buffer_bytes: u64,
    /// Largest buffer the device may allocate.
    pub max_buffer_bytes: u64,
    /// Whether the adapter offers `shader-f16`.
    pub shader_f16: bool,
}

/// Device memory of a model on a GPU: its weights, and the most one forward pass allocated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Weights, built-in LoRA tensors and the rotary table, uploaded once.
    pub weight_bytes: u64,
    /// The largest set of per-batch buffers so far.
    pub peak_batch_bytes: u64,
}

/// Where the encoder runs and why: chosen once at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePlan {
    /// The choice asked for.
    pub requested: DeviceChoice,
    /// The GPU that runs the blocks; `None`: the CPU kernels do.
    pub gpu: Option<GpuAdapterInfo>,
    /// What each operation runs on and in which precision, on a GPU plan (empty on the CPU,
    /// whose kernels are the [`crate::KernelPlan`]'s).
    pub operations: Vec<(&'static str, String)>,
    /// The precision the blocks run at on the GPU: f16 where it was asked for and the adapter
    /// has `shader-f16`, else f32. `None` on the CPU, whose precision is the kernel plan's.
    pub precision: Option<Precision>,
    /// Why the GPU's precision differs from the one asked for (empty on the CPU).
    pub precision_fallbacks: Vec<String>,
    /// Why the device differs from what was asked for, one line each.
    pub fallbacks: Vec<String>,
}

impl DevicePlan {
    /// A plan on the CPU, with the reason when another device was asked for.
    pub fn cpu(requested: DeviceChoice, reason: Option<String>) -> Self {
        DevicePlan {
            requested,
            gpu: None,
            operations: Vec::new(),
            precision: None,
            precision_fallbacks: Vec::new(),
            fallbacks: reason.into_iter().collect(),
        }
    }

    /// `cpu` or `gpu`: what runs.
    pub fn name(&self) -> &'static str {
        if self.gpu.is_some() {
            "gpu"
        } else {
            "cpu"
        }
    }

    /// Whether a GPU runs the encoder.
    pub fn is_gpu(&self) -> bool {
        self.gpu.is_some()
    }

    /// How `operation` (`linear`, `attention`, ...) runs on the GPU; `None` on the CPU.
    pub fn operation(&self, operation: &str) -> Option<&str> {
        self.operations
            .iter()
            .find(|(op, _)| *op == operation)
            .map(|(_, how)| how.as_str())
    }

    /// One line for logs and reports: the device, and on a GPU its adapter, API and kind.
    pub fn summary(&self) -> String {
        match &self.gpu {
            None => "cpu".to_string(),
            Some(gpu) => format!(
                "gpu: {} ({}, {}, driver {}; max storage buffer {} MiB{})",
                gpu.name,
                gpu.backend,
                gpu.kind.name(),
                if gpu.driver.is_empty() {
                    "unknown"
                } else {
                    &gpu.driver
                },
                gpu.max_storage_buffer_bytes >> 20,
                if gpu.shader_f16 { ", shader-f16" } else { "" },
            ),
        }
    }
}

/// The plan `requested` resolves to on this machine for `precision`, as a model load would make
/// it (the GPU adapter is opened to read its limits, and closed again; no weights are uploaded).
pub fn plan_device(requested: DeviceChoice, precision: Precision) -> Result<DevicePlan> {
    resolve(requested, precision).map(|(plan, _)| plan)
}

/// An opened GPU, as the encoder takes it (nothing can be opened without the `gpu` feature).
#[cfg(feature = "gpu")]
pub(crate) type GpuHandle = crate::gpu::GpuContext;
/// An opened GPU, as the encoder takes it (nothing can be opened without the `gpu` feature).
#[cfg(not(feature = "gpu"))]
pub(crate) type GpuHandle = std::convert::Infallible;

/// Resolves `requested` into a plan and, on a GPU, the opened device. Without the `gpu`
/// feature, `gpu` is an error that says how to build it and `auto` is the CPU.
#[cfg(not(feature = "gpu"))]
pub(crate) fn resolve(
    requested: DeviceChoice,
    _precision: Precision,
) -> Result<(DevicePlan, Option<GpuHandle>)> {
    const NOT_BUILT: &str = "this build has no GPU backend (build with `--features gpu`)";
    match requested {
        DeviceChoice::Cpu => Ok((DevicePlan::cpu(requested, None), None)),
        DeviceChoice::Auto => Ok((
            DevicePlan::cpu(requested, Some(format!("auto: {NOT_BUILT}"))),
            None,
        )),
        DeviceChoice::Gpu => Err(Error::Device(format!("--device gpu: {NOT_BUILT}"))),
    }
}

/// Resolves `requested` into a plan (its GPU precision from `precision`) and, on a GPU, the
/// opened device.
#[cfg(feature = "gpu")]
pub(crate) fn resolve(
    requested: DeviceChoice,
    precision: Precision,
) -> Result<(DevicePlan, Option<GpuHandle>)> {
    use crate::gpu::GpuContext;
    match requested {
        DeviceChoice::Cpu => Ok((DevicePlan::cpu(requested, None), None)),
        DeviceChoice::Gpu => {
            let context = GpuContext::open(false)?.ok_or_else(|| {
                Error::Device(
                    "--device gpu: no GPU adapter was found (no Vulkan, Metal or DX12 driver; \
                     on Linux without a GPU, Mesa's lavapipe provides one: scripts/setup-lavapipe.sh)"
                        .into(),
                )
            })?;
            Ok((context.plan(requested, precision), Some(context)))
        }
        DeviceChoice::Auto => match GpuContext::open(true) {
            Ok(Some(context)) => Ok((context.plan(requested, precision), Some(context))),
            Ok(None) => Ok((
                DevicePlan::cpu(requested, Some("auto: no hardware GPU adapter".into())),
                None,
            )),
            Err(e) => Ok((DevicePlan::cpu(requested, Some(format!("auto: {e}"))), None)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_by_name_and_refuse_others_with_the_accepted_values() {
        for choice in DeviceChoice::ALL {
            assert_eq!(choice.name().parse::<DeviceChoice>().unwrap(), choice);
        }
        assert_eq!("GPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::Gpu);
        let err = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(
            err.contains("\"tpu\"") && err.contains("cpu, gpu, auto"),
            "{err}"
        );
    }

    #[cfg(not(feature = "gpu"))]
    #[test]
    fn without_the_gpu_feature_gpu_is_refused_and_auto_is_the_cpu() {
        let err = resolve(DeviceChoice::Gpu, Precision::F32)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--features gpu"), "{err}");
        let (plan, _) = resolve(DeviceChoice::Auto, Precision::F32).unwrap();
        assert_eq!(plan.name(), "cpu");
        assert!(
            plan.fallbacks[0].contains("no GPU backend"),
            "{:?}",
            plan.fallbacks
        );
    }
}
