//! int8 tile kernel on 256-bit `VPDPBUSD` (Alder Lake and later, Zen 5, Sapphire Rapids: the
//! AVX-VNNI CPUs without AVX-512 among them get int8 at the AVX-512 VNNI kernel's work per
//! instruction, on half-width registers). One step is four int8 products per 32-bit lane summed
//! exactly into it, so a `6 × 16` block of sums (12 registers) takes one broadcast activation per
//! row and two weight loads per step, against `VPMADDWD`'s two multiplies and two adds (avx2.rs).
//!
//! The instruction has two encodings: VEX (AVX-VNNI) and EVEX (AVX512_VNNI with VL). They
//! compute the same thing; the kernel is written once over [`Dot`] and compiled for each, so an
//! AVX-512 CPU capped at `avxvnni` runs (and tests) this kernel in its EVEX form, and an AVX-VNNI
//! CPU runs it in its VEX form, where the EVEX one would fault.
//!
//! Activations are unsigned quads (the int8 value + 128) and the sums start from −128·Σw, as in
//! the AVX-512 kernel, and are scaled in its order: the same bits as every int8 kernel.

use std::arch::x86_64::*;

use super::{Int8Panel, PanelLayout, Tile, PANEL};

/// `acc + Σ₄ a·b` per 32-bit lane, `a` unsigned and `b` signed bytes.
trait Dot {
    unsafe fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i;
}

/// The VEX encoding (AVX-VNNI).
struct Vex;
/// The EVEX encoding (AVX512_VNNI + AVX512VL).
struct Evex;

impl Dot for Vex {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, a, b)
    }
}

impl Dot for Evex {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, a, b)
    }
}

/// int8 tile: `out[m][c] = (Σ_s x·w − 128·sums[c]) · row_scales[m] · col_scales[c]` over one
/// chunk, with AVX-VNNI's VEX encoding. `x`: the rows' quads of u8 (the int8 activation + 128)
/// from the chunk's first step, `stride` apart.
///
/// # Safety
/// AVX2 and AVX-VNNI available; `x` holds `mr` rows of the chunk's steps; `ops.w` the panel to
/// the chunk's end.
#[target_feature(enable = "avx2,fma,avxvnni")]
pub unsafe fn tile_int8_vex(
    mr: usize,
    x: (&[u32], usize),
    row_scales: &[f32],
    ops: &Int8Panel,
    out: &mut Tile,
) {
    for_rows!(mr, rows_vex(x, row_scales, ops, out))
}

/// [`tile_int8_vex`] in the EVEX encoding.
///
/// # Safety
/// AVX2, AVX512_VNNI and AVX512VL available; as [`tile_int8_vex`] otherwise.
#[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
pub unsafe fn tile_int8_evex(
    mr: usize,
    x: (&[u32], usize),
    row_scales: &[f32],
    ops: &Int8Panel,
    out: &mut Tile,
) {
    for_rows!(mr, rows_evex(x, row_scales, ops, out))
}

#[inline(always)]
unsafe fn rows_vex<const MR: usize>(
    x: (&[u32], usize),
    row_scales: &[f32],
    ops: &Int8Panel,
    out: &mut Tile,
) {
    int8_rows::<MR, Vex>(x, row_scales, ops, out)
}

#[inline(always)]
unsafe fn rows_evex<const MR: usize>(
    x: (&[u32], usize),
    row_scales: &[f32],
    ops: &Int8Panel,
    out: &mut Tile,
) {
    int8_rows::<MR, Evex>(x, row_scales, ops, out)
}

#[inline(always)]
unsafe fn int8_rows<const MR: usize, D: Dot>(
    (x, stride): (&[u32], usize),
    row_scales: &[f32],
    ops: &Int8Panel,
    out: &mut Tile,
) {
    let &Int8Panel {
        steps: (first, steps),
        w,
        layout,
        sums,
        col_scales,
    } = ops;
    assert!(w.len() >= layout.step(first + steps) && sums.len() >= PANEL);
    assert!(x.len() >= (MR - 1) * stride + steps && row_scales.len() >= MR);
    let x = x.as_ptr();
    // −128·Σw: what the +128 of every unsigned activation adds to the sums.
    let minus_128 = _mm256_set1_epi32(-128);
    for g in 0..4 {
        // Columns 16g .. 16g + 16: 64 bytes of quads a step, in two registers.
        let start: [__m256i; 2] = std::array::from_fn(|v| {
            let sums = _mm256_loadu_si256(sums.as_ptr().add(16 * g + 8 * v) as *const __m256i);
            _mm256_mullo_epi32(sums, minus_128)
        });
        let mut acc = [start; MR];
        let group = layout.group(g);
        let linear = layout == PanelLayout::Linear;
        for s in 0..steps {
            // The offsets of a linear panel without the layout's arithmetic (int8 panels are
            // linear but those `PackedMatrix::pack_tiled` makes).
            let at = if linear {
                (first + s) * PANEL + 16 * g
            } else {
                layout.step(first + s) + group
            };
            let wp = w.as_ptr().add(at) as *const __m256i;
            let (w0, w1) = (_mm256_loadu_si256(wp), _mm256_loadu_si256(wp.add(1)));
            for (m, acc_m) in acc.iter_mut().enumerate() {
                let xq = _mm256_set1_epi32(*x.add(m * stride + s) as i32);
                acc_m[0] = D::dot(acc_m[0], xq, w0);
                acc_m[1] = D::dot(acc_m[1], xq, w1);
            }
        }
        for (m, acc_m) in acc.iter().enumerate() {
            let row_scale = _mm256_set1_ps(row_scales[m]);
            for (v, a) in acc_m.iter().enumerate() {
                let col_scale = _mm256_loadu_ps(col_scales.as_ptr().add(16 * g + 8 * v));
                // (sum · row scale) · column scale: AMX's order (`Int8Scales::apply`).
                let scaled =
                    _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(*a), row_scale), col_scale);
                _mm256_storeu_ps(out[m].as_mut_ptr().add(16 * g + 8 * v), scaled);
            }
        }
    }
}
