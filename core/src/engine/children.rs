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

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use super::Engine;
use crate::error::{Error, Result};
use crate::ids::{StepId, TaskId};
use crate::readiness::{children_stand, ChildrenStand};
use crate::retry::FailureKind;
use crate::state::{StepState, TaskState};
use crate::store::{Changes, Children, Knock, NewTask, Outcome, ParentLink, StepFailure};

/// How often a worker tends children (see [`Engine::tend_children`]).
pub(crate) const TEND_EVERY: Duration = Duration::from_secs(5);

impl Engine {
    /// `outcome` as the store records it: [`Outcome::Spawn`] becomes [`Outcome::Children`]
    /// once the children are created, or a permanent failure naming the child that cannot be
    /// (an unknown template, a context its schema refuses). A store failure is an `Err`: the
    /// report may be made again (the children's keys make it create none twice).
    pub(super) async fn spawned(
        &self,
        step: StepId,
        attempt: u32,
        outcome: Outcome,
    ) -> Result<Outcome> {
        let Outcome::Spawn(children) = outcome else {
            return Ok(outcome);
        };
        match self.start_children(step, attempt, children).await {
            Ok(ids) => Ok(Outcome::Children(ids)),
            Err(e @ (Error::Store(_) | Error::Closed | Error::ClaimLost { .. })) => Err(e),
            Err(e) => Ok(Outcome::Fail(StepFailure {
                message: crate::limits::message(e.to_string()),
                kind: FailureKind::Permanent,
            })),
        }
    }

    /// [`Engine::spawned`] for each report of a batch. An `Err` (the store failed) means none
    /// was reported; a report whose claim is lost keeps a `Spawn` (of no children), which the
    /// store refuses as [`Error::ClaimLost`].
    pub(super) async fn spawn_all(&self, reports: &mut [crate::store::StepReport]) -> Result<()> {
        for r in reports.iter_mut() {
            if matches!(r.outcome, Outcome::Spawn(_)) {
                let none = Outcome::Spawn(Children::of([]));
                let outcome = std::mem::replace(&mut r.outcome, none);
                match self.spawned(r.step, r.attempt, outcome).await {
                    Ok(outcome) => r.outcome = outcome,
                    Err(Error::ClaimLost { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
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
        let link = ParentLink {
            task_id: step.task,
            step: view.name.clone(),
            index: step.index,
        };
        let mut batch = Vec::with_capacity(children.tasks.len());
        for (k, child) in children.tasks.into_iter().enumerate() {
            let task = NewTask {
                namespace: child.namespace,
                name: child.name,
                version: child.version,
                context: child.context,
                idempotency_key: Some(format!("child:{step}:{attempt}:{k}")),
                priority: parent.priority,
                parent: Some(link.clone()),
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
        for created in created {
            ids.push(created.task_id);
            self.publish_now(created.changes);
        }
        Ok(ids)
    }

    /// Does what `changes` leave for other tasks, and what those operations leave in turn;
    /// their changes are added to `changes`. A follow-up that fails is logged and left to
    /// [`Engine::tend_children`].
    pub(super) async fn follow_up(&self, changes: &mut Changes) {
        let mut knocks = std::mem::take(&mut changes.knocks);
        while let Some(knock) = knocks.pop() {
            let done = match &knock {
                Knock::ChildEnded(step) => self.settle(*step).await,
                Knock::Orphaned(children) => self.cancel_children(children).await,
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
                Ok(results)
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
        for (child, state) in store.task_states(children).await? {
            if state.is_finished() {
                continue;
            }
            match store.cancel_task(child, self.now()).await {
                Ok(more) => changes.extend(more),
                // Finished meanwhile, or gone.
                Err(Error::InvalidTransition(_) | Error::TaskNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(changes)
    }

    /// Makes good the follow-ups a crash left undone: settles each step waiting for children
    /// that have all finished (or of which one failed), and cancels each unfinished child
    /// that no step waits for any more (its parent step ended otherwise, or its task was
    /// cancelled). Workers call it every few seconds and before they call themselves idle;
    /// returns how many tasks it changed.
    pub async fn tend_children(&self) -> Result<usize> {
        let store = self.store()?;
        let mut changes = Changes::default();
        for step in store.waiting_for_children().await? {
            changes.extend(self.settle(step).await?);
        }
        let mut by_parent: HashMap<TaskId, Vec<(TaskId, u32)>> = HashMap::new();
        for (child, link) in store.open_children().await? {
            by_parent
                .entry(link.task_id)
                .or_default()
                .push((child, link.index));
        }
        let mut orphans = Vec::new();
        for (parent, children) in by_parent {
            let view = match store.task(parent).await {
                Ok(view) => Some(view),
                Err(Error::TaskNotFound(_)) => None,
                Err(e) => return Err(e),
            };
            for (child, index) in children {
                let step = view.as_ref().and_then(|v| v.steps.get(index as usize));
                let waited_for = step.is_some_and(|s| match s.status {
                    // Its handler may be starting it now.
                    StepState::InProgress => true,
                    StepState::WaitingForChildren => {
                        s.children.as_ref().is_some_and(|c| c.contains(&child))
                    }
                    _ => false,
                });
                if !waited_for {
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
