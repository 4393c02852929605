//! The axum router: handlers, the request-tracking middleware and the OpenAPI document.
//!
//! | route | auth | what |
//! |---|---|---|
//! | `POST /v1/embeddings`, `POST /embeddings` | key | embeddings, Jina or OpenAI dialect |
//! | `POST /tokenize` | key | token ids and pieces of inputs, prefix included |
//! | `GET /v1/models`, `GET /models` | key | the served model |
//! | `GET /openapi.json` | key | this API, generated from the [`crate::api`] types |
//! | `GET /health` | open | 200 once loaded and warmed up, 503 before and while stopping |
//! | `GET /ping` | open | SageMaker's health check, as `/health` ([`crate::sagemaker`]) |
//! | `POST /invocations` | key | SageMaker's inference route: our body or Jina's SageMaker body |
//! | `GET /metrics` | open | Prometheus text |

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use jina_engine::pooling::{self, Finish};
use jina_engine::{output, EmbedRequest, EmbeddingType};
use tracing::{debug, error, info, Instrument};
use utoipa::OpenApi;

use crate::api::{
    decode_request, parse_object, typed, DeviceCard, EmbeddingItem, EmbeddingTypes, EmbeddingValue,
    EmbeddingsResponse, EncodingFormat, Health, Kernels, LateChunkingField, ModelCard, ModelList,
    TokenizeRequest, TokenizeResponse, TokenizedItem, Usage,
};
use crate::errors::{ApiError, Dialect, ErrorBody, ErrorNote, Failure, SharedDialect};
use crate::{auth, AppState, ServerLimits};

/// Builds the router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/embeddings", post(embeddings))
        .route("/tokenize", post(tokenize))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/openapi.json", get(openapi))
        .route("/invocations", post(crate::sagemaker::invocations))
        .route(
            "/v1/adapters",
            get(crate::adapters::list).post(crate::adapters::load),
        )
        .route("/v1/adapters/{name}", delete(crate::adapters::unload))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    Router::new()
        .route("/health", get(health))
        .route("/ping", get(crate::sagemaker::ping))
        .route("/metrics", get(metrics))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            answer_by_grace_end,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            crate::cors::cors,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// What a handler tells the request log line and the metrics about its request.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestInfo {
    pub(crate) task: Option<String>,
    pub(crate) inputs: usize,
    pub(crate) tokens: usize,
}

/// The route label of a path: one of the served routes, or `other`.
fn route_label(path: &str) -> &'static str {
    const ROUTES: [&str; 10] = [
        "/v1/embeddings",
        "/embeddings",
        "/tokenize",
        "/v1/models",
        "/models",
        "/openapi.json",
        "/health",
        "/metrics",
        "/ping",
        "/invocations",
    ];
    ROUTES.into_iter().find(|r| *r == path).unwrap_or("other")
}

/// Logs a request whose client went away before the answer (its future was dropped).
struct Abandoned {
    state: Arc<AppState>,
    route: &'static str,
    started: Instant,
    span: tracing::Span,
    finished: bool,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // 499: nginx's "client closed request".
        self.state.metrics.count_request(self.route, 499, "-");
        let latency_ms = (self.started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
        self.span.in_scope(|| {
            info!(
                status = 499u16,
                latency_ms, "client went away before the response"
            )
        });
    }
}

/// Middleware on every route: a request id (the client's `X-Request-Id` when it is sensible,
/// else a new one, echoed in the response), a span, one info line per request (successful
/// `/health` and `/metrics` probes at debug level), and the request metrics.
async fn track(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(String::from)
        .unwrap_or_else(|| state.request_id());
    let route = route_label(request.uri().path());
    let method = request.method().clone();
    let span =
        tracing::info_span!("request", id = %id, method = %method, route = %request.uri().path());
    let mut guard = Abandoned {
        state: state.clone(),
        route,
        started: Instant::now(),
        span: span.clone(),
        finished: false,
    };
    let mut response = next.run(request).instrument(span.clone()).await;
    guard.finished = true;

    let status = response.status();
    let elapsed = guard.started.elapsed().as_secs_f64();
    let info = response
        .extensions()
        .get::<RequestInfo>()
        .cloned()
        .unwrap_or_default();
    let task = info.task.as_deref().unwrap_or("-");
    let note = response
        .extensions()
        .get::<ErrorNote>()
        .map(|n| n.0.as_str())
        .unwrap_or("");
    state.metrics.count_request(route, status.as_u16(), task);
    if route != "/metrics" && route != "/health" {
        state.metrics.request_duration.observe(elapsed);
    }
    // Milliseconds, rounded to the microsecond.
    let latency_ms = (elapsed * 1e6).round() / 1e3;
    span.in_scope(|| {
        if matches!(route, "/health" | "/metrics") && status.is_success() {
            // Probes and scrapes arrive every few seconds: not API traffic.
            debug!(status = status.as_u16(), latency_ms, "request");
        } else if status.is_server_error() {
            error!(
                status = status.as_u16(),
                latency_ms,
                task,
                inputs = info.inputs,
                tokens = info.tokens,
                error = note,
                "request failed"
            );
        } else if note.is_empty() {
            info!(
                status = status.as_u16(),
                latency_ms,
                task,
                inputs = info.inputs,
                tokens = info.tokens,
                "request"
            );
        } else {
            info!(
                status = status.as_u16(),
                latency_ms,
                task,
                inputs = info.inputs,
                tokens = info.tokens,
                error = note,
                "request refused"
            );
        }
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Middleware on every route: a request still in flight when the shutdown grace ends (its body
/// still arriving, say) answers 503 `shutting_down`. Its dialect is the one the handler has
/// learned so far ([`SharedDialect`]: the body's, once an embeddings route parsed it), since
/// `run_embeddings` waits for the same signal and either may wake first.
async fn answer_by_grace_end(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let dialect = SharedDialect::from_headers(request.headers());
    request.extensions_mut().insert(dialect.clone());
    tokio::select! {
        biased;
        response = next.run(request) => response,
        () = state.grace_over() => ApiError::ShuttingDown.to_response(dialect.get()),
    }
}

async fn not_found(method: Method, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    routing_error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {method} {}", uri.path()),
        &headers,
    )
}

async fn method_not_allowed(method: Method, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let message = format!("method {method} is not allowed on {}", uri.path());
    routing_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        message,
        &headers,
    )
}

fn routing_error(status: StatusCode, code: &str, message: String, headers: &HeaderMap) -> Response {
    let body = match Dialect::from_headers(headers) {
        Dialect::Jina => serde_json::json!({ "detail": message }),
        Dialect::OpenAi => serde_json::json!({
            "error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}
        }),
    };
    (status, Json(body)).into_response()
}

/// Reads the body up to `payload_limit` bytes (413 past it) within `body_timeout` (408).
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limits: &ServerLimits,
) -> Result<bytes::Bytes, ApiError> {
    let timeout = limits.body_timeout;
    match tokio::time::timeout(
        timeout,
        read_body_limited(headers, body, limits.payload_limit),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(ApiError::BodyTimeout {
            seconds: timeout.as_secs_f64(),
        }),
    }
}

async fn read_body_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared {
        if size > limit as u64 {
            return Err(ApiError::PayloadTooLarge {
                size: Some(size),
                limit,
            });
        }
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge { size: None, limit })
        }
        Err(e) => Err(ApiError::BodyRead(e.to_string())),
    }
}

/// Runs `f` on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("a blocking task failed: {e}")))?
}

/// The requested output encodings.
pub(crate) enum Outputs {
    One(EmbeddingType),
    Many(Vec<EmbeddingType>),
}

fn outputs(
    embedding_type: Option<EmbeddingTypes>,
    encoding_format: Option<EncodingFormat>,
) -> Result<Outputs, ApiError> {
    let format = encoding_format.map(|f| match f {
        EncodingFormat::Float => EmbeddingType::Float,
        EncodingFormat::Base64 => EmbeddingType::Base64,
    });
    match (embedding_type, format) {
        (None, None) => Ok(Outputs::One(EmbeddingType::Float)),
        (None, Some(f)) => Ok(Outputs::One(f)),
        (Some(EmbeddingTypes::One(t)), None) => Ok(Outputs::One(t)),
        (Some(EmbeddingTypes::Many(ts)), None) => Ok(Outputs::Many(ts)),
        (Some(EmbeddingTypes::One(t)), Some(f)) if t == f => Ok(Outputs::One(t)),
        (Some(_), Some(f)) => Err(ApiError::InvalidField {
            field: "encoding_format".into(),
            message: format!(
                "{:?} conflicts with embedding_type: send one of encoding_format (OpenAI) and embedding_type (Jina)",
                f.name()
            ),
        }),
    }
}

/// Validates the texts of a request against the input limits.
pub(crate) fn check_inputs(texts: &[String], max_inputs: usize) -> Result<(), ApiError> {
    if texts.is_empty() {
        return Err(ApiError::Engine(jina_engine::Error::EmptyInput));
    }
    if texts.len() > max_inputs {
        return Err(ApiError::TooManyInputs {
            count: texts.len(),
            limit: max_inputs,
        });
    }
    Ok(())
}

/// Embeds texts in the Jina or the OpenAI dialect.
#[utoipa::path(
    post,
    path = "/v1/embeddings",
    request_body = crate::api::EmbeddingsRequest,
    responses(
        (status = 200, description = "One embedding per input, in input order", body = EmbeddingsResponse),
        (status = 400, description = "Malformed JSON (invalid UTF-8 and nesting deeper than 32 included), or an input over the token limit (`truncate` off)", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 408, description = "The body did not arrive within body_timeout", body = ErrorBody),
        (status = 413, description = "Body over payload_limit, or more inputs than max_inputs_per_request", body = ErrorBody),
        (status = 422, description = "A field of the wrong type or value (named in the message), or an empty input array", body = ErrorBody),
        (status = 429, description = "max_concurrent_requests in flight; see Retry-After", body = ErrorBody),
        (status = 503, description = "The model is loading, or the shutdown grace ended while the request was in flight", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    shared: Option<Extension<SharedDialect>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut info = RequestInfo::default();
    let dialect = shared.map_or_else(|| SharedDialect::from_headers(&headers), |e| e.0);
    let result = embed(&state, &headers, body, &dialect, &mut info).await;
    let mut response = match result {
        Ok(response) => response,
        Err(error) => Failure {
            dialect: dialect.get(),
            error,
        }
        .into_response(),
    };
    response.extensions_mut().insert(info);
    response
}

async fn embed(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    dialect: &SharedDialect,
    info: &mut RequestInfo,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let _permit = state.admit()?;
    let bytes = read_body(headers, body, &state.config.limits).await?;
    let mut known = dialect.get();
    let request = decode_request(&bytes, headers, &mut known);
    dialect.set(known);
    let request = request?;
    drop(bytes);
    let embedded = run_embeddings(state, engine, request, info).await?;
    let model_name = state.config.served_model_name.clone();
    let body = blocking(move || embedded.render(model_name)).await?;
    Ok(json_response(body))
}

/// A JSON body already serialised.
pub(crate) fn json_response(body: Vec<u8>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// The result of an embeddings request before pooling and encoding: what the scheduler gave
/// back and how to turn it into vectors.
pub(crate) struct Embedded {
    plan: jina_engine::Plan,
    sums: Vec<jina_engine::SpanSum>,
    hidden: usize,
    finish: Finish,
    outputs: Outputs,
    /// Tokens fed to the model for the request.
    pub(crate) total_tokens: usize,
}

impl Embedded {
    /// Tokens pooled into each input's embedding, in input order (`<s>`, `</s>` and the prefix
    /// included where they belong to the input's span).
    pub(crate) fn tokens_per_input(&self) -> Vec<usize> {
        let mut tokens = vec![0; self.plan.outputs];
        for sequence in &self.plan.sequences {
            for span in &sequence.spans {
                tokens[span.output] += span.range.len();
            }
        }
        tokens
    }

    /// The embeddings, one per input in input order, in the requested encodings. Blocking.
    pub(crate) fn values(self) -> Vec<EmbeddingValue> {
        let Embedded {
            plan,
            sums,
            hidden,
            finish,
            outputs,
            ..
        } = self;
        pooling::finish(&plan, sums, hidden, finish)
            .iter()
            .map(|v| match &outputs {
                Outputs::One(t) => EmbeddingValue::One(output::encode(v, *t)),
                Outputs::Many(ts) => EmbeddingValue::ByType(
                    ts.iter()
                        .map(|&t| (t.name(), output::encode(v, t)))
                        .collect::<BTreeMap<_, _>>(),
                ),
            })
            .collect()
    }

    /// The `/v1/embeddings` response body. Blocking.
    pub(crate) fn render(self, model: String) -> Result<Vec<u8>, ApiError> {
        let total_tokens = self.total_tokens;
        let data = self
            .values()
            .into_iter()
            .enumerate()
            .map(|(index, embedding)| EmbeddingItem {
                object: "embedding",
                index,
                embedding,
            })
            .collect();
        let response = EmbeddingsResponse {
            object: "list",
            model,
            data,
            usage: Usage {
                prompt_tokens: total_tokens,
                total_tokens,
            },
        };
        serde_json::to_vec(&response)
            .map_err(|e| ApiError::Internal(format!("cannot serialise the response: {e}")))
    }
}

/// Checks a decoded embeddings request against the limits and the model, plans it, runs it
/// through the scheduler and counts its usage. Shared by `/v1/embeddings` and `/invocations`.
pub(crate) async fn run_embeddings(
    state: &AppState,
    engine: &crate::Engine,
    request: crate::api::EmbeddingsRequest,
    info: &mut RequestInfo,
) -> Result<Embedded, ApiError> {
    let limits = &state.config.limits;
    let texts = request
        .input
        .ok_or(ApiError::MissingField("input"))?
        .into_texts();
    info.inputs = texts.len();
    check_inputs(&texts, limits.max_inputs_per_request)?;
    let runner = engine.runner.clone();
    let task = request
        .task
        .unwrap_or_else(|| runner.info().default_task.clone());
    runner.task_prefix(&task)?;
    info.task = Some(task.clone());
    let hidden = runner.info().hidden_size;
    let dimensions = match request.dimensions {
        None => None,
        Some(d) if d < 1 || d > hidden as i64 => {
            return Err(ApiError::Engine(jina_engine::Error::Dimensions {
                value: d,
                max: hidden,
            }))
        }
        Some(d) => Some(d as usize),
    };
    let outputs = outputs(request.embedding_type, request.encoding_format)?;
    // Checked whenever it is sent, not only with `late_chunking: "long"`: a value that can never
    // be valid is refused where it is (the OpenAPI document gives the same maximum).
    if let Some(overlap) = request.late_chunking_overlap {
        let max = runner.info().max_tokens / 2;
        if overlap > max {
            return Err(ApiError::InvalidField {
                field: "late_chunking_overlap".into(),
                message: format!(
                    "{overlap} is too large: it must be at most {max} (half the token limit)"
                ),
            });
        }
    }
    let late_chunking =
        LateChunkingField::mode(request.late_chunking, request.late_chunking_overlap);
    let embed_request = EmbedRequest {
        inputs: texts,
        task: Some(task.clone()),
        dimensions,
        normalized: request.normalized.unwrap_or(true),
        late_chunking,
        truncate: request.truncate.unwrap_or(false),
    };
    let finish = Finish {
        dimensions,
        normalized: embed_request.normalized,
    };

    let planner = runner.clone();
    let plan = blocking(move || planner.plan(&embed_request).map_err(ApiError::from)).await?;
    let total_tokens = plan.total_tokens;
    info.tokens = total_tokens;

    let receiver = engine
        .scheduler
        .submit(plan, tracing::Span::current())
        .map_err(|_| ApiError::ShuttingDown)?;
    // At the end of the shutdown grace the answer is 503 (in the request's dialect).
    let reply = tokio::select! {
        biased;
        reply = receiver => reply,
        () = state.grace_over() => return Err(ApiError::ShuttingDown),
    };
    let (plan, sums) = reply
        .map_err(|_| ApiError::Internal("the scheduler dropped the request".into()))?
        .map_err(ApiError::Internal)?;
    state.metrics.count_usage(&task, total_tokens, info.inputs);
    Ok(Embedded {
        plan,
        sums,
        hidden,
        finish,
        outputs,
        total_tokens,
    })
}

/// Tokenises inputs exactly as the model sees them: `<s>`, the task's prefix, the text, `</s>`.
/// Inputs over the token limit are counted, not refused.
#[utoipa::path(
    post,
    path = "/tokenize",
    request_body = TokenizeRequest,
    responses(
        (status = 200, description = "Ids, pieces and counts per input", body = TokenizeResponse),
        (status = 400, description = "Malformed JSON (invalid UTF-8 and nesting deeper than 32 included)", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 408, description = "The body did not arrive within body_timeout", body = ErrorBody),
        (status = 413, description = "Body over payload_limit, or more inputs than max_inputs_per_request", body = ErrorBody),
        (status = 422, description = "A field of the wrong type, an unknown task or an empty input array", body = ErrorBody),
        (status = 429, description = "max_concurrent_requests in flight; see Retry-After", body = ErrorBody),
        (status = 503, description = "The model is loading, or the shutdown grace ended while the request was in flight", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut info = RequestInfo::default();
    let dialect = Dialect::from_headers(&headers);
    let mut response = match tokenize_inner(&state, &headers, body, &mut info).await {
        Ok(response) => response,
        Err(error) => Failure { dialect, error }.into_response(),
    };
    response.extensions_mut().insert(info);
    response
}

async fn tokenize_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    info: &mut RequestInfo,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let _permit = state.admit()?;
    let bytes = read_body(headers, body, &state.config.limits).await?;
    let request: TokenizeRequest = typed(parse_object(&bytes)?)?;
    let texts = request
        .input
        .ok_or(ApiError::MissingField("input"))?
        .into_texts();
    info.inputs = texts.len();
    check_inputs(&texts, state.config.limits.max_inputs_per_request)?;
    let runner = engine.runner.clone();
    let task = request
        .task
        .unwrap_or_else(|| runner.info().default_task.clone());
    let prefix = runner.task_prefix(&task)?;
    info.task = Some(task.clone());
    let response = blocking(move || {
        let mut data = Vec::with_capacity(texts.len());
        for (index, text) in texts.iter().enumerate() {
            let tokenized = runner.tokenize(&format!("{prefix}{text}"))?;
            data.push(TokenizedItem {
                index,
                count: tokenized.ids.len(),
                ids: tokenized.ids,
                tokens: tokenized.pieces,
            });
        }
        let total_tokens = data.iter().map(|d| d.count).sum();
        Ok(TokenizeResponse {
            task,
            prefix,
            max_tokens: runner.info().max_tokens,
            data,
            total_tokens,
        })
    })
    .await?;
    info.tokens = response.total_tokens;
    Ok(Json(response).into_response())
}

/// The served model (OpenAI's list format, with the model's sizes and tasks).
#[utoipa::path(
    get,
    path = "/v1/models",
    responses(
        (status = 200, body = ModelList),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 503, description = "The model is loading, or the shutdown grace ended while the request was in flight", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let engine = match state.engine() {
        Ok(engine) => engine,
        Err(error) => {
            return Failure {
                dialect: Dialect::from_headers(&headers),
                error,
            }
            .into_response()
        }
    };
    let model = engine.runner.info();
    let tasks = engine.runner.tasks_and_none();
    Json(ModelList {
        object: "list".into(),
        data: vec![ModelCard {
            id: state.config.served_model_name.clone(),
            object: "model".into(),
            created: state.created,
            owned_by: "jina-embeddings-rs".into(),
            dimensions: model.hidden_size,
            matryoshka_dimensions: model.matryoshka_dimensions.clone(),
            max_tokens: model.max_tokens,
            tasks,
            default_task: model.default_task.clone(),
            precision: model.precision.clone(),
            requested_precision: model.requested_precision.clone(),
            isa: model.isa.clone(),
            kernels: Kernels {
                linear: model.linear_kernel.clone(),
                attention: model.attention_kernel.clone(),
            },
            precision_fallbacks: model.fallbacks.clone(),
            device: DeviceCard {
                kind: model.device.name().into(),
                requested: model.device.requested.name().into(),
                adapter: model.device.gpu.as_ref().map(|g| g.name.clone()),
                backend: model.device.gpu.as_ref().map(|g| g.backend.clone()),
                adapter_kind: model.device.gpu.as_ref().map(|g| g.kind.name().into()),
                max_batch_tokens: model.device_max_batch_tokens,
                operations: model
                    .device
                    .operations
                    .iter()
                    .map(|(op, how)| format!("{op}: {how}"))
                    .collect(),
                fallbacks: model.device.fallbacks.clone(),
            },
        }],
    })
    .into_response()
}

/// 200 once the model is loaded and warmed up; 503 while it loads and once shutdown began.
#[utoipa::path(
    get,
    path = "/health",
    responses((status = 200, body = Health), (status = 503, description = "loading or shutting_down", body = Health))
)]
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let (status, text) = if state.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
    } else if state.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading")
    };
    (
        status,
        Json(Health {
            status: text.into(),
        }),
    )
        .into_response()
}

/// Prometheus metrics: requests by route, status and task; tokens; batch size and fill; queue
/// wait and inference latency; requests in flight.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", body = String)))]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.render(state.gauges());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

/// This document, for the served model, limits and keys ([`crate::openapi`]).
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses(
        (status = 200, description = "OpenAPI 3.1 document"),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn openapi(State(state): State<Arc<AppState>>) -> Response {
    let served = match state.engine() {
        Ok(engine) => {
            let model = engine.runner.info();
            crate::openapi::Served {
                keys: !state.keys.is_empty(),
                tasks: engine.runner.tasks_and_none(),
                hidden_size: model.hidden_size,
                max_tokens: model.max_tokens,
                max_inputs: state.config.limits.max_inputs_per_request,
            }
        }
        // While the model loads: the real model's values.
        Err(_) => crate::openapi::Served {
            keys: !state.keys.is_empty(),
            max_inputs: state.config.limits.max_inputs_per_request,
            ..crate::openapi::Served::reference()
        },
    };
    Json(crate::openapi::document(&served)).into_response()
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI document of the server, generated from the [`crate::api`] types.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "jina-embeddings-rs",
        description = "Jina- and OpenAI-compatible embeddings for jina-embeddings-v3. `POST /embeddings` is the same as `/v1/embeddings`, `GET /models` the same as `/v1/models`. Errors are `{\"detail\": …}` (Jina dialect) or `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}` (OpenAI dialect: the body has `encoding_format`, or the request has the `X-Stainless-Lang` header of the OpenAI SDKs)."
    ),
    paths(embeddings, tokenize, models, health, metrics, openapi, crate::sagemaker::ping, crate::sagemaker::invocations, crate::adapters::list, crate::adapters::load, crate::adapters::unload),
    components(schemas(ErrorBody, crate::errors::JinaErrorBody, crate::errors::OpenAiErrorBody, crate::errors::OpenAiError)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_names_the_routes_and_fields() {
        let doc = ApiDoc::openapi().to_json().unwrap();
        for needle in [
            "/v1/embeddings",
            "/tokenize",
            "late_chunking",
            "encoding_format",
            "embedding_type",
            "bearer",
        ] {
            assert!(
                doc.contains(needle),
                "{needle} missing from the OpenAPI document"
            );
        }
    }

    #[test]
    fn output_choice() {
        assert!(matches!(
            outputs(None, None),
            Ok(Outputs::One(EmbeddingType::Float))
        ));
        assert!(matches!(
            outputs(None, Some(EncodingFormat::Base64)),
            Ok(Outputs::One(EmbeddingType::Base64))
        ));
        let conflict = outputs(
            Some(EmbeddingTypes::One(EmbeddingType::Ubinary)),
            Some(EncodingFormat::Base64),
        );
        assert!(
            matches!(conflict, Err(ApiError::InvalidField { ref field, .. }) if field == "encoding_format")
        );
    }

    #[test]
    fn routes_are_labelled() {
        assert_eq!(route_label("/v1/embeddings"), "/v1/embeddings");
        assert_eq!(route_label("/v1/embeddings/../x"), "other");
    }

    /// The handler and `answer_by_grace_end` wake on the same signal in either order (a socket
    /// test lost this race three times in ten). Here the handler never answers, so the
    /// middleware must, in the dialect the handler had learned from its body.
    #[tokio::test]
    async fn at_the_grace_end_the_middleware_answers_in_the_dialect_the_handler_learned() {
        use tower::ServiceExt;
        let state = AppState::new(crate::ServerConfig::new("no model".into()));
        let (learned_tx, learned_rx) = tokio::sync::oneshot::channel::<()>();
        let learned_tx = Arc::new(std::sync::Mutex::new(Some(learned_tx)));
        let app = Router::new()
            .route(
                "/stuck",
                post(move |Extension(dialect): Extension<SharedDialect>| {
                    dialect.set(Dialect::OpenAi);
                    if let Some(tx) = learned_tx.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                    std::future::pending::<Response>()
                }),
            )
            .layer(middleware::from_fn_with_state(
                state.clone(),
                answer_by_grace_end,
            ))
            .with_state(state.clone());
        let request = Request::post("/stuck").body(Body::empty()).unwrap();
        let call = tokio::spawn(app.oneshot(request));
        learned_rx.await.unwrap();
        state.end_grace();
        let response = call.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["error"]["code"], "shutting_down", "{body}");
    }
}
