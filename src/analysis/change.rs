//! Anytime-valid change detection on the canary's event share: a canary that was healthy for
//! a while and then got worse (a leak, a cache that expires, a dependency called only later, a
//! weight step that brings load it cannot take) is caught from the moment it changed, without
//! the healthy minutes before diluting the evidence.
//!
//! The construction is a CUSUM e-detector (Shin, Ramdas and Rinaldo, *E-detectors: a
//! nonparametric framework for sequential change detection*, 2023). For each alternative ratio
//! `r` of the [`super::sequential`] grid, Page's recursion keeps the largest log likelihood
//! ratio over every possible start of the change:
//!
//! ```text
//! C_t(r) = max(C_{t−1}(r), 0) + ln LR_t(r)        (the run restarts whenever C falls to 0)
//! ```
//!
//! and the detector is the prior-weighted mixture `D_t = Σ w_r · exp C_t(r)`. Each `exp C_t(r)`
//! is at most the Shiryaev–Roberts statistic `R_t(r) = (R_{t−1}(r) + 1) · LR_t(r)`, and under
//! no change `Σ w_r R_t(r) + (T − t)` is a nonnegative supermartingale that starts at `T`. By
//! Ville's inequality the chance that `D` ever reaches `c` within `T` ticks is at most `T / c`.
//! With ticks of [`TICK_SECS`] the threshold `c = (3600 / TICK_SECS) / α_h` bounds the chance
//! of a false alarm within a rollout-hour by `α_h`; the mean time to a false alarm is at least
//! `c` ticks.
//!
//! The evidence of the component that leads says where the change began: the tick its current
//! run started. The judgment compares the arms' rates over that window, so a Fail names the
//! moment ("worse since 10:42:10") and the rates since then.

use super::sequential::{canary_event_probability, informative, log_sum_exp};

/// The detector's tick: increments are pooled over this many seconds before an update, so that
/// the number of possible change points per hour, and with it the threshold, does not grow
/// with the measuring cadence.
pub const TICK_SECS: i64 = 10;

/// Ticks in a rollout-hour.
const TICKS_PER_HOUR: f64 = 3600.0 / TICK_SECS as f64;

/// The ln threshold for a false-alarm chance of at most `alpha_per_hour` per rollout-hour.
pub fn ln_threshold(alpha_per_hour: f64) -> f64 {
    (TICKS_PER_HOUR / alpha_per_hour).ln()
}

#[derive(Clone, Debug, PartialEq)]
struct Component<M> {
    ratio: f64,
    ln_weight: f64,
    cusum: f64,
    /// The mark of the tick at which the current run began.
    since: M,
}

/// A mixture of CUSUMs on the canary's share of events, with the null at ratio `null_ratio`.
/// Each tick carries a mark `M` (the judgment's counts and time before it), so that the start
/// of the leading run can be reported.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeDetector<M> {
    null_ratio: f64,
    components: Vec<Component<M>>,
    ticks: u64,
}

impl<M: Copy + Default> ChangeDetector<M> {
    /// A detector over `grid`: (multiple of `null_ratio`, prior weight) pairs whose weights sum
    /// to one, all above 1.
    pub fn new(null_ratio: f64, grid: &[(f64, f64)]) -> ChangeDetector<M> {
        ChangeDetector {
            null_ratio,
            components: grid
                .iter()
                .map(|&(m, w)| Component {
                    ratio: null_ratio * m,
                    ln_weight: w.ln(),
                    cusum: 0.0,
                    since: M::default(),
                })
                .collect(),
            ticks: 0,
        }
    }

    /// One tick, marked `mark`: the arms' event counts and the canary's share of the tick's
    /// requests. A tick without traffic on one arm, or without events, carries no evidence and
    /// is skipped.
    pub fn update(
        &mut self,
        canary_events: f64,
        baseline_events: f64,
        request_share: f64,
        mark: M,
    ) {
        if !informative(canary_events, baseline_events, request_share) {
            return;
        }
        self.ticks += 1;
        let p0 = canary_event_probability(request_share, self.null_ratio);
        for c in &mut self.components {
            if c.cusum <= 0.0 {
                c.cusum = 0.0;
                c.since = mark;
            }
            let p = canary_event_probability(request_share, c.ratio);
            c.cusum +=
                canary_events * (p / p0).ln() + baseline_events * ((1.0 - p) / (1.0 - p0)).ln();
        }
    }

    /// ln D: the prior-weighted mixture of the components' CUSUM statistics.
    pub fn ln_statistic(&self) -> f64 {
        log_sum_exp(self.components.iter().map(|c| c.ln_weight + c.cusum))
    }

    /// The mark of the tick at which the leading component's current run began: where the
    /// evidence counts from.
    pub fn since(&self) -> M {
        self.components
            .iter()
            .max_by(|a, b| (a.ln_weight + a.cusum).total_cmp(&(b.ln_weight + b.cusum)))
            .map_or_else(M::default, |c| c.since)
    }

    /// Informative ticks so far.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRID: [(f64, f64); 3] = [(1.5, 0.3), (2.0, 0.5), (4.0, 0.2)];

    #[test]
    fn the_threshold_bounds_false_alarms_per_rollout_hour() {
        // 360 ticks of 10 s an hour, at most 0.5% of hours with a false alarm: c = 72,000.
        assert!((ln_threshold(0.005) - 72_000f64.ln()).abs() < 1e-9);
    }

    #[test]
    fn healthy_minutes_do_not_dilute_a_change_and_its_start_is_found() {
        // 100 ticks at equal rates (ρ = 0.5, 10 events per arm), then the canary doubles.
        let mut d = ChangeDetector::<u64>::new(1.0, &GRID);
        for tick in 0..100 {
            d.update(10.0, 10.0, 0.5, tick);
        }
        assert!(
            d.ln_statistic() < 1.0,
            "no change, no evidence: {}",
            d.ln_statistic()
        );
        let mut after = 0;
        while d.ln_statistic() < ln_threshold(0.005) {
            d.update(20.0, 10.0, 0.5, 100 + after);
            after += 1;
            assert!(after < 50, "not detected: {}", d.ln_statistic());
        }
        // Each changed tick adds 20·ln(4/3) + 10·ln(2/3) = 1.70 nats to the r = 2 component:
        // about 7 ticks to pass ln 72,000 = 11.2 plus its prior cost 0.7.
        assert!(after <= 8, "{after} ticks after the change");
        let since = d.since();
        assert!(
            (99..=101).contains(&since),
            "the change began at tick 100, found {since}"
        );
    }

    #[test]
    fn the_mixture_is_never_above_a_fresh_start_of_the_best_component() {
        let mut d = ChangeDetector::<u64>::new(1.0, &GRID);
        d.update(30.0, 10.0, 0.5, 0);
        // r = 4 (p = 0.8): 30·ln 1.6 + 10·ln 0.4 = 4.94; weight 0.2.
        let best = 30.0 * 1.6f64.ln() + 10.0 * 0.4f64.ln() + 0.2f64.ln();
        assert!(d.ln_statistic() >= best - 1e-9);
        let all: f64 = [(1.5, 0.3), (2.0, 0.5), (4.0, 0.2)]
            .iter()
            .map(|&(r, w): &(f64, f64)| {
                let p: f64 = r / (r + 1.0);
                (w.ln() + 30.0 * (p / 0.5).ln() + 10.0 * ((1.0 - p) / 0.5).ln()).exp()
            })
            .sum::<f64>()
            .ln();
        assert!((d.ln_statistic() - all).abs() < 1e-9);
    }

    #[test]
    fn ticks_without_evidence_change_nothing() {
        let mut d = ChangeDetector::<u64>::new(1.0, &GRID);
        d.update(0.0, 0.0, 0.5, 0);
        d.update(3.0, 0.0, 1.0, 1);
        d.update(f64::NAN, 1.0, 0.5, 2);
        assert_eq!(d.ticks(), 0);
        assert!(
            (d.ln_statistic() - 0.0).abs() < 1e-12,
            "every run starts at 1"
        );
    }

    /// Under no change, false alarms within an hour stay below the bound: 2,000 hours of 360
    /// ticks at the boundary r = 1, at a per-hour level of 5%.
    #[test]
    fn false_alarms_under_no_change_stay_below_the_bound() {
        let mut state = 11u64;
        let mut uniform = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        let (hours, alpha) = (2000, 0.05);
        let threshold = ln_threshold(alpha);
        let mut alarms = 0;
        for _ in 0..hours {
            let mut d = ChangeDetector::<u64>::new(1.0, &GRID);
            for tick in 0..360 {
                // 20% canary share, 5 events a tick, each the canary's with probability 0.2.
                let canary = (0..5).filter(|_| uniform() < 0.2).count() as f64;
                d.update(canary, 5.0 - canary, 0.2, tick);
                if d.ln_statistic() >= threshold {
                    alarms += 1;
                    break;
                }
            }
        }
        let rate = alarms as f64 / hours as f64;
        assert!(rate <= alpha, "false alarms in {rate} of hours > {alpha}");
    }
}
