//! rollguard-sim: closes the loop of the local environment. It reads the weights written into
//! route objects and the fault profiles of the Ready pods behind them, generates that traffic,
//! and serves it as mesh metrics for Prometheus to scrape.
//!
//! Endpoints: `/metrics` (OpenMetrics), `/flows` (the current plan as JSON), `/healthz`,
//! `/readyz` (caches synced).

mod cluster;
mod metrics;
mod plan;
mod profile;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use prometheus_client::registry::Registry;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;
use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::metrics::MeshMetrics;
use crate::plan::Flow;

#[derive(Debug, Parser)]
#[command(name = "rollguard-sim", version, about)]
struct Args {
    /// Address to serve on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Write the bound address here once listening (for scripts that chose port 0).
    #[arg(long)]
    addr_file: Option<PathBuf>,
    /// Requests per second per route object that has no `sim.rollguard.dev/rps` annotation.
    #[arg(long, default_value_t = 50.0, value_parser = non_negative_rate)]
    rps: f64,
    /// How often traffic is generated, in milliseconds.
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    tick_ms: u64,
    /// Seed for reproducible traffic; random when unset.
    #[arg(long)]
    seed: Option<u64>,
}

fn non_negative_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rps) if rps.is_finite() && rps >= 0.0 => Ok(rps),
        _ => Err(format!("--rps must be a non-negative number, got {text:?}")),
    }
}

#[derive(Default, Serialize)]
struct Report {
    flows: Vec<Flow>,
    problems: Vec<String>,
    requests_simulated: u64,
}

struct AppState {
    registry: Registry,
    report: RwLock<Report>,
    ready: AtomicBool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    let args = Args::parse();

    let client = kube::Client::try_default()
        .await
        .context("no usable kubeconfig (set KUBECONFIG)")?;
    let cluster = Cluster::watch(&client);

    let mut registry = Registry::default();
    let mesh = MeshMetrics::register(&mut registry);
    let state = Arc::new(AppState {
        registry,
        report: RwLock::new(Report::default()),
        ready: AtomicBool::new(false),
    });

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    if let Some(path) = &args.addr_file {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, addr.to_string())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    }
    info!(%addr, rps = args.rps, tick_ms = args.tick_ms, "serving mesh metrics");

    let app = Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/flows", get(serve_flows))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(serve_ready))
        .with_state(state.clone());
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
    });

    let generator = tokio::spawn(generate(cluster, mesh, state, args));
    server.await??;
    generator.abort();
    Ok(())
}

async fn generate(cluster: Cluster, mesh: MeshMetrics, state: Arc<AppState>, args: Args) {
    cluster.wait_until_ready().await;
    state.ready.store(true, Ordering::Relaxed);
    info!("caches synced; generating traffic");
    let mut rng = match args.seed {
        Some(seed) => StdRng::seed_from_u64(seed),
        None => rand::make_rng(),
    };
    let mut ticker = tokio::time::interval(Duration::from_millis(args.tick_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let mut reported = BTreeSet::new();
    loop {
        ticker.tick().await;
        let now = Instant::now();
        let seconds = now.duration_since(last).as_secs_f64();
        last = now;
        let mut problems = Vec::new();
        let flows = cluster.snapshot(args.rps, &mut problems).plan();
        let sent = mesh.simulate(&flows, seconds, &mut rng);
        for p in &problems {
            if !reported.contains(p) {
                warn!(problem = %p, "ignoring bad input");
            }
        }
        reported = problems.iter().cloned().collect();
        let mut report = state
            .report
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        report.requests_simulated += sent;
        report.flows = flows;
        report.problems = problems;
    }
}

async fn serve_metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding metrics failed: {e}"),
        ),
    }
}

async fn serve_flows(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let report = state
        .report
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Json(serde_json::json!({
        "flows": report.flows,
        "problems": report.problems,
        "requestsSimulated": report.requests_simulated,
    }))
}

async fn serve_ready(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "watch caches are not synced yet",
        )
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler only fails outside a Tokio runtime");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
