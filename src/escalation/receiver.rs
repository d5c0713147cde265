//! The `Notifier` trait, one implementation per kind of Receiver object: from an incident to
//! the HTTP request one receiver wants, and from its answer to a delivery result. Both directions are pure; [`super::send`] does the I/O.

use crate::api::common::SecretKeyRef;
use crate::api::endpoints::ReceiverSpec;
use crate::api::rollout::IncidentKind;
use crate::secrets::SecretData;

use super::incident::Incident;
use super::wire;

/// PagerDuty's Events API, when a receiver names no other.
pub const PAGERDUTY_EVENTS: &str = "https://events.pagerduty.com";

/// One HTTP POST with a JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// How a delivery attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum DeliveryResult {
    Delivered,
    /// The receiver has no use for this entry (a promotion on Slack, say).
    Skipped,
    /// Try again later: 429, 5xx, a network error, or a configuration that may be fixed.
    Retry(String),
    /// The receiver refused the request; sending it again would not help.
    Refused(String),
}

/// An escalation endpoint, built from a Receiver object and its Secrets.
pub trait Notifier: Send + Sync {
    /// The Receiver object's name.
    fn name(&self) -> &str;
    /// The field holding the endpoint, for error messages: `spec.slack.webhookURL`.
    fn endpoint_field(&self) -> &'static str;
    /// While an incident is open, send its Trigger again this often (Alertmanager).
    fn resend_every(&self) -> Option<i64> {
        None
    }
    /// The request for `incident`, or None when this receiver does not take this kind.
    /// `now` is RFC 3339, `unix` the same time in seconds; `delivery` is stable across retries.
    fn request(
        &self,
        incident: &Incident,
        delivery: &str,
        now: &str,
        unix: i64,
    ) -> Option<HttpRequest>;
    /// What an HTTP status means. 2xx is delivered; 429 and 5xx are retried; any other status is
    /// a refusal, named with the field most likely at fault.
    fn outcome(&self, status: u16) -> DeliveryResult {
        match status {
            200..=299 => DeliveryResult::Delivered,
            429 | 500..=599 => DeliveryResult::Retry(format!(
                "Receiver {}: {} answered HTTP {status}; retrying",
                self.name(),
                self.endpoint_field()
            )),
            _ => DeliveryResult::Refused(format!(
                "Receiver {}: {} refused the request with HTTP {status}; {}",
                self.name(),
                self.endpoint_field(),
                self.refusal_hint(status)
            )),
        }
    }
    fn refusal_hint(&self, _status: u16) -> String {
        "check the endpoint and its credentials".into()
    }
}

fn json_post(url: String, body: &serde_json::Value) -> HttpRequest {
    HttpRequest {
        url,
        headers: vec![("Content-Type".into(), "application/json".into())],
        body: serde_json::to_vec(body).unwrap_or_default(),
    }
}

pub struct Alertmanager {
    pub name: String,
    pub url: String,
    pub resend_secs: i64,
}

impl Notifier for Alertmanager {
    fn name(&self) -> &str {
        &self.name
    }
    fn endpoint_field(&self) -> &'static str {
        "spec.alertmanager.url"
    }
    fn resend_every(&self) -> Option<i64> {
        Some(self.resend_secs)
    }
    fn request(&self, i: &Incident, _: &str, now: &str, _: i64) -> Option<HttpRequest> {
        if i.kind == IncidentKind::Promoted {
            return None;
        }
        Some(json_post(
            format!("{}/api/v2/alerts", self.url.trim_end_matches('/')),
            &wire::alertmanager(i, now),
        ))
    }
}

pub struct PagerDuty {
    pub name: String,
    pub base: String,
    pub routing_key: String,
}

impl Notifier for PagerDuty {
    fn name(&self) -> &str {
        &self.name
    }
    fn endpoint_field(&self) -> &'static str {
        "spec.pagerDuty.url"
    }
    fn request(&self, i: &Incident, _: &str, _: &str, _: i64) -> Option<HttpRequest> {
        let base = self.base.trim_end_matches('/');
        Some(match (i.kind, i.action) {
            (IncidentKind::Promoted, _) => json_post(
                format!("{base}/v2/change/enqueue"),
                &wire::pagerduty_change(i, &self.routing_key),
            ),
            _ => json_post(
                format!("{base}/v2/enqueue"),
                &wire::pagerduty_event(i, &self.routing_key),
            ),
        })
    }
    fn refusal_hint(&self, status: u16) -> String {
        if status == 400 {
            "PagerDuty refuses events it cannot route: check spec.pagerDuty.routingKey (a 32-character Events v2 integration key)".into()
        } else {
            "check spec.pagerDuty.url and spec.pagerDuty.routingKey".into()
        }
    }
}

pub struct Slack {
    pub name: String,
    pub webhook_url: String,
}

impl Notifier for Slack {
    fn name(&self) -> &str {
        &self.name
    }
    fn endpoint_field(&self) -> &'static str {
        "spec.slack.webhookURL"
    }
    fn request(&self, i: &Incident, _: &str, _: &str, _: i64) -> Option<HttpRequest> {
        if i.kind == IncidentKind::Promoted {
            return None;
        }
        Some(json_post(self.webhook_url.clone(), &wire::slack(i)))
    }
    fn refusal_hint(&self, _: u16) -> String {
        "the webhook URL in the Secret named by spec.slack.webhookURL may be revoked".into()
    }
}

pub struct Webhook {
    pub name: String,
    pub url: String,
    /// The first signs; all are listed so that a rotation is visible in logs.
    pub keys: Vec<Vec<u8>>,
}

impl Notifier for Webhook {
    fn name(&self) -> &str {
        &self.name
    }
    fn endpoint_field(&self) -> &'static str {
        "spec.webhook.url"
    }
    fn request(&self, i: &Incident, delivery: &str, _: &str, unix: i64) -> Option<HttpRequest> {
        let mut req = json_post(self.url.clone(), &wire::webhook(i));
        let ts = unix.to_string();
        let key = self.keys.first()?;
        req.headers.push((
            wire::SIGNATURE_HEADER.into(),
            wire::sign(key, &ts, delivery, &req.body),
        ));
        req.headers.push((wire::TIMESTAMP_HEADER.into(), ts));
        req.headers
            .push((wire::DELIVERY_HEADER.into(), delivery.to_owned()));
        Some(req)
    }
}

/// Builds a receiver from its spec and the Secrets it names (read from `namespace`). Errors name
/// the Receiver and the field.
pub fn build(
    name: &str,
    spec: &ReceiverSpec,
    secrets: &SecretData,
    namespace: &str,
) -> Result<Box<dyn Notifier>, String> {
    let secret = |field: &str, r: &SecretKeyRef| -> Result<String, String> {
        let data = secrets.get(&r.name).ok_or_else(|| {
            format!(
                "Receiver {name}: {field}: Secret {namespace}/{} does not exist",
                r.name
            )
        })?;
        let bytes = data.get(&r.key).ok_or_else(|| {
            format!(
                "Receiver {name}: {field}: Secret {namespace}/{} has no key {:?}",
                r.name, r.key
            )
        })?;
        let text = String::from_utf8(bytes.clone()).map_err(|_| {
            format!(
                "Receiver {name}: {field}: Secret {namespace}/{} key {:?} is not UTF-8",
                r.name, r.key
            )
        })?;
        let text = text.trim().to_owned();
        if text.is_empty() {
            return Err(format!(
                "Receiver {name}: {field}: Secret {namespace}/{} key {:?} is empty",
                r.name, r.key
            ));
        }
        Ok(text)
    };
    if let Some(am) = &spec.alertmanager {
        let resend = am.resend_interval.parse().map_err(|e| {
            format!(
                "Receiver {name}: spec.alertmanager.resendInterval {:?}: {e}",
                am.resend_interval.0
            )
        })?;
        return Ok(Box::new(Alertmanager {
            name: name.to_owned(),
            url: am.url.clone(),
            resend_secs: resend.as_secs().max(1) as i64,
        }));
    }
    if let Some(pd) = &spec.pager_duty {
        return Ok(Box::new(PagerDuty {
            name: name.to_owned(),
            base: pd.url.clone().unwrap_or_else(|| PAGERDUTY_EVENTS.into()),
            routing_key: secret("spec.pagerDuty.routingKey", &pd.routing_key)?,
        }));
    }
    if let Some(slack) = &spec.slack {
        let url = secret("spec.slack.webhookURL", &slack.webhook_url)?;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(format!(
                "Receiver {name}: spec.slack.webhookURL: the Secret's value is not an http(s) URL"
            ));
        }
        return Ok(Box::new(Slack {
            name: name.to_owned(),
            webhook_url: url,
        }));
    }
    if let Some(hook) = &spec.webhook {
        let keys = hook
            .signing_keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                secret(&format!("spec.webhook.signingKeys[{i}]"), k).map(String::into_bytes)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(format!(
                "Receiver {name}: spec.webhook.signingKeys: at least one key is needed"
            ));
        }
        return Ok(Box::new(Webhook {
            name: name.to_owned(),
            url: hook.url.clone(),
            keys,
        }));
    }
    Err(format!(
        "Receiver {name}: spec: set one of alertmanager, pagerDuty, slack or webhook"
    ))
}

/// The Secrets a receiver names.
pub fn referenced_secrets(spec: &ReceiverSpec) -> Vec<String> {
    let mut out: Vec<String> = spec
        .pager_duty
        .iter()
        .map(|p| p.routing_key.name.clone())
        .chain(spec.slack.iter().map(|s| s.webhook_url.name.clone()))
        .chain(
            spec.webhook
                .iter()
                .flat_map(|w| w.signing_keys.iter().map(|k| k.name.clone())),
        )
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::rollout::OutboxAction;
    use crate::escalation::fixtures::sample;
    use crate::secrets::tests::secrets;

    fn spec(mut v: serde_json::Value) -> ReceiverSpec {
        v["allowedNamespaces"] = serde_json::json!(["*"]);
        serde_json::from_value(v).expect("receiver spec")
    }

    fn err(r: Result<Box<dyn Notifier>, String>) -> String {
        match r {
            Ok(r) => panic!("{} built", r.name()),
            Err(e) => e,
        }
    }

    #[test]
    fn bad_configuration_names_the_receiver_and_the_field() {
        let pd =
            spec(serde_json::json!({"pagerDuty": {"routingKey": {"name": "pd", "key": "key"}}}));
        assert_eq!(
            err(build("oncall", &pd, &SecretData::new(), "rollguard")),
            "Receiver oncall: spec.pagerDuty.routingKey: Secret rollguard/pd does not exist"
        );
        assert_eq!(
            err(build(
                "oncall",
                &pd,
                &secrets(&[("pd", "other", "x")]),
                "rollguard"
            )),
            "Receiver oncall: spec.pagerDuty.routingKey: Secret rollguard/pd has no key \"key\""
        );
        let slack = spec(serde_json::json!({"slack": {"webhookURL": {"name": "s", "key": "url"}}}));
        assert!(
            err(build(
                "team",
                &slack,
                &secrets(&[("s", "url", "not a url")]),
                "rollguard"
            ))
            .contains("spec.slack.webhookURL")
        );
        let hook = spec(
            serde_json::json!({"webhook": {"url": "http://127.0.0.1:1/x", "signingKeys": [{"name": "h", "key": "a"}, {"name": "h", "key": "b"}]}}),
        );
        assert_eq!(
            err(build(
                "audit",
                &hook,
                &secrets(&[("h", "a", "k1")]),
                "rollguard"
            )),
            "Receiver audit: spec.webhook.signingKeys[1]: Secret rollguard/h has no key \"b\""
        );
    }

    #[test]
    fn each_receiver_renders_its_own_request() {
        let now = "2026-11-22T10:05:00Z";
        let am = build(
            "am",
            &spec(serde_json::json!({"alertmanager": {"url": "http://127.0.0.1:9093/"}})),
            &SecretData::new(),
            "rollguard",
        )
        .expect("am");
        assert_eq!(am.resend_every(), Some(60));
        let req = am
            .request(&sample(OutboxAction::Trigger), "id", now, 0)
            .expect("request");
        assert_eq!(req.url, "http://127.0.0.1:9093/api/v2/alerts");
        let pd = build(
            "pd",
            &spec(serde_json::json!({"pagerDuty": {"routingKey": {"name": "pd", "key": "k"}, "url": "http://127.0.0.1:1"}})),
            &secrets(&[("pd", "k", "R0UT1NG\n")]),
            "rollguard",
        )
        .expect("pd");
        let req = pd
            .request(&sample(OutboxAction::Trigger), "id", now, 0)
            .expect("request");
        assert_eq!(req.url, "http://127.0.0.1:1/v2/enqueue");
        let body: serde_json::Value = serde_json::from_slice(&req.body).expect("json");
        assert_eq!(body["routing_key"], "R0UT1NG", "trimmed");
        let mut promoted = sample(OutboxAction::Trigger);
        promoted.kind = IncidentKind::Promoted;
        let req = pd.request(&promoted, "id", now, 0).expect("change");
        assert_eq!(req.url, "http://127.0.0.1:1/v2/change/enqueue");
        assert!(
            am.request(&promoted, "id", now, 0).is_none(),
            "not an alert"
        );
        let hook = build(
            "hook",
            &spec(serde_json::json!({"webhook": {"url": "http://127.0.0.1:2/in", "signingKeys": [{"name": "h", "key": "new"}, {"name": "h", "key": "old"}]}})),
            &secrets(&[("h", "new", "k-new"), ("h", "old", "k-old")]),
            "rollguard",
        )
        .expect("hook");
        let req = hook
            .request(&sample(OutboxAction::Trigger), "d-1", now, 1_700_000_000)
            .expect("request");
        let header = |n: &str| {
            req.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .expect(n)
        };
        assert_eq!(header(wire::TIMESTAMP_HEADER), "1700000000");
        assert_eq!(header(wire::DELIVERY_HEADER), "d-1");
        let keys: [&[u8]; 1] = [b"k-new"];
        assert_eq!(
            wire::verify(
                &keys,
                "1700000000",
                "d-1",
                &req.body,
                &header(wire::SIGNATURE_HEADER),
                1_700_000_001,
                300
            ),
            Ok(())
        );
    }

    #[test]
    fn statuses_map_to_outcomes() {
        let pd = PagerDuty {
            name: "oncall".into(),
            base: PAGERDUTY_EVENTS.into(),
            routing_key: "k".into(),
        };
        assert_eq!(pd.outcome(202), DeliveryResult::Delivered);
        assert!(matches!(pd.outcome(429), DeliveryResult::Retry(_)));
        assert!(matches!(pd.outcome(503), DeliveryResult::Retry(_)));
        match pd.outcome(400) {
            DeliveryResult::Refused(why) => {
                assert!(
                    why.starts_with(
                        "Receiver oncall: spec.pagerDuty.url refused the request with HTTP 400"
                    ),
                    "{why}"
                );
                assert!(why.contains("spec.pagerDuty.routingKey"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(pd.outcome(404), DeliveryResult::Refused(_)));
    }
}
