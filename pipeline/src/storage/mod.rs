//! Storage locations: a local path or a URL (`file://`, `s3://`, `az://`, `abfs://`, `gs://`,
//! `memory://`), resolved to an object_store and a prefix.
//!
//! Credentials and endpoints come from each store's standard environment variables
//! (`AWS_*`, `AZURE_*`, `GOOGLE_*`) and from [`StorageOptions`] (the job's `[storage]` section),
//! which win. Requests are retried with bounded exponential backoff on 5xx, throttling,
//! connection resets and timeouts (object_store's retry loop, configured here); an error that is
//! still transient after that is reported as retryable so the command can exit with its own code.

use crate::PipelineError;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutMode, PutOptions, RetryConfig,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Files larger than this are uploaded in parts (multipart upload; still invisible until whole).
pub const MULTIPART_THRESHOLD: usize = 32 * 1024 * 1024;
const MULTIPART_PART: usize = 16 * 1024 * 1024;

/// How to reach object storage: the job's `[storage]` section. Its `Debug` shows option names
/// only, never their values (they may be credentials).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageOptions {
    /// Allow plain `http://` endpoints (emulators, on-premise S3).
    pub allow_http: Option<bool>,
    /// A custom endpoint (MinIO, moto, azurite, a regional endpoint).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Any further object_store option, by its documented key (`aws_access_key_id`,
    /// `azure_storage_use_emulator`, `google_service_account`...). Never printed.
    pub options: BTreeMap<String, String>,
    /// Retries of one request before the error is returned.
    pub max_retries: usize,
    /// No retry starts later than this after the first attempt.
    pub retry_timeout_seconds: f64,
    pub initial_backoff_ms: u64,
    pub max_backoff_seconds: f64,
    /// Per-request timeout.
    pub request_timeout_seconds: f64,
    pub connect_timeout_seconds: f64,
}

impl Default for StorageOptions {
    fn default() -> Self {
        Self {
            allow_http: None,
            endpoint: None,
            region: None,
            options: BTreeMap::new(),
            max_retries: 8,
            retry_timeout_seconds: 180.0,
            initial_backoff_ms: 100,
            max_backoff_seconds: 15.0,
            request_timeout_seconds: 60.0,
            connect_timeout_seconds: 10.0,
        }
    }
}

impl std::fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageOptions")
            .field("allow_http", &self.allow_http)
            .field("endpoint", &self.endpoint.as_deref().map(redact_url))
            .field("region", &self.region)
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .field("max_retries", &self.max_retries)
            .field("retry_timeout_seconds", &self.retry_timeout_seconds)
            .finish_non_exhaustive()
    }
}

/// A URL with any user, password and query (SAS tokens, signed URLs) replaced by `***`, for logs,
/// summaries and reports.
pub fn redact_url(spec: &str) -> String {
    match url::Url::parse(spec) {
        Ok(mut url) if spec.contains("://") => {
            let secret = !url.username().is_empty() || url.password().is_some();
            if secret {
                let _ = url.set_username("***");
                let _ = url.set_password(None);
            }
            if url.query().is_some() {
                url.set_query(Some("***"));
            }
            url.to_string()
        }
        _ => spec.to_string(),
    }
}

impl StorageOptions {
    fn retry(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(self.initial_backoff_ms),
                max_backoff: Duration::from_secs_f64(self.max_backoff_seconds.max(0.0)),
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: Duration::from_secs_f64(self.retry_timeout_seconds.max(0.0)),
        }
    }

    /// The (key, value) pairs handed to a cloud builder, the named settings first.
    fn pairs(&self, endpoint_key: &str) -> Vec<(String, String)> {
        let mut pairs = vec![
            (
                "timeout".to_string(),
                format!("{}ms", (self.request_timeout_seconds * 1000.0) as u64),
            ),
            (
                "connect_timeout".to_string(),
                format!("{}ms", (self.connect_timeout_seconds * 1000.0) as u64),
            ),
        ];
        if let Some(allow) = self.allow_http {
            pairs.push(("allow_http".into(), allow.to_string()));
        }
        if let Some(endpoint) = &self.endpoint {
            pairs.push((endpoint_key.into(), endpoint.clone()));
        }
        if let Some(region) = &self.region {
            pairs.push(("region".into(), region.clone()));
        }
        pairs.extend(self.options.iter().map(|(k, v)| (k.clone(), v.clone())));
        pairs
    }
}

static OPTIONS: RwLock<Option<StorageOptions>> = RwLock::new(None);
static MEMORY_STORES: Mutex<Option<HashMap<String, Arc<InMemory>>>> = Mutex::new(None);

/// Sets the storage options every later [`Location`] of this process uses.
pub fn configure(options: StorageOptions) {
    if let Ok(mut guard) = OPTIONS.write() {
        *guard = Some(options);
    }
}

fn current_options() -> StorageOptions {
    OPTIONS
        .read()
        .ok()
        .and_then(|o| o.clone())
        .unwrap_or_default()
}

/// `memory://name/...` stores live as long as the process, one per name, so that a job and the
/// code inspecting its output see the same objects.
fn memory_store(name: &str) -> Arc<InMemory> {
    let mut guard = MEMORY_STORES.lock().unwrap_or_else(|e| e.into_inner());
    guard
        .get_or_insert_with(HashMap::new)
        .entry(name.to_string())
        .or_insert_with(|| Arc::new(InMemory::new()))
        .clone()
}

/// Builds the store for a URL with the configured options.
fn store_for_url(
    url: &url::Url,
    options: &StorageOptions,
) -> Result<(Arc<dyn ObjectStore>, StorePath), String> {
    if url.scheme() == "memory" {
        let prefix = StorePath::parse(url.path()).map_err(|e| e.to_string())?;
        let store: Arc<dyn ObjectStore> = memory_store(url.host_str().unwrap_or_default());
        return Ok((store, prefix));
    }
    let (scheme, path) = ObjectStoreScheme::parse(url).map_err(|e| e.to_string())?;
    let prefix = StorePath::parse(path).map_err(|e| e.to_string())?;
    let unknown = |key: &str| format!("storage option `{key}` is not known to this store");
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::Local => Arc::new(LocalFileSystem::new()),
        ObjectStoreScheme::AmazonS3 => {
            let mut builder = AmazonS3Builder::from_env().with_url(url.as_str());
            for (key, value) in options.pairs("endpoint") {
                let key = AmazonS3ConfigKey::from_str(&key).map_err(|_| unknown(&key))?;
                builder = builder.with_config(key, value);
            }
            Arc::new(
                builder
                    .with_retry(options.retry())
                    .build()
                    .map_err(|e| e.to_string())?,
            )
        }
        ObjectStoreScheme::MicrosoftAzure => {
            let mut builder = MicrosoftAzureBuilder::from_env().with_url(url.as_str());
            for (key, value) in options.pairs("endpoint") {
                let key = AzureConfigKey::from_str(&key).map_err(|_| unknown(&key))?;
                builder = builder.with_config(key, value);
            }
            Arc::new(
                builder
                    .with_retry(options.retry())
                    .build()
                    .map_err(|e| e.to_string())?,
            )
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            let mut builder = GoogleCloudStorageBuilder::from_env().with_url(url.as_str());
            for (key, value) in options.pairs("base_url") {
                if key == "region" {
                    continue; // GCS buckets carry their location
                }
                let key = GoogleConfigKey::from_str(&key).map_err(|_| unknown(&key))?;
                builder = builder.with_config(key, value);
            }
            Arc::new(
                builder
                    .with_retry(options.retry())
                    .build()
                    .map_err(|e| e.to_string())?,
            )
        }
        other => return Err(format!("{other:?} URLs are not supported for data")),
    };
    Ok((store, prefix))
}

/// Whether a storage error may go away on its own (the server, the network), as opposed to a
/// missing object, a refused credential or a bad path.
pub fn is_transient(error: &object_store::Error) -> bool {
    match error {
        object_store::Error::Generic { store, .. } if *store != "LocalFileSystem" => {
            // A 4xx other than a timeout or throttling is the request's fault: retrying the
            // same request cannot help (object_store reports the status only in its message).
            let text = error.to_string();
            let client_error = text.split("status code: ").nth(1).is_some_and(|rest| {
                rest.starts_with('4') && !rest.starts_with("408") && !rest.starts_with("429")
            });
            !client_error
        }
        _ => false,
    }
}

/// A storage error with where it happened; transient ones are marked retryable.
pub fn storage_error(location: String, error: object_store::Error) -> PipelineError {
    PipelineError::Storage {
        retryable: is_transient(&error),
        location,
        message: error.to_string(),
    }
}

/// Runs `op` again after a transient failure, with exponential backoff bounded by the configured
/// retries. This sits above object_store's own retries: those do not repeat a request that may
/// have reached the store but whose reply was lost (a reset after sending, a timeout), which is
/// exactly what a conditional create must survive. Every operation retried here is idempotent
/// (a whole-object put of the same bytes, a get, a list, a delete) or checks its own result (a
/// create reads back what is there).
async fn with_retries<T, F, Fut>(what: &str, mut op: F) -> Result<T, object_store::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, object_store::Error>>,
{
    let options = current_options();
    let mut backoff = Duration::from_millis(options.initial_backoff_ms);
    let max_backoff = Duration::from_secs_f64(options.max_backoff_seconds.max(0.0));
    let mut attempt = 0;
    loop {
        match op().await {
            Err(e) if is_transient(&e) && attempt < options.max_retries => {
                attempt += 1;
                tracing::warn!(%what, attempt, error = %e, "storage request failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max_backoff);
            }
            other => return other,
        }
    }
}

/// A failure to read an input: an input error (naming it) unless it is transient, which stays a
/// retryable storage error.
pub fn input_error(location: String, error: object_store::Error) -> PipelineError {
    match storage_error(location, error) {
        PipelineError::Storage {
            retryable: false,
            location,
            message,
        } => PipelineError::Input { location, message },
        transient => transient,
    }
}

/// A place to read from or write to: a store and a prefix inside it.
#[derive(Clone)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub prefix: StorePath,
    /// As the user wrote it, for messages.
    pub display: String,
}

/// What a conditional create found.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// The object is ours: created now, or created by us earlier (a retried create whose first
    /// reply was lost, or a rerun writing the same bytes).
    Ours,
    /// Somebody else's object was there first; its content.
    Theirs(bytes::Bytes),
}

impl Location {
    /// A URL (see the module header) or a local path, with the options set by [`configure`].
    /// A local directory is created if missing when `create` is set.
    pub fn parse(spec: &str, create: bool) -> Result<Self, PipelineError> {
        Self::parse_with(spec, &current_options(), create)
    }

    /// As [`Location::parse`] with explicit storage options.
    pub fn parse_with(
        spec: &str,
        options: &StorageOptions,
        create: bool,
    ) -> Result<Self, PipelineError> {
        let fail = |message: String| PipelineError::Location {
            location: spec.to_string(),
            message,
        };
        if spec.contains("://") {
            let url = url::Url::parse(spec).map_err(|e| fail(e.to_string()))?;
            let (store, prefix) = store_for_url(&url, options).map_err(fail)?;
            return Ok(Self {
                store,
                prefix,
                display: redact_url(spec.trim_end_matches('/')),
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
            display: spec.trim_end_matches('/').to_string(),
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

    /// `relative` as the user would write it, for messages.
    pub fn describe(&self, relative: &str) -> String {
        format!("{}/{relative}", self.display)
    }

    fn error(&self, relative: &str, error: object_store::Error) -> PipelineError {
        storage_error(self.describe(relative), error)
    }

    /// Writes `bytes` at `relative`. Readers see all of it or nothing: one put, or for large
    /// files a multipart upload, which becomes visible only when it completes.
    pub async fn put(&self, relative: &str, bytes: Vec<u8>) -> Result<(), PipelineError> {
        let path = self.child(relative);
        let payload = bytes::Bytes::from(bytes);
        with_retries(relative, || async {
            if payload.len() <= MULTIPART_THRESHOLD {
                self.store.put(&path, payload.clone().into()).await?;
                return Ok(());
            }
            let upload = self.store.put_multipart(&path).await?;
            let mut writer =
                object_store::WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART);
            writer.write(&payload);
            writer.finish().await?;
            Ok(())
        })
        .await
        .map_err(|e| self.error(relative, e))
    }

    /// Creates `relative` only if nothing is there. When something is, it is read back and
    /// `is_ours` decides: a create whose reply was lost and retried finds its own object.
    pub async fn create(
        &self,
        relative: &str,
        bytes: Vec<u8>,
        is_ours: impl Fn(&[u8]) -> bool,
    ) -> Result<Created, PipelineError> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let path = self.child(relative);
        let payload = bytes::Bytes::from(bytes);
        match with_retries(relative, || {
            self.store
                .put_opts(&path, payload.clone().into(), options.clone())
        })
        .await
        {
            Ok(_) => Ok(Created::Ours),
            Err(object_store::Error::AlreadyExists { .. }) => {
                let existing = self
                    .get(relative)
                    .await?
                    .ok_or_else(|| PipelineError::Storage {
                        location: self.describe(relative),
                        message: "the store said the object exists, then that it does not".into(),
                        retryable: true,
                    })?;
                if is_ours(&existing) {
                    Ok(Created::Ours)
                } else {
                    Ok(Created::Theirs(existing))
                }
            }
            Err(e) => Err(self.error(relative, e)),
        }
    }

    /// The object at `relative`, or `None` when there is none.
    pub async fn get(&self, relative: &str) -> Result<Option<bytes::Bytes>, PipelineError> {
        let path = self.child(relative);
        match with_retries(relative, || async {
            self.store.get(&path).await?.bytes().await
        })
        .await
        {
            Ok(bytes) => Ok(Some(bytes)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(relative, e)),
        }
    }

    /// Every object under `relative` (recursively), as paths relative to this location, sorted.
    pub async fn list(&self, relative: &str) -> Result<Vec<ListedObject>, PipelineError> {
        use futures::TryStreamExt;
        let prefix = self.child(relative);
        let objects: Vec<object_store::ObjectMeta> = with_retries(relative, || {
            self.store.list(Some(&prefix)).try_collect::<Vec<_>>()
        })
        .await
        .map_err(|e| self.error(relative, e))?;
        let mut listed: Vec<ListedObject> = objects
            .into_iter()
            .filter_map(|meta| {
                let relative: Vec<String> = meta
                    .location
                    .prefix_match(&self.prefix)?
                    .map(|p| p.as_ref().to_string())
                    .collect();
                Some(ListedObject {
                    path: relative.join("/"),
                    size: meta.size,
                    last_modified: meta.last_modified,
                    e_tag: meta.e_tag,
                })
            })
            .collect();
        listed.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(listed)
    }

    /// Deletes `relative`; a missing object is not an error.
    pub async fn delete(&self, relative: &str) -> Result<(), PipelineError> {
        let path = self.child(relative);
        match with_retries(relative, || self.store.delete(&path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(relative, e)),
        }
    }
}

/// One object found by [`Location::list`].
#[derive(Debug, Clone)]
pub struct ListedObject {
    pub path: String,
    pub size: u64,
    pub last_modified: chrono::DateTime<chrono::Utc>,
    pub e_tag: Option<String>,
}

/// The whole content of one file given as a path or URL.
pub fn read_file(spec: &str) -> Result<bytes::Bytes, PipelineError> {
    let (location, file) = Location::parse_file(spec)?;
    io_runtime()?
        .block_on(async { location.store.get(&file).await?.bytes().await })
        .map_err(|e| input_error(spec.to_string(), e))
}

/// The process's I/O runtime, shared by every blocking caller (the main thread, each worker).
/// One runtime for all: an object store's HTTP connection pool belongs to the runtime that opened
/// its connections, so a store used from two runtimes can wait forever on a connection whose
/// runtime is not running.
pub fn io_runtime() -> Result<&'static tokio::runtime::Runtime, PipelineError> {
    static RUNTIME: std::sync::OnceLock<Result<tokio::runtime::Runtime, String>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("steerflow-io")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| PipelineError::Worker(format!("cannot start an I/O runtime: {e}")))
}

#[cfg(test)]
mod tests;
