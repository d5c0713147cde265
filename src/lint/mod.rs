//! `rollguard lint`: offline checks of analysis templates, before they reach a cluster.
//!
//! - the schema: types, required and unknown fields, ranges, the CRD's CEL rules;
//! - arguments: declared, used, defaults of the right type;
//! - PromQL: every query parses once its placeholders are filled;
//! - soundness of each judgment:
//!   - `threshold` and `relative` on a counter need `rate()`/`increase()`: a raw counter only
//!     grows, so the comparison drifts with the age of the pods;
//!   - `errorRate` and `latency` need raw counters: rollguard takes the increments itself, and
//!     `rate()` windows overlap between measurements, counting requests again;
//!   - `latency` buckets must keep `le` through every aggregation;
//!   - a query that does not use `{{arm}}` gives both arms the same answer.
//!
//! Every finding names `file:path.to.field`. Errors make the exit code non-zero.

mod finding;
mod migrate;
mod query;
mod schema;
mod steps;

use std::collections::BTreeMap;
use std::path::Path;

use crate::analysis::judge::Judge;
use crate::analysis::render::{bind_args, check_template, placeholders};
use crate::analysis::run::query_path;
use crate::api::analysis::{AnalysisTemplateSpec, ArgumentType, Metric};
use crate::templates::{API_VERSION, decode_spec, documents, is_template};
pub use finding::{FileReport, Finding, Level, Raw};
use finding::{error, warning};
use query::lint_query;
pub use steps::{Traffic, parse_error_rate};

/// Lints every template in a file, and its Rollouts: with `traffic`, their steps against the
/// time their analysis needs (`templates` holds the errorRate judgments of every file linted).
pub fn lint_file(
    path: &Path,
    templates: &BTreeMap<String, Vec<crate::analysis::share::ShareConfig>>,
    traffic: Option<Traffic>,
) -> FileReport {
    let file = path.display().to_string();
    let mut report = FileReport {
        file: file.clone(),
        ..FileReport::default()
    };
    let docs = match documents(path) {
        Ok(d) => d,
        Err(e) => {
            report.findings.push(Finding {
                file,
                path: String::new(),
                severity: Level::Error,
                message: e
                    .to_string()
                    .replacen(&format!("{}: ", path.display()), "", 1),
            });
            return report;
        }
    };
    let several = docs.len() > 1;
    for (i, doc) in docs.iter().enumerate() {
        let prefix = if several {
            format!("#{}:", i + 1)
        } else {
            String::new()
        };
        let findings = if steps::is_rollout(doc) {
            report.rollouts += 1;
            steps::lint_rollout(doc, templates, traffic)
        } else if is_template(doc) || migrate::hints(doc).is_some() {
            report.templates += 1;
            lint_document(doc)
        } else {
            continue;
        };
        for (path, severity, message) in findings {
            report.findings.push(Finding {
                file: file.clone(),
                path: format!("{prefix}{path}"),
                severity,
                message,
            });
        }
    }
    if report.templates == 0 && report.rollouts == 0 {
        report.findings.push(Finding {
            file,
            path: String::new(),
            severity: Level::Warning,
            message: "no AnalysisTemplate, ClusterAnalysisTemplate or Rollout in this file".into(),
        });
    }
    report
}

/// Lints one template document.
pub fn lint_document(doc: &serde_json::Value) -> Vec<Raw> {
    // Another tool's template: say how to write it for rollguard instead of listing the ways
    // it does not parse.
    if let Some(hints) = migrate::hints(doc) {
        return hints;
    }
    let mut out = Vec::new();
    if doc["apiVersion"].as_str() != Some(API_VERSION) {
        out.push(error(
            "apiVersion",
            format!("must be {API_VERSION}, found {}", doc["apiVersion"]),
        ));
    }
    match doc["metadata"]["name"].as_str() {
        Some(name) if is_dns_label(name, 253) => {}
        Some(name) => out.push(error(
            "metadata.name",
            format!("{name:?} is not a valid name"),
        )),
        None => out.push(error("metadata.name", "missing")),
    }
    // Every field that keeps the spec from decoding, at once; the judgments' own checks need it
    // decoded.
    let problems = schema::problems(&doc["spec"]);
    if problems.iter().any(schema::blocks_decoding) {
        out.extend(problems);
        return out;
    }
    match decode_spec(doc) {
        Err(e) => out.push(error(e.path, e.message)),
        Ok((spec, unknown)) => {
            for path in unknown {
                out.push(error(
                    path,
                    "unknown field (the apiserver refuses it under strict field validation)",
                ));
            }
            lint_spec(&spec, &mut out);
        }
    }
    out
}

fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn lint_spec(spec: &AnalysisTemplateSpec, out: &mut Vec<Raw>) {
    if spec.metrics.is_empty() || spec.metrics.len() > 16 {
        out.push(error(
            "spec.metrics",
            format!("needs 1 to 16 metrics, found {}", spec.metrics.len()),
        ));
    }
    if !(1..=1000).contains(&spec.inconclusive_limit) {
        out.push(error("spec.inconclusiveLimit", "must be within 1..1000"));
    }
    let types: BTreeMap<String, ArgumentType> =
        spec.args.iter().map(|a| (a.name.clone(), a.kind)).collect();
    lint_args(spec, out);
    let mut used_args: Vec<String> = Vec::new();
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, metric) in spec.metrics.iter().enumerate() {
        let at = format!("spec.metrics[{i}]");
        if let Some(first) = names.insert(&metric.name, i) {
            out.push(error(
                format!("{at}.name"),
                format!("{:?} is also the name of metrics[{first}]", metric.name),
            ));
        }
        if !is_dns_label(&metric.name, 63) || metric.name.contains('.') {
            out.push(error(
                format!("{at}.name"),
                format!(
                    "{:?} must be lowercase letters, digits and '-'",
                    metric.name
                ),
            ));
        }
        match metric.interval.parse() {
            Ok(d) if d.as_secs() >= 1 => {}
            Ok(_) => out.push(error(format!("{at}.interval"), "must be at least 1s")),
            Err(e) => out.push(error(
                format!("{at}.interval"),
                format!("{:?} is not a duration: {e}", metric.interval.0),
            )),
        }
        // The arguments a metric's queries use count as used even when the metric has another
        // error: the warning would send the author after the wrong problem.
        for query in all_queries(metric) {
            for name in placeholders(query) {
                if let Some(arg) = name.strip_prefix("args.") {
                    used_args.push(arg.to_owned());
                }
            }
        }
        let judge = match Judge::new(metric) {
            Ok(j) => j,
            Err(e) => {
                out.push(error(at, e));
                continue;
            }
        };
        lint_ranges(metric, &at, out);
        let mut seen = std::collections::BTreeSet::new();
        for (_, role, query) in judge.queries(metric) {
            if !seen.insert((role, query)) {
                continue;
            }
            let path = format!("spec.{}", query_path(i, metric, role));
            match check_template(query, &types) {
                Err(e) => out.push(error(&path, e.to_string())),
                Ok(probe) => lint_query(metric, role, query, &probe, &path, out),
            }
        }
    }
    for (i, arg) in spec.args.iter().enumerate() {
        if !used_args.contains(&arg.name) {
            out.push(warning(
                format!("spec.args[{i}]"),
                format!("argument {:?} is declared but no query uses it", arg.name),
            ));
        }
    }
}

fn lint_args(spec: &AnalysisTemplateSpec, out: &mut Vec<Raw>) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, arg) in spec.args.iter().enumerate() {
        let at = format!("spec.args[{i}]");
        let valid_name = arg.name.len() <= 63
            && arg.name.starts_with(|c: char| c.is_ascii_alphabetic())
            && arg
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_name {
            out.push(error(
                format!("{at}.name"),
                format!(
                    "{:?} must start with a letter and hold letters, digits, '_' or '-'",
                    arg.name
                ),
            ));
        }
        if !seen.insert(&arg.name) {
            out.push(error(
                format!("{at}.name"),
                format!("{:?} is declared twice", arg.name),
            ));
        }
        if arg.default.is_some()
            && let Err(e) = bind_args(std::slice::from_ref(arg), &[])
        {
            out.push(error(format!("{at}.default"), e.to_string()));
        }
    }
}

fn lint_ranges(metric: &Metric, at: &str, out: &mut Vec<Raw>) {
    if let Some(t) = &metric.threshold {
        match (t.min, t.max) {
            (None, None) => out.push(error(format!("{at}.threshold"), "set min, max or both")),
            (Some(min), Some(max)) if min > max => out.push(error(
                format!("{at}.threshold"),
                format!("min {min} is above max {max}: nothing can pass"),
            )),
            _ => {}
        }
    }
    if let Some(r) = &metric.relative
        && r.max_ratio.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
    {
        out.push(error(format!("{at}.relative.maxRatio"), "must be above 0"));
    }
    if let Some(e) = &metric.error_rate {
        check_ratio(
            e.tolerated_ratio,
            &format!("{at}.errorRate.toleratedRatio"),
            out,
        );
        check_share(e.floor, &format!("{at}.errorRate.floor"), out);
        check_min_requests(e.min_requests, &format!("{at}.errorRate.minRequests"), out);
    }
    if let Some(l) = &metric.latency {
        check_ratio(
            l.tolerated_ratio,
            &format!("{at}.latency.toleratedRatio"),
            out,
        );
        check_share(l.floor, &format!("{at}.latency.floor"), out);
        check_min_requests(l.min_requests, &format!("{at}.latency.minRequests"), out);
        if l.quantiles.is_empty() || l.quantiles.len() > 5 {
            out.push(error(
                format!("{at}.latency.quantiles"),
                "needs 1 to 5 quantiles",
            ));
        }
        for (k, q) in l.quantiles.iter().enumerate() {
            if !(*q > 0.0 && *q < 1.0) {
                out.push(error(
                    format!("{at}.latency.quantiles[{k}]"),
                    format!("{q} is not a quantile: use a number strictly between 0 and 1 (0.99 for p99)"),
                ));
            }
        }
        if let Some(ms) = l.max_ms
            && ms.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        {
            out.push(error(format!("{at}.latency.maxMs"), "must be above 0"));
        }
    }
}

fn check_ratio(v: f64, path: &str, out: &mut Vec<Raw>) {
    if v.is_nan() || v < 1.0 {
        out.push(error(
            path,
            format!("{v} is below 1: a canary exactly as good as its baseline would fail"),
        ));
    }
}

/// Every query a metric holds, whichever judgments it sets.
fn all_queries(metric: &Metric) -> Vec<&str> {
    let mut out = Vec::new();
    if let Some(t) = &metric.threshold {
        out.push(t.query.as_str());
    }
    if let Some(r) = &metric.relative {
        out.push(r.query.as_str());
    }
    if let Some(e) = &metric.error_rate {
        out.extend([e.requests.as_str(), e.errors.as_str()]);
    }
    if let Some(l) = &metric.latency {
        out.push(l.buckets.as_str());
    }
    out
}

fn check_share(v: f64, path: &str, out: &mut Vec<Raw>) {
    if !(0.0..=1.0).contains(&v) {
        out.push(error(
            path,
            format!("{v} is not a share of requests (0 to 1)"),
        ));
    }
}

fn check_min_requests(v: i64, path: &str, out: &mut Vec<Raw>) {
    if v < 1 {
        out.push(error(path, "must be at least 1"));
    }
}

/// What a query's expression does with counters.
/// Lints several files; returns the reports in order. Rollouts' steps are held against the
/// templates of all the files.
pub fn lint_files(paths: &[std::path::PathBuf], traffic: Option<Traffic>) -> Vec<FileReport> {
    let docs: Vec<serde_json::Value> = paths
        .iter()
        .filter_map(|p| documents(p).ok())
        .flatten()
        .collect();
    let templates = steps::error_rates(&docs);
    paths
        .iter()
        .map(|p| lint_file(p, &templates, traffic))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(spec: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": API_VERSION, "kind": "AnalysisTemplate",
            "metadata": {"name": "t"}, "spec": spec,
        })
    }

    fn findings(spec: serde_json::Value) -> Vec<Raw> {
        lint_document(&template(spec))
    }

    fn has(found: &[Raw], path: &str, words: &str) -> bool {
        found.iter().any(|(p, _, m)| p == path && m.contains(words))
    }

    const ER: &str = r#"sum(http_requests_total{pod=~"{{arm}}-.*"})"#;

    #[test]
    fn a_sound_template_has_no_findings() {
        let found = findings(serde_json::json!({
            "args": [{"name": "route", "type": "string", "default": "/"}],
            "metrics": [
                {"name": "errors", "provider": "p", "errorRate": {
                    "requests": "sum(http_requests_total{pod=~\"{{arm}}-.*\", route=\"{{args.route}}\"})",
                    "errors": "sum(http_requests_total{pod=~\"{{arm}}-.*\", route=\"{{args.route}}\", code=~\"5..\"})"}},
                {"name": "latency", "provider": "p", "latency": {
                    "buckets": "sum by (le) (http_request_duration_seconds_bucket{pod=~\"{{arm}}-.*\"})"}},
                {"name": "p99", "provider": "p", "threshold": {
                    "query": "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket{pod=~\"{{arm}}-.*\"}[2m])))",
                    "max": 0.5}}
            ]
        }));
        assert!(found.is_empty(), "{found:#?}");
    }

    /// Argo Rollouts templates name their arguments `service-name`: accepted as they are.
    #[test]
    fn argo_style_hyphenated_argument_names_are_accepted() {
        let found = findings(serde_json::json!({
            "args": [{"name": "service-name", "type": "string"}],
            "metrics": [{"name": "errors", "provider": "p", "errorRate": {
                "requests": "sum(http_requests_total{service=\"{{args.service-name}}\", pod=~\"{{arm}}-.*\"})",
                "errors": "sum(http_requests_total{service=\"{{args.service-name}}\", pod=~\"{{arm}}-.*\", code=~\"5..\"})"}}]
        }));
        assert!(found.is_empty(), "{found:#?}");
        let found = findings(serde_json::json!({
            "args": [{"name": "9lives", "type": "string"}],
            "metrics": [{"name": "m", "provider": "p", "threshold": {"query": "up{a=\"{{arm}}\"}", "max": 1}}]
        }));
        assert!(
            has(&found, "spec.args[0].name", "must start with a letter"),
            "{found:#?}"
        );
    }

    #[test]
    fn a_threshold_on_a_raw_counter_is_flagged() {
        let found = findings(
            serde_json::json!({"metrics": [{"name": "m", "provider": "p",
            "threshold": {"query": "sum(errors_total{pod=~\"{{arm}}-.*\"})", "max": 10}}]}),
        );
        assert!(
            has(&found, "spec.metrics[0].threshold.query", "without rate()"),
            "{found:#?}"
        );
    }

    #[test]
    fn error_rate_on_a_rate_is_flagged() {
        let found = findings(
            serde_json::json!({"metrics": [{"name": "m", "provider": "p",
            "errorRate": {"requests": "sum(rate(r_total{d=\"{{arm}}\"}[1m]))", "errors": ER}}]}),
        );
        assert!(
            has(&found, "spec.metrics[0].errorRate.requests", "raw counter"),
            "{found:#?}"
        );
        let found = findings(
            serde_json::json!({"metrics": [{"name": "m", "provider": "p",
            "errorRate": {"requests": ER, "errors": "sum(increase(envoy_rq_xx{d=\"{{arm}}\"}[1m]))"}}]}),
        );
        assert!(
            has(&found, "spec.metrics[0].errorRate.errors", "raw counter"),
            "{found:#?}"
        );
    }

    #[test]
    fn latency_must_keep_le_and_say_its_unit() {
        let found = findings(
            serde_json::json!({"metrics": [{"name": "m", "provider": "p",
            "latency": {"buckets": "sum(istio_request_duration_milliseconds_bucket{d=\"{{arm}}\"})"}}]}),
        );
        assert!(
            has(&found, "spec.metrics[0].latency.buckets", "drops `le`"),
            "{found:#?}"
        );
        assert!(
            has(&found, "spec.metrics[0].latency.bucketUnit", "milliseconds"),
            "{found:#?}"
        );
    }

    #[test]
    fn queries_without_arm_and_bad_promql_are_errors() {
        let found = findings(serde_json::json!({"metrics": [
            {"name": "a", "provider": "p", "relative": {"query": "sum(rate(x_total[1m]))", "maxRatio": 1.2}},
            {"name": "b", "provider": "p", "threshold": {"query": "sum(rate(x_total{d=\"{{arm}}\"}[1m]) / ", "max": 1}}
        ]}));
        assert!(
            has(&found, "spec.metrics[0].relative.query", "{{arm}}"),
            "{found:#?}"
        );
        assert!(
            has(&found, "spec.metrics[1].threshold.query", "does not parse"),
            "{found:#?}"
        );
    }

    #[test]
    fn an_argument_used_by_a_metric_with_another_error_is_not_called_unused() {
        // Two judgments in one metric is an error; its queries still use the argument.
        let found = findings(serde_json::json!({
            "args": [{"name": "route", "type": "string"}],
            "metrics": [{"name": "m", "provider": "p",
                "threshold": {"query": "up{a=\"{{arm}}\", r=\"{{args.route}}\"}", "max": 1},
                "relative": {"query": "up{a=\"{{arm}}\"}", "maxRatio": 2}}]
        }));
        assert!(
            has(&found, "spec.metrics[0]", "more than one judgment"),
            "{found:#?}"
        );
        assert!(
            !has(&found, "spec.args[0]", "no query uses it"),
            "{found:#?}"
        );
    }

    #[test]
    fn schema_problems_name_their_fields() {
        let found = findings(serde_json::json!({
            "args": [{"name": "n", "type": "integer", "default": "ten"}, {"name": "unused", "type": "string"}],
            "metrics": [
                {"name": "Dup", "provider": "p", "errorRate": {"requests": ER, "errors": ER, "toleratedRatio": 0.8, "floor": 2}},
                {"name": "Dup", "provider": "p", "interval": "soon", "latency": {"buckets": "sum by (le) (d_seconds_bucket{a=\"{{arm}}\"})", "quantiles": [99]}},
                {"name": "two", "provider": "p", "threshold": {"query": "up{a=\"{{arm}}\"}", "min": 2, "max": 1}},
                {"name": "none", "provider": "p", "frequency": "1m"}
            ]
        }));
        for (path, words) in [
            ("spec.args[0].default", "not a valid integer"),
            ("spec.args[1]", "no query uses it"),
            ("spec.metrics[0].name", "lowercase"),
            ("spec.metrics[1].name", "also the name of metrics[0]"),
            ("spec.metrics[0].errorRate.toleratedRatio", "below 1"),
            ("spec.metrics[0].errorRate.floor", "share"),
            ("spec.metrics[1].interval", "not a duration"),
            ("spec.metrics[1].latency.quantiles[0]", "not a quantile"),
            ("spec.metrics[2].threshold", "nothing can pass"),
            ("spec.metrics[3]", "no judgment"),
            ("spec.metrics[3].frequency", "unknown field"),
        ] {
            assert!(has(&found, path, words), "{path}: {words}\n{found:#?}");
        }
    }

    #[test]
    fn type_errors_and_bad_headers_are_reported() {
        let mut doc = template(
            serde_json::json!({"metrics": [{"name": "m", "provider": "p",
            "threshold": {"query": "up{a=\"{{arm}}\"}", "max": "high"}}]}),
        );
        doc["apiVersion"] = "rollguard.dev/v1".into();
        let found = lint_document(&doc);
        assert!(has(&found, "apiVersion", "v1alpha1"), "{found:#?}");
        assert!(
            has(&found, "spec.metrics[0].threshold.max", "invalid type"),
            "{found:#?}"
        );
    }

    #[test]
    fn findings_print_as_file_and_path() {
        let dir = std::env::temp_dir().join(format!("rollguard-lint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("t.yaml");
        std::fs::write(
            &file,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n---\napiVersion: rollguard.dev/v1alpha1\nkind: AnalysisTemplate\nmetadata: {name: t}\nspec:\n  metrics:\n  - name: m\n    provider: p\n    threshold: {query: 'sum(x_total{a=\"{{arm}}\"})', max: 1}\n",
        )
        .expect("write");
        let report = lint_file(&file, &BTreeMap::new(), None);
        assert_eq!(report.templates, 1);
        let line = report.findings[0].to_string();
        assert!(
            line.starts_with(&format!(
                "{}:#2:spec.metrics[0].threshold.query: error:",
                file.display()
            )),
            "{line}"
        );
        std::fs::write(&file, "metrics: [unclosed").expect("write");
        let report = lint_file(&file, &BTreeMap::new(), None);
        assert!(
            report.findings[0].message.contains("not valid YAML"),
            "{:?}",
            report.findings
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
