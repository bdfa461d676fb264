//! Served models: a policy, a judge and reward models behind HTTP servers (vLLM, SGLang,
//! llama.cpp's `llama-server`, TGI, any OpenAI-compatible endpoint, `steerflow serve`).
//!
//! - [`client`]: the HTTP client every served model shares: a bounded number of requests in
//!   flight, retries with backoff on 429, 5xx, resets and timeouts (honouring `Retry-After`), a
//!   per-request timeout, and counts of requests, retries and failures.
//! - [`policy`]: N samples per prompt through `/v1/completions` (the prompt rendered and
//!   tokenized by the job's own chat template and sent as token ids, so the server sees exactly
//!   what an in-process run prefills) or `/v1/chat/completions`.
//! - [`judge`]: the LLM judge over `/v1/completions` log-probabilities, with the in-process
//!   judge's questions and score definition.
//! - [`reward`]: reward models behind vLLM's classification API or OpenRLHF's remote reward
//!   protocol (both spoken by `steerflow serve`).
//!
//! The wire formats are in REFERENCE.md ("Served models") and docs/served.md.

pub mod client;
pub mod judge;
pub mod policy;
pub mod reward;
mod wire;

use crate::registry::ModelLocation;
use crate::text::TextCodec;
use crate::{ModelError, ServedFailure};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Which server is behind the endpoint: it decides the fields sent beyond OpenAI's own (servers
/// differ in their defaults, so every sampling field is sent explicitly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// llama.cpp's `llama-server`: `top_k: 0`, `min_p: 0` turn its non-neutral defaults off.
    LlamaCpp,
    /// vLLM (`top_k: -1` is off, `min_p: 0`).
    Vllm,
    /// SGLang (as vLLM).
    Sglang,
    /// Only OpenAI's fields: a top-k other than 0 is refused.
    OpenAi,
}

impl ServerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerKind::LlamaCpp => "llama-cpp",
            ServerKind::Vllm => "vllm",
            ServerKind::Sglang => "sglang",
            ServerKind::OpenAi => "openai",
        }
    }
}

/// Which OpenAI route generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionApi {
    /// `/v1/completions` with the prompt as token ids from the job's chat template.
    Completions,
    /// `/v1/chat/completions` with the messages: the server applies its own template.
    Chat,
}

/// Where a served model is and how to talk to it.
#[derive(Clone, PartialEq)]
pub struct Endpoint {
    /// The base URL: `http://host:8000/v1` for OpenAI-compatible servers (the routes
    /// `/completions`, `/chat/completions`, `/models` are appended), the full URL of the route
    /// for reward servers (`http://host:5000/get_reward`, `http://host:8000/classify`).
    pub url: String,
    /// The model name sent with each request; `None` takes the first model `/models` lists.
    pub model: Option<String>,
    /// Sent as `Authorization: Bearer`; never printed.
    pub api_key: Option<String>,
    pub server: ServerKind,
    pub api: CompletionApi,
    /// Requests in flight at once, per worker.
    pub max_in_flight: usize,
    /// Seconds one request may take, reply included.
    pub timeout: Duration,
    /// Retries of one request after a transient failure (429, 5xx, reset, timeout).
    pub max_retries: u32,
    /// The first retry's wait, doubled on each further retry up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &redact_url(&self.url))
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("server", &self.server)
            .field("api", &self.api)
            .field("max_in_flight", &self.max_in_flight)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .finish()
    }
}

impl Endpoint {
    /// An endpoint at `url` with the defaults: 16 requests in flight, 300 s per request, 8
    /// retries from 0.5 s up to 30 s.
    pub fn new(url: &str, server: ServerKind) -> Self {
        Self {
            url: url.trim_end_matches('/').to_string(),
            model: None,
            api_key: None,
            server,
            api: CompletionApi::Completions,
            max_in_flight: 16,
            timeout: Duration::from_secs(300),
            max_retries: 8,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }

    /// The URL without credentials, query or fragment: what logs, lineages and summaries show.
    pub fn redacted(&self) -> String {
        redact_url(&self.url)
    }
}

/// `url` without user, password, query string and fragment.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string().trim_end_matches('/').to_string()
        }
        Err(_) => "<unparseable url>".to_string(),
    }
}

/// Requests, retries and failures of the served models of a process.
#[derive(Debug, Default)]
pub struct ServedCounters {
    requests: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
}

/// A snapshot of [`ServedCounters`], as `summary.json` and the report show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServedStats {
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// Requests sent again after a transient failure.
    pub retries: u64,
    /// Requests that failed for good (a permanent error, or transient through every retry).
    pub failures: u64,
}

impl ServedStats {
    pub fn add(&mut self, other: ServedStats) {
        self.requests += other.requests;
        self.retries += other.retries;
        self.failures += other.failures;
    }
}

impl ServedCounters {
    pub fn snapshot(&self) -> ServedStats {
        ServedStats {
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }
    fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
    fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
    fn failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }
}

/// The first failure among a batch of requests that stops the run (the endpoint refuses every
/// request, or stayed unavailable): once there is one, no further request starts, and the items
/// left unanswered fail with its message and kind.
#[derive(Default)]
pub(crate) struct Outage(std::cell::RefCell<Option<(String, ServedFailure)>>);

impl Outage {
    pub fn note(&self, error: &ModelError) {
        if let ModelError::Served {
            message, failure, ..
        } = error
        {
            if error.stops_the_run() {
                self.0
                    .borrow_mut()
                    .get_or_insert_with(|| (message.clone(), *failure));
            }
        }
    }

    pub fn happened(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// The error of an item that was never answered.
    pub fn unanswered(&self, endpoint: String) -> ModelError {
        let (cause, failure) = self
            .0
            .borrow()
            .clone()
            .unwrap_or_else(|| ("no reply".into(), ServedFailure::Unavailable));
        ModelError::Served {
            endpoint,
            message: format!("not answered after an earlier request failed: {cause}"),
            failure,
        }
    }
}

/// The tokenizer, chat template and context length of a served model, read from its local
/// files (a GGUF's metadata, a checkpoint's tokenizer files) without loading a weight.
pub fn local_text(location: &ModelLocation) -> Result<(TextCodec, usize), ModelError> {
    match location {
        ModelLocation::Gguf(path) => crate::gguf_tokenizer::text_codec_of_gguf_file(path),
        ModelLocation::HfDir(dir) => crate::hf::text_codec_of_checkpoint(dir),
    }
}

/// The seed a server is sent for a sample: 31 bits of the sample's 64-bit seed, which every
/// server takes (llama-server reads a 32-bit seed where all ones means random).
pub fn server_seed(seed: u64) -> u64 {
    (seed ^ (seed >> 32)) & 0x7fff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials_and_queries() {
        assert_eq!(
            redact_url("http://user:secret@host:8000/v1?key=abc#x"),
            "http://host:8000/v1"
        );
        assert_eq!(redact_url("not a url"), "<unparseable url>");
        let mut e = Endpoint::new("http://h/v1/", ServerKind::Vllm);
        e.api_key = Some("sk-secret".into());
        assert!(!format!("{e:?}").contains("sk-secret"));
        assert_eq!(e.url, "http://h/v1");
    }

    #[test]
    fn server_seeds_fit_in_31_bits_and_differ() {
        assert!(server_seed(u64::MAX) <= 0x7fff_ffff);
        assert_ne!(server_seed(1), server_seed(2));
        assert_ne!(server_seed(1 << 40), server_seed(0));
    }
}
