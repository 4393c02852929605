//! Bidirectional multi-head attention over variable-length sequences, flash style.
//!
//! Sequences are packed one after another (no padding, so no mask). For each sequence, head and
//! block of queries, the keys are visited in tiles with an online softmax: the running maximum and
//! sum are rescaled as each tile arrives, so no `n × n` score matrix is ever held. Memory per task
//! is one `Q_TILE × K_TILE` score tile plus a `Q_TILE × d` accumulator, whatever the length; an
//! 8192-token input costs the same few hundred kilobytes per thread as a short one.

use rayon::prelude::*;

use super::softmax;

/// Queries per task.
const Q_TILE: usize = 64;
/// Keys per score tile.
const K_TILE: usize = 256;

/// Rows `start .. start + len` of the packed token matrix form one sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceRange {
    /// First row.
    pub start: usize,
    /// Number of tokens.
    pub len: usize,
}

/// Writes the attention output of every head into `ctx` (`tokens × heads·d`, heads side by side).
///
/// `qkv` is `tokens × 3·heads·d`: Q, then K, then V, each with heads side by side (the packed
/// `Wqkv` layout). Rotary positions must already be applied to Q and K.
pub fn attention(qkv: &[f32], ctx: &mut [f32], sequences: &[SequenceRange], heads: usize, d: usize) {
    let hidden = heads * d;
    let tokens: usize = sequences.iter().map(|s| s.start + s.len).max().unwrap_or(0);
    assert!(qkv.len() >= tokens * 3 * hidden && ctx.len() >= tokens * hidden);
    let scale = 1.0 / (d as f32).sqrt();

    let mut tasks = Vec::new();
    for seq in sequences {
        for head in 0..heads {
            for q0 in (0..seq.len).step_by(Q_TILE) {
                tasks.push((*seq, head, q0, Q_TILE.min(seq.len - q0)));
            }
        }
    }
    let ctx_ptr = SharedMut(ctx.as_mut_ptr());
    tasks.par_iter().for_each_init(
        || Scratch::new(d),
        |scratch, &(seq, head, q0, q_len)| {
            let out = scratch.attend(qkv, seq, head, q0, q_len, hidden, d, scale);
            for (i, row) in out.chunks_exact(d).enumerate() {
                let at = (seq.start + q0 + i) * hidden + head * d;
                // SAFETY: each task owns the rows q0..q0+q_len of one sequence within one head's
                // columns; no two tasks share an element and `ctx` outlives the parallel loop.
                unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), ctx_ptr.get().add(at), d) };
            }
        },
    );
}

/// A raw pointer that rayon tasks writing disjoint regions may share.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: only used for disjoint writes, see `attention`.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}
impl SharedMut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Per-thread buffers, reused across tasks.
struct Scratch {
    scores: Vec<f32>,
    acc: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
}

impl Scratch {
    fn new(d: usize) -> Self {
        Scratch {
            scores: vec![0.0; Q_TILE * K_TILE],
            acc: vec![0.0; Q_TILE * d],
            max: vec![0.0; Q_TILE],
            sum: vec![0.0; Q_TILE],
        }
    }

    /// Attention of queries `q0 .. q0+q_len` of one head over all keys of the sequence.
    #[allow(clippy::too_many_arguments)]
    fn attend(
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
        let acc = &mut self.acc[..q_len * d];
        acc.fill(0.0);
        self.max[..q_len].fill(f32::NEG_INFINITY);
        self.sum[..q_len].fill(0.0);

        for k0 in (0..seq.len).step_by(K_TILE) {
            let k_len = K_TILE.min(seq.len - k0);
            let scores = &mut self.scores[..q_len * k_len];
            // scores = Q · Kᵀ for this tile (K rows are `stride` apart).
            qk_tile(q, q_len, &k_all[k0 * stride..], k_len, stride, d, scores);
            for i in 0..q_len {
                let row = &mut scores[i * k_len..(i + 1) * k_len];
                let tile_max = softmax::scale_and_max(row, scale);
                let new_max = self.max[i].max(tile_max);
                let correction = (self.max[i] - new_max).exp();
                let tile_sum = softmax::exp_and_sum(row, new_max);
                self.sum[i] = self.sum[i] * correction + tile_sum;
                self.max[i] = new_max;
                if correction != 1.0 {
                    for a in &mut acc[i * d..(i + 1) * d] {
                        *a *= correction;
                    }
                }
            }
            // acc += P · V for this tile.
            pv_accumulate(scores, q_len, k_len, &v_all[k0 * stride..], stride, d, acc);
        }
        for i in 0..q_len {
            let inv = 1.0 / self.sum[i];
            for a in &mut acc[i * d..(i + 1) * d] {
                *a *= inv;
            }
        }
        &self.acc[..q_len * d]
    }
}

/// `scores[q_len × k_len] = q · kᵀ`; Q and K rows are both `stride` apart.
fn qk_tile(q: &[f32], q_len: usize, k: &[f32], k_len: usize, stride: usize, d: usize, scores: &mut [f32]) {
    assert!(q.len() >= (q_len - 1) * stride + d && k.len() >= (k_len - 1) * stride + d);
    assert!(scores.len() >= q_len * k_len);
    // SAFETY: the asserts bound every element the strides reach.
    unsafe {
        gemm::gemm(
            q_len,
            k_len,
            d,
            scores.as_mut_ptr(),
            1,
            k_len as isize,
            false,
            q.as_ptr(),
            1,
            stride as isize,
            k.as_ptr(),
            stride as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `acc[q_len × d] += p[q_len × k_len] · v[k_len × d]`, V rows `v_stride` apart.
fn pv_accumulate(p: &[f32], q_len: usize, k_len: usize, v: &[f32], v_stride: usize, d: usize, acc: &mut [f32]) {
    // SAFETY: p is q_len × k_len (row stride k_len), v holds k_len rows of d values `v_stride`
    // apart, acc is q_len × d; the caller sized all three.
    assert!(p.len() >= q_len * k_len && acc.len() >= q_len * d);
    assert!(k_len == 0 || v.len() >= (k_len - 1) * v_stride + d);
    unsafe {
        gemm::gemm(
            q_len,
            d,
            k_len,
            acc.as_mut_ptr(),
            1,
            d as isize,
            true,
            p.as_ptr(),
            1,
            k_len as isize,
            v.as_ptr(),
            1,
            v_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
