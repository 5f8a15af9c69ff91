//! Shared helpers of the conformance suite.
//!
//! Every scenario loops over [`engines`], so that adding a store (SQLite, PostgreSQL) is one
//! line here and every scenario runs against it.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tasker_core::retry::FailureKind;
use tasker_core::store::{ClaimRequest, StepFailure};
use tasker_core::{ClaimedStep, Engine, ManualClock, TaskId, TransitionView};

/// One engine per store under test, all reading the time from `clock`.
pub async fn engines(clock: ManualClock) -> Vec<(&'static str, Engine)> {
    let clock = Arc::new(clock);
    vec![(
        "memory",
        Engine::builder()
            .url("memory:")
            .clock(clock.clone())
            .build()
            .await
            .expect("open the memory store"),
    )]
}

/// Registers a YAML template, panicking with the error if it is refused.
pub async fn register(engine: &Engine, yaml: &str) {
    engine
        .register_template_str(yaml)
        .await
        .unwrap_or_else(|e| panic!("template refused: {e}\n{yaml}"));
}

/// A claim request for any handler.
pub fn any_handler(limit: usize) -> ClaimRequest {
    ClaimRequest {
        worker_id: "test-worker".into(),
        handlers: None,
        limit,
    }
}

/// A claim request for the named handlers only.
pub fn only_handlers(names: &[&str], limit: usize) -> ClaimRequest {
    ClaimRequest {
        worker_id: "test-worker".into(),
        handlers: Some(names.iter().map(|&n| Arc::from(n)).collect()),
        limit,
    }
}

/// Claims up to `limit` steps of any handler.
pub async fn claim(engine: &Engine, limit: usize) -> Vec<ClaimedStep> {
    engine.claim(&any_handler(limit)).await.expect("claim")
}

/// Claims exactly one step and checks its name.
pub async fn claim_one(engine: &Engine, name: &str) -> ClaimedStep {
    let mut claimed = claim(engine, 1).await;
    assert_eq!(
        claimed.len(),
        1,
        "expected to claim {name:?}, got {:?}",
        names(&claimed)
    );
    let step = claimed.remove(0);
    assert_eq!(&*step.name, name, "claimed the wrong step");
    step
}

/// The names of claimed steps, sorted.
pub fn names(claimed: &[ClaimedStep]) -> Vec<String> {
    let mut names: Vec<String> = claimed.iter().map(|s| s.name.to_string()).collect();
    names.sort();
    names
}

/// Completes a claimed step with `result`.
pub async fn complete(engine: &Engine, step: &ClaimedStep, result: Value) {
    engine
        .complete(step.step_id, step.attempt, result)
        .await
        .unwrap_or_else(|e| panic!("complete {}: {e}", step.name));
}

/// A retryable failure using the step's backoff.
pub fn retryable(message: &str) -> StepFailure {
    StepFailure {
        message: message.to_owned(),
        kind: FailureKind::Retryable {
            retry_after_ms: None,
        },
    }
}

/// A retryable failure with the handler's own delay.
pub fn retryable_after(message: &str, after_ms: u64) -> StepFailure {
    StepFailure {
        message: message.to_owned(),
        kind: FailureKind::Retryable {
            retry_after_ms: Some(after_ms),
        },
    }
}

/// A permanent failure.
pub fn permanent(message: &str) -> StepFailure {
    StepFailure {
        message: message.to_owned(),
        kind: FailureKind::Permanent,
    }
}

/// `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The `(from, to)` pairs of one step's audit trail, oldest first.
pub async fn step_path(engine: &Engine, task: TaskId, step: &str) -> Vec<(String, String)> {
    transitions_of(engine, task, Some(step))
        .await
        .into_iter()
        .map(|t| (t.from.unwrap_or_default(), t.to))
        .collect()
}

/// The task's own `(from, to)` pairs, oldest first (`from` is empty for the creation).
pub async fn task_path(engine: &Engine, task: TaskId) -> Vec<(String, String)> {
    transitions_of(engine, task, None)
        .await
        .into_iter()
        .map(|t| (t.from.unwrap_or_default(), t.to))
        .collect()
}

/// The transitions of one step (or of the task itself when `step` is `None`).
pub async fn transitions_of(
    engine: &Engine,
    task: TaskId,
    step: Option<&str>,
) -> Vec<TransitionView> {
    engine
        .transitions(task)
        .await
        .expect("transitions")
        .into_iter()
        .filter(|t| t.step.as_deref() == step)
        .collect()
}

/// `[(from, to)]` from string pairs, for comparing with [`step_path`] and [`task_path`].
pub fn path(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(f, t)| (f.to_string(), t.to_string()))
        .collect()
}

/// The real-time limit of a worker run in these tests: generous, never reached when all is well.
pub const RUN_LIMIT: Duration = Duration::from_secs(10);
