//! The `latency` judgment: a sequential test on the share of requests slower than the
//! baseline's quantile boundaries.
//!
//! Histograms do not give per-request latencies, but they do give, per tick and per arm, how
//! many requests were slower than each bucket boundary. For each quantile `q` the judgment
//! picks the baseline's bucket boundary at `q` (the smallest `le` under which at least `q` of
//! the baseline's requests fall), then runs the [`ShareJudge`] of `errorRate` on "slower than
//! that boundary" as the event. A canary whose tail grows puts more of its requests above the
//! boundary than its request share predicts.
//!
//! The boundary must not depend on the data it is tested on, or the baseline's share above
//! its own empirical quantile would be biased low. So the judgment first *learns*: it sums the
//! baseline's buckets until it has `minRequests` and at least `10 / (1 − q)` requests, fixes
//! the boundaries, and only the ticks after that are tested. Each quantile's test runs at
//! `α / k` for `k` quantiles, so the metric as a whole keeps level α.
//!
//! `maxMs` is a cap, not a comparison: once the canary has `minRequests`, its quantile
//! estimated from all its buckets (linear within a bucket, like `histogram_quantile`) must not
//! exceed it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::counters::CounterTracker;
use super::estimate::Outlook;
use super::share::{ALPHA, ArmCounts, ShareConfig, ShareJudge};
use super::source::Series;
use super::verdict::Verdict;
use crate::api::analysis::Latency;

/// Requests per bucket of one tick or of an accumulation: cumulative counts by upper bound,
/// ascending, the last one `+Inf`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
}

impl Histogram {
    pub fn total(&self) -> f64 {
        self.buckets.last().map_or(0.0, |b| b.1)
    }

    /// Requests slower than `le` (an exact bucket boundary).
    pub fn above(&self, le: f64) -> f64 {
        let below = self.buckets.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
        (self.total() - below).max(0.0)
    }

    fn add(&mut self, other: &Histogram) {
        if self.buckets.is_empty() {
            self.buckets = other.buckets.clone();
            return;
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            if mine.0 == theirs.0 {
                mine.1 += theirs.1;
            }
        }
    }

    /// The smallest finite boundary under which at least `q` of the requests fall, or the
    /// largest finite one when the quantile lies in the `+Inf` bucket.
    pub fn boundary(&self, q: f64) -> Option<f64> {
        let total = self.total();
        let finite: Vec<&(f64, f64)> = self.buckets.iter().filter(|b| b.0.is_finite()).collect();
        if total <= 0.0 || finite.is_empty() {
            return None;
        }
        finite
            .iter()
            .find(|b| b.1 >= q * total)
            .or(finite.last())
            .map(|b| b.0)
    }

    /// The `q` quantile, linear within its bucket as `histogram_quantile` does. `None` without
    /// requests; the largest finite boundary when it falls in `+Inf`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, count) in &self.buckets {
            if count >= rank {
                if !le.is_finite() {
                    return Some(lower.0);
                }
                let width = count - lower.1;
                let frac = if width > 0.0 {
                    (rank - lower.1) / width
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * frac);
            }
            lower = (le, count);
        }
        Some(lower.0)
    }
}

/// Per-`le` counter trackers of one arm's bucket query.
#[derive(Clone, Debug, Default)]
pub struct BucketTracker {
    by_le: BTreeMap<LeKey, CounterTracker>,
    /// Anchored at a known moment: buckets first seen later started from zero.
    from_zero: bool,
}

/// An `le` value ordered numerically.
#[derive(Clone, Copy, Debug, PartialEq)]
struct LeKey(f64);
impl Eq for LeKey {}
impl PartialOrd for LeKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for LeKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Why a bucket answer cannot be used.
#[derive(Clone, Debug, PartialEq)]
pub enum BucketProblem {
    NoData,
    /// The answer is not a histogram (no `le`, no `+Inf`).
    Shape(String),
    /// The first answer, or a reset: anchored, nothing counted this tick.
    Anchoring,
}

impl BucketTracker {
    /// Records `answer`, queried when the canary's weight was verified, as the anchors; a
    /// bucket or series it lacks started later, from zero.
    pub fn anchor(&mut self, answer: &[Series]) {
        // An empty or malformed answer anchors nothing; later series count from zero.
        let _ = self.advance(answer);
        self.from_zero = true;
        for t in self.by_le.values_mut() {
            t.anchor(&[]);
        }
    }

    /// Records one answer and returns the tick's histogram of increments.
    pub fn advance(&mut self, answer: &[Series]) -> Result<Histogram, BucketProblem> {
        if answer.is_empty() {
            return Err(BucketProblem::NoData);
        }
        let mut grouped: BTreeMap<LeKey, Vec<Series>> = BTreeMap::new();
        for s in answer {
            let Some(le) = s.labels.get("le") else {
                return Err(BucketProblem::Shape(
                    "a series without an `le` label: query the `_bucket` series and keep `le` (e.g. sum by (le) (…_bucket{…}))".into(),
                ));
            };
            let le: f64 = match le.as_str() {
                "+Inf" | "Inf" | "inf" => f64::INFINITY,
                other => other.parse().map_err(|_| {
                    BucketProblem::Shape(format!("`le` value {other:?} is not a number"))
                })?,
            };
            let mut s = s.clone();
            s.labels.remove("le");
            grouped.entry(LeKey(le)).or_default().push(s);
        }
        if !grouped.keys().any(|k| k.0.is_infinite()) {
            return Err(BucketProblem::Shape(
                "no `le=\"+Inf\"` bucket: the query must return every bucket of the histogram"
                    .into(),
            ));
        }
        let primed = self.from_zero || !self.by_le.is_empty();
        let mut buckets = Vec::with_capacity(grouped.len());
        let mut clean = primed;
        let from_zero = self.from_zero;
        for (le, series) in grouped {
            let inc = self
                .by_le
                .entry(le)
                .or_insert_with(|| {
                    if from_zero {
                        CounterTracker::from_zero()
                    } else {
                        CounterTracker::default()
                    }
                })
                .advance(&series);
            clean &= inc.is_clean();
            buckets.push((le.0, inc.value));
        }
        if !clean {
            return Err(BucketProblem::Anchoring);
        }
        // Cumulative counts must not decrease with `le`; scrape skew can break that slightly.
        let mut running: f64 = 0.0;
        for b in &mut buckets {
            running = running.max(b.1);
            b.1 = running;
        }
        Ok(Histogram { buckets })
    }
}

/// The boundary fixed for one quantile, and its test.
#[derive(Clone, Debug)]
pub struct QuantileTest {
    pub quantile: f64,
    pub boundary: f64,
    pub judge: ShareJudge,
}

#[derive(Clone, Debug)]
pub struct LatencyJudge {
    spec: Latency,
    canary: BucketTracker,
    baseline: BucketTracker,
    /// The baseline's buckets summed while learning the boundaries.
    learning: Histogram,
    /// All the canary's buckets, for `maxMs`.
    canary_total: Histogram,
    tests: Vec<QuantileTest>,
}

/// What one latency tick concluded.
#[derive(Clone, Debug, PartialEq)]
pub struct LatencyTick {
    pub verdict: Verdict,
    pub reason: String,
    pub no_data: bool,
    /// The first quantile's counts (requests and requests above its boundary) per arm.
    pub counts: Option<(ArmCounts, ArmCounts)>,
    /// The largest failure statistic over the quantiles: (ln e, ln(1/α_k)).
    pub statistic: Option<(f64, f64)>,
    /// When a quantile's change detector failed the canary: the moment its evidence counts
    /// from.
    pub worse_since: Option<i64>,
    /// While collecting evidence: the slowest quantile's forecast of the time to Pass.
    pub outlook: Option<Outlook>,
    /// Whether the canary has served `minRequests` since the boundaries were fixed.
    pub served_min_requests: Option<bool>,
}

impl LatencyJudge {
    pub fn new(spec: &Latency) -> LatencyJudge {
        LatencyJudge {
            spec: spec.clone(),
            canary: BucketTracker::default(),
            baseline: BucketTracker::default(),
            learning: Histogram::default(),
            canary_total: Histogram::default(),
            tests: Vec::new(),
        }
    }

    pub fn boundaries(&self) -> Vec<(f64, f64)> {
        self.tests
            .iter()
            .map(|t| (t.quantile, t.boundary))
            .collect()
    }

    fn learning_target(&self) -> f64 {
        let q_max = self.spec.quantiles.iter().copied().fold(0.0, f64::max);
        let tail = (1.0 - q_max).max(1e-4);
        (self.spec.min_requests as f64).max(10.0 / tail)
    }

    fn ms(&self, le: f64) -> String {
        let ms = le * self.spec.bucket_unit.to_ms();
        if ms >= 1000.0 {
            format!("{:.3} s", ms / 1000.0)
        } else {
            format!("{ms} ms")
        }
    }

    /// Anchors both arms' buckets at the moment the canary's weight was verified.
    pub fn anchor(&mut self, canary: &[Series], baseline: &[Series]) {
        self.canary.anchor(canary);
        self.baseline.anchor(baseline);
    }

    pub fn observe(&mut self, canary: &[Series], baseline: &[Series], at: i64) -> LatencyTick {
        let tick = self.tick(canary, baseline, at);
        LatencyTick {
            served_min_requests: Some(self.served_min_requests()),
            ..tick
        }
    }

    /// Whether the canary has served `minRequests` in every quantile's test (none before the
    /// boundaries are fixed).
    fn served_min_requests(&self) -> bool {
        !self.tests.is_empty()
            && self
                .tests
                .iter()
                .all(|t| t.judge.canary_served_min_requests())
    }

    fn tick(&mut self, canary: &[Series], baseline: &[Series], at: i64) -> LatencyTick {
        let c = self.canary.advance(canary);
        let b = self.baseline.advance(baseline);
        let (c, b) = match (c, b) {
            (Ok(c), Ok(b)) => (c, b),
            (Err(p), _) | (_, Err(p)) => return self.problem(p),
        };
        if c.total() <= 0.0 || b.total() <= 0.0 {
            let arm = if c.total() <= 0.0 {
                "canary"
            } else {
                "baseline"
            };
            return LatencyTick {
                no_data: true,
                ..self.inconclusive(format!(
                    "no requests reached the {arm} since the last measurement"
                ))
            };
        }
        self.canary_total.add(&c);
        if self.tests.is_empty() {
            self.learning.add(&b);
            if self.learning.total() < self.learning_target() {
                return self.inconclusive(format!(
                    "learning the baseline's bucket boundaries: {} of {} requests",
                    self.learning.total(),
                    self.learning_target()
                ));
            }
            self.fix_boundaries(at);
            return self.inconclusive(format!(
                "boundaries fixed from {} baseline requests: {}",
                self.learning.total(),
                self.describe_boundaries()
            ));
        }
        for t in &mut self.tests {
            t.judge.observe(
                ArmCounts {
                    requests: c.total(),
                    events: c.above(t.boundary),
                },
                ArmCounts {
                    requests: b.total(),
                    events: b.above(t.boundary),
                },
                at,
            );
        }
        self.judge()
    }

    /// Fixes the boundaries at `at`: the quantiles' tests count from there.
    fn fix_boundaries(&mut self, at: i64) {
        let k = self.spec.quantiles.len().max(1) as f64;
        let config = ShareConfig {
            tolerated_ratio: self.spec.tolerated_ratio,
            floor: self.spec.floor,
            min_requests: self.spec.min_requests as f64,
            alpha: ALPHA / k,
        };
        self.tests = self
            .spec
            .quantiles
            .iter()
            .filter_map(|&q| {
                self.learning.boundary(q).map(|boundary| {
                    let mut judge = ShareJudge::new(config);
                    judge.start(at);
                    QuantileTest {
                        quantile: q,
                        boundary,
                        judge,
                    }
                })
            })
            .collect();
    }

    fn describe_boundaries(&self) -> String {
        self.tests
            .iter()
            .map(|t| format!("p{} ≤ {}", t.quantile * 100.0, self.ms(t.boundary)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn judge(&self) -> LatencyTick {
        let counts = self
            .tests
            .first()
            .map(|t| (t.judge.canary(), t.judge.baseline()));
        let statistic = self
            .tests
            .iter()
            .map(|t| (t.judge.danger(), t.judge.fail_threshold()))
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let verdicts: Vec<(Verdict, String)> = self
            .tests
            .iter()
            .map(|t| {
                let (v, why) = t.judge.verdict();
                (
                    v,
                    format!(
                        "p{} (above {}): {why}",
                        t.quantile * 100.0,
                        self.ms(t.boundary)
                    ),
                )
            })
            .collect();
        let tick = |verdict, reason| LatencyTick {
            verdict,
            reason,
            no_data: false,
            counts,
            statistic,
            worse_since: None,
            outlook: None,
            served_min_requests: None,
        };
        if let Some(i) = verdicts.iter().position(|(v, _)| *v == Verdict::Fail) {
            return LatencyTick {
                worse_since: self.tests[i].judge.worse_since(),
                ..tick(Verdict::Fail, verdicts[i].1.clone())
            };
        }
        if let Some(cap) = self.spec.max_ms {
            let q = self.spec.quantiles.iter().copied().fold(0.0, f64::max);
            if self.canary_total.total() >= self.spec.min_requests as f64
                && let Some(value) = self.canary_total.quantile(q)
            {
                let ms = value * self.spec.bucket_unit.to_ms();
                if ms > cap {
                    return tick(
                        Verdict::Fail,
                        format!("canary p{} ≈ {ms:.1} ms is above maxMs {cap}", q * 100.0),
                    );
                }
            }
        }
        let all_pass = !verdicts.is_empty() && verdicts.iter().all(|(v, _)| *v == Verdict::Pass);
        let reasons = verdicts
            .iter()
            .map(|(_, why)| why.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        if all_pass {
            tick(Verdict::Pass, reasons)
        } else {
            LatencyTick {
                outlook: slowest(
                    self.tests
                        .iter()
                        .filter(|t| t.judge.verdict().0 != Verdict::Pass)
                        .filter_map(|t| t.judge.outlook()),
                ),
                ..tick(Verdict::Inconclusive, reasons)
            }
        }
    }

    fn inconclusive(&self, reason: String) -> LatencyTick {
        LatencyTick {
            verdict: Verdict::Inconclusive,
            reason,
            no_data: false,
            counts: None,
            statistic: None,
            worse_since: None,
            outlook: None,
            served_min_requests: None,
        }
    }

    fn problem(&self, p: BucketProblem) -> LatencyTick {
        match p {
            BucketProblem::NoData => LatencyTick {
                no_data: true,
                ..self.inconclusive("the bucket query returned no series (no data)".into())
            },
            BucketProblem::Shape(why) => self.inconclusive(why),
            BucketProblem::Anchoring => self.inconclusive(
                "anchoring the bucket counters (first measurement or a counter reset)".into(),
            ),
        }
    }
}

/// The outlook that keeps a Pass furthest away: one not in sight, else the longest estimate.
pub fn slowest(outlooks: impl Iterator<Item = Outlook>) -> Option<Outlook> {
    outlooks.max_by(|a, b| match (a.estimate(), b.estimate()) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (Some(_), None) => std::cmp::Ordering::Less,
        (Some(x), Some(y)) => x.secs.total_cmp(&y.secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `sum by (le)` answer from cumulative bucket counts.
    fn answer(buckets: &[(f64, f64)]) -> Vec<Series> {
        buckets
            .iter()
            .map(|&(le, count)| Series {
                labels: BTreeMap::from([(
                    "le".to_owned(),
                    if le.is_infinite() {
                        "+Inf".to_owned()
                    } else {
                        le.to_string()
                    },
                )]),
                value: count,
            })
            .collect()
    }

    fn spec() -> Latency {
        serde_json::from_value(serde_json::json!({
            "buckets": "sum by (le) (d_bucket{a=\"{{arm}}\"})",
            "quantiles": [0.5, 0.99]
        }))
        .expect("latency spec")
    }

    #[test]
    fn buckets_anchored_at_the_verified_weight_count_from_the_first_answer() {
        let shares = [0.5, 0.3, 0.1, 0.05, 0.05, 0.0];
        // No canary series at the anchor: the first answer is all new.
        let mut canary = BucketTracker::default();
        canary.anchor(&[]);
        let h = canary
            .advance(&answer(&tick(40.0, shares)))
            .expect("counted");
        assert_eq!(h.buckets.last().map(|b| b.1), Some(40.0));
        // The stable's buckets at the anchor are subtracted.
        let mut stable = BucketTracker::default();
        stable.anchor(&answer(&tick(1000.0, shares)));
        let h = stable
            .advance(&answer(&tick(1360.0, shares)))
            .expect("counted");
        assert!((h.buckets.last().map_or(0.0, |b| b.1) - 360.0).abs() < 1e-9);
        // Without an anchor the first answer only anchors.
        let mut plain = BucketTracker::default();
        assert_eq!(
            plain.advance(&answer(&tick(40.0, shares))).err(),
            Some(BucketProblem::Anchoring)
        );
    }

    const LES: [f64; 6] = [0.05, 0.1, 0.25, 0.5, 1.0, f64::INFINITY];

    /// Cumulative counts for `n` requests spread by the per-bucket shares `shares`.
    fn tick(n: f64, shares: [f64; 6]) -> Vec<(f64, f64)> {
        let mut sum = 0.0;
        LES.iter()
            .zip(shares)
            .map(|(&le, s)| {
                sum += n * s;
                (le, sum)
            })
            .collect()
    }

    fn add(a: &[(f64, f64)], b: &[(f64, f64)]) -> Vec<(f64, f64)> {
        a.iter().zip(b).map(|(x, y)| (x.0, x.1 + y.1)).collect()
    }

    #[test]
    fn boundaries_and_quantiles_follow_the_buckets() {
        let h = Histogram {
            buckets: vec![
                (0.1, 50.0),
                (0.5, 90.0),
                (1.0, 99.0),
                (f64::INFINITY, 100.0),
            ],
        };
        assert_eq!(h.boundary(0.5), Some(0.1));
        assert_eq!(h.boundary(0.9), Some(0.5));
        assert_eq!(
            h.boundary(0.995),
            Some(1.0),
            "in +Inf: the largest finite boundary"
        );
        assert_eq!(h.above(0.5), 10.0);
        // histogram_quantile(0.7, …) = 0.1 + (0.5 − 0.1) × (70 − 50) / (90 − 50) = 0.3
        assert!((h.quantile(0.7).expect("q") - 0.3).abs() < 1e-12);
        assert_eq!(h.quantile(0.25), Some(0.05));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn a_non_histogram_answer_is_refused_with_the_fix() {
        let mut t = BucketTracker::default();
        let no_le = vec![Series {
            labels: BTreeMap::new(),
            value: 1.0,
        }];
        assert!(
            matches!(t.advance(&no_le), Err(BucketProblem::Shape(m)) if m.contains("sum by (le)"))
        );
        let no_inf = answer(&[(0.1, 1.0), (0.5, 2.0)]);
        assert!(matches!(t.advance(&no_inf), Err(BucketProblem::Shape(m)) if m.contains("+Inf")));
        assert_eq!(t.advance(&[]), Err(BucketProblem::NoData));
    }

    fn run(canary_shares: [f64; 6], ticks: usize) -> (Verdict, String) {
        let base = [0.3, 0.3, 0.3, 0.08, 0.015, 0.005];
        let mut j = LatencyJudge::new(&spec());
        let mut c = tick(0.0, base);
        let mut b = tick(0.0, base);
        let mut last = (Verdict::Inconclusive, String::new());
        for _ in 0..ticks {
            c = add(&c, &tick(500.0, canary_shares));
            b = add(&b, &tick(500.0, base));
            let t = j.observe(&answer(&c), &answer(&b), 0);
            last = (t.verdict, t.reason);
            if t.verdict == Verdict::Fail {
                break;
            }
        }
        last
    }

    #[test]
    fn a_slower_tail_fails_and_names_the_quantile() {
        // 6% of the canary above 0.5 s where the baseline has 2%.
        let (v, why) = run([0.3, 0.3, 0.28, 0.06, 0.05, 0.01], 60);
        assert_eq!(v, Verdict::Fail, "{why}");
        assert!(why.contains("p99"), "{why}");
    }

    #[test]
    fn the_same_distribution_passes() {
        let (v, why) = run([0.3, 0.3, 0.3, 0.08, 0.015, 0.005], 60);
        assert_eq!(v, Verdict::Pass, "{why}");
    }

    #[test]
    fn learning_comes_first_and_says_so() {
        let mut j = LatencyJudge::new(&spec());
        let base = [0.3, 0.3, 0.3, 0.08, 0.015, 0.005];
        let a = tick(100.0, base);
        let t = j.observe(&answer(&a), &answer(&a), 0);
        assert!(t.reason.contains("anchoring"), "{}", t.reason);
        let b = add(&a, &tick(100.0, base));
        let t = j.observe(&answer(&b), &answer(&b), 0);
        assert!(t.reason.contains("learning"), "{}", t.reason);
        assert!(j.boundaries().is_empty());
    }

    #[test]
    fn zero_traffic_is_no_data_never_pass() {
        let mut j = LatencyJudge::new(&spec());
        let a = tick(100.0, [0.3, 0.3, 0.3, 0.08, 0.015, 0.005]);
        j.observe(&answer(&a), &answer(&a), 0);
        let t = j.observe(&answer(&a), &answer(&a), 0);
        assert!(t.no_data);
        assert_eq!(t.verdict, Verdict::Inconclusive);
    }

    #[test]
    fn max_ms_caps_the_canary_quantile() {
        let mut s = spec();
        s.max_ms = Some(200.0);
        s.bucket_unit = crate::api::analysis::BucketUnit::Seconds;
        let mut j = LatencyJudge::new(&s);
        let shares = [0.3, 0.3, 0.3, 0.08, 0.015, 0.005];
        let mut c = tick(0.0, shares);
        let mut last = None;
        for _ in 0..30 {
            c = add(&c, &tick(500.0, shares));
            last = Some(j.observe(&answer(&c), &answer(&c), 0));
        }
        let t = last.expect("ticks");
        // p99 of these buckets is ≈ 0.83 s, far above 200 ms.
        assert_eq!(t.verdict, Verdict::Fail, "{}", t.reason);
        assert!(t.reason.contains("maxMs 200"), "{}", t.reason);
    }
}
