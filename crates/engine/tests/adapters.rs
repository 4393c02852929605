//! Custom task adapters: served beside the built-in five, mixed with them in a batch, saved
//! and loaded as a PEFT folder, and refused with a message when they do not fit.

mod common;

use std::sync::Arc;

use common::{max_abs_diff, small_fixture_dir, small_model, variant_models};
use jina_engine::adapters::folder::{self, AdapterMetadata};
use jina_engine::weights::Weights;
use jina_engine::{AdapterWeights, EmbedRequest, Model, Precision, Sequence};

const TEXTS: [&str; 3] = [
    "What is the capital of France?",
    "Paris is the capital and largest city of France.",
    "",
];

/// Task `task`'s own LoRA tensors, read from the checkpoint.
fn builtin_copy(model: &Model, task: usize) -> AdapterWeights {
    let weights = Weights::open(
        &small_fixture_dir().join("model.safetensors"),
        model.config(),
    )
    .expect("open the weights");
    AdapterWeights::from_checkpoint(&weights, model.config(), task).expect("slice the task")
}

fn embed(model: &Model, task: &str) -> Vec<Vec<f32>> {
    let texts = TEXTS.iter().map(|t| t.to_string()).collect();
    model
        .embed(&EmbedRequest::new(texts).with_task(task))
        .expect("embed")
        .embeddings
}

/// Serves built-in task `task`'s tensors as the custom task `name` with `prefix`.
fn add_builtin_copy(model: &Model, name: &str, prefix: &str, task: usize) {
    model
        .add_adapter(
            name,
            prefix,
            builtin_copy(model, task),
            serde_json::Value::Null,
        )
        .expect("add the copy");
}

/// A copy of a built-in task served as a custom one gives that task's vectors: the custom path
/// (its own tensors, the epilogue's low-rank term) computes what the built-in path does.
fn copy_matches_builtin(test: &str, precision: Precision, tolerance: f32) {
    for (isa, model) in variant_models(test, precision) {
        for (task, name) in [(0, "retrieval.query"), (3, "classification")] {
            let prefix = model
                .config()
                .task_instructions
                .get(name)
                .cloned()
                .unwrap_or_default();
            let copy = format!("copy.{name}");
            add_builtin_copy(&model, &copy, &prefix, task);
            let want = embed(&model, name);
            let got = embed(&model, &copy);
            for (w, g) in want.iter().zip(&got) {
                let diff = max_abs_diff(w, g);
                assert!(
                    diff <= tolerance,
                    "{isa:?} {precision:?} {name}: custom copy differs by {diff}"
                );
            }
            // The tolerance tells adapters apart: the other task's tensors under this task's
            // prefix give vectors far outside it.
            let other = if task == 0 { 3 } else { 0 };
            let wrong = format!("wrong.{name}");
            add_builtin_copy(&model, &wrong, &prefix, other);
            let far = embed(&model, &wrong);
            let moved = want
                .iter()
                .zip(&far)
                .map(|(w, f)| max_abs_diff(w, f))
                .fold(0f32, f32::max);
            assert!(
                moved > 10.0 * tolerance,
                "{isa:?} {precision:?} {name}: another task's tensors moved the vectors by only {moved}"
            );
        }
    }
}

#[test]
fn custom_copy_of_a_builtin_task_matches_it_f32() {
    copy_matches_builtin("adapters::custom_copy_f32", Precision::F32, 1e-6);
}

/// 1e-4, not 1e-5: a built-in task's LoRA is part of the bf16 product (its `B` as extra weight
/// columns, `s·x·Aᵀ` as extra inputs), so where the product rounds its inputs to bf16
/// (AVX512_BF16, AMX) the built-in low-rank term carries bf16's 2⁻⁹ relative rounding, while the
/// custom copy takes the exact f32 epilogue (seen: 1.6e-5 on a Zen 4's avx512bf16 variant;
/// another task's tensors move the vectors by more than ten times the tolerance, checked).
#[test]
fn custom_copy_of_a_builtin_task_matches_it_bf16() {
    copy_matches_builtin("adapters::custom_copy_bf16", Precision::Bf16, 1e-4);
}

#[test]
fn custom_copy_of_a_builtin_task_matches_it_int8() {
    copy_matches_builtin("adapters::custom_copy_int8", Precision::Int8, 1e-5);
}

/// One forward pass over sequences of a custom task, a built-in one and the base weights gives
/// each the vectors it gets alone.
#[test]
fn custom_and_builtin_tasks_mix_in_one_batch() {
    for (isa, model) in variant_models("adapters::mixed_batch", Precision::F32) {
        let mut weights = builtin_copy(&model, 2);
        // A different adapter from every built-in one: scale one B.
        weights.linears[0].b.iter_mut().for_each(|v| *v *= 3.0);
        model
            .add_adapter("mine", "", weights, serde_json::Value::Null)
            .expect("add");
        let tasks = ["mine", "retrieval.passage", "none", "mine"];
        let plans: Vec<_> = tasks
            .iter()
            .enumerate()
            .map(|(i, task)| {
                let request = EmbedRequest::new(vec![TEXTS[i % 2].to_string()]).with_task(task);
                model.plan(&request).expect("plan")
            })
            .collect();
        let batch: Vec<&Sequence> = plans.iter().map(|p| &p.sequences[0]).collect();
        let together = model.run(&batch).unwrap();
        for (i, seq) in batch.iter().enumerate() {
            let alone = model.run(&[seq]).unwrap();
            let f32s =
                |s: &jina_engine::SpanSum| s.sum.iter().map(|&v| v as f32).collect::<Vec<_>>();
            let diff = max_abs_diff(&f32s(&alone[0][0]), &f32s(&together[i][0]));
            assert!(
                diff <= 1e-4,
                "{isa:?} {}: mixed batch differs by {diff}",
                tasks[i]
            );
        }
        let mine = embed(&model, "mine");
        let copy = embed(&model, "separation");
        assert!(
            max_abs_diff(&mine[0], &copy[0]) > 1e-3,
            "the changed adapter must change the vectors"
        );
    }
}

#[test]
fn saved_folder_loads_back_to_the_same_vectors() {
    let model = Model::load(small_fixture_dir()).expect("load");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut weights = builtin_copy(&model, 4);
    weights.word_b.iter_mut().for_each(|v| *v *= -1.0);
    let sha = model.weights_sha256().expect("hash");
    let meta = AdapterMetadata::new("legal.match", "Legal: ", model.config(), Some(sha));
    folder::save(dir.path(), &weights, &meta).expect("save");
    let read = folder::load(dir.path(), model.config()).expect("read back");
    assert_eq!(read.weights, weights, "the folder round-trips exactly");
    let loaded = model.load_adapter(dir.path(), None).expect("load");
    assert_eq!(loaded.name(), "legal.match");
    assert_eq!(loaded.prefix(), "Legal: ");
    model
        .add_adapter("direct", "Legal: ", weights, serde_json::Value::Null)
        .expect("add");
    assert_eq!(embed(&model, "legal.match"), embed(&model, "direct"));
    assert!(model.task_names().contains(&"legal.match".to_string()));
    // Served under another name too.
    model
        .load_adapter(dir.path(), Some("legal.other"))
        .expect("load under a name");
    assert_eq!(embed(&model, "legal.other"), embed(&model, "direct"));
}

#[test]
fn a_request_in_flight_keeps_its_adapter_after_unload() {
    let model = Model::load(small_fixture_dir()).expect("load");
    model
        .add_adapter(
            "short-lived",
            "",
            builtin_copy(&model, 1),
            serde_json::Value::Null,
        )
        .expect("add");
    let request = EmbedRequest::new(vec![TEXTS[1].to_string()]).with_task("short-lived");
    let plan = model.plan(&request).expect("plan");
    let removed = model.remove_adapter("short-lived").expect("remove");
    assert_eq!(removed.name(), "short-lived");
    let sums = model.run(&[&plan.sequences[0]]).unwrap();
    assert_eq!(sums.len(), 1);
    let err = model.plan(&request).unwrap_err().to_string();
    assert!(err.contains("short-lived"), "{err}");
    // The name is free again.
    model
        .add_adapter(
            "short-lived",
            "",
            builtin_copy(&model, 1),
            serde_json::Value::Null,
        )
        .expect("add again");
    drop(Arc::clone(&removed));
}

#[test]
fn names_are_checked() {
    let model = small_model();
    let w = || builtin_copy(model, 0);
    let null = serde_json::Value::Null;
    for (name, needle) in [
        ("retrieval.query", "built-in"),
        ("none", "built-in"),
        ("", "empty"),
        ("has space", "only ASCII"),
        ("a/b", "only ASCII"),
    ] {
        let err = model.add_adapter(name, "", w(), null.clone()).unwrap_err();
        assert!(
            err.to_string().contains(needle) || err.to_string().contains("taken"),
            "{name:?}: {err}"
        );
        assert!(err.is_client_error());
    }
    let long = "x".repeat(65);
    let err = model.add_adapter(&long, "", w(), null.clone()).unwrap_err();
    assert!(err.to_string().contains("limit of 64"), "{err}");
    model
        .add_adapter("twice", "", w(), null.clone())
        .expect("first");
    let err = model.add_adapter("twice", "", w(), null).unwrap_err();
    assert!(err.to_string().contains("already loaded"), "{err}");
    let err = model.remove_adapter("text-matching").unwrap_err();
    assert!(err.to_string().contains("cannot be unloaded"), "{err}");
    let err = model.remove_adapter("never-loaded").unwrap_err();
    assert!(err.to_string().contains("never-loaded"), "{err}");
}

#[test]
fn bad_folders_are_refused_with_the_reason() {
    let model = small_model();
    let good = tempfile::tempdir().expect("tempdir");
    let meta = AdapterMetadata::new("t", "", model.config(), None);
    folder::save(good.path(), &builtin_copy(model, 0), &meta).expect("save");
    let copy = |edit: &dyn Fn(&std::path::Path)| {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in [folder::PEFT_CONFIG, folder::PEFT_WEIGHTS, folder::METADATA] {
            std::fs::copy(good.path().join(f), dir.path().join(f)).expect("copy");
        }
        edit(dir.path());
        dir
    };
    let expect_err = |dir: &std::path::Path, needle: &str| {
        let err = model
            .load_adapter(dir, Some("bad"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "want {needle:?} in: {err}");
    };
    expect_err(&good.path().join("nope"), "not a folder");
    let d = copy(&|d| std::fs::remove_file(d.join(folder::PEFT_WEIGHTS)).unwrap());
    expect_err(d.path(), "adapter_model.safetensors: the file is missing");
    let d = copy(&|d| std::fs::remove_file(d.join(folder::PEFT_CONFIG)).unwrap());
    expect_err(d.path(), "adapter_config.json: the file is missing");
    let d = copy(&|d| std::fs::write(d.join(folder::PEFT_WEIGHTS), b"garbage").unwrap());
    expect_err(d.path(), "adapter_model.safetensors");
    let d = copy(&|d| {
        let p = d.join(folder::PEFT_CONFIG);
        let s = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"r\": 4", "\"r\": 8");
        std::fs::write(p, s).unwrap();
    });
    expect_err(d.path(), "r is 8");
    let d = copy(&|d| {
        let p = d.join(folder::METADATA);
        let s = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"sha256\": null", "\"sha256\": \"00ff\"");
        std::fs::write(p, s).unwrap();
    });
    expect_err(d.path(), "trained on another base model");
    let d = copy(&|d| {
        let p = d.join(folder::METADATA);
        let s = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"hidden_size\": 128", "\"hidden_size\": 1024");
        std::fs::write(p, s).unwrap();
    });
    expect_err(d.path(), "trained on another base model");
    // Another model's shapes: an adapter saved for a wider model.
    let mut wide_config = model.config().clone();
    wide_config.hidden_size = 256;
    wide_config.num_attention_heads = 4;
    let wide = AdapterWeights::zeros(&wide_config);
    let d = tempfile::tempdir().expect("tempdir");
    folder::save(
        d.path(),
        &wide,
        &AdapterMetadata::new("w", "", model.config(), None),
    )
    .expect("save");
    expect_err(d.path(), "has shape");
    // Nothing was registered by any of these.
    assert!(!model.task_names().contains(&"bad".to_string()));
}
