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
    AdapterWeights, DeviceChoice, EmbedRequest, Error, LateChunking, LoadOptions, Model, Sequence,
};

/// `dir` loaded on the GPU; panics unless the plan says a GPU runs it.
fn gpu_model(dir: &Path) -> Model {
    let options = LoadOptions {
        device: DeviceChoice::Gpu,
        ..Default::default()
    };
    let model = Model::load_with(dir, options).expect("load on --device gpu");
    let plan = model.device_plan();
    assert!(plan.is_gpu(), "the model runs on the CPU: {plan:?}");
    println!("device: {}", plan.summary());
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

/// A custom adapter: the checkpoint's `task`, every LoRA value scaled so that it differs.
fn custom_adapter(dir: &Path, model: &Model, task: usize) -> AdapterWeights {
    let weights = Weights::open(&dir.join("model.safetensors"), model.config()).unwrap();
    let mut adapter = AdapterWeights::from_checkpoint(&weights, model.config(), task).unwrap();
    for tensor in adapter.tensors_mut() {
        tensor.iter_mut().for_each(|v| *v *= -1.5);
    }
    adapter
}

#[test]
fn mixed_batches_of_builtin_and_custom_tasks_match_the_cpu() {
    let dir = larger_fixture_dir();
    let (gpu, cpu) = (gpu_model(dir), cpu_model(dir));
    for model in [&gpu, &cpu] {
        let adapter = custom_adapter(dir, model, 1);
        let null = serde_json::Value::Null;
        model.add_adapter("mine", "Mine: ", adapter, null).unwrap();
    }
    let tasks = [
        "retrieval.query",
        "mine",
        "text-matching",
        "none",
        "mine",
        "separation",
    ];
    let plans = |model: &Model| -> Vec<Sequence> {
        tasks
            .iter()
            .enumerate()
            .flat_map(|(i, task)| {
                let text = format!("input {i} for {task}: {}", "words ".repeat(i * 8));
                let request = EmbedRequest::new(vec![text]).with_task(task);
                model.plan(&request).unwrap().sequences
            })
            .collect()
    };
    let (gs, cs) = (plans(&gpu), plans(&cpu));
    let g = gpu.run(&gs.iter().collect::<Vec<_>>()).unwrap();
    let c = cpu.run(&cs.iter().collect::<Vec<_>>()).unwrap();
    let finish = |sums: Vec<Vec<jina_engine::SpanSum>>| -> Vec<Vec<f32>> {
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
    };
    assert_close(&finish(g), &finish(c), "mixed batch");
    // Each sequence alone gives what it gave in the mixed batch.
    let alone = gpu.run(&[&gs[1]]).unwrap();
    let mixed = gpu.run(&gs.iter().collect::<Vec<_>>()).unwrap();
    assert_eq!(
        alone[0], mixed[1],
        "a sequence's result depends on its batch"
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
