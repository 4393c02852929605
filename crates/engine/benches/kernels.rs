//! Criterion micro-benchmarks of the hot kernels, at the shapes of one 128-token sequence of the
//! real model: `cargo bench -p jina-engine --bench kernels`. Throughput is in FLOP/s.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use jina_engine::kernels::packed::{self, PackedMatrix, PackedType};
use jina_engine::kernels::{attention, matmul_transposed, MatmulInit, SequenceRange};

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| (((i + seed) * 7919) % 2001) as f32 / 1000.0 - 1.0).collect()
}

/// GEMM `m × k · (n × k)ᵀ`: the gemm crate (reference speed), packed f32, packed bf16.
fn gemm(c: &mut Criterion) {
    let mut group = c.benchmark_group("gemm");
    group.sample_size(10);
    for (m, k, n) in [(128, 1024, 3072), (128, 1024, 4096), (128, 4096, 1024)] {
        let x = values(m * k, 1);
        let w = values(n * k, 2);
        let mut out = vec![0f32; m * n];
        group.throughput(Throughput::Elements((2 * m * k * n) as u64));
        let shape = format!("{m}x{k}x{n}");
        group.bench_with_input(BenchmarkId::new("gemm-crate-f32", &shape), &(), |b, _| {
            b.iter(|| matmul_transposed(black_box(&x), k, m, k, &w, n, &mut out, MatmulInit::Zero, true))
        });
        for (name, ty, ok) in [
            ("packed-f32", PackedType::F32, packed::avx512_available()),
            ("packed-bf16", PackedType::Bf16, packed::bf16_available()),
            // The exact f32 product on AMX (three bf16 parts per activation); its weights must
            // be bf16 values, as a bf16 checkpoint's are.
            ("packed-bf16x3", PackedType::Bf16x3, packed::bf16_available()),
        ] {
            if !ok {
                continue;
            }
            let packed = PackedMatrix::pack(&w, n, k, ty);
            group.bench_with_input(BenchmarkId::new(name, &shape), &(), |b, _| {
                b.iter(|| packed::matmul(black_box(&x), k, m, &packed, &mut out, n, MatmulInit::Zero, true))
            });
        }
    }
    group.finish();
}

/// Attention of one 2048-token sequence, 16 heads of 64.
fn attention_2048(c: &mut Criterion) {
    let (heads, d, n) = (16, 64, 2048);
    let qkv = values(n * 3 * heads * d, 3);
    let mut ctx = vec![0f32; n * heads * d];
    let seqs = [SequenceRange { start: 0, len: n }];
    let mut group = c.benchmark_group("attention");
    group.sample_size(10);
    group.throughput(Throughput::Elements((4 * n * n * d * heads) as u64));
    for (name, ty) in [("f32", PackedType::F32), ("bf16", PackedType::Bf16)] {
        group.bench_function(BenchmarkId::new(name, "1x16x2048x64"), |b| {
            b.iter(|| attention(black_box(&qkv), &mut ctx, &seqs, heads, d, ty))
        });
    }
    group.finish();
}

criterion_group!(benches, gemm, attention_2048);
criterion_main!(benches);
