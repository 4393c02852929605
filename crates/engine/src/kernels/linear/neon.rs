//! aarch64 tile kernels: Advanced SIMD (every aarch64 CPU) for f32 products on bf16 weights,
//! `SDOT` (FEAT_DotProd: Graviton 2+, Apple M1+) and `SMMLA` (FEAT_I8MM) for int8, `BFMMLA`
//! (FEAT_BF16: Graviton 3+, Apple M2+) for bf16. All walk the 64-column panel eight columns
//! (two 128-bit registers) at a time for up to 6 rows: 12 accumulators, so with the operands
//! nothing spills out of the 32 registers.
//!
//! - f32: bf16 weights (the checkpoint's values) widened in registers: the low bf16 of a pair
//!   shifted up 16 bits (`SHL`), the high one masked (`AND`), which is exact; then one fused
//!   multiply-add per input in input order (`FMLA` by element, the activation pair loaded once
//!   per row and step), so the bits are the reference's.
//! - int8: `SDOT` adds four int8 products into each 32-bit lane, exactly; the i32 sums of a chunk
//!   are scaled as every int8 kernel scales them, so the bits are the reference's too. Stable
//!   Rust has no `SDOT` intrinsic yet, hence the one-instruction `asm!` in [`sdot`].

use std::arch::aarch64::*;
use std::arch::asm;

use super::{Int8Panel, PanelLayout, Tile, PANEL, TILE_STEPS};

/// Steps of a panel come in blocks of [`TILE_STEPS`] (16) whose steps are evenly spaced in either
/// layout: 64 values apart (linear) or 16 (tiled). The kernels walk a block with a pointer and an
/// add instead of the layout's arithmetic at every step (which cost as many instructions as the
/// products in the int8 loops).
fn step_spacing(layout: PanelLayout) -> usize {
    layout.step(1) - layout.step(0)
}

/// f32 tile on bf16 pairs: `out[m][c] = Σ_i x[m·stride + i] · w(i, c)` for `i < k`.
///
/// # Safety
/// NEON available (every aarch64 CPU); `x` holds `mr` rows of `k` values `stride` apart; `w`
/// one panel of bf16 pairs of at least `ceil(k / 2)` steps in `layout` (both checked).
#[target_feature(enable = "neon")]
pub unsafe fn tile_widened(
    mr: usize,
    x: &[f32],
    stride: usize,
    k: usize,
    w: (&[u32], PanelLayout),
    out: &mut Tile,
) {
    match mr {
        1 => widened_rows::<1>(x, stride, k, w, out),
        2 => widened_rows::<2>(x, stride, k, w, out),
        3 => widened_rows::<3>(x, stride, k, w, out),
        4 => widened_rows::<4>(x, stride, k, w, out),
        5 => widened_rows::<5>(x, stride, k, w, out),
        _ => widened_rows::<6>(x, stride, k, w, out),
    }
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn widened_rows<const MR: usize>(
    x: &[f32],
    stride: usize,
    k: usize,
    (w, layout): (&[u32], PanelLayout),
    out: &mut Tile,
) {
    let pairs = k.div_ceil(2);
    assert!(x.len() >= (MR - 1) * stride + k);
    assert!(pairs == 0 || w.len() > layout.at(pairs - 1, PANEL - 1));
    let (x, w) = (x.as_ptr(), w.as_ptr());
    let high = vdupq_n_u32(0xFFFF_0000);
    let spacing = step_spacing(layout);
    for g in 0..PANEL / 8 {
        // Columns 8g .. 8g + 8, contiguous within a step in either layout.
        let offset = layout.group(g / 2) + 8 * (g % 2);
        let mut acc = [[vdupq_n_f32(0.0); 2]; MR];
        // Step s holds inputs 2s (low halves) and 2s + 1 (high halves) of the 8 columns.
        for block in (0..k / 2).step_by(TILE_STEPS) {
            let mut wp = w.add(layout.step(block) + offset);
            for s in block..(block + TILE_STEPS).min(k / 2) {
                let raw = [vld1q_u32(wp), vld1q_u32(wp.add(4))];
                let lo = raw.map(|r| vreinterpretq_f32_u32(vshlq_n_u32::<16>(r)));
                let hi = raw.map(|r| vreinterpretq_f32_u32(vandq_u32(r, high)));
                for (m, acc_m) in acc.iter_mut().enumerate() {
                    // Inputs 2s and 2s + 1 of row m in one 64-bit load; FMLA by element takes
                    // each lane without a broadcast.
                    let xp = vld1_f32(x.add(m * stride + 2 * s));
                    acc_m[0] = vfmaq_lane_f32::<0>(acc_m[0], lo[0], xp);
                    acc_m[1] = vfmaq_lane_f32::<0>(acc_m[1], lo[1], xp);
                    acc_m[0] = vfmaq_lane_f32::<1>(acc_m[0], hi[0], xp);
                    acc_m[1] = vfmaq_lane_f32::<1>(acc_m[1], hi[1], xp);
                }
                wp = wp.add(spacing);
            }
        }
        if k % 2 == 1 {
            // The last input alone, in the low halves of the last step.
            let wp = w.add(layout.step(k / 2) + offset);
            let lo = [vld1q_u32(wp), vld1q_u32(wp.add(4))]
                .map(|r| vreinterpretq_f32_u32(vshlq_n_u32::<16>(r)));
            for (m, acc_m) in acc.iter_mut().enumerate() {
                let xb = vld1q_dup_f32(x.add(m * stride + k - 1));
                acc_m[0] = vfmaq_f32(acc_m[0], lo[0], xb);
                acc_m[1] = vfmaq_f32(acc_m[1], lo[1], xb);
            }
        }
        for (m, acc_m) in acc.iter().enumerate() {
            vst1q_f32(out[m].as_mut_ptr().add(8 * g), acc_m[0]);
            vst1q_f32(out[m].as_mut_ptr().add(8 * g + 4), acc_m[1]);
        }
    }
}

/// `acc += Σ_j w[4i + j] · x[4·LANE + j]` in each 32-bit lane `i` (`SDOT`, by element): four
/// exact int8 products of one column's quad and quad `LANE` of `x`.
///
/// # Safety
/// FEAT_DotProd available.
#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot<const LANE: usize>(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY (of the asm): one register-only instruction of the feature enabled above.
    asm!(
        "sdot {acc:v}.4s, {w:v}.16b, {x:v}.4b[{lane}]",
        acc = inout(vreg) acc,
        w = in(vreg) w,
        x = in(vreg) x,
        lane = const LANE,
        options(pure, nomem, nostack, preserves_flags),
    );
    acc
}

/// int8 tile with `SDOT`: `out[m][c] = (Σ_s Σ_j x·w) · row_scales[m] · col_scales[c]` over one
/// chunk; `x` holds the rows' signed quads (one `u32` a step) from the chunk's first step,
/// `stride` quads apart.
///
/// # Safety
/// FEAT_DotProd available; `x` holds `mr` rows of the chunk's steps; `ops.w` the panel to the
/// chunk's end (both checked).
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn tile_int8(
    mr: usize,
    x: (&[u32], usize),
    row_scales: &[f32],
    ops: &Int8Panel,
    out: &mut Tile,
) {
    match mr {
        1 => int8_rows::<1>(x, row_scales, ops, out),
        2 => int8_rows::<2>(x, row_scales, ops, out),
        3 => int8_rows::<3>(x, row_scales, ops, out),
        4 => int8_rows::<4>(x, row_scales, ops, out),
        5 => int8_rows::<5>(x, row_scales, ops, out),
        _ => int8_rows::<6>(x, row_scales, ops, out),
    }
}

#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn int8_rows<const MR: usize>(
    (x, stride): (&[u32], usize),
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
    // int8 steps come in whole AMX tile steps (16), and so do the chunks.
    assert!(
        first.is_multiple_of(TILE_STEPS) && steps.is_multiple_of(TILE_STEPS),
        "int8 chunk of {steps} steps from {first}"
    );
    assert!(x.len() >= (MR - 1) * stride + steps && row_scales.len() >= MR);
    assert!(steps == 0 || w.len() > layout.at(first + steps - 1, PANEL - 1));
    let (x, w) = (x.as_ptr(), w.as_ptr());
    let spacing = step_spacing(layout);
    for g in 0..PANEL / 8 {
        // Columns 8g .. 8g + 8: 32 bytes of quads a step, four columns to a register.
        let offset = layout.group(g / 2) + 8 * (g % 2);
        let mut acc = [[vdupq_n_s32(0); 2]; MR];
        for block in (0..steps).step_by(TILE_STEPS) {
            let mut wp = w.add(layout.step(first + block) + offset);
            for s in (block..block + TILE_STEPS).step_by(4) {
                // Steps s .. s + 4 of each row in one register: quad t is step s + t.
                let mut xs = [vdupq_n_s8(0); MR];
                for (m, xm) in xs.iter_mut().enumerate() {
                    *xm = vld1q_s8(x.add(m * stride + s) as *const i8);
                }
                let weights = |t: usize| {
                    let at = wp.add(t * spacing) as *const i8;
                    [vld1q_s8(at), vld1q_s8(at.add(16))]
                };
                let (w0, w1, w2, w3) = (weights(0), weights(1), weights(2), weights(3));
                wp = wp.add(4 * spacing);
                for (acc_m, &xm) in acc.iter_mut().zip(&xs) {
                    for (j, a) in acc_m.iter_mut().enumerate() {
                        *a = sdot::<0>(*a, w0[j], xm);
                        *a = sdot::<1>(*a, w1[j], xm);
                        *a = sdot::<2>(*a, w2[j], xm);
                        *a = sdot::<3>(*a, w3[j], xm);
                    }
                }
            }
        }
        let col_scale = [
            vld1q_f32(col_scales.as_ptr().add(8 * g)),
            vld1q_f32(col_scales.as_ptr().add(8 * g + 4)),
        ];
        for (m, acc_m) in acc.iter().enumerate() {
            let row_scale = vdupq_n_f32(row_scales[m]);
            for (j, (&a, &cs)) in acc_m.iter().zip(&col_scale).enumerate() {
                // (sum · row scale) · column scale: every int8 kernel's order.
                let scaled = vmulq_f32(vmulq_f32(vcvtq_f32_s32(a), row_scale), cs);
                vst1q_f32(out[m].as_mut_ptr().add(8 * g + 4 * j), scaled);
            }
        }
    }
}

/// `acc += x · wᵀ` on 2 × 8 int8 matrices (`SMMLA`): lane `2i + j` of `acc` gains row `i` of
/// `x` (8 bytes) dotted with row `j` of `w`, exactly in i32.
///
/// # Safety
/// FEAT_I8MM available.
#[inline]
#[target_feature(enable = "neon,i8mm")]
unsafe fn smmla(acc: int32x4_t, x: int8x16_t, w: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY (of the asm): one register-only instruction of the feature enabled above.
    asm!(
        "smmla {acc:v}.4s, {x:v}.16b, {w:v}.16b",
        acc = inout(vreg) acc,
        x = in(vreg) x,
        w = in(vreg) w,
        options(pure, nomem, nostack, preserves_flags),
    );
    acc
}

/// Most steps of one int8 chunk ([`super::INT8_CHUNK_STEPS`]).
const CHUNK_STEPS: usize = super::INT8_CHUNK_STEPS;

/// int8 tile with `SMMLA` (FEAT_I8MM): the result of [`tile_int8`], bit for bit, from 2 × 2
/// blocks of (rows × columns) over two steps (8 inputs) per instruction, twice the products of
/// an `SDOT`. The rows are interleaved in pairs once per call (`[a@s, a@s+1, b@s, b@s+1]` in a
/// register); the weights of two steps are zipped into column pairs in registers (`ZIP1/ZIP2`,
/// one per two column pairs, shared by the three row pairs).
///
/// # Safety
/// FEAT_I8MM available; `x` holds `mr` rows of the chunk's steps; `ops.w` the panel to the
/// chunk's end (both checked).
#[target_feature(enable = "neon,i8mm")]
pub unsafe fn tile_int8_mmla(
    mr: usize,
    x: (&[u32], usize),
    row_scales: &[f32],
    ops: &Int8Panel,
    out: &mut Tile,
) {
    match mr.div_ceil(2) {
        1 => mmla_rows::<1>(mr, x, row_scales, ops, out),
        2 => mmla_rows::<2>(mr, x, row_scales, ops, out),
        _ => mmla_rows::<3>(mr, x, row_scales, ops, out),
    }
}

/// [`tile_int8_mmla`] for `PAIRS` pairs of rows (`mr` rows: the last pair may lack one).
#[inline]
#[target_feature(enable = "neon,i8mm")]
unsafe fn mmla_rows<const PAIRS: usize>(
    mr: usize,
    (x, stride): (&[u32], usize),
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
    // int8 steps come in whole AMX tile steps (16), and so do the chunks.
    assert!(
        first.is_multiple_of(TILE_STEPS)
            && steps.is_multiple_of(TILE_STEPS)
            && steps <= CHUNK_STEPS,
        "int8 chunk of {steps} steps from {first}"
    );
    assert!(mr.div_ceil(2) == PAIRS && mr <= 6 && row_scales.len() >= mr);
    assert!(x.len() >= (mr - 1) * stride + steps);
    assert!(steps == 0 || w.len() > layout.at(first + steps - 1, PANEL - 1));
    // Row pair p, step pair t: quads [row 2p @ 2t, row 2p @ 2t+1, row 2p+1 @ 2t, row 2p+1 @ 2t+1];
    // a missing odd row is zeros.
    let mut xp = [[0u32; 2 * CHUNK_STEPS]; 3];
    for (p, dst) in xp.iter_mut().enumerate().take(PAIRS) {
        for i in 0..2 {
            let row = 2 * p + i;
            if row >= mr {
                break;
            }
            let src = &x[row * stride..][..steps];
            for (t, quads) in src.chunks_exact(2).enumerate() {
                dst[4 * t + 2 * i..][..2].copy_from_slice(quads);
            }
        }
    }
    let w = w.as_ptr();
    let spacing = step_spacing(layout);
    for g in 0..PANEL / 8 {
        let offset = layout.group(g / 2) + 8 * (g % 2);
        // acc[p][q]: rows 2p, 2p+1 × columns 8g + 2q, 8g + 2q + 1.
        // Three pairs always, of which the first PAIRS are used: the explicit steps below keep
        // every accumulator in a register (a loop over the pairs kept them in memory).
        let mut acc = [[vdupq_n_s32(0); 4]; 3];
        for block in (0..steps).step_by(TILE_STEPS) {
            let mut wp = w.add(layout.step(first + block) + offset);
            for t in block / 2..(block + TILE_STEPS) / 2 {
                let even = [vld1q_u32(wp), vld1q_u32(wp.add(4))];
                let odd = [vld1q_u32(wp.add(spacing)), vld1q_u32(wp.add(spacing + 4))];
                wp = wp.add(2 * spacing);
                // Column pair (c, c+1) over both steps: [c@2t, c@2t+1, c+1@2t, c+1@2t+1].
                let cols = [
                    vzip1q_u32(even[0], odd[0]),
                    vzip2q_u32(even[0], odd[0]),
                    vzip1q_u32(even[1], odd[1]),
                    vzip2q_u32(even[1], odd[1]),
                ]
                .map(|c| vreinterpretq_s8_u32(c));
                let pair = |acc_p: &mut [int32x4_t; 4], xp_p: &[u32; 2 * CHUNK_STEPS]| {
                    let xv = vld1q_s8(xp_p.as_ptr().add(4 * t) as *const i8);
                    acc_p[0] = smmla(acc_p[0], xv, cols[0]);
                    acc_p[1] = smmla(acc_p[1], xv, cols[1]);
                    acc_p[2] = smmla(acc_p[2], xv, cols[2]);
                    acc_p[3] = smmla(acc_p[3], xv, cols[3]);
                };
                let [acc0, acc1, acc2] = &mut acc;
                pair(acc0, &xp[0]);
                if PAIRS > 1 {
                    pair(acc1, &xp[1]);
                }
                if PAIRS > 2 {
                    pair(acc2, &xp[2]);
                }
            }
        }
        let col_scale = [
            vld1q_f32(col_scales.as_ptr().add(8 * g)),
            vld1q_f32(col_scales.as_ptr().add(8 * g + 4)),
        ];
        for (p, acc_p) in acc.iter().enumerate().take(PAIRS) {
            // Row 2p's columns 8g..8g+4 are the low halves of acc_p[0] and acc_p[1], row 2p+1's
            // the high halves; the same for 8g+4..8g+8 in acc_p[2], acc_p[3].
            let as64 = |v: int32x4_t| vreinterpretq_s64_s32(v);
            let rows = [
                [
                    vzip1q_s64(as64(acc_p[0]), as64(acc_p[1])),
                    vzip1q_s64(as64(acc_p[2]), as64(acc_p[3])),
                ],
                [
                    vzip2q_s64(as64(acc_p[0]), as64(acc_p[1])),
                    vzip2q_s64(as64(acc_p[2]), as64(acc_p[3])),
                ],
            ];
            for (i, sums) in rows.iter().enumerate() {
                let m = 2 * p + i;
                if m >= mr {
                    break;
                }
                let row_scale = vdupq_n_f32(row_scales[m]);
                for (j, (&s, &cs)) in sums.iter().zip(&col_scale).enumerate() {
                    // (sum · row scale) · column scale: every int8 kernel's order.
                    let sum = vcvtq_f32_s32(vreinterpretq_s32_s64(s));
                    let scaled = vmulq_f32(vmulq_f32(sum, row_scale), cs);
                    vst1q_f32(out[m].as_mut_ptr().add(8 * g + 4 * j), scaled);
                }
            }
        }
    }
}

/// `acc += x · wᵀ` on 2 × 4 bf16 matrices (`BFMMLA`): lane `2i + j` of `acc` gains row `i` of
/// `x` (four bf16) dotted with row `j` of `w`, summed in f32 (the products are exact; the
/// sums rounded as the CPU's FPCR.EBF says: round-to-odd without FEAT_EBF16).
///
/// # Safety
/// FEAT_BF16 available.
#[inline]
#[target_feature(enable = "neon,bf16")]
unsafe fn bfmmla(acc: float32x4_t, x: uint32x4_t, w: uint32x4_t) -> float32x4_t {
    let mut acc = acc;
    // SAFETY (of the asm): one register-only instruction of the feature enabled above.
    asm!(
        "bfmmla {acc:v}.4s, {x:v}.8h, {w:v}.8h",
        acc = inout(vreg) acc,
        x = in(vreg) x,
        w = in(vreg) w,
        options(pure, nomem, nostack, preserves_flags),
    );
    acc
}

/// bf16 tile with `BFMMLA` (FEAT_BF16): `out[m][c] = Σ_i x(m, i) · w(i, c)` on bf16 activations
/// and weights, from 2 × 2 blocks of (rows × columns) over two steps (4 inputs) per
/// instruction: 16 products where `FMLA` makes 4. `x` holds the rows interleaved in pairs
/// ([`super::activations::interleave_row_pairs`]) from this tile's first pair, `steps` steps
/// a row; the weights of two steps are zipped into column pairs in registers, as for
/// [`tile_int8_mmla`]. Its sums are in another order than the reference's and rounded by the
/// instruction, so it is held to the reference within f32 rounding of the sums.
///
/// # Safety
/// FEAT_BF16 available; `x` holds `mr.div_ceil(2)` row pairs of `steps` steps; `w` one panel
/// of `steps` steps in `layout` (both checked).
#[target_feature(enable = "neon,bf16")]
pub unsafe fn tile_bf16_mmla(
    mr: usize,
    x: &[u32],
    steps: usize,
    w: (&[u32], PanelLayout),
    out: &mut Tile,
) {
    match mr.div_ceil(2) {
        1 => bf16_mmla_rows::<1>(mr, x, steps, w, out),
        2 => bf16_mmla_rows::<2>(mr, x, steps, w, out),
        _ => bf16_mmla_rows::<3>(mr, x, steps, w, out),
    }
}

/// [`tile_bf16_mmla`] for `PAIRS` pairs of rows (`mr` rows: the last pair may lack one).
#[inline]
#[target_feature(enable = "neon,bf16")]
unsafe fn bf16_mmla_rows<const PAIRS: usize>(
    mr: usize,
    x: &[u32],
    steps: usize,
    (w, layout): (&[u32], PanelLayout),
    out: &mut Tile,
) {
    // bf16 steps come in whole AMX tile steps (16): no odd step pair at the end.
    assert!(
        steps.is_multiple_of(TILE_STEPS),
        "bf16 panel of {steps} steps"
    );
    assert!(mr.div_ceil(2) == PAIRS && mr <= 6);
    assert!(x.len() >= PAIRS * 2 * steps);
    assert!(steps == 0 || w.len() > layout.at(steps - 1, PANEL - 1));
    let (x, w) = (x.as_ptr(), w.as_ptr());
    let spacing = step_spacing(layout);
    for g in 0..PANEL / 8 {
        let offset = layout.group(g / 2) + 8 * (g % 2);
        // acc[p][q]: rows 2p, 2p+1 × columns 8g + 2q, 8g + 2q + 1; three pairs always, of
        // which the first PAIRS are used (see `mmla_rows`).
        let mut acc = [[vdupq_n_f32(0.0); 4]; 3];
        for block in (0..steps).step_by(TILE_STEPS) {
            let mut wp = w.add(layout.step(block) + offset);
            for t in block / 2..(block + TILE_STEPS) / 2 {
                let even = [vld1q_u32(wp), vld1q_u32(wp.add(4))];
                let odd = [vld1q_u32(wp.add(spacing)), vld1q_u32(wp.add(spacing + 4))];
                wp = wp.add(2 * spacing);
                // Column pair (c, c+1) over both steps: inputs 4t .. 4t + 4 of c, then of c+1.
                let cols = [
                    vzip1q_u32(even[0], odd[0]),
                    vzip2q_u32(even[0], odd[0]),
                    vzip1q_u32(even[1], odd[1]),
                    vzip2q_u32(even[1], odd[1]),
                ];
                let pair = |acc_p: &mut [float32x4_t; 4], p: usize| {
                    let xv = vld1q_u32(x.add(p * 2 * steps + 4 * t));
                    acc_p[0] = bfmmla(acc_p[0], xv, cols[0]);
                    acc_p[1] = bfmmla(acc_p[1], xv, cols[1]);
                    acc_p[2] = bfmmla(acc_p[2], xv, cols[2]);
                    acc_p[3] = bfmmla(acc_p[3], xv, cols[3]);
                };
                let [acc0, acc1, acc2] = &mut acc;
                pair(acc0, 0);
                if PAIRS > 1 {
                    pair(acc1, 1);
                }
                if PAIRS > 2 {
                    pair(acc2, 2);
                }
            }
        }
        for (p, acc_p) in acc.iter().enumerate().take(PAIRS) {
            // Row 2p's columns 8g..8g+4 are the low halves of acc_p[0] and acc_p[1], row
            // 2p+1's the high halves; the same for 8g+4..8g+8 in acc_p[2], acc_p[3].
            let as64 = |v: float32x4_t| vreinterpretq_u64_f32(v);
            let rows = [
                [
                    vzip1q_u64(as64(acc_p[0]), as64(acc_p[1])),
                    vzip1q_u64(as64(acc_p[2]), as64(acc_p[3])),
                ],
                [
                    vzip2q_u64(as64(acc_p[0]), as64(acc_p[1])),
                    vzip2q_u64(as64(acc_p[2]), as64(acc_p[3])),
                ],
            ];
            for (i, sums) in rows.iter().enumerate() {
                let m = 2 * p + i;
                if m >= mr {
                    break;
                }
                for (j, &s) in sums.iter().enumerate() {
                    let at = out[m].as_mut_ptr().add(8 * g + 4 * j);
                    vst1q_f32(at, vreinterpretq_f32_u64(s));
                }
            }
        }
    }
}
