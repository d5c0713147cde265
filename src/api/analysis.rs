//! `AnalysisTemplate` and `ClusterAnalysisTemplate`: the metrics that judge a canary.
//!
//! Templates hold queries and thresholds, never endpoints: a metric names an admin-owned,
//! cluster-scoped `MetricProvider`. The schema has no URL field, and unknown fields are refused
//! by strict field validation, so a tenant cannot point rollguard anywhere.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::Duration;

/// Metrics, their judgments and the run-level rules. Shared by both template kinds.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "rollguard.dev",
    version = "v1alpha1",
    kind = "AnalysisTemplate",
    doc = "How a canary is judged: metrics with their Prometheus queries and the judgment of each (threshold, relative, errorRate or latency), and what an inconclusive run leads to.",
    namespaced,
    shortname = "rgat",
    category = "rollguard",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = kube::core::Rule::new(
    "self.metrics.all(m, self.metrics.exists_one(n, n.name == m.name))"
).message("metric names must be unique").field_path(".metrics"))]
#[serde(rename_all = "camelCase")]
pub struct AnalysisTemplateSpec {
    /// Typed arguments, filled from the Rollout's `analysis.args`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub args: Vec<Argument>,
    /// What is measured and how each measurement is judged (1 to 16 metrics, unique names).
    #[schemars(length(min = 1, max = 16))]
    pub metrics: Vec<Metric>,
    /// What a run of Inconclusive measurements leads to.
    #[serde(default)]
    pub on_inconclusive: InconclusiveAction,
    /// How many Inconclusive measurements in a row trigger `onInconclusive`.
    #[serde(default = "default_inconclusive_limit")]
    #[schemars(range(min = 1, max = 1000))]
    pub inconclusive_limit: i32,
}

fn default_inconclusive_limit() -> i32 {
    3
}

/// The same spec as an AnalysisTemplate, shared by every namespace.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "rollguard.dev",
    version = "v1alpha1",
    kind = "ClusterAnalysisTemplate",
    doc = "An AnalysisTemplate shared by every namespace; a Rollout refers to it with clusterScope: true.",
    shortname = "rgcat",
    category = "rollguard",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct ClusterAnalysisTemplateSpec {
    #[serde(flatten)]
    pub template: AnalysisTemplateSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Argument {
    /// The name queries use as `{{args.NAME}}`: a letter, then letters, digits, `_` or `-`
    /// (`service-name`, as Argo Rollouts templates write it).
    #[schemars(regex(pattern = r"^[a-zA-Z][a-zA-Z0-9_-]*$"), length(max = 63))]
    pub name: String,
    /// The type the value is checked against before it is rendered into a query.
    #[serde(rename = "type")]
    pub kind: ArgumentType,
    /// The value when the Rollout gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub default: Option<String>,
    /// What the argument means, for whoever fills it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ArgumentType {
    /// Rendered as an escaped PromQL string literal.
    String,
    Integer,
    Number,
    Duration,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum InconclusiveAction {
    #[default]
    Pause,
    Rollback,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum NoDataAction {
    /// No data is never a Pass.
    #[default]
    Inconclusive,
    Fail,
}

/// One metric with exactly one judgment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "[has(self.threshold), has(self.relative), has(self.errorRate), has(self.latency)].filter(x, x).size() == 1"
).message("a metric has exactly one judgment: threshold, relative, errorRate or latency"))]
pub struct Metric {
    /// The metric's name, unique in its template; lowercase letters, digits and `-`.
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    pub name: String,
    /// Name of the cluster-scoped MetricProvider that answers the queries.
    pub provider: String,
    /// How often the metric is measured. errorRate and latency metrics are measured more often
    /// when their provider's Prometheus scrapes more often: their tests stay valid however
    /// often they look, and each new sample is evidence.
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// A Fail rolls back at once.
    #[serde(default)]
    pub critical: bool,
    /// Measured and reported, never acted on.
    #[serde(default)]
    pub dry_run: bool,
    /// What a measurement without data is: Inconclusive (the default) or Fail.
    #[serde(default)]
    pub on_no_data: NoDataAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Threshold>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relative: Option<Relative>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<ErrorRate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
}

fn default_interval() -> Duration {
    Duration::new("10s")
}

/// The canary's scalar must lie within [min, max].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.min) || has(self.max)").message("set min, max or both"))]
pub struct Threshold {
    /// PromQL for one arm, with `{{arm}}`, `{{namespace}}` and `{{args.NAME}}` placeholders
    /// (at most 4096 bytes).
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
    /// The lowest value that passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The highest value that passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// Pass while canary ≤ baseline × maxRatio + maxDelta, on one query evaluated for each arm.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Relative {
    /// PromQL evaluated once per arm (at most 4096 bytes).
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
    /// The most the canary's value may be, as a multiple of the baseline's.
    pub max_ratio: f64,
    /// Added to baseline × maxRatio: an absolute allowance (default 0).
    #[serde(default)]
    pub max_delta: f64,
}

/// A sequential test on request counts that the canary's error proportion exceeds the
/// baseline's by more than `toleratedRatio`, with a practical floor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorRate {
    /// Counter of all requests of one arm (PromQL, at most 4096 bytes).
    #[schemars(length(min = 1, max = 4096))]
    pub requests: String,
    /// Counter of failed requests of one arm (PromQL, at most 4096 bytes).
    #[schemars(length(min = 1, max = 4096))]
    pub errors: String,
    /// The canary fails only when its observed error rate is at least this many times the
    /// baseline's. The anytime-valid test itself is against "the canary is no worse", so this
    /// is the practical size of a regression worth a rollback; it is also the margin a Pass
    /// must show the canary is within.
    #[serde(default = "default_error_ratio")]
    #[schemars(range(min = 1.0))]
    pub tolerated_ratio: f64,
    /// Differences below this absolute error rate never fail.
    #[serde(default = "default_floor")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub floor: f64,
    /// Requests each arm must serve before a Pass is possible (a Fail needs none).
    #[serde(default = "default_min_requests")]
    #[schemars(range(min = 1))]
    pub min_requests: i64,
}

fn default_tolerated_ratio() -> f64 {
    1.5
}
fn default_error_ratio() -> f64 {
    1.25
}
fn default_floor() -> f64 {
    0.0002
}
fn default_min_requests() -> i64 {
    200
}

/// A sequential test on the share of requests above the baseline's quantile bucket boundaries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Latency {
    /// Histogram bucket counter of one arm (a `_bucket` series with `le`; PromQL, at most
    /// 4096 bytes).
    #[schemars(length(min = 1, max = 4096))]
    pub buckets: String,
    /// The quantiles compared, each in (0, 1) (default 0.5, 0.95 and 0.99; at most 5).
    #[serde(default = "default_quantiles")]
    #[schemars(length(min = 1, max = 5))]
    pub quantiles: Vec<f64>,
    /// How much more often the canary may exceed each of the baseline's quantile
    /// boundaries before it counts as slower (default 1.5).
    #[serde(default = "default_tolerated_ratio")]
    #[schemars(range(min = 1.0))]
    pub tolerated_ratio: f64,
    /// Differences in the share of requests above a boundary smaller than this never fail.
    #[serde(default = "default_latency_floor")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub floor: f64,
    /// An absolute cap on the canary's quantiles (the largest one), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<f64>,
    /// The unit of the histogram's `le` labels: `seconds` (OpenTelemetry, Prometheus client
    /// conventions) or `milliseconds` (Istio, Linkerd).
    #[serde(default)]
    pub bucket_unit: BucketUnit,
    /// Requests each arm must serve before a Pass is possible (a Fail needs none).
    #[serde(default = "default_min_requests")]
    #[schemars(range(min = 1))]
    pub min_requests: i64,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum BucketUnit {
    #[default]
    Seconds,
    Milliseconds,
}

impl BucketUnit {
    /// Milliseconds in one unit.
    pub fn to_ms(self) -> f64 {
        match self {
            BucketUnit::Seconds => 1000.0,
            BucketUnit::Milliseconds => 1.0,
        }
    }
}

fn default_latency_floor() -> f64 {
    0.001
}

fn default_quantiles() -> Vec<f64> {
    vec![0.5, 0.95, 0.99]
}
