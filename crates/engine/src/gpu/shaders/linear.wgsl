// Linear layers: `y = x·Wᵀ + b (+ s·(x·Aᵀ)·Bᵀ per row's adapter) (then GELU)`.
//
// `lora_down` computes each row's `s·x·Aᵀ` (rank values) from the adapter in the row's slot;
// `matmul` multiplies 64×64 output tiles with 16-wide K slices staged in workgroup memory, each
// of the 256 invocations holding a 4×4 block (rows and columns 16 apart, so that neighbouring
// invocations touch neighbouring columns), and adds the bias, the LoRA up-projection and GELU as
// it stores. The weights are f32, or two bf16 or f16 values per word (unpacked here), per
// `WEIGHT_FORMAT`. At f16, `linear_f16.wgsl` is appended and its `matmul_f16` runs instead.
//
// LoRA tensors of every adapter a batch uses sit in `lora`, one block of `block_len` floats per
// slot: for each linear layer its A (`rank × n_in`) then its B (`n_out × rank`).

const NO_SLOT: u32 = 0xffffffffu;
// 0: f32 bits; 1: bf16 pairs; 2: f16 pairs (element 2j in the low half of word j).
const WEIGHT_FORMAT: u32 = {{WEIGHT_FORMAT}}u;
const MAX_RANK: u32 = {{MAX_RANK}}u;

struct MatmulParams {
    m: u32,
    n: u32,
    k: u32,
    rank: u32,
    b_offset: u32,
    block_len: u32,
    gelu: u32,
    grid_x: u32,
}

@group(0) @binding(0) var<uniform> mp: MatmulParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> low: array<f32>;
@group(0) @binding(5) var<storage, read> slots: array<u32>;
@group(0) @binding(6) var<storage, read> lora: array<f32>;
@group(0) @binding(7) var<storage, read_write> y: array<f32>;

const TILE_M: u32 = 64u;
const TILE_N: u32 = 64u;
const TILE_K: u32 = 16u;

// Stored K-major, so that the inner loop reads 16 neighbouring rows or columns at once.
var<workgroup> x_tile: array<f32, 1024>; // [TILE_K][TILE_M]
var<workgroup> w_tile: array<f32, 1024>; // [TILE_K][TILE_N]

fn weight(i: u32) -> f32 {
    if WEIGHT_FORMAT == 1u {
        let word = w[i >> 1u];
        // Element 2j is the low half of word j (little-endian bf16 pairs).
        let bits = select(word << 16u, word & 0xffff0000u, (i & 1u) == 1u);
        return bitcast<f32>(bits);
    }
    if WEIGHT_FORMAT == 2u {
        let pair = unpack2x16float(w[i >> 1u]);
        return select(pair.x, pair.y, (i & 1u) == 1u);
    }
    return bitcast<f32>(w[i]);
}

// erf by Abramowitz–Stegun 7.1.26, as the CPU kernels compute it.
fn erf_as(z: f32) -> f32 {
    let a = abs(z);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = ((((1.0614054 * t - 1.453152) * t + 1.4214138) * t - 0.28449672) * t + 0.2548296) * t;
    let r = 1.0 - poly * exp(-a * a);
    return select(r, -r, z < 0.0);
}

fn gelu(v: f32) -> f32 {
    return 0.5 * v * (1.0 + erf_as(v * 0.70710677));
}

@compute @workgroup_size(16, 16)
fn matmul(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) index: u32,
) {
    let row0 = group.y * TILE_M;
    let col0 = group.x * TILE_N;
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < mp.k; k0 += TILE_K) {
        for (var e = index; e < 1024u; e += 256u) {
            let r = e / TILE_K;
            let kt = e % TILE_K;
            let kk = k0 + kt;
            var xv = 0.0;
            if row0 + r < mp.m && kk < mp.k {
                xv = x[(row0 + r) * mp.k + kk];
            }
            x_tile[kt * TILE_M + r] = xv;
            var wv = 0.0;
            if col0 + r < mp.n && kk < mp.k {
                wv = weight((col0 + r) * mp.k + kk);
            }
            w_tile[kt * TILE_N + r] = wv;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TILE_K; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = x_tile[kk * TILE_M + local.y + 16u * i];
                b[i] = w_tile[kk * TILE_N + local.x + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] = fma(a[i], b[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }
    store_block(row0 + local.y, col0 + local.x, acc);
}

// Stores an invocation's 4×4 block (rows `r0 + 16i`, columns `c0 + 16j`) with the bias, the
// row's LoRA up-projection and GELU.
fn store_block(r0: u32, c0: u32, acc: array<f32, 16>) {
    for (var i = 0u; i < 4u; i++) {
        let r = r0 + 16u * i;
        if r >= mp.m {
            continue;
        }
        let slot = slots[r];
        for (var j = 0u; j < 4u; j++) {
            let c = c0 + 16u * j;
            if c >= mp.n {
                continue;
            }
            var v = acc[i * 4u + j] + bias[c];
            if slot != NO_SLOT {
                let base = slot * mp.block_len + mp.b_offset + c * mp.rank;
                var up = 0.0;
                for (var t = 0u; t < mp.rank; t++) {
                    up = fma(low[r * mp.rank + t], lora[base + t], up);
                }
                v += up;
            }
            if mp.gelu != 0u {
                v = gelu(v);
            }
            y[r * mp.n + c] = v;
        }
    }
}

struct DownParams {
    m: u32,
    k: u32,
    rank: u32,
    a_offset: u32,
    block_len: u32,
    grid_x: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> dp: DownParams;
@group(0) @binding(1) var<storage, read> dx: array<f32>;
@group(0) @binding(2) var<storage, read> dslots: array<u32>;
@group(0) @binding(3) var<storage, read> scales: array<f32>;
@group(0) @binding(4) var<storage, read> dlora: array<f32>;
@group(0) @binding(5) var<storage, read_write> dlow: array<f32>;

var<workgroup> partial: array<f32, 1024>; // [MAX_RANK][64]

// One workgroup per row: 64 invocations stride over the row, then a tree sum per rank column.
@compute @workgroup_size(64)
fn lora_down(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let row = group.y * dp.grid_x + group.x;
    if row >= dp.m {
        return;
    }
    let slot = dslots[row];
    if slot == NO_SLOT {
        if lane < dp.rank {
            dlow[row * dp.rank + lane] = 0.0;
        }
        return;
    }
    var acc: array<f32, MAX_RANK>;
    let base = slot * dp.block_len + dp.a_offset;
    for (var k = lane; k < dp.k; k += 64u) {
        let v = dx[row * dp.k + k];
        for (var t = 0u; t < dp.rank; t++) {
            acc[t] = fma(v, dlora[base + t * dp.k + k], acc[t]);
        }
    }
    for (var t = 0u; t < dp.rank; t++) {
        partial[t * 64u + lane] = acc[t];
    }
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride >>= 1u) {
        if lane < stride {
            for (var t = 0u; t < dp.rank; t++) {
                partial[t * 64u + lane] += partial[t * 64u + lane + stride];
            }
        }
        workgroupBarrier();
    }
    if lane < dp.rank {
        dlow[row * dp.rank + lane] = partial[lane * 64u] * scales[slot];
    }
}
