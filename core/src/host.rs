//! What every binding needs from the core besides the engine, written once: the tokio runtime
//! of the process (made again in a forked child), durations from a host's seconds, and the
//! check that refuses a handle inherited across `fork()`.
//!
//! Bindings block on the runtime from their own threads (with the interpreter lock released);
//! no runtime thread ever calls into a host.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::Runtime;

use crate::error::{Error, Result};

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
        .map_err(|e| Error::Store(format!("cannot start the engine's runtime: {e}")))?;
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

    /// [`Error::InvalidArgument`] naming `what` when used after a fork.
    pub fn check(self, what: &str) -> Result<()> {
        if self.is_current() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "this {what} was opened before a fork (pid {}): open a new one in the child process",
                self.pid
            )))
        }
    }
}

/// A duration from a host's number of seconds: finite, between 0 and one year.
///
/// ```
/// use tasker_core::host::seconds;
/// assert_eq!(seconds(1.5, "timeout").unwrap().as_millis(), 1500);
/// assert!(seconds(-1.0, "timeout").is_err());
/// assert!(seconds(f64::NAN, "timeout").is_err());
/// ```
pub fn seconds(value: f64, what: &str) -> Result<Duration> {
    const YEAR: f64 = 365.0 * 24.0 * 3600.0;
    if !(0.0..=YEAR).contains(&value) {
        return Err(Error::InvalidArgument(format!(
            "{what} must be a number of seconds between 0 and one year, not {value}"
        )));
    }
    Duration::try_from_secs_f64(value).map_err(|_| {
        Error::InvalidArgument(format!("{what} is not a valid number of seconds: {value}"))
    })
}

/// `seconds` as whole milliseconds (saturating), for a `retry_after`.
pub fn seconds_ms(value: f64, what: &str) -> Result<u64> {
    seconds(value, what).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
    fn the_runtime_is_shared_within_a_process() {
        let a = runtime().unwrap();
        let b = runtime().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(Owner::current().check("engine").is_ok());
    }
}
