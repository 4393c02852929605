//! The jina-embeddings-v3 encoder: XLM-RoBERTa with rotary positions, post-LayerNorm blocks and
//! per-sequence task LoRA adapters (spec §3).
//!
//! Sequences are packed one after another into a `tokens × hidden` matrix: no padding, so no
//! mask, and a sequence's result cannot depend on what it is batched with. Each sequence carries
//! its own adapter, so one batch can mix tasks. The file reads top to bottom, from the smallest
//! layer to the whole encoder: `Linear` (with its LoRA), `Norm`, `Embeddings`, `Attention`,
//! `Mlp`, `Block`, `Encoder`, each with a `load` (the only place weight names appear) and a
//! `forward`. Which kernels run was decided once, at load, by [`KernelPlan`]: this file never
//! looks at the CPU. Each layer's `forward` enters a TRACE span, so a subscriber can time them.

use rayon::prelude::*;
use tracing::trace_span;

use crate::config::Config;
use crate::error::Result;
use crate::kernels::linear::{self, LowRank, LowRankInputs, PackedMatrix, PackedType};
use crate::kernels::{self, Cpu, KernelPlan, MatmulInit, RotaryTable, SequenceRange};
use crate::precision::Precision;
use crate::weights::{FileTable, Weights};

/// One sequence of a batch as the encoder sees it.
#[derive(Debug, Clone, Copy)]
pub struct EncoderInput<'a> {
    /// Token ids, `<s>` and `</s>` included where the sequence has them.
    pub ids: &'a [u32],
    /// Task adapter index, or `None` for the base weights.
    pub adapter: Option<usize>,
}

/// Contiguous rows of a batch that share one adapter.
#[derive(Debug, Clone, Copy)]
struct Segment {
    start: usize,
    len: usize,
    adapter: Option<usize>,
}

/// A linear layer `y = x·Wᵀ + b` with one rank-r LoRA adapter per task.
///
/// The official code adds `s·B[t]·A[t]` to `W` before the product; here the adapter is applied as
/// the side product `s·(x·A[t]ᵀ)·B[t]ᵀ`, which is the same up to rounding, costs `2r/in` of the
/// main product, and lets every sequence of a batch use its own adapter.
///
/// bf16 weights carry every task's `B` as extra input columns after `W` (`tasks · r` of them,
/// 20 after 1024 or 4096 inputs), and the product reads each row's `s·x·A[t]ᵀ` in its task's
/// slot there ([`LowRankInputs`]): the up-projection is part of the AMX product (one more tile
/// step) instead of an epilogue on every output block. Timed alternately in one process
/// (`gemm_speed` example, `GEMM_SPEED_LORA=1`), bf16 at 1024 × 1024 × 3072 ran at 1.12–1.15×
/// the epilogue's speed and as fast at 1024 × 4096 × 1024; bf16x3 (f32), whose product does
/// three times the work, gained nothing, so it keeps the exact f32 epilogue.
struct Linear {
    weight: LinearWeight,
    bias: Vec<f32>,
    lora_a: Vec<f32>,
    lora_b: Vec<f32>,
    /// `lora_b` of each task transposed to `[rank × n_out]`, for the product's epilogue; empty
    /// where the weights carry `B` as extra columns.
    lora_b_t: Vec<f32>,
    /// Tasks whose `B` the packed weights carry as extra input columns (0: none).
    lora_slots: usize,
    n_in: usize,
    n_out: usize,
    rank: usize,
    scaling: f32,
    cpu: Cpu,
}

/// The base weight of a linear layer, in the storage its kernel reads.
enum LinearWeight {
    /// Row-major `[out, in]` f32, multiplied by the `gemm` crate.
    Gemm(Vec<f32>),
    /// Packed panels (f32, bf16, bf16x3 or int8), with the kernel they were packed for.
    Packed(PackedMatrix),
}

impl Linear {
    fn load(w: &Weights, prefix: &str, config: &Config, plan: &KernelPlan) -> Result<Self> {
        let base = format!("{prefix}.parametrizations.weight");
        let weight = w.f32(&format!("{base}.original"))?;
        let bias = w.f32(&format!("{prefix}.bias"))?;
        let n_out = bias.len();
        let n_in = weight.len() / n_out;
        let rank = config.lora_rank;
        let lora_b = w.f32(&format!("{base}.0.lora_B"))?;
        let tasks = lora_b.len() / (n_out * rank).max(1);
        let cpu = plan.cpu;
        let weight = match plan.linear.storage() {
            None => LinearWeight::Gemm(weight),
            // bf16 products carry the adapters' B as extra inputs (see above).
            Some(PackedType::Bf16) if tasks * rank > 0 => {
                let columns = with_lora_columns(&weight, &lora_b, n_out, rank);
                LinearWeight::Packed(PackedMatrix::pack(
                    &columns,
                    n_out,
                    n_in + tasks * rank,
                    PackedType::Bf16,
                    cpu,
                ))
            }
            Some(ty) => LinearWeight::Packed(PackedMatrix::pack(&weight, n_out, n_in, ty, cpu)),
        };
        let lora_slots = match &weight {
            LinearWeight::Packed(w) if w.k() > n_in => tasks,
            _ => 0,
        };
        Ok(Linear {
            n_in,
            n_out,
            weight,
            bias,
            lora_a: w.f32(&format!("{base}.0.lora_A"))?,
            lora_b_t: if lora_slots > 0 {
                Vec::new()
            } else {
                transpose_per_task(&lora_b, n_out, rank)
            },
            lora_b,
            lora_slots,
            rank,
            scaling: config.lora_scaling(),
            cpu,
        })
    }

    /// `out = x·Wᵀ + b (+ LoRA per segment)`, then GELU when `gelu`; `x` is `tokens × n_in`, `out`
    /// is `tokens × n_out`.
    fn forward(&self, x: &[f32], segments: &[Segment], out: &mut [f32], gelu: bool) {
        let tokens = x.len() / self.n_in;
        let out = &mut out[..tokens * self.n_out];
        let runs = merge_adapter_runs(segments);
        let low = self.lora_down(x, &runs, tokens);
        let init = MatmulInit::Bias(&self.bias);
        match &self.weight {
            LinearWeight::Gemm(w) => {
                kernels::matmul_transposed(
                    x, self.n_in, tokens, self.n_in, w, self.n_out, out, init, true,
                );
                for seg in &runs {
                    let Some(task) = seg.adapter else { continue };
                    let b = &self.lora_b
                        [task * self.n_out * self.rank..(task + 1) * self.n_out * self.rank];
                    let low = &low[seg.start * self.rank..(seg.start + seg.len) * self.rank];
                    let dst = &mut out[seg.start * self.n_out..(seg.start + seg.len) * self.n_out];
                    kernels::matmul_transposed(
                        low,
                        self.rank,
                        seg.len,
                        self.rank,
                        b,
                        self.n_out,
                        dst,
                        MatmulInit::Accumulate,
                        true,
                    );
                }
                if gelu {
                    kernels::gelu_erf_in_place(out, self.cpu);
                }
            }
            LinearWeight::Packed(w) if self.lora_slots > 0 => {
                let mut slot = vec![None; tokens];
                for seg in &runs {
                    slot[seg.start..seg.start + seg.len].fill(seg.adapter);
                }
                let inputs = LowRankInputs {
                    low: &low,
                    rank: self.rank,
                    slot: &slot,
                    slots: self.lora_slots,
                };
                let epilogue = linear::Epilogue {
                    low_rank: None,
                    gelu,
                };
                linear::matmul_extended(
                    x,
                    self.n_in,
                    tokens,
                    Some(inputs),
                    w,
                    out,
                    self.n_out,
                    init,
                    epilogue,
                    true,
                );
            }
            LinearWeight::Packed(w) => {
                // The LoRA up-projection and GELU are applied to each output block as it is
                // stored: no extra passes over the output.
                let task_size = self.rank * self.n_out;
                let mut up = vec![None; tokens];
                for seg in &runs {
                    if let Some(task) = seg.adapter {
                        let b_t = &self.lora_b_t[task * task_size..(task + 1) * task_size];
                        up[seg.start..seg.start + seg.len].fill(Some(b_t));
                    }
                }
                let low_rank = LowRank {
                    low: &low,
                    rank: self.rank,
                    up: &up,
                };
                let epilogue = linear::Epilogue {
                    low_rank: Some(low_rank),
                    gelu,
                };
                linear::matmul_with(
                    x, self.n_in, tokens, w, out, self.n_out, init, epilogue, true,
                );
            }
        }
    }

    /// LoRA's down-projection `s·x·Aᵀ` (`tokens × rank`) of the rows of each run with an
    /// adapter; zero elsewhere.
    fn lora_down(&self, x: &[f32], runs: &[Segment], tokens: usize) -> Vec<f32> {
        let mut low = vec![0f32; tokens * self.rank];
        for seg in runs {
            let Some(task) = seg.adapter else { continue };
            let xs = &x[seg.start * self.n_in..(seg.start + seg.len) * self.n_in];
            let a = &self.lora_a[task * self.rank * self.n_in..(task + 1) * self.rank * self.n_in];
            let dst = &mut low[seg.start * self.rank..(seg.start + seg.len) * self.rank];
            kernels::matmul_thin(xs, seg.len, self.n_in, a, self.rank, dst, self.cpu);
            dst.iter_mut().for_each(|v| *v *= self.scaling);
        }
        low
    }

    /// Bytes its weights hold in memory.
    fn weight_bytes(&self) -> usize {
        match &self.weight {
            LinearWeight::Gemm(w) => 4 * w.len(),
            LinearWeight::Packed(w) => w.bytes(),
        }
    }
}

/// Neighbouring segments with the same adapter, joined: one LoRA product per run of sequences
/// instead of one per sequence (a batch of one task is a single run).
fn merge_adapter_runs(segments: &[Segment]) -> Vec<Segment> {
    let mut runs: Vec<Segment> = Vec::with_capacity(segments.len());
    for seg in segments {
        match runs.last_mut() {
            Some(last) if last.adapter == seg.adapter && last.start + last.len == seg.start => {
                last.len += seg.len
            }
            _ => runs.push(*seg),
        }
    }
    runs
}

/// LayerNorm weights.
struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn load(w: &Weights, prefix: &str, config: &Config) -> Result<Self> {
        Ok(Norm {
            weight: w.f32(&format!("{prefix}.weight"))?,
            bias: w.f32(&format!("{prefix}.bias"))?,
            eps: config.layer_norm_eps as f32,
        })
    }

    /// `x = LayerNorm(x)`, rows of `width`.
    fn forward(&self, x: &mut [f32], width: usize, cpu: Cpu) {
        kernels::layer_norm_in_place(x, width, &self.weight, &self.bias, self.eps, cpu);
    }

    /// Post-LN: `x = LayerNorm(y + x)`, with `y` as scratch.
    fn add_and_forward(&self, y: &mut [f32], x: &mut [f32], width: usize, cpu: Cpu) {
        kernels::add_residual_layer_norm(y, x, width, &self.weight, &self.bias, self.eps, cpu);
        x.copy_from_slice(y);
    }
}

/// Word and token-type embeddings (each with its LoRA), then the embedding LayerNorm.
struct Embeddings {
    /// `vocab × hidden`, left in the file.
    words: FileTable,
    /// `adapters·vocab × rank`: the embedding LoRA's `A`, stored `[vocab, r]` per adapter.
    words_lora_a: FileTable,
    /// `adapters × rank × hidden`.
    words_lora_b: Vec<f32>,
    /// Token-type row 0 with each adapter's delta folded in; index 0 is the base row,
    /// index `t + 1` adapter `t`.
    token_type: Vec<Vec<f32>>,
    norm: Norm,
    hidden: usize,
    rank: usize,
    scaling: f32,
}

impl Embeddings {
    fn load(w: &Weights, config: &Config) -> Result<Self> {
        let h = config.hidden_size;
        let r = config.lora_rank;
        let scaling = config.lora_scaling();
        let tt = "roberta.embeddings.token_type_embeddings.parametrizations.weight";
        let tt_base = w.f32(&format!("{tt}.original"))?;
        let tt_a = w.f32(&format!("{tt}.0.lora_A"))?;
        let tt_b = w.f32(&format!("{tt}.0.lora_B"))?;
        let rows = config.type_vocab_size;
        let mut token_type = vec![tt_base[..h].to_vec()];
        for t in 0..config.num_adapters() {
            // Row 0 of E + s·(A[t]·B[t]), as the reference materialises it.
            let a_row = &tt_a[t * rows * r..t * rows * r + r];
            let b = &tt_b[t * r * h..(t + 1) * r * h];
            token_type.push(lora_row(&tt_base[..h], a_row, b, scaling));
        }
        let word = "roberta.embeddings.word_embeddings.parametrizations.weight";
        Ok(Embeddings {
            words: w.table(&format!("{word}.original"))?,
            words_lora_a: w.table(&format!("{word}.0.lora_A"))?,
            words_lora_b: w.f32(&format!("{word}.0.lora_B"))?,
            token_type,
            norm: Norm::load(w, "roberta.emb_ln", config)?,
            hidden: h,
            rank: r,
            scaling,
        })
    }

    /// Fills `out` (`tokens × hidden`) with the normalised embeddings of every sequence.
    fn forward(&self, batch: &[EncoderInput], segments: &[Segment], out: &mut [f32], cpu: Cpu) {
        let h = self.hidden;
        let vocab = self.words.rows();
        let mut jobs = Vec::with_capacity(out.len() / h.max(1));
        for (seq, seg) in batch.iter().zip(segments) {
            for &id in seq.ids {
                jobs.push((id as usize, seg.adapter));
            }
        }
        out.par_chunks_mut(h)
            .zip(jobs.par_iter())
            .for_each(|(row, &(id, adapter))| {
                self.words.read_row(id, row);
                if let Some(t) = adapter {
                    let mut a = vec![0f32; self.rank];
                    self.words_lora_a.read_row(t * vocab + id, &mut a);
                    let b = &self.words_lora_b[t * self.rank * h..(t + 1) * self.rank * h];
                    add_lora_row(row, &a, b, self.scaling);
                }
                let tt = &self.token_type[adapter.map_or(0, |t| t + 1)];
                for (v, t) in row.iter_mut().zip(tt) {
                    *v += t;
                }
            });
        self.norm.forward(out, h, cpu);
    }
}

/// `base + s·(a·B)` for one row: `a` is `[r]`, `B` is `[r, width]`.
fn lora_row(base: &[f32], a: &[f32], b: &[f32], scaling: f32) -> Vec<f32> {
    let mut row = base.to_vec();
    add_lora_row(&mut row, a, b, scaling);
    row
}

/// `row += s·(a·B)` in place, with the sum over the rank taken first, as the reference does.
fn add_lora_row(row: &mut [f32], a: &[f32], b: &[f32], scaling: f32) {
    let width = row.len();
    for (j, v) in row.iter_mut().enumerate() {
        let mut dot = 0f32;
        for (k, &ak) in a.iter().enumerate() {
            dot += ak * b[k * width + j];
        }
        *v += dot * scaling;
    }
}

/// Self-attention: the packed QKV projection, rotary positions on Q and K, tiled softmax
/// attention per sequence and head, the output projection.
struct Attention {
    wqkv: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(w: &Weights, prefix: &str, config: &Config, plan: &KernelPlan) -> Result<Self> {
        Ok(Attention {
            wqkv: Linear::load(w, &format!("{prefix}.Wqkv"), config, plan)?,
            out_proj: Linear::load(w, &format!("{prefix}.out_proj"), config, plan)?,
            heads: config.num_attention_heads,
            head_dim: config.head_dim(),
        })
    }

    /// `out = attention(x)`, `tokens × hidden`.
    fn forward(&self, x: &[f32], batch: &Batch, act: &mut Activations, out: &mut [f32]) {
        let _span = trace_span!("attention", tokens = batch.tokens).entered();
        trace_span!("qkv").in_scope(|| self.wqkv.forward(x, &batch.segments, &mut act.qkv, false));
        trace_span!("rotary").in_scope(|| {
            apply_rotary(
                &mut act.qkv,
                batch,
                self.heads * self.head_dim,
                self.head_dim,
            )
        });
        trace_span!("softmax").in_scope(|| {
            let kernel = (batch.plan.attention, batch.plan.cpu);
            kernels::attention(
                &act.qkv,
                &mut act.ctx,
                &batch.ranges,
                self.heads,
                self.head_dim,
                kernel,
            )
        });
        trace_span!("out_proj")
            .in_scope(|| self.out_proj.forward(&act.ctx, &batch.segments, out, false));
    }
}

/// Rotates every Q and K head vector by its position inside its own sequence (from 0).
fn apply_rotary(qkv: &mut [f32], batch: &Batch, h: usize, d: usize) {
    let mut positions = Vec::with_capacity(batch.tokens);
    for seg in &batch.segments {
        positions.extend(0..seg.len);
    }
    qkv.par_chunks_mut(3 * h)
        .zip(positions.par_iter())
        .for_each(|(row, &pos)| {
            // Q and K are the first 2·hidden values of the row, one head after another.
            for head in row[..2 * h].chunks_exact_mut(d) {
                batch.rotary.rotate(head, pos);
            }
        });
}

/// The feed-forward block: fc1, the exact GELU (fused into fc1's product), fc2.
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn load(w: &Weights, prefix: &str, config: &Config, plan: &KernelPlan) -> Result<Self> {
        Ok(Mlp {
            fc1: Linear::load(w, &format!("{prefix}.fc1"), config, plan)?,
            fc2: Linear::load(w, &format!("{prefix}.fc2"), config, plan)?,
        })
    }

    fn forward(&self, x: &[f32], batch: &Batch, act: &mut Activations, out: &mut [f32]) {
        let _span = trace_span!("mlp", tokens = batch.tokens).entered();
        trace_span!("fc1+gelu").in_scope(|| {
            self.fc1
                .forward(x, &batch.segments, &mut act.mlp_hidden, true)
        });
        trace_span!("fc2").in_scope(|| {
            self.fc2
                .forward(&act.mlp_hidden, &batch.segments, out, false)
        });
    }
}

/// One post-LN encoder block: `x = LN(attention(x) + x)`, then `x = LN(mlp(x) + x)`.
struct Block {
    attention: Attention,
    norm1: Norm,
    mlp: Mlp,
    norm2: Norm,
}

impl Block {
    fn load(w: &Weights, layer: usize, config: &Config, plan: &KernelPlan) -> Result<Self> {
        let p = format!("roberta.encoder.layers.{layer}");
        Ok(Block {
            attention: Attention::load(w, &format!("{p}.mixer"), config, plan)?,
            norm1: Norm::load(w, &format!("{p}.norm1"), config)?,
            mlp: Mlp::load(w, &format!("{p}.mlp"), config, plan)?,
            norm2: Norm::load(w, &format!("{p}.norm2"), config)?,
        })
    }

    fn forward(&self, x: &mut [f32], batch: &Batch, act: &mut Activations) {
        let h = x.len() / batch.tokens.max(1);
        let cpu = batch.plan.cpu;
        let mut out = std::mem::take(&mut act.out);
        self.attention.forward(x, batch, act, &mut out);
        trace_span!("layer_norm").in_scope(|| self.norm1.add_and_forward(&mut out, x, h, cpu));
        self.mlp.forward(x, batch, act, &mut out);
        trace_span!("layer_norm").in_scope(|| self.norm2.add_and_forward(&mut out, x, h, cpu));
        act.out = out;
    }

    fn weight_bytes(&self) -> usize {
        [
            &self.attention.wqkv,
            &self.attention.out_proj,
            &self.mlp.fc1,
            &self.mlp.fc2,
        ]
        .iter()
        .map(|l| l.weight_bytes())
        .sum()
    }
}

/// What every layer of one forward pass shares: the sequences' places, the rotary table, the plan.
struct Batch<'a> {
    segments: Vec<Segment>,
    ranges: Vec<SequenceRange>,
    tokens: usize,
    rotary: &'a RotaryTable,
    plan: &'a KernelPlan,
}

/// Buffers of one forward pass, sized for the batch and reused by every block.
struct Activations {
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    mlp_hidden: Vec<f32>,
    /// Each sub-layer's output before the residual LayerNorm.
    out: Vec<f32>,
}

/// The whole encoder.
pub struct Encoder {
    embeddings: Embeddings,
    blocks: Vec<Block>,
    rotary: RotaryTable,
    hidden: usize,
    intermediate: usize,
    plan: KernelPlan,
}

impl Encoder {
    /// Converts the checked weights into the encoder, in the storage `plan` chose (the word
    /// table stays mapped). The pooler is not loaded: embeddings do not use it.
    pub fn load(weights: &Weights, config: &Config, plan: KernelPlan) -> Result<Self> {
        let blocks = (0..config.num_hidden_layers)
            .map(|layer| Block::load(weights, layer, config, &plan))
            .collect::<Result<Vec<_>>>()?;
        Ok(Encoder {
            embeddings: Embeddings::load(weights, config)?,
            blocks,
            rotary: RotaryTable::new(
                config.head_dim(),
                config.rotary_emb_base,
                config.max_position_embeddings,
            ),
            hidden: config.hidden_size,
            intermediate: config.intermediate_size,
            plan,
        })
    }

    /// What runs: the kernels and precision resolved at load.
    pub fn plan(&self) -> &KernelPlan {
        &self.plan
    }

    /// Precision of the linear layers actually in use.
    pub fn precision(&self) -> Precision {
        self.plan.precision()
    }

    /// Bytes the linear layers' weights hold in memory (one copy, in the storage that runs).
    pub fn linear_weight_bytes(&self) -> usize {
        self.blocks.iter().map(Block::weight_bytes).sum()
    }

    /// Width of a token vector.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Longest sequence the rotary table covers.
    pub fn max_positions(&self) -> usize {
        self.rotary.positions()
    }

    /// Runs the batch and returns the last layer's token vectors, packed: sequence after
    /// sequence, `total tokens × hidden`.
    pub fn forward(&self, batch: &[EncoderInput]) -> Vec<f32> {
        let mut segments = Vec::with_capacity(batch.len());
        let mut start = 0;
        for seq in batch {
            assert!(
                seq.ids.len() <= self.max_positions(),
                "sequence longer than the rotary table"
            );
            segments.push(Segment {
                start,
                len: seq.ids.len(),
                adapter: seq.adapter,
            });
            start += seq.ids.len();
        }
        let tokens = start;
        let _span = trace_span!("forward", tokens, sequences = batch.len()).entered();
        let h = self.hidden;
        let mut x = vec![0f32; tokens * h];
        trace_span!("embeddings").in_scope(|| {
            self.embeddings
                .forward(batch, &segments, &mut x, self.plan.cpu)
        });
        let ranges = segments
            .iter()
            .map(|s| SequenceRange {
                start: s.start,
                len: s.len,
            })
            .collect();
        let shared = Batch {
            segments,
            ranges,
            tokens,
            rotary: &self.rotary,
            plan: &self.plan,
        };
        let mut act = Activations {
            qkv: vec![0f32; tokens * 3 * h],
            ctx: vec![0f32; tokens * h],
            mlp_hidden: vec![0f32; tokens * self.intermediate],
            out: vec![0f32; tokens * h],
        };
        for block in &self.blocks {
            block.forward(&mut x, &shared, &mut act);
        }
        x
    }
}

/// `weight` (`[n, in]`) with each row followed by that output's row of `B` for every task
/// (`lora_b` is `[task][n × rank]`): `[n, in + tasks · rank]`.
fn with_lora_columns(weight: &[f32], lora_b: &[f32], n: usize, rank: usize) -> Vec<f32> {
    let n_in = weight.len() / n.max(1);
    let tasks = lora_b.len() / (n * rank).max(1);
    let mut out = Vec::with_capacity(n * (n_in + tasks * rank));
    for c in 0..n {
        out.extend_from_slice(&weight[c * n_in..(c + 1) * n_in]);
        for task in lora_b.chunks_exact(n * rank) {
            out.extend_from_slice(&task[c * rank..(c + 1) * rank]);
        }
    }
    out
}

/// `[task][n × rank]` matrices transposed to `[task][rank × n]`.
fn transpose_per_task(b: &[f32], n: usize, rank: usize) -> Vec<f32> {
    let mut t = vec![0f32; b.len()];
    for (src, dst) in b.chunks_exact(n * rank).zip(t.chunks_exact_mut(n * rank)) {
        for c in 0..n {
            for j in 0..rank {
                dst[j * n + c] = src[c * rank + j];
            }
        }
    }
    t
}
