//! The controller on the real control plane, with the traffic simulator and the real Prometheus
//! closing the loop: weights → traffic → metrics → analysis → promotion or rollback.
//!
//! Run by `make test` (needs `scripts/env up`): `cargo test --test controller_e2e -- --ignored`.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject};
use kube::{Api, Client};
use rollguard::api::release::{Release, ReleasePhase};
use rollguard::api::rollout::{OutboxAction, RollbackStep, Rollout, RolloutPhase, RolloutStatus};
use rollguard::traffic::router::MeshRouter;
use rollguard::traffic::{Arms, RouteKind, Router, Weights, weights};
use serde_json::{Value, json};

const GOOD_A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const GOOD_B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const BAD_C: &str = "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

/// 10% of requests answered 503: the error-rate fault.
const ERRORS: &str = r#"{"errorRate": 0.1, "errorCode": 503}"#;
/// Ten times slower, no errors: the latency-only fault.
const SLOW: &str = r#"{"p50Ms": 200, "p99Ms": 1000}"#;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Routing {
    Gateway,
    Istio,
    Smi,
    Replicas,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Judgement {
    Errors,
    Latency,
}

/// What a test's namespace holds: the router, what the template judges, the steps, and where
/// the MetricProvider points.
struct Scenario {
    router: Routing,
    judgement: Judgement,
    steps: Value,
    post_promotion_window: Option<&'static str>,
    prometheus: String,
    /// The template's `onInconclusive` and `inconclusiveLimit`.
    inconclusive: (&'static str, u32),
    /// The Rollout's `escalation` (a receiver that does not exist unless set).
    escalation: Option<Value>,
    recovery_window: &'static str,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            router: Routing::Gateway,
            judgement: Judgement::Errors,
            steps: json!([{"setWeight": 10, "duration": "4s"}, {"setWeight": 50, "duration": "4s"}]),
            post_promotion_window: None,
            prometheus: prometheus_url(),
            inconclusive: ("Rollback", 3),
            escalation: None,
            recovery_window: "5s",
        }
    }
}

fn rg(kind: &str, plural: &str) -> ApiResource {
    core_resource("rollguard.dev/v1alpha1", kind, plural)
}

fn route_resource(router: Routing) -> Option<ApiResource> {
    match router {
        Routing::Gateway => Some(core_resource(
            "gateway.networking.k8s.io/v1",
            "HTTPRoute",
            "httproutes",
        )),
        Routing::Istio => Some(core_resource(
            "networking.istio.io/v1",
            "VirtualService",
            "virtualservices",
        )),
        Routing::Smi => Some(core_resource(
            "split.smi-spec.io/v1alpha4",
            "TrafficSplit",
            "trafficsplits",
        )),
        Routing::Replicas => None,
    }
}

async fn apply_cluster(client: &Client, ar: &ApiResource, object: Value) {
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

fn target(digest: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "annotations": {"kubernetes.io/change-cause": format!("deploy {}", &digest[7..12])}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web", "app.kubernetes.io/version": &digest[7..12]}},
                "spec": {"containers": [{"name": "web", "image": format!("registry.example/web@{digest}"),
                                         "ports": [{"name": "http", "containerPort": 8080}]}]},
            },
        },
    })
}

/// The route object of each router, all traffic on stable, with 400 requests per second.
fn route(router: Routing) -> Option<Value> {
    let rps = json!({"sim.rollguard.dev/rps": "400"});
    Some(match router {
        Routing::Gateway => json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web", "annotations": rps},
            "spec": {
                "parentRefs": [{"name": "public"}],
                "rules": [{"backendRefs": [
                    {"name": "web-stable", "port": 80, "weight": 100},
                    {"name": "web-canary", "port": 80, "weight": 0},
                ]}],
            },
        }),
        Routing::Istio => json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "web", "annotations": rps},
            "spec": {
                "hosts": ["web"],
                "http": [{"name": "primary", "route": [
                    {"destination": {"host": "web-stable"}, "weight": 100},
                    {"destination": {"host": "web-canary"}, "weight": 0},
                ]}],
            },
        }),
        Routing::Smi => json!({
            "apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
            "metadata": {"name": "web", "annotations": rps},
            "spec": {"service": "web", "backends": [
                {"service": "web-stable", "weight": 100},
                {"service": "web-canary", "weight": 0},
            ]},
        }),
        Routing::Replicas => return None,
    })
}

fn traffic_router(router: Routing) -> Value {
    match router {
        Routing::Gateway => json!({"gatewayAPI": {"httpRoute": "web"}}),
        Routing::Istio => json!({"istio": {"virtualService": "web"}}),
        Routing::Smi => json!({"smi": {"trafficSplit": "web"}}),
        Routing::Replicas => Value::Null,
    }
}

/// A namespace with a service behind the scenario's router, a template judging it every 2 s on
/// Istio-style metrics, and a Rollout on digest A.
struct Fixture {
    ns: TestNamespace,
    provider: String,
    router: Routing,
    replicas: i32,
    rollouts: Api<Rollout>,
    deployments: Api<Deployment>,
    releases: Api<Release>,
    pods: Api<Pod>,
}

impl Fixture {
    async fn new(prefix: &str, sc: &Scenario) -> Fixture {
        let ns = TestNamespace::create(prefix).await;
        install_crds(&ns.client).await;
        let provider = format!("prom-{}", ns.name);
        apply_cluster(&ns.client, &rg("MetricProvider", "metricproviders"), json!({
            "apiVersion": "rollguard.dev/v1alpha1", "kind": "MetricProvider",
            "metadata": {"name": provider},
            "spec": {"prometheus": {"address": sc.prometheus, "timeout": "3s"}, "allowedNamespaces": [ns.name]},
        }))
        .await;
        // Without a mesh the canary's share is its share of pods: 9 stable pods make 10% one pod.
        let replicas = if sc.router == Routing::Replicas { 9 } else { 2 };
        let fx = Fixture {
            rollouts: Api::namespaced(ns.client.clone(), &ns.name),
            deployments: Api::namespaced(ns.client.clone(), &ns.name),
            releases: Api::namespaced(ns.client.clone(), &ns.name),
            pods: Api::namespaced(ns.client.clone(), &ns.name),
            ns,
            provider,
            router: sc.router,
            replicas,
        };
        fx.set_target(GOOD_A).await;
        let mut service = json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
        });
        if sc.router == Routing::Replicas {
            service["metadata"]["annotations"] = json!({"sim.rollguard.dev/rps": "400"});
        }
        fx.ns
            .apply(&core_resource("v1", "Service", "services"), service)
            .await;
        if let (Some(ar), Some(object)) = (route_resource(sc.router), route(sc.router)) {
            fx.ns.apply(&ar, object).await;
        }
        let selector = |extra: &str| {
            format!(
                r#"istio_requests_total{{reporter="destination", destination_workload_namespace="{}", destination_workload="{{{{arm}}}}"{extra}}}"#,
                fx.ns.name
            )
        };
        let metric = match sc.judgement {
            Judgement::Errors => json!({
                "name": "error-rate", "provider": fx.provider, "interval": "2s", "critical": true,
                "errorRate": {"requests": format!("sum({})", selector("")),
                              "errors": format!("sum({})", selector(r#", response_code=~"5..""#)),
                              "toleratedRatio": 1.5, "floor": 0.01, "minRequests": 100},
            }),
            Judgement::Latency => json!({
                "name": "latency", "provider": fx.provider, "interval": "2s", "critical": true,
                "latency": {"buckets": format!("sum by (le) ({})", selector("").replace("istio_requests_total", "istio_request_duration_milliseconds_bucket")),
                            "bucketUnit": "milliseconds", "quantiles": [0.5, 0.9],
                            "toleratedRatio": 1.5, "minRequests": 100},
            }),
        };
        fx.ns
            .apply(&rg("AnalysisTemplate", "analysistemplates"), json!({
                "apiVersion": "rollguard.dev/v1alpha1", "kind": "AnalysisTemplate",
                "metadata": {"name": "golden"},
                "spec": {"metrics": [metric], "onInconclusive": sc.inconclusive.0, "inconclusiveLimit": sc.inconclusive.1},
            }))
            .await;
        let mut spec = json!({
            "targetRef": {"name": "web"},
            "steps": sc.steps,
            "analysis": {"templates": [{"name": "golden"}]},
            "progressDeadline": "2m",
            "recoveryWindow": sc.recovery_window,
            "escalation": sc.escalation.clone().unwrap_or_else(|| json!({"receivers": ["pager"], "severity": "error"})),
        });
        if sc.router != Routing::Replicas {
            spec["trafficRouter"] = traffic_router(sc.router);
        }
        if let Some(w) = sc.post_promotion_window {
            spec["postPromotionWindow"] = json!(w);
        }
        fx.ns
            .apply(
                &rg("Rollout", "rollouts"),
                json!({"apiVersion": "rollguard.dev/v1alpha1", "kind": "Rollout",
                       "metadata": {"name": "web"}, "spec": spec}),
            )
            .await;
        fx
    }

    fn log(&self) -> String {
        format!(
            "{}/target/controller-e2e-{}.log",
            env!("CARGO_MANIFEST_DIR"),
            self.ns.name
        )
    }

    fn controller(&self) -> ControllerProcess {
        ControllerProcess::start(&self.log())
    }

    async fn status(&self) -> RolloutStatus {
        self.rollouts
            .get("web")
            .await
            .ok()
            .and_then(|r| r.status)
            .unwrap_or_default()
    }

    async fn wait_phase(
        &self,
        phase: RolloutPhase,
        digest: Option<&str>,
        timeout: Duration,
    ) -> RolloutStatus {
        let what = format!("Rollout web to be {phase:?} on {digest:?}");
        let start = Instant::now();
        loop {
            let s = self.status().await;
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

    /// Waits for the canary of the current target to run at its first step, weight verified.
    async fn wait_first_step(&self) {
        eventually("the canary at 10%", Duration::from_secs(90), || async {
            let s = self.status().await;
            (s.phase == Some(RolloutPhase::Progressing)
                && s.canary_weight == Some(10)
                && s.step_started_at.is_some())
            .then_some(())
        })
        .await;
    }

    /// The canary's share of traffic in percent, as the route object (or the pod counts) say.
    async fn canary_weight(&self) -> u64 {
        let Some(ar) = route_resource(self.router) else {
            let ready = |name: &'static str| async move {
                self.deployments
                    .get(name)
                    .await
                    .ok()
                    .and_then(|d| d.status?.ready_replicas)
                    .unwrap_or(0) as u64
            };
            let (c, s) = (ready("web-canary").await, ready("web-stable").await);
            return (100 * c).checked_div(c + s).unwrap_or(0);
        };
        let route =
            Api::<DynamicObject>::namespaced_with(self.ns.client.clone(), &self.ns.name, &ar)
                .get("web")
                .await
                .expect("route");
        let v = serde_json::to_value(route).expect("json");
        let (backends, name_of): (&Value, fn(&Value) -> &Value) = match self.router {
            Routing::Gateway => (&v["spec"]["rules"][0]["backendRefs"], |b| &b["name"]),
            Routing::Istio => (
                &v["spec"]["http"][0]["route"],
                |b| &b["destination"]["host"],
            ),
            _ => (&v["spec"]["backends"], |b| &b["service"]),
        };
        let backends = backends.as_array().cloned().unwrap_or_default();
        let weight = |b: &Value| b["weight"].as_u64().unwrap_or(0);
        let total: u64 = backends.iter().map(weight).sum();
        let canary: u64 = backends
            .iter()
            .filter(|b| name_of(b) == "web-canary")
            .map(weight)
            .sum();
        (100 * canary).checked_div(total).unwrap_or(0)
    }

    async fn set_target(&self, digest: &str) {
        self.ns
            .apply(
                &core_resource("apps/v1", "Deployment", "deployments"),
                target(digest, self.replicas),
            )
            .await;
    }

    /// Deploys the bad digest and, once its canary's 10% is verified, gives its pods `profile`.
    async fn deploy_bad(&self, profile: &str) {
        self.set_target(BAD_C).await;
        self.wait_first_step().await;
        self.fault("canary", profile).await;
    }

    /// Gives the running pods of one arm a fault profile, as a bad version would behave.
    async fn fault(&self, arm: &str, profile: &str) {
        let pods = self
            .pods
            .list(&ListParams::default().labels(&format!("rollguard.dev/arm={arm}")))
            .await
            .expect("pods");
        assert!(!pods.items.is_empty(), "no {arm} pods to fault");
        for p in pods.items {
            let name = p.metadata.name.clone().expect("named");
            self.pods
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": {
                        "sim.rollguard.dev/profile": profile}}})),
                )
                .await
                .expect("fault profile");
        }
    }

    async fn release(&self, digest: &str) -> Release {
        self.releases
            .get(&format!("web-{}", &digest[7..17]))
            .await
            .expect("release")
    }

    async fn release_phase(&self, digest: &str) -> Option<ReleasePhase> {
        self.release(digest).await.status?.phase
    }

    async fn image(&self, deployment: &str) -> String {
        let d = self.deployments.get(deployment).await.expect(deployment);
        d.spec
            .and_then(|s| s.template.spec)
            .and_then(|s| s.containers[0].image.clone())
            .unwrap_or_default()
    }

    async fn replicas(&self, deployment: &str) -> Option<i32> {
        self.deployments
            .get(deployment)
            .await
            .ok()
            .and_then(|d| d.spec?.replicas)
    }

    /// The first digest becomes stable; the target is scaled to zero.
    async fn initialized(&self) {
        self.wait_phase(RolloutPhase::Stable, Some(GOOD_A), Duration::from_secs(90))
            .await;
        eventually(
            "the target scaled to zero",
            Duration::from_secs(30),
            || async { (self.replicas("web").await == Some(0)).then_some(()) },
        )
        .await;
    }

    /// Deploys `digest` and waits for its promotion through every step; returns the status.
    async fn promoted(&self, digest: &str, steps: usize) -> RolloutStatus {
        let t0 = Instant::now();
        self.set_target(digest).await;
        let s = self
            .wait_phase(RolloutPhase::Stable, Some(digest), Duration::from_secs(240))
            .await;
        println!("{:?}: promoted in {:.0?}", self.router, t0.elapsed());
        let reasons: Vec<&str> = s.timeline.iter().map(|t| t.reason.as_str()).collect();
        assert!(
            reasons.contains(&"CanaryStarted") && reasons.contains(&"Promoted"),
            "{reasons:?}"
        );
        let since_start = reasons
            .iter()
            .rposition(|r| *r == "CanaryStarted")
            .unwrap_or(0);
        assert_eq!(
            reasons[since_start..]
                .iter()
                .filter(|r| **r == "WeightSet")
                .count(),
            steps,
            "a verified weight for each step: {reasons:?}"
        );
        assert!(self.image("web-stable").await.ends_with(digest));
        assert_eq!(self.canary_weight().await, 0);
        assert_eq!(self.release_phase(digest).await, Some(ReleasePhase::Stable));
        s
    }

    /// The route (or pods) back at 0% canary; returns how long it took.
    async fn weight_back_to_zero(&self, timeout: Duration) -> Duration {
        let onset = Instant::now();
        eventually("the canary weight back to 0", timeout, || async {
            (self.canary_weight().await == 0).then_some(())
        })
        .await;
        onset.elapsed()
    }

    /// After a rollback of `bad` onto `stable`: what the issue asks of it.
    async fn check_rolled_back(&self, bad: &str, stable: &str, metric: &str) -> RolloutStatus {
        let rolled = self
            .wait_phase(
                RolloutPhase::RolledBack,
                Some(stable),
                Duration::from_secs(90),
            )
            .await;
        let rb = rolled.rollback.clone().expect("saga recorded");
        assert_eq!(rb.metric.as_deref(), Some(metric));
        assert!(
            rb.breach_at.is_some() && rb.weight_zero_at.is_some() && rb.recovered_at.is_some(),
            "{rb:?}"
        );
        let steps: Vec<RollbackStep> = rb.completed.iter().map(|r| r.step).collect();
        assert_eq!(steps, SAGA, "every saga step once, in order");
        assert_eq!(self.canary_weight().await, 0);
        assert_eq!(self.replicas("web-canary").await, Some(0));
        assert!(
            self.image("web-stable").await.ends_with(stable),
            "the stable serves the stable digest"
        );
        let release = self.release(bad).await;
        let status = release.status.clone().expect("status");
        assert_eq!(status.phase, Some(ReleasePhase::Unstable));
        let verdict = status.verdict.expect("verdict");
        assert_eq!(verdict.metric.as_deref(), Some(metric));
        let ev = &verdict.evidence[0];
        assert_eq!(ev.verdict, "Fail");
        // Scalar answers carry their values; histograms (by `le`) their counts above a boundary.
        assert!(
            !ev.queries.is_empty()
                && (ev.counts.is_some() || ev.queries.iter().any(|q| q.value.is_some())),
            "evidence carries the queries and what they measured: {ev:?}"
        );
        let name = release.metadata.name.clone().unwrap_or_default();
        let incidents = |action: OutboxAction| {
            rolled
                .outbox
                .iter()
                .filter(|e| e.dedup_key.ends_with(&name) && e.action == action)
                .count()
        };
        assert_eq!(incidents(OutboxAction::Trigger), 1, "exactly one incident");
        assert_eq!(
            incidents(OutboxAction::Resolve),
            0,
            "recovery leaves the incident open for a human"
        );
        rolled
    }

    /// `rollguard incident resolve`, as the incident commander runs it; waits until the
    /// controller has put the Resolve in the outbox.
    async fn resolve_incident(&self, reason: &str) {
        run_ok(
            env!("CARGO_BIN_EXE_rollguard"),
            &[
                "incident",
                "resolve",
                "web",
                "-n",
                &self.ns.name,
                "--reason",
                reason,
            ],
            None,
        );
        eventually(
            "the Resolve in the outbox",
            Duration::from_secs(30),
            || async {
                let s = self.status().await;
                s.outbox
                    .iter()
                    .any(|e| e.action == OutboxAction::Resolve && e.title.contains("resolved by"))
                    .then_some(())
            },
        )
        .await;
    }

    async fn cleanup(self) {
        let _ = Api::<DynamicObject>::all_with(
            self.ns.client.clone(),
            &rg("MetricProvider", "metricproviders"),
        )
        .delete(&self.provider, &Default::default())
        .await;
        self.ns.cleanup().await;
    }
}

/// What the review found promoted unjudged: a template that does not exist, an integer argument
/// that the renderer refuses (`1 or vector(1)`), and a query that does not parse. Each holds the
/// canary at weight 0 with AnalysisInvalid and one Event; a working analysis then lets it on.
#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_canary_whose_analysis_cannot_start_is_held_at_weight_zero() {
    let fx = Fixture::new("ctl-held", &Scenario::default()).await;
    let controller = fx.controller();
    fx.initialized().await;
    let templates = rg("AnalysisTemplate", "analysistemplates");
    let typed = json!({"name": "error-rate", "provider": fx.provider, "interval": "2s",
        "threshold": {"query": "vector({{args.port}})", "max": 100}});
    fx.ns
        .apply(
            &templates,
            json!({
                "apiVersion": "rollguard.dev/v1alpha1", "kind": "AnalysisTemplate",
                "metadata": {"name": "typed"},
                "spec": {"args": [{"name": "port", "type": "integer"}], "metrics": [typed]},
            }),
        )
        .await;
    let unparsable = json!({"name": "error-rate", "provider": fx.provider, "interval": "2s",
        "threshold": {"query": "sum(", "max": 1}});
    fx.ns
        .apply(
            &templates,
            json!({
                "apiVersion": "rollguard.dev/v1alpha1", "kind": "AnalysisTemplate",
                "metadata": {"name": "unparsable"}, "spec": {"metrics": [unparsable]},
            }),
        )
        .await;
    let rollouts = &fx.rollouts;
    let set_analysis = |analysis: Value| async move {
        rollouts
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"analysis": analysis}})),
            )
            .await
            .expect("analysis patched");
    };
    let cases = [
        (
            json!({"templates": [{"name": "missing"}]}),
            "\"missing\" not found",
        ),
        (
            json!({"templates": [{"name": "typed"}], "args": [{"name": "port", "value": "1 or vector(1)"}]}),
            "is not a valid integer",
        ),
        (
            json!({"templates": [{"name": "unparsable"}], "args": null}),
            "does not parse",
        ),
    ];
    let mut first = true;
    for (analysis, why) in cases {
        set_analysis(analysis).await;
        if first {
            fx.set_target(GOOD_B).await;
            first = false;
        }
        let held = eventually(&format!("held: {why}"), Duration::from_secs(60), || async {
            let s = fx.status().await;
            let c = s
                .conditions
                .iter()
                .find(|c| c.type_ == "AnalysisInvalid" && c.status == "True")?;
            (c.message.contains(why) && s.phase == Some(RolloutPhase::Paused)).then_some(s)
        })
        .await;
        assert_eq!(held.canary_weight, Some(0), "{why}");
        assert!(
            held.message.as_deref().unwrap_or("").contains(why),
            "{:?}",
            held.message
        );
        // It stays held: no weight, no promotion, however long the steps are.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let later = fx.status().await;
        assert_eq!(
            later.phase,
            Some(RolloutPhase::Paused),
            "{why}: {:?}",
            later.message
        );
        assert_eq!(fx.canary_weight().await, 0, "{why}");
        assert!(
            later.stable.as_ref().is_some_and(|r| r.digest == GOOD_A),
            "{why}: promoted unjudged"
        );
        let reasons: Vec<&str> = later.timeline.iter().map(|t| t.reason.as_str()).collect();
        assert!(
            !reasons.contains(&"WeightSet") && !reasons.contains(&"Promoted"),
            "{reasons:?}"
        );
    }
    assert_eq!(
        events(&fx, "AnalysisInvalid").await.len(),
        1,
        "one Event for the hold, not one per reconcile"
    );
    // The working template: the hold lifts and the canary is judged and promoted.
    set_analysis(json!({"templates": [{"name": "golden"}], "args": null})).await;
    fx.wait_phase(RolloutPhase::Stable, Some(GOOD_B), Duration::from_secs(120))
        .await;
    let s = fx.status().await;
    assert!(
        s.conditions
            .iter()
            .any(|c| c.type_ == "AnalysisInvalid" && c.status == "False"),
        "{:?}",
        s.conditions
    );
    drop(controller);
    fx.cleanup().await;
}

/// A Deployment of someone else's that happens to have an arm's name is never overwritten or
/// scaled: the canary does not start, and the Rollout says whose object is in the way.
#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn an_arm_named_deployment_of_someone_else_is_left_alone() {
    let fx = Fixture::new("ctl-foreign", &Scenario::default()).await;
    let controller = fx.controller();
    fx.initialized().await;
    fx.ns
        .apply(
            &core_resource("apps/v1", "Deployment", "deployments"),
            deployment("web-canary", "reports", "main", 2, None),
        )
        .await;
    fx.ns.wait_deployment_ready("web-canary", 2).await;
    fx.set_target(GOOD_B).await;
    let refused = eventually("the apply refused", Duration::from_secs(60), || async {
        fx.status()
            .await
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready" && c.status == "False")
    })
    .await;
    assert!(
        refused
            .message
            .contains("Deployment web-canary exists and is not controlled by Rollout web"),
        "{}",
        refused.message
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let theirs = fx.deployments.get("web-canary").await.expect("still there");
    assert_eq!(
        theirs.spec.as_ref().and_then(|s| s.replicas),
        Some(2),
        "not scaled"
    );
    let image = theirs
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].image.clone().unwrap_or_default())
        .unwrap_or_default();
    assert!(
        image.starts_with("registry.example/reports@"),
        "not overwritten: {image}"
    );
    assert_eq!(fx.canary_weight().await, 0);
    drop(controller);
    fx.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_good_release_is_promoted_and_a_bad_one_rolled_back_then_blocked() {
    let fx = Fixture::new("ctl", &Scenario::default()).await;
    let controller = fx.controller();
    fx.initialized().await;
    fx.promoted(GOOD_B, 2).await;
    assert_eq!(
        fx.release_phase(GOOD_A).await,
        Some(ReleasePhase::Superseded)
    );

    // A bad digest: once the canary's 10% weight is verified, its pods start failing 10% of
    // requests. The rollback must zero the weight.
    fx.deploy_bad(ERRORS).await;
    let to_zero = fx.weight_back_to_zero(Duration::from_secs(120)).await;
    println!("fault onset to verified weight 0: {to_zero:.1?}");
    let rolled = fx.check_rolled_back(BAD_C, GOOD_B, "error-rate").await;
    let ev = &rolled.rollback.expect("saga").evidence[0];
    assert!(
        ev.counts.is_some() && ev.queries.iter().any(|q| q.promql.contains("web-canary")),
        "{ev:?}"
    );

    // Back to the good digest, then the bad one again: Blocked, no new canary pods.
    fx.set_target(GOOD_B).await;
    fx.wait_phase(RolloutPhase::Stable, Some(GOOD_B), Duration::from_secs(30))
        .await;
    fx.set_target(BAD_C).await;
    let blocked = fx
        .wait_phase(RolloutPhase::Blocked, None, Duration::from_secs(30))
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
    assert_eq!(
        fx.replicas("web-canary").await,
        Some(0),
        "no canary for a blocked digest"
    );
    assert_eq!(fx.status().await.phase, Some(RolloutPhase::Blocked));

    // What /metrics says about it: one promotion, one rollback with its times, no digests.
    let text = controller.metrics().await;
    let ns = &fx.ns.name;
    let of = |series: String| sample(&text, &series);
    let deployments = |result: &str| {
        of(format!(
            r#"rollguard_deployments_total{{namespace="{ns}",rollout="web",result="{result}"}}"#
        ))
    };
    assert_eq!(deployments("promoted"), Some(1.0), "{text}");
    assert_eq!(deployments("rolled_back"), Some(1.0), "{text}");
    assert_eq!(deployments("aborted"), None, "{text}");
    for histogram in [
        "breach_to_weight_zero_seconds",
        "weight_zero_to_recovery_seconds",
        "breach_to_recovery_seconds",
    ] {
        assert_eq!(
            of(format!(
                r#"rollguard_{histogram}_count{{namespace="{ns}"}}"#
            )),
            Some(1.0),
            "{histogram}: {text}"
        );
    }
    let to_zero = of(format!(
        r#"rollguard_breach_to_weight_zero_seconds_sum{{namespace="{ns}"}}"#
    ))
    .expect("a time to roll back");
    assert!((0.0..120.0).contains(&to_zero), "{to_zero}");
    assert_eq!(
        of(format!(
            r#"rollguard_rollout_phase{{namespace="{ns}",rollout="web",phase="Blocked"}}"#
        )),
        Some(1.0)
    );
    assert!(
        of(r#"rollguard_measurements_total{metric="error-rate",verdict="Fail"}"#.into())
            .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        of(format!(
            r#"rollguard_prometheus_query_seconds_count{{provider="{}"}}"#,
            fx.provider
        ))
        .is_some_and(|n| n > 0.0),
        "{text}"
    );
    assert_eq!(of("rollguard_leader".into()), Some(1.0));
    assert!(
        !text.contains("sha256") && !text.contains("cccccccc"),
        "no digest labels"
    );
    println!("time to roll back (breach to verified weight 0), from /metrics: {to_zero:.0} s");
    fx.cleanup().await;
}

/// Istio, SMI and replica ratio: a healthy canary goes through every step and is promoted.
#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn every_router_promotes_a_healthy_canary_through_every_step() {
    for router in [Routing::Istio, Routing::Smi, Routing::Replicas] {
        let sc = Scenario {
            router,
            steps: json!([{"setWeight": 10, "duration": "3s"}, {"setWeight": 30, "duration": "3s"},
                          {"setWeight": 50, "duration": "3s"}]),
            ..Scenario::default()
        };
        let fx = Fixture::new(&format!("ctl-{router:?}").to_lowercase(), &sc).await;
        let controller = fx.controller();
        fx.initialized().await;
        let s = fx.promoted(GOOD_B, 3).await;
        let weights: Vec<&str> = s
            .timeline
            .iter()
            .filter(|t| t.reason == "WeightSet")
            .map(|t| t.message.as_str())
            .collect();
        println!("{router:?}: {weights:?}");
        if router == Routing::Replicas {
            assert_eq!(fx.replicas("web-stable").await, Some(9));
        }
        drop(controller);
        fx.cleanup().await;
    }
}

/// A canary as fast as stable in errors but ten times slower is rolled back on latency alone.
#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_latency_only_regression_is_rolled_back() {
    let sc = Scenario {
        judgement: Judgement::Latency,
        ..Scenario::default()
    };
    let fx = Fixture::new("ctl-slow", &sc).await;
    let _controller = fx.controller();
    fx.initialized().await;
    fx.deploy_bad(SLOW).await;
    let to_zero = fx.weight_back_to_zero(Duration::from_secs(120)).await;
    println!("latency fault onset to verified weight 0: {to_zero:.1?}");
    fx.check_rolled_back(BAD_C, GOOD_A, "latency").await;
    fx.cleanup().await;
}

/// SIGKILL right after each saga step in turn, with a restart each time: the rollback completes,
/// each step is recorded once, and there is exactly one incident.
/// The rollback saga's steps, in order.
const SAGA: [RollbackStep; 6] = [
    RollbackStep::ZeroWeights,
    RollbackStep::EnsureStableCapacity,
    RollbackStep::RestoreStable,
    RollbackStep::MarkUnstable,
    RollbackStep::Escalate,
    RollbackStep::VerifyRecovery,
];

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_rollback_survives_sigkill_after_every_saga_step() {
    let fx = Fixture::new("ctl-kill", &Scenario::default()).await;
    let log = fx.log();
    let first = fx.controller();
    fx.initialized().await;
    first.kill();
    let steps = SAGA;
    let halting = |step: RollbackStep| {
        ControllerProcess::start_with(&log, &[("ROLLGUARD_TEST_HALT_AFTER", &format!("{step:?}"))])
    };
    let mut controller = halting(steps[0]);
    fx.deploy_bad(ERRORS).await;
    for (i, step) in steps.iter().enumerate() {
        let recorded = eventually(
            &format!("saga step {step:?} recorded"),
            Duration::from_secs(120),
            || async {
                let rb = fx.status().await.rollback?;
                rb.completed.iter().any(|r| r.step == *step).then_some(rb)
            },
        )
        .await;
        // The controller halts right there: nothing further gets recorded before the kill.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rb = fx.status().await.rollback.expect("saga");
        assert_eq!(rb.completed.len(), i + 1, "halted after {step:?}: {rb:?}");
        assert_eq!(rb.completed, recorded.completed);
        controller.kill();
        println!("SIGKILL after {step:?}");
        controller = match steps.get(i + 1) {
            Some(next) => halting(*next),
            None => fx.controller(),
        };
    }
    fx.check_rolled_back(BAD_C, GOOD_A, "error-rate").await;
    drop(controller);
    fx.cleanup().await;
}

/// The crash that matters most: after a saga step's writes to the cluster, before its record
/// in status. The next controller redoes the step (each is idempotent); at the end every step is
/// recorded once, there is one incident, and the bad Release is Unstable once.
#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_rollback_survives_sigkill_between_each_steps_writes_and_its_record() {
    let fx = Fixture::new("ctl-kill-before", &Scenario::default()).await;
    let log = fx.log();
    let first = fx.controller();
    fx.initialized().await;
    first.kill();
    let steps = SAGA;
    let halting = |step: RollbackStep| {
        ControllerProcess::start_with(
            &log,
            &[("ROLLGUARD_TEST_HALT_BEFORE_RECORD", &format!("{step:?}"))],
        )
    };
    let halted = |step: RollbackStep| {
        let line = format!("halting at saga step {step:?} (ROLLGUARD_TEST_HALT_BEFORE_RECORD)");
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains(&line))
    };
    let mut controller = halting(steps[0]);
    fx.deploy_bad(ERRORS).await;
    for step in steps {
        eventually(
            &format!("the writes of {step:?} done, its record not"),
            Duration::from_secs(120),
            || async { halted(step).then_some(()) },
        )
        .await;
        let rb = fx.status().await.rollback.expect("saga");
        assert!(
            !rb.completed.iter().any(|r| r.step == step),
            "{step:?} is recorded although the controller halted before: {rb:?}"
        );
        // The step's own writes happened before the halt.
        match step {
            RollbackStep::ZeroWeights => assert_eq!(fx.canary_weight().await, 0),
            RollbackStep::RestoreStable => assert_eq!(fx.replicas("web-canary").await, Some(0)),
            RollbackStep::MarkUnstable => {
                assert_eq!(fx.release_phase(BAD_C).await, Some(ReleasePhase::Unstable))
            }
            _ => {}
        }
        controller.kill();
        println!("SIGKILL between the writes of {step:?} and its record");
        controller = match steps
            .iter()
            .position(|s| *s == step)
            .and_then(|i| steps.get(i + 1))
        {
            Some(next) => halting(*next),
            None => fx.controller(),
        };
    }
    // check_rolled_back: every step recorded once and in order, one Trigger, Unstable.
    fx.check_rolled_back(BAD_C, GOOD_A, "error-rate").await;
    drop(controller);
    fx.cleanup().await;
}

/// A Prometheus of the test's own, scraping the simulator every second, that can be stopped and
/// started again on the same port and storage.
struct OwnPrometheus {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<Child>,
}

impl OwnPrometheus {
    async fn start(name: &str) -> OwnPrometheus {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(format!("prometheus-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        let sim = sim_url();
        let sim = sim.trim_start_matches("http://");
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\nscrape_configs:\n- job_name: rollguard-sim\n  static_configs:\n  - targets: ['{sim}']\n"
            ),
        )
        .expect("config");
        let mut p = OwnPrometheus {
            port,
            dir,
            child: None,
        };
        p.resume().await;
        p
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .expect("log");
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!(
                "--config.file={}",
                self.dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        self.child = Some(child);
        let ready = format!("{}/-/ready", self.url());
        eventually(
            "the test's Prometheus ready",
            Duration::from_secs(30),
            || async {
                let r = reqwest::get(&ready).await.ok()?;
                r.status().is_success().then_some(())
            },
        )
        .await;
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnPrometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Prometheus stops mid-analysis: no promotion, and the Rollout pauses as its template says.
/// Prometheus comes back: the analysis resumes and the canary is promoted.
#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn prometheus_down_mid_analysis_pauses_and_its_return_resumes() {
    let mut prom = OwnPrometheus::start(&unique("ctl-prom")).await;
    let sc = Scenario {
        prometheus: prom.url(),
        inconclusive: ("Pause", 2),
        steps: json!([{"setWeight": 10, "duration": "12s"}, {"setWeight": 50, "duration": "4s"}]),
        ..Scenario::default()
    };
    let fx = Fixture::new("ctl-prom", &sc).await;
    let _controller = fx.controller();
    fx.initialized().await;
    fx.set_target(GOOD_B).await;
    fx.wait_first_step().await;
    prom.stop();
    let paused = fx
        .wait_phase(RolloutPhase::Paused, Some(GOOD_A), Duration::from_secs(60))
        .await;
    println!("paused: {:?}", paused.message);
    let analysis = paused.analysis.clone().expect("analysis summary");
    assert_eq!(analysis.decision, "Inconclusive", "{analysis:?}");
    // Well past the step's duration: still paused, nothing promoted.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let s = fx.status().await;
    assert_eq!(s.phase, Some(RolloutPhase::Paused));
    assert_eq!(s.stable.as_ref().map(|r| r.digest.as_str()), Some(GOOD_A));
    assert_eq!(fx.canary_weight().await, 10, "the canary keeps its weight");
    prom.resume().await;
    fx.wait_phase(RolloutPhase::Stable, Some(GOOD_B), Duration::from_secs(120))
        .await;
    let reasons: Vec<String> = fx
        .status()
        .await
        .timeline
        .iter()
        .map(|t| t.reason.clone())
        .collect();
    let at = |reason: &str| reasons.iter().position(|r| r == reason);
    assert!(
        at("AnalysisInconclusive").is_some()
            && at("AnalysisInconclusive") < at("Resumed")
            && at("Resumed") < at("Promoted"),
        "paused, resumed, then promoted: {reasons:?}"
    );
    drop(prom);
    fx.cleanup().await;
}

/// A promoted release that starts failing within its post-promotion window is rolled back: the
/// previous digest goes back on the stable Deployment.
#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_failure_after_promotion_restores_the_previous_digest() {
    let sc = Scenario {
        post_promotion_window: Some("30s"),
        ..Scenario::default()
    };
    let fx = Fixture::new("ctl-post", &sc).await;
    let _controller = fx.controller();
    fx.initialized().await;
    // The verification compares with the stable before the rollout, over as long as the
    // window; give it that history.
    tokio::time::sleep(Duration::from_secs(35)).await;
    let promoted = fx.promoted(GOOD_B, 2).await;
    assert!(promoted.verify_until.is_some(), "a window is open");
    // The promoted digest's pods start failing after promotion.
    eventually(
        "the stable rolled onto B",
        Duration::from_secs(30),
        || async {
            let pods = fx
                .pods
                .list(&ListParams::default().labels("rollguard.dev/arm=stable"))
                .await
                .ok()?;
            pods.items
                .iter()
                .all(|p| {
                    p.spec.as_ref().is_some_and(|s| {
                        s.containers[0]
                            .image
                            .as_deref()
                            .is_some_and(|i| i.ends_with(GOOD_B))
                    })
                })
                .then_some(())
        },
    )
    .await;
    let onset = Instant::now();
    fx.fault("stable", ERRORS).await;
    eventually(
        "the previous digest back on web-stable",
        Duration::from_secs(90),
        || async { fx.image("web-stable").await.ends_with(GOOD_A).then_some(()) },
    )
    .await;
    println!(
        "post-promotion fault to previous digest restored: {:.1?}",
        onset.elapsed()
    );
    let rolled = fx
        .wait_phase(
            RolloutPhase::RolledBack,
            Some(GOOD_A),
            Duration::from_secs(90),
        )
        .await;
    let rb = rolled.rollback.expect("saga");
    assert_eq!(rb.release, format!("web-{}", &GOOD_B[7..17]));
    assert!(rb.reason.contains("after promotion"), "{}", rb.reason);
    assert_eq!(fx.release_phase(GOOD_B).await, Some(ReleasePhase::Unstable));
    let ev = &fx
        .release(GOOD_B)
        .await
        .status
        .and_then(|s| s.verdict)
        .expect("verdict")
        .evidence[0];
    assert!(
        ev.queries.iter().any(|q| q.promql.contains("offset")),
        "the baseline is the stable before the rollout: {ev:?}"
    );
    fx.cleanup().await;
}

/// Another writer keeps changing the route while the controller steps the weights: the
/// controller's guarded patches conflict, re-read and converge, and the other writer's fields
/// survive.
#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_concurrent_route_writer_conflicts_and_keeps_its_fields() {
    let sc = Scenario {
        steps: json!([{"setWeight": 10, "duration": "2s"}, {"setWeight": 30, "duration": "2s"},
                      {"setWeight": 50, "duration": "2s"}]),
        ..Scenario::default()
    };
    let fx = Fixture::new("ctl-409", &sc).await;
    let _controller = fx.controller();
    fx.initialized().await;
    let ar = route_resource(Routing::Gateway).expect("route");
    let routes = Api::<DynamicObject>::namespaced_with(fx.ns.client.clone(), &fx.ns.name, &ar);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (routes, stop) = (routes.clone(), stop.clone());
        tokio::spawn(async move {
            // Back to back, bounded: at most 20,000 writes, or until told to stop.
            let mut writes = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && writes < 20_000 {
                let patch = json!([
                    {"op": "add", "path": "/metadata/annotations/other-writer~1generation", "value": writes.to_string()},
                    {"op": "add", "path": "/spec/rules/0/timeouts", "value": {"request": "7s"}},
                ]);
                let _ = routes
                    .patch(
                        "web",
                        &PatchParams::default(),
                        &Patch::<()>::Json(serde_json::from_value(patch).expect("patch")),
                    )
                    .await;
                writes += 1;
                tokio::task::yield_now().await;
            }
            writes
        })
    };
    fx.promoted(GOOD_B, 3).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.await.expect("writer");
    let route = serde_json::to_value(routes.get("web").await.expect("route")).expect("json");
    assert_eq!(route["spec"]["rules"][0]["timeouts"]["request"], "7s");
    assert!(route["metadata"]["annotations"]["other-writer/generation"].is_string());
    assert_eq!(route["spec"]["parentRefs"][0]["name"], "public");
    let log = std::fs::read_to_string(fx.log()).unwrap_or_default();
    let conflicts = log.matches("route changed under the patch").count();
    println!(
        "{writes} writes by the other writer; {conflicts} conflicts re-read by the controller"
    );

    // The race made certain: a weight patch computed from a read that another write has
    // overtaken is refused by the apiserver, and the router, reading again, still lands it.
    let arms = Arms {
        stable: "web-stable".into(),
        canary: "web-canary".into(),
        baseline: None,
        subsets: None,
        only: Vec::new(),
    };
    let stale = serde_json::to_value(routes.get("web").await.expect("route")).expect("json");
    routes
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"other-writer/generation": "last"}}}),
            ),
        )
        .await
        .expect("the other write");
    let wanted = Weights {
        canary: 20,
        baseline: 0,
    };
    let ops = weights::patch(RouteKind::HttpRoute, &stale, &arms, wanted).expect("ops");
    let refused = routes
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::<()>::Json(serde_json::from_value(json!(ops)).expect("patch")),
        )
        .await
        .expect_err("a patch guarded by an overtaken resourceVersion");
    match &refused {
        kube::Error::Api(s) => {
            println!("a stale guarded patch is refused with HTTP {}", s.code);
            assert_eq!(s.code, 422, "{s:?}");
        }
        other => panic!("unexpected error {other}"),
    }
    let router = MeshRouter::new(
        fx.ns.client.clone(),
        &fx.ns.name,
        RouteKind::HttpRoute,
        "web",
        arms,
    );
    assert_eq!(router.set(wanted).await.expect("set"), wanted);
    let route = serde_json::to_value(routes.get("web").await.expect("route")).expect("json");
    assert_eq!(
        route["metadata"]["annotations"]["other-writer/generation"],
        "last"
    );
    assert_eq!(route["spec"]["rules"][0]["timeouts"]["request"], "7s");
    fx.cleanup().await;
}

/// Creates (or replaces) a Secret in the controller's namespace (`default` in these tests).
async fn controller_secret(client: &Client, name: &str, data: Value) {
    use k8s_openapi::api::core::v1::Secret;
    Api::<Secret>::namespaced(client.clone(), "default")
        .patch(
            name,
            &PatchParams::apply("rollguard-e2e").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data})),
        )
        .await
        .unwrap_or_else(|e| panic!("Secret {name}: {e}"));
}

/// A Receiver open to every namespace unless `spec` names its own allowlist.
async fn receiver(client: &Client, name: &str, mut spec: Value) {
    if spec.get("allowedNamespaces").is_none() {
        spec["allowedNamespaces"] = json!(["*"]);
    }
    apply_cluster(
        client,
        &rg("Receiver", "receivers"),
        json!({
            "apiVersion": "rollguard.dev/v1alpha1", "kind": "Receiver",
            "metadata": {"name": name}, "spec": spec,
        }),
    )
    .await;
}

async fn delete_receivers(client: &Client, names: &[String]) {
    use k8s_openapi::api::core::v1::Secret;
    let receivers = Api::<DynamicObject>::all_with(client.clone(), &rg("Receiver", "receivers"));
    let secrets = Api::<Secret>::namespaced(client.clone(), "default");
    for n in names {
        let _ = receivers.delete(n, &Default::default()).await;
        let _ = secrets.delete(n, &Default::default()).await;
    }
}

/// Alertmanager's alerts for a namespace (`GET /api/v2/alerts`).
async fn alertmanager_alerts(namespace: &str) -> Vec<Value> {
    reqwest::Client::new()
        .get(format!("{}/api/v2/alerts", alertmanager_url()))
        .query(&[("filter", format!("namespace=\"{namespace}\""))])
        .send()
        .await
        .expect("Alertmanager answers")
        .json::<Vec<Value>>()
        .await
        .expect("alerts JSON")
}

/// The Rollout's Events with `reason`.
async fn events(fx: &Fixture, reason: &str) -> Vec<String> {
    use k8s_openapi::api::events::v1::Event;
    Api::<Event>::namespaced(fx.ns.client.clone(), &fx.ns.name)
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.note)
        .collect()
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn escalations_reach_alertmanager_pagerduty_slack_and_a_signed_webhook() {
    let recorder = HttpRecorder::start().await;
    // PagerDuty throttles, then fails, then accepts; a second one refuses every event.
    recorder.respond("/pd/v2/enqueue", &[429, 503]);
    recorder.always("/pd-bad/v2/enqueue", 400);
    let client = common::client().await;
    install_crds(&client).await;
    let p = unique("esc");
    let name = |s: &str| format!("{p}-{s}");
    let routing_key = "R0UT1NGKEY0123456789abcdef012345";
    controller_secret(&client, &name("pd"), json!({"routingKey": routing_key})).await;
    controller_secret(&client, &name("pd-bad"), json!({"routingKey": "wrong"})).await;
    controller_secret(
        &client,
        &name("slack"),
        json!({"url": format!("{}/slack", recorder.url)}),
    )
    .await;
    controller_secret(
        &client,
        &name("hook"),
        json!({"current": "k-2026", "previous": "k-2025"}),
    )
    .await;
    receiver(
        &client,
        &name("am"),
        json!({"alertmanager": {"url": alertmanager_url(), "resendInterval": "5s"}}),
    )
    .await;
    receiver(&client, &name("pd"), json!({"pagerDuty": {"routingKey": {"name": name("pd"), "key": "routingKey"}, "url": format!("{}/pd", recorder.url)}})).await;
    receiver(&client, &name("pd-bad"), json!({"pagerDuty": {"routingKey": {"name": name("pd-bad"), "key": "routingKey"}, "url": format!("{}/pd-bad", recorder.url)}})).await;
    receiver(
        &client,
        &name("slack"),
        json!({"slack": {"webhookURL": {"name": name("slack"), "key": "url"}}}),
    )
    .await;
    receiver(&client, &name("hook"), json!({"webhook": {"url": format!("{}/hook", recorder.url), "signingKeys": [{"name": name("hook"), "key": "current"}, {"name": name("hook"), "key": "previous"}]}})).await;
    receiver(
        &client,
        &name("missing"),
        json!({"slack": {"webhookURL": {"name": name("missing"), "key": "url"}}}),
    )
    .await;
    // An admin's pager that admits one other namespace: this tenant's incident never reaches it.
    receiver(&client, &name("admin"), json!({"allowedNamespaces": ["kube-system"], "webhook": {"url": format!("{}/admin", recorder.url), "signingKeys": [{"name": name("hook"), "key": "current"}]}})).await;
    let all: Vec<String> = ["am", "pd", "pd-bad", "slack", "hook", "missing", "admin"]
        .iter()
        .map(|s| name(s))
        .collect();
    let sc = Scenario {
        escalation: Some(
            json!({"receivers": all, "severity": "error", "runbook": "https://runbooks.example/web"}),
        ),
        recovery_window: "20s",
        ..Scenario::default()
    };
    let fx = Fixture::new("ctl-esc", &sc).await;
    let controller = fx.controller();
    fx.initialized().await;
    // The bad version's change cause tries to ping the channel and forge a link.
    let mut bad = target(BAD_C, fx.replicas);
    bad["metadata"]["annotations"]["kubernetes.io/change-cause"] =
        json!("deploy <!channel> <https://evil|click>");
    fx.ns
        .apply(&core_resource("apps/v1", "Deployment", "deployments"), bad)
        .await;
    fx.wait_first_step().await;
    fx.fault("canary", ERRORS).await;
    fx.weight_back_to_zero(Duration::from_secs(60)).await;

    // PagerDuty: 429 and 503 retried with the same dedup key until 202.
    let triggers = eventually(
        "the PagerDuty trigger accepted",
        Duration::from_secs(60),
        || async {
            let r = recorder.requests("/pd/v2/enqueue");
            r.iter().any(|r| r.status == 202).then_some(r)
        },
    )
    .await;
    assert_eq!(
        triggers.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![429, 503, 202]
    );
    let key = triggers[0].body["dedup_key"]
        .as_str()
        .expect("dedup_key")
        .to_owned();
    assert!(
        triggers
            .iter()
            .all(|r| r.body["dedup_key"] == key.as_str() && r.body["event_action"] == "trigger")
    );
    let t = &triggers[2].body;
    assert_eq!(t["routing_key"], routing_key);
    for field in ["summary", "source", "severity"] {
        assert!(t["payload"][field].is_string(), "payload.{field}: {t}");
    }
    let summary = t["payload"]["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("canary rolled back") && summary.contains("error-rate canary"),
        "{summary}"
    );
    assert!(
        t["payload"]["custom_details"]["evidence"][0]["queries"][0]["promql"].is_string(),
        "{t}"
    );
    // The refusing PagerDuty was asked once, and the Rollout says why, naming receiver and field.
    let s = eventually("the refusal surfaced", Duration::from_secs(30), || async {
        let s = fx.status().await;
        s.conditions
            .iter()
            .find(|c| c.type_ == "EscalationDelivered" && c.status == "False")
            .cloned()
    })
    .await;
    assert!(
        s.message.contains(&format!(
            "Receiver {}: spec.pagerDuty.url refused the request with HTTP 400",
            name("pd-bad")
        )),
        "{}",
        s.message
    );
    assert!(
        s.message.contains("spec.pagerDuty.routingKey"),
        "{}",
        s.message
    );
    assert!(
        s.message.contains(&format!(
            "Receiver {}: spec.slack.webhookURL: Secret default/{} does not exist",
            name("missing"),
            name("missing")
        )),
        "{}",
        s.message
    );
    assert!(
        s.message.contains(&format!(
            "Receiver {}: spec.allowedNamespaces does not include namespace {}",
            name("admin"),
            fx.ns.name
        )),
        "{}",
        s.message
    );
    assert!(
        recorder.requests("/admin").is_empty(),
        "a Receiver that does not admit the namespace got its incident"
    );
    assert_eq!(
        recorder.requests("/pd-bad/v2/enqueue").len(),
        1,
        "a 400 is not retried"
    );
    let notes = events(&fx, "EscalationFailed").await;
    assert!(
        notes.iter().any(|n| n.contains(&name("pd-bad"))),
        "{notes:?}"
    );
    assert!(
        notes.iter().any(|n| n.contains(&name("missing"))),
        "{notes:?}"
    );

    // Slack: blocks with fallback text, every user-controlled string escaped.
    let slack = eventually("the Slack message", Duration::from_secs(30), || async {
        recorder.requests("/slack").into_iter().next()
    })
    .await;
    let text = String::from_utf8_lossy(&slack.raw).to_string();
    assert!(
        slack.body["text"].is_string() && slack.body["blocks"].is_array(),
        "{text}"
    );
    assert!(
        !text.contains("<!channel>") && !text.contains("<https://evil|click>"),
        "{text}"
    );
    assert!(
        text.contains("&lt;!channel&gt; &lt;https://evil|click&gt;"),
        "{text}"
    );

    // The webhook: signed over timestamp.delivery.body; a tampered body, a replay under another
    // delivery id or a stale timestamp fails.
    let hook = eventually("the webhook delivery", Duration::from_secs(30), || async {
        recorder.requests("/hook").into_iter().next()
    })
    .await;
    let header = |n: &str| {
        hook.headers
            .get(&n.to_ascii_lowercase())
            .cloned()
            .unwrap_or_default()
    };
    let (ts, sig) = (header("X-Rollguard-Timestamp"), header("X-Signature"));
    let id = header("X-Rollguard-Delivery");
    assert!(!id.is_empty());
    let now: i64 = ts.parse().expect("timestamp");
    let keys: [&[u8]; 2] = [b"k-2025", b"k-2026"];
    use rollguard::escalation::wire::{VerifyError, verify};
    assert_eq!(
        verify(&keys, &ts, &id, &hook.raw, &sig, now + 2, 300),
        Ok(())
    );
    let mut tampered = hook.raw.clone();
    tampered[20] ^= 0x20;
    assert_eq!(
        verify(&keys, &ts, &id, &tampered, &sig, now + 2, 300),
        Err(VerifyError::Mismatch)
    );
    assert_eq!(
        verify(&keys, &ts, "replayed", &hook.raw, &sig, now + 2, 300),
        Err(VerifyError::Mismatch)
    );
    assert!(matches!(
        verify(&keys, &ts, &id, &hook.raw, &sig, now + 3600, 300),
        Err(VerifyError::Stale(_))
    ));
    assert_eq!(hook.body["incident"]["dedupKey"], key.as_str());

    // Alertmanager: exactly one alert, with the digests, evidence and runbook in annotations.
    let alerts = eventually(
        "the alert in Alertmanager",
        Duration::from_secs(30),
        || async {
            let a = alertmanager_alerts(&fx.ns.name).await;
            (!a.is_empty()).then_some(a)
        },
    )
    .await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a["labels"]["alertname"], "RollguardRollback");
    assert_eq!(a["labels"]["rollout"], "web");
    assert!(
        a["annotations"]["to_digest"] == BAD_C && a["annotations"]["from_digest"] == GOOD_A,
        "{a}"
    );
    assert!(
        a["annotations"]["evidence"]
            .as_str()
            .is_some_and(|e| e.contains("error-rate Fail")),
        "{a}"
    );
    assert_eq!(
        a["annotations"]["runbook_url"],
        "https://runbooks.example/web"
    );

    // A restart between trigger and resolve: same incident, resolved once, nothing re-triggered.
    fx.wait_phase(RolloutPhase::RollingBack, None, Duration::from_secs(5))
        .await;
    controller.kill();
    let _restarted = fx.controller();
    fx.check_rolled_back(BAD_C, GOOD_A, "error-rate").await;
    // Recovered, and still open: Alertmanager's default group_wait alone is 30 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        alertmanager_alerts(&fx.ns.name).await.len(),
        1,
        "the alert stays active after recovery"
    );
    fx.resolve_incident("payment client misconfigured; fixed in 1.6.1")
        .await;
    let pd = eventually("the PagerDuty resolve", Duration::from_secs(60), || async {
        let r = recorder.requests("/pd/v2/enqueue");
        r.iter()
            .any(|r| r.body["event_action"] == "resolve")
            .then_some(r)
    })
    .await;
    let actions: Vec<&str> = pd
        .iter()
        .map(|r| r.body["event_action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(actions, vec!["trigger", "trigger", "trigger", "resolve"]);
    assert!(
        pd.iter().all(|r| r.body["dedup_key"] == key.as_str()),
        "one dedup key across the restart"
    );
    eventually(
        "the alert resolved in Alertmanager",
        Duration::from_secs(60),
        || async {
            alertmanager_alerts(&fx.ns.name)
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    let hooks = eventually("the webhook resolve", Duration::from_secs(30), || async {
        let h = recorder.requests("/hook");
        (h.len() >= 2).then_some(h)
    })
    .await;
    assert_eq!(
        hooks
            .iter()
            .map(|h| h.body["incident"]["action"]
                .as_str()
                .unwrap_or("")
                .to_owned())
            .collect::<Vec<_>>(),
        vec!["Trigger", "Resolve"]
    );
    // The post-mortem view.
    let md = run_ok(
        env!("CARGO_BIN_EXE_rollguard"),
        &["incident", "web", "-n", &fx.ns.name],
        None,
    );
    for part in [
        "# ",
        "## Evidence",
        "## Timeline",
        "## Actions taken",
        "Runbook: https://runbooks.example/web",
        "weight 0 verified",
    ] {
        assert!(md.contains(part), "{part} missing from:\n{md}");
    }
    delete_receivers(&client, &all).await;
    fx.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_receiver_down_for_two_minutes_gets_the_incident_once_when_it_returns() {
    let client = common::client().await;
    install_crds(&client).await;
    let name = unique("down");
    let port = free_port();
    controller_secret(&client, &name, json!({"key": "k"})).await;
    receiver(&client, &name, json!({"webhook": {"url": format!("http://127.0.0.1:{port}/in"), "signingKeys": [{"name": name, "key": "key"}]}})).await;
    let sc = Scenario {
        escalation: Some(json!({"receivers": [name], "severity": "critical"})),
        ..Scenario::default()
    };
    let fx = Fixture::new("ctl-down", &sc).await;
    let _controller = fx.controller();
    fx.initialized().await;
    fx.deploy_bad(ERRORS).await;
    fx.check_rolled_back(BAD_C, GOOD_A, "error-rate").await;
    fx.resolve_incident("understood").await;
    let failing = eventually("the delivery failing", Duration::from_secs(30), || async {
        fx.status()
            .await
            .conditions
            .into_iter()
            .find(|c| c.type_ == "EscalationDelivered" && c.status == "False")
    })
    .await;
    assert!(
        failing.message.contains("spec.webhook.url: cannot connect"),
        "{}",
        failing.message
    );
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(120)).await;
    let recorder = HttpRecorder::start_on(port).await;
    let back = Instant::now();
    let got = eventually(
        "the incident delivered after the receiver returned",
        Duration::from_secs(90),
        || async {
            let r = recorder.requests("/in");
            (r.len() >= 2).then_some(r)
        },
    )
    .await;
    println!(
        "receiver down {:.0?}; trigger and resolve delivered {:.1?} after it came back",
        back - down,
        back.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let got_after = recorder.requests("/in");
    assert_eq!(
        got_after.len(),
        2,
        "nothing doubled: {:?}",
        got_after
            .iter()
            .map(|r| &r.body["incident"]["action"])
            .collect::<Vec<_>>()
    );
    let actions: Vec<&str> = got
        .iter()
        .map(|r| r.body["incident"]["action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        actions,
        vec!["Trigger", "Resolve"],
        "nothing lost, in order"
    );
    let s = fx.status().await;
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == "EscalationDelivered")
        .expect("condition");
    assert_eq!(c.status, "True", "{}", c.message);
    delete_receivers(&client, std::slice::from_ref(&name)).await;
    fx.cleanup().await;
}

/// The holder of a Lease in the controllers' namespace.
async fn lease_holder(client: &Client, name: &str) -> Option<String> {
    Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), "default")
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
}

/// Which of two controllers holds the Lease (identities end with the process id): returns
/// (leader, standby).
async fn leader_of(
    client: &Client,
    lease: &str,
    a: ControllerProcess,
    b: ControllerProcess,
) -> (ControllerProcess, ControllerProcess) {
    let holder = eventually("a leader", Duration::from_secs(30), || async {
        lease_holder(client, lease).await
    })
    .await;
    if holder.ends_with(&format!("-{}", a.id())) {
        (a, b)
    } else {
        assert!(holder.ends_with(&format!("-{}", b.id())), "{holder}");
        (b, a)
    }
}

/// Waits until process `id` holds the Lease; returns the time since `since`.
async fn holds_lease(client: &Client, lease: &str, id: u32, since: Instant) -> Duration {
    eventually(
        "the standby holding the Lease",
        Duration::from_secs(40),
        || async {
            lease_holder(client, lease)
                .await
                .filter(|h| h.ends_with(&format!("-{id}")))
                .map(|_| since.elapsed())
        },
    )
    .await
}

/// Two controllers on one Lease of the test's own, once the first digest is stable: the
/// Lease's name, the leader and the standby.
async fn two_replicas(
    fx: &Fixture,
    prefix: &str,
) -> (String, ControllerProcess, ControllerProcess) {
    let lease = format!("{prefix}-{}", fx.ns.name);
    let flags = ["--lease-name", lease.as_str()];
    let a = ControllerProcess::launch(&format!("{}.a", fx.log()), &[], &flags);
    let b = ControllerProcess::launch(&format!("{}.b", fx.log()), &[], &flags);
    fx.initialized().await;
    let (leader, standby) = leader_of(&fx.ns.client, &lease, a, b).await;
    (lease, leader, standby)
}

/// Three 4-second steps: long enough to kill or freeze the leader in the middle.
fn failover_scenario() -> Scenario {
    Scenario {
        steps: json!([
            {"setWeight": 10, "duration": "4s"},
            {"setWeight": 30, "duration": "4s"},
            {"setWeight": 50, "duration": "4s"},
        ]),
        ..Scenario::default()
    }
}

/// The reasons since the last CanaryStarted: what happened to the current canary.
fn since_canary(s: &RolloutStatus) -> Vec<String> {
    let reasons: Vec<String> = s.timeline.iter().map(|t| t.reason.clone()).collect();
    let from = reasons
        .iter()
        .rposition(|r| r == "CanaryStarted")
        .unwrap_or(0);
    reasons[from..].to_vec()
}

/// Two replicas on one Lease: one leads, the other stands by with warm caches and writes
/// nothing. SIGKILL of the leader mid-rollout: the standby takes over within the lease duration
/// plus 5 s and finishes the rollout, every step once.
#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_killed_leader_is_replaced_within_the_lease_duration() {
    let fx = Fixture::new("e2e-failover", &failover_scenario()).await;
    let (lease, leader, standby) = two_replicas(&fx, "failover").await;
    let standby_text = standby.metrics().await;
    assert_eq!(sample(&standby_text, "rollguard_leader"), Some(0.0));
    assert_eq!(
        sample(
            &standby_text,
            r#"rollguard_kube_writes_total{outcome="ok"}"#
        ),
        None,
        "a standby writes nothing"
    );
    let ready = reqwest::get(format!("http://127.0.0.1:{}/readyz", standby.port))
        .await
        .expect("readyz");
    assert_eq!(
        ready.status(),
        200,
        "a standby is ready: its caches are warm"
    );
    assert_eq!(
        ready.text().await.unwrap_or_default().trim(),
        "ready (standby)"
    );
    // The log filter changes at runtime; a bad one is refused and the old one stays.
    let level = format!("http://127.0.0.1:{}/log-level", standby.port);
    let http = reqwest::Client::new();
    let put = |body: &'static str| http.put(&level).body(body).send();
    let ok = put("info,rollguard=trace").await.expect("PUT /log-level");
    assert_eq!(ok.status(), 200);
    let bad = put("info,,=x[").await.expect("PUT /log-level");
    assert_eq!(bad.status(), 400);
    assert!(
        bad.text()
            .await
            .unwrap_or_default()
            .contains("invalid filter")
    );
    let now = reqwest::get(&level).await.expect("GET /log-level");
    assert_eq!(
        now.text().await.unwrap_or_default().trim(),
        "info,rollguard=trace"
    );

    fx.set_target(GOOD_B).await;
    fx.wait_first_step().await;
    let standby_id = standby.id();
    let killed = Instant::now();
    leader.kill();
    let took_over = holds_lease(&fx.ns.client, &lease, standby_id, killed).await;
    let first_write = eventually(
        "the new leader's first write",
        Duration::from_secs(40),
        || async {
            sample(
                &standby.metrics().await,
                r#"rollguard_kube_writes_total{outcome="ok"}"#,
            )
            .filter(|n| *n > 0.0)
            .map(|_| killed.elapsed())
        },
    )
    .await;
    println!(
        "failover after SIGKILL of the leader (lease 15s): Lease taken over in {took_over:.1?}, first write in {first_write:.1?}"
    );
    assert!(
        took_over <= Duration::from_secs(15 + 5),
        "took over in {took_over:?}, more than the lease duration plus 5 s"
    );
    let done = fx.promoted(GOOD_B, 3).await;
    let reasons = since_canary(&done);
    let count = |r: &str| reasons.iter().filter(|x| *x == r).count();
    assert_eq!(count("Promoted"), 1, "{reasons:?}");
    assert_eq!(count("RollbackStarted"), 0, "{reasons:?}");
    let releases = fx
        .releases
        .list(&ListParams::default())
        .await
        .expect("releases");
    assert_eq!(releases.items.len(), 2, "one Release per digest");
    fx.cleanup().await;
}

/// The leader frozen (SIGSTOP) past its lease while the standby takes over; thawed (SIGCONT),
/// it must make no successful write: its fence closed by the clock, before it learns anything.
#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_leader_thawed_after_losing_its_lease_makes_no_write() {
    let fx = Fixture::new("e2e-frozen", &failover_scenario()).await;
    let (lease, leader, standby) = two_replicas(&fx, "frozen").await;
    fx.set_target(GOOD_B).await;
    fx.wait_first_step().await;
    leader.signal("STOP");
    let frozen = Instant::now();
    let standby_id = standby.id();
    let took_over = holds_lease(&fx.ns.client, &lease, standby_id, frozen).await;
    // Let the new leader move the rollout on, so the old one has stale work to come back to.
    eventually(
        "the new leader at a later step",
        Duration::from_secs(60),
        || async {
            let s = fx.status().await;
            (s.canary_weight.unwrap_or(0) > 10 || s.phase == Some(RolloutPhase::Stable))
                .then_some(())
        },
    )
    .await;
    let offset = std::fs::metadata(&leader.log).map(|m| m.len()).unwrap_or(0);
    leader.signal("CONT");
    tokio::time::sleep(Duration::from_secs(12)).await;
    let log = std::fs::read(&leader.log).expect("leader log");
    let after = String::from_utf8_lossy(&log[offset as usize..]).to_string();
    let written: Vec<&str> = after
        .lines()
        .filter(|l| {
            l.contains("rollguard::writes") && l.contains("write ") && !l.contains("fenced")
        })
        .collect();
    let fenced = after
        .lines()
        .filter(|l| l.contains("rollguard::writes") && l.contains("fenced "))
        .count();
    let old = leader.metrics().await;
    println!(
        "SIGSTOP of the leader: standby took over after {took_over:.1?}; after SIGCONT the old leader sent {} writes and {fenced} were refused by its fence; it reports rollguard_leader {:?}",
        written.len(),
        sample(&old, "rollguard_leader")
    );
    assert!(
        written.is_empty(),
        "the thawed leader wrote:\n{}",
        written.join("\n")
    );
    assert_eq!(sample(&old, "rollguard_leader"), Some(0.0));
    assert!(
        lease_holder(&fx.ns.client, &lease)
            .await
            .is_some_and(|h| h.ends_with(&format!("-{standby_id}"))),
        "the new leader keeps the Lease"
    );
    let done = fx.promoted(GOOD_B, 3).await;
    assert_eq!(
        since_canary(&done)
            .iter()
            .filter(|r| *r == "Promoted")
            .count(),
        1
    );
    fx.cleanup().await;
}

/// A kubeconfig for a ServiceAccount's token, on the local environment's apiserver.
fn service_account_kubeconfig(namespace: &str, account: &str, path: &str) {
    let token = run_ok(
        "kubectl",
        &[
            "create",
            "token",
            account,
            "-n",
            namespace,
            "--duration",
            "2h",
        ],
        None,
    );
    let current: Value = serde_json::from_str(&run_ok(
        "kubectl",
        &["config", "view", "--raw", "--minify", "-o", "json"],
        None,
    ))
    .expect("kubeconfig as JSON");
    let cluster = current["clusters"][0]["cluster"].clone();
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token.trim()}}],
        "contexts": [{"name": account, "context": {"cluster": "local", "user": account, "namespace": namespace}}],
        "current-context": account,
    });
    std::fs::write(path, config.to_string()).expect("write the kubeconfig");
}

/// The controller as the chart's ServiceAccount (a token for it, run locally: under kwok a pod
/// runs no process) goes through the rollback scenario with the chart's RBAC and nothing more.
/// Then `patch` on HTTPRoutes is taken away: the next canary's weight cannot be written, and
/// the Rollout says which verb on which resource is missing instead of retrying in a loop.
#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn the_charts_service_account_runs_a_rollback_and_names_a_missing_permission() {
    let home = TestNamespace::create("e2e-chart-home").await;
    let release = unique("rg");
    let chart = repo_root().join("charts/rollguard").display().to_string();
    run_ok(
        "helm",
        &[
            "install",
            &release,
            &chart,
            "--namespace",
            &home.name,
            "--set",
            "crds.install=false",
        ],
        None,
    );
    let account = format!("{release}-rollguard");
    let fx = Fixture::new("e2e-chart-sa", &Scenario::default()).await;
    let kubeconfig = format!("{}.kubeconfig", fx.log());
    service_account_kubeconfig(&home.name, &account, &kubeconfig);
    let controller = ControllerProcess::launch(
        &fx.log(),
        &[("KUBECONFIG", &kubeconfig)],
        &[
            "--namespace",
            &home.name,
            "--lease-name",
            "rollguard-leader",
        ],
    );
    fx.initialized().await;
    fx.deploy_bad(ERRORS).await;
    fx.weight_back_to_zero(Duration::from_secs(120)).await;
    fx.check_rolled_back(BAD_C, GOOD_A, "error-rate").await;
    let log = std::fs::read_to_string(fx.log()).unwrap_or_default();
    // RBAC's refusals in this test's namespace (the controller also sees other tests'
    // namespaces being deleted, where writes are refused for that reason).
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains(&fx.ns.name) && (l.contains("permission denied") || l.contains(" cannot "))
        })
        .collect();
    assert!(
        refused.is_empty(),
        "the chart's RBAC refused the controller:\n{}",
        refused.join("\n")
    );
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        home.client.clone(),
        &home.name,
    )
    .get("rollguard-leader")
    .await
    .expect("the leader Lease in the chart's namespace");
    assert!(
        lease
            .spec
            .and_then(|s| s.holder_identity)
            .is_some_and(|h| h.ends_with(&format!("-{}", controller.id())))
    );

    // Take `patch` on HTTPRoutes away from the chart's ClusterRole.
    let roles = Api::<k8s_openapi::api::rbac::v1::ClusterRole>::all(fx.ns.client.clone());
    let mut role = roles.get(&account).await.expect("the chart's ClusterRole");
    for rule in role.rules.iter_mut().flatten() {
        if rule.resources.iter().flatten().any(|r| r == "httproutes") {
            rule.verbs.retain(|v| v != "patch");
        }
    }
    roles
        .replace(&account, &Default::default(), &role)
        .await
        .expect("replace the ClusterRole");
    fx.set_target(GOOD_B).await;
    let denied = eventually(
        "a PermissionDenied condition",
        Duration::from_secs(90),
        || async {
            fx.status()
                .await
                .conditions
                .into_iter()
                .find(|c| c.reason == "PermissionDenied")
        },
    )
    .await;
    println!("condition: {}", denied.message);
    assert!(
        denied
            .message
            .contains("may not patch httproutes.gateway.networking.k8s.io")
            && denied.message.contains(&account),
        "{}",
        denied.message
    );
    // Not a hot loop: once the canary's Deployments have settled, no more attempts for minutes.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let failures = || {
        std::fs::read_to_string(fx.log())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("reconcile failed") && l.contains(&fx.ns.name))
            .count()
    };
    let before = failures();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let again = failures() - before;
    println!(
        "failed reconciles in the 30 s after the condition settled: {again} ({before} before)"
    );
    assert!(
        again <= 1,
        "{again} failed reconciles in 30 s: a retry loop"
    );
    drop(controller);
    run_ok(
        "helm",
        &["uninstall", &release, "--namespace", &home.name],
        None,
    );
    fx.cleanup().await;
    home.cleanup().await;
}

/// SIGTERM to the leader in the middle of a rollback: it finishes the plan in flight, starts
/// no other, exits 0 and releases the Lease, so the standby takes over at once (not after the
/// lease duration) and completes the saga with every step once and one incident.
#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn sigterm_mid_rollback_hands_the_lease_over_at_once() {
    let fx = Fixture::new("e2e-handover", &Scenario::default()).await;
    let (lease, leader, standby) = two_replicas(&fx, "handover").await;
    fx.deploy_bad(ERRORS).await;
    fx.wait_phase(RolloutPhase::RollingBack, None, Duration::from_secs(60))
        .await;
    let standby_id = standby.id();
    let asked = Instant::now();
    let exit = leader.terminate(Duration::from_secs(20));
    let stopped = asked.elapsed();
    assert!(
        exit.is_some_and(|s| s.success()),
        "the leader exits 0 after SIGTERM: {exit:?}"
    );
    let took_over = holds_lease(&fx.ns.client, &lease, standby_id, asked).await;
    println!(
        "SIGTERM mid-rollback: the leader stopped in {stopped:.1?}; the standby held the Lease {took_over:.1?} after the signal"
    );
    assert!(
        took_over < Duration::from_secs(5),
        "the Lease was handed over in {took_over:?}: not released on shutdown?"
    );
    fx.check_rolled_back(BAD_C, GOOD_A, "error-rate").await;
    fx.cleanup().await;
}

/// A pod-template change under the stable digest (an environment variable) is no Release: the
/// Rollout says it is not running, with a warning Event, and says so no more once reverted.
/// The unchanged template (as the apiserver stores it in the Release) raises nothing.
#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_template_change_without_a_new_digest_is_reported_not_ignored() {
    let fx = Fixture::new("e2e-template", &Scenario::default()).await;
    let _controller = fx.controller();
    fx.initialized().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let condition = |s: RolloutStatus| {
        s.conditions
            .into_iter()
            .find(|c| c.type_ == "TemplateInSync")
    };
    assert_eq!(
        condition(fx.status().await),
        None,
        "an unchanged template is in sync"
    );
    let mut changed = target(GOOD_A, fx.replicas);
    changed["spec"]["template"]["spec"]["containers"][0]["env"] =
        json!([{"name": "FEATURE_X", "value": "on"}]);
    fx.ns
        .apply(
            &core_resource("apps/v1", "Deployment", "deployments"),
            changed,
        )
        .await;
    let c = eventually("TemplateInSync False", Duration::from_secs(30), || async {
        condition(fx.status().await).filter(|c| c.status == "False")
    })
    .await;
    println!("condition: {}", c.message);
    assert!(c.message.contains("not running"), "{}", c.message);
    assert_eq!(events(&fx, "TemplateNotRolledOut").await.len(), 1);
    assert_eq!(fx.status().await.phase, Some(RolloutPhase::Stable));
    assert_eq!(
        fx.releases
            .list(&ListParams::default())
            .await
            .expect("releases")
            .items
            .len(),
        1,
        "no Release for a template without a new digest"
    );
    fx.set_target(GOOD_A).await;
    eventually("TemplateInSync True", Duration::from_secs(30), || async {
        condition(fx.status().await).filter(|c| c.status == "True")
    })
    .await;
    fx.cleanup().await;
}

/// Bad settings stop the controller at once, naming the flag or the object: lease timings
/// that cannot work, and a controller namespace that does not exist (where the Lease lives).
#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn bad_start_up_settings_stop_the_controller_naming_what_is_wrong() {
    let start = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_rollguard"))
            .args(["controller", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null())
            .output()
            .expect("run the controller");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, err) = start(&["--lease-duration", "10s", "--renew-deadline", "10s"]);
    assert!(!ok);
    assert!(
        err.contains(
            "--renew-deadline 10s must be at least 1s and shorter than --lease-duration 10s"
        ),
        "{err}"
    );
    let missing = unique("rg-missing");
    let (ok, err) = start(&["--namespace", &missing]);
    assert!(!ok);
    assert!(
        err.contains(&format!("Lease {missing}/rollguard-leader"))
            && err.contains("--namespace must exist"),
        "{err}"
    );
}
