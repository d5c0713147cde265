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
pub mod leader;
pub mod metrics;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::ListParams;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::controller::{Action as Requeue, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::runtime::{Predicate as _, predicates};
use kube::{Api, Client, Resource, ResourceExt};

use crate::api::Rollout;
use crate::api::release::Release;
use crate::api::rollout::{RolloutPhase, RolloutStatus};
use crate::rollout::machine::{
    InvalidRequest, Observed, PERMISSION_DENIED, ReleaseView, Request, TargetView, decide, failed,
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
    /// The leader Lease, in `namespace`.
    pub lease_name: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    /// A new canary this soon after a rollback counts as rework.
    pub rework_window: Duration,
}

/// Shared by every reconcile.
pub struct Context {
    /// Fenced: its writes go through only while this replica leads.
    pub client: Client,
    pub settings: Settings,
    pub metrics: Arc<metrics::Metrics>,
    pub leadership: Arc<leader::Leadership>,
    /// SIGTERM arrived: finish the plan in flight, start no other.
    stopping: std::sync::atomic::AtomicBool,
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

/// Runs the controller until SIGTERM or Ctrl-C: stands for leader, keeps its caches warm either
/// way, and reconciles only while it leads. On a signal it finishes the plans in flight, then
/// releases the Lease so that a standby takes over at once.
pub async fn run(settings: Settings, log: http::LogLevel) -> anyhow::Result<()> {
    let timing = leader::timing(settings.lease_duration, settings.renew_deadline)
        .map_err(|e| anyhow::anyhow!(e))?;
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
    let server = tokio::spawn(http::serve(
        settings.listen,
        ctx.clone(),
        ready.clone(),
        log,
    ));

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

fn error_policy(ro: Arc<Rollout>, error: &Error, ctx: Arc<Context>) -> Requeue {
    if let Error::Kube(e) = error
        && leader::is_fenced(e)
    {
        tracing::info!(rollout = %key(&ro), "not leading any more; leaving it to the leader");
        return Requeue::await_change();
    }
    let n = {
        let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key(&ro)).or_insert(0);
        *n += 1;
        *n
    };
    ctx.metrics.reconcile_error();
    tracing::warn!(rollout = %key(&ro), attempt = n, error = %error, "reconcile failed");
    let rolling_back = ro
        .status
        .as_ref()
        .is_some_and(|s| s.phase == Some(RolloutPhase::RollingBack));
    if error.to_string().starts_with(PERMISSION_DENIED) && !rolling_back {
        // Retrying cannot help until someone changes RBAC, which is not watched: the condition
        // says what is missing, and the next try comes in minutes, not in a hot loop.
        return Requeue::requeue(Duration::from_secs(300) + backoff(1, jitter_seed()));
    }
    Requeue::requeue(backoff(n, jitter_seed()))
}

/// An action's error as the Rollout's condition shows it: a refusal by RBAC names the verb and
/// the resource the controller's ServiceAccount lacks.
pub fn explain(error: &str) -> String {
    // Only RBAC's refusal names a user and a verb; a 403 for other reasons (a namespace being
    // deleted, an admission policy) is reported as it is.
    let Some((_, why)) = error
        .split_once(" is forbidden: ")
        .filter(|(_, why)| why.starts_with("User ") && why.contains(" cannot "))
    else {
        return error.to_owned();
    };
    let quoted = |after: &str| {
        why.split_once(after)
            .and_then(|(_, rest)| rest.strip_prefix('"'))
            .and_then(|rest| rest.split_once('"'))
            .map(|(v, _)| v.to_owned())
    };
    let verb = why
        .split_once(" cannot ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("use");
    let Some(resource) = quoted(" resource ") else {
        return format!("{PERMISSION_DENIED} {why}");
    };
    let group = quoted(" in API group ").filter(|g| !g.is_empty());
    let resource = match &group {
        Some(g) => format!("{resource}.{g}"),
        None => resource,
    };
    let place = quoted(" in the namespace ")
        .map(|ns| format!(" in namespace {ns}"))
        .unwrap_or_default();
    let user = quoted("User ").unwrap_or_else(|| "the controller".into());
    format!(
        "{PERMISSION_DENIED} {user} may not {verb} {resource}{place}; grant '{verb}' on '{resource}' to the controller's ClusterRole"
    )
}

pub fn jitter_seed() -> u32 {
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
                template: Some(fingerprint(&template.to_string())),
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
        analysis_invalid: None,
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
        template: Some(fingerprint(&r.spec.pod_template.to_string())),
    }
}

/// The analysis, measured now: of the canary while it is live with its weight in effect, or of
/// the promoted stable during its post-promotion window. A canary waiting for its first weight
/// has its run started (templates loaded and rendered) but not measured, so that an analysis
/// that cannot start holds it at weight 0. `Err` says why the analysis cannot start.
async fn measure(ro: &Rollout, ctx: &Context) -> Result<Option<AnalysisView>, String> {
    if ro.spec.analysis.is_none() {
        return Ok(None);
    }
    let Some((id, judged, live)) = what_to_judge(ro) else {
        return Ok(None);
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
        let run = LiveRun::start(
            &ctx.client,
            &ctx.settings.namespace,
            ro,
            &id,
            judged,
            ctx.metrics.clone(),
        )
        .await
        .map_err(|e| crate::api::common::bounded(&e))?;
        for (p, why) in run.broken() {
            publish(ctx, ro, true, "ProviderUnavailable", &format!("{p}: {why}")).await;
        }
        *slot = Some(run);
    }
    let Some(run) = slot.as_mut().filter(|_| live) else {
        return Ok(None);
    };
    let started = std::time::Instant::now();
    let view = run.measure(crate::backtest::unix_now()).await;
    ctx.metrics
        .analysis_seconds(started.elapsed().as_secs_f64());
    Ok(Some(view))
}

/// Which run the Rollout's phase calls for, and whether it is measured now (`false`: a canary
/// before its first weight, whose run is only started).
fn what_to_judge(ro: &Rollout) -> Option<(String, Judged, bool)> {
    let status = ro.status.clone().unwrap_or_default();
    let now = crate::backtest::unix_now();
    Some(match (status.phase, verify_baseline_offset(&status, now)) {
        (Some(RolloutPhase::Stable), Some(offset)) => (
            format!("verify/{}", status.stable.as_ref()?.release),
            Judged::PromotedStable { offset },
            true,
        ),
        (Some(RolloutPhase::RollingBack), _) => {
            let offset = recovery_baseline_offset(&ro.spec, &status)?;
            (
                format!("recover/{}", status.rollback.as_ref()?.release),
                Judged::PromotedStable { offset },
                true,
            )
        }
        (Some(RolloutPhase::Progressing | RolloutPhase::Paused), _) => (
            status.canary.as_ref()?.release.clone(),
            Judged::Canary,
            status.step_started_at.is_some(),
        ),
        (Some(RolloutPhase::Promoting), _) => (
            status.canary.as_ref()?.release.clone(),
            Judged::Canary,
            true,
        ),
        _ => return None,
    })
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
    // A standby keeps its caches and waits: taking the lead reconciles every Rollout.
    if !ctx.leadership.may_write() || ctx.stopping.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(Requeue::await_change());
    }
    let started = std::time::Instant::now();
    let result = reconcile_leading(&ro, &ctx).await;
    ctx.metrics
        .reconcile_seconds(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_leading(ro: &Rollout, ctx: &Context) -> Result<Requeue, Error> {
    // The cache may lag behind our own last write; plans start from a fresh read.
    let ns = ro.namespace().unwrap_or_default();
    let api = Api::<Rollout>::namespaced(ctx.client.clone(), &ns);
    let Some(mut ro) = api.get_opt(&ro.name_any()).await? else {
        ctx.metrics.forget(&ns, &ro.name_any());
        return Ok(Requeue::await_change());
    };
    let result = plan(&mut ro, ctx).await;
    // Whatever the plan did, what its status put in the outbox goes out now.
    let next = match escalate::deliver(ctx, &mut ro).await {
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
        match measure(ro, ctx).await {
            Ok(view) => obs.analysis = view,
            Err(why) => obs.analysis_invalid = Some(why),
        }
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
        let result = result.map_err(|e| explain(&e));
        if let Err(e) = &result {
            tracing::warn!(rollout = %key(ro), error = %e, phase = ?status.phase, "plan failed");
            next = failed(&ns, &name, &ro.spec, &status, &e.to_string(), obs.now);
        }
        #[cfg(debug_assertions)]
        if result.is_ok() {
            halt_for_tests("ROLLGUARD_TEST_HALT_BEFORE_RECORD", &status, &next).await;
        }
        record(&api, ro, &next).await?;
        #[cfg(debug_assertions)]
        halt_for_tests("ROLLGUARD_TEST_HALT_AFTER", &status, &next).await;
        ctx.metrics.observe(&ns, &name, &status, &next, obs.now);
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
        // On SIGTERM the plan just recorded is the last: the next leader takes it from here.
        if ctx.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(Duration::from_millis(100));
        }
    }
    Ok(Duration::from_millis(100))
}

/// Fault injection for the end-to-end tests, in debug builds only. The reconcile whose plan
/// completes a saga step stops there for good, so that the test can SIGKILL the process at
/// exactly that point: with `ROLLGUARD_TEST_HALT_BEFORE_RECORD=<step>` after the step's writes
/// to the cluster and before its record in status, with `ROLLGUARD_TEST_HALT_AFTER=<step>`
/// once it is recorded.
#[cfg(debug_assertions)]
async fn halt_for_tests(variable: &str, before: &RolloutStatus, after: &RolloutStatus) {
    let Ok(step) = std::env::var(variable) else {
        return;
    };
    let done = |s: &RolloutStatus| {
        s.rollback
            .as_ref()
            .is_some_and(|rb| rb.completed.iter().any(|r| format!("{:?}", r.step) == step))
    };
    if done(after) && !done(before) {
        tracing::warn!("halting at saga step {step} ({variable})");
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
    fn a_forbidden_action_names_the_verb_and_resource() {
        let raw = r#"ApiError: httproutes.gateway.networking.k8s.io "web" is forbidden: User "system:serviceaccount:rollguard:rollguard" cannot patch resource "httproutes" in API group "gateway.networking.k8s.io" in the namespace "shop": RBAC: clusterrole.rbac.authorization.k8s.io "x" not found (ErrorResponse { status: "Failure", code: 403 })"#;
        assert_eq!(
            explain(raw),
            "permission denied: system:serviceaccount:rollguard:rollguard may not patch \
             httproutes.gateway.networking.k8s.io in namespace shop; grant 'patch' on \
             'httproutes.gateway.networking.k8s.io' to the controller's ClusterRole"
        );
        let core = r#"services "web-canary" is forbidden: User "u" cannot create resource "services" in API group "" in the namespace "shop""#;
        assert!(explain(core).contains("may not create services in namespace shop"));
        assert_eq!(explain("connection refused"), "connection refused");
        let terminating = r#"releases.rollguard.dev "web-cc" is forbidden: unable to create new content in namespace shop because it is being terminated"#;
        assert_eq!(explain(terminating), terminating, "not a permission");
    }

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
