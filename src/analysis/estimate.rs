//! How long a share judgment will take to pass, from the rates measured so far.
//!
//! A healthy canary at low traffic is slow to pass for a reason no statistic removes: showing
//! that its error rate is within `toleratedRatio` of the baseline's takes hundreds of events,
//! and at 10 rps of a 0.5% error rate those take minutes. This module says how many.
//!
//! Two routes lead to a Pass ([`super::share`]):
//!
//! - **non-inferiority**: each alternative of the test's mixture gains, per event, the
//!   expected log-likelihood ratio `d = p·ln(p₁/p₀) + (1 − p)·ln((1 − p₁)/(1 − p₀))` (`p` the
//!   chance an event is the canary's at the rates measured, `p₀` at the margin, `p₁` at the
//!   alternative). The estimate is the number of events at which the mixture, drifting so,
//!   reaches `1/PASS_ALPHA`; its spread is that of a random walk's first passage (the inverse
//!   Gaussian), which gives the 90th percentile;
//! - **the rule of three**: the canary's 95% upper bound falls under the baseline's rate plus
//!   `floor`, for services with almost no errors.
//!
//! Both arms must also have `minRequests`. The canary's ratio to the baseline is taken from the
//! counts, shrunk towards 1 by a few pseudo-events so that the first seconds (one or two
//! canary errors) do not swing it.
//!
//! The estimate assumes the traffic and the rates stay as measured. It is a forecast for
//! people, never an input of a verdict.

use serde::Serialize;

use super::arms::{ArmCounts, PASS_ALPHA, ShareConfig};
use super::sequential::{ShareTest, Side, canary_event_probability, log_sum_exp, rate_upper_bound};

/// Pseudo-events that pull the measured ratio towards 1 while there are few events.
const SHRINK_EVENTS: f64 = 6.0;
/// The longest forecast worth making: a week.
const HORIZON_SECS: f64 = 7.0 * 24.0 * 3600.0;
/// Seconds of counts before the first forecast: the counters lag by a scrape, so the first
/// seconds understate the traffic.
pub const SETTLE_SECS: f64 = 10.0;
/// The most the ratio's uncertainty adds to the log-variance of the time to Pass. Early on
/// (a few canary events) one standard error of the ratio spans a Pass in minutes and one in
/// hours; capped here, the forecast's p90 holds nine times in ten in the benchmark's cells
/// (`cargo bench --bench detection -- --only pass`) instead of nearly always.
const RATIO_VARIANCE_CAP: f64 = 0.5;
/// The normal quantile of 0.9.
const Z90: f64 = 1.281_551_565_5;

/// A forecast of the time to Pass.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PassEstimate {
    /// Expected seconds from the last measurement until a Pass.
    pub secs: f64,
    /// Seconds within which a Pass comes nine times out of ten.
    pub p90_secs: f64,
    /// The canary's requests per second so far.
    pub canary_rps: f64,
    /// The margin the canary must be shown within.
    pub tolerated_ratio: f64,
}

/// What the evidence so far says about a Pass.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Outlook {
    /// A Pass is expected, in about this long.
    Expected(PassEstimate),
    /// At the rates measured, no Pass is in sight: the canary looks worse than the margin, or
    /// it takes longer than a week. `why` reads after "the analysis".
    NotInSight { why: String },
}

impl Outlook {
    /// The forecast as a phrase: "needs about 7 min more at 10 rps to show the canary within
    /// 1.5× of the baseline (9 in 10 within 12 min)".
    pub fn sentence(&self) -> String {
        match self {
            Outlook::Expected(e) if e.secs < 1.0 => {
                "expects a Pass at the next measurement".to_owned()
            }
            Outlook::Expected(e) => format!(
                "needs about {} more at {} rps to show the canary within {}× of the baseline \
                 (9 in 10 within {})",
                human_duration(e.secs),
                human_rps(e.canary_rps),
                e.tolerated_ratio,
                human_duration(e.p90_secs)
            ),
            Outlook::NotInSight { why } => why.clone(),
        }
    }

    pub fn estimate(&self) -> Option<&PassEstimate> {
        match self {
            Outlook::Expected(e) => Some(e),
            Outlook::NotInSight { .. } => None,
        }
    }
}

/// What a forecast is made from: a judgment's configuration, its counts, the seconds they
/// were counted over, and its non-inferiority test so far.
pub struct Evidence<'a> {
    pub config: &'a ShareConfig,
    pub canary: ArmCounts,
    pub baseline: ArmCounts,
    pub elapsed_secs: f64,
    pub not_worse: &'a ShareTest,
}

/// The forecast, or `None` before [`SETTLE_SECS`] of traffic to forecast from.
pub fn outlook(ev: &Evidence<'_>) -> Option<Outlook> {
    let (c, b) = (ev.canary, ev.baseline);
    if ev.elapsed_secs.is_nan()
        || ev.elapsed_secs < SETTLE_SECS
        || c.requests <= 0.0
        || b.requests <= 0.0
    {
        return None;
    }
    let base_rate = (b.events + 0.5) / (b.requests + 1.0);
    let arms = Arms {
        c_rps: c.requests / ev.elapsed_secs,
        b_rps: b.requests / ev.elapsed_secs,
        base_rate,
        ratio: (c.events + SHRINK_EVENTS) / (c.requests * base_rate + SHRINK_EVENTS),
        measured: true,
    };
    Some(forecast(ev, &arms))
}

/// The forecast before any traffic, for a canary as good as its baseline at the traffic and
/// error rate given: what `rollguard lint --rps` holds a step's duration against.
pub fn outlook_at(
    config: &ShareConfig,
    canary_rps: f64,
    baseline_rps: f64,
    error_rate: f64,
) -> Option<Outlook> {
    if !(canary_rps > 0.0 && baseline_rps > 0.0) {
        return None;
    }
    let not_worse = ShareTest::new(Side::NotWorse, config.tolerated_ratio);
    let ev = Evidence {
        config,
        canary: ArmCounts::default(),
        baseline: ArmCounts::default(),
        elapsed_secs: 0.0,
        not_worse: &not_worse,
    };
    let arms = Arms {
        c_rps: canary_rps,
        b_rps: baseline_rps,
        base_rate: error_rate.clamp(0.0, 1.0),
        ratio: 1.0,
        measured: false,
    };
    Some(forecast(&ev, &arms))
}

fn forecast(ev: &Evidence<'_>, arms: &Arms) -> Outlook {
    let (c, b) = (ev.canary, ev.baseline);
    let min_wait = [(c.requests, arms.c_rps), (b.requests, arms.b_rps)]
        .iter()
        .map(|&(have, rps)| (ev.config.min_requests - have).max(0.0) / rps)
        .fold(0.0, f64::max);
    // A Pass comes by whichever route is first: the sooner expected time, and the sooner
    // 90th percentile.
    let best = [non_inferiority(ev, arms), rule_of_three(ev, arms)]
        .into_iter()
        .flatten()
        .reduce(|x, y| (x.0.min(y.0), x.1.min(y.1)));
    match best {
        Some((secs, p90)) if secs.max(min_wait) <= HORIZON_SECS => {
            Outlook::Expected(PassEstimate {
                secs: secs.max(min_wait),
                p90_secs: p90.max(min_wait),
                canary_rps: arms.c_rps,
                tolerated_ratio: ev.config.tolerated_ratio,
            })
        }
        Some(_) => Outlook::NotInSight {
            why: format!(
                "needs more than a week at {} rps to show the canary within {}× of the baseline",
                human_rps(arms.c_rps),
                ev.config.tolerated_ratio
            ),
        },
        None => Outlook::NotInSight {
            why: format!(
                "cannot show the canary within {}× of the baseline at the rates so far (canary \
                 {} vs baseline {}); it passes only if its rate comes down",
                ev.config.tolerated_ratio,
                percent(c.rate()),
                percent(b.rate())
            ),
        },
    }
}

/// The traffic and rates a forecast extrapolates.
struct Arms {
    c_rps: f64,
    b_rps: f64,
    /// The baseline's event rate.
    base_rate: f64,
    /// The canary's rate as a multiple of the baseline's (shrunk towards 1).
    ratio: f64,
    /// Measured from counts (their uncertainty widens the 90th percentile), or given.
    measured: bool,
}

impl Arms {
    fn canary_rate(&self) -> f64 {
        (self.base_rate * self.ratio).min(1.0)
    }

    /// Events per second on both arms.
    fn events_per_sec(&self) -> f64 {
        self.c_rps * self.canary_rate() + self.b_rps * self.base_rate
    }
}

/// Seconds (expected, 90th percentile) until the non-inferiority test passes, or `None` when
/// its mixture does not grow at these rates.
///
/// The 90th percentile combines, in log-space, the spread of the first passage at the rates
/// measured with the uncertainty of those rates: a rate measured from few events may be off by
/// a third, and so may the time it implies.
fn non_inferiority(ev: &Evidence<'_>, arms: &Arms) -> Option<(f64, f64)> {
    let margin = ev.not_worse.null_ratio();
    if arms.ratio >= margin {
        return None;
    }
    let per_sec = arms.events_per_sec();
    if per_sec.is_nan() || per_sec <= 0.0 {
        return None;
    }
    let Some(walk) = first_passage(ev, arms, arms.ratio) else {
        return Some((f64::INFINITY, f64::INFINITY));
    };
    if walk.events <= 0.0 {
        return Some((0.0, 0.0));
    }
    // Spread of the passage itself: the inverse Gaussian's, as a log-normal's σ².
    let distance = walk.events * walk.drift;
    let lambda = distance * distance / walk.variance.max(1e-12);
    let passage = inverse_gaussian_quantile(0.9, walk.events, lambda);
    let var_passage = (1.0 + walk.events / lambda).ln();
    if !arms.measured {
        return Some((walk.events / per_sec, passage / per_sec));
    }
    // The event rate, measured from this many events.
    let seen = ev.canary.events + ev.baseline.events;
    let var_rate = 1.0 / (seen + 1.0);
    // The ratio: the time's log-slope over one standard error either side of the ratio
    // measured (short of the margin on the worse side).
    let se_ratio = (1.0 / (ev.canary.events + SHRINK_EVENTS)
        + 1.0 / (ev.canary.requests * arms.base_rate + SHRINK_EVENTS))
        .sqrt();
    let worse = (arms.ratio * se_ratio.exp()).min(0.5 * (arms.ratio + margin));
    let better = arms.ratio * (-se_ratio).exp();
    let var_ratio = match (
        first_passage(ev, arms, worse),
        first_passage(ev, arms, better),
    ) {
        (Some(w), Some(b)) if b.events > 0.0 => (0.5 * (w.events / b.events).ln())
            .powi(2)
            .min(RATIO_VARIANCE_CAP),
        _ => RATIO_VARIANCE_CAP,
    };
    let sigma = (var_passage + var_rate + var_ratio).sqrt();
    let p90 = passage.max(walk.events * (Z90 * sigma).exp());
    Some((walk.events / per_sec, p90 / per_sec))
}

/// Where the mixture of the non-inferiority test crosses `1/PASS_ALPHA`, drifting at `ratio`.
struct Passage {
    /// Events until then (0: it already has).
    events: f64,
    /// Drift and variance per event of the component that carries the mixture there.
    drift: f64,
    variance: f64,
}

/// The first passage of the mixture at the canary's `ratio` to the baseline, or `None` when it
/// does not come within the forecast's horizon.
fn first_passage(ev: &Evidence<'_>, arms: &Arms, ratio: f64) -> Option<Passage> {
    let margin = ev.not_worse.null_ratio();
    let share = arms.c_rps / (arms.c_rps + arms.b_rps);
    let p0 = canary_event_probability(share, margin);
    let p = canary_event_probability(share, ratio);
    // Per component: its ln weight plus ln likelihood ratio so far, drift and variance per
    // event.
    let walks: Vec<(f64, f64, f64)> = ev
        .not_worse
        .components()
        .iter()
        .map(|&(alt, ln_w, llr)| {
            let p1 = canary_event_probability(share, alt);
            let up = (p1 / p0).ln();
            let down = ((1.0 - p1) / (1.0 - p0)).ln();
            let drift = p * up + (1.0 - p) * down;
            let variance = p * (1.0 - p) * (up - down).powi(2);
            (ln_w + llr, drift, variance)
        })
        .collect();
    let target = (1.0 / PASS_ALPHA).ln();
    let at = |n: f64| log_sum_exp(walks.iter().map(|(start, d, _)| start + n * d));
    let max_events = HORIZON_SECS * arms.events_per_sec() * 2.0;
    let events = if at(0.0) >= target {
        0.0
    } else if at(max_events) < target {
        return None;
    } else {
        bisect(0.0, max_events, |n| at(n) >= target)
    };
    let (_, drift, variance) = walks
        .iter()
        .copied()
        .max_by(|x, y| (x.0 + events * x.1).total_cmp(&(y.0 + events * y.1)))?;
    Some(Passage {
        events,
        drift,
        variance,
    })
}

/// Seconds (expected, 90th percentile) until the canary's 95% upper bound falls under the
/// baseline's rate plus `floor`, or `None` when its rate is not below that.
fn rule_of_three(ev: &Evidence<'_>, arms: &Arms) -> Option<(f64, f64)> {
    let rate = arms.canary_rate();
    let limit = arms.base_rate + ev.config.floor;
    if rate >= limit || arms.c_rps.is_nan() || arms.c_rps <= 0.0 {
        return None;
    }
    let (have, events) = (ev.canary.requests, ev.canary.events);
    let far = HORIZON_SECS * arms.c_rps;
    // The 90th percentile at the canary's rate one standard error worse, as measured from its
    // events: with few of them, it may well be above the limit.
    let worse_rate = if arms.measured {
        rate * (1.0 / (events + SHRINK_EVENTS)).sqrt().exp()
    } else {
        rate
    };
    let time_with = |z: f64, rate: f64| {
        let bound_ok = |more: f64| {
            let expected = rate * more;
            let e = events + expected + z * expected.sqrt();
            rate_upper_bound(e.floor(), have + more, PASS_ALPHA) <= limit
        };
        if bound_ok(0.0) {
            return Some(0.0);
        }
        if !bound_ok(far) {
            return None;
        }
        Some(bisect(0.0, far, bound_ok) / arms.c_rps)
    };
    let secs = time_with(0.0, rate).unwrap_or(f64::INFINITY);
    let p90 = if worse_rate < limit {
        time_with(Z90, worse_rate).unwrap_or(f64::INFINITY)
    } else {
        f64::INFINITY
    };
    Some((secs, p90))
}

/// The smallest `x` in `[lo, hi]` where the monotone `ok` holds (to 0.1%), given `ok(hi)`.
fn bisect(mut lo: f64, mut hi: f64, ok: impl Fn(f64) -> bool) -> f64 {
    for _ in 0..60 {
        if hi - lo <= 1e-3 * hi.max(1.0) {
            break;
        }
        let mid = 0.5 * (lo + hi);
        if ok(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

fn normal_cdf(x: f64) -> f64 {
    0.5 * statrs::function::erf::erfc(-x / std::f64::consts::SQRT_2)
}

/// ln Φ(−x) for x ≥ 0, accurate in the far tail where Φ underflows.
fn ln_normal_tail(x: f64) -> f64 {
    if x < 8.0 {
        return normal_cdf(-x).ln();
    }
    // Mills' ratio: Φ(−x) ≈ φ(x)/x · (1 − 1/x²).
    -0.5 * x * x - (x * (2.0 * std::f64::consts::PI).sqrt()).ln() + (1.0 - 1.0 / (x * x)).ln()
}

/// The CDF of the inverse Gaussian with mean `mu` and shape `lambda`: the first passage of a
/// random walk with drift through a fixed level.
pub fn inverse_gaussian_cdf(t: f64, mu: f64, lambda: f64) -> f64 {
    if t <= 0.0 {
        return 0.0;
    }
    let s = (lambda / t).sqrt();
    let first = normal_cdf(s * (t / mu - 1.0));
    let second = (2.0 * lambda / mu + ln_normal_tail(s * (t / mu + 1.0))).exp();
    (first + second).min(1.0)
}

/// The `q` quantile of the inverse Gaussian (mean `mu`, shape `lambda`).
pub fn inverse_gaussian_quantile(q: f64, mu: f64, lambda: f64) -> f64 {
    let mut hi = mu.max(1e-9);
    while inverse_gaussian_cdf(hi, mu, lambda) < q && hi < mu * 1e6 {
        hi *= 2.0;
    }
    bisect(0.0, hi, |t| inverse_gaussian_cdf(t, mu, lambda) >= q)
}

/// "45 s", "7 min", "2.5 h": a duration as people say it.
pub fn human_duration(secs: f64) -> String {
    if !secs.is_finite() {
        return "ever".to_owned();
    }
    let secs = secs.max(0.0);
    if secs < 90.0 {
        format!("{} s", secs.ceil() as u64)
    } else if secs < 90.0 * 60.0 {
        format!("{} min", (secs / 60.0).round() as u64)
    } else {
        format!("{:.1} h", secs / 3600.0)
    }
}

/// "10", "2.5", "0.3": requests per second with the digits that matter.
pub fn human_rps(rps: f64) -> String {
    if rps >= 10.0 {
        format!("{rps:.0}")
    } else if rps >= 1.0 {
        format!("{rps:.1}")
    } else {
        format!("{rps:.2}")
    }
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or("n/a".to_owned(), |r| format!("{:.2}%", r * 100.0))
}

#[cfg(test)]
#[path = "estimate_tests.rs"]
mod tests;
