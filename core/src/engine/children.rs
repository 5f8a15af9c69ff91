//! Child tasks: a handler's [`Children`] started, a parent step settled when its children end,
//! and cascading cancels.
//!
//! Every store operation changes one task, so that no two operations ever wait on each other's
//! locks in opposite order (a child that finishes would lock child then parent, a cancel parent
//! then children). What an operation leaves for another task comes back as a [`Knock`] in its
//! [`Changes`], and the engine follows each up at once with an operation of its own:
//!
//! ```text
//!  parent step ── handler returns Children ──▶ children created (one batch, keyed
//!     │                                        child:<step>:<attempt>:<k>: a report
//!     │  report: waiting_for_children          tried again makes no second set)
//!     ▼
//!  child ends ── Knock::ChildEnded ──▶ settle: all finished → complete with their results;
//!                                              one failed   → fail (→ Orphaned)
//!  parent step leaves waiting otherwise, or its task is cancelled
//!             ── Knock::Orphaned ──▶ cancel each unfinished child (its own children next)
//! ```
//!
//! A crash between two of these operations leaves the store consistent but a follow-up
//! undone; [`Engine::tend_children`] (which workers run every few seconds) finds and does it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;

use super::Engine;
use crate::error::{Error, Result};
use crate::ids::{StepId, TaskId};
use crate::readiness::{children_stand, ChildrenStand};
use crate::retry::FailureKind;
use crate::state::{StepState, TaskState};
use crate::store::{
    Changes, Children, Knock, NewTask, Outcome, ParentLink, StepFailure, StepReport,
};
use crate::view::StepView;

/// How many ancestors a child's creation looks at for the keys they hold.
const MAX_ANCESTORS: usize = 64;

/// How often a worker tends children (see [`Engine::tend_children`]).
pub(crate) const TEND_EVERY: Duration = Duration::from_secs(5);

/// How many waiting steps, and how many unfinished children, one tending looks at (the next
/// goes on where it stopped).
const TEND_PAGE: usize = 1000;

/// The prefix of the idempotency keys of child tasks, which callers may not use.
pub(crate) const CHILD_KEY_PREFIX: &str = "child:";

/// Whether the store refused a report for good (its claim is lost), rather than failed to
/// record it.
pub(super) fn is_refusal(e: &Error) -> bool {
    matches!(
        e,
        Error::ClaimLost { .. } | Error::TaskNotFound(_) | Error::InvalidTransition(_)
    )
}

/// Whether `step` (a step's view) waits for, or may be about to start, child `child` that its
/// attempt `attempt` started: it waits for exactly its children, or the attempt that started
/// it is still running (its report not yet recorded).
fn waits_for(step: &StepView, child: TaskId, attempt: u32) -> bool {
    match step.status {
        StepState::InProgress => step.attempts == attempt,
        StepState::WaitingForChildren => step.children.as_ref().is_some_and(|c| c.contains(&child)),
        _ => false,
    }
}

/// What [`Engine::prepare`] kept of a batch of reports, to give each its result.
pub(super) struct Prepared {
    /// The position among the reports sent of each report of the batch, or its refusal (not
    /// sent); `None`: all were sent, in order.
    slots: Option<Vec<std::result::Result<usize, Error>>>,
    /// The reports sent that started children: their position among those sent, and the
    /// children.
    spawned: Vec<(usize, Vec<TaskId>)>,
}

impl Prepared {
    /// Every report's result, in the batch's order, from the store's results of the reports
    /// sent; the children of a report the store refused are cancelled (knocked into
    /// `changes`).
    pub fn results(self, sent: Vec<Result<()>>, changes: &mut Changes) -> Vec<Result<()>> {
        for (i, ids) in self.spawned {
            if matches!(sent.get(i), Some(Err(e)) if is_refusal(e)) {
                changes.knocks.push(Knock::Orphaned(ids.into()));
            }
        }
        let Some(slots) = self.slots else {
            return sent;
        };
        let mut sent: Vec<Option<Result<()>>> = sent.into_iter().map(Some).collect();
        slots
            .into_iter()
            .map(|slot| match slot {
                Ok(i) => sent.get_mut(i).and_then(Option::take).unwrap_or_else(|| {
                    Err(Error::store(
                        crate::error::StoreErrorKind::Other,
                        "the store answered fewer reports than it was sent",
                    ))
                }),
                Err(e) => Err(e),
            })
            .collect()
    }
}

impl Engine {
    /// `outcome` as the store records it: [`Outcome::Spawn`] becomes [`Outcome::Children`]
    /// once the children are created, or a permanent failure when they cannot be (a step of
    /// a type that may not start children, an unknown template, a context its schema refuses):
    /// then none is created. An `Err`: the claim is lost (none is created), or the store
    /// failed (the report may be made again: the children's keys make none twice).
    /// [`Outcome::Children`] is the engine's own: from a caller it fails the step for good.
    pub(super) async fn spawned(
        &self,
        step: StepId,
        attempt: u32,
        outcome: Outcome,
    ) -> Result<Outcome> {
        let permanent = |message: String| {
            Outcome::Fail(StepFailure {
                message: crate::limits::message(message),
                kind: FailureKind::Permanent,
            })
        };
        let children = match outcome {
            Outcome::Spawn(children) => children,
            Outcome::Children(_) => {
                return Ok(permanent(
                    "Outcome::Children is recorded by the engine only: report Outcome::Spawn"
                        .to_owned(),
                ))
            }
            other => return Ok(other),
        };
        match self.start_children(step, attempt, children).await {
            Ok(ids) => Ok(Outcome::Children(ids)),
            Err(e @ (Error::Store(_) | Error::Closed | Error::ClaimLost { .. })) => Err(e),
            Err(e) => Ok(permanent(match e {
                Error::InvalidArgument(why) => why,
                other => other.to_string(),
            })),
        }
    }

    /// A batch of reports made ready for the store, each [`Engine::spawned`], and what is
    /// kept to answer them ([`Prepared::results`]); a report whose claim is lost is refused
    /// here and not sent. An `Err` (the store failed) means none was reported.
    pub(super) async fn prepare(
        &self,
        reports: Vec<StepReport>,
    ) -> Result<(Vec<StepReport>, Prepared)> {
        let spawns = |r: &StepReport| matches!(r.outcome, Outcome::Spawn(_) | Outcome::Children(_));
        if !reports.iter().any(spawns) {
            let prepared = Prepared {
                slots: None,
                spawned: Vec::new(),
            };
            return Ok((reports, prepared));
        }
        let mut send = Vec::with_capacity(reports.len());
        let mut slots = Vec::with_capacity(reports.len());
        let mut spawned = Vec::new();
        for mut r in reports {
            if spawns(&r) {
                let outcome = std::mem::replace(&mut r.outcome, Outcome::Complete(Value::Null));
                match self.spawned(r.step, r.attempt, outcome).await {
                    Ok(outcome) => r.outcome = outcome,
                    Err(e @ Error::ClaimLost { .. }) => {
                        slots.push(Err(e));
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                if let Outcome::Children(ids) = &r.outcome {
                    spawned.push((send.len(), ids.clone()));
                }
            }
            slots.push(Ok(send.len()));
            send.push(r);
        }
        let prepared = Prepared {
            slots: Some(slots),
            spawned,
        };
        Ok((send, prepared))
    }

    /// `task`'s template-level concurrency key, rendered from its context (`None` for a
    /// template without one).
    async fn task_key_of(&self, task: &crate::view::TaskView) -> Result<Option<String>> {
        let graph = self
            .template(&task.namespace, &task.name, Some(&task.version))
            .await?;
        let gates = graph.gates(&task.context).ok().flatten();
        Ok(gates.and_then(|g| g.task).map(|(k, _)| k.to_string()))
    }

    /// The template-level keys of `task`'s ancestors, nearest first, each once (see
    /// [`ParentLink::above`]). An ancestor already purged ends the walk.
    async fn keys_above(&self, task: &crate::view::TaskView) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut next = task.parent.as_ref().map(|p| p.task_id);
        // A bound, though no store links a task to one created after it (no cycle).
        for _ in 0..MAX_ANCESTORS {
            let Some(id) = next else { break };
            let ancestor = match self.task(id).await {
                Ok(t) => t,
                Err(Error::TaskNotFound(_)) => break,
                Err(e) => return Err(e),
            };
            if let Some(key) = self.task_key_of(&ancestor).await? {
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            next = ancestor.parent.as_ref().map(|p| p.task_id);
        }
        Ok(keys)
    }

    /// Creates the children of held attempt `attempt` of `step`, in order; their ids.
    async fn start_children(
        &self,
        step: StepId,
        attempt: u32,
        children: Children,
    ) -> Result<Vec<TaskId>> {
        let parent = self.task(step.task).await?;
        let held = parent
            .steps
            .get(step.index as usize)
            .filter(|s| s.status == StepState::InProgress && s.attempts == attempt);
        let Some(view) = held else {
            return Err(Error::ClaimLost { step, attempt });
        };
        let reported = crate::template::Reported::Children;
        if let Some(why) = crate::template::output_refusal(&view.name, view.kind, &[], reported) {
            return Err(Error::InvalidArgument(why));
        }
        // The parent holds its own key (one of its steps runs), and its ancestors theirs:
        // children of one of these keys run under that hold.
        let link = ParentLink {
            task_id: step.task,
            step: view.name.clone(),
            index: step.index,
            attempt,
            key: self.task_key_of(&parent).await?,
            above: self.keys_above(&parent).await?,
        };
        let mut batch = Vec::with_capacity(children.tasks.len());
        for (k, child) in children.tasks.into_iter().enumerate() {
            let task = NewTask {
                namespace: child.namespace,
                name: child.name,
                version: child.version,
                context: child.context,
                idempotency_key: Some(format!("{CHILD_KEY_PREFIX}{step}:{attempt}:{k}")),
                priority: parent.priority,
                parent: Some(link.clone()),
                run_at: None,
                delay_ms: None,
                // The child's span is a child of the attempt that started it.
                traceparent: parent
                    .traceparent
                    .as_deref()
                    .and_then(|t| crate::trace::TaskTrace::stored(t, None))
                    .map(|t| t.attempt_traceparent(step.index, attempt)),
            };
            let graph = self.checked(&task).await.map_err(|e| match e {
                e @ (Error::Store(_) | Error::Closed) => e,
                e => Error::InvalidArgument(format!(
                    "child task {k} ({}/{}): {e}",
                    task.namespace, task.name
                )),
            })?;
            batch.push((graph, task));
        }
        let created = self.store()?.create_tasks(&batch, self.now()).await?;
        let mut ids = Vec::with_capacity(created.len());
        for (created, (_, task)) in created.into_iter().zip(&batch) {
            if !created.created {
                // Made by an earlier try of this report: it must be this step's child.
                let earlier = self.task(created.task_id).await?;
                let ours = earlier
                    .parent
                    .as_ref()
                    .is_some_and(|p| p.task_id == link.task_id && p.step == link.step);
                if !ours || earlier.context != task.context {
                    return Err(Error::InvalidArgument(format!(
                        "child task {} ({}/{}): its key is held by task {} of another step",
                        ids.len(),
                        task.namespace,
                        task.name,
                        created.task_id
                    )));
                }
            }
            ids.push(created.task_id);
            self.publish_now(created.changes);
        }
        Ok(ids)
    }

    /// Does what `changes` leave for other tasks, and what those operations leave in turn
    /// (each once); their changes are added to `changes`. A follow-up that fails is logged and
    /// left to [`Engine::tend_children`].
    pub(super) async fn follow_up(&self, changes: &mut Changes) {
        let mut knocks = std::mem::take(&mut changes.knocks);
        let mut settled: HashSet<StepId> = HashSet::new();
        let mut cancelled: HashSet<TaskId> = HashSet::new();
        while let Some(knock) = knocks.pop() {
            let done = match &knock {
                Knock::ChildEnded(step) => {
                    if !settled.insert(*step) {
                        continue;
                    }
                    self.settle(*step).await
                }
                Knock::Orphaned(children) => {
                    let fresh: Vec<TaskId> = children
                        .iter()
                        .copied()
                        .filter(|c| cancelled.insert(*c))
                        .collect();
                    self.cancel_children(&fresh).await
                }
            };
            match done {
                Ok(mut more) => {
                    knocks.append(&mut more.knocks);
                    changes.extend(more);
                }
                Err(e) => {
                    tracing::warn!(?knock, error = %e, "a child task's follow-up failed; tending children makes it good");
                }
            }
        }
    }

    /// [`Engine::follow_up`] then publish, on a task of its own (for a worker session's
    /// reports: its driver goes on renewing leases and handing out claims meanwhile);
    /// everything else is published at once.
    pub(super) fn publish_later(&self, mut changes: Changes) {
        let knocks = std::mem::take(&mut changes.knocks);
        self.publish_now(changes);
        if knocks.is_empty() {
            return;
        }
        let engine = self.clone();
        engine.inner.following.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let mut changes = Changes {
                knocks,
                ..Changes::default()
            };
            engine.follow_up(&mut changes).await;
            engine.publish_now(changes);
            engine.inner.following.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Whether follow-ups started by [`Engine::publish_later`] are still running.
    pub(crate) fn is_following_up(&self) -> bool {
        self.inner.following.load(Ordering::SeqCst) > 0
    }

    /// Ends `step` if it waits for children that have all finished, or of which one failed.
    async fn settle(&self, step: StepId) -> Result<Changes> {
        let store = self.store()?;
        let parent = store.task(step.task).await?;
        let Some(view) = parent.steps.get(step.index as usize) else {
            return Ok(Changes::default());
        };
        let Some(children) = view
            .children
            .as_ref()
            .filter(|_| view.status == StepState::WaitingForChildren)
        else {
            return Ok(Changes::default());
        };
        let states: HashMap<TaskId, TaskState> =
            store.task_states(children).await?.into_iter().collect();
        let settled = match children_stand(children.iter().map(|c| states.get(c).copied())) {
            ChildrenStand::Open => return Ok(Changes::default()),
            ChildrenStand::Failed { index, state } => Err(match state {
                Some(TaskState::Cancelled) => {
                    format!("child task {index} ({}) was cancelled", children[index])
                }
                Some(_) => format!("child task {index} ({}) failed", children[index]),
                None => format!("child task {index} ({}) is gone", children[index]),
            }),
            ChildrenStand::Done => {
                let mut results: Vec<Value> = Vec::with_capacity(children.len());
                for child in children {
                    results.push(store.task(*child).await?.leaf_results());
                }
                let results = Value::Array(results);
                match crate::limits::check_json(&results, "the children's results") {
                    Ok(()) => match results {
                        Value::Array(results) => Ok(results),
                        _ => Ok(Vec::new()),
                    },
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        store
            .settle_children(step, children, settled, self.now())
            .await
    }

    /// Cancels those of `children` that have not finished (one operation each).
    async fn cancel_children(&self, children: &[TaskId]) -> Result<Changes> {
        let store = self.store()?;
        let mut changes = Changes::default();
        if children.is_empty() {
            return Ok(changes);
        }
        for (child, state) in store.task_states(children).await? {
            if state.is_finished() {
                continue;
            }
            match store.cancel_task(child, self.now()).await {
                Ok(more) => changes.extend(more),
                // Finished meanwhile, or gone.
                Err(Error::InvalidTransition(_) | Error::TaskNotFound(_)) => {}
                Err(e) => tracing::warn!(%child, error = %e, "could not cancel a child task"),
            }
        }
        Ok(changes)
    }

    /// Makes good the follow-ups a crash left undone: settles each step waiting for children
    /// that have all finished (or of which one failed), and cancels each unfinished child
    /// that no step waits for any more (its parent step ended otherwise or moved on to another
    /// attempt, or its task was cancelled or is gone). Workers call it every few seconds and
    /// before they call themselves idle; returns how many tasks it changed. One family that
    /// cannot be read is logged and left; the others are tended.
    pub async fn tend_children(&self) -> Result<usize> {
        let store = self.store()?;
        let mut changes = Changes::default();
        let (after_step, after_child) = *self.inner.tend_from.lock();
        let waiting = store.waiting_for_children(after_step, TEND_PAGE).await?;
        let open = store.open_children(after_child, TEND_PAGE).await?;
        // A full page: the next tending goes on after it; else from the start again.
        *self.inner.tend_from.lock() = (
            waiting
                .last()
                .copied()
                .filter(|_| waiting.len() == TEND_PAGE),
            open.last().map(|c| c.0).filter(|_| open.len() == TEND_PAGE),
        );
        for step in waiting {
            match self.settle(step).await {
                Ok(more) => changes.extend(more),
                Err(e) => tracing::warn!(%step, error = %e, "could not settle a step's children"),
            }
        }
        let mut by_parent: HashMap<TaskId, Vec<(TaskId, ParentLink)>> = HashMap::new();
        for (child, link) in open {
            by_parent
                .entry(link.task_id)
                .or_default()
                .push((child, link));
        }
        let mut orphans = Vec::new();
        for (parent, children) in by_parent {
            let view = match store.task(parent).await {
                Ok(view) => Some(view),
                Err(Error::TaskNotFound(_)) => None,
                Err(e) => {
                    tracing::warn!(%parent, error = %e, "could not read a parent task");
                    continue;
                }
            };
            for (child, link) in children {
                let step = view.as_ref().and_then(|v| v.steps.get(link.index as usize));
                if !step.is_some_and(|s| waits_for(s, child, link.attempt)) {
                    orphans.push(child);
                }
            }
        }
        changes.extend(self.cancel_children(&orphans).await?);
        let mut touched: Vec<TaskId> = changes.transitions.iter().map(|t| t.task_id).collect();
        touched.sort();
        touched.dedup();
        self.publish(changes).await;
        Ok(touched.len())
    }
}
