// Linear layers: `out = x·Wᵀ + bias (+ LoRA per row) (then GELU)`, and LoRA's down-projection.
//
// `x` is `rows × k` f32, `W` is `n × k` stored either as bf16 (two values per u32, low half
// first: the checkpoint's own bits, unpacked here by a shift) or as f32 bits; each row of `W`
// is `w_stride` u32 words long (bf16 rows of odd `k` end in a zero half).
//
// LoRA is a side product per row: `low = s·x·A[slot]ᵀ` (`rows × rank`, `lora_down` below),
// then `out += low·B[slot]ᵀ` in the product's epilogue. `slot[row]` picks the adapter of each
// row (0xffffffff: none), so one batch mixes tasks and custom adapters (slots).

struct Params {
    rows: u32,
    k: u32,
    n: u32,
    w_stride: u32,
    rank: u32,
    // Workgroups along x of the dispatch (rows beyond 65535 groups wrap into y).
    groups_x: u32,
    _pad0: u32,
    _pad1: u32,
}

const NO_SLOT: u32 = 0xffffffffu;

// Pipeline switches.
override BF16: bool = true;
override GELU: bool = false;
override LORA: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<u32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> low: array<f32>;
@group(0) @binding(5) var<storage, read> lora_b: array<f32>;
@group(0) @binding(6) var<storage, read> slot: array<u32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;

// Tile: 64 rows × 64 outputs per workgroup, 16 inputs per step; 256 threads, 4 × 4 outputs each.
const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

var<workgroup> xs: array<f32, 1024>; // [TK][TM]
var<workgroup> ws: array<f32, 1024>; // [TK][TN]

// Exact GELU, x·Φ(x), with erf by Abramowitz–Stegun 7.1.26 (|error| ≤ 1.5e-7): the same form
// the CPU kernels use.
fn gelu(v: f32) -> f32 {
    let z = v * 0.70710678118654752;
    let a = abs(z);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = ((((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t
        + 0.254829592) * t;
    var r = 1.0 - poly * exp(-a * a);
    if (z < 0.0) {
        r = -r;
    }
    return 0.5 * v * (1.0 + r);
}

@compute @workgroup_size(256)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col0 = wid.x * TN;
    let row0 = wid.y * TM;
    let tx = lid % 16u;
    let ty = lid / 16u;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }
    for (var k0 = 0u; k0 < p.k; k0 += TK) {
        // x tile: 64 rows × 16 inputs, four per thread.
        for (var i = 0u; i < 4u; i++) {
            let e = lid + 256u * i;
            let r = e / TK;
            let kk = e % TK;
            var v = 0.0;
            if (row0 + r < p.rows && k0 + kk < p.k) {
                v = x[(row0 + r) * p.k + k0 + kk];
            }
            xs[kk * TM + r] = v;
        }
        // W tile: 64 outputs × 16 inputs.
        if (BF16) {
            for (var i = 0u; i < 2u; i++) {
                let e = lid + 256u * i;
                let c = e / 8u;
                let kk = 2u * (e % 8u);
                var lo = 0.0;
                var hi = 0.0;
                if (col0 + c < p.n && k0 + kk < p.k) {
                    let word = w[(col0 + c) * p.w_stride + (k0 + kk) / 2u];
                    lo = bitcast<f32>(word << 16u);
                    hi = bitcast<f32>(word & 0xffff0000u);
                }
                ws[kk * TN + c] = lo;
                ws[(kk + 1u) * TN + c] = hi;
            }
        } else {
            for (var i = 0u; i < 4u; i++) {
                let e = lid + 256u * i;
                let c = e / TK;
                let kk = e % TK;
                var v = 0.0;
                if (col0 + c < p.n && k0 + kk < p.k) {
                    v = bitcast<f32>(w[(col0 + c) * p.w_stride + k0 + kk]);
                }
                ws[kk * TN + c] = v;
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = xs[kk * TM + ty + 16u * i];
                b[i] = ws[kk * TN + tx + 16u * i];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] = fma(a[i], b[j], acc[i * 4u + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = row0 + ty + 16u * i;
        if (r >= p.rows) {
            continue;
        }
        var s = NO_SLOT;
        if (LORA) {
            s = slot[r];
        }
        for (var j = 0u; j < 4u; j++) {
            let c = col0 + tx + 16u * j;
            if (c >= p.n) {
                continue;
            }
            var v = acc[i * 4u + j] + bias[c];
            if (LORA && s != NO_SLOT) {
                var up = 0.0;
                for (var q = 0u; q < p.rank; q++) {
                    up = fma(low[r * p.rank + q], lora_b[(s * p.n + c) * p.rank + q], up);
                }
                v += up;
            }
            if (GELU) {
                v = gelu(v);
            }
            out[r * p.n + c] = v;
        }
    }
}

// ---- LoRA down-projection ----------------------------------------------------------------
// `low[row][j] = scaling[slot] · Σ_k x[row][k]·A[slot][j][k]` (`A` is `[slots][rank × k]`);
// zero for rows without an adapter. One workgroup of 64 threads per row.

struct DownParams {
    rows: u32,
    k: u32,
    rank: u32,
    groups_x: u32,
}

const MAX_RANK: u32 = 16u;

@group(0) @binding(0) var<uniform> dp: DownParams;
@group(0) @binding(1) var<storage, read> dx: array<f32>;
@group(0) @binding(2) var<storage, read> lora_a: array<f32>;
@group(0) @binding(3) var<storage, read> scaling: array<f32>;
@group(0) @binding(4) var<storage, read> dslot: array<u32>;
@group(0) @binding(5) var<storage, read_write> dlow: array<f32>;

var<workgroup> partial: array<f32, 1024>; // [MAX_RANK][64]

@compute @workgroup_size(64)
fn lora_down(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * dp.groups_x;
    if (row >= dp.rows) {
        return;
    }
    let s = dslot[row];
    if (s == NO_SLOT) {
        if (lid < dp.rank) {
            dlow[row * dp.rank + lid] = 0.0;
        }
        return;
    }
    var acc: array<f32, MAX_RANK>;
    for (var j = 0u; j < MAX_RANK; j++) {
        acc[j] = 0.0;
    }
    for (var kk = lid; kk < dp.k; kk += 64u) {
        let v = dx[row * dp.k + kk];
        for (var j = 0u; j < dp.rank; j++) {
            acc[j] = fma(v, lora_a[(s * dp.rank + j) * dp.k + kk], acc[j]);
        }
    }
    for (var j = 0u; j < dp.rank; j++) {
        partial[j * 64u + lid] = acc[j];
    }
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            for (var j = 0u; j < dp.rank; j++) {
                partial[j * 64u + lid] += partial[j * 64u + lid + stride];
            }
        }
        workgroupBarrier();
    }
    if (lid < dp.rank) {
        dlow[row * dp.rank + lid] = partial[lid * 64u] * scaling[s];
    }
}
