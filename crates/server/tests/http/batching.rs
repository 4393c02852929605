//! Dynamic batching: concurrent requests with mixed tasks give the results they give alone;
//! a large client batch is split by the token budget; a client that goes away costs no more
//! forward passes.

use std::time::{Duration, Instant};

use jina_engine::{EmbedRequest, LateChunking};
use jina_server::ServerLimits;
use serde_json::{json, Value};

use crate::common::{
    config, embeddings_of, max_abs_diff, metric_value, model, post, words, TestServer,
};

fn mixed_requests() -> Vec<Value> {
    let tasks = [
        "retrieval.query",
        "retrieval.passage",
        "text-matching",
        "classification",
        "separation",
        "none",
    ];
    let mut out = Vec::new();
    for i in 0..18 {
        let task = tasks[i % tasks.len()];
        let inputs: Vec<String> = (0..(1 + i % 4))
            .map(|j| format!("request {i} input {j}: {}", words(3 + 7 * j + i)))
            .collect();
        let mut body = json!({"input": inputs, "task": task});
        if i % 3 == 1 {
            body["dimensions"] = json!(32 + i);
        }
        if i % 5 == 2 {
            body["late_chunking"] = json!(true);
        }
        if i % 4 == 3 {
            body["normalized"] = json!(false);
        }
        out.push(body);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_mixed_tasks_equal_sequential_results() {
    let mut config = config();
    // A small budget so that concurrent requests share forward passes and big ones are split.
    config.limits = ServerLimits {
        max_batch_tokens: 96,
        ..ServerLimits::default()
    };
    let server = TestServer::in_process(config);
    let url = format!("{}/v1/embeddings", server.url);
    let requests = mixed_requests();

    let mut sequential = Vec::new();
    for body in &requests {
        let reply = post(&url, body).await;
        assert_eq!(reply.status, 200, "{body}: {}", reply.text);
        sequential.push(reply.body);
    }
    let batches_before = metric_value(&server.metrics().await, "jina_batch_size_count");

    let handles: Vec<_> = requests
        .iter()
        .cloned()
        .map(|body| {
            let url = url.clone();
            tokio::spawn(async move { post(&url, &body).await })
        })
        .collect();
    let mut concurrent = Vec::new();
    for handle in handles {
        let reply = handle.await.expect("join");
        assert_eq!(reply.status, 200, "{}", reply.text);
        concurrent.push(reply.body);
    }

    let mut worst = 0f32;
    for (i, (a, b)) in sequential.iter().zip(&concurrent).enumerate() {
        assert_eq!(a["usage"], b["usage"], "request {i} usage");
        let (a, b) = (embeddings_of(a), embeddings_of(b));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            worst = worst.max(max_abs_diff(x, y));
        }
    }
    assert!(
        worst <= 1e-6,
        "concurrent results differ from sequential ones by {worst:e}"
    );

    // And both equal the engine run directly.
    for (body, reply) in requests.iter().zip(&sequential) {
        let inputs: Vec<String> = serde_json::from_value(body["input"].clone()).expect("inputs");
        let expected = model()
            .embed(&EmbedRequest {
                inputs,
                task: Some(body["task"].as_str().expect("task").to_string()),
                dimensions: body["dimensions"].as_u64().map(|d| d as usize),
                normalized: body["normalized"].as_bool().unwrap_or(true),
                late_chunking: if body["late_chunking"] == true {
                    LateChunking::On
                } else {
                    LateChunking::Off
                },
                truncate: false,
            })
            .expect("engine");
        for (x, y) in embeddings_of(reply).iter().zip(&expected.embeddings) {
            let scale = crate::common::norm(y).max(1.0);
            assert!(max_abs_diff(x, y) <= 1e-5 * scale, "{body}");
        }
        assert_eq!(reply["usage"]["total_tokens"], expected.total_tokens);
    }

    let metrics = server.metrics().await;
    let batches = metric_value(&metrics, "jina_batch_size_count") - batches_before;
    let sequences: f64 = requests
        .iter()
        .map(|b| {
            if b["late_chunking"] == true {
                1.0
            } else {
                b["input"].as_array().map_or(0, Vec::len) as f64
            }
        })
        .sum();
    assert!(
        batches < sequences,
        "concurrent sequences shared forward passes ({batches} passes for {sequences} sequences)"
    );
    assert!(
        metrics.contains("jina_tokens_total{task=\"retrieval.query\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "jina_requests_total{route=\"/v1/embeddings\",status=\"200\",task=\"separation\"} 6"
        ),
        "{metrics}"
    );
}

/// A client batch larger than the token budget is split into several forward passes, never
/// refused for its size, and comes back in input order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_client_batch_is_split_by_the_token_budget() {
    let mut config = config();
    config.limits = ServerLimits {
        max_batch_tokens: 64,
        ..ServerLimits::default()
    };
    let server = TestServer::in_process(config);
    let inputs: Vec<String> = (0..40).map(|i| format!("{i} {}", words(i % 13))).collect();
    let reply = post(
        &format!("{}/v1/embeddings", server.url),
        &json!({"input": inputs, "task": "retrieval.passage"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let expected = model()
        .embed(&EmbedRequest::new(inputs).with_task("retrieval.passage"))
        .expect("engine");
    let got = embeddings_of(&reply.body);
    assert_eq!(got.len(), 40);
    for (i, (x, y)) in got.iter().zip(&expected.embeddings).enumerate() {
        assert!(
            max_abs_diff(x, y) <= 1e-5,
            "input {i} out of order or wrong"
        );
    }
    let metrics = server.metrics().await;
    let passes = metric_value(&metrics, "jina_batch_size_count");
    let tokens = metric_value(&metrics, "jina_forward_tokens_total");
    assert_eq!(tokens as usize, expected.total_tokens);
    assert!(
        passes >= (expected.total_tokens as f64 / 64.0).ceil(),
        "{passes} passes for {tokens} tokens"
    );
    // Every pass stayed within the budget (no single sequence here is longer than it).
    assert_eq!(
        metric_value(&metrics, "jina_batch_tokens_bucket{le=\"64\"}"),
        passes
    );
}

/// A request whose client went away while it waited in the queue is dropped before it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_its_queued_work() {
    let mut config = config();
    // 256-token passes: the long request's ~100-token sequences go two per pass, and the
    // 200-token sequence of the short request never fits beside them.
    config.limits = ServerLimits {
        max_batch_tokens: 256,
        max_inputs_per_request: 4096,
        ..ServerLimits::default()
    };
    let server = TestServer::in_process(config);
    let url = format!("{}/v1/embeddings", server.url);

    let long_inputs: Vec<String> = (0..1500).map(|i| format!("{i} {}", words(96))).collect();
    let long = tokio::spawn({
        let url = url.clone();
        async move {
            let reply = post(&url, &json!({"input": long_inputs, "task": "none"})).await;
            (reply, Instant::now())
        }
    });
    crate::common::wait_for_metrics(&server, "the long request to start", |m| {
        metric_value(m, "jina_forward_tokens_total") > 0.0
    })
    .await;

    let queued = tokio::spawn({
        let url = url.clone();
        async move { post(&url, &json!({"input": [words(198)], "task": "none"})).await }
    });
    crate::common::wait_for_metrics(&server, "both requests in flight", |m| {
        m.contains("\njina_in_flight_requests 2\n")
    })
    .await;
    // Tokenising one input takes well under this; then the request sits behind the long one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    queued.abort();
    let aborted_at = Instant::now();
    assert!(queued.await.unwrap_err().is_cancelled());

    let (reply, finished_at) = long.await.expect("join");
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(
        finished_at > aborted_at,
        "the long request finished before the abort: make it longer so that the cancelled one was still queued"
    );
    crate::common::wait_for_metrics(&server, "the cancellation", |m| {
        metric_value(m, "jina_cancelled_requests_total") == 1.0
    })
    .await;
    let metrics = server.metrics().await;
    assert_eq!(
        metric_value(&metrics, "jina_cancelled_sequences_total"),
        1.0
    );
    assert_eq!(
        metric_value(&metrics, "jina_forward_tokens_total"),
        reply.body["usage"]["total_tokens"].as_f64().expect("usage"),
        "only the long request's tokens ran"
    );
    assert_eq!(metric_value(&metrics, "jina_queued_sequences"), 0.0);
    assert!(
        metrics
            .contains("jina_requests_total{route=\"/v1/embeddings\",status=\"499\",task=\"-\"} 1"),
        "{metrics}"
    );
    assert_eq!(metric_value(&metrics, "jina_in_flight_requests"), 0.0);
}
