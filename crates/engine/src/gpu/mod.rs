//! The GPU backend, through wgpu (Vulkan, Metal, DX12): the encoder's blocks on a GPU.
//!
//! - [`GpuContext`]: the adapter chosen (see [`crate::device`]), its device and queue, its limits,
//!   and the first error or loss the driver reported, so that a failure becomes an
//!   [`Error::Device`] instead of a panic or a hang.
//! - `kernels`: one WGSL file per operation family (`shaders/`), compiled once at load, and the
//!   dispatch of each.
//! - `blocks`: the weights uploaded once (linear weights in their bf16 form, unpacked in the
//!   shaders) and the forward pass of the blocks, top to bottom like `model.rs`.
//!
//! The word table stays on the CPU, which embeds a batch's tokens and uploads only its rows;
//! the last layer's token vectors come back for pooling. Tested on Mesa's lavapipe
//! (`scripts/test-gpu.sh`).

mod blocks;
mod kernels;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) use blocks::GpuBlocks;

use crate::device::{DeviceChoice, DevicePlan, GpuAdapterInfo, GpuKind};
use crate::error::{Error, Result};
use crate::precision::Precision;

/// The environment variable that picks an adapter by (part of) its name, case-insensitively,
/// where a machine has several.
pub const ADAPTER_ENV: &str = "JINA_GPU_ADAPTER";

/// The environment variable that bounds how long one forward pass may take on the device
/// (seconds, default 600): past it the pass fails instead of hanging.
pub const TIMEOUT_ENV: &str = "JINA_GPU_TIMEOUT_SECS";

/// An opened GPU: adapter, device and queue, shared by every forward pass.
pub struct GpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: GpuAdapterInfo,
    limits: wgpu::Limits,
    /// The first uncaptured error or the loss of the device, as the driver reported it.
    failure: Arc<Mutex<Option<String>>>,
    timeout: Duration,
}

impl GpuContext {
    /// Opens the best adapter: discrete, then integrated, then virtual, then (unless
    /// `hardware_only`) a software one. `JINA_GPU_ADAPTER` narrows the choice by name.
    /// `Ok(None)` when no adapter qualifies.
    pub fn open(hardware_only: bool) -> Result<Option<Self>> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let wanted = std::env::var(ADAPTER_ENV).ok().map(|s| s.to_lowercase());
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        let best = adapters
            .into_iter()
            .filter(|a| {
                let info = a.get_info();
                let name_ok = wanted
                    .as_deref()
                    .is_none_or(|w| info.name.to_lowercase().contains(w));
                name_ok && (!hardware_only || kind_of(info.device_type).is_hardware())
            })
            .min_by_key(|a| preference(kind_of(a.get_info().device_type)));
        let Some(adapter) = best else {
            return Ok(None);
        };
        Self::with_adapter(adapter).map(Some)
    }

    fn with_adapter(adapter: wgpu::Adapter) -> Result<Self> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features();
        let descriptor = wgpu::DeviceDescriptor {
            label: Some("jina-embeddings"),
            required_features: features & wgpu::Features::SHADER_F16,
            // Everything the adapter allows: the storage-buffer size bounds a batch.
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&descriptor))
            .map_err(|e| Error::Device(format!("{}: cannot open the device: {e}", info.name)))?;
        let failure = Arc::new(Mutex::new(None::<String>));
        let sink = Arc::clone(&failure);
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            record(&sink, e.to_string());
        }));
        let sink = Arc::clone(&failure);
        device.set_device_lost_callback(move |reason, message| {
            record(
                &sink,
                format!("the device was lost ({reason:?}): {message}"),
            );
        });
        let timeout = std::env::var(TIMEOUT_ENV)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(600);
        let driver = [info.driver.as_str(), info.driver_info.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        Ok(GpuContext {
            info: GpuAdapterInfo {
                name: info.name.clone(),
                backend: format!("{:?}", info.backend),
                driver,
                kind: kind_of(info.device_type),
                max_storage_buffer_bytes: limits.max_storage_buffer_binding_size,
                max_buffer_bytes: limits.max_buffer_size,
                shader_f16: features.contains(wgpu::Features::SHADER_F16),
            },
            device,
            queue,
            limits,
            failure,
            timeout: Duration::from_secs(timeout),
        })
    }

    /// The adapter, as plans report it.
    pub fn info(&self) -> &GpuAdapterInfo {
        &self.info
    }

    /// The plan of a model on this device at `precision`: f16 where it is asked for and the
    /// adapter has `shader-f16`, else f32 with the reason.
    pub(crate) fn plan(&self, requested: DeviceChoice, precision: Precision) -> DevicePlan {
        let mut fallbacks = Vec::new();
        if self.info.kind == GpuKind::Software {
            fallbacks.push(format!(
                "{} is a software adapter: the shaders run on the CPU (for tests; slower than the CPU kernels)",
                self.info.name
            ));
        }
        let mut precision_fallbacks = Vec::new();
        let runs = match precision {
            Precision::F32 => Precision::F32,
            Precision::F16 if self.info.shader_f16 => Precision::F16,
            Precision::F16 => {
                precision_fallbacks.push(format!(
                    "f16: {} does not offer shader-f16: f32",
                    self.info.name
                ));
                Precision::F32
            }
            Precision::Bf16 | Precision::Int8 => {
                precision_fallbacks.push(format!(
                    "{}: the GPU backend has no {} kernels (its fast path is f16): f32",
                    precision.name(),
                    precision.name()
                ));
                Precision::F32
            }
        };
        let linear = if runs == Precision::F16 {
            "gpu f16 (f16 weights and activations, products summed in f32) + LoRA per row in f32"
        } else {
            "gpu f32 (bf16 weights unpacked in the shader) + LoRA per row"
        };
        DevicePlan {
            requested,
            gpu: Some(self.info.clone()),
            operations: vec![
                (
                    "embeddings",
                    "cpu f32 (the word table stays on the CPU)".into(),
                ),
                ("linear", linear.into()),
                ("rotary", "gpu f32".into()),
                ("attention", "gpu f32 (flash style, online softmax)".into()),
                ("layer norm", "gpu f32".into()),
                ("pooling", "cpu f32".into()),
            ],
            precision: Some(runs),
            precision_fallbacks,
            fallbacks,
        }
    }

    /// Destroys the device, as a driver reset would: every later pass fails with
    /// [`Error::Device`].
    pub(crate) fn destroy(&self) {
        self.device.destroy();
    }

    /// The error the driver reported since the last check, if any.
    fn check(&self) -> Result<()> {
        // Callbacks (a loss among them) fire during a poll.
        let _ = self.device.poll(wgpu::PollType::Poll);
        let failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        match failure.as_ref() {
            Some(message) => Err(Error::Device(format!("{}: {message}", self.info.name))),
            None => Ok(()),
        }
    }

    /// Waits for `submission`, at most the timeout.
    fn wait(&self, submission: wgpu::SubmissionIndex) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(submission),
                timeout: Some(self.timeout),
            })
            .map_err(|e| {
                Error::Device(format!(
                    "{}: waiting for the forward pass: {e} (timeout {} s, {TIMEOUT_ENV})",
                    self.info.name,
                    self.timeout.as_secs()
                ))
            })?;
        self.check()
    }
}

fn record(sink: &Mutex<Option<String>>, message: String) {
    let mut failure = sink.lock().unwrap_or_else(|e| e.into_inner());
    if failure.is_none() {
        tracing::error!("gpu: {message}");
        *failure = Some(message);
    }
}

fn kind_of(device_type: wgpu::DeviceType) -> GpuKind {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => GpuKind::Discrete,
        wgpu::DeviceType::IntegratedGpu => GpuKind::Integrated,
        wgpu::DeviceType::VirtualGpu => GpuKind::Virtual,
        wgpu::DeviceType::Cpu => GpuKind::Software,
        wgpu::DeviceType::Other => GpuKind::Other,
    }
}

/// Lower is better.
fn preference(kind: GpuKind) -> u8 {
    match kind {
        GpuKind::Discrete => 0,
        GpuKind::Integrated => 1,
        GpuKind::Virtual => 2,
        GpuKind::Other => 3,
        GpuKind::Software => 4,
    }
}
