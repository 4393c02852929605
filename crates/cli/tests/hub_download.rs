//! The built-in hub downloader against a mock hub on 127.0.0.1 (no network): it serves the small
//! formula checkpoint with the headers the real hub sends (`X-Repo-Commit`, git-style `ETag`s for
//! small files, a same-host `resolve-cache` redirect, and for the LFS file a redirect to a "CDN"
//! path with `X-Linked-Etag` = sha256 and `X-Linked-Size`), honours `Range`, and records every
//! request. The cache it fills must be the one `huggingface_hub` writes.

#![cfg(all(unix, feature = "download"))]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, OnceLock};

use jina_engine::hub::{self, HubId, Source, MODEL_FILES, OPTIONAL_FILES};
use sha2::{Digest, Sha256};

mod common;

const REPO: &str = "jinaai/jina-embeddings-v3";
const COMMIT: &str = "fedcba9876543210fedcba9876543210fedcba98";
const TOKEN: &str = "hf_test_secret_token_0123456789";

/// Written once per test process (the tests run in parallel threads of one process).
fn fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| common::small_fixture("cli-hub-download-small-fixture"))
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A git-object-id-like etag for the small files (40 hex, not a sha256).
fn git_etag(bytes: &[u8]) -> String {
    sha256(bytes)[..40].to_string()
}

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
}

#[derive(Default, Clone)]
struct Options {
    /// Serve model.safetensors with one byte flipped.
    corrupt: bool,
    /// Refuse hub requests without `Authorization: Bearer <token>`.
    token: Option<String>,
    /// Answer 404 for the optional files, as for a repository without them.
    without_optional: bool,
}

struct MockHub {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl MockHub {
    fn start(options: Options) -> MockHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let files: HashMap<String, Vec<u8>> = hub::all_model_files()
            .map(|f| {
                (
                    f.to_string(),
                    std::fs::read(fixture().join(f)).expect("fixture file"),
                )
            })
            .collect();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new((url.clone(), files, options, requests.clone()));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = state.clone();
                std::thread::spawn(move || {
                    serve_connection(stream, &state.0, &state.1, &state.2, &state.3)
                });
            }
        });
        MockHub { url, requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("lock").clone()
    }

    fn gets(&self) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "GET")
            .collect()
    }
}

/// Answers requests on one keep-alive connection until the client closes it.
fn serve_connection(
    stream: TcpStream,
    base: &str,
    files: &HashMap<String, Vec<u8>>,
    options: &Options,
    log: &Mutex<Vec<Request>>,
) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut headers = HashMap::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let request = Request {
            method,
            path,
            headers,
        };
        log.lock().expect("lock").push(request.clone());
        let (status, headers, body) = respond(&request, base, files, options);
        let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if request.method != "HEAD" {
            out.extend_from_slice(&body);
        }
        if writer.write_all(&out).is_err() {
            return;
        }
    }
}

type Reply = (u16, Vec<(String, String)>, Vec<u8>);

fn respond(
    req: &Request,
    base: &str,
    files: &HashMap<String, Vec<u8>>,
    options: &Options,
) -> Reply {
    let h = |pairs: &[(&str, String)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<Vec<_>>()
    };
    let commit = || ("X-Repo-Commit", COMMIT.to_string());
    if let Some(token) = &options.token {
        if !req.path.starts_with("/cdn/")
            && req.headers.get("authorization") != Some(&format!("Bearer {token}"))
        {
            return (
                401,
                h(&[("X-Error-Message", "Invalid credentials".into())]),
                Vec::new(),
            );
        }
    }
    let small_file = |name: &str| -> Reply {
        let body = files[name].clone();
        (
            200,
            h(&[commit(), ("ETag", format!("\"{}\"", git_etag(&body)))]),
            body,
        )
    };
    if let Some(rest) = req.path.strip_prefix(&format!("/{REPO}/resolve/")) {
        let Some((revision, file)) = rest.split_once('/') else {
            return (404, Vec::new(), Vec::new());
        };
        if revision != "main" && revision != COMMIT {
            return (
                404,
                h(&[("X-Error-Message", "Invalid rev id".into())]),
                Vec::new(),
            );
        }
        return match file {
            "config.json" => small_file(file),
            "tokenizer_config.json" | "special_tokens_map.json" if !options.without_optional => {
                small_file(file)
            }
            // As the hub does today for non-LFS files: a same-host redirect to resolve-cache.
            "tokenizer.json" => (
                307,
                h(&[(
                    "Location",
                    format!("/api/resolve-cache/models/{REPO}/{COMMIT}/tokenizer.json"),
                )]),
                Vec::new(),
            ),
            "model.safetensors" => {
                let body = &files[file];
                let sha = sha256(body);
                let headers = h(&[
                    commit(),
                    ("ETag", format!("\"{}\"", git_etag(sha.as_bytes()))),
                    ("X-Linked-Etag", format!("\"{sha}\"")),
                    ("X-Linked-Size", body.len().to_string()),
                    ("Location", format!("{base}/cdn/{sha}?signature=abc")),
                ]);
                (302, headers, Vec::new())
            }
            _ => (
                404,
                h(&[("X-Error-Message", "Entry not found".into())]),
                Vec::new(),
            ),
        };
    }
    if req.path == format!("/api/resolve-cache/models/{REPO}/{COMMIT}/tokenizer.json") {
        return small_file("tokenizer.json");
    }
    if req.path.starts_with("/cdn/") {
        let mut body = files["model.safetensors"].clone();
        if options.corrupt {
            let last = body.len() - 1;
            body[last] ^= 1;
        }
        let len = body.len();
        if let Some(from) = req
            .headers
            .get("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
        {
            let from: usize = from.parse().expect("range start");
            return (
                206,
                h(&[("Content-Range", format!("bytes {from}-{}/{len}", len - 1))]),
                body[from..].to_vec(),
            );
        }
        return (200, Vec::new(), body);
    }
    (404, Vec::new(), Vec::new())
}

/// The binary with a private cache and the mock hub; nothing from the caller's environment.
fn jina(cache: &Path, endpoint: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jina-embed"));
    // A proxy from the environment would not reach the mock hub on 127.0.0.1.
    let proxies = [
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ];
    for var in [
        "JINA_MODEL",
        "JINA_OFFLINE",
        "JINA_HF_CLI",
        "HF_HUB_OFFLINE",
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HOME",
    ]
    .into_iter()
    .chain(proxies)
    {
        cmd.env_remove(var);
    }
    // HOME too: a token file of the user's must not be read.
    cmd.env("HF_HUB_CACHE", cache)
        .env("HF_ENDPOINT", endpoint)
        .env("HOME", cache);
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn repo_dir(cache: &Path) -> PathBuf {
    cache.join(HubId::parse(REPO).expect("id").cache_folder_name())
}

#[test]
fn download_fills_the_cache_in_the_huggingface_hub_layout() {
    let hub = MockHub::start(Options::default());
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = tmp.path().join("cache");
    let out = jina(&cache, &hub.url)
        .args(["download", "--model", REPO])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));

    let repo = repo_dir(&cache);
    let snapshot = repo.join("snapshots").join(COMMIT);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        snapshot.to_string_lossy()
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).expect("ref"),
        COMMIT
    );
    for file in hub::all_model_files() {
        let want = std::fs::read(fixture().join(file)).expect("fixture");
        let etag = if file == "model.safetensors" {
            sha256(&want)
        } else {
            git_etag(&want)
        };
        let link = std::fs::read_link(snapshot.join(file)).expect("a symlink");
        assert_eq!(link, Path::new("../../blobs").join(&etag), "{file}");
        assert_eq!(
            std::fs::read(snapshot.join(file)).expect("read"),
            want,
            "{file}"
        );
    }
    let mut blobs: Vec<String> = std::fs::read_dir(repo.join("blobs"))
        .expect("blobs")
        .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
        .collect();
    blobs.sort();
    assert_eq!(blobs.len(), 5, "no .incomplete left: {blobs:?}");
    let resolved = hub::resolve_with_cache(REPO, Some(&cache)).expect("resolves");
    assert_eq!(
        resolved.source,
        Source::Cache {
            id: HubId::parse(REPO).expect("id"),
            commit: COMMIT.into()
        }
    );

    // One summary line per file; the LFS file's sha256 was checked.
    let err = stderr(&out);
    assert!(
        err.contains("model.safetensors: downloaded") && err.contains("sha256 ok"),
        "{err}"
    );
    assert!(
        err.contains("config.json: downloaded") && err.contains("tokenizer.json: downloaded"),
        "{err}"
    );
    // The LFS content came from the CDN address; later files were asked for at the commit.
    assert!(hub.gets().iter().any(|r| r.path.starts_with("/cdn/")));
    assert!(hub
        .requests()
        .iter()
        .any(|r| r.path.contains(&format!("/resolve/{COMMIT}/"))));
    // HEAD of the LFS file was not followed to the CDN (its headers are on the redirect).
    assert!(!hub
        .requests()
        .iter()
        .any(|r| r.method == "HEAD" && r.path.starts_with("/cdn/")));

    // A second run asks the hub, finds the blobs and fetches nothing.
    let gets = hub.gets().len();
    let out = jina(&cache, &hub.url)
        .args(["download"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(hub.gets().len(), gets, "nothing fetched again");
    assert!(
        stderr(&out).contains("model.safetensors: already in the cache"),
        "{}",
        stderr(&out)
    );

    // Offline, download only checks what is cached.
    let out = jina(&cache, "http://127.0.0.1:1")
        .env("HF_HUB_OFFLINE", "1")
        .args(["download"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_repository_without_the_optional_tokenizer_files_still_downloads() {
    let hub = MockHub::start(Options {
        without_optional: true,
        ..Options::default()
    });
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = tmp.path().join("cache");
    let out = jina(&cache, &hub.url)
        .args(["download", "--model", REPO])
        .output()
        .expect("run");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("tokenizer_config.json: not in the repository (optional"),
        "{err}"
    );
    let snapshot = repo_dir(&cache).join("snapshots").join(COMMIT);
    for file in MODEL_FILES {
        assert!(snapshot.join(file).is_file(), "{file}");
    }
    for file in OPTIONAL_FILES {
        assert!(!snapshot.join(file).exists(), "{file}");
    }
    assert!(hub::resolve_with_cache(REPO, Some(&cache)).is_ok());
}

#[test]
fn embed_downloads_a_missing_model_then_embeds() {
    let hub = MockHub::start(Options::default());
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = tmp.path().join("cache");
    let input = tmp.path().join("in.txt");
    std::fs::write(&input, "first text\nsecond text\n").expect("write");
    let embed = |model: &str| {
        let out = jina(&cache, &hub.url)
            .args(["embed", "--model", model, "--input"])
            .arg(&input)
            .arg("--quiet")
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", stderr(&out));
        out
    };
    let downloaded = embed(REPO);
    assert!(
        stderr(&downloaded).contains("downloading it from"),
        "{}",
        stderr(&downloaded)
    );
    let direct = embed(&fixture().to_string_lossy());
    assert!(!downloaded.stdout.is_empty());
    assert_eq!(downloaded.stdout, direct.stdout);
    assert!(hub::resolve_with_cache(REPO, Some(&cache)).is_ok());

    // Cached now: the next run makes no request at all.
    let before = hub.requests().len();
    embed(REPO);
    assert_eq!(hub.requests().len(), before);
}

#[test]
fn a_body_that_does_not_match_its_sha256_is_refused_and_deleted() {
    let hub = MockHub::start(Options {
        corrupt: true,
        ..Options::default()
    });
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = tmp.path().join("cache");
    let out = jina(&cache, &hub.url)
        .args(["download"])
        .output()
        .expect("run");
    let err = stderr(&out);
    assert!(!out.status.success());
    let good = std::fs::read(fixture().join("model.safetensors")).expect("fixture");
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    for needle in ["model.safetensors", &sha256(&good), &sha256(&bad)] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
    let blobs = repo_dir(&cache).join("blobs");
    assert!(
        !blobs.join(sha256(&good)).exists()
            && !blobs.join(format!("{}.incomplete", sha256(&good))).exists()
    );
    assert!(hub::resolve_with_cache(REPO, Some(&cache)).is_err());
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let hub = MockHub::start(Options::default());
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = tmp.path().join("cache");
    let weights = std::fs::read(fixture().join("model.safetensors")).expect("fixture");
    let blobs = repo_dir(&cache).join("blobs");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let half = weights.len() / 2;
    std::fs::write(
        blobs.join(format!("{}.incomplete", sha256(&weights))),
        &weights[..half],
    )
    .expect("partial");

    let out = jina(&cache, &hub.url)
        .args(["download"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let cdn: Vec<Request> = hub
        .gets()
        .into_iter()
        .filter(|r| r.path.starts_with("/cdn/"))
        .collect();
    assert_eq!(cdn.len(), 1);
    assert_eq!(
        cdn[0].headers.get("range").map(String::as_str),
        Some(&*format!("bytes={half}-"))
    );
    let snapshot = repo_dir(&cache).join("snapshots").join(COMMIT);
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).expect("read"),
        weights
    );
    assert!(!blobs
        .join(format!("{}.incomplete", sha256(&weights)))
        .exists());
    assert!(stderr(&out).contains("resumed at"), "{}", stderr(&out));
}

#[test]
fn offline_and_not_cached_says_how_to_get_the_weights_without_a_request() {
    let hub = MockHub::start(Options::default());
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = tmp.path().join("cache");
    let how_to = "huggingface-cli download jinaai/jina-embeddings-v3 config.json tokenizer.json model.safetensors";
    let offline: [(&str, &[&str]); 3] = [
        ("HF_HUB_OFFLINE", &[]),
        ("JINA_OFFLINE", &[]),
        ("", &["--offline"]),
    ];
    for (var, flag) in offline {
        let mut cmd = jina(&cache, &hub.url);
        if !var.is_empty() {
            cmd.env(var, "1");
        }
        let out = cmd
            .args(["info", "--model", REPO])
            .args(flag)
            .output()
            .expect("run");
        let err = stderr(&out);
        assert!(
            !out.status.success() && err.contains(how_to) && err.contains("not downloaded"),
            "{var}{flag:?}: {err}"
        );
    }
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
    assert!(!repo_dir(&cache).exists());
}

#[test]
fn an_unreachable_hub_says_not_cached_download_failed_and_how_to_get_the_weights() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = tmp.path().join("cache");
    let out = jina(&cache, "http://127.0.0.1:1")
        .args(["embed", "--model", REPO, "--input", "-"])
        .output()
        .expect("run");
    let err = stderr(&out);
    assert!(!out.status.success());
    for needle in [
        "is not cached",
        "downloading it from http://127.0.0.1:1 failed",
        "not in the Hugging Face cache",
        "huggingface-cli download jinaai/jina-embeddings-v3",
    ] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
    assert!(
        !repo_dir(&cache).exists(),
        "a failed first request leaves nothing in the cache"
    );
}

#[test]
fn the_token_is_sent_as_bearer_and_never_printed() {
    let hub = MockHub::start(Options {
        token: Some(TOKEN.into()),
        ..Options::default()
    });
    let tmp = tempfile::tempdir().expect("tmp");
    let cache = tmp.path().join("cache");
    let out = jina(&cache, &hub.url)
        .env("HF_TOKEN", TOKEN)
        .args(["download"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    let to_hub: Vec<Request> = hub
        .requests()
        .into_iter()
        .filter(|r| !r.path.starts_with("/cdn/"))
        .collect();
    assert!(!to_hub.is_empty());
    for request in &to_hub {
        assert_eq!(
            request.headers.get("authorization"),
            Some(&format!("Bearer {TOKEN}")),
            "{request:?}"
        );
    }
    // The CDN address is another origin in real life; here the same, so only check the output.
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!all.contains(TOKEN), "{all}");

    // Without it: a refusal with the hint, and the token still not printed anywhere.
    let out = jina(&tmp.path().join("other"), &hub.url)
        .args(["download"])
        .output()
        .expect("run");
    let err = stderr(&out);
    assert!(
        !out.status.success() && err.contains("401") && err.contains("HF_TOKEN"),
        "{err}"
    );
}
