//! Activations in the form each kernel reads: int8 quads (signed, unsigned for `VPDPBUSD`, or
//! widened to i16 for `vpmaddwd`), bf16 pairs split into exact parts, and the LoRA inputs that
//! extend a row.

use half::bf16;
use rayon::prelude::*;

use super::pack::int8_scale;
use crate::kernels::cpu::Cpu;

/// One activation row as int8 quads for [`PackedType::Int8`] (`dst` is `steps` quads, the
/// padding zero); returns its scale. Rounds half to even (weights round half away from zero).
pub(super) fn quantize_row(row: &[f32], dst: &mut [u32]) -> f32 {
    quantize_row_flipped(row, dst, 0)
}

/// 1.5·2^23 + q holds the integer q in its low mantissa bits, so its low byte is q as a
/// two's-complement int8: a vectorisable rounding (half to even), where `as i8` is compiled
/// lane by lane.
const ROUND: f32 = 12_582_912.0;

/// `v · inverse` rounded to an int8 in [-127, 127], as every int8 kernel quantises.
#[inline(always)]
fn quantize(v: f32, inverse: f32) -> i8 {
    ((v * inverse).clamp(-127.0, 127.0) + ROUND).to_bits() as u8 as i8
}

/// [`quantize_row`] widened to i16, four values a step (`dst` is `4·steps` values, the padding
/// zero), for the AVX2 kernel's `vpmaddwd`: the same integers, so the same sums.
pub(super) fn quantize_row_i16(row: &[f32], dst: &mut [i16]) -> f32 {
    let scale = int8_scale(row);
    let inverse = 1.0 / scale;
    for (q, v) in dst.iter_mut().zip(row) {
        *q = quantize(*v, inverse) as i16;
    }
    let padding = row.len().min(dst.len());
    dst[padding..].fill(0);
    scale
}

/// `rows` rows of `k` values (`stride` apart), each quantised by `convert` into `width`
/// elements of a buffer, and the scale of each row.
pub(super) fn quantize_rows<T: Copy + Default + Send>(
    (x, stride, rows, k): (&[f32], usize, usize, usize),
    width: usize,
    parallel: bool,
    convert: impl Fn(&[f32], &mut [T]) -> f32 + Sync,
) -> (Vec<T>, Vec<f32>) {
    let mut values = vec![T::default(); rows * width];
    let mut scales = vec![0f32; rows];
    let each = |(r, (dst, scale)): (usize, (&mut [T], &mut f32))| {
        *scale = convert(&x[r * stride..r * stride + k], dst);
    };
    if parallel {
        values
            .par_chunks_exact_mut(width.max(1))
            .zip(&mut scales)
            .enumerate()
            .for_each(each);
    } else {
        values
            .chunks_exact_mut(width.max(1))
            .zip(&mut scales)
            .enumerate()
            .for_each(each);
    }
    (values, scales)
}

/// [`quantize_row`] with every byte, padding included, xor-ed with `flip` in the same pass.
pub(super) fn quantize_row_flipped(row: &[f32], dst: &mut [u32], flip: u8) -> f32 {
    let scale = int8_scale(row);
    let inverse = 1.0 / scale;
    let quads = dst.len();
    // SAFETY: a u32 slice viewed as its bytes (little-endian: input 4s + j is byte j of quad s).
    let bytes = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut u8, 4 * quads) };
    for (b, v) in bytes.iter_mut().zip(row) {
        *b = quantize(*v, inverse) as u8 ^ flip;
    }
    bytes[row.len().min(4 * quads)..].fill(flip);
    scale
}

/// [`quantize_row`] with 128 added to each int8, the unsigned operand `VPDPBUSD` takes: flipping
/// the sign bit of a two's-complement byte adds 128. The padding becomes 128 too, which meets
/// zero weights.
pub(super) fn quantize_row_unsigned(row: &[f32], dst: &mut [u32]) -> f32 {
    quantize_row_flipped(row, dst, 0x80)
}

/// Rounds `rows` rows of `k` values (`stride` apart) to bf16, in a buffer of `padded_rows`
/// rows whose extra rows are zero (AMX works on 32-row blocks). Each row holds `parts` blocks
/// of `steps` pairs: block 0 is bf16(x) and each next block the bf16 of what the blocks before
/// it left over, so with 3 parts they sum to x exactly (8 + 8 + 8 significant bits; for
/// |x| < 2^-100 the bits below 2^-126 are lost, as the conversion flushes subnormals).
#[allow(clippy::too_many_arguments)]
pub(super) fn bf16_rows(
    x: &[f32],
    stride: usize,
    rows: usize,
    k: usize,
    steps: usize,
    padded_rows: usize,
    parts: usize,
    (cpu, parallel): (Cpu, bool),
) -> Vec<u32> {
    let row_pairs = parts * steps;
    let mut pairs = vec![0u32; padded_rows * row_pairs];
    if row_pairs == 0 {
        return pairs;
    }
    let convert = |r: usize, dst: &mut [u32]| {
        split_row(&x[r * stride..r * stride + k], dst, steps, parts, cpu)
    };
    let filled = &mut pairs[..rows * row_pairs];
    if parallel {
        filled
            .par_chunks_exact_mut(row_pairs)
            .enumerate()
            .for_each(|(r, dst)| convert(r, dst));
    } else {
        filled
            .chunks_exact_mut(row_pairs)
            .enumerate()
            .for_each(|(r, dst)| convert(r, dst));
    }
    pairs
}

/// Rows of bf16 pairs (`steps` a row, as [`bf16_rows`] gives them) interleaved in pairs of
/// rows, the operand of `BFMMLA` (two rows × four inputs a register): pair `p`, step pair `t`
/// holds `[row 2p @ 2t, row 2p @ 2t+1, row 2p+1 @ 2t, row 2p+1 @ 2t+1]`, an odd last row
/// paired with zeros. Pair `p` starts at `p · 2 · steps`, so rows `r0 ..` (`r0` even) at
/// `r0 · steps`.
pub(super) fn interleave_row_pairs(pairs: &[u32], rows: usize, steps: usize) -> Vec<u32> {
    assert!(steps.is_multiple_of(2) && pairs.len() >= rows * steps);
    let mut interleaved = vec![0u32; rows.div_ceil(2) * 2 * steps];
    for (r, row) in pairs.chunks_exact(steps.max(1)).take(rows).enumerate() {
        let dst = &mut interleaved[(r / 2) * 2 * steps..][..2 * steps];
        for (t, two) in row.chunks_exact(2).enumerate() {
            dst[4 * t + 2 * (r % 2)..][..2].copy_from_slice(two);
        }
    }
    interleaved
}

/// One row of [`bf16_rows`]: `dst` holds `parts` blocks of `steps` pairs, zero-filled.
pub(super) fn split_row(row: &[f32], dst: &mut [u32], steps: usize, parts: usize, cpu: Cpu) {
    debug_assert!(row.len() <= 2 * steps && dst.len() == parts * steps);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = cpu;
    #[cfg(target_arch = "x86_64")]
    if cpu.avx512_bf16 {
        // SAFETY: the features were checked; `dst` has room for `parts` blocks of 2·steps bf16.
        return unsafe { split_row_avx512(row, dst, steps, parts) };
    }
    for p in 0..parts {
        for s in 0..steps {
            let part_of = |i: usize| row.get(i).map_or(0, |&v| bf16_part(v, p));
            dst[p * steps + s] = part_of(2 * s) as u32 | (part_of(2 * s + 1) as u32) << 16;
        }
    }
}

/// Bits of part `p` of `v`'s exact split into bf16 parts (rounding to nearest even).
pub(super) fn bf16_part(v: f32, p: usize) -> u16 {
    let mut rest = v;
    for _ in 0..p {
        rest -= bf16::from_f32(rest).to_f32();
    }
    bf16::from_f32(rest).to_bits()
}

/// [`split_row`] with `VCVTNEPS2BF16`: 16 values at a time, the tail by a masked load.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
pub(super) unsafe fn split_row_avx512(row: &[f32], dst: &mut [u32], steps: usize, parts: usize) {
    use std::arch::x86_64::*;
    let out = dst.as_mut_ptr() as *mut u16;
    for i in (0..row.len()).step_by(16) {
        let n = (row.len() - i).min(16);
        let mask: u16 = if n == 16 { u16::MAX } else { (1u16 << n) - 1 };
        let mut rest = _mm512_maskz_loadu_ps(mask, row.as_ptr().add(i));
        for p in 0..parts {
            let part = _mm512_cvtneps_pbh(rest);
            _mm256_mask_storeu_epi16(
                out.add(2 * p * steps + i) as *mut i16,
                mask,
                std::mem::transmute::<__m256bh, __m256i>(part),
            );
            if p + 1 < parts {
                rest = _mm512_sub_ps(rest, _mm512_cvtpbh_ps(part));
            }
        }
    }
}

/// [`split_row`] straight into AMX tile rows: part `p` of the 32 values of tile step `s` (16
/// pairs, zeros past the row's end) goes to `dst + (s·parts + p)·part_stride`. The same
/// conversions as `split_row_avx512`, so the same bits, without a pass through a row buffer
/// and a second one copying it into the tiles (that copy alone took 5 % of the samples of an
/// f32 forward at 4×512).
///
/// # Safety
/// AVX512_BF16 available; `row.len() ≤ 32·tile_steps`; `dst` valid for 16 `u32` at every
/// `(s·parts + p)·part_stride`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
pub(super) unsafe fn split_row_into_tiles(
    row: &[f32],
    tile_steps: usize,
    parts: usize,
    dst: *mut u32,
    part_stride: usize,
) {
    use std::arch::x86_64::*;
    let mask = |from: usize| -> u16 {
        match row.len().saturating_sub(from) {
            n if n >= 16 => u16::MAX,
            n => (1u16 << n) - 1,
        }
    };
    for s in 0..tile_steps {
        let i = 32 * s;
        // Masked loads read nothing past the row (the pointer is only offset, never read there).
        let mut lo = _mm512_maskz_loadu_ps(mask(i), row.as_ptr().wrapping_add(i));
        let mut hi = _mm512_maskz_loadu_ps(mask(i + 16), row.as_ptr().wrapping_add(i + 16));
        for p in 0..parts {
            let part = _mm512_cvtne2ps_pbh(hi, lo);
            let bits = std::mem::transmute::<__m512bh, __m512i>(part);
            _mm512_storeu_si512(dst.add((s * parts + p) * part_stride) as *mut __m512i, bits);
            if p + 1 < parts {
                let lo_part =
                    std::mem::transmute::<__m256i, __m256bh>(_mm512_castsi512_si256(bits));
                let hi_part =
                    std::mem::transmute::<__m256i, __m256bh>(_mm512_extracti64x4_epi64::<1>(bits));
                lo = _mm512_sub_ps(lo, _mm512_cvtpbh_ps(lo_part));
                hi = _mm512_sub_ps(hi, _mm512_cvtpbh_ps(hi_part));
            }
        }
    }
}

/// Inputs appended to every row of a product's `x`: LoRA's down-projections, so that the weights'
/// extra columns (each adapter's up-projection, [`PackedMatrix::pack`]ed after `W`) add the
/// low-rank term inside the product itself, for bf16 and bf16x3 weights.
///
/// Row `r` of `x` is followed by `slots · rank` values: `low[r·rank..(r+1)·rank]` in slot
/// `slot[r]` (its adapter), zeros in the other slots and everywhere for a row without adapter.
#[derive(Clone, Copy)]
pub struct LowRankInputs<'a> {
    /// `rows × rank`.
    pub low: &'a [f32],
    /// Columns of `low`: LoRA's rank.
    pub rank: usize,
    /// Each row's adapter.
    pub slot: &'a [Option<usize>],
    /// Adapters: the extra inputs of a row are `slots · rank`.
    pub slots: usize,
}

impl LowRankInputs<'_> {
    /// Extra inputs of a row.
    pub(super) fn len(&self) -> usize {
        self.slots * self.rank
    }

    /// Row `r`'s extra inputs, into `dst` (`len()` values).
    pub(super) fn row(&self, r: usize, dst: &mut [f32]) {
        dst.fill(0.0);
        if let Some(slot) = self.slot[r] {
            dst[slot * self.rank..][..self.rank]
                .copy_from_slice(&self.low[r * self.rank..][..self.rank]);
        }
    }
}

/// Row `r` of `x` (its first `k_x` values) followed by its extra inputs, into `dst`.
pub(super) fn extended_row(
    x: &[f32],
    stride: usize,
    k_x: usize,
    extra: &LowRankInputs,
    r: usize,
    dst: &mut [f32],
) {
    dst[..k_x].copy_from_slice(&x[r * stride..][..k_x]);
    extra.row(r, &mut dst[k_x..]);
}
