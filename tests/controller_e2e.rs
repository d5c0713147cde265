//! The controller on the real control plane, with the traffic simulator and the real
//! Prometheus closing the loop: weights → traffic → metrics → analysis → promotion or rollback.
//!
//! Run by `make test` (needs `scripts/env up`): `cargo test --test controller_e2e -- --ignored`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::{Api, Client};
use rollguard::api::release::{Release, ReleasePhase};
use rollguard::api::rollout::{Rollout, RolloutPhase, RolloutStatus};
use serde_json::{Value, json};

const GOOD_A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const GOOD_B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const BAD_C: &str = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

/// `rollguard controller` as a child process, killed when dropped.
struct ControllerProcess {
    child: Child,
}

impl ControllerProcess {
    fn start(log: &str) -> ControllerProcess {
        let log = std::fs::File::create(log).expect("controller log file");
        let child = Command::new(env!("CARGO_BIN_EXE_rollguard"))
            .args([
                "controller",
                "--listen",
                "127.0.0.1:0",
                "--namespace",
                "default",
                "--concurrency",
                "4",
            ])
            .env("RUST_LOG", "info,rollguard=debug,kube=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting rollguard controller");
        ControllerProcess { child }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rg(kind: &str, plural: &str) -> kube::core::ApiResource {
    core_resource("rollguard.dev/v1alpha1", kind, plural)
}

async fn apply_cluster(client: &Client, ar: &kube::core::ApiResource, object: Value) {
    let name = object["metadata"]["name"]
        .as_str()
        .expect("named")
        .to_owned();
    let obj: DynamicObject = serde_json::from_value(object).expect("object");
    Api::<DynamicObject>::all_with(client.clone(), ar)
        .patch(
            &name,
            &PatchParams::apply("rollguard-e2e").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("applying {} {name}: {e}", ar.kind));
}

fn target(digest: &str, profile: Option<&str>) -> Value {
    let mut annotations = json!({});
    if let Some(p) = profile {
        annotations["sim.rollguard.dev/profile"] = json!(p);
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "annotations": {"kubernetes.io/change-cause": format!("deploy {}", &digest[7..12])}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web", "app.kubernetes.io/version": &digest[7..12]}, "annotations": annotations},
                "spec": {"containers": [{"name": "web", "image": format!("registry.example/web@{digest}"),
                                         "ports": [{"name": "http", "containerPort": 8080}]}]},
            },
        },
    })
}

/// A namespace with a service behind an HTTPRoute, a template judging errors on Istio-style
/// counters every 2 s, and a Rollout stepping 10% → 50%.
async fn setup(prefix: &str) -> (TestNamespace, String) {
    let ns = TestNamespace::create(prefix).await;
    install_crds(&ns.client).await;
    let provider = format!("prom-{}", ns.name);
    apply_cluster(&ns.client, &rg("MetricProvider", "metricproviders"), json!({
        "apiVersion": "rollguard.dev/v1alpha1", "kind": "MetricProvider",
        "metadata": {"name": provider},
        "spec": {"prometheus": {"address": prometheus_url(), "timeout": "3s"}, "allowedNamespaces": [ns.name]},
    }))
    .await;
    ns.apply(
        &core_resource("apps/v1", "Deployment", "deployments"),
        target(GOOD_A, None),
    )
    .await;
    ns.apply(&core_resource("v1", "Service", "services"), json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }))
    .await;
    ns.apply(
        &core_resource("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes"),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web", "annotations": {"sim.rollguard.dev/rps": "400"}},
            "spec": {
                "parentRefs": [{"name": "public"}],
                "rules": [{"backendRefs": [
                    {"name": "web-stable", "port": 80, "weight": 100},
                    {"name": "web-canary", "port": 80, "weight": 0},
                ]}],
            },
        }),
    )
    .await;
    let selector = |extra: &str| {
        format!(
            r#"sum(istio_requests_total{{reporter="destination", destination_workload_namespace="{}", destination_workload="{{{{arm}}}}"{extra}}})"#,
            ns.name
        )
    };
    ns.apply(&rg("AnalysisTemplate", "analysistemplates"), json!({
        "apiVersion": "rollguard.dev/v1alpha1", "kind": "AnalysisTemplate",
        "metadata": {"name": "errors"},
        "spec": {"metrics": [{
            "name": "error-rate", "provider": provider, "interval": "2s", "critical": true,
            "errorRate": {"requests": selector(""), "errors": selector(r#", response_code=~"5..""#),
                          "toleratedRatio": 1.5, "floor": 0.01, "minRequests": 100},
        }]},
    }))
    .await;
    ns.apply(
        &rg("Rollout", "rollouts"),
        json!({
            "apiVersion": "rollguard.dev/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "web"},
            "spec": {
                "targetRef": {"name": "web"},
                "trafficRouter": {"gatewayAPI": {"httpRoute": "web"}},
                "steps": [{"setWeight": 10, "duration": "4s"}, {"setWeight": 50, "duration": "4s"}],
                "analysis": {"templates": [{"name": "errors"}]},
                "progressDeadline": "2m",
                "recoveryWindow": "5s",
                "escalation": {"receivers": ["pager"], "severity": "error"},
            },
        }),
    )
    .await;
    (ns, provider)
}

async fn status(api: &Api<Rollout>) -> RolloutStatus {
    api.get("web")
        .await
        .ok()
        .and_then(|r| r.status)
        .unwrap_or_default()
}

async fn wait_phase(
    api: &Api<Rollout>,
    phase: RolloutPhase,
    digest: Option<&str>,
    timeout: Duration,
) -> RolloutStatus {
    let what = format!("Rollout web to be {phase:?} on {digest:?}");
    let start = Instant::now();
    loop {
        let s = status(api).await;
        let on = digest.is_none_or(|d| s.stable.as_ref().is_some_and(|r| r.digest == d));
        if s.phase == Some(phase) && on {
            return s;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}; status: {}",
            serde_json::to_string_pretty(&s).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn route_canary_weight(client: &Client, ns: &str) -> u64 {
    let ar = core_resource("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes");
    let route = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
        .get("web")
        .await
        .expect("route");
    let v = serde_json::to_value(route).expect("json");
    v["spec"]["rules"][0]["backendRefs"][1]["weight"]
        .as_u64()
        .unwrap_or(0)
}

async fn set_target(ns: &TestNamespace, digest: &str, profile: Option<&str>) {
    ns.apply(
        &core_resource("apps/v1", "Deployment", "deployments"),
        target(digest, profile),
    )
    .await;
}

fn image_of(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers[0].image.clone())
        .unwrap_or_default()
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_good_release_is_promoted_and_a_bad_one_rolled_back_then_blocked() {
    let (ns, provider) = setup("ctl").await;
    let log = format!(
        "{}/target/controller-e2e-{}.log",
        env!("CARGO_MANIFEST_DIR"),
        ns.name
    );
    let _controller = ControllerProcess::start(&log);
    let rollouts = Api::<Rollout>::namespaced(ns.client.clone(), &ns.name);
    let deployments = Api::<Deployment>::namespaced(ns.client.clone(), &ns.name);
    let releases = Api::<Release>::namespaced(ns.client.clone(), &ns.name);

    // The first digest becomes stable; the target is scaled to zero.
    wait_phase(
        &rollouts,
        RolloutPhase::Stable,
        Some(GOOD_A),
        Duration::from_secs(90),
    )
    .await;
    eventually(
        "the target scaled to zero",
        Duration::from_secs(30),
        || async {
            let d = deployments.get("web").await.ok()?;
            (d.spec?.replicas == Some(0)).then_some(())
        },
    )
    .await;

    // A good digest goes through 10% and 50% and is promoted by digest.
    let t0 = Instant::now();
    set_target(&ns, GOOD_B, None).await;
    let promoted = wait_phase(
        &rollouts,
        RolloutPhase::Stable,
        Some(GOOD_B),
        Duration::from_secs(240),
    )
    .await;
    println!("good release promoted in {:.0?}", t0.elapsed());
    let steps: Vec<&str> = promoted
        .timeline
        .iter()
        .map(|t| t.reason.as_str())
        .collect();
    assert!(
        steps.contains(&"CanaryStarted") && steps.contains(&"Promoted"),
        "{steps:?}"
    );
    assert_eq!(
        steps.iter().filter(|s| **s == "WeightSet").count(),
        2,
        "{steps:?}"
    );
    let stable = deployments.get("web-stable").await.expect("stable");
    assert!(image_of(&stable).ends_with(GOOD_B));
    assert_eq!(route_canary_weight(&ns.client, &ns.name).await, 0);
    let phase_of = |name: String| {
        let releases = releases.clone();
        async move { releases.get(&name).await.ok().and_then(|r| r.status?.phase) }
    };
    assert_eq!(
        phase_of(format!("web-{}", &GOOD_B[7..17])).await,
        Some(ReleasePhase::Stable)
    );
    assert_eq!(
        phase_of(format!("web-{}", &GOOD_A[7..17])).await,
        Some(ReleasePhase::Superseded)
    );

    // A bad digest: once the canary's 10% weight is verified, its pods start failing 10% of
    // requests. The rollback must zero the weight.
    set_target(&ns, BAD_C, None).await;
    eventually("the bad canary at 10%", Duration::from_secs(90), || async {
        let s = status(&rollouts).await;
        (s.phase == Some(RolloutPhase::Progressing)
            && s.canary_weight == Some(10)
            && s.step_started_at.is_some())
        .then_some(())
    })
    .await;
    let pods = Api::<Pod>::namespaced(ns.client.clone(), &ns.name);
    let canary_pods = pods
        .list(&ListParams::default().labels("rollguard.dev/arm=canary"))
        .await
        .expect("pods");
    let onset = Instant::now();
    for p in canary_pods.items {
        let name = p.metadata.name.clone().expect("named");
        pods.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
            "sim.rollguard.dev/profile": r#"{"errorRate": 0.1, "errorCode": 503}"#}}})),
        )
        .await
        .expect("fault profile");
    }
    eventually(
        "the canary weight back to 0",
        Duration::from_secs(120),
        || async { (route_canary_weight(&ns.client, &ns.name).await == 0).then_some(()) },
    )
    .await;
    let to_zero = onset.elapsed();
    println!("fault onset to verified weight 0: {to_zero:.1?}");
    let rolled = wait_phase(
        &rollouts,
        RolloutPhase::RolledBack,
        Some(GOOD_B),
        Duration::from_secs(90),
    )
    .await;
    let rb = rolled.rollback.clone().expect("saga recorded");
    assert_eq!(rb.metric.as_deref(), Some("error-rate"));
    assert!(
        rb.breach_at.is_some() && rb.weight_zero_at.is_some() && rb.recovered_at.is_some(),
        "{rb:?}"
    );
    assert_eq!(rb.completed.len(), 6, "{:?}", rb.completed);
    let canary = deployments.get("web-canary").await.expect("canary");
    assert_eq!(canary.spec.and_then(|s| s.replicas), Some(0));
    let stable = deployments.get("web-stable").await.expect("stable");
    assert!(
        image_of(&stable).ends_with(GOOD_B),
        "the stable still serves the stable digest"
    );
    let bad = releases
        .get(&format!("web-{}", &BAD_C[7..17]))
        .await
        .expect("bad release");
    let bs = bad.status.expect("status");
    assert_eq!(bs.phase, Some(ReleasePhase::Unstable));
    let verdict = bs.verdict.expect("verdict");
    assert_eq!(verdict.metric.as_deref(), Some("error-rate"));
    let ev = &verdict.evidence[0];
    assert_eq!(ev.verdict, "Fail");
    assert!(
        ev.counts.is_some()
            && ev
                .queries
                .iter()
                .any(|q| q.promql.contains("web-canary") && q.value.is_some()),
        "{ev:?}"
    );
    let incidents: Vec<_> = rolled
        .outbox
        .iter()
        .filter(|e| {
            e.dedup_key
                .ends_with(&bad.metadata.name.clone().unwrap_or_default())
        })
        .collect();
    assert_eq!(
        incidents
            .iter()
            .filter(|e| format!("{:?}", e.action) == "Trigger")
            .count(),
        1,
        "exactly one incident"
    );

    // Back to the good digest, then the bad one again: Blocked, no new canary pods.
    set_target(&ns, GOOD_B, None).await;
    wait_phase(
        &rollouts,
        RolloutPhase::Stable,
        Some(GOOD_B),
        Duration::from_secs(30),
    )
    .await;
    set_target(&ns, BAD_C, None).await;
    let blocked = wait_phase(
        &rollouts,
        RolloutPhase::Blocked,
        None,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        blocked
            .message
            .as_deref()
            .is_some_and(|m| m.contains("Unstable")),
        "{:?}",
        blocked.message
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let canary = deployments.get("web-canary").await.expect("canary");
    assert_eq!(
        canary.spec.and_then(|s| s.replicas),
        Some(0),
        "no canary for a blocked digest"
    );
    assert_eq!(status(&rollouts).await.phase, Some(RolloutPhase::Blocked));

    let _ =
        Api::<DynamicObject>::all_with(ns.client.clone(), &rg("MetricProvider", "metricproviders"))
            .delete(&provider, &Default::default())
            .await;
    ns.cleanup().await;
}
