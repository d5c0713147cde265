//! Time to Pass, and what each promotion policy promotes.
//!
//! A healthy canary (A/A) is judged every second, as a provider that scrapes every second
//! gets it, with the `errorRate` settings of the shipped templates (toleratedRatio 1.5, floor
//! 0.02%, minRequests 200). The canary serves 10% of the traffic. Per cell:
//!
//! - the median and p90 time until the judgment passes (`requirePass` with no duration);
//! - the forecast the status shows after 30 s, and how often the Pass came within its p90;
//! - per policy and step duration, the chance that a canary ×1, ×1.5 and ×2 worse than its
//!   baseline is promoted within the hour: under `requirePass`, a Pass at or after the step's
//!   end with no Fail before it; under `noFail`, no Fail before the step's end and the canary's
//!   minRequests.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Binomial, Distribution, Poisson};
use rollguard::analysis::estimate::human_duration;
use rollguard::analysis::share::{ArmCounts, ShareConfig, ShareJudge};

use crate::support::parallel;

const HORIZON: usize = 3600;
/// When the forecast is read, as the acceptance test does.
const FORECAST_AT: usize = 30;

/// What one simulated canary did within the hour.
struct Run {
    /// Seconds at which the judgment passed.
    passing: Vec<usize>,
    first_fail: Option<usize>,
    /// When the canary had served minRequests.
    served: Option<usize>,
    /// The forecast after [`FORECAST_AT`] s, as seconds from the start: (expected, p90).
    forecast: Option<(f64, f64)>,
}

impl Run {
    fn first_pass(&self) -> Option<usize> {
        self.passing.first().copied()
    }

    /// Promoted under `requirePass` with a step of `step` seconds.
    fn promoted_require_pass(&self, step: usize) -> bool {
        let pass = self.passing.iter().copied().find(|t| *t >= step);
        match (pass, self.first_fail) {
            (Some(p), Some(f)) => p < f,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// Promoted under `noFail` with a step of `step` seconds.
    fn promoted_no_fail(&self, step: usize) -> bool {
        let Some(served) = self.served else {
            return false;
        };
        let leave = served.max(step);
        self.first_fail.is_none_or(|f| f > leave)
    }
}

fn config() -> ShareConfig {
    ShareConfig::new(1.5, 0.0002, 200.0)
}

fn simulate(canary_rps: f64, base_rate: f64, mult: f64, seed: u64) -> Run {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut arm = |rps: f64, rate: f64| {
        let n = Poisson::new(rps).map(|d| d.sample(&mut rng)).unwrap_or(0.0) as u64;
        let e = Binomial::new(n, rate.min(1.0))
            .map(|d| d.sample(&mut rng))
            .unwrap_or(0);
        ArmCounts {
            requests: n as f64,
            events: e as f64,
        }
    };
    let mut judge = ShareJudge::new(config());
    judge.start(0);
    let mut run = Run {
        passing: Vec::new(),
        first_fail: None,
        served: None,
        forecast: None,
    };
    for t in 1..=HORIZON {
        let c = arm(canary_rps, base_rate * mult);
        let b = arm(canary_rps * 9.0, base_rate);
        judge.observe(c, b, t as i64);
        if run.first_fail.is_none() && judge.danger() >= judge.fail_threshold() {
            run.first_fail = Some(t);
        }
        if run.served.is_none() && judge.canary_served_min_requests() {
            run.served = Some(t);
        }
        if judge.passes() {
            run.passing.push(t);
        }
        if t == FORECAST_AT {
            run.forecast = judge.outlook().and_then(|o| {
                o.estimate()
                    .map(|e| (t as f64 + e.secs, t as f64 + e.p90_secs))
            });
        }
        // A Pass at or after the longest step, with minRequests served: nothing more is read.
        if run.passing.last().is_some_and(|p| *p >= 300) && run.served.is_some() {
            break;
        }
        if run.first_fail.is_some() && t >= 300 {
            break;
        }
    }
    run
}

fn quantile(sorted: &[Option<usize>], q: f64) -> String {
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx].map_or("> 1 h".to_owned(), |t| human_duration(t as f64))
}

fn percent(part: usize, whole: usize) -> String {
    format!("{:.0}%", part as f64 * 100.0 / whole.max(1) as f64)
}

pub fn main(runs: usize) {
    println!(
        "\n# time to Pass of a healthy canary (A/A): {runs} runs per cell, judged every second, \
         toleratedRatio 1.5, floor 0.02%, minRequests 200; the canary has 10% of the traffic\n"
    );
    println!(
        "| canary rps | baseline errors | median time to Pass | p90 | passed within 1 h | median forecast at 30 s | median of its p90 | Pass within the forecast's p90 (of runs the hour can tell) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &rate in &[0.0005, 0.005, 0.02] {
        for &rps in &[5.0, 10.0, 50.0, 100.0] {
            let t0 = std::time::Instant::now();
            let seed = (rps * 1000.0 + rate * 1e6) as u64;
            let sims = parallel(runs, |i| {
                simulate(rps, rate, 1.0, seed * 100_003 + i as u64)
            });
            let mut times: Vec<Option<usize>> = sims.iter().map(Run::first_pass).collect();
            times.sort_by_key(|t| t.unwrap_or(usize::MAX));
            let passed = times.iter().filter(|t| t.is_some()).count();
            let mut forecasts: Vec<(f64, f64)> = sims.iter().filter_map(|r| r.forecast).collect();
            // Runs with no Pass within the hour whose forecast's p90 is beyond it are censored:
            // the hour cannot tell whether the forecast held.
            let judged: Vec<(f64, Option<usize>)> = sims
                .iter()
                .filter_map(|r| Some((r.forecast?.1, r.first_pass())))
                .filter(|(p90, pass)| pass.is_some() || *p90 <= HORIZON as f64)
                .collect();
            let within = judged
                .iter()
                .filter(|(p90, pass)| pass.is_some_and(|p| p as f64 <= *p90))
                .count();
            let forecast_q =
                |forecasts: &mut Vec<(f64, f64)>, q: f64, pick: fn(&(f64, f64)) -> f64| {
                    if forecasts.is_empty() {
                        return "none".to_owned();
                    }
                    forecasts.sort_by(|a, b| pick(a).total_cmp(&pick(b)));
                    let idx = ((forecasts.len() as f64 - 1.0) * q).round() as usize;
                    human_duration(pick(&forecasts[idx]))
                };
            println!(
                "| {rps} | {}% | {} | {} | {} | {} | {} | {} of {} |",
                rate * 100.0,
                quantile(&times, 0.5),
                quantile(&times, 0.9),
                percent(passed, runs),
                forecast_q(&mut forecasts, 0.5, |f| f.0),
                forecast_q(&mut forecasts, 0.5, |f| f.1),
                percent(within, judged.len()),
                judged.len(),
            );
            eprintln!(
                "[bench] time to Pass, {rps} rps at {}% done in {:.1?}",
                rate * 100.0,
                t0.elapsed()
            );
        }
    }

    println!(
        "\n# promoted within the hour, per policy and step (0.5% baseline errors, {runs} runs per cell)\n"
    );
    println!(
        "| canary rps | canary | requirePass, 60 s step | requirePass, 300 s step | noFail, 60 s step | noFail, 300 s step |"
    );
    println!("|---|---|---|---|---|---|");
    for &rps in &[5.0, 10.0, 100.0] {
        for &mult in &[1.0, 1.5, 2.0] {
            let t0 = std::time::Instant::now();
            let seed = (rps * 7919.0 + mult * 104_729.0) as u64;
            let sims = parallel(runs, |i| {
                simulate(rps, 0.005, mult, seed * 100_019 + i as u64)
            });
            let share =
                |f: &dyn Fn(&Run) -> bool| percent(sims.iter().filter(|r| f(r)).count(), runs);
            println!(
                "| {rps} | ×{mult} | {} | {} | {} | {} |",
                share(&|r| r.promoted_require_pass(60)),
                share(&|r| r.promoted_require_pass(300)),
                share(&|r| r.promoted_no_fail(60)),
                share(&|r| r.promoted_no_fail(300)),
            );
            eprintln!(
                "[bench] promotion, {rps} rps ×{mult} done in {:.1?}",
                t0.elapsed()
            );
        }
    }
}
