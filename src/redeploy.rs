//! A redeploy: an earlier Release's images on today's pod template. Pure: the merged template,
//! the Release's name, and what differs between the earlier snapshot and today's template,
//! which `rollguard redeploy` prints before it acts.

use serde_json::Value;

use crate::rollout::workload::fingerprint;

/// The container lists whose images a redeploy takes from the earlier Release.
const CONTAINER_LISTS: [&str; 2] = ["initContainers", "containers"];

/// The pod labels that name a version: they describe the images, so they follow them.
pub const VERSION_LABELS: [&str; 2] = ["app.kubernetes.io/version", "version"];

/// The longest Release name (an object name, a DNS subdomain).
pub const MAX_NAME: usize = 253;

/// The most difference lines printed; the rest are counted.
pub const MAX_DIFF_LINES: usize = 40;

/// The name of the Release that runs `images_of`'s images on `config_of`'s template. The same
/// pair always gives the same name, so a pass replayed after a crash finds the Release it made.
pub fn release_name(images_of: &str, config_of: &str) -> String {
    format!("{images_of}-on-{}", &fingerprint(config_of)[..8])
}

/// `config`'s pod template with each container's image taken from the container of the same
/// name in `images`, and the version labels too. A container that `images` lacks keeps today's
/// image, and is named in the second value so the log can say so.
pub fn merged_template(images: &Value, config: &Value) -> (Value, Vec<String>) {
    let mut merged = config.clone();
    if let Some(labels) = merged["metadata"]["labels"].as_object_mut() {
        for key in VERSION_LABELS {
            match images["metadata"]["labels"][key].as_str() {
                Some(v) => labels.insert(key.to_owned(), Value::String(v.to_owned())),
                None => labels.remove(key),
            };
        }
    }
    let mut kept = Vec::new();
    for list in CONTAINER_LISTS {
        let Some(containers) = merged["spec"][list].as_array_mut() else {
            continue;
        };
        for c in containers {
            let name = c["name"].as_str().unwrap_or_default().to_owned();
            match image_of(images, list, &name) {
                Some(image) => c["image"] = Value::String(image),
                None => kept.push(name),
            }
        }
    }
    (merged, kept)
}

fn image_of(template: &Value, list: &str, name: &str) -> Option<String> {
    template["spec"][list]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["image"].as_str())
        .map(str::to_owned)
}

/// What a redeploy changes against a rollback to the same Release: for each container both
/// templates have, the env, resources, probes and ports that differ, then any other part of the
/// pod template. `then` is the earlier snapshot, `now` today's template; images are not
/// compared (the redeploy takes `then`'s).
pub fn config_diff(then: &Value, now: &Value) -> Vec<String> {
    let mut lines = Vec::new();
    for list in CONTAINER_LISTS {
        let empty = Vec::new();
        let old = then["spec"][list].as_array().unwrap_or(&empty);
        let new = now["spec"][list].as_array().unwrap_or(&empty);
        for c in new {
            let name = c["name"].as_str().unwrap_or_default();
            let Some(o) = old.iter().find(|o| o["name"] == name) else {
                lines.push(format!(
                    "container {name}: only in today's template (it keeps today's image)"
                ));
                continue;
            };
            env_diff(name, &o["env"], &c["env"], &mut lines);
            for field in [
                "envFrom",
                "resources",
                "ports",
                "readinessProbe",
                "livenessProbe",
                "startupProbe",
                "command",
                "args",
                "volumeMounts",
            ] {
                if o[field] != c[field] {
                    lines.push(format!(
                        "container {name}: {field} {} → today {}",
                        short(&o[field]),
                        short(&c[field])
                    ));
                }
            }
        }
        for o in old {
            let name = o["name"].as_str().unwrap_or_default();
            if !new.iter().any(|c| c["name"] == name) {
                lines.push(format!(
                    "container {name}: only in the earlier snapshot (not run by the redeploy)"
                ));
            }
        }
    }
    let (Some(old), Some(new)) = (then["spec"].as_object(), now["spec"].as_object()) else {
        return lines;
    };
    let mut others: Vec<&str> = old
        .keys()
        .chain(new.keys())
        .map(String::as_str)
        .filter(|k| !CONTAINER_LISTS.contains(k) && old.get(*k) != new.get(*k))
        .collect();
    others.sort_unstable();
    others.dedup();
    for k in others {
        lines.push(format!(
            "pod {k}: {} → today {}",
            short(old.get(k).unwrap_or(&Value::Null)),
            short(new.get(k).unwrap_or(&Value::Null))
        ));
    }
    let labels = |t: &Value| {
        let mut l = t["metadata"]["labels"].clone();
        if let Some(l) = l.as_object_mut() {
            l.retain(|k, _| !VERSION_LABELS.contains(&k.as_str()));
        }
        l
    };
    if labels(then) != labels(now) {
        lines.push(format!(
            "pod labels {} → today {}",
            short(&labels(then)),
            short(&labels(now))
        ));
    }
    if lines.len() > MAX_DIFF_LINES {
        let more = lines.len() - MAX_DIFF_LINES;
        lines.truncate(MAX_DIFF_LINES);
        lines.push(format!("… and {more} more"));
    }
    lines
}

/// Environment variables by name: added, removed, or changed.
fn env_diff(container: &str, old: &Value, new: &Value, lines: &mut Vec<String>) {
    let entries = |v: &Value| -> Vec<(String, Value)> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let name = e["name"].as_str().unwrap_or_default().to_owned();
                let mut rest = e.clone();
                if let Some(o) = rest.as_object_mut() {
                    o.remove("name");
                }
                (name, rest)
            })
            .collect()
    };
    let (old, new) = (entries(old), entries(new));
    for (name, value) in &new {
        match old.iter().find(|(n, _)| n == name) {
            None => lines.push(format!(
                "container {container}: env {name} is new today ({})",
                env_value(value)
            )),
            Some((_, was)) if was != value => lines.push(format!(
                "container {container}: env {name} {} → today {}",
                env_value(was),
                env_value(value)
            )),
            Some(_) => {}
        }
    }
    for (name, was) in &old {
        if !new.iter().any(|(n, _)| n == name) {
            lines.push(format!(
                "container {container}: env {name} ({}) is gone today",
                env_value(was)
            ));
        }
    }
}

/// A plain value as it is; a reference as where it comes from.
fn env_value(v: &Value) -> String {
    match (&v["value"], &v["valueFrom"]) {
        (Value::String(s), _) => format!("{s:?}"),
        (_, Value::Object(_)) => format!("from {}", short(&v["valueFrom"])),
        _ => "\"\"".into(),
    }
}

/// JSON, cut to a line's worth.
fn short(v: &Value) -> String {
    if v.is_null() {
        return "unset".into();
    }
    let text = v.to_string();
    match text.char_indices().nth(80) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(image: &str, level: &str, cpu: &str) -> Value {
        json!({
            "metadata": {"labels": {"app": "checkout"}},
            "spec": {
                "containers": [{
                    "name": "app",
                    "image": image,
                    "env": [{"name": "LOG_LEVEL", "value": level}, {"name": "REGION", "value": "eu"}],
                    "resources": {"limits": {"cpu": cpu}},
                }],
                "initContainers": [{"name": "migrate", "image": format!("{image}-migrate")}],
            }
        })
    }

    #[test]
    fn the_merged_template_is_todays_with_the_earlier_images() {
        let old = template("app@sha256:aa", "debug", "1");
        let today = template("app@sha256:bb", "info", "2");
        let (merged, kept) = merged_template(&old, &today);
        assert!(kept.is_empty());
        assert_eq!(merged["spec"]["containers"][0]["image"], "app@sha256:aa");
        assert_eq!(
            merged["spec"]["initContainers"][0]["image"],
            "app@sha256:aa-migrate"
        );
        assert_eq!(merged["spec"]["containers"][0]["env"][0]["value"], "info");
        assert_eq!(
            merged["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "2"
        );
    }

    #[test]
    fn the_version_labels_follow_the_images_and_other_labels_stay_todays() {
        let mut old = template("app@sha256:aa", "info", "1");
        old["metadata"]["labels"] = json!({"app": "checkout", "version": "1.5.0", "team": "a"});
        let mut today = template("app@sha256:bb", "info", "1");
        today["metadata"]["labels"] = json!({"app": "checkout", "version": "1.7.0",
            "app.kubernetes.io/version": "1.7.0", "team": "b"});
        let (merged, _) = merged_template(&old, &today);
        assert_eq!(
            merged["metadata"]["labels"],
            json!({"app": "checkout", "version": "1.5.0", "team": "b"})
        );
        assert_eq!(
            config_diff(&old, &today),
            [r#"pod labels {"app":"checkout","team":"a"} → today {"app":"checkout","team":"b"}"#]
        );
    }

    #[test]
    fn a_container_the_earlier_release_lacks_keeps_todays_image() {
        let old = template("app@sha256:aa", "debug", "1");
        let mut today = template("app@sha256:bb", "info", "1");
        today["spec"]["containers"]
            .as_array_mut()
            .expect("containers")
            .push(json!({"name": "sidecar", "image": "proxy@sha256:cc"}));
        let (merged, kept) = merged_template(&old, &today);
        assert_eq!(kept, ["sidecar"]);
        assert_eq!(merged["spec"]["containers"][1]["image"], "proxy@sha256:cc");
    }

    #[test]
    fn the_diff_names_env_resources_probes_and_ports_and_not_images() {
        let old = template("app@sha256:aa", "debug", "1");
        let mut today = template("app@sha256:bb", "info", "2");
        let c = &mut today["spec"]["containers"][0];
        c["env"].as_array_mut().expect("env").push(
            json!({"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}}),
        );
        c["readinessProbe"] = json!({"httpGet": {"path": "/ready", "port": 8080}});
        c["ports"] = json!([{"containerPort": 8080}]);
        let diff = config_diff(&old, &today);
        let text = diff.join("\n");
        assert!(
            text.contains(r#"env LOG_LEVEL "debug" → today "info""#),
            "{text}"
        );
        assert!(
            text.contains("env TOKEN is new today (from {\"secretKeyRef\""),
            "{text}"
        );
        assert!(
            text.contains(
                "resources {\"limits\":{\"cpu\":\"1\"}} → today {\"limits\":{\"cpu\":\"2\"}}"
            ),
            "{text}"
        );
        assert!(text.contains("readinessProbe unset → today"), "{text}");
        assert!(text.contains("ports unset → today"), "{text}");
        assert!(
            !text.contains("sha256"),
            "images are not part of the diff: {text}"
        );
        assert!(
            !text.contains("REGION"),
            "unchanged env is not listed: {text}"
        );
    }

    #[test]
    fn identical_configuration_has_no_diff_and_other_pod_fields_are_named() {
        let old = template("app@sha256:aa", "info", "1");
        let today = template("app@sha256:bb", "info", "1");
        assert!(config_diff(&old, &today).is_empty());
        let mut moved = today.clone();
        moved["spec"]["nodeSelector"] = json!({"zone": "a"});
        moved["spec"]["containers"][0]["env"] = json!([{"name": "LOG_LEVEL", "value": "info"}]);
        let diff = config_diff(&old, &moved);
        assert_eq!(
            diff,
            [
                r#"container app: env REGION ("eu") is gone today"#,
                r#"pod nodeSelector: unset → today {"zone":"a"}"#
            ]
        );
    }

    #[test]
    fn a_long_diff_is_cut_and_counted() {
        let old = template("app@sha256:aa", "info", "1");
        let mut today = old.clone();
        today["spec"]["containers"][0]["env"] = Value::Array(
            (0..100)
                .map(|i| json!({"name": format!("V{i}"), "value": "x"}))
                .collect(),
        );
        let diff = config_diff(&old, &today);
        assert_eq!(diff.len(), MAX_DIFF_LINES + 1);
        assert!(
            diff[MAX_DIFF_LINES].starts_with("… and 62 more"),
            "{diff:?}"
        );
    }

    #[test]
    fn the_name_is_the_same_for_the_same_pair_and_differs_by_configuration() {
        assert_eq!(
            release_name("checkout-aaaaaaaaaa", "checkout-bbbbbbbbbb"),
            release_name("checkout-aaaaaaaaaa", "checkout-bbbbbbbbbb")
        );
        assert_ne!(
            release_name("checkout-aaaaaaaaaa", "checkout-bbbbbbbbbb"),
            release_name("checkout-aaaaaaaaaa", "checkout-cccccccccc")
        );
        assert!(release_name("checkout-aaaaaaaaaa", "x").starts_with("checkout-aaaaaaaaaa-on-"));
    }
}
