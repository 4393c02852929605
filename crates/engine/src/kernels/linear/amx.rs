//! The products on AMX tiles: activations converted straight into A tiles (bf16 parts, or int8
//! quads with per-row scales), 32 × 32 output blocks of four accumulator tiles, the shared
//! epilogue applied per block. The tile plumbing itself is [`crate::kernels::amx`].

use std::ops::Range;

use rayon::prelude::*;

use super::activations::{extended_row, quantize_row, split_row, split_row_into_tiles};
use super::epilogue::{finish_block, SharedOut};
use super::{
    for_each_block, Epilogue, LowRankInputs, PackedMatrix, PackedType, PanelLayout,
    AMX_CHUNK_TILE_STEPS, PANEL,
};
use crate::kernels::amx;
use crate::kernels::cpu::Cpu;
use crate::kernels::matmul::MatmulInit;

/// The activations split into bf16 parts as by [`bf16_rows`], but laid out as AMX A tiles of
/// 16 rows × 16 pairs (1 KiB each): for each group of `group_rows` rows (16 or 32), tile step
/// after tile step, part after part, a tile for each 16 rows of the group; rows past `rows` up
/// to `padded_rows` are zero. Tile loads then read contiguous memory, which the prefetchers
/// follow, instead of 16 rows a row length apart; with groups of 32, all that a block of 32
/// rows reads is one stream.
#[allow(clippy::too_many_arguments)]
pub(super) fn amx_tiles(
    (x, stride, extra): (&[f32], usize, Option<LowRankInputs>),
    rows: usize,
    k: usize,
    steps: usize,
    padded_rows: usize,
    parts: usize,
    group_rows: usize,
    int8_scales: Option<&mut [f32]>,
    (cpu, parallel): (Cpu, bool),
    tiles: &mut Vec<u32>,
) {
    let width = amx::PAIRS_PER_STEP;
    let tile_steps = steps / width;
    let row_pairs = parts * steps;
    // Every element is written below (padding rows with zeros), so a reused buffer needs no
    // clearing: a fresh 6 MiB buffer per product (bf16x3, 1024 rows) cost a memset and page
    // faults each time.
    if tiles.len() < padded_rows * row_pairs {
        tiles.resize(padded_rows * row_pairs, 0);
    }
    tiles.truncate(padded_rows * row_pairs);
    let quantize = int8_scales.is_some();
    let mut no_scales = vec![0f32; padded_rows];
    let scales = int8_scales.unwrap_or(&mut no_scales);
    // Where row `r` of a group puts its 16 pairs of tile step `s`, part `p`.
    let at = move |s: usize, p: usize, r: usize| (s * parts + p) * group_rows * width + r * width;
    let k_x = k - extra.map_or(0, |e| e.len());
    let fill_group = |group: usize, dst: &mut [u32], scales: &mut [f32]| {
        let mut row_buf = vec![0u32; row_pairs];
        // Extended rows: only the extra inputs in `tail`, or (sized on first use) the whole row
        // in `row_x`.
        let mut row_x = Vec::new();
        let mut tail = vec![0f32; extra.map_or(0, |e| e.len())];
        let valid = group_rows.min(rows.saturating_sub(group * group_rows));
        for r in valid..group_rows {
            for s in 0..tile_steps {
                for p in 0..parts {
                    dst[at(s, p, r)..][..width].fill(0);
                }
            }
        }
        for r in 0..valid {
            let row = group * group_rows + r;
            let values = &x[row * stride..row * stride + k_x];
            // Extra inputs: with `x`'s share a whole number of tile steps, converted on their
            // own after it; otherwise the row is extended in a copy first.
            let (values, value_steps) = match extra {
                Some(extra) if !quantize && cpu.avx512_bf16 && k_x.is_multiple_of(2 * width) => {
                    extra.row(row, &mut tail);
                    let (x_steps, dst) =
                        (k_x / (2 * width), &mut dst[at(k_x / (2 * width), 0, r)..]);
                    // SAFETY: as below, for the tile steps after x's.
                    unsafe {
                        split_row_into_tiles(
                            &tail,
                            tile_steps - x_steps,
                            parts,
                            dst.as_mut_ptr(),
                            group_rows * width,
                        )
                    };
                    (values, x_steps)
                }
                Some(extra) => {
                    row_x.resize(k, 0.0);
                    extended_row(x, stride, k_x, &extra, row, &mut row_x);
                    (&row_x[..], tile_steps)
                }
                None => (values, tile_steps),
            };
            if !quantize && cpu.avx512_bf16 {
                // SAFETY: AVX512_BF16 is there; part p of tile step s of this row is the 16
                // pairs at `at(s, p, r)`, inside `dst`, as `at(s, p, 0)` is `(s·parts + p)` whole
                // tiles of `group_rows · width` pairs in.
                unsafe {
                    split_row_into_tiles(
                        values,
                        value_steps,
                        parts,
                        dst[at(0, 0, r)..].as_mut_ptr(),
                        group_rows * width,
                    )
                };
                continue;
            }
            if quantize {
                scales[r] = quantize_row(values, &mut row_buf);
            } else {
                split_row(values, &mut row_buf, steps, parts, cpu);
            }
            for p in 0..parts {
                for s in 0..tile_steps {
                    // Fixed-size copies compile to a few moves; a slice copy of 16 called memmove
                    // (4 % of an f32 pass).
                    let src: &[u32; amx::PAIRS_PER_STEP] = row_buf[p * steps + s * width..]
                        [..width]
                        .try_into()
                        .unwrap();
                    let dst: &mut [u32; amx::PAIRS_PER_STEP] =
                        (&mut dst[at(s, p, r)..][..width]).try_into().unwrap();
                    *dst = *src;
                }
            }
        }
    };
    let groups = tiles
        .chunks_exact_mut(group_rows * row_pairs)
        .zip(scales.chunks_exact_mut(group_rows))
        .enumerate();
    if parallel {
        groups
            .par_bridge()
            .for_each(|(g, (dst, sc))| fill_group(g, dst, sc));
    } else {
        groups.for_each(|(g, (dst, sc))| fill_group(g, dst, sc));
    }
}

/// The bf16 product on AMX: activations rounded to bf16 pairs, rows padded to 32 with zeros.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_amx(
    (x, x_stride, extra): (&[f32], usize, Option<LowRankInputs>),
    rows: usize,
    w: &PackedMatrix,
    (out_ptr, out_stride): (SharedOut, usize),
    init: MatmulInit,
    epilogue: Epilogue,
    parallel: bool,
) {
    use amx::BLOCK;
    let steps = w.steps;
    let padded_rows = rows.div_ceil(BLOCK) * BLOCK;
    let parts = w.ty.activation_parts();
    let int8 = w.ty == PackedType::Int8;
    let mut row_scales = vec![0f32; if int8 { padded_rows } else { 0 }];
    let scales_out = int8.then_some(&mut row_scales[..]);
    thread_local! {
        /// The activation tiles of the last product on this thread, reused.
        static TILES: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let mut pairs = TILES.with(|t| std::mem::take(&mut *t.borrow_mut()));
    // With tiled weights, the activations of a block of 32 rows form one stream too, and both
    // are prefetched; with linear weights (bf16x3, int8), groups of 16 rows (see PanelLayout).
    let w_layout = w.layout();
    let tiled = matches!(w_layout, PanelLayout::Tiled { .. });
    let group_rows = if tiled { BLOCK } else { BLOCK / 2 };
    amx_tiles(
        (x, x_stride, extra),
        rows,
        w.k,
        steps,
        padded_rows,
        parts,
        group_rows,
        scales_out,
        (w.cpu, parallel && rows >= 64),
        &mut pairs,
    );
    let scales = int8.then_some(Int8Scales {
        rows: &row_scales,
        cols: &w.scales,
    });
    let tile_steps = steps / amx::PAIRS_PER_STEP;
    let tile = amx::PAIRS_PER_STEP * 16;
    let layout = amx::ALayout {
        stride: 64,
        step: parts * tile * group_rows / 16,
        part: tile * group_rows / 16,
        lower: if tiled {
            tile
        } else {
            tile_steps * parts * tile
        },
        block: BLOCK * parts * steps,
    };
    // The input dimension in chunks of at most CHUNK tile steps (1024 bf16 or 2048 int8
    // inputs), so that a block of rows and a panel's share of the weights fit L2 together even
    // for fc2 (4096 inputs); each chunk after the first adds to what the ones before it stored.
    let chunks = amx_chunks(tile_steps, int8);
    for (i, range) in chunks.iter().enumerate() {
        let (chunk, chunk_steps) = (range.start, range.len());
        let init = if chunk == 0 {
            init
        } else {
            MatmulInit::Accumulate
        };
        let epilogue = if i + 1 == chunks.len() {
            epilogue
        } else {
            Epilogue::default()
        };
        let run_panel = |panel: usize, block: Range<usize>| {
            let wp = &w.data[panel * steps * PANEL..(panel + 1) * steps * PANEL];
            let wp = (wp, w_layout, chunk * amx::PAIRS_PER_STEP);
            let a = &pairs[chunk * layout.step..];
            let out = (out_ptr, out_stride, init, epilogue);
            // SAFETY: `matmul_with` took this path only with AMX available.
            unsafe {
                amx_panel(
                    a,
                    layout,
                    parts,
                    wp,
                    chunk_steps,
                    panel,
                    block,
                    rows,
                    w.n,
                    out,
                    scales,
                    w.cpu,
                )
            };
        };
        for_each_block(
            rows,
            chunk_steps * amx::PAIRS_PER_STEP * parts * 4,
            BLOCK,
            w.n.div_ceil(PANEL),
            parallel,
            run_panel,
        );
    }
    TILES.with(|t| *t.borrow_mut() = pairs);
}

/// The chunks of tile steps [`matmul_amx`] runs one after another: [`AMX_CHUNK_TILE_STEPS`]
/// each, except that for bf16 a last chunk of up to an eighth of that joins the one before (the
/// tile step of LoRA inputs after 1024 or 4096 values; a chunk of its own would load and store
/// every output block once more). int8 keeps the fixed chunks: they fix its rounding (see
/// [`INT8_CHUNK_STEPS`]), which bf16's f32 sums, carried on from one chunk to the next, lack.
pub(super) fn amx_chunks(tile_steps: usize, int8: bool) -> Vec<Range<usize>> {
    const CHUNK: usize = AMX_CHUNK_TILE_STEPS;
    let mut chunks: Vec<Range<usize>> = (0..tile_steps)
        .step_by(CHUNK)
        .map(|c| c..tile_steps.min(c + CHUNK))
        .collect();
    if !int8 && chunks.len() > 1 && chunks[chunks.len() - 1].len() <= CHUNK / 8 {
        let last = chunks.pop().unwrap();
        chunks.last_mut().unwrap().end = last.end;
    }
    chunks
}

/// The scales that turn an int8 block's i32 sums back into values.
#[derive(Clone, Copy)]
pub(super) struct Int8Scales<'a> {
    rows: &'a [f32],
    cols: &'a [f32],
}

impl Int8Scales<'_> {
    /// Converts the i32 sums (bit patterns in `c`) of the 32 × 32 block at (`r0`, `first_col`).
    #[inline(always)]
    fn apply(&self, c: &mut [f32], r0: usize, first_col: usize) {
        let block = amx::BLOCK;
        let cols = &self.cols[first_col..(first_col + block).min(self.cols.len())];
        for (i, row) in c.chunks_exact_mut(block).enumerate() {
            let row_scale = self.rows[r0 + i];
            for (v, col_scale) in row.iter_mut().zip(cols) {
                *v = v.to_bits() as i32 as f32 * row_scale * col_scale;
            }
        }
    }
}

/// One panel's columns of the rows of `block` on AMX, over `steps` tile steps of `a` and `wp`.
///
/// Compiled for AVX-512 so that the bias, scaling and epilogue code inlined into it is
/// vectorised 16 wide.
///
/// # Safety
/// AMX and AVX512_BF16 available (`cpu.amx_bf16`).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
pub(super) unsafe fn amx_panel(
    a: &[u32],
    layout: amx::ALayout,
    parts: usize,
    (wp, w_layout, first_step): (&[u32], PanelLayout, usize),
    steps: usize,
    panel: usize,
    block: Range<usize>,
    rows: usize,
    n: usize,
    (out_ptr, out_stride, init, epilogue): (SharedOut, usize, MatmulInit, Epilogue),
    int8: Option<Int8Scales>,
    cpu: Cpu,
) {
    use amx::BLOCK;
    let b_layout = w_layout.amx_weights();
    amx::configure();
    let mut c = [0f32; BLOCK * BLOCK];
    for half in 0..PANEL / BLOCK {
        let first_col = panel * PANEL + half * BLOCK;
        if first_col >= n {
            break;
        }
        let cols = BLOCK.min(n - first_col);
        for r0 in block.clone().step_by(BLOCK) {
            let a = a[r0 / BLOCK * layout.block..].as_ptr();
            let b = wp[w_layout.step(first_step) + w_layout.group(2 * half)..].as_ptr();
            // bf16 sums start from the bias, loaded into the tiles (a whole block's worth).
            let bias_in_tiles = match init {
                MatmulInit::Bias(bias) if int8.is_none() && cols == BLOCK => {
                    Some(&bias[first_col..first_col + BLOCK])
                }
                _ => None,
            };
            // A whole block with nothing to apply goes straight into `out`. With an epilogue
            // it goes through `c` instead: rows of `out` a multiple of 4 KiB apart share their
            // L1 sets, and re-reading 32 of them just stored would miss.
            if r0 + BLOCK <= rows && cols == BLOCK && int8.is_none() && epilogue.is_empty() {
                let init = match (init, bias_in_tiles) {
                    (_, Some(bias)) => amx::TileInit::Broadcast(bias.as_ptr()),
                    (MatmulInit::Accumulate, _) => amx::TileInit::Accumulate,
                    _ => amx::TileInit::Zero,
                };
                let ptr = out_ptr.get().wrapping_add(r0 * out_stride + first_col);
                // SAFETY: tiles configured above; `a` has 32 padded rows from r0 of `steps`
                // tile steps, the panel `steps` of 64 columns; the 32 × 32 output block lies
                // inside `out` (rows r0..r0+32 < rows, columns first_col..+32 ≤ n) and this
                // panel's task alone touches it.
                unsafe {
                    amx::block(
                        a,
                        layout,
                        parts,
                        b,
                        b_layout,
                        steps,
                        amx::Output {
                            ptr,
                            row_stride: out_stride,
                            init,
                        },
                        false,
                    )
                };
                continue;
            }
            let tile_init = bias_in_tiles.map_or(amx::TileInit::Zero, |bias| {
                amx::TileInit::Broadcast(bias.as_ptr())
            });
            let output = amx::Output {
                ptr: c.as_mut_ptr(),
                row_stride: BLOCK,
                init: tile_init,
            };
            // SAFETY: as above, with the sums going to `c` (32 × 32).
            unsafe { amx::block(a, layout, parts, b, b_layout, steps, output, int8.is_some()) };
            if let Some(scales) = int8 {
                scales.apply(&mut c, r0, first_col);
            }
            let init = if bias_in_tiles.is_some() {
                MatmulInit::Zero
            } else {
                init
            };
            let live = BLOCK.min(rows - r0);
            // SAFETY: this panel's task alone writes these columns of these rows.
            unsafe {
                finish_block(
                    &mut c,
                    BLOCK,
                    live,
                    cols,
                    (out_ptr, out_stride),
                    (r0, first_col),
                    init,
                    &epilogue,
                    cpu,
                )
            };
        }
    }
}
