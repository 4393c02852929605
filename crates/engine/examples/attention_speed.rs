//! Milliseconds and GFLOP/s of multi-head attention (16 heads of 64), f32 and bf16, at a few
//! lengths: `cargo run --release -p jina-engine --example attention_speed [LEN...]` (default
//! 128 512 2048). Lengths under 1024 run as a batch of 1024 tokens, as the benchmark shapes.
//! The kernels are those a model resolves on this CPU (`JINA_MAX_ISA` caps them).
use std::time::Instant;

use jina_engine::kernels::{attention, Cpu, KernelPlan, SequenceRange};
use jina_engine::Precision;

fn main() {
    let lens: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let lens = if lens.is_empty() {
        vec![128, 512, 2048]
    } else {
        lens
    };
    let (heads, d) = (16, 64);
    for len in lens {
        let count = (1024 / len).max(1);
        let sequences: Vec<SequenceRange> = (0..count)
            .map(|i| SequenceRange {
                start: i * len,
                len,
            })
            .collect();
        let tokens = count * len;
        let qkv: Vec<f32> = (0..tokens * 3 * heads * d)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let mut ctx = vec![0f32; tokens * heads * d];
        let flops = 4.0 * (count * len * len * d * heads) as f64;
        let mut line = format!("{count}x{len}:");
        let cpu = Cpu::host();
        for precision in [Precision::F32, Precision::Bf16] {
            let kernel = (KernelPlan::resolve(precision, cpu, true).attention, cpu);
            attention(&qkv, &mut ctx, &sequences, heads, d, kernel);
            let mut best = f64::INFINITY;
            for _ in 0..if len > 4096 { 1 } else { 5 } {
                let t = Instant::now();
                attention(&qkv, &mut ctx, &sequences, heads, d, kernel);
                best = best.min(t.elapsed().as_secs_f64());
            }
            line += &format!(
                " {} {:.2} ms ({:.0} GFLOP/s)",
                kernel.0,
                best * 1e3,
                flops / best / 1e9
            );
        }
        println!("{line}");
    }
}
