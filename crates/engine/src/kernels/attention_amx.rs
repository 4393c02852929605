//! Fused bf16 flash attention on AMX tiles, for heads of 64 dimensions.
//!
//! For each sequence and head, Q, K and V are converted once to bf16 tiles in the layouts the
//! tile products read. Then, for each block of 16 queries and each block of 32 keys:
//! - `S = Q·Kᵀ` (four tile products) goes to a 2 KiB buffer;
//! - the vector units turn it into probabilities `P = 2^(S·c − m)` in bf16, one 64-byte tile row
//!   per query, and add them to per-row sums;
//! - `O += P·V` (four tile products) accumulates in four tile registers, which stay loaded for
//!   the whole pass over the keys.
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

use super::SequenceRange;

/// Dimensions per head this kernel handles.
pub const HEAD_DIM: usize = 64;
/// Queries per block: one tile of rows.
const Q_BLOCK: usize = 16;
/// Keys per block: one bf16 tile step of `P·V` (16 pairs).
const K_BLOCK: usize = 32;
/// Keys per chunk: 1024 keys of K and V tiles are 256 KiB.
const KEY_CHUNK: usize = 1024;
/// How far (in powers of two) a score may exceed its row's reference before the row is
/// rescaled. Probabilities then stay below 2^16: far from overflow in f32 sums of up to 2^13
/// keys, and bf16 keeps f32's exponent range.
const HEADROOM: f32 = 16.0;

/// One 64-byte tile row, aligned so that a tile load touches whole cache lines.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u32; 16]);

const ZERO_LINE: Line = Line([0; 16]);

/// Per-thread buffers: one head of one sequence at a time.
pub struct AmxAttention {
    /// `[query block][d half][16 rows]`: Q in bf16, 32 dimensions per row.
    q: Vec<Line>,
    /// `[key tile of 16][d half][16 pairs of dimensions]`: K in bf16, a column per key.
    k: Vec<Line>,
    /// `[key block of 32][d quarter][16 pairs of keys]`: V in bf16, a column per dimension.
    v: Vec<Line>,
    /// `[query][64]` accumulators saved between key chunks.
    o: Vec<f32>,
    /// Per query: the reference `m`, in units of `log2`.
    reference: Vec<f32>,
    /// Per query: the sum of its probabilities so far (chunks before the current one).
    sums: Vec<f32>,
}

/// State of one block of 16 queries during a pass over one chunk of keys.
struct BlockState {
    scores: [f32; Q_BLOCK * K_BLOCK],
    probabilities: [Line; Q_BLOCK],
    /// Per-row partial sums, 16 lanes each, added to `sums` at the end of the chunk.
    partial: [[f32; 16]; Q_BLOCK],
}

impl Default for AmxAttention {
    fn default() -> Self {
        Self::new()
    }
}

impl AmxAttention {
    /// Empty buffers; they grow to the longest sequence seen.
    pub fn new() -> Self {
        AmxAttention {
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
    /// Unless AMX-BF16 is usable ([`super::packed::amx_available`]).
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
        assert!(
            super::packed::amx_available(),
            "AMX attention needs AMX-BF16"
        );
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
        // SAFETY (all three): the features were checked by `amx_available` above.
        unsafe {
            pack_queries(rows(q_col), len, &mut self.q);
            pack_keys(rows(q_col + hidden), len, &mut self.k);
            pack_values(rows(q_col + 2 * hidden), len, &mut self.v);
        }
        let q_blocks = len.div_ceil(Q_BLOCK);
        self.o.clear();
        self.o.resize(q_blocks * Q_BLOCK * HEAD_DIM, 0.0);
        self.reference.clear();
        self.reference.resize(q_blocks * Q_BLOCK, f32::NEG_INFINITY);
        self.sums.clear();
        self.sums.resize(q_blocks * Q_BLOCK, 0.0);
        super::packed::configure_amx();
        let c = scale * std::f32::consts::LOG2_E;
        let mut state = BlockState {
            scores: [0.0; Q_BLOCK * K_BLOCK],
            probabilities: [ZERO_LINE; Q_BLOCK],
            partial: [[0.0; 16]; Q_BLOCK],
        };
        for chunk in (0..len).step_by(KEY_CHUNK) {
            let keys = chunk..len.min(chunk + KEY_CHUNK);
            for block in 0..q_blocks {
                // SAFETY: tiles configured above; the buffers were sized by the packing for
                // `len` keys and `q_blocks` query blocks.
                unsafe { self.block_over_keys(block, keys.clone(), len, c, &mut state) };
            }
        }
        for (t, row) in self.o.chunks_exact_mut(HEAD_DIM).take(len).enumerate() {
            let inverse = 1.0 / self.sums[t];
            row.iter_mut().for_each(|v| *v *= inverse);
        }
        &self.o[..len * HEAD_DIM]
    }

    /// Adds the keys of `keys` to query block `block`'s accumulator, reference and sums.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
    unsafe fn block_over_keys(
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
        let q = self.q[block * 2 * Q_BLOCK..].as_ptr();
        let reference = &mut self.reference[first_row..first_row + Q_BLOCK];
        let sums = &mut self.sums[first_row..first_row + Q_BLOCK];
        for k0 in keys.step_by(K_BLOCK) {
            let kb = k0 / K_BLOCK;
            scores(
                q,
                self.k[kb * 4 * Q_BLOCK..].as_ptr(),
                state.scores.as_mut_ptr(),
            );
            let valid = K_BLOCK.min(len - k0);
            let first_over = probabilities(
                &state.scores,
                valid,
                c,
                reference,
                &mut state.probabilities,
                &mut state.partial,
            );
            if let Some(r) = first_over {
                let (lines, partial) = (&mut state.probabilities, &mut state.partial);
                rebase_rows(
                    r,
                    o,
                    &state.scores,
                    valid,
                    c,
                    reference,
                    sums,
                    lines,
                    partial,
                );
            }
            accumulate(
                state.probabilities.as_ptr(),
                self.v[kb * 4 * Q_BLOCK..].as_ptr(),
            );
        }
        store_accumulators(o);
        for (sum, partial) in sums.iter_mut().zip(&state.partial) {
            *sum += partial.iter().sum::<f32>();
        }
    }
}

/// Q of every query as A tiles: for query block `b` and half `h` of the dimensions, the tile at
/// `(2b + h)·16` lines, query `r` of the block in line `r` (32 bf16). Rows past `len` are zero.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn pack_queries<'a>(rows: impl Iterator<Item = &'a [f32]>, len: usize, q: &mut Vec<Line>) {
    let blocks = len.div_ceil(Q_BLOCK);
    q.clear();
    q.resize(blocks * 2 * Q_BLOCK, ZERO_LINE);
    for (t, row) in rows.enumerate() {
        let (b, r) = (t / Q_BLOCK, t % Q_BLOCK);
        for h in 0..2 {
            q[(2 * b + h) * Q_BLOCK + r] = bf16_line(row[32 * h..].as_ptr());
        }
    }
}

/// K as B tiles of `Q·Kᵀ`: for key tile `j` (16 keys) and half `h` of the dimensions, the tile
/// at `(2j + h)·16` lines; line `p` holds dimensions `32h + 2p, 32h + 2p + 1` of each key (a
/// bf16 pair per key). Keys past `len`, up to a whole block of 32, are zero.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn pack_keys<'a>(rows: impl Iterator<Item = &'a [f32]>, len: usize, k: &mut Vec<Line>) {
    let tiles = len.div_ceil(K_BLOCK) * 2;
    k.clear();
    k.resize(tiles * 2 * 16, ZERO_LINE);
    for (t, row) in rows.enumerate() {
        let (j, i) = (t / 16, t % 16);
        for h in 0..2 {
            // The bf16 of 32 dimensions, read as 16 pairs: pair p goes to line p, column i.
            let pairs = bf16_line(row[32 * h..].as_ptr());
            let tile = &mut k[(2 * j + h) * 16..][..16];
            for (p, line) in tile.iter_mut().enumerate() {
                line.0[i] = pairs.0[p];
            }
        }
    }
}

/// V as B tiles of `P·V`: for key block `b` (32 keys) and quarter `c` of the dimensions, the
/// tile at `(4b + c)·16` lines; line `p` holds, for dimensions `16c .. 16c + 16`, the bf16 pair
/// of keys `32b + 2p` and `32b + 2p + 1`. Keys past `len` are zero.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn pack_values<'a>(rows: impl Iterator<Item = &'a [f32]>, len: usize, v: &mut Vec<Line>) {
    let blocks = len.div_ceil(K_BLOCK);
    v.clear();
    v.resize(blocks * 4 * 16, ZERO_LINE);
    let mut rows = rows.peekable();
    let mut t = 0;
    while let Some(even) = rows.next() {
        let odd = rows.next();
        let (b, p) = (t / K_BLOCK, (t % K_BLOCK) / 2);
        for c in 0..4 {
            let lo = _mm512_cvtepu16_epi32(bf16_16(even[16 * c..].as_ptr()));
            let hi = match odd {
                Some(odd) => {
                    _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bf16_16(odd[16 * c..].as_ptr())))
                }
                None => _mm512_setzero_si512(),
            };
            let line = &mut v[(4 * b + c) * 16 + p];
            _mm512_store_si512(line.0.as_mut_ptr() as *mut _, _mm512_or_si512(lo, hi));
        }
        t += 2;
    }
}

/// 32 f32 at `x` as one line of 32 bf16 (round to nearest even).
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn bf16_line(x: *const f32) -> Line {
    let lo = _mm512_loadu_ps(x);
    let hi = _mm512_loadu_ps(x.add(16));
    let mut line = ZERO_LINE;
    let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
    _mm512_store_si512(line.0.as_mut_ptr() as *mut _, packed);
    line
}

/// 16 f32 at `x` as 16 bf16.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn bf16_16(x: *const f32) -> __m256i {
    std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(x)))
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

/// `s[16 × 32] = Q·Kᵀ` for one query block (`q`: its two tiles) and one key block (`k`: its
/// four tiles, key tile 0 halves 0 and 1, then key tile 1), with `tmm4..tmm7`.
unsafe fn scores(q: *const Line, k: *const Line, s: *mut f32) {
    asm!(
        "tilezero tmm4",
        "tilezero tmm5",
        "tileloadd tmm6, [{q0} + {l}*1]",
        "tileloadd tmm7, [{k00} + {l}*1]",
        "tdpbf16ps tmm4, tmm6, tmm7",
        "tileloadd tmm7, [{k10} + {l}*1]",
        "tdpbf16ps tmm5, tmm6, tmm7",
        "tileloadd tmm6, [{q1} + {l}*1]",
        "tileloadd tmm7, [{k11} + {l}*1]",
        "tdpbf16ps tmm5, tmm6, tmm7",
        "tileloadd tmm7, [{k01} + {l}*1]",
        "tdpbf16ps tmm4, tmm6, tmm7",
        "tilestored [{s0} + {ss}*1], tmm4",
        "tilestored [{s1} + {ss}*1], tmm5",
        q0 = in(reg) q, q1 = in(reg) q.add(16),
        k00 = in(reg) k, k01 = in(reg) k.add(16), k10 = in(reg) k.add(32), k11 = in(reg) k.add(48),
        s0 = in(reg) s, s1 = in(reg) s.add(16),
        l = in(reg) 64usize, ss = in(reg) K_BLOCK * 4,
        options(nostack),
    );
}

/// `O += P·V`: `p` the 16 probability lines (an A tile), `v` the key block's four V tiles.
unsafe fn accumulate(p: *const Line, v: *const Line) {
    asm!(
        "tileloadd tmm6, [{p} + {l}*1]",
        "tileloadd tmm4, [{v0} + {l}*1]",
        "tdpbf16ps tmm0, tmm6, tmm4",
        "tileloadd tmm5, [{v1} + {l}*1]",
        "tdpbf16ps tmm1, tmm6, tmm5",
        "tileloadd tmm7, [{v2} + {l}*1]",
        "tdpbf16ps tmm2, tmm6, tmm7",
        "tileloadd tmm4, [{v3} + {l}*1]",
        "tdpbf16ps tmm3, tmm6, tmm4",
        p = in(reg) p,
        v0 = in(reg) v, v1 = in(reg) v.add(16), v2 = in(reg) v.add(32), v3 = in(reg) v.add(48),
        l = in(reg) 64usize,
        options(nostack, readonly),
    );
}

/// Lane masks of the two halves of a key block with `valid` keys.
fn lane_masks(valid: usize) -> (u16, u16) {
    let mask = |n: usize| if n >= 16 { u16::MAX } else { (1u16 << n) - 1 };
    (mask(valid), mask(valid.saturating_sub(16)))
}

/// `2^x`, lanes off in `mask` zero: `x = n + f` with |f| ≤ ½, a degree-5 polynomial for `2^f`
/// (relative error under 3e-6, far below bf16's 4e-3) and `VSCALEFPS` for `2^n`, which gives 0
/// for very negative `x` instead of a subnormal.
#[inline(always)]
unsafe fn exp2(mask: u16, x: __m512) -> __m512 {
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
    let f = _mm512_sub_ps(x, n);
    let mut p = _mm512_set1_ps(1.333_355_8e-3);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618_129e-3));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550_411e-2));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.240_226_5));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(std::f32::consts::LN_2));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0));
    _mm512_maskz_scalef_ps(mask, p, n)
}

/// One query row's probabilities against reference `m`: its line of bf16 and the lanes added
/// to `partial`.
#[inline(always)]
unsafe fn row_probabilities(
    s: *const f32,
    masks: (u16, u16),
    c: __m512,
    m: __m512,
    line: &mut Line,
    partial: &mut [f32; 16],
) {
    let x0 = _mm512_fmsub_ps(_mm512_loadu_ps(s), c, m);
    let x1 = _mm512_fmsub_ps(_mm512_loadu_ps(s.add(16)), c, m);
    let p0 = exp2(masks.0, x0);
    let p1 = exp2(masks.1, x1);
    let sum = _mm512_add_ps(_mm512_loadu_ps(partial.as_ptr()), _mm512_add_ps(p0, p1));
    _mm512_storeu_ps(partial.as_mut_ptr(), sum);
    let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(p1, p0));
    _mm512_store_si512(line.0.as_mut_ptr() as *mut _, packed);
}

/// Probabilities of every row of the block against its reference. Stops at the first row with
/// a score more than [`HEADROOM`] above its reference (or no reference yet) and returns it;
/// the rows before it are done.
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn probabilities(
    scores: &[f32; Q_BLOCK * K_BLOCK],
    valid: usize,
    c: f32,
    reference: &[f32],
    lines: &mut [Line; Q_BLOCK],
    partial: &mut [[f32; 16]; Q_BLOCK],
) -> Option<usize> {
    let masks = lane_masks(valid);
    let cv = _mm512_set1_ps(c);
    let headroom = _mm512_set1_ps(HEADROOM);
    for r in 0..Q_BLOCK {
        let s = scores[r * K_BLOCK..].as_ptr();
        let m = _mm512_set1_ps(reference[r]);
        let x0 = _mm512_fmsub_ps(_mm512_loadu_ps(s), cv, m);
        let x1 = _mm512_fmsub_ps(_mm512_loadu_ps(s.add(16)), cv, m);
        // NaN-safe: a reference of -∞ gives x = +∞, which is over.
        let over = _mm512_mask_cmp_ps_mask::<_CMP_NLE_UQ>(masks.0, x0, headroom)
            | _mm512_mask_cmp_ps_mask::<_CMP_NLE_UQ>(masks.1, x1, headroom);
        if over != 0 {
            return Some(r);
        }
        row_probabilities(s, masks, cv, m, &mut lines[r], &mut partial[r]);
    }
    None
}

/// The slow path of [`probabilities`] from row `first`: each row whose block maximum is above
/// its reference takes that maximum as its new reference, and what it has accumulated so far
/// (tiles, sums) is rescaled by `2^(old − new)`; then its probabilities are computed.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
unsafe fn rebase_rows(
    first: usize,
    o: *mut f32,
    scores: &[f32; Q_BLOCK * K_BLOCK],
    valid: usize,
    c: f32,
    reference: &mut [f32],
    sums: &mut [f32],
    lines: &mut [Line; Q_BLOCK],
    partial: &mut [[f32; 16]; Q_BLOCK],
) {
    store_accumulators(o);
    let masks = lane_masks(valid);
    let cv = _mm512_set1_ps(c);
    for r in first..Q_BLOCK {
        let s = scores[r * K_BLOCK..].as_ptr();
        let row_max = scores[r * K_BLOCK..][..valid]
            .iter()
            .fold(f32::NEG_INFINITY, |m, &v| m.max(v * c));
        if row_max > reference[r] {
            let old = reference[r];
            #[cfg(test)]
            if old != f32::NEG_INFINITY {
                tests::REBASED_ROWS.with(|n| n.set(n.get() + 1));
            }
            // No reference yet: nothing accumulated, and 2^(-∞) would be 0 anyway.
            let factor = if old == f32::NEG_INFINITY {
                0.0
            } else {
                (old - row_max).exp2()
            };
            reference[r] = row_max;
            sums[r] *= factor;
            partial[r].iter_mut().for_each(|v| *v *= factor);
            std::slice::from_raw_parts_mut(o.add(r * HEAD_DIM), HEAD_DIM)
                .iter_mut()
                .for_each(|v| *v *= factor);
        }
        let m = _mm512_set1_ps(reference[r]);
        row_probabilities(s, masks, cv, m, &mut lines[r], &mut partial[r]);
    }
    load_accumulators(o);
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Rows whose reference moved after the first block (the slow path's real work).
        pub static REBASED_ROWS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                z ^= z << 13;
                z ^= z >> 7;
                z ^= z << 17;
                ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Against the f64 reference: lengths around the blocks (16 queries, 32 keys, 1024-key
    /// chunks), and scores that grow along the keys so that rows are rebased many times.
    #[test]
    fn matches_the_reference_attention() {
        if !super::super::packed::amx_available() {
            eprintln!("no AMX-BF16: skipped");
            return;
        }
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
            let want = super::super::reference::attention(&qkv, &[seq], heads, d);
            // bf16 rounds Q, K, V and P to 8 significant bits; with growing keys the logits
            // span tens and each moves by up to ~0.1 (the tiled bf16 kernel this one replaced
            // was off by 0.105 on the 2100-key case, this one by 0.054).
            let tolerance = if growth == 0.0 { 1e-2 } else { 0.15 };
            let rebased_before = REBASED_ROWS.with(|n| n.get());
            let mut kernel = AmxAttention::new();
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
                    let worst = a
                        .iter()
                        .zip(b)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0, f32::max);
                    assert!(
                        worst < tolerance,
                        "len {len} growth {growth} head {h} query {t}: off by {worst}"
                    );
                }
            }
            if growth > 0.0 {
                assert!(
                    REBASED_ROWS.with(|n| n.get()) > rebased_before,
                    "len {len}: no row was rebased"
                );
            }
        }
    }
}
