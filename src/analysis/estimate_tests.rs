use super::*;
use crate::analysis::share::ShareJudge;
use crate::analysis::verdict::Verdict;

fn counts(requests: f64, events: f64) -> ArmCounts {
    ArmCounts { requests, events }
}

/// A judge fed `secs` one-second ticks at the expected counts: `rps` per arm, `rates` per arm.
fn fed(config: ShareConfig, secs: i64, rps: (f64, f64), rates: (f64, f64)) -> ShareJudge {
    let mut j = ShareJudge::new(config);
    j.start(0);
    for t in 1..=secs {
        j.observe(
            counts(rps.0, rps.0 * rates.0),
            counts(rps.1, rps.1 * rates.1),
            t,
        );
    }
    j
}

#[test]
fn the_inverse_gaussian_matches_its_closed_form() {
    // F(μ) = Φ(0) + e^{2λ/μ} Φ(−2√(λ/μ)); for μ = λ = 1 that is 0.5 + e²·Φ(−2) = 0.668102.
    assert!((inverse_gaussian_cdf(1.0, 1.0, 1.0) - 0.668_102).abs() < 1e-5);
    // Narrow (λ ≫ μ): the median is the mean, and e^{2λ/μ} must not overflow on the way.
    assert!((inverse_gaussian_cdf(100.0, 100.0, 1e7) - 0.5).abs() < 1e-3);
    let q = inverse_gaussian_quantile(0.9, 100.0, 400.0);
    assert!(
        (inverse_gaussian_cdf(q, 100.0, 400.0) - 0.9).abs() < 1e-3,
        "{q}"
    );
    assert!(q > 100.0);
}

/// The low-traffic case of the product's comparison: 10 rps of canary, 90 of baseline, both at
/// 0.5% errors, toleratedRatio 1.5. Simulated Passes must land where the forecast says.
#[test]
fn a_healthy_low_traffic_canary_passes_about_when_forecast() {
    let config = ShareConfig::new(1.5, 0.0002, 200.0);
    // The forecast after 30 s at the expected counts.
    let early = fed(config, 30, (10.0, 90.0), (0.005, 0.005));
    assert_eq!(early.verdict().0, Verdict::Inconclusive);
    let outlook = early.outlook().expect("traffic to forecast from");
    let e = *outlook.estimate().expect("a Pass in sight");
    let (mean, p90) = (30.0 + e.secs, 30.0 + e.p90_secs);
    assert!((e.canary_rps - 10.0).abs() < 1e-9);
    assert!(p90 > mean, "{e:?}");
    // 400 simulated canaries from the start, Poisson errors each second.
    let mut rng = Rng(11);
    let mut times = Vec::new();
    for _ in 0..400 {
        let mut j = ShareJudge::new(config);
        j.start(0);
        let mut t = 0;
        while !j.passes() && t < 20_000 {
            t += 1;
            j.observe(
                counts(10.0, rng.poisson(0.05)),
                counts(90.0, rng.poisson(0.45)),
                t,
            );
        }
        times.push(t as f64);
    }
    times.sort_by(f64::total_cmp);
    let sim_mean = times.iter().sum::<f64>() / times.len() as f64;
    let sim_p90 = times[times.len() * 9 / 10];
    assert!(
        (mean / sim_mean - 1.0).abs() < 0.25,
        "forecast {mean:.0} s vs simulated mean {sim_mean:.0} s"
    );
    // The forecast's p90 also carries the uncertainty of rates measured over 30 s: never below
    // the simulated p90, and within a few times it.
    assert!(
        p90 >= 0.9 * sim_p90 && p90 < 4.0 * sim_p90,
        "forecast p90 {p90:.0} s vs simulated {sim_p90:.0} s"
    );
    let sentence = outlook.sentence();
    assert!(
        sentence.starts_with("needs about ") && sentence.contains("at 10 rps"),
        "{sentence}"
    );
    assert!(
        sentence.contains("within 1.5× of the baseline"),
        "{sentence}"
    );
}

#[test]
fn more_traffic_means_a_sooner_pass() {
    let config = ShareConfig::new(1.5, 0.0002, 200.0);
    let secs = |rps: f64| {
        let j = fed(config, 30, (rps, 9.0 * rps), (0.005, 0.005));
        j.outlook().and_then(|o| o.estimate().map(|e| e.secs))
    };
    let (slow, fast) = (secs(10.0).expect("10 rps"), secs(100.0).expect("100 rps"));
    assert!(
        fast * 5.0 < slow,
        "10 rps: {slow:.0} s, 100 rps: {fast:.0} s"
    );
}

#[test]
fn a_canary_worse_than_the_margin_has_no_pass_in_sight() {
    let config = ShareConfig::new(1.5, 0.0002, 200.0);
    let j = fed(config, 120, (10.0, 90.0), (0.02, 0.005));
    match j.outlook() {
        Some(Outlook::NotInSight { why }) => {
            assert!(
                why.starts_with("cannot show the canary within 1.5×"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_error_free_service_passes_by_the_rule_of_three() {
    // No errors at all: the canary's 95% bound must fall under the 0.02% floor, which takes
    // about 15,000 canary requests: 25 min at 10 rps, minus the 5 min already served.
    let config = ShareConfig::new(1.5, 0.0002, 200.0);
    let j = fed(config, 300, (10.0, 90.0), (0.0, 0.0));
    let e = j
        .outlook()
        .and_then(|o| o.estimate().copied())
        .expect("a Pass in sight");
    assert!((900.0..1500.0).contains(&e.secs), "{e:?}");
}

#[test]
fn too_few_requests_wait_at_least_for_min_requests() {
    // 1 rps of canary: 10 requests in 10 s, 190 more to go before anything can pass.
    let config = ShareConfig::new(1.5, 0.0002, 200.0);
    let j = fed(config, 10, (1.0, 1000.0), (0.0, 0.0));
    let e = j
        .outlook()
        .and_then(|o| o.estimate().copied())
        .expect("a Pass in sight");
    assert!(e.secs >= 190.0, "{e:?}");
}

#[test]
fn no_forecast_without_traffic_or_before_the_counters_settle() {
    let config = ShareConfig::new(1.5, 0.0002, 200.0);
    assert_eq!(ShareJudge::new(config).outlook(), None);
    // The first seconds understate the traffic (the counters lag by a scrape).
    assert_eq!(fed(config, 5, (10.0, 90.0), (0.005, 0.005)).outlook(), None);
    assert!(
        fed(config, 10, (10.0, 90.0), (0.005, 0.005))
            .outlook()
            .is_some()
    );
}

#[test]
fn durations_and_rates_read_as_people_say_them() {
    assert_eq!(human_duration(44.2), "45 s");
    assert_eq!(human_duration(420.0), "7 min");
    assert_eq!(human_duration(9000.0), "2.5 h");
    assert_eq!(human_rps(10.0), "10");
    assert_eq!(human_rps(2.46), "2.5");
    assert_eq!(human_rps(0.25), "0.25");
}

/// SplitMix64 with a Poisson draw, for the simulations.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn poisson(&mut self, mean: f64) -> f64 {
        let limit = (-mean).exp();
        let (mut k, mut p) = (0.0, 1.0);
        loop {
            p *= self.uniform();
            if p <= limit {
                return k;
            }
            k += 1.0;
        }
    }
}
