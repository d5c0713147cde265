//! The Helm chart in `charts/rollguard/`: its values schema refuses bad values, the rendering
//! carries the hardening and the toggles, the rendered chart is accepted by the real apiserver,
//! and its ServiceAccount may do what the controller needs and nothing more.
//!
//! The rendering tests use the `helm` the environment builds (`scripts/env build`), which
//! `target/env/env.sh` puts on PATH.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::Value;

const RELEASE: &str = "rg";

fn chart() -> String {
    repo_root().join("charts/rollguard").display().to_string()
}

/// `helm template` with the given `--set` values; the rendered objects as JSON.
fn render(namespace: &str, sets: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        RELEASE,
        chart.as_str(),
        "--namespace",
        namespace,
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    let yaml = run_ok("helm", &args, None);
    let docs: Vec<Option<Value>> =
        serde_saphyr::from_multiple(&yaml).expect("helm renders valid YAML");
    docs.into_iter().flatten().collect()
}

fn kinds(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap_or("?").to_owned())
        .collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {kind}, rendered {:?}",
        kinds(objects)
    );
    found[0]
}

/// The controller's own ClusterRole, among the chart's (the others aggregate into the built-in
/// view, edit and admin roles).
fn controller_role(objects: &[Value]) -> &Value {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole")
        .filter(|o| {
            o["metadata"]["labels"].as_object().is_none_or(|l| {
                !l.keys()
                    .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to"))
            })
        })
        .collect();
    assert_eq!(found.len(), 1, "one controller ClusterRole: {found:?}");
    found[0]
}

/// YAML's `1` and the schema's `1.0` are the same number to the apiserver.
fn numbers_as_floats(v: Value) -> Value {
    match v {
        Value::Number(n) => n.as_f64().map_or(Value::Number(n), |f| f.into()),
        Value::Array(a) => a.into_iter().map(numbers_as_floats).collect(),
        Value::Object(o) => o
            .into_iter()
            .map(|(k, v)| (k, numbers_as_floats(v)))
            .collect(),
        other => other,
    }
}

fn count(objects: &[Value], kind: &str) -> usize {
    objects.iter().filter(|o| o["kind"] == kind).count()
}

#[test]
#[ignore = "needs helm from the local environment (scripts/env build); run by make test"]
fn chart_lints_and_its_values_schema_names_each_bad_value() {
    run_ok("helm", &["lint", "--strict", &chart()], None);
    let chart = chart();
    let cases = [
        ("replicas=0", "/replicas"),
        (
            "securityContext.readOnlyRootFilesystem=false",
            "/securityContext/readOnlyRootFilesystem",
        ),
        (
            "podSecurityContext.runAsNonRoot=false",
            "/podSecurityContext/runAsNonRoot",
        ),
        ("image.digest=latest", "/image/digest"),
        ("controller.logFormat=xml", "/controller/logFormat"),
        (
            "controller.leaderElection.leaseDuration=soon",
            "/controller/leaderElection/leaseDuration",
        ),
        ("replica=2", "replica"),
    ];
    for (set, path) in cases {
        let r = run("helm", &["template", RELEASE, &chart, "--set", set], None);
        assert!(!r.ok, "helm accepted --set {set}");
        assert!(
            r.stderr.contains(path),
            "the error for --set {set} does not name {path}: {}",
            r.stderr
        );
    }
}

#[test]
#[ignore = "needs helm from the local environment (scripts/env build); run by make test"]
fn rendered_chart_is_hardened_and_its_toggles_work() {
    let objects = render("rollguard-system", &[]);
    let deployment = one(&objects, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let sc = &container["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["securityContext"]["runAsUser"], 65534);
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert!(
            container[probe]["httpGet"]["path"].is_string(),
            "{probe} is missing"
        );
    }
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["limits"]["memory"].is_string());
    assert!(container["resources"]["requests"]["cpu"].is_string());
    // One replica: no overlap of two writers during an upgrade, and no PDB to block drains.
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    assert_eq!(count(&objects, "PodDisruptionBudget"), 0);
    assert_eq!(count(&objects, "ServiceMonitor"), 0);
    let service = one(&objects, "Service");
    assert_eq!(service["spec"]["ports"][0]["name"], "http");

    // The CRDs are the generated ones, plus the keep policy and the chart's labels.
    let generated: Vec<Value> = rollguard::api::crds()
        .iter()
        .map(|c| serde_json::to_value(c).expect("CRDs serialize"))
        .collect();
    assert_eq!(count(&objects, "CustomResourceDefinition"), generated.len());
    for crd in objects
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
    {
        let name = crd["metadata"]["name"].as_str().expect("CRDs are named");
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{name} would be deleted by helm uninstall"
        );
        let mut bare = crd.clone();
        let meta = bare["metadata"]
            .as_object_mut()
            .expect("metadata is an object");
        meta.remove("annotations");
        meta.remove("labels");
        let expected = generated
            .iter()
            .find(|g| g["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("the chart renders {name}, which no Rust type generates"));
        assert!(
            numbers_as_floats(bare) == numbers_as_floats(expected.clone()),
            "the chart's {name} differs from the Rust types; run `make crds`"
        );
    }

    let ha = render(
        "rollguard-system",
        &["replicas=3", "serviceMonitor.enabled=true"],
    );
    let pdb = one(&ha, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let deployment = one(&ha, "Deployment");
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    let monitor = one(&ha, "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");

    // The alerts of the operations guide, as a PrometheusRule when asked for: the groups of
    // files/alerts.yaml, which promtool checks (below).
    assert_eq!(count(&objects, "PrometheusRule"), 0);
    let alerting = render("rollguard-system", &["prometheusRule.enabled=true"]);
    let rule = one(&alerting, "PrometheusRule");
    let file: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(repo_root().join("charts/rollguard/files/alerts.yaml"))
            .expect("alerts file"),
    )
    .expect("YAML");
    assert_eq!(rule["spec"]["groups"], file["groups"]);
    let alerts: Vec<&str> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert!(
        alerts.contains(&"RollguardRollbackIncomplete") && alerts.contains(&"RollguardNoLeader"),
        "{alerts:?}"
    );

    // `helm test`: a pod of the controller's own image probes /healthz through the Service.
    let test = one(&objects, "Pod");
    assert_eq!(test["metadata"]["annotations"]["helm.sh/hook"], "test");
    assert_eq!(
        test["spec"]["containers"][0]["image"],
        deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    );
    assert_eq!(
        test["spec"]["containers"][0]["args"],
        serde_json::json!([
            "probe",
            "http://rg-rollguard.rollguard-system.svc:8080/healthz"
        ])
    );
    assert_eq!(
        test["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    assert_eq!(
        count(
            &render("rollguard-system", &["helmTest.enabled=false"]),
            "Pod"
        ),
        0
    );

    // The Grafana dashboard: the JSON the repository holds, labelled for the sidecar.
    let dashboard = one(&objects, "ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value = serde_json::from_str(
        dashboard["data"]["rollguard.json"]
            .as_str()
            .expect("the dashboard's JSON"),
    )
    .expect("the dashboard is JSON");
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("charts/rollguard/dashboards/rollguard.json"))
            .expect("dashboard file"),
    )
    .expect("JSON");
    assert_eq!(json, file);
    assert!(
        container["args"]
            .as_array()
            .expect("args")
            .iter()
            .any(|a| a == "--rework-window=24h")
    );
    let no_dashboard = render("rollguard-system", &["grafanaDashboard.enabled=false"]);
    assert_eq!(count(&no_dashboard, "ConfigMap"), 0);

    // App teams drive their Rollouts under the built-in roles: view reads, edit writes and
    // sends requests, admin overrides.
    let aggregated = |label: &str| -> Vec<String> {
        objects
            .iter()
            .filter(|o| o["kind"] == "ClusterRole" && o["metadata"]["labels"][label] == "true")
            .map(|o| o["metadata"]["name"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    assert_eq!(
        aggregated("rbac.authorization.k8s.io/aggregate-to-view").len(),
        1
    );
    assert_eq!(
        aggregated("rbac.authorization.k8s.io/aggregate-to-edit").len(),
        2
    );
    assert_eq!(
        aggregated("rbac.authorization.k8s.io/aggregate-to-admin").len(),
        3
    );
    let no_aggregates = render("rollguard-system", &["rbac.aggregateToDefaultRoles=false"]);
    assert_eq!(count(&no_aggregates, "ClusterRole"), 1);
    // The names follow nameOverride and fullnameOverride.
    let named = |sets: &[&str]| {
        one(&render("rollguard-system", sets), "Deployment")["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(
        named(&["fullnameOverride=delivery-guard"]),
        "delivery-guard"
    );
    assert_eq!(named(&["nameOverride=canary"]), format!("{RELEASE}-canary"));

    let no_crds = render("rollguard-system", &["crds.install=false"]);
    assert_eq!(count(&no_crds, "CustomResourceDefinition"), 0);
    assert_eq!(count(&no_crds, "Deployment"), 1);

    let gateway_only = render(
        "rollguard-system",
        &["rbac.routers.istio=false", "rbac.routers.smi=false"],
    );
    let groups: BTreeSet<&str> = controller_role(&gateway_only)["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .flat_map(|r| r["apiGroups"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    assert!(groups.contains("gateway.networking.k8s.io"));
    assert!(!groups.contains("networking.istio.io"), "{groups:?}");
    assert!(!groups.contains("split.smi-spec.io"), "{groups:?}");
}

/// The shipped alerts are a valid Prometheus rules file, as Prometheus's own checker reads it.
#[test]
#[ignore = "needs promtool (scripts/env install); run by make test"]
fn the_shipped_alerts_pass_promtool() {
    let file = repo_root().join("charts/rollguard/files/alerts.yaml");
    let out = run_ok(
        "promtool",
        &["check", "rules", &file.display().to_string()],
        None,
    );
    assert!(out.contains("SUCCESS: 6 rules found"), "{out}");
}

/// What `helm install` prints afterwards: how to check the controller and what to do next.
#[test]
#[ignore = "needs helm from the local environment (scripts/env build); run by make test"]
fn install_notes_say_how_to_check_and_what_comes_next() {
    let chart = chart();
    let out = run_ok(
        "helm",
        &[
            "install",
            RELEASE,
            chart.as_str(),
            "--namespace",
            "rollguard-system",
            "--dry-run=client",
        ],
        None,
    );
    let notes = out.split("NOTES:").nth(1).expect("the chart has notes");
    for expected in [
        "get lease rollguard-leader",
        "rollguard lint",
        "rollguard status <rollout>",
        "built-in view, edit or admin role",
    ] {
        assert!(notes.contains(expected), "{expected:?} in {notes}");
    }
}

#[test]
#[ignore = "needs helm from the local environment (scripts/env build); run by make test"]
fn cluster_role_holds_no_secret_access_no_wildcards_and_no_update_of_routes() {
    let objects = render("rollguard-system", &[]);
    let rules = controller_role(&objects)["rules"]
        .as_array()
        .expect("rules")
        .clone();
    let route_groups = [
        "gateway.networking.k8s.io",
        "networking.istio.io",
        "split.smi-spec.io",
    ];
    for rule in &rules {
        let list = |k: &str| -> Vec<String> {
            rule[k]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        let (groups, resources, verbs) = (list("apiGroups"), list("resources"), list("verbs"));
        for field in [&groups, &resources, &verbs] {
            assert!(!field.iter().any(|v| v == "*"), "wildcard in {rule}");
        }
        assert!(
            !resources.iter().any(|r| r == "secrets"),
            "cluster-wide Secret access: {rule}"
        );
        if groups.iter().any(|g| route_groups.contains(&g.as_str())) {
            assert!(
                !verbs.iter().any(|v| v == "update"),
                "update on a route object: {rule}"
            );
        }
    }
}

/// Every RBAC rule in the chart's templates is introduced by a comment that says why it exists.
#[test]
fn every_rbac_rule_in_the_chart_says_why_it_exists() {
    for file in ["clusterrole.yaml", "role.yaml", "aggregate-roles.yaml"] {
        let path = repo_root().join("charts/rollguard/templates").join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let lines: Vec<&str> = text.lines().collect();
        let mut rules = 0;
        for (i, line) in lines.iter().enumerate() {
            if !line.trim_start().starts_with("- apiGroups:") {
                continue;
            }
            rules += 1;
            // A template conditional may sit between the comment and its rule.
            let previous = lines[..i]
                .iter()
                .rev()
                .map(|l| l.trim())
                .find(|l| !l.starts_with("{{"))
                .unwrap_or("");
            assert!(
                previous.starts_with('#'),
                "{file}:{}: the rule has no comment saying why it exists",
                i + 1
            );
        }
        assert!(rules > 0, "{file} has no rules");
    }
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn rendered_chart_applies_with_server_side_dry_run() {
    let ns = TestNamespace::create("e2e-chart-dry").await;
    for sets in [
        &[][..],
        &[
            "replicas=3",
            "serviceMonitor.enabled=true",
            "prometheusRule.enabled=true",
        ][..],
    ] {
        let objects = render(&ns.name, sets);
        let yaml = objects
            .iter()
            .map(|o| serde_json::to_string(o).expect("JSON"))
            .collect::<Vec<_>>()
            .join("\n---\n");
        let out = run_ok(
            "kubectl",
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--dry-run=server",
                "-f",
                "-",
            ],
            Some(&yaml),
        );
        let applied = out
            .lines()
            .filter(|l| l.contains("(server dry run)"))
            .count();
        assert_eq!(
            applied,
            objects.len(),
            "with {sets:?} the apiserver accepted {applied} of {} objects:\n{out}",
            objects.len()
        );
    }
    ns.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn chart_service_account_may_do_what_the_controller_needs_and_no_more() {
    let ns = TestNamespace::create("e2e-chart-rbac").await;
    let release = unique("rg");
    let chart = chart();
    // The CRDs may already be installed by other tests: take them over, as an upgrade from a
    // plain `kubectl apply -f crds/` would.
    run_ok(
        "helm",
        &[
            "install",
            &release,
            &chart,
            "--namespace",
            &ns.name,
            "--take-ownership",
            "--wait",
            "--timeout",
            "90s",
        ],
        None,
    );
    let sa = format!("system:serviceaccount:{}:{release}-rollguard", ns.name);
    let other_ns = "kube-public";
    let cases: [(&str, &str, Option<&str>, bool); 20] = [
        ("patch", "httproutes.gateway.networking.k8s.io", None, true),
        ("patch", "virtualservices.networking.istio.io", None, true),
        ("patch", "trafficsplits.split.smi-spec.io", None, true),
        ("patch", "deployments.apps", None, true),
        ("create", "deployments.apps", Some(other_ns), true),
        (
            "patch",
            "rollouts.rollguard.dev/status",
            Some(other_ns),
            true,
        ),
        ("create", "releases.rollguard.dev", Some(other_ns), true),
        ("create", "events.events.k8s.io", Some(other_ns), true),
        ("get", "secrets", Some(&ns.name), true),
        // ConfigMaps referenced by a release are hashed: read by name, never listed or changed.
        ("get", "configmaps", Some(other_ns), true),
        ("list", "configmaps", None, false),
        ("patch", "configmaps", Some(other_ns), false),
        (
            "update",
            "httproutes.gateway.networking.k8s.io",
            None,
            false,
        ),
        ("list", "secrets", None, false),
        ("watch", "secrets", None, false),
        ("get", "secrets", Some(other_ns), false),
        ("list", "secrets", Some(&ns.name), false),
        ("delete", "namespaces", None, false),
        ("delete", "deployments.apps", Some(other_ns), false),
        ("update", "rollouts.rollguard.dev", Some(other_ns), false),
    ];
    let mut wrong = Vec::new();
    for (verb, resource, namespace, expected) in cases {
        let mut args = vec!["auth", "can-i", verb, resource, "--as", &sa];
        match namespace {
            Some(n) => args.extend(["--namespace", n]),
            None => args.push("--all-namespaces"),
        }
        // can-i exits 1 for "no"; the answer is on stdout either way.
        let r = run("kubectl", &args, None);
        let answer = r.stdout.trim() == "yes";
        if answer != expected {
            wrong.push(format!(
                "{verb} {resource} in {}: expected {expected}, got {:?} {}",
                namespace.unwrap_or("all namespaces"),
                r.stdout.trim(),
                r.stderr.trim()
            ));
        }
    }
    // The leader Lease: created, then renewed by its name only.
    let lease = |verb: &str, name: Option<&str>| {
        let resource = match name {
            Some(n) => format!("leases.coordination.k8s.io/{n}"),
            None => "leases.coordination.k8s.io".to_owned(),
        };
        run(
            "kubectl",
            &[
                "auth", "can-i", verb, &resource, "--as", &sa, "-n", &ns.name,
            ],
            None,
        )
        .stdout
        .trim()
            == "yes"
    };
    for (verb, name, expected) in [
        ("create", None, true),
        ("update", Some("rollguard-leader"), true),
        ("watch", Some("rollguard-leader"), true),
        ("watch", None, false),
        ("update", Some("someone-elses-lease"), false),
        ("delete", Some("rollguard-leader"), false),
    ] {
        if lease(verb, name) != expected {
            wrong.push(format!("{verb} lease {name:?}: expected {expected}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "the chart's RBAC is off:\n{}",
        wrong.join("\n")
    );

    // Uninstalling removes the controller and its RBAC but keeps the CRDs (and every Rollout).
    run_ok(
        "helm",
        &["uninstall", &release, "--namespace", &ns.name, "--wait"],
        None,
    );
    let role = run(
        "kubectl",
        &["get", "clusterrole", &format!("{release}-rollguard")],
        None,
    );
    assert!(!role.ok, "the ClusterRole survived helm uninstall");
    let crd = run_ok(
        "kubectl",
        &[
            "get",
            "crd",
            "rollouts.rollguard.dev",
            "-o",
            "jsonpath={.metadata.annotations}",
        ],
        None,
    );
    assert!(
        crd.contains("keep"),
        "the Rollout CRD lost its keep policy: {crd}"
    );
    ns.cleanup().await;
}

/// The chart's ValidatingAdmissionPolicy on the real apiserver: a request, an override or a
/// history entry under someone else's name is refused; under one's own (what the CLI writes,
/// learning the name from a SelfSubjectReview) it is admitted.
#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn forged_requester_names_are_refused_at_admission() {
    use kube::api::{Patch, PatchParams};
    use kube::{Api, Client};
    use rollguard::api::release::Release;
    use rollguard::api::rollout::Rollout;
    use rollguard::rollout::plan::RequestAction;

    let ns = TestNamespace::create("e2e-names").await;
    install_crds(&ns.client).await;
    // The chart's policy, bound to this namespace only so that no other test meets it.
    let objects = render("rollguard-system", &[]);
    let suffix = ns.name.clone();
    let mut policy = one(&objects, "ValidatingAdmissionPolicy").clone();
    let mut binding = one(&objects, "ValidatingAdmissionPolicyBinding").clone();
    let name = format!("rollguard-names-{suffix}");
    policy["metadata"]["name"] = name.clone().into();
    binding["metadata"]["name"] = name.clone().into();
    binding["spec"]["policyName"] = name.clone().into();
    binding["spec"]["matchResources"] = serde_json::json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name}}});
    let yaml = format!(
        "{}\n---\n{}",
        serde_json::to_string(&policy).expect("JSON"),
        serde_json::to_string(&binding).expect("JSON")
    );
    run_ok(
        "kubectl",
        &["apply", "--server-side", "-f", "-"],
        Some(&yaml),
    );

    ns.apply(
        &core_resource("rollguard.dev/v1alpha1", "Rollout", "rollouts"),
        serde_json::json!({
            "apiVersion": "rollguard.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
            "spec": {"targetRef": {"name": "web"}, "steps": [{"setWeight": 10}], "withoutAnalysis": true},
        }),
    )
    .await;
    let digest = format!("sha256:{}", "c".repeat(64));
    ns.apply(
        &core_resource("rollguard.dev/v1alpha1", "Release", "releases"),
        serde_json::json!({
            "apiVersion": "rollguard.dev/v1alpha1", "kind": "Release", "metadata": {"name": "web-cccccccccc"},
            "spec": {"rollout": "web", "images": [{"container": "web", "image": format!("r.example/web@{digest}")}],
                     "podTemplate": {"spec": {"containers": [{"name": "web", "image": format!("r.example/web@{digest}")}]}}},
        }),
    )
    .await;

    // alice: full rights (system:masters), her own name.
    let mut config = kube::Config::infer().await.expect("kubeconfig");
    config.auth_info.impersonate = Some("alice".into());
    config.auth_info.impersonate_groups = Some(vec!["system:masters".into()]);
    let alice = Client::try_from(config).expect("impersonating client");
    let rollouts = Api::<Rollout>::namespaced(alice.clone(), &ns.name);
    // Each request is new (an unchanged annotation is admitted as it stands).
    let sent = std::sync::atomic::AtomicU32::new(0);
    let request = |by: &str| {
        let n = sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        serde_json::json!({"metadata": {"annotations": {"rollguard.dev/request":
            format!(r#"{{"id":"abort-{n}","action":"abort","by":"{by}","reason":"pager"}}"#)}}})
    };
    // The policy compiles asynchronously: wait until it refuses the forged name.
    let refusal = eventually(
        "the policy to refuse a forged request",
        std::time::Duration::from_secs(60),
        || async {
            match rollouts
                .patch(
                    "web",
                    &PatchParams::default(),
                    &Patch::Merge(request("the-cto@example.com")),
                )
                .await
            {
                Err(e) => Some(e.to_string()),
                Ok(_) => None,
            }
        },
    )
    .await;
    assert!(
        refusal.contains("must name its sender") && refusal.contains("alice"),
        "{refusal}"
    );
    rollouts
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(request("alice")),
        )
        .await
        .expect("her own name is admitted");
    // No controller answers here: the request is withdrawn, as the CLI says to, so that the next
    // one is not refused as replacing it.
    rollouts
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {"rollguard.dev/request": null}}}),
            ),
        )
        .await
        .expect("an unanswered request is withdrawn");
    // What the CLI sends: the name from a SelfSubjectReview.
    let sent = rollguard::ops::request(&alice, &ns.name, "web", RequestAction::Pause, None)
        .await
        .expect("the CLI's request is admitted");
    assert_eq!(sent.by, "alice");

    // A Release's override and history, on the status subresource.
    let releases = Api::<Release>::namespaced(alice.clone(), &ns.name);
    let status = |patch: serde_json::Value| {
        let releases = releases.clone();
        async move {
            releases
                .patch_status(
                    "web-cccccccccc",
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
    };
    status(serde_json::json!({"status": {"phase": "Unstable"}}))
        .await
        .expect("no name in it");
    let forged = status(serde_json::json!({"status": {"override":
        {"reason": "fine now", "by": "the-cto@example.com", "at": "2026-12-01T10:00:00Z"}}}))
    .await
    .expect_err("a forged override");
    assert!(
        forged.contains("status.override.by must be alice"),
        "{forged}"
    );
    status(serde_json::json!({"status": {"override":
        {"reason": "fine now", "by": "alice", "at": "2026-12-01T10:00:00Z"}}}))
    .await
    .expect("her own override");
    let forged = status(serde_json::json!({"status": {"history":
        [{"action": "rollback", "by": "the-cto@example.com", "at": "2026-12-01T10:00:00Z"}]}}))
    .await
    .expect_err("a forged history entry");
    assert!(
        forged.contains("history entry must name who acted"),
        "{forged}"
    );
    // rollguard override as alice goes through.
    let unstable = Api::<Release>::namespaced(ns.client.clone(), &ns.name);
    unstable
        .patch_status(
            "web-cccccccccc",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"phase": "Unstable", "override": null}})),
        )
        .await
        .expect("back to Unstable, as admin");
    let by =
        rollguard::ops::override_release(&alice, &ns.name, "web-cccccccccc", "upstream outage")
            .await
            .expect("rollguard override is admitted");
    assert_eq!(by, "alice");

    // A Deployment that names its deployer must name the writer of each template change.
    let deployments =
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(alice.clone(), &ns.name);
    let deployment = |by: &str, image: &str| {
        serde_json::from_value::<k8s_openapi::api::apps::v1::Deployment>(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "shop", "annotations": {"rollguard.dev/deployed-by": by}},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "shop"}},
                     "template": {"metadata": {"labels": {"app": "shop"}},
                                  "spec": {"containers": [{"name": "shop", "image": image}]}}},
        }))
        .expect("deployment")
    };
    let apply = |api: Api<k8s_openapi::api::apps::v1::Deployment>,
                 d: k8s_openapi::api::apps::v1::Deployment| async move {
        api.patch(
            "shop",
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&d),
        )
        .await
        .map(drop)
        .map_err(|e| e.to_string())
    };
    let forged = apply(
        deployments.clone(),
        deployment("the-cto@example.com", "r.example/shop:1"),
    )
    .await
    .expect_err("a forged deployer");
    assert!(
        forged.contains("deployed-by must name who changes the pod template")
            && forged.contains("alice"),
        "{forged}"
    );
    apply(deployments.clone(), deployment("alice", "r.example/shop:1"))
        .await
        .expect("her own name is admitted");
    // Someone else changing the template under alice's name is refused; scaling is not a
    // template change and passes.
    let admin =
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(ns.client.clone(), &ns.name);
    let stolen = apply(admin.clone(), deployment("alice", "r.example/shop:2"))
        .await
        .expect_err("a change under another's name");
    assert!(stolen.contains("deployed-by must name"), "{stolen}");
    admin
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 1}})),
        )
        .await
        .expect("scaling keeps the template");
    // Deployments without the annotation are not evaluated.
    let plain =
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(ns.client.clone(), &ns.name);
    let mut other = deployment("x", "r.example/other:1");
    other.metadata.name = Some("other".into());
    other.metadata.annotations = None;
    plain
        .patch(
            "other",
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&other),
        )
        .await
        .expect("a Deployment that names no deployer");

    let _ = run(
        "kubectl",
        &[
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            &name,
        ],
        None,
    );
    ns.cleanup().await;
}
