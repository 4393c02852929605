//! Numeric kernels below the model code: matrix products, attention, norms, activations, rotary.
//!
//! One place decides what runs: [`cpu`] detects the CPU once (and applies the `JINA_MAX_ISA`
//! cap), [`resolve`] turns a requested precision and that CPU into a [`resolve::KernelPlan`] at load.
//! The kernels then take the [`cpu::Cpu`] they were resolved for as a value (the packed weights
//! and the attention kernel carry it), so a lower path runs on a bigger CPU and the tests run
//! every variant the CPU has in one process. Each family keeps a plain reference beside its fast
//! variants ([`reference`], [`linear::reference`]); model code never sees SIMD.
//!
//! Layout: [`linear`] (packing, epilogue, one file per instruction set), [`attention`] (tiled
//! online softmax per instruction set), [`elementwise`], [`softmax`], [`rotary`], [`matmul`]
//! (the one f32 GEMM, the `gemm` crate or Accelerate on macOS, and LoRA's thin products), and
//! the shared AMX tile plumbing (`amx`).

#[cfg(target_os = "macos")]
mod accelerate;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(crate) mod amx;
pub mod attention;
pub mod cpu;
pub mod elementwise;
pub mod linear;
pub mod matmul;
pub mod reference;
pub mod resolve;
pub mod rotary;
pub mod softmax;

pub use attention::{attention, SequenceRange};
pub use cpu::{Cpu, Isa};
pub use elementwise::{add_residual_layer_norm, gelu_erf_in_place, layer_norm_in_place};
pub use matmul::{matmul_thin, matmul_transposed, MatmulInit};
pub use resolve::{AttentionKernel, KernelPlan, LinearKernel};
pub use rotary::RotaryTable;
