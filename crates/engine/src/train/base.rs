//! The frozen base model as training reads it: every linear weight in f32 rows `[out, in]`
//! (the forward multiplies by `Wᵀ`, the backward by `W`, both from this one copy), the norms,
//! the token-type row 0, and the word table left in the file and read row by row.
//!
//! Nothing here holds LoRA tensors: every adapter (the trained one, a frozen built-in one) is an
//! [`crate::adapters::AdapterWeights`] passed with the batch. The file only loads; the layers'
//! arithmetic is in `layers.rs` and `attention.rs`.

use crate::adapters::LinearSite;
use crate::config::Config;
use crate::error::Result;
pub(crate) use crate::model::Norm;
use crate::weights::{FileTable, Weights};

/// A frozen linear layer `y = x·Wᵀ + b`.
pub(crate) struct Linear {
    /// `[n_out × n_in]`, row-major.
    pub w: Vec<f32>,
    /// `[n_out]`.
    pub bias: Vec<f32>,
    pub n_in: usize,
    pub n_out: usize,
    /// `layer * 4 + site`: where an adapter keeps this layer's LoRA pair.
    pub index: usize,
}

impl Linear {
    fn load(w: &Weights, layer: usize, site: LinearSite) -> Result<Self> {
        let prefix = format!("roberta.encoder.layers.{layer}.{}", site.module());
        let weight = w.f32(&format!("{prefix}.parametrizations.weight.original"))?;
        let bias = w.f32(&format!("{prefix}.bias"))?;
        let n_out = bias.len();
        Ok(Linear {
            n_in: weight.len() / n_out.max(1),
            n_out,
            w: weight,
            bias,
            index: layer * LinearSite::ALL.len() + site as usize,
        })
    }
}

/// One post-LN encoder block's frozen weights.
pub(crate) struct Block {
    pub qkv: Linear,
    pub out_proj: Linear,
    pub norm1: Norm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub norm2: Norm,
}

impl Block {
    fn load(w: &Weights, layer: usize, config: &Config) -> Result<Self> {
        let p = format!("roberta.encoder.layers.{layer}");
        Ok(Block {
            qkv: Linear::load(w, layer, LinearSite::Qkv)?,
            out_proj: Linear::load(w, layer, LinearSite::OutProj)?,
            norm1: Norm::load(w, &format!("{p}.norm1"), config)?,
            fc1: Linear::load(w, layer, LinearSite::Fc1)?,
            fc2: Linear::load(w, layer, LinearSite::Fc2)?,
            norm2: Norm::load(w, &format!("{p}.norm2"), config)?,
        })
    }
}

/// The embeddings' frozen part: the word table (in the file), token-type row 0, the LayerNorm.
pub(crate) struct Embeddings {
    /// `vocab × hidden`, read row by row.
    pub words: FileTable,
    /// Row 0 of the token-type table (XLM-R has no token types: every token takes row 0).
    pub token_type: Vec<f32>,
    pub norm: Norm,
}

impl Embeddings {
    fn load(w: &Weights, config: &Config) -> Result<Self> {
        let h = config.hidden_size;
        let tt = "roberta.embeddings.token_type_embeddings.parametrizations.weight.original";
        let word = "roberta.embeddings.word_embeddings.parametrizations.weight.original";
        Ok(Embeddings {
            words: w.table(word)?,
            token_type: w.f32(tt)?[..h].to_vec(),
            norm: Norm::load(w, "roberta.emb_ln", config)?,
        })
    }
}

/// Every frozen weight the forward and backward read.
pub(crate) struct Base {
    pub embeddings: Embeddings,
    pub blocks: Vec<Block>,
}

impl Base {
    /// Converts the checked weights (the pooler is not loaded: embeddings do not use it).
    pub fn load(w: &Weights, config: &Config) -> Result<Self> {
        Ok(Base {
            embeddings: Embeddings::load(w, config)?,
            blocks: (0..config.num_hidden_layers)
                .map(|layer| Block::load(w, layer, config))
                .collect::<Result<_>>()?,
        })
    }
}
