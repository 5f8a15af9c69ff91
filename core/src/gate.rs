//! Concurrency keys and rate limits: the pure side of the limits a claim respects across every
//! worker of a store.
//!
//! * A step's (or a template's) `concurrency: {key, limit}` lets at most `limit` steps with that
//!   key (at template level: tasks) be in progress at once. The key is a [`KeyTemplate`] such
//!   as `customer:{{context.customer_id}}`, rendered once per task from its context.
//! * A step's `rate_limit: {key, limit, per_ms, burst}` lets claims take steps with that key at
//!   `limit` per `per_ms` on average, from a token bucket of `burst` tokens (default a tenth of
//!   `limit`, at least 1) kept in the store: in any window of `per_ms`, at most `limit + burst`
//!   start.
//!
//! A claim looks at its candidates in claim order (priority, then readiness) and asks a
//! [`Room`] for each (through `store::admitted`): the room knows, per key, how many more may start now (the key's limit
//! less its holders, as the store counted them under the key's lock; the tokens in its
//! bucket). A candidate whose keys have no room left is held back and stays ready: the first
//! held back is the first admitted once a holder finishes (admission is greedy in claim order).
//! A key the room was not told about has no room: a step made ready inside a claim's own
//! transaction waits for the next claim, which counts its key.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `concurrency: {key, limit}` as written in a template (on a step, or on the template).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencySpec {
    /// The key, e.g. `customer:{{context.customer_id}}` (see [`KeyTemplate`]).
    pub key: String,
    /// How many may hold the key at once (at least 1).
    pub limit: u32,
}

/// `rate_limit: {key, limit, per_ms, burst}` as written on a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// The key, e.g. `stripe` or `api:{{context.account}}` (see [`KeyTemplate`]); steps of any
    /// template naming the same key share its bucket.
    pub key: String,
    /// How many steps may start per `per_ms` on average (at least 1).
    pub limit: u32,
    /// The window, in milliseconds (at least 1).
    pub per_ms: u64,
    /// How many may start at once after a quiet spell (the bucket's size; default
    /// `max(1, limit / 10)`, at most `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// The longest window a rate limit may have, in milliseconds (7 days).
pub const MAX_PER_MS: u64 = 7 * 24 * 3600 * 1000;

/// The longest a rendered key may be, in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// A key with `{{context.path}}` placeholders, parsed once when its template is compiled.
///
/// A placeholder names a path in the task's context (`{{context.customer.id}}`, spaces
/// allowed inside the braces); it renders a string as it is and a number or boolean as JSON
/// writes it. A task whose context lacks the path, or holds anything else there, is refused
/// when created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    text: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Path(Vec<String>),
}

impl KeyTemplate {
    /// Parses `text`; why it is not a key template otherwise.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Err("the key is empty".into());
        }
        if text.len() > MAX_KEY_LEN {
            return Err(format!("the key is longer than {MAX_KEY_LEN} bytes"));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| {
                format!("{text:?} opens a placeholder with {{{{ and never closes it")
            })?;
            let inner = after[..close].trim();
            let path = inner.strip_prefix("context.").ok_or_else(|| {
                format!("the placeholder {{{{{inner}}}}} in {text:?} must name a path in the context, as {{{{context.customer_id}}}}")
            })?;
            let path: Vec<String> = path.split('.').map(str::to_owned).collect();
            if path.iter().any(|p| p.is_empty()) {
                return Err(format!(
                    "the placeholder {{{{{inner}}}}} in {text:?} has an empty path segment"
                ));
            }
            parts.push(Part::Path(path));
            rest = &after[close + 2..];
        }
        if rest.contains("}}") {
            return Err(format!("{text:?} closes a placeholder it never opened"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(KeyTemplate {
            text: text.to_owned(),
            parts,
        })
    }

    /// The key as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The key of a task whose context is `context`; what is wrong with the context otherwise.
    pub fn render(&self, context: &Value) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Path(path) => {
                    let found = path.iter().try_fold(context, |v, p| v.get(p.as_str()));
                    match found {
                        Some(Value::String(s)) => out.push_str(s),
                        Some(v @ (Value::Number(_) | Value::Bool(_))) => {
                            out.push_str(&v.to_string())
                        }
                        Some(_) => {
                            return Err(format!(
                                "the key {:?} needs context.{} to be a string, number or boolean",
                                self.text,
                                path.join(".")
                            ))
                        }
                        None => {
                            return Err(format!(
                                "the key {:?} needs context.{}, which the context lacks",
                                self.text,
                                path.join(".")
                            ))
                        }
                    }
                }
            }
        }
        if out.contains('\0') {
            return Err(format!(
                "the key {:?} renders with a NUL character (from the context), which the stores \
                 cannot keep",
                self.text
            ));
        }
        if out.len() > MAX_KEY_LEN {
            return Err(format!(
                "the key {:?} renders longer than {MAX_KEY_LEN} bytes",
                self.text
            ));
        }
        Ok(out)
    }
}

/// A compiled `concurrency`: its key and limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concurrency {
    /// The key.
    pub key: KeyTemplate,
    /// At most this many at once.
    pub limit: u32,
}

impl Concurrency {
    /// `spec` checked; `what` names it in the error (e.g. "step charge's concurrency").
    pub fn compile(spec: &ConcurrencySpec, what: &str) -> Result<Self, String> {
        if spec.limit == 0 {
            return Err(format!("{what}: limit must be at least 1"));
        }
        Ok(Concurrency {
            key: KeyTemplate::parse(&spec.key).map_err(|e| format!("{what}: {e}"))?,
            limit: spec.limit,
        })
    }
}

/// A compiled `rate_limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// The key.
    pub key: KeyTemplate,
    /// The bucket's rate and size.
    pub rate: Rate,
}

impl RateLimit {
    /// `spec` checked; `what` names it in the error.
    pub fn compile(spec: &RateLimitSpec, what: &str) -> Result<Self, String> {
        if spec.limit == 0 {
            return Err(format!("{what}: limit must be at least 1"));
        }
        if spec.per_ms == 0 || spec.per_ms > MAX_PER_MS {
            return Err(format!(
                "{what}: per_ms must be between 1 and {MAX_PER_MS} (7 days)"
            ));
        }
        let burst = spec.burst.unwrap_or((spec.limit / 10).max(1));
        if burst == 0 || burst > spec.limit {
            return Err(format!(
                "{what}: burst must be between 1 and the limit ({})",
                spec.limit
            ));
        }
        Ok(RateLimit {
            key: KeyTemplate::parse(&spec.key).map_err(|e| format!("{what}: {e}"))?,
            rate: Rate {
                limit: spec.limit,
                per_ms: spec.per_ms,
                burst,
            },
        })
    }
}

/// A token bucket's rate (`limit` tokens per `per_ms`) and size (`burst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Tokens added per `per_ms`.
    pub limit: u32,
    /// The window, in milliseconds.
    pub per_ms: u64,
    /// The bucket's size.
    pub burst: u32,
}

/// A rate key's bucket as the store keeps it: its tokens as of `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Tokens left (fractional: they come back continuously).
    pub tokens: f64,
    /// When `tokens` was counted, in milliseconds since the epoch.
    pub at_ms: i64,
}

impl Bucket {
    /// The bucket of `rate` at `now_ms`: `kept` (or a full one, when the store has none) with
    /// the tokens that came back since, up to its size. A clock that went back adds none.
    pub fn refilled(kept: Option<Bucket>, rate: &Rate, now_ms: i64) -> Bucket {
        let burst = f64::from(rate.burst);
        match kept {
            None => Bucket {
                tokens: burst,
                at_ms: now_ms,
            },
            Some(b) => {
                let elapsed = now_ms.saturating_sub(b.at_ms).max(0) as f64;
                let tokens = (b.tokens + elapsed * f64::from(rate.limit) / rate.per_ms as f64)
                    .min(burst)
                    .max(b.tokens.min(burst));
                Bucket {
                    tokens,
                    at_ms: now_ms.max(b.at_ms),
                }
            }
        }
    }

    /// When the next token is there, in milliseconds since the epoch (`at_ms` when one is).
    pub fn next_token_ms(&self, rate: &Rate) -> i64 {
        if self.tokens >= 1.0 {
            return self.at_ms;
        }
        let missing = 1.0 - self.tokens;
        let ms = (missing * rate.per_ms as f64 / f64::from(rate.limit)).ceil();
        self.at_ms.saturating_add(ms as i64)
    }
}

/// The kind of a key: a step-level or template-level concurrency key, or a rate key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A step's `concurrency` key.
    Step,
    /// A template's `concurrency` key.
    Task,
    /// A step's `rate_limit` key.
    Rate,
}

/// One thing a candidate needs room in: a step key, a task key, or a rate key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// A step-level concurrency key: counts steps in progress.
    Step(Arc<str>),
    /// A template-level concurrency key: counts tasks in progress.
    Task(Arc<str>),
    /// A rate key: takes a token.
    Rate(Arc<str>),
}

impl Slot {
    /// The key.
    pub fn key(&self) -> &Arc<str> {
        match self {
            Slot::Step(k) | Slot::Task(k) | Slot::Rate(k) => k,
        }
    }
}

/// One slot a candidate wants, with what bounds it: the limit of a concurrency key, the rate
/// of a rate key.
#[derive(Debug, Clone, PartialEq)]
pub struct Want {
    /// The slot.
    pub slot: Slot,
    /// Its limit (concurrency keys) or its bucket's rate (rate keys).
    pub bound: Bound,
}

/// What bounds a [`Want`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound {
    /// At most this many holders.
    Limit(u32),
    /// A token from a bucket of this rate.
    Rate(Rate),
}

/// What a task's rendered keys are: its template-level key, and each template step's.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Gates {
    /// The template's `concurrency`, rendered.
    pub task: Option<(Arc<str>, u32)>,
    /// Per template step: its `concurrency` and its `rate_limit`, rendered.
    pub steps: Vec<StepGates>,
}

/// One step's rendered keys.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepGates {
    /// Its concurrency key and limit.
    pub concurrency: Option<(Arc<str>, u32)>,
    /// Its rate key and bucket.
    pub rate: Option<(Arc<str>, Rate)>,
}

impl Gates {
    /// What the claim of template step `step` needs room in; `holds` is whether its task holds
    /// its task key already (or runs under its parent's hold of it): then it needs none there.
    pub fn wants(&self, step: u32, holds: bool) -> Vec<Want> {
        let mut out = Vec::new();
        if let (Some((key, limit)), false) = (&self.task, holds) {
            out.push(Want {
                slot: Slot::Task(key.clone()),
                bound: Bound::Limit(*limit),
            });
        }
        if let Some(s) = self.steps.get(step as usize) {
            if let Some((key, limit)) = &s.concurrency {
                out.push(Want {
                    slot: Slot::Step(key.clone()),
                    bound: Bound::Limit(*limit),
                });
            }
            if let Some((key, rate)) = &s.rate {
                out.push(Want {
                    slot: Slot::Rate(key.clone()),
                    bound: Bound::Rate(*rate),
                });
            }
        }
        out
    }

    /// Every key of these gates, with its kind (for the store to count before a claim).
    pub fn keys(&self) -> impl Iterator<Item = (Kind, &str)> + '_ {
        let task = self.task.iter().map(|(k, _)| (Kind::Task, &**k));
        let steps = self.steps.iter().flat_map(|s| {
            let c = s.concurrency.iter().map(|(k, _)| (Kind::Step, &**k));
            let r = s.rate.iter().map(|(k, _)| (Kind::Rate, &**k));
            c.chain(r)
        });
        task.chain(steps)
    }

    /// Every slot of these gates.
    pub fn slots(&self) -> impl Iterator<Item = Slot> + '_ {
        self.keys().map(|(kind, key)| {
            let key: Arc<str> = key.into();
            match kind {
                Kind::Step => Slot::Step(key),
                Kind::Task => Slot::Task(key),
                Kind::Rate => Slot::Rate(key),
            }
        })
    }
}

/// What a store counted for each slot a claim may need: holders of concurrency keys and the
/// buckets of rate keys, and what the claim took from them.
#[derive(Debug, Default, Clone)]
pub struct Room {
    now_ms: i64,
    holders: HashMap<Slot, u32>,
    buckets: HashMap<Arc<str>, Option<Bucket>>,
    taken: HashMap<Arc<str>, Bucket>,
}

impl Room {
    /// An empty room at `now_ms`: no slot has room until the store says what holds it.
    pub fn new(now_ms: i64) -> Self {
        Room {
            now_ms,
            ..Room::default()
        }
    }

    /// Whether the store was asked about no key.
    pub fn is_empty(&self) -> bool {
        self.holders.is_empty() && self.buckets.is_empty()
    }

    /// `slot` (a concurrency key) has `holders` holders now.
    pub fn count(&mut self, slot: Slot, holders: u32) {
        self.holders.insert(slot, holders);
    }

    /// Rate key `key`'s bucket is `kept` (`None`: the store has none yet, it starts full).
    pub fn bucket(&mut self, key: Arc<str>, kept: Option<Bucket>) {
        self.buckets.insert(key, kept);
    }

    /// Whether every slot of `wants` has room now; if so each is taken (a holder more, a token
    /// less). A slot the store did not count has none.
    pub fn admit(&mut self, wants: &[Want]) -> bool {
        let fits = wants.iter().all(|w| match (&w.slot, w.bound) {
            (Slot::Rate(key), Bound::Rate(rate)) => {
                self.tokens(key, &rate).is_some_and(|b| b.tokens >= 1.0)
            }
            (slot, Bound::Limit(limit)) => self.holders.get(slot).is_some_and(|&h| h < limit),
            _ => false,
        });
        if !fits {
            return false;
        }
        for w in wants {
            match (&w.slot, w.bound) {
                (Slot::Rate(key), Bound::Rate(rate)) => {
                    if let Some(mut b) = self.tokens(key, &rate) {
                        b.tokens -= 1.0;
                        self.taken.insert(key.clone(), b);
                    }
                }
                (slot, _) => {
                    if let Some(h) = self.holders.get_mut(slot) {
                        *h += 1;
                    }
                }
            }
        }
        true
    }

    /// A holder of concurrency key `slot` let it go (in the claim's own transaction, before
    /// the claims).
    pub fn release(&mut self, slot: &Slot) {
        if let Some(h) = self.holders.get_mut(slot) {
            *h = h.saturating_sub(1);
        }
    }

    /// Rate key `key`'s bucket as of now (after what this claim took), if the store read it.
    fn tokens(&self, key: &Arc<str>, rate: &Rate) -> Option<Bucket> {
        if let Some(b) = self.taken.get(key) {
            return Some(*b);
        }
        let kept = self.buckets.get(key)?;
        Some(Bucket::refilled(*kept, rate, self.now_ms))
    }

    /// Rate key `key`'s bucket after what this claim took from it, if it took any.
    pub fn taken_from(&self, key: &Arc<str>) -> Option<Bucket> {
        self.taken.get(key).copied()
    }

    /// The buckets this claim took tokens from, as the store must keep them.
    pub fn taken(&self) -> impl Iterator<Item = (&Arc<str>, &Bucket)> {
        self.taken.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Which of `candidates` (each what it wants, in claim order) a claim of at most `limit` takes
    /// from `room`: greedily, in order, each whose slots all have room.
    fn admit(candidates: &[Vec<Want>], room: &mut Room, limit: usize) -> Vec<bool> {
        let mut left = limit;
        candidates
            .iter()
            .map(|wants| {
                let ok = left > 0 && room.admit(wants);
                if ok {
                    left -= 1;
                }
                ok
            })
            .collect()
    }

    fn step(key: &str, limit: u32) -> Want {
        Want {
            slot: Slot::Step(key.into()),
            bound: Bound::Limit(limit),
        }
    }

    #[test]
    fn keys_render_from_the_context() {
        let t = KeyTemplate::parse("customer:{{context.customer_id}}/{{ context.region.code }}")
            .unwrap();
        let ctx = json!({"customer_id": 42, "region": {"code": "eu"}});
        assert_eq!(t.render(&ctx).unwrap(), "customer:42/eu");
        let e = t.render(&json!({"customer_id": 1})).unwrap_err();
        assert!(e.contains("context.region.code"), "{e}");
        let e = t
            .render(&json!({"customer_id": [1], "region": {"code": "x"}}))
            .unwrap_err();
        assert!(e.contains("string, number or boolean"), "{e}");
        assert_eq!(
            KeyTemplate::parse("stripe")
                .unwrap()
                .render(&json!({}))
                .unwrap(),
            "stripe"
        );
    }

    #[test]
    fn bad_key_templates_are_refused() {
        for bad in [
            "",
            "  ",
            "a{{context.x",
            "{{customer}}",
            "{{context.}}",
            "a}}b",
            "{{context.a..b}}",
        ] {
            assert!(KeyTemplate::parse(bad).is_err(), "{bad:?}");
        }
        assert!(KeyTemplate::parse(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
        let spec = ConcurrencySpec {
            key: "k".into(),
            limit: 0,
        };
        assert!(Concurrency::compile(&spec, "x")
            .unwrap_err()
            .contains("limit"));
        let rate = |limit, per_ms, burst| RateLimitSpec {
            key: "k".into(),
            limit,
            per_ms,
            burst,
        };
        assert!(RateLimit::compile(&rate(0, 1000, None), "x").is_err());
        assert!(RateLimit::compile(&rate(10, 0, None), "x").is_err());
        assert!(RateLimit::compile(&rate(10, 1000, Some(11)), "x").is_err());
        assert_eq!(
            RateLimit::compile(&rate(50, 1000, None), "x")
                .unwrap()
                .rate
                .burst,
            5
        );
        assert_eq!(
            RateLimit::compile(&rate(5, 1000, None), "x")
                .unwrap()
                .rate
                .burst,
            1
        );
    }

    #[test]
    fn an_uncounted_slot_has_no_room() {
        let mut room = Room::new(0);
        assert!(!room.admit(&[step("a", 5)]));
        assert!(room.admit(&[]));
        room.count(Slot::Step("a".into()), 4);
        assert!(room.admit(&[step("a", 5)]));
        assert!(!room.admit(&[step("a", 5)]));
    }

    #[test]
    fn a_bucket_starts_full_and_refills_at_its_rate() {
        let rate = Rate {
            limit: 50,
            per_ms: 1000,
            burst: 5,
        };
        let want = Want {
            slot: Slot::Rate("r".into()),
            bound: Bound::Rate(rate),
        };
        let mut room = Room::new(1_000);
        room.bucket("r".into(), None);
        let taken = (0..10)
            .filter(|_| room.admit(std::slice::from_ref(&want)))
            .count();
        assert_eq!(taken, 5);
        let (_, b) = room.taken().next().unwrap();
        assert_eq!(b.next_token_ms(&rate), 1_020);
        // 40 ms later two tokens came back.
        let mut later = Room::new(1_040);
        later.bucket("r".into(), Some(*b));
        let taken = (0..10)
            .filter(|_| later.admit(std::slice::from_ref(&want)))
            .count();
        assert_eq!(taken, 2);
    }

    fn wants_strategy() -> impl Strategy<Value = Vec<Vec<Want>>> {
        let want = (0u8..3, 0u8..2).prop_map(|(k, kind)| {
            let key: Arc<str> = format!("k{k}").into();
            match kind {
                0 => Want {
                    slot: Slot::Step(key),
                    bound: Bound::Limit(2),
                },
                _ => Want {
                    slot: Slot::Task(key),
                    bound: Bound::Limit(1),
                },
            }
        });
        // A candidate wants each slot once (a task key, a step key, a rate key at most).
        let wants = proptest::collection::vec(want, 0..3).prop_map(|mut ws| {
            ws.sort_by(|a, b| a.slot.cmp(&b.slot));
            ws.dedup_by(|a, b| a.slot == b.slot);
            ws
        });
        proptest::collection::vec(wants, 0..30)
    }

    proptest! {
        /// No key goes over its limit, and a candidate is held back only when a key it needs
        /// is at its limit (or the claim is full): admission is greedy in claim order.
        #[test]
        fn a_key_at_its_limit_holds_back_exactly_its_steps(
            candidates in wants_strategy(),
            holders in proptest::collection::vec(0u32..3, 6),
            limit in 0usize..40,
        ) {
            let slots: Vec<Slot> = (0..3)
                .flat_map(|k| {
                    let key: Arc<str> = format!("k{k}").into();
                    [Slot::Step(key.clone()), Slot::Task(key)]
                })
                .collect();
            let mut room = Room::new(0);
            for (slot, &h) in slots.iter().zip(&holders) {
                room.count(slot.clone(), h);
            }
            let admitted = admit(&candidates, &mut room, limit);
            // Replay: the count per slot before each candidate.
            let mut held: HashMap<Slot, u32> = slots.iter().cloned().zip(holders.iter().copied()).collect();
            let mut taken = 0usize;
            for (wants, &ok) in candidates.iter().zip(&admitted) {
                let fits = wants.iter().all(|w| match w.bound {
                    Bound::Limit(l) => held[&w.slot] < l,
                    Bound::Rate(_) => false,
                });
                prop_assert_eq!(ok, fits && taken < limit);
                if ok {
                    taken += 1;
                    for w in wants {
                        *held.get_mut(&w.slot).unwrap() += 1;
                    }
                }
            }
            for w in candidates.iter().flatten() {
                if let Bound::Limit(l) = w.bound {
                    let start = holders[slots.iter().position(|s| *s == w.slot).unwrap()];
                    prop_assert!(held[&w.slot] <= l.max(start));
                }
            }
        }

        /// When a holder of a key at its limit finishes, the first of the key's held-back
        /// steps in claim order is the one admitted next.
        #[test]
        fn a_freed_key_releases_its_steps_in_priority_order(
            mut priorities in proptest::collection::vec(-5i32..5, 1..20),
            limit in 1u32..4,
        ) {
            // Claim order: higher priority first, stable.
            priorities.sort_by_key(|&p| std::cmp::Reverse(p));
            let candidates: Vec<Vec<Want>> = priorities.iter().map(|_| vec![step("c", limit)]).collect();
            let mut room = Room::new(0);
            room.count(Slot::Step("c".into()), 0);
            let first = admit(&candidates, &mut room, usize::MAX);
            let n = (limit as usize).min(candidates.len());
            prop_assert!(first[..n].iter().all(|&a| a));
            prop_assert!(first[n..].iter().all(|&a| !a));
            // One holder finishes: the next claim, over those held back, takes the first.
            let held: Vec<Vec<Want>> = candidates[n..].to_vec();
            let mut room = Room::new(0);
            room.count(Slot::Step("c".into()), limit - 1);
            let next = admit(&held, &mut room, usize::MAX);
            if !held.is_empty() {
                prop_assert!(next[0]);
                prop_assert!(next[1..].iter().all(|&a| !a));
            }
        }

        /// Whatever the times of the claims, a bucket never gives more than its size plus its
        /// rate over the time elapsed.
        #[test]
        fn a_bucket_never_gives_more_than_its_rate(
            gaps in proptest::collection::vec((0i64..200, 0usize..20), 1..50),
            limit in 1u32..100,
            per_ms in 1u64..2_000,
        ) {
            let rate = Rate { limit, per_ms, burst: (limit / 10).max(1) };
            let want = Want { slot: Slot::Rate("r".into()), bound: Bound::Rate(rate) };
            let (mut now, mut kept, mut total) = (0i64, None, 0u64);
            for (gap, asks) in gaps {
                now += gap;
                let mut room = Room::new(now);
                room.bucket("r".into(), kept);
                total += (0..asks).filter(|_| room.admit(std::slice::from_ref(&want))).count() as u64;
                if let Some((_, b)) = room.taken().next() {
                    kept = Some(*b);
                }
                let most = f64::from(rate.burst) + now as f64 * f64::from(limit) / per_ms as f64;
                prop_assert!(total as f64 <= most + 1e-6, "{} > {}", total, most);
            }
        }
    }
}
