//! Shared test fixtures: a Rollout `c` stable on `OLD` with four replicas, and the canary `NEW`.

pub use super::decide::{decide, failed, recovery_baseline_offset, verify_baseline_offset};
pub use super::incidents::{dedup_key, rollback_title};
pub use super::plan::*;
pub use super::workload::{Arm, Artifact, Workload, release_name, short_digest};
pub use crate::analysis::run::Decision;
pub use crate::api::analysis::InconclusiveAction;
pub use crate::api::common::{Condition, Duration};
pub use crate::api::release::ReleasePhase;
pub use crate::api::rollout::*;
pub use crate::time::format_time;

pub const OLD: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

pub const NEW: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

pub fn spec() -> RolloutSpec {
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
                promotion: None,
            },
            Step {
                set_weight: Some(50),
                duration: None,
                pause: None,
                promotion: None,
            },
        ],
        analysis: None,
        without_analysis: true,
        baseline: BaselineMode::Stable,
        progress_deadline: Duration::new("10m"),
        require_digest: true,
        post_promotion_window: None,
        promotion: Default::default(),
        recovery_window: Duration::new("30s"),
        escalation: Some(Escalation {
            receivers: vec!["pager".into()],
            severity: Severity::Error,
            runbook: None,
        }),
        history_limit: 10,
    }
}

pub fn artifact(digest: &str) -> Artifact {
    Artifact {
        digest: digest.into(),
        images: vec![("c".into(), format!("img@{digest}"))],
    }
}

pub fn workload(release: &str, digest: &str, replicas: i32) -> Workload {
    Workload {
        replicas,
        pods: replicas,
        ready: replicas,
        release: Some(release.into()),
        digest: Some(digest.into()),
        rolled_out: true,
        updated_ready: replicas,
    }
}

pub fn release(digest: &str, phase: ReleasePhase) -> ReleaseView {
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
pub fn observed(declared: &str, now: i64) -> Observed {
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

pub fn stable_status() -> RolloutStatus {
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

pub fn pass() -> AnalysisView {
    AnalysisView {
        decision: Decision::Pass,
        summary: AnalysisSummary::default(),
        first_fail_at: None,
        next_due_in: None,
        served_min_requests: true,
    }
}

/// Evidence still coming in: whether the canary served minRequests, and the forecast of the
/// Pass in seconds, if any.
pub fn running(served: bool, forecast_secs: Option<i64>) -> AnalysisView {
    AnalysisView {
        decision: Decision::Running,
        summary: AnalysisSummary {
            decision: "Running".into(),
            forecast: forecast_secs.map(|s| PassForecast {
                seconds: Some(s),
                p90_seconds: Some(2 * s),
                message: format!("needs about {s} s more at 10 rps"),
            }),
            ..AnalysisSummary::default()
        },
        first_fail_at: None,
        next_due_in: None,
        served_min_requests: served,
    }
}

pub fn fail(critical: bool) -> AnalysisView {
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
        served_min_requests: true,
    }
}

/// A canary at step 0, weight 10 verified at t=1000, ready with one pod.
pub fn progressing() -> (RolloutStatus, Observed) {
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

pub fn analysed(mut sp: RolloutSpec) -> RolloutSpec {
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

pub fn held(plan: &Plan) -> Option<&Condition> {
    plan.status
        .conditions
        .iter()
        .find(|c| c.type_ == "AnalysisInvalid" && c.status == "True")
}

/// NEW promoted at t=2000 (its canary started at t=1000) with a window until t=5000.
pub fn in_verify_window() -> (RolloutStatus, Observed) {
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
pub fn restores_old(mut status: RolloutStatus, o: &mut Observed) -> bool {
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

/// A rollback driven to its VerifyRecovery step, with the canary drained.
pub fn verifying_recovery() -> (RolloutStatus, Observed) {
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
