//! An input's embedding does not depend on what it is batched with: other inputs, other
//! lengths, other tasks. Late chunking of a single input is the ordinary embedding.
//!
//! Checked on every instruction-set variant this CPU has and every precision, to 1e-6 per
//! component (50 times under the golden tolerance): the `gemm` crate (checkpoints without bf16
//! weights, aarch64) may pick another micro-kernel for a 2-row matrix than for a 300-row one,
//! which changes the last bit of a few sums.

mod common;

use common::{golden, max_abs_diff, small_model, variant_models};
use jina_engine::{pooling, EmbedRequest, Finish, Isa, LateChunking, Model, Precision, Sequence};

fn assert_close(a: &[f32], b: &[f32], what: &str) {
    let diff = max_abs_diff(a, b);
    assert!(diff <= 1e-6, "{what}: max |diff| {diff:e}");
}

fn texts() -> Vec<String> {
    golden().cases[0].input.clone()
}

fn embed_alone(model: &Model, text: &str, task: &str) -> Vec<f32> {
    let request = EmbedRequest::new(vec![text.to_string()]).with_task(task);
    model.embed(&request).unwrap().embeddings.remove(0)
}

/// Every variant of this CPU at every precision.
fn every_variant(test: &str) -> Vec<(String, Model)> {
    let mut models = Vec::new();
    for precision in [Precision::F32, Precision::Bf16, Precision::Int8] {
        let variants: Vec<(Isa, Model)> = variant_models(test, precision);
        models.extend(
            variants
                .into_iter()
                .map(|(isa, m)| (format!("{isa} {}", precision.name()), m)),
        );
    }
    models
}

#[test]
fn batch_composition_does_not_change_results() {
    for (label, model) in every_variant("batching::batch_composition_does_not_change_results") {
        batch_composition_on(&label, &model);
    }
}

fn batch_composition_on(label: &str, model: &Model) {
    let texts = texts();
    let together = model
        .embed(&EmbedRequest::new(texts.clone()).with_task("retrieval.passage"))
        .unwrap();
    // Reversed order, and every input alone.
    let reversed: Vec<String> = texts.iter().rev().cloned().collect();
    let backwards = model
        .embed(&EmbedRequest::new(reversed).with_task("retrieval.passage"))
        .unwrap();
    for (i, text) in texts.iter().enumerate() {
        let alone = embed_alone(model, text, "retrieval.passage");
        assert_close(
            &together.embeddings[i],
            &alone,
            &format!("{label}: input {i} batched vs alone"),
        );
        assert_close(
            &backwards.embeddings[texts.len() - 1 - i],
            &alone,
            &format!("{label}: input {i} in reversed batch"),
        );
    }
}

#[test]
fn mixed_task_batch_equals_single_task_runs() {
    for (label, model) in every_variant("batching::mixed_task_batch_equals_single_task_runs") {
        mixed_tasks_on(&label, &model);
    }
}

fn mixed_tasks_on(label: &str, model: &Model) {
    let texts = texts();
    let tasks = [
        "retrieval.query",
        "retrieval.passage",
        "separation",
        "classification",
        "text-matching",
        "none",
    ];
    // One plan per (text, task), all sequences run in a single forward pass.
    let plans: Vec<_> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let task = tasks[i % tasks.len()];
            (
                task,
                model
                    .plan(&EmbedRequest::new(vec![t.clone()]).with_task(task))
                    .unwrap(),
            )
        })
        .collect();
    let batch: Vec<&Sequence> = plans.iter().map(|(_, p)| &p.sequences[0]).collect();
    let sums = model.run(&batch).unwrap();
    let hidden = model.config().hidden_size;
    for (i, ((task, plan), sums)) in plans.iter().zip(sums).enumerate() {
        let mixed = pooling::finish(
            plan,
            sums,
            hidden,
            Finish {
                dimensions: None,
                normalized: true,
            },
        )
        .remove(0);
        let alone = embed_alone(model, &texts[i], task);
        assert_close(
            &mixed,
            &alone,
            &format!("{label}: input {i} with task {task}"),
        );
    }
}

#[test]
fn late_chunking_of_one_input_is_the_ordinary_embedding() {
    let model = small_model();
    for text in texts() {
        for task in ["retrieval.query", "text-matching", "none"] {
            let mut request = EmbedRequest::new(vec![text.clone()]).with_task(task);
            let ordinary = model.embed(&request).unwrap();
            request.late_chunking = LateChunking::On;
            let late = model.embed(&request).unwrap();
            assert_eq!(late.total_tokens, ordinary.total_tokens);
            let diff = max_abs_diff(&late.embeddings[0], &ordinary.embeddings[0]);
            assert!(diff < 1e-6, "{text:?} ({task}): {diff}");
        }
    }
}

#[test]
fn long_late_chunking_runs_windows_and_matches_short_documents() {
    let model = small_model();
    let chunks: Vec<String> = (0..12)
        .map(|i| format!("Chunk number {i} talks about topic {i} at some length. ").repeat(60))
        .collect();
    let mut request = EmbedRequest::new(chunks.clone()).with_task("retrieval.passage");
    request.late_chunking = LateChunking::On;
    let err = model.embed(&request).unwrap_err();
    assert!(
        err.to_string().contains("more than the limit of 8194"),
        "{err}"
    );

    request.late_chunking = LateChunking::Long { overlap: 512 };
    let plan = model.plan(&request).unwrap();
    assert!(plan.sequences.len() >= 2, "expected several windows");
    assert!(plan.sequences.iter().all(|s| s.ids.len() <= 8194));
    let long = model.embed(&request).unwrap();
    assert_eq!(long.embeddings.len(), chunks.len());
    assert!(long
        .embeddings
        .iter()
        .all(|v| (common::norm(v) - 1.0).abs() < 1e-5));

    // A document that fits gives the same result in long mode as in ordinary late chunking.
    let short = EmbedRequest {
        inputs: chunks[..2].to_vec(),
        late_chunking: LateChunking::On,
        ..request.clone()
    };
    let short_long = EmbedRequest {
        late_chunking: LateChunking::Long { overlap: 512 },
        ..short.clone()
    };
    assert_eq!(
        model.embed(&short).unwrap(),
        model.embed(&short_long).unwrap()
    );
}

#[test]
fn empty_middle_chunk_is_all_zeros() {
    let model = small_model();
    let mut request = EmbedRequest::new(vec!["First part.".into(), "".into(), "Last part.".into()]);
    request.late_chunking = LateChunking::On;
    let result = model.embed(&request).unwrap();
    assert!(result.embeddings[1].iter().all(|&v| v == 0.0));
    assert!((common::norm(&result.embeddings[0]) - 1.0).abs() < 1e-5);
}

/// bf16 attention is chosen per sequence (long sequences round to bf16, short ones stay f32):
/// a short input batched with a long one gives what it gives alone, on every variant.
#[test]
fn a_short_input_batched_with_a_long_one_is_unchanged() {
    let long = "A long document about many things, written at length. ".repeat(60);
    for (label, model) in
        every_variant("batching::a_short_input_batched_with_a_long_one_is_unchanged")
    {
        let both = model
            .embed(
                &EmbedRequest::new(vec!["Paris".into(), long.clone()])
                    .with_task("retrieval.passage"),
            )
            .unwrap();
        assert!(
            both.total_tokens > 600,
            "the long input passes the bf16 threshold of 512 tokens"
        );
        let alone = embed_alone(&model, "Paris", "retrieval.passage");
        assert_close(
            &both.embeddings[0],
            &alone,
            &format!("{label}: short input next to a long one"),
        );
    }
}
