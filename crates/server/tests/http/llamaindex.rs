//! LlamaIndex's `JinaEmbedding` (package `llama-index-embeddings-jinaai`, which sends
//! `encoding_type`) against the server. The client hard-codes the hosted URL, so the script
//! re-points its API caller at our server and records the exact bodies it sends; this test checks
//! those bodies and that every vector the client returns equals the engine's. Needs `.venv` from
//! `scripts/setup-test-venv.sh` (CI runs it first).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use jina_engine::output::pack_bits;
use jina_engine::{EmbedRequest, LateChunking};
use jina_server::ApiKeys;
use serde_json::{json, Value};

use crate::common::{config, floats, max_abs_diff, model, TestServer};

fn engine(request: EmbedRequest) -> Vec<Vec<f32>> {
    model().embed(&request).expect("engine").embeddings
}

/// The client turns packed bytes back into one 0/1 value per bit.
fn bits(v: &[f32]) -> Vec<f32> {
    pack_bits(v)
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| f32::from((b >> i) & 1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llamaindex_jina_embedding_gets_the_engine_embeddings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    let has_client = python.exists()
        && Command::new(&python)
            .args(["-c", "import llama_index.embeddings.jinaai"])
            .status()
            .is_ok_and(|s| s.success());
    if !has_client {
        eprintln!(
            "\n\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !! SKIPPED the LlamaIndex test: {} lacks llama-index-embeddings-jinaai.\n\
             !! Run scripts/setup-test-venv.sh to install it (CI does).\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
            python.display()
        );
        return;
    }
    let mut config = config();
    config.api_keys = ApiKeys::new(["llama-key"]);
    let server = TestServer::ready(config).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/llamaindex_client.py");
    let url = server.url.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(url)
            .arg("llama-key")
            .output()
            .expect("run python")
    })
    .await
    .expect("join");
    assert!(
        output.status.success(),
        "llamaindex_client.py failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value =
        serde_json::from_slice(&output.stdout).expect("JSON from llamaindex_client.py");
    eprintln!("llama-index-embeddings-jinaai {}", out["version"]);

    // The exact bodies it sends: Jina's field names, encoding_type included.
    assert_eq!(
        out["query_request"],
        json!({"input": ["What is the capital of France?"], "model": "jina-embeddings-v3", "encoding_type": "float", "task": "retrieval.query", "dimensions": 64})
    );
    assert_eq!(
        out["ubinary_request"]["encoding_type"], "ubinary",
        "{}",
        out["ubinary_request"]
    );
    assert_eq!(
        out["binary_request"]["encoding_type"], "binary",
        "{}",
        out["binary_request"]
    );
    assert_eq!(
        out["late_request"]["late_chunking"], true,
        "{}",
        out["late_request"]
    );

    let query = engine(
        EmbedRequest::new(vec!["What is the capital of France?".into()])
            .with_task("retrieval.query")
            .with_dimensions(64),
    );
    assert_eq!(floats(&out["query"]).len(), 64);
    assert!(max_abs_diff(&floats(&out["query"]), &query[0]) <= 1e-6);
    assert!(max_abs_diff(&floats(&out["async_query"]), &query[0]) <= 1e-6);

    let docs = vec![
        "Paris is the capital of France.".to_string(),
        "Berlin is in Germany.".into(),
        String::new(),
    ];
    let passages = engine(EmbedRequest::new(docs).with_task("retrieval.passage"));
    let got = out["ubinary"].as_array().expect("ubinary list");
    assert_eq!(got.len(), 3);
    for (i, (ours, theirs)) in got.iter().zip(&passages).enumerate() {
        assert_eq!(floats(ours), bits(theirs), "ubinary input {i}");
    }
    let matching = engine(EmbedRequest::new(vec![
        "Paris is the capital of France.".into()
    ]));
    assert_eq!(floats(&out["binary"][0]), bits(&matching[0]), "binary");

    let mut late = EmbedRequest::new(vec![
        "Paris is the capital of France.".into(),
        "It lies on the Seine.".into(),
    ])
    .with_task("retrieval.passage");
    late.late_chunking = LateChunking::On;
    let late = engine(late);
    for i in 0..2 {
        assert!(
            max_abs_diff(&floats(&out["late"][i]), &late[i]) <= 1e-6,
            "late chunk {i}"
        );
    }
    server
        .stop(Duration::from_secs(10))
        .await
        .expect("clean stop");
}
