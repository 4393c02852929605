//! The log subscriber of every command but `serve` (which installs its own, text or JSON):
//! warnings and errors by default, so that what the engine reports (a precision fallback, a
//! download) reaches the user; `-v` adds info (the kernels resolved at load), `-vv` debug, `-q`
//! keeps errors only, and `RUST_LOG` overrides all of it. Logs go to stderr, never into the
//! vectors on stdout.
//!
//! [`SpanTimes`] is `bench --profile`: the time spent in each of the engine's per-layer TRACE
//! spans (`qkv`, `softmax`, `fc1+gelu`, …), summed by name.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::span::Id;
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the subscriber. `verbosity`: −1 (`-q`), 0, 1 (`-v`), 2 and more (`-vv`).
/// With `profile`, the engine's TRACE spans are timed into the returned [`SpanTimes`].
pub fn init(verbosity: i8, profile: bool) -> Option<SpanTimes> {
    let level = match verbosity {
        i8::MIN..=-1 => "error",
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let times = profile.then(SpanTimes::default);
    if profile {
        // The spans must be enabled to be timed; their events stay at the chosen level.
        filter = filter.add_directive(
            "jina_engine::model=trace"
                .parse()
                .expect("a valid directive"),
        );
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_filter(printed(level));
    let registry = tracing_subscriber::registry().with(filter).with(fmt);
    // A second install (tests calling `run` twice) keeps the first.
    let _ = match &times {
        Some(times) => registry.with(times.clone()).try_init(),
        None => registry.try_init(),
    };
    times
}

/// What the fmt layer prints: the chosen level, or all that `RUST_LOG` lets through. Profiling
/// lets the engine's TRACE spans through the global filter; this keeps them out of the log.
fn printed(level: &str) -> tracing_subscriber::filter::Targets {
    let default = match std::env::var_os("RUST_LOG") {
        Some(_) => tracing::Level::TRACE,
        None => level.parse().unwrap_or(tracing::Level::WARN),
    };
    tracing_subscriber::filter::Targets::new().with_default(default)
}

/// Busy time per span name, summed over every span of that name.
#[derive(Clone, Default)]
pub struct SpanTimes {
    totals: Arc<Mutex<BTreeMap<&'static str, Duration>>>,
}

/// When the span was last entered.
struct Entered(Instant);

impl SpanTimes {
    /// The totals so far, largest first, and clears them.
    pub fn take(&self) -> Vec<(&'static str, Duration)> {
        let mut totals: Vec<_> =
            std::mem::take(&mut *self.totals.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        totals.sort_by_key(|e| std::cmp::Reverse(e.1));
        totals
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanTimes {
    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().replace(Entered(Instant::now()));
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(Entered(start)) = span.extensions_mut().remove::<Entered>() else {
            return;
        };
        let mut totals = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        *totals.entry(span.name()).or_default() += start.elapsed();
    }
}
