//! The limits of `API.md` § "Limits" on every store: what a user controls can neither be stored
//! and then fail to load, nor overflow a counter, nor stop other tasks.

mod support;

use serde_json::{json, Value};
use tasker_core::retry::FailureKind;
use tasker_core::store::{Outcome, StepFailure, StepReport};
use tasker_core::{ClaimedStep, Error, HandlerError, ManualClock, NewTask, TaskState, Worker};

use support::*;

fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = json!({ "k": v });
    }
    v
}

fn single() -> Template {
    template("lim", "single").step(step("s"))
}

per_store! {
    async fn a_context_nested_past_64_levels_is_refused_and_nothing_is_written(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[single()]).await else {
            return;
        };
        let deep = NewTask::new("lim", "single").context(nested(65));
        assert_err!(
            engine.create_task(deep).await,
            Error::InvalidArgument(ref m) if m.contains("the context nests deeper than 64 levels"),
            "{store}"
        );
        let big = NewTask::new("lim", "single").context(json!({"blob": "x".repeat(1 << 20)}));
        assert_err!(
            engine.create_task(big).await,
            Error::InvalidArgument(ref m) if m.contains("larger than 1024 KiB"),
            "{store}"
        );
        let fits = create(&engine, NewTask::new("lim", "single").context(nested(64))).await;
        let listed = engine.list_tasks(&Default::default()).await.unwrap();
        assert_eq!(listed.len(), 1, "{store}: only the task within the limits");
        assert_eq!(listed[0].id, fits);
        // A second engine on the same store reads everything back (what used to fail).
        assert_eq!(claim(&engine, 10).await.len(), 1, "{store}");
    }
}

per_store! {
    async fn a_result_past_the_limits_fails_its_attempt_for_good_and_other_tasks_run(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[single()]).await else {
            return;
        };
        let bad = create(
            &engine,
            NewTask::new("lim", "single").context(json!({"bad": true})),
        )
        .await;
        let good = create(&engine, NewTask::new("lim", "single")).await;
        // Through the engine's own API: refused, the claim still held.
        let claimed = claim(&engine, 10).await;
        assert_eq!(claimed.len(), 2);
        let of = |task| claimed.iter().find(|c| c.task_id() == task).unwrap();
        assert_err!(
            engine.complete(of(bad).step_id, of(bad).attempt, nested(65)).await,
            Error::InvalidArgument(ref m) if m.contains("the result nests deeper than 64"),
            "{store}"
        );
        // Through report_many (what workers use): the attempt fails permanently.
        let reports = vec![
            StepReport {
                step: of(bad).step_id,
                attempt: of(bad).attempt,
                outcome: Outcome::Complete(nested(65)),
                logs: Vec::new(),
            },
            StepReport {
                step: of(good).step_id,
                attempt: of(good).attempt,
                outcome: Outcome::Complete(json!("ok")),
                logs: Vec::new(),
            },
        ];
        let results = engine.report_many(reports).await.unwrap();
        assert!(results.iter().all(Result::is_ok), "{store}: {results:?}");
        assert_eq!(status(&engine, bad).await, TaskState::Error, "{store}");
        assert_eq!(status(&engine, good).await, TaskState::Complete, "{store}");
        let step = task_view(&engine, bad).await.steps.remove(0);
        assert_eq!(
            step.error.as_deref(),
            Some("result refused: the result nests deeper than 64 levels"),
            "{store}"
        );
        // Through report_and_claim (reports and the next claim at once): the same.
        let worse = create(&engine, NewTask::new("lim", "single")).await;
        let claimed = claim(&engine, 10).await;
        let reports = vec![StepReport {
            step: claimed[0].step_id,
            attempt: claimed[0].attempt,
            outcome: Outcome::Complete(nested(65)),
            logs: Vec::new(),
        }];
        let (results, next) = engine
            .report_and_claim(reports, &any_handler(10))
            .await
            .unwrap();
        assert!(results.iter().all(Result::is_ok), "{store}: {results:?}");
        assert!(next.is_empty(), "{store}");
        assert_eq!(status(&engine, worse).await, TaskState::Error, "{store}");
    }
}

per_store! {
    async fn a_workers_deep_result_does_not_stop_the_worker(store) {
        let Some(engine) = real_time_engine_with(store, &[single()]).await else {
            return;
        };
        let bad = create(
            &engine,
            NewTask::new("lim", "single").context(json!({"bad": true})),
        )
        .await;
        let others: Vec<_> = create_many(&engine, 5).await;
        let worker = Worker::builder(engine.clone())
            .handler("s", |step: ClaimedStep| async move {
                let deep = step.context.get("bad").is_some();
                Ok::<_, HandlerError>(if deep { nested(100) } else { json!("ok") })
            })
            .build();
        let report = worker.run_until_idle(RUN_LIMIT).await.unwrap();
        assert_eq!(
            (report.completed, report.failed),
            (5, 1),
            "{store}: {report:?}"
        );
        assert_eq!(status(&engine, bad).await, TaskState::Error, "{store}");
        for task in others {
            assert_eq!(status(&engine, task).await, TaskState::Complete, "{store}");
        }
    }
}

async fn create_many(engine: &tasker_core::Engine, n: usize) -> Vec<tasker_core::TaskId> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(create(engine, NewTask::new("lim", "single")).await);
    }
    ids
}

per_store! {
    async fn error_messages_are_cut_to_4_kib(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[single()]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("lim", "single")).await;
        let c = claim_one(&engine, "s").await;
        let failure = StepFailure {
            message: "é".repeat(10_000),
            kind: FailureKind::Permanent,
        };
        engine.fail(c.step_id, c.attempt, failure).await.unwrap();
        let error = task_view(&engine, task).await.steps[0]
            .error
            .clone()
            .unwrap();
        assert!(
            error.len() <= 4096 && error.ends_with('…'),
            "{store}: {}",
            error.len()
        );
        assert!(error.starts_with("éé"), "{store}");
    }
}

per_store! {
    async fn a_claim_limit_outside_1_to_1000_is_an_invalid_argument(store) {
        let Some(engine) = engine_with(store, ManualClock::new(), &[single()]).await else {
            return;
        };
        for limit in [0, 1001] {
            assert_err!(
                engine.claim(&any_handler(limit)).await,
                Error::InvalidArgument(ref m) if m.contains(&format!("not {limit}")),
                "{store}"
            );
        }
        assert!(engine.claim(&any_handler(1000)).await.is_ok(), "{store}");
    }
}

per_store! {
    async fn retry_task_keeps_the_attempt_budget_in_range(store) {
        let t = template("lim", "budget").step(step("s").retry(attempts(1000)));
        let Some(engine) = engine_with(store, ManualClock::new(), &[t]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("lim", "budget")).await;
        for round in 1..=3u32 {
            let c = claim_one(&engine, "s").await;
            let failure = StepFailure {
                message: "no".into(),
                kind: FailureKind::Permanent,
            };
            engine.fail(c.step_id, c.attempt, failure).await.unwrap();
            assert_eq!(status(&engine, task).await, TaskState::Error, "{store}");
            engine.retry_task(task).await.unwrap();
            let step = task_view(&engine, task).await.steps.remove(0);
            assert_eq!(step.max_attempts, round + 1000, "{store}");
        }
    }
}

/// Rows written by something else than this engine (a bad migration, a hand edit, an older
/// version that let a 127-level context in): each such task is set to `error` ("unreadable:
/// …") and skipped; claims, listings and a worker carry on with the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_rows_cannot_be_read_is_set_to_error_and_the_others_run() {
    use sqlx::Connection;
    for (store, url) in sql_store_urls().await {
        let engine = tasker_core::Engine::open(&url).await.unwrap();
        register(&engine, &single()).await;
        let deep = create(&engine, NewTask::new("lim", "single")).await;
        let broken = create(&engine, NewTask::new("lim", "single")).await;
        let fine = [
            create(&engine, NewTask::new("lim", "single")).await,
            create(&engine, NewTask::new("lim", "single")).await,
        ];
        {
            sqlx::any::install_default_drivers();
            let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
            let nested = format!("{}1{}", "[".repeat(200), "]".repeat(200));
            for (task, context) in [(deep, nested.as_str()), (broken, "{\"broken\":")] {
                sqlx::query("UPDATE tasker_tasks SET context = $1 WHERE task_id = $2")
                    .bind(context)
                    .bind(task.to_string())
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
        }
        // A second engine reads the rows afresh (the first one has them cached).
        let other = tasker_core::Engine::open(&url).await.unwrap();
        // Claims first (the bad tasks' steps are among the ready ones), then the listings.
        let worker = worker_answering(&other, &["s"], json!("ok"));
        let report = worker.run_until_idle(RUN_LIMIT).await.unwrap();
        assert_eq!(
            (report.completed, report.lost),
            (2, 0),
            "{store}: {report:?}"
        );
        for task in fine {
            assert_eq!(status(&other, task).await, TaskState::Complete, "{store}");
        }
        let listed = other.list_tasks(&Default::default()).await.unwrap();
        assert_eq!(listed.len(), 2, "{store}: the readable tasks are listed");
        for bad in [deep, broken] {
            let err = other.task(bad).await.unwrap_err();
            assert!(err.to_string().contains("unreadable"), "{store}: {err}");
            let trail = other.transitions(bad).await.unwrap();
            let last = trail.last().unwrap();
            assert_eq!(last.event, "unreadable", "{store}");
            assert!(
                last.reason
                    .as_deref()
                    .unwrap_or("")
                    .starts_with("unreadable: "),
                "{store}"
            );
        }
        let errors = other
            .list_tasks(&tasker_core::TaskFilter {
                status: Some(TaskState::Error),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(
            errors.is_empty(),
            "{store}: unreadable tasks are not listed"
        );
    }
}

/// PostgreSQL's session timeouts: a row locked by a stuck session makes a write fail after
/// the URL's `lock_timeout` (default 10 s) instead of waiting for ever, and the engine works
/// again once the lock is gone. A malformed value is an invalid argument.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_postgres_session_cannot_stall_the_engine() {
    use sqlx::Connection;
    let Some(url) = postgres_schema().await else {
        eprintln!("skipped: TASKER_TEST_POSTGRES_URL is not set");
        return;
    };
    let bad = format!("{url}&lock_timeout=5s;DROP");
    assert_err!(
        tasker_core::Engine::open(&bad).await,
        Error::InvalidArgument(ref m) if m.contains("lock_timeout"),
        "a malformed timeout"
    );
    let engine = tasker_core::Engine::open(&format!("{url}&lock_timeout=300ms"))
        .await
        .unwrap();
    register(&engine, &single()).await;
    let task = create(&engine, NewTask::new("lim", "single")).await;
    sqlx::any::install_default_drivers();
    let mut stuck = sqlx::AnyConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut stuck).await.unwrap();
    sqlx::query("SELECT task_id FROM tasker_tasks WHERE task_id = $1 FOR UPDATE")
        .bind(task.to_string())
        .fetch_all(&mut stuck)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let blocked = engine.pause_task(task).await;
    assert_err!(
        blocked,
        Error::Store(ref e) if e.kind == tasker_core::StoreErrorKind::Timeout && e.message.contains("lock timeout"),
        "the write gave up, as a timeout"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    sqlx::query("ROLLBACK").execute(&mut stuck).await.unwrap();
    engine.pause_task(task).await.unwrap();
    assert_eq!(status(&engine, task).await, TaskState::Paused);
}

per_store! {
    /// `Duration::MAX` means "no limit" wherever the Rust API takes a duration, and a template's
    /// longest `timeout_ms` / `lease_ms` are a very long time, never an overflow that stops
    /// the worker.
    async fn the_largest_durations_are_accepted_and_nothing_overflows(store) {
        let week = 7 * 24 * 3600 * 1000; // the longest timeout_ms and lease_ms a template may give
        let t = template("lim", "forever").step(step("s").timeout_ms(week).lease_ms(week));
        let Some(engine) = real_time_engine_with(store, &[t]).await else {
            return;
        };
        let task = create(&engine, NewTask::new("lim", "forever")).await;
        let worker = Worker::builder(engine.clone())
            .poll_interval(std::time::Duration::MAX)
            .drain_timeout(std::time::Duration::MAX)
            .handler("s", |_step: ClaimedStep| async {
                Ok::<_, HandlerError>(json!("ok"))
            })
            .build();
        let report = worker
            .run_until_idle(std::time::Duration::MAX)
            .await
            .unwrap();
        assert_eq!(report.completed, 1, "{store}: {report:?}");
        assert_eq!(status(&engine, task).await, TaskState::Complete, "{store}");
        // Nothing is ready: a claim that waits "for ever" waits (and does not overflow).
        let request = any_handler(1);
        let waiting = engine.claim_waiting(&request, std::time::Duration::MAX);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(200), waiting).await;
        assert!(waited.is_err(), "{store}: still waiting");
    }
}

/// A host clock an hour ahead (a badly set machine).
#[derive(Debug)]
struct AnHourAhead;

impl tasker_core::Clock for AnHourAhead {
    fn now(&self) -> tasker_core::Timestamp {
        chrono::Utc::now() + chrono::Duration::hours(1)
    }
    fn is_wall_clock(&self) -> bool {
        true
    }
}

/// On PostgreSQL leases and the reaper follow the database's clock: an engine on a host whose
/// clock runs an hour ahead neither reclaims another host's live lease nor hands out leases
/// that end an hour late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_clock_runs_ahead_does_not_reclaim_live_leases() {
    let Some(url) = postgres_schema().await else {
        eprintln!("skipped: TASKER_TEST_POSTGRES_URL is not set");
        return;
    };
    let honest = tasker_core::Engine::open(&url).await.unwrap();
    register(&honest, &single()).await;
    let ahead = tasker_core::Engine::builder()
        .url(url.as_str())
        .clock(std::sync::Arc::new(AnHourAhead))
        .build()
        .await
        .unwrap();
    let drift = (ahead.now() - honest.now()).num_seconds().abs();
    assert!(
        drift < 5,
        "the engines agree on the time within seconds, not {drift} s"
    );

    create(&honest, NewTask::new("lim", "single")).await;
    let held = claim(&honest, 1).await;
    assert_eq!(held.len(), 1);
    assert_eq!(
        ahead.reclaim_expired().await.unwrap(),
        0,
        "the lease is live"
    );
    create(&ahead, NewTask::new("lim", "single")).await;
    let theirs = claim(&ahead, 1).await;
    let late = (theirs[0].lease_expires_at - held[0].lease_expires_at)
        .num_seconds()
        .abs();
    assert!(
        late < 5,
        "leases from both hosts end at about the same time, not {late} s apart"
    );
}

per_store! {
    async fn nul_characters_are_refused_or_replaced_and_never_fail_other_tasks(store) {
        // PostgreSQL's text columns cannot hold U+0000: what a user writes is refused with a
        // typed error where it is a name or key, and kept with U+FFFD where it is a message.
        let Some(engine) = engine_with(store, ManualClock::new(), &[single()]).await else {
            return;
        };
        let keyed = template("lim", "keyed").step(step("s")).yaml();
        let keyed = keyed.replace("steps:\n", "concurrency: { key: \"c:{{context.id}}\", limit: 1 }\nsteps:\n");
        engine.register_template_str(&keyed).await.unwrap();
        let err = engine
            .register_template_str(&json!({"namespace": "lim\u{0}x", "name": "t", "version": "1.0.0", "steps": [{"name": "s"}]}).to_string())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("NUL"), "{store}: {err}");
        let err = engine
            .create_task(NewTask::new("lim", "single").idempotency_key("a\0b"))
            .await
            .unwrap_err();
        assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("NUL")), "{store}: {err}");
        let err = engine
            .create_task(NewTask::new("lim", "keyed").context(json!({"id": "a\u{0}b"})))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("NUL"), "{store}: {err}");
        // A context, a result and a failure message with NULs, in one batch with another task.
        let tasks = [
            create(&engine, NewTask::new("lim", "single").context(json!({"who": "x\u{0}y"}))).await,
            create(&engine, NewTask::new("lim", "single")).await,
            create(&engine, NewTask::new("lim", "single")).await,
        ];
        let claimed = claim(&engine, 10).await;
        assert_eq!(claimed.len(), 3, "{store}");
        let reports: Vec<StepReport> = claimed
            .iter()
            .enumerate()
            .map(|(i, c)| StepReport {
                step: c.step_id,
                attempt: c.attempt,
                outcome: match i {
                    0 => Outcome::Complete(json!({"echo": "p\u{0}q"})),
                    1 => Outcome::Fail(StepFailure {
                        message: "bad\0byte".into(),
                        kind: FailureKind::Permanent,
                    }),
                    _ => Outcome::Complete(json!(1)),
                },
                logs: vec![tasker_core::logs::LogLine {
                    at: tasker_core::Clock::now(&ManualClock::new()),
                    level: tasker_core::logs::LogLevel::Info,
                    message: "line\0end".into(),
                }],
            })
            .collect();
        for r in engine.report_many(reports).await.unwrap() {
            r.unwrap_or_else(|e| panic!("{store}: {e}"));
        }
        let states: Vec<TaskState> = {
            let mut v = Vec::new();
            for t in &tasks {
                v.push(status(&engine, *t).await);
            }
            v
        };
        assert_eq!(states.iter().filter(|s| **s == TaskState::Complete).count(), 2, "{store}: {states:?}");
        let failed = claimed[1].step_id.task;
        let error = task_view(&engine, failed).await.steps[0].error.clone().unwrap();
        assert_eq!(error, "bad\u{FFFD}byte", "{store}");
        let view = task_view(&engine, claimed[0].step_id.task).await;
        assert_eq!(view.steps[0].result, Some(json!({"echo": "p\u{0}q"})), "{store}: JSON keeps it, escaped");
        let logs = engine.logs(claimed[2].step_id.task, None).await.unwrap();
        assert!(logs.iter().any(|l| l.message == "line\u{FFFD}end"), "{store}: {logs:?}");
    }
}
