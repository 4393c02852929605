//! Quick GFLOP/s of the attention kernel (f32 and bf16): `cargo run --release -p jina-engine --example attention_speed`.
use std::time::Instant;

use jina_engine::kernels::packed::PackedType;
use jina_engine::kernels::{attention, SequenceRange};

fn main() {
    let (heads, d) = (16, 64);
    for n in [512usize, 2048] {
        let hidden = heads * d;
        let qkv: Vec<f32> = (0..n * 3 * hidden).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let mut ctx = vec![0f32; n * hidden];
        let seqs = [SequenceRange { start: 0, len: n }];
        for ty in [PackedType::F32, PackedType::Bf16] {
            attention(&qkv, &mut ctx, &seqs, heads, d, ty);
            let mut best = f64::INFINITY;
            for _ in 0..3 {
                let t = Instant::now();
                attention(&qkv, &mut ctx, &seqs, heads, d, ty);
                best = best.min(t.elapsed().as_secs_f64());
            }
            let flops = 4.0 * (n * n * d * heads) as f64;
            println!("1x{heads}x{n}x{d} {ty:?}: {:.1} ms, {:.1} GFLOP/s", best * 1e3, flops / best / 1e9);
        }
    }
}
