//! A rollback someone asked for (`rollguard rollback`): to a Release they chose, through the
//! Kubernetes rolling update, one recorded step at a time, with a log any later watcher reads
//! from the start. A decision, not a verdict: the Release it replaces becomes Superseded, not
//! Unstable, unless the request says otherwise.
//!
//! A redeploy (`rollguard redeploy`) goes the same way to a Release of its own: the chosen
//! Release's images on the serving Release's pod template.

use super::plan::{Action, Reason, Request, RequestAction};
use super::planner::Planner;
use super::workload::short_digest;
use crate::api::release::{HistoryEntry, Redeploy, ReleasePhase, ReleaseVerdict};
use crate::api::rollout::{ManualRollback, ReleaseRef, RevertStep, RolloutPhase};
use crate::time::{format_time, parse_at, secs};

/// The most pods a rollback's log names; beyond them it counts.
const MAX_POD_LINES: usize = 24;

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
        let word = req.action.to_string();
        let target = self.revert_target(req).and_then(|to| {
            if req.action != RequestAction::Redeploy {
                return Ok((to, None));
            }
            let config_of = self
                .status
                .stable
                .clone()
                .ok_or("the Rollout has no stable release to take the configuration from")?;
            if config_of.release == to.release {
                return Err(format!(
                    "{} is the release serving; redeploying its images on its own configuration changes nothing",
                    to.release
                ));
            }
            let redeploy = Redeploy {
                images_of: to.release.clone(),
                config_of: config_of.release,
            };
            let name = crate::redeploy::release_name(&redeploy.images_of, &redeploy.config_of);
            if name.len() > crate::redeploy::MAX_NAME {
                return Err(format!(
                    "{name} would be longer than a Release name may be ({} characters); redeploy \
                     the images of the release first made of them instead",
                    crate::redeploy::MAX_NAME
                ));
            }
            if let Some(r) = self.release(&name)
                && r.phase == Some(ReleasePhase::Unstable)
                && !r.overridden
            {
                return Err(format!(
                    "this redeploy was made before as {name}, which is Unstable ({}); lift it with \
                     `rollguard override {name} --reason …` first",
                    r.verdict.as_deref().unwrap_or("judged worse")
                ));
            }
            Ok((
                ReleaseRef {
                    release: name,
                    ..to
                },
                Some(redeploy),
            ))
        });
        let (to, redeploy) = match target {
            Ok(t) => t,
            Err(why) => {
                mr.step = RevertStep::Refused;
                mr.finished_at = Some(at.clone());
                mr.log(at, format!("{word} refused: {why}"));
                self.outcome(req, false, &format!("{word} refused: {why}"));
                self.status.manual_rollback = Some(mr);
                self.note(
                    true,
                    Reason::ManualRollbackRefused,
                    format!("{word} by {} refused: {why}", req.by),
                );
                return;
            }
        };
        if let Some(r) = &redeploy {
            self.act(Action::CreateRedeploy {
                name: to.release.clone(),
                redeploy: r.clone(),
                by: req.by.clone(),
            });
        }
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
        let what = match &redeploy {
            Some(r) => format!(
                "{}'s images on {}'s configuration, as {}",
                r.images_of, r.config_of, to.release
            ),
            None => to.release.clone(),
        };
        mr.log(
            at.clone(),
            format!(
                "{word} {} {} → {what} requested by {}{}",
                self.name,
                moved_from.map_or("-".to_owned(), |r| r.release.clone()),
                req.by,
                req.reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        );
        mr.log(
            at.clone(),
            match &redeploy {
                Some(r) => format!(
                    "image @{}, from {}'s snapshot, with today's env, resources, probes and ports: no build needed",
                    to.digest, r.images_of
                ),
                None => format!(
                    "image @{}, from the Release's snapshot: no build needed",
                    to.digest
                ),
            },
        );
        for w in req.warnings.iter().take(super::plan::MAX_WARNINGS) {
            mr.log(at.clone(), format!("warning: {w}"));
            self.note(
                true,
                Reason::ManualRollbackWarning,
                format!(
                    "{word} to {}: {}",
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
        let images_of = redeploy.as_ref().map(|r| r.images_of.as_str());
        for (release, action) in [
            (Some(to.release.as_str()), "to"),
            (images_of, "images-of"),
            (from.as_ref().map(|r| r.release.as_str()), "from"),
            (withdrawn.as_ref().map(|r| r.release.as_str()), "from"),
        ] {
            if let Some(r) = release {
                self.act(Action::ReleaseHistory {
                    release: r.to_owned(),
                    entry: HistoryEntry {
                        action: format!("{word}-{action}"),
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
                "{word} to {} ({}) requested by {}",
                to.release, to.short_digest, req.by
            ),
        );
        self.outcome(req, true, &format!("{word} to {} started", to.release));
        mr.from = from;
        mr.withdrawn = withdrawn;
        mr.to = Some(to.clone());
        mr.redeploy = redeploy;
        self.status.manual_rollback = Some(mr);
        self.status.paused_by = None;
        self.set_phase(
            RolloutPhase::Reverting,
            format!("{} by hand to {}", gerund(&word), to.release),
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
                return Err(
                    "another rollback or redeploy is running; wait for it to finish".into(),
                );
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
        if serving && !canary && req.action == RequestAction::Rollback {
            return Err(format!("{name} is already the release serving"));
        }
        match r.phase {
            Some(ReleasePhase::Stable | ReleasePhase::Superseded) => {}
            Some(ReleasePhase::Unstable) if r.overridden => {}
            Some(ReleasePhase::Unstable) => {
                return Err(format!(
                    "{name} is Unstable ({}); give --override-reason to use it anyway",
                    r.verdict
                        .as_deref()
                        .unwrap_or("judged worse than its baseline")
                ));
            }
            other => {
                return Err(format!(
                    "{name} never served ({}); only a release that was stable can be {}",
                    other.map_or("no phase".to_owned(), |p| format!("{p:?}")),
                    match req.action {
                        RequestAction::Redeploy => "redeployed",
                        _ => "rolled back to",
                    }
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
                // A redeploy's Release is made in the pass that accepts it; made again here if
                // that write was lost (the name is the same, so a second create is a no-op).
                if let Some(r) = mr
                    .redeploy
                    .as_ref()
                    .filter(|_| self.release(&to.release).is_none())
                {
                    self.act(Action::CreateRedeploy {
                        name: to.release.clone(),
                        redeploy: r.clone(),
                        by: mr.by.clone(),
                    });
                }
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
                    self.log_ready_pods(&mut mr, &to.release);
                    mr.log(
                        at.clone(),
                        format!("all {s} replicas of {} ready", to.release),
                    );
                    mr.ready_logged = s;
                    mr.step = RevertStep::Record;
                    self.requeue = 0;
                } else if self.log_ready_pods(&mut mr, &to.release) {
                    mr.ready_logged = w.updated_ready;
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
                    mr.log(at.clone(), format!("{} failed: {why}", mr.word()));
                    mr.step = RevertStep::Failed;
                    mr.finished_at = Some(at.clone());
                    self.note(true, Reason::ManualRollbackRefused, why.clone());
                    self.set_phase(
                        RolloutPhase::RolledBack,
                        format!("{} failed: {why}", mr.word()),
                    );
                }
            }
            RevertStep::Record => self.record_revert(&mut mr, &to),
            RevertStep::Done | RevertStep::Refused | RevertStep::Failed => {
                self.set_phase(RolloutPhase::RolledBack, "rolled back by hand");
            }
        }
        self.status.manual_rollback = Some(mr);
    }

    /// One line per pod of `release` that became Ready, at the time it did, each once; at most
    /// [`MAX_POD_LINES`] in all. False when the pods could not be read, so that the caller
    /// counts replicas instead.
    fn log_ready_pods(&self, mr: &mut ManualRollback, release: &str) -> bool {
        let Some(pods) = &self.obs.stable_pods else {
            return false;
        };
        let logged = |mr: &ManualRollback, pod: &str| {
            mr.log.iter().any(|l| l.text == format!("{pod}: ready ✓"))
        };
        let mut ready: Vec<(i64, &str)> = pods
            .iter()
            .filter(|p| p.release.as_deref() == Some(release))
            .filter_map(|p| Some((p.ready_at?, p.name.as_str())))
            .collect();
        ready.sort_unstable();
        let mut count = mr
            .log
            .iter()
            .filter(|l| l.text.ends_with(": ready ✓"))
            .count();
        for (at, pod) in ready {
            if count >= MAX_POD_LINES {
                break;
            }
            if !logged(mr, pod) {
                mr.log(format_time(at), format!("{pod}: ready ✓"));
                count += 1;
            }
        }
        true
    }

    /// The last step: all traffic on the restored stable, and the Releases say what happened.
    fn record_revert(&mut self, mr: &mut ManualRollback, to: &ReleaseRef) {
        let now = self.now();
        let at = format_time(now);
        self.act(Action::SetWeights {
            canary: 0,
            baseline: 0,
        });
        if let Some(phase) = self.release(&to.release).map(|r| r.phase)
            && phase != Some(ReleasePhase::Stable)
        {
            // A redeploy's Release never served: through Progressing, the legal way.
            if phase.is_none_or(|p| p == ReleasePhase::Candidate) {
                self.act(Action::ReleasePhase {
                    release: to.release.clone(),
                    phase: ReleasePhase::Progressing,
                    verdict: None,
                });
            }
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
        let word = mr.word();
        mr.log(
            at.clone(),
            format!("{word} complete in {took} s; all traffic on {}", to.release),
        );
        mr.step = RevertStep::Done;
        mr.finished_at = Some(at);
        self.note(
            false,
            Reason::ManualRollbackDone,
            format!(
                "{} by hand to {} ({}) in {took} s, requested by {}",
                past(word),
                to.release,
                to.short_digest,
                mr.by
            ),
        );
        self.set_phase(
            RolloutPhase::RolledBack,
            format!("{} by hand to {} by {}", past(word), to.release, mr.by),
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
            "{} by hand to {to} by {}; the target still declares {release}, which is \
             not deployed again: deploy another version, or `rollguard rollback --to {release}`",
            past(mr.word()),
            mr.by
        );
        self.set_phase(RolloutPhase::RolledBack, message);
        true
    }
}

fn gerund(word: &str) -> &'static str {
    if word == "redeploy" {
        "redeploying"
    } else {
        "rolling back"
    }
}

fn past(word: &str) -> &'static str {
    if word == "redeploy" {
        "redeployed"
    } else {
        "rolled back"
    }
}

#[cfg(test)]
#[path = "revert_tests.rs"]
mod tests;
