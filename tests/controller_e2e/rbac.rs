//! The chart's ServiceAccount: its RBAC runs a rollback, and a missing verb is named.

use std::time::Duration;

use crate::common::*;
use crate::fixture::*;
use kube::Api;
use serde_json::{Value, json};

/// A kubeconfig for a ServiceAccount's token, on the local environment's apiserver.
pub(crate) fn service_account_kubeconfig(namespace: &str, account: &str, path: &str) {
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
    // The chart's admission policy binds cluster-wide: it must not outlive this test, even
    // when the test fails, or it judges every later test's writes.
    let _uninstall = Uninstall {
        release: release.clone(),
        namespace: home.name.clone(),
    };
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

    // Pods: listed (a rollback by hand names each pod as it becomes ready), never watched or
    // written.
    for (verb, want) in [
        ("list", "yes"),
        ("watch", "no"),
        ("delete", "no"),
        ("patch", "no"),
    ] {
        let r = run(
            "kubectl",
            &[
                "--kubeconfig",
                &kubeconfig,
                "auth",
                "can-i",
                verb,
                "pods",
                "-n",
                &fx.ns.name,
            ],
            None,
        );
        assert_eq!(
            r.stdout.trim(),
            want,
            "{verb} pods: {}{}",
            r.stdout,
            r.stderr
        );
    }

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
    drop(_uninstall);
    fx.cleanup().await;
    home.cleanup().await;
}

/// Uninstalls a Helm release when dropped, whether the test passed or panicked.
struct Uninstall {
    release: String,
    namespace: String,
}

impl Drop for Uninstall {
    fn drop(&mut self) {
        let r = run(
            "helm",
            &["uninstall", &self.release, "--namespace", &self.namespace],
            None,
        );
        if !r.ok {
            eprintln!("helm uninstall {}: {}{}", self.release, r.stdout, r.stderr);
        }
    }
}
