//! The outbox: incidents the planner enqueues once per key and action, and their resolves.

use super::plan::Reason;
use super::planner::{Planner, push_timeline};
use super::workload::short_digest;
use crate::api::rollout::{
    DeliveryState, IncidentKind, OutboxAction, OutboxEntry, RollbackStatus, RolloutSpec,
    RolloutStatus, Severity,
};
use crate::time::format_time;

/// The incident's dedup key: the same for a Release across restarts and retries.
pub fn dedup_key(namespace: &str, rollout: &str, release: &str) -> String {
    format!("rollguard/{namespace}/{rollout}/{release}")
}

/// `namespace/name`, or the name alone outside a namespace (unit tests).
pub(super) fn qualified(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    }
}

/// The first clause of a judgment's reason: `canary 6.100% vs baseline 0.700%`.
pub fn headline(reason: &str) -> &str {
    reason.split(": ").next().unwrap_or(reason).trim()
}

#[allow(clippy::too_many_arguments)]
pub(super) fn incident(
    rb: &RollbackStatus,
    dedup_key: String,
    kind: IncidentKind,
    action: OutboxAction,
    severity: Severity,
    title: String,
    from_digest: Option<String>,
    now: i64,
) -> OutboxEntry {
    OutboxEntry {
        dedup_key,
        action,
        severity,
        title,
        release: rb.release.clone(),
        from_digest,
        to_digest: rb.digest.clone(),
        created_at: format_time(now),
        kind,
        state: DeliveryState::Pending,
        deliveries: Vec::new(),
    }
}

/// The title of a rollback's incident: what, where, and the symptom that caused it.
pub fn rollback_title(namespace: &str, name: &str, rb: &RollbackStatus) -> String {
    let who = qualified(namespace, name);
    let when = match (rb.reason.contains("after promotion"), rb.repeated) {
        (true, _) => "rolled back after promotion",
        (false, false) => "canary rolled back",
        (false, true) => "canary rolled back again, after its Unstable verdict was overridden",
    };
    let symptom = rb.metric.as_ref().and_then(|m| {
        rb.evidence
            .iter()
            .find(|e| &e.metric == m && e.verdict == "Fail")
            .map(|e| format!("{m} {}", headline(&e.reason)))
    });
    format!(
        "{who} {when} ({}): {}",
        short_digest(&rb.digest),
        symptom.unwrap_or_else(|| rb.reason.clone())
    )
}

/// A rollback's incident, or one of the escalations that followed it.
pub(super) fn is_rollback_incident(e: &OutboxEntry) -> bool {
    matches!(
        e.kind,
        IncidentKind::Rollback | IncidentKind::NotRecovered | IncidentKind::RollbackIncomplete
    )
}

/// Enqueues a Resolve for each open Trigger that `select` picks; how many it resolved.
pub(super) fn resolve_where(
    status: &mut RolloutStatus,
    spec: &RolloutSpec,
    select: impl Fn(&OutboxEntry) -> bool,
    title: &str,
    now: i64,
) -> usize {
    let resolved = |key: &str| {
        status
            .outbox
            .iter()
            .any(|e| e.action == OutboxAction::Resolve && e.dedup_key == key)
    };
    let open: Vec<OutboxEntry> = status
        .outbox
        .iter()
        .filter(|e| e.action == OutboxAction::Trigger && select(e) && !resolved(&e.dedup_key))
        .cloned()
        .collect();
    let count = open.len();
    for trigger in open {
        let entry = OutboxEntry {
            action: OutboxAction::Resolve,
            title: title.to_owned(),
            created_at: format_time(now),
            state: DeliveryState::Pending,
            deliveries: Vec::new(),
            ..trigger
        };
        enqueue(status, spec, entry, now);
    }
    count
}

/// Puts an incident in the outbox once per (dedup key, action); false when it was there.
pub(super) fn enqueue(
    status: &mut RolloutStatus,
    spec: &RolloutSpec,
    entry: OutboxEntry,
    now: i64,
) -> bool {
    if status
        .outbox
        .iter()
        .any(|e| e.dedup_key == entry.dedup_key && e.action == entry.action)
    {
        return false;
    }
    push_outbox(status, spec, entry, now);
    true
}

pub(super) fn push_outbox(
    status: &mut RolloutStatus,
    spec: &RolloutSpec,
    entry: OutboxEntry,
    now: i64,
) {
    let receivers = spec.escalation.as_ref().map(|e| e.receivers.join(", "));
    let message = match receivers {
        Some(r) => format!(
            "{:?} {} for {r}: {}",
            entry.action, entry.dedup_key, entry.title
        ),
        None => format!(
            "{:?} {} recorded; the Rollout names no receivers",
            entry.action, entry.dedup_key
        ),
    };
    status.outbox.push(entry);
    let excess = status.outbox.len().saturating_sub(64);
    status.outbox.drain(..excess);
    push_timeline(status, now, Reason::Escalation, &message);
}

impl Planner<'_> {
    /// This Rollout's dedup key for `release`.
    pub(super) fn key(&self, release: &str) -> String {
        dedup_key(&self.obs.namespace, self.name, release)
    }
}

#[cfg(test)]
mod tests {
    use crate::rollout::fixtures::*;

    #[test]
    fn titles_state_the_symptom() {
        let rb = RollbackStatus {
            release: "checkout-1a2b3c4d5e".into(),
            digest: format!("sha256:{}", "1a2b3c4d5e6f".repeat(5) + "abcd"),
            reason: "critical metric errors failed: canary 4.200% vs baseline 0.500%: worse".into(),
            metric: Some("errors".into()),
            evidence: vec![MetricEvidence {
                metric: "errors".into(),
                verdict: "Fail".into(),
                reason: "canary 4.200% vs baseline 0.500%: worse beyond toleratedRatio 1.5".into(),
                ..MetricEvidence::default()
            }],
            ..RollbackStatus::default()
        };
        assert_eq!(
            rollback_title("shop", "checkout", &rb),
            "shop/checkout canary rolled back (1a2b3c4d5e6f): errors canary 4.200% vs baseline 0.500%"
        );
        let aborted = RollbackStatus {
            reason: "aborted by alice: wrong config".into(),
            metric: None,
            evidence: Vec::new(),
            ..rb
        };
        assert_eq!(
            rollback_title("shop", "checkout", &aborted),
            "shop/checkout canary rolled back (1a2b3c4d5e6f): aborted by alice: wrong config"
        );
    }

    #[test]
    fn a_rollbacks_incident_closes_by_a_human_or_a_later_promotion_not_by_recovery() {
        let open = |s: &RolloutStatus| {
            s.outbox
                .iter()
                .filter(|e| e.action == OutboxAction::Trigger && e.kind == IncidentKind::Rollback)
                .filter(|t| {
                    !s.outbox
                        .iter()
                        .any(|r| r.action == OutboxAction::Resolve && r.dedup_key == t.dedup_key)
                })
                .count()
        };
        let (s, mut o) = progressing();
        o.analysis = Some(fail(true));
        let mut status = decide("c", &spec(), &s, &o).status;
        if let Some(rb) = status.rollback.as_mut() {
            rb.step = RollbackStep::Escalate;
        }
        o.analysis = None;
        status = decide("c", &spec(), &status, &o).status;
        assert_eq!(open(&status), 1);
        // A human resolves it, with a reason: one Resolve, recorded in the Release's history.
        o.request = Some(Ok(Request {
            id: "resolve-1".into(),
            action: RequestAction::Resolve,
            by: "alice".into(),
            reason: Some("bad payment client config, fixed".into()),
            to: None,
            unstable: None,
            warnings: Vec::new(),
        }));
        let plan = decide("c", &spec(), &status, &o);
        assert_eq!(open(&plan.status), 0);
        let resolve = plan
            .status
            .outbox
            .iter()
            .find(|e| e.action == OutboxAction::Resolve)
            .expect("a Resolve");
        assert!(
            resolve.title.contains("resolved by alice"),
            "{}",
            resolve.title
        );
        assert!(plan.actions.iter().any(|a| matches!(a,
            Action::ReleaseHistory { release, entry } if *release == release_name("c", NEW)
                && entry.action == "resolve" && entry.by == "alice")));
        // Nothing open: a second resolve is ignored and says so.
        o.request = Some(Ok(Request {
            id: "resolve-2".into(),
            ..o.request.clone().and_then(Result::ok).expect("request")
        }));
        let again = decide("c", &spec(), &plan.status, &o);
        assert!(
            again
                .notes
                .iter()
                .any(|n| n.reason == Reason::RequestIgnored),
            "{:?}",
            again.notes
        );
        // Without a human, the next promotion of the same Rollout closes it.
        let (mut p, mut po) = progressing();
        p.current_step = Some(2);
        p.phase = Some(RolloutPhase::Promoting);
        p.outbox = status.outbox.clone();
        assert_eq!(open(&p), 1);
        po.target = Some(TargetView {
            replicas: 0,
            artifact: Ok(artifact(NEW)),
            template: None,
        });
        po.stable = Some(workload(&release_name("c", NEW), NEW, 4));
        let promoted = decide("c", &spec(), &p, &po).status;
        assert_eq!(promoted.phase, Some(RolloutPhase::Stable));
        assert_eq!(open(&promoted), 0, "closed by the promotion");
    }

    #[test]
    fn a_second_rollback_of_an_overridden_release_is_its_own_critical_incident() {
        let (s, mut o) = progressing();
        o.analysis = Some(fail(true));
        // The first time: an incident at the Rollout's severity.
        let mut first = decide("c", &spec(), &s, &o).status;
        assert!(!first.rollback.as_ref().expect("saga").repeated);
        if let Some(rb) = first.rollback.as_mut() {
            rb.step = RollbackStep::Escalate;
        }
        let once = decide("c", &spec(), &first, &o).status;
        assert_eq!(once.outbox[0].severity, Severity::Error);
        // A human overrode the verdict and the same digest failed again.
        let new = release_name("c", NEW);
        if let Some(r) = o.releases.iter_mut().find(|r| r.name == new) {
            r.verdict = Some("canary 10% vs 0.5%".into());
        }
        let mut again = decide("c", &spec(), &s, &o).status;
        assert!(again.rollback.as_ref().expect("saga").repeated);
        if let Some(rb) = again.rollback.as_mut() {
            rb.step = RollbackStep::Escalate;
        }
        again.outbox = once.outbox.clone();
        let twice = decide("c", &spec(), &again, &o).status;
        assert_eq!(twice.outbox.len(), 2, "not deduplicated into the first");
        let second = &twice.outbox[1];
        assert_eq!(second.severity, Severity::Critical);
        assert!(second.dedup_key.ends_with(":again"), "{}", second.dedup_key);
        assert!(
            second.title.contains("rolled back again"),
            "{}",
            second.title
        );
    }

    #[test]
    fn a_rollback_that_does_not_recover_escalates_again_at_critical_then_resolves_all() {
        let (mut status, mut o) = verifying_recovery();
        let since = o.now;
        assert_eq!(
            recovery_baseline_offset(&spec(), &status),
            Some((since + 30 - 990) as u64),
            "the baseline looks back before the canary started, over the whole window"
        );
        o.analysis = Some(fail(false));
        for t in 1..4 {
            o.now = since + t;
            let plan = decide("c", &spec(), &status, &o);
            assert!(plan.actions.contains(&Action::ResetAnalysis));
            status = plan.status;
        }
        let not_recovered: Vec<&OutboxEntry> = status
            .outbox
            .iter()
            .filter(|e| e.kind == IncidentKind::NotRecovered)
            .collect();
        assert_eq!(
            not_recovered.len(),
            1,
            "escalated again once, not per measurement"
        );
        assert_eq!(not_recovered[0].severity, Severity::Critical);
        assert!(
            not_recovered[0].title.contains("did not recover")
                && not_recovered[0].title.contains("error-rate"),
            "{}",
            not_recovered[0].title
        );
        assert_eq!(
            status.rollback.as_ref().map(|r| r.step),
            Some(RollbackStep::VerifyRecovery)
        );
        // The window starts again from the last failure; healthy for 30 s, it resolves the
        // not-recovered escalation; the rollback's incident stays open for a human.
        o.analysis = None;
        o.now = since + 3 + 29;
        status = decide("c", &spec(), &status, &o).status;
        assert_eq!(
            status.rollback.as_ref().map(|r| r.step),
            Some(RollbackStep::VerifyRecovery),
            "29 s after the last failure is not yet a window"
        );
        o.now = since + 3 + 30;
        status = decide("c", &spec(), &status, &o).status;
        assert_eq!(status.phase, Some(RolloutPhase::RolledBack));
        let resolved: Vec<&str> = status
            .outbox
            .iter()
            .filter(|e| e.action == OutboxAction::Resolve)
            .map(|e| e.dedup_key.as_str())
            .collect();
        let key = dedup_key("", "c", &release_name("c", NEW));
        assert_eq!(resolved, vec![format!("{key}:not-recovered")]);
    }
}
