//! What every product kernel does with a finished block of sums: the initial value (bias or
//! what the output holds), LoRA's low-rank term and the exact GELU, applied while the block is
//! in L1, then one store per output row.

use crate::kernels::cpu::Cpu;
use crate::kernels::elementwise;
use crate::kernels::matmul::MatmulInit;

/// A low-rank term added to a product's rows: `out[r] += low[r] · upᵀ` with the up-projection
/// of row r's adapter (LoRA's `s·(x·Aᵀ)·Bᵀ`, with `low = s·x·Aᵀ` computed beforehand).
#[derive(Clone, Copy)]
pub struct LowRank<'a> {
    /// `rows × rank`.
    pub low: &'a [f32],
    /// Columns of `low`.
    pub rank: usize,
    /// For each row, its adapter's up-projection transposed, `[rank × n]`, or `None`.
    pub up: &'a [Option<&'a [f32]>],
}

/// What is applied to each output block once its sums are complete, while it is still in cache
/// (instead of another pass over the whole output): a low-rank term, then the exact GELU.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Added first.
    pub low_rank: Option<LowRank<'a>>,
    /// Exact GELU of the finished value ([`elementwise::gelu_erf_in_place`]).
    pub gelu: bool,
}

impl Epilogue<'_> {
    pub(super) fn is_empty(&self) -> bool {
        self.low_rank.is_none() && !self.gelu
    }

    /// Adds the low-rank term to `sums`, columns `first_col..` of output row `row`.
    #[inline(always)]
    fn add_low_rank(&self, row: usize, sums: &mut [f32], first_col: usize) {
        if let Some(LowRank { low, rank, up }) = self.low_rank {
            if let Some(up) = up[row] {
                let n = up.len() / rank;
                for (j, &l) in low[row * rank..(row + 1) * rank].iter().enumerate() {
                    let up_j = &up[j * n + first_col..][..sums.len()];
                    for (s, u) in sums.iter_mut().zip(up_j) {
                        *s += l * u;
                    }
                }
            }
        }
    }
}

/// Writes a finished block of sums to `out`: `live` rows of `cols` columns from `first_col`,
/// starting at output row `r0`; row `i` of the block is `sums[i * stride..][..cols]`.
///
/// With an epilogue, `init`, the low-rank term and GELU are all applied in `sums` (contiguous,
/// in L1) and each row of `out` is written once: rows of `out` a multiple of 4 KiB apart share
/// their L1 sets, so repeated passes over them missed, and a GELU call per row of 32 or 64
/// values spent as much on its set-up as on the values.
///
/// # Safety
/// Rows `r0..r0 + live`, columns `first_col..first_col + cols` lie inside `out` (row stride
/// `out_stride`) and no other task touches them.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn finish_block(
    sums: &mut [f32],
    stride: usize,
    live: usize,
    cols: usize,
    (out, out_stride): (SharedOut, usize),
    (r0, first_col): (usize, usize),
    init: MatmulInit,
    epilogue: &Epilogue,
    cpu: Cpu,
) {
    // SAFETY: the caller's contract.
    let dst = |i: usize| unsafe {
        std::slice::from_raw_parts_mut(out.get().add((r0 + i) * out_stride + first_col), cols)
    };
    if epilogue.is_empty() {
        for i in 0..live {
            store(dst(i), &sums[i * stride..][..cols], init, first_col);
        }
        return;
    }
    for i in 0..live {
        let row = &mut sums[i * stride..][..cols];
        // The same additions, in the same order, as `store` then the epilogue on `out`.
        match init {
            MatmulInit::Zero => {}
            MatmulInit::Bias(bias) => row
                .iter_mut()
                .zip(&bias[first_col..])
                .for_each(|(s, b)| *s += b),
            MatmulInit::Accumulate => row.iter_mut().zip(dst(i).iter()).for_each(|(s, d)| *s += d),
        }
        epilogue.add_low_rank(r0 + i, row, first_col);
    }
    if epilogue.gelu {
        // Whole rows of the block, columns past `cols` included: they hold finite sums and are
        // not stored, and one call over the block amortises the function's set-up.
        elementwise::gelu_slice(&mut sums[..live * stride], cpu);
    }
    for i in 0..live {
        copy_row(dst(i), &sums[i * stride..][..cols]);
    }
}

/// `dst.copy_from_slice(src)`, inlined for whole blocks (a call to `memcpy` for 128 bytes cost
/// more than the copy).
#[inline(always)]
pub(super) fn copy_row(dst: &mut [f32], src: &[f32]) {
    match dst.len() {
        32 => dst[..32].copy_from_slice(&src[..32]),
        64 => dst[..64].copy_from_slice(&src[..64]),
        _ => dst.copy_from_slice(src),
    }
}

/// `dst = init + sums`.
#[inline(always)]
pub(super) fn store(dst: &mut [f32], sums: &[f32], init: MatmulInit, first_col: usize) {
    match init {
        MatmulInit::Zero => dst.copy_from_slice(sums),
        MatmulInit::Bias(bias) => {
            for ((d, s), b) in dst.iter_mut().zip(sums).zip(&bias[first_col..]) {
                *d = s + b;
            }
        }
        MatmulInit::Accumulate => {
            for (d, s) in dst.iter_mut().zip(sums) {
                *d += s;
            }
        }
    }
}

/// The output of a product, shared by the tasks that write its disjoint blocks.
#[derive(Clone, Copy)]
pub(super) struct SharedOut(*mut f32);
// SAFETY: panel tasks write disjoint column ranges (see `finish_block`).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}
impl SharedOut {
    pub(super) fn new(out: &mut [f32]) -> Self {
        SharedOut(out.as_mut_ptr())
    }

    pub(super) fn get(self) -> *mut f32 {
        self.0
    }
}
