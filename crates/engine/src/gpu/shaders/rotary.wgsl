// Rotary positions (rotate-half layout) on every Q and K head of each token, in place:
// `out[i] = x[i]·cos − x[i+h]·sin`, `out[i+h] = x[i+h]·cos + x[i]·sin`, from the CPU's table.

struct Params {
    tokens: u32,
    heads: u32,
    half: u32,
    row: u32,
    grid_x: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> positions: array<u32>;
@group(0) @binding(3) var<storage, read> cos_table: array<f32>;
@group(0) @binding(4) var<storage, read> sin_table: array<f32>;

@compute @workgroup_size(64)
fn rotary(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let token = group.y * p.grid_x + group.x;
    if token >= p.tokens {
        return;
    }
    let pos = positions[token];
    // Q's heads then K's: 2·heads vectors of width 2·half at the start of the row.
    for (var e = lane; e < 2u * p.heads * p.half; e += 64u) {
        let head = e / p.half;
        let i = e % p.half;
        let base = token * p.row + head * 2u * p.half;
        let a = qkv[base + i];
        let b = qkv[base + i + p.half];
        let c = cos_table[pos * p.half + i];
        let s = sin_table[pos * p.half + i];
        qkv[base + i] = a * c - b * s;
        qkv[base + i + p.half] = b * c + a * s;
    }
}
