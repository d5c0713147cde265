//! Detection benchmark for the latency judgment: false positives per rollout-hour and time to
//! detect a slower canary, against per-minute p99 rules in the style of Argo Rollouts
//! (`failureLimit: 3`) and Flagger (`threshold: 5`), all calibrated to the same false-positive
//! rate.
//!
//! `cargo bench --bench latency` (add `-- --quick` for a smoke run). Fixed seeds. Streams are per
//! second: Poisson request counts per arm, each request's latency log-normal around 50 ms
//! (σ = 0.5), counted into the bucket boundaries Istio uses, with the regression present from
//! the first second. rollguard sees cumulative bucket counters every 5 s, as from Prometheus.

use std::collections::BTreeMap;

mod support;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Binomial, Distribution, Poisson};
use rollguard::analysis::latency::{Histogram, LatencyJudge};
use rollguard::analysis::source::Series;
use rollguard::api::analysis::Latency;
use statrs::distribution::{ContinuousCDF, Normal};
use support::{detection_cells, first_alarm, parallel, peak, thresholds};

const HOUR: usize = 3600;
const EVAL_EVERY: usize = 5;
const TARGET_FP: f64 = 0.01;
const LES: [f64; 16] = [
    5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 250.0, 300.0, 400.0, 500.0, 750.0, 1000.0,
    2500.0, 5000.0,
];
const MEDIAN_MS: f64 = 50.0;
const SIGMA: f64 = 0.5;

#[derive(Clone, Copy, Debug)]
enum Shape {
    Same,
    /// Every request this much slower.
    Median(f64),
    /// Requests above the p95 this much slower (the p99 moves by the factor, the p50 not at all).
    Tail(f64),
}

/// P(latency ≤ x) for the shape.
fn cdf(shape: Shape, x: f64) -> f64 {
    let n = Normal::new(0.0, 1.0).expect("normal");
    let base = |x: f64| n.cdf((x / MEDIAN_MS).ln() / SIGMA);
    let p95 = MEDIAN_MS * (1.644_853_6 * SIGMA).exp();
    match shape {
        Shape::Same => base(x),
        Shape::Median(f) => base(x / f),
        Shape::Tail(f) => base(x.min(p95)) + (base(x / f) - base(p95)).max(0.0),
    }
}

/// Per-bucket probabilities, the last one `+Inf`.
fn bucket_probabilities(shape: Shape) -> [f64; 17] {
    let mut out = [0.0; 17];
    let mut below = 0.0;
    for (i, le) in LES.iter().enumerate() {
        let c = cdf(shape, *le);
        out[i] = c - below;
        below = c;
    }
    out[16] = 1.0 - below;
    out
}

type Counts = [u64; 17];

fn second(rps: f64, probs: &[f64; 17], rng: &mut StdRng) -> Counts {
    let mut n = Poisson::new(rps).map(|d| d.sample(rng)).unwrap_or(0.0) as u64;
    let mut out = [0u64; 17];
    let mut left = 1.0;
    for i in 0..16 {
        if n == 0 {
            break;
        }
        let p = (probs[i] / left).clamp(0.0, 1.0);
        let k = Binomial::new(n, p).map(|d| d.sample(rng)).unwrap_or(0);
        out[i] = k;
        n -= k;
        left -= probs[i];
    }
    out[16] = n;
    out
}

/// An hour of per-second buckets; the canary takes `shape` from `onset` (the start when None).
fn stream(
    c_rps: f64,
    b_rps: f64,
    shape: Shape,
    seed: u64,
    onset: Option<usize>,
) -> Vec<(Counts, Counts)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let changed = bucket_probabilities(shape);
    let baseline = bucket_probabilities(Shape::Same);
    (0..HOUR)
        .map(|t| {
            let canary = if onset.is_some_and(|o| t < o) {
                &baseline
            } else {
                &changed
            };
            (
                second(c_rps, canary, &mut rng),
                second(b_rps, &baseline, &mut rng),
            )
        })
        .collect()
}

/// The first alarm after the onset, in seconds from it.
fn after_onset(trace: &[(usize, f64)], threshold: f64, onset: usize) -> Option<usize> {
    trace
        .iter()
        .find(|(t, v)| *t > onset && *v > threshold)
        .map(|(t, _)| t - onset)
}

fn answer(cumulative: &Counts) -> Vec<Series> {
    let mut running = 0u64;
    (0..17)
        .map(|i| {
            running += cumulative[i];
            let le = if i == 16 {
                "+Inf".to_owned()
            } else {
                LES[i].to_string()
            };
            Series {
                labels: BTreeMap::from([("le".to_owned(), le)]),
                value: running as f64,
            }
        })
        .collect()
}

fn histogram(counts: &Counts) -> Histogram {
    let mut running = 0.0;
    Histogram {
        buckets: (0..17)
            .map(|i| {
                running += counts[i] as f64;
                (if i == 16 { f64::INFINITY } else { LES[i] }, running)
            })
            .collect(),
    }
}

trait Method {
    fn name(&self) -> &'static str;
    /// The usual threshold on the danger value, as users configure it.
    fn usual(&self) -> f64;
    fn trace(&self, s: &[(Counts, Counts)]) -> Vec<(usize, f64)>;
}

struct Rollguard;
impl Method for Rollguard {
    fn name(&self) -> &'static str {
        "rollguard latency"
    }
    fn usual(&self) -> f64 {
        // Each of the three default quantiles is tested at α/3.
        rollguard::analysis::share::fail_threshold(rollguard::analysis::share::ALPHA / 3.0)
    }
    fn trace(&self, s: &[(Counts, Counts)]) -> Vec<(usize, f64)> {
        let spec: Latency = serde_json::from_value(serde_json::json!({"buckets": "b"}))
            .expect("default latency spec");
        let mut judge = LatencyJudge::new(&spec);
        let (mut c, mut b) = ([0u64; 17], [0u64; 17]);
        let mut out = Vec::with_capacity(HOUR / EVAL_EVERY);
        for (t, (cs, bs)) in s.iter().enumerate() {
            for i in 0..17 {
                c[i] += cs[i];
                b[i] += bs[i];
            }
            if t % EVAL_EVERY == 0 {
                let tick = judge.observe(&answer(&c), &answer(&b), t as i64);
                let danger = tick.statistic.map_or(f64::NEG_INFINITY, |s| s.0);
                out.push((t, danger));
            }
        }
        out
    }
}

/// The canary's p99 per minute (`histogram_quantile` on the minute's buckets); the danger is
/// the `limit`-th largest so far, so an alarm is the `limit`-th failing minute.
struct PerMinuteP99 {
    name: &'static str,
    limit: usize,
}
impl Method for PerMinuteP99 {
    fn name(&self) -> &'static str {
        self.name
    }
    fn usual(&self) -> f64 {
        // An SLO-style bound a little above the healthy p99 (≈ 160 ms): 200 ms.
        200.0
    }
    fn trace(&self, s: &[(Counts, Counts)]) -> Vec<(usize, f64)> {
        let mut p99s: Vec<f64> = Vec::new();
        s.chunks(60)
            .enumerate()
            .map(|(i, chunk)| {
                let mut minute = [0u64; 17];
                for (c, _) in chunk {
                    for k in 0..17 {
                        minute[k] += c[k];
                    }
                }
                p99s.push(histogram(&minute).quantile(0.99).unwrap_or(f64::INFINITY));
                let mut sorted = p99s.clone();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let danger = sorted
                    .get(self.limit - 1)
                    .copied()
                    .unwrap_or(f64::NEG_INFINITY);
                ((i + 1) * 60, danger)
            })
            .collect()
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (null_runs, det_runs) = if quick { (200, 40) } else { (1000, 200) };
    let methods: Vec<Box<dyn Method + Sync>> = vec![
        Box::new(Rollguard),
        Box::new(PerMinuteP99 {
            name: "Argo p99 ≤ X, failureLimit 3",
            limit: 4,
        }),
        Box::new(PerMinuteP99 {
            name: "Flagger p99 ≤ X, threshold 5",
            limit: 5,
        }),
    ];
    let from_start = [Shape::Median(1.3), Shape::Tail(1.6)];
    let mid_run = [Shape::Median(1.6), Shape::Tail(1.6)];
    // (label, canary rps, baseline rps, onset, regressions)
    type Cell<'a> = (&'a str, f64, f64, Option<usize>, &'a [Shape]);
    let cells: [Cell; 3] = [
        ("100 vs 100 rps", 100.0, 100.0, None, &from_start),
        ("10 vs 90 rps", 10.0, 90.0, None, &from_start),
        (
            "20 vs 80 rps, onset at 600 s",
            20.0,
            80.0,
            Some(600),
            &mid_run,
        ),
    ];
    let started = std::time::Instant::now();
    println!(
        "latency detection: {null_runs} A/A hours and {det_runs} regression runs per cell; calibrated to {:.0}% FP per rollout-hour\n",
        TARGET_FP * 100.0
    );
    println!(
        "| traffic | regression | method | detected | median TTD | p90 TTD | FP at usual | median TTD at usual |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (ci, (label, c_rps, b_rps, onset, shapes)) in cells.iter().enumerate() {
        let maxima: Vec<Vec<f64>> = parallel(null_runs, |r| {
            let s = stream(
                *c_rps,
                *b_rps,
                Shape::Same,
                5_000_000 * (ci as u64 + 1) + r as u64,
                None,
            );
            methods.iter().map(|m| peak(&m.trace(&s))).collect()
        });
        let usuals: Vec<f64> = methods.iter().map(|m| m.usual()).collect();
        let (thresholds, usual_fp) = thresholds(&maxima, &usuals, TARGET_FP);
        for (si, shape) in shapes.iter().enumerate() {
            let alarms: Vec<Vec<(Option<usize>, Option<usize>)>> = parallel(det_runs, |r| {
                let seed = 7_000_000 * (ci as u64 + 1) + 100_000 * si as u64 + r as u64;
                let s = stream(*c_rps, *b_rps, *shape, seed, *onset);
                methods
                    .iter()
                    .enumerate()
                    .map(|(k, m)| {
                        let trace = m.trace(&s);
                        match onset {
                            Some(o) => (
                                after_onset(&trace, thresholds[k], *o),
                                after_onset(&trace, m.usual(), *o),
                            ),
                            None => (
                                first_alarm(&trace, thresholds[k]),
                                first_alarm(&trace, m.usual()),
                            ),
                        }
                    })
                    .collect()
            });
            for (k, m) in methods.iter().enumerate() {
                let what = match shape {
                    Shape::Median(f) => format!("all x{f}"),
                    Shape::Tail(f) => format!("tail x{f} (p99 +{:.0}%)", (f - 1.0) * 100.0),
                    Shape::Same => "none".into(),
                };
                println!(
                    "| {label} | {what} | {} | {} |",
                    m.name(),
                    detection_cells(&alarms, k, usual_fp[k]),
                );
            }
        }
    }
    eprintln!("\n({:.1} s)", started.elapsed().as_secs_f64());
}
