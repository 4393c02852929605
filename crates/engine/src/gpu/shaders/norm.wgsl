// Post-LN residual: `x = LayerNorm(y + x)` row by row, one workgroup per row; `y` keeps the sum.
// Mean, then the biased variance of the centred values (two passes, as the CPU kernel).

struct Params {
    rows: u32,
    width: u32,
    eps: f32,
    grid_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read> weight: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

const LANES: u32 = 256u;
var<workgroup> sums: array<f32, LANES>;

fn workgroup_sum(lane: u32, value: f32) -> f32 {
    sums[lane] = value;
    workgroupBarrier();
    for (var stride = LANES / 2u; stride > 0u; stride >>= 1u) {
        if lane < stride {
            sums[lane] += sums[lane + stride];
        }
        workgroupBarrier();
    }
    let total = sums[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn add_layer_norm(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let row = group.y * p.grid_x + group.x;
    if row >= p.rows {
        return;
    }
    let base = row * p.width;
    var s = 0.0;
    for (var i = lane; i < p.width; i += LANES) {
        let v = y[base + i] + x[base + i];
        y[base + i] = v;
        s += v;
    }
    let mean = workgroup_sum(lane, s) / f32(p.width);
    var q = 0.0;
    for (var i = lane; i < p.width; i += LANES) {
        let d = y[base + i] - mean;
        q += d * d;
    }
    let variance = workgroup_sum(lane, q) / f32(p.width);
    let inv_std = 1.0 / sqrt(variance + p.eps);
    for (var i = lane; i < p.width; i += LANES) {
        x[base + i] = (y[base + i] - mean) * inv_std * weight[i] + bias[i];
    }
}
