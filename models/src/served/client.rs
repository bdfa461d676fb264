//! The HTTP client of served models: JSON requests with retries, and many of them at a time with
//! a bound on those in flight.
//!
//! A request is sent again after a transient failure: HTTP 408, 429 or 5xx, a connection
//! refused or reset, a timeout, a reply cut short. The wait is the server's `Retry-After` when it
//! sends one, else 0.5 s doubled per retry up to 30 s (each scaled by a factor in [0.5, 1) so that
//! many workers do not retry in step). Generation and scoring change nothing on the server, so
//! sending a request twice is harmless. Other statuses (400, 401, 404...) fail at once with the
//! server's message.

use super::{Endpoint, ServedCounters};
use crate::{ModelError, ServedFailure};
use futures::StreamExt;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A client for one endpoint; cheap to share between workers.
pub struct Client {
    endpoint: Endpoint,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    counters: Arc<ServedCounters>,
    jitter: AtomicU64,
}

/// How one attempt ended.
enum Attempt {
    Done(Value),
    /// Worth retrying, after the server's `Retry-After` if it sent one.
    Transient(String, Option<Duration>),
    /// This request is refused (400, 422, a reply that is not JSON).
    Permanent(String),
    /// Every request will be (401, 403, 404, 405, a request that cannot be built).
    Refused(String),
}

impl Client {
    pub fn new(endpoint: Endpoint, counters: Arc<ServedCounters>) -> Result<Self, ModelError> {
        let error = |message: String| ModelError::Served {
            endpoint: endpoint.redacted(),
            message,
            failure: ServedFailure::Endpoint,
        };
        let http = reqwest::Client::builder()
            .timeout(endpoint.timeout)
            .connect_timeout(endpoint.timeout.min(Duration::from_secs(30)))
            .build()
            .map_err(|e| error(format!("cannot build the HTTP client: {e}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("steerflow-served")
            .enable_all()
            .build()
            .map_err(|e| error(format!("cannot start the HTTP runtime: {e}")))?;
        Ok(Self {
            endpoint,
            http,
            runtime,
            counters,
            // Each process (and client) draws its own waits, so that workers retrying after one
            // outage do not come back in step.
            jitter: AtomicU64::new(
                u64::from(std::process::id()) << 32
                    ^ std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64),
            ),
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn counters(&self) -> &Arc<ServedCounters> {
        &self.counters
    }

    /// `url` of the endpoint followed by `route` (empty for the endpoint itself).
    pub fn url(&self, route: &str) -> String {
        format!("{}{route}", self.endpoint.url)
    }

    fn error(&self, message: String, failure: ServedFailure) -> ModelError {
        ModelError::Served {
            endpoint: self.endpoint.redacted(),
            message,
            failure,
        }
    }

    /// GET `route`, with retries.
    pub fn get(&self, route: &str) -> Result<Value, ModelError> {
        self.runtime
            .block_on(self.send(route, None))
            .map_err(|(m, f)| self.error(m, f))
    }

    /// POST `body` to `route`, with retries.
    pub async fn post(&self, route: &str, body: &Value) -> Result<Value, ModelError> {
        self.send(route, Some(body))
            .await
            .map_err(|(m, f)| self.error(m, f))
    }

    /// Runs `work(item)` for every item with at most `max_in_flight` at a time and calls
    /// `on_done(i, result)` on this thread as item i finishes (in completion order). Once
    /// `cancelled()` says so, no further item starts and those in flight are dropped.
    pub fn run_bounded<I, T, F, Fut>(
        &self,
        items: Vec<I>,
        work: F,
        mut on_done: impl FnMut(usize, T),
        cancelled: impl Fn() -> bool,
    ) where
        F: Fn(I) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let limit = self.endpoint.max_in_flight.max(1);
        self.runtime.block_on(async {
            let mut results = futures::stream::iter(items.into_iter().enumerate())
                .map(|(i, item)| {
                    let fut = work(item);
                    async move { (i, fut.await) }
                })
                .buffer_unordered(limit);
            while let Some((i, result)) = results.next().await {
                on_done(i, result);
                if cancelled() {
                    break;
                }
            }
        });
    }

    async fn send(
        &self,
        route: &str,
        body: Option<&Value>,
    ) -> Result<Value, (String, ServedFailure)> {
        let mut retries = 0u32;
        loop {
            self.counters.request();
            let (message, retry_after) = match self.attempt(route, body).await {
                Attempt::Done(value) => return Ok(value),
                Attempt::Permanent(message) => {
                    self.counters.failure();
                    return Err((message, ServedFailure::Record));
                }
                Attempt::Refused(message) => {
                    self.counters.failure();
                    return Err((message, ServedFailure::Endpoint));
                }
                Attempt::Transient(message, retry_after) => (message, retry_after),
            };
            if retries >= self.endpoint.max_retries {
                self.counters.failure();
                return Err((
                    format!("{message}, still after {retries} retries"),
                    ServedFailure::Unavailable,
                ));
            }
            retries += 1;
            self.counters.retry();
            let wait = retry_after.unwrap_or_else(|| self.backoff(retries));
            tracing::debug!(route, retries, wait = ?wait, %message, "retrying a served-model request");
            tokio::time::sleep(wait).await;
        }
    }

    /// The wait before retry `n` (1-based) when the server named none.
    fn backoff(&self, n: u32) -> Duration {
        let base = self
            .endpoint
            .backoff
            .saturating_mul(1u32 << (n - 1).min(16))
            .min(self.endpoint.max_backoff);
        let draw = self.jitter.fetch_add(1, Ordering::Relaxed);
        let unit =
            (xxhash_rust::xxh3::xxh3_64(&draw.to_le_bytes()) >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(0.5 + 0.5 * unit)
    }

    async fn attempt(&self, route: &str, body: Option<&Value>) -> Attempt {
        let url = self.url(route);
        let mut request = match body {
            Some(body) => self.http.post(&url).json(body),
            None => self.http.get(&url),
        };
        if let Some(key) = &self.endpoint.api_key {
            request = request.bearer_auth(key);
        }
        let response = match request.send().await {
            Ok(r) => r,
            // A request that cannot be built (a key that is not a valid header value) never
            // succeeds: no retries.
            Err(e) if e.is_builder() => {
                return Attempt::Refused(format!(
                    "{route}: cannot build the request: {}",
                    chain(&e)
                ))
            }
            Err(e) => {
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "cannot connect"
                } else {
                    "request failed"
                };
                return Attempt::Transient(format!("{route}: {what}: {}", chain(&e)), None);
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s.min(600.0)));
        let text = match response.text().await {
            Ok(t) => t,
            Err(e) => {
                return Attempt::Transient(format!("{route}: reply cut short: {}", chain(&e)), None)
            }
        };
        if status.is_success() {
            return match serde_json::from_str(&text) {
                Ok(v) => Attempt::Done(v),
                Err(e) => Attempt::Permanent(format!(
                    "{route}: the reply is not JSON ({e}): {}",
                    excerpt(&text)
                )),
            };
        }
        let message = format!("{route}: HTTP {status}: {}", excerpt(&text));
        match status.as_u16() {
            408 | 429 | 500..=599 => Attempt::Transient(message, retry_after),
            401 | 403 | 404 | 405 => Attempt::Refused(message),
            _ => Attempt::Permanent(message),
        }
    }
}

/// An error with its sources, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The start of a server's reply for an error message (the whole reply when short).
fn excerpt(text: &str) -> String {
    const LIMIT: usize = 400;
    if text.len() <= LIMIT {
        return text.trim().to_string();
    }
    let end = (0..=LIMIT)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}… ({} bytes in all)", text[..end].trim(), text.len())
}
