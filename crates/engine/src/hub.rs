//! Finding a model folder from what the user typed: a local folder, or a Hugging Face hub id
//! (`jinaai/jina-embeddings-v3`, optionally `@revision`) looked up in the Hugging Face cache, so
//! that weights fetched with `huggingface-cli download` (or any `huggingface_hub` tool) are reused.
//!
//! The cache layout (`huggingface_hub`'s, unchanged):
//!
//! ```text
//! <cache>/models--jinaai--jina-embeddings-v3/
//!     refs/main                      the commit sha that `main` points to
//!     snapshots/<sha>/config.json    usually symlinks into ../../blobs/<hash>
//!     blobs/<hash>                   the file contents (LFS files are named by their sha256)
//! ```
//!
//! `<cache>` is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
//! else `~/.cache/huggingface/hub`, as in `huggingface_hub`. Nothing here touches the network
//! (the `jina-embed` binary's downloader fills the same layout).

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::Digest as _;

/// The model that `serve` and `embed` use when `--model` is not given.
pub const DEFAULT_MODEL: &str = "jinaai/jina-embeddings-v3";

/// The files a model folder must hold.
pub const MODEL_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// Files used when the repository has them: transformers applies `tokenizer_config.json` over
/// `tokenizer.json` (the real repository's changes the ids of texts that spell `<mask>`), and
/// `special_tokens_map.json` comes with it.
pub const OPTIONAL_FILES: [&str; 2] = ["tokenizer_config.json", "special_tokens_map.json"];

/// Every file fetched for a model: the required ones first, then the optional ones.
pub fn all_model_files() -> impl Iterator<Item = &'static str> {
    MODEL_FILES.into_iter().chain(OPTIONAL_FILES)
}

/// A hub repository id with an optional revision (branch, tag or commit sha).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    /// `owner/name`.
    pub repo: String,
    /// Branch, tag or commit; `None` means `main`.
    pub revision: Option<String>,
}

impl HubId {
    /// Parses `owner/name` or `owner/name@revision`; `None` if `spec` does not have that shape
    /// (an absolute or `./` path, more than one `/`, empty parts, characters the hub refuses).
    pub fn parse(spec: &str) -> Option<HubId> {
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, rev))
                if !rev.is_empty() && !rev.contains(['@', ' ', '\\']) && !rev.contains("..") =>
            {
                (repo, Some(rev.to_string()))
            }
            Some(_) => return None,
            None => (spec, None),
        };
        let (owner, name) = repo.split_once('/')?;
        let valid = |part: &str| {
            !part.is_empty()
                && !part.starts_with(['.', '-'])
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !valid(owner) || !valid(name) {
            return None;
        }
        Some(HubId {
            repo: repo.to_string(),
            revision,
        })
    }

    /// The revision asked for (`main` when none was given).
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// The repository's folder name in the cache: `models--owner--name`.
    pub fn cache_folder_name(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }

    /// The `huggingface-cli` command that downloads the files this project reads into the cache
    /// (the optional ones too: the official repository has them).
    pub fn download_command(&self) -> String {
        let revision = match &self.revision {
            Some(rev) => format!(" --revision {rev}"),
            None => String::new(),
        };
        let files: Vec<&str> = all_model_files().collect();
        format!(
            "huggingface-cli download {}{revision} {}",
            self.repo,
            files.join(" ")
        )
    }
}

impl fmt::Display for HubId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.revision {
            Some(rev) => write!(f, "{}@{rev}", self.repo),
            None => f.write_str(&self.repo),
        }
    }
}

/// Why a `--model` value could not be turned into a folder. Every message says what was looked
/// at and how to get the weights.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Neither an existing folder nor a hub id.
    #[error("--model {spec:?} is neither a folder nor a hub id like {DEFAULT_MODEL}[@revision]")]
    NotAModel {
        /// What was given.
        spec: String,
    },
    /// A hub id that is not in the cache (or only partly).
    #[error(
        "{id} is not in the Hugging Face cache {cache} ({reason}). Fetch the files with \
         `jina-embed download --model {id}` or\n    {command}\n(pip install -U huggingface_hub \
         provides huggingface-cli; both fill the same cache, or set HF_HUB_CACHE / HF_HOME), or \
         pass a model folder with --model DIR"
    )]
    NotCached {
        /// The id asked for.
        id: HubId,
        /// The cache folder that was searched.
        cache: String,
        /// What is missing.
        reason: String,
        /// The download command.
        command: String,
    },
    /// The cache folder could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Where the model came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A folder given directly.
    Folder,
    /// A snapshot of the Hugging Face cache.
    Cache {
        /// The id asked for.
        id: HubId,
        /// The commit sha of the snapshot.
        commit: String,
    },
}

/// A model folder found by [`resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The folder holding `config.json`, `tokenizer.json` and `model.safetensors`.
    pub dir: PathBuf,
    /// How it was found.
    pub source: Source,
}

/// The Hugging Face hub cache folder from the environment, as `huggingface_hub` chooses it.
pub fn cache_dir() -> Option<PathBuf> {
    cache_dir_from(|name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

/// [`cache_dir`] with the environment given as a function (for tests).
pub fn cache_dir_from(env: impl Fn(&str) -> Option<PathBuf>) -> Option<PathBuf> {
    if let Some(dir) = env("HF_HUB_CACHE") {
        return Some(dir);
    }
    if let Some(home) = env("HF_HOME") {
        return Some(home.join("hub"));
    }
    if let Some(xdg) = env("XDG_CACHE_HOME") {
        return Some(xdg.join("huggingface").join("hub"));
    }
    env("HOME").map(|home| home.join(".cache").join("huggingface").join("hub"))
}

/// Resolves `--model`: an existing folder is used as it is; otherwise a hub id is looked up in
/// the cache from the environment ([`cache_dir`]).
pub fn resolve(spec: &str) -> Result<Resolved, ResolveError> {
    resolve_with_cache(spec, cache_dir().as_deref())
}

/// [`resolve`] with an explicit cache folder (`None`: no cache could be located).
pub fn resolve_with_cache(spec: &str, cache: Option<&Path>) -> Result<Resolved, ResolveError> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(Resolved {
            dir: path.to_path_buf(),
            source: Source::Folder,
        });
    }
    let Some(id) = HubId::parse(spec) else {
        return Err(ResolveError::NotAModel {
            spec: spec.to_string(),
        });
    };
    let not_cached = |cache: &str, reason: String| ResolveError::NotCached {
        command: id.download_command(),
        id: id.clone(),
        cache: cache.to_string(),
        reason,
    };
    let Some(cache) = cache else {
        return Err(not_cached(
            "(none: HF_HUB_CACHE, HF_HOME and HOME are unset)",
            "no cache folder".into(),
        ));
    };
    let shown = cache.display().to_string();
    let repo_dir = cache.join(id.cache_folder_name());
    if !repo_dir.is_dir() {
        return Err(not_cached(
            &shown,
            format!("no folder {}", repo_dir.display()),
        ));
    }
    let revision = id.revision();
    let ref_file = repo_dir.join("refs").join(revision);
    let commit = if ref_file.is_file() {
        let text = std::fs::read_to_string(&ref_file).map_err(|source| ResolveError::Io {
            path: ref_file.clone(),
            source,
        })?;
        let commit = text.trim().to_string();
        if commit.is_empty() || commit.contains(['/', '\\']) || commit.starts_with('.') {
            return Err(not_cached(
                &shown,
                format!(
                    "{} does not hold a commit sha but {text:?}",
                    ref_file.display()
                ),
            ));
        }
        commit
    } else if repo_dir.join("snapshots").join(revision).is_dir() {
        // A commit sha given directly.
        revision.to_string()
    } else {
        return Err(not_cached(
            &shown,
            format!(
                "revision {revision:?} is neither in {} nor a snapshot folder",
                repo_dir.join("refs").display()
            ),
        ));
    };
    let dir = repo_dir.join("snapshots").join(&commit);
    if !dir.is_dir() {
        return Err(not_cached(
            &shown,
            format!(
                "{} points to {commit} but {} is missing",
                ref_file.display(),
                dir.display()
            ),
        ));
    }
    // `exists` follows symlinks: a dangling link to a missing blob counts as missing.
    let missing: Vec<&str> = MODEL_FILES
        .iter()
        .copied()
        .filter(|f| !dir.join(f).exists())
        .collect();
    if !missing.is_empty() {
        return Err(not_cached(
            &shown,
            format!("snapshot {commit} lacks {}", missing.join(", ")),
        ));
    }
    Ok(Resolved {
        dir,
        source: Source::Cache { id, commit },
    })
}

/// The sha256 of a file, as lowercase hex (streamed: memory stays small for large weights).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = sha2::Sha256::new();
    hash_into(&mut hasher, path)?;
    Ok(to_hex(&hasher.finalize()))
}

/// Feeds a file to `hasher`, streamed; returns its length (a download resumes its hash so).
pub fn hash_into(hasher: &mut sha2::Sha256, path: &Path) -> std::io::Result<u64> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

/// Lowercase hex of a digest.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a blob name (an etag) is a sha256, as the cache names LFS files; small files are
/// named by their git object id instead.
pub fn is_sha256_hex(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// For a snapshot file that is a symlink into `blobs/` named by a sha256 (how the cache stores
/// LFS files such as `model.safetensors`), that expected sha256; `None` for other files.
pub fn expected_sha256(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    let name = target.file_name()?.to_str()?;
    is_sha256_hex(name).then(|| name.to_ascii_lowercase())
}

/// Makes `snapshots/<commit>/<file>` of a cache folder a relative symlink to `blobs/<blob>`, as
/// `huggingface_hub` links it (a copy where symlinks are not available).
pub fn link_snapshot(repo_dir: &Path, commit: &str, file: &str, blob: &str) -> std::io::Result<()> {
    let snapshot = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot)?;
    let link = snapshot.join(file);
    let _ = std::fs::remove_file(&link);
    #[cfg(unix)]
    return std::os::unix::fs::symlink(Path::new("../../blobs").join(blob), &link);
    #[cfg(not(unix))]
    return std::fs::copy(repo_dir.join("blobs").join(blob), &link).map(|_| ());
}

/// Copies a model folder (its [`MODEL_FILES`], and the [`OPTIONAL_FILES`] it has) into `cache`
/// in `huggingface_hub`'s layout, as `huggingface-cli download` leaves it: each file in
/// `blobs/<sha256>`, `snapshots/<commit>/<file>` a relative
/// symlink to it (a copy where symlinks are unsupported), and `refs/<reference>` holding `commit`.
/// Used by the tests and to seed a cache from a local folder.
pub fn install_into_cache(
    cache: &Path,
    id: &HubId,
    commit: &str,
    reference: &str,
    from: &Path,
) -> std::io::Result<PathBuf> {
    let repo_dir = cache.join(id.cache_folder_name());
    std::fs::create_dir_all(repo_dir.join("blobs"))?;
    std::fs::create_dir_all(repo_dir.join("refs"))?;
    for file in all_model_files() {
        let src = from.join(file);
        if !src.exists() && OPTIONAL_FILES.contains(&file) {
            continue;
        }
        let hash = sha256_file(&src)?;
        let blob = repo_dir.join("blobs").join(&hash);
        if !blob.exists() {
            std::fs::copy(&src, &blob)?;
        }
        link_snapshot(&repo_dir, commit, file, &hash)?;
    }
    std::fs::write(repo_dir.join("refs").join(reference), commit)?;
    Ok(repo_dir.join("snapshots").join(commit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_parse_and_paths_do_not() {
        let id = HubId::parse("jinaai/jina-embeddings-v3").expect("plain id");
        assert_eq!(
            (id.repo.as_str(), id.revision()),
            ("jinaai/jina-embeddings-v3", "main")
        );
        let id = HubId::parse("jinaai/jina-embeddings-v3@f1944de").expect("id with revision");
        assert_eq!(id.revision.as_deref(), Some("f1944de"));
        assert_eq!(id.cache_folder_name(), "models--jinaai--jina-embeddings-v3");
        for not_id in [
            "/abs/path",
            "./rel/x",
            "a/b/c",
            "model",
            "a/",
            "/b",
            "a/b@",
            "../x",
            "a/b@x@y",
            "a b/c",
        ] {
            assert_eq!(HubId::parse(not_id), None, "{not_id}");
        }
    }

    #[test]
    fn the_cache_folder_follows_huggingface_hub_precedence() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| PathBuf::from(v))
            }
        };
        static ALL: [(&str, &str); 4] = [
            ("HF_HUB_CACHE", "/c"),
            ("HF_HOME", "/h"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(cache_dir_from(env(&ALL[..])), Some(PathBuf::from("/c")));
        assert_eq!(
            cache_dir_from(env(&ALL[1..])),
            Some(PathBuf::from("/h/hub"))
        );
        assert_eq!(
            cache_dir_from(env(&ALL[2..])),
            Some(PathBuf::from("/x/huggingface/hub"))
        );
        assert_eq!(
            cache_dir_from(env(&ALL[3..])),
            Some(PathBuf::from("/home/u/.cache/huggingface/hub"))
        );
        assert_eq!(cache_dir_from(env(&[])), None);
    }
}
