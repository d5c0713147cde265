//! `rollguard backtest`: the command's arguments and its report, as text or JSON.

use std::path::PathBuf;

use anyhow::Context as _;

use super::args::{Output, parse_key_value};
use crate::analysis::judge::Cohort;
use crate::analysis::prometheus::{Credentials, PrometheusSource};
use crate::analysis::run::{AnalysisRun, Decision, Measurement, Target};
use crate::time::{format_time, parse_time};

#[derive(Debug, clap::Args)]
pub struct BacktestArgs {
    /// Prometheus base URL; it answers for every provider the template names.
    #[arg(long)]
    pub(super) prometheus: String,
    /// The YAML file holding the template.
    #[arg(long)]
    pub(super) template: PathBuf,
    /// Which template of the file, when it holds several.
    #[arg(long)]
    pub(super) name: Option<String>,
    /// A template argument, `name=value`. Repeat for more.
    #[arg(long = "arg", value_parser = parse_key_value)]
    pub(super) args: Vec<(String, String)>,
    /// The namespace `{{namespace}}` stands for.
    #[arg(long, default_value = "default")]
    pub(super) namespace: String,
    /// The Rollout's name: the arms are `<rollout>-canary` and `<rollout>-stable`.
    #[arg(
        long,
        required_unless_present_all = ["canary", "baseline"],
        required_unless_present = "release"
    )]
    pub(super) rollout: Option<String>,
    /// Replay one Release's canary: the window runs from the Release's creation to its verdict
    /// (a minute past it) or now, and the Rollout is the Release's. Read from the cluster, in
    /// --namespace.
    #[arg(long, conflicts_with = "from")]
    pub(super) release: Option<String>,
    /// The Deployment `{{arm}}` names for the canary (default `<rollout>-canary`).
    #[arg(long)]
    pub(super) canary: Option<String>,
    /// The Deployment `{{arm}}` names for the baseline (default `<rollout>-stable`).
    #[arg(long)]
    pub(super) baseline: Option<String>,
    /// Start: RFC 3339, unix seconds, or `now-1h`.
    #[arg(long, required_unless_present = "release")]
    pub(super) from: Option<String>,
    /// End: RFC 3339, unix seconds, or `now` (the default, or the Release's verdict).
    #[arg(long)]
    pub(super) to: Option<String>,
    /// How often the controller evaluates; each metric is measured on its own interval.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(super) step: std::time::Duration,
    /// Per-query timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(super) timeout: std::time::Duration,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub(super) output: Output,
}

pub(super) async fn backtest(mut a: BacktestArgs) -> anyhow::Result<()> {
    let now = crate::time::unix_now();
    let (from, to) = match a.release.clone() {
        Some(name) => {
            let (rollout, created, verdict) = release_canary(&a.namespace, &name).await?;
            a.rollout.get_or_insert(rollout);
            let (from, until) = release_window(created, verdict, now);
            let to = match &a.to {
                Some(t) => parse_time(t, now).map_err(|e| anyhow::anyhow!("--to {e}"))?,
                None => until,
            };
            (from, to)
        }
        None => {
            let from = a.from.as_deref().unwrap_or("now-1h");
            let from = parse_time(from, now).map_err(|e| anyhow::anyhow!("--from {e}"))?;
            let to = parse_time(a.to.as_deref().unwrap_or("now"), now)
                .map_err(|e| anyhow::anyhow!("--to {e}"))?;
            (from, to)
        }
    };
    anyhow::ensure!(
        from <= to,
        "--from {} is after --to {}",
        format_time(from),
        format_time(to)
    );
    let step = a.step.as_secs().max(1) as i64;
    anyhow::ensure!(
        (to - from) / step <= 100_000,
        "{} evaluations; use a larger --step or a shorter range",
        (to - from) / step
    );
    let templates = crate::templates::load(&a.template)?;
    let template = match &a.name {
        Some(name) => templates
            .iter()
            .find(|t| &t.name == name)
            .with_context(|| format!("{}: no template named {name:?}", a.template.display()))?,
        None => match templates.as_slice() {
            [one] => one,
            [] => anyhow::bail!("{}: no AnalysisTemplate in the file", a.template.display()),
            many => anyhow::bail!(
                "{}: {} templates ({}); choose one with --name",
                a.template.display(),
                many.len(),
                many.iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    let arm = |given: &Option<String>, suffix: &str| {
        given
            .clone()
            .or_else(|| a.rollout.as_ref().map(|r| format!("{r}-{suffix}")))
            .unwrap_or_default()
    };
    let target = Target {
        namespace: a.namespace.clone(),
        canary: arm(&a.canary, "canary"),
        baseline: arm(&a.baseline, "stable"),
        baseline_offset: None,
        args: a.args.clone(),
    };
    let mut run = AnalysisRun::new(&template.spec, &target)
        .map_err(|e| anyhow::anyhow!("{}: spec.{e}", a.template.display()))?;
    let source = PrometheusSource::new(&a.prometheus, a.timeout, &Credentials::default())
        .map_err(|e| anyhow::anyhow!("--prometheus: {e}"))?;
    // One probe first: a Prometheus that cannot be reached is one error, not a line per
    // evaluation.
    if let Err(e @ crate::analysis::source::SourceError::Unreachable { .. }) =
        crate::analysis::source::MetricSource::query(&source, "vector(1)", to).await
    {
        eprintln!("Error: --prometheus: {e}; check the address, or that it is up");
        std::process::exit(2);
    }
    let text = a.output == Output::Text;
    if text {
        println!(
            "backtest of {} {:?}: {} → {}, every {}s ({} evaluations)",
            template.kind,
            template.name,
            format_time(from),
            format_time(to),
            step,
            (to - from) / step + 1
        );
        println!(
            "canary {:?}, baseline {:?}, namespace {:?}\n",
            target.canary, target.baseline, target.namespace
        );
        println!("{:<22}{:<22}{:<14}REASON", "TIME", "METRIC", "VERDICT");
    }
    let total = (to - from) / step + 1;
    let mut timeline = crate::backtest::Timeline::default();
    let mut seen = 0i64;
    let report = crate::backtest::replay(
        &template.name,
        &mut run,
        &source,
        from,
        to,
        step,
        |m, decision| {
            seen += 1;
            if text {
                if timeline.is_change(m) {
                    println!(
                        "{:<22}{:<22}{:<14}{}",
                        format_time(m.at),
                        m.metric,
                        m.outcome.verdict.to_string(),
                        m.outcome.reason
                    );
                }
                if let Some(d) = decision {
                    println!(
                        "{:<22}{:<22}{:<14}{}",
                        format_time(m.at),
                        "→ decision",
                        d.name(),
                        describe(d)
                    );
                }
            } else if seen % 500 == 0 {
                eprintln!("{seen} measurements made ({total} evaluations in all)");
            }
        },
    )
    .await;
    if !text {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!();
    match &report.first_fail {
        None => println!(
            "no Fail over {} measurements; final decision: {}",
            report.measurements.len(),
            report
                .decisions
                .last()
                .map_or("Running", |d| d.decision.name())
        ),
        Some(m) => print_evidence(m, from),
    }
    Ok(())
}

/// A Release's Rollout, when it was created (its canary's start), and when its verdict was
/// reached, if it was judged Unstable.
async fn release_canary(namespace: &str, name: &str) -> anyhow::Result<(String, i64, Option<i64>)> {
    use kube::{Api, ResourceExt as _};
    let (client, namespace) = crate::ops::client_and_namespace(Some(namespace.to_owned())).await?;
    let release = Api::<crate::api::release::Release>::namespaced(client, &namespace)
        .get(name)
        .await
        .with_context(|| format!("--release: Release {namespace}/{name}"))?;
    let created = release
        .creation_timestamp()
        .map(|t| t.0.as_second())
        .with_context(|| format!("--release: Release {namespace}/{name} has no creation time"))?;
    let verdict = release
        .status
        .as_ref()
        .and_then(|s| s.verdict.as_ref())
        .and_then(|v| parse_time(&v.at, created).ok());
    Ok((release.spec.rollout.clone(), created, verdict))
}

/// The window of a Release's canary: from its creation to a minute past its verdict (the
/// evidence around it), or to `now` when it has none; never past `now`.
pub(super) fn release_window(created: i64, verdict: Option<i64>, now: i64) -> (i64, i64) {
    let to = verdict.map_or(now, |v| (v + 60).min(now));
    (created, to.max(created))
}

fn describe(d: &Decision) -> String {
    match d {
        Decision::Running => "collecting evidence".into(),
        Decision::Pass => "every metric passes".into(),
        Decision::Fail {
            metric, critical, ..
        } => format!(
            "{metric} fails{}",
            if *critical {
                " (critical: roll back now)"
            } else {
                ""
            }
        ),
        Decision::Inconclusive { metric, action, .. } => {
            format!("{metric} cannot be measured: {action:?}")
        }
    }
}

fn print_evidence(m: &Measurement, from: i64) {
    println!(
        "first Fail: {} ({}s after the start), metric {:?}",
        format_time(m.at),
        m.at - from,
        m.metric
    );
    println!("  reason:    {}", m.outcome.reason);
    if let Some(s) = &m.outcome.statistic {
        println!("  statistic: {}", s.text());
    }
    for (arm, counts) in [
        (Cohort::Canary, m.outcome.canary),
        (Cohort::Baseline, m.outcome.baseline),
    ] {
        if let Some(c) = counts {
            println!(
                "  {arm:<9}  {} requests, {} events ({})",
                c.requests,
                c.events,
                c.rate()
                    .map_or("n/a".into(), |r| format!("{:.3}%", r * 100.0))
            );
        }
    }
    for q in &m.queries {
        let value = match (&q.error, q.value) {
            (Some(e), _) => format!("error: {e}"),
            (None, Some(v)) => format!("= {v}"),
            (None, None) => format!("{} series", q.series),
        };
        println!(
            "  {:<9} {:<9} {}  {value}",
            q.arm.to_string(),
            q.role.to_string(),
            q.promql
        );
    }
}
