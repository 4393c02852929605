//! API keys: every route but `/health` and `/metrics` needs `Authorization: Bearer KEY`.

use std::time::Duration;

use jina_server::ApiKeys;
use serde_json::json;

use crate::common::{config, get_with, post_with, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_guard_every_route_but_health_and_metrics() {
    let mut config = config();
    config.api_keys = ApiKeys::new(["key-one", "key-two"]);
    let server = TestServer::in_process(config);
    let body = json!({"input": "a"});
    let url = |p: &str| format!("{}{p}", server.url);

    for (auth, reason) in [
        (None, "missing API key"),
        (Some("Bearer key-thre"), "invalid API key"),
        (Some("Basic key-one"), "missing API key"),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        for path in ["/v1/embeddings", "/embeddings", "/tokenize"] {
            let reply = post_with(&url(path), &body, &headers).await;
            assert_eq!(reply.status, 401, "{path} {auth:?}: {}", reply.text);
            assert_eq!(
                reply
                    .headers
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok()),
                Some("Bearer")
            );
            let detail = reply.body["detail"]
                .as_str()
                .unwrap_or_else(|| panic!("JSON 401 body: {}", reply.text));
            assert!(detail.contains(reason), "{detail}");
            assert!(
                !reply.text.contains("key-one") && !reply.text.contains("key-thre"),
                "a key is echoed"
            );
        }
        for path in ["/v1/models", "/models", "/openapi.json"] {
            let reply = get_with(&url(path), &headers).await;
            assert_eq!(reply.status, 401, "{path} {auth:?}: {}", reply.text);
        }
    }

    // The OpenAI SDK gets its own error body.
    let reply = post_with(
        &url("/v1/embeddings"),
        &body,
        &[
            ("X-Stainless-Lang", "python"),
            ("Authorization", "Bearer nope"),
        ],
    )
    .await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.body["error"]["code"], "invalid_api_key",
        "{}",
        reply.text
    );
    assert_eq!(reply.body["error"]["type"], "invalid_request_error");

    // Either key works; the scheme is case-insensitive.
    for auth in ["Bearer key-one", "bearer key-two"] {
        let reply = post_with(&url("/v1/embeddings"), &body, &[("Authorization", auth)]).await;
        assert_eq!(reply.status, 200, "{auth}: {}", reply.text);
        let reply = get_with(&url("/v1/models"), &[("Authorization", auth)]).await;
        assert_eq!(reply.status, 200, "{auth}: {}", reply.text);
    }

    // The document declares what is enforced: bearer and a 401 on the guarded routes only.
    let doc = get_with(
        &url("/openapi.json"),
        &[("Authorization", "Bearer key-one")],
    )
    .await
    .body;
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    for (path, method) in [
        ("/v1/embeddings", "post"),
        ("/tokenize", "post"),
        ("/v1/models", "get"),
        ("/openapi.json", "get"),
    ] {
        assert_eq!(
            doc["paths"][path][method]["security"],
            json!([{"bearer": []}]),
            "{path}"
        );
        assert!(
            doc["paths"][path][method]["responses"]["401"].is_object(),
            "{path}"
        );
    }
    for path in ["/health", "/metrics"] {
        assert!(doc["paths"][path]["get"]["security"].is_null(), "{path}");
    }

    // Open routes.
    assert_eq!(get_with(&url("/health"), &[]).await.status, 200);
    let metrics = get_with(&url("/metrics"), &[]).await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.text.contains("status=\"401\""), "401s are counted");
    server
        .stop(Duration::from_secs(10))
        .await
        .expect("clean stop");
}
