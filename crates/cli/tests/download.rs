//! `jina-embed download` with a stand-in for the Hugging Face CLI (the hub is not reachable from
//! the tests): the stand-in records its arguments and fills the cache in the real layout from a
//! staged copy; the tool must pass the right arguments and the right cache, then check sha256s.
//! With the built-in downloader (feature `download`) the CLI is used when `--hf-cli` names it;
//! the built-in one is tested in hub_download.rs.

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use jina_engine::hub::{self, HubId};

const COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";

mod common;

fn fixture() -> PathBuf {
    common::small_fixture("cli-download-small-fixture")
}

/// A fake `hf` that logs its arguments and copies `stage` into $HF_HUB_CACHE.
fn fake_cli(dir: &Path, stage: &Path) -> PathBuf {
    let path = dir.join("hf");
    let script = format!(
        "#!/bin/sh\necho \"$@\" > '{log}'\necho \"$HF_HUB_CACHE\" >> '{log}'\nmkdir -p \"$HF_HUB_CACHE\" && cp -R '{stage}'/. \"$HF_HUB_CACHE\"/\n",
        log = dir.join("args.txt").display(),
        stage = stage.display()
    );
    std::fs::write(&path, script).expect("write fake hf");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn download(cache: &Path, path_env: &str, extra: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jina-embed"));
    command.arg("download").args(extra);
    // The built-in downloader is the default: name the stand-in (the first folder of PATH).
    let stand_in = Path::new(path_env.split(':').next().unwrap_or_default()).join("hf");
    if cfg!(feature = "download") && stand_in.is_file() && !extra.contains(&"--hf-cli") {
        command.arg("--hf-cli").arg(stand_in);
    }
    command
        .env("HF_HUB_CACHE", cache)
        .env("PATH", path_env)
        .env_remove("JINA_HF_CLI")
        .output()
        .expect("run")
}

#[test]
fn download_runs_the_hf_cli_into_the_cache_and_checks_sha256() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (bin, stage, cache) = (
        tmp.path().join("bin"),
        tmp.path().join("stage"),
        tmp.path().join("cache"),
    );
    std::fs::create_dir_all(&bin).expect("mkdir");
    let id = HubId::parse("jinaai/jina-embeddings-v3").expect("id");
    hub::install_into_cache(&stage, &id, COMMIT, "main", &fixture()).expect("stage");
    fake_cli(&bin, &stage);

    // The stand-in itself needs mkdir and cp.
    let path_env = format!("{}:/usr/bin:/bin", bin.display());
    let out = download(&cache, &path_env, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = std::fs::read_to_string(bin.join("args.txt")).expect("args");
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [
            "download jinaai/jina-embeddings-v3 config.json tokenizer.json model.safetensors tokenizer_config.json special_tokens_map.json",
            &*cache.to_string_lossy()
        ]
    );
    let snapshot = cache
        .join(id.cache_folder_name())
        .join("snapshots")
        .join(COMMIT);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        snapshot.to_string_lossy()
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("model.safetensors: sha256"),
        "the LFS file was checked"
    );

    // A revision is passed on.
    let out = download(
        &cache,
        &path_env,
        &["--model", &format!("jinaai/jina-embeddings-v3@{COMMIT}")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read_to_string(bin.join("args.txt"))
        .expect("args")
        .contains(&format!("--revision {COMMIT}")));

    // A blob whose content does not match its sha256 name is refused.
    let blob = hub::expected_sha256(&snapshot.join("model.safetensors")).expect("blob name");
    let staged_blob = stage.join(id.cache_folder_name()).join("blobs").join(&blob);
    let mut bytes = std::fs::read(&staged_blob).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&staged_blob, bytes).expect("corrupt");
    let out = download(&cache, &path_env, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("corrupt") && err.contains(&blob),
        "{err}"
    );

    // No Hugging Face CLI installed: say how to get it (only looked for without the built-in
    // downloader). A folder is not a hub id.
    if cfg!(not(feature = "download")) {
        let empty = tmp.path().join("empty");
        std::fs::create_dir_all(&empty).expect("mkdir");
        let out = download(&cache, &empty.to_string_lossy(), &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("pip install -U huggingface_hub"),
            "{err}"
        );
    } else {
        let out = download(&cache, &path_env, &["--hf-cli", "/nonexistent/hf"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("cannot run /nonexistent/hf"),
            "{err}"
        );
    }
    let out = download(&cache, &path_env, &["--model", "/some/folder"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not a hub id"));
}
