//! `jina-embed serve` as a real process on the small formula checkpoint: what the process owns
//! (flags, log subscriber, runtime, signals, SageMaker's port variable). SIGTERM and SIGINT stop
//! it with exit 0 after finishing the requests in flight; SIGTERM under load loses no accepted
//! request; `SAGEMAKER_BIND_TO_PORT` wins over `--port`. The HTTP behaviour itself is tested
//! in-process in `crates/server/tests/http`.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

fn fixture() -> &'static Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| common::small_fixture("cli-serve-small-fixture"))
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

/// A running `jina-embed serve`: the child, its address and its stderr lines (JSON logs), also
/// collected for the end of the test.
struct Served {
    child: ChildGuard,
    addr: String,
    lines: std::sync::mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<Vec<String>>>,
}

/// Starts `jina-embed serve --model <fixture> --log-format json <extra>` with `env` and waits
/// until `/health` is 200.
async fn spawn_serve(extra: &[&str], env: &[(&str, &str)]) -> Served {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jina-embed"));
    command
        .arg("serve")
        .arg("--model")
        .arg(fixture())
        .args(["--log-format", "json"])
        .args(extra)
        .env("RUST_LOG", "info")
        .env_remove("SAGEMAKER_BIND_TO_PORT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = ChildGuard(command.spawn().expect("start jina-embed serve"));
    let stderr = child.0.stderr.take().expect("stderr");
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line.clone());
            all.push(line);
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a listening line");
        if let Some(addr) = serde_json::from_str::<Value>(&line)
            .ok()
            .and_then(|v| v["fields"]["address"].as_str().map(String::from))
        {
            break addr;
        }
    };
    let client = reqwest::Client::new();
    while client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok()
        != Some(200)
    {
        assert!(Instant::now() < deadline, "the server did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Served {
        child,
        addr,
        lines,
        reader: Some(reader),
    }
}

impl Served {
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.0.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for a log line containing `needle`.
    fn wait_line(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no log line with {needle:?}"))
            .contains(needle)
        {}
    }

    async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(exit) = self.child.0.try_wait().expect("wait") {
                return exit;
            }
            assert!(Instant::now() < deadline, "the server did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every stderr line, once the process has exited.
    fn logs(&mut self) -> Vec<String> {
        self.reader
            .take()
            .map(|r| r.join().expect("reader"))
            .unwrap_or_default()
    }

    async fn wait_in_flight(&self, at_least: f64) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = client
                .get(format!("http://{}/metrics", self.addr))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text");
            if metric_value(&m, "jina_in_flight_requests") >= at_least {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the held requests were not admitted:\n{m}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The value of the first sample line named exactly `name`.
fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("metric {name} not found in\n{text}"))
        .trim()
        .parse()
        .expect("numeric metric")
}

/// A text of about `n` tokens.
fn words(n: usize) -> String {
    vec!["word"; n].join(" ")
}

/// A raw HTTP/1.1 request whose body is sent but for its last byte, so it stays in flight
/// (admitted, waiting for its body) until [`Held::finish`].
struct Held {
    stream: tokio::net::TcpStream,
    rest: Vec<u8>,
}

impl Held {
    async fn open(addr: SocketAddr, path: &str, body: &Value, headers: &[(&str, &str)]) -> Held {
        let body = serde_json::to_vec(body).expect("json");
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.expect("write head");
        let (first, rest) = body.split_at(body.len() - 1);
        stream.write_all(first).await.expect("write body");
        stream.flush().await.expect("flush");
        Held {
            stream,
            rest: rest.to_vec(),
        }
    }

    /// Sends the last byte and reads the response: (status, JSON body).
    async fn finish(mut self) -> (u16, Value) {
        self.stream
            .write_all(&self.rest)
            .await
            .expect("write the rest");
        let mut raw = Vec::new();
        self.stream
            .read_to_end(&mut raw)
            .await
            .expect("read the response");
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").expect("a header end");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status");
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }
}

/// SIGTERM and SIGINT: the request in flight during the signal is answered, the process exits
/// 0, nothing listens afterwards; one structured info line per request, never the API key.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_stop_the_real_server_and_exit_0() {
    const KEY: &str = "secret-key-4b1d";
    for signal in ["TERM", "INT"] {
        let mut served = spawn_serve(
            &[
                "--port",
                "0",
                "--api-key",
                KEY,
                "--threads",
                "2",
                "--shutdown-grace",
                "20",
                "--served-model-name",
                "served-name",
            ],
            &[],
        )
        .await;
        let addr = served.addr.clone();
        let server_url = format!("http://{addr}");
        let client = reqwest::Client::new();
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
        let held = Held::open(
            addr.parse().expect("socket address"),
            "/v1/embeddings",
            &json!({"input": "in flight during the signal"}),
            &[
                ("Authorization", bearer.as_str()),
                ("X-Request-Id", "held-request"),
            ],
        )
        .await;
        served.wait_in_flight(1.0).await;
        served.signal(signal);
        // The signal is handled while the request is still in flight: wait for its log line.
        served.wait_line("shutting down");
        let (status, body) = held.finish().await;
        assert_eq!(
            status, 200,
            "SIG{signal}: the request in flight was finished: {body}"
        );
        let exit = served.wait_exit(Duration::from_secs(20)).await;
        let logs = served.logs();
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

/// SIGTERM under load: 12 requests admitted (their bodies held back) and 4 clients sending
/// real requests in a loop. After the signal every admitted request completes with 200, no
/// request gets a 5xx other than 503, and the process exits 0.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_every_accepted_request() {
    let mut served = spawn_serve(
        &["--port", "0", "--threads", "2", "--shutdown-grace", "30"],
        &[],
    )
    .await;
    let socket: SocketAddr = served.addr.parse().expect("address");
    let url = format!("http://{}/v1/embeddings", served.addr);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loaders = Vec::new();
    for i in 0..4 {
        let (url, stop) = (url.clone(), stop.clone());
        loaders.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body =
                    json!({"input": [words(50 + 100 * i), "short"], "task": "retrieval.passage"});
                match client.post(&url).json(&body).send().await {
                    Ok(r) => statuses.push(r.status().as_u16()),
                    // Refused or closed before the request was accepted: the listener is gone.
                    Err(_) => break,
                }
            }
            statuses
        }));
    }
    let mut held = Vec::new();
    for i in 0..12 {
        held.push(
            Held::open(
                socket,
                "/v1/embeddings",
                &json!({"input": [format!("held {i}"), words(200)]}),
                &[],
            )
            .await,
        );
    }
    served.wait_in_flight(12.0).await;
    served.signal("TERM");
    served.wait_line("shutting down");
    let mut finished = Vec::new();
    for h in held.into_iter().map(|h| tokio::spawn(h.finish())) {
        finished.push(h.await.expect("join"));
    }
    for (i, (status, body)) in finished.iter().enumerate() {
        assert_eq!(*status, 200, "held request {i} after SIGTERM: {body}");
        assert_eq!(body["data"].as_array().map(Vec::len), Some(2));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = Vec::new();
    for loader in loaders {
        all.extend(loader.await.expect("loader"));
    }
    assert!(
        all.iter().all(|&s| s == 200 || s == 503),
        "statuses under load: {all:?}"
    );
    assert!(
        all.iter().filter(|&&s| s == 200).count() > 0,
        "the load ran: {all:?}"
    );
    let exit = served.wait_exit(Duration::from_secs(30)).await;
    assert!(exit.success(), "exit {exit:?}");
}

/// Under SageMaker the port comes from `SAGEMAKER_BIND_TO_PORT` (over `--port`); `/ping` and
/// `/invocations` answer there; the shutdown grace is capped at 25 s (logged); SIGTERM exits 0.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagemaker_bind_to_port_wins_over_port() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        probe.local_addr().expect("addr").port()
    };
    let port_text = port.to_string();
    let mut served = spawn_serve(
        &[
            "--host",
            "127.0.0.1",
            "--port",
            "1",
            "--shutdown-grace",
            "60",
        ],
        &[("SAGEMAKER_BIND_TO_PORT", port_text.as_str())],
    )
    .await;
    assert_eq!(served.addr, format!("127.0.0.1:{port}"));
    let url = format!("http://127.0.0.1:{port}");
    let ping = reqwest::get(format!("{url}/ping")).await.expect("ping");
    assert_eq!(ping.status(), 200);
    let reply = reqwest::Client::new()
        .post(format!("{url}/invocations"))
        .json(&json!({"data": [{"text": "hello"}, {"text": "world"}], "parameters": {"task": "retrieval.query", "dimensions": 16}}))
        .send()
        .await
        .expect("invocations");
    assert_eq!(reply.status(), 200);
    let body: Value = reply.json().await.expect("json");
    let data = body["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["id"], 1);
    assert_eq!(data[1]["embedding"].as_array().map(Vec::len), Some(16));
    served.signal("TERM");
    let exit = served.wait_exit(Duration::from_secs(30)).await;
    let all = served.logs().join("\n");
    assert!(exit.success(), "exit {exit:?}:\n{all}");
    assert!(all.contains("SAGEMAKER_BIND_TO_PORT"), "{all}");
    assert!(all.contains("\"grace_seconds\":25"), "{all}");
}

/// A port variable that is not a port is an error naming it, exit 2.
#[test]
fn a_bad_sagemaker_port_is_an_error_naming_the_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_jina-embed"))
        .arg("serve")
        .arg("--model")
        .arg(fixture())
        .env("SAGEMAKER_BIND_TO_PORT", "eighty")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("SAGEMAKER_BIND_TO_PORT is \"eighty\""),
        "{stderr}"
    );
}
