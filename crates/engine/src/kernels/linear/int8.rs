//! The int8 product on every kernel but AMX (which has its own driver in `amx.rs`): the
//! activations quantised per row in the form the chosen kernel reads, the panel walked chunk by
//! chunk of [`INT8_CHUNK_STEPS`] steps, and each chunk's exact i32 sums scaled and handed to
//! the epilogue, so that every int8 kernel gives the same bits.

use std::ops::Range;

use super::activations::{self, quantize_row, quantize_rows};
use super::epilogue::{finish_block, SharedOut};
#[cfg(target_arch = "aarch64")]
use super::neon;
use super::pack::PanelLayout;
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512, avxvnni};
use super::{
    for_each_block, int8_chunks, reference, Epilogue, MatmulInit, PackedMatrix, Path, Tile,
    INT8_CHUNK_STEPS, MAX_ROWS, PANEL,
};

/// The int8 product on every kernel but AMX: activations quantised per row in the form the
/// kernel reads (`VPDPBUSD` takes them unsigned, as `q + 128`, and its sums start from
/// −128·Σw, [`PackedMatrix::col_sums`]; `VPMADDWD` takes them widened to i16; the reference
/// signed). Each chunk of [`INT8_CHUNK_STEPS`] steps is summed exactly in i32, scaled and added
/// to the output on its own, as on AMX, so every kernel gives the same bits.
pub(super) fn matmul_int8(
    (x, x_stride): (&[f32], usize),
    rows: usize,
    w: &PackedMatrix,
    out: (SharedOut, usize),
    (init, epilogue): (MatmulInit, Epilogue),
    (path, parallel): (Path, bool),
) {
    let steps = w.steps;
    let source = (x, x_stride, rows, w.k);
    let quantize_parallel = parallel && rows >= 64;
    let acts = match path {
        Path::Vnni | Path::AvxVnni { .. } => Int8Rows::Quads(quantize_rows(
            source,
            steps,
            quantize_parallel,
            activations::quantize_row_unsigned,
        )),
        Path::Avx2 => Int8Rows::Wide(quantize_rows(
            source,
            4 * steps,
            quantize_parallel,
            activations::quantize_row_i16,
        )),
        _ => Int8Rows::Quads(quantize_rows(
            source,
            steps,
            quantize_parallel,
            quantize_row,
        )),
    };
    let chunks = int8_chunks(steps);
    let run_panel = |panel: usize, block: Range<usize>| {
        let first_col = panel * PANEL;
        let cols = PANEL.min(w.n - first_col);
        // Kernels read 64 column scales; past `n` they meet zero sums and are not stored.
        let mut col_scales = [0f32; PANEL];
        col_scales[..cols].copy_from_slice(&w.scales[first_col..first_col + cols]);
        let wp = &w.data[panel * steps * PANEL..(panel + 1) * steps * PANEL];
        let sums = &w.col_sums[panel * chunks * PANEL..(panel + 1) * chunks * PANEL];
        let mut tile = [[0f32; PANEL]; MAX_ROWS];
        // Chunks outer: the panel's chunk (128 KiB over 2048 inputs) stays in L2 while every
        // tile of the block passes, where the whole panel of a 4096-input layer (fc2) would
        // be streamed from L3 once per tile on a CPU with 512 KiB of L2 (Zen 2).
        for chunk in 0..chunks {
            for r0 in block.clone().step_by(MAX_ROWS) {
                let mr = MAX_ROWS.min(block.end - r0);
                let s0 = chunk * INT8_CHUNK_STEPS;
                let ops = Int8Panel {
                    steps: (s0, INT8_CHUNK_STEPS.min(steps - s0)),
                    w: wp,
                    layout: w.layout(),
                    sums: &sums[chunk * PANEL..][..PANEL],
                    col_scales: &col_scales,
                };
                acts.tile(path, r0, mr, steps, &ops, &mut tile);
                // As on AMX: the first chunk is stored with `init`, the next ones added to it.
                let init = if chunk == 0 {
                    init
                } else {
                    MatmulInit::Accumulate
                };
                let no_epilogue = Epilogue::default();
                let epilogue = if chunk + 1 == chunks {
                    &epilogue
                } else {
                    &no_epilogue
                };
                // SAFETY: this panel's task alone writes columns first_col .. first_col + cols
                // of rows r0..r0 + mr, and they lie inside `out` (asserted by the caller).
                unsafe {
                    finish_block(
                        tile.as_flattened_mut(),
                        PANEL,
                        mr,
                        cols,
                        out,
                        (r0, first_col),
                        init,
                        epilogue,
                        w.cpu,
                    )
                };
            }
        }
    };
    let parallel = parallel && rows * w.n * w.k >= 1 << 18;
    // The AVX2 kernel's rows are i16, twice the bytes of quads.
    let row_bytes = if path == Path::Avx2 {
        steps * 8
    } else {
        steps * 4
    };
    for_each_block(
        rows,
        row_bytes,
        MAX_ROWS,
        w.n.div_ceil(PANEL),
        parallel,
        run_panel,
    );
}

/// One chunk of one panel of int8 weights, as the int8 tile kernels read it.
pub(super) struct Int8Panel<'a> {
    /// The chunk's first step and its number of steps.
    pub(super) steps: (usize, usize),
    /// The whole panel and its layout.
    pub(super) w: &'a [u32],
    pub(super) layout: PanelLayout,
    /// The chunk's column sums of the panel's 64 columns (`PackedMatrix::col_sums`; VNNI only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) sums: &'a [i32],
    /// The panel's 64 column scales (zero past `n`).
    pub(super) col_scales: &'a [f32; PANEL],
}

/// Quantised activation rows and their scales: quads (u32 a step; signed, or unsigned for
/// VNNI) or i16 (four a step, for `VPMADDWD`).
enum Int8Rows {
    Quads((Vec<u32>, Vec<f32>)),
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Wide((Vec<i16>, Vec<f32>)),
}

impl Int8Rows {
    /// The scaled sums of rows `r0 .. r0 + mr` (each `steps` steps) times the chunk `ops`.
    fn tile(
        &self,
        path: Path,
        r0: usize,
        mr: usize,
        steps: usize,
        ops: &Int8Panel,
        tile: &mut Tile,
    ) {
        let s0 = ops.steps.0;
        match (self, path) {
            // SAFETY: `Path::choose` took VNNI for a CPU with AVX512_VNNI; `x` holds rows
            // r0..r0+mr from step s0 (each `steps` quads) and `w` the panel to the chunk's end.
            #[cfg(target_arch = "x86_64")]
            (Int8Rows::Quads((x, scales)), Path::Vnni) => unsafe {
                avx512::tile_int8(
                    mr,
                    (&x[r0 * steps + s0..], steps),
                    &scales[r0..r0 + mr],
                    ops,
                    tile,
                )
            },
            // SAFETY: as above, for 256-bit VNNI in the encoding the CPU has.
            #[cfg(target_arch = "x86_64")]
            (Int8Rows::Quads((x, scales)), Path::AvxVnni { vex }) => unsafe {
                let x = (&x[r0 * steps + s0..], steps);
                let scales = &scales[r0..r0 + mr];
                if vex {
                    avxvnni::tile_int8_vex(mr, x, scales, ops, tile)
                } else {
                    avxvnni::tile_int8_evex(mr, x, scales, ops, tile)
                }
            },
            // SAFETY: as above, for AVX2.
            #[cfg(target_arch = "x86_64")]
            (Int8Rows::Wide((x, scales)), Path::Avx2) => unsafe {
                avx2::tile_int8(
                    mr,
                    (&x[4 * (r0 * steps + s0)..], 4 * steps),
                    &scales[r0..r0 + mr],
                    ops,
                    tile,
                )
            },
            // SAFETY: as above, for SDOT (`Path::choose` checked FEAT_DotProd).
            #[cfg(target_arch = "aarch64")]
            (Int8Rows::Quads((x, scales)), Path::Dotprod) => unsafe {
                neon::tile_int8(
                    mr,
                    (&x[r0 * steps + s0..], steps),
                    &scales[r0..r0 + mr],
                    ops,
                    tile,
                )
            },
            // SAFETY: as above, for SMMLA (`Path::choose` checked FEAT_I8MM).
            #[cfg(target_arch = "aarch64")]
            (Int8Rows::Quads((x, scales)), Path::I8mm) => unsafe {
                neon::tile_int8_mmla(
                    mr,
                    (&x[r0 * steps + s0..], steps),
                    &scales[r0..r0 + mr],
                    ops,
                    tile,
                )
            },
            (Int8Rows::Quads((x, scales)), _) => reference::tile_int8(
                mr,
                (&x[r0 * steps + s0..], steps),
                &scales[r0..r0 + mr],
                ops,
                tile,
            ),
            (Int8Rows::Wide(_), _) => unreachable!("only the AVX2 kernel reads i16 rows"),
        }
    }
}
