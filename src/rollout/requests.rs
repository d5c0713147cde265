//! Manual requests: promote, abort, pause, resume, resolve and rollback, each acted on once.

use super::incidents::{is_rollback_incident, qualified, resolve_where};
use super::plan::{Action, Reason, Request, RequestAction};
use super::planner::Planner;
use crate::api::release::HistoryEntry;
use crate::api::rollout::RolloutPhase;
use crate::time::format_time;

impl Planner<'_> {
    pub(super) fn request(&mut self, req: &Request) {
        if matches!(
            req.action,
            RequestAction::Rollback | RequestAction::Redeploy
        ) {
            // Its own bookkeeping: the log, the notes and both Releases' histories.
            self.begin_revert(req);
            return;
        }
        let phase = self.phase();
        let by = &req.by;
        let release = self
            .status
            .canary
            .as_ref()
            .or(self.status.stable.as_ref())
            .map(|r| r.release.clone());
        let in_window = self.in_verify_window();
        let release = if req.action == RequestAction::Resolve {
            self.status.rollback.as_ref().map(|rb| rb.release.clone())
        } else {
            release
        };
        let acted = match (req.action, phase) {
            (RequestAction::Resolve, _) => {
                let title = format!(
                    "{} incident resolved by {by}{}",
                    qualified(&self.obs.namespace, self.name),
                    reason_suffix(req)
                );
                let now = self.now();
                resolve_where(
                    &mut self.status,
                    self.spec,
                    is_rollback_incident,
                    &title,
                    now,
                ) > 0
            }
            (RequestAction::Pause, RolloutPhase::Progressing | RolloutPhase::Paused) => {
                self.status.paused_by = Some(by.clone());
                self.set_phase(RolloutPhase::Paused, format!("paused by {by}"));
                true
            }
            (RequestAction::Resume, RolloutPhase::Paused | RolloutPhase::Progressing) => {
                self.status.paused_by = None;
                self.status.message = Some(format!("resumed by {by}"));
                self.status.phase = Some(RolloutPhase::Progressing);
                if let Some(step) = self.current_step()
                    && step.pause.as_ref().is_some_and(|p| p.duration.is_none())
                {
                    self.advance();
                }
                true
            }
            (RequestAction::Promote, RolloutPhase::Progressing | RolloutPhase::Paused) => {
                self.status.paused_by = None;
                self.set_phase(
                    RolloutPhase::Promoting,
                    format!("promoted by {by}, skipping the remaining steps"),
                );
                true
            }
            (
                RequestAction::Abort,
                RolloutPhase::Progressing | RolloutPhase::Paused | RolloutPhase::Promoting,
            ) => {
                self.begin_rollback(abort_reason(req), None, None, Vec::new());
                true
            }
            (RequestAction::Abort, RolloutPhase::Stable) if in_window => {
                self.begin_post_promotion_rollback(abort_reason(req), None, None, Vec::new());
                true
            }
            _ => false,
        };
        let message = if acted {
            format!(
                "{} by {by} in phase {phase:?}{}",
                req.action,
                reason_suffix(req)
            )
        } else {
            format!("{} by {by} does not apply in phase {phase:?}", req.action)
        };
        self.outcome(req, acted, &message);
        if acted {
            self.note(false, Reason::Request, message);
            if let Some(release) = release {
                self.act(Action::ReleaseHistory {
                    release,
                    entry: HistoryEntry {
                        action: req.action.to_string(),
                        by: by.clone(),
                        at: format_time(self.now()),
                        reason: req.reason.clone(),
                    },
                });
            }
        } else {
            self.note(true, Reason::RequestIgnored, message);
        }
    }
}

impl Planner<'_> {
    /// Records what became of `req`, for the CLI that waits on it.
    pub(super) fn outcome(&mut self, req: &Request, accepted: bool, message: &str) {
        self.status.request_outcome = Some(crate::api::rollout::RequestOutcome {
            id: req.id.clone(),
            action: req.action.to_string(),
            by: req.by.clone(),
            accepted,
            message: crate::api::common::bounded(message),
        });
    }
}

/// How a rollback that someone asked for begins its reason: the one place that spells it.
const ABORTED_BY: &str = "aborted by ";

pub(super) fn abort_reason(req: &Request) -> String {
    format!("{ABORTED_BY}{}{}", req.by, reason_suffix(req))
}

/// A rollback's reason says someone asked for it.
pub fn is_abort(reason: &str) -> bool {
    reason.starts_with(ABORTED_BY)
}

pub(super) fn reason_suffix(req: &Request) -> String {
    req.reason
        .as_ref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use crate::rollout::fixtures::*;

    #[test]
    fn a_malformed_request_is_warned_about_once() {
        let (s, mut o) = progressing();
        o.request = Some(Err(InvalidRequest {
            id: "invalid-1".into(),
            why: "missing field `action`".into(),
        }));
        let plan = decide("c", &spec(), &s, &o);
        let warned: Vec<&Note> = plan
            .notes
            .iter()
            .filter(|n| n.reason == Reason::RequestInvalid)
            .collect();
        assert_eq!(warned.len(), 1);
        assert!(warned[0].warning && warned[0].message.contains("missing field"));
        assert_eq!(plan.status.phase, Some(RolloutPhase::Progressing));
        let again = decide("c", &spec(), &plan.status, &o);
        assert!(
            again
                .notes
                .iter()
                .all(|n| n.reason != Reason::RequestInvalid)
        );
    }

    #[test]
    fn requests_are_acted_on_once() {
        let (s, o) = progressing();
        let mut o = o;
        o.request = Some(Ok(Request {
            id: "r1".into(),
            action: RequestAction::Pause,
            by: "alice".into(),
            reason: None,
            to: None,
            unstable: None,
            warnings: Vec::new(),
        }));
        let paused = decide("c", &spec(), &s, &o).status;
        assert_eq!(paused.phase, Some(RolloutPhase::Paused));
        assert_eq!(paused.paused_by.as_deref(), Some("alice"));
        assert_eq!(
            decide("c", &spec(), &paused, &o).status.phase,
            Some(RolloutPhase::Paused)
        );
        o.request = Some(Ok(Request {
            id: "r2".into(),
            action: RequestAction::Abort,
            by: "bob".into(),
            reason: Some("pager noise".into()),
            to: None,
            unstable: None,
            warnings: Vec::new(),
        }));
        let aborted = decide("c", &spec(), &paused, &o);
        assert_eq!(aborted.status.phase, Some(RolloutPhase::RollingBack));
        assert_eq!(
            aborted.status.rollback.map(|r| r.reason),
            Some("aborted by bob: pager noise".into())
        );
        assert!(aborted.actions.iter().any(|a| matches!(a, Action::ReleaseHistory { entry, .. } if entry.action == "abort" && entry.by == "bob")));
        // The same request again changes nothing.
        let mut seen = paused.clone();
        seen.acknowledged_request = Some("r2".into());
        assert_eq!(
            decide("c", &spec(), &seen, &o).status.phase,
            Some(RolloutPhase::Paused)
        );
    }
}
