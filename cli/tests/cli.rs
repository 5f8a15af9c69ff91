//! The `tasker` binary run against a SQLite file and a PostgreSQL schema (when
//! `TASKER_TEST_POSTGRES_URL` is set) that an engine in the test filled: its output, its JSON
//! and its exit codes, including bad URLs, unknown ids and malformed `--result` JSON.

mod common;
#[path = "../../tests/postgres_schema.rs"]
mod postgres_schema;

use std::process::Output;

use common::tasker_command;
use serde_json::{json, Value};
use tasker_core::logs::LogLevel;
use tasker_core::{ClaimedStep, Engine, HandlerError, NewTask, TaskId, Worker};

/// `cli/order`: validate → (charge, reserve) → ship.
const ORDER: &str = r#"
namespace: cli
name: order
version: 1.0.0
description: An order, for the tasker command's tests
steps:
  - name: validate
  - name: charge
    depends_on: [validate]
    retry: { max_attempts: 1 }
  - name: reserve
    depends_on: [validate]
  - name: ship
    depends_on: [charge, reserve]
"#;

/// A Rails Tasker template (`step_templates`, `named_steps`-style keys), for `register`.
const RAILS: &str = r#"
name: refund
namespace_name: cli
version: 0.2.0
task_handler_class: RefundTask
step_templates:
  - name: look_up
    handler_class: LookUp
  - name: pay_back
    handler_class: PayBack
    depends_on_step: look_up
"#;

fn tasker(url: &str, args: &[&str]) -> Output {
    tasker_command(url).args(args).output().expect("run tasker")
}

fn ok(url: &str, args: &[&str]) -> String {
    let out = tasker(url, args);
    assert!(
        out.status.success(),
        "tasker {args:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn json_of(url: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = ok(url, &all);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("tasker {args:?} printed no JSON ({e}): {text}"))
}

/// Exit code and stderr of a run that must fail.
fn fails(url: &str, args: &[&str]) -> (i32, String) {
    let out = tasker(url, args);
    assert!(!out.status.success(), "tasker {args:?} succeeded");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Fills the store of `url` with a worker: one order complete, one failed at `charge` (with a
/// log line).
async fn fill(url: &str) -> (TaskId, TaskId) {
    let engine = Engine::open(url).await.expect("open the store");
    engine.register_template_str(ORDER).await.unwrap();
    let done = engine
        .create_task(NewTask::new("cli", "order"))
        .await
        .unwrap();
    let order = NewTask::new("cli", "order").context(json!({"decline": true}));
    let failed = engine.create_task(order).await.unwrap();
    let ok_step =
        |step: ClaimedStep| async move { Ok::<_, HandlerError>(json!({"ok": &*step.name})) };
    let worker = Worker::builder(engine.clone())
        .handler("validate", ok_step)
        .handler("reserve", ok_step)
        .handler("ship", ok_step)
        .handler("charge", |step: ClaimedStep| async move {
            if step.context["decline"] == json!(true) {
                step.log(LogLevel::Warn, "card declined by the bank");
                return Err(HandlerError::permanent("card declined"));
            }
            Ok(json!({"paid": true}))
        })
        .build();
    let report = worker
        .run_until_idle(std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!((report.completed, report.failed), (6, 1), "{report:?}");
    drop(worker);
    engine.close();
    (done, failed)
}

async fn check_store(url: &str, dir: &std::path::Path) {
    let (done, failed) = fill(url).await;

    // The list, as a table and as JSON, and filtered.
    let text = ok(url, &["tasks"]);
    assert!(
        text.contains(&done.to_string()) && text.contains(&failed.to_string()),
        "{text}"
    );
    assert!(
        text.contains("cli/order 1.0.0") && text.contains("error") && text.contains("complete"),
        "{text}"
    );
    let errors = json_of(url, &["tasks", "--status", "error"]);
    let ids: Vec<&str> = errors
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [failed.to_string()]);
    let (code, err) = fails(url, &["tasks", "--status", "broken"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown task state \"broken\""), "{err}");

    // One task: its steps, error and DAG.
    let text = ok(url, &["show", &failed.to_string()]);
    for want in [
        "validate",
        "charge",
        "reserve",
        "ship",
        "card declined",
        "DAG",
        "← charge, reserve",
    ] {
        assert!(text.contains(want), "show lacks {want:?}:\n{text}");
    }
    let view = json_of(url, &["show", &done.to_string()]);
    assert_eq!(view["status"], "complete");
    assert_eq!(view["steps"].as_array().unwrap().len(), 4);

    // The drawings.
    let svg = ok(url, &["graph", &failed.to_string(), "--format", "svg"]);
    assert!(svg.starts_with("<svg"), "{svg}");
    assert_eq!(svg.matches("<g class=\"step\"").count(), 4, "{svg}");
    assert!(
        svg.contains("data-step=\"charge\" data-status=\"error\""),
        "{svg}"
    );
    let dot = ok(url, &["graph", &done.to_string()]);
    assert!(
        dot.starts_with("digraph") && dot.contains("\"validate\" -> \"charge\";"),
        "{dot}"
    );
    let mermaid = ok(url, &["graph", &done.to_string(), "--format", "mermaid"]);
    assert!(
        mermaid.starts_with("flowchart LR") && mermaid.contains("s0 --> s1"),
        "{mermaid}"
    );

    // The failed attempt's log line.
    let logs = ok(url, &["logs", &failed.to_string(), "--step", "charge"]);
    assert!(
        logs.contains("charge#1 warn  card declined by the bank"),
        "{logs}"
    );
    let (code, err) = fails(url, &["logs", &failed.to_string(), "--step", "nope"]);
    assert_eq!(code, 1, "{err}");

    // Unknown and malformed ids, malformed --result.
    let unknown = TaskId::new().to_string();
    let (code, err) = fails(url, &["show", &unknown]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&unknown), "{err}");
    let (code, err) = fails(url, &["show", "not-an-id"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("\"not-an-id\" is not a task id"), "{err}");
    let (code, err) = fails(
        url,
        &[
            "resolve",
            &failed.to_string(),
            "charge",
            "--result",
            "{\"paid\": tru",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--result is not JSON"), "{err}");
    let (code, err) = fails(url, &["resolve", &unknown, "charge", "--result", "1"]);
    assert_eq!(code, 1, "{err}");
    // A finished task cannot be paused: refused, exit 2, the store unchanged.
    let (code, err) = fails(url, &["pause", &done.to_string()]);
    assert_eq!(code, 2, "{err}");

    // The operator's acts.
    let retried = json_of(url, &["retry", &failed.to_string()]);
    assert_eq!(retried["status"], "in_progress");
    let text = ok(url, &["pause", &failed.to_string()]);
    assert!(text.contains("paused; it is paused"), "{text}");
    ok(url, &["resume", &failed.to_string()]);
    let text = ok(
        url,
        &[
            "resolve",
            &failed.to_string(),
            "charge",
            "--result",
            "{\"paid\": true}",
        ],
    );
    assert!(text.contains("step charge resolved"), "{text}");
    let view = json_of(url, &["show", &failed.to_string()]);
    let charge = view["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "charge")
        .unwrap();
    assert_eq!(charge["status"], "resolved_manually");
    assert_eq!(charge["result"], json!({"paid": true}));

    // Templates: listed, and one in Rails Tasker's format registered from a file.
    let file = dir.join("refund.yaml");
    std::fs::write(&file, RAILS).unwrap();
    let text = ok(url, &["register", file.to_str().unwrap()]);
    assert!(
        text.contains("registered cli/refund 0.2.0 (2 steps, rails format)"),
        "{text}"
    );
    let templates = json_of(url, &["templates"]);
    let names: Vec<(&str, &str, u64)> = templates
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap(),
                t["version"].as_str().unwrap(),
                t["steps"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(names, [("order", "1.0.0", 4), ("refund", "0.2.0", 2)]);
    let missing = dir.join("missing.yaml");
    let (code, err) = fails(url, &["register", missing.to_str().unwrap()]);
    assert_eq!((code, err.contains("cannot read")), (2, true), "{err}");

    // Counts.
    let stats = json_of(url, &["stats"]);
    assert_eq!(stats["tasks"]["complete"], 1, "{stats}");
    assert_eq!(stats["tasks"]["in_progress"], 1, "{stats}");
    let metrics = ok(url, &["metrics"]);
    assert!(
        metrics.contains("# TYPE") && metrics.contains("tasker_"),
        "{metrics}"
    );
    assert!(json_of(url, &["schedules"]).as_array().unwrap().is_empty());

    // Purge: nothing finished before 2000; the complete task before 2100.
    assert_eq!(
        json_of(url, &["purge", "--finished-before", "2000-01-01T00:00:00Z"])["purged"],
        0
    );
    let (code, err) = fails(url, &["purge", "--finished-before", "soon"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(
        json_of(
            url,
            &[
                "purge",
                "--finished-before",
                "2100-01-01T00:00:00Z",
                "--status",
                "complete"
            ]
        )["purged"],
        1
    );
    let (code, _) = fails(url, &["show", &done.to_string()]);
    assert_eq!(code, 1);
}

#[tokio::test]
async fn the_command_reads_and_acts_on_a_sqlite_store() {
    let dir = tempdir();
    let url = format!("sqlite://{}", dir.join("tasker.db").display());
    check_store(&url, &dir).await;
    // Tables fit the width they are given.
    let out = tasker_command(&url)
        .arg("templates")
        .env("COLUMNS", "50")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("refund"), "{text}");
    for line in text.lines() {
        assert!(
            line.chars().count() <= 50,
            "a line of {} characters: {line:?}",
            line.chars().count()
        );
    }
}

#[tokio::test]
async fn the_command_reads_and_acts_on_a_postgres_store() {
    let Some(url) = postgres_schema::postgres_schema().await else {
        eprintln!("skipped: TASKER_TEST_POSTGRES_URL is not set");
        return;
    };
    check_store(&url, &tempdir()).await;
}

#[tokio::test]
async fn bad_urls_and_usage_are_refused_with_their_codes() {
    let dir = tempdir();
    let missing = format!("sqlite://{}", dir.join("none.db").display());
    let (code, err) = fails(&missing, &["tasks"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("no SQLite database at"), "{err}");
    assert!(!dir.join("none.db").exists(), "a read made no file");
    // migrate makes it.
    assert!(ok(&missing, &["migrate"]).contains("migrated"));
    assert!(ok(&missing, &["tasks"]).contains("0 task(s)"));
    let (code, err) = fails("nosuch://where", &["tasks"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nosuch://where"), "{err}");
    let (code, err) = fails(
        "postgres://postgres@127.0.0.1:1/none",
        &["--connect-timeout", "2", "tasks"],
    );
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("cannot open postgres://postgres@127.0.0.1:1/none"),
        "{err}"
    );
    let (code, err) = fails(&missing, &["tasks", "--limit", "many"]);
    assert_eq!(code, 2, "{err}");
    let (code, _) = fails(&missing, &["frobnicate"]);
    assert_eq!(code, 2);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tasker-cli-{}", TaskId::new()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn watch_follows_tasks_until_they_finish() {
    let dir = tempdir();
    let url = format!("sqlite://{}", dir.join("tasker.db").display());
    let engine = Engine::open(&url).await.unwrap();
    engine.register_template_str(ORDER).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            engine
                .create_task(NewTask::new("cli", "order"))
                .await
                .unwrap(),
        );
    }
    // Not a terminal: a JSON line per change.
    let watcher = tasker_command(&url)
        .args(["--json", "watch", "--until-idle", "--interval-ms", "20"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let slow = |step: ClaimedStep| async move {
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        Ok::<_, HandlerError>(json!(&*step.name))
    };
    let worker = Worker::builder(engine.clone())
        .handler("validate", slow)
        .handler("charge", slow)
        .handler("reserve", slow)
        .handler("ship", slow)
        .concurrency(1)
        .build();
    let report = worker
        .run_until_idle(std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(report.completed, 12, "{report:?}");
    let out = tokio::task::spawn_blocking(move || watcher.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for id in &ids {
        let seen: Vec<&Value> = lines
            .iter()
            .filter(|l| l["task_id"] == id.to_string())
            .collect();
        assert!(seen.len() >= 3, "task {id}: {seen:?}");
        assert_eq!(
            (seen[0]["status"].as_str(), seen[0]["finished"].as_u64()),
            (Some("pending"), Some(0)),
            "{seen:?}"
        );
        let last = seen.last().unwrap();
        assert_eq!(
            (
                last["status"].as_str(),
                last["finished"].as_u64(),
                last["total"].as_u64()
            ),
            (Some("complete"), Some(4), Some(4)),
            "{seen:?}"
        );
        let counts: Vec<u64> = seen
            .iter()
            .map(|l| l["finished"].as_u64().unwrap())
            .collect();
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    }
    // One finished task: one line, then done; an unknown one is not found.
    let text = ok(&url, &["watch", &ids[0].to_string()]);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("cli/order 4/4 complete"), "{text}");
    let (code, _) = fails(&url, &["watch", &TaskId::new().to_string()]);
    assert_eq!(code, 1);
    drop(worker);
    engine.close();
}
