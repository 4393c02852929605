//! [`TrainModel`]: the frozen base loaded for training, its pooled forward for any mix of
//! adapters, and the backward into the adapter being trained.

use std::path::Path;

use tracing::trace_span;

use crate::adapters::AdapterWeights;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::kernels::{Cpu, KernelPlan, RotaryTable};
use crate::precision::Precision;
use crate::weights::Weights;

use super::base::Base;
use super::layers::{mean_pool, mean_pool_backward, Pass};

/// The activations a backward keeps from its forward, at most (beyond, it recomputes them per
/// block): with the full model's 60 KiB per token per layer, about 520 tokens.
pub const TAPE_BUDGET_BYTES: usize = 768 << 20;

/// `dL/d(pooled)` from the pooled vectors of a chunk, one per sequence.
pub type LossGradient<'a> = dyn FnMut(&[Vec<f32>]) -> Vec<Vec<f32>> + 'a;

/// Which adapter one sequence of a batch runs under.
#[derive(Debug, Clone, Copy)]
pub enum SeqAdapter<'a> {
    /// The adapter being trained (the one passed beside the batch): gradients flow into it.
    Trainable,
    /// A frozen adapter, forward only: a built-in task ([`TrainModel::builtin_adapter`]) or
    /// any other [`AdapterWeights`], e.g. passages through `retrieval.passage`.
    Frozen(&'a AdapterWeights),
    /// The base weights, without adapter.
    Base,
}

/// One sequence of a batch: its token ids, exactly as fed to the model (`<s>`, the task's
/// instruction prefix and `</s>` included), and its adapter.
#[derive(Debug, Clone, Copy)]
pub struct TrainInput<'a> {
    /// Token ids.
    pub ids: &'a [u32],
    /// The adapter it runs under.
    pub adapter: SeqAdapter<'a>,
}

/// The frozen jina-embeddings-v3 base loaded for training a task adapter (LoRA only).
///
/// Linear weights are held in f32 (the checkpoint's bf16 up-cast exactly), one copy that both
/// directions read; the 250002-row word table stays in the file. Every product of a linear
/// layer runs the `gemm` crate (its own runtime dispatch); the plan's [`Cpu`] picks the
/// attention kernel and the element-wise and LoRA kernels, so a capped `Cpu` runs a lower
/// instruction set's path.
pub struct TrainModel {
    dir: std::path::PathBuf,
    tape_budget: usize,
    config: Config,
    weights: Weights,
    base: Base,
    rotary: RotaryTable,
    plan: KernelPlan,
}

impl TrainModel {
    /// Loads `config.json` and `model.safetensors` from a model folder, for this CPU (capped by
    /// `JINA_MAX_ISA` when set).
    pub fn load(dir: &Path) -> Result<Self> {
        Self::load_with(dir, Cpu::host_checked()?)
    }

    /// Loads a model folder with the kernels of `cpu` (e.g. `Cpu::detected().capped(isa)`).
    pub fn load_with(dir: &Path, cpu: Cpu) -> Result<Self> {
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(Error::MissingFile { path: config_path });
        }
        let config = Config::from_file(&config_path)?;
        let weights = Weights::open(&dir.join("model.safetensors"), &config)?;
        let plan = KernelPlan::resolve(Precision::F32, cpu, weights.linear_weights_are_bf16());
        let base = Base::load(&weights, &config)?;
        let rotary = RotaryTable::new(
            config.head_dim(),
            config.rotary_emb_base,
            config.max_position_embeddings,
        );
        Ok(TrainModel {
            dir: dir.to_path_buf(),
            tape_budget: TAPE_BUDGET_BYTES,
            config,
            weights,
            base,
            rotary,
            plan,
        })
    }

    /// sha256 of `model.safetensors`, as [`crate::Model::weights_sha256`] gives it (what an
    /// adapter folder records of its base).
    pub fn weights_sha256(&self) -> Result<String> {
        let path = self.dir.join("model.safetensors");
        match crate::hub::expected_sha256(&path) {
            Some(hash) => Ok(hash),
            None => crate::hub::sha256_file(&path).map_err(|source| Error::Io { path, source }),
        }
    }

    /// The checkpoint's config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The kernels that run (f32).
    pub fn plan(&self) -> &KernelPlan {
        &self.plan
    }

    /// Width of the pooled embeddings.
    pub fn hidden_size(&self) -> usize {
        self.config.hidden_size
    }

    /// Longest sequence the rotary table covers, `<s>` and `</s>` included.
    pub fn max_positions(&self) -> usize {
        self.rotary.positions()
    }

    /// The index of a built-in task name (`retrieval.passage`, …).
    pub fn task_index(&self, task: &str) -> Result<usize> {
        self.config
            .lora_adaptations
            .iter()
            .position(|t| t == task)
            .ok_or_else(|| Error::UnknownTask {
                task: task.to_string(),
                accepted: self.config.lora_adaptations.join(", "),
            })
    }

    /// A built-in task's LoRA weights: a frozen adapter for some sequences, or the starting
    /// point of a new one.
    pub fn builtin_adapter(&self, task: usize) -> Result<AdapterWeights> {
        AdapterWeights::from_checkpoint(&self.weights, &self.config, task)
    }

    /// The mean-pooled last hidden states of each sequence (mean over every token, before
    /// truncation and normalisation), in order; `trainable` is the adapter
    /// [`SeqAdapter::Trainable`] names. No gradient state is kept.
    pub fn embed<'a>(
        &self,
        trainable: &'a AdapterWeights,
        batch: &[TrainInput<'a>],
    ) -> Vec<Vec<f32>> {
        let resolve = |adapter: SeqAdapter<'a>| match adapter {
            SeqAdapter::Trainable => Some(trainable),
            SeqAdapter::Frozen(a) => Some(a),
            SeqAdapter::Base => None,
        };
        let seqs: Vec<(&[u32], Option<&AdapterWeights>)> =
            batch.iter().map(|s| (s.ids, resolve(s.adapter))).collect();
        for (_, adapter) in &seqs {
            if let Some(a) = adapter {
                self.check_adapter(a);
            }
        }
        let pass = self.pass(&seqs);
        let ids: Vec<u32> = seqs
            .iter()
            .flat_map(|(ids, _)| ids.iter().copied())
            .collect();
        let _span = trace_span!("train_embed", tokens = pass.tokens).entered();
        let mut x = self.base.embeddings.forward(&ids, &pass).out;
        for block in &self.base.blocks {
            x = block.forward(&x, &pass).out;
        }
        mean_pool(&x, &pass)
    }

    /// Back-propagates `d_pooled` (`dL/d(pooled embedding)`, one per sequence, e.g. from
    /// [`super::loss::InfoNce`]) through sequences that all run under `adapter`, and adds the
    /// gradient of every tensor of `adapter` to `grads` (an [`AdapterWeights`] of the same
    /// shapes, e.g. [`AdapterWeights::zeros`]). Returns the pooled embeddings as recomputed.
    pub fn backward(
        &self,
        adapter: &AdapterWeights,
        sequences: &[&[u32]],
        d_pooled: &[Vec<f32>],
        grads: &mut AdapterWeights,
    ) -> Vec<Vec<f32>> {
        assert_eq!(sequences.len(), d_pooled.len(), "one gradient per sequence");
        let mut pooled = Vec::new();
        self.backward_with(adapter, sequences, grads, &mut |p| {
            pooled = p.to_vec();
            d_pooled.to_vec()
        });
        pooled
    }

    /// The forward of `sequences` under `adapter`, then `loss_gradient(pooled)` (its
    /// `dL/d(pooled)`, one per sequence), then the backward into `grads`.
    ///
    /// Each block's activations are kept from the forward when all the blocks' fit in the tape
    /// budget ([`TrainModel::set_tape_budget`]) (the backward then costs one product per linear); otherwise only
    /// each block's input is kept and its activations are recomputed when it is differentiated
    /// (one hidden vector per token per layer plus one block's activations). Attention holds
    /// `64 × length` scores per head at a time either way.
    pub fn backward_with(
        &self,
        adapter: &AdapterWeights,
        sequences: &[&[u32]],
        grads: &mut AdapterWeights,
        loss_gradient: &mut LossGradient,
    ) {
        self.check_adapter(adapter);
        self.check_adapter(grads);
        let seqs: Vec<(&[u32], Option<&AdapterWeights>)> =
            sequences.iter().map(|ids| (*ids, Some(adapter))).collect();
        let pass = self.pass(&seqs);
        let ids: Vec<u32> = sequences.iter().flat_map(|s| s.iter().copied()).collect();
        let _span = trace_span!("train_backward", tokens = pass.tokens).entered();
        let keep = pass.tokens * self.tape_bytes_per_token() <= self.tape_budget;
        let embeddings = self.base.embeddings.forward(&ids, &pass);
        let mut inputs = vec![embeddings.out];
        let mut tapes = Vec::new();
        for block in &self.base.blocks {
            let tape = block.forward(inputs.last().expect("one input per block"), &pass);
            if keep {
                let (out, tape) = tape.into_kept();
                inputs.push(out);
                tapes.push(tape);
            } else {
                inputs.push(tape.out);
            }
        }
        let last = inputs.pop().expect("the last block's output");
        let pooled = mean_pool(&last, &pass);
        drop(last);
        let d_pooled = loss_gradient(&pooled);
        assert_eq!(d_pooled.len(), sequences.len(), "one gradient per sequence");
        let mut d = mean_pool_backward(&d_pooled, &pass);
        for (i, (block, x)) in self.base.blocks.iter().zip(&inputs).enumerate().rev() {
            let tape = match tapes.pop() {
                Some(kept) => kept,
                None => block.forward(x, &pass).into_kept().1,
            };
            debug_assert!(!keep || tapes.len() == i);
            d = block.backward(x, &tape, &d, &pass, adapter, grads);
        }
        self.base
            .embeddings
            .backward(&ids, &embeddings.sum, &d, adapter, grads);
    }

    /// Sets the most activation bytes a backward keeps from its forward (default
    /// [`TAPE_BUDGET_BYTES`]); 0 recomputes every block's.
    pub fn set_tape_budget(&mut self, bytes: usize) {
        self.tape_budget = bytes;
    }

    /// Bytes of one token's kept activations over all blocks (`BlockTape` less its output).
    pub fn tape_bytes_per_token(&self) -> usize {
        let (h, i) = (self.config.hidden_size, self.config.intermediate_size);
        self.config.num_hidden_layers * (7 * h + 2 * i) * std::mem::size_of::<f32>()
    }

    fn pass<'a>(&'a self, seqs: &[(&[u32], Option<&'a AdapterWeights>)]) -> Pass<'a> {
        for (ids, _) in seqs {
            if let Some(&bad) = ids
                .iter()
                .find(|&&id| id as usize >= self.config.vocab_size)
            {
                panic!(
                    "token id {bad} is outside the vocabulary ({})",
                    self.config.vocab_size
                );
            }
        }
        Pass::new(
            seqs.iter().map(|(ids, a)| (ids.len(), *a)),
            (self.config.hidden_size, self.config.num_attention_heads),
            &self.rotary,
            &self.plan,
        )
    }

    fn check_adapter(&self, adapter: &AdapterWeights) {
        if let Err(e) = adapter.check_shapes(&self.config) {
            panic!("{e}");
        }
    }
}
