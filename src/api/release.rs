//! `Release`: one record per (Rollout, artifact digest), the release inventory.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::Condition;
use super::rollout::MetricEvidence;
pub use super::rollout_status::Redeploy;

/// Legal phase moves. Unstable leaves only with an override that gives a reason. A phase, once
/// set, is never removed: removing it and setting it again would skip the rule.
pub const PHASE_TRANSITION_RULE: &str = "!has(oldSelf.phase) || has(self.phase) && (self.phase == oldSelf.phase \
|| (oldSelf.phase == 'Candidate' && self.phase in ['Progressing', 'Unstable', 'Superseded']) \
|| (oldSelf.phase == 'Progressing' && self.phase in ['Stable', 'Unstable', 'Superseded']) \
|| (oldSelf.phase == 'Stable' && self.phase in ['Superseded', 'Unstable']) \
|| (oldSelf.phase == 'Superseded' && self.phase in ['Stable', 'Progressing']) \
|| (oldSelf.phase == 'Unstable' && self.phase in ['Stable', 'Candidate'] \
    && has(self.override) && self.override.reason.trim().size() > 0))";

/// A new Unstable verdict clears the override that lifted an earlier one: each canary of a
/// condemned digest needs a human's decision of its own.
pub const FRESH_VERDICT_RULE: &str = "!has(self.phase) || self.phase != 'Unstable' \
|| (has(oldSelf.phase) && oldSelf.phase == 'Unstable') || !has(self.override)";

/// An artifact that a Rollout delivered or tried to: its images by digest and the whole pod
/// template, so that a rollback restores the configuration too, not just the image.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "rollguard.dev",
    version = "v1alpha1",
    kind = "Release",
    doc = "One artifact a Rollout delivered or tried to: its images by digest and its whole pod template, its phase (Unstable ones are never canaried again without an override), and who did what to it. Written by the controller.",
    namespaced,
    status = "ReleaseStatus",
    shortname = "rgrel",
    category = "rollguard",
    printcolumn = r#"{"name":"Rollout","type":"string","jsonPath":".spec.rollout"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    // The status's own rules run only while it exists; this one keeps it from being removed
    // whole, which would drop the phase past the transition rule.
    validation = kube::core::Rule::new(
        "!has(oldSelf.status) || !has(oldSelf.status.phase) || (has(self.status) && has(self.status.phase))"
    ).message("a Release's phase, once set, is never removed")
     .field_path(".status.phase")
)]
#[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("Release.spec is immutable"))]
#[x_kube(validation = kube::core::Rule::new(
    "self.allowTags || self.images.all(i, i.image.matches('@sha256:[a-f0-9]{64}$'))"
).message("images must be pinned as image@sha256:<64 hex> unless allowTags is set")
 .field_path(".images"))]
#[serde(rename_all = "camelCase")]
pub struct ReleaseSpec {
    /// The Rollout this Release belongs to.
    pub rollout: String,
    /// The image of each container, as deployed.
    #[schemars(length(min = 1, max = 64))]
    pub images: Vec<ContainerImage>,
    /// Copied from the Rollout: images may be tags instead of digests.
    #[serde(default)]
    pub allow_tags: bool,
    /// The full pod template at the time of the release (env, resources, ports, probes…).
    #[schemars(schema_with = "preserved_object")]
    pub pod_template: serde_json::Value,
    /// The version label of the pods, when they carry one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The target's `kubernetes.io/change-cause` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_cause: Option<String>,
    /// Who changed the target: its `rollguard.dev/deployed-by` annotation, which the chart's
    /// admission policy admits only as the apiserver's name for the writer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub deployed_by: Option<String>,
    /// A content hash of each ConfigMap the pod template referred to at release time (never
    /// the content), and each Secret it referred to (not read, so not hashed): what a rollback
    /// to this Release cannot restore is found by comparing them with today's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub config_hashes: Vec<ConfigHash>,
    /// Set on a Release made by `rollguard redeploy`: the images of one Release with the pod
    /// template of another (the one serving when it was asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redeploy: Option<Redeploy>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ConfigKind {
    ConfigMap,
    Secret,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigHash {
    /// ConfigMap or Secret.
    pub kind: ConfigKind,
    /// The object's name, in the Release's namespace.
    #[schemars(length(max = 253))]
    pub name: String,
    /// Hex sha256 of the ConfigMap's data and binaryData; none for a Secret or a missing ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub sha256: Option<String>,
}

fn preserved_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerImage {
    /// The container's name in the pod template.
    pub container: String,
    /// `registry/repository@sha256:<64 hex>`.
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum ReleasePhase {
    #[default]
    Candidate,
    Progressing,
    Stable,
    Superseded,
    /// Judged worse than the baseline; never canaried again without an override.
    Unstable,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(PHASE_TRANSITION_RULE).message(
    "illegal phase transition; an Unstable Release moves on only with status.override.reason set"
))]
#[x_kube(validation = kube::core::Rule::new(FRESH_VERDICT_RULE).message(
    "a Release that becomes Unstable loses its earlier override (remove status.override)"
))]
/// The Release's phase, its verdict when Unstable, a human's override, and who did what to it.
pub struct ReleaseStatus {
    /// Candidate, Progressing, Stable, Superseded or Unstable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ReleasePhase>,
    /// A human's decision to lift the Unstable verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#override: Option<Override>,
    /// Who did what to this Release, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub history: Vec<HistoryEntry>,
    /// Conditions the controller reports on this Release.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Why the Release is Unstable: the verdict and the measurements it rests on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<ReleaseVerdict>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseVerdict {
    /// What was judged, in words.
    pub reason: String,
    /// The metric that failed, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// When the verdict was reached (RFC 3339).
    pub at: String,
    /// The measurements it rests on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<MetricEvidence>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Override {
    /// Why the Unstable verdict no longer holds. Required, and recorded.
    #[schemars(length(max = 1024))]
    pub reason: String,
    /// Who lifted it, as the apiserver named them.
    pub by: String,
    /// RFC 3339 time of the override.
    pub at: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// What was done, e.g. promote, abort, pause, resume, rollback or override.
    pub action: String,
    /// Who acted, as the apiserver named them.
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
    /// Why, as they said it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
