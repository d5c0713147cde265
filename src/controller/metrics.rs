//! The controller's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::api::rollout::{RolloutPhase, RolloutStatus};
use crate::backtest::parse_time;

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

const PHASES: [RolloutPhase; 8] = [
    RolloutPhase::Initializing,
    RolloutPhase::Stable,
    RolloutPhase::Progressing,
    RolloutPhase::Paused,
    RolloutPhase::Promoting,
    RolloutPhase::RollingBack,
    RolloutPhase::RolledBack,
    RolloutPhase::Blocked,
];

pub struct Metrics {
    pub registry: Registry,
    phase: Family<PhaseLabels, Gauge>,
    weight: Family<RolloutLabels, Gauge>,
    decisions: Family<ReasonLabels, Counter>,
    breach_to_zero: Histogram,
    zero_to_recovery: Histogram,
    analysis: Histogram,
    errors: Counter,
    escalations: Family<EscalationLabels, Counter>,
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    [
        0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("rollguard");
        let m = Metrics {
            registry: Registry::default(),
            phase: Family::default(),
            weight: Family::default(),
            decisions: Family::default(),
            breach_to_zero: Histogram::new(seconds_buckets()),
            zero_to_recovery: Histogram::new(seconds_buckets()),
            analysis: Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            errors: Counter::default(),
            escalations: Family::default(),
        };
        registry.register(
            "rollout_phase",
            "1 for the phase each Rollout is in",
            m.phase.clone(),
        );
        registry.register(
            "canary_weight_percent",
            "The canary weight last verified on the route",
            m.weight.clone(),
        );
        registry.register(
            "decisions",
            "Decisions recorded on Rollouts' timelines, by reason",
            m.decisions.clone(),
        );
        registry.register(
            "breach_to_weight_zero_seconds",
            "From the first failing measurement to verified zero canary weight",
            m.breach_to_zero.clone(),
        );
        registry.register(
            "weight_zero_to_recovery_seconds",
            "From verified zero canary weight to verified recovery on stable",
            m.zero_to_recovery.clone(),
        );
        registry.register(
            "analysis_seconds",
            "Time to measure a canary's due metrics",
            m.analysis.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and were retried",
            m.errors.clone(),
        );
        registry.register(
            "escalations",
            "Escalation delivery attempts, by receiver and outcome",
            m.escalations.clone(),
        );
        Metrics { registry, ..m }
    }
}

fn at(text: Option<&String>) -> Option<i64> {
    text.and_then(|t| parse_time(t, 0).ok())
}

impl Metrics {
    pub fn reconcile_error(&self) {
        self.errors.inc();
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

    /// Records what changed between the status before and after a plan.
    pub fn observe(
        &self,
        namespace: &str,
        rollout: &str,
        before: &RolloutStatus,
        after: &RolloutStatus,
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
        self.weight
            .get_or_create(&RolloutLabels {
                namespace: namespace.into(),
                rollout: rollout.into(),
            })
            .set(i64::from(after.canary_weight.unwrap_or(0)));
        for entry in after
            .timeline
            .iter()
            .skip(before.timeline.len().min(after.timeline.len()))
        {
            if before.timeline.contains(entry) {
                continue;
            }
            self.decisions
                .get_or_create(&ReasonLabels {
                    reason: entry.reason.clone(),
                })
                .inc();
        }
        let (Some(old), Some(new)) = (before.rollback.as_ref(), after.rollback.as_ref()) else {
            return;
        };
        if old.weight_zero_at.is_none()
            && let (Some(breach), Some(zero)) =
                (at(new.breach_at.as_ref()), at(new.weight_zero_at.as_ref()))
        {
            self.breach_to_zero.observe((zero - breach).max(0) as f64);
        }
        if old.recovered_at.is_none()
            && let (Some(zero), Some(done)) = (
                at(new.weight_zero_at.as_ref()),
                at(new.recovered_at.as_ref()),
            )
        {
            self.zero_to_recovery.observe((done - zero).max(0) as f64);
        }
    }
}
