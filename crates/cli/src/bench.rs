//! `jina-embed bench`: tokens per second of the forward pass on synthetic inputs of exact
//! lengths, with peak RSS, and for a reduced precision or a GPU its cosine to the CPU's f32 path.
//!
//! Every figure names what ran: the precision the CPU resolved (`requested` says what was asked
//! for), the instruction set and the kernels. Peak RSS is read after each shape's timing, before
//! the f32 reference for the cosine is loaded: the reference is loaded only after every timing,
//! once the measured model is dropped, so it never counts in the figure.

use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use jina_engine::{pooling, Finish, LoadOptions, Model, Precision, Sequence, Span};
use serde::Serialize;

#[derive(Args)]
pub struct BenchArgs {
    /// Model folder, or a Hugging Face hub id (owner/name[@revision]) in the local cache
    /// (downloaded there first if missing, unless --offline or HF_HUB_OFFLINE=1).
    #[arg(long, env = "JINA_MODEL", value_name = "DIR|HUB_ID")]
    model: String,
    /// Shapes to run, as BATCHxTOKENS (tokens per input, <s> and </s> included), comma-separated.
    #[arg(
        long,
        default_value = "8x128,4x512,1x2048,1x8192",
        value_delimiter = ','
    )]
    shape: Vec<String>,
    /// Numeric precision of the linear layers.
    #[arg(long, value_enum, default_value = "f32")]
    precision: Precision,
    /// Task adapter (or none).
    #[arg(long, default_value = jina_engine::DEFAULT_TASK)]
    task: String,
    /// Timed iterations per shape (after one warm-up run).
    #[arg(long, default_value_t = 3)]
    iters: usize,
    /// Compute threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Highest instruction-set level the kernels may use (avx2, avx512, …; default: all the CPU
    /// has; JINA_MAX_ISA caps it too): to measure a lower path on a bigger CPU.
    #[arg(long, value_name = "ISA", value_parser = crate::parse_isa)]
    max_isa: Option<jina_engine::Isa>,
    /// Where the encoder runs: `cpu`, `gpu` (a GPU through wgpu, Vulkan, Metal or DX12; a
    /// software adapter such as Mesa's lavapipe counts; needs a build with `--features gpu`)
    /// or `auto` (a hardware GPU when there is one, else the CPU).
    #[arg(long, env = "JINA_DEVICE", value_enum, default_value = "auto")]
    device: jina_engine::DeviceChoice,
    /// Print the time spent in each operation of the forward pass (the engine's trace spans).
    #[arg(long)]
    pub profile: bool,
}

/// The final JSON line of one shape.
#[derive(Serialize)]
struct Report {
    shape: String,
    batch: usize,
    tokens: usize,
    /// The precision that ran.
    precision: &'static str,
    requested_precision: &'static str,
    isa: &'static str,
    kernels: String,
    /// `cpu`, or `gpu: ADAPTER (BACKEND, KIND, …)`.
    device: String,
    /// MiB of device memory on a GPU: weights, and the most one pass allocated.
    #[serde(skip_serializing_if = "Option::is_none")]
    device_weights_mib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_peak_batch_mib: Option<f64>,
    /// MB of linear-layer weights held (one copy, in the storage that runs).
    linear_weights_mb: f64,
    threads: usize,
    tokens_per_s: f64,
    min_s: f64,
    median_s: f64,
    peak_rss_mb: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cosine_to_f32_min: Option<f64>,
}

pub fn run(args: BenchArgs, profile: Option<crate::logging::SpanTimes>) -> anyhow::Result<()> {
    crate::init_threads(args.threads)?;
    let shapes = args
        .shape
        .iter()
        .map(|s| parse_shape(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let options = LoadOptions {
        precision: args.precision,
        max_isa: args.max_isa,
        device: args.device,
    };
    let dir = crate::resolve::resolve(&args.model)?.dir;
    let model =
        Model::load_with(&dir, options).with_context(|| format!("loading {}", dir.display()))?;
    let plan = model.kernel_plan().clone();
    let on_gpu = model.device_plan().is_gpu();
    if !on_gpu {
        eprintln!("kernels: {}", plan.summary());
    }
    eprintln!("device: {}", model.device_plan().summary());
    for reason in &model.device_plan().fallbacks {
        eprintln!("device note: {reason}");
    }
    for reason in model.precision_fallbacks() {
        eprintln!("precision note: {reason}");
    }
    let device = model.device_plan().summary();
    let adapter = model.adapter_of(&args.task)?;
    let vocab = model.config().vocab_size as u64;
    println!(
        "{:<9} {:>9} {:>12} {:>10} {:>10} {:>11} {:>10}",
        "shape", "precision", "tokens/s", "min s", "median s", "peak RSS MB", "cos(f32)"
    );
    let mut reports = Vec::new();
    let mut runs = Vec::new();
    for (batch, tokens) in shapes {
        if tokens < 2 || tokens > model.max_tokens() {
            bail!(
                "tokens per input must be between 2 and {}, got {tokens}",
                model.max_tokens()
            );
        }
        let sequences: Vec<Sequence> = (0..batch)
            .map(|b| synthetic_sequence(b as u64, tokens, vocab, adapter.clone()))
            .collect();
        let refs: Vec<&Sequence> = sequences.iter().collect();
        let warm = model.run(&refs)?;
        if let Some(times) = &profile {
            times.take();
        }
        let mut times = Vec::with_capacity(args.iters);
        for _ in 0..args.iters.max(1) {
            let start = Instant::now();
            std::hint::black_box(model.run(&refs)?);
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        if let Some(spans) = &profile {
            print_profile(&format!("{batch}x{tokens}"), spans.take(), times.len());
        }
        let report = Report {
            shape: format!("{batch}x{tokens}"),
            batch,
            tokens,
            precision: model.precision().name(),
            requested_precision: plan.requested.name(),
            isa: plan.isa().name(),
            kernels: gpu_kernels(model.device_plan())
                .unwrap_or_else(|| format!("linear {}; attention {}", plan.linear, plan.attention)),
            device: device.clone(),
            device_weights_mib: model
                .device_memory()
                .map(|m| m.weight_bytes as f64 / (1 << 20) as f64),
            device_peak_batch_mib: model
                .device_memory()
                .map(|m| m.peak_batch_bytes as f64 / (1 << 20) as f64),
            linear_weights_mb: model.linear_weight_bytes() as f64 / 1e6,
            threads: rayon::current_num_threads(),
            tokens_per_s: (batch * tokens) as f64 / median,
            min_s: times[0],
            median_s: median,
            peak_rss_mb: peak_rss_mb(),
            cosine_to_f32_min: None,
        };
        reports.push(report);
        runs.push((sequences, warm));
    }
    // The cosine to the CPU's f32, with the measured model gone: its reference never adds to
    // the RSS above.
    if args.precision != Precision::F32 || on_gpu {
        drop(model);
        let reference = Model::load_with(
            &dir,
            LoadOptions {
                precision: Precision::F32,
                max_isa: args.max_isa,
                device: jina_engine::DeviceChoice::Cpu,
            },
        )?;
        for (report, (sequences, warm)) in reports.iter_mut().zip(runs) {
            let refs: Vec<&Sequence> = sequences.iter().collect();
            let exact = reference.run(&refs)?;
            report.cosine_to_f32_min = Some(min_cosine(&reference, &sequences, warm, exact));
        }
    }
    for report in &reports {
        println!(
            "{:<9} {:>9} {:>12.1} {:>10.3} {:>10.3} {:>11.0} {:>10}",
            report.shape,
            report.precision,
            report.tokens_per_s,
            report.min_s,
            report.median_s,
            report.peak_rss_mb,
            report
                .cosine_to_f32_min
                .map_or("-".into(), |c| format!("{c:.6}"))
        );
    }
    for report in reports {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}

/// The time of each operation over the timed iterations, as a share of their sum.
fn print_profile(shape: &str, spans: Vec<(&'static str, std::time::Duration)>, iterations: usize) {
    // Parent spans (`forward`, `attention`, `mlp`) contain the others: only the leaves add up.
    let leaves: Vec<_> = spans
        .into_iter()
        .filter(|(name, _)| !matches!(*name, "forward" | "attention" | "mlp"))
        .collect();
    let total: f64 = leaves
        .iter()
        .map(|(_, d)| d.as_secs_f64())
        .sum::<f64>()
        .max(1e-12);
    let parts: Vec<String> = leaves
        .iter()
        .map(|(name, d)| {
            format!(
                "{name} {:.3}s ({:.0}%)",
                d.as_secs_f64() / iterations as f64,
                100.0 * d.as_secs_f64() / total
            )
        })
        .collect();
    eprintln!("profile {shape} (per iteration): {}", parts.join(", "));
}

fn parse_shape(s: &str) -> anyhow::Result<(usize, usize)> {
    let (b, n) = s
        .trim()
        .split_once(['x', 'X'])
        .with_context(|| format!("shape {s:?} is not BATCHxTOKENS"))?;
    Ok((
        b.parse().with_context(|| format!("batch in {s:?}"))?,
        n.parse().with_context(|| format!("tokens in {s:?}"))?,
    ))
}

/// `<s>`, `tokens − 2` pseudo-random ordinary ids, `</s>`, pooled whole.
fn synthetic_sequence(
    seed: u64,
    tokens: usize,
    vocab: u64,
    adapter: Option<jina_engine::TaskAdapter>,
) -> Sequence {
    let mut ids = vec![0u32];
    let mut z = jina_engine::fixture::mix64(seed + 1);
    for _ in 0..tokens - 2 {
        z = jina_engine::fixture::mix64(z);
        ids.push(5 + (z % (vocab - 6)) as u32);
    }
    ids.push(2);
    Sequence {
        spans: vec![Span {
            output: 0,
            range: 0..tokens,
        }],
        ids,
        adapter,
    }
}

/// Smallest cosine between the pooled embeddings of two runs over the same sequences.
fn min_cosine(
    model: &Model,
    sequences: &[Sequence],
    a: Vec<Vec<jina_engine::SpanSum>>,
    b: Vec<Vec<jina_engine::SpanSum>>,
) -> f64 {
    let hidden = model.config().hidden_size;
    let finish = Finish {
        dimensions: None,
        normalized: true,
    };
    sequences
        .iter()
        .zip(a.into_iter().zip(b))
        .map(|(seq, (x, y))| {
            let plan = jina_engine::Plan {
                sequences: vec![seq.clone()],
                outputs: 1,
                total_tokens: seq.ids.len(),
            };
            let u = pooling::finish(&plan, x, hidden, finish).remove(0);
            let v = pooling::finish(&plan, y, hidden, finish).remove(0);
            u.iter()
                .zip(&v)
                .map(|(p, q)| *p as f64 * *q as f64)
                .sum::<f64>()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Peak resident set size of this process (VmHWM), in MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// On a GPU, what its linear layers and attention run (the CPU kernels only embed and pool).
fn gpu_kernels(device: &jina_engine::DevicePlan) -> Option<String> {
    Some(format!(
        "linear {}; attention {}",
        device.operation("linear")?,
        device.operation("attention")?
    ))
}
