//! An analysis run: a template's metrics rendered for one canary and its baseline, measured on
//! their intervals, and the run-level rules that turn measurements into a decision.
//!
//! Run-level rules, in order of precedence:
//! 1. A `critical` metric that fails: [`Decision::Fail`] with `critical`, rolled back at once.
//! 2. Any other metric that fails: [`Decision::Fail`]; the controller rolls back when the step
//!    ends unless the metric has recovered by then.
//! 3. A metric that could not be measured (`NoData`, a failed query) `inconclusiveLimit` times
//!    in a row: [`Decision::Inconclusive`] with the template's `onInconclusive` action. A
//!    sequential test that is still collecting evidence is not a problem and never counts.
//! 4. Every metric passes: [`Decision::Pass`].
//! 5. Otherwise [`Decision::Running`].
//!
//! `dryRun` metrics are measured and reported and never take part in the decision. A metric
//! with `onNoData: Fail` turns a no-data measurement into a Fail.

use std::collections::BTreeMap;

use serde::Serialize;
use thiserror::Error;

use super::judge::{Answer, Cohort, Judge, Judgment, Problem, Role};
use super::render::{Bindings, RenderError, bind_args, render, shift_back};
use super::source::{MetricSource, SourceError};
use super::verdict::Verdict;
use crate::api::analysis::{
    AnalysisTemplateSpec, ArgumentType, InconclusiveAction, Metric, NoDataAction,
};

/// A template that cannot be run as given. `path` names the field, e.g.
/// `metrics[1].errorRate.requests`.
#[derive(Debug, Error, PartialEq)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    fn render(path: String, e: &RenderError) -> ConfigError {
        ConfigError {
            path,
            message: e.to_string(),
        }
    }
}

/// The JSON-ish path of the field a query of `role` comes from.
pub fn query_path(index: usize, metric: &Metric, role: Role) -> String {
    let field = match role {
        Role::Value if metric.threshold.is_some() => "threshold.query",
        Role::Value => "relative.query",
        Role::Requests => "errorRate.requests",
        Role::Errors => "errorRate.errors",
        Role::Buckets => "latency.buckets",
    };
    format!("metrics[{index}].{field}")
}

/// Who the run measures.
#[derive(Clone, Debug)]
pub struct Target {
    pub namespace: String,
    /// The Deployment names `{{arm}}` takes for each arm.
    pub canary: String,
    pub baseline: String,
    /// When set, the baseline's queries look this many seconds into the past (the promoted
    /// stable judged against itself before the rollout).
    pub baseline_offset: Option<u64>,
    /// The Rollout's argument values.
    pub args: Vec<(String, String)>,
}

/// One query as it was sent, and what came back.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryEvidence {
    pub arm: Cohort,
    pub role: Role,
    pub promql: String,
    /// The value, when the answer was a single series.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    pub series: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One measurement of one metric: the verdict and everything it rests on.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    pub metric: String,
    /// Unix seconds of the evaluation.
    pub at: i64,
    #[serde(flatten)]
    pub outcome: Judgment,
    pub queries: Vec<QueryEvidence>,
    pub critical: bool,
    pub dry_run: bool,
}

/// What the run says the rollout should do now.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "decision")]
pub enum Decision {
    /// Evidence is still being collected.
    Running,
    /// Every acting metric passes.
    Pass,
    Fail {
        metric: String,
        reason: String,
        critical: bool,
    },
    /// A metric could not be measured `limit` times in a row.
    Inconclusive {
        metric: String,
        reason: String,
        action: InconclusiveAction,
    },
}

impl Decision {
    pub fn name(&self) -> &'static str {
        match self {
            Decision::Running => "Running",
            Decision::Pass => "Pass",
            Decision::Fail { .. } => "Fail",
            Decision::Inconclusive { .. } => "Inconclusive",
        }
    }
}

/// A query of a metric as sent: the arm, what it measures, the PromQL.
pub type RenderedQuery<'a> = (Cohort, Role, &'a str);

struct MetricRun {
    metric: Metric,
    judge: Judge,
    queries: Vec<(Cohort, Role, String)>,
    interval_secs: i64,
    /// The template's interval: problems in a row are counted at most once per interval, so
    /// that `inconclusiveLimit` means the same time however often the metric is measured.
    declared_secs: i64,
    /// When the last problem was counted.
    problem_counted_at: Option<i64>,
    /// When the judge last saw answers.
    judged_at: Option<i64>,
    last_at: Option<i64>,
    problems_in_a_row: u32,
    last: Option<Measurement>,
    /// The answers the judge last saw, for the cheap path when nothing changed.
    last_answers: Option<Vec<Answer>>,
    /// When set, the first measurement first queries the counters at this moment (unix
    /// seconds) and anchors on them.
    anchor_at: Option<i64>,
}

/// A template bound to one canary and baseline.
pub struct AnalysisRun {
    metrics: Vec<MetricRun>,
    on_inconclusive: InconclusiveAction,
    inconclusive_limit: u32,
}

impl AnalysisRun {
    /// Binds the arguments and renders every query for both arms. Any error names the field.
    pub fn new(spec: &AnalysisTemplateSpec, target: &Target) -> Result<AnalysisRun, ConfigError> {
        let args = bind_args(&spec.args, &target.args).map_err(|e| ConfigError {
            path: "args".into(),
            message: e.to_string(),
        })?;
        let types: BTreeMap<String, ArgumentType> =
            spec.args.iter().map(|a| (a.name.clone(), a.kind)).collect();
        let mut metrics = Vec::new();
        for (i, metric) in spec.metrics.iter().enumerate() {
            let judge = Judge::new(metric).map_err(|message| ConfigError {
                path: format!("metrics[{i}]"),
                message,
            })?;
            let interval = metric.interval.parse().map_err(|e| ConfigError {
                path: format!("metrics[{i}].interval"),
                message: format!("{:?} is not a duration: {e}", metric.interval.0),
            })?;
            let mut queries = Vec::new();
            for (arm, role, template) in judge.queries(metric) {
                let bindings = Bindings {
                    arm: match arm {
                        Cohort::Canary => target.canary.clone(),
                        Cohort::Baseline => target.baseline.clone(),
                    },
                    namespace: target.namespace.clone(),
                    args: args.clone(),
                };
                let path = || query_path(i, metric, role);
                let mut promql = render(template, &bindings, &types)
                    .map_err(|e| ConfigError::render(path(), &e))?;
                if let (Cohort::Baseline, Some(seconds)) = (arm, target.baseline_offset) {
                    promql = shift_back(&promql, seconds)
                        .map_err(|e| ConfigError::render(path(), &e))?;
                }
                queries.push((arm, role, promql));
            }
            metrics.push(MetricRun {
                metric: metric.clone(),
                judge,
                queries,
                interval_secs: (interval.as_secs() as i64).max(1),
                declared_secs: (interval.as_secs() as i64).max(1),
                problem_counted_at: None,
                judged_at: None,
                last_at: None,
                problems_in_a_row: 0,
                last: None,
                last_answers: None,
                anchor_at: None,
            });
        }
        Ok(AnalysisRun {
            metrics,
            on_inconclusive: spec.on_inconclusive,
            inconclusive_limit: spec.inconclusive_limit.max(1) as u32,
        })
    }

    /// Measures the anytime-valid metrics (`errorRate`, `latency`) of `provider` every
    /// `every_secs` when that is more often than their interval: their false-positive guarantee
    /// holds however often they are looked at, and a new sample can exist that often (the
    /// provider's scrape interval). `threshold` and `relative` metrics keep their interval: each
    /// extra look would be another chance to fail.
    pub fn measure_every(&mut self, provider: &str, every_secs: u64) {
        for m in &mut self.metrics {
            let sequential = m.metric.error_rate.is_some() || m.metric.latency.is_some();
            if sequential && m.metric.provider == provider {
                m.interval_secs = m.interval_secs.min(every_secs.max(1) as i64);
            }
        }
    }

    /// Anchors the counters of the `errorRate` and `latency` metrics not yet measured at `at`
    /// (unix seconds), the moment the canary's weight was verified: their first measurement
    /// then counts everything since, instead of only anchoring and losing an interval.
    pub fn anchor_at(&mut self, at: i64) {
        for m in &mut self.metrics {
            let counters = m.metric.error_rate.is_some() || m.metric.latency.is_some();
            if counters && m.last_at.is_none() {
                m.anchor_at = Some(at);
            }
        }
    }

    /// Each metric's name and the seconds between its measurements.
    pub fn intervals(&self) -> Vec<(&str, i64)> {
        self.metrics
            .iter()
            .map(|m| (m.metric.name.as_str(), m.interval_secs))
            .collect()
    }

    /// The rendered queries of each metric, for display.
    pub fn queries(&self) -> Vec<(&str, Vec<RenderedQuery<'_>>)> {
        self.metrics
            .iter()
            .map(|m| {
                (
                    m.metric.name.as_str(),
                    m.queries
                        .iter()
                        .map(|(a, r, q)| (*a, *r, q.as_str()))
                        .collect(),
                )
            })
            .collect()
    }

    /// The metrics whose interval has passed at `at`.
    pub fn due(&self, at: i64) -> Vec<usize> {
        (0..self.metrics.len())
            .filter(|&i| {
                let m = &self.metrics[i];
                m.last_at.is_none_or(|last| at - last >= m.interval_secs)
            })
            .collect()
    }

    /// Seconds from `at` until the next metric is due (0 when one is due now); None without
    /// metrics.
    pub fn next_due_in(&self, at: i64) -> Option<u64> {
        self.metrics
            .iter()
            .map(|m| {
                m.last_at
                    .map_or(0, |last| (last + m.interval_secs - at).max(0))
            })
            .min()
            .map(|s| s as u64)
    }

    /// Measures every due metric at `at`, all queries at once. `source` maps a provider name to
    /// its source; a name it does not know is a failed query, not a crash.
    pub async fn measure<'s, S, F>(&mut self, source: F, at: i64) -> Vec<Measurement>
    where
        S: MetricSource + 's,
        F: Fn(&str) -> Option<&'s S>,
    {
        let due = self.due(at);
        // First the anchors of metrics measured for the first time, at their anchor moment.
        let anchoring: Vec<(usize, i64)> = due
            .iter()
            .filter_map(|&i| Some((i, self.metrics[i].anchor_at.take().filter(|t| *t <= at)?)))
            .collect();
        for ((i, _), answers) in anchoring.iter().zip(self.ask(&source, &anchoring).await) {
            self.metrics[*i].judge.anchor(&answers);
        }
        let now: Vec<(usize, i64)> = due.iter().map(|&i| (i, at)).collect();
        let answers = self.ask(&source, &now).await;
        due.into_iter()
            .zip(answers)
            .map(|(i, answers)| self.record(i, &answers, at))
            .collect()
    }

    /// The answers of each listed metric's queries at its moment, all queried at once.
    async fn ask<'s, S, F>(&self, source: &F, which: &[(usize, i64)]) -> Vec<Vec<Answer>>
    where
        S: MetricSource + 's,
        F: Fn(&str) -> Option<&'s S>,
    {
        let mut pending = Vec::new();
        for &(i, at) in which {
            let m = &self.metrics[i];
            let src = source(&m.metric.provider);
            for (_, _, promql) in &m.queries {
                let provider = &m.metric.provider;
                pending.push(async move {
                    match src {
                        Some(s) => s.query(promql, at).await,
                        None => Err(SourceError::Config(format!(
                            "no MetricProvider named {provider:?}"
                        ))),
                    }
                });
            }
        }
        let mut answers = futures::future::join_all(pending).await.into_iter();
        which
            .iter()
            .map(|&(i, _)| {
                answers
                    .by_ref()
                    .take(self.metrics[i].queries.len())
                    .collect()
            })
            .collect()
    }

    /// Feeds the answers of metric `i`'s queries, measured at `at`, to its judge.
    pub fn record(&mut self, i: usize, answers: &[Answer], at: i64) -> Measurement {
        let m = &mut self.metrics[i];
        // The cheap path: the same answers as the last judged ones, which had no problem, within
        // the template's interval of them: no new scrape yet, and the judge is not asked again.
        // Past the interval the same answers mean no traffic, which the judge must say.
        if let Some(last) = m.last.as_ref().filter(|l| l.outcome.problem.is_none())
            && m.last_answers.as_deref() == Some(answers)
            && m.judged_at.is_some_and(|t| at - t < m.declared_secs)
        {
            let measurement = Measurement { at, ..last.clone() };
            m.last_at = Some(at);
            m.last = Some(measurement.clone());
            return measurement;
        }
        m.last_answers = Some(answers.to_vec());
        m.judged_at = Some(at);
        let roles: Vec<(Cohort, Role)> = m.queries.iter().map(|(a, r, _)| (*a, *r)).collect();
        let mut outcome: Judgment = m.judge.observe(&roles, answers, at);
        if outcome.problem == Some(Problem::NoData) && m.metric.on_no_data == NoDataAction::Fail {
            outcome.verdict = Verdict::Fail;
            outcome.reason = format!("no data, and onNoData is Fail: {}", outcome.reason);
        }
        if outcome.problem.is_some() && outcome.verdict == Verdict::Inconclusive {
            // Measured more often than its interval, a metric meets more empty ticks (a second
            // without a canary request); they count once per interval, as before.
            if m.problem_counted_at
                .is_none_or(|t| at - t >= m.declared_secs)
            {
                m.problems_in_a_row += 1;
                m.problem_counted_at = Some(at);
            }
        } else {
            m.problems_in_a_row = 0;
            m.problem_counted_at = None;
        }
        let queries = m
            .queries
            .iter()
            .zip(answers)
            .map(|((arm, role, promql), answer)| QueryEvidence {
                arm: *arm,
                role: *role,
                promql: promql.clone(),
                value: match answer {
                    Ok(s) if s.len() == 1 => Some(s[0].value).filter(|v| v.is_finite()),
                    _ => None,
                },
                series: answer.as_ref().map_or(0, Vec::len),
                error: answer.as_ref().err().map(ToString::to_string),
            })
            .collect();
        let measurement = Measurement {
            metric: m.metric.name.clone(),
            at,
            outcome,
            queries,
            critical: m.metric.critical,
            dry_run: m.metric.dry_run,
        };
        m.last_at = Some(at);
        m.last = Some(measurement.clone());
        measurement
    }

    /// The run-level decision from the latest measurements.
    pub fn decision(&self) -> Decision {
        let acting: Vec<&MetricRun> = self.metrics.iter().filter(|m| !m.metric.dry_run).collect();
        let failing = |critical: bool| {
            acting.iter().find_map(|m| {
                m.last
                    .as_ref()
                    .filter(|l| l.outcome.verdict == Verdict::Fail && m.metric.critical == critical)
                    .map(|l| Decision::Fail {
                        metric: l.metric.clone(),
                        reason: l.outcome.reason.clone(),
                        critical,
                    })
            })
        };
        if let Some(d) = failing(true).or_else(|| failing(false)) {
            return d;
        }
        if let Some(m) = acting
            .iter()
            .find(|m| m.problems_in_a_row >= self.inconclusive_limit)
        {
            return Decision::Inconclusive {
                metric: m.metric.name.clone(),
                reason: format!(
                    "{} measurements in a row without a result (inconclusiveLimit {}); last: {}",
                    m.problems_in_a_row,
                    self.inconclusive_limit,
                    m.last.as_ref().map_or("", |l| l.outcome.reason.as_str())
                ),
                action: self.on_inconclusive,
            };
        }
        let all_pass = !acting.is_empty()
            && acting.iter().all(|m| {
                m.last
                    .as_ref()
                    .is_some_and(|l| l.outcome.verdict == Verdict::Pass)
            });
        if all_pass {
            Decision::Pass
        } else {
            Decision::Running
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::source::Series;

    fn spec(metrics: serde_json::Value) -> AnalysisTemplateSpec {
        serde_json::from_value(serde_json::json!({
            "args": [{"name": "service", "type": "string"}],
            "metrics": metrics,
        }))
        .expect("spec")
    }

    fn target() -> Target {
        Target {
            namespace: "shop".into(),
            canary: "checkout-canary".into(),
            baseline: "checkout-stable".into(),
            baseline_offset: None,
            args: vec![("service".into(), "checkout".into())],
        }
    }

    fn one(value: f64) -> Answer {
        Ok(vec![Series {
            labels: BTreeMap::new(),
            value,
        }])
    }

    fn threshold(name: &str, extra: serde_json::Value) -> serde_json::Value {
        let mut m = serde_json::json!({
            "name": name, "provider": "prom",
            "threshold": {"query": "up{job=\"{{args.service}}\", pod=~\"{{arm}}-.*\"}", "max": 1.0},
        });
        for (k, v) in extra.as_object().expect("object") {
            m[k] = v.clone();
        }
        m
    }

    /// A canary whose series exist only from 1000 s, 10 requests a second; a stable with
    /// 90 a second since 0; no errors.
    struct Fresh;
    impl MetricSource for Fresh {
        async fn query(&self, promql: &str, at: i64) -> Result<Vec<Series>, SourceError> {
            let canary = promql.contains("canary");
            if promql.contains("errors") || (canary && at <= 1000) {
                return Ok(vec![]);
            }
            let rate = if canary { 10.0 } else { 90.0 };
            let since = if canary { 1000 } else { 0 };
            Ok(vec![Series {
                labels: BTreeMap::new(),
                value: (at - since) as f64 * rate,
            }])
        }
    }

    #[tokio::test]
    async fn anchored_at_the_verified_weight_the_first_measurement_already_counts() {
        let errors = serde_json::json!([{
            "name": "errors", "provider": "prom", "interval": "10s",
            "errorRate": {"requests": "sum(requests{a=\"{{arm}}\"})", "errors": "sum(errors{a=\"{{arm}}\"})"}
        }]);
        let mut anchored = AnalysisRun::new(&spec(errors.clone()), &target()).expect("run");
        anchored.anchor_at(1000);
        let first = anchored.measure(|_| Some(&Fresh), 1003).await;
        let ev = &first[0].outcome;
        assert!(!ev.reason.contains("anchored"), "{}", ev.reason);
        assert_eq!(ev.canary.map(|c| c.requests), Some(30.0), "{ev:?}");
        assert_eq!(ev.baseline.map(|b| b.requests), Some(270.0), "{ev:?}");
        // Without the anchor the first measurement only anchors, and three seconds of the
        // canary are lost.
        let mut plain = AnalysisRun::new(&spec(errors), &target()).expect("run");
        let first = plain.measure(|_| Some(&Fresh), 1003).await;
        assert!(
            first[0].outcome.reason.contains("anchored"),
            "{:?}",
            first[0].outcome
        );
    }

    #[test]
    fn queries_are_rendered_per_arm() {
        let run = AnalysisRun::new(
            &spec(serde_json::json!([{
                "name": "ratio", "provider": "prom",
                "relative": {"query": "x{pod=~\"{{arm}}-.*\", ns=\"{{namespace}}\"}", "maxRatio": 1.1}
            }])),
            &target(),
        )
        .expect("run");
        let q = run.queries();
        assert_eq!(q[0].1[0].2, r#"x{pod=~"checkout-canary-.*", ns="shop"}"#);
        assert_eq!(q[0].1[1].2, r#"x{pod=~"checkout-stable-.*", ns="shop"}"#);
    }

    #[test]
    fn an_offset_baseline_looks_into_the_past_and_the_canary_does_not() {
        let mut t = target();
        t.baseline = t.canary.clone();
        t.baseline_offset = Some(600);
        let run = AnalysisRun::new(
            &spec(serde_json::json!([{
                "name": "errors", "provider": "prom",
                "errorRate": {"requests": "sum(r{a=\"{{arm}}\"})", "errors": "sum(e{a=\"{{arm}}\"})"}
            }])),
            &t,
        )
        .expect("run");
        let q = run.queries();
        let rendered: Vec<(Cohort, &str)> = q[0].1.iter().map(|r| (r.0, r.2)).collect();
        assert_eq!(
            rendered,
            [
                (Cohort::Canary, r#"sum(r{a="checkout-canary"})"#),
                (Cohort::Canary, r#"sum(e{a="checkout-canary"})"#),
                (
                    Cohort::Baseline,
                    r#"sum(r{a="checkout-canary"} offset 10m)"#
                ),
                (
                    Cohort::Baseline,
                    r#"sum(e{a="checkout-canary"} offset 10m)"#
                ),
            ]
        );
    }

    #[test]
    fn config_errors_name_the_field() {
        let bad = spec(serde_json::json!([
            threshold("ok", serde_json::json!({})),
            {"name": "broken", "provider": "prom",
             "errorRate": {"requests": "sum(r{a=\"{{arm}}\"})", "errors": "sum(e{a=\"{{args.nope}}\"})"}}
        ]));
        let err = AnalysisRun::new(&bad, &target())
            .err()
            .expect("undeclared argument");
        assert_eq!(err.path, "metrics[1].errorRate.errors");
        let mut t = target();
        t.args.push(("extra".into(), "x".into()));
        let err = AnalysisRun::new(
            &spec(serde_json::json!([threshold("ok", serde_json::json!({}))])),
            &t,
        )
        .err()
        .expect("unknown argument");
        assert_eq!(err.path, "args");
        assert!(err.message.contains("extra"), "{err}");
        let mut t = target();
        t.args = vec![("service".into(), "x\"}) or vector(1) #".into())];
        // The injection stays a label value: it renders and parses as one selector.
        let run = AnalysisRun::new(
            &spec(serde_json::json!([threshold("ok", serde_json::json!({}))])),
            &t,
        )
        .expect("neutralised");
        assert!(
            run.queries()[0].1[0]
                .2
                .contains(r#"job="x\"}) or vector(1) #""#)
        );
    }

    #[test]
    fn intervals_decide_what_is_due() {
        let mut run = AnalysisRun::new(
            &spec(serde_json::json!([
                threshold("fast", serde_json::json!({"interval": "10s"})),
                threshold("slow", serde_json::json!({"interval": "1m"}))
            ])),
            &target(),
        )
        .expect("run");
        assert_eq!(run.due(1000), vec![0, 1]);
        assert_eq!(run.next_due_in(1000), Some(0), "never measured: due now");
        run.record(0, &[one(0.5)], 1000);
        run.record(1, &[one(0.5)], 1000);
        assert_eq!(run.due(1005), Vec::<usize>::new());
        assert_eq!(run.next_due_in(1005), Some(5), "the fast metric in 5 s");
        assert_eq!(run.due(1010), vec![0]);
        assert_eq!(run.next_due_in(1012), Some(0), "overdue is due now");
        assert_eq!(run.due(1060), vec![0, 1]);
    }

    #[test]
    fn critical_fail_comes_first_and_dry_run_never_acts() {
        let mut run = AnalysisRun::new(
            &spec(serde_json::json!([
                threshold(
                    "shadow",
                    serde_json::json!({"dryRun": true, "critical": true})
                ),
                threshold("soft", serde_json::json!({})),
                threshold("hard", serde_json::json!({"critical": true}))
            ])),
            &target(),
        )
        .expect("run");
        run.record(0, &[one(5.0)], 0);
        run.record(1, &[one(0.5)], 0);
        run.record(2, &[one(0.5)], 0);
        assert_eq!(
            run.decision(),
            Decision::Pass,
            "a dry-run Fail does not act"
        );
        run.record(1, &[one(5.0)], 10);
        assert!(
            matches!(run.decision(), Decision::Fail { critical: false, ref metric, .. } if metric == "soft")
        );
        run.record(2, &[one(5.0)], 10);
        assert!(
            matches!(run.decision(), Decision::Fail { critical: true, ref metric, .. } if metric == "hard")
        );
    }

    #[test]
    fn problems_in_a_row_reach_the_inconclusive_limit_and_a_result_resets_them() {
        let mut s = spec(serde_json::json!([threshold("m", serde_json::json!({}))]));
        s.inconclusive_limit = 2;
        s.on_inconclusive = InconclusiveAction::Rollback;
        let mut run = AnalysisRun::new(&s, &target()).expect("run");
        run.record(0, &[Ok(vec![])], 0);
        assert_eq!(run.decision(), Decision::Running);
        run.record(0, &[one(0.5)], 10);
        run.record(0, &[Ok(vec![])], 20);
        assert_eq!(run.decision(), Decision::Running, "the count restarted");
        run.record(0, &[Err(SourceError::Decode("x".into()))], 30);
        match run.decision() {
            Decision::Inconclusive { action, reason, .. } => {
                assert_eq!(action, InconclusiveAction::Rollback);
                assert!(reason.contains("2 measurements in a row"), "{reason}");
            }
            other => panic!("expected Inconclusive, got {other:?}"),
        }
    }

    #[test]
    fn on_no_data_fail_turns_missing_data_into_a_fail() {
        let mut run = AnalysisRun::new(
            &spec(serde_json::json!([threshold(
                "m",
                serde_json::json!({"onNoData": "Fail"})
            )])),
            &target(),
        )
        .expect("run");
        let m = run.record(0, &[Ok(vec![])], 0);
        assert_eq!(m.outcome.verdict, Verdict::Fail);
        assert!(
            m.outcome
                .reason
                .starts_with("no data, and onNoData is Fail"),
            "{}",
            m.outcome.reason
        );
    }

    #[test]
    fn evidence_records_the_rendered_queries_and_values() {
        let mut run = AnalysisRun::new(
            &spec(serde_json::json!([threshold("m", serde_json::json!({}))])),
            &target(),
        )
        .expect("run");
        let m = run.record(0, &[one(0.25)], 42);
        assert_eq!(m.queries[0].value, Some(0.25));
        assert!(m.queries[0].promql.contains("checkout-canary"));
        let json = serde_json::to_value(&m).expect("json");
        assert_eq!(json["verdict"], "Pass");
        assert_eq!(json["statistic"]["threshold"], 1.0);
    }

    fn error_rate(name: &str, provider: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name, "provider": provider, "interval": "10s",
            "errorRate": {"requests": "sum(r{a=\"{{arm}}\"})", "errors": "sum(e{a=\"{{arm}}\"})"},
        })
    }

    #[test]
    fn only_anytime_valid_metrics_follow_the_scrape_interval() {
        let s = spec(serde_json::json!([
            error_rate("errors", "prom"),
            threshold("up", serde_json::json!({"interval": "10s"})),
            error_rate("elsewhere", "other"),
        ]));
        let mut run = AnalysisRun::new(&s, &target()).expect("run");
        run.measure_every("prom", 1);
        assert_eq!(
            run.intervals(),
            vec![("errors", 1), ("up", 10), ("elsewhere", 10)],
            "a threshold keeps its interval: each extra look is another chance to fail"
        );
        run.measure_every("other", 30);
        assert_eq!(run.intervals()[2], ("elsewhere", 10), "never less often");
        let counters = [one(100.0), one(1.0), one(100.0), one(1.0)];
        run.record(0, &counters, 0);
        run.record(1, &[one(0.5)], 0);
        run.record(2, &counters, 0);
        assert_eq!(run.next_due_in(0), Some(1));
        assert_eq!(run.due(1), vec![0], "due again one scrape later");
        assert_eq!(run.due(10), vec![0, 1, 2]);
    }

    #[test]
    fn unchanged_answers_reuse_the_last_judgment_unless_it_had_a_problem() {
        let s = spec(serde_json::json!([error_rate("errors", "prom")]));
        let mut run = AnalysisRun::new(&s, &target()).expect("run");
        let answers = [one(1000.0), one(5.0), one(1000.0), one(5.0)];
        run.record(0, &answers, 0);
        let grown = [one(2000.0), one(10.0), one(2000.0), one(10.0)];
        let judged = run.record(0, &grown, 1);
        let again = run.record(0, &grown, 2);
        assert_eq!(again.at, 2);
        assert_eq!(
            again.outcome, judged.outcome,
            "no new sample, the same judgment"
        );
        // The same counters a whole interval later: no traffic, and the judge says so.
        let idle = run.record(0, &grown, 11);
        assert_eq!(
            idle.outcome.problem,
            Some(Problem::NoData),
            "{}",
            idle.outcome.reason
        );
        // A judgment with a problem is asked again, so the inconclusive limit still counts.
        let mut s = spec(serde_json::json!([threshold("m", serde_json::json!({}))]));
        s.inconclusive_limit = 2;
        let mut run = AnalysisRun::new(&s, &target()).expect("run");
        run.record(0, &[Ok(vec![])], 0);
        run.record(0, &[Ok(vec![])], 10);
        assert!(
            matches!(run.decision(), Decision::Inconclusive { .. }),
            "{:?}",
            run.decision()
        );
    }

    #[test]
    fn a_faster_cadence_counts_problems_once_per_interval() {
        let mut s = spec(serde_json::json!([error_rate("errors", "prom")]));
        s.inconclusive_limit = 3;
        let mut run = AnalysisRun::new(&s, &target()).expect("run");
        run.measure_every("prom", 1);
        run.record(0, &[one(100.0), one(1.0), one(100.0), one(1.0)], 0);
        // Seconds without a canary request: a problem each second, counted every 10 s.
        for t in 1..=19 {
            run.record(
                0,
                &[one(100.0), one(1.0), one(100.0 + t as f64), one(1.0)],
                t,
            );
        }
        assert_eq!(
            run.decision(),
            Decision::Running,
            "two intervals of problems"
        );
        run.record(0, &[one(100.0), one(1.0), one(130.0), one(1.0)], 21);
        assert!(
            matches!(run.decision(), Decision::Inconclusive { .. }),
            "the third interval: {:?}",
            run.decision()
        );
        // One good measurement starts the count again.
        run.record(0, &[one(110.0), one(1.0), one(140.0), one(1.0)], 22);
        assert_eq!(run.decision(), Decision::Running);
    }
}
