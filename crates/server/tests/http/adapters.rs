//! `/v1/adapters` and `--adapter`: custom tasks loaded at start and at run time, served per
//! request beside the built-in ones, listed by `/v1/models`, unloaded, and bad folders refused
//! while the server keeps serving.

use std::path::Path;

use jina_engine::adapters::folder::{self, AdapterMetadata};
use jina_engine::weights::Weights;
use jina_engine::{AdapterSpec, AdapterWeights, EmbedRequest};
use serde_json::json;

use crate::common::{
    config, embeddings_of, fixture_dir, get_with, max_abs_diff, model, post, send, TestServer,
};

/// Saves built-in task `task`'s tensors, with `word_b` negated so that it is a new task, as
/// an adapter folder named `name`; returns the expected vectors of `texts` under it.
fn save_adapter(dir: &Path, name: &str, task: usize) -> AdapterWeights {
    let m = model();
    let weights = Weights::open(&fixture_dir().join("model.safetensors"), m.config()).unwrap();
    let mut w = AdapterWeights::from_checkpoint(&weights, m.config(), task).unwrap();
    w.word_b.iter_mut().for_each(|v| *v = -*v);
    let meta = AdapterMetadata::new(name, "", m.config(), None);
    folder::save(dir, &w, &meta).expect("save");
    w
}

fn expected(name: &str, w: AdapterWeights, texts: &[&str]) -> Vec<Vec<f32>> {
    let m = jina_engine::Model::load(fixture_dir()).unwrap();
    m.add_adapter(name, "", w, serde_json::Value::Null).unwrap();
    let texts = texts.iter().map(|t| t.to_string()).collect();
    m.embed(&EmbedRequest::new(texts).with_task(name))
        .unwrap()
        .embeddings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_load_serve_list_and_unload_at_run_time() {
    let started = tempfile::tempdir().unwrap();
    let later = tempfile::tempdir().unwrap();
    let w_start = save_adapter(started.path(), "at.start", 2);
    let w_later = save_adapter(later.path(), "later", 3);
    let mut cfg = config();
    cfg.adapters = vec![AdapterSpec {
        name: None,
        dir: started.path().to_path_buf(),
    }];
    let server = TestServer::in_process(cfg);
    let url = |p: &str| format!("{}{p}", server.url);
    let texts = ["legal text one", "another clause"];

    // Served from the start, mixed with a built-in task in flight.
    let reply = post(
        &url("/v1/embeddings"),
        &json!({"input": texts, "task": "at.start"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let want = expected("at.start", w_start, &texts);
    for (g, w) in embeddings_of(&reply.body).iter().zip(&want) {
        assert!(max_abs_diff(g, w) < 1e-5);
    }
    let models = get_with(&url("/v1/models"), &[]).await;
    let tasks = models.body["data"][0]["tasks"].to_string();
    assert!(
        tasks.contains("at.start") && tasks.contains("text-matching"),
        "{tasks}"
    );

    // Loaded at run time, then listed and used.
    let reply = post(
        &url("/v1/adapters"),
        &json!({"path": later.path().to_string_lossy()}),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.body["name"], "later");
    let list = get_with(&url("/v1/adapters"), &[]).await;
    let names: Vec<&str> = list.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["at.start", "later"]);
    let reply = post(
        &url("/v1/embeddings"),
        &json!({"input": texts, "task": "later"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let want = expected("later", w_later, &texts);
    for (g, w) in embeddings_of(&reply.body).iter().zip(&want) {
        assert!(max_abs_diff(g, w) < 1e-5);
    }

    // The same name twice: 409; a built-in name: 409; a bad folder: 422; a missing path: 422.
    let again = json!({"path": later.path().to_string_lossy()});
    assert_eq!(post(&url("/v1/adapters"), &again).await.status, 409);
    let builtin = json!({"path": later.path().to_string_lossy(), "name": "classification"});
    assert_eq!(post(&url("/v1/adapters"), &builtin).await.status, 409);
    let missing = json!({"path": "/nonexistent/adapter", "name": "x"});
    let reply = post(&url("/v1/adapters"), &missing).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    assert!(reply.text.contains("not a folder"), "{}", reply.text);
    let reply = post(&url("/v1/adapters"), &json!({"name": "x"})).await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    let bad_name = json!({"path": later.path().to_string_lossy(), "name": "a b"});
    assert_eq!(post(&url("/v1/adapters"), &bad_name).await.status, 422);

    // Unloaded: the task is gone, the others serve on.
    let reply = send("DELETE", &url("/v1/adapters/later"), &[], None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let reply = send("DELETE", &url("/v1/adapters/later"), &[], None).await;
    assert_eq!(reply.status, 404, "{}", reply.text);
    let reply = send("DELETE", &url("/v1/adapters/text-matching"), &[], None).await;
    assert_eq!(reply.status, 409, "{}", reply.text);
    let reply = post(
        &url("/v1/embeddings"),
        &json!({"input": texts, "task": "later"}),
    )
    .await;
    assert_eq!(reply.status, 422, "{}", reply.text);
    let reply = post(
        &url("/v1/embeddings"),
        &json!({"input": texts, "task": "at.start"}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_routes_need_the_key_when_one_is_set() {
    let mut cfg = config();
    cfg.api_keys = jina_server::ApiKeys::new(["secret"]);
    let server = TestServer::in_process(cfg);
    let reply = post(
        &format!("{}/v1/adapters", server.url),
        &json!({"path": "/tmp"}),
    )
    .await;
    assert_eq!(reply.status, 401, "{}", reply.text);
    let reply = send(
        "DELETE",
        &format!("{}/v1/adapters/x", server.url),
        &[],
        None,
    )
    .await;
    assert_eq!(reply.status, 401, "{}", reply.text);
}
