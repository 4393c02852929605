//! Every error path: status code and a message naming the field, the value and the limit, in
//! the Jina (`{"detail"}`) and the OpenAI (`{"error": {…}}`) dialect.

use std::time::Duration;

use jina_server::ServerLimits;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{
    config, embeddings_of, get_with, parse_http_response, post, post_with, send, shared,
    wait_for_metrics, words, Held, TestServer,
};

fn detail(body: &Value) -> &str {
    body["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("Jina error body expected, got {body}"))
}

/// Asserts a Jina-dialect error: status, and every needle in the message.
async fn jina_error(url: &str, body: Value, status: u16, needles: &[&str]) {
    let reply = post(url, &body).await;
    assert_eq!(reply.status, status, "{body} → {}", reply.text);
    let message = detail(&reply.body);
    for needle in needles {
        assert!(
            message.contains(needle),
            "{body} → {message:?} lacks {needle:?}"
        );
    }
    assert!(reply.body.get("error").is_none());
}

/// Asserts an OpenAI-dialect error: status, param, code, and every needle in the message.
async fn openai_error(
    url: &str,
    body: Value,
    headers: &[(&str, &str)],
    status: u16,
    param: Value,
    code: &str,
    needles: &[&str],
) {
    let reply = post_with(url, &body, headers).await;
    assert_eq!(reply.status, status, "{body} → {}", reply.text);
    let error = &reply.body["error"];
    let message = error["message"]
        .as_str()
        .unwrap_or_else(|| panic!("OpenAI error body expected, got {}", reply.text));
    for needle in needles {
        assert!(
            message.contains(needle),
            "{body} → {message:?} lacks {needle:?}"
        );
    }
    assert_eq!(error["param"], param, "{}", reply.text);
    assert_eq!(error["code"], code, "{}", reply.text);
    let expected_type = match status {
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    };
    assert_eq!(error["type"], expected_type);
    assert!(reply.body.get("detail").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_fields_are_422_naming_the_field() {
    let server = shared().await;
    let url = format!("{}/v1/embeddings", server.url);
    let cases: Vec<(Value, &[&str])> = vec![
        (
            json!({"input": "a", "dimensions": "abc"}),
            &["`dimensions`", "string \"abc\""],
        ),
        (json!({"input": "a", "dimensions": 1.5}), &["`dimensions`"]),
        (
            json!({"input": "a", "truncate": "yes"}),
            &["`truncate`", "boolean"],
        ),
        (json!({"input": "a", "normalized": 1}), &["`normalized`"]),
        (json!({"input": "a", "task": 5}), &["`task`"]),
        (
            json!({"input": "a", "late_chunking": "sometimes"}),
            &["`late_chunking`", "\"long\""],
        ),
        (
            json!({"input": 3}),
            &["`input`", "token-id arrays are not supported"],
        ),
        (
            json!({"input": [[1, 2, 3]]}),
            &["`input`", "token-id arrays are not supported"],
        ),
        (
            json!({"input": ["a", null]}),
            &["`input`", "item 1", "found null"],
        ),
        (
            json!({"input": [{"text": 7}]}),
            &["`input`", "item 0", "`text`"],
        ),
        (
            json!({"input": "a", "embedding_type": "int8"}),
            &[
                "`embedding_type`",
                "\"int8\"",
                "float, base64, binary, ubinary",
            ],
        ),
        (
            json!({"input": "a", "embedding_type": []}),
            &["`embedding_type`", "empty"],
        ),
        (json!({"input": "a", "user": 12}), &["`user`"]),
        (
            json!({"model": "jina-embeddings-v3"}),
            &["`input` is required"],
        ),
        (json!({"input": null}), &["`input` is required"]),
        (json!([1, 2]), &["must be a JSON object", "an array"]),
    ];
    for (body, needles) in cases {
        jina_error(&url, body, 422, needles).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_out_of_range_name_the_value_and_limit() {
    let server = shared().await;
    let url = format!("{}/v1/embeddings", server.url);
    jina_error(&url, json!({"input": []}), 422, &["at least one text"]).await;
    jina_error(
        &url,
        json!({"input": "a", "task": "retrieval"}),
        422,
        &["\"retrieval\"", "retrieval.query", "text-matching", "none"],
    )
    .await;
    for d in [0, -3, 129] {
        jina_error(
            &url,
            json!({"input": "a", "dimensions": d}),
            422,
            &[&format!("dimensions {d}"), "between 1 and 128"],
        )
        .await;
    }
    jina_error(
        &url,
        json!({"input": "a", "late_chunking": "long", "late_chunking_overlap": 5000}),
        422,
        &["`late_chunking_overlap`", "5000", "at most 4097"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_400_and_unknown_fields_are_ignored() {
    let server = shared().await;
    let url = format!("{}/v1/embeddings", server.url);
    let reply = send(
        "POST",
        &url,
        &[("content-type", "application/json")],
        Some(b"{\"input\": [\"a\",".to_vec()),
    )
    .await;
    assert_eq!(reply.status, 400);
    let body: Value = reply.body;
    assert!(detail(&body).contains("not valid JSON"), "{body}");

    // Unknown fields (including Jina's and OpenAI's own extras) are ignored; no content type is needed.
    let reply = send(
        "POST",
        &url,
        &[],
        Some(json!({"input": ["a"], "foo": {"bar": 1}, "return_multivector": true, "model": "anything"}).to_string().into_bytes()),
    )
    .await;
    assert_eq!(reply.status, 200);
    let body: Value = reply.body;
    assert_eq!(embeddings_of(&body)[0].len(), 128);
    assert_eq!(body["model"], "jina-embeddings-v3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_string_is_valid() {
    let server = shared().await;
    let reply = post(
        &format!("{}/v1/embeddings", server.url),
        &json!({"input": [""]}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["usage"]["total_tokens"], 2, "<s></s>");
    assert_eq!(embeddings_of(&reply.body)[0].len(), 128);
    let reply = post(
        &format!("{}/v1/embeddings", server.url),
        &json!({"input": ""}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_over_the_token_limit_name_index_and_count() {
    let server = shared().await;
    let url = format!("{}/v1/embeddings", server.url);
    let long = words(9000);
    let tokens = jina_server_tokens(&long);
    assert!(tokens > 8194);
    jina_error(
        &url,
        json!({"input": ["short", long], "task": "none"}),
        400,
        &[
            "input[1]",
            &format!("{tokens} tokens"),
            "limit of 8194",
            "truncate",
        ],
    )
    .await;
    openai_error(
        &url,
        json!({"input": ["short", long], "task": "none", "encoding_format": "float"}),
        &[],
        400,
        json!("input[1]"),
        "context_length_exceeded",
        &["input[1]", &format!("{tokens} tokens")],
    )
    .await;
    // Late chunking: the joined sequence is over the limit.
    jina_error(
        &url,
        json!({"input": [long.clone(), "b"], "late_chunking": true}),
        400,
        &["late chunking", "8194"],
    )
    .await;
    // With truncate, the tail is cut and the request succeeds.
    let reply = post(
        &url,
        &json!({"input": [long], "truncate": true, "task": "none"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["usage"]["total_tokens"], 8194);
}

fn jina_server_tokens(text: &str) -> usize {
    crate::common::model()
        .tokenizer()
        .encode_with_specials(text)
        .expect("tokenize")
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_and_input_count_limits_are_413() {
    let mut config = config();
    config.limits = ServerLimits {
        payload_limit: 2000,
        max_inputs_per_request: 4,
        ..ServerLimits::default()
    };
    let server = TestServer::ready(config).await;
    let url = format!("{}/v1/embeddings", server.url);

    // Declared by Content-Length.
    let big = json!({"input": "x".repeat(3000)});
    let size = format!("of {} bytes", big.to_string().len());
    jina_error(
        &url,
        big.clone(),
        413,
        &[
            "larger than the limit of 2000 bytes",
            "payload_limit",
            &size,
        ],
    )
    .await;
    openai_error(
        &url,
        big,
        &[("X-Stainless-Lang", "python")],
        413,
        Value::Null,
        "payload_too_large",
        &["2000 bytes"],
    )
    .await;

    // Chunked, without Content-Length: found while reading.
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let chunk = format!("{{\"input\": \"{}\"}}", "y".repeat(3000));
    let request = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let (status, body) = parse_http_response(&raw);
    assert_eq!(status, 413, "{body}");
    assert!(
        detail(&body).contains("larger than the limit of 2000 bytes"),
        "{body}"
    );

    // Too many inputs.
    jina_error(
        &url,
        json!({"input": ["a", "b", "c", "d", "e"]}),
        413,
        &["5 items", "limit of 4", "max_inputs_per_request"],
    )
    .await;
    openai_error(
        &url,
        json!({"input": ["a", "b", "c", "d", "e"], "encoding_format": "base64"}),
        &[],
        413,
        json!("input"),
        "too_many_inputs",
        &["5 items", "limit of 4"],
    )
    .await;
    // At the limit it works.
    let reply = post(&url, &json!({"input": ["a", "b", "c", "d"]})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(embeddings_of(&reply.body).len(), 4);
}

/// A full admission queue answers 429 with Retry-After at once, and recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_429_with_retry_after() {
    let mut config = config();
    config.limits = ServerLimits {
        max_concurrent_requests: 1,
        ..ServerLimits::default()
    };
    let server = TestServer::ready(config).await;
    let url = format!("{}/v1/embeddings", server.url);

    // Hold one request in flight (admitted, waiting for the last byte of its body).
    let held = Held::open(server.addr, "/v1/embeddings", &json!({"input": ["held"]})).await;
    wait_for_metrics(&server, "one request in flight", |m| {
        m.contains("\njina_in_flight_requests 1\n")
    })
    .await;

    let reply = post(&url, &json!({"input": "a"})).await;
    assert_eq!(reply.status, 429, "{}", reply.text);
    assert_eq!(
        reply
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert!(
        detail(&reply.body).contains("1 requests are already in flight (max_concurrent_requests)"),
        "{}",
        reply.text
    );
    // A refused request's body is not read, so only the SDK header can mark it as OpenAI.
    openai_error(
        &url,
        json!({"input": "a", "encoding_format": "float"}),
        &[("X-Stainless-Lang", "python")],
        429,
        Value::Null,
        "rate_limit_exceeded",
        &["busy"],
    )
    .await;
    let reply = post(&url, &json!({"input": "a", "encoding_format": "float"})).await;
    assert_eq!(reply.status, 429);
    assert!(detail(&reply.body).contains("busy"));

    let (status, body) = held.finish().await;
    assert_eq!(status, 200, "{body}");
    let reply = post(&url, &json!({"input": "a"})).await;
    assert_eq!(
        reply.status, 200,
        "after the held request finished: {}",
        reply.text
    );
    let metrics = server.metrics().await;
    assert!(
        metrics
            .contains("jina_requests_total{route=\"/v1/embeddings\",status=\"429\",task=\"-\"} 3"),
        "{metrics}"
    );
    server
        .stop(Duration::from_secs(10))
        .await
        .expect("clean stop");
}

/// The OpenAI dialect is recognised from `encoding_format` in the body or from the SDK's
/// `X-Stainless-Lang` header; everything else is Jina.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dialect_decides_the_error_body() {
    let server = shared().await;
    let url = format!("{}/v1/embeddings", server.url);
    let bad = json!({"input": "a", "dimensions": "abc"});
    jina_error(&url, bad.clone(), 422, &["`dimensions`"]).await;
    let mut with_format = bad.clone();
    with_format["encoding_format"] = json!("float");
    openai_error(
        &url,
        with_format,
        &[],
        422,
        json!("dimensions"),
        "invalid_field",
        &["`dimensions`"],
    )
    .await;
    openai_error(
        &url,
        bad,
        &[("X-Stainless-Lang", "python")],
        422,
        json!("dimensions"),
        "invalid_field",
        &["`dimensions`"],
    )
    .await;
    openai_error(
        &url,
        json!({"input": "a", "task": "bogus", "encoding_format": "base64"}),
        &[],
        422,
        json!("task"),
        "unknown_task",
        &["\"bogus\""],
    )
    .await;
    openai_error(
        &url,
        json!({"input": [], "encoding_format": "base64"}),
        &[],
        422,
        json!("input"),
        "empty_input",
        &["at least one"],
    )
    .await;
    openai_error(
        &url,
        json!({"input": "a", "encoding_format": "ubinary"}),
        &[],
        422,
        json!("encoding_format"),
        "invalid_field",
        &["float and base64"],
    )
    .await;
    // Malformed JSON from an SDK (header only).
    let reply = send(
        "POST",
        &url,
        &[("X-Stainless-Lang", "js")],
        Some(b"{".to_vec()),
    )
    .await;
    assert_eq!(reply.status, 400);
    let body: Value = reply.body;
    assert_eq!(body["error"]["code"], "invalid_json", "{body}");
    // Unknown route.
    let reply = get_with(&format!("{}/v2/nothing", server.url), &[]).await;
    assert_eq!(reply.status, 404);
    let body: Value = reply.body;
    assert!(detail(&body).contains("/v2/nothing"));
    // Wrong method.
    let reply = get_with(&url, &[]).await;
    assert_eq!(reply.status, 405);
    assert_eq!(
        reply.headers.get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    let body: Value = reply.body;
    assert!(
        detail(&body).contains("method GET is not allowed on /v1/embeddings"),
        "{body}"
    );
}

/// A client that stalls while sending its body gets 408 and frees its admission slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_408() {
    let mut config = config();
    config.limits = ServerLimits {
        body_timeout: Duration::from_millis(200),
        max_concurrent_requests: 1,
        ..ServerLimits::default()
    };
    let server = TestServer::ready(config).await;
    let held = Held::open(server.addr, "/v1/embeddings", &json!({"input": "stalled"})).await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(10), held.response())
        .await
        .expect("answered in time");
    assert_eq!(status, 408, "{body}");
    assert!(
        detail(&body).contains("did not arrive within 0.2 s"),
        "{body}"
    );
    let reply = post(
        &format!("{}/v1/embeddings", server.url),
        &json!({"input": "next"}),
    )
    .await;
    assert_eq!(reply.status, 200, "the slot was freed: {}", reply.text);
}
