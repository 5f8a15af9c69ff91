//! Helpers shared by the cross-crate tests (in `tests/`) and the worker process they spawn
//! (`src/bin/worker.rs`).

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};
use tasker_core::{ClaimedStep, Engine, HandlerError, Worker};

/// Appends `<step_id> <attempt> <pid>` to `path` (one write per line, O_APPEND), so a test can
/// count how often each step really ran, across processes.
pub fn record_run(path: &str, step: &ClaimedStep) -> Result<(), HandlerError> {
    let line = format!("{} {} {}\n", step.step_id, step.attempt, std::process::id());
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(|e| HandlerError::retryable(format!("cannot record the run: {e}")))
}

/// The runs recorded in `path`: (step id, attempt, pid).
pub fn read_runs(path: &str) -> Vec<(String, u32, u32)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(' ');
            Some((
                parts.next()?.to_owned(),
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
            ))
        })
        .collect()
}

fn millis(step: &ClaimedStep, key: &str) -> Duration {
    Duration::from_millis(step.context.get(key).and_then(Value::as_u64).unwrap_or(0))
}

/// A worker with the test handlers, recording every run in `runs`:
/// `work` sleeps `context.sleep_ms`; `slow` sleeps `context.slow_ms` on its first attempt only
/// (long enough to be killed mid-step).
pub fn test_worker(engine: Engine, runs: &str, concurrency: usize) -> Worker {
    let (work_runs, slow_runs) = (runs.to_owned(), runs.to_owned());
    Worker::builder(engine)
        .concurrency(concurrency)
        .poll_interval(Duration::from_millis(200))
        .handler("work", move |step: ClaimedStep| {
            let runs = work_runs.clone();
            async move {
                record_run(&runs, &step)?;
                tokio::time::sleep(millis(&step, "sleep_ms")).await;
                Ok(json!({ "pid": std::process::id() }))
            }
        })
        .handler("slow", move |step: ClaimedStep| {
            let runs = slow_runs.clone();
            async move {
                record_run(&runs, &step)?;
                if step.attempt == 1 {
                    tokio::time::sleep(millis(&step, "slow_ms")).await;
                }
                Ok(json!({ "pid": std::process::id() }))
            }
        })
        .build()
}

#[path = "postgres_schema.rs"]
mod postgres_schema_impl;
pub use postgres_schema_impl::postgres_schema;
