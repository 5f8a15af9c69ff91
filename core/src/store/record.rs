//! The task aggregate: one task with its steps, and every store operation on it as a method.
//!
//! The methods apply the pure rules of [`crate::state`], [`crate::readiness`] and
//! [`crate::retry`] and record each transition in the [`Changes`]; they tell the store what to
//! (re)schedule through the [`Schedule`] trait. A store keeps records in memory or loads one,
//! calls a method, and persists what changed — so every backend behaves alike.

use std::sync::Arc;

use serde_json::Value;

use super::{Changes, ClaimedStep, Decision, Knock, NewTask, StepFailure, StepInputs};
use crate::clock::{add_ms, Timestamp};
use crate::error::{Error, Result};
use crate::ids::{StepId, TaskId};
use crate::readiness::{self, Choices, Counters, Outcome, Release};
use crate::retry::{FailureKind, RetryDecision};
use crate::state::{Change, StepEvent, StepState, TaskEvent, TaskState, Transition};
use crate::template::StepKind;
use crate::template::TaskGraph;
use crate::view::{DependencyView, Progress, StepView, TaskView};

/// The rendered keys of a task of `graph` with `context` (`None` when it has none; a context
/// that cannot render them was refused when the task was created).
pub(crate) fn gates_of(graph: &TaskGraph, context: &Value) -> Option<Arc<crate::gate::Gates>> {
    graph.gates(context).ok().flatten().map(Arc::new)
}

/// What a store must (re)schedule after an operation. Stores whose queues are columns (SQL)
/// ignore what they do not need.
pub(crate) trait Schedule {
    /// Step `index` of `task` became claimable.
    fn ready(&mut self, _task: &TaskRecord, _index: u32) {}
    /// A lease was taken (or extended) until `expires`.
    fn lease_taken(&mut self, _step: StepId, _attempt: u32, _expires: Timestamp) {}
    /// A lease that ran until `expires` is gone.
    fn lease_released(&mut self, _step: StepId, _attempt: u32, _expires: Timestamp) {}
    /// A retry was scheduled at `at`.
    fn retry_scheduled(&mut self, _step: StepId, _attempt: u32, _at: Timestamp) {}
    /// A scheduled retry at `at` was called off.
    fn retry_cancelled(&mut self, _step: StepId, _attempt: u32, _at: Timestamp) {}
    /// The task's deadline is `at`.
    fn deadline_set(&mut self, _task: TaskId, _at: Timestamp) {}
}

/// One task and its steps.
#[derive(Debug, Clone)]
pub(crate) struct TaskRecord {
    pub id: TaskId,
    pub graph: Arc<TaskGraph>,
    /// Its template's namespace and name, its creation time and its trace (what its
    /// transitions carry).
    pub of: Arc<crate::state::TaskOf>,
    pub context: Arc<Value>,
    pub status: TaskState,
    pub priority: i32,
    pub idempotency_key: Option<String>,
    /// The step that started this task as a child, if one did.
    pub parent: Option<super::ParentLink>,
    /// When the task fails unless finished (its template's `deadline_ms` after its start);
    /// cleared when it finishes.
    pub deadline_at: Option<Timestamp>,
    /// Its concurrency and rate keys, rendered from its context (`None` when its template has
    /// none).
    pub gates: Option<Arc<crate::gate::Gates>>,
    /// Whether it holds its template-level concurrency key.
    pub key_hold: KeyHold,
    pub states: Vec<StepState>,
    pub counters: Vec<Counters>,
    /// The children each decision step that completed chose.
    pub choices: Choices,
    /// The instances of batch worker steps, one per slice: step `graph.len() + k` is
    /// `instances[k]` (the vectors of states, counters and steps hold them after the
    /// template's steps).
    pub instances: Vec<Instance>,
    /// Each batch worker step that has instances, with the range of their indexes (a batch's
    /// instances are made together): see [`TaskRecord::index_batches`].
    pub batches: Vec<(u32, std::ops::Range<u32>)>,
    pub steps: Vec<StepRecord>,
    /// Steps not finished.
    pub unfinished: u32,
    pub updated_at: Timestamp,
    pub completed_at: Option<Timestamp>,
}

/// Whether a task holds its template-level concurrency key (`concurrency` beside `steps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum KeyHold {
    /// It does not: the next claim of one of its steps needs room in the key (and takes it).
    /// A task before its first claim, and one that finished (an operator may reopen it).
    #[default]
    None,
    /// It does, and counts as one of the key's holders: from the claim that found it room
    /// until it finishes (paused, it keeps it).
    Held,
    /// It runs under an ancestor's hold of the same key (a child task whose parent holds it):
    /// it takes no slot of its own, so that a parent waiting for its children never waits for
    /// itself.
    Inherited,
}

impl KeyHold {
    /// The value of the `key_hold` column.
    pub fn code(self) -> i64 {
        match self {
            KeyHold::None => 0,
            KeyHold::Held => 1,
            KeyHold::Inherited => 2,
        }
    }

    /// The hold a `key_hold` column says (`None` for a value it never holds).
    pub fn of_code(code: i64) -> Option<KeyHold> {
        match code {
            0 => Some(KeyHold::None),
            1 => Some(KeyHold::Held),
            2 => Some(KeyHold::Inherited),
            _ => None,
        }
    }
}

/// One instance of a `batch_worker` step: slice `slice` of its batch. Its `unfinished_parents`
/// counter is 1 while it waits for a slot (the batch's `parallelism`), 0 once released.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Instance {
    /// The `batch_worker` step it is an instance of.
    pub of: u32,
    /// `worker[slice]`.
    pub name: Arc<str>,
    /// `{index, start, end}`, and `items` for a batch of items: the handler's `step.batch`.
    pub batch: Arc<Value>,
}

/// One step's data besides its state and counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct StepRecord {
    pub attempts: u32,
    pub max_attempts: u32,
    pub next_attempt_at: Option<Timestamp>,
    pub lease: Option<(Arc<str>, Timestamp)>,
    pub result: Option<Arc<Value>>,
    pub error: Option<String>,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    /// When it last became claimable.
    pub ready_at: Option<Timestamp>,
    /// The child tasks its handler started, in order (kept once it finished, for the views).
    pub children: Option<Arc<[TaskId]>>,
}

impl TaskRecord {
    /// A new task with every step pending; its root steps are ready.
    pub fn create(
        id: TaskId,
        graph: Arc<TaskGraph>,
        new: &NewTask,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) -> TaskRecord {
        let n = graph.len();
        let mut task = TaskRecord {
            id,
            of: Arc::new(crate::state::TaskOf {
                namespace: graph.namespace().into(),
                name: graph.name().into(),
                created_at: now,
                // Checked by the engine: one it refused never gets here.
                trace: crate::trace::TaskTrace::new(new.traceparent.as_deref()).ok(),
                webhooks: graph.webhooks().clone(),
            }),
            context: Arc::new(new.context.clone()),
            status: TaskState::Pending,
            priority: new.priority,
            idempotency_key: new.idempotency_key.clone(),
            parent: new.parent.clone(),
            deadline_at: None,
            gates: gates_of(&graph, &new.context),
            key_hold: KeyHold::None,
            states: vec![StepState::Pending; n],
            counters: readiness::initial_counters(&graph),
            choices: Choices::default(),
            instances: Vec::new(),
            batches: Vec::new(),
            steps: graph
                .steps()
                .iter()
                .map(|s| StepRecord {
                    max_attempts: s.retry.max_attempts,
                    ..StepRecord::default()
                })
                .collect(),
            unfinished: n as u32,
            updated_at: now,
            completed_at: None,
            graph,
        };
        let under = |key: &Arc<str>| new.parent.as_ref().is_some_and(|p| p.holds(key));
        if task.task_key().is_some_and(under) {
            task.key_hold = KeyHold::Inherited;
        }
        // A task to run later: its roots wait for their start as for a parent.
        let start = new.run_at.filter(|&at| at > now);
        let reason = start.map(|at| format!("runs at {}", at.to_rfc3339()));
        task.record(
            Transition::task(id, None, TaskState::Pending, TaskEvent::Create, now),
            reason,
            changes,
        );
        if let Some(ms) = task.graph.template().deadline_ms {
            let at = add_ms(start.unwrap_or(now), ms);
            task.deadline_at = Some(at);
            schedule.deadline_set(id, at);
        }
        let roots: Vec<u32> = task.graph.roots().collect();
        match start {
            None => task.queue_ready(&roots, now, schedule, changes),
            Some(at) => {
                for r in roots {
                    task.steps[r as usize].next_attempt_at = Some(at);
                    task.counters[r as usize].unfinished_parents += 1;
                    schedule.retry_scheduled(task.step_id(r), 0, at);
                }
            }
        }
        task
    }

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
        if from == StepState::WaitingForChildren && to != StepState::Complete {
            if let Some(children) = &self.steps[i].children {
                changes.knocks.push(Knock::Orphaned(children.clone()));
            }
        }
        let t = Transition::step(
            self.id,
            index,
            self.step_name(index),
            (from, to),
            event,
            self.steps[i].attempts,
            now,
        );
        self.record(t, reason, changes);
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
        self.completed_at = to.is_finished().then_some(now);
        // A finished task holds nothing; reopened, it asks for room again (a child too: its
        // parent may have moved on).
        if to.is_finished() && self.key_hold != KeyHold::None {
            if let (KeyHold::Held, Some(key)) = (self.key_hold, self.task_key()) {
                changes.let_go.push(crate::gate::Slot::Task(key.clone()));
                changes.freed = true;
            }
            self.key_hold = KeyHold::None;
        }
        // A failed task may be reopened (retry, resolve): its deadline stands, unless it is
        // what failed it.
        if to.is_finished() && (to != TaskState::Error || event == TaskEvent::DeadlineExceeded) {
            self.deadline_at = None;
        }
        if let Some(parent) = self.parent.as_ref().filter(|_| to.is_finished()) {
            changes.knocks.push(Knock::ChildEnded(parent.step_id()));
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
        t.task = Some(self.of.clone());
        if let Change::Step {
            index, from, event, ..
        } = t.change
        {
            let step = &self.steps[index as usize];
            t.since = match (event, from) {
                (StepEvent::Claim, _) => step.ready_at,
                (_, StepState::InProgress) => step.started_at,
                _ => None,
            };
        }
        if self.gates.is_some() {
            // A holder of a key let it go: the steps it held back may start now.
            changes.freed |= self.lets_go(&t).is_some();
        }
        changes.transitions.push(t);
    }

    fn step_id(&self, index: u32) -> StepId {
        StepId {
            task: self.id,
            index,
        }
    }

    /// The index of `step`, which must belong to this task.
    pub fn step_index(&self, step: StepId) -> Result<u32> {
        if step.task == self.id && (step.index as usize) < self.states.len() {
            Ok(step.index)
        } else {
            Err(Error::StepNotFound {
                task: self.id,
                step: step.index.to_string(),
            })
        }
    }

    /// The step named `name` (a template step, or an instance such as `worker[3]`).
    pub fn step_named(&self, name: &str) -> Result<StepId> {
        self.graph
            .index_of(name)
            .or_else(|| {
                let k = self.instances.iter().position(|i| &*i.name == name)?;
                Some(self.first_instance() + k as u32)
            })
            .map(|index| self.step_id(index))
            .ok_or_else(|| Error::StepNotFound {
                task: self.id,
                step: name.to_owned(),
            })
    }

    /// The index of the first instance (the template's step count).
    fn first_instance(&self) -> u32 {
        self.graph.len() as u32
    }

    /// The instance step `index` is, if it is one.
    pub fn instance(&self, index: u32) -> Option<&Instance> {
        index
            .checked_sub(self.first_instance())
            .and_then(|k| self.instances.get(k as usize))
    }

    /// The template step of step `index`: itself, or the worker step an instance belongs to.
    pub fn template_step(&self, index: u32) -> u32 {
        self.instance(index).map_or(index, |i| i.of)
    }

    /// The template's definition of step `index` (of its worker step, for an instance).
    pub fn spec(&self, index: u32) -> &crate::template::StepSpec {
        self.graph.step(self.template_step(index))
    }

    /// Step `index`'s rendered keys: its template step's, for a step a claim hands out (a
    /// `batch_worker` step itself is never claimed and holds nothing: its instances do).
    pub fn step_gates(&self, index: u32) -> Option<&crate::gate::StepGates> {
        let gates = self.gates.as_deref()?;
        if self.instance(index).is_none()
            && self.graph.step(index).kind == crate::template::StepKind::BatchWorker
        {
            return None;
        }
        gates.steps.get(self.template_step(index) as usize)
    }

    /// What claiming step `index` needs room in (nothing when the task has no keys): its
    /// template step's concurrency and rate keys, and the task's own key unless it holds it
    /// (or runs under its parent's hold of it).
    pub fn wants(&self, index: u32) -> Vec<crate::gate::Want> {
        match &self.gates {
            None => Vec::new(),
            Some(g) => g.wants(self.template_step(index), self.key_hold != KeyHold::None),
        }
    }

    /// Its template-level concurrency key, rendered.
    pub fn task_key(&self) -> Option<&Arc<str>> {
        self.gates.as_deref()?.task.as_ref().map(|(k, _)| k)
    }

    /// The concurrency keys transition `t` (of this task) lets go of: a step's key when it
    /// leaves `in_progress`. (A task's key is let go of by the task only when it held it: see
    /// [`super::Changes::let_go`].)
    pub fn lets_go(&self, t: &Transition) -> Option<crate::gate::Slot> {
        use crate::state::Change;
        match t.change {
            Change::Step {
                index,
                from: StepState::InProgress,
                ..
            } => self
                .step_gates(index)
                .and_then(|s| s.concurrency.as_ref())
                .map(|(k, _)| crate::gate::Slot::Step(k.clone())),
            _ => None,
        }
    }

    /// Step `index`'s name (`worker[slice]` for an instance).
    pub fn step_name(&self, index: u32) -> &Arc<str> {
        match self.instance(index) {
            Some(i) => &i.name,
            None => &self.graph.step(index).name,
        }
    }

    /// The indexes of the instances of batch worker step `worker` (contiguous: a batch's
    /// instances are made together).
    fn slices_of(&self, worker: u32) -> std::ops::Range<u32> {
        let none = self.first_instance()..self.first_instance();
        self.batches
            .iter()
            .find(|(w, _)| *w == worker)
            .map_or(none, |(_, range)| range.clone())
    }

    /// Rebuilds [`TaskRecord::batches`] from the instances (after loading them).
    pub fn index_batches(&mut self) {
        self.batches.clear();
        let first = self.first_instance();
        for (k, instance) in self.instances.iter().enumerate() {
            let index = first + k as u32;
            match self.batches.last_mut() {
                Some((w, range)) if *w == instance.of => range.end = index + 1,
                _ => self.batches.push((instance.of, index..index + 1)),
            }
        }
    }

    /// Whether step `index` may be claimed now.
    pub fn is_claimable(&self, index: u32) -> bool {
        let i = index as usize;
        self.status.is_runnable()
            && self.states[i] == StepState::Pending
            && self.counters[i].is_clear()
    }

    /// The claim `(step, attempt)` is still held: the step runs that very attempt. The attempt
    /// number is the fence: a report from the only holder counts even after its lease ran out,
    /// as long as nobody reclaimed the step meanwhile (a reclaim moves the step on), and the
    /// task's deadline has not passed (whether or not a scan has failed it yet).
    fn check_claim(&self, step: StepId, attempt: u32, now: Timestamp) -> Result<u32> {
        let index = self.step_index(step)?;
        let i = index as usize;
        let held = self.states[i] == StepState::InProgress
            && self.steps[i].attempts == attempt
            && self.steps[i].lease.is_some()
            && self.deadline_at.is_none_or(|at| at > now);
        if held {
            Ok(index)
        } else {
            Err(Error::ClaimLost { step, attempt })
        }
    }

    fn release_lease(&mut self, index: u32, schedule: &mut impl Schedule) {
        let i = index as usize;
        if let Some((_, expires)) = self.steps[i].lease.take() {
            schedule.lease_released(self.step_id(index), self.steps[i].attempts, expires);
        }
    }

    fn cancel_retry(&mut self, index: u32, schedule: &mut impl Schedule) {
        let i = index as usize;
        if let Some(at) = self.steps[i].next_attempt_at.take() {
            schedule.retry_cancelled(self.step_id(index), self.steps[i].attempts, at);
        }
    }

    /// Claims claimable step `index` for `worker` with a lease of the step's `lease_ms`.
    pub fn claim(
        &mut self,
        index: u32,
        worker: &Arc<str>,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) -> Result<ClaimedStep> {
        let i = index as usize;
        if !self.is_claimable(index) {
            return Err(Error::InvalidTransition(crate::state::InvalidTransition {
                entity: "step",
                from: self.states[i].as_str(),
                event: StepEvent::Claim.as_str(),
            }));
        }
        // The task starts before its first step is claimed, in the audit trail and in the
        // published events alike.
        if self.status == TaskState::Pending {
            self.task_to(TaskEvent::Start, now, None, changes)?;
        }
        // The claim was admitted: the task's key had room, and is the task's until it ends.
        if self.key_hold == KeyHold::None && self.task_key().is_some() {
            self.key_hold = KeyHold::Held;
        }
        self.steps[i].attempts += 1;
        self.step_to(index, StepEvent::Claim, now, None, changes)?;
        let expires = add_ms(now, self.spec(index).lease_ms);
        let rec = &mut self.steps[i];
        rec.lease = Some((worker.clone(), expires));
        rec.started_at = Some(now);
        rec.completed_at = None;
        let (attempt, max_attempts) = (rec.attempts, rec.max_attempts);
        schedule.lease_taken(self.step_id(index), attempt, expires);
        // An instance gets its worker step's inputs. Parents not chosen (a convergence's
        // branches not taken) hand nothing in.
        let template = self.template_step(index);
        let inputs = self
            .graph
            .parents(template)
            .iter()
            .filter(|e| {
                let p = e.step as usize;
                Outcome::of(self.states[p], self.counters[p])
                    .map(|o| o.toward(template, self.choices.chosen(e.step)))
                    != Some(Outcome::NotChosen)
            })
            .map(|e| (self.graph.step(e.step).name.clone(), self.output_of(e.step)))
            .collect();
        let spec = self.spec(index);
        Ok(ClaimedStep {
            step_id: self.step_id(index),
            name: self.step_name(index).clone(),
            handler: spec.handler.clone(),
            namespace: self.of.namespace.clone(),
            task_name: self.of.name.clone(),
            attempt,
            max_attempts,
            context: self.context.clone(),
            inputs: StepInputs(inputs),
            lease_expires_at: expires,
            timeout_ms: spec.timeout_ms,
            lease_ms: spec.lease_ms,
            config: spec.config.clone(),
            events: spec.events.clone(),
            kind: spec.kind,
            dependents: spec.dependents.clone(),
            batch: self.instance(index).map(|i| i.batch.clone()),
            trace: self.of.trace,
            logs: Default::default(),
        })
    }

    /// What template step `index` hands its children: its result, or, for a batch worker step
    /// that completed, the list of its instances' results in slice order (`null` for a slice
    /// that did not succeed).
    fn output_of(&self, index: u32) -> Arc<Value> {
        let i = index as usize;
        if self.spec(index).kind == StepKind::BatchWorker && self.states[i] == StepState::Complete {
            let results = self
                .slices_of(index)
                .map(|s| {
                    let rec = &self.steps[s as usize];
                    match (self.states[s as usize].is_success(), &rec.result) {
                        (true, Some(r)) => (**r).clone(),
                        _ => Value::Null,
                    }
                })
                .collect();
            return Arc::new(Value::Array(results));
        }
        self.steps[i]
            .result
            .clone()
            .unwrap_or_else(|| Arc::new(Value::Null))
    }

    /// Records report `r` (as [`TaskRecord::report`]) and, when it is accepted, keeps the
    /// attempt's log lines in `changes` for the write.
    pub fn report_logged(
        &mut self,
        r: super::StepReport,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) -> Result<()> {
        self.report(r.step, r.attempt, r.outcome, now, schedule, changes)?;
        if !r.logs.is_empty() {
            changes.logs.push(crate::logs::AttemptLog {
                step: r.step,
                attempt: r.attempt,
                lines: r.logs,
            });
        }
        Ok(())
    }

    /// Records any outcome of a held claim (see [`super::Store::report`]): an outcome the
    /// step's `type` does not allow (a plain result from a decision or batchable step, a
    /// decision or batch from another, a choice of a step that does not depend on it) fails
    /// the step for good.
    pub fn report(
        &mut self,
        step: StepId,
        attempt: u32,
        outcome: super::Outcome,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) -> Result<()> {
        use super::Outcome as O;
        let index = self.check_claim(step, attempt, now)?;
        if let Some(message) = outcome.reported().and_then(|r| self.spec(index).refusal(r)) {
            return self.fail_for_good(step, attempt, message, now, schedule, changes);
        }
        match outcome {
            O::Complete(v) => self.succeed(index, v, None, now, schedule, changes),
            O::Decide(d) => self.decide(index, d, now, schedule, changes),
            O::Batch(b) => self.batch(step, attempt, index, b, now, schedule, changes),
            O::Children(ids) => self.await_children(index, ids, now, schedule, changes),
            O::Spawn(_) => {
                let message = "child tasks are started by the engine, not by a store".to_owned();
                self.fail_for_good(step, attempt, message, now, schedule, changes)
            }
            O::Fail(f) => self.fail(step, attempt, &f, now, schedule, changes),
        }
    }

    /// Held step `index` started the child tasks `children`: it lets go of its lease and
    /// waits for them (none: it completes at once with an empty list).
    fn await_children(
        &mut self,
        index: u32,
        children: Vec<TaskId>,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) -> Result<()> {
        if children.is_empty() {
            let reason = Some("started no child tasks".to_owned());
            return self.succeed(
                index,
                Value::Array(Vec::new()),
                reason,
                now,
                schedule,
                changes,
            );
        }
        self.release_lease(index, schedule);
        let reason = format!("started {} child tasks", children.len());
        self.steps[index as usize].children = Some(children.into());
        self.step_to(index, StepEvent::AwaitChildren, now, Some(reason), changes)?;
        // Its children may all have finished already (they run as soon as they are made).
        changes.knocks.push(Knock::ChildEnded(self.step_id(index)));
        Ok(())
    }

    /// Ends step `step` if it still waits for exactly `children` (see
    /// [`super::Store::settle_children`]): completed with their results, or failed for good.
    pub fn settle_children(
        &mut self,
        step: StepId,
        children: &[TaskId],
        settled: super::Settled,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) -> Result<()> {
        let index = self.step_index(step)?;
        let i = index as usize;
        if self.states[i] != StepState::WaitingForChildren
            || self.steps[i].children.as_deref() != Some(children)
        {
            return Ok(());
        }
        match settled {
            Ok(results) => {
                let reason = Some(format!("{} child tasks completed", results.len()));
                self.succeed(index, Value::Array(results), reason, now, schedule, changes)
            }
            Err(message) => {
                let message = crate::limits::message(message);
                self.record_failure(
                    index,
                    FailureKind::Permanent,
                    message,
                    StepEvent::Fail,
                    now,
                    schedule,
                    changes,
                );
                Ok(())
            }
        }
    }

    /// Records the choice of held decision step `index` (checked by [`TaskRecord::report`]):
    /// the chosen children run, the others are skipped as not chosen.
    fn decide(
        &mut self,
        index: u32,
        decision: Decision,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) -> Result<()> {
        let graph = self.graph.clone();
        // Every name is a dependent's (checked above).
        let chosen = decision.steps.iter().filter_map(|n| graph.index_of(n));
        self.choices.record(index, chosen.collect());
        let reason = match self.choices.chosen(index) {
            Some(chosen) if !chosen.is_empty() => {
                let names: Vec<&str> = chosen.iter().map(|&c| &*graph.step(c).name).collect();
                format!("chose {}", names.join(", "))
            }
            _ => "chose none of its dependents".to_owned(),
        };
        self.succeed(index, decision.result, Some(reason), now, schedule, changes)
    }

    /// Records the batch of held batchable step `index` (checked by [`TaskRecord::report`]):
    /// one instance of its worker step per slice, released (up to the batch's `parallelism`)
    /// once the worker step's other parents allow it. A batch of more than
    /// [`crate::template::MAX_SLICES`] slices fails the step for good.
    #[allow(clippy::too_many_arguments)]
    fn batch(
        &mut self,
        step: StepId,
        attempt: u32,
        index: u32,
        batch: super::Batch,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) -> Result<()> {
        let Some(plan) = self.spec(index).batch else {
            let message = "no batch plan".to_owned();
            return self.fail_for_good(step, attempt, message, now, schedule, changes);
        };
        let slices = match batch_slices(&batch.work, plan.size) {
            Ok(slices) => slices,
            Err(message) => {
                return self.fail_for_good(step, attempt, message, now, schedule, changes)
            }
        };
        let worker = self.graph.step(plan.worker);
        let max_attempts = worker.retry.max_attempts;
        // An operator may have resolved the worker step already: its slices are not wanted.
        let slices = match self.states[plan.worker as usize] {
            StepState::Pending => slices,
            _ => Vec::new(),
        };
        let reason = format!("{} slices of {}", slices.len(), worker.name);
        let first = self.states.len() as u32;
        if !slices.is_empty() {
            let range = first..first + slices.len() as u32;
            self.batches.push((plan.worker, range));
        }
        for (k, slice) in slices.into_iter().enumerate() {
            self.instances.push(Instance {
                of: plan.worker,
                name: format!("{}[{k}]", worker.name).into(),
                batch: Arc::new(slice),
            });
            self.states.push(StepState::Pending);
            // Waiting for a slot until its worker step runs.
            self.counters.push(Counters {
                unfinished_parents: 1,
                ..Counters::default()
            });
            self.steps.push(StepRecord {
                max_attempts,
                ..StepRecord::default()
            });
            self.unfinished += 1;
        }
        self.succeed(index, batch.result, Some(reason), now, schedule, changes)
    }

    /// Step `index`, claimed, completed with `result`.
    fn succeed(
        &mut self,
        index: u32,
        result: Value,
        reason: Option<String>,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) -> Result<()> {
        self.release_lease(index, schedule);
        let i = index as usize;
        self.steps[i].result = Some(Arc::new(result));
        self.steps[i].completed_at = Some(now);
        self.step_to(index, StepEvent::Complete, now, reason, changes)?;
        self.finish_step(index, Outcome::Succeeded, now, schedule, changes);
        Ok(())
    }

    /// A held claim fails for good with `message`.
    fn fail_for_good(
        &mut self,
        step: StepId,
        attempt: u32,
        message: String,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) -> Result<()> {
        tracing::warn!(%step, attempt, %message, "step failed for good");
        let failure = StepFailure {
            message,
            kind: FailureKind::Permanent,
        };
        self.fail(step, attempt, &failure, now, schedule, changes)
    }

    /// Records a failed attempt of a held claim.
    pub fn fail(
        &mut self,
        step: StepId,
        attempt: u32,
        failure: &StepFailure,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) -> Result<()> {
        let index = self.check_claim(step, attempt, now)?;
        self.release_lease(index, schedule);
        let message = failure.message.clone();
        self.record_failure(
            index,
            failure.kind,
            message,
            StepEvent::Fail,
            now,
            schedule,
            changes,
        );
        Ok(())
    }

    /// Extends a held claim's lease; returns the new expiry.
    pub fn heartbeat(
        &mut self,
        step: StepId,
        attempt: u32,
        now: Timestamp,
        schedule: &mut impl Schedule,
    ) -> Result<Timestamp> {
        let index = self.check_claim(step, attempt, now)?;
        let expires = add_ms(now, self.spec(index).lease_ms);
        if let Some((_, exp)) = self.steps[index as usize].lease.as_mut() {
            schedule.lease_released(step, attempt, *exp);
            *exp = expires;
            schedule.lease_taken(step, attempt, expires);
        }
        Ok(expires)
    }

    /// The holder of attempt `attempt` gives the step back unfinished (a stopping worker):
    /// pending again at once, the attempt not counted.
    pub fn release(
        &mut self,
        step: StepId,
        attempt: u32,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) -> Result<()> {
        let index = self.check_claim(step, attempt, now)?;
        self.release_lease(index, schedule);
        let i = index as usize;
        self.steps[i].started_at = None;
        let reason = Some("released by its worker".to_owned());
        self.step_to(index, StepEvent::Release, now, reason, changes)?;
        // Not counted: the next claim runs this attempt number again.
        self.steps[i].attempts -= 1;
        self.queue_ready(&[index], now, schedule, changes);
        Ok(())
    }

    /// Gives back step `index` if attempt `attempt` still holds it and its lease has run out:
    /// a retryable failure.
    pub fn expire_lease(
        &mut self,
        index: u32,
        attempt: u32,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) {
        let i = index as usize;
        let expired = self.steps[i]
            .lease
            .as_ref()
            .is_some_and(|(_, exp)| *exp <= now);
        if self.states[i] != StepState::InProgress || self.steps[i].attempts != attempt || !expired
        {
            return;
        }
        let owner = self.steps[i]
            .lease
            .as_ref()
            .map(|(o, _)| o.clone())
            .unwrap_or_else(|| "?".into());
        self.release_lease(index, schedule);
        let message = format!(
            "lease expired after {} ms (worker {owner})",
            self.spec(index).lease_ms
        );
        let retryable = FailureKind::Retryable {
            retry_after_ms: None,
        };
        self.record_failure(
            index,
            retryable,
            message,
            StepEvent::LeaseExpired,
            now,
            schedule,
            changes,
        );
    }

    /// Makes step `index` pending again if attempt `attempt` is waiting and its time has come.
    pub fn retry_due(
        &mut self,
        index: u32,
        attempt: u32,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) {
        let i = index as usize;
        // Claimable from then on (however late the store noticed).
        let due_at = self.steps[i].next_attempt_at.filter(|&at| at <= now);
        let due = due_at.is_some();
        if due && self.is_delayed(index) {
            // Its task's start: it no longer waits for it.
            self.steps[i].next_attempt_at = None;
            self.counters[i].unfinished_parents =
                self.counters[i].unfinished_parents.saturating_sub(1);
            if self.is_claimable(index) {
                self.queue_ready(&[index], due_at.unwrap_or(now), schedule, changes);
            }
            return;
        }
        if self.states[i] != StepState::WaitingForRetry || self.steps[i].attempts != attempt || !due
        {
            return;
        }
        self.steps[i].next_attempt_at = None;
        if self
            .step_to(index, StepEvent::RetryDue, now, None, changes)
            .is_ok()
            && self.is_claimable(index)
        {
            self.steps[i].ready_at = due_at;
            schedule.ready(self, index);
        }
    }

    /// A failed attempt (reported or by lease expiry): a retry after backoff, or a failure for
    /// good.
    #[allow(clippy::too_many_arguments)]
    fn record_failure(
        &mut self,
        index: u32,
        kind: FailureKind,
        message: String,
        event: StepEvent,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) {
        let i = index as usize;
        self.steps[i].error = Some(message.clone());
        self.steps[i].lease = None;
        if self
            .step_to(index, event, now, Some(message), changes)
            .is_err()
        {
            return;
        }
        let (attempt, budget) = (self.steps[i].attempts, self.steps[i].max_attempts);
        let policy = self.spec(index).retry;
        // A slice of a batch that has ended (failed fast, resolved) is not tried again.
        let ended = self
            .instance(index)
            .is_some_and(|inst| self.states[inst.of as usize] != StepState::InProgress);
        let kind = if ended { FailureKind::Permanent } else { kind };
        match policy.decide(attempt, budget, kind, fastrand::f64()) {
            RetryDecision::RetryAfter { delay_ms } => {
                let at = add_ms(now, delay_ms);
                self.steps[i].next_attempt_at = Some(at);
                let reason = Some(format!("retry in {delay_ms} ms"));
                if self
                    .step_to(index, StepEvent::ScheduleRetry, now, reason, changes)
                    .is_ok()
                {
                    schedule.retry_scheduled(self.step_id(index), attempt, at);
                }
            }
            RetryDecision::GiveUp { .. } => {
                self.steps[i].completed_at = Some(now);
                self.finish_step(index, Outcome::Failed, now, schedule, changes);
            }
        }
    }

    /// A step has finished: release or skip its children, and finish the task when nothing is
    /// left.
    fn finish_step(
        &mut self,
        index: u32,
        outcome: Outcome,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) {
        self.unfinished -= 1;
        if self.instance(index).is_some() {
            self.finish_instance(index, outcome, now, schedule, changes);
            self.maybe_finish(now, changes);
            return;
        }
        let graph = self.graph.clone();
        let mut release = Release::default();
        readiness::propagate_into(
            &graph,
            &mut self.counters,
            &mut self.states,
            &self.choices,
            index,
            outcome,
            &mut release,
        );
        self.apply_release(&release, now, schedule, changes);
        self.maybe_finish(now, changes);
    }

    /// Records the skips of a [`Release`] and queues its ready steps.
    fn apply_release(
        &mut self,
        release: &Release,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) {
        for &s in &release.skipped {
            self.unfinished -= 1;
            self.steps[s as usize].completed_at = Some(now);
            let t = Transition::step(
                self.id,
                s,
                self.step_name(s),
                (StepState::Pending, StepState::Skipped),
                StepEvent::Skip,
                self.steps[s as usize].attempts,
                now,
            );
            let reason = self.skip_reason(s).map(str::to_owned);
            self.record(t, reason, changes);
        }
        // A batch worker step is never handed out: it starts its instances instead.
        let is_worker = |r: &u32| self.graph.step(*r).kind == StepKind::BatchWorker;
        if !release.ready.iter().any(is_worker) {
            self.queue_ready(&release.ready, now, schedule, changes);
            return;
        }
        let (workers, ready): (Vec<u32>, Vec<u32>) =
            release.ready.iter().copied().partition(is_worker);
        self.queue_ready(&ready, now, schedule, changes);
        for w in workers {
            self.expand(w, now, schedule, changes);
        }
    }

    /// Batch worker step `w` has become ready: it starts (`expand`), releasing its instances
    /// up to the batch's parallelism; with no instance (an empty batch, or a batchable parent
    /// resolved by hand) it completes at once.
    fn expand(
        &mut self,
        w: u32,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) {
        let reason = Some(format!("{} slices", self.slices_of(w).len()));
        if self
            .step_to(w, StepEvent::Expand, now, reason, changes)
            .is_err()
        {
            return;
        }
        let rec = &mut self.steps[w as usize];
        rec.started_at = Some(now);
        rec.completed_at = None;
        self.fill_slots(w, now, schedule, changes);
        self.maybe_finish_batch(w, now, schedule, changes);
    }

    /// Releases waiting instances of running batch worker step `w` while fewer than its
    /// batch's `parallelism` are released and unfinished, in slice order.
    fn fill_slots(
        &mut self,
        w: u32,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) {
        let Some(plan) = self.graph.step(w).batch else {
            return;
        };
        if self.states[w as usize] != StepState::InProgress {
            return;
        }
        let slices = self.slices_of(w);
        let released = |t: &Self, s: u32| t.counters[s as usize].unfinished_parents == 0;
        let mut active = slices
            .clone()
            .filter(|&s| !self.states[s as usize].is_finished() && released(self, s))
            .count() as u32;
        let mut now_ready = Vec::new();
        for s in slices {
            if active >= plan.parallelism {
                break;
            }
            if self.states[s as usize] == StepState::Pending && !released(self, s) {
                self.counters[s as usize].unfinished_parents = 0;
                now_ready.push(s);
                active += 1;
            }
        }
        self.queue_ready(&now_ready, now, schedule, changes);
    }

    /// Completes running batch worker step `w` once every instance has finished (failed ones
    /// too under `on_failure: continue`), which releases its children.
    fn maybe_finish_batch(
        &mut self,
        w: u32,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) {
        let slices = self.slices_of(w);
        let unfinished = slices
            .clone()
            .any(|s| !self.states[s as usize].is_finished());
        if self.states[w as usize] != StepState::InProgress || unfinished {
            return;
        }
        let failed = slices
            .clone()
            .filter(|&s| !self.states[s as usize].is_success())
            .count();
        let total = slices.len();
        let (outcome, reason) = match failed {
            0 => (Outcome::Succeeded, format!("{total} slices complete")),
            _ if self.fails_fast(w) => (
                Outcome::Failed,
                format!("{failed} of {total} slices failed"),
            ),
            _ => (
                Outcome::Succeeded,
                format!("{total} slices finished, {failed} failed"),
            ),
        };
        self.end_batch(w, outcome, reason, now, schedule, changes);
    }

    /// Whether a failed slice of batch worker step `w` fails the batch at once.
    fn fails_fast(&self, w: u32) -> bool {
        self.graph
            .step(w)
            .batch
            .is_some_and(|p| p.on_failure == crate::template::OnFailure::FailFast)
    }

    /// Running batch worker step `w` ends with `outcome` (completes, or fails for good with
    /// `reason` as its error) and releases or skips its dependents.
    fn end_batch(
        &mut self,
        w: u32,
        outcome: Outcome,
        reason: String,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) {
        let reason = crate::limits::message(reason);
        let rec = &mut self.steps[w as usize];
        rec.completed_at = Some(now);
        let event = if outcome == Outcome::Failed {
            rec.error = Some(reason.clone());
            StepEvent::Fail
        } else {
            StepEvent::Complete
        };
        if self.step_to(w, event, now, Some(reason), changes).is_ok() {
            self.finish_step(w, outcome, now, schedule, changes);
        }
    }

    /// Skips the instances of batch worker step `w` that have not started (or wait for a
    /// retry), with `reason`.
    fn abandon_slices(
        &mut self,
        w: u32,
        reason: &str,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) {
        for s in self.slices_of(w) {
            match self.states[s as usize] {
                StepState::Pending => {}
                StepState::WaitingForRetry => self.cancel_retry(s, schedule),
                _ => continue,
            }
            self.steps[s as usize].completed_at = Some(now);
            let reason = Some(reason.to_owned());
            if self
                .step_to(s, StepEvent::Skip, now, reason, changes)
                .is_ok()
            {
                self.unfinished -= 1;
            }
        }
    }

    /// Instance `index` has finished with `outcome`: under `on_failure: fail_fast` a failure
    /// skips the slices not started and fails the worker step; otherwise the next slice is
    /// released, and the worker step completes after the last.
    fn finish_instance(
        &mut self,
        index: u32,
        outcome: Outcome,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) {
        let Some(w) = self.instance(index).map(|i| i.of) else {
            return;
        };
        if self.states[w as usize] != StepState::InProgress {
            return;
        }
        if outcome != Outcome::Failed || !self.fails_fast(w) {
            self.fill_slots(w, now, schedule, changes);
            self.maybe_finish_batch(w, now, schedule, changes);
            return;
        }
        let slice = self.step_name(index).clone();
        self.abandon_slices(w, &format!("slice {slice} failed"), now, schedule, changes);
        let error = self.steps[index as usize].error.clone().unwrap_or_default();
        let reason = format!("slice {slice} failed: {error}");
        self.end_batch(w, Outcome::Failed, reason, now, schedule, changes);
    }

    /// Why step `index` was skipped, if it was.
    fn skip_reason(&self, index: u32) -> Option<&'static str> {
        let i = index as usize;
        match Outcome::of(self.states[i], self.counters[i]) {
            _ if self.states[i] != StepState::Skipped => None,
            _ if self.instance(index).is_some() => Some("another slice failed"),
            Some(Outcome::NotChosen) => Some("not chosen"),
            _ => Some("a required parent failed"),
        }
    }

    fn queue_ready(
        &mut self,
        ready: &[u32],
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) {
        if self.status.is_runnable() {
            for &r in ready {
                self.steps[r as usize].ready_at = Some(now);
                schedule.ready(self, r);
                changes
                    .ready
                    .push((self.step_id(r), self.step_name(r).clone()));
            }
        }
    }

    fn maybe_finish(&mut self, now: Timestamp, changes: &mut Changes) {
        if self.unfinished != 0 {
            return;
        }
        let event = match (self.status, readiness::task_outcome(&self.states)) {
            (
                TaskState::Pending | TaskState::InProgress | TaskState::Error,
                Some(Outcome::Succeeded),
            ) => TaskEvent::Complete,
            (TaskState::Pending | TaskState::InProgress, Some(Outcome::Failed)) => TaskEvent::Fail,
            _ => return,
        };
        let _ = self.task_to(event, now, None, changes);
    }

    /// Recomputes the counters from the states after an operator verb, skipping what is doomed
    /// and queueing what is ready.
    ///
    /// `was_claimable` holds the steps that were already queued before the verb (they are not
    /// queued, nor announced, twice).
    fn resettle(
        &mut self,
        was_claimable: &[bool],
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) {
        let graph = self.graph.clone();
        let n = graph.len();
        let (counters, mut release) =
            readiness::settle(&graph, &mut self.states[..n], &self.choices);
        self.counters[..n].copy_from_slice(&counters);
        // The roots of a task to run later still wait for its start.
        for r in 0..n as u32 {
            if self.is_delayed(r) {
                self.counters[r as usize].unfinished_parents += 1;
            }
        }
        release.ready.retain(|&r| !self.is_delayed(r));
        self.unfinished = self.states.iter().filter(|s| !s.is_finished()).count() as u32
            + release.skipped.len() as u32;
        release.ready.retain(|&r| !was_claimable[r as usize]);
        // Instances released before (or reset by an operator retry after their batch
        // finished) are queued again; then the batches that run fill their slots.
        let again: Vec<u32> = (n as u32..self.states.len() as u32)
            .filter(|&s| self.is_claimable(s) && !was_claimable[s as usize])
            .collect();
        self.queue_ready(&again, now, schedule, changes);
        self.apply_release(&release, now, schedule, changes);
        for w in 0..n as u32 {
            if graph.step(w).kind == StepKind::BatchWorker {
                self.fill_slots(w, now, schedule, changes);
                self.maybe_finish_batch(w, now, schedule, changes);
            }
        }
    }

    fn claimable_steps(&self) -> Vec<bool> {
        (0..self.states.len() as u32)
            .map(|i| self.is_claimable(i))
            .collect()
    }

    /// Tells `schedule` the deadline of a task an operator reopened (it stands).
    pub fn rearm(&self, schedule: &mut impl Schedule) {
        if let Some(at) = self.deadline_at.filter(|_| !self.status.is_finished()) {
            schedule.deadline_set(self.id, at);
        }
    }

    /// Whether step `index` is a root of a task to run later, waiting for its start.
    fn is_delayed(&self, index: u32) -> bool {
        let i = index as usize;
        self.states[i] == StepState::Pending && self.steps[i].next_attempt_at.is_some()
    }

    /// Fails the task if its deadline has passed: the running steps fail ("deadline
    /// exceeded"; their reports are refused), the others are cancelled.
    pub fn expire_deadline(
        &mut self,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) {
        if self.status.is_finished() || self.deadline_at.is_none_or(|at| at > now) {
            return;
        }
        let reason = || Some("deadline exceeded".to_owned());
        for index in 0..self.states.len() as u32 {
            let i = index as usize;
            let event = match self.states[i] {
                StepState::InProgress => {
                    self.release_lease(index, schedule);
                    self.steps[i].error = reason();
                    StepEvent::Fail
                }
                StepState::Pending | StepState::WaitingForRetry | StepState::WaitingForChildren => {
                    self.cancel_retry(index, schedule);
                    StepEvent::Cancel
                }
                _ => continue,
            };
            self.steps[i].completed_at = Some(now);
            if self.step_to(index, event, now, reason(), changes).is_ok() {
                self.unfinished -= 1;
            }
        }
        let _ = self.task_to(TaskEvent::DeadlineExceeded, now, reason(), changes);
    }

    /// Cancels the task and its unfinished steps.
    pub fn cancel(
        &mut self,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) -> Result<()> {
        self.task_to(TaskEvent::Cancel, now, None, changes)?;
        for index in 0..self.states.len() as u32 {
            match self.states[index as usize] {
                StepState::InProgress => self.release_lease(index, schedule),
                StepState::WaitingForRetry | StepState::Pending => {
                    self.cancel_retry(index, schedule)
                }
                StepState::WaitingForChildren => {}
                _ => continue,
            }
            self.steps[index as usize].completed_at = Some(now);
            let reason = Some("task cancelled".to_owned());
            self.step_to(index, StepEvent::Cancel, now, reason, changes)?;
            self.unfinished -= 1;
        }
        Ok(())
    }

    /// Pauses the task.
    pub fn pause(&mut self, now: Timestamp, changes: &mut Changes) -> Result<()> {
        self.task_to(TaskEvent::Pause, now, None, changes)?;
        Ok(())
    }

    /// Resumes the paused task.
    pub fn resume(
        &mut self,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) -> Result<()> {
        let was_claimable = self.claimable_steps();
        self.task_to(TaskEvent::Resume, now, None, changes)?;
        self.resettle(&was_claimable, now, schedule, changes);
        self.maybe_finish(now, changes);
        Ok(())
    }

    /// Gives the failed and skipped steps of the failed task a fresh attempt budget.
    pub fn retry(
        &mut self,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) -> Result<()> {
        let was_claimable = self.claimable_steps();
        self.task_to(TaskEvent::Retry, now, None, changes)?;
        for index in 0..self.states.len() as u32 {
            let i = index as usize;
            // A step skipped as not chosen stays skipped: its decision stands.
            if Outcome::of(self.states[i], self.counters[i]) == Some(Outcome::Failed)
                && matches!(self.states[i], StepState::Error | StepState::Skipped)
            {
                if let Some(w) = self.instance(index).map(|i| i.of) {
                    // A slice runs again with its batch (its worker step, reset above, starts
                    // again); the slices of a batch that completed stay as they ended: their
                    // results were handed on already.
                    if self.states[w as usize] != StepState::Pending {
                        continue;
                    }
                    self.counters[i].unfinished_parents = 1;
                }
                let budget = self.spec(index).retry.max_attempts;
                let rec = &mut self.steps[i];
                // Saturating: an operator may retry a task any number of times.
                rec.max_attempts = rec.attempts.saturating_add(budget);
                rec.completed_at = None;
                rec.next_attempt_at = None;
                // Its handler runs again and starts children of its own.
                rec.children = None;
                let reason = Some("operator retry".to_owned());
                self.step_to(index, StepEvent::Reset, now, reason, changes)?;
            }
        }
        self.resettle(&was_claimable, now, schedule, changes);
        self.maybe_finish(now, changes);
        Ok(())
    }

    /// An operator supplies the result of step `step`.
    pub fn resolve(
        &mut self,
        step: StepId,
        result: Value,
        now: Timestamp,
        schedule: &mut impl Schedule,
        changes: &mut Changes,
    ) -> Result<()> {
        let index = self.step_index(step)?;
        let i = index as usize;
        if !matches!(
            self.status,
            TaskState::Pending | TaskState::InProgress | TaskState::Paused | TaskState::Error
        ) {
            return Err(Error::InvalidTransition(crate::state::InvalidTransition {
                entity: "task",
                from: self.status.as_str(),
                event: StepEvent::ResolveManually.as_str(),
            }));
        }
        let was_claimable = self.claimable_steps();
        let before = self.states[i];
        let reason = Some("resolved by an operator".to_owned());
        self.step_to(index, StepEvent::ResolveManually, now, reason, changes)?;
        self.release_lease(index, schedule);
        self.cancel_retry(index, schedule);
        self.steps[i].result = Some(Arc::new(result));
        self.steps[i].completed_at = Some(now);
        if self.spec(index).kind == StepKind::BatchWorker && self.instance(index).is_none() {
            // Its result stands for its slices': those not started are not wanted any more.
            self.abandon_slices(
                index,
                "worker step resolved manually",
                now,
                schedule,
                changes,
            );
        }
        if !before.is_finished() {
            self.finish_step(index, Outcome::Succeeded, now, schedule, changes);
            return Ok(());
        }
        // Its children were told it failed: give back the steps skipped on its account (an
        // instance has no children; its batch picks up in `resettle`).
        let n = self.graph.len();
        let skipped: Vec<u32> = (0..n as u32)
            .filter(|&s| self.states[s as usize] == StepState::Skipped)
            .collect();
        let mut trial = self.states[..n].to_vec();
        for &s in &skipped {
            trial[s as usize] = StepState::Pending;
        }
        let (_, still_doomed) = readiness::settle(&self.graph.clone(), &mut trial, &self.choices);
        let parent = self.step_name(index).clone();
        for &s in &skipped {
            if !still_doomed.skipped.contains(&s) {
                self.steps[s as usize].completed_at = None;
                let reason = Some(format!("parent {parent} resolved manually"));
                self.step_to(s, StepEvent::Reset, now, reason, changes)?;
            }
        }
        if self.status == TaskState::Error && self.states.iter().any(|s| !s.is_finished()) {
            let reason = Some(format!("step {parent} resolved manually"));
            self.task_to(TaskEvent::Retry, now, reason, changes)?;
        }
        self.resettle(&was_claimable, now, schedule, changes);
        self.maybe_finish(now, changes);
        Ok(())
    }

    /// The read view.
    pub fn view(&self) -> TaskView {
        let steps = (0..self.states.len() as u32)
            .map(|index| {
                let i = index as usize;
                let spec = self.spec(index);
                let rec = &self.steps[i];
                let running = self.states[i] == StepState::InProgress;
                let instance = self.instance(index);
                StepView {
                    step_id: self.step_id(index),
                    name: self.step_name(index).to_string(),
                    handler: spec.handler.to_string(),
                    status: self.states[i],
                    attempts: rec.attempts,
                    max_attempts: rec.max_attempts,
                    // A batch worker step's result is its slices' (what its dependents get).
                    result: if spec.kind == StepKind::BatchWorker
                        && instance.is_none()
                        && self.states[i] == StepState::Complete
                    {
                        Some((*self.output_of(index)).clone())
                    } else {
                        rec.result.as_deref().cloned()
                    },
                    error: rec.error.clone(),
                    depends_on: self
                        .graph
                        .parents(self.template_step(index))
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
                    kind: spec.kind,
                    chosen: self.choices.chosen(index).map(|c| {
                        c.iter()
                            .map(|&c| self.graph.step(c).name.to_string())
                            .collect()
                    }),
                    skip_reason: self.skip_reason(index).map(str::to_owned),
                    instance_of: instance.map(|i| self.graph.step(i.of).name.to_string()),
                    batch: instance.map(|i| (*i.batch).clone()),
                    children: rec.children.as_deref().map(<[TaskId]>::to_vec),
                }
            })
            .collect();
        TaskView {
            id: self.id,
            namespace: self.of.namespace.to_string(),
            name: self.of.name.to_string(),
            version: self.graph.version().to_string(),
            status: self.status,
            context: (*self.context).clone(),
            priority: self.priority,
            idempotency_key: self.idempotency_key.clone(),
            deadline_at: self.deadline_at,
            traceparent: self.of.trace.map(|t| t.traceparent()),
            parent: self.parent.as_ref().map(|p| crate::view::ParentView {
                task_id: p.task_id,
                step: p.step.clone(),
            }),
            progress: Progress::of(self.states.iter().copied()),
            steps,
            created_at: self.of.created_at,
            updated_at: self.updated_at,
            completed_at: self.completed_at,
        }
    }
}

/// The slices of `work` in pieces of `size`: `{index, start, end}`, with `items` for a batch of
/// items; or why there are too many.
fn batch_slices(work: &super::BatchWork, size: u64) -> std::result::Result<Vec<Value>, String> {
    let total = match work {
        super::BatchWork::Items(items) => items.len() as u64,
        super::BatchWork::Total(total) => *total,
    };
    let count = total.div_ceil(size.max(1));
    let max = crate::template::MAX_SLICES;
    if count > max as u64 {
        return Err(format!(
            "the batch makes {count} slices of {size}, more than a batch may have ({max})"
        ));
    }
    Ok((0..count)
        .map(|k| {
            let start = k * size;
            let end = (start + size).min(total);
            let mut slice = serde_json::json!({"index": k, "start": start, "end": end});
            if let super::BatchWork::Items(items) = work {
                slice["items"] = Value::Array(items[start as usize..end as usize].to_vec());
            }
            slice
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::store::{Batch, NewTask, Outcome as Reported};
    use crate::template::TaskTemplate;

    /// The steps queued as claimable.
    #[derive(Default)]
    struct Queue(BTreeSet<u32>);

    impl Schedule for Queue {
        fn ready(&mut self, _task: &TaskRecord, index: u32) {
            self.0.insert(index);
        }
    }

    fn batch_task(size: u64, parallelism: u32, on_failure: &str) -> (TaskRecord, Queue) {
        let yaml = format!(
            "namespace: t\nname: b\nversion: 1.0.0\nsteps:\n  - {{name: load, type: batchable, batch: {{worker: work, size: {size}, parallelism: {parallelism}, on_failure: {on_failure}}}}}\n  - {{name: work, type: batch_worker, depends_on: [load], retry: {{max_attempts: 1}}}}\n  - {{name: after, depends_on: [work]}}\n"
        );
        let graph = Arc::new(TaskTemplate::from_yaml(&yaml).unwrap().compile().unwrap());
        let mut queue = Queue::default();
        let task = TaskRecord::create(
            TaskId::new(),
            graph,
            &NewTask::new("t", "b"),
            Timestamp::default(),
            &mut queue,
            &mut Changes::default(),
        );
        (task, queue)
    }

    /// Claims step `index` and reports `outcome` for it.
    fn run(t: &mut TaskRecord, q: &mut Queue, index: u32, outcome: Reported) {
        let (now, worker): (Timestamp, Arc<str>) = (Timestamp::default(), "w".into());
        let c = &mut Changes::default();
        q.0.remove(&index);
        let claimed = t.claim(index, &worker, now, q, c).unwrap();
        t.report(claimed.step_id, claimed.attempt, outcome, now, q, c)
            .unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// A batch run slice by slice in a random order, with random failures: never more
        /// slices out than the parallelism, the counts of unfinished steps right, and the
        /// worker step and task ending as `on_failure` says.
        #[test]
        fn a_batch_keeps_its_parallelism_and_ends_as_its_failures_say(
            items in 0usize..40, size in 1u64..8, parallelism in 1u32..5, continue_ in any::<bool>(),
            picks in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..6), 0..60),
        ) {
            let (mut t, mut q) = batch_task(size, parallelism, if continue_ { "continue" } else { "fail_fast" });
            let load = Reported::Batch(Batch::items((0..items).map(|i| json!(i)).collect()));
            run(&mut t, &mut q, 0, load);
            let slices = items.div_ceil(size as usize);
            prop_assert_eq!(t.instances.len(), slices);
            let mut failed = false;
            for (pick, kind) in picks {
                let out: Vec<u32> = q.0.iter().copied().filter(|&s| s >= 3 && t.is_claimable(s)).collect();
                let released = (3..t.states.len() as u32)
                    .filter(|&s| !t.states[s as usize].is_finished() && t.counters[s as usize].unfinished_parents == 0)
                    .count();
                prop_assert!(released as u32 <= parallelism, "{released} slices out");
                prop_assert_eq!(released, out.len());
                let unfinished = t.states.iter().filter(|s| !s.is_finished()).count() as u32;
                prop_assert_eq!(t.unfinished, unfinished);
                if out.is_empty() { break; }
                let s = *pick.get(&out);
                let outcome = if kind == 0 {
                    failed = true;
                    Reported::Fail(StepFailure { message: "no".into(), kind: FailureKind::Permanent })
                } else {
                    Reported::Complete(json!(s))
                };
                run(&mut t, &mut q, s, outcome);
            }
            let finished = (3..t.states.len()).all(|s| t.states[s].is_finished());
            let work = t.states[1];
            if failed && !continue_ {
                prop_assert_eq!(work, StepState::Error);
                prop_assert_eq!(t.states[2], StepState::Skipped);
            } else if finished {
                prop_assert_eq!(work, StepState::Complete);
                prop_assert!(q.0.contains(&2), "the step after the batch is ready");
            } else {
                prop_assert_eq!(work, StepState::InProgress);
            }
        }
    }
}
