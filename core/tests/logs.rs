//! Step logs on every store: what handlers log through `step.log` is kept per attempt
//! (bounded), written with the attempt's report — a failure, a retry's success, a timeout —
//! read back with `Engine::logs`, and purged with its task.

mod support;

use std::time::Duration;

use serde_json::json;
use tasker_core::logs::{LogLevel, LogView, MAX_LINES, MAX_LINE_BYTES};
use tasker_core::{ClaimedStep, Engine, Error, HandlerError, NewTask, TaskId, TaskState, Worker};

use support::*;

/// `logs/t`: `noisy` fails once then succeeds, `chatty` logs past the bounds, `slow` times
/// out.
const LOGGED: &str = r#"
namespace: logs
name: t
version: 1.0.0
steps:
  - name: noisy
    retry: { max_attempts: 2 }
  - name: chatty
    depends_on: [noisy]
  - name: slow
    timeout_ms: 300
    retry: { max_attempts: 1 }
"#;

fn worker(engine: &Engine) -> Worker {
    Worker::builder(engine.clone())
        .handler("noisy", |step: ClaimedStep| async move {
            if step.attempt == 1 {
                step.log(LogLevel::Info, "trying");
                step.log(LogLevel::Error, "the card was declined");
                return Err(HandlerError::retry_after(
                    "declined",
                    Duration::from_millis(1),
                ));
            }
            step.log(LogLevel::Warn, "second try");
            Ok(json!("charged"))
        })
        .handler("chatty", |step: ClaimedStep| async move {
            for i in 0..150 {
                step.log(LogLevel::Debug, &format!("line {i}"));
            }
            step.log(LogLevel::Info, &"é".repeat(3_000));
            Ok::<_, HandlerError>(json!(null))
        })
        .handler("slow", |step: ClaimedStep| async move {
            step.log(LogLevel::Info, "started");
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok::<_, HandlerError>(json!(null))
        })
        .concurrency(4)
        .build()
}

fn lines(logs: &[LogView]) -> Vec<(&str, u32, LogLevel, &str)> {
    logs.iter()
        .map(|l| (&*l.step, l.attempt, l.level, &*l.message))
        .collect()
}

async fn run(store: StoreKind) -> Option<(Engine, TaskId)> {
    let url = store_url(store).await?;
    let engine = Engine::open(&url).await.unwrap();
    engine.register_template_str(LOGGED).await.unwrap();
    let task = create(&engine, NewTask::new("logs", "t")).await;
    let report = worker(&engine)
        .run_until_idle(Duration::from_secs(30))
        .await
        .unwrap();
    assert!(report.idle, "{store}: {report:?}");
    assert_eq!(
        status(&engine, task).await,
        TaskState::Error,
        "{store}: slow timed out"
    );
    Some((engine, task))
}

per_store! {
    async fn each_attempt_keeps_its_lines_written_with_its_report(store) {
        let Some((engine, task)) = run(store).await else { return };
        let noisy = engine.logs(task, Some("noisy")).await.unwrap();
        assert_eq!(
            lines(&noisy),
            [
                ("noisy", 1, LogLevel::Info, "trying"),
                ("noisy", 1, LogLevel::Error, "the card was declined"),
                ("noisy", 2, LogLevel::Warn, "second try"),
            ],
            "{store}"
        );
        assert!(noisy[0].at <= noisy[1].at && noisy[1].at <= noisy[2].at, "{store}");
        // The timed-out attempt's lines went with its failure.
        let slow = engine.logs(task, Some("slow")).await.unwrap();
        assert_eq!(lines(&slow), [("slow", 1, LogLevel::Info, "started")], "{store}");
        // Every step's, by step (in template order), attempt and line.
        let all = engine.logs(task, None).await.unwrap();
        let steps: Vec<&str> = all.iter().map(|l| &*l.step).collect();
        let mut want = vec!["noisy"; 3];
        want.extend(["chatty"; MAX_LINES]);
        want.push("slow");
        assert_eq!(steps, want, "{store}");
        assert_eq!(all.iter().map(|l| l.step_index).max(), Some(2), "{store}");
    }
}

per_store! {
    async fn an_attempt_keeps_its_latest_lines_each_cut_to_a_kilobyte(store) {
        let Some((engine, task)) = run(store).await else { return };
        let chatty = engine.logs(task, Some("chatty")).await.unwrap();
        assert_eq!(chatty.len(), MAX_LINES, "{store}");
        // 151 lines: the first 52 gave way, the marker says so in the place of the first kept.
        assert_eq!(chatty[0].message, "52 earlier lines dropped", "{store}");
        assert_eq!(chatty[0].level, LogLevel::Warn, "{store}");
        assert_eq!(chatty[1].message, "line 52", "{store}");
        assert_eq!(chatty[98].message, "line 149", "{store}");
        let long = &chatty[99].message;
        assert!(long.len() <= MAX_LINE_BYTES && long.len() > MAX_LINE_BYTES - 8, "{store}: {}", long.len());
        assert!(long.ends_with('…') && long.starts_with("éé"), "{store}");
    }
}

per_store! {
    async fn logs_of_unknown_tasks_or_steps_are_refused_and_purged_with_their_task(store) {
        let Some((engine, task)) = run(store).await else { return };
        let err = engine.logs(task, Some("nope")).await.unwrap_err();
        assert!(matches!(err, Error::StepNotFound { .. }), "{store}: {err}");
        let other = TaskId::new();
        let err = engine.logs(other, None).await.unwrap_err();
        assert!(matches!(err, Error::TaskNotFound(id) if id == other), "{store}: {err}");
        // A task that logged nothing has no lines.
        let quiet = create(&engine, NewTask::new("logs", "t")).await;
        assert!(engine.logs(quiet, None).await.unwrap().is_empty(), "{store}");
        // Purged with its task (on PostgreSQL the lines' foreign key would refuse otherwise).
        let later = engine.now() + chrono::Duration::seconds(1);
        assert_eq!(engine.purge(later, Some(&[TaskState::Error])).await.unwrap(), 1, "{store}");
        let err = engine.logs(task, None).await.unwrap_err();
        assert!(matches!(err, Error::TaskNotFound(_)), "{store}: {err}");
    }
}

per_store! {
    async fn a_report_made_by_hand_is_bounded_too(store) {
        let Some(url) = store_url(store).await else { return };
        let engine = Engine::open(&url).await.unwrap();
        engine.register_template_str(LOGGED).await.unwrap();
        let task = create(&engine, NewTask::new("logs", "t")).await;
        let step = claim_one(&engine, "noisy").await;
        // A step claimed by hand has no log of its own: its lines go in the report.
        assert!(!step.log(LogLevel::Info, "dropped"), "{store}");
        let line = |i: usize| tasker_core::logs::LogLine {
            at: engine.now(),
            level: LogLevel::Info,
            message: format!("{i}{}", "x".repeat(if i == MAX_LINES { 5_000 } else { 0 })),
        };
        let report = tasker_core::store::StepReport {
            logs: (0..=MAX_LINES).map(line).collect(),
            ..tasker_core::store::StepReport::new(
                step.step_id,
                step.attempt,
                tasker_core::store::Outcome::Complete(json!(1)),
            )
        };
        let results = engine.report_many(vec![report]).await.unwrap();
        assert!(results[0].is_ok(), "{store}: {results:?}");
        let logs = engine.logs(task, Some("noisy")).await.unwrap();
        assert_eq!(logs.len(), MAX_LINES, "{store}");
        assert_eq!(logs[0].message, "2 earlier lines dropped", "{store}");
        let last = &logs[MAX_LINES - 1].message;
        assert!(last.len() <= MAX_LINE_BYTES && last.starts_with("100xxx") && last.ends_with('…'), "{store}");
    }
}
