//! Criterion micro-benchmarks of the hot kernels, at the shapes of one 128-token sequence of the
//! real model: `cargo bench -p jina-engine --bench kernels`. Throughput is in FLOP/s.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use jina_engine::kernels::linear::{self, PackedMatrix, PackedType, Path};
use jina_engine::kernels::{
    attention, matmul_transposed, Cpu, KernelPlan, MatmulInit, SequenceRange,
};
use jina_engine::Precision;

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i + seed) * 7919) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

/// GEMM `m × k · (n × k)ᵀ`: the gemm crate (reference speed), then each packed storage on the
/// kernel this CPU (capped by `JINA_MAX_ISA`) runs for it.
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
            b.iter(|| {
                matmul_transposed(
                    black_box(&x),
                    k,
                    m,
                    k,
                    &w,
                    n,
                    &mut out,
                    MatmulInit::Zero,
                    true,
                )
            })
        });
        let cpu = Cpu::host();
        for ty in [
            PackedType::F32,
            PackedType::Bf16,
            PackedType::Bf16x3,
            PackedType::Int8,
        ] {
            let packed = PackedMatrix::pack(&w, n, k, ty, cpu);
            let path = Path::choose(&packed, m);
            if path == Path::Reference {
                continue;
            }
            let name = format!("packed-{ty:?}-{path:?}").to_lowercase();
            group.bench_with_input(BenchmarkId::new(name, &shape), &(), |b, _| {
                b.iter(|| {
                    linear::matmul(
                        black_box(&x),
                        k,
                        m,
                        &packed,
                        &mut out,
                        n,
                        MatmulInit::Zero,
                        true,
                    )
                })
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
    let cpu = Cpu::host();
    for (name, precision) in [("f32", Precision::F32), ("bf16", Precision::Bf16)] {
        let kernel = (KernelPlan::resolve(precision, cpu, true).attention, cpu);
        group.bench_function(BenchmarkId::new(name, "1x16x2048x64"), |b| {
            b.iter(|| attention(black_box(&qkv), &mut ctx, &seqs, heads, d, kernel))
        });
    }
    group.finish();
}

criterion_group!(benches, gemm, attention_2048);
criterion_main!(benches);
