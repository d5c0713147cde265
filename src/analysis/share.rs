//! The judgment behind `errorRate` and each quantile of `latency`: per tick, how many requests
//! each arm served and how many of them were bad (failed, or slower than a boundary).
//!
//! - **Fail** when the anytime-valid test rejects "the canary is no worse" at level α *and* the
//!   difference matters in practice: the canary's observed rate is at least `toleratedRatio`
//!   times the baseline's and exceeds it by at least `floor`.
//! - **Pass** once both arms have `minRequests` and either the non-inferiority test rejects
//!   "the canary is worse by `toleratedRatio` or more", or the canary's rate is provably below
//!   the baseline's plus `floor` (the rule-of-three case of services with almost no errors).
//! - **Inconclusive** otherwise, with what is missing.
//!
//! The guarantee: a canary that is no worse than its baseline is failed with probability at
//! most α over the whole analysis, however often it is evaluated.

use serde::Serialize;

use super::sequential::{ShareTest, Side, rate_upper_bound};
use super::verdict::Verdict;
use crate::api::analysis::ErrorRate;

/// Level of the failure test over a whole analysis.
pub const ALPHA: f64 = 0.01;
/// Level of the evidence required for a Pass.
pub const PASS_ALPHA: f64 = 0.05;

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShareConfig {
    pub tolerated_ratio: f64,
    pub floor: f64,
    pub min_requests: f64,
    pub alpha: f64,
}

impl From<&ErrorRate> for ShareConfig {
    fn from(e: &ErrorRate) -> ShareConfig {
        ShareConfig::new(e.tolerated_ratio, e.floor, e.min_requests as f64)
    }
}

impl ShareConfig {
    pub fn new(tolerated_ratio: f64, floor: f64, min_requests: f64) -> ShareConfig {
        ShareConfig {
            tolerated_ratio,
            floor,
            min_requests,
            alpha: ALPHA,
        }
    }
}

/// Requests and bad events of one arm, accumulated over the analysis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArmCounts {
    pub requests: f64,
    pub events: f64,
}

impl ArmCounts {
    pub fn rate(&self) -> Option<f64> {
        (self.requests > 0.0).then(|| self.events / self.requests)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ShareJudge {
    config: ShareConfig,
    worse: ShareTest,
    not_worse: ShareTest,
    canary: ArmCounts,
    baseline: ArmCounts,
}

impl ShareJudge {
    pub fn new(config: ShareConfig) -> ShareJudge {
        ShareJudge {
            config,
            worse: ShareTest::new(Side::Worse, 1.0),
            not_worse: ShareTest::new(Side::NotWorse, config.tolerated_ratio),
            canary: ArmCounts::default(),
            baseline: ArmCounts::default(),
        }
    }

    /// Adds one tick's increments. Negative or non-finite increments (a counter reset that was
    /// not caught upstream) are ignored rather than trusted.
    pub fn observe(&mut self, canary: ArmCounts, baseline: ArmCounts) {
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

    pub fn config(&self) -> &ShareConfig {
        &self.config
    }

    pub fn canary(&self) -> ArmCounts {
        self.canary
    }

    pub fn baseline(&self) -> ArmCounts {
        self.baseline
    }

    /// ln e of the failure test while the practical-significance conditions hold, else −∞.
    /// The benchmark calibrates on it; `verdict` compares it with ln(1/α).
    pub fn fail_statistic(&self) -> f64 {
        let (Some(c), Some(b)) = (self.canary.rate(), self.baseline.rate()) else {
            return f64::NEG_INFINITY;
        };
        let ratio_ok = c >= b * self.config.tolerated_ratio;
        let floor_ok = c - b >= self.config.floor;
        if ratio_ok && floor_ok {
            self.worse.ln_e()
        } else {
            f64::NEG_INFINITY
        }
    }

    /// The verdict so far, and a sentence saying why.
    pub fn verdict(&self) -> (Verdict, String) {
        let cfg = &self.config;
        let pct = |r: Option<f64>| r.map_or("n/a".to_owned(), |r| format!("{:.3}%", r * 100.0));
        if self.fail_statistic() >= (1.0 / cfg.alpha).ln() {
            return (
                Verdict::Fail,
                format!(
                    "canary {} vs baseline {}: worse beyond toleratedRatio {} and floor {:.3}%, e = {} ≥ {}",
                    pct(self.canary.rate()),
                    pct(self.baseline.rate()),
                    cfg.tolerated_ratio,
                    cfg.floor * 100.0,
                    short(self.worse.e_value()),
                    1.0 / cfg.alpha
                ),
            );
        }
        if self.canary.requests < cfg.min_requests || self.baseline.requests < cfg.min_requests {
            return (
                Verdict::Inconclusive,
                format!(
                    "not enough requests yet: canary {}, baseline {}, need {} each",
                    self.canary.requests, self.baseline.requests, cfg.min_requests
                ),
            );
        }
        if self.not_worse.rejects(PASS_ALPHA) {
            return (
                Verdict::Pass,
                format!(
                    "canary {} vs baseline {}: not worse by {}x (e = {} ≥ {})",
                    pct(self.canary.rate()),
                    pct(self.baseline.rate()),
                    cfg.tolerated_ratio,
                    short(self.not_worse.e_value()),
                    1.0 / PASS_ALPHA
                ),
            );
        }
        let upper = rate_upper_bound(self.canary.events, self.canary.requests, PASS_ALPHA);
        let base = self.baseline.rate().unwrap_or(0.0);
        if upper <= base + cfg.floor {
            return (
                Verdict::Pass,
                format!(
                    "canary rate at most {:.3}% (95% bound) against baseline {} + floor {:.3}%",
                    upper * 100.0,
                    pct(Some(base)),
                    cfg.floor * 100.0
                ),
            );
        }
        (
            Verdict::Inconclusive,
            format!(
                "collecting evidence: canary {} vs baseline {}, e(worse) = {:.2}, e(not worse) = {:.2}",
                pct(self.canary.rate()),
                pct(self.baseline.rate()),
                self.worse.e_value(),
                self.not_worse.e_value()
            ),
        )
    }
}

/// An e-value for people: `12.3`, or `4.1e12` once it is large.
fn short(e: f64) -> String {
    if e < 1e5 {
        format!("{e:.1}")
    } else {
        format!("{e:.1e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            j.observe(counts(500.0, 20.0), counts(500.0, 2.5));
        }
        let (v, why) = j.verdict();
        assert_eq!(v, Verdict::Fail, "{why}");
        assert!(why.contains("4.000%") && why.contains("0.500%"), "{why}");
    }

    #[test]
    fn an_equal_canary_with_enough_traffic_passes() {
        let mut j = judge();
        for _ in 0..60 {
            j.observe(counts(500.0, 10.0), counts(500.0, 10.0));
        }
        assert_eq!(j.verdict().0, Verdict::Pass, "{}", j.verdict().1);
    }

    #[test]
    fn too_few_requests_is_inconclusive_never_pass() {
        let mut j = judge();
        j.observe(counts(50.0, 0.0), counts(50.0, 0.0));
        let (v, why) = j.verdict();
        assert_eq!(v, Verdict::Inconclusive);
        assert!(why.contains("not enough requests"), "{why}");
    }

    #[test]
    fn zero_traffic_is_inconclusive() {
        let mut j = judge();
        for _ in 0..100 {
            j.observe(counts(0.0, 0.0), counts(0.0, 0.0));
        }
        assert_eq!(j.verdict().0, Verdict::Inconclusive);
    }

    #[test]
    fn an_error_free_service_passes_on_the_rule_of_three() {
        let mut j = judge();
        // 20,000 requests per arm without an error: the canary's 95% bound is 0.015%, under
        // the 0.02% floor.
        j.observe(counts(20_000.0, 0.0), counts(20_000.0, 0.0));
        let (v, why) = j.verdict();
        assert_eq!(v, Verdict::Pass, "{why}");
        assert!(why.contains("bound"), "{why}");
    }

    #[test]
    fn a_significant_but_tiny_difference_does_not_fail() {
        // 0.010% vs 0.005% over 40M requests per arm: statistically clear, but below the floor.
        let mut j = ShareJudge::new(ShareConfig::new(1.25, 0.0002, 200.0));
        j.observe(counts(4e7, 4000.0), counts(4e7, 2000.0));
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
        j.observe(counts(-100.0, 5.0), counts(100.0, 1.0));
        j.observe(counts(100.0, 500.0), counts(100.0, 1.0));
        j.observe(counts(f64::NAN, 0.0), counts(100.0, 1.0));
        assert_eq!(j.canary(), ArmCounts::default());
    }
}
