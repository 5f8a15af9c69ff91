//! The limits of `API.md` § "Limits", the same in every language and enforced here once: the
//! engine checks what it is given before anything is written, so that no value a user controls
//! can be stored and then fail to load (serde_json refuses to read JSON nested deeper than 128
//! levels), grow a store without bound or overflow a counter.
//!
//! | what | limit | past it |
//! |---|---|---|
//! | JSON nesting (context, results, config) | [`MAX_JSON_DEPTH`] levels | [`Error::InvalidArgument`] |
//! | context, one result | [`MAX_JSON_BYTES`] serialised each | [`Error::InvalidArgument`] |
//! | error message | [`MAX_MESSAGE_BYTES`] | truncated with `…` ([`message`]) |
//! | idempotency key | [`MAX_IDEMPOTENCY_KEY_BYTES`] | [`Error::InvalidArgument`] |
//! | `max_attempts` | 1 … [`MAX_ATTEMPTS`] | [`Error::Template`] |
//! | `retry_after` | the step's `backoff_max_ms` | capped |
//! | claim `limit` | 1 … [`MAX_CLAIM`] | [`Error::InvalidArgument`] |
//! | child tasks one step starts | [`MAX_CHILDREN`] | [`Error::InvalidArgument`] (a worker: the step fails for good) |

use serde_json::Value;

use crate::error::{Error, Result};
use crate::retry::FailureKind;
use crate::store::{Batch, BatchWork, Outcome, StepFailure};

/// The deepest a JSON value may nest: a scalar is depth 0, `[1]` depth 1.
pub const MAX_JSON_DEPTH: usize = 64;
/// The most bytes a context or one result may take, serialised as JSON.
pub const MAX_JSON_BYTES: usize = 1 << 20;
/// The most bytes of a failure's message that are kept.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// The longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;
/// The largest `max_attempts` a template may give a step.
pub const MAX_ATTEMPTS: u32 = 1000;
/// The most steps one claim may ask for.
pub const MAX_CLAIM: usize = 1000;
/// The most child tasks one step may start (its parent step's result holds all their results).
pub const MAX_CHILDREN: usize = 1000;

/// Checks that `value` (named `what` in the error: "the context", "the result") nests at most
/// [`MAX_JSON_DEPTH`] levels and serialises to at most [`MAX_JSON_BYTES`].
///
/// ```
/// use serde_json::json;
/// use tasker_core::limits::check_json;
/// assert!(check_json(&json!({"order": [1, 2, 3]}), "the context").is_ok());
/// let mut deep = json!(0);
/// for _ in 0..65 { deep = json!([deep]); }
/// assert!(check_json(&deep, "the context").unwrap_err().to_string().contains("64 levels"));
/// ```
pub fn check_json(value: &Value, what: &str) -> Result<()> {
    match json_problem(value, what) {
        Some(why) => Err(Error::InvalidArgument(why)),
        None => Ok(()),
    }
}

/// What makes `value` past the limits, if anything (the message of [`check_json`]'s error).
fn json_problem(value: &Value, what: &str) -> Option<String> {
    // Iterative: a value nested far too deep must not exhaust the stack while it is checked.
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((v, depth)) = stack.pop() {
        if matches!(v, Value::Array(_) | Value::Object(_)) && depth >= MAX_JSON_DEPTH {
            return Some(format!("{what} nests deeper than {MAX_JSON_DEPTH} levels"));
        }
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|c| (c, depth + 1))),
            Value::Object(map) => stack.extend(map.values().map(|c| (c, depth + 1))),
            _ => {}
        }
    }
    let size = json_size(value);
    (size > MAX_JSON_BYTES).then(|| {
        format!(
            "{what} is larger than {} KiB serialised ({} bytes or more)",
            MAX_JSON_BYTES / 1024,
            size
        )
    })
}

/// The serialised size of `value`, counted without building the text, and only up to just past
/// [`MAX_JSON_BYTES`].
fn json_size(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            if self.0 > MAX_JSON_BYTES {
                // Stops the serialiser: the size is known to be too large.
                return Err(std::io::Error::other("too large"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// `text` cut to at most [`MAX_MESSAGE_BYTES`] (at a character boundary, ending with `…`).
///
/// ```
/// use tasker_core::limits::{message, MAX_MESSAGE_BYTES};
/// assert_eq!(message("card declined".into()), "card declined");
/// let long = message("é".repeat(5000));
/// assert!(long.len() <= MAX_MESSAGE_BYTES && long.ends_with('…'));
/// ```
pub fn message(text: String) -> String {
    let mut text = without_nul(text);
    if text.len() <= MAX_MESSAGE_BYTES {
        return text;
    }
    let mut end = MAX_MESSAGE_BYTES - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
}

/// A worker's outcome within the limits: a result, decision or batch past them becomes a
/// permanent failure ("result refused: …", what a worker can do with it); a failure's message
/// is cut to [`MAX_MESSAGE_BYTES`].
pub fn outcome(outcome: Outcome) -> Outcome {
    if let Outcome::Fail(failure) = outcome {
        return Outcome::Fail(StepFailure {
            message: message(failure.message),
            kind: failure.kind,
        });
    }
    match outcome_problem(&outcome) {
        None => outcome,
        Some((what, why)) => Outcome::Fail(StepFailure {
            message: format!("{what} refused: {why}"),
            kind: FailureKind::Permanent,
        }),
    }
}

/// Checks a result, decision or batch against the limits (a failure always passes: its
/// message is cut instead, see [`outcome`]).
pub fn check_outcome(outcome: &Outcome) -> Result<()> {
    match outcome_problem(outcome) {
        Some((_, why)) => Err(Error::InvalidArgument(why)),
        None => Ok(()),
    }
}

/// What of `outcome` is past the limits, and why.
fn outcome_problem(outcome: &Outcome) -> Option<(&'static str, String)> {
    let max = crate::template::MAX_STEPS;
    match outcome {
        Outcome::Complete(result) => json_problem(result, "the result").map(|w| ("result", w)),
        Outcome::Decide(d) if d.steps.len() > max => Some((
            "decision",
            format!(
                "the decision names {} steps, more than a template may have ({max})",
                d.steps.len()
            ),
        )),
        Outcome::Decide(d) => json_problem(&d.result, "the result").map(|w| ("decision", w)),
        Outcome::Batch(b) => batch_problem(b).map(|w| ("batch", w)),
        Outcome::Spawn(c) => children_problem(c.tasks.len())
            .or_else(|| {
                c.tasks
                    .iter()
                    .find_map(|t| json_problem(&t.context, "a child task's context"))
            })
            .map(|w| ("child tasks", w)),
        Outcome::Children(ids) => children_problem(ids.len()).map(|w| ("child tasks", w)),
        Outcome::Fail(_) => None,
    }
}

/// Why `n` child tasks are too many for one step, if they are.
fn children_problem(n: usize) -> Option<String> {
    (n > MAX_CHILDREN).then(|| {
        format!("a step may start at most {MAX_CHILDREN} child tasks; this one started {n}")
    })
}

/// What makes a batch past the limits: its result, an item, or all its items together larger
/// than [`MAX_JSON_BYTES`].
fn batch_problem(batch: &Batch) -> Option<String> {
    if let BatchWork::Items(items) = &batch.work {
        let mut size = 0usize;
        for item in items {
            if let Some(why) = json_problem(item, "an item of the batch") {
                return Some(why);
            }
            size += json_size(item) + 1;
            if size > MAX_JSON_BYTES {
                return Some(format!(
                    "the batch's items are larger than {} KiB serialised",
                    MAX_JSON_BYTES / 1024
                ));
            }
        }
    }
    json_problem(&batch.result, "the result")
}

/// `text` with each NUL character replaced by U+FFFD: a message is kept as it was written
/// except for what no store can hold (PostgreSQL's text columns refuse a NUL, and one such
/// message would fail the whole batch of reports written with it).
///
/// ```
/// assert_eq!(tasker_core::limits::without_nul("a\0b".into()), "a\u{FFFD}b");
/// ```
pub fn without_nul(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

/// Checks an idempotency key's length, and that it holds no NUL (which no store keeps).
pub fn check_idempotency_key(key: &str) -> Result<()> {
    if key.contains('\0') {
        return Err(Error::InvalidArgument(
            "the idempotency key holds a NUL character, which the stores cannot keep".into(),
        ));
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(Error::InvalidArgument(format!(
            "the idempotency key is {} bytes long; the limit is {MAX_IDEMPOTENCY_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

/// Checks a claim's `limit`.
pub fn check_claim_limit(limit: usize) -> Result<()> {
    if limit == 0 || limit > MAX_CLAIM {
        return Err(Error::InvalidArgument(format!(
            "a claim's limit must be between 1 and {MAX_CLAIM}, not {limit}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn nested(depth: usize) -> Value {
        let mut v = json!("leaf");
        for i in 0..depth {
            v = if i % 2 == 0 {
                json!([v])
            } else {
                json!({ "k": v })
            };
        }
        v
    }

    #[test]
    fn sixty_four_levels_pass_and_sixty_five_do_not() {
        assert!(check_json(&nested(64), "the context").is_ok());
        let err = check_json(&nested(65), "the context").unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains("the context nests deeper than 64"));
    }

    #[test]
    fn a_value_nested_a_million_levels_is_refused_without_overflowing_the_stack() {
        let mut v = Value::Null;
        for _ in 0..1_000_000 {
            v = Value::Array(vec![v]);
        }
        assert!(check_json(&v, "the result").is_err());
        // Dropping it recursively would overflow the stack: unwind it by hand.
        while let Value::Array(mut items) = v {
            v = items.pop().unwrap_or(Value::Null);
        }
    }

    #[test]
    fn one_mebibyte_passes_and_one_byte_more_does_not() {
        // "…" plus the two quotes: the serialised size is the string's length + 2.
        let fits = Value::String("x".repeat(MAX_JSON_BYTES - 2));
        assert!(check_json(&fits, "the result").is_ok());
        let over = Value::String("x".repeat(MAX_JSON_BYTES - 1));
        let err = check_json(&over, "the result").unwrap_err();
        assert!(err.to_string().contains("larger than 1024 KiB"), "{err}");
    }

    #[test]
    fn keys_and_limits() {
        assert!(check_idempotency_key(&"k".repeat(255)).is_ok());
        assert!(check_idempotency_key(&"k".repeat(256)).is_err());
        assert!(check_claim_limit(0).is_err());
        assert!(check_claim_limit(1).is_ok());
        assert!(check_claim_limit(1000).is_ok());
        assert!(check_claim_limit(1001).is_err());
    }

    proptest! {
        #[test]
        fn the_depth_check_agrees_with_the_depth(depth in 0usize..130) {
            prop_assert_eq!(check_json(&nested(depth), "v").is_ok(), depth <= MAX_JSON_DEPTH);
        }

        #[test]
        fn messages_are_cut_at_a_char_boundary(text in "\\PC{0,3000}") {
            let cut = message(text.clone());
            prop_assert!(cut.len() <= MAX_MESSAGE_BYTES);
            if text.len() <= MAX_MESSAGE_BYTES {
                prop_assert_eq!(cut, text);
            } else {
                prop_assert!(cut.ends_with('…'));
                prop_assert!(text.starts_with(cut.trim_end_matches('…')));
            }
        }
    }
}
