//! aarch64 NEON attention: the AVX2 kernel's flash-attention loop in 128-bit registers.
//!
//! K and V are packed once per (sequence, head) as for AVX2 (`pack_keys_and_values`: K
//! transposed in blocks of 8 keys, V row after row). `S = Q·Kᵀ` for 6 queries × 8 keys is 12
//! accumulator registers; each query's dimensions are loaded four at a time and taken by lane
//! (`FMLA` by element), so a step of four dimensions is 6 loads of Q, 8 of K and 48 `FMLA`s.
//! The scores of a tile of 32 keys (four such blocks, kept in L1) go through one online-softmax
//! step per query (the same `exp` as the scalar code, lane by lane), and `O += P·V` keeps 16
//! dimensions of the 6 queries in 24 registers at a time. Nothing the size of `n × n` is stored.
//!
//! Queries are taken [`TILE_QUERIES`] at a time over [`TILE_KEYS`] keys at a time, so that the
//! tile of K and V (16 KiB) stays in L1 while every block of 6 queries passes over it. Each
//! query meets the key blocks in order, so its sums are the same whatever the tiling or batch.

use std::arch::aarch64::*;

use rayon::prelude::*;

use super::portable;
use super::{pack_keys_and_values, write_rows, SequenceRange, Shape, SharedMut};
use crate::kernels::cpu::Cpu;

/// Queries per block: 6 × 2 score registers in flight.
const QUERIES: usize = 6;
/// Keys per block: two registers of scores per query (one packed block of K).
const KEYS: usize = 8;
/// Queries per tile: blocks of [`QUERIES`] that share each tile of keys while it is in L1.
const TILE_QUERIES: usize = 4 * QUERIES;
/// Keys per tile: 32 keys of 64 dimensions of K and of V, 16 KiB; also the keys of one online
/// softmax step (eight registers of scores per query).
const TILE_KEYS: usize = 4 * KEYS;
const _: () = assert!(TILE_KEYS == 8 * 4);

/// Every (sequence, head) of `tasks`. Heads whose size is not a multiple of 8 take the
/// portable kernel (the model's heads are 64).
pub(super) fn attention(
    qkv: &[f32],
    ctx: SharedMut,
    tasks: &[(SequenceRange, usize)],
    shape: Shape,
    cpu: Cpu,
) {
    assert!(cpu.neon, "the NEON attention kernel needs Advanced SIMD");
    if !shape.d.is_multiple_of(8) {
        return portable::attention(qkv, ctx, tasks, shape, true, cpu);
    }
    tasks
        .par_iter()
        .for_each_init(Head::default, |state, &(seq, head)| {
            state.load(qkv, seq, head, shape);
            for q0 in (0..seq.len).step_by(TILE_QUERIES) {
                let queries = TILE_QUERIES.min(seq.len - q0);
                // SAFETY: NEON was checked above; `load` sized the buffers for `seq`.
                let out = unsafe { state.attend(qkv, seq, head, q0, queries, shape) };
                write_rows(ctx, out, seq.start + q0, head, shape);
            }
        });
}

/// One thread's buffers for one head of one sequence.
#[derive(Default)]
struct Head {
    /// `[key block of 8][d][8]`: K transposed, zero past the last key.
    keys: Vec<f32>,
    /// `[key][d]`: V, zero past the last key up to a whole block.
    values: Vec<f32>,
    /// `TILE_QUERIES × d` accumulators of the tile of queries.
    out: Vec<f32>,
    /// The running maximum and sum of each query of the tile.
    max: [f32; TILE_QUERIES],
    sum: [f32; TILE_QUERIES],
    /// `QUERIES × TILE_KEYS` scores, then probabilities, of the current tile of keys.
    probabilities: Vec<f32>,
}

impl Head {
    /// Packs this head's K transposed and its V contiguous.
    fn load(&mut self, qkv: &[f32], seq: SequenceRange, head: usize, shape: Shape) {
        pack_keys_and_values(
            qkv,
            seq,
            head,
            shape,
            KEYS,
            (&mut self.keys, &mut self.values),
        );
        self.out.resize(TILE_QUERIES * shape.d, 0.0);
        self.probabilities.resize(QUERIES * TILE_KEYS, 0.0);
    }

    /// Attention of queries `q0 .. q0 + queries` (at most [`TILE_QUERIES`]) over every key.
    ///
    /// # Safety
    /// NEON available; [`Head::load`] ran for this sequence and head.
    #[target_feature(enable = "neon")]
    unsafe fn attend(
        &mut self,
        qkv: &[f32],
        seq: SequenceRange,
        head: usize,
        q0: usize,
        queries: usize,
        shape: Shape,
    ) -> &[f32] {
        let Shape {
            d, hidden, scale, ..
        } = shape;
        let stride = 3 * hidden;
        // Rows past the tile's queries repeat its last one; their results are not written.
        let q_row =
            |i: usize| &qkv[(seq.start + q0 + i.min(queries - 1)) * stride + head * d..][..d];
        self.max = [f32::NEG_INFINITY; TILE_QUERIES];
        self.sum = [0.0; TILE_QUERIES];
        self.out.fill(0.0);
        for tile in (0..seq.len).step_by(TILE_KEYS) {
            let tile_end = seq.len.min(tile + TILE_KEYS);
            for b in (0..queries).step_by(QUERIES) {
                let q: [&[f32]; QUERIES] = std::array::from_fn(|i| q_row(b + i));
                for (block, k0) in (tile..tile + TILE_KEYS).step_by(KEYS).enumerate() {
                    let scores = if k0 < tile_end {
                        self.scores(&q, k0, d, scale, KEYS.min(seq.len - k0))
                    } else {
                        [[vdupq_n_f32(f32::NEG_INFINITY); 2]; QUERIES]
                    };
                    for (i, row) in scores.iter().enumerate() {
                        let at = i * TILE_KEYS + block * KEYS;
                        let dst = self.probabilities[at..].as_mut_ptr();
                        vst1q_f32(dst, row[0]);
                        vst1q_f32(dst.add(4), row[1]);
                    }
                }
                self.softmax(b, d);
                self.accumulate(tile, tile_end - tile, b, d);
            }
        }
        for i in 0..queries {
            scale_row(&mut self.out[i * d..][..d], 1.0 / self.sum[i]);
        }
        &self.out[..queries * d]
    }

    /// The online softmax step of queries `b .. b + QUERIES` of the tile for its tile of keys:
    /// their scores in `self.probabilities` become probabilities, their maxima, sums and
    /// outputs are updated; one maximum, sum and rescale per query and tile, and the six
    /// queries' corrections in two vector `exp`s (as the AVX2 kernel does).
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn softmax(&mut self, b: usize, d: usize) {
        assert!(self.probabilities.len() >= QUERIES * TILE_KEYS);
        let probabilities = self.probabilities.as_mut_ptr();
        // A query's 32 scores (and then probabilities) in eight registers.
        let row = |i: usize| {
            std::array::from_fn::<_, 8, _>(|r| vld1q_f32(probabilities.add(i * TILE_KEYS + 4 * r)))
        };
        let mut old = [0f32; 8];
        let mut new = [0f32; 8];
        for i in 0..QUERIES {
            let tile_max = vmaxvq_f32(row(i).into_iter().reduce(|a, b| vmaxq_f32(a, b)).unwrap());
            old[i] = self.max[b + i];
            new[i] = old[i].max(tile_max);
        }
        // exp(old − new) of each query, as the scalar `softmax::exp` gives it (same bits).
        let mut corrections = [0f32; 8];
        for h in [0, 4] {
            let x = vsubq_f32(
                vld1q_f32(old.as_ptr().add(h)),
                vld1q_f32(new.as_ptr().add(h)),
            );
            vst1q_f32(corrections.as_mut_ptr().add(h), exp(x));
        }
        for (i, &correction) in corrections.iter().enumerate().take(QUERIES) {
            let m = vdupq_n_f32(new[i]);
            let p = row(i).map(|r| exp(vsubq_f32(r, m)));
            let total = p.into_iter().reduce(|a, b| vaddq_f32(a, b)).unwrap();
            let sum = &mut self.sum[b + i];
            *sum = *sum * correction + vaddvq_f32(total);
            self.max[b + i] = new[i];
            if correction != 1.0 {
                scale_row(&mut self.out[(b + i) * d..][..d], correction);
            }
            for (r, &p_r) in p.iter().enumerate() {
                vst1q_f32(probabilities.add(i * TILE_KEYS + 4 * r), p_r);
            }
        }
    }

    /// `scale · q·k` of the 6 queries and the 8 keys from `k0`; keys past `live` score −∞.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn scores(
        &self,
        q: &[&[f32]; QUERIES],
        k0: usize,
        d: usize,
        scale: f32,
        live: usize,
    ) -> [[float32x4_t; 2]; QUERIES] {
        debug_assert!(k0.is_multiple_of(KEYS) && self.keys.len() >= (k0 + KEYS) * d);
        let mut acc = [[vdupq_n_f32(0.0); 2]; QUERIES];
        let block = self.keys[k0 * d..].as_ptr();
        for c in (0..d).step_by(4) {
            let qv: [float32x4_t; QUERIES] =
                std::array::from_fn(|i| vld1q_f32(q[i].as_ptr().add(c)));
            // Dimension c + LANE of every query against the 8 keys' values there, in order.
            macro_rules! dimension {
                ($lane:literal) => {
                    let k_lo = vld1q_f32(block.add((c + $lane) * 8));
                    let k_hi = vld1q_f32(block.add((c + $lane) * 8 + 4));
                    for (acc_i, &q_i) in acc.iter_mut().zip(&qv) {
                        acc_i[0] = vfmaq_laneq_f32::<$lane>(acc_i[0], k_lo, q_i);
                        acc_i[1] = vfmaq_laneq_f32::<$lane>(acc_i[1], k_hi, q_i);
                    }
                };
            }
            dimension!(0);
            dimension!(1);
            dimension!(2);
            dimension!(3);
        }
        let scale = vdupq_n_f32(scale);
        let lanes = [0u32, 1, 2, 3];
        let lanes = vld1q_u32(lanes.as_ptr());
        let live = vdupq_n_u32(live as u32);
        let keep = [0, 4].map(|base| vcltq_u32(vaddq_u32(lanes, vdupq_n_u32(base)), live));
        let minus_infinity = vdupq_n_f32(f32::NEG_INFINITY);
        acc.map(|row| {
            std::array::from_fn(|h| vbslq_f32(keep[h], vmulq_f32(row[h], scale), minus_infinity))
        })
    }

    /// `out += P · V` for queries `b .. b + QUERIES` of the tile and the `live` keys from `k0`
    /// (at most a tile's).
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn accumulate(&mut self, k0: usize, live: usize, b: usize, d: usize) {
        assert!(self.values.len() >= (k0 + live) * d && self.out.len() >= (b + QUERIES) * d);
        let (p, v, out) = (
            self.probabilities.as_ptr(),
            self.values[k0 * d..].as_ptr(),
            self.out[b * d..].as_mut_ptr(),
        );
        // Four registers a query (16 dimensions) where the head allows: 24 independent chains.
        let mut c0 = 0;
        while c0 + 16 <= d {
            pv_columns::<4>(p, v, live, out, d, c0);
            c0 += 16;
        }
        while c0 < d {
            pv_columns::<2>(p, v, live, out, d, c0);
            c0 += 8;
        }
    }
}

/// `out[i][c0 .. c0 + 4R] += Σ_j p[i][j] · v[j][c0 .. c0 + 4R]` for the block's queries (`v`
/// rows and `out` rows are `d` apart).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn pv_columns<const R: usize>(
    p: *const f32,
    v: *const f32,
    live: usize,
    out: *mut f32,
    d: usize,
    c0: usize,
) {
    let mut acc: [[float32x4_t; R]; QUERIES] =
        std::array::from_fn(|i| std::array::from_fn(|r| vld1q_f32(out.add(i * d + c0 + 4 * r))));
    for j in 0..live {
        let v_j: [float32x4_t; R] = std::array::from_fn(|r| vld1q_f32(v.add(j * d + c0 + 4 * r)));
        for (i, acc_i) in acc.iter_mut().enumerate() {
            let p_ij = *p.add(i * TILE_KEYS + j);
            for r in 0..R {
                acc_i[r] = vfmaq_n_f32(acc_i[r], v_j[r], p_ij);
            }
        }
    }
    for (i, acc_i) in acc.iter().enumerate() {
        for (r, a) in acc_i.iter().enumerate() {
            vst1q_f32(out.add(i * d + c0 + 4 * r), *a);
        }
    }
}

/// `row *= factor` (`row.len()` a multiple of 4).
#[inline]
#[target_feature(enable = "neon")]
unsafe fn scale_row(row: &mut [f32], factor: f32) {
    let f = vdupq_n_f32(factor);
    for chunk in row.chunks_exact_mut(4) {
        vst1q_f32(chunk.as_mut_ptr(), vmulq_f32(vld1q_f32(chunk.as_ptr()), f));
    }
}

/// [`crate::kernels::softmax::exp`] on 4 lanes: the same reduction, polynomial and cut-off,
/// with separate multiplies and adds as there, so each lane has the scalar function's bits.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn exp(x: float32x4_t) -> float32x4_t {
    let clamped = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.0)), vdupq_n_f32(88.0));
    let round = vdupq_n_f32(12_582_912.0);
    let n = vsubq_f32(
        vaddq_f32(
            vmulq_f32(clamped, vdupq_n_f32(std::f32::consts::LOG2_E)),
            round,
        ),
        round,
    );
    let r = vsubq_f32(
        vsubq_f32(clamped, vmulq_f32(n, vdupq_n_f32(0.693_359_4))),
        vmulq_f32(n, vdupq_n_f32(-2.121_944_4e-4)),
    );
    let mut p = vdupq_n_f32(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5e-1,
    ] {
        p = vaddq_f32(vmulq_f32(p, r), vdupq_n_f32(c));
    }
    let y = vaddq_f32(
        vaddq_f32(vmulq_f32(vmulq_f32(p, r), r), r),
        vdupq_n_f32(1.0),
    );
    let biased = vandq_u32(
        vreinterpretq_u32_f32(vaddq_f32(n, vdupq_n_f32(12_582_912.0 + 127.0))),
        vdupq_n_u32(0x3F_FFFF),
    );
    let e = vmulq_f32(y, vreinterpretq_f32_u32(vshlq_n_u32::<23>(biased)));
    // Exactly 0 below the cut-off (and for −∞, the keys past the sequence).
    let live = vcgeq_f32(x, vdupq_n_f32(-60.0));
    vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(e), live))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each lane of the vector `exp` is the scalar one, bit for bit, across its range, the
    /// clamps and the cut-off.
    #[test]
    fn vector_exp_is_the_scalar_exp() {
        let mut x = -100.0f32;
        while x <= 90.0 {
            let xs = [x, x + 0.01, x + 0.02, f32::NEG_INFINITY];
            // SAFETY: NEON is on every aarch64 CPU.
            let got = unsafe {
                let mut out = [0f32; 4];
                vst1q_f32(out.as_mut_ptr(), exp(vld1q_f32(xs.as_ptr())));
                out
            };
            for (&xi, &g) in xs.iter().zip(&got) {
                let want = crate::kernels::softmax::exp(xi);
                assert_eq!(g.to_bits(), want.to_bits(), "exp({xi}): {g} vs {want}");
            }
            x += 0.37;
        }
    }
}
