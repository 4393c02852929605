//! `jina-embed download`: fetches a hub model into the Hugging Face cache and checks the sha256
//! of every file the hub names by one (the LFS files, `model.safetensors` among them).
//!
//! With the `download` feature (on by default) the built-in client of [`crate::hub_download`]
//! does it, with a progress bar and resumable transfers. Without it, or with `--hf-cli PATH`, the
//! official Hugging Face CLI does (`hf`, or the older `huggingface-cli`, from `pip install -U
//! huggingface_hub`). Either way the cache it fills is the one every command reads
//! (`--model jinaai/jina-embeddings-v3`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use clap::Args;
use jina_engine::hub::{self, HubId};

#[derive(Args)]
pub struct DownloadArgs {
    /// Hub id: owner/name[@revision].
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    model: String,
    /// Run this Hugging Face CLI (`hf` or `huggingface-cli`) instead of the built-in downloader.
    /// Without the built-in downloader, `hf` then `huggingface-cli` are looked up on PATH.
    #[arg(long, env = "JINA_HF_CLI")]
    hf_cli: Option<PathBuf>,
}

fn find_cli(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    // `hf download` and `huggingface-cli download` take the same arguments.
    for name in ["hf", "huggingface-cli"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    bail!("neither `hf` nor `huggingface-cli` is on PATH: install them with `pip install -U huggingface_hub` (or pass --hf-cli PATH)")
}

pub fn run(args: DownloadArgs) -> anyhow::Result<()> {
    let Some(id) = HubId::parse(&args.model) else {
        bail!(
            "--model {:?} is not a hub id like {}[@revision]",
            args.model,
            hub::DEFAULT_MODEL
        );
    };
    let Some(cache) = hub::cache_dir() else {
        bail!("no Hugging Face cache folder: set HF_HUB_CACHE or HF_HOME (HOME is unset)");
    };
    let dir = match args.hf_cli {
        #[cfg(feature = "download")]
        None => native(&id, &cache)?,
        cli => with_hf_cli(&id, &cache, cli)?,
    };
    println!("{}", dir.display());
    Ok(())
}

/// The built-in downloader; offline, only a check of what the cache already holds.
#[cfg(feature = "download")]
fn native(id: &HubId, cache: &Path) -> anyhow::Result<PathBuf> {
    if let Some(reason) = crate::resolve::offline_reason() {
        let resolved = hub::resolve_with_cache(&id.to_string(), Some(cache))
            .with_context(|| format!("not downloading: {reason}"))?;
        verify(&resolved.dir)?;
        return Ok(resolved.dir);
    }
    let hub_client = crate::hub_download::Hub::from_env();
    eprintln!(
        "downloading {id} from {} into {}",
        hub_client.endpoint(),
        cache.display()
    );
    let commit = hub_client
        .download(id, cache)
        .with_context(|| format!("downloading {id}"))?;
    eprintln!("{id}: commit {commit}");
    // What was written must be what every command reads.
    Ok(hub::resolve_with_cache(&id.to_string(), Some(cache))?.dir)
}

/// Runs `hf download` (or `huggingface-cli download`) into `cache`, then checks the sha256s.
fn with_hf_cli(id: &HubId, cache: &Path, cli: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let cli = find_cli(cli)?;
    let mut command = Command::new(&cli);
    // The optional files too: the official repository has them (a repository without them
    // makes the CLI fail; the built-in downloader skips them there).
    let files: Vec<&str> = hub::all_model_files().collect();
    command.arg("download").arg(&id.repo).args(&files);
    if let Some(revision) = &id.revision {
        command.args(["--revision", revision]);
    }
    // The same cache this tool reads, whatever the CLI's own defaults.
    command.env("HF_HUB_CACHE", cache);
    eprintln!(
        "running {} download {} {} into {}",
        cli.display(),
        id.repo,
        files.join(" "),
        cache.display()
    );
    let status = command
        .status()
        .with_context(|| format!("cannot run {}", cli.display()))?;
    if !status.success() {
        bail!(
            "{} download {} failed ({status}); see its messages above",
            cli.display(),
            id
        );
    }
    let resolved = hub::resolve_with_cache(&id.to_string(), Some(cache))?;
    verify(&resolved.dir)?;
    Ok(resolved.dir)
}

/// Checks the sha256 of every model file whose cache blob is named by one.
pub fn verify(dir: &Path) -> anyhow::Result<usize> {
    let mut checked = 0;
    for name in hub::all_model_files() {
        let path = dir.join(name);
        if let Some(want) = hub::expected_sha256(&path) {
            let got =
                hub::sha256_file(&path).with_context(|| format!("hashing {}", path.display()))?;
            if got != want {
                bail!("{} is corrupt: its sha256 is {got} but the cache names it {want}; delete it and download again", path.display());
            }
            checked += 1;
            eprintln!("{name}: sha256 {got} ok");
        }
    }
    Ok(checked)
}
