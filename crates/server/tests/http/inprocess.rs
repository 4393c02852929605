//! The router in-process against the fake runner (`fake.rs`): the seam itself (the fake's
//! vectors come out of `/v1/embeddings`), failure injection (an error or a panic fails only its
//! own request), admission under a slow runner (429), cancellation of a dropped request, and
//! SageMaker's `/ping` and `/invocations` with both bodies.

use std::sync::Arc;
use std::time::Duration;

use jina_server::{ApiKeys, AppState, ServerLimits};
use serde_json::{json, Value};

use crate::common::{config, embeddings_of, get_with, metric_value, post, post_with, TestServer};
use crate::fake::{Failure, FakeRunner};

fn fake_server(limits: ServerLimits) -> (TestServer, Arc<FakeRunner>) {
    let fake = FakeRunner::new();
    let mut config = config();
    config.limits = limits;
    (TestServer::fake(config, fake.clone()), fake)
}

/// The ids the fake pools for one text with the default task (text-matching).
fn ids_of(fake: &FakeRunner, text: &str) -> Vec<u32> {
    use jina_server::BatchRunner as _;
    let prefix = fake.task_prefix("text-matching").expect("task");
    fake.tokenize(&format!("{prefix}{text}")).expect("ids").ids
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_runner_is_what_embeddings_returns() {
    let (server, fake) = fake_server(ServerLimits::default());
    let reply = post(
        &format!("{}/v1/embeddings", server.url),
        &json!({"input": ["hello world", "a"]}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let got = embeddings_of(&reply.body);
    let hidden = 128;
    for (text, vector) in ["hello world", "a"].iter().zip(&got) {
        let want = FakeRunner::expected(&ids_of(&fake, text), hidden);
        assert!(close(vector, &want), "{text}: {vector:?} vs {want:?}");
    }
    assert_eq!(fake.batch_count(), 1, "both inputs in one batch");
    // Validation is the real one: a dimension over the hidden size names the field.
    let reply = post(
        &format!("{}/v1/embeddings", server.url),
        &json!({"input": "a", "dimensions": 129}),
    )
    .await;
    assert_eq!(reply.status, 422);
    assert!(reply.text.contains("dimensions"), "{}", reply.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_failure_fails_only_its_batch() {
    for how in [Failure::Error, Failure::Panic] {
        let (server, fake) = fake_server(ServerLimits::default());
        fake.poison("poison", how);
        let url = format!("{}/v1/embeddings", server.url);
        let bad = post(&url, &json!({"input": ["poison"]})).await;
        assert_eq!(bad.status, 500, "{how:?}: {}", bad.text);
        assert_eq!(bad.body["detail"], "internal server error", "{}", bad.text);
        let good = post(&url, &json!({"input": ["fine"]})).await;
        assert_eq!(
            good.status, 200,
            "{how:?}: the server goes on: {}",
            good.text
        );
        let metrics = server.metrics().await;
        assert!(
            metrics.contains("jina_requests_total{route=\"/v1/embeddings\",status=\"500\""),
            "{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_runner_fills_admission_and_the_next_request_is_429() {
    let (server, fake) = fake_server(ServerLimits {
        max_concurrent_requests: 1,
        ..ServerLimits::default()
    });
    fake.set_delay(Duration::from_millis(600));
    let url = format!("{}/v1/embeddings", server.url);
    let first = tokio::spawn({
        let url = url.clone();
        async move { post(&url, &json!({"input": "slow"})).await }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !fake.running.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the first request never ran"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let second = post(&url, &json!({"input": "refused"})).await;
    assert_eq!(second.status, 429, "{}", second.text);
    assert_eq!(second.headers["retry-after"], "1");
    assert_eq!(first.await.expect("join").status, 200);
    assert_eq!(post(&url, &json!({"input": "again"})).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_request_is_cancelled_before_it_runs() {
    let (server, fake) = fake_server(ServerLimits::default());
    fake.set_delay(Duration::from_millis(400));
    let url = format!("{}/v1/embeddings", server.url);
    let first = tokio::spawn({
        let url = url.clone();
        async move { post(&url, &json!({"input": "runs"})).await }
    });
    while !fake.running.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let dropped = tokio::spawn({
        let url = url.clone();
        async move { post(&url, &json!({"input": "dropped"})).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    dropped.abort();
    assert!(dropped.await.unwrap_err().is_cancelled());
    assert_eq!(first.await.expect("join").status, 200);
    crate::common::wait_for_metrics(&server, "the cancellation", |m| {
        metric_value(m, "jina_cancelled_requests_total") == 1.0
    })
    .await;
    assert_eq!(fake.batch_count(), 1, "the dropped request never ran");
    let metrics = server.metrics().await;
    assert!(
        metrics
            .contains("jina_requests_total{route=\"/v1/embeddings\",status=\"499\",task=\"-\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_follows_the_model_and_the_shutdown() {
    let state = AppState::new(config());
    let router = jina_server::routes::router(state.clone());
    let ping = |router: axum::Router| async move {
        use tower::ServiceExt as _;
        let request = axum::http::Request::get("/ping")
            .body(axum::body::Body::empty())
            .expect("request");
        router.oneshot(request).await.expect("infallible").status()
    };
    assert_eq!(ping(router.clone()).await, 503, "loading");
    state.start(FakeRunner::new()).expect("start");
    assert_eq!(ping(router.clone()).await, 200, "ready");
    state.begin_shutdown();
    assert_eq!(ping(router.clone()).await, 503, "shutting down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_takes_our_body_and_the_sagemaker_body() {
    let (server, fake) = fake_server(ServerLimits::default());
    let url = format!("{}/invocations", server.url);

    // Our body: the /v1/embeddings answer.
    let ours = post(
        &url,
        &json!({"input": ["hello", "world"], "dimensions": 32}),
    )
    .await;
    assert_eq!(ours.status, 200, "{}", ours.text);
    let direct = post(
        &format!("{}/v1/embeddings", server.url),
        &json!({"input": ["hello", "world"], "dimensions": 32}),
    )
    .await;
    assert_eq!(ours.body["data"], direct.body["data"]);
    assert_eq!(ours.body["usage"], direct.body["usage"]);
    assert_eq!(ours.body["object"], "list");

    // SageMaker's body: ids default to the index, or echo the client's.
    let body = json!({
        "data": [{"text": "hello"}, {"text": "world", "id": "doc-7"}, {"text": "", "id": 42.0}],
        "parameters": {"task": "text-matching", "late_chunking": false, "dimensions": 32}
    });
    let reply = post(&url, &body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let data = reply.body["data"].as_array().expect("data");
    assert_eq!(data.len(), 3);
    assert_eq!(
        data.iter().map(|d| d["id"].clone()).collect::<Vec<_>>(),
        vec![json!(0), json!("doc-7"), json!(42)]
    );
    for (item, text) in data.iter().zip(["hello", "world", ""]) {
        assert_eq!(item["usage"]["id"], item["id"]);
        let ids = ids_of(&fake, text);
        assert_eq!(item["usage"]["total_tokens"], ids.len(), "{text}");
        let vector: Vec<f32> = item["embedding"]
            .as_array()
            .expect("floats")
            .iter()
            .map(|x| x.as_f64().expect("float") as f32)
            .collect();
        let full = FakeRunner::expected(&ids, 128);
        let norm = full[..32].iter().map(|x| x * x).sum::<f32>().sqrt();
        let want: Vec<f32> = full[..32].iter().map(|x| x / norm).collect();
        assert!(close(&vector, &want), "{text}");
    }
    assert_eq!(
        data[0]["embedding"], direct.body["data"][0]["embedding"],
        "the same vector as /v1/embeddings"
    );

    // Late chunking: the items' tokens add up to one sequence's.
    let late = post(
        &url,
        &json!({"data": [{"text": "one"}, {"text": "two"}], "parameters": {"late_chunking": true}}),
    )
    .await;
    assert_eq!(late.status, 200, "{}", late.text);
    let sum: u64 = late.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| d["usage"]["total_tokens"].as_u64().expect("tokens"))
        .sum();
    let ours_late = post(
        &format!("{}/v1/embeddings", server.url),
        &json!({"input": ["one", "two"], "late_chunking": true}),
    )
    .await;
    assert_eq!(json!(sum), ours_late.body["usage"]["total_tokens"]);
    assert_eq!(
        late.body["data"][1]["embedding"],
        ours_late.body["data"][1]["embedding"]
    );

    // No parameters at all is fine.
    assert_eq!(
        post(&url, &json!({"data": [{"text": "x"}]})).await.status,
        200
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("jina_requests_total{route=\"/invocations\",status=\"200\""),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_errors_name_the_field() {
    let (server, _fake) = fake_server(ServerLimits {
        max_inputs_per_request: 2,
        ..ServerLimits::default()
    });
    let url = format!("{}/invocations", server.url);
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"data": []}), 422, "data"),
        (json!({"data": [{"text": "a"}, {"id": 1}]}), 422, "data[1]"),
        (json!({"data": [{"text": 5}]}), 422, "data[0].text"),
        (json!({"data": "text"}), 422, "data"),
        (
            json!({"data": [{"text": "a", "id": 1.5}]}),
            422,
            "data[0].id",
        ),
        (
            json!({"data": [{"text": "a"}], "parameters": {"task": "nope"}}),
            422,
            "task",
        ),
        (
            json!({"data": [{"text": "a"}], "parameters": {"dimensions": 0}}),
            422,
            "dimensions",
        ),
        (
            json!({"data": [{"text": "a"}], "parameters": {"dimensions": "x"}}),
            422,
            "parameters.dimensions",
        ),
        (
            json!({"data": [{"text": "a"}], "parameters": {"late_chunking": "yes"}}),
            422,
            "parameters.late_chunking",
        ),
        (
            json!({"data": [{"text": "a"}, {"text": "b"}, {"text": "c"}]}),
            413,
            "2",
        ),
        (
            json!({"data": [{"text": "a"}], "parameters": [null, null]}),
            422,
            "parameters",
        ),
        (
            json!({"data": [{"text": "a"}, [null, "b"]]}),
            422,
            "data[1]",
        ),
        (json!({"input": []}), 422, "input"),
        (json!({"model": "m"}), 422, "input"),
    ];
    for (body, status, needle) in cases {
        let reply = post(&url, &body).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.text);
        assert!(
            reply.body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(needle),
            "{body}: {} should name {needle}",
            reply.text
        );
    }
    // An OpenAI SDK's body gets the OpenAI error form.
    let reply = post_with(
        &url,
        &json!({"input": [], "encoding_format": "float"}),
        &[("X-Stainless-Lang", "python")],
    )
    .await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.body["error"]["param"], "input", "{}", reply.text);
    // Not JSON.
    let reply = crate::common::send("POST", &url, &[], Some(b"{".to_vec())).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keys_ping_is_open_and_invocations_needs_the_key() {
    let fake = FakeRunner::new();
    let mut config = config();
    config.api_keys = ApiKeys::new(["k"]);
    let server = TestServer::fake(config, fake);
    assert_eq!(
        get_with(&format!("{}/ping", server.url), &[]).await.status,
        200
    );
    let url = format!("{}/invocations", server.url);
    let body = json!({"data": [{"text": "a"}]});
    assert_eq!(post(&url, &body).await.status, 401);
    assert_eq!(
        post_with(&url, &body, &[("Authorization", "Bearer k")])
            .await
            .status,
        200
    );
    // The served document declares both routes, /invocations with the key.
    let doc = get_with(
        &format!("{}/openapi.json", server.url),
        &[("Authorization", "Bearer k")],
    )
    .await
    .body;
    assert!(doc["paths"]["/ping"]["get"]["security"].is_null());
    assert_eq!(
        doc["paths"]["/invocations"]["post"]["security"],
        json!([{"bearer": []}])
    );
    let schema = &doc["paths"]["/invocations"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"];
    assert_eq!(
        schema["oneOf"].as_array().map(Vec::len),
        Some(2),
        "{schema}"
    );
    let sagemaker = &doc["components"]["schemas"]["SageMakerRequest"];
    assert_eq!(
        sagemaker["properties"]["data"]["minItems"], 1,
        "{sagemaker}"
    );
    assert_eq!(
        doc["components"]["schemas"]["SageMakerParameters"]["properties"]["dimensions"]["maximum"],
        128
    );
}
