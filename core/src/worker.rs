//! The Rust worker: runs registered [`StepHandler`]s over the claim / complete / fail protocol
//! with a concurrency limit and graceful shutdown. The bindings offer the same loop in their own
//! languages.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::retry::FailureKind;
use crate::store::{ClaimRequest, ClaimedStep, Outcome, StepFailure, StepReport};

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

/// Runs one step. Implemented for async closures `|step: ClaimedStep| async { … }`.
#[async_trait]
pub trait StepHandler: Send + Sync + 'static {
    /// Runs the step and returns its JSON result.
    async fn call(&self, step: ClaimedStep) -> Result<Value, HandlerError>;
}

#[async_trait]
impl<F, Fut> StepHandler for F
where
    F: Fn(ClaimedStep) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, HandlerError>> + Send + 'static,
{
    async fn call(&self, step: ClaimedStep) -> Result<Value, HandlerError> {
        self(step).await
    }
}

/// What a run of the worker did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Steps completed.
    pub completed: u64,
    /// Attempts that failed (retryable or not).
    pub failed: u64,
    /// Reports refused because the claim was lost.
    pub lost: u64,
    /// Whether the run ended because there was nothing left to do (not by timeout or stop).
    pub idle: bool,
}

/// Builds a [`Worker`].
pub struct WorkerBuilder {
    engine: Engine,
    handlers: HashMap<Arc<str>, Arc<dyn StepHandler>>,
    concurrency: usize,
    poll_interval: Duration,
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

    /// The id recorded as lease owner (default: `worker-<pid>-<random>`).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The worker.
    pub fn build(self) -> Worker {
        let names: Vec<Arc<str>> = self.handlers.keys().cloned().collect();
        let id = self
            .id
            .unwrap_or_else(|| format!("worker-{}-{:04x}", std::process::id(), fastrand::u16(..)));
        Worker {
            inner: Arc::new(WorkerInner {
                engine: self.engine,
                handlers: Arc::new(self.handlers),
                request: ClaimRequest {
                    worker_id: id.into(),
                    handlers: Some(names),
                    limit: self.concurrency,
                },
                concurrency: self.concurrency,
                claim_batch: (self.concurrency / 4).max(1),
                poll_interval: self.poll_interval,
                stop: watch::channel(false).0,
            }),
        }
    }
}

/// Runs handlers for claimed steps. Cheap to clone: clones share the worker, so one clone may
/// [`stop`](Worker::stop) another's [`run`](Worker::run).
#[derive(Clone)]
pub struct Worker {
    inner: Arc<WorkerInner>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.inner.request.worker_id)
            .field("concurrency", &self.inner.concurrency)
            .finish()
    }
}

type Handlers = Arc<HashMap<Arc<str>, Arc<dyn StepHandler>>>;

struct WorkerInner {
    engine: Engine,
    handlers: Handlers,
    request: ClaimRequest,
    concurrency: usize,
    /// Claim only when at least this many slots are free (or nothing runs).
    claim_batch: usize,
    poll_interval: Duration,
    stop: watch::Sender<bool>,
}

/// What one handler run ended in.
enum Reported {
    Completed,
    Failed,
    Lost,
}

impl Worker {
    /// A builder for a worker on `engine`.
    pub fn builder(engine: Engine) -> WorkerBuilder {
        WorkerBuilder {
            engine,
            handlers: HashMap::new(),
            concurrency: 8,
            poll_interval: Duration::from_millis(100),
            id: None,
        }
    }

    /// The lease owner id this worker claims under.
    pub fn id(&self) -> &str {
        &self.inner.request.worker_id
    }

    /// Runs until nothing is ready, running or waiting for a retry, or until `timeout`.
    pub async fn run_until_idle(&self, timeout: Duration) -> Result<RunReport> {
        self.run_loop(true, Some(Instant::now() + timeout)).await
    }

    /// Runs until [`Worker::stop`] is called; steps already running finish first.
    pub async fn run(&self) -> Result<RunReport> {
        self.run_loop(false, None).await
    }

    /// Asks [`Worker::run`] (or [`Worker::run_until_idle`]) to stop claiming and return once its
    /// steps have finished. A stop requested before the run gets going is not lost: that run
    /// returns at once. The request is used up by the run it ends, so the worker can run again.
    pub fn stop(&self) {
        self.inner.stop.send_replace(true);
    }

    async fn run_loop(&self, until_idle: bool, deadline: Option<Instant>) -> Result<RunReport> {
        let inner = &self.inner;
        let mut stop = inner.stop.subscribe();
        let mut running: JoinSet<Reported> = JoinSet::new();
        let mut report = RunReport::default();
        let tally = |report: &mut RunReport,
                     r: std::result::Result<Reported, tokio::task::JoinError>| {
            match r {
                Ok(Reported::Completed) => report.completed += 1,
                Ok(Reported::Failed) | Err(_) => report.failed += 1,
                Ok(Reported::Lost) => report.lost += 1,
            }
        };
        let mut stopped = false;
        let mut failure = None;
        let mut store_errors = 0u32;
        let mut request = inner.request.clone();
        let reporter = Reporter::start(inner.engine.clone());
        loop {
            if *stop.borrow_and_update() {
                stopped = true;
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let notified = inner.engine.work_notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            while let Some(done) = running.try_join_next() {
                tally(&mut report, done);
            }
            let free = inner.concurrency - running.len();
            let mut got = 0;
            // Claim in batches: wait until a quarter of the slots are free (or none is busy),
            // so that one claim transaction hands out many steps.
            if free > 0 && (free >= inner.claim_batch || running.is_empty()) {
                request.limit = free;
                let claimed = match inner.engine.claim(&request).await {
                    Ok(claimed) => {
                        store_errors = 0;
                        claimed
                    }
                    Err(Error::Store(e)) => {
                        store_errors += 1;
                        back_off(&e, store_errors, &mut stop).await;
                        continue;
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                };
                got = claimed.len();
                for step in claimed {
                    running.spawn(run_step(reporter.clone(), inner.handlers.clone(), step));
                }
                if got == free {
                    continue; // there may be more
                }
            }
            let mut wait = inner.poll_interval;
            if running.is_empty() && got == 0 {
                let names = inner.request.handlers.as_deref().unwrap_or_default();
                let status = match inner.engine.work_status_for(names).await {
                    Ok(status) => status,
                    Err(Error::Store(e)) => {
                        store_errors += 1;
                        back_off(&e, store_errors, &mut stop).await;
                        continue;
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                };
                if until_idle && status.is_idle() {
                    report.idle = true;
                    break;
                }
                if let Some(due) = status.next_due {
                    let ms = (due - inner.engine.now()).num_milliseconds().max(0) as u64;
                    wait = wait.min(Duration::from_millis(ms));
                }
            }
            if let Some(d) = deadline {
                wait = wait.min(d.saturating_duration_since(Instant::now()));
            }
            tokio::select! {
                Some(done) = running.join_next(), if !running.is_empty() => tally(&mut report, done),
                _ = &mut notified => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
        // Steps already running finish and report, whatever ended the loop.
        while let Some(done) = running.join_next().await {
            tally(&mut report, done);
        }
        if stopped {
            // This run has honoured the stop request; the next run starts afresh.
            inner.stop.send_replace(false);
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }
}

/// Waits after the `n`th store error in a row (the pool reconnects meanwhile), or until a stop.
async fn back_off(error: &str, n: u32, stop: &mut watch::Receiver<bool>) {
    let delay = Duration::from_millis(100u64 << n.min(5)).min(Duration::from_secs(3));
    tracing::warn!(%error, attempt = n, ?delay, "store unavailable; the worker retries");
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = stop.changed() => {}
    }
}

/// Runs one claimed step's handler (a panic or a timeout counts as a retryable failure) and
/// reports the outcome.
async fn run_step(reporter: Reporter, handlers: Handlers, step: ClaimedStep) -> Reported {
    let (id, attempt) = (step.step_id, step.attempt);
    // Stop the handler a little before its lease runs out, so that its failure is still
    // accepted (a report after the lease is refused).
    let margin = (step.timeout_ms / 10).clamp(u64::from(step.timeout_ms > 1), 250);
    let timeout = Duration::from_millis(step.timeout_ms - margin);
    let timeout_ms = step.timeout_ms;
    let outcome = match handlers.get(&step.handler).cloned() {
        None => Err(HandlerError::retryable(format!(
            "no handler registered for {:?}",
            step.handler
        ))),
        Some(handler) => {
            let run = AssertUnwindSafe(handler.call(step)).catch_unwind();
            match tokio::time::timeout(timeout, run).await {
                Ok(Ok(result)) => result,
                Ok(Err(panic)) => Err(HandlerError::retryable(format!(
                    "handler panicked: {}",
                    panic_message(&*panic)
                ))),
                Err(_) => Err(HandlerError::retryable(format!(
                    "handler timed out after {timeout_ms} ms"
                ))),
            }
        }
    };
    let reported = match &outcome {
        Ok(_) => Reported::Completed,
        Err(error) => {
            tracing::warn!(step = %id, attempt, %error, "step attempt failed");
            Reported::Failed
        }
    };
    // A store that is briefly unreachable (a database restart) gets the report again, with
    // backoff, while the lease may still be held.
    let outcome = match outcome {
        Ok(value) => Outcome::Complete(value),
        Err(error) => Outcome::Fail(error.to_failure()),
    };
    let mut delay = Duration::from_millis(50);
    for _ in 0..REPORT_TRIES {
        let result = reporter
            .report(StepReport {
                step: id,
                attempt,
                outcome: outcome.clone(),
            })
            .await;
        match result {
            Ok(()) => return reported,
            Err(Error::ClaimLost { .. }) => {
                tracing::warn!(step = %id, attempt, "report refused: the claim was lost");
                return Reported::Lost;
            }
            Err(Error::Store(e)) => {
                tracing::warn!(step = %id, attempt, error = %e, "could not report a step; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(step = %id, attempt, error = %e, "could not report a step");
                return Reported::Lost;
            }
        }
    }
    tracing::error!(step = %id, attempt, "gave up reporting a step; its lease will expire");
    Reported::Lost
}

/// The most reports written in one batch.
const MAX_BATCH: usize = 256;

type Pending = (StepReport, oneshot::Sender<Result<()>>);

/// Writes the reports of steps that finish while a batch is being written as the next batch:
/// one store transaction for many reports when steps finish faster than the store writes.
#[derive(Clone)]
struct Reporter {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Reporter {
    /// Starts the writer task; it ends when the last clone of the reporter is dropped.
    fn start(engine: Engine) -> Reporter {
        let (queue, mut pending) = mpsc::unbounded_channel::<Pending>();
        tokio::spawn(async move {
            while let Some(first) = pending.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match pending.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let (reports, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                match engine.report_many(reports).await {
                    Ok(results) => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(result);
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(match &e {
                                Error::Closed => Error::Closed,
                                other => Error::Store(other.to_string()),
                            }));
                        }
                    }
                }
            }
        });
        Reporter { queue }
    }

    /// Queues one report and waits for the batch that writes it.
    async fn report(&self, report: StepReport) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((report, reply))
            .map_err(|_| Error::Closed)?;
        answer.await.unwrap_or(Err(Error::Closed))
    }
}

/// How often a worker tries to report a step through store errors.
const REPORT_TRIES: usize = 12;

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}
