//! The real `openai` Python SDK against the server: `client.embeddings.create` with its default
//! encoding (base64), with `dimensions` and Jina's `task` through `extra_body`, with floats, and
//! its typed errors. Needs `.venv` from `scripts/setup-test-venv.sh` (CI runs it first).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use jina_engine::EmbedRequest;
use jina_server::ApiKeys;
use serde_json::Value;

use crate::common::{config, floats, max_abs_diff, model, TestServer};

fn check(label: &str, got: &Value, request: EmbedRequest) {
    let expected = model().embed(&request).expect("engine");
    assert_eq!(got["object"], "list", "{label}");
    assert_eq!(got["model"], "jina-embeddings-v3", "{label}");
    assert_eq!(got["total_tokens"], expected.total_tokens, "{label}");
    assert_eq!(got["prompt_tokens"], expected.total_tokens, "{label}");
    let embeddings = got["embeddings"].as_array().expect("embeddings");
    assert_eq!(embeddings.len(), expected.embeddings.len(), "{label}");
    let indices: Vec<usize> = serde_json::from_value(got["indices"].clone()).expect("indices");
    assert_eq!(
        indices,
        (0..embeddings.len()).collect::<Vec<_>>(),
        "{label}"
    );
    for (i, (ours, theirs)) in embeddings.iter().zip(&expected.embeddings).enumerate() {
        let ours = floats(ours);
        assert_eq!(ours.len(), theirs.len(), "{label} input {i}");
        assert!(max_abs_diff(&ours, theirs) <= 1e-6, "{label} input {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_gets_the_engine_embeddings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    if !python.exists() {
        eprintln!(
            "\n\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !! SKIPPED the openai SDK test: {} is missing.\n\
             !! Run scripts/setup-test-venv.sh to create it (CI does).\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
            python.display()
        );
        return;
    }
    let mut config = config();
    config.api_keys = ApiKeys::new(["sdk-test-key"]);
    let server = TestServer::ready(config).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let url = server.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(url)
            .arg("sdk-test-key")
            .output()
            .expect("run python")
    })
    .await
    .expect("join");
    assert!(
        output.status.success(),
        "openai_client.py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_slice(&output.stdout).expect("JSON from openai_client.py");
    eprintln!("openai SDK {}", out["openai_version"]);

    // The SDK's default request asks for base64, so the server answered in base64.
    assert_eq!(
        out["default_request"]["encoding_format"], "base64",
        "{}",
        out["default_request"]
    );
    let inputs = vec![
        "What is the capital of France?".to_string(),
        "Paris is the capital of France.".to_string(),
        String::new(),
    ];
    check("default", &out["default"], EmbedRequest::new(inputs));
    check(
        "query64",
        &out["query64"],
        EmbedRequest::new(vec!["What is the capital of France?".into()])
            .with_task("retrieval.query")
            .with_dimensions(64),
    );
    check(
        "float",
        &out["float"],
        EmbedRequest::new(vec!["Paris".into()]),
    );

    let unknown = &out["unknown_task"];
    assert_eq!(unknown["status"], 422, "{unknown}");
    assert_eq!(unknown["class"], "UnprocessableEntityError");
    assert_eq!(unknown["body"]["code"], "unknown_task", "{unknown}");
    assert!(
        unknown["body"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("\"bogus\""),
        "{unknown}"
    );
    let wrong = &out["wrong_key"];
    assert_eq!(wrong["status"], 401, "{wrong}");
    assert_eq!(wrong["class"], "AuthenticationError");
    assert_eq!(wrong["body"]["code"], "invalid_api_key", "{wrong}");
    server
        .stop(Duration::from_secs(10))
        .await
        .expect("clean stop");
}
