//! Step logs: the lines a handler writes while it runs one attempt (`step.log(message, level)`,
//! and in Python the `logging` records emitted inside the handler), kept per attempt and
//! written to the store with the attempt's report, in the same transaction.
//!
//! An attempt keeps at most [`MAX_LINES`] lines of at most [`MAX_LINE_BYTES`] bytes each: a
//! longer message is cut (at a character boundary, marked with `…`), and past the line limit
//! the earliest lines give way to the latest, the first line kept saying how many were
//! dropped. The bounds are the core's: every binding's `step.log` goes through [`StepLog`].
//!
//! ```
//! use std::sync::Arc;
//! use tasker_core::logs::{LogLevel, StepLog};
//! let log = StepLog::open(Arc::new(tasker_core::SystemClock));
//! for i in 0..150 {
//!     log.push(LogLevel::Info, &format!("line {i}"));
//! }
//! let lines = log.close();
//! assert_eq!(lines.len(), 100);
//! assert_eq!(lines[0].message, "51 earlier lines dropped");
//! assert_eq!(lines[1].message, "line 51");
//! assert!(!log.push(LogLevel::Info, "after the report")); // closed: dropped
//! ```

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, Timestamp};
use crate::error::{Error, Result};
use crate::ids::StepId;

/// The most lines an attempt keeps.
pub const MAX_LINES: usize = 100;
/// The longest line kept, in bytes of UTF-8 (a longer one is cut).
pub const MAX_LINE_BYTES: usize = 1024;

/// How severe a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Detail for whoever debugs the handler.
    Debug,
    /// The default.
    Info,
    /// Something to look at.
    Warn,
    /// Something went wrong.
    Error,
}

impl LogLevel {
    /// The level's name as stored: `debug`, `info`, `warn` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LogLevel {
    type Err = Error;

    /// `debug`, `info`, `warn` or `error`, in any case; also the names other loggers use for
    /// them (`trace`, `warning`, `critical`, `fatal`: Python's `logging` level names, Ruby's
    /// `Logger` severities).
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "trace" | "debug" => Ok(LogLevel::Debug),
            "info" | "notice" => Ok(LogLevel::Info),
            "warn" | "warning" => Ok(LogLevel::Warn),
            "error" | "critical" | "fatal" => Ok(LogLevel::Error),
            _ => Err(Error::InvalidArgument(format!(
                "unknown log level {s:?}: expected debug, info, warn or error"
            ))),
        }
    }
}

/// One line of an attempt's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// When it was written (the engine's clock).
    pub at: Timestamp,
    /// How severe.
    pub level: LogLevel,
    /// What it says (at most [`MAX_LINE_BYTES`] bytes).
    pub message: String,
}

/// The lines of one attempt, as a report carries them to the store.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptLog {
    /// The step.
    pub step: StepId,
    /// The attempt.
    pub attempt: u32,
    /// Its lines, oldest first.
    pub lines: Vec<LogLine>,
}

/// One stored line, as [`crate::Engine::logs`] reads it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogView {
    /// The step's name.
    pub step: String,
    /// The step's index in its task.
    pub step_index: u32,
    /// The attempt that wrote it.
    pub attempt: u32,
    /// When.
    pub at: Timestamp,
    /// How severe.
    pub level: LogLevel,
    /// What it says.
    pub message: String,
}

#[derive(Debug)]
struct Buffer {
    clock: Arc<dyn Clock>,
    lines: VecDeque<LogLine>,
    /// Lines that gave way to later ones.
    dropped: u64,
    /// The attempt was reported (or let go of): later lines are dropped.
    closed: bool,
}

impl Buffer {
    fn new(clock: Arc<dyn Clock>) -> Self {
        Buffer {
            clock,
            lines: VecDeque::new(),
            dropped: 0,
            closed: false,
        }
    }

    /// The lines kept, oldest first, and none left: past [`MAX_LINES`], the first says how
    /// many earlier lines were dropped.
    fn take(&mut self) -> Vec<LogLine> {
        let dropped = std::mem::take(&mut self.dropped);
        let mut lines: Vec<LogLine> = std::mem::take(&mut self.lines).into();
        if dropped > 0 {
            // The marker takes the place of the earliest line kept.
            let first = lines.remove(0);
            lines.insert(
                0,
                LogLine {
                    at: first.at,
                    level: LogLevel::Warn,
                    message: format!("{} earlier lines dropped", dropped + 1),
                },
            );
        }
        lines
    }

    /// Keeps `line`, the earliest giving way past [`MAX_LINES`].
    fn keep(&mut self, line: LogLine) {
        if self.lines.len() == MAX_LINES {
            self.lines.pop_front();
            self.dropped += 1;
        }
        self.lines.push_back(line);
    }
}

/// The log of one attempt being run: cheap to clone, clones share the lines. A step handed out
/// by a [`crate::worker::WorkerSession`] (every binding's worker, the Rust [`crate::Worker`])
/// has an open one, written with its report; a step claimed by hand with
/// [`crate::Engine::claim`] has none, and its lines are dropped.
#[derive(Debug, Clone, Default)]
pub struct StepLog(Option<Arc<Mutex<Buffer>>>);

impl StepLog {
    /// An open log whose lines are stamped by `clock`.
    pub fn open(clock: Arc<dyn Clock>) -> Self {
        StepLog(Some(Arc::new(Mutex::new(Buffer::new(clock)))))
    }

    /// Keeps `message` at `level` (cut to [`MAX_LINE_BYTES`]); whether it was kept (not
    /// when the log is closed or there is none).
    pub fn push(&self, level: LogLevel, message: &str) -> bool {
        let Some(buffer) = &self.0 else {
            return false;
        };
        let message = cut(message);
        let mut b = buffer.lock();
        if b.closed {
            return false;
        }
        let at = b.clock.now();
        b.keep(LogLine { at, level, message });
        true
    }

    /// Closes the log and takes its lines, oldest first: past [`MAX_LINES`], the first says
    /// how many earlier lines were dropped. Empty when closed before.
    pub fn close(&self) -> Vec<LogLine> {
        let Some(buffer) = &self.0 else {
            return Vec::new();
        };
        let mut b = buffer.lock();
        b.closed = true;
        b.take()
    }
}

/// `lines` within the bounds of an attempt's log, as [`StepLog`] keeps them: the latest
/// [`MAX_LINES`] (the first then saying how many earlier ones were dropped), each cut to
/// [`MAX_LINE_BYTES`] (for reports made by hand, not through a worker's [`StepLog`]).
pub(crate) fn bound(lines: &mut Vec<LogLine>) {
    let fits = |l: &LogLine| l.message.len() <= MAX_LINE_BYTES && !l.message.contains('\0');
    if lines.len() <= MAX_LINES && lines.iter().all(fits) {
        return;
    }
    let mut b = Buffer::new(Arc::new(crate::clock::SystemClock));
    for line in lines.drain(..) {
        b.keep(LogLine {
            message: cut(&line.message),
            ..line
        });
    }
    *lines = b.take();
}

/// `message` cut to at most [`MAX_LINE_BYTES`] bytes at a character boundary, ending in `…`
/// when cut, its NULs replaced (see [`crate::limits::without_nul`]).
fn cut(message: &str) -> String {
    if message.contains('\0') {
        return cut(&crate::limits::without_nul(message.to_owned()));
    }
    if message.len() <= MAX_LINE_BYTES {
        return message.to_owned();
    }
    const MARK: &str = "…";
    let mut end = MAX_LINE_BYTES - MARK.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + MARK.len());
    out.push_str(&message[..end]);
    out.push_str(MARK);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn open() -> StepLog {
        StepLog::open(Arc::new(crate::ManualClock::default()))
    }

    #[test]
    fn levels_parse_from_the_names_loggers_use() {
        for (name, level) in [
            ("debug", LogLevel::Debug),
            ("INFO", LogLevel::Info),
            ("warning", LogLevel::Warn),
            ("Warn", LogLevel::Warn),
            ("CRITICAL", LogLevel::Error),
            ("error", LogLevel::Error),
        ] {
            assert_eq!(name.parse::<LogLevel>().unwrap(), level, "{name}");
        }
        let e = "loud".parse::<LogLevel>().unwrap_err();
        assert!(e.to_string().contains("\"loud\""), "{e}");
    }

    #[test]
    fn a_step_without_a_log_keeps_nothing() {
        let none = StepLog::default();
        assert!(!none.push(LogLevel::Info, "lost"));
        assert!(none.close().is_empty());
    }

    #[test]
    fn a_closed_log_keeps_nothing_more_and_gives_its_lines_once() {
        let log = open();
        assert!(log.push(LogLevel::Info, "one"));
        let clone = log.clone();
        assert!(clone.push(LogLevel::Error, "two"));
        let lines = log.close();
        assert_eq!(
            lines
                .iter()
                .map(|l| (l.level, &*l.message))
                .collect::<Vec<_>>(),
            [(LogLevel::Info, "one"), (LogLevel::Error, "two")]
        );
        assert!(!clone.push(LogLevel::Info, "late"));
        assert!(log.close().is_empty());
    }

    proptest! {
        #[test]
        fn lines_are_bounded_and_the_latest_kept(
            messages in proptest::collection::vec(".{0,1500}", 0..260)
        ) {
            let log = open();
            for m in &messages {
                log.push(LogLevel::Info, m);
            }
            let lines = log.close();
            prop_assert_eq!(lines.len(), messages.len().min(MAX_LINES));
            for l in &lines {
                prop_assert!(l.message.len() <= MAX_LINE_BYTES);
            }
            let kept = if messages.len() > MAX_LINES {
                let dropped = messages.len() - (MAX_LINES - 1);
                prop_assert_eq!(&lines[0].message, &format!("{dropped} earlier lines dropped"));
                &lines[1..]
            } else {
                &lines[..]
            };
            // The latest lines, in order, each the message or its start marked as cut.
            let latest = &messages[messages.len() - kept.len()..];
            for (line, message) in kept.iter().zip(latest) {
                // As written, but for the NULs no store keeps.
                let message = &crate::limits::without_nul(message.clone());
                if message.len() <= MAX_LINE_BYTES {
                    prop_assert_eq!(&line.message, message);
                } else {
                    let start = line.message.strip_suffix('…').expect("marked");
                    prop_assert!(message.starts_with(start));
                    // Cut no further back than a character's width.
                    prop_assert!(start.len() + 3 >= MAX_LINE_BYTES - '…'.len_utf8());
                }
            }
        }
    }
}
