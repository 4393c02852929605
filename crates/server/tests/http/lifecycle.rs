//! Lifecycle on a socket: `/health` is 503 until the model is loaded; a shutdown stops accepting
//! and finishes the requests in flight within the grace period. The process (signals, exit
//! code, log lines) is tested on the real binary in `crates/cli/tests/serve.rs`.

use std::process::Command;
use std::time::{Duration, Instant};

use jina_server::ServerLimits;
use serde_json::{json, Value};

use std::sync::atomic::Ordering;

use crate::common::{config, embeddings_of, fixture_dir, post, wait_for_metrics, Held, TestServer};
use crate::fake::FakeRunner;

/// `config.json` is a named pipe, so the model load blocks until the test writes it: the server
/// is observed deterministically before and after it is ready.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_until_the_model_is_loaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    for file in ["tokenizer.json", "model.safetensors"] {
        std::os::unix::fs::symlink(fixture_dir().join(file), dir.path().join(file))
            .expect("symlink");
    }
    let fifo = dir.path().join("config.json");
    let status = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo failed");

    let mut config = config();
    config.model_dir = dir.path().to_path_buf();
    let server = TestServer::start(config);
    let url = |p: &str| format!("{}{p}", server.url);

    let health = reqwest::get(url("/health")).await.expect("GET /health");
    assert_eq!(health.status(), 503);
    assert_eq!(
        health.json::<Value>().await.expect("json"),
        json!({"status": "loading"})
    );
    let reply = post(&url("/v1/embeddings"), &json!({"input": "a"})).await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(
        reply
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("loading"),
        "{}",
        reply.text
    );
    // Refused before its body is read: the OpenAI SDK is recognised by its header.
    let reply = crate::common::post_with(
        &url("/v1/embeddings"),
        &json!({"input": "a"}),
        &[("X-Stainless-Lang", "python")],
    )
    .await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.body["error"]["code"], "model_loading",
        "{}",
        reply.text
    );
    assert_eq!(
        reqwest::get(url("/v1/models"))
            .await
            .expect("models")
            .status(),
        503
    );
    assert!(server.metrics().await.contains("\njina_ready 0\n"));

    let config_json = std::fs::read(fixture_dir().join("config.json")).expect("read config");
    tokio::task::spawn_blocking(move || std::fs::write(fifo, config_json))
        .await
        .expect("join")
        .expect("write fifo");
    server.wait_ready().await;
    let health = reqwest::get(url("/health")).await.expect("GET /health");
    assert_eq!(
        health.json::<Value>().await.expect("json"),
        json!({"status": "ok"})
    );
    assert!(server.metrics().await.contains("\njina_ready 1\n"));
    assert_eq!(
        post(&url("/v1/embeddings"), &json!({"input": "a"}))
            .await
            .status,
        200
    );
    server
        .stop(Duration::from_secs(10))
        .await
        .expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_fails_to_load_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config();
    config.model_dir = dir.path().to_path_buf();
    let server = TestServer::start(config);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.is_finished() {
        assert!(Instant::now() < deadline, "serve did not fail");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let error = server
        .stop(Duration::from_secs(5))
        .await
        .expect_err("a missing model is an error");
    assert!(
        format!("{error:#}").contains("config.json is missing"),
        "{error:#}"
    );

    let mut config = crate::common::config();
    config.default_task = "summarize".into();
    let error = TestServer::start(config).stop_after_failure().await;
    assert!(
        error.contains("invalid --default-task") && error.contains("\"summarize\""),
        "{error}"
    );
}

impl TestServer {
    async fn stop_after_failure(self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.is_finished() {
            assert!(Instant::now() < deadline, "serve did not fail");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        format!(
            "{:#}",
            self.stop(Duration::from_secs(5))
                .await
                .expect_err("serve fails")
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_finishes_requests_in_flight() {
    let mut server = TestServer::ready(config()).await;
    let addr = server.addr;
    let held = Held::open(
        addr,
        "/v1/embeddings",
        &json!({"input": ["in flight", "too"], "task": "retrieval.query"}),
    )
    .await;
    wait_for_metrics(&server, "one request in flight", |m| {
        m.contains("\njina_in_flight_requests 1\n")
    })
    .await;

    server.signal_shutdown();
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the server still accepts connections after the shutdown signal"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !server.is_finished(),
        "serve returned before its request in flight finished"
    );

    let (status, body) = held.finish().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(embeddings_of(&body).len(), 2);
    let started = Instant::now();
    server
        .stop(Duration::from_secs(10))
        .await
        .expect("clean stop");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_a_shutdown() {
    let mut config = config();
    config.limits = ServerLimits {
        shutdown_grace: Duration::from_millis(300),
        ..ServerLimits::default()
    };
    let server = TestServer::ready(config).await;
    // A request that never completes its body, from an OpenAI SDK (known by its header).
    let stuck = Held::open_with(
        server.addr,
        "/v1/embeddings",
        &json!({"input": "never sent in full"}),
        &[("X-Stainless-Lang", "python")],
    )
    .await;
    wait_for_metrics(&server, "one request in flight", |m| {
        m.contains("\njina_in_flight_requests 1\n")
    })
    .await;
    let started = Instant::now();
    let stop = tokio::spawn(server.stop(Duration::from_secs(10)));
    // Answered 503 when the grace ends, not left with a closed connection.
    let (status, body) = stuck.response().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "shutting_down", "{body}");
    stop.await
        .expect("join")
        .expect("a stop after the grace period is still Ok");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "stopped after {took:?}, before the grace period"
    );
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
}

/// A request whose batch outlasts the grace period (a fake runner that takes 30 s) is answered
/// 503 in its body's dialect when the grace ends; the server stops without waiting for the
/// batch, and a request that finished before the signal was answered 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_still_running_at_the_end_of_the_grace_is_answered_503() {
    let mut config = config();
    config.limits = ServerLimits {
        shutdown_grace: Duration::from_millis(400),
        ..ServerLimits::default()
    };
    let fake = FakeRunner::new();
    let server = TestServer::start_fake(config, fake.clone());
    server.wait_ready().await;
    let url = format!("{}/v1/embeddings", server.url);
    assert_eq!(post(&url, &json!({"input": "quick"})).await.status, 200);

    fake.set_delay(Duration::from_secs(30));
    // OpenAI's dialect from the body alone: the 503 comes from the embeddings route itself.
    let slow = tokio::spawn(async move {
        post(&url, &json!({"input": "slow", "encoding_format": "float"})).await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fake.running.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the slow batch did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    server
        .stop(Duration::from_secs(10))
        .await
        .expect("a stop after the grace period is still Ok");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "stopped after {took:?}"
    );
    let reply = slow.await.expect("join");
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(
        reply.body["error"]["code"], "shutting_down",
        "{}",
        reply.text
    );
    assert_eq!(
        reply.body["error"]["message"], "the server is shutting down",
        "{}",
        reply.text
    );
}
