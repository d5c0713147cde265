//! What the planner decides on (`Observed` and its views), what it asks for (`Action`s and
//! `Note`s) and the `Plan` that carries them.

use kube::ResourceExt;

use super::workload::{Arm, Artifact, Workload, artifact, fingerprint};
use crate::analysis::run::Decision;
use crate::api::release::{HistoryEntry, Release, ReleasePhase, ReleaseVerdict};
use crate::api::rollout::{AnalysisSummary, RollbackStep, RolloutStatus};

/// The target Deployment as read.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetView {
    /// `spec.replicas`; 0 once rollguard scaled it down.
    pub replicas: i32,
    /// The artifact its template declares, or why it is refused.
    pub artifact: Result<Artifact, String>,
    /// A fingerprint of its pod template, comparable with a Release's.
    pub template: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ReleaseView {
    pub name: String,
    pub digest: String,
    pub phase: Option<ReleasePhase>,
    /// A human lifted the Unstable verdict, with a reason.
    pub overridden: bool,
    pub verdict: Option<String>,
    /// A fingerprint of the pod template the Release snapshotted.
    pub template: Option<String>,
}

impl From<&Release> for ReleaseView {
    /// What the planner reads of a Release: its digest, phase, verdict and template fingerprint.
    fn from(r: &Release) -> ReleaseView {
        let status = r.status.clone().unwrap_or_default();
        ReleaseView {
            name: r.name_any(),
            digest: artifact(&r.spec.pod_template, false)
                .map(|a| a.digest)
                .unwrap_or_default(),
            phase: status.phase,
            overridden: status
                .r#override
                .is_some_and(|o| !o.reason.trim().is_empty()),
            verdict: status.verdict.map(|v| v.reason),
            template: Some(fingerprint(&r.spec.pod_template.to_string())),
        }
    }
}

/// The analysis run of the current canary.
#[derive(Clone, Debug, PartialEq)]
pub struct AnalysisView {
    pub decision: Decision,
    pub summary: AnalysisSummary,
    /// When a metric first measured Fail, unix seconds.
    pub first_fail_at: Option<i64>,
    /// Seconds until the next measurement is due: the earliest a verdict can change.
    pub next_due_in: Option<u64>,
    /// Every counting metric has seen the canary serve its minRequests (`promotion: noFail`).
    pub served_min_requests: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestAction {
    Promote,
    Abort,
    Pause,
    Resume,
    /// Close the open incidents of the last rollback: the root cause is understood.
    Resolve,
    /// Restore a Release chosen by hand (`to`): a decision, not a verdict.
    Rollback,
    /// Run the images of a Release chosen by hand (`to`) on the serving Release's pod
    /// template: a new Release, restored like a rollback.
    Redeploy,
}

impl std::fmt::Display for RequestAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RequestAction::Promote => "promote",
            RequestAction::Abort => "abort",
            RequestAction::Pause => "pause",
            RequestAction::Resume => "resume",
            RequestAction::Resolve => "resolve",
            RequestAction::Rollback => "rollback",
            RequestAction::Redeploy => "redeploy",
        })
    }
}

/// A manual request from the `rollguard.dev/request` annotation.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    pub id: String,
    pub action: RequestAction,
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `rollback`: the Release to restore, by name; `redeploy`: the Release whose images run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// `rollback`: mark the Release rolled back from Unstable, with this reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unstable: Option<String>,
    /// `rollback`: what the CLI's preflight found the rollback cannot restore; logged and
    /// published as a Warning (at most [`MAX_WARNINGS`], each bounded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The most preflight warnings a request carries into the log.
pub const MAX_WARNINGS: usize = 16;

/// Everything the machine decides on.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Unix seconds.
    pub now: i64,
    /// The Rollout's namespace: part of every incident's dedup key.
    pub namespace: String,
    pub generation: Option<i64>,
    /// None: the target Deployment does not exist.
    pub target: Option<TargetView>,
    pub stable: Option<Workload>,
    pub canary: Option<Workload>,
    pub baseline: Option<Workload>,
    pub releases: Vec<ReleaseView>,
    pub analysis: Option<AnalysisView>,
    /// Why the Rollout's analysis cannot start (a missing template, a refused argument, a query
    /// that does not parse): the canary is held where it is until it can.
    pub analysis_invalid: Option<String>,
    /// The request annotation, or why it could not be read.
    pub request: Option<Result<Request, InvalidRequest>>,
    /// The stable arm's pods, read only while a rollback or redeploy by hand waits for them to
    /// become ready (None when they were not read, or could not be: the log then counts
    /// replicas from the Deployment's status instead of naming pods).
    pub stable_pods: Option<Vec<PodView>>,
}

/// A pod of an arm: its name, the Release its template runs, and when it became Ready.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodView {
    pub name: String,
    pub release: Option<String>,
    /// Unix seconds of its Ready condition's last transition to True; None while not ready.
    pub ready_at: Option<i64>,
}

/// A request annotation that does not parse. It is warned about once: `id` is its text's
/// fingerprint, acknowledged like a request's id.
#[derive(Clone, Debug, PartialEq)]
pub struct InvalidRequest {
    pub id: String,
    pub why: String,
}

/// One thing for the controller to do. Each is idempotent.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create (or keep) the arms' Services.
    EnsureServices,
    /// Create the Release from the target's current template, and give it `phase`.
    CreateRelease {
        name: String,
        phase: ReleasePhase,
    },
    /// Create the Release `name` of a redeploy: `redeploy.images_of`'s images on
    /// `redeploy.config_of`'s pod template, recorded as deployed by `by`.
    CreateRedeploy {
        name: String,
        redeploy: crate::api::release::Redeploy,
        by: String,
    },
    /// Run `release`'s pod template on the arm's Deployment at `replicas`.
    ApplyArm {
        arm: Arm,
        release: String,
        replicas: i32,
    },
    ScaleArm {
        arm: Arm,
        replicas: i32,
    },
    /// Scale the target Deployment to zero; rollguard's Deployments serve instead.
    ScaleTarget,
    /// Write the canary and baseline weights (the stable gets the rest), then read them back and
    /// verify. Without a mesh: scale the canary and baseline, and verify the pod counts.
    SetWeights {
        canary: i32,
        baseline: i32,
    },
    ReleasePhase {
        release: String,
        phase: ReleasePhase,
        verdict: Option<ReleaseVerdict>,
    },
    ReleaseHistory {
        release: String,
        entry: HistoryEntry,
    },
    /// Forget the analysis run; the next canary starts a fresh one.
    ResetAnalysis,
    /// Delete Releases beyond the history limit, never an Unstable one a target refers to.
    PruneReleases,
}

/// Why something happened: the reason of a Kubernetes Event and of a timeline entry, and what
/// the deployment outcome is classified from. This is the one place that spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Initialized,
    Stable,
    Blocked,
    TemplateNotRolledOut,
    CanaryStarted,
    WeightSet,
    StepAdvanced,
    StepsPassed,
    Paused,
    Resumed,
    AnalysisInvalid,
    AnalysisStarted,
    AnalysisInconclusive,
    CanaryWithdrawn,
    Promoted,
    VerificationPassed,
    Request,
    RequestIgnored,
    RequestInvalid,
    RollbackStarted,
    RolledBack,
    NotRecovered,
    RollbackIncomplete,
    Escalation,
    /// `rollguard rollback` began, finished, or could not start.
    ManualRollbackStarted,
    ManualRollbackDone,
    ManualRollbackRefused,
    ManualRollbackWarning,
    /// The analysis's first forecast of its Pass at a step.
    PassForecast,
    /// A step left under `promotion: noFail`, without a Pass.
    LeftWithoutPass,
    /// A saga step done: `Rollback<Step>`.
    RollbackStep(RollbackStep),
}

impl Reason {
    const NAMED: [(Reason, &'static str); 30] = [
        (Reason::Initialized, "Initialized"),
        (Reason::Stable, "Stable"),
        (Reason::Blocked, "Blocked"),
        (Reason::TemplateNotRolledOut, "TemplateNotRolledOut"),
        (Reason::CanaryStarted, "CanaryStarted"),
        (Reason::WeightSet, "WeightSet"),
        (Reason::StepAdvanced, "StepAdvanced"),
        (Reason::StepsPassed, "StepsPassed"),
        (Reason::Paused, "Paused"),
        (Reason::Resumed, "Resumed"),
        (Reason::AnalysisInvalid, "AnalysisInvalid"),
        (Reason::AnalysisStarted, "AnalysisStarted"),
        (Reason::AnalysisInconclusive, "AnalysisInconclusive"),
        (Reason::CanaryWithdrawn, "CanaryWithdrawn"),
        (Reason::Promoted, "Promoted"),
        (Reason::VerificationPassed, "VerificationPassed"),
        (Reason::Request, "Request"),
        (Reason::RequestIgnored, "RequestIgnored"),
        (Reason::RequestInvalid, "RequestInvalid"),
        (Reason::RollbackStarted, "RollbackStarted"),
        (Reason::RolledBack, "RolledBack"),
        (Reason::NotRecovered, "NotRecovered"),
        (Reason::RollbackIncomplete, "RollbackIncomplete"),
        (Reason::Escalation, "Escalation"),
        (Reason::ManualRollbackStarted, "ManualRollbackStarted"),
        (Reason::ManualRollbackDone, "ManualRollbackDone"),
        (Reason::ManualRollbackRefused, "ManualRollbackRefused"),
        (Reason::ManualRollbackWarning, "ManualRollbackWarning"),
        (Reason::PassForecast, "PassForecast"),
        (Reason::LeftWithoutPass, "LeftWithoutPass"),
    ];

    /// The reason a timeline entry or Event carries, read back; None for one this version does
    /// not write.
    pub fn parse(text: &str) -> Option<Reason> {
        if let Some((r, _)) = Reason::NAMED.iter().find(|(_, name)| *name == text) {
            return Some(*r);
        }
        let step = text.strip_prefix("Rollback")?;
        RollbackStep::ORDER
            .into_iter()
            .find(|s| s.to_string() == step)
            .map(Reason::RollbackStep)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::RollbackStep(step) => write!(f, "Rollback{step}"),
            named => {
                let name = Reason::NAMED
                    .iter()
                    .find(|(r, _)| r == named)
                    .map_or("Unknown", |(_, name)| name);
                f.write_str(name)
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Note {
    pub warning: bool,
    pub reason: Reason,
    pub message: String,
}

/// What to do now and what to record after.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub status: RolloutStatus,
    /// Kubernetes Events to publish once the status is recorded.
    pub notes: Vec<Note>,
    /// Reconcile again after this many seconds; 0: at once.
    pub requeue_secs: u64,
}

/// What kind of failure stopped an action of a plan. The Rollout's condition and the retry
/// policy act on the kind; the message says the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Refused by RBAC: retrying cannot help until someone grants the permission.
    Permission,
    /// Another writer, or an object by that name that is not rollguard's.
    Conflict,
    NotFound,
    /// Refused as it is: a bad object or spec, a route rollguard cannot read.
    Invalid,
    /// Anything that may pass on its own: a timeout, a 5xx, a weight not yet read back.
    Transient,
}

impl ErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Permission => "permission",
            ErrorKind::Conflict => "conflict",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Transient => "transient",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back_as_itself() {
        let steps = RollbackStep::ORDER.map(Reason::RollbackStep);
        for reason in Reason::NAMED.iter().map(|(r, _)| *r).chain(steps) {
            assert_eq!(Reason::parse(&reason.to_string()), Some(reason), "{reason}");
        }
        assert_eq!(
            Reason::RollbackStep(RollbackStep::ZeroWeights).to_string(),
            "RollbackZeroWeights"
        );
        assert_eq!(Reason::parse("Rollback"), None);
        assert_eq!(Reason::parse("SomethingNew"), None);
    }
}
