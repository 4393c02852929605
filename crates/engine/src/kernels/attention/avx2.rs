//! AVX2 + FMA attention: the flash-attention loop with the whole tile in registers.
//!
//! For each (sequence, head) K is packed once transposed, 8 keys side by side per dimension
//! (as ggml-cpu's flash attention packs K per tile), and V once row after row, so both are
//! contiguous (V's rows in `qkv` are 12 KiB apart: a page, and a TLB entry, per key). `S = Q·Kᵀ`
//! for 6 queries × 16 keys is 12 accumulator registers fed by one broadcast per query and two
//! loads per dimension. The scores of a tile of 32 keys (two such blocks, kept in L1) then go
//! through one online-softmax step per query (a vectorised `exp`, the running maximum and sum),
//! and `O += P·V` keeps 16 dimensions of the 6 queries in registers at a time. Nothing the size
//! of `n × n` is stored.
//!
//! Queries are taken [`TILE_QUERIES`] at a time over [`TILE_KEYS`] keys at a time, so that the
//! keys' and values' tile (16 KiB) stays in L1 while every block of 6 queries of the tile passes
//! over it: one pass of K and V through L2 per 24 queries instead of per 6. Each query still
//! meets the key blocks in order, so its sums are the same whatever the tiling.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::portable;
use super::{pack_keys_and_values, write_rows, SequenceRange, Shape, SharedMut};
use crate::kernels::cpu::Cpu;

/// Queries per block: 6 × 2 score registers, or 6 × 2 output registers, in flight.
const QUERIES: usize = 6;
/// Keys per block: two registers of scores per query.
const KEYS: usize = 16;
/// Queries per tile: blocks of [`QUERIES`] that share each tile of keys while it is in L1.
const TILE_QUERIES: usize = 4 * QUERIES;
/// Keys per tile: 32 keys of 64 dimensions of K and of V, 16 KiB; also the keys of one online
/// softmax step (four registers of scores per query).
const TILE_KEYS: usize = 2 * KEYS;
const _: () = assert!(TILE_KEYS == 4 * 8);

/// Every (sequence, head) of `tasks`. Heads whose size is not a multiple of 8 take the
/// portable kernel (the model's heads are 64).
pub(super) fn attention(
    qkv: &[f32],
    ctx: SharedMut,
    tasks: &[(SequenceRange, usize)],
    shape: Shape,
    cpu: Cpu,
) {
    assert!(cpu.avx2, "the AVX2 attention kernel needs AVX2 and FMA");
    if !shape.d.is_multiple_of(8) {
        return portable::attention(qkv, ctx, tasks, shape, true, cpu);
    }
    tasks
        .par_iter()
        .for_each_init(Head::default, |state, &(seq, head)| {
            state.load(qkv, seq, head, shape);
            for q0 in (0..seq.len).step_by(TILE_QUERIES) {
                let queries = TILE_QUERIES.min(seq.len - q0);
                // SAFETY: AVX2 and FMA were checked above; `load` sized the buffers for `seq`.
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
        let d = shape.d;
        pack_keys_and_values(
            qkv,
            seq,
            head,
            shape,
            KEYS,
            (&mut self.keys, &mut self.values),
        );
        self.out.resize(TILE_QUERIES * d, 0.0);
        self.probabilities.resize(QUERIES * TILE_KEYS, 0.0);
    }

    /// Attention of queries `q0 .. q0 + queries` (at most [`TILE_QUERIES`]) over every key.
    ///
    /// # Safety
    /// AVX2 and FMA available; [`Head::load`] ran for this sequence and head.
    #[target_feature(enable = "avx2,fma")]
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
        // Each block's query rows, sliced once rather than once per tile of keys (a call and
        // six bounds checks per tile were 3 % of the kernel).
        let blocks: [[&[f32]; QUERIES]; TILE_QUERIES / QUERIES] =
            std::array::from_fn(|k| std::array::from_fn(|i| q_row(k * QUERIES + i)));
        self.max = [f32::NEG_INFINITY; TILE_QUERIES];
        self.sum = [0.0; TILE_QUERIES];
        self.out.fill(0.0);
        for tile in (0..seq.len).step_by(TILE_KEYS) {
            let tile_end = seq.len.min(tile + TILE_KEYS);
            for (b, q) in (0..queries).step_by(QUERIES).zip(&blocks) {
                for (half, k0) in (tile..tile + TILE_KEYS).step_by(KEYS).enumerate() {
                    let scores = if k0 < tile_end {
                        self.scores(q, k0, d, scale, KEYS.min(seq.len - k0))
                    } else {
                        [[_mm256_set1_ps(f32::NEG_INFINITY); 2]; QUERIES]
                    };
                    for (i, row) in scores.iter().enumerate() {
                        let dst = self.probabilities[i * TILE_KEYS + half * KEYS..].as_mut_ptr();
                        _mm256_storeu_ps(dst, row[0]);
                        _mm256_storeu_ps(dst.add(8), row[1]);
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
    /// outputs are updated. One maximum, sum and rescale per query and tile of 32 keys, and
    /// the six queries' corrections in one vector `exp`: done per block of 16 keys, with a
    /// scalar `exp` each, this took 43 % of the kernel at 2048 tokens (Zen 2).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn softmax(&mut self, b: usize, d: usize) {
        assert!(self.probabilities.len() >= QUERIES * TILE_KEYS);
        let probabilities = self.probabilities.as_mut_ptr();
        // A query's 32 scores (and then probabilities) in four registers.
        let row = |i: usize| {
            std::array::from_fn::<_, 4, _>(|r| {
                _mm256_loadu_ps(probabilities.add(i * TILE_KEYS + 8 * r))
            })
        };
        let mut old = [0f32; 8];
        let mut new = [0f32; 8];
        for i in 0..QUERIES {
            let [r0, r1, r2, r3] = row(i);
            let tile_max =
                horizontal_max(_mm256_max_ps(_mm256_max_ps(r0, r1), _mm256_max_ps(r2, r3)));
            old[i] = self.max[b + i];
            new[i] = old[i].max(tile_max);
        }
        // exp(old − new) of each query, as the scalar `softmax::exp` gives it (same bits).
        let mut corrections = [0f32; 8];
        _mm256_storeu_ps(
            corrections.as_mut_ptr(),
            exp(_mm256_sub_ps(
                _mm256_loadu_ps(old.as_ptr()),
                _mm256_loadu_ps(new.as_ptr()),
            )),
        );
        for (i, &correction) in corrections.iter().enumerate().take(QUERIES) {
            let m = _mm256_set1_ps(new[i]);
            let p = exp_each(row(i).map(|r| _mm256_sub_ps(r, m)));
            let total = _mm256_add_ps(_mm256_add_ps(p[0], p[1]), _mm256_add_ps(p[2], p[3]));
            let sum = &mut self.sum[b + i];
            *sum = *sum * correction + horizontal_sum(total);
            self.max[b + i] = new[i];
            if correction != 1.0 {
                scale_row(&mut self.out[(b + i) * d..][..d], correction);
            }
            for (r, &p_r) in p.iter().enumerate() {
                _mm256_storeu_ps(probabilities.add(i * TILE_KEYS + 8 * r), p_r);
            }
        }
    }

    /// `scale · q·k` of the 6 queries and the 16 keys from `k0`; keys past `live` score −∞.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn scores(
        &self,
        q: &[&[f32]; QUERIES],
        k0: usize,
        d: usize,
        scale: f32,
        live: usize,
    ) -> [[__m256; 2]; QUERIES] {
        let mut acc = [[_mm256_setzero_ps(); 2]; QUERIES];
        let blocks = self.keys[(k0 / 8) * d * 8..].as_ptr();
        for c in 0..d {
            let k_lo = _mm256_loadu_ps(blocks.add(c * 8));
            let k_hi = _mm256_loadu_ps(blocks.add(d * 8 + c * 8));
            for (acc_i, q_i) in acc.iter_mut().zip(q) {
                let qc = _mm256_set1_ps(*q_i.get_unchecked(c));
                acc_i[0] = _mm256_fmadd_ps(qc, k_lo, acc_i[0]);
                acc_i[1] = _mm256_fmadd_ps(qc, k_hi, acc_i[1]);
            }
        }
        let scale = _mm256_set1_ps(scale);
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let keep =
            [0, 8].map(|base| _mm256_cmpgt_epi32(_mm256_set1_epi32(live as i32 - base), lanes));
        let minus_infinity = _mm256_set1_ps(f32::NEG_INFINITY);
        acc.map(|row| {
            std::array::from_fn(|h| {
                _mm256_blendv_ps(
                    minus_infinity,
                    _mm256_mul_ps(row[h], scale),
                    _mm256_castsi256_ps(keep[h]),
                )
            })
        })
    }

    /// `out += P · V` for queries `b .. b + QUERIES` of the tile and the `live` keys from `k0`
    /// (at most a tile's).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn accumulate(&mut self, k0: usize, live: usize, b: usize, d: usize) {
        assert!(self.values.len() >= (k0 + live) * d && self.out.len() >= (b + QUERIES) * d);
        let (p, v, out) = (
            self.probabilities.as_ptr(),
            self.values[k0 * d..].as_ptr(),
            self.out[b * d..].as_mut_ptr(),
        );
        // Two registers a query (16 dimensions) where the head allows: 12 independent chains.
        let mut c0 = 0;
        while c0 + 16 <= d {
            pv_columns::<2>(p, v, d, live, out, d, c0);
            c0 += 16;
        }
        if c0 < d {
            pv_columns::<1>(p, v, d, live, out, d, c0);
        }
        debug_assert!(live <= TILE_KEYS);
    }
}

/// `out[i][c0 .. c0 + 8R] += Σ_j p[i][j] · v[j][c0 .. c0 + 8R]` for the block's queries.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn pv_columns<const R: usize>(
    p: *const f32,
    v: *const f32,
    stride: usize,
    live: usize,
    out: *mut f32,
    d: usize,
    c0: usize,
) {
    let mut acc: [[__m256; R]; QUERIES] = std::array::from_fn(|i| {
        std::array::from_fn(|r| _mm256_loadu_ps(out.add(i * d + c0 + 8 * r)))
    });
    for j in 0..live {
        let v_j: [__m256; R] =
            std::array::from_fn(|r| _mm256_loadu_ps(v.add(j * stride + c0 + 8 * r)));
        for (i, acc_i) in acc.iter_mut().enumerate() {
            let p_ij = _mm256_set1_ps(*p.add(i * TILE_KEYS + j));
            for r in 0..R {
                acc_i[r] = _mm256_fmadd_ps(p_ij, v_j[r], acc_i[r]);
            }
        }
    }
    for (i, acc_i) in acc.iter().enumerate() {
        for (r, a) in acc_i.iter().enumerate() {
            _mm256_storeu_ps(out.add(i * d + c0 + 8 * r), *a);
        }
    }
}

/// `row *= factor`.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn scale_row(row: &mut [f32], factor: f32) {
    let f = _mm256_set1_ps(factor);
    for chunk in row.chunks_exact_mut(8) {
        _mm256_storeu_ps(
            chunk.as_mut_ptr(),
            _mm256_mul_ps(_mm256_loadu_ps(chunk.as_ptr()), f),
        );
    }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn horizontal_max(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m)))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn horizontal_sum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s)))
}

/// [`crate::kernels::softmax::exp`] on 8 lanes: the same reduction, polynomial and cut-off.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp(x: __m256) -> __m256 {
    let [e] = exp_each([x]);
    e
}

/// [`exp`] of `N` registers at once, step by step across them: `N` independent chains share
/// each broadcast constant. One register at a time, the polynomial's chain of dependent
/// multiplies and adds left the FMA units idle (the softmax step was a third of the kernel's
/// time at 2048 tokens, Zen 4 under `JINA_MAX_ISA=avx2`). The same operations on every lane,
/// so the same bits.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_each<const N: usize>(x: [__m256; N]) -> [__m256; N] {
    let splat = |v: f32| _mm256_set1_ps(v);
    let (low, high) = (splat(-87.0), splat(88.0));
    let clamped = x.map(|v| _mm256_min_ps(_mm256_max_ps(v, low), high));
    let round = splat(12_582_912.0);
    let log2e = splat(std::f32::consts::LOG2_E);
    let n = clamped.map(|v| _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(v, log2e), round), round));
    let (ln2_hi, ln2_lo) = (splat(0.693_359_4), splat(-2.121_944_4e-4));
    let r: [__m256; N] = std::array::from_fn(|i| {
        _mm256_sub_ps(
            _mm256_sub_ps(clamped[i], _mm256_mul_ps(n[i], ln2_hi)),
            _mm256_mul_ps(n[i], ln2_lo),
        )
    });
    let mut p = [splat(1.987_569_1e-4); N];
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5e-1,
    ] {
        let c = splat(c);
        for (p, &r) in p.iter_mut().zip(&r) {
            *p = _mm256_add_ps(_mm256_mul_ps(*p, r), c);
        }
    }
    let one = splat(1.0);
    let bias = splat(12_582_912.0 + 127.0);
    let mantissa = _mm256_set1_epi32(0x3F_FFFF);
    let cut_off = splat(-60.0);
    std::array::from_fn(|i| {
        let y = _mm256_add_ps(
            _mm256_add_ps(_mm256_mul_ps(_mm256_mul_ps(p[i], r[i]), r[i]), r[i]),
            one,
        );
        let biased = _mm256_and_si256(_mm256_castps_si256(_mm256_add_ps(n[i], bias)), mantissa);
        let e = _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(biased)));
        // Exactly 0 below the cut-off (and for −∞, the keys past the sequence).
        _mm256_and_ps(e, _mm256_cmp_ps::<_CMP_GE_OQ>(x[i], cut_off))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::record_variant;

    /// Each lane of the vector `exp`, one register or four at a time, is the scalar one, bit
    /// for bit, across its range, the clamps and the cut-off: the kernel's probabilities are
    /// the reference's.
    #[test]
    fn vector_exp_is_the_scalar_exp() {
        let cpu = Cpu::detected();
        for isa in cpu.test_variants() {
            if !cpu.capped(isa).avx2 {
                continue;
            }
            record_variant("attention::avx2::vector_exp_is_the_scalar_exp", isa);
            let mut x = -100.0f32;
            while x <= 90.0 {
                let xs: [f32; 32] = std::array::from_fn(|i| match i {
                    31 => f32::NEG_INFINITY,
                    _ => x + 0.01 * i as f32,
                });
                let mut one = [0f32; 32];
                let mut four = [0f32; 32];
                // SAFETY: this variant has AVX2 and FMA.
                unsafe {
                    let load = |i: usize| _mm256_loadu_ps(xs.as_ptr().add(8 * i));
                    for i in 0..4 {
                        _mm256_storeu_ps(one.as_mut_ptr().add(8 * i), exp(load(i)));
                    }
                    for (i, e) in exp_each(std::array::from_fn::<_, 4, _>(load))
                        .into_iter()
                        .enumerate()
                    {
                        _mm256_storeu_ps(four.as_mut_ptr().add(8 * i), e);
                    }
                }
                for ((&xi, &a), &b) in xs.iter().zip(&one).zip(&four) {
                    let want = crate::kernels::softmax::exp(xi).to_bits();
                    assert_eq!(a.to_bits(), want, "{isa}: exp({xi}): {a}");
                    assert_eq!(
                        b.to_bits(),
                        want,
                        "{isa}: exp of four registers ({xi}): {b}"
                    );
                }
                x += 0.37;
            }
        }
    }
}
