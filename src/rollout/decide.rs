//! [`decide`]: one plan from the spec, the status and what was observed; [`failed`]: the status
//! to record when a plan's action failed.

use super::incidents::{dedup_key, enqueue, incident, qualified, resolve_where};
use super::plan::{Action, ErrorKind, Observed, Plan, Reason};
use super::planner::{Planner, push_timeline, set_condition};
use super::workload::{REQUEST_ANNOTATION, short_digest};
use crate::api::common::bounded;
use crate::api::rollout::{
    IncidentKind, OutboxAction, RollbackStep, RolloutPhase, RolloutSpec, RolloutStatus, Severity,
};
use crate::time::{parse_at, secs};

/// Failed attempts of a saga step before `RollbackIncomplete` is raised.
pub const INCOMPLETE_AFTER: i32 = 3;

/// The next plan for a Rollout named `name`.
pub fn decide(name: &str, spec: &RolloutSpec, status: &RolloutStatus, obs: &Observed) -> Plan {
    let mut p = Planner {
        name,
        spec,
        obs,
        status: status.clone(),
        actions: Vec::new(),
        notes: Vec::new(),
        requeue: 30,
    };
    p.status.observed_generation = obs.generation;
    p.run();
    p.status.step = Some(step_column(p.status.current_step, spec.steps.len()));
    Plan {
        actions: p.actions,
        status: p.status,
        notes: p.notes,
        requeue_secs: p.requeue,
    }
}

/// The `Step` column: the step in progress counted from 1, of all steps; `-` without one.
pub fn step_column(current: Option<i32>, steps: usize) -> String {
    match current {
        Some(i) if steps > 0 => format!("{}/{steps}", (i + 1).min(steps as i32)),
        _ => "-".to_owned(),
    }
}

/// The status to record when applying `plan` failed with `error` of `kind`: the planned status is dropped
/// (nothing of it happened for sure); during a rollback the failure is counted, and after
/// [`INCOMPLETE_AFTER`] attempts the Rollout says loudly that the rollback is incomplete and a
/// critical incident goes out.
pub fn failed(
    namespace: &str,
    name: &str,
    spec: &RolloutSpec,
    status: &RolloutStatus,
    kind: ErrorKind,
    error: &str,
    now: i64,
) -> RolloutStatus {
    let mut s = status.clone();
    // The last rollback stays in status once done; only a saga still running counts attempts.
    let Some(rb) = s
        .rollback
        .as_mut()
        .filter(|rb| rb.step != RollbackStep::Done)
    else {
        let reason = match kind {
            ErrorKind::Permission => "PermissionDenied",
            _ => "ActionFailed",
        };
        set_condition(&mut s, "Ready", false, reason, error, now);
        return s;
    };
    rb.attempts += 1;
    rb.last_error = Some(bounded(error));
    if rb.attempts < INCOMPLETE_AFTER {
        return s;
    }
    let message = format!(
        "rollback step {} failed {} times: {error}; traffic is kept on stable where it could be \
         moved, and the controller keeps retrying",
        rb.step, rb.attempts
    );
    let key = format!("{}:incomplete", dedup_key(namespace, name, &rb.release));
    let title = format!(
        "{} rollback of {} is incomplete: {} keeps failing",
        qualified(namespace, name),
        short_digest(&rb.digest),
        rb.step
    );
    let incident = incident(
        rb,
        key,
        IncidentKind::RollbackIncomplete,
        OutboxAction::Trigger,
        Severity::Critical,
        title,
        None,
        now,
    );
    if enqueue(&mut s, spec, incident, now) {
        push_timeline(&mut s, now, Reason::RollbackIncomplete, &message);
    }
    set_condition(
        &mut s,
        "RollbackIncomplete",
        true,
        "StepFailing",
        &message,
        now,
    );
    s
}

/// While a post-promotion window is open: how far back the verification's baseline looks, in
/// seconds, so that it sees the previous stable serving alone before the canary started (the
/// whole window long). None outside a window.
pub fn verify_baseline_offset(status: &RolloutStatus, now: i64) -> Option<u64> {
    let until = parse_at(status.verify_until.as_deref())?;
    let started = parse_at(status.canary_started_at.as_deref())?;
    (now < until && status.previous_stable.is_some()).then(|| (until - started).max(1) as u64)
}

/// While a rollback verifies recovery: how far back the restored stable's baseline looks, so
/// that it sees the service before the canary started, over the whole recovery window. None
/// otherwise.
pub fn recovery_baseline_offset(spec: &RolloutSpec, status: &RolloutStatus) -> Option<u64> {
    let rb = status.rollback.as_ref()?;
    if status.phase != Some(RolloutPhase::RollingBack) || rb.step != RollbackStep::VerifyRecovery {
        return None;
    }
    let since = parse_at(rb.completed.last().map(|c| c.at.as_str()))?
        .max(parse_at(rb.not_recovered_at.as_deref()).unwrap_or(0));
    let started = parse_at(status.canary_started_at.as_deref())?;
    let until = since + secs(&spec.recovery_window, 30);
    Some((until - started).max(1) as u64)
}

impl Planner<'_> {
    pub(super) fn run(&mut self) {
        // Nothing is applied or scaled while the target has an arm's name: the arm's apply
        // would overwrite the user's Deployment, and scaling the target down would empty it.
        if self.target_name_taken().is_some() {
            self.target_artifact();
            self.requeue = 60;
            return;
        }
        let s = self.stable_replicas();
        self.status.replicas = Some(s);
        if let (Some(t), Some(stable)) = (&self.obs.target, &self.obs.stable)
            && t.replicas > 0
            && stable.ready >= s
        {
            self.act(Action::ScaleTarget);
        }
        let id = match &self.obs.request {
            Some(Ok(req)) => Some(req.id.clone()),
            Some(Err(bad)) => Some(bad.id.clone()),
            None => None,
        };
        if let Some(id) = id
            && self.status.acknowledged_request.as_deref() != Some(id.as_str())
        {
            self.status.acknowledged_request = Some(id);
            match self.obs.request.clone() {
                Some(Ok(req)) => self.request(&req),
                Some(Err(bad)) => self.note(
                    true,
                    Reason::RequestInvalid,
                    format!(
                        "annotation {REQUEST_ANNOTATION} is ignored: {}; use `rollguard \
                         promote|abort|pause|resume`",
                        bad.why
                    ),
                ),
                None => {}
            }
        }
        let before = self.phase();
        match before {
            RolloutPhase::Initializing => self.initialize(),
            RolloutPhase::Stable | RolloutPhase::Blocked | RolloutPhase::RolledBack => self.idle(),
            RolloutPhase::Progressing | RolloutPhase::Paused => self.progress(),
            RolloutPhase::Promoting => self.promote(),
            RolloutPhase::RollingBack => self.roll_back(),
            RolloutPhase::Reverting => self.revert(),
        }
        if before == RolloutPhase::Blocked && self.phase() != RolloutPhase::Blocked {
            let title = format!(
                "{} is no longer blocked: {}",
                qualified(&self.obs.namespace, self.name),
                self.status.message.clone().unwrap_or_default()
            );
            let now = self.now();
            resolve_where(
                &mut self.status,
                self.spec,
                |e| e.kind == IncidentKind::Blocked,
                &title,
                now,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::step_column;

    #[test]
    fn the_step_column_counts_from_one_and_shows_none_without_a_canary() {
        assert_eq!(step_column(Some(0), 3), "1/3");
        assert_eq!(step_column(Some(2), 3), "3/3");
        assert_eq!(step_column(Some(5), 3), "3/3");
        assert_eq!(step_column(None, 3), "-");
        assert_eq!(step_column(Some(0), 0), "-");
    }
}
