//! CORS, off unless `--cors-allow-origin` names origins.
//!
//! Without the flag the server sends no `Access-Control-*` header, so a browser page on another
//! origin cannot read its answers (and a preflight `OPTIONS` gets 405 like any other unknown
//! method). With it, a request whose `Origin` is listed (or any origin, for `*`) gets
//! `Access-Control-Allow-Origin`, and its preflight is answered here with 204, before the key
//! check: a preflight carries no credentials. Requests from other origins are served as
//! before, without CORS headers, so the browser withholds the answer.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// Headers a browser may read from a cross-origin answer.
const EXPOSED: &str = "x-request-id, retry-after";
/// Headers a cross-origin request may send.
const ALLOWED_HEADERS: &str = "authorization, content-type, x-request-id, x-stainless-lang";

/// The allowed origins: exact `scheme://host[:port]` strings, or `*` for any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsOrigins(Vec<String>);

impl CorsOrigins {
    /// Origins from the flag's values; blanks are skipped and a trailing `/` is dropped.
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(origins: I) -> Self {
        CorsOrigins(
            origins
                .into_iter()
                .map(|o| o.as_ref().trim().trim_end_matches('/').to_string())
                .filter(|o| !o.is_empty())
                .collect(),
        )
    }

    /// True when CORS is off.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `Access-Control-Allow-Origin` value for a request from `origin`, if it is allowed.
    fn allow(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.0.iter().any(|o| o == "*") {
            return Some(HeaderValue::from_static("*"));
        }
        let text = origin.to_str().ok()?;
        self.0.iter().any(|o| o == text).then(|| origin.clone())
    }
}

fn add_headers(headers: &mut HeaderMap, allow: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

/// Middleware: CORS headers and preflights for the configured origins; nothing when none is.
pub async fn cors(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let origins = &state.config.cors_allow_origins;
    let allow = match request.headers().get(header::ORIGIN) {
        Some(origin) if !origins.is_empty() => origins.allow(origin),
        _ => None,
    };
    let Some(allow) = allow else {
        return next.run(request).await;
    };
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        add_headers(headers, allow);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOWED_HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        return response;
    }
    let mut response = next.run(request).await;
    add_headers(response.headers_mut(), allow);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_or_by_wildcard() {
        let origins = CorsOrigins::new(["https://app.example/", " ", "http://localhost:3000"]);
        assert_eq!(
            origins,
            CorsOrigins(vec![
                "https://app.example".into(),
                "http://localhost:3000".into()
            ])
        );
        let allow = |o: &'static str| origins.allow(&HeaderValue::from_static(o));
        assert_eq!(
            allow("https://app.example"),
            Some(HeaderValue::from_static("https://app.example"))
        );
        assert_eq!(allow("https://app.example.evil"), None);
        assert_eq!(allow("http://localhost:3001"), None);
        let any = CorsOrigins::new(["*"]);
        assert_eq!(
            any.allow(&HeaderValue::from_static("https://x")),
            Some(HeaderValue::from_static("*"))
        );
        assert!(CorsOrigins::new(Vec::<String>::new()).is_empty());
    }
}
