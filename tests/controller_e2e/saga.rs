//! The rollback saga under SIGKILL: after every step, and between a step's writes and its
//! record.

use std::time::Duration;

use crate::common::*;
use crate::fixture::*;
use rollguard::api::release::ReleasePhase;
use rollguard::api::rollout::RollbackStep;

#[tokio::test]
#[ignore = "needs the local environment (scripts/env up); run by make test"]
async fn a_rollback_survives_sigkill_after_every_saga_step() {
    let fx = Fixture::new("ctl-kill", &Scenario::default()).await;
    let log = fx.log();
    let first = fx.controller();
    fx.initialized().await;
    first.kill();
    let steps = RollbackStep::ORDER;
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
    let steps = RollbackStep::ORDER;
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
