//! Lifecycle events and the in-process [`EventBus`] that carries them.
//!
//! Every state change the engine records can be published as an [`Event`] with a stable dotted
//! name from [`names`]. Subscribers pick events by a glob over the name (`step.*`, `*.failed`,
//! `{task.completed,task.failed}`) and each gets its own bounded queue: a slow subscriber loses
//! events (counted in [`Subscription::dropped`]) rather than slowing the engine or the other
//! subscribers. Events are shared as `Arc<Event>`, one allocation per publish however many
//! subscribers receive it.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use globset::{GlobBuilder, GlobMatcher};
use parking_lot::RwLock;
use serde::Serialize;
use tokio::sync::Notify;

use crate::clock::Timestamp;
use crate::ids::{StepId, TaskId};

/// Stable dotted event names.
///
/// Hosts filter on these strings, so they never change meaning once published; new names are
/// only ever added.
pub mod names {
    /// A task was created from a template.
    pub const TASK_CREATED: &str = "task.created";
    /// The first step of a task was claimed.
    pub const TASK_STARTED: &str = "task.started";
    /// Every step of a task finished successfully (or was skipped / resolved).
    pub const TASK_COMPLETED: &str = "task.completed";
    /// A step failed for good, so the task failed.
    pub const TASK_FAILED: &str = "task.failed";
    /// An operator cancelled the task.
    pub const TASK_CANCELLED: &str = "task.cancelled";
    /// An operator paused the task: no more steps are handed out.
    pub const TASK_PAUSED: &str = "task.paused";
    /// A paused task was resumed.
    pub const TASK_RESUMED: &str = "task.resumed";
    /// An operator retried a failed task.
    pub const TASK_RETRIED: &str = "task.retried";
    /// An operator marked the task as resolved by hand.
    pub const TASK_RESOLVED_MANUALLY: &str = "task.resolved_manually";
    /// A step's dependencies are satisfied; it can be claimed.
    pub const STEP_READY: &str = "step.ready";
    /// A worker claimed a step with a lease.
    pub const STEP_CLAIMED: &str = "step.claimed";
    /// A step's handler succeeded.
    pub const STEP_COMPLETED: &str = "step.completed";
    /// A step failed and will not be retried.
    pub const STEP_FAILED: &str = "step.failed";
    /// A step failed and will be retried after a backoff delay.
    pub const STEP_RETRY_SCHEDULED: &str = "step.retry_scheduled";
    /// A step was skipped.
    pub const STEP_SKIPPED: &str = "step.skipped";
    /// A claimed step's lease ran out before it reported back; it was reclaimed.
    pub const STEP_LEASE_EXPIRED: &str = "step.lease_expired";
    /// An operator marked a step as resolved by hand.
    pub const STEP_RESOLVED_MANUALLY: &str = "step.resolved_manually";
    /// A step was cancelled with its task.
    pub const STEP_CANCELLED: &str = "step.cancelled";
    /// An operator retry reset the step so that it runs again.
    pub const STEP_RETRIED: &str = "step.retried";
    /// A stopping worker gave back a claimed step it had not finished (the attempt not
    /// counted); it is pending again.
    pub const STEP_RELEASED: &str = "step.released";
    /// A batch worker step started: its instances, one per slice, are released.
    pub const STEP_EXPANDED: &str = "step.expanded";
    /// A step's handler started child tasks; the step waits for them.
    pub const STEP_WAITING_FOR_CHILDREN: &str = "step.waiting_for_children";

    /// Every name above, tasks first.
    pub const ALL: &[&str] = &[
        TASK_CREATED,
        TASK_STARTED,
        TASK_COMPLETED,
        TASK_FAILED,
        TASK_CANCELLED,
        TASK_PAUSED,
        TASK_RESUMED,
        TASK_RETRIED,
        TASK_RESOLVED_MANUALLY,
        STEP_READY,
        STEP_CLAIMED,
        STEP_COMPLETED,
        STEP_FAILED,
        STEP_RETRY_SCHEDULED,
        STEP_SKIPPED,
        STEP_LEASE_EXPIRED,
        STEP_RESOLVED_MANUALLY,
        STEP_CANCELLED,
        STEP_RETRIED,
        STEP_RELEASED,
        STEP_EXPANDED,
        STEP_WAITING_FOR_CHILDREN,
    ];
}

// The known names are tracked as bits of a `u64`.
const _: () = assert!(names::ALL.len() <= 64);

/// One lifecycle event.
///
/// Serialized (see [`Event::to_json`]) as an object with `name`, `task_id`, `step_id`,
/// `step_name`, `attempt`, `at` (RFC 3339) and `detail`; the three step fields are left out when
/// absent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// One of [`names`], or a custom event's name as its template declares it (see
    /// [`crate::Engine::publish_event`]).
    pub name: std::borrow::Cow<'static, str>,
    /// The task the event is about.
    pub task_id: TaskId,
    /// The step the event is about, for `step.*` events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_id: Option<StepId>,
    /// The step's name in its template, for `step.*` events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_name: Option<Arc<str>>,
    /// The attempt number (1 for the first run) when the event concerns one attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// When it happened, by the engine's clock.
    pub at: Timestamp,
    /// An object with event-specific facts (error message, backoff delay, result size, …), or
    /// `Value::Null` when there is nothing to say.
    pub detail: serde_json::Value,
}

impl Event {
    /// An event with no step, attempt or detail: one of [`names`] (borrowed), or a custom
    /// event's name.
    pub fn new(
        name: impl Into<std::borrow::Cow<'static, str>>,
        task_id: TaskId,
        at: Timestamp,
    ) -> Self {
        Event {
            name: name.into(),
            task_id,
            step_id: None,
            step_name: None,
            attempt: None,
            at,
            detail: serde_json::Value::Null,
        }
    }

    /// Sets the step the event is about.
    pub fn with_step(mut self, step_id: StepId, step_name: impl Into<Arc<str>>) -> Self {
        self.step_id = Some(step_id);
        self.step_name = Some(step_name.into());
        self
    }

    /// Sets the attempt number.
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = Some(attempt);
        self
    }

    /// Sets the detail object.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }

    /// The serialized form, as bindings hand it to hosts.
    pub fn to_json(&self) -> serde_json::Value {
        // Every field serializes infallibly (string keys, plain values); Null is unreachable.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// An invalid subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event pattern {pattern:?}: {message}")]
pub struct PatternError {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it.
    pub message: String,
}

/// The queue size [`EventBus::subscribe`] gives each subscriber.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// The lifecycle event names `pattern` matches, as bits of their indexes in [`names::ALL`].
pub(crate) fn known_mask(pattern: &str) -> Result<u64, PatternError> {
    Filter::compile(pattern).map(|f| f.known)
}

/// Index of `name` in [`names::ALL`], if it is a known name.
pub(crate) fn known_index(name: &str) -> Option<usize> {
    names::ALL.iter().position(|known| *known == name)
}

/// A compiled subscription pattern.
#[derive(Debug)]
struct Filter {
    /// `None` matches everything.
    glob: Option<GlobMatcher>,
    /// Bit `i` set when `names::ALL[i]` matches, so known names never reach the glob.
    known: u64,
}

impl Filter {
    fn compile(pattern: &str) -> Result<Self, PatternError> {
        if pattern.is_empty() || pattern == "*" {
            return Ok(Filter {
                glob: None,
                known: u64::MAX,
            });
        }
        let glob = GlobBuilder::new(pattern)
            .literal_separator(false)
            .build()
            .map_err(|err| PatternError {
                pattern: pattern.to_owned(),
                message: err.kind().to_string(),
            })?
            .compile_matcher();
        let known = names::ALL
            .iter()
            .enumerate()
            .filter(|(_, name)| glob.is_match(name))
            .fold(0u64, |mask, (i, _)| mask | (1 << i));
        Ok(Filter {
            glob: Some(glob),
            known,
        })
    }

    /// Whether `name` (whose index in `names::ALL` is `known`) matches.
    fn matches(&self, name: &str, known: Option<usize>) -> bool {
        match (known, &self.glob) {
            (Some(i), _) => self.known & (1 << i) != 0,
            (None, None) => true,
            (None, Some(glob)) => glob.is_match(name),
        }
    }
}

/// What a subscriber and the bus both see.
#[derive(Debug, Default)]
struct SubscriberState {
    dropped: AtomicU64,
    /// Signalled after each delivered event and when the bus goes away.
    notify: Notify,
}

/// The bus's record of one subscriber.
struct Entry {
    id: u64,
    filter: Filter,
    sender: Sender<Arc<Event>>,
    state: Arc<SubscriberState>,
}

impl Entry {
    fn deliver(&self, event: &Arc<Event>) {
        match self.sender.try_send(Arc::clone(event)) {
            Ok(()) => self.state.notify.notify_one(),
            Err(TrySendError::Full(_)) => {
                self.state.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // The subscription is being dropped; it will be forgotten in a moment.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

struct Shared {
    subscribers: RwLock<Vec<Entry>>,
    /// `subscribers.len()`, readable without the lock.
    live: AtomicUsize,
    /// Union of the subscribers' `Filter::known` masks.
    known_wanted: AtomicU64,
    next_id: AtomicU64,
}

impl Shared {
    /// Refreshes the lock-free summaries; called with the write lock held.
    fn summarize(&self, subscribers: &[Entry]) {
        let known = subscribers.iter().fold(0, |mask, e| mask | e.filter.known);
        self.known_wanted.store(known, Ordering::Release);
        self.live.store(subscribers.len(), Ordering::Release);
    }

    fn remove(&self, id: u64) {
        let mut subscribers = self.subscribers.write();
        subscribers.retain(|entry| entry.id != id);
        self.summarize(&subscribers);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Close every queue first, then wake the async waiters so they see the bus is gone.
        let states: Vec<Arc<SubscriberState>> = std::mem::take(self.subscribers.get_mut())
            .into_iter()
            .map(|entry| entry.state)
            .collect();
        for state in states {
            state.notify.notify_waiters();
        }
    }
}

/// In-process publish/subscribe for [`Event`]s.
///
/// A cheap, clonable handle: clones share the same subscribers. Publishing never blocks and
/// never waits for a subscriber; each subscriber has a bounded queue, and an event that does not
/// fit is dropped for that subscriber only and counted in its [`Subscription::dropped`].
///
/// ```
/// use std::time::Duration;
/// use tasker_core::clock::{Clock, SystemClock};
/// use tasker_core::events::{names, Event, EventBus};
/// use tasker_core::ids::TaskId;
///
/// let bus = EventBus::new();
/// let failures = bus.subscribe("*.failed")?;
/// assert!(bus.wants(names::STEP_FAILED));
/// assert!(!bus.wants(names::STEP_COMPLETED));
///
/// let task = TaskId::new();
/// bus.publish(Event::new(names::STEP_COMPLETED, task, SystemClock.now()));
/// bus.publish(
///     Event::new(names::TASK_FAILED, task, SystemClock.now())
///         .with_detail(serde_json::json!({ "error": "boom" })),
/// );
///
/// let event = failures.next_timeout(Duration::from_secs(1)).expect("a failure");
/// assert_eq!(event.name, names::TASK_FAILED);
/// assert_eq!(event.to_json()["detail"]["error"], "boom");
/// assert!(failures.try_next().is_none());
///
/// drop(failures);
/// assert!(!bus.has_subscribers());
/// # Ok::<(), tasker_core::events::PatternError>(())
/// ```
#[derive(Clone)]
pub struct EventBus {
    shared: Arc<Shared>,
}

impl EventBus {
    /// A bus with no subscribers.
    pub fn new() -> Self {
        EventBus {
            shared: Arc::new(Shared {
                subscribers: RwLock::new(Vec::new()),
                live: AtomicUsize::new(0),
                known_wanted: AtomicU64::new(0),
                next_id: AtomicU64::new(0),
            }),
        }
    }

    /// Subscribes to events whose name matches the glob `pattern`, with a queue of
    /// [`DEFAULT_CAPACITY`] events.
    ///
    /// `*` matches any run of characters, dots included; `?` matches one character; `{a,b}`
    /// matches either alternative; `[abc]` a character class. `"*"` or `""` means every event.
    pub fn subscribe(&self, pattern: &str) -> Result<Subscription, PatternError> {
        self.subscribe_with_capacity(pattern, DEFAULT_CAPACITY)
    }

    /// Like [`EventBus::subscribe`] with a queue of `capacity` events (at least 1). Events that
    /// arrive while the queue is full are dropped and counted.
    pub fn subscribe_with_capacity(
        &self,
        pattern: &str,
        capacity: usize,
    ) -> Result<Subscription, PatternError> {
        let filter = Filter::compile(pattern)?;
        let (sender, receiver) = crossbeam_channel::bounded(capacity.max(1));
        let state = Arc::new(SubscriberState::default());
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut subscribers = self.shared.subscribers.write();
            subscribers.push(Entry {
                id,
                filter,
                sender,
                state: Arc::clone(&state),
            });
            self.shared.summarize(&subscribers);
        }
        Ok(Subscription {
            id,
            pattern: pattern.to_owned(),
            receiver,
            state,
            bus: Arc::downgrade(&self.shared),
        })
    }

    /// True when at least one live subscriber's pattern matches `name`.
    ///
    /// Cheap enough to call before building every event: an atomic load when nobody listens,
    /// and for the names in [`names`] a second atomic load; other names take a read lock. Never
    /// allocates.
    pub fn wants(&self, name: &str) -> bool {
        if self.shared.live.load(Ordering::Acquire) == 0 {
            return false;
        }
        match known_index(name) {
            Some(i) => self.shared.known_wanted.load(Ordering::Acquire) & (1 << i) != 0,
            None => self
                .shared
                .subscribers
                .read()
                .iter()
                .any(|entry| entry.filter.matches(name, None)),
        }
    }

    /// True when there is any live subscriber.
    pub fn has_subscribers(&self) -> bool {
        self.shared.live.load(Ordering::Acquire) != 0
    }

    /// Delivers `event` to every matching subscriber without blocking. A subscriber whose queue
    /// is full misses it (see [`Subscription::dropped`]). With no subscribers this does nothing.
    pub fn publish(&self, event: Event) {
        if !self.has_subscribers() {
            return;
        }
        let subscribers = self.shared.subscribers.read();
        Self::deliver(&subscribers, event);
    }

    /// Publishes many events in order under one lock acquisition.
    pub fn publish_all(&self, events: impl IntoIterator<Item = Event>) {
        if !self.has_subscribers() {
            return;
        }
        // Collect first so that no caller code runs while the lock is held (free for a `Vec`).
        let events: Vec<Event> = events.into_iter().collect();
        if events.is_empty() {
            return;
        }
        let subscribers = self.shared.subscribers.read();
        for event in events {
            Self::deliver(&subscribers, event);
        }
    }

    fn deliver(subscribers: &[Entry], event: Event) {
        // Free for the engine's own names (borrowed); a custom event's name is copied once.
        let name = event.name.clone();
        let name = &*name;
        let known = known_index(name);
        let mut shared: Option<Arc<Event>> = None;
        let mut event = Some(event);
        for entry in subscribers {
            if !entry.filter.matches(name, known) {
                continue;
            }
            if let Some(event) = event.take() {
                shared = Some(Arc::new(event));
            }
            if let Some(arc) = &shared {
                entry.deliver(arc);
            }
        }
    }

    /// The number of live subscriptions.
    pub fn subscriber_count(&self) -> usize {
        self.shared.live.load(Ordering::Acquire)
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBus")
            .field("subscribers", &self.subscriber_count())
            .finish()
    }
}

/// One subscriber's end of an [`EventBus`]: a bounded queue of matching events.
///
/// Dropping it unsubscribes. It holds the bus only weakly: once every [`EventBus`] handle is
/// gone, the queued events can still be read, after which the waits return `None`.
pub struct Subscription {
    id: u64,
    pattern: String,
    receiver: Receiver<Arc<Event>>,
    state: Arc<SubscriberState>,
    bus: Weak<Shared>,
}

impl Subscription {
    /// The pattern this subscription was made with.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The next queued event, without waiting.
    pub fn try_next(&self) -> Option<Arc<Event>> {
        self.receiver.try_recv().ok()
    }

    /// The next event, waiting up to `timeout` (blocking the thread). `None` on timeout or when
    /// the bus is gone and the queue is empty.
    pub fn next_timeout(&self, timeout: Duration) -> Option<Arc<Event>> {
        self.receiver.recv_timeout(timeout).ok()
    }

    /// The next event, waiting asynchronously without blocking the runtime thread. `None` only
    /// when the bus is gone and the queue is empty.
    ///
    /// Cancel-safe: dropping the future never loses an event.
    pub async fn next(&self) -> Option<Arc<Event>> {
        loop {
            // Register interest before looking, so a publish in between is not missed.
            let notified = self.state.notify.notified();
            match self.receiver.try_recv() {
                Ok(event) => {
                    if !self.receiver.is_empty() {
                        // Pass the wake-up on to another task waiting on this subscription.
                        self.state.notify.notify_one();
                    }
                    return Some(event);
                }
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => notified.await,
            }
        }
    }

    /// How many events this subscriber lost because its queue was full.
    pub fn dropped(&self) -> u64 {
        self.state.dropped.load(Ordering::Relaxed)
    }

    /// The number of queued, undelivered events.
    pub fn len(&self) -> usize {
        self.receiver.len()
    }

    /// True when no event is queued.
    pub fn is_empty(&self) -> bool {
        self.receiver.is_empty()
    }

    /// Every event queued now, oldest first.
    pub fn drain(&self) -> Vec<Arc<Event>> {
        self.receiver.try_iter().collect()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(shared) = self.bus.upgrade() {
            shared.remove(self.id);
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("pattern", &self.pattern)
            .field("queued", &self.len())
            .field("dropped", &self.dropped())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, SystemClock};
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::time::Instant;

    fn event(name: &'static str) -> Event {
        Event::new(name, TaskId::new(), SystemClock.now())
    }

    fn received_names(sub: &Subscription) -> Vec<&'static str> {
        sub.drain().iter().map(|e| engine_name(e)).collect()
    }

    /// The name of one of the engine's own events (never a custom one here).
    fn engine_name(e: &Event) -> &'static str {
        match e.name {
            std::borrow::Cow::Borrowed(name) => name,
            std::borrow::Cow::Owned(_) => panic!("a custom event: {}", e.name),
        }
    }

    #[test]
    fn handles_are_send_sync_and_debug() {
        fn check<T: Send + Sync + fmt::Debug>() {}
        check::<EventBus>();
        check::<Subscription>();
        check::<Event>();
        check::<PatternError>();
    }

    #[test]
    fn all_lists_every_name_once() {
        let mut seen = std::collections::HashSet::new();
        for name in names::ALL {
            assert!(seen.insert(*name), "{name} listed twice");
            assert!(name.starts_with("task.") || name.starts_with("step."));
        }
        assert_eq!(names::ALL.len(), 22);
    }

    #[test]
    fn step_glob_receives_step_events_but_not_task_events() {
        let bus = EventBus::new();
        let steps = bus.subscribe("step.*").unwrap();
        bus.publish(event(names::STEP_COMPLETED));
        bus.publish(event(names::TASK_COMPLETED));
        bus.publish(event(names::STEP_RETRY_SCHEDULED));
        assert_eq!(
            received_names(&steps),
            [names::STEP_COMPLETED, names::STEP_RETRY_SCHEDULED]
        );
    }

    #[test]
    fn leading_star_matches_across_the_dot() {
        let bus = EventBus::new();
        let failures = bus.subscribe("*.failed").unwrap();
        for name in names::ALL {
            bus.publish(event(name));
        }
        assert_eq!(
            received_names(&failures),
            [names::TASK_FAILED, names::STEP_FAILED]
        );
    }

    #[test]
    fn brace_alternatives_pick_exactly_the_listed_names() {
        let bus = EventBus::new();
        let finished = bus.subscribe("{task.completed,task.failed}").unwrap();
        for name in names::ALL {
            bus.publish(event(name));
        }
        assert_eq!(
            received_names(&finished),
            [names::TASK_COMPLETED, names::TASK_FAILED]
        );
    }

    #[test]
    fn star_and_empty_patterns_receive_everything_including_unknown_names() {
        let bus = EventBus::new();
        let star = bus.subscribe("*").unwrap();
        let empty = bus.subscribe("").unwrap();
        bus.publish(event(names::TASK_CREATED));
        bus.publish(event("custom.thing"));
        for sub in [&star, &empty] {
            assert_eq!(received_names(sub), [names::TASK_CREATED, "custom.thing"]);
        }
        assert!(bus.wants("anything.at.all"));
    }

    #[test]
    fn question_mark_matches_one_character_of_an_unknown_name() {
        let bus = EventBus::new();
        let sub = bus.subscribe("custom.?").unwrap();
        assert!(bus.wants("custom.a"));
        assert!(!bus.wants("custom.ab"));
        assert!(!bus.wants(names::TASK_CREATED));
        bus.publish(event("custom.ab"));
        bus.publish(event("custom.a"));
        assert_eq!(received_names(&sub), ["custom.a"]);
    }

    #[test]
    fn invalid_pattern_is_refused_with_its_text() {
        let bus = EventBus::new();
        let err = bus.subscribe("[").unwrap_err();
        assert_eq!(err.pattern, "[");
        assert!(!err.message.is_empty());
        assert!(err.to_string().starts_with("invalid event pattern \"[\": "));
        let err = bus.subscribe("{task.created").unwrap_err();
        assert_eq!(err.pattern, "{task.created");
        assert_eq!(bus.subscriber_count(), 0);
        assert!(!bus.has_subscribers());
    }

    #[test]
    fn wants_is_false_without_subscribers_and_after_the_last_one_is_dropped() {
        let bus = EventBus::new();
        assert!(!bus.wants(names::STEP_COMPLETED));
        assert!(!bus.has_subscribers());

        let steps = bus.subscribe("step.*").unwrap();
        let tasks = bus.subscribe("task.*").unwrap();
        assert!(bus.wants(names::STEP_COMPLETED));
        assert!(bus.wants(names::TASK_CREATED));
        assert_eq!(bus.subscriber_count(), 2);

        drop(tasks);
        assert!(bus.wants(names::STEP_COMPLETED));
        assert!(!bus.wants(names::TASK_CREATED));
        assert_eq!(bus.subscriber_count(), 1);

        drop(steps);
        assert!(!bus.wants(names::STEP_COMPLETED));
        assert!(!bus.has_subscribers());
        assert_eq!(bus.subscriber_count(), 0);
    }

    #[test]
    fn publishing_with_no_subscribers_is_a_no_op() {
        let bus = EventBus::default();
        bus.publish(event(names::TASK_CREATED));
        bus.publish_all((0..3).map(|_| event(names::STEP_READY)));
        let late = bus.subscribe("*").unwrap();
        assert!(late.is_empty());
    }

    #[test]
    fn every_matching_subscriber_gets_the_same_shared_event() {
        let bus = EventBus::new();
        let subs: Vec<_> = (0..50).map(|_| bus.subscribe("step.*").unwrap()).collect();
        let other = bus.subscribe("task.*").unwrap();
        bus.publish(event(names::STEP_CLAIMED));
        let first = subs[0].try_next().unwrap();
        for sub in &subs[1..] {
            let got = sub.try_next().unwrap();
            assert!(Arc::ptr_eq(&first, &got), "one allocation shared by all");
            assert!(sub.is_empty());
        }
        assert!(other.is_empty());
    }

    #[test]
    fn clones_of_the_bus_share_subscribers() {
        let bus = EventBus::new();
        let clone = bus.clone();
        let sub = bus.subscribe("*").unwrap();
        assert!(clone.wants(names::TASK_CREATED));
        clone.publish(event(names::TASK_CREATED));
        assert_eq!(sub.len(), 1);
    }

    #[test]
    fn slow_subscriber_loses_events_and_counts_them_while_a_fast_one_gets_all() {
        let bus = EventBus::new();
        let slow = bus.subscribe_with_capacity("*", 2).unwrap();
        let fast = bus.subscribe("*").unwrap();
        let publisher = {
            let bus = bus.clone();
            std::thread::spawn(move || {
                for i in 0..1_000u32 {
                    bus.publish(event(names::STEP_COMPLETED).with_attempt(i));
                }
            })
        };
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let _ = done_tx.send(publisher.join().is_ok());
        });
        assert_eq!(
            done_rx.recv_timeout(Duration::from_secs(10)),
            Ok(true),
            "publish must never block on a full queue"
        );

        let slow_got: Vec<_> = slow.drain().iter().map(|e| e.attempt).collect();
        assert_eq!(slow_got, [Some(0), Some(1)], "the oldest two were kept");
        assert_eq!(slow.dropped(), 998);
        let fast_got: Vec<_> = fast.drain().iter().map(|e| e.attempt).collect();
        assert_eq!(fast_got, (0..1_000).map(Some).collect::<Vec<_>>());
        assert_eq!(fast.dropped(), 0);
    }

    #[test]
    fn zero_capacity_is_raised_to_one() {
        let bus = EventBus::new();
        let sub = bus.subscribe_with_capacity("*", 0).unwrap();
        bus.publish_all([event(names::TASK_CREATED), event(names::TASK_STARTED)]);
        assert_eq!(received_names(&sub), [names::TASK_CREATED]);
        assert_eq!(sub.dropped(), 1);
    }

    #[test]
    fn publish_all_delivers_in_order() {
        let bus = EventBus::new();
        let sub = bus.subscribe("task.*").unwrap();
        bus.publish_all(vec![
            event(names::TASK_CREATED),
            event(names::STEP_READY),
            event(names::TASK_STARTED),
            event(names::TASK_COMPLETED),
        ]);
        assert_eq!(
            received_names(&sub),
            [
                names::TASK_CREATED,
                names::TASK_STARTED,
                names::TASK_COMPLETED
            ]
        );
    }

    #[test]
    fn next_timeout_returns_none_after_the_timeout() {
        let bus = EventBus::new();
        let sub = bus.subscribe("*").unwrap();
        let start = Instant::now();
        assert!(sub.next_timeout(Duration::from_millis(50)).is_none());
        assert!(start.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn next_timeout_wakes_for_an_event_from_another_thread() {
        let bus = EventBus::new();
        let sub = bus.subscribe("*").unwrap();
        let publisher = bus.clone();
        let handle = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            publisher.publish(event(names::TASK_CREATED));
        });
        let got = sub.next_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(got.name, names::TASK_CREATED);
        handle.join().unwrap();
    }

    #[test]
    fn queued_events_outlive_the_bus_then_waits_end() {
        let bus = EventBus::new();
        let sub = bus.subscribe("*").unwrap();
        bus.publish(event(names::TASK_CREATED));
        drop(bus);
        assert_eq!(sub.try_next().unwrap().name, names::TASK_CREATED);
        let start = Instant::now();
        assert!(sub.next_timeout(Duration::from_secs(10)).is_none());
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(sub.pattern(), "*");
    }

    #[tokio::test]
    async fn async_next_wakes_when_another_thread_publishes() {
        let bus = EventBus::new();
        let sub = bus.subscribe("step.*").unwrap();
        let publisher = bus.clone();
        let handle = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            publisher.publish(event(names::TASK_CREATED));
            publisher.publish(event(names::STEP_CLAIMED));
        });
        let got = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("woken before the timeout")
            .expect("bus still alive");
        assert_eq!(got.name, names::STEP_CLAIMED);
        handle.join().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_next_returns_none_when_the_bus_is_dropped() {
        let bus = EventBus::new();
        let sub = Arc::new(bus.subscribe("*").unwrap());
        let waiter = tokio::spawn({
            let sub = Arc::clone(&sub);
            async move { sub.next().await }
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(bus);
        let got = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken when the bus went away")
            .unwrap();
        assert!(got.is_none());
    }

    #[tokio::test]
    async fn async_next_returns_already_queued_events_immediately() {
        let bus = EventBus::new();
        let sub = bus.subscribe("*").unwrap();
        bus.publish_all([event(names::TASK_CREATED), event(names::TASK_STARTED)]);
        assert_eq!(sub.next().await.unwrap().name, names::TASK_CREATED);
        assert_eq!(sub.next().await.unwrap().name, names::TASK_STARTED);
    }

    #[test]
    fn to_json_uses_the_documented_field_names() {
        let task = TaskId::new();
        let step = StepId { task, index: 2 };
        let at = SystemClock.now();
        let full = Event::new(names::STEP_RETRY_SCHEDULED, task, at)
            .with_step(step, "charge_card")
            .with_attempt(3)
            .with_detail(serde_json::json!({ "delay_ms": 2000 }));
        assert_eq!(
            full.to_json(),
            serde_json::json!({
                "name": "step.retry_scheduled",
                "task_id": task.to_string(),
                "step_id": step.to_string(),
                "step_name": "charge_card",
                "attempt": 3,
                "at": serde_json::to_value(at).unwrap(),
                "detail": { "delay_ms": 2000 },
            })
        );

        let bare = Event::new(names::TASK_CREATED, task, at).to_json();
        let keys: Vec<_> = bare.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 4, "absent step fields are left out: {keys:?}");
        assert_eq!(bare["detail"], serde_json::Value::Null);
        assert_eq!(bare["name"], "task.created");
    }

    #[test]
    fn concurrent_publishers_lose_nothing_and_keep_each_threads_order() {
        const PER_THREAD: u32 = 2_000;
        let bus = EventBus::new();
        let all = bus.subscribe("*").unwrap();
        let steps = bus.subscribe("step.*").unwrap();
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let bus = bus.clone();
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        let name = if i % 2 == 0 {
                            names::STEP_COMPLETED
                        } else {
                            names::TASK_STARTED
                        };
                        let e = event(name)
                            .with_attempt(i)
                            .with_detail(serde_json::json!({ "thread": t }));
                        if i % 3 == 0 {
                            bus.publish_all([e]);
                        } else {
                            bus.publish(e);
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }

        let received = all.drain();
        assert_eq!(received.len(), 4 * PER_THREAD as usize);
        assert_eq!(all.dropped(), 0);
        let mut next_per_thread: HashMap<u64, u32> = HashMap::new();
        for e in &received {
            let thread = e.detail["thread"].as_u64().unwrap();
            let expected = next_per_thread.entry(thread).or_insert(0);
            assert_eq!(
                e.attempt,
                Some(*expected),
                "order kept within thread {thread}"
            );
            *expected += 1;
        }
        assert_eq!(steps.drain().len(), 4 * (PER_THREAD as usize / 2));
        assert_eq!(steps.dropped(), 0);
    }

    /// An independent matcher for the pattern subset the property test generates: one level of
    /// `{a,b}` alternatives, `*` and `?`.
    fn oracle_matches(pattern: &str, name: &str) -> bool {
        fn wildcard(p: &[char], n: &[char]) -> bool {
            match p.split_first() {
                None => n.is_empty(),
                Some(('*', rest)) => (0..=n.len()).any(|k| wildcard(rest, &n[k..])),
                Some(('?', rest)) => !n.is_empty() && wildcard(rest, &n[1..]),
                Some((c, rest)) => n.first() == Some(c) && wildcard(rest, &n[1..]),
            }
        }
        fn expand(pattern: &str) -> Vec<String> {
            match (pattern.find('{'), pattern.find('}')) {
                (Some(open), Some(close)) if open < close => {
                    let (head, tail) = (&pattern[..open], &pattern[close + 1..]);
                    pattern[open + 1..close]
                        .split(',')
                        .flat_map(|alt| expand(&format!("{head}{alt}{tail}")))
                        .collect()
                }
                _ => vec![pattern.to_owned()],
            }
        }
        if pattern.is_empty() {
            return true;
        }
        let name: Vec<char> = name.chars().collect();
        expand(pattern)
            .iter()
            .any(|p| wildcard(&p.chars().collect::<Vec<_>>(), &name))
    }

    fn literal() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "task",
            "step",
            ".",
            "failed",
            "completed",
            "re",
            "e",
            "_",
            "d",
            "ed",
            "custom",
        ])
        .prop_map(str::to_owned)
    }

    fn pattern() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            3 => literal(),
            2 => Just("*".to_owned()),
            1 => Just("?".to_owned()),
            1 => (literal(), literal()).prop_map(|(a, b)| format!("{{{a},{b}}}")),
        ];
        prop::collection::vec(token, 0..6).prop_map(|tokens| {
            // At most one brace group, as the oracle expects.
            let mut seen_brace = false;
            tokens
                .into_iter()
                .filter(|t| !t.starts_with('{') || !std::mem::replace(&mut seen_brace, true))
                .collect::<String>()
        })
    }

    fn name() -> impl Strategy<Value = &'static str> {
        prop::sample::select(
            names::ALL
                .iter()
                .copied()
                .chain(["custom.completed", "custom.e", "task.x", "stepfailed", "x"])
                .collect::<Vec<_>>(),
        )
    }

    proptest! {
        #[test]
        fn subscriber_receives_exactly_the_matching_events_in_order(
            pattern in pattern(),
            sequence in prop::collection::vec(name(), 0..60),
        ) {
            let bus = EventBus::new();
            let sub = bus.subscribe_with_capacity(&pattern, 1_000).unwrap();
            for (i, name) in sequence.iter().enumerate() {
                bus.publish(event(name).with_attempt(i as u32));
            }
            let expected: Vec<(&str, Option<u32>)> = sequence
                .iter()
                .enumerate()
                .filter(|(_, name)| oracle_matches(&pattern, name))
                .map(|(i, name)| (*name, Some(i as u32)))
                .collect();
            let got: Vec<(&str, Option<u32>)> =
                sub.drain().iter().map(|e| (engine_name(e), e.attempt)).collect();
            prop_assert_eq!(got, expected);
            prop_assert_eq!(sub.dropped(), 0);
        }

        #[test]
        fn wants_agrees_with_the_pattern(
            pattern in pattern(),
            name in name(),
        ) {
            let bus = EventBus::new();
            let _sub = bus.subscribe(&pattern).unwrap();
            prop_assert_eq!(bus.wants(name), oracle_matches(&pattern, name));
        }
    }
}
