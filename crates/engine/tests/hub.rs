//! `--model` resolution against a Hugging Face cache folder the test builds in the real layout
//! (blobs named by sha256, snapshot files symlinked to them, refs/main holding the commit), with
//! the generated small fixture as the weights. Offline only: nothing here downloads.

mod common;

use std::path::Path;

use common::{small_fixture_dir, small_model};
use jina_engine::hub::{self, HubId, ResolveError, Source};
use jina_engine::{EmbedRequest, Model};

const COMMIT: &str = "f1944de8402dcd5f2b03f822a4bc22a7f2de2eb9";

fn cache_with_fixture() -> tempfile::TempDir {
    let cache = tempfile::tempdir().expect("tempdir");
    let id = HubId::parse("jinaai/jina-embeddings-v3").expect("id");
    hub::install_into_cache(cache.path(), &id, COMMIT, "main", small_fixture_dir())
        .expect("install");
    cache
}

fn not_cached_reason(err: ResolveError) -> String {
    let text = err.to_string();
    assert!(
        text.contains("huggingface-cli download jinaai/jina-embeddings-v3")
            && text.contains("config.json tokenizer.json model.safetensors"),
        "the error must say how to get the weights: {text}"
    );
    match err {
        ResolveError::NotCached { reason, .. } => reason,
        other => panic!("expected NotCached, got {other}"),
    }
}

#[test]
fn a_hub_id_resolves_to_the_cached_snapshot_and_loads_the_same_model() {
    let cache = cache_with_fixture();
    let resolved =
        hub::resolve_with_cache("jinaai/jina-embeddings-v3", Some(cache.path())).expect("resolve");
    let snapshot = cache
        .path()
        .join("models--jinaai--jina-embeddings-v3/snapshots")
        .join(COMMIT);
    assert_eq!(resolved.dir, snapshot);
    // The optional tokenizer files travel with the model (transformers applies them).
    for file in hub::OPTIONAL_FILES {
        assert!(resolved.dir.join(file).is_file(), "{file}");
    }
    assert!(matches!(&resolved.source, Source::Cache { commit, .. } if commit == COMMIT));
    #[cfg(unix)]
    {
        let link = std::fs::symlink_metadata(snapshot.join("model.safetensors")).expect("stat");
        assert!(
            link.file_type().is_symlink(),
            "the fake cache must use symlinks like the real one"
        );
        let expected = hub::expected_sha256(&snapshot.join("model.safetensors"))
            .expect("blob named by sha256");
        assert_eq!(
            expected,
            hub::sha256_file(&small_fixture_dir().join("model.safetensors")).expect("hash")
        );
    }
    // Through the symlinks, the model is the fixture itself.
    let model = Model::load(&resolved.dir).expect("load from the cache");
    let request = EmbedRequest::new(vec!["Paris is the capital of France.".into()])
        .with_task("retrieval.passage");
    assert_eq!(
        model.embed(&request).expect("embed"),
        small_model().embed(&request).expect("embed")
    );

    // An explicit revision: the commit itself, or another ref.
    let by_commit = hub::resolve_with_cache(
        &format!("jinaai/jina-embeddings-v3@{COMMIT}"),
        Some(cache.path()),
    )
    .expect("by commit");
    assert_eq!(by_commit.dir, snapshot);
    std::fs::write(
        cache
            .path()
            .join("models--jinaai--jina-embeddings-v3/refs/v1.0"),
        format!("{COMMIT}\n"),
    )
    .expect("ref");
    let by_tag = hub::resolve_with_cache("jinaai/jina-embeddings-v3@v1.0", Some(cache.path()))
        .expect("by tag");
    assert_eq!(by_tag.dir, snapshot);
}

#[test]
fn a_folder_wins_over_the_cache() {
    let resolved =
        hub::resolve_with_cache(&small_fixture_dir().to_string_lossy(), None).expect("folder");
    assert_eq!(
        (resolved.dir.as_path(), &resolved.source),
        (small_fixture_dir(), &Source::Folder)
    );
}

#[test]
fn missing_models_say_how_to_get_them() {
    let cache = cache_with_fixture();
    let repo = cache.path().join("models--jinaai--jina-embeddings-v3");

    // Another repository: not in the cache at all.
    let err = hub::resolve_with_cache("jinaai/jina-embeddings-v2", Some(cache.path()))
        .expect_err("v2 is not cached");
    let text = err.to_string();
    assert!(
        text.contains("huggingface-cli download jinaai/jina-embeddings-v2 config.json"),
        "{text}"
    );
    assert!(
        text.contains("no folder") && text.contains("models--jinaai--jina-embeddings-v2"),
        "{text}"
    );

    // An unknown revision.
    let err = hub::resolve_with_cache("jinaai/jina-embeddings-v3@nope", Some(cache.path()))
        .expect_err("no such revision");
    assert!(err.to_string().contains("--revision nope"), "{err}");
    assert!(not_cached_reason(err).contains("\"nope\""));

    // A blob that went missing leaves a dangling symlink: the file counts as missing.
    std::fs::remove_file(
        repo.join("blobs")
            .join(hub::sha256_file(&small_fixture_dir().join("tokenizer.json")).expect("hash")),
    )
    .expect("remove blob");
    let reason = not_cached_reason(
        hub::resolve_with_cache("jinaai/jina-embeddings-v3", Some(cache.path()))
            .expect_err("dangling"),
    );
    assert!(reason.contains("lacks tokenizer.json"), "{reason}");

    // refs/main pointing to a snapshot that is not there.
    std::fs::write(
        repo.join("refs/main"),
        "0000000000000000000000000000000000000000",
    )
    .expect("ref");
    let reason = not_cached_reason(
        hub::resolve_with_cache("jinaai/jina-embeddings-v3", Some(cache.path()))
            .expect_err("no snapshot"),
    );
    assert!(
        reason.contains("0000000000000000000000000000000000000000"),
        "{reason}"
    );

    // No cache folder at all, and something that is neither a folder nor an id.
    assert!(matches!(
        hub::resolve_with_cache("jinaai/jina-embeddings-v3", None),
        Err(ResolveError::NotCached { .. })
    ));
    let err = hub::resolve_with_cache("/no/such/folder", Some(cache.path())).expect_err("neither");
    assert!(
        matches!(err, ResolveError::NotAModel { .. })
            && err.to_string().contains("/no/such/folder"),
        "{err}"
    );
    assert!(!Path::new("/no/such/folder").exists());
}
