// Attention over packed sequences in the flash style: no score matrix. A workgroup takes 64
// queries of one sequence and one head (one query per invocation) and walks the sequence's keys
// in tiles staged in workgroup memory, with an online softmax: per tile, the scores, their
// maximum, one rescale of the running sum and output, then the tile's weighted values. Memory is
// linear in the sequence length.

const HEAD_DIM: u32 = {{HEAD_DIM}}u;
const KEY_TILE: u32 = {{KEY_TILE}}u;
const QUERIES: u32 = 64u;

struct Params {
    hidden: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
// Per workgroup: (first row of the sequence, its length, first query in it, unused).
@group(0) @binding(2) var<storage, read> blocks: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> ctx: array<f32>;

var<workgroup> keys: array<f32, KEY_TILE * HEAD_DIM>;
var<workgroup> values: array<f32, KEY_TILE * HEAD_DIM>;

@compute @workgroup_size(64)
fn attention(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_index) lane: u32,
) {
    let block = blocks[group.x];
    let start = block.x;
    let len = block.y;
    let head = group.y;
    let query = block.z + lane;
    let in_sequence = query < len;
    let row = 3u * p.hidden;
    let column = head * HEAD_DIM;

    var q: array<f32, HEAD_DIM>;
    if in_sequence {
        for (var d = 0u; d < HEAD_DIM; d++) {
            q[d] = qkv[(start + query) * row + column + d];
        }
    }
    var running_max = -3.0e38;
    var running_sum = 0.0;
    var out: array<f32, HEAD_DIM>;
    for (var k0 = 0u; k0 < len; k0 += KEY_TILE) {
        let n = min(KEY_TILE, len - k0);
        for (var e = lane; e < KEY_TILE * HEAD_DIM; e += QUERIES) {
            let j = e / HEAD_DIM;
            if j < n {
                let r = (start + k0 + j) * row + column + e % HEAD_DIM;
                keys[e] = qkv[r + p.hidden];
                values[e] = qkv[r + 2u * p.hidden];
            }
        }
        workgroupBarrier();
        if in_sequence {
            var scores: array<f32, KEY_TILE>;
            var tile_max = running_max;
            for (var j = 0u; j < n; j++) {
                var dot = 0.0;
                for (var d = 0u; d < HEAD_DIM; d++) {
                    dot = fma(q[d], keys[j * HEAD_DIM + d], dot);
                }
                scores[j] = dot * p.scale;
                tile_max = max(tile_max, scores[j]);
            }
            let correction = exp(running_max - tile_max);
            running_sum *= correction;
            for (var d = 0u; d < HEAD_DIM; d++) {
                out[d] *= correction;
            }
            for (var j = 0u; j < n; j++) {
                let weight = exp(scores[j] - tile_max);
                running_sum += weight;
                for (var d = 0u; d < HEAD_DIM; d++) {
                    out[d] = fma(weight, values[j * HEAD_DIM + d], out[d]);
                }
            }
            running_max = tile_max;
        }
        workgroupBarrier();
    }
    if in_sequence {
        let inv = 1.0 / running_sum;
        for (var d = 0u; d < HEAD_DIM; d++) {
            ctx[(start + query) * p.hidden + column + d] = out[d] * inv;
        }
    }
}
