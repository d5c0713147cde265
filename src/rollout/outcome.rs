//! How a deployment ended, for the DORA counters: read from the moments a plan added.

use super::plan::Reason;
use super::requests::is_abort;
use crate::api::rollout::{RolloutStatus, TimelineEntry};
use crate::time::parse_at;

/// How a deployment ended, for the DORA counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeploymentResult {
    /// Promoted, and through its post-promotion window when there is one.
    Promoted,
    /// Rolled back on evidence (a metric, the progress deadline, a failed verification).
    RolledBack,
    /// Rolled back because someone asked.
    Aborted,
    /// The target moved on before the canary finished.
    Withdrawn,
}

impl DeploymentResult {
    pub fn label(self) -> &'static str {
        match self {
            DeploymentResult::Promoted => "promoted",
            DeploymentResult::RolledBack => "rolled_back",
            DeploymentResult::Aborted => "aborted",
            DeploymentResult::Withdrawn => "withdrawn",
        }
    }
}

/// Timeline entries a plan added. The timeline is capped, so its length alone does not tell.
pub fn new_moments<'a>(
    before: &'a RolloutStatus,
    after: &'a RolloutStatus,
) -> impl Iterator<Item = &'a TimelineEntry> {
    after
        .timeline
        .iter()
        .filter(|e| !before.timeline.contains(e))
}

/// Whether a plan ended a deployment, and how. A promotion with a post-promotion window ends
/// when the window passes; one that fails it ends as rolled back, counted once.
pub fn deployment_result(
    before: &RolloutStatus,
    after: &RolloutStatus,
) -> Option<DeploymentResult> {
    new_moments(before, after).find_map(|m| match Reason::parse(&m.reason)? {
        Reason::RollbackStarted => Some(
            if after
                .rollback
                .as_ref()
                .is_some_and(|rb| is_abort(&rb.reason))
            {
                DeploymentResult::Aborted
            } else {
                DeploymentResult::RolledBack
            },
        ),
        Reason::Promoted if after.verify_until.is_none() => Some(DeploymentResult::Promoted),
        Reason::VerificationPassed => Some(DeploymentResult::Promoted),
        Reason::CanaryWithdrawn => Some(DeploymentResult::Withdrawn),
        // A rollback by hand ends a running canary as someone asked; with none running, no
        // deployment was in flight.
        Reason::ManualRollbackStarted => after
            .manual_rollback
            .as_ref()
            .and_then(|m| m.withdrawn.as_ref())
            .map(|_| DeploymentResult::Aborted),
        _ => None,
    })
}

/// Rework: a plan started a new canary within `window_secs` of the last rollback, which
/// marked a Release Unstable.
pub fn is_rework(
    before: &RolloutStatus,
    after: &RolloutStatus,
    now: i64,
    window_secs: i64,
) -> bool {
    let started =
        new_moments(before, after).any(|m| Reason::parse(&m.reason) == Some(Reason::CanaryStarted));
    let recent = before
        .rollback
        .as_ref()
        .and_then(|rb| parse_at(Some(rb.started_at.as_str())))
        .is_some_and(|at| now - at <= window_secs);
    started && recent
}
