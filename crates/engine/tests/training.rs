//! Training against PyTorch: the loss, the gradient of every LoRA tensor and one AdamW step on
//! the small fixture equal `bench/train_reference.py`'s (autograd on the official forward),
//! on every instruction-set variant of this CPU; and finite differences of our own backward.

mod common;

use std::collections::BTreeMap;

use common::small_fixture_dir;
use jina_engine::adapters::LinearSite;
use jina_engine::kernels::cpu::record_variant;
use jina_engine::train::trainer::{batch_gradients, Passages};
use jina_engine::train::{AdamW, AdamWConfig, InfoNce, SeqAdapter, TrainInput, TrainModel};
use jina_engine::{AdapterWeights, Cpu};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    scale: f32,
    adamw: AdamWConfig,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    from_task: String,
    passage_task: Option<String>,
    symmetric: bool,
    matryoshka_dims: Option<Vec<usize>>,
    queries: Vec<Vec<u32>>,
    positives: Vec<Vec<u32>>,
    negatives: Vec<Vec<u32>>,
    query_embeddings: Vec<Vec<f32>>,
    loss: f64,
    grads: BTreeMap<String, serde_json::Value>,
    updated: BTreeMap<String, serde_json::Value>,
}

fn reference() -> Reference {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/train-small.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("read train-small.json"))
        .expect("parse train-small.json")
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    serde_json::from_value(v.clone()).expect("a list of numbers")
}

/// The reference's tensors (official names) laid out as an adapter: word-table rows the
/// reference does not list are `default_row` (zero for gradients).
fn as_adapter(
    tensors: &BTreeMap<String, serde_json::Value>,
    shape_of: &AdapterWeights,
    unlisted_rows_from: Option<(&AdapterWeights, f32)>,
) -> AdapterWeights {
    let mut out = shape_of.clone();
    out.fill_zero();
    let r = out.rank;
    let layers = out.linears.len() / LinearSite::ALL.len();
    for layer in 0..layers {
        for site in LinearSite::ALL {
            let l = &mut out.linears[layer * LinearSite::ALL.len() + site as usize];
            let name = format!("layers.{layer}.{}", site.module());
            l.a = floats(&tensors[&format!("{name}.lora_A")]);
            l.b = floats(&tensors[&format!("{name}.lora_B")]);
        }
    }
    out.word_b = floats(&tensors["word_embeddings.lora_B"]);
    out.token_type_a = floats(&tensors["token_type_embeddings.lora_A"]);
    out.token_type_b = floats(&tensors["token_type_embeddings.lora_B"]);
    if let Some((before, factor)) = unlisted_rows_from {
        out.word_a = before.word_a.iter().map(|v| v * factor).collect();
    }
    let rows: Vec<usize> =
        serde_json::from_value(tensors["word_embeddings.lora_A.rows"].clone()).expect("row ids");
    let values = floats(&tensors["word_embeddings.lora_A"]);
    for (i, row) in rows.iter().enumerate() {
        out.word_a[row * r..(row + 1) * r].copy_from_slice(&values[i * r..(i + 1) * r]);
    }
    out
}

/// Largest `|a - b|` over a tensor, divided by the reference tensor's largest `|b|`.
fn relative(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs() as f64).fold(0.0, f64::max);
    diff / scale.max(1e-30)
}

fn ids(v: &[Vec<u32>]) -> Vec<&[u32]> {
    v.iter().map(|s| s.as_slice()).collect()
}

fn loss_of(case: &Case, scale: f32) -> InfoNce {
    InfoNce {
        scale,
        symmetric: case.symmetric,
        dims: case.matryoshka_dims.clone().unwrap_or_default(),
    }
}

/// Our loss and gradients for a case (the passages frozen or trained as the case says).
fn our_gradients(
    model: &TrainModel,
    case: &Case,
    scale: f32,
    chunk: usize,
) -> (f64, Vec<Vec<f32>>, AdapterWeights, AdapterWeights) {
    let adapter = model
        .builtin_adapter(model.task_index(&case.from_task).unwrap())
        .unwrap();
    let passages = match &case.passage_task {
        Some(task) => {
            let frozen = model
                .builtin_adapter(model.task_index(task).unwrap())
                .unwrap();
            let embed = |seqs: &[Vec<u32>]| {
                let inputs: Vec<TrainInput> = seqs
                    .iter()
                    .map(|ids| TrainInput {
                        ids,
                        adapter: SeqAdapter::Frozen(&frozen),
                    })
                    .collect();
                model.embed(&adapter, &inputs)
            };
            Passages::Frozen {
                positives: embed(&case.positives),
                negatives: embed(&case.negatives),
            }
        }
        None => Passages::Trained {
            positives: ids(&case.positives),
            negatives: ids(&case.negatives),
        },
    };
    let queries = ids(&case.queries);
    let (out, grads) = batch_gradients(
        model,
        &adapter,
        &loss_of(case, scale),
        &queries,
        &passages,
        chunk,
    );
    let inputs: Vec<TrainInput> = queries
        .iter()
        .map(|ids| TrainInput {
            ids,
            adapter: SeqAdapter::Trainable,
        })
        .collect();
    let pooled = model.embed(&adapter, &inputs);
    (out.loss, pooled, grads, adapter)
}

fn normalized(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

/// Every LoRA gradient within 1e-4 (relative to the tensor's largest) of PyTorch's, the loss
/// and the query vectors too, on every variant; GradCache chunking changes nothing.
#[test]
fn gradients_match_pytorch_autograd() {
    let reference = reference();
    for isa in Cpu::detected().test_variants() {
        record_variant("training::gradients_match_pytorch_autograd", isa);
        let mut model =
            TrainModel::load_with(small_fixture_dir(), Cpu::detected().capped(isa)).unwrap();
        // Activations kept from the forward, and recomputed block by block.
        for budget in [usize::MAX, 0] {
            model.set_tape_budget(budget);
            for case in &reference.cases {
                // One chunk for the whole batch, and one sequence per chunk.
                for chunk in [4096, 1] {
                    let (loss, pooled, grads, adapter) =
                        our_gradients(&model, case, reference.scale, chunk);
                    let want = as_adapter(&case.grads, &adapter, None);
                    let what = format!("{isa:?} {} chunk {chunk} tape budget {budget}", case.name);
                    assert!(
                        (loss - case.loss).abs() <= 1e-5 * case.loss.abs(),
                        "{what}: loss {loss} vs {}",
                        case.loss
                    );
                    for (ours, theirs) in pooled.iter().zip(&case.query_embeddings) {
                        let d = normalized(ours)
                            .iter()
                            .zip(theirs)
                            .map(|(a, b)| (a - b).abs())
                            .fold(0.0, f32::max);
                        assert!(d <= 2e-5, "{what}: query vector differs by {d}");
                    }
                    let names = tensor_names(&adapter);
                    let mut worst = 0f64;
                    for ((ours, theirs), name) in
                        grads.tensors().iter().zip(want.tensors()).zip(&names)
                    {
                        let err = relative(ours, theirs);
                        assert!(
                            err <= 1e-4,
                            "{what}: gradient of {name}: relative error {err:.3e}"
                        );
                        worst = worst.max(err);
                    }
                    eprintln!("{what}: loss {loss:.9} (PyTorch {:.9}), worst gradient relative error {worst:.2e}", case.loss);
                }
            }
        }
    }
}

/// One AdamW step from PyTorch's gradients gives PyTorch's updated tensors within 1e-6.
#[test]
fn one_adamw_step_matches_pytorch() {
    let reference = reference();
    let model = TrainModel::load(small_fixture_dir()).unwrap();
    for case in &reference.cases {
        let mut adapter = model
            .builtin_adapter(model.task_index(&case.from_task).unwrap())
            .unwrap();
        let before = adapter.clone();
        let grads = as_adapter(&case.grads, &adapter, None);
        let factor = 1.0 - reference.adamw.lr * reference.adamw.weight_decay;
        let want = as_adapter(&case.updated, &adapter, Some((&before, factor)));
        let mut adam = AdamW::new(reference.adamw, &adapter);
        adam.step(&mut adapter, &grads, reference.adamw.lr);
        for ((ours, theirs), name) in adapter
            .tensors()
            .iter()
            .zip(want.tensors())
            .zip(tensor_names(&before))
        {
            let d = ours
                .iter()
                .zip(theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                d <= 1e-6,
                "{}: {name} differs by {d:.3e} after one step",
                case.name
            );
        }
        let moved = adapter
            .tensors()
            .into_iter()
            .zip(before.tensors())
            .any(|(a, b)| a != b);
        assert!(moved, "the step changed nothing");
    }
}

/// Central differences of our own loss (f32 forward) agree with our backward on the largest
/// gradient elements of a few tensors.
#[test]
fn gradients_match_finite_differences() {
    let reference = reference();
    let model = TrainModel::load(small_fixture_dir()).unwrap();
    let case = &reference.cases[1];
    let (_, _, grads, adapter) = our_gradients(&model, case, reference.scale, 4096);
    let loss = loss_of(case, reference.scale);
    let at = |a: &AdapterWeights| {
        let p = Passages::Trained {
            positives: ids(&case.positives),
            negatives: ids(&case.negatives),
        };
        batch_gradients(&model, a, &loss, &ids(&case.queries), &p, 4096)
            .0
            .loss
    };
    let names = tensor_names(&adapter);
    // Layer 0's and the last layer's products, the word table's B, the token type's B.
    let picks = [0, 3, names.len() - 8, names.len() - 3, names.len() - 1];
    for t in picks {
        let g = grads.tensors()[t].to_vec();
        let (index, &value) = g
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        let h = 1e-2 * adapter.tensors()[t][index].abs().max(1.0);
        let shifted = |delta: f32| {
            let mut a = adapter.clone();
            a.tensors_mut()[t][index] += delta;
            at(&a)
        };
        let numeric = (shifted(h) - shifted(-h)) / (2.0 * h as f64);
        let err = (numeric - value as f64).abs() / (value.abs() as f64);
        assert!(
            err < 2e-2,
            "{}[{index}]: numeric {numeric:.6e}, analytic {value:.6e}",
            names[t]
        );
    }
}

fn tensor_names(adapter: &AdapterWeights) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..adapter.linears.len() {
        let site = LinearSite::ALL[i % LinearSite::ALL.len()].module();
        let layer = i / LinearSite::ALL.len();
        names.push(format!("layers.{layer}.{site}.lora_A"));
        names.push(format!("layers.{layer}.{site}.lora_B"));
    }
    names.extend(
        [
            "word_embeddings.lora_A",
            "word_embeddings.lora_B",
            "token_type_embeddings.lora_A",
            "token_type_embeddings.lora_B",
        ]
        .map(String::from),
    );
    names
}

fn resume_pairs() -> Vec<jina_engine::train::Pair> {
    (0..10)
        .map(|i| jina_engine::train::Pair {
            query: format!("question number {i} about topic {}", i * 7 % 5),
            positive: format!("the answer to question {i} is {}", i * 13),
            negatives: if i % 3 == 0 {
                vec![format!("an unrelated text {i}")]
            } else {
                vec![]
            },
        })
        .collect()
}

/// A run stopped after a checkpoint and resumed from it ends with exactly the adapter of a run
/// that never stopped; a checkpoint of other options is refused.
#[test]
fn a_resumed_run_equals_an_uninterrupted_one() {
    use jina_engine::train::{TrainOptions, Trainer};
    use std::sync::atomic::{AtomicBool, Ordering};
    let model = TrainModel::load(small_fixture_dir()).unwrap();
    let tokenizer = jina_engine::tokenize::TextTokenizer::from_dir(small_fixture_dir()).unwrap();
    let pairs = resume_pairs();
    let mut options = TrainOptions::new("resume.test", None);
    options.epochs = 2;
    options.batch = 4;
    options.optimizer.lr = 1e-2;
    let never = AtomicBool::new(false);
    let mut whole =
        Trainer::new(&model, &tokenizer, options.clone(), &pairs, Some(&pairs)).unwrap();
    let report = whole.run(&never, &mut |_| {}, &mut |_| Ok(())).unwrap();
    assert_eq!((report.steps, report.total_steps), (6, 6));
    assert_eq!(report.eval.len(), 3, "before training and after each epoch");
    assert!(report.epoch_losses.iter().all(|l| l.is_finite()));

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("training-resume-checkpoint");
    let _ = std::fs::remove_dir_all(&dir);
    let stop = AtomicBool::new(false);
    let mut first =
        Trainer::new(&model, &tokenizer, options.clone(), &pairs, Some(&pairs)).unwrap();
    let stopped = first
        .run(&stop, &mut |_| {}, &mut |t| {
            t.save_checkpoint(&dir)?;
            if t.step() == 4 {
                stop.store(true, Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
    assert!(stopped.stopped && stopped.steps == 4, "{stopped:?}");
    let mut second =
        Trainer::new(&model, &tokenizer, options.clone(), &pairs, Some(&pairs)).unwrap();
    second.load_checkpoint(&dir).unwrap();
    let resumed = second.run(&never, &mut |_| {}, &mut |_| Ok(())).unwrap();
    assert_eq!(resumed.steps, 6);
    assert_eq!(
        second.adapter, whole.adapter,
        "the resumed run ends where the whole one does"
    );
    assert_eq!(second.optimizer, whole.optimizer);
    assert_eq!(resumed.eval, report.eval);
    assert_ne!(
        whole.adapter,
        AdapterWeights::lora_init(model.config(), 0),
        "training moved it"
    );

    let mut other = options.clone();
    other.optimizer.lr = 2e-2;
    let mut mismatched = Trainer::new(&model, &tokenizer, other, &pairs, None).unwrap();
    let err = mismatched.load_checkpoint(&dir).unwrap_err().to_string();
    assert!(err.contains("other options or data"), "{err}");
}
