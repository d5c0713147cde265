//! The controller's footprint under load, on the local environment (`scripts/env up`, then
//! `source target/env/env.sh`): N Rollouts become stable, then all N canaries progress at once
//! with their analysis running. Prints the controller's resident memory and CPU for each stage.
//!
//! `cargo bench --bench controller_load` (N = 50), or `-- --rollouts N [--progressing M]` to
//! move only the first M of them to a new digest (500 idle and 50 progressing:
//! `-- --rollouts 500 --progressing 50`). Past 300 pods the bench adds kwok nodes of its own,
//! and removes them at the end.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use kube::Api;
use kube::core::DynamicObject;
use rollguard::api::rollout::{Rollout, RolloutPhase};
use serde_json::json;

const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// Clock ticks per second for /proc's CPU times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

fn target(name: &str, digest: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": format!("registry.example/{name}@{digest}"),
                                         "ports": [{"name": "http", "containerPort": 8080}]}]},
            },
        },
    })
}

/// Resident memory (KiB) and CPU seconds used so far by `pid`, from /proc.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    (rss, ticks as f64 / TICKS)
}

/// Samples `pid` every second for `seconds`: peak and last RSS in MiB, mean CPU in percent of
/// one core.
async fn sample(pid: u32, seconds: u64) -> (f64, f64, f64) {
    let (_, cpu0) = usage(pid);
    let t0 = Instant::now();
    let mut peak = 0;
    let mut last = 0;
    for _ in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (rss, _) = usage(pid);
        peak = peak.max(rss);
        last = rss;
    }
    let (_, cpu1) = usage(pid);
    let cpu = 100.0 * (cpu1 - cpu0) / t0.elapsed().as_secs_f64();
    (peak as f64 / 1024.0, last as f64 / 1024.0, cpu)
}

async fn count(rollouts: &Api<Rollout>, ok: impl Fn(&Rollout) -> bool) -> usize {
    rollouts
        .list(&Default::default())
        .await
        .map(|l| l.items.iter().filter(|r| ok(r)).count())
        .unwrap_or(0)
}

async fn wait_for(
    what: &str,
    n: usize,
    rollouts: &Api<Rollout>,
    ok: impl Fn(&Rollout) -> bool,
) -> Duration {
    let t0 = Instant::now();
    let mut shown = usize::MAX;
    loop {
        let c = count(rollouts, &ok).await;
        if c != shown {
            eprintln!("  {c:>3}/{n} {what} ({:.0?})", t0.elapsed());
            shown = c;
        }
        if c == n {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "{what}: only {c} of {n} after 10 minutes"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A positive count given as `--flag N`, or `default` when the flag is absent.
fn count_flag(args: &[String], flag: &str, default: usize) -> usize {
    match args.iter().position(|a| a == flag) {
        None => default,
        Some(i) => match args.get(i + 1).and_then(|v| v.parse().ok()) {
            Some(n) if n > 0 => n,
            _ => {
                eprintln!("controller_load: {flag} takes a positive count");
                std::process::exit(2);
            }
        },
    }
}

/// Fake nodes for the pods of many Rollouts: the environment's three hold 330.
async fn add_nodes(client: &kube::Client, pods: usize) -> Vec<String> {
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone());
    let mut names = Vec::new();
    for i in 0..pods.div_ceil(250) {
        let name = format!("kwok-bench-{i}");
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                         "labels": {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
            "status": {"capacity": {"cpu": "64", "memory": "512Gi", "pods": "250"},
                       "allocatable": {"cpu": "64", "memory": "512Gi", "pods": "250"}},
        }))
        .expect("node");
        nodes
            .patch(
                &name,
                &kube::api::PatchParams::apply("rollguard-bench").force(),
                &kube::api::Patch::Apply(&node),
            )
            .await
            .expect("a bench node");
        names.push(name);
    }
    names
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n = count_flag(&args, "--rollouts", 50);
    let m = count_flag(&args, "--progressing", n);
    if m > n {
        eprintln!("controller_load: --progressing {m} is more than --rollouts {n}");
        std::process::exit(2);
    }
    if std::env::var("KUBECONFIG").is_err() {
        eprintln!("controller_load: {NOT_UP}");
        std::process::exit(2);
    }
    let ns = TestNamespace::create("load").await;
    install_crds(&ns.client).await;
    // Each Rollout holds a target pod until it is stable, then a stable pod, and a canary pod
    // while progressing: about two pods each at the peak.
    let nodes = if 2 * n + m > 300 {
        add_nodes(&ns.client, 2 * n + m).await
    } else {
        Vec::new()
    };
    let provider = format!("prom-{}", ns.name);
    let mp = core_resource(
        "rollguard.dev/v1alpha1",
        "MetricProvider",
        "metricproviders",
    );
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "rollguard.dev/v1alpha1", "kind": "MetricProvider", "metadata": {"name": provider},
        "spec": {"prometheus": {"address": prometheus_url(), "timeout": "3s"}, "allowedNamespaces": [ns.name]},
    }))
    .expect("provider");
    Api::<DynamicObject>::all_with(ns.client.clone(), &mp)
        .patch(
            &provider,
            &kube::api::PatchParams::apply("rollguard-bench").force(),
            &kube::api::Patch::Apply(&obj),
        )
        .await
        .expect("provider");
    let selector = |extra: &str| {
        format!(
            r#"sum(istio_requests_total{{reporter="destination", destination_workload_namespace="{}", destination_workload="{{{{arm}}}}"{extra}}})"#,
            ns.name
        )
    };
    ns.apply(
        &core_resource("rollguard.dev/v1alpha1", "AnalysisTemplate", "analysistemplates"),
        json!({
            "apiVersion": "rollguard.dev/v1alpha1", "kind": "AnalysisTemplate", "metadata": {"name": "errors"},
            "spec": {"metrics": [{"name": "error-rate", "provider": provider, "interval": "5s", "critical": true,
                "errorRate": {"requests": selector(""), "errors": selector(r#", response_code=~"5..""#)}}]},
        }),
    )
    .await;
    eprintln!("creating {n} services, routes and Rollouts in {}", ns.name);
    let deploy = core_resource("apps/v1", "Deployment", "deployments");
    let route = core_resource("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes");
    for i in 0..n {
        let name = format!("svc{i:03}");
        ns.apply(&deploy, target(&name, A)).await;
        ns.apply(&core_resource("v1", "Service", "services"), json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        }))
        .await;
        ns.apply(
            &route,
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": name, "annotations": {"sim.rollguard.dev/rps": "20"}},
                "spec": {"rules": [{"backendRefs": [
                    {"name": format!("{name}-stable"), "port": 80, "weight": 100},
                    {"name": format!("{name}-canary"), "port": 80, "weight": 0}]}]},
            }),
        )
        .await;
        ns.apply(
            &core_resource("rollguard.dev/v1alpha1", "Rollout", "rollouts"),
            json!({
                "apiVersion": "rollguard.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": name},
                "spec": {
                    "targetRef": {"name": name},
                    "trafficRouter": {"gatewayAPI": {"httpRoute": name}},
                    "steps": [{"setWeight": 10, "duration": "10m"}, {"setWeight": 50, "duration": "10m"}],
                    "analysis": {"templates": [{"name": "errors"}]},
                },
            }),
        )
        .await;
    }
    let log = format!(
        "{}/target/controller-load-{}.log",
        env!("CARGO_MANIFEST_DIR"),
        ns.name
    );
    // The chart's default concurrency.
    let controller = ControllerProcess::launch(
        &log,
        &[("RUST_LOG", "info,kube=warn")],
        &["--concurrency", "16"],
    );
    let ns_client = ns.client.clone();
    let pid = controller.id();
    let rollouts = Api::<Rollout>::namespaced(ns.client.clone(), &ns.name);
    let phase =
        |p: RolloutPhase| move |r: &Rollout| r.status.as_ref().and_then(|s| s.phase) == Some(p);
    let t_stable = wait_for("stable", n, &rollouts, phase(RolloutPhase::Stable)).await;
    eprintln!("sampling the controller with {n} stable Rollouts for 20 s");
    let idle = sample(pid, 20).await;

    for i in 0..m {
        ns.apply(&deploy, target(&format!("svc{i:03}"), B)).await;
    }
    let t_progress = wait_for("progressing at 10%", m, &rollouts, |r| {
        r.status.as_ref().is_some_and(|s| {
            s.phase == Some(RolloutPhase::Progressing) && s.step_started_at.is_some()
        })
    })
    .await;
    eprintln!("sampling the controller with {m} of {n} canaries under analysis for 30 s");
    let busy = sample(pid, 30).await;
    let measured = count(&rollouts, |r| {
        r.status
            .as_ref()
            .and_then(|s| s.analysis.as_ref())
            .is_some_and(|a| a.metrics.iter().any(|m| m.counts.is_some()))
    })
    .await;
    controller.kill();

    println!();
    println!(
        "| {n} Rollouts | time to reach | controller RSS peak | RSS at end | CPU (one core) |"
    );
    println!("|---|---:|---:|---:|---:|");
    let busy_stage = format!("{m} progressing, analysis every 5 s");
    for (stage, t, (peak, last, cpu)) in [
        ("all stable (idle)", t_stable, idle),
        (busy_stage.as_str(), t_progress, busy),
    ] {
        println!(
            "| {stage} | {:.0} s | {peak:.1} MiB | {last:.1} MiB | {cpu:.1}% |",
            t.as_secs_f64()
        );
    }
    println!("\n{measured} of {m} canaries had measured evidence in status at the end.");
    let _ = Api::<DynamicObject>::all_with(ns.client.clone(), &mp)
        .delete(&provider, &Default::default())
        .await;
    ns.cleanup().await;
    let node_api = Api::<k8s_openapi::api::core::v1::Node>::all(ns_client);
    for name in nodes {
        let _ = node_api.delete(&name, &Default::default()).await;
    }
}
