/*!
The HTTP server of jina-embeddings-v3 as a library: Jina's and OpenAI's embeddings API (and
SageMaker's container contract), with dynamic batching, limits, metrics and API keys.

The process around it (command-line flags, the tokio runtime, the log subscriber, signals,
SageMaker's port variable) belongs to the `jina-embed serve` command (`crates/cli/src/serve.rs`).
This crate takes a listener, a [`ServerConfig`] and a shutdown future.

# Seams
- [`serve`]: loads the engine model from [`ServerConfig::model_dir`] in the background and
  serves on a listener until the shutdown future resolves, then drains.
- [`serve_with`]: the same with any loader of a [`BatchRunner`].
- [`AppState::new`] + [`AppState::start`] + [`routes::router`]: the router in-process, for
  `tower::ServiceExt::oneshot` calls without a socket (how most HTTP tests run, against a fake
  runner).
- [`BatchRunner`] ([`runner`]): what the scheduler and the routes need from a model: plan a
  request, run a batch, tokenise, the model's facts. [`runner::EngineRunner`] is the real one.

# How a request flows

```text
POST /v1/embeddings
  → routes::track        request id, span, one info log line, metrics     (every route)
  → auth::require_key    Bearer key, constant time                         (all but /health, /ping, /metrics)
  → routes::embeddings   admission (semaphore, 429 when full) → body (413 over the limit)
                         → api::EmbeddingsRequest (422 naming the field) → jina_engine::EmbedRequest
                         → BatchRunner::plan on the blocking pool (task, dimensions, token limits)
  → scheduler            one OS thread: sequences of many requests packed by max_batch_tokens,
                         tasks mixed, cancelled requests skipped, BatchRunner::run
  → routes::embeddings   pooling::finish + output::encode + JSON on the blocking pool
```

`POST /invocations` (SageMaker) takes the same path with either body ([`sagemaker`]).

The async runtime never runs the model: tokenising, pooling and JSON encoding run on tokio's
blocking pool and the forward pass on the scheduler thread (which uses the rayon pool the
caller sized).

# Pieces
- [`api`]: the request and response types of both dialects (and the OpenAPI schema).
- [`errors`]: one error enum → status code + `{"detail"}` (Jina) or `{"error": {…}}` (OpenAI);
  the module doc states how the dialect is recognised.
- [`runner`]: the [`BatchRunner`] seam and the engine's implementation.
- [`scheduler`]: the batching actor.
- [`sagemaker`]: `/ping` and `/invocations`.
- [`limits`]: every limit in [`ServerLimits`], with its default.
- [`metrics`]: Prometheus text.
- [`auth`]: API keys.
- [`cors`]: CORS for listed origins.
- [`openapi`]: the document as the server enforces it.
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
The server listens at once and answers `/health` (and `/ping`) with 503 while the model loads
and warms up, then 200. When the shutdown future resolves it stops accepting, lets the requests
in flight finish for up to `shutdown_grace`, answers 503 `shutting_down` to any still in flight
then, stops the scheduler and returns.
*/
#![deny(missing_docs)]
// No panic reachable from a request: outside tests, `unwrap`, `expect` and `panic!` are errors.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod adapters;
pub mod api;
pub mod auth;
pub mod cors;
pub mod errors;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod runner;
pub mod sagemaker;
pub mod scheduler;

use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use jina_engine::{EmbedRequest, LoadOptions, Model, Precision, Sequence};
use routes::router;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

pub use auth::ApiKeys;
pub use errors::{ApiError, Dialect};
pub use limits::ServerLimits;
pub use runner::{BatchRunner, ModelInfo};

use metrics::{Gauges, Metrics};
use scheduler::Scheduler;

/// How long the 503 answers of the requests still in flight at the end of the grace period
/// have to be written before their connections are dropped.
const FLUSH_AFTER_GRACE: Duration = Duration::from_secs(2);

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
    /// Where the encoder runs (what runs is the model's [`jina_engine::DevicePlan`]).
    pub device: jina_engine::DeviceChoice,
    /// Origins allowed by CORS (empty: CORS off).
    pub cors_allow_origins: cors::CorsOrigins,
    /// Custom adapter folders served from the start (`--adapter`).
    pub adapters: Vec<jina_engine::AdapterSpec>,
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
            device: jina_engine::DeviceChoice::Cpu,
            cors_allow_origins: cors::CorsOrigins::default(),
            adapters: Vec::new(),
        }
    }
}

/// The loaded model and its scheduler.
pub(crate) struct Engine {
    pub(crate) runner: Arc<dyn BatchRunner>,
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
    /// Set when the shutdown grace is over: the requests still in flight answer 503.
    grace_over: watch::Sender<bool>,
    request_prefix: u32,
    next_request: AtomicU64,
    pub(crate) created: u64,
}

impl AppState {
    /// The state of a server whose model is not there yet: every model route answers 503 until
    /// [`AppState::start`].
    pub fn new(config: ServerConfig) -> Arc<Self> {
        Arc::new(Self::build(config))
    }

    fn build(config: ServerConfig) -> Self {
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
            grace_over: watch::Sender::new(false),
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

    /// Starts the scheduler over `runner`; from then on the server is ready. An error when the
    /// scheduler thread cannot start or a runner was already started.
    pub fn start(&self, runner: Arc<dyn BatchRunner>) -> anyhow::Result<()> {
        // The batching budget: the configured one, within what one pass on the device holds.
        let budget = match runner.info().device_max_batch_tokens {
            Some(device) if device < self.config.limits.max_batch_tokens => {
                info!(
                    configured = self.config.limits.max_batch_tokens,
                    device, "max_batch_tokens lowered to what one pass on the device holds"
                );
                device
            }
            _ => self.config.limits.max_batch_tokens,
        };
        let scheduler = Scheduler::start(runner.clone(), budget, self.metrics.clone())
            .context("cannot start the scheduler thread")?;
        if self.engine.set(Engine { runner, scheduler }).is_err() {
            anyhow::bail!("the model was loaded twice");
        }
        Ok(())
    }

    /// Marks the server as stopping: `/health` and `/ping` answer 503 (what [`serve`] does when
    /// its shutdown future resolves).
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Ends the shutdown grace: every request still in flight answers 503 `shutting_down` at
    /// once (what [`serve`] does when the grace period is over), so no client is left with a
    /// closed connection and no answer.
    pub fn end_grace(&self) {
        self.grace_over.send_replace(true);
    }

    /// Resolves when [`AppState::end_grace`] was called.
    pub(crate) async fn grace_over(&self) {
        let mut over = self.grace_over.subscribe();
        // The sender lives in `self`, so `wait_for` cannot see it closed.
        let _ = over.wait_for(|over| *over).await;
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
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

/// Loads the engine model of `config` (folder, precision, ISA cap, default task) and warms it
/// up with one short forward pass (allocations, page faults of the weights): the loader of
/// [`serve`]. Blocking; [`serve`] runs it on the blocking pool.
pub fn load_engine(config: &ServerConfig) -> anyhow::Result<Arc<dyn BatchRunner>> {
    let started = std::time::Instant::now();
    let options = LoadOptions {
        precision: config.precision,
        max_isa: config.max_isa,
        device: config.device,
    };
    let mut model = Model::load_with(&config.model_dir, options)
        .with_context(|| format!("cannot load the model from {}", config.model_dir.display()))?;
    for spec in &config.adapters {
        let adapter = model
            .load_adapter(&spec.dir, spec.name.as_deref())
            .with_context(|| format!("cannot load --adapter {}", spec.dir.display()))?;
        info!(task = adapter.name(), dir = %spec.dir.display(), "adapter loaded");
    }
    model
        .set_default_task(&config.default_task)
        .context("invalid --default-task")?;
    let plan = model.plan(&EmbedRequest::new(vec!["warm up".to_string()]))?;
    let seqs: Vec<&Sequence> = plan.sequences.iter().collect();
    model
        .run(&seqs)
        .context("the warm-up forward pass failed")?;
    info!(
        model = %config.model_dir.display(),
        weights = model.weights_dtype(),
        precision = model.precision().name(),
        kernels = %model.kernel_plan().summary(),
        device = %model.device_plan().summary(),
        parameters = model.parameter_count(),
        hidden_size = model.config().hidden_size,
        default_task = model.default_task(),
        seconds = started.elapsed().as_secs_f64(),
        "model loaded and warmed up"
    );
    Ok(Arc::new(runner::EngineRunner::new(model)))
}

/// Runs `loader` on the blocking pool and starts the scheduler over what it returns.
async fn load<L>(state: Arc<AppState>, loader: L) -> anyhow::Result<()>
where
    L: FnOnce(&ServerConfig) -> anyhow::Result<Arc<dyn BatchRunner>> + Send + 'static,
{
    let config = state.config.clone();
    let runner = tokio::task::spawn_blocking(move || loader(&config))
        .await
        .context("the model loader panicked")??;
    state.start(runner)?;
    info!("ready");
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
    serve_with(listener, config, load_engine, shutdown).await
}

/// [`serve`] with any loader of a [`BatchRunner`] (run on the blocking pool while the server
/// already answers `/health` with 503).
pub async fn serve_with<L, F>(
    listener: TcpListener,
    config: ServerConfig,
    loader: L,
    shutdown: F,
) -> anyhow::Result<()>
where
    L: FnOnce(&ServerConfig) -> anyhow::Result<Arc<dyn BatchRunner>> + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    config
        .limits
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid limit: {e}"))?;
    let grace = config.limits.shutdown_grace;
    let state = AppState::new(config);
    let app = router(state.clone());
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
        signal_state.begin_shutdown();
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
    let loader = load(state.clone(), loader);
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
            () = &mut deadline => break false,
        }
    };
    if !drained {
        // Requests still in flight answer 503 rather than losing their connection: a client
        // (or its load balancer) retries a 503 elsewhere, while a dropped connection is an
        // error it cannot tell from a crash. The answers get a moment to be written.
        warn!(
            grace_seconds = grace.as_secs_f64(),
            "grace period over; answering 503 to the requests still in flight"
        );
        state.end_grace();
        if tokio::time::timeout(FLUSH_AFTER_GRACE, &mut server)
            .await
            .is_err()
        {
            warn!("connections still open after the 503 answers; dropping them");
        }
    }
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
            // Its queue holds only requests already answered 503: it skips them and exits
            // after the batch it runs (the process may end first).
            engine.scheduler.close();
        }
    }
    info!("stopped");
    Ok(())
}
