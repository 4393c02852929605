//! Bidirectional multi-head attention over variable-length sequences, flash style.
//!
//! Sequences are packed one after another (no padding, so no mask). For each sequence, head and
//! block of queries, the keys are visited in tiles with an online softmax: the running maximum and
//! sum are rescaled as each tile arrives, so no `n × n` score matrix is ever held. Memory per task
//! is one score tile plus a `queries × d` accumulator, linear in the length.
//!
//! One kernel per instruction set, chosen at load ([`AttentionKernel`]): [`portable`] (plain
//! loops or the `gemm` crate's tiles), `avx2` and `neon` (the whole tile in registers), `avx512` (K and V
//! packed once per head for the packed product kernels) and `amx` (fused, for heads of 64).
//! The precision of a sequence depends on that sequence alone, never on its batch.

use super::cpu::Cpu;
use super::resolve::AttentionKernel;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;
mod portable;

/// Queries per score tile of the tiled kernels.
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
/// `Wqkv` layout). Rotary positions must already be applied to Q and K. `kernel` and `cpu` come
/// from the model's [`super::KernelPlan`]: the kernel family and precision, and the features it may
/// use; softmax statistics stay in f32 in every kernel.
pub fn attention(
    qkv: &[f32],
    ctx: &mut [f32],
    sequences: &[SequenceRange],
    heads: usize,
    d: usize,
    (kernel, cpu): (AttentionKernel, Cpu),
) {
    let hidden = heads * d;
    let tokens: usize = sequences.iter().map(|s| s.start + s.len).max().unwrap_or(0);
    assert!(qkv.len() >= tokens * 3 * hidden && ctx.len() >= tokens * hidden);
    let shape = Shape {
        d,
        hidden,
        scale: 1.0 / (d as f32).sqrt(),
    };
    let ctx = SharedMut(ctx.as_mut_ptr());
    // One task per (sequence, head): a head's K and V are read (or converted) once.
    let tasks: Vec<(SequenceRange, usize)> = sequences
        .iter()
        .flat_map(|s| (0..heads).map(move |h| (*s, h)))
        .collect();
    match kernel {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        AttentionKernel::Amx { bf16 } if d == amx::HEAD_DIM => {
            amx::attention(qkv, ctx, &tasks, shape, bf16, cpu)
        }
        #[cfg(target_arch = "x86_64")]
        AttentionKernel::Amx { bf16 } | AttentionKernel::Avx512 { bf16 } => {
            avx512::attention(qkv, ctx, &tasks, shape, bf16, cpu)
        }
        #[cfg(target_arch = "x86_64")]
        AttentionKernel::Avx2 => avx2::attention(qkv, ctx, &tasks, shape, cpu),
        #[cfg(target_arch = "aarch64")]
        AttentionKernel::Neon => neon::attention(qkv, ctx, &tasks, shape, cpu),
        AttentionKernel::Reference => portable::attention(qkv, ctx, &tasks, shape, false, cpu),
        _ => portable::attention(qkv, ctx, &tasks, shape, true, cpu),
    }
}

/// The sizes every kernel needs.
#[derive(Clone, Copy)]
struct Shape {
    d: usize,
    hidden: usize,
    scale: f32,
}

/// Packs one head of one sequence for the register kernels (AVX2, NEON): K transposed in
/// blocks of 8 keys (`keys[block][c][8]`, 8 keys side by side per dimension, as ggml-cpu's
/// flash attention packs K per tile) and V row after row (`values[key][c]`), both zero past the
/// last key up to a multiple of `pad_keys`. In `qkv` a head's rows are 12 KiB apart: a page,
/// and a TLB entry, per key; packed, both are contiguous.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
fn pack_keys_and_values(
    qkv: &[f32],
    seq: SequenceRange,
    head: usize,
    shape: Shape,
    pad_keys: usize,
    (keys, values): (&mut Vec<f32>, &mut Vec<f32>),
) {
    let Shape { d, hidden, .. } = shape;
    assert!(pad_keys.is_multiple_of(8));
    let stride = 3 * hidden;
    let padded = seq.len.div_ceil(pad_keys) * pad_keys;
    keys.clear();
    keys.resize(padded * d, 0.0);
    values.clear();
    values.resize(padded * d, 0.0);
    for t in 0..seq.len {
        let row = &qkv[(seq.start + t) * stride + hidden + head * d..];
        let block = &mut keys[(t / 8) * d * 8..][..d * 8];
        for (c, &v) in row[..d].iter().enumerate() {
            block[c * 8 + t % 8] = v;
        }
        values[t * d..][..d].copy_from_slice(&row[hidden..][..d]);
    }
}

/// Copies a `rows × d` block into `ctx` at row `first_row`, columns of `head`.
fn write_rows(ctx: SharedMut, block: &[f32], first_row: usize, head: usize, shape: Shape) {
    let Shape { d, hidden, .. } = shape;
    for (i, row) in block.chunks_exact(d).enumerate() {
        let at = (first_row + i) * hidden + head * d;
        // SAFETY: each task owns its rows within one head's columns; no two tasks share an
        // element, and `ctx` (checked long enough by `attention`) outlives the parallel loop.
        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), ctx.get().add(at), d) };
    }
}

/// A raw pointer that rayon tasks writing disjoint regions may share.
#[derive(Clone, Copy)]
pub(super) struct SharedMut(*mut f32);
// SAFETY: only used for disjoint writes, see `attention`.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}
impl SharedMut {
    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}
