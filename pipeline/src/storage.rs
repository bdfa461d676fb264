//! Storage locations: a local path or a URL, resolved to an object_store and a prefix.

use crate::PipelineError;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};
use std::sync::Arc;

/// A place to read from or write to: a store and a prefix inside it.
#[derive(Clone)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: StorePath,
    /// As the user wrote it, for messages.
    pub display: String,
}

impl Location {
    /// `file:///x`, `memory:///x` (and cloud URLs when built with them), or a local path.
    /// A local directory is created if missing when `create` is set.
    pub fn parse(spec: &str, create: bool) -> Result<Self, PipelineError> {
        let fail = |message: String| PipelineError::Location {
            location: spec.to_string(),
            message,
        };
        if spec.contains("://") {
            let url = url::Url::parse(spec).map_err(|e| fail(e.to_string()))?;
            let (store, prefix) = object_store::parse_url(&url).map_err(|e| fail(e.to_string()))?;
            return Ok(Self {
                store: Arc::from(store),
                prefix,
                display: spec.to_string(),
            });
        }
        let path = std::path::Path::new(spec);
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| fail(e.to_string()))?
                .join(path)
        };
        if create {
            std::fs::create_dir_all(&absolute)
                .map_err(|e| fail(format!("cannot create directory: {e}")))?;
        } else if !absolute.is_dir() {
            return Err(fail("no such directory".into()));
        }
        let store = LocalFileSystem::new_with_prefix(&absolute).map_err(|e| fail(e.to_string()))?;
        Ok(Self {
            store: Arc::new(store),
            prefix: StorePath::default(),
            display: spec.to_string(),
        })
    }

    /// A single file: the location of its directory and its name.
    pub fn parse_file(spec: &str) -> Result<(Self, StorePath), PipelineError> {
        let fail = |message: &str| PipelineError::Location {
            location: spec.to_string(),
            message: message.into(),
        };
        if spec.contains("://") {
            let loc = Self::parse(spec, false)?;
            let file = loc.prefix.clone();
            return Ok((
                Self {
                    prefix: StorePath::default(),
                    ..loc
                },
                file,
            ));
        }
        let path = std::path::Path::new(spec);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| fail("not a file path"))?;
        let dir = path
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| !p.is_empty());
        let dir = dir.as_deref().unwrap_or(".");
        if !std::path::Path::new(dir).is_dir() {
            return Err(fail(&format!(
                "no such file: the directory {dir} does not exist"
            )));
        }
        let loc = Self::parse(dir, false)?;
        Ok((
            Self {
                display: spec.to_string(),
                ..loc
            },
            StorePath::from(name),
        ))
    }

    /// The path of `relative` inside this location.
    pub fn child(&self, relative: &str) -> StorePath {
        let mut path = self.prefix.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            path = path.join(part);
        }
        path
    }

    /// Writes `bytes` at `relative` (a whole-object put: readers see all of it or nothing).
    pub async fn put(&self, relative: &str, bytes: Vec<u8>) -> Result<(), PipelineError> {
        self.store
            .put(&self.child(relative), bytes.into())
            .await
            .map_err(|e| PipelineError::Output {
                location: format!("{}/{relative}", self.display.trim_end_matches('/')),
                message: e.to_string(),
            })?;
        Ok(())
    }
}

/// The whole content of one file given as a path or URL.
pub fn read_file(spec: &str) -> Result<bytes::Bytes, PipelineError> {
    let (location, file) = Location::parse_file(spec)?;
    io_runtime()?
        .block_on(async { location.store.get(&file).await?.bytes().await })
        .map_err(|e| PipelineError::Input {
            location: spec.to_string(),
            message: e.to_string(),
        })
}

/// A single-threaded tokio runtime for a blocking caller (the main thread or one worker).
pub fn io_runtime() -> Result<tokio::runtime::Runtime, PipelineError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PipelineError::Worker(format!("cannot start an I/O runtime: {e}")))
}
