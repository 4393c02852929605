//! Apple's Accelerate framework on macOS: the f32 GEMM of the `Gemm` kernels through
//! `cblas_sgemm`, which Apple runs on the M-series matrix unit (others measured it at 4–5× the
//! `gemm` crate's NEON micro-kernels on M1/M2). Accelerate ships with macOS: nothing is
//! downloaded or built, the framework is only linked.
//!
//! This shim is not built or run by this project's CI (no Apple machine, no Apple linker); its
//! Rust side is type-checked with `cargo check --target aarch64-apple-darwin -p jina-engine`.
//! Everything else on a Mac is the aarch64 Linux code: NEON, SDOT and SMMLA kernels, tested
//! under qemu. See `docs/decisions.md` (macOS).

use super::matmul::Rhs;

// CBLAS's enumerations (cblas.h): CblasRowMajor, CblasNoTrans, CblasTrans.
const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

#[link(name = "Accelerate", kind = "framework")]
extern "C" {
    // void cblas_sgemm(CBLAS_ORDER, CBLAS_TRANSPOSE, CBLAS_TRANSPOSE, int M, int N, int K,
    //                  float alpha, const float *A, int lda, const float *B, int ldb,
    //                  float beta, float *C, int ldc);
    fn cblas_sgemm(
        order: i32,
        trans_a: i32,
        trans_b: i32,
        m: i32,
        n: i32,
        k: i32,
        alpha: f32,
        a: *const f32,
        lda: i32,
        b: *const f32,
        ldb: i32,
        beta: f32,
        c: *mut f32,
        ldc: i32,
    );
}

/// `C = (C if accumulate) + A · B` as [`super::matmul::gemm_f32`] states it.
///
/// # Safety
/// As [`super::matmul::gemm_f32`].
pub(super) unsafe fn sgemm(
    (m, n, k): (usize, usize, usize),
    (a, lda): (*const f32, usize),
    (b, ldb, rhs): (*const f32, usize, Rhs),
    (c, ldc): (*mut f32, usize),
    accumulate: bool,
) {
    // The model's dimensions are far below i32::MAX; a product that is not is a bug upstream.
    let int = |v: usize| i32::try_from(v).expect("a GEMM dimension over i32::MAX");
    let trans_b = match rhs {
        Rhs::Rows => NO_TRANS,
        Rhs::Transposed => TRANS,
    };
    // BLAS requires lda ≥ max(1, K) and so on even when a dimension is 0.
    let (lda, ldb, ldc) = (lda.max(1), ldb.max(1), ldc.max(1));
    let beta = if accumulate { 1.0 } else { 0.0 };
    cblas_sgemm(
        ROW_MAJOR,
        NO_TRANS,
        trans_b,
        int(m),
        int(n),
        int(k),
        1.0,
        a,
        int(lda),
        b,
        int(ldb),
        beta,
        c,
        int(ldc),
    );
}
