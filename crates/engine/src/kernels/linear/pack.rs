//! Weights packed once into panels of [`PANEL`] output columns, in the layout every kernel of
//! [`super`] reads.

use half::bf16;
use rayon::prelude::*;

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
use super::super::amx;
use super::{int8_chunks, PackedType, INT8_CHUNK_STEPS, PANEL, TILE_STEPS};
use crate::kernels::cpu::Cpu;

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
pub(super) enum PanelLayout {
    Linear,
    Tiled { steps: usize },
}

impl PanelLayout {
    pub(super) fn new(ty: PackedType, steps: usize) -> Self {
        match ty {
            PackedType::Bf16 if steps.is_multiple_of(TILE_STEPS) => PanelLayout::Tiled { steps },
            _ => PanelLayout::Linear,
        }
    }

    /// Offset in a panel of step `s`'s first column.
    #[inline(always)]
    pub(super) fn step(self, s: usize) -> usize {
        match self {
            PanelLayout::Linear => s * PANEL,
            PanelLayout::Tiled { .. } => {
                (s / TILE_STEPS) * 2 * TILE_STEPS * 16 + (s % TILE_STEPS) * 16
            }
        }
    }

    /// Offset of column group `g` (columns 16g..16g+16) from a step's first column.
    #[inline(always)]
    pub(super) fn group(self, g: usize) -> usize {
        match self {
            PanelLayout::Linear => g * 16,
            PanelLayout::Tiled { steps } => {
                (g / 2) * steps * (PANEL / 2) + (g % 2) * TILE_STEPS * 16
            }
        }
    }

    /// How [`amx::block`] finds a block's weight tiles in a panel of this layout.
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    pub(super) fn amx_weights(self) -> amx::BLayout {
        match self {
            PanelLayout::Tiled { .. } => amx::BLayout {
                stride: 64,
                step: 2 * TILE_STEPS * 16,
                second: TILE_STEPS * 16,
                prefetch: true,
            },
            PanelLayout::Linear => amx::BLayout {
                stride: PANEL * 4,
                step: TILE_STEPS * PANEL,
                second: 16,
                prefetch: false,
            },
        }
    }

    /// Offset in a panel of step `s`, column `c`.
    #[inline(always)]
    pub(super) fn at(self, s: usize, c: usize) -> usize {
        self.step(s) + self.group(c / 16) + c % 16
    }
}

/// A weight matrix `[n, k]` packed into panels, with the CPU features its products may use: the
/// packed weight owns its kernel ([`super::matmul_extended`] picks it from these two).
pub struct PackedMatrix {
    pub(super) ty: PackedType,
    pub(super) cpu: Cpu,
    pub(super) n: usize,
    pub(super) k: usize,
    /// Steps along the input dimension: `k` for f32, `ceil(k / 2)` for bf16 rounded up to
    /// whole tiles.
    pub(super) steps: usize,
    /// `[panel][steps × 64]` in the panel's [`PanelLayout`]: f32 bits, two bf16 (even position
    /// in the low half), or four int8 (lowest position in the low byte).
    pub(super) data: Vec<u32>,
    /// int8 only: the scale of each column (`w ≈ q · scale`).
    pub(super) scales: Vec<f32>,
    /// Tiled (`true`) or linear layout whatever the type's default ([`PackedMatrix::pack_tiled`]).
    tiled: Option<bool>,
    /// int8 only: `[panel][chunk][column in panel]`, the sum of the column's int8 weights over
    /// each chunk of [`INT8_CHUNK_STEPS`] steps (0 past `n`). The VNNI kernel's activations are
    /// unsigned (`q + 128`), so its sums exceed the signed ones by 128 times this.
    pub(super) col_sums: Vec<i32>,
}

impl PackedMatrix {
    /// Packs row-major f32 weights `[n, k]` (bf16 rounds to nearest even; exact for values
    /// that came from a bf16 checkpoint).
    pub fn pack(w: &[f32], n: usize, k: usize, ty: PackedType, cpu: Cpu) -> Self {
        Self::pack_strided(w, k, n, k, ty, cpu)
    }

    /// Packs `n` rows of `k` values that start `stride` apart in `w`.
    pub fn pack_strided(
        w: &[f32],
        stride: usize,
        n: usize,
        k: usize,
        ty: PackedType,
        cpu: Cpu,
    ) -> Self {
        let mut packed = PackedMatrix::empty(ty, cpu);
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
            self.data
                .par_chunks_mut(steps * PANEL)
                .enumerate()
                .for_each(|(p, dst)| fill(p, dst));
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
        assert!(
            self.ty != PackedType::Int8,
            "int8 packs weights only (attention runs in bf16)"
        );
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
                            let hi = if 2 * s + 1 < k {
                                bf16::from_f32(v[(2 * s + 1) * stride + col]).to_bits() as u32
                            } else {
                                0
                            };
                            lo | (hi << 16)
                        }
                    };
                }
            }
        }
    }

    /// An empty matrix of the given type, to be filled by [`PackedMatrix::repack_strided`].
    pub fn empty(ty: PackedType, cpu: Cpu) -> Self {
        PackedMatrix {
            ty,
            cpu,
            n: 0,
            k: 0,
            steps: 0,
            data: Vec::new(),
            scales: Vec::new(),
            tiled: None,
            col_sums: Vec::new(),
        }
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

    /// The CPU features its products may use.
    pub fn cpu(&self) -> Cpu {
        self.cpu
    }

    /// Bytes of packed weights (what this matrix adds to the resident memory).
    pub fn bytes(&self) -> usize {
        4 * self.data.len() + 4 * self.scales.len() + 4 * self.col_sums.len()
    }

    /// How each panel's values are laid out.
    pub(super) fn layout(&self) -> PanelLayout {
        match self.tiled {
            Some(true) if self.ty != PackedType::F32 && self.steps.is_multiple_of(TILE_STEPS) => {
                PanelLayout::Tiled { steps: self.steps }
            }
            Some(_) => PanelLayout::Linear,
            None => PanelLayout::new(self.ty, self.steps),
        }
    }

    /// [`PackedMatrix::pack`] into the tiled (where the steps allow) or the linear panel layout,
    /// whatever the type's default: for `examples/gemm_speed` to compare the two in one process.
    #[doc(hidden)]
    pub fn pack_tiled(
        w: &[f32],
        n: usize,
        k: usize,
        ty: PackedType,
        tiled: bool,
        cpu: Cpu,
    ) -> Self {
        let mut packed = PackedMatrix {
            tiled: Some(tiled),
            ..PackedMatrix::empty(ty, cpu)
        };
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
                bf16::from_bits(if i.is_multiple_of(2) {
                    pair as u16
                } else {
                    (pair >> 16) as u16
                })
                .to_f32()
            }
            PackedType::Int8 => {
                let quad = at(i / 4);
                (quad >> (8 * (i % 4))) as u8 as i8 as f32 * self.scales[col]
            }
        }
    }
}

/// bf16 of `row[2s]` in the low half and of `row[2s + 1]` in the high half (0 past the row).
pub(super) fn bf16_pair(row: &[f32], s: usize) -> u32 {
    let lo = row
        .get(2 * s)
        .map_or(0, |&v| bf16::from_f32(v).to_bits() as u32);
    let hi = row
        .get(2 * s + 1)
        .map_or(0, |&v| bf16::from_f32(v).to_bits() as u32);
    lo | (hi << 16)
}

/// The symmetric int8 scale of `values`: the largest magnitude maps to 127 (1 for all zeros).
pub(super) fn int8_scale(values: &[f32]) -> f32 {
    // Sixteen running maxima, in the comparison form that compiles to vector instructions.
    let mut lanes = [0f32; 16];
    let mut chunks = values.chunks_exact(16);
    for chunk in &mut chunks {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            let a = v.abs();
            *m = if a > *m { a } else { *m };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(0f32, |m, v| m.max(v.abs()));
    if max > 0.0 && max.is_finite() {
        max / 127.0
    } else {
        1.0
    }
}

/// Inputs `4s .. 4s + 3` of `row` times `inverse_scale`, rounded to int8 (0 past the end).
pub(super) fn int8_quad(row: &[f32], s: usize, inverse_scale: f32) -> u32 {
    (0..4).fold(0u32, |quad, j| {
        let q = row.get(4 * s + j).map_or(0, |&v| {
            (v * inverse_scale).round().clamp(-127.0, 127.0) as i8
        });
        quad | (q as u8 as u32) << (8 * j)
    })
}

/// [`PackedMatrix::col_sums`] of packed int8 `data` of `panels` panels of `steps` steps.
pub(super) fn int8_column_sums(
    data: &[u32],
    panels: usize,
    layout: PanelLayout,
    steps: usize,
    parallel: bool,
) -> Vec<i32> {
    let chunks = int8_chunks(steps);
    let mut sums = vec![0i32; panels * chunks * PANEL];
    let sum_panel = |(panel, dst): (&[u32], &mut [i32])| {
        for s in 0..steps {
            let chunk = &mut dst[s / INT8_CHUNK_STEPS * PANEL..][..PANEL];
            for (c, sum) in chunk.iter_mut().enumerate() {
                *sum += panel[layout.at(s, c)]
                    .to_le_bytes()
                    .iter()
                    .map(|&b| b as i8 as i32)
                    .sum::<i32>();
            }
        }
    };
    let panel_len = (steps * PANEL).max(1);
    if parallel {
        data.par_chunks(panel_len)
            .zip(sums.par_chunks_mut(chunks * PANEL))
            .for_each(sum_panel);
    } else {
        data.chunks(panel_len)
            .zip(sums.chunks_mut(chunks * PANEL))
            .for_each(sum_panel);
    }
    sums
}
