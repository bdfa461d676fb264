//! Hub ids (`org/name`) resolved from a local Hugging Face cache. steerflow never downloads from
//! the hub: a model that is not cached is a clear error saying how to get it.
//!
//! The cache layout is huggingface_hub's: `$HF_HUB_CACHE` (else `$HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`) / `models--{org}--{name}` / `snapshots/{revision}`, with the
//! revision of `main` in `refs/main`.

use crate::ModelError;
use std::path::{Path, PathBuf};

/// True for strings shaped like a hub id rather than a path.
pub fn looks_like_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| !p.is_empty() && !p.starts_with('.'))
        && !spec.starts_with('/')
        && !Path::new(spec).exists()
}

/// The hub cache directory.
pub fn hub_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

/// The snapshot directory of `repo_id` at `main` in `cache`.
pub fn resolve_in(cache: &Path, repo_id: &str) -> Result<PathBuf, ModelError> {
    let repo = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    let not_cached = || {
        ModelError::Checkpoint {
        path: repo.clone(),
        message: format!(
            "`{repo_id}` is not in the local Hugging Face cache ({}), and steerflow does not download from the hub; \
             fetch it where the hub is reachable (`huggingface-cli download {repo_id}`) and copy the cache, \
             or give the model as a local directory",
            cache.display()
        ),
    }
    };
    let revision =
        std::fs::read_to_string(repo.join("refs").join("main")).map_err(|_| not_cached())?;
    let snapshot = repo.join("snapshots").join(revision.trim());
    if snapshot.join("config.json").exists() {
        Ok(snapshot)
    } else {
        Err(not_cached())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_a_cached_snapshot_and_explains_a_missing_one() {
        let cache = tempfile::tempdir().unwrap();
        let snapshot = cache.path().join("models--org--tiny/snapshots/abc123");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::write(snapshot.join("config.json"), "{}").unwrap();
        std::fs::create_dir_all(cache.path().join("models--org--tiny/refs")).unwrap();
        std::fs::write(cache.path().join("models--org--tiny/refs/main"), "abc123\n").unwrap();
        assert_eq!(resolve_in(cache.path(), "org/tiny").unwrap(), snapshot);
        let err = resolve_in(cache.path(), "nvidia/Llama-3.1-Nemotron-70B-Reward-HF")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not in the local Hugging Face cache")
                && err.contains("huggingface-cli download"),
            "{err}"
        );
        assert!(looks_like_hub_id("nvidia/Nemotron"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("a/b/c"));
    }
}
