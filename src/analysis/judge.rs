//! One metric's judgment, fed with the answers to its queries at each measurement.
//!
//! | judgment | queries | a measurement |
//! |---|---|---|
//! | `threshold` | one, canary | the canary's scalar within `[min, max]` |
//! | `relative` | one, each arm | canary ≤ baseline × `maxRatio` + `maxDelta` |
//! | `errorRate` | requests and errors counters, each arm | the sequential share test on the increments |
//! | `latency` | bucket counters, each arm | the share test above the baseline's boundaries |
//!
//! Judges are pure: they take answers and return an [`Judgment`]. Fetching is the engine's job.

use serde::Serialize;

use super::counters::{CounterTracker, Increment};
use super::estimate::Outlook;
use super::latency::LatencyJudge;
use super::share::{ArmCounts, ShareConfig, ShareJudge};
use super::source::{NoValue, Series, SourceError, scalar};
use super::verdict::Verdict;
use crate::api::analysis::{Metric, Relative, Threshold};

/// The answer to one query.
pub type Answer = Result<Vec<Series>, SourceError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
/// The cohort a query measures: the canary, or the baseline it is judged against.
pub enum Cohort {
    Canary,
    Baseline,
}

impl std::fmt::Display for Cohort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cohort::Canary => "canary",
            Cohort::Baseline => "baseline",
        })
    }
}

/// What a query of a judgment measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Value,
    Requests,
    Errors,
    Buckets,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Value => "value",
            Role::Requests => "requests",
            Role::Errors => "errors",
            Role::Buckets => "buckets",
        })
    }
}

/// Why a measurement has no verdict of its own. Both count toward the inconclusive limit.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "detail")]
pub enum Problem {
    /// No series, NaN, or no requests since the last measurement.
    NoData,
    /// The source failed or the answer has the wrong shape.
    QueryFailed(String),
}

/// The number a verdict was decided on, and the bound it was held against.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Statistic {
    pub name: String,
    pub value: f64,
    pub threshold: f64,
}

impl Statistic {
    /// The statistic for people: its value and bound with the digits that matter. A value at
    /// the floor of the scale (no evidence at all, e = 0) reads as such, not as 300 digits.
    pub fn text(&self) -> String {
        let number = |x: f64| {
            if x <= -1e299 || x == f64::NEG_INFINITY {
                "−∞".to_owned()
            } else if x.is_nan() {
                "n/a".to_owned()
            } else if x.abs() >= 1e6 {
                format!("{x:.3e}")
            } else {
                format!("{x:.3}")
            }
        };
        let mut text = format!(
            "{} = {} against {}",
            self.name,
            number(self.value),
            number(self.threshold)
        );
        if self.value <= -1e299 {
            text.push_str(" (the canary is not worse by enough to matter)");
        }
        text
    }
}

/// What one measurement of a judgment concluded.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Judgment {
    pub verdict: Verdict,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
    /// Requests and events so far, per arm (errorRate, latency).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<ArmCounts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<ArmCounts>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statistic: Option<Statistic>,
    /// Set when the change detector failed the canary: the moment (unix seconds) from which its
    /// evidence counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worse_since: Option<i64>,
    /// While collecting evidence (errorRate, latency): how long a Pass will take at the traffic
    /// and rates so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlook: Option<Outlook>,
    /// Whether the canary has served `minRequests` (errorRate, latency): with no Fail, what
    /// `promotion: noFail` needs at the end of a step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_min_requests: Option<bool>,
}

impl Judgment {
    fn new(verdict: Verdict, reason: impl Into<String>) -> Judgment {
        Judgment {
            verdict,
            reason: reason.into(),
            problem: None,
            canary: None,
            baseline: None,
            statistic: None,
            worse_since: None,
            outlook: None,
            served_min_requests: None,
        }
    }

    fn problem(problem: Problem, reason: impl Into<String>) -> Judgment {
        Judgment {
            problem: Some(problem),
            ..Judgment::new(Verdict::Inconclusive, reason)
        }
    }

    fn from_source(arm: Cohort, role: Role, e: &SourceError) -> Judgment {
        Judgment::problem(
            Problem::QueryFailed(e.to_string()),
            format!("{arm} {role} query failed: {e}"),
        )
    }

    fn from_no_value(arm: Cohort, e: &NoValue) -> Judgment {
        let reason = format!("{arm}: {e}");
        match e {
            NoValue::Empty | NoValue::NaN => Judgment::problem(Problem::NoData, reason),
            NoValue::Several(_) | NoValue::Infinite(_) => {
                Judgment::problem(Problem::QueryFailed(e.to_string()), reason)
            }
        }
    }
}

/// A metric's judgment and the state it keeps between measurements.
#[derive(Clone, Debug)]
pub enum Judge {
    Threshold(Threshold),
    Relative(Relative),
    ErrorRate(Box<ErrorRateJudge>),
    Latency(Box<LatencyJudge>),
}

impl Judge {
    /// The judge of `metric`, which must have exactly one judgment.
    pub fn new(metric: &Metric) -> Result<Judge, String> {
        let judges = [
            metric.threshold.clone().map(Judge::Threshold),
            metric.relative.clone().map(Judge::Relative),
            metric
                .error_rate
                .as_ref()
                .map(|e| Judge::ErrorRate(Box::new(ErrorRateJudge::new(ShareConfig::from(e))))),
            metric
                .latency
                .as_ref()
                .map(|l| Judge::Latency(Box::new(LatencyJudge::new(l)))),
        ];
        let mut present = judges.into_iter().flatten();
        match (present.next(), present.next()) {
            (Some(j), None) => Ok(j),
            (None, _) => Err("no judgment: set one of threshold, relative, errorRate, latency".into()),
            (Some(_), Some(_)) => Err(
                "more than one judgment: set exactly one of threshold, relative, errorRate, latency"
                    .into(),
            ),
        }
    }

    /// The queries of one measurement, in the order `observe` takes their answers.
    pub fn queries<'a>(&'a self, metric: &'a Metric) -> Vec<(Cohort, Role, &'a str)> {
        match self {
            Judge::Threshold(t) => vec![(Cohort::Canary, Role::Value, t.query.as_str())],
            Judge::Relative(r) => vec![
                (Cohort::Canary, Role::Value, r.query.as_str()),
                (Cohort::Baseline, Role::Value, r.query.as_str()),
            ],
            Judge::ErrorRate(_) => {
                let (requests, errors) = metric
                    .error_rate
                    .as_ref()
                    .map_or(("", ""), |e| (e.requests.as_str(), e.errors.as_str()));
                vec![
                    (Cohort::Canary, Role::Requests, requests),
                    (Cohort::Canary, Role::Errors, errors),
                    (Cohort::Baseline, Role::Requests, requests),
                    (Cohort::Baseline, Role::Errors, errors),
                ]
            }
            Judge::Latency(_) => {
                let buckets = metric.latency.as_ref().map_or("", |l| l.buckets.as_str());
                vec![
                    (Cohort::Canary, Role::Buckets, buckets),
                    (Cohort::Baseline, Role::Buckets, buckets),
                ]
            }
        }
    }

    /// Anchors the counters of `errorRate` and `latency` on the answers to [`Judge::queries`]
    /// at the moment the canary's weight was verified, so that the first measurement after it
    /// already counts. A failed query leaves the judge as it was: it anchors on its first
    /// measurement instead. `at` is that moment (unix seconds).
    pub fn anchor(&mut self, answers: &[Answer], at: i64) {
        let Ok(ok) = answers
            .iter()
            .map(|a| a.as_deref())
            .collect::<Result<Vec<&[Series]>, _>>()
        else {
            return;
        };
        match self {
            Judge::ErrorRate(e) if ok.len() == 4 => e.anchor([ok[0], ok[1], ok[2], ok[3]], at),
            Judge::Latency(l) if ok.len() == 2 => l.anchor(ok[0], ok[1]),
            _ => {}
        }
    }

    /// Takes the answers to [`Judge::queries`], in order, measured at `at` (unix seconds).
    pub fn observe(&mut self, roles: &[(Cohort, Role)], answers: &[Answer], at: i64) -> Judgment {
        if let Some(((arm, role), Err(e))) = roles.iter().zip(answers).find(|(_, a)| a.is_err()) {
            // The counters of the other queries stay anchored where they were; the next good
            // measurement counts everything since then.
            return Judgment::from_source(*arm, *role, e);
        }
        let ok: Vec<&[Series]> = answers
            .iter()
            .map(|a| a.as_deref().unwrap_or_default())
            .collect();
        match self {
            Judge::Threshold(t) => threshold(t, ok[0]),
            Judge::Relative(r) => relative(r, ok[0], ok[1]),
            Judge::ErrorRate(e) => {
                let j = e.observe(ok[0], ok[1], ok[2], ok[3], at);
                Judgment {
                    served_min_requests: Some(e.share.canary_served_min_requests()),
                    ..j
                }
            }
            Judge::Latency(l) => {
                let t = l.observe(ok[0], ok[1], at);
                let (canary, baseline) = t.counts.unzip();
                Judgment {
                    verdict: t.verdict,
                    problem: t.no_data.then_some(Problem::NoData),
                    reason: t.reason,
                    canary,
                    baseline,
                    statistic: t.statistic.map(|(value, threshold)| Statistic {
                        name: "ln e, slower canary (max over quantiles)".into(),
                        value,
                        threshold,
                    }),
                    worse_since: t.worse_since,
                    outlook: t.outlook,
                    served_min_requests: t.served_min_requests,
                }
            }
        }
    }
}

fn threshold(t: &Threshold, canary: &[Series]) -> Judgment {
    let value = match scalar(canary) {
        Ok(v) => v,
        Err(e) => return Judgment::from_no_value(Cohort::Canary, &e),
    };
    let statistic = |threshold: f64| {
        Some(Statistic {
            name: "canary value".into(),
            value,
            threshold,
        })
    };
    if let Some(max) = t.max
        && value > max
    {
        return Judgment {
            statistic: statistic(max),
            ..Judgment::new(Verdict::Fail, format!("canary {value} is above max {max}"))
        };
    }
    if let Some(min) = t.min
        && value < min
    {
        return Judgment {
            statistic: statistic(min),
            ..Judgment::new(Verdict::Fail, format!("canary {value} is below min {min}"))
        };
    }
    let bounds = match (t.min, t.max) {
        (Some(min), Some(max)) => format!("within [{min}, {max}]"),
        (Some(min), None) => format!("at least {min}"),
        (None, Some(max)) => format!("at most {max}"),
        (None, None) => "unbounded".into(),
    };
    Judgment {
        statistic: statistic(t.max.or(t.min).unwrap_or(f64::NAN)),
        ..Judgment::new(Verdict::Pass, format!("canary {value} is {bounds}"))
    }
}

fn relative(r: &Relative, canary: &[Series], baseline: &[Series]) -> Judgment {
    let c = match scalar(canary) {
        Ok(v) => v,
        Err(e) => return Judgment::from_no_value(Cohort::Canary, &e),
    };
    let b = match scalar(baseline) {
        Ok(v) => v,
        Err(e) => return Judgment::from_no_value(Cohort::Baseline, &e),
    };
    let limit = b * r.max_ratio + r.max_delta;
    let statistic = Some(Statistic {
        name: "canary value".into(),
        value: c,
        threshold: limit,
    });
    let (verdict, word) = if c > limit {
        (Verdict::Fail, "above")
    } else {
        (Verdict::Pass, "within")
    };
    Judgment {
        statistic,
        ..Judgment::new(
            verdict,
            format!(
                "canary {c} is {word} baseline {b} × {} + {} = {limit}",
                r.max_ratio, r.max_delta
            ),
        )
    }
}

/// `errorRate`: counters in, share test on the increments.
#[derive(Clone, Debug)]
pub struct ErrorRateJudge {
    /// requests, errors of the canary, then of the baseline.
    trackers: [CounterTracker; 4],
    share: ShareJudge,
}

impl ErrorRateJudge {
    pub fn new(config: ShareConfig) -> ErrorRateJudge {
        ErrorRateJudge {
            trackers: Default::default(),
            share: ShareJudge::new(config),
        }
    }

    /// Anchors the four counters on answers from the moment (`at`) the canary's weight was
    /// verified.
    fn anchor(&mut self, answers: [&[Series]; 4], at: i64) {
        for (t, a) in self.trackers.iter_mut().zip(answers) {
            t.anchor(a);
        }
        self.share.start(at);
    }

    fn observe(
        &mut self,
        c_req: &[Series],
        c_err: &[Series],
        b_req: &[Series],
        b_err: &[Series],
        at: i64,
    ) -> Judgment {
        let answers = [c_req, c_err, b_req, b_err];
        // Requests with no series is no data; errors with none means no error has happened
        // yet (a counter with a status-code label appears only once one has).
        for (arm, a) in [(Cohort::Canary, c_req), (Cohort::Baseline, b_req)] {
            if a.is_empty() {
                return Judgment::from_no_value(arm, &NoValue::Empty);
            }
        }
        let primed = self.trackers.iter().all(CounterTracker::primed);
        let inc: Vec<Increment> = self
            .trackers
            .iter_mut()
            .zip(answers)
            .map(|(t, a)| t.advance(a))
            .collect();
        if !primed {
            self.share.start(at);
            return Judgment::new(
                Verdict::Inconclusive,
                "first measurement: the counters are anchored, increments start with the next one",
            );
        }
        // An error series that appears for the first time started from zero: all of it is new.
        let errors = |i: usize, a: &[Series]| {
            if inc[i].new_series > 0 && inc[i].resets == 0 {
                let known: f64 = inc[i].value;
                known + new_series_total(a, inc[i].new_series)
            } else {
                inc[i].value
            }
        };
        if !inc[0].is_clean() || !inc[2].is_clean() || inc[1].resets > 0 || inc[3].resets > 0 {
            return Judgment::new(
                Verdict::Inconclusive,
                "a counter was reset or a series appeared: re-anchored, this interval is not counted",
            );
        }
        let canary = ArmCounts {
            requests: inc[0].value,
            events: errors(1, c_err),
        };
        let baseline = ArmCounts {
            requests: inc[2].value,
            events: errors(3, b_err),
        };
        for (arm, counts) in [(Cohort::Canary, canary), (Cohort::Baseline, baseline)] {
            if counts.requests <= 0.0 {
                return Judgment {
                    canary: Some(self.share.canary()),
                    baseline: Some(self.share.baseline()),
                    ..Judgment::problem(
                        Problem::NoData,
                        format!("no requests reached the {arm} since the last measurement"),
                    )
                };
            }
        }
        self.share.observe(canary, baseline, at);
        let (verdict, reason) = self.share.verdict();
        Judgment {
            canary: Some(self.share.canary()),
            baseline: Some(self.share.baseline()),
            statistic: Some(Statistic {
                name: "ln e, canary worse (from the start, or since a change)".into(),
                value: self.share.danger().max(-1e300),
                threshold: self.share.fail_threshold(),
            }),
            worse_since: (verdict == Verdict::Fail)
                .then(|| self.share.worse_since())
                .flatten(),
            outlook: (verdict == Verdict::Inconclusive)
                .then(|| self.share.outlook())
                .flatten(),
            served_min_requests: Some(self.share.canary_served_min_requests()),
            ..Judgment::new(verdict, reason)
        }
    }
}

/// What the series that first appeared in `answer` have counted since they appeared.
fn new_series_total(answer: &[Series], new: usize) -> f64 {
    // A counter series starts at zero, so its whole value is new. Only how many series are
    // new is known here, so the smallest values are taken: a fresh error series is small, and
    // undercounting errors never fails a canary wrongly.
    let mut values: Vec<f64> = answer
        .iter()
        .map(|s| s.value)
        .filter(|v| v.is_finite())
        .collect();
    values.sort_by(f64::total_cmp);
    values.into_iter().take(new).sum()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn one(value: f64) -> Answer {
        Ok(vec![Series {
            labels: BTreeMap::new(),
            value,
        }])
    }

    fn metric(judgment: serde_json::Value) -> Metric {
        let mut m = serde_json::json!({"name": "m", "provider": "p"});
        for (k, v) in judgment.as_object().expect("object") {
            m[k] = v.clone();
        }
        serde_json::from_value(m).expect("metric")
    }

    fn measure(judge: &mut Judge, m: &Metric, answers: Vec<Answer>) -> Judgment {
        let roles: Vec<(Cohort, Role)> = judge.queries(m).iter().map(|q| (q.0, q.1)).collect();
        judge.observe(&roles, &answers, 0)
    }

    #[test]
    fn exactly_one_judgment() {
        let mut m = metric(serde_json::json!({"threshold": {"query": "q", "max": 1}}));
        assert!(Judge::new(&m).is_ok());
        m.relative = Some(Relative {
            query: "q".into(),
            max_ratio: 1.0,
            max_delta: 0.0,
        });
        assert!(Judge::new(&m).expect_err("two").contains("exactly one"));
        m.threshold = None;
        m.relative = None;
        assert!(Judge::new(&m).expect_err("none").contains("no judgment"));
    }

    #[test]
    fn threshold_bounds_and_missing_values() {
        let m = metric(serde_json::json!({"threshold": {"query": "q", "min": 0.9, "max": 1.5}}));
        let mut j = Judge::new(&m).expect("judge");
        let o = measure(&mut j, &m, vec![one(2.0)]);
        assert_eq!(o.verdict, Verdict::Fail);
        assert!(o.reason.contains("above max 1.5"), "{}", o.reason);
        assert_eq!(measure(&mut j, &m, vec![one(0.5)]).verdict, Verdict::Fail);
        assert_eq!(measure(&mut j, &m, vec![one(1.0)]).verdict, Verdict::Pass);
        let o = measure(&mut j, &m, vec![one(f64::NAN)]);
        assert_eq!(
            (o.verdict, o.problem),
            (Verdict::Inconclusive, Some(Problem::NoData))
        );
        let o = measure(&mut j, &m, vec![Ok(vec![])]);
        assert_eq!(o.problem, Some(Problem::NoData));
        let two = Ok(vec![
            Series {
                labels: BTreeMap::new(),
                value: 1.0,
            },
            Series {
                labels: BTreeMap::new(),
                value: 1.0,
            },
        ]);
        let o = measure(&mut j, &m, vec![two]);
        assert!(matches!(o.problem, Some(Problem::QueryFailed(_))), "{o:?}");
        assert!(o.reason.contains("sum("), "{}", o.reason);
    }

    #[test]
    fn relative_compares_with_the_baseline() {
        let m = metric(
            serde_json::json!({"relative": {"query": "q", "maxRatio": 1.2, "maxDelta": 0.01}}),
        );
        let mut j = Judge::new(&m).expect("judge");
        let o = measure(&mut j, &m, vec![one(0.14), one(0.1)]);
        assert_eq!(o.verdict, Verdict::Fail, "{}", o.reason);
        assert!((o.statistic.expect("stat").threshold - 0.13).abs() < 1e-12);
        assert_eq!(
            measure(&mut j, &m, vec![one(0.12), one(0.1)]).verdict,
            Verdict::Pass
        );
    }

    #[test]
    fn a_failed_query_is_inconclusive_with_the_reason() {
        let m = metric(serde_json::json!({"relative": {"query": "q", "maxRatio": 1.2}}));
        let mut j = Judge::new(&m).expect("judge");
        let err = SourceError::Timeout {
            address: "http://127.0.0.1:9".into(),
            timeout: std::time::Duration::from_secs(2),
        };
        let o = measure(&mut j, &m, vec![one(1.0), Err(err)]);
        assert_eq!(o.verdict, Verdict::Inconclusive);
        assert!(matches!(o.problem, Some(Problem::QueryFailed(_))));
        assert!(
            o.reason.starts_with("baseline") && o.reason.contains("within 2s"),
            "{}",
            o.reason
        );
    }

    fn error_rate_metric() -> Metric {
        metric(serde_json::json!({"errorRate": {"requests": "r", "errors": "e"}}))
    }

    #[test]
    fn error_rate_counts_increments_and_catches_a_regression() {
        let m = error_rate_metric();
        let mut j = Judge::new(&m).expect("judge");
        let first = measure(&mut j, &m, vec![one(0.0), one(0.0), one(0.0), one(0.0)]);
        assert!(first.reason.contains("anchored"), "{}", first.reason);
        let (mut cr, mut ce, mut br, mut be) = (0.0, 0.0, 0.0, 0.0);
        let mut last = first;
        for _ in 0..30 {
            cr += 1000.0;
            ce += 40.0;
            br += 1000.0;
            be += 5.0;
            last = measure(&mut j, &m, vec![one(cr), one(ce), one(br), one(be)]);
            if last.verdict == Verdict::Fail {
                break;
            }
        }
        assert_eq!(last.verdict, Verdict::Fail, "{}", last.reason);
        let stat = last.statistic.expect("statistic");
        assert!(stat.value >= stat.threshold);
        assert!(last.canary.expect("counts").requests >= 1000.0);
    }

    #[test]
    fn no_new_requests_is_no_data_even_after_a_pass() {
        let m = error_rate_metric();
        let mut j = Judge::new(&m).expect("judge");
        let mut n = 0.0;
        let mut last = None;
        for _ in 0..40 {
            n += 1000.0;
            last = Some(measure(
                &mut j,
                &m,
                vec![one(n), one(n / 100.0), one(n), one(n / 100.0)],
            ));
        }
        assert_eq!(last.expect("ticks").verdict, Verdict::Pass);
        let o = measure(
            &mut j,
            &m,
            vec![one(n), one(n / 100.0), one(n), one(n / 100.0)],
        );
        assert_eq!(
            (o.verdict, o.problem),
            (Verdict::Inconclusive, Some(Problem::NoData))
        );
    }

    #[test]
    fn an_error_series_that_appears_counts_from_zero() {
        let m = error_rate_metric();
        let mut j = Judge::new(&m).expect("judge");
        measure(
            &mut j,
            &m,
            vec![one(100.0), Ok(vec![]), one(100.0), Ok(vec![])],
        );
        let o = measure(
            &mut j,
            &m,
            vec![one(600.0), one(30.0), one(600.0), Ok(vec![])],
        );
        assert_eq!(o.canary.expect("counts").events, 30.0);
        assert_eq!(o.baseline.expect("counts").events, 0.0);
    }

    #[test]
    fn a_request_counter_reset_skips_the_interval() {
        let m = error_rate_metric();
        let mut j = Judge::new(&m).expect("judge");
        measure(
            &mut j,
            &m,
            vec![one(1000.0), one(10.0), one(1000.0), one(10.0)],
        );
        let o = measure(
            &mut j,
            &m,
            vec![one(50.0), one(1.0), one(1500.0), one(15.0)],
        );
        assert!(o.reason.contains("reset"), "{}", o.reason);
        let o = measure(
            &mut j,
            &m,
            vec![one(550.0), one(6.0), one(2000.0), one(20.0)],
        );
        assert_eq!(o.canary.expect("counts").requests, 500.0);
    }

    #[test]
    fn a_fail_from_the_change_detector_says_since_when() {
        let m = metric(serde_json::json!({
            "errorRate": {"requests": "sum(r{a=\"{{arm}}\"})", "errors": "sum(e{a=\"{{arm}}\"})"}
        }));
        let mut judge = Judge::new(&m).expect("judge");
        let roles: Vec<(Cohort, Role)> = judge.queries(&m).iter().map(|q| (q.0, q.1)).collect();
        let base = 1_800_000_000;
        let (mut cr, mut ce, mut br, mut be) = (0.0, 0.0, 0.0, 0.0);
        // Ten healthy minutes at 0.5% on both arms, then the canary's errors x4.
        for i in 0..=120 {
            cr += 100.0;
            ce += if i > 60 { 2.0 } else { 0.5 };
            br += 900.0;
            be += 4.5;
            let j = judge.observe(&roles, &[one(cr), one(ce), one(br), one(be)], base + 10 * i);
            if j.verdict == Verdict::Fail {
                assert_eq!(j.worse_since, Some(base + 600), "{}", j.reason);
                let json = serde_json::to_value(&j).expect("json");
                assert_eq!(
                    json["worseSince"],
                    base + 600,
                    "the backtest's JSON says it"
                );
                return;
            }
            assert_eq!(j.worse_since, None);
        }
        panic!("the change was never caught");
    }
}
