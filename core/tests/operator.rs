//! Operator verbs: cancel, pause / resume, retry_task and resolve_step.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::json;
use tasker_core::{
    ClaimedStep, Engine, Error, HandlerError, ManualClock, NewTask, StepState, TaskId, TaskState,
    Worker,
};

use support::*;

/// `a` and `b` run in parallel, `c` joins them; `a` retries after 1 s.
fn join() -> Template {
    template("ops", "join")
        .step(step("a").retry(attempts(3).backoff_ms(1000)))
        .step(step("b"))
        .step(step("c").after(&["a", "b"]))
}

/// `a` → `b` → `c`, one attempt each.
fn chain() -> Template {
    template("ops", "chain")
        .default_retry(attempts(1))
        .step(step("a"))
        .step(step("b").after(&["a"]))
        .step(step("c").after(&["b"]))
}

async fn states(engine: &Engine, task: TaskId) -> Vec<(String, StepState)> {
    task_view(engine, task)
        .await
        .steps
        .into_iter()
        .map(|s| (s.name, s.status))
        .collect()
}

fn expect(pairs: &[(&str, StepState)]) -> Vec<(String, StepState)> {
    pairs.iter().map(|(n, s)| (n.to_string(), *s)).collect()
}

/// Runs `a` of [`chain`] into a permanent failure: the task ends in error with `b`, `c` skipped.
async fn failed_chain(engine: &Engine) -> TaskId {
    let task = create(engine, NewTask::new("ops", "chain")).await;
    claim_and_fail(engine, "a", permanent("bad input")).await;
    assert_eq!(status(engine, task).await, TaskState::Error);
    task
}

/// Starts a [`join`] task and claims `a` and `b`; `a`'s first attempt fails, so it waits 1 s for
/// its retry. Returns the task and `b`, still running.
async fn join_with_a_waiting(engine: &Engine) -> (TaskId, ClaimedStep) {
    let task = create(engine, NewTask::new("ops", "join")).await;
    let first = claim(engine, 2).await;
    assert_eq!(names(&first), ["a", "b"]);
    fail(engine, named(&first, "a"), retryable("busy")).await;
    (task, named(&first, "b").clone())
}

per_store! {
    async fn cancel_stops_pending_running_and_waiting_steps(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[join()]).await else {
            return;
        };
        let (task, b) = join_with_a_waiting(&engine).await;
        // a waits for a retry, b runs, c is pending.

        engine.cancel_task(task).await.unwrap();
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Cancelled, "{store}");
        assert!(view.completed_at.is_some(), "{store}");
        assert_eq!(
            states(&engine, task).await,
            expect(&[
                ("a", StepState::Cancelled),
                ("b", StepState::Cancelled),
                ("c", StepState::Cancelled)
            ]),
            "{store}"
        );
        assert_eq!(view.progress.cancelled, 3, "{store}");

        assert_err!(
            engine.complete(b.step_id, 1, json!("late")).await,
            Error::ClaimLost { .. },
            "{store}"
        );
        assert!(claim(&engine, 10).await.is_empty(), "{store}");
        assert!(engine.work_status().await.unwrap().is_idle(), "{store}");
        let trail = transitions_of(&engine, task, Some("b")).await;
        let last = trail.last().unwrap();
        assert_eq!(
            (
                last.from.as_deref(),
                last.to.as_str(),
                last.reason.as_deref()
            ),
            (Some("in_progress"), "cancelled", Some("task cancelled")),
            "{store}"
        );
    }
}

per_store! {
    async fn cancelling_a_finished_task_is_an_invalid_transition(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[chain()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("ops", "chain")).await;
        complete_in_order(&engine, &["a", "b", "c"]).await;
        assert_eq!(status(&engine, task).await, TaskState::Complete);
        assert_err!(
            engine.cancel_task(task).await,
            Error::InvalidTransition(_),
            "{store}"
        );

        let other = create(&engine, NewTask::new("ops", "chain")).await;
        engine.cancel_task(other).await.unwrap();
        assert_err!(
            engine.cancel_task(other).await,
            Error::InvalidTransition(_),
            "{store}: twice"
        );
        assert_eq!(
            status(&engine, task).await,
            TaskState::Complete,
            "{store}: a refused verb changes nothing"
        );
    }
}

per_store! {
    async fn paused_task_hands_out_nothing_until_resumed(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[join()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("ops", "join")).await;
        engine.pause_task(task).await.unwrap();
        assert_eq!(status(&engine, task).await, TaskState::Paused);
        assert!(claim(&engine, 10).await.is_empty(), "{store}");
        assert!(
            claim(&engine, 10).await.is_empty(),
            "{store}: still nothing"
        );

        engine.resume_task(task).await.unwrap();
        assert_eq!(
            status(&engine, task).await,
            TaskState::InProgress,
            "{store}"
        );
        let ready = claim(&engine, 10).await;
        assert_eq!(names(&ready), ["a", "b"], "{store}");
        for step in &ready {
            complete(&engine, step, json!(1)).await;
        }
        claim_and_complete(&engine, "c", json!(2)).await;
        assert_eq!(status(&engine, task).await, TaskState::Complete);
        assert_eq!(
            task_path(&engine, task).await,
            path(&[
                ("", "pending"),
                ("pending", "paused"),
                ("paused", "in_progress"),
                ("in_progress", "complete"),
            ]),
            "{store}"
        );
    }
}

per_store! {
    async fn steps_finishing_while_paused_release_their_children_only_on_resume(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[chain()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("ops", "chain")).await;
        let a = claim_one(&engine, "a").await;
        engine.pause_task(task).await.unwrap();
        complete(&engine, &a, json!("a")).await; // a running step may still report
        assert!(
            claim(&engine, 10).await.is_empty(),
            "{store}: b is held back"
        );

        engine.resume_task(task).await.unwrap();
        let b = claim_one_with_inputs(&engine, "b", json!({"a": "a"})).await;
        complete(&engine, &b, json!("b")).await;

        // The last step finishing while paused: the task completes on resume.
        let c = claim_one(&engine, "c").await;
        engine.pause_task(task).await.unwrap();
        complete(&engine, &c, json!("c")).await;
        assert_eq!(status(&engine, task).await, TaskState::Paused);
        engine.resume_task(task).await.unwrap();
        assert_eq!(status(&engine, task).await, TaskState::Complete, "{store}");
    }
}

per_store! {
    async fn pausing_a_finished_task_and_resuming_a_running_one_are_refused(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[chain()]).await else {
            return;
        };
        let task = failed_chain(&engine).await;
        assert_err!(
            engine.pause_task(task).await,
            Error::InvalidTransition(_),
            "{store}"
        );

        let running = create(&engine, NewTask::new("ops", "chain")).await;
        assert_err!(
            engine.resume_task(running).await,
            Error::InvalidTransition(_),
            "{store}"
        );
        engine.pause_task(running).await.unwrap();
        assert_err!(
            engine.pause_task(running).await,
            Error::InvalidTransition(_),
            "{store}"
        );
    }
}

per_store! {
    async fn retry_task_gives_failed_and_skipped_steps_a_fresh_budget(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[chain()]).await else {
            return;
        };
        let task = failed_chain(&engine).await;
        assert_eq!(
            states(&engine, task).await,
            expect(&[
                ("a", StepState::Error),
                ("b", StepState::Skipped),
                ("c", StepState::Skipped)
            ]),
            "{store}"
        );

        engine.retry_task(task).await.unwrap();
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::InProgress, "{store}");
        assert_eq!(view.completed_at, None, "{store}");
        assert_eq!(
            states(&engine, task).await,
            expect(&[
                ("a", StepState::Pending),
                ("b", StepState::Pending),
                ("c", StepState::Pending)
            ]),
            "{store}"
        );
        let a = view.step("a").unwrap();
        assert_eq!(
            (a.attempts, a.max_attempts),
            (1, 2),
            "{store}: one more attempt"
        );

        let a = claim_one(&engine, "a").await;
        assert_eq!(a.attempt, 2, "{store}");
        complete(&engine, &a, json!("fixed")).await;
        for name in ["b", "c"] {
            let step = claim_one(&engine, name).await;
            assert_eq!(step.attempt, 1, "{store}");
            complete(&engine, &step, json!(name)).await;
        }
        assert_eq!(status(&engine, task).await, TaskState::Complete, "{store}");
        assert_eq!(
            task_path(&engine, task).await,
            path(&[
                ("", "pending"),
                ("pending", "in_progress"),
                ("in_progress", "error"),
                ("error", "in_progress"),
                ("in_progress", "complete"),
            ]),
            "{store}"
        );
        let b_trail = transitions_of(&engine, task, Some("b")).await;
        assert_eq!(
            (b_trail[1].from.as_deref(), b_trail[1].to.as_str()),
            (Some("skipped"), "pending"),
            "{store}"
        );
        assert_eq!(b_trail[1].reason.as_deref(), Some("operator retry"));
    }
}

per_store! {
    async fn retried_task_completes_once_the_handler_is_fixed(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[chain()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("ops", "chain")).await;
        let broken = Arc::new(AtomicBool::new(true));
        let a = {
            let broken = broken.clone();
            move |_step: ClaimedStep| {
                let broken = broken.load(Ordering::SeqCst);
                async move {
                    if broken {
                        Err(HandlerError::permanent("config missing"))
                    } else {
                        Ok(json!("a"))
                    }
                }
            }
        };
        let ok = |step: ClaimedStep| async move { Ok::<_, HandlerError>(json!(&*step.name)) };
        let worker = Worker::builder(engine.clone())
            .handler("a", a)
            .handler("b", ok)
            .handler("c", ok)
            .build();

        let report = worker.run_until_idle(RUN_LIMIT).await.unwrap();
        assert!(report.idle, "{store}");
        assert_eq!((report.completed, report.failed), (0, 1), "{store}");
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Error, "{store}");
        assert_eq!(
            view.step("a").unwrap().error.as_deref(),
            Some("config missing")
        );

        broken.store(false, Ordering::SeqCst);
        engine.retry_task(task).await.unwrap();
        let report = worker.run_until_idle(RUN_LIMIT).await.unwrap();
        assert_eq!(report.completed, 3, "{store}");
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Complete, "{store}");
        assert_eq!(view.step("c").unwrap().result, Some(json!("c")), "{store}");
        assert_eq!(view.step("a").unwrap().attempts, 2, "{store}");
    }
}

per_store! {
    async fn retry_task_is_refused_unless_the_task_failed(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[chain()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("ops", "chain")).await;
        assert_err!(
            engine.retry_task(task).await,
            Error::InvalidTransition(_),
            "{store}: pending"
        );
        complete_in_order(&engine, &["a", "b", "c"]).await;
        assert_err!(
            engine.retry_task(task).await,
            Error::InvalidTransition(_),
            "{store}: complete"
        );
        assert_eq!(status(&engine, task).await, TaskState::Complete);
    }
}

per_store! {
    async fn resolving_a_failed_step_releases_its_skipped_dependents(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[chain()]).await else {
            return;
        };
        let task = failed_chain(&engine).await;
        engine
            .resolve_step(task, "a", json!({"by": "operator"}))
            .await
            .unwrap();
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::InProgress, "{store}");
        let a = view.step("a").unwrap();
        assert_eq!(a.status, StepState::ResolvedManually, "{store}");
        assert_eq!(a.result, Some(json!({"by": "operator"})), "{store}");
        assert_eq!(view.step("b").unwrap().status, StepState::Pending);
        assert_eq!(view.step("c").unwrap().status, StepState::Pending);

        let b = claim_one_with_inputs(&engine, "b", json!({"a": {"by": "operator"}})).await;
        complete(&engine, &b, json!("b")).await;
        claim_and_complete(&engine, "c", json!("c")).await;
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Complete, "{store}");
        assert_eq!(view.progress.resolved_manually, 1, "{store}");
        assert_eq!(view.progress.complete, 2, "{store}");
        let a_trail = transitions_of(&engine, task, Some("a")).await;
        let last = a_trail.last().unwrap();
        assert_eq!(
            (
                last.from.as_deref(),
                last.to.as_str(),
                last.reason.as_deref()
            ),
            (
                Some("error"),
                "resolved_manually",
                Some("resolved by an operator")
            ),
            "{store}"
        );
    }
}

per_store! {
    async fn resolving_a_failed_leaf_completes_the_task(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[chain()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("ops", "chain")).await;
        complete_in_order(&engine, &["a", "b"]).await;
        claim_and_fail(&engine, "c", permanent("nope")).await;
        assert_eq!(status(&engine, task).await, TaskState::Error);

        engine
            .resolve_step(task, "c", json!("by hand"))
            .await
            .unwrap();
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Complete, "{store}");
        assert!(view.completed_at.is_some(), "{store}");
    }
}

per_store! {
    async fn resolving_a_pending_step_feeds_the_operator_result_to_its_dependents(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[chain()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("ops", "chain")).await;
        engine
            .resolve_step(task, "a", json!({"manual": 1}))
            .await
            .unwrap();
        let b = claim_one_with_inputs(&engine, "b", json!({"a": {"manual": 1}})).await;
        complete(&engine, &b, json!("b")).await;
        claim_and_complete(&engine, "c", json!("c")).await;
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Complete, "{store}");
        assert_eq!(view.step("a").unwrap().attempts, 0, "{store}: a never ran");
    }
}

per_store! {
    async fn resolving_a_running_step_refuses_its_late_report(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[chain()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("ops", "chain")).await;
        let a = claim_one(&engine, "a").await;
        engine
            .resolve_step(task, "a", json!("operator"))
            .await
            .unwrap();
        assert_err!(
            engine.complete(a.step_id, 1, json!("worker")).await,
            Error::ClaimLost { .. },
            "{store}"
        );
        claim_one_with_inputs(&engine, "b", json!({"a": "operator"})).await;
        let view = task_view(&engine, task).await;
        assert_eq!(view.step("a").unwrap().lease_owner, None, "{store}");
        assert_eq!(
            engine.work_status().await.unwrap().running,
            1,
            "{store}: only b"
        );
    }
}

per_store! {
    async fn resolving_a_completed_or_unknown_step_is_refused(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[chain()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("ops", "chain")).await;
        claim_and_complete(&engine, "a", json!("a")).await;
        assert_err!(
            engine.resolve_step(task, "a", json!(1)).await,
            Error::InvalidTransition(_),
            "{store}"
        );
        assert_err!(
            engine.resolve_step(task, "zzz", json!(1)).await,
            Error::StepNotFound { step, .. } if step == "zzz",
            "{store}"
        );
        assert_err!(
            engine.resolve_step(TaskId::new(), "a", json!(1)).await,
            Error::TaskNotFound(_),
            "{store}"
        );
    }
}

per_store! {
    async fn operator_verbs_on_an_unknown_task_are_not_found(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[]).await else {
            return;
        };
        let id = TaskId::new();
        for result in [
            engine.cancel_task(id).await,
            engine.pause_task(id).await,
            engine.resume_task(id).await,
            engine.retry_task(id).await,
        ] {
            assert_err!(result, Error::TaskNotFound(t) if t == id, "{store}");
        }
    }
}

per_store! {
    async fn cancelling_a_paused_task_cancels_its_steps(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[chain()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("ops", "chain")).await;
        engine.pause_task(task).await.unwrap();
        engine.cancel_task(task).await.unwrap();
        assert_eq!(status(&engine, task).await, TaskState::Cancelled);
        assert_eq!(
            task_view(&engine, task).await.progress.cancelled,
            3,
            "{store}"
        );
        assert_err!(
            engine.resume_task(task).await,
            Error::InvalidTransition(_),
            "{store}"
        );
        assert!(claim(&engine, 10).await.is_empty(), "{store}");
    }
}

per_store! {
    async fn a_retry_falling_due_while_paused_runs_after_resume(store) {
        let clock = ManualClock::new();
        let Some(engine) = engine_with(store, clock.clone(), &[join()]).await else {
            return;
        };
        let (task, b) = join_with_a_waiting(&engine).await;
        complete(&engine, &b, json!("b")).await;

        engine.pause_task(task).await.unwrap();
        clock.advance(ms(1000));
        assert!(claim(&engine, 10).await.is_empty(), "{store}: paused");
        engine.resume_task(task).await.unwrap();
        let again = claim_one(&engine, "a").await;
        assert_eq!(again.attempt, 2, "{store}");
        complete(&engine, &again, json!("a")).await;
        claim_one_with_inputs(&engine, "c", json!({"a": "a", "b": "b"})).await;
    }
}

per_store! {
    async fn resolving_a_step_waiting_for_retry_cancels_the_retry(store) {
        let clock = ManualClock::new();
        let Some(engine) = engine_with(store, clock.clone(), &[join()]).await else {
            return;
        };
        let (task, b) = join_with_a_waiting(&engine).await;
        engine
            .resolve_step(task, "a", json!("manual a"))
            .await
            .unwrap();
        assert_eq!(engine.work_status().await.unwrap().waiting, 0, "{store}");

        clock.advance(ms(1000));
        assert!(
            claim(&engine, 10).await.is_empty(),
            "{store}: no retry of a"
        );
        complete(&engine, &b, json!("b")).await;
        let c = claim_one(&engine, "c").await;
        assert_eq!(c.inputs.get("a"), Some(&json!("manual a")), "{store}");
        complete(&engine, &c, json!("c")).await;
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Complete, "{store}");
        assert_eq!(view.step("a").unwrap().attempts, 1, "{store}");
    }
}

per_store! {
    async fn resolving_a_skipped_step_runs_its_dependents_while_the_failure_stands(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[chain()]).await else {
            return;
        };
        let task = failed_chain(&engine).await;
        engine
            .resolve_step(task, "b", json!("manual b"))
            .await
            .unwrap();
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::InProgress, "{store}");
        assert_eq!(view.step("a").unwrap().status, StepState::Error, "{store}");
        assert_eq!(
            view.step("c").unwrap().status,
            StepState::Pending,
            "{store}"
        );

        let c = claim_one_with_inputs(&engine, "c", json!({"b": "manual b"})).await;
        complete(&engine, &c, json!("c")).await;
        assert_eq!(
            status(&engine, task).await,
            TaskState::Error,
            "{store}: a still failed"
        );
    }
}

per_store! {
    async fn resolving_a_step_of_a_cancelled_task_is_refused_and_changes_nothing(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[chain()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("ops", "chain")).await;
        claim_and_fail(&engine, "a", permanent("broken")).await;
        engine.cancel_task(task).await.unwrap();
        let before = task_view(&engine, task).await;
        assert_err!(
            engine.resolve_step(task, "a", json!("by hand")).await,
            Error::InvalidTransition(_),
            "{store}"
        );
        assert_eq!(task_view(&engine, task).await, before, "{store}");
        assert!(claim(&engine, 10).await.is_empty(), "{store}");
    }
}

per_store! {
    async fn resolving_a_step_announces_only_the_steps_it_made_ready(store) {
        let fork = template("ops", "fork").steps([step("a"), step("b"), step("after_a").after(&["a"])]);
        let Some(engine) = engine_with(store, ManualClock::new(), &[fork]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("ops", "fork")).await;
        let ready = engine.subscribe("step.ready").unwrap();
        engine
            .resolve_step(task, "a", json!("by hand"))
            .await
            .unwrap();
        let announced: Vec<String> = ready
            .drain()
            .iter()
            .filter_map(|e| e.step_name.as_deref().map(str::to_owned))
            .collect();
        // b was ready before and is not announced again; after_a is.
        assert_eq!(announced, vec!["after_a".to_owned()], "{store}");
        let mut claimed = names(&claim(&engine, 10).await);
        claimed.sort();
        assert_eq!(claimed, vec!["after_a", "b"], "{store}");
    }
}
