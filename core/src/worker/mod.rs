//! Workers. The [`WorkerSession`] in [`session`] owns every decision a worker makes (slots,
//! claim and report batching, lease renewal, deadlines, store back-off, drain, idleness); the
//! Rust [`Worker`] runs [`StepHandler`]s on it, as the Python, Ruby and C bindings run theirs.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::retry::FailureKind;
use crate::store::{ClaimedStep, Decision, Outcome, StepFailure};

pub mod session;

pub use session::{
    default_worker_id, timed_out, Attempt, AttemptId, AttemptOutcome, Next, Refused, RunReport,
    SessionConfig, WorkerSession,
};

/// How a handler signals failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HandlerError {
    /// Try again while attempts are left, after `retry_after` if given (else the backoff).
    #[error("{message}")]
    Retryable {
        /// What went wrong.
        message: String,
        /// The handler's own delay before the next attempt.
        retry_after: Option<Duration>,
    },
    /// Do not try again.
    #[error("{message}")]
    Permanent {
        /// What went wrong.
        message: String,
    },
}

impl HandlerError {
    /// A retryable error using the step's backoff.
    pub fn retryable(message: impl Into<String>) -> Self {
        HandlerError::Retryable {
            message: message.into(),
            retry_after: None,
        }
    }

    /// A retryable error with the handler's own delay.
    pub fn retry_after(message: impl Into<String>, after: Duration) -> Self {
        HandlerError::Retryable {
            message: message.into(),
            retry_after: Some(after),
        }
    }

    /// A permanent error: no further attempt.
    pub fn permanent(message: impl Into<String>) -> Self {
        HandlerError::Permanent {
            message: message.into(),
        }
    }

    /// The failure as the engine records it.
    pub fn to_failure(&self) -> StepFailure {
        match self {
            HandlerError::Retryable {
                message,
                retry_after,
            } => StepFailure {
                message: message.clone(),
                kind: FailureKind::Retryable {
                    retry_after_ms: retry_after
                        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                },
            },
            HandlerError::Permanent { message } => StepFailure {
                message: message.clone(),
                kind: FailureKind::Permanent,
            },
        }
    }
}

/// Any other error is retryable, as the handler contract says.
impl From<Error> for HandlerError {
    fn from(e: Error) -> Self {
        HandlerError::retryable(e.to_string())
    }
}

impl From<serde_json::Error> for HandlerError {
    fn from(e: serde_json::Error) -> Self {
        HandlerError::retryable(e.to_string())
    }
}

/// What a handler returns: a step's JSON result, or a decision step's [`Decision`]. Both
/// convert into it, so a closure may return either.
#[derive(Debug, Clone, PartialEq)]
pub enum HandlerOutput {
    /// The step's result.
    Result(Value),
    /// A decision step's choice (with its result).
    Decision(Decision),
    /// A batchable step's batch (with its result).
    Batch(crate::store::Batch),
    /// Child tasks to start: the step waits for them.
    Children(crate::store::Children),
}

impl From<crate::store::Children> for HandlerOutput {
    fn from(children: crate::store::Children) -> Self {
        HandlerOutput::Children(children)
    }
}

impl From<crate::store::Batch> for HandlerOutput {
    fn from(batch: crate::store::Batch) -> Self {
        HandlerOutput::Batch(batch)
    }
}

impl From<HandlerOutput> for Outcome {
    fn from(output: HandlerOutput) -> Self {
        match output {
            HandlerOutput::Result(value) => Outcome::Complete(value),
            HandlerOutput::Decision(decision) => Outcome::Decide(decision),
            HandlerOutput::Batch(batch) => Outcome::Batch(batch),
            HandlerOutput::Children(children) => Outcome::Spawn(children),
        }
    }
}

impl From<Value> for HandlerOutput {
    fn from(value: Value) -> Self {
        HandlerOutput::Result(value)
    }
}

impl From<Decision> for HandlerOutput {
    fn from(decision: Decision) -> Self {
        HandlerOutput::Decision(decision)
    }
}

impl From<HandlerOutput> for AttemptOutcome {
    fn from(output: HandlerOutput) -> Self {
        match output {
            HandlerOutput::Result(value) => AttemptOutcome::Complete(value),
            other => AttemptOutcome::Output(other),
        }
    }
}

/// Runs one step. Implemented for async closures `|step: ClaimedStep| async { … }` returning
/// `Result<R, HandlerError>` where `R` is a JSON [`Value`], a [`Decision`] or a
/// [`HandlerOutput`].
#[async_trait]
pub trait StepHandler: Send + Sync + 'static {
    /// Runs the step and returns its JSON result or, for a decision step, its decision.
    async fn call(&self, step: ClaimedStep) -> Result<HandlerOutput, HandlerError>;
}

#[async_trait]
impl<F, Fut, R> StepHandler for F
where
    F: Fn(ClaimedStep) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, HandlerError>> + Send + 'static,
    R: Into<HandlerOutput> + 'static,
{
    async fn call(&self, step: ClaimedStep) -> Result<HandlerOutput, HandlerError> {
        self(step).await.map(Into::into)
    }
}

/// Builds a [`Worker`].
pub struct WorkerBuilder {
    engine: Engine,
    handlers: HashMap<Arc<str>, Arc<dyn StepHandler>>,
    concurrency: usize,
    poll_interval: Duration,
    drain_timeout: Duration,
    id: Option<String>,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("handlers", &self.handlers.keys().collect::<Vec<_>>())
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl WorkerBuilder {
    /// Registers `handler` under `name` (the `handler:` of template steps).
    pub fn handler(mut self, name: &str, handler: impl StepHandler) -> Self {
        self.handlers.insert(name.into(), Arc::new(handler));
        self
    }

    /// How many steps run at once (default 8; at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How often an idle worker looks for work that another process made ready (default 100 ms;
    /// work made ready in this process wakes it at once).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// After [`Worker::stop`], how long running handlers may take to finish before their steps
    /// are released (default 30 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The id recorded as lease owner (default: `worker-<host>-<pid>-<random>`).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The worker.
    pub fn build(self) -> Worker {
        let id = self.id.unwrap_or_else(|| default_worker_id("worker"));
        let mut config = SessionConfig::new(self.concurrency);
        config.worker_id = id.into();
        config.handlers = Some(self.handlers.keys().cloned().collect());
        config.poll_interval = self.poll_interval;
        config.drain_timeout = self.drain_timeout;
        Worker {
            inner: Arc::new(WorkerInner {
                engine: self.engine,
                handlers: Arc::new(self.handlers),
                config,
                runs: Runs::default(),
            }),
        }
    }
}

/// Runs handlers for claimed steps on a [`WorkerSession`]. Cheap to clone: clones share the
/// worker, so one clone may [`stop`](Worker::stop) another's [`run`](Worker::run).
///
/// Dropping the future of [`Worker::run`] (or [`Worker::run_until_idle`]) cancels the running
/// handlers and gives their steps back at once, the attempts not counted.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<WorkerInner>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.inner.config.worker_id)
            .field("concurrency", &self.inner.config.concurrency)
            .finish()
    }
}

type Handlers = Arc<HashMap<Arc<str>, Arc<dyn StepHandler>>>;

struct WorkerInner {
    engine: Engine,
    handlers: Handlers,
    config: SessionConfig,
    runs: Runs,
}

/// One worker's runs, one at a time — the same in every language: the session of the run
/// under way, and a stop asked for before a run started (that run returns at once; the request
/// is used up by the run it ends).
#[derive(Debug, Default)]
pub struct Runs {
    current: Mutex<Current>,
}

#[derive(Debug, Default)]
struct Current {
    session: Option<WorkerSession>,
    stop_requested: bool,
}

/// Why [`Runs::start`] refused to start a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RunRefused {
    /// A run of this worker is under way.
    #[error("this worker is running already; a worker runs one loop at a time")]
    Running,
    /// The worker has no handlers, so it could never claim anything.
    #[error("the worker has no handlers: register some first")]
    NoHandlers,
}

impl Runs {
    /// Starts a run: its session on `engine`, stopped at once if a stop was asked for.
    pub fn start(
        &self,
        engine: Engine,
        config: SessionConfig,
    ) -> std::result::Result<WorkerSession, RunRefused> {
        if config.handlers.as_ref().is_some_and(Vec::is_empty) {
            return Err(RunRefused::NoHandlers);
        }
        let mut current = self.current.lock();
        if current.session.is_some() {
            return Err(RunRefused::Running);
        }
        let session = WorkerSession::start(engine, config);
        if std::mem::take(&mut current.stop_requested) {
            session.stop();
        }
        current.session = Some(session.clone());
        Ok(session)
    }

    /// Stops the run under way, or the next one to start.
    pub fn stop(&self) {
        let mut current = self.current.lock();
        match &current.session {
            Some(session) => session.stop(),
            None => current.stop_requested = true,
        }
    }

    /// The run under way, if any.
    pub fn current(&self) -> Option<WorkerSession> {
        self.current.lock().session.clone()
    }

    /// The run has returned.
    pub fn end(&self) {
        self.current.lock().session = None;
    }
}

/// Ends the run when its future returns or is dropped; dropped before the session ended, it
/// aborts the session (which releases its steps).
struct RunGuard<'a> {
    runs: &'a Runs,
    unfinished: Option<WorkerSession>,
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.unfinished.take() {
            session.abort();
        }
        self.runs.end();
    }
}

impl Worker {
    /// A builder for a worker on `engine`.
    pub fn builder(engine: Engine) -> WorkerBuilder {
        WorkerBuilder {
            engine,
            handlers: HashMap::new(),
            concurrency: 8,
            poll_interval: Duration::from_millis(100),
            drain_timeout: Duration::from_secs(30),
            id: None,
        }
    }

    /// The lease owner id this worker claims under.
    pub fn id(&self) -> &str {
        &self.inner.config.worker_id
    }

    /// Runs until nothing is ready, running or waiting for a retry, or until `timeout` (then
    /// running handlers finish, up to the drain timeout).
    pub async fn run_until_idle(&self, timeout: Duration) -> Result<RunReport> {
        let mut config = self.inner.config.clone();
        config.until_idle = true;
        self.run_session(config.timeout(timeout)).await
    }

    /// Runs until [`Worker::stop`] is called; running handlers finish first (up to the drain
    /// timeout, after which their steps are released).
    pub async fn run(&self) -> Result<RunReport> {
        self.run_session(self.inner.config.clone()).await
    }

    /// Asks [`Worker::run`] (or [`Worker::run_until_idle`]) to drain and return. A stop
    /// requested before the run gets going is not lost: that run returns at once. The request
    /// is used up by the run it ends, so the worker can run again.
    pub fn stop(&self) {
        self.inner.runs.stop();
    }

    /// Runs a session; [`Error::InvalidArgument`] while another run of this worker is under
    /// way.
    async fn run_session(&self, config: SessionConfig) -> Result<RunReport> {
        let concurrency = config.concurrency;
        let session = self
            .inner
            .runs
            .start(self.inner.engine.clone(), config)
            .map_err(|refused| Error::InvalidArgument(refused.to_string()))?;
        let mut guard = RunGuard {
            runs: &self.inner.runs,
            unfinished: Some(session.clone()),
        };
        let mut hosts = JoinSet::new();
        for _ in 0..concurrency {
            hosts.spawn(host(session.clone(), self.inner.handlers.clone()));
        }
        // The hosts end with the session; a handler still running when the drain timeout
        // released its step is cancelled.
        let report = session.finished().await;
        hosts.abort_all();
        while hosts.join_next().await.is_some() {}
        guard.unfinished = None;
        drop(guard);
        report
    }
}

/// One slot's loop: take an attempt, run its handler, hand the outcome back.
async fn host(session: WorkerSession, handlers: Handlers) {
    loop {
        match session.next(Duration::from_secs(3600)).await {
            Next::Attempt(attempt) => run_attempt(&session, &handlers, *attempt).await,
            Next::Empty => {}
            Next::Finished => return,
        }
    }
}

/// Runs one attempt's handler, cancelled at the attempt's deadline; a panic counts as a
/// retryable failure.
async fn run_attempt(session: &WorkerSession, handlers: &Handlers, attempt: Attempt) {
    let id = attempt.id();
    let outcome = match handlers.get(&attempt.step.handler).cloned() {
        None => AttemptOutcome::Fail(
            HandlerError::retryable(format!(
                "no handler registered for {:?}",
                attempt.step.handler
            ))
            .to_failure(),
        ),
        Some(handler) => {
            let run = AssertUnwindSafe(handler.call(attempt.step)).catch_unwind();
            match tokio::time::timeout_at(attempt.deadline, run).await {
                Ok(Ok(Ok(output))) => output.into(),
                Ok(Ok(Err(error))) => {
                    tracing::warn!(step = %id.step, attempt = id.attempt, %error, "step attempt failed");
                    AttemptOutcome::Fail(error.to_failure())
                }
                Ok(Err(panic)) => AttemptOutcome::Fail(
                    HandlerError::retryable(format!(
                        "handler panicked: {}",
                        panic_message(&*panic)
                    ))
                    .to_failure(),
                ),
                Err(_) => AttemptOutcome::TimedOut,
            }
        }
    };
    if let Err(refused) = session.report(id, outcome) {
        tracing::warn!(step = %id.step, attempt = id.attempt, %refused, "outcome refused");
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
