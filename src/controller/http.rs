//! `/healthz`, `/readyz`, `/metrics`, and `/log-level` for changing the log filter at runtime.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tracing_subscriber::{EnvFilter, Registry, reload};

use super::context::Context;

/// A log filter that was not taken; the old one stays.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("empty filter: send e.g. 'info' or 'info,rollguard=debug'")]
    Empty,
    #[error("invalid filter {directives:?}: {reason}")]
    Invalid { directives: String, reason: String },
    #[error("reloading the filter: {0}")]
    Reload(String),
}

/// The log filter, swappable while the controller runs.
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

impl LogLevel {
    pub fn new(handle: reload::Handle<EnvFilter, Registry>, current: &str) -> LogLevel {
        LogLevel {
            handle,
            current: Mutex::new(current.to_owned()),
        }
    }

    pub fn get(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the filter with `directives` (EnvFilter syntax, e.g. `info,rollguard=debug`).
    pub fn set(&self, directives: &str) -> Result<(), FilterError> {
        let directives = directives.trim();
        if directives.is_empty() {
            return Err(FilterError::Empty);
        }
        let filter = EnvFilter::builder()
            .parse(directives)
            .map_err(|e| FilterError::Invalid {
                directives: directives.to_owned(),
                reason: e.to_string(),
            })?;
        self.handle
            .reload(filter)
            .map_err(|e| FilterError::Reload(e.to_string()))?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = directives.to_owned();
        Ok(())
    }
}

#[derive(Clone)]
struct Shared {
    ctx: Arc<Context>,
    ready: Arc<AtomicBool>,
    log: Arc<LogLevel>,
}

async fn readyz(State(s): State<Shared>) -> Response {
    if !s.ready.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "caches are not synced yet\n",
        )
            .into_response();
    }
    // Leader and standby alike are ready: a standby's caches are warm for a fast takeover.
    let role = if s.ctx.leadership.may_write() {
        "leader"
    } else {
        "standby"
    };
    (StatusCode::OK, format!("ready ({role})\n")).into_response()
}

async fn metrics(State(s): State<Shared>) -> Response {
    match s.ctx.metrics.encode() {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn get_log_level(State(s): State<Shared>) -> String {
    format!("{}\n", s.log.get())
}

/// Only from loopback: in a pod that means `kubectl port-forward`, never through the Service
/// that Prometheus scrapes.
async fn put_log_level(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: String,
) -> Response {
    if !peer.ip().is_loopback() {
        return (
            StatusCode::FORBIDDEN,
            "the log level changes from loopback only (kubectl port-forward)\n",
        )
            .into_response();
    }
    let log = &s.log;
    let before = log.get();
    match log.set(&body) {
        Ok(()) => {
            tracing::warn!(from = %before, to = %log.get(), "log filter changed");
            (StatusCode::OK, format!("{}\n", log.get())).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

/// One sentence with the fix, for a listen address that cannot be bound.
pub fn bind_error(listen: SocketAddr, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "cannot serve /healthz and /metrics on {listen}: another process holds the port; \
             stop it, or pick another address with --listen (or ROLLGUARD_LISTEN)"
        ),
        std::io::ErrorKind::AddrNotAvailable => format!(
            "cannot serve /healthz and /metrics on {listen}: no interface has that address; \
             pick another with --listen (or ROLLGUARD_LISTEN)"
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "cannot serve /healthz and /metrics on {listen}: ports below 1024 need privileges; \
             pick a higher one with --listen (or ROLLGUARD_LISTEN)"
        ),
        _ => format!("cannot serve /healthz and /metrics on {listen}: {e}"),
    }
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Arc<Context>,
    ready: Arc<AtomicBool>,
    log: LogLevel,
) -> anyhow::Result<()> {
    let shared = Shared {
        ctx,
        ready,
        log: Arc::new(log),
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/log-level", get(get_log_level).put(put_log_level))
        .with_state(shared);
    let bound = listener.local_addr()?;
    tracing::info!(listen = %bound, "serving /healthz, /readyz, /metrics and /log-level");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
