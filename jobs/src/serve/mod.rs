//! `steerflow serve`: any reward model steerflow loads (checkpoint heads, next-token logit, the
//! judge; CPU, GPU, tensor-parallel) behind HTTP, speaking OpenRLHF's remote reward protocol and
//! vLLM's classification API ([`protocol`]), with concurrent requests scored together
//! ([`batcher`]), `/health`, `/metrics` (Prometheus text) and `/v1/models`, and a graceful
//! shutdown on SIGINT or SIGTERM (requests in flight are answered first). docs/served.md.

pub mod batcher;
pub mod protocol;

use crate::error::{invalid, JobError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use batcher::{Batcher, Items};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use steerflow_models::RewardModel;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// The model name `/v1/models` and replies give (default: the reward model's id).
    pub model_name: Option<String>,
    /// Most items scored in one batch.
    pub max_batch: usize,
    /// How long the batcher waits for more requests once one is in.
    pub batch_wait: Duration,
}

struct App {
    batcher: Batcher,
    names: Vec<String>,
    model: String,
    requests: AtomicU64,
    errors: AtomicU64,
}

type Shared = Arc<App>;

/// The router over `model`, for `serve` and the tests.
pub fn router(model: Arc<dyn RewardModel>, options: &ServeOptions) -> Router {
    let app = Arc::new(App {
        names: model.attribute_names(),
        model: options.model_name.clone().unwrap_or_else(|| model.id()),
        batcher: Batcher::start(model, options.max_batch.max(1), options.batch_wait),
        requests: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/get_reward", post(get_reward))
        .route("/classify", post(classify))
        .route("/v1/classify", post(classify))
        .with_state(app)
}

/// Serves `model` until SIGINT or SIGTERM; `on_ready(address)` once it listens.
pub fn serve(
    model: Arc<dyn RewardModel>,
    options: ServeOptions,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), JobError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| invalid(format!("cannot start the server runtime: {e}")))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|e| invalid(format!("cannot listen on {}: {e}", options.listen)))?;
        let address = listener
            .local_addr()
            .map_err(|e| invalid(format!("listening address: {e}")))?;
        on_ready(address);
        axum::serve(listener, router(model, &options))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(|e| invalid(format!("server: {e}")))
    })
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: answering the requests in flight");
}

fn error(app: &App, status: StatusCode, message: String) -> Response {
    app.errors.fetch_add(1, Ordering::Relaxed);
    let body =
        json!({"error": {"message": message, "type": "BadRequestError", "code": status.as_u16()}});
    (status, Json(body)).into_response()
}

async fn health(State(app): State<Shared>) -> Json<Value> {
    Json(json!({"status": "ok", "model": app.model}))
}

async fn models(State(app): State<Shared>) -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": app.model, "object": "model", "owned_by": "steerflow"}]}),
    )
}

async fn metrics(State(app): State<Shared>) -> String {
    let s = &app.batcher.stats;
    format!(
        "# TYPE steerflow_serve_requests_total counter\nsteerflow_serve_requests_total {}\n\
         # TYPE steerflow_serve_request_errors_total counter\nsteerflow_serve_request_errors_total {}\n\
         # TYPE steerflow_serve_batches_total counter\nsteerflow_serve_batches_total {}\n\
         # TYPE steerflow_serve_items_total counter\nsteerflow_serve_items_total {}\n\
         # TYPE steerflow_serve_failed_items_total counter\nsteerflow_serve_failed_items_total {}\n",
        app.requests.load(Ordering::Relaxed),
        app.errors.load(Ordering::Relaxed),
        s.batches.load(Ordering::Relaxed),
        s.items.load(Ordering::Relaxed),
        s.failed_items.load(Ordering::Relaxed),
    )
}

/// Scores `items`, or answers with the first item's error: 400 for a record the model refuses
/// (one longer than its context, an empty text), 422 when the model failed on these items
/// (the same request would fail again: a client must not retry it), 503 when the scoring thread
/// is gone.
async fn score(app: &App, items: Items) -> Result<batcher::Scores, Response> {
    let expected = items.len();
    let scores = app.batcher.score(items).await;
    if scores.len() != expected {
        return Err(error(
            app,
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} of {expected} items scored: the scoring thread stopped",
                scores.len()
            ),
        ));
    }
    match protocol::first_error(&scores) {
        None => Ok(scores),
        Some(message) => {
            let record = scores
                .iter()
                .any(|s| s.as_ref().is_err_and(|e| e.is_record_error()));
            let status = if record {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            Err(error(app, status, message))
        }
    }
}

async fn get_reward(State(app): State<Shared>, body: axum::body::Bytes) -> Response {
    app.requests.fetch_add(1, Ordering::Relaxed);
    let request: protocol::RewardRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(&app, StatusCode::BAD_REQUEST, format!("/get_reward: {e}")),
    };
    match score(&app, Items::Texts(request.query)).await {
        Ok(scores) => Json(protocol::reward_reply(&scores, &app.names)).into_response(),
        Err(response) => response,
    }
}

async fn classify(State(app): State<Shared>, body: axum::body::Bytes) -> Response {
    app.requests.fetch_add(1, Ordering::Relaxed);
    let request: protocol::ClassifyRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(&app, StatusCode::BAD_REQUEST, format!("/classify: {e}")),
    };
    if let Some(name) = &request.model {
        if *name != app.model {
            return error(
                &app,
                StatusCode::NOT_FOUND,
                format!(
                    "the model `{name}` does not exist; this server serves `{}`",
                    app.model
                ),
            );
        }
    }
    let items = match protocol::classify_items(&request) {
        Ok(items) => items,
        Err(message) => {
            return error(
                &app,
                StatusCode::BAD_REQUEST,
                format!("/classify: {message}"),
            )
        }
    };
    match score(&app, items).await {
        Ok(scores) => Json(protocol::classify_reply(
            &scores,
            &app.names,
            &app.model,
            request.use_activation.unwrap_or(true),
            chrono::Utc::now().timestamp(),
        ))
        .into_response(),
        Err(response) => response,
    }
}
