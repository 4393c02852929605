//! AVX-512 attention: for each (sequence, head), K and V converted once into packed tiles
//! (f32, or bf16 pairs for long sequences when bf16 was asked for), then the packed product
//! kernels of [`crate::kernels::linear`] for `Q·Kᵀ` and `P·V`, with the online softmax between.

use rayon::prelude::*;

use super::portable::Scratch;
use super::{write_rows, SequenceRange, Shape, SharedMut, K_TILE, Q_TILE};
use crate::kernels::cpu::Cpu;
use crate::kernels::linear::{self, PackedMatrix, PackedType};
use crate::kernels::matmul::MatmulInit;

/// Queries per score tile when the products run on AMX: larger products amortise the fixed
/// cost of each call (activation packing, tile loads of the accumulators).
const Q_TILE_AMX: usize = 256;
/// Sequences up to this length run in f32 even when bf16 was asked for: up to 512 tokens the
/// f32 kernel is as fast as bf16 or faster (8×128: 0.20 s against 0.36 s for the 24 layers;
/// 512: equal), as packing K and V to bf16 costs more than it saves. Decided per sequence, so
/// that no output depends on what it is batched with.
const BF16_MIN_LEN: usize = 512;

/// Every (sequence, head) of `tasks`; `bf16` lets sequences over [`BF16_MIN_LEN`] tokens round
/// their products to bf16.
pub(super) fn attention(
    qkv: &[f32],
    ctx: SharedMut,
    tasks: &[(SequenceRange, usize)],
    shape: Shape,
    bf16: bool,
    cpu: Cpu,
) {
    let Shape {
        d, hidden, scale, ..
    } = shape;
    let bf16 = bf16 && cpu.avx512_bf16;
    tasks.par_iter().for_each_init(
        || [None::<PackedHead>, None::<PackedHead>],
        |heads, &(seq, head)| {
            let long = bf16 && seq.len > BF16_MIN_LEN;
            let (ty, q_tile) = match long {
                true if cpu.amx_bf16 => (PackedType::Bf16, Q_TILE_AMX),
                true => (PackedType::Bf16, Q_TILE),
                false => (PackedType::F32, Q_TILE),
            };
            let state =
                heads[long as usize].get_or_insert_with(|| PackedHead::new(d, ty, q_tile, cpu));
            state.load(qkv, seq, head, hidden, d);
            for q0 in (0..seq.len).step_by(q_tile) {
                let q_len = q_tile.min(seq.len - q0);
                let out = state.attend(qkv, seq, head, q0, q_len, hidden, d, scale);
                write_rows(ctx, out, seq.start + q0, head, shape);
            }
        },
    );
}

/// Per-thread state of the packed path: one head's K and V tiles, packed for the AVX-512 kernel.
struct PackedHead {
    cpu: Cpu,
    ty: PackedType,
    keys: Vec<PackedMatrix>,
    values: Vec<PackedMatrix>,
    scratch: Scratch,
}

impl PackedHead {
    fn new(d: usize, ty: PackedType, q_tile: usize, cpu: Cpu) -> Self {
        PackedHead {
            cpu,
            ty,
            keys: Vec::new(),
            values: Vec::new(),
            scratch: Scratch::new(d, q_tile, true, cpu),
        }
    }

    /// Packs K (tiles of `K_TILE` keys × d) and Vᵀ (d × keys) of one head of one sequence.
    fn load(&mut self, qkv: &[f32], seq: SequenceRange, head: usize, hidden: usize, d: usize) {
        let stride = 3 * hidden;
        let tiles = seq.len.div_ceil(K_TILE);
        let ty = self.ty;
        let cpu = self.cpu;
        self.keys
            .resize_with(tiles, || PackedMatrix::empty(ty, cpu));
        self.values
            .resize_with(tiles, || PackedMatrix::empty(ty, cpu));
        for t in 0..tiles {
            let k0 = t * K_TILE;
            let k_len = K_TILE.min(seq.len - k0);
            let first = (seq.start + k0) * stride;
            self.keys[t].repack_strided(&qkv[first + hidden + head * d..], stride, k_len, d);
            self.values[t].repack_transposed(
                &qkv[first + 2 * hidden + head * d..],
                stride,
                k_len,
                d,
            );
        }
    }

    /// Attention of queries `q0 .. q0+q_len` over all keys, with the packed tiles.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &mut self,
        qkv: &[f32],
        seq: SequenceRange,
        head: usize,
        q0: usize,
        q_len: usize,
        hidden: usize,
        d: usize,
        scale: f32,
    ) -> &[f32] {
        let stride = 3 * hidden;
        let q = &qkv[(seq.start + q0) * stride + head * d..];
        let s = &mut self.scratch;
        s.reset(q_len, d);
        for (keys, values) in self.keys.iter().zip(&self.values) {
            let k_len = keys.n();
            let scores = &mut s.scores[..q_len * k_len];
            linear::matmul(
                q,
                stride,
                q_len,
                keys,
                scores,
                k_len,
                MatmulInit::Zero,
                false,
            );
            s.online_softmax(q_len, k_len, d, scale);
            let scores = &s.scores[..q_len * k_len];
            linear::matmul(
                scores,
                k_len,
                q_len,
                values,
                &mut s.acc[..q_len * d],
                d,
                MatmulInit::Accumulate,
                false,
            );
        }
        s.normalise(q_len, d)
    }
}
