//! API keys: `Authorization: Bearer KEY`, compared in constant time, never logged.
//!
//! With no key configured every route is open. With one or more keys, every route except
//! `/health` and `/metrics` needs one of them; otherwise the answer is 401 with a JSON body in
//! the request's dialect (known from the headers at this point, see [`crate::errors`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::{Choice, ConstantTimeEq};

use crate::errors::{ApiError, Dialect, Failure};
use crate::AppState;

/// The configured keys. Its `Debug` shows only how many there are.
#[derive(Clone, Default)]
pub struct ApiKeys(Vec<Vec<u8>>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

impl ApiKeys {
    /// Keys from strings; empty ones (after trimming) are skipped.
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(keys: I) -> Self {
        let mut out: Vec<Vec<u8>> = Vec::new();
        for key in keys {
            let key = key.as_ref().trim();
            if !key.is_empty() && !out.iter().any(|k| k == key.as_bytes()) {
                out.push(key.as_bytes().to_vec());
            }
        }
        ApiKeys(out)
    }

    /// Reads a key file: one key per line; blank lines and lines starting with `#` are skipped.
    pub fn parse_file(text: &str) -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect()
    }

    /// True when no key is configured (every route open).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `provided` is one of the keys. Every key is compared, each in time that depends
    /// only on the key's own length, so the answer's timing tells nothing about which bytes
    /// matched.
    pub fn accepts(&self, provided: &[u8]) -> bool {
        let mut found = Choice::from(0);
        for key in &self.0 {
            found |= equal_padded(key, provided);
        }
        found.into()
    }
}

fn equal_padded(key: &[u8], provided: &[u8]) -> Choice {
    let same_len = (key.len() as u64).ct_eq(&(provided.len() as u64));
    let mut diff = 0u8;
    for (i, &k) in key.iter().enumerate() {
        diff |= k ^ provided.get(i).copied().unwrap_or(!k);
    }
    same_len & diff.ct_eq(&0)
}

/// The bearer token of a request, if it sent one.
fn bearer(request: &Request) -> Option<&[u8]> {
    let value = request.headers().get(AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at(value.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Middleware: refuses requests without a valid key (when keys are configured).
pub async fn require_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if state.keys.is_empty() {
        return next.run(request).await;
    }
    let error = match bearer(&request) {
        None => ApiError::MissingKey,
        Some(token) if state.keys.accepts(token) => return next.run(request).await,
        Some(_) => ApiError::InvalidKey,
    };
    Failure {
        dialect: Dialect::from_headers(request.headers()),
        error,
    }
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_exactly() {
        let keys = ApiKeys::new(["alpha", " beta ", "", "alpha"]);
        assert_eq!(keys.len(), 2);
        assert!(keys.accepts(b"alpha"));
        assert!(keys.accepts(b"beta"));
        assert!(!keys.accepts(b"alph"));
        assert!(!keys.accepts(b"alphaa"));
        assert!(!keys.accepts(b""));
        assert!(!keys.accepts(b"gamma"));
        assert_eq!(format!("{keys:?}"), "ApiKeys(2 keys)");
        assert!(ApiKeys::new(Vec::<String>::new()).is_empty());
    }

    #[test]
    fn key_file_lines() {
        assert_eq!(
            ApiKeys::parse_file("# comment\n\n k1 \nk2\n"),
            vec!["k1", "k2"]
        );
    }

    #[test]
    fn bearer_header() {
        let req = |v: &str| {
            Request::builder()
                .header(AUTHORIZATION, v)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert_eq!(bearer(&req("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(&req("bearer   abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer(&req("Basic abc")), None);
        assert_eq!(bearer(&req("Bearer")), None);
        assert_eq!(bearer(&req("Bearer ")), None);
    }
}
