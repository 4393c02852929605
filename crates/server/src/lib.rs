/*!
`jina-embed serve`: an HTTP server for jina-embeddings-v3 that speaks both Jina's and OpenAI's
embeddings API, with dynamic batching, limits, metrics and API keys.

# How a request flows

```text
POST /v1/embeddings
  → routes::track        request id, span, one info log line, metrics     (every route)
  → auth::require_key    Bearer key, constant time                         (all but /health, /metrics)
  → routes::embeddings   admission (semaphore, 429 when full) → body (413 over the limit)
                         → api::EmbeddingsRequest (422 naming the field) → jina_engine::EmbedRequest
                         → Model::plan on the blocking pool (task, dimensions, token limits)
  → scheduler            one OS thread: sequences of many requests packed by max_batch_tokens,
                         tasks mixed, cancelled requests skipped, Model::run
  → routes::embeddings   pooling::finish + output::encode + JSON on the blocking pool
```

The async runtime never runs the model: tokenising, pooling and JSON encoding run on tokio's
blocking pool and the forward pass on the scheduler thread (which uses the rayon pool sized by
`--threads`).

# Pieces
- [`api`]: the request and response types of both dialects (and the OpenAPI schema).
- [`errors`]: one error enum → status code + `{"detail"}` (Jina) or `{"error": {…}}` (OpenAI);
  the module doc states how the dialect is recognised.
- [`scheduler`]: the batching actor.
- [`limits`]: every limit in [`ServerLimits`], with its default.
- [`metrics`]: Prometheus text.
- [`auth`]: API keys.
- [`routes`]: the axum router.

# Example

```no_run
# async fn example() -> anyhow::Result<()> {
use jina_server::{serve, ServerConfig};

let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
let config = ServerConfig::new("jina-embeddings-v3".into());
serve(listener, config, async { let _ = tokio::signal::ctrl_c().await; }).await?;
# Ok(()) }
```

# Lifecycle
The server listens at once and answers `/health` with 503 while the model loads and warms up,
then 200. On the shutdown signal (SIGINT or SIGTERM in [`run`]) it stops accepting, lets the
requests in flight finish for up to `shutdown_grace`, stops the scheduler and returns.
*/
#![deny(missing_docs)]
// No panic reachable from a request: outside tests, `unwrap`, `expect` and `panic!` are errors.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod api;
pub mod auth;
pub mod cors;
pub mod errors;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod scheduler;

use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use jina_engine::{EmbedRequest, LoadOptions, Model, Precision, Sequence};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

pub use auth::ApiKeys;
pub use errors::{ApiError, Dialect};
pub use limits::ServerLimits;

use metrics::{Gauges, Metrics};
use scheduler::Scheduler;

/// Command-line flags of `jina-embed serve` (each also read from an environment variable).
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Model folder (config.json, tokenizer.json and model.safetensors), or a Hugging Face hub
    /// id (owner/name[@revision]) found in the local Hugging Face cache (resolved by the CLI).
    #[arg(long, env = "JINA_MODEL", value_name = "DIR|HUB_ID", default_value = jina_engine::hub::DEFAULT_MODEL)]
    pub model: PathBuf,

    /// Address to listen on. 127.0.0.1 serves this machine only; 0.0.0.0 serves every network
    /// interface (set --api-key then).
    #[arg(long, env = "JINA_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// TCP port (0 picks a free one and logs it).
    #[arg(long, env = "JINA_PORT", default_value_t = 8080)]
    pub port: u16,

    /// Task of requests that name none: a task from config.json (text-matching,
    /// retrieval.query, retrieval.passage, separation, classification) or `none` for the base
    /// weights without adapter or prefix.
    #[arg(long, env = "JINA_DEFAULT_TASK", default_value = jina_engine::DEFAULT_TASK)]
    pub default_task: String,

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

    /// Highest instruction-set level the kernels may use (`scalar`, `avx2`, `avx512`,
    /// `avx512bf16`, `amx`; on aarch64 `neon`, `dotprod`, `i8mm`, `bf16`): a lower path on a
    /// bigger CPU. Default: all the CPU has. The variable JINA_MAX_ISA caps it too.
    #[arg(long, value_name = "ISA", value_parser = parse_isa)]
    pub max_isa: Option<jina_engine::Isa>,

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

    /// Seconds a shutdown (SIGINT, SIGTERM) waits for the requests in flight before it drops
    /// them.
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

fn parse_isa(s: &str) -> Result<jina_engine::Isa, String> {
    s.parse::<jina_engine::Isa>().map_err(|e| e.to_string())
}

impl ServeArgs {
    /// Checks the flags and builds the server's configuration (reads the key file).
    pub fn to_config(&self) -> anyhow::Result<ServerConfig> {
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
            served_model_name: self.served_model_name.clone(),
            api_keys: ApiKeys::new(keys),
            limits,
            precision: self.precision,
            max_isa: self.max_isa,
            cors_allow_origins: cors::CorsOrigins::new(&self.cors_allow_origins),
        })
    }
}

/// Everything [`serve`] needs, checked.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The model folder.
    pub model_dir: PathBuf,
    /// Task of requests that name none (`none` = base weights).
    pub default_task: String,
    /// Model name in responses.
    pub served_model_name: String,
    /// API keys (empty: open).
    pub api_keys: ApiKeys,
    /// Limits.
    pub limits: ServerLimits,
    /// Precision of the linear layers asked for (f32: the official numbers); what runs is the
    /// model's [`jina_engine::KernelPlan`].
    pub precision: Precision,
    /// Highest instruction-set level the kernels may use (`None`: all the CPU has).
    pub max_isa: Option<jina_engine::Isa>,
    /// Origins allowed by CORS (empty: CORS off).
    pub cors_allow_origins: cors::CorsOrigins,
}

impl ServerConfig {
    /// The defaults for a model folder: default task `text-matching`, name
    /// `jina-embeddings-v3`, no keys, default limits.
    pub fn new(model_dir: PathBuf) -> Self {
        ServerConfig {
            model_dir,
            default_task: jina_engine::DEFAULT_TASK.to_string(),
            served_model_name: "jina-embeddings-v3".to_string(),
            api_keys: ApiKeys::default(),
            limits: ServerLimits::default(),
            precision: Precision::F32,
            max_isa: None,
            cors_allow_origins: cors::CorsOrigins::default(),
        }
    }
}

/// The loaded model and its scheduler.
pub(crate) struct Engine {
    pub(crate) model: Arc<Model>,
    pub(crate) scheduler: Scheduler,
}

/// State shared by every handler.
pub struct AppState {
    pub(crate) config: ServerConfig,
    pub(crate) keys: ApiKeys,
    engine: OnceLock<Engine>,
    pub(crate) metrics: Arc<Metrics>,
    admission: Arc<Semaphore>,
    shutting_down: AtomicBool,
    request_prefix: u32,
    next_request: AtomicU64,
    pub(crate) created: u64,
}

impl AppState {
    fn new(config: ServerConfig) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        AppState {
            keys: config.api_keys.clone(),
            admission: Arc::new(Semaphore::new(config.limits.max_concurrent_requests)),
            config,
            engine: OnceLock::new(),
            metrics: Arc::new(Metrics::default()),
            shutting_down: AtomicBool::new(false),
            request_prefix: (now.as_nanos() as u32) ^ std::process::id().rotate_left(16),
            next_request: AtomicU64::new(1),
            created: now.as_secs(),
        }
    }

    /// The model, or 503 while it loads.
    pub(crate) fn engine(&self) -> Result<&Engine, ApiError> {
        self.engine.get().ok_or(ApiError::NotReady {
            retry_after: self.config.limits.retry_after_secs,
        })
    }

    /// Whether the model is loaded and warmed up.
    pub fn is_ready(&self) -> bool {
        self.engine.get().is_some()
    }

    /// Whether a shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// A slot for one request, or 429 when `max_concurrent_requests` are in flight.
    pub(crate) fn admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Overloaded {
                limit: self.config.limits.max_concurrent_requests,
                retry_after: self.config.limits.retry_after_secs,
            })
    }

    /// A new request id.
    pub(crate) fn request_id(&self) -> String {
        format!(
            "{:08x}-{:06x}",
            self.request_prefix,
            self.next_request.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The gauges of `/metrics`.
    pub(crate) fn gauges(&self) -> Gauges {
        let max = self.config.limits.max_concurrent_requests;
        Gauges {
            in_flight: max.saturating_sub(self.admission.available_permits()),
            max_concurrent: max,
            ready: self.is_ready(),
        }
    }
}

/// Loads the model, applies the default task, starts the scheduler and warms up with one
/// forward pass; then the server is ready.
async fn load(state: Arc<AppState>) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let config = state.config.clone();
    let metrics = state.metrics.clone();
    let engine = tokio::task::spawn_blocking(move || -> anyhow::Result<Engine> {
        let options = LoadOptions {
            precision: config.precision,
            max_isa: config.max_isa,
        };
        let mut model = Model::load_with(&config.model_dir, options).with_context(|| {
            format!("cannot load the model from {}", config.model_dir.display())
        })?;
        model
            .set_default_task(&config.default_task)
            .context("invalid --default-task")?;
        let model = Arc::new(model);
        // Warm up: one short forward pass (allocations, page faults of the weights).
        let plan = model.plan(&EmbedRequest::new(vec!["warm up".to_string()]))?;
        let seqs: Vec<&Sequence> = plan.sequences.iter().collect();
        model.run(&seqs);
        let scheduler = Scheduler::start(model.clone(), config.limits.max_batch_tokens, metrics)
            .context("cannot start the scheduler thread")?;
        Ok(Engine { model, scheduler })
    })
    .await
    .context("the model loader panicked")??;
    info!(
        model = %state.config.model_dir.display(),
        weights = engine.model.weights_dtype(),
        precision = engine.model.precision().name(),
        kernels = %engine.model.kernel_plan().summary(),
        parameters = engine.model.parameter_count(),
        hidden_size = engine.model.config().hidden_size,
        default_task = engine.model.default_task(),
        seconds = started.elapsed().as_secs_f64(),
        "model loaded and warmed up; ready"
    );
    if state.engine.set(engine).is_err() {
        anyhow::bail!("the model was loaded twice");
    }
    Ok(())
}

/// Serves on `listener` until `shutdown` resolves, then stops accepting, lets the requests in
/// flight finish for up to `shutdown_grace`, and returns. The model loads in the background
/// (`/health` is 503 until it is ready); a model that fails to load is an error.
pub async fn serve<F>(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: F,
) -> anyhow::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    config
        .limits
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid limit: {e}"))?;
    let grace = config.limits.shutdown_grace;
    let state = Arc::new(AppState::new(config));
    let app = routes::router(state.clone());
    info!(
        address = %listener.local_addr()?,
        api_keys = state.keys.len(),
        max_batch_tokens = state.config.limits.max_batch_tokens,
        max_concurrent_requests = state.config.limits.max_concurrent_requests,
        max_inputs_per_request = state.config.limits.max_inputs_per_request,
        payload_limit = state.config.limits.payload_limit,
        "listening; loading the model"
    );
    if state.keys.is_empty() {
        warn!("no API key configured: every route is open");
    }

    let (signalled_tx, signalled_rx) = oneshot::channel::<()>();
    let signal_state = state.clone();
    let graceful = async move {
        shutdown.await;
        signal_state.shutting_down.store(true, Ordering::Relaxed);
        info!(
            grace_seconds = grace.as_secs_f64(),
            "shutting down: no new connections; finishing requests in flight"
        );
        let _ = signalled_tx.send(());
    };
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(graceful)
        .into_future();
    let deadline = async move {
        match signalled_rx.await {
            Ok(()) => tokio::time::sleep(grace).await,
            Err(_) => std::future::pending().await,
        }
    };
    let loader = load(state.clone());
    tokio::pin!(server, deadline, loader);

    let mut loading = true;
    let drained = loop {
        tokio::select! {
            result = &mut server => {
                result.context("the HTTP server failed")?;
                break true;
            }
            result = &mut loader, if loading => {
                loading = false;
                result?;
            }
            () = &mut deadline => {
                warn!(grace_seconds = grace.as_secs_f64(), "grace period over; dropping the requests still in flight");
                break false;
            }
        }
    };
    if let Some(engine) = state.engine.get() {
        if drained {
            // Every request has been answered, so the queue is empty: the thread exits at once.
            let engine_state = state.clone();
            let joined = tokio::task::spawn_blocking(move || {
                if let Some(engine) = engine_state.engine.get() {
                    engine.scheduler.join();
                }
            });
            if tokio::time::timeout(grace.max(Duration::from_secs(1)), joined)
                .await
                .is_err()
            {
                warn!("the scheduler did not stop in time");
            }
        } else {
            engine.scheduler.close();
        }
    }
    info!("stopped");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
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
pub fn init_tracing(format: &str) {
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
    let config = args.to_config()?;
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
        let listener = TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
        serve(listener, config, shutdown_signal()).await
    });
    // Connections still open after the grace period are dropped here.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}
