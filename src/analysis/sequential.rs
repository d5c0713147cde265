//! Anytime-valid tests on event shares: "is the canary's share of the bad events larger than its
//! share of the requests predicts?"
//!
//! Each tick brings, per arm, how many requests were served and how many of them were *events*
//! (errors, or responses slower than a latency boundary). Given the tick's request counts and
//! the total number of events, the canary's event count is (at most as dispersed as) a
//! binomial draw with probability
//!
//! ```text
//! p(r) = ρ·r / (ρ·r + 1 − ρ)        ρ = canary requests / all requests in the tick
//! ```
//!
//! where `r` is the ratio of the canary's event rate to the baseline's. Conditioning on the
//! total removes the shared, unknown base rate (time of day, load), so only the ratio is tested.
//!
//! A [`ShareTest`] multiplies, tick by tick, the likelihood ratio of a few alternative ratios
//! against the null boundary `r₀`, and averages them with prior weights. Under the null every
//! component is a nonnegative supermartingale (the binomial family has monotone likelihood
//! ratio, and a hypergeometric draw is less dispersed than the binomial), so the average is an
//! e-process: by Ville's inequality the chance it *ever* reaches `1/α` is at most `α`, however
//! often it is looked at. That is what lets rollguard evaluate every few seconds without the
//! false-positive inflation of re-testing cumulative windows.

use serde::Serialize;

/// Which side of the null boundary the alternatives lie on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Side {
    /// H₀: r ≤ r₀, against canary-worse alternatives (r > r₀). Rejecting it fails the canary.
    Worse,
    /// H₀: r ≥ r₀, against canary-not-worse alternatives (r < r₀). Rejecting it is evidence
    /// for a Pass (non-inferiority at margin r₀).
    NotWorse,
}

/// The alternatives of the failure test, as multiples of the null ratio, and their prior
/// weights. Most weight sits on moderate regressions: large ones pile up evidence so fast that
/// a smaller weight costs them little, while every nat of prior spent on far-off ratios delays
/// the hard cases. Tuned on the detection benchmark (`benches/detection.rs`); any weights that
/// sum to one keep the test valid.
pub const WORSE_GRID: [(f64, f64); 5] = [
    (1.5, 0.15),
    (2.0, 0.50),
    (3.0, 0.20),
    (5.0, 0.10),
    (10.0, 0.05),
];

/// The alternatives of the non-inferiority test, as fractions of the margin.
const NOT_WORSE_GRID: [(f64, f64); 4] = [(0.8, 0.25), (0.6, 0.35), (0.4, 0.25), (0.2, 0.15)];

/// A mixture e-process on the canary's share of events.
#[derive(Clone, Debug, PartialEq)]
pub struct ShareTest {
    null_ratio: f64,
    /// (ratio, ln weight, cumulative ln likelihood ratio) per alternative.
    components: Vec<(f64, f64, f64)>,
    /// Ticks that carried evidence.
    ticks: u64,
}

/// Whether a tick says anything about the ratio: both arms served requests, and there were
/// events to share.
pub(super) fn informative(canary_events: f64, baseline_events: f64, request_share: f64) -> bool {
    request_share > 0.0
        && request_share < 1.0
        && canary_events >= 0.0
        && baseline_events >= 0.0
        && canary_events + baseline_events > 0.0
}

/// Probability that an event belongs to the canary, given its request share and rate ratio.
pub fn canary_event_probability(request_share: f64, ratio: f64) -> f64 {
    let a = request_share * ratio;
    a / (a + 1.0 - request_share)
}

impl ShareTest {
    /// A test of `side` with null boundary `null_ratio` (> 0).
    pub fn new(side: Side, null_ratio: f64) -> ShareTest {
        let grid: &[(f64, f64)] = match side {
            Side::Worse => &WORSE_GRID,
            Side::NotWorse => &NOT_WORSE_GRID,
        };
        ShareTest::with_grid(null_ratio, grid)
    }

    /// A test with its own alternatives: (multiple of `null_ratio`, prior weight) pairs whose
    /// weights sum to one, all on the same side of 1. The detection benchmark uses it for the
    /// plain-mixture comparison.
    pub fn with_grid(null_ratio: f64, grid: &[(f64, f64)]) -> ShareTest {
        ShareTest {
            null_ratio,
            components: grid
                .iter()
                .map(|&(m, w)| (null_ratio * m, w.ln(), 0.0))
                .collect(),
            ticks: 0,
        }
    }

    /// Adds one tick: the canary's and the baseline's event counts, and the canary's share of
    /// the tick's requests. A tick where one arm served nothing carries no information about
    /// the ratio and is skipped.
    pub fn update(&mut self, canary_events: f64, baseline_events: f64, request_share: f64) {
        if !informative(canary_events, baseline_events, request_share) {
            return;
        }
        self.ticks += 1;
        let p0 = canary_event_probability(request_share, self.null_ratio);
        for (ratio, _, llr) in &mut self.components {
            let p = canary_event_probability(request_share, *ratio);
            *llr += canary_events * (p / p0).ln() + baseline_events * ((1.0 - p) / (1.0 - p0)).ln();
        }
    }

    /// ln of the e-process: the prior-weighted average of the components' likelihood ratios.
    pub fn ln_e(&self) -> f64 {
        log_sum_exp(self.components.iter().map(|(_, lw, llr)| lw + llr))
    }

    /// The e-value, saturated to avoid infinities in evidence.
    pub fn e_value(&self) -> f64 {
        self.ln_e().min(700.0).exp()
    }

    /// True once the e-process has reached `1/alpha`: the null is rejected at level `alpha`.
    pub fn rejects(&self, alpha: f64) -> bool {
        self.ln_e() >= (1.0 / alpha).ln()
    }

    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    /// The null boundary `r₀`.
    pub fn null_ratio(&self) -> f64 {
        self.null_ratio
    }

    /// Per alternative: its ratio, ln prior weight and cumulative ln likelihood ratio.
    pub fn components(&self) -> &[(f64, f64, f64)] {
        &self.components
    }
}

pub(super) fn log_sum_exp(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.collect();
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return max;
    }
    max + v.iter().map(|x| (x - max).exp()).sum::<f64>().ln()
}

/// The rule-of-three style upper bound of a rate from `events` in `trials`: the smallest p with
/// P(Binomial(trials, p) ≤ events) ≤ alpha (Clopper–Pearson, one-sided).
pub fn rate_upper_bound(events: f64, trials: f64, alpha: f64) -> f64 {
    use statrs::distribution::{Beta, ContinuousCDF};
    if trials <= 0.0 {
        return 1.0;
    }
    if events >= trials {
        return 1.0;
    }
    match Beta::new(events + 1.0, trials - events) {
        Ok(b) => b.inverse_cdf(1.0 - alpha),
        Err(_) => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_probability_matches_the_request_share_under_equal_rates() {
        assert!((canary_event_probability(0.1, 1.0) - 0.1).abs() < 1e-12);
        // 10% of requests, 4x the rate: 0.4 / (0.4 + 0.9).
        assert!((canary_event_probability(0.1, 4.0) - 0.4 / 1.3).abs() < 1e-12);
    }

    #[test]
    fn a_worse_canary_is_rejected_and_an_equal_one_is_not() {
        // 80 canary vs 30 baseline errors at equal traffic: the r = 2 component alone has
        // ln LR = 80·ln(4/3) + 30·ln(2/3) = 10.86, far past ln(1/α) = 4.6 even at weight 0.4.
        let mut worse = ShareTest::new(Side::Worse, 1.0);
        worse.update(80.0, 30.0, 0.5);
        assert!(worse.rejects(0.01), "ln e = {}", worse.ln_e());
        let mut equal = ShareTest::new(Side::Worse, 1.0);
        equal.update(45.0, 45.0, 0.5);
        assert!(!equal.rejects(0.01), "ln e = {}", equal.ln_e());
        assert!(
            equal.ln_e() < 0.0,
            "evidence against the alternative lowers e"
        );
    }

    #[test]
    fn one_component_is_the_exact_binomial_likelihood_ratio() {
        // Hand computation: ρ = 0.5, r = 2 → p = 2/3; 10 canary and 5 baseline events.
        let mut t = ShareTest::new(Side::Worse, 1.0);
        t.update(10.0, 5.0, 0.5);
        let (_, _, llr) = t.components[1];
        let expected = 10.0 * (2.0f64 / 3.0 / 0.5).ln() + 5.0 * ((1.0f64 / 3.0) / 0.5).ln();
        assert!((llr - expected).abs() < 1e-12, "{llr} vs {expected}");
        let mix: f64 = t
            .components
            .iter()
            .map(|(_, lw, l)| (lw + l).exp())
            .sum::<f64>()
            .ln();
        assert!((t.ln_e() - mix).abs() < 1e-12);
    }

    #[test]
    fn ticks_without_traffic_on_an_arm_carry_no_evidence() {
        let mut t = ShareTest::new(Side::Worse, 1.0);
        t.update(5.0, 0.0, 1.0);
        t.update(0.0, 5.0, 0.0);
        t.update(0.0, 0.0, 0.5);
        t.update(f64::NAN, 1.0, 0.5);
        assert_eq!(t.ticks(), 0);
        assert!((t.ln_e() - 0.0).abs() < 1e-12, "a fresh e-process is 1");
    }

    #[test]
    fn non_inferiority_accumulates_when_the_canary_is_better_than_the_margin() {
        let mut t = ShareTest::new(Side::NotWorse, 1.5);
        for _ in 0..20 {
            t.update(5.0, 5.0, 0.5);
        }
        assert!(t.rejects(0.05), "ln e = {}", t.ln_e());
        let mut bad = ShareTest::new(Side::NotWorse, 1.5);
        for _ in 0..20 {
            bad.update(8.0, 4.0, 0.5);
        }
        assert!(!bad.rejects(0.05));
    }

    /// Under the null the e-process must stay below 1/α with probability ≥ 1 − α, however
    /// long it runs. 4,000 runs of 720 ticks (an hour at 5 s) at the boundary r = 1.
    #[test]
    fn false_positive_rate_under_continuous_monitoring_stays_below_alpha() {
        let mut rng = SplitMix(7);
        let (runs, ticks, alpha) = (4000, 720, 0.01);
        let mut rejected = 0;
        for _ in 0..runs {
            let mut t = ShareTest::new(Side::Worse, 1.0);
            for _ in 0..ticks {
                // 20% canary share, on average 1 event per tick.
                let total = rng.poisson(1.0);
                let canary = (0..total).filter(|_| rng.uniform() < 0.2).count() as f64;
                t.update(canary, total as f64 - canary, 0.2);
                if t.rejects(alpha) {
                    rejected += 1;
                    break;
                }
            }
        }
        let rate = rejected as f64 / runs as f64;
        assert!(rate <= alpha, "false-positive rate {rate} > {alpha}");
    }

    #[test]
    fn clopper_pearson_upper_bound_matches_reference_values() {
        // scipy 1.17.1: beta.ppf(0.95, 1, 100) = 0.0295130496 (0 events in 100; the rule of
        // three says about 0.03), beta.ppf(0.95, 6, 995) = 0.0104840769 (5 events in 1000).
        assert!((rate_upper_bound(0.0, 100.0, 0.05) - 0.029_513_049_6).abs() < 1e-9);
        assert!((rate_upper_bound(5.0, 1000.0, 0.05) - 0.010_484_076_9).abs() < 1e-9);
        assert_eq!(rate_upper_bound(3.0, 0.0, 0.05), 1.0);
    }

    /// A tiny deterministic generator for the tests (no dependency on a random crate).
    struct SplitMix(u64);
    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn uniform(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn poisson(&mut self, mean: f64) -> u64 {
            let limit = (-mean).exp();
            let (mut k, mut p) = (0, 1.0);
            loop {
                p *= self.uniform();
                if p <= limit {
                    return k;
                }
                k += 1;
            }
        }
    }
}
