//! A running canary: its arms, its steps and their weights, and when a step may be left.

use super::plan::{Action, Reason};
use super::planner::{Planner, failing, set_condition};
use super::workload::{Arm, Artifact, Workload, canary_replicas, short_digest};
use crate::analysis::run::Decision;
use crate::api::analysis::InconclusiveAction;
use crate::api::release::ReleasePhase;
use crate::api::rollout::{PassForecast, Pause, Promotion, ReleaseRef, RolloutPhase, Step};
use crate::time::{format_time, parse_at, secs};

impl Planner<'_> {
    pub(super) fn start_canary(&mut self, artifact: &Artifact) {
        let r = self.release_ref(&artifact.digest);
        self.move_release(&r.release, &[ReleasePhase::Progressing]);
        let first = self
            .spec
            .steps
            .iter()
            .find_map(|s| s.set_weight)
            .unwrap_or(0);
        let replicas = canary_replicas(self.stable_replicas(), first.max(1), self.mesh());
        self.act(Action::ResetAnalysis);
        self.act(Action::EnsureServices);
        self.act(Action::ApplyArm {
            arm: Arm::Canary,
            release: r.release.clone(),
            replicas,
        });
        if self.fresh()
            && let Some(stable) = &self.status.stable
        {
            let release = stable.release.clone();
            self.act(Action::ApplyArm {
                arm: Arm::Baseline,
                release,
                replicas,
            });
        }
        let now = format_time(self.now());
        self.status.current_step = Some(0);
        self.status.canary_weight = Some(0);
        self.status.canary_started_at = Some(now);
        self.status.step_started_at = None;
        self.status.analysis = None;
        self.status.paused_by = None;
        self.status.verify_until = None;
        self.status.previous_stable = None;
        let from = self
            .status
            .stable
            .as_ref()
            .map(|s| s.short_digest.clone())
            .unwrap_or_default();
        self.note(
            false,
            Reason::CanaryStarted,
            format!(
                "canary {} ({}) started next to stable {from}",
                r.release, r.short_digest
            ),
        );
        self.status.canary = Some(r);
        self.set_phase(RolloutPhase::Progressing, "canary starting");
        self.requeue = 0;
    }

    /// Progressing or Paused: the canary's next move. Each check may end the pass: the target
    /// moved on, the analysis cannot judge, a critical Fail, pods not ready yet, a pause; then
    /// the current step sets its weight or waits out its pause.
    pub(super) fn progress(&mut self) {
        self.requeue = 1;
        let Some(canary) = self.status.canary.clone() else {
            self.set_phase(RolloutPhase::Stable, "no canary recorded");
            self.requeue = 0;
            return;
        };
        if let Some(a) = &self.obs.analysis {
            self.status.analysis = Some(a.summary.clone());
        }
        if self.target_moved_on(&canary)
            || self.held_unjudged()
            || self.failed_at_once()
            || self.not_ready_yet()
            || self.paused()
        {
            return;
        }
        if self.phase() == RolloutPhase::Paused
            && self.current_step().is_none_or(|s| s.pause.is_none())
        {
            self.timeline(Reason::Resumed, "the analysis measures again");
        }
        self.status.phase = Some(RolloutPhase::Progressing);
        let Some(step) = self.current_step().cloned() else {
            self.set_phase(RolloutPhase::Promoting, "every step passed; promoting");
            self.requeue = 0;
            return;
        };
        let i = self.status.current_step.unwrap_or(0);
        self.note_forecast(i, &step);
        if let Some(w) = step.set_weight {
            self.weight_step(i, w, &step);
        } else if let Some(pause) = &step.pause {
            self.pause_step(i, pause);
        }
    }

    /// The target moved away from this canary: it is withdrawn without a verdict.
    fn target_moved_on(&mut self, canary: &ReleaseRef) -> bool {
        let Some(Ok(a)) = self.obs.target.as_ref().map(|t| &t.artifact) else {
            return false;
        };
        if a.digest == canary.digest {
            return false;
        }
        let message = format!(
            "the target now declares {}; canary {} is withdrawn",
            short_digest(&a.digest),
            canary.release
        );
        self.withdraw(canary, &message);
        true
    }

    /// A critical Fail, or a metric that cannot be measured under `onInconclusive: Rollback`,
    /// rolls back at once, whatever the step.
    fn failed_at_once(&mut self) -> bool {
        let Some(a) = self.obs.analysis.clone() else {
            return false;
        };
        match a.decision {
            Decision::Fail {
                metric,
                reason,
                critical: true,
            } => self.begin_rollback(
                format!("critical metric {metric} failed: {reason}"),
                Some(metric),
                a.first_fail_at,
                failing(&a.summary),
            ),
            Decision::Inconclusive {
                metric,
                reason,
                action: InconclusiveAction::Rollback,
            } => self.begin_rollback(
                format!("metric {metric} could not be measured: {reason}"),
                Some(metric),
                None,
                a.summary.metrics.clone(),
            ),
            _ => return false,
        }
        true
    }

    /// Before its first weight, the canary must become ready within the progress deadline;
    /// until then it waits, and past it it is rolled back.
    fn not_ready_yet(&mut self) -> bool {
        let now = self.now();
        let deadline = secs(&self.spec.progress_deadline, 600);
        let started = parse_at(self.status.canary_started_at.as_deref()).unwrap_or(now);
        let want = self.arm_replicas();
        let ready = |w: &Option<Workload>| {
            w.as_ref()
                .is_some_and(|w| w.ready >= want && w.replicas >= want)
        };
        let canary_ready = ready(&self.obs.canary) && (!self.fresh() || ready(&self.obs.baseline));
        if canary_ready || self.status.step_started_at.is_some() {
            return false;
        }
        if now - started > deadline {
            self.begin_rollback(
                format!(
                    "the canary did not become ready within the progress deadline ({})",
                    self.spec.progress_deadline.0
                ),
                None,
                None,
                Vec::new(),
            );
        } else {
            self.scale_arms(want);
            self.status.message = Some(format!("waiting for {want} ready canary pods"));
        }
        true
    }

    /// Paused by the analysis (Inconclusive with Pause) or by a human.
    fn paused(&mut self) -> bool {
        let inconclusive = self.obs.analysis.as_ref().and_then(|a| match &a.decision {
            Decision::Inconclusive { metric, reason, .. } => Some(format!(
                "analysis paused: {metric} could not be measured: {reason}"
            )),
            _ => None,
        });
        if let Some(message) = inconclusive {
            if self.phase() != RolloutPhase::Paused {
                self.note(true, Reason::AnalysisInconclusive, message.clone());
            }
            self.set_phase(RolloutPhase::Paused, message);
            return true;
        }
        if let Some(by) = self.status.paused_by.clone() {
            self.set_phase(
                RolloutPhase::Paused,
                format!("paused by {by}; `rollguard resume` continues"),
            );
            return true;
        }
        false
    }

    /// A `setWeight` step: the weight is written once the arms are ready for it, then the step
    /// lasts at least its duration and is left on the analysis's word.
    fn weight_step(&mut self, i: i32, w: i32, step: &Step) {
        let label = self.step_label(i);
        let now = self.now();
        let step_started = parse_at(self.status.step_started_at.as_deref());
        if step_started.is_none() || self.status.canary_weight != Some(w) {
            let want = canary_replicas(self.stable_replicas(), w, self.mesh());
            if self.mesh() {
                let short = |x: &Option<Workload>| x.as_ref().is_none_or(|x| x.ready < want);
                if short(&self.obs.canary) || (self.fresh() && short(&self.obs.baseline)) {
                    self.scale_arms(want);
                    self.status.message = Some(format!(
                        "{label}: waiting for {want} ready canary pods before weight {w}%"
                    ));
                    return;
                }
            }
            self.act(Action::SetWeights {
                canary: w,
                baseline: if self.fresh() { w } else { 0 },
            });
            self.status.canary_weight = Some(w);
            self.status.step_started_at = Some(format_time(now));
            self.status.message = Some(format!("{label}: canary at {w}%"));
            self.note(
                false,
                Reason::WeightSet,
                format!("{label}: canary weight {w}% written and verified"),
            );
            return;
        }
        let elapsed = now - step_started.unwrap_or(now);
        let min = step.duration.as_ref().map_or(0, |d| secs(d, 0));
        if elapsed < min {
            let slow = self
                .forecast()
                .filter(|f| f.seconds.is_none_or(|s| s > min - elapsed))
                .map(|f| format!("; the analysis {}", f.message))
                .unwrap_or_default();
            self.status.message = Some(format!(
                "{label}: canary at {w}%, {elapsed}s of {min}s{slow}"
            ));
            self.requeue = self.wake_in(Some((min - elapsed) as u64));
            return;
        }
        self.leave_step(i, &format!("canary at {w}%"));
    }

    /// A `pause` step: timed, it is left on the analysis's word when its time is up; without a
    /// duration it waits for `rollguard resume`.
    fn pause_step(&mut self, i: i32, pause: &Pause) {
        let label = self.step_label(i);
        let now = self.now();
        let step_started = parse_at(self.status.step_started_at.as_deref());
        match pause.duration.as_ref().map(|d| secs(d, 0)) {
            Some(d) => {
                let Some(started) = step_started else {
                    self.status.step_started_at = Some(format_time(now));
                    return;
                };
                if now - started >= d {
                    self.leave_step(i, "pause over");
                } else {
                    self.status.message =
                        Some(format!("{label}: pause, {}s of {d}s", now - started));
                }
            }
            None => {
                if self.phase() != RolloutPhase::Paused {
                    self.note(
                        false,
                        Reason::Paused,
                        format!("{label}: paused until `rollguard resume`"),
                    );
                }
                self.set_phase(
                    RolloutPhase::Paused,
                    format!("{label}: paused until `rollguard resume`"),
                );
                self.requeue = 5;
            }
        }
    }

    /// A step whose time is up is left on a Pass, or with no analysis when the owner wrote
    /// that choice into the spec (`withoutAnalysis`), or under `promotion: noFail` with no Fail
    /// once the canary has served minRequests. A Fail rolls back; anything else waits for
    /// evidence and says how long that will take.
    pub(super) fn leave_step(&mut self, i: i32, at: &str) {
        let label = self.step_label(i);
        let analysis = self.obs.analysis.clone();
        let policy = self.promotion_at(i);
        match analysis.as_ref().map(|a| &a.decision) {
            Some(Decision::Pass) => self.advance(),
            None if self.spec.analysis.is_none() && self.spec.without_analysis => self.advance(),
            Some(Decision::Fail { metric, reason, .. }) => {
                let (m, r) = (metric.clone(), reason.clone());
                let (at, ev) = analysis
                    .as_ref()
                    .map(|a| (a.first_fail_at, failing(&a.summary)))
                    .unwrap_or_default();
                self.begin_rollback(
                    format!("metric {m} failed at the end of {label}: {r}"),
                    Some(m),
                    at,
                    ev,
                );
            }
            Some(Decision::Running) if policy == Promotion::NoFail => {
                let a = analysis.as_ref().expect("matched Some");
                if a.served_min_requests && a.first_fail_at.is_none() {
                    let pending = self
                        .forecast()
                        .map(|f| format!("; a Pass was not shown yet: {}", f.message))
                        .unwrap_or_default();
                    self.note(
                        false,
                        Reason::LeftWithoutPass,
                        format!(
                            "{label}: left under promotion noFail: its time is up, no metric \
                             failed, and the canary served minRequests{pending}"
                        ),
                    );
                    self.advance();
                } else {
                    self.status.message = Some(format!(
                        "{label}: {at}, waiting for the canary to serve minRequests (promotion \
                             noFail)"
                    ));
                    self.requeue = self.wake_in(None);
                }
            }
            _ => {
                let forecast = self.forecast().map_or_else(
                    || ": evidence is still coming in".to_owned(),
                    |f| format!(": {}", f.message),
                );
                self.status.message = Some(format!(
                    "{label}: {at}, waiting for the analysis's Pass{forecast}"
                ));
                self.requeue = self.wake_in(None);
            }
        }
    }

    /// The promotion policy of step `i`: its own, else the Rollout's.
    fn promotion_at(&self, i: i32) -> Promotion {
        usize::try_from(i)
            .ok()
            .and_then(|i| self.spec.steps.get(i))
            .and_then(|s| s.promotion)
            .unwrap_or(self.spec.promotion)
    }

    /// The analysis's latest forecast of its Pass.
    fn forecast(&self) -> Option<PassForecast> {
        self.obs
            .analysis
            .as_ref()
            .and_then(|a| a.summary.forecast.clone())
    }

    /// Once per step, the analysis's first forecast as an Event: a warning when a step that
    /// waits for a Pass lasts far less than the evidence needs, so the owner learns at once
    /// why the step will outlast its duration, and what `promotion: noFail` would change.
    fn note_forecast(&mut self, i: i32, step: &Step) {
        let Some(started) = self.status.step_started_at.clone() else {
            return;
        };
        let Some(f) = self.forecast() else {
            return;
        };
        let noted = self.status.timeline.iter().any(|e| {
            e.reason == Reason::PassForecast.to_string() && e.at.as_str() >= started.as_str()
        });
        if noted {
            return;
        }
        let label = self.step_label(i);
        let elapsed = self.now() - parse_at(Some(&started)).unwrap_or(self.now());
        let duration = step
            .duration
            .as_ref()
            .or(step.pause.as_ref().and_then(|p| p.duration.as_ref()))
            .map(|d| secs(d, 0));
        let total = f.seconds.map(|s| s + elapsed);
        let far_beyond = duration.is_some_and(|d| total.is_none_or(|t| t > 2 * d && t > d + 60));
        let policy = self.promotion_at(i);
        let (warning, message) = match duration {
            Some(d) if far_beyond && policy == Promotion::RequirePass => (
                true,
                format!(
                    "{label} lasts {d}s, but the analysis {}; the step waits for the Pass \
                             (promotion requirePass). promotion: noFail would leave it after {d}s if \
                             nothing fails",
                    f.message
                ),
            ),
            _ => (false, format!("{label}: the analysis {}", f.message)),
        };
        self.note(warning, Reason::PassForecast, message);
    }

    /// Why the canary may not be judged: its analysis cannot start, or the Rollout has none
    /// without saying so. Holding keeps the canary where it is (weight 0 before the first step)
    /// and says why, in the phase message, a condition and one warning Event; it lifts by
    /// itself once the analysis starts.
    pub(super) fn held_unjudged(&mut self) -> bool {
        let why = match (&self.spec.analysis, &self.obs.analysis_invalid) {
            (Some(_), Some(why)) => Some(why.clone()),
            (None, _) if !self.spec.without_analysis => Some(
                "the Rollout has no analysis; set spec.analysis, or spec.withoutAnalysis: true to \
                 promote on the steps' timing alone"
                    .to_owned(),
            ),
            _ => None,
        };
        let now = self.now();
        let flagged = self
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "AnalysisInvalid" && c.status == "True");
        let Some(why) = why else {
            if flagged {
                set_condition(
                    &mut self.status,
                    "AnalysisInvalid",
                    false,
                    "Started",
                    "the analysis runs",
                    now,
                );
                self.timeline(
                    Reason::AnalysisStarted,
                    "the analysis runs; the canary is judged again",
                );
            }
            return false;
        };
        let weight = self.status.canary_weight.unwrap_or(0);
        let message = format!(
            "held at {weight}%: the analysis cannot start, and a canary advances only on a Pass: \
             {why}"
        );
        if !flagged {
            self.note(true, Reason::AnalysisInvalid, message.clone());
        }
        set_condition(
            &mut self.status,
            "AnalysisInvalid",
            true,
            "CannotStart",
            &why,
            now,
        );
        self.set_phase(RolloutPhase::Paused, message);
        self.requeue = 10;
        true
    }

    /// "step N of M", counted from 1, as people read it.
    pub(super) fn step_label(&self, i: i32) -> String {
        format!("step {} of {}", i + 1, self.spec.steps.len())
    }

    pub(super) fn advance(&mut self) {
        let i = self.status.current_step.unwrap_or(0) + 1;
        self.status.current_step = Some(i);
        self.status.step_started_at = None;
        if i as usize >= self.spec.steps.len() {
            self.set_phase(RolloutPhase::Promoting, "every step passed; promoting");
            self.timeline(Reason::StepsPassed, "every step passed; promoting");
        } else {
            self.timeline(Reason::StepAdvanced, &self.step_label(i));
        }
        self.requeue = 0;
    }

    /// Take a canary away without judging it: weights to 0, arms to 0, Release Superseded.
    pub(super) fn withdraw(&mut self, canary: &ReleaseRef, message: &str) {
        self.drain_canary();
        self.act(Action::ReleasePhase {
            release: canary.release.clone(),
            phase: ReleasePhase::Superseded,
            verdict: None,
        });
        self.act(Action::ResetAnalysis);
        self.status.canary = None;
        self.status.canary_weight = Some(0);
        self.status.current_step = None;
        self.status.step_started_at = None;
        self.note(false, Reason::CanaryWithdrawn, message.to_owned());
        self.set_phase(RolloutPhase::Stable, message);
        self.requeue = 0;
    }
}

#[cfg(test)]
#[path = "canary_tests.rs"]
mod tests;
