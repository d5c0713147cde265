//! The local environment works end to end: real control plane, simulator, Prometheus and
//! Alertmanager. Run by `make test` after `scripts/env up`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use rollguard::traffic::RouteKind;
use serde_json::{Value, json};

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn deployment_gets_a_replicaset_and_ready_pods() {
    let ns = TestNamespace::create("e2e-deploy").await;
    ns.apply(
        &core_resource("apps/v1", "Deployment", "deployments"),
        deployment("web", "web", "stable", 3, None),
    )
    .await;
    let d = ns.wait_deployment_ready("web", 3).await;
    assert_eq!(
        d.status.as_ref().and_then(|s| s.available_replicas),
        Some(3)
    );

    let rs = Api::<ReplicaSet>::namespaced(ns.client.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .expect("listing ReplicaSets");
    assert_eq!(rs.items.len(), 1, "one ReplicaSet for the Deployment");
    let owner = &rs.items[0]
        .metadata
        .owner_references
        .as_ref()
        .expect("owner references")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Deployment", "web")
    );

    let pods = Api::<Pod>::namespaced(ns.client.clone(), &ns.name)
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("listing pods");
    assert_eq!(pods.items.len(), 3);
    for pod in &pods.items {
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        assert!(ready, "pod {:?} is not Ready", pod.metadata.name);
        assert!(
            pod.spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some_and(|n| n.starts_with("kwok-node-"))
        );
    }
    ns.cleanup().await;
}

/// Stable (3 pods) and canary (1 pod) Deployments with a Service each, and the route from
/// `route` weighting them 90/10. Returns the canary's share of the request rate that Prometheus
/// reports over 20 s.
async fn canary_share_through(kind: RouteKind, route: impl FnOnce(&str) -> Value) -> f64 {
    let ns = TestNamespace::create(&format!("e2e-{}", kind.to_string().to_lowercase())).await;
    let deployments = core_resource("apps/v1", "Deployment", "deployments");
    let services = core_resource("v1", "Service", "services");
    ns.apply(
        &deployments,
        deployment("checkout-stable", "checkout", "stable", 3, None),
    )
    .await;
    ns.apply(
        &deployments,
        deployment("checkout-canary", "checkout", "canary", 1, None),
    )
    .await;
    for track in ["stable", "canary"] {
        ns.apply(
            &services,
            service(
                &format!("checkout-{track}"),
                json!({"app": "checkout", "track": track}),
            ),
        )
        .await;
    }
    ns.apply(&services, service("checkout", json!({"app": "checkout"})))
        .await;
    ns.wait_deployment_ready("checkout-stable", 3).await;
    ns.wait_deployment_ready("checkout-canary", 1).await;
    ns.apply(&kind.api_resource(), route(&ns.name)).await;

    // The simulator must see the route before the measured window starts.
    let flows_url = format!("{}/flows", sim_url());
    eventually(
        "the simulator to route traffic to both tracks",
        Duration::from_secs(30),
        || async {
            let report: Value = reqwest::get(&flows_url).await.ok()?.json().await.ok()?;
            let workloads: Vec<&str> = report["flows"]
                .as_array()?
                .iter()
                .filter(|f| f["destination"]["workload_namespace"] == ns.name.as_str())
                .filter_map(|f| f["destination"]["workload"].as_str())
                .collect();
            (workloads.contains(&"checkout-stable") && workloads.contains(&"checkout-canary"))
                .then_some(())
        },
    )
    .await;
    // 20 s of traffic, plus scrape slack, all under the new weights.
    tokio::time::sleep(Duration::from_secs(23)).await;
    let query = format!(
        "sum by (destination_workload) (rate(istio_requests_total{{destination_workload_namespace=\"{}\"}}[20s]))",
        ns.name
    );
    let rates = prometheus_query(&query).await;
    let rate_of = |workload: &str| {
        rates
            .iter()
            .find(|(labels, _)| labels["destination_workload"] == workload)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {workload} series in {rates:?}"))
    };
    let (stable, canary) = (rate_of("checkout-stable"), rate_of("checkout-canary"));
    println!("{kind}: stable {stable:.1} rps, canary {canary:.1} rps");
    ns.cleanup().await;
    canary / (stable + canary)
}

fn assert_share(kind: RouteKind, share: f64) {
    assert!(
        (share - 0.10).abs() <= 0.02,
        "{kind}: canary share {:.2}% is not 10% ± 2 points",
        share * 100.0
    );
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn http_route_weights_become_the_traffic_split() {
    let share = canary_share_through(RouteKind::HttpRoute, |_| {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "checkout", "annotations": {"sim.rollguard.dev/rps": "300"}},
            "spec": {"rules": [{"backendRefs": [
                {"name": "checkout-stable", "port": 80, "weight": 90},
                {"name": "checkout-canary", "port": 80, "weight": 10},
            ]}]}
        })
    })
    .await;
    assert_share(RouteKind::HttpRoute, share);
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn virtual_service_weights_become_the_traffic_split() {
    let share = canary_share_through(RouteKind::VirtualService, |ns| {
        json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "checkout", "annotations": {"sim.rollguard.dev/rps": "300"}},
            "spec": {"hosts": ["checkout"], "http": [{"route": [
                {"destination": {"host": "checkout-stable"}, "weight": 90},
                {"destination": {"host": format!("checkout-canary.{ns}.svc.cluster.local")}, "weight": 10},
            ]}]}
        })
    })
    .await;
    assert_share(RouteKind::VirtualService, share);
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn traffic_split_weights_become_the_traffic_split() {
    let share = canary_share_through(RouteKind::TrafficSplit, |_| {
        json!({
            "apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
            "metadata": {"name": "checkout", "annotations": {"sim.rollguard.dev/rps": "300"}},
            "spec": {"service": "checkout", "backends": [
                {"service": "checkout-stable", "weight": 900},
                {"service": "checkout-canary", "weight": 100},
            ]}
        })
    })
    .await;
    assert_share(RouteKind::TrafficSplit, share);
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_fault_profile_changed_at_run_time_shows_in_the_next_scrapes() {
    let ns = TestNamespace::create("e2e-profile").await;
    ns.apply(
        &core_resource("apps/v1", "Deployment", "deployments"),
        deployment("api", "api", "stable", 2, None),
    )
    .await;
    ns.apply(
        &core_resource("v1", "Service", "services"),
        service("api", json!({"app": "api"})),
    )
    .await;
    ns.wait_deployment_ready("api", 2).await;
    ns.apply(
        &RouteKind::HttpRoute.api_resource(),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "api", "annotations": {"sim.rollguard.dev/rps": "200"}},
            "spec": {"rules": [{"backendRefs": [{"name": "api", "port": 80}]}]}
        }),
    )
    .await;
    let ok = format!(
        "sum(istio_requests_total{{destination_workload_namespace=\"{}\",response_code=\"200\"}})",
        ns.name
    );
    eventually(
        "healthy traffic in Prometheus",
        Duration::from_secs(30),
        || async {
            prometheus_query(&ok)
                .await
                .first()
                .filter(|(_, v)| *v > 0.0)
                .map(|_| ())
        },
    )
    .await;
    let errors = format!(
        "sum(istio_requests_total{{destination_workload_namespace=\"{}\",response_code=\"503\"}})",
        ns.name
    );
    assert!(
        prometheus_query(&errors).await.is_empty(),
        "a healthy profile serves no 503"
    );

    // Change the profile on the running pods, as an operator injecting a fault would.
    let pods = Api::<Pod>::namespaced(ns.client.clone(), &ns.name);
    let patch = json!({"metadata": {"annotations": {"sim.rollguard.dev/profile": r#"{"errorRate": 0.5, "errorCode": 503}"#}}});
    let changed = Instant::now();
    for pod in pods
        .list(&ListParams::default().labels("app=api"))
        .await
        .expect("listing pods")
    {
        let name = pod.metadata.name.expect("pods have names");
        pods.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotating pod");
    }
    eventually(
        "503s in Prometheus after the profile change",
        Duration::from_secs(10),
        || async {
            prometheus_query(&errors)
                .await
                .first()
                .filter(|(_, v)| *v > 0.0)
                .map(|_| ())
        },
    )
    .await;
    println!(
        "profile change visible in Prometheus after {:?}",
        changed.elapsed()
    );
    ns.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn an_alert_posted_to_alertmanager_is_listed() {
    let id = unique("env-check");
    let url = format!("{}/api/v2/alerts", alertmanager_url());
    let alert = json!([{
        "labels": {"alertname": "RollguardEnvironmentCheck", "severity": "info", "check_id": id},
        "annotations": {"summary": "posted by the environment test"},
        "generatorURL": "http://127.0.0.1/rollguard",
    }]);
    let http = reqwest::Client::new();
    let response = http
        .post(&url)
        .json(&alert)
        .send()
        .await
        .expect("POST /api/v2/alerts");
    assert!(
        response.status().is_success(),
        "Alertmanager answered {}",
        response.status()
    );
    let filter = format!("check_id=\"{id}\"");
    let listed: Vec<Value> = eventually(
        "the alert in GET /api/v2/alerts",
        Duration::from_secs(10),
        || async {
            let alerts: Vec<Value> = http
                .get(&url)
                .query(&[("filter", &filter)])
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (!alerts.is_empty()).then_some(alerts)
        },
    )
    .await;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0]["labels"]["alertname"],
        "RollguardEnvironmentCheck"
    );
    assert_eq!(listed[0]["status"]["state"], "active");
}

#[test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
fn the_binary_works_as_a_kubectl_plugin() {
    let plugin = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-rollguard"));
    let dir = plugin.parent().expect("the plugin binary has a directory");
    let path = format!("{}:{}", dir.display(), env_var("PATH"));
    let out = std::process::Command::new("kubectl")
        .args(["rollguard", "version"])
        .env("PATH", path)
        .output()
        .expect("running kubectl from the environment's PATH");
    assert!(
        out.status.success(),
        "kubectl rollguard failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("rollguard {}", env!("CARGO_PKG_VERSION"))
    );
}
