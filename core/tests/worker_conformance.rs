//! The worker conformance suite, Rust side: what `../shared/API.md` § "Worker semantics"
//! promises, on the real clock and every store. The same cases run from Python
//! (`bindings-python/tests/test_worker_conformance.py`), Ruby
//! (`bindings-ruby/test/worker_conformance_test.rb`) and C (`tests/c/test_conformance.c`).

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tasker_core::store::ClaimRequest;
use tasker_core::worker::{AttemptOutcome, Next, Refused, SessionConfig, WorkerSession};
use tasker_core::{ClaimedStep, HandlerError, NewTask, StepState, TaskState, Worker};

use support::*;

fn spawn_run_until_idle(
    worker: &Worker,
) -> tokio::task::JoinHandle<tasker_core::error::Result<tasker_core::worker::RunReport>> {
    let worker = worker.clone();
    tokio::spawn(async move { worker.run_until_idle(RUN_LIMIT).await })
}

/// A handler that counts its runs and says when each begins, then takes `takes` to return.
fn announcing(
    takes: Duration,
) -> (
    impl tasker_core::StepHandler,
    tokio::sync::mpsc::Receiver<()>,
    Arc<AtomicU32>,
) {
    let (started_tx, started) = tokio::sync::mpsc::channel::<()>(4);
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    let handler = move |_step: ClaimedStep| {
        let (counted, started_tx) = (counted.clone(), started_tx.clone());
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = started_tx.send(()).await;
            tokio::time::sleep(takes).await;
            Ok::<_, HandlerError>(json!("finished"))
        }
    };
    (handler, started, runs)
}

fn one(name: &str, step: Step) -> Template {
    template("conf", name).step(step)
}

async fn trail_events(engine: &tasker_core::Engine, task: tasker_core::TaskId) -> Vec<String> {
    transitions_of(engine, task, Some("s"))
        .await
        .into_iter()
        .map(|t| t.event)
        .collect()
}

per_store! {
    async fn timeout_ms_bounds_an_attempt_and_the_step_runs_again(store) {
        let t = one(
            "timeout",
            step("s").timeout_ms(200).retry(attempts(2).backoff_ms(0)),
        );
        let Some(engine) = real_time_engine_with(store, &[t]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("conf", "timeout")).await;
        let worker = Worker::builder(engine.clone())
            .handler("s", |step: ClaimedStep| async move {
                if step.attempt == 1 {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                Ok::<_, HandlerError>(json!(step.attempt))
            })
            .build();
        let report = worker.run_until_idle(RUN_LIMIT).await.unwrap();
        assert_eq!((report.completed, report.failed), (1, 1), "{store}");
        let view = task_view(&engine, task).await;
        assert_eq!(view.status, TaskState::Complete, "{store}");
        assert_eq!(view.steps[0].result, Some(json!(2)), "{store}");
        assert_eq!(
            first_failure_reason(&engine, task, "s").await.as_deref(),
            Some("timed out after 200 ms"),
            "{store}"
        );
    }
}

per_store! {
    async fn a_host_that_returns_after_the_timeout_is_refused_and_the_attempt_is_failed(store) {
        let t = one(
            "late",
            step("s").timeout_ms(100).retry(attempts(1).backoff_ms(0)),
        );
        let Some(engine) = real_time_engine_with(store, &[t]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("conf", "late")).await;
        let session = WorkerSession::start(engine.clone(), SessionConfig::until_idle(1));
        let Next::Attempt(attempt) = session.next(Duration::from_secs(5)).await else {
            panic!("{store}: no attempt");
        };
        // A sync handler cannot be killed: the host returns late.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let late = session.report(attempt.id(), AttemptOutcome::Complete(json!("late")));
        assert_eq!(late, Err(Refused::TimedOut), "{store}");
        let report = session.finished().await.unwrap();
        assert_eq!((report.completed, report.failed), (0, 1), "{store}");
        let view = task_view(&engine, task).await;
        assert_eq!(view.steps[0].status, StepState::Error, "{store}");
        assert_eq!(
            view.steps[0].error.as_deref(),
            Some("timed out after 100 ms"),
            "{store}"
        );
    }
}

per_store! {
    async fn the_lease_is_renewed_while_a_long_handler_runs(store) {
        let t = one("lease", step("s").timeout_ms(10_000).lease_ms(150));
        let Some(engine) = real_time_engine_with(store, &[t]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("conf", "lease")).await;
        let (handler, mut started, runs) = announcing(Duration::from_millis(700));
        let worker = Worker::builder(engine.clone())
            .handler("s", handler)
            .build();
        // Once the handler runs, another worker keeps claiming (which reclaims expired
        // leases).
        let run = spawn_run_until_idle(&worker);
        started.recv().await.unwrap();
        let rival = {
            let engine = engine.clone();
            tokio::spawn(async move {
                let request = ClaimRequest {
                    worker_id: "rival".into(),
                    handlers: None,
                    limit: 1,
                };
                let mut got = Vec::new();
                for _ in 0..20 {
                    got.extend(engine.claim(&request).await.unwrap());
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
                got
            })
        };
        let report = finished(run, &store.to_string()).await;
        assert!(
            rival.await.unwrap().is_empty(),
            "{store}: the rival got the step"
        );
        assert_eq!(report.completed, 1, "{store}");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{store}");
        let view = task_view(&engine, task).await;
        assert_eq!(view.steps[0].attempts, 1, "{store}");
        assert!(
            !trail_events(&engine, task)
                .await
                .contains(&"lease_expired".to_owned()),
            "{store}"
        );
    }
}

per_store! {
    async fn a_dead_workers_step_comes_back_within_a_few_leases(store) {
        let t = one(
            "dead",
            step("s")
                .timeout_ms(10_000)
                .lease_ms(200)
                .retry(attempts(3).backoff_ms(0)),
        );
        let Some(engine) = real_time_engine_with(store, &[t]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("conf", "dead")).await;
        // A worker whose process died right after its claim: it never renews nor reports.
        let dead = engine
            .claim(&ClaimRequest {
                worker_id: "dead".into(),
                handlers: None,
                limit: 1,
            })
            .await
            .unwrap();
        assert_eq!(dead.len(), 1, "{store}");
        let started = Instant::now();
        let report = worker_answering(&engine, &["s"], json!("recovered"))
            .run_until_idle(RUN_LIMIT)
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(report.completed, 1, "{store}");
        assert!(
            took < Duration::from_millis(800),
            "{store}: came back after {took:?}, more than 4 leases"
        );
        let view = task_view(&engine, task).await;
        assert_eq!(
            (view.status, view.steps[0].attempts),
            (TaskState::Complete, 2),
            "{store}"
        );
        assert!(trail_events(&engine, task)
            .await
            .contains(&"lease_expired".to_owned()));
    }
}

per_store! {
    async fn stop_drains_running_handlers_before_returning(store) {
        let t = one("drain", step("s"));
        let Some(engine) = real_time_engine_with(store, &[t]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("conf", "drain")).await;
        let (handler, mut started, _) = announcing(Duration::from_millis(300));
        let worker = Worker::builder(engine.clone())
            .handler("s", handler)
            .build();
        let run = spawn_run(&worker);
        started.recv().await.unwrap();
        worker.stop();
        let report = finished(run, &store.to_string()).await;
        assert_eq!((report.completed, report.released), (1, 0), "{store}");
        assert_eq!(status(&engine, task).await, TaskState::Complete, "{store}");
    }
}

per_store! {
    async fn what_outlives_the_drain_timeout_is_released_without_counting_the_attempt(store) {
        let t = one("release", step("s"));
        let Some(engine) = real_time_engine_with(store, &[t]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("conf", "release")).await;
        let (handler, mut started, _) = announcing(Duration::from_secs(30));
        let worker = Worker::builder(engine.clone())
            .drain_timeout(Duration::from_millis(100))
            .handler("s", handler)
            .build();
        let run = spawn_run(&worker);
        started.recv().await.unwrap();
        let stopping = Instant::now();
        worker.stop();
        let report = finished(run, &store.to_string()).await;
        assert!(stopping.elapsed() < Duration::from_secs(5), "{store}");
        assert_eq!((report.completed, report.released), (0, 1), "{store}");
        let view = task_view(&engine, task).await;
        assert_eq!(
            (view.steps[0].status, view.steps[0].attempts),
            (StepState::Pending, 0),
            "{store}: released, the attempt not counted"
        );
        assert!(trail_events(&engine, task)
            .await
            .contains(&"release".to_owned()));
        // The next worker runs it as attempt 1.
        let again = claim_one(&engine, "s").await;
        assert_eq!(again.attempt, 1, "{store}");
    }
}

per_store! {
    async fn dropping_a_run_future_releases_its_steps(store) {
        let t = one("dropped", step("s").retry(attempts(1)));
        let Some(engine) = real_time_engine_with(store, &[t]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("conf", "dropped")).await;
        let (handler, mut started, _) = announcing(Duration::from_secs(3600));
        let worker = Worker::builder(engine.clone())
            .handler("s", handler)
            .build();
        let run = spawn_run(&worker);
        started.recv().await.unwrap();
        run.abort();
        let _ = run.await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let view = task_view(&engine, task).await;
            if view.steps[0].status == StepState::Pending {
                assert_eq!(view.steps[0].attempts, 0, "{store}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{store}: never released: {view:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A max_attempts: 1 step still has its one attempt.
        let again = claim_one(&engine, "s").await;
        assert_eq!((again.attempt, again.max_attempts), (1, 1), "{store}");
    }
}

per_store! {
    async fn a_claim_lost_to_a_cancel_is_counted_lost(store) {
        let t = one("lost", step("s"));
        let Some(engine) = real_time_engine_with(store, &[t]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("conf", "lost")).await;
        let canceller = engine.clone();
        let worker = Worker::builder(engine.clone())
            .handler("s", move |step: ClaimedStep| {
                let engine = canceller.clone();
                async move {
                    engine.cancel_task(step.task_id()).await.unwrap();
                    Ok::<_, HandlerError>(json!("too late"))
                }
            })
            .build();
        let report = worker.run_until_idle(RUN_LIMIT).await.unwrap();
        assert_eq!((report.completed, report.lost), (0, 1), "{store}");
        assert_eq!(status(&engine, task).await, TaskState::Cancelled, "{store}");
    }
}

per_store! {
    async fn a_store_outage_ends_the_run_only_after_the_running_handlers_reported(store) {
        let t = one("outage", step("s"));
        let Some(engine) = real_time_engine_with(store, &[t]).await else {
            return;
        };
        create(&engine, NewTask::new("conf", "outage")).await;
        let closer = engine.clone();
        let worker = Worker::builder(engine.clone())
            .handler("s", move |_step: ClaimedStep| {
                let engine = closer.clone();
                async move {
                    engine.close();
                    Ok::<_, HandlerError>(json!("done"))
                }
            })
            .build();
        let result = worker.run_until_idle(RUN_LIMIT).await;
        assert_err!(result, tasker_core::Error::Closed, "{store}");
    }
}

/// The PostgreSQL server unreachable for 1.5 s in the middle of a run (every connection cut,
/// new ones refused, by `tests/support/outage_proxy.py`): the worker backs off, claims and
/// reports again once the server is back, and no outcome is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_waited_out_and_no_outcome_is_lost() {
    let Some(url) = postgres_schema().await else {
        eprintln!("skipped: TASKER_TEST_POSTGRES_URL is not set");
        return;
    };
    let proxy = Arc::new(OutageProxy::start(&url, Duration::from_millis(1500)));
    let engine = tasker_core::Engine::open(&proxy.url).await.unwrap();
    register(
        &engine,
        &one("outage", step("first")).step(step("second").after(&["first"])),
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(create(&engine, NewTask::new("conf", "outage")).await);
    }
    let cut = Arc::new(std::sync::Once::new());
    let (cutter, proxied) = (cut.clone(), proxy.clone());
    let worker = Worker::builder(engine.clone())
        .concurrency(4)
        .handler("first", move |_step: ClaimedStep| {
            let (cutter, proxied) = (cutter.clone(), proxied.clone());
            async move {
                cutter.call_once(|| proxied.cut());
                Ok::<_, HandlerError>(json!("first"))
            }
        })
        .handler("second", |_step: ClaimedStep| async {
            Ok::<_, HandlerError>(json!("second"))
        })
        .build();
    let started = Instant::now();
    let report = worker
        .run_until_idle(Duration::from_secs(60))
        .await
        .unwrap();
    assert!(cut.is_completed(), "the outage happened");
    assert_eq!(
        (report.completed, report.lost, report.failed),
        (40, 0, 0),
        "{report:?}"
    );
    assert!(report.idle, "{report:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "the run outlasted the outage"
    );
    for task in tasks {
        assert_eq!(status(&engine, task).await, TaskState::Complete);
    }
    drop(worker);
    engine.close();
    let proxy = Arc::into_inner(proxy).expect("the handlers are gone");
    let (cut_connections, refused) = proxy.finish();
    assert!(cut_connections + refused > 0, "the engine used the proxy");
}
