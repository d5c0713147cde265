//! One reconcile of a Rollout: observe → measure → decide → apply → record, repeated while
//! each plan asks to continue at once, and the retry policy when a stage fails.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::runtime::controller::Action as Requeue;
use kube::{Api, Resource, ResourceExt};

use super::analysis::{Judged, LiveRun};
use super::apply::Applier;
use super::context::{Context, backoff, jitter_seed, key};
use super::error::{ActionError, CannotStart, Error};
use super::record::{publish, record};
use super::{escalate, leader};
use crate::api::Rollout;
use crate::api::common::bounded;
use crate::api::release::Release;
#[cfg(debug_assertions)]
use crate::api::rollout::RolloutStatus;
use crate::api::rollout::{RevertStep, RolloutPhase};
use crate::rollout::decide::{decide, failed, recovery_baseline_offset, verify_baseline_offset};
use crate::rollout::plan::{
    AnalysisView, ErrorKind, InvalidRequest, Observed, Plan, PodView, ReleaseView, Request,
    TargetView,
};
use crate::rollout::workload::{
    ARM_LABEL, Arm, RELEASE_ANNOTATION, REQUEST_ANNOTATION, ROLLOUT_LABEL, Workload, arm_name,
    artifact, fingerprint,
};

/// How many plans one reconcile may apply back to back when each asks to continue at once.
const PASSES: usize = 8;

pub(super) async fn reconcile(ro: Arc<Rollout>, ctx: Arc<Context>) -> Result<Requeue, Error> {
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
    let Some(mut ro) = api.get_opt(&ro.name_any()).await.map_err(Error::Observe)? else {
        ctx.metrics.forget(&ns, &ro.name_any());
        return Ok(Requeue::await_change());
    };
    let result = passes(&mut ro, ctx).await;
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

/// Runs observe → measure → decide → apply → record until a plan asks to wait; returns how
/// long.
async fn passes(ro: &mut Rollout, ctx: &Context) -> Result<Duration, Error> {
    let name = ro.name_any();
    let ns = ro.namespace().unwrap_or_default();
    let api = Api::<Rollout>::namespaced(ctx.client.clone(), &ns);
    for _ in 0..PASSES {
        let mut obs = observe(ro, ctx).await.map_err(Error::Observe)?;
        match measure(ro, ctx).await {
            Ok(view) => obs.analysis = view,
            Err(why) => obs.analysis_invalid = Some(bounded(&why.to_string())),
        }
        let status = ro.status.clone().unwrap_or_default();
        let plan = decide(&name, &ro.spec, &status, &obs);
        let result = apply(ro, ctx, &plan).await;
        let next = match &result {
            Ok(()) => plan.status.clone(),
            Err(e) => {
                tracing::warn!(rollout = %key(ro), error = %e, kind = e.kind.label(), object = %e.object, phase = ?status.phase, "plan failed");
                failed(&ns, &name, &ro.spec, &status, e.kind, &e.message, obs.now)
            }
        };
        #[cfg(debug_assertions)]
        if result.is_ok() {
            halt_for_tests("ROLLGUARD_TEST_HALT_BEFORE_RECORD", &status, &next).await;
        }
        record(&api, ro, &next).await.map_err(Error::Record)?;
        #[cfg(debug_assertions)]
        halt_for_tests("ROLLGUARD_TEST_HALT_AFTER", &status, &next).await;
        ctx.metrics.observe(&ns, &name, &status, &next, obs.now);
        if result.is_ok() {
            for note in &plan.notes {
                tracing::info!(rollout = %key(ro), reason = %note.reason, "{}", note.message);
                publish(
                    ctx,
                    ro,
                    note.warning,
                    &note.reason.to_string(),
                    &note.message,
                )
                .await;
            }
        }
        result.map_err(Error::Apply)?;
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

/// The apply stage: the plan's actions in order; the first that fails stops the rest.
async fn apply(ro: &Rollout, ctx: &Context, plan: &Plan) -> Result<(), ActionError> {
    let mut applier = Applier::new(ctx, ro);
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
    result
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
    // `Revert:<step>`: a step of a rollback by hand, done once its record has moved past it
    // (the request's id tells two rollbacks apart).
    let past = |s: &RolloutStatus, revert: &str| {
        let m = s.manual_rollback.as_ref()?;
        let order = ["Withdraw", "Restore", "Ready", "Record", "Done"];
        let at = order.iter().position(|o| *o == m.step.to_string())?;
        let wanted = order.iter().position(|o| *o == revert)?;
        (at > wanted).then(|| m.request.clone())
    };
    let done = |s: &RolloutStatus| {
        s.rollback
            .as_ref()
            .is_some_and(|rb| rb.completed.iter().any(|r| format!("{:?}", r.step) == step))
    };
    let halt = match step.strip_prefix("Revert:") {
        Some(revert) => {
            let now = past(after, revert);
            now.is_some() && now != past(before, revert)
        }
        None => done(after) && !done(before),
    };
    if halt {
        tracing::warn!("halting at saga step {step} ({variable})");
        std::future::pending::<()>().await;
    }
}

/// How soon a failed reconcile is tried again: by the kind of its error, with jittered backoff.
pub(super) fn error_policy(ro: Arc<Rollout>, error: &Error, ctx: Arc<Context>) -> Requeue {
    if let Some(e) = error.kube()
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
    ctx.metrics.reconcile_error(error.stage());
    tracing::warn!(rollout = %key(&ro), attempt = n, error = %error, "reconcile failed");
    let rolling_back = ro
        .status
        .as_ref()
        .is_some_and(|s| s.phase == Some(RolloutPhase::RollingBack));
    if let Error::Apply(e) = error
        && e.kind == ErrorKind::Permission
        && !rolling_back
    {
        // Retrying cannot help until someone changes RBAC, which is not watched: the condition
        // says what is missing, and the next try comes in minutes, not in a hot loop.
        return Requeue::requeue(Duration::from_secs(300) + backoff(1, jitter_seed()));
    }
    Requeue::requeue(backoff(n, jitter_seed()))
}

/// The observe stage: the target, the arms, the Releases and the request, read fresh.
async fn observe(ro: &Rollout, ctx: &Context) -> Result<Observed, kube::Error> {
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
        .map(|r| ReleaseView::from(&r))
        .collect();
    let request = ro.annotations().get(REQUEST_ANNOTATION).map(|text| {
        serde_json::from_str::<Request>(text).map_err(|e| InvalidRequest {
            id: format!("invalid-{}", fingerprint(text)),
            why: e.to_string(),
        })
    });
    Ok(Observed {
        now: crate::time::unix_now(),
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
        stable_pods: stable_pods(ro, ctx).await,
    })
}

/// The most pods of the stable arm read to name them in a rollback's log.
const MAX_PODS_READ: u32 = 100;

/// The stable arm's pods while a rollback or redeploy by hand waits for them; None otherwise,
/// or when they cannot be listed (the ClusterRole may lack `list pods`: the log then counts
/// replicas instead, and nothing else depends on it).
async fn stable_pods(ro: &Rollout, ctx: &Context) -> Option<Vec<PodView>> {
    let waiting = ro.status.as_ref().is_some_and(|s| {
        s.phase == Some(RolloutPhase::Reverting)
            && s.manual_rollback
                .as_ref()
                .is_some_and(|m| m.step == RevertStep::Ready)
    });
    if !waiting {
        return None;
    }
    let name = ro.name_any();
    let selector = format!("{ROLLOUT_LABEL}={name},{ARM_LABEL}={}", Arm::Stable);
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &ro.namespace().unwrap_or_default())
        .list(&ListParams::default().labels(&selector).limit(MAX_PODS_READ))
        .await
        .inspect_err(|e| {
            tracing::debug!(rollout = %key(ro), error = %e, "cannot list the stable pods; the log counts replicas instead");
        })
        .ok()?;
    Some(pods.items.iter().map(pod_view).collect())
}

fn pod_view(p: &Pod) -> PodView {
    let ready_at = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .map_or_else(crate::time::unix_now, |t| t.0.as_second())
        });
    PodView {
        name: p.name_any(),
        release: p.annotations().get(RELEASE_ANNOTATION).cloned(),
        ready_at: ready_at.filter(|_| p.metadata.deletion_timestamp.is_none()),
    }
}

/// The analysis, measured now: of the canary while it is live with its weight in effect, or of
/// the promoted stable during its post-promotion window. A canary waiting for its first weight
/// has its run started (templates loaded and rendered) but not measured, so that an analysis
/// that cannot start holds it at weight 0. `Err` says why the analysis cannot start.
///
/// The measure stage.
async fn measure(ro: &Rollout, ctx: &Context) -> Result<Option<AnalysisView>, CannotStart> {
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
        .await?;
        for (p, why) in run.broken() {
            publish(ctx, ro, true, "ProviderUnavailable", &format!("{p}: {why}")).await;
        }
        *slot = Some(run);
    }
    let Some(run) = slot.as_mut().filter(|_| live) else {
        return Ok(None);
    };
    if matches!(judged, Judged::Canary) {
        let verified = ro
            .status
            .as_ref()
            .and_then(|s| s.step_started_at.as_deref());
        if let Some(at) = crate::time::parse_at(verified) {
            run.anchor_once(at);
        }
    }
    let started = std::time::Instant::now();
    let view = run.measure(crate::time::unix_now()).await;
    ctx.metrics
        .analysis_seconds(started.elapsed().as_secs_f64());
    Ok(Some(view))
}

/// Which run the Rollout's phase calls for, and whether it is measured now (`false`: a canary
/// before its first weight, whose run is only started).
fn what_to_judge(ro: &Rollout) -> Option<(String, Judged, bool)> {
    let status = ro.status.clone().unwrap_or_default();
    let now = crate::time::unix_now();
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

#[cfg(test)]
mod tests {
    use http::Method;
    use serde_json::json;

    use super::*;
    #[cfg(not(debug_assertions))]
    use crate::api::rollout::RolloutStatus;
    use crate::controller::mock::{Exchange, MockApi, status};
    use crate::rollout::fixtures::spec;
    use crate::rollout::plan::Action;

    #[tokio::test]
    async fn the_apply_stage_stops_at_the_first_failing_action() {
        let path = "/apis/apps/v1/namespaces/shop/deployments/c-canary";
        let ours = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "c-canary", "namespace": "shop", "ownerReferences": [{
                "apiVersion": "rollguard.dev/v1alpha1", "kind": "Rollout", "name": "c",
                "uid": "uid-c", "controller": true,
            }]},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
        });
        let broken = status(500, "InternalError", "etcdserver: request timed out", None);
        // The second action (the stable arm) must never be asked for.
        let (client, mock) = MockApi::client(vec![
            Exchange::new(Method::GET, path, 200, ours),
            Exchange::new(Method::PATCH, path, 500, broken),
        ]);
        let ctx = Context::for_tests(client);
        let mut ro = Rollout::new("c", spec());
        ro.metadata.namespace = Some("shop".into());
        ro.metadata.uid = Some("uid-c".into());
        let plan = Plan {
            actions: vec![
                Action::ScaleArm {
                    arm: Arm::Canary,
                    replicas: 0,
                },
                Action::ScaleArm {
                    arm: Arm::Stable,
                    replicas: 4,
                },
            ],
            status: RolloutStatus::default(),
            notes: Vec::new(),
            requeue_secs: 0,
        };
        let e = apply(&ro, &ctx, &plan).await.expect_err("the patch failed");
        mock.done();
        assert_eq!(e.kind, ErrorKind::Transient);
        assert!(
            e.message.contains("etcdserver: request timed out"),
            "{}",
            e.message
        );
        let err = Error::Apply(e);
        assert_eq!(err.stage(), "apply");
        assert!(err.kube().is_none());
    }
}
