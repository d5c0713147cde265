//! Detection benchmark for the error-rate judgment: false positives per rollout-hour and time to
//! detect, against the rules users configure in Argo Rollouts and Flagger today and against a
//! plain conditional-binomial mixture e-process, all calibrated to the same false-positive rate.
//!
//! `cargo bench --bench detection` (add `-- --quick` for a smoke run, `-- --only pass` for the
//! time-to-Pass and promotion tables of `detection/pass.rs` alone). Fixed seeds: the numbers
//! are reproducible. Streams are per second: Poisson request counts per arm and binomial errors,
//! a regression present from the first second, or (the onset cells) starting 600 s into a
//! healthy run, possibly with a weight step at that moment; each method sees the identical
//! stream. Times to detect count from the regression's start.

#[path = "detection/pass.rs"]
mod pass;
mod support;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Binomial, Distribution, Poisson};
use rollguard::analysis::sequential::ShareTest;
use rollguard::analysis::share::{ArmCounts, ShareConfig, ShareJudge};
use rollguard::api::analysis::ErrorRate;
use support::{detection_cells, first_alarm, parallel, peak, thresholds};

const HOUR: usize = 3600;
const EVAL_EVERY: usize = 5;
const TARGET_FP: f64 = 0.01;

#[derive(Clone, Copy)]
struct Traffic {
    canary_rps: f64,
    baseline_rps: f64,
    base_rate: f64,
}

/// One second of one arm.
#[derive(Clone, Copy, Default)]
struct Second {
    requests: f64,
    errors: f64,
}

/// A regression that starts mid-run: at `at` seconds the canary's rate is multiplied, and the
/// traffic becomes `then` when the onset is a weight step.
#[derive(Clone, Copy)]
struct Onset {
    at: usize,
    then: Option<Traffic>,
}

fn stream(t: Traffic, mult: f64, seed: u64, onset: Option<Onset>) -> Vec<(Second, Second)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let arm = |rps: f64, rate: f64, rng: &mut StdRng| {
        let n = Poisson::new(rps).map(|d| d.sample(rng)).unwrap_or(0.0) as u64;
        let e = Binomial::new(n, rate.min(1.0))
            .map(|d| d.sample(rng))
            .unwrap_or(0);
        Second {
            requests: n as f64,
            errors: e as f64,
        }
    };
    (0..HOUR)
        .map(|second| {
            let (t, mult) = match onset {
                Some(o) if second < o.at => (t, 1.0),
                Some(o) => (o.then.unwrap_or(t), mult),
                None => (t, mult),
            };
            let c = arm(t.canary_rps, t.base_rate * mult, &mut rng);
            let b = arm(t.baseline_rps, t.base_rate, &mut rng);
            (c, b)
        })
        .collect()
}

/// A method turns a stream into a "danger" trace: one value per evaluation, with the time of
/// that evaluation. It alarms the first time the value exceeds its calibrated threshold.
trait Method {
    fn name(&self) -> &'static str;
    fn trace(&self, s: &[(Second, Second)]) -> Vec<(usize, f64)>;
}

fn sum(s: &[(Second, Second)]) -> (Second, Second) {
    s.iter()
        .fold((Second::default(), Second::default()), |(a, b), (c, d)| {
            (
                Second {
                    requests: a.requests + c.requests,
                    errors: a.errors + c.errors,
                },
                Second {
                    requests: b.requests + d.requests,
                    errors: b.errors + d.errors,
                },
            )
        })
}

/// rollguard's `errorRate` judgment with its defaults, evaluated every `every` seconds: 5 s,
/// and 1 s, the cadence a provider that scrapes every second gets. The false-positive rate must
/// not grow with the cadence.
struct Rollguard {
    every: usize,
    name: &'static str,
    /// With the change detector, as shipped; without it, the test from the start alone (what
    /// rollguard did before the detector, at the same level), to show what it adds.
    detector: bool,
}
impl Method for Rollguard {
    fn name(&self) -> &'static str {
        self.name
    }
    fn trace(&self, s: &[(Second, Second)]) -> Vec<(usize, f64)> {
        // The defaults a template gets when it names only the two queries.
        let defaults: ErrorRate = serde_json::from_value(serde_json::json!({
            "requests": "requests", "errors": "errors"
        }))
        .expect("a minimal errorRate");
        let mut judge = ShareJudge::new(ShareConfig::from(&defaults));
        s.chunks(self.every)
            .enumerate()
            .map(|(i, chunk)| {
                let (c, b) = sum(chunk);
                let at = (i + 1) * self.every;
                judge.observe(
                    ArmCounts {
                        requests: c.requests,
                        events: c.errors,
                    },
                    ArmCounts {
                        requests: b.requests,
                        events: b.errors,
                    },
                    at as i64,
                );
                let danger = if self.detector {
                    judge.danger()
                } else {
                    judge.fail_statistic()
                };
                (at, danger)
            })
            .collect()
    }
}

/// The plain mixture: null ratio 1.1, a uniform prior on six rate ratios, every 5 s.
struct PlainMixture;
impl Method for PlainMixture {
    fn name(&self) -> &'static str {
        "plain mixture e-process"
    }
    fn trace(&self, s: &[(Second, Second)]) -> Vec<(usize, f64)> {
        // Alternatives 1.25, 1.5, 2, 3, 5, 10 (as multiples of the null 1.1), equal weights.
        let grid: Vec<(f64, f64)> = [1.25, 1.5, 2.0, 3.0, 5.0, 10.0]
            .iter()
            .map(|r| (r / 1.1, 1.0 / 6.0))
            .collect();
        let mut test = ShareTest::with_grid(1.1, &grid);
        s.chunks(EVAL_EVERY)
            .enumerate()
            .map(|(i, chunk)| {
                let (c, b) = sum(chunk);
                let total = c.requests + b.requests;
                if total > 0.0 {
                    test.update(c.errors, b.errors, c.requests / total);
                }
                ((i + 1) * EVAL_EVERY, test.ln_e())
            })
            .collect()
    }
}

/// Success rate of the canary per 1-minute measurement, failing below a threshold; the run
/// fails at the `limit`-th failed measurement. Argo: `result >= 0.99`, `failureLimit: 3`
/// (fails on the 4th). Flagger: success rate ≥ 99% per 1 m check, `threshold: 5`.
/// The danger value is the `limit`-th largest per-minute error ratio so far.
struct PerMinute {
    name: &'static str,
    limit: usize,
}
impl Method for PerMinute {
    fn name(&self) -> &'static str {
        self.name
    }
    fn trace(&self, s: &[(Second, Second)]) -> Vec<(usize, f64)> {
        let mut ratios: Vec<f64> = Vec::new();
        s.chunks(60)
            .enumerate()
            .map(|(i, chunk)| {
                let (c, _) = sum(chunk);
                // No requests: Argo and Flagger treat NaN as a failed (or errored) measurement;
                // count it as maximal danger only when it happens, which it does not at ≥ 1 rps.
                ratios.push(if c.requests > 0.0 {
                    c.errors / c.requests
                } else {
                    1.0
                });
                let mut sorted = ratios.clone();
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

/// The best any method could do: a test that knows the baseline error rate and the size of
/// the change, on the canary's errors alone, updated every second. For a regression present
/// from the start it is Wald's SPRT, the test with the smallest mean sample size at its error
/// rates (Wald and Wolfowitz 1948); for a regression with an onset it is CUSUM, which has the
/// smallest worst-case delay at a given mean time to a false alarm (Lorden 1971, Moustakides
/// 1986). Calibrated to the same false-positive rate as the others, its time to detect is the
/// information limit of the cell. No real method knows these two numbers.
struct Oracle {
    mult: f64,
    base_rate: f64,
    /// CUSUM (restarting whenever the statistic falls below 0) rather than SPRT.
    onset: bool,
}
impl Method for Oracle {
    fn name(&self) -> &'static str {
        if self.onset {
            "oracle CUSUM (knows the rates; a bound, not a method)"
        } else {
            "oracle SPRT (knows the rates; a bound, not a method)"
        }
    }
    fn trace(&self, s: &[(Second, Second)]) -> Vec<(usize, f64)> {
        let (ln_m, excess) = (self.mult.ln(), self.base_rate * (self.mult - 1.0));
        let mut cusum = 0.0f64;
        s.iter()
            .enumerate()
            .map(|(i, (c, _))| {
                let start = if self.onset { cusum.max(0.0) } else { cusum };
                cusum = start + c.errors * ln_m - c.requests * excess;
                (i + 1, cusum)
            })
            .collect()
    }
}

struct Cell {
    label: &'static str,
    traffic: Traffic,
    multipliers: &'static [f64],
    onset: Option<Onset>,
}

impl Cell {
    fn from_start(label: &'static str, traffic: Traffic, multipliers: &'static [f64]) -> Cell {
        Cell {
            label,
            traffic,
            multipliers,
            onset: None,
        }
    }
}

/// The first alarm after the onset, in seconds from it: alarms before it are the A/A part of
/// the run, which the calibration already counts.
fn after_onset(trace: &[(usize, f64)], threshold: f64, onset: usize) -> Option<usize> {
    trace
        .iter()
        .find(|(t, v)| *t > onset && *v > threshold)
        .map(|(t, _)| t - onset)
}

/// Per method: the maxima of the A/A runs, and per regression the first alarm of each run at
/// the calibrated and at the usual threshold.
fn run_cell(
    ci: usize,
    cell: &Cell,
    methods: &[Box<dyn Method + Sync>],
    null_runs: usize,
    det_runs: usize,
) -> Vec<String> {
    let default_threshold =
        rollguard::analysis::share::fail_threshold(rollguard::analysis::share::ALPHA);
    let usual = |m: &dyn Method| {
        if m.name().starts_with("rollguard") || m.name() == "plain mixture e-process" {
            default_threshold
        } else {
            0.01
        }
    };
    // One oracle per regression size; it runs only on its own regression.
    let oracles: Vec<Oracle> = cell
        .multipliers
        .iter()
        .map(|&mult| Oracle {
            mult,
            base_rate: cell.traffic.base_rate,
            onset: cell.onset.is_some(),
        })
        .collect();
    let all: Vec<&(dyn Method + Sync)> = methods
        .iter()
        .map(|m| m.as_ref() as &(dyn Method + Sync))
        .chain(oracles.iter().map(|o| o as &(dyn Method + Sync)))
        .collect();
    // A/A: one stream per run, every method on the same stream.
    let maxima: Vec<Vec<f64>> = parallel(null_runs, |r| {
        let s = stream(
            cell.traffic,
            1.0,
            1_000_000 * (ci as u64 + 1) + r as u64,
            cell.onset,
        );
        all.iter().map(|m| peak(&m.trace(&s))).collect()
    });
    // The oracle has no usual setting: it is shown calibrated only.
    let usuals: Vec<f64> = all
        .iter()
        .enumerate()
        .map(|(k, m)| {
            if k < methods.len() {
                usual(*m as &dyn Method)
            } else {
                f64::INFINITY
            }
        })
        .collect();
    let (thresholds, usual_fp) = thresholds(&maxima, &usuals, TARGET_FP);
    let mut rows = Vec::new();
    for (j, &mult) in cell.multipliers.iter().enumerate() {
        let oracle = methods.len() + j;
        let mine: Vec<usize> = (0..methods.len()).chain([oracle]).collect();
        // (calibrated, usual) first alarm per method per run.
        let alarms: Vec<Vec<(Option<usize>, Option<usize>)>> = parallel(det_runs, |r| {
            let seed = 9_000_000 * (ci as u64 + 1) + r as u64 + (mult * 1000.0) as u64;
            let s = stream(cell.traffic, mult, seed, cell.onset);
            mine.iter()
                .map(|&k| {
                    let m = all[k];
                    let trace = m.trace(&s);
                    match cell.onset {
                        Some(o) => (
                            after_onset(&trace, thresholds[k], o.at),
                            after_onset(&trace, usuals[k], o.at),
                        ),
                        None => (
                            first_alarm(&trace, thresholds[k]),
                            first_alarm(&trace, usuals[k]),
                        ),
                    }
                })
                .collect()
        });
        for (i, &k) in mine.iter().enumerate() {
            let mut cells = detection_cells(&alarms, i, usual_fp[k]);
            if k == oracle {
                // Keep detected, median and p90; the usual-setting columns do not apply.
                let kept: Vec<&str> = cells.split(" | ").take(3).collect();
                cells = format!("{} | — | —", kept.join(" | "));
            }
            rows.push(format!(
                "| {} | x{} | {} | {} |",
                cell.label,
                mult,
                all[k].name(),
                cells,
            ));
        }
    }
    rows
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (null_runs, det_runs) = if quick { (300, 60) } else { (2000, 300) };
    let cells = [
        Cell::from_start(
            "100 vs 100 rps, 0.5%",
            Traffic {
                canary_rps: 100.0,
                baseline_rps: 100.0,
                base_rate: 0.005,
            },
            &[1.5, 2.0, 5.0],
        ),
        Cell::from_start(
            "10 vs 90 rps (10%), 0.5%",
            Traffic {
                canary_rps: 10.0,
                baseline_rps: 90.0,
                base_rate: 0.005,
            },
            &[1.5, 2.0, 4.0, 5.0, 20.0],
        ),
        Cell::from_start(
            "5 vs 95 rps (5%), 0.5%",
            Traffic {
                canary_rps: 5.0,
                baseline_rps: 95.0,
                base_rate: 0.005,
            },
            &[2.0, 5.0],
        ),
        Cell::from_start(
            "50 vs 50 rps (50%), 0.5%",
            Traffic {
                canary_rps: 50.0,
                baseline_rps: 50.0,
                base_rate: 0.005,
            },
            &[2.0, 5.0],
        ),
        Cell::from_start(
            "10 vs 10 rps, 0.5%",
            Traffic {
                canary_rps: 10.0,
                baseline_rps: 10.0,
                base_rate: 0.005,
            },
            &[2.0, 5.0],
        ),
        Cell::from_start(
            "1000 vs 1000 rps, 0.05%",
            Traffic {
                canary_rps: 1000.0,
                baseline_rps: 1000.0,
                base_rate: 0.0005,
            },
            &[1.5, 2.0, 5.0],
        ),
        Cell::from_start(
            "100 vs 100 rps, 0.05%",
            Traffic {
                canary_rps: 100.0,
                baseline_rps: 100.0,
                base_rate: 0.0005,
            },
            &[1.5, 2.0, 5.0],
        ),
        Cell {
            label: "5 vs 45 rps (10%), 0.5%, onset at 600 s",
            traffic: Traffic {
                canary_rps: 5.0,
                baseline_rps: 45.0,
                base_rate: 0.005,
            },
            multipliers: &[4.0],
            onset: Some(Onset {
                at: 600,
                then: None,
            }),
        },
        Cell {
            label: "40 vs 360 rps (10%), 0.5%, onset at 600 s",
            traffic: Traffic {
                canary_rps: 40.0,
                baseline_rps: 360.0,
                base_rate: 0.005,
            },
            multipliers: &[2.0],
            onset: Some(Onset {
                at: 600,
                then: None,
            }),
        },
        Cell {
            label: "2 vs 8 rps (20%), 1%, onset at 600 s",
            traffic: Traffic {
                canary_rps: 2.0,
                baseline_rps: 8.0,
                base_rate: 0.01,
            },
            multipliers: &[5.0],
            onset: Some(Onset {
                at: 600,
                then: None,
            }),
        },
        Cell {
            label: "weight step 10% to 50% at 600 s (10 vs 90, then 50 vs 50 rps), 0.5%",
            traffic: Traffic {
                canary_rps: 10.0,
                baseline_rps: 90.0,
                base_rate: 0.005,
            },
            multipliers: &[2.0, 4.0],
            onset: Some(Onset {
                at: 600,
                then: Some(Traffic {
                    canary_rps: 50.0,
                    baseline_rps: 50.0,
                    base_rate: 0.005,
                }),
            }),
        },
    ];

    // `-- --only TEXT` runs the cells whose label contains TEXT; `-- --only pass` the time to
    // Pass and the promotion tables alone.
    let only: Option<String> = std::env::args().skip_while(|a| a != "--only").nth(1);
    let pass_runs = if quick { 60 } else { 400 };
    if only.as_deref() == Some("pass") {
        pass::main(pass_runs);
        return;
    }
    let methods: Vec<Box<dyn Method + Sync>> = vec![
        Box::new(Rollguard {
            every: EVAL_EVERY,
            name: "rollguard errorRate",
            detector: true,
        }),
        Box::new(Rollguard {
            every: 1,
            name: "rollguard errorRate, every 1 s",
            detector: true,
        }),
        Box::new(Rollguard {
            every: EVAL_EVERY,
            name: "rollguard errorRate without the change detector",
            detector: false,
        }),
        Box::new(PlainMixture),
        Box::new(PerMinute {
            name: "Argo result>=0.99, failureLimit 3",
            limit: 4,
        }),
        Box::new(PerMinute {
            name: "Flagger success>=99%, threshold 5",
            limit: 5,
        }),
    ];
    println!(
        "# error-rate detection: {null_runs} A/A rollout-hours per traffic cell, {det_runs} runs per regression, evaluated every {EVAL_EVERY} s (peers every 60 s)"
    );
    println!(
        "# TTD columns: every method calibrated to {:.0}% false positives per rollout-hour on the cell's own A/A runs; the last two columns are each method at its usual setting (alpha = 0.01; success rate >= 99%)\n",
        TARGET_FP * 100.0
    );
    println!(
        "| traffic (canary vs baseline), baseline errors | regression | method | detected in 1 h | median TTD | p90 TTD | FP/rollout-hour, usual setting | median TTD, usual setting |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (ci, cell) in cells.iter().enumerate() {
        if only
            .as_ref()
            .is_some_and(|o| !cell.label.contains(o.as_str()))
        {
            continue;
        }
        let t0 = std::time::Instant::now();
        for row in run_cell(ci, cell, &methods, null_runs, det_runs) {
            println!("{row}");
        }
        eprintln!("[bench] {} done in {:.1?}", cell.label, t0.elapsed());
    }
    if only.is_none() {
        pass::main(pass_runs);
    }
}
