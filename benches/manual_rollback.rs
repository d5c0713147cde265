//! What a rollback by hand costs beyond the Kubernetes rolling update it rides on, on the local
//! environment (`scripts/env up`, then `source target/env/env.sh`).
//!
//! Each run has a Rollout with 3 replicas whose pods take 2 s to become Ready (kwok's pod-ready
//! delay), promoted from release A to release B; and a twin Deployment with the same template,
//! strategy and replicas, on B. Then, one after the other:
//! - `rollguard rollback --to A`: the request is sent, and the clock stops when `<name>-stable`
//!   has every replica of A's template ready;
//! - the twin gets A's template by a plain apply (what `kubectl set image` and `kubectl set env`
//!   would do), and the clock stops when it has every replica ready.
//!
//! Both are watched every 100 ms. `cargo bench --bench manual_rollback` (5 runs) or
//! `-- --runs N`. With `-- --redeploy`, `rollguard redeploy --to A` instead (A's image on B's
//! environment, through a Release the controller makes first), against the twin given the same
//! image and environment. The controller's log is `target/manual-rollback.log`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams};
use rollguard::api::rollout::{Rollout, RolloutPhase};
use rollguard::rollout::plan::{Request, RequestAction};
use serde_json::{Value, json};

const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const REPLICAS: i32 = 3;
const READY_DELAY: &str = "2s";

/// A Deployment of `name` on `digest`: the same template the Rollout's target and the twin
/// carry, with the arms' strategy.
fn deployment(name: &str, app: &str, digest: &str) -> Value {
    redeployed(name, app, digest, digest)
}

/// As [`deployment`], with the image of `digest` and the environment of `config`.
fn redeployed(name: &str, app: &str, digest: &str, config: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": app}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"}},
            "template": {
                "metadata": {"labels": {"app": app},
                             "annotations": {"pod-ready.stage.kwok.x-k8s.io/delay": READY_DELAY}},
                "spec": {"containers": [{"name": "web", "image": format!("registry.example/web@{digest}"),
                                         "env": [{"name": "RELEASE", "value": &config[7..12]}]}]},
            },
        },
    })
}

/// Every replica of `digest` ready on Deployment `name`, as its status says.
async fn rolled_out(api: &Api<Deployment>, name: &str, digest: &str) -> bool {
    let Ok(d) = api.get(name).await else {
        return false;
    };
    let image = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let s = d.status.clone().unwrap_or_default();
    image.ends_with(digest)
        && s.observed_generation == d.metadata.generation
        && s.updated_replicas == Some(REPLICAS)
        && s.ready_replicas == Some(REPLICAS)
        && s.replicas == Some(REPLICAS)
}

async fn until_rolled_out(api: &Api<Deployment>, name: &str, digest: &str, start: Instant) -> f64 {
    while !rolled_out(api, name, digest).await {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "{name} did not roll out to {digest}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed().as_secs_f64()
}

async fn one_run(redeploy: bool) -> (f64, f64) {
    let ns = TestNamespace::create("mrb").await;
    let deployments = Api::<Deployment>::namespaced(ns.client.clone(), &ns.name);
    let rollouts = Api::<Rollout>::namespaced(ns.client.clone(), &ns.name);
    let apply = |d: Value| {
        let deployments = deployments.clone();
        async move {
            let name = d["metadata"]["name"].as_str().unwrap_or("").to_owned();
            let d: Deployment = serde_json::from_value(d).expect("deployment");
            deployments
                .patch(
                    &name,
                    &PatchParams::apply("bench").force(),
                    &Patch::Apply(&d),
                )
                .await
                .expect("apply");
        }
    };
    apply(deployment("web", "web", A)).await;
    ns.apply(
        &core_resource("rollguard.dev/v1alpha1", "Rollout", "rollouts"),
        json!({
            "apiVersion": "rollguard.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
            "spec": {"targetRef": {"name": "web"}, "withoutAnalysis": true,
                     "steps": [{"setWeight": 50, "duration": "1s"}]},
        }),
    )
    .await;
    let stable_on = |digest: &'static str| {
        let rollouts = rollouts.clone();
        async move {
            rollouts
                .get("web")
                .await
                .ok()
                .and_then(|r| r.status)
                .is_some_and(|s| {
                    s.phase == Some(RolloutPhase::Stable)
                        && s.stable.is_some_and(|r| r.digest == digest)
                })
        }
    };
    eventually("A stable", Duration::from_secs(120), || async {
        stable_on(A).await.then_some(())
    })
    .await;
    apply(deployment("web", "web", B)).await;
    apply(deployment("twin", "twin", B)).await;
    eventually("B promoted", Duration::from_secs(180), || async {
        stable_on(B).await.then_some(())
    })
    .await;
    until_rolled_out(&deployments, "web-stable", B, Instant::now()).await;
    until_rolled_out(&deployments, "twin", B, Instant::now()).await;

    let start = Instant::now();
    rollguard::ops::submit(
        &ns.client,
        &ns.name,
        "web",
        Request {
            id: String::new(),
            action: if redeploy {
                RequestAction::Redeploy
            } else {
                RequestAction::Rollback
            },
            by: String::new(),
            reason: Some("benchmark".into()),
            to: Some(format!("web-{}", &A[7..17])),
            unstable: None,
            warnings: Vec::new(),
        },
    )
    .await
    .expect("rollback request");
    let rollback = until_rolled_out(&deployments, "web-stable", A, start).await;

    let start = Instant::now();
    apply(if redeploy {
        redeployed("twin", "twin", A, B)
    } else {
        deployment("twin", "twin", A)
    })
    .await;
    let plain = until_rolled_out(&deployments, "twin", A, start).await;
    ns.cleanup().await;
    (rollback, plain)
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .skip_while(|a| a != "--runs")
        .nth(1)
        .map(|n| n.parse().expect("--runs N"))
        .unwrap_or(5);
    let redeploy = std::env::args().any(|a| a == "--redeploy");
    let verb = if redeploy { "redeploy" } else { "rollback" };
    let client = client().await;
    install_crds(&client).await;
    let log = repo_root().join("target/manual-rollback.log");
    let controller = ControllerProcess::launch(
        &log.to_string_lossy(),
        &[("RUST_LOG", "info,kube=warn")],
        &[],
    );
    println!(
        "{runs} runs; {REPLICAS} replicas, {READY_DELAY} to Ready each; controller log {}",
        log.display()
    );
    let mut rows = Vec::new();
    for i in 0..runs {
        let (rollback, plain) = one_run(redeploy).await;
        println!(
            "  run {}: rollguard {verb} {rollback:.1} s, plain rolling update {plain:.1} s, difference {:+.1} s",
            i + 1,
            rollback - plain
        );
        rows.push((rollback, plain));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let diffs: Vec<f64> = rows.iter().map(|(r, p)| r - p).collect();
    println!(
        "\n| | median | max |\n|---|---|---|\n| rollguard {verb}, request to all replicas ready | {:.1} s | {:.1} s |\n| plain rolling update of the twin | {:.1} s | {:.1} s |\n| difference | {:+.1} s | {:+.1} s |",
        median(rows.iter().map(|r| r.0).collect()),
        rows.iter().map(|r| r.0).fold(0.0, f64::max),
        median(rows.iter().map(|r| r.1).collect()),
        rows.iter().map(|r| r.1).fold(0.0, f64::max),
        median(diffs.clone()),
        diffs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    controller.kill();
}
