//! The controller's Prometheus metrics, served on `/metrics`.
//!
//! No label carries a digest, a release name or anything else that grows with each deploy:
//! labels are namespaces and Rollout names (one per service), metric and provider names from
//! the templates, receivers, phases, reasons and outcomes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::api::rollout::{RolloutPhase, RolloutStatus};
use crate::rollout::outcome::{deployment_result, is_rework, new_moments};
use crate::time::parse_time;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    pub namespace: String,
    pub rollout: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub namespace: String,
    pub rollout: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    pub namespace: String,
    pub rollout: String,
    /// promoted, rolled_back, aborted or withdrawn.
    pub result: String,
}

/// A delivery attempt: the Receiver's name (admin-owned, few) and how it went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EscalationLabels {
    pub receiver: String,
    /// delivered, skipped, retry or refused.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// The reconcile stage that failed: `observe`, `apply` or `record`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MeasurementLabels {
    /// The template's metric name.
    pub metric: String,
    /// Pass, Fail or Inconclusive.
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// The MetricProvider's name.
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

pub const PHASES: [RolloutPhase; 9] = [
    RolloutPhase::Initializing,
    RolloutPhase::Stable,
    RolloutPhase::Progressing,
    RolloutPhase::Paused,
    RolloutPhase::Promoting,
    RolloutPhase::RollingBack,
    RolloutPhase::RolledBack,
    RolloutPhase::Blocked,
    RolloutPhase::Reverting,
];

/// A new canary within this long of a rollback counts as rework, unless the controller is told
/// otherwise (`--rework-window`).
pub const DEFAULT_REWORK_WINDOW_SECS: i64 = 24 * 3600;

pub struct Metrics {
    pub registry: Registry,
    rework_window_secs: i64,
    phase: Family<PhaseLabels, Gauge>,
    weight: Family<RolloutLabels, Gauge>,
    decisions: Family<ReasonLabels, Counter>,
    deployments: Family<DeploymentLabels, Counter>,
    rework: Family<RolloutLabels, Counter>,
    breach_to_zero: Family<NamespaceLabels, Histogram>,
    breach_to_recovery: Family<NamespaceLabels, Histogram>,
    zero_to_recovery: Family<NamespaceLabels, Histogram>,
    measurements: Family<MeasurementLabels, Counter>,
    query_seconds: Family<ProviderLabels, Histogram>,
    query_errors: Family<ProviderLabels, Counter>,
    analysis: Histogram,
    reconcile_seconds: Histogram,
    errors: Family<StageLabels, Counter>,
    escalations: Family<EscalationLabels, Counter>,
    leader: Gauge,
    writes: Family<OutcomeLabels, Counter>,
}

fn seconds_histogram() -> Histogram {
    Histogram::new([
        0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    ])
}

fn fast_histogram() -> Histogram {
    Histogram::new([0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(DEFAULT_REWORK_WINDOW_SECS)
    }
}

impl Metrics {
    pub fn new(rework_window_secs: i64) -> Self {
        let mut r = Registry::with_prefix("rollguard");
        let m = Metrics {
            registry: Registry::default(),
            rework_window_secs,
            phase: Family::default(),
            weight: Family::default(),
            decisions: Family::default(),
            deployments: Family::default(),
            rework: Family::default(),
            breach_to_zero: Family::new_with_constructor(seconds_histogram),
            breach_to_recovery: Family::new_with_constructor(seconds_histogram),
            zero_to_recovery: Family::new_with_constructor(seconds_histogram),
            measurements: Family::default(),
            query_seconds: Family::new_with_constructor(fast_histogram),
            query_errors: Family::default(),
            analysis: fast_histogram(),
            reconcile_seconds: fast_histogram(),
            errors: Family::default(),
            escalations: Family::default(),
            leader: Gauge::default(),
            writes: Family::default(),
        };
        r.register(
            "rollout_phase",
            "1 for the phase each Rollout is in, 0 for the others",
            m.phase.clone(),
        );
        r.register(
            "canary_weight_percent",
            "The canary weight last verified on the route",
            m.weight.clone(),
        );
        r.register(
            "decisions",
            "Decisions recorded on Rollouts' timelines, by reason",
            m.decisions.clone(),
        );
        r.register(
            "deployments",
            "Deployments that ended, per Rollout, by result (promoted, rolled_back, aborted, withdrawn): deployment frequency and change failure rate",
            m.deployments.clone(),
        );
        r.register(
            "rework_deployments",
            "New canaries started within the rework window of a rollback of the same Rollout",
            m.rework.clone(),
        );
        r.register(
            "breach_to_weight_zero_seconds",
            "From the first failing measurement to verified zero canary weight (time to roll back)",
            m.breach_to_zero.clone(),
        );
        r.register(
            "breach_to_recovery_seconds",
            "From the first failing measurement to verified recovery on stable",
            m.breach_to_recovery.clone(),
        );
        r.register(
            "weight_zero_to_recovery_seconds",
            "From verified zero canary weight to verified recovery on stable",
            m.zero_to_recovery.clone(),
        );
        r.register(
            "measurements",
            "Metric measurements, by template metric and verdict",
            m.measurements.clone(),
        );
        r.register(
            "prometheus_query_seconds",
            "Latency of instant queries to each MetricProvider",
            m.query_seconds.clone(),
        );
        r.register(
            "prometheus_query_errors",
            "Instant queries to each MetricProvider that failed (timeout, refused, bad answer)",
            m.query_errors.clone(),
        );
        r.register(
            "analysis_seconds",
            "Time to measure a canary's due metrics",
            m.analysis.clone(),
        );
        r.register(
            "reconcile_seconds",
            "Duration of a Rollout's reconcile, every plan it applied included",
            m.reconcile_seconds.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconciles that failed and were retried, by the stage that failed",
            m.errors.clone(),
        );
        r.register(
            "escalations",
            "Escalation delivery attempts, by receiver and outcome",
            m.escalations.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease and may write",
            m.leader.clone(),
        );
        r.register(
            "kube_writes",
            "Writes to the Kubernetes API: ok, failed, or fenced (refused because this replica did not lead)",
            m.writes.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// The text exposition of everything registered.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    pub fn reconcile_error(&self, stage: &str) {
        self.errors
            .get_or_create(&StageLabels {
                stage: stage.to_owned(),
            })
            .inc();
    }

    pub fn reconcile_seconds(&self, s: f64) {
        self.reconcile_seconds.observe(s);
    }

    pub fn escalation(&self, receiver: &str, outcome: &str) {
        self.escalations
            .get_or_create(&EscalationLabels {
                receiver: receiver.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn analysis_seconds(&self, s: f64) {
        self.analysis.observe(s);
    }

    pub fn measurement(&self, metric: &str, verdict: &str) {
        self.measurements
            .get_or_create(&MeasurementLabels {
                metric: metric.into(),
                verdict: verdict.into(),
            })
            .inc();
    }

    pub fn query(&self, provider: &str, seconds: f64, ok: bool) {
        let labels = ProviderLabels {
            provider: provider.into(),
        };
        self.query_seconds.get_or_create(&labels).observe(seconds);
        if !ok {
            self.query_errors.get_or_create(&labels).inc();
        }
    }

    pub fn leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn write(&self, outcome: &str) {
        self.writes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Drops a Rollout's gauges: it was deleted, or this replica no longer leads.
    pub fn forget(&self, namespace: &str, rollout: &str) {
        for p in PHASES {
            self.phase.remove(&PhaseLabels {
                namespace: namespace.into(),
                rollout: rollout.into(),
                phase: format!("{p:?}"),
            });
        }
        self.weight.remove(&RolloutLabels {
            namespace: namespace.into(),
            rollout: rollout.into(),
        });
    }

    /// Drops every Rollout's gauges: the leader reports them, a standby does not.
    pub fn forget_all(&self) {
        self.phase.clear();
        self.weight.clear();
    }

    /// Records what changed between the status before and after a plan, at `now`.
    pub fn observe(
        &self,
        namespace: &str,
        rollout: &str,
        before: &RolloutStatus,
        after: &RolloutStatus,
        now: i64,
    ) {
        let current = after.phase.unwrap_or_default();
        for p in PHASES {
            self.phase
                .get_or_create(&PhaseLabels {
                    namespace: namespace.into(),
                    rollout: rollout.into(),
                    phase: format!("{p:?}"),
                })
                .set(i64::from(p == current));
        }
        let who = RolloutLabels {
            namespace: namespace.into(),
            rollout: rollout.into(),
        };
        self.weight
            .get_or_create(&who)
            .set(i64::from(after.canary_weight.unwrap_or(0)));
        for entry in new_moments(before, after) {
            self.decisions
                .get_or_create(&ReasonLabels {
                    reason: entry.reason.clone(),
                })
                .inc();
        }
        if let Some(result) = deployment_result(before, after) {
            self.deployments
                .get_or_create(&DeploymentLabels {
                    namespace: namespace.into(),
                    rollout: rollout.into(),
                    result: result.label().into(),
                })
                .inc();
        }
        if is_rework(before, after, now, self.rework_window_secs) {
            self.rework.get_or_create(&who).inc();
        }
        let (Some(old), Some(new)) = (before.rollback.as_ref(), after.rollback.as_ref()) else {
            return;
        };
        let ns = NamespaceLabels {
            namespace: namespace.into(),
        };
        let at = |t: Option<&String>| t.and_then(|t| parse_time(t, 0).ok());
        let (breach, zero, done) = (
            at(new.breach_at.as_ref()),
            at(new.weight_zero_at.as_ref()),
            at(new.recovered_at.as_ref()),
        );
        if old.weight_zero_at.is_none()
            && let (Some(breach), Some(zero)) = (breach, zero)
        {
            self.breach_to_zero
                .get_or_create(&ns)
                .observe((zero - breach).max(0) as f64);
        }
        if old.recovered_at.is_none()
            && let Some(done) = done
        {
            if let Some(zero) = zero {
                self.zero_to_recovery
                    .get_or_create(&ns)
                    .observe((done - zero).max(0) as f64);
            }
            if let Some(breach) = breach {
                self.breach_to_recovery
                    .get_or_create(&ns)
                    .observe((done - breach).max(0) as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::rollout::{RollbackStatus, RollbackStep, TimelineEntry};

    fn moment(at: &str, reason: &str) -> TimelineEntry {
        TimelineEntry {
            at: at.into(),
            reason: reason.into(),
            message: format!("{reason} at {at}"),
        }
    }

    fn rollback(reason: &str) -> RollbackStatus {
        RollbackStatus {
            release: "web-cccccccccc".into(),
            digest: "sha256:cc".into(),
            reason: reason.into(),
            metric: Some("error-rate".into()),
            step: RollbackStep::ZeroWeights,
            completed: Vec::new(),
            started_at: "2026-11-22T10:00:05Z".into(),
            breach_at: Some("2026-11-22T10:00:02Z".into()),
            weight_zero_at: None,
            recovered_at: None,
            not_recovered_at: None,
            attempts: 0,
            last_error: None,
            evidence: Vec::new(),
            repeated: false,
        }
    }

    fn sample(text: &str, line_start: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn a_rollback_counts_once_with_its_times_and_no_digest_labels() {
        let m = Metrics::default();
        let before = RolloutStatus {
            phase: Some(RolloutPhase::Progressing),
            canary_weight: Some(10),
            timeline: vec![moment("2026-11-22T10:00:00Z", "CanaryStarted")],
            ..RolloutStatus::default()
        };
        let mut started = before.clone();
        started.phase = Some(RolloutPhase::RollingBack);
        started.rollback = Some(rollback("error-rate failed"));
        started
            .timeline
            .push(moment("2026-11-22T10:00:05Z", "RollbackStarted"));
        m.observe("shop", "web", &before, &started, 0);
        // The same status again (a reconcile that changed nothing) counts nothing more.
        m.observe("shop", "web", &started, &started, 0);
        let mut zero = started.clone();
        zero.canary_weight = Some(0);
        if let Some(rb) = zero.rollback.as_mut() {
            rb.weight_zero_at = Some("2026-11-22T10:00:06Z".into());
        }
        m.observe("shop", "web", &started, &zero, 0);
        let mut recovered = zero.clone();
        if let Some(rb) = recovered.rollback.as_mut() {
            rb.recovered_at = Some("2026-11-22T10:00:36Z".into());
        }
        recovered.phase = Some(RolloutPhase::RolledBack);
        m.observe("shop", "web", &zero, &recovered, 0);

        let text = m.encode().expect("encodes");
        assert_eq!(
            sample(
                &text,
                r#"rollguard_deployments_total{namespace="shop",rollout="web",result="rolled_back"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"rollguard_breach_to_weight_zero_seconds_count{namespace="shop"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"rollguard_breach_to_weight_zero_seconds_sum{namespace="shop"}"#
            ),
            Some(4.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"rollguard_weight_zero_to_recovery_seconds_sum{namespace="shop"}"#
            ),
            Some(30.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"rollguard_breach_to_recovery_seconds_sum{namespace="shop"}"#
            ),
            Some(34.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"rollguard_rollout_phase{namespace="shop",rollout="web",phase="RolledBack"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"rollguard_decisions_total{reason="RollbackStarted"}"#
            ),
            Some(1.0)
        );
        assert!(!text.contains("sha256"), "{text}");
        assert!(!text.contains("cccccccccc"), "{text}");
    }

    #[test]
    fn deployments_are_classified_once_each() {
        let m = Metrics::default();
        let base = RolloutStatus::default();
        let with = |reasons: &[&str]| RolloutStatus {
            timeline: reasons
                .iter()
                .map(|r| moment("2026-11-22T11:00:00Z", r))
                .collect(),
            ..RolloutStatus::default()
        };
        // Promoted with a post-promotion window: not yet; the window passing: promoted.
        let mut promoted = with(&["Promoted"]);
        promoted.verify_until = Some("2026-11-22T11:05:00Z".into());
        m.observe("shop", "web", &base, &promoted, 0);
        let passed = with(&["Promoted", "VerificationPassed"]);
        m.observe("shop", "web", &promoted, &passed, 0);
        // Promoted without a window: at once.
        m.observe("shop", "api", &base, &with(&["Promoted"]), 0);
        let mut aborted = with(&["RollbackStarted"]);
        aborted.rollback = Some(rollback("aborted by alice: wrong config"));
        m.observe("shop", "api", &base, &aborted, 0);
        m.observe("shop", "api", &base, &with(&["CanaryWithdrawn"]), 0);
        let text = m.encode().expect("encodes");
        let count = |rollout: &str, result: &str| {
            sample(
                &text,
                &format!(
                    r#"rollguard_deployments_total{{namespace="shop",rollout="{rollout}",result="{result}"}}"#
                ),
            )
        };
        assert_eq!(count("web", "promoted"), Some(1.0));
        assert_eq!(count("api", "promoted"), Some(1.0));
        assert_eq!(count("api", "aborted"), Some(1.0));
        assert_eq!(count("api", "withdrawn"), Some(1.0));
        assert_eq!(count("api", "rolled_back"), None);
    }

    #[test]
    fn a_canary_soon_after_a_rollback_is_rework() {
        let m = Metrics::new(3600);
        let now = parse_time("2026-11-22T10:30:00Z", 0).expect("time");
        let before = RolloutStatus {
            rollback: Some(rollback("error-rate failed")),
            ..RolloutStatus::default()
        };
        let after = RolloutStatus {
            timeline: vec![moment("2026-11-22T10:30:00Z", "CanaryStarted")],
            ..before.clone()
        };
        m.observe("shop", "web", &before, &after, now);
        // Two hours later it is an ordinary deployment.
        m.observe("shop", "web", &before, &after, now + 7200);
        // A first canary ever is not rework.
        m.observe("shop", "api", &RolloutStatus::default(), &after, now);
        let text = m.encode().expect("encodes");
        assert_eq!(
            sample(
                &text,
                r#"rollguard_rework_deployments_total{namespace="shop",rollout="web"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                r#"rollguard_rework_deployments_total{namespace="shop",rollout="api"}"#
            ),
            None
        );
    }

    /// Metric names a PromQL expression selects.
    fn selected(expr: &promql_parser::parser::Expr, out: &mut Vec<String>) {
        use promql_parser::parser::Expr;
        match expr {
            Expr::VectorSelector(vs) => out.extend(vs.name.clone()),
            Expr::MatrixSelector(ms) => out.extend(ms.vs.name.clone()),
            Expr::Subquery(sq) => selected(&sq.expr, out),
            Expr::Aggregate(a) => {
                selected(&a.expr, out);
                if let Some(p) = &a.param {
                    selected(p, out);
                }
            }
            Expr::Unary(u) => selected(&u.expr, out),
            Expr::Paren(p) => selected(&p.expr, out),
            Expr::Binary(b) => {
                selected(&b.lhs, out);
                selected(&b.rhs, out);
            }
            Expr::Call(c) => c.args.args.iter().for_each(|a| selected(a, out)),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }

    #[test]
    fn every_series_the_dashboard_and_the_alerts_query_is_exported() {
        let m = Metrics::default();
        // One sample in every family, so that each is in the exposition.
        let mut after = RolloutStatus {
            phase: Some(RolloutPhase::RollingBack),
            rollback: Some(rollback("error-rate failed")),
            timeline: vec![
                moment("2026-11-22T10:00:00Z", "CanaryStarted"),
                moment("2026-11-22T10:00:05Z", "RollbackStarted"),
            ],
            ..RolloutStatus::default()
        };
        let prior = RolloutStatus {
            rollback: Some(rollback("x")),
            ..RolloutStatus::default()
        };
        m.observe("shop", "web", &prior, &after, 0);
        let started = after.clone();
        if let Some(rb) = after.rollback.as_mut() {
            rb.weight_zero_at = Some("2026-11-22T10:00:06Z".into());
            rb.recovered_at = Some("2026-11-22T10:00:30Z".into());
        }
        m.observe("shop", "web", &started, &after, 0);
        m.measurement("error-rate", "Pass");
        m.query("prom", 0.01, false);
        m.analysis_seconds(0.1);
        m.reconcile_seconds(0.1);
        m.reconcile_error("apply");
        m.escalation("oncall", "delivered");
        m.leader(true);
        m.write("ok");
        let text = m.encode().expect("encodes");
        let exported: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();

        let dashboard: serde_json::Value = serde_json::from_str(include_str!(
            "../../charts/rollguard/dashboards/rollguard.json"
        ))
        .expect("the dashboard is JSON");
        let mut queried = 0;
        for panel in dashboard["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("expr");
                let promql = expr.replace("$namespace", ".*");
                let ast = promql_parser::parser::parse(&promql)
                    .unwrap_or_else(|e| panic!("{}: {expr}: {e}", panel["title"]));
                let mut names = Vec::new();
                selected(&ast, &mut names);
                assert!(!names.is_empty(), "{expr}");
                for name in names {
                    queried += 1;
                    assert!(
                        exported.contains(name.as_str()),
                        "panel {} queries {name}, which the controller does not export; it exports {exported:?}",
                        panel["title"]
                    );
                }
            }
        }
        assert!(queried >= 20, "{queried}");

        // The alerts the chart ships (and the operations guide recommends).
        let alerts: serde_json::Value =
            serde_saphyr::from_str(include_str!("../../charts/rollguard/files/alerts.yaml"))
                .expect("the alerts are YAML");
        let mut alerted = 0;
        for rule in alerts["groups"][0]["rules"].as_array().expect("rules") {
            let expr = rule["expr"].as_str().expect("expr");
            let ast = promql_parser::parser::parse(expr)
                .unwrap_or_else(|e| panic!("{}: {expr}: {e}", rule["alert"]));
            let mut names = Vec::new();
            selected(&ast, &mut names);
            for name in names {
                alerted += 1;
                assert!(
                    exported.contains(name.as_str()),
                    "alert {} queries {name}, which the controller does not export",
                    rule["alert"]
                );
            }
        }
        assert!(alerted >= 6, "{alerted}");
    }

    #[test]
    fn forgetting_drops_a_rollouts_gauges() {
        let m = Metrics::default();
        let s = RolloutStatus {
            phase: Some(RolloutPhase::Stable),
            ..RolloutStatus::default()
        };
        m.observe("shop", "web", &s, &s, 0);
        m.observe("shop", "api", &s, &s, 0);
        m.forget("shop", "web");
        let text = m.encode().expect("encodes");
        assert!(!text.contains(r#"rollout="web""#), "{text}");
        assert!(text.contains(r#"rollout="api""#), "{text}");
        m.forget_all();
        assert!(!m.encode().expect("encodes").contains(r#"rollout="api""#));
    }
}
