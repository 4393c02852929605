//! `jina-embed embed`: bulk embedding of a file, streamed with bounded memory.
//!
//! Rows come from text lines, JSONL, CSV/TSV or Parquet ([`input`]); vectors go to JSONL, `.npy`
//! or Parquet ([`output`]), in input order. Rows are embedded in batches: up to
//! [`ROWS_PER_BATCH`] rows (or, with late chunking, whole documents) are tokenised, their
//! sequences packed into forward passes of at most `--max-batch-tokens` tokens, and the batch is
//! written and committed before the next one is read. A rerun with `--resume` skips the rows the
//! output already holds; Ctrl-C (or SIGTERM) stops after the current batch and leaves a valid
//! file.

pub mod input;
pub mod output;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use jina_engine::{EmbedRequest, EmbeddingType, Finish, LateChunking, Model, Plan, Sequence};

use input::{Fields, InputFormat, Row};
use output::{Existing, OutRow, OutputFormat, Spec};

/// Rows tokenised and written together: large enough for full forward passes, small enough to
/// keep memory bounded and Ctrl-C quick.
pub const ROWS_PER_BATCH: usize = 256;

#[derive(Args)]
pub struct EmbedArgs {
    /// Model folder, or a Hugging Face hub id (owner/name[@revision]) found in the local
    /// Hugging Face cache (HF_HUB_CACHE, HF_HOME/hub or ~/.cache/huggingface/hub), downloaded
    /// there first if missing (unless --offline or HF_HUB_OFFLINE=1).
    #[arg(long, env = "JINA_MODEL", default_value = jina_engine::hub::DEFAULT_MODEL)]
    model: String,
    /// Task adapter: retrieval.query, retrieval.passage, separation, classification,
    /// text-matching, none for the base weights, or the name of an --adapter.
    #[arg(long, default_value = jina_engine::DEFAULT_TASK)]
    task: String,
    /// Serve a custom adapter folder (from `jina-embed train`, or a PEFT folder) as a task:
    /// NAME=DIR, or DIR to use the name in its jina_adapter.json. Repeatable.
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    adapters: Vec<jina_engine::AdapterSpec>,
    /// Keep the first N dimensions (Matryoshka), then normalise.
    #[arg(long)]
    dimensions: Option<usize>,
    /// Embed chunks with late chunking: consecutive rows with the same --document-field value
    /// form one document (one forward pass, one vector per row). Without --document-field the
    /// whole input is one document.
    #[arg(long)]
    late_chunking: bool,
    /// With --late-chunking, allow documents longer than the model's limit: they run in windows
    /// that overlap by this many tokens.
    #[arg(long, requires = "late_chunking")]
    late_chunking_overlap: Option<usize>,
    /// Do not L2-normalise the vectors.
    #[arg(long)]
    no_normalize: bool,
    /// Output encoding (.npy and Parquet: float, or binary/ubinary as packed int8/uint8 bits).
    #[arg(long, value_enum, default_value = "float")]
    embedding_type: OutputType,
    /// Cut texts longer than the token limit instead of failing.
    #[arg(long)]
    truncate: bool,
    /// Input file, or - for stdin (text or JSONL).
    #[arg(long, default_value = "-")]
    input: PathBuf,
    /// Input format.
    #[arg(long, value_enum, default_value = "auto")]
    format: InputFormat,
    /// JSONL field, CSV/TSV or Parquet column holding the text.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Field or column copied to the output as "id" (JSONL and Parquet outputs).
    #[arg(long)]
    id_field: Option<String>,
    /// Field or column naming the document a row belongs to, for --late-chunking.
    #[arg(long, requires = "late_chunking")]
    document_field: Option<String>,
    /// Output file, or - for stdout (JSONL).
    #[arg(long, default_value = "-")]
    output: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "auto")]
    output_format: OutputFormat,
    /// Continue an existing output: skip the input rows it already holds.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Replace an existing output.
    #[arg(long)]
    overwrite: bool,
    /// Token budget of one forward pass.
    #[arg(long, default_value_t = jina_engine::DEFAULT_MAX_BATCH_TOKENS)]
    max_batch_tokens: usize,
    /// Compute threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Precision of the linear layers and attention: f32 (the official numbers), bf16 (bf16 dot
    /// products where the CPU has them, AVX512_BF16 or AMX; elsewhere bf16 weights with f32
    /// arithmetic, with a warning; cosine to f32 ≥ 0.999 on the fixtures) or int8 (AMX-INT8,
    /// AVX512_VNNI or AVX2; cosine to f32 ≥ 0.999).
    #[arg(long, value_enum, default_value = "f32")]
    precision: jina_engine::Precision,
    /// Highest instruction-set level the kernels may use (avx2, avx512, …; default: all the CPU
    /// has; JINA_MAX_ISA caps it too).
    #[arg(long, value_name = "ISA", value_parser = crate::parse_isa)]
    max_isa: Option<jina_engine::Isa>,
    /// Where the encoder runs: `cpu`, `gpu` (a GPU through wgpu, Vulkan, Metal or DX12; a
    /// software adapter such as Mesa's lavapipe counts; needs a build with `--features gpu`)
    /// or `auto` (a hardware GPU when there is one, else the CPU).
    #[arg(long, env = "JINA_DEVICE", value_enum, default_value = "auto")]
    device: jina_engine::DeviceChoice,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OutputType {
    Float,
    Base64,
    Binary,
    Ubinary,
}

impl From<OutputType> for EmbeddingType {
    fn from(t: OutputType) -> Self {
        match t {
            OutputType::Float => EmbeddingType::Float,
            OutputType::Base64 => EmbeddingType::Base64,
            OutputType::Binary => EmbeddingType::Binary,
            OutputType::Ubinary => EmbeddingType::Ubinary,
        }
    }
}

/// Set by Ctrl-C / SIGTERM: stop after the current batch.
static STOP: AtomicBool = AtomicBool::new(false);

fn install_stop_handler() {
    // A second signal exits at once: every committed batch is already valid on disk.
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
}

/// Loads a model from a folder or a hub id (downloaded into the cache if missing and allowed).
pub fn load_model(spec: &str, options: jina_engine::LoadOptions) -> anyhow::Result<Model> {
    let resolved = crate::resolve::resolve(spec)?;
    Model::load_with(&resolved.dir, options)
        .with_context(|| format!("loading the model from {}", resolved.dir.display()))
}

pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    crate::init_threads(args.threads)?;
    let mut model = load_model(
        &args.model,
        jina_engine::LoadOptions {
            precision: args.precision,
            max_isa: args.max_isa,
            device: args.device,
        },
    )?;
    model.set_max_batch_tokens(args.max_batch_tokens);
    model.check_dimensions(args.dimensions)?;
    for spec in &args.adapters {
        model
            .load_adapter(&spec.dir, spec.name.as_deref())
            .with_context(|| format!("--adapter {}", spec.dir.display()))?;
    }
    model.adapter_of(&args.task)?;
    let fields = Fields {
        text: args.text_field.clone(),
        id: args.id_field.clone(),
        document: args.document_field.clone(),
    };
    let spec = Spec {
        path: args.output.clone(),
        format: args.output_format,
        ty: args.embedding_type.into(),
        dimensions: args.dimensions.unwrap_or(model.config().hidden_size),
        with_id: args.id_field.is_some(),
    };
    let existing = match (args.resume, args.overwrite) {
        (true, _) => Existing::Resume,
        (_, true) => Existing::Overwrite,
        _ => Existing::Refuse,
    };
    let mut rows = input::open(&args.input, args.format, &fields)?.peekable();
    let (mut sink, already) = output::open(&spec, existing)?;
    let total = if args.quiet {
        None
    } else {
        input::count(&args.input, args.format)?
    };
    let template = EmbedRequest {
        inputs: Vec::new(),
        task: Some(args.task.clone()),
        dimensions: args.dimensions,
        normalized: !args.no_normalize,
        late_chunking: match (args.late_chunking, args.late_chunking_overlap) {
            (false, _) => LateChunking::Off,
            (true, None) => LateChunking::On,
            (true, Some(overlap)) => LateChunking::Long { overlap },
        },
        truncate: args.truncate,
    };

    // Skip what the output holds; with late chunking, redo a document a hard kill cut.
    let mut carried: Vec<Row> = Vec::new();
    let mut index = 0u64;
    while index < already {
        let row = match rows.next() {
            Some(row) => row?,
            None => bail!(
                "cannot resume {}: it holds {already} rows but {} has only {index}",
                args.output.display(),
                args.input.display()
            ),
        };
        if args.late_chunking
            && carried
                .last()
                .is_some_and(|last| last.document != row.document)
        {
            carried.clear();
        }
        if args.late_chunking {
            carried.push(row);
        }
        index += 1;
    }
    let cut = match rows.peek() {
        Some(Ok(next))
            if args.late_chunking
                && carried
                    .last()
                    .is_some_and(|last| last.document == next.document) =>
        {
            carried.len()
        }
        _ => 0,
    };
    if cut > 0 {
        sink.rewind(already - cut as u64)?;
        index -= cut as u64;
    }
    let mut carried: std::collections::VecDeque<Row> =
        carried.split_off(carried.len() - cut).into();

    install_stop_handler();
    let progress = progress_bar(!args.quiet && args.input != Path::new("-"), total);
    progress.set_position(index);
    progress.reset_eta();
    let started = Instant::now();
    let (mut tokens, mut written) = (0usize, 0u64);
    let mut next_row =
        || -> Option<anyhow::Result<Row>> { carried.pop_front().map(Ok).or_else(|| rows.next()) };
    let mut lookahead: Option<Row> = None;
    let finish = Finish {
        dimensions: args.dimensions,
        normalized: !args.no_normalize,
    };
    loop {
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        // Read one batch: whole documents with late chunking, else up to ROWS_PER_BATCH rows.
        let mut units: Vec<Vec<Row>> = Vec::new();
        let mut batch_rows = 0;
        loop {
            let row = match lookahead.take() {
                Some(row) => row,
                None => match next_row() {
                    Some(row) => row?,
                    None => break,
                },
            };
            if args.late_chunking {
                let same = units
                    .last()
                    .and_then(|u| u.last())
                    .is_some_and(|last| last.document == row.document);
                if same {
                    if let Some(u) = units.last_mut() {
                        u.push(row)
                    }
                } else if batch_rows >= ROWS_PER_BATCH {
                    lookahead = Some(row);
                    break;
                } else {
                    units.push(vec![row]);
                }
            } else {
                units.push(vec![row]);
                if units.len() >= ROWS_PER_BATCH {
                    break;
                }
            }
            batch_rows += 1;
        }
        if units.is_empty() {
            break;
        }
        let plans = plan_batch(&model, &template, &units)?;
        let vectors = run_plans(&model, &plans, finish, args.max_batch_tokens)?;
        let flat: Vec<&Row> = units.iter().flatten().collect();
        let mut out = Vec::with_capacity(flat.len());
        for (row, vector) in flat.iter().zip(&vectors) {
            out.push(OutRow {
                index,
                id: row.id.as_deref(),
                vector,
            });
            index += 1;
        }
        if out.len() != flat.len() {
            bail!(
                "internal error: {} vectors for {} rows",
                out.len(),
                flat.len()
            );
        }
        sink.write(&out)?;
        sink.commit()?;
        tokens += plans.iter().map(|(_, p)| p.total_tokens).sum::<usize>();
        written += out.len() as u64;
        progress.set_position(index);
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        progress.set_message(format!("{:.0} tokens/s", tokens as f64 / secs));
    }
    let interrupted = STOP.load(Ordering::SeqCst);
    sink.finish()?;
    progress.finish_and_clear();
    if interrupted {
        bail!(
            "interrupted: {} holds {index} rows ({written} written now) and is valid; rerun the same command with --resume to continue",
            args.output.display()
        );
    }
    if args.output != Path::new("-") && !args.quiet {
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "embedded {written} rows ({tokens} tokens, {:.0} tokens/s){}; {} holds {index} rows",
            tokens as f64 / secs.max(1e-3),
            if already > 0 {
                format!(", skipped {already} already written")
            } else {
                String::new()
            },
            args.output.display()
        );
    }
    Ok(())
}

/// Tokenises a batch: one plan of all rows, or one plan per late-chunked document. Each plan
/// comes with the rows it covers, for error messages.
fn plan_batch<'a>(
    model: &Model,
    template: &EmbedRequest,
    units: &'a [Vec<Row>],
) -> anyhow::Result<Vec<(&'a [Row], Plan)>> {
    if template.late_chunking == LateChunking::Off {
        let rows: Vec<&Row> = units.iter().flatten().collect();
        let request = EmbedRequest {
            inputs: rows.iter().map(|r| r.text.clone()).collect(),
            ..template.clone()
        };
        let plan = model.plan(&request).map_err(|e| match e {
            jina_engine::Error::InputTooLong { index, tokens, limit } => anyhow!(
                "row {} has {tokens} tokens, more than the limit of {limit}; pass --truncate to cut it",
                describe(rows[index])
            ),
            other => other.into(),
        })?;
        let all = units.first().map(|u| &u[..0]).unwrap_or(&[]);
        return Ok(vec![(all, plan)]);
    }
    units
        .iter()
        .map(|unit| {
            let request = EmbedRequest { inputs: unit.iter().map(|r| r.text.clone()).collect(), ..template.clone() };
            let plan = model.plan(&request).map_err(|e| {
                let first = &unit[0];
                let doc = first.document.as_deref().map_or(String::new(), |d| format!("document {d:?} "));
                anyhow!("{doc}(records {} to {}): {e}; pass --late-chunking-overlap N to embed long documents in windows", first.record, unit[unit.len() - 1].record)
            })?;
            Ok((&unit[..], plan))
        })
        .collect()
}

fn describe(row: &Row) -> String {
    match &row.id {
        Some(id) => format!("{} (id {id:?})", row.record),
        None => row.record.to_string(),
    }
}

/// Packs the sequences of all plans into forward passes of at most `budget` tokens and returns
/// the finished vectors of every plan, in order.
fn run_plans(
    model: &Model,
    plans: &[(&[Row], Plan)],
    finish: Finish,
    budget: usize,
) -> jina_engine::Result<Vec<Vec<f32>>> {
    let seqs: Vec<&Sequence> = plans.iter().flat_map(|(_, p)| p.sequences.iter()).collect();
    let lengths: Vec<usize> = seqs.iter().map(|s| s.ids.len()).collect();
    let mut sums: Vec<Option<Vec<jina_engine::SpanSum>>> = (0..seqs.len()).map(|_| None).collect();
    for batch in jina_engine::batch::pack_by_tokens(&lengths, budget) {
        let chosen: Vec<&Sequence> = batch.iter().map(|&i| seqs[i]).collect();
        for (i, result) in batch.iter().zip(model.run(&chosen)?) {
            sums[*i] = Some(result);
        }
    }
    let mut sums = sums.into_iter();
    let mut vectors = Vec::new();
    for (_, plan) in plans {
        let mine = sums.by_ref().take(plan.sequences.len()).flatten().flatten();
        vectors.extend(jina_engine::pooling::finish(
            plan,
            mine,
            model.config().hidden_size,
            finish,
        ));
    }
    Ok(vectors)
}

fn progress_bar(visible: bool, total: Option<u64>) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let (bar, template) = match total {
        Some(total) => (
            ProgressBar::new(total),
            "{bar:40} {pos}/{len} rows, {msg} [{elapsed_precise} < {eta_precise}]",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{spinner} {pos} rows, {msg} [{elapsed_precise}]",
        ),
    };
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
