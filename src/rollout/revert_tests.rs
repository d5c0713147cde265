use crate::api::release::Redeploy;
use crate::rollout::fixtures::*;

const OLDER: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn request(to: &str, unstable: Option<&str>) -> Request {
    Request {
        id: "rollback-1".into(),
        action: RequestAction::Rollback,
        by: "alice@example.com".into(),
        reason: Some("checkout errors".into()),
        to: Some(release_name("c", to)),
        unstable: unstable.map(str::to_owned),
        warnings: vec!["ConfigMap c-config changed since c-0000000000 was released".into()],
    }
}

/// Stable on OLD, target on OLD; OLDER is Superseded.
fn obs(now: i64, req: Option<Request>) -> Observed {
    let mut o = observed(OLD, now);
    o.releases.push(release(OLDER, ReleasePhase::Superseded));
    o.request = req.map(Ok);
    o
}

fn run(status: &RolloutStatus, o: &Observed) -> Plan {
    decide("c", &spec(), status, o)
}

fn log(p: &Plan) -> Vec<String> {
    p.status
        .manual_rollback
        .as_ref()
        .map(|m| m.log.iter().map(|l| l.text.clone()).collect())
        .unwrap_or_default()
}

#[test]
fn a_rollback_by_hand_goes_step_by_step_and_supersedes_rather_than_condemns() {
    let p = run(&stable_status(), &obs(1000, Some(request(OLDER, None))));
    assert_eq!(p.status.phase, Some(RolloutPhase::Reverting));
    // Started and, in the same pass, the withdrawal (weights 0; nothing was running).
    let mr = p.status.manual_rollback.clone().expect("recorded");
    assert_eq!(mr.step, RevertStep::Restore);
    assert!(p.actions.contains(&Action::SetWeights {
        canary: 0,
        baseline: 0
    }));
    assert_eq!(mr.by, "alice@example.com");
    assert_eq!(mr.from.as_ref().map(|r| r.digest.as_str()), Some(OLD));
    assert!(log(&p)[0].contains("requested by alice@example.com: checkout errors"));
    assert!(
        log(&p)
            .iter()
            .any(|l| l == "warning: ConfigMap c-config changed since c-0000000000 was released"),
        "{:?}",
        log(&p)
    );
    assert!(
        p.notes
            .iter()
            .any(|n| n.warning && n.reason == Reason::ManualRollbackWarning)
    );
    assert!(
        p.actions
            .iter()
            .any(|a| matches!(a, Action::ReleaseHistory { release, entry }
            if *release == release_name("c", OLDER) && entry.action == "rollback-to")),
        "{:?}",
        p.actions
    );
    let p = run(&p.status, &obs(1001, None));
    assert!(p.actions.contains(&Action::ApplyArm {
        arm: Arm::Stable,
        release: release_name("c", OLDER),
        replicas: 4,
    }));
    assert_eq!(
        p.status.manual_rollback.as_ref().map(|m| m.step),
        Some(RevertStep::Ready)
    );

    // Two of four ready, then all four.
    let mut o = obs(1005, None);
    o.stable = Some(Workload {
        ready: 4,
        updated_ready: 2,
        rolled_out: false,
        ..workload(&release_name("c", OLDER), OLDER, 4)
    });
    let p = run(&p.status, &o);
    assert_eq!(p.status.phase, Some(RolloutPhase::Reverting));
    assert!(
        log(&p)
            .last()
            .is_some_and(|l| l.contains("2/4 replicas of"))
    );
    let mut o = obs(1020, None);
    o.stable = Some(workload(&release_name("c", OLDER), OLDER, 4));
    let p = run(&p.status, &o);
    let p = run(&p.status, &o);
    assert_eq!(p.status.phase, Some(RolloutPhase::RolledBack));
    assert_eq!(
        p.status.stable.as_ref().map(|r| r.digest.as_str()),
        Some(OLDER)
    );
    assert_eq!(
        p.status.previous_stable.as_ref().map(|r| r.digest.as_str()),
        Some(OLD)
    );
    assert!(p.actions.contains(&Action::ReleasePhase {
        release: release_name("c", OLD),
        phase: ReleasePhase::Superseded,
        verdict: None,
    }));
    assert!(p.actions.contains(&Action::ReleasePhase {
        release: release_name("c", OLDER),
        phase: ReleasePhase::Stable,
        verdict: None,
    }));
    assert!(
        log(&p)
            .last()
            .is_some_and(|l| l.contains("rollback complete in 20 s")),
        "{:?}",
        log(&p)
    );

    // The target still declares OLD: no canary of it starts again.
    let mut o = obs(1030, None);
    o.stable = Some(workload(&release_name("c", OLDER), OLDER, 4));
    let p = run(&p.status, &o);
    assert_eq!(p.status.phase, Some(RolloutPhase::RolledBack));
    assert!(
        p.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("not deployed again")),
        "{:?}",
        p.status.message
    );
    assert!(
        !p.actions.iter().any(|a| matches!(
            a,
            Action::ApplyArm {
                arm: Arm::Canary,
                ..
            }
        )),
        "{:?}",
        p.actions
    );
}

#[test]
fn a_replayed_request_writes_the_same_history_entry() {
    // rollback-<ns in hex> at 1,000 s and 0.5 s.
    let id = format!("rollback-{:x}", 1_000_500_000_000u128);
    assert_eq!(super::request_time(&id), Some(1000));
    let entries = |now: i64| {
        let req = Request {
            id: id.clone(),
            ..request(OLDER, None)
        };
        run(&stable_status(), &obs(now, Some(req)))
            .actions
            .into_iter()
            .filter(|a| matches!(a, Action::ReleaseHistory { .. }))
            .collect::<Vec<_>>()
    };
    assert_eq!(entries(1003), entries(1010));
    assert!(super::request_time("rollback-zz").is_none());
}

#[test]
fn unstable_if_asked_with_the_reason() {
    let mut status = stable_status();
    let mut o = obs(1000, Some(request(OLDER, Some("corrupts carts"))));
    for _ in 0..5 {
        let p = run(&status, &o);
        status = p.status;
        o = obs(1000, None);
        o.stable = Some(workload(&release_name("c", OLDER), OLDER, 4));
        if status.phase == Some(RolloutPhase::RolledBack) {
            assert!(p.actions.iter().any(|a| matches!(a, Action::ReleasePhase {
                release, phase: ReleasePhase::Unstable, verdict: Some(v) }
                if *release == release_name("c", OLD) && v.reason.contains("corrupts carts"))));
            return;
        }
    }
    panic!("not done: {status:?}");
}

#[test]
fn refusals_say_why_and_change_nothing() {
    let cases = [
        (request(OLD, None), "already the release serving"),
        (
            Request {
                to: Some("c-nosuchrel".into()),
                ..request(OLD, None)
            },
            "no Release c-nosuchrel",
        ),
    ];
    for (req, why) in cases {
        let p = run(&stable_status(), &obs(1000, Some(req)));
        assert_eq!(p.status.phase, Some(RolloutPhase::Stable));
        let mr = p.status.manual_rollback.expect("recorded");
        assert_eq!(mr.step, RevertStep::Refused);
        assert!(mr.log[0].text.contains(why), "{:?}", mr.log);
        assert!(
            p.actions
                .iter()
                .all(|a| !matches!(a, Action::ApplyArm { .. }))
        );
    }
    // An Unstable target needs an override first.
    let mut o = obs(1000, Some(request(OLDER, None)));
    o.releases[1].phase = Some(ReleasePhase::Unstable);
    let p = run(&stable_status(), &o);
    let mr = p.status.manual_rollback.expect("recorded");
    assert!(mr.log[0].text.contains("--override-reason"), "{:?}", mr.log);
    o.releases[1].overridden = true;
    let p = run(&stable_status(), &o);
    assert_eq!(p.status.phase, Some(RolloutPhase::Reverting));
}

#[test]
fn a_running_canary_is_withdrawn_first() {
    let mut status = stable_status();
    status.phase = Some(RolloutPhase::Progressing);
    status.canary = Some(ReleaseRef {
        release: release_name("c", NEW),
        digest: NEW.into(),
        short_digest: short_digest(NEW),
    });
    status.canary_weight = Some(10);
    let mut o = obs(1000, Some(request(OLDER, None)));
    o.releases.push(release(NEW, ReleasePhase::Progressing));
    o.canary = Some(workload(&release_name("c", NEW), NEW, 1));
    let p = run(&status, &o);
    assert_eq!(p.status.phase, Some(RolloutPhase::Reverting));
    assert!(log(&p).iter().any(|l| l.contains("withdrawn first")));
    assert!(p.actions.contains(&Action::SetWeights {
        canary: 0,
        baseline: 0
    }));
    assert!(p.actions.contains(&Action::ScaleArm {
        arm: Arm::Canary,
        replicas: 0
    }));
    assert_eq!(p.status.canary, None);
    assert!(
        log(&p)
            .last()
            .is_some_and(|l| l.contains("weight 0, verified"))
    );
}

fn redeploy(to: &str) -> Request {
    Request {
        id: "redeploy-1".into(),
        action: RequestAction::Redeploy,
        warnings: Vec::new(),
        ..request(to, None)
    }
}

#[test]
fn a_redeploy_is_a_release_of_its_own_made_of_the_earlier_images_and_todays_template() {
    let made = crate::redeploy::release_name(&release_name("c", OLDER), &release_name("c", OLD));
    let p = run(&stable_status(), &obs(1000, Some(redeploy(OLDER))));
    assert_eq!(p.status.phase, Some(RolloutPhase::Reverting));
    assert_eq!(
        p.actions.first(),
        Some(&Action::CreateRedeploy {
            name: made.clone(),
            redeploy: Redeploy {
                images_of: release_name("c", OLDER),
                config_of: release_name("c", OLD),
            },
            by: "alice@example.com".into(),
        }),
        "the Release is made before anything records it: {:?}",
        p.actions
    );
    let mr = p.status.manual_rollback.clone().expect("recorded");
    assert_eq!(mr.word(), "redeploy");
    let to = mr.to.clone().expect("to");
    assert_eq!(
        (to.release.as_str(), to.digest.as_str()),
        (made.as_str(), OLDER)
    );
    assert_eq!(mr.from.as_ref().map(|r| r.digest.as_str()), Some(OLD));
    let lines = log(&p);
    assert!(
        lines[0].starts_with(&format!(
            "redeploy c c-{} → c-{}'s images on c-{}'s configuration, as {made} requested by alice@example.com",
            &OLD[7..17],
            &OLDER[7..17],
            &OLD[7..17]
        )),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("with today's env, resources, probes and ports"),
        "{lines:?}"
    );
    let entries: Vec<(String, String)> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::ReleaseHistory { release, entry } => {
                Some((release.clone(), entry.action.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        entries,
        [
            (made.clone(), "redeploy-to".to_owned()),
            (release_name("c", OLDER), "redeploy-images-of".to_owned()),
            (release_name("c", OLD), "redeploy-from".to_owned()),
        ]
    );

    // The write that made it was lost: made again before the arm is applied.
    let p2 = run(&p.status, &obs(1001, None));
    assert!(
        matches!(p2.actions.first(), Some(Action::CreateRedeploy { name, .. }) if *name == made)
    );
    // Made: applied, then ready, then recorded through Progressing to Stable.
    let mut o = obs(1001, None);
    o.releases.push(ReleaseView {
        name: made.clone(),
        phase: Some(ReleasePhase::Progressing),
        ..release(OLDER, ReleasePhase::Progressing)
    });
    let p = run(&p.status, &o);
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a, Action::CreateRedeploy { .. }))
    );
    assert!(p.actions.contains(&Action::ApplyArm {
        arm: Arm::Stable,
        release: made.clone(),
        replicas: 4,
    }));
    o.now = 1012;
    o.stable = Some(workload(&made, OLDER, 4));
    let p = run(&p.status, &o);
    let p = run(&p.status, &o);
    assert_eq!(p.status.phase, Some(RolloutPhase::RolledBack));
    assert_eq!(
        p.status.stable.as_ref().map(|r| r.release.as_str()),
        Some(made.as_str())
    );
    assert!(p.actions.contains(&Action::ReleasePhase {
        release: made.clone(),
        phase: ReleasePhase::Stable,
        verdict: None,
    }));
    assert!(p.actions.contains(&Action::ReleasePhase {
        release: release_name("c", OLD),
        phase: ReleasePhase::Superseded,
        verdict: None,
    }));
    assert!(
        log(&p)
            .last()
            .is_some_and(|l| l.contains("redeploy complete in 12 s")),
        "{:?}",
        log(&p)
    );
    assert!(
        p.status
            .message
            .as_deref()
            .is_some_and(|m| m.starts_with("redeployed by hand to")),
        "{:?}",
        p.status.message
    );
}

#[test]
fn a_redeploy_release_made_as_a_candidate_moves_through_progressing() {
    let made = crate::redeploy::release_name(&release_name("c", OLDER), &release_name("c", OLD));
    let p = run(&stable_status(), &obs(1000, Some(redeploy(OLDER))));
    let mut o = obs(1001, None);
    o.releases.push(ReleaseView {
        name: made.clone(),
        ..release(OLDER, ReleasePhase::Candidate)
    });
    o.stable = Some(workload(&made, OLDER, 4));
    let mut status = p.status;
    for _ in 0..4 {
        status = run(&status, &o).status;
        if status
            .manual_rollback
            .as_ref()
            .is_some_and(|m| m.step == RevertStep::Record)
        {
            break;
        }
    }
    let p = run(&status, &o);
    let phases: Vec<ReleasePhase> = p
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::ReleasePhase { release, phase, .. } if *release == made => Some(*phase),
            _ => None,
        })
        .collect();
    assert_eq!(phases, [ReleasePhase::Progressing, ReleasePhase::Stable]);
}

#[test]
fn a_redeploy_of_the_serving_release_or_of_an_unstable_one_is_refused() {
    let mut own = redeploy(OLD);
    own.to = Some(release_name("c", OLD));
    let mut o = obs(1000, Some(own));
    o.releases.push(release(NEW, ReleasePhase::Progressing));
    let p = run(&stable_status(), &o);
    let mr = p.status.manual_rollback.clone().expect("recorded");
    assert_eq!(mr.step, RevertStep::Refused);
    assert!(log(&p)[0].starts_with("redeploy refused:"), "{:?}", log(&p));
    assert!(log(&p)[0].contains("changes nothing"), "{:?}", log(&p));
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a, Action::CreateRedeploy { .. }))
    );

    let mut o = obs(1000, Some(redeploy(OLDER)));
    o.releases[1].phase = Some(ReleasePhase::Unstable);
    let p = run(&stable_status(), &o);
    assert!(
        log(&p)[0].contains("give --override-reason"),
        "{:?}",
        log(&p)
    );
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a, Action::CreateRedeploy { .. }))
    );
}

#[test]
fn the_log_names_each_pod_once_when_it_became_ready() {
    let p = run(&stable_status(), &obs(1000, Some(request(OLDER, None))));
    let p = run(&p.status, &obs(1001, None));
    let pod = |name: &str, release: &str, ready_at: Option<i64>| PodView {
        name: name.into(),
        release: Some(release.into()),
        ready_at,
    };
    let older = release_name("c", OLDER);
    let mut o = obs(1006, None);
    o.stable = Some(Workload {
        ready: 4,
        updated_ready: 2,
        rolled_out: false,
        ..workload(&older, OLDER, 4)
    });
    o.stable_pods = Some(vec![
        pod("c-stable-old-1", &release_name("c", OLD), Some(900)),
        pod("c-stable-new-b", &older, Some(1005)),
        pod("c-stable-new-a", &older, Some(1003)),
        pod("c-stable-new-c", &older, None),
    ]);
    let p = run(&p.status, &o);
    let mr = p.status.manual_rollback.clone().expect("recorded");
    let pods: Vec<(&str, &str)> = mr
        .log
        .iter()
        .filter(|l| l.text.ends_with("ready ✓"))
        .map(|l| (l.at.as_str(), l.text.as_str()))
        .collect();
    assert_eq!(
        pods,
        [
            ("1970-01-01T00:16:43Z", "c-stable-new-a: ready ✓"),
            ("1970-01-01T00:16:45Z", "c-stable-new-b: ready ✓"),
        ],
        "the new template's ready pods, in the order they became ready, at that time"
    );
    assert!(
        !log(&p).iter().any(|l| l.contains("2/4 replicas")),
        "named, not counted"
    );
    // Seen again: not logged twice; the third and the fourth when they are ready.
    let mut o2 = o.clone();
    o2.now = 1010;
    o2.stable = Some(workload(&older, OLDER, 4));
    o2.stable_pods = Some(vec![
        pod("c-stable-new-a", &older, Some(1003)),
        pod("c-stable-new-b", &older, Some(1005)),
        pod("c-stable-new-c", &older, Some(1008)),
        pod("c-stable-new-d", &older, Some(1009)),
    ]);
    let p = run(&p.status, &o2);
    let ready: Vec<String> = log(&p)
        .into_iter()
        .filter(|l| l.ends_with("ready ✓"))
        .collect();
    assert_eq!(ready.len(), 4, "{ready:?}");
    assert!(
        log(&p)
            .iter()
            .any(|l| l == &format!("all 4 replicas of {older} ready"))
    );

    // Pods that cannot be read: counted from the Deployment instead.
    let p = run(&stable_status(), &obs(1000, Some(request(OLDER, None))));
    let p = run(&p.status, &obs(1001, None));
    o.stable_pods = None;
    let p = run(&p.status, &o);
    assert!(
        log(&p).iter().any(|l| l.contains("2/4 replicas")),
        "{:?}",
        log(&p)
    );
}

#[test]
fn a_redeploy_whose_name_would_be_too_long_is_refused() {
    let long = format!("c-{}", "a".repeat(250));
    let mut o = obs(1000, None);
    o.releases.push(ReleaseView {
        name: long.clone(),
        ..release(OLDER, ReleasePhase::Superseded)
    });
    let mut req = redeploy(OLDER);
    req.to = Some(long);
    o.request = Some(Ok(req));
    let p = run(&stable_status(), &o);
    assert!(
        log(&p)[0].contains("longer than a Release name may be"),
        "{:?}",
        log(&p)
    );
    assert!(
        !p.actions
            .iter()
            .any(|a| matches!(a, Action::CreateRedeploy { .. }))
    );
}
