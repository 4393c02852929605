//! The reference products: plain loops over the packed weights, for every storage and any CPU.
//!
//! Each output is summed input after input with one fused multiply-add per input, the order of
//! the AVX-512 f32 and the AVX2 kernels, so those give these bits exactly; int8 sums the same
//! integers as every int8 kernel and scales them in the same order. The tests hold every other
//! kernel to these.

use super::{Int8Panel, PackedMatrix, PackedType, PanelLayout, Tile, PANEL};

/// The stored weight of input `i`, column `c` of a panel, as f32 (bf16 widened: exact).
#[inline(always)]
fn weight(ty: PackedType, (wp, layout): (&[u32], PanelLayout), i: usize, c: usize) -> f32 {
    match ty {
        PackedType::F32 => f32::from_bits(wp[layout.at(i, c)]),
        PackedType::Bf16 | PackedType::Bf16x3 => {
            let pair = wp[layout.at(i / 2, c)];
            f32::from_bits(if i.is_multiple_of(2) {
                pair << 16
            } else {
                pair & 0xFFFF_0000
            })
        }
        PackedType::Int8 => unreachable!("int8 weights take tile_int8"),
    }
}

/// The sums of `mr` rows of `x` (`stride` apart, `w.k` values each) times the panel `wp`.
pub(super) fn tile(
    mr: usize,
    x: &[f32],
    stride: usize,
    w: &PackedMatrix,
    panel: (&[u32], PanelLayout),
    out: &mut Tile,
) {
    for (m, out_row) in out.iter_mut().enumerate().take(mr) {
        let row = &x[m * stride..][..w.k];
        for (c, sum) in out_row.iter_mut().enumerate() {
            *sum = row.iter().enumerate().fold(0f32, |acc, (i, &v)| {
                v.mul_add(weight(w.ty, panel, i, c), acc)
            });
        }
    }
}

/// The int8 sums of `mr` rows of signed quads (`stride` apart, from the chunk's first step)
/// times one chunk of a panel, in i32, then `sum · row scale · column scale`.
pub(super) fn tile_int8(
    mr: usize,
    (x, stride): (&[u32], usize),
    row_scales: &[f32],
    ops: &Int8Panel,
    out: &mut Tile,
) {
    let (first, steps) = ops.steps;
    for (m, out_row) in out.iter_mut().enumerate().take(mr) {
        for (c, value) in out_row.iter_mut().enumerate().take(PANEL) {
            let mut sum = 0i32;
            for s in 0..steps {
                let (xq, wq) = (
                    x[m * stride + s].to_le_bytes(),
                    ops.w[ops.layout.at(first + s, c)].to_le_bytes(),
                );
                sum += xq
                    .iter()
                    .zip(wq)
                    .map(|(&a, b)| a as i8 as i32 * b as i8 as i32)
                    .sum::<i32>();
            }
            *value = sum as f32 * row_scales[m] * ops.col_scales[c];
        }
    }
}
