//! How fast a bad canary's traffic is taken away, measured from outside the controller, on the
//! local environment (`scripts/env up`, then `source target/env/env.sh`).
//!
//! Each run is its own namespace: a Service behind an Istio VirtualService that the traffic
//! simulator loads with 100 requests per second, the shipped `analysis-templates/istio.yaml`
//! with its defaults (the scrape interval is read from Prometheus's configuration), and a
//! Rollout with one step at 10%. The stable serves 0.5% errors. A watcher reads the route and
//! takes the time from the canary weight first above 0 to the weight back at 0.
//!
//! - **10% errors**: the new version fails 10% of its requests from its first one. Runs one at
//!   a time, the watcher polling every 100 ms.
//! - **×2 errors**: 1% against the stable's 0.5%. Runs all at once, polled every second.
//! - **healthy**: the same 0.5% as the stable. Runs all at once beside the ×2 runs; each must be
//!   promoted, never rolled back.
//!
//! `cargo bench --bench rollback_latency` (10 runs of each), `-- --runs N`, or `-- --only
//! fault|double|healthy`. The controller's log is `target/rollback-latency.log`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use kube::Api;
use kube::core::{ApiResource, DynamicObject};
use rollguard::api::rollout::{Rollout, RolloutPhase};
use serde_json::{Value, json};

const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// The stable's behaviour, and a healthy canary's: 0.5% of requests answered 503.
const HEALTHY: &str = r#"{"errorRate": 0.005, "errorCode": 503}"#;
const TEN_PERCENT: &str = r#"{"errorRate": 0.1, "errorCode": 503}"#;
const DOUBLE: &str = r#"{"errorRate": 0.01, "errorCode": 503}"#;

/// Past this the run counts as neither rolled back nor promoted.
const SLOW_RUN_LIMIT: Duration = Duration::from_secs(15 * 60);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    TenPercent,
    Double,
    Healthy,
}

impl Kind {
    fn profile(self) -> &'static str {
        match self {
            Kind::TenPercent => TEN_PERCENT,
            Kind::Double => DOUBLE,
            Kind::Healthy => HEALTHY,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::TenPercent => "10% errors (x20)",
            Kind::Double => "1% errors (x2)",
            Kind::Healthy => "healthy (0.5%)",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Kind::TenPercent => "rbl-fault",
            Kind::Double => "rbl-double",
            Kind::Healthy => "rbl-healthy",
        }
    }
}

struct Args {
    runs: usize,
    only: Option<Kind>,
}

fn args() -> Args {
    let mut args = Args {
        runs: 10,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => {
                args.runs = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| panic!("--runs needs a positive count"));
            }
            "--only" => {
                args.only = Some(match it.next().as_deref() {
                    Some("fault") => Kind::TenPercent,
                    Some("double") => Kind::Double,
                    Some("healthy") => Kind::Healthy,
                    other => panic!("--only takes fault, double or healthy, got {other:?}"),
                });
            }
            // cargo bench passes --bench to every harness.
            "--bench" => {}
            other => panic!("unknown argument {other:?}: --runs N, --only fault|double|healthy"),
        }
    }
    args
}

fn resource(api_version: &str, kind: &str, plural: &str) -> ApiResource {
    core_resource(api_version, kind, plural)
}

fn virtual_service() -> ApiResource {
    resource(
        "networking.istio.io/v1",
        "VirtualService",
        "virtualservices",
    )
}

fn target(digest: &str, profile: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"},
                             "annotations": {"sim.rollguard.dev/profile": profile}},
                "spec": {"containers": [{"name": "web", "image": format!("registry.example/web@{digest}"),
                                         "ports": [{"name": "http", "containerPort": 8080}]}]},
            },
        },
    })
}

/// One run's namespace: the service, its route at 100 rps, and a Rollout on the shipped
/// template, with digest A stable.
struct Case {
    ns: TestNamespace,
    kind: Kind,
    rollouts: Api<Rollout>,
    routes: Api<DynamicObject>,
}

/// What one run ended as.
#[derive(Debug)]
struct Outcome {
    kind: Kind,
    /// Canary weight first above 0 → back at 0, when it went back.
    weight_window: Option<Duration>,
    /// RolledBack, Stable on B, or what it was when the run gave up.
    ended: String,
    rolled_back: bool,
    promoted: bool,
}

impl Case {
    async fn new(kind: Kind) -> Case {
        let ns = TestNamespace::create(kind.prefix()).await;
        let deployments = resource("apps/v1", "Deployment", "deployments");
        ns.apply(&deployments, target(A, HEALTHY)).await;
        ns.apply(
            &resource("v1", "Service", "services"),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                   "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
        )
        .await;
        ns.apply(
            &virtual_service(),
            json!({
                "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": "web", "annotations": {"sim.rollguard.dev/rps": "100"}},
                "spec": {"hosts": ["web"], "http": [{"name": "primary", "route": [
                    {"destination": {"host": "web-stable"}, "weight": 100},
                    {"destination": {"host": "web-canary"}, "weight": 0},
                ]}]},
            }),
        )
        .await;
        ns.apply(
            &resource("rollguard.dev/v1alpha1", "Rollout", "rollouts"),
            json!({
                "apiVersion": "rollguard.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": "web"},
                "spec": {
                    "targetRef": {"name": "web"},
                    "trafficRouter": {"istio": {"virtualService": "web"}},
                    "steps": [{"setWeight": 10, "duration": "60s"}],
                    "analysis": {"templates": [{"name": "istio-http", "clusterScope": true}]},
                },
            }),
        )
        .await;
        Case {
            rollouts: Api::namespaced(ns.client.clone(), &ns.name),
            routes: Api::namespaced_with(ns.client.clone(), &ns.name, &virtual_service()),
            ns,
            kind,
        }
    }

    async fn rollout(&self) -> Option<Rollout> {
        self.rollouts.get("web").await.ok()
    }

    async fn stable_on(&self, digest: &str) -> bool {
        self.rollout()
            .await
            .and_then(|r| r.status)
            .is_some_and(|s| {
                s.phase == Some(RolloutPhase::Stable)
                    && s.stable.as_ref().is_some_and(|r| r.digest == digest)
            })
    }

    async fn wait_initialized(&self) {
        eventually(
            &format!("{}: digest A stable", self.ns.name),
            Duration::from_secs(120),
            || async { self.stable_on(A).await.then_some(()) },
        )
        .await;
    }

    /// The canary's percent of the route's weight.
    async fn canary_weight(&self) -> Option<u64> {
        let route = self.routes.get("web").await.ok()?;
        let v = serde_json::to_value(route).ok()?;
        let backends = v["spec"]["http"][0]["route"].as_array()?.clone();
        let weight = |b: &Value| b["weight"].as_u64().unwrap_or(0);
        let total: u64 = backends.iter().map(weight).sum();
        let canary: u64 = backends
            .iter()
            .filter(|b| b["destination"]["host"] == "web-canary")
            .map(weight)
            .sum();
        (100 * canary).checked_div(total)
    }

    /// Deploys B with the run's behaviour and watches the route every `poll` until the canary's
    /// weight has gone above 0 and come back, then waits for the Rollout to settle.
    async fn run(self, poll: Duration) -> Outcome {
        self.ns
            .apply(
                &resource("apps/v1", "Deployment", "deployments"),
                target(B, self.kind.profile()),
            )
            .await;
        let start = Instant::now();
        let mut first_above = None;
        let mut window = None;
        while start.elapsed() < SLOW_RUN_LIMIT {
            let w = self.canary_weight().await;
            let now = Instant::now();
            match (first_above, w) {
                (None, Some(w)) if w > 0 => first_above = Some(now),
                (Some(t0), Some(0)) => {
                    window = Some(now - t0);
                    break;
                }
                _ => {}
            }
            tokio::time::sleep(poll).await;
        }
        let mut ended = String::from("no outcome");
        let (mut rolled_back, mut promoted) = (false, false);
        let settle = Instant::now();
        while window.is_some() && settle.elapsed() < Duration::from_secs(60) {
            let status = self.rollout().await.and_then(|r| r.status);
            if let Some(s) = status {
                // RollingBack: the weight is 0 and the rest of the saga (recovery) follows.
                rolled_back = matches!(
                    s.phase,
                    Some(RolloutPhase::RollingBack | RolloutPhase::RolledBack)
                );
                promoted = s.phase == Some(RolloutPhase::Stable)
                    && s.stable.as_ref().is_some_and(|r| r.digest == B);
                ended = format!("{:?}: {}", s.phase, s.message.unwrap_or_default());
                if rolled_back || promoted {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let outcome = Outcome {
            kind: self.kind,
            weight_window: window,
            ended,
            rolled_back,
            promoted,
        };
        println!(
            "  {:<11} {:<18} weight>0 → 0: {:>9}  {}",
            self.ns.name,
            self.kind.label(),
            outcome
                .weight_window
                .map_or("—".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            if rolled_back {
                "rolled back"
            } else if promoted {
                "promoted"
            } else {
                outcome.ended.as_str()
            }
        );
        self.ns.cleanup().await;
        outcome
    }
}

fn summarize(kind: Kind, outcomes: &[Outcome]) {
    let mine: Vec<&Outcome> = outcomes.iter().filter(|o| o.kind == kind).collect();
    if mine.is_empty() {
        return;
    }
    let rolled = mine.iter().filter(|o| o.rolled_back).count();
    let promoted = mine.iter().filter(|o| o.promoted).count();
    let mut secs: Vec<f64> = mine
        .iter()
        .filter(|o| o.rolled_back)
        .filter_map(|o| o.weight_window.map(|d| d.as_secs_f64()))
        .collect();
    secs.sort_by(f64::total_cmp);
    let stats = if secs.is_empty() {
        "—".to_owned()
    } else {
        let median = if secs.len() % 2 == 1 {
            secs[secs.len() / 2]
        } else {
            (secs[secs.len() / 2 - 1] + secs[secs.len() / 2]) / 2.0
        };
        format!(
            "median {median:.1} s, max {:.1} s",
            secs.last().copied().unwrap_or(0.0)
        )
    };
    let runs = mine.len();
    match kind {
        Kind::Healthy => println!(
            "| {} | {runs} | promoted {promoted}, false rollbacks {rolled} |",
            kind.label()
        ),
        _ => println!(
            "| {} | {runs} | rolled back {rolled} ({stats}), promoted {promoted} |",
            kind.label()
        ),
    }
}

async fn setup(client: &kube::Client) {
    install_crds(client).await;
    let apply = |ar: ApiResource, object: Value| {
        let client = client.clone();
        async move {
            let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
            let obj: DynamicObject = serde_json::from_value(object).expect("object");
            Api::<DynamicObject>::all_with(client, &ar)
                .patch(
                    &name,
                    &kube::api::PatchParams::apply("rollguard-bench").force(),
                    &kube::api::Patch::Apply(&obj),
                )
                .await
                .unwrap_or_else(|e| panic!("applying {} {name}: {e}", ar.kind));
        }
    };
    apply(
        resource(
            "rollguard.dev/v1alpha1",
            "MetricProvider",
            "metricproviders",
        ),
        json!({
            "apiVersion": "rollguard.dev/v1alpha1", "kind": "MetricProvider",
            "metadata": {"name": "prometheus"},
            "spec": {"prometheus": {"address": prometheus_url()}, "allowedNamespaces": ["*"]},
        }),
    )
    .await;
    let shipped = repo_root().join("analysis-templates/istio.yaml");
    let text =
        std::fs::read_to_string(&shipped).unwrap_or_else(|e| panic!("{}: {e}", shipped.display()));
    let template: Value =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", shipped.display()));
    apply(
        resource(
            "rollguard.dev/v1alpha1",
            "ClusterAnalysisTemplate",
            "clusteranalysistemplates",
        ),
        template,
    )
    .await;
}

#[tokio::main]
async fn main() {
    let args = args();
    let client = client().await;
    setup(&client).await;
    let log = repo_root().join("target/rollback-latency.log");
    let controller = ControllerProcess::launch(
        &log.to_string_lossy(),
        &[("RUST_LOG", "info,rollguard=info,kube=warn")],
        &["--concurrency", "8"],
    );
    println!(
        "controller pid {} (log {}); {} runs of each kind",
        controller.id(),
        log.display(),
        args.runs
    );
    let wanted = |k: Kind| args.only.is_none_or(|o| o == k);
    let mut outcomes = Vec::new();

    if wanted(Kind::TenPercent) {
        println!("10% errors, one run at a time, route polled every 100 ms:");
        for _ in 0..args.runs {
            let case = Case::new(Kind::TenPercent).await;
            case.wait_initialized().await;
            outcomes.push(case.run(Duration::from_millis(100)).await);
        }
    }

    let slow: Vec<Kind> = [Kind::Double, Kind::Healthy]
        .into_iter()
        .filter(|k| wanted(*k))
        .collect();
    if !slow.is_empty() {
        println!(
            "{}, all at once, routes polled every second (up to {} min):",
            slow.iter()
                .map(|k| k.label())
                .collect::<Vec<_>>()
                .join(" and "),
            SLOW_RUN_LIMIT.as_secs() / 60
        );
        let mut cases = Vec::new();
        for k in &slow {
            for _ in 0..args.runs {
                cases.push(Case::new(*k).await);
            }
        }
        for c in &cases {
            c.wait_initialized().await;
        }
        let runs = cases
            .into_iter()
            .map(|c| tokio::spawn(c.run(Duration::from_secs(1))));
        for r in futures::future::join_all(runs).await {
            outcomes.push(r.expect("run task"));
        }
    }

    println!("\n| canary | runs | outcome |\n|---|---|---|");
    for k in [Kind::TenPercent, Kind::Double, Kind::Healthy] {
        summarize(k, &outcomes);
    }
    controller.kill();
}
