//! Initializing, Stable, Blocked and RolledBack: keep the stable serving, start a canary when
//! the target declares a new digest that may run, and say why when it may not.

use super::incidents::{enqueue, headline, qualified};
use super::plan::{Action, Reason};
use super::planner::{Planner, set_condition};
use super::workload::{Arm, release_name, short_digest};
use crate::api::release::ReleasePhase;
use crate::api::rollout::{
    DeliveryState, IncidentKind, OutboxAction, OutboxEntry, ReleaseRef, RolloutPhase, Severity,
};
use crate::time::{format_time, parse_at};

impl Planner<'_> {
    pub(super) fn initialize(&mut self) {
        self.requeue = 30;
        let Some(artifact) = self.target_artifact() else {
            return;
        };
        let r = self.release_ref(&artifact.digest);
        if self.release(&r.release).is_none() {
            self.act(Action::CreateRelease {
                name: r.release.clone(),
                phase: ReleasePhase::Candidate,
            });
        }
        self.act(Action::EnsureServices);
        let s = self.stable_replicas();
        self.act(Action::ApplyArm {
            arm: Arm::Stable,
            release: r.release.clone(),
            replicas: s,
        });
        self.requeue = 1;
        let ready = self
            .obs
            .stable
            .as_ref()
            .is_some_and(|w| w.rolled_out && w.digest.as_deref() == Some(&artifact.digest));
        if !ready {
            self.status.message = Some(format!("starting {} on {}", r.release, r.short_digest));
            return;
        }
        self.act(Action::SetWeights {
            canary: 0,
            baseline: 0,
        });
        self.move_release(
            &r.release,
            &[ReleasePhase::Progressing, ReleasePhase::Stable],
        );
        self.status.canary_weight = Some(0);
        self.note(
            false,
            Reason::Initialized,
            format!(
                "{} ({}) is stable with {s} replicas",
                r.release, r.short_digest
            ),
        );
        self.status.stable = Some(r);
        self.set_phase(RolloutPhase::Stable, "stable");
        self.requeue = 0;
    }

    /// Stable, Blocked or RolledBack: keep the stable serving, and start a canary when the
    /// target declares a new digest that is not Unstable.
    pub(super) fn idle(&mut self) {
        self.requeue = 30;
        // A held canary that was withdrawn or rolled back leaves nothing to judge.
        if self
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "AnalysisInvalid" && c.status == "True")
        {
            let now = self.now();
            set_condition(
                &mut self.status,
                "AnalysisInvalid",
                false,
                "NoCanary",
                "no canary is running",
                now,
            );
        }
        let Some(stable) = self.status.stable.clone() else {
            self.set_phase(RolloutPhase::Initializing, "no stable Release recorded");
            self.requeue = 0;
            return;
        };
        let s = self.stable_replicas();
        let serving = self
            .obs
            .stable
            .as_ref()
            .is_some_and(|w| w.replicas == s && w.release.as_deref() == Some(&stable.release));
        if !serving {
            self.act(Action::ApplyArm {
                arm: Arm::Stable,
                release: stable.release.clone(),
                replicas: s,
            });
        }
        if let Some(until) = parse_at(self.status.verify_until.as_deref()) {
            if self.now() >= until {
                self.status.verify_until = None;
                self.act(Action::ResetAnalysis);
                self.note(
                    false,
                    Reason::VerificationPassed,
                    format!("{} held through the post-promotion window", stable.release),
                );
            } else {
                if self.verify_failed() {
                    return;
                }
                // Measured as often as during the canary while the window lasts.
                self.requeue = if self.spec.analysis.is_some() {
                    1
                } else {
                    (until - self.now()).clamp(1, 30) as u64
                };
            }
        }
        let Some(artifact) = self.target_artifact() else {
            return;
        };
        if artifact.digest == stable.digest {
            if self.phase() != RolloutPhase::Stable {
                self.set_phase(
                    RolloutPhase::Stable,
                    "the target declares the stable digest",
                );
                self.timeline(
                    Reason::Stable,
                    "the target declares the stable digest again",
                );
            }
            self.check_template(&stable);
            return;
        }
        let name = release_name(self.name, &artifact.digest);
        if self.held_by_revert(&name) {
            return;
        }
        if let Some(r) = self.release(&name)
            && r.phase == Some(ReleasePhase::Unstable)
            && !r.overridden
        {
            let why = r
                .verdict
                .clone()
                .unwrap_or_else(|| "judged worse than stable".into());
            let message = format!(
                "the target declares {} (Release {name}), which is Unstable: {why}. No canary \
                 starts; lift it with `rollguard override {name} --reason …` or deploy another digest",
                short_digest(&artifact.digest)
            );
            let rolled_back_this = self
                .status
                .rollback
                .as_ref()
                .is_some_and(|rb| rb.release == name);
            let phase = if self.phase() == RolloutPhase::RolledBack && rolled_back_this {
                RolloutPhase::RolledBack
            } else {
                RolloutPhase::Blocked
            };
            if self.phase() != phase {
                self.note(true, Reason::Blocked, message.clone());
            }
            if phase == RolloutPhase::Blocked {
                self.notify_blocked(&name, &artifact.digest, &why);
            }
            self.set_phase(phase, message);
            return;
        }
        self.start_canary(&artifact);
    }

    /// A Blocked Rollout notifies once per Unstable Release it is blocked on, not on every
    /// reconcile.
    pub(super) fn notify_blocked(&mut self, release: &str, digest: &str, why: &str) {
        if self.spec.escalation.is_none() {
            return;
        }
        let now = self.now();
        let entry = OutboxEntry {
            dedup_key: format!("{}:blocked", self.key(release)),
            action: OutboxAction::Trigger,
            severity: Severity::Warning,
            title: format!(
                "{} is blocked: the target declares {} ({release}), which is Unstable: {}",
                qualified(&self.obs.namespace, self.name),
                short_digest(digest),
                headline(why)
            ),
            release: release.to_owned(),
            from_digest: self.status.stable.as_ref().map(|s| s.digest.clone()),
            to_digest: digest.to_owned(),
            created_at: format_time(now),
            kind: IncidentKind::Blocked,
            state: DeliveryState::Pending,
            deliveries: Vec::new(),
        };
        enqueue(&mut self.status, self.spec, entry, now);
    }

    /// Releases are made per image digest. A target whose pod template changed while its
    /// digest did not (an environment variable, a resource limit, `kubectl rollout restart`)
    /// is not a new Release, and the stable Deployment keeps the Release's template: say so,
    /// once, rather than let the change look applied.
    pub(super) fn check_template(&mut self, stable: &ReleaseRef) {
        let target = self.obs.target.as_ref().and_then(|t| t.template.clone());
        let release = self
            .release(&stable.release)
            .and_then(|r| r.template.clone());
        let (Some(target), Some(release)) = (target, release) else {
            return;
        };
        let now = self.now();
        let flagged = self
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "TemplateInSync" && c.status == "False");
        if target != release {
            let message = format!(
                "the target's pod template changed but its image digest is still {} (Release \
                 {}); rollguard releases by digest, so the change is not running. Ship it with a \
                 new image digest, or revert it on the target",
                stable.short_digest, stable.release
            );
            if !flagged {
                self.note(true, Reason::TemplateNotRolledOut, message.clone());
            }
            set_condition(
                &mut self.status,
                "TemplateInSync",
                false,
                "SameDigest",
                &message,
                now,
            );
        } else if flagged {
            set_condition(
                &mut self.status,
                "TemplateInSync",
                true,
                "InSync",
                "the target's pod template is the stable Release's",
                now,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::rollout::fixtures::*;

    #[test]
    fn a_template_change_under_the_stable_digest_is_reported_once_and_cleared() {
        let mut o = observed(OLD, 2000);
        o.releases[0].template = Some("t1".into());
        o.target.as_mut().expect("target").template = Some("t1".into());
        let same = decide("c", &spec(), &stable_status(), &o);
        assert!(
            same.status
                .conditions
                .iter()
                .all(|c| c.type_ != "TemplateInSync")
        );
        assert!(same.notes.is_empty());

        o.target.as_mut().expect("target").template = Some("t2".into());
        let changed = decide("c", &spec(), &stable_status(), &o);
        let c = changed
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "TemplateInSync")
            .expect("condition");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "SameDigest")
        );
        assert!(c.message.contains("not running"), "{}", c.message);
        assert_eq!(changed.notes.len(), 1);
        assert!(changed.notes[0].warning);
        assert!(
            changed
                .actions
                .iter()
                .all(|a| !matches!(a, Action::CreateRelease { .. })),
            "no Release for a template without a new digest"
        );
        let again = decide("c", &spec(), &changed.status, &o);
        assert!(again.notes.is_empty(), "said once");

        o.target.as_mut().expect("target").template = Some("t1".into());
        let reverted = decide("c", &spec(), &again.status, &o);
        let c = reverted
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "TemplateInSync")
            .expect("condition");
        assert_eq!(c.status, "True");
    }

    #[test]
    fn the_first_digest_becomes_stable_once_its_deployment_is_ready() {
        let mut o = observed(OLD, 100);
        o.stable = None;
        o.releases.clear();
        o.target = Some(TargetView {
            replicas: 4,
            artifact: Ok(artifact(OLD)),
            template: None,
        });
        let plan = decide("c", &spec(), &RolloutStatus::default(), &o);
        let r = release_name("c", OLD);
        assert_eq!(
            plan.actions,
            vec![
                Action::CreateRelease {
                    name: r.clone(),
                    phase: ReleasePhase::Candidate
                },
                Action::EnsureServices,
                Action::ApplyArm {
                    arm: Arm::Stable,
                    release: r.clone(),
                    replicas: 4
                },
            ]
        );
        assert_eq!(plan.status.phase, None, "still initializing");
        assert_eq!(
            plan.status.replicas,
            Some(4),
            "the target's size is remembered"
        );
        // Ready: the target is scaled down, weights verified, Release moved to Stable.
        o.stable = Some(workload(&r, OLD, 4));
        o.releases = vec![release(OLD, ReleasePhase::Candidate)];
        let plan = decide("c", &spec(), &plan.status, &o);
        assert_eq!(plan.actions[0], Action::ScaleTarget);
        assert!(plan.actions.contains(&Action::SetWeights {
            canary: 0,
            baseline: 0
        }));
        assert!(plan.actions.contains(&Action::ReleasePhase {
            release: r.clone(),
            phase: ReleasePhase::Stable,
            verdict: None
        }));
        assert_eq!(plan.status.phase, Some(RolloutPhase::Stable));
        assert_eq!(plan.status.stable.map(|s| s.digest), Some(OLD.into()));
    }

    #[test]
    fn tag_only_images_are_refused_with_a_condition() {
        let mut o = observed(OLD, 100);
        o.target = Some(TargetView {
            replicas: 4,
            artifact: Err("container \"c\" image \"img:1\" is not pinned by digest".into()),
            template: None,
        });
        let plan = decide("c", &spec(), &stable_status(), &o);
        assert!(!plan.actions.iter().any(|a| matches!(
            a,
            Action::ApplyArm {
                arm: Arm::Canary,
                ..
            }
        )));
        let c = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("condition");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "DigestRequired")
        );
        assert_eq!(plan.status.phase, Some(RolloutPhase::Stable));
    }

    #[test]
    fn a_target_named_like_an_arm_is_never_scaled_and_says_why() {
        let mut sp = spec();
        sp.target_ref.name = "c-stable".into();
        let mut o = observed(NEW, 1000);
        o.target.as_mut().expect("target").replicas = 1;
        let plan = decide("c", &sp, &stable_status(), &o);
        assert!(
            !plan.actions.contains(&Action::ScaleTarget),
            "{:?}",
            plan.actions
        );
        assert!(plan.actions.is_empty(), "{:?}", plan.actions);
        let ready = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(ready.reason, "TargetNameTaken");
        assert!(
            ready.message.contains("stable Deployment"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn an_unstable_digest_is_blocked_until_overridden() {
        let mut o = observed(NEW, 2000);
        o.releases.push(ReleaseView {
            verdict: Some("error-rate failed".into()),
            template: None,
            ..release(NEW, ReleasePhase::Unstable)
        });
        let plan = decide("c", &spec(), &stable_status(), &o);
        assert_eq!(plan.status.phase, Some(RolloutPhase::Blocked));
        assert!(
            plan.status.message.as_deref().is_some_and(
                |m| m.contains("error-rate failed") && m.contains("rollguard override")
            )
        );
        assert!(!plan.actions.iter().any(|a| matches!(
            a,
            Action::ApplyArm {
                arm: Arm::Canary,
                ..
            }
        )));
        // Overridden: Unstable → Candidate → Progressing, and a canary starts.
        o.releases[1].overridden = true;
        let plan = decide("c", &spec(), &plan.status, &o);
        assert_eq!(plan.status.phase, Some(RolloutPhase::Progressing));
        let r = release_name("c", NEW);
        assert_eq!(
            &plan.actions[..2],
            &[
                Action::ReleasePhase {
                    release: r.clone(),
                    phase: ReleasePhase::Candidate,
                    verdict: None
                },
                Action::ReleasePhase {
                    release: r,
                    phase: ReleasePhase::Progressing,
                    verdict: None
                },
            ]
        );
    }

    #[test]
    fn a_blocked_rollout_notifies_once_and_resolves_when_unblocked() {
        let mut o = observed(NEW, 2000);
        o.releases.push(ReleaseView {
            verdict: Some("error-rate: canary 8% vs baseline 0.5%".into()),
            template: None,
            ..release(NEW, ReleasePhase::Unstable)
        });
        let mut status = stable_status();
        for t in 0..5 {
            o.now = 2000 + t;
            status = decide("c", &spec(), &status, &o).status;
        }
        assert_eq!(status.phase, Some(RolloutPhase::Blocked));
        let blocked: Vec<&OutboxEntry> = status
            .outbox
            .iter()
            .filter(|e| e.kind == IncidentKind::Blocked)
            .collect();
        assert_eq!(blocked.len(), 1, "once, not on every reconcile");
        assert_eq!(blocked[0].severity, Severity::Warning);
        // Back to the stable digest: no longer blocked, and the notice is resolved.
        o.target = Some(TargetView {
            replicas: 0,
            artifact: Ok(artifact(OLD)),
            template: None,
        });
        status = decide("c", &spec(), &status, &o).status;
        assert_eq!(status.phase, Some(RolloutPhase::Stable));
        let resolves = status
            .outbox
            .iter()
            .filter(|e| e.kind == IncidentKind::Blocked && e.action == OutboxAction::Resolve)
            .count();
        assert_eq!(resolves, 1);
    }
}
