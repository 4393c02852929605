//! `jina-embed download`: fetches a hub model into the Hugging Face cache with the official
//! Hugging Face CLI (`hf`, or the older `huggingface-cli`, from `pip install -U huggingface_hub`),
//! which shows its own progress bars and resumes partial downloads, then checks each file's
//! sha256 against the blob name the cache gives it (the LFS files, `model.safetensors` among
//! them). Delegating keeps HTTP and TLS out of this binary; the cache it fills is the one every
//! command reads (`--model jinaai/jina-embeddings-v3`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use clap::Args;
use jina_engine::hub::{self, HubId, MODEL_FILES};

#[derive(Args)]
pub struct DownloadArgs {
    /// Hub id: owner/name[@revision].
    #[arg(long, default_value = hub::DEFAULT_MODEL)]
    model: String,
    /// The Hugging Face CLI to run (default: `hf`, else `huggingface-cli`, from PATH).
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
        bail!("--model {:?} is not a hub id like {}[@revision]", args.model, hub::DEFAULT_MODEL);
    };
    let Some(cache) = hub::cache_dir() else {
        bail!("no Hugging Face cache folder: set HF_HUB_CACHE or HF_HOME (HOME is unset)");
    };
    let cli = find_cli(args.hf_cli)?;
    let mut command = Command::new(&cli);
    command.arg("download").arg(&id.repo).args(MODEL_FILES);
    if let Some(revision) = &id.revision {
        command.args(["--revision", revision]);
    }
    // The same cache this tool reads, whatever the CLI's own defaults.
    command.env("HF_HUB_CACHE", &cache);
    eprintln!("running {} download {} {} into {}", cli.display(), id.repo, MODEL_FILES.join(" "), cache.display());
    let status = command.status().with_context(|| format!("cannot run {}", cli.display()))?;
    if !status.success() {
        bail!("{} download {} failed ({status}); see its messages above", cli.display(), id);
    }
    let resolved = hub::resolve_with_cache(&id.to_string(), Some(&cache))?;
    verify(&resolved.dir)?;
    println!("{}", resolved.dir.display());
    Ok(())
}

/// Checks the sha256 of every model file whose cache blob is named by one.
pub fn verify(dir: &Path) -> anyhow::Result<usize> {
    let mut checked = 0;
    for name in MODEL_FILES {
        let path = dir.join(name);
        if let Some(want) = hub::expected_sha256(&path) {
            let got = hub::sha256_file(&path).with_context(|| format!("hashing {}", path.display()))?;
            if got != want {
                bail!("{} is corrupt: its sha256 is {got} but the cache names it {want}; delete it and download again", path.display());
            }
            checked += 1;
            eprintln!("{name}: sha256 {got} ok");
        }
    }
    Ok(checked)
}
