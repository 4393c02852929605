//! `jina-embed serve`: the process around the `jina-server` library: the flags (each also an
//! environment variable), the log subscriber, the compute threads, the tokio runtime, the
//! listener (SageMaker's `SAGEMAKER_BIND_TO_PORT` included) and the signals (SIGINT, SIGTERM).
//!
//! SageMaker: when `SAGEMAKER_BIND_TO_PORT` is set, its port wins over `--port` (the platform
//! chooses the port; a `--port` baked into an image must not break the contract), the host
//! defaults to 0.0.0.0 (SageMaker reaches the container from outside), and the shutdown grace is
//! at most [`SAGEMAKER_MAX_GRACE_SECS`] s, so the drain after SIGTERM ends within the 30 s
//! SageMaker waits before it kills the container.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use jina_engine::Precision;
use jina_server::{serve as serve_on, ServerConfig, ServerLimits};
use tokio::net::TcpListener;
use tracing::{info, warn};

/// The variable SageMaker sets to the port the container must listen on.
pub const SAGEMAKER_PORT_VAR: &str = "SAGEMAKER_BIND_TO_PORT";

/// Longest shutdown grace under SageMaker: it sends SIGKILL 30 s after SIGTERM; 5 s are left
/// for the scheduler to stop and the process to exit.
pub const SAGEMAKER_MAX_GRACE_SECS: u64 = 25;

/// Command-line flags of `jina-embed serve` (each also read from an environment variable).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Model folder (config.json, tokenizer.json and model.safetensors), or a Hugging Face hub
    /// id (owner/name[@revision]) found in the local Hugging Face cache (resolved by the CLI).
    #[arg(long, env = "JINA_MODEL", value_name = "DIR|HUB_ID", default_value = jina_engine::hub::DEFAULT_MODEL)]
    pub model: PathBuf,

    /// Address to listen on. 127.0.0.1 serves this machine only; 0.0.0.0 serves every network
    /// interface (set --api-key then). Default 127.0.0.1, or 0.0.0.0 under SageMaker
    /// (SAGEMAKER_BIND_TO_PORT set).
    #[arg(long, env = "JINA_HOST")]
    pub host: Option<String>,

    /// TCP port (0 picks a free one and logs it). Under SageMaker the variable
    /// SAGEMAKER_BIND_TO_PORT, when set, wins over it.
    #[arg(long, env = "JINA_PORT", default_value_t = 8080)]
    pub port: u16,

    /// Task of requests that name none: a task from config.json (text-matching,
    /// retrieval.query, retrieval.passage, separation, classification) or `none` for the base
    /// weights without adapter or prefix.
    #[arg(long, env = "JINA_DEFAULT_TASK", default_value = jina_engine::DEFAULT_TASK)]
    pub default_task: String,

    /// Serve a custom adapter folder (from `jina-embed train`, or a PEFT folder) as a task
    /// beside the built-in ones: NAME=DIR, or DIR to use the name in its jina_adapter.json.
    /// Repeatable. More can be loaded at run time with POST /v1/adapters.
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    pub adapters: Vec<jina_engine::AdapterSpec>,

    /// An API key clients must send as `Authorization: Bearer KEY` (repeatable; the variable
    /// holds a comma-separated list). Without any key every route is open. Prefer the variable
    /// or --api-key-file: command lines are visible to other users of the machine.
    #[arg(
        long = "api-key",
        env = "JINA_API_KEY",
        value_name = "KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// A file of API keys, one per line (blank lines and lines starting with # are skipped);
    /// added to --api-key.
    #[arg(long, env = "JINA_API_KEY_FILE", value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Token budget of one forward pass: sequences of many requests are packed together up to
    /// it. Larger batches use the cores better but hold more memory (about 40 KiB per token
    /// for the full model) and make small requests wait behind big ones.
    #[arg(long, env = "JINA_MAX_BATCH_TOKENS", default_value_t = ServerLimits::DEFAULT_MAX_BATCH_TOKENS)]
    pub max_batch_tokens: usize,

    /// Requests admitted at once (queued or running); one more gets 429 with Retry-After at
    /// once instead of waiting. A low value refuses clients sooner; a high value lets the
    /// queue, and the time requests wait in it, grow.
    #[arg(long, env = "JINA_MAX_CONCURRENT_REQUESTS", default_value_t = ServerLimits::DEFAULT_MAX_CONCURRENT_REQUESTS)]
    pub max_concurrent_requests: usize,

    /// Inputs in one request; more gets 413. Up to it, a client batch is split into forward
    /// passes internally.
    #[arg(long, env = "JINA_MAX_INPUTS_PER_REQUEST", default_value_t = ServerLimits::DEFAULT_MAX_INPUTS_PER_REQUEST)]
    pub max_inputs_per_request: usize,

    /// Largest request body in bytes; a larger one gets 413. The queue's memory is bounded by
    /// this times --max-concurrent-requests.
    #[arg(long, env = "JINA_PAYLOAD_LIMIT", value_name = "BYTES", default_value_t = ServerLimits::DEFAULT_PAYLOAD_LIMIT)]
    pub payload_limit: usize,

    /// Precision of the linear layers: `f32` gives the official numbers; `bf16` runs bf16 dot
    /// products where the CPU has them (AVX512_BF16, AMX; elsewhere bf16 weights with f32
    /// arithmetic, said in the log and by /v1/models) at a cosine of about 0.999 to f32; `int8`
    /// runs int8 products (AMX-INT8, AVX512_VNNI or AVX2) at a cosine of at least 0.999.
    #[arg(long, env = "JINA_PRECISION", default_value = "f32", value_parser = parse_precision)]
    pub precision: Precision,

    /// Highest instruction-set level the kernels may use (`scalar`, `avx2`, `avxvnni`, `avx512`,
    /// `avx512bf16`, `amx`; on aarch64 `neon`, `dotprod`, `i8mm`, `bf16`): a lower path on a
    /// bigger CPU. Default: all the CPU has. The variable JINA_MAX_ISA caps it too.
    #[arg(long, value_name = "ISA", value_parser = crate::parse_isa)]
    pub max_isa: Option<jina_engine::Isa>,
    /// Where the encoder runs: `cpu`, `gpu` (a GPU through wgpu, Vulkan, Metal or DX12; a
    /// software adapter such as Mesa's lavapipe counts; needs a build with `--features gpu`)
    /// or `auto` (a hardware GPU when there is one, else the CPU).
    #[arg(long, env = "JINA_DEVICE", value_enum, default_value = "auto")]
    pub device: jina_engine::DeviceChoice,

    /// Compute threads of the forward pass (default: one per core).
    #[arg(long, env = "JINA_THREADS")]
    pub threads: Option<usize>,

    /// Model name reported in responses and by /v1/models.
    #[arg(
        long,
        env = "JINA_SERVED_MODEL_NAME",
        default_value = "jina-embeddings-v3"
    )]
    pub served_model_name: String,

    /// Seconds a client may take to send a request body once admitted; slower gets 408.
    #[arg(
        long,
        env = "JINA_BODY_TIMEOUT",
        value_name = "SECONDS",
        default_value_t = 30
    )]
    pub body_timeout: u64,

    /// Seconds a shutdown (SIGINT, SIGTERM) waits for the requests in flight; those still
    /// running then are answered 503 (shutting_down), so clients can retry elsewhere. Under
    /// SageMaker (SAGEMAKER_BIND_TO_PORT set) at most 25, so that the drain (and the 2 s given
    /// to write those answers) ends within the 30 s SageMaker allows after SIGTERM.
    #[arg(long, env = "JINA_SHUTDOWN_GRACE", value_name = "SECONDS", default_value_t = ServerLimits::DEFAULT_SHUTDOWN_GRACE_SECS)]
    pub shutdown_grace: u64,

    /// An origin (`https://app.example`) whose browser pages may call the API (repeatable; the
    /// variable holds a comma-separated list; `*` allows any). Without it CORS is off: no
    /// `Access-Control-*` headers are sent.
    #[arg(
        long = "cors-allow-origin",
        env = "JINA_CORS_ALLOW_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub cors_allow_origins: Vec<String>,

    /// Log format: `text` for people, `json` for log collectors. The level comes from RUST_LOG
    /// (default info).
    #[arg(long, env = "JINA_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    s.parse::<Precision>().map_err(|e| e.to_string())
}

impl ServeArgs {
    /// Checks the flags and builds the server's configuration (reads the key file).
    pub fn to_config(&self) -> anyhow::Result<ServerConfig> {
        use jina_server::{cors, ApiKeys};
        let mut keys = self.api_keys.clone();
        if let Some(path) = &self.api_key_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the API key file {}", path.display()))?;
            let from_file = ApiKeys::parse_file(&text);
            if from_file.is_empty() {
                anyhow::bail!("the API key file {} holds no key", path.display());
            }
            keys.extend(from_file);
        }
        if matches!(self.threads, Some(0)) {
            anyhow::bail!("--threads must be at least 1");
        }
        let limits = ServerLimits {
            max_batch_tokens: self.max_batch_tokens,
            max_concurrent_requests: self.max_concurrent_requests,
            max_inputs_per_request: self.max_inputs_per_request,
            payload_limit: self.payload_limit,
            body_timeout: Duration::from_secs(self.body_timeout),
            shutdown_grace: Duration::from_secs(self.shutdown_grace),
            ..ServerLimits::default()
        };
        limits
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid limit: {e}"))?;
        Ok(ServerConfig {
            model_dir: self.model.clone(),
            default_task: self.default_task.clone(),
            adapters: self.adapters.clone(),
            served_model_name: self.served_model_name.clone(),
            api_keys: ApiKeys::new(keys),
            limits,
            precision: self.precision,
            max_isa: self.max_isa,
            device: self.device,
            cors_allow_origins: cors::CorsOrigins::new(&self.cors_allow_origins),
        })
    }
}

/// Where to listen and how long to drain, after SageMaker's variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Host to bind.
    pub host: String,
    /// Port to bind.
    pub port: u16,
    /// Shutdown grace.
    pub grace: Duration,
    /// Whether SAGEMAKER_BIND_TO_PORT decided the port.
    pub sagemaker: bool,
}

/// Resolves host, port and grace from the flags and the value of `SAGEMAKER_BIND_TO_PORT`
/// (`None` or empty: not under SageMaker).
pub fn listen(args: &ServeArgs, sagemaker_port: Option<&str>) -> anyhow::Result<Listen> {
    let grace = Duration::from_secs(args.shutdown_grace);
    match sagemaker_port.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(Listen {
            host: args.host.clone().unwrap_or_else(|| "127.0.0.1".into()),
            port: args.port,
            grace,
            sagemaker: false,
        }),
        Some(value) => {
            let port: u16 = value.parse().map_err(|_| {
                anyhow::anyhow!(
                    "{SAGEMAKER_PORT_VAR} is {value:?}: it must be a TCP port number (0 to 65535)"
                )
            })?;
            Ok(Listen {
                host: args.host.clone().unwrap_or_else(|| "0.0.0.0".into()),
                port,
                grace: grace.min(Duration::from_secs(SAGEMAKER_MAX_GRACE_SECS)),
                sagemaker: true,
            })
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => info!(signal = "SIGINT", "signal received"),
        () = terminate => info!(signal = "SIGTERM", "signal received"),
    }
}

/// Installs a `tracing` subscriber (text or JSON, level from `RUST_LOG`, default info) unless
/// the program already installed one.
fn init_tracing(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// `jina-embed serve`: sets up logging and the compute threads, builds the tokio runtime,
/// serves until SIGINT or SIGTERM, and returns `Ok` after a graceful stop.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(&args.log_format);
    let mut config = args.to_config()?;
    let sagemaker_port = std::env::var(SAGEMAKER_PORT_VAR).ok();
    let listen = listen(&args, sagemaker_port.as_deref())?;
    if listen.sagemaker {
        if listen.grace < config.limits.shutdown_grace {
            warn!(
                asked_seconds = config.limits.shutdown_grace.as_secs(),
                seconds = listen.grace.as_secs(),
                "under SageMaker the shutdown grace is at most {SAGEMAKER_MAX_GRACE_SECS} s"
            );
        }
        info!(port = listen.port, host = %listen.host, "SageMaker: port from {SAGEMAKER_PORT_VAR}");
    }
    config.limits.shutdown_grace = listen.grace;
    if let Some(threads) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("jina-compute-{i}"))
            .build_global()
            .context("cannot size the compute thread pool (--threads)")?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("jina-http")
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let listener = TcpListener::bind((listen.host.as_str(), listen.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", listen.host, listen.port))?;
        serve_on(listener, config, shutdown_signal()).await
    });
    // Connections still open after the grace period are dropped here.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn args(extra: &[&str]) -> ServeArgs {
        let argv = ["serve", "--model", "m"].iter().chain(extra).copied();
        Cli::try_parse_from(argv).expect("parse").serve
    }

    #[test]
    fn keys_come_from_flags_environment_and_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("keys");
        std::fs::write(&file, "# team keys\nfrom-file\n\n").expect("write key file");

        let cli = Cli::try_parse_from([
            "serve",
            "--model",
            "m",
            "--api-key",
            "a",
            "--api-key",
            "b,c",
            "--api-key-file",
            file.to_str().expect("utf-8 path"),
            "--max-batch-tokens",
            "1024",
            "--port",
            "0",
        ])
        .expect("parse");
        let config = cli.serve.to_config().expect("config");
        assert_eq!(config.api_keys.len(), 4);
        for key in ["a", "b", "c", "from-file"] {
            assert!(config.api_keys.accepts(key.as_bytes()), "{key}");
        }
        assert_eq!(config.limits.max_batch_tokens, 1024);
        assert_eq!(config.default_task, "text-matching");
        assert!(
            !format!("{config:?}").contains("from-file"),
            "Debug must not show keys"
        );

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "# nothing\n").expect("write");
        let cli = Cli::try_parse_from([
            "serve",
            "--model",
            "m",
            "--api-key-file",
            empty.to_str().expect("utf-8"),
        ])
        .expect("parse");
        assert!(cli
            .serve
            .to_config()
            .unwrap_err()
            .to_string()
            .contains("holds no key"));
        let cli = Cli::try_parse_from(["serve", "--model", "m", "--max-inputs-per-request", "0"])
            .expect("parse");
        assert!(cli
            .serve
            .to_config()
            .unwrap_err()
            .to_string()
            .contains("max_inputs_per_request must be at least 1"));
    }

    #[test]
    fn sagemaker_port_wins_over_port_and_caps_the_grace() {
        let plain = listen(&args(&["--port", "9000"]), None).expect("listen");
        assert_eq!(
            plain,
            Listen {
                host: "127.0.0.1".into(),
                port: 9000,
                grace: Duration::from_secs(ServerLimits::DEFAULT_SHUTDOWN_GRACE_SECS),
                sagemaker: false
            }
        );
        assert!(!listen(&args(&[]), Some("  ")).expect("empty").sagemaker);
        let under = listen(&args(&["--port", "9000"]), Some("8080")).expect("listen");
        assert_eq!(
            under,
            Listen {
                host: "0.0.0.0".into(),
                port: 8080,
                grace: Duration::from_secs(SAGEMAKER_MAX_GRACE_SECS),
                sagemaker: true
            }
        );
        let short = listen(
            &args(&["--host", "127.0.0.1", "--shutdown-grace", "5"]),
            Some("8081"),
        )
        .expect("listen");
        assert_eq!(
            (short.host.as_str(), short.port, short.grace),
            ("127.0.0.1", 8081, Duration::from_secs(5))
        );
        let bad = listen(&args(&[]), Some("99999")).unwrap_err().to_string();
        assert!(bad.contains("SAGEMAKER_BIND_TO_PORT is \"99999\""), "{bad}");
    }
}
