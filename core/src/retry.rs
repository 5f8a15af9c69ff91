//! Retries: the per-step retry policy, the backoff delay, and the decision after a failure.
//!
//! Pure functions over plain data; the randomness of jitter comes in as an argument.

use serde::{Deserialize, Serialize};

/// How often and how patiently a step is retried.
///
/// `max_attempts` counts the first attempt. The delay before attempt `n + 1` grows as
/// `backoff` says — by default exponentially, `min(backoff_max_ms, backoff_base_ms * 2^(n-1))`
/// — and is drawn uniformly from `[0, that]` when `jitter` is on ("full jitter").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; at least 1.
    pub max_attempts: u32,
    /// The first backoff delay, in milliseconds.
    pub backoff_base_ms: u64,
    /// The largest backoff delay, in milliseconds.
    pub backoff_max_ms: u64,
    /// Full jitter: draw the delay uniformly between zero and the backoff's value.
    pub jitter: bool,
    /// How the delay grows from one attempt to the next.
    #[serde(skip_serializing_if = "Backoff::is_default")]
    pub backoff: Backoff,
}

/// How a retry's delay grows with the attempts that failed (`n`, from 1), before
/// `backoff_max_ms` caps it: `exponential` `base × 2^(n-1)` (the default), `linear`
/// `base × n`, `fibonacci` `base × F(n)` (1, 1, 2, 3, 5, …), `none` no delay at all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// `base × 2^(n-1)`.
    #[default]
    Exponential,
    /// `base × n`.
    Linear,
    /// `base × F(n)`, F(1) = F(2) = 1.
    Fibonacci,
    /// Retried at once.
    None,
}

impl Backoff {
    fn is_default(&self) -> bool {
        *self == Backoff::Exponential
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            backoff_base_ms: 1_000,
            backoff_max_ms: 300_000,
            jitter: true,
            backoff: Backoff::Exponential,
        }
    }
}

/// How a handler's failure should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum FailureKind {
    /// Try again while attempts are left; `retry_after_ms` overrides the backoff.
    Retryable {
        /// The handler's own delay before the next attempt, if it named one.
        retry_after_ms: Option<u64>,
    },
    /// Do not try again.
    Permanent,
}

/// What happens to a step after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Run again after `delay_ms`.
    RetryAfter {
        /// Milliseconds to wait before the step may be claimed again.
        delay_ms: u64,
    },
    /// No further attempt: the step has failed for good.
    GiveUp {
        /// Whether the attempt budget, rather than a permanent error, ended it.
        exhausted: bool,
    },
}

impl RetryPolicy {
    /// What makes this policy unusable where at most `limit` attempts are allowed, if
    /// anything: no attempt at all, more than `limit`, or a first delay over the largest.
    pub fn problem(&self, limit: u32) -> Option<String> {
        if self.max_attempts == 0 {
            Some("max_attempts must be at least 1 (it counts the first attempt)".to_owned())
        } else if self.max_attempts > limit {
            Some(format!(
                "max_attempts must be at most {limit}, not {}",
                self.max_attempts
            ))
        } else if self.backoff_base_ms > self.backoff_max_ms {
            Some(format!(
                "backoff_base_ms ({}) must not exceed backoff_max_ms ({})",
                self.backoff_base_ms, self.backoff_max_ms
            ))
        } else {
            None
        }
    }

    /// The delay before the attempt after `attempt` (1-based) as [`RetryPolicy::backoff`]
    /// grows it, capped at `backoff_max_ms`, before jitter.
    pub fn exponential_ms(&self, attempt: u32) -> u64 {
        let n = attempt.max(1);
        let factor = match self.backoff {
            Backoff::Exponential => 1u64.checked_shl((n - 1).min(63)).unwrap_or(u64::MAX),
            Backoff::Linear => u64::from(n),
            Backoff::Fibonacci => fibonacci(n),
            Backoff::None => 0,
        };
        self.backoff_base_ms
            .saturating_mul(factor)
            .min(self.backoff_max_ms)
    }

    /// The backoff delay after failed attempt `attempt`; `unit` is a random number in `[0, 1)`
    /// used only when `jitter` is on.
    pub fn backoff_ms(&self, attempt: u32, unit: f64) -> u64 {
        let ceiling = self.exponential_ms(attempt);
        if !self.jitter {
            return ceiling;
        }
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        // Full jitter: uniform over [0, ceiling].
        ((ceiling as f64) * unit).round() as u64
    }

    /// The decision after attempt `attempt` (1-based) of a step whose budget is `max_attempts`
    /// failed with `kind`.
    pub fn decide(
        &self,
        attempt: u32,
        max_attempts: u32,
        kind: FailureKind,
        unit: f64,
    ) -> RetryDecision {
        match kind {
            FailureKind::Permanent => RetryDecision::GiveUp { exhausted: false },
            FailureKind::Retryable { .. } if attempt >= max_attempts => {
                RetryDecision::GiveUp { exhausted: true }
            }
            // A handler's retry_after is capped at the step's backoff_max_ms.
            FailureKind::Retryable {
                retry_after_ms: Some(ms),
            } => RetryDecision::RetryAfter {
                delay_ms: ms.min(self.backoff_max_ms),
            },
            FailureKind::Retryable {
                retry_after_ms: None,
            } => RetryDecision::RetryAfter {
                delay_ms: self.backoff_ms(attempt, unit),
            },
        }
    }
}

/// F(n), F(1) = F(2) = 1, saturating.
fn fibonacci(n: u32) -> u64 {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 1..n {
        (a, b) = (b, a.saturating_add(b));
        if b == u64::MAX {
            break;
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(base: u64, max: u64, jitter: bool) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            backoff_base_ms: base,
            backoff_max_ms: max,
            jitter,
            backoff: Backoff::Exponential,
        }
    }

    #[test]
    fn each_backoff_grows_as_named_and_caps() {
        let grow = |backoff| {
            let p = RetryPolicy {
                backoff,
                ..policy(100, 1_000, false)
            };
            (1..=7).map(|n| p.backoff_ms(n, 0.5)).collect::<Vec<_>>()
        };
        assert_eq!(
            grow(Backoff::Exponential),
            [100, 200, 400, 800, 1000, 1000, 1000]
        );
        assert_eq!(grow(Backoff::Linear), [100, 200, 300, 400, 500, 600, 700]);
        assert_eq!(
            grow(Backoff::Fibonacci),
            [100, 100, 200, 300, 500, 800, 1000]
        );
        assert_eq!(grow(Backoff::None), [0; 7]);
        let named: RetryPolicy = serde_json::from_str(r#"{"backoff": "fibonacci"}"#).unwrap();
        assert_eq!(named.backoff, Backoff::Fibonacci);
        assert!(serde_json::from_str::<RetryPolicy>(r#"{"backoff": "cubic"}"#).is_err());
    }

    proptest! {
        #[test]
        fn no_backoff_ever_passes_its_cap_or_shrinks(
            base in 0u64..10_000,
            max in 0u64..1_000_000,
            attempt in 1u32..200,
            kind in prop::sample::select(vec![Backoff::Exponential, Backoff::Linear, Backoff::Fibonacci, Backoff::None]),
        ) {
            let p = RetryPolicy { backoff: kind, ..policy(base, max, false) };
            let (now, next) = (p.backoff_ms(attempt, 0.0), p.backoff_ms(attempt + 1, 0.0));
            prop_assert!(now <= max && next <= max);
            prop_assert!(next >= now);
        }
    }

    #[test]
    fn backoff_doubles_then_caps() {
        let p = policy(200, 1_000, false);
        let delays: Vec<u64> = (1..=5).map(|a| p.backoff_ms(a, 0.5)).collect();
        assert_eq!(delays, vec![200, 400, 800, 1_000, 1_000]);
    }

    #[test]
    fn handler_retry_after_overrides_backoff_up_to_backoff_max() {
        let p = policy(200, 1_000, false);
        let after = |ms| FailureKind::Retryable {
            retry_after_ms: Some(ms),
        };
        assert_eq!(
            p.decide(1, 5, after(700), 0.0),
            RetryDecision::RetryAfter { delay_ms: 700 }
        );
        assert_eq!(
            p.decide(1, 5, after(7_000), 0.0),
            RetryDecision::RetryAfter { delay_ms: 1_000 }
        );
    }

    #[test]
    fn permanent_errors_and_exhausted_budgets_give_up() {
        let p = policy(200, 1_000, false);
        assert_eq!(
            p.decide(1, 5, FailureKind::Permanent, 0.0),
            RetryDecision::GiveUp { exhausted: false }
        );
        let retryable = FailureKind::Retryable {
            retry_after_ms: None,
        };
        assert_eq!(
            p.decide(5, 5, retryable, 0.0),
            RetryDecision::GiveUp { exhausted: true }
        );
        assert_eq!(
            p.decide(3, 5, retryable, 0.0),
            RetryDecision::RetryAfter { delay_ms: 800 }
        );
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let p = policy(u64::MAX / 2, u64::MAX, false);
        assert_eq!(p.backoff_ms(u32::MAX, 0.0), u64::MAX);
    }

    proptest! {
        #[test]
        fn jittered_delay_stays_within_zero_and_the_capped_exponential(
            base in 0u64..100_000, max in 0u64..10_000_000, attempt in 1u32..80, unit in 0.0f64..1.0
        ) {
            let p = policy(base, max, true);
            let d = p.backoff_ms(attempt, unit);
            prop_assert!(d <= p.exponential_ms(attempt));
            prop_assert!(d <= max);
        }

        #[test]
        fn exponential_delay_never_decreases_with_attempts(
            base in 0u64..100_000, max in 0u64..10_000_000, attempt in 1u32..80
        ) {
            let p = policy(base, max, false);
            prop_assert!(p.backoff_ms(attempt + 1, 0.0) >= p.backoff_ms(attempt, 0.0));
        }

        #[test]
        fn a_retryable_failure_retries_exactly_while_attempts_are_left(
            attempt in 1u32..20, max_attempts in 1u32..20
        ) {
            let p = policy(10, 100, true);
            let d = p.decide(attempt, max_attempts, FailureKind::Retryable { retry_after_ms: None }, 0.3);
            prop_assert_eq!(matches!(d, RetryDecision::RetryAfter { .. }), attempt < max_attempts);
        }
    }
}
