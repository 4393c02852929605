//! Forward and backward of each layer, side by side, named after `model.rs`'s layers:
//! `Linear` (with its LoRA), `Norm`, GELU, `Embeddings`, `Block` (attention is in
//! `attention.rs`), and the mean pooling.
//!
//! A forward serves any mix of adapters (one per sequence, [`Slot`]); a backward runs on a pass
//! whose every sequence uses the adapter being trained, the only one with gradients (the base is
//! frozen, and so is any other adapter). Each backward takes what its forward saw (its input,
//! or the pre-norm sum for a LayerNorm) and recomputes the rest, so a block's tape lives only
//! while that block is differentiated.

use rayon::prelude::*;

use crate::adapters::{add_scaled_row, AdapterWeights};
use crate::kernels::{self, Cpu, KernelPlan, MatmulInit, RotaryTable, SequenceRange};

use super::base::{Block, Embeddings, Linear, Norm};
use super::linalg::{matmul_nn, matmul_nt, transpose};

/// One sequence of a pass: its rows in the packed matrix and its adapter (`None`: base weights).
#[derive(Clone, Copy)]
pub(crate) struct Slot<'a> {
    pub start: usize,
    pub len: usize,
    pub adapter: Option<&'a AdapterWeights>,
}

/// What every layer of one pass shares.
pub(crate) struct Pass<'a> {
    pub slots: Vec<Slot<'a>>,
    /// Neighbouring slots with the same adapter joined: one LoRA product per run.
    pub runs: Vec<Slot<'a>>,
    pub ranges: Vec<SequenceRange>,
    /// Each token's position inside its own sequence (from 0), for the rotary angles.
    pub positions: Vec<usize>,
    pub tokens: usize,
    pub hidden: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub rotary: &'a RotaryTable,
    pub plan: &'a KernelPlan,
}

impl<'a> Pass<'a> {
    /// A pass over sequences of `lengths` tokens, packed in order, with their adapters.
    pub fn new(
        lengths_and_adapters: impl IntoIterator<Item = (usize, Option<&'a AdapterWeights>)>,
        (hidden, heads): (usize, usize),
        rotary: &'a RotaryTable,
        plan: &'a KernelPlan,
    ) -> Self {
        let mut slots = Vec::new();
        let mut positions = Vec::new();
        let mut start = 0;
        for (len, adapter) in lengths_and_adapters {
            assert!(
                len <= rotary.positions(),
                "sequence longer than the rotary table"
            );
            slots.push(Slot {
                start,
                len,
                adapter,
            });
            positions.extend(0..len);
            start += len;
        }
        let mut runs: Vec<Slot> = Vec::with_capacity(slots.len());
        for slot in &slots {
            match runs.last_mut() {
                Some(last) if same_adapter(last.adapter, slot.adapter) => last.len += slot.len,
                _ => runs.push(*slot),
            }
        }
        Pass {
            ranges: slots
                .iter()
                .map(|s| SequenceRange {
                    start: s.start,
                    len: s.len,
                })
                .collect(),
            slots,
            runs,
            positions,
            tokens: start,
            hidden,
            heads,
            head_dim: hidden / heads,
            rotary,
            plan,
        }
    }

    pub fn cpu(&self) -> Cpu {
        self.plan.cpu
    }
}

fn same_adapter(a: Option<&AdapterWeights>, b: Option<&AdapterWeights>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => std::ptr::eq(a, b),
        _ => false,
    }
}

impl Linear {
    /// `out = x·Wᵀ + b`, plus `s·(x·Aᵀ)·Bᵀ` on the rows of each run with an adapter: the
    /// inference model's `Gemm` path, product for product.
    pub fn forward(&self, x: &[f32], pass: &Pass, out: &mut [f32]) {
        let tokens = pass.tokens;
        let (n_in, n_out) = (self.n_in, self.n_out);
        kernels::matmul_transposed(
            x,
            n_in,
            tokens,
            n_in,
            &self.w,
            n_out,
            out,
            MatmulInit::Bias(&self.bias),
            true,
        );
        for run in &pass.runs {
            let Some(adapter) = run.adapter else { continue };
            let lora = &adapter.linears[self.index];
            let r = adapter.rank;
            let xs = &x[run.start * n_in..(run.start + run.len) * n_in];
            let mut low = vec![0f32; run.len * r];
            kernels::matmul_thin(xs, run.len, n_in, &lora.a, r, &mut low, pass.cpu());
            low.iter_mut().for_each(|v| *v *= adapter.scaling);
            let dst = &mut out[run.start * n_out..(run.start + run.len) * n_out];
            matmul_nt(&low, &lora.b, dst, (run.len, r, n_out), true, true);
        }
    }

    /// Backward of [`Linear::forward`] where every row used `adapter`: returns `dx = dy·(W +
    /// s·B·A)` (computed as `dy·W + s·(dy·B)·A`) and adds `dA = s·(dy·B)ᵀ·x` and
    /// `dB = s·dyᵀ·(x·Aᵀ)` to `grads`.
    pub fn backward(
        &self,
        x: &[f32],
        dy: &[f32],
        adapter: &AdapterWeights,
        grads: &mut AdapterWeights,
        cpu: Cpu,
    ) -> Vec<f32> {
        let (n_in, n_out, r, s) = (self.n_in, self.n_out, adapter.rank, adapter.scaling);
        let tokens = dy.len() / n_out;
        let lora = &adapter.linears[self.index];
        let grad = &mut grads.linears[self.index];
        let mut dx = vec![0f32; tokens * n_in];
        matmul_nn(dy, &self.w, &mut dx, (tokens, n_out, n_in), false, true);
        // g = s·dy·B, [tokens × r]: the gradient of the low-rank activations.
        let mut g = vec![0f32; tokens * r];
        kernels::matmul_thin(
            dy,
            tokens,
            n_out,
            &transpose(&lora.b, n_out, r),
            r,
            &mut g,
            cpu,
        );
        g.iter_mut().for_each(|v| *v *= s);
        matmul_nn(&g, &lora.a, &mut dx, (tokens, r, n_in), true, true);
        matmul_nn(
            &transpose(&g, tokens, r),
            x,
            &mut grad.a,
            (r, tokens, n_in),
            true,
            true,
        );
        // low = s·x·Aᵀ; dBᵀ = lowᵀ·dy, [r × n_out], added to B's [n_out × r] rows.
        let mut low = vec![0f32; tokens * r];
        kernels::matmul_thin(x, tokens, n_in, &lora.a, r, &mut low, cpu);
        low.iter_mut().for_each(|v| *v *= s);
        let mut db_t = vec![0f32; r * n_out];
        matmul_nn(
            &transpose(&low, tokens, r),
            dy,
            &mut db_t,
            (r, tokens, n_out),
            false,
            true,
        );
        for (o, row) in grad.b.chunks_exact_mut(r).enumerate() {
            for (k, v) in row.iter_mut().enumerate() {
                *v += db_t[k * n_out + o];
            }
        }
        dx
    }
}

impl Norm {
    /// `dL/dz` from `dL/dy` and the forward's input `z`, whose statistics are recomputed in f64
    /// as the forward computed them: `dz = (ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) / σ`, `ĝ = dy·w`.
    pub fn backward(&self, z: &[f32], dy: &[f32], width: usize) -> Vec<f32> {
        let mut dz = vec![0f32; z.len()];
        dz.par_chunks_mut(width)
            .zip(z.par_chunks(width).zip(dy.par_chunks(width)))
            .for_each(|(dz, (z, dy))| {
                let n = width as f64;
                let mean = z.iter().map(|&v| v as f64).sum::<f64>() / n;
                let var = z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
                let inv_std = 1.0 / (var + self.eps as f64).sqrt();
                let x_hat = |j: usize| (z[j] as f64 - mean) * inv_std;
                let g = |j: usize| dy[j] as f64 * self.weight[j] as f64;
                let mean_g = (0..width).map(g).sum::<f64>() / n;
                let mean_gx = (0..width).map(|j| g(j) * x_hat(j)).sum::<f64>() / n;
                for (j, d) in dz.iter_mut().enumerate() {
                    *d = ((g(j) - mean_g - x_hat(j) * mean_gx) * inv_std) as f32;
                }
            });
        dz
    }
}

/// `LayerNorm(z)` row by row into a new buffer (the backward keeps `z`), with the inference
/// kernel.
fn layer_norm(norm: &Norm, z: &[f32], width: usize, cpu: Cpu) -> Vec<f32> {
    let mut y = z.to_vec();
    norm.forward(&mut y, width, cpu);
    y
}

/// `T[0] + s·(A_tt[0]·B_tt)`: the token-type row under `adapter`, as the model folds it.
fn token_type_row(base: &[f32], adapter: Option<&AdapterWeights>) -> Vec<f32> {
    let mut row = base.to_vec();
    if let Some(a) = adapter {
        add_scaled_row(
            &mut row,
            &a.token_type_a[..a.rank],
            &a.token_type_b,
            a.scaling,
        );
    }
    row
}

/// The embeddings of a pass before and after their LayerNorm.
pub(crate) struct EmbeddingsOut {
    /// Word row + LoRA + token-type row, `tokens × hidden`: the LayerNorm's input.
    pub sum: Vec<f32>,
    /// The normalised embeddings: the first block's input.
    pub out: Vec<f32>,
}

impl Embeddings {
    /// `LN(E[id] + s·(A_w[id]·B_w) + T_eff[0])` for every token, each under its sequence's
    /// adapter, in the model's order of additions.
    pub fn forward(&self, ids: &[u32], pass: &Pass) -> EmbeddingsOut {
        let h = pass.hidden;
        let mut sum = vec![0f32; pass.tokens * h];
        for slot in &pass.slots {
            let tt = token_type_row(&self.token_type, slot.adapter);
            let rows = &mut sum[slot.start * h..(slot.start + slot.len) * h];
            let ids = &ids[slot.start..slot.start + slot.len];
            rows.par_chunks_mut(h)
                .zip(ids.par_iter())
                .for_each(|(row, &id)| {
                    let id = id as usize;
                    self.words.read_row(id, row);
                    if let Some(a) = slot.adapter {
                        let r = a.rank;
                        add_scaled_row(row, &a.word_a[id * r..(id + 1) * r], &a.word_b, a.scaling);
                    }
                    for (v, t) in row.iter_mut().zip(&tt) {
                        *v += t;
                    }
                });
        }
        let out = layer_norm(&self.norm, &sum, h, pass.cpu());
        EmbeddingsOut { sum, out }
    }

    /// Adds the embedding LoRA's gradients to `grads`, from `dL/d(out)` of a pass where every
    /// token used `adapter`. Only the rows of `A_w` the tokens name are touched.
    pub fn backward(
        &self,
        ids: &[u32],
        sum: &[f32],
        d_out: &[f32],
        adapter: &AdapterWeights,
        grads: &mut AdapterWeights,
    ) {
        let h = self.token_type.len();
        let (r, s) = (adapter.rank, adapter.scaling);
        let tokens = ids.len();
        let d_sum = self.norm.backward(sum, d_out, h);
        // Every token adds the same token-type row: its gradient is the sum over tokens.
        let mut total = vec![0f64; h];
        for row in d_sum.chunks_exact(h) {
            for (t, v) in total.iter_mut().zip(row) {
                *t += *v as f64;
            }
        }
        for k in 0..r {
            let a = adapter.token_type_a[k] as f64;
            let b = &adapter.token_type_b[k * h..(k + 1) * h];
            let mut dot = 0f64;
            for (j, &t) in total.iter().enumerate() {
                grads.token_type_b[k * h + j] += (s as f64 * a * t) as f32;
                dot += b[j] as f64 * t;
            }
            grads.token_type_a[k] += (s as f64 * dot) as f32;
        }
        // dB_w = s·A_idsᵀ·d_sum ([r × h]); dA_w[id] += s·d_sum·B_wᵀ ([tokens × r]).
        let a_rows: Vec<f32> = ids
            .iter()
            .flat_map(|&id| adapter.word_a[id as usize * r..(id as usize + 1) * r].iter())
            .map(|v| v * s)
            .collect();
        let a_t = transpose(&a_rows, tokens, r);
        matmul_nn(&a_t, &d_sum, &mut grads.word_b, (r, tokens, h), true, true);
        let mut da = vec![0f32; tokens * r];
        matmul_nt(
            &d_sum,
            &adapter.word_b,
            &mut da,
            (tokens, h, r),
            false,
            true,
        );
        for (&id, g) in ids.iter().zip(da.chunks_exact(r)) {
            let dst = &mut grads.word_a[id as usize * r..(id as usize + 1) * r];
            for (d, v) in dst.iter_mut().zip(g) {
                *d += s * v;
            }
        }
    }
}

/// A block's activations, kept while the block is differentiated.
pub(crate) struct BlockTape {
    /// `tokens × 3·hidden`, Q and K rotated.
    pub qkv: Vec<f32>,
    /// Attention output before `out_proj`, `tokens × hidden`.
    pub ctx: Vec<f32>,
    /// `out_proj(ctx) + x`: norm1's input.
    pub z1: Vec<f32>,
    /// `norm1(z1)`: the MLP's input.
    pub h1: Vec<f32>,
    /// `fc1(h1)` before GELU, `tokens × intermediate`.
    pub u: Vec<f32>,
    /// `GELU(u)`: fc2's input.
    pub g: Vec<f32>,
    /// `fc2(g) + h1`: norm2's input.
    pub z2: Vec<f32>,
    /// `norm2(z2)`: the block's output.
    pub out: Vec<f32>,
}

impl BlockTape {
    /// Splits off the block's output (the next block's input), keeping what the backward reads.
    pub fn into_kept(mut self) -> (Vec<f32>, BlockTape) {
        let out = std::mem::take(&mut self.out);
        (out, self)
    }
}

impl Block {
    /// `h1 = LN1(out_proj(attention(x)) + x)`, `out = LN2(fc2(GELU(fc1(h1))) + h1)`, keeping
    /// every intermediate.
    pub fn forward(&self, x: &[f32], pass: &Pass) -> BlockTape {
        let (t, h) = (pass.tokens, pass.hidden);
        let cpu = pass.cpu();
        let mut qkv = vec![0f32; t * 3 * h];
        self.qkv.forward(x, pass, &mut qkv);
        let ctx = super::attention::forward(&mut qkv, pass);
        let mut z1 = vec![0f32; t * h];
        self.out_proj.forward(&ctx, pass, &mut z1);
        add_into(&mut z1, x);
        let h1 = layer_norm(&self.norm1, &z1, h, cpu);
        let mut u = vec![0f32; t * self.fc1.n_out];
        self.fc1.forward(&h1, pass, &mut u);
        let mut g = u.clone();
        kernels::gelu_erf_in_place(&mut g, cpu);
        let mut z2 = vec![0f32; t * h];
        self.fc2.forward(&g, pass, &mut z2);
        add_into(&mut z2, &h1);
        let out = layer_norm(&self.norm2, &z2, h, cpu);
        BlockTape {
            qkv,
            ctx,
            z1,
            h1,
            u,
            g,
            z2,
            out,
        }
    }

    /// `dL/dx` from `dL/d(out)`, adding the LoRA gradients of the block's four linears.
    pub fn backward(
        &self,
        x: &[f32],
        tape: &BlockTape,
        d_out: &[f32],
        pass: &Pass,
        adapter: &AdapterWeights,
        grads: &mut AdapterWeights,
    ) -> Vec<f32> {
        let h = pass.hidden;
        let cpu = pass.cpu();
        let dz2 = self.norm2.backward(&tape.z2, d_out, h);
        let dg = self.fc2.backward(&tape.g, &dz2, adapter, grads, cpu);
        // du = dg · GELU'(u), in place.
        let mut du = dg;
        kernels::elementwise::gelu_backward_in_place(&tape.u, &mut du, cpu);
        let mut dh1 = self.fc1.backward(&tape.h1, &du, adapter, grads, cpu);
        add_into(&mut dh1, &dz2);
        let dz1 = self.norm1.backward(&tape.z1, &dh1, h);
        let dctx = self.out_proj.backward(&tape.ctx, &dz1, adapter, grads, cpu);
        let dqkv = super::attention::backward(&tape.qkv, &dctx, pass);
        let mut dx = self.qkv.backward(x, &dqkv, adapter, grads, cpu);
        add_into(&mut dx, &dz1);
        dx
    }
}

/// `a += b`.
fn add_into(a: &mut [f32], b: &[f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// Mean of each sequence's token vectors (every token: `<s>`, `</s>` and prefix included),
/// summed in f64 as the inference pooling sums.
pub(crate) fn mean_pool(states: &[f32], pass: &Pass) -> Vec<Vec<f32>> {
    let h = pass.hidden;
    pass.slots
        .iter()
        .map(|slot| {
            let mut sum = vec![0f64; h];
            for row in states[slot.start * h..(slot.start + slot.len) * h].chunks_exact(h) {
                for (s, v) in sum.iter_mut().zip(row) {
                    *s += *v as f64;
                }
            }
            sum.iter()
                .map(|s| {
                    if slot.len == 0 {
                        0.0
                    } else {
                        (s / slot.len as f64) as f32
                    }
                })
                .collect()
        })
        .collect()
}

/// Backward of [`mean_pool`]: every token of a sequence gets `d_pooled / len`.
pub(crate) fn mean_pool_backward(d_pooled: &[Vec<f32>], pass: &Pass) -> Vec<f32> {
    let h = pass.hidden;
    let mut d = vec![0f32; pass.tokens * h];
    for (slot, dp) in pass.slots.iter().zip(d_pooled) {
        assert_eq!(dp.len(), h, "a pooled gradient has the hidden width");
        let inv = 1.0 / slot.len.max(1) as f32;
        for row in d[slot.start * h..(slot.start + slot.len) * h].chunks_exact_mut(h) {
            for (v, g) in row.iter_mut().zip(dp) {
                *v = g * inv;
            }
        }
    }
    d
}
