//! The admin-owned, cluster-scoped kinds that hold endpoints: where metrics are read
//! (`MetricProvider`) and where escalations go (`Receiver`). Credentials live in Secrets in the
//! controller's namespace; these objects only name them.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{Duration, SecretKeyRef};

const HTTP_URL: &str = r"^https?://[^\s/$.?#][^\s]*$";

/// Whether an allowlist of namespaces (`*` for all) admits `namespace`.
pub fn namespace_allowed(allowed: &[String], namespace: &str) -> bool {
    allowed.iter().any(|n| n == "*" || n == namespace)
}

#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "rollguard.dev",
    version = "v1alpha1",
    kind = "MetricProvider",
    doc = "A Prometheus-compatible endpoint, with its credentials, that the analysis templates of the allowed namespaces may query.",
    shortname = "rgmp",
    category = "rollguard",
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.prometheus.address"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
/// A Prometheus-compatible endpoint that analysis templates may query, and the namespaces
/// allowed to.
pub struct MetricProviderSpec {
    /// The Prometheus (or compatible) HTTP API the queries go to.
    pub prometheus: PrometheusEndpoint,
    /// Namespaces whose templates may use this provider; `*` allows all.
    #[schemars(length(min = 1))]
    pub allowed_namespaces: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!(has(self.bearerToken) && has(self.basicAuth))")
    .message("use bearerToken or basicAuth, not both"))]
pub struct PrometheusEndpoint {
    /// Base URL, e.g. `http://prometheus.monitoring:9090`.
    #[schemars(regex(pattern = HTTP_URL))]
    pub address: String,
    /// HTTP timeout of one query.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// How often Prometheus scrapes the series this provider answers for: errorRate and latency
    /// metrics are measured this often when it is shorter than their interval, since a new
    /// sample can exist no sooner. Unset: read from Prometheus's configuration
    /// (`global.scrape_interval`) when an analysis starts; if that cannot be read, each metric's
    /// own interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrape_interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<SecretKeyRef>,
    /// HTTP basic authentication, from Secrets in the controller's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// PEM bundle of the CAs to trust for an https address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<SecretKeyRef>,
    /// Accept any TLS certificate. For tests only: the answers decide rollbacks.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

fn default_timeout() -> Duration {
    Duration::new("5s")
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    pub username: SecretKeyRef,
    pub password: SecretKeyRef,
}

/// Where escalations go: exactly one of Alertmanager, PagerDuty, Slack or a signed webhook.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "rollguard.dev",
    version = "v1alpha1",
    kind = "Receiver",
    doc = "Where incidents go: an Alertmanager, PagerDuty, Slack or a signed webhook, for the Rollouts of the allowed namespaces.",
    shortname = "rgrcv",
    category = "rollguard",
    status = "ReceiverStatus",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = kube::core::Rule::new(
    "[has(self.alertmanager), has(self.pagerDuty), has(self.slack), has(self.webhook)].filter(x, x).size() == 1"
).message("set exactly one of alertmanager, pagerDuty, slack or webhook"))]
#[serde(rename_all = "camelCase")]
pub struct ReceiverSpec {
    /// Namespaces whose Rollouts may escalate here; `*` allows all. A Rollout elsewhere that
    /// names this Receiver gets a refusal, and the Receiver never sees its incident text.
    #[schemars(length(min = 1))]
    pub allowed_namespaces: Vec<String>,
    /// Post incidents to an Alertmanager as alerts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<AlertmanagerReceiver>,
    /// Send incidents to PagerDuty (Events API v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pager_duty: Option<PagerDutyReceiver>,
    /// Post incidents to a Slack incoming webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackReceiver>,
    /// POST incidents as signed JSON to an HTTP endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookReceiver>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerReceiver {
    /// Base URL of Alertmanager; alerts go to `<url>/api/v2/alerts`.
    #[schemars(regex(pattern = HTTP_URL))]
    pub url: String,
    /// While an incident is open, the alert is sent again this often.
    #[serde(default = "default_resend")]
    pub resend_interval: Duration,
}

fn default_resend() -> Duration {
    Duration::new("1m")
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PagerDutyReceiver {
    /// The Events v2 integration (routing) key.
    pub routing_key: SecretKeyRef,
    /// Base URL of the Events API: events go to `<url>/v2/enqueue` and change events to
    /// `<url>/v2/change/enqueue`. PagerDuty's own when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = HTTP_URL))]
    pub url: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlackReceiver {
    /// The incoming-webhook URL: the URL is the credential, so it lives in a Secret.
    #[serde(rename = "webhookURL")]
    pub webhook_url: SecretKeyRef,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookReceiver {
    /// Where incidents are POSTed: an http or https URL.
    #[schemars(regex(pattern = HTTP_URL))]
    pub url: String,
    /// HMAC-SHA256 keys; the first signs, and two are accepted while a key is rotated.
    #[schemars(length(min = 1, max = 2))]
    pub signing_keys: Vec<SecretKeyRef>,
}

/// What the controller found when it used the Receiver.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceiverStatus {
    /// Conditions the controller reports on this Receiver.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<super::common::Condition>,
}
