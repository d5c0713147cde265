//! What humans do to a Rollout from the command line: see its status, and promote, abort,
//! pause, resume or override. Requests travel in the Rollout's `rollguard.dev/request`
//! annotation (no status write access needed); the controller acts on each request once and
//! records it in the Release's history with who and when.

use std::fmt::Write as _;

use anyhow::Context as _;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::api::Rollout;
use crate::api::release::{HistoryEntry, Release, ReleasePhase};
use crate::api::rollout::{IncidentKind, OutboxAction, OutboxEntry, RolloutStatus, Severity};
use crate::rollout::plan::{ReleaseView, Request, RequestAction};
use crate::rollout::workload::{REQUEST_ANNOTATION, short_digest};
use crate::time::format_time;

pub async fn client_and_namespace(namespace: Option<String>) -> anyhow::Result<(Client, String)> {
    let config = kube::Config::infer()
        .await
        .context("reading the kubeconfig")?;
    let ns = namespace.unwrap_or_else(|| config.default_namespace.clone());
    Ok((Client::try_from(config)?, ns))
}

/// Who is asking, as the apiserver authenticates them (a SelfSubjectReview). The name goes into
/// the audit trail, and the chart's admission policy admits no other, so there is no local
/// fallback such as `$USER`.
pub async fn whoami(client: &Client) -> anyhow::Result<String> {
    let review: SelfSubjectReview = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview", "metadata": {}
    }))
    .context("building a SelfSubjectReview")?;
    Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .context("asking the apiserver who you are (SelfSubjectReview)")?
        .status
        .and_then(|s| s.user_info?.username)
        .filter(|u| !u.is_empty())
        .context("the apiserver's SelfSubjectReview named no user")
}

/// Sends a manual request to the controller.
pub async fn request(
    client: &Client,
    namespace: &str,
    rollout: &str,
    action: RequestAction,
    reason: Option<String>,
) -> anyhow::Result<Request> {
    let request = Request {
        id: String::new(),
        action,
        by: String::new(),
        reason,
        to: None,
        unstable: None,
        warnings: Vec::new(),
    };
    submit(client, namespace, rollout, request).await
}

/// Sends `request` with a fresh id and the sender's name as the apiserver knows it.
pub async fn submit(
    client: &Client,
    namespace: &str,
    rollout: &str,
    mut request: Request,
) -> anyhow::Result<Request> {
    let api = Api::<Rollout>::namespaced(client.clone(), namespace);
    let ro = api
        .get(rollout)
        .await
        .with_context(|| format!("Rollout {namespace}/{rollout}"))?;
    // One request at a time: a request the controller has not answered yet is never replaced
    // unseen. The patch carries the resourceVersion read here, so two senders cannot both
    // write.
    if let Some(p) = pending(&ro) {
        anyhow::bail!(
            "Rollout {namespace}/{rollout} still has a request the controller has not answered: \
             {} by {} ({}). Wait for it (`rollguard status {rollout}`), or withdraw it with \
             `kubectl annotate rollout {rollout} -n {namespace} {REQUEST_ANNOTATION}-`",
            p.action,
            p.by,
            p.id
        );
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let action = request.action;
    request.id = format!("{action}-{nanos:x}");
    request.by = whoami(client).await?;
    let text = serde_json::to_string(&request)?;
    let version = ro.metadata.resource_version.clone().unwrap_or_default();
    api.patch(
        rollout,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {
            "resourceVersion": version,
            "annotations": {REQUEST_ANNOTATION: text},
        }})),
    )
    .await
    .map_err(|e| match e {
        kube::Error::Api(s) if s.code == 409 => anyhow::anyhow!(
            "Rollout {namespace}/{rollout} changed while {action} was being sent (another \
             request, or the controller); nothing was sent: run it again"
        ),
        e => anyhow::Error::new(e)
            .context(format!("sending {action} to Rollout {namespace}/{rollout}")),
    })?;
    Ok(request)
}

/// The request on a Rollout that the controller has neither acted on nor answered, if any.
pub fn pending(ro: &Rollout) -> Option<Request> {
    let text = ro.annotations().get(REQUEST_ANNOTATION)?;
    let request: Request = serde_json::from_str(text).ok()?;
    let status = ro.status.as_ref();
    let acted_on = status.and_then(|s| s.acknowledged_request.as_deref()) == Some(&request.id);
    let answered = status
        .and_then(|s| s.request_outcome.as_ref())
        .is_some_and(|o| o.id == request.id);
    (!acted_on && !answered).then_some(request)
}

/// Waits for the controller's answer to request `id`: accepted or refused, and why. The
/// controller acts on a request within a reconcile; past `timeout` it is said to be down.
pub async fn outcome(
    client: &Client,
    namespace: &str,
    rollout: &str,
    id: &str,
    timeout: std::time::Duration,
) -> anyhow::Result<crate::api::rollout::RequestOutcome> {
    let api = Api::<Rollout>::namespaced(client.clone(), namespace);
    let started = std::time::Instant::now();
    loop {
        let answer = api
            .get_status(rollout)
            .await
            .ok()
            .and_then(|r| r.status?.request_outcome)
            .filter(|o| o.id == id);
        if let Some(o) = answer {
            return Ok(o);
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "no answer from the controller within {}s: is it running? The request stays on the \
             Rollout and is acted on when it is (`rollguard status {rollout}`)",
            timeout.as_secs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// A Rollout and its Releases, as the commands for people read them.
pub async fn rollout_and_releases(
    client: &Client,
    namespace: &str,
    rollout: &str,
) -> anyhow::Result<(Rollout, Vec<Release>)> {
    let ro = Api::<Rollout>::namespaced(client.clone(), namespace)
        .get(rollout)
        .await
        .with_context(|| format!("Rollout {namespace}/{rollout}"))?;
    let releases = Api::<Release>::namespaced(client.clone(), namespace)
        .list(&kube::api::ListParams::default().labels(&format!(
            "{}={rollout}",
            crate::rollout::workload::ROLLOUT_LABEL
        )))
        .await
        .with_context(|| format!("listing the Releases of {namespace}/{rollout}"))?
        .items;
    Ok((ro, releases))
}

/// The release history of a Rollout, newest first.
pub async fn history(
    client: &Client,
    namespace: &str,
    rollout: &str,
) -> anyhow::Result<Vec<crate::history::HistoryRow>> {
    let (ro, releases) = rollout_and_releases(client, namespace, rollout).await?;
    Ok(crate::history::rows(&ro, &releases))
}

/// Lifts the Unstable verdict of a Release, with a reason recorded in it.
pub async fn override_release(
    client: &Client,
    namespace: &str,
    release: &str,
    reason: &str,
) -> anyhow::Result<String> {
    anyhow::ensure!(
        !reason.trim().is_empty(),
        "--reason must say why the verdict no longer holds"
    );
    let api = Api::<Release>::namespaced(client.clone(), namespace);
    let r = api
        .get(release)
        .await
        .with_context(|| format!("Release {namespace}/{release}"))?;
    let status = r.status.unwrap_or_default();
    anyhow::ensure!(
        status.phase == Some(ReleasePhase::Unstable),
        "Release {release} is {:?}, not Unstable: there is nothing to override",
        status.phase.unwrap_or_default()
    );
    let by = whoami(client).await?;
    let at = format_time(crate::time::unix_now());
    let entry = HistoryEntry {
        action: "override".into(),
        by: by.clone(),
        at: at.clone(),
        reason: Some(reason.into()),
    };
    crate::controller::history::record_history(
        &api,
        release,
        &entry,
        json!({"override": {"reason": reason, "by": by, "at": at}}),
    )
    .await
    .with_context(|| format!("overriding Release {release}"))?;
    Ok(by)
}

/// The Rollout as a human reads it: phase, step, weights, digests, verdicts, rollback, timeline.
pub fn render_status(ro: &Rollout, releases: &[Release]) -> String {
    let s: RolloutStatus = ro.status.clone().unwrap_or_default();
    let mut out = String::new();
    let ns = ro.namespace().unwrap_or_default();
    let _ = writeln!(out, "Rollout {ns}/{}", ro.name_any());
    let _ = writeln!(out, "  Phase:    {:?}", s.phase.unwrap_or_default());
    if let Some(m) = &s.message {
        let _ = writeln!(out, "  Message:  {m}");
    }
    if let Some(i) = s.current_step {
        let _ = writeln!(
            out,
            "  Step:     {} of {}",
            (i + 1).min(ro.spec.steps.len() as i32),
            ro.spec.steps.len()
        );
    }
    let _ = writeln!(out, "  Weight:   canary {}%", s.canary_weight.unwrap_or(0));
    let version = |name: &str| {
        releases
            .iter()
            .find(|r| r.name_any() == name)
            .and_then(|r| r.spec.version.clone())
            .map(|v| format!(" version {v}"))
            .unwrap_or_default()
    };
    for (label, r) in [("Stable", &s.stable), ("Canary", &s.canary)] {
        if let Some(r) = r {
            let _ = writeln!(
                out,
                "  {label}:   {} {}{}",
                r.release,
                r.digest,
                version(&r.release)
            );
        }
    }
    for c in s.conditions.iter().filter(|c| {
        c.status == "True" && c.type_ != "Ready" || c.status == "False" && c.type_ == "Ready"
    }) {
        let _ = writeln!(
            out,
            "  Condition {}={}: {} {}",
            c.type_, c.status, c.reason, c.message
        );
    }
    if let Some(a) = &s.analysis {
        let _ = writeln!(
            out,
            "  Analysis: {}{}",
            a.decision,
            a.reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
        if let Some(f) = &a.forecast {
            let _ = writeln!(out, "  Pass:     the analysis {}", f.message);
        }
        for m in &a.metrics {
            let _ = writeln!(out, "    {:<16} {:<12} {}", m.metric, m.verdict, m.reason);
            if let Some(c) = &m.counts {
                let _ = writeln!(out, "    {:<16} {c}", "");
            }
        }
    }
    if let Some(rb) = &s.rollback {
        let _ = writeln!(out, "  Rollback of {}: {}", rb.release, rb.reason);
        for c in &rb.completed {
            let _ = writeln!(out, "    {}  {} done", c.at, c.step);
        }
        let _ = writeln!(
            out,
            "    next: {}{}",
            rb.step,
            rb.last_error
                .as_ref()
                .map(|e| format!(" (failing {}x: {e})", rb.attempts))
                .unwrap_or_default()
        );
    }
    if let Some(mr) = &s.manual_rollback {
        let word = mr.word();
        let _ = writeln!(
            out,
            "  {}{} by hand ({}):",
            word[..1].to_uppercase(),
            &word[1..],
            mr.step
        );
        for line in crate::history::log_lines(mr) {
            let _ = writeln!(out, "    {line}");
        }
    }
    for e in &s.outbox {
        let _ = writeln!(
            out,
            "  Escalation {:?} {:?} [{:?}] {}",
            e.action, e.severity, e.state, e.title
        );
    }
    if !s.timeline.is_empty() {
        let _ = writeln!(out, "  Timeline:");
        for t in s
            .timeline
            .iter()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            let _ = writeln!(out, "    {}  {:<20} {}", t.at, t.reason, t.message);
        }
    }
    let unstable: Vec<&Release> = releases
        .iter()
        .filter(|r| r.status.as_ref().and_then(|s| s.phase) == Some(ReleasePhase::Unstable))
        .collect();
    for r in unstable {
        let why = r
            .status
            .as_ref()
            .and_then(|s| s.verdict.as_ref())
            .map(|v| v.reason.clone())
            .unwrap_or_default();
        let lifted = r
            .status
            .as_ref()
            .and_then(|s| s.r#override.as_ref())
            .map(|o| format!(" (overridden by {}: {})", o.by, o.reason))
            .unwrap_or_default();
        let _ = writeln!(out, "  Unstable: {} {why}{lifted}", r.name_any());
    }
    out
}

/// Prints the status once, or every time it changes with `watch`.
pub async fn status(
    client: &Client,
    namespace: &str,
    name: &str,
    watch: bool,
    json_out: bool,
) -> anyhow::Result<()> {
    let api = Api::<Rollout>::namespaced(client.clone(), namespace);
    let releases = Api::<Release>::namespaced(client.clone(), namespace);
    let mut last = String::new();
    loop {
        let ro = api
            .get(name)
            .await
            .with_context(|| format!("Rollout {namespace}/{name}"))?;
        let list = releases
            .list(&kube::api::ListParams::default().labels(&format!(
                "{}={name}",
                crate::rollout::workload::ROLLOUT_LABEL
            )))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        // Watching a terminal: one screen, redrawn in place. Watching into a pipe: a line per
        // change. JSON: the whole object per change.
        let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
        let lines = watch && !tty && !json_out;
        let text = if json_out {
            serde_json::to_string_pretty(&json!({"rollout": ro, "releases": list}))?
        } else if lines {
            status_line(&ro)
        } else {
            render_status(&ro, &list)
        };
        if text != last {
            if lines {
                println!("{} {text}", format_time(crate::time::unix_now()));
            } else if watch && tty && !json_out {
                print!("{CLEAR_SCREEN}{text}");
            } else {
                print!("{text}");
            }
            last = text;
        }
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Moves the cursor home and clears the screen (ANSI), for a watch that redraws in place.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

/// A Rollout in one line, for a watch into a pipe: phase, step, weights, digests and message.
pub fn status_line(ro: &Rollout) -> String {
    let s = ro.status.clone().unwrap_or_default();
    let digest = |r: &Option<crate::api::rollout::ReleaseRef>| {
        r.as_ref()
            .map_or("-".to_owned(), |r| r.short_digest.clone())
    };
    format!(
        "{:?} step {} canary {}% stable {} canary {}: {}",
        s.phase.unwrap_or_default(),
        crate::rollout::decide::step_column(s.current_step, ro.spec.steps.len()),
        s.canary_weight.unwrap_or(0),
        digest(&s.stable),
        digest(&s.canary),
        s.message.as_deref().unwrap_or("")
    )
}

/// The incident of a rollback of `name`, as receivers got it.
pub async fn incident(
    client: &Client,
    namespace: &str,
    name: &str,
    release: Option<&str>,
) -> anyhow::Result<crate::escalation::incident::Incident> {
    use crate::escalation::incident::{Sources, build};
    let (ro, releases) = rollout_and_releases(client, namespace, name).await?;
    let status = ro.status.clone().unwrap_or_default();
    let entry = select(namespace, name, &status, &releases, release).map_err(anyhow::Error::msg)?;
    Ok(build(
        &Sources {
            namespace,
            rollout: name,
            spec: &ro.spec,
            status: &status,
            releases: &releases,
            graph_base: None,
        },
        &entry,
    ))
}

/// The outbox entry `rollguard incident` reports: the rollback of the Release that `release`
/// names (its name, digest or a digest prefix), or the latest rollback. A Release whose entry
/// left the outbox long ago is reported from its own verdict.
pub fn select(
    namespace: &str,
    rollout: &str,
    status: &RolloutStatus,
    releases: &[Release],
    release: Option<&str>,
) -> Result<OutboxEntry, String> {
    let rollbacks = || {
        status
            .outbox
            .iter()
            .filter(|e| e.action == OutboxAction::Trigger && e.kind == IncidentKind::Rollback)
    };
    let Some(wanted) = release else {
        return rollbacks().next_back().cloned().ok_or_else(|| {
            format!(
                "Rollout {namespace}/{rollout} has no rollback incident; `rollguard status {rollout}` shows its timeline"
            )
        });
    };
    let wanted = wanted.trim();
    let matches = |name: &str, digest: &str| {
        name == wanted
            || digest == wanted
            || digest.strip_prefix("sha256:").is_some_and(|hex| {
                wanted.len() >= 7 && hex.starts_with(wanted.trim_start_matches("sha256:"))
            })
    };
    if let Some(e) = rollbacks().rfind(|e| matches(&e.release, &e.to_digest)) {
        return Ok(e.clone());
    }
    let r = releases
        .iter()
        .find(|r| {
            let name = r.metadata.name.clone().unwrap_or_default();
            matches(&name, &ReleaseView::from(*r).digest)
        })
        .ok_or_else(|| format!("no Release of Rollout {namespace}/{rollout} matches {wanted:?}"))?;
    let name = r.metadata.name.clone().unwrap_or_default();
    let verdict = r
        .status
        .as_ref()
        .and_then(|s| s.verdict.as_ref())
        .ok_or_else(|| format!("Release {name} was never rolled back (it has no verdict)"))?;
    let digest = ReleaseView::from(r).digest;
    Ok(OutboxEntry {
        dedup_key: crate::rollout::incidents::dedup_key(namespace, rollout, &name),
        action: OutboxAction::Trigger,
        severity: Severity::Error,
        title: format!(
            "{namespace}/{rollout} rolled back {name} ({}): {}",
            short_digest(&digest),
            verdict.reason
        ),
        release: name,
        from_digest: None,
        to_digest: digest,
        created_at: verdict.at.clone(),
        kind: IncidentKind::Rollback,
        state: crate::api::rollout::DeliveryState::Delivered,
        deliveries: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::rollout::{
        AnalysisSummary, MetricEvidence, PassForecast, ReleaseRef, RollbackStatus, RollbackStep,
        RolloutPhase, RolloutSpec, TimelineEntry,
    };
    use crate::escalation::fixtures::{NEW, rollout_status};

    fn rollout(status: RolloutStatus) -> Rollout {
        let spec: RolloutSpec = serde_json::from_value(json!({
            "targetRef": {"name": "web"},
            "steps": [{"setWeight": 10}, {"setWeight": 50}],
        }))
        .expect("spec");
        let mut ro = Rollout::new("web", spec);
        ro.metadata.namespace = Some("shop".into());
        ro.status = Some(status);
        ro
    }

    #[test]
    fn a_piped_watch_prints_one_line_per_rollout_state() {
        let status = RolloutStatus {
            phase: Some(RolloutPhase::Progressing),
            message: Some("step 1 of 2: canary at 10%".into()),
            current_step: Some(0),
            canary_weight: Some(10),
            ..RolloutStatus::default()
        };
        let line = status_line(&rollout(status));
        assert_eq!(
            line,
            "Progressing step 1/2 canary 10% stable - canary -: step 1 of 2: canary at 10%"
        );
        assert!(!line.contains('\n'));
        assert!(CLEAR_SCREEN.starts_with('\x1b'));
    }

    #[test]
    fn status_shows_phase_digests_verdicts_saga_and_timeline() {
        let digest = format!("sha256:{}", "b".repeat(64));
        let status = RolloutStatus {
            phase: Some(RolloutPhase::RollingBack),
            message: Some("rolling back web-bbbbbbbbbb".into()),
            current_step: Some(0),
            canary_weight: Some(0),
            canary: Some(ReleaseRef {
                release: "web-bbbbbbbbbb".into(),
                digest: digest.clone(),
                short_digest: "bbbbbbbbbbbb".into(),
            }),
            analysis: Some(AnalysisSummary {
                decision: "Fail".into(),
                metrics: vec![MetricEvidence {
                    metric: "error-rate".into(),
                    verdict: "Fail".into(),
                    reason: "canary 3.6% vs baseline 0.0%".into(),
                    counts: Some("canary 9/250, baseline 0/2200".into()),
                    ..MetricEvidence::default()
                }],
                ..AnalysisSummary::default()
            }),
            rollback: Some(RollbackStatus {
                release: "web-bbbbbbbbbb".into(),
                reason: "critical metric error-rate failed".into(),
                step: RollbackStep::EnsureStableCapacity,
                attempts: 2,
                last_error: Some("connection refused".into()),
                ..RollbackStatus::default()
            }),
            timeline: vec![TimelineEntry {
                at: "2026-11-22T00:00:00Z".into(),
                reason: "RollbackStarted".into(),
                message: "rolling back".into(),
            }],
            ..RolloutStatus::default()
        };
        let text = render_status(&rollout(status), &[]);
        for expected in [
            "Rollout shop/web",
            "Phase:    RollingBack",
            "Step:     1 of 2",
            &format!("Canary:   web-bbbbbbbbbb {digest}"),
            "error-rate       Fail         canary 3.6% vs baseline 0.0%",
            "canary 9/250, baseline 0/2200",
            "Rollback of web-bbbbbbbbbb: critical metric error-rate failed",
            "next: EnsureStableCapacity (failing 2x: connection refused)",
            "RollbackStarted",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn status_shows_the_forecast_of_the_pass_and_collecting_metrics() {
        let status = RolloutStatus {
            phase: Some(RolloutPhase::Progressing),
            current_step: Some(0),
            analysis: Some(AnalysisSummary {
                decision: "Running".into(),
                metrics: vec![MetricEvidence {
                    metric: "error-rate".into(),
                    verdict: "Collecting".into(),
                    reason: "canary 0.500% vs baseline 0.500%: collecting evidence".into(),
                    ..MetricEvidence::default()
                }],
                forecast: Some(PassForecast {
                    seconds: Some(420),
                    p90_seconds: Some(900),
                    message: "needs about 7 min more at 10 rps to show the canary within 1.5× \
                              of the baseline (9 in 10 within 15 min)"
                        .into(),
                }),
                ..AnalysisSummary::default()
            }),
            ..RolloutStatus::default()
        };
        let text = render_status(&rollout(status), &[]);
        for expected in [
            "Pass:     the analysis needs about 7 min more at 10 rps",
            "error-rate       Collecting   canary 0.500% vs baseline 0.500%: collecting evidence",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn a_request_is_pending_until_the_controller_acts_on_or_answers_it() {
        let r = Request {
            id: "abort-1".into(),
            action: RequestAction::Abort,
            by: "alice".into(),
            reason: None,
            to: None,
            unstable: None,
            warnings: Vec::new(),
        };
        let mut ro = rollout(RolloutStatus::default());
        assert_eq!(pending(&ro), None, "no annotation");
        ro.metadata.annotations = Some(
            [(
                REQUEST_ANNOTATION.to_owned(),
                serde_json::to_string(&r).expect("json"),
            )]
            .into(),
        );
        assert_eq!(pending(&ro).map(|p| p.id), Some("abort-1".into()));
        ro.status = Some(RolloutStatus {
            acknowledged_request: Some("abort-1".into()),
            ..RolloutStatus::default()
        });
        assert_eq!(pending(&ro), None, "acted on");
        ro.status = Some(RolloutStatus {
            acknowledged_request: Some("pause-0".into()),
            request_outcome: Some(crate::api::rollout::RequestOutcome {
                id: "abort-1".into(),
                ..Default::default()
            }),
            ..RolloutStatus::default()
        });
        assert_eq!(pending(&ro), None, "answered");
    }

    #[test]
    fn requests_round_trip_through_the_annotation() {
        let r = Request {
            id: "abort-1".into(),
            action: RequestAction::Abort,
            by: "alice".into(),
            reason: Some("pager".into()),
            to: None,
            unstable: None,
            warnings: Vec::new(),
        };
        let text = serde_json::to_string(&r).expect("json");
        assert_eq!(
            text,
            r#"{"id":"abort-1","action":"abort","by":"alice","reason":"pager"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).ok(), Some(r));
    }

    #[test]
    fn the_incident_command_finds_a_rollback_by_name_digest_or_prefix() {
        let (_, status, releases) = rollout_status();
        let latest = select("shop", "checkout", &status, &releases, None).expect("latest");
        assert_eq!(latest.release, "checkout-abcdef0123");
        for by in ["checkout-abcdef0123", NEW, "abcdef01", "sha256:abcdef0123"] {
            let e = select("shop", "checkout", &status, &releases, Some(by)).expect(by);
            assert_eq!(e.release, "checkout-abcdef0123", "{by}");
        }
        // Not in the outbox any more: reported from the Release's verdict.
        let empty = RolloutStatus::default();
        let old = select("shop", "checkout", &empty, &releases, Some("abcdef0")).expect("old");
        assert!(old.title.contains("from the Release"), "{}", old.title);
        assert!(select("shop", "checkout", &empty, &releases, None).is_err());
        let e = select(
            "shop",
            "checkout",
            &empty,
            &releases,
            Some("checkout-0000000000"),
        )
        .expect_err("never rolled back");
        assert!(e.contains("never rolled back"), "{e}");
        assert!(
            select("shop", "checkout", &empty, &releases, Some("ab")).is_err(),
            "too short a prefix"
        );
    }
}
