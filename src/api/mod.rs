//! The rollguard.dev/v1alpha1 API: Rust types from which the CRDs in `crds/` are generated.

pub mod analysis;
pub mod common;
pub mod endpoints;
pub mod release;
pub mod rollout;
pub mod rollout_status;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use analysis::{AnalysisTemplate, ClusterAnalysisTemplate};
pub use endpoints::{MetricProvider, Receiver};
pub use release::Release;
pub use rollout::Rollout;

/// Every CRD of the API, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        Rollout::crd(),
        Release::crd(),
        AnalysisTemplate::crd(),
        ClusterAnalysisTemplate::crd(),
        MetricProvider::crd(),
        Receiver::crd(),
    ]
    .into_iter()
    .map(unwrapped)
    .collect()
}

/// The CRD with its descriptions as paragraphs: a doc comment's line breaks are where the
/// source wrapped, not where `kubectl explain` should break a sentence. Blank lines (new
/// paragraphs) stay.
fn unwrapped(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    match child {
                        serde_json::Value::String(text) if key == "description" => {
                            *text = text
                                .split("\n\n")
                                .map(|p| p.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
                                .collect::<Vec<_>>()
                                .join("\n\n");
                        }
                        other => walk(other),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    walk(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

/// The file name a CRD is committed under in `crds/`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// A CRD as YAML, as committed in `crds/`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::ser::Error> {
    serde_saphyr::to_string(crd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Where generated CRDs are committed: the repository's `crds/` and the chart's copy, which
    /// Helm can only read from inside the chart.
    const CRD_DIRS: [&str; 2] = ["crds", "charts/rollguard/files/crds"];
    const REGENERATE: &str = "make crds";

    /// Every property of every kind without a description, as `Kind .path.to.field`.
    fn undescribed() -> Vec<String> {
        fn walk(kind: &str, path: &str, node: &serde_json::Value, out: &mut Vec<String>) {
            if let Some(props) = node["properties"].as_object() {
                for (name, child) in props {
                    let here = format!("{path}.{name}");
                    let described = child["description"]
                        .as_str()
                        .is_some_and(|d| !d.trim().is_empty());
                    if !described {
                        out.push(format!("{kind} {here}"));
                    }
                    walk(kind, &here, child, out);
                }
            }
            if node["items"].is_object() {
                walk(kind, &format!("{path}[]"), &node["items"], out);
            }
            if node["additionalProperties"].is_object() {
                walk(
                    kind,
                    &format!("{path}{{}}"),
                    &node["additionalProperties"],
                    out,
                );
            }
        }
        let mut out = Vec::new();
        for (kind, schema) in schemas() {
            let top = schema["description"].as_str().unwrap_or("");
            if top.is_empty() || top.starts_with("Auto-generated") {
                out.push(format!("{kind} (the kind itself): {top:?}"));
            }
            walk(&kind, "", &schema, &mut out);
        }
        out
    }

    /// Each kind's OpenAPI schema, per served version.
    fn schemas() -> Vec<(String, serde_json::Value)> {
        crds()
            .into_iter()
            .flat_map(|crd| {
                let kind = crd.spec.names.kind.clone();
                crd.spec
                    .versions
                    .iter()
                    .map(|v| {
                        let schema = v
                            .schema
                            .as_ref()
                            .and_then(|s| s.open_api_v3_schema.as_ref());
                        (
                            kind.clone(),
                            serde_json::to_value(schema).unwrap_or_default(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Every description in the CRDs, as `kubectl explain` shows it: (where, text).
    fn descriptions() -> Vec<(String, String)> {
        fn walk(path: &str, node: &serde_json::Value, out: &mut Vec<(String, String)>) {
            if let Some(d) = node["description"].as_str() {
                out.push((path.to_owned(), d.to_owned()));
            }
            for (name, child) in node["properties"].as_object().into_iter().flatten() {
                walk(&format!("{path}.{name}"), child, out);
            }
            if node["items"].is_object() {
                walk(&format!("{path}[]"), &node["items"], out);
            }
            if node["additionalProperties"].is_object() {
                walk(&format!("{path}{{}}"), &node["additionalProperties"], out);
            }
        }
        let mut out = Vec::new();
        for (kind, schema) in schemas() {
            walk(&kind, &schema, &mut out);
        }
        out
    }

    /// `kubectl explain` prints descriptions as paragraphs: each is whole sentences, starting
    /// with a capital (a code span, or the field's own name as Kubernetes' types do) and ending
    /// with a full stop, never cut mid-sentence by a line break.
    #[test]
    fn every_description_is_whole_sentences() {
        let broken: Vec<String> = descriptions()
            .into_iter()
            .filter(|(path, d)| {
                let d = d.trim();
                let field = path.rsplit(['.', '[', '{']).next().unwrap_or("");
                let starts = d
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_uppercase() || c.is_ascii_digit() || c == '`')
                    || (!field.is_empty() && d.starts_with(&format!("{field} ")));
                let ends = d.ends_with('.') || d.ends_with(".)") || d.ends_with('?');
                let cut = d.replace("\n\n", " ").contains('\n');
                !(starts && ends) || cut
            })
            .map(|(path, d)| format!("{path}: {d:?}"))
            .collect();
        assert!(
            broken.is_empty(),
            "{} descriptions are not whole sentences:\n{}",
            broken.len(),
            broken.join("\n")
        );
    }

    /// `kubectl explain` shows each description: a field without one is a field users must
    /// guess at.
    #[test]
    fn every_kind_and_field_has_a_description() {
        let missing = undescribed();
        assert!(
            missing.is_empty(),
            "{} without a description (add a /// comment to the Rust field or type):\n{}",
            missing.len(),
            missing.join("\n")
        );
    }

    #[test]
    fn committed_crds_match_the_rust_types() {
        // Cargo sets CARGO_MANIFEST_DIR when it runs a test. The compile-time value can name
        // another checkout: the cargo target dir is shared, so a binary built in one clone is
        // reused by the next.
        let root = std::env::var_os("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
        for rel in CRD_DIRS {
            let dir = Path::new(&root).join(rel);
            let mut expected: Vec<String> = Vec::new();
            for crd in crds() {
                let name = crd_file_name(&crd);
                expected.push(name.clone());
                let generated = crd_yaml(&crd).expect("CRDs serialize to YAML");
                let committed = std::fs::read_to_string(dir.join(&name)).unwrap_or_else(|e| {
                    panic!("{rel}/{name} cannot be read ({e}); run `{REGENERATE}`")
                });
                assert!(
                    committed == generated,
                    "{rel}/{name} differs from the Rust types; run `{REGENERATE}` and commit"
                );
            }
            let mut present: Vec<String> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{rel}/ cannot be listed ({e}); run `{REGENERATE}`"))
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".yaml"))
                .collect();
            present.sort();
            expected.sort();
            assert_eq!(
                present, expected,
                "{rel}/ holds a file no Rust type generates"
            );
        }
    }

    #[test]
    fn every_kind_is_in_the_rollguard_category_with_short_names() {
        for crd in crds() {
            let names = &crd.spec.names;
            assert_eq!(
                names.categories.as_deref(),
                Some(&["rollguard".to_string()][..]),
                "{}",
                names.kind
            );
            assert!(
                names.short_names.as_ref().is_some_and(|s| !s.is_empty()),
                "{}",
                names.kind
            );
            assert_eq!(crd.spec.group, "rollguard.dev");
        }
    }
}
