//! `rollguard controller`: the I/O shell around the rollout state machine.
//!
//! Each reconcile reads the cluster (target, owned Deployments, Releases, a manual request),
//! measures the canary's due metrics, asks the rollout planner for a plan, applies its actions
//! in order, and records the plan's status (`reconcile`). A failing action stops the plan; the
//! planner then gives the status to record, and the object is retried with jittered backoff. One Rollout's trouble
//! never holds up another: reconciles run concurrently up to `--concurrency`.

pub mod analysis;
pub mod apply;
pub mod context;
pub mod error;
pub mod escalate;
pub mod history;
pub mod http;
pub mod leader;
pub mod metrics;
#[cfg(test)]
mod mock;
mod reconcile;
mod record;
mod releases;

use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::runtime::{Predicate as _, predicates};
use kube::{Api, Client, ResourceExt};

pub use context::{Context, Settings};
pub use error::Error;

use crate::api::Rollout;
use crate::api::release::Release;
use crate::rollout::workload::ROLLOUT_LABEL;
use reconcile::{error_policy, reconcile};

/// Runs the controller until SIGTERM or Ctrl-C: stands for leader, keeps its caches warm either
/// way, and reconciles only while it leads. On a signal it finishes the plans in flight, then
/// releases the Lease so that a standby takes over at once.
pub async fn run(settings: Settings, log: http::LogLevel) -> anyhow::Result<()> {
    let timing = leader::timing(settings.lease_duration, settings.renew_deadline)
        .map_err(|e| anyhow::anyhow!(e))?;
    // The health and metrics port first: a controller that cannot serve /healthz must not run
    // blind, and a taken port is the operator's to fix.
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!(http::bind_error(settings.listen, &e)))?;
    let config = kube::Config::infer().await?;
    // The Lease is written with an unfenced client: it is how a replica earns the right to write.
    let lease_client = Client::try_from(config.clone())?;
    let metrics = Arc::new(metrics::Metrics::new(
        settings.rework_window.as_secs() as i64
    ));
    let leadership = Arc::new(leader::Leadership::new(
        leader::identity(),
        settings.lease_name.clone(),
        timing.margin,
        metrics.clone(),
    ));
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&leader::FenceLayer(leadership.clone()))
        .build();
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
        leadership: leadership.clone(),
        stopping: std::sync::atomic::AtomicBool::new(false),
        http: crate::escalation::send::client(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "rollguard".into(),
                instance: Some(leadership.identity.clone()),
            },
        ),
        settings: settings.clone(),
        runs: Mutex::default(),
        failures: Mutex::default(),
    });
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = tokio::spawn(http::serve(listener, ctx.clone(), ready.clone(), log));

    let election = leader::stand(
        lease_client,
        &settings.namespace,
        leadership.clone(),
        timing,
    )
    .await?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let election = tokio::spawn(election.run(async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    // Leading or not, the watches run: a standby's caches are warm when it takes over. Every
    // start of leadership reconciles every Rollout; losing it forgets what was in memory.
    let mut leading = leadership.leading();
    let lost = ctx.clone();
    tokio::spawn(async move {
        while leading.changed().await.is_ok() {
            if !*leading.borrow_and_update() {
                lost.runs.lock().unwrap_or_else(|e| e.into_inner()).clear();
                lost.metrics.forget_all();
            }
        }
    });
    let elected = futures::stream::unfold(leadership.leading(), |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            if *rx.borrow_and_update() {
                return Some(((), rx));
            }
        }
    });

    // The Rollout reflector is ours, so that its first complete list marks the caches synced.
    let (store, writer) = kube::runtime::reflector::store();
    let synced = ready.clone();
    let rollouts = kube::runtime::reflector(
        writer,
        watcher::watcher(
            Api::<Rollout>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .inspect(move |event| {
        if matches!(event, Ok(watcher::Event::InitDone))
            && !synced.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            tracing::info!("caches synced");
        }
    })
    .default_backoff()
    .applied_objects()
    // Spec (generation) and annotation (manual requests) changes start a reconcile; status
    // changes, nearly all of them our own writes, do not: what comes next is the requeue's to
    // decide, and a failing plan's status write cannot turn error backoff into a hot loop.
    .predicate_filter(
        predicates::generation.combine(predicates::annotations),
        Default::default(),
    );
    let controller = Controller::for_stream(rollouts, store.clone())
        .with_config(ControllerConfig::default().concurrency(settings.concurrency));
    let targets = store;
    let signal_ctx = ctx.clone();
    let controller = controller
        .watches(
            Api::<Deployment>::all(client.clone()),
            watcher::Config::default(),
            move |d| {
                let ns = d.namespace().unwrap_or_default();
                let mut refs: Vec<ObjectRef<Rollout>> = d
                    .owner_references()
                    .iter()
                    .filter(|o| o.kind == "Rollout" && o.api_version.starts_with("rollguard.dev/"))
                    .map(|o| ObjectRef::new(&o.name).within(&ns))
                    .collect();
                refs.extend(
                    targets
                        .state()
                        .iter()
                        .filter(|r| {
                            r.namespace().as_deref() == Some(ns.as_str())
                                && r.spec.target_ref.name == d.name_any()
                        })
                        .map(|r| ObjectRef::from_obj(r.as_ref())),
                );
                refs
            },
        )
        .watches(
            Api::<Release>::all(client.clone()),
            watcher::Config::default().labels(ROLLOUT_LABEL),
            |r| {
                let ns = r.namespace().unwrap_or_default();
                r.labels()
                    .get(ROLLOUT_LABEL)
                    .map(|name| ObjectRef::new(name).within(&ns))
            },
        )
        .reconcile_all_on(elected)
        .graceful_shutdown_on(async move {
            shutdown_signal().await;
            tracing::info!("stopping: finishing the plans in flight, starting no other");
            signal_ctx
                .stopping
                .store(true, std::sync::atomic::Ordering::SeqCst);
        });
    tracing::info!(listen = %settings.listen, concurrency = settings.concurrency, identity = %leadership.identity, "rollguard controller starting");
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile stream");
            }
        })
        .await;
    // Every plan in flight has finished: close the fence, then hand the Lease over.
    leadership.stop();
    let _ = stop_tx.send(true);
    if let Err(e) = election.await {
        tracing::error!(error = %e, "leader election task");
    }
    server.abort();
    tracing::info!("rollguard controller stopped");
    Ok(())
}

/// SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
