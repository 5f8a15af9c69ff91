//! The Worker loop: panics, concurrency, graceful stop, handler filters and lost claims.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tasker_core::{ClaimedStep, HandlerError, ManualClock, NewTask, StepState, TaskState, Worker};
use tokio::sync::{mpsc, Semaphore};

use support::*;

/// `count` independent steps, all run by handler `h`, retried at once (no backoff).
fn independent(count: usize) -> Template {
    template("w", "many")
        .default_retry(attempts(3).backoff_ms(0))
        .steps((0..count).map(|i| step(&format!("s{i}")).handler("h")))
}

per_store! {
    async fn a_panicking_handler_is_retried_and_the_worker_keeps_going(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[independent(3)]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("w", "many")).await;
        let worker = Worker::builder(engine.clone())
            .handler("h", |step: ClaimedStep| async move {
                if &*step.name == "s1" && step.attempt == 1 {
                    panic!("boom in {}", step.name);
                }
                Ok::<_, HandlerError>(json!(step.attempt))
            })
            .build();
        let report = worker.run_until_idle(RUN_LIMIT).await.unwrap();
        assert!(report.idle, "{store}");
        assert_eq!((report.completed, report.failed), (3, 1), "{store}");

        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Complete, "{store}");
        let s1 = view.step("s1").unwrap();
        assert_eq!(s1.attempts, 2, "{store}");
        assert_eq!(s1.result, Some(json!(2)), "{store}");
        assert_eq!(
            first_failure_reason(&engine, task, "s1").await.as_deref(),
            Some("handler panicked: boom in s1"),
            "{store}"
        );
    }
}

per_store! {
    async fn the_worker_never_runs_more_handlers_at_once_than_its_concurrency(store) {
        const LIMIT: usize = 3;
        let Some(engine) = engine_with(store, ManualClock::new(), &[independent(24)]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("w", "many")).await;
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let handler = {
            let (running, peak) = (running.clone(), peak.clone());
            move |_step: ClaimedStep| {
                let (running, peak) = (running.clone(), peak.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    // Stay busy long enough for the others to start if the limit were broken.
                    tokio::time::sleep(ms(10)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, HandlerError>(json!(null))
                }
            }
        };
        let worker = Worker::builder(engine.clone())
            .handler("h", handler)
            .concurrency(LIMIT)
            .build();
        let report = worker.run_until_idle(RUN_LIMIT).await.unwrap();
        assert_eq!(report.completed, 24, "{store}");
        assert_eq!(
            peak.load(Ordering::SeqCst),
            LIMIT,
            "{store}: the limit is reached, never exceeded"
        );
        assert_eq!(status(&engine, task).await, TaskState::Complete, "{store}");
    }
}

per_store! {
    async fn stop_returns_from_run_after_in_flight_steps_finish(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[independent(2)]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("w", "many")).await;
        let (started_tx, mut started) = mpsc::unbounded_channel::<String>();
        let release = Arc::new(Semaphore::new(0));
        let handler = {
            let release = release.clone();
            move |step: ClaimedStep| {
                let (started_tx, release) = (started_tx.clone(), release.clone());
                async move {
                    let _ = started_tx.send(step.name.to_string());
                    release.acquire().await.expect("semaphore open").forget();
                    Ok::<_, HandlerError>(json!("finished"))
                }
            }
        };
        let worker = Worker::builder(engine.clone())
            .handler("h", handler)
            .concurrency(1)
            .build();
        let run = spawn_run(&worker);
        let first = tokio::time::timeout(RUN_LIMIT, started.recv())
            .await
            .expect("a step starts")
            .unwrap();

        worker.stop();
        let mut run = run;
        assert!(
            tokio::time::timeout(ms(50), &mut run).await.is_err(),
            "{store}: run waits for the running step"
        );
        release.add_permits(1);
        let report = finished(run, "run returns after stop").await;
        assert_eq!(report.completed, 1, "{store}");
        assert!(!report.idle, "{store}: stopped, not idle");

        let view = task_view(&engine, task).await;
        assert_eq!(view.step(&first).unwrap().status, StepState::Complete);
        let other = view.steps.iter().find(|s| s.name != first).unwrap();
        assert_eq!(
            (other.status, other.attempts),
            (StepState::Pending, 0),
            "{store}: nothing is claimed after stop"
        );
        assert!(started.try_recv().is_err(), "{store}");
    }
}

per_store! {
    async fn a_worker_only_claims_steps_it_has_handlers_for(store) {
        let split = template("w", "split")
            .step(step("mine"))
            .step(step("theirs"))
            .step(step("after_mine").after(&["mine"]));
        let Some(engine) = engine_with(store, ManualClock::new(), &[split]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("w", "split")).await;
        let worker = worker_answering(&engine, &["mine", "after_mine"], json!("done"));
        let started = std::time::Instant::now();
        let report = worker.run_until_idle(RUN_LIMIT).await.unwrap();
        assert!(report.idle, "{store}: idle once nothing it can run is left");
        assert!(started.elapsed() < RUN_LIMIT / 2, "{store}");
        assert_eq!(report.completed, 2, "{store}");

        let view = task_view(&engine, task).await;
        let theirs = view.step("theirs").unwrap();
        assert_eq!(
            (theirs.status, theirs.attempts),
            (StepState::Pending, 0),
            "{store}"
        );
        assert_eq!(view.status, TaskState::InProgress, "{store}");

        // Another worker with the missing handler finishes the task.
        let other = worker_answering(&engine, &["theirs"], json!("done"));
        assert_eq!(
            other.run_until_idle(RUN_LIMIT).await.unwrap().completed,
            1,
            "{store}"
        );
        assert_eq!(status(&engine, task).await, TaskState::Complete, "{store}");
    }
}

per_store! {
    async fn claim_with_a_handler_filter_skips_other_handlers_steps(store) {
        let two = template("w", "two")
            .step(step("a").handler("x"))
            .step(step("b").handler("y"));
        let Some(engine) = engine_with(store, ManualClock::new(), &[two]).await else {
            return;
        };
        create(&engine, NewTask::new("w", "two")).await;
        assert!(
            engine
                .claim(&only_handlers(&["z"], 10))
                .await
                .unwrap()
                .is_empty(),
            "{store}"
        );
        let got = engine.claim(&only_handlers(&["y"], 10)).await.unwrap();
        assert_eq!(names(&got), ["b"], "{store}");
        assert_eq!(&*got[0].handler, "y", "{store}");
        let rest = claim(&engine, 10).await;
        assert_eq!(names(&rest), ["a"], "{store}");
    }
}

per_store! {
    async fn a_handler_that_outlives_its_timeout_fails_and_is_retried(store) {
        let slow =
            template("w", "slow").step(step("slow").timeout_ms(50).retry(attempts(2).backoff_ms(0)));
        let Some(engine) = engine_with(store, ManualClock::new(), &[slow]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("w", "slow")).await;
        let worker = Worker::builder(engine.clone())
            .handler("slow", |step: ClaimedStep| async move {
                if step.attempt == 1 {
                    std::future::pending::<()>().await;
                }
                Ok::<_, HandlerError>(json!("quick this time"))
            })
            .build();
        let report = worker
            .run_until_idle(Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!((report.completed, report.failed), (1, 1), "{store}");
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Complete, "{store}");
        assert_eq!(
            first_failure_reason(&engine, task, "slow").await.as_deref(),
            Some("timed out after 50 ms"),
            "{store}"
        );
    }
}

per_store! {
    async fn a_report_refused_because_the_task_was_cancelled_counts_as_lost(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[independent(1)]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("w", "many")).await;
        let handler = {
            let engine = engine.clone();
            move |step: ClaimedStep| {
                let engine = engine.clone();
                async move {
                    engine.cancel_task(step.task_id()).await?;
                    Ok::<_, HandlerError>(json!("finished anyway"))
                }
            }
        };
        let worker = Worker::builder(engine.clone())
            .handler("h", handler)
            .build();
        let report = worker.run_until_idle(RUN_LIMIT).await.unwrap();
        assert_eq!(
            (report.completed, report.failed, report.lost),
            (0, 0, 1),
            "{store}"
        );
        assert!(report.idle, "{store}");
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Cancelled, "{store}");
        assert_eq!(view.steps[0].result, None, "{store}");
    }
}

per_store! {
    async fn handler_errors_follow_the_handler_contract(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[independent(3)]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("w", "many")).await;
        let worker = Worker::builder(engine.clone())
            .handler("h", |step: ClaimedStep| async move {
                match (&*step.name, step.attempt) {
                    ("s0", _) => Err(HandlerError::permanent("never")),
                    ("s1", 1) => Err(HandlerError::retryable("once")),
                    // Any other error (here a JSON one) is retryable.
                    ("s2", 1) => Err(serde_json::from_str::<u8>("x").unwrap_err().into()),
                    _ => Ok(json!(step.attempt)),
                }
            })
            .build();
        let report = worker.run_until_idle(RUN_LIMIT).await.unwrap();
        assert_eq!((report.completed, report.failed), (2, 3), "{store}");
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Error, "{store}");
        let s0 = view.step("s0").unwrap();
        assert_eq!((s0.status, s0.attempts), (StepState::Error, 1), "{store}");
        assert_eq!(view.step("s1").unwrap().result, Some(json!(2)), "{store}");
        assert_eq!(view.step("s2").unwrap().result, Some(json!(2)), "{store}");
    }
}

per_store! {
    async fn stop_requested_before_run_gets_going_is_not_lost(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[independent(1)]).await else {
            return;
        };
        create(&engine, NewTask::new("w", "many")).await;
        let worker = worker_answering(&engine, &["h"], json!(1));
        // On this single-threaded runtime the spawned run has not started when stop is called.
        let run = spawn_run(&worker);
        worker.stop();
        let report = finished(run, "run returns").await;
        assert!(!report.idle, "{store}");
    }
}

per_store! {
    async fn a_stopped_worker_can_run_again(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[independent(2)]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("w", "many")).await;
        let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
        let worker = Worker::builder(engine.clone())
            .handler("h", move |_s: ClaimedStep| {
                let started_tx = started_tx.clone();
                async move {
                    let _ = started_tx.send(());
                    Ok::<_, HandlerError>(json!(1))
                }
            })
            .concurrency(1)
            .build();
        let run = spawn_run(&worker);
        tokio::time::timeout(RUN_LIMIT, started.recv())
            .await
            .expect("a step starts");
        worker.stop();
        finished(run, "run returns").await;

        let report = worker.run_until_idle(RUN_LIMIT).await.unwrap();
        assert!(
            report.idle,
            "{store}: the earlier stop does not end this run"
        );
        assert_eq!(status(&engine, task).await, TaskState::Complete, "{store}");
    }
}

per_store! {
    async fn a_store_error_ends_the_run_only_after_running_steps_have_finished(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[independent(1)]).await else {
            return;
        };
        create(&engine, NewTask::new("w", "many")).await;
        let (started_tx, mut started) = mpsc::channel::<()>(1);
        let release = Arc::new(Semaphore::new(0));
        let finished_handlers = Arc::new(AtomicUsize::new(0));
        let (gate, done) = (release.clone(), finished_handlers.clone());
        let worker = Worker::builder(engine.clone())
            .handler("h", move |_step: ClaimedStep| {
                let (started_tx, gate, done) = (started_tx.clone(), gate.clone(), done.clone());
                async move {
                    let _ = started_tx.send(()).await;
                    let _permit = gate.acquire().await;
                    done.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, HandlerError>(json!("finished"))
                }
            })
            .build();
        let run = spawn_run(&worker);
        started.recv().await.expect("the handler started");
        engine.close();
        release.add_permits(1);
        let result = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the run ends")
            .expect("the run task did not panic");
        assert_err!(result, tasker_core::Error::Closed, "{store}");
        assert_eq!(finished_handlers.load(Ordering::SeqCst), 1, "{store}");
    }
}

/// Two workers share a run: the one that runs out of work while the other still runs a step
/// sees the run end within milliseconds of that step, not a poll interval (100 ms) later.
#[tokio::test(start_paused = true)]
async fn run_until_idle_ends_soon_after_another_workers_last_step() {
    let engine = tasker_core::Engine::open("memory:").await.unwrap();
    register(&engine, &independent(2)).await;
    let task = create(&engine, NewTask::new("w", "many")).await;
    let sleeper = |step: ClaimedStep| async move {
        let ms = if &*step.name == "s0" { 10 } else { 50 };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, HandlerError>(json!(ms))
    };
    let workers: Vec<Worker> = (0..2)
        .map(|_| {
            Worker::builder(engine.clone())
                .concurrency(1)
                .handler("h", sleeper)
                .build()
        })
        .collect();
    let started = tokio::time::Instant::now();
    let runs: Vec<_> = workers
        .into_iter()
        .map(|w| tokio::spawn(async move { w.run_until_idle(RUN_LIMIT).await }))
        .collect();
    let mut ends = Vec::new();
    for run in runs {
        let report = finished(run, "a worker").await;
        assert!(report.idle);
        ends.push(started.elapsed());
    }
    assert_eq!(status(&engine, task).await, TaskState::Complete);
    // Both end right after the 50 ms step, far from 50 ms + a 100 ms poll interval.
    for end in ends {
        assert!(
            end < Duration::from_millis(80),
            "a worker ended after {end:?}"
        );
    }
}
