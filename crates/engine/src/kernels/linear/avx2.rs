//! AVX2 + FMA tile kernels (Haswell and later, AMD Zen 1–3, and every AVX-512 CPU under
//! `JINA_MAX_ISA=avx2`). With 16 registers a `rows × 64` block does not fit, so each walks the
//! 64-column panel in groups: 16 columns (two registers) for f32, 8 for int8, up to 6 rows.
//!
//! - f32: bf16 weights (the checkpoint's values) widened in registers: the low bf16 of a pair
//!   shifted up 16 bits, the high one masked, which is exact; then one FMA per input in input
//!   order, so the bits are the reference's. Half the weight memory and bandwidth of f32.
//! - int8: `VPMADDWD` on activations widened to i16 and weights sign-extended from int8: each
//!   32-bit lane sums two products of at most 127·127, so nothing can saturate (the
//!   `VPMADDUBSW` route saturates its 16-bit pair sums at 2·255·127 and would need 7-bit
//!   operands). The i32 sums are exact and scaled per chunk as every int8 kernel does: the same
//!   bits as VNNI, AMX and the reference.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{Int8Panel, PanelLayout, Tile, PANEL};

/// f32 tile on bf16 pairs: `out[m][c] (+)= Σ_i x[m·stride + i] · w(i, c)` for `i` in `inputs`
/// (its start even). With `carry` the sums go on from the values in `out` (the previous part
/// of the input dimension), in the same chain of FMAs, so that a product split into parts
/// gives the bits of the unsplit one.
///
/// # Safety
/// AVX2 and FMA available; `x` holds `mr` rows of `inputs.end` values `stride` apart; `w` one
/// panel of bf16 pairs of at least `ceil(inputs.end / 2)` steps in `layout`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn tile_widened(
    mr: usize,
    (x, stride): (&[f32], usize),
    inputs: Range<usize>,
    w: (&[u32], PanelLayout),
    (out, carry): (&mut Tile, bool),
) {
    for_rows!(mr, widened_rows(x, stride, inputs, w, (out, carry)))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn widened_rows<const MR: usize>(
    x: &[f32],
    stride: usize,
    inputs: Range<usize>,
    (w, layout): (&[u32], PanelLayout),
    out: (&mut Tile, bool),
) {
    let k = inputs.end;
    assert!(inputs.start.is_multiple_of(2) && inputs.start <= k);
    assert!(x.len() >= (MR - 1) * stride + k && w.len() >= layout.step(k / 2));
    // The layout's offsets are fixed before the loops, so that the inner loop is straight
    // address arithmetic (a `match` per step cost a tenth of the kernel's time).
    match layout {
        PanelLayout::Linear => {
            widened_groups::<MR>(x, stride, inputs, w, |s, g| s * PANEL + 16 * g, out)
        }
        tiled => widened_groups::<MR>(
            x,
            stride,
            inputs,
            w,
            move |s, g| tiled.step(s) + tiled.group(g),
            out,
        ),
    }
}

/// The tile of [`widened_rows`] for the weight offset `at(step, group)` of a layout.
///
/// Registers: `MR × 2` accumulators (12), the two widened weight vectors, the broadcast input
/// and the mask: 16, all AVX2 has. Step `s` holds inputs `2s` (low halves) and `2s + 1` (high
/// halves); the high halves are read from memory again rather than kept from the first load,
/// which would need two more registers and spill an accumulator to the stack every step (a
/// store-to-load round trip on the accumulator's chain: half the FMA rate).
#[inline(always)]
unsafe fn widened_groups<const MR: usize>(
    x: &[f32],
    stride: usize,
    inputs: Range<usize>,
    w: &[u32],
    at: impl Fn(usize, usize) -> usize,
    (out, carry): (&mut Tile, bool),
) {
    let x = x.as_ptr();
    let k = inputs.end;
    let high = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
    for g in 0..4 {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        if carry {
            for (m, acc_m) in acc.iter_mut().enumerate() {
                let o = out[m].as_ptr().add(16 * g);
                *acc_m = [_mm256_loadu_ps(o), _mm256_loadu_ps(o.add(8))];
            }
        }
        let fma_rows = |acc: &mut [[__m256; 2]; MR], input: usize, wv: [__m256; 2]| {
            for (m, acc_m) in acc.iter_mut().enumerate() {
                let xb = _mm256_broadcast_ss(&*x.add(m * stride + input));
                acc_m[0] = _mm256_fmadd_ps(xb, wv[0], acc_m[0]);
                acc_m[1] = _mm256_fmadd_ps(xb, wv[1], acc_m[1]);
            }
        };
        for s in inputs.start / 2..k.div_ceil(2) {
            let wp = w.as_ptr().add(at(s, g)) as *const __m256i;
            let low = [wp, wp.add(1)]
                .map(|p| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_loadu_si256(p))));
            fma_rows(&mut acc, 2 * s, low);
            if 2 * s + 1 == k {
                break;
            }
            // The same 64 bytes, through a pointer the compiler cannot prove equal, so that it
            // loads them again instead of keeping the first load alive (see above).
            let wp = std::hint::black_box(wp);
            let high = [wp, wp.add(1)]
                .map(|p| _mm256_castsi256_ps(_mm256_and_si256(_mm256_loadu_si256(p), high)));
            fma_rows(&mut acc, 2 * s + 1, high);
        }
        for (m, acc_m) in acc.iter().enumerate() {
            _mm256_storeu_ps(out[m].as_mut_ptr().add(16 * g), acc_m[0]);
            _mm256_storeu_ps(out[m].as_mut_ptr().add(16 * g + 8), acc_m[1]);
        }
    }
}

/// f32 tile on a part of a bf16 panel widened by [`widen_part`] (once for many tiles of rows):
/// `out[m][c] (+)= Σ_i x[m·stride + i] · w(i, c)` for `i` in `inputs`, one FMA per input in
/// input order (the reference's bits), going on from the sums in `out` with `carry`. The inner
/// loop is two loads, a broadcast per row and the FMAs, where [`tile_widened`] also widens
/// every weight for every tile.
///
/// # Safety
/// AVX2 and FMA available; `x` holds `mr` rows of `inputs.end` values `stride` apart; `w`
/// holds `64 · inputs.len()` values in [`widen_part`]'s order.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn tile_f32(
    mr: usize,
    (x, stride): (&[f32], usize),
    inputs: Range<usize>,
    w: &[f32],
    (out, carry): (&mut Tile, bool),
) {
    for_rows!(mr, f32_rows(x, stride, inputs, w, (out, carry)))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn f32_rows<const MR: usize>(
    x: &[f32],
    stride: usize,
    inputs: Range<usize>,
    w: &[f32],
    (out, carry): (&mut Tile, bool),
) {
    assert!(x.len() >= (MR - 1) * stride + inputs.end && w.len() >= inputs.len() * PANEL);
    let x = x.as_ptr().add(inputs.start);
    let n = inputs.len();
    let rows: [*const f32; MR] = std::array::from_fn(|m| x.add(m * stride));
    for g in 0..4 {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        if carry {
            for (m, acc_m) in acc.iter_mut().enumerate() {
                let o = out[m].as_ptr().add(16 * g);
                *acc_m = [_mm256_loadu_ps(o), _mm256_loadu_ps(o.add(8))];
            }
        }
        let wg = w.as_ptr().add(16 * g * n);
        for i in 0..n {
            let wv = [
                _mm256_loadu_ps(wg.add(16 * i)),
                _mm256_loadu_ps(wg.add(16 * i + 8)),
            ];
            for (row, acc_m) in rows.iter().zip(acc.iter_mut()) {
                let xb = _mm256_broadcast_ss(&*row.add(i));
                acc_m[0] = _mm256_fmadd_ps(xb, wv[0], acc_m[0]);
                acc_m[1] = _mm256_fmadd_ps(xb, wv[1], acc_m[1]);
            }
        }
        for (m, acc_m) in acc.iter().enumerate() {
            _mm256_storeu_ps(out[m].as_mut_ptr().add(16 * g), acc_m[0]);
            _mm256_storeu_ps(out[m].as_mut_ptr().add(16 * g + 8), acc_m[1]);
        }
    }
}

/// Widens `inputs` (its start even) of a panel of bf16 pairs into `dst` as f32 for
/// [`tile_f32`], exact (a shift and a mask): group by group of 16 columns, 16 values an input,
/// so that a group's weights are contiguous (64 KiB rows apart they would fall in a quarter
/// of L1's sets and evict each other).
///
/// # Safety
/// AVX2 available; `w` one panel of bf16 pairs of at least `ceil(inputs.end / 2)` steps in
/// `layout`; `dst` holds `64 · inputs.len()` values.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn widen_part(
    (w, layout): (&[u32], PanelLayout),
    inputs: Range<usize>,
    dst: &mut [f32],
) {
    assert!(inputs.start.is_multiple_of(2) && inputs.start <= inputs.end);
    assert!(w.len() >= layout.step(inputs.end / 2) && dst.len() >= inputs.len() * PANEL);
    let high = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
    let n = inputs.len();
    for s in inputs.start / 2..inputs.end.div_ceil(2) {
        let i = 2 * s - inputs.start;
        for g in 0..4 {
            let wp = w.as_ptr().add(layout.step(s) + layout.group(g)) as *const __m256i;
            let d = dst.as_mut_ptr().add(16 * g * n);
            for half in 0..2 {
                let pairs = _mm256_loadu_si256(wp.add(half));
                let low = _mm256_slli_epi32::<16>(pairs);
                _mm256_storeu_ps(d.add(16 * i + 8 * half), _mm256_castsi256_ps(low));
                if i + 1 < n {
                    let high = _mm256_and_si256(pairs, high);
                    _mm256_storeu_ps(d.add(16 * (i + 1) + 8 * half), _mm256_castsi256_ps(high));
                }
            }
        }
    }
}

/// int8 tile: `out[m][c] = (Σ_s Σ_j x·w) · row_scales[m] · col_scales[c]` over one chunk; `x`
/// holds the rows' activations as i16, four a step, from the chunk's first step, `stride`
/// values apart.
///
/// # Safety
/// AVX2 available; `x` holds `mr` rows of the chunk's steps; `ops.w` the panel to the chunk's end.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn tile_int8(
    mr: usize,
    x: (&[i16], usize),
    row_scales: &[f32],
    ops: &Int8Panel,
    out: &mut Tile,
) {
    for_rows!(mr, int8_rows(x, row_scales, ops, out))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn int8_rows<const MR: usize>(
    (x, stride): (&[i16], usize),
    row_scales: &[f32],
    ops: &Int8Panel,
    out: &mut Tile,
) {
    let &Int8Panel {
        steps: (first, steps),
        w,
        layout,
        col_scales,
        ..
    } = ops;
    assert!(x.len() >= (MR - 1) * stride + 4 * steps && row_scales.len() >= MR);
    assert!(w.len() >= layout.step(first + steps));
    // The offsets are fixed before the loops (the model's int8 panels are linear; tiled ones
    // come only from `PackedMatrix::pack_tiled`).
    match layout {
        PanelLayout::Linear => int8_groups::<MR>(
            (x, stride),
            steps,
            |g, s| (first + s) * PANEL + 8 * g,
            w,
            (row_scales, col_scales),
            out,
        ),
        tiled => int8_groups::<MR>(
            (x, stride),
            steps,
            move |g, s| tiled.step(first + s) + tiled.group(g / 2) + 8 * (g % 2),
            w,
            (row_scales, col_scales),
            out,
        ),
    }
}

/// The tile of [`int8_rows`] for the weight offset `at(group, step)` (in quads) of a layout.
#[inline(always)]
unsafe fn int8_groups<const MR: usize>(
    (x, stride): (&[i16], usize),
    steps: usize,
    at: impl Fn(usize, usize) -> usize,
    w: &[u32],
    (row_scales, col_scales): (&[f32], &[f32; PANEL]),
    out: &mut Tile,
) {
    let x = x.as_ptr();
    for g in 0..8 {
        // Columns 8g .. 8g + 8: 32 bytes of quads a step, sign-extended into two registers of
        // 16 i16 (columns 8g..8g+4, then 8g+4..8g+8), each column's quad in two 32-bit lanes.
        let mut acc = [[_mm256_setzero_si256(); 2]; MR];
        for s in 0..steps {
            let wp = w.as_ptr().add(at(g, s)) as *const __m128i;
            let w_lo = _mm256_cvtepi8_epi16(_mm_loadu_si128(wp));
            let w_hi = _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add(1)));
            for (m, acc_m) in acc.iter_mut().enumerate() {
                // The step's four i16 activations in every 64-bit lane: lane pair (2c, 2c + 1)
                // meets inputs (0, 1) and (2, 3) of column c.
                let quad = (x.add(m * stride + 4 * s) as *const i64).read_unaligned();
                let xq = _mm256_set1_epi64x(quad);
                acc_m[0] = _mm256_add_epi32(acc_m[0], _mm256_madd_epi16(xq, w_lo));
                acc_m[1] = _mm256_add_epi32(acc_m[1], _mm256_madd_epi16(xq, w_hi));
            }
        }
        let col_scale = _mm256_loadu_ps(col_scales.as_ptr().add(8 * g));
        for (m, acc_m) in acc.iter().enumerate() {
            // Adjacent lanes summed: [c0 c1 c4 c5 | c2 c3 c6 c7], then the 64-bit lanes put
            // back in column order.
            let sums =
                _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(acc_m[0], acc_m[1]));
            // (sum · row scale) · column scale: every int8 kernel's order.
            let scaled = _mm256_mul_ps(
                _mm256_mul_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(row_scales[m])),
                col_scale,
            );
            _mm256_storeu_ps(out[m].as_mut_ptr().add(8 * g), scaled);
        }
    }
}
