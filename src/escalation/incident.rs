//! The incident as an incident commander reads it, built from what the Rollout and its Releases
//! recorded. One model; each receiver renders it its own way (see [`super::wire`]).

use std::fmt::Write as _;

use serde::Serialize;

use crate::api::release::Release;
use crate::api::rollout::{
    IncidentKind, MetricEvidence, OutboxAction, OutboxEntry, RollbackStatus, RollbackStep,
    RolloutSpec, RolloutStatus, Severity,
};
use crate::rollout::plan::ReleaseView;

/// Everything one escalation says.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Incident {
    pub kind: IncidentKind,
    pub action: OutboxAction,
    pub severity: Severity,
    /// The same across retries and controller restarts.
    pub dedup_key: String,
    /// States the symptom: `shop/checkout canary rolled back (1a2b…): errors canary 6% vs …`.
    pub title: String,
    pub namespace: String,
    pub rollout: String,
    pub release: String,
    /// Where things stand now, in one sentence.
    pub state: String,
    pub change: Change,
    pub evidence: Vec<EvidenceRow>,
    pub timeline: Vec<Moment>,
    pub actions: Vec<ActionTaken>,
    pub links: Links,
    /// When the outbox entry was written (RFC 3339).
    pub created_at: String,
    /// When the incident opened: the Trigger's time, also on its Resolve.
    pub started_at: String,
}

/// What changed: from the digest that served to the one that was deployed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_release: Option<String>,
    pub to_digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_version: Option<String>,
    pub to_release: String,
    /// The image deployed, `repo@sha256:…`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_cause: Option<String>,
}

/// One measured metric, as a human would redo it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EvidenceRow {
    pub metric: String,
    pub verdict: String,
    /// The judgment's sentence: values per arm, test and threshold.
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counts: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statistic: Option<String>,
    pub at: String,
    pub queries: Vec<EvidenceQuery>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EvidenceQuery {
    pub name: String,
    pub promql: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// A Prometheus graph of the query, when the answering Prometheus is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Moment {
    pub at: String,
    pub what: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ActionState {
    Done,
    InProgress,
    Failing,
    Pending,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionTaken {
    pub action: String,
    pub state: ActionState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Links {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runbook: Option<String>,
    /// How to look at the Rollout: a command, since cluster objects have no public URL.
    pub rollout: String,
    /// The failing queries' graphs.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub graphs: Vec<(String, String)>,
}

/// What [`build`] reads besides the outbox entry.
pub struct Sources<'a> {
    pub namespace: &'a str,
    pub rollout: &'a str,
    pub spec: &'a RolloutSpec,
    pub status: &'a RolloutStatus,
    pub releases: &'a [Release],
    /// Base URL for graph links, instead of the address of the Prometheus that answered (which
    /// may be an in-cluster name a human cannot open).
    pub graph_base: Option<&'a str>,
}

/// The incident of one outbox entry.
pub fn build(src: &Sources<'_>, entry: &OutboxEntry) -> Incident {
    let release = src
        .releases
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(entry.release.as_str()));
    let from = entry.from_digest.as_ref().and_then(|d| {
        src.releases
            .iter()
            .find(|r| ReleaseView::from(*r).digest == *d)
    });
    let rollback = src
        .status
        .rollback
        .as_ref()
        .filter(|rb| rb.release == entry.release);
    let started_at = src
        .status
        .outbox
        .iter()
        .find(|e| e.dedup_key == entry.dedup_key && e.action == OutboxAction::Trigger)
        .map_or_else(|| entry.created_at.clone(), |e| e.created_at.clone());
    let evidence_source: Vec<MetricEvidence> = match entry.kind {
        IncidentKind::Promoted => Vec::new(),
        IncidentKind::NotRecovered => src
            .status
            .analysis
            .as_ref()
            .map(|a| a.metrics.clone())
            .unwrap_or_default(),
        _ => match rollback {
            Some(rb) if !rb.evidence.is_empty() => rb.evidence.clone(),
            _ => release
                .and_then(|r| r.status.as_ref())
                .and_then(|s| s.verdict.as_ref())
                .map(|v| v.evidence.clone())
                .unwrap_or_default(),
        },
    };
    let evidence: Vec<EvidenceRow> = evidence_source
        .iter()
        .map(|e| evidence_row(e, src.graph_base))
        .collect();
    let graphs = evidence
        .iter()
        .filter(|e| e.verdict == "Fail")
        .flat_map(|e| {
            e.queries.iter().filter_map(move |q| {
                q.graph
                    .clone()
                    .map(|g| (format!("{}: {}", e.metric, q.name), g))
            })
        })
        .collect();
    let actions = rollback.map(actions_taken).unwrap_or_default();
    Incident {
        kind: entry.kind,
        action: entry.action,
        severity: entry.severity,
        dedup_key: entry.dedup_key.clone(),
        title: entry.title.clone(),
        namespace: src.namespace.to_owned(),
        rollout: src.rollout.to_owned(),
        release: entry.release.clone(),
        state: state_line(entry, rollback, src.status),
        change: Change {
            from_digest: entry.from_digest.clone(),
            from_version: from.and_then(|r| r.spec.version.clone()),
            from_release: from.and_then(|r| r.metadata.name.clone()),
            to_digest: entry.to_digest.clone(),
            to_version: release.and_then(|r| r.spec.version.clone()),
            to_release: entry.release.clone(),
            image: release.and_then(|r| r.spec.images.first().map(|i| i.image.clone())),
            change_cause: release.and_then(|r| r.spec.change_cause.clone()),
        },
        evidence,
        timeline: rollback
            .map(|rb| timeline(rb, src.status, &src.spec.recovery_window.0))
            .unwrap_or_default(),
        actions,
        links: Links {
            runbook: src.spec.escalation.as_ref().and_then(|e| e.runbook.clone()),
            rollout: format!(
                "kubectl -n {} rollguard status {}",
                src.namespace, src.rollout
            ),
            graphs,
        },
        created_at: entry.created_at.clone(),
        started_at,
    }
}

fn evidence_row(e: &MetricEvidence, graph_base: Option<&str>) -> EvidenceRow {
    let base = graph_base.or(e.source.as_deref());
    EvidenceRow {
        metric: e.metric.clone(),
        verdict: e.verdict.clone(),
        reason: e.reason.clone(),
        counts: e.counts.clone(),
        statistic: e.statistic.clone(),
        at: e.at.clone(),
        queries: e
            .queries
            .iter()
            .map(|q| EvidenceQuery {
                name: q.name.clone(),
                promql: q.promql.clone(),
                value: q.value,
                graph: base.map(|b| graph_url(b, &graphed(&q.name, &q.promql))),
            })
            .collect(),
    }
}

/// The window of the rates the graph links plot: a minute, so that even a 15 s scrape gives
/// points, and short enough to show a regression's step.
pub const GRAPH_RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// What a query's graph plots: counters (an errorRate's requests and errors, a latency's
/// buckets) as their per-second rate, since a counter only ever climbs; other queries as sent.
pub fn graphed(name: &str, promql: &str) -> String {
    let counter = ["requests", "errors", "buckets"]
        .iter()
        .any(|c| name.ends_with(c));
    if counter {
        crate::analysis::render::as_rate(promql, GRAPH_RATE_WINDOW)
            .unwrap_or_else(|_| promql.to_owned())
    } else {
        promql.to_owned()
    }
}

/// A Prometheus graph page showing `promql` over the last hour.
pub fn graph_url(base: &str, promql: &str) -> String {
    format!(
        "{}/graph?g0.expr={}&g0.tab=0&g0.range_input=1h",
        base.trim_end_matches('/'),
        percent_encode(promql)
    )
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn step_words(step: RollbackStep) -> &'static str {
    match step {
        RollbackStep::ZeroWeights => "canary weight set to 0 and verified on the route",
        RollbackStep::EnsureStableCapacity => "stable scaled to take all the traffic",
        RollbackStep::RestoreStable => "stable digest in place, canary scaled to 0",
        RollbackStep::MarkUnstable => "Release marked Unstable: it is never canaried again",
        RollbackStep::Escalate => "incident handed to the receivers",
        RollbackStep::VerifyRecovery => "service back to its pre-rollout baseline",
        RollbackStep::Done => "done",
    }
}

fn actions_taken(rb: &RollbackStatus) -> Vec<ActionTaken> {
    RollbackStep::ORDER
        .iter()
        .map(|&step| {
            let done = rb.completed.iter().find(|c| c.step == step);
            let (state, error) = match done {
                Some(_) => (ActionState::Done, None),
                None if rb.step == step && rb.last_error.is_some() => {
                    (ActionState::Failing, rb.last_error.clone())
                }
                None if rb.step == step => (ActionState::InProgress, None),
                None => (ActionState::Pending, None),
            };
            ActionTaken {
                action: step_words(step).to_owned(),
                state,
                at: done.map(|c| c.at.clone()),
                error,
            }
        })
        .collect()
}

fn timeline(rb: &RollbackStatus, status: &RolloutStatus, window: &str) -> Vec<Moment> {
    let mut out = Vec::new();
    let mut push = |at: Option<&String>, what: String| {
        if let Some(at) = at {
            out.push(Moment {
                at: at.clone(),
                what,
            });
        }
    };
    push(status.canary_started_at.as_ref(), "canary started".into());
    push(
        rb.breach_at.as_ref(),
        format!(
            "first failing measurement{}",
            rb.metric
                .as_ref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        ),
    );
    push(
        Some(&rb.started_at),
        format!("rollback started: {}", rb.reason),
    );
    for c in &rb.completed {
        let what = match c.step {
            RollbackStep::ZeroWeights => "weight 0 verified".to_owned(),
            RollbackStep::RestoreStable => "stable restored".to_owned(),
            RollbackStep::MarkUnstable => "Release marked Unstable".to_owned(),
            RollbackStep::VerifyRecovery => format!("recovery verified over {window}"),
            other => step_words(other).to_owned(),
        };
        push(Some(&c.at), what);
    }
    push(
        rb.not_recovered_at.as_ref(),
        "the restored stable still measured worse than before the rollout".into(),
    );
    out.sort_by(|a, b| a.at.cmp(&b.at));
    out
}

/// The Rollout an incident's dedup key (`rollguard/<ns>/<rollout>/<release>…`) names.
fn status_rollout(entry: &OutboxEntry) -> &str {
    entry.dedup_key.split('/').nth(2).unwrap_or("<rollout>")
}

fn state_line(entry: &OutboxEntry, rb: Option<&RollbackStatus>, status: &RolloutStatus) -> String {
    let stable = status
        .stable
        .as_ref()
        .map(|s| format!("{} ({})", s.release, s.short_digest))
        .unwrap_or_else(|| "the stable".into());
    match (entry.kind, entry.action) {
        (IncidentKind::Promoted, _) => format!("{stable} serves all traffic"),
        (IncidentKind::Blocked, OutboxAction::Trigger) => format!(
            "no canary started; {stable} keeps serving. Lift with `rollguard override {} \
             --reason …` or deploy another digest",
            entry.release
        ),
        (IncidentKind::Blocked, OutboxAction::Resolve) => "no longer blocked".into(),
        (IncidentKind::NotRecovered | IncidentKind::RollbackIncomplete, OutboxAction::Resolve) => {
            format!("{stable} serves all traffic and is back to its pre-rollout baseline")
        }
        (_, OutboxAction::Resolve) => format!("resolved: {}", entry.title),
        (_, OutboxAction::Trigger) => match rb {
            None => format!("{stable} serves"),
            Some(rb) if rb.step == RollbackStep::Done => format!(
                "rolled back: {stable} serves all traffic and recovered; the incident stays open \
                 until its cause is understood: `rollguard incident resolve {} --reason …`",
                status_rollout(entry)
            ),
            Some(rb) => {
                let zero = rb
                    .completed
                    .iter()
                    .any(|c| c.step == RollbackStep::ZeroWeights);
                let weight = if zero {
                    "canary weight is 0 (verified)"
                } else {
                    "canary weight not yet 0"
                };
                let failing = rb
                    .last_error
                    .as_ref()
                    .map(|e| format!("; {} is failing: {e}", rb.step))
                    .unwrap_or_default();
                format!("{weight}; {stable} serves; next: {}{failing}", rb.step)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::escalation::fixtures::*;

    #[test]
    fn the_incident_says_what_changed_with_versions_and_cause() {
        let i = sample(OutboxAction::Trigger);
        assert_eq!(i.change.from_version.as_deref(), Some("1.5.0"));
        assert_eq!(i.change.to_version.as_deref(), Some("1.6.0"));
        assert_eq!(
            i.change.image.as_deref(),
            Some(format!("shop/checkout@{NEW}").as_str())
        );
        assert_eq!(
            i.change_line(),
            "1.5.0 (000000000000) → 1.6.0 (abcdef012345)"
        );
        assert_eq!(
            i.change.change_cause.as_deref(),
            Some("deploy <!channel> & friends")
        );
        // The Trigger's time opens the incident, also for the later Resolve.
        assert_eq!(i.started_at, "2026-11-22T10:00:12Z");
        assert_eq!(
            sample(OutboxAction::Resolve).started_at,
            "2026-11-22T10:00:12Z"
        );
    }

    #[test]
    fn evidence_comes_from_the_rollback_with_graph_links() {
        let i = sample(OutboxAction::Trigger);
        assert_eq!(
            i.evidence.len(),
            1,
            "the saga's evidence, not the Release's"
        );
        let q = &i.evidence[0].queries[0];
        assert_eq!(q.value, Some(42.0));
        let graph = q.graph.as_deref().expect("graph link");
        assert!(
            // The counter is graphed as its rate, not its climb.
            graph.starts_with("http://prometheus.monitoring:9090/graph?g0.expr=sum%28rate%28http_requests_total%7B")
                && graph.contains("service%3D%22checkout-canary%22")
                && graph.contains("%5B1m%5D"),
            "{graph}"
        );
        assert_eq!(i.links.graphs.len(), 1);
        assert_eq!(
            i.links.runbook.as_deref(),
            Some("https://runbooks.example/checkout")
        );
        assert_eq!(i.links.rollout, "kubectl -n shop rollguard status checkout");
        // An explicit base replaces the in-cluster address.
        let (spec, status, releases) = rollout_status();
        let src = Sources {
            namespace: "shop",
            rollout: "checkout",
            spec: &spec,
            status: &status,
            releases: &releases,
            graph_base: Some("https://prom.example/"),
        };
        let i = build(&src, &entry(OutboxAction::Trigger, "t"));
        assert!(
            i.links.graphs[0]
                .1
                .starts_with("https://prom.example/graph?")
        );
    }

    #[test]
    fn timeline_and_actions_show_what_is_done_and_what_fails() {
        let i = sample(OutboxAction::Trigger);
        let whats: Vec<&str> = i.timeline.iter().map(|m| m.what.as_str()).collect();
        assert_eq!(
            whats,
            vec![
                "canary started",
                "first failing measurement (errors)",
                "rollback started: critical metric errors failed: canary 4.200% vs baseline 0.500%",
                "weight 0 verified",
                "stable scaled to take all the traffic",
                "stable restored",
            ]
        );
        let states: Vec<ActionState> = i.actions.iter().map(|a| a.state).collect();
        assert_eq!(
            states,
            vec![
                ActionState::Done,
                ActionState::Done,
                ActionState::Done,
                ActionState::Failing,
                ActionState::Pending,
                ActionState::Pending,
            ]
        );
        assert!(
            i.state
                .starts_with("canary weight is 0 (verified); checkout-0000000000"),
            "{}",
            i.state
        );
        assert!(
            i.state
                .contains("MarkUnstable is failing: Release checkout-abcdef0123: 409 conflict")
        );
    }

    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(percent_encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(
            percent_encode("rate(x{a=\"b c\"}[5m])"),
            "rate%28x%7Ba%3D%22b%20c%22%7D%5B5m%5D%29"
        );
        assert_eq!(percent_encode("é"), "%C3%A9");
    }
}
