//! The planner: the state one decision works on, and the small helpers every stage uses.

use super::plan::{Action, Note, Observed, Reason, ReleaseView};
use super::workload::{Arm, Artifact, canary_replicas, release_name, short_digest};
use crate::api::common::{Condition, bounded};
use crate::api::release::ReleasePhase;
use crate::api::rollout::{
    AnalysisSummary, BaselineMode, MetricEvidence, ReleaseRef, RolloutPhase, RolloutSpec,
    RolloutStatus, Severity, TimelineEntry,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::time::format_time;

/// Timeline entries kept in status; older ones are dropped.
const TIMELINE_LIMIT: usize = 64;

pub(super) struct Planner<'a> {
    pub(super) name: &'a str,
    pub(super) spec: &'a RolloutSpec,
    pub(super) obs: &'a Observed,
    pub(super) status: RolloutStatus,
    pub(super) actions: Vec<Action>,
    pub(super) notes: Vec<Note>,
    pub(super) requeue: u64,
}

/// The measurements that failed, or all of them when none is marked Fail.
pub(super) fn failing(summary: &AnalysisSummary) -> Vec<MetricEvidence> {
    let failed: Vec<MetricEvidence> = summary
        .metrics
        .iter()
        .filter(|m| m.verdict == "Fail")
        .cloned()
        .collect();
    if failed.is_empty() {
        summary.metrics.clone()
    } else {
        failed
    }
}

pub(super) fn push_timeline(status: &mut RolloutStatus, now: i64, reason: Reason, message: &str) {
    status.timeline.push(TimelineEntry {
        at: format_time(now),
        reason: reason.to_string(),
        message: bounded(message),
    });
    let excess = status.timeline.len().saturating_sub(TIMELINE_LIMIT);
    status.timeline.drain(..excess);
}

/// Sets a condition; its transition time moves only when its status changes.
pub fn set_condition(
    status: &mut RolloutStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    now: i64,
) {
    let value = if ok { "True" } else { "False" };
    let message = bounded(message);
    let message = message.as_str();
    let time = Time(Timestamp::from_second(now).unwrap_or(Timestamp::UNIX_EPOCH));
    if let Some(c) = status.conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != value {
            c.last_transition_time = time;
        }
        c.status = value.into();
        c.reason = reason.into();
        c.message = message.into();
        c.observed_generation = status.observed_generation;
    } else {
        status.conditions.push(Condition {
            type_: type_.into(),
            status: value.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: time,
            observed_generation: status.observed_generation,
        });
    }
}

impl Planner<'_> {
    pub(super) fn now(&self) -> i64 {
        self.obs.now
    }

    pub(super) fn severity(&self) -> Severity {
        self.spec
            .escalation
            .as_ref()
            .map(|e| e.severity)
            .unwrap_or_default()
    }

    pub(super) fn mesh(&self) -> bool {
        self.spec.traffic_router.is_some()
    }

    pub(super) fn fresh(&self) -> bool {
        self.spec.baseline == BaselineMode::Fresh
    }

    /// The stable size: what the target declares, or what it declared before it was scaled down.
    pub(super) fn stable_replicas(&self) -> i32 {
        match &self.obs.target {
            Some(t) if t.replicas > 0 => t.replicas,
            _ => self.status.replicas.unwrap_or(1).max(1),
        }
    }

    pub(super) fn release(&self, name: &str) -> Option<&ReleaseView> {
        self.obs.releases.iter().find(|r| r.name == name)
    }

    pub(super) fn phase(&self) -> RolloutPhase {
        self.status.phase.unwrap_or_default()
    }

    pub(super) fn set_phase(&mut self, phase: RolloutPhase, message: impl Into<String>) {
        self.status.phase = Some(phase);
        self.status.message = Some(message.into());
    }

    pub(super) fn timeline(&mut self, reason: Reason, message: &str) {
        push_timeline(&mut self.status, self.obs.now, reason, message);
    }

    pub(super) fn note(&mut self, warning: bool, reason: Reason, message: String) {
        self.timeline(reason, &message);
        self.notes.push(Note {
            warning,
            reason,
            message,
        });
    }

    pub(super) fn act(&mut self, action: Action) {
        self.actions.push(action);
    }

    /// The arm whose name the target has: that Deployment is rollguard's to scale and
    /// overwrite, so a target by that name would be scaled to zero while it serves.
    pub(super) fn target_name_taken(&self) -> Option<Arm> {
        [Arm::Stable, Arm::Canary, Arm::Baseline]
            .into_iter()
            .find(|arm| super::workload::arm_name(self.name, *arm) == self.spec.target_ref.name)
    }

    /// The target's artifact, or None with the reason recorded as a condition.
    pub(super) fn target_artifact(&mut self) -> Option<Artifact> {
        let taken = self.target_name_taken().map(|arm| {
            format!(
                "target Deployment {:?} has the name of the Rollout's {arm} Deployment, which \
                 rollguard scales and overwrites; rename the target or the Rollout",
                self.spec.target_ref.name
            )
        });
        let (result, reason) = match (&self.obs.target, taken) {
            (_, Some(why)) => (Err(why), "TargetNameTaken"),
            (None, None) => (
                Err(format!(
                    "target Deployment {:?} not found in the Rollout's namespace",
                    self.spec.target_ref.name
                )),
                "TargetMissing",
            ),
            (Some(t), None) => (t.artifact.clone(), "DigestRequired"),
        };
        let now = self.now();
        match result {
            Err(message) => {
                set_condition(&mut self.status, "Ready", false, reason, &message, now);
                self.status.message = Some(message);
                None
            }
            Ok(a) => {
                let ok = "the target declares a valid artifact";
                set_condition(&mut self.status, "Ready", true, "TargetValid", ok, now);
                Some(a)
            }
        }
    }

    pub(super) fn release_ref(&self, digest: &str) -> ReleaseRef {
        ReleaseRef {
            release: release_name(self.name, digest),
            digest: digest.to_owned(),
            short_digest: short_digest(digest),
        }
    }

    /// Moves a Release through legal transitions to the last of `path`, creating it when it
    /// does not exist yet. An overridden Unstable Release goes back to Candidate first.
    pub(super) fn move_release(&mut self, name: &str, path: &[ReleasePhase]) {
        let Some(last) = path.last().copied() else {
            return;
        };
        let Some(existing) = self.release(name).cloned() else {
            self.act(Action::CreateRelease {
                name: name.to_owned(),
                phase: last,
            });
            return;
        };
        let mut phase = existing.phase.unwrap_or(ReleasePhase::Candidate);
        if phase == last {
            return;
        }
        if phase == ReleasePhase::Unstable {
            self.act(Action::ReleasePhase {
                release: name.to_owned(),
                phase: ReleasePhase::Candidate,
                verdict: None,
            });
            phase = ReleasePhase::Candidate;
        }
        let start = path.iter().position(|p| *p == phase).map_or(0, |i| i + 1);
        for next in &path[start..] {
            self.act(Action::ReleasePhase {
                release: name.to_owned(),
                phase: *next,
                verdict: None,
            });
        }
    }

    pub(super) fn current_step(&self) -> Option<&crate::api::rollout::Step> {
        self.status
            .current_step
            .and_then(|i| self.spec.steps.get(i.max(0) as usize))
    }

    /// How long a canary at its step may sleep: until its step ends or its next measurement
    /// is due, whichever is first; at least 1 s and at most 30 s. Anything else that matters
    /// (the target, the arms, a request) wakes it through a watch.
    pub(super) fn wake_in(&self, step_left: Option<u64>) -> u64 {
        let due = self.obs.analysis.as_ref().and_then(|a| a.next_due_in);
        [step_left, due]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(1)
            .clamp(1, 30)
    }

    /// Canary (and fresh baseline) replicas for the current weight.
    pub(super) fn arm_replicas(&self) -> i32 {
        let w = self
            .status
            .canary_weight
            .filter(|w| *w > 0)
            .or_else(|| self.spec.steps.iter().find_map(|s| s.set_weight));
        canary_replicas(self.stable_replicas(), w.unwrap_or(1).max(1), self.mesh())
    }

    pub(super) fn scale_arms(&mut self, replicas: i32) {
        if self
            .obs
            .canary
            .as_ref()
            .is_none_or(|w| w.replicas != replicas)
        {
            self.act(Action::ScaleArm {
                arm: Arm::Canary,
                replicas,
            });
        }
        if self.fresh()
            && self
                .obs
                .baseline
                .as_ref()
                .is_none_or(|w| w.replicas != replicas)
        {
            self.act(Action::ScaleArm {
                arm: Arm::Baseline,
                replicas,
            });
        }
    }

    /// All traffic to stable, verified; canary and baseline scaled to 0.
    pub(super) fn drain_canary(&mut self) {
        self.act(Action::SetWeights {
            canary: 0,
            baseline: 0,
        });
        self.stop_arms();
    }

    /// The canary (and a fresh baseline) scaled to 0.
    pub(super) fn stop_arms(&mut self) {
        self.act(Action::ScaleArm {
            arm: Arm::Canary,
            replicas: 0,
        });
        if self.fresh() {
            self.act(Action::ScaleArm {
                arm: Arm::Baseline,
                replicas: 0,
            });
        }
    }
}
