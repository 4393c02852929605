//! Shared test helpers: the small formula checkpoint, generated once per test binary, and the
//! golden file of the official Python outputs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use jina_engine::fixture::{write_fixture, FixtureShape};
use jina_engine::kernels::cpu::record_variant;
use jina_engine::{Cpu, EmbedRequest, Isa, LateChunking, LoadOptions, Model, Precision, NO_TASK};
use serde::Deserialize;

/// A folder holding the `small` checkpoint with seed 1 (generated on first use).
pub fn small_fixture_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // One folder per test binary under target/tmp, overwritten on each run.
        let binary = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()));
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{}-small-fixture", binary.unwrap_or_default()));
        write_fixture(&dir, FixtureShape::SMALL, 1).expect("write the small fixture");
        dir
    })
}

/// The small model, loaded once.
pub fn small_model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::load(small_fixture_dir()).expect("load the small fixture"))
}

/// The small model loaded once per instruction-set variant this CPU has (the detected CPU capped
/// to each level, lowest first), at `precision`; each recorded as run by `test`.
pub fn variant_models(test: &str, precision: Precision) -> Vec<(Isa, Model)> {
    Cpu::detected()
        .test_variants()
        .into_iter()
        .map(|isa| {
            record_variant(test, isa);
            let options = LoadOptions {
                precision,
                max_isa: Some(isa),
                ..Default::default()
            };
            let model =
                Model::load_with(small_fixture_dir(), options).expect("load the small fixture");
            assert_eq!(model.kernel_plan().isa(), isa, "the cap gives the variant");
            (isa, model)
        })
        .collect()
}

/// One case of `golden-small.json`.
#[derive(Debug, Deserialize)]
pub struct GoldenCase {
    pub task: Option<String>,
    pub dimensions: Option<usize>,
    pub normalized: bool,
    pub late_chunking: bool,
    pub input: Vec<String>,
    pub tokens: Option<Vec<usize>>,
    pub total_tokens: Option<usize>,
    pub embeddings: Vec<Vec<f32>>,
}

#[derive(Debug, Deserialize)]
pub struct Golden {
    pub variant: String,
    pub seed: u64,
    pub cases: Vec<GoldenCase>,
}

/// The vendored golden file.
pub fn golden() -> Golden {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden-small.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Largest absolute difference between two vectors.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (norm(a) * norm(b)).max(1e-12)
}

/// Euclidean norm.
pub fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// The request that reproduces a golden case.
pub fn request_of(case: &GoldenCase) -> EmbedRequest {
    EmbedRequest {
        inputs: case.input.clone(),
        // The golden `null` task is the official encode() without a task: base weights.
        task: Some(case.task.clone().unwrap_or_else(|| NO_TASK.to_string())),
        dimensions: case.dimensions,
        normalized: case.normalized,
        late_chunking: if case.late_chunking {
            LateChunking::On
        } else {
            LateChunking::Off
        },
        truncate: false,
    }
}

/// Every golden case embedded by `model` against the official vectors (2e-5 per component,
/// × ‖v‖ for unnormalised ones); token counts must match exactly. Returns the failures, and
/// prints each case's worst difference under `label`.
pub fn golden_failures(model: &Model, label: &str, golden: &Golden) -> Vec<String> {
    let mut failures = Vec::new();
    for (n, case) in golden.cases.iter().enumerate() {
        let request = request_of(case);
        let got = model.embed(&request).unwrap();
        if let Some(tokens) = &case.tokens {
            let plan = model.plan(&request).unwrap();
            let counts: Vec<usize> = plan.sequences.iter().map(|s| s.ids.len()).collect();
            assert_eq!(&counts, tokens, "case {n}: token counts");
            assert_eq!(
                got.total_tokens,
                tokens.iter().sum::<usize>(),
                "case {n}: usage"
            );
        }
        if let Some(total) = case.total_tokens {
            assert_eq!(
                got.total_tokens, total,
                "case {n}: late-chunking total tokens"
            );
        }
        assert_eq!(
            got.embeddings.len(),
            case.embeddings.len(),
            "case {n}: number of outputs"
        );
        let mut worst = 0f32;
        for (i, (ours, theirs)) in got.embeddings.iter().zip(&case.embeddings).enumerate() {
            let scale = if case.normalized { 1.0 } else { norm(theirs) };
            let diff = max_abs_diff(ours, theirs);
            worst = worst.max(diff / scale);
            if diff > 2e-5 * scale {
                failures.push(format!(
                    "{label}: case {n} ({:?}, input {i}): max |diff| {diff:e} > {:e}",
                    case.task,
                    2e-5 * scale
                ));
            }
        }
        println!(
            "{label:<10} case {n:2}: task {:<18} dims {:>4} normalized {:<5} late {:<5} worst relative diff {worst:.2e}",
            case.task.as_deref().unwrap_or("null"),
            case.dimensions.map_or("-".into(), |d| d.to_string()),
            case.normalized,
            case.late_chunking
        );
    }
    failures
}
