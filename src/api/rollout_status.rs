//! `Rollout` status: the phase, the canary and stable Releases, the analysis evidence, the
//! rollback saga, the outbox of incidents and the timeline.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, Severity};

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum RolloutPhase {
    #[default]
    Initializing,
    Stable,
    Progressing,
    Paused,
    Promoting,
    RollingBack,
    RolledBack,
    Blocked,
    /// A rollback someone asked for (`rollguard rollback`): to a release they chose, not a
    /// verdict on the one it replaces.
    Reverting,
}

/// What the controller observed and did: the phase, the Releases serving and being
/// canaried, the latest analysis, the rollback saga, the incidents and the timeline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Where the Rollout is in its lifecycle: Initializing, Stable, Progressing, Paused,
    /// Promoting, RollingBack, RolledBack, Blocked or Reverting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RolloutPhase>,
    /// Why the Rollout is in its phase, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The `metadata.generation` of the spec this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Index of the step in progress, from 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<i32>,
    /// The step in progress as people count it, `1/3`; `-` when no canary runs (the `Step`
    /// column of `kubectl get rollouts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The canary weight last written and verified on the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_weight: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<ReleaseRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<ReleaseRef>,
    /// Ready, AnalysisInvalid, TemplateInSync and RollbackIncomplete, each True or False with
    /// why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Replicas the target declared before rollguard scaled it to zero: the stable size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// When the current step's weight was verified (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<String>,
    /// When the canary was started (RFC 3339); the progress deadline counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_started_at: Option<String>,
    /// A human's pause, until `rollguard resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_by: Option<String>,
    /// The last manual request (`rollguard.dev/request` annotation) acted on, by its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_request: Option<String>,
    /// What became of the last manual request: accepted or refused, and why. The CLI waits
    /// for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_outcome: Option<RequestOutcome>,
    /// The stable Release before the last promotion: what a failed post-promotion window
    /// restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_stable: Option<ReleaseRef>,
    /// End of the post-promotion window (RFC 3339), while it lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_until: Option<String>,
    /// The latest analysis verdicts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSummary>,
    /// The rollback saga: each step is recorded here before the next one starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackStatus>,
    /// The last rollback someone asked for (`rollguard rollback`), step by step, with its log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual_rollback: Option<ManualRollback>,
    /// Incidents waiting for (or handed to) escalation, one per dedup key and action.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub outbox: Vec<OutboxEntry>,
    /// What happened, oldest first; the last 64 entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub timeline: Vec<TimelineEntry>,
}

/// The analysis run's decision and each metric's latest measurement.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSummary {
    /// Running, Pass, Fail or Inconclusive.
    pub decision: String,
    /// Why the decision is what it is, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When a metric first measured Fail in this run (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_fail_at: Option<String>,
    /// The latest measurement of each metric.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricEvidence>,
    /// While the analysis collects evidence: how long its Pass will take at the traffic and
    /// rates so far, from the slowest metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast: Option<PassForecast>,
}

/// A forecast of the time until the analysis can pass.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PassForecast {
    /// Expected seconds from the last measurement until a Pass; absent when none is in sight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<i64>,
    /// Seconds within which the Pass comes nine times out of ten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p90_seconds: Option<i64>,
    /// The forecast in words, with the canary's traffic and the margin it must be shown within.
    pub message: String,
}

/// One measurement as a human would redo it: the queries and values, the counts, the test and
/// the verdict.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricEvidence {
    /// The metric's name in its template.
    pub metric: String,
    /// Pass, Fail, Collecting (evidence is still coming in) or Inconclusive (the metric could
    /// not be measured).
    pub verdict: String,
    /// Why, in words: the rates or values and the test's outcome.
    pub reason: String,
    /// RFC 3339 time of the measurement.
    pub at: String,
    /// Events over requests per arm, e.g. `canary 12/1500, baseline 9/13400`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<String>,
    /// The statistic the verdict was decided on, against its bound, e.g. `ln e = 5.2 ≥ 4.6`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistic: Option<String>,
    /// RFC 3339: when the change detector failed the canary, the moment its evidence counts
    /// from (the canary got worse then, after a healthy stretch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worse_since: Option<String>,
    /// The rendered queries and what each returned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queries: Vec<QueryValue>,
    /// Address of the Prometheus that answered, for graph links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// A Fail of this metric rolls back at once.
    #[serde(default)]
    pub critical: bool,
    /// Measured and reported, never acted on.
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryValue {
    /// The arm and what the query measures, e.g. `canary requests` or `baseline errors`.
    pub name: String,
    /// The query as sent, placeholders filled.
    pub promql: String,
    /// The value it returned, when it returned one series.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Why the query failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The steps of the rollback saga, in order.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub enum RollbackStep {
    /// Canary and baseline weights to 0, read back and verified.
    #[default]
    ZeroWeights,
    /// The stable Deployment has the replicas for all the traffic.
    EnsureStableCapacity,
    /// The stable digest is back on `<name>-stable`; canary and baseline are scaled to 0.
    RestoreStable,
    /// The Release is Unstable, with its evidence.
    MarkUnstable,
    /// The incident is in the outbox.
    Escalate,
    /// The stable serves, healthy, for the recovery window.
    VerifyRecovery,
    Done,
}

impl RollbackStep {
    /// The saga's steps in the order they run; `Done` follows the last.
    pub const ORDER: [RollbackStep; 6] = [
        RollbackStep::ZeroWeights,
        RollbackStep::EnsureStableCapacity,
        RollbackStep::RestoreStable,
        RollbackStep::MarkUnstable,
        RollbackStep::Escalate,
        RollbackStep::VerifyRecovery,
    ];

    pub fn next(self) -> RollbackStep {
        let at = RollbackStep::ORDER.iter().position(|s| *s == self);
        at.and_then(|i| RollbackStep::ORDER.get(i + 1))
            .copied()
            .unwrap_or(RollbackStep::Done)
    }
}

impl std::fmt::Display for RollbackStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackStatus {
    /// The Release being rolled back.
    pub release: String,
    /// The image digest rolled back.
    pub digest: String,
    /// Why: the failing metric and its reason, or who aborted.
    pub reason: String,
    /// The metric whose Fail started it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// The step to do next; `Done` when the saga finished.
    pub step: RollbackStep,
    /// Steps finished, each with its time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub completed: Vec<SagaRecord>,
    /// When the rollback began (RFC 3339).
    pub started_at: String,
    /// The first failing measurement (RFC 3339), when a metric triggered the rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breach_at: Option<String>,
    /// When zero canary weight was verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_zero_at: Option<String>,
    /// When the restored stable had held through the recovery window (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered_at: Option<String>,
    /// The last time the restored stable measured worse than before the rollout; the recovery
    /// window starts again from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_recovered_at: Option<String>,
    /// Failed attempts of the current step.
    #[serde(default)]
    pub attempts: i32,
    /// The error of the current step's last failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The evidence that triggered the rollback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<MetricEvidence>,
    /// The Release had been judged Unstable before and a human lifted the verdict: this
    /// rollback is its second, escalated at critical as an incident of its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub repeated: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SagaRecord {
    pub step: RollbackStep,
    /// When the step was done (RFC 3339).
    pub at: String,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum OutboxAction {
    /// Open (or re-send) the incident.
    #[default]
    Trigger,
    /// The service recovered: close it.
    Resolve,
}

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum DeliveryState {
    /// Not yet accepted by every receiver; retried with backoff.
    #[default]
    Pending,
    /// Every receiver accepted it (or had no use for it).
    Delivered,
    /// A receiver refused it (HTTP 4xx other than 429); it is not retried.
    Failed,
    /// The receiver has no use for this kind of entry (e.g. a promotion on Slack).
    Skipped,
}

/// What an outbox entry is about.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum IncidentKind {
    /// An automatic (or manual) rollback.
    #[default]
    Rollback,
    /// A rollback step kept failing: traffic may not be where it should be.
    RollbackIncomplete,
    /// The rollback finished but the service did not come back to its pre-rollout baseline.
    NotRecovered,
    /// The target declares a digest whose Release is Unstable; nothing was canaried.
    Blocked,
    /// A release was promoted: a change event, not a problem.
    Promoted,
}

/// One receiver's side of an outbox entry.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The Receiver's name.
    pub receiver: String,
    /// Pending, Delivered or Failed.
    pub state: DeliveryState,
    /// Attempts so far.
    #[serde(default)]
    pub attempts: i32,
    /// The last send (RFC 3339); Alertmanager re-sends an open incident from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<String>,
    /// When a Pending delivery is tried again (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// When the receiver accepted it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
    /// Why the last attempt failed, naming the Receiver's field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// An incident handed to escalation. The dedup key is the same across restarts, so a receiver
/// sees one incident however often the entry is sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboxEntry {
    /// One incident per key: the receivers deduplicate on it.
    pub dedup_key: String,
    /// Trigger opens or updates the incident; Resolve closes it.
    pub action: OutboxAction,
    pub severity: Severity,
    /// The incident's one-line summary.
    pub title: String,
    /// The Release rolled back; its status holds the evidence.
    pub release: String,
    /// The digest traffic was moved back to, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_digest: Option<String>,
    /// The digest the incident is about.
    pub to_digest: String,
    /// When it was queued (RFC 3339).
    pub created_at: String,
    #[serde(default)]
    pub kind: IncidentKind,
    /// Pending until every receiver delivered it; Failed when one refused it.
    #[serde(default)]
    pub state: DeliveryState,
    /// Each receiver's delivery, written as it happens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub deliveries: Vec<Delivery>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimelineEntry {
    /// When it happened (RFC 3339).
    pub at: String,
    /// A short CamelCase word, e.g. CanaryStarted, StepAdvanced, Promoted or RollbackStarted.
    pub reason: String,
    /// What happened, in words.
    pub message: String,
}

/// A Release as the Rollout's status points at it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseRef {
    /// The Release's name: `<rollout>-<first 10 hex digits of the digest>`.
    pub release: String,
    /// `sha256:…` of the primary container's image.
    pub digest: String,
    /// The first 12 hex digits, for printer columns.
    pub short_digest: String,
}

/// The steps of a rollback someone asked for, in order; each is recorded before the next.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum RevertStep {
    /// A running canary's weight to 0, verified, and its pods scaled to 0.
    #[default]
    Withdraw,
    /// The chosen Release's pod template on `<name>-stable`, through a rolling update that
    /// never has fewer ready pods than replicas (`maxUnavailable: 0`).
    Restore,
    /// Every replica of the restored template ready.
    Ready,
    /// All traffic on stable, the Releases' phases and histories recorded.
    Record,
    Done,
    /// Not started: the request named a Release that cannot be rolled back to.
    Refused,
    /// Stopped: the rollout did not finish within the progress deadline.
    Failed,
}

impl std::fmt::Display for RevertStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// A rollback someone asked for: from what, to what, by whom, and what happened, as lines any
/// later watcher reads from the start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManualRollback {
    /// The request's id (`rollguard rollback` waits for it).
    pub request: String,
    /// Who asked, as the apiserver named them.
    pub by: String,
    /// Why, as the requester gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The Release serving when it was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ReleaseRef>,
    /// The Release it restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<ReleaseRef>,
    /// A canary that was running and was withdrawn first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn: Option<ReleaseRef>,
    /// Mark the Release rolled back from Unstable, with this reason (`--unstable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unstable: Option<String>,
    /// Set for `rollguard redeploy`: `to` is a Release made of these images and this pod
    /// template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redeploy: Option<Redeploy>,
    pub step: RevertStep,
    /// RFC 3339.
    pub started_at: String,
    /// When it was done, refused or failed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Ready replicas of the restored template last logged.
    #[serde(default)]
    pub ready_logged: i32,
    /// What happened, oldest first: the lines `rollguard rollback` prints; at most 64.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub log: Vec<LogLine>,
}

/// A redeploy: one Release's images on another Release's pod template (env, resources, probes,
/// ports and the rest).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Redeploy {
    /// The Release whose images run.
    #[schemars(length(max = 253))]
    pub images_of: String,
    /// The Release whose pod template, apart from its images, runs.
    #[schemars(length(max = 253))]
    pub config_of: String,
}

/// One line of a manual rollback's log.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// RFC 3339.
    pub at: String,
    /// What happened, as `rollguard rollback` prints it.
    pub text: String,
}

/// What became of a manual request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestOutcome {
    /// The request's id, as the CLI made it.
    pub id: String,
    /// The request's action: promote, abort, pause, resume, resolve or rollback.
    pub action: String,
    /// Who sent it, as the apiserver named them.
    pub by: String,
    /// Whether the controller acted on it.
    pub accepted: bool,
    /// What it did, or why it did not.
    pub message: String,
}

/// The most lines a manual rollback's log keeps; past it the middle lines are dropped and the
/// first and last kept.
pub const MANUAL_LOG_LINES: usize = 64;

impl ManualRollback {
    /// Appends a line, bounded in length and in count (the first lines, which say what was
    /// asked, are kept).
    /// `rollback` or `redeploy`, as the log and the Events say it.
    pub fn word(&self) -> &'static str {
        if self.redeploy.is_some() {
            "redeploy"
        } else {
            "rollback"
        }
    }

    pub fn log(&mut self, at: String, text: impl Into<String>) {
        let text = super::common::bounded(&text.into());
        if self.log.len() >= MANUAL_LOG_LINES {
            self.log.remove(8);
        }
        self.log.push(LogLine { at, text });
    }
}
