//! Rolling back by hand (`rollguard rollback`): to a release two back with its whole snapshot,
//! with the live log, and with a canary running; redeploying an earlier release's images on
//! today's configuration (`rollguard redeploy`).

use std::time::Duration;

use crate::common::*;
use crate::fixture::*;
use rollguard::api::release::ReleasePhase;
use rollguard::api::rollout::{RevertStep, RolloutPhase};
use serde_json::json;

fn rollguard(args: &[&str]) -> Run {
    run(env!("CARGO_BIN_EXE_rollguard"), args, None)
}

/// The stable Deployment's first container: its image and its RELEASE variable.
async fn serving(fx: &Fixture) -> (String, String) {
    let d = fx.deployments.get("web-stable").await.expect("web-stable");
    let c = d
        .spec
        .and_then(|s| s.template.spec)
        .map(|s| s.containers[0].clone())
        .expect("a container");
    let env = c
        .env
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.name == "RELEASE")
        .and_then(|e| e.value)
        .unwrap_or_default();
    (c.image.unwrap_or_default(), env)
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_release_two_back_is_restored_by_hand_with_its_snapshot_and_a_live_log() {
    // Three replicas whose pods take 2 s each to become Ready.
    let sc = Scenario {
        replicas: Some(3),
        ready_delay: Some("2s"),
        ..Scenario::default()
    };
    let fx = Fixture::new("manual", &sc).await;
    let _controller = fx.controller();
    fx.initialized().await;
    fx.promoted(GOOD_B, 2).await;
    fx.promoted(GOOD_D, 2).await;
    let ns = fx.ns.name.clone();

    // A release that never existed, and one that is serving, are refused before anything is
    // sent.
    let r = rollguard(&["rollback", "web", "-n", &ns, "--to", "9.9.9"]);
    assert!(
        !r.ok && r.stderr.contains("no release"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    let r = rollguard(&["rollback", "web", "-n", &ns, "--to", "ddddd"]);
    assert!(
        !r.ok && r.stderr.contains("serving now"),
        "{}{}",
        r.stdout,
        r.stderr
    );

    // Two releases back, by version, with the log printed as it happens.
    let started = std::time::Instant::now();
    let r = rollguard(&[
        "rollback",
        "web",
        "-n",
        &ns,
        "--to",
        "aaaaa",
        "--reason",
        "config regression",
    ]);
    let took = started.elapsed();
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    println!("{}", r.stdout);
    for expected in [
        "sent by",
        "00:00 rollback web web-dddddddddd → web-aaaaaaaaaa requested by",
        "config regression",
        "no build needed",
        "rolling update of web-stable to web-aaaaaaaaaa: 0/3 replicas",
        "all 3 replicas of web-aaaaaaaaaa ready",
        "rollback complete in",
    ] {
        assert!(r.stdout.contains(expected), "{expected:?} in\n{}", r.stdout);
    }
    // One line per pod of the restored template, named, each when it became ready.
    let pods: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.ends_with(": ready ✓"))
        .collect();
    assert_eq!(pods.len(), 3, "{}", r.stdout);
    assert!(pods.iter().all(|l| l.contains(" web-stable-")), "{pods:?}");
    println!("rollback by hand, request to complete: {took:.1?}");
    // One pod at a time (maxUnavailable 0, maxSurge 1 of 3), each 2 s to be Ready.
    assert!(
        took >= Duration::from_secs(5),
        "{took:?}: the pods' readiness was waited for"
    );

    // The whole snapshot is back: the image and the environment of that release.
    let (image, env) = serving(&fx).await;
    assert!(image.ends_with(GOOD_A), "{image}");
    assert_eq!(env, "aaaaa");
    let s = fx.status().await;
    assert_eq!(s.phase, Some(RolloutPhase::RolledBack));
    assert_eq!(s.stable.as_ref().map(|r| r.digest.as_str()), Some(GOOD_A));
    let mr = s.manual_rollback.clone().expect("recorded");
    assert_eq!(mr.step, RevertStep::Done);
    assert_eq!(fx.canary_weight().await, 0);
    // Superseded, not Unstable: a rollback by hand is not a verdict.
    assert_eq!(
        fx.release_phase(GOOD_D).await,
        Some(ReleasePhase::Superseded)
    );
    assert_eq!(fx.release_phase(GOOD_A).await, Some(ReleasePhase::Stable));
    let history = fx.release(GOOD_A).await.status.expect("status").history;
    assert!(
        history
            .iter()
            .any(|h| h.action == "rollback-to" && h.reason.as_deref() == Some("config regression")),
        "{history:?}"
    );

    // The target still declares D: it is not canaried again, and the status says why.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = fx.status().await;
    assert_eq!(s.phase, Some(RolloutPhase::RolledBack));
    assert!(
        s.message
            .as_deref()
            .is_some_and(|m| m.contains("not deployed again")),
        "{:?}",
        s.message
    );
    assert_eq!(fx.replicas("web-canary").await, Some(0));

    // Any later watcher reads the same log from the start.
    let text = rollguard(&["status", "web", "-n", &ns]).stdout;
    assert!(
        text.contains("Rollback by hand (Done)")
            && text.contains("requested by")
            && text.contains("rollback complete in"),
        "{text}"
    );
    fx.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_rollback_by_hand_withdraws_a_running_canary_first() {
    let sc = Scenario {
        steps: json!([{"setWeight": 10}, {"pause": {}}, {"setWeight": 50, "duration": "4s"}]),
        ..Scenario::default()
    };
    let fx = Fixture::new("manual-canary", &sc).await;
    let _controller = fx.controller();
    fx.initialized().await;
    // B through its pause by hand, then D held at its pause.
    fx.set_target(GOOD_B).await;
    fx.wait_first_step().await;
    let r = rollguard(&["promote", "web", "-n", &fx.ns.name]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    fx.wait_phase(RolloutPhase::Stable, Some(GOOD_B), Duration::from_secs(60))
        .await;
    fx.set_target(GOOD_D).await;
    fx.wait_first_step().await;
    assert_eq!(fx.canary_weight().await, 10);

    let ns = fx.ns.name.clone();
    let r = rollguard(&["rollback", "web", "-n", &ns, "--unstable", "leaks memory"]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    println!("{}", r.stdout);
    assert!(r.stdout.contains("withdrawn first"), "{}", r.stdout);
    assert!(r.stdout.contains("weight 0, verified"), "{}", r.stdout);
    assert_eq!(fx.canary_weight().await, 0);
    eventually(
        "the canary scaled to 0",
        Duration::from_secs(30),
        || async { (fx.replicas("web-canary").await == Some(0)).then_some(()) },
    )
    .await;
    let (image, _) = serving(&fx).await;
    assert!(image.ends_with(GOOD_A), "the previous release: {image}");
    // --unstable marks the release that was serving, with the reason.
    let b = fx.release(GOOD_B).await.status.expect("status");
    assert_eq!(b.phase, Some(ReleasePhase::Unstable));
    assert!(
        b.verdict.is_some_and(|v| v.reason.contains("leaks memory")),
        "the reason is recorded"
    );
    assert_eq!(
        fx.release_phase(GOOD_D).await,
        Some(ReleasePhase::Superseded)
    );
    fx.cleanup().await;
}

/// SIGKILL between each step's writes and its record: the next controller redoes the step, and
/// the rollback completes once, with each line of its log and each history entry once.
#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_rollback_by_hand_survives_sigkill_at_every_step() {
    let fx = Fixture::new("manual-kill", &Scenario::default()).await;
    let log = fx.log();
    let first = fx.controller();
    fx.initialized().await;
    fx.promoted(GOOD_B, 2).await;
    first.kill();
    let steps = ["Withdraw", "Restore", "Ready", "Record"];
    let halting = |step: &str| {
        ControllerProcess::start_with(
            &log,
            &[(
                "ROLLGUARD_TEST_HALT_BEFORE_RECORD",
                &format!("Revert:{step}"),
            )],
        )
    };
    let mut controller = halting(steps[0]);
    let r = rollguard(&["rollback", "web", "-n", &fx.ns.name, "--no-wait"]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    for (i, step) in steps.iter().enumerate() {
        let line =
            format!("halting at saga step Revert:{step} (ROLLGUARD_TEST_HALT_BEFORE_RECORD)");
        eventually(
            &format!("the controller halted before recording {step}"),
            Duration::from_secs(90),
            || async {
                std::fs::read_to_string(&log)
                    .ok()
                    .filter(|t| t.matches(&line).count() == 1)
                    .map(drop)
            },
        )
        .await;
        controller.kill();
        println!("SIGKILL before recording {step}");
        controller = match steps.get(i + 1) {
            Some(next) => halting(next),
            None => fx.controller(),
        };
    }
    let done = eventually("the rollback done", Duration::from_secs(90), || async {
        fx.status()
            .await
            .manual_rollback
            .filter(|m| m.step == RevertStep::Done)
    })
    .await;
    let texts: Vec<&str> = done.log.iter().map(|l| l.text.as_str()).collect();
    for once in ["requested by", "no build needed", "rollback complete"] {
        assert_eq!(
            texts.iter().filter(|t| t.contains(once)).count(),
            1,
            "{once:?} once in {texts:?}"
        );
    }
    let (image, env) = serving(&fx).await;
    assert!(image.ends_with(GOOD_A) && env == "aaaaa", "{image} {env}");
    assert_eq!(
        fx.release_phase(GOOD_B).await,
        Some(ReleasePhase::Superseded)
    );
    let history = fx.release(GOOD_A).await.status.expect("status").history;
    assert_eq!(
        history.iter().filter(|h| h.action == "rollback-to").count(),
        1,
        "{history:?}"
    );
    drop(controller);
    fx.cleanup().await;
}

/// A ConfigMap the release referred to changed since: the rollback says so (log, Event,
/// JSON), and `--strict` refuses.
#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn the_preflight_says_what_a_rollback_cannot_restore() {
    let fx = Fixture::new("manual-preflight", &Scenario::default()).await;
    let configmaps = core_resource("v1", "ConfigMap", "configmaps");
    let config = |value: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config"},
               "data": {"FEATURE": value}})
    };
    fx.ns.apply(&configmaps, config("off")).await;
    let deployments = core_resource("apps/v1", "Deployment", "deployments");
    let with_config = |digest: &str| {
        let mut t = target(digest, fx.replicas);
        t["spec"]["template"]["spec"]["containers"][0]["envFrom"] =
            json!([{"configMapRef": {"name": "web-config"}}]);
        t
    };
    fx.ns.apply(&deployments, with_config(GOOD_A)).await;
    let _controller = fx.controller();
    fx.initialized().await;
    let hashes = fx.release(GOOD_A).await.spec.config_hashes;
    assert!(
        hashes.len() == 1 && hashes[0].name == "web-config" && hashes[0].sha256.is_some(),
        "{hashes:?}"
    );
    fx.ns.apply(&deployments, with_config(GOOD_B)).await;
    fx.wait_phase(RolloutPhase::Stable, Some(GOOD_B), Duration::from_secs(120))
        .await;
    // The feature flag flipped after A was released.
    fx.ns.apply(&configmaps, config("on")).await;

    let ns = fx.ns.name.clone();
    let r = rollguard(&["rollback", "web", "-n", &ns, "--to", "aaaaa", "--strict"]);
    assert!(!r.ok, "refused: {}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("refused by --strict"), "{}", r.stderr);
    assert!(
        r.stdout
            .contains("ConfigMap web-config changed since aaaaa was released; the rollback does not restore it"),
        "{}",
        r.stdout
    );
    assert_eq!(
        fx.status().await.manual_rollback,
        None,
        "nothing was sent under --strict"
    );

    let r = rollguard(&["rollback", "web", "-n", &ns, "--to", "aaaaa", "-o", "json"]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    let out: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(out["outcome"], "Done", "{out}");
    assert!(
        out["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("ConfigMap web-config changed")),
        "{out}"
    );
    assert!(
        out["log"].as_array().is_some_and(|l| l.iter().any(|l| l
            .as_str()
            .is_some_and(|l| l.contains("warning: ConfigMap web-config changed")))),
        "{out}"
    );
    let events = run_ok(
        "kubectl",
        &["get", "events.events.k8s.io", "-n", &ns, "-o", "json"],
        None,
    );
    assert!(
        events.contains("ManualRollbackWarning") && events.contains("web-config changed"),
        "a Warning Event"
    );
    fx.cleanup().await;
}

/// One request at a time: while the controller has not answered a request, a second one is
/// refused with who sent the first, never written over it; withdrawn, the slot is free again.
/// No controller runs here, so the first request stays unanswered.
#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_request_the_controller_has_not_answered_is_never_replaced_unseen() {
    let fx = Fixture::new("ctl-pending", &Scenario::default()).await;
    let ns = fx.ns.name.clone();
    let first = rollguard(&["pause", "web", "-n", &ns, "--no-wait"]);
    assert!(first.ok, "{}{}", first.stdout, first.stderr);
    let second = rollguard(&["abort", "web", "-n", &ns, "--reason", "pager", "--no-wait"]);
    assert!(!second.ok, "{}{}", second.stdout, second.stderr);
    assert!(
        second
            .stderr
            .contains("still has a request the controller has not answered: pause by"),
        "{}",
        second.stderr
    );
    let ro = fx.rollouts.get("web").await.expect("web");
    let text = ro
        .metadata
        .annotations
        .and_then(|a| a.get("rollguard.dev/request").cloned())
        .unwrap_or_default();
    assert!(
        text.contains("\"pause\""),
        "the first request stays: {text}"
    );
    run_ok(
        "kubectl",
        &[
            "annotate",
            "rollout",
            "web",
            "-n",
            &ns,
            "rollguard.dev/request-",
        ],
        None,
    );
    let third = rollguard(&["abort", "web", "-n", &ns, "--reason", "pager", "--no-wait"]);
    assert!(third.ok, "{}{}", third.stdout, third.stderr);
    fx.cleanup().await;
}

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_redeploy_runs_the_earlier_image_with_todays_env_as_a_release_of_its_own() {
    let sc = Scenario {
        replicas: Some(2),
        ready_delay: Some("1s"),
        ..Scenario::default()
    };
    let fx = Fixture::new("redeploy", &sc).await;
    let _controller = fx.controller();
    fx.initialized().await;
    fx.promoted(GOOD_B, 2).await;
    let ns = fx.ns.name.clone();

    // The serving release onto its own configuration changes nothing: refused by the CLI.
    let r = rollguard(&["redeploy", "web", "-n", &ns, "--to", "bbbbb"]);
    assert!(
        !r.ok && r.stderr.contains("serving"),
        "{}{}",
        r.stdout,
        r.stderr
    );

    let r = rollguard(&[
        "redeploy",
        "web",
        "-n",
        &ns,
        "--to",
        "aaaaa",
        "--reason",
        "1.6 leaks; keep today's settings",
    ]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    println!("{}", r.stdout);
    let made = rollguard::redeploy::release_name("web-aaaaaaaaaa", "web-bbbbbbbbbb");
    for expected in [
        "redeploy of",
        "what differs between aaaaa's snapshot and today's template:",
        r#"container web: env RELEASE "aaaaa" → today "bbbbb""#,
        "chosen: today's configuration",
        "redeploy web web-bbbbbbbbbb → web-aaaaaaaaaa's images on web-bbbbbbbbbb's configuration",
        "with today's env, resources, probes and ports: no build needed",
        &format!("all 2 replicas of {made} ready"),
        "redeploy complete in",
    ] {
        assert!(r.stdout.contains(expected), "{expected:?} in\n{}", r.stdout);
    }
    assert_eq!(
        r.stdout
            .lines()
            .filter(|l| l.ends_with(": ready ✓"))
            .count(),
        2,
        "{}",
        r.stdout
    );

    // The earlier image, today's environment.
    let (image, env) = serving(&fx).await;
    assert!(image.ends_with(GOOD_A), "{image}");
    assert_eq!(env, "bbbbb", "today's env is kept");
    let s = fx.status().await;
    assert_eq!(s.phase, Some(RolloutPhase::RolledBack));
    assert_eq!(
        s.stable.as_ref().map(|r| r.release.as_str()),
        Some(made.as_str())
    );
    let release = fx
        .releases
        .get(&made)
        .await
        .expect("the redeploy's Release");
    let redeploy = release.spec.redeploy.clone().expect("marked a redeploy");
    assert_eq!(
        (redeploy.images_of.as_str(), redeploy.config_of.as_str()),
        ("web-aaaaaaaaaa", "web-bbbbbbbbbb")
    );
    assert_eq!(release.spec.deployed_by.as_deref(), Some("admin"));
    assert_eq!(
        release.status.and_then(|s| s.phase),
        Some(ReleasePhase::Stable)
    );
    assert_eq!(
        fx.release_phase(GOOD_B).await,
        Some(ReleasePhase::Superseded)
    );
    let a = fx.release(GOOD_A).await.status.expect("status");
    assert!(
        a.history
            .iter()
            .any(|h| h.action == "redeploy-images-of" && h.by == "admin"),
        "{:?}",
        a.history
    );

    // The history lists it as its own row, current, made of A's images.
    let h = rollguard(&["history", "web", "-n", &ns, "-o", "json"]);
    assert!(h.ok, "{}", h.stderr);
    let rows: serde_json::Value = serde_json::from_str(&h.stdout).expect("json");
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["release"] == made.as_str()))
        .unwrap_or_else(|| panic!("{made} in {rows}"));
    assert_eq!(row["standing"], "Current");
    assert_eq!(row["redeployOf"], "web-aaaaaaaaaa");
    // A version names the release first made of it, not its redeploy.
    let r = rollguard(&["rollback", "web", "-n", &ns, "--to", "bbbbb", "--no-wait"]);
    assert!(r.ok, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("to web-bbbbbbbbbb"), "{}", r.stdout);
    // The target declares B again once it serves: Stable.
    fx.wait_phase(RolloutPhase::Stable, Some(GOOD_B), Duration::from_secs(60))
        .await;
    fx.cleanup().await;
}
