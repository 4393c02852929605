//! `y = x · Wᵀ` with weights packed once into panels ([`PackedMatrix`]), one kernel per
//! instruction set, each in its own file:
//! - [`reference`]: plain loops, any CPU, every storage: the truth the others are tested against;
//! - `avx2`: FMA on bf16 weights widened in registers (exact f32), int8 with `VPMADDWD`;
//! - `avx512`: f32 (`VFMADD231PS`), bf16 (`VDPBF16PS`) and int8 (`VPDPBUSD`);
//! - `amx`: bf16, exact bf16x3 and int8 on AMX tiles;
//! - `neon` (aarch64): FMA on bf16 weights widened in registers, int8 with `SDOT` or `SMMLA`,
//!   bf16 with `BFMMLA`.
//!
//! The packed weight carries the [`Cpu`] it was packed for and [`matmul_extended`] picks the
//! kernel from it and the row count ([`Path::choose`]): the one place that decides. The
//! epilogue (bias, LoRA, GELU) is shared by all of them ([`epilogue`]).
//!
//! Layout: output columns are grouped in panels of [`PANEL`] = 64. A panel stores, for each step
//! of the input dimension (one value for f32, a pair for bf16, a quad for int8), its 64 columns
//! side by side, so a micro-kernel streams the panel linearly ([`pack`]). The AVX-512 kernels
//! hold a `rows × 64` tile of sums in 24 registers; the AVX2 ones, with 16 registers, walk the
//! panel 16 (f32) or 8 (int8) columns at a time. Every output element is summed in the same
//! order whatever the number of rows, so a row's result does not depend on the rest of the
//! batch. Threads split the panels; each keeps its panel hot in L2 while it walks the rows.

use std::borrow::Cow;
use std::ops::Range;

use rayon::prelude::*;

#[cfg(test)]
use super::cpu::Cpu;
use super::matmul::MatmulInit;

/// `for_rows!(mr, kernel(args))` calls `kernel::<MR>(args)` with the row count `mr` (1 to
/// [`MAX_ROWS`]) as a constant, so that each row count gets its own unrolled tile kernel with
/// its accumulators in registers: the one row dispatch of every tile kernel.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_macros))]
macro_rules! for_rows {
    ($mr:expr, $kernel:ident($($arg:expr),* $(,)?)) => {
        match $mr {
            1 => $kernel::<1>($($arg),*),
            2 => $kernel::<2>($($arg),*),
            3 => $kernel::<3>($($arg),*),
            4 => $kernel::<4>($($arg),*),
            5 => $kernel::<5>($($arg),*),
            _ => $kernel::<6>($($arg),*),
        }
    };
}

mod activations;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avxvnni;
mod epilogue;
mod int8;
#[cfg(target_arch = "aarch64")]
mod neon;
mod pack;
pub mod reference;
#[cfg(test)]
mod tests;

pub use activations::LowRankInputs;
use activations::{bf16_rows, extended_row, interleave_row_pairs};
use epilogue::{finish_block, SharedOut};
pub use epilogue::{Epilogue, LowRank};
use int8::{matmul_int8, Int8Panel};
pub use pack::PackedMatrix;
use pack::PanelLayout;

/// Output columns per panel (four 16-lane registers).
pub const PANEL: usize = 64;
/// Rows per micro-kernel call: 6 × 4 accumulators + 4 weight registers + 1 broadcast ≤ 32.
const MAX_ROWS: usize = 6;

/// The sums of a `MAX_ROWS × PANEL` block, as every tile kernel hands them to the epilogue.
type Tile = [[f32; PANEL]; MAX_ROWS];

/// Element type of a packed matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackedType {
    /// f32 values, one per step.
    F32,
    /// bf16 pairs, two input positions per step; activations are rounded to bf16.
    Bf16,
    /// bf16 pairs as for `Bf16`, but the f32 activations are split exactly into three bf16
    /// parts (`x = hi + mid + lo`). With weights that are exactly bf16 (a bf16 checkpoint) every
    /// product is exact and the sums are f32, so the result is an f32 product's up to the order
    /// of summation: the exact path, on AMX tiles. Without AMX the same storage is read by FMA
    /// kernels that widen each weight to f32 in registers (a shift: exact) and multiply the f32
    /// activations as they are: exact f32 products at half the memory of f32 weights.
    Bf16x3,
    /// int8 weights, quantised symmetrically per output column (`w ≈ q · max|w| / 127`), four
    /// input positions per step (steps padded to whole AMX tiles); activations are quantised per
    /// row on the fly the same way, products summed in i32 on AMX (`TDPBSSD`) or with
    /// AVX512_VNNI (`VPDPBUSD`) or AVX2 (`VPMADDWD`), and scaled back. Every kernel sums the same
    /// integers exactly and scale each chunk of [`INT8_CHUNK_STEPS`] steps in the same order, so
    /// they give the same bits.
    Int8,
}

impl PackedType {
    /// Steps along an input dimension of `k` values.
    pub(super) fn steps(self, k: usize) -> usize {
        match self {
            PackedType::F32 => k,
            // Whole AMX tile steps, so that any `k` (the LoRA inputs after 1024 values, say) can
            // take AMX; the zero pairs cost the other kernels at most 15 steps.
            PackedType::Bf16 | PackedType::Bf16x3 => k.div_ceil(2).next_multiple_of(TILE_STEPS),
            PackedType::Int8 => k.div_ceil(4).next_multiple_of(INT8_TILE_STEPS),
        }
    }

    /// bf16 parts each activation is split into (0: f32 activations).
    pub(super) fn activation_parts(self) -> usize {
        match self {
            PackedType::F32 => 0,
            PackedType::Bf16 => 1,
            PackedType::Bf16x3 => 3,
            PackedType::Int8 => 1,
        }
    }
}

/// Quads (64 int8 inputs) per AMX int8 tile step; int8 steps are padded to a multiple of it.
pub(super) const INT8_TILE_STEPS: usize = 16;

/// Tile steps per chunk of the input dimension on AMX (see [`matmul_amx`]).
pub(super) const AMX_CHUNK_TILE_STEPS: usize = 32;

/// int8 steps (quads; 2048 inputs) whose i32 sums are scaled to f32 and added to the output
/// together: AMX's chunk, which every other int8 kernel follows so that all round the same way.
pub(super) const INT8_CHUNK_STEPS: usize = AMX_CHUNK_TILE_STEPS * INT8_TILE_STEPS;

/// Chunks of [`INT8_CHUNK_STEPS`] in `steps` (at least one, so that `k = 0` still stores).
pub(super) fn int8_chunks(steps: usize) -> usize {
    steps.div_ceil(INT8_CHUNK_STEPS).max(1)
}

/// Steps (pair or quad rows) in one AMX weight tile.
pub(super) const TILE_STEPS: usize = 16;

/// `out[rows × n] (init) + x[rows × k] · Wᵀ`; rows of `x` are `x_stride` apart, rows of `out`
/// `out_stride` apart. `parallel` splits panels across the rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    x: &[f32],
    x_stride: usize,
    rows: usize,
    w: &PackedMatrix,
    out: &mut [f32],
    out_stride: usize,
    init: MatmulInit,
    parallel: bool,
) {
    matmul_with(
        x,
        x_stride,
        rows,
        w,
        out,
        out_stride,
        init,
        Epilogue::default(),
        parallel,
    )
}

/// [`matmul`] with an [`Epilogue`].
#[allow(clippy::too_many_arguments)]
pub fn matmul_with(
    x: &[f32],
    x_stride: usize,
    rows: usize,
    w: &PackedMatrix,
    out: &mut [f32],
    out_stride: usize,
    init: MatmulInit,
    epilogue: Epilogue,
    parallel: bool,
) {
    matmul_extended(
        x, x_stride, rows, None, w, out, out_stride, init, epilogue, parallel,
    )
}

/// The kernel one product runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Plain loops ([`reference`]).
    Reference,
    /// AVX2 + FMA: f32 products on widened bf16 weights (bf16 storage: activations rounded
    /// first) or int8 with `VPMADDWD`.
    Avx2,
    /// AVX-512 FMA on f32 weights or on widened bf16 weights (bf16x3; bf16 without
    /// AVX512_BF16), `VDPBF16PS` on bf16 pairs.
    Avx512,
    /// AVX512_VNNI `VPDPBUSD` (int8).
    Vnni,
    /// 256-bit `VPDPBUSD` (int8).
    AvxVnni {
        /// AVX-VNNI's VEX form; else AVX512_VNNI's EVEX form (an AVX-512 CPU under a cap).
        vex: bool,
    },
    /// AMX tiles.
    Amx,
    /// aarch64 NEON: f32 products on widened bf16 weights (as `Avx2`).
    Neon,
    /// aarch64 `SDOT` (FEAT_DotProd): int8.
    Dotprod,
    /// aarch64 `SMMLA` (FEAT_I8MM): int8.
    I8mm,
    /// aarch64 `BFMMLA` (FEAT_BF16): bf16.
    Bfmmla,
}

impl Path {
    /// The kernel for `rows` rows times `w`, from the features `w` was packed for.
    pub fn choose(w: &PackedMatrix, rows: usize) -> Path {
        let cpu = w.cpu;
        // AMX pads the rows to 32. For one bf16 part a few rows run faster on AVX512_BF16; with
        // three parts that kernel does 1.5× the work of the f32 one, so bf16x3 takes AMX at any
        // size. int8: see INT8_AMX_MIN_ROWS.
        let amx_steps = cfg!(all(target_arch = "x86_64", target_os = "linux"))
            && w.steps.is_multiple_of(TILE_STEPS);
        let on_amx = amx_steps
            && match w.ty {
                PackedType::F32 => false,
                PackedType::Bf16 => rows >= 16 && cpu.amx_bf16,
                PackedType::Bf16x3 => cpu.amx_bf16,
                PackedType::Int8 => (rows >= INT8_AMX_MIN_ROWS || !cpu.avx512_vnni) && cpu.amx_int8,
            };
        let x86 = cfg!(target_arch = "x86_64");
        let arm = cfg!(target_arch = "aarch64");
        match w.ty {
            _ if on_amx => Path::Amx,
            PackedType::F32 | PackedType::Bf16x3 if x86 && cpu.avx512 => Path::Avx512,
            // bf16 without a bf16 dot product: widened in registers, as bf16x3.
            PackedType::Bf16 if x86 && cpu.avx512 => Path::Avx512,
            PackedType::Bf16 | PackedType::Bf16x3 if x86 && cpu.avx2 => Path::Avx2,
            PackedType::Int8 if x86 && cpu.avx512 && cpu.avx512_vnni => Path::Vnni,
            PackedType::Int8 if x86 && cpu.vnni_256() => Path::AvxVnni { vex: cpu.avx_vnni },
            PackedType::Int8 if x86 && cpu.avx2 => Path::Avx2,
            PackedType::Bf16 if arm && cpu.neon && cpu.bf16 => Path::Bfmmla,
            PackedType::Bf16 | PackedType::Bf16x3 if arm && cpu.neon => Path::Neon,
            PackedType::Int8 if arm && cpu.neon && cpu.dotprod && cpu.i8mm => Path::I8mm,
            PackedType::Int8 if arm && cpu.neon && cpu.dotprod => Path::Dotprod,
            _ => Path::Reference,
        }
    }
}

/// Rows from which int8 products take AMX-INT8 when VNNI is there too. AMX pads the rows to
/// 32: on 2 threads of the reference machine, VNNI took 0.55–0.9× AMX's time up to 16 rows,
/// about as long at 20, and 1.1–1.7× from 24 rows on (k × n = 1024 × 3072 and 4096 × 1024).
const INT8_AMX_MIN_ROWS: usize = 20;

/// [`matmul_with`] where each row of `x` (`w.k − extra.len()` values) is followed by the
/// [`LowRankInputs`] `extra`; bf16 and bf16x3 weights only.
#[allow(clippy::too_many_arguments)]
pub fn matmul_extended(
    x: &[f32],
    x_stride: usize,
    rows: usize,
    extra: Option<LowRankInputs>,
    w: &PackedMatrix,
    out: &mut [f32],
    out_stride: usize,
    init: MatmulInit,
    epilogue: Epilogue,
    parallel: bool,
) {
    let k_x = match extra {
        None => w.k,
        Some(extra) => {
            assert!(
                matches!(w.ty, PackedType::Bf16 | PackedType::Bf16x3),
                "extra inputs need bf16 or bf16x3 weights"
            );
            assert!(
                extra.len() <= w.k
                    && extra.low.len() >= rows * extra.rank
                    && extra.slot.len() >= rows
            );
            assert!(
                extra.slot[..rows]
                    .iter()
                    .flatten()
                    .all(|&s| s < extra.slots),
                "adapter slot out of range"
            );
            w.k - extra.len()
        }
    };
    if rows == 0 || w.n == 0 {
        return;
    }
    assert!(x.len() >= (rows - 1) * x_stride + k_x, "x too short");
    assert!(
        out.len() >= (rows - 1) * out_stride + w.n && out_stride >= w.n,
        "out too short"
    );
    if let MatmulInit::Bias(b) = init {
        assert_eq!(b.len(), w.n);
    }
    if let Some(LowRank { low, rank, up }) = epilogue.low_rank {
        assert!(
            low.len() >= rows * rank && up.len() >= rows,
            "low-rank term too short"
        );
        assert!(
            up.iter().flatten().all(|u| u.len() == rank * w.n),
            "up-projection of the wrong size"
        );
    }
    let path = Path::choose(w, rows);
    let out = (SharedOut::new(out), out_stride);
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if path == Path::Amx {
        return amx::matmul_amx((x, x_stride, extra), rows, w, out, init, epilogue, parallel);
    }
    if w.ty == PackedType::Int8 {
        return matmul_int8(
            (x, x_stride),
            rows,
            w,
            out,
            (init, epilogue),
            (path, parallel),
        );
    }
    let acts = Activations::prepare(x, x_stride, rows, w, extra, path);
    let part = input_part(path, w);
    let run_panel = |panel: usize, block: Range<usize>| {
        let cols = PANEL.min(w.n - panel * PANEL);
        let wp = &w.data[panel * w.steps * PANEL..(panel + 1) * w.steps * PANEL];
        // With the input dimension in parts, every tile of the block is summed over one part
        // of the panel before the next part is read (see `input_part`).
        let mut tiles = vec![[[0f32; PANEL]; MAX_ROWS]; block.len().div_ceil(MAX_ROWS)];
        let widen = part < w.k && w.ty != PackedType::F32 && block.len() >= WIDEN_MIN_ROWS;
        WIDENED.with_borrow_mut(|widened| {
            for k0 in (0..w.k.max(1)).step_by(part) {
                let inputs = k0..w.k.min(k0 + part);
                let weights = if widen {
                    widened.resize(part * PANEL, 0.0);
                    acts.widen(path, w, wp, inputs.clone(), widened);
                    PanelPart::Widened(widened)
                } else {
                    PanelPart::Packed(wp)
                };
                for (tile, r0) in tiles.iter_mut().zip(block.clone().step_by(MAX_ROWS)) {
                    let mr = MAX_ROWS.min(block.end - r0);
                    acts.tile(path, w, &weights, (r0, mr), inputs.clone(), tile);
                }
            }
        });
        for (tile, r0) in tiles.iter_mut().zip(block.clone().step_by(MAX_ROWS)) {
            let mr = MAX_ROWS.min(block.end - r0);
            // SAFETY: this panel's task alone writes columns panel·64 .. panel·64 + cols of
            // rows r0..r0 + mr, and they lie inside `out` (asserted above).
            unsafe {
                finish_block(
                    tile.as_flattened_mut(),
                    PANEL,
                    mr,
                    cols,
                    out,
                    (r0, panel * PANEL),
                    init,
                    &epilogue,
                    w.cpu,
                )
            };
        }
    };
    let parallel = parallel && rows * w.n * w.k >= 1 << 18;
    for_each_block(
        rows,
        // In parts, a block's rows are live one part at a time: bigger blocks, so that each
        // widened part serves more tiles and the weights are read fewer times.
        if part < w.k {
            acts.row_bytes(w).min(part * 4)
        } else {
            acts.row_bytes(w)
        },
        MAX_ROWS,
        w.n.div_ceil(PANEL),
        parallel,
        run_panel,
    );
}

/// Activations in the form the chosen kernel reads: f32 rows (extended with their LoRA inputs,
/// or rounded to bf16 for bf16 weights, in a copy), rows of bf16 pairs in `parts` parts, or
/// rows of bf16 pairs interleaved two by two (`BFMMLA`).
enum Activations<'a> {
    F32 {
        x: Cow<'a, [f32]>,
        stride: usize,
    },
    Bf16 {
        // Read by the AVX-512 kernel only.
        #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
        pairs: Vec<u32>,
        parts: usize,
    },
    /// [`interleave_row_pairs`]: read by the aarch64 `BFMMLA` kernel only.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    Bf16RowPairs(Vec<u32>),
}

impl Activations<'_> {
    fn prepare<'a>(
        x: &'a [f32],
        stride: usize,
        rows: usize,
        w: &PackedMatrix,
        extra: Option<LowRankInputs>,
        path: Path,
    ) -> Activations<'a> {
        // Only `VDPBF16PS` reads bf16 pairs; every other AVX-512 kernel reads f32 rows.
        let reads_pairs = path == Path::Avx512 && w.ty == PackedType::Bf16 && w.cpu.avx512_bf16;
        // Few rows take the kernels that read extended rows: each is extended in a copy first.
        let (x, stride) = match extra {
            None => (Cow::Borrowed(x), stride),
            Some(extra) => {
                let k_x = w.k - extra.len();
                let mut rows_x = vec![0f32; rows * w.k];
                for (r, dst) in rows_x.chunks_exact_mut(w.k).enumerate() {
                    extended_row(x, stride, k_x, &extra, r, dst);
                }
                (Cow::Owned(rows_x), w.k)
            }
        };
        if path == Path::Bfmmla {
            let pairs = bf16_rows(&x, stride, rows, w.k, w.steps, rows, 1, (w.cpu, rows >= 64));
            return Activations::Bf16RowPairs(interleave_row_pairs(&pairs, rows, w.steps));
        }
        if reads_pairs {
            let parts = w.ty.activation_parts();
            let pairs = bf16_rows(
                &x,
                stride,
                rows,
                w.k,
                w.steps,
                rows,
                parts,
                (w.cpu, rows >= 64),
            );
            return Activations::Bf16 { pairs, parts };
        }
        if w.ty == PackedType::Bf16 {
            // bf16 weights mean bf16 activations, whichever kernel multiplies them.
            let rounded = (0..rows).flat_map(|r| {
                x[r * stride..][..w.k]
                    .iter()
                    .map(|&v| half::bf16::from_f32(v).to_f32())
            });
            return Activations::F32 {
                x: Cow::Owned(rounded.collect()),
                stride: w.k,
            };
        }
        Activations::F32 { x, stride }
    }

    /// Bytes of one row as the kernel reads it.
    fn row_bytes(&self, w: &PackedMatrix) -> usize {
        match self {
            Activations::F32 { .. } => w.k * 4,
            Activations::Bf16 { parts, .. } => parts * w.steps * 4,
            Activations::Bf16RowPairs(_) => w.steps * 4,
        }
    }

    /// The sums of rows `r0 .. r0 + mr` times the panel `wp` of `w`, by `path`, into `tile`.
    ///
    /// `inputs` is the whole input dimension but for the kernels that [`input_part`] splits,
    /// which go on from the sums in `tile` after the first part.
    fn tile(
        &self,
        path: Path,
        w: &PackedMatrix,
        weights: &PanelPart,
        (r0, mr): (usize, usize),
        inputs: Range<usize>,
        tile: &mut Tile,
    ) {
        let layout = w.layout();
        debug_assert!(inputs == (0..w.k) || input_part(path, w) < w.k);
        let wp = match *weights {
            PanelPart::Packed(wp) => wp,
            // SAFETY: only the AVX2 f32 path widens (`input_part`), and `widen` checked AVX2.
            #[cfg(target_arch = "x86_64")]
            PanelPart::Widened(part) => unsafe {
                let Activations::F32 { x, stride } = self else {
                    unreachable!("widened panels meet f32 rows")
                };
                let x = (&x[r0 * stride..], *stride);
                return avx2::tile_f32(mr, x, inputs.clone(), part, (tile, inputs.start > 0));
            },
            #[cfg(not(target_arch = "x86_64"))]
            PanelPart::Widened(_) => unreachable!("only the AVX2 path widens panels"),
        };
        match (self, path) {
            // SAFETY (all three): `Path::choose` took the path for features `w.cpu` has; `x` or
            // `pairs` hold rows r0..r0+mr of `steps` steps each and `wp` one panel of `steps`.
            #[cfg(target_arch = "x86_64")]
            (Activations::F32 { x, stride }, Path::Avx512) if w.ty == PackedType::F32 => unsafe {
                avx512::tile_f32(mr, x[r0 * stride..].as_ptr(), *stride, w.steps, wp, tile)
            },
            #[cfg(target_arch = "x86_64")]
            (Activations::F32 { x, stride }, Path::Avx512) => unsafe {
                let panel = avx512::Bf16Panel { w: wp, layout };
                avx512::tile_widened(mr, &x[r0 * stride..], *stride, w.k, panel, tile)
            },
            #[cfg(target_arch = "x86_64")]
            (Activations::Bf16 { pairs, parts }, Path::Avx512) => unsafe {
                let row_pairs = parts * w.steps;
                let panel = avx512::Bf16Panel { w: wp, layout };
                avx512::tile_bf16(
                    mr,
                    pairs[r0 * row_pairs..].as_ptr(),
                    row_pairs,
                    *parts,
                    w.steps,
                    panel,
                    tile,
                )
            },
            #[cfg(target_arch = "x86_64")]
            (Activations::F32 { x, stride }, Path::Avx2) => unsafe {
                let carry = inputs.start > 0;
                let x = (&x[r0 * stride..], *stride);
                avx2::tile_widened(mr, x, inputs, (wp, layout), (tile, carry))
            },
            #[cfg(target_arch = "aarch64")]
            (Activations::F32 { x, stride }, Path::Neon) => unsafe {
                neon::tile_widened(mr, &x[r0 * stride..], *stride, w.k, (wp, layout), tile)
            },
            // SAFETY: `Path::choose` took BFMMLA for a CPU with FEAT_BF16; blocks start at a
            // multiple of MAX_ROWS (even), so row r0 begins pair r0 / 2, at r0 · steps.
            #[cfg(target_arch = "aarch64")]
            (Activations::Bf16RowPairs(pairs), Path::Bfmmla) => unsafe {
                debug_assert!(r0.is_multiple_of(2));
                neon::tile_bf16_mmla(mr, &pairs[r0 * w.steps..], w.steps, (wp, layout), tile)
            },
            (Activations::F32 { x, stride }, _) => {
                reference::tile(mr, &x[r0 * stride..], *stride, w, (wp, layout), tile)
            }
            (Activations::Bf16 { .. } | Activations::Bf16RowPairs(_), _) => {
                unreachable!("bf16 pairs meet the kernel they were prepared for")
            }
        }
    }

    /// Widens `inputs` of the bf16 panel `wp` into `dst` as f32, for the AVX2 f32 kernel.
    fn widen(
        &self,
        path: Path,
        w: &PackedMatrix,
        wp: &[u32],
        inputs: Range<usize>,
        dst: &mut [f32],
    ) {
        assert!(path == Path::Avx2 && matches!(w.ty, PackedType::Bf16 | PackedType::Bf16x3));
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Path::choose` took AVX2 for a CPU that has it; `wp` is a whole panel.
        unsafe {
            avx2::widen_part((wp, w.layout()), inputs, dst)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("only the AVX2 path widens panels ({wp:?}, {inputs:?}, {dst:?})")
    }
}

/// The weights a tile kernel reads for one part of the input dimension: the packed panel, or
/// that part of it widened to f32 (64 values an input, from the part's first input).
enum PanelPart<'a> {
    Packed(&'a [u32]),
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Widened(&'a [f32]),
}

thread_local! {
    /// Each thread's buffer for a widened part of a panel (64 KiB: it stays in L2 with the
    /// rows' part beside it).
    static WIDENED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Rows of a block from which the AVX2 f32 path widens each part of a bf16 panel once into
/// f32 (`WIDENED`) and multiplies that, instead of widening every weight in registers for
/// every tile of rows: one tile only reads its weights once, so below two tiles widening
/// first is extra work. On one Zen 2 thread (gemm_speed, CPU time, the model's four shapes)
/// widening in registers ran at 70-73 GFLOP/s of a 105 GFLOP/s FMA peak, widened parts at
/// 86-92 GFLOP/s.
const WIDEN_MIN_ROWS: usize = 2 * MAX_ROWS;

/// Inputs per part of the input dimension on the AVX2 f32 path: each part of a panel is widened
/// once into a 64 KiB f32 buffer (`WIDENED`) that stays in L2, beside the rows' part, while
/// every tile of the block passes over it. The other kernels take the whole dimension.
fn input_part(path: Path, w: &PackedMatrix) -> usize {
    const AVX2_INPUT_PART: usize = 256;
    match path {
        Path::Avx2 if w.ty != PackedType::Int8 => AVX2_INPUT_PART,
        _ => w.k.max(1),
    }
}

/// Bytes of activations in one block of rows: under half of a 2 MiB L2, so that a block stays
/// there while every panel passes over it. Walking all rows for each panel instead streams the
/// activations from L3 once per panel, which starves the AMX tiles (a quarter of their speed).
const ROW_BLOCK_BYTES: usize = 1 << 20;

/// Runs `task(panel, rows)` for every panel and every block of rows of about
/// [`ROW_BLOCK_BYTES`] (`row_bytes` a row; a multiple of `align` rows), block after block; the
/// panels of a block are split across threads when `parallel`.
fn for_each_block(
    rows: usize,
    row_bytes: usize,
    align: usize,
    panels: usize,
    parallel: bool,
    task: impl Fn(usize, Range<usize>) + Sync,
) {
    let block = (ROW_BLOCK_BYTES / row_bytes.max(1)).max(align) / align * align;
    for start in (0..rows).step_by(block) {
        let range = start..rows.min(start + block);
        if parallel && panels > 1 {
            (0..panels)
                .into_par_iter()
                .for_each(|panel| task(panel, range.clone()));
        } else {
            (0..panels).for_each(|panel| task(panel, range.clone()));
        }
    }
}
