//! Shared test fixtures: a Rollout `shop/checkout` that rolled 1.6.0 (`NEW`) back to 1.5.0
//! (`OLD`), its Releases, its outbox entries and the incident built from them.

pub use super::incident::{Incident, Sources, build};
pub use crate::api::release::{
    ContainerImage, Release, ReleaseSpec, ReleaseStatus, ReleaseVerdict,
};
pub use crate::api::rollout::*;

pub const OLD: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";
pub const NEW: &str = "sha256:abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789";

pub fn release(name: &str, digest: &str, version: &str, cause: Option<&str>) -> Release {
    let mut r = Release::new(
        name,
        ReleaseSpec {
            rollout: "checkout".into(),
            images: vec![ContainerImage {
                container: "app".into(),
                image: format!("shop/checkout@{digest}"),
            }],
            allow_tags: false,
            pod_template: serde_json::json!({"spec": {"containers": [{"name": "app", "image": format!("shop/checkout@{digest}")}]}}),
            version: Some(version.into()),
            change_cause: cause.map(str::to_owned),
            deployed_by: None,
            config_hashes: Vec::new(),
            redeploy: None,
        },
    );
    r.status = Some(ReleaseStatus::default());
    r
}

pub fn evidence() -> MetricEvidence {
    MetricEvidence {
        metric: "errors".into(),
        verdict: "Fail".into(),
        reason: "canary 4.200% vs baseline 0.500%: worse beyond toleratedRatio 1.5".into(),
        at: "2026-11-22T10:00:07Z".into(),
        counts: Some("canary 42/1000, baseline 45/9000".into()),
        statistic: Some("ln e = 5.1 against 4.6".into()),
        worse_since: None,
        queries: vec![QueryValue {
            name: "canary errors".into(),
            promql: r#"sum(http_requests_total{service="checkout-canary",code=~"5.."})"#.into(),
            value: Some(42.0),
            error: None,
        }],
        source: Some("http://prometheus.monitoring:9090".into()),
        critical: true,
        dry_run: false,
    }
}

pub fn rollout_status() -> (RolloutSpec, RolloutStatus, Vec<Release>) {
    let spec: RolloutSpec = serde_json::from_value(serde_json::json!({
        "targetRef": {"name": "checkout"},
        "steps": [{"setWeight": 10}],
        "escalation": {"receivers": ["pager"], "runbook": "https://runbooks.example/checkout"},
    }))
    .expect("spec");
    let rb = RollbackStatus {
        release: "checkout-abcdef0123".into(),
        digest: NEW.into(),
        reason: "critical metric errors failed: canary 4.200% vs baseline 0.500%".into(),
        metric: Some("errors".into()),
        step: RollbackStep::MarkUnstable,
        completed: vec![
            SagaRecord {
                step: RollbackStep::ZeroWeights,
                at: "2026-11-22T10:00:09Z".into(),
            },
            SagaRecord {
                step: RollbackStep::EnsureStableCapacity,
                at: "2026-11-22T10:00:10Z".into(),
            },
            SagaRecord {
                step: RollbackStep::RestoreStable,
                at: "2026-11-22T10:00:11Z".into(),
            },
        ],
        started_at: "2026-11-22T10:00:08Z".into(),
        breach_at: Some("2026-11-22T10:00:07Z".into()),
        weight_zero_at: Some("2026-11-22T10:00:09Z".into()),
        attempts: 2,
        last_error: Some("Release checkout-abcdef0123: 409 conflict".into()),
        evidence: vec![evidence()],
        ..RollbackStatus::default()
    };
    let status = RolloutStatus {
        stable: Some(ReleaseRef {
            release: "checkout-0000000000".into(),
            digest: OLD.into(),
            short_digest: "000000000000".into(),
        }),
        canary_started_at: Some("2026-11-22T09:59:00Z".into()),
        rollback: Some(rb),
        outbox: vec![entry(OutboxAction::Trigger, "2026-11-22T10:00:12Z")],
        ..RolloutStatus::default()
    };
    let mut bad = release(
        "checkout-abcdef0123",
        NEW,
        "1.6.0",
        Some("deploy <!channel> & friends"),
    );
    if let Some(s) = bad.status.as_mut() {
        s.verdict = Some(ReleaseVerdict {
            reason: "from the Release".into(),
            metric: None,
            at: "x".into(),
            evidence: Vec::new(),
        });
    }
    let releases = vec![release("checkout-0000000000", OLD, "1.5.0", None), bad];
    (spec, status, releases)
}

pub fn entry(action: OutboxAction, at: &str) -> OutboxEntry {
    OutboxEntry {
        dedup_key: "rollguard/shop/checkout/checkout-abcdef0123".into(),
        action,
        severity: Severity::Error,
        title: "shop/checkout canary rolled back (abcdef012345): errors canary 4.200% vs baseline 0.500%".into(),
        release: "checkout-abcdef0123".into(),
        from_digest: Some(OLD.into()),
        to_digest: NEW.into(),
        created_at: at.into(),
        kind: IncidentKind::Rollback,
        state: Default::default(),
        deliveries: Vec::new(),
    }
}

/// The incident of a rollback in flight (MarkUnstable failing), as receivers get it.
pub fn sample(action: OutboxAction) -> Incident {
    let (spec, status, releases) = rollout_status();
    let src = Sources {
        namespace: "shop",
        rollout: "checkout",
        spec: &spec,
        status: &status,
        releases: &releases,
        graph_base: None,
    };
    build(&src, &entry(action, "2026-11-22T10:05:00Z"))
}
