//! The rows both SQL stores read and write, in one form: read with [`sqlx::FromRow`] from
//! either driver, written as one batch ([`Rows`]) that SQLite takes as multi-row binds and
//! PostgreSQL as one array per column (read with `UNNEST`).

use super::super::record::{StepRecord, TaskRecord};
use crate::clock::Timestamp;
use crate::state::{Change, Transition};

/// Milliseconds since the Unix epoch, as the stores keep times.
pub(super) fn ms(t: Timestamp) -> i64 {
    t.timestamp_millis()
}

/// A task row as read.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct TaskRow {
    pub task_id: String,
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub status: String,
    pub priority: i64,
    pub context: String,
    pub idempotency_key: Option<String>,
    pub unfinished_steps: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub completed_at: Option<i64>,
    pub revision: i64,
    pub parent: Option<String>,
    pub deadline_at: Option<i64>,
    pub traceparent: Option<String>,
    pub trace_parent: Option<String>,
    /// Whether it holds its template-level key (`KeyHold::code`).
    pub key_hold: i64,
}

/// A step row as read.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct StepRow {
    pub task_id: String,
    pub status: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub unfinished_parents: i64,
    pub failed_required_parents: i64,
    pub not_chosen_parents: i64,
    pub chosen: Option<String>,
    pub name: String,
    pub of_step: Option<i64>,
    pub batch: Option<String>,
    pub next_attempt_at: Option<i64>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub result: Option<String>,
    pub error: Option<String>,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub ready_at: Option<i64>,
    pub children: Option<String>,
}

/// A step named by a claim query or by the scan for expired leases and due retries.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct StepKey {
    pub task_id: String,
    pub step_index: i64,
    pub attempts: i64,
}

/// A step whose lease ran out (`due` is `lease`) or whose retry is due (`retry`).
#[derive(Debug, sqlx::FromRow)]
pub(super) struct DueStep {
    pub due: String,
    #[sqlx(flatten)]
    pub key: StepKey,
    /// A ready step's concurrency key.
    pub ckey: Option<String>,
    /// A ready step's task's concurrency key, while the task is pending.
    pub tkey: Option<String>,
    /// A ready step's rate key.
    pub rkey: Option<String>,
}

/// What holds a key (`kind` `step` or `task`: `n` holders) or a rate key's bucket (`rate`).
#[derive(Debug, sqlx::FromRow)]
pub(super) struct GateRow {
    pub kind: String,
    pub key: String,
    pub n: i64,
    pub tokens: Option<f64>,
    pub at_ms: Option<i64>,
}

/// A rate key's bucket to write.
#[derive(Debug)]
pub(super) struct BucketWrite<'a> {
    pub key: &'a str,
    pub tokens: f64,
    pub at_ms: i64,
    pub refill_per_ms: f64,
}

/// A line of an attempt's log to write.
#[derive(Debug)]
pub(super) struct LogWrite<'a> {
    pub task_id: String,
    pub step_index: i64,
    pub attempt: i64,
    /// Its place in the attempt's log, from 0.
    pub seq: i64,
    pub at: i64,
    pub level: &'static str,
    pub message: &'a str,
}

impl<'a> LogWrite<'a> {
    /// The rows of `log`'s lines.
    pub fn of(log: &'a crate::logs::AttemptLog) -> impl Iterator<Item = LogWrite<'a>> + 'a {
        let task_id = log.step.task.to_string();
        log.lines
            .iter()
            .enumerate()
            .map(move |(seq, line)| LogWrite {
                task_id: task_id.clone(),
                step_index: i64::from(log.step.index),
                attempt: i64::from(log.attempt),
                seq: seq as i64,
                at: ms(line.at),
                level: line.level.as_str(),
                message: &line.message,
            })
    }
}

/// What `work_status` counts.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct StatusRow {
    pub ready: i64,
    pub running: i64,
    pub waiting: i64,
    pub next_due: Option<i64>,
}

/// A transition row as read.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct TransitionRow {
    pub step_index: Option<i64>,
    pub step_name: Option<String>,
    pub from_state: Option<String>,
    pub to_state: String,
    pub event: String,
    pub reason: Option<String>,
    pub attempt: i64,
    pub at: i64,
}

/// A webhook delivery leased, as the claim returns it.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct DeliveryRow {
    pub id: String,
    pub event: String,
    pub hook: String,
    pub body: String,
    pub attempts: i64,
}

/// A webhook delivery as listed.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct DeliveryViewRow {
    pub id: String,
    pub task_id: String,
    pub event: String,
    pub hook: String,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

/// A new webhook delivery to write.
#[derive(Debug)]
pub(super) struct DeliveryWrite {
    pub id: String,
    pub task_id: String,
    pub event: &'static str,
    /// The webhook, as JSON.
    pub hook: String,
    /// How long an attempt is leased (kept apart from `hook`: the claim reads it in SQL).
    pub lease_ms: i64,
    pub body: String,
    pub at: i64,
}

impl DeliveryWrite {
    pub fn new(d: crate::webhooks::NewDelivery) -> Self {
        DeliveryWrite {
            hook: serde_json::to_string(&*d.hook).unwrap_or_default(),
            lease_ms: i64::try_from(d.hook.lease_ms()).unwrap_or(i64::MAX),
            task_id: d.task_id.to_string(),
            id: d.id,
            event: d.event,
            body: d.body,
            at: ms(d.at),
        }
    }
}

/// A log line as read, with its step's name.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct LogRow {
    pub step: String,
    pub step_index: i64,
    pub attempt: i64,
    pub at: i64,
    pub level: String,
    pub message: String,
}

/// A task row to write.
#[derive(Debug)]
pub(super) struct TaskWrite<'a> {
    pub task_id: String,
    pub namespace: &'a str,
    pub name: &'a str,
    pub version: String,
    pub status: &'static str,
    pub priority: i64,
    pub context: String,
    pub idempotency_key: Option<&'a str>,
    pub unfinished_steps: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub completed_at: Option<i64>,
    pub revision: i64,
    /// A child task's parent step, as JSON: written only when the row is `new` (it never
    /// changes).
    pub parent: Option<String>,
    /// Its deadline, until it finished.
    pub deadline_at: Option<i64>,
    /// Its template's concurrency key and limit (written only when `new`: they never change).
    pub concurrency_key: Option<&'a str>,
    pub concurrency_limit: Option<i64>,
    /// Its span's trace context and the caller's span (written only when `new`: they never
    /// change).
    pub traceparent: Option<String>,
    pub trace_parent: Option<String>,
    /// Whether it holds its template-level key (`KeyHold::code`).
    pub key_hold: i64,
    /// A new task (inserted, unless its idempotency key is taken), not one whose row exists.
    pub new: bool,
}

impl<'a> TaskWrite<'a> {
    /// Task `t`'s row at `revision`. Its context is serialized only when the row is `new`: the
    /// upsert never changes an existing row's context (it may be up to 1 MiB, and is not
    /// serialized again on every claim and report).
    pub fn new(t: &'a TaskRecord, revision: i64, new: bool) -> Self {
        let task_key = t
            .gates
            .as_deref()
            .filter(|_| new)
            .and_then(|g| g.task.as_ref());
        TaskWrite {
            task_id: t.id.to_string(),
            namespace: &t.of.namespace,
            name: &t.of.name,
            version: t.graph.version().to_string(),
            status: t.status.as_str(),
            priority: i64::from(t.priority),
            context: if new {
                t.context.to_string()
            } else {
                String::new()
            },
            idempotency_key: t.idempotency_key.as_deref(),
            unfinished_steps: i64::from(t.unfinished),
            created_at: ms(t.of.created_at),
            updated_at: ms(t.updated_at),
            completed_at: t.completed_at.map(ms),
            revision,
            parent: t
                .parent
                .as_ref()
                .filter(|_| new)
                .and_then(|p| serde_json::to_string(p).ok()),
            deadline_at: t.deadline_at.map(ms),
            concurrency_key: task_key.map(|(k, _)| &**k),
            concurrency_limit: task_key.map(|(_, l)| i64::from(*l)),
            traceparent: t.of.trace.filter(|_| new).map(|t| t.traceparent()),
            trace_parent: t.of.trace.filter(|_| new).and_then(|t| t.parent_hex()),
            key_hold: t.key_hold.code(),
            new,
        }
    }
}

/// A step row to write.
#[derive(Debug)]
pub(super) struct StepWrite<'a> {
    pub task_id: String,
    pub step_index: i64,
    pub name: &'a str,
    pub handler: &'a str,
    pub status: &'static str,
    pub priority: i64,
    pub attempts: i64,
    pub max_attempts: i64,
    pub unfinished_parents: i64,
    pub failed_required_parents: i64,
    /// Set when the step became claimable (its claim order); `None` keeps the old value.
    pub ready_at: Option<i64>,
    pub next_attempt_at: Option<i64>,
    pub lease_owner: Option<&'a str>,
    pub lease_expires_at: Option<i64>,
    pub result: Option<String>,
    pub error: Option<&'a str>,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub not_chosen_parents: i64,
    /// A decision step's choice: the indexes of the dependents it chose, as a JSON array.
    pub chosen: Option<String>,
    /// For an instance of a batch worker step, the worker step's index.
    pub of_step: Option<i64>,
    /// For a new instance, its slice as JSON (`None` keeps the old value: it never changes).
    pub batch: Option<String>,
    /// The child tasks it started, as a JSON array of ids.
    pub children: Option<String>,
    /// Its concurrency key and limit, and its rate key (written only when `new`: they never
    /// change).
    pub concurrency_key: Option<&'a str>,
    pub concurrency_limit: Option<i64>,
    pub rate_key: Option<&'a str>,
}

impl<'a> StepWrite<'a> {
    /// Step `i` of `t`; `ready_at` when it became claimable in this operation; `new` when its
    /// row is written for the first time.
    pub fn new(t: &'a TaskRecord, i: usize, ready_at: Option<i64>, new: bool) -> Self {
        let spec = t.spec(i as u32);
        let s: &'a StepRecord = &t.steps[i];
        let instance = t.instance(i as u32);
        let gates = t.step_gates(i as u32).filter(|_| new);
        let concurrency = gates.and_then(|g| g.concurrency.as_ref());
        StepWrite {
            task_id: t.id.to_string(),
            step_index: i as i64,
            name: t.step_name(i as u32),
            handler: &spec.handler,
            status: t.states[i].as_str(),
            priority: i64::from(t.priority),
            attempts: i64::from(s.attempts),
            max_attempts: i64::from(s.max_attempts),
            unfinished_parents: i64::from(t.counters[i].unfinished_parents),
            failed_required_parents: i64::from(t.counters[i].failed_required_parents),
            ready_at,
            next_attempt_at: s.next_attempt_at.map(ms),
            lease_owner: s.lease.as_ref().map(|(o, _)| &**o),
            lease_expires_at: s.lease.as_ref().map(|(_, e)| ms(*e)),
            result: s.result.as_deref().map(serde_json::Value::to_string),
            error: s.error.as_deref(),
            started_at: s.started_at.map(ms),
            completed_at: s.completed_at.map(ms),
            not_chosen_parents: i64::from(t.counters[i].not_chosen_parents),
            chosen: t
                .choices
                .chosen(i as u32)
                .map(|c| serde_json::Value::from(c.to_vec()).to_string()),
            of_step: instance.map(|inst| i64::from(inst.of)),
            batch: instance.filter(|_| new).map(|inst| inst.batch.to_string()),
            children: s
                .children
                .as_deref()
                .and_then(|c| serde_json::to_string(c).ok()),
            concurrency_key: concurrency.map(|(k, _)| &**k),
            concurrency_limit: concurrency.map(|(_, l)| i64::from(*l)),
            rate_key: gates.and_then(|g| g.rate.as_ref()).map(|(k, _)| &**k),
        }
    }
}

/// A transition row to write.
#[derive(Debug)]
pub(super) struct TransitionWrite<'a> {
    pub task_id: String,
    pub step_index: Option<i64>,
    pub step_name: Option<&'a str>,
    pub from_state: Option<&'static str>,
    pub to_state: &'static str,
    pub event: &'static str,
    pub reason: Option<&'a str>,
    pub attempt: i64,
    pub at: i64,
}

impl<'a> TransitionWrite<'a> {
    pub fn new(t: &'a Transition) -> Self {
        let (step_index, from_state, to_state, event) = match t.change {
            Change::Task { from, to, event } => {
                (None, from.map(|s| s.as_str()), to.as_str(), event.as_str())
            }
            Change::Step {
                index,
                from,
                to,
                event,
            } => (
                Some(i64::from(index)),
                Some(from.as_str()),
                to.as_str(),
                event.as_str(),
            ),
        };
        TransitionWrite {
            task_id: t.task_id.to_string(),
            step_index,
            step_name: t.step_name.as_deref(),
            from_state,
            to_state,
            event,
            reason: t.reason.as_deref(),
            attempt: i64::from(t.attempt),
            at: ms(t.at),
        }
    }
}

/// Every row one operation writes.
#[derive(Debug, Default)]
pub(super) struct Rows<'a> {
    pub tasks: Vec<TaskWrite<'a>>,
    pub steps: Vec<StepWrite<'a>>,
    pub transitions: Vec<TransitionWrite<'a>>,
    pub buckets: Vec<BucketWrite<'a>>,
    pub logs: Vec<LogWrite<'a>>,
    pub deliveries: Vec<DeliveryWrite>,
}

impl Rows<'_> {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
            && self.steps.is_empty()
            && self.transitions.is_empty()
            && self.buckets.is_empty()
            && self.logs.is_empty()
            && self.deliveries.is_empty()
    }
}
