//! Faults around the controller: Prometheus going away and coming back, and another writer
//! on the route.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use std::time::Duration;

use crate::common::*;
use crate::fixture::*;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::core::DynamicObject;
use rollguard::api::rollout::RolloutPhase;
use rollguard::traffic::router::MeshRouter;
use rollguard::traffic::{Arms, RouteKind, Router, Weights, weights};
use serde_json::json;

/// A Prometheus of the test's own, scraping the simulator every second, that can be stopped and
/// started again on the same port and storage.
pub(crate) struct OwnPrometheus {
    pub(crate) port: u16,
    pub(crate) dir: std::path::PathBuf,
    pub(crate) child: Option<Child>,
}

impl OwnPrometheus {
    pub(crate) async fn start(name: &str) -> OwnPrometheus {
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

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) async fn resume(&mut self) {
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

    pub(crate) fn stop(&mut self) {
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
