//! `config.json` of a jina-embeddings-v3 checkpoint.
//!
//! Only the fields the forward pass, the tasks and the limits need are read; every other key
//! (`auto_map`, dropout rates, `use_flash_attn`, …) is ignored, so the official file loads unchanged.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The model's hyper-parameters, tasks and instruction prefixes, as read from `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Rows of the word-embedding table (250002 for XLM-RoBERTa).
    pub vocab_size: usize,
    /// Width of every token vector (1024 in the real model).
    pub hidden_size: usize,
    /// Number of encoder blocks (24).
    pub num_hidden_layers: usize,
    /// Attention heads per block (16); the head width is `hidden_size / num_attention_heads`.
    pub num_attention_heads: usize,
    /// Width of the MLP's hidden layer (4096).
    pub intermediate_size: usize,
    /// Activation of the MLP; only the exact erf `gelu` is supported.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Longest sequence, `<s>` and `</s>` included (8194).
    pub max_position_embeddings: usize,
    /// Rows of the token-type table (1).
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    /// Epsilon of every LayerNorm.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Id of `<pad>`.
    #[serde(default = "default_pad_token_id")]
    pub pad_token_id: u32,
    /// Id of `<s>`.
    #[serde(default)]
    pub bos_token_id: u32,
    /// Id of `</s>`.
    #[serde(default = "default_eos_token_id")]
    pub eos_token_id: u32,
    /// Only `"rotary"` is supported.
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
    /// Base of the rotary frequencies (20000).
    #[serde(default = "default_rotary_emb_base")]
    pub rotary_emb_base: f64,
    /// `null` or absent means mean pooling, the only pooling the embeddings use.
    #[serde(default)]
    pub emb_pooler: Option<String>,
    /// Task names in adapter-index order.
    #[serde(default)]
    pub lora_adaptations: Vec<String>,
    /// Rank of every LoRA adapter (4).
    #[serde(default = "default_lora_rank")]
    pub lora_rank: usize,
    /// LoRA scaling numerator: the delta is `lora_alpha / lora_rank` times `B·A`.
    #[serde(default = "default_lora_alpha")]
    pub lora_alpha: f64,
    /// Instruction prefix per task (empty for the non-retrieval tasks).
    #[serde(default)]
    pub task_instructions: BTreeMap<String, String>,
    /// Trained Matryoshka sizes; any size from 1 to `hidden_size` is accepted.
    #[serde(default)]
    pub matryoshka_dimensions: Vec<usize>,
    /// Rotary width per head; absent means the whole head.
    #[serde(default)]
    pub rotary_emb_dim: Option<f64>,
    /// `true` would be the GPT-J layout, which the official checkpoint does not use.
    #[serde(default)]
    pub rotary_emb_interleaved: bool,
}

fn default_hidden_act() -> String {
    "gelu".into()
}
fn default_type_vocab_size() -> usize {
    1
}
fn default_layer_norm_eps() -> f64 {
    1e-5
}
fn default_pad_token_id() -> u32 {
    1
}
fn default_eos_token_id() -> u32 {
    2
}
fn default_position_embedding_type() -> String {
    "rotary".into()
}
fn default_rotary_emb_base() -> f64 {
    10000.0
}
fn default_lora_rank() -> usize {
    4
}
fn default_lora_alpha() -> f64 {
    1.0
}

impl Config {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Config { message, .. } => Error::Config {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and checks the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        // serde_path_to_error names the field of a type error ("hidden_size: invalid type …").
        let de = &mut serde_json::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| Error::Config {
            path: "config.json".into(),
            message: if e.path().to_string() == "." {
                e.inner().to_string()
            } else {
                format!("field {}: {}", e.path(), e.inner())
            },
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let fail = |message: String| {
            Err(Error::Config {
                path: "config.json".into(),
                message,
            })
        };
        if self.hidden_size == 0 || self.num_attention_heads == 0 {
            return fail("hidden_size and num_attention_heads must be positive".into());
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return fail(format!(
                "head width {} must be even for rotary positions",
                self.head_dim()
            ));
        }
        if let Some(dim) = self.rotary_emb_dim {
            if dim != self.head_dim() as f64 {
                return fail(format!(
                    "rotary_emb_dim {dim} is not supported: only the whole head width {} is",
                    self.head_dim()
                ));
            }
        }
        if self.rotary_emb_interleaved {
            return fail("rotary_emb_interleaved = true is not supported (the official model uses the rotate-half layout)".into());
        }
        if self.position_embedding_type != "rotary" {
            return fail(format!(
                "position_embedding_type {:?} is not supported: expected \"rotary\"",
                self.position_embedding_type
            ));
        }
        if self.hidden_act != "gelu" {
            return fail(format!(
                "hidden_act {:?} is not supported: expected \"gelu\" (exact erf)",
                self.hidden_act
            ));
        }
        if let Some(pooler) = &self.emb_pooler {
            if pooler != "mean" {
                return fail(format!(
                    "emb_pooler {pooler:?} is not supported: expected null (mean pooling)"
                ));
            }
        }
        if self.max_position_embeddings < 2 {
            return fail(format!(
                "max_position_embeddings {} leaves no room for <s> and </s>",
                self.max_position_embeddings
            ));
        }
        if self.lora_rank == 0 {
            return fail("lora_rank must be positive".into());
        }
        if self.type_vocab_size == 0 {
            return fail("type_vocab_size must be at least 1".into());
        }
        for task in self.task_instructions.keys() {
            if !self.lora_adaptations.contains(task) {
                return fail(format!(
                    "task_instructions names {task:?}, which is not in lora_adaptations {:?}",
                    self.lora_adaptations
                ));
            }
        }
        if let Some(&bad) = self
            .matryoshka_dimensions
            .iter()
            .find(|&&d| d == 0 || d > self.hidden_size)
        {
            return fail(format!(
                "matryoshka_dimensions holds {bad}, outside 1..={}",
                self.hidden_size
            ));
        }
        Ok(())
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// LoRA scaling `alpha / rank` (0.25 for the official checkpoint).
    pub fn lora_scaling(&self) -> f32 {
        (self.lora_alpha / self.lora_rank as f64) as f32
    }

    /// Number of task adapters stacked in every LoRA tensor.
    pub fn num_adapters(&self) -> usize {
        self.lora_adaptations.len()
    }

    /// The official `config.json` of jina-embeddings-v3 (spec §1), without `auto_map`.
    pub fn official_json() -> serde_json::Value {
        serde_json::json!({
            "_name_or_path": "jinaai/jina-embeddings-v3",
            "architectures": ["XLMRobertaModel"],
            "attention_probs_dropout_prob": 0.1,
            "bos_token_id": 0,
            "classifier_dropout": null,
            "emb_pooler": null,
            "eos_token_id": 2,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "hidden_size": 1024,
            "initializer_range": 0.02,
            "intermediate_size": 4096,
            "layer_norm_eps": 1e-05,
            "load_trained_adapters": true,
            "lora_adaptations": [
                "retrieval.query",
                "retrieval.passage",
                "separation",
                "classification",
                "text-matching"
            ],
            "lora_alpha": 1,
            "lora_dropout_p": 0.0,
            "lora_main_params_trainable": false,
            "lora_rank": 4,
            "matryoshka_dimensions": [32, 64, 128, 256, 512, 768, 1024],
            "max_position_embeddings": 8194,
            "num_attention_heads": 16,
            "num_hidden_layers": 24,
            "output_past": true,
            "pad_token_id": 1,
            "position_embedding_type": "rotary",
            "rotary_emb_base": 20000.0,
            "task_instructions": {
                "retrieval.query": "Represent the query for retrieving evidence documents: ",
                "retrieval.passage": "Represent the document for retrieval: ",
                "separation": "",
                "classification": "",
                "text-matching": ""
            },
            "torch_dtype": "bfloat16",
            "transformers_version": "4.30.2",
            "truncate_dim": null,
            "type_vocab_size": 1,
            "use_cache": true,
            "use_flash_attn": true,
            "vocab_size": 250002
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_config_parses() {
        let config = Config::from_json(&Config::official_json().to_string()).unwrap();
        assert_eq!(config.hidden_size, 1024);
        assert_eq!(config.head_dim(), 64);
        assert_eq!(config.lora_scaling(), 0.25);
        assert_eq!(config.lora_adaptations[4], "text-matching");
        assert_eq!(config.rotary_emb_base, 20000.0);
    }

    #[test]
    fn contradictions_are_named() {
        let mut json = Config::official_json();
        json["num_attention_heads"] = 7.into();
        let err = Config::from_json(&json.to_string())
            .unwrap_err()
            .to_string();
        assert!(err.contains("num_attention_heads 7"), "{err}");

        let mut json = Config::official_json();
        json["hidden_act"] = "gelu_new".into();
        let err = Config::from_json(&json.to_string())
            .unwrap_err()
            .to_string();
        assert!(err.contains("gelu_new"), "{err}");

        let mut json = Config::official_json();
        json.as_object_mut().unwrap().remove("hidden_size");
        let err = Config::from_json(&json.to_string())
            .unwrap_err()
            .to_string();
        assert!(err.contains("hidden_size"), "{err}");
    }
}
