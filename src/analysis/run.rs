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

use super::estimate::Outlook;
use super::judge::{Answer, Cohort, Judge, Judgment, Problem, Role};
use super::latency::slowest;
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
        for ((i, t), answers) in anchoring.iter().zip(self.ask(&source, &anchoring).await) {
            self.metrics[*i].judge.anchor(&answers, *t);
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

    /// The forecast of the time to Pass: the slowest of the acting metrics that do not pass
    /// yet and have one.
    pub fn outlook(&self) -> Option<Outlook> {
        slowest(
            self.metrics
                .iter()
                .filter(|m| !m.metric.dry_run)
                .filter_map(|m| m.last.as_ref())
                .filter(|l| l.outcome.verdict != Verdict::Pass)
                .filter_map(|l| l.outcome.outlook.clone()),
        )
    }

    /// Whether every acting metric that counts requests (errorRate, latency) has seen the
    /// canary serve its `minRequests`; metrics that count none do not stand in the way. A run
    /// with no acting metric (all dry-run) never has: `noFail` must not become promotion on
    /// timing alone by a template that judges nothing.
    pub fn served_min_requests(&self) -> bool {
        let acting: Vec<&MetricRun> = self.metrics.iter().filter(|m| !m.metric.dry_run).collect();
        !acting.is_empty()
            && acting.iter().all(|m| {
                let counts = m.metric.error_rate.is_some() || m.metric.latency.is_some();
                let served = m.last.as_ref().and_then(|l| l.outcome.served_min_requests);
                served.unwrap_or(!counts)
            })
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
#[path = "run_tests.rs"]
mod tests;
