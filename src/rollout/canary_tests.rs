//! `canary.rs`'s tests: steps and weights, holds, promotion policies and the forecast notes.

use crate::rollout::fixtures::*;

#[test]
fn a_canary_mid_step_sleeps_until_its_next_measurement_or_the_steps_end() {
    // Step 0 lasts 30 s from t=1000; now is t=1005.
    let (s, mut o) = progressing();
    let mut due_in = |d: Option<u64>| {
        o.analysis = Some(AnalysisView {
            next_due_in: d,
            ..pass()
        });
        decide("c", &spec(), &s, &o).requeue_secs
    };
    assert_eq!(due_in(Some(3)), 3, "the next measurement first");
    assert_eq!(due_in(Some(0)), 1, "at least a second");
    assert_eq!(due_in(Some(60)), 25, "the step ends first");
    assert_eq!(due_in(None), 25, "no analysis: the step's end");
    let (s, mut o) = progressing();
    o.now = 1031;
    o.analysis = Some(AnalysisView {
        decision: Decision::Running,
        next_due_in: Some(4),
        ..pass()
    });
    assert_eq!(
        decide("c", &spec(), &s, &o).requeue_secs,
        4,
        "past the step's end without enough evidence: the next measurement"
    );
}

#[test]
fn a_new_digest_starts_a_canary_then_weights_it_after_its_pods_are_ready() {
    let plan = decide("c", &spec(), &stable_status(), &observed(NEW, 100));
    let r = release_name("c", NEW);
    assert!(plan.actions.contains(&Action::CreateRelease {
        name: r.clone(),
        phase: ReleasePhase::Progressing
    }));
    assert!(plan.actions.contains(&Action::ApplyArm {
        arm: Arm::Canary,
        release: r.clone(),
        replicas: 1
    }));
    assert_eq!(plan.status.phase, Some(RolloutPhase::Progressing));
    assert_eq!(
        plan.status.canary.as_ref().map(|c| c.digest.as_str()),
        Some(NEW)
    );
    // Not ready yet: no weight.
    let mut o = observed(NEW, 101);
    o.canary = Some(Workload {
        ready: 0,
        ..workload(&r, NEW, 1)
    });
    let waiting = decide("c", &spec(), &plan.status, &o);
    assert!(
        !waiting
            .actions
            .iter()
            .any(|a| matches!(a, Action::SetWeights { .. })),
        "{:?}",
        waiting.actions
    );
    // Ready: weight 10 written and verified, the step clock starts.
    o.canary = Some(workload(&r, NEW, 1));
    let weighted = decide("c", &spec(), &plan.status, &o);
    assert_eq!(
        weighted.actions,
        vec![Action::SetWeights {
            canary: 10,
            baseline: 0
        }]
    );
    assert_eq!(weighted.status.canary_weight, Some(10));
    assert_eq!(weighted.status.step_started_at, Some(format_time(101)));
}

#[test]
fn a_canary_whose_analysis_cannot_start_is_held_at_weight_zero_until_it_can() {
    // Each of what the review found: a missing template, a refused argument, a bad query.
    for why in [
        "template golden: analysistemplates.rollguard.dev \"golden\" not found",
        "template golden: argument \"port\" = \"1 or vector(1)\" is not a valid integer",
        "template golden: metric error-rate: the query does not parse as PromQL: unclosed",
    ] {
        let (mut s, mut o) = progressing();
        s.canary_weight = Some(0);
        s.step_started_at = None;
        o.analysis_invalid = Some(why.into());
        let sp = analysed(spec());
        let plan = decide("c", &sp, &s, &o);
        assert!(
            !plan
                .actions
                .iter()
                .any(|a| matches!(a, Action::SetWeights { .. })),
            "{why}: {:?}",
            plan.actions
        );
        assert_eq!(plan.status.canary_weight, Some(0));
        assert_eq!(plan.status.current_step, Some(0));
        assert_eq!(plan.status.phase, Some(RolloutPhase::Paused));
        assert!(plan.status.message.as_deref().unwrap_or("").contains(why));
        assert_eq!(held(&plan).map(|c| c.message.as_str()), Some(why));
        let notes: Vec<_> = plan.notes.iter().map(|n| n.reason).collect();
        assert_eq!(notes, [Reason::AnalysisInvalid]);
        // Still broken on the next reconcile: held, with no second Event.
        let again = decide("c", &sp, &plan.status, &o);
        assert!(again.notes.is_empty() && held(&again).is_some());
        // Fixed: the first weight is set and the condition clears.
        o.analysis_invalid = None;
        let fixed = decide("c", &sp, &again.status, &o);
        assert!(fixed.actions.contains(&Action::SetWeights {
            canary: 10,
            baseline: 0
        }));
        assert!(held(&fixed).is_none(), "{:?}", fixed.status.conditions);
    }
}

#[test]
fn a_withdrawn_held_canary_leaves_no_stale_condition() {
    let (mut s, mut o) = progressing();
    s.canary_weight = Some(0);
    s.step_started_at = None;
    o.analysis_invalid = Some("template golden: not found".into());
    let held_status = decide("c", &analysed(spec()), &s, &o).status;
    assert!(
        held_status
            .conditions
            .iter()
            .any(|c| c.type_ == "AnalysisInvalid" && c.status == "True")
    );
    // The target goes back to the stable digest: the canary is withdrawn, then idle.
    o.target = Some(TargetView {
        replicas: 0,
        artifact: Ok(artifact(OLD)),
        template: None,
    });
    let mut status = held_status;
    for _ in 0..3 {
        status = decide("c", &analysed(spec()), &status, &o).status;
    }
    assert_ne!(
        status.phase,
        Some(RolloutPhase::Paused),
        "{:?}",
        status.message
    );
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == "AnalysisInvalid")
        .expect("condition");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "NoCanary")
    );
}

#[test]
fn an_analysis_that_breaks_mid_run_holds_the_step_reached() {
    let (s, mut o) = progressing();
    o.now = 1031;
    o.analysis_invalid = Some("template golden: not found".into());
    let plan = decide("c", &analysed(spec()), &s, &o);
    assert_eq!(plan.status.current_step, Some(0));
    assert_eq!(plan.status.canary_weight, Some(10));
    assert_eq!(plan.status.phase, Some(RolloutPhase::Paused));
    assert!(held(&plan).is_some());
}

#[test]
fn with_analysis_no_verdict_is_never_a_pass() {
    let (s, mut o) = progressing();
    o.now = 1031;
    o.analysis = None;
    let plan = decide("c", &analysed(spec()), &s, &o);
    assert_eq!(plan.status.current_step, Some(0), "no view is not a Pass");
    assert!(
        plan.status
            .message
            .as_deref()
            .unwrap_or("")
            .contains("evidence")
    );
}

#[test]
fn a_rollout_without_analysis_must_say_so() {
    let (s, mut o) = progressing();
    o.now = 1031;
    let mut sp = spec();
    sp.without_analysis = false;
    let plan = decide("c", &sp, &s, &o);
    assert_eq!(plan.status.current_step, Some(0));
    assert!(held(&plan).is_some_and(|c| c.message.contains("withoutAnalysis")));
    sp.without_analysis = true;
    assert_eq!(decide("c", &sp, &s, &o).status.current_step, Some(1));
}

#[test]
fn a_timed_pause_is_left_only_on_a_pass_and_a_fail_rolls_back() {
    let (mut s, mut o) = progressing();
    let mut sp = analysed(spec());
    sp.steps.insert(
        1,
        Step {
            set_weight: None,
            duration: None,
            pause: Some(crate::api::rollout::Pause {
                duration: Some(Duration::new("10s")),
            }),
            promotion: None,
        },
    );
    s.current_step = Some(1);
    s.step_started_at = Some(format_time(1000));
    o.now = 1011;
    o.analysis = None;
    assert_eq!(decide("c", &sp, &s, &o).status.current_step, Some(1));
    o.analysis = Some(pass());
    assert_eq!(decide("c", &sp, &s, &o).status.current_step, Some(2));
    o.analysis = Some(fail(false));
    assert_eq!(
        decide("c", &sp, &s, &o).status.phase,
        Some(RolloutPhase::RollingBack)
    );
}

#[test]
fn no_fail_leaves_a_step_at_its_end_without_a_pass_once_min_requests_are_served() {
    let (s, mut o) = progressing();
    let mut sp = analysed(spec());
    sp.promotion = Promotion::NoFail;
    o.now = 1031;
    o.analysis = Some(running(false, Some(400)));
    let plan = decide("c", &sp, &s, &o);
    assert_eq!(plan.status.current_step, Some(0), "minRequests not served");
    assert!(
        plan.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("minRequests (promotion noFail)")),
        "{:?}",
        plan.status.message
    );
    o.analysis = Some(running(true, Some(400)));
    let plan = decide("c", &sp, &s, &o);
    assert_eq!(
        plan.status.current_step,
        Some(1),
        "time up, no Fail, served"
    );
    let left = plan
        .notes
        .iter()
        .find(|n| n.reason == Reason::LeftWithoutPass)
        .expect("a note says the step was left without a Pass");
    assert!(
        left.message.contains("needs about 400 s"),
        "{}",
        left.message
    );
    // Before its time is up, noFail waits like requirePass.
    o.now = 1020;
    assert_eq!(decide("c", &sp, &s, &o).status.current_step, Some(0));
    // A metric that failed once in this run keeps the step, even if it reads Running now.
    o.now = 1031;
    o.analysis = Some(AnalysisView {
        first_fail_at: Some(1010),
        ..running(true, None)
    });
    assert_eq!(decide("c", &sp, &s, &o).status.current_step, Some(0));
}

#[test]
fn a_steps_own_promotion_overrides_the_rollouts() {
    let (s, mut o) = progressing();
    let mut sp = analysed(spec());
    sp.steps[0].promotion = Some(Promotion::NoFail);
    o.now = 1031;
    o.analysis = Some(running(true, Some(400)));
    assert_eq!(decide("c", &sp, &s, &o).status.current_step, Some(1));
    sp.promotion = Promotion::NoFail;
    sp.steps[0].promotion = Some(Promotion::RequirePass);
    let plan = decide("c", &sp, &s, &o);
    assert_eq!(plan.status.current_step, Some(0));
    assert!(
        plan.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("waiting for the analysis's Pass: needs about 400 s")),
        "{:?}",
        plan.status.message
    );
}

#[test]
fn the_first_forecast_of_a_step_is_an_event_and_a_warning_when_the_step_is_far_too_short() {
    // A 30 s step; at 10 s the analysis needs 400 s more.
    let (s, mut o) = progressing();
    let sp = analysed(spec());
    o.now = 1010;
    o.analysis = Some(running(false, Some(400)));
    let plan = decide("c", &sp, &s, &o);
    let notes: Vec<&Note> = plan
        .notes
        .iter()
        .filter(|n| n.reason == Reason::PassForecast)
        .collect();
    assert_eq!(notes.len(), 1, "{:?}", plan.notes);
    assert!(notes[0].warning);
    assert!(
        notes[0].message.contains("lasts 30s")
            && notes[0].message.contains("needs about 400 s")
            && notes[0].message.contains("noFail"),
        "{}",
        notes[0].message
    );
    assert!(
        plan.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("10s of 30s; the analysis needs about 400 s")),
        "{:?}",
        plan.status.message
    );
    // Once per step: the next pass finds it in the timeline.
    o.now = 1012;
    let again = decide("c", &sp, &plan.status, &o);
    assert!(again.notes.iter().all(|n| n.reason != Reason::PassForecast));
    // A forecast within the step's time is a plain note, no warning.
    let (s, mut o) = progressing();
    o.now = 1010;
    o.analysis = Some(running(false, Some(15)));
    let plan = decide("c", &sp, &s, &o);
    let note = plan.notes.iter().find(|n| n.reason == Reason::PassForecast);
    assert!(note.is_some_and(|n| !n.warning), "{:?}", plan.notes);
}

#[test]
fn a_step_advances_only_after_its_duration_and_a_pass() {
    let (s, mut o) = progressing();
    let mut sp = spec();
    sp.analysis = Some(crate::api::rollout::RolloutAnalysis {
        templates: vec![],
        args: vec![],
    });
    sp.without_analysis = false;
    o.analysis = Some(pass());
    o.now = 1020;
    assert_eq!(
        decide("c", &sp, &s, &o).status.current_step,
        Some(0),
        "20 s of 30 s"
    );
    o.now = 1031;
    o.analysis = Some(running(true, None));
    assert_eq!(
        decide("c", &sp, &s, &o).status.current_step,
        Some(0),
        "not enough evidence"
    );
    o.analysis = Some(pass());
    let plan = decide("c", &sp, &s, &o);
    assert_eq!(plan.status.current_step, Some(1));
    // People count steps from 1: the second of two.
    assert_eq!(plan.status.step.as_deref(), Some("2/2"));
    assert!(
        plan.status
            .message
            .as_deref()
            .is_none_or(|m| !m.contains("step 0")),
        "{:?}",
        plan.status.message
    );
    assert_eq!(plan.status.step_started_at, None);
}

#[test]
fn a_canary_that_never_gets_ready_is_rolled_back_at_the_deadline() {
    let (mut s, mut o) = progressing();
    s.step_started_at = None;
    s.canary_weight = Some(0);
    o.canary = Some(Workload {
        ready: 0,
        ..workload(&release_name("c", NEW), NEW, 1)
    });
    o.now = 990 + 599;
    assert_eq!(
        decide("c", &spec(), &s, &o).status.phase,
        Some(RolloutPhase::Progressing)
    );
    o.now = 990 + 601;
    let plan = decide("c", &spec(), &s, &o);
    assert_eq!(plan.status.phase, Some(RolloutPhase::RollingBack));
    assert!(
        plan.status
            .rollback
            .is_some_and(|r| r.reason.contains("progress deadline"))
    );
}

#[test]
fn a_target_reverted_to_stable_withdraws_the_canary_without_a_verdict() {
    let (s, mut o) = progressing();
    o.target = Some(TargetView {
        replicas: 0,
        artifact: Ok(artifact(OLD)),
        template: None,
    });
    let plan = decide("c", &spec(), &s, &o);
    assert_eq!(plan.status.phase, Some(RolloutPhase::Stable));
    assert_eq!(
        plan.actions[0],
        Action::SetWeights {
            canary: 0,
            baseline: 0
        }
    );
    assert!(plan.actions.contains(&Action::ReleasePhase {
        release: release_name("c", NEW),
        phase: ReleasePhase::Superseded,
        verdict: None
    }));
    assert!(plan.status.canary.is_none());
}
