//! `jina-embed embed`: texts in (one per line, or JSONL with a `text` field), JSONL
//! `{"index", "embedding"}` out, in input order.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use jina_engine::output::encode;
use jina_engine::{EmbedRequest, EmbeddingType, Encoded, LateChunking, Model};
use serde::Serialize;

/// Texts per engine call when not late chunking: large enough for full batches, small enough
/// to stream big files with bounded memory.
const TEXTS_PER_CALL: usize = 256;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// JSONL when the file ends in .jsonl or .ndjson, else plain text.
    Auto,
    /// One text per line.
    Text,
    /// One JSON object per line; the text is in the `--text-field` field.
    Jsonl,
}

#[derive(Args)]
pub struct EmbedArgs {
    /// Model folder (config.json, tokenizer.json, model.safetensors).
    #[arg(long, env = "JINA_MODEL")]
    model: PathBuf,
    /// Task adapter: retrieval.query, retrieval.passage, separation, classification,
    /// text-matching, or none for the base weights.
    #[arg(long, default_value = jina_engine::DEFAULT_TASK)]
    task: String,
    /// Keep the first N dimensions (Matryoshka), then normalise.
    #[arg(long)]
    dimensions: Option<usize>,
    /// Treat all input texts as consecutive chunks of one document and embed them with late
    /// chunking (one forward pass, one vector per chunk).
    #[arg(long)]
    late_chunking: bool,
    /// With --late-chunking, allow documents longer than the model's limit: they run in windows
    /// that overlap by this many tokens.
    #[arg(long, requires = "late_chunking")]
    late_chunking_overlap: Option<usize>,
    /// Do not L2-normalise the vectors.
    #[arg(long)]
    no_normalize: bool,
    /// Output encoding.
    #[arg(long, value_enum, default_value = "float")]
    embedding_type: OutputType,
    /// Cut texts longer than the token limit instead of failing.
    #[arg(long)]
    truncate: bool,
    /// Input file, or - for stdin.
    #[arg(long, default_value = "-")]
    input: PathBuf,
    /// Input format.
    #[arg(long, value_enum, default_value = "auto")]
    format: InputFormat,
    /// JSONL field holding the text.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Output file, or - for stdout.
    #[arg(long, default_value = "-")]
    output: PathBuf,
    /// Token budget of one forward pass.
    #[arg(long, default_value_t = jina_engine::DEFAULT_MAX_BATCH_TOKENS)]
    max_batch_tokens: usize,
    /// Compute threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
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

/// One line of output: floats are written in their shortest f32 form.
#[derive(Serialize)]
struct OutputLine {
    index: usize,
    embedding: Encoded,
}

pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    crate::init_threads(args.threads)?;
    let mut model = Model::load(&args.model).with_context(|| format!("loading the model from {}", args.model.display()))?;
    model.set_max_batch_tokens(args.max_batch_tokens);
    let texts = read_texts(&args.input, args.format, &args.text_field)?;
    let from_file = args.input != Path::new("-");

    let mut out: Box<dyn Write> = if args.output == Path::new("-") {
        Box::new(BufWriter::new(io::stdout().lock()))
    } else {
        let file = File::create(&args.output).with_context(|| format!("creating {}", args.output.display()))?;
        Box::new(BufWriter::new(file))
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
    let per_call = if args.late_chunking { texts.len().max(1) } else { TEXTS_PER_CALL };
    let progress = progress_bar(from_file, texts.len());
    let ty = EmbeddingType::from(args.embedding_type);
    let mut tokens = 0;
    for (call, chunk) in texts.chunks(per_call).enumerate() {
        let request = EmbedRequest { inputs: chunk.to_vec(), ..template.clone() };
        let result = model.embed(&request).map_err(|e| offset_error(e, call * per_call))?;
        tokens += result.total_tokens;
        for (i, vector) in result.embeddings.iter().enumerate() {
            let line = OutputLine { index: call * per_call + i, embedding: encode(vector, ty) };
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
        progress.inc(chunk.len() as u64);
        progress.set_message(format!("{tokens} tokens"));
    }
    out.flush()?;
    progress.finish_and_clear();
    if from_file {
        eprintln!("embedded {} texts ({tokens} tokens)", texts.len());
    }
    Ok(())
}

/// Engine errors count inputs from the start of the call; report them from the file's start.
fn offset_error(err: jina_engine::Error, offset: usize) -> anyhow::Error {
    match err {
        jina_engine::Error::InputTooLong { index, tokens, limit } => anyhow::anyhow!(
            "line {} (input {}) has {tokens} tokens, more than the limit of {limit}; pass --truncate to cut it",
            index + offset + 1,
            index + offset
        ),
        other => other.into(),
    }
}

fn progress_bar(visible: bool, total: usize) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} texts, {msg} [{elapsed_precise} < {eta_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn read_texts(path: &Path, format: InputFormat, field: &str) -> anyhow::Result<Vec<String>> {
    let reader: Box<dyn Read> = if path == Path::new("-") {
        Box::new(io::stdin().lock())
    } else {
        Box::new(File::open(path).with_context(|| format!("opening {}", path.display()))?)
    };
    let jsonl = match format {
        InputFormat::Jsonl => true,
        InputFormat::Text => false,
        InputFormat::Auto => matches!(path.extension().and_then(|e| e.to_str()), Some("jsonl" | "ndjson")),
    };
    let mut texts = Vec::new();
    for (n, line) in BufReader::new(reader).lines().enumerate() {
        let line = line.with_context(|| format!("reading line {} of {}", n + 1, path.display()))?;
        if !jsonl {
            texts.push(line);
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("line {} is not valid JSON", n + 1))?;
        match value.get(field) {
            Some(serde_json::Value::String(text)) => texts.push(text.clone()),
            Some(other) => bail!("line {}: field {field:?} is not a string but {other}", n + 1),
            None => bail!("line {}: no field {field:?}", n + 1),
        }
    }
    Ok(texts)
}
