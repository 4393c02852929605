//! Every case of the official outputs (`tests/fixtures/golden-small.json`) within the tolerances
//! of the fixtures README: 2e-5 per component for normalised vectors, 2e-5 × ‖v‖ otherwise.

mod common;

use common::{golden, max_abs_diff, norm, small_model};
use jina_engine::{EmbedRequest, LateChunking, NO_TASK};

/// The request that reproduces a golden case.
fn request_of(case: &common::GoldenCase) -> EmbedRequest {
    EmbedRequest {
        inputs: case.input.clone(),
        // The golden `null` task is the official encode() without a task: base weights.
        task: Some(case.task.clone().unwrap_or_else(|| NO_TASK.to_string())),
        dimensions: case.dimensions,
        normalized: case.normalized,
        late_chunking: if case.late_chunking { LateChunking::On } else { LateChunking::Off },
        truncate: false,
    }
}

#[test]
fn every_golden_case_matches_the_official_outputs() {
    let golden = golden();
    assert_eq!(golden.variant, "small");
    assert_eq!(golden.seed, 1);
    let model = small_model();
    let mut failures = Vec::new();
    for (n, case) in golden.cases.iter().enumerate() {
        let request = request_of(case);
        let got = model.embed(&request).unwrap();
        if let Some(tokens) = &case.tokens {
            let plan = model.plan(&request).unwrap();
            let counts: Vec<usize> = plan.sequences.iter().map(|s| s.ids.len()).collect();
            assert_eq!(&counts, tokens, "case {n}: token counts");
            assert_eq!(got.total_tokens, tokens.iter().sum::<usize>(), "case {n}: usage");
        }
        if let Some(total) = case.total_tokens {
            assert_eq!(got.total_tokens, total, "case {n}: late-chunking total tokens");
        }
        assert_eq!(got.embeddings.len(), case.embeddings.len(), "case {n}: number of outputs");
        let mut worst = 0f32;
        for (i, (ours, theirs)) in got.embeddings.iter().zip(&case.embeddings).enumerate() {
            let scale = if case.normalized { 1.0 } else { norm(theirs) };
            let diff = max_abs_diff(ours, theirs);
            worst = worst.max(diff / scale);
            if diff > 2e-5 * scale {
                failures.push(format!("case {n} ({:?}, input {i}): max |diff| {diff:e} > {:e}", case.task, 2e-5 * scale));
            }
        }
        println!(
            "case {n:2}: task {:<18} dims {:>4} normalized {:<5} late {:<5} worst relative diff {worst:.2e}",
            case.task.as_deref().unwrap_or("null"),
            case.dimensions.map_or("-".into(), |d| d.to_string()),
            case.normalized,
            case.late_chunking
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The bf16 path is held to a cosine of 0.999 to every golden vector (fixtures README), and
/// reports the worst cosine of each case.
#[test]
fn bf16_path_keeps_cosine_above_0_999() {
    reduced_precision_keeps_cosine(jina_engine::Precision::Bf16, 0.999);
}

#[test]
fn int8_path_keeps_cosine_above_0_99() {
    reduced_precision_keeps_cosine(jina_engine::Precision::Int8, 0.99);
}

/// Every golden case embedded at `precision` has a cosine of at least `gate` to the official
/// vectors.
fn reduced_precision_keeps_cosine(precision: jina_engine::Precision, gate: f32) {
    let model =
        jina_engine::Model::load_with(common::small_fixture_dir(), jina_engine::LoadOptions { precision }).unwrap();
    let name = precision.name();
    if model.precision() != precision {
        eprintln!("{name} falls back to {} on this CPU; that path's own test covers it", model.precision().name());
    }
    let golden = golden();
    let mut failures = Vec::new();
    for (n, case) in golden.cases.iter().enumerate() {
        let request = request_of(case);
        let got = model.embed(&request).unwrap();
        let worst = got
            .embeddings
            .iter()
            .zip(&case.embeddings)
            .map(|(a, b)| {
                let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                dot / (norm(a) * norm(b)).max(1e-12)
            })
            .fold(1.0f32, f32::min);
        println!("{name} case {n:2}: worst cosine to golden {worst:.8}");
        if worst < gate {
            failures.push(format!("case {n}: cosine {worst}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
