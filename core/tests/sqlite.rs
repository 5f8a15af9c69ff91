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
