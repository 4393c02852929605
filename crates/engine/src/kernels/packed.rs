//! `y = x · Wᵀ` on AVX-512 with weights packed once into panels: f32 (`VFMADD231PS`, the exact
//! path), bf16 (`VDPBF16PS`, twice the rate, activations rounded to bf16) and int8 (`VPDPBUSD`,
//! activations quantised per row; for CPUs without AMX-INT8, see [`PackedType::Int8`]).
//!
//! Why our own kernel: the `gemm` crate only dispatches to AVX2 (256-bit) micro-kernels on stable
//! Rust, half of what AVX-512 gives on the reference machine, and has no bf16 kernel at all.
//!
//! Layout: output columns are grouped in panels of [`PANEL`] = 64 (four 16-lane registers). A
//! panel stores, for each step of the input dimension (one value for f32, a pair for bf16), its
//! 64 columns side by side, so the micro-kernel streams the panel linearly. The micro-kernel
//! holds a `rows × 64` tile of f32 sums in 24 registers, broadcasts one activation per row per
//! step and issues `rows × 4` multiply-adds. Every output element is summed in the same order
//! whatever the number of rows, so a row's result does not depend on the rest of the batch.
//! Threads split the panels; each keeps its panel hot in L2 while it walks the rows.

use std::ops::Range;

use half::bf16;
use rayon::prelude::*;

use super::matmul::MatmulInit;

/// Output columns per panel (four 16-lane registers).
pub const PANEL: usize = 64;
/// Rows per micro-kernel call: 6 × 4 accumulators + 4 weight registers + 1 broadcast ≤ 32.
const MAX_ROWS: usize = 6;

/// Whether this CPU has AVX-512F (checked once).
pub fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU has AVX512_BF16 (checked once).
pub fn bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            avx512_available()
                && is_x86_feature_detected!("avx512bf16")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU has AVX512_VNNI (`VPDPBUSD`) with AVX512BW (checked once).
pub fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            avx512_available() && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512vnni")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether int8 products can run: on AMX-INT8 tiles or with AVX512_VNNI.
pub fn int8_available() -> bool {
    amx_int8_available() || vnni_available()
}

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
    /// of summation: the exact path, on AMX tiles.
    Bf16x3,
    /// int8 weights, quantised symmetrically per output column (`w ≈ q · max|w| / 127`), four
    /// input positions per step (steps padded to whole AMX tiles); activations are quantised per
    /// row on the fly the same way, products summed in i32 on AMX (`TDPBSSD`) or with
    /// AVX512_VNNI (`VPDPBUSD`), and scaled back ([`int8_available`]). Both kernels sum the same
    /// integers exactly and scale each chunk of [`INT8_CHUNK_STEPS`] steps in the same order, so
    /// they give the same bits.
    Int8,
}

impl PackedType {
    /// Steps along an input dimension of `k` values.
    fn steps(self, k: usize) -> usize {
        match self {
            PackedType::F32 => k,
            // Whole AMX tile steps, so that any `k` (the LoRA inputs after 1024 values, say) can
            // take AMX; the zero pairs cost the other kernels at most 15 steps.
            PackedType::Bf16 | PackedType::Bf16x3 => k.div_ceil(2).next_multiple_of(TILE_STEPS),
            PackedType::Int8 => k.div_ceil(4).next_multiple_of(INT8_TILE_STEPS),
        }
    }

    /// bf16 parts each activation is split into (0: f32 activations).
    fn activation_parts(self) -> usize {
        match self {
            PackedType::F32 => 0,
            PackedType::Bf16 => 1,
            PackedType::Bf16x3 => 3,
            PackedType::Int8 => 1,
        }
    }
}

/// Quads (64 int8 inputs) per AMX int8 tile step; int8 steps are padded to a multiple of it.
const INT8_TILE_STEPS: usize = 16;

/// Tile steps per chunk of the input dimension on AMX (see [`matmul_amx`]).
const AMX_CHUNK_TILE_STEPS: usize = 32;

/// int8 steps (quads; 2048 inputs) whose i32 sums are scaled to f32 and added to the output
/// together: AMX's chunk, which the VNNI kernel follows so that both round the same way.
const INT8_CHUNK_STEPS: usize = AMX_CHUNK_TILE_STEPS * INT8_TILE_STEPS;

/// Chunks of [`INT8_CHUNK_STEPS`] in `steps` (at least one, so that `k = 0` still stores).
fn int8_chunks(steps: usize) -> usize {
    steps.div_ceil(INT8_CHUNK_STEPS).max(1)
}

/// Steps (pair or quad rows) in one AMX weight tile.
const TILE_STEPS: usize = 16;

/// Where a panel's values lie in its `steps × 64` slots.
///
/// `Linear`: step after step, the 64 columns of a step side by side (what the FMA kernels read
/// with four contiguous loads). `Tiled`: each half of 32 columns on its own, `steps × 32`
/// slots, as AMX weight tiles of 16 steps × 16 columns (1 KiB, rows 64 bytes apart), the two
/// tiles of a tile step side by side. A block's weights are then one contiguous stream, 2 KiB
/// per tile step, that fills every L1 set and can be prefetched; in the linear layout the 16
/// rows of a tile are 256 bytes apart, so a tile touches 16 lines 4 KiB apart (a quarter of
/// the L1 sets) and a new page.
///
/// Only bf16 weights take the tiled layout. `GEMM_SPEED_LAYOUTS=1 cargo run --release -p
/// jina-engine --example gemm_speed` times both alternately in one process: on the reference
/// machine (2 threads, 1024 rows) tiled bf16 ran at 1.02–1.51× linear over three runs (median
/// of 30 products per shape), but bf16x3 (three activation parts per weight tile) at 0.93–1.10×
/// and int8 at 0.88–0.96× for 1024 inputs (1.04–1.09× for 4096).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PanelLayout {
    Linear,
    Tiled { steps: usize },
}

impl PanelLayout {
    fn new(ty: PackedType, steps: usize) -> Self {
        match ty {
            PackedType::Bf16 if steps.is_multiple_of(TILE_STEPS) => PanelLayout::Tiled { steps },
            _ => PanelLayout::Linear,
        }
    }

    /// Offset in a panel of step `s`'s first column.
    #[inline(always)]
    fn step(self, s: usize) -> usize {
        match self {
            PanelLayout::Linear => s * PANEL,
            PanelLayout::Tiled { .. } => (s / TILE_STEPS) * 2 * TILE_STEPS * 16 + (s % TILE_STEPS) * 16,
        }
    }

    /// Offset of column group `g` (columns 16g..16g+16) from a step's first column.
    #[inline(always)]
    fn group(self, g: usize) -> usize {
        match self {
            PanelLayout::Linear => g * 16,
            PanelLayout::Tiled { steps } => (g / 2) * steps * (PANEL / 2) + (g % 2) * TILE_STEPS * 16,
        }
    }

    /// How [`amx::block`] finds a block's weight tiles in a panel of this layout.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    fn amx_weights(self) -> amx::BLayout {
        match self {
            PanelLayout::Tiled { .. } => amx::BLayout { stride: 64, step: 2 * TILE_STEPS * 16, second: TILE_STEPS * 16, prefetch: true },
            PanelLayout::Linear => amx::BLayout { stride: PANEL * 4, step: TILE_STEPS * PANEL, second: 16, prefetch: false },
        }
    }

    /// Offset in a panel of step `s`, column `c`.
    #[inline(always)]
    fn at(self, s: usize, c: usize) -> usize {
        self.step(s) + self.group(c / 16) + c % 16
    }
}

/// A weight matrix `[n, k]` packed into panels.
pub struct PackedMatrix {
    ty: PackedType,
    n: usize,
    k: usize,
    /// Steps along the input dimension: `k` for f32, `ceil(k / 2)` for bf16 rounded up to
    /// whole tiles.
    steps: usize,
    /// `[panel][steps × 64]` in the panel's [`PanelLayout`]: f32 bits, two bf16 (even position
    /// in the low half), or four int8 (lowest position in the low byte).
    data: Vec<u32>,
    /// int8 only: the scale of each column (`w ≈ q · scale`).
    scales: Vec<f32>,
    /// Tiled (`true`) or linear layout whatever the type's default ([`PackedMatrix::pack_tiled`]).
    tiled: Option<bool>,
    /// int8 only: `[panel][chunk][column in panel]`, the sum of the column's int8 weights over
    /// each chunk of [`INT8_CHUNK_STEPS`] steps (0 past `n`). The VNNI kernel's activations are
    /// unsigned (`q + 128`), so its sums exceed the signed ones by 128 times this.
    col_sums: Vec<i32>,
}

impl PackedMatrix {
    /// Packs row-major f32 weights `[n, k]` (bf16 rounds to nearest even; exact for values
    /// that came from a bf16 checkpoint).
    pub fn pack(w: &[f32], n: usize, k: usize, ty: PackedType) -> Self {
        Self::pack_strided(w, k, n, k, ty)
    }

    /// Packs `n` rows of `k` values that start `stride` apart in `w`.
    pub fn pack_strided(w: &[f32], stride: usize, n: usize, k: usize, ty: PackedType) -> Self {
        let mut packed = PackedMatrix::empty(ty);
        packed.repack_strided(w, stride, n, k);
        packed
    }

    /// Packs new contents into this matrix, reusing its buffer (attention re-packs K and V
    /// for every head).
    pub fn repack_strided(&mut self, w: &[f32], stride: usize, n: usize, k: usize) {
        assert!(n == 0 || w.len() >= (n - 1) * stride + k);
        let steps = self.ty.steps(k);
        let panels = n.div_ceil(PANEL);
        self.n = n;
        self.k = k;
        self.steps = steps;
        self.data.clear();
        self.data.resize(panels * steps * PANEL, 0);
        let ty = self.ty;
        self.scales = match ty {
            PackedType::Int8 => (0..n).map(|c| int8_scale(&w[c * stride..][..k])).collect(),
            _ => Vec::new(),
        };
        let scales = &self.scales;
        let layout = self.layout();
        let fill = |panel: usize, dst: &mut [u32]| {
            for c in 0..PANEL.min(n - panel * PANEL) {
                let row = &w[(panel * PANEL + c) * stride..][..k];
                for s in 0..steps {
                    dst[layout.at(s, c)] = match ty {
                        PackedType::F32 => row[s].to_bits(),
                        PackedType::Bf16 | PackedType::Bf16x3 => bf16_pair(row, s),
                        PackedType::Int8 => int8_quad(row, s, 1.0 / scales[panel * PANEL + c]),
                    };
                }
            }
        };
        let parallel = panels * steps * PANEL >= 1 << 16 && rayon::current_thread_index().is_none();
        if parallel {
            self.data.par_chunks_mut(steps * PANEL).enumerate().for_each(|(p, dst)| fill(p, dst));
        } else {
            for (p, dst) in self.data.chunks_mut((steps * PANEL).max(1)).enumerate() {
                fill(p, dst);
            }
        }
        self.col_sums = match ty {
            PackedType::Int8 => int8_column_sums(&self.data, panels, layout, steps, parallel),
            _ => Vec::new(),
        };
    }

    /// Packs the transpose of `k` rows of `n` values that start `stride` apart: element
    /// `(col c, position s)` is `v[s·stride + c]` (attention's V, whose rows are keys).
    pub fn repack_transposed(&mut self, v: &[f32], stride: usize, k: usize, n: usize) {
        assert!(k == 0 || v.len() >= (k - 1) * stride + n);
        assert!(self.ty != PackedType::Int8, "int8 packs weights only (attention runs in bf16)");
        let steps = self.ty.steps(k);
        let panels = n.div_ceil(PANEL);
        self.n = n;
        self.k = k;
        self.steps = steps;
        self.data.clear();
        self.data.resize(panels * steps * PANEL, 0);
        let (layout, ty) = (self.layout(), self.ty);
        for panel in 0..panels {
            let cols = PANEL.min(n - panel * PANEL);
            let dst = &mut self.data[panel * steps * PANEL..][..steps * PANEL];
            for s in 0..steps {
                for c in 0..cols {
                    let col = panel * PANEL + c;
                    dst[layout.at(s, c)] = match ty {
                        PackedType::F32 => v[s * stride + col].to_bits(),
                        PackedType::Bf16 | PackedType::Bf16x3 | PackedType::Int8 if 2 * s >= k => 0,
                        PackedType::Bf16 | PackedType::Bf16x3 | PackedType::Int8 => {
                            let lo = bf16::from_f32(v[2 * s * stride + col]).to_bits() as u32;
                            let hi = if 2 * s + 1 < k { bf16::from_f32(v[(2 * s + 1) * stride + col]).to_bits() as u32 } else { 0 };
                            lo | (hi << 16)
                        }
                    };
                }
            }
        }
    }

    /// An empty matrix of the given type, to be filled by [`PackedMatrix::repack_strided`].
    pub fn empty(ty: PackedType) -> Self {
        PackedMatrix { ty, n: 0, k: 0, steps: 0, data: Vec::new(), scales: Vec::new(), tiled: None, col_sums: Vec::new() }
    }

    /// Output width.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Input width.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Element type.
    pub fn ty(&self) -> PackedType {
        self.ty
    }

    /// How each panel's values are laid out.
    fn layout(&self) -> PanelLayout {
        match self.tiled {
            Some(true) if self.ty != PackedType::F32 && self.steps.is_multiple_of(TILE_STEPS) => PanelLayout::Tiled { steps: self.steps },
            Some(_) => PanelLayout::Linear,
            None => PanelLayout::new(self.ty, self.steps),
        }
    }

    /// [`PackedMatrix::pack`] into the tiled (where the steps allow) or the linear panel layout,
    /// whatever the type's default: for `examples/gemm_speed` to compare the two in one process.
    #[doc(hidden)]
    pub fn pack_tiled(w: &[f32], n: usize, k: usize, ty: PackedType, tiled: bool) -> Self {
        let mut packed = PackedMatrix { tiled: Some(tiled), ..PackedMatrix::empty(ty) };
        packed.repack_strided(w, k, n, k);
        packed
    }

    /// The stored weight at `(col, i)` as f32 (for tests).
    pub fn get(&self, col: usize, i: usize) -> f32 {
        let (panel, c) = (col / PANEL, col % PANEL);
        let at = |s: usize| self.data[panel * self.steps * PANEL + self.layout().at(s, c)];
        match self.ty {
            PackedType::F32 => f32::from_bits(at(i)),
            PackedType::Bf16 | PackedType::Bf16x3 => {
                let pair = at(i / 2);
                bf16::from_bits(if i % 2 == 0 { pair as u16 } else { (pair >> 16) as u16 }).to_f32()
            }
            PackedType::Int8 => {
                let quad = at(i / 4);
                (quad >> (8 * (i % 4))) as u8 as i8 as f32 * self.scales[col]
            }
        }
    }
}

/// bf16 of `row[2s]` in the low half and of `row[2s + 1]` in the high half (0 past the row).
fn bf16_pair(row: &[f32], s: usize) -> u32 {
    let lo = row.get(2 * s).map_or(0, |&v| bf16::from_f32(v).to_bits() as u32);
    let hi = row.get(2 * s + 1).map_or(0, |&v| bf16::from_f32(v).to_bits() as u32);
    lo | (hi << 16)
}

/// The symmetric int8 scale of `values`: the largest magnitude maps to 127 (1 for all zeros).
fn int8_scale(values: &[f32]) -> f32 {
    // Sixteen running maxima, in the comparison form that compiles to vector instructions.
    let mut lanes = [0f32; 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            let a = v.abs();
            *m = if a > *m { a } else { *m };
        }
    }
    let max = chunks.remainder().iter().chain(&lanes).fold(0f32, |m, v| m.max(v.abs()));
    if max > 0.0 && max.is_finite() {
        max / 127.0
    } else {
        1.0
    }
}

/// Inputs `4s .. 4s + 3` of `row` times `inverse_scale`, rounded to int8 (0 past the end).
fn int8_quad(row: &[f32], s: usize, inverse_scale: f32) -> u32 {
    (0..4).fold(0u32, |quad, j| {
        let q = row.get(4 * s + j).map_or(0, |&v| (v * inverse_scale).round().clamp(-127.0, 127.0) as i8);
        quad | (q as u8 as u32) << (8 * j)
    })
}

/// [`PackedMatrix::col_sums`] of packed int8 `data` of `panels` panels of `steps` steps.
fn int8_column_sums(data: &[u32], panels: usize, layout: PanelLayout, steps: usize, parallel: bool) -> Vec<i32> {
    let chunks = int8_chunks(steps);
    let mut sums = vec![0i32; panels * chunks * PANEL];
    let sum_panel = |(panel, dst): (&[u32], &mut [i32])| {
        for s in 0..steps {
            let chunk = &mut dst[s / INT8_CHUNK_STEPS * PANEL..][..PANEL];
            for (c, sum) in chunk.iter_mut().enumerate() {
                *sum += panel[layout.at(s, c)].to_le_bytes().iter().map(|&b| b as i8 as i32).sum::<i32>();
            }
        }
    };
    let panel_len = (steps * PANEL).max(1);
    if parallel {
        data.par_chunks(panel_len).zip(sums.par_chunks_mut(chunks * PANEL)).for_each(sum_panel);
    } else {
        data.chunks(panel_len).zip(sums.chunks_mut(chunks * PANEL)).for_each(sum_panel);
    }
    sums
}

/// One activation row as int8 quads for [`PackedType::Int8`] (`dst` is `steps` quads, the
/// padding zero); returns its scale. Rounds half to even (weights round half away from zero).
fn quantize_row(row: &[f32], dst: &mut [u32]) -> f32 {
    quantize_row_flipped(row, dst, 0)
}

/// [`quantize_row`] with every byte, padding included, xor-ed with `flip` in the same pass.
fn quantize_row_flipped(row: &[f32], dst: &mut [u32], flip: u8) -> f32 {
    // 1.5·2^23 + q holds the integer q in its low mantissa bits, so its low byte is q as a
    // two's-complement int8: a vectorisable rounding, where `as i8` is compiled lane by lane.
    const ROUND: f32 = 12_582_912.0;
    let scale = int8_scale(row);
    let inverse = 1.0 / scale;
    let quads = dst.len();
    // SAFETY: a u32 slice viewed as its bytes (little-endian: input 4s + j is byte j of quad s).
    let bytes = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut u8, 4 * quads) };
    for (b, v) in bytes.iter_mut().zip(row) {
        *b = ((v * inverse).clamp(-127.0, 127.0) + ROUND).to_bits() as u8 ^ flip;
    }
    bytes[row.len().min(4 * quads)..].fill(flip);
    scale
}

/// [`quantize_row`] with 128 added to each int8, the unsigned operand `VPDPBUSD` takes: flipping
/// the sign bit of a two's-complement byte adds 128. The padding becomes 128 too, which meets
/// zero weights.
#[cfg(target_arch = "x86_64")]
fn quantize_row_unsigned(row: &[f32], dst: &mut [u32]) -> f32 {
    quantize_row_flipped(row, dst, 0x80)
}

/// `rows` rows of `k` values (`stride` apart) as [`quantize_row_unsigned`] quads, `steps` a
/// row, and the scale of each row.
#[cfg(target_arch = "x86_64")]
fn quantize_rows_unsigned(x: &[f32], stride: usize, rows: usize, k: usize, steps: usize, parallel: bool) -> (Vec<u32>, Vec<f32>) {
    let mut quads = vec![0u32; rows * steps];
    let mut scales = vec![0f32; rows];
    let convert = |(r, (dst, scale)): (usize, (&mut [u32], &mut f32))| {
        *scale = quantize_row_unsigned(&x[r * stride..r * stride + k], dst);
    };
    if parallel {
        quads.par_chunks_exact_mut(steps.max(1)).zip(&mut scales).enumerate().for_each(convert);
    } else {
        quads.chunks_exact_mut(steps.max(1)).zip(&mut scales).enumerate().for_each(convert);
    }
    (quads, scales)
}

/// Rounds `rows` rows of `k` values (`stride` apart) to bf16, in a buffer of `padded_rows`
/// rows whose extra rows are zero (AMX works on 32-row blocks). Each row holds `parts` blocks
/// of `steps` pairs: block 0 is bf16(x) and each next block the bf16 of what the blocks before
/// it left over, so with 3 parts they sum to x exactly (8 + 8 + 8 significant bits; for
/// |x| < 2^-100 the bits below 2^-126 are lost, as the conversion flushes subnormals).
#[allow(clippy::too_many_arguments)]
fn bf16_rows(
    x: &[f32],
    stride: usize,
    rows: usize,
    k: usize,
    steps: usize,
    padded_rows: usize,
    parts: usize,
    parallel: bool,
) -> Vec<u32> {
    let row_pairs = parts * steps;
    let mut pairs = vec![0u32; padded_rows * row_pairs];
    if row_pairs == 0 {
        return pairs;
    }
    let convert = |r: usize, dst: &mut [u32]| split_row(&x[r * stride..r * stride + k], dst, steps, parts);
    let filled = &mut pairs[..rows * row_pairs];
    if parallel {
        filled.par_chunks_exact_mut(row_pairs).enumerate().for_each(|(r, dst)| convert(r, dst));
    } else {
        filled.chunks_exact_mut(row_pairs).enumerate().for_each(|(r, dst)| convert(r, dst));
    }
    pairs
}

/// One row of [`bf16_rows`]: `dst` holds `parts` blocks of `steps` pairs, zero-filled.
fn split_row(row: &[f32], dst: &mut [u32], steps: usize, parts: usize) {
    debug_assert!(row.len() <= 2 * steps && dst.len() == parts * steps);
    #[cfg(target_arch = "x86_64")]
    if bf16_available() {
        // SAFETY: the features were checked; `dst` has room for `parts` blocks of 2·steps bf16.
        return unsafe { split_row_avx512(row, dst, steps, parts) };
    }
    for p in 0..parts {
        for s in 0..steps {
            let part_of = |i: usize| row.get(i).map_or(0, |&v| bf16_part(v, p));
            dst[p * steps + s] = part_of(2 * s) as u32 | (part_of(2 * s + 1) as u32) << 16;
        }
    }
}

/// Bits of part `p` of `v`'s exact split into bf16 parts (rounding to nearest even).
fn bf16_part(v: f32, p: usize) -> u16 {
    let mut rest = v;
    for _ in 0..p {
        rest -= bf16::from_f32(rest).to_f32();
    }
    bf16::from_f32(rest).to_bits()
}

/// [`split_row`] with `VCVTNEPS2BF16`: 16 values at a time, the tail by a masked load.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn split_row_avx512(row: &[f32], dst: &mut [u32], steps: usize, parts: usize) {
    use std::arch::x86_64::*;
    let out = dst.as_mut_ptr() as *mut u16;
    for i in (0..row.len()).step_by(16) {
        let n = (row.len() - i).min(16);
        let mask: u16 = if n == 16 { u16::MAX } else { (1u16 << n) - 1 };
        let mut rest = _mm512_maskz_loadu_ps(mask, row.as_ptr().add(i));
        for p in 0..parts {
            let part = _mm512_cvtneps_pbh(rest);
            _mm256_mask_storeu_epi16(out.add(2 * p * steps + i) as *mut i16, mask, std::mem::transmute::<__m256bh, __m256i>(part));
            if p + 1 < parts {
                rest = _mm512_sub_ps(rest, _mm512_cvtpbh_ps(part));
            }
        }
    }
}

/// [`split_row`] straight into AMX tile rows: part `p` of the 32 values of tile step `s` (16
/// pairs, zeros past the row's end) goes to `dst + (s·parts + p)·part_stride`. The same
/// conversions as `split_row_avx512`, so the same bits, without a pass through a row buffer
/// and a second one copying it into the tiles (that copy alone took 5 % of the samples of an
/// f32 forward at 4×512).
///
/// # Safety
/// AVX512_BF16 available; `row.len() ≤ 32·tile_steps`; `dst` valid for 16 `u32` at every
/// `(s·parts + p)·part_stride`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn split_row_into_tiles(row: &[f32], tile_steps: usize, parts: usize, dst: *mut u32, part_stride: usize) {
    use std::arch::x86_64::*;
    let mask = |from: usize| -> u16 {
        match row.len().saturating_sub(from) {
            n if n >= 16 => u16::MAX,
            n => (1u16 << n) - 1,
        }
    };
    for s in 0..tile_steps {
        let i = 32 * s;
        // Masked loads read nothing past the row (the pointer is only offset, never read there).
        let mut lo = _mm512_maskz_loadu_ps(mask(i), row.as_ptr().wrapping_add(i));
        let mut hi = _mm512_maskz_loadu_ps(mask(i + 16), row.as_ptr().wrapping_add(i + 16));
        for p in 0..parts {
            let part = _mm512_cvtne2ps_pbh(hi, lo);
            let bits = std::mem::transmute::<__m512bh, __m512i>(part);
            _mm512_storeu_si512(dst.add((s * parts + p) * part_stride) as *mut __m512i, bits);
            if p + 1 < parts {
                let lo_part = std::mem::transmute::<__m256i, __m256bh>(_mm512_castsi512_si256(bits));
                let hi_part = std::mem::transmute::<__m256i, __m256bh>(_mm512_extracti64x4_epi64::<1>(bits));
                lo = _mm512_sub_ps(lo, _mm512_cvtpbh_ps(lo_part));
                hi = _mm512_sub_ps(hi, _mm512_cvtpbh_ps(hi_part));
            }
        }
    }
}

/// Inputs appended to every row of a product's `x`: LoRA's down-projections, so that the weights'
/// extra columns (each adapter's up-projection, [`PackedMatrix::pack`]ed after `W`) add the
/// low-rank term inside the product itself, for bf16 and bf16x3 weights.
///
/// Row `r` of `x` is followed by `slots · rank` values: `low[r·rank..(r+1)·rank]` in slot
/// `slot[r]` (its adapter), zeros in the other slots and everywhere for a row without adapter.
#[derive(Clone, Copy)]
pub struct LowRankInputs<'a> {
    /// `rows × rank`.
    pub low: &'a [f32],
    /// Columns of `low`: LoRA's rank.
    pub rank: usize,
    /// Each row's adapter.
    pub slot: &'a [Option<usize>],
    /// Adapters: the extra inputs of a row are `slots · rank`.
    pub slots: usize,
}

impl LowRankInputs<'_> {
    /// Extra inputs of a row.
    fn len(&self) -> usize {
        self.slots * self.rank
    }

    /// Row `r`'s extra inputs, into `dst` (`len()` values).
    fn row(&self, r: usize, dst: &mut [f32]) {
        dst.fill(0.0);
        if let Some(slot) = self.slot[r] {
            dst[slot * self.rank..][..self.rank].copy_from_slice(&self.low[r * self.rank..][..self.rank]);
        }
    }
}

/// Row `r` of `x` (its first `k_x` values) followed by its extra inputs, into `dst`.
fn extended_row(x: &[f32], stride: usize, k_x: usize, extra: &LowRankInputs, r: usize, dst: &mut [f32]) {
    dst[..k_x].copy_from_slice(&x[r * stride..][..k_x]);
    extra.row(r, &mut dst[k_x..]);
}

/// Activations in the form the kernel of `ty` reads: f32 rows as they are, or bf16 pairs.
enum Activations<'a> {
    F32 { x: &'a [f32], stride: usize },
    /// `parts` blocks of bf16 pairs per row (see [`bf16_rows`]).
    Bf16 { pairs: Vec<u32>, parts: usize },
}

impl Activations<'_> {
    fn prepare<'a>(x: &'a [f32], stride: usize, rows: usize, w: &PackedMatrix, extra: Option<LowRankInputs>) -> Activations<'a> {
        match w.ty {
            PackedType::F32 => Activations::F32 { x, stride },
            PackedType::Int8 => unreachable!("int8 products run in matmul_amx or matmul_vnni"),
            PackedType::Bf16 | PackedType::Bf16x3 => {
                let parts = w.ty.activation_parts();
                let pairs = match extra {
                    None => bf16_rows(x, stride, rows, w.k, w.steps, rows, parts, rows >= 64),
                    Some(extra) => {
                        // Few rows take this kernel: each is extended in a copy first.
                        let k_x = w.k - extra.len();
                        let mut rows_x = vec![0f32; rows * w.k];
                        for (r, dst) in rows_x.chunks_exact_mut(w.k).enumerate() {
                            extended_row(x, stride, k_x, &extra, r, dst);
                        }
                        bf16_rows(&rows_x, w.k, rows, w.k, w.steps, rows, parts, rows >= 64)
                    }
                };
                Activations::Bf16 { pairs, parts }
            }
        }
    }
}

/// `out[rows × n] (init) + x[rows × k] · Wᵀ`; rows of `x` are `x_stride` apart, rows of `out`
/// `out_stride` apart. `parallel` splits panels across the rayon pool. Requires
/// [`avx512_available`] (and [`bf16_available`] for bf16).
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
    matmul_with(x, x_stride, rows, w, out, out_stride, init, Epilogue::default(), parallel)
}

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
    /// Exact GELU of the finished value ([`super::elementwise::gelu_erf_in_place`]).
    pub gelu: bool,
}

impl Epilogue<'_> {
    fn is_empty(&self) -> bool {
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
unsafe fn finish_block(
    sums: &mut [f32],
    stride: usize,
    live: usize,
    cols: usize,
    (out, out_stride): (SharedOut, usize),
    (r0, first_col): (usize, usize),
    init: MatmulInit,
    epilogue: &Epilogue,
) {
    // SAFETY: the caller's contract.
    let dst = |i: usize| unsafe { std::slice::from_raw_parts_mut(out.get().add((r0 + i) * out_stride + first_col), cols) };
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
            MatmulInit::Bias(bias) => row.iter_mut().zip(&bias[first_col..]).for_each(|(s, b)| *s += b),
            MatmulInit::Accumulate => row.iter_mut().zip(dst(i).iter()).for_each(|(s, d)| *s += d),
        }
        epilogue.add_low_rank(r0 + i, row, first_col);
    }
    if epilogue.gelu {
        // Whole rows of the block, columns past `cols` included: they hold finite sums and are
        // not stored, and one call over the block amortises the function's set-up.
        super::elementwise::gelu_slice(&mut sums[..live * stride]);
    }
    for i in 0..live {
        copy_row(dst(i), &sums[i * stride..][..cols]);
    }
}

/// `dst.copy_from_slice(src)`, inlined for whole blocks (a call to `memcpy` for 128 bytes cost
/// more than the copy).
#[inline(always)]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    match dst.len() {
        32 => dst[..32].copy_from_slice(&src[..32]),
        64 => dst[..64].copy_from_slice(&src[..64]),
        _ => dst.copy_from_slice(src),
    }
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
    matmul_extended(x, x_stride, rows, None, w, out, out_stride, init, epilogue, parallel)
}

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
            assert!(matches!(w.ty, PackedType::Bf16 | PackedType::Bf16x3), "extra inputs need bf16 or bf16x3 weights");
            assert!(extra.len() <= w.k && extra.low.len() >= rows * extra.rank && extra.slot.len() >= rows);
            assert!(extra.slot[..rows].iter().flatten().all(|&s| s < extra.slots), "adapter slot out of range");
            w.k - extra.len()
        }
    };
    match w.ty {
        PackedType::F32 => assert!(avx512_available(), "the packed f32 kernel needs AVX-512"),
        PackedType::Bf16 | PackedType::Bf16x3 => {
            assert!(bf16_available(), "the packed bf16 kernel needs AVX512_BF16")
        }
        PackedType::Int8 => assert!(int8_available(), "the int8 kernel needs AMX-INT8 or AVX512_VNNI"),
    }
    if rows == 0 || w.n == 0 {
        return;
    }
    assert!(x.len() >= (rows - 1) * x_stride + k_x, "x too short");
    assert!(out.len() >= (rows - 1) * out_stride + w.n && out_stride >= w.n, "out too short");
    if let MatmulInit::Bias(b) = init {
        assert_eq!(b.len(), w.n);
    }
    if let Some(LowRank { low, rank, up }) = epilogue.low_rank {
        assert!(low.len() >= rows * rank && up.len() >= rows, "low-rank term too short");
        assert!(up.iter().flatten().all(|u| u.len() == rank * w.n), "up-projection of the wrong size");
    }
    // AMX pads the rows to 32. For one bf16 part a few rows run faster on AVX512_BF16; with
    // three parts that kernel does 1.5× the work of the f32 one, so bf16x3 takes AMX at any size.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    let on_amx = match w.ty {
        PackedType::F32 => false,
        PackedType::Bf16 => rows >= 16 && amx_available(),
        PackedType::Bf16x3 => amx_available(),
        PackedType::Int8 => (rows >= INT8_AMX_MIN_ROWS || !vnni_available()) && amx_int8_available(),
    };
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if on_amx && w.steps % amx::PAIRS_PER_STEP == 0 {
        return matmul_amx((x, x_stride, extra), rows, w, out, out_stride, init, epilogue, parallel);
    }
    #[cfg(target_arch = "x86_64")]
    if w.ty == PackedType::Int8 {
        return matmul_vnni(x, x_stride, rows, w, out, out_stride, init, epilogue, parallel);
    }
    let acts = Activations::prepare(x, x_stride, rows, w, extra);
    let out_ptr = SharedOut(out.as_mut_ptr());
    let run_panel = |panel: usize, block: Range<usize>| {
        let cols = PANEL.min(w.n - panel * PANEL);
        let wp = &w.data[panel * w.steps * PANEL..(panel + 1) * w.steps * PANEL];
        let mut tile = [[0f32; PANEL]; MAX_ROWS];
        for r0 in block.clone().step_by(MAX_ROWS) {
            let mr = MAX_ROWS.min(block.end - r0);
            // SAFETY: the features were checked above; `x`/`pairs` hold rows r0..r0+mr of
            // `steps` steps each and `wp` one panel of `steps` steps.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                match &acts {
                    Activations::F32 { x, stride } => {
                        avx512::tile_f32(mr, x.as_ptr().add(r0 * *stride), *stride, w.steps, wp, &mut tile)
                    }
                    Activations::Bf16 { pairs, parts } => {
                        let row_pairs = parts * w.steps;
                        let panel = avx512::Bf16Panel { w: wp, layout: w.layout() };
                        avx512::tile_bf16(mr, pairs.as_ptr().add(r0 * row_pairs), row_pairs, *parts, w.steps, panel, &mut tile)
                    }
                }
            }
            // SAFETY: this panel's task alone writes columns panel·64 .. panel·64 + cols of
            // rows r0..r0 + mr, and they lie inside `out` (asserted above).
            unsafe {
                let sums = tile.as_flattened_mut();
                finish_block(sums, PANEL, mr, cols, (out_ptr, out_stride), (r0, panel * PANEL), init, &epilogue)
            };
        }
    };
    let row_bytes = match &acts {
        Activations::F32 { .. } => w.k * 4,
        Activations::Bf16 { parts, .. } => parts * w.steps * 4,
    };
    let parallel = parallel && rows * w.n * w.k >= 1 << 18;
    for_each_block(rows, row_bytes, MAX_ROWS, w.n.div_ceil(PANEL), parallel, run_panel);
}

/// Rows from which int8 products take AMX-INT8 when VNNI is there too. AMX pads the rows to
/// 32: on 2 threads of the reference machine, VNNI took 0.55–0.9× AMX's time up to 16 rows,
/// about as long at 20, and 1.1–1.7× from 24 rows on (k × n = 1024 × 3072 and 4096 × 1024).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
const INT8_AMX_MIN_ROWS: usize = 20;

/// The int8 product with `VPDPBUSD` (AVX512_VNNI), for CPUs without AMX-INT8 and for few rows.
/// The activations are quantised as for AMX but stored with 128 added, as `VPDPBUSD` takes them
/// unsigned; the accumulators start at −128·Σw of their column ([`PackedMatrix::col_sums`]),
/// so the i32 sums are AMX's exactly. Like AMX, each chunk of [`INT8_CHUNK_STEPS`] steps is
/// scaled and added to the output on its own, so both kernels give the same bits.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn matmul_vnni(
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
    assert!(vnni_available(), "the VNNI int8 kernel needs AVX512_VNNI");
    let steps = w.steps;
    let chunks = int8_chunks(steps);
    let (quads, row_scales) = quantize_rows_unsigned(x, x_stride, rows, w.k, steps, parallel && rows >= 64);
    let out_ptr = SharedOut(out.as_mut_ptr());
    let run_panel = |panel: usize, block: Range<usize>| {
        let first_col = panel * PANEL;
        let cols = PANEL.min(w.n - first_col);
        // The kernel reads 64 column scales; past `n` they meet zero sums and are not stored.
        let mut col_scales = [0f32; PANEL];
        col_scales[..cols].copy_from_slice(&w.scales[first_col..first_col + cols]);
        let wp = &w.data[panel * steps * PANEL..(panel + 1) * steps * PANEL];
        let sums = &w.col_sums[panel * chunks * PANEL..(panel + 1) * chunks * PANEL];
        let mut tile = [[0f32; PANEL]; MAX_ROWS];
        for r0 in block.clone().step_by(MAX_ROWS) {
            let mr = MAX_ROWS.min(block.end - r0);
            for chunk in 0..chunks {
                let s0 = chunk * INT8_CHUNK_STEPS;
                let operands = avx512::Int8Operands {
                    x: &quads[r0 * steps + s0..],
                    stride: steps,
                    steps: INT8_CHUNK_STEPS.min(steps - s0),
                    w: wp,
                    layout: w.layout(),
                    first_step: s0,
                    sums: &sums[chunk * PANEL..][..PANEL],
                    row_scales: &row_scales[r0..r0 + mr],
                    col_scales: &col_scales,
                };
                // SAFETY: AVX512_VNNI was checked above; `x` holds rows r0..r0+mr from step
                // s0 (each `steps` quads) and `w` the panel from step s0, both to the chunk's end.
                unsafe { avx512::tile_int8(mr, &operands, &mut tile) };
                // As on AMX: the first chunk is stored with `init`, the next ones added to it.
                let init = if chunk == 0 { init } else { MatmulInit::Accumulate };
                let no_epilogue = Epilogue::default();
                let epilogue = if chunk + 1 == chunks { &epilogue } else { &no_epilogue };
                // SAFETY: this panel's task alone writes columns first_col .. first_col + cols
                // of rows r0..r0 + mr, and they lie inside `out` (asserted by the caller).
                unsafe {
                    let sums = tile.as_flattened_mut();
                    finish_block(sums, PANEL, mr, cols, (out_ptr, out_stride), (r0, first_col), init, epilogue)
                };
            }
        }
    };
    let parallel = parallel && rows * w.n * w.k >= 1 << 18;
    for_each_block(rows, steps * 4, MAX_ROWS, w.n.div_ceil(PANEL), parallel, run_panel);
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
            (0..panels).into_par_iter().for_each(|panel| task(panel, range.clone()));
        } else {
            (0..panels).for_each(|panel| task(panel, range.clone()));
        }
    }
}

#[inline(always)]
fn store(dst: &mut [f32], sums: &[f32], init: MatmulInit, first_col: usize) {
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

#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: panel tasks write disjoint column ranges, see `matmul`.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}
impl SharedOut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{PanelLayout, MAX_ROWS, PANEL};

    type Tile = [[f32; PANEL]; MAX_ROWS];

    /// f32 tile: `out[m][c] = Σ_s x[m·stride + s] · w[s·64 + c]`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile_f32(mr: usize, x: *const f32, stride: usize, steps: usize, w: &[u32], out: &mut Tile) {
        match mr {
            1 => f32_rows::<1>(x, stride, steps, w, out),
            2 => f32_rows::<2>(x, stride, steps, w, out),
            3 => f32_rows::<3>(x, stride, steps, w, out),
            4 => f32_rows::<4>(x, stride, steps, w, out),
            5 => f32_rows::<5>(x, stride, steps, w, out),
            _ => f32_rows::<6>(x, stride, steps, w, out),
        }
    }

    /// A panel of bf16 pairs and how it is laid out.
    #[derive(Clone, Copy)]
    pub struct Bf16Panel<'a> {
        pub w: &'a [u32],
        pub layout: PanelLayout,
    }

    /// bf16 tile: `out[m][c] = Σ_s Σ_p x₀·w₀ + x₁·w₁` over the pairs of step s of each of the
    /// `parts` blocks of a row (block p starts `p·steps` pairs into the row).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn tile_bf16(mr: usize, x: *const u32, stride: usize, parts: usize, steps: usize, w: Bf16Panel, out: &mut Tile) {
        match mr {
            1 => bf16_rows::<1>(x, stride, parts, steps, w, out),
            2 => bf16_rows::<2>(x, stride, parts, steps, w, out),
            3 => bf16_rows::<3>(x, stride, parts, steps, w, out),
            4 => bf16_rows::<4>(x, stride, parts, steps, w, out),
            5 => bf16_rows::<5>(x, stride, parts, steps, w, out),
            _ => bf16_rows::<6>(x, stride, parts, steps, w, out),
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn f32_rows<const MR: usize>(x: *const f32, stride: usize, steps: usize, w: &[u32], out: &mut Tile) {
        debug_assert!(w.len() >= steps * PANEL);
        let mut acc = [[_mm512_setzero_ps(); 4]; MR];
        let mut wp = w.as_ptr() as *const f32;
        for s in 0..steps {
            let w0 = _mm512_loadu_ps(wp);
            let w1 = _mm512_loadu_ps(wp.add(16));
            let w2 = _mm512_loadu_ps(wp.add(32));
            let w3 = _mm512_loadu_ps(wp.add(48));
            for (m, acc_m) in acc.iter_mut().enumerate() {
                let xb = _mm512_set1_ps(*x.add(m * stride + s));
                acc_m[0] = _mm512_fmadd_ps(xb, w0, acc_m[0]);
                acc_m[1] = _mm512_fmadd_ps(xb, w1, acc_m[1]);
                acc_m[2] = _mm512_fmadd_ps(xb, w2, acc_m[2]);
                acc_m[3] = _mm512_fmadd_ps(xb, w3, acc_m[3]);
            }
            wp = wp.add(PANEL);
        }
        store_tile(&acc, out);
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn bf16_rows<const MR: usize>(x: *const u32, stride: usize, parts: usize, steps: usize, w: Bf16Panel, out: &mut Tile) {
        let Bf16Panel { w, layout } = w;
        assert!(w.len() >= steps * PANEL);
        let mut acc = [[_mm512_setzero_ps(); 4]; MR];
        let groups: [usize; 4] = std::array::from_fn(|g| layout.group(g));
        for s in 0..steps {
            let wp = w.as_ptr().add(layout.step(s));
            let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp.add(groups[0]) as *const _));
            let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp.add(groups[1]) as *const _));
            let w2: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp.add(groups[2]) as *const _));
            let w3: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp.add(groups[3]) as *const _));
            for p in 0..parts {
                for (m, acc_m) in acc.iter_mut().enumerate() {
                    let xb: __m512bh = std::mem::transmute(_mm512_set1_epi32(*x.add(m * stride + p * steps + s) as i32));
                    acc_m[0] = _mm512_dpbf16_ps(acc_m[0], xb, w0);
                    acc_m[1] = _mm512_dpbf16_ps(acc_m[1], xb, w1);
                    acc_m[2] = _mm512_dpbf16_ps(acc_m[2], xb, w2);
                    acc_m[3] = _mm512_dpbf16_ps(acc_m[3], xb, w3);
                }
            }
        }
        store_tile(&acc, out);
    }

    /// What [`tile_int8`] multiplies: quads of `x` as u8 (the int8 activation + 128), rows
    /// `stride` quads apart; `steps` steps of a panel `w` of int8 quads; the sums of the panel's
    /// columns over those steps; the scales of the rows and of the panel's 64 columns.
    pub struct Int8Operands<'a> {
        pub x: &'a [u32],
        pub stride: usize,
        pub steps: usize,
        /// The whole panel, its layout, and the first of the `steps` steps.
        pub w: &'a [u32],
        pub layout: PanelLayout,
        pub first_step: usize,
        pub sums: &'a [i32],
        pub row_scales: &'a [f32],
        pub col_scales: &'a [f32; PANEL],
    }

    /// int8 tile: `out[m][c] = (Σ_s x·w − 128·sums[c]) · row_scales[m] · col_scales[c]` over
    /// the four byte products of each step, i.e. the signed activations' i32 sum, scaled.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile_int8(mr: usize, ops: &Int8Operands, out: &mut Tile) {
        match mr {
            1 => int8_rows::<1>(ops, out),
            2 => int8_rows::<2>(ops, out),
            3 => int8_rows::<3>(ops, out),
            4 => int8_rows::<4>(ops, out),
            5 => int8_rows::<5>(ops, out),
            _ => int8_rows::<6>(ops, out),
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn int8_rows<const MR: usize>(ops: &Int8Operands, out: &mut Tile) {
        let &Int8Operands { x, stride, steps, w, layout, first_step, sums, row_scales, col_scales } = ops;
        assert!(w.len() >= (first_step + steps) * PANEL && sums.len() >= PANEL && row_scales.len() >= MR);
        assert!(x.len() >= (MR - 1) * stride + steps);
        // −128·Σw: what the +128 of every unsigned activation adds to the sums.
        let minus_128 = _mm512_set1_epi32(-128);
        let start: [__m512i; 4] =
            std::array::from_fn(|v| _mm512_mullo_epi32(_mm512_loadu_si512(sums.as_ptr().add(16 * v) as *const _), minus_128));
        let mut acc = [start; MR];
        let x = x.as_ptr();
        let groups: [usize; 4] = std::array::from_fn(|g| layout.group(g));
        for s in 0..steps {
            let wp = w.as_ptr().add(layout.step(first_step + s));
            let w0 = _mm512_loadu_si512(wp.add(groups[0]) as *const _);
            let w1 = _mm512_loadu_si512(wp.add(groups[1]) as *const _);
            let w2 = _mm512_loadu_si512(wp.add(groups[2]) as *const _);
            let w3 = _mm512_loadu_si512(wp.add(groups[3]) as *const _);
            for (m, acc_m) in acc.iter_mut().enumerate() {
                let xb = _mm512_set1_epi32(*x.add(m * stride + s) as i32);
                acc_m[0] = _mm512_dpbusd_epi32(acc_m[0], xb, w0);
                acc_m[1] = _mm512_dpbusd_epi32(acc_m[1], xb, w1);
                acc_m[2] = _mm512_dpbusd_epi32(acc_m[2], xb, w2);
                acc_m[3] = _mm512_dpbusd_epi32(acc_m[3], xb, w3);
            }
        }
        for (m, acc_m) in acc.iter().enumerate() {
            let row_scale = _mm512_set1_ps(row_scales[m]);
            for (v, a) in acc_m.iter().enumerate() {
                let col_scale = _mm512_loadu_ps(col_scales.as_ptr().add(16 * v));
                // (sum · row scale) · column scale: AMX's order (`Int8Scales::apply`).
                let scaled = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(*a), row_scale), col_scale);
                _mm512_storeu_ps(out[m].as_mut_ptr().add(16 * v), scaled);
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store_tile<const MR: usize>(acc: &[[__m512; 4]; MR], out: &mut Tile) {
        for (m, acc_m) in acc.iter().enumerate() {
            for (v, a) in acc_m.iter().enumerate() {
                _mm512_storeu_ps(out[m].as_mut_ptr().add(16 * v), *a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        (0..n).map(|i| crate::fixture::value(seed, "noise", i as u64) * 20.0).collect()
    }

    fn round_bf16(v: Vec<f32>) -> Vec<f32> {
        v.into_iter().map(|x| bf16::from_f32(x).to_f32()).collect()
    }

    #[test]
    fn extra_inputs_give_the_bits_of_rows_extended_by_hand() {
        if !bf16_available() {
            return;
        }
        let (rank, slots) = (4, 5);
        // k_x a whole number of AMX tile steps (1024, 64) or not (100); rows for the AVX512_BF16
        // kernel (5) and for AMX (40, 100: several blocks and a partial one).
        for (rows, k_x, n) in [(5, 64, 70), (40, 1024, 96), (100, 64, 130), (40, 100, 64)] {
            let k = k_x + slots * rank;
            let x = noise(rows * k_x, 1);
            let low = noise(rows * rank, 2);
            let slot: Vec<Option<usize>> = (0..rows).map(|r| (r % 7 != 3).then_some(r % slots)).collect();
            let extra = LowRankInputs { low: &low, rank, slot: &slot, slots };
            let mut by_hand = vec![0f32; rows * k];
            for (r, row) in by_hand.chunks_exact_mut(k).enumerate() {
                row[..k_x].copy_from_slice(&x[r * k_x..][..k_x]);
                if let Some(s) = slot[r] {
                    row[k_x + s * rank..][..rank].copy_from_slice(&low[r * rank..][..rank]);
                }
            }
            let w = round_bf16(noise(n * k, 3));
            let bias = noise(n, 4);
            for ty in [PackedType::Bf16, PackedType::Bf16x3] {
                let packed = PackedMatrix::pack(&w, n, k, ty);
                let mut want = vec![0f32; rows * n];
                matmul(&by_hand, k, rows, &packed, &mut want, n, MatmulInit::Bias(&bias), true);
                let mut got = vec![f32::NAN; rows * n];
                let epilogue = Epilogue::default();
                matmul_extended(&x, k_x, rows, Some(extra), &packed, &mut got, n, MatmulInit::Bias(&bias), epilogue, true);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert!(bits(&got) == bits(&want), "{ty:?}, {rows}×{k_x}+{}×{n}", slots * rank);
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn rows_split_straight_into_tiles_give_the_row_buffers_bits() {
        if !bf16_available() {
            return;
        }
        for k in [1usize, 17, 32, 33, 100, 1024] {
            let tile_steps = k.div_ceil(32);
            let steps = 16 * tile_steps;
            let row = noise(k, k as u64);
            for parts in [1, 3] {
                let mut buffer = vec![0u32; parts * steps];
                split_row(&row, &mut buffer, steps, parts);
                // Tiles of two rows, this row second: part p of step s at (s·parts + p)·32 + 16.
                let mut tiles = vec![u32::MAX; tile_steps * parts * 32];
                // SAFETY: checked above; every offset + 16 lies inside `tiles`.
                unsafe { split_row_into_tiles(&row, tile_steps, parts, tiles[16..].as_mut_ptr(), 32) };
                for s in 0..tile_steps {
                    for p in 0..parts {
                        let want = &buffer[p * steps + 16 * s..][..16];
                        assert_eq!(&tiles[(s * parts + p) * 32 + 16..][..16], want, "k {k}, parts {parts}, step {s}");
                        assert!(tiles[(s * parts + p) * 32..][..16].iter().all(|&v| v == u32::MAX), "other row touched");
                    }
                }
            }
        }
    }

    #[test]
    fn packing_round_trips() {
        // bf16 steps are padded to whole tiles of 16 pair steps (k = 5 too): bf16 is tiled.
        for (n, k) in [(70, 5), (70, 64)] {
            let w = round_bf16(noise(n * k, 1));
            for ty in [PackedType::F32, PackedType::Bf16, PackedType::Bf16x3] {
                let packed = PackedMatrix::pack(&w, n, k, ty);
                let tiled = ty == PackedType::Bf16;
                assert_eq!(packed.layout() != PanelLayout::Linear, tiled, "{ty:?} {k}");
                for c in 0..n {
                    for i in 0..k {
                        assert_eq!(packed.get(c, i), w[c * k + i], "{ty:?} ({c}, {i})");
                    }
                }
            }
        }
    }

    #[test]
    fn tiled_and_linear_layouts_give_the_same_bits() {
        // Every kernel reads the same weights in the same order from either layout: 5 rows take
        // AVX512_BF16 / VNNI, 40 rows AMX where present.
        let (k, n) = (1024, 130);
        let w = round_bf16(noise(n * k, 3));
        for ty in [PackedType::Bf16, PackedType::Bf16x3, PackedType::Int8] {
            let ok = if ty == PackedType::Int8 { int8_available() } else { bf16_available() };
            if !ok {
                eprintln!("skipped {ty:?}: this CPU lacks the instructions");
                continue;
            }
            let packs = [PackedMatrix::pack_tiled(&w, n, k, ty, true), PackedMatrix::pack_tiled(&w, n, k, ty, false)];
            assert_eq!(packs[0].layout(), PanelLayout::Tiled { steps: packs[0].steps });
            assert_eq!(packs[1].layout(), PanelLayout::Linear);
            assert_eq!(packs[0].col_sums, packs[1].col_sums, "{ty:?}");
            for rows in [5, 40] {
                let x = noise(rows * k, 4);
                let outs = packs.each_ref().map(|p| {
                    let mut out = vec![0f32; rows * n];
                    matmul(&x, k, rows, p, &mut out, n, MatmulInit::Zero, false);
                    out
                });
                assert!(outs[0].iter().zip(&outs[1]).all(|(a, b)| a.to_bits() == b.to_bits()), "{ty:?} {rows} rows");
            }
        }
    }

    #[test]
    fn tiled_panels_hold_amx_weight_tiles() {
        // 32 pair steps: two tile steps. Column c of step s, half h = c / 32: tile (s / 16) of
        // the half, the half's two 16-column tiles side by side, each 16 rows of 16 pairs.
        let layout = PanelLayout::Tiled { steps: 32 };
        assert_eq!(layout.at(0, 0), 0);
        assert_eq!(layout.at(1, 0), 16);
        assert_eq!(layout.at(0, 17), 256 + 1);
        assert_eq!(layout.at(16, 0), 512);
        assert_eq!(layout.at(0, 32), 32 * 32);
        assert_eq!(layout.at(31, 63), 32 * 32 + 512 + 256 + 15 * 16 + 15);
        let mut seen = vec![false; 32 * PANEL];
        for s in 0..32 {
            for c in 0..PANEL {
                assert!(!std::mem::replace(&mut seen[layout.at(s, c)], true), "({s}, {c}) twice");
            }
        }
    }

    #[test]
    fn matches_the_reference_on_awkward_shapes() {
        for ty in [PackedType::F32, PackedType::Bf16, PackedType::Bf16x3] {
            let ok = match ty {
                PackedType::F32 => avx512_available(),
                PackedType::Bf16 | PackedType::Bf16x3 => bf16_available(),
                PackedType::Int8 => false, // its own test: quantisation error, not rounding
            };
            if !ok {
                eprintln!("skipped {ty:?}: this CPU lacks the instructions");
                continue;
            }
            for &(rows, k, n) in &[(1, 1, 1), (1, 2, 1), (5, 7, 3), (6, 64, 64), (7, 129, 65), (13, 1024, 130), (40, 33, 200), (16, 32, 32), (33, 64, 70), (70, 1024, 129)] {
                // bf16-exact inputs, so both kernels can be held to f32 rounding error.
                let x = round_bf16(noise(rows * k, 2));
                let w = round_bf16(noise(n * k, 3));
                let bias = noise(n, 4);
                let packed = PackedMatrix::pack(&w, n, k, ty);
                let want = super::super::reference::matmul_transposed(&x, rows, k, &w, n, Some(&bias));
                let tol = 2e-5 * (1.0 + (k as f32).sqrt() * 4.0);
                for parallel in [false, true] {
                    let mut out = vec![f32::NAN; rows * n];
                    matmul(&x, k, rows, &packed, &mut out, n, MatmulInit::Bias(&bias), parallel);
                    for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                        assert!((a - b).abs() <= tol, "{ty:?} {rows}x{k}x{n} [{i}]: {a} vs {b}");
                    }
                }
                // Accumulating onto (x·Wᵀ + b) gives 2·x·Wᵀ + b; a wider output stride works.
                let mut acc = vec![0f32; rows * (n + 3)];
                for r in 0..rows {
                    acc[r * (n + 3)..r * (n + 3) + n].copy_from_slice(&want[r * n..(r + 1) * n]);
                }
                matmul(&x, k, rows, &packed, &mut acc, n + 3, MatmulInit::Accumulate, true);
                for r in 0..rows {
                    for c in 0..n {
                        let expected = 2.0 * want[r * n + c] - bias[c];
                        let got = acc[r * (n + 3) + c];
                        assert!((got - expected).abs() <= 2.0 * tol, "{ty:?} accumulate ({r},{c}): {got} vs {expected}");
                    }
                }
            }
        }
    }

    #[test]
    fn three_bf16_parts_sum_to_the_value_exactly() {
        // Values over many magnitudes, in rows of awkward lengths (the masked tail included).
        // Below about 2^-100 the last part would be subnormal, which the conversion flushes:
        // a loss of less than 2^-126 in absolute terms.
        let values: Vec<f32> = noise(4099, 21)
            .iter()
            .enumerate()
            .map(|(i, v)| v * 10f32.powi((i % 60) as i32 - 28))
            .collect();
        for len in [1, 2, 15, 16, 17, 33, 4099] {
            let row = &values[..len];
            let steps = len.div_ceil(2);
            let mut dst = vec![0u32; 3 * steps];
            split_row(row, &mut dst, steps, 3);
            let half = |p: usize, i: usize| {
                let pair = dst[p * steps + i / 2];
                bf16::from_bits(if i % 2 == 0 { pair as u16 } else { (pair >> 16) as u16 })
            };
            for (i, &v) in row.iter().enumerate() {
                let sum: f64 = (0..3).map(|p| half(p, i).to_f32() as f64).sum();
                assert_eq!(sum, v as f64, "value {i} of {len}: {v:e}");
                for p in 0..3 {
                    assert_eq!(half(p, i).to_bits(), bf16_part(v, p), "part {p} of {v:e}");
                }
            }
            if len % 2 == 1 {
                assert!((0..3).all(|p| dst[p * steps + steps - 1] >> 16 == 0), "padding stays zero");
            }
        }
    }

    /// Worst `|out − exact| / Σ|x·w|` of one product against an f64 reference.
    fn relative_error(ty: PackedType, x: &[f32], w: &[f32], rows: usize, k: usize, n: usize) -> f64 {
        let packed = PackedMatrix::pack(w, n, k, ty);
        let mut out = vec![0f32; rows * n];
        matmul(x, k, rows, &packed, &mut out, n, MatmulInit::Zero, true);
        let mut worst = 0f64;
        for r in 0..rows {
            for c in 0..n {
                let terms = (0..k).map(|i| x[r * k + i] as f64 * w[c * k + i] as f64);
                let (exact, scale) = terms.fold((0.0, 0.0), |(s, a), t| (s + t, a + t.abs()));
                worst = worst.max((out[r * n + c] as f64 - exact).abs() / scale.max(f64::MIN_POSITIVE));
            }
        }
        worst
    }

    #[test]
    fn bf16x3_products_are_as_exact_as_f32_ones() {
        if !bf16_available() {
            eprintln!("skipped: this CPU lacks AVX512_BF16");
            return;
        }
        // f32 activations with all their bits, weights from a bf16 checkpoint. Shapes with
        // rows ≥ 16 and k a multiple of 32 run on AMX where the CPU has it.
        for &(rows, k, n) in &[(1, 64, 64), (5, 7, 3), (20, 96, 70), (33, 1024, 130), (32, 4096, 64)] {
            let x = noise(rows * k, 12);
            let w = round_bf16(noise(n * k, 13));
            let f32_error = relative_error(PackedType::F32, &x, &w, rows, k, n);
            let x3_error = relative_error(PackedType::Bf16x3, &x, &w, rows, k, n);
            let bf16_error = relative_error(PackedType::Bf16, &x, &w, rows, k, n);
            assert!(f32_error < 1e-6 && x3_error < 1e-6, "{rows}x{k}x{n}: f32 {f32_error:e}, bf16x3 {x3_error:e}");
            // The bound separates the paths: one bf16 part alone loses ~8 bits.
            assert!(bf16_error > 1e-4, "{rows}x{k}x{n}: bf16 {bf16_error:e}");
        }
    }

    #[test]
    fn the_epilogue_adds_the_low_rank_term_then_gelu() {
        if !bf16_available() {
            eprintln!("skipped: this CPU lacks AVX512_BF16");
            return;
        }
        // Rows below and above AMX's 16, k past one 1024-wide chunk, rows without a term, and on
        // AMX several blocks of 32 rows and partial ones, in both weight layouts.
        for &(rows, k, n) in &[(5, 96, 70), (40, 2048, 64), (100, 1024, 130)] {
            let rank = 4;
            let x = noise(rows * k, 31);
            let w = round_bf16(noise(n * k, 32));
            let bias = noise(n, 33);
            let low = noise(rows * rank, 34);
            let up_t = noise(rank * n, 35);
            let up: Vec<Option<&[f32]>> = (0..rows).map(|r| (r % 3 != 0).then_some(&up_t[..])).collect();
            let int8 = int8_available().then_some(PackedType::Int8);
            for ty in [PackedType::F32, PackedType::Bf16, PackedType::Bf16x3].into_iter().chain(int8) {
                let packed = PackedMatrix::pack(&w, n, k, ty);
                let mut plain = vec![0f32; rows * n];
                matmul(&x, k, rows, &packed, &mut plain, n, MatmulInit::Bias(&bias), false);
                let low_rank = LowRank { low: &low, rank, up: &up };
                let epilogue = Epilogue { low_rank: Some(low_rank), gelu: true };
                let mut fused = vec![0f32; rows * n];
                matmul_with(&x, k, rows, &packed, &mut fused, n, MatmulInit::Bias(&bias), epilogue, true);
                for r in 0..rows {
                    for c in 0..n {
                        let term: f32 = match up[r] {
                            Some(u) => (0..rank).map(|j| low[r * rank + j] * u[j * n + c]).sum(),
                            None => 0.0,
                        };
                        let want = super::super::elementwise::gelu_erf(plain[r * n + c] + term);
                        let got = fused[r * n + c];
                        assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{ty:?} {rows}x{k}x{n} ({r},{c}): {got} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn int8_products_are_within_quantisation_error() {
        if !int8_available() {
            eprintln!("skipped: this CPU lacks AMX-INT8 and AVX512_VNNI");
            return;
        }
        // k not a multiple of 64 (padded steps), rows below and above 32 (VNNI below 20 where
        // AMX-INT8 is there too), n past a panel.
        for &(rows, k, n) in &[(1, 64, 64), (5, 7, 3), (33, 100, 70), (40, 1024, 130), (3, 4096, 64)] {
            let x = noise(rows * k, 41);
            let w = noise(n * k, 42);
            let error = relative_error(PackedType::Int8, &x, &w, rows, k, n);
            // Two 8-bit roundings: well under a percent of Σ|x·w| for noise, and not exact.
            assert!(error < 1e-2 && error > 1e-6, "{rows}x{k}x{n}: int8 {error:e}");
        }
        // Dequantised weights round-trip through `get` within half a step.
        let (n, k) = (70, 9);
        let w = noise(n * k, 43);
        let packed = PackedMatrix::pack(&w, n, k, PackedType::Int8);
        for c in 0..n {
            let step = w[c * k..(c + 1) * k].iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for i in 0..k {
                assert!((packed.get(c, i) - w[c * k + i]).abs() <= 0.5 * step * 1.0001, "({c}, {i})");
            }
        }
    }

    #[test]
    fn transposed_packing_reads_columns() {
        let (k, n, stride) = (5, 70, 75);
        let v = round_bf16(noise(k * stride, 9));
        for ty in [PackedType::F32, PackedType::Bf16] {
            let mut packed = PackedMatrix::empty(ty);
            packed.repack_transposed(&v, stride, k, n);
            for c in 0..n {
                for s in 0..k {
                    assert_eq!(packed.get(c, s), v[s * stride + c], "{ty:?} ({c}, {s})");
                }
            }
        }
    }

    #[test]
    fn rows_do_not_depend_on_the_batch() {
        // 40 int8 rows take AMX-INT8 where the CPU has it, and one row VNNI: the same bits.
        for (ty, rows, ok) in [(PackedType::F32, 13, avx512_available()), (PackedType::Int8, 40, int8_available())] {
            if !ok {
                continue;
            }
            let (k, n) = (96, 70);
            let x = noise(rows * k, 5);
            let w = noise(n * k, 6);
            let packed = PackedMatrix::pack(&w, n, k, ty);
            let mut all = vec![0f32; rows * n];
            matmul(&x, k, rows, &packed, &mut all, n, MatmulInit::Zero, true);
            for r in 0..rows {
                let mut one = vec![0f32; n];
                matmul(&x[r * k..], k, 1, &packed, &mut one, n, MatmulInit::Zero, false);
                assert_eq!(one, all[r * n..(r + 1) * n], "{ty:?} row {r}");
            }
        }
    }

    /// Rows (below and above 6, 16 and 32), k (a single input, not a multiple of 64, past one
    /// 2048-input chunk) and n (inside one panel, past one) for the int8 kernels.
    const INT8_SHAPES: [(usize, usize, usize); 8] =
        [(1, 1, 3), (1, 100, 70), (5, 7, 130), (5, 4100, 64), (17, 1000, 70), (17, 2048, 3), (33, 4100, 130), (33, 64, 65)];

    /// Activations for the int8 tests: noise with one row all zeros and one with a lone spike
    /// (a scale set by a single value, the rest rounding to 0).
    fn int8_activations(rows: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut x = noise(rows * k, seed);
        if rows > 2 {
            x[k..2 * k].fill(0.0);
            x[2 * k..3 * k].iter_mut().for_each(|v| *v *= 1e-4);
            x[2 * k] = 1e3;
        }
        x
    }

    /// The int8 product as both kernels define it, in scalar code: per row and column, the i32
    /// sum of the quantised products over each chunk of [`INT8_CHUNK_STEPS`] steps times the row
    /// scale times the column scale; the first chunk is stored with the bias, the others added.
    fn int8_reference(x: &[f32], rows: usize, w: &PackedMatrix, bias: &[f32]) -> Vec<f32> {
        let (n, k, steps) = (w.n, w.k, w.steps);
        let chunk_inputs = 4 * INT8_CHUNK_STEPS;
        let weight = |c: usize, i: usize| {
            (w.data[(c / PANEL) * steps * PANEL + w.layout().at(i / 4, c % PANEL)] >> (8 * (i % 4))) as u8 as i8
        };
        let mut out = vec![0f32; rows * n];
        let mut quads = vec![0u32; steps];
        for r in 0..rows {
            let row_scale = quantize_row(&x[r * k..(r + 1) * k], &mut quads);
            let act = |i: usize| (quads[i / 4] >> (8 * (i % 4))) as u8 as i8;
            for c in 0..n {
                for (chunk, start) in (0..k.max(1)).step_by(chunk_inputs).enumerate() {
                    let inputs = start..k.min(start + chunk_inputs);
                    let sum: i32 = inputs.map(|i| act(i) as i32 * weight(c, i) as i32).sum();
                    let v = sum as f32 * row_scale * w.scales[c];
                    let o = &mut out[r * n + c];
                    *o = if chunk == 0 { v + bias[c] } else { *o + v };
                }
            }
        }
        out
    }

    #[test]
    fn int8_column_sums_add_up_each_chunk() {
        let (n, k) = (70, 4100);
        let packed = PackedMatrix::pack(&noise(n * k, 44), n, k, PackedType::Int8);
        let chunks = int8_chunks(packed.steps);
        assert_eq!(chunks, 3);
        let weight = |c: usize, i: usize| (packed.get(c, i) / packed.scales[c]).round() as i32;
        for c in 0..n {
            for chunk in 0..chunks {
                let inputs = chunk * 2048..k.min((chunk + 1) * 2048);
                let want: i32 = inputs.map(|i| weight(c, i)).sum();
                assert_eq!(packed.col_sums[((c / PANEL) * chunks + chunk) * PANEL + c % PANEL], want, "({c}, {chunk})");
            }
        }
        // Columns past n in the last panel sum to zero.
        let last_panel = &packed.col_sums[(n / PANEL) * chunks * PANEL..];
        assert!(last_panel.chunks_exact(PANEL).all(|sums| sums[n % PANEL..].iter().all(|&s| s == 0)));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn int8_vnni_matches_the_quantised_reference_exactly() {
        if !vnni_available() {
            eprintln!("skipped: this CPU lacks AVX512_VNNI");
            return;
        }
        for &(rows, k, n) in &INT8_SHAPES {
            let x = int8_activations(rows, k, 45);
            let packed = PackedMatrix::pack(&noise(n * k, 46), n, k, PackedType::Int8);
            let bias = noise(n, 47);
            let want = int8_reference(&x, rows, &packed, &bias);
            for parallel in [false, true] {
                let mut out = vec![f32::NAN; rows * n];
                matmul_vnni(&x, k, rows, &packed, &mut out, n, MatmulInit::Bias(&bias), Epilogue::default(), parallel);
                for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                    assert_eq!(a.to_bits(), b.to_bits(), "{rows}x{k}x{n} [{i}]: {a} vs {b}");
                }
            }
        }
    }

    /// [`matmul_vnni`] or [`matmul_amx`].
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    type Int8Kernel = fn(&[f32], usize, usize, &PackedMatrix, &mut [f32], usize, MatmulInit, Epilogue, bool);

    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    #[test]
    fn int8_vnni_matches_amx_bit_for_bit() {
        if !(vnni_available() && amx_int8_available()) {
            eprintln!("skipped: this CPU lacks AVX512_VNNI or AMX-INT8");
            return;
        }
        let rank = 4;
        for &(rows, k, n) in &INT8_SHAPES {
            let x = int8_activations(rows, k, 48);
            let packed = PackedMatrix::pack(&noise(n * k, 49), n, k, PackedType::Int8);
            let bias = noise(n, 50);
            let low = noise(rows * rank, 51);
            let up_t = noise(rank * n, 52);
            let up: Vec<Option<&[f32]>> = (0..rows).map(|r| (r % 3 != 0).then_some(&up_t[..])).collect();
            let epilogue = Epilogue { low_rank: Some(LowRank { low: &low, rank, up: &up }), gelu: true };
            let start = noise(rows * (n + 3), 53);
            for (init, epilogue) in [
                (MatmulInit::Bias(&bias), Epilogue::default()),
                (MatmulInit::Zero, Epilogue::default()),
                (MatmulInit::Accumulate, Epilogue::default()),
                (MatmulInit::Bias(&bias), epilogue),
            ] {
                // A wider output stride, filled beforehand (what `Accumulate` adds to).
                let run = |kernel: Int8Kernel| {
                    let mut out = start.clone();
                    kernel(&x, k, rows, &packed, &mut out, n + 3, init, epilogue, true);
                    out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                };
                let amx: Int8Kernel = |x, stride, rows, w, out, out_stride, init, epilogue, parallel| {
                    matmul_amx((x, stride, None), rows, w, out, out_stride, init, epilogue, parallel)
                };
                assert_eq!(run(matmul_vnni), run(amx), "{rows}x{k}x{n}");
            }
        }
    }
}

/// Intel AMX (`TDPBF16PS`: a 16×16 f32 tile += 16×32 bf16 · 32×16 bf16 per instruction) for the
/// bf16 type. The packed bf16 panel already is AMX's "VNNI" layout for B: row p of a B tile is
/// pair p of 16 columns, 64 bytes, and consecutive pairs are 256 bytes apart in the panel, which
/// `TILELOADD` takes as its stride. Each task computes 32×32 output blocks with 4 accumulator
/// tiles, 2 A tiles and 2 B tiles (all 8 tile registers).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod amx {
    use std::arch::asm;
    use std::sync::OnceLock;

    /// Where the A tiles of a block lie, in u32 (pairs) from its start: tile step `s`, part `p`
    /// of the upper 16 rows at `s·step + p·part`, the lower 16 rows `lower` further; rows of a
    /// tile `stride` bytes apart; the next block of 32 rows `block` further.
    #[derive(Clone, Copy)]
    pub struct ALayout {
        pub stride: usize,
        pub step: usize,
        pub part: usize,
        pub lower: usize,
        pub block: usize,
    }

    /// Where the B (weight) tiles of a block lie, in u32 from the first: the second tile (the
    /// next 16 columns) `second` further, the next tile step `step` further, rows of a tile
    /// `stride` bytes apart. `prefetch`: the activations and weights lie in one stream each
    /// ([`super::PanelLayout::Tiled`], [`super::amx_tiles`] with 32-row groups), prefetched a
    /// few tile steps ahead.
    #[derive(Clone, Copy)]
    pub struct BLayout {
        pub stride: usize,
        pub step: usize,
        pub second: usize,
        pub prefetch: bool,
    }

    /// Rows and columns of one output block.
    pub const BLOCK: usize = 32;
    /// Pairs (32 input positions) per tile product.
    pub const PAIRS_PER_STEP: usize = 16;
    /// Tile steps ahead whose activations and weights are prefetched into L1: a tile load that
    /// misses L1 waits for its 16 lines one after another, and the tiles cannot be renamed to
    /// start the next loads early.
    const PREFETCH_STEPS: usize = 2;

    /// Whether AMX-BF16 is present and Linux granted this process the tile state (once).
    /// `JINA_NO_AMX` turns it off (to compare with the AVX512_BF16 kernel).
    pub fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            if std::env::var_os("JINA_NO_AMX").is_some() {
                return false;
            }
            let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
            let amx_tile = leaf7.edx & (1 << 24) != 0;
            let amx_bf16 = leaf7.edx & (1 << 22) != 0;
            if !(amx_tile && amx_bf16) {
                return false;
            }
            // arch_prctl(ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18): the kernel
            // enables the 8 KiB tile state for this process only when asked.
            let ret: i64;
            // SAFETY: a plain Linux system call with integer arguments and no memory operands.
            unsafe {
                asm!("syscall", inlateout("rax") 158i64 => ret, in("rdi") 0x1023i64, in("rsi") 18i64,
                     lateout("rcx") _, lateout("r11") _, options(nostack));
            }
            ret == 0
        })
    }

    /// Whether AMX-INT8 (`TDPBSSD`) is present too.
    pub fn int8_available() -> bool {
        available() && std::arch::x86_64::__cpuid_count(7, 0).edx & (1 << 25) != 0
    }

    /// The tile palette: every tile 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    /// Loads the tile configuration on this thread once; call before [`block`]. The state stays
    /// configured (Linux saves it across context switches), so that many small products, as in
    /// attention, do not pay for `LDTILECFG` each time.
    pub fn configure() {
        thread_local! {
            static CONFIGURED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        }
        if !CONFIGURED.with(|c| c.replace(true)) {
            load_config();
        }
    }

    fn load_config() {
        let mut config = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
        for t in 0..8 {
            config.colsb[t] = 64;
            config.rows[t] = 16;
        }
        // SAFETY: `available()` was true (callers check), and the config is a valid palette 1.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly)) };
    }

    /// `c[32 × 32] = Σ a·b` over `steps` tile steps: `a` holds 32 rows of bf16 pairs as
    /// `a_layout` says, in `parts` parts each multiplied by the same weights; `b` is the first
    /// weight tile of the block's 32 columns, laid out as `b_layout` says.
    ///
    /// # Safety
    /// Tiles configured on this thread; `a` readable for 32 rows × `parts` parts of `steps`
    /// tile steps, `b` for `steps` tile steps of 32 columns, `c` readable (when accumulating)
    /// and writable for 32 rows of 32 f32.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn block(a: *const u32, a_layout: ALayout, parts: usize, b: *const u32, b_layout: BLayout, steps: usize, c: Output, int8: bool) {
        let ALayout { stride: a_stride, step: a_step, part: a_part, lower: a_lower, .. } = a_layout;
        let BLayout { stride: b_stride, step: b_step, second: b_second, prefetch: prefetch_ahead } = b_layout;
        let Output { ptr: c, row_stride, init } = c;
        let sc = row_stride * 4;
        let (c0, c1, c2, c3) = (c, c.add(16), c.add(16 * row_stride), c.add(16 * row_stride + 16));
        match init {
            TileInit::Zero => {
                asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem))
            }
            TileInit::Accumulate => asm!(
                "tileloadd tmm0, [{c0} + {sc}*1]",
                "tileloadd tmm1, [{c1} + {sc}*1]",
                "tileloadd tmm2, [{c2} + {sc}*1]",
                "tileloadd tmm3, [{c3} + {sc}*1]",
                c0 = in(reg) c0, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, sc = in(reg) sc,
                options(nostack, readonly),
            ),
            // A row stride of 0 loads the same 16 values into every row of a tile.
            TileInit::Broadcast(row) => asm!(
                "tileloadd tmm0, [{b0} + {zero}*1]",
                "tileloadd tmm1, [{b1} + {zero}*1]",
                "tileloadd tmm2, [{b0} + {zero}*1]",
                "tileloadd tmm3, [{b1} + {zero}*1]",
                b0 = in(reg) row, b1 = in(reg) row.add(16), zero = in(reg) 0usize,
                options(nostack, readonly),
            ),
        }
        for s in 0..steps {
            let b0 = b.add(s * b_step);
            let b1 = b0.add(b_second);
            if prefetch_ahead && s + PREFETCH_STEPS < steps {
                // A tile step's parts and halves lie together, `a_step` pairs; so do its weights.
                prefetch(a.add((s + PREFETCH_STEPS) * a_step), a_step * 4);
                prefetch(b.add((s + PREFETCH_STEPS) * b_step), b_step * 4);
            }
            // Both weight tiles stay loaded for every part of the activations.
            asm!(
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                b0 = in(reg) b0, b1 = in(reg) b1, sb = in(reg) b_stride,
                options(nostack, readonly),
            );
            for p in 0..parts {
                let a0 = a.add(p * a_part + s * a_step);
                let a1 = a0.add(a_lower);
                if int8 {
                    // The same tiles as int8 quads: 16 × 64 signed bytes, i32 sums.
                    asm!(
                        "tileloadd tmm4, [{a0} + {sa}*1]",
                        "tdpbssd tmm0, tmm4, tmm6",
                        "tdpbssd tmm1, tmm4, tmm7",
                        "tileloadd tmm5, [{a1} + {sa}*1]",
                        "tdpbssd tmm2, tmm5, tmm6",
                        "tdpbssd tmm3, tmm5, tmm7",
                        a0 = in(reg) a0, a1 = in(reg) a1, sa = in(reg) a_stride,
                        options(nostack, readonly),
                    );
                    continue;
                }
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0, a1 = in(reg) a1, sa = in(reg) a_stride,
                    options(nostack, readonly),
                );
            }
        }
        asm!(
            "tilestored [{c0} + {sc}*1], tmm0",
            "tilestored [{c1} + {sc}*1], tmm1",
            "tilestored [{c2} + {sc}*1], tmm2",
            "tilestored [{c3} + {sc}*1], tmm3",
            c0 = in(reg) c0, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, sc = in(reg) sc,
            options(nostack),
        );
    }

    /// Prefetches `bytes` from `p` into L1, a line at a time.
    #[inline(always)]
    unsafe fn prefetch(p: *const u32, bytes: usize) {
        let p = p as *const u8;
        for line in (0..bytes).step_by(64) {
            asm!("prefetcht0 [{}]", in(reg) p.add(line), options(nostack, readonly, preserves_flags));
        }
    }

    /// Where [`block`] puts its 32 × 32 sums: rows `row_stride` floats apart, starting from
    /// what `init` says.
    pub struct Output {
        pub ptr: *mut f32,
        pub row_stride: usize,
        pub init: TileInit,
    }

    /// What the sums of a block start from.
    pub enum TileInit {
        Zero,
        /// What the output block holds.
        Accumulate,
        /// The same 32 values (a bias) in every row.
        Broadcast(*const f32),
    }
}

/// Whether int8 products run on AMX-INT8 tiles (`TDPBSSD`).
pub fn amx_int8_available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        amx_available() && amx::int8_available()
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// Loads the AMX tile configuration (every tile 16 rows of 64 bytes) on this thread, once.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(crate) fn configure_amx() {
    amx::configure()
}

/// Whether bf16 products run on AMX tiles.
pub fn amx_available() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        bf16_available() && amx::available()
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}

/// The activations split into bf16 parts as by [`bf16_rows`], but laid out as AMX A tiles of
/// 16 rows × 16 pairs (1 KiB each): for each group of `group_rows` rows (16 or 32), tile step
/// after tile step, part after part, a tile for each 16 rows of the group; rows past `rows` up
/// to `padded_rows` are zero. Tile loads then read contiguous memory, which the prefetchers
/// follow, instead of 16 rows a row length apart; with groups of 32, all that a block of 32
/// rows reads is one stream.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(clippy::too_many_arguments)]
fn amx_tiles(
    (x, stride, extra): (&[f32], usize, Option<LowRankInputs>),
    rows: usize,
    k: usize,
    steps: usize,
    padded_rows: usize,
    parts: usize,
    group_rows: usize,
    int8_scales: Option<&mut [f32]>,
    parallel: bool,
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
                Some(extra) if !quantize && bf16_available() && k_x.is_multiple_of(2 * width) => {
                    extra.row(row, &mut tail);
                    let (x_steps, dst) = (k_x / (2 * width), &mut dst[at(k_x / (2 * width), 0, r)..]);
                    // SAFETY: as below, for the tile steps after x's.
                    unsafe { split_row_into_tiles(&tail, tile_steps - x_steps, parts, dst.as_mut_ptr(), group_rows * width) };
                    (values, x_steps)
                }
                Some(extra) => {
                    row_x.resize(k, 0.0);
                    extended_row(x, stride, k_x, &extra, row, &mut row_x);
                    (&row_x[..], tile_steps)
                }
                None => (values, tile_steps),
            };
            if !quantize && bf16_available() {
                // SAFETY: AVX512_BF16 is there; part p of tile step s of this row is the 16
                // pairs at `at(s, p, r)`, inside `dst`, as `at(s, p, 0)` is `(s·parts + p)` whole
                // tiles of `group_rows · width` pairs in.
                unsafe { split_row_into_tiles(values, value_steps, parts, dst[at(0, 0, r)..].as_mut_ptr(), group_rows * width) };
                continue;
            }
            if quantize {
                scales[r] = quantize_row(values, &mut row_buf);
            } else {
                split_row(values, &mut row_buf, steps, parts);
            }
            for p in 0..parts {
                for s in 0..tile_steps {
                    // Fixed-size copies compile to a few moves; a slice copy of 16 called memmove
                    // (4 % of an f32 pass).
                    let src: &[u32; amx::PAIRS_PER_STEP] = row_buf[p * steps + s * width..][..width].try_into().unwrap();
                    let dst: &mut [u32; amx::PAIRS_PER_STEP] = (&mut dst[at(s, p, r)..][..width]).try_into().unwrap();
                    *dst = *src;
                }
            }
        }
    };
    let groups = tiles.chunks_exact_mut(group_rows * row_pairs).zip(scales.chunks_exact_mut(group_rows)).enumerate();
    if parallel {
        groups.par_bridge().for_each(|(g, (dst, sc))| fill_group(g, dst, sc));
    } else {
        groups.for_each(|(g, (dst, sc))| fill_group(g, dst, sc));
    }
}

/// The bf16 product on AMX: activations rounded to bf16 pairs, rows padded to 32 with zeros.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(clippy::too_many_arguments)]
fn matmul_amx(
    (x, x_stride, extra): (&[f32], usize, Option<LowRankInputs>),
    rows: usize,
    w: &PackedMatrix,
    out: &mut [f32],
    out_stride: usize,
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
    amx_tiles((x, x_stride, extra), rows, w.k, steps, padded_rows, parts, group_rows, scales_out, parallel && rows >= 64, &mut pairs);
    let scales = int8.then_some(Int8Scales { rows: &row_scales, cols: &w.scales });
    let tile_steps = steps / amx::PAIRS_PER_STEP;
    let tile = amx::PAIRS_PER_STEP * 16;
    let layout = amx::ALayout {
        stride: 64,
        step: parts * tile * group_rows / 16,
        part: tile * group_rows / 16,
        lower: if tiled { tile } else { tile_steps * parts * tile },
        block: BLOCK * parts * steps,
    };
    let out_ptr = SharedOut(out.as_mut_ptr());
    // The input dimension in chunks of at most CHUNK tile steps (1024 bf16 or 2048 int8
    // inputs), so that a block of rows and a panel's share of the weights fit L2 together even
    // for fc2 (4096 inputs); each chunk after the first adds to what the ones before it stored.
    let chunks = amx_chunks(tile_steps, int8);
    for (i, range) in chunks.iter().enumerate() {
        let (chunk, chunk_steps) = (range.start, range.len());
        let init = if chunk == 0 { init } else { MatmulInit::Accumulate };
        let epilogue = if i + 1 == chunks.len() { epilogue } else { Epilogue::default() };
        let run_panel = |panel: usize, block: Range<usize>| {
            let wp = &w.data[panel * steps * PANEL..(panel + 1) * steps * PANEL];
            let wp = (wp, w_layout, chunk * amx::PAIRS_PER_STEP);
            let a = &pairs[chunk * layout.step..];
            let out = (out_ptr, out_stride, init, epilogue);
            // SAFETY: `matmul_with` took this path only with AMX available.
            unsafe { amx_panel(a, layout, parts, wp, chunk_steps, panel, block, rows, w.n, out, scales) };
        };
        for_each_block(rows, chunk_steps * amx::PAIRS_PER_STEP * parts * 4, BLOCK, w.n.div_ceil(PANEL), parallel, run_panel);
    }
    TILES.with(|t| *t.borrow_mut() = pairs);
}

/// The chunks of tile steps [`matmul_amx`] runs one after another: [`AMX_CHUNK_TILE_STEPS`]
/// each, except that for bf16 a last chunk of up to an eighth of that joins the one before (the
/// tile step of LoRA inputs after 1024 or 4096 values; a chunk of its own would load and store
/// every output block once more). int8 keeps the fixed chunks: they fix its rounding (see
/// [`INT8_CHUNK_STEPS`]), which bf16's f32 sums, carried on from one chunk to the next, lack.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn amx_chunks(tile_steps: usize, int8: bool) -> Vec<Range<usize>> {
    const CHUNK: usize = AMX_CHUNK_TILE_STEPS;
    let mut chunks: Vec<Range<usize>> = (0..tile_steps).step_by(CHUNK).map(|c| c..tile_steps.min(c + CHUNK)).collect();
    if !int8 && chunks.len() > 1 && chunks[chunks.len() - 1].len() <= CHUNK / 8 {
        let last = chunks.pop().unwrap();
        chunks.last_mut().unwrap().end = last.end;
    }
    chunks
}

/// The scales that turn an int8 block's i32 sums back into values.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[derive(Clone, Copy)]
struct Int8Scales<'a> {
    rows: &'a [f32],
    cols: &'a [f32],
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
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
/// AMX and AVX512_BF16 available ([`amx_available`]).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn amx_panel(
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
                MatmulInit::Bias(bias) if int8.is_none() && cols == BLOCK => Some(&bias[first_col..first_col + BLOCK]),
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
                unsafe { amx::block(a, layout, parts, b, b_layout, steps, amx::Output { ptr, row_stride: out_stride, init }, false) };
                continue;
            }
            let tile_init = bias_in_tiles.map_or(amx::TileInit::Zero, |bias| amx::TileInit::Broadcast(bias.as_ptr()));
            let output = amx::Output { ptr: c.as_mut_ptr(), row_stride: BLOCK, init: tile_init };
            // SAFETY: as above, with the sums going to `c` (32 × 32).
            unsafe { amx::block(a, layout, parts, b, b_layout, steps, output, int8.is_some()) };
            if let Some(scales) = int8 {
                scales.apply(&mut c, r0, first_col);
            }
            let init = if bias_in_tiles.is_some() { MatmulInit::Zero } else { init };
            let live = BLOCK.min(rows - r0);
            // SAFETY: this panel's task alone writes these columns of these rows.
            unsafe { finish_block(&mut c, BLOCK, live, cols, (out_ptr, out_stride), (r0, first_col), init, &epilogue) };
        }
    }
}
