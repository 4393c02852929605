//! Every limit of the server in one struct, with its documented default.
//!
//! The command-line flags of `jina-embed serve` (`crates/cli/src/serve.rs`) fill it; tests build
//! it directly. Nothing else in the server holds a limit of its own.

use std::time::Duration;

/// Limits and backpressure settings of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Token budget of one forward pass: sequences of many requests are packed together until
    /// their tokens reach it (sequences run unpadded, so the budget counts real tokens). A single
    /// sequence longer than the budget runs alone. Default 16384.
    pub max_batch_tokens: usize,
    /// Embedding and tokenize requests admitted at once (queued or running). One more is
    /// refused at once with 429 and `Retry-After` instead of waiting: the queue is bounded by
    /// this number times `payload_limit`. Default 256.
    pub max_concurrent_requests: usize,
    /// Inputs in one request. A larger client batch is refused with 413; anything up to it is
    /// split into forward passes internally. Default 2048 (the OpenAI API's limit).
    pub max_inputs_per_request: usize,
    /// Bytes of one request body. Over it: 413. Default 8 MiB.
    pub payload_limit: usize,
    /// How long a request may take to send its body once admitted. A slower client gets 408,
    /// so that stalled uploads cannot hold every admission slot. Default 30 s.
    pub body_timeout: Duration,
    /// How long a shutdown waits for the requests in flight before it answers those still
    /// running 503 `shutting_down`. Default 30 s.
    pub shutdown_grace: Duration,
    /// Seconds sent in `Retry-After` with a 429 or 503. Default 1.
    pub retry_after_secs: u64,
}

impl ServerLimits {
    /// Default of [`ServerLimits::max_batch_tokens`].
    pub const DEFAULT_MAX_BATCH_TOKENS: usize = jina_engine::DEFAULT_MAX_BATCH_TOKENS;
    /// Default of [`ServerLimits::max_concurrent_requests`].
    pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 256;
    /// Default of [`ServerLimits::max_inputs_per_request`].
    pub const DEFAULT_MAX_INPUTS_PER_REQUEST: usize = 2048;
    /// Default of [`ServerLimits::payload_limit`].
    pub const DEFAULT_PAYLOAD_LIMIT: usize = 8 * 1024 * 1024;
    /// Default of [`ServerLimits::shutdown_grace`], in seconds.
    pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 30;

    /// Checks that every limit is usable (none is zero).
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("max_batch_tokens", self.max_batch_tokens),
            ("max_concurrent_requests", self.max_concurrent_requests),
            ("max_inputs_per_request", self.max_inputs_per_request),
            ("payload_limit", self.payload_limit),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be at least 1, got 0"));
            }
        }
        if self.body_timeout.is_zero() {
            return Err("body_timeout must be more than 0 s".into());
        }
        // tokio's semaphore holds at most usize::MAX >> 3 permits.
        if self.max_concurrent_requests > (usize::MAX >> 4) {
            return Err(format!(
                "max_concurrent_requests {} is too large",
                self.max_concurrent_requests
            ));
        }
        Ok(())
    }
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_batch_tokens: Self::DEFAULT_MAX_BATCH_TOKENS,
            max_concurrent_requests: Self::DEFAULT_MAX_CONCURRENT_REQUESTS,
            max_inputs_per_request: Self::DEFAULT_MAX_INPUTS_PER_REQUEST,
            payload_limit: Self::DEFAULT_PAYLOAD_LIMIT,
            body_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(Self::DEFAULT_SHUTDOWN_GRACE_SECS),
            retry_after_secs: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zero_is_refused() {
        assert_eq!(ServerLimits::default().validate(), Ok(()));
        let limits = ServerLimits {
            max_inputs_per_request: 0,
            ..ServerLimits::default()
        };
        assert_eq!(
            limits.validate().unwrap_err(),
            "max_inputs_per_request must be at least 1, got 0"
        );
    }
}
