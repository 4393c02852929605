//! [`Trainer`]: epochs of shuffled batches of (query, positive, negatives) pairs, each step
//! embedding the batch without gradients, taking the loss's gradient per pooled vector, and
//! back-propagating it chunk by chunk (GradCache); evaluation, and checkpoints to resume from.
//!
//! Query-side training (`Side::Query`) runs the passages through a frozen adapter
//! (`retrieval.passage` by default) once, caching their vectors for every epoch: the adapter
//! only moves queries, so an index of passages embedded by the built-in adapter stays valid.
//! `Side::Joint` trains one adapter for both sides.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::adapters::folder::{self, AdapterMetadata};
use crate::adapters::AdapterWeights;
use crate::error::{Error, Result};
use crate::tokenize::TextTokenizer;

use super::data::Pair;
use super::encoder::{SeqAdapter, TrainInput, TrainModel};
use super::loss::{InfoNce, LossOutput};
use super::metrics::RetrievalMetrics;
use super::optim::{clip_grad_norm, AdamW, AdamWConfig, Schedule};

/// Which sides of a pair the adapter moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Queries only; passages run under a frozen built-in task, forward only.
    Query {
        /// That task (`retrieval.passage`).
        passage_task: String,
    },
    /// Queries and passages alike (text-matching-like tasks).
    Joint,
}

/// Everything a run is made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    /// The new task's name.
    pub name: String,
    /// The built-in task it starts from; `None`: a fresh LoRA ([`AdapterWeights::lora_init`]:
    /// its product zero, so it starts as the base model).
    pub from: Option<String>,
    /// Its instruction prefix; `None`: the `from` task's.
    pub prefix: Option<String>,
    /// Which sides the adapter moves.
    pub side: Side,
    /// Passes over the data.
    pub epochs: usize,
    /// Pairs per step.
    pub batch: usize,
    /// Longest sequence, `<s>`, prefix and `</s>` included; longer inputs are cut.
    pub max_tokens: usize,
    /// Shuffling seed.
    pub seed: u64,
    /// AdamW's settings.
    pub optimizer: AdamWConfig,
    /// Fraction of the steps spent warming the learning rate up.
    pub warmup_ratio: f32,
    /// Clip the gradients' global L2 norm to this (`None`: no clipping).
    pub max_grad_norm: Option<f32>,
    /// The loss.
    pub loss: InfoNce,
    /// Tokens differentiated at once: bounds memory whatever the batch. 0: as many as the
    /// activation budget keeps ([`Trainer::chunk_tokens`]).
    pub chunk_tokens: usize,
}

impl TrainOptions {
    /// The defaults for a new task `name` started from `from`: query-side against
    /// `retrieval.passage` when starting from `retrieval.query`, joint otherwise.
    pub fn new(name: &str, from: Option<&str>) -> Self {
        let side = match from {
            Some("retrieval.query") => Side::Query {
                passage_task: "retrieval.passage".into(),
            },
            _ => Side::Joint,
        };
        TrainOptions {
            name: name.to_string(),
            from: from.map(str::to_string),
            prefix: None,
            side,
            epochs: 1,
            batch: 32,
            max_tokens: 256,
            seed: 0,
            optimizer: AdamWConfig::default(),
            warmup_ratio: 0.1,
            max_grad_norm: Some(1.0),
            loss: InfoNce::default(),
            chunk_tokens: 0,
        }
    }
}

/// What the loop reports as it goes.
#[derive(Debug, Clone)]
pub enum Progress {
    /// Before the first step (`step` > 0 when resumed).
    Started {
        /// Steps already done.
        step: u64,
        /// Steps of the whole run.
        total_steps: u64,
        /// Training pairs.
        pairs: usize,
    },
    /// After a step.
    Step {
        /// Steps done, this one included.
        step: u64,
        /// Steps of the whole run.
        total_steps: u64,
        /// The epoch it belongs to, from 1.
        epoch: usize,
        /// Its batch's loss.
        loss: f64,
        /// The learning rate it used.
        lr: f32,
        /// Throughput of this process's steps so far.
        pairs_per_second: f64,
    },
    /// Evaluation before training (`epoch` 0) and after each epoch.
    Eval {
        /// The epoch just finished (0: before training).
        epoch: usize,
        /// The figures.
        metrics: RetrievalMetrics,
    },
}

/// How a run went.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainReport {
    /// Steps done in all (a resumed run's earlier ones included).
    pub steps: u64,
    /// Steps of the whole run.
    pub total_steps: u64,
    /// Mean loss of each epoch's steps (those run in this process when resumed).
    pub epoch_losses: Vec<f64>,
    /// Evaluation before training, then after each epoch.
    pub eval: Vec<RetrievalMetrics>,
    /// Wall time of the steps run in this process.
    pub seconds: f64,
    /// Training throughput of those steps.
    pub pairs_per_second: f64,
    /// Stopped early (Ctrl-C): the adapter is the last checkpoint's.
    pub stopped: bool,
}

/// The pooled vectors of one batch's passages, or their ids when they are trained too.
pub enum Passages<'a> {
    /// Frozen: vectors computed once (forward only).
    Frozen {
        /// One per query.
        positives: Vec<Vec<f32>>,
        /// The batch's hard negatives.
        negatives: Vec<Vec<f32>>,
    },
    /// Under the adapter being trained.
    Trained {
        /// One per query.
        positives: Vec<&'a [u32]>,
        /// The batch's hard negatives.
        negatives: Vec<&'a [u32]>,
    },
}

/// The loss of one batch and the gradient of every tensor of `adapter`, in chunks of at most
/// `chunk_tokens` tokens. Query-side with the plain loss, each chunk of queries is run forward,
/// given its rows of the loss and differentiated at once. Otherwise (trained passages, or the
/// symmetric loss, which couples every query) by GradCache: the batch is embedded without
/// gradients, the loss's gradient taken per pooled vector, and each chunk back-propagated.
pub fn batch_gradients(
    model: &TrainModel,
    adapter: &AdapterWeights,
    loss: &InfoNce,
    queries: &[&[u32]],
    passages: &Passages,
    chunk_tokens: usize,
) -> (LossOutput, AdapterWeights) {
    let mut grads = AdapterWeights::zeros(model.config());
    if let (
        Passages::Frozen {
            positives,
            negatives,
        },
        false,
    ) = (passages, loss.symmetric)
    {
        // Each query's term depends on itself and the frozen candidates only: one forward per
        // chunk, its loss rows, its backward; no embedding pass beforehand.
        let mut total = 0.0;
        let mut d_queries = Vec::with_capacity(queries.len());
        for range in chunks(queries, chunk_tokens) {
            let targets: Vec<usize> = range.clone().collect();
            model.backward_with(adapter, &queries[range], &mut grads, &mut |pooled| {
                let (part, dq) =
                    loss.query_rows(pooled, &targets, queries.len(), positives, negatives);
                total += part;
                d_queries.extend(dq.iter().cloned());
                dq
            });
        }
        let out = LossOutput {
            loss: total,
            d_queries,
            d_positives: Vec::new(),
            d_negatives: Vec::new(),
        };
        return (out, grads);
    }
    let q = embed_chunked(model, adapter, SeqAdapter::Trainable, queries, chunk_tokens);
    let (p, n) = match passages {
        Passages::Frozen {
            positives,
            negatives,
        } => (positives.clone(), negatives.clone()),
        Passages::Trained {
            positives,
            negatives,
        } => (
            embed_chunked(
                model,
                adapter,
                SeqAdapter::Trainable,
                positives,
                chunk_tokens,
            ),
            embed_chunked(
                model,
                adapter,
                SeqAdapter::Trainable,
                negatives,
                chunk_tokens,
            ),
        ),
    };
    let out = loss.compute(&q, &p, &n);
    backward_chunked(
        model,
        adapter,
        queries,
        &out.d_queries,
        &mut grads,
        chunk_tokens,
    );
    if let Passages::Trained {
        positives,
        negatives,
    } = passages
    {
        backward_chunked(
            model,
            adapter,
            positives,
            &out.d_positives,
            &mut grads,
            chunk_tokens,
        );
        backward_chunked(
            model,
            adapter,
            negatives,
            &out.d_negatives,
            &mut grads,
            chunk_tokens,
        );
    }
    (out, grads)
}

/// Consecutive runs of sequences holding at most `chunk_tokens` tokens (at least one each).
fn chunks(seqs: &[&[u32]], chunk_tokens: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, s) in seqs.iter().enumerate() {
        if i > start && tokens + s.len() > chunk_tokens {
            out.push(start..i);
            (start, tokens) = (i, 0);
        }
        tokens += s.len();
    }
    if start < seqs.len() {
        out.push(start..seqs.len());
    }
    out
}

fn embed_chunked(
    model: &TrainModel,
    adapter: &AdapterWeights,
    which: SeqAdapter,
    seqs: &[&[u32]],
    chunk_tokens: usize,
) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(seqs.len());
    for range in chunks(seqs, chunk_tokens) {
        let inputs: Vec<TrainInput> = seqs[range]
            .iter()
            .map(|ids| TrainInput {
                ids,
                adapter: which,
            })
            .collect();
        out.extend(model.embed(adapter, &inputs));
    }
    out
}

fn backward_chunked(
    model: &TrainModel,
    adapter: &AdapterWeights,
    seqs: &[&[u32]],
    d_pooled: &[Vec<f32>],
    grads: &mut AdapterWeights,
    chunk_tokens: usize,
) {
    for range in chunks(seqs, chunk_tokens) {
        model.backward(adapter, &seqs[range.clone()], &d_pooled[range], grads);
    }
}

/// Pairs as token ids: every distinct passage text once.
struct Tokenized {
    queries: Vec<Vec<u32>>,
    passages: Vec<Vec<u32>>,
    /// Per pair: its positive's and its negatives' indices into `passages`.
    positive: Vec<usize>,
    negatives: Vec<Vec<usize>>,
}

/// The training state that a checkpoint keeps beside the adapter and the optimizer's moments.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    step: u64,
    /// The options and data the run was started with: a resume must match them.
    fingerprint: String,
    epoch_losses: Vec<f64>,
    eval: Vec<RetrievalMetrics>,
}

/// A training run over one data set.
pub struct Trainer<'m> {
    model: &'m TrainModel,
    options: TrainOptions,
    prefix: String,
    /// The trained adapter.
    pub adapter: AdapterWeights,
    /// The optimizer's state.
    pub optimizer: AdamW,
    data: Tokenized,
    /// The frozen side's adapter (query-side training).
    frozen: Option<AdapterWeights>,
    /// Pooled vectors of every passage under `frozen`, computed once.
    frozen_vectors: Vec<Vec<f32>>,
    eval: Option<(Tokenized, Vec<Vec<f32>>)>,
    fingerprint: String,
    chunk_tokens: usize,
    step: u64,
    epoch_losses: Vec<f64>,
    eval_history: Vec<RetrievalMetrics>,
}

impl<'m> Trainer<'m> {
    /// Checks the options against the model and the data, tokenises the pairs, and (query-side)
    /// embeds every passage once under the frozen task.
    pub fn new(
        model: &'m TrainModel,
        tokenizer: &TextTokenizer,
        options: TrainOptions,
        pairs: &[Pair],
        eval: Option<&[Pair]>,
    ) -> Result<Self> {
        check_options(model, &options, pairs.len())?;
        crate::adapters::check_task_name(&options.name)?;
        let config = model.config();
        let adapter = match &options.from {
            Some(task) => model.builtin_adapter(model.task_index(task)?)?,
            None => AdapterWeights::lora_init(config, options.seed),
        };
        let instruction = |task: &str| {
            config
                .task_instructions
                .get(task)
                .cloned()
                .unwrap_or_default()
        };
        let prefix = match (&options.prefix, &options.from) {
            (Some(p), _) => p.clone(),
            (None, Some(task)) => instruction(task),
            (None, None) => String::new(),
        };
        let (frozen, passage_prefix) = match &options.side {
            Side::Query { passage_task } => (
                Some(model.builtin_adapter(model.task_index(passage_task)?)?),
                instruction(passage_task),
            ),
            Side::Joint => (None, prefix.clone()),
        };
        let ids = Ids {
            tokenizer,
            max_tokens: options.max_tokens,
            eos: config.eos_token_id,
            bos: config.bos_token_id,
        };
        let data = ids.tokenize(pairs, &prefix, &passage_prefix)?;
        let eval = eval
            .map(|pairs| ids.tokenize(pairs, &prefix, &passage_prefix))
            .transpose()?;
        let chunk_tokens = match options.chunk_tokens {
            // Chunks whose activations the backward keeps (the full model: about 520 tokens).
            0 => (super::encoder::TAPE_BUDGET_BYTES / model.tape_bytes_per_token())
                .clamp(options.max_tokens, 8192),
            n => n,
        };
        let embed_frozen = |passages: &[Vec<u32>]| -> Vec<Vec<f32>> {
            match &frozen {
                Some(f) => {
                    let seqs: Vec<&[u32]> = passages.iter().map(|p| p.as_slice()).collect();
                    embed_chunked(model, f, SeqAdapter::Trainable, &seqs, chunk_tokens)
                }
                None => Vec::new(),
            }
        };
        let frozen_vectors = embed_frozen(&data.passages);
        let eval = eval.map(|set| {
            let vectors = embed_frozen(&set.passages);
            (set, vectors)
        });
        let fingerprint = fingerprint(&options, pairs);
        let optimizer = AdamW::new(options.optimizer, &adapter);
        Ok(Trainer {
            model,
            prefix,
            adapter,
            optimizer,
            data,
            frozen,
            frozen_vectors,
            eval,
            fingerprint,
            chunk_tokens,
            step: 0,
            epoch_losses: Vec::new(),
            eval_history: Vec::new(),
            options,
        })
    }

    /// The trained task's instruction prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Tokens differentiated at once.
    pub fn chunk_tokens(&self) -> usize {
        self.chunk_tokens
    }

    /// The options the run was made with.
    pub fn options(&self) -> &TrainOptions {
        &self.options
    }

    /// Steps per epoch: every pair once, the last batch possibly smaller.
    pub fn steps_per_epoch(&self) -> u64 {
        self.data.queries.len().div_ceil(self.options.batch) as u64
    }

    /// Steps of the whole run.
    pub fn total_steps(&self) -> u64 {
        self.steps_per_epoch() * self.options.epochs as u64
    }

    /// Steps done.
    pub fn step(&self) -> u64 {
        self.step
    }

    fn schedule(&self) -> Schedule {
        let total = self.total_steps();
        Schedule {
            peak: self.options.optimizer.lr,
            warmup: (total as f64 * self.options.warmup_ratio as f64).round() as u64,
            total,
        }
    }

    /// The pair indices of step `step`: epoch `step / steps_per_epoch`'s own shuffle.
    fn batch_of(&self, step: u64) -> Vec<usize> {
        let per_epoch = self.steps_per_epoch();
        let epoch = step / per_epoch;
        let order = shuffled(self.data.queries.len(), self.options.seed, epoch);
        let start = (step % per_epoch) as usize * self.options.batch;
        order[start..(start + self.options.batch).min(order.len())].to_vec()
    }

    /// One optimizer step on the given pairs; returns the batch's loss.
    pub fn train_step(&mut self, pairs: &[usize]) -> f64 {
        let queries: Vec<&[u32]> = pairs
            .iter()
            .map(|&i| self.data.queries[i].as_slice())
            .collect();
        let positive: Vec<usize> = pairs.iter().map(|&i| self.data.positive[i]).collect();
        let negative: Vec<usize> = pairs
            .iter()
            .flat_map(|&i| self.data.negatives[i].iter().copied())
            .collect();
        let passages = if self.frozen.is_some() {
            let pick = |ix: &[usize]| ix.iter().map(|&j| self.frozen_vectors[j].clone()).collect();
            Passages::Frozen {
                positives: pick(&positive),
                negatives: pick(&negative),
            }
        } else {
            let pick = |ix: &[usize]| {
                ix.iter()
                    .map(|&j| self.data.passages[j].as_slice())
                    .collect()
            };
            Passages::Trained {
                positives: pick(&positive),
                negatives: pick(&negative),
            }
        };
        let (out, mut grads) = batch_gradients(
            self.model,
            &self.adapter,
            &self.options.loss,
            &queries,
            &passages,
            self.chunk_tokens,
        );
        if let Some(max) = self.options.max_grad_norm {
            clip_grad_norm(&mut grads, max);
        }
        let lr = self.schedule().lr(self.step);
        self.optimizer.step(&mut self.adapter, &grads, lr);
        self.step += 1;
        out.loss
    }

    /// recall@1/@10, MRR@10 and nDCG@10 of the evaluation pairs under the adapter as it is now.
    pub fn evaluate(&self) -> Option<RetrievalMetrics> {
        let (set, frozen) = self.eval.as_ref()?;
        let embed = |v: &[Vec<u32>]| {
            let refs: Vec<&[u32]> = v.iter().map(|s| s.as_slice()).collect();
            let pooled = embed_chunked(
                self.model,
                &self.adapter,
                SeqAdapter::Trainable,
                &refs,
                self.chunk_tokens,
            );
            pooled.into_iter().map(normalized).collect::<Vec<_>>()
        };
        let queries = embed(&set.queries);
        let corpus = if self.frozen.is_some() {
            frozen.iter().cloned().map(normalized).collect()
        } else {
            embed(&set.passages)
        };
        Some(RetrievalMetrics::compute(&queries, &corpus, &set.positive))
    }

    /// Runs the remaining steps, evaluating before the first epoch and after each, and calls
    /// `checkpoint` after every step. Returns early, `stopped`, once `stop` is set.
    pub fn run(
        &mut self,
        stop: &AtomicBool,
        progress: &mut dyn FnMut(&Progress),
        checkpoint: &mut dyn FnMut(&Trainer) -> Result<()>,
    ) -> Result<TrainReport> {
        let total = self.total_steps();
        let per_epoch = self.steps_per_epoch();
        progress(&Progress::Started {
            step: self.step,
            total_steps: total,
            pairs: self.data.queries.len(),
        });
        if self.step == 0 {
            if let Some(metrics) = self.evaluate() {
                self.eval_history.push(metrics);
                progress(&Progress::Eval { epoch: 0, metrics });
            }
        }
        let started = Instant::now();
        let (mut pairs_done, mut stopped) = (0usize, false);
        let mut epoch_sum = (0.0, 0u64);
        while self.step < total {
            if stop.load(Ordering::Relaxed) {
                stopped = true;
                break;
            }
            let batch = self.batch_of(self.step);
            let lr = self.schedule().lr(self.step);
            let loss = self.train_step(&batch);
            if !loss.is_finite() {
                return Err(Error::Training(format!(
                    "the loss is {loss} at step {}: lower --lr",
                    self.step
                )));
            }
            pairs_done += batch.len();
            epoch_sum = (epoch_sum.0 + loss, epoch_sum.1 + 1);
            let epoch = ((self.step - 1) / per_epoch) as usize + 1;
            progress(&Progress::Step {
                step: self.step,
                total_steps: total,
                epoch,
                loss,
                lr,
                pairs_per_second: pairs_done as f64 / started.elapsed().as_secs_f64().max(1e-9),
            });
            if self.step.is_multiple_of(per_epoch) {
                self.epoch_losses
                    .push(epoch_sum.0 / epoch_sum.1.max(1) as f64);
                epoch_sum = (0.0, 0);
                if let Some(metrics) = self.evaluate() {
                    self.eval_history.push(metrics);
                    progress(&Progress::Eval { epoch, metrics });
                }
            }
            checkpoint(self)?;
        }
        let seconds = started.elapsed().as_secs_f64();
        Ok(TrainReport {
            steps: self.step,
            total_steps: total,
            epoch_losses: self.epoch_losses.clone(),
            eval: self.eval_history.clone(),
            seconds,
            pairs_per_second: pairs_done as f64 / seconds.max(1e-9),
            stopped,
        })
    }

    /// Writes the adapter folder (PEFT layout and `jina_adapter.json` with the settings and
    /// the evaluation figures) into `dir`.
    pub fn save_adapter(&self, dir: &Path, report: &TrainReport) -> Result<()> {
        let mut metadata = AdapterMetadata::new(
            &self.options.name,
            &self.prefix,
            self.model.config(),
            Some(self.model.weights_sha256()?),
        );
        metadata.training = serde_json::json!({
            "options": self.options,
            "passage_task": match &self.options.side {
                Side::Query { passage_task } => serde_json::Value::from(passage_task.as_str()),
                Side::Joint => serde_json::Value::Null,
            },
            "pairs": self.data.queries.len(),
            "steps": report.steps,
            "epoch_losses": report.epoch_losses,
            "seconds": report.seconds,
            "pairs_per_second": report.pairs_per_second,
        });
        metadata.eval = serde_json::to_value(&report.eval).unwrap_or_default();
        folder::save(dir, &self.adapter, &metadata)
    }

    /// Writes the state to resume from into `dir` (replaced atomically file by file): the
    /// adapter, the optimizer's moments, and the step.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        let report = TrainReport {
            steps: self.step,
            ..TrainReport::default()
        };
        self.save_adapter(dir, &report)?;
        let mut named: Vec<(String, Vec<f32>)> = Vec::new();
        for (i, (m, v)) in self.optimizer.m.iter().zip(&self.optimizer.v).enumerate() {
            named.push((format!("m.{i}"), m.clone()));
            named.push((format!("v.{i}"), v.clone()));
        }
        let bytes: Vec<(String, Vec<u8>, usize)> = named
            .iter()
            .map(|(n, t)| {
                (
                    n.clone(),
                    t.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    t.len(),
                )
            })
            .collect();
        let views: Vec<(String, TensorView)> = bytes
            .iter()
            .map(|(n, b, len)| {
                let view = TensorView::new(Dtype::F32, vec![*len], b).expect("length matches");
                (n.clone(), view)
            })
            .collect();
        let encoded = safetensors::serialize(views, None)
            .map_err(|e| Error::Training(format!("cannot encode the optimizer state: {e}")))?;
        write_atomic(&dir.join(OPTIMIZER_FILE), &encoded)?;
        let state = CheckpointState {
            step: self.step,
            fingerprint: self.fingerprint.clone(),
            epoch_losses: self.epoch_losses.clone(),
            eval: self.eval_history.clone(),
        };
        let json = serde_json::to_vec_pretty(&state).expect("plain data");
        write_atomic(&dir.join(STATE_FILE), &json)
    }

    /// Restores a checkpoint written by [`Trainer::save_checkpoint`] for the same options and
    /// data; anything else is refused.
    pub fn load_checkpoint(&mut self, dir: &Path) -> Result<()> {
        let bad =
            |message: String| Error::Training(format!("checkpoint {}: {message}", dir.display()));
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|source| Error::Io {
                path: dir.join(name),
                source,
            })
        };
        let state: CheckpointState = serde_json::from_slice(&read(STATE_FILE)?)
            .map_err(|e| bad(format!("{STATE_FILE}: {e}")))?;
        if state.fingerprint != self.fingerprint {
            return Err(bad(
                "it was made with other options or data; start afresh with another --out, or \
                 resume with the original ones"
                    .into(),
            ));
        }
        let adapter = folder::load(dir, self.model.config())?.weights;
        let bytes = read(OPTIMIZER_FILE)?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let tensor = |name: String, len: usize| -> Result<Vec<f32>> {
            let view = file
                .tensor(&name)
                .map_err(|e| bad(format!("{name}: {e}")))?;
            let values: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if values.len() != len {
                return Err(bad(format!(
                    "{name} has {} values, not {len}",
                    values.len()
                )));
            }
            Ok(values)
        };
        let lens: Vec<usize> = adapter.tensors().iter().map(|t| t.len()).collect();
        let mut optimizer = AdamW::new(self.options.optimizer, &adapter);
        for (i, len) in lens.into_iter().enumerate() {
            optimizer.m[i] = tensor(format!("m.{i}"), len)?;
            optimizer.v[i] = tensor(format!("v.{i}"), len)?;
        }
        optimizer.step = state.step;
        self.adapter = adapter;
        self.optimizer = optimizer;
        self.step = state.step;
        self.epoch_losses = state.epoch_losses;
        self.eval_history = state.eval;
        Ok(())
    }
}

/// Where a run keeps its checkpoint inside its output folder.
pub fn checkpoint_dir(out: &Path) -> PathBuf {
    out.join("checkpoint")
}

/// Refuses to overwrite a finished adapter, to start afresh over an unfinished run, or to
/// resume without a checkpoint: checked before any work.
pub fn check_out_dir(out: &Path, resume: bool) -> Result<()> {
    let checkpoint = checkpoint_dir(out);
    let fail = |m: String| Err(Error::Training(m));
    if out.join(folder::METADATA).exists() && !checkpoint.exists() {
        return fail(format!(
            "--out {} already holds a trained adapter: choose another folder or delete it",
            out.display()
        ));
    }
    if resume && !checkpoint.join(STATE_FILE).exists() {
        return fail(format!(
            "--resume: {} holds no checkpoint to resume from",
            checkpoint.display()
        ));
    }
    if !resume && checkpoint.exists() {
        return fail(format!(
            "--out {} holds an unfinished run's checkpoint: pass --resume to go on, or delete it",
            out.display()
        ));
    }
    Ok(())
}

impl Trainer<'_> {
    /// The whole run into `out`: resumes from its checkpoint when asked, checkpoints after every
    /// step, and once finished writes the adapter folder and removes the checkpoint. When
    /// stopped, the checkpoint stays (the report says `stopped`).
    pub fn run_in(
        &mut self,
        out: &Path,
        resume: bool,
        stop: &AtomicBool,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<TrainReport> {
        check_out_dir(out, resume)?;
        let checkpoint = checkpoint_dir(out);
        if resume {
            self.load_checkpoint(&checkpoint)?;
        }
        let report = self.run(stop, progress, &mut |t| t.save_checkpoint(&checkpoint))?;
        if !report.stopped {
            self.save_adapter(out, &report)?;
            std::fs::remove_dir_all(&checkpoint).map_err(|source| Error::Io {
                path: checkpoint.clone(),
                source,
            })?;
        }
        Ok(report)
    }
}

/// The optimizer's moments in a checkpoint folder.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The step and the run's fingerprint in a checkpoint folder.
pub const STATE_FILE: &str = "trainer_state.json";

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |path: PathBuf| move |source| Error::Io { path, source };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io(tmp.clone()))?;
    std::fs::rename(&tmp, path).map_err(io(path.to_path_buf()))
}

fn check_options(model: &TrainModel, o: &TrainOptions, pairs: usize) -> Result<()> {
    let fail = |m: String| Err(Error::Training(m));
    if o.batch == 0 {
        return fail("--batch must be at least 1".into());
    }
    if o.batch > pairs {
        return fail(format!(
            "--batch {} is larger than the data ({pairs} pairs)",
            o.batch
        ));
    }
    if o.epochs == 0 {
        return fail("--epochs must be at least 1".into());
    }
    let limit = model.max_positions();
    if o.max_tokens < 3 || o.max_tokens > limit {
        return fail(format!(
            "--max-tokens {} is outside 3..={limit} (the model's positions)",
            o.max_tokens
        ));
    }
    let lr = o.optimizer.lr;
    if !(lr.is_finite() && lr > 0.0 && lr <= 1.0) {
        return fail(format!("--lr {lr} must be in (0, 1]"));
    }
    if !(0.0..=1.0).contains(&o.warmup_ratio) {
        return fail(format!("--warmup {} must be in [0, 1]", o.warmup_ratio));
    }
    let width = model.hidden_size();
    if let Some(&d) = o.loss.dims.iter().find(|&&d| d == 0 || d > width) {
        return fail(format!("--matryoshka width {d} is outside 1..={width}"));
    }
    if o.chunk_tokens != 0 && o.chunk_tokens < o.max_tokens {
        return fail(format!(
            "chunk_tokens {} must hold one sequence of --max-tokens {}",
            o.chunk_tokens, o.max_tokens
        ));
    }
    Ok(())
}

/// Tokenises texts as the engine embeds them: prefix, `<s>` … `</s>`, cut to `max_tokens`.
struct Ids<'a> {
    tokenizer: &'a TextTokenizer,
    max_tokens: usize,
    eos: u32,
    bos: u32,
}

impl Ids<'_> {
    /// Each text's ids, by the inference path's own tokenisation (`tokenize::plan`, truncating).
    fn encode(&self, prefix: &str, texts: Vec<String>) -> Result<Vec<Vec<u32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let params = crate::tokenize::PlanParams {
            adapter: None,
            prefix,
            max_tokens: self.max_tokens,
            truncate: true,
            late_chunking: crate::tokenize::LateChunking::Off,
            eos: self.eos,
            bos: self.bos,
        };
        let plan = crate::tokenize::plan(self.tokenizer, &texts, &params)?;
        // One sequence per text, in input order (`LateChunking::Off`).
        Ok(plan.sequences.into_iter().map(|s| s.ids).collect())
    }

    fn tokenize<'p>(
        &self,
        pairs: &'p [Pair],
        prefix: &str,
        passage_prefix: &str,
    ) -> Result<Tokenized> {
        // Every distinct passage text once.
        let mut index: HashMap<&'p str, usize> = HashMap::new();
        let mut texts: Vec<String> = Vec::new();
        let mut positive = Vec::with_capacity(pairs.len());
        let mut negatives = Vec::with_capacity(pairs.len());
        for pair in pairs {
            let mut intern = |text: &'p str| -> usize {
                *index.entry(text).or_insert_with(|| {
                    texts.push(text.to_string());
                    texts.len() - 1
                })
            };
            positive.push(intern(&pair.positive));
            negatives.push(pair.negatives.iter().map(|n| intern(n)).collect());
        }
        Ok(Tokenized {
            queries: self.encode(prefix, pairs.iter().map(|p| p.query.clone()).collect())?,
            passages: self.encode(passage_prefix, texts)?,
            positive,
            negatives,
        })
    }
}

/// `0..n` shuffled by Fisher-Yates with splitmix64 seeded from `(seed, epoch)`.
fn shuffled(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut state = seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        crate::fixture::mix64(state)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// A digest of the options and the data, to refuse resuming a different run.
fn fingerprint(options: &TrainOptions, pairs: &[Pair]) -> String {
    let rows: Vec<(&str, &str, &[String])> = pairs
        .iter()
        .map(|p| {
            (
                p.query.as_str(),
                p.positive.as_str(),
                p.negatives.as_slice(),
            )
        })
        .collect();
    let bytes = serde_json::to_vec(&(options, rows)).unwrap_or_default();
    format!("{:016x}", crate::fixture::fnv1a64(&bytes))
}

fn normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt()
        .max(1e-12);
    v.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffles_are_permutations_fixed_by_seed_and_epoch() {
        let a = shuffled(50, 7, 0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, shuffled(50, 7, 0));
        assert_ne!(a, shuffled(50, 7, 1));
        assert_ne!(a, shuffled(50, 8, 0));
    }

    #[test]
    fn chunks_respect_the_token_budget() {
        let seqs: Vec<Vec<u32>> = [5, 5, 5, 12, 1].iter().map(|&n| vec![0; n]).collect();
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        assert_eq!(chunks(&refs, 10), vec![0..2, 2..3, 3..4, 4..5]);
        assert_eq!(chunks(&refs, 100), vec![0..5]);
    }
}
