//! The analysis engine against histories written into a real Prometheus with
//! `promtool tsdb create-blocks-from openmetrics`, replayed through the shipped Istio template
//! (`analysis-templates/istio.yaml`) exactly as `rollguard backtest` replays them.
//!
//! Four 30-minute histories at 50 requests per second per arm, 0.5% errors, latencies
//! log-normal around 50 ms, one namespace each:
//! - `aa`: canary and baseline alike;
//! - `errors`: the canary's errors ×4 from minute 10;
//! - `tail`: the canary's slowest 5% of requests 60% slower from minute 10 (p99 +60%, p50 alike);
//! - `idle`: no requests at all from minute 12 to minute 16.
//!
//! Needs `promtool` and `prometheus` (Debian's, installed by `scripts/env install`); the test
//! starts its own Prometheus on a free loopback port and stops it.

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Binomial, Distribution, LogNormal, Poisson};
use rollguard::analysis::prometheus::{Credentials, PrometheusSource};
use rollguard::analysis::run::{AnalysisRun, Decision, Measurement, Target};
use rollguard::analysis::verdict::Verdict;
use rollguard::backtest::{Report, replay};

const STEP: i64 = 10;
const MINUTES: i64 = 30;
const RPS: f64 = 50.0;
const BUCKETS_MS: [f64; 16] = [
    5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 250.0, 300.0, 400.0, 500.0, 750.0, 1000.0,
    2500.0, 5000.0,
];

/// What one arm serves in one 10-second scrape interval.
#[derive(Clone, Copy)]
struct Load {
    rps: f64,
    error_rate: f64,
    /// Requests above the distribution's p95 take this much longer.
    tail_factor: f64,
}

const NORMAL: Load = Load {
    rps: RPS,
    error_rate: 0.005,
    tail_factor: 1.0,
};

fn scenario(name: &str, canary: bool, minute: i64) -> Load {
    match name {
        "errors" if canary && minute >= 10 => Load {
            error_rate: 0.02,
            ..NORMAL
        },
        "tail" if canary && minute >= 10 => Load {
            tail_factor: 1.6,
            ..NORMAL
        },
        "idle" if (12..16).contains(&minute) => Load { rps: 0.0, ..NORMAL },
        _ => NORMAL,
    }
}

const SCENARIOS: [&str; 4] = ["aa", "errors", "tail", "idle"];
const ARMS: [&str; 2] = ["checkout-canary", "checkout-stable"];

/// The OpenMetrics text of every scenario, from `start` for 30 minutes.
fn history(start: i64) -> String {
    let mut requests = String::new();
    let mut durations = String::new();
    let base = LogNormal::new(50f64.ln(), 0.5).expect("lognormal");
    let p95 = 50.0 * (1.645f64 * 0.5).exp();
    for (s, name) in SCENARIOS.iter().enumerate() {
        for (a, arm) in ARMS.iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(1000 + 10 * s as u64 + a as u64);
            let labels = format!(
                r#"reporter="destination",destination_workload_namespace="{name}",destination_workload="{arm}""#
            );
            let (mut ok, mut bad) = (0u64, 0u64);
            let mut buckets = [0u64; BUCKETS_MS.len() + 1];
            let mut sum = 0.0;
            let mut ok_lines = String::new();
            let mut bad_lines = String::new();
            for tick in 0..=(MINUTES * 60 / STEP) {
                let t = start + tick * STEP;
                let load = scenario(name, *arm == "checkout-canary", tick * STEP / 60);
                if tick > 0 && load.rps > 0.0 {
                    let n = Poisson::new(load.rps * STEP as f64)
                        .map(|d| d.sample(&mut rng))
                        .unwrap_or(0.0) as u64;
                    let e = Binomial::new(n, load.error_rate)
                        .map(|d| d.sample(&mut rng))
                        .unwrap_or(0);
                    ok += n - e;
                    bad += e;
                    for _ in 0..n {
                        let mut ms: f64 = base.sample(&mut rng);
                        if ms > p95 {
                            ms *= load.tail_factor;
                        }
                        sum += ms;
                        let i = BUCKETS_MS
                            .iter()
                            .position(|le| ms <= *le)
                            .unwrap_or(BUCKETS_MS.len());
                        buckets[i] += 1;
                    }
                }
                let _ = writeln!(
                    ok_lines,
                    "istio_requests_total{{{labels},response_code=\"200\"}} {ok} {t}"
                );
                let _ = writeln!(
                    bad_lines,
                    "istio_requests_total{{{labels},response_code=\"503\"}} {bad} {t}"
                );
                let mut cumulative = 0;
                for (i, le) in BUCKETS_MS.iter().enumerate() {
                    cumulative += buckets[i];
                    let _ = writeln!(
                        durations,
                        "istio_request_duration_milliseconds_bucket{{{labels},le=\"{le}\"}} {cumulative} {t}"
                    );
                }
                cumulative += buckets[BUCKETS_MS.len()];
                let _ = writeln!(
                    durations,
                    "istio_request_duration_milliseconds_bucket{{{labels},le=\"+Inf\"}} {cumulative} {t}"
                );
                let _ = writeln!(
                    durations,
                    "istio_request_duration_milliseconds_count{{{labels}}} {cumulative} {t}"
                );
                let _ = writeln!(
                    durations,
                    "istio_request_duration_milliseconds_sum{{{labels}}} {sum:.3} {t}"
                );
            }
            requests.push_str(&ok_lines);
            requests.push_str(&bad_lines);
        }
    }
    format!(
        "# TYPE istio_requests counter\n{requests}# TYPE istio_request_duration_milliseconds histogram\n{durations}# EOF\n"
    )
}

/// A Prometheus serving backfilled blocks, stopped and removed on drop.
struct Backfilled {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Drop for Backfilled {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn backfill(start: i64) -> Backfilled {
    let dir = std::env::temp_dir().join(common::unique("rollguard-backfill"));
    let data = dir.join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let input = dir.join("history.om");
    std::fs::write(&input, history(start)).expect("write the history");
    let out = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(&data)
        .output()
        .expect("promtool runs (installed by scripts/env install)");
    assert!(
        out.status.success(),
        "promtool failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1m\n").expect("config");
    let port = free_port();
    let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg("--storage.tsdb.retention.time=30d")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prometheus starts");
    let url = format!("http://127.0.0.1:{port}");
    let fixture = Backfilled { child, dir, url };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = Command::new("curl")
            .args(["-fsS", &format!("{}/-/ready", fixture.url)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            break fixture;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus did not become ready: {}",
            log_of(&fixture.dir)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
}

fn istio_template() -> rollguard::api::analysis::AnalysisTemplateSpec {
    let path = common::repo_root().join("analysis-templates/istio.yaml");
    rollguard::templates::load(&path).expect("the shipped template loads")[0]
        .spec
        .clone()
}

async fn backtest(url: &str, namespace: &str, from: i64, to: i64, timeout: Duration) -> Report {
    let target = Target {
        namespace: namespace.into(),
        canary: "checkout-canary".into(),
        baseline: "checkout-stable".into(),
        baseline_offset: None,
        args: vec![],
    };
    let mut run = AnalysisRun::new(&istio_template(), &target).expect("the template runs");
    let source = PrometheusSource::new(url, timeout, &Credentials::default()).expect("source");
    replay(namespace, &mut run, &source, from, to, STEP, |_, _| {}).await
}

/// The first Fail of `report`: it must be `metric`'s, after minute 10 and within `minutes` of it.
fn caught_after_minute_10(report: &Report, metric: &str, start: i64, minutes: i64) -> Measurement {
    let ten = start + 600;
    let fail = report
        .first_fail
        .clone()
        .unwrap_or_else(|| panic!("{}: the regression is not caught", report.template));
    eprintln!(
        "{}: first Fail {} s after minute 10: {}",
        report.template,
        fail.at - ten,
        fail.outcome.reason
    );
    assert_eq!(fail.metric, metric);
    assert!(
        fail.at > ten && fail.at <= ten + minutes * 60,
        "{}: first Fail at minute {:.2}",
        report.template,
        (fail.at - start) as f64 / 60.0
    );
    fail
}

fn aligned_start() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    // Three hours back, on a minute: well inside retention, clear of the head block.
    (now - 3 * 3600) / 60 * 60
}

#[tokio::test]
#[ignore = "needs promtool and prometheus (scripts/env install); run by make test"]
async fn backfilled_histories_are_judged_as_the_controller_would() {
    let start = aligned_start();
    let prom = backfill(start);
    let end = start + MINUTES * 60;
    let minute = |m: i64| start + m * 60;

    // A/A: nothing fails, and the run ends passing.
    let aa = backtest(&prom.url, "aa", start, end, Duration::from_secs(10)).await;
    let fails: Vec<_> = aa
        .measurements
        .iter()
        .filter(|m| m.outcome.verdict == Verdict::Fail)
        .collect();
    assert!(fails.is_empty(), "A/A failed: {:#?}", fails.first());
    let passed = aa
        .decisions
        .iter()
        .find(|d| d.decision == Decision::Pass)
        .map(|d| d.at - start);
    eprintln!("A/A: the run first passes {passed:?} s in");
    assert_eq!(
        aa.decisions.last().map(|d| &d.decision),
        Some(&Decision::Pass),
        "{:#?}",
        aa.decisions
    );
    assert!(
        aa.measurements.len() >= 2 * 180,
        "{} measurements",
        aa.measurements.len()
    );

    // Errors ×4 from minute 10: the first Fail comes after it, and within two minutes.
    let errors = backtest(&prom.url, "errors", start, end, Duration::from_secs(10)).await;
    let fail = caught_after_minute_10(&errors, "error-rate", start, 2);
    assert!(fail.critical);
    let evidence = fail.outcome.canary.expect("canary counts");
    assert!(evidence.requests > 0.0 && evidence.events > 0.0);
    assert!(fail.queries.iter().all(|q| {
        q.promql
            .contains("destination_workload_namespace=\"errors\"")
    }));

    // p99 +60% from minute 10: the latency metric catches it, naming the quantile.
    let tail = backtest(&prom.url, "tail", start, end, Duration::from_secs(10)).await;
    let fail = caught_after_minute_10(&tail, "latency", start, 3);
    assert!(
        fail.outcome.reason.contains("p99"),
        "{}",
        fail.outcome.reason
    );
    let early = tail
        .measurements
        .iter()
        .filter(|m| m.at <= minute(10))
        .all(|m| m.outcome.verdict != Verdict::Fail);
    assert!(early, "no Fail before the regression");

    // No traffic from minute 12 to 16: never Pass there, and the run stops to say so.
    let idle = backtest(&prom.url, "idle", start, end, Duration::from_secs(10)).await;
    let quiet: Vec<_> = idle
        .measurements
        .iter()
        .filter(|m| m.at >= minute(12) && m.at < minute(16))
        .collect();
    assert!(!quiet.is_empty());
    for m in &quiet {
        assert_eq!(
            m.outcome.verdict,
            Verdict::Inconclusive,
            "{} at +{} s: {}",
            m.metric,
            m.at - start,
            m.outcome.reason
        );
        assert!(
            m.outcome.reason.contains("no requests"),
            "{}",
            m.outcome.reason
        );
    }
    assert!(
        idle.decisions
            .iter()
            .any(|d| d.at > minute(12) && matches!(d.decision, Decision::Inconclusive { .. })),
        "{:#?}",
        idle.decisions
    );
    assert!(idle.first_fail.is_none(), "{:#?}", idle.first_fail);

    // The command line prints the same first Fail, in text and in JSON.
    let bin = env!("CARGO_BIN_EXE_rollguard");
    let template = common::repo_root().join("analysis-templates/istio.yaml");
    let args = |output: &str| {
        vec![
            "backtest".to_owned(),
            "--prometheus".into(),
            prom.url.clone(),
            "--template".into(),
            template.display().to_string(),
            "--namespace".into(),
            "errors".into(),
            "--rollout".into(),
            "checkout".into(),
            "--from".into(),
            start.to_string(),
            "--to".into(),
            minute(15).to_string(),
            "-o".into(),
            output.into(),
        ]
    };
    let out = Command::new(bin).args(args("text")).output().expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("first Fail:") && text.contains("\"error-rate\""),
        "{text}"
    );
    assert!(
        text.contains("canary    requests"),
        "the evidence lists the queries: {text}"
    );
    let out = Command::new(bin).args(args("json")).output().expect("runs");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(json["firstFail"]["metric"], "error-rate");
    assert_eq!(
        json["firstFail"]["at"].as_i64(),
        errors.first_fail.as_ref().map(|m| m.at)
    );
}

#[tokio::test]
async fn a_stopped_or_slow_prometheus_is_inconclusive_with_the_reason() {
    let start = aligned_start();
    // Stopped: nothing listens on the port.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let report = backtest(&closed, "aa", start, start + 30, Duration::from_secs(2)).await;
    assert!(!report.measurements.is_empty());
    for m in &report.measurements {
        assert_eq!(m.outcome.verdict, Verdict::Inconclusive);
        assert!(
            m.outcome.reason.contains("cannot reach"),
            "{}",
            m.outcome.reason
        );
    }
    // Slow: accepts connections and never answers; the timeout turns it into a reason.
    let (slow, hold) = common::silent_server().await;
    let began = Instant::now();
    let report = backtest(&slow, "aa", start, start + 10, Duration::from_millis(700)).await;
    for m in &report.measurements {
        assert_eq!(m.outcome.verdict, Verdict::Inconclusive);
        assert!(
            m.outcome.reason.contains("within 700ms"),
            "{}",
            m.outcome.reason
        );
    }
    // Two evaluations, all queries of each at once: about two timeouts, not one per query.
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(
        report.decisions.last().map(|d| d.decision.name()),
        Some("Running"),
        "two failures are below the inconclusive limit of 3"
    );
    hold.abort();
}
