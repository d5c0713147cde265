//! A rollback someone asked for (`rollguard rollback`): to a Release they chose, through the
//! Kubernetes rolling update, one recorded step at a time, with a log any later watcher reads
//! from the start. A decision, not a verdict: the Release it replaces becomes Superseded, not
//! Unstable, unless the request says otherwise.

use super::plan::{Action, Reason, Request};
use super::planner::Planner;
use super::workload::short_digest;
use crate::api::release::{HistoryEntry, ReleasePhase, ReleaseVerdict};
use crate::api::rollout::{ManualRollback, ReleaseRef, RevertStep, RolloutPhase};
use crate::time::{format_time, parse_at, secs};

/// Unix seconds from a request id `<action>-<nanoseconds in hex>`, as the CLI makes them.
fn request_time(id: &str) -> Option<i64> {
    let (_, hex) = id.rsplit_once('-')?;
    let nanos = u128::from_str_radix(hex.get(..hex.len().min(32))?, 16).ok()?;
    i64::try_from(nanos / 1_000_000_000).ok()
}

impl Planner<'_> {
    /// A `rollback` request: checks the chosen Release and starts, or records why not.
    pub(super) fn begin_revert(&mut self, req: &Request) {
        let now = self.now();
        // The request's own time, when its id carries a recent one: a pass replayed after a
        // crash writes the same history entries, which are then appended once.
        let at = format_time(
            request_time(&req.id)
                .filter(|t| (now - 600..=now).contains(t))
                .unwrap_or(now),
        );
        let mut mr = ManualRollback {
            request: req.id.clone(),
            by: req.by.clone(),
            reason: req.reason.as_deref().map(crate::api::common::bounded),
            unstable: req.unstable.as_deref().map(crate::api::common::bounded),
            started_at: at.clone(),
            ..ManualRollback::default()
        };
        let to = match self.revert_target(req) {
            Ok(to) => to,
            Err(why) => {
                mr.step = RevertStep::Refused;
                mr.finished_at = Some(at.clone());
                mr.log(at, format!("rollback refused: {why}"));
                self.outcome(req, false, &format!("rollback refused: {why}"));
                self.status.manual_rollback = Some(mr);
                self.note(
                    true,
                    Reason::ManualRollbackRefused,
                    format!("rollback by {} refused: {why}", req.by),
                );
                return;
            }
        };
        let from = self
            .status
            .stable
            .clone()
            .filter(|s| s.release != to.release);
        let withdrawn = matches!(
            self.phase(),
            RolloutPhase::Progressing | RolloutPhase::Paused | RolloutPhase::Promoting
        )
        .then(|| self.status.canary.clone())
        .flatten();
        let moved_from = withdrawn.as_ref().or(from.as_ref());
        mr.log(
            at.clone(),
            format!(
                "rollback {} {} → {} requested by {}{}",
                self.name,
                moved_from.map_or("-".to_owned(), |r| r.release.clone()),
                to.release,
                req.by,
                req.reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        );
        mr.log(
            at.clone(),
            format!(
                "image @{}, from the Release's snapshot: no build needed",
                to.digest
            ),
        );
        for w in req.warnings.iter().take(super::plan::MAX_WARNINGS) {
            mr.log(at.clone(), format!("warning: {w}"));
            self.note(
                true,
                Reason::ManualRollbackWarning,
                format!(
                    "rollback to {}: {}",
                    to.release,
                    crate::api::common::bounded(w)
                ),
            );
        }
        if let Some(w) = &withdrawn {
            mr.log(
                at.clone(),
                format!(
                    "canary {} is running at {}%: it is withdrawn first",
                    w.release,
                    self.status.canary_weight.unwrap_or(0)
                ),
            );
        }
        for (release, action) in [
            (Some(&to), "rollback-to"),
            (from.as_ref(), "rollback-from"),
            (withdrawn.as_ref(), "rollback-from"),
        ] {
            if let Some(r) = release {
                self.act(Action::ReleaseHistory {
                    release: r.release.clone(),
                    entry: HistoryEntry {
                        action: action.into(),
                        by: req.by.clone(),
                        at: at.clone(),
                        reason: req.reason.clone(),
                    },
                });
            }
        }
        self.note(
            false,
            Reason::ManualRollbackStarted,
            format!(
                "rollback to {} ({}) requested by {}",
                to.release, to.short_digest, req.by
            ),
        );
        self.outcome(req, true, &format!("rollback to {} started", to.release));
        mr.from = from;
        mr.withdrawn = withdrawn;
        mr.to = Some(to.clone());
        self.status.manual_rollback = Some(mr);
        self.status.paused_by = None;
        self.set_phase(
            RolloutPhase::Reverting,
            format!("rolling back by hand to {}", to.release),
        );
        self.requeue = 0;
    }

    /// The Release a request may roll back to: one that served before (Stable or Superseded),
    /// or an Unstable one whose verdict a human lifted, and not while another rollback runs.
    fn revert_target(&self, req: &Request) -> Result<ReleaseRef, String> {
        match self.phase() {
            RolloutPhase::RollingBack => {
                return Err("an automatic rollback is running; wait for it to finish".into());
            }
            RolloutPhase::Reverting => {
                return Err("another rollback is running; wait for it to finish".into());
            }
            RolloutPhase::Initializing => {
                return Err("the Rollout has no stable release yet".into());
            }
            _ => {}
        }
        let name = req
            .to
            .as_deref()
            .ok_or("the request names no Release to roll back to")?;
        let r = self
            .release(name)
            .ok_or_else(|| format!("there is no Release {name} of this Rollout"))?;
        let serving = self
            .status
            .stable
            .as_ref()
            .is_some_and(|s| s.release == name);
        let canary = self.status.canary.is_some()
            && matches!(
                self.phase(),
                RolloutPhase::Progressing | RolloutPhase::Paused | RolloutPhase::Promoting
            );
        if serving && !canary {
            return Err(format!("{name} is already the release serving"));
        }
        match r.phase {
            Some(ReleasePhase::Stable | ReleasePhase::Superseded) => {}
            Some(ReleasePhase::Unstable) if r.overridden => {}
            Some(ReleasePhase::Unstable) => {
                return Err(format!(
                    "{name} is Unstable ({}); give --override-reason to roll back to it anyway",
                    r.verdict
                        .as_deref()
                        .unwrap_or("judged worse than its baseline")
                ));
            }
            other => {
                return Err(format!(
                    "{name} never served ({}); only a release that was stable can be rolled back to",
                    other.map_or("no phase".to_owned(), |p| format!("{p:?}"))
                ));
            }
        }
        if r.digest.is_empty() {
            return Err(format!("{name}'s pod-template snapshot has no image"));
        }
        Ok(ReleaseRef {
            release: name.to_owned(),
            digest: r.digest.clone(),
            short_digest: short_digest(&r.digest),
        })
    }

    /// One pass of a manual rollback: its current step, recorded done when it is.
    pub(super) fn revert(&mut self) {
        self.requeue = 1;
        let Some(mut mr) = self.status.manual_rollback.clone() else {
            self.set_phase(RolloutPhase::Stable, "no rollback recorded");
            return;
        };
        let Some(to) = mr.to.clone() else {
            self.set_phase(RolloutPhase::Stable, "the rollback names no Release");
            return;
        };
        let now = self.now();
        let at = format_time(now);
        let s = self.stable_replicas();
        match mr.step {
            RevertStep::Withdraw => {
                self.act(Action::SetWeights {
                    canary: 0,
                    baseline: 0,
                });
                self.status.canary_weight = Some(0);
                self.stop_arms();
                if let Some(w) = &mr.withdrawn {
                    mr.log(
                        at.clone(),
                        format!("canary {} withdrawn: weight 0, verified", w.release),
                    );
                    self.act(Action::ResetAnalysis);
                }
                self.status.canary = None;
                self.status.current_step = None;
                self.status.step_started_at = None;
                mr.step = RevertStep::Restore;
                self.requeue = 0;
            }
            RevertStep::Restore => {
                self.act(Action::ApplyArm {
                    arm: super::workload::Arm::Stable,
                    release: to.release.clone(),
                    replicas: s,
                });
                mr.log(
                    at.clone(),
                    format!(
                        "rolling update of {}-stable to {}: 0/{s} replicas (maxUnavailable 0)",
                        self.name, to.release
                    ),
                );
                mr.step = RevertStep::Ready;
            }
            RevertStep::Ready => {
                let w = self.obs.stable.clone().unwrap_or_default();
                if w.release.as_deref() != Some(&to.release) {
                    // Someone (or an older controller) changed it back: apply again.
                    self.act(Action::ApplyArm {
                        arm: super::workload::Arm::Stable,
                        release: to.release.clone(),
                        replicas: s,
                    });
                } else if w.rolled_out && w.ready >= s {
                    mr.log(
                        at.clone(),
                        format!("all {s} replicas of {} ready", to.release),
                    );
                    mr.ready_logged = s;
                    mr.step = RevertStep::Record;
                    self.requeue = 0;
                } else if w.updated_ready != mr.ready_logged && !w.rolled_out {
                    mr.log(
                        at.clone(),
                        format!(
                            "rolling update {}/{s} replicas of {} ready",
                            w.updated_ready.min(s),
                            to.release
                        ),
                    );
                    mr.ready_logged = w.updated_ready;
                }
                let deadline = secs(&self.spec.progress_deadline, 600);
                let started = parse_at(Some(&mr.started_at)).unwrap_or(now);
                if mr.step == RevertStep::Ready && now - started > deadline {
                    let why = format!(
                        "the rolling update did not finish within the progress deadline \
                         ({deadline} s): {}/{s} replicas of {} ready; traffic stays on stable",
                        w.ready, to.release
                    );
                    mr.log(at.clone(), format!("rollback failed: {why}"));
                    mr.step = RevertStep::Failed;
                    mr.finished_at = Some(at.clone());
                    self.note(true, Reason::ManualRollbackRefused, why.clone());
                    self.set_phase(RolloutPhase::RolledBack, format!("rollback failed: {why}"));
                }
            }
            RevertStep::Record => self.record_revert(&mut mr, &to),
            RevertStep::Done | RevertStep::Refused | RevertStep::Failed => {
                self.set_phase(RolloutPhase::RolledBack, "rolled back by hand");
            }
        }
        self.status.manual_rollback = Some(mr);
    }

    /// The last step: all traffic on the restored stable, and the Releases say what happened.
    fn record_revert(&mut self, mr: &mut ManualRollback, to: &ReleaseRef) {
        let now = self.now();
        let at = format_time(now);
        self.act(Action::SetWeights {
            canary: 0,
            baseline: 0,
        });
        if self
            .release(&to.release)
            .is_some_and(|r| r.phase != Some(ReleasePhase::Stable))
        {
            self.act(Action::ReleasePhase {
                release: to.release.clone(),
                phase: ReleasePhase::Stable,
                verdict: None,
            });
        }
        let verdict = mr.unstable.as_ref().map(|why| ReleaseVerdict {
            reason: format!("marked Unstable by {} on rolling back: {why}", mr.by),
            metric: None,
            at: at.clone(),
            evidence: Vec::new(),
        });
        // `--unstable` is a verdict on the release that was serving; a withdrawn canary was
        // never judged.
        for (r, mark) in [(&mr.from, true), (&mr.withdrawn, false)] {
            let Some(r) = r.as_ref().filter(|r| r.release != to.release) else {
                continue;
            };
            let phase = match (&verdict, mark) {
                (Some(_), true) => ReleasePhase::Unstable,
                _ => ReleasePhase::Superseded,
            };
            self.act(Action::ReleasePhase {
                release: r.release.clone(),
                phase,
                verdict: verdict.clone().filter(|_| phase == ReleasePhase::Unstable),
            });
        }
        self.status.previous_stable = mr.from.clone();
        self.status.stable = Some(to.clone());
        self.status.verify_until = None;
        let took = now - parse_at(Some(&mr.started_at)).unwrap_or(now);
        mr.log(
            at.clone(),
            format!(
                "rollback complete in {took} s; all traffic on {}",
                to.release
            ),
        );
        mr.step = RevertStep::Done;
        mr.finished_at = Some(at);
        self.note(
            false,
            Reason::ManualRollbackDone,
            format!(
                "rolled back by hand to {} ({}) in {took} s, requested by {}",
                to.release, to.short_digest, mr.by
            ),
        );
        self.set_phase(
            RolloutPhase::RolledBack,
            format!("rolled back by hand to {} by {}", to.release, mr.by),
        );
        self.requeue = 0;
    }

    /// After a rollback by hand, a target that still declares a Release it moved away from
    /// does not start a canary of it again: the message says how to move on.
    pub(super) fn held_by_revert(&mut self, release: &str) -> bool {
        let Some(mr) = self
            .status
            .manual_rollback
            .as_ref()
            .filter(|m| m.step == RevertStep::Done)
        else {
            return false;
        };
        let moved_from = [&mr.from, &mr.withdrawn]
            .into_iter()
            .flatten()
            .any(|r| r.release == release);
        if !moved_from {
            return false;
        }
        let to = mr.to.as_ref().map_or("-", |r| r.release.as_str());
        let message = format!(
            "rolled back by hand to {to} by {}; the target still declares {release}, which is \
             not deployed again: deploy another version, or `rollguard rollback --to {release}`",
            mr.by
        );
        self.set_phase(RolloutPhase::RolledBack, message);
        true
    }
}

#[cfg(test)]
mod tests {
    use crate::rollout::fixtures::*;

    const OLDER: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn request(to: &str, unstable: Option<&str>) -> Request {
        Request {
            id: "rollback-1".into(),
            action: RequestAction::Rollback,
            by: "alice@example.com".into(),
            reason: Some("checkout errors".into()),
            to: Some(release_name("c", to)),
            unstable: unstable.map(str::to_owned),
            warnings: vec!["ConfigMap c-config changed since c-0000000000 was released".into()],
        }
    }

    /// Stable on OLD, target on OLD; OLDER is Superseded.
    fn obs(now: i64, req: Option<Request>) -> Observed {
        let mut o = observed(OLD, now);
        o.releases.push(release(OLDER, ReleasePhase::Superseded));
        o.request = req.map(Ok);
        o
    }

    fn run(status: &RolloutStatus, o: &Observed) -> Plan {
        decide("c", &spec(), status, o)
    }

    fn log(p: &Plan) -> Vec<String> {
        p.status
            .manual_rollback
            .as_ref()
            .map(|m| m.log.iter().map(|l| l.text.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_rollback_by_hand_goes_step_by_step_and_supersedes_rather_than_condemns() {
        let p = run(&stable_status(), &obs(1000, Some(request(OLDER, None))));
        assert_eq!(p.status.phase, Some(RolloutPhase::Reverting));
        // Started and, in the same pass, the withdrawal (weights 0; nothing was running).
        let mr = p.status.manual_rollback.clone().expect("recorded");
        assert_eq!(mr.step, RevertStep::Restore);
        assert!(p.actions.contains(&Action::SetWeights {
            canary: 0,
            baseline: 0
        }));
        assert_eq!(mr.by, "alice@example.com");
        assert_eq!(mr.from.as_ref().map(|r| r.digest.as_str()), Some(OLD));
        assert!(log(&p)[0].contains("requested by alice@example.com: checkout errors"));
        assert!(
            log(&p).iter().any(|l| l == "warning: ConfigMap c-config changed since c-0000000000 was released"),
            "{:?}",
            log(&p)
        );
        assert!(
            p.notes
                .iter()
                .any(|n| n.warning && n.reason == Reason::ManualRollbackWarning)
        );
        assert!(
            p.actions
                .iter()
                .any(|a| matches!(a, Action::ReleaseHistory { release, entry }
                if *release == release_name("c", OLDER) && entry.action == "rollback-to")),
            "{:?}",
            p.actions
        );
        let p = run(&p.status, &obs(1001, None));
        assert!(p.actions.contains(&Action::ApplyArm {
            arm: Arm::Stable,
            release: release_name("c", OLDER),
            replicas: 4,
        }));
        assert_eq!(
            p.status.manual_rollback.as_ref().map(|m| m.step),
            Some(RevertStep::Ready)
        );

        // Two of four ready, then all four.
        let mut o = obs(1005, None);
        o.stable = Some(Workload {
            ready: 4,
            updated_ready: 2,
            rolled_out: false,
            ..workload(&release_name("c", OLDER), OLDER, 4)
        });
        let p = run(&p.status, &o);
        assert_eq!(p.status.phase, Some(RolloutPhase::Reverting));
        assert!(
            log(&p)
                .last()
                .is_some_and(|l| l.contains("2/4 replicas of"))
        );
        let mut o = obs(1020, None);
        o.stable = Some(workload(&release_name("c", OLDER), OLDER, 4));
        let p = run(&p.status, &o);
        let p = run(&p.status, &o);
        assert_eq!(p.status.phase, Some(RolloutPhase::RolledBack));
        assert_eq!(
            p.status.stable.as_ref().map(|r| r.digest.as_str()),
            Some(OLDER)
        );
        assert_eq!(
            p.status.previous_stable.as_ref().map(|r| r.digest.as_str()),
            Some(OLD)
        );
        assert!(p.actions.contains(&Action::ReleasePhase {
            release: release_name("c", OLD),
            phase: ReleasePhase::Superseded,
            verdict: None,
        }));
        assert!(p.actions.contains(&Action::ReleasePhase {
            release: release_name("c", OLDER),
            phase: ReleasePhase::Stable,
            verdict: None,
        }));
        assert!(
            log(&p)
                .last()
                .is_some_and(|l| l.contains("rollback complete in 20 s")),
            "{:?}",
            log(&p)
        );

        // The target still declares OLD: no canary of it starts again.
        let mut o = obs(1030, None);
        o.stable = Some(workload(&release_name("c", OLDER), OLDER, 4));
        let p = run(&p.status, &o);
        assert_eq!(p.status.phase, Some(RolloutPhase::RolledBack));
        assert!(
            p.status
                .message
                .as_deref()
                .is_some_and(|m| m.contains("not deployed again")),
            "{:?}",
            p.status.message
        );
        assert!(
            !p.actions.iter().any(|a| matches!(
                a,
                Action::ApplyArm {
                    arm: Arm::Canary,
                    ..
                }
            )),
            "{:?}",
            p.actions
        );
    }

    #[test]
    fn a_replayed_request_writes_the_same_history_entry() {
        // rollback-<ns in hex> at 1,000 s and 0.5 s.
        let id = format!("rollback-{:x}", 1_000_500_000_000u128);
        assert_eq!(super::request_time(&id), Some(1000));
        let entries = |now: i64| {
            let req = Request {
                id: id.clone(),
                ..request(OLDER, None)
            };
            run(&stable_status(), &obs(now, Some(req)))
                .actions
                .into_iter()
                .filter(|a| matches!(a, Action::ReleaseHistory { .. }))
                .collect::<Vec<_>>()
        };
        assert_eq!(entries(1003), entries(1010));
        assert!(super::request_time("rollback-zz").is_none());
    }

    #[test]
    fn unstable_if_asked_with_the_reason() {
        let mut status = stable_status();
        let mut o = obs(1000, Some(request(OLDER, Some("corrupts carts"))));
        for _ in 0..5 {
            let p = run(&status, &o);
            status = p.status;
            o = obs(1000, None);
            o.stable = Some(workload(&release_name("c", OLDER), OLDER, 4));
            if status.phase == Some(RolloutPhase::RolledBack) {
                assert!(p.actions.iter().any(|a| matches!(a, Action::ReleasePhase {
                    release, phase: ReleasePhase::Unstable, verdict: Some(v) }
                    if *release == release_name("c", OLD) && v.reason.contains("corrupts carts"))));
                return;
            }
        }
        panic!("not done: {status:?}");
    }

    #[test]
    fn refusals_say_why_and_change_nothing() {
        let cases = [
            (request(OLD, None), "already the release serving"),
            (
                Request {
                    to: Some("c-nosuchrel".into()),
                    ..request(OLD, None)
                },
                "no Release c-nosuchrel",
            ),
        ];
        for (req, why) in cases {
            let p = run(&stable_status(), &obs(1000, Some(req)));
            assert_eq!(p.status.phase, Some(RolloutPhase::Stable));
            let mr = p.status.manual_rollback.expect("recorded");
            assert_eq!(mr.step, RevertStep::Refused);
            assert!(mr.log[0].text.contains(why), "{:?}", mr.log);
            assert!(
                p.actions
                    .iter()
                    .all(|a| !matches!(a, Action::ApplyArm { .. }))
            );
        }
        // An Unstable target needs an override first.
        let mut o = obs(1000, Some(request(OLDER, None)));
        o.releases[1].phase = Some(ReleasePhase::Unstable);
        let p = run(&stable_status(), &o);
        let mr = p.status.manual_rollback.expect("recorded");
        assert!(mr.log[0].text.contains("--override-reason"), "{:?}", mr.log);
        o.releases[1].overridden = true;
        let p = run(&stable_status(), &o);
        assert_eq!(p.status.phase, Some(RolloutPhase::Reverting));
    }

    #[test]
    fn a_running_canary_is_withdrawn_first() {
        let mut status = stable_status();
        status.phase = Some(RolloutPhase::Progressing);
        status.canary = Some(ReleaseRef {
            release: release_name("c", NEW),
            digest: NEW.into(),
            short_digest: short_digest(NEW),
        });
        status.canary_weight = Some(10);
        let mut o = obs(1000, Some(request(OLDER, None)));
        o.releases.push(release(NEW, ReleasePhase::Progressing));
        o.canary = Some(workload(&release_name("c", NEW), NEW, 1));
        let p = run(&status, &o);
        assert_eq!(p.status.phase, Some(RolloutPhase::Reverting));
        assert!(log(&p).iter().any(|l| l.contains("withdrawn first")));
        assert!(p.actions.contains(&Action::SetWeights {
            canary: 0,
            baseline: 0
        }));
        assert!(p.actions.contains(&Action::ScaleArm {
            arm: Arm::Canary,
            replicas: 0
        }));
        assert_eq!(p.status.canary, None);
        assert!(
            log(&p)
                .last()
                .is_some_and(|l| l.contains("weight 0, verified"))
        );
    }
}
