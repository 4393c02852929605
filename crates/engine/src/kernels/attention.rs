//! Bidirectional multi-head attention over variable-length sequences, flash style.
//!
//! Sequences are packed one after another (no padding, so no mask). For each sequence, head and
//! block of queries, the keys are visited in tiles with an online softmax: the running maximum and
//! sum are rescaled as each tile arrives, so no `n × n` score matrix is ever held. Memory per task
//! is one `Q_TILE × K_TILE` score tile plus a `Q_TILE × d` accumulator (and, on AVX-512, the head's
//! K and V packed once for the packed kernels: `2·n·d` floats), linear in the length.

use rayon::prelude::*;

use super::matmul::MatmulInit;
use super::packed::{self, PackedMatrix, PackedType};
use super::softmax;

/// Queries per score tile.
const Q_TILE: usize = 64;
/// Queries per score tile when the products run on AMX: larger products amortise the fixed
/// cost of each call (activation packing, tile loads of the accumulators).
const Q_TILE_AMX: usize = 256;
/// Without the fused AMX kernel, sequences up to this length run attention in f32 whatever the
/// requested type.
const BF16_MIN_LEN: usize = 512;
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
///
/// `ty` is the type Q·Kᵀ and P·V are computed in on AVX-512 CPUs: f32 or bf16; softmax
/// statistics stay in f32 either way. With AMX and heads of 64 both run the fused kernel of
/// [`super::attention_amx`] (f32 as three exact bf16 parts per value, f32-accurate); without
/// AMX, f32 is exact on FMA, and bf16 sequences of up to 512 tokens run in f32 regardless,
/// which is as fast there.
pub fn attention(qkv: &[f32], ctx: &mut [f32], sequences: &[SequenceRange], heads: usize, d: usize, ty: PackedType) {
    let hidden = heads * d;
    let tokens: usize = sequences.iter().map(|s| s.start + s.len).max().unwrap_or(0);
    assert!(qkv.len() >= tokens * 3 * hidden && ctx.len() >= tokens * hidden);
    let scale = 1.0 / (d as f32).sqrt();

    let ctx_ptr = SharedMut(ctx.as_mut_ptr());
    let ty = if ty == PackedType::Bf16 && !packed::bf16_available() { PackedType::F32 } else { ty };
    // One task per (sequence, head): K and V are converted once and reused by every query tile.
    let tasks: Vec<(SequenceRange, usize)> =
        sequences.iter().flat_map(|s| (0..heads).map(move |h| (*s, h))).collect();
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if d == super::attention_amx::HEAD_DIM && packed::amx_available() {
        use super::attention_amx::{AmxAttention, Precision};
        thread_local! {
            /// Each thread's buffers, kept across calls: at 8192 tokens they are ~10 MB a head,
            /// and fresh ones cost page faults every layer.
            static KERNELS: std::cell::RefCell<[Option<AmxAttention>; 2]> = const { std::cell::RefCell::new([None, None]) };
        }
        let precision = if ty == PackedType::F32 { Precision::F32 } else { Precision::Bf16 };
        let slot = precision as usize;
        tasks.par_iter().for_each(|&(seq, head)| {
            let mut kernel = KERNELS.with(|k| k.borrow_mut()[slot].take()).unwrap_or_else(|| AmxAttention::new(precision));
            let out = kernel.attend(qkv, seq, 3 * hidden, head * d, hidden, scale);
            write_rows(ctx_ptr, out, seq.start, head, hidden, d);
            KERNELS.with(|k| k.borrow_mut()[slot] = Some(kernel));
        });
        return;
    }
    // Without the fused kernel, up to 512 tokens the f32 kernel is as fast as bf16 or faster
    // (8×128: 0.20 s against 0.36 s for the 24 layers; 512: equal): packing K and V to bf16
    // costs more than it saves.
    let ty = if sequences.iter().all(|s| s.len <= BF16_MIN_LEN) { PackedType::F32 } else { ty };
    if packed::avx512_available() {
        let q_tile = if ty != PackedType::F32 && packed::amx_available() { Q_TILE_AMX } else { Q_TILE };
        tasks.par_iter().for_each_init(
            || PackedHead::new(d, ty, q_tile),
            |head_state, &(seq, head)| {
                head_state.load(qkv, seq, head, hidden, d);
                for q0 in (0..seq.len).step_by(q_tile) {
                    let q_len = q_tile.min(seq.len - q0);
                    let out = head_state.attend(qkv, seq, head, q0, q_len, hidden, d, scale);
                    write_rows(ctx_ptr, out, seq.start + q0, head, hidden, d);
                }
            },
        );
        return;
    }
    let mut tasks = Vec::new();
    for seq in sequences {
        for head in 0..heads {
            for q0 in (0..seq.len).step_by(Q_TILE) {
                tasks.push((*seq, head, q0, Q_TILE.min(seq.len - q0)));
            }
        }
    }
    tasks.par_iter().for_each_init(
        || Scratch::new(d, Q_TILE),
        |scratch, &(seq, head, q0, q_len)| {
            let out = scratch.attend(qkv, seq, head, q0, q_len, hidden, d, scale);
            write_rows(ctx_ptr, out, seq.start + q0, head, hidden, d);
        },
    );
}

/// Copies a `rows × d` block into `ctx` at row `first_row`, columns of `head`.
fn write_rows(ctx: SharedMut, block: &[f32], first_row: usize, head: usize, hidden: usize, d: usize) {
    for (i, row) in block.chunks_exact(d).enumerate() {
        let at = (first_row + i) * hidden + head * d;
        // SAFETY: each task owns its rows within one head's columns; no two tasks share an
        // element, and `ctx` (checked long enough by `attention`) outlives the parallel loop.
        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), ctx.get().add(at), d) };
    }
}

/// Per-thread state of the packed path: one head's K and V tiles, packed for the AVX-512 kernel.
struct PackedHead {
    ty: PackedType,
    keys: Vec<PackedMatrix>,
    values: Vec<PackedMatrix>,
    scratch: Scratch,
}

impl PackedHead {
    fn new(d: usize, ty: PackedType, q_tile: usize) -> Self {
        PackedHead { ty, keys: Vec::new(), values: Vec::new(), scratch: Scratch::new(d, q_tile) }
    }

    /// Packs K (tiles of `K_TILE` keys × d) and Vᵀ (d × keys) of one head of one sequence.
    fn load(&mut self, qkv: &[f32], seq: SequenceRange, head: usize, hidden: usize, d: usize) {
        let stride = 3 * hidden;
        let tiles = seq.len.div_ceil(K_TILE);
        let ty = self.ty;
        self.keys.resize_with(tiles, || PackedMatrix::empty(ty));
        self.values.resize_with(tiles, || PackedMatrix::empty(ty));
        for t in 0..tiles {
            let k0 = t * K_TILE;
            let k_len = K_TILE.min(seq.len - k0);
            let first = (seq.start + k0) * stride;
            self.keys[t].repack_strided(&qkv[first + hidden + head * d..], stride, k_len, d);
            self.values[t].repack_transposed(&qkv[first + 2 * hidden + head * d..], stride, k_len, d);
        }
    }

    /// Attention of queries `q0 .. q0+q_len` over all keys, with the packed tiles.
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
        let s = &mut self.scratch;
        s.reset(q_len, d);
        for (keys, values) in self.keys.iter().zip(&self.values) {
            let k_len = keys.n();
            let scores = &mut s.scores[..q_len * k_len];
            packed::matmul(q, stride, q_len, keys, scores, k_len, MatmulInit::Zero, false);
            s.online_softmax(q_len, k_len, d, scale);
            let scores = &s.scores[..q_len * k_len];
            packed::matmul(scores, k_len, q_len, values, &mut s.acc[..q_len * d], d, MatmulInit::Accumulate, false);
        }
        s.normalise(q_len, d)
    }
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
    fn new(d: usize, q_tile: usize) -> Self {
        Scratch {
            scores: vec![0.0; q_tile * K_TILE],
            acc: vec![0.0; q_tile * d],
            max: vec![0.0; q_tile],
            sum: vec![0.0; q_tile],
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
        self.reset(q_len, d);
        for k0 in (0..seq.len).step_by(K_TILE) {
            let k_len = K_TILE.min(seq.len - k0);
            // scores = Q · Kᵀ for this tile (K rows are `stride` apart).
            qk_tile(q, q_len, &k_all[k0 * stride..], k_len, stride, d, &mut self.scores[..q_len * k_len]);
            self.online_softmax(q_len, k_len, d, scale);
            // acc += P · V for this tile.
            pv_accumulate(&self.scores[..q_len * k_len], q_len, k_len, &v_all[k0 * stride..], stride, d, &mut self.acc[..q_len * d]);
        }
        self.normalise(q_len, d)
    }

    fn reset(&mut self, q_len: usize, d: usize) {
        self.acc[..q_len * d].fill(0.0);
        self.max[..q_len].fill(f32::NEG_INFINITY);
        self.sum[..q_len].fill(0.0);
    }

    /// Turns the raw scores of one key tile into `exp(s·scale − max)`, updating each row's
    /// running maximum and sum and rescaling its accumulator when the maximum grows.
    fn online_softmax(&mut self, q_len: usize, k_len: usize, d: usize, scale: f32) {
        for i in 0..q_len {
            let row = &mut self.scores[i * k_len..(i + 1) * k_len];
            let tile_max = softmax::scale_and_max(row, scale);
            let new_max = self.max[i].max(tile_max);
            // Through the same cut-off as the probabilities: a far smaller old maximum zeroes the
            // old sums instead of leaving subnormal values in the accumulator.
            let correction = softmax::exp(self.max[i] - new_max);
            let tile_sum = softmax::exp_and_sum(row, new_max);
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
    fn normalise(&mut self, q_len: usize, d: usize) -> &[f32] {
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
