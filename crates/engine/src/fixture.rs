//! The formula checkpoint of `shared/fixtures/README.md`: every value of every tensor is a
//! function of the seed, the tensor's name and the element's index, so any language regenerates
//! the same bits. Written in the exact official layout (config.json, bf16 model.safetensors,
//! tokenizer.json, and the real repository's tokenizer_config.json and special_tokens_map.json)
//! so that the loader, and transformers, see what they see with the real weights.

use std::io::Read;
use std::path::Path;

use half::bf16;
use rayon::prelude::*;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::weights::expected_tensors;

/// The real XLM-RoBERTa `tokenizer.json`, gzip-compressed (MIT licence, see `assets/NOTICE`).
const TOKENIZER_GZ: &[u8] = include_bytes!("../../../assets/xlm-roberta-tokenizer.json.gz");

/// `tokenizer_config.json` of the jinaai/jina-embeddings-v3 repository, unchanged (see
/// `assets/NOTICE`): transformers applies its added-token flags over `tokenizer.json`.
pub const TOKENIZER_CONFIG_JSON: &[u8] = include_bytes!("../../../assets/tokenizer_config.json");

/// `special_tokens_map.json` of the jinaai/jina-embeddings-v3 repository, unchanged.
pub const SPECIAL_TOKENS_MAP_JSON: &[u8] =
    include_bytes!("../../../assets/special_tokens_map.json");

/// The shape of a generated checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixtureShape {
    /// Width of token vectors.
    pub hidden_size: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Encoder blocks.
    pub num_hidden_layers: usize,
    /// MLP width.
    pub intermediate_size: usize,
}

impl FixtureShape {
    /// The `small` variant of the golden fixtures: hidden 128, 2 heads of 64, 2 layers, MLP 256.
    pub const SMALL: FixtureShape = FixtureShape {
        hidden_size: 128,
        num_attention_heads: 2,
        num_hidden_layers: 2,
        intermediate_size: 256,
    };
    /// The real model's shape: hidden 1024, 16 heads, 24 layers, MLP 4096.
    pub const FULL: FixtureShape = FixtureShape {
        hidden_size: 1024,
        num_attention_heads: 16,
        num_hidden_layers: 24,
        intermediate_size: 4096,
    };

    /// The official config with this shape; `matryoshka_dimensions` keeps the official sizes
    /// that fit.
    pub fn config_json(&self) -> serde_json::Value {
        let mut json = Config::official_json();
        json["hidden_size"] = self.hidden_size.into();
        json["num_attention_heads"] = self.num_attention_heads.into();
        json["num_hidden_layers"] = self.num_hidden_layers.into();
        json["intermediate_size"] = self.intermediate_size.into();
        let dims: Vec<usize> = [32, 64, 128, 256, 512, 768, 1024]
            .into_iter()
            .filter(|&d| d <= self.hidden_size)
            .collect();
        json["matryoshka_dimensions"] = dims.into();
        json
    }
}

/// SplitMix64's finaliser.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a, 64 bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// (offset, half width) of a tensor's values, by its role.
fn value_range(name: &str) -> (f32, f32) {
    if name.ends_with("lora_A") || name.ends_with("lora_B") {
        (0.0, 0.2)
    } else if ["emb_ln", "norm1", "norm2"]
        .iter()
        .any(|n| name.contains(n))
    {
        if name.ends_with(".weight") {
            (1.0, 0.2)
        } else {
            (0.0, 0.05)
        }
    } else if name.ends_with(".bias") {
        (0.0, 0.02)
    } else {
        (0.0, 0.05)
    }
}

/// Element `i` of tensor `name`, as f32 before rounding to bf16.
pub fn value(seed: u64, name: &str, i: u64) -> f32 {
    let s0 = mix64(seed ^ fnv1a64(name.as_bytes()));
    let z = mix64(s0.wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    let u = (z >> 40) as f32 / 16_777_216.0;
    let (offset, half_width) = value_range(name);
    offset + (u * 2.0 - 1.0) * half_width
}

/// The bf16 bytes (little-endian) of a whole tensor.
fn tensor_bytes(seed: u64, name: &str, count: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; count * 2];
    bytes
        .par_chunks_mut(2 << 14)
        .enumerate()
        .for_each(|(c, chunk)| {
            let first = (c << 14) as u64;
            for (j, pair) in chunk.chunks_exact_mut(2).enumerate() {
                let v = bf16::from_f32(value(seed, name, first + j as u64));
                pair.copy_from_slice(&v.to_bits().to_le_bytes());
            }
        });
    bytes
}

/// The vendored `tokenizer.json`, decompressed.
pub fn tokenizer_json() -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(TOKENIZER_GZ)
        .read_to_end(&mut out)
        .expect("the vendored tokenizer asset is a valid gzip stream");
    out
}

/// Writes `config.json`, `model.safetensors` (bf16), `tokenizer.json`, `tokenizer_config.json`
/// and `special_tokens_map.json` into `dir`.
pub fn write_fixture(dir: &Path, shape: FixtureShape, seed: u64) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let config_json = shape.config_json();
    let config = Config::from_json(&config_json.to_string())?;
    let config_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&config_json).expect("a JSON value serialises");
    std::fs::write(&config_path, text + "\n").map_err(io(&config_path))?;

    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = expected_tensors(&config)
        .into_iter()
        .map(|(name, shape, _)| {
            let bytes = tensor_bytes(seed, &name, shape.iter().product());
            (name, shape, bytes)
        })
        .collect();
    let views = tensors.iter().map(|(name, shape, bytes)| {
        let view =
            TensorView::new(Dtype::BF16, shape.clone(), bytes).expect("shape and byte count agree");
        (name.clone(), view)
    });
    let weights_path = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &weights_path).map_err(|e| Error::Safetensors {
        path: weights_path.clone(),
        message: e.to_string(),
    })?;

    let tokenizer_path = dir.join("tokenizer.json");
    std::fs::write(&tokenizer_path, tokenizer_json()).map_err(io(&tokenizer_path))?;
    for (name, bytes) in [
        ("tokenizer_config.json", TOKENIZER_CONFIG_JSON),
        ("special_tokens_map.json", SPECIAL_TOKENS_MAP_JSON),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(io(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_their_definitions() {
        // FNV-1a test vectors.
        assert_eq!(fnv1a64(b""), 0xCBF2_9CE4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xAF63_DC4C_8601_EC8C);
        // SplitMix64 with state 0 → first output 0xE220A8397B1DCDAF (its finaliser of the golden gamma).
        assert_eq!(mix64(0x9E37_79B9_7F4A_7C15), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn roles_pick_their_ranges() {
        assert_eq!(value_range("roberta.emb_ln.weight"), (1.0, 0.2));
        assert_eq!(
            value_range("roberta.encoder.layers.0.norm2.bias"),
            (0.0, 0.05)
        );
        assert_eq!(
            value_range("roberta.encoder.layers.0.mlp.fc1.bias"),
            (0.0, 0.02)
        );
        assert_eq!(
            value_range("roberta.encoder.layers.0.mlp.fc1.parametrizations.weight.0.lora_B"),
            (0.0, 0.2)
        );
        assert_eq!(
            value_range("roberta.pooler.dense.parametrizations.weight.original"),
            (0.0, 0.05)
        );
        let v = value(1, "roberta.emb_ln.weight", 0);
        assert!((0.8..1.2).contains(&v));
    }
}
