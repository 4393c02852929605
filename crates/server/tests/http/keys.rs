//! API keys: every route but `/health` and `/metrics` needs `Authorization: Bearer KEY`.

use std::time::Duration;

use clap::Parser;
use jina_server::{ApiKeys, ServeArgs};
use serde_json::json;

use crate::common::{config, get_with, post_with, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_guard_every_route_but_health_and_metrics() {
    let mut config = config();
    config.api_keys = ApiKeys::new(["key-one", "key-two"]);
    let server = TestServer::ready(config).await;
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

#[test]
fn keys_come_from_flags_environment_and_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("keys");
    std::fs::write(&file, "# team keys\nfrom-file\n\n").expect("write key file");

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }
    let cli = Cli::try_parse_from([
        "serve",
        "--model",
        "m",
        "--api-key",
        "a",
        "--api-key",
        "b,c",
        "--api-key-file",
        file.to_str().expect("utf-8 path"),
        "--max-batch-tokens",
        "1024",
        "--port",
        "0",
    ])
    .expect("parse");
    let config = cli.serve.to_config().expect("config");
    assert_eq!(config.api_keys.len(), 4);
    for key in ["a", "b", "c", "from-file"] {
        assert!(config.api_keys.accepts(key.as_bytes()), "{key}");
    }
    assert_eq!(config.limits.max_batch_tokens, 1024);
    assert_eq!(config.default_task, "text-matching");
    assert!(
        !format!("{config:?}").contains("from-file"),
        "Debug must not show keys"
    );

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "# nothing\n").expect("write");
    let cli = Cli::try_parse_from([
        "serve",
        "--model",
        "m",
        "--api-key-file",
        empty.to_str().expect("utf-8"),
    ])
    .expect("parse");
    assert!(cli
        .serve
        .to_config()
        .unwrap_err()
        .to_string()
        .contains("holds no key"));
    let cli = Cli::try_parse_from(["serve", "--model", "m", "--max-inputs-per-request", "0"])
        .expect("parse");
    assert!(cli
        .serve
        .to_config()
        .unwrap_err()
        .to_string()
        .contains("max_inputs_per_request must be at least 1"));
}
