//! `jina-embed train`: trains a new task adapter on (query, positive, negatives) pairs, with a
//! progress bar, evaluation before and after each epoch, a checkpoint after every step
//! (`--resume` goes on from it), and writes the adapter folder that `serve --adapter`,
//! `embed --adapter` and the Python package load.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use jina_engine::tokenize::TextTokenizer;
use jina_engine::train::trainer::{self, Side};
use jina_engine::train::{InfoNce, Progress, TrainModel, TrainOptions, Trainer};

use crate::pairs;

#[derive(Args)]
pub struct TrainArgs {
    /// Model folder, or a Hugging Face hub id (as for `embed`).
    #[arg(long, env = "JINA_MODEL", default_value = jina_engine::hub::DEFAULT_MODEL)]
    model: String,
    /// Training pairs: JSONL, CSV, TSV or Parquet with `query` (or `anchor`), `positive` and
    /// optionally `negatives` (a list) or `negative` columns.
    #[arg(long)]
    data: PathBuf,
    /// The built-in task to start from (its weights and prefix), or `none` to start from zero.
    #[arg(long = "from", default_value = "retrieval.query")]
    from_task: String,
    /// The new task's name (letters, digits, `.`, `-`, `_`; at most 64).
    #[arg(long)]
    name: String,
    /// The adapter folder to write (a checkpoint is kept in OUT/checkpoint while training).
    #[arg(long)]
    out: PathBuf,
    /// Held-out pairs to evaluate on before training and after each epoch (recall@1/@10,
    /// MRR@10, nDCG@10 against their own positives and negatives).
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Passes over the data.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Peak learning rate (AdamW; linear warm-up, then linear decay to 0).
    #[arg(long, default_value_t = 5e-4)]
    lr: f32,
    /// Pairs per step: every other pair's positive and negatives are a query's negatives.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Longest sequence in tokens, prefix and specials included; longer texts are cut.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Shuffling seed: a run is deterministic for a seed and a thread count.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Compute threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Go on from OUT/checkpoint (after Ctrl-C or a crash), with the same options and data.
    #[arg(long)]
    resume: bool,
    /// The new task's instruction prefix (default: the --from task's).
    #[arg(long)]
    prefix: Option<String>,
    /// Train one adapter for queries and passages alike (the default unless --from is
    /// retrieval.query): for text-matching-like tasks. Query-side training keeps the passages
    /// under a frozen task, so an existing passage index stays valid.
    #[arg(long, conflicts_with = "passage_task")]
    joint: bool,
    /// The frozen task passages run under in query-side training (default retrieval.passage).
    #[arg(long)]
    passage_task: Option<String>,
    /// Add the passages-to-queries direction to the loss
    /// (MultipleNegativesSymmetricRankingLoss).
    #[arg(long)]
    symmetric: bool,
    /// Matryoshka: sum the loss over these widths (e.g. 32,64,128,256,512,768,1024).
    #[arg(long, value_delimiter = ',')]
    matryoshka: Vec<usize>,
    /// Similarity scale of the loss (1 / temperature).
    #[arg(long, default_value_t = jina_engine::train::loss::DEFAULT_SCALE)]
    scale: f32,
    /// Fraction of the steps spent warming the learning rate up.
    #[arg(long, default_value_t = 0.1)]
    warmup: f32,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f32,
    /// Clip the gradients' global norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    /// Tokens differentiated at once: bounds memory, whatever --batch (0: as many as 768 MiB of
    /// kept activations hold; about 520 on the full model).
    #[arg(long, default_value_t = 0)]
    chunk_tokens: usize,
    /// Highest instruction-set level the kernels may use (as for `embed`).
    #[arg(long, value_name = "ISA", value_parser = crate::parse_isa)]
    max_isa: Option<jina_engine::Isa>,
    /// Hide the progress bar (figures are still printed).
    #[arg(long)]
    quiet: bool,
}

/// Set by Ctrl-C / SIGTERM: stop after the current step (its checkpoint written).
static STOP: AtomicBool = AtomicBool::new(false);

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    crate::init_threads(args.threads)?;
    trainer::check_out_dir(&args.out, args.resume)?;
    let dir = crate::resolve::resolve(&args.model)?.dir;
    let cpu = jina_engine::Cpu::host_checked()?;
    let cpu = args.max_isa.map_or(cpu, |isa| cpu.capped(isa));
    let model = TrainModel::load_with(&dir, cpu)
        .with_context(|| format!("loading the model from {}", dir.display()))?;
    let tokenizer = TextTokenizer::from_dir(&dir)?;
    let pairs = pairs::read(&args.data)?;
    let eval = args.eval.as_deref().map(pairs::read).transpose()?;
    let options = options(&args);
    eprintln!(
        "training {} from {} on {} pairs ({}), {} epoch(s) of batch {}; kernels {}",
        options.name,
        args.from_task,
        pairs.len(),
        match &options.side {
            Side::Query { passage_task } => format!("query side, passages under {passage_task}"),
            Side::Joint => "queries and passages".into(),
        },
        options.epochs,
        options.batch,
        model.plan().summary(),
    );
    let mut trainer = Trainer::new(&model, &tokenizer, options, &pairs, eval.as_deref())?;
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    let bar = progress_bar(!args.quiet, trainer.total_steps());
    let mut on_progress = |p: &Progress| match p {
        Progress::Started { step, .. } => {
            if *step > 0 {
                bar.println(format!("resumed at step {step}"));
            }
            bar.set_position(*step)
        }
        Progress::Step {
            step,
            loss,
            pairs_per_second,
            epoch,
            ..
        } => {
            bar.set_position(*step);
            bar.set_message(format!(
                "epoch {epoch}, loss {loss:.4}, {pairs_per_second:.1} pairs/s"
            ));
        }
        Progress::Eval { epoch, metrics } => {
            let when = if *epoch == 0 {
                "before training".to_string()
            } else {
                format!("after epoch {epoch}")
            };
            bar.println(format!("eval {when}: {}", metrics.summary()));
        }
    };
    let report = trainer.run_in(&args.out, args.resume, &STOP, &mut on_progress)?;
    bar.finish_and_clear();
    if report.stopped {
        eprintln!(
            "stopped at step {} of {}: the checkpoint is in {}; go on with --resume",
            report.steps,
            report.total_steps,
            trainer::checkpoint_dir(&args.out).display()
        );
        std::process::exit(130);
    }
    eprintln!(
        "trained {} in {:.1} s ({:.1} pairs/s); epoch losses {:?}; adapter written to {}",
        args.name,
        report.seconds,
        report.pairs_per_second,
        report
            .epoch_losses
            .iter()
            .map(|l| (l * 1e4).round() / 1e4)
            .collect::<Vec<_>>(),
        args.out.display()
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

fn options(args: &TrainArgs) -> TrainOptions {
    let from = (args.from_task != jina_engine::NO_TASK).then_some(args.from_task.as_str());
    let mut o = TrainOptions::new(&args.name, from);
    if args.joint {
        o.side = Side::Joint;
    } else if let Some(task) = &args.passage_task {
        o.side = Side::Query {
            passage_task: task.clone(),
        };
    }
    o.prefix = args.prefix.clone();
    o.epochs = args.epochs;
    o.batch = args.batch;
    o.max_tokens = args.max_tokens;
    o.seed = args.seed;
    o.optimizer.lr = args.lr;
    o.optimizer.weight_decay = args.weight_decay;
    o.warmup_ratio = args.warmup;
    o.max_grad_norm = (args.max_grad_norm > 0.0).then_some(args.max_grad_norm);
    o.loss = InfoNce {
        scale: args.scale,
        symmetric: args.symmetric,
        dims: args.matryoshka.clone(),
    };
    o.chunk_tokens = args.chunk_tokens;
    o
}

fn progress_bar(visible: bool, total: u64) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let template = "{bar:40} {pos}/{len} steps, {msg} [{elapsed_precise} < {eta_precise}]";
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}
