//! The SQLite store keeps everything across a reopen of its file.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tasker_core::{Engine, ManualClock, NewTask, StepState, TaskState};

use support::*;

async fn open(path: &std::path::Path, clock: &ManualClock) -> Engine {
    Engine::builder()
        .url(format!("sqlite://{}", path.display()))
        .clock(Arc::new(clock.clone()))
        .build()
        .await
        .expect("open the SQLite file")
}

#[tokio::test]
async fn a_reopened_sqlite_file_finishes_the_tasks_it_holds() {
    let dir = std::env::temp_dir().join(format!("tasker-reopen-{}", tasker_core::TaskId::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("tasker.db");
    let clock = ManualClock::new();
    let chain = template("re", "open")
        .default_retry(attempts(3).backoff_ms(0))
        .steps(chain_of("s", 3, "h"));

    let first = open(&path, &clock).await;
    register(&first, &chain).await;
    let done = create(&first, NewTask::new("re", "open").idempotency_key("k1")).await;
    let half = create(&first, NewTask::new("re", "open").context(json!({"n": 2}))).await;
    complete_in_order(&first, &["s0", "s1", "s2", "s0"]).await;
    // A worker claims s1 of the second task and dies with the process.
    let lost = claim_one(&first, "s1").await;
    first.close();
    drop(first);

    let second = open(&path, &clock).await;
    assert_eq!(status(&second, done).await, TaskState::Complete);
    let view = task_view(&second, half).await;
    assert_eq!(view.context, json!({"n": 2}));
    assert_eq!(view.step("s0").unwrap().result, Some(json!("s0")));
    assert_eq!(view.step("s1").unwrap().status, StepState::InProgress);
    // The template and the idempotency key survived too.
    let again = create(&second, NewTask::new("re", "open").idempotency_key("k1")).await;
    assert_eq!(again, done);

    clock.advance(Duration::from_millis(lost.timeout_ms + 1));
    let report = worker_answering(&second, &["h"], json!("again"))
        .run_until_idle(Duration::from_secs(10))
        .await
        .unwrap();
    assert!(report.idle);
    let view = task_view(&second, half).await;
    assert_eq!(view.status, TaskState::Complete);
    assert_eq!(
        view.step("s1").unwrap().attempts,
        2,
        "the lost attempt counts"
    );
    assert!(second.transitions(half).await.unwrap().len() > 8);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_path_that_cannot_be_opened_is_a_store_error() {
    let err = Engine::open("sqlite:///nonexistent-dir/for/sure/tasker.db")
        .await
        .unwrap_err();
    assert!(
        matches!(err, tasker_core::Error::Store(ref e) if e.kind == tasker_core::StoreErrorKind::Unavailable),
        "{err}"
    );
}

#[tokio::test]
async fn migrating_an_up_to_date_database_again_is_a_no_op_and_registration_fills_the_catalogue() {
    let dir = std::env::temp_dir().join(format!("tasker-migrate-{}", tasker_core::TaskId::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("tasker.db").display());
    let engine = Engine::open(&url).await.unwrap();
    engine.migrate().await.unwrap();
    register(
        &engine,
        &template("cat", "alogue").steps(chain_of("s", 3, "h")),
    )
    .await;
    engine.close();

    use sqlx::{Connection, Row};
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let namespaces: Vec<String> = sqlx::query("SELECT name FROM tasker_task_namespaces")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("name"))
        .collect();
    assert_eq!(namespaces, vec!["cat"]);
    let steps: Vec<(String, String)> =
        sqlx::query("SELECT step_name, handler FROM tasker_named_steps ORDER BY position")
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get("step_name"), r.get("handler")))
            .collect();
    assert_eq!(steps.len(), 3);
    assert_eq!(steps[0], ("s0".to_owned(), "h".to_owned()));
    let _ = std::fs::remove_dir_all(dir);
}

/// Two engines on one database (two processes' worth of cached task aggregates): each sees the
/// other's writes, because a cached task is reused only while its rows keep the revision it was
/// cached at. On SQLite (one file) and, when the test server is there, PostgreSQL.
#[tokio::test]
async fn two_engines_on_one_database_see_each_others_writes() {
    let file = std::env::temp_dir().join(format!("tasker-two-{}.db", tasker_core::TaskId::new()));
    let mut urls = vec![format!("sqlite://{}", file.display())];
    urls.extend(postgres_schema().await);
    let clock = ManualClock::new();
    let chain = template("two", "engines")
        .default_retry(attempts(3).backoff_ms(0))
        .steps(chain_of("s", 3, "h"));
    for url in urls {
        let open = |url: String| {
            let clock = Arc::new(clock.clone());
            async move {
                Engine::builder()
                    .url(url)
                    .clock(clock)
                    .build()
                    .await
                    .unwrap()
            }
        };
        let (a, b) = (open(url.clone()).await, open(url.clone()).await);
        register(&a, &chain).await;
        let task = create(&a, NewTask::new("two", "engines")).await;

        let s0 = claim_one(&a, "s0").await; // a caches the task with s0 running
        complete(&b, &s0, json!(0)).await; // b writes behind a's back
        let view = task_view(&a, task).await; // a running task: a reads its rows again
        assert_eq!(
            view.step("s0").unwrap().status,
            StepState::Complete,
            "{url}"
        );
        let s1 = claim_one(&a, "s1").await; // a must see s0 complete, or s1 is not claimable
        assert_eq!(s1.inputs.get("s0"), Some(&json!(0)), "{url}");
        complete(&a, &s1, json!(1)).await;
        let s2 = claim_one(&b, "s2").await; // b's own cached copy is stale now
        complete(&b, &s2, json!(2)).await;

        for engine in [&a, &b] {
            let view = task_view(engine, task).await;
            assert_eq!(view.status, TaskState::Complete, "{url}");
            assert_eq!(view.step("s2").unwrap().result, Some(json!(2)), "{url}");
            assert_eq!(
                view.step("s0").unwrap().status,
                StepState::Complete,
                "{url}"
            );
        }
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
}

/// A write by an engine whose cached copy of a task is out of date never undoes another
/// engine's: on PostgreSQL the task's row is read again under its lock (its revision tells),
/// on SQLite a group reads again once another connection has written (`data_version`).
#[tokio::test]
async fn a_stale_cached_copy_never_overwrites_another_engines_write() {
    for (name, url) in sql_store_urls().await {
        let (a, b) = (
            Engine::open(&url).await.unwrap(),
            Engine::open(&url).await.unwrap(),
        );
        let pair =
            template("stale", "pair").steps(vec![step("x").handler("h"), step("y").handler("h")]);
        register(&a, &pair).await;
        let task = create(&a, NewTask::new("stale", "pair")).await;
        let x = claim_one(&a, "x").await; // a caches the task with x running
        let y = claim_one(&b, "y").await; // b claims y behind a's back
        complete(&a, &x, json!("x")).await; // a's cached copy has y still pending
        let view = task_view(&b, task).await;
        assert_eq!(
            view.step("x").unwrap().status,
            StepState::Complete,
            "{name}"
        );
        assert_eq!(
            view.step("y").unwrap().status,
            StepState::InProgress,
            "{name}: y's claim kept"
        );
        complete(&b, &y, json!("y")).await;
        for engine in [&a, &b] {
            let view = task_view(engine, task).await;
            assert_eq!(view.status, TaskState::Complete, "{name}");
            assert_eq!(view.step("y").unwrap().attempts, 1, "{name}: y ran once");
        }
    }
}

/// Engines racing for the same ready steps never claim one twice, and every step is claimed:
/// on PostgreSQL each skips the tasks another holds, on SQLite their groups take turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_racing_for_steps_never_claim_one_twice() {
    for (name, url) in sql_store_urls().await {
        let engines: Vec<Engine> = futures::future::join_all((0..3).map(|_| Engine::open(&url)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let one = template("race", "one").step(step("s").handler("h"));
        register(&engines[0], &one).await;
        for _ in 0..60 {
            create(&engines[0], NewTask::new("race", "one")).await;
        }
        let claims = engines.iter().map(|e| async move {
            let mut mine = Vec::new();
            loop {
                let got = e.claim(&any_handler(4)).await.unwrap();
                if got.is_empty() {
                    break;
                }
                mine.extend(got.into_iter().map(|c| (c.step_id, c.attempt)));
            }
            mine
        });
        let all: Vec<_> = futures::future::join_all(claims)
            .await
            .into_iter()
            .flatten()
            .collect();
        let distinct: std::collections::HashSet<_> = all.iter().map(|(id, _)| *id).collect();
        assert_eq!(all.len(), 60, "{name}: every step claimed once, none twice");
        assert_eq!(distinct.len(), 60, "{name}");
        assert!(all.iter().all(|(_, attempt)| *attempt == 1), "{name}");
    }
}

/// Once another connection has written, nothing this writer cached before is taken as current
/// — not only the tasks of the group that noticed: a later group that finds the data version
/// unchanged (since that group) still reads a task another engine changed.
#[tokio::test]
async fn a_write_noticed_by_one_group_is_not_forgotten_by_the_next() {
    let file = std::env::temp_dir().join(format!("tasker-epoch-{}.db", tasker_core::TaskId::new()));
    let url = format!("sqlite://{}", file.display());
    let (a, b) = (
        Engine::open(&url).await.unwrap(),
        Engine::open(&url).await.unwrap(),
    );
    register(&a, &template("epoch", "chain").steps(chain_of("s", 2, "h"))).await;
    register(
        &a,
        &template("epoch", "other").step(step("o").handler("other")),
    )
    .await;
    let x = create(&a, NewTask::new("epoch", "chain")).await;
    let s0 = claim_one(&a, "s0").await; // a's writer caches x, s0 running
    complete(&b, &s0, json!(0)).await; // b completes s0: s1 is ready
    create(&a, NewTask::new("epoch", "other")).await;
    // A group of a's that reads (and sees b's write) but does not touch x.
    let o = a.claim(&only_handlers(&["other"], 5)).await.unwrap();
    assert_eq!(o.len(), 1);
    // The next group finds the version as the last one left it: x must still be read again.
    let s1 = a.claim(&only_handlers(&["h"], 5)).await.unwrap();
    assert_eq!(s1.len(), 1, "s1 is ready in the database");
    assert_eq!((s1[0].step_id.task, &*s1[0].name), (x, "s1"));
    assert_eq!(s1[0].inputs.get("s0"), Some(&json!(0)));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
}

/// `synchronous` is chosen in the URL: `normal` by default, `full` (or `extra`) for whoever
/// wants each commit on disk before it returns; anything else is refused, naming the choices.
#[tokio::test]
async fn synchronous_is_chosen_in_the_url() {
    let dir = std::env::temp_dir().join(format!("tasker-sync-{}", tasker_core::TaskId::new()));
    std::fs::create_dir_all(&dir).unwrap();
    for level in ["full", "EXTRA", "normal"] {
        let url = format!(
            "sqlite://{}?synchronous={level}",
            dir.join(format!("{level}.db")).display()
        );
        let engine = Engine::open(&url).await.unwrap();
        register(&engine, &template("s", "one").step(step("a"))).await;
        let task = create(&engine, NewTask::new("s", "one")).await;
        let c = claim_one(&engine, "a").await;
        engine
            .complete(c.step_id, c.attempt, json!(level))
            .await
            .unwrap();
        assert_eq!(status(&engine, task).await, TaskState::Complete, "{level}");
    }
    let bad = format!("sqlite://{}?synchronous=off", dir.join("off.db").display());
    let err = Engine::open(&bad).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("synchronous in the store URL must be normal, full or extra"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Views read side by side on one engine (a dashboard's page reads four at once), some cut
/// short when another fails (their futures dropped wherever they were), while other engines
/// write: no connection is handed out still in a cut-short read's transaction.
#[tokio::test]
async fn reads_cut_short_leave_no_connection_in_a_transaction() {
    let file = std::env::temp_dir().join(format!("tasker-views-{}.db", tasker_core::TaskId::new()));
    cut_short(&format!("sqlite://{}", file.display()), true).await;
    // In memory the database lives in its one connection: rolled back, not closed.
    cut_short("sqlite::memory:", false).await;
}

async fn cut_short(url: &str, others: bool) {
    let engine = tasker_core::Engine::open(url).await.unwrap();
    engine
        .register_template_str("namespace: v\nname: t\nversion: 1.0.0\nsteps:\n  - name: a\n  - name: b\n    depends_on: [a]\n")
        .await
        .unwrap();
    let id = engine
        .create_task(tasker_core::NewTask::new("v", "t"))
        .await
        .unwrap();
    let url = url.to_owned();
    let other = tokio::spawn(async move {
        for _ in 0..(if others { 20 } else { 0 }) {
            let e = tasker_core::Engine::open(&url).await.unwrap();
            e.create_task(tasker_core::NewTask::new("v", "t"))
                .await
                .unwrap();
            e.close();
        }
    });
    // Reads cut short: the first to fail drops the others wherever they are.
    for _ in 0..200 {
        let unknown = tasker_core::TaskId::new();
        let cut = tokio::try_join!(
            engine.task(unknown),
            engine.graph(id),
            engine.logs(id, None),
            engine.transitions(id)
        );
        assert!(cut.is_err());
    }
    for _ in 0..200 {
        let (task, graph, logs, moves) = tokio::join!(
            engine.task(id),
            engine.graph(id),
            engine.logs(id, None),
            engine.transitions(id)
        );
        task.unwrap();
        graph.unwrap();
        logs.unwrap();
        moves.unwrap();
    }
    other.await.unwrap();
}
