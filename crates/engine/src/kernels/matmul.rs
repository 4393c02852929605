//! `y = x · Wᵀ` on row-major matrices, with the `gemm` crate (runtime-dispatched AVX-512/AVX2/
//! NEON micro-kernels, ~95% of the FMA peak on the reference machine).

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
    assert!(rows == 0 || x.len() >= (rows - 1) * x_stride + k, "x too short");
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
    let parallelism = if parallel && rows * n * k >= 1 << 16 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every index the strides describe inside the slices:
    // dst is rows × n with row stride n, lhs is rows × k with row stride x_stride, and rhs
    // (k × n) is w read column-wise, element (kk, j) at j·k + kk.
    unsafe {
        gemm::gemm(
            rows,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            read_dst,
            x.as_ptr(),
            1,
            x_stride as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `out[rows × n] = x[rows × k] · w[n × k]ᵀ` for a thin `w` (a handful of rows, as LoRA's
/// rank-4 down-projection): each output is one dot product of `k` values, in [`DOT_LANES`]
/// independent sums, with rows split across the rayon pool. A general GEMM is built for wide
/// outputs and spent more on packing than on these products, on one thread.
pub fn matmul_thin(x: &[f32], rows: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
    use rayon::prelude::*;
    assert!(x.len() >= rows * k && w.len() >= n * k && out.len() >= rows * n);
    if n == 0 {
        return;
    }
    let rows_per_task = (1 << 16) / k.max(1) + 1;
    out[..rows * n].par_chunks_mut(n * rows_per_task).enumerate().for_each(|(task, out)| {
        for (i, dst) in out.chunks_exact_mut(n).enumerate() {
            let row = &x[(task * rows_per_task + i) * k..][..k];
            for (d, w_row) in dst.iter_mut().zip(w.chunks_exact(k)) {
                *d = dot(row, w_row);
            }
        }
    });
}

/// Independent partial sums of [`dot`]: enough for the adds to vectorise and pipeline.
const DOT_LANES: usize = 16;

/// `Σ a·b`, compiled per instruction set.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        use super::softmax::{level, Level};
        #[target_feature(enable = "avx512f")]
        unsafe fn avx512(a: &[f32], b: &[f32]) -> f32 {
            dot_generic(a, b)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2(a: &[f32], b: &[f32]) -> f32 {
            dot_generic(a, b)
        }
        match level() {
            // SAFETY: `level` found the feature on this CPU.
            Level::Avx512 => return unsafe { avx512(a, b) },
            Level::Avx2 => return unsafe { avx2(a, b) },
            Level::Baseline => {}
        }
    }
    dot_generic(a, b)
}

#[inline(always)]
fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; DOT_LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(DOT_LANES), b.chunks_exact(DOT_LANES));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for ((l, x), y) in lanes.iter_mut().zip(ca).zip(cb) {
            *l += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}
