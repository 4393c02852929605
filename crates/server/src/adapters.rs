//! `/v1/adapters`: the custom tasks the server serves beside the checkpoint's five, listed,
//! loaded from a folder on the server's machine and unloaded at run time. The registry is the
//! engine's ([`jina_engine::Model::load_adapter`]); these routes only route. A request already
//! planned with an adapter finishes with it even when it is unloaded meanwhile.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::{parse_object, typed};
use crate::errors::{ApiError, Dialect, ErrorBody, Failure};
use crate::routes::{blocking, read_body};
use crate::runner::AdapterInfo;
use crate::AppState;

/// `POST /v1/adapters`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct LoadAdapterRequest {
    /// The adapter folder on the server's machine (`jina-embed train --out`, or a PEFT folder).
    /// Required; kept optional here so that a request without it gets our message naming the
    /// field rather than the JSON parser's.
    #[schema(required = true, nullable = false)]
    pub path: Option<String>,
    /// The task name; default: the name in the folder's `jina_adapter.json`.
    pub name: Option<String>,
}

/// `GET /v1/adapters`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdapterList {
    /// Always `list`.
    pub object: String,
    /// The custom tasks, by name.
    pub data: Vec<AdapterInfo>,
}

fn failure(headers: &HeaderMap, error: ApiError) -> Response {
    Failure {
        dialect: Dialect::from_headers(headers),
        error,
    }
    .into_response()
}

/// The custom tasks served now.
#[utoipa::path(
    get,
    path = "/v1/adapters",
    responses(
        (status = 200, body = AdapterList),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 503, description = "The model is loading", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match state.engine() {
        Ok(engine) => Json(AdapterList {
            object: "list".into(),
            data: engine.runner.adapters(),
        })
        .into_response(),
        Err(error) => failure(&headers, error),
    }
}

/// Loads an adapter folder and serves it as a task from the next request on.
#[utoipa::path(
    post,
    path = "/v1/adapters",
    request_body = LoadAdapterRequest,
    responses(
        (status = 201, description = "Loaded", body = AdapterInfo),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 408, description = "The body did not arrive within body_timeout", body = ErrorBody),
        (status = 409, description = "The name is taken (a built-in task, none, or a loaded adapter)", body = ErrorBody),
        (status = 413, description = "Body over payload_limit", body = ErrorBody),
        (status = 422, description = "No path, a bad name, or a folder that is missing, malformed or for another model", body = ErrorBody),
        (status = 503, description = "The model is loading", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn load(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    match load_inner(&state, &headers, body).await {
        Ok(info) => (StatusCode::CREATED, Json(info)).into_response(),
        Err(error) => failure(&headers, error),
    }
}

async fn load_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<AdapterInfo, ApiError> {
    let engine = state.engine()?;
    let bytes = read_body(headers, body, &state.config.limits).await?;
    let request: LoadAdapterRequest = typed(parse_object(&bytes)?)?;
    let path = PathBuf::from(request.path.ok_or(ApiError::MissingField("path"))?);
    let runner = engine.runner.clone();
    let info = blocking(move || Ok(runner.load_adapter(&path, request.name.as_deref())?)).await?;
    tracing::info!(task = %info.name, "adapter loaded");
    Ok(info)
}

/// Stops serving a custom task; requests in flight with it finish with it.
#[utoipa::path(
    delete,
    path = "/v1/adapters/{name}",
    params(("name" = String, Path, description = "The custom task's name")),
    responses(
        (status = 200, description = "Unloaded", body = AdapterInfo),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "No custom task of that name", body = ErrorBody),
        (status = 409, description = "A built-in task, which cannot be unloaded", body = ErrorBody),
        (status = 503, description = "The model is loading", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn unload(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let result = state
        .engine()
        .and_then(|engine| Ok(engine.runner.unload_adapter(&name)?));
    match result {
        Ok(info) => {
            tracing::info!(task = %info.name, "adapter unloaded");
            Json(info).into_response()
        }
        Err(ApiError::Engine(jina_engine::Error::UnknownTask { task, .. })) => failure(
            &headers,
            ApiError::NotFound(format!("no custom task named {task:?} is loaded")),
        ),
        Err(error) => failure(&headers, error),
    }
}
