//! `rollguard controller`: the I/O shell around the rollout state machine.
//!
//! Each reconcile reads the cluster (target, owned Deployments, Releases, a manual request),
//! measures the canary's due metrics, asks [`decide`] for a plan, applies its actions in order,
//! and records the plan's status. A failing action stops the plan; [`failed`] then gives the
//! status to record, and the object is retried with jittered backoff. One Rollout's trouble
//! never holds up another: reconciles run concurrently up to `--concurrency`.

pub mod analysis;
pub mod apply;
pub mod escalate;
pub mod http;
pub mod metrics;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::ListParams;
use kube::runtime::controller::{Action as Requeue, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};

use crate::api::Rollout;
use crate::api::release::Release;
use crate::api::rollout::{RolloutPhase, RolloutStatus};
use crate::rollout::machine::{
    InvalidRequest, Observed, ReleaseView, Request, TargetView, decide, failed,
    recovery_baseline_offset, verify_baseline_offset,
};
use crate::rollout::workload::{
    REQUEST_ANNOTATION, ROLLOUT_LABEL, Workload, arm_name, artifact, fingerprint,
};
use crate::rollout::{AnalysisView, Arm};
use analysis::{Judged, LiveRun};

/// Settings of `rollguard controller`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    /// The controller's own namespace: where provider and receiver Secrets live.
    pub namespace: String,
    pub concurrency: u16,
    /// Base URL for graph links in escalations, instead of the providers' addresses.
    pub graph_url: Option<String>,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: metrics::Metrics,
    /// For escalation receivers.
    pub http: reqwest::Client,
    recorder: Recorder,
    runs: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<LiveRun>>>>>,
    failures: Mutex<HashMap<String, u32>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Apply(String),
}

fn key(ro: &Rollout) -> String {
    format!("{}/{}", ro.namespace().unwrap_or_default(), ro.name_any())
}

/// Runs the controller until SIGTERM or Ctrl-C.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics: metrics::Metrics::default(),
        http: crate::escalation::send::client(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "rollguard".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        settings: settings.clone(),
        runs: Mutex::default(),
        failures: Mutex::default(),
    });
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = tokio::spawn(http::serve(settings.listen, ctx.clone(), ready.clone()));

    let rollouts = Api::<Rollout>::all(client.clone());
    let controller = Controller::new(rollouts, watcher::Config::default())
        .with_config(ControllerConfig::default().concurrency(settings.concurrency));
    let store = controller.store();
    let targets = store.clone();
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
        .shutdown_on_signal();
    let ready_flag = ready.clone();
    tokio::spawn(async move {
        if store.wait_until_ready().await.is_ok() {
            ready_flag.store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::info!("caches synced; reconciling");
        }
    });
    tracing::info!(listen = %settings.listen, concurrency = settings.concurrency, "rollguard controller starting");
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile stream");
            }
        })
        .await;
    server.abort();
    tracing::info!("rollguard controller stopped");
    Ok(())
}

fn error_policy(ro: Arc<Rollout>, error: &Error, ctx: Arc<Context>) -> Requeue {
    let n = {
        let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key(&ro)).or_insert(0);
        *n += 1;
        *n
    };
    ctx.metrics.reconcile_error();
    tracing::warn!(rollout = %key(&ro), attempt = n, error = %error, "reconcile failed");
    Requeue::requeue(backoff(n, jitter_seed()))
}

fn jitter_seed() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// Exponential from 500 ms, capped at 60 s, with ±25% jitter so that many Rollouts failing
/// together do not retry together.
pub fn backoff(attempt: u32, seed: u32) -> Duration {
    let base = 500u64
        .saturating_mul(1 << attempt.saturating_sub(1).min(7))
        .min(60_000);
    let jitter = (u64::from(seed) % 500) as i64 - 250; // per mille of base, ±25%
    let ms = base as i64 + base as i64 * jitter / 1000;
    Duration::from_millis(ms.max(100) as u64)
}

async fn observe(ro: &Rollout, ctx: &Context) -> Result<Observed, Error> {
    let ns = ro.namespace().unwrap_or_default();
    let name = ro.name_any();
    let deployments = Api::<Deployment>::namespaced(ctx.client.clone(), &ns);
    let target = deployments
        .get_opt(&ro.spec.target_ref.name)
        .await?
        .map(|d| {
            let spec = d.spec.clone().unwrap_or_default();
            let template = serde_json::to_value(&spec.template).unwrap_or_default();
            TargetView {
                replicas: spec.replicas.unwrap_or(1),
                artifact: artifact(&template, ro.spec.require_digest),
            }
        });
    let workload = |d: Option<Deployment>| d.as_ref().map(Workload::from_deployment);
    let stable = workload(deployments.get_opt(&arm_name(&name, Arm::Stable)).await?);
    let canary = workload(deployments.get_opt(&arm_name(&name, Arm::Canary)).await?);
    let baseline = workload(deployments.get_opt(&arm_name(&name, Arm::Baseline)).await?);
    let releases = Api::<Release>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&format!("{ROLLOUT_LABEL}={name}")))
        .await?
        .items
        .into_iter()
        .map(|r| release_view(&r))
        .collect();
    let request = ro.annotations().get(REQUEST_ANNOTATION).map(|text| {
        serde_json::from_str::<Request>(text).map_err(|e| InvalidRequest {
            id: format!("invalid-{}", fingerprint(text)),
            why: e.to_string(),
        })
    });
    Ok(Observed {
        now: crate::backtest::unix_now(),
        namespace: ns,
        generation: ro.meta().generation,
        target,
        stable,
        canary,
        baseline,
        releases,
        analysis: None,
        request,
    })
}

pub fn release_view(r: &Release) -> ReleaseView {
    let status = r.status.clone().unwrap_or_default();
    ReleaseView {
        name: r.name_any(),
        digest: crate::rollout::workload::artifact(&r.spec.pod_template, false)
            .map(|a| a.digest)
            .unwrap_or_default(),
        phase: status.phase,
        overridden: status
            .r#override
            .is_some_and(|o| !o.reason.trim().is_empty()),
        verdict: status.verdict.map(|v| v.reason),
    }
}

/// The analysis, measured now: of the canary while it is live with its weight in effect, or of
/// the promoted stable during its post-promotion window.
async fn measure(ro: &Rollout, ctx: &Context) -> Option<AnalysisView> {
    ro.spec.analysis.as_ref()?;
    let status = ro.status.clone().unwrap_or_default();
    let now = crate::backtest::unix_now();
    let (id, judged) = match (status.phase, verify_baseline_offset(&status, now)) {
        (Some(RolloutPhase::Stable), Some(offset)) => (
            format!("verify/{}", status.stable.as_ref()?.release),
            Judged::PromotedStable { offset },
        ),
        (Some(RolloutPhase::RollingBack), _) => {
            let offset = recovery_baseline_offset(&ro.spec, &status)?;
            (
                format!("recover/{}", status.rollback.as_ref()?.release),
                Judged::PromotedStable { offset },
            )
        }
        (Some(RolloutPhase::Progressing | RolloutPhase::Paused), _)
            if status.step_started_at.is_some() =>
        {
            (status.canary.as_ref()?.release.clone(), Judged::Canary)
        }
        (Some(RolloutPhase::Promoting), _) => {
            (status.canary.as_ref()?.release.clone(), Judged::Canary)
        }
        _ => return None,
    };
    let slot = ctx
        .runs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key(ro))
        .or_default()
        .clone();
    let mut slot = slot.lock().await;
    if slot.as_ref().is_none_or(|r| r.id != id) {
        match LiveRun::start(&ctx.client, &ctx.settings.namespace, ro, &id, judged).await {
            Ok(run) => {
                for (p, why) in run.broken() {
                    publish(ctx, ro, true, "ProviderUnavailable", &format!("{p}: {why}")).await;
                }
                *slot = Some(run);
            }
            Err(e) => {
                publish(ctx, ro, true, "AnalysisInvalid", &e).await;
                return None;
            }
        }
    }
    let run = slot.as_mut()?;
    let started = std::time::Instant::now();
    let view = run.measure(now).await;
    ctx.metrics
        .analysis_seconds(started.elapsed().as_secs_f64());
    Some(view)
}

fn reset_analysis(ro: &Rollout, ctx: &Context) {
    ctx.runs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&key(ro));
}

async fn publish(ctx: &Context, ro: &Rollout, warning: bool, reason: &str, note: &str) {
    publish_as(ctx, ro, warning, reason, reason, note).await;
}

/// An Event whose `action` differs from its reason. Events with the same reason and action
/// are folded into one series that keeps the first note, so distinct subjects (one per
/// receiver, say) need distinct actions.
async fn publish_as(
    ctx: &Context,
    ro: &Rollout,
    warning: bool,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(note.chars().take(1000).collect()),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &ro.object_ref(&())).await {
        tracing::debug!(error = %e, "publishing an event");
    }
}

/// How many plans one reconcile may apply back to back when each asks to continue at once.
const PASSES: usize = 8;

async fn reconcile(ro: Arc<Rollout>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    // The cache may lag behind our own last write; plans start from a fresh read.
    let api = Api::<Rollout>::namespaced(ctx.client.clone(), &ro.namespace().unwrap_or_default());
    let Some(mut ro) = api.get_opt(&ro.name_any()).await? else {
        return Ok(Requeue::await_change());
    };
    let result = plan(&mut ro, &ctx).await;
    // Whatever the plan did, what its status put in the outbox goes out now.
    let next = match escalate::deliver(&ctx, &mut ro).await {
        Ok(next) => next,
        Err(e) => {
            tracing::warn!(rollout = %key(&ro), error = %e, "recording escalation deliveries");
            Some(5)
        }
    };
    let after = result?;
    Ok(Requeue::requeue(match next {
        Some(s) => after.min(Duration::from_secs(s)),
        None => after,
    }))
}

/// Observes, decides and applies plans until one asks to wait; returns how long.
async fn plan(ro: &mut Rollout, ctx: &Context) -> Result<Duration, Error> {
    let name = ro.name_any();
    let ns = ro.namespace().unwrap_or_default();
    let api = Api::<Rollout>::namespaced(ctx.client.clone(), &ns);
    for _ in 0..PASSES {
        let mut obs = observe(ro, ctx).await?;
        obs.analysis = measure(ro, ctx).await;
        let status = ro.status.clone().unwrap_or_default();
        let plan = decide(&name, &ro.spec, &status, &obs);
        let mut applier = apply::Applier::new(ctx, ro);
        let mut next = plan.status.clone();
        let mut result = Ok(());
        for action in &plan.actions {
            tracing::debug!(rollout = %key(ro), ?action, "applying");
            if let Err(e) = applier.apply(action).await {
                result = Err(e);
                break;
            }
        }
        if applier.reset {
            reset_analysis(ro, ctx);
        }
        if let Err(e) = &result {
            tracing::warn!(rollout = %key(ro), error = %e, phase = ?status.phase, "plan failed");
            next = failed(&ns, &name, &ro.spec, &status, &e.to_string(), obs.now);
        }
        record(&api, ro, &next).await?;
        #[cfg(debug_assertions)]
        halt_for_tests(&status, &next).await;
        ctx.metrics.observe(&ns, &name, &status, &next);
        for note in &plan.notes {
            if result.is_ok() {
                tracing::info!(rollout = %key(ro), reason = %note.reason, "{}", note.message);
                publish(ctx, ro, note.warning, &note.reason, &note.message).await;
            }
        }
        if let Err(e) = result {
            return Err(Error::Apply(e));
        }
        ctx.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key(ro));
        if plan.requeue_secs > 0 {
            return Ok(Duration::from_secs(plan.requeue_secs));
        }
    }
    Ok(Duration::from_millis(100))
}

/// Fault injection for the end-to-end tests, in debug builds only: with
/// `ROLLGUARD_TEST_HALT_AFTER=<saga step>`, the reconcile that has just recorded that step as
/// done stops there for good, so that the test can SIGKILL the process at exactly that point.
#[cfg(debug_assertions)]
async fn halt_for_tests(before: &RolloutStatus, after: &RolloutStatus) {
    let Ok(step) = std::env::var("ROLLGUARD_TEST_HALT_AFTER") else {
        return;
    };
    let done = |s: &RolloutStatus| {
        s.rollback
            .as_ref()
            .is_some_and(|rb| rb.completed.iter().any(|r| format!("{:?}", r.step) == step))
    };
    if done(after) && !done(before) {
        tracing::warn!("halting after saga step {step} (ROLLGUARD_TEST_HALT_AFTER)");
        std::future::pending::<()>().await;
    }
}

/// Records the status with server-side apply: fields the plan dropped are removed. The write
/// is guarded by the resourceVersion the plan was made from, so a plan from a stale read (a
/// lagging cache, another writer) fails with 409 instead of undoing newer status, such as an
/// escalation already delivered. `ro` then carries the new status and resourceVersion.
async fn record(api: &Api<Rollout>, ro: &mut Rollout, status: &RolloutStatus) -> Result<(), Error> {
    if ro.status.as_ref() == Some(status) {
        return Ok(());
    }
    let body = serde_json::json!({
        "apiVersion": "rollguard.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"resourceVersion": ro.resource_version()},
        "status": status,
    });
    let updated = api
        .patch_status(
            &ro.name_any(),
            &kube::api::PatchParams::apply("rollguard").force(),
            &kube::api::Patch::Apply(body),
        )
        .await?;
    ro.metadata.resource_version = updated.metadata.resource_version;
    ro.status = Some(status.clone());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let ms = |n, seed| backoff(n, seed).as_millis();
        assert_eq!(ms(1, 250), 500);
        assert_eq!(ms(2, 250), 1000);
        assert_eq!(ms(20, 250), 60_000);
        assert_eq!(ms(1, 0), 375, "-25%");
        assert_eq!(ms(1, 499), 624, "+25%");
    }
}
