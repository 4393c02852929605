// The f16 fast path of `matmul` (appended to `linear.wgsl`, whose bindings, parameters and
// `store_block` it shares; the module then starts with `enable f16;`).
//
// Same 64×64 output tiles and 4×4 blocks per invocation as `matmul`, but the tiles hold f16 in
// rows of four K values, so that one `dot` of two `vec4<f16>` makes four products (packed f16
// arithmetic where the GPU has it) and each K slice moves half the bytes through workgroup
// memory. Each `dot` is summed into an f32 accumulator: rounding stays that of four f16
// products, not of the whole K. The weights are f16 pairs (converted from the checkpoint's
// bf16 at load); activations are rounded to f16 as they are staged. Bias, LoRA and GELU are
// f32 (`store_block`).

const F16_MAX: f32 = 65504.0;

var<workgroup> x_tile16: array<vec4<f16>, 256>; // [TILE_M][TILE_K / 4]
var<workgroup> w_tile16: array<vec4<f16>, 256>; // [TILE_N][TILE_K / 4]

fn x_half(r: u32, k: u32) -> f16 {
    if r < mp.m && k < mp.k {
        return f16(clamp(x[r * mp.k + k], -F16_MAX, F16_MAX));
    }
    return 0.0h;
}

fn w_half(c: u32, k: u32) -> f16 {
    if c < mp.n && k < mp.k {
        let i = c * mp.k + k;
        // (naga has no bitcast from u32 to vec2<f16>; the unpack is exact.)
        let pair = unpack2x16float(w[i >> 1u]);
        return f16(select(pair.x, pair.y, (i & 1u) == 1u));
    }
    return 0.0h;
}

@compute @workgroup_size(16, 16)
fn matmul_f16(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(local_invocation_id) local: vec3<u32>,
    @builtin(local_invocation_index) index: u32,
) {
    let row0 = group.y * TILE_M;
    let col0 = group.x * TILE_N;
    // The row (of x and of W) and the quad of K this invocation stages.
    let staged = index / 4u;
    let quad = 4u * (index % 4u);
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < mp.k; k0 += TILE_K) {
        let k = k0 + quad;
        let r = row0 + staged;
        x_tile16[index] = vec4<f16>(x_half(r, k), x_half(r, k + 1u), x_half(r, k + 2u), x_half(r, k + 3u));
        let c = col0 + staged;
        w_tile16[index] = vec4<f16>(w_half(c, k), w_half(c, k + 1u), w_half(c, k + 2u), w_half(c, k + 3u));
        workgroupBarrier();
        for (var q = 0u; q < TILE_K / 4u; q++) {
            var a: array<vec4<f16>, 4>;
            var b: array<vec4<f16>, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = x_tile16[(local.y + 16u * i) * 4u + q];
                b[i] = w_tile16[(local.x + 16u * i) * 4u + q];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] += f32(dot(a[i], b[j]));
                }
            }
        }
        workgroupBarrier();
    }
    store_block(row0 + local.y, col0 + local.x, acc);
}
