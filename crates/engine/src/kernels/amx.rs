//! Intel AMX (`TDPBF16PS`: a 16×16 f32 tile += 16×32 bf16 · 32×16 bf16 per instruction) for the
//! bf16 type. The packed bf16 panel already is AMX's "VNNI" layout for B: row p of a B tile is
//! pair p of 16 columns, 64 bytes, and consecutive pairs are 256 bytes apart in the panel, which
//! `TILELOADD` takes as its stride. Each task computes 32×32 output blocks with 4 accumulator
//! tiles, 2 A tiles and 2 B tiles (all 8 tile registers).

use std::arch::asm;

/// Where the A tiles of a block lie, in u32 (pairs) from its start: tile step `s`, part `p`
/// of the upper 16 rows at `s·step + p·part`, the lower 16 rows `lower` further; rows of a
/// tile `stride` bytes apart; the next block of 32 rows `block` further.
#[derive(Clone, Copy)]
pub(crate) struct ALayout {
    pub stride: usize,
    pub step: usize,
    pub part: usize,
    pub lower: usize,
    pub block: usize,
}

/// Where the B (weight) tiles of a block lie, in u32 from the first: the second tile (the
/// next 16 columns) `second` further, the next tile step `step` further, rows of a tile
/// `stride` bytes apart. `prefetch`: the activations and weights lie in one stream each
/// (`linear::PanelLayout::Tiled`, `linear::amx::amx_tiles` with 32-row groups), prefetched a
/// few tile steps ahead.
#[derive(Clone, Copy)]
pub(crate) struct BLayout {
    pub stride: usize,
    pub step: usize,
    pub second: usize,
    pub prefetch: bool,
}

/// Rows and columns of one output block.
pub(crate) const BLOCK: usize = 32;
/// Pairs (32 input positions) per tile product.
pub(crate) const PAIRS_PER_STEP: usize = 16;
/// Tile steps ahead whose activations and weights are prefetched into L1: a tile load that
/// misses L1 waits for its 16 lines one after another, and the tiles cannot be renamed to
/// start the next loads early.
const PREFETCH_STEPS: usize = 2;

/// Whether AMX-BF16 is present and Linux granted this process the tile state, and whether
/// AMX-INT8 (`TDPBSSD`) is present too. Called once, by [`super::cpu::Cpu::detected`].
pub(crate) fn probe() -> (bool, bool) {
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    let amx_tile = leaf7.edx & (1 << 24) != 0;
    let amx_bf16 = leaf7.edx & (1 << 22) != 0;
    let amx_int8 = leaf7.edx & (1 << 25) != 0;
    if !(amx_tile && amx_bf16) {
        return (false, false);
    }
    // arch_prctl(ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18): the kernel
    // enables the 8 KiB tile state for this process only when asked.
    let ret: i64;
    // SAFETY: a plain Linux system call with integer arguments and no memory operands.
    unsafe {
        asm!("syscall", inlateout("rax") 158i64 => ret, in("rdi") 0x1023i64, in("rsi") 18i64,
             lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    (ret == 0, ret == 0 && amx_int8)
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
pub(crate) fn configure() {
    thread_local! {
        static CONFIGURED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !CONFIGURED.with(|c| c.replace(true)) {
        load_config();
    }
}

fn load_config() {
    let mut config = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [0; 16],
        rows: [0; 16],
    };
    for t in 0..8 {
        config.colsb[t] = 64;
        config.rows[t] = 16;
    }
    // SAFETY: the CPU has AMX (callers hold a `Cpu` with `amx_bf16`), and the config is a valid palette 1.
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
pub(crate) unsafe fn block(
    a: *const u32,
    a_layout: ALayout,
    parts: usize,
    b: *const u32,
    b_layout: BLayout,
    steps: usize,
    c: Output,
    int8: bool,
) {
    let ALayout {
        stride: a_stride,
        step: a_step,
        part: a_part,
        lower: a_lower,
        ..
    } = a_layout;
    let BLayout {
        stride: b_stride,
        step: b_step,
        second: b_second,
        prefetch: prefetch_ahead,
    } = b_layout;
    let Output {
        ptr: c,
        row_stride,
        init,
    } = c;
    let sc = row_stride * 4;
    let (c0, c1, c2, c3) = (
        c,
        c.add(16),
        c.add(16 * row_stride),
        c.add(16 * row_stride + 16),
    );
    match init {
        TileInit::Zero => {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            )
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
pub(crate) struct Output {
    pub ptr: *mut f32,
    pub row_stride: usize,
    pub init: TileInit,
}

/// What the sums of a block start from.
pub(crate) enum TileInit {
    Zero,
    /// What the output block holds.
    Accumulate,
    /// The same 32 values (a bias) in every row.
    Broadcast(*const f32),
}
