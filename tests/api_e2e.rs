//! The CRDs in `crds/` against the real apiserver: they install, valid objects are accepted, and
//! each invalid one is rejected at admission with a message naming the field.

mod common;

use common::*;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, ValidationDirective};
use kube::core::{ApiResource, DynamicObject};
use kube::{Api, Client};
use serde_json::{Value, json};

const DIGEST: &str = "sha256:1d6f3b8e2c7a4f5d9e0b1c2a3f4e5d6c7b8a9f0e1d2c3b4a5f6e7d8c9b0a1f2e";

fn resource(kind: &str, plural: &str) -> ApiResource {
    core_resource("rollguard.dev/v1alpha1", kind, plural)
}

/// Server-side apply with strict field validation, as `kubectl apply` does by default.
async fn apply(
    client: &Client,
    ns: Option<&str>,
    ar: &ApiResource,
    object: &Value,
) -> Result<DynamicObject, String> {
    let api = match ns {
        Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, ar),
        None => Api::<DynamicObject>::all_with(client.clone(), ar),
    };
    let name = object["metadata"]["name"].as_str().expect("named object");
    let mut params = PatchParams::apply("rollguard-e2e").force();
    params.field_validation = Some(ValidationDirective::Strict);
    let obj: DynamicObject = serde_json::from_value(object.clone()).expect("object");
    api.patch(name, &params, &Patch::Apply(&obj))
        .await
        .map_err(|e| e.to_string())
}

fn rollout(steps: Value) -> Value {
    json!({
        "apiVersion": "rollguard.dev/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "checkout"},
        "spec": {
            "targetRef": {"name": "checkout"},
            "trafficRouter": {"gatewayAPI": {"httpRoute": "checkout"}},
            "steps": steps,
            "analysis": {"templates": [{"name": "errors"}], "args": [{"name": "service", "value": "checkout"}]},
            "escalation": {"receivers": ["oncall"], "severity": "critical"}
        }
    })
}

fn release(image: &str) -> Value {
    json!({
        "apiVersion": "rollguard.dev/v1alpha1", "kind": "Release",
        "metadata": {"name": "checkout-1d6f3b8e2c7a"},
        "spec": {
            "rollout": "checkout",
            "images": [{"container": "checkout", "image": image}],
            "podTemplate": {"spec": {"containers": [{"name": "checkout", "image": image}]}},
            "version": "1.5.0"
        }
    })
}

fn template(metric: Value) -> Value {
    json!({
        "apiVersion": "rollguard.dev/v1alpha1", "kind": "AnalysisTemplate",
        "metadata": {"name": "errors"},
        "spec": {
            "args": [{"name": "service", "type": "string"}],
            "metrics": [metric]
        }
    })
}

fn error_rate_metric() -> Value {
    json!({
        "name": "error-rate", "provider": "prometheus", "critical": true,
        "errorRate": {
            "requests": "sum(istio_requests_total{destination_workload=\"{{arm}}\"})",
            "errors": "sum(istio_requests_total{destination_workload=\"{{arm}}\",response_code=~\"5..\"})"
        }
    })
}

fn assert_rejected(result: Result<DynamicObject, String>, field: &str, words: &str) {
    let message = match result {
        Ok(obj) => panic!("accepted, but should be rejected for {field}: {obj:?}"),
        Err(message) => message,
    };
    assert!(
        message.contains(field),
        "the rejection does not name {field}: {message}"
    );
    assert!(
        message.contains(words),
        "the rejection does not say {words:?}: {message}"
    );
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn crds_install_and_valid_objects_are_accepted() {
    let ns = TestNamespace::create("e2e-api-valid").await;
    install_crds(&ns.client).await;
    let c = &ns.client;
    let steps = json!([{"setWeight": 10, "duration": "1m"}, {"pause": {}}, {"setWeight": 50}, {"setWeight": 100}]);
    apply(
        c,
        Some(&ns.name),
        &resource("Rollout", "rollouts"),
        &rollout(steps),
    )
    .await
    .expect("valid Rollout");
    apply(
        c,
        Some(&ns.name),
        &resource("Release", "releases"),
        &release(&format!("registry.example/checkout@{DIGEST}")),
    )
    .await
    .expect("valid Release");
    apply(
        c,
        Some(&ns.name),
        &resource("AnalysisTemplate", "analysistemplates"),
        &template(error_rate_metric()),
    )
    .await
    .expect("valid AnalysisTemplate");
    let provider_name = unique("e2e-prometheus");
    let provider = json!({
        "apiVersion": "rollguard.dev/v1alpha1", "kind": "MetricProvider",
        "metadata": {"name": provider_name},
        "spec": {"prometheus": {"address": "http://prometheus.monitoring:9090", "timeout": "3s"}, "allowedNamespaces": ["*"]}
    });
    apply(
        c,
        None,
        &resource("MetricProvider", "metricproviders"),
        &provider,
    )
    .await
    .expect("valid MetricProvider");
    let receiver_name = unique("e2e-oncall");
    let receiver = json!({
        "apiVersion": "rollguard.dev/v1alpha1", "kind": "Receiver",
        "metadata": {"name": receiver_name},
        "spec": {"allowedNamespaces": ["*"], "pagerDuty": {"routingKey": {"name": "rollguard-pagerduty", "key": "routing-key"}}}
    });
    apply(c, None, &resource("Receiver", "receivers"), &receiver)
        .await
        .expect("valid Receiver");

    // Defaults come from the schema: the stored object carries them.
    let stored = Api::<rollguard::api::Rollout>::namespaced(c.clone(), &ns.name)
        .get("checkout")
        .await
        .expect("typed read");
    assert!(stored.spec.require_digest);
    assert_eq!(stored.spec.history_limit, 10);
    assert_eq!(stored.spec.progress_deadline.0, "10m");

    // Cluster-scoped objects outlive the namespace; remove them here.
    for (ar, name) in [
        (
            resource("MetricProvider", "metricproviders"),
            &provider_name,
        ),
        (resource("Receiver", "receivers"), &receiver_name),
    ] {
        Api::<DynamicObject>::all_with(c.clone(), &ar)
            .delete(name, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("deleting {} {name}: {e}", ar.kind));
    }
    ns.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn invalid_rollouts_are_rejected_naming_the_field() {
    let ns = TestNamespace::create("e2e-api-rollout").await;
    install_crds(&ns.client).await;
    let rollouts = resource("Rollout", "rollouts");
    let c = &ns.client;
    assert_rejected(
        apply(
            c,
            Some(&ns.name),
            &rollouts,
            &rollout(json!([{"setWeight": 120}])),
        )
        .await,
        "spec.steps[0].setWeight",
        "setWeight must be within 0..100",
    );
    assert_rejected(
        apply(
            c,
            Some(&ns.name),
            &rollouts,
            &rollout(json!([{"setWeight": 50}, {"setWeight": 20}])),
        )
        .await,
        "spec.steps",
        "setWeight steps must never decrease",
    );
    assert_rejected(
        apply(
            c,
            Some(&ns.name),
            &rollouts,
            &rollout(json!([{"setWeight": 10, "pause": {}}])),
        )
        .await,
        "spec.steps[0]",
        "a step sets a weight or pauses, not both",
    );
    let mut two_routers = rollout(json!([{"setWeight": 10}]));
    two_routers["spec"]["trafficRouter"]["smi"] = json!({"trafficSplit": "checkout"});
    assert_rejected(
        apply(c, Some(&ns.name), &rollouts, &two_routers).await,
        "spec.trafficRouter",
        "exactly one of",
    );
    let mut wrong_type = rollout(json!([{"setWeight": "ten"}]));
    assert_rejected(
        apply(c, Some(&ns.name), &rollouts, &wrong_type).await,
        "spec.steps[0].setWeight",
        "expected numeric",
    );
    wrong_type = rollout(json!([{"setWeight": 10}]));
    wrong_type["spec"]["baseline"] = json!("Yesterday");
    assert_rejected(
        apply(c, Some(&ns.name), &rollouts, &wrong_type).await,
        "spec.baseline",
        "Unsupported value",
    );
    // No analysis is a choice written down (withoutAnalysis), never an omission.
    let mut unjudged = rollout(json!([{"setWeight": 10}]));
    unjudged["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("analysis");
    assert_rejected(
        apply(c, Some(&ns.name), &rollouts, &unjudged).await,
        "spec",
        "withoutAnalysis: true",
    );
    unjudged["spec"]["withoutAnalysis"] = json!(true);
    apply(c, Some(&ns.name), &rollouts, &unjudged)
        .await
        .expect("no analysis, by the owner's written choice");
    let mut both = rollout(json!([{"setWeight": 10}]));
    both["spec"]["withoutAnalysis"] = json!(true);
    assert_rejected(
        apply(c, Some(&ns.name), &rollouts, &both).await,
        "spec",
        "not both",
    );
    // A target with an arm's name would be scaled to zero and overwritten.
    for arm in ["stable", "canary", "baseline"] {
        let mut taken = rollout(json!([{"setWeight": 10}]));
        taken["spec"]["targetRef"]["name"] = json!(format!("checkout-{arm}"));
        assert_rejected(
            apply(c, Some(&ns.name), &rollouts, &taken).await,
            "spec.targetRef.name",
            "one of the Rollout's own Deployments",
        );
    }
    let mut long_arg = rollout(json!([{"setWeight": 10}]));
    long_arg["spec"]["analysis"]["args"][0]["value"] = json!("x".repeat(2000));
    assert_rejected(
        apply(c, Some(&ns.name), &rollouts, &long_arg).await,
        "spec.analysis.args[0].value",
        "Too long",
    );
    ns.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn releases_pin_digests_keep_their_spec_and_move_only_by_legal_transitions() {
    let ns = TestNamespace::create("e2e-api-release").await;
    install_crds(&ns.client).await;
    let releases = resource("Release", "releases");
    let c = &ns.client;
    assert_rejected(
        apply(
            c,
            Some(&ns.name),
            &releases,
            &release("registry.example/checkout:1.5.0"),
        )
        .await,
        "spec.images",
        "images must be pinned",
    );
    let mut tagged = release("registry.example/checkout:1.5.0");
    tagged["spec"]["allowTags"] = json!(true);
    tagged["metadata"]["name"] = json!("checkout-tagged");
    apply(c, Some(&ns.name), &releases, &tagged)
        .await
        .expect("tags are fine when allowed");

    let pinned = release(&format!("registry.example/checkout@{DIGEST}"));
    apply(c, Some(&ns.name), &releases, &pinned)
        .await
        .expect("valid Release");
    let mut changed = pinned.clone();
    changed["spec"]["version"] = json!("1.5.1");
    assert_rejected(
        apply(c, Some(&ns.name), &releases, &changed).await,
        "spec",
        "Release.spec is immutable",
    );

    let api = Api::<DynamicObject>::namespaced_with(c.clone(), &ns.name, &releases);
    let set_status = |status: Value| {
        let api = api.clone();
        async move {
            let patch = json!({"apiVersion": "rollguard.dev/v1alpha1", "kind": "Release", "status": status});
            api.patch_status(
                "checkout-1d6f3b8e2c7a",
                &PatchParams::apply("rollguard-e2e").force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|e| e.to_string())
        }
    };
    set_status(json!({"phase": "Candidate"}))
        .await
        .expect("Candidate");
    set_status(json!({"phase": "Progressing"}))
        .await
        .expect("Candidate → Progressing");
    set_status(json!({"phase": "Unstable"}))
        .await
        .expect("Progressing → Unstable");
    assert_rejected(
        set_status(json!({"phase": "Stable"})).await,
        "status",
        "illegal phase transition",
    );
    assert_rejected(
        set_status(json!({"phase": "Stable", "override": {"reason": "   ", "by": "alice", "at": "2026-11-22T10:00:00Z"}})).await,
        "status",
        "status.override.reason",
    );
    set_status(json!({"phase": "Stable", "override": {"reason": "false alarm: upstream outage", "by": "alice", "at": "2026-11-22T10:00:00Z"}}))
        .await
        .expect("Unstable → Stable with a reason");
    assert_rejected(
        set_status(json!({"phase": "Candidate"})).await,
        "status",
        "illegal phase transition",
    );
    // A new Unstable verdict drops the override that lifted the last one.
    assert_rejected(
        set_status(json!({"phase": "Unstable", "override": {"reason": "false alarm: upstream outage", "by": "alice", "at": "2026-11-22T10:00:00Z"}})).await,
        "status",
        "loses its earlier override",
    );
    set_status(json!({"phase": "Unstable"}))
        .await
        .expect("Stable → Unstable, the override gone");
    // The phase cannot be removed to slip past the rule, by merge patch or by apply.
    let merge = |status: Value| {
        let api = api.clone();
        async move {
            api.patch_status(
                "checkout-1d6f3b8e2c7a",
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": status })),
            )
            .await
            .map_err(|e| e.to_string())
        }
    };
    assert_rejected(
        merge(json!({"phase": null})).await,
        "status.phase",
        "never removed",
    );
    assert_rejected(set_status(json!({})).await, "status.phase", "never removed");
    let whole = api
        .patch_status(
            "checkout-1d6f3b8e2c7a",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": null})),
        )
        .await
        .map_err(|e| e.to_string());
    assert_rejected(whole, "status.phase", "never removed");
    let still = api.get("checkout-1d6f3b8e2c7a").await.expect("Release");
    assert_eq!(still.data["status"]["phase"], "Unstable");
    ns.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn templates_need_one_judgment_and_carry_no_urls() {
    let ns = TestNamespace::create("e2e-api-template").await;
    install_crds(&ns.client).await;
    let templates = resource("AnalysisTemplate", "analysistemplates");
    let c = &ns.client;
    let mut two = error_rate_metric();
    two["threshold"] = json!({"query": "up", "min": 1});
    assert_rejected(
        apply(c, Some(&ns.name), &templates, &template(two)).await,
        "spec.metrics[0]",
        "exactly one judgment",
    );
    let mut none = error_rate_metric();
    none.as_object_mut()
        .expect("metric object")
        .remove("errorRate");
    assert_rejected(
        apply(c, Some(&ns.name), &templates, &template(none)).await,
        "spec.metrics[0]",
        "exactly one judgment",
    );
    let mut with_url = error_rate_metric();
    with_url["address"] = json!("http://evil.example:9090");
    assert_rejected(
        apply(c, Some(&ns.name), &templates, &template(with_url)).await,
        "spec.metrics[0].address",
        "field not declared in schema",
    );
    let mut bad_arg = template(error_rate_metric());
    bad_arg["spec"]["args"] = json!([{"name": "service", "type": "regex"}]);
    assert_rejected(
        apply(c, Some(&ns.name), &templates, &bad_arg).await,
        "spec.args[0].type",
        "Unsupported value",
    );
    // What crashed the controller took a 12 KB query; the apiserver now refuses anything past
    // 4 KiB, and a 1 MB one outright.
    for size in [4097, 1 << 20] {
        let mut huge = error_rate_metric();
        huge["errorRate"]["requests"] = json!(format!("sum(x){}", " + 1".repeat(size / 4)));
        assert_rejected(
            apply(c, Some(&ns.name), &templates, &template(huge)).await,
            "spec.metrics[0].errorRate.requests",
            "Too long",
        );
    }
    let mut twice = template(error_rate_metric());
    twice["spec"]["metrics"] = json!([error_rate_metric(), error_rate_metric()]);
    assert_rejected(
        apply(c, Some(&ns.name), &templates, &twice).await,
        "spec.metrics",
        "metric names must be unique",
    );
    ns.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn receivers_take_exactly_one_endpoint() {
    let client = client().await;
    install_crds(&client).await;
    let receivers =
        Api::<DynamicObject>::all_with(client.clone(), &resource("Receiver", "receivers"));
    let both: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "rollguard.dev/v1alpha1", "kind": "Receiver",
        "metadata": {"name": unique("e2e-both")},
        "spec": {
            "allowedNamespaces": ["*"],
            "alertmanager": {"url": "http://alertmanager:9093"},
            "slack": {"webhookURL": {"name": "slack", "key": "url"}}
        }
    }))
    .expect("receiver object");
    let err = receivers
        .create(&PostParams::default(), &both)
        .await
        .expect_err("two endpoints are refused");
    assert!(
        err.to_string()
            .contains("set exactly one of alertmanager, pagerDuty, slack or webhook"),
        "{err}"
    );
}

/// Release history is written with the resourceVersion it was read at: eight writers
/// appending at once (the controller and `rollguard override` in real life) lose no entry.
#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn concurrent_history_writers_lose_no_entry() {
    let ns = TestNamespace::create("e2e-api-history").await;
    install_crds(&ns.client).await;
    apply(
        &ns.client,
        Some(&ns.name),
        &resource("Release", "releases"),
        &release(&format!("registry.example/checkout@{DIGEST}")),
    )
    .await
    .expect("valid Release");
    let api = Api::<rollguard::api::release::Release>::namespaced(ns.client.clone(), &ns.name);
    let writers = (0..8).map(|i| {
        let api = api.clone();
        async move {
            let entry = rollguard::api::release::HistoryEntry {
                action: "note".into(),
                by: format!("writer-{i}"),
                at: "2026-11-22T10:00:00Z".into(),
                reason: None,
            };
            rollguard::controller::history::record_history(
                &api,
                "checkout-1d6f3b8e2c7a",
                &entry,
                json!({}),
            )
            .await
        }
    });
    let results = futures::future::join_all(writers).await;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(ToString::to_string))
        .collect();
    let history = api
        .get("checkout-1d6f3b8e2c7a")
        .await
        .expect("release")
        .status
        .unwrap_or_default()
        .history;
    let by: std::collections::BTreeSet<String> = history.iter().map(|e| e.by.clone()).collect();
    println!(
        "8 concurrent history writers: {} entries kept, {} gave up after repeated conflicts",
        by.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(by.len(), 8, "an entry was lost: {by:?}");
    ns.cleanup().await;
}
