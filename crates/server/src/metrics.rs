//! Prometheus metrics in the text exposition format (`GET /metrics`).
//!
//! A small hand-written registry: counters keyed by their labels, fixed-bucket histograms, and
//! gauges read at render time. Label values come only from the server's own vocabulary (route
//! templates, status codes, validated task names), never from raw request text, so their number
//! stays bounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    state: Mutex<HistogramState>,
}

#[derive(Debug, Default, Clone)]
struct HistogramState {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// A histogram with the given bucket upper bounds (ascending; `+Inf` is added).
    pub fn new(bounds: &[f64]) -> Self {
        Histogram {
            bounds: bounds.to_vec(),
            state: Mutex::new(HistogramState {
                counts: vec![0; bounds.len()],
                sum: 0.0,
                count: 0,
            }),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let mut s = lock(&self.state);
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            s.counts[i] += 1;
        }
        s.sum += value;
        s.count += 1;
    }

    /// Number of observations so far.
    pub fn count(&self) -> u64 {
        lock(&self.state).count
    }

    /// Sum of the observations so far.
    pub fn sum(&self) -> f64 {
        lock(&self.state).sum
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let s = lock(&self.state).clone();
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&s.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", s.count);
        let _ = writeln!(out, "{name}_sum {}", s.sum);
        let _ = writeln!(out, "{name}_count {}", s.count);
    }
}

/// A poisoned lock only means another thread panicked while counting: keep counting.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Every metric of the server.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16, String), u64>>,
    tokens: Mutex<BTreeMap<String, u64>>,
    inputs: Mutex<BTreeMap<String, u64>>,
    /// Requests whose client went away before all their sequences ran.
    pub cancelled: AtomicU64,
    /// Sequences skipped because their client went away.
    pub cancelled_sequences: AtomicU64,
    /// Sequences waiting in the scheduler.
    pub queued_sequences: AtomicU64,
    /// Tokens run through the model, counted per forward pass.
    pub forward_tokens: AtomicU64,
    /// Sequences per forward pass.
    pub batch_size: Histogram,
    /// Tokens per forward pass.
    pub batch_tokens: Histogram,
    /// Tokens per forward pass divided by `max_batch_tokens`.
    pub batch_fill: Histogram,
    /// Seconds from a request's arrival in the queue to its first forward pass.
    pub queue_wait: Histogram,
    /// Seconds of one forward pass.
    pub inference: Histogram,
    /// Seconds of a whole request, as the server saw it.
    pub request_duration: Histogram,
}

const SECONDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            tokens: Mutex::default(),
            inputs: Mutex::default(),
            cancelled: AtomicU64::new(0),
            cancelled_sequences: AtomicU64::new(0),
            queued_sequences: AtomicU64::new(0),
            forward_tokens: AtomicU64::new(0),
            batch_size: Histogram::new(&[
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
            ]),
            batch_tokens: Histogram::new(&[
                16.0, 64.0, 256.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 32768.0, 65536.0,
                131072.0,
            ]),
            batch_fill: Histogram::new(&[0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]),
            queue_wait: Histogram::new(&SECONDS),
            inference: Histogram::new(&SECONDS),
            request_duration: Histogram::new(&SECONDS),
        }
    }
}

/// Values that are read from the server's state at render time.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    /// Requests admitted and not yet answered.
    pub in_flight: usize,
    /// `max_concurrent_requests`.
    pub max_concurrent: usize,
    /// Whether the model is loaded and warmed up.
    pub ready: bool,
}

impl Metrics {
    /// Counts one finished request.
    pub fn count_request(&self, route: &str, status: u16, task: &str) {
        *lock(&self.requests)
            .entry((route.to_string(), status, task.to_string()))
            .or_default() += 1;
    }

    /// Counts the tokens and inputs of one successful embedding request.
    pub fn count_usage(&self, task: &str, tokens: usize, inputs: usize) {
        *lock(&self.tokens).entry(task.to_string()).or_default() += tokens as u64;
        *lock(&self.inputs).entry(task.to_string()).or_default() += inputs as u64;
    }

    /// Requests counted for `route` and `status`, over every task.
    pub fn requests_with(&self, route: &str, status: u16) -> u64 {
        lock(&self.requests)
            .iter()
            .filter(|((r, s, _), _)| r == route && *s == status)
            .map(|(_, n)| n)
            .sum()
    }

    /// The text exposition.
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP jina_requests_total Finished HTTP requests by route, status and task.\n# TYPE jina_requests_total counter"
        );
        for ((route, status, task), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "jina_requests_total{{route=\"{}\",status=\"{status}\",task=\"{}\"}} {n}",
                escape(route),
                escape(task)
            );
        }
        let _ = writeln!(
            out,
            "# HELP jina_tokens_total Tokens of successful embedding requests (usage), by task.\n# TYPE jina_tokens_total counter"
        );
        for (task, n) in lock(&self.tokens).iter() {
            let _ = writeln!(out, "jina_tokens_total{{task=\"{}\"}} {n}", escape(task));
        }
        let _ = writeln!(
            out,
            "# HELP jina_inputs_total Inputs of successful embedding requests, by task.\n# TYPE jina_inputs_total counter"
        );
        for (task, n) in lock(&self.inputs).iter() {
            let _ = writeln!(out, "jina_inputs_total{{task=\"{}\"}} {n}", escape(task));
        }
        let counters = [
            (
                "jina_forward_tokens_total",
                "Tokens run through the model.",
                &self.forward_tokens,
            ),
            (
                "jina_cancelled_requests_total",
                "Requests whose client went away before all their sequences ran.",
                &self.cancelled,
            ),
            (
                "jina_cancelled_sequences_total",
                "Sequences skipped because their client went away.",
                &self.cancelled_sequences,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let gauges = [
            (
                "jina_in_flight_requests",
                "Requests admitted and not yet answered.",
                gauges.in_flight as u64,
            ),
            (
                "jina_max_concurrent_requests",
                "Admission limit (max_concurrent_requests).",
                gauges.max_concurrent as u64,
            ),
            (
                "jina_queued_sequences",
                "Sequences waiting for a forward pass.",
                self.queued_sequences.load(Ordering::Relaxed),
            ),
            (
                "jina_ready",
                "1 once the model is loaded and warmed up.",
                gauges.ready as u64,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        self.batch_size
            .render(&mut out, "jina_batch_size", "Sequences per forward pass.");
        self.batch_tokens
            .render(&mut out, "jina_batch_tokens", "Tokens per forward pass.");
        self.batch_fill.render(
            &mut out,
            "jina_batch_fill_ratio",
            "Tokens per forward pass over max_batch_tokens.",
        );
        self.queue_wait.render(
            &mut out,
            "jina_queue_wait_seconds",
            "From entering the queue to the first forward pass.",
        );
        self.inference.render(
            &mut out,
            "jina_inference_seconds",
            "Duration of one forward pass.",
        );
        self.request_duration.render(
            &mut out,
            "jina_request_duration_seconds",
            "Duration of an HTTP request.",
        );
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.inference.observe(0.003);
        m.inference.observe(0.2);
        m.inference.observe(100.0);
        m.count_request("/v1/embeddings", 200, "retrieval.query");
        let text = m.render(Gauges {
            in_flight: 2,
            max_concurrent: 8,
            ready: true,
        });
        assert!(
            text.contains("jina_inference_seconds_bucket{le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("jina_inference_seconds_bucket{le=\"0.25\"} 2\n"));
        assert!(text.contains("jina_inference_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("jina_inference_seconds_count 3\n"));
        assert!(text.contains("jina_requests_total{route=\"/v1/embeddings\",status=\"200\",task=\"retrieval.query\"} 1\n"));
        assert!(text.contains("jina_in_flight_requests 2\n"));
        assert_eq!(escape("a\"b\\"), "a\\\"b\\\\");
    }
}
