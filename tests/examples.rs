//! `examples/` holds one complete set per router. Offline, each set must hang together: the
//! Rollout's target, route, templates, providers and receivers all exist in the set, and the
//! route's backends are the arms rollguard creates. Against the real apiserver, every file in
//! `examples/` and `analysis-templates/` applies with server-side apply.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use rollguard::traffic::route::{RouteKind, split_mesh_host};
use serde_json::Value;

/// The router directories and the route kind each one uses (none for the replica ratio).
const SETS: [(&str, Option<RouteKind>); 4] = [
    ("gateway-api", Some(RouteKind::HttpRoute)),
    ("istio", Some(RouteKind::VirtualService)),
    ("smi", Some(RouteKind::TrafficSplit)),
    ("replicas", None),
];

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn load_file(file: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    let docs: Vec<Option<Value>> =
        serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    docs.into_iter().flatten().collect()
}

fn load(dir: &Path) -> Vec<Value> {
    yaml_files(dir).iter().flat_map(|f| load_file(f)).collect()
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn every_example_set_is_complete_and_consistent() {
    let root = repo_root().join("examples");
    for (set, route_kind) in SETS {
        let objects = load(&root.join(set));
        let rollout = objects
            .iter()
            .find(|o| o["kind"] == "Rollout")
            .unwrap_or_else(|| panic!("{set}: no Rollout"));
        let name = rollout["metadata"]["name"].as_str().expect("named Rollout");
        let ns = rollout["metadata"]["namespace"]
            .as_str()
            .expect("namespaced Rollout");
        let spec = &rollout["spec"];
        assert!(
            named(&objects, "Namespace", ns).is_some(),
            "{set}: no Namespace {ns}"
        );

        let target = spec["targetRef"]["name"].as_str().expect("targetRef.name");
        let deployment = named(&objects, "Deployment", target)
            .unwrap_or_else(|| panic!("{set}: target Deployment {target} is missing"));
        for c in deployment["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers")
        {
            let image = c["image"].as_str().expect("image");
            assert!(
                image.contains("@sha256:"),
                "{set}: {image} is not pinned by digest"
            );
        }
        assert!(
            objects.iter().any(|o| o["kind"] == "Service"),
            "{set}: no Service for clients"
        );

        match route_kind {
            Some(kind) => {
                let router = spec["trafficRouter"]
                    .as_object()
                    .and_then(|r| r.values().next())
                    .expect("trafficRouter");
                let route_name = router
                    .as_object()
                    .and_then(|r| r.values().find_map(Value::as_str))
                    .expect("the router names its route");
                let route = named(&objects, &kind.gvk().kind, route_name)
                    .unwrap_or_else(|| panic!("{set}: route {route_name} is missing"));
                let rules = kind.rules(route).unwrap_or_else(|e| panic!("{set}: {e}"));
                let weighted: Vec<_> = rules.iter().filter(|r| r.backends.len() > 1).collect();
                assert!(
                    !weighted.is_empty(),
                    "{set}: no weighted rule in {route_name}"
                );
                for rule in weighted {
                    let mut services: Vec<String> = rule
                        .backends
                        .iter()
                        .map(|b| split_mesh_host(&b.service).0)
                        .collect();
                    services.sort();
                    assert_eq!(
                        services,
                        [format!("{name}-canary"), format!("{name}-stable")],
                        "{set}: the weighted backends must be the arms rollguard creates"
                    );
                    let stable = rule
                        .backends
                        .iter()
                        .find(|b| b.service.starts_with(&format!("{name}-stable")))
                        .expect("stable backend");
                    assert_eq!(
                        stable.weight, 100,
                        "{set}: at rest all traffic is on stable"
                    );
                }
            }
            None => assert!(
                spec["trafficRouter"].is_null(),
                "{set}: replica ratio has no router"
            ),
        }

        let mut providers = Vec::new();
        for t in spec["analysis"]["templates"]
            .as_array()
            .expect("analysis.templates")
        {
            let tname = t["name"].as_str().expect("template name");
            let kind = if t["clusterScope"] == true {
                "ClusterAnalysisTemplate"
            } else {
                "AnalysisTemplate"
            };
            let template = named(&objects, kind, tname)
                .unwrap_or_else(|| panic!("{set}: {kind} {tname} is missing"));
            let declared: Vec<&str> = template["spec"]["args"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["name"].as_str())
                .collect();
            let text = serde_json::to_string(&template["spec"]["metrics"]).expect("JSON");
            for arg in &declared {
                assert!(
                    text.contains(&format!("{{{{args.{arg}}}}}")),
                    "{set}: {tname} never uses argument {arg}"
                );
                let given = spec["analysis"]["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|a| a["name"] == *arg);
                let defaulted = template["spec"]["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|a| a["name"] == *arg && a["default"].is_string());
                assert!(
                    given || defaulted,
                    "{set}: argument {arg} of {tname} has no value"
                );
            }
            for m in template["spec"]["metrics"].as_array().expect("metrics") {
                providers.push(m["provider"].as_str().expect("provider").to_owned());
            }
        }
        for p in providers {
            let provider = named(&objects, "MetricProvider", &p)
                .unwrap_or_else(|| panic!("{set}: MetricProvider {p} is missing"));
            let allowed = strings(&provider["spec"]["allowedNamespaces"]);
            assert!(
                allowed.contains(&ns) || allowed.contains(&"*"),
                "{set}: MetricProvider {p} does not allow namespace {ns}"
            );
        }
        let receivers = strings(&spec["escalation"]["receivers"]);
        assert!(
            !receivers.is_empty(),
            "{set}: nobody hears about a rollback"
        );
        for r in receivers {
            assert!(
                named(&objects, "Receiver", r).is_some(),
                "{set}: Receiver {r} is missing"
            );
        }
    }
}

/// Server-side apply of a file or directory; returns how many objects the apiserver applied.
/// Strict field validation is kubectl's default, so an unknown field fails the apply.
fn apply(path: &Path) -> usize {
    let path = path.to_str().expect("UTF-8 path");
    let out = run_ok(
        "kubectl",
        &[
            "apply",
            "--server-side",
            "--field-manager=rollguard-examples",
            "--force-conflicts",
            "-f",
            path,
        ],
        None,
    );
    out.lines()
        .filter(|l| l.contains("serverside-applied"))
        .count()
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn examples_and_analysis_templates_apply_with_server_side_apply() {
    let client = client().await;
    install_crds(&client).await;
    let root = repo_root();
    for (set, _) in SETS {
        let dir = root.join("examples").join(set);
        let objects = load(&dir);
        assert_eq!(
            apply(&dir),
            objects.len(),
            "{set}: not every object was applied"
        );
        let ns = objects
            .iter()
            .find(|o| o["kind"] == "Rollout")
            .and_then(|r| r["metadata"]["namespace"].as_str())
            .expect("namespaced Rollout");
        for kind in ["rollouts.rollguard.dev", "deployments"] {
            let listed = run_ok("kubectl", &["get", kind, "-n", ns, "-o", "name"], None);
            assert!(
                !listed.trim().is_empty(),
                "{set}: no {kind} in {ns} after apply"
            );
        }
    }

    // Ready-made templates (analysis-templates/*.yaml); ClusterAnalysisTemplates need no namespace.
    for file in yaml_files(&root.join("analysis-templates")) {
        let objects = load_file(&file);
        assert_eq!(
            apply(&file),
            objects.len(),
            "{}: not every object was applied",
            file.display()
        );
    }

    for (set, _) in SETS {
        let dir = root.join("examples").join(set);
        let dir = dir.to_str().expect("UTF-8 path");
        let _ = run(
            "kubectl",
            &["delete", "--timeout=60s", "--ignore-not-found", "-f", dir],
            None,
        );
    }
}
