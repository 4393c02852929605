//! Quick GFLOP/s of the f32, bf16, bf16x3 (exact f32) and int8 linear kernels on the model's shapes:
//! `cargo run --release -p jina-engine --example gemm_speed`. With `GEMM_SPEED_LAYOUTS=1`, the
//! AMX kernels with tiled against linear weight panels instead, alternated in one process; with
//! `GEMM_SPEED_LORA=1`, the two ways of adding a rank-4 LoRA term (see `compare_lora`).
//! `JINA_MAX_ISA` caps the kernels as it caps the model (`JINA_MAX_ISA=avx2` times the AVX2
//! kernels on an AVX-512 machine); each figure names the kernel that ran.
//!
//! `GEMM_SPEED_CLOCK=cpu` times by the CPU time of the process's threads (from
//! `/proc/self/task/*/schedstat`) instead of the wall clock, and prints the FMA peak of one
//! thread measured the same way: on a machine shared with other jobs, wall-clock rates say more
//! about the neighbours than about the kernel. Run it with `RAYON_NUM_THREADS=1`.
use std::time::Instant;

use jina_engine::kernels::linear::{
    self as packed, Epilogue, LowRank, LowRankInputs, PackedMatrix, PackedType, Path,
};
use jina_engine::kernels::{matmul_transposed, Cpu, MatmulInit};

/// Seconds on a CPU of every thread of this process so far (Linux), or the wall clock.
fn clock() -> f64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    if std::env::var("GEMM_SPEED_CLOCK").as_deref() != Ok("cpu") {
        return START.get_or_init(Instant::now).elapsed().as_secs_f64();
    }
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 * 1e-9
}

/// GFLOP/s of one thread running 12 independent chains of 8-lane FMAs: the AVX2 f32 peak that
/// the kernels' rates are fractions of.
#[cfg(target_arch = "x86_64")]
fn fma_peak() -> f64 {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx2,fma")]
    unsafe fn chains(n: usize) -> f32 {
        let mut acc = [_mm256_set1_ps(0.0); 12];
        let (a, b) = (_mm256_set1_ps(0.999_9), _mm256_set1_ps(1e-4));
        for _ in 0..n {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(
            lanes.as_mut_ptr(),
            acc.iter().fold(b, |s, v| _mm256_add_ps(s, *v)),
        );
        lanes.iter().sum()
    }
    let n = 50_000_000;
    let start = clock();
    let sink = unsafe { chains(n) };
    let seconds = clock() - start;
    std::hint::black_box(sink);
    (n * 12 * 16) as f64 / seconds / 1e9
}

/// Operations per second (in billions) of `chains(n)` doing `ops` an iteration over 50 M
/// iterations, by [`clock`]; its result is kept so that the work cannot be dropped.
#[cfg(target_arch = "x86_64")]
fn ops_per_second(ops: usize, chains: impl FnOnce(usize) -> i32) -> f64 {
    let n = 50_000_000;
    let start = clock();
    let sink = chains(std::hint::black_box(n));
    let seconds = clock() - start;
    std::hint::black_box(sink);
    (n * ops) as f64 / seconds / 1e9
}

/// The sum of every lane of the integer chains' accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lane_sum(acc: &[std::arch::x86_64::__m256i]) -> i32 {
    use std::arch::x86_64::*;
    let mut lanes = [0i32; 8];
    let sum = acc
        .iter()
        .fold(_mm256_set1_epi32(0), |s, v| _mm256_add_epi32(s, *v));
    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, sum);
    lanes.iter().sum()
}

/// Giga-ops (2 per multiply-add) per second of one thread running 12 independent chains of
/// `VPMADDWD` + `VPADDD` (16 int8-range products a pair of instructions): the AVX2 int8 kernel's
/// peak.
#[cfg(target_arch = "x86_64")]
fn madd_peak() -> f64 {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx2")]
    unsafe fn chains(n: usize) -> i32 {
        let mut acc = [_mm256_set1_epi32(1); 12];
        let (a, b) = (_mm256_set1_epi32(3), _mm256_set1_epi16(-5));
        for _ in 0..n {
            for v in acc.iter_mut() {
                // Fed by its own sum, so that the product cannot be hoisted out of the loop.
                *v = _mm256_add_epi32(a, _mm256_madd_epi16(*v, b));
            }
        }
        lane_sum(&acc)
    }
    // SAFETY: the caller checked AVX2.
    ops_per_second(12 * 32, |n| unsafe { chains(n) })
}

/// Giga-ops per second of one thread running 12 independent chains of `VPMADDUBSW` +
/// `VPMADDWD` by ones + `VPADDD` (32 products in three instructions): the route ONNX Runtime's
/// AVX2 int8 kernel takes, whose 16-bit pair sums saturate for 8-bit operands (2·255·127), so
/// ours does not take it. Printed beside [`madd_peak`] to show what that route would gain.
#[cfg(target_arch = "x86_64")]
fn maddubs_peak() -> f64 {
    use std::arch::x86_64::*;
    #[target_feature(enable = "avx2")]
    unsafe fn chains(n: usize) -> i32 {
        let mut acc = [_mm256_set1_epi32(1); 12];
        let (a, b, ones) = (
            _mm256_set1_epi32(3),
            _mm256_set1_epi8(-5),
            _mm256_set1_epi16(1),
        );
        for _ in 0..n {
            for v in acc.iter_mut() {
                let pairs = _mm256_maddubs_epi16(*v, b);
                *v = _mm256_add_epi32(a, _mm256_madd_epi16(pairs, ones));
            }
        }
        lane_sum(&acc)
    }
    // SAFETY: the caller checked AVX2.
    ops_per_second(12 * 64, |n| unsafe { chains(n) })
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    if std::env::var("GEMM_SPEED_CLOCK").as_deref() == Ok("cpu") && Cpu::host().avx2 {
        println!(
            "one thread's AVX2 peaks: FMA {:.1} GFLOP/s, VPMADDWD {:.1} Gop/s \
             (VPMADDUBSW route, which saturates: {:.1} Gop/s)",
            fma_peak(),
            madd_peak(),
            maddubs_peak()
        );
    }
    if std::env::var_os("GEMM_SPEED_LAYOUTS").is_some() {
        return compare_layouts();
    }
    if std::env::var_os("GEMM_SPEED_LORA").is_some() {
        return compare_lora();
    }
    for &(m, k, n) in &[
        (128, 1024, 3072),
        (1024, 1024, 3072),
        (1024, 1024, 4096),
        (1024, 4096, 1024),
    ] {
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let mut out = vec![0f32; m * n];
        let flops = 2.0 * (m * k * n) as f64;
        let time = |f: &mut dyn FnMut()| {
            f();
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let t = clock();
                f();
                best = best.min(clock() - t);
            }
            flops / best / 1e9
        };
        // GEMM_SPEED_TYPES=bf16,int8 (names as printed, lower case; "gemm" for the gemm crate)
        // limits the kernels timed.
        let only = std::env::var("GEMM_SPEED_TYPES").ok();
        let wanted = |name: &str| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|t| t == name))
        };
        let mut line = format!("{m}x{k}x{n}:");
        if wanted("gemm") {
            let f32_rate = time(&mut || {
                matmul_transposed(&x, k, m, k, &w, n, &mut out, MatmulInit::Zero, true)
            });
            line += &format!(" gemm crate f32 {f32_rate:.1} GFLOP/s,");
        }
        let cpu = Cpu::host();
        for ty in [
            PackedType::F32,
            PackedType::Bf16,
            PackedType::Bf16x3,
            PackedType::Int8,
        ] {
            let w = PackedMatrix::pack(&w, n, k, ty, cpu);
            let path = Path::choose(&w, m);
            // The reference loops would take minutes at these shapes.
            if path != Path::Reference && wanted(&format!("{ty:?}").to_lowercase()) {
                let rate =
                    time(&mut || packed::matmul(&x, k, m, &w, &mut out, n, MatmulInit::Zero, true));
                line += &format!(" packed {ty:?} ({path:?}) {rate:.1} GFLOP/s");
                // As a model layer runs it: bias, then a rank-4 LoRA term on every row.
                let bias: Vec<f32> = (0..n).map(|i| i as f32 * 1e-3).collect();
                let (rank, low) = (4, vec![0.01f32; m * 4]);
                let up_t: Vec<f32> = (0..rank * n).map(|i| (i % 7) as f32 * 1e-2).collect();
                let up = vec![Some(&up_t[..]); m];
                let epilogue = packed::Epilogue {
                    low_rank: Some(packed::LowRank {
                        low: &low,
                        rank,
                        up: &up,
                    }),
                    gelu: false,
                };
                let rate = time(&mut || {
                    packed::matmul_with(
                        &x,
                        k,
                        m,
                        &w,
                        &mut out,
                        n,
                        MatmulInit::Bias(&bias),
                        epilogue,
                        true,
                    )
                });
                line += &format!(" (+bias+LoRA {rate:.1}),");
            }
        }
        println!("{line}");
    }
}

/// `GEMM_SPEED_LAYOUTS=1`: the AMX kernels with weights in the tiled and in the linear panel
/// layout, timed alternately (30 rounds of one product each) in this one process, as the speed
/// of this machine drifts from minute to minute; prints the median and best of each and the
/// ratio of the medians.
fn compare_layouts() {
    let types = [PackedType::Bf16, PackedType::Bf16x3, PackedType::Int8];
    for &(m, k, n) in &[
        (1024, 1024, 3072),
        (1024, 1024, 1024),
        (1024, 1024, 4096),
        (1024, 4096, 1024),
    ] {
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 1e-3).collect();
        let mut out = vec![0f32; m * n];
        let flops = 2.0 * (m * k * n) as f64;
        let mut line = format!("{m}x{k}x{n}:");
        let cpu = Cpu::host();
        for ty in types {
            if !cpu.amx_bf16 {
                println!("no AMX here");
                return;
            }
            let packs = [
                PackedMatrix::pack_tiled(&w, n, k, ty, true, cpu),
                PackedMatrix::pack_tiled(&w, n, k, ty, false, cpu),
            ];
            let mut times = [vec![], vec![]];
            for round in 0..31 {
                for (pack, t) in packs.iter().zip(&mut times) {
                    let start = Instant::now();
                    packed::matmul(&x, k, m, pack, &mut out, n, MatmulInit::Bias(&bias), true);
                    if round > 0 {
                        t.push(start.elapsed().as_secs_f64());
                    }
                }
            }
            let rate = |t: &mut Vec<f64>| {
                t.sort_by(f64::total_cmp);
                (flops / t[t.len() / 2] / 1e9, flops / t[0] / 1e9)
            };
            let (tiled, linear) = (rate(&mut times[0]), rate(&mut times[1]));
            line += &format!(
                " {ty:?} tiled {:.0} (best {:.0}) linear {:.0} (best {:.0}) GFLOP/s, {:.2}×;",
                tiled.0,
                tiled.1,
                linear.0,
                linear.1,
                tiled.0 / linear.0
            );
        }
        println!("{line}");
    }
}

/// `GEMM_SPEED_LORA=1`: a product with bias and no LoRA, then with a rank-4 LoRA term of one of
/// 5 adapters added by the epilogue ([`LowRank`]), then as 20 extra inputs multiplied by extra
/// weight columns ([`LowRankInputs`], as the model runs bf16), timed alternately (15 rounds)
/// in this one process; prints the median and best GFLOP/s of each (counting the main product
/// only).
fn compare_lora() {
    let cpu = Cpu::host();
    if !cpu.amx_bf16 {
        println!("no AMX here");
        return;
    }
    let (rank, slots) = (4, 5);
    for ty in [PackedType::Bf16, PackedType::Bf16x3] {
        for (m, k, n) in [(1024, 1024, 3072), (1024, 4096, 1024)] {
            let extra = slots * rank;
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            let w: Vec<f32> = (0..n * (k + extra))
                .map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5)
                .collect();
            let w_main: Vec<f32> = w
                .chunks_exact(k + extra)
                .flat_map(|row| row[..k].to_vec())
                .collect();
            let (plain, with_columns) = (
                PackedMatrix::pack(&w_main, n, k, ty, cpu),
                PackedMatrix::pack(&w, n, k + extra, ty, cpu),
            );
            let bias: Vec<f32> = (0..n).map(|i| i as f32 * 1e-3).collect();
            let low = vec![0.01f32; m * rank];
            let up_t: Vec<f32> = (0..rank * n).map(|i| (i % 7) as f32 * 1e-2).collect();
            let up = vec![Some(&up_t[..]); m];
            let slot = vec![Some(2); m];
            let mut out = vec![0f32; m * n];
            let names = ["no LoRA", "LoRA epilogue", "LoRA inputs"];
            let mut times = [vec![], vec![], vec![]];
            for _ in 0..15 {
                for (variant, t) in times.iter_mut().enumerate() {
                    let (init, start) = (MatmulInit::Bias(&bias), Instant::now());
                    match variant {
                        0 => packed::matmul_with(
                            &x,
                            k,
                            m,
                            &plain,
                            &mut out,
                            n,
                            init,
                            Epilogue::default(),
                            true,
                        ),
                        1 => {
                            let epilogue = Epilogue {
                                low_rank: Some(LowRank {
                                    low: &low,
                                    rank,
                                    up: &up,
                                }),
                                gelu: false,
                            };
                            packed::matmul_with(&x, k, m, &plain, &mut out, n, init, epilogue, true)
                        }
                        _ => {
                            let inputs = LowRankInputs {
                                low: &low,
                                rank,
                                slot: &slot,
                                slots,
                            };
                            packed::matmul_extended(
                                &x,
                                k,
                                m,
                                Some(inputs),
                                &with_columns,
                                &mut out,
                                n,
                                init,
                                Epilogue::default(),
                                true,
                            )
                        }
                    }
                    t.push(start.elapsed().as_secs_f64());
                }
            }
            let flops = 2.0 * (m * k * n) as f64;
            let mut line = format!("{m}x{k}x{n} {ty:?}:");
            for (name, t) in names.iter().zip(&mut times) {
                t.sort_by(f64::total_cmp);
                line += &format!(
                    " {name} {:.0} (best {:.0}),",
                    flops / t[t.len() / 2] / 1e9,
                    flops / t[0] / 1e9
                );
            }
            println!("{line} GFLOP/s");
        }
    }
}
