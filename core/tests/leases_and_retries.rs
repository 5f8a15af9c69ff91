//! Time-driven behaviour, with a ManualClock: retry backoff and leases.

mod support;

use serde_json::json;
use tasker_core::{Error, ManualClock, NewTask, StepState, TaskState};

use support::*;

/// One step with a known, jitter-free backoff (1 s, then 2 s, …) and a 1 s lease.
const FLAKY: &str = r#"
namespace: n
name: flaky
version: 1.0.0
steps:
  - name: call
    timeout_ms: 1000
    retry: { max_attempts: 3, backoff_base_ms: 1000, backoff_max_ms: 60000, jitter: false }
  - name: after
    depends_on: [call]
"#;

#[tokio::test]
async fn step_retried_twice_succeeds_on_the_third_attempt() {
    let clock = ManualClock::new();
    for (store, engine) in engines(clock.clone()).await {
        register(&engine, FLAKY).await;
        let task = engine
            .create_task(NewTask::new("n", "flaky"))
            .await
            .unwrap();

        let first = claim_one(&engine, "call").await;
        assert_eq!(first.attempt, 1, "{store}");
        engine
            .fail(first.step_id, 1, retryable("busy 1"))
            .await
            .unwrap();
        let view = engine.task(task).await.unwrap();
        let call = view.step("call").unwrap();
        assert_eq!(call.status, StepState::WaitingForRetry, "{store}");
        assert_eq!(call.error.as_deref(), Some("busy 1"), "{store}");
        assert_eq!(
            call.next_attempt_at,
            Some(engine.now() + chrono::Duration::milliseconds(1000)),
            "{store}"
        );
        assert_eq!(view.status, TaskState::InProgress, "{store}");

        clock.advance(ms(1000));
        let second = claim_one(&engine, "call").await;
        assert_eq!(second.attempt, 2, "{store}");
        engine
            .fail(second.step_id, 2, retryable("busy 2"))
            .await
            .unwrap();

        clock.advance(ms(2000));
        let third = claim_one(&engine, "call").await;
        assert_eq!(third.attempt, 3, "{store}");
        complete(&engine, &third, json!({"ok": true})).await;

        let after = claim_one(&engine, "after").await;
        assert_eq!(after.inputs.to_json(), json!({"call": {"ok": true}}));
        complete(&engine, &after, json!(null)).await;

        let view = engine.task(task).await.unwrap();
        assert_eq!(view.status, TaskState::Complete, "{store}");
        let call = view.step("call").unwrap();
        assert_eq!(call.attempts, 3, "{store}");
        assert_eq!(call.status, StepState::Complete, "{store}");
        assert_eq!(call.result, Some(json!({"ok": true})), "{store}");
        assert_eq!(call.next_attempt_at, None, "{store}");

        let trail = transitions_of(&engine, task, Some("call")).await;
        let steps: Vec<(&str, &str, u32)> = trail
            .iter()
            .map(|t| (t.from.as_deref().unwrap_or(""), t.to.as_str(), t.attempt))
            .collect();
        assert_eq!(
            steps,
            vec![
                ("pending", "in_progress", 1),
                ("in_progress", "error", 1),
                ("error", "waiting_for_retry", 1),
                ("waiting_for_retry", "pending", 1),
                ("pending", "in_progress", 2),
                ("in_progress", "error", 2),
                ("error", "waiting_for_retry", 2),
                ("waiting_for_retry", "pending", 2),
                ("pending", "in_progress", 3),
                ("in_progress", "complete", 3),
            ],
            "{store}"
        );
        assert_eq!(trail[1].reason.as_deref(), Some("busy 1"), "{store}");
        assert_eq!(
            trail[2].reason.as_deref(),
            Some("retry in 1000 ms"),
            "{store}"
        );
        assert_eq!(
            trail[6].reason.as_deref(),
            Some("retry in 2000 ms"),
            "{store}"
        );
    }
}

#[tokio::test]
async fn waiting_step_is_not_claimable_before_its_backoff_elapses() {
    let clock = ManualClock::new();
    for (store, engine) in engines(clock.clone()).await {
        register(&engine, FLAKY).await;
        engine
            .create_task(NewTask::new("n", "flaky"))
            .await
            .unwrap();

        let first = claim_one(&engine, "call").await;
        engine
            .fail(first.step_id, 1, retryable("busy"))
            .await
            .unwrap();
        assert!(claim(&engine, 1).await.is_empty(), "{store}: at once");
        clock.advance(ms(999));
        assert!(claim(&engine, 1).await.is_empty(), "{store}: 1 ms early");
        let status = engine.work_status().await.unwrap();
        assert_eq!((status.ready, status.waiting), (0, 1), "{store}");
        assert_eq!(
            status.next_due,
            Some(engine.now() + chrono::Duration::milliseconds(1)),
            "{store}"
        );
        clock.advance(ms(1));
        assert_eq!(claim_one(&engine, "call").await.attempt, 2, "{store}");

        // The second backoff doubles.
        engine
            .fail(first.step_id, 2, retryable("busy again"))
            .await
            .unwrap();
        clock.advance(ms(1999));
        assert!(claim(&engine, 1).await.is_empty(), "{store}: 1 ms early");
        clock.advance(ms(1));
        assert_eq!(claim_one(&engine, "call").await.attempt, 3, "{store}");
    }
}

#[tokio::test]
async fn handler_retry_after_overrides_the_backoff() {
    let clock = ManualClock::new();
    for (store, engine) in engines(clock.clone()).await {
        register(&engine, FLAKY).await;
        let task = engine
            .create_task(NewTask::new("n", "flaky"))
            .await
            .unwrap();

        let first = claim_one(&engine, "call").await;
        engine
            .fail(first.step_id, 1, retryable_after("rate limited", 5000))
            .await
            .unwrap();
        let step = engine.task(task).await.unwrap();
        assert_eq!(
            step.step("call").unwrap().next_attempt_at,
            Some(engine.now() + chrono::Duration::milliseconds(5000)),
            "{store}"
        );
        clock.advance(ms(1000));
        assert!(
            claim(&engine, 1).await.is_empty(),
            "{store}: the 1 s backoff does not apply"
        );
        clock.advance(ms(3999));
        assert!(claim(&engine, 1).await.is_empty(), "{store}: 1 ms early");
        clock.advance(ms(1));
        assert_eq!(claim_one(&engine, "call").await.attempt, 2, "{store}");

        // A shorter retry_after than the backoff wins too.
        engine
            .fail(first.step_id, 2, retryable_after("briefly busy", 10))
            .await
            .unwrap();
        clock.advance(ms(10));
        assert_eq!(claim_one(&engine, "call").await.attempt, 3, "{store}");
    }
}

#[tokio::test]
async fn expired_lease_is_reclaimed_and_counts_as_an_attempt() {
    let clock = ManualClock::new();
    for (store, engine) in engines(clock.clone()).await {
        register(&engine, FLAKY).await;
        let task = engine
            .create_task(NewTask::new("n", "flaky"))
            .await
            .unwrap();

        let first = claim_one(&engine, "call").await;
        assert_eq!(
            first.lease_expires_at,
            engine.now() + chrono::Duration::milliseconds(1000),
            "{store}"
        );
        let view = engine.task(task).await.unwrap();
        let call = view.step("call").unwrap();
        assert_eq!(call.lease_owner.as_deref(), Some("test-worker"), "{store}");
        assert_eq!(call.lease_expires_at, Some(first.lease_expires_at));

        clock.advance(ms(999));
        assert_eq!(engine.reclaim_expired().await.unwrap(), 0, "{store}");
        clock.advance(ms(1));
        assert!(
            claim(&engine, 1).await.is_empty(),
            "{store}: the claim reclaims, then the step waits for its backoff"
        );
        let call = engine.task(task).await.unwrap().steps[0].clone();
        assert_eq!(call.status, StepState::WaitingForRetry, "{store}");
        assert_eq!(call.lease_owner, None, "{store}");
        assert!(
            call.error
                .as_deref()
                .unwrap_or("")
                .contains("lease expired"),
            "{store}: {:?}",
            call.error
        );

        clock.advance(ms(1000));
        let second = claim_one(&engine, "call").await;
        assert_eq!(second.attempt, 2, "{store}");
        assert_eq!(engine.task(task).await.unwrap().steps[0].attempts, 2);

        let trail = transitions_of(&engine, task, Some("call")).await;
        assert_eq!(trail[1].event, "lease_expired", "{store}");
        assert_eq!(
            (
                trail[1].from.as_deref(),
                trail[1].to.as_str(),
                trail[1].attempt
            ),
            (Some("in_progress"), "error", 1),
            "{store}"
        );
    }
}

#[tokio::test]
async fn late_completion_after_lease_expiry_is_refused() {
    let clock = ManualClock::new();
    for (store, engine) in engines(clock.clone()).await {
        register(&engine, FLAKY).await;
        let task = engine
            .create_task(NewTask::new("n", "flaky"))
            .await
            .unwrap();

        let first = claim_one(&engine, "call").await;
        clock.advance(ms(1000));
        // Expired but not yet reclaimed: the claim is already lost.
        let err = engine
            .complete(first.step_id, 1, json!("too late"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::ClaimLost { attempt: 1, .. }),
            "{store}: {err}"
        );
        assert!(
            matches!(
                engine.heartbeat(first.step_id, 1).await,
                Err(Error::ClaimLost { .. })
            ),
            "{store}: an expired lease cannot be heartbeated back to life"
        );

        assert_eq!(engine.reclaim_expired().await.unwrap(), 1, "{store}");
        clock.advance(ms(1000));
        let second = claim_one(&engine, "call").await;
        assert_eq!(second.attempt, 2, "{store}");

        // The first worker wakes up and reports: refused, whatever it reports.
        let err = engine
            .complete(first.step_id, 1, json!("too late"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::ClaimLost { attempt: 1, .. }),
            "{store}: {err}"
        );
        let err = engine
            .fail(first.step_id, 1, permanent("late failure"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ClaimLost { .. }), "{store}: {err}");

        // The current holder is unaffected.
        complete(&engine, &second, json!("on time")).await;
        let call = engine.task(task).await.unwrap().steps[0].clone();
        assert_eq!(call.status, StepState::Complete, "{store}");
        assert_eq!(call.result, Some(json!("on time")), "{store}");
        assert_eq!(call.attempts, 2, "{store}");
    }
}

#[tokio::test]
async fn heartbeat_extends_the_lease_so_the_step_is_not_reclaimed() {
    let clock = ManualClock::new();
    for (store, engine) in engines(clock.clone()).await {
        register(&engine, FLAKY).await;
        let task = engine
            .create_task(NewTask::new("n", "flaky"))
            .await
            .unwrap();

        let step = claim_one(&engine, "call").await;
        for _ in 0..5 {
            clock.advance(ms(800));
            let expires = engine.heartbeat(step.step_id, 1).await.unwrap();
            assert_eq!(
                expires,
                engine.now() + chrono::Duration::milliseconds(1000),
                "{store}"
            );
        }
        clock.advance(ms(800));
        assert_eq!(engine.reclaim_expired().await.unwrap(), 0, "{store}");
        assert!(claim(&engine, 1).await.is_empty(), "{store}");
        let view = engine.task(task).await.unwrap();
        assert_eq!(view.steps[0].status, StepState::InProgress, "{store}");
        assert_eq!(view.steps[0].attempts, 1, "{store}");

        complete(&engine, &step, json!("slow but alive")).await;
        assert_eq!(
            engine.task(task).await.unwrap().steps[0].status,
            StepState::Complete
        );
    }
}

#[tokio::test]
async fn lease_expiry_on_the_last_attempt_fails_the_step_for_good() {
    let clock = ManualClock::new();
    for (store, engine) in engines(clock.clone()).await {
        register(
            &engine,
            r#"
namespace: n
name: once
version: 1.0.0
steps:
  - name: call
    timeout_ms: 500
    retry: { max_attempts: 1 }
  - name: after
    depends_on: [call]
"#,
        )
        .await;
        let task = engine.create_task(NewTask::new("n", "once")).await.unwrap();
        let step = claim_one(&engine, "call").await;
        clock.advance(ms(501));
        assert_eq!(engine.reclaim_expired().await.unwrap(), 1, "{store}");

        let view = engine.task(task).await.unwrap();
        assert_eq!(view.status, TaskState::Error, "{store}");
        let call = view.step("call").unwrap();
        assert_eq!(
            (call.status, call.attempts),
            (StepState::Error, 1),
            "{store}"
        );
        assert_eq!(view.step("after").unwrap().status, StepState::Skipped);
        assert!(
            matches!(
                engine.complete(step.step_id, 1, json!(1)).await,
                Err(Error::ClaimLost { .. })
            ),
            "{store}"
        );
        assert!(engine.work_status().await.unwrap().is_idle(), "{store}");
    }
}

#[tokio::test]
async fn failure_reported_for_a_step_never_claimed_is_refused() {
    for (store, engine) in engines(ManualClock::new()).await {
        register(&engine, FLAKY).await;
        let task = engine
            .create_task(NewTask::new("n", "flaky"))
            .await
            .unwrap();
        let call = engine.task(task).await.unwrap().steps[0].step_id;
        assert!(
            matches!(
                engine.complete(call, 1, json!(1)).await,
                Err(Error::ClaimLost { .. })
            ),
            "{store}"
        );
        assert!(
            matches!(
                engine.fail(call, 0, retryable("x")).await,
                Err(Error::ClaimLost { .. })
            ),
            "{store}"
        );
        // A claimed step reported with the wrong attempt number is refused too.
        let step = claim_one(&engine, "call").await;
        assert!(
            matches!(
                engine.complete(step.step_id, 2, json!(1)).await,
                Err(Error::ClaimLost { attempt: 2, .. })
            ),
            "{store}"
        );
        complete(&engine, &step, json!(1)).await;
        assert!(
            matches!(
                engine.complete(step.step_id, 1, json!(2)).await,
                Err(Error::ClaimLost { .. })
            ),
            "{store}: a second completion is refused"
        );
        assert_eq!(
            engine.task(task).await.unwrap().steps[0].result,
            Some(json!(1)),
            "{store}"
        );
    }
}

#[tokio::test]
async fn the_next_claim_hands_out_a_step_whose_lease_expired() {
    let clock = ManualClock::new();
    for (store, engine) in engines(clock.clone()).await {
        register(
            &engine,
            r#"
namespace: n
name: eager
version: 1.0.0
steps:
  - name: call
    timeout_ms: 1000
    retry: { max_attempts: 3, backoff_base_ms: 0, jitter: false }
"#,
        )
        .await;
        let task = engine
            .create_task(NewTask::new("n", "eager"))
            .await
            .unwrap();
        let first = claim_one(&engine, "call").await;
        clock.advance(ms(1000));
        let second = claim_one(&engine, "call").await;
        assert_eq!(second.attempt, 2, "{store}");
        assert_eq!(
            step_path(&engine, task, "call").await,
            path(&[
                ("pending", "in_progress"),
                ("in_progress", "error"),
                ("error", "waiting_for_retry"),
                ("waiting_for_retry", "pending"),
                ("pending", "in_progress"),
            ]),
            "{store}"
        );
        assert!(
            matches!(
                engine.complete(first.step_id, 1, json!(1)).await,
                Err(Error::ClaimLost { .. })
            ),
            "{store}"
        );
        complete(&engine, &second, json!(2)).await;
        assert_eq!(
            engine.task(task).await.unwrap().status,
            TaskState::Complete,
            "{store}"
        );
    }
}
