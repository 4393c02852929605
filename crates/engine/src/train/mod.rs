//! Training a new task adapter (LoRA only) on the user's CPU: the frozen base, each layer's
//! forward beside its backward, the InfoNCE loss, AdamW, and the loop that feeds them.
//!
//! The base stays frozen: every gradient flows into one [`AdapterWeights`] (the adapter being
//! trained), so the backward differentiates through the base's weights without ever computing
//! theirs. Memory is bounded independently of the batch by GradCache: the whole batch is
//! embedded without gradients, the loss's gradient taken per pooled vector, and the encoder then
//! differentiated chunk by chunk (`encoder.rs` recomputes each block's activations per chunk).
//!
//! - `base.rs`: the frozen weights in f32, loaded from the official checkpoint.
//! - `layers.rs`, `attention.rs`: forward and backward of each layer.
//! - `encoder.rs`: [`TrainModel`], the pooled forward and the backward into the adapter.
//! - `data.rs`: the pairs files (JSONL, CSV, TSV).
//! - `loss.rs`: [`InfoNce`] (sentence-transformers' `MultipleNegativesRankingLoss`).
//! - `optim.rs`: [`AdamW`] and the linear warm-up and decay schedule.
//! - `metrics.rs`: recall@k, MRR@10 and nDCG@10 of a query/passage set.
//! - `trainer.rs`: [`Trainer`], epochs of batches, evaluation and checkpoints.
//!
//! [`AdapterWeights`]: crate::adapters::AdapterWeights

mod attention;
mod base;
pub mod data;
mod encoder;
mod layers;
mod linalg;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod trainer;

pub use data::{read_pairs, Pair};
pub use encoder::{SeqAdapter, TrainInput, TrainModel, TAPE_BUDGET_BYTES};
pub use loss::{InfoNce, LossOutput};
pub use metrics::RetrievalMetrics;
pub use optim::{AdamW, AdamWConfig, Schedule};
pub use trainer::{Progress, TrainOptions, TrainReport, Trainer};
