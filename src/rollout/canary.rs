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
mod tests {
    use crate::rollout::fixtures::*;

    #[test]
    fn a_canary_mid_step_sleeps_until_its_next_measurement_or_the_steps_end() {
        // Step 0 lasts 30 s from t=1000; now is t=1005.
        let (s, mut o) = progressing();
        let mut due_in = |d: Option<u64>| {
            o.analysis = Some(AnalysisView {
                next_due_in: d,
                ..pass()
            });
            decide("c", &spec(), &s, &o).requeue_secs
        };
        assert_eq!(due_in(Some(3)), 3, "the next measurement first");
        assert_eq!(due_in(Some(0)), 1, "at least a second");
        assert_eq!(due_in(Some(60)), 25, "the step ends first");
        assert_eq!(due_in(None), 25, "no analysis: the step's end");
        let (s, mut o) = progressing();
        o.now = 1031;
        o.analysis = Some(AnalysisView {
            decision: Decision::Running,
            next_due_in: Some(4),
            ..pass()
        });
        assert_eq!(
            decide("c", &spec(), &s, &o).requeue_secs,
            4,
            "past the step's end without enough evidence: the next measurement"
        );
    }

    #[test]
    fn a_new_digest_starts_a_canary_then_weights_it_after_its_pods_are_ready() {
        let plan = decide("c", &spec(), &stable_status(), &observed(NEW, 100));
        let r = release_name("c", NEW);
        assert!(plan.actions.contains(&Action::CreateRelease {
            name: r.clone(),
            phase: ReleasePhase::Progressing
        }));
        assert!(plan.actions.contains(&Action::ApplyArm {
            arm: Arm::Canary,
            release: r.clone(),
            replicas: 1
        }));
        assert_eq!(plan.status.phase, Some(RolloutPhase::Progressing));
        assert_eq!(
            plan.status.canary.as_ref().map(|c| c.digest.as_str()),
            Some(NEW)
        );
        // Not ready yet: no weight.
        let mut o = observed(NEW, 101);
        o.canary = Some(Workload {
            ready: 0,
            ..workload(&r, NEW, 1)
        });
        let waiting = decide("c", &spec(), &plan.status, &o);
        assert!(
            !waiting
                .actions
                .iter()
                .any(|a| matches!(a, Action::SetWeights { .. })),
            "{:?}",
            waiting.actions
        );
        // Ready: weight 10 written and verified, the step clock starts.
        o.canary = Some(workload(&r, NEW, 1));
        let weighted = decide("c", &spec(), &plan.status, &o);
        assert_eq!(
            weighted.actions,
            vec![Action::SetWeights {
                canary: 10,
                baseline: 0
            }]
        );
        assert_eq!(weighted.status.canary_weight, Some(10));
        assert_eq!(weighted.status.step_started_at, Some(format_time(101)));
    }

    #[test]
    fn a_canary_whose_analysis_cannot_start_is_held_at_weight_zero_until_it_can() {
        // Each of what the review found: a missing template, a refused argument, a bad query.
        for why in [
            "template golden: analysistemplates.rollguard.dev \"golden\" not found",
            "template golden: argument \"port\" = \"1 or vector(1)\" is not a valid integer",
            "template golden: metric error-rate: the query does not parse as PromQL: unclosed",
        ] {
            let (mut s, mut o) = progressing();
            s.canary_weight = Some(0);
            s.step_started_at = None;
            o.analysis_invalid = Some(why.into());
            let sp = analysed(spec());
            let plan = decide("c", &sp, &s, &o);
            assert!(
                !plan
                    .actions
                    .iter()
                    .any(|a| matches!(a, Action::SetWeights { .. })),
                "{why}: {:?}",
                plan.actions
            );
            assert_eq!(plan.status.canary_weight, Some(0));
            assert_eq!(plan.status.current_step, Some(0));
            assert_eq!(plan.status.phase, Some(RolloutPhase::Paused));
            assert!(plan.status.message.as_deref().unwrap_or("").contains(why));
            assert_eq!(held(&plan).map(|c| c.message.as_str()), Some(why));
            let notes: Vec<_> = plan.notes.iter().map(|n| n.reason).collect();
            assert_eq!(notes, [Reason::AnalysisInvalid]);
            // Still broken on the next reconcile: held, with no second Event.
            let again = decide("c", &sp, &plan.status, &o);
            assert!(again.notes.is_empty() && held(&again).is_some());
            // Fixed: the first weight is set and the condition clears.
            o.analysis_invalid = None;
            let fixed = decide("c", &sp, &again.status, &o);
            assert!(fixed.actions.contains(&Action::SetWeights {
                canary: 10,
                baseline: 0
            }));
            assert!(held(&fixed).is_none(), "{:?}", fixed.status.conditions);
        }
    }

    #[test]
    fn a_withdrawn_held_canary_leaves_no_stale_condition() {
        let (mut s, mut o) = progressing();
        s.canary_weight = Some(0);
        s.step_started_at = None;
        o.analysis_invalid = Some("template golden: not found".into());
        let held_status = decide("c", &analysed(spec()), &s, &o).status;
        assert!(
            held_status
                .conditions
                .iter()
                .any(|c| c.type_ == "AnalysisInvalid" && c.status == "True")
        );
        // The target goes back to the stable digest: the canary is withdrawn, then idle.
        o.target = Some(TargetView {
            replicas: 0,
            artifact: Ok(artifact(OLD)),
            template: None,
        });
        let mut status = held_status;
        for _ in 0..3 {
            status = decide("c", &analysed(spec()), &status, &o).status;
        }
        assert_ne!(
            status.phase,
            Some(RolloutPhase::Paused),
            "{:?}",
            status.message
        );
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == "AnalysisInvalid")
            .expect("condition");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NoCanary")
        );
    }

    #[test]
    fn an_analysis_that_breaks_mid_run_holds_the_step_reached() {
        let (s, mut o) = progressing();
        o.now = 1031;
        o.analysis_invalid = Some("template golden: not found".into());
        let plan = decide("c", &analysed(spec()), &s, &o);
        assert_eq!(plan.status.current_step, Some(0));
        assert_eq!(plan.status.canary_weight, Some(10));
        assert_eq!(plan.status.phase, Some(RolloutPhase::Paused));
        assert!(held(&plan).is_some());
    }

    #[test]
    fn with_analysis_no_verdict_is_never_a_pass() {
        let (s, mut o) = progressing();
        o.now = 1031;
        o.analysis = None;
        let plan = decide("c", &analysed(spec()), &s, &o);
        assert_eq!(plan.status.current_step, Some(0), "no view is not a Pass");
        assert!(
            plan.status
                .message
                .as_deref()
                .unwrap_or("")
                .contains("evidence")
        );
    }

    #[test]
    fn a_rollout_without_analysis_must_say_so() {
        let (s, mut o) = progressing();
        o.now = 1031;
        let mut sp = spec();
        sp.without_analysis = false;
        let plan = decide("c", &sp, &s, &o);
        assert_eq!(plan.status.current_step, Some(0));
        assert!(held(&plan).is_some_and(|c| c.message.contains("withoutAnalysis")));
        sp.without_analysis = true;
        assert_eq!(decide("c", &sp, &s, &o).status.current_step, Some(1));
    }

    #[test]
    fn a_timed_pause_is_left_only_on_a_pass_and_a_fail_rolls_back() {
        let (mut s, mut o) = progressing();
        let mut sp = analysed(spec());
        sp.steps.insert(
            1,
            Step {
                set_weight: None,
                duration: None,
                pause: Some(crate::api::rollout::Pause {
                    duration: Some(Duration::new("10s")),
                }),
                promotion: None,
            },
        );
        s.current_step = Some(1);
        s.step_started_at = Some(format_time(1000));
        o.now = 1011;
        o.analysis = None;
        assert_eq!(decide("c", &sp, &s, &o).status.current_step, Some(1));
        o.analysis = Some(pass());
        assert_eq!(decide("c", &sp, &s, &o).status.current_step, Some(2));
        o.analysis = Some(fail(false));
        assert_eq!(
            decide("c", &sp, &s, &o).status.phase,
            Some(RolloutPhase::RollingBack)
        );
    }

    #[test]
    fn no_fail_leaves_a_step_at_its_end_without_a_pass_once_min_requests_are_served() {
        let (s, mut o) = progressing();
        let mut sp = analysed(spec());
        sp.promotion = Promotion::NoFail;
        o.now = 1031;
        o.analysis = Some(running(false, Some(400)));
        let plan = decide("c", &sp, &s, &o);
        assert_eq!(plan.status.current_step, Some(0), "minRequests not served");
        assert!(
            plan.status
                .message
                .as_deref()
                .is_some_and(|m| m.contains("minRequests (promotion noFail)")),
            "{:?}",
            plan.status.message
        );
        o.analysis = Some(running(true, Some(400)));
        let plan = decide("c", &sp, &s, &o);
        assert_eq!(
            plan.status.current_step,
            Some(1),
            "time up, no Fail, served"
        );
        let left = plan
            .notes
            .iter()
            .find(|n| n.reason == Reason::LeftWithoutPass)
            .expect("a note says the step was left without a Pass");
        assert!(
            left.message.contains("needs about 400 s"),
            "{}",
            left.message
        );
        // Before its time is up, noFail waits like requirePass.
        o.now = 1020;
        assert_eq!(decide("c", &sp, &s, &o).status.current_step, Some(0));
        // A metric that failed once in this run keeps the step, even if it reads Running now.
        o.now = 1031;
        o.analysis = Some(AnalysisView {
            first_fail_at: Some(1010),
            ..running(true, None)
        });
        assert_eq!(decide("c", &sp, &s, &o).status.current_step, Some(0));
    }

    #[test]
    fn a_steps_own_promotion_overrides_the_rollouts() {
        let (s, mut o) = progressing();
        let mut sp = analysed(spec());
        sp.steps[0].promotion = Some(Promotion::NoFail);
        o.now = 1031;
        o.analysis = Some(running(true, Some(400)));
        assert_eq!(decide("c", &sp, &s, &o).status.current_step, Some(1));
        sp.promotion = Promotion::NoFail;
        sp.steps[0].promotion = Some(Promotion::RequirePass);
        let plan = decide("c", &sp, &s, &o);
        assert_eq!(plan.status.current_step, Some(0));
        assert!(
            plan.status
                .message
                .as_deref()
                .is_some_and(|m| m.contains("waiting for the analysis's Pass: needs about 400 s")),
            "{:?}",
            plan.status.message
        );
    }

    #[test]
    fn the_first_forecast_of_a_step_is_an_event_and_a_warning_when_the_step_is_far_too_short() {
        // A 30 s step; at 10 s the analysis needs 400 s more.
        let (s, mut o) = progressing();
        let sp = analysed(spec());
        o.now = 1010;
        o.analysis = Some(running(false, Some(400)));
        let plan = decide("c", &sp, &s, &o);
        let notes: Vec<&Note> = plan
            .notes
            .iter()
            .filter(|n| n.reason == Reason::PassForecast)
            .collect();
        assert_eq!(notes.len(), 1, "{:?}", plan.notes);
        assert!(notes[0].warning);
        assert!(
            notes[0].message.contains("lasts 30s")
                && notes[0].message.contains("needs about 400 s")
                && notes[0].message.contains("noFail"),
            "{}",
            notes[0].message
        );
        assert!(
            plan.status
                .message
                .as_deref()
                .is_some_and(|m| m.contains("10s of 30s; the analysis needs about 400 s")),
            "{:?}",
            plan.status.message
        );
        // Once per step: the next pass finds it in the timeline.
        o.now = 1012;
        let again = decide("c", &sp, &plan.status, &o);
        assert!(again.notes.iter().all(|n| n.reason != Reason::PassForecast));
        // A forecast within the step's time is a plain note, no warning.
        let (s, mut o) = progressing();
        o.now = 1010;
        o.analysis = Some(running(false, Some(15)));
        let plan = decide("c", &sp, &s, &o);
        let note = plan.notes.iter().find(|n| n.reason == Reason::PassForecast);
        assert!(note.is_some_and(|n| !n.warning), "{:?}", plan.notes);
    }

    #[test]
    fn a_step_advances_only_after_its_duration_and_a_pass() {
        let (s, mut o) = progressing();
        let mut sp = spec();
        sp.analysis = Some(crate::api::rollout::RolloutAnalysis {
            templates: vec![],
            args: vec![],
        });
        sp.without_analysis = false;
        o.analysis = Some(pass());
        o.now = 1020;
        assert_eq!(
            decide("c", &sp, &s, &o).status.current_step,
            Some(0),
            "20 s of 30 s"
        );
        o.now = 1031;
        o.analysis = Some(running(true, None));
        assert_eq!(
            decide("c", &sp, &s, &o).status.current_step,
            Some(0),
            "not enough evidence"
        );
        o.analysis = Some(pass());
        let plan = decide("c", &sp, &s, &o);
        assert_eq!(plan.status.current_step, Some(1));
        // People count steps from 1: the second of two.
        assert_eq!(plan.status.step.as_deref(), Some("2/2"));
        assert!(
            plan.status
                .message
                .as_deref()
                .is_none_or(|m| !m.contains("step 0")),
            "{:?}",
            plan.status.message
        );
        assert_eq!(plan.status.step_started_at, None);
    }

    #[test]
    fn a_canary_that_never_gets_ready_is_rolled_back_at_the_deadline() {
        let (mut s, mut o) = progressing();
        s.step_started_at = None;
        s.canary_weight = Some(0);
        o.canary = Some(Workload {
            ready: 0,
            ..workload(&release_name("c", NEW), NEW, 1)
        });
        o.now = 990 + 599;
        assert_eq!(
            decide("c", &spec(), &s, &o).status.phase,
            Some(RolloutPhase::Progressing)
        );
        o.now = 990 + 601;
        let plan = decide("c", &spec(), &s, &o);
        assert_eq!(plan.status.phase, Some(RolloutPhase::RollingBack));
        assert!(
            plan.status
                .rollback
                .is_some_and(|r| r.reason.contains("progress deadline"))
        );
    }

    #[test]
    fn a_target_reverted_to_stable_withdraws_the_canary_without_a_verdict() {
        let (s, mut o) = progressing();
        o.target = Some(TargetView {
            replicas: 0,
            artifact: Ok(artifact(OLD)),
            template: None,
        });
        let plan = decide("c", &spec(), &s, &o);
        assert_eq!(plan.status.phase, Some(RolloutPhase::Stable));
        assert_eq!(
            plan.actions[0],
            Action::SetWeights {
                canary: 0,
                baseline: 0
            }
        );
        assert!(plan.actions.contains(&Action::ReleasePhase {
            release: release_name("c", NEW),
            phase: ReleasePhase::Superseded,
            verdict: None
        }));
        assert!(plan.status.canary.is_none());
    }
}
