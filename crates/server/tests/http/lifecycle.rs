//! Lifecycle: `/health` is 503 until the model is loaded; a shutdown stops accepting and
//! finishes the requests in flight within the grace period; the real `run` stops on SIGTERM
//! and SIGINT and exits 0; one structured log line per request, without the API key.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use jina_server::{ServeArgs, ServerLimits};
use serde_json::{json, Value};

use crate::common::{config, embeddings_of, fixture_dir, post, wait_for_metrics, Held, TestServer};

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
    // A request that never completes its body.
    let _stuck = Held::open(
        server.addr,
        "/v1/embeddings",
        &json!({"input": "never sent in full"}),
    )
    .await;
    wait_for_metrics(&server, "one request in flight", |m| {
        m.contains("\njina_in_flight_requests 1\n")
    })
    .await;
    let started = Instant::now();
    server
        .stop(Duration::from_secs(10))
        .await
        .expect("a stop after the grace period is still Ok");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "stopped after {took:?}, before the grace period"
    );
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,
}

const CHILD_ARGS: &str = "JINA_SERVER_TEST_CHILD_ARGS";

/// Not a test on its own: the body of the child process that
/// [`sigterm_and_sigint_stop_the_real_server_and_exit_0`] starts. It passes (exit code 0) only
/// when `run` returns `Ok`.
#[test]
#[ignore = "helper run in a child process by sigterm_and_sigint_stop_the_real_server_and_exit_0"]
fn child_serve() {
    let args: Vec<String> =
        serde_json::from_str(&std::env::var(CHILD_ARGS).expect("run by the parent test"))
            .expect("args JSON");
    let cli = Cli::parse_from(std::iter::once("serve".to_string()).chain(args));
    jina_server::run(cli.serve).expect("run returns Ok after a graceful stop");
}

/// Kills the child if the test fails half-way.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_stop_the_real_server_and_exit_0() {
    const KEY: &str = "secret-key-4b1d";
    for signal in ["TERM", "INT"] {
        let args = json!([
            "--model",
            fixture_dir(),
            "--port",
            "0",
            "--api-key",
            KEY,
            "--log-format",
            "json",
            "--threads",
            "2",
            "--shutdown-grace",
            "20",
            "--served-model-name",
            "served-name",
        ]);
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--ignored",
                "--exact",
                "lifecycle::child_serve",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ARGS, args.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the child");
        let mut child = ChildGuard(child);
        let stderr = child.0.stderr.take().expect("stderr");
        let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = lines_tx.send(line.clone());
                all.push(line);
            }
            all
        });

        // The address, from the structured "listening" line.
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let line = lines_rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("a listening line");
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if let Some(addr) = v["fields"]["address"].as_str() {
                    break addr.to_string();
                }
            }
        };
        let server_url = format!("http://{addr}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while client
            .get(format!("{server_url}/health"))
            .send()
            .await
            .map(|r| r.status())
            .ok()
            != Some(reqwest::StatusCode::OK)
        {
            assert!(Instant::now() < deadline, "the child did not become ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let reply = client
            .post(format!("{server_url}/v1/embeddings"))
            .bearer_auth(KEY)
            .header("x-request-id", format!("req-{signal}-1"))
            .json(&json!({"input": ["hello"]}))
            .send()
            .await
            .expect("send");
        assert_eq!(reply.status(), 200);
        assert_eq!(
            reply.headers()["x-request-id"],
            format!("req-{signal}-1").as_str()
        );
        let body: Value = reply.json().await.expect("json");
        assert_eq!(body["model"], "served-name");

        let bearer = format!("Bearer {KEY}");
        let held = Held::open_with(
            addr.parse().expect("socket address"),
            "/v1/embeddings",
            &json!({"input": "in flight during the signal"}),
            &[
                ("Authorization", bearer.as_str()),
                ("X-Request-Id", "held-request"),
            ],
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let metrics = client
                .get(format!("{server_url}/metrics"))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text");
            if metrics.contains("\njina_in_flight_requests 1\n") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the held request was not admitted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.0.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
        // The signal is handled while the request is still in flight: wait for its log line.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let line = lines_rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("a shutdown line");
            if line.contains("shutting down") {
                break;
            }
        }
        let (status, body) = held.finish().await;
        assert_eq!(
            status, 200,
            "SIG{signal}: the request in flight was finished: {body}"
        );

        let deadline = Instant::now() + Duration::from_secs(20);
        let exit = loop {
            if let Some(exit) = child.0.try_wait().expect("wait") {
                break exit;
            }
            assert!(
                Instant::now() < deadline,
                "the child did not exit after SIG{signal}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let logs = reader.join().expect("reader");
        assert!(
            exit.success(),
            "SIG{signal}: exit {exit:?}; logs:\n{}",
            logs.join("\n")
        );
        assert!(
            tokio::net::TcpStream::connect(&addr).await.is_err(),
            "nothing listens after the exit"
        );

        let all = logs.join("\n");
        assert!(!all.contains(KEY), "the API key appears in the logs");
        assert!(
            all.contains(&format!("\"signal\":\"SIG{signal}\"")),
            "{all}"
        );
        for id in [format!("req-{signal}-1"), "held-request".to_string()] {
            let lines: Vec<&String> = logs
                .iter()
                .filter(|l| {
                    l.contains(&format!("\"id\":\"{id}\"")) && l.contains("\"message\":\"request\"")
                })
                .collect();
            assert_eq!(lines.len(), 1, "one info line for request {id}:\n{all}");
            let line: Value = serde_json::from_str(lines[0]).expect("JSON log line");
            assert_eq!(line["level"], "INFO");
            assert_eq!(line["fields"]["status"], 200);
            assert_eq!(line["fields"]["task"], "text-matching");
            assert_eq!(line["fields"]["inputs"], 1);
            assert!(line["fields"]["latency_ms"].is_number());
            assert!(line["fields"]["tokens"].as_u64().expect("tokens") > 2);
        }
    }
}
