//! AVX-512 tile kernels: f32 (`VFMADD231PS` on f32 weights, or on bf16 pairs widened in
//! registers: exact, half the memory), bf16 (`VDPBF16PS` on bf16 pairs) and int8 (`VPDPBUSD`),
//! each a `rows × 64` block of sums in 24 registers, one broadcast activation per row per step.

use std::arch::x86_64::*;

use super::{Int8Panel, PanelLayout, Tile, PANEL};

/// f32 tile: `out[m][c] = Σ_s x[m·stride + s] · w[s·64 + c]`.
#[target_feature(enable = "avx512f")]
pub unsafe fn tile_f32(
    mr: usize,
    x: *const f32,
    stride: usize,
    steps: usize,
    w: &[u32],
    out: &mut Tile,
) {
    for_rows!(mr, f32_rows(x, stride, steps, w, out))
}

/// f32 tile on bf16 pairs: `out[m][c] = Σ_i x[m·stride + i] · w(i, c)` for `i < k`, each
/// weight widened to f32 in registers (the low bf16 of a pair shifted up 16 bits, the high one
/// masked: exact) and one FMA per input in input order, so the bits are the reference's and the
/// f32 kernel's on the same values, at half the weight memory and bandwidth.
///
/// # Safety
/// AVX-512F available; `x` holds `mr` rows of `k` values `stride` apart; `w` one panel of bf16
/// pairs of at least `ceil(k / 2)` steps in `layout`.
#[target_feature(enable = "avx512f")]
pub unsafe fn tile_widened(
    mr: usize,
    x: &[f32],
    stride: usize,
    k: usize,
    w: Bf16Panel,
    out: &mut Tile,
) {
    for_rows!(mr, widened_rows(x, stride, k, w, out))
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn widened_rows<const MR: usize>(
    x: &[f32],
    stride: usize,
    k: usize,
    Bf16Panel { w, layout }: Bf16Panel,
    out: &mut Tile,
) {
    assert!(x.len() >= (MR - 1) * stride + k && w.len() >= layout.step(k / 2));
    let x = x.as_ptr();
    let groups: [usize; 4] = std::array::from_fn(|g| layout.group(g));
    let high = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    let mut acc = [[_mm512_setzero_ps(); 4]; MR];
    let fma_rows = |acc: &mut [[__m512; 4]; MR], input: usize, wv: [__m512; 4]| {
        for (m, acc_m) in acc.iter_mut().enumerate() {
            let xb = _mm512_set1_ps(*x.add(m * stride + input));
            for (a, wv) in acc_m.iter_mut().zip(wv) {
                *a = _mm512_fmadd_ps(xb, wv, *a);
            }
        }
    };
    for s in 0..k.div_ceil(2) {
        // Step s holds inputs 2s (low halves) and 2s + 1 (high halves) of the 64 columns.
        let wp = w.as_ptr().add(layout.step(s));
        let low = groups.map(|g| {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_loadu_si512(
                wp.add(g) as *const _
            )))
        });
        fma_rows(&mut acc, 2 * s, low);
        if 2 * s + 1 == k {
            break;
        }
        // Loaded again through a pointer the compiler cannot prove equal: keeping the first
        // loads alive would take 4 more registers than the 30 this needs (see avx2.rs).
        let wp = std::hint::black_box(wp);
        let high = groups.map(|g| {
            _mm512_castsi512_ps(_mm512_and_si512(
                _mm512_loadu_si512(wp.add(g) as *const _),
                high,
            ))
        });
        fma_rows(&mut acc, 2 * s + 1, high);
    }
    store_tile(&acc, out);
}

/// A panel of bf16 pairs and how it is laid out.
#[derive(Clone, Copy)]
pub struct Bf16Panel<'a> {
    pub w: &'a [u32],
    pub layout: PanelLayout,
}

/// bf16 tile: `out[m][c] = Σ_s Σ_p x₀·w₀ + x₁·w₁` over the pairs of step s of each of the
/// `parts` blocks of a row (block p starts `p·steps` pairs into the row).
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn tile_bf16(
    mr: usize,
    x: *const u32,
    stride: usize,
    parts: usize,
    steps: usize,
    w: Bf16Panel,
    out: &mut Tile,
) {
    for_rows!(mr, bf16_rows(x, stride, parts, steps, w, out))
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn f32_rows<const MR: usize>(
    x: *const f32,
    stride: usize,
    steps: usize,
    w: &[u32],
    out: &mut Tile,
) {
    debug_assert!(w.len() >= steps * PANEL);
    let mut acc = [[_mm512_setzero_ps(); 4]; MR];
    let mut wp = w.as_ptr() as *const f32;
    for s in 0..steps {
        let w0 = _mm512_loadu_ps(wp);
        let w1 = _mm512_loadu_ps(wp.add(16));
        let w2 = _mm512_loadu_ps(wp.add(32));
        let w3 = _mm512_loadu_ps(wp.add(48));
        for (m, acc_m) in acc.iter_mut().enumerate() {
            let xb = _mm512_set1_ps(*x.add(m * stride + s));
            acc_m[0] = _mm512_fmadd_ps(xb, w0, acc_m[0]);
            acc_m[1] = _mm512_fmadd_ps(xb, w1, acc_m[1]);
            acc_m[2] = _mm512_fmadd_ps(xb, w2, acc_m[2]);
            acc_m[3] = _mm512_fmadd_ps(xb, w3, acc_m[3]);
        }
        wp = wp.add(PANEL);
    }
    store_tile(&acc, out);
}

#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_rows<const MR: usize>(
    x: *const u32,
    stride: usize,
    parts: usize,
    steps: usize,
    w: Bf16Panel,
    out: &mut Tile,
) {
    let Bf16Panel { w, layout } = w;
    assert!(w.len() >= steps * PANEL);
    let mut acc = [[_mm512_setzero_ps(); 4]; MR];
    let groups: [usize; 4] = std::array::from_fn(|g| layout.group(g));
    for s in 0..steps {
        let wp = w.as_ptr().add(layout.step(s));
        let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp.add(groups[0]) as *const _));
        let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp.add(groups[1]) as *const _));
        let w2: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp.add(groups[2]) as *const _));
        let w3: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp.add(groups[3]) as *const _));
        for p in 0..parts {
            for (m, acc_m) in acc.iter_mut().enumerate() {
                let xb: __m512bh = std::mem::transmute(_mm512_set1_epi32(
                    *x.add(m * stride + p * steps + s) as i32,
                ));
                acc_m[0] = _mm512_dpbf16_ps(acc_m[0], xb, w0);
                acc_m[1] = _mm512_dpbf16_ps(acc_m[1], xb, w1);
                acc_m[2] = _mm512_dpbf16_ps(acc_m[2], xb, w2);
                acc_m[3] = _mm512_dpbf16_ps(acc_m[3], xb, w3);
            }
        }
    }
    store_tile(&acc, out);
}

/// int8 tile: `out[m][c] = (Σ_s x·w − 128·sums[c]) · row_scales[m] · col_scales[c]` over
/// the four byte products of each step, i.e. the signed activations' i32 sum, scaled. `x`: the
/// rows' quads of u8 (the int8 activation + 128) from the chunk's first step, `stride` apart.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn tile_int8(
    mr: usize,
    x: (&[u32], usize),
    row_scales: &[f32],
    ops: &Int8Panel,
    out: &mut Tile,
) {
    for_rows!(mr, int8_rows(x, row_scales, ops, out))
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn int8_rows<const MR: usize>(
    (x, stride): (&[u32], usize),
    row_scales: &[f32],
    ops: &Int8Panel,
    out: &mut Tile,
) {
    let &Int8Panel {
        steps: (first_step, steps),
        w,
        layout,
        sums,
        col_scales,
    } = ops;
    assert!(
        w.len() >= (first_step + steps) * PANEL && sums.len() >= PANEL && row_scales.len() >= MR
    );
    assert!(x.len() >= (MR - 1) * stride + steps);
    // −128·Σw: what the +128 of every unsigned activation adds to the sums.
    let minus_128 = _mm512_set1_epi32(-128);
    let start: [__m512i; 4] = std::array::from_fn(|v| {
        _mm512_mullo_epi32(
            _mm512_loadu_si512(sums.as_ptr().add(16 * v) as *const _),
            minus_128,
        )
    });
    let mut acc = [start; MR];
    let x = x.as_ptr();
    let groups: [usize; 4] = std::array::from_fn(|g| layout.group(g));
    for s in 0..steps {
        let wp = w.as_ptr().add(layout.step(first_step + s));
        let w0 = _mm512_loadu_si512(wp.add(groups[0]) as *const _);
        let w1 = _mm512_loadu_si512(wp.add(groups[1]) as *const _);
        let w2 = _mm512_loadu_si512(wp.add(groups[2]) as *const _);
        let w3 = _mm512_loadu_si512(wp.add(groups[3]) as *const _);
        for (m, acc_m) in acc.iter_mut().enumerate() {
            let xb = _mm512_set1_epi32(*x.add(m * stride + s) as i32);
            acc_m[0] = _mm512_dpbusd_epi32(acc_m[0], xb, w0);
            acc_m[1] = _mm512_dpbusd_epi32(acc_m[1], xb, w1);
            acc_m[2] = _mm512_dpbusd_epi32(acc_m[2], xb, w2);
            acc_m[3] = _mm512_dpbusd_epi32(acc_m[3], xb, w3);
        }
    }
    for (m, acc_m) in acc.iter().enumerate() {
        let row_scale = _mm512_set1_ps(row_scales[m]);
        for (v, a) in acc_m.iter().enumerate() {
            let col_scale = _mm512_loadu_ps(col_scales.as_ptr().add(16 * v));
            // (sum · row scale) · column scale: AMX's order (`Int8Scales::apply`).
            let scaled = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(*a), row_scale), col_scale);
            _mm512_storeu_ps(out[m].as_mut_ptr().add(16 * v), scaled);
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store_tile<const MR: usize>(acc: &[[__m512; 4]; MR], out: &mut Tile) {
    for (m, acc_m) in acc.iter().enumerate() {
        for (v, a) in acc_m.iter().enumerate() {
            _mm512_storeu_ps(out[m].as_mut_ptr().add(16 * v), *a);
        }
    }
}
