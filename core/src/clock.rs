//! Time, injectable: the engine reads the time only through a [`Clock`], so that backoff, leases
//! and timeouts are tested by moving a [`ManualClock`] instead of sleeping.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use parking_lot::Mutex;

/// A point in time, UTC. The engine works in whole milliseconds (what the stores persist), so
/// both clocks below round down to the millisecond.
pub type Timestamp = DateTime<Utc>;

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> Timestamp;

    /// Whether this is a host's wall clock, which an engine on PostgreSQL corrects by the
    /// database's clock (so that hosts whose clocks disagree agree on when a lease runs out).
    /// `false` for clocks a test moves by hand.
    fn is_wall_clock(&self) -> bool {
        false
    }
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Utc::now().trunc_subsecs(3)
    }

    fn is_wall_clock(&self) -> bool {
        true
    }
}

/// A clock that moves only when told to; clones share the same time.
///
/// ```
/// use std::time::Duration;
/// use tasker_core::{Clock, ManualClock};
/// let clock = ManualClock::new();
/// let t0 = clock.now();
/// clock.advance(Duration::from_secs(5));
/// assert_eq!((clock.now() - t0).num_seconds(), 5);
/// ```
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Timestamp>>,
}

impl ManualClock {
    /// A clock stopped at the current wall time.
    pub fn new() -> Self {
        Self::at(Utc::now())
    }

    /// A clock stopped at `at`.
    pub fn at(at: Timestamp) -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(at.trunc_subsecs(3))),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let delta = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        let mut now = self.now.lock();
        *now = now
            .checked_add_signed(delta)
            .unwrap_or(*now)
            .trunc_subsecs(3);
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock()
    }
}

/// The instant the RFC 3339 `text` names (`2026-12-02T08:00:00Z`, `…T09:00:00+01:00`), for the
/// bindings; [`crate::Error::InvalidArgument`] naming `what` otherwise.
///
/// ```
/// let at = tasker_core::clock::parse_time("2026-12-02T09:00:00+01:00", "run_at").unwrap();
/// assert_eq!(at.to_rfc3339(), "2026-12-02T08:00:00+00:00");
/// assert!(tasker_core::clock::parse_time("tomorrow", "run_at").is_err());
/// ```
pub fn parse_time(text: &str, what: &str) -> crate::error::Result<Timestamp> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            crate::error::Error::InvalidArgument(format!(
                "{what} must be an RFC 3339 time such as 2026-12-02T08:00:00Z, not {:?}: {e}",
                crate::limits::message(text.to_owned())
            ))
        })
}

/// `at + ms` milliseconds, saturating at the far future.
pub fn add_ms(at: Timestamp, ms: u64) -> Timestamp {
    let ms = i64::try_from(ms).unwrap_or(i64::MAX);
    chrono::TimeDelta::try_milliseconds(ms)
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// `d`, at most a century: what "for ever" means where a user's duration (`Duration::MAX` for
/// "no limit", a template's longest timeout) is added to an instant, which must not overflow.
pub(crate) fn at_most_a_century(d: Duration) -> Duration {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    d.min(CENTURY)
}

/// `at + ms` milliseconds (`ms` may be negative), unchanged if that is out of range.
pub fn add_signed_ms(at: Timestamp, ms: i64) -> Timestamp {
    chrono::TimeDelta::try_milliseconds(ms)
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(at)
}
