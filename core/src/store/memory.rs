//! The in-memory store: everything behind one `parking_lot` mutex, with a priority queue of
//! ready steps per handler and ordered sets of lease expiries and retry times.
//!
//! Nothing survives the process; use it for tests, benchmarks and short-lived runs.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use semver::Version;
use serde_json::Value;

use super::{
    Changes, ClaimRequest, ClaimedStep, Created, NewTask, StepFailure, StepInputs, Store,
    WorkStatus,
};
use crate::clock::{add_ms, Timestamp};
use crate::error::{Error, Result};
use crate::ids::{StepId, TaskId};
use crate::readiness::{self, Counters, Outcome, Release};
use crate::retry::{FailureKind, RetryDecision};
use crate::state::{StepEvent, StepState, TaskEvent, TaskState, Transition};
use crate::template::{TaskGraph, TaskTemplate};
use crate::view::{DependencyView, Progress, StepView, TaskFilter, TaskView, TransitionView};

/// The in-memory [`Store`].
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[derive(Debug, Default)]
struct Inner {
    templates: HashMap<(String, String), BTreeMap<Version, TaskTemplate>>,
    tasks: HashMap<TaskId, TaskRec>,
    idempotency: HashMap<(String, String, String), TaskId>,
    queues: Queues,
}

/// Where steps wait: ready ones per handler, waiting ones by time, running ones by lease expiry.
#[derive(Debug, Default)]
struct Queues {
    ready: HashMap<Arc<str>, BinaryHeap<ReadyEntry>>,
    retries: BTreeSet<Due>,
    leases: BTreeSet<Due>,
    seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Timestamp,
    step: StepId,
    attempt: u32,
}

#[derive(Debug, PartialEq, Eq)]
struct ReadyEntry {
    priority: i32,
    seq: u64,
    step: StepId,
}

impl Ord for ReadyEntry {
    /// Higher priority first, then first in.
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for ReadyEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Queues {
    fn push_ready(&mut self, task: &TaskRec, index: u32) {
        self.seq += 1;
        let handler = &task.graph.step(index).handler;
        let entry = ReadyEntry {
            priority: task.priority,
            seq: self.seq,
            step: StepId {
                task: task.id,
                index,
            },
        };
        match self.ready.get_mut(handler) {
            Some(heap) => heap.push(entry),
            None => {
                self.ready
                    .insert(handler.clone(), BinaryHeap::from(vec![entry]));
            }
        }
    }

    /// The handler whose queue holds the best entry among `handlers` (all when `None`).
    fn best_queue(&self, handlers: Option<&[Arc<str>]>) -> Option<Arc<str>> {
        let candidates: Box<dyn Iterator<Item = (&Arc<str>, &BinaryHeap<ReadyEntry>)>> =
            match handlers {
                None => Box::new(self.ready.iter()),
                Some(list) => Box::new(
                    list.iter()
                        .filter_map(|name| self.ready.get_key_value(name)),
                ),
            };
        candidates
            .filter_map(|(name, heap)| heap.peek().map(|top| (name, top)))
            .max_by(|a, b| a.1.cmp(b.1))
            .map(|(name, _)| name.clone())
    }
}

#[derive(Debug)]
struct TaskRec {
    id: TaskId,
    graph: Arc<TaskGraph>,
    namespace: Arc<str>,
    name: Arc<str>,
    context: Arc<Value>,
    status: TaskState,
    priority: i32,
    idempotency_key: Option<String>,
    states: Vec<StepState>,
    counters: Vec<Counters>,
    steps: Vec<StepRec>,
    transitions: Vec<Transition>,
    /// Steps not finished.
    unfinished: u32,
    created_at: Timestamp,
    updated_at: Timestamp,
    completed_at: Option<Timestamp>,
}

#[derive(Debug, Default)]
struct StepRec {
    attempts: u32,
    max_attempts: u32,
    next_attempt_at: Option<Timestamp>,
    lease: Option<(Arc<str>, Timestamp)>,
    result: Option<Arc<Value>>,
    error: Option<String>,
    started_at: Option<Timestamp>,
    completed_at: Option<Timestamp>,
}

impl TaskRec {
    fn step_to(
        &mut self,
        index: u32,
        event: StepEvent,
        now: Timestamp,
        reason: Option<String>,
        changes: &mut Changes,
    ) -> Result<StepState> {
        let i = index as usize;
        let from = self.states[i];
        let to = from.next(event)?;
        self.states[i] = to;
        self.record(
            Transition::step(
                self.id,
                index,
                &self.graph.step(index).name,
                (from, to),
                event,
                self.steps[i].attempts,
                now,
            ),
            reason,
            changes,
        );
        Ok(to)
    }

    fn task_to(
        &mut self,
        event: TaskEvent,
        now: Timestamp,
        reason: Option<String>,
        changes: &mut Changes,
    ) -> Result<TaskState> {
        let from = self.status;
        let to = from.next(event)?;
        self.status = to;
        if to.is_finished() {
            self.completed_at = Some(now);
        } else {
            self.completed_at = None;
        }
        self.record(
            Transition::task(self.id, Some(from), to, event, now),
            reason,
            changes,
        );
        Ok(to)
    }

    fn record(&mut self, mut t: Transition, reason: Option<String>, changes: &mut Changes) {
        t.reason = reason;
        self.updated_at = t.at;
        changes.transitions.push(t.clone());
        self.transitions.push(t);
    }

    fn step_index(&self, step: StepId) -> Result<u32> {
        if (step.index as usize) < self.states.len() {
            Ok(step.index)
        } else {
            Err(Error::StepNotFound {
                task: self.id,
                step: step.index.to_string(),
            })
        }
    }

    /// The claim `(step, attempt)` is still held at `now`.
    fn check_claim(&self, step: StepId, attempt: u32, now: Timestamp) -> Result<u32> {
        let index = self.step_index(step)?;
        let i = index as usize;
        let held = self.states[i] == StepState::InProgress
            && self.steps[i].attempts == attempt
            && self.steps[i]
                .lease
                .as_ref()
                .is_some_and(|(_, exp)| *exp > now);
        if held {
            Ok(index)
        } else {
            Err(Error::ClaimLost { step, attempt })
        }
    }

    fn view(&self) -> TaskView {
        let steps = (0..self.states.len() as u32)
            .map(|index| {
                let i = index as usize;
                let spec = self.graph.step(index);
                let rec = &self.steps[i];
                let running = self.states[i] == StepState::InProgress;
                StepView {
                    step_id: StepId {
                        task: self.id,
                        index,
                    },
                    name: spec.name.to_string(),
                    handler: spec.handler.to_string(),
                    status: self.states[i],
                    attempts: rec.attempts,
                    max_attempts: rec.max_attempts,
                    result: rec.result.as_deref().cloned(),
                    error: rec.error.clone(),
                    depends_on: self
                        .graph
                        .parents(index)
                        .iter()
                        .map(|e| DependencyView {
                            step: self.graph.step(e.step).name.to_string(),
                            requires_success: e.requires_success,
                        })
                        .collect(),
                    started_at: rec.started_at,
                    completed_at: rec.completed_at,
                    duration_ms: match (rec.started_at, rec.completed_at) {
                        (Some(s), Some(c)) if c >= s => {
                            u64::try_from((c - s).num_milliseconds()).ok()
                        }
                        _ => None,
                    },
                    next_attempt_at: rec.next_attempt_at,
                    lease_owner: rec
                        .lease
                        .as_ref()
                        .filter(|_| running)
                        .map(|(o, _)| o.to_string()),
                    lease_expires_at: rec.lease.as_ref().filter(|_| running).map(|(_, e)| *e),
                }
            })
            .collect();
        TaskView {
            id: self.id,
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            version: self.graph.version().to_string(),
            status: self.status,
            context: (*self.context).clone(),
            priority: self.priority,
            idempotency_key: self.idempotency_key.clone(),
            progress: Progress::of(self.states.iter().copied()),
            steps,
            created_at: self.created_at,
            updated_at: self.updated_at,
            completed_at: self.completed_at,
        }
    }
}

impl Inner {
    fn task_mut(&mut self, id: TaskId) -> Result<(&mut TaskRec, &mut Queues)> {
        match self.tasks.get_mut(&id) {
            Some(t) => Ok((t, &mut self.queues)),
            None => Err(Error::TaskNotFound(id)),
        }
    }

    /// Waiting steps whose time has come become pending (and ready).
    fn promote_due(&mut self, now: Timestamp, changes: &mut Changes) {
        while let Some(due) = self.queues.retries.first().copied() {
            if due.at > now {
                break;
            }
            self.queues.retries.pop_first();
            let Some(task) = self.tasks.get_mut(&due.step.task) else {
                continue;
            };
            let i = due.step.index as usize;
            if task.states[i] != StepState::WaitingForRetry || task.steps[i].attempts != due.attempt
            {
                continue;
            }
            task.steps[i].next_attempt_at = None;
            if task
                .step_to(due.step.index, StepEvent::RetryDue, now, None, changes)
                .is_ok()
                && task.counters[i].is_clear()
            {
                self.queues.push_ready(task, due.step.index);
            }
        }
    }

    /// Steps whose lease ran out are given back as a retryable failure.
    fn reclaim_expired(&mut self, now: Timestamp, changes: &mut Changes) {
        while let Some(due) = self.queues.leases.first().copied() {
            if due.at > now {
                break;
            }
            self.queues.leases.pop_first();
            let Some(task) = self.tasks.get_mut(&due.step.task) else {
                continue;
            };
            let i = due.step.index as usize;
            if task.states[i] != StepState::InProgress || task.steps[i].attempts != due.attempt {
                continue;
            }
            let owner = task.steps[i]
                .lease
                .take()
                .map(|(o, _)| o)
                .unwrap_or_else(|| "?".into());
            let message = format!(
                "lease expired after {} ms (worker {owner})",
                task.graph.step(due.step.index).timeout_ms
            );
            let retryable = FailureKind::Retryable {
                retry_after_ms: None,
            };
            record_failure(
                task,
                &mut self.queues,
                due.step.index,
                retryable,
                message,
                StepEvent::LeaseExpired,
                now,
                changes,
            );
        }
    }
}

/// A failed attempt (reported or by lease expiry): a retry after backoff, or a failure for good.
#[allow(clippy::too_many_arguments)]
fn record_failure(
    task: &mut TaskRec,
    queues: &mut Queues,
    index: u32,
    kind: FailureKind,
    message: String,
    event: StepEvent,
    now: Timestamp,
    changes: &mut Changes,
) {
    let i = index as usize;
    task.steps[i].error = Some(message.clone());
    task.steps[i].lease = None;
    if task
        .step_to(index, event, now, Some(message), changes)
        .is_err()
    {
        return;
    }
    let (attempt, budget) = (task.steps[i].attempts, task.steps[i].max_attempts);
    match task
        .graph
        .step(index)
        .retry
        .decide(attempt, budget, kind, fastrand::f64())
    {
        RetryDecision::RetryAfter { delay_ms } => {
            let at = add_ms(now, delay_ms);
            task.steps[i].next_attempt_at = Some(at);
            let reason = Some(format!("retry in {delay_ms} ms"));
            if task
                .step_to(index, StepEvent::ScheduleRetry, now, reason, changes)
                .is_ok()
            {
                queues.retries.insert(Due {
                    at,
                    step: StepId {
                        task: task.id,
                        index,
                    },
                    attempt,
                });
            }
        }
        RetryDecision::GiveUp { .. } => {
            task.steps[i].completed_at = Some(now);
            finish_step(task, queues, index, Outcome::Failed, now, changes);
        }
    }
}

/// A step has finished: release or skip its children, and finish the task when nothing is left.
fn finish_step(
    task: &mut TaskRec,
    queues: &mut Queues,
    index: u32,
    outcome: Outcome,
    now: Timestamp,
    changes: &mut Changes,
) {
    task.unfinished -= 1;
    let graph = task.graph.clone();
    let mut release = Release::default();
    readiness::propagate_into(
        &graph,
        &mut task.counters,
        &mut task.states,
        index,
        outcome,
        &mut release,
    );
    apply_release(task, queues, &release, now, changes);
    maybe_finish_task(task, now, changes);
}

/// Records the skips of a [`Release`] and queues its ready steps.
fn apply_release(
    task: &mut TaskRec,
    queues: &mut Queues,
    release: &Release,
    now: Timestamp,
    changes: &mut Changes,
) {
    for &s in &release.skipped {
        task.unfinished -= 1;
        task.steps[s as usize].completed_at = Some(now);
        let t = Transition::step(
            task.id,
            s,
            &task.graph.step(s).name,
            (StepState::Pending, StepState::Skipped),
            StepEvent::Skip,
            task.steps[s as usize].attempts,
            now,
        );
        task.record(t, Some("a required parent failed".into()), changes);
    }
    if task.status.is_runnable() {
        for &r in &release.ready {
            queues.push_ready(task, r);
            changes.ready.push((
                StepId {
                    task: task.id,
                    index: r,
                },
                task.graph.step(r).name.clone(),
            ));
        }
    }
}

fn maybe_finish_task(task: &mut TaskRec, now: Timestamp, changes: &mut Changes) {
    if task.unfinished != 0 {
        return;
    }
    let event = match (task.status, readiness::task_outcome(&task.states)) {
        (
            TaskState::Pending | TaskState::InProgress | TaskState::Error,
            Some(Outcome::Succeeded),
        ) => TaskEvent::Complete,
        (TaskState::Pending | TaskState::InProgress, Some(Outcome::Failed)) => TaskEvent::Fail,
        _ => return,
    };
    let _ = task.task_to(event, now, None, changes);
}

/// Recomputes a task's counters from its states after an operator verb, skipping what is doomed
/// and queueing what is ready.
fn resettle(task: &mut TaskRec, queues: &mut Queues, now: Timestamp, changes: &mut Changes) {
    let graph = task.graph.clone();
    let (counters, release) = readiness::settle(&graph, &mut task.states);
    task.counters = counters;
    task.unfinished = task.states.iter().filter(|s| !s.is_finished()).count() as u32
        + release.skipped.len() as u32;
    apply_release(task, queues, &release, now, changes);
}

fn template_key(graph: &TaskGraph) -> (String, String) {
    (graph.namespace().to_owned(), graph.name().to_owned())
}

#[async_trait]
impl Store for MemoryStore {
    async fn save_template(&self, graph: &TaskGraph) -> Result<()> {
        let mut inner = self.inner.lock();
        let versions = inner.templates.entry(template_key(graph)).or_default();
        match versions.get(graph.version()) {
            Some(existing) if existing == graph.template() => Ok(()),
            Some(_) => Err(Error::TemplateConflict {
                namespace: graph.namespace().to_owned(),
                name: graph.name().to_owned(),
                version: graph.version().to_string(),
            }),
            None => {
                versions.insert(graph.version().clone(), graph.template().clone());
                Ok(())
            }
        }
    }

    async fn resolve_template_version(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&Version>,
    ) -> Result<Version> {
        let inner = self.inner.lock();
        let found = inner
            .templates
            .get(&(namespace.to_owned(), name.to_owned()))
            .and_then(|versions| match version {
                Some(v) => versions.get_key_value(v).map(|(k, _)| k.clone()),
                None => versions.keys().next_back().cloned(),
            });
        found.ok_or_else(|| Error::TemplateNotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            version: version.map(|v| v.to_string()),
        })
    }

    async fn load_template(
        &self,
        namespace: &str,
        name: &str,
        version: &Version,
    ) -> Result<TaskTemplate> {
        let inner = self.inner.lock();
        inner
            .templates
            .get(&(namespace.to_owned(), name.to_owned()))
            .and_then(|versions| versions.get(version))
            .cloned()
            .ok_or_else(|| Error::TemplateNotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                version: Some(version.to_string()),
            })
    }

    async fn create_task(
        &self,
        graph: Arc<TaskGraph>,
        new: &NewTask,
        now: Timestamp,
    ) -> Result<Created> {
        let mut inner = self.inner.lock();
        let key = new.idempotency_key.as_ref().map(|k| {
            (
                graph.namespace().to_owned(),
                graph.name().to_owned(),
                k.clone(),
            )
        });
        if let Some(existing) = key.as_ref().and_then(|k| inner.idempotency.get(k)) {
            return Ok(Created {
                task_id: *existing,
                created: false,
                changes: Changes::default(),
            });
        }
        let id = TaskId::new();
        let n = graph.len();
        let mut task = TaskRec {
            id,
            namespace: graph.namespace().into(),
            name: graph.name().into(),
            context: Arc::new(new.context.clone()),
            status: TaskState::Pending,
            priority: new.priority,
            idempotency_key: new.idempotency_key.clone(),
            states: vec![StepState::Pending; n],
            counters: readiness::initial_counters(&graph),
            steps: graph
                .steps()
                .iter()
                .map(|s| StepRec {
                    max_attempts: s.retry.max_attempts,
                    ..StepRec::default()
                })
                .collect(),
            transitions: Vec::new(),
            unfinished: n as u32,
            created_at: now,
            updated_at: now,
            completed_at: None,
            graph,
        };
        let mut changes = Changes::default();
        task.record(
            Transition::task(id, None, TaskState::Pending, TaskEvent::Create, now),
            None,
            &mut changes,
        );
        let Inner {
            tasks,
            queues,
            idempotency,
            ..
        } = &mut *inner;
        for root in task.graph.roots() {
            queues.push_ready(&task, root);
            changes.ready.push((
                StepId {
                    task: id,
                    index: root,
                },
                task.graph.step(root).name.clone(),
            ));
        }
        tasks.insert(id, task);
        if let Some(k) = key {
            idempotency.insert(k, id);
        }
        Ok(Created {
            task_id: id,
            created: true,
            changes,
        })
    }

    async fn claim(
        &self,
        request: &ClaimRequest,
        now: Timestamp,
    ) -> Result<(Vec<ClaimedStep>, Changes)> {
        let mut inner = self.inner.lock();
        let mut changes = Changes::default();
        // Reclaim first, so that a step whose lease ran out and whose backoff has already
        // elapsed (e.g. zero) is handed out by this very claim.
        inner.reclaim_expired(now, &mut changes);
        inner.promote_due(now, &mut changes);
        let Inner { tasks, queues, .. } = &mut *inner;
        let mut claimed = Vec::with_capacity(request.limit.min(64));
        while claimed.len() < request.limit {
            let Some(handler) = queues.best_queue(request.handlers.as_deref()) else {
                break;
            };
            let Some(entry) = queues.ready.get_mut(&handler).and_then(BinaryHeap::pop) else {
                break;
            };
            let Some(task) = tasks.get_mut(&entry.step.task) else {
                continue;
            };
            let index = entry.step.index;
            let i = index as usize;
            if !task.status.is_runnable()
                || task.states[i] != StepState::Pending
                || !task.counters[i].is_clear()
            {
                continue; // stale: cancelled, paused, resolved or already claimed
            }
            // The task starts before its first step is claimed, in the audit trail and in the
            // published events alike.
            if task.status == TaskState::Pending {
                task.task_to(TaskEvent::Start, now, None, &mut changes)?;
            }
            task.steps[i].attempts += 1;
            task.step_to(index, StepEvent::Claim, now, None, &mut changes)?;
            let spec = task.graph.step(index);
            let expires = add_ms(now, spec.timeout_ms);
            let rec = &mut task.steps[i];
            rec.lease = Some((request.worker_id.clone(), expires));
            rec.started_at = Some(now);
            rec.completed_at = None;
            let (attempt, max_attempts) = (rec.attempts, rec.max_attempts);
            queues.leases.insert(Due {
                at: expires,
                step: entry.step,
                attempt,
            });
            let inputs = task
                .graph
                .parents(index)
                .iter()
                .map(|e| {
                    let parent = &task.steps[e.step as usize];
                    let value = parent
                        .result
                        .clone()
                        .unwrap_or_else(|| Arc::new(Value::Null));
                    (task.graph.step(e.step).name.clone(), value)
                })
                .collect();
            claimed.push(ClaimedStep {
                step_id: entry.step,
                name: spec.name.clone(),
                handler: spec.handler.clone(),
                namespace: task.namespace.clone(),
                task_name: task.name.clone(),
                attempt,
                max_attempts,
                context: task.context.clone(),
                inputs: StepInputs(inputs),
                lease_expires_at: expires,
                timeout_ms: spec.timeout_ms,
            });
        }
        Ok((claimed, changes))
    }

    async fn complete(
        &self,
        step: StepId,
        attempt: u32,
        result: Value,
        now: Timestamp,
    ) -> Result<Changes> {
        let mut inner = self.inner.lock();
        let (task, queues) = inner.task_mut(step.task)?;
        let index = task.check_claim(step, attempt, now)?;
        let i = index as usize;
        if let Some((_, exp)) = task.steps[i].lease.take() {
            queues.leases.remove(&Due {
                at: exp,
                step,
                attempt,
            });
        }
        task.steps[i].result = Some(Arc::new(result));
        task.steps[i].completed_at = Some(now);
        let mut changes = Changes::default();
        task.step_to(index, StepEvent::Complete, now, None, &mut changes)?;
        finish_step(task, queues, index, Outcome::Succeeded, now, &mut changes);
        Ok(changes)
    }

    async fn fail(
        &self,
        step: StepId,
        attempt: u32,
        failure: &StepFailure,
        now: Timestamp,
    ) -> Result<Changes> {
        let mut inner = self.inner.lock();
        let (task, queues) = inner.task_mut(step.task)?;
        let index = task.check_claim(step, attempt, now)?;
        if let Some((_, exp)) = task.steps[index as usize].lease.take() {
            queues.leases.remove(&Due {
                at: exp,
                step,
                attempt,
            });
        }
        let mut changes = Changes::default();
        let message = failure.message.clone();
        record_failure(
            task,
            queues,
            index,
            failure.kind,
            message,
            StepEvent::Fail,
            now,
            &mut changes,
        );
        Ok(changes)
    }

    async fn heartbeat(&self, step: StepId, attempt: u32, now: Timestamp) -> Result<Timestamp> {
        let mut inner = self.inner.lock();
        let (task, queues) = inner.task_mut(step.task)?;
        let index = task.check_claim(step, attempt, now)?;
        let expires = add_ms(now, task.graph.step(index).timeout_ms);
        if let Some((_, exp)) = task.steps[index as usize].lease.as_mut() {
            queues.leases.remove(&Due {
                at: *exp,
                step,
                attempt,
            });
            *exp = expires;
            queues.leases.insert(Due {
                at: expires,
                step,
                attempt,
            });
        }
        Ok(expires)
    }

    async fn reclaim_expired(&self, now: Timestamp) -> Result<Changes> {
        let mut changes = Changes::default();
        self.inner.lock().reclaim_expired(now, &mut changes);
        Ok(changes)
    }

    async fn cancel_task(&self, id: TaskId, now: Timestamp) -> Result<Changes> {
        let mut inner = self.inner.lock();
        let (task, queues) = inner.task_mut(id)?;
        let mut changes = Changes::default();
        task.task_to(TaskEvent::Cancel, now, None, &mut changes)?;
        for index in 0..task.states.len() as u32 {
            let i = index as usize;
            match task.states[i] {
                StepState::InProgress => {
                    if let Some((_, at)) = task.steps[i].lease.take() {
                        let attempt = task.steps[i].attempts;
                        queues.leases.remove(&Due {
                            at,
                            step: StepId { task: id, index },
                            attempt,
                        });
                    }
                }
                StepState::WaitingForRetry => {
                    if let Some(at) = task.steps[i].next_attempt_at.take() {
                        let attempt = task.steps[i].attempts;
                        queues.retries.remove(&Due {
                            at,
                            step: StepId { task: id, index },
                            attempt,
                        });
                    }
                }
                StepState::Pending => {}
                _ => continue,
            }
            task.steps[i].completed_at = Some(now);
            task.step_to(
                index,
                StepEvent::Cancel,
                now,
                Some("task cancelled".into()),
                &mut changes,
            )?;
            task.unfinished -= 1;
        }
        Ok(changes)
    }

    async fn pause_task(&self, id: TaskId, now: Timestamp) -> Result<Changes> {
        let mut inner = self.inner.lock();
        let (task, _) = inner.task_mut(id)?;
        let mut changes = Changes::default();
        task.task_to(TaskEvent::Pause, now, None, &mut changes)?;
        Ok(changes)
    }

    async fn resume_task(&self, id: TaskId, now: Timestamp) -> Result<Changes> {
        let mut inner = self.inner.lock();
        let (task, queues) = inner.task_mut(id)?;
        let mut changes = Changes::default();
        task.task_to(TaskEvent::Resume, now, None, &mut changes)?;
        resettle(task, queues, now, &mut changes);
        maybe_finish_task(task, now, &mut changes);
        Ok(changes)
    }

    async fn retry_task(&self, id: TaskId, now: Timestamp) -> Result<Changes> {
        let mut inner = self.inner.lock();
        let (task, queues) = inner.task_mut(id)?;
        let mut changes = Changes::default();
        task.task_to(TaskEvent::Retry, now, None, &mut changes)?;
        for index in 0..task.states.len() as u32 {
            let i = index as usize;
            if matches!(task.states[i], StepState::Error | StepState::Skipped) {
                let rec = &mut task.steps[i];
                rec.max_attempts = rec.attempts + task.graph.step(index).retry.max_attempts;
                rec.completed_at = None;
                rec.next_attempt_at = None;
                let reason = Some("operator retry".to_owned());
                task.step_to(index, StepEvent::Reset, now, reason, &mut changes)?;
            }
        }
        resettle(task, queues, now, &mut changes);
        maybe_finish_task(task, now, &mut changes);
        Ok(changes)
    }

    async fn resolve_step(&self, step: StepId, result: Value, now: Timestamp) -> Result<Changes> {
        let mut inner = self.inner.lock();
        let (task, queues) = inner.task_mut(step.task)?;
        let index = task.step_index(step)?;
        let i = index as usize;
        let before = task.states[i];
        let mut changes = Changes::default();
        task.step_to(
            index,
            StepEvent::ResolveManually,
            now,
            Some("resolved by an operator".into()),
            &mut changes,
        )?;
        let rec = &mut task.steps[i];
        let attempt = rec.attempts;
        if let Some((_, at)) = rec.lease.take() {
            queues.leases.remove(&Due { at, step, attempt });
        }
        if let Some(at) = rec.next_attempt_at.take() {
            queues.retries.remove(&Due { at, step, attempt });
        }
        rec.result = Some(Arc::new(result));
        rec.completed_at = Some(now);
        if before.is_finished() {
            // Its children were told it failed: give back the steps skipped on its account.
            let skipped: Vec<u32> = (0..task.states.len() as u32)
                .filter(|&s| task.states[s as usize] == StepState::Skipped)
                .collect();
            for &s in &skipped {
                task.states[s as usize] = StepState::Pending;
            }
            let graph = task.graph.clone();
            let (_, would_skip) = readiness::settle(&graph, &mut task.states.clone());
            for &s in &skipped {
                if !would_skip.skipped.contains(&s) {
                    task.states[s as usize] = StepState::Skipped;
                    task.steps[s as usize].completed_at = None;
                    let reason = Some(format!(
                        "parent {} resolved manually",
                        task.graph.step(index).name
                    ));
                    task.step_to(s, StepEvent::Reset, now, reason, &mut changes)?;
                } else {
                    task.states[s as usize] = StepState::Skipped;
                }
            }
            if task.status == TaskState::Error && task.states.iter().any(|s| !s.is_finished()) {
                let reason = Some(format!(
                    "step {} resolved manually",
                    task.graph.step(index).name
                ));
                task.task_to(TaskEvent::Retry, now, reason, &mut changes)?;
            }
            resettle(task, queues, now, &mut changes);
            maybe_finish_task(task, now, &mut changes);
        } else {
            finish_step(task, queues, index, Outcome::Succeeded, now, &mut changes);
        }
        Ok(changes)
    }

    async fn step_id(&self, task: TaskId, name: &str) -> Result<StepId> {
        let inner = self.inner.lock();
        let rec = inner.tasks.get(&task).ok_or(Error::TaskNotFound(task))?;
        rec.graph
            .index_of(name)
            .map(|index| StepId { task, index })
            .ok_or_else(|| Error::StepNotFound {
                task,
                step: name.to_owned(),
            })
    }

    async fn task(&self, id: TaskId) -> Result<TaskView> {
        let inner = self.inner.lock();
        inner
            .tasks
            .get(&id)
            .map(TaskRec::view)
            .ok_or(Error::TaskNotFound(id))
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskView>> {
        let inner = self.inner.lock();
        let mut matching: Vec<&TaskRec> = inner
            .tasks
            .values()
            .filter(|t| filter.status.is_none_or(|s| s == t.status))
            .filter(|t| {
                filter
                    .namespace
                    .as_deref()
                    .is_none_or(|n| n == &*t.namespace)
            })
            .filter(|t| filter.name.as_deref().is_none_or(|n| n == &*t.name))
            .collect();
        matching.sort_by_key(|t| std::cmp::Reverse(t.id));
        Ok(matching
            .into_iter()
            .take(filter.limit)
            .map(TaskRec::view)
            .collect())
    }

    async fn transitions(&self, id: TaskId) -> Result<Vec<TransitionView>> {
        let inner = self.inner.lock();
        let task = inner.tasks.get(&id).ok_or(Error::TaskNotFound(id))?;
        Ok(task.transitions.iter().map(TransitionView::from).collect())
    }

    async fn work_status(
        &self,
        handlers: Option<&[Arc<str>]>,
        _now: Timestamp,
    ) -> Result<WorkStatus> {
        let mut inner = self.inner.lock();
        let Inner { tasks, queues, .. } = &mut *inner;
        let mut ready = 0u64;
        for (name, heap) in queues.ready.iter_mut() {
            if handlers.is_some_and(|list| !list.contains(name)) {
                continue;
            }
            // Drop stale entries (cancelled, paused, resolved, claimed) so the count is exact.
            heap.retain(|e| {
                tasks.get(&e.step.task).is_some_and(|t| {
                    let i = e.step.index as usize;
                    t.status.is_runnable()
                        && t.states[i] == StepState::Pending
                        && t.counters[i].is_clear()
                })
            });
            ready += heap.len() as u64;
        }
        Ok(WorkStatus {
            ready,
            running: queues.leases.len() as u64,
            waiting: queues.retries.len() as u64,
            next_due: queues.retries.first().map(|d| d.at),
        })
    }
}
