//! Two replicas: a killed leader, a frozen one, and SIGTERM handing the Lease over.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::fixture::*;
use kube::api::ListParams;
use kube::{Api, Client};
use rollguard::api::rollout::{RolloutPhase, RolloutStatus};
use serde_json::json;

/// The holder of a Lease in the controllers' namespace.
pub(crate) async fn lease_holder(client: &Client, name: &str) -> Option<String> {
    Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), "default")
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
}

/// Which of two controllers holds the Lease (identities end with the process id): returns
/// (leader, standby).
pub(crate) async fn leader_of(
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
pub(crate) async fn holds_lease(client: &Client, lease: &str, id: u32, since: Instant) -> Duration {
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
pub(crate) async fn two_replicas(
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
pub(crate) fn failover_scenario() -> Scenario {
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
pub(crate) fn since_canary(s: &RolloutStatus) -> Vec<String> {
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
