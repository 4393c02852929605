//! Faults and hostile input (issue 6): clients that go away or trickle, bodies that are too
//! large, not UTF-8 or nested without end, CORS, a model folder removed under a running
//! server. SIGTERM under load is tested on the real binary (`crates/cli/tests/serve.rs`), the
//! short `jina-loadgen` run in `crates/loadgen/tests/load.rs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use jina_server::ServerLimits;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{
    config, fixture_dir, metric_value, parse_http_response, post, post_with, send,
    wait_for_metrics, words, Held, TestServer,
};

/// Sends raw bytes as a POST body and reads the answer.
async fn raw_post(addr: SocketAddr, body: &[u8]) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(body).await.expect("body");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    parse_http_response(&raw)
}

fn detail(body: &Value) -> String {
    body["detail"].as_str().unwrap_or_default().to_string()
}

/// Clients that close their connection mid-body and mid-inference: each is counted as 499,
/// its admission slot comes back, and the server goes on serving at full concurrency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_disconnect_mid_request_leak_nothing() {
    let mut config = config();
    config.limits = ServerLimits {
        max_concurrent_requests: 2,
        max_batch_tokens: 512,
        ..ServerLimits::default()
    };
    let server = TestServer::ready(config).await;
    for _ in 0..5 {
        // Mid-body: headers and all but one byte, then gone.
        let held = Held::open(
            server.addr,
            "/v1/embeddings",
            &json!({"input": "never finished"}),
        )
        .await;
        wait_for_metrics(&server, "the held request admitted", |m| {
            m.contains("\njina_in_flight_requests 1\n")
        })
        .await;
        drop(held);
        wait_for_metrics(&server, "its slot back", |m| {
            m.contains("\njina_in_flight_requests 0\n")
        })
        .await;

        // Mid-inference: a whole request of many sequences, then gone before the answer.
        let body = serde_json::to_vec(&json!({"input": vec![words(400); 24]})).expect("json");
        let mut stream = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        let head = format!("POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
        stream.write_all(head.as_bytes()).await.expect("head");
        // Dropped only once the body is read and the request queued (else it is a body-read 400).
        let ran_before = metric_value(&server.metrics().await, "jina_forward_tokens_total");
        stream.write_all(&body).await.expect("body");
        wait_for_metrics(&server, "sequences queued", |m| {
            metric_value(m, "jina_queued_sequences") > 0.0
                || metric_value(m, "jina_forward_tokens_total") > ran_before
        })
        .await;
        drop(stream);
        wait_for_metrics(&server, "the slot back after the disconnect", |m| {
            m.contains("\njina_in_flight_requests 0\n")
        })
        .await;
        // The scheduler drops a cancelled request between forward passes, so its queued
        // sequences leave the gauge once the pass under way (if any) ends, not at once.
        wait_for_metrics(&server, "no queued sequences left behind", |m| {
            metric_value(m, "jina_queued_sequences") == 0.0
        })
        .await;
    }
    let m = server.metrics().await;
    let abandoned: f64 = m
        .lines()
        .filter(|l| l.starts_with("jina_requests_total{") && l.contains("status=\"499\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // Inference dropped (499) five times; the mid-body drops end as a body-read 400 that nobody reads.
    assert_eq!(
        abandoned, 5.0,
        "every disconnect after the body counted as 499:\n{m}"
    );
    assert!(
        m.contains("jina_requests_total{route=\"/v1/embeddings\",status=\"400\",task=\"-\"} 5\n"),
        "{m}"
    );
    // Both slots are free: two requests at once are both served.
    let url = format!("{}/v1/embeddings", server.url);
    let (one, two) = (json!({"input": "one"}), json!({"input": "two"}));
    let (a, b) = tokio::join!(post(&url, &one), post(&url, &two));
    assert_eq!((a.status, b.status), (200, 200), "{} {}", a.text, b.text);
}

/// A body that trickles in (one byte every 50 ms) is cut off at `body_timeout` with 408: the
/// timeout bounds the whole body, not the gap between bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_body_is_408_at_the_body_timeout() {
    let mut config = config();
    config.limits = ServerLimits {
        body_timeout: Duration::from_millis(500),
        ..ServerLimits::default()
    };
    let server = TestServer::ready(config).await;
    let body = serde_json::to_vec(&json!({"input": words(100)})).expect("json");
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let head = format!("POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    stream.write_all(head.as_bytes()).await.expect("head");
    let started = Instant::now();
    for byte in &body {
        if stream.write_all(&[*byte]).await.is_err() {
            break; // the server answered and closed
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let (status, body) = parse_http_response(&raw);
    assert_eq!(status, 408, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered after {:?}",
        started.elapsed()
    );
}

/// A chunked body without Content-Length that grows past the limit is refused with 413 once the
/// limit is crossed, while the client is still sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_chunked_body_is_413() {
    let mut config = config();
    config.limits = ServerLimits {
        payload_limit: 64 * 1024,
        ..ServerLimits::default()
    };
    let server = TestServer::ready(config).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .await
        .expect("head");
    let chunk = format!("{:x}\r\n{}\r\n", 8192, "a".repeat(8192));
    let mut sent = 0usize;
    // Up to 64 MiB: far more than the limit; the server must answer long before.
    while sent < 64 << 20 {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
        sent += 8192;
        if sent > 1 << 20 {
            break;
        }
    }
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let (status, body) = parse_http_response(&raw);
    assert_eq!(status, 413, "{body}");
    assert!(detail(&body).contains("limit of 65536 bytes"), "{body}");
}

/// Bytes that are not UTF-8, inside a string or as the whole body, are 400 (malformed JSON),
/// never a 500 or a lossy embedding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_400() {
    let server = crate::common::shared_socket().await;
    for body in [
        &b"{\"input\": \"caf\xe9\"}"[..],
        b"\xff\xfe\x00{}",
        b"{\"input\": [\"ok\", \"\xc3\x28\"]}",
    ] {
        let (status, reply) = raw_post(server.addr, body).await;
        assert_eq!(status, 400, "{reply}");
        assert!(detail(&reply).contains("not valid JSON"), "{reply}");
    }
}

/// Nesting is bounded before parsing: 33 levels and more are refused with 400 by the byte scan
/// (below serde_json's own limit of 128, so this fails if the scan is removed), a million
/// levels cannot overflow the stack, and a body at the bound still reaches the field check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_is_400_before_parsing() {
    let server = crate::common::shared_socket().await;
    let nested = |depth: usize| {
        format!(
            "{{\"input\": {}\"a\"{}}}",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
        .into_bytes()
    };
    let (status, reply) = raw_post(server.addr, &nested(100)).await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        detail(&reply).contains("nest deeper than 32 levels"),
        "{reply}"
    );
    let (status, reply) = raw_post(server.addr, &nested(1_000_000)).await;
    assert_eq!(status, 400, "{reply}");
    // Brackets inside strings do not count.
    let in_string = format!("{{\"input\": \"{}\"}}", "[{".repeat(500));
    assert_eq!(raw_post(server.addr, in_string.as_bytes()).await.0, 200);
    // At the bound: parsed, then refused by the field check (422), not by the depth scan.
    let (status, reply) = raw_post(server.addr, &nested(32)).await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(
        post(
            &format!("{}/v1/embeddings", server.url),
            &json!({"input": "still alive"})
        )
        .await
        .status,
        200
    );
}

/// CORS is off by default (no header, a preflight is 405) and on for the listed origins only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_off_unless_an_origin_is_allowed() {
    let preflight = |url: String| async move {
        send(
            "OPTIONS",
            &url,
            &[
                ("Origin", "https://app.example"),
                ("Access-Control-Request-Method", "POST"),
            ],
            None,
        )
        .await
    };
    let post_from = |url: String, origin: &'static str, key: Option<&'static str>| async move {
        let bearer = key.map(|k| format!("Bearer {k}"));
        let mut headers = vec![("Origin", origin)];
        if let Some(bearer) = &bearer {
            headers.push(("Authorization", bearer.as_str()));
        }
        post_with(&url, &json!({"input": "a"}), &headers).await
    };

    let off = crate::common::shared().await;
    let reply = post_from(
        format!("{}/v1/embeddings", off.url),
        "https://app.example",
        None,
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.headers.get("access-control-allow-origin").is_none(),
        "CORS header without the flag"
    );
    assert_eq!(
        preflight(format!("{}/v1/embeddings", off.url)).await.status,
        405
    );

    let mut config = config();
    config.cors_allow_origins = jina_server::cors::CorsOrigins::new(["https://app.example"]);
    config.api_keys = jina_server::ApiKeys::new(["k"]);
    let on = TestServer::in_process(config);
    let reply = preflight(format!("{}/v1/embeddings", on.url)).await;
    assert_eq!(reply.status, 204, "a preflight needs no key");
    assert_eq!(
        reply.headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(reply.headers["access-control-allow-headers"]
        .to_str()
        .unwrap_or_default()
        .contains("authorization"));
    let reply = post_from(
        format!("{}/v1/embeddings", on.url),
        "https://app.example",
        Some("k"),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let reply = post_from(
        format!("{}/v1/embeddings", on.url),
        "https://evil.example",
        None,
    )
    .await;
    assert_eq!(reply.status, 401, "the key is still required");
    assert!(
        reply.headers.get("access-control-allow-origin").is_none(),
        "another origin is not allowed"
    );
}

/// The model folder removed after the server is ready: requests are still served (the weights
/// are mapped, the tokenizer and config are in memory).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_folder_removed_after_start_is_still_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("model");
    std::fs::create_dir(&model).expect("mkdir");
    for file in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(fixture_dir().join(file), model.join(file)).expect("copy");
    }
    let mut config = config();
    config.model_dir = model.clone();
    let server = TestServer::ready(config).await;
    let url = format!("{}/v1/embeddings", server.url);
    let before = post(
        &url,
        &json!({"input": ["before", words(300)], "task": "retrieval.query"}),
    )
    .await;
    assert_eq!(before.status, 200, "{}", before.text);
    std::fs::remove_dir_all(&model).expect("remove the model folder");
    assert!(!model.exists());
    for _ in 0..3 {
        let after = post(
            &url,
            &json!({"input": ["before", words(300)], "task": "retrieval.query"}),
        )
        .await;
        assert_eq!(after.status, 200, "{}", after.text);
        assert_eq!(
            after.body["data"], before.body["data"],
            "the same embeddings after the removal"
        );
    }
    let tokens = post(
        &format!("{}/tokenize", server.url),
        &json!({"input": "a b c"}),
    )
    .await;
    assert_eq!(tokens.status, 200, "{}", tokens.text);
    server
        .stop(Duration::from_secs(10))
        .await
        .expect("clean stop");
}
