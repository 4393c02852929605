//! The other routes: `/tokenize`, `/v1/models`, `/openapi.json`, `/metrics`, request ids.

use jina_engine::EmbedRequest;
use serde_json::{json, Value};

use crate::common::{get_with, golden, metric_value, model, post, post_with, shared};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_includes_specials_and_the_task_prefix() {
    let server = shared().await;
    let url = format!("{}/tokenize", server.url);
    let golden = golden();
    // The golden token counts per task, prefix included.
    for case in golden.cases.iter().filter(|c| c.tokens.is_some()) {
        let task = case.task.clone().unwrap_or_else(|| "none".into());
        let reply = post(&url, &json!({"input": case.input, "task": task})).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let counts: Vec<usize> = reply.body["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|d| d["count"].as_u64().expect("count") as usize)
            .collect();
        assert_eq!(Some(&counts), case.tokens.as_ref(), "task {task}");
        assert_eq!(reply.body["total_tokens"], counts.iter().sum::<usize>());
        assert_eq!(reply.body["task"], task.as_str());
    }

    let reply = post(&url, &json!({"input": "Paris", "task": "retrieval.query"})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let prefix = reply.body["prefix"].as_str().expect("prefix").to_string();
    assert!(
        !prefix.is_empty(),
        "retrieval.query has an instruction prefix"
    );
    let item = &reply.body["data"][0];
    let ids: Vec<u32> = serde_json::from_value(item["ids"].clone()).expect("ids");
    let expected = model()
        .tokenizer()
        .encode_with_specials(&format!("{prefix}Paris"))
        .expect("tokenize");
    assert_eq!(ids, expected);
    let tokens: Vec<String> = serde_json::from_value(item["tokens"].clone()).expect("tokens");
    assert_eq!(tokens.first().map(String::as_str), Some("<s>"));
    assert_eq!(tokens.last().map(String::as_str), Some("</s>"));
    assert_eq!(tokens.len(), ids.len());
    assert_eq!(item["count"], ids.len());
    assert_eq!(reply.body["max_tokens"], 8194);
    // The count is what /v1/embeddings bills.
    let embed = post(
        &format!("{}/v1/embeddings", server.url),
        &json!({"input": "Paris", "task": "retrieval.query"}),
    )
    .await;
    assert_eq!(embed.body["usage"]["total_tokens"], ids.len());

    // Default task (text-matching: no prefix), {"text": …} objects, and long inputs are counted, not refused.
    let long = crate::common::words(9000);
    let reply = post(&url, &json!({"input": [{"text": "a"}, long]})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["task"], "text-matching");
    assert_eq!(reply.body["prefix"], "");
    assert!(reply.body["data"][1]["count"].as_u64().expect("count") > 8194);

    for (body, status, needle) in [
        (json!({"input": []}), 422, "at least one text"),
        (json!({"input": "a", "task": "nope"}), 422, "\"nope\""),
        (json!({"task": "none"}), 422, "`input` is required"),
        (json!({"input": 5}), 422, "`input`"),
    ] {
        let reply = post(&url, &body).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text);
        assert!(
            reply.body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(needle),
            "{body}: {}",
            reply.text
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_lists_the_served_model() {
    let server = shared().await;
    for path in ["/v1/models", "/models"] {
        let body: Value = get_with(&format!("{}{path}", server.url), &[]).await.body;
        assert_eq!(body["object"], "list");
        let card = &body["data"][0];
        assert_eq!(card["id"], "jina-embeddings-v3");
        assert_eq!(card["object"], "model");
        assert_eq!(card["dimensions"], 128);
        assert_eq!(card["max_tokens"], 8194);
        assert_eq!(card["default_task"], "text-matching");
        assert_eq!(card["matryoshka_dimensions"], json!([32, 64, 128]));
        let tasks: Vec<String> = serde_json::from_value(card["tasks"].clone()).expect("tasks");
        for task in [
            "retrieval.query",
            "retrieval.passage",
            "separation",
            "classification",
            "text-matching",
            "none",
        ] {
            assert!(
                tasks.iter().any(|t| t == task),
                "{task} missing from {tasks:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_is_generated_from_the_request_types() {
    let server = shared().await;
    let response = get_with(&format!("{}/openapi.json", server.url), &[]).await;
    assert_eq!(response.status, 200);
    let doc: Value = response.body;
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    for path in [
        "/v1/embeddings",
        "/tokenize",
        "/v1/models",
        "/health",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    let request = &doc["components"]["schemas"]["EmbeddingsRequest"]["properties"];
    for field in [
        "model",
        "input",
        "task",
        "dimensions",
        "late_chunking",
        "embedding_type",
        "encoding_format",
        "normalized",
        "truncate",
        "user",
    ] {
        assert!(
            request[field].is_object(),
            "EmbeddingsRequest.{field} missing from the schema"
        );
    }
    assert!(doc["components"]["schemas"]["EmbeddingsResponse"].is_object());
    // The served model's values: the small fixture's hidden size bounds `dimensions`.
    assert_eq!(request["dimensions"]["maximum"], 128);
    // Without keys, no route declares security (crate::openapi; keys.rs checks the other case).
    assert!(doc["components"]["securitySchemes"].is_null());
    assert!(doc["paths"]["/v1/embeddings"]["post"]["security"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_tokens_and_batches() {
    let server = shared().await;
    let inputs = vec!["metrics one".to_string(), "metrics two".to_string()];
    let before = server.metrics().await;
    let reply = post_with(
        &format!("{}/v1/embeddings", server.url),
        &json!({"input": inputs, "task": "classification"}),
        &[("X-Request-Id", "my-request-7")],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["x-request-id"], "my-request-7");
    let tokens = model()
        .embed(&EmbedRequest::new(inputs).with_task("classification"))
        .expect("engine")
        .total_tokens;
    let after = server.metrics().await;
    let delta = |name: &str| {
        let old = if before.lines().any(|l| l.starts_with(&format!("{name} "))) {
            metric_value(&before, name)
        } else {
            0.0
        };
        metric_value(&after, name) - old
    };
    // Other tests share this server: deltas are lower bounds.
    assert!(delta("jina_tokens_total{task=\"classification\"}") >= tokens as f64);
    assert!(delta("jina_batch_size_count") >= 1.0);
    assert!(delta("jina_queue_wait_seconds_count") >= 1.0);
    assert!(delta("jina_inference_seconds_count") >= 1.0);
    for needle in [
        "# TYPE jina_requests_total counter",
        "jina_requests_total{route=\"/v1/embeddings\",status=\"200\",task=\"classification\"}",
        "# TYPE jina_batch_fill_ratio histogram",
        "jina_batch_tokens_bucket{le=\"+Inf\"}",
        "# TYPE jina_in_flight_requests gauge",
        "jina_ready 1",
    ] {
        assert!(after.contains(needle), "{needle} missing from\n{after}");
    }
    // A fresh id when the client sends none.
    let reply = post(
        &format!("{}/v1/embeddings", server.url),
        &json!({"input": "x"}),
    )
    .await;
    let id = reply.headers["x-request-id"].to_str().expect("ascii");
    assert!(id.len() > 8 && id != "my-request-7");
}
