//! The one worker: a [`WorkerSession`] owns every decision a worker makes, whatever language
//! its handlers are written in.
//!
//! A session claims steps in batches into its slots, hands each claimed attempt to whichever
//! host asks for one ([`WorkerSession::next`]: a tokio task of the Rust [`crate::Worker`], or a
//! Python, Ruby or C thread blocked with its interpreter lock released), takes the outcome back
//! ([`WorkerSession::report`]) and writes outcomes to the store in batches. Meanwhile it renews
//! the lease of every attempt it holds, fails an attempt that outlives its `timeout_ms`, backs
//! off while the store is unreachable and retries the reports it could not write, notices when
//! nothing is left to do, and on [`WorkerSession::stop`] drains: no new claims, running handlers
//! finish and report until the drain timeout, and what still runs then is released (pending again
//! at once, the attempt not counted).
//!
//! Nothing here calls into a host: hosts poll. One driver task per session, on the engine's
//! runtime, does the store work; hosts only touch a queue under a mutex.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::time::Duration;
//! use tasker_core::worker::{AttemptOutcome, Next, SessionConfig, WorkerSession};
//! use tasker_core::{Engine, NewTask};
//! let engine = Engine::open("memory:").await?;
//! engine.register_template_str("namespace: n\nname: t\nversion: 1.0.0\nsteps: [{name: only}]").await?;
//! engine.create_task(NewTask::new("n", "t")).await?;
//! let session = WorkerSession::start(engine, SessionConfig::until_idle(4));
//! while let Next::Attempt(attempt) = session.next(Duration::from_secs(5)).await {
//!     let outcome = AttemptOutcome::Complete(serde_json::json!({"done": true}));
//!     session.report(attempt.id(), outcome).expect("held");
//! }
//! let report = session.finished().await?;
//! assert_eq!((report.completed, report.idle), (1, true));
//! # Ok::<_, tasker_core::Error>(()) }).unwrap();
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::ids::StepId;
use crate::retry::FailureKind;
use crate::store::{ClaimRequest, ClaimedStep, Outcome, StepFailure, StepReport};

/// How often a report is written again through store errors before it is given up (about
/// 15 s of backoff in all; the attempt's lease then runs out and the step comes back).
pub const REPORT_TRIES: u32 = 12;
/// The most reports written in one store call.
const MAX_BATCH: usize = 256;

/// How a session runs: its slots, what it claims, when it ends.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Recorded as the owner of every lease the session takes.
    pub worker_id: Arc<str>,
    /// Only steps with these handler names; `None` takes any.
    pub handlers: Option<Vec<Arc<str>>>,
    /// How many attempts it holds at once (claimed and not yet returned by a host); ≥ 1.
    pub concurrency: usize,
    /// How long an idle session waits before it looks for work made ready elsewhere (work made
    /// ready in this process, or on PostgreSQL anywhere, wakes it at once).
    pub poll_interval: Duration,
    /// After [`WorkerSession::stop`], how long running handlers may take to finish before their
    /// steps are released.
    pub drain_timeout: Duration,
    /// End once nothing is ready, running or waiting for a retry (`run_until_idle`).
    pub until_idle: bool,
    /// End (draining) at this instant, if given (`run_until_idle`'s timeout).
    pub deadline: Option<Instant>,
    /// The hosts are OS threads that take attempts back to back (Python, Ruby, C): claimed
    /// attempts wake one host only when no host has taken one within [`HANDOFF_WAIT`], and more
    /// only once attempts have waited that long for one. A busy host takes the next attempt
    /// itself, without a thread switch (nor, under Python's GIL or Ruby's GVL, a lock
    /// hand-over to a thread woken only to wait for the lock). Otherwise (tokio tasks: the Rust
    /// worker) each claimed attempt wakes a host.
    pub wake_on_demand: bool,
}

/// `at + d`, or a century after `at` when that is past what an [`Instant`] holds: durations
/// from users (a template's `timeout_ms`, `Duration::MAX` for "no limit") never overflow.
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(crate::clock::at_most_a_century(d))
        .unwrap_or(at)
}

/// With [`SessionConfig::wake_on_demand`], how long queued attempts wait before more hosts
/// are woken.
pub const HANDOFF_WAIT: Duration = Duration::from_millis(1);
/// How long outcomes handed back wait for others to join their batch while hosts still run
/// attempts (a batch is written at once when a quarter of the slots have reported, or when no
/// attempt runs any more).
pub const REPORT_LINGER: Duration = Duration::from_millis(1);

impl SessionConfig {
    /// A session of `concurrency` slots that runs until stopped, claiming for any handler.
    pub fn new(concurrency: usize) -> Self {
        SessionConfig {
            worker_id: default_worker_id("worker").into(),
            handlers: None,
            concurrency: concurrency.max(1),
            poll_interval: Duration::from_millis(100),
            drain_timeout: Duration::from_secs(30),
            until_idle: false,
            deadline: None,
            wake_on_demand: false,
        }
    }

    /// A session that ends once nothing is left to do.
    pub fn until_idle(concurrency: usize) -> Self {
        SessionConfig {
            until_idle: true,
            ..SessionConfig::new(concurrency)
        }
    }

    /// With these handler names only.
    pub fn handlers<S: AsRef<str>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.handlers = Some(names.into_iter().map(|n| n.as_ref().into()).collect());
        self
    }

    /// Ending (draining) `timeout` from now.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.deadline = Instant::now().checked_add(timeout);
        self
    }
}

/// A lease owner id: `<prefix>-<host>-<pid>-<random>`.
pub fn default_worker_id(prefix: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    format!(
        "{prefix}-{host}-{}-{:06x}",
        std::process::id(),
        fastrand::u32(..0x100_0000)
    )
}

/// What a run of a worker did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunReport {
    /// Attempts completed.
    pub completed: u64,
    /// Attempts failed (retryable or not; timeouts included).
    pub failed: u64,
    /// Outcomes the store did not record: the claim was lost (reclaimed, cancelled, resolved),
    /// or the report could not be written.
    pub lost: u64,
    /// Attempts given back unfinished when the run ended (not counted against the steps).
    pub released: u64,
    /// Whether the run ended because there was nothing left to do (not by timeout or stop).
    pub idle: bool,
}

/// One claimed attempt, as a host runs it.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The step with its context, inputs and lease.
    pub step: ClaimedStep,
    /// When the attempt times out.
    pub deadline: Instant,
}

impl Attempt {
    /// The attempt's identity, to report it with.
    pub fn id(&self) -> AttemptId {
        AttemptId {
            step: self.step.step_id,
            attempt: self.step.attempt,
        }
    }
}

/// Names one attempt of one step: the step and the attempt number (the claim's fence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttemptId {
    /// The step.
    pub step: StepId,
    /// The attempt number, from 1.
    pub attempt: u32,
}

/// What [`WorkerSession::next`] hands a host.
#[derive(Debug)]
pub enum Next {
    /// An attempt to run; report it with [`WorkerSession::report`].
    Attempt(Box<Attempt>),
    /// Nothing within the wait; ask again (a host checks its signals meanwhile).
    Empty,
    /// The session has ended: the host's loop ends too.
    Finished,
}

/// What a host hands back for an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    /// The handler's result.
    Complete(Value),
    /// What the handler returned besides a plain result: a decision step's choice, a
    /// batchable step's batch.
    Output(super::HandlerOutput),
    /// The handler failed.
    Fail(StepFailure),
    /// The host cancelled the handler at the attempt's deadline (a Rust future, an asyncio
    /// task): recorded as the same retryable "timed out" failure the session records itself.
    TimedOut,
}

/// Why [`WorkerSession::report`] refused an outcome: the session had let go of the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The attempt outlived its `timeout_ms` and was failed as timed out; the step may run
    /// again. The late outcome is dropped.
    #[error("the attempt ran past its timeout and was failed as timed out; this late outcome is dropped")]
    TimedOut,
    /// The worker stopped and its drain timeout passed: the step was given back unfinished.
    #[error("the worker's drain timeout passed and the step was given back; this late outcome is dropped")]
    Released,
    /// The session does not hold this attempt (already reported, or never handed out).
    #[error("this worker does not hold the attempt (already reported?)")]
    NotHeld,
}

/// The retryable failure of an attempt that outlived its `timeout_ms`.
pub fn timed_out(timeout_ms: u64) -> StepFailure {
    StepFailure {
        message: format!("timed out after {timeout_ms} ms"),
        kind: FailureKind::Retryable {
            retry_after_ms: None,
        },
    }
}

/// Where one held attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Claimed, waiting in the queue for a host.
    Queued,
    /// A host runs it.
    Running,
    /// Failed as timed out while a host still runs it: the slot stays taken until it returns.
    TimedOut,
}

#[derive(Debug)]
struct Held {
    stage: Stage,
    /// The attempt's log, closed and written with its report.
    logs: crate::logs::StepLog,
    /// What publishing the attempt's custom events needs.
    source: crate::engine::EventSource,
    /// The step's type and dependents, which say what it may report.
    kind: crate::template::StepKind,
    dependents: Arc<[Arc<str>]>,
    deadline: Instant,
    renew_at: Instant,
    renew_every: Duration,
    timeout_ms: u64,
}

impl Held {
    /// `outcome`, or the permanent failure it is when the step may not report it (a plain
    /// result from a decision step, a decision from another, a choice of a step that does not
    /// depend on it): the store would record the same failure, and the run counts it as one.
    fn admit(&self, outcome: Outcome) -> Outcome {
        let Some(reported) = outcome.reported() else {
            return outcome;
        };
        let name = &self.source.step_name;
        match crate::template::output_refusal(name, self.kind, &self.dependents, reported) {
            Some(message) => Outcome::Fail(StepFailure {
                message,
                kind: crate::retry::FailureKind::Permanent,
            }),
            None => outcome,
        }
    }
}

/// The engine's time (its clock, corrected by the store's on PostgreSQL, to the millisecond).
#[derive(Debug)]
struct EngineClock(Engine);

impl crate::clock::Clock for EngineClock {
    fn now(&self) -> crate::Timestamp {
        self.0.now()
    }
}

/// A report waiting to be written, with the tries it has had.
#[derive(Debug)]
struct Pending {
    report: StepReport,
    tries: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Claiming.
    Running,
    /// No new claims; running handlers finish until `until`, then the rest is released.
    Draining { until: Instant },
    /// Ended.
    Done,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    queue: VecDeque<ClaimedStep>,
    held: HashMap<AttemptId, Held>,
    reports: Vec<Pending>,
    /// When the first of `reports` came back.
    reports_since: Option<Instant>,
    /// When a host last took an attempt from the queue, or the queue last filled.
    queue_touched: Instant,
    /// When a host last took an attempt from the queue (with `wake_on_demand`); `None` once a
    /// host found it empty (that host waits to be woken).
    host_took: Option<Instant>,
    /// Attempts let go of while a host still runs them, with the answer its report gets.
    let_go: HashMap<AttemptId, Refused>,
    /// The earliest deadline or renewal among `held` (a lower bound).
    next_timer: Option<Instant>,
    stop: bool,
    abort: bool,
    report: RunReport,
    failure: Option<Error>,
}

#[derive(Debug)]
struct Shared {
    engine: Engine,
    /// The engine's clock, stamping the attempts' log lines.
    log_clock: Arc<dyn crate::clock::Clock>,
    config: SessionConfig,
    /// Claim (and write outcomes) when this many slots are free: a quarter of them.
    claim_batch: usize,
    state: Mutex<State>,
    /// Wakes the driver: an outcome came back, a slot is free, a stop.
    driver: Notify,
    /// Wakes hosts waiting in `next`.
    hosts: Notify,
    done: watch::Sender<bool>,
}

/// The core's worker; see the module docs. Cheap to clone: clones share the session.
#[derive(Debug, Clone)]
pub struct WorkerSession {
    shared: Arc<Shared>,
}

impl WorkerSession {
    /// Starts a session on `engine`: its driver runs on the current tokio runtime until the
    /// session ends.
    pub fn start(engine: Engine, mut config: SessionConfig) -> WorkerSession {
        config.concurrency = config.concurrency.max(1);
        let shared = Arc::new(Shared {
            log_clock: Arc::new(EngineClock(engine.clone())),
            engine,
            claim_batch: (config.concurrency / 4).max(1),
            config,
            state: Mutex::new(State {
                phase: Phase::Running,
                queue: VecDeque::new(),
                held: HashMap::new(),
                reports: Vec::new(),
                reports_since: None,
                queue_touched: Instant::now(),
                host_took: None,
                let_go: HashMap::new(),
                next_timer: None,
                stop: false,
                abort: false,
                report: RunReport::default(),
                failure: None,
            }),
            driver: Notify::new(),
            hosts: Notify::new(),
            done: watch::channel(false).0,
        });
        tokio::spawn(drive(shared.clone()));
        WorkerSession { shared }
    }

    /// The engine it works for.
    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// The next attempt if one is queued now, without waiting (and without a runtime: a host
    /// holding its interpreter lock tries this first, and waits in [`WorkerSession::next`]
    /// only when it gets [`Next::Empty`]).
    pub fn try_next(&self) -> Next {
        let mut state = self.shared.state.lock();
        while let Some(step) = state.queue.pop_front() {
            let id = AttemptId {
                step: step.step_id,
                attempt: step.attempt,
            };
            if let Some(held) = state.held.get_mut(&id) {
                held.stage = Stage::Running;
                let deadline = held.deadline;
                if self.shared.config.wake_on_demand {
                    let now = Instant::now();
                    state.queue_touched = now;
                    state.host_took = Some(now);
                }
                return Next::Attempt(Box::new(Attempt { step, deadline }));
            }
            // Let go of meanwhile (timed out in the queue): skip it.
        }
        // This host will wait: the next attempts queued wake one.
        state.host_took = None;
        if state.phase == Phase::Done {
            Next::Finished
        } else {
            Next::Empty
        }
    }

    /// The next attempt to run, waiting up to `wait` for one.
    pub async fn next(&self, wait: Duration) -> Next {
        let deadline = Instant::now().checked_add(wait);
        loop {
            let notified = self.shared.hosts.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_next() {
                Next::Empty => {}
                next => return next,
            }
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, notified).await.is_err() {
                        return Next::Empty;
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Hands back the outcome of an attempt from [`WorkerSession::next`]. It is written to the
    /// store with others in the next batch; refused when the session had let go of the attempt
    /// (the host logs it; the attempt was already counted).
    pub fn report(
        &self,
        id: AttemptId,
        outcome: AttemptOutcome,
    ) -> std::result::Result<(), Refused> {
        // Within the limits (a result past them fails for good), checked outside the lock.
        let outcome = match outcome {
            AttemptOutcome::Complete(value) => {
                Some(crate::limits::outcome(Outcome::Complete(value)))
            }
            AttemptOutcome::Output(output) => Some(crate::limits::outcome(output.into())),
            AttemptOutcome::Fail(failure) => Some(crate::limits::outcome(Outcome::Fail(failure))),
            AttemptOutcome::TimedOut => None,
        };
        let mut state = self.shared.state.lock();
        let Some(held) = state.held.get(&id) else {
            return Err(state.let_go.remove(&id).unwrap_or(Refused::NotHeld));
        };
        let (stage, timeout_ms) = (held.stage, held.timeout_ms);
        if stage == Stage::TimedOut {
            state.held.remove(&id);
            drop(state);
            self.shared.driver.notify_one();
            return Err(Refused::TimedOut);
        }
        let outcome = match outcome {
            Some(outcome) => held.admit(outcome),
            None => Outcome::Fail(timed_out(timeout_ms)),
        };
        let logs = state
            .held
            .remove(&id)
            .map(|h| h.logs.close())
            .unwrap_or_default();
        state.reports.push(Pending {
            report: StepReport {
                step: id.step,
                attempt: id.attempt,
                outcome,
                logs,
            },
            tries: 0,
        });
        // The driver is woken by the first outcome of a batch (it lingers for more), by the one
        // that fills a batch, and by the last of the attempts held.
        let wake = state.reports.len() == 1
            || state.reports.len() == self.shared.claim_batch
            || state.held.is_empty();
        state.reports_since.get_or_insert_with(Instant::now);
        drop(state);
        if wake {
            self.shared.driver.notify_one();
        }
        Ok(())
    }

    /// Publishes custom event `name` with `payload` from a running attempt (a handler's
    /// `step.publish(name, payload)`; see [`Engine::publish_event`]).
    /// [`Error::InvalidArgument`] when its template does not declare the event for the step
    /// or the payload breaks the event's schema; [`Error::ClaimLost`] when the session no
    /// longer holds the attempt as running.
    pub fn publish(&self, id: AttemptId, name: &str, payload: Value) -> Result<()> {
        let source = {
            let state = self.shared.state.lock();
            match state.held.get(&id) {
                Some(h) if h.stage == Stage::Running => h.source.clone(),
                _ => {
                    return Err(Error::ClaimLost {
                        step: id.step,
                        attempt: id.attempt,
                    })
                }
            }
        };
        self.shared.engine.publish_from(&source, name, payload)
    }

    /// Keeps a line of a running attempt's log (a handler's `step.log(message, level)`; see
    /// [`crate::logs`]), written with its report; whether it was kept (not once the session
    /// let go of the attempt or its outcome came back).
    pub fn log(&self, id: AttemptId, level: crate::logs::LogLevel, message: &str) -> bool {
        let logs = match self.shared.state.lock().held.get(&id) {
            Some(h) => h.logs.clone(),
            None => return false,
        };
        logs.push(level, message)
    }

    /// Renews the lease of a running attempt now (a handler's `step.heartbeat()`); returns the
    /// new expiry. [`Error::ClaimLost`] when the session or the store no longer holds it.
    pub async fn heartbeat(&self, id: AttemptId) -> Result<crate::Timestamp> {
        let held = {
            let state = self.shared.state.lock();
            state
                .held
                .get(&id)
                .is_some_and(|h| h.stage == Stage::Running)
        };
        if !held {
            return Err(Error::ClaimLost {
                step: id.step,
                attempt: id.attempt,
            });
        }
        let expires = self.shared.engine.heartbeat(id.step, id.attempt).await?;
        if let Some(h) = self.shared.state.lock().held.get_mut(&id) {
            h.renew_at = later(Instant::now(), h.renew_every);
        }
        Ok(expires)
    }

    /// Stops claiming; running handlers finish and report (up to the drain timeout), then the
    /// session ends. Idempotent; safe from any thread.
    pub fn stop(&self) {
        self.shared.state.lock().stop = true;
        self.shared.driver.notify_one();
    }

    /// Ends the session at once: outcomes already handed back are written, every other attempt
    /// it holds is released (pending again, the attempt not counted). What dropping a Rust
    /// `run()` future does.
    pub fn abort(&self) {
        {
            let mut state = self.shared.state.lock();
            state.stop = true;
            state.abort = true;
        }
        self.shared.driver.notify_one();
    }

    /// Whether the session has ended.
    pub fn is_finished(&self) -> bool {
        *self.shared.done.borrow()
    }

    /// Waits for the session to end; what it did, or the error that ended it (the engine was
    /// closed, say).
    pub async fn finished(&self) -> Result<RunReport> {
        let mut done = self.shared.done.subscribe();
        let _ = done.wait_for(|d| *d).await;
        let mut state = self.shared.state.lock();
        match state.failure.take() {
            Some(e) => Err(e),
            None => Ok(state.report),
        }
    }
}

impl State {
    fn note_timer(&mut self, at: Instant) {
        self.next_timer = Some(self.next_timer.map_or(at, |t| t.min(at)));
    }
}

/// The driver: one loop per session doing every store call, in order — write outcomes, renew
/// leases and fail overdue attempts, end or drain, claim, detect idleness — then sleep until the
/// next thing to do.
async fn drive(shared: Arc<Shared>) {
    let engine = &shared.engine;
    let config = &shared.config;
    let claim_batch = shared.claim_batch;
    let mut request = ClaimRequest {
        worker_id: config.worker_id.clone(),
        handlers: config.handlers.clone(),
        limit: config.concurrency,
    };
    let mut store_errors = 0u32;
    let mut retry_claims_at: Option<Instant> = None;
    let mut retry_reports_at: Option<Instant> = None;
    let mut tend_at = Instant::now();
    let tending = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut fire_at = Instant::now();
    let firing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut deliver_at = Instant::now();
    // While it runs, the webhook deliveries this engine writes are sent at once.
    let _delivering = engine.deliverer();
    loop {
        let woken = shared.driver.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let work = engine.work_notify().notified();
        tokio::pin!(work);
        work.as_mut().enable();
        let now = Instant::now();

        // 1. Outcomes handed back, in batches.
        let linger_until = {
            let state = shared.state.lock();
            let full = state.reports.len() >= claim_batch
                || state.held.is_empty()
                || state.phase != Phase::Running
                || state.stop;
            state
                .reports_since
                .map(|since| since + REPORT_LINGER)
                .filter(|&until| !full && until > now)
        };
        // With a claim in the same store transaction when the session may claim now.
        let mut claimed_with_reports = None;
        if linger_until.is_none() && retry_reports_at.is_none_or(|t| t <= now) {
            let room = match retry_claims_at {
                Some(t) if t > now => 0,
                _ => claim_room(&shared, now),
            };
            request.limit = room;
            let claim = (room > 0).then_some(&request);
            let (retry, claimed) = write_reports(&shared, claim).await;
            retry_reports_at = retry;
            if let Some(claimed) = claimed {
                // A claim went through: the store is back, as after step 4's own.
                store_errors = 0;
                retry_claims_at = None;
                claimed_with_reports = Some(claimed.len());
                hand_out(&shared, claimed);
            }
        }
        // Waking on demand: attempts that waited for a host wake more hosts.
        let mut handoff_at = hand_over(&shared, now);

        // 2. Deadlines and lease renewals.
        let renew = timers(&shared, now);
        for id in renew {
            renew_lease(&shared, id).await;
        }

        // 3. Stop, timeout, abort: drain, release, end.
        let (phase, claimable, wait_for_hosts) = {
            let mut state = shared.state.lock();
            if state.failure.is_some() {
                // Running handlers still finish (their reports may be refused).
                state.stop = true;
            }
            if state.phase == Phase::Running
                && (state.stop || config.deadline.is_some_and(|d| d <= now))
            {
                state.phase = Phase::Draining {
                    until: later(now, config.drain_timeout),
                };
            }
            if state.abort {
                if let Phase::Draining { until } = &mut state.phase {
                    *until = (*until).min(now);
                }
            }
            let free = config.concurrency.saturating_sub(state.held.len());
            (state.phase, free, state.held.len())
        };
        if let Phase::Draining { until } = phase {
            if drain(&shared, until, now).await {
                finish(&shared);
                return;
            }
        }

        // 4. Claims, in batches: when a quarter of the slots are free, or none is taken.
        let mut got = 0usize;
        if let Some(n) = claimed_with_reports {
            if n == request.limit {
                // Full: there may be more, for this worker and another one woken now.
                engine.work_notify().notify_one();
                continue;
            }
            // The claim made with the reports took what there was.
            got = n;
        }
        let may_claim = phase == Phase::Running
            && claimed_with_reports.is_none()
            && claimable > 0
            && (claimable >= claim_batch || wait_for_hosts == 0)
            && retry_claims_at.is_none_or(|t| t <= now);
        if may_claim {
            request.limit = claimable.min(crate::limits::MAX_CLAIM);
            match engine.claim(&request).await {
                Ok(claimed) => {
                    store_errors = 0;
                    retry_claims_at = None;
                    got = claimed.len();
                    hand_out(&shared, claimed);
                    handoff_at = hand_over(&shared, Instant::now());
                }
                Err(e) => {
                    retry_claims_at = store_trouble(&shared, e, &mut store_errors);
                    continue;
                }
            }
            if got == request.limit {
                // There may be more: for this worker, and for another one woken now.
                engine.work_notify().notify_one();
                continue;
            }
        }

        // 5. Child tasks' follow-ups a crash left undone, every few seconds; idle?
        // Schedules' ticks, every second, on a task of its own.
        if phase == Phase::Running
            && fire_at <= Instant::now()
            && !firing.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            fire_at = later(Instant::now(), crate::engine::SCHEDULE_EVERY);
            let (engine, firing) = (engine.clone(), firing.clone());
            tokio::spawn(async move {
                if let Err(e) = engine.fire_schedules().await {
                    tracing::debug!(error = %e, "firing schedules failed; trying again later");
                }
                firing.store(false, std::sync::atomic::Ordering::SeqCst);
            });
        }
        // Webhook deliveries, every second, on a task of their own.
        if phase == Phase::Running && deliver_at <= Instant::now() {
            deliver_at = later(Instant::now(), crate::engine::DELIVER_EVERY);
            engine.kick_deliveries();
        }
        // On a task of its own: the driver goes on renewing leases meanwhile.
        if phase == Phase::Running
            && tend_at <= Instant::now()
            && !tending.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            tend_at = later(Instant::now(), crate::engine::TEND_EVERY);
            let (engine, tending) = (engine.clone(), tending.clone());
            tokio::spawn(async move {
                if let Err(e) = engine.tend_children().await {
                    tracing::debug!(error = %e, "tending child tasks failed; trying again later");
                }
                tending.store(false, std::sync::atomic::Ordering::SeqCst);
            });
        }
        let mut wait = config.poll_interval;
        let idle_now = {
            let state = shared.state.lock();
            state.held.is_empty() && state.reports.is_empty() && state.phase == Phase::Running
        };
        if idle_now && got == 0 && retry_claims_at.is_none() {
            // Read before the status: a follow-up (a parent step settled by its last child's
            // report) that ends while the status is read may have made a step ready after
            // the status looked.
            let followed = engine.is_following_up();
            match engine
                .work_status_for(config.handlers.as_deref().unwrap_or_default())
                .await
            {
                Ok(status) => {
                    // Nothing left but, maybe, a follow-up a crash left undone (tending
                    // that fails is left for later: the run is idle).
                    if config.until_idle
                        && status.is_idle()
                        && !followed
                        && !engine.is_following_up()
                        && !matches!(engine.tend_children().await, Ok(n) if n > 0)
                    {
                        shared.state.lock().report.idle = true;
                        finish(&shared);
                        return;
                    }
                    if let Some(due) = status.next_due {
                        let ms = (due - engine.now()).num_milliseconds().max(0) as u64;
                        wait = wait.min(Duration::from_millis(ms));
                    }
                }
                Err(e) => {
                    retry_claims_at = store_trouble(&shared, e, &mut store_errors);
                    continue;
                }
            }
        }

        // 6. Sleep until something happens.
        let mut until = later(Instant::now(), wait);
        {
            let state = shared.state.lock();
            if let Some(t) = state.next_timer {
                until = until.min(t);
            }
            if let Phase::Draining { until: d } = state.phase {
                until = until.min(d);
            }
        }
        for t in [
            retry_claims_at,
            retry_reports_at,
            config.deadline,
            linger_until,
            handoff_at,
        ]
        .into_iter()
        .flatten()
        {
            until = until.min(t.max(Instant::now()));
        }
        tokio::select! {
            _ = &mut woken => {}
            _ = &mut work, if phase == Phase::Running => {}
            _ = tokio::time::sleep_until(until) => {}
        }
    }
}

/// How many steps the session may claim now (0: none): while it runs (not stopping, not past
/// its deadline), when a quarter of its slots are free or none is taken — the rule of the
/// driver's own claims, for the claim made with a report batch.
fn claim_room(shared: &Shared, now: Instant) -> usize {
    let config = &shared.config;
    let state = shared.state.lock();
    let running = state.phase == Phase::Running
        && !state.stop
        && state.failure.is_none()
        && config.deadline.is_none_or(|d| d > now);
    let free = config.concurrency.saturating_sub(state.held.len());
    if running && free > 0 && (free >= shared.claim_batch || state.held.is_empty()) {
        free.min(crate::limits::MAX_CLAIM)
    } else {
        0
    }
}

/// One pass of a drain that lasts until `until`: queued attempts go back at once; once `until`
/// has passed, so do the running ones (their late outcomes are refused) and reports that could
/// not be written are given up. Returns whether the session may end.
async fn drain(shared: &Shared, until: Instant, now: Instant) -> bool {
    let overdue = until <= now;
    let to_release = {
        let mut state = shared.state.lock();
        let mut ids: Vec<AttemptId> = state
            .queue
            .drain(..)
            .map(|s| AttemptId {
                step: s.step_id,
                attempt: s.attempt,
            })
            .collect();
        for id in &ids {
            state.held.remove(id);
        }
        if overdue {
            let held: Vec<(AttemptId, Stage)> =
                state.held.drain().map(|(id, h)| (id, h.stage)).collect();
            for (id, stage) in held {
                // A timed-out attempt was failed already; the others go back.
                let refused = if stage == Stage::TimedOut {
                    Refused::TimedOut
                } else {
                    ids.push(id);
                    Refused::Released
                };
                state.let_go.insert(id, refused);
            }
        }
        ids
    };
    for id in to_release {
        let released = shared.engine.release(id.step, id.attempt).await;
        let mut state = shared.state.lock();
        match released {
            Ok(()) => state.report.released += 1,
            Err(e) => {
                tracing::warn!(step = %id.step, attempt = id.attempt, error = %e,
                    "could not release a step; its lease will run out");
                state.report.lost += 1;
            }
        }
    }
    let mut state = shared.state.lock();
    if overdue {
        let gave_up = state.reports.len() as u64;
        state.reports.clear();
        state.reports_since = None;
        state.report.lost += gave_up;
    }
    state.held.is_empty() && state.reports.is_empty()
}

/// With `wake_on_demand`: wakes a host for each queued attempt once the queue has waited
/// [`HANDOFF_WAIT`] for one; otherwise when to look again (`None`: nothing waits).
fn hand_over(shared: &Shared, now: Instant) -> Option<Instant> {
    if !shared.config.wake_on_demand {
        return None;
    }
    let state = shared.state.lock();
    let at = state.queue_touched + HANDOFF_WAIT;
    match state.queue.len() {
        0 => None,
        n if at <= now => {
            drop(state);
            for _ in 0..n {
                shared.hosts.notify_one();
            }
            None
        }
        _ => Some(at),
    }
}

/// Queues claimed steps for the hosts and holds their slots.
fn hand_out(shared: &Shared, claimed: Vec<ClaimedStep>) {
    if claimed.is_empty() {
        return;
    }
    let now = Instant::now();
    let mut state = shared.state.lock();
    for mut step in claimed {
        step.logs = crate::logs::StepLog::open(shared.log_clock.clone());
        let id = AttemptId {
            step: step.step_id,
            attempt: step.attempt,
        };
        let deadline = later(now, Duration::from_millis(step.timeout_ms));
        let renew_every = Duration::from_millis((step.lease_ms / 3).max(1));
        let renew_at = later(now, renew_every);
        state.note_timer(deadline.min(renew_at));
        state.held.insert(
            id,
            Held {
                stage: Stage::Queued,
                logs: step.logs.clone(),
                source: crate::engine::EventSource::of(&step),
                kind: step.kind,
                dependents: step.dependents.clone(),
                deadline,
                renew_at,
                renew_every,
                timeout_ms: step.timeout_ms,
            },
        );
        state.queue.push_back(step);
    }
    let wakes = if shared.config.wake_on_demand {
        state.queue_touched = now;
        // A host that took an attempt just now comes back for the next one itself.
        let host_busy = state
            .host_took
            .is_some_and(|t| now.saturating_duration_since(t) < HANDOFF_WAIT);
        usize::from(!host_busy)
    } else {
        state.queue.len()
    };
    drop(state);
    // Each wake-up wakes one waiting host.
    for _ in 0..wakes {
        shared.hosts.notify_one();
    }
}

/// Fails overdue attempts (as timed out) and returns those whose lease is due for renewal.
fn timers(shared: &Shared, now: Instant) -> Vec<AttemptId> {
    let mut state = shared.state.lock();
    if state.next_timer.is_none_or(|t| t > now) {
        return Vec::new();
    }
    let mut renew = Vec::new();
    let mut overdue = Vec::new();
    let mut next: Option<Instant> = None;
    for (id, held) in state.held.iter_mut() {
        match held.stage {
            Stage::TimedOut => continue,
            Stage::Queued | Stage::Running if held.deadline <= now => {
                overdue.push((*id, held.stage, held.timeout_ms));
                held.stage = Stage::TimedOut;
                continue;
            }
            _ => {}
        }
        if held.renew_at <= now {
            renew.push(*id);
            held.renew_at = later(now, held.renew_every);
        }
        let t = held.deadline.min(held.renew_at);
        next = Some(next.map_or(t, |n| n.min(t)));
    }
    state.next_timer = next;
    for (id, stage, timeout_ms) in overdue {
        tracing::warn!(step = %id.step, attempt = id.attempt, timeout_ms, "attempt timed out");
        // What it logged until now goes with the failure; later lines are dropped.
        let logs = state
            .held
            .get(&id)
            .map(|h| h.logs.close())
            .unwrap_or_default();
        if stage == Stage::Queued {
            // No host took it: nothing will return it.
            state.held.remove(&id);
            state
                .queue
                .retain(|s| (s.step_id, s.attempt) != (id.step, id.attempt));
        }
        state.reports.push(Pending {
            report: StepReport {
                step: id.step,
                attempt: id.attempt,
                outcome: Outcome::Fail(timed_out(timeout_ms)),
                logs,
            },
            tries: 0,
        });
        state.reports_since.get_or_insert(now);
    }
    renew
}

/// Renews one lease; a lease the store says is lost is let go of (its host's report will be
/// refused by the store and counted lost).
async fn renew_lease(shared: &Shared, id: AttemptId) {
    match shared.engine.heartbeat(id.step, id.attempt).await {
        Ok(_) => {}
        Err(Error::ClaimLost { .. }) | Err(Error::TaskNotFound(_)) => {
            tracing::warn!(step = %id.step, attempt = id.attempt, "lease lost while the handler runs");
        }
        Err(e) => {
            tracing::warn!(step = %id.step, attempt = id.attempt, error = %e,
                "could not renew a lease; trying again");
            let mut state = shared.state.lock();
            let soon = Instant::now() + Duration::from_millis(200);
            if let Some(h) = state.held.get_mut(&id) {
                h.renew_at = soon;
            }
            state.note_timer(soon);
        }
    }
}

/// Writes the outcomes handed back, in batches; returns when to try again if the store failed,
/// and the steps claimed with the first batch when `claim` asks for a claim too (one store
/// transaction for both: `None` when no claim was made).
async fn write_reports(
    shared: &Shared,
    mut claim: Option<&ClaimRequest>,
) -> (Option<Instant>, Option<Vec<ClaimedStep>>) {
    let mut claimed = None;
    loop {
        let batch: Vec<Pending> = {
            let mut state = shared.state.lock();
            if state.reports.is_empty() {
                return (None, claimed);
            }
            let n = state.reports.len().min(MAX_BATCH);
            let batch = state.reports.drain(..n).collect();
            if state.reports.is_empty() {
                state.reports_since = None;
            }
            batch
        };
        let reports: Vec<StepReport> = batch.iter().map(|p| p.report.clone()).collect();
        let written =
            match claim.take() {
                Some(request) => shared.engine.report_and_claim(reports, request).await.map(
                    |(results, steps)| {
                        claimed = Some(steps);
                        results
                    },
                ),
                None => shared.engine.report_checked(reports).await,
            };
        match written {
            Ok(results) => {
                let mut state = shared.state.lock();
                for (p, result) in batch.iter().zip(results) {
                    match result {
                        Ok(()) => match p.report.outcome {
                            Outcome::Complete(_)
                            | Outcome::Decide(_)
                            | Outcome::Batch(_)
                            | Outcome::Spawn(_)
                            | Outcome::Children(_) => state.report.completed += 1,
                            Outcome::Fail(_) => state.report.failed += 1,
                        },
                        Err(e) => {
                            tracing::warn!(step = %p.report.step, attempt = p.report.attempt,
                                error = %e, "report refused");
                            state.report.lost += 1;
                        }
                    }
                }
            }
            Err(Error::Closed) => {
                let mut state = shared.state.lock();
                state.report.lost += batch.len() as u64;
                state.failure.get_or_insert(Error::Closed);
                return (None, claimed);
            }
            Err(e) => {
                let mut state = shared.state.lock();
                let mut tries = 0;
                let mut keep = Vec::with_capacity(batch.len());
                for mut p in batch {
                    p.tries += 1;
                    tries = tries.max(p.tries);
                    if p.tries >= REPORT_TRIES {
                        tracing::error!(step = %p.report.step, attempt = p.report.attempt,
                            error = %e, "gave up reporting a step; its lease will run out");
                        state.report.lost += 1;
                    } else {
                        keep.push(p);
                    }
                }
                tracing::warn!(error = %e, "could not write reports; retrying");
                keep.append(&mut state.reports);
                state.reports = keep;
                if !state.reports.is_empty() {
                    state.reports_since.get_or_insert_with(Instant::now);
                }
                let delay =
                    Duration::from_millis(50u64 << tries.min(6)).min(Duration::from_secs(2));
                return (Some(Instant::now() + delay), claimed);
            }
        }
    }
}

/// After a failed claim or status: for a store error (the `n`th in a row), when to try again
/// (the pool reconnects meanwhile); any other error ends the session.
fn store_trouble(shared: &Shared, error: Error, n: &mut u32) -> Option<Instant> {
    let Error::Store(e) = error else {
        shared.state.lock().failure = Some(error);
        return None;
    };
    *n += 1;
    let delay = Duration::from_millis(100u64 << (*n).min(5)).min(Duration::from_secs(3));
    tracing::warn!(error = %e, attempt = *n, ?delay, "store unavailable; the worker retries");
    Some(Instant::now() + delay)
}

/// Ends the session: hosts waiting in `next` get [`Next::Finished`].
fn finish(shared: &Shared) {
    shared.state.lock().phase = Phase::Done;
    shared.done.send_replace(true);
    shared.hosts.notify_waiters();
}
