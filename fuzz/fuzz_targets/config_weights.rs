//! The loaders of a model folder: `Config::from_json` and `Weights::open` (safetensors). Corrupt
//! input must come back as an error, never a panic, an abort or an allocation without bound
//! (scripts/fuzz.sh runs libFuzzer with `-malloc_limit_mb`, so one allocation over it fails
//! the run).
//!
//! The first byte picks what the rest is:
//! * 0: the text of a `config.json` (lossy UTF-8);
//! * 1: a whole `model.safetensors`, checked against a tiny valid config;
//! * 2: patches to a valid tiny `model.safetensors` built here: (offset u16, byte) pairs, then
//!   a cut, so that the fuzzer corrupts a file that is right up to the damage.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use jina_engine::weights::{expected_tensors, Weights};
use jina_engine::Config;
use libfuzzer_sys::fuzz_target;

fn tiny_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let mut json = Config::official_json();
        json["hidden_size"] = 8.into();
        json["num_attention_heads"] = 2.into();
        json["num_hidden_layers"] = 1.into();
        json["intermediate_size"] = 16.into();
        json["vocab_size"] = 16.into();
        json["max_position_embeddings"] = 32.into();
        json["matryoshka_dimensions"] = vec![4, 8].into();
        Config::from_json(&json.to_string()).expect("the tiny config is valid")
    })
}

/// A valid safetensors file for [`tiny_config`]: every expected tensor, f32 zeros.
fn tiny_safetensors() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| {
        let mut header = serde_json::Map::new();
        let mut offset = 0usize;
        for (name, shape, _) in expected_tensors(tiny_config()) {
            let bytes = shape.iter().product::<usize>() * 4;
            header.insert(
                name,
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]}),
            );
            offset += bytes;
        }
        let header = serde_json::Value::Object(header).to_string();
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header.as_bytes());
        file.resize(file.len() + offset, 0);
        file
    })
}

/// One scratch file per fuzzing process.
fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| std::env::temp_dir().join(format!("jina-fuzz-weights-{}.safetensors", std::process::id())))
}

fn open(bytes: &[u8]) -> Result<Weights, jina_engine::Error> {
    std::fs::write(scratch(), bytes).expect("write the scratch file");
    Weights::open(scratch(), tiny_config())
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else { return };
    match kind % 3 {
        0 => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(config) = Config::from_json(&text) {
                // A config that passes validation has a usable shape.
                assert!(config.hidden_size > 0 && config.hidden_size % config.num_attention_heads == 0);
                assert!(config.head_dim() % 2 == 0 && config.max_position_embeddings >= 2);
            }
        }
        1 => {
            if let Ok(weights) = open(rest) {
                // Accepted: every tensor is readable.
                for (name, _, required) in expected_tensors(tiny_config()) {
                    if required || weights.contains(&name) {
                        weights.f32(&name).expect("a checked tensor reads");
                    }
                }
            }
        }
        _ => {
            let mut file = tiny_safetensors().to_vec();
            let mut chunks = rest.chunks_exact(3);
            for patch in &mut chunks {
                let at = u16::from_le_bytes([patch[0], patch[1]]) as usize;
                if let Some(b) = file.get_mut(at) {
                    *b = patch[2];
                }
            }
            if let [cut, ..] = chunks.remainder() {
                let keep = file.len().saturating_sub(*cut as usize);
                file.truncate(keep);
            }
            if let Ok(weights) = open(&file) {
                for (name, _, _) in expected_tensors(tiny_config()) {
                    if weights.contains(&name) {
                        weights.f32(&name).expect("a checked tensor reads");
                    }
                }
            }
        }
    }
});
