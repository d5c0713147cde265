//! Escalations to Alertmanager, PagerDuty, Slack and a signed webhook, and a receiver that
//! is down for a while.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::fixture::*;
use kube::api::{Patch, PatchParams};
use kube::core::DynamicObject;
use kube::{Api, Client};
use rollguard::api::rollout::RolloutPhase;
use serde_json::{Value, json};

/// Creates (or replaces) a Secret in the controller's namespace (`default` in these tests).
pub(crate) async fn controller_secret(client: &Client, name: &str, data: Value) {
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
pub(crate) async fn receiver(client: &Client, name: &str, mut spec: Value) {
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

pub(crate) async fn delete_receivers(client: &Client, names: &[String]) {
    use k8s_openapi::api::core::v1::Secret;
    let receivers = Api::<DynamicObject>::all_with(client.clone(), &rg("Receiver", "receivers"));
    let secrets = Api::<Secret>::namespaced(client.clone(), "default");
    for n in names {
        let _ = receivers.delete(n, &Default::default()).await;
        let _ = secrets.delete(n, &Default::default()).await;
    }
}

/// Alertmanager's alerts for a namespace (`GET /api/v2/alerts`).
pub(crate) async fn alertmanager_alerts(namespace: &str) -> Vec<Value> {
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

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn escalations_reach_alertmanager_pagerduty_slack_and_a_signed_webhook() {
    let recorder = HttpRecorder::start().await;
    // PagerDuty throttles, then fails, then accepts; a second one refuses every event.
    recorder.respond("/pd/v2/enqueue", &[429, 503]);
    recorder.always("/pd-bad/v2/enqueue", 400);
    let client = crate::common::client().await;
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
    let client = crate::common::client().await;
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
