//! Persistence: one [`Store`] trait of atomic operations, with one implementation per backend.
//!
//! Every operation is atomic: it applies completely or not at all. The decisions inside an
//! operation (which transition, which steps become ready, how long to back off) come from the
//! pure modules [`crate::state`], [`crate::readiness`] and [`crate::retry`]; a store only
//! persists their outcome. Each operation returns the [`Changes`] it made, from which the
//! engine publishes lifecycle events.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::clock::Timestamp;
use crate::error::Result;
use crate::ids::{StepId, TaskId};
use crate::retry::FailureKind;
use crate::state::{TaskState, Transition};
use crate::template::{TaskGraph, TaskTemplate};
use crate::view::{TaskFilter, TaskView, TransitionView};

mod cache;
pub mod memory;
mod record;
pub mod sql;

/// A request to start a task.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// The template's namespace.
    pub namespace: String,
    /// The template's name.
    pub name: String,
    /// The template version; `None` takes the newest.
    pub version: Option<String>,
    /// The task's context, handed to every step. A JSON object by convention.
    pub context: Value,
    /// A second create_task with the same key (for the same template) returns the first task.
    pub idempotency_key: Option<String>,
    /// Higher runs first.
    pub priority: i32,
    /// The step whose handler started this task as a child (set by the engine only: see
    /// [`Children`]; [`crate::Engine::create_task`] refuses a task that names one).
    pub parent: Option<ParentLink>,
    /// Nothing of the task runs before then (`None`: at once).
    pub run_at: Option<Timestamp>,
    /// Nothing of the task runs until this many milliseconds after its creation, by the
    /// engine's clock (the engine turns it into `run_at`; at most one of the two).
    pub delay_ms: Option<u64>,
    /// The caller's W3C trace context: the task's span is a child of it (`None`: the task
    /// starts a trace).
    pub traceparent: Option<String>,
}

/// The step of a parent task that started a child task (see [`Children`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParentLink {
    /// The parent task.
    pub task_id: TaskId,
    /// The parent step's name.
    pub step: String,
    /// The parent step's index in its task.
    pub index: u32,
    /// The attempt of the parent step that started the child (a later attempt starts children
    /// of its own: the earlier ones are cancelled).
    #[serde(default)]
    pub attempt: u32,
    /// The parent task's template-level concurrency key, rendered: a child whose own key is
    /// the same runs under its parent's hold of it and takes no slot of its own (else a parent
    /// at its key's limit would wait for ever for a child that waits for room in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The template-level keys of the parent's own ancestors, rendered, nearest first: they
    /// hold them while the parent runs, so a child whose key is one of them runs under that
    /// hold too, through a parent of another key or of none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub above: Vec<String>,
}

impl ParentLink {
    /// Whether a child of template-level key `key` runs under a hold of it by its parent or
    /// one of the parent's ancestors.
    pub fn holds(&self, key: &str) -> bool {
        self.key.as_deref() == Some(key) || self.above.iter().any(|k| k == key)
    }

    /// The parent step.
    pub fn step_id(&self) -> StepId {
        StepId {
            task: self.task_id,
            index: self.index,
        }
    }
}

/// A task a handler starts as a child of its step (see [`Children`]). As JSON (what the C
/// binding reads): `{"namespace", "name", "context", "version"}`, the last two optional.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildTask {
    /// The template's namespace.
    pub namespace: String,
    /// The template's name.
    pub name: String,
    /// The template version; `None` takes the newest.
    #[serde(default)]
    pub version: Option<String>,
    /// The child's context (`{}` when left out).
    #[serde(default = "empty_object")]
    pub context: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

impl ChildTask {
    /// A child task of the newest version of `namespace/name` with `context`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, context: Value) -> Self {
        ChildTask {
            namespace: namespace.into(),
            name: name.into(),
            version: None,
            context,
        }
    }

    /// Of this template version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }
}

/// What a handler returns to start child tasks, of any template: the step waits
/// (`waiting_for_children`) until every child has finished, then completes with the list of
/// their results in order (each child's result an object of its leaf steps' results by name),
/// or fails for good as soon as one child failed or was cancelled (the others are cancelled
/// then). Cancelling the parent task cancels its children. Each child's view names its parent
/// ([`crate::view::TaskView::parent`]); children have their parent's priority.
///
/// ```
/// use tasker_core::{ChildTask, Children};
/// let children = Children::of((0..3).map(|i| {
///     ChildTask::new("billing", "invoice", serde_json::json!({"customer": i}))
/// }));
/// assert_eq!(children.tasks.len(), 3);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// The tasks to start, at most [`crate::limits::MAX_CHILDREN`].
    pub tasks: Vec<ChildTask>,
}

impl Children {
    /// These child tasks.
    pub fn of(tasks: impl IntoIterator<Item = ChildTask>) -> Self {
        Children {
            tasks: tasks.into_iter().collect(),
        }
    }
}

impl NewTask {
    /// A task of the newest version of `namespace/name`, with an empty context.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        NewTask {
            namespace: namespace.into(),
            name: name.into(),
            version: None,
            context: Value::Object(Default::default()),
            idempotency_key: None,
            priority: 0,
            parent: None,
            run_at: None,
            delay_ms: None,
            traceparent: None,
        }
    }

    /// Continuing the caller's trace (a W3C `traceparent`).
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// Not run before `at`.
    pub fn run_at(mut self, at: Timestamp) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Not run until `delay` after its creation.
    pub fn delay(mut self, delay: std::time::Duration) -> Self {
        self.delay_ms = Some(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// With this context.
    pub fn context(mut self, context: Value) -> Self {
        self.context = context;
        self
    }

    /// With this template version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// With this idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// With this priority (higher first).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
}

/// A request for work.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// Who claims (recorded as the lease owner).
    pub worker_id: Arc<str>,
    /// Only steps with these handler names; `None` takes any.
    pub handlers: Option<Vec<Arc<str>>>,
    /// At most this many steps.
    pub limit: usize,
}

impl ClaimRequest {
    /// Whether steps of `handler` are wanted (any when `handlers` is `None`).
    pub fn wants(&self, handler: &str) -> bool {
        self.handlers
            .as_ref()
            .is_none_or(|h| h.iter().any(|n| &**n == handler))
    }
}

/// The parents' results handed to a step: each parent's name with its result (`null` when the
/// parent did not succeed, which only an edge with `requires_success: false` lets through).
/// A parent that was not chosen by a decision is left out (a `deferred_convergence` step gets
/// the results of the branches that ran).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepInputs(pub Vec<(Arc<str>, Arc<Value>)>);

impl StepInputs {
    /// The result of the parent named `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(n, _)| &**n == name).map(|(_, v)| &**v)
    }

    /// The inputs as one JSON object.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(n, v)| (n.to_string(), (**v).clone()))
                .collect(),
        )
    }

    /// Each parent's name and result.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(n, v)| (&**n, &**v))
    }
}

/// A step handed to a worker, with its lease.
#[derive(Debug, Clone)]
pub struct ClaimedStep {
    /// The step.
    pub step_id: StepId,
    /// The step's name in its template.
    pub name: Arc<str>,
    /// The handler to run.
    pub handler: Arc<str>,
    /// The template's namespace.
    pub namespace: Arc<str>,
    /// The template's name.
    pub task_name: Arc<str>,
    /// This attempt's number, 1-based; it is also the claim's fencing token.
    pub attempt: u32,
    /// The step's attempt budget.
    pub max_attempts: u32,
    /// The task's context.
    pub context: Arc<Value>,
    /// The parents' results.
    pub inputs: StepInputs,
    /// The lease runs out then unless renewed (the worker renews it while the handler runs).
    pub lease_expires_at: Timestamp,
    /// The longest this attempt may run, in milliseconds (the step's `timeout_ms`).
    pub timeout_ms: u64,
    /// The length of the lease and of each renewal, in milliseconds (the step's `lease_ms`).
    pub lease_ms: u64,
    /// The step's `config` from its template (a JSON object, `{}` when none).
    pub config: Arc<Value>,
    /// The custom events the step may publish (its own and its template's), for
    /// [`crate::Engine::publish_event`].
    pub events: Arc<crate::template::DeclaredEvents>,
    /// The step's `type`.
    pub kind: crate::template::StepKind,
    /// The names of the steps that depend on it (what a decision chooses from).
    pub dependents: Arc<[Arc<str>]>,
    /// For an instance of a `batch_worker` step, its slice: `{index, start, end}` and, for a
    /// batch of items, `items`.
    pub batch: Option<Arc<Value>>,
    /// Its task's trace (`None` for a task stored without one): see
    /// [`ClaimedStep::traceparent`].
    pub trace: Option<crate::trace::TaskTrace>,
    /// This attempt's log: see [`ClaimedStep::log`].
    pub logs: crate::logs::StepLog,
}

impl ClaimedStep {
    /// Why this step may not report `reported`, if it may not (see
    /// [`crate::template::output_refusal`]).
    pub fn refusal(&self, reported: crate::template::Reported<'_>) -> Option<String> {
        crate::template::output_refusal(&self.name, self.kind, &self.dependents, reported)
    }

    /// The step's task.
    pub fn task_id(&self) -> TaskId {
        self.step_id.task
    }

    /// Keeps a line of this attempt's log (see [`crate::logs`]), written to the store with the
    /// attempt's report and read with [`crate::Engine::logs`]; whether it was kept (not once
    /// the attempt was reported, nor for a step claimed by hand rather than handed out by a
    /// worker).
    pub fn log(&self, level: crate::logs::LogLevel, message: &str) -> bool {
        self.logs.push(level, message)
    }

    /// This attempt's W3C trace context (its span's): a handler's own spans started under it
    /// are children of the attempt's span.
    pub fn traceparent(&self) -> Option<String> {
        self.trace
            .map(|t| t.attempt_traceparent(self.step_id.index, self.attempt))
    }

    /// The step as the bindings hand it to a handler (its [`serde::Serialize`] form as a JSON
    /// value): step_id, task_id, name, handler, namespace, task_name, attempt, max_attempts,
    /// context, inputs, lease_expires_at, timeout_ms, lease_ms, config, traceparent (null
    /// for a task stored without a trace), and batch for an instance of a batch worker step.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The form the bindings hand to a handler, without copying the context or the inputs.
impl serde::Serialize for ClaimedStep {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Inputs<'a>(&'a StepInputs);
        impl serde::Serialize for Inputs<'_> {
            fn serialize<S: serde::Serializer>(
                &self,
                serializer: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(self.0 .0.len()))?;
                for (name, value) in self.0.iter() {
                    map.serialize_entry(name, value)?;
                }
                map.end()
            }
        }
        // A map, not a struct: every binding's serializer makes string keys of it.
        let mut s = serializer.serialize_map(Some(15 + usize::from(self.batch.is_some())))?;
        s.serialize_entry("step_id", &self.step_id.to_string())?;
        s.serialize_entry("task_id", &self.task_id().to_string())?;
        s.serialize_entry("name", &*self.name)?;
        s.serialize_entry("handler", &*self.handler)?;
        s.serialize_entry("namespace", &*self.namespace)?;
        s.serialize_entry("task_name", &*self.task_name)?;
        s.serialize_entry("attempt", &self.attempt)?;
        s.serialize_entry("max_attempts", &self.max_attempts)?;
        s.serialize_entry("context", &*self.context)?;
        s.serialize_entry("inputs", &Inputs(&self.inputs))?;
        s.serialize_entry("lease_expires_at", &self.lease_expires_at)?;
        s.serialize_entry("timeout_ms", &self.timeout_ms)?;
        s.serialize_entry("lease_ms", &self.lease_ms)?;
        s.serialize_entry("config", &*self.config)?;
        s.serialize_entry("traceparent", &self.traceparent())?;
        if let Some(batch) = &self.batch {
            s.serialize_entry("batch", &**batch)?;
        }
        s.end()
    }
}

/// A failed attempt, as a worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepFailure {
    /// What went wrong.
    pub message: String,
    /// Retryable or permanent.
    pub kind: FailureKind,
}

/// What the handler of a `type: decision` step returns: which of the steps that depend on it
/// run (the others are skipped as not chosen), and the step's own result.
///
/// ```
/// use tasker_core::Decision;
/// let d = Decision::activate(["manager_approval", "finance_review"])
///     .with_result(serde_json::json!({"route": "large"}));
/// assert_eq!(d.steps, ["manager_approval", "finance_review"]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The names of the dependents that run; none is a valid choice.
    pub steps: Vec<String>,
    /// The decision step's result, handed to its children as their input (`null` by default).
    pub result: Value,
}

impl Decision {
    /// A decision that runs `steps`, with a `null` result.
    pub fn activate<S: Into<String>>(steps: impl IntoIterator<Item = S>) -> Self {
        Decision {
            steps: steps.into_iter().map(Into::into).collect(),
            result: Value::Null,
        }
    }

    /// With this result.
    pub fn with_result(mut self, result: Value) -> Self {
        self.result = result;
        self
    }
}

/// What the handler of a `type: batchable` step returns: the work its `batch.worker` step does,
/// one instance per slice of `batch.size` — a list of items, each slice taking its share, or a
/// total, each slice a range of it — and the step's own result.
///
/// ```
/// use tasker_core::Batch;
/// let by_items = Batch::items((0..250).map(serde_json::Value::from).collect());
/// let by_total = Batch::total(10_000).with_result(serde_json::json!({"source": "orders"}));
/// # let _ = (by_items, by_total);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// What the slices share out.
    pub work: BatchWork,
    /// The batchable step's own result (`null` by default).
    pub result: Value,
}

/// What a batch's slices share out.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchWork {
    /// Items: slice `i` takes items `i × size … (i + 1) × size` (`step.batch.items`).
    Items(Vec<Value>),
    /// A total: slice `i` covers `start = i × size` to `end = min(start + size, total)`.
    Total(u64),
}

impl Batch {
    /// A batch of `items`.
    pub fn items(items: Vec<Value>) -> Self {
        Batch {
            work: BatchWork::Items(items),
            result: Value::Null,
        }
    }

    /// A batch of `total` units, sliced into ranges.
    pub fn total(total: u64) -> Self {
        Batch {
            work: BatchWork::Total(total),
            result: Value::Null,
        }
    }

    /// With this result.
    pub fn with_result(mut self, result: Value) -> Self {
        self.result = result;
        self
    }
}

/// What a worker reports about one claimed attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The handler's result.
    Complete(Value),
    /// A decision step's choice and result.
    Decide(Decision),
    /// A batchable step's batch.
    Batch(Batch),
    /// Child tasks to start: the engine starts them and reports [`Outcome::Children`] instead
    /// (a store given this fails the step for good).
    Spawn(Children),
    /// The child tasks started for the step, in order: it waits for them.
    Children(Vec<TaskId>),
    /// The handler's failure.
    Fail(StepFailure),
}

impl Outcome {
    /// What was reported, as the step's `type` sees it (`None`: a failure).
    pub fn reported(&self) -> Option<crate::template::Reported<'_>> {
        use crate::template::Reported;
        match self {
            Outcome::Complete(_) => Some(Reported::Result),
            Outcome::Decide(d) => Some(Reported::Decision(&d.steps)),
            Outcome::Batch(_) => Some(Reported::Batch),
            Outcome::Spawn(_) | Outcome::Children(_) => Some(Reported::Children),
            Outcome::Fail(_) => None,
        }
    }
}

/// One report in a batch (see [`Store::report_many`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// The step.
    pub step: StepId,
    /// The attempt (the claim's fencing token).
    pub attempt: u32,
    /// What happened.
    pub outcome: Outcome,
    /// The lines the attempt logged, written with the report (see [`crate::logs`]).
    pub logs: Vec<crate::logs::LogLine>,
}

impl StepReport {
    /// A report of `outcome` for attempt `attempt` of `step`, with no log lines.
    pub fn new(step: StepId, attempt: u32, outcome: Outcome) -> Self {
        StepReport {
            step,
            attempt,
            outcome,
            logs: Vec::new(),
        }
    }
}

/// What one store operation changed, for the engine to publish.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Every transition recorded, in order.
    pub transitions: Vec<Transition>,
    /// Steps that became claimable (released by parents or resumed).
    pub ready: Vec<(StepId, Arc<str>)>,
    /// What the operation leaves to do on other tasks (the engine does it next).
    pub(crate) knocks: Vec<Knock>,
    /// A step or task let go of a concurrency key: the steps it held back may be claimed.
    pub(crate) freed: bool,
    /// The template-level keys tasks let go of (each a task that held it and finished); the
    /// step keys let go of are read from the transitions (`TaskRecord::lets_go`).
    pub(crate) let_go: Vec<crate::gate::Slot>,
    /// The rate keys' buckets a claim took tokens from, as the store keeps them (the last
    /// entry of a key is its state).
    pub(crate) buckets: Vec<(Arc<str>, crate::gate::Bucket, crate::gate::Rate)>,
    /// The log lines of the attempts reported, for the write.
    pub(crate) logs: Vec<crate::logs::AttemptLog>,
}

impl Changes {
    /// Appends `other`.
    pub fn extend(&mut self, other: Changes) {
        self.transitions.extend(other.transitions);
        self.ready.extend(other.ready);
        self.knocks.extend(other.knocks);
        self.freed |= other.freed;
        self.let_go.extend(other.let_go);
        self.buckets.extend(other.buckets);
        self.logs.extend(other.logs);
    }
}

/// Work an operation on one task leaves for others: each store operation changes one task,
/// and the engine follows these up, each in an operation of its own (a crash in between is
/// made good by [`crate::Engine::tend_children`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Knock {
    /// A child task finished: its parent step may be done.
    ChildEnded(StepId),
    /// These child tasks are not waited for any more (their parent step ended otherwise, or
    /// its task was cancelled): they are cancelled.
    Orphaned(Arc<[TaskId]>),
}

/// How a step's children ended, for [`Store::settle_children`]: their results in order, or
/// why the step fails.
pub type Settled = std::result::Result<Vec<Value>, String>;

/// The result of create_task.
#[derive(Debug, Clone)]
pub struct Created {
    /// The task (the earlier one when the idempotency key was seen before).
    pub task_id: TaskId,
    /// False when an earlier task with the same idempotency key was returned.
    pub created: bool,
    /// What changed.
    pub changes: Changes,
}

/// Work in the store, for idle detection and wake-ups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WorkStatus {
    /// Steps claimable now (approximately: the queue may hold stale entries).
    pub ready: u64,
    /// Steps claimed and not reported.
    pub running: u64,
    /// Steps waiting for a retry.
    pub waiting: u64,
    /// The earliest time something changes by itself: a waiting step becomes claimable or a
    /// lease runs out.
    pub next_due: Option<Timestamp>,
}

impl WorkStatus {
    /// Nothing is ready, running or waiting.
    pub fn is_idle(&self) -> bool {
        self.ready == 0 && self.running == 0 && self.waiting == 0
    }
}

/// The engine's clock as a store reads it when it must take the time only once it holds its
/// locks (a claim's lease starts when the claim is made, not when it was asked for).
pub type Now<'a> = &'a (dyn Fn() -> Timestamp + Send + Sync);

/// What [`Store::report_and_claim`] answers: the reports' results with what they changed, then
/// the steps claimed with what the claim changed (published in that order).
pub type ReportedAndClaimed = ((Vec<Result<()>>, Changes), (Vec<ClaimedStep>, Changes));

/// The atomic operations every backend implements; see the module docs.
///
/// `now` comes from the engine's clock so that time is injectable.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// How far the store's own clock is ahead of `host` (a clock read just now), in
    /// milliseconds, for a store shared by many hosts (PostgreSQL); `None` for the others.
    async fn clock_offset_ms(&self, _host: &dyn crate::clock::Clock) -> Result<Option<i64>> {
        Ok(None)
    }

    /// Applies the schema migrations not yet applied (stores apply them on open too).
    async fn migrate(&self) -> Result<()> {
        Ok(())
    }

    /// Stores a validated template. Registering the same content again is a no-op; different
    /// content under an existing version is [`crate::Error::TemplateConflict`].
    async fn save_template(&self, graph: &TaskGraph) -> Result<()>;

    /// The exact version of `namespace/name` to use: `version` if it exists, else the newest.
    async fn resolve_template_version(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&semver::Version>,
    ) -> Result<semver::Version>;

    /// Every registered template version ([`crate::view::TemplateView::listing`] order).
    async fn templates(&self) -> Result<Vec<crate::view::TemplateView>>;

    /// The template stored under that exact version.
    async fn load_template(
        &self,
        namespace: &str,
        name: &str,
        version: &semver::Version,
    ) -> Result<TaskTemplate>;

    /// Creates a task with all its steps, or returns the task created earlier with the same
    /// idempotency key.
    async fn create_task(
        &self,
        graph: Arc<TaskGraph>,
        task: &NewTask,
        now: Timestamp,
    ) -> Result<Created>;

    /// Creates many tasks (each as [`Store::create_task`] would), in order; stores write them
    /// in as few transactions as they can. An `Err` may leave the earlier ones created.
    async fn create_tasks(
        &self,
        tasks: &[(Arc<TaskGraph>, NewTask)],
        now: Timestamp,
    ) -> Result<Vec<Created>> {
        let mut created = Vec::with_capacity(tasks.len());
        for (graph, task) in tasks {
            created.push(self.create_task(graph.clone(), task, now).await?);
        }
        Ok(created)
    }

    /// Reclaims expired leases, makes due retries claimable, then claims up to `limit` ready
    /// steps (higher task priority first, then oldest) with a lease of each step's `lease_ms`.
    /// The time is read through `now` once the store holds its write lock.
    async fn claim(
        &self,
        request: &ClaimRequest,
        now: Now<'_>,
    ) -> Result<(Vec<ClaimedStep>, Changes)>;

    /// Records the result of a claimed attempt and releases its children.
    /// [`crate::Error::ClaimLost`] when the claim is no longer held.
    async fn complete(
        &self,
        step: StepId,
        attempt: u32,
        result: Value,
        now: Timestamp,
    ) -> Result<Changes> {
        self.report(step, attempt, Outcome::Complete(result), now)
            .await
    }

    /// Records any outcome of a claimed attempt: a result and a failure as
    /// [`Store::complete`] and [`Store::fail`] do; a decision step's choice (the chosen
    /// dependents are released, the others skipped as not chosen); a batchable step's batch
    /// (one instance of its worker step per slice). An outcome the step's `type` does not allow
    /// (a decision naming a step not depending on it, a plain result from a decision step, …)
    /// is recorded as a permanent failure of the step. [`crate::Error::ClaimLost`] when the
    /// claim is no longer held.
    async fn report(
        &self,
        step: StepId,
        attempt: u32,
        outcome: Outcome,
        now: Timestamp,
    ) -> Result<Changes>;

    /// Records a failed attempt: a retry after backoff, or a failure for good that skips the
    /// dependents that required it.
    async fn fail(
        &self,
        step: StepId,
        attempt: u32,
        failure: &StepFailure,
        now: Timestamp,
    ) -> Result<Changes> {
        self.report(step, attempt, Outcome::Fail(failure.clone()), now)
            .await
    }

    /// Records many reports at once, each accepted or refused on its own (a refused one, e.g.
    /// [`crate::Error::ClaimLost`], does not undo the others). SQL stores write the whole batch
    /// in one transaction; an `Err` means none was recorded. A store keeps each report's log
    /// lines with it ([`StepReport::logs`]); this default, made of [`Store::report`], has
    /// nowhere to put them and drops them (every store here overrides it).
    async fn report_many(
        &self,
        reports: Vec<StepReport>,
        now: Timestamp,
    ) -> Result<(Vec<Result<()>>, Changes)> {
        let mut results = Vec::with_capacity(reports.len());
        let mut changes = Changes::default();
        for r in reports {
            let done = self.report(r.step, r.attempt, r.outcome, now).await;
            match done {
                Ok(c) => {
                    changes.extend(c);
                    results.push(Ok(()));
                }
                Err(e @ crate::Error::Store(_)) => return Err(e),
                Err(e) => results.push(Err(e)),
            }
        }
        Ok((results, changes))
    }

    /// Records a batch of reports (as [`Store::report_many`]), then claims (as
    /// [`Store::claim`]), the claim also taking the steps those reports made ready: SQL stores
    /// do both in one transaction. An `Err` means neither was done.
    async fn report_and_claim(
        &self,
        reports: Vec<StepReport>,
        request: &ClaimRequest,
        now: Now<'_>,
    ) -> Result<ReportedAndClaimed> {
        let reported = self.report_many(reports, now()).await?;
        // The reports are recorded: a failed claim now is an empty one.
        let claimed = match self.claim(request, now).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::debug!(error = %e, "claim after reports failed; claiming next time");
                (Vec::new(), Changes::default())
            }
        };
        Ok((reported, claimed))
    }

    /// The holder of a claimed attempt gives the step back unfinished: pending again, the
    /// attempt not counted. [`crate::Error::ClaimLost`] when the claim is no longer held.
    async fn release(&self, step: StepId, attempt: u32, now: Timestamp) -> Result<Changes>;

    /// Extends the lease of a claimed attempt by the step's `lease_ms`; returns the new expiry.
    /// Accepted from the holder even after the lease ran out, until another worker reclaims it.
    async fn heartbeat(&self, step: StepId, attempt: u32, now: Timestamp) -> Result<Timestamp>;

    /// Gives back every step whose lease has expired (the attempt counts as a retryable failure).
    async fn reclaim_expired(&self, now: Timestamp) -> Result<Changes>;

    /// Cancels the task and its unfinished steps.
    async fn cancel_task(&self, task: TaskId, now: Timestamp) -> Result<Changes>;

    /// Stops handing out the task's steps; running ones may still report.
    async fn pause_task(&self, task: TaskId, now: Timestamp) -> Result<Changes>;

    /// Hands out the task's steps again.
    async fn resume_task(&self, task: TaskId, now: Timestamp) -> Result<Changes>;

    /// Gives the failed (and thereby skipped) steps of a failed task a fresh attempt budget.
    async fn retry_task(&self, task: TaskId, now: Timestamp) -> Result<Changes>;

    /// An operator supplies the result of a step that has not completed.
    async fn resolve_step(&self, step: StepId, result: Value, now: Timestamp) -> Result<Changes>;

    /// Ends step `step` waiting for exactly `children` (else nothing is done): completed with
    /// their results, or failed for good with the message.
    async fn settle_children(
        &self,
        step: StepId,
        children: &[TaskId],
        settled: Settled,
        now: Timestamp,
    ) -> Result<Changes>;

    /// Deletes the tasks that finished (in one of `statuses`, each a finished state) before
    /// `finished_before`, with their steps and transitions; how many.
    async fn purge(&self, finished_before: Timestamp, statuses: &[TaskState]) -> Result<u64>;

    /// Registers schedule `spec` (replacing one of its name) with its next tick.
    async fn save_schedule(
        &self,
        spec: &crate::schedule::ScheduleSpec,
        next_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<()>;

    /// Removes schedule `name`; whether there was one.
    async fn delete_schedule(&self, name: &str) -> Result<bool>;

    /// The schedules whose next tick is at or before `due_by` (`None`: all), by name.
    async fn schedules(
        &self,
        due_by: Option<Timestamp>,
    ) -> Result<Vec<crate::schedule::ScheduleView>>;

    /// Moves schedule `name` from tick `from` on to `to`, recording `last_task` (unless
    /// `None`) — only if its next tick is still `from`, as no other engine moved it first;
    /// whether it did.
    async fn advance_schedule(
        &self,
        name: &str,
        from: Timestamp,
        to: Option<Timestamp>,
        last_task: Option<TaskId>,
        now: Timestamp,
    ) -> Result<bool>;

    /// The state of each of the tasks `ids` that exists, in id order.
    async fn task_states(&self, ids: &[TaskId]) -> Result<Vec<(TaskId, TaskState)>>;

    /// Up to `limit` steps waiting for children, those after `after` in (task, index) order.
    async fn waiting_for_children(
        &self,
        after: Option<StepId>,
        limit: usize,
    ) -> Result<Vec<StepId>>;

    /// Up to `limit` unfinished tasks that have a parent, each with its parent step, those
    /// after `after` in id order.
    async fn open_children(
        &self,
        after: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<(TaskId, ParentLink)>>;

    /// The step of `task` named `name`.
    async fn step_id(&self, task: TaskId, name: &str) -> Result<StepId>;

    /// A task with its steps.
    async fn task(&self, task: TaskId) -> Result<TaskView>;

    /// Tasks matching the filter, newest first.
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskView>>;

    /// The task's audit trail, oldest first.
    async fn transitions(&self, task: TaskId) -> Result<Vec<TransitionView>>;

    /// The lines its attempts logged (see [`crate::logs`]), of step `step` (by index) only
    /// when given: by step, attempt and line.
    async fn logs(&self, task: TaskId, step: Option<u32>) -> Result<Vec<crate::logs::LogView>>;

    /// The steps claimable now, counted per handler, in handler order (handlers with none
    /// left out).
    async fn ready_by_handler(&self, now: Timestamp) -> Result<Vec<(String, u64)>>;

    /// Leases up to `limit` due webhook deliveries to `owner` (see [`crate::webhooks`]):
    /// pending ones whose attempt is due and delivering ones whose lease ran out, oldest
    /// first, each for [`crate::webhooks::Webhook::lease_ms`].
    async fn claim_deliveries(
        &self,
        owner: &str,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<crate::webhooks::Delivery>>;

    /// Records how attempt `attempt` of delivery `id` ended — only while that attempt still
    /// holds its lease; whether it did.
    async fn settle_delivery(
        &self,
        id: &str,
        attempt: u32,
        settled: &crate::webhooks::Settlement,
        now: Timestamp,
    ) -> Result<bool>;

    /// Task `task`'s webhook deliveries, oldest first.
    async fn webhook_deliveries(&self, task: TaskId) -> Result<Vec<crate::webhooks::DeliveryView>>;

    /// What the store holds, counted (see [`crate::view::Stats`]).
    async fn stats(&self) -> Result<crate::view::Stats>;

    /// What work there is; `ready` counts only steps of `handlers` (all when `None`).
    async fn work_status(
        &self,
        handlers: Option<&[Arc<str>]>,
        now: Timestamp,
    ) -> Result<WorkStatus>;
}

/// Whether `room` has room for claiming step `index` of `t` (taken if so; the buckets it
/// took tokens from are kept in `c`, for the write).
pub(crate) fn admitted(
    t: &record::TaskRecord,
    index: u32,
    room: &mut crate::gate::Room,
    c: &mut Changes,
) -> bool {
    let wants = t.wants(index);
    if wants.is_empty() {
        return true;
    }
    if !room.admit(&wants) {
        return false;
    }
    for w in &wants {
        if let (crate::gate::Slot::Rate(key), crate::gate::Bound::Rate(rate)) = (&w.slot, w.bound) {
            if let Some(b) = room.taken_from(key) {
                c.buckets.push((key.clone(), b, rate));
            }
        }
    }
    true
}
