//! # Tasker Core
//!
//! A workflow-orchestration engine: a *task* is one run of a *task template*, a DAG of *steps*.
//! The core decides which steps are ready, hands them to workers with a lease, records every
//! state change, retries with backoff, recovers the steps of crashed workers and publishes
//! lifecycle events. See `docs/concepts.md` in the repository for the ideas and
//! `shared/API.md` for the surface shared by every binding.
//!
//! The decision logic is pure and lives in [`template`], [`state`], [`readiness`] and
//! [`retry`]; the [`store`] persists outcomes; the [`Engine`] façade and the [`Worker`] loop sit
//! on top.
//!
//! ```
//! use tasker_core::{ClaimedStep, Engine, HandlerError, NewTask, TaskState, Worker};
//! use serde_json::json;
//!
//! # #[tokio::main] async fn main() -> Result<(), tasker_core::Error> {
//! let engine = Engine::open("memory:").await?;
//! engine.register_template_str(r#"
//! namespace: demo
//! name: hello
//! version: 1.0.0
//! steps:
//!   - name: greet
//!   - name: shout
//!     depends_on: [greet]
//! "#).await?;
//! let task = engine.create_task(NewTask::new("demo", "hello")).await?;
//! let worker = Worker::builder(engine.clone())
//!     .handler("greet", |_step: ClaimedStep| async { Ok::<_, HandlerError>(json!("hello")) })
//!     .handler("shout", |step: ClaimedStep| async move {
//!         let greeting = step.inputs.get("greet").and_then(|v| v.as_str()).unwrap_or_default();
//!         Ok(json!(greeting.to_uppercase()))
//!     })
//!     .build();
//! worker.run_until_idle(std::time::Duration::from_secs(5)).await?;
//! let view = engine.task(task).await?;
//! assert_eq!(view.status, TaskState::Complete);
//! assert_eq!(view.step("shout").unwrap().result, Some(json!("HELLO")));
//! # Ok(()) }
//! ```

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod clock;
pub mod engine;
pub mod error;
pub mod events;
pub mod gate;
pub mod host;
pub mod ids;
pub mod limits;
pub mod logs;
mod metrics;
pub mod readiness;
pub mod retry;
pub mod schedule;
pub mod state;
pub mod store;
pub mod template;
pub mod trace;
pub mod view;
pub mod webhooks;
pub mod worker;

pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use engine::{Engine, EngineBuilder, Registered};
pub use error::{Error, StoreError, StoreErrorKind};
pub use events::{Event, EventBus, Subscription};
pub use ids::{StepId, TaskId};
pub use retry::{Backoff, FailureKind, RetryPolicy};
pub use state::{StepState, TaskState};
pub use store::{
    Batch, ChildTask, Children, ClaimedStep, Decision, NewTask, ParentLink, StepInputs,
};
pub use template::{Format, StepKind, TaskGraph, TaskTemplate, TemplateError};
pub use view::{StepView, TaskFilter, TaskView, TransitionView};
pub use worker::{HandlerError, HandlerOutput, StepHandler, Worker, WorkerBuilder};
