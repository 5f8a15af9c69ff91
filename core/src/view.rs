//! Read views: what `task(id)`, `list_tasks(filter)`, `transitions(id)` and `graph(id)` return.
//! They serialize to the JSON the bindings hand to their hosts (snake_case fields, RFC 3339
//! times).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Timestamp;
use crate::ids::{StepId, TaskId};
use crate::state::{Change, StepState, TaskState, Transition};

/// A task with its steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// The task's id.
    pub id: TaskId,
    /// The template's namespace.
    pub namespace: String,
    /// The template's name.
    pub name: String,
    /// The template's version.
    pub version: String,
    /// The task's state.
    pub status: TaskState,
    /// The context it was created with.
    pub context: Value,
    /// Its priority (higher first).
    pub priority: i32,
    /// Its idempotency key, if it has one.
    pub idempotency_key: Option<String>,
    /// For a child task, the step that started it.
    #[serde(default)]
    pub parent: Option<ParentView>,
    /// When it fails unless finished (its template's `deadline_ms`), while it has not.
    #[serde(default)]
    pub deadline_at: Option<Timestamp>,
    /// Its span's W3C trace context (`None` for a task stored without one).
    pub traceparent: Option<String>,
    /// Counts of steps per state.
    pub progress: Progress,
    /// Its steps, in template order.
    pub steps: Vec<StepView>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// When it finished (complete, error, cancelled or resolved).
    pub completed_at: Option<Timestamp>,
}

/// A registered template version ([`crate::Engine::templates`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateView {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The version.
    pub version: String,
    /// How many steps it declares.
    pub steps: u32,
    /// Its description, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl TemplateView {
    /// The listing of `templates`: by namespace, name, then version (as semver orders them).
    pub fn listing<'a>(
        templates: impl IntoIterator<Item = &'a crate::template::TaskTemplate>,
    ) -> Vec<TemplateView> {
        let mut out: Vec<(semver::Version, TemplateView)> = templates
            .into_iter()
            .map(|t| {
                let view = TemplateView {
                    namespace: t.namespace.clone(),
                    name: t.name.clone(),
                    version: t.version.clone(),
                    steps: u32::try_from(t.steps.len()).unwrap_or(u32::MAX),
                    description: t.description.clone(),
                };
                let version = semver::Version::parse(&t.version)
                    .unwrap_or_else(|_| semver::Version::new(0, 0, 0));
                (version, view)
            })
            .collect();
        out.sort_by(|(va, a), (vb, b)| {
            (&a.namespace, &a.name, va).cmp(&(&b.namespace, &b.name, vb))
        });
        out.into_iter().map(|(_, v)| v).collect()
    }
}

/// The step that started a child task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentView {
    /// The parent task.
    pub task_id: TaskId,
    /// The parent step's name.
    pub step: String,
}

/// Counts of a task's steps per state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// All steps.
    pub total: u32,
    /// Pending.
    pub pending: u32,
    /// Claimed and running.
    pub in_progress: u32,
    /// Complete.
    pub complete: u32,
    /// Waiting for a retry.
    pub waiting_for_retry: u32,
    /// Failed for good.
    pub error: u32,
    /// Skipped.
    pub skipped: u32,
    /// Cancelled.
    pub cancelled: u32,
    /// Resolved by an operator.
    pub resolved_manually: u32,
    /// Waiting for the child tasks they started.
    #[serde(default)]
    pub waiting_for_children: u32,
    /// Share of steps finished, 0–100.
    pub percent: f64,
}

impl Progress {
    /// Counts the states.
    pub fn of(states: impl IntoIterator<Item = StepState>) -> Self {
        let mut p = Progress::default();
        for s in states {
            p.total += 1;
            *match s {
                StepState::Pending => &mut p.pending,
                StepState::InProgress => &mut p.in_progress,
                StepState::Complete => &mut p.complete,
                StepState::WaitingForRetry => &mut p.waiting_for_retry,
                StepState::Error => &mut p.error,
                StepState::Skipped => &mut p.skipped,
                StepState::Cancelled => &mut p.cancelled,
                StepState::ResolvedManually => &mut p.resolved_manually,
                StepState::WaitingForChildren => &mut p.waiting_for_children,
            } += 1;
        }
        let finished = p.complete + p.error + p.skipped + p.cancelled + p.resolved_manually;
        p.percent = if p.total == 0 {
            100.0
        } else {
            (f64::from(finished) * 1000.0 / f64::from(p.total)).round() / 10.0
        };
        p
    }
}

/// A parent of a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DependencyView {
    /// The parent's name.
    pub step: String,
    /// Whether the child runs only if the parent succeeded.
    pub requires_success: bool,
}

/// One step of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    /// The step's id.
    pub step_id: StepId,
    /// Its name.
    pub name: String,
    /// Its handler.
    pub handler: String,
    /// Its state.
    pub status: StepState,
    /// Attempts started so far.
    pub attempts: u32,
    /// The attempt budget.
    pub max_attempts: u32,
    /// The result, once complete or resolved.
    pub result: Option<Value>,
    /// The last error message.
    pub error: Option<String>,
    /// Its parents.
    pub depends_on: Vec<DependencyView>,
    /// When the current or last attempt was claimed.
    pub started_at: Option<Timestamp>,
    /// When it finished.
    pub completed_at: Option<Timestamp>,
    /// Milliseconds between the last claim and the finish.
    pub duration_ms: Option<u64>,
    /// When a waiting step may run again.
    pub next_attempt_at: Option<Timestamp>,
    /// Who holds the lease, while running.
    pub lease_owner: Option<String>,
    /// When the lease runs out, while running.
    pub lease_expires_at: Option<Timestamp>,
    /// The step's `type`.
    #[serde(rename = "type", default)]
    pub kind: crate::template::StepKind,
    /// For a decision step that decided, the dependents it chose.
    #[serde(default)]
    pub chosen: Option<Vec<String>>,
    /// Why a skipped step was skipped: `"not chosen"`, `"a required parent failed"` or, for
    /// an instance of a batch worker step, `"another slice failed"`.
    #[serde(default)]
    pub skip_reason: Option<String>,
    /// For an instance of a batch worker step (`worker[3]`), the worker step's name.
    #[serde(default)]
    pub instance_of: Option<String>,
    /// For an instance of a batch worker step, its slice: `{index, start, end}` (and `items`).
    #[serde(default)]
    pub batch: Option<Value>,
    /// The child tasks its handler started, in order.
    #[serde(default)]
    pub children: Option<Vec<TaskId>>,
}

impl TaskView {
    /// The step named `name`.
    pub fn step(&self, name: &str) -> Option<&StepView> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// What a finished child task hands its parent step: an object of its leaf steps'
    /// results by name (the template's steps no other depends on; `null` for one that did not
    /// succeed).
    pub fn leaf_results(&self) -> Value {
        let template = || self.steps.iter().filter(|s| s.instance_of.is_none());
        let parents: std::collections::HashSet<&str> = template()
            .flat_map(|s| s.depends_on.iter().map(|d| d.step.as_str()))
            .collect();
        Value::Object(
            template()
                .filter(|s| !parents.contains(s.name.as_str()))
                .map(|s| {
                    let result = s.result.clone().filter(|_| s.status.is_success());
                    (s.name.clone(), result.unwrap_or(Value::Null))
                })
                .collect(),
        )
    }
}

/// One entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransitionView {
    /// The step's id, or `None` for the task itself.
    pub step_id: Option<StepId>,
    /// The step's name, or `None` for the task itself.
    pub step: Option<String>,
    /// The state before (`None` when the task was created).
    pub from: Option<String>,
    /// The state after.
    pub to: String,
    /// What caused it (`claim`, `fail`, `lease_expired`, …).
    pub event: String,
    /// Why, in words.
    pub reason: Option<String>,
    /// The step's attempt at the time (0 for the task).
    pub attempt: u32,
    /// When.
    pub at: Timestamp,
}

impl From<&Transition> for TransitionView {
    fn from(t: &Transition) -> Self {
        let (step_id, from, to, event) = match t.change {
            Change::Task { from, to, event } => (
                None,
                from.map(|s| s.to_string()),
                to.to_string(),
                event.to_string(),
            ),
            Change::Step {
                index,
                from,
                to,
                event,
            } => (
                Some(StepId {
                    task: t.task_id,
                    index,
                }),
                Some(from.to_string()),
                to.to_string(),
                event.to_string(),
            ),
        };
        TransitionView {
            step_id,
            step: t.step_name.as_deref().map(str::to_owned),
            from,
            to,
            event,
            reason: t.reason.clone(),
            attempt: t.attempt,
            at: t.at,
        }
    }
}

/// Which tasks `list_tasks` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TaskFilter {
    /// Only tasks in this state.
    pub status: Option<TaskState>,
    /// Only tasks of this namespace.
    pub namespace: Option<String>,
    /// Only tasks of this template name.
    pub name: Option<String>,
    /// At most this many (newest first).
    pub limit: usize,
}

impl Default for TaskFilter {
    fn default() -> Self {
        TaskFilter {
            status: None,
            namespace: None,
            name: None,
            limit: 100,
        }
    }
}

/// A task's DAG with each step's state: `graph(id)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphView {
    /// The task.
    pub task_id: TaskId,
    /// The steps with their states, in template order.
    pub nodes: Vec<GraphNode>,
    /// Parent → child edges.
    pub edges: Vec<GraphEdge>,
}

/// A step in a [`GraphView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphNode {
    /// The step's name.
    pub name: String,
    /// Its handler.
    pub handler: String,
    /// Its state.
    pub status: StepState,
    /// For an instance of a batch worker step, the worker step's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_of: Option<String>,
    /// The child tasks the step started, in order (each a graph of its own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<TaskId>,
}

/// An edge in a [`GraphView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphEdge {
    /// The parent's name.
    pub from: String,
    /// The child's name.
    pub to: String,
    /// Whether the child needs the parent to succeed.
    pub requires_success: bool,
}

impl From<&TaskView> for GraphView {
    fn from(task: &TaskView) -> Self {
        GraphView {
            task_id: task.id,
            nodes: task
                .steps
                .iter()
                .map(|s| GraphNode {
                    name: s.name.clone(),
                    handler: s.handler.clone(),
                    status: s.status,
                    instance_of: s.instance_of.clone(),
                    children: s.children.clone().unwrap_or_default(),
                })
                .collect(),
            // An instance of a batch worker step sits between the worker step's parents and the
            // worker step, which finishes when its instances have.
            edges: task
                .steps
                .iter()
                .flat_map(|s| {
                    let into_worker = s.instance_of.iter().map(move |w| GraphEdge {
                        from: s.name.clone(),
                        to: w.clone(),
                        requires_success: true,
                    });
                    s.depends_on
                        .iter()
                        .map(move |d| GraphEdge {
                            from: d.step.clone(),
                            to: s.name.clone(),
                            requires_success: d.requires_success,
                        })
                        .chain(into_worker)
                })
                .collect(),
        }
    }
}

/// What a store holds, counted ([`crate::Engine::stats`]): tasks and steps per status, the
/// retries and lease expiries its trail records, the steps a retry saved, and per handler how
/// long finished steps took.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Tasks per status (statuses with none left out).
    pub tasks: std::collections::BTreeMap<String, u64>,
    /// Steps per status (statuses with none left out).
    pub steps: std::collections::BTreeMap<String, u64>,
    /// Retries scheduled (an attempt failed, or its lease ran out, with attempts left).
    pub retries: u64,
    /// Steps that completed after more than one attempt.
    pub recovered: u64,
    /// Attempts whose lease ran out before their worker reported.
    pub lease_expiries: u64,
    /// Per handler, in handler order: its finished steps' durations.
    pub handlers: Vec<HandlerStats>,
}

/// How long the finished steps (complete or failed for good) of one handler took, each from
/// the start of its last attempt to its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandlerStats {
    /// The handler.
    pub handler: String,
    /// Its finished steps.
    pub finished: u64,
    /// Their mean duration, in milliseconds.
    pub mean_ms: f64,
    /// Their 95th percentile (nearest rank: the smallest duration at least 95% of them do not
    /// exceed), in milliseconds.
    pub p95_ms: u64,
}

impl HandlerStats {
    /// The stats of `handler` from its steps' durations in milliseconds (none: `None`).
    pub fn of(handler: String, mut durations: Vec<u64>) -> Option<HandlerStats> {
        if durations.is_empty() {
            return None;
        }
        durations.sort_unstable();
        let n = durations.len();
        let sum: u128 = durations.iter().map(|&d| u128::from(d)).sum();
        Some(HandlerStats {
            handler,
            finished: n as u64,
            mean_ms: sum as f64 / n as f64,
            p95_ms: durations[p95_rank(n as u64) as usize - 1],
        })
    }
}

/// The 1-based nearest rank of the 95th percentile among `n` values (`n` > 0): ⌈0.95·n⌉ (what
/// the SQL stores compute too).
pub fn p95_rank(n: u64) -> u64 {
    (95 * n).div_ceil(100).max(1)
}

#[cfg(test)]
mod stats_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_p95_is_the_nearest_rank(mut durations in proptest::collection::vec(0u64..10_000, 1..300)) {
            let stats = HandlerStats::of("h".into(), durations.clone()).unwrap();
            durations.sort_unstable();
            let at_most = durations.iter().filter(|&&d| d <= stats.p95_ms).count();
            // At least 95% do not exceed it, and it is one of them: no smaller one would do.
            prop_assert!(at_most * 100 >= 95 * durations.len());
            let below = durations.iter().filter(|&&d| d < stats.p95_ms).count();
            prop_assert!(below * 100 < 95 * durations.len());
            let mean = durations.iter().sum::<u64>() as f64 / durations.len() as f64;
            prop_assert!((stats.mean_ms - mean).abs() < 1e-6);
        }
    }
}
