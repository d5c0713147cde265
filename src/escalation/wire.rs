//! Each receiver's wire format, as pure functions of an [`Incident`]: Alertmanager API v2,
//! PagerDuty Events v2 (and change events), Slack incoming webhooks, and the generic JSON webhook
//! with its HMAC signature.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::incident::Incident;
use crate::api::rollout::{IncidentKind, OutboxAction, Severity};

/// The `alertname` label of each kind of incident.
pub fn alertname(kind: IncidentKind) -> &'static str {
    match kind {
        IncidentKind::Rollback => "RollguardRollback",
        IncidentKind::RollbackIncomplete => "RollguardRollbackIncomplete",
        IncidentKind::NotRecovered => "RollguardRollbackNotRecovered",
        IncidentKind::Blocked => "RollguardBlocked",
        IncidentKind::Promoted => "RollguardPromoted",
    }
}

fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

/// The body of `POST /api/v2/alerts`: one alert. Labels identify it and stay few (no digests);
/// everything a human reads goes in annotations. A Resolve sends the same labels with `endsAt`.
pub fn alertmanager(incident: &Incident, now: &str) -> Value {
    let mut annotations = serde_json::Map::new();
    let mut put = |k: &str, v: String| {
        if !v.is_empty() {
            annotations.insert(k.to_owned(), Value::String(v));
        }
    };
    put("summary", incident.title.clone());
    put("description", incident.state.clone());
    put("change", incident.change_line());
    put(
        "from_digest",
        incident.change.from_digest.clone().unwrap_or_default(),
    );
    put("to_digest", incident.change.to_digest.clone());
    put(
        "change_cause",
        incident.change.change_cause.clone().unwrap_or_default(),
    );
    put("evidence", incident.evidence_text());
    put("timeline", incident.timeline_text());
    put("actions", incident.actions_text());
    put(
        "runbook_url",
        incident.links.runbook.clone().unwrap_or_default(),
    );
    put("rollout", incident.links.rollout.clone());
    put("dedup_key", incident.dedup_key.clone());
    let mut alert = json!({
        "labels": {
            "alertname": alertname(incident.kind),
            "severity": severity_word(incident.severity),
            "namespace": incident.namespace,
            "rollout": incident.rollout,
            "release": incident.release,
        },
        "annotations": annotations,
        "startsAt": incident.started_at,
    });
    if let Some((_, url)) = incident.links.graphs.first() {
        alert["generatorURL"] = Value::String(url.clone());
    }
    if incident.action == OutboxAction::Resolve {
        alert["endsAt"] = Value::String(now.to_owned());
    }
    json!([alert])
}

/// Events v2 caps `dedup_key` at 255 characters and `summary` at 1024.
fn cap(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// A PagerDuty Events v2 `trigger` or `resolve` for `POST /v2/enqueue`.
pub fn pagerduty_event(incident: &Incident, routing_key: &str) -> Value {
    let dedup_key = cap(&incident.dedup_key, 255);
    if incident.action == OutboxAction::Resolve {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key,
        });
    }
    let links: Vec<Value> = incident
        .links
        .runbook
        .iter()
        .map(|r| json!({"href": r, "text": "Runbook"}))
        .chain(
            incident
                .links
                .graphs
                .iter()
                .map(|(name, url)| json!({"href": url, "text": format!("Graph: {name}")})),
        )
        .collect();
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {
            "summary": cap(&incident.title, 1024),
            "source": format!("{}/{}", incident.namespace, incident.rollout),
            "severity": severity_word(incident.severity),
            "timestamp": incident.started_at,
            "component": incident.rollout,
            "group": incident.namespace,
            "class": alertname(incident.kind),
            "custom_details": {
                "state": incident.state,
                "change": incident.change,
                "evidence": incident.evidence,
                "timeline": incident.timeline,
                "actions": incident.actions,
                "rollout": incident.links.rollout,
            },
        },
        "links": links,
        "client": "rollguard",
    })
}

/// A PagerDuty change event for `POST /v2/change/enqueue`: a promotion, so that responders see
/// recent changes next to their incidents.
pub fn pagerduty_change(incident: &Incident, routing_key: &str) -> Value {
    json!({
        "routing_key": routing_key,
        "payload": {
            "summary": cap(&incident.title, 1024),
            "timestamp": incident.created_at,
            "source": format!("{}/{}", incident.namespace, incident.rollout),
            "custom_details": {
                "change": incident.change,
                "rollout": incident.links.rollout,
            },
        },
        "links": incident.links.runbook.iter().map(|r| json!({"href": r, "text": "Runbook"})).collect::<Vec<_>>(),
    })
}

/// Slack's three control characters, escaped so that user-controlled text (names, change
/// causes, reasons) can neither mention `<!channel>` nor forge a `<url|link>`.
pub fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Section text is limited to 3000 characters; keep a margin.
fn slack_cap(text: &str) -> String {
    cap(text, 2800)
}

/// A section field is limited to 2000 characters.
fn slack_field(text: &str) -> String {
    cap(text, 1900)
}

/// A link in Slack's `<url|text>` markup: a `|` in either would start the text early (so that
/// a URL could show text of its choosing), and Slack has no escape for it.
fn slack_link(url: &str, text: &str) -> String {
    format!(
        "<{}|{}>",
        slack_escape(url).replace('|', "%7C"),
        slack_escape(text).replace('|', "¦")
    )
}

/// A Slack incoming-webhook message: blocks, and `text` as the notification fallback. Every
/// string from the cluster is escaped; only our own link markup is left unescaped.
pub fn slack(incident: &Incident) -> Value {
    let esc = |t: &str| slack_escape(t);
    let prefix = match (incident.action, incident.kind) {
        (OutboxAction::Resolve, _) => ":white_check_mark: Resolved",
        (_, IncidentKind::Promoted) => ":rocket: Promoted",
        (_, IncidentKind::Blocked) => ":no_entry: Blocked",
        (_, _) if incident.severity == Severity::Critical => ":rotating_light: Critical",
        _ => ":warning: Rolled back",
    };
    let fallback = slack_cap(&format!("{prefix}: {}", esc(&incident.title)));
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": slack_cap(&format!("*{prefix}:* {}", esc(&incident.title)))}}),
        json!({"type": "section", "fields": [
            {"type": "mrkdwn", "text": slack_field(&format!(
                "*Change*\n{}{}",
                esc(&incident.change_line()),
                incident.change.change_cause.as_ref().map(|c| format!("\n{}", esc(c))).unwrap_or_default()
            ))},
            {"type": "mrkdwn", "text": slack_field(&format!("*State*\n{}", esc(&incident.state)))},
        ]}),
    ];
    if incident.action == OutboxAction::Trigger && !incident.evidence.is_empty() {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn",
            "text": slack_cap(&format!("*Evidence*\n```{}```", esc(&incident.evidence_text())))}}));
    }
    if incident.action == OutboxAction::Trigger && !incident.actions.is_empty() {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn",
            "text": slack_cap(&format!("*Actions taken*\n{}", esc(&incident.actions_text())))}}));
    }
    let mut links = Vec::new();
    if let Some(r) = &incident.links.runbook {
        links.push(slack_link(r, "Runbook"));
    }
    for (name, url) in &incident.links.graphs {
        links.push(slack_link(url, name));
    }
    links.push(format!("`{}`", esc(&incident.links.rollout)));
    blocks.push(json!({"type": "context", "elements": [
        {"type": "mrkdwn", "text": slack_cap(&links.join(" · "))},
        {"type": "mrkdwn", "text": slack_cap(&format!("incident `{}`", esc(&incident.dedup_key)))},
    ]}));
    json!({"text": fallback, "blocks": blocks})
}

/// The generic webhook's body: the whole incident, versioned.
pub fn webhook(incident: &Incident) -> Value {
    json!({
        "apiVersion": "rollguard.dev/v1alpha1",
        "kind": "Incident",
        "incident": incident,
    })
}

/// Headers of a signed webhook delivery.
pub const SIGNATURE_HEADER: &str = "X-Signature";
pub const TIMESTAMP_HEADER: &str = "X-Rollguard-Timestamp";
pub const DELIVERY_HEADER: &str = "X-Rollguard-Delivery";

/// The MAC over `<timestamp>.<delivery>.<body>`: the delivery id is signed, so a receiver
/// that drops ids it has seen cannot be fooled by a replay with a fresh id.
fn mac(key: &[u8], timestamp: &str, delivery: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(delivery.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// `sha256=<hex HMAC-SHA256 of "<timestamp>.<delivery>.<body>">`.
pub fn sign(key: &[u8], timestamp: &str, delivery: &str, body: &[u8]) -> String {
    let bytes = mac(key, timestamp, delivery, body).finalize().into_bytes();
    let mut out = String::from("sha256=");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the timestamp is not a unix time in seconds")]
    BadTimestamp,
    #[error("the timestamp is {0}s away from now, beyond the tolerance")]
    Stale(i64),
    #[error("the signature is not sha256=<hex>")]
    Malformed,
    #[error("no key produces this signature")]
    Mismatch,
}

/// What a receiver does with a delivery: the timestamp must be within `tolerance` seconds of
/// `now`, and the signature over timestamp, delivery id and body must verify with one of `keys`
/// (two during a rotation). The comparison is constant-time, on bytes. Any input, however
/// malformed, is an error, never a panic.
pub fn verify(
    keys: &[&[u8]],
    timestamp: &str,
    delivery: &str,
    body: &[u8],
    signature: &str,
    now: i64,
    tolerance: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
    let skew = now.checked_sub(ts).ok_or(VerifyError::BadTimestamp)?;
    if skew.checked_abs().is_none_or(|s| s > tolerance) {
        return Err(VerifyError::Stale(skew));
    }
    let hex = signature
        .strip_prefix("sha256=")
        .ok_or(VerifyError::Malformed)?
        .as_bytes();
    if hex.len() != 64 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return Err(VerifyError::Malformed);
    }
    let nibble = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
    let sig: Vec<u8> = hex
        .chunks(2)
        .map(|pair| (nibble(pair[0]) << 4) | nibble(pair[1]))
        .collect();
    for key in keys {
        if mac(key, timestamp, delivery, body)
            .verify_slice(&sig)
            .is_ok()
        {
            return Ok(());
        }
    }
    Err(VerifyError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::escalation::fixtures::sample;

    #[test]
    fn alertmanager_labels_identify_and_annotations_explain() {
        let body = alertmanager(&sample(OutboxAction::Trigger), "2026-11-22T10:05:00Z");
        let alert = &body[0];
        assert_eq!(
            alert["labels"],
            json!({"alertname": "RollguardRollback", "severity": "error", "namespace": "shop", "rollout": "checkout", "release": "checkout-abcdef0123"})
        );
        let labels = alert["labels"].as_object().expect("labels");
        assert!(
            labels
                .values()
                .all(|v| !v.as_str().unwrap_or("").contains("sha256")),
            "no digests in labels"
        );
        let a = &alert["annotations"];
        assert!(
            a["to_digest"]
                .as_str()
                .is_some_and(|d| d.starts_with("sha256:abcdef"))
        );
        assert!(
            a["evidence"]
                .as_str()
                .is_some_and(|e| e.contains("errors Fail: canary 4.200%"))
        );
        assert_eq!(a["runbook_url"], "https://runbooks.example/checkout");
        assert_eq!(alert["startsAt"], "2026-11-22T10:00:12Z");
        assert!(alert.get("endsAt").is_none(), "an open alert has no end");
        assert!(
            alert["generatorURL"]
                .as_str()
                .is_some_and(|u| u.contains("/graph?g0.expr="))
        );
        let resolved = alertmanager(&sample(OutboxAction::Resolve), "2026-11-22T10:09:00Z");
        assert_eq!(resolved[0]["labels"], alert["labels"], "the same alert");
        assert_eq!(resolved[0]["endsAt"], "2026-11-22T10:09:00Z");
    }

    #[test]
    fn pagerduty_events_follow_events_v2() {
        let t = pagerduty_event(&sample(OutboxAction::Trigger), "R0UT1NGKEY");
        assert_eq!(t["event_action"], "trigger");
        assert_eq!(t["routing_key"], "R0UT1NGKEY");
        assert_eq!(
            t["dedup_key"],
            "rollguard/shop/checkout/checkout-abcdef0123"
        );
        let p = &t["payload"];
        for field in ["summary", "source", "severity"] {
            assert!(p[field].is_string(), "payload.{field} is required");
        }
        assert_eq!(p["severity"], "error");
        assert_eq!(p["source"], "shop/checkout");
        assert!(p["custom_details"]["evidence"][0]["queries"][0]["promql"].is_string());
        assert_eq!(
            t["links"][0],
            json!({"href": "https://runbooks.example/checkout", "text": "Runbook"})
        );
        let r = pagerduty_event(&sample(OutboxAction::Resolve), "R0UT1NGKEY");
        assert_eq!(
            r,
            json!({"routing_key": "R0UT1NGKEY", "event_action": "resolve", "dedup_key": "rollguard/shop/checkout/checkout-abcdef0123"})
        );
        let c = pagerduty_change(&sample(OutboxAction::Trigger), "R0UT1NGKEY");
        assert!(c["payload"]["summary"].is_string() && c.get("event_action").is_none());
    }

    #[test]
    fn pagerduty_caps_summary_and_dedup_key() {
        let mut i = sample(OutboxAction::Trigger);
        i.title = "x".repeat(2000);
        i.dedup_key = "k".repeat(300);
        let t = pagerduty_event(&i, "k");
        assert_eq!(
            t["payload"]["summary"].as_str().map(|s| s.chars().count()),
            Some(1024)
        );
        assert_eq!(
            t["dedup_key"].as_str().map(|s| s.chars().count()),
            Some(255)
        );
    }

    #[test]
    fn slack_escapes_every_user_controlled_string() {
        let mut i = sample(OutboxAction::Trigger);
        i.rollout = "<!channel>".into();
        i.title = "<!channel> <https://evil|click> & more".into();
        i.links.rollout = "kubectl -n shop rollguard status <!channel>".into();
        let body = slack(&i);
        let text = body.to_string();
        assert!(!text.contains("<!channel>"), "{text}");
        assert!(!text.contains("<https://evil|click>"), "{text}");
        assert!(
            text.contains("&lt;!channel&gt; &lt;https://evil|click&gt; &amp; more"),
            "{text}"
        );
        // The change cause from the Release is escaped too.
        assert!(
            text.contains("deploy &lt;!channel&gt; &amp; friends"),
            "{text}"
        );
        assert!(
            body["text"]
                .as_str()
                .is_some_and(|t| t.contains("Rolled back")),
            "fallback text"
        );
        assert!(body["blocks"].as_array().is_some_and(|b| b.len() >= 3));
        // Our own links stay links.
        assert!(
            text.contains("<https://runbooks.example/checkout|Runbook>"),
            "{text}"
        );
        let resolved = slack(&sample(OutboxAction::Resolve));
        assert!(
            resolved["text"]
                .as_str()
                .is_some_and(|t| t.starts_with(":white_check_mark: Resolved"))
        );
    }

    #[test]
    fn slack_payloads_stay_within_the_apis_limits() {
        // Every string from the cluster at its longest, escaping included (`&` becomes `&amp;`).
        let mut i = sample(OutboxAction::Trigger);
        i.title = "y&".repeat(3000);
        i.change.change_cause = Some("<".repeat(2618));
        i.state = "s".repeat(3000);
        i.dedup_key = "k".repeat(3000);
        i.links.runbook = Some(format!("https://r.example/{}", "a".repeat(4000)));
        let body = slack(&i);
        let chars = |v: &Value| v.as_str().map_or(0, |t| t.chars().count());
        assert!(chars(&body["text"]) <= 3000, "fallback text");
        for b in body["blocks"].as_array().into_iter().flatten() {
            assert!(chars(&b["text"]["text"]) <= 3000, "section text");
            for f in b["fields"].as_array().into_iter().flatten() {
                assert!(chars(&f["text"]) <= 2000, "field: {}", chars(&f["text"]));
            }
            for e in b["elements"].as_array().into_iter().flatten() {
                assert!(chars(&e["text"]) <= 3000, "context element");
            }
        }
    }

    #[test]
    fn a_link_cannot_forge_its_text() {
        let mut i = sample(OutboxAction::Trigger);
        i.links.runbook = Some("https://evil.example/x|Approve rollback now".into());
        let text = slack(&i).to_string();
        assert!(!text.contains("|Approve"), "{text}");
        assert!(text.contains("<https://evil.example/x%7CApprove rollback now|Runbook>"));
    }

    #[test]
    fn signatures_verify_and_fail_on_tamper_staleness_and_unknown_keys() {
        let body = serde_json::to_vec(&webhook(&sample(OutboxAction::Trigger))).expect("json");
        let sig = sign(b"new-key", "1700000000", "d-1", &body);
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        let keys: [&[u8]; 2] = [b"old-key", b"new-key"];
        let check = |ts: &str, id: &str, body: &[u8], sig: &str, now: i64| {
            verify(&keys, ts, id, body, sig, now, 300)
        };
        assert_eq!(
            check("1700000000", "d-1", &body, &sig, 1_700_000_100),
            Ok(())
        );
        let mut tampered = body.clone();
        tampered[10] ^= 1;
        assert_eq!(
            check("1700000000", "d-1", &tampered, &sig, 1_700_000_100),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check("1700000000", "d-1", &body, &sig, 1_700_001_000),
            Err(VerifyError::Stale(1000))
        );
        // The timestamp and the delivery id are signed: moving either breaks the signature.
        assert_eq!(
            check("1700000050", "d-1", &body, &sig, 1_700_000_100),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check("1700000000", "d-2", &body, &sig, 1_700_000_100),
            Err(VerifyError::Mismatch),
            "a replay under a fresh delivery id"
        );
        let only_old: [&[u8]; 1] = [b"old-key"];
        assert_eq!(
            verify(
                &only_old,
                "1700000000",
                "d-1",
                &body,
                &sig,
                1_700_000_100,
                300
            ),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            check("1700000000", "d-1", &body, "md5=abc", 1_700_000_100),
            Err(VerifyError::Malformed)
        );
        // What panicked or overflowed before: 64 bytes that are not all ASCII, i64::MIN.
        let wide = format!("sha256={}", "é".repeat(32));
        assert_eq!(wide.len(), 7 + 64);
        assert_eq!(
            check("1700000000", "d-1", &body, &wide, 1_700_000_100),
            Err(VerifyError::Malformed)
        );
        assert!(check(&i64::MIN.to_string(), "d-1", &body, &sig, 1_700_000_100).is_err());
        assert!(check("1", "d-1", &body, &sig, i64::MIN).is_err());
        // Independently computed (Python's hmac):
        // HMAC-SHA256("Jefe", "1700000000.d-1.what do ya want for nothing?").
        assert_eq!(
            sign(
                b"Jefe",
                "1700000000",
                "d-1",
                b"what do ya want for nothing?"
            ),
            "sha256=9337792f8d19f04dd7e0d7c244cce5781d7c537e2f28e1adc25cc9786f99acb2"
        );
    }
}
