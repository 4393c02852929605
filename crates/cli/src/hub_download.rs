//! A Hugging Face hub client that fills the local cache exactly as `huggingface_hub` does, so
//! that `hf`, `huggingface-cli`, Python and this tool share one copy of the weights.
//!
//! For each model file (protocol of `huggingface_hub.file_download`), the optional ones
//! (`tokenizer_config.json`, `special_tokens_map.json`) skipped when the hub answers 404:
//!
//! 1. `HEAD {endpoint}/{repo}/resolve/{revision}/{file}`, following only relative redirects: the
//!    answer names the commit (`X-Repo-Commit`), the blob (`X-Linked-Etag`, else `ETag`; for LFS
//!    files the sha256 of the content) and the size (`X-Linked-Size`, else `Content-Length`). An
//!    LFS file answers with a redirect to a CDN, kept as the address to fetch.
//! 2. Unless `blobs/<etag>` is already there, `GET` into `blobs/<etag>.incomplete` (resuming one
//!    left by an interrupted run with `Range: bytes=N-`), hashing while writing; a 64-hex etag
//!    must equal the content's sha256. Then rename to `blobs/<etag>`.
//! 3. `snapshots/<commit>/<file>` becomes a relative symlink `../../blobs/<etag>`, and
//!    `refs/<revision>` holds the commit unless the revision is itself a commit.
//!
//! After the first file, the rest are asked for at the commit it reported, so that a push during
//! the download cannot mix two commits in one snapshot.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use jina_engine::hub::{self, HubId, OPTIONAL_FILES};
use sha2::{Digest, Sha256};
use ureq::http::Response;
use ureq::Body;

/// The hub used when `HF_ENDPOINT` is unset.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// How many same-host redirects a `HEAD` may follow (renamed repositories, `resolve-cache`).
const MAX_RELATIVE_REDIRECTS: usize = 5;

/// What the hub says about one file before it is fetched.
#[derive(Debug)]
struct FileMeta {
    commit: String,
    /// The blob name: the sha256 for LFS files, a git object id for small ones.
    etag: String,
    size: Option<u64>,
    /// Where the content is: the CDN for LFS files, else the last same-host address.
    location: String,
}

/// A connection to a hub: its address, the token if any, and one HTTP agent per use.
pub struct Hub {
    endpoint: String,
    token: Option<String>,
    /// For `HEAD`: redirects are not followed, so the LFS headers of the redirect can be read.
    head_agent: ureq::Agent,
    /// For `GET`: follows redirects (the CDN may redirect again).
    get_agent: ureq::Agent,
}

impl Hub {
    /// The hub named by `HF_ENDPOINT` (default [`DEFAULT_ENDPOINT`]), with the token of
    /// `HF_TOKEN` or of the file `huggingface-cli login` writes.
    pub fn from_env() -> Hub {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty());
        Hub::new(
            endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT),
            token_from_env(),
        )
    }

    pub fn new(endpoint: &str, token: Option<String>) -> Hub {
        let agent = |redirects: u32| -> ureq::Agent {
            ureq::Agent::config_builder()
                .http_status_as_error(false)
                .max_redirects(redirects)
                // A private repository's `resolve-cache` redirect stays on the hub: keep the token.
                .redirect_auth_headers(ureq::config::RedirectAuthHeaders::SameHost)
                .timeout_connect(Some(Duration::from_secs(20)))
                .timeout_recv_response(Some(Duration::from_secs(60)))
                // A stalled transfer fails (and can be resumed) instead of hanging forever.
                .timeout_per_read(Some(Duration::from_secs(60)))
                .user_agent(concat!("jina-embed/", env!("CARGO_PKG_VERSION")))
                .build()
                .into()
        };
        Hub {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token,
            head_agent: agent(0),
            get_agent: agent(10),
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Downloads the model files of `id` into `cache` (files already there are checked, not
    /// fetched again); returns the commit, whose snapshot folder now holds them.
    pub fn download(&self, id: &HubId, cache: &Path) -> anyhow::Result<String> {
        let repo_dir = cache.join(id.cache_folder_name());
        let blobs = repo_dir.join("blobs");
        let mut commit: Option<String> = None;
        for file in hub::all_model_files() {
            let revision = commit.as_deref().unwrap_or(id.revision());
            let optional = OPTIONAL_FILES.contains(&file);
            let Some(meta) = self.head(&id.repo, revision, file, optional)? else {
                eprintln!(
                    "{file}: not in the repository (optional; tokenizer.json is used as it is)"
                );
                continue;
            };
            if commit.as_ref().is_some_and(|c| *c != meta.commit) {
                bail!(
                    "{file}: the hub answered commit {} for revision {revision}",
                    meta.commit
                );
            }
            let started = Instant::now();
            let outcome = self.fetch_blob(&meta, file, &blobs)?;
            eprintln!("{}", summary(file, &outcome, started.elapsed()));
            link_snapshot(&repo_dir, &meta.commit, file, &meta.etag)?;
            commit = Some(meta.commit);
        }
        let commit = commit.context("no files to download")?;
        write_ref(&repo_dir, id.revision(), &commit)?;
        Ok(commit)
    }

    /// `HEAD` of the file's resolve address, following same-host redirects only; `None` when an
    /// `optional` file is not in the repository (404).
    fn head(
        &self,
        repo: &str,
        revision: &str,
        file: &str,
        optional: bool,
    ) -> anyhow::Result<Option<FileMeta>> {
        let mut url = format!("{}/{repo}/resolve/{revision}/{file}", self.endpoint);
        for _ in 0..=MAX_RELATIVE_REDIRECTS {
            let response = self
                .with_auth(self.head_agent.head(&url), &url)
                .header("Accept-Encoding", "identity")
                .call()
                .with_context(|| format!("HEAD {url}"))?;
            let status = response.status();
            let location = header(&response, "location");
            match location {
                Some(next) if status.is_redirection() && next.starts_with('/') => {
                    url = format!("{}{next}", origin(&url));
                    continue;
                }
                Some(next) if status.is_redirection() => {
                    return file_meta(&response, file, next).map(Some)
                }
                _ if status.is_success() => {
                    return file_meta(&response, file, url.clone()).map(Some)
                }
                _ if optional && status.as_u16() == 404 => return Ok(None),
                _ => bail!("{file}: {}", refusal(&response, &url)),
            }
        }
        bail!("{file}: more than {MAX_RELATIVE_REDIRECTS} redirects from {url}")
    }

    /// Adds the token to requests for the hub itself, never to other hosts (the CDN URL is
    /// signed and needs none).
    fn with_auth<B>(&self, request: ureq::RequestBuilder<B>, url: &str) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) if origin(url) == origin(&self.endpoint) => {
                request.header("Authorization", format!("Bearer {token}"))
            }
            _ => request,
        }
    }

    /// Makes sure `blobs/<etag>` holds the file, fetching (or finishing) it if needed.
    fn fetch_blob(&self, meta: &FileMeta, file: &str, blobs: &Path) -> anyhow::Result<Outcome> {
        // Created only once the hub has answered: a failed first request leaves no trace.
        std::fs::create_dir_all(blobs)
            .with_context(|| format!("cannot create {}", blobs.display()))?;
        let blob = blobs.join(&meta.etag);
        let sha256 = hub::is_sha256_hex(&meta.etag).then_some(meta.etag.as_str());
        if blob.is_file() {
            return check_existing(&blob, file, sha256);
        }
        let partial = blobs.join(format!("{}.incomplete", meta.etag));
        let mut have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if meta.size.is_some_and(|size| have > size) {
            // Longer than the file can be: not a prefix of it.
            std::fs::remove_file(&partial)
                .with_context(|| format!("cannot remove {}", partial.display()))?;
            have = 0;
        }
        let mut hasher = Sha256::new();
        let (bytes, resumed_at) = if meta.size == Some(have) && have > 0 {
            // A previous run received everything but stopped before the rename.
            (hash_file(&mut hasher, &partial)?, have)
        } else {
            self.get_into(meta, file, &partial, have, &mut hasher)?
        };
        if let Some(size) = meta.size.filter(|size| *size != bytes) {
            bail!("{file}: received {bytes} bytes of {size}; the partial file {} is kept: run again to resume", partial.display());
        }
        let got = hub::to_hex(&hasher.finalize());
        if let Some(want) = sha256.filter(|want| *want != got) {
            let _ = std::fs::remove_file(&partial);
            bail!("{file}: sha256 mismatch: the hub names it {want} but the downloaded content hashes to {got}; the download was deleted, run again");
        }
        std::fs::rename(&partial, &blob).with_context(|| {
            format!("cannot rename {} to {}", partial.display(), blob.display())
        })?;
        Ok(Outcome::Fetched {
            bytes,
            resumed_at,
            sha256_checked: sha256.is_some(),
        })
    }

    /// `GET`s the file into `partial`, appending to its first `have` bytes when the server honours
    /// the range; returns the length of the complete file, whose bytes `hasher` has seen, and the
    /// offset the transfer started at.
    fn get_into(
        &self,
        meta: &FileMeta,
        file: &str,
        partial: &Path,
        have: u64,
        hasher: &mut Sha256,
    ) -> anyhow::Result<(u64, u64)> {
        let mut request = self
            .with_auth(self.get_agent.get(&meta.location), &meta.location)
            .header("Accept-Encoding", "identity");
        if have > 0 {
            request = request.header("Range", format!("bytes={have}-"));
        }
        let response = request
            .call()
            .with_context(|| format!("GET {}", meta.location))?;
        let status = response.status().as_u16();
        let mut out = match status {
            206 if have > 0 => {
                hash_file(hasher, partial)?;
                OpenOptions::new().append(true).open(partial)
            }
            200 => File::create(partial),
            _ => bail!("{file}: {}", refusal(&response, &meta.location)),
        }
        .with_context(|| format!("cannot write {}", partial.display()))?;
        let start = if status == 206 { have } else { 0 };
        let bar = progress_bar(file, meta.size, start);
        let mut reader = response.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = start;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    bar.abandon();
                    bail!("{file}: the transfer broke after {total} bytes ({e}); the partial file {} is kept: run again to resume", partial.display());
                }
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .with_context(|| format!("cannot write {}", partial.display()))?;
            total += n as u64;
            bar.inc(n as u64);
        }
        out.sync_all()
            .with_context(|| format!("cannot write {}", partial.display()))?;
        bar.finish_and_clear();
        Ok((total, start))
    }
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Downloaded (or finished, from byte `resumed_at` of an interrupted run) now.
    Fetched {
        bytes: u64,
        resumed_at: u64,
        sha256_checked: bool,
    },
    /// Its blob was already in the cache.
    Cached { bytes: u64, sha256_checked: bool },
}

/// The one line per file printed on stderr.
pub fn summary(file: &str, outcome: &Outcome, elapsed: Duration) -> String {
    let check = |checked: bool| if checked { ", sha256 ok" } else { "" };
    match outcome {
        Outcome::Fetched {
            bytes,
            resumed_at,
            sha256_checked,
        } => {
            let secs = elapsed.as_secs_f64().max(1e-3);
            // The rate of this run's transfer, not of bytes an earlier run received.
            let rate = HumanBytes((bytes.saturating_sub(*resumed_at) as f64 / secs) as u64);
            let resumed = if *resumed_at > 0 {
                format!(", resumed at {}", HumanBytes(*resumed_at))
            } else {
                String::new()
            };
            format!(
                "{file}: downloaded {}{resumed} in {secs:.1} s ({rate}/s){}",
                HumanBytes(*bytes),
                check(*sha256_checked)
            )
        }
        Outcome::Cached {
            bytes,
            sha256_checked,
        } => {
            format!(
                "{file}: already in the cache ({}){}",
                HumanBytes(*bytes),
                check(*sha256_checked)
            )
        }
    }
}

/// The bar's layout: name, bar, bytes so far of total, rate and time left.
pub const PROGRESS_TEMPLATE: &str =
    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}";

/// A byte progress bar on stderr when it is a terminal; hidden (every call a no-op) otherwise,
/// so logs and pipes get only the summary lines.
fn progress_bar(file: &str, size: Option<u64>, start: u64) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(size, target);
    if let Ok(style) = ProgressStyle::with_template(PROGRESS_TEMPLATE) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(file.to_string());
    bar.set_position(start);
    bar.reset_eta();
    bar
}

/// An existing blob named by a sha256 is hashed: a corrupt one is deleted (and the run fails, so
/// the next run fetches it afresh) rather than trusted.
fn check_existing(blob: &Path, file: &str, sha256: Option<&str>) -> anyhow::Result<Outcome> {
    let bytes = std::fs::metadata(blob)
        .with_context(|| format!("cannot read {}", blob.display()))?
        .len();
    if let Some(want) = sha256 {
        let got = hub::sha256_file(blob).with_context(|| format!("hashing {}", blob.display()))?;
        if got != want {
            let _ = std::fs::remove_file(blob);
            bail!("{file}: the cached blob {} is corrupt (sha256 {got}, expected {want}); it was deleted, run again", blob.display());
        }
    }
    Ok(Outcome::Cached {
        bytes,
        sha256_checked: sha256.is_some(),
    })
}

/// Feeds a file to `hasher`; returns its length.
fn hash_file(hasher: &mut Sha256, path: &Path) -> anyhow::Result<u64> {
    hub::hash_into(hasher, path).with_context(|| format!("cannot read {}", path.display()))
}

/// `snapshots/<commit>/<file>` → `../../blobs/<etag>`.
fn link_snapshot(repo_dir: &Path, commit: &str, file: &str, etag: &str) -> anyhow::Result<()> {
    hub::link_snapshot(repo_dir, commit, file, etag).with_context(|| {
        format!(
            "cannot link snapshot {commit}/{file} of {} to blobs/{etag}",
            repo_dir.display()
        )
    })
}

/// `refs/<revision>` = commit, so that `owner/name@revision` finds the snapshot offline. A commit
/// asked for directly needs no ref (its snapshot folder is named by it).
fn write_ref(repo_dir: &Path, revision: &str, commit: &str) -> anyhow::Result<()> {
    if revision == commit {
        return Ok(());
    }
    let path = repo_dir.join("refs").join(revision);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&path, commit).with_context(|| format!("cannot write {}", path.display()))
}

/// Reads the commit, etag and size of a `HEAD` answer.
fn file_meta(response: &Response<Body>, file: &str, location: String) -> anyhow::Result<FileMeta> {
    let commit = header(response, "x-repo-commit").with_context(|| {
        format!(
            "{file}: the answer has no X-Repo-Commit header (is HF_ENDPOINT a Hugging Face hub?)"
        )
    })?;
    let etag = header(response, "x-linked-etag")
        .or_else(|| header(response, "etag"))
        .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
        .with_context(|| format!("{file}: the answer has no ETag header"))?;
    // Both become file names in the cache: refuse anything that could leave it.
    for (what, value) in [("commit", &commit), ("etag", &etag)] {
        if value.is_empty()
            || !value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        {
            bail!("{file}: the hub sent an unusable {what} {value:?}");
        }
    }
    let size = header(response, "x-linked-size")
        .or_else(|| header(response, "content-length"))
        .and_then(|s| s.parse().ok());
    Ok(FileMeta {
        commit,
        etag,
        size,
        location,
    })
}

/// Why the hub refused, with the hint that fits the status.
fn refusal(response: &Response<Body>, url: &str) -> String {
    let status = response.status();
    let hint = match status.as_u16() {
        401 | 403 => {
            " (a private or gated repository? set HF_TOKEN, or accept its terms on the hub)"
        }
        404 => " (check the repository id and revision)",
        _ => "",
    };
    let message = header(response, "x-error-message")
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    format!("{url} answered {status}{message}{hint}")
}

fn header(response: &Response<Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

/// `HF_TOKEN`, else the token file of `huggingface-cli login` (`HF_TOKEN_PATH`, else
/// `$HF_HOME/token`, else `~/.cache/huggingface/token`).
fn token_from_env() -> Option<String> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(token) = var("HF_TOKEN") {
        return token
            .into_string()
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
    }
    let path = var("HF_TOKEN_PATH").map(PathBuf::from).or_else(|| {
        let home = var("HF_HOME")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache/huggingface")))?;
        Some(home.join("token"))
    })?;
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Whether the environment forbids downloads: `HF_HUB_OFFLINE` set to a true value, as
/// `huggingface_hub` reads it.
pub fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_name_the_file_size_rate_and_check() {
        let fetched = Outcome::Fetched {
            bytes: 3 << 20,
            resumed_at: 0,
            sha256_checked: true,
        };
        assert_eq!(
            summary("model.safetensors", &fetched, Duration::from_secs(2)),
            "model.safetensors: downloaded 3.00 MiB in 2.0 s (1.50 MiB/s), sha256 ok"
        );
        let resumed = Outcome::Fetched {
            bytes: 3 << 20,
            resumed_at: 1 << 20,
            sha256_checked: true,
        };
        assert_eq!(
            summary("model.safetensors", &resumed, Duration::from_secs(2)),
            "model.safetensors: downloaded 3.00 MiB, resumed at 1.00 MiB in 2.0 s (1.00 MiB/s), sha256 ok"
        );
        let cached = Outcome::Cached {
            bytes: 512,
            sha256_checked: false,
        };
        assert_eq!(
            summary("config.json", &cached, Duration::ZERO),
            "config.json: already in the cache (512 B)"
        );
    }

    #[test]
    fn the_progress_bar_draws_bytes_rate_and_eta() {
        assert!(ProgressStyle::with_template(PROGRESS_TEMPLATE).is_ok());
        for key in ["{bytes}", "{total_bytes}", "{bytes_per_sec}", "{eta}"] {
            assert!(PROGRESS_TEMPLATE.contains(key), "{key}");
        }
        // Hidden when stderr is not a terminal (as under `cargo test`); the calls still run.
        let bar = progress_bar("model.safetensors", Some(100), 40);
        bar.inc(10);
        assert_eq!(bar.position(), 50);
        bar.finish_and_clear();
    }

    #[test]
    fn origins_and_etags() {
        assert_eq!(
            origin("https://huggingface.co/a/b/resolve/main/x"),
            "https://huggingface.co"
        );
        assert_eq!(origin("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert!(hub::is_sha256_hex(&"a".repeat(64)) && !hub::is_sha256_hex(&"a".repeat(40)));
    }
}
