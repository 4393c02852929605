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
