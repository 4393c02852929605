//! Self-attention's core between the two projections: rotary positions on Q and K, softmax
//! attention per sequence and head, and its backward.
//!
//! The forward runs the inference kernel the plan chose. The backward recomputes the
//! probabilities `P = softmax(Q·Kᵀ/√d)` a block of [`Q_BLOCK`] queries at a time against all
//! the sequence's keys, so it holds `Q_BLOCK × n` scores per head (not `n × n`), exact because
//! each row of scores is whole. With `dS = P ∘ (dP − rowsum(P ∘ dP))` and `dP = dO·Vᵀ`:
//! `dQ = dS·K/√d`, `dK = dSᵀ·Q/√d`, `dV = Pᵀ·dO`. Rotation backward is the inverse rotation.

use rayon::prelude::*;

use crate::kernels::{self, SequenceRange};

use super::layers::Pass;
use super::linalg::{matmul_nn, matmul_nt, transpose};

/// Queries per block of recomputed scores in the backward.
const Q_BLOCK: usize = 64;

/// Rotates Q and K of `qkv` (`tokens × 3·hidden`) in place, then returns the attention output
/// (`tokens × hidden`, heads side by side).
pub(crate) fn forward(qkv: &mut [f32], pass: &Pass) -> Vec<f32> {
    let (h, d) = (pass.hidden, pass.head_dim);
    qkv.par_chunks_mut(3 * h)
        .zip(pass.positions.par_iter())
        .for_each(|(row, &pos)| {
            for head in row[..2 * h].chunks_exact_mut(d) {
                pass.rotary.rotate(head, pos);
            }
        });
    let mut ctx = vec![0f32; pass.tokens * h];
    let kernel = (pass.plan.attention, pass.plan.cpu);
    kernels::attention(qkv, &mut ctx, &pass.ranges, pass.heads, d, kernel);
    ctx
}

/// `dL/d(qkv)` before the rotation, from `dL/d(ctx)` and the rotated `qkv` of the forward.
pub(crate) fn backward(qkv: &[f32], d_ctx: &[f32], pass: &Pass) -> Vec<f32> {
    let (h, d) = (pass.hidden, pass.head_dim);
    let tasks: Vec<(SequenceRange, usize)> = pass
        .ranges
        .iter()
        .flat_map(|s| (0..pass.heads).map(move |head| (*s, head)))
        .collect();
    let grads: Vec<HeadGrads> = tasks
        .par_iter()
        .map(|&(seq, head)| head_backward(qkv, d_ctx, seq, head, pass))
        .collect();
    let mut d_qkv = vec![0f32; pass.tokens * 3 * h];
    for (&(seq, head), g) in tasks.iter().zip(&grads) {
        for i in 0..seq.len {
            let row = &mut d_qkv[(seq.start + i) * 3 * h..][..3 * h];
            for (part, src) in [&g.dq, &g.dk, &g.dv].into_iter().enumerate() {
                row[part * h + head * d..][..d].copy_from_slice(&src[i * d..(i + 1) * d]);
            }
        }
    }
    // The forward rotated Q and K by R(θ); their gradients turn back by R(θ)ᵀ = R(−θ).
    d_qkv
        .par_chunks_mut(3 * h)
        .zip(pass.positions.par_iter())
        .for_each(|(row, &pos)| {
            for head in row[..2 * h].chunks_exact_mut(d) {
                rotate_back(pass, head, pos);
            }
        });
    d_qkv
}

/// `R(−θ)·x` with the table's `R(θ)`: negating the second half conjugates the rotation.
fn rotate_back(pass: &Pass, x: &mut [f32], pos: usize) {
    let half = x.len() / 2;
    x[half..].iter_mut().for_each(|v| *v = -*v);
    pass.rotary.rotate(x, pos);
    x[half..].iter_mut().for_each(|v| *v = -*v);
}

/// The gradients of one head of one sequence, each `len × d`.
struct HeadGrads {
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

/// Columns `offset .. offset + d` of rows `seq` of a matrix with rows `stride` wide.
fn gather(m: &[f32], seq: SequenceRange, stride: usize, offset: usize, d: usize) -> Vec<f32> {
    (0..seq.len)
        .flat_map(|i| m[(seq.start + i) * stride + offset..][..d].iter().copied())
        .collect()
}

fn head_backward(
    qkv: &[f32],
    d_ctx: &[f32],
    seq: SequenceRange,
    head: usize,
    pass: &Pass,
) -> HeadGrads {
    let (h, d, n) = (pass.hidden, pass.head_dim, seq.len);
    let q = gather(qkv, seq, 3 * h, head * d, d);
    let k = gather(qkv, seq, 3 * h, h + head * d, d);
    let v = gather(qkv, seq, 3 * h, 2 * h + head * d, d);
    let d_o = gather(d_ctx, seq, h, head * d, d);
    let scale = 1.0 / (d as f32).sqrt();
    let mut dq = vec![0f32; n * d];
    // dK and dV are summed over query blocks transposed (`d × n`): each block adds
    // `(its rows)ᵀ · (its scores)` with the rows' transposes as the left operand.
    let mut dk_t = vec![0f32; d * n];
    let mut dv_t = vec![0f32; d * n];
    for i0 in (0..n).step_by(Q_BLOCK) {
        let b = Q_BLOCK.min(n - i0);
        let q_blk = &q[i0 * d..(i0 + b) * d];
        let do_blk = &d_o[i0 * d..(i0 + b) * d];
        let mut p = vec![0f32; b * n];
        matmul_nt(q_blk, &k, &mut p, (b, d, n), false, false);
        p.chunks_exact_mut(n)
            .for_each(|row| softmax_row(row, scale));
        let mut ds = vec![0f32; b * n];
        matmul_nt(do_blk, &v, &mut ds, (b, d, n), false, false);
        for (ds_row, p_row) in ds.chunks_exact_mut(n).zip(p.chunks_exact(n)) {
            let dot: f64 = ds_row
                .iter()
                .zip(p_row)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            let dot = dot as f32;
            for (g, &pv) in ds_row.iter_mut().zip(p_row) {
                *g = pv * (*g - dot) * scale;
            }
        }
        matmul_nn(
            &ds,
            &k,
            &mut dq[i0 * d..(i0 + b) * d],
            (b, n, d),
            false,
            false,
        );
        matmul_nn(
            &transpose(q_blk, b, d),
            &ds,
            &mut dk_t,
            (d, b, n),
            true,
            false,
        );
        matmul_nn(
            &transpose(do_blk, b, d),
            &p,
            &mut dv_t,
            (d, b, n),
            true,
            false,
        );
    }
    HeadGrads {
        dq,
        dk: transpose(&dk_t, d, n),
        dv: transpose(&dv_t, d, n),
    }
}

/// `row = softmax(row · scale)`, with the maximum subtracted and the sum in f64.
fn softmax_row(row: &mut [f32], scale: f32) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
    let mut total = 0f64;
    for v in row.iter_mut() {
        *v = (*v * scale - max).exp();
        total += *v as f64;
    }
    let inv = (1.0 / total) as f32;
    row.iter_mut().for_each(|v| *v *= inv);
}
