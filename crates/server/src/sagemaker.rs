//! Amazon SageMaker's container contract: `GET /ping` and `POST /invocations`.
//!
//! * `GET /ping`: 200 once the model is loaded and warmed up, 503 while it loads and once a
//!   shutdown began (as `/health`). Open, like `/health`: SageMaker's health check sends no key.
//! * `POST /invocations` takes either body:
//!   - ours, as `/v1/embeddings` takes it (either dialect), answered as `/v1/embeddings` answers;
//!   - Jina's SageMaker body `{"data": [{"text": …}, …], "parameters": {"task", "late_chunking",
//!     "dimensions"}}`, answered `{"data": [{"id", "embedding", "usage": {"id",
//!     "total_tokens"}}]}`.
//!
//!   A body with a `data` field is the SageMaker body; any other is ours (the OpenAPI document
//!   says the same: our branch forbids `data`). The `id` of an answer item is the `id` the item
//!   sent (a string or an integer), else the item's zero-based index in `data`
//!   (docs/decisions.md). `usage.total_tokens` of an item counts the tokens pooled into its
//!   embedding (`<s>`, `</s>` and the task prefix included), so the items' counts add up to
//!   the request's tokens.
//!
//!   `/invocations` needs the API key like every model route when keys are configured: a
//!   SageMaker endpoint is authenticated by SageMaker itself, so run it without `--api-key`.
//!   Errors are those of `/v1/embeddings` (422 naming the field, e.g. `data[1].text`).
//!
//! The port (`SAGEMAKER_BIND_TO_PORT`) and the 30 s drain after SIGTERM are the process's
//! concern: `jina-embed serve` (`crates/cli/src/serve.rs`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::api::{
    parse_object, typed, EmbeddingValue, EmbeddingsRequest, Input, LateChunkingField, TextItem,
};
use crate::errors::{ApiError, Dialect, ErrorBody, Failure, SharedDialect};
use crate::routes::{blocking, json_response, read_body, run_embeddings, RequestInfo};
use crate::AppState;

/// Jina's SageMaker request body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SageMakerRequest {
    /// The texts, at least one.
    pub data: Vec<SageMakerItem>,
    /// Options of the whole request.
    #[serde(default)]
    pub parameters: Option<SageMakerParameters>,
}

/// One text of a SageMaker request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SageMakerItem {
    /// The client's id of the text, echoed in the answer (default: the item's index).
    #[serde(default)]
    pub id: Option<SageMakerId>,
    /// The text. An empty string is valid.
    pub text: String,
}

/// The id of an item: a string or an integer (a JSON number with no fraction, within ±2^53).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum SageMakerId {
    /// An integer id.
    Integer(i64),
    /// A string id.
    Text(String),
}

/// Largest integer id: 2^53, the last integer every JSON parser reads exactly.
pub const MAX_SAFE_ID: f64 = 9_007_199_254_740_992.0;

impl<'de> Deserialize<'de> for SageMakerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        match Value::deserialize(d)? {
            Value::String(s) => Ok(SageMakerId::Text(s)),
            // Integers within ±2^53 (exact in every JSON parser; JSON Schema's integer includes
            // `3.0`), as the OpenAPI document says.
            // An integer literal is compared exactly (as f64, 2^53 + 1 would round into range).
            Value::Number(n) => match (n.as_i64(), n.is_f64()) {
                (Some(i), _) => Some(i).filter(|i| i.unsigned_abs() <= MAX_SAFE_ID as u64),
                (None, true) => n
                    .as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() <= MAX_SAFE_ID)
                    .map(|f| f as i64),
                (None, false) => None,
            }
            .map(SageMakerId::Integer)
            .ok_or_else(|| D::Error::custom(format!("{n} is not an integer within ±2^53"))),
            other => Err(D::Error::custom(format!(
                "must be a string or an integer, got {}",
                crate::api::json_kind(&other)
            ))),
        }
    }
}

/// The `parameters` of a SageMaker request.
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct SageMakerParameters {
    /// Task adapter, as `task` of `/v1/embeddings` (default: the server's default task).
    #[serde(default)]
    #[schema(example = "retrieval.passage")]
    pub task: Option<String>,
    /// Embed all texts in one sequence and pool each text's span (default false).
    #[serde(default)]
    pub late_chunking: Option<bool>,
    /// Matryoshka size: keep the first `dimensions` values (1 to the hidden size).
    #[serde(default, deserialize_with = "crate::api::integer")]
    #[schema(minimum = 1, example = 256)]
    pub dimensions: Option<i64>,
}

/// The answer to a SageMaker body.
#[derive(Debug, Serialize, ToSchema)]
pub struct SageMakerResponse {
    /// One item per text, in request order.
    pub data: Vec<SageMakerEmbedding>,
}

/// One embedding of a SageMaker answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct SageMakerEmbedding {
    /// The item's `id`, or its index in `data`.
    pub id: SageMakerId,
    /// The embedding (floats).
    #[schema(value_type = Vec<f32>)]
    pub embedding: EmbeddingValue,
    /// Tokens of this text.
    pub usage: SageMakerUsage,
}

/// Tokens of one text.
#[derive(Debug, Serialize, ToSchema)]
pub struct SageMakerUsage {
    /// The item's id, as in [`SageMakerEmbedding::id`].
    pub id: SageMakerId,
    /// Tokens pooled into the text's embedding (`<s>`, `</s>` and the prefix included).
    pub total_tokens: usize,
}

/// SageMaker's health check: 200 once the model is ready, 503 while it loads or stops.
#[utoipa::path(
    get,
    path = "/ping",
    responses(
        (status = 200, description = "The model is loaded and warmed up", body = crate::api::Health),
        (status = 503, description = "loading or shutting_down", body = crate::api::Health)
    )
)]
pub async fn ping(state: State<Arc<AppState>>) -> Response {
    crate::routes::health(state).await
}

/// SageMaker's inference route: our `/v1/embeddings` body, or Jina's SageMaker body
/// (`{"data": [{"text"}], "parameters"}`; a body with `data` is that one).
#[utoipa::path(
    post,
    path = "/invocations",
    request_body(content = SageMakerRequest, description = "Our /v1/embeddings body (without a `data` field) or Jina's SageMaker body (openapi.rs states both)"),
    responses(
        (status = 200, description = "As /v1/embeddings for our body; `{\"data\": [{\"id\", \"embedding\", \"usage\"}]}` for the SageMaker body", body = SageMakerResponse),
        (status = 400, description = "Malformed JSON (invalid UTF-8 and nesting deeper than 32 included), or a text over the token limit", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 408, description = "The body did not arrive within body_timeout", body = ErrorBody),
        (status = 413, description = "Body over payload_limit, or more texts than max_inputs_per_request", body = ErrorBody),
        (status = 422, description = "A field of the wrong type or value (named in the message), or no text", body = ErrorBody),
        (status = 429, description = "max_concurrent_requests in flight; see Retry-After", body = ErrorBody),
        (status = 503, description = "The model is loading, or the shutdown grace ended while the request was in flight", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn invocations(
    State(state): State<Arc<AppState>>,
    shared: Option<Extension<SharedDialect>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut info = RequestInfo::default();
    let dialect = shared.map_or_else(|| SharedDialect::from_headers(&headers), |e| e.0);
    let mut response = match invoke(&state, &headers, body, &dialect, &mut info).await {
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

async fn invoke(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    dialect: &SharedDialect,
    info: &mut RequestInfo,
) -> Result<Response, ApiError> {
    let engine = state.engine()?;
    let _permit = state.admit()?;
    let bytes = read_body(headers, body, &state.config.limits).await?;
    let map = parse_object(&bytes)?;
    drop(bytes);
    if !map.contains_key("data") {
        dialect.set(Dialect::from_request(headers, &map));
        let request: EmbeddingsRequest = typed(map)?;
        let embedded = run_embeddings(state, engine, request, info).await?;
        let model = state.config.served_model_name.clone();
        let body = blocking(move || embedded.render(model)).await?;
        return Ok(json_response(body));
    }
    dialect.set(Dialect::Jina);
    let (request, ids) = translate(map)?;
    let embedded = run_embeddings(state, engine, request, info).await?;
    let body = blocking(move || {
        let tokens = embedded.tokens_per_input();
        let data = embedded
            .values()
            .into_iter()
            .zip(ids)
            .zip(tokens)
            .map(|((embedding, id), total_tokens)| SageMakerEmbedding {
                id: id.clone(),
                embedding,
                usage: SageMakerUsage { id, total_tokens },
            })
            .collect();
        serde_json::to_vec(&SageMakerResponse { data })
            .map_err(|e| ApiError::Internal(format!("cannot serialise the response: {e}")))
    })
    .await?;
    Ok(json_response(body))
}

/// A SageMaker body as our request, and the ids of its items.
fn translate(map: Map<String, Value>) -> Result<(EmbeddingsRequest, Vec<SageMakerId>), ApiError> {
    // serde would also read a struct from an array (`"parameters": [null]`): the schema says
    // objects, so objects only.
    let not_object = |field: String, value: &Value| ApiError::InvalidField {
        field,
        message: format!("must be an object, got {}", crate::api::json_kind(value)),
    };
    if let Some(value) = map.get("parameters") {
        if !value.is_null() && !value.is_object() {
            return Err(not_object("parameters".into(), value));
        }
    }
    if let Some(Value::Array(items)) = map.get("data") {
        if let Some((i, item)) = items.iter().enumerate().find(|(_, v)| !v.is_object()) {
            return Err(not_object(format!("data[{i}]"), item));
        }
    }
    let request: SageMakerRequest = typed(map)?;
    if request.data.is_empty() {
        return Err(ApiError::InvalidField {
            field: "data".into(),
            message: "holds no item: send at least one {\"text\": …}".into(),
        });
    }
    let parameters = request.parameters.unwrap_or_default();
    let mut ids = Vec::with_capacity(request.data.len());
    let mut texts = Vec::with_capacity(request.data.len());
    for (index, item) in request.data.into_iter().enumerate() {
        ids.push(item.id.unwrap_or(SageMakerId::Integer(index as i64)));
        texts.push(TextItem::Text(item.text));
    }
    let ours = EmbeddingsRequest {
        input: Some(Input::Many(texts)),
        task: parameters.task,
        dimensions: parameters.dimensions,
        late_chunking: parameters.late_chunking.map(LateChunkingField::Flag),
        ..EmbeddingsRequest::default()
    };
    Ok((ours, ids))
}

#[cfg(test)]
mod tests {
    use super::SageMakerId;

    fn id(json: &str) -> Result<SageMakerId, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn integer_ids_are_bounded_exactly_at_2_pow_53() {
        assert_eq!(id("9007199254740992"), Ok(SageMakerId::Integer(1 << 53)));
        assert_eq!(
            id("-9007199254740992"),
            Ok(SageMakerId::Integer(-(1 << 53)))
        );
        assert_eq!(id("3.0"), Ok(SageMakerId::Integer(3)));
        assert_eq!(id("\"a\""), Ok(SageMakerId::Text("a".into())));
        // One past the bound, which an f64 comparison would round back into range.
        for out in [
            "9007199254740993",
            "-9007199254740993",
            "18446744073709551615",
            "2.5",
        ] {
            let err = id(out).unwrap_err();
            assert!(err.contains("not an integer within ±2^53"), "{out}: {err}");
        }
    }
}
