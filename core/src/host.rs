//! What every binding needs from the core besides the engine, written once: the tokio runtime
//! of the process (made again in a forked child), durations from a host's seconds, the check
//! that refuses a handle inherited across `fork()`, and the outcomes a host hands back.
//!
//! Bindings block on the runtime from their own threads (with the interpreter lock released);
//! no runtime thread ever calls into a host.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::Runtime;

use crate::error::{Error, Result, StoreErrorKind};
use crate::retry::FailureKind;
use crate::store::StepFailure;
use crate::worker::{default_worker_id, AttemptOutcome, SessionConfig};

/// The process's runtime: one per process, made again in a forked child (a fork keeps no
/// threads, so the parent's runtime cannot run there; it is leaked, never dropped, since
/// dropping it would wait for threads that do not exist).
pub fn runtime() -> Result<Arc<Runtime>> {
    static RUNTIME: Mutex<Option<(u32, Arc<Runtime>)>> = Mutex::new(None);
    let mut slot = RUNTIME.lock();
    let pid = std::process::id();
    if let Some((owner, rt)) = slot.as_ref() {
        if *owner == pid {
            return Ok(rt.clone());
        }
    }
    if let Some((_, parent)) = slot.take() {
        std::mem::forget(parent);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tasker-core")
        .enable_all()
        .build()
        .map(Arc::new)
        .map_err(|e| {
            Error::store(
                StoreErrorKind::Other,
                format!("cannot start the engine's runtime: {e}"),
            )
        })?;
    *slot = Some((pid, rt.clone()));
    Ok(rt)
}

/// The process a handle was made in; a handle used in another (a forked child) is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pid: u32,
}

impl Owner {
    /// The current process.
    pub fn current() -> Owner {
        Owner {
            pid: std::process::id(),
        }
    }

    /// Whether this is still the process the handle was made in.
    pub fn is_current(self) -> bool {
        self.pid == std::process::id()
    }

    /// [`Error::Store`] naming `what` when used after a fork (the handle's connections and
    /// runtime belong to the parent).
    pub fn check(self, what: &str) -> Result<()> {
        if self.is_current() {
            Ok(())
        } else {
            Err(Error::store(
                StoreErrorKind::Unavailable,
                format!(
                    "this {what} was opened before a fork (pid {}): open a new one in the child process",
                    self.pid
                ),
            ))
        }
    }
}

/// A value made in one process that is dropped only there: in a forked child, a connection
/// pool or a runtime belongs to threads that do not exist, and dropping it could block forever,
/// so the child leaks it instead.
#[derive(Debug)]
pub struct ForkSafe<T> {
    value: Option<T>,
    owner: Owner,
}

impl<T> ForkSafe<T> {
    /// `value`, owned by the current process.
    pub fn new(value: T) -> Self {
        ForkSafe {
            value: Some(value),
            owner: Owner::current(),
        }
    }
}

impl<T> std::ops::Deref for ForkSafe<T> {
    type Target = T;
    fn deref(&self) -> &T {
        match &self.value {
            Some(value) => value,
            // Some from construction until Drop, which is the only place that takes it.
            None => unreachable!("a ForkSafe value is present until dropped"),
        }
    }
}

impl<T> Drop for ForkSafe<T> {
    fn drop(&mut self) {
        if let Some(value) = self.value.take() {
            if !self.owner.is_current() {
                std::mem::forget(value);
            }
        }
    }
}

/// A year, in seconds: the longest duration a host may give.
const YEAR: f64 = 365.0 * 24.0 * 3600.0;

/// A duration from a host's number of seconds: finite, between 0 and one year.
///
/// ```
/// use tasker_core::host::seconds;
/// assert_eq!(seconds(1.5, "timeout").unwrap().as_millis(), 1500);
/// assert!(seconds(-1.0, "timeout").is_err());
/// assert!(seconds(f64::NAN, "timeout").is_err());
/// ```
pub fn seconds(value: f64, what: &str) -> Result<Duration> {
    if !(0.0..=YEAR).contains(&value) {
        return Err(Error::InvalidArgument(format!(
            "{what} must be a number of seconds between 0 and one year, not {value}"
        )));
    }
    Duration::try_from_secs_f64(value).map_err(|_| {
        Error::InvalidArgument(format!("{what} is not a valid number of seconds: {value}"))
    })
}

/// The optional arguments of `create_task` in the bindings (and the keys, besides `namespace`
/// and `name`, of each task given to `create_tasks`), in order.
pub const CREATE_TASK_OPTIONS: [&str; 7] = [
    "context",
    "version",
    "idempotency_key",
    "priority",
    "run_at",
    "delay",
    "traceparent",
];

/// `seconds` as whole milliseconds (saturating), for a `retry_after`.
pub fn seconds_ms(value: f64, what: &str) -> Result<u64> {
    seconds(value, what).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A worker's configuration from a host's arguments, each checked:
/// [`Error::InvalidArgument`] naming the one that is wrong. `worker_id` defaults to
/// `<prefix>-<host>-<pid>-<random>`; the host's threads are woken on demand.
pub fn session_config(
    concurrency: usize,
    worker_id: Option<String>,
    prefix: &str,
    poll_interval: f64,
    drain_timeout: f64,
) -> Result<SessionConfig> {
    if concurrency == 0 {
        return Err(Error::InvalidArgument(
            "concurrency must be a positive integer, not 0".into(),
        ));
    }
    let worker_id = match worker_id {
        Some(id) if id.is_empty() => {
            return Err(Error::InvalidArgument("worker_id must not be empty".into()))
        }
        Some(id) => id,
        None => default_worker_id(prefix),
    };
    let poll = seconds(poll_interval, "poll_interval")?;
    if poll.is_zero() {
        return Err(Error::InvalidArgument(
            "poll_interval must be a positive number of seconds, not 0".into(),
        ));
    }
    let mut config = SessionConfig::new(concurrency);
    // The hosts are the bindings' threads: woken on demand.
    config.wake_on_demand = true;
    config.worker_id = worker_id.into();
    config.poll_interval = poll;
    config.drain_timeout = seconds(drain_timeout, "drain_timeout")?;
    Ok(config)
}

/// A handler's failure as a host reports it: retryable (after `retry_after` seconds when
/// given, else the step's backoff) or permanent. A `retry_after` past a year is taken as a
/// year (the step's `backoff_max_ms` caps it further): a handler asking for a long wait is
/// not refused; a negative or NaN one is [`Error::InvalidArgument`].
///
/// ```
/// use tasker_core::host::failure;
/// assert!(failure("busy".into(), true, Some(4e7)).is_ok());
/// assert!(failure("busy".into(), true, Some(f64::INFINITY)).is_ok());
/// assert!(failure("busy".into(), true, Some(-1.0)).is_err());
/// ```
pub fn failure(message: String, retryable: bool, retry_after: Option<f64>) -> Result<StepFailure> {
    let kind = if retryable {
        let retry_after_ms = retry_after
            .map(|s| seconds_ms(if s > YEAR { YEAR } else { s }, "retry_after"))
            .transpose()?;
        FailureKind::Retryable { retry_after_ms }
    } else {
        FailureKind::Permanent
    };
    Ok(StepFailure { message, kind })
}

/// What a host hands back for a handler's return value, once converted to JSON (a result, or a
/// decision step's [`crate::Decision`]): the outcome, or, when it is not JSON (`converted` is
/// the conversion's message), a permanent failure. The second part is that failure's message,
/// for the host to log.
pub fn result_outcome(
    converted: std::result::Result<impl Into<crate::HandlerOutput>, String>,
) -> (AttemptOutcome, Option<String>) {
    match converted {
        Ok(output) => (output.into().into(), None),
        Err(text) => {
            let detail = text
                .split_once("is not JSON-serialisable: ")
                .map_or(text.as_str(), |(_, d)| d);
            let message = format!("result is not JSON-serialisable: {detail}");
            let failure = StepFailure {
                message: message.clone(),
                kind: FailureKind::Permanent,
            };
            (AttemptOutcome::Fail(failure), Some(message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn seconds_in_range_round_trip(ms in 0u64..365 * 24 * 3600 * 1000) {
            let d = seconds(ms as f64 / 1000.0, "x").unwrap();
            prop_assert!((d.as_millis() as i128 - ms as i128).abs() <= 1);
        }

        #[test]
        fn negative_seconds_are_refused(v in f64::MIN..-f64::EPSILON) {
            prop_assert!(seconds(v, "x").is_err());
        }
    }

    #[test]
    fn a_result_that_is_not_json_is_a_permanent_failure_naming_why() {
        let (outcome, note) = result_outcome(Err::<serde_json::Value, _>(
            "the result is not JSON-serialisable: NaN".to_owned(),
        ));
        assert_eq!(
            note.as_deref(),
            Some("result is not JSON-serialisable: NaN")
        );
        assert!(matches!(
            outcome,
            AttemptOutcome::Fail(StepFailure {
                kind: FailureKind::Permanent,
                ..
            })
        ));
        let (outcome, note) = result_outcome(Ok::<_, String>(serde_json::json!(1)));
        assert_eq!(
            (outcome, note),
            (AttemptOutcome::Complete(serde_json::json!(1)), None)
        );
    }

    #[test]
    fn a_worker_config_names_the_argument_that_is_wrong() {
        for (bad, name) in [
            (session_config(0, None, "py", 0.1, 30.0), "concurrency"),
            (
                session_config(1, Some(String::new()), "py", 0.1, 30.0),
                "worker_id",
            ),
            (session_config(1, None, "py", -1.0, 30.0), "poll_interval"),
            (session_config(1, None, "py", 0.0, 30.0), "poll_interval"),
            (
                session_config(1, None, "py", 0.1, f64::NAN),
                "drain_timeout",
            ),
        ] {
            let message = bad.unwrap_err().to_string();
            assert!(message.contains(name), "{message}");
        }
        let ok = session_config(3, None, "py", 0.25, 1.0).unwrap();
        assert!(ok.worker_id.starts_with("py-"));
        assert_eq!((ok.concurrency, ok.poll_interval.as_millis()), (3, 250));
    }

    #[test]
    fn a_negative_retry_after_is_refused() {
        assert!(failure("m".into(), true, Some(-1.0)).is_err());
        let f = failure("m".into(), true, Some(2.0)).unwrap();
        assert_eq!(
            f.kind,
            FailureKind::Retryable {
                retry_after_ms: Some(2000)
            }
        );
        assert_eq!(
            failure("m".into(), false, Some(2.0)).unwrap().kind,
            FailureKind::Permanent
        );
    }

    #[test]
    fn the_runtime_is_shared_within_a_process() {
        let a = runtime().unwrap();
        let b = runtime().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(Owner::current().check("engine").is_ok());
    }
}
