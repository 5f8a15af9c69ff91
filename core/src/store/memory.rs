//! The in-memory store: everything behind one `parking_lot` mutex, with a priority queue of
//! ready steps per handler and ordered sets of lease expiries and retry times.
//!
//! Nothing survives the process; use it for tests, benchmarks and short-lived runs.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use semver::Version;
use serde_json::Value;

use super::record::{Schedule, TaskRecord};
use super::{
    Changes, ClaimRequest, ClaimedStep, Created, NewTask, Now, Outcome, ParentLink, Settled,
    StepReport, Store, WorkStatus,
};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::gate::{Bucket, Rate, Room, Slot, Want};
use crate::ids::{StepId, TaskId};
use crate::state::{StepState, TaskState, Transition};
use crate::template::{TaskGraph, TaskTemplate};
use crate::view::{TaskFilter, TaskView, TransitionView};

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
    tasks: HashMap<TaskId, MemTask>,
    idempotency: HashMap<(String, String, String), TaskId>,
    queues: Queues,
    schedules: BTreeMap<String, crate::schedule::ScheduleView>,
    /// The tasks with each concurrency key (finished ones dropped as the key is counted).
    keyed: HashMap<Slot, Vec<TaskId>>,
    /// Each rate key's bucket.
    buckets: HashMap<Arc<str>, (Bucket, Rate)>,
    /// The webhook outbox, by delivery id.
    outbox: BTreeMap<String, MemDelivery>,
}

/// A webhook delivery as the memory store keeps it.
#[derive(Debug)]
struct MemDelivery {
    new: crate::webhooks::NewDelivery,
    status: &'static str,
    attempts: u32,
    /// Its next attempt (pending), or when its lease runs out (delivering).
    due: Timestamp,
    last_error: Option<String>,
    delivered_at: Option<Timestamp>,
}

impl MemTask {
    /// Appends `transitions` (recorded on this task) to its trail, and the webhook deliveries
    /// of their events to `outbox`.
    fn keep(&mut self, transitions: &[Transition], outbox: &mut BTreeMap<String, MemDelivery>) {
        self.transitions.extend(transitions.iter().cloned());
        for new in crate::webhooks::deliveries_of(transitions) {
            let due = new.at;
            outbox.insert(
                new.id.clone(),
                MemDelivery {
                    new,
                    status: "pending",
                    attempts: 0,
                    due,
                    last_error: None,
                    delivered_at: None,
                },
            );
        }
    }
}

/// Each handler's count of claimable steps (those of `handlers`, all when `None`), its queue's
/// stale entries (cancelled, paused, resolved, claimed) dropped so that the count is exact.
fn exact_ready<'a>(
    tasks: &'a HashMap<TaskId, MemTask>,
    queues: &'a mut Queues,
    handlers: Option<&'a [Arc<str>]>,
) -> impl Iterator<Item = (&'a Arc<str>, usize)> + 'a {
    queues
        .ready
        .iter_mut()
        .filter(move |(name, _)| handlers.is_none_or(|list| list.contains(name)))
        .map(move |(name, heap)| {
            heap.retain(|e| {
                tasks
                    .get(&e.step.task)
                    .is_some_and(|t| t.record.is_claimable(e.step.index))
            });
            (name, heap.len())
        })
}

impl Inner {
    /// How many hold concurrency key `slot` now: its steps in progress (a step key), or the
    /// tasks that hold it (a task key).
    fn holders(&mut self, slot: &Slot) -> u32 {
        let Some(ids) = self.keyed.get_mut(slot) else {
            return 0;
        };
        let tasks = &self.tasks;
        // Only purged tasks are dropped: a finished task may be reopened by an operator.
        ids.retain(|id| tasks.contains_key(id));
        let mut n = 0;
        for t in ids.iter().filter_map(|id| tasks.get(id)) {
            let (r, Some(gates)) = (&t.record, &t.record.gates) else {
                continue;
            };
            match slot {
                Slot::Task(key) => {
                    let ours = gates.task.as_ref().is_some_and(|(k, _)| k == key);
                    if ours && r.key_hold == super::record::KeyHold::Held {
                        n += 1;
                    }
                }
                Slot::Step(key) => {
                    n += (0..r.states.len() as u32)
                        .filter(|&i| r.states[i as usize] == StepState::InProgress)
                        .filter(|&i| {
                            r.step_gates(i)
                                .and_then(|s| s.concurrency.as_ref())
                                .is_some_and(|(k, _)| k == key)
                        })
                        .count() as u32;
                }
                Slot::Rate(_) => {}
            }
        }
        n
    }

    /// `room` told what holds each slot of `wants` it was not told about yet.
    fn count_into(&mut self, room: &mut Room, counted: &mut HashSet<Slot>, wants: &[Want]) {
        for w in wants {
            if counted.insert(w.slot.clone()) {
                match &w.slot {
                    Slot::Rate(key) => {
                        room.bucket(key.clone(), self.buckets.get(key).map(|(b, _)| *b))
                    }
                    slot => {
                        let n = self.holders(slot);
                        room.count(slot.clone(), n);
                    }
                }
            }
        }
    }
}

/// Where steps wait: ready ones per handler, waiting ones by time, running ones by lease expiry.
#[derive(Debug, Default)]
struct Queues {
    ready: HashMap<Arc<str>, BinaryHeap<ReadyEntry>>,
    retries: BTreeSet<Due>,
    leases: BTreeSet<Due>,
    deadlines: BTreeSet<(Timestamp, TaskId)>,
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
    fn push_ready(&mut self, task: &TaskRecord, index: u32) {
        self.seq += 1;
        let handler = &task.spec(index).handler;
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

impl Schedule for Queues {
    fn ready(&mut self, task: &TaskRecord, index: u32) {
        self.push_ready(task, index);
    }
    fn lease_taken(&mut self, step: StepId, attempt: u32, at: Timestamp) {
        self.leases.insert(Due { at, step, attempt });
    }
    fn lease_released(&mut self, step: StepId, attempt: u32, at: Timestamp) {
        self.leases.remove(&Due { at, step, attempt });
    }
    fn retry_scheduled(&mut self, step: StepId, attempt: u32, at: Timestamp) {
        self.retries.insert(Due { at, step, attempt });
    }
    fn deadline_set(&mut self, task: TaskId, at: Timestamp) {
        self.deadlines.insert((at, task));
    }
    fn retry_cancelled(&mut self, step: StepId, attempt: u32, at: Timestamp) {
        self.retries.remove(&Due { at, step, attempt });
    }
}

/// A task and its audit trail.
#[derive(Debug)]
struct MemTask {
    record: TaskRecord,
    transitions: Vec<Transition>,
    /// The attempts' log lines, in the order they were reported.
    logs: Vec<crate::logs::AttemptLog>,
}

impl Inner {
    /// Runs `op` on task `id` and appends the transitions it recorded to the task's trail (and
    /// the log lines of the attempts it reported to the task's logs).
    fn with_task<T>(
        &mut self,
        id: TaskId,
        op: impl FnOnce(&mut TaskRecord, &mut Queues, &mut Changes) -> Result<T>,
    ) -> Result<(T, Changes)> {
        let task = self.tasks.get_mut(&id).ok_or(Error::TaskNotFound(id))?;
        let mut changes = Changes::default();
        let out = op(&mut task.record, &mut self.queues, &mut changes);
        task.keep(&changes.transitions, &mut self.outbox);
        task.logs.append(&mut changes.logs);
        Ok((out?, changes))
    }

    /// Gives back the steps whose lease ran out, then makes due retries claimable.
    fn reclaim_and_promote(&mut self, now: Timestamp, changes: &mut Changes) {
        while let Some(due) = self.queues.leases.first().copied().filter(|d| d.at <= now) {
            self.queues.leases.pop_first();
            if let Some(task) = self.tasks.get_mut(&due.step.task) {
                let mark = changes.transitions.len();
                task.record.expire_lease(
                    due.step.index,
                    due.attempt,
                    now,
                    &mut self.queues,
                    changes,
                );
                task.keep(&changes.transitions[mark..], &mut self.outbox);
            }
        }
        while let Some((at, id)) = self
            .queues
            .deadlines
            .first()
            .copied()
            .filter(|d| d.0 <= now)
        {
            self.queues.deadlines.remove(&(at, id));
            if let Some(task) = self.tasks.get_mut(&id) {
                let mark = changes.transitions.len();
                task.record.expire_deadline(now, &mut self.queues, changes);
                task.keep(&changes.transitions[mark..], &mut self.outbox);
            }
        }
        while let Some(due) = self.queues.retries.first().copied().filter(|d| d.at <= now) {
            self.queues.retries.pop_first();
            if let Some(task) = self.tasks.get_mut(&due.step.task) {
                let mark = changes.transitions.len();
                task.record
                    .retry_due(due.step.index, due.attempt, now, &mut self.queues, changes);
                task.keep(&changes.transitions[mark..], &mut self.outbox);
            }
        }
    }
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
        found.ok_or_else(|| {
            Error::template_not_found(namespace, name, version.map(|v| v.to_string()))
        })
    }

    async fn templates(&self) -> Result<Vec<crate::view::TemplateView>> {
        let inner = self.inner.lock();
        Ok(crate::view::TemplateView::listing(
            inner.templates.values().flat_map(BTreeMap::values),
        ))
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
            .ok_or_else(|| Error::template_not_found(namespace, name, Some(version.to_string())))
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
        let mut changes = Changes::default();
        let Inner {
            tasks,
            queues,
            idempotency,
            keyed,
            outbox,
            ..
        } = &mut *inner;
        let record = TaskRecord::create(id, graph, new, now, queues, &mut changes);
        if let Some(gates) = &record.gates {
            let mut slots: Vec<Slot> = gates
                .slots()
                .filter(|s| !matches!(s, Slot::Rate(_)))
                .collect();
            slots.sort();
            slots.dedup();
            for slot in slots {
                keyed.entry(slot).or_default().push(id);
            }
        }
        let mut task = MemTask {
            record,
            transitions: Vec::new(),
            logs: Vec::new(),
        };
        task.keep(&changes.transitions, outbox);
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
        now: Now<'_>,
    ) -> Result<(Vec<ClaimedStep>, Changes)> {
        let mut inner = self.inner.lock();
        let now = now();
        let mut changes = Changes::default();
        // Reclaim first, so that a step whose lease ran out and whose backoff has already
        // elapsed (e.g. zero) is handed out by this very claim.
        inner.reclaim_and_promote(now, &mut changes);
        let mut room = Room::new(now.timestamp_millis());
        let mut counted = HashSet::new();
        // Steps whose keys have no room: back in their queues once the claim is done.
        let mut held_back: Vec<(Arc<str>, ReadyEntry)> = Vec::new();
        let mut failed = None;
        let mut claimed = Vec::with_capacity(request.limit.min(64));
        while claimed.len() < request.limit {
            let Some(handler) = inner.queues.best_queue(request.handlers.as_deref()) else {
                break;
            };
            let Some(entry) = inner
                .queues
                .ready
                .get_mut(&handler)
                .and_then(BinaryHeap::pop)
            else {
                break;
            };
            let Some(task) = inner.tasks.get(&entry.step.task) else {
                continue;
            };
            if !task.record.is_claimable(entry.step.index) {
                continue; // stale: cancelled, paused, resolved or already claimed
            }
            let wants = task.record.wants(entry.step.index);
            if !wants.is_empty() {
                inner.count_into(&mut room, &mut counted, &wants);
                let record = &inner.tasks[&entry.step.task].record;
                if !super::admitted(record, entry.step.index, &mut room, &mut changes) {
                    held_back.push((handler, entry));
                    continue;
                }
            }
            let Inner {
                tasks,
                queues,
                outbox,
                ..
            } = &mut *inner;
            let Some(task) = tasks.get_mut(&entry.step.task) else {
                continue;
            };
            let mark = changes.transitions.len();
            let step = match task.record.claim(
                entry.step.index,
                &request.worker_id,
                now,
                queues,
                &mut changes,
            ) {
                Ok(step) => step,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            task.keep(&changes.transitions[mark..], outbox);
            claimed.push(step);
        }
        // Even when a claim failed: the held-back steps stay queued, the tokens taken count.
        for (handler, entry) in held_back {
            inner.queues.ready.entry(handler).or_default().push(entry);
        }
        for (key, bucket, rate) in &changes.buckets {
            inner.buckets.insert(key.clone(), (*bucket, *rate));
        }
        if let Some(e) = failed {
            return Err(e);
        }
        Ok((claimed, changes))
    }

    async fn report(
        &self,
        step: StepId,
        attempt: u32,
        outcome: Outcome,
        now: Timestamp,
    ) -> Result<Changes> {
        let mut inner = self.inner.lock();
        let ((), changes) = inner.with_task(step.task, |t, q, c| {
            t.report(step, attempt, outcome, now, q, c)
        })?;
        Ok(changes)
    }

    async fn report_many(
        &self,
        reports: Vec<StepReport>,
        now: Timestamp,
    ) -> Result<(Vec<Result<()>>, Changes)> {
        let mut inner = self.inner.lock();
        let mut results = Vec::with_capacity(reports.len());
        let mut changes = Changes::default();
        for r in reports {
            match inner.with_task(r.step.task, |t, q, c| t.report_logged(r, now, q, c)) {
                Ok(((), c)) => {
                    changes.extend(c);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        Ok((results, changes))
    }

    async fn release(&self, step: StepId, attempt: u32, now: Timestamp) -> Result<Changes> {
        let mut inner = self.inner.lock();
        let ((), changes) =
            inner.with_task(step.task, |t, q, c| t.release(step, attempt, now, q, c))?;
        Ok(changes)
    }

    async fn heartbeat(&self, step: StepId, attempt: u32, now: Timestamp) -> Result<Timestamp> {
        let mut inner = self.inner.lock();
        let (expires, _) =
            inner.with_task(step.task, |t, q, _| t.heartbeat(step, attempt, now, q))?;
        Ok(expires)
    }

    async fn reclaim_expired(&self, now: Timestamp) -> Result<Changes> {
        let mut changes = Changes::default();
        self.inner.lock().reclaim_and_promote(now, &mut changes);
        Ok(changes)
    }

    async fn cancel_task(&self, id: TaskId, now: Timestamp) -> Result<Changes> {
        let mut inner = self.inner.lock();
        Ok(inner.with_task(id, |t, q, c| t.cancel(now, q, c))?.1)
    }

    async fn pause_task(&self, id: TaskId, now: Timestamp) -> Result<Changes> {
        let mut inner = self.inner.lock();
        Ok(inner.with_task(id, |t, _, c| t.pause(now, c))?.1)
    }

    async fn resume_task(&self, id: TaskId, now: Timestamp) -> Result<Changes> {
        let mut inner = self.inner.lock();
        Ok(inner.with_task(id, |t, q, c| t.resume(now, q, c))?.1)
    }

    async fn retry_task(&self, id: TaskId, now: Timestamp) -> Result<Changes> {
        let mut inner = self.inner.lock();
        Ok(inner
            .with_task(id, |t, q, c| t.retry(now, q, c).map(|()| t.rearm(q)))?
            .1)
    }

    async fn resolve_step(&self, step: StepId, result: Value, now: Timestamp) -> Result<Changes> {
        let mut inner = self.inner.lock();
        Ok(inner
            .with_task(step.task, |t, q, c| {
                t.resolve(step, result, now, q, c).map(|()| t.rearm(q))
            })?
            .1)
    }

    async fn settle_children(
        &self,
        step: StepId,
        children: &[TaskId],
        settled: Settled,
        now: Timestamp,
    ) -> Result<Changes> {
        let mut inner = self.inner.lock();
        Ok(inner
            .with_task(step.task, |t, q, c| {
                t.settle_children(step, children, settled, now, q, c)
            })?
            .1)
    }

    async fn purge(&self, finished_before: Timestamp, statuses: &[TaskState]) -> Result<u64> {
        let mut inner = self.inner.lock();
        // A child whose parent still runs is kept: its parent step still reads it.
        let parent_runs = |r: &TaskRecord| {
            r.parent.as_ref().is_some_and(|p| {
                inner
                    .tasks
                    .get(&p.task_id)
                    .is_some_and(|t| !t.record.status.is_finished())
            })
        };
        let doomed: Vec<TaskId> = inner
            .tasks
            .values()
            .map(|t| &t.record)
            .filter(|r| statuses.contains(&r.status) && r.status.is_finished())
            .filter(|r| r.completed_at.is_some_and(|at| at < finished_before))
            .filter(|r| !parent_runs(r))
            .map(|r| r.id)
            .collect();
        for id in &doomed {
            inner.tasks.remove(id);
        }
        let gone: std::collections::HashSet<TaskId> = doomed.iter().copied().collect();
        inner.idempotency.retain(|_, id| !gone.contains(id));
        inner.outbox.retain(|_, d| !gone.contains(&d.new.task_id));
        Ok(doomed.len() as u64)
    }

    async fn save_schedule(
        &self,
        spec: &crate::schedule::ScheduleSpec,
        next_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<()> {
        let mut inner = self.inner.lock();
        let earlier = inner.schedules.get(&spec.name);
        let view = crate::schedule::ScheduleView {
            spec: spec.clone(),
            // The same spec again keeps its next tick (the ticks missed meanwhile are made).
            next_at: match earlier {
                Some(e) if e.spec == *spec => e.next_at,
                _ => next_at,
            },
            // Kept, as the SQL stores keep it: overlap still sees the last tick's task.
            last_task: earlier.and_then(|s| s.last_task),
            created_at: earlier.map_or(now, |s| s.created_at),
        };
        inner.schedules.insert(spec.name.clone(), view);
        Ok(())
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        Ok(self.inner.lock().schedules.remove(name).is_some())
    }

    async fn schedules(
        &self,
        due_by: Option<Timestamp>,
    ) -> Result<Vec<crate::schedule::ScheduleView>> {
        let inner = self.inner.lock();
        Ok(inner
            .schedules
            .values()
            .filter(|s| due_by.is_none_or(|by| s.next_at.is_some_and(|at| at <= by)))
            .cloned()
            .collect())
    }

    async fn advance_schedule(
        &self,
        name: &str,
        from: Timestamp,
        to: Option<Timestamp>,
        last_task: Option<TaskId>,
        _now: Timestamp,
    ) -> Result<bool> {
        let mut inner = self.inner.lock();
        match inner.schedules.get_mut(name) {
            Some(s) if s.next_at == Some(from) => {
                s.next_at = to;
                if last_task.is_some() {
                    s.last_task = last_task;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn task_states(&self, ids: &[TaskId]) -> Result<Vec<(TaskId, TaskState)>> {
        let inner = self.inner.lock();
        let mut states: Vec<(TaskId, TaskState)> = ids
            .iter()
            .filter_map(|id| inner.tasks.get(id).map(|t| (*id, t.record.status)))
            .collect();
        states.sort_by_key(|s| s.0);
        states.dedup_by_key(|s| s.0);
        Ok(states)
    }

    async fn waiting_for_children(
        &self,
        after: Option<StepId>,
        limit: usize,
    ) -> Result<Vec<StepId>> {
        let inner = self.inner.lock();
        let mut steps: Vec<StepId> = inner
            .tasks
            .values()
            .filter(|t| !t.record.status.is_finished())
            .flat_map(|t| {
                let r = &t.record;
                (0..r.states.len() as u32)
                    .filter(|&i| r.states[i as usize] == StepState::WaitingForChildren)
                    .map(|index| StepId { task: r.id, index })
            })
            .filter(|s| after.is_none_or(|a| (s.task, s.index) > (a.task, a.index)))
            .collect();
        steps.sort_by_key(|s| (s.task, s.index));
        steps.truncate(limit);
        Ok(steps)
    }

    async fn open_children(
        &self,
        after: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<(TaskId, ParentLink)>> {
        let inner = self.inner.lock();
        let mut open: Vec<(TaskId, ParentLink)> = inner
            .tasks
            .values()
            .filter(|t| !t.record.status.is_finished() && after.is_none_or(|a| t.record.id > a))
            .filter_map(|t| Some((t.record.id, t.record.parent.clone()?)))
            .collect();
        open.sort_by_key(|c| c.0);
        open.truncate(limit);
        Ok(open)
    }

    async fn step_id(&self, task: TaskId, name: &str) -> Result<StepId> {
        let inner = self.inner.lock();
        let rec = inner.tasks.get(&task).ok_or(Error::TaskNotFound(task))?;
        rec.record.step_named(name)
    }

    async fn task(&self, id: TaskId) -> Result<TaskView> {
        let inner = self.inner.lock();
        inner
            .tasks
            .get(&id)
            .map(|t| t.record.view())
            .ok_or(Error::TaskNotFound(id))
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskView>> {
        let inner = self.inner.lock();
        let mut matching: Vec<&TaskRecord> = inner
            .tasks
            .values()
            .map(|t| &t.record)
            .filter(|t| filter.status.is_none_or(|s| s == t.status))
            .filter(|t| {
                filter
                    .namespace
                    .as_deref()
                    .is_none_or(|n| n == &*t.of.namespace)
            })
            .filter(|t| filter.name.as_deref().is_none_or(|n| n == &*t.of.name))
            .collect();
        matching.sort_by_key(|t| std::cmp::Reverse(t.id));
        Ok(matching
            .into_iter()
            .take(filter.limit)
            .map(TaskRecord::view)
            .collect())
    }

    async fn transitions(&self, id: TaskId) -> Result<Vec<TransitionView>> {
        let inner = self.inner.lock();
        let task = inner.tasks.get(&id).ok_or(Error::TaskNotFound(id))?;
        Ok(task.transitions.iter().map(TransitionView::from).collect())
    }

    async fn logs(&self, id: TaskId, step: Option<u32>) -> Result<Vec<crate::logs::LogView>> {
        let inner = self.inner.lock();
        let task = inner.tasks.get(&id).ok_or(Error::TaskNotFound(id))?;
        let mut logs: Vec<&crate::logs::AttemptLog> = task
            .logs
            .iter()
            .filter(|l| step.is_none_or(|s| s == l.step.index))
            .collect();
        logs.sort_by_key(|l| (l.step.index, l.attempt));
        Ok(logs
            .into_iter()
            .flat_map(|l| {
                let name = task.record.step_name(l.step.index).to_string();
                l.lines.iter().map(move |line| crate::logs::LogView {
                    step: name.clone(),
                    step_index: l.step.index,
                    attempt: l.attempt,
                    at: line.at,
                    level: line.level,
                    message: line.message.clone(),
                })
            })
            .collect())
    }

    async fn claim_deliveries(
        &self,
        _owner: &str,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<crate::webhooks::Delivery>> {
        let mut inner = self.inner.lock();
        let mut due: Vec<&mut MemDelivery> = inner
            .outbox
            .values_mut()
            .filter(|d| matches!(d.status, "pending" | "delivering") && d.due <= now)
            .collect();
        due.sort_by_key(|d| d.due);
        Ok(due
            .into_iter()
            .take(limit)
            .map(|d| {
                d.status = "delivering";
                d.attempts += 1;
                let lease = i64::try_from(d.new.hook.lease_ms()).unwrap_or(i64::MAX);
                d.due = crate::clock::add_signed_ms(now, lease);
                crate::webhooks::Delivery {
                    id: d.new.id.clone(),
                    event: d.new.event.to_owned(),
                    hook: (*d.new.hook).clone(),
                    body: d.new.body.clone(),
                    attempt: d.attempts,
                }
            })
            .collect())
    }

    async fn settle_delivery(
        &self,
        id: &str,
        attempt: u32,
        settled: &crate::webhooks::Settlement,
        now: Timestamp,
    ) -> Result<bool> {
        let mut inner = self.inner.lock();
        let Some(d) = inner
            .outbox
            .get_mut(id)
            .filter(|d| d.status == "delivering" && d.attempts == attempt)
        else {
            return Ok(false);
        };
        let row = settled.row(now);
        d.status = row.status;
        d.attempts -= u32::from(row.uncount);
        d.due = row.next_attempt_at.unwrap_or(d.due);
        d.last_error = row.error.map(str::to_owned);
        d.delivered_at = row.delivered_at;
        Ok(true)
    }

    async fn webhook_deliveries(&self, task: TaskId) -> Result<Vec<crate::webhooks::DeliveryView>> {
        let inner = self.inner.lock();
        if !inner.tasks.contains_key(&task) {
            return Err(Error::TaskNotFound(task));
        }
        let mut views: Vec<crate::webhooks::DeliveryView> = inner
            .outbox
            .values()
            .filter(|d| d.new.task_id == task)
            .map(|d| crate::webhooks::DeliveryView {
                id: d.new.id.clone(),
                task_id: task,
                event: d.new.event.to_owned(),
                url: d.new.hook.url.clone(),
                status: d.status.to_owned(),
                attempts: d.attempts,
                last_error: d.last_error.clone(),
                created_at: d.new.at,
                delivered_at: d.delivered_at,
            })
            .collect();
        views.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(views)
    }

    async fn stats(&self) -> Result<crate::view::Stats> {
        let inner = self.inner.lock();
        let mut stats = crate::view::Stats::default();
        let mut durations: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for task in inner.tasks.values() {
            let t = &task.record;
            *stats.tasks.entry(t.status.as_str().to_owned()).or_default() += 1;
            for (i, (state, step)) in t.states.iter().zip(&t.steps).enumerate() {
                *stats.steps.entry(state.as_str().to_owned()).or_default() += 1;
                stats.recovered += u64::from(*state == StepState::Complete && step.attempts > 1);
                if matches!(state, StepState::Complete | StepState::Error) {
                    if let (Some(start), Some(end)) = (step.started_at, step.completed_at) {
                        let ms = (end - start).num_milliseconds().max(0) as u64;
                        durations
                            .entry(&t.spec(i as u32).handler)
                            .or_default()
                            .push(ms);
                    }
                }
            }
            for tr in &task.transitions {
                if let crate::state::Change::Step { event, .. } = tr.change {
                    stats.retries += u64::from(event == crate::state::StepEvent::ScheduleRetry);
                    stats.lease_expiries +=
                        u64::from(event == crate::state::StepEvent::LeaseExpired);
                }
            }
        }
        stats.handlers = durations
            .into_iter()
            .filter_map(|(h, d)| crate::view::HandlerStats::of(h.to_owned(), d))
            .collect();
        Ok(stats)
    }

    async fn ready_by_handler(&self, _now: Timestamp) -> Result<Vec<(String, u64)>> {
        let mut inner = self.inner.lock();
        let Inner { tasks, queues, .. } = &mut *inner;
        let mut ready: Vec<(String, u64)> = exact_ready(tasks, queues, None)
            .filter(|&(_, n)| n > 0)
            .map(|(name, n)| (name.to_string(), n as u64))
            .collect();
        ready.sort();
        Ok(ready)
    }

    async fn work_status(
        &self,
        handlers: Option<&[Arc<str>]>,
        now: Timestamp,
    ) -> Result<WorkStatus> {
        let mut inner = self.inner.lock();
        let Inner {
            tasks,
            queues,
            buckets,
            ..
        } = &mut *inner;
        // When an empty bucket has its next token (a claim may take a step it held back).
        let next_token = buckets
            .values()
            .filter(|(b, _)| b.tokens < 1.0)
            .map(|(b, rate)| b.next_token_ms(rate))
            .filter(|&at| at > now.timestamp_millis())
            .min()
            .and_then(chrono::DateTime::from_timestamp_millis);
        let ready = exact_ready(tasks, queues, handlers)
            .map(|(_, n)| n as u64)
            .sum();
        Ok(WorkStatus {
            ready,
            running: queues.leases.len() as u64,
            waiting: queues.retries.len() as u64,
            next_due: [queues.retries.first(), queues.leases.first()]
                .into_iter()
                .flatten()
                .map(|d| d.at)
                .chain(queues.deadlines.first().map(|d| d.0))
                .chain(next_token)
                .min(),
        })
    }
}
