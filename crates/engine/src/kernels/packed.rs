//! `y = x · Wᵀ` on AVX-512 with weights packed once into panels: f32 (`VFMADD231PS`, the exact
//! path) and bf16 (`VDPBF16PS`, twice the rate, activations rounded to bf16).
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
        *AVAILABLE.get_or_init(|| avx512_available() && is_x86_feature_detected!("avx512bf16"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Element type of a packed matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackedType {
    /// f32 values, one per step.
    F32,
    /// bf16 pairs, two input positions per step.
    Bf16,
}

/// A weight matrix `[n, k]` packed into panels.
pub struct PackedMatrix {
    ty: PackedType,
    n: usize,
    k: usize,
    /// Steps along the input dimension: `k` for f32, `ceil(k / 2)` for bf16.
    steps: usize,
    /// `[panel][step][column in panel]`: f32 bits, or two bf16 (even position in the low half).
    data: Vec<u32>,
}

impl PackedMatrix {
    /// Packs row-major f32 weights `[n, k]` (bf16 rounds to nearest even; exact for values
    /// that came from a bf16 checkpoint).
    pub fn pack(w: &[f32], n: usize, k: usize, ty: PackedType) -> Self {
        Self::pack_strided(w, k, n, k, ty)
    }

    /// Packs `n` rows of `k` values that start `stride` apart in `w`.
    pub fn pack_strided(w: &[f32], stride: usize, n: usize, k: usize, ty: PackedType) -> Self {
        let mut packed = PackedMatrix { ty, n, k, steps: 0, data: Vec::new() };
        packed.repack_strided(w, stride, n, k);
        packed
    }

    /// Packs new contents into this matrix, reusing its buffer (attention re-packs K and V
    /// for every head).
    pub fn repack_strided(&mut self, w: &[f32], stride: usize, n: usize, k: usize) {
        assert!(n == 0 || w.len() >= (n - 1) * stride + k);
        let steps = match self.ty {
            PackedType::F32 => k,
            PackedType::Bf16 => k.div_ceil(2),
        };
        let panels = n.div_ceil(PANEL);
        self.n = n;
        self.k = k;
        self.steps = steps;
        self.data.clear();
        self.data.resize(panels * steps * PANEL, 0);
        let ty = self.ty;
        let fill = |panel: usize, dst: &mut [u32]| {
            for c in 0..PANEL.min(n - panel * PANEL) {
                let row = &w[(panel * PANEL + c) * stride..][..k];
                for s in 0..steps {
                    dst[s * PANEL + c] = match ty {
                        PackedType::F32 => row[s].to_bits(),
                        PackedType::Bf16 => bf16_pair(row, s),
                    };
                }
            }
        };
        if panels * steps * PANEL >= 1 << 16 && rayon::current_thread_index().is_none() {
            self.data.par_chunks_mut(steps * PANEL).enumerate().for_each(|(p, dst)| fill(p, dst));
        } else {
            for (p, dst) in self.data.chunks_mut((steps * PANEL).max(1)).enumerate() {
                fill(p, dst);
            }
        }
    }

    /// Packs the transpose of `k` rows of `n` values that start `stride` apart: element
    /// `(col c, position s)` is `v[s·stride + c]` (attention's V, whose rows are keys).
    pub fn repack_transposed(&mut self, v: &[f32], stride: usize, k: usize, n: usize) {
        assert!(k == 0 || v.len() >= (k - 1) * stride + n);
        let steps = match self.ty {
            PackedType::F32 => k,
            PackedType::Bf16 => k.div_ceil(2),
        };
        let panels = n.div_ceil(PANEL);
        self.n = n;
        self.k = k;
        self.steps = steps;
        self.data.clear();
        self.data.resize(panels * steps * PANEL, 0);
        for panel in 0..panels {
            let cols = PANEL.min(n - panel * PANEL);
            for s in 0..steps {
                let dst = &mut self.data[(panel * steps + s) * PANEL..][..cols];
                match self.ty {
                    PackedType::F32 => {
                        let src = &v[s * stride + panel * PANEL..][..cols];
                        for (d, x) in dst.iter_mut().zip(src) {
                            *d = x.to_bits();
                        }
                    }
                    PackedType::Bf16 => {
                        for (c, d) in dst.iter_mut().enumerate() {
                            let col = panel * PANEL + c;
                            let lo = bf16::from_f32(v[2 * s * stride + col]).to_bits() as u32;
                            let hi = if 2 * s + 1 < k { bf16::from_f32(v[(2 * s + 1) * stride + col]).to_bits() as u32 } else { 0 };
                            *d = lo | (hi << 16);
                        }
                    }
                }
            }
        }
    }

    /// An empty matrix of the given type, to be filled by [`PackedMatrix::repack_strided`].
    pub fn empty(ty: PackedType) -> Self {
        PackedMatrix { ty, n: 0, k: 0, steps: 0, data: Vec::new() }
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

    /// The stored weight at `(col, i)` as f32 (for tests).
    pub fn get(&self, col: usize, i: usize) -> f32 {
        let (panel, c) = (col / PANEL, col % PANEL);
        match self.ty {
            PackedType::F32 => f32::from_bits(self.data[(panel * self.steps + i) * PANEL + c]),
            PackedType::Bf16 => {
                let pair = self.data[(panel * self.steps + i / 2) * PANEL + c];
                bf16::from_bits(if i % 2 == 0 { pair as u16 } else { (pair >> 16) as u16 }).to_f32()
            }
        }
    }
}

/// bf16 of `row[2s]` in the low half and of `row[2s + 1]` (or 0) in the high half.
fn bf16_pair(row: &[f32], s: usize) -> u32 {
    let lo = bf16::from_f32(row[2 * s]).to_bits() as u32;
    let hi = row.get(2 * s + 1).map_or(0, |&v| bf16::from_f32(v).to_bits() as u32);
    lo | (hi << 16)
}

/// Rounds `rows` rows of `k` values (`stride` apart) to bf16 pairs, `steps` pairs a row, in a
/// buffer of `padded_rows` rows whose extra rows are zero (AMX works on 32-row blocks).
fn bf16_rows(x: &[f32], stride: usize, rows: usize, k: usize, steps: usize, padded_rows: usize, parallel: bool) -> Vec<u32> {
    let mut pairs = vec![0u32; padded_rows * steps];
    if steps == 0 {
        return pairs;
    }
    let convert = |r: usize, dst: &mut [u32]| {
        let row = &x[r * stride..r * stride + k];
        for (s, v) in dst.iter_mut().enumerate() {
            *v = bf16_pair(row, s);
        }
    };
    let filled = &mut pairs[..rows * steps];
    if parallel {
        filled.par_chunks_exact_mut(steps).enumerate().for_each(|(r, dst)| convert(r, dst));
    } else {
        filled.chunks_exact_mut(steps).enumerate().for_each(|(r, dst)| convert(r, dst));
    }
    pairs
}

/// Activations in the form the kernel of `ty` reads: f32 rows as they are, or bf16 pairs.
enum Activations<'a> {
    F32 { x: &'a [f32], stride: usize },
    Bf16 { pairs: Vec<u32> },
}

impl Activations<'_> {
    fn prepare<'a>(x: &'a [f32], stride: usize, rows: usize, w: &PackedMatrix) -> Activations<'a> {
        match w.ty {
            PackedType::F32 => Activations::F32 { x, stride },
            PackedType::Bf16 => {
                let pairs = bf16_rows(x, stride, rows, w.k, w.steps, rows, rows >= 64);
                Activations::Bf16 { pairs }
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
    match w.ty {
        PackedType::F32 => assert!(avx512_available(), "the packed f32 kernel needs AVX-512"),
        PackedType::Bf16 => assert!(bf16_available(), "the packed bf16 kernel needs AVX512_BF16"),
    }
    if rows == 0 || w.n == 0 {
        return;
    }
    assert!(x.len() >= (rows - 1) * x_stride + w.k, "x too short");
    assert!(out.len() >= (rows - 1) * out_stride + w.n && out_stride >= w.n, "out too short");
    if let MatmulInit::Bias(b) = init {
        assert_eq!(b.len(), w.n);
    }
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if w.ty == PackedType::Bf16 && rows >= 16 && w.steps % amx::PAIRS_PER_STEP == 0 && amx_available() {
        return matmul_amx(x, x_stride, rows, w, out, out_stride, init, parallel);
    }
    let acts = Activations::prepare(x, x_stride, rows, w);
    let out_ptr = SharedOut(out.as_mut_ptr());
    let run_panel = |panel: usize| {
        let cols = PANEL.min(w.n - panel * PANEL);
        let wp = &w.data[panel * w.steps * PANEL..(panel + 1) * w.steps * PANEL];
        let mut tile = [[0f32; PANEL]; MAX_ROWS];
        for r0 in (0..rows).step_by(MAX_ROWS) {
            let mr = MAX_ROWS.min(rows - r0);
            // SAFETY: the features were checked above; `x`/`pairs` hold rows r0..r0+mr of
            // `steps` steps each and `wp` one panel of `steps` steps.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                match &acts {
                    Activations::F32 { x, stride } => {
                        avx512::tile_f32(mr, x.as_ptr().add(r0 * *stride), *stride, w.steps, wp, &mut tile)
                    }
                    Activations::Bf16 { pairs } => {
                        avx512::tile_bf16(mr, pairs.as_ptr().add(r0 * w.steps), w.steps, w.steps, wp, &mut tile)
                    }
                }
            }
            for (i, row) in tile[..mr].iter().enumerate() {
                // SAFETY: this panel's task alone writes columns panel·64 .. panel·64 + cols of
                // each row, and they lie inside `out` (asserted above).
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(out_ptr.get().add((r0 + i) * out_stride + panel * PANEL), cols)
                };
                store(dst, &row[..cols], init, panel * PANEL);
            }
        }
    };
    let panels = w.n.div_ceil(PANEL);
    if parallel && panels > 1 && rows * w.n * w.k >= 1 << 18 {
        (0..panels).into_par_iter().for_each(run_panel);
    } else {
        (0..panels).for_each(run_panel);
    }
}

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

    use super::{MAX_ROWS, PANEL};

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

    /// bf16 tile: `out[m][c] = Σ_s x₀·w₀ + x₁·w₁` over the pairs of step s.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn tile_bf16(mr: usize, x: *const u32, stride: usize, steps: usize, w: &[u32], out: &mut Tile) {
        match mr {
            1 => bf16_rows::<1>(x, stride, steps, w, out),
            2 => bf16_rows::<2>(x, stride, steps, w, out),
            3 => bf16_rows::<3>(x, stride, steps, w, out),
            4 => bf16_rows::<4>(x, stride, steps, w, out),
            5 => bf16_rows::<5>(x, stride, steps, w, out),
            _ => bf16_rows::<6>(x, stride, steps, w, out),
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
    unsafe fn bf16_rows<const MR: usize>(x: *const u32, stride: usize, steps: usize, w: &[u32], out: &mut Tile) {
        debug_assert!(w.len() >= steps * PANEL);
        let mut acc = [[_mm512_setzero_ps(); 4]; MR];
        let mut wp = w.as_ptr();
        for s in 0..steps {
            let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp as *const _));
            let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp.add(16) as *const _));
            let w2: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp.add(32) as *const _));
            let w3: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp.add(48) as *const _));
            for (m, acc_m) in acc.iter_mut().enumerate() {
                let xb: __m512bh = std::mem::transmute(_mm512_set1_epi32(*x.add(m * stride + s) as i32));
                acc_m[0] = _mm512_dpbf16_ps(acc_m[0], xb, w0);
                acc_m[1] = _mm512_dpbf16_ps(acc_m[1], xb, w1);
                acc_m[2] = _mm512_dpbf16_ps(acc_m[2], xb, w2);
                acc_m[3] = _mm512_dpbf16_ps(acc_m[3], xb, w3);
            }
            wp = wp.add(PANEL);
        }
        store_tile(&acc, out);
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
    fn packing_round_trips() {
        let (n, k) = (70, 5);
        let w = round_bf16(noise(n * k, 1));
        for ty in [PackedType::F32, PackedType::Bf16] {
            let packed = PackedMatrix::pack(&w, n, k, ty);
            for c in 0..n {
                for i in 0..k {
                    assert_eq!(packed.get(c, i), w[c * k + i], "{ty:?} ({c}, {i})");
                }
            }
        }
    }

    #[test]
    fn matches_the_reference_on_awkward_shapes() {
        for ty in [PackedType::F32, PackedType::Bf16] {
            let ok = match ty {
                PackedType::F32 => avx512_available(),
                PackedType::Bf16 => bf16_available(),
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
        if !avx512_available() {
            return;
        }
        let (k, n) = (96, 70);
        let x = noise(13 * k, 5);
        let w = noise(n * k, 6);
        let packed = PackedMatrix::pack(&w, n, k, PackedType::F32);
        let mut all = vec![0f32; 13 * n];
        matmul(&x, k, 13, &packed, &mut all, n, MatmulInit::Zero, true);
        for r in 0..13 {
            let mut one = vec![0f32; n];
            matmul(&x[r * k..], k, 1, &packed, &mut one, n, MatmulInit::Zero, false);
            assert_eq!(one, all[r * n..(r + 1) * n], "row {r}");
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

    /// Rows and columns of one output block.
    pub const BLOCK: usize = 32;
    /// Pairs (32 input positions) per tile product.
    pub const PAIRS_PER_STEP: usize = 16;

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

    /// The tile palette: every tile 16 rows of 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    /// Loads the tile configuration on this thread; call before [`block`], on each thread.
    pub fn configure() {
        let mut config = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
        for t in 0..8 {
            config.colsb[t] = 64;
            config.rows[t] = 16;
        }
        // SAFETY: `available()` was true (callers check), and the config is a valid palette 1.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly)) };
    }

    /// Frees the tile state of this thread.
    pub fn release() {
        // SAFETY: valid after `configure` on this thread.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }

    /// `c[32 × 32] = Σ a·b` over `steps` tile steps: `a` holds 32 rows of bf16 pairs
    /// (`a_stride` bytes apart), `b` the panel at the block's first column (pairs 256 bytes apart).
    ///
    /// # Safety
    /// Tiles configured on this thread; `a` readable for 32 rows × 16·steps pairs, `b` for
    /// 16·steps pairs of 32 columns, `c` writable for 32 rows of 32 f32 (128 bytes apart).
    pub unsafe fn block(a: *const u32, a_stride: usize, b: *const u32, steps: usize, c: *mut f32) {
        let b_stride = super::PANEL * 4;
        asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
        for s in 0..steps {
            let a0 = a.add(s * PAIRS_PER_STEP);
            let a1 = a0.add(16 * a_stride / 4);
            let b0 = b.add(s * PAIRS_PER_STEP * super::PANEL);
            let b1 = b0.add(16);
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
                sa = in(reg) a_stride, sb = in(reg) b_stride,
                options(nostack, readonly),
            );
        }
        let sc = BLOCK * 4;
        asm!(
            "tilestored [{c0} + {sc}*1], tmm0",
            "tilestored [{c1} + {sc}*1], tmm1",
            "tilestored [{c2} + {sc}*1], tmm2",
            "tilestored [{c3} + {sc}*1], tmm3",
            c0 = in(reg) c, c1 = in(reg) c.add(16), c2 = in(reg) c.add(16 * BLOCK), c3 = in(reg) c.add(16 * BLOCK + 16),
            sc = in(reg) sc,
            options(nostack),
        );
    }
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

/// The bf16 product on AMX: activations rounded to bf16 pairs, rows padded to 32 with zeros.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(clippy::too_many_arguments)]
fn matmul_amx(
    x: &[f32],
    x_stride: usize,
    rows: usize,
    w: &PackedMatrix,
    out: &mut [f32],
    out_stride: usize,
    init: MatmulInit,
    parallel: bool,
) {
    use amx::BLOCK;
    let steps = w.steps;
    let padded_rows = rows.div_ceil(BLOCK) * BLOCK;
    let pairs = bf16_rows(x, x_stride, rows, w.k, steps, padded_rows, parallel && rows >= 256);
    let out_ptr = SharedOut(out.as_mut_ptr());
    let run_panel = |panel: usize| {
        amx::configure();
        let mut c = [0f32; BLOCK * BLOCK];
        let wp = &w.data[panel * steps * PANEL..(panel + 1) * steps * PANEL];
        for half in 0..PANEL / BLOCK {
            let first_col = panel * PANEL + half * BLOCK;
            if first_col >= w.n {
                break;
            }
            let cols = BLOCK.min(w.n - first_col);
            for r0 in (0..rows).step_by(BLOCK) {
                // SAFETY: tiles configured above; `pairs` has 32 padded rows from r0 of `steps`
                // pairs, the panel has `steps` pairs of 64 columns, `c` is 32 × 32.
                unsafe {
                    amx::block(
                        pairs.as_ptr().add(r0 * steps),
                        steps * 4,
                        wp.as_ptr().add(half * BLOCK),
                        steps / amx::PAIRS_PER_STEP,
                        c.as_mut_ptr(),
                    )
                };
                for i in 0..BLOCK.min(rows - r0) {
                    // SAFETY: this panel's task alone writes these columns of each row.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(out_ptr.get().add((r0 + i) * out_stride + first_col), cols)
                    };
                    store(dst, &c[i * BLOCK..i * BLOCK + cols], init, first_col);
                }
            }
        }
        amx::release();
    };
    let panels = w.n.div_ceil(PANEL);
    if parallel && panels > 1 {
        (0..panels).into_par_iter().for_each(run_panel);
    } else {
        (0..panels).for_each(run_panel);
    }
}
