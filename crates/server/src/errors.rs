//! One error enum for every failure a client can see, mapped in one place to a status code and
//! to the JSON body of the request's dialect.
//!
//! # Dialects
//!
//! `/v1/embeddings` (and `/embeddings`) serves both APIs at one address, so the dialect of a
//! request is recognised from the request itself:
//!
//! * **OpenAI** when the JSON body has an `encoding_format` field (the official `openai` SDKs
//!   always send it: `base64` unless their caller picks `float`), or when the request carries
//!   the `X-Stainless-Lang` header that those SDKs add to every call.
//! * **Jina** otherwise.
//!
//! Errors found before the body is parsed (401 missing or invalid key, 503 model loading,
//! 429 queue full, 413 payload too large, 408 body timeout, 400 malformed JSON) can only use
//! the header, so a
//! client that is not an official SDK gets them in the Jina shape even when its body has
//! `encoding_format`. A full server does not read the body of a request it refuses.
//!
//! Both dialects get the same status codes and the same successful responses; only the error
//! body differs:
//!
//! * Jina: `{"detail": "message"}`
//! * OpenAI: `{"error": {"message": "…", "type": "…", "param": "field or null", "code": "…"}}`

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The API dialect a request speaks, which decides the shape of its error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Jina's hosted API: `{"detail": …}`.
    Jina,
    /// OpenAI's API: `{"error": {"message", "type", "param", "code"}}`.
    OpenAi,
}

/// A request's dialect as its handler learns it, shared with the middleware that may answer
/// for the handler (`answer_by_grace_end` at the end of the shutdown grace), so the answer has
/// the same shape whichever of the two gets there first: on a multi-threaded runtime a handler
/// and its middleware can wake on the same signal in either order.
#[derive(Debug, Clone)]
pub struct SharedDialect(Arc<AtomicBool>);

impl SharedDialect {
    /// Starts as the dialect of the headers.
    pub fn from_headers(headers: &HeaderMap) -> SharedDialect {
        SharedDialect(Arc::new(AtomicBool::new(
            Dialect::from_headers(headers) == Dialect::OpenAi,
        )))
    }

    /// The dialect known so far.
    pub fn get(&self) -> Dialect {
        if self.0.load(Ordering::Relaxed) {
            Dialect::OpenAi
        } else {
            Dialect::Jina
        }
    }

    /// Records what the body said.
    pub fn set(&self, dialect: Dialect) {
        self.0.store(dialect == Dialect::OpenAi, Ordering::Relaxed);
    }
}

/// The header the official OpenAI SDKs (Python, Node) send with every request.
pub const OPENAI_SDK_HEADER: &str = "x-stainless-lang";

impl Dialect {
    /// The dialect known from the headers alone (before the body is read).
    pub fn from_headers(headers: &HeaderMap) -> Dialect {
        if headers.contains_key(OPENAI_SDK_HEADER) {
            Dialect::OpenAi
        } else {
            Dialect::Jina
        }
    }

    /// The dialect of a request whose body is the JSON object `body`.
    pub fn from_request(
        headers: &HeaderMap,
        body: &serde_json::Map<String, serde_json::Value>,
    ) -> Dialect {
        if body.contains_key("encoding_format") {
            Dialect::OpenAi
        } else {
            Dialect::from_headers(headers)
        }
    }
}

/// Everything that can go wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No `Authorization: Bearer` header while keys are configured.
    #[error("missing API key: send the header `Authorization: Bearer <key>`")]
    MissingKey,
    /// A key that is not one of the configured keys.
    #[error("invalid API key")]
    InvalidKey,
    /// The body is larger than `payload_limit`.
    #[error("request body{} is larger than the limit of {limit} bytes (payload_limit)", size.map(|s| format!(" of {s} bytes")).unwrap_or_default())]
    PayloadTooLarge {
        /// The declared size, when `Content-Length` was sent.
        size: Option<u64>,
        /// The limit.
        limit: usize,
    },
    /// The body could not be read.
    #[error("cannot read the request body: {0}")]
    BodyRead(String),
    /// The body did not arrive in time.
    #[error("the request body did not arrive within {seconds} s")]
    BodyTimeout {
        /// The limit in seconds.
        seconds: f64,
    },
    /// The body is not JSON.
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    /// The body is JSON but not an object.
    #[error("the request body must be a JSON object, found {0}")]
    NotAnObject(&'static str),
    /// A required field is absent or null.
    #[error("field `{0}` is required")]
    MissingField(&'static str),
    /// A field has the wrong type or a value outside its domain.
    #[error("field `{field}` is invalid: {message}")]
    InvalidField {
        /// The field's path in the body, e.g. `dimensions` or `input`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// More inputs than `max_inputs_per_request`.
    #[error("input has {count} items, more than the limit of {limit} (max_inputs_per_request); split it into smaller requests")]
    TooManyInputs {
        /// Inputs sent.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A request error found by the engine (task, dimensions, token limits, empty input).
    #[error(transparent)]
    Engine(#[from] jina_engine::Error),
    /// `max_concurrent_requests` are already in flight.
    #[error("the server is busy: {limit} requests are already in flight (max_concurrent_requests); retry after {retry_after} s")]
    Overloaded {
        /// The limit.
        limit: usize,
        /// Seconds for `Retry-After`.
        retry_after: u64,
    },
    /// The model is still loading or warming up.
    #[error("the model is still loading; retry after {retry_after} s")]
    NotReady {
        /// Seconds for `Retry-After`.
        retry_after: u64,
    },
    /// The server stopped taking work.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The addressed resource does not exist (an adapter to unload).
    #[error("{0}")]
    NotFound(String),
    /// A bug or a failed worker; the details are logged, never sent.
    #[error("internal server error")]
    Internal(String),
}

/// The Jina error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct JinaErrorBody {
    /// What went wrong, naming the field, the value and the limit.
    pub detail: String,
}

/// An error body in either dialect (schema only): `{"detail"}` for Jina requests,
/// `{"error": {…}}` for OpenAI ones (see the module documentation for how the dialect is known).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ErrorBody {
    /// Jina dialect.
    Jina(JinaErrorBody),
    /// OpenAI dialect.
    OpenAi(OpenAiErrorBody),
}

/// The OpenAI error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiErrorBody {
    /// The error.
    pub error: OpenAiError,
}

/// The inner object of [`OpenAiErrorBody`].
#[derive(Debug, Serialize, ToSchema)]
pub struct OpenAiError {
    /// What went wrong.
    pub message: String,
    /// `invalid_request_error`, `rate_limit_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A stable machine-readable code.
    pub code: &'static str,
}

impl ApiError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        use jina_engine::Error as E;
        match self {
            ApiError::MissingKey | ApiError::InvalidKey => StatusCode::UNAUTHORIZED,
            ApiError::PayloadTooLarge { .. } | ApiError::TooManyInputs { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::BodyRead(_) | ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotAnObject(_)
            | ApiError::MissingField(_)
            | ApiError::InvalidField { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Engine(e) => match e {
                E::InputTooLong { .. } | E::LateChunkingTooLong { .. } => StatusCode::BAD_REQUEST,
                E::UnknownTask { .. }
                | E::Dimensions { .. }
                | E::EmptyInput
                | E::Adapter { .. }
                | E::InvalidRequest(_) => StatusCode::UNPROCESSABLE_ENTITY,
                E::AdapterName { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                E::AdapterConflict { .. } => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotReady { .. } | ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The request field at fault, if one is.
    pub fn param(&self) -> Option<String> {
        use jina_engine::Error as E;
        match self {
            ApiError::MissingField(f) => Some(f.to_string()),
            ApiError::InvalidField { field, .. } => Some(field.clone()),
            ApiError::TooManyInputs { .. } => Some("input".into()),
            ApiError::Engine(e) => match e {
                E::InputTooLong { index, .. } => Some(format!("input[{index}]")),
                E::LateChunkingTooLong { .. } | E::EmptyInput => Some("input".into()),
                E::UnknownTask { .. } => Some("task".into()),
                E::Dimensions { .. } => Some("dimensions".into()),
                E::AdapterName { .. } | E::AdapterConflict { .. } => Some("name".into()),
                E::Adapter { .. } => Some("path".into()),
                _ => None,
            },
            _ => None,
        }
    }

    /// A stable machine-readable code (the OpenAI body's `code`).
    pub fn code(&self) -> &'static str {
        use jina_engine::Error as E;
        match self {
            ApiError::MissingKey => "missing_api_key",
            ApiError::InvalidKey => "invalid_api_key",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::BodyRead(_) => "unreadable_body",
            ApiError::BodyTimeout { .. } => "body_timeout",
            ApiError::MalformedJson(_) | ApiError::NotAnObject(_) => "invalid_json",
            ApiError::MissingField(_) => "missing_field",
            ApiError::InvalidField { .. } => "invalid_field",
            ApiError::TooManyInputs { .. } => "too_many_inputs",
            ApiError::Engine(e) => match e {
                E::InputTooLong { .. } | E::LateChunkingTooLong { .. } => "context_length_exceeded",
                E::UnknownTask { .. } => "unknown_task",
                E::Dimensions { .. } => "invalid_dimensions",
                E::EmptyInput => "empty_input",
                E::InvalidRequest(_) => "invalid_request",
                E::AdapterName { .. } => "invalid_adapter_name",
                E::AdapterConflict { .. } => "adapter_name_taken",
                E::Adapter { .. } => "invalid_adapter",
                _ => "internal_error",
            },
            ApiError::Overloaded { .. } => "rate_limit_exceeded",
            ApiError::NotReady { .. } => "model_loading",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::NotFound(_) => "not_found",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// The message sent to the client. Internal errors send a generic text; their details are
    /// only logged.
    pub fn client_message(&self) -> String {
        match self {
            ApiError::Engine(e) if !e.is_client_error() => "internal server error".to_string(),
            other => other.to_string(),
        }
    }

    /// The response in `dialect`.
    pub fn to_response(&self, dialect: Dialect) -> Response {
        let status = self.status();
        let message = self.client_message();
        let mut response = match dialect {
            Dialect::Jina => {
                (status, axum::Json(JinaErrorBody { detail: message })).into_response()
            }
            Dialect::OpenAi => {
                let kind = match status {
                    StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
                    s if s.is_server_error() => "server_error",
                    _ => "invalid_request_error",
                };
                let error = OpenAiError {
                    message,
                    kind,
                    param: self.param(),
                    code: self.code(),
                };
                (status, axum::Json(OpenAiErrorBody { error })).into_response()
            }
        };
        let headers = response.headers_mut();
        match self {
            ApiError::Overloaded { retry_after, .. } | ApiError::NotReady { retry_after } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            ApiError::MissingKey | ApiError::InvalidKey => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        // The request log line reports what went wrong (internal details included).
        response.extensions_mut().insert(ErrorNote(match self {
            ApiError::Internal(detail) => format!("internal error: {detail}"),
            other => other.to_string(),
        }));
        response
    }
}

/// An error together with the dialect to answer it in: what handlers return.
#[derive(Debug)]
pub struct Failure {
    /// The dialect of the request.
    pub dialect: Dialect,
    /// The error.
    pub error: ApiError,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        self.error.to_response(self.dialect)
    }
}

/// Extension attached to error responses so that the request log line can name the error.
#[derive(Debug, Clone)]
pub struct ErrorNote(pub String);

/// Attaches a dialect to an error.
pub trait InDialect<T> {
    /// Maps the error into a [`Failure`] of `dialect`.
    fn in_dialect(self, dialect: Dialect) -> Result<T, Failure>;
}

impl<T, E: Into<ApiError>> InDialect<T> for Result<T, E> {
    fn in_dialect(self, dialect: Dialect) -> Result<T, Failure> {
        self.map_err(|e| Failure {
            dialect,
            error: e.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialect_from_body_and_header() {
        let empty = HeaderMap::new();
        let mut sdk = HeaderMap::new();
        sdk.insert(OPENAI_SDK_HEADER, HeaderValue::from_static("python"));
        let with_format = serde_json::json!({"input": "a", "encoding_format": "float"});
        let without = serde_json::json!({"input": "a", "task": "retrieval.query"});
        let (Some(with_format), Some(without)) = (with_format.as_object(), without.as_object())
        else {
            panic!("objects")
        };
        assert_eq!(Dialect::from_request(&empty, with_format), Dialect::OpenAi);
        assert_eq!(Dialect::from_request(&empty, without), Dialect::Jina);
        assert_eq!(Dialect::from_request(&sdk, without), Dialect::OpenAi);
        assert_eq!(Dialect::from_headers(&empty), Dialect::Jina);
    }

    #[test]
    fn statuses_and_params() {
        let too_long = ApiError::Engine(jina_engine::Error::InputTooLong {
            index: 3,
            tokens: 9000,
            limit: 8194,
        });
        assert_eq!(too_long.status(), StatusCode::BAD_REQUEST);
        assert_eq!(too_long.param().as_deref(), Some("input[3]"));
        assert_eq!(
            ApiError::TooManyInputs { count: 3, limit: 2 }.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            ApiError::Engine(jina_engine::Error::EmptyInput).status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        let internal = ApiError::Internal("secret detail".into());
        assert_eq!(internal.client_message(), "internal server error");
        let msg = ApiError::PayloadTooLarge {
            size: Some(10),
            limit: 5,
        }
        .to_string();
        assert_eq!(
            msg,
            "request body of 10 bytes is larger than the limit of 5 bytes (payload_limit)"
        );
    }
}
