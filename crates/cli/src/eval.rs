//! `jina-embed eval`: recall@1/@10, MRR@10 and nDCG@10 of tasks side by side on a pairs file
//! (each query against every positive and negative of the file), so a user sees whether a
//! trained adapter beats the task it started from and the best built-in one: when a custom
//! task is asked for, every built-in task is measured beside it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use jina_engine::train::RetrievalMetrics;
use jina_engine::{EmbedRequest, Model, TaskAdapter};
use serde::Serialize;

use crate::pairs;

#[derive(Args)]
pub struct EvalArgs {
    /// Model folder, or a Hugging Face hub id (as for `embed`).
    #[arg(long, env = "JINA_MODEL", default_value = jina_engine::hub::DEFAULT_MODEL)]
    model: String,
    /// Pairs: JSONL, CSV, TSV or Parquet with `query`, `positive` and optional `negatives`.
    #[arg(long)]
    data: PathBuf,
    /// A task to measure (built-in, `none`, or an --adapter's name). Repeatable.
    #[arg(long = "task", required = true)]
    tasks: Vec<String>,
    /// A custom adapter folder to serve as a task: NAME=DIR, or DIR. Repeatable.
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    adapters: Vec<jina_engine::AdapterSpec>,
    /// The task the corpus is embedded with (default: retrieval.passage for retrieval.query
    /// and adapters trained query-side, the task itself otherwise).
    #[arg(long)]
    passage_task: Option<String>,
    /// Keep the first N dimensions (Matryoshka).
    #[arg(long)]
    dimensions: Option<usize>,
    /// Precision of the forward pass (as for `embed`).
    #[arg(long, value_enum, default_value = "f32")]
    precision: jina_engine::Precision,
    /// Compute threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// One JSON object per task on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Row {
    task: String,
    passage_task: String,
    /// Measured for comparison, not asked for.
    added: bool,
    /// A custom adapter's task (not one of the checkpoint's).
    custom: bool,
    #[serde(flatten)]
    metrics: RetrievalMetrics,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    crate::init_threads(args.threads)?;
    let model = crate::embed::load_model(
        &args.model,
        jina_engine::LoadOptions {
            precision: args.precision,
            max_isa: None,
            device: jina_engine::DeviceChoice::Cpu,
        },
    )?;
    model.check_dimensions(args.dimensions)?;
    for spec in &args.adapters {
        model
            .load_adapter(&spec.dir, spec.name.as_deref())
            .with_context(|| format!("--adapter {}", spec.dir.display()))?;
    }
    let pairs = pairs::read(&args.data)?;
    let mut corpus: Vec<String> = Vec::new();
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    let mut relevant = Vec::with_capacity(pairs.len());
    for pair in &pairs {
        for (i, text) in std::iter::once(&pair.positive)
            .chain(&pair.negatives)
            .enumerate()
        {
            let at = *index.entry(text.as_str()).or_insert_with(|| {
                corpus.push(text.clone());
                corpus.len() - 1
            });
            if i == 0 {
                relevant.push(at);
            }
        }
    }
    let queries: Vec<String> = pairs.iter().map(|p| p.query.clone()).collect();
    let mut tasks: Vec<(String, bool)> = args.tasks.iter().map(|t| (t.clone(), false)).collect();
    let mut any_custom = false;
    for task in &args.tasks {
        any_custom |= matches!(model.adapter_of(task)?, Some(TaskAdapter::Custom(_)));
    }
    if any_custom {
        for task in model.tasks() {
            if !tasks.iter().any(|(t, _)| t == task) {
                tasks.push((task.clone(), true));
            }
        }
    }
    let mut corpus_vectors: BTreeMap<String, Vec<Vec<f32>>> = BTreeMap::new();
    let mut rows = Vec::new();
    for (task, added) in tasks {
        let passage_task = passage_task_of(&model, &task, args.passage_task.as_deref())?;
        if !corpus_vectors.contains_key(&passage_task) {
            let vectors = embed(&model, &corpus, &passage_task, args.dimensions)?;
            corpus_vectors.insert(passage_task.clone(), vectors);
        }
        let q = embed(&model, &queries, &task, args.dimensions)?;
        let metrics = RetrievalMetrics::compute(&q, &corpus_vectors[&passage_task], &relevant);
        let custom = matches!(model.adapter_of(&task)?, Some(TaskAdapter::Custom(_)));
        rows.push(Row {
            task,
            passage_task,
            added,
            custom,
            metrics,
        });
    }
    print(&rows, args.json)
}

/// The task the corpus runs under when queries run under `task`.
fn passage_task_of(model: &Model, task: &str, asked: Option<&str>) -> anyhow::Result<String> {
    if let Some(t) = asked {
        return Ok(t.to_string());
    }
    if let Some(TaskAdapter::Custom(adapter)) = model.adapter_of(task)? {
        let trained = &adapter.metadata()["training"]["passage_task"];
        return Ok(trained.as_str().unwrap_or(task).to_string());
    }
    Ok(if task == "retrieval.query" {
        "retrieval.passage".into()
    } else {
        task.to_string()
    })
}

fn embed(
    model: &Model,
    texts: &[String],
    task: &str,
    dims: Option<usize>,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut request = EmbedRequest::new(texts.to_vec()).with_task(task);
    request.dimensions = dims;
    request.truncate = true;
    Ok(model.embed(&request)?.embeddings)
}

fn print(rows: &[Row], json: bool) -> anyhow::Result<()> {
    if json {
        for row in rows {
            println!("{}", serde_json::to_string(row)?);
        }
        return Ok(());
    }
    let first = rows.first().map_or(0, |r| r.metrics.queries);
    let corpus = rows.first().map_or(0, |r| r.metrics.corpus);
    println!("{first} queries against {corpus} passages");
    println!(
        "{:<24} {:<20} {:>9} {:>10} {:>7} {:>8}",
        "task", "passages under", "recall@1", "recall@10", "MRR@10", "nDCG@10"
    );
    let best_builtin = rows
        .iter()
        .filter(|r| !r.custom)
        .map(|r| r.metrics.ndcg_at_10)
        .fold(f64::NEG_INFINITY, f64::max);
    let any_custom = rows.iter().any(|r| r.custom);
    let mut marked = false;
    for r in rows {
        let m = &r.metrics;
        let best = !marked && any_custom && !r.custom && m.ndcg_at_10 == best_builtin;
        marked |= best;
        let mark = if best { "  (best built-in)" } else { "" };
        println!(
            "{:<24} {:<20} {:>9.3} {:>10.3} {:>7.3} {:>8.3}{mark}",
            r.task, r.passage_task, m.recall_at_1, m.recall_at_10, m.mrr_at_10, m.ndcg_at_10
        );
    }
    Ok(())
}
