//! Missive's HTTP API (JSON under `/v1`), built on axum.
//!
//! Handlers are thin: they authenticate, parse, call [`missive_service::Service`] and shape the
//! answer. Every error is an [`error::ApiError`]. `GET /v1/openapi.json` serves the reference.
//!
//! # Layout
//! - [`auth`]: HS256 bearer tokens.
//! - [`error`]: the error type and the extractors that map rejections to 4xx answers.
//! - [`ratelimit`]: per-user and per-address limits of commands (429 with `Retry-After`).
//! - [`routes`]: handlers and JSON shapes.

mod admin;
pub mod auth;
pub mod communities;
pub mod error;
mod fanout;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod ratelimit;
pub mod routes;
pub mod ws;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use missive_service::Service;
use tokio::net::TcpListener;

pub use auth::Secret;
pub use error::ApiError;

/// The header carrying a request's id, both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The OpenAPI document served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub secret: Secret,
    /// Lifetime of tokens issued at registration.
    pub token_ttl: Duration,
    /// How long a query with `min_position` waits for the read models at most.
    pub max_read_wait: Duration,
    /// WebSocket session limits and heartbeat timeout.
    pub ws: ws::WsConfig,
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub config: Arc<ApiConfig>,
    /// The WebSocket sessions this process holds.
    pub sessions: Arc<ws::Sessions>,
    /// Pushes log events to the WebSocket sessions; [`gateway::Gateway::run`] feeds it.
    pub gateway: Arc<gateway::Gateway>,
    /// The analytics consumer's rollups (`GET /v1/admin/analytics`); `None` when analytics
    /// are off.
    pub analytics: Option<Arc<dyn missive_analytics::AnalyticsStore>>,
    /// Per-user and per-address limits of commands ([`ratelimit::limit_commands`]).
    pub limiter: Arc<ratelimit::RateLimiter>,
    /// Commands running on tasks of their own, which [`run`] waits for before it returns.
    pub commands: Arc<InFlight>,
}

/// How long [`run`] waits, once the listener is closed, for commands whose clients hung up.
/// Each command's own waits are bounded below it; with the rest of a shutdown it fits in a
/// container's usual 30 s grace period.
const COMMANDS_DRAIN: std::time::Duration = std::time::Duration::from_secs(15);

/// The commands running on tasks of their own ([`routes::detached`]): a command whose client
/// hung up is no longer a request the server drains at shutdown, so it is counted here.
#[derive(Debug, Default)]
pub struct InFlight {
    running: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One running command, counted until dropped.
pub(crate) struct Counted(Arc<InFlight>);

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl InFlight {
    /// Counts a command until the returned guard is dropped.
    pub(crate) fn start(self: &Arc<Self>) -> Counted {
        self.running.fetch_add(1, Ordering::AcqRel);
        Counted(self.clone())
    }

    /// How many commands run now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Waits until no command runs, at most `wait`: `false` if some still do.
    pub async fn idle(&self, wait: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the count is read, so a last command ending in between is
            // not missed.
            notified.as_mut().enable();
            if self.running() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.running() == 0;
            }
        }
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("service", &self.service)
            .field("config", &self.config)
            .field("analytics", &self.analytics.is_some())
            .finish_non_exhaustive()
    }
}

/// The whole API as a router.
pub fn router(state: AppState) -> Router {
    routes::routes()
        .fallback(|| async { ApiError::not_found("no such endpoint; see GET /v1/openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not accept that method; see GET /v1/openapi.json",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Inside `observe`, so that refusals (429) are counted like any answer.
        .layer(middleware::from_fn_with_state(
            state.limiter.clone(),
            ratelimit::limit_commands,
        ))
        .layer(middleware::from_fn(observe))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            tracing::error!("a handler panicked");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the server failed to handle the request; it has been logged",
            )
            .into_response()
        }))
        .with_state(state)
}

/// Gives every request an id (the client's `X-Request-Id` when it is a UUID, else a new
/// UUIDv7), runs it in a `request` span carrying that id (the events a command appends carry
/// it as their `correlation_id`), echoes it in the answer's `X-Request-Id`, and records request
/// counts and latencies by route template.
async fn observe(mut request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| uuid::Uuid::parse_str(v).ok())
        .unwrap_or_else(uuid::Uuid::now_v7);
    let header = axum::http::HeaderValue::from_str(&request_id.to_string())
        .expect("a UUID is a valid header value");
    // Handlers read the id from here (`routes::correlation_id`).
    request.headers_mut().insert(REQUEST_ID, header.clone());
    let span = tracing::info_span!("request", %request_id, %method, %route);
    let started = Instant::now();
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    response.headers_mut().insert(REQUEST_ID, header);
    let m = missive_telemetry::metrics();
    m.http_requests
        .with_label_values(&[&route, &method, response.status().as_str()])
        .inc();
    m.http_duration
        .with_label_values(&[&route, &method])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Serves the API on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let commands = state.commands.clone();
    // With the peer's address, for the per-address rate limit.
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await?;
    // Requests are drained; commands whose clients hung up may still be appending.
    if !commands.idle(COMMANDS_DRAIN).await {
        tracing::warn!(
            running = commands.running(),
            "commands still running at shutdown; the process ends without them"
        );
    }
    Ok(())
}

/// Serves only `GET /metrics` and `GET /healthz`: the listener of a process without the API
/// (`missive analytics`), until `shutdown` resolves.
pub async fn run_metrics(
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", axum::routing::get(routes::metrics))
        .route(
            "/healthz",
            axum::routing::get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
        )
        .fallback(|| async {
            ApiError::not_found("this process serves /metrics and /healthz only")
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn in_flight_commands_are_waited_for_up_to_the_bound() {
        let commands = Arc::new(InFlight::default());
        assert!(commands.idle(Duration::ZERO).await, "nothing runs");
        let first = commands.start();
        let second = commands.start();
        assert_eq!(commands.running(), 2);
        // Held past the bound: not idle.
        assert!(!commands.idle(Duration::from_millis(50)).await);
        drop(first);
        let waiter = {
            let commands = commands.clone();
            tokio::spawn(async move { commands.idle(Duration::from_secs(60)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "one command still runs");
        drop(second);
        assert!(waiter.await.expect("joined"), "idle once the last one ends");
        assert_eq!(commands.running(), 0);
    }
}
