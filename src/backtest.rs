//! `rollguard backtest`: a template replayed over a past time range against a real Prometheus,
//! measuring each metric on its interval exactly as the controller would, and reporting every
//! decision it would have taken and when.

use serde::Serialize;

use crate::analysis::run::{AnalysisRun, Decision, Measurement};
use crate::analysis::source::MetricSource;
use crate::analysis::verdict::Verdict;

/// A decision that changed at `at`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionChange {
    pub at: i64,
    #[serde(flatten)]
    pub decision: Decision,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub template: String,
    pub from: i64,
    pub to: i64,
    pub step_seconds: i64,
    pub evaluations: usize,
    /// Every measurement, in time order.
    pub measurements: Vec<Measurement>,
    /// The run-level decision each time it changed.
    pub decisions: Vec<DecisionChange>,
    /// The first Fail of a metric that acts (not `dryRun`), with its evidence.
    pub first_fail: Option<Measurement>,
}

/// Picks the measurements a person reads: those whose verdict, or whether it could be
/// measured at all, differs from the metric's previous measurement.
#[derive(Debug, Default)]
pub struct Timeline {
    last: std::collections::BTreeMap<String, (Verdict, bool)>,
}

impl Timeline {
    /// Whether `m` changes its metric's line of the timeline.
    pub fn is_change(&mut self, m: &Measurement) -> bool {
        let key = (m.outcome.verdict, m.outcome.problem.is_some());
        self.last.insert(m.metric.clone(), key) != Some(key)
    }
}

/// Replays `run` from `from` to `to` (unix seconds) every `step` seconds against `source`,
/// calling `progress` with each measurement as it is made.
pub async fn replay<S: MetricSource>(
    template: &str,
    run: &mut AnalysisRun,
    source: &S,
    from: i64,
    to: i64,
    step: i64,
    mut progress: impl FnMut(&Measurement, Option<&Decision>),
) -> Report {
    let step = step.max(1);
    let mut report = Report {
        template: template.to_owned(),
        from,
        to,
        step_seconds: step,
        evaluations: 0,
        measurements: Vec::new(),
        decisions: Vec::new(),
        first_fail: None,
    };
    let mut at = from;
    while at <= to {
        let measured = run.measure(|_| Some(source), at).await;
        report.evaluations += 1;
        let decision = run.decision();
        let changed = report.decisions.last().map(|d| &d.decision) != Some(&decision);
        for (i, m) in measured.iter().enumerate() {
            if report.first_fail.is_none() && m.outcome.verdict == Verdict::Fail && !m.dry_run {
                report.first_fail = Some(m.clone());
            }
            let last = i + 1 == measured.len();
            progress(m, (changed && last).then_some(&decision));
        }
        if changed {
            report.decisions.push(DecisionChange { at, decision });
        }
        report.measurements.extend(measured);
        at += step;
    }
    report
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;
    use crate::analysis::run::Target;
    use crate::analysis::source::{Series, SourceError};

    /// Counters that grow 1000 requests per 10 s per arm; the canary's errors jump from
    /// 0.5% to 5% at `regress_at`.
    struct Synthetic {
        regress_at: i64,
        asked: Mutex<Vec<i64>>,
    }

    impl MetricSource for Synthetic {
        async fn query(&self, promql: &str, at: i64) -> Result<Vec<Series>, SourceError> {
            self.asked.lock().expect("lock").push(at);
            let requests = at as f64 * 100.0;
            let canary = promql.contains("canary");
            let errors = if canary && at > self.regress_at {
                self.regress_at as f64 * 0.5 + (at - self.regress_at) as f64 * 5.0
            } else {
                at as f64 * 0.5
            };
            let value = if promql.contains("errors") {
                errors
            } else {
                requests
            };
            Ok(vec![Series {
                labels: BTreeMap::new(),
                value,
            }])
        }
    }

    #[tokio::test]
    async fn the_replay_finds_the_first_fail_after_the_regression() {
        let spec = serde_json::from_value(serde_json::json!({
            "metrics": [{"name": "errors", "provider": "any", "interval": "10s",
                "errorRate": {"requests": "sum(requests{d=\"{{arm}}\"})", "errors": "sum(errors{d=\"{{arm}}\"})"}}]
        }))
        .expect("spec");
        let target = Target {
            namespace: "ns".into(),
            canary: "app-canary".into(),
            baseline: "app-stable".into(),
            baseline_offset: None,
            args: vec![],
        };
        let mut run = AnalysisRun::new(&spec, &target).expect("run");
        let source = Synthetic {
            regress_at: 1600,
            asked: Mutex::new(Vec::new()),
        };
        let mut seen = 0;
        let report = replay("t", &mut run, &source, 1000, 2200, 5, |_, _| seen += 1).await;
        assert_eq!(report.evaluations, 241);
        // A 10 s interval with a 5 s step measures every other evaluation.
        assert_eq!(report.measurements.len(), 121);
        assert_eq!(seen, 121);
        let fail = report.first_fail.clone().expect("the regression is caught");
        assert!(
            fail.at > 1600 && fail.at <= 1720,
            "first Fail at {}",
            fail.at
        );
        assert!(
            report
                .decisions
                .iter()
                .any(|d| matches!(d.decision, Decision::Fail { .. }))
        );
        let mut timeline = Timeline::default();
        let changes = report
            .measurements
            .iter()
            .filter(|m| timeline.is_change(m))
            .count();
        assert!(
            changes >= 2 && changes < report.measurements.len(),
            "{changes}"
        );
        assert!(
            source
                .asked
                .lock()
                .expect("lock")
                .iter()
                .all(|at| (at - 1000) % 10 == 0)
        );
    }
}
