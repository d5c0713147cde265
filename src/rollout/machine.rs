//! The rollout state machine.
//!
//! [`decide`] takes the Rollout's spec and status and what was observed (the target's artifact,
//! the owned Deployments, the Releases, the analysis decision, a manual request, the time) and
//! returns the actions to apply, in order, and the status to record once they all succeeded.
//! When an action fails, [`failed`] gives the status to record instead. Every plan is safe to
//! apply twice: actions are idempotent and a step is recorded before the next one begins.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::workload::{
    Artifact, REQUEST_ANNOTATION, Workload, canary_replicas, release_name, short_digest,
};
use crate::analysis::run::Decision;
use crate::api::analysis::InconclusiveAction;
use crate::api::common::{Condition, bounded};
use crate::api::release::{HistoryEntry, ReleasePhase, ReleaseVerdict};
use crate::api::rollout::{
    AnalysisSummary, BaselineMode, DeliveryState, IncidentKind, MetricEvidence, OutboxAction,
    OutboxEntry, ReleaseRef, RollbackStatus, RollbackStep, RolloutPhase, RolloutSpec,
    RolloutStatus, SagaRecord, Severity, TimelineEntry,
};
use crate::backtest::format_time;

/// Failed attempts of a saga step before `RollbackIncomplete` is raised.
pub const INCOMPLETE_AFTER: i32 = 3;
const TIMELINE_LIMIT: usize = 64;

/// The three Deployments (and Services) rollguard owns for a Rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arm {
    Stable,
    Canary,
    Baseline,
}

impl std::fmt::Display for Arm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arm::Stable => "stable",
            Arm::Canary => "canary",
            Arm::Baseline => "baseline",
        })
    }
}

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

/// The analysis run of the current canary.
#[derive(Clone, Debug, PartialEq)]
pub struct AnalysisView {
    pub decision: Decision,
    pub summary: AnalysisSummary,
    /// When a metric first measured Fail, unix seconds.
    pub first_fail_at: Option<i64>,
    /// Seconds until the next measurement is due: the earliest a verdict can change.
    pub next_due_in: Option<u64>,
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
}

impl std::fmt::Display for RequestAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RequestAction::Promote => "promote",
            RequestAction::Abort => "abort",
            RequestAction::Pause => "pause",
            RequestAction::Resume => "resume",
            RequestAction::Resolve => "resolve",
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
}

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

#[derive(Clone, Debug, PartialEq)]
pub struct Note {
    pub warning: bool,
    pub reason: String,
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

/// The next plan for a Rollout named `name`.
pub fn decide(name: &str, spec: &RolloutSpec, status: &RolloutStatus, obs: &Observed) -> Plan {
    let mut p = Planner {
        name,
        spec,
        obs,
        status: status.clone(),
        actions: Vec::new(),
        notes: Vec::new(),
        requeue: 30,
    };
    p.status.observed_generation = obs.generation;
    p.run();
    Plan {
        actions: p.actions,
        status: p.status,
        notes: p.notes,
        requeue_secs: p.requeue,
    }
}

/// How the shell words an action refused by RBAC, so that the condition's reason says so.
pub const PERMISSION_DENIED: &str = "permission denied:";

/// The status to record when applying `plan` failed with `error`: the planned status is dropped
/// (nothing of it happened for sure); during a rollback the failure is counted, and after
/// [`INCOMPLETE_AFTER`] attempts the Rollout says loudly that the rollback is incomplete and a
/// critical incident goes out.
pub fn failed(
    namespace: &str,
    name: &str,
    spec: &RolloutSpec,
    status: &RolloutStatus,
    error: &str,
    now: i64,
) -> RolloutStatus {
    let mut s = status.clone();
    // The last rollback stays in status once done; only a saga still running counts attempts.
    let Some(rb) = s
        .rollback
        .as_mut()
        .filter(|rb| rb.step != RollbackStep::Done)
    else {
        let reason = if error.starts_with(PERMISSION_DENIED) {
            "PermissionDenied"
        } else {
            "ActionFailed"
        };
        set_condition(&mut s, "Ready", false, reason, error, now);
        return s;
    };
    rb.attempts += 1;
    rb.last_error = Some(bounded(error));
    if rb.attempts < INCOMPLETE_AFTER {
        return s;
    }
    let message = format!(
        "rollback step {} failed {} times: {error}; traffic is kept on stable where it could be \
         moved, and the controller keeps retrying",
        rb.step, rb.attempts
    );
    let key = format!("{}:incomplete", dedup_key(namespace, name, &rb.release));
    let title = format!(
        "{} rollback of {} is incomplete: {} keeps failing",
        qualified(namespace, name),
        short_digest(&rb.digest),
        rb.step
    );
    let incident = incident(
        rb,
        key,
        IncidentKind::RollbackIncomplete,
        OutboxAction::Trigger,
        Severity::Critical,
        title,
        None,
        now,
    );
    if enqueue(&mut s, spec, incident, now) {
        push_timeline(&mut s, now, "RollbackIncomplete", &message);
    }
    set_condition(
        &mut s,
        "RollbackIncomplete",
        true,
        "StepFailing",
        &message,
        now,
    );
    s
}

/// While a post-promotion window is open: how far back the verification's baseline looks, in
/// seconds, so that it sees the previous stable serving alone before the canary started (the
/// whole window long). None outside a window.
pub fn verify_baseline_offset(status: &RolloutStatus, now: i64) -> Option<u64> {
    let until = parse_at(status.verify_until.as_deref())?;
    let started = parse_at(status.canary_started_at.as_deref())?;
    (now < until && status.previous_stable.is_some()).then(|| (until - started).max(1) as u64)
}

/// While a rollback verifies recovery: how far back the restored stable's baseline looks, so
/// that it sees the service before the canary started, over the whole recovery window. None
/// otherwise.
pub fn recovery_baseline_offset(spec: &RolloutSpec, status: &RolloutStatus) -> Option<u64> {
    let rb = status.rollback.as_ref()?;
    if status.phase != Some(RolloutPhase::RollingBack) || rb.step != RollbackStep::VerifyRecovery {
        return None;
    }
    let since = parse_at(rb.completed.last().map(|c| c.at.as_str()))?
        .max(parse_at(rb.not_recovered_at.as_deref()).unwrap_or(0));
    let started = parse_at(status.canary_started_at.as_deref())?;
    let until = since + secs(&spec.recovery_window, 30);
    Some((until - started).max(1) as u64)
}

/// The incident's dedup key: the same for a Release across restarts and retries.
pub fn dedup_key(namespace: &str, rollout: &str, release: &str) -> String {
    format!("rollguard/{namespace}/{rollout}/{release}")
}

/// `namespace/name`, or the name alone outside a namespace (unit tests).
fn qualified(namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}/{name}")
    }
}

/// The first clause of a judgment's reason: `canary 6.100% vs baseline 0.700%`.
pub fn headline(reason: &str) -> &str {
    reason.split(": ").next().unwrap_or(reason).trim()
}

struct Planner<'a> {
    name: &'a str,
    spec: &'a RolloutSpec,
    obs: &'a Observed,
    status: RolloutStatus,
    actions: Vec<Action>,
    notes: Vec<Note>,
    requeue: u64,
}

fn secs(d: &crate::api::common::Duration, default: u64) -> i64 {
    d.parse().map_or(default, |d| d.as_secs()) as i64
}

fn parse_at(text: Option<&str>) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(text?).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs() as i64)
}

impl Planner<'_> {
    fn now(&self) -> i64 {
        self.obs.now
    }

    fn key(&self, release: &str) -> String {
        dedup_key(&self.obs.namespace, self.name, release)
    }

    /// The restored stable measured worse than before the rollout: escalate once more, at
    /// critical, and start the recovery window again.
    fn not_recovered(
        &mut self,
        rb: &mut RollbackStatus,
        stable: &ReleaseRef,
        metric: &str,
        reason: &str,
    ) {
        let now = self.now();
        rb.not_recovered_at = Some(format_time(now));
        let title = format!(
            "{} rollback of {} did not recover: {metric} on {} {}",
            qualified(&self.obs.namespace, self.name),
            short_digest(&rb.digest),
            stable.short_digest,
            headline(reason)
        );
        let entry = incident(
            rb,
            format!("{}:not-recovered", self.key(&rb.release)),
            IncidentKind::NotRecovered,
            OutboxAction::Trigger,
            Severity::Critical,
            title,
            Some(stable.digest.clone()),
            now,
        );
        if enqueue(&mut self.status, self.spec, entry, now) {
            self.notes.push(Note {
                warning: true,
                reason: "NotRecovered".into(),
                message: format!(
                    "{} still measures worse than before the rollout: {metric}: {reason}",
                    stable.release
                ),
            });
        }
        // A new verification run, whose baseline reaches back before the canary again.
        self.act(Action::ResetAnalysis);
        self.status.message = Some(format!(
            "rolled back; {} does not recover yet: {metric}: {}",
            stable.short_digest,
            headline(reason)
        ));
    }

    fn severity(&self) -> Severity {
        self.spec
            .escalation
            .as_ref()
            .map(|e| e.severity)
            .unwrap_or_default()
    }

    fn mesh(&self) -> bool {
        self.spec.traffic_router.is_some()
    }

    fn fresh(&self) -> bool {
        self.spec.baseline == BaselineMode::Fresh
    }

    /// The stable size: what the target declares, or what it declared before it was scaled down.
    fn stable_replicas(&self) -> i32 {
        match &self.obs.target {
            Some(t) if t.replicas > 0 => t.replicas,
            _ => self.status.replicas.unwrap_or(1).max(1),
        }
    }

    fn release(&self, name: &str) -> Option<&ReleaseView> {
        self.obs.releases.iter().find(|r| r.name == name)
    }

    fn phase(&self) -> RolloutPhase {
        self.status.phase.unwrap_or_default()
    }

    fn set_phase(&mut self, phase: RolloutPhase, message: impl Into<String>) {
        self.status.phase = Some(phase);
        self.status.message = Some(message.into());
    }

    fn timeline(&mut self, reason: &str, message: &str) {
        push_timeline(&mut self.status, self.obs.now, reason, message);
    }

    fn note(&mut self, warning: bool, reason: &str, message: String) {
        self.timeline(reason, &message);
        self.notes.push(Note {
            warning,
            reason: reason.into(),
            message,
        });
    }

    fn act(&mut self, action: Action) {
        self.actions.push(action);
    }

    fn run(&mut self) {
        // Nothing is applied or scaled while the target has an arm's name: the arm's apply
        // would overwrite the user's Deployment, and scaling the target down would empty it.
        if self.target_name_taken().is_some() {
            self.target_artifact();
            self.requeue = 60;
            return;
        }
        let s = self.stable_replicas();
        self.status.replicas = Some(s);
        if let (Some(t), Some(stable)) = (&self.obs.target, &self.obs.stable)
            && t.replicas > 0
            && stable.ready >= s
        {
            self.act(Action::ScaleTarget);
        }
        let id = match &self.obs.request {
            Some(Ok(req)) => Some(req.id.clone()),
            Some(Err(bad)) => Some(bad.id.clone()),
            None => None,
        };
        if let Some(id) = id
            && self.status.acknowledged_request.as_deref() != Some(id.as_str())
        {
            self.status.acknowledged_request = Some(id);
            match self.obs.request.clone() {
                Some(Ok(req)) => self.request(&req),
                Some(Err(bad)) => self.note(
                    true,
                    "RequestInvalid",
                    format!(
                        "annotation {REQUEST_ANNOTATION} is ignored: {}; use `rollguard \
                         promote|abort|pause|resume`",
                        bad.why
                    ),
                ),
                None => {}
            }
        }
        let before = self.phase();
        match before {
            RolloutPhase::Initializing => self.initialize(),
            RolloutPhase::Stable | RolloutPhase::Blocked | RolloutPhase::RolledBack => self.idle(),
            RolloutPhase::Progressing | RolloutPhase::Paused => self.progress(),
            RolloutPhase::Promoting => self.promote(),
            RolloutPhase::RollingBack => self.roll_back(),
        }
        if before == RolloutPhase::Blocked && self.phase() != RolloutPhase::Blocked {
            let title = format!(
                "{} is no longer blocked: {}",
                qualified(&self.obs.namespace, self.name),
                self.status.message.clone().unwrap_or_default()
            );
            let now = self.now();
            resolve_where(
                &mut self.status,
                self.spec,
                |e| e.kind == IncidentKind::Blocked,
                &title,
                now,
            );
        }
    }

    /// A Blocked Rollout notifies once per Unstable Release it is blocked on, not on every
    /// reconcile.
    fn notify_blocked(&mut self, release: &str, digest: &str, why: &str) {
        if self.spec.escalation.is_none() {
            return;
        }
        let now = self.now();
        let entry = OutboxEntry {
            dedup_key: format!("{}:blocked", self.key(release)),
            action: OutboxAction::Trigger,
            severity: Severity::Warning,
            title: format!(
                "{} is blocked: the target declares {} ({release}), which is Unstable: {}",
                qualified(&self.obs.namespace, self.name),
                short_digest(digest),
                headline(why)
            ),
            release: release.to_owned(),
            from_digest: self.status.stable.as_ref().map(|s| s.digest.clone()),
            to_digest: digest.to_owned(),
            created_at: format_time(now),
            kind: IncidentKind::Blocked,
            state: DeliveryState::Pending,
            deliveries: Vec::new(),
        };
        enqueue(&mut self.status, self.spec, entry, now);
    }

    /// The arm whose name the target has: that Deployment is rollguard's to scale and
    /// overwrite, so a target by that name would be scaled to zero while it serves.
    fn target_name_taken(&self) -> Option<Arm> {
        [Arm::Stable, Arm::Canary, Arm::Baseline]
            .into_iter()
            .find(|arm| super::workload::arm_name(self.name, *arm) == self.spec.target_ref.name)
    }

    /// The target's artifact, or None with the reason recorded as a condition.
    fn target_artifact(&mut self) -> Option<Artifact> {
        let taken = self.target_name_taken().map(|arm| {
            format!(
                "target Deployment {:?} has the name of the Rollout's {arm} Deployment, which \
                 rollguard scales and overwrites; rename the target or the Rollout",
                self.spec.target_ref.name
            )
        });
        let (result, reason) = match (&self.obs.target, taken) {
            (_, Some(why)) => (Err(why), "TargetNameTaken"),
            (None, None) => (
                Err(format!(
                    "target Deployment {:?} not found in the Rollout's namespace",
                    self.spec.target_ref.name
                )),
                "TargetMissing",
            ),
            (Some(t), None) => (t.artifact.clone(), "DigestRequired"),
        };
        let now = self.now();
        match result {
            Err(message) => {
                set_condition(&mut self.status, "Ready", false, reason, &message, now);
                self.status.message = Some(message);
                None
            }
            Ok(a) => {
                let ok = "the target declares a valid artifact";
                set_condition(&mut self.status, "Ready", true, "TargetValid", ok, now);
                Some(a)
            }
        }
    }

    fn release_ref(&self, digest: &str) -> ReleaseRef {
        ReleaseRef {
            release: release_name(self.name, digest),
            digest: digest.to_owned(),
            short_digest: short_digest(digest),
        }
    }

    fn request(&mut self, req: &Request) {
        let phase = self.phase();
        let by = &req.by;
        let release = self
            .status
            .canary
            .as_ref()
            .or(self.status.stable.as_ref())
            .map(|r| r.release.clone());
        let in_window = self.in_verify_window();
        let release = if req.action == RequestAction::Resolve {
            self.status.rollback.as_ref().map(|rb| rb.release.clone())
        } else {
            release
        };
        let acted = match (req.action, phase) {
            (RequestAction::Resolve, _) => {
                let title = format!(
                    "{} incident resolved by {by}{}",
                    qualified(&self.obs.namespace, self.name),
                    reason_suffix(req)
                );
                let now = self.now();
                resolve_where(
                    &mut self.status,
                    self.spec,
                    is_rollback_incident,
                    &title,
                    now,
                ) > 0
            }
            (RequestAction::Pause, RolloutPhase::Progressing | RolloutPhase::Paused) => {
                self.status.paused_by = Some(by.clone());
                self.set_phase(RolloutPhase::Paused, format!("paused by {by}"));
                true
            }
            (RequestAction::Resume, RolloutPhase::Paused | RolloutPhase::Progressing) => {
                self.status.paused_by = None;
                self.status.message = Some(format!("resumed by {by}"));
                self.status.phase = Some(RolloutPhase::Progressing);
                if let Some(step) = self.current_step()
                    && step.pause.as_ref().is_some_and(|p| p.duration.is_none())
                {
                    self.advance();
                }
                true
            }
            (RequestAction::Promote, RolloutPhase::Progressing | RolloutPhase::Paused) => {
                self.status.paused_by = None;
                self.set_phase(
                    RolloutPhase::Promoting,
                    format!("promoted by {by}, skipping the remaining steps"),
                );
                true
            }
            (
                RequestAction::Abort,
                RolloutPhase::Progressing | RolloutPhase::Paused | RolloutPhase::Promoting,
            ) => {
                self.begin_rollback(abort_reason(req), None, None, Vec::new());
                true
            }
            (RequestAction::Abort, RolloutPhase::Stable) if in_window => {
                self.begin_post_promotion_rollback(abort_reason(req), None, None, Vec::new());
                true
            }
            _ => false,
        };
        if acted {
            self.note(
                false,
                "Request",
                format!(
                    "{} by {by} in phase {phase:?}{}",
                    req.action,
                    reason_suffix(req)
                ),
            );
            if let Some(release) = release {
                self.act(Action::ReleaseHistory {
                    release,
                    entry: HistoryEntry {
                        action: req.action.to_string(),
                        by: by.clone(),
                        at: format_time(self.now()),
                        reason: req.reason.clone(),
                    },
                });
            }
        } else {
            self.note(
                true,
                "RequestIgnored",
                format!("{} by {by} does not apply in phase {phase:?}", req.action),
            );
        }
    }

    /// Within the post-promotion window: a failing verification restores the previous digest.
    fn verify_failed(&mut self) -> bool {
        let Some(a) = self.obs.analysis.clone() else {
            return false;
        };
        self.status.analysis = Some(a.summary.clone());
        let (reason, metric, breach, evidence) = match &a.decision {
            Decision::Fail { metric, reason, .. } => (
                format!("metric {metric} failed after promotion: {reason}"),
                metric,
                a.first_fail_at,
                failing(&a.summary),
            ),
            // A release that passed its canary is not rolled back without evidence: a metric
            // that cannot be measured after promotion (say, no history before the rollout to
            // compare with) leaves it in place.
            _ => return false,
        };
        if !self.in_verify_window() {
            return false;
        }
        let metric = Some(metric.clone());
        self.begin_post_promotion_rollback(reason, metric, breach, evidence);
        true
    }

    fn in_verify_window(&self) -> bool {
        parse_at(self.status.verify_until.as_deref()).is_some_and(|until| self.now() < until)
            && self.status.previous_stable.is_some()
    }

    fn initialize(&mut self) {
        self.requeue = 30;
        let Some(artifact) = self.target_artifact() else {
            return;
        };
        let r = self.release_ref(&artifact.digest);
        if self.release(&r.release).is_none() {
            self.act(Action::CreateRelease {
                name: r.release.clone(),
                phase: ReleasePhase::Candidate,
            });
        }
        self.act(Action::EnsureServices);
        let s = self.stable_replicas();
        self.act(Action::ApplyArm {
            arm: Arm::Stable,
            release: r.release.clone(),
            replicas: s,
        });
        self.requeue = 1;
        let ready = self
            .obs
            .stable
            .as_ref()
            .is_some_and(|w| w.rolled_out && w.digest.as_deref() == Some(&artifact.digest));
        if !ready {
            self.status.message = Some(format!("starting {} on {}", r.release, r.short_digest));
            return;
        }
        self.act(Action::SetWeights {
            canary: 0,
            baseline: 0,
        });
        self.move_release(
            &r.release,
            &[ReleasePhase::Progressing, ReleasePhase::Stable],
        );
        self.status.canary_weight = Some(0);
        self.note(
            false,
            "Initialized",
            format!(
                "{} ({}) is stable with {s} replicas",
                r.release, r.short_digest
            ),
        );
        self.status.stable = Some(r);
        self.set_phase(RolloutPhase::Stable, "stable");
        self.requeue = 0;
    }

    /// Stable, Blocked or RolledBack: keep the stable serving, and start a canary when the
    /// target declares a new digest that is not Unstable.
    fn idle(&mut self) {
        self.requeue = 30;
        // A held canary that was withdrawn or rolled back leaves nothing to judge.
        if self
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "AnalysisInvalid" && c.status == "True")
        {
            let now = self.now();
            set_condition(
                &mut self.status,
                "AnalysisInvalid",
                false,
                "NoCanary",
                "no canary is running",
                now,
            );
        }
        let Some(stable) = self.status.stable.clone() else {
            self.set_phase(RolloutPhase::Initializing, "no stable Release recorded");
            self.requeue = 0;
            return;
        };
        let s = self.stable_replicas();
        let serving = self
            .obs
            .stable
            .as_ref()
            .is_some_and(|w| w.replicas == s && w.release.as_deref() == Some(&stable.release));
        if !serving {
            self.act(Action::ApplyArm {
                arm: Arm::Stable,
                release: stable.release.clone(),
                replicas: s,
            });
        }
        if let Some(until) = parse_at(self.status.verify_until.as_deref()) {
            if self.now() >= until {
                self.status.verify_until = None;
                self.act(Action::ResetAnalysis);
                self.note(
                    false,
                    "VerificationPassed",
                    format!("{} held through the post-promotion window", stable.release),
                );
            } else {
                if self.verify_failed() {
                    return;
                }
                // Measured as often as during the canary while the window lasts.
                self.requeue = if self.spec.analysis.is_some() {
                    1
                } else {
                    (until - self.now()).clamp(1, 30) as u64
                };
            }
        }
        let Some(artifact) = self.target_artifact() else {
            return;
        };
        if artifact.digest == stable.digest {
            if self.phase() != RolloutPhase::Stable {
                self.set_phase(
                    RolloutPhase::Stable,
                    "the target declares the stable digest",
                );
                self.timeline("Stable", "the target declares the stable digest again");
            }
            self.check_template(&stable);
            return;
        }
        let name = release_name(self.name, &artifact.digest);
        if let Some(r) = self.release(&name)
            && r.phase == Some(ReleasePhase::Unstable)
            && !r.overridden
        {
            let why = r
                .verdict
                .clone()
                .unwrap_or_else(|| "judged worse than stable".into());
            let message = format!(
                "the target declares {} (Release {name}), which is Unstable: {why}. No canary \
                 starts; lift it with `rollguard override {name} --reason …` or deploy another digest",
                short_digest(&artifact.digest)
            );
            let rolled_back_this = self
                .status
                .rollback
                .as_ref()
                .is_some_and(|rb| rb.release == name);
            let phase = if self.phase() == RolloutPhase::RolledBack && rolled_back_this {
                RolloutPhase::RolledBack
            } else {
                RolloutPhase::Blocked
            };
            if self.phase() != phase {
                self.note(true, "Blocked", message.clone());
            }
            if phase == RolloutPhase::Blocked {
                self.notify_blocked(&name, &artifact.digest, &why);
            }
            self.set_phase(phase, message);
            return;
        }
        self.start_canary(&artifact);
    }

    fn start_canary(&mut self, artifact: &Artifact) {
        let r = self.release_ref(&artifact.digest);
        self.move_release(&r.release, &[ReleasePhase::Progressing]);
        let first = self
            .spec
            .steps
            .iter()
            .find_map(|s| s.set_weight)
            .unwrap_or(0);
        let replicas = canary_replicas(self.stable_replicas(), first.max(1), self.mesh());
        self.act(Action::ResetAnalysis);
        self.act(Action::EnsureServices);
        self.act(Action::ApplyArm {
            arm: Arm::Canary,
            release: r.release.clone(),
            replicas,
        });
        if self.fresh()
            && let Some(stable) = &self.status.stable
        {
            let release = stable.release.clone();
            self.act(Action::ApplyArm {
                arm: Arm::Baseline,
                release,
                replicas,
            });
        }
        let now = format_time(self.now());
        self.status.current_step = Some(0);
        self.status.canary_weight = Some(0);
        self.status.canary_started_at = Some(now);
        self.status.step_started_at = None;
        self.status.analysis = None;
        self.status.paused_by = None;
        self.status.verify_until = None;
        self.status.previous_stable = None;
        let from = self
            .status
            .stable
            .as_ref()
            .map(|s| s.short_digest.clone())
            .unwrap_or_default();
        self.note(
            false,
            "CanaryStarted",
            format!(
                "canary {} ({}) started next to stable {from}",
                r.release, r.short_digest
            ),
        );
        self.status.canary = Some(r);
        self.set_phase(RolloutPhase::Progressing, "canary starting");
        self.requeue = 0;
    }

    /// Moves a Release through legal transitions to the last of `path`, creating it when it
    /// does not exist yet. An overridden Unstable Release goes back to Candidate first.
    fn move_release(&mut self, name: &str, path: &[ReleasePhase]) {
        let Some(last) = path.last().copied() else {
            return;
        };
        let Some(existing) = self.release(name).cloned() else {
            self.act(Action::CreateRelease {
                name: name.to_owned(),
                phase: last,
            });
            return;
        };
        let mut phase = existing.phase.unwrap_or(ReleasePhase::Candidate);
        if phase == last {
            return;
        }
        if phase == ReleasePhase::Unstable {
            self.act(Action::ReleasePhase {
                release: name.to_owned(),
                phase: ReleasePhase::Candidate,
                verdict: None,
            });
            phase = ReleasePhase::Candidate;
        }
        let start = path.iter().position(|p| *p == phase).map_or(0, |i| i + 1);
        for next in &path[start..] {
            self.act(Action::ReleasePhase {
                release: name.to_owned(),
                phase: *next,
                verdict: None,
            });
        }
    }

    fn current_step(&self) -> Option<&crate::api::rollout::Step> {
        self.status
            .current_step
            .and_then(|i| self.spec.steps.get(i.max(0) as usize))
    }

    fn advance(&mut self) {
        let i = self.status.current_step.unwrap_or(0) + 1;
        self.status.current_step = Some(i);
        self.status.step_started_at = None;
        if i as usize >= self.spec.steps.len() {
            self.set_phase(RolloutPhase::Promoting, "every step passed; promoting");
            self.timeline("StepsPassed", "every step passed; promoting");
        } else {
            self.timeline(
                "StepAdvanced",
                &format!("step {i} of {}", self.spec.steps.len()),
            );
        }
        self.requeue = 0;
    }

    fn progress(&mut self) {
        self.requeue = 1;
        let Some(canary) = self.status.canary.clone() else {
            self.set_phase(RolloutPhase::Stable, "no canary recorded");
            self.requeue = 0;
            return;
        };
        if let Some(a) = &self.obs.analysis {
            self.status.analysis = Some(a.summary.clone());
        }
        // The target moved away from this canary: withdraw it without a verdict.
        if let Some(Ok(a)) = self.obs.target.as_ref().map(|t| &t.artifact)
            && a.digest != canary.digest
        {
            let message = format!(
                "the target now declares {}; canary {} is withdrawn",
                short_digest(&a.digest),
                canary.release
            );
            self.withdraw(&canary, &message);
            return;
        }
        if self.held_unjudged() {
            return;
        }
        let now = self.now();
        let analysis = self.obs.analysis.clone();
        if let Some(a) = &analysis {
            match &a.decision {
                Decision::Fail {
                    metric,
                    reason,
                    critical: true,
                } => {
                    let (m, r) = (metric.clone(), reason.clone());
                    self.begin_rollback(
                        format!("critical metric {m} failed: {r}"),
                        Some(m),
                        a.first_fail_at,
                        failing(&a.summary),
                    );
                    return;
                }
                Decision::Inconclusive {
                    metric,
                    reason,
                    action: InconclusiveAction::Rollback,
                } => {
                    let (m, r) = (metric.clone(), reason.clone());
                    self.begin_rollback(
                        format!("metric {m} could not be measured: {r}"),
                        Some(m),
                        None,
                        a.summary.metrics.clone(),
                    );
                    return;
                }
                _ => {}
            }
        }
        // The canary must become ready within the progress deadline.
        let deadline = secs(&self.spec.progress_deadline, 600);
        let started = parse_at(self.status.canary_started_at.as_deref()).unwrap_or(now);
        let want = self.arm_replicas();
        let ready = |w: &Option<Workload>| {
            w.as_ref()
                .is_some_and(|w| w.ready >= want && w.replicas >= want)
        };
        let canary_ready = ready(&self.obs.canary) && (!self.fresh() || ready(&self.obs.baseline));
        if !canary_ready && self.status.step_started_at.is_none() {
            if now - started > deadline {
                self.begin_rollback(
                    format!(
                        "the canary did not become ready within the progress deadline ({})",
                        self.spec.progress_deadline.0
                    ),
                    None,
                    None,
                    Vec::new(),
                );
            } else {
                self.scale_arms(want);
                self.status.message = Some(format!("waiting for {want} ready canary pods"));
            }
            return;
        }
        // Paused by the analysis (Inconclusive with Pause), by a human, or by a pause step.
        let inconclusive = analysis.as_ref().and_then(|a| match &a.decision {
            Decision::Inconclusive { metric, reason, .. } => Some(format!(
                "analysis paused: {metric} could not be measured: {reason}"
            )),
            _ => None,
        });
        if let Some(message) = inconclusive {
            if self.phase() != RolloutPhase::Paused {
                self.note(true, "AnalysisInconclusive", message.clone());
            }
            self.set_phase(RolloutPhase::Paused, message);
            return;
        }
        if let Some(by) = self.status.paused_by.clone() {
            self.set_phase(
                RolloutPhase::Paused,
                format!("paused by {by}; `rollguard resume` continues"),
            );
            return;
        }
        if self.phase() == RolloutPhase::Paused
            && self.current_step().is_none_or(|s| s.pause.is_none())
        {
            self.timeline("Resumed", "the analysis measures again");
        }
        self.status.phase = Some(RolloutPhase::Progressing);
        let Some(step) = self.current_step().cloned() else {
            self.set_phase(RolloutPhase::Promoting, "every step passed; promoting");
            self.requeue = 0;
            return;
        };
        let i = self.status.current_step.unwrap_or(0);
        let step_started = parse_at(self.status.step_started_at.as_deref());
        if let Some(w) = step.set_weight {
            if step_started.is_none() || self.status.canary_weight != Some(w) {
                let want = canary_replicas(self.stable_replicas(), w, self.mesh());
                if self.mesh() {
                    let short = |x: &Option<Workload>| x.as_ref().is_none_or(|x| x.ready < want);
                    if short(&self.obs.canary) || (self.fresh() && short(&self.obs.baseline)) {
                        self.scale_arms(want);
                        self.status.message = Some(format!(
                            "step {i}: waiting for {want} ready canary pods before weight {w}%"
                        ));
                        return;
                    }
                }
                self.act(Action::SetWeights {
                    canary: w,
                    baseline: if self.fresh() { w } else { 0 },
                });
                self.status.canary_weight = Some(w);
                self.status.step_started_at = Some(format_time(now));
                self.status.message = Some(format!("step {i}: canary at {w}%"));
                self.note(
                    false,
                    "WeightSet",
                    format!("step {i}: canary weight {w}% written and verified"),
                );
                return;
            }
            let elapsed = now - step_started.unwrap_or(now);
            let min = step.duration.as_ref().map_or(0, |d| secs(d, 0));
            if elapsed < min {
                self.status.message =
                    Some(format!("step {i}: canary at {w}%, {}s of {min}s", elapsed));
                self.requeue = self.wake_in(Some((min - elapsed) as u64));
                return;
            }
            self.leave_step(i, &format!("canary at {w}%"));
        } else if let Some(pause) = &step.pause {
            match pause.duration.as_ref().map(|d| secs(d, 0)) {
                Some(d) => {
                    let Some(started) = step_started else {
                        self.status.step_started_at = Some(format_time(now));
                        return;
                    };
                    if now - started >= d {
                        self.leave_step(i, "pause over");
                    } else {
                        self.status.message =
                            Some(format!("step {i}: pause, {}s of {d}s", now - started));
                    }
                }
                None => {
                    if self.phase() != RolloutPhase::Paused {
                        self.note(
                            false,
                            "Paused",
                            format!("step {i}: paused until `rollguard resume`"),
                        );
                    }
                    self.set_phase(
                        RolloutPhase::Paused,
                        format!("step {i}: paused until `rollguard resume`"),
                    );
                    self.requeue = 5;
                }
            }
        }
    }

    /// A step whose time is up is left on a Pass, or with no analysis when the owner wrote
    /// that choice into the spec (`withoutAnalysis`). A Fail rolls back; anything else waits
    /// for evidence.
    fn leave_step(&mut self, i: i32, at: &str) {
        let analysis = self.obs.analysis.clone();
        match analysis.as_ref().map(|a| &a.decision) {
            Some(Decision::Pass) => self.advance(),
            None if self.spec.analysis.is_none() && self.spec.without_analysis => self.advance(),
            Some(Decision::Fail { metric, reason, .. }) => {
                let (m, r) = (metric.clone(), reason.clone());
                let (at, ev) = analysis
                    .as_ref()
                    .map(|a| (a.first_fail_at, failing(&a.summary)))
                    .unwrap_or_default();
                self.begin_rollback(
                    format!("metric {m} failed at the end of step {i}: {r}"),
                    Some(m),
                    at,
                    ev,
                );
            }
            _ => {
                self.status.message = Some(format!(
                    "step {i}: {at}, waiting for enough evidence to pass"
                ));
                self.requeue = self.wake_in(None);
            }
        }
    }

    /// Why the canary may not be judged: its analysis cannot start, or the Rollout has none
    /// without saying so. Holding keeps the canary where it is (weight 0 before the first step)
    /// and says why, in the phase message, a condition and one warning Event; it lifts by
    /// itself once the analysis starts.
    fn held_unjudged(&mut self) -> bool {
        let why = match (&self.spec.analysis, &self.obs.analysis_invalid) {
            (Some(_), Some(why)) => Some(why.clone()),
            (None, _) if !self.spec.without_analysis => Some(
                "the Rollout has no analysis; set spec.analysis, or spec.withoutAnalysis: true to \
                 promote on the steps' timing alone"
                    .to_owned(),
            ),
            _ => None,
        };
        let now = self.now();
        let flagged = self
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "AnalysisInvalid" && c.status == "True");
        let Some(why) = why else {
            if flagged {
                set_condition(
                    &mut self.status,
                    "AnalysisInvalid",
                    false,
                    "Started",
                    "the analysis runs",
                    now,
                );
                self.timeline(
                    "AnalysisStarted",
                    "the analysis runs; the canary is judged again",
                );
            }
            return false;
        };
        let weight = self.status.canary_weight.unwrap_or(0);
        let message = format!(
            "held at {weight}%: the analysis cannot start, and a canary advances only on a Pass: \
             {why}"
        );
        if !flagged {
            self.note(true, "AnalysisInvalid", message.clone());
        }
        set_condition(
            &mut self.status,
            "AnalysisInvalid",
            true,
            "CannotStart",
            &why,
            now,
        );
        self.set_phase(RolloutPhase::Paused, message);
        self.requeue = 10;
        true
    }

    /// Releases are made per image digest. A target whose pod template changed while its
    /// digest did not (an environment variable, a resource limit, `kubectl rollout restart`)
    /// is not a new Release, and the stable Deployment keeps the Release's template: say so,
    /// once, rather than let the change look applied.
    fn check_template(&mut self, stable: &ReleaseRef) {
        let target = self.obs.target.as_ref().and_then(|t| t.template.clone());
        let release = self
            .release(&stable.release)
            .and_then(|r| r.template.clone());
        let (Some(target), Some(release)) = (target, release) else {
            return;
        };
        let now = self.now();
        let flagged = self
            .status
            .conditions
            .iter()
            .any(|c| c.type_ == "TemplateInSync" && c.status == "False");
        if target != release {
            let message = format!(
                "the target's pod template changed but its image digest is still {} (Release \
                 {}); rollguard releases by digest, so the change is not running. Ship it with a \
                 new image digest, or revert it on the target",
                stable.short_digest, stable.release
            );
            if !flagged {
                self.note(true, "TemplateNotRolledOut", message.clone());
            }
            set_condition(
                &mut self.status,
                "TemplateInSync",
                false,
                "SameDigest",
                &message,
                now,
            );
        } else if flagged {
            set_condition(
                &mut self.status,
                "TemplateInSync",
                true,
                "InSync",
                "the target's pod template is the stable Release's",
                now,
            );
        }
    }

    /// How long a canary at its step may sleep: until its step ends or its next measurement
    /// is due, whichever is first; at least 1 s and at most 30 s. Anything else that matters
    /// (the target, the arms, a request) wakes it through a watch.
    fn wake_in(&self, step_left: Option<u64>) -> u64 {
        let due = self.obs.analysis.as_ref().and_then(|a| a.next_due_in);
        [step_left, due]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(1)
            .clamp(1, 30)
    }

    /// Canary (and fresh baseline) replicas for the current weight.
    fn arm_replicas(&self) -> i32 {
        let w = self
            .status
            .canary_weight
            .filter(|w| *w > 0)
            .or_else(|| self.spec.steps.iter().find_map(|s| s.set_weight));
        canary_replicas(self.stable_replicas(), w.unwrap_or(1).max(1), self.mesh())
    }

    fn scale_arms(&mut self, replicas: i32) {
        if self
            .obs
            .canary
            .as_ref()
            .is_none_or(|w| w.replicas != replicas)
        {
            self.act(Action::ScaleArm {
                arm: Arm::Canary,
                replicas,
            });
        }
        if self.fresh()
            && self
                .obs
                .baseline
                .as_ref()
                .is_none_or(|w| w.replicas != replicas)
        {
            self.act(Action::ScaleArm {
                arm: Arm::Baseline,
                replicas,
            });
        }
    }

    /// All traffic to stable, verified; canary and baseline scaled to 0.
    fn drain_canary(&mut self) {
        self.act(Action::SetWeights {
            canary: 0,
            baseline: 0,
        });
        self.act(Action::ScaleArm {
            arm: Arm::Canary,
            replicas: 0,
        });
        if self.fresh() {
            self.act(Action::ScaleArm {
                arm: Arm::Baseline,
                replicas: 0,
            });
        }
    }

    /// Take a canary away without judging it: weights to 0, arms to 0, Release Superseded.
    fn withdraw(&mut self, canary: &ReleaseRef, message: &str) {
        self.drain_canary();
        self.act(Action::ReleasePhase {
            release: canary.release.clone(),
            phase: ReleasePhase::Superseded,
            verdict: None,
        });
        self.act(Action::ResetAnalysis);
        self.status.canary = None;
        self.status.canary_weight = Some(0);
        self.status.current_step = None;
        self.status.step_started_at = None;
        self.note(false, "CanaryWithdrawn", message.to_owned());
        self.set_phase(RolloutPhase::Stable, message);
        self.requeue = 0;
    }

    fn promote(&mut self) {
        self.requeue = 1;
        let (Some(canary), Some(stable)) = (self.status.canary.clone(), self.status.stable.clone())
        else {
            self.set_phase(RolloutPhase::Stable, "nothing to promote");
            return;
        };
        if let Some(a) = self.obs.analysis.clone()
            && let Decision::Fail {
                metric,
                reason,
                critical: true,
            } = &a.decision
        {
            self.begin_rollback(
                format!("critical metric {metric} failed while promoting: {reason}"),
                Some(metric.clone()),
                a.first_fail_at,
                failing(&a.summary),
            );
            return;
        }
        let s = self.stable_replicas();
        let done = self.obs.stable.as_ref().is_some_and(|w| {
            w.rolled_out && w.replicas == s && w.release.as_deref() == Some(&canary.release)
        });
        if !done {
            self.act(Action::ApplyArm {
                arm: Arm::Stable,
                release: canary.release.clone(),
                replicas: s,
            });
            self.status.message = Some(format!(
                "promoting: rolling {} onto the stable Deployment",
                canary.short_digest
            ));
            return;
        }
        self.drain_canary();
        self.act(Action::ReleasePhase {
            release: canary.release.clone(),
            phase: ReleasePhase::Stable,
            verdict: None,
        });
        if stable.release != canary.release {
            self.act(Action::ReleasePhase {
                release: stable.release.clone(),
                phase: ReleasePhase::Superseded,
                verdict: None,
            });
        }
        self.act(Action::ResetAnalysis);
        self.act(Action::PruneReleases);
        self.status.previous_stable = Some(stable.clone());
        self.status.stable = Some(canary.clone());
        self.status.canary = None;
        self.status.canary_weight = Some(0);
        self.status.current_step = None;
        self.status.step_started_at = None;
        self.status.verify_until = self
            .spec
            .post_promotion_window
            .as_ref()
            .map(|w| format_time(self.obs.now + secs(w, 0)));
        if self.spec.escalation.is_some() {
            let now = self.now();
            let entry = OutboxEntry {
                dedup_key: format!("{}:promoted", self.key(&canary.release)),
                action: OutboxAction::Trigger,
                severity: Severity::Info,
                title: format!(
                    "{} promoted {} ({}), replacing {}",
                    qualified(&self.obs.namespace, self.name),
                    canary.release,
                    canary.short_digest,
                    stable.short_digest
                ),
                release: canary.release.clone(),
                from_digest: Some(stable.digest.clone()),
                to_digest: canary.digest.clone(),
                created_at: format_time(now),
                kind: IncidentKind::Promoted,
                state: DeliveryState::Pending,
                deliveries: Vec::new(),
            };
            enqueue(&mut self.status, self.spec, entry, now);
        }
        let now = self.now();
        let title = format!(
            "{} resolved: {} ({}) was promoted since",
            qualified(&self.obs.namespace, self.name),
            canary.release,
            canary.short_digest
        );
        resolve_where(
            &mut self.status,
            self.spec,
            is_rollback_incident,
            &title,
            now,
        );
        self.note(
            false,
            "Promoted",
            format!(
                "{} ({}) promoted; it replaces {}",
                canary.release, canary.short_digest, stable.short_digest
            ),
        );
        self.set_phase(
            RolloutPhase::Stable,
            format!("{} is stable", canary.release),
        );
        self.requeue = 0;
    }

    fn begin_rollback(
        &mut self,
        reason: String,
        metric: Option<String>,
        breach: Option<i64>,
        evidence: Vec<MetricEvidence>,
    ) {
        let Some(canary) = self.status.canary.clone() else {
            return;
        };
        self.start_saga(canary, reason, metric, breach, evidence);
    }

    /// Roll back the Release promoted last, within its post-promotion window: the saga restores
    /// the previous stable digest on the stable Deployment.
    fn begin_post_promotion_rollback(
        &mut self,
        reason: String,
        metric: Option<String>,
        breach: Option<i64>,
        evidence: Vec<MetricEvidence>,
    ) {
        let (Some(bad), Some(previous)) = (
            self.status.stable.clone(),
            self.status.previous_stable.clone(),
        ) else {
            return;
        };
        self.status.stable = Some(previous);
        self.status.previous_stable = None;
        self.status.verify_until = None;
        self.start_saga(bad, reason, metric, breach, evidence);
    }

    fn start_saga(
        &mut self,
        bad: ReleaseRef,
        reason: String,
        metric: Option<String>,
        breach: Option<i64>,
        evidence: Vec<MetricEvidence>,
    ) {
        let now = self.now();
        self.status.rollback = Some(RollbackStatus {
            release: bad.release.clone(),
            digest: bad.digest.clone(),
            reason: reason.clone(),
            metric,
            step: RollbackStep::ZeroWeights,
            completed: Vec::new(),
            started_at: format_time(now),
            breach_at: breach.map(format_time),
            weight_zero_at: None,
            recovered_at: None,
            not_recovered_at: None,
            attempts: 0,
            last_error: None,
            evidence,
            repeated: self
                .release(&bad.release)
                .is_some_and(|r| r.verdict.is_some()),
        });
        self.status.paused_by = None;
        self.note(
            true,
            "RollbackStarted",
            format!(
                "rolling back {} ({}): {reason}",
                bad.release, bad.short_digest
            ),
        );
        self.set_phase(RolloutPhase::RollingBack, format!("rolling back: {reason}"));
        // Recorded first; the saga's first step runs on the next pass, at once.
        self.actions
            .retain(|a| matches!(a, Action::ReleaseHistory { .. } | Action::ScaleTarget));
        self.requeue = 0;
    }

    fn roll_back(&mut self) {
        self.requeue = 1;
        let Some(mut rb) = self.status.rollback.clone() else {
            self.set_phase(RolloutPhase::Stable, "no rollback recorded");
            return;
        };
        let Some(stable) = self.status.stable.clone() else {
            self.set_phase(
                RolloutPhase::Initializing,
                "no stable Release to roll back to",
            );
            return;
        };
        let now = self.now();
        let s = self.stable_replicas();
        let stable_ok = |w: &Workload| w.ready >= s;
        let step = rb.step;
        let done = match step {
            RollbackStep::ZeroWeights => {
                if self.obs.stable.as_ref().is_none_or(|w| w.replicas < s) {
                    self.act(Action::ScaleArm {
                        arm: Arm::Stable,
                        replicas: s,
                    });
                }
                self.act(Action::SetWeights {
                    canary: 0,
                    baseline: 0,
                });
                self.status.canary_weight = Some(0);
                rb.weight_zero_at = Some(format_time(now));
                true
            }
            RollbackStep::EnsureStableCapacity => {
                if self.obs.stable.as_ref().is_none_or(|w| w.replicas < s) {
                    self.act(Action::ScaleArm {
                        arm: Arm::Stable,
                        replicas: s,
                    });
                }
                self.obs.stable.as_ref().is_some_and(stable_ok)
            }
            RollbackStep::RestoreStable => {
                let restored = self
                    .obs
                    .stable
                    .as_ref()
                    .is_some_and(|w| w.release.as_deref() == Some(&stable.release));
                if !restored {
                    self.act(Action::ApplyArm {
                        arm: Arm::Stable,
                        release: stable.release.clone(),
                        replicas: s,
                    });
                    if self
                        .release(&stable.release)
                        .is_some_and(|r| r.phase == Some(ReleasePhase::Superseded))
                    {
                        self.act(Action::ReleasePhase {
                            release: stable.release.clone(),
                            phase: ReleasePhase::Stable,
                            verdict: None,
                        });
                    }
                }
                self.act(Action::ScaleArm {
                    arm: Arm::Canary,
                    replicas: 0,
                });
                if self.fresh() {
                    self.act(Action::ScaleArm {
                        arm: Arm::Baseline,
                        replicas: 0,
                    });
                }
                true
            }
            RollbackStep::MarkUnstable => {
                self.act(Action::ReleasePhase {
                    release: rb.release.clone(),
                    phase: ReleasePhase::Unstable,
                    verdict: Some(ReleaseVerdict {
                        reason: rb.reason.clone(),
                        metric: rb.metric.clone(),
                        at: rb
                            .breach_at
                            .clone()
                            .unwrap_or_else(|| rb.started_at.clone()),
                        evidence: rb.evidence.clone(),
                    }),
                });
                true
            }
            RollbackStep::Escalate => {
                let title = rollback_title(&self.obs.namespace, self.name, &rb);
                let entry = incident(
                    &rb,
                    if rb.repeated {
                        format!("{}:again", self.key(&rb.release))
                    } else {
                        self.key(&rb.release)
                    },
                    IncidentKind::Rollback,
                    OutboxAction::Trigger,
                    if rb.repeated {
                        Severity::Critical
                    } else {
                        self.severity()
                    },
                    title,
                    Some(stable.digest.clone()),
                    now,
                );
                enqueue(&mut self.status, self.spec, entry, now);
                true
            }
            RollbackStep::VerifyRecovery => {
                let since = rb
                    .completed
                    .last()
                    .and_then(|c| parse_at(Some(&c.at)))
                    .unwrap_or(now);
                let since = since.max(parse_at(rb.not_recovered_at.as_deref()).unwrap_or(0));
                let window = secs(&self.spec.recovery_window, 30);
                let serving = self.obs.stable.as_ref().is_some_and(|w| {
                    w.rolled_out && stable_ok(w) && w.release.as_deref() == Some(&stable.release)
                });
                // The restored stable is judged against itself before the rollout: still worse
                // means the rollback did not bring the service back.
                if let Some(a) = &self.obs.analysis
                    && let Decision::Fail { metric, reason, .. } = &a.decision
                {
                    let (metric, reason) = (metric.clone(), reason.clone());
                    self.status.analysis = Some(a.summary.clone());
                    self.not_recovered(&mut rb, &stable, &metric, &reason);
                    self.status.rollback = Some(rb);
                    return;
                }
                let drained = self.obs.canary.as_ref().is_none_or(|w| w.pods == 0)
                    && self
                        .obs
                        .baseline
                        .as_ref()
                        .is_none_or(|w| w.pods == 0 || !self.fresh());
                if serving && drained && now - since >= window {
                    rb.recovered_at = Some(format_time(now));
                    let title = format!(
                        "{} recovered on {} after rolling back {}",
                        qualified(&self.obs.namespace, self.name),
                        stable.short_digest,
                        short_digest(&rb.digest)
                    );
                    // The service is back, so the alarms about it not being back close; the
                    // rollback's own incident stays open until a human resolves it (the root
                    // cause is theirs to find) or a later release is promoted.
                    let prefix = format!("{}:", self.key(&rb.release));
                    resolve_where(
                        &mut self.status,
                        self.spec,
                        |e| {
                            matches!(
                                e.kind,
                                IncidentKind::NotRecovered | IncidentKind::RollbackIncomplete
                            ) && e.dedup_key.starts_with(&prefix)
                        },
                        &title,
                        now,
                    );
                    true
                } else {
                    self.status.message = Some(format!(
                        "rolled back; verifying recovery on {} ({}s of {window}s)",
                        stable.short_digest,
                        (now - since).max(0)
                    ));
                    false
                }
            }
            RollbackStep::Done => false,
        };
        if done {
            rb.completed.push(SagaRecord {
                step,
                at: format_time(now),
            });
            rb.step = step.next();
            rb.attempts = 0;
            rb.last_error = None;
            if self
                .status
                .conditions
                .iter()
                .any(|c| c.type_ == "RollbackIncomplete" && c.status == "True")
            {
                set_condition(
                    &mut self.status,
                    "RollbackIncomplete",
                    false,
                    "StepSucceeded",
                    &format!("{step} succeeded"),
                    now,
                );
            }
            // A note, not only a timeline entry: each saga step shows in Events and the log.
            self.note(
                false,
                &format!("Rollback{step}"),
                format!("rollback step {step} done"),
            );
            self.requeue = 0;
        }
        let finished = rb.step == RollbackStep::Done;
        let release = rb.release.clone();
        self.status.rollback = Some(rb);
        if finished {
            self.status.canary = None;
            self.status.current_step = None;
            self.status.step_started_at = None;
            self.act(Action::ResetAnalysis);
            self.note(
                false,
                "RolledBack",
                format!(
                    "{release} rolled back; {} serves and recovered",
                    stable.release
                ),
            );
            self.set_phase(
                RolloutPhase::RolledBack,
                format!("{release} was rolled back; {} serves", stable.release),
            );
            self.requeue = 0;
        } else if self
            .status
            .message
            .as_deref()
            .is_none_or(|m| !m.starts_with("rolled back;"))
        {
            self.status.message = Some(format!(
                "rolling back {release}: next step {}",
                self.status
                    .rollback
                    .as_ref()
                    .map_or(RollbackStep::Done, |r| r.step)
            ));
        }
    }
}

fn abort_reason(req: &Request) -> String {
    format!("aborted by {}{}", req.by, reason_suffix(req))
}

fn reason_suffix(req: &Request) -> String {
    req.reason
        .as_ref()
        .map(|r| format!(": {r}"))
        .unwrap_or_default()
}

/// The measurements that failed, or all of them when none is marked Fail.
fn failing(summary: &AnalysisSummary) -> Vec<MetricEvidence> {
    let failed: Vec<MetricEvidence> = summary
        .metrics
        .iter()
        .filter(|m| m.verdict == "Fail")
        .cloned()
        .collect();
    if failed.is_empty() {
        summary.metrics.clone()
    } else {
        failed
    }
}

fn push_timeline(status: &mut RolloutStatus, now: i64, reason: &str, message: &str) {
    status.timeline.push(TimelineEntry {
        at: format_time(now),
        reason: reason.to_owned(),
        message: bounded(message),
    });
    let excess = status.timeline.len().saturating_sub(TIMELINE_LIMIT);
    status.timeline.drain(..excess);
}

#[allow(clippy::too_many_arguments)]
fn incident(
    rb: &RollbackStatus,
    dedup_key: String,
    kind: IncidentKind,
    action: OutboxAction,
    severity: Severity,
    title: String,
    from_digest: Option<String>,
    now: i64,
) -> OutboxEntry {
    OutboxEntry {
        dedup_key,
        action,
        severity,
        title,
        release: rb.release.clone(),
        from_digest,
        to_digest: rb.digest.clone(),
        created_at: format_time(now),
        kind,
        state: DeliveryState::Pending,
        deliveries: Vec::new(),
    }
}

/// The title of a rollback's incident: what, where, and the symptom that caused it.
pub fn rollback_title(namespace: &str, name: &str, rb: &RollbackStatus) -> String {
    let who = qualified(namespace, name);
    let when = match (rb.reason.contains("after promotion"), rb.repeated) {
        (true, _) => "rolled back after promotion",
        (false, false) => "canary rolled back",
        (false, true) => "canary rolled back again, after its Unstable verdict was overridden",
    };
    let symptom = rb.metric.as_ref().and_then(|m| {
        rb.evidence
            .iter()
            .find(|e| &e.metric == m && e.verdict == "Fail")
            .map(|e| format!("{m} {}", headline(&e.reason)))
    });
    format!(
        "{who} {when} ({}): {}",
        short_digest(&rb.digest),
        symptom.unwrap_or_else(|| rb.reason.clone())
    )
}

/// A rollback's incident, or one of the escalations that followed it.
fn is_rollback_incident(e: &OutboxEntry) -> bool {
    matches!(
        e.kind,
        IncidentKind::Rollback | IncidentKind::NotRecovered | IncidentKind::RollbackIncomplete
    )
}

/// Enqueues a Resolve for each open Trigger that `select` picks; how many it resolved.
fn resolve_where(
    status: &mut RolloutStatus,
    spec: &RolloutSpec,
    select: impl Fn(&OutboxEntry) -> bool,
    title: &str,
    now: i64,
) -> usize {
    let resolved = |key: &str| {
        status
            .outbox
            .iter()
            .any(|e| e.action == OutboxAction::Resolve && e.dedup_key == key)
    };
    let open: Vec<OutboxEntry> = status
        .outbox
        .iter()
        .filter(|e| e.action == OutboxAction::Trigger && select(e) && !resolved(&e.dedup_key))
        .cloned()
        .collect();
    let count = open.len();
    for trigger in open {
        let entry = OutboxEntry {
            action: OutboxAction::Resolve,
            title: title.to_owned(),
            created_at: format_time(now),
            state: DeliveryState::Pending,
            deliveries: Vec::new(),
            ..trigger
        };
        enqueue(status, spec, entry, now);
    }
    count
}

/// Puts an incident in the outbox once per (dedup key, action); false when it was there.
fn enqueue(status: &mut RolloutStatus, spec: &RolloutSpec, entry: OutboxEntry, now: i64) -> bool {
    if status
        .outbox
        .iter()
        .any(|e| e.dedup_key == entry.dedup_key && e.action == entry.action)
    {
        return false;
    }
    push_outbox(status, spec, entry, now);
    true
}

fn push_outbox(status: &mut RolloutStatus, spec: &RolloutSpec, entry: OutboxEntry, now: i64) {
    let receivers = spec.escalation.as_ref().map(|e| e.receivers.join(", "));
    let message = match receivers {
        Some(r) => format!(
            "{:?} {} for {r}: {}",
            entry.action, entry.dedup_key, entry.title
        ),
        None => format!(
            "{:?} {} recorded; the Rollout names no receivers",
            entry.action, entry.dedup_key
        ),
    };
    status.outbox.push(entry);
    let excess = status.outbox.len().saturating_sub(64);
    status.outbox.drain(..excess);
    push_timeline(status, now, "Escalation", &message);
}

/// Sets a condition; its transition time moves only when its status changes.
pub fn set_condition(
    status: &mut RolloutStatus,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    now: i64,
) {
    let value = if ok { "True" } else { "False" };
    let message = bounded(message);
    let message = message.as_str();
    let time = Time(Timestamp::from_second(now).unwrap_or(Timestamp::UNIX_EPOCH));
    if let Some(c) = status.conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != value {
            c.last_transition_time = time;
        }
        c.status = value.into();
        c.reason = reason.into();
        c.message = message.into();
        c.observed_generation = status.observed_generation;
    } else {
        status.conditions.push(Condition {
            type_: type_.into(),
            status: value.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: time,
            observed_generation: status.observed_generation,
        });
    }
}

/// How a deployment ended, for the DORA counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeploymentResult {
    /// Promoted, and through its post-promotion window when there is one.
    Promoted,
    /// Rolled back on evidence (a metric, the progress deadline, a failed verification).
    RolledBack,
    /// Rolled back because someone asked.
    Aborted,
    /// The target moved on before the canary finished.
    Withdrawn,
}

impl DeploymentResult {
    pub fn label(self) -> &'static str {
        match self {
            DeploymentResult::Promoted => "promoted",
            DeploymentResult::RolledBack => "rolled_back",
            DeploymentResult::Aborted => "aborted",
            DeploymentResult::Withdrawn => "withdrawn",
        }
    }
}

/// Timeline entries a plan added. The timeline is capped, so its length alone does not tell.
pub fn new_moments<'a>(
    before: &'a RolloutStatus,
    after: &'a RolloutStatus,
) -> impl Iterator<Item = &'a TimelineEntry> {
    after
        .timeline
        .iter()
        .filter(|e| !before.timeline.contains(e))
}

/// Whether a plan ended a deployment, and how. A promotion with a post-promotion window ends
/// when the window passes; one that fails it ends as rolled back, counted once.
pub fn deployment_result(
    before: &RolloutStatus,
    after: &RolloutStatus,
) -> Option<DeploymentResult> {
    new_moments(before, after).find_map(|m| match m.reason.as_str() {
        "RollbackStarted" => Some(
            if after
                .rollback
                .as_ref()
                .is_some_and(|rb| rb.reason.starts_with("aborted by "))
            {
                DeploymentResult::Aborted
            } else {
                DeploymentResult::RolledBack
            },
        ),
        "Promoted" if after.verify_until.is_none() => Some(DeploymentResult::Promoted),
        "VerificationPassed" => Some(DeploymentResult::Promoted),
        "CanaryWithdrawn" => Some(DeploymentResult::Withdrawn),
        _ => None,
    })
}

/// Rework: a plan started a new canary within `window_secs` of the last rollback, which
/// marked a Release Unstable.
pub fn is_rework(
    before: &RolloutStatus,
    after: &RolloutStatus,
    now: i64,
    window_secs: i64,
) -> bool {
    let started = new_moments(before, after).any(|m| m.reason == "CanaryStarted");
    let recent = before
        .rollback
        .as_ref()
        .and_then(|rb| parse_at(Some(rb.started_at.as_str())))
        .is_some_and(|at| now - at <= window_secs);
    started && recent
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::common::Duration;
    use crate::api::rollout::{Escalation, GatewayApiRouter, Step, TargetRef, TrafficRouter};

    const OLD: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const NEW: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn spec() -> RolloutSpec {
        RolloutSpec {
            target_ref: TargetRef { name: "c".into() },
            traffic_router: Some(TrafficRouter {
                gateway_api: Some(GatewayApiRouter {
                    http_route: "c".into(),
                }),
                istio: None,
                smi: None,
            }),
            steps: vec![
                Step {
                    set_weight: Some(10),
                    duration: Some(Duration::new("30s")),
                    pause: None,
                },
                Step {
                    set_weight: Some(50),
                    duration: None,
                    pause: None,
                },
            ],
            analysis: None,
            without_analysis: true,
            baseline: BaselineMode::Stable,
            progress_deadline: Duration::new("10m"),
            require_digest: true,
            post_promotion_window: None,
            recovery_window: Duration::new("30s"),
            escalation: Some(Escalation {
                receivers: vec!["pager".into()],
                severity: Severity::Error,
                runbook: None,
            }),
            history_limit: 10,
        }
    }

    fn artifact(digest: &str) -> Artifact {
        Artifact {
            digest: digest.into(),
            images: vec![("c".into(), format!("img@{digest}"))],
        }
    }

    fn workload(release: &str, digest: &str, replicas: i32) -> Workload {
        Workload {
            replicas,
            pods: replicas,
            ready: replicas,
            release: Some(release.into()),
            digest: Some(digest.into()),
            rolled_out: true,
        }
    }

    fn release(digest: &str, phase: ReleasePhase) -> ReleaseView {
        ReleaseView {
            name: release_name("c", digest),
            digest: digest.into(),
            phase: Some(phase),
            overridden: false,
            verdict: None,
            template: None,
        }
    }

    /// Stable on OLD with 4 replicas; the target declares `declared`.
    fn observed(declared: &str, now: i64) -> Observed {
        Observed {
            now,
            target: Some(TargetView {
                replicas: 0,
                artifact: Ok(artifact(declared)),
                template: None,
            }),
            stable: Some(workload(&release_name("c", OLD), OLD, 4)),
            releases: vec![release(OLD, ReleasePhase::Stable)],
            ..Observed::default()
        }
    }

    fn stable_status() -> RolloutStatus {
        RolloutStatus {
            phase: Some(RolloutPhase::Stable),
            replicas: Some(4),
            stable: Some(ReleaseRef {
                release: release_name("c", OLD),
                digest: OLD.into(),
                short_digest: short_digest(OLD),
            }),
            ..RolloutStatus::default()
        }
    }

    fn pass() -> AnalysisView {
        AnalysisView {
            decision: Decision::Pass,
            summary: AnalysisSummary::default(),
            first_fail_at: None,
            next_due_in: None,
        }
    }

    fn fail(critical: bool) -> AnalysisView {
        AnalysisView {
            decision: Decision::Fail {
                metric: "error-rate".into(),
                reason: "canary 10% vs 0.5%".into(),
                critical,
            },
            summary: AnalysisSummary {
                decision: "Fail".into(),
                metrics: vec![MetricEvidence {
                    metric: "error-rate".into(),
                    verdict: "Fail".into(),
                    ..MetricEvidence::default()
                }],
                ..AnalysisSummary::default()
            },
            first_fail_at: Some(1000),
            next_due_in: None,
        }
    }

    /// A canary at step 0, weight 10 verified at t=1000, ready with one pod.
    fn progressing() -> (RolloutStatus, Observed) {
        let mut s = stable_status();
        s.phase = Some(RolloutPhase::Progressing);
        s.canary = Some(ReleaseRef {
            release: release_name("c", NEW),
            digest: NEW.into(),
            short_digest: short_digest(NEW),
        });
        s.current_step = Some(0);
        s.canary_weight = Some(10);
        s.step_started_at = Some(format_time(1000));
        s.canary_started_at = Some(format_time(990));
        let mut o = observed(NEW, 1005);
        o.canary = Some(workload(&release_name("c", NEW), NEW, 1));
        o.releases.push(release(NEW, ReleasePhase::Progressing));
        (s, o)
    }

    #[test]
    fn a_template_change_under_the_stable_digest_is_reported_once_and_cleared() {
        let mut o = observed(OLD, 2000);
        o.releases[0].template = Some("t1".into());
        o.target.as_mut().expect("target").template = Some("t1".into());
        let same = decide("c", &spec(), &stable_status(), &o);
        assert!(
            same.status
                .conditions
                .iter()
                .all(|c| c.type_ != "TemplateInSync")
        );
        assert!(same.notes.is_empty());

        o.target.as_mut().expect("target").template = Some("t2".into());
        let changed = decide("c", &spec(), &stable_status(), &o);
        let c = changed
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "TemplateInSync")
            .expect("condition");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "SameDigest")
        );
        assert!(c.message.contains("not running"), "{}", c.message);
        assert_eq!(changed.notes.len(), 1);
        assert!(changed.notes[0].warning);
        assert!(
            changed
                .actions
                .iter()
                .all(|a| !matches!(a, Action::CreateRelease { .. })),
            "no Release for a template without a new digest"
        );
        let again = decide("c", &spec(), &changed.status, &o);
        assert!(again.notes.is_empty(), "said once");

        o.target.as_mut().expect("target").template = Some("t1".into());
        let reverted = decide("c", &spec(), &again.status, &o);
        let c = reverted
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "TemplateInSync")
            .expect("condition");
        assert_eq!(c.status, "True");
    }

    #[test]
    fn a_canary_mid_step_sleeps_until_its_next_measurement_or_the_steps_end() {
        // Step 0 lasts 30 s from t=1000; now is t=1005.
        let (s, mut o) = progressing();
        let mut due_in = |d: Option<u64>| {
            o.analysis = Some(AnalysisView {
                next_due_in: d,
                ..pass()
            });
            decide("c", &spec(), &s, &o).requeue_secs
        };
        assert_eq!(due_in(Some(3)), 3, "the next measurement first");
        assert_eq!(due_in(Some(0)), 1, "at least a second");
        assert_eq!(due_in(Some(60)), 25, "the step ends first");
        assert_eq!(due_in(None), 25, "no analysis: the step's end");
        let (s, mut o) = progressing();
        o.now = 1031;
        o.analysis = Some(AnalysisView {
            decision: Decision::Running,
            next_due_in: Some(4),
            ..pass()
        });
        assert_eq!(
            decide("c", &spec(), &s, &o).requeue_secs,
            4,
            "past the step's end without enough evidence: the next measurement"
        );
    }

    #[test]
    fn the_first_digest_becomes_stable_once_its_deployment_is_ready() {
        let mut o = observed(OLD, 100);
        o.stable = None;
        o.releases.clear();
        o.target = Some(TargetView {
            replicas: 4,
            artifact: Ok(artifact(OLD)),
            template: None,
        });
        let plan = decide("c", &spec(), &RolloutStatus::default(), &o);
        let r = release_name("c", OLD);
        assert_eq!(
            plan.actions,
            vec![
                Action::CreateRelease {
                    name: r.clone(),
                    phase: ReleasePhase::Candidate
                },
                Action::EnsureServices,
                Action::ApplyArm {
                    arm: Arm::Stable,
                    release: r.clone(),
                    replicas: 4
                },
            ]
        );
        assert_eq!(plan.status.phase, None, "still initializing");
        assert_eq!(
            plan.status.replicas,
            Some(4),
            "the target's size is remembered"
        );
        // Ready: the target is scaled down, weights verified, Release moved to Stable.
        o.stable = Some(workload(&r, OLD, 4));
        o.releases = vec![release(OLD, ReleasePhase::Candidate)];
        let plan = decide("c", &spec(), &plan.status, &o);
        assert_eq!(plan.actions[0], Action::ScaleTarget);
        assert!(plan.actions.contains(&Action::SetWeights {
            canary: 0,
            baseline: 0
        }));
        assert!(plan.actions.contains(&Action::ReleasePhase {
            release: r.clone(),
            phase: ReleasePhase::Stable,
            verdict: None
        }));
        assert_eq!(plan.status.phase, Some(RolloutPhase::Stable));
        assert_eq!(plan.status.stable.map(|s| s.digest), Some(OLD.into()));
    }

    #[test]
    fn tag_only_images_are_refused_with_a_condition() {
        let mut o = observed(OLD, 100);
        o.target = Some(TargetView {
            replicas: 4,
            artifact: Err("container \"c\" image \"img:1\" is not pinned by digest".into()),
            template: None,
        });
        let plan = decide("c", &spec(), &stable_status(), &o);
        assert!(!plan.actions.iter().any(|a| matches!(
            a,
            Action::ApplyArm {
                arm: Arm::Canary,
                ..
            }
        )));
        let c = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("condition");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "DigestRequired")
        );
        assert_eq!(plan.status.phase, Some(RolloutPhase::Stable));
    }

    #[test]
    fn a_new_digest_starts_a_canary_then_weights_it_after_its_pods_are_ready() {
        let plan = decide("c", &spec(), &stable_status(), &observed(NEW, 100));
        let r = release_name("c", NEW);
        assert!(plan.actions.contains(&Action::CreateRelease {
            name: r.clone(),
            phase: ReleasePhase::Progressing
        }));
        assert!(plan.actions.contains(&Action::ApplyArm {
            arm: Arm::Canary,
            release: r.clone(),
            replicas: 1
        }));
        assert_eq!(plan.status.phase, Some(RolloutPhase::Progressing));
        assert_eq!(
            plan.status.canary.as_ref().map(|c| c.digest.as_str()),
            Some(NEW)
        );
        // Not ready yet: no weight.
        let mut o = observed(NEW, 101);
        o.canary = Some(Workload {
            ready: 0,
            ..workload(&r, NEW, 1)
        });
        let waiting = decide("c", &spec(), &plan.status, &o);
        assert!(
            !waiting
                .actions
                .iter()
                .any(|a| matches!(a, Action::SetWeights { .. })),
            "{:?}",
            waiting.actions
        );
        // Ready: weight 10 written and verified, the step clock starts.
        o.canary = Some(workload(&r, NEW, 1));
        let weighted = decide("c", &spec(), &plan.status, &o);
        assert_eq!(
            weighted.actions,
            vec![Action::SetWeights {
                canary: 10,
                baseline: 0
            }]
        );
        assert_eq!(weighted.status.canary_weight, Some(10));
        assert_eq!(weighted.status.step_started_at, Some(format_time(101)));
    }

    fn analysed(mut sp: RolloutSpec) -> RolloutSpec {
        sp.analysis = Some(crate::api::rollout::RolloutAnalysis {
            templates: vec![crate::api::rollout::TemplateRef {
                name: "golden".into(),
                cluster_scope: false,
            }],
            args: vec![],
        });
        sp.without_analysis = false;
        sp
    }

    fn held(plan: &Plan) -> Option<&Condition> {
        plan.status
            .conditions
            .iter()
            .find(|c| c.type_ == "AnalysisInvalid" && c.status == "True")
    }

    #[test]
    fn a_target_named_like_an_arm_is_never_scaled_and_says_why() {
        let mut sp = spec();
        sp.target_ref.name = "c-stable".into();
        let mut o = observed(NEW, 1000);
        o.target.as_mut().expect("target").replicas = 1;
        let plan = decide("c", &sp, &stable_status(), &o);
        assert!(
            !plan.actions.contains(&Action::ScaleTarget),
            "{:?}",
            plan.actions
        );
        assert!(plan.actions.is_empty(), "{:?}", plan.actions);
        let ready = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(ready.reason, "TargetNameTaken");
        assert!(
            ready.message.contains("stable Deployment"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn a_canary_whose_analysis_cannot_start_is_held_at_weight_zero_until_it_can() {
        // Each of what the review found: a missing template, a refused argument, a bad query.
        for why in [
            "template golden: analysistemplates.rollguard.dev \"golden\" not found",
            "template golden: argument \"port\" = \"1 or vector(1)\" is not a valid integer",
            "template golden: metric error-rate: the query does not parse as PromQL: unclosed",
        ] {
            let (mut s, mut o) = progressing();
            s.canary_weight = Some(0);
            s.step_started_at = None;
            o.analysis_invalid = Some(why.into());
            let sp = analysed(spec());
            let plan = decide("c", &sp, &s, &o);
            assert!(
                !plan
                    .actions
                    .iter()
                    .any(|a| matches!(a, Action::SetWeights { .. })),
                "{why}: {:?}",
                plan.actions
            );
            assert_eq!(plan.status.canary_weight, Some(0));
            assert_eq!(plan.status.current_step, Some(0));
            assert_eq!(plan.status.phase, Some(RolloutPhase::Paused));
            assert!(plan.status.message.as_deref().unwrap_or("").contains(why));
            assert_eq!(held(&plan).map(|c| c.message.as_str()), Some(why));
            let notes: Vec<_> = plan.notes.iter().map(|n| n.reason.as_str()).collect();
            assert_eq!(notes, ["AnalysisInvalid"]);
            // Still broken on the next reconcile: held, with no second Event.
            let again = decide("c", &sp, &plan.status, &o);
            assert!(again.notes.is_empty() && held(&again).is_some());
            // Fixed: the first weight is set and the condition clears.
            o.analysis_invalid = None;
            let fixed = decide("c", &sp, &again.status, &o);
            assert!(fixed.actions.contains(&Action::SetWeights {
                canary: 10,
                baseline: 0
            }));
            assert!(held(&fixed).is_none(), "{:?}", fixed.status.conditions);
        }
    }

    #[test]
    fn a_withdrawn_held_canary_leaves_no_stale_condition() {
        let (mut s, mut o) = progressing();
        s.canary_weight = Some(0);
        s.step_started_at = None;
        o.analysis_invalid = Some("template golden: not found".into());
        let held_status = decide("c", &analysed(spec()), &s, &o).status;
        assert!(
            held_status
                .conditions
                .iter()
                .any(|c| c.type_ == "AnalysisInvalid" && c.status == "True")
        );
        // The target goes back to the stable digest: the canary is withdrawn, then idle.
        o.target = Some(TargetView {
            replicas: 0,
            artifact: Ok(artifact(OLD)),
            template: None,
        });
        let mut status = held_status;
        for _ in 0..3 {
            status = decide("c", &analysed(spec()), &status, &o).status;
        }
        assert_ne!(
            status.phase,
            Some(RolloutPhase::Paused),
            "{:?}",
            status.message
        );
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == "AnalysisInvalid")
            .expect("condition");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NoCanary")
        );
    }

    #[test]
    fn an_analysis_that_breaks_mid_run_holds_the_step_reached() {
        let (s, mut o) = progressing();
        o.now = 1031;
        o.analysis_invalid = Some("template golden: not found".into());
        let plan = decide("c", &analysed(spec()), &s, &o);
        assert_eq!(plan.status.current_step, Some(0));
        assert_eq!(plan.status.canary_weight, Some(10));
        assert_eq!(plan.status.phase, Some(RolloutPhase::Paused));
        assert!(held(&plan).is_some());
    }

    #[test]
    fn with_analysis_no_verdict_is_never_a_pass() {
        let (s, mut o) = progressing();
        o.now = 1031;
        o.analysis = None;
        let plan = decide("c", &analysed(spec()), &s, &o);
        assert_eq!(plan.status.current_step, Some(0), "no view is not a Pass");
        assert!(
            plan.status
                .message
                .as_deref()
                .unwrap_or("")
                .contains("evidence")
        );
    }

    #[test]
    fn a_rollout_without_analysis_must_say_so() {
        let (s, mut o) = progressing();
        o.now = 1031;
        let mut sp = spec();
        sp.without_analysis = false;
        let plan = decide("c", &sp, &s, &o);
        assert_eq!(plan.status.current_step, Some(0));
        assert!(held(&plan).is_some_and(|c| c.message.contains("withoutAnalysis")));
        sp.without_analysis = true;
        assert_eq!(decide("c", &sp, &s, &o).status.current_step, Some(1));
    }

    #[test]
    fn a_timed_pause_is_left_only_on_a_pass_and_a_fail_rolls_back() {
        let (mut s, mut o) = progressing();
        let mut sp = analysed(spec());
        sp.steps.insert(
            1,
            Step {
                set_weight: None,
                duration: None,
                pause: Some(crate::api::rollout::Pause {
                    duration: Some(Duration::new("10s")),
                }),
            },
        );
        s.current_step = Some(1);
        s.step_started_at = Some(format_time(1000));
        o.now = 1011;
        o.analysis = None;
        assert_eq!(decide("c", &sp, &s, &o).status.current_step, Some(1));
        o.analysis = Some(pass());
        assert_eq!(decide("c", &sp, &s, &o).status.current_step, Some(2));
        o.analysis = Some(fail(false));
        assert_eq!(
            decide("c", &sp, &s, &o).status.phase,
            Some(RolloutPhase::RollingBack)
        );
    }

    #[test]
    fn a_step_advances_only_after_its_duration_and_a_pass() {
        let (s, mut o) = progressing();
        let mut sp = spec();
        sp.analysis = Some(crate::api::rollout::RolloutAnalysis {
            templates: vec![],
            args: vec![],
        });
        sp.without_analysis = false;
        o.analysis = Some(pass());
        o.now = 1020;
        assert_eq!(
            decide("c", &sp, &s, &o).status.current_step,
            Some(0),
            "20 s of 30 s"
        );
        o.now = 1031;
        o.analysis = Some(AnalysisView {
            decision: Decision::Running,
            summary: AnalysisSummary::default(),
            first_fail_at: None,
            next_due_in: None,
        });
        assert_eq!(
            decide("c", &sp, &s, &o).status.current_step,
            Some(0),
            "not enough evidence"
        );
        o.analysis = Some(pass());
        let plan = decide("c", &sp, &s, &o);
        assert_eq!(plan.status.current_step, Some(1));
        assert_eq!(plan.status.step_started_at, None);
    }

    #[test]
    fn the_last_step_promotes_by_digest_then_the_weight_returns_to_stable() {
        let (mut s, mut o) = progressing();
        s.current_step = Some(2);
        s.phase = Some(RolloutPhase::Promoting);
        o.target = Some(TargetView {
            replicas: 0,
            artifact: Ok(artifact(NEW)),
            template: None,
        });
        let plan = decide("c", &spec(), &s, &o);
        let r = release_name("c", NEW);
        assert_eq!(
            plan.actions,
            vec![Action::ApplyArm {
                arm: Arm::Stable,
                release: r.clone(),
                replicas: 4
            }]
        );
        o.stable = Some(workload(&r, NEW, 4));
        let plan = decide("c", &spec(), &s, &o);
        assert_eq!(
            &plan.actions[..3],
            &[
                Action::SetWeights {
                    canary: 0,
                    baseline: 0
                },
                Action::ScaleArm {
                    arm: Arm::Canary,
                    replicas: 0
                },
                Action::ReleasePhase {
                    release: r.clone(),
                    phase: ReleasePhase::Stable,
                    verdict: None
                },
            ]
        );
        assert!(plan.actions.contains(&Action::ReleasePhase {
            release: release_name("c", OLD),
            phase: ReleasePhase::Superseded,
            verdict: None
        }));
        assert_eq!(
            plan.status.stable.as_ref().map(|r| r.digest.as_str()),
            Some(NEW)
        );
        assert_eq!(
            plan.status
                .previous_stable
                .as_ref()
                .map(|r| r.digest.as_str()),
            Some(OLD)
        );
        assert_eq!(plan.status.phase, Some(RolloutPhase::Stable));
        // A change event for the receivers that keep a record of changes (PagerDuty).
        let change: Vec<&OutboxEntry> = plan
            .status
            .outbox
            .iter()
            .filter(|e| e.kind == IncidentKind::Promoted)
            .collect();
        assert_eq!(change.len(), 1);
        assert_eq!(
            (change[0].severity, change[0].from_digest.as_deref()),
            (Severity::Info, Some(OLD))
        );
    }

    /// Drives the saga from a critical Fail to the end, the way the controller does: apply the
    /// plan, record its status, observe again.
    #[test]
    fn a_critical_fail_records_the_rollback_first_then_runs_every_step_once_in_order() {
        let (s, mut o) = progressing();
        o.analysis = Some(fail(true));
        let start = decide("c", &spec(), &s, &o);
        assert_eq!(start.status.phase, Some(RolloutPhase::RollingBack));
        assert!(
            start.actions.is_empty(),
            "the saga is recorded before its first step: {:?}",
            start.actions
        );
        let rb = start.status.rollback.clone().expect("saga recorded");
        assert_eq!(
            (rb.step, rb.breach_at.as_deref()),
            (RollbackStep::ZeroWeights, Some(format_time(1000).as_str()))
        );
        assert_eq!(rb.evidence.len(), 1);
        let mut status = start.status;
        let mut steps = Vec::new();
        let mut all = Vec::new();
        for t in 0..40 {
            o.now = 1006 + t;
            o.analysis = None;
            let plan = decide("c", &spec(), &status, &o);
            all.extend(plan.actions.clone());
            // The world follows the actions.
            for a in &plan.actions {
                if let Action::ScaleArm {
                    arm: Arm::Canary,
                    replicas: 0,
                } = a
                {
                    o.canary = Some(Workload {
                        replicas: 0,
                        pods: 0,
                        ready: 0,
                        ..workload("x", NEW, 0)
                    });
                }
            }
            if let Some(rb) = &plan.status.rollback
                && steps.last() != Some(&rb.step)
            {
                steps.push(rb.step);
            }
            status = plan.status;
            if status.phase == Some(RolloutPhase::RolledBack) {
                break;
            }
        }
        assert_eq!(
            status.phase,
            Some(RolloutPhase::RolledBack),
            "{:?}",
            status.message
        );
        assert_eq!(
            steps,
            vec![
                RollbackStep::EnsureStableCapacity,
                RollbackStep::RestoreStable,
                RollbackStep::MarkUnstable,
                RollbackStep::Escalate,
                RollbackStep::VerifyRecovery,
                RollbackStep::Done,
            ]
        );
        assert_eq!(
            all[0],
            Action::SetWeights {
                canary: 0,
                baseline: 0
            },
            "weight first"
        );
        let unstable = all
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::ReleasePhase {
                        phase: ReleasePhase::Unstable,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(unstable, 1);
        let rb = status.rollback.expect("saga");
        assert_eq!(rb.weight_zero_at, Some(format_time(1006)));
        assert!(rb.recovered_at.is_some());
        let triggers: Vec<&OutboxEntry> = status
            .outbox
            .iter()
            .filter(|e| e.action == OutboxAction::Trigger)
            .collect();
        assert_eq!(triggers.len(), 1, "exactly one incident");
        assert_eq!(
            triggers[0].dedup_key,
            dedup_key("", "c", &release_name("c", NEW))
        );
        assert_eq!(triggers[0].from_digest.as_deref(), Some(OLD));
        assert_eq!(
            status
                .outbox
                .iter()
                .filter(|e| e.action == OutboxAction::Resolve)
                .count(),
            0,
            "recovery leaves the incident open for a human"
        );
    }

    #[test]
    fn a_rollbacks_incident_closes_by_a_human_or_a_later_promotion_not_by_recovery() {
        let open = |s: &RolloutStatus| {
            s.outbox
                .iter()
                .filter(|e| e.action == OutboxAction::Trigger && e.kind == IncidentKind::Rollback)
                .filter(|t| {
                    !s.outbox
                        .iter()
                        .any(|r| r.action == OutboxAction::Resolve && r.dedup_key == t.dedup_key)
                })
                .count()
        };
        let (s, mut o) = progressing();
        o.analysis = Some(fail(true));
        let mut status = decide("c", &spec(), &s, &o).status;
        if let Some(rb) = status.rollback.as_mut() {
            rb.step = RollbackStep::Escalate;
        }
        o.analysis = None;
        status = decide("c", &spec(), &status, &o).status;
        assert_eq!(open(&status), 1);
        // A human resolves it, with a reason: one Resolve, recorded in the Release's history.
        o.request = Some(Ok(Request {
            id: "resolve-1".into(),
            action: RequestAction::Resolve,
            by: "alice".into(),
            reason: Some("bad payment client config, fixed".into()),
        }));
        let plan = decide("c", &spec(), &status, &o);
        assert_eq!(open(&plan.status), 0);
        let resolve = plan
            .status
            .outbox
            .iter()
            .find(|e| e.action == OutboxAction::Resolve)
            .expect("a Resolve");
        assert!(
            resolve.title.contains("resolved by alice"),
            "{}",
            resolve.title
        );
        assert!(plan.actions.iter().any(|a| matches!(a,
            Action::ReleaseHistory { release, entry } if *release == release_name("c", NEW)
                && entry.action == "resolve" && entry.by == "alice")));
        // Nothing open: a second resolve is ignored and says so.
        o.request = Some(Ok(Request {
            id: "resolve-2".into(),
            ..o.request.clone().and_then(Result::ok).expect("request")
        }));
        let again = decide("c", &spec(), &plan.status, &o);
        assert!(
            again.notes.iter().any(|n| n.reason == "RequestIgnored"),
            "{:?}",
            again.notes
        );
        // Without a human, the next promotion of the same Rollout closes it.
        let (mut p, mut po) = progressing();
        p.current_step = Some(2);
        p.phase = Some(RolloutPhase::Promoting);
        p.outbox = status.outbox.clone();
        assert_eq!(open(&p), 1);
        po.target = Some(TargetView {
            replicas: 0,
            artifact: Ok(artifact(NEW)),
            template: None,
        });
        po.stable = Some(workload(&release_name("c", NEW), NEW, 4));
        let promoted = decide("c", &spec(), &p, &po).status;
        assert_eq!(promoted.phase, Some(RolloutPhase::Stable));
        assert_eq!(open(&promoted), 0, "closed by the promotion");
    }

    #[test]
    fn a_replayed_saga_step_is_the_same_plan() {
        let (s, mut o) = progressing();
        o.analysis = Some(fail(true));
        let started = decide("c", &spec(), &s, &o).status;
        // A controller killed after zeroing the weight but before recording it does it again.
        let first = decide("c", &spec(), &started, &o);
        let again = decide("c", &spec(), &started, &o);
        assert_eq!(first.actions, again.actions);
        assert_eq!(
            first.actions,
            vec![Action::SetWeights {
                canary: 0,
                baseline: 0
            }]
        );
        // Escalating twice never makes two incidents.
        let mut at_escalate = started.clone();
        if let Some(rb) = at_escalate.rollback.as_mut() {
            rb.step = RollbackStep::Escalate;
        }
        let once = decide("c", &spec(), &at_escalate, &o).status;
        let mut replay = once.clone();
        if let Some(rb) = replay.rollback.as_mut() {
            rb.step = RollbackStep::Escalate;
        }
        let twice = decide("c", &spec(), &replay, &o).status;
        assert_eq!(twice.outbox.len(), 1);
    }

    #[test]
    fn a_second_rollback_of_an_overridden_release_is_its_own_critical_incident() {
        let (s, mut o) = progressing();
        o.analysis = Some(fail(true));
        // The first time: an incident at the Rollout's severity.
        let mut first = decide("c", &spec(), &s, &o).status;
        assert!(!first.rollback.as_ref().expect("saga").repeated);
        if let Some(rb) = first.rollback.as_mut() {
            rb.step = RollbackStep::Escalate;
        }
        let once = decide("c", &spec(), &first, &o).status;
        assert_eq!(once.outbox[0].severity, Severity::Error);
        // A human overrode the verdict and the same digest failed again.
        let new = release_name("c", NEW);
        if let Some(r) = o.releases.iter_mut().find(|r| r.name == new) {
            r.verdict = Some("canary 10% vs 0.5%".into());
        }
        let mut again = decide("c", &spec(), &s, &o).status;
        assert!(again.rollback.as_ref().expect("saga").repeated);
        if let Some(rb) = again.rollback.as_mut() {
            rb.step = RollbackStep::Escalate;
        }
        again.outbox = once.outbox.clone();
        let twice = decide("c", &spec(), &again, &o).status;
        assert_eq!(twice.outbox.len(), 2, "not deduplicated into the first");
        let second = &twice.outbox[1];
        assert_eq!(second.severity, Severity::Critical);
        assert!(second.dedup_key.ends_with(":again"), "{}", second.dedup_key);
        assert!(
            second.title.contains("rolled back again"),
            "{}",
            second.title
        );
    }

    #[test]
    fn a_failure_after_a_finished_rollback_is_not_counted_against_that_saga() {
        let (s, mut o) = progressing();
        o.analysis = Some(fail(true));
        let mut status = decide("c", &spec(), &s, &o).status;
        if let Some(rb) = status.rollback.as_mut() {
            rb.step = RollbackStep::Done;
        }
        status.phase = Some(RolloutPhase::RolledBack);
        let denied = "permission denied: u may not patch httproutes.gateway.networking.k8s.io";
        let once = failed("", "c", &spec(), &status, denied, 1010);
        let twice = failed("", "c", &spec(), &once, denied, 1010);
        assert_eq!(once, twice, "the same failure again changes nothing");
        assert_eq!(
            once.rollback, status.rollback,
            "the finished saga is left alone"
        );
        assert_eq!(once.outbox, status.outbox, "no RollbackIncomplete incident");
        let ready = once
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "PermissionDenied")
        );
        let other = failed("", "c", &spec(), &status, "connection refused", 1010);
        assert!(other.conditions.iter().any(|c| c.reason == "ActionFailed"));
    }

    #[test]
    fn a_failing_step_raises_rollback_incomplete_and_one_critical_incident() {
        let (s, mut o) = progressing();
        o.analysis = Some(fail(true));
        let mut status = decide("c", &spec(), &s, &o).status;
        for _ in 0..5 {
            status = failed(
                "",
                "c",
                &spec(),
                &status,
                "HTTPRoute c: connection refused",
                1010,
            );
        }
        let rb = status.rollback.as_ref().expect("saga");
        assert_eq!((rb.step, rb.attempts), (RollbackStep::ZeroWeights, 5));
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == "RollbackIncomplete")
            .expect("condition");
        assert_eq!(c.status, "True");
        assert!(c.message.contains("connection refused"), "{}", c.message);
        let critical: Vec<&OutboxEntry> = status
            .outbox
            .iter()
            .filter(|e| e.severity == Severity::Critical)
            .collect();
        assert_eq!(
            critical.len(),
            1,
            "one critical incident however often it fails"
        );
        // The step succeeds at last: the condition clears, the saga moves on.
        let plan = decide("c", &spec(), &status, &o);
        let c = plan
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == "RollbackIncomplete")
            .expect("condition");
        assert_eq!(c.status, "False");
        assert_eq!(
            plan.status.rollback.map(|r| r.step),
            Some(RollbackStep::EnsureStableCapacity)
        );
    }

    #[test]
    fn a_non_critical_fail_rolls_back_when_the_step_ends() {
        let (s, mut o) = progressing();
        o.analysis = Some(fail(false));
        o.now = 1010;
        assert_eq!(
            decide("c", &spec(), &s, &o).status.phase,
            Some(RolloutPhase::Progressing)
        );
        o.now = 1031;
        assert_eq!(
            decide("c", &spec(), &s, &o).status.phase,
            Some(RolloutPhase::RollingBack)
        );
    }

    #[test]
    fn an_unstable_digest_is_blocked_until_overridden() {
        let mut o = observed(NEW, 2000);
        o.releases.push(ReleaseView {
            verdict: Some("error-rate failed".into()),
            template: None,
            ..release(NEW, ReleasePhase::Unstable)
        });
        let plan = decide("c", &spec(), &stable_status(), &o);
        assert_eq!(plan.status.phase, Some(RolloutPhase::Blocked));
        assert!(
            plan.status.message.as_deref().is_some_and(
                |m| m.contains("error-rate failed") && m.contains("rollguard override")
            )
        );
        assert!(!plan.actions.iter().any(|a| matches!(
            a,
            Action::ApplyArm {
                arm: Arm::Canary,
                ..
            }
        )));
        // Overridden: Unstable → Candidate → Progressing, and a canary starts.
        o.releases[1].overridden = true;
        let plan = decide("c", &spec(), &plan.status, &o);
        assert_eq!(plan.status.phase, Some(RolloutPhase::Progressing));
        let r = release_name("c", NEW);
        assert_eq!(
            &plan.actions[..2],
            &[
                Action::ReleasePhase {
                    release: r.clone(),
                    phase: ReleasePhase::Candidate,
                    verdict: None
                },
                Action::ReleasePhase {
                    release: r,
                    phase: ReleasePhase::Progressing,
                    verdict: None
                },
            ]
        );
    }

    #[test]
    fn a_malformed_request_is_warned_about_once() {
        let (s, mut o) = progressing();
        o.request = Some(Err(InvalidRequest {
            id: "invalid-1".into(),
            why: "missing field `action`".into(),
        }));
        let plan = decide("c", &spec(), &s, &o);
        let warned: Vec<&Note> = plan
            .notes
            .iter()
            .filter(|n| n.reason == "RequestInvalid")
            .collect();
        assert_eq!(warned.len(), 1);
        assert!(warned[0].warning && warned[0].message.contains("missing field"));
        assert_eq!(plan.status.phase, Some(RolloutPhase::Progressing));
        let again = decide("c", &spec(), &plan.status, &o);
        assert!(again.notes.iter().all(|n| n.reason != "RequestInvalid"));
    }

    #[test]
    fn requests_are_acted_on_once() {
        let (s, o) = progressing();
        let mut o = o;
        o.request = Some(Ok(Request {
            id: "r1".into(),
            action: RequestAction::Pause,
            by: "alice".into(),
            reason: None,
        }));
        let paused = decide("c", &spec(), &s, &o).status;
        assert_eq!(paused.phase, Some(RolloutPhase::Paused));
        assert_eq!(paused.paused_by.as_deref(), Some("alice"));
        assert_eq!(
            decide("c", &spec(), &paused, &o).status.phase,
            Some(RolloutPhase::Paused)
        );
        o.request = Some(Ok(Request {
            id: "r2".into(),
            action: RequestAction::Abort,
            by: "bob".into(),
            reason: Some("pager noise".into()),
        }));
        let aborted = decide("c", &spec(), &paused, &o);
        assert_eq!(aborted.status.phase, Some(RolloutPhase::RollingBack));
        assert_eq!(
            aborted.status.rollback.map(|r| r.reason),
            Some("aborted by bob: pager noise".into())
        );
        assert!(aborted.actions.iter().any(|a| matches!(a, Action::ReleaseHistory { entry, .. } if entry.action == "abort" && entry.by == "bob")));
        // The same request again changes nothing.
        let mut seen = paused.clone();
        seen.acknowledged_request = Some("r2".into());
        assert_eq!(
            decide("c", &spec(), &seen, &o).status.phase,
            Some(RolloutPhase::Paused)
        );
    }

    /// NEW promoted at t=2000 (its canary started at t=1000) with a window until t=5000.
    fn in_verify_window() -> (RolloutStatus, Observed) {
        let mut s = stable_status();
        let new_ref = ReleaseRef {
            release: release_name("c", NEW),
            digest: NEW.into(),
            short_digest: short_digest(NEW),
        };
        s.previous_stable = s.stable.replace(new_ref);
        s.canary_started_at = Some(format_time(1000));
        s.verify_until = Some(format_time(5000));
        let mut o = observed(NEW, 3000);
        o.stable = Some(workload(&release_name("c", NEW), NEW, 4));
        (s, o)
    }

    /// Runs a few passes from `status` and says whether OLD went back on the stable Deployment.
    fn restores_old(mut status: RolloutStatus, o: &mut Observed) -> bool {
        assert_eq!(status.stable.as_ref().map(|r| r.digest.as_str()), Some(OLD));
        let mut restored = false;
        for t in 0..6 {
            o.now = 3001 + t;
            let plan = decide("c", &spec(), &status, o);
            restored |= plan.actions.contains(&Action::ApplyArm {
                arm: Arm::Stable,
                release: release_name("c", OLD),
                replicas: 4,
            });
            status = plan.status;
        }
        restored
    }

    #[test]
    fn an_abort_in_the_post_promotion_window_restores_the_previous_digest() {
        let (s, mut o) = in_verify_window();
        o.request = Some(Ok(Request {
            id: "r".into(),
            action: RequestAction::Abort,
            by: "ic".into(),
            reason: None,
        }));
        let status = decide("c", &spec(), &s, &o).status;
        o.request = None;
        assert!(
            restores_old(status, &mut o),
            "the previous stable digest goes back on the stable Deployment"
        );
    }

    #[test]
    fn a_failing_verification_in_the_window_restores_the_previous_digest() {
        let (s, mut o) = in_verify_window();
        // The verification's baseline looks back to before the canary started, the window long.
        assert_eq!(verify_baseline_offset(&s, 3000), Some(4000));
        assert_eq!(verify_baseline_offset(&s, 5000), None);
        // Passing or still collecting: nothing happens.
        for view in [None, Some(pass())] {
            o.analysis = view;
            let plan = decide("c", &spec(), &s, &o);
            assert_eq!(plan.status.phase, Some(RolloutPhase::Stable));
            assert!(plan.status.rollback.is_none());
        }
        // Inconclusive (say, no history before the rollout) leaves the promoted release alone.
        o.analysis = Some(AnalysisView {
            decision: Decision::Inconclusive {
                metric: "error-rate".into(),
                reason: "baseline: no data".into(),
                action: InconclusiveAction::Rollback,
            },
            ..pass()
        });
        assert!(decide("c", &spec(), &s, &o).status.rollback.is_none());
        // Any acting Fail rolls back, critical or not.
        o.analysis = Some(fail(false));
        let plan = decide("c", &spec(), &s, &o);
        assert_eq!(plan.status.phase, Some(RolloutPhase::RollingBack));
        let rb = plan.status.rollback.clone().expect("saga");
        assert_eq!(rb.release, release_name("c", NEW));
        assert_eq!(rb.metric.as_deref(), Some("error-rate"));
        assert_eq!(rb.breach_at, Some(format_time(1000)));
        assert!(rb.reason.contains("after promotion"), "{}", rb.reason);
        assert!(
            restores_old(plan.status, &mut o),
            "the previous stable digest goes back on the stable Deployment"
        );
        // After the window, a Fail is ignored (the run is dropped with the window).
        let mut late = s.clone();
        late.verify_until = Some(format_time(2500));
        o.now = 3000;
        o.analysis = Some(fail(true));
        let plan = decide("c", &spec(), &late, &o);
        assert_eq!(plan.status.phase, Some(RolloutPhase::Stable));
        assert!(plan.actions.contains(&Action::ResetAnalysis));
        assert!(plan.status.verify_until.is_none());
    }

    #[test]
    fn a_canary_that_never_gets_ready_is_rolled_back_at_the_deadline() {
        let (mut s, mut o) = progressing();
        s.step_started_at = None;
        s.canary_weight = Some(0);
        o.canary = Some(Workload {
            ready: 0,
            ..workload(&release_name("c", NEW), NEW, 1)
        });
        o.now = 990 + 599;
        assert_eq!(
            decide("c", &spec(), &s, &o).status.phase,
            Some(RolloutPhase::Progressing)
        );
        o.now = 990 + 601;
        let plan = decide("c", &spec(), &s, &o);
        assert_eq!(plan.status.phase, Some(RolloutPhase::RollingBack));
        assert!(
            plan.status
                .rollback
                .is_some_and(|r| r.reason.contains("progress deadline"))
        );
    }

    #[test]
    fn a_target_reverted_to_stable_withdraws_the_canary_without_a_verdict() {
        let (s, mut o) = progressing();
        o.target = Some(TargetView {
            replicas: 0,
            artifact: Ok(artifact(OLD)),
            template: None,
        });
        let plan = decide("c", &spec(), &s, &o);
        assert_eq!(plan.status.phase, Some(RolloutPhase::Stable));
        assert_eq!(
            plan.actions[0],
            Action::SetWeights {
                canary: 0,
                baseline: 0
            }
        );
        assert!(plan.actions.contains(&Action::ReleasePhase {
            release: release_name("c", NEW),
            phase: ReleasePhase::Superseded,
            verdict: None
        }));
        assert!(plan.status.canary.is_none());
    }

    /// A rollback driven to its VerifyRecovery step, with the canary drained.
    fn verifying_recovery() -> (RolloutStatus, Observed) {
        let (s, mut o) = progressing();
        o.analysis = Some(fail(true));
        let mut status = decide("c", &spec(), &s, &o).status;
        o.analysis = None;
        o.canary = Some(workload("x", NEW, 0));
        if let Some(c) = o.canary.as_mut() {
            c.pods = 0;
        }
        for t in 0..10 {
            o.now = 1006 + t;
            status = decide("c", &spec(), &status, &o).status;
            if status.rollback.as_ref().map(|r| r.step) == Some(RollbackStep::VerifyRecovery) {
                return (status, o);
            }
        }
        panic!("never reached VerifyRecovery: {:?}", status.rollback);
    }

    #[test]
    fn a_rollback_that_does_not_recover_escalates_again_at_critical_then_resolves_all() {
        let (mut status, mut o) = verifying_recovery();
        let since = o.now;
        assert_eq!(
            recovery_baseline_offset(&spec(), &status),
            Some((since + 30 - 990) as u64),
            "the baseline looks back before the canary started, over the whole window"
        );
        o.analysis = Some(fail(false));
        for t in 1..4 {
            o.now = since + t;
            let plan = decide("c", &spec(), &status, &o);
            assert!(plan.actions.contains(&Action::ResetAnalysis));
            status = plan.status;
        }
        let not_recovered: Vec<&OutboxEntry> = status
            .outbox
            .iter()
            .filter(|e| e.kind == IncidentKind::NotRecovered)
            .collect();
        assert_eq!(
            not_recovered.len(),
            1,
            "escalated again once, not per measurement"
        );
        assert_eq!(not_recovered[0].severity, Severity::Critical);
        assert!(
            not_recovered[0].title.contains("did not recover")
                && not_recovered[0].title.contains("error-rate"),
            "{}",
            not_recovered[0].title
        );
        assert_eq!(
            status.rollback.as_ref().map(|r| r.step),
            Some(RollbackStep::VerifyRecovery)
        );
        // The window starts again from the last failure; healthy for 30 s, it resolves the
        // not-recovered escalation; the rollback's incident stays open for a human.
        o.analysis = None;
        o.now = since + 3 + 29;
        status = decide("c", &spec(), &status, &o).status;
        assert_eq!(
            status.rollback.as_ref().map(|r| r.step),
            Some(RollbackStep::VerifyRecovery),
            "29 s after the last failure is not yet a window"
        );
        o.now = since + 3 + 30;
        status = decide("c", &spec(), &status, &o).status;
        assert_eq!(status.phase, Some(RolloutPhase::RolledBack));
        let resolved: Vec<&str> = status
            .outbox
            .iter()
            .filter(|e| e.action == OutboxAction::Resolve)
            .map(|e| e.dedup_key.as_str())
            .collect();
        let key = dedup_key("", "c", &release_name("c", NEW));
        assert_eq!(resolved, vec![format!("{key}:not-recovered")]);
    }

    #[test]
    fn a_blocked_rollout_notifies_once_and_resolves_when_unblocked() {
        let mut o = observed(NEW, 2000);
        o.releases.push(ReleaseView {
            verdict: Some("error-rate: canary 8% vs baseline 0.5%".into()),
            template: None,
            ..release(NEW, ReleasePhase::Unstable)
        });
        let mut status = stable_status();
        for t in 0..5 {
            o.now = 2000 + t;
            status = decide("c", &spec(), &status, &o).status;
        }
        assert_eq!(status.phase, Some(RolloutPhase::Blocked));
        let blocked: Vec<&OutboxEntry> = status
            .outbox
            .iter()
            .filter(|e| e.kind == IncidentKind::Blocked)
            .collect();
        assert_eq!(blocked.len(), 1, "once, not on every reconcile");
        assert_eq!(blocked[0].severity, Severity::Warning);
        // Back to the stable digest: no longer blocked, and the notice is resolved.
        o.target = Some(TargetView {
            replicas: 0,
            artifact: Ok(artifact(OLD)),
            template: None,
        });
        status = decide("c", &spec(), &status, &o).status;
        assert_eq!(status.phase, Some(RolloutPhase::Stable));
        let resolves = status
            .outbox
            .iter()
            .filter(|e| e.kind == IncidentKind::Blocked && e.action == OutboxAction::Resolve)
            .count();
        assert_eq!(resolves, 1);
    }

    #[test]
    fn titles_state_the_symptom() {
        let rb = RollbackStatus {
            release: "checkout-1a2b3c4d5e".into(),
            digest: format!("sha256:{}", "1a2b3c4d5e6f".repeat(5) + "abcd"),
            reason: "critical metric errors failed: canary 4.200% vs baseline 0.500%: worse".into(),
            metric: Some("errors".into()),
            evidence: vec![MetricEvidence {
                metric: "errors".into(),
                verdict: "Fail".into(),
                reason: "canary 4.200% vs baseline 0.500%: worse beyond toleratedRatio 1.5".into(),
                ..MetricEvidence::default()
            }],
            ..RollbackStatus::default()
        };
        assert_eq!(
            rollback_title("shop", "checkout", &rb),
            "shop/checkout canary rolled back (1a2b3c4d5e6f): errors canary 4.200% vs baseline 0.500%"
        );
        let aborted = RollbackStatus {
            reason: "aborted by alice: wrong config".into(),
            metric: None,
            evidence: Vec::new(),
            ..rb
        };
        assert_eq!(
            rollback_title("shop", "checkout", &aborted),
            "shop/checkout canary rolled back (1a2b3c4d5e6f): aborted by alice: wrong config"
        );
    }
}
