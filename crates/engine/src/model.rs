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

use crate::adapters::{add_scaled_row, LinearSite, TaskAdapter};
use crate::config::Config;
use crate::device::GpuHandle;
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
    /// Task adapter (built-in or custom), or `None` for the base weights.
    pub adapter: Option<&'a TaskAdapter>,
}

/// Contiguous rows of a batch that share one adapter.
#[derive(Debug, Clone, Copy)]
struct Segment<'a> {
    start: usize,
    len: usize,
    adapter: Option<&'a TaskAdapter>,
}

/// One run's LoRA tensors in a linear layer: `A` (`[rank × n_in]`), `B` (`[n_out × rank]`),
/// `Bᵀ` (`[rank × n_out]`, empty where the packed weights carry the built-in `B`), the
/// scaling, and the built-in task's slot in the packed weights (`None` for a custom adapter).
struct LoraParts<'a> {
    a: &'a [f32],
    b: &'a [f32],
    b_t: &'a [f32],
    scaling: f32,
    builtin: Option<usize>,
}

/// A linear layer `y = x·Wᵀ + b` with one rank-r LoRA adapter per task (the checkpoint's, and
/// any custom ones the batch's sequences carry, which hold their own tensors).
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
    /// `layer * 4 + site`: where a custom adapter keeps this layer's tensors.
    index: usize,
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
    fn load(
        w: &Weights,
        (layer, site): (usize, LinearSite),
        config: &Config,
        plan: &KernelPlan,
    ) -> Result<Self> {
        let prefix = format!("roberta.encoder.layers.{layer}.{}", site.module());
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
            index: layer * LinearSite::ALL.len() + site as usize,
            cpu,
        })
    }

    /// The LoRA tensors of `adapter` for this layer.
    fn lora<'a>(&'a self, adapter: &'a TaskAdapter) -> LoraParts<'a> {
        match adapter {
            TaskAdapter::Builtin(t) => {
                let size = self.rank * self.n_out;
                let a_size = self.rank * self.n_in;
                LoraParts {
                    a: &self.lora_a[t * a_size..(t + 1) * a_size],
                    b: &self.lora_b[t * size..(t + 1) * size],
                    b_t: self.lora_b_t.get(t * size..(t + 1) * size).unwrap_or(&[]),
                    scaling: self.scaling,
                    builtin: Some(*t),
                }
            }
            TaskAdapter::Custom(c) => {
                let (a, b, b_t) = c.linear_parts(self.index);
                LoraParts {
                    a,
                    b,
                    b_t,
                    scaling: c.weights().scaling,
                    builtin: None,
                }
            }
        }
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
                    let Some(adapter) = seg.adapter else { continue };
                    let b = self.lora(adapter).b;
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
                // Built-in tasks read their B from the packed extra columns; a custom adapter's
                // rows have no slot there and take the epilogue's low-rank term instead.
                let mut slot = vec![None; tokens];
                let mut up = vec![None; tokens];
                for seg in &runs {
                    let Some(adapter) = seg.adapter else { continue };
                    let parts = self.lora(adapter);
                    let rows = seg.start..seg.start + seg.len;
                    match parts.builtin {
                        Some(task) => slot[rows].fill(Some(task)),
                        None => up[rows].fill(Some(parts.b_t)),
                    }
                }
                let inputs = LowRankInputs {
                    low: &low,
                    rank: self.rank,
                    slot: &slot,
                    slots: self.lora_slots,
                };
                let low_rank = up.iter().any(Option::is_some).then_some(LowRank {
                    low: &low,
                    rank: self.rank,
                    up: &up,
                });
                let epilogue = linear::Epilogue { low_rank, gelu };
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
                let mut up = vec![None; tokens];
                for seg in &runs {
                    if let Some(adapter) = seg.adapter {
                        up[seg.start..seg.start + seg.len].fill(Some(self.lora(adapter).b_t));
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
            let Some(adapter) = seg.adapter else { continue };
            let parts = self.lora(adapter);
            let xs = &x[seg.start * self.n_in..(seg.start + seg.len) * self.n_in];
            let dst = &mut low[seg.start * self.rank..(seg.start + seg.len) * self.rank];
            kernels::matmul_thin(xs, seg.len, self.n_in, parts.a, self.rank, dst, self.cpu);
            dst.iter_mut().for_each(|v| *v *= parts.scaling);
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
fn merge_adapter_runs<'a>(segments: &[Segment<'a>]) -> Vec<Segment<'a>> {
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

/// LayerNorm weights (training's backward reads them too).
pub(crate) struct Norm {
    pub(crate) weight: Vec<f32>,
    pub(crate) bias: Vec<f32>,
    pub(crate) eps: f32,
}

impl Norm {
    pub(crate) fn load(w: &Weights, prefix: &str, config: &Config) -> Result<Self> {
        Ok(Norm {
            weight: w.f32(&format!("{prefix}.weight"))?,
            bias: w.f32(&format!("{prefix}.bias"))?,
            eps: config.layer_norm_eps as f32,
        })
    }

    /// `x = LayerNorm(x)`, rows of `width`.
    pub(crate) fn forward(&self, x: &mut [f32], width: usize, cpu: Cpu) {
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
            let mut row = tt_base[..h].to_vec();
            add_scaled_row(&mut row, a_row, b, scaling);
            token_type.push(row);
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
                let tt = match adapter {
                    None => &self.token_type[0],
                    Some(TaskAdapter::Builtin(t)) => {
                        let mut a = vec![0f32; self.rank];
                        self.words_lora_a.read_row(t * vocab + id, &mut a);
                        let b = &self.words_lora_b[t * self.rank * h..(t + 1) * self.rank * h];
                        add_scaled_row(row, &a, b, self.scaling);
                        &self.token_type[t + 1]
                    }
                    Some(TaskAdapter::Custom(c)) => {
                        let w = c.weights();
                        let a = &w.word_a[id * w.rank..(id + 1) * w.rank];
                        add_scaled_row(row, a, &w.word_b, w.scaling);
                        c.token_type_row()
                    }
                };
                for (v, t) in row.iter_mut().zip(tt) {
                    *v += t;
                }
            });
        self.norm.forward(out, h, cpu);
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
    fn load(w: &Weights, layer: usize, config: &Config, plan: &KernelPlan) -> Result<Self> {
        Ok(Attention {
            wqkv: Linear::load(w, (layer, LinearSite::Qkv), config, plan)?,
            out_proj: Linear::load(w, (layer, LinearSite::OutProj), config, plan)?,
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
    fn load(w: &Weights, layer: usize, config: &Config, plan: &KernelPlan) -> Result<Self> {
        Ok(Mlp {
            fc1: Linear::load(w, (layer, LinearSite::Fc1), config, plan)?,
            fc2: Linear::load(w, (layer, LinearSite::Fc2), config, plan)?,
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
            attention: Attention::load(w, layer, config, plan)?,
            norm1: Norm::load(w, &format!("{p}.norm1"), config)?,
            mlp: Mlp::load(w, layer, config, plan)?,
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
    segments: Vec<Segment<'a>>,
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

/// Where the blocks run: the CPU kernels, or a GPU ([`crate::device`] decided at load).
enum Blocks {
    Cpu(Vec<Block>),
    #[cfg(feature = "gpu")]
    Gpu(Box<crate::gpu::GpuBlocks>),
}

/// The whole encoder.
pub struct Encoder {
    embeddings: Embeddings,
    blocks: Blocks,
    rotary: RotaryTable,
    hidden: usize,
    intermediate: usize,
    plan: KernelPlan,
}

impl Encoder {
    /// Converts the checked weights into the encoder, in the storage `plan` chose (the word
    /// table stays mapped), its blocks on `gpu` when one was opened, else on the CPU. The
    /// pooler is not loaded: embeddings do not use it.
    pub(crate) fn load(
        weights: &Weights,
        config: &Config,
        plan: KernelPlan,
        gpu: Option<(GpuHandle, Precision)>,
    ) -> Result<Self> {
        let rotary = RotaryTable::new(
            config.head_dim(),
            config.rotary_emb_base,
            config.max_position_embeddings,
        );
        let blocks = match gpu {
            None => Blocks::Cpu(
                (0..config.num_hidden_layers)
                    .map(|layer| Block::load(weights, layer, config, &plan))
                    .collect::<Result<Vec<_>>>()?,
            ),
            #[cfg(feature = "gpu")]
            Some((context, precision)) => Blocks::Gpu(Box::new(crate::gpu::GpuBlocks::load(
                context, weights, config, &rotary, precision,
            )?)),
            #[cfg(not(feature = "gpu"))]
            Some((never, _)) => match never {},
        };
        Ok(Encoder {
            embeddings: Embeddings::load(weights, config)?,
            blocks,
            rotary,
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

    /// Bytes the linear layers' weights hold in host memory (one copy, in the storage that
    /// runs; none when the blocks run on a GPU, whose memory is [`Encoder::gpu_memory`]).
    pub fn linear_weight_bytes(&self) -> usize {
        match &self.blocks {
            Blocks::Cpu(blocks) => blocks.iter().map(Block::weight_bytes).sum(),
            #[cfg(feature = "gpu")]
            Blocks::Gpu(_) => 0,
        }
    }

    /// Device memory of the GPU blocks (`None` on the CPU).
    pub fn device_memory(&self) -> Option<crate::device::DeviceMemory> {
        match &self.blocks {
            Blocks::Cpu(_) => None,
            #[cfg(feature = "gpu")]
            Blocks::Gpu(gpu) => Some(gpu.memory()),
        }
    }

    /// Destroys the GPU device, as a driver reset would (nothing on the CPU).
    pub(crate) fn destroy_device(&self) {
        match &self.blocks {
            Blocks::Cpu(_) => {}
            #[cfg(feature = "gpu")]
            Blocks::Gpu(gpu) => gpu.destroy_device(),
        }
    }

    /// Tokens one forward pass on the device holds (`None`: no device limit, the CPU).
    pub fn device_max_tokens(&self) -> Option<usize> {
        match &self.blocks {
            Blocks::Cpu(_) => None,
            #[cfg(feature = "gpu")]
            Blocks::Gpu(gpu) => Some(gpu.max_tokens()),
        }
    }

    /// Width of a token vector.
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Row 0 of the base token-type table (a custom adapter folds its delta into a copy).
    pub fn token_type_base(&self) -> &[f32] {
        &self.embeddings.token_type[0]
    }

    /// Longest sequence the rotary table covers.
    pub fn max_positions(&self) -> usize {
        self.rotary.positions()
    }

    /// Runs the batch and returns the last layer's token vectors, packed: sequence after
    /// sequence, `total tokens × hidden`. Fails only on a device error (a GPU lost or out of
    /// memory); the CPU path cannot fail.
    pub fn forward(&self, batch: &[EncoderInput]) -> Result<Vec<f32>> {
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
        // Without the `gpu` feature the CPU is the only arm.
        #[allow(clippy::infallible_destructuring_match)]
        let blocks = match &self.blocks {
            Blocks::Cpu(blocks) => blocks,
            #[cfg(feature = "gpu")]
            Blocks::Gpu(gpu) => {
                return trace_span!("gpu blocks").in_scope(|| gpu.forward(&x, batch))
            }
        };
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
        for block in blocks {
            block.forward(&mut x, &shared, &mut act);
        }
        Ok(x)
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
