//! Reading analysis templates from YAML files, for `rollguard lint` and `rollguard backtest`.
//!
//! A file may hold several documents of any kind; only `AnalysisTemplate` and
//! `ClusterAnalysisTemplate` objects are read. Problems are reported with the field path the
//! apiserver would name, e.g. `spec.metrics[0].errorRate.requests`.

use std::path::Path;

use serde_json::Value;

use crate::api::analysis::AnalysisTemplateSpec;

pub const API_VERSION: &str = "rollguard.dev/v1alpha1";
pub const KINDS: [&str; 2] = ["AnalysisTemplate", "ClusterAnalysisTemplate"];

/// One template read from a file.
#[derive(Clone, Debug)]
pub struct Template {
    /// Position of the document in its file, from 0.
    pub document: usize,
    pub kind: String,
    pub name: String,
    pub spec: AnalysisTemplateSpec,
}

/// A problem at a field.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Reads every YAML document of a file.
pub fn documents(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    serde_saphyr::from_multiple::<Value>(&text)
        .map(|docs| docs.into_iter().filter(|d| !d.is_null()).collect())
        .map_err(|e| anyhow::anyhow!("{}: not valid YAML: {e}", path.display()))
}

/// Whether a document is an analysis template.
pub fn is_template(doc: &Value) -> bool {
    doc["kind"].as_str().is_some_and(|k| KINDS.contains(&k))
}

/// Decodes a template document's spec. The first error is returned with its path; keys the
/// types do not know are listed in `unknown`, each a path.
pub fn decode_spec(doc: &Value) -> Result<(AnalysisTemplateSpec, Vec<String>), FieldError> {
    let spec = doc.get("spec").ok_or_else(|| FieldError {
        path: "spec".into(),
        message: "missing".into(),
    })?;
    let mut unknown = Vec::new();
    let mut record = |p: serde_ignored::Path| {
        unknown.push(format!("spec.{}", json_path(&p.to_string())));
    };
    let de = serde_ignored::Deserializer::new(spec, &mut record);
    let decoded: Result<AnalysisTemplateSpec, _> = serde_path_to_error::deserialize(de);
    match decoded {
        Ok(spec) => {
            unknown.sort();
            Ok((spec, unknown))
        }
        Err(e) => {
            let inner = e.path().to_string();
            Err(FieldError {
                path: if inner == "." {
                    "spec".into()
                } else {
                    format!("spec.{inner}")
                },
                message: e.into_inner().to_string(),
            })
        }
    }
}

/// serde_ignored writes sequence indexes as `metrics.0.name`; Kubernetes users read
/// `metrics[0].name`.
fn json_path(dotted: &str) -> String {
    let mut out = String::new();
    for part in dotted.split('.') {
        if part == "?" {
            // An Option layer, not a key.
            continue;
        }
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// Every template of a file, strictly: a document that does not decode is an error.
pub fn load(path: &Path) -> anyhow::Result<Vec<Template>> {
    let mut out = Vec::new();
    for (i, doc) in documents(path)?.iter().enumerate() {
        if !is_template(doc) {
            continue;
        }
        let (spec, unknown) = decode_spec(doc)
            .map_err(|e| anyhow::anyhow!("{}: {}: {}", path.display(), e.path, e.message))?;
        if let Some(first) = unknown.first() {
            anyhow::bail!("{}: {first}: unknown field", path.display());
        }
        out.push(Template {
            document: i,
            kind: doc["kind"].as_str().unwrap_or_default().to_owned(),
            name: doc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            spec,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(spec: serde_json::Value) -> Value {
        serde_json::json!({"apiVersion": API_VERSION, "kind": "AnalysisTemplate", "metadata": {"name": "t"}, "spec": spec})
    }

    #[test]
    fn type_errors_name_the_field() {
        let e = decode_spec(&doc(serde_json::json!({
            "metrics": [{"name": "m", "provider": "p", "errorRate": {"requests": "r", "errors": "e", "minRequests": "many"}}]
        })))
        .expect_err("a string where a number belongs");
        assert_eq!(e.path, "spec.metrics[0].errorRate.minRequests");
        assert!(e.message.contains("invalid type"), "{}", e.message);
    }

    #[test]
    fn unknown_keys_are_listed_with_their_paths() {
        let (_, unknown) = decode_spec(&doc(serde_json::json!({
            "metrics": [{"name": "m", "provider": "p", "url": "http://x", "threshold": {"query": "q", "max": 1, "maximum": 2}}]
        })))
        .expect("decodes");
        assert_eq!(
            unknown,
            vec!["spec.metrics[0].threshold.maximum", "spec.metrics[0].url"]
        );
    }

    #[test]
    fn a_missing_field_is_named() {
        let e = decode_spec(&doc(serde_json::json!({"metrics": [{"name": "m"}]})))
            .expect_err("no provider");
        assert!(e.message.contains("provider"), "{e:?}");
        assert_eq!(e.path, "spec.metrics[0]");
    }
}
