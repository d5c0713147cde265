//! `Rollout`: the delivery policy and live state of one service.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::Duration;
pub use super::common::Severity;
pub use super::rollout_status::*;

/// Delivery policy for one service: which Deployment declares the version, how traffic moves to
/// a canary, how the canary is judged, and who hears about a rollback.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "rollguard.dev",
    version = "v1alpha1",
    kind = "Rollout",
    doc = "A Deployment delivered progressively: the canary's traffic is stepped through a mesh or the replica ratio, judged against a baseline by the analysis templates, promoted on a Pass and rolled back on a Fail, with an escalation to whoever is on call.",
    namespaced,
    status = "RolloutStatus",
    shortname = "rgro",
    category = "rollguard",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Step","type":"string","jsonPath":".status.step"}"#,
    printcolumn = r#"{"name":"Weight","type":"integer","jsonPath":".status.canaryWeight"}"#,
    printcolumn = r#"{"name":"Stable","type":"string","jsonPath":".status.stable.shortDigest"}"#,
    printcolumn = r#"{"name":"Canary","type":"string","jsonPath":".status.canary.shortDigest"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.message"}"#,
    validation = kube::core::Rule::new(
        "!(self.spec.targetRef.name in [self.metadata.name + '-stable', \
         self.metadata.name + '-canary', self.metadata.name + '-baseline'])"
    ).message("targetRef.name is the name of one of the Rollout's own Deployments (<rollout>-stable, -canary or -baseline), which rollguard scales and overwrites; rename the target or the Rollout")
     .field_path(".spec.targetRef.name")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "has(self.analysis) != (has(self.withoutAnalysis) && self.withoutAnalysis)"
).message("set analysis, or withoutAnalysis: true to promote canaries on their steps' timing alone (not both)"))]
pub struct RolloutSpec {
    /// The user's Deployment whose pod template declares the desired version, by digest.
    /// rollguard scales it to zero and treats it as the source of truth only.
    pub target_ref: TargetRef,
    /// How canary traffic is weighted. Without one, the canary's share follows the replica
    /// counts of the canary and stable Deployments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_router: Option<TrafficRouter>,
    /// The canary steps, in order. setWeight values never decrease.
    #[x_kube(validation = kube::core::Rule::new(
        "self.filter(s, has(s.setWeight)).map(s, s.setWeight).isSorted()"
    ).message("setWeight steps must never decrease"))]
    #[schemars(length(min = 1, max = 32))]
    pub steps: Vec<Step>,
    /// What judges the canary while each step lasts. A step is left only on its Pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<RolloutAnalysis>,
    /// Promote canaries with no analysis, on their steps' timing alone. Required when
    /// `analysis` is absent, so that an unjudged rollout is a choice written down.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub without_analysis: bool,
    /// What the canary is compared against: the stable pods (default), or a fresh baseline
    /// Deployment on the stable digest started together with the canary.
    #[serde(default)]
    pub baseline: BaselineMode,
    /// How long a canary may take to become ready before the Rollout rolls back.
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline: Duration,
    /// Refuse pod templates whose images are not pinned by digest (`image@sha256:…`).
    #[serde(default = "default_true")]
    pub require_digest: bool,
    /// After promotion, keep judging for this long; a failure then restores the previous
    /// stable digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_promotion_window: Option<Duration>,
    /// After a rollback, how long the stable must serve healthy before the incident is
    /// resolved.
    #[serde(default = "default_recovery_window")]
    pub recovery_window: Duration,
    /// Who is told when a release is rolled back, and how loudly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<Escalation>,
    /// How many Releases to keep per Rollout. Unstable Releases a target still refers to are
    /// never pruned.
    #[serde(default = "default_history_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub history_limit: i32,
    /// When a step whose time is up is left: on a Pass (requirePass, the default), or with no
    /// Fail once the canary has served minRequests (noFail). A step's own promotion overrides
    /// it.
    #[serde(default)]
    pub promotion: Promotion,
}

/// When a step whose duration has elapsed is left.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Promotion {
    /// Only on a Pass: the canary is shown to be within toleratedRatio of its baseline. At low
    /// traffic that can take many minutes; the status says how many.
    #[default]
    RequirePass,
    /// When the step's duration has elapsed, no metric has failed, and the canary has served
    /// each counting metric's minRequests. Faster at low traffic; a canary slightly worse than
    /// its baseline may be promoted (see the analysis documentation for the odds).
    NoFail,
}

impl std::fmt::Display for Promotion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Promotion::RequirePass => "requirePass",
            Promotion::NoFail => "noFail",
        })
    }
}

fn default_progress_deadline() -> Duration {
    Duration::new("10m")
}
fn default_recovery_window() -> Duration {
    Duration::new("30s")
}
fn default_true() -> bool {
    true
}
fn default_history_limit() -> i32 {
    10
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// Name of the Deployment in the Rollout's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Exactly one router names the route object whose weights rollguard writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "[has(self.gatewayAPI), has(self.istio), has(self.smi)].filter(x, x).size() == 1"
).message("set exactly one of gatewayAPI, istio or smi"))]
pub struct TrafficRouter {
    /// A Gateway API HTTPRoute whose backendRefs name the stable and canary Services.
    #[serde(
        default,
        rename = "gatewayAPI",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway_api: Option<GatewayApiRouter>,
    /// An Istio VirtualService, optionally with DestinationRule subsets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istio: Option<IstioRouter>,
    /// An SMI TrafficSplit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smi: Option<SmiRouter>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayApiRouter {
    /// Name of the HTTPRoute in the Rollout's namespace.
    #[schemars(length(min = 1))]
    pub http_route: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IstioRouter {
    /// Name of the VirtualService in the Rollout's namespace.
    #[schemars(length(min = 1))]
    pub virtual_service: String,
    /// Only these named http routes are weighted; all of them when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// Weight subsets of one host instead of separate Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_rule: Option<DestinationRuleSubsets>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRuleSubsets {
    /// Name of the DestinationRule in the Rollout's namespace.
    pub name: String,
    /// The subset whose pods the stable arm's labels select.
    pub stable_subset: String,
    /// The subset whose pods the canary arm's labels select.
    pub canary_subset: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmiRouter {
    /// Name of the TrafficSplit in the Rollout's namespace.
    #[schemars(length(min = 1))]
    pub traffic_split: String,
}

/// One canary step: set a weight, or pause.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.setWeight) != has(self.pause)")
    .message("a step sets a weight or pauses, not both"))]
pub struct Step {
    /// Percent of traffic for the canary. The step lasts `duration` (default: until the
    /// analysis has enough evidence) and advances only on a Pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self >= 0 && self <= 100")
        .message("setWeight must be within 0..100"))]
    pub set_weight: Option<i32>,
    /// Minimum time at this weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
    /// Hold here: for `duration` when set, else until `rollguard resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
    /// When this step is left once its time is up; the Rollout's promotion when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Promotion>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pause {
    /// How long to hold; until `rollguard resume` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutAnalysis {
    /// Templates to run for the whole canary, continuously.
    #[schemars(length(min = 1, max = 8))]
    pub templates: Vec<TemplateRef>,
    /// Values for the templates' arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub args: Vec<ArgValue>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    /// Name of the AnalysisTemplate (or ClusterAnalysisTemplate).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Refer to a ClusterAnalysisTemplate instead of an AnalysisTemplate in this namespace.
    #[serde(default)]
    pub cluster_scope: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArgValue {
    /// The argument's name, as the template declares it.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Its value, checked against the argument's type before it is rendered.
    #[schemars(length(max = 1024))]
    pub value: String,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum BaselineMode {
    /// Compare against the stable pods serving the rest of the traffic.
    #[default]
    Stable,
    /// Start `<name>-baseline` on the stable digest with the canary's replicas and weight.
    Fresh,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Escalation {
    /// Names of cluster-scoped Receivers; each gets every incident.
    #[schemars(length(min = 1, max = 8))]
    pub receivers: Vec<String>,
    /// Severity of an automatic rollback; rollbacks that fail to recover are always critical.
    #[serde(default)]
    pub severity: Severity,
    /// Link to the service's runbook, shown to the incident commander: an https URL with no
    /// spaces, `|`, `<` or `>` (which would let it forge a chat link's text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https://[^\s|<>]+$"), length(max = 2048))]
    pub runbook: Option<String>,
}
