//! What a rollback cannot restore. A Release snapshots the pod template, not what the template
//! points at: ConfigMaps and Secrets, volumes on PersistentVolumeClaims, a database schema that
//! a later release migrated. At release time the controller records a content hash of each
//! referenced ConfigMap (never the content); at rollback the CLI compares them with today's and
//! says what changed, so the on-call engineer knows what the rollback leaves as it is.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::api::release::{ConfigHash, ConfigKind, Release};

/// The most references of each kind that are recorded; a template names a handful.
pub const MAX_REFERENCES: usize = 32;

/// Pod-template annotation that marks a release as carrying a schema migration: rolling back
/// past it leaves the database as that release left it.
pub const MIGRATION_ANNOTATION: &str = "rollguard.dev/schema-migration";

/// What a pod template refers to outside itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct References {
    pub config_maps: BTreeSet<String>,
    pub secrets: BTreeSet<String>,
    /// Volume name → PersistentVolumeClaim name.
    pub claims: BTreeMap<String, String>,
}

/// The ConfigMaps, Secrets and claims a pod template names: in env (`valueFrom`), `envFrom`
/// and volumes (projected ones included), of containers and init containers. At most
/// [`MAX_REFERENCES`] of each.
pub fn references(pod_template: &Value) -> References {
    let spec = &pod_template["spec"];
    let mut r = References::default();
    let add = |set: &mut BTreeSet<String>, name: &Value| {
        if let Some(n) = name.as_str().filter(|n| !n.is_empty())
            && set.len() < MAX_REFERENCES
        {
            set.insert(n.to_owned());
        }
    };
    let containers = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec[*k].as_array())
        .flatten();
    for c in containers {
        for e in c["env"].as_array().into_iter().flatten() {
            add(
                &mut r.config_maps,
                &e["valueFrom"]["configMapKeyRef"]["name"],
            );
            add(&mut r.secrets, &e["valueFrom"]["secretKeyRef"]["name"]);
        }
        for e in c["envFrom"].as_array().into_iter().flatten() {
            add(&mut r.config_maps, &e["configMapRef"]["name"]);
            add(&mut r.secrets, &e["secretRef"]["name"]);
        }
    }
    for v in spec["volumes"].as_array().into_iter().flatten() {
        add(&mut r.config_maps, &v["configMap"]["name"]);
        add(&mut r.secrets, &v["secret"]["secretName"]);
        for s in v["projected"]["sources"].as_array().into_iter().flatten() {
            add(&mut r.config_maps, &s["configMap"]["name"]);
            add(&mut r.secrets, &s["secret"]["name"]);
        }
        if let (Some(volume), Some(claim)) = (
            v["name"].as_str(),
            v["persistentVolumeClaim"]["claimName"].as_str(),
        ) && r.claims.len() < MAX_REFERENCES
        {
            r.claims.insert(volume.to_owned(), claim.to_owned());
        }
    }
    r
}

/// A content hash of a ConfigMap's `data` and `binaryData`: sha256 over the keys and values in
/// key order, each length-prefixed, so no two contents share a hash by concatenation.
pub fn content_hash(data: &BTreeMap<String, String>, binary: &BTreeMap<String, Vec<u8>>) -> String {
    let mut h = Sha256::new();
    let mut field = |tag: &[u8], bytes: &[u8]| {
        h.update(tag);
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    for (k, v) in data {
        field(b"k", k.as_bytes());
        field(b"v", v.as_bytes());
    }
    for (k, v) in binary {
        field(b"K", k.as_bytes());
        field(b"B", v);
    }
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

/// [`content_hash`] of a ConfigMap as the apiserver returned it.
pub fn config_map_hash(cm: k8s_openapi::api::core::v1::ConfigMap) -> String {
    content_hash(
        &cm.data.unwrap_or_default(),
        &cm.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect(),
    )
}

/// What the rollback to `target` cannot restore, in words: each recorded ConfigMap whose hash
/// `now` differs from the one at release time (`now` maps a name to today's hash, None when
/// it is gone), each referenced Secret (not read, so not checked), each volume on a claim, and
/// each release in `since` (the ones deployed after `target`) that migrated a schema.
pub fn warnings(
    target: &Release,
    now: &BTreeMap<String, Option<String>>,
    since: &[&Release],
) -> Vec<String> {
    let label = target
        .spec
        .version
        .clone()
        .unwrap_or_else(|| target.metadata.name.clone().unwrap_or_default());
    let mut out = Vec::new();
    for h in &target.spec.config_hashes {
        match h.kind {
            ConfigKind::ConfigMap => {
                let today = now.get(&h.name).cloned().flatten();
                let line = match (&h.sha256, &today) {
                    (Some(then), Some(today)) if then == today => continue,
                    (Some(_), Some(_)) => format!(
                        "ConfigMap {} changed since {label} was released; the rollback does not restore it",
                        h.name
                    ),
                    (Some(_), None) => format!(
                        "ConfigMap {} existed when {label} was released and is gone now; the rollback does not bring it back",
                        h.name
                    ),
                    (None, Some(_)) => format!(
                        "ConfigMap {} did not exist (or could not be read) when {label} was released; today's is used as it is",
                        h.name
                    ),
                    (None, None) => format!(
                        "ConfigMap {} was missing when {label} was released and still is; its pods may not start",
                        h.name
                    ),
                };
                out.push(line);
            }
            ConfigKind::Secret => out.push(format!(
                "Secret {} is referenced; rollguard does not read Secrets, so whether it changed since {label} was released is not checked, and the rollback does not restore it",
                h.name
            )),
        }
    }
    let claims = references(&target.spec.pod_template).claims;
    for (volume, claim) in claims {
        out.push(format!(
            "volume {volume} is PersistentVolumeClaim {claim}: its data stays as it is now; the rollback does not restore it"
        ));
    }
    out.extend(migrations(&label, since));
    out
}

/// The Releases recorded after `target` (the ones a return to it goes back past), in any
/// order.
pub fn released_after<'a>(releases: &'a [Release], target: &Release) -> Vec<&'a Release> {
    let created = target.metadata.creation_timestamp.as_ref().map(|c| c.0);
    releases
        .iter()
        .filter(|r| r.metadata.name != target.metadata.name)
        .filter(|r| r.metadata.creation_timestamp.as_ref().map(|c| c.0) > created)
        .collect()
}

/// The releases in `since` (deployed after the one labelled `label`) that migrated a schema:
/// going back to `label`'s images does not undo them, by rollback or by redeploy.
pub fn migrations(label: &str, since: &[&Release]) -> Vec<String> {
    let mut out = Vec::new();
    for r in since {
        let marked = r.spec.pod_template["metadata"]["annotations"][MIGRATION_ANNOTATION]
            .as_str()
            .filter(|v| !v.is_empty());
        if let Some(what) = marked {
            out.push(format!(
                "{} carries a schema migration ({}); going back to {label} does not undo it",
                r.spec.version.clone().unwrap_or_else(|| r
                    .metadata
                    .name
                    .clone()
                    .unwrap_or_default()),
                crate::history::first_line(what, 120)
            ));
        }
    }
    out
}

/// The hashes to record for a pod template's ConfigMaps, given a lookup that reads one
/// (None: missing or unreadable), and an unhashed entry per Secret.
pub fn record(
    pod_template: &Value,
    mut read: impl FnMut(&str) -> Option<String>,
) -> Vec<ConfigHash> {
    let r = references(pod_template);
    r.config_maps
        .iter()
        .map(|name| ConfigHash {
            kind: ConfigKind::ConfigMap,
            name: name.clone(),
            sha256: read(name),
        })
        .chain(r.secrets.iter().map(|name| ConfigHash {
            kind: ConfigKind::Secret,
            name: name.clone(),
            sha256: None,
        }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::release::{ContainerImage, ReleaseSpec};
    use serde_json::json;

    fn template() -> Value {
        json!({
            "metadata": {"annotations": {}},
            "spec": {
                "initContainers": [{"name": "init", "envFrom": [{"configMapRef": {"name": "init-config"}}]}],
                "containers": [{
                    "name": "app",
                    "env": [
                        {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "checkout-config", "key": "a"}}},
                        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "checkout-db", "key": "password"}}},
                        {"name": "C", "value": "plain"},
                    ],
                    "envFrom": [{"secretRef": {"name": "checkout-env"}}],
                }],
                "volumes": [
                    {"name": "conf", "configMap": {"name": "checkout-files"}},
                    {"name": "tls", "secret": {"secretName": "checkout-tls"}},
                    {"name": "all", "projected": {"sources": [{"configMap": {"name": "shared"}}, {"secret": {"name": "shared-keys"}}]}},
                    {"name": "data", "persistentVolumeClaim": {"claimName": "checkout-data"}},
                ],
            },
        })
    }

    #[test]
    fn released_after_means_recorded_later_than_the_target() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        let at = |version: &str, secs: i64| {
            let mut r = release(version, json!({}), Vec::new());
            r.metadata.creation_timestamp = Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(secs).expect("time"),
            ));
            r
        };
        let all = [
            at("1.4.0", 10),
            at("1.5.0", 20),
            at("1.6.0", 30),
            at("1.7.0", 40),
        ];
        let names = |rs: Vec<&Release>| -> Vec<String> {
            rs.iter().filter_map(|r| r.spec.version.clone()).collect()
        };
        assert_eq!(names(released_after(&all, &all[1])), ["1.6.0", "1.7.0"]);
        assert!(released_after(&all, &all[3]).is_empty());
    }

    fn release(version: &str, template: Value, hashes: Vec<ConfigHash>) -> Release {
        Release::new(
            &format!("checkout-{version}"),
            ReleaseSpec {
                rollout: "checkout".into(),
                images: vec![ContainerImage {
                    container: "app".into(),
                    image: "r/x@sha256:aa".into(),
                }],
                allow_tags: false,
                pod_template: template,
                version: Some(version.into()),
                change_cause: None,
                deployed_by: None,
                config_hashes: hashes,
                redeploy: None,
            },
        )
    }

    #[test]
    fn every_kind_of_reference_is_found() {
        let r = references(&template());
        let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        assert_eq!(
            r.config_maps,
            set(&["checkout-config", "checkout-files", "init-config", "shared"])
        );
        assert_eq!(
            r.secrets,
            set(&["checkout-db", "checkout-env", "checkout-tls", "shared-keys"])
        );
        assert_eq!(
            r.claims,
            BTreeMap::from([("data".to_owned(), "checkout-data".to_owned())])
        );
    }

    #[test]
    fn references_are_bounded() {
        let volumes: Vec<Value> = (0..100)
            .map(|i| json!({"name": format!("v{i}"), "configMap": {"name": format!("c{i}")}}))
            .collect();
        let r = references(&json!({"spec": {"volumes": volumes}}));
        assert_eq!(r.config_maps.len(), MAX_REFERENCES);
    }

    #[test]
    fn the_hash_covers_keys_values_and_binary_data_without_ambiguity() {
        let d = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        };
        let none = BTreeMap::new();
        let a = content_hash(&d(&[("a", "1")]), &none);
        assert_eq!(a.len(), 64);
        assert_eq!(a, content_hash(&d(&[("a", "1")]), &none));
        assert_ne!(a, content_hash(&d(&[("a", "2")]), &none));
        assert_ne!(
            content_hash(&d(&[("ab", "c")]), &none),
            content_hash(&d(&[("a", "bc")]), &none)
        );
        assert_ne!(
            a,
            content_hash(
                &d(&[("a", "1")]),
                &BTreeMap::from([("b".to_owned(), vec![0u8])])
            )
        );
    }

    #[test]
    fn what_changed_is_said_and_what_did_not_is_not() {
        let hashes = record(&template(), |name| match name {
            "checkout-config" => Some("h1".into()),
            "checkout-files" => Some("h2".into()),
            "init-config" => Some("h3".into()),
            _ => None,
        });
        // A Secret entry per Secret, never hashed.
        assert!(
            hashes
                .iter()
                .filter(|h| h.kind == ConfigKind::Secret)
                .all(|h| h.sha256.is_none())
        );
        let target = release("1.5.0", template(), hashes);
        let mut migrated = template();
        migrated["metadata"]["annotations"][MIGRATION_ANNOTATION] =
            "add orders.coupon column".into();
        let later = release("1.6.0", migrated, Vec::new());
        let now = BTreeMap::from([
            ("checkout-config".to_owned(), Some("changed".to_owned())),
            ("checkout-files".to_owned(), Some("h2".to_owned())),
            ("init-config".to_owned(), None),
            ("shared".to_owned(), None),
        ]);
        let w = warnings(&target, &now, &[&later]);
        let has = |s: &str| w.iter().any(|l| l.contains(s));
        assert!(has(
            "ConfigMap checkout-config changed since 1.5.0 was released; the rollback does not restore it"
        ));
        assert!(!has("checkout-files"), "unchanged: {w:#?}");
        assert!(has(
            "ConfigMap init-config existed when 1.5.0 was released and is gone now"
        ));
        assert!(has("Secret checkout-db is referenced"));
        assert!(has("volume data is PersistentVolumeClaim checkout-data"));
        assert!(has(
            "1.6.0 carries a schema migration (add orders.coupon column)"
        ));
    }
}
