//! `jina-embed`: the command-line tool. Each subcommand is a thin layer over the `jina-engine`
//! and `jina-server` libraries; errors are printed once, with their causes, and exit with 2.

mod bench;
mod download;
mod embed;
mod eval;
mod fixture;
#[cfg(feature = "download")]
mod hub_download;
mod info;
mod logging;
mod pairs;
mod resolve;
mod serve;
mod train;

use clap::{Parser, Subcommand};

/// Run the jina-embeddings-v3 text-embedding model locally: embed files, serve an API,
/// generate test checkpoints.
#[derive(Parser)]
#[command(name = "jina-embed", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Never download: a hub id given to --model must already be in the Hugging Face cache
    /// (HF_HUB_OFFLINE=1 does the same).
    #[arg(long, global = true, env = "JINA_OFFLINE", value_parser = clap::builder::BoolishValueParser::new())]
    offline: bool,
    /// More log lines on stderr: -v adds info (the kernels chosen at load), -vv debug. The
    /// default shows warnings, such as a precision the CPU cannot run. RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Errors only on stderr.
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Write a checkpoint folder whose weights follow the fixtures formula (no download needed).
    ///
    /// Example: jina-embed fixture --out /tmp/jina-small --variant small
    Fixture(fixture::FixtureArgs),
    /// Embed a file (text lines, JSONL, CSV/TSV, Parquet) into JSONL, .npy or Parquet; resumable.
    ///
    /// Example: jina-embed embed --model /tmp/jina-small --task retrieval.passage --input docs.jsonl --id-field id --output vectors.parquet
    Embed(embed::EmbedArgs),
    /// Fetch a hub model into the Hugging Face cache, with a progress bar, resuming partial files
    /// and checking sha256s (or with `hf`/`huggingface-cli`: --hf-cli).
    ///
    /// Example: jina-embed download --model jinaai/jina-embeddings-v3
    Download(download::DownloadArgs),
    /// Show a model's config, tasks and prefixes, dimensions, dtype, parameters and file hashes.
    ///
    /// Example: jina-embed info --model jinaai/jina-embeddings-v3
    Info(info::InfoArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    ///
    /// Example: jina-embed completions bash > ~/.local/share/bash-completion/completions/jina-embed
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Measure tokens per second of the forward pass on inputs of exact lengths.
    ///
    /// Example: jina-embed bench --model /tmp/jina-full --shape 8x128,1x8192 --precision bf16
    Bench(bench::BenchArgs),
    /// Train a new task adapter on your (query, positive, negatives) pairs, on this CPU; serve
    /// it with `serve --adapter NAME=OUT`.
    ///
    /// Example: jina-embed train --model /tmp/jina-small --data pairs.jsonl --from retrieval.query --name legal.query --out adapters/legal.query --eval held-out.jsonl
    Train(train::TrainArgs),
    /// Compare tasks on a pairs file: recall@1/@10, MRR@10, nDCG@10 (a custom task is shown
    /// beside every built-in one).
    ///
    /// Example: jina-embed eval --model /tmp/jina-small --data held-out.jsonl --adapter adapters/legal.query --task legal.query
    Eval(eval::EvalArgs),
    /// Serve the Jina- and OpenAI-compatible embeddings API (POST /v1/embeddings).
    ///
    /// Example: jina-embed serve --model /tmp/jina-small --port 8080 --api-key "$KEY"
    Serve(serve::ServeArgs),
}

fn main() {
    let cli = Cli::parse();
    resolve::set_offline(cli.offline);
    // `serve` installs its own subscriber (text or JSON, --log-format).
    let times = match &cli.command {
        Command::Serve(_) => None,
        command => {
            let verbosity = if cli.quiet {
                -1
            } else {
                cli.verbose.min(8) as i8
            };
            logging::init(
                verbosity,
                matches!(command, Command::Bench(args) if args.profile),
            )
        }
    };
    let result = match cli.command {
        Command::Fixture(args) => fixture::run(args),
        Command::Embed(args) => embed::run(args),
        Command::Info(args) => info::run(args),
        Command::Download(args) => download::run(args),
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "jina-embed",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Bench(args) => bench::run(args, times),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Serve(args) => serve(args),
    };
    if let Err(err) = result {
        if is_broken_pipe(&err) {
            std::process::exit(0);
        }
        eprintln!("error: {err:#}");
        std::process::exit(2);
    }
}

/// `--model` of `serve` may be a hub id (downloaded if missing): resolve it to its folder.
fn serve(mut args: serve::ServeArgs) -> anyhow::Result<()> {
    args.model = resolve::resolve(&args.model.to_string_lossy())?.dir;
    serve::run(args)
}

/// A closed stdout (`jina-embed embed … | head`) is not a failure.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Parses `--max-isa`.
pub(crate) fn parse_isa(s: &str) -> Result<jina_engine::Isa, String> {
    s.parse::<jina_engine::Isa>().map_err(|e| e.to_string())
}

/// Sizes the rayon pool that every kernel runs on; 0 keeps rayon's default (one per core).
pub(crate) fn init_threads(threads: usize) -> anyhow::Result<()> {
    if threads > 0 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()?;
    }
    Ok(())
}
