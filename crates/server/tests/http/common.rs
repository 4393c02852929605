//! Shared helpers: the small fixture, the golden file, servers, and small HTTP helpers
//! (including a raw connection that can hold a request in flight).
//!
//! A [`TestServer`] is either in-process (the router called with `tower::ServiceExt::oneshot`,
//! no socket: [`TestServer::in_process`] with the real engine on the fixture,
//! [`TestServer::fake`] with a [`crate::fake::FakeRunner`]) or a real server on 127.0.0.1 port
//! 0 ([`TestServer::start`], [`TestServer::ready`]) for what needs a socket: shutdown and
//! drain, disconnects, slow bodies, raw bytes, real HTTP clients. The helpers ([`post`],
//! [`post_with`], [`get_with`], [`send`]) take the server's `url`; an in-process server's url
//! is `http://in-process-N` and they dispatch to its router.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::Router;
use jina_engine::fixture::{write_fixture, FixtureShape};
use jina_engine::Model;
use jina_server::{serve_with, AppState, BatchRunner, ServerConfig};
use serde::Deserialize;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tower::ServiceExt as _;

/// The small formula checkpoint with seed 1, generated once into the target folder and reused
/// by later runs (a marker file says it is complete).
pub fn fixture_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dir = root.join("jina-server-small-seed1");
        if dir.join("complete").exists() {
            return dir;
        }
        let staging = root.join(format!("jina-server-small-seed1.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        write_fixture(&staging, FixtureShape::SMALL, 1).expect("write the small fixture");
        std::fs::write(staging.join("complete"), b"").expect("mark the fixture complete");
        let _ = std::fs::remove_dir_all(&dir);
        if std::fs::rename(&staging, &dir).is_err() {
            // Another test binary won the race: use its copy.
            let _ = std::fs::remove_dir_all(&staging);
        }
        assert!(
            dir.join("complete").exists(),
            "fixture at {}",
            dir.display()
        );
        dir
    })
}

/// The engine on the same fixture, for reference results.
pub fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::load(fixture_dir()).expect("load the small fixture"))
}

/// One case of `golden-small.json`.
#[derive(Debug, Deserialize)]
pub struct GoldenCase {
    pub task: Option<String>,
    pub dimensions: Option<usize>,
    pub normalized: bool,
    pub late_chunking: bool,
    pub input: Vec<String>,
    pub tokens: Option<Vec<usize>>,
    pub total_tokens: Option<usize>,
    pub embeddings: Vec<Vec<f32>>,
}

#[derive(Debug, Deserialize)]
pub struct Golden {
    pub variant: String,
    pub seed: u64,
    pub cases: Vec<GoldenCase>,
}

/// The engine's vendored golden file.
pub fn golden() -> Golden {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/golden-small.json");
    serde_json::from_str(&std::fs::read_to_string(&path).expect("read golden-small.json"))
        .expect("parse golden")
}

/// Largest absolute difference between two vectors (lengths must match).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "vector lengths");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Euclidean norm.
pub fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// Decodes a base64 embedding (little-endian f32).
pub fn decode_base64(s: &str) -> Vec<f32> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("valid base64");
    assert_eq!(bytes.len() % 4, 0, "base64 holds whole f32s");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A JSON array of numbers as f32s.
pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The `embedding` of every `data` item of a response, in order, decoded when base64.
pub fn embeddings_of(body: &Value) -> Vec<Vec<f32>> {
    let data = body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data in {body}"));
    data.iter()
        .enumerate()
        .map(|(i, item)| {
            assert_eq!(item["index"], i, "data is in input order");
            assert_eq!(item["object"], "embedding");
            match &item["embedding"] {
                Value::String(s) => decode_base64(s),
                other => floats(other),
            }
        })
        .collect()
}

/// A server: in-process (a router) or on its own thread and runtime, bound to 127.0.0.1 port 0.
pub struct TestServer {
    /// The socket address (`0.0.0.0:0` for an in-process server: it has none).
    pub addr: SocketAddr,
    pub url: String,
    /// The state of an in-process server.
    pub state: Option<Arc<AppState>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

/// The routers of in-process servers, by the number in their url.
static ROUTERS: Mutex<Vec<Router>> = Mutex::new(Vec::new());

const IN_PROCESS: &str = "http://in-process-";

impl TestServer {
    /// An in-process server over `runner`, ready at once.
    pub fn with_runner(config: ServerConfig, runner: Arc<dyn BatchRunner>) -> TestServer {
        let state = AppState::new(config);
        state.start(runner).expect("start the scheduler");
        let router = jina_server::routes::router(state.clone());
        let mut routers = ROUTERS.lock().unwrap_or_else(|p| p.into_inner());
        routers.push(router);
        TestServer {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            url: format!("{IN_PROCESS}{}", routers.len() - 1),
            state: Some(state),
            shutdown: None,
            thread: None,
        }
    }

    /// An in-process server with the real engine on `config.model_dir`, loaded and warmed up.
    pub fn in_process(config: ServerConfig) -> TestServer {
        let runner = jina_server::load_engine(&config).expect("load the engine");
        TestServer::with_runner(config, runner)
    }

    /// An in-process server over a fake runner.
    pub fn fake(config: ServerConfig, fake: Arc<crate::fake::FakeRunner>) -> TestServer {
        TestServer::with_runner(config, fake)
    }

    /// Starts a server (without waiting for the model).
    pub fn start(config: ServerConfig) -> TestServer {
        TestServer::start_with(config, jina_server::load_engine)
    }

    /// Starts a server on a socket over a fake runner (ready once `/health` is 200).
    pub fn start_fake(config: ServerConfig, fake: Arc<crate::fake::FakeRunner>) -> TestServer {
        TestServer::start_with(config, move |_: &ServerConfig| {
            Ok(fake as Arc<dyn BatchRunner>)
        })
    }

    /// Starts a server on a socket whose model comes from `loader`.
    pub fn start_with<L>(config: ServerConfig, loader: L) -> TestServer
    where
        L: FnOnce(&ServerConfig) -> anyhow::Result<Arc<dyn BatchRunner>> + Send + 'static,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("test-server-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                let result = runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    serve_with(listener, config, loader, async move {
                        let _ = rx.await;
                    })
                    .await
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
                result
            })
            .expect("spawn the server thread");
        TestServer {
            addr,
            url: format!("http://{addr}"),
            state: None,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// Starts a server and waits until `/health` is 200.
    pub async fn ready(config: ServerConfig) -> TestServer {
        let server = TestServer::start(config);
        server.wait_ready().await;
        server
    }

    /// Polls `/health` until 200 (30 s at most).
    pub async fn wait_ready(&self) {
        if self.state.is_some() {
            return;
        }
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{}/health", self.url)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the server did not become ready in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends the shutdown signal.
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Signals shutdown and waits for `serve` to return (at most `timeout`); an in-process
    /// server only marks itself as stopping.
    pub async fn stop(mut self, timeout: Duration) -> anyhow::Result<()> {
        if let Some(state) = &self.state {
            state.begin_shutdown();
            return Ok(());
        }
        self.signal_shutdown();
        let thread = self.thread.take().expect("not stopped yet");
        let joined =
            tokio::time::timeout(timeout, tokio::task::spawn_blocking(move || thread.join()))
                .await
                .expect("serve returned within the timeout")
                .expect("join task");
        joined.expect("the server thread did not panic")
    }

    /// Whether the server thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// The server's `/metrics` text.
    pub async fn metrics(&self) -> String {
        get_with(&format!("{}/metrics", self.url), &[]).await.text
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.signal_shutdown();
    }
}

/// The value of the first sample line named exactly `name` (labels included when given).
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("metric {name} not found in\n{text}"))
        .trim()
        .parse()
        .expect("numeric metric")
}

/// A shared in-process server with the real engine and the default configuration (one per
/// test binary).
pub async fn shared() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| TestServer::in_process(config()))
}

/// A shared server on a socket with the default configuration (one per test binary), for raw
/// bytes and real clients.
pub async fn shared_socket() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    let server = SERVER.get_or_init(|| TestServer::start(config()));
    server.wait_ready().await;
    server
}

/// The default config on the fixture.
pub fn config() -> ServerConfig {
    ServerConfig::new(fixture_dir().to_path_buf())
}

/// A response: status, headers and JSON body (`Null` when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

/// Posts `body` as JSON to `url`.
pub async fn post(url: &str, body: &Value) -> Reply {
    post_with(url, body, &[]).await
}

/// Posts `body` as JSON to `url` with extra headers.
pub async fn post_with(url: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    send("POST", url, &all, Some(body.to_string().into_bytes())).await
}

/// GET with extra headers.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Reply {
    send("GET", url, headers, None).await
}

/// Any request: to the router of an in-process server, or over HTTP.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Reply {
    if let Some(rest) = url.strip_prefix(IN_PROCESS) {
        let (index, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let router = ROUTERS.lock().unwrap_or_else(|p| p.into_inner())
            [index.parse::<usize>().expect("in-process server number")]
        .clone();
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(if path.is_empty() { "/" } else { path });
        if let Some(body) = &body {
            request = request.header("content-length", body.len());
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request
            .body(axum::body::Body::from(body.unwrap_or_default()))
            .expect("a request");
        let response = router.oneshot(request).await.expect("infallible");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("the response body")
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        return Reply {
            status,
            headers,
            body,
            text,
        };
    }
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
    let mut request = reqwest::Client::new().request(method, url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    reply(request.send().await.expect("send")).await
}

async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
        text,
    }
}

/// A raw HTTP/1.1 connection that sends a request's headers and only part of its body, so the
/// request stays in flight (admitted, waiting for its body) until [`Held::finish`].
pub struct Held {
    stream: tokio::net::TcpStream,
    rest: Vec<u8>,
}

impl Held {
    /// Opens the request `POST path` with `body`, sending all but the last byte.
    pub async fn open(addr: SocketAddr, path: &str, body: &Value) -> Held {
        Held::open_with(addr, path, body, &[]).await
    }

    /// As [`Held::open`], with extra headers.
    pub async fn open_with(
        addr: SocketAddr,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Held {
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

    /// Sends the rest of the body and reads the whole response: (status, JSON body).
    pub async fn finish(mut self) -> (u16, Value) {
        self.stream
            .write_all(&self.rest)
            .await
            .expect("write the rest");
        self.response().await
    }

    /// Reads the whole response without sending the rest of the body.
    pub async fn response(mut self) -> (u16, Value) {
        let mut raw = Vec::new();
        self.stream
            .read_to_end(&mut raw)
            .await
            .expect("read the response");
        parse_http_response(&raw)
    }
}

/// Parses a `Connection: close` HTTP/1.1 response (plain or chunked body).
pub fn parse_http_response(raw: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status in {head:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        body.to_string()
    };
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Polls `cond` on the server's metrics text until it holds (10 s at most).
pub async fn wait_for_metrics(server: &TestServer, what: &str, cond: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = server.metrics().await;
        if cond(&text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A text of about `n` tokens ("word" repeated).
pub fn words(n: usize) -> String {
    vec!["word"; n].join(" ")
}
