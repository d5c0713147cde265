//! The judgment behind `errorRate` and each quantile of `latency`: per tick, how many requests
//! each arm served and how many of them were bad (failed, or slower than a boundary).
//!
//! - **Fail** when the anytime-valid test rejects "the canary is no worse" at level α *and* the
//!   difference matters in practice: the canary's observed rate is at least `toleratedRatio`
//!   times the baseline's and exceeds it by at least `floor`.
//! - **Fail** as well when the change detector ([`super::change`]) finds that the canary got
//!   worse at some moment of the analysis, with the same practical conditions on the rates
//!   since that moment: evidence from healthy minutes before a change does not dilute it.
//! - **Pass** once both arms have `minRequests` and either the non-inferiority test rejects
//!   "the canary is worse by `toleratedRatio` or more", or the canary's rate is provably below
//!   the baseline's plus `floor` (the rule-of-three case of services with almost no errors).
//! - **Inconclusive** otherwise, with what is missing.
//!
//! The guarantee, however often it is evaluated: a canary that is no worse than its baseline
//! is failed with probability at most α = 1% per rollout-hour. The budget is split
//! ([`DETECTOR_SHARE`]): the test from the start gets 0.75 α over the whole analysis, however
//! long, and the change detector 0.25 α per rollout-hour. A weight step needs no budget of its
//! own: the detector considers every moment, a step's among them, as a possible start of a
//! change.

pub use super::arms::{ALPHA, ArmCounts, PASS_ALPHA, ShareConfig};
use super::change::{self, ChangeDetector};
use super::estimate::{self, Evidence, Outlook};
use super::sequential::{ShareTest, Side, WORSE_GRID, rate_upper_bound};
use super::verdict::Verdict;
use crate::time::format_time;

/// The change detector's share of the budget α; the test from the start has the rest, over
/// the whole analysis however long.
pub const DETECTOR_SHARE: f64 = 0.25;

/// ln threshold of the test from the start for a budget `alpha`: its level is
/// `alpha · (1 − DETECTOR_SHARE)`.
pub fn fail_threshold(alpha: f64) -> f64 {
    (1.0 / (alpha * (1.0 - DETECTOR_SHARE))).ln()
}

/// Where a detector tick began: the time and the arms' counts so far.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Mark {
    at: i64,
    canary: ArmCounts,
    baseline: ArmCounts,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ShareJudge {
    config: ShareConfig,
    worse: ShareTest,
    not_worse: ShareTest,
    canary: ArmCounts,
    baseline: ArmCounts,
    detector: ChangeDetector<Mark>,
    /// The detector's tick in progress: where it began, and the increments pooled since.
    pool: Option<(Mark, ArmCounts, ArmCounts)>,
    /// When the last increments ended: where the next ones begin.
    last_at: Option<i64>,
    /// When the counts began: the anchor, or the first increments' start.
    started_at: Option<i64>,
}

impl ShareJudge {
    pub fn new(config: ShareConfig) -> ShareJudge {
        ShareJudge {
            config,
            worse: ShareTest::new(Side::Worse, 1.0),
            not_worse: ShareTest::new(Side::NotWorse, config.tolerated_ratio),
            canary: ArmCounts::default(),
            baseline: ArmCounts::default(),
            detector: ChangeDetector::new(1.0, &WORSE_GRID),
            pool: None,
            last_at: None,
            started_at: None,
        }
    }

    /// Marks the moment (unix seconds) the first increments will count from: the counters'
    /// anchor. The forecast of the time to Pass divides the counts by the time since.
    pub fn start(&mut self, at: i64) {
        if self.started_at.is_none() {
            self.started_at = Some(at);
            self.last_at = Some(at);
        }
    }

    /// Adds the increments measured at `at` (unix seconds) since the last measurement.
    /// Negative or non-finite increments (a counter reset that was not caught upstream) are
    /// ignored rather than trusted.
    pub fn observe(&mut self, canary: ArmCounts, baseline: ArmCounts, at: i64) {
        let sane = |c: &ArmCounts| {
            c.requests.is_finite()
                && c.events.is_finite()
                && c.requests >= 0.0
                && c.events >= 0.0
                && c.events <= c.requests
        };
        if !sane(&canary) || !sane(&baseline) {
            return;
        }
        self.pool_for_detector(canary, baseline, at);
        self.canary.requests += canary.requests;
        self.canary.events += canary.events;
        self.baseline.requests += baseline.requests;
        self.baseline.events += baseline.events;
        let total = canary.requests + baseline.requests;
        if total > 0.0 {
            let share = canary.requests / total;
            self.worse.update(canary.events, baseline.events, share);
            self.not_worse.update(canary.events, baseline.events, share);
        }
    }

    /// Pools increments into detector ticks of [`change::TICK_SECS`], each marked with the
    /// time and counts at its start.
    fn pool_for_detector(&mut self, canary: ArmCounts, baseline: ArmCounts, at: i64) {
        let began = self.last_at.unwrap_or(at);
        self.started_at.get_or_insert(began);
        self.last_at = Some(at);
        let (mark, c, b) = self.pool.get_or_insert((
            Mark {
                at: began,
                canary: self.canary,
                baseline: self.baseline,
            },
            ArmCounts::default(),
            ArmCounts::default(),
        ));
        c.requests += canary.requests;
        c.events += canary.events;
        b.requests += baseline.requests;
        b.events += baseline.events;
        if at - mark.at < change::TICK_SECS {
            return;
        }
        let (mark, c, b) = (*mark, *c, *b);
        self.pool = None;
        let total = c.requests + b.requests;
        if total > 0.0 {
            self.detector
                .update(c.events, b.events, c.requests / total, mark);
        }
    }

    /// The arms' counts since the change the detector points at, and when it began.
    fn since_change(&self) -> (ArmCounts, ArmCounts, i64) {
        let m = self.detector.since();
        let minus = |now: ArmCounts, then: ArmCounts| ArmCounts {
            requests: now.requests - then.requests,
            events: now.events - then.events,
        };
        (
            minus(self.canary, m.canary),
            minus(self.baseline, m.baseline),
            m.at,
        )
    }

    /// Whether `canary` is worse than `baseline` by enough to matter: `toleratedRatio` times
    /// the rate, and `floor` above it.
    fn matters(&self, canary: ArmCounts, baseline: ArmCounts) -> bool {
        let (Some(c), Some(b)) = (canary.rate(), baseline.rate()) else {
            return false;
        };
        c >= b * self.config.tolerated_ratio && c - b >= self.config.floor
    }

    /// ln D of the change detector while the rates since the change matter, else −∞.
    pub fn change_statistic(&self) -> f64 {
        let (c, b, _) = self.since_change();
        if self.matters(c, b) {
            self.detector.ln_statistic()
        } else {
            f64::NEG_INFINITY
        }
    }

    /// When the change detector, and not the test from the start, fails the canary: the moment
    /// (unix seconds) its evidence counts from.
    pub fn worse_since(&self) -> Option<i64> {
        let by_change = self.fail_statistic() < self.fail_threshold()
            && self.change_statistic() >= self.change_threshold();
        by_change.then(|| self.since_change().2)
    }

    /// The detector's ln threshold: a false alarm in at most α·[`DETECTOR_SHARE`] of
    /// rollout-hours.
    pub fn change_threshold(&self) -> f64 {
        change::ln_threshold(self.config.alpha * DETECTOR_SHARE)
    }

    /// The ln threshold of the test from the start.
    pub fn fail_threshold(&self) -> f64 {
        fail_threshold(self.config.alpha)
    }

    /// Both tests as one danger value on the scale of the test from the start: the larger of
    /// its statistic and the detector's, shifted by the difference of their thresholds. It
    /// reaches [`ShareJudge::fail_threshold`] exactly when one of them fails the canary; the
    /// benchmark calibrates on it.
    pub fn danger(&self) -> f64 {
        let shift = self.change_threshold() - self.fail_threshold();
        self.fail_statistic().max(self.change_statistic() - shift)
    }

    pub fn config(&self) -> &ShareConfig {
        &self.config
    }

    pub fn canary(&self) -> ArmCounts {
        self.canary
    }

    pub fn baseline(&self) -> ArmCounts {
        self.baseline
    }

    /// The forecast of the time to Pass at the traffic and rates measured so far; `None`
    /// before there is traffic to forecast from.
    pub fn outlook(&self) -> Option<Outlook> {
        let elapsed = self.last_at? - self.started_at?;
        estimate::outlook(&Evidence {
            config: &self.config,
            canary: self.canary,
            baseline: self.baseline,
            elapsed_secs: elapsed as f64,
            not_worse: &self.not_worse,
        })
    }

    /// Whether the canary has served `minRequests`: what `promotion: noFail` asks besides
    /// the absence of a Fail.
    pub fn canary_served_min_requests(&self) -> bool {
        self.canary.requests >= self.config.min_requests
    }

    /// ln e of the failure test from the start while the practical-significance conditions
    /// hold, else −∞. `verdict` compares it with ln(1/α).
    pub fn fail_statistic(&self) -> f64 {
        if self.matters(self.canary, self.baseline) {
            self.worse.ln_e()
        } else {
            f64::NEG_INFINITY
        }
    }

    /// Whether the judgment passes now: what [`ShareJudge::verdict`] decides, without the
    /// sentence and the forecast in it (simulations ask this every tick).
    pub fn passes(&self) -> bool {
        let cfg = &self.config;
        if self.fail_statistic() >= self.fail_threshold()
            || self.change_statistic() >= self.change_threshold()
            || self.canary.requests < cfg.min_requests
            || self.baseline.requests < cfg.min_requests
        {
            return false;
        }
        self.not_worse.rejects(PASS_ALPHA)
            || rate_upper_bound(self.canary.events, self.canary.requests, PASS_ALPHA)
                <= self.baseline.rate().unwrap_or(0.0) + cfg.floor
    }

    /// The verdict so far, and a sentence saying why: the rates and the conclusion in plain
    /// words first, the evidence as odds after ("evidence 113 : 1, needs 133 : 1").
    pub fn verdict(&self) -> (Verdict, String) {
        let cfg = &self.config;
        let pct = |r: Option<f64>| r.map_or("n/a".to_owned(), |r| format!("{:.3}%", r * 100.0));
        let margin = format!(
            "toleratedRatio {} and floor {:.3}%",
            cfg.tolerated_ratio,
            cfg.floor * 100.0
        );
        if self.fail_statistic() >= self.fail_threshold() {
            return (
                Verdict::Fail,
                format!(
                    "canary {} vs baseline {}: worse, evidence {} : 1, needs {} : 1 (beyond {margin})",
                    pct(self.canary.rate()),
                    pct(self.baseline.rate()),
                    odds(self.worse.e_value()),
                    odds(self.fail_threshold().exp())
                ),
            );
        }
        if self.change_statistic() >= self.change_threshold() {
            let (c, b, since) = self.since_change();
            return (
                Verdict::Fail,
                format!(
                    "canary {} vs baseline {} since {}: worse from that moment, evidence {} : 1, needs {} : 1 (change detector; beyond {margin})",
                    pct(c.rate()),
                    pct(b.rate()),
                    format_time(since),
                    odds(self.detector.ln_statistic().min(700.0).exp()),
                    odds(self.change_threshold().exp())
                ),
            );
        }
        let forecast = || {
            self.outlook()
                .map(|o| format!("; {}", o.sentence()))
                .unwrap_or_default()
        };
        if self.canary.requests < cfg.min_requests || self.baseline.requests < cfg.min_requests {
            return (
                Verdict::Inconclusive,
                format!(
                    "collecting evidence: canary {} of {} requests, baseline {} of {}{}",
                    self.canary.requests,
                    cfg.min_requests,
                    self.baseline.requests,
                    cfg.min_requests,
                    forecast()
                ),
            );
        }
        if self.not_worse.rejects(PASS_ALPHA) {
            return (
                Verdict::Pass,
                format!(
                    "canary {} vs baseline {}: not worse than {}× the baseline, evidence {} : 1, needs {} : 1",
                    pct(self.canary.rate()),
                    pct(self.baseline.rate()),
                    cfg.tolerated_ratio,
                    odds(self.not_worse.e_value()),
                    odds(1.0 / PASS_ALPHA)
                ),
            );
        }
        let upper = rate_upper_bound(self.canary.events, self.canary.requests, PASS_ALPHA);
        let base = self.baseline.rate().unwrap_or(0.0);
        if upper <= base + cfg.floor {
            return (
                Verdict::Pass,
                format!(
                    "canary rate at most {:.3}% (95% bound), under baseline {} + floor {:.3}%: not worse",
                    upper * 100.0,
                    pct(Some(base)),
                    cfg.floor * 100.0
                ),
            );
        }
        (
            Verdict::Inconclusive,
            format!(
                "canary {} vs baseline {}: collecting evidence{} (evidence not worse {} : 1, needs {} : 1)",
                pct(self.canary.rate()),
                pct(self.baseline.rate()),
                forecast(),
                odds(self.not_worse.e_value()),
                odds(1.0 / PASS_ALPHA)
            ),
        )
    }
}

/// An e-value as odds for people: `12`, `4.1e12` once it is large, `< 0.1` when it is tiny.
pub fn odds(e: f64) -> String {
    if e.is_nan() || e < 0.1 {
        "< 0.1".to_owned()
    } else if e < 10.0 {
        format!("{e:.1}")
    } else if e < 1e5 {
        format!("{e:.0}")
    } else {
        format!("{e:.1e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::analysis::ErrorRate;

    fn counts(requests: f64, events: f64) -> ArmCounts {
        ArmCounts { requests, events }
    }

    fn judge() -> ShareJudge {
        ShareJudge::new(ShareConfig::new(1.25, 0.0002, 200.0))
    }

    #[test]
    fn a_clearly_worse_canary_fails_with_the_numbers_in_the_reason() {
        let mut j = judge();
        for _ in 0..12 {
            // 5 s at 100 rps per arm: canary 4% errors, baseline 0.5%.
            j.observe(counts(500.0, 20.0), counts(500.0, 2.5), 0);
        }
        let (v, why) = j.verdict();
        assert_eq!(v, Verdict::Fail, "{why}");
        assert!(why.contains("4.000%") && why.contains("0.500%"), "{why}");
    }

    #[test]
    fn reasons_say_the_rates_and_the_conclusion_first_and_the_odds_after() {
        let mut worse = judge();
        for _ in 0..12 {
            worse.observe(counts(500.0, 20.0), counts(500.0, 2.5), 0);
        }
        let (_, why) = worse.verdict();
        assert!(
            why.starts_with("canary 4.000% vs baseline 0.500%: worse, evidence "),
            "{why}"
        );
        assert!(why.contains(" : 1, needs 133 : 1"), "{why}");
        // A healthy canary at 10 rps: collecting, with how long it will take.
        let mut healthy = ShareJudge::new(ShareConfig::new(1.5, 0.0002, 200.0));
        healthy.start(0);
        for t in 1..=60 {
            healthy.observe(counts(10.0, 0.05), counts(90.0, 0.45), t);
        }
        let (v, why) = healthy.verdict();
        assert_eq!(v, Verdict::Inconclusive);
        assert!(
            why.starts_with("canary 0.500% vs baseline 0.500%: collecting evidence; needs about "),
            "{why}"
        );
        assert!(why.contains("min more at 10 rps"), "{why}");
        assert!(why.contains("(evidence not worse "), "{why}");
    }

    #[test]
    fn odds_read_as_people_say_them() {
        assert_eq!(odds(0.0), "< 0.1");
        assert_eq!(odds(f64::NAN), "< 0.1");
        assert_eq!(odds(3.24), "3.2");
        assert_eq!(odds(113.4), "113");
        assert_eq!(odds(4.1e12), "4.1e12");
    }

    #[test]
    fn an_equal_canary_with_enough_traffic_passes() {
        let mut j = judge();
        for _ in 0..60 {
            j.observe(counts(500.0, 10.0), counts(500.0, 10.0), 0);
        }
        assert_eq!(j.verdict().0, Verdict::Pass, "{}", j.verdict().1);
    }

    #[test]
    fn too_few_requests_is_inconclusive_never_pass() {
        let mut j = judge();
        j.observe(counts(50.0, 0.0), counts(50.0, 0.0), 0);
        let (v, why) = j.verdict();
        assert_eq!(v, Verdict::Inconclusive);
        assert!(why.contains("canary 50 of 200 requests"), "{why}");
    }

    #[test]
    fn zero_traffic_is_inconclusive() {
        let mut j = judge();
        for _ in 0..100 {
            j.observe(counts(0.0, 0.0), counts(0.0, 0.0), 0);
        }
        assert_eq!(j.verdict().0, Verdict::Inconclusive);
    }

    #[test]
    fn an_error_free_service_passes_on_the_rule_of_three() {
        let mut j = judge();
        // 20,000 requests per arm without an error: the canary's 95% bound is 0.015%, under
        // the 0.02% floor.
        j.observe(counts(20_000.0, 0.0), counts(20_000.0, 0.0), 0);
        let (v, why) = j.verdict();
        assert_eq!(v, Verdict::Pass, "{why}");
        assert!(why.contains("bound"), "{why}");
    }

    #[test]
    fn a_significant_but_tiny_difference_does_not_fail() {
        // 0.010% vs 0.005% over 40M requests per arm: statistically clear, but below the floor.
        let mut j = ShareJudge::new(ShareConfig::new(1.25, 0.0002, 200.0));
        j.observe(counts(4e7, 4000.0), counts(4e7, 2000.0), 0);
        assert!(j.worse.rejects(ALPHA), "the test itself rejects");
        assert_ne!(j.verdict().0, Verdict::Fail, "{}", j.verdict().1);
    }

    #[test]
    fn the_config_follows_the_templates_errorrate_and_its_defaults() {
        let e: ErrorRate = serde_json::from_value(serde_json::json!({
            "requests": "sum(r{a=\"{{arm}}\"})",
            "errors": "sum(e{a=\"{{arm}}\"})"
        }))
        .expect("a minimal errorRate");
        assert_eq!(ShareConfig::from(&e), ShareConfig::new(1.25, 0.0002, 200.0));
    }

    #[test]
    fn corrupt_increments_are_ignored() {
        let mut j = judge();
        j.observe(counts(-100.0, 5.0), counts(100.0, 1.0), 0);
        j.observe(counts(100.0, 500.0), counts(100.0, 1.0), 0);
        j.observe(counts(f64::NAN, 0.0), counts(100.0, 1.0), 0);
        assert_eq!(j.canary(), ArmCounts::default());
    }

    #[test]
    fn a_regression_after_healthy_minutes_fails_from_its_onset() {
        // 10% canary share; 0.5% errors on both arms for 10 minutes, then the canary's are x4.
        let base = 1_800_000_000;
        let mut j = ShareJudge::new(ShareConfig::new(1.25, 0.0002, 200.0));
        for i in 1..=60 {
            j.observe(counts(100.0, 0.5), counts(900.0, 4.5), base + 10 * i);
            assert_ne!(j.verdict().0, Verdict::Fail, "healthy at {i}");
        }
        let mut after = 0;
        while j.verdict().0 != Verdict::Fail {
            after += 1;
            assert!(after <= 30, "not caught within 300 s: {}", j.verdict().1);
            j.observe(
                counts(100.0, 2.0),
                counts(900.0, 4.5),
                base + 600 + 10 * after,
            );
        }
        // The detector needs ln 72,000 = 11.2 nats plus its prior; about 1 nat a tick.
        assert!(after <= 16, "{after} ticks after the onset");
        assert!(
            j.fail_statistic() < fail_threshold(ALPHA),
            "the test from the start, diluted by the healthy minutes, has not failed yet"
        );
        let (_, why) = j.verdict();
        assert!(why.contains("since 2027-01-15T08:10:00Z"), "{why}");
        assert_eq!(j.worse_since(), Some(base + 600));
        assert!(why.contains("change detector"), "{why}");
        assert!(why.contains("canary 2.000% vs baseline 0.500%"), "{why}");
    }

    #[test]
    fn the_change_detector_ignores_a_difference_too_small_to_matter() {
        // x1.1 after the onset is below toleratedRatio 1.25: never a Fail, however long.
        let base = 1_800_000_000;
        let mut j = ShareJudge::new(ShareConfig::new(1.25, 0.0002, 200.0));
        for i in 1..=360 {
            let errors = if i > 60 { 5.5 } else { 5.0 };
            j.observe(counts(1000.0, errors), counts(1000.0, 5.0), base + 10 * i);
        }
        assert_ne!(j.verdict().0, Verdict::Fail, "{}", j.verdict().1);
        assert_eq!(j.change_statistic(), f64::NEG_INFINITY);
        assert_eq!(j.worse_since(), None);
    }
}
