//! Time on every store, with an injected clock: tasks that run later (`run_at`, `delay`),
//! deadlines, and purging finished tasks.

mod support;

use std::time::Duration;

use serde_json::json;
use tasker_core::{Engine, ManualClock, NewTask, StepState, TaskState, Timestamp};

use support::*;

/// `time/chain`: `a` then `b`.
fn chain() -> Template {
    template("time", "chain").raw("  - name: a\n  - name: b\n    depends_on: [a]\n")
}

/// `time/bounded`: the chain with a deadline of five seconds.
fn bounded() -> Template {
    template("time", "bounded").raw("  - name: a\n  - name: b\n    depends_on: [a]\n")
}

async fn timed(store: StoreKind, clock: &ManualClock) -> Option<Engine> {
    let engine = engine_with(store, clock.clone(), &[chain()]).await?;
    let yaml = bounded()
        .yaml()
        .replace("steps:\n", "deadline_ms: 5000\nsteps:\n");
    engine.register_template_str(&yaml).await.unwrap();
    Some(engine)
}

fn at(clock: &ManualClock, ms: u64) -> Timestamp {
    tasker_core::clock::add_ms(tasker_core::Clock::now(clock), ms)
}

per_store! {
    async fn a_task_to_run_later_is_not_claimable_a_millisecond_early(store) {
        let clock = ManualClock::new();
        let Some(engine) = timed(store, &clock).await else { return };
        let start = at(&clock, 1000);
        let task = create(&engine, NewTask::new("time", "chain").run_at(start)).await;
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Pending, "{store}");
        let a = view.step("a").unwrap();
        assert_eq!((a.status, a.next_attempt_at), (StepState::Pending, Some(start)), "{store}");
        let work = engine.work_status().await.unwrap();
        assert_eq!((work.ready, work.waiting, work.next_due), (0, 1, Some(start)), "{store}");
        clock.advance(Duration::from_millis(999));
        assert!(claim(&engine, 10).await.is_empty(), "{store}: a millisecond early");
        clock.advance(Duration::from_millis(1));
        let claimed = claim(&engine, 10).await;
        assert_eq!(names(&claimed), ["a"], "{store}: on time");
        complete(&engine, &claimed[0], json!(1)).await;
        claim_and_complete(&engine, "b", json!(2)).await;
        assert_eq!(status_of(&engine, task).await, TaskState::Complete, "{store}");
    }
}

async fn status_of(engine: &Engine, task: tasker_core::TaskId) -> TaskState {
    status(engine, task).await
}

per_store! {
    async fn a_delay_counts_from_creation_by_the_engines_clock(store) {
        let clock = ManualClock::new();
        let Some(engine) = timed(store, &clock).await else { return };
        let task = create(&engine, NewTask::new("time", "chain").delay(Duration::from_secs(60))).await;
        assert_eq!(task_view(&engine, task).await.step("a").unwrap().next_attempt_at, Some(at(&clock, 60_000)), "{store}");
        clock.advance(Duration::from_millis(59_999));
        assert!(claim(&engine, 10).await.is_empty(), "{store}");
        clock.advance(Duration::from_millis(1));
        assert_eq!(names(&claim(&engine, 10).await), ["a"], "{store}");
        let both = NewTask::new("time", "chain").delay(Duration::from_secs(1)).run_at(at(&clock, 5));
        assert_err!(engine.create_task(both).await, tasker_core::Error::InvalidArgument(_), "{store}");
    }
}

per_store! {
    async fn pausing_or_cancelling_a_task_before_its_start_holds_it(store) {
        let clock = ManualClock::new();
        let Some(engine) = timed(store, &clock).await else { return };
        let paused = create(&engine, NewTask::new("time", "chain").run_at(at(&clock, 1000))).await;
        let cancelled = create(&engine, NewTask::new("time", "chain").run_at(at(&clock, 1000))).await;
        engine.pause_task(paused).await.unwrap();
        engine.resume_task(paused).await.unwrap();
        engine.cancel_task(cancelled).await.unwrap();
        assert!(claim(&engine, 10).await.is_empty(), "{store}: resuming does not start it early");
        clock.advance(Duration::from_secs(1));
        let claimed = claim(&engine, 10).await;
        assert_eq!(claimed.iter().map(|s| s.task_id()).collect::<Vec<_>>(), [paused], "{store}");
        assert_eq!(status(&engine, cancelled).await, TaskState::Cancelled, "{store}");
    }
}

per_store! {
    async fn a_deadline_fails_its_task_on_time_and_refuses_late_reports(store) {
        let clock = ManualClock::new();
        let Some(engine) = timed(store, &clock).await else { return };
        let task = create(&engine, NewTask::new("time", "bounded")).await;
        assert_eq!(task_view(&engine, task).await.deadline_at, Some(at(&clock, 5000)), "{store}");
        let a = claim_one(&engine, "a").await;
        clock.advance(Duration::from_millis(4999));
        engine.reclaim_expired().await.unwrap();
        assert_eq!(status(&engine, task).await, TaskState::InProgress, "{store}: a millisecond early");
        clock.advance(Duration::from_millis(1));
        engine.reclaim_expired().await.unwrap();
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Error, "{store}");
        assert_eq!(view.deadline_at, None, "{store}");
        let (sa, sb) = (view.step("a").unwrap(), view.step("b").unwrap());
        assert_eq!((sa.status, sa.error.as_deref()), (StepState::Error, Some("deadline exceeded")), "{store}");
        assert_eq!(sb.status, StepState::Cancelled, "{store}");
        let late = engine.complete(a.step_id, a.attempt, json!(1)).await;
        assert!(matches!(late, Err(tasker_core::Error::ClaimLost { .. })), "{store}: {late:?}");
        let trail = task_path(&engine, task).await;
        assert_eq!(trail.last().map(|(f, t)| (f.as_str(), t.as_str())), Some(("in_progress", "error")), "{store}");
    }
}

per_store! {
    async fn a_deadline_counts_from_a_delayed_tasks_start(store) {
        let clock = ManualClock::new();
        let Some(engine) = timed(store, &clock).await else { return };
        let task = create(&engine, NewTask::new("time", "bounded").run_at(at(&clock, 10_000))).await;
        assert_eq!(task_view(&engine, task).await.deadline_at, Some(at(&clock, 15_000)), "{store}");
        let work = engine.work_status().await.unwrap();
        assert_eq!(work.next_due, Some(at(&clock, 10_000)), "{store}: the start comes first");
        clock.advance(Duration::from_secs(15));
        engine.reclaim_expired().await.unwrap();
        assert_eq!(status(&engine, task).await, TaskState::Error, "{store}");
        assert!(claim(&engine, 10).await.is_empty(), "{store}");
    }
}

per_store! {
    async fn purging_deletes_finished_tasks_before_a_time(store) {
        let clock = ManualClock::new();
        let Some(engine) = timed(store, &clock).await else { return };
        let done = create(&engine, NewTask::new("time", "chain").idempotency_key("k1")).await;
        let gone = create(&engine, NewTask::new("time", "chain")).await;
        let open = create(&engine, NewTask::new("time", "chain")).await;
        let a_steps = engine.claim(&only_handlers(&["a"], 10)).await.unwrap();
        let a = a_steps.iter().find(|s| s.task_id() == done).unwrap();
        complete(&engine, a, json!(1)).await;
        engine.cancel_task(gone).await.unwrap();
        let b = claim_one(&engine, "b").await;
        complete(&engine, &b, json!(2)).await;
        let finished = [done, gone];
        let others = [open];
        assert_eq!(status(&engine, done).await, TaskState::Complete, "{store}");
        clock.advance(Duration::from_secs(1));
        let before = tasker_core::Clock::now(&clock);
        clock.advance(Duration::from_secs(1));
        let late = create(&engine, NewTask::new("time", "chain")).await;
        engine.cancel_task(late).await.unwrap();
        assert_err!(engine.purge(before, Some(&[TaskState::Pending])).await, tasker_core::Error::InvalidArgument(_), "{store}");
        assert_eq!(engine.purge(before, Some(&[TaskState::Complete])).await.unwrap(), 1, "{store}");
        assert_eq!(engine.purge(before, None).await.unwrap(), 1, "{store}: the cancelled one");
        for t in finished {
            assert_err!(engine.task(t).await, tasker_core::Error::TaskNotFound(_), "{store}");
            assert!(engine.transitions(t).await.map(|t| t.is_empty()).unwrap_or(true), "{store}");
        }
        for t in others.into_iter().chain([late]) {
            assert!(engine.task(t).await.is_ok(), "{store}: kept");
        }
        let again = create(&engine, NewTask::new("time", "chain").idempotency_key("k1")).await;
        assert_ne!(again, done, "{store}: the key is free again");
    }
}

per_store! {
    async fn a_report_after_the_deadline_is_refused_before_any_scan(store) {
        let clock = ManualClock::new();
        let Some(engine) = timed(store, &clock).await else { return };
        let task = create(&engine, NewTask::new("time", "bounded")).await;
        let a = claim_one(&engine, "a").await;
        clock.advance(Duration::from_secs(6));
        let late = engine.complete(a.step_id, a.attempt, json!(1)).await;
        assert!(matches!(late, Err(tasker_core::Error::ClaimLost { .. })), "{store}: {late:?}");
        let beat = engine.heartbeat(a.step_id, a.attempt).await;
        assert!(matches!(beat, Err(tasker_core::Error::ClaimLost { .. })), "{store}: {beat:?}");
        engine.reclaim_expired().await.unwrap();
        assert_eq!(status(&engine, task).await, TaskState::Error, "{store}");
    }
}

per_store! {
    async fn a_reopened_task_keeps_its_deadline(store) {
        let clock = ManualClock::new();
        let Some(engine) = timed(store, &clock).await else { return };
        let task = create(&engine, NewTask::new("time", "bounded")).await;
        let a = claim_one(&engine, "a").await;
        fail(&engine, &a, permanent("no")).await;
        assert_eq!(status(&engine, task).await, TaskState::Error, "{store}");
        engine.retry_task(task).await.unwrap();
        assert_eq!(task_view(&engine, task).await.deadline_at, Some(at(&clock, 5000)), "{store}");
        clock.advance(Duration::from_secs(5));
        engine.reclaim_expired().await.unwrap();
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Error, "{store}: the deadline stood");
        assert_eq!(view.step("a").unwrap().status, StepState::Cancelled, "{store}");
    }
}

per_store! {
    async fn a_failed_tasks_deadline_does_not_keep_the_workers_looking(store) {
        let clock = ManualClock::new();
        let Some(engine) = timed(store, &clock).await else { return };
        let task = create(&engine, NewTask::new("time", "bounded")).await;
        let a = claim_one(&engine, "a").await;
        fail(&engine, &a, permanent("no")).await;
        // Failed, it keeps its deadline (a retry reopens it under it) ...
        assert_eq!(task_view(&engine, task).await.deadline_at, Some(at(&clock, 5000)), "{store}");
        // ... and once that deadline is past, idle workers still have nothing due to look at
        // (a next_due in the past made them claim again at once, for ever).
        clock.advance(Duration::from_secs(6));
        engine.reclaim_expired().await.unwrap();
        let work = engine.work_status().await.unwrap();
        assert_eq!(work.next_due, None, "{store}");
        assert_eq!(status(&engine, task).await, TaskState::Error, "{store}");
    }
}
