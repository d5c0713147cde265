//! Promotion by digest, and the post-promotion window that can still roll it back.

use super::incidents::{enqueue, is_rollback_incident, qualified, resolve_where};
use super::plan::{Action, Reason};
use super::planner::{Planner, failing};
use super::workload::Arm;
use crate::analysis::run::Decision;
use crate::api::release::ReleasePhase;
use crate::api::rollout::{
    DeliveryState, IncidentKind, OutboxAction, OutboxEntry, RolloutPhase, Severity,
};
use crate::time::{format_time, parse_at, secs};

impl Planner<'_> {
    pub(super) fn promote(&mut self) {
        self.requeue = 1;
        let (Some(canary), Some(stable)) = (self.status.canary.clone(), self.status.stable.clone())
        else {
            self.set_phase(RolloutPhase::Stable, "nothing to promote");
            return;
        };
        if let Some(a) = self.obs.analysis.clone()
            && let Decision::Fail {
                metric,
                reason,
                critical: true,
            } = &a.decision
        {
            self.begin_rollback(
                format!("critical metric {metric} failed while promoting: {reason}"),
                Some(metric.clone()),
                a.first_fail_at,
                failing(&a.summary),
            );
            return;
        }
        let s = self.stable_replicas();
        let done = self.obs.stable.as_ref().is_some_and(|w| {
            w.rolled_out && w.replicas == s && w.release.as_deref() == Some(&canary.release)
        });
        if !done {
            self.act(Action::ApplyArm {
                arm: Arm::Stable,
                release: canary.release.clone(),
                replicas: s,
            });
            self.status.message = Some(format!(
                "promoting: rolling {} onto the stable Deployment",
                canary.short_digest
            ));
            return;
        }
        self.drain_canary();
        self.act(Action::ReleasePhase {
            release: canary.release.clone(),
            phase: ReleasePhase::Stable,
            verdict: None,
        });
        if stable.release != canary.release {
            self.act(Action::ReleasePhase {
                release: stable.release.clone(),
                phase: ReleasePhase::Superseded,
                verdict: None,
            });
        }
        self.act(Action::ResetAnalysis);
        self.act(Action::PruneReleases);
        self.status.previous_stable = Some(stable.clone());
        self.status.stable = Some(canary.clone());
        self.status.canary = None;
        self.status.canary_weight = Some(0);
        self.status.current_step = None;
        self.status.step_started_at = None;
        self.status.verify_until = self
            .spec
            .post_promotion_window
            .as_ref()
            .map(|w| format_time(self.obs.now + secs(w, 0)));
        if self.spec.escalation.is_some() {
            let now = self.now();
            let entry = OutboxEntry {
                dedup_key: format!("{}:promoted", self.key(&canary.release)),
                action: OutboxAction::Trigger,
                severity: Severity::Info,
                title: format!(
                    "{} promoted {} ({}), replacing {}",
                    qualified(&self.obs.namespace, self.name),
                    canary.release,
                    canary.short_digest,
                    stable.short_digest
                ),
                release: canary.release.clone(),
                from_digest: Some(stable.digest.clone()),
                to_digest: canary.digest.clone(),
                created_at: format_time(now),
                kind: IncidentKind::Promoted,
                state: DeliveryState::Pending,
                deliveries: Vec::new(),
            };
            enqueue(&mut self.status, self.spec, entry, now);
        }
        let now = self.now();
        let title = format!(
            "{} resolved: {} ({}) was promoted since",
            qualified(&self.obs.namespace, self.name),
            canary.release,
            canary.short_digest
        );
        resolve_where(
            &mut self.status,
            self.spec,
            is_rollback_incident,
            &title,
            now,
        );
        self.note(
            false,
            Reason::Promoted,
            format!(
                "{} ({}) promoted; it replaces {}",
                canary.release, canary.short_digest, stable.short_digest
            ),
        );
        self.set_phase(
            RolloutPhase::Stable,
            format!("{} is stable", canary.release),
        );
        self.requeue = 0;
    }

    /// Within the post-promotion window: a failing verification restores the previous digest.
    pub(super) fn verify_failed(&mut self) -> bool {
        let Some(a) = self.obs.analysis.clone() else {
            return false;
        };
        self.status.analysis = Some(a.summary.clone());
        let (reason, metric, breach, evidence) = match &a.decision {
            Decision::Fail { metric, reason, .. } => (
                format!("metric {metric} failed after promotion: {reason}"),
                metric,
                a.first_fail_at,
                failing(&a.summary),
            ),
            // A release that passed its canary is not rolled back without evidence: a metric
            // that cannot be measured after promotion (say, no history before the rollout to
            // compare with) leaves it in place.
            _ => return false,
        };
        if !self.in_verify_window() {
            return false;
        }
        let metric = Some(metric.clone());
        self.begin_post_promotion_rollback(reason, metric, breach, evidence);
        true
    }

    pub(super) fn in_verify_window(&self) -> bool {
        parse_at(self.status.verify_until.as_deref()).is_some_and(|until| self.now() < until)
            && self.status.previous_stable.is_some()
    }
}

#[cfg(test)]
mod tests {
    use crate::rollout::fixtures::*;

    #[test]
    fn the_last_step_promotes_by_digest_then_the_weight_returns_to_stable() {
        let (mut s, mut o) = progressing();
        s.current_step = Some(2);
        s.phase = Some(RolloutPhase::Promoting);
        o.target = Some(TargetView {
            replicas: 0,
            artifact: Ok(artifact(NEW)),
            template: None,
        });
        let plan = decide("c", &spec(), &s, &o);
        let r = release_name("c", NEW);
        assert_eq!(
            plan.actions,
            vec![Action::ApplyArm {
                arm: Arm::Stable,
                release: r.clone(),
                replicas: 4
            }]
        );
        o.stable = Some(workload(&r, NEW, 4));
        let plan = decide("c", &spec(), &s, &o);
        assert_eq!(
            &plan.actions[..3],
            &[
                Action::SetWeights {
                    canary: 0,
                    baseline: 0
                },
                Action::ScaleArm {
                    arm: Arm::Canary,
                    replicas: 0
                },
                Action::ReleasePhase {
                    release: r.clone(),
                    phase: ReleasePhase::Stable,
                    verdict: None
                },
            ]
        );
        assert!(plan.actions.contains(&Action::ReleasePhase {
            release: release_name("c", OLD),
            phase: ReleasePhase::Superseded,
            verdict: None
        }));
        assert_eq!(
            plan.status.stable.as_ref().map(|r| r.digest.as_str()),
            Some(NEW)
        );
        assert_eq!(
            plan.status
                .previous_stable
                .as_ref()
                .map(|r| r.digest.as_str()),
            Some(OLD)
        );
        assert_eq!(plan.status.phase, Some(RolloutPhase::Stable));
        // A change event for the receivers that keep a record of changes (PagerDuty).
        let change: Vec<&OutboxEntry> = plan
            .status
            .outbox
            .iter()
            .filter(|e| e.kind == IncidentKind::Promoted)
            .collect();
        assert_eq!(change.len(), 1);
        assert_eq!(
            (change[0].severity, change[0].from_digest.as_deref()),
            (Severity::Info, Some(OLD))
        );
    }

    #[test]
    fn an_abort_in_the_post_promotion_window_restores_the_previous_digest() {
        let (s, mut o) = in_verify_window();
        o.request = Some(Ok(Request {
            id: "r".into(),
            action: RequestAction::Abort,
            by: "ic".into(),
            reason: None,
            to: None,
            unstable: None,
            warnings: Vec::new(),
        }));
        let status = decide("c", &spec(), &s, &o).status;
        o.request = None;
        assert!(
            restores_old(status, &mut o),
            "the previous stable digest goes back on the stable Deployment"
        );
    }

    #[test]
    fn a_failing_verification_in_the_window_restores_the_previous_digest() {
        let (s, mut o) = in_verify_window();
        // The verification's baseline looks back to before the canary started, the window long.
        assert_eq!(verify_baseline_offset(&s, 3000), Some(4000));
        assert_eq!(verify_baseline_offset(&s, 5000), None);
        // Passing or still collecting: nothing happens.
        for view in [None, Some(pass())] {
            o.analysis = view;
            let plan = decide("c", &spec(), &s, &o);
            assert_eq!(plan.status.phase, Some(RolloutPhase::Stable));
            assert!(plan.status.rollback.is_none());
        }
        // Inconclusive (say, no history before the rollout) leaves the promoted release alone.
        o.analysis = Some(AnalysisView {
            decision: Decision::Inconclusive {
                metric: "error-rate".into(),
                reason: "baseline: no data".into(),
                action: InconclusiveAction::Rollback,
            },
            ..pass()
        });
        assert!(decide("c", &spec(), &s, &o).status.rollback.is_none());
        // Any acting Fail rolls back, critical or not.
        o.analysis = Some(fail(false));
        let plan = decide("c", &spec(), &s, &o);
        assert_eq!(plan.status.phase, Some(RolloutPhase::RollingBack));
        let rb = plan.status.rollback.clone().expect("saga");
        assert_eq!(rb.release, release_name("c", NEW));
        assert_eq!(rb.metric.as_deref(), Some("error-rate"));
        assert_eq!(rb.breach_at, Some(format_time(1000)));
        assert!(rb.reason.contains("after promotion"), "{}", rb.reason);
        assert!(
            restores_old(plan.status, &mut o),
            "the previous stable digest goes back on the stable Deployment"
        );
        // After the window, a Fail is ignored (the run is dropped with the window).
        let mut late = s.clone();
        late.verify_until = Some(format_time(2500));
        o.now = 3000;
        o.analysis = Some(fail(true));
        let plan = decide("c", &spec(), &late, &o);
        assert_eq!(plan.status.phase, Some(RolloutPhase::Stable));
        assert!(plan.actions.contains(&Action::ResetAnalysis));
        assert!(plan.status.verify_until.is_none());
    }
}
