//! `--model` of every command: a folder, or a hub id found in the Hugging Face cache. A hub id
//! that is not cached is downloaded into the cache (with the `download` feature) unless the run
//! is offline (`--offline`, `JINA_OFFLINE`, or `HF_HUB_OFFLINE=1`), so the first run fetches the
//! weights and every later run is offline.

use std::sync::atomic::{AtomicBool, Ordering};

use jina_engine::hub::{self, ResolveError, Resolved};

/// Set from `--offline` (or `JINA_OFFLINE`) before any command runs.
static OFFLINE: AtomicBool = AtomicBool::new(false);

pub fn set_offline(offline: bool) {
    OFFLINE.store(offline, Ordering::Relaxed);
}

/// Why downloads are off, if they are.
#[cfg_attr(not(feature = "download"), allow(dead_code))]
pub fn offline_reason() -> Option<&'static str> {
    if OFFLINE.load(Ordering::Relaxed) {
        return Some("--offline (or JINA_OFFLINE) is set");
    }
    #[cfg(feature = "download")]
    if crate::hub_download::offline_from_env() {
        return Some("HF_HUB_OFFLINE is set");
    }
    None
}

/// Resolves `--model`, downloading a hub id that is not in the cache when allowed.
pub fn resolve(spec: &str) -> anyhow::Result<Resolved> {
    match hub::resolve(spec) {
        Err(not_cached @ ResolveError::NotCached { .. }) => fetch_missing(spec, not_cached),
        other => Ok(other?),
    }
}

#[cfg(feature = "download")]
fn fetch_missing(spec: &str, not_cached: ResolveError) -> anyhow::Result<Resolved> {
    use anyhow::anyhow;
    if let Some(reason) = offline_reason() {
        return Err(anyhow!("{not_cached}\n(not downloaded: {reason})"));
    }
    let (Some(id), Some(cache)) = (hub::HubId::parse(spec), hub::cache_dir()) else {
        return Err(not_cached.into());
    };
    let hub = crate::hub_download::Hub::from_env();
    eprintln!(
        "{id} is not in the Hugging Face cache {}: downloading it from {}",
        cache.display(),
        hub.endpoint()
    );
    match hub.download(&id, &cache) {
        Ok(_) => Ok(hub::resolve_with_cache(spec, Some(&cache))?),
        Err(err) => Err(anyhow!(
            "{id} is not cached and downloading it from {} failed: {err:#}\n{not_cached}",
            hub.endpoint()
        )),
    }
}

#[cfg(not(feature = "download"))]
fn fetch_missing(_spec: &str, not_cached: ResolveError) -> anyhow::Result<Resolved> {
    // Built without the downloader: the message already says how to fetch the files.
    Err(not_cached.into())
}
