//! Numeric kernels below the model code: matrix products, attention, norms, activations, rotary.
//!
//! Each fast kernel has a plain reference beside it in [`reference`]; the tests compare them on
//! awkward shapes. Model code calls only the functions re-exported here and never sees SIMD.

pub mod attention;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub mod attention_amx;
pub mod elementwise;
pub mod matmul;
pub mod packed;
pub mod reference;
pub mod rotary;
pub mod softmax;

pub use attention::{attention, SequenceRange};
pub use elementwise::{add_residual_layer_norm, gelu_erf_in_place, layer_norm_in_place};
pub use matmul::{matmul_thin, matmul_transposed, MatmulInit};
pub use rotary::RotaryTable;
