//! Numeric precision of the linear layers.

use std::str::FromStr;

use crate::error::Error;

/// How the weights of the linear layers are stored and multiplied.
///
/// Everything else (embeddings, LayerNorm, softmax, pooling) stays in f32 whatever the choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Precision {
    /// f32 weights and products: the official numbers (the default).
    #[default]
    F32,
    /// bf16 weights (exactly the checkpoint's values) and activations rounded to bf16, products
    /// accumulated in f32 on AMX or with AVX512_BF16. Without a bf16 dot product (AVX2) the
    /// weights stay bf16 and the arithmetic is f32, and the resolved precision says so.
    Bf16,
    /// int8 weights (per output channel) and activations (per token, quantised on the fly),
    /// products summed in i32 on AMX-INT8 tiles, with AVX512_VNNI or with AVX2 (the same
    /// results); attention in bf16 (f32 without a bf16 dot product). Where no int8 kernel of
    /// ours runs, f32, reported as the resolved precision. Cosine to f32 is gated at ≥ 0.99.
    Int8,
    /// The GPU's fast path: f16 weights and activations in the linear layers' products, summed
    /// in f32, where the adapter has `shader-f16` (`--device gpu`); everything else f32. The
    /// CPU kernels have no f16 path and run f32, reported as the resolved precision. Cosine to
    /// f32 is gated at ≥ 0.999.
    F16,
}

impl Precision {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
            Precision::F16 => "f16",
        }
    }
}

impl FromStr for Precision {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "int8" => Ok(Precision::Int8),
            "f16" => Ok(Precision::F16),
            other => Err(Error::InvalidRequest(format!(
                "precision {other:?} is not supported; accepted values are f32, bf16, int8, f16"
            ))),
        }
    }
}
