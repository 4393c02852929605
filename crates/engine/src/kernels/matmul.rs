//! `y = x · Wᵀ` on row-major matrices, with the `gemm` crate (runtime-dispatched AVX-512/AVX2/
//! NEON micro-kernels, ~95% of the FMA peak on the reference machine), or on macOS with Apple's
//! Accelerate ([`gemm_f32`] is the one place that chooses); and LoRA's thin products.

use super::cpu::{vectorized, Cpu};

/// What the output holds before the product is added.
#[derive(Clone, Copy)]
pub enum MatmulInit<'a> {
    /// Overwrite the output.
    Zero,
    /// Start every row from this bias (length = output width).
    Bias(&'a [f32]),
    /// Add the product to what the output already holds.
    Accumulate,
}

/// `out[rows × n] (init) + x[rows × k] · w[n × k]ᵀ`, all row-major; `x` rows are `x_stride` apart.
///
/// `parallel` lets the product use the rayon pool; kernels that already run inside a parallel
/// loop pass `false`.
#[allow(clippy::too_many_arguments)]
pub fn matmul_transposed(
    x: &[f32],
    x_stride: usize,
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    out: &mut [f32],
    init: MatmulInit,
    parallel: bool,
) {
    assert!(
        rows == 0 || x.len() >= (rows - 1) * x_stride + k,
        "x too short"
    );
    assert!(w.len() >= n * k, "w too short");
    assert!(out.len() >= rows * n, "out too short");
    if rows == 0 || n == 0 {
        return;
    }
    let read_dst = match init {
        MatmulInit::Zero => false,
        MatmulInit::Bias(bias) => {
            assert_eq!(bias.len(), n);
            for row in out[..rows * n].chunks_exact_mut(n) {
                row.copy_from_slice(bias);
            }
            true
        }
        MatmulInit::Accumulate => true,
    };
    if k == 0 {
        if !read_dst {
            out[..rows * n].fill(0.0);
        }
        return;
    }
    // SAFETY: the asserts above keep every index the strides describe inside the slices:
    // out is rows × n with row stride n, x is rows × k with row stride x_stride, and w holds n
    // rows of k.
    unsafe {
        gemm_f32(
            (rows, n, k),
            (x.as_ptr(), x_stride),
            (w.as_ptr(), k, Rhs::Transposed),
            (out.as_mut_ptr(), n),
            read_dst,
            parallel && rows * n * k >= 1 << 16,
        )
    }
}

/// How [`gemm_f32`] reads its right-hand matrix `B` (`k × n`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rhs {
    /// `B` as stored: `k` rows of `n`, `ld` apart.
    Rows,
    /// `Bᵀ` stored: `n` rows of `k`, `ld` apart (weights, keys).
    Transposed,
}

/// The one f32 GEMM under the `Gemm` kernels: `C[m × n] = (C if accumulate) + A[m × k] · B`, all
/// row-major with unit column stride, each operand `(pointer, row stride)`. The `gemm` crate,
/// or on macOS Apple's Accelerate (`cblas_sgemm`, which threads itself and ignores `parallel`).
///
/// # Safety
/// Every element the dimensions and row strides describe lies inside its allocation, and `C`
/// overlaps neither `A` nor `B`.
pub(crate) unsafe fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    (a, lda): (*const f32, usize),
    (b, ldb, rhs): (*const f32, usize, Rhs),
    (c, ldc): (*mut f32, usize),
    accumulate: bool,
    parallel: bool,
) {
    #[cfg(target_os = "macos")]
    {
        let _ = parallel;
        super::accelerate::sgemm((m, n, k), (a, lda), (b, ldb, rhs), (c, ldc), accumulate);
    }
    #[cfg(not(target_os = "macos"))]
    {
        // gemm's rhs strides: element (kk, j) of B at kk·rhs_rs + j·rhs_cs.
        let (rhs_cs, rhs_rs) = match rhs {
            Rhs::Rows => (1, ldb as isize),
            Rhs::Transposed => (ldb as isize, 1),
        };
        let parallelism = if parallel {
            gemm::Parallelism::Rayon(0)
        } else {
            gemm::Parallelism::None
        };
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            ldc as isize,
            accumulate,
            a,
            1,
            lda as isize,
            b,
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// What [`gemm_f32`] runs on, for the kernel plan's descriptions.
pub const F32_GEMM: &str = if cfg!(target_os = "macos") {
    "Accelerate cblas_sgemm"
} else {
    "gemm crate"
};

/// `out[rows × n] = x[rows × k] · w[n × k]ᵀ` for a thin `w` (a handful of rows, as LoRA's
/// rank-4 down-projection): each output is one dot product of `k` values, in [`DOT_LANES`]
/// independent sums, with rows split across the rayon pool. A general GEMM is built for wide
/// outputs and spent more on packing than on these products, on one thread.
pub fn matmul_thin(
    x: &[f32],
    rows: usize,
    k: usize,
    w: &[f32],
    n: usize,
    out: &mut [f32],
    cpu: Cpu,
) {
    use rayon::prelude::*;
    assert!(x.len() >= rows * k && w.len() >= n * k && out.len() >= rows * n);
    if n == 0 {
        return;
    }
    let rows_per_task = (1 << 16) / k.max(1) + 1;
    out[..rows * n]
        .par_chunks_mut(n * rows_per_task)
        .enumerate()
        .for_each(|(task, out)| {
            for (i, dst) in out.chunks_exact_mut(n).enumerate() {
                let row = &x[(task * rows_per_task + i) * k..][..k];
                // Four outputs per pass over the row: four independent chains of additions where
                // one alone waited on its own latency (LoRA's rank is 4).
                let mut quads = dst.chunks_exact_mut(4);
                let mut w_quads = w.chunks_exact(4 * k);
                for (d, w4) in (&mut quads).zip(&mut w_quads) {
                    d.copy_from_slice(&dot4(row, w4, cpu));
                }
                for (d, w_row) in quads
                    .into_remainder()
                    .iter_mut()
                    .zip(w_quads.remainder().chunks_exact(k))
                {
                    *d = dot(row, w_row, cpu);
                }
            }
        });
}

/// Independent partial sums of [`dot`]: enough for the adds to vectorise and pipeline.
const DOT_LANES: usize = 16;

/// `Σ a·b`, compiled per instruction set.
fn dot(a: &[f32], b: &[f32], cpu: Cpu) -> f32 {
    vectorized!(cpu, fn(a: &[f32], b: &[f32]) -> f32 { dot_generic(a, b) })
}

/// The dot products of `a` with the four rows of `b` (`4 × a.len()`), each summed exactly as
/// [`dot`] sums it; compiled per instruction set.
fn dot4(a: &[f32], b: &[f32], cpu: Cpu) -> [f32; 4] {
    vectorized!(cpu, fn(a: &[f32], b: &[f32]) -> [f32; 4] { dot4_generic(a, b) })
}

#[inline(always)]
fn dot4_generic(a: &[f32], b: &[f32]) -> [f32; 4] {
    let k = a.len();
    let (a_chunks, a_tail) = a.as_chunks::<DOT_LANES>();
    let [r0, r1, r2, r3] = [&b[..k], &b[k..2 * k], &b[2 * k..3 * k], &b[3 * k..4 * k]]
        .map(|row| row.as_chunks::<DOT_LANES>());
    // Four named accumulators (an array of them indexed by row stayed scalar, on the stack).
    let (mut l0, mut l1, mut l2, mut l3) = (
        [0f32; DOT_LANES],
        [0f32; DOT_LANES],
        [0f32; DOT_LANES],
        [0f32; DOT_LANES],
    );
    for (c, x) in a_chunks.iter().enumerate() {
        let (y0, y1, y2, y3) = (&r0.0[c], &r1.0[c], &r2.0[c], &r3.0[c]);
        for i in 0..DOT_LANES {
            l0[i] += x[i] * y0[i];
            l1[i] += x[i] * y1[i];
            l2[i] += x[i] * y2[i];
            l3[i] += x[i] * y3[i];
        }
    }
    let finish = |lanes: [f32; DOT_LANES], row_tail: &[f32]| {
        let tail: f32 = a_tail.iter().zip(row_tail).map(|(x, y)| x * y).sum();
        lanes.iter().sum::<f32>() + tail
    };
    [
        finish(l0, r0.1),
        finish(l1, r1.1),
        finish(l2, r2.1),
        finish(l3, r3.1),
    ]
}

#[inline(always)]
fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; DOT_LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(DOT_LANES), b.chunks_exact(DOT_LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for ((l, x), y) in lanes.iter_mut().zip(ca).zip(cb) {
            *l += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_dot_products_at_once_give_the_same_bits_as_one_by_one() {
        for k in [1, 15, 16, 17, 1024, 1027] {
            let a: Vec<f32> = (0..k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..4 * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 11.0)
                .collect();
            let one_by_one: Vec<u32> = b
                .chunks_exact(k)
                .map(|row| dot(&a, row, Cpu::detected()).to_bits())
                .collect();
            assert_eq!(
                dot4(&a, &b, Cpu::detected()).map(f32::to_bits).to_vec(),
                one_by_one,
                "k = {k}"
            );
        }
    }
}
