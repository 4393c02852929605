//! The dense products of the backward pass, over the engine's one f32 GEMM
//! ([`crate::kernels::matmul`]): `x·Wᵀ` as the forward has it, and `x·W` for the gradients
//! flowing back through a weight stored `[out, in]`, with no transposed copy of the weight.

use crate::kernels::matmul::{gemm_f32, Rhs};
use crate::kernels::{self, MatmulInit};

/// Products at least this large (`m·n·k`) use the rayon pool; smaller ones are not worth it.
const PARALLEL_WORK: usize = 1 << 16;

/// `out[m × n] (+)= a[m × k] · b[k × n]`, all row-major and contiguous.
pub(crate) fn matmul_nn(
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    assert!(a.len() >= m * k && b.len() >= k * n && out.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            out[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: the assert keeps every element the shapes describe inside the slices (row strides
    // k, n and n), and `out` is a `&mut` borrow, so it overlaps neither input.
    unsafe {
        gemm_f32(
            (m, n, k),
            (a.as_ptr(), k),
            (b.as_ptr(), n, Rhs::Rows),
            (out.as_mut_ptr(), n),
            accumulate,
            parallel && m * n * k >= PARALLEL_WORK,
        )
    }
}

/// `out[m × n] (+)= a[m × k] · b[n × k]ᵀ`, all row-major and contiguous.
pub(crate) fn matmul_nt(
    a: &[f32],
    b: &[f32],
    out: &mut [f32],
    (m, k, n): (usize, usize, usize),
    accumulate: bool,
    parallel: bool,
) {
    let init = if accumulate {
        MatmulInit::Accumulate
    } else {
        MatmulInit::Zero
    };
    kernels::matmul_transposed(a, k, m, k, b, n, out, init, parallel);
}

/// `[rows × cols]` transposed to `[cols × rows]`.
pub(crate) fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_match_plain_loops() {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.71).cos()).collect();
        let mut nn = vec![1.0; m * n];
        matmul_nn(&a, &b, &mut nn, (m, k, n), true, false);
        let mut nt = vec![0.0; m * n];
        matmul_nt(&a, &transpose(&b, k, n), &mut nt, (m, k, n), false, false);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|kk| a[i * k + kk] * b[kk * n + j]).sum();
                assert!((nn[i * n + j] - 1.0 - want).abs() < 1e-5);
                assert!((nt[i * n + j] - want).abs() < 1e-5);
            }
        }
    }
}
