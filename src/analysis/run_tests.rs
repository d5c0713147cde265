//! `run.rs`'s tests: rendering per arm, cadence, the cheap path, anchors and decisions.

use super::*;
use crate::analysis::source::Series;

fn spec(metrics: serde_json::Value) -> AnalysisTemplateSpec {
    serde_json::from_value(serde_json::json!({
        "args": [{"name": "service", "type": "string"}],
        "metrics": metrics,
    }))
    .expect("spec")
}

fn target() -> Target {
    Target {
        namespace: "shop".into(),
        canary: "checkout-canary".into(),
        baseline: "checkout-stable".into(),
        baseline_offset: None,
        args: vec![("service".into(), "checkout".into())],
    }
}

fn one(value: f64) -> Answer {
    Ok(vec![Series {
        labels: BTreeMap::new(),
        value,
    }])
}

fn threshold(name: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut m = serde_json::json!({
        "name": name, "provider": "prom",
        "threshold": {"query": "up{job=\"{{args.service}}\", pod=~\"{{arm}}-.*\"}", "max": 1.0},
    });
    for (k, v) in extra.as_object().expect("object") {
        m[k] = v.clone();
    }
    m
}

/// A canary whose series exist only from 1000 s, 10 requests a second; a stable with
/// 90 a second since 0; no errors.
struct Fresh;
impl MetricSource for Fresh {
    async fn query(&self, promql: &str, at: i64) -> Result<Vec<Series>, SourceError> {
        let canary = promql.contains("canary");
        if promql.contains("errors") || (canary && at <= 1000) {
            return Ok(vec![]);
        }
        let rate = if canary { 10.0 } else { 90.0 };
        let since = if canary { 1000 } else { 0 };
        Ok(vec![Series {
            labels: BTreeMap::new(),
            value: (at - since) as f64 * rate,
        }])
    }
}

#[tokio::test]
async fn anchored_at_the_verified_weight_the_first_measurement_already_counts() {
    let errors = serde_json::json!([{
        "name": "errors", "provider": "prom", "interval": "10s",
        "errorRate": {"requests": "sum(requests{a=\"{{arm}}\"})", "errors": "sum(errors{a=\"{{arm}}\"})"}
    }]);
    let mut anchored = AnalysisRun::new(&spec(errors.clone()), &target()).expect("run");
    anchored.anchor_at(1000);
    let first = anchored.measure(|_| Some(&Fresh), 1003).await;
    let ev = &first[0].outcome;
    assert!(!ev.reason.contains("anchored"), "{}", ev.reason);
    assert_eq!(ev.canary.map(|c| c.requests), Some(30.0), "{ev:?}");
    assert_eq!(ev.baseline.map(|b| b.requests), Some(270.0), "{ev:?}");
    // Without the anchor the first measurement only anchors, and three seconds of the
    // canary are lost.
    let mut plain = AnalysisRun::new(&spec(errors), &target()).expect("run");
    let first = plain.measure(|_| Some(&Fresh), 1003).await;
    assert!(
        first[0].outcome.reason.contains("anchored"),
        "{:?}",
        first[0].outcome
    );
}

#[test]
fn queries_are_rendered_per_arm() {
    let run = AnalysisRun::new(
        &spec(serde_json::json!([{
            "name": "ratio", "provider": "prom",
            "relative": {"query": "x{pod=~\"{{arm}}-.*\", ns=\"{{namespace}}\"}", "maxRatio": 1.1}
        }])),
        &target(),
    )
    .expect("run");
    let q = run.queries();
    assert_eq!(q[0].1[0].2, r#"x{pod=~"checkout-canary-.*", ns="shop"}"#);
    assert_eq!(q[0].1[1].2, r#"x{pod=~"checkout-stable-.*", ns="shop"}"#);
}

#[test]
fn an_offset_baseline_looks_into_the_past_and_the_canary_does_not() {
    let mut t = target();
    t.baseline = t.canary.clone();
    t.baseline_offset = Some(600);
    let run = AnalysisRun::new(
        &spec(serde_json::json!([{
            "name": "errors", "provider": "prom",
            "errorRate": {"requests": "sum(r{a=\"{{arm}}\"})", "errors": "sum(e{a=\"{{arm}}\"})"}
        }])),
        &t,
    )
    .expect("run");
    let q = run.queries();
    let rendered: Vec<(Cohort, &str)> = q[0].1.iter().map(|r| (r.0, r.2)).collect();
    assert_eq!(
        rendered,
        [
            (Cohort::Canary, r#"sum(r{a="checkout-canary"})"#),
            (Cohort::Canary, r#"sum(e{a="checkout-canary"})"#),
            (
                Cohort::Baseline,
                r#"sum(r{a="checkout-canary"} offset 10m)"#
            ),
            (
                Cohort::Baseline,
                r#"sum(e{a="checkout-canary"} offset 10m)"#
            ),
        ]
    );
}

#[test]
fn config_errors_name_the_field() {
    let bad = spec(serde_json::json!([
        threshold("ok", serde_json::json!({})),
        {"name": "broken", "provider": "prom",
         "errorRate": {"requests": "sum(r{a=\"{{arm}}\"})", "errors": "sum(e{a=\"{{args.nope}}\"})"}}
    ]));
    let err = AnalysisRun::new(&bad, &target())
        .err()
        .expect("undeclared argument");
    assert_eq!(err.path, "metrics[1].errorRate.errors");
    let mut t = target();
    t.args.push(("extra".into(), "x".into()));
    let err = AnalysisRun::new(
        &spec(serde_json::json!([threshold("ok", serde_json::json!({}))])),
        &t,
    )
    .err()
    .expect("unknown argument");
    assert_eq!(err.path, "args");
    assert!(err.message.contains("extra"), "{err}");
    let mut t = target();
    t.args = vec![("service".into(), "x\"}) or vector(1) #".into())];
    // The injection stays a label value: it renders and parses as one selector.
    let run = AnalysisRun::new(
        &spec(serde_json::json!([threshold("ok", serde_json::json!({}))])),
        &t,
    )
    .expect("neutralised");
    assert!(
        run.queries()[0].1[0]
            .2
            .contains(r#"job="x\"}) or vector(1) #""#)
    );
}

#[test]
fn intervals_decide_what_is_due() {
    let mut run = AnalysisRun::new(
        &spec(serde_json::json!([
            threshold("fast", serde_json::json!({"interval": "10s"})),
            threshold("slow", serde_json::json!({"interval": "1m"}))
        ])),
        &target(),
    )
    .expect("run");
    assert_eq!(run.due(1000), vec![0, 1]);
    assert_eq!(run.next_due_in(1000), Some(0), "never measured: due now");
    run.record(0, &[one(0.5)], 1000);
    run.record(1, &[one(0.5)], 1000);
    assert_eq!(run.due(1005), Vec::<usize>::new());
    assert_eq!(run.next_due_in(1005), Some(5), "the fast metric in 5 s");
    assert_eq!(run.due(1010), vec![0]);
    assert_eq!(run.next_due_in(1012), Some(0), "overdue is due now");
    assert_eq!(run.due(1060), vec![0, 1]);
}

#[test]
fn critical_fail_comes_first_and_dry_run_never_acts() {
    let mut run = AnalysisRun::new(
        &spec(serde_json::json!([
            threshold(
                "shadow",
                serde_json::json!({"dryRun": true, "critical": true})
            ),
            threshold("soft", serde_json::json!({})),
            threshold("hard", serde_json::json!({"critical": true}))
        ])),
        &target(),
    )
    .expect("run");
    run.record(0, &[one(5.0)], 0);
    run.record(1, &[one(0.5)], 0);
    run.record(2, &[one(0.5)], 0);
    assert_eq!(
        run.decision(),
        Decision::Pass,
        "a dry-run Fail does not act"
    );
    run.record(1, &[one(5.0)], 10);
    assert!(
        matches!(run.decision(), Decision::Fail { critical: false, ref metric, .. } if metric == "soft")
    );
    run.record(2, &[one(5.0)], 10);
    assert!(
        matches!(run.decision(), Decision::Fail { critical: true, ref metric, .. } if metric == "hard")
    );
}

#[test]
fn problems_in_a_row_reach_the_inconclusive_limit_and_a_result_resets_them() {
    let mut s = spec(serde_json::json!([threshold("m", serde_json::json!({}))]));
    s.inconclusive_limit = 2;
    s.on_inconclusive = InconclusiveAction::Rollback;
    let mut run = AnalysisRun::new(&s, &target()).expect("run");
    run.record(0, &[Ok(vec![])], 0);
    assert_eq!(run.decision(), Decision::Running);
    run.record(0, &[one(0.5)], 10);
    run.record(0, &[Ok(vec![])], 20);
    assert_eq!(run.decision(), Decision::Running, "the count restarted");
    run.record(0, &[Err(SourceError::Decode("x".into()))], 30);
    match run.decision() {
        Decision::Inconclusive { action, reason, .. } => {
            assert_eq!(action, InconclusiveAction::Rollback);
            assert!(reason.contains("2 measurements in a row"), "{reason}");
        }
        other => panic!("expected Inconclusive, got {other:?}"),
    }
}

#[test]
fn on_no_data_fail_turns_missing_data_into_a_fail() {
    let mut run = AnalysisRun::new(
        &spec(serde_json::json!([threshold(
            "m",
            serde_json::json!({"onNoData": "Fail"})
        )])),
        &target(),
    )
    .expect("run");
    let m = run.record(0, &[Ok(vec![])], 0);
    assert_eq!(m.outcome.verdict, Verdict::Fail);
    assert!(
        m.outcome
            .reason
            .starts_with("no data, and onNoData is Fail"),
        "{}",
        m.outcome.reason
    );
}

#[test]
fn evidence_records_the_rendered_queries_and_values() {
    let mut run = AnalysisRun::new(
        &spec(serde_json::json!([threshold("m", serde_json::json!({}))])),
        &target(),
    )
    .expect("run");
    let m = run.record(0, &[one(0.25)], 42);
    assert_eq!(m.queries[0].value, Some(0.25));
    assert!(m.queries[0].promql.contains("checkout-canary"));
    let json = serde_json::to_value(&m).expect("json");
    assert_eq!(json["verdict"], "Pass");
    assert_eq!(json["statistic"]["threshold"], 1.0);
}

fn error_rate(name: &str, provider: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name, "provider": provider, "interval": "10s",
        "errorRate": {"requests": "sum(r{a=\"{{arm}}\"})", "errors": "sum(e{a=\"{{arm}}\"})"},
    })
}

#[test]
fn only_anytime_valid_metrics_follow_the_scrape_interval() {
    let s = spec(serde_json::json!([
        error_rate("errors", "prom"),
        threshold("up", serde_json::json!({"interval": "10s"})),
        error_rate("elsewhere", "other"),
    ]));
    let mut run = AnalysisRun::new(&s, &target()).expect("run");
    run.measure_every("prom", 1);
    assert_eq!(
        run.intervals(),
        vec![("errors", 1), ("up", 10), ("elsewhere", 10)],
        "a threshold keeps its interval: each extra look is another chance to fail"
    );
    run.measure_every("other", 30);
    assert_eq!(run.intervals()[2], ("elsewhere", 10), "never less often");
    let counters = [one(100.0), one(1.0), one(100.0), one(1.0)];
    run.record(0, &counters, 0);
    run.record(1, &[one(0.5)], 0);
    run.record(2, &counters, 0);
    assert_eq!(run.next_due_in(0), Some(1));
    assert_eq!(run.due(1), vec![0], "due again one scrape later");
    assert_eq!(run.due(10), vec![0, 1, 2]);
}

#[test]
fn unchanged_answers_reuse_the_last_judgment_unless_it_had_a_problem() {
    let s = spec(serde_json::json!([error_rate("errors", "prom")]));
    let mut run = AnalysisRun::new(&s, &target()).expect("run");
    let answers = [one(1000.0), one(5.0), one(1000.0), one(5.0)];
    run.record(0, &answers, 0);
    let grown = [one(2000.0), one(10.0), one(2000.0), one(10.0)];
    let judged = run.record(0, &grown, 1);
    let again = run.record(0, &grown, 2);
    assert_eq!(again.at, 2);
    assert_eq!(
        again.outcome, judged.outcome,
        "no new sample, the same judgment"
    );
    // The same counters a whole interval later: no traffic, and the judge says so.
    let idle = run.record(0, &grown, 11);
    assert_eq!(
        idle.outcome.problem,
        Some(Problem::NoData),
        "{}",
        idle.outcome.reason
    );
    // A judgment with a problem is asked again, so the inconclusive limit still counts.
    let mut s = spec(serde_json::json!([threshold("m", serde_json::json!({}))]));
    s.inconclusive_limit = 2;
    let mut run = AnalysisRun::new(&s, &target()).expect("run");
    run.record(0, &[Ok(vec![])], 0);
    run.record(0, &[Ok(vec![])], 10);
    assert!(
        matches!(run.decision(), Decision::Inconclusive { .. }),
        "{:?}",
        run.decision()
    );
}

#[test]
fn a_faster_cadence_counts_problems_once_per_interval() {
    let mut s = spec(serde_json::json!([error_rate("errors", "prom")]));
    s.inconclusive_limit = 3;
    let mut run = AnalysisRun::new(&s, &target()).expect("run");
    run.measure_every("prom", 1);
    run.record(0, &[one(100.0), one(1.0), one(100.0), one(1.0)], 0);
    // Seconds without a canary request: a problem each second, counted every 10 s.
    for t in 1..=19 {
        run.record(
            0,
            &[one(100.0), one(1.0), one(100.0 + t as f64), one(1.0)],
            t,
        );
    }
    assert_eq!(
        run.decision(),
        Decision::Running,
        "two intervals of problems"
    );
    run.record(0, &[one(100.0), one(1.0), one(130.0), one(1.0)], 21);
    assert!(
        matches!(run.decision(), Decision::Inconclusive { .. }),
        "the third interval: {:?}",
        run.decision()
    );
    // One good measurement starts the count again.
    run.record(0, &[one(110.0), one(1.0), one(140.0), one(1.0)], 22);
    assert_eq!(run.decision(), Decision::Running);
}

#[test]
fn min_requests_are_served_only_when_every_acting_counting_metric_says_so() {
    let run = AnalysisRun::new(
        &spec(serde_json::json!([
            threshold("up", serde_json::json!({})),
            error_rate("errors", "prom")
        ])),
        &target(),
    )
    .expect("run");
    assert!(
        !run.served_min_requests(),
        "the errorRate metric has not been measured"
    );
    // All dry-run: nothing acts, so nothing was served, whatever the threshold says.
    let mut shadow = AnalysisRun::new(
        &spec(serde_json::json!([threshold(
            "up",
            serde_json::json!({"dryRun": true})
        )])),
        &target(),
    )
    .expect("run");
    shadow.record(0, &[one(0.5)], 0);
    assert!(!shadow.served_min_requests());
    // Only a threshold acting: it counts no requests and does not stand in the way.
    let mut plain = AnalysisRun::new(
        &spec(serde_json::json!([threshold("up", serde_json::json!({}))])),
        &target(),
    )
    .expect("run");
    plain.record(0, &[one(0.5)], 0);
    assert!(plain.served_min_requests());
}
