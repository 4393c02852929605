//! The GPU backend (`--features gpu`) held to the official outputs and to the CPU path, on the
//! adapter `--device gpu` takes: in CI Mesa's lavapipe (`scripts/test-gpu.sh`). Every test
//! fails, never skips, when no adapter is there or the model runs on the CPU instead.
#![cfg(feature = "gpu")]

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{cosine, golden, golden_failures, max_abs_diff, small_fixture_dir};
use jina_engine::fixture::{write_fixture, FixtureShape};
use jina_engine::weights::Weights;
use jina_engine::{
    AdapterWeights, DeviceChoice, EmbedRequest, Error, LateChunking, LoadOptions, Model, Precision,
    Sequence,
};

/// `dir` loaded on the GPU; panics unless the plan says a GPU runs it.
fn gpu_model(dir: &Path) -> Model {
    gpu_model_at(dir, Precision::F32)
}

/// `dir` loaded on the GPU at `precision`; panics unless a GPU runs it at that precision (f16
/// needs `shader-f16`, which CI's lavapipe from Mesa 25 offers: its absence is a failure, not a
/// skip).
fn gpu_model_at(dir: &Path, precision: Precision) -> Model {
    let options = LoadOptions {
        device: DeviceChoice::Gpu,
        precision,
        ..Default::default()
    };
    let model = Model::load_with(dir, options).expect("load on --device gpu");
    let plan = model.device_plan();
    assert!(plan.is_gpu(), "the model runs on the CPU: {plan:?}");
    assert_eq!(
        model.precision(),
        precision,
        "the GPU runs another precision: {:?}",
        model.precision_fallbacks()
    );
    println!("device: {} at {}", plan.summary(), precision.name());
    model
}

fn cpu_model(dir: &Path) -> Model {
    Model::load(dir).expect("load on the CPU")
}

/// A fixture shaped more like the real model than `small`: 4 layers, 4 heads of 64, hidden
/// 256, MLP 1024 (seed 7), generated once per test binary.
fn larger_fixture_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpu-larger-fixture");
        let shape = FixtureShape {
            hidden_size: 256,
            num_attention_heads: 4,
            num_hidden_layers: 4,
            intermediate_size: 1024,
        };
        write_fixture(&dir, shape, 7).expect("write the larger fixture");
        dir
    })
}

#[test]
fn golden_cases_match_the_official_outputs_on_the_gpu() {
    let golden = golden();
    let model = gpu_model(small_fixture_dir());
    let failures = golden_failures(&model, "gpu", &golden);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let memory = model.device_memory().expect("device memory on a GPU");
    assert!(
        memory.weight_bytes > 0 && memory.peak_batch_bytes > 0,
        "{memory:?}"
    );
}

/// Longest input of the larger-fixture cases (about 700 tokens): many key tiles and query
/// blocks per head. lavapipe runs the shaders on the CPU, slowly: the tests stay short.
fn long_text() -> String {
    (0..50)
        .map(|i| format!("sentence {i} about rivers, mountains and the cities between them."))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Vectors of the GPU and the CPU f32 path agree within the fixtures' tolerance.
fn assert_close(gpu: &[Vec<f32>], cpu: &[Vec<f32>], what: &str) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: number of vectors");
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        let diff = max_abs_diff(g, c);
        let cos = cosine(g, c);
        println!("{what:<40} vector {i}: max |diff| {diff:.2e}, cosine {cos:.8}");
        assert!(
            diff <= 2e-5,
            "{what}, vector {i}: max |diff| {diff:e} > 2e-5"
        );
    }
}

#[test]
fn a_larger_fixture_matches_the_cpu_for_every_task_long_inputs_and_late_chunking() {
    let (gpu, cpu) = (
        gpu_model(larger_fixture_dir()),
        cpu_model(larger_fixture_dir()),
    );
    let texts: Vec<String> = vec![
        "What is the capital of France?".into(),
        "Ein kurzer deutscher Satz.".into(),
        String::new(),
    ];
    let mut tasks = gpu.tasks().to_vec();
    tasks.push(jina_engine::NO_TASK.into());
    for task in &tasks {
        let request = EmbedRequest::new(texts.clone()).with_task(task);
        let (g, c) = (gpu.embed(&request).unwrap(), cpu.embed(&request).unwrap());
        assert_eq!(g.total_tokens, c.total_tokens);
        assert_close(&g.embeddings, &c.embeddings, task);
    }
    let mut texts = texts;
    texts.insert(1, long_text());
    let long = EmbedRequest::new(texts.clone()).with_task("retrieval.passage");
    let (g, c) = (gpu.embed(&long).unwrap(), cpu.embed(&long).unwrap());
    assert!(
        g.total_tokens > 600,
        "the long input has {} tokens",
        g.total_tokens
    );
    assert_close(&g.embeddings, &c.embeddings, "long input");
    let mut late = EmbedRequest::new(texts.clone()).with_task("retrieval.passage");
    late.late_chunking = LateChunking::On;
    let (g, c) = (gpu.embed(&late).unwrap(), cpu.embed(&late).unwrap());
    assert_close(&g.embeddings, &c.embeddings, "late chunking");
    let mut unnormalized = EmbedRequest::new(texts[2..].to_vec()).with_dimensions(64);
    unnormalized.normalized = false;
    let (g, c) = (
        gpu.embed(&unnormalized).unwrap(),
        cpu.embed(&unnormalized).unwrap(),
    );
    for (gv, cv) in g.embeddings.iter().zip(&c.embeddings) {
        let scale = common::norm(cv);
        assert!(
            max_abs_diff(gv, cv) <= 2e-5 * scale,
            "unnormalised, 64 dimensions"
        );
    }
}

/// The f16 path's vectors against the reference: each at cosine ≥ 0.999 (the gate);
/// returns the worst cosine and the largest difference (zero would mean f32 ran).
fn assert_f16_close(f16: &[Vec<f32>], reference: &[Vec<f32>], what: &str) -> (f32, f32) {
    assert_eq!(f16.len(), reference.len(), "{what}: number of vectors");
    let (mut worst, mut largest) = (1.0f32, 0.0f32);
    for (i, (h, r)) in f16.iter().zip(reference).enumerate() {
        let cos = cosine(h, r);
        assert!(cos >= 0.999, "{what}, vector {i}: cosine {cos} < 0.999");
        worst = worst.min(cos);
        largest = largest.max(max_abs_diff(h, r));
    }
    println!("{what:<40} f16: worst cosine {worst:.7}, max |diff| {largest:.2e}");
    (worst, largest)
}

#[test]
fn f16_matches_the_official_outputs_at_cosine_0_999_and_is_not_f32() {
    let golden = golden();
    let model = gpu_model_at(small_fixture_dir(), Precision::F16);
    let linear = &model.device_plan().operations;
    assert!(
        linear
            .iter()
            .any(|(op, how)| *op == "linear" && how.contains("f16")),
        "{linear:?}"
    );
    let mut largest = 0.0f32;
    for (n, case) in golden.cases.iter().enumerate() {
        let got = model.embed(&common::request_of(case)).unwrap();
        let (_, diff) = assert_f16_close(&got.embeddings, &case.embeddings, &format!("case {n}"));
        largest = largest.max(diff);
    }
    // Rounding to f16 must show: identical vectors would mean the f32 kernels ran.
    assert!(largest > 1e-6, "f16 gave the f32 results exactly");
}

#[test]
fn f16_on_a_larger_fixture_every_task_long_inputs_and_late_chunking_stay_at_cosine_0_999() {
    let (gpu, cpu) = models_with_a_custom_adapter(Precision::F16);
    let mut texts: Vec<String> = vec![
        "What is the capital of France?".into(),
        "Ein kurzer deutscher Satz.".into(),
    ];
    let mut tasks = gpu.tasks().to_vec();
    tasks.extend(["none".to_string(), "mine".to_string()]);
    for task in &tasks {
        let request = EmbedRequest::new(texts.clone()).with_task(task);
        let (g, c) = (gpu.embed(&request).unwrap(), cpu.embed(&request).unwrap());
        assert_f16_close(&g.embeddings, &c.embeddings, task);
    }
    texts.insert(1, long_text());
    let long = EmbedRequest::new(texts.clone()).with_task("retrieval.query");
    let (g, c) = (gpu.embed(&long).unwrap(), cpu.embed(&long).unwrap());
    assert!(g.total_tokens > 600, "{} tokens", g.total_tokens);
    assert_f16_close(&g.embeddings, &c.embeddings, "long input");
    let mut late = EmbedRequest::new(texts).with_task("retrieval.passage");
    late.late_chunking = LateChunking::On;
    let (g, c) = (gpu.embed(&late).unwrap(), cpu.embed(&late).unwrap());
    assert_f16_close(&g.embeddings, &c.embeddings, "late chunking");
}

#[test]
fn precisions_without_gpu_kernels_run_f32_on_the_gpu_and_say_why() {
    for precision in [Precision::Bf16, Precision::Int8] {
        let options = LoadOptions {
            device: DeviceChoice::Gpu,
            precision,
            ..Default::default()
        };
        let model = Model::load_with(small_fixture_dir(), options).unwrap();
        assert!(model.device_plan().is_gpu());
        assert_eq!(model.precision(), Precision::F32);
        let why = model.precision_fallbacks().join("; ");
        assert!(
            why.contains(precision.name()) && why.contains("f16"),
            "{why}"
        );
        // What runs is the f32 path: the official numbers.
        let case = &golden().cases[1];
        let got = model.embed(&common::request_of(case)).unwrap();
        assert_close(&got.embeddings, &case.embeddings, precision.name());
    }
}

/// A custom adapter: the checkpoint's `task`, every LoRA value scaled so that it differs.
fn custom_adapter(dir: &Path, model: &Model, task: usize) -> AdapterWeights {
    let weights = Weights::open(&dir.join("model.safetensors"), model.config()).unwrap();
    let mut adapter = AdapterWeights::from_checkpoint(&weights, model.config(), task).unwrap();
    for tensor in adapter.tensors_mut() {
        tensor.iter_mut().for_each(|v| *v *= -1.5);
    }
    adapter
}

/// Sequences of several built-in tasks, no task and the custom adapter `mine`, in one batch.
fn mixed_batch(model: &Model) -> Vec<Sequence> {
    let tasks = [
        "retrieval.query",
        "mine",
        "text-matching",
        "none",
        "mine",
        "separation",
    ];
    tasks
        .iter()
        .enumerate()
        .flat_map(|(i, task)| {
            let text = format!("input {i} for {task}: {}", "words ".repeat(i * 8));
            let request = EmbedRequest::new(vec![text]).with_task(task);
            model.plan(&request).unwrap().sequences
        })
        .collect()
}

/// The normalised mean-pooled vectors of one forward pass over `batch`.
fn run_pooled(model: &Model, batch: &[Sequence]) -> Vec<Vec<f32>> {
    let sums = model.run(&batch.iter().collect::<Vec<_>>()).unwrap();
    sums.into_iter()
        .map(|s| {
            let mean: Vec<f32> = s[0]
                .sum
                .iter()
                .map(|v| (v / s[0].count as f64) as f32)
                .collect();
            jina_engine::pooling::finish_vector(
                mean,
                jina_engine::Finish {
                    dimensions: None,
                    normalized: true,
                },
            )
        })
        .collect()
}

/// The GPU model at `precision` and the CPU f32 one on the larger fixture, both serving the
/// custom adapter `mine`.
fn models_with_a_custom_adapter(precision: Precision) -> (Model, Model) {
    let dir = larger_fixture_dir();
    let (gpu, cpu) = (gpu_model_at(dir, precision), cpu_model(dir));
    for model in [&gpu, &cpu] {
        let adapter = custom_adapter(dir, model, 1);
        let null = serde_json::Value::Null;
        model.add_adapter("mine", "Mine: ", adapter, null).unwrap();
    }
    (gpu, cpu)
}

#[test]
fn mixed_batches_of_builtin_and_custom_tasks_match_the_cpu() {
    let (gpu, cpu) = models_with_a_custom_adapter(Precision::F32);
    let (gs, cs) = (mixed_batch(&gpu), mixed_batch(&cpu));
    assert_close(
        &run_pooled(&gpu, &gs),
        &run_pooled(&cpu, &cs),
        "mixed batch",
    );
    // Each sequence alone gives what it gave in the mixed batch.
    let alone = gpu.run(&[&gs[1]]).unwrap();
    let mixed = gpu.run(&gs.iter().collect::<Vec<_>>()).unwrap();
    assert_eq!(
        alone[0], mixed[1],
        "a sequence's result depends on its batch"
    );
}

#[test]
fn f16_mixed_batches_stay_at_cosine_0_999_of_the_cpu() {
    let (gpu, cpu) = models_with_a_custom_adapter(Precision::F16);
    let (gs, cs) = (mixed_batch(&gpu), mixed_batch(&cpu));
    assert_f16_close(
        &run_pooled(&gpu, &gs),
        &run_pooled(&cpu, &cs),
        "mixed batch",
    );
}

#[test]
fn the_plan_names_the_adapter_and_a_lost_device_fails_with_a_clear_error() {
    let model = gpu_model(small_fixture_dir());
    let plan = model.device_plan();
    let gpu = plan.gpu.as_ref().unwrap();
    assert!(!gpu.name.is_empty() && !gpu.backend.is_empty(), "{gpu:?}");
    assert!(plan.summary().contains(&gpu.name));
    assert!(model.device_max_batch_tokens().unwrap() >= 8192);
    let request = EmbedRequest::new(vec!["before".into()]);
    model.embed(&request).unwrap();
    model.destroy_device();
    match model.embed(&request) {
        Err(Error::Device(message)) => {
            println!("after loss: {message}");
            assert!(message.contains(&gpu.name), "{message}");
        }
        other => panic!("a lost device must fail with Error::Device, got {other:?}"),
    }
}

#[test]
fn bad_input_is_refused_before_the_device() {
    let model = gpu_model(small_fixture_dir());
    let long = "word ".repeat(10_000);
    let err = model.embed(&EmbedRequest::new(vec![long])).unwrap_err();
    assert!(matches!(err, Error::InputTooLong { .. }), "{err}");
    let err = model
        .embed(&EmbedRequest::new(vec!["x".into()]).with_dimensions(0))
        .unwrap_err();
    assert!(matches!(err, Error::Dimensions { .. }), "{err}");
    // The model still serves.
    model
        .embed(&EmbedRequest::new(vec!["after".into()]))
        .unwrap();
}
