//! The shared fixture: a namespace with a target, a route, a template and a provider; the
//! controller as a process; and the helpers that wait for what it does.

use std::time::{Duration, Instant};

use crate::common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject};
use kube::{Api, Client};
use rollguard::api::release::{Release, ReleasePhase};
use rollguard::api::rollout::{OutboxAction, RollbackStep, Rollout, RolloutPhase, RolloutStatus};
use serde_json::{Value, json};

pub(crate) const GOOD_A: &str =
    "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub(crate) const GOOD_B: &str =
    "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
pub(crate) const GOOD_D: &str =
    "sha256:dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd";
pub(crate) const BAD_C: &str =
    "sha256:cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

/// Who the tests are, as the apiserver names them (the local environment's token user). A
/// Deployment may name only its writer as its deployer while the chart's admission policy is
/// installed, which the RBAC test does for the whole cluster.
pub(crate) const E2E_USER: &str = "admin";

/// 10% of requests answered 503: the error-rate fault.
pub(crate) const ERRORS: &str = r#"{"errorRate": 0.1, "errorCode": 503}"#;
/// Ten times slower, no errors: the latency-only fault.
pub(crate) const SLOW: &str = r#"{"p50Ms": 200, "p99Ms": 1000}"#;

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Routing {
    Gateway,
    Istio,
    Smi,
    Replicas,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Judgement {
    Errors,
    Latency,
}

/// What a test's namespace holds: the router, what the template judges, the steps, and where
/// the MetricProvider points.
pub(crate) struct Scenario {
    pub(crate) router: Routing,
    pub(crate) judgement: Judgement,
    pub(crate) steps: Value,
    pub(crate) post_promotion_window: Option<&'static str>,
    pub(crate) prometheus: String,
    /// The template's `onInconclusive` and `inconclusiveLimit`.
    pub(crate) inconclusive: (&'static str, u32),
    /// The Rollout's `escalation` (a receiver that does not exist unless set).
    pub(crate) escalation: Option<Value>,
    pub(crate) recovery_window: &'static str,
    /// Replicas of the target (2 with a mesh, 9 without, when unset).
    pub(crate) replicas: Option<i32>,
    /// How long each pod takes to become Ready (kwok's pod-ready delay), when it should not
    /// be at once.
    pub(crate) ready_delay: Option<&'static str>,
    /// Requests per second on the route (400 when unset).
    pub(crate) rps: Option<&'static str>,
    /// The simulator's profile of every pod of every release (healthy, no errors, when unset).
    pub(crate) profile: Option<&'static str>,
    /// Fields merged into the template's `errorRate` (toleratedRatio, floor, minRequests).
    pub(crate) error_rate: Option<Value>,
    /// The Rollout's `promotion`.
    pub(crate) promotion: Option<&'static str>,
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
            replicas: None,
            ready_delay: None,
            rps: None,
            profile: None,
            error_rate: None,
            promotion: None,
        }
    }
}

pub(crate) fn rg(kind: &str, plural: &str) -> ApiResource {
    core_resource("rollguard.dev/v1alpha1", kind, plural)
}

pub(crate) fn route_resource(router: Routing) -> Option<ApiResource> {
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

pub(crate) async fn apply_cluster(client: &Client, ar: &ApiResource, object: Value) {
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

pub(crate) fn target(digest: &str, replicas: i32) -> Value {
    target_with(digest, replicas, None, None)
}

/// The target, its pods taking `ready_delay` to become Ready and serving as `profile` says.
pub(crate) fn target_with(
    digest: &str,
    replicas: i32,
    ready_delay: Option<&str>,
    profile: Option<&str>,
) -> Value {
    let mut t = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "annotations": {"kubernetes.io/change-cause": format!("deploy {}", &digest[7..12]),
                                                    "rollguard.dev/deployed-by": E2E_USER}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web", "app.kubernetes.io/version": &digest[7..12]},
                             "annotations": {"rollguard.dev/commit": format!("{}0f3e", &digest[7..10]),
                                             "rollguard.dev/commit-message": format!("release {}", &digest[7..12])}},
                "spec": {"containers": [{"name": "web", "image": format!("registry.example/web@{digest}"),
                                         "env": [{"name": "RELEASE", "value": &digest[7..12]}],
                                         "ports": [{"name": "http", "containerPort": 8080}]}]},
            },
        },
    });
    if let Some(delay) = ready_delay {
        t["spec"]["template"]["metadata"]["annotations"]["pod-ready.stage.kwok.x-k8s.io/delay"] =
            delay.into();
    }
    if let Some(profile) = profile {
        t["spec"]["template"]["metadata"]["annotations"]["sim.rollguard.dev/profile"] =
            profile.into();
    }
    t
}

/// The route object of each router, all traffic on stable, with `rps` requests per second.
pub(crate) fn route(router: Routing, rps: &str) -> Option<Value> {
    let rps = json!({"sim.rollguard.dev/rps": rps});
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

pub(crate) fn traffic_router(router: Routing) -> Value {
    match router {
        Routing::Gateway => json!({"gatewayAPI": {"httpRoute": "web"}}),
        Routing::Istio => json!({"istio": {"virtualService": "web"}}),
        Routing::Smi => json!({"smi": {"trafficSplit": "web"}}),
        Routing::Replicas => Value::Null,
    }
}

/// A namespace with a service behind the scenario's router, a template judging it every 2 s on
/// Istio-style metrics, and a Rollout on digest A.
pub(crate) struct Fixture {
    pub(crate) ns: TestNamespace,
    pub(crate) provider: String,
    pub(crate) router: Routing,
    pub(crate) replicas: i32,
    pub(crate) ready_delay: Option<&'static str>,
    pub(crate) profile: Option<&'static str>,
    pub(crate) rollouts: Api<Rollout>,
    pub(crate) deployments: Api<Deployment>,
    pub(crate) releases: Api<Release>,
    pub(crate) pods: Api<Pod>,
}

impl Fixture {
    pub(crate) async fn new(prefix: &str, sc: &Scenario) -> Fixture {
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
        let replicas = sc
            .replicas
            .unwrap_or(if sc.router == Routing::Replicas { 9 } else { 2 });
        let fx = Fixture {
            rollouts: Api::namespaced(ns.client.clone(), &ns.name),
            deployments: Api::namespaced(ns.client.clone(), &ns.name),
            releases: Api::namespaced(ns.client.clone(), &ns.name),
            pods: Api::namespaced(ns.client.clone(), &ns.name),
            ns,
            provider,
            router: sc.router,
            replicas,
            ready_delay: sc.ready_delay,
            profile: sc.profile,
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
        if let (Some(ar), Some(object)) = (
            route_resource(sc.router),
            route(sc.router, sc.rps.unwrap_or("400")),
        ) {
            fx.ns.apply(&ar, object).await;
        }
        let selector = |extra: &str| {
            format!(
                r#"istio_requests_total{{reporter="destination", destination_workload_namespace="{}", destination_workload="{{{{arm}}}}"{extra}}}"#,
                fx.ns.name
            )
        };
        let mut metric = match sc.judgement {
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
        if let (Some(Value::Object(fields)), Some(e)) =
            (&sc.error_rate, metric.get_mut("errorRate"))
        {
            for (k, v) in fields {
                e[k] = v.clone();
            }
        }
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
        if let Some(p) = sc.promotion {
            spec["promotion"] = json!(p);
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

    pub(crate) fn log(&self) -> String {
        format!(
            "{}/target/controller-e2e-{}.log",
            env!("CARGO_MANIFEST_DIR"),
            self.ns.name
        )
    }

    pub(crate) fn controller(&self) -> ControllerProcess {
        ControllerProcess::start(&self.log())
    }

    pub(crate) async fn status(&self) -> RolloutStatus {
        self.rollouts
            .get("web")
            .await
            .ok()
            .and_then(|r| r.status)
            .unwrap_or_default()
    }

    pub(crate) async fn wait_phase(
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
    pub(crate) async fn wait_first_step(&self) {
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
    pub(crate) async fn canary_weight(&self) -> u64 {
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

    pub(crate) async fn set_target(&self, digest: &str) {
        self.ns
            .apply(
                &core_resource("apps/v1", "Deployment", "deployments"),
                target_with(digest, self.replicas, self.ready_delay, self.profile),
            )
            .await;
    }

    /// Deploys the bad digest and, once its canary's 10% is verified, gives its pods `profile`.
    pub(crate) async fn deploy_bad(&self, profile: &str) {
        self.set_target(BAD_C).await;
        self.wait_first_step().await;
        self.fault("canary", profile).await;
    }

    /// Gives the running pods of one arm a fault profile, as a bad version would behave.
    pub(crate) async fn fault(&self, arm: &str, profile: &str) {
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

    pub(crate) async fn release(&self, digest: &str) -> Release {
        self.releases
            .get(&format!("web-{}", &digest[7..17]))
            .await
            .expect("release")
    }

    pub(crate) async fn release_phase(&self, digest: &str) -> Option<ReleasePhase> {
        self.release(digest).await.status?.phase
    }

    pub(crate) async fn image(&self, deployment: &str) -> String {
        let d = self.deployments.get(deployment).await.expect(deployment);
        d.spec
            .and_then(|s| s.template.spec)
            .and_then(|s| s.containers[0].image.clone())
            .unwrap_or_default()
    }

    pub(crate) async fn replicas(&self, deployment: &str) -> Option<i32> {
        self.deployments
            .get(deployment)
            .await
            .ok()
            .and_then(|d| d.spec?.replicas)
    }

    /// The first digest becomes stable; the target is scaled to zero.
    pub(crate) async fn initialized(&self) {
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
    pub(crate) async fn promoted(&self, digest: &str, steps: usize) -> RolloutStatus {
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
    pub(crate) async fn weight_back_to_zero(&self, timeout: Duration) -> Duration {
        let onset = Instant::now();
        eventually("the canary weight back to 0", timeout, || async {
            (self.canary_weight().await == 0).then_some(())
        })
        .await;
        onset.elapsed()
    }

    /// After a rollback of `bad` onto `stable`: what the issue asks of it.
    pub(crate) async fn check_rolled_back(
        &self,
        bad: &str,
        stable: &str,
        metric: &str,
    ) -> RolloutStatus {
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
        assert_eq!(steps, RollbackStep::ORDER, "every saga step once, in order");
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
    pub(crate) async fn resolve_incident(&self, reason: &str) {
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

    pub(crate) async fn cleanup(self) {
        let _ = Api::<DynamicObject>::all_with(
            self.ns.client.clone(),
            &rg("MetricProvider", "metricproviders"),
        )
        .delete(&self.provider, &Default::default())
        .await;
        self.ns.cleanup().await;
    }
}

/// The Rollout's Events with `reason`.
pub(crate) async fn events(fx: &Fixture, reason: &str) -> Vec<String> {
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
