//! The portable attention kernels: tiles of queries and keys with an online softmax, the
//! products either plain loops (the reference variant: any CPU, nothing but Rust) or the `gemm`
//! crate's micro-kernels (its own AVX2/NEON dispatch; aarch64 until it has a kernel of ours).

use rayon::prelude::*;

use super::{write_rows, SequenceRange, Shape, SharedMut, K_TILE, Q_TILE};
use crate::kernels::cpu::Cpu;
use crate::kernels::matmul::{gemm_f32, Rhs};
use crate::kernels::softmax;

/// Every (sequence, head) of `tasks`, in tiles of [`Q_TILE`] queries.
pub(super) fn attention(
    qkv: &[f32],
    ctx: SharedMut,
    tasks: &[(SequenceRange, usize)],
    shape: Shape,
    gemm: bool,
    cpu: Cpu,
) {
    let Shape {
        d, hidden, scale, ..
    } = shape;
    let tiles: Vec<(SequenceRange, usize, usize)> = tasks
        .iter()
        .flat_map(|&(seq, head)| (0..seq.len).step_by(Q_TILE).map(move |q0| (seq, head, q0)))
        .collect();
    tiles.par_iter().for_each_init(
        || Scratch::new(d, Q_TILE, gemm, cpu),
        |scratch, &(seq, head, q0)| {
            let q_len = Q_TILE.min(seq.len - q0);
            let out = scratch.attend(qkv, seq, head, q0, q_len, hidden, d, scale);
            write_rows(ctx, out, seq.start + q0, head, shape);
        },
    );
}

/// Per-thread buffers, reused across tasks.
pub(super) struct Scratch {
    cpu: Cpu,
    /// Key tiles through the `gemm` crate (else plain loops).
    gemm: bool,
    pub(super) scores: Vec<f32>,
    pub(super) acc: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
}

impl Scratch {
    pub(super) fn new(d: usize, q_tile: usize, gemm: bool, cpu: Cpu) -> Self {
        Scratch {
            cpu,
            gemm,
            scores: vec![0.0; q_tile * K_TILE],
            acc: vec![0.0; q_tile * d],
            max: vec![0.0; q_tile],
            sum: vec![0.0; q_tile],
        }
    }

    /// Attention of queries `q0 .. q0+q_len` of one head over all keys of the sequence.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attend(
        &mut self,
        qkv: &[f32],
        seq: SequenceRange,
        head: usize,
        q0: usize,
        q_len: usize,
        hidden: usize,
        d: usize,
        scale: f32,
    ) -> &[f32] {
        let stride = 3 * hidden;
        let q = &qkv[(seq.start + q0) * stride + head * d..];
        let k_all = &qkv[seq.start * stride + hidden + head * d..];
        let v_all = &qkv[seq.start * stride + 2 * hidden + head * d..];
        self.reset(q_len, d);
        for k0 in (0..seq.len).step_by(K_TILE) {
            let k_len = K_TILE.min(seq.len - k0);
            // scores = Q · Kᵀ for this tile (K rows are `stride` apart).
            let scores = &mut self.scores[..q_len * k_len];
            if self.gemm {
                qk_tile(q, q_len, &k_all[k0 * stride..], k_len, stride, d, scores);
            } else {
                reference_qk_tile(q, q_len, &k_all[k0 * stride..], k_len, stride, d, scores);
            }
            self.online_softmax(q_len, k_len, d, scale);
            // acc += P · V for this tile.
            let (p, acc) = (&self.scores[..q_len * k_len], &mut self.acc[..q_len * d]);
            if self.gemm {
                pv_accumulate(p, q_len, k_len, &v_all[k0 * stride..], stride, d, acc);
            } else {
                reference_pv_accumulate(p, q_len, k_len, &v_all[k0 * stride..], stride, d, acc);
            }
        }
        self.normalise(q_len, d)
    }

    pub(super) fn reset(&mut self, q_len: usize, d: usize) {
        self.acc[..q_len * d].fill(0.0);
        self.max[..q_len].fill(f32::NEG_INFINITY);
        self.sum[..q_len].fill(0.0);
    }

    /// Turns the raw scores of one key tile into `exp(s·scale − max)`, updating each row's
    /// running maximum and sum and rescaling its accumulator when the maximum grows.
    pub(super) fn online_softmax(&mut self, q_len: usize, k_len: usize, d: usize, scale: f32) {
        for i in 0..q_len {
            let row = &mut self.scores[i * k_len..(i + 1) * k_len];
            let tile_max = softmax::scale_and_max(row, scale, self.cpu);
            let new_max = self.max[i].max(tile_max);
            // Through the same cut-off as the probabilities: a far smaller old maximum zeroes the
            // old sums instead of leaving subnormal values in the accumulator.
            let correction = softmax::exp(self.max[i] - new_max);
            let tile_sum = softmax::exp_and_sum(row, new_max, self.cpu);
            self.sum[i] = self.sum[i] * correction + tile_sum;
            self.max[i] = new_max;
            if correction != 1.0 {
                for a in &mut self.acc[i * d..(i + 1) * d] {
                    *a *= correction;
                }
            }
        }
    }

    /// Divides each accumulated row by its softmax sum.
    pub(super) fn normalise(&mut self, q_len: usize, d: usize) -> &[f32] {
        for i in 0..q_len {
            let inv = 1.0 / self.sum[i];
            for a in &mut self.acc[i * d..(i + 1) * d] {
                *a *= inv;
            }
        }
        &self.acc[..q_len * d]
    }
}

/// `scores[q_len × k_len] = q · kᵀ`; Q and K rows are both `stride` apart.
fn qk_tile(
    q: &[f32],
    q_len: usize,
    k: &[f32],
    k_len: usize,
    stride: usize,
    d: usize,
    scores: &mut [f32],
) {
    assert!(q.len() >= (q_len - 1) * stride + d && k.len() >= (k_len - 1) * stride + d);
    assert!(scores.len() >= q_len * k_len);
    // SAFETY: the asserts bound every element the strides reach.
    unsafe {
        gemm_f32(
            (q_len, k_len, d),
            (q.as_ptr(), stride),
            (k.as_ptr(), stride, Rhs::Transposed),
            (scores.as_mut_ptr(), k_len),
            false,
            false,
        )
    }
}

/// `acc[q_len × d] += p[q_len × k_len] · v[k_len × d]`, V rows `v_stride` apart.
fn pv_accumulate(
    p: &[f32],
    q_len: usize,
    k_len: usize,
    v: &[f32],
    v_stride: usize,
    d: usize,
    acc: &mut [f32],
) {
    // SAFETY: p is q_len × k_len (row stride k_len), v holds k_len rows of d values `v_stride`
    // apart, acc is q_len × d; the caller sized all three.
    assert!(p.len() >= q_len * k_len && acc.len() >= q_len * d);
    assert!(k_len == 0 || v.len() >= (k_len - 1) * v_stride + d);
    unsafe {
        gemm_f32(
            (q_len, d, k_len),
            (p.as_ptr(), k_len),
            (v.as_ptr(), v_stride, Rhs::Rows),
            (acc.as_mut_ptr(), d),
            true,
            false,
        )
    }
}

/// [`qk_tile`] in plain loops, each score summed in order with FMAs.
fn reference_qk_tile(
    q: &[f32],
    q_len: usize,
    k: &[f32],
    k_len: usize,
    stride: usize,
    d: usize,
    scores: &mut [f32],
) {
    for i in 0..q_len {
        let qi = &q[i * stride..][..d];
        for j in 0..k_len {
            let kj = &k[j * stride..][..d];
            scores[i * k_len + j] = qi
                .iter()
                .zip(kj)
                .fold(0f32, |acc, (a, b)| a.mul_add(*b, acc));
        }
    }
}

/// [`pv_accumulate`] in plain loops.
fn reference_pv_accumulate(
    p: &[f32],
    q_len: usize,
    k_len: usize,
    v: &[f32],
    v_stride: usize,
    d: usize,
    acc: &mut [f32],
) {
    for i in 0..q_len {
        let out = &mut acc[i * d..][..d];
        for j in 0..k_len {
            let pj = p[i * k_len + j];
            for (o, vv) in out.iter_mut().zip(&v[j * v_stride..][..d]) {
                *o = pj.mul_add(*vv, *o);
            }
        }
    }
}
