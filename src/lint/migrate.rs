//! Templates written for Argo Rollouts or Flagger: recognised, and answered with how to write
//! them for rollguard, with the equivalent metric printed where one can be read off.

use serde_json::Value;

use super::finding::{Raw, error, warning};

/// What to do with a document of another tool, or None when it is not one.
pub fn hints(doc: &Value) -> Option<Vec<Raw>> {
    let api = doc["apiVersion"].as_str().unwrap_or("");
    let kind = doc["kind"].as_str().unwrap_or("");
    if api.starts_with("argoproj.io/") && kind.ends_with("AnalysisTemplate") {
        return Some(argo(doc));
    }
    if api.starts_with("flagger.app/") && kind == "MetricTemplate" {
        return Some(flagger(doc));
    }
    None
}

const CONVERT: &str = "an Argo Rollouts template: rollguard's is rollguard.dev/v1alpha1. To convert it: \
give each argument a type (string, integer, number or duration); put the Prometheus address in a \
MetricProvider and name it in each metric's provider; write queries for one arm with {{arm}} \
(the canary's or the baseline's workload); a successCondition on a success or error ratio is \
best an errorRate metric on the two raw counters, and any other condition a threshold";

fn argo(doc: &Value) -> Vec<Raw> {
    let mut out = vec![error("apiVersion", CONVERT)];
    for (i, arg) in doc["spec"]["args"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if arg.get("type").is_none() {
            out.push(warning(
                format!("spec.args[{i}]"),
                format!(
                    "add type: string (or integer, number, duration) to {}: rollguard checks each value against its type before it enters a query",
                    arg["name"]
                ),
            ));
        }
    }
    for (i, m) in doc["spec"]["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let query = m["provider"]["prometheus"]["query"].as_str();
        let condition = m["successCondition"].as_str();
        if let (Some(q), Some(c)) = (query, condition)
            && let Some(equivalent) = threshold(m["name"].as_str().unwrap_or("metric"), q, c)
        {
            out.push(warning(
                format!("spec.metrics[{i}]"),
                format!("the same check in rollguard (add {{{{arm}}}} to the query's selector):\n{equivalent}"),
            ));
        }
    }
    out
}

fn flagger(doc: &Value) -> Vec<Raw> {
    let query = doc["spec"]["query"].as_str().unwrap_or("<query>");
    vec![error(
        "kind",
        format!(
            "a Flagger MetricTemplate: rollguard's templates are AnalysisTemplates \
             (rollguard.dev/v1alpha1). Its query becomes a metric's threshold query (the canary's \
             bound, Flagger's thresholdRange, becomes min and max), or, for a request success \
             rate, an errorRate metric on the raw request and error counters. {{{{ target }}}} and \
             {{{{ namespace }}}} become {{{{arm}}}} and {{{{namespace}}}}; {{{{ interval }}}} a \
             duration argument. The query here: {}",
            crate::history::first_line(query, 200)
        ),
    )]
}

/// A `successCondition` of the form `result[0] OP number` as a rollguard threshold metric.
fn threshold(name: &str, query: &str, condition: &str) -> Option<String> {
    let c = condition.replace(' ', "");
    let rest = c
        .strip_prefix("result[0]")
        .or_else(|| c.strip_prefix("result"))?;
    let (bound, value) = if let Some(v) = rest.strip_prefix(">=") {
        ("min", v)
    } else if let Some(v) = rest.strip_prefix("<=") {
        ("max", v)
    } else if let Some(v) = rest.strip_prefix('>') {
        ("min", v)
    } else if let Some(v) = rest.strip_prefix('<') {
        ("max", v)
    } else {
        return None;
    };
    let value: f64 = value.parse().ok()?;
    let query = query.split_whitespace().collect::<Vec<_>>().join(" ");
    Some(format!(
        "- name: {name}\n  provider: <a MetricProvider>\n  threshold:\n    query: {query:?}\n    {bound}: {value}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lint::finding::Level;

    #[test]
    fn an_argo_template_is_recognised_with_how_to_convert_it() {
        let doc = serde_json::json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": {"name": "success-rate"},
            "spec": {
                "args": [{"name": "service-name"}],
                "metrics": [{
                    "name": "success-rate", "interval": "1m", "successCondition": "result[0] >= 0.95",
                    "provider": {"prometheus": {"address": "http://prometheus:9090",
                        "query": "sum(rate(http_requests_total{service=\"{{args.service-name}}\",code!~\"5..\"}[5m]))\n/ sum(rate(http_requests_total{service=\"{{args.service-name}}\"}[5m]))"}},
                }],
            },
        });
        let found = hints(&doc).expect("recognised");
        assert!(found[0].2.contains("an Argo Rollouts template") && found[0].1 == Level::Error);
        assert!(
            found
                .iter()
                .any(|(p, _, m)| p == "spec.args[0]" && m.contains("add type: string")),
            "{found:#?}"
        );
        let metric = found
            .iter()
            .find(|(p, _, _)| p == "spec.metrics[0]")
            .expect("an equivalent metric");
        assert!(
            metric.2.contains("threshold:") && metric.2.contains("min: 0.95"),
            "{}",
            metric.2
        );
    }

    #[test]
    fn a_flagger_metric_template_is_recognised() {
        let doc = serde_json::json!({
            "apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
            "metadata": {"name": "error-rate"},
            "spec": {"provider": {"type": "prometheus"}, "query": "100 - sum(rate(x{code!~\"5..\"}[{{ interval }}]))"},
        });
        let found = hints(&doc).expect("recognised");
        assert!(
            found[0].2.contains("a Flagger MetricTemplate"),
            "{found:#?}"
        );
        assert!(hints(&serde_json::json!({"apiVersion": "rollguard.dev/v1alpha1", "kind": "AnalysisTemplate"})).is_none());
    }

    #[test]
    fn only_plain_conditions_are_translated() {
        assert!(threshold("m", "q", "result[0] <= 0.01").is_some_and(|t| t.contains("max: 0.01")));
        assert!(threshold("m", "q", "len(result) > 0 && result[0] > 1").is_none());
        assert!(threshold("m", "q", "result[0] == 1").is_none());
    }
}
