//! Fused flash attention on AMX tiles, for heads of 64 dimensions, in bf16 or exact f32.
//!
//! For each sequence and head, Q, K and V are converted once to bf16 tiles in the layouts the
//! tile products read. Then, for each block of 16 queries and each block of 32 keys:
//! - `S = Q·Kᵀ` (tile products) goes to a 2 KiB buffer;
//! - the vector units turn it into probabilities `P = 2^(S·c − m)`, one 64-byte tile row of bf16
//!   per query, and add them to per-row sums;
//! - `O += P·V` (tile products) accumulates in four tile registers, which stay loaded for the
//!   whole pass over the keys.
//!
//! **Exact f32** ([`Precision::F32`]) splits every f32 value exactly into three bf16 parts
//! (`x = hi + mid + lo`, as the linear layers' bf16x3 path does) and multiplies the part pairs
//! whose weight reaches f32's precision: hi·hi, hi·mid, mid·hi, hi·lo, lo·hi and mid·mid. Each
//! part product is exact and the tiles sum in f32; the pairs left out (mid·lo, lo·mid, lo·lo)
//! weigh at most 2⁻²³ of |x·y|, as much as f32's own rounding of the product. The exponential is
//! then a degree-5 polynomial accurate to 2.2e-7, as the f32 kernel's.
//!
//! The accumulator never leaves the tiles, so it cannot be rescaled each time a row's maximum
//! grows, as a textbook online softmax does. Instead `m` is a per-row reference that only moves
//! when a score exceeds it by more than [`HEADROOM`] (a factor 2^16, harmless in f32 and bf16):
//! then the tiles are stored, the rows rescaled and the tiles reloaded. The first block of each
//! row sets `m` to that block's maximum, and later blocks almost never exceed it by that much.
//!
//! The keys are visited in chunks of [`KEY_CHUNK`] so that a chunk's K and V tiles stay in L2
//! while every block of queries passes over them; each query block's state (accumulator, `m`,
//! sums) is saved between chunks.

use std::arch::asm;
use std::arch::x86_64::*;

use rayon::prelude::*;

use super::{write_rows, SequenceRange, Shape, SharedMut};
use crate::kernels::cpu::Cpu;

/// Dimensions per head this kernel handles.
pub const HEAD_DIM: usize = 64;
/// Queries per block: one tile of rows.
const Q_BLOCK: usize = 16;
/// Keys per block: one bf16 tile step of `P·V` (16 pairs).
const K_BLOCK: usize = 32;
/// Keys per chunk: 1024 keys of K and V tiles are 256 KiB in bf16.
const KEY_CHUNK: usize = 1024;
/// How far (in powers of two) a score may exceed its row's reference before the row is
/// rescaled. Probabilities then stay below 2^16: far from overflow in f32 sums of up to 2^13
/// keys, and bf16 keeps f32's exponent range.
const HEADROOM: f32 = 16.0;
/// The most bf16 parts a value is split into.
const MAX_PARTS: usize = 3;

/// Every (sequence, head) of `tasks` through the fused kernel, in bf16 or exact f32.
pub(super) fn attention(
    qkv: &[f32],
    ctx: SharedMut,
    tasks: &[(SequenceRange, usize)],
    shape: Shape,
    bf16: bool,
    cpu: Cpu,
) {
    thread_local! {
        /// Each thread's buffers, kept across calls: at 8192 tokens they are ~10 MB a head,
        /// and fresh ones cost page faults every layer.
        static KERNELS: std::cell::RefCell<[Option<AmxAttention>; 2]> = const { std::cell::RefCell::new([None, None]) };
    }
    let Shape {
        d, hidden, scale, ..
    } = shape;
    let precision = if bf16 {
        Precision::Bf16
    } else {
        Precision::F32
    };
    let slot = precision as usize;
    tasks.par_iter().for_each(|&(seq, head)| {
        let cached = KERNELS
            .with(|k| k.borrow_mut()[slot].take())
            .filter(|k| k.cpu == cpu);
        let mut kernel = cached.unwrap_or_else(|| AmxAttention::new(precision, cpu));
        let out = kernel.attend(qkv, seq, 3 * hidden, head * d, hidden, scale);
        write_rows(ctx, out, seq.start, head, shape);
        KERNELS.with(|k| k.borrow_mut()[slot] = Some(kernel));
    });
}

/// What the products are computed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Q, K, V and P rounded to bf16.
    Bf16,
    /// Every value split exactly into three bf16 parts: f32 accuracy.
    F32,
}

impl Precision {
    fn parts(self) -> usize {
        match self {
            Precision::Bf16 => 1,
            Precision::F32 => 3,
        }
    }
}

/// One 64-byte tile row, aligned so that a tile load touches whole cache lines.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u32; 16]);

const ZERO_LINE: Line = Line([0; 16]);

/// Per-thread buffers: one head of one sequence at a time. Each tile is 16 lines, its parts
/// (one or three) side by side.
pub struct AmxAttention {
    precision: Precision,
    /// The features this kernel may use (AMX-BF16 among them).
    cpu: Cpu,
    /// `[query block][d half][part]` tiles of Q, a query's 32 dimensions per line.
    q: Vec<Line>,
    /// `[key tile of 16][d half][part]` tiles of K: line `p` holds dimensions `2p, 2p + 1` of
    /// the half, a bf16 pair per key (column).
    k: Vec<Line>,
    /// `[key block of 32][d quarter][part]` tiles of V: line `p` holds keys `2p, 2p + 1` of the
    /// block, a bf16 pair per dimension (column).
    v: Vec<Line>,
    /// `[query][64]` accumulators saved between key chunks.
    o: Vec<f32>,
    /// Per query: the reference `m`, in units of `log2`.
    reference: Vec<f32>,
    /// Per query: the sum of its probabilities over the chunks before the current one.
    sums: Vec<f32>,
}

/// State of one block of 16 queries during a pass over one chunk of keys. Scores and
/// probabilities are double-buffered: block `b + 1`'s scores and block `b − 1`'s `P·V` are on
/// the tiles while the vector units work on block `b`.
struct BlockState {
    scores: [[f32; Q_BLOCK * K_BLOCK]; 2],
    /// `[buffer][part][query]`.
    probabilities: [[[Line; Q_BLOCK]; MAX_PARTS]; 2],
    /// Per-row partial sums, 16 lanes each, added to `sums` at the end of the chunk.
    partial: [[f32; 16]; Q_BLOCK],
}

impl AmxAttention {
    /// Empty buffers for products in `precision`; they grow to the longest sequence seen.
    pub fn new(precision: Precision, cpu: Cpu) -> Self {
        AmxAttention {
            precision,
            cpu,
            q: Vec::new(),
            k: Vec::new(),
            v: Vec::new(),
            o: Vec::new(),
            reference: Vec::new(),
            sums: Vec::new(),
        }
    }

    /// Attention of one head of one sequence; returns `len × 64` rows (query order).
    ///
    /// `qkv` rows are `stride` apart; Q, K and V of this head start at columns `q_col`,
    /// `q_col + hidden` and `q_col + 2·hidden`. `scale` multiplies the scores.
    ///
    /// # Panics
    /// Unless `cpu` has AMX-BF16 (the caller resolved this kernel for it).
    #[allow(clippy::too_many_arguments)]
    pub fn attend(
        &mut self,
        qkv: &[f32],
        seq: SequenceRange,
        stride: usize,
        q_col: usize,
        hidden: usize,
        scale: f32,
    ) -> &[f32] {
        assert!(self.cpu.amx_bf16, "AMX attention needs AMX-BF16");
        let len = seq.len;
        assert!(
            len == 0 || qkv.len() >= (seq.start + len - 1) * stride + q_col + 2 * hidden + HEAD_DIM
        );
        if len == 0 {
            return &[];
        }
        let rows = |offset: usize| {
            (0..len).map(move |t| &qkv[(seq.start + t) * stride + offset..][..HEAD_DIM])
        };
        let parts = self.precision.parts();
        // SAFETY (all three): the features were checked above.
        unsafe {
            pack_queries(rows(q_col), len, parts, &mut self.q);
            pack_keys(rows(q_col + hidden), len, parts, &mut self.k);
            pack_values(rows(q_col + 2 * hidden), len, parts, &mut self.v);
        }
        let q_blocks = len.div_ceil(Q_BLOCK);
        self.o.clear();
        self.o.resize(q_blocks * Q_BLOCK * HEAD_DIM, 0.0);
        self.reference.clear();
        self.reference.resize(q_blocks * Q_BLOCK, f32::NEG_INFINITY);
        self.sums.clear();
        self.sums.resize(q_blocks * Q_BLOCK, 0.0);
        crate::kernels::amx::configure();
        let c = scale * std::f32::consts::LOG2_E;
        let mut state = BlockState {
            scores: [[0.0; Q_BLOCK * K_BLOCK]; 2],
            probabilities: [[[ZERO_LINE; Q_BLOCK]; MAX_PARTS]; 2],
            partial: [[0.0; 16]; Q_BLOCK],
        };
        for chunk in (0..len).step_by(KEY_CHUNK) {
            let keys = chunk..len.min(chunk + KEY_CHUNK);
            for block in 0..q_blocks {
                // SAFETY: tiles configured above; the buffers were sized by the packing for
                // `len` keys and `q_blocks` query blocks.
                unsafe {
                    match self.precision {
                        Precision::Bf16 => {
                            self.block_over_keys::<1>(block, keys.clone(), len, c, &mut state)
                        }
                        Precision::F32 => {
                            self.block_over_keys::<3>(block, keys.clone(), len, c, &mut state)
                        }
                    }
                }
            }
        }
        for (t, row) in self.o.chunks_exact_mut(HEAD_DIM).take(len).enumerate() {
            let inverse = 1.0 / self.sums[t];
            row.iter_mut().for_each(|v| *v *= inverse);
        }
        &self.o[..len * HEAD_DIM]
    }

    /// Adds the keys of `keys` to query block `block`'s accumulator, reference and sums, with
    /// values split into `PARTS` bf16 parts.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
    unsafe fn block_over_keys<const PARTS: usize>(
        &mut self,
        block: usize,
        keys: std::ops::Range<usize>,
        len: usize,
        c: f32,
        state: &mut BlockState,
    ) {
        let first_row = block * Q_BLOCK;
        let o = self.o[first_row * HEAD_DIM..].as_mut_ptr();
        load_accumulators(o);
        state.partial = [[0.0; 16]; Q_BLOCK];
        let q = self.q[block * 2 * PARTS * Q_BLOCK..].as_ptr();
        let reference = &mut self.reference[first_row..first_row + Q_BLOCK];
        let sums = &mut self.sums[first_row..first_row + Q_BLOCK];
        let first_block = keys.start / K_BLOCK;
        let blocks = first_block..keys.end.div_ceil(K_BLOCK);
        // Both key tiles of a block, and the block's four value tiles, each `PARTS` tiles.
        let key_tiles = |kb: usize| self.k[kb * 2 * 2 * PARTS * 16..].as_ptr();
        let value_tiles = |kb: usize| self.v[kb * 4 * PARTS * 16..].as_ptr();
        scores::<PARTS>(
            q,
            key_tiles(first_block),
            state.scores[first_block % 2].as_mut_ptr(),
        );
        for kb in blocks.clone() {
            let (now, other) = (kb % 2, (kb + 1) % 2);
            // The tiles take the previous block's P·V and the next block's scores ...
            if kb > first_block {
                accumulate::<PARTS>(&state.probabilities[other], value_tiles(kb - 1));
            }
            if kb + 1 < blocks.end {
                scores::<PARTS>(q, key_tiles(kb + 1), state.scores[other].as_mut_ptr());
            }
            // ... while the vector units turn this block's scores into probabilities. A
            // rebase stores the accumulators after the P·V above, so it scales that too.
            let valid = K_BLOCK.min(len - kb * K_BLOCK);
            let lines = &mut state.probabilities[now];
            let scores = &state.scores[now];
            if let Some(r) =
                probabilities::<PARTS>(scores, valid, c, reference, lines, &mut state.partial)
            {
                rebase_rows::<PARTS>(
                    r,
                    o,
                    scores,
                    valid,
                    c,
                    reference,
                    sums,
                    lines,
                    &mut state.partial,
                );
            }
        }
        let last = blocks.end - 1;
        accumulate::<PARTS>(&state.probabilities[last % 2], value_tiles(last));
        store_accumulators(o);
        for (sum, partial) in sums.iter_mut().zip(&state.partial) {
            *sum += partial.iter().sum::<f32>();
        }
    }
}

/// Q as A tiles (see [`AmxAttention::q`]); rows past `len` are zero.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn pack_queries<'a>(
    rows: impl Iterator<Item = &'a [f32]>,
    len: usize,
    parts: usize,
    q: &mut Vec<Line>,
) {
    q.clear();
    q.resize(len.div_ceil(Q_BLOCK) * 2 * parts * 16, ZERO_LINE);
    for (t, row) in rows.enumerate() {
        let (b, r) = (t / Q_BLOCK, t % Q_BLOCK);
        for h in 0..2 {
            let split = split_line(row[32 * h..].as_ptr(), parts);
            for (p, line) in split.iter().take(parts).enumerate() {
                q[((2 * b + h) * parts + p) * 16 + r] = *line;
            }
        }
    }
}

/// K as B tiles of `Q·Kᵀ` (see [`AmxAttention::k`]); keys past `len`, up to a whole block of
/// 32, are zero.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn pack_keys<'a>(
    rows: impl Iterator<Item = &'a [f32]>,
    len: usize,
    parts: usize,
    k: &mut Vec<Line>,
) {
    k.clear();
    k.resize(len.div_ceil(K_BLOCK) * 2 * 2 * parts * 16, ZERO_LINE);
    for (t, row) in rows.enumerate() {
        let (j, i) = (t / 16, t % 16);
        for h in 0..2 {
            // The bf16 of 32 dimensions, read as 16 pairs: pair p goes to line p, column i.
            let split = split_line(row[32 * h..].as_ptr(), parts);
            for (p, pairs) in split.iter().take(parts).enumerate() {
                let tile = &mut k[((2 * j + h) * parts + p) * 16..][..16];
                for (line, &pair) in tile.iter_mut().zip(&pairs.0) {
                    line.0[i] = pair;
                }
            }
        }
    }
}

/// V as B tiles of `P·V` (see [`AmxAttention::v`]); keys past `len` are zero.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn pack_values<'a>(
    rows: impl Iterator<Item = &'a [f32]>,
    len: usize,
    parts: usize,
    v: &mut Vec<Line>,
) {
    v.clear();
    v.resize(len.div_ceil(K_BLOCK) * 4 * parts * 16, ZERO_LINE);
    let mut rows = rows.peekable();
    let mut t = 0;
    while let Some(even) = rows.next() {
        let odd = rows.next();
        let (b, p) = (t / K_BLOCK, (t % K_BLOCK) / 2);
        for c in 0..4 {
            let lo = split_16(even[16 * c..].as_ptr());
            let hi = odd.map(|odd| split_16(odd[16 * c..].as_ptr()));
            for part in 0..parts {
                // Key 2p in the low half of each pair, key 2p + 1 in the high half.
                let low = _mm512_cvtepu16_epi32(lo[part]);
                let high = hi.map_or(_mm512_setzero_si512(), |hi| {
                    _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(hi[part]))
                });
                let line = &mut v[((4 * b + c) * parts + part) * 16 + p];
                _mm512_store_si512(line.0.as_mut_ptr() as *mut _, _mm512_or_si512(low, high));
            }
        }
        t += 2;
    }
}

/// 32 f32 at `x` as lines of 32 bf16: the first `parts` of `hi, mid, lo` (see [`split_pair`]).
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn split_line(x: *const f32, parts: usize) -> [Line; MAX_PARTS] {
    let mut lines = [ZERO_LINE; MAX_PARTS];
    split_pair(
        _mm512_loadu_ps(x),
        _mm512_loadu_ps(x.add(16)),
        parts,
        |part, packed| _mm512_store_si512(lines[part].0.as_mut_ptr() as *mut _, packed),
    );
    lines
}

/// `lo` then `hi` (16 f32 each) as `parts` vectors of 32 bf16 handed to `write(part, bf16s)`:
/// each part is the bf16 of what the parts before it left over, so three parts sum to every
/// value exactly (rounding to nearest even each time).
#[inline(always)]
unsafe fn split_pair(
    mut lo: __m512,
    mut hi: __m512,
    parts: usize,
    mut write: impl FnMut(usize, __m512i),
) {
    for part in 0..parts {
        let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        write(part, packed);
        if part + 1 < parts {
            lo = _mm512_sub_ps(lo, widen(_mm512_castsi512_si256(packed)));
            hi = _mm512_sub_ps(hi, widen(_mm512_extracti64x4_epi64::<1>(packed)));
        }
    }
}

/// 16 bf16 back to f32, exactly (a shift of the bits).
#[inline(always)]
unsafe fn widen(bf16s: __m256i) -> __m512 {
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bf16s)))
}

/// 16 f32 at `x` split into three bf16 parts, as [`split_pair`].
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn split_16(x: *const f32) -> [__m256i; MAX_PARTS] {
    let mut rest = _mm512_loadu_ps(x);
    let mut parts = [_mm256_setzero_si256(); MAX_PARTS];
    for part in &mut parts {
        *part = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(rest));
        rest = _mm512_sub_ps(rest, widen(*part));
    }
    parts
}

/// `tmmR` ← the tile at `tile` (16 lines).
#[inline(always)]
unsafe fn load<const R: u8>(tile: *const Line) {
    asm!("tileloadd tmm{r}, [{p} + {s}*1]", r = const R, p = in(reg) tile, s = in(reg) 64usize, options(nostack, readonly));
}

/// `tmmC += tmmA · tmmB` in bf16 pairs with f32 sums.
#[inline(always)]
unsafe fn dot<const C: u8, const A: u8, const B: u8>() {
    asm!("tdpbf16ps tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B, options(nostack, nomem));
}

/// Loads the accumulator tiles `tmm0..tmm3` from 16 rows of 64 f32 at `o`.
unsafe fn load_accumulators(o: *mut f32) {
    asm!(
        "tileloadd tmm0, [{o0} + {s}*1]",
        "tileloadd tmm1, [{o1} + {s}*1]",
        "tileloadd tmm2, [{o2} + {s}*1]",
        "tileloadd tmm3, [{o3} + {s}*1]",
        o0 = in(reg) o, o1 = in(reg) o.add(16), o2 = in(reg) o.add(32), o3 = in(reg) o.add(48),
        s = in(reg) HEAD_DIM * 4,
        options(nostack, readonly),
    );
}

/// Stores the accumulator tiles back to `o`.
unsafe fn store_accumulators(o: *mut f32) {
    asm!(
        "tilestored [{o0} + {s}*1], tmm0",
        "tilestored [{o1} + {s}*1], tmm1",
        "tilestored [{o2} + {s}*1], tmm2",
        "tilestored [{o3} + {s}*1], tmm3",
        o0 = in(reg) o, o1 = in(reg) o.add(16), o2 = in(reg) o.add(32), o3 = in(reg) o.add(48),
        s = in(reg) HEAD_DIM * 4,
        options(nostack),
    );
}

/// Part pairs `(a, b)` multiplied when values have `parts` parts: those with `a + b < parts`
/// (for three parts hi·hi, hi·mid, hi·lo, mid·hi, mid·mid, lo·hi).
#[inline(always)]
fn pairs_of(a: usize, parts: usize) -> usize {
    parts - a
}

/// `s[16 × 32] = Q·Kᵀ` for one query block (`q`: its tiles) and one key block (`k`: its two
/// key tiles' tiles), in `tmm4` (keys 0..16) and `tmm5` (keys 16..32) with `tmm6`, `tmm7`.
#[inline(always)]
unsafe fn scores<const PARTS: usize>(q: *const Line, k: *const Line, s: *mut f32) {
    asm!("tilezero tmm4", "tilezero tmm5", options(nostack, nomem));
    for h in 0..2 {
        for qp in 0..PARTS {
            load::<6>(q.add((h * PARTS + qp) * 16));
            for kp in 0..pairs_of(qp, PARTS) {
                load::<7>(k.add((h * PARTS + kp) * 16));
                dot::<4, 6, 7>();
                load::<7>(k.add(((2 + h) * PARTS + kp) * 16));
                dot::<5, 6, 7>();
            }
        }
    }
    asm!(
        "tilestored [{s0} + {ss}*1], tmm4",
        "tilestored [{s1} + {ss}*1], tmm5",
        s0 = in(reg) s, s1 = in(reg) s.add(16), ss = in(reg) K_BLOCK * 4,
        options(nostack),
    );
}

/// `O += P·V`: `p` the probability tiles (one per part), `v` the key block's value tiles;
/// the value tiles rotate through `tmm4`, `tmm5` and `tmm7` so that a load need not wait for
/// the product before it.
#[inline(always)]
unsafe fn accumulate<const PARTS: usize>(p: &[[Line; Q_BLOCK]; MAX_PARTS], v: *const Line) {
    let tile = |c: usize, part: usize| v.add((c * PARTS + part) * 16);
    for (pp, lines) in p.iter().enumerate().take(PARTS) {
        load::<6>(lines.as_ptr());
        for vp in 0..pairs_of(pp, PARTS) {
            load::<4>(tile(0, vp));
            dot::<0, 6, 4>();
            load::<5>(tile(1, vp));
            dot::<1, 6, 5>();
            load::<7>(tile(2, vp));
            dot::<2, 6, 7>();
            load::<4>(tile(3, vp));
            dot::<3, 6, 4>();
        }
    }
}

/// Lane masks of the two halves of a key block with `valid` keys.
fn lane_masks(valid: usize) -> (u16, u16) {
    let mask = |n: usize| if n >= 16 { u16::MAX } else { (1u16 << n) - 1 };
    (mask(valid), mask(valid.saturating_sub(16)))
}

/// `2^x`, lanes off in `mask` zero: `x = n + f` with |f| ≤ ½, a polynomial for `2^f` and
/// `VSCALEFPS` for `2^n`, which gives 0 for very negative `x` instead of a subnormal. One part
/// (bf16 probabilities): degree 3, relative error 7.7e-5, far below bf16's 4e-3. Three parts:
/// degree 5, 2.2e-7 (f32 evaluation included).
#[inline(always)]
unsafe fn exp2<const PARTS: usize>(mask: u16, x: __m512) -> __m512 {
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
    let f = _mm512_sub_ps(x, n);
    let coefficients: &[f32] = if PARTS == 1 {
        &[0.055_088_766, 0.242_604_66, 0.693_276_3, 0.999_928_9]
    } else {
        &[
            0.001_326_697_5,
            0.009_675_465,
            0.055_507_425,
            0.240_221_22,
            0.693_146_94,
            1.000_000_1,
        ]
    };
    let mut p = _mm512_set1_ps(coefficients[0]);
    for &c in &coefficients[1..] {
        p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
    }
    _mm512_maskz_scalef_ps(mask, p, n)
}

/// `x = s·c − m` for the 32 scores of one row at `s`.
#[inline(always)]
unsafe fn exponents(s: *const f32, c: __m512, m: __m512) -> (__m512, __m512) {
    (
        _mm512_fmsub_ps(_mm512_loadu_ps(s), c, m),
        _mm512_fmsub_ps(_mm512_loadu_ps(s.add(16)), c, m),
    )
}

/// One query row's probabilities `2^x`: its line of each part, and the lanes added to
/// `partial`.
#[inline(always)]
unsafe fn row_probabilities<const PARTS: usize>(
    (x0, x1): (__m512, __m512),
    masks: (u16, u16),
    lines: &mut [[Line; Q_BLOCK]; MAX_PARTS],
    r: usize,
    partial: &mut [f32; 16],
) {
    let p0 = exp2::<PARTS>(masks.0, x0);
    let p1 = exp2::<PARTS>(masks.1, x1);
    let sum = _mm512_add_ps(_mm512_loadu_ps(partial.as_ptr()), _mm512_add_ps(p0, p1));
    _mm512_storeu_ps(partial.as_mut_ptr(), sum);
    split_pair(p0, p1, PARTS, |part, packed| {
        _mm512_store_si512(lines[part][r].0.as_mut_ptr() as *mut _, packed)
    });
}

/// Probabilities of every row of the block against its reference. Stops at the first row with
/// a score more than [`HEADROOM`] above its reference (or no reference yet) and returns it;
/// the rows before it are done.
#[inline(always)]
unsafe fn probabilities<const PARTS: usize>(
    scores: &[f32; Q_BLOCK * K_BLOCK],
    valid: usize,
    c: f32,
    reference: &[f32],
    lines: &mut [[Line; Q_BLOCK]; MAX_PARTS],
    partial: &mut [[f32; 16]; Q_BLOCK],
) -> Option<usize> {
    let masks = lane_masks(valid);
    let cv = _mm512_set1_ps(c);
    let headroom = _mm512_set1_ps(HEADROOM);
    for r in 0..Q_BLOCK {
        let (x0, x1) = exponents(
            scores[r * K_BLOCK..].as_ptr(),
            cv,
            _mm512_set1_ps(reference[r]),
        );
        // NaN-safe: a reference of -∞ gives x = +∞, which is over.
        let over = _mm512_mask_cmp_ps_mask::<_CMP_NLE_UQ>(masks.0, x0, headroom)
            | _mm512_mask_cmp_ps_mask::<_CMP_NLE_UQ>(masks.1, x1, headroom);
        if over != 0 {
            return Some(r);
        }
        row_probabilities::<PARTS>((x0, x1), masks, lines, r, &mut partial[r]);
    }
    None
}

/// The slow path of [`probabilities`] from row `first`: each row whose block maximum is above
/// its reference takes that maximum as its new reference, and what it has accumulated so far
/// (tiles, sums) is rescaled by `2^(old − new)`; then its probabilities are computed.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn rebase_rows<const PARTS: usize>(
    first: usize,
    o: *mut f32,
    scores: &[f32; Q_BLOCK * K_BLOCK],
    valid: usize,
    c: f32,
    reference: &mut [f32],
    sums: &mut [f32],
    lines: &mut [[Line; Q_BLOCK]; MAX_PARTS],
    partial: &mut [[f32; 16]; Q_BLOCK],
) {
    let masks = lane_masks(valid);
    let cv = _mm512_set1_ps(c);
    // Each row's block maximum (of s·c) first: a row whose reference moves from a finite value
    // has accumulated something, and only then are the tiles stored and rescaled (not on a
    // query block's first key block, where every reference is still −∞).
    let mut row_max = [f32::NEG_INFINITY; Q_BLOCK];
    for (r, max) in row_max.iter_mut().enumerate().skip(first) {
        let s = scores[r * K_BLOCK..].as_ptr();
        let lowest = _mm512_set1_ps(f32::NEG_INFINITY);
        let x0 = _mm512_mask_mul_ps(lowest, masks.0, _mm512_loadu_ps(s), cv);
        let x1 = _mm512_mask_mul_ps(lowest, masks.1, _mm512_loadu_ps(s.add(16)), cv);
        *max = _mm512_reduce_max_ps(_mm512_max_ps(x0, x1));
    }
    let rescale =
        (first..Q_BLOCK).any(|r| row_max[r] > reference[r] && reference[r] != f32::NEG_INFINITY);
    if rescale {
        store_accumulators(o);
    }
    for r in first..Q_BLOCK {
        let s = scores[r * K_BLOCK..].as_ptr();
        let row_max = row_max[r];
        if row_max > reference[r] {
            let old = reference[r];
            reference[r] = row_max;
            // No reference yet: nothing accumulated (2^(−∞) would be 0 anyway).
            if old != f32::NEG_INFINITY {
                #[cfg(test)]
                tests::REBASED_ROWS.with(|n| n.set(n.get() + 1));
                let factor = (old - row_max).exp2();
                sums[r] *= factor;
                partial[r].iter_mut().for_each(|v| *v *= factor);
                std::slice::from_raw_parts_mut(o.add(r * HEAD_DIM), HEAD_DIM)
                    .iter_mut()
                    .for_each(|v| *v *= factor);
            }
        }
        let x = exponents(s, cv, _mm512_set1_ps(reference[r]));
        row_probabilities::<PARTS>(x, masks, lines, r, &mut partial[r]);
    }
    if rescale {
        load_accumulators(o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::noise;

    thread_local! {
        /// Rows whose reference moved after the first block (the slow path's real work).
        pub static REBASED_ROWS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// Against the f64 reference: lengths around the blocks (16 queries, 32 keys, 1024-key
    /// chunks), and scores that grow along the keys so that rows are rebased many times.
    fn matches_the_reference(precision: Precision, tolerance: f32, growth_tolerance: f32) {
        // AMX is one of the variants only where the CPU has it (`Cpu::variants`).
        let Some(cpu) = crate::kernels::cpu::Cpu::detected()
            .amx_bf16
            .then(crate::kernels::cpu::Cpu::detected)
        else {
            return;
        };
        let (heads, d) = (2, HEAD_DIM);
        let hidden = heads * d;
        for (len, growth) in [
            (1, 0.0),
            (15, 0.0),
            (17, 0.0),
            (33, 0.0),
            (100, 0.0),
            (1030, 0.0),
            (300, 0.03),
            (2100, 0.004),
        ] {
            let mut qkv: Vec<f32> = noise(len * 3 * hidden, len as u64)
                .iter()
                .map(|v| v * 2.0)
                .collect();
            // K rows scaled up along the sequence: later keys score higher and higher.
            for t in 0..len {
                for x in &mut qkv[t * 3 * hidden + hidden..][..hidden] {
                    *x *= 1.0 + growth * t as f32;
                }
            }
            let seq = SequenceRange { start: 0, len };
            let want = crate::kernels::reference::attention(&qkv, &[seq], heads, d);
            let tolerance = if growth == 0.0 {
                tolerance
            } else {
                growth_tolerance
            };
            let rebased_before = REBASED_ROWS.with(|n| n.get());
            let mut kernel = AmxAttention::new(precision, cpu);
            let mut worst = 0f32;
            for h in 0..heads {
                let got = kernel
                    .attend(
                        &qkv,
                        seq,
                        3 * hidden,
                        h * d,
                        hidden,
                        1.0 / (d as f32).sqrt(),
                    )
                    .to_vec();
                for t in 0..len {
                    let (a, b) = (&got[t * d..][..d], &want[t * hidden + h * d..][..d]);
                    worst = a
                        .iter()
                        .zip(b)
                        .map(|(x, y)| (x - y).abs())
                        .fold(worst, f32::max);
                }
            }
            assert!(
                worst < tolerance,
                "{precision:?} len {len} growth {growth}: off by {worst}"
            );
            if growth > 0.0 {
                assert!(
                    REBASED_ROWS.with(|n| n.get()) > rebased_before,
                    "len {len}: no row was rebased"
                );
            }
        }
    }

    #[test]
    fn bf16_matches_the_reference() {
        // bf16 rounds Q, K, V and P to 8 significant bits; with growing keys the logits span
        // tens and each moves by up to ~0.1 (the tiled bf16 kernel this one replaced was off by
        // 0.105 on the 2100-key case, this one by 0.054).
        matches_the_reference(Precision::Bf16, 1e-2, 0.15);
    }

    #[test]
    fn split_f32_matches_the_reference() {
        // As the f32 kernel: rounding error only, also with logits that span tens.
        matches_the_reference(Precision::F32, 2e-6, 2e-5);
    }
}
