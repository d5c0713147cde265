//! The rollback saga: one step at a time, each recorded before the next begins.

use super::incidents::{enqueue, headline, incident, qualified, resolve_where, rollback_title};
use super::plan::{Action, Note, Reason};
use super::planner::{Planner, set_condition};
use super::workload::{Arm, Workload, short_digest};
use crate::analysis::run::Decision;
use crate::api::release::{ReleasePhase, ReleaseVerdict};
use crate::api::rollout::{
    IncidentKind, MetricEvidence, OutboxAction, ReleaseRef, RollbackStatus, RollbackStep,
    RolloutPhase, SagaRecord, Severity,
};
use crate::time::{format_time, parse_at, secs};

impl Planner<'_> {
    pub(super) fn begin_rollback(
        &mut self,
        reason: String,
        metric: Option<String>,
        breach: Option<i64>,
        evidence: Vec<MetricEvidence>,
    ) {
        let Some(canary) = self.status.canary.clone() else {
            return;
        };
        self.start_saga(canary, reason, metric, breach, evidence);
    }

    /// Roll back the Release promoted last, within its post-promotion window: the saga restores
    /// the previous stable digest on the stable Deployment.
    pub(super) fn begin_post_promotion_rollback(
        &mut self,
        reason: String,
        metric: Option<String>,
        breach: Option<i64>,
        evidence: Vec<MetricEvidence>,
    ) {
        let (Some(bad), Some(previous)) = (
            self.status.stable.clone(),
            self.status.previous_stable.clone(),
        ) else {
            return;
        };
        self.status.stable = Some(previous);
        self.status.previous_stable = None;
        self.status.verify_until = None;
        self.start_saga(bad, reason, metric, breach, evidence);
    }

    pub(super) fn start_saga(
        &mut self,
        bad: ReleaseRef,
        reason: String,
        metric: Option<String>,
        breach: Option<i64>,
        evidence: Vec<MetricEvidence>,
    ) {
        let now = self.now();
        self.status.rollback = Some(RollbackStatus {
            release: bad.release.clone(),
            digest: bad.digest.clone(),
            reason: reason.clone(),
            metric,
            step: RollbackStep::ZeroWeights,
            completed: Vec::new(),
            started_at: format_time(now),
            breach_at: breach.map(format_time),
            weight_zero_at: None,
            recovered_at: None,
            not_recovered_at: None,
            attempts: 0,
            last_error: None,
            evidence,
            repeated: self
                .release(&bad.release)
                .is_some_and(|r| r.verdict.is_some()),
        });
        self.status.paused_by = None;
        self.note(
            true,
            Reason::RollbackStarted,
            format!(
                "rolling back {} ({}): {reason}",
                bad.release, bad.short_digest
            ),
        );
        self.set_phase(RolloutPhase::RollingBack, format!("rolling back: {reason}"));
        // Recorded first; the saga's first step runs on the next pass, at once.
        self.actions
            .retain(|a| matches!(a, Action::ReleaseHistory { .. } | Action::ScaleTarget));
        self.requeue = 0;
    }

    /// One pass of the saga: run its current step, and record it done when it is.
    pub(super) fn roll_back(&mut self) {
        self.requeue = 1;
        let Some(mut rb) = self.status.rollback.clone() else {
            self.set_phase(RolloutPhase::Stable, "no rollback recorded");
            return;
        };
        let Some(stable) = self.status.stable.clone() else {
            self.set_phase(
                RolloutPhase::Initializing,
                "no stable Release to roll back to",
            );
            return;
        };
        let step = rb.step;
        let done = match step {
            RollbackStep::ZeroWeights => self.zero_weights(&mut rb),
            RollbackStep::EnsureStableCapacity => self.ensure_stable_capacity(),
            RollbackStep::RestoreStable => self.restore_stable(&stable),
            RollbackStep::MarkUnstable => self.mark_unstable(&rb),
            RollbackStep::Escalate => self.escalate(&rb, &stable),
            RollbackStep::VerifyRecovery => match self.verify_recovery(&mut rb, &stable) {
                Some(done) => done,
                // Not recovered: the saga stays on this step with its new window recorded.
                None => {
                    self.status.rollback = Some(rb);
                    return;
                }
            },
            RollbackStep::Done => false,
        };
        if done {
            self.step_done(&mut rb, step);
        }
        let release = rb.release.clone();
        let next = rb.step;
        self.status.rollback = Some(rb);
        if next == RollbackStep::Done {
            self.rolled_back(&release, &stable);
        } else if self
            .status
            .message
            .as_deref()
            .is_none_or(|m| !m.starts_with("rolled back;"))
        {
            self.status.message = Some(format!("rolling back {release}: next step {next}"));
        }
    }

    /// The stable Deployment at full size: the capacity that takes back all traffic.
    fn scale_stable_up(&mut self) {
        let s = self.stable_replicas();
        if self.obs.stable.as_ref().is_none_or(|w| w.replicas < s) {
            self.act(Action::ScaleArm {
                arm: Arm::Stable,
                replicas: s,
            });
        }
    }

    fn stable_ready(&self, w: &Workload) -> bool {
        w.ready >= self.stable_replicas()
    }

    fn zero_weights(&mut self, rb: &mut RollbackStatus) -> bool {
        self.scale_stable_up();
        self.act(Action::SetWeights {
            canary: 0,
            baseline: 0,
        });
        self.status.canary_weight = Some(0);
        rb.weight_zero_at = Some(format_time(self.now()));
        true
    }

    fn ensure_stable_capacity(&mut self) -> bool {
        self.scale_stable_up();
        self.obs
            .stable
            .as_ref()
            .is_some_and(|w| self.stable_ready(w))
    }

    fn restore_stable(&mut self, stable: &ReleaseRef) -> bool {
        let restored = self
            .obs
            .stable
            .as_ref()
            .is_some_and(|w| w.release.as_deref() == Some(&stable.release));
        if !restored {
            self.act(Action::ApplyArm {
                arm: Arm::Stable,
                release: stable.release.clone(),
                replicas: self.stable_replicas(),
            });
            if self
                .release(&stable.release)
                .is_some_and(|r| r.phase == Some(ReleasePhase::Superseded))
            {
                self.act(Action::ReleasePhase {
                    release: stable.release.clone(),
                    phase: ReleasePhase::Stable,
                    verdict: None,
                });
            }
        }
        self.stop_arms();
        true
    }

    fn mark_unstable(&mut self, rb: &RollbackStatus) -> bool {
        self.act(Action::ReleasePhase {
            release: rb.release.clone(),
            phase: ReleasePhase::Unstable,
            verdict: Some(ReleaseVerdict {
                reason: rb.reason.clone(),
                metric: rb.metric.clone(),
                at: rb
                    .breach_at
                    .clone()
                    .unwrap_or_else(|| rb.started_at.clone()),
                evidence: rb.evidence.clone(),
            }),
        });
        true
    }

    fn escalate(&mut self, rb: &RollbackStatus, stable: &ReleaseRef) -> bool {
        let now = self.now();
        let title = rollback_title(&self.obs.namespace, self.name, rb);
        let (key, severity) = if rb.repeated {
            (
                format!("{}:again", self.key(&rb.release)),
                Severity::Critical,
            )
        } else {
            (self.key(&rb.release), self.severity())
        };
        let entry = incident(
            rb,
            key,
            IncidentKind::Rollback,
            OutboxAction::Trigger,
            severity,
            title,
            Some(stable.digest.clone()),
            now,
        );
        enqueue(&mut self.status, self.spec, entry, now);
        true
    }

    /// Whether the restored stable held through the recovery window; None when it measured
    /// worse than before the rollout, which escalates again and starts the window over.
    fn verify_recovery(&mut self, rb: &mut RollbackStatus, stable: &ReleaseRef) -> Option<bool> {
        let now = self.now();
        let since = rb
            .completed
            .last()
            .and_then(|c| parse_at(Some(&c.at)))
            .unwrap_or(now);
        let since = since.max(parse_at(rb.not_recovered_at.as_deref()).unwrap_or(0));
        let window = secs(&self.spec.recovery_window, 30);
        let serving = self.obs.stable.as_ref().is_some_and(|w| {
            w.rolled_out && self.stable_ready(w) && w.release.as_deref() == Some(&stable.release)
        });
        // The restored stable is judged against itself before the rollout: still worse
        // means the rollback did not bring the service back.
        if let Some(a) = &self.obs.analysis
            && let Decision::Fail { metric, reason, .. } = &a.decision
        {
            let (metric, reason) = (metric.clone(), reason.clone());
            self.status.analysis = Some(a.summary.clone());
            self.not_recovered(rb, stable, &metric, &reason);
            return None;
        }
        let drained = self.obs.canary.as_ref().is_none_or(|w| w.pods == 0)
            && self
                .obs
                .baseline
                .as_ref()
                .is_none_or(|w| w.pods == 0 || !self.fresh());
        if !(serving && drained && now - since >= window) {
            self.status.message = Some(format!(
                "rolled back; verifying recovery on {} ({}s of {window}s)",
                stable.short_digest,
                (now - since).max(0)
            ));
            return Some(false);
        }
        rb.recovered_at = Some(format_time(now));
        let title = format!(
            "{} recovered on {} after rolling back {}",
            qualified(&self.obs.namespace, self.name),
            stable.short_digest,
            short_digest(&rb.digest)
        );
        // The service is back, so the alarms about it not being back close; the rollback's own
        // incident stays open until a human resolves it (the root cause is theirs to find) or
        // a later release is promoted.
        let prefix = format!("{}:", self.key(&rb.release));
        resolve_where(
            &mut self.status,
            self.spec,
            |e| {
                matches!(
                    e.kind,
                    IncidentKind::NotRecovered | IncidentKind::RollbackIncomplete
                ) && e.dedup_key.starts_with(&prefix)
            },
            &title,
            now,
        );
        Some(true)
    }

    /// Records `step` done and moves the saga to the next; a RollbackIncomplete raised by its
    /// failures clears.
    fn step_done(&mut self, rb: &mut RollbackStatus, step: RollbackStep) {
        let now = self.now();
        rb.completed.push(SagaRecord {
            step,
            at: format_time(now),
        });
        rb.step = step.next();
        rb.attempts = 0;
        rb.last_error = None;
        if self
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "RollbackIncomplete" && c.status == "True")
        {
            set_condition(
                &mut self.status,
                "RollbackIncomplete",
                false,
                "StepSucceeded",
                &format!("{step} succeeded"),
                now,
            );
        }
        // A note, not only a timeline entry: each saga step shows in Events and the log.
        self.note(
            false,
            Reason::RollbackStep(step),
            format!("rollback step {step} done"),
        );
        self.requeue = 0;
    }

    /// Every step done: the canary is gone and the restored stable serves.
    fn rolled_back(&mut self, release: &str, stable: &ReleaseRef) {
        self.status.canary = None;
        self.status.current_step = None;
        self.status.step_started_at = None;
        self.act(Action::ResetAnalysis);
        self.note(
            false,
            Reason::RolledBack,
            format!(
                "{release} rolled back; {} serves and recovered",
                stable.release
            ),
        );
        self.set_phase(
            RolloutPhase::RolledBack,
            format!("{release} was rolled back; {} serves", stable.release),
        );
        self.requeue = 0;
    }

    /// The restored stable measured worse than before the rollout: escalate once more, at
    /// critical, and start the recovery window again.
    pub(super) fn not_recovered(
        &mut self,
        rb: &mut RollbackStatus,
        stable: &ReleaseRef,
        metric: &str,
        reason: &str,
    ) {
        let now = self.now();
        rb.not_recovered_at = Some(format_time(now));
        let title = format!(
            "{} rollback of {} did not recover: {metric} on {} {}",
            qualified(&self.obs.namespace, self.name),
            short_digest(&rb.digest),
            stable.short_digest,
            headline(reason)
        );
        let entry = incident(
            rb,
            format!("{}:not-recovered", self.key(&rb.release)),
            IncidentKind::NotRecovered,
            OutboxAction::Trigger,
            Severity::Critical,
            title,
            Some(stable.digest.clone()),
            now,
        );
        if enqueue(&mut self.status, self.spec, entry, now) {
            self.notes.push(Note {
                warning: true,
                reason: Reason::NotRecovered,
                message: format!(
                    "{} still measures worse than before the rollout: {metric}: {reason}",
                    stable.release
                ),
            });
        }
        // A new verification run, whose baseline reaches back before the canary again.
        self.act(Action::ResetAnalysis);
        self.status.message = Some(format!(
            "rolled back; {} does not recover yet: {metric}: {}",
            stable.short_digest,
            headline(reason)
        ));
    }
}

#[cfg(test)]
mod tests {
    use crate::rollout::fixtures::*;

    /// Drives the saga from a critical Fail to the end, the way the controller does: apply the
    /// plan, record its status, observe again.
    #[test]
    fn a_critical_fail_records_the_rollback_first_then_runs_every_step_once_in_order() {
        let (s, mut o) = progressing();
        o.analysis = Some(fail(true));
        let start = decide("c", &spec(), &s, &o);
        assert_eq!(start.status.phase, Some(RolloutPhase::RollingBack));
        assert!(
            start.actions.is_empty(),
            "the saga is recorded before its first step: {:?}",
            start.actions
        );
        let rb = start.status.rollback.clone().expect("saga recorded");
        assert_eq!(
            (rb.step, rb.breach_at.as_deref()),
            (RollbackStep::ZeroWeights, Some(format_time(1000).as_str()))
        );
        assert_eq!(rb.evidence.len(), 1);
        let mut status = start.status;
        let mut steps = Vec::new();
        let mut all = Vec::new();
        for t in 0..40 {
            o.now = 1006 + t;
            o.analysis = None;
            let plan = decide("c", &spec(), &status, &o);
            all.extend(plan.actions.clone());
            // The world follows the actions.
            for a in &plan.actions {
                if let Action::ScaleArm {
                    arm: Arm::Canary,
                    replicas: 0,
                } = a
                {
                    o.canary = Some(Workload {
                        replicas: 0,
                        pods: 0,
                        ready: 0,
                        ..workload("x", NEW, 0)
                    });
                }
            }
            if let Some(rb) = &plan.status.rollback
                && steps.last() != Some(&rb.step)
            {
                steps.push(rb.step);
            }
            status = plan.status;
            if status.phase == Some(RolloutPhase::RolledBack) {
                break;
            }
        }
        assert_eq!(
            status.phase,
            Some(RolloutPhase::RolledBack),
            "{:?}",
            status.message
        );
        assert_eq!(
            steps,
            vec![
                RollbackStep::EnsureStableCapacity,
                RollbackStep::RestoreStable,
                RollbackStep::MarkUnstable,
                RollbackStep::Escalate,
                RollbackStep::VerifyRecovery,
                RollbackStep::Done,
            ]
        );
        assert_eq!(
            all[0],
            Action::SetWeights {
                canary: 0,
                baseline: 0
            },
            "weight first"
        );
        let unstable = all
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::ReleasePhase {
                        phase: ReleasePhase::Unstable,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(unstable, 1);
        let rb = status.rollback.expect("saga");
        assert_eq!(rb.weight_zero_at, Some(format_time(1006)));
        assert!(rb.recovered_at.is_some());
        let triggers: Vec<&OutboxEntry> = status
            .outbox
            .iter()
            .filter(|e| e.action == OutboxAction::Trigger)
            .collect();
        assert_eq!(triggers.len(), 1, "exactly one incident");
        assert_eq!(
            triggers[0].dedup_key,
            dedup_key("", "c", &release_name("c", NEW))
        );
        assert_eq!(triggers[0].from_digest.as_deref(), Some(OLD));
        assert_eq!(
            status
                .outbox
                .iter()
                .filter(|e| e.action == OutboxAction::Resolve)
                .count(),
            0,
            "recovery leaves the incident open for a human"
        );
    }

    #[test]
    fn a_replayed_saga_step_is_the_same_plan() {
        let (s, mut o) = progressing();
        o.analysis = Some(fail(true));
        let started = decide("c", &spec(), &s, &o).status;
        // A controller killed after zeroing the weight but before recording it does it again.
        let first = decide("c", &spec(), &started, &o);
        let again = decide("c", &spec(), &started, &o);
        assert_eq!(first.actions, again.actions);
        assert_eq!(
            first.actions,
            vec![Action::SetWeights {
                canary: 0,
                baseline: 0
            }]
        );
        // Escalating twice never makes two incidents.
        let mut at_escalate = started.clone();
        if let Some(rb) = at_escalate.rollback.as_mut() {
            rb.step = RollbackStep::Escalate;
        }
        let once = decide("c", &spec(), &at_escalate, &o).status;
        let mut replay = once.clone();
        if let Some(rb) = replay.rollback.as_mut() {
            rb.step = RollbackStep::Escalate;
        }
        let twice = decide("c", &spec(), &replay, &o).status;
        assert_eq!(twice.outbox.len(), 1);
    }

    #[test]
    fn a_failure_after_a_finished_rollback_is_not_counted_against_that_saga() {
        let (s, mut o) = progressing();
        o.analysis = Some(fail(true));
        let mut status = decide("c", &spec(), &s, &o).status;
        if let Some(rb) = status.rollback.as_mut() {
            rb.step = RollbackStep::Done;
        }
        status.phase = Some(RolloutPhase::RolledBack);
        let denied = "permission denied: u may not patch httproutes.gateway.networking.k8s.io";
        let once = failed(
            "",
            "c",
            &spec(),
            &status,
            ErrorKind::Permission,
            denied,
            1010,
        );
        let twice = failed("", "c", &spec(), &once, ErrorKind::Permission, denied, 1010);
        assert_eq!(once, twice, "the same failure again changes nothing");
        assert_eq!(
            once.rollback, status.rollback,
            "the finished saga is left alone"
        );
        assert_eq!(once.outbox, status.outbox, "no RollbackIncomplete incident");
        let ready = once
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "PermissionDenied")
        );
        let other = failed(
            "",
            "c",
            &spec(),
            &status,
            ErrorKind::Transient,
            "connection refused",
            1010,
        );
        assert!(other.conditions.iter().any(|c| c.reason == "ActionFailed"));
    }

    #[test]
    fn a_failing_step_raises_rollback_incomplete_and_one_critical_incident() {
        let (s, mut o) = progressing();
        o.analysis = Some(fail(true));
        let mut status = decide("c", &spec(), &s, &o).status;
        for _ in 0..5 {
            status = failed(
                "",
                "c",
                &spec(),
                &status,
                ErrorKind::Transient,
                "HTTPRoute c: connection refused",
                1010,
            );
        }
        let rb = status.rollback.as_ref().expect("saga");
        assert_eq!((rb.step, rb.attempts), (RollbackStep::ZeroWeights, 5));
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == "RollbackIncomplete")
            .expect("condition");
        assert_eq!(c.status, "True");
        assert!(c.message.contains("connection refused"), "{}", c.message);
        let critical: Vec<&OutboxEntry> = status
            .outbox
            .iter()
            .filter(|e| e.severity == Severity::Critical)
            .collect();
        assert_eq!(
            critical.len(),
            1,
            "one critical incident however often it fails"
        );
        // The step succeeds at last: the condition clears, the saga moves on.
        let plan = decide("c", &spec(), &status, &o);
        let c = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "RollbackIncomplete")
            .expect("condition");
        assert_eq!(c.status, "False");
        assert_eq!(
            plan.status.rollback.map(|r| r.step),
            Some(RollbackStep::EnsureStableCapacity)
        );
    }

    #[test]
    fn a_non_critical_fail_rolls_back_when_the_step_ends() {
        let (s, mut o) = progressing();
        o.analysis = Some(fail(false));
        o.now = 1010;
        assert_eq!(
            decide("c", &spec(), &s, &o).status.phase,
            Some(RolloutPhase::Progressing)
        );
        o.now = 1031;
        assert_eq!(
            decide("c", &spec(), &s, &o).status.phase,
            Some(RolloutPhase::RollingBack)
        );
    }
}
