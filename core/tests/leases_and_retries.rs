//! Time-driven behaviour, with a ManualClock: retry backoff and leases.

mod support;

use serde_json::json;
use tasker_core::{Error, ManualClock, NewTask, StepState, TaskState};

use support::*;

/// One step with a known, jitter-free backoff (1 s, then 2 s, …) and a 1 s lease.
fn flaky() -> Template {
    template("n", "flaky")
        .step(
            step("call")
                .timeout_ms(1000)
                .retry(attempts(3).backoff_ms(1000).backoff_max_ms(60000)),
        )
        .step(step("after").after(&["call"]))
}

per_store! {
    async fn step_retried_twice_succeeds_on_the_third_attempt(store) {
        let clock = ManualClock::new();
        let Some(engine) = engine_with(store, clock.clone(), &[flaky()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("n", "flaky")).await;

        let first = claim_one(&engine, "call").await;
        assert_eq!(first.attempt, 1, "{store}");
        fail(&engine, &first, retryable("busy 1")).await;
        let view = task_view(&engine, task).await;
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
        fail(&engine, &second, retryable("busy 2")).await;

        clock.advance(ms(2000));
        let third = claim_one(&engine, "call").await;
        assert_eq!(third.attempt, 3, "{store}");
        complete(&engine, &third, json!({"ok": true})).await;

        let after = claim_one_with_inputs(&engine, "after", json!({"call": {"ok": true}})).await;
        complete(&engine, &after, json!(null)).await;

        let view = task_view(&engine, task).await;
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

per_store! {
    async fn waiting_step_is_not_claimable_before_its_backoff_elapses(store) {
        let clock = ManualClock::new();
        let Some(engine) = engine_with(store, clock.clone(), &[flaky()]).await else {
            return;
        };
        create(&engine, NewTask::new("n", "flaky")).await;

        claim_and_fail(&engine, "call", retryable("busy")).await;
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
        let second = claim_one(&engine, "call").await;
        assert_eq!(second.attempt, 2, "{store}");

        // The second backoff doubles.
        fail(&engine, &second, retryable("busy again")).await;
        clock.advance(ms(1999));
        assert!(claim(&engine, 1).await.is_empty(), "{store}: 1 ms early");
        clock.advance(ms(1));
        assert_eq!(claim_one(&engine, "call").await.attempt, 3, "{store}");
    }
}

per_store! {
    async fn handler_retry_after_overrides_the_backoff(store) {
        let clock = ManualClock::new();
        let Some(engine) = engine_with(store, clock.clone(), &[flaky()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("n", "flaky")).await;

        claim_and_fail(&engine, "call", retryable_after("rate limited", 5000)).await;
        let step = task_view(&engine, task).await;
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
        let second = claim_one(&engine, "call").await;
        assert_eq!(second.attempt, 2, "{store}");

        // A shorter retry_after than the backoff wins too.
        fail(&engine, &second, retryable_after("briefly busy", 10)).await;
        clock.advance(ms(10));
        assert_eq!(claim_one(&engine, "call").await.attempt, 3, "{store}");
    }
}

per_store! {
    async fn expired_lease_is_reclaimed_and_counts_as_an_attempt(store) {
        let clock = ManualClock::new();
        let Some(engine) = engine_with(store, clock.clone(), &[flaky()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("n", "flaky")).await;

        let first = claim_one(&engine, "call").await;
        assert_eq!(
            first.lease_expires_at,
            engine.now() + chrono::Duration::milliseconds(1000),
            "{store}"
        );
        let view = task_view(&engine, task).await;
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
        let call = task_view(&engine, task).await.steps[0].clone();
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
        assert_eq!(task_view(&engine, task).await.steps[0].attempts, 2);

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

per_store! {
    async fn late_report_from_the_only_holder_is_accepted(store) {
        let clock = ManualClock::new();
        let Some(engine) = engine_with(store, clock.clone(), &[flaky()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("n", "flaky")).await;

        let first = claim_one(&engine, "call").await;
        clock.advance(ms(1500));
        // The lease ran out, but nobody reclaimed the step: the attempt number is the fence,
        // and this holder is still the only one. A late "card declined" stays permanent.
        engine
            .fail(first.step_id, 1, permanent("card declined"))
            .await
            .unwrap_or_else(|e| panic!("{store}: {e}"));
        let call = task_view(&engine, task).await.steps[0].clone();
        assert_eq!(call.status, StepState::Error, "{store}");
        assert_eq!(call.error.as_deref(), Some("card declined"), "{store}");
        assert_eq!(call.attempts, 1, "{store}: no other attempt was made");
        assert_eq!(
            task_view(&engine, task).await.status,
            TaskState::Error,
            "{store}"
        );
    }
}

per_store! {
    async fn an_expired_lease_can_be_renewed_by_its_holder_until_reclaimed(store) {
        let clock = ManualClock::new();
        let Some(engine) = engine_with(store, clock.clone(), &[flaky()]).await else {
            return;
        };
        create(&engine, NewTask::new("n", "flaky")).await;
        let first = claim_one(&engine, "call").await;
        clock.advance(ms(1500));
        let expires = engine
            .heartbeat(first.step_id, 1)
            .await
            .unwrap_or_else(|e| panic!("{store}: {e}"));
        assert_eq!(
            expires,
            engine.now() + chrono::Duration::milliseconds(1000),
            "{store}"
        );
        assert_eq!(
            engine.reclaim_expired().await.unwrap(),
            0,
            "{store}: renewed in time"
        );
    }
}

per_store! {
    async fn late_completion_after_the_step_was_reclaimed_is_refused(store) {
        let clock = ManualClock::new();
        let Some(engine) = engine_with(store, clock.clone(), &[flaky()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("n", "flaky")).await;

        let first = claim_one(&engine, "call").await;
        clock.advance(ms(1000));
        assert_eq!(engine.reclaim_expired().await.unwrap(), 1, "{store}");
        assert_err!(
            engine.heartbeat(first.step_id, 1).await,
            Error::ClaimLost { .. },
            "{store}: a reclaimed lease cannot be heartbeated back to life"
        );
        clock.advance(ms(1000));
        let second = claim_one(&engine, "call").await;
        assert_eq!(second.attempt, 2, "{store}");

        // The first worker wakes up and reports: refused, whatever it reports.
        assert_err!(
            engine.complete(first.step_id, 1, json!("too late")).await,
            Error::ClaimLost { attempt: 1, .. },
            "{store}"
        );
        assert_err!(
            engine
                .fail(first.step_id, 1, permanent("late failure"))
                .await,
            Error::ClaimLost { .. },
            "{store}"
        );

        // The current holder is unaffected.
        complete(&engine, &second, json!("on time")).await;
        let call = task_view(&engine, task).await.steps[0].clone();
        assert_eq!(call.status, StepState::Complete, "{store}");
        assert_eq!(call.result, Some(json!("on time")), "{store}");
        assert_eq!(call.attempts, 2, "{store}");
    }
}

per_store! {
    async fn heartbeat_extends_the_lease_so_the_step_is_not_reclaimed(store) {
        let clock = ManualClock::new();
        let Some(engine) = engine_with(store, clock.clone(), &[flaky()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("n", "flaky")).await;

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
        let view = task_view(&engine, task).await;
        assert_eq!(view.steps[0].status, StepState::InProgress, "{store}");
        assert_eq!(view.steps[0].attempts, 1, "{store}");

        complete(&engine, &step, json!("slow but alive")).await;
        assert_eq!(
            task_view(&engine, task).await.steps[0].status,
            StepState::Complete
        );
    }
}

per_store! {
    async fn lease_expiry_on_the_last_attempt_fails_the_step_for_good(store) {
        let clock = ManualClock::new();
        let once = template("n", "once")
            .step(step("call").timeout_ms(500).retry(attempts(1)))
            .step(step("after").after(&["call"]));
        let Some(engine) = engine_with(store, clock.clone(), &[once]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("n", "once")).await;
        let step = claim_one(&engine, "call").await;
        clock.advance(ms(501));
        assert_eq!(engine.reclaim_expired().await.unwrap(), 1, "{store}");

        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Error, "{store}");
        let call = view.step("call").unwrap();
        assert_eq!(
            (call.status, call.attempts),
            (StepState::Error, 1),
            "{store}"
        );
        assert_eq!(view.step("after").unwrap().status, StepState::Skipped);
        assert_err!(
            engine.complete(step.step_id, 1, json!(1)).await,
            Error::ClaimLost { .. },
            "{store}"
        );
        assert!(engine.work_status().await.unwrap().is_idle(), "{store}");
    }
}

per_store! {
    async fn failure_reported_for_a_step_never_claimed_is_refused(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[flaky()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("n", "flaky")).await;
        let call = task_view(&engine, task).await.steps[0].step_id;
        assert_err!(
            engine.complete(call, 1, json!(1)).await,
            Error::ClaimLost { .. },
            "{store}"
        );
        assert_err!(
            engine.fail(call, 0, retryable("x")).await,
            Error::ClaimLost { .. },
            "{store}"
        );
        // A claimed step reported with the wrong attempt number is refused too.
        let step = claim_one(&engine, "call").await;
        assert_err!(
            engine.complete(step.step_id, 2, json!(1)).await,
            Error::ClaimLost { attempt: 2, .. },
            "{store}"
        );
        complete(&engine, &step, json!(1)).await;
        assert_err!(
            engine.complete(step.step_id, 1, json!(2)).await,
            Error::ClaimLost { .. },
            "{store}: a second completion is refused"
        );
        assert_eq!(
            task_view(&engine, task).await.steps[0].result,
            Some(json!(1)),
            "{store}"
        );
    }
}

per_store! {
    async fn the_next_claim_hands_out_a_step_whose_lease_expired(store) {
        let clock = ManualClock::new();
        let eager = template("n", "eager").step(
            step("call")
                .timeout_ms(1000)
                .retry(attempts(3).backoff_ms(0)),
        );
        let Some(engine) = engine_with(store, clock.clone(), &[eager]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("n", "eager")).await;
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
        assert_err!(
            engine.complete(first.step_id, 1, json!(1)).await,
            Error::ClaimLost { .. },
            "{store}"
        );
        complete(&engine, &second, json!(2)).await;
        assert_eq!(status(&engine, task).await, TaskState::Complete, "{store}");
    }
}
