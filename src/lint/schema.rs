//! Every schema problem of a template in one run, each with its field path.
//!
//! Decoding stops at the first field that does not fit the Rust types, so fixing one error used
//! to reveal the next. This walks the spec against the CRD's own OpenAPI schema (generated from
//! the same types) and collects them all: wrong types, missing required fields, values outside
//! an enum, and unknown fields.

use serde_json::Value;

use super::finding::{Raw, error};
use crate::api::analysis::AnalysisTemplate;

/// The problems of a template's `spec` against the AnalysisTemplate CRD's schema. Only the
/// kinds that stop decoding are looked for (with unknown fields, so that they are listed in the
/// same run); ranges and rules are lint's own checks once the spec decodes.
pub fn problems(spec: &Value) -> Vec<Raw> {
    use kube::CustomResourceExt;
    if spec.is_null() {
        return vec![error("spec", "missing (required)")];
    }
    let crd = serde_json::to_value(AnalysisTemplate::crd()).unwrap_or_default();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut out = Vec::new();
    walk(spec, schema, "spec", &mut out);
    out
}

/// Whether a problem stops decoding (an unknown field does not).
pub fn blocks_decoding(problem: &Raw) -> bool {
    !problem.2.starts_with("unknown field")
}

fn walk(value: &Value, schema: &Value, path: &str, out: &mut Vec<Raw>) {
    if value.is_null() && schema["nullable"] == true {
        return;
    }
    if let Some(kind) = schema["type"].as_str()
        && !fits(value, kind)
    {
        out.push(error(
            path,
            format!(
                "invalid type: expected {}, found {}",
                article(kind),
                describe(value)
            ),
        ));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let names: Vec<String> = allowed.iter().map(ToString::to_string).collect();
        out.push(error(
            path,
            format!("{} is not one of {}", describe(value), names.join(", ")),
        ));
        return;
    }
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, &schema["items"], &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(fields) => {
            for key in schema["required"].as_array().into_iter().flatten() {
                if let Some(key) = key.as_str()
                    && !fields.contains_key(key)
                {
                    out.push(error(format!("{path}.{key}"), "missing (required)"));
                }
            }
            let properties = schema["properties"].as_object();
            for (key, field) in fields {
                let at = format!("{path}.{key}");
                match properties.and_then(|p| p.get(key)) {
                    Some(s) => walk(field, s, &at, out),
                    None if schema["additionalProperties"].is_object() => {
                        walk(field, &schema["additionalProperties"], &at, out)
                    }
                    None if properties.is_some() => out.push(error(
                        at,
                        "unknown field (the apiserver refuses it under strict field validation)",
                    )),
                    None => {}
                }
            }
        }
        _ => {}
    }
}

fn fits(value: &Value, kind: &str) -> bool {
    match kind {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        _ => true,
    }
}

fn article(kind: &str) -> &'static str {
    match kind {
        "object" => "a mapping",
        "array" => "a list",
        "string" => "a string",
        "boolean" => "true or false",
        "integer" => "an integer",
        "number" => "a number",
        _ => "another type",
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "nothing (null)".to_owned(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a mapping".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_listed_at_once_with_its_path() {
        let spec = serde_json::json!({
            "metrics": [
                {"name": "a", "provider": "p", "threshold": {"query": "up", "max": "high"}},
                {"name": "b", "threshold": {"query": "up", "max": 1}},
                {"name": "c", "provider": "p", "interval": 10,
                 "errorRate": {"requests": "r", "errors": "e", "minRequests": "many"}},
                {"name": "d", "provider": "p", "onNoData": "Never", "frequency": "1m",
                 "threshold": {"query": "up", "max": 1}}
            ],
            "onInconclusive": "Shrug",
        });
        let found = problems(&spec);
        for (path, words) in [
            (
                "spec.metrics[0].threshold.max",
                "invalid type: expected a number, found the string \"high\"",
            ),
            ("spec.metrics[1].provider", "missing"),
            ("spec.metrics[2].interval", "expected a string"),
            (
                "spec.metrics[2].errorRate.minRequests",
                "expected an integer",
            ),
            ("spec.metrics[3].onNoData", "is not one of"),
            ("spec.metrics[3].frequency", "unknown field"),
            ("spec.onInconclusive", "\"Shrug\" is not one of"),
        ] {
            assert!(
                found.iter().any(|(p, _, m)| p == path && m.contains(words)),
                "{path}: {words}\n{found:#?}"
            );
        }
        assert_eq!(found.len(), 7, "{found:#?}");
    }

    #[test]
    fn a_sound_spec_has_no_problems() {
        let spec = serde_json::json!({
            "args": [{"name": "route", "type": "string", "default": "/"}],
            "metrics": [{"name": "e", "provider": "p", "interval": "10s",
                "errorRate": {"requests": "r", "errors": "e", "toleratedRatio": 1.5}}],
        });
        assert_eq!(problems(&spec), Vec::new());
    }
}
