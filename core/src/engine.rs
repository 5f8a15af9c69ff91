//! The public façade: an [`Engine`] owns a store, the event bus, the clock and the compiled
//! template cache, and offers every verb of the shared API.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use semver::Version;
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::clock::{Clock, SystemClock, Timestamp};
use crate::error::{Error, Result};
use crate::events::{names, Event, EventBus, Subscription};
use crate::ids::{StepId, TaskId};
use crate::limits;
use crate::state::{Change, StepEvent, TaskEvent, Transition};
use crate::store::memory::MemoryStore;
use crate::store::sql;
use crate::store::{
    Changes, ClaimRequest, ClaimedStep, NewTask, Outcome, StepFailure, StepReport, Store,
    WorkStatus,
};
use crate::template::{TaskGraph, TaskTemplate};
use crate::view::{GraphView, TaskFilter, TaskView, TransitionView};

mod children;
mod deliveries;
mod schedules;
pub(crate) use children::TEND_EVERY;
pub(crate) use deliveries::DELIVER_EVERY;
pub(crate) use schedules::SCHEDULE_EVERY;

/// The URL an engine opens when none is given.
pub const DEFAULT_URL: &str = "sqlite://tasker.db";

/// The orchestration engine. Cheap to clone: clones share one engine.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use tasker_core::{Engine, NewTask};
/// let engine = Engine::open("memory:").await?;
/// engine.register_template_str("namespace: n\nname: t\nversion: 1.0.0\nsteps: [{name: only}]").await?;
/// let id = engine.create_task(NewTask::new("n", "t")).await?;
/// assert_eq!(engine.task(id).await?.steps[0].name, "only");
/// # Ok::<_, tasker_core::Error>(()) }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

#[derive(Debug)]
struct EngineInner {
    store: Arc<dyn Store>,
    bus: EventBus,
    clock: Arc<dyn Clock>,
    graphs: RwLock<HashMap<(String, String, Version), Arc<TaskGraph>>>,
    work: Arc<Notify>,
    closed: AtomicBool,
    /// Follow-ups running on tasks of their own (see [`Engine::is_following_up`]).
    following: std::sync::atomic::AtomicUsize,
    /// Where the next [`Engine::tend_children`] goes on from (each looks at a bounded page).
    tend_from: parking_lot::Mutex<(Option<StepId>, Option<TaskId>)>,
    /// On a store with its own clock (PostgreSQL) and a wall clock: how far the store's clock
    /// is ahead of ours, in milliseconds, measured at open and every [`CLOCK_CHECK`].
    clock_offset_ms: std::sync::atomic::AtomicI64,
    /// Whose template overrides apply.
    environment: Option<String>,
    /// What [`Engine::metrics`] reports (`None` when opened without metrics).
    metrics: Option<crate::metrics::Metrics>,
    /// Where spans go (`None` when no OTLP endpoint is configured).
    spans: Option<crate::trace::Spans>,
    /// Opened with `allow_private_webhooks`: the address guard is off.
    allow_private_webhooks: bool,
    /// The webhook client (made on first use), or why it could not be made.
    sender: std::sync::OnceLock<std::result::Result<crate::webhooks::Sender, String>>,
    /// The lease owner of the deliveries this engine sends.
    deliverer: String,
    /// A task sends deliveries now; another look was asked for meanwhile.
    delivering: AtomicBool,
    deliver_again: AtomicBool,
    /// Worker sessions running on this engine (they send deliveries).
    deliverers: std::sync::atomic::AtomicUsize,
}

/// A worker session running on an engine (see [`Engine::deliverer`]).
pub(crate) struct Deliverer(Engine);

impl Drop for Deliverer {
    fn drop(&mut self) {
        self.0.inner.deliverers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A template registered from a document in any format: its compiled graph, the format it
/// was written in, and what of it was not used.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The compiled template.
    pub graph: Arc<TaskGraph>,
    /// The format detected.
    pub format: crate::template::Format,
    /// Each key of a foreign format that means nothing here, naming it.
    pub warnings: Vec<String>,
}

impl Registered {
    /// What the bindings' `register_template` returns: `{namespace, name, version, steps:
    /// [step names], handlers: [handler names, each once], format: "native" | "rails" |
    /// "tasker_core", warnings: [...]}`.
    pub fn summary(&self) -> Value {
        let g = &self.graph;
        let steps: Vec<&str> = g.steps().iter().map(|s| &*s.name).collect();
        let mut handlers: Vec<&str> = Vec::new();
        for s in g.steps() {
            if !handlers.contains(&&*s.handler) {
                handlers.push(&s.handler);
            }
        }
        serde_json::json!({
            "namespace": g.namespace(),
            "name": g.name(),
            "version": g.version().to_string(),
            "steps": steps,
            "handlers": handlers,
            "format": self.format.as_str(),
            "warnings": self.warnings,
        })
    }
}

/// How often an engine on PostgreSQL measures its host clock against the database's.
pub const CLOCK_CHECK: Duration = Duration::from_secs(60);

/// Builds an [`Engine`] with a chosen store URL, store or clock.
#[derive(Default)]
pub struct EngineBuilder {
    url: Option<String>,
    store: Option<Arc<dyn Store>>,
    wrap: Option<StoreWrapper>,
    clock: Option<Arc<dyn Clock>>,
    environment: Option<String>,
    /// Opened with `metrics(false)`.
    without_metrics: bool,
    /// Where to export spans (see [`EngineBuilder::otlp_endpoint`]).
    otlp_endpoint: Option<String>,
    /// Opened with `allow_private_webhooks(true)`.
    allow_private_webhooks: bool,
}

/// The options of [`Engine::open_with`], as the bindings' constructors take them (and C's
/// `tc_engine_open_json`, as a JSON object of these fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OpenOptions {
    /// Whose template overrides apply (see [`EngineBuilder::environment`]).
    pub environment: Option<String>,
    /// Where to export spans (see [`EngineBuilder::otlp_endpoint`]).
    pub otlp_endpoint: Option<String>,
    /// Whether to keep metrics (`None`: yes; see [`EngineBuilder::metrics`]).
    pub metrics: Option<bool>,
    /// Whether webhooks may go to private addresses (`None`: no; see
    /// [`EngineBuilder::allow_private_webhooks`]).
    pub allow_private_webhooks: Option<bool>,
}

/// What [`EngineBuilder::wrap_store`] takes.
type StoreWrapper = Box<dyn FnOnce(Arc<dyn Store>) -> Arc<dyn Store> + Send>;

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("url", &self.url)
            .field("store", &self.store)
            .field("wrapped", &self.wrap.is_some())
            .field("clock", &self.clock)
            .field("environment", &self.environment)
            .finish()
    }
}

impl EngineBuilder {
    /// The store to open: `memory:`, `sqlite://path` (default: `sqlite://tasker.db`),
    /// `postgres://user@host/db`.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// A store built by the caller (takes precedence over the URL).
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Wraps the store the engine opens in one of the caller's (instrumentation, fault
    /// injection in tests), which must delegate every operation it does not change.
    pub fn wrap_store(
        mut self,
        wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store> + Send + 'static,
    ) -> Self {
        self.wrap = Some(Box::new(wrap));
        self
    }

    /// The clock (default: the system clock); tests pass a [`crate::ManualClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The environment whose overrides (`environments.<env>` in a template) apply to the
    /// templates this engine registers; without one, `TASKER_ENV`, then `RAILS_ENV`, else none.
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = Some(environment.into());
        self
    }

    /// Whether the engine keeps the counters and histograms of [`Engine::metrics`] (default:
    /// yes; without them `metrics()` reports only the store's ready steps).
    pub fn metrics(mut self, on: bool) -> Self {
        self.without_metrics = !on;
        self
    }

    /// Exports spans over OTLP (HTTP, protobuf) to `endpoint`, a base URL such as
    /// `http://collector:4318` (spans go to `<endpoint>/v1/traces`). Without it, the engine
    /// exports where `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// say, and not at all when neither is set (or `OTEL_SDK_DISABLED=true`,
    /// `OTEL_TRACES_EXPORTER=none`). See `docs/signals.md`.
    pub fn otlp_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.otlp_endpoint = Some(endpoint.into());
        self
    }

    /// Whether this engine sends webhooks to loopback, private, link-local and metadata
    /// addresses (default: no, they are refused: see [`crate::webhooks`]) — for a receiver on
    /// this machine or the private network, in development and tests.
    pub fn allow_private_webhooks(mut self, allow: bool) -> Self {
        self.allow_private_webhooks = allow;
        self
    }

    /// Opens the store and returns the engine.
    pub async fn build(self) -> Result<Engine> {
        let work = Arc::new(Notify::new());
        let store = match self.store {
            Some(store) => store,
            None => open_store(self.url.as_deref().unwrap_or(DEFAULT_URL), work.clone()).await?,
        };
        let store = match self.wrap {
            Some(wrap) => wrap(store),
            None => store,
        };
        let clock: Arc<dyn Clock> = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let endpoint = self.otlp_endpoint.as_deref();
        let spans = if crate::trace::wanted(endpoint) {
            Some(crate::trace::Spans::open(endpoint)?)
        } else {
            None
        };
        // Leases and the reaper on a shared database follow the database's clock, not each
        // host's: a host whose clock runs ahead must not reclaim live leases.
        let offset = if clock.is_wall_clock() {
            store.clock_offset_ms(clock.as_ref()).await?
        } else {
            None
        };
        let engine = Engine {
            inner: Arc::new(EngineInner {
                store,
                bus: EventBus::new(),
                clock,
                graphs: RwLock::new(HashMap::new()),
                work,
                closed: AtomicBool::new(false),
                following: std::sync::atomic::AtomicUsize::new(0),
                tend_from: parking_lot::Mutex::new((None, None)),
                clock_offset_ms: std::sync::atomic::AtomicI64::new(offset.unwrap_or(0)),
                environment: self.environment.or_else(environment_from_env),
                metrics: (!self.without_metrics).then(crate::metrics::Metrics::new),
                spans,
                allow_private_webhooks: self.allow_private_webhooks,
                sender: std::sync::OnceLock::new(),
                deliverer: crate::worker::default_worker_id("webhooks"),
                delivering: AtomicBool::new(false),
                deliver_again: AtomicBool::new(false),
                deliverers: std::sync::atomic::AtomicUsize::new(0),
            }),
        };
        if offset.is_some() {
            let inner = Arc::downgrade(&engine.inner);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(CLOCK_CHECK).await;
                    let Some(inner) = inner.upgrade() else { return };
                    if inner.closed.load(Ordering::Acquire) {
                        return;
                    }
                    match inner.store.clock_offset_ms(inner.clock.as_ref()).await {
                        Ok(Some(ms)) => inner.clock_offset_ms.store(ms, Ordering::Relaxed),
                        Ok(None) => return,
                        Err(e) => tracing::warn!(error = %e, "could not read the database's clock"),
                    }
                }
            });
        }
        Ok(engine)
    }
}

/// The environment named by `TASKER_ENV`, else `RAILS_ENV` (blank values count as unset).
fn environment_from_env() -> Option<String> {
    ["TASKER_ENV", "RAILS_ENV"]
        .iter()
        .filter_map(|var| std::env::var(var).ok())
        .find(|v| !v.trim().is_empty())
}

async fn open_store(url: &str, waker: Arc<Notify>) -> Result<Arc<dyn Store>> {
    let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or(url);
    match scheme {
        "memory" => Ok(Arc::new(MemoryStore::new())),
        "sqlite" | "postgres" | "postgresql" => sql::open(url, waker).await,
        _ => Err(Error::InvalidArgument(format!(
            "unknown store URL {url:?}: expected \"memory:\", \"sqlite://path\" or \"postgres://…\""
        ))),
    }
}

impl Engine {
    /// Opens an engine on the store named by `url`.
    pub async fn open(url: &str) -> Result<Engine> {
        Engine::builder().url(url).build().await
    }

    /// [`Engine::open`] in `environment` (see [`EngineBuilder::environment`]; `None`:
    /// `TASKER_ENV`, then `RAILS_ENV`).
    pub async fn open_in(url: &str, environment: Option<String>) -> Result<Engine> {
        Engine::open_with(
            url,
            OpenOptions {
                environment,
                ..OpenOptions::default()
            },
        )
        .await
    }

    /// Opens an engine on `url` with `options` (what the bindings' constructors take).
    pub async fn open_with(url: &str, options: OpenOptions) -> Result<Engine> {
        let mut builder = Engine::builder()
            .url(url)
            .metrics(options.metrics.unwrap_or(true));
        if let Some(env) = options.environment {
            builder = builder.environment(env);
        }
        if let Some(endpoint) = options.otlp_endpoint {
            builder = builder.otlp_endpoint(endpoint);
        }
        if let Some(allow) = options.allow_private_webhooks {
            builder = builder.allow_private_webhooks(allow);
        }
        builder.build().await
    }

    /// A builder, for a custom clock or store.
    pub fn builder() -> EngineBuilder {
        EngineBuilder::default()
    }

    /// The event bus.
    pub fn bus(&self) -> &EventBus {
        &self.inner.bus
    }

    /// The engine's current time, to the millisecond (what the SQL stores keep; a custom
    /// [`Clock`] with finer times is truncated, so that a task reads the same from memory and
    /// from its rows).
    pub fn now(&self) -> Timestamp {
        use chrono::SubsecRound;
        let now = self.inner.clock.now().trunc_subsecs(3);
        match self.inner.clock_offset_ms.load(Ordering::Relaxed) {
            0 => now,
            ms => crate::clock::add_signed_ms(now, ms),
        }
    }

    fn store(&self) -> Result<&dyn Store> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(&*self.inner.store)
    }

    /// Applies the store's schema migrations that are not applied yet. [`Engine::open`] does
    /// this already; call it to migrate a shared database explicitly (e.g. before a deploy).
    pub async fn migrate(&self) -> Result<()> {
        self.store()?.migrate().await
    }

    /// Validates and stores a template; returns its compiled graph.
    pub async fn register_template(&self, template: &TaskTemplate) -> Result<Arc<TaskGraph>> {
        let graph = Arc::new(template.compile()?);
        template.check_new()?;
        self.store()?.save_template(&graph).await?;
        let key = (
            graph.namespace().to_owned(),
            graph.name().to_owned(),
            graph.version().clone(),
        );
        self.inner.graphs.write().insert(key, graph.clone());
        Ok(graph)
    }

    /// [`Engine::register_template`] from YAML or JSON text, in any of the formats
    /// [`Engine::register_document`] reads.
    pub async fn register_template_str(&self, text: &str) -> Result<Arc<TaskGraph>> {
        Ok(self.register_document_str(text).await?.graph)
    }

    /// [`Engine::register_template`] from a JSON value (a dict / Hash in the bindings), in any
    /// of the formats [`Engine::register_document`] reads.
    pub async fn register_template_value(&self, value: Value) -> Result<Arc<TaskGraph>> {
        Ok(self.register_document(value).await?.graph)
    }

    /// Registers a template written in this engine's format, the Rails Tasker engine's or
    /// tasker-core's (detected by its keys, see [`crate::template::foreign`]), with the
    /// overrides of this engine's environment applied. Keys of the foreign formats that mean
    /// nothing here come back as warnings (and are logged); the native format stays strict.
    pub async fn register_document(&self, document: Value) -> Result<Registered> {
        let loaded = crate::template::foreign::load(document, self.environment())?;
        self.register_loaded(loaded).await
    }

    /// [`Engine::register_document`] from YAML or JSON text.
    pub async fn register_document_str(&self, text: &str) -> Result<Registered> {
        use crate::template::{foreign, Format, Loaded};
        let document = TaskTemplate::document(text)?;
        let loaded =
            if Format::of(&document) == Format::Native && document.get("environments").is_none() {
                // Read from the text: a mistake is reported with its line and column.
                Loaded {
                    template: TaskTemplate::parse(text)?,
                    format: Format::Native,
                    warnings: Vec::new(),
                }
            } else {
                foreign::load(document, self.environment())?
            };
        self.register_loaded(loaded).await
    }

    async fn register_loaded(&self, loaded: crate::template::Loaded) -> Result<Registered> {
        let graph = self.register_template(&loaded.template).await?;
        for warning in &loaded.warnings {
            tracing::warn!(template = %format!("{}/{}", graph.namespace(), graph.name()), "{warning}");
        }
        Ok(Registered {
            graph,
            format: loaded.format,
            warnings: loaded.warnings,
        })
    }

    /// The handler names of every template this engine has registered or read, each once,
    /// sorted (what a worker that loads handler classes by name looks up).
    pub fn registered_handlers(&self) -> Vec<String> {
        let graphs = self.inner.graphs.read();
        let names: std::collections::BTreeSet<&str> = graphs
            .values()
            .flat_map(|g| g.steps().iter().map(|s| &*s.handler))
            .collect();
        names.into_iter().map(str::to_owned).collect()
    }

    /// The environment whose template overrides apply (see [`EngineBuilder::environment`]).
    pub fn environment(&self) -> Option<&str> {
        self.inner.environment.as_deref()
    }

    /// Every template version registered in the store, by namespace, name and version.
    pub async fn templates(&self) -> Result<Vec<crate::view::TemplateView>> {
        self.store()?.templates().await
    }

    /// The compiled graph of `namespace/name` at `version` (newest when `None`).
    pub async fn template(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<TaskGraph>> {
        let store = self.store()?;
        let version = version
            .map(|v| {
                Version::parse(v).map_err(|e| {
                    Error::InvalidArgument(format!("invalid template version {v:?}: {e}"))
                })
            })
            .transpose()?;
        if let Some(v) = &version {
            let key = (namespace.to_owned(), name.to_owned(), v.clone());
            if let Some(graph) = self.inner.graphs.read().get(&key) {
                return Ok(graph.clone());
            }
        }
        let version = store
            .resolve_template_version(namespace, name, version.as_ref())
            .await?;
        let key = (namespace.to_owned(), name.to_owned(), version);
        if let Some(graph) = self.inner.graphs.read().get(&key) {
            return Ok(graph.clone());
        }
        let template = store.load_template(namespace, name, &key.2).await?;
        let graph = Arc::new(template.compile()?);
        self.inner.graphs.write().insert(key, graph.clone());
        Ok(graph)
    }

    /// Starts a task; with an idempotency key seen before, returns the earlier task's id, or
    /// [`Error::IdempotencyConflict`] when that task has another context (or, when `version` is
    /// given, another version). The context is checked against [`crate::limits`] first.
    pub async fn create_task(&self, task: NewTask) -> Result<TaskId> {
        let task = self.started(task)?;
        Self::refuse_engine_fields(&task)?;
        Ok(self.create_checked(task).await?.0)
    }

    /// Creates `task` (checked against the limits and its template, not for what only the
    /// engine may set): its id, and whether it is new (not an earlier task with its key).
    async fn create_checked(&self, task: NewTask) -> Result<(TaskId, bool)> {
        let graph = self.checked(&task).await?;
        let created = self.store()?.create_task(graph, &task, self.now()).await?;
        if !created.created {
            self.same_task(created.task_id, &task).await?;
        }
        self.publish(created.changes).await;
        Ok((created.task_id, created.created))
    }

    /// Starts many tasks at once; their ids, in order. Each is checked as [`Engine::create_task`]
    /// checks it, all before any is written; the SQL stores write those without an idempotency
    /// key in one transaction (a commit per 500), so a batch costs about what one task does.
    /// Keyed ones are created one by one; an [`Error::IdempotencyConflict`] among them leaves
    /// the others of the batch created.
    pub async fn create_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<TaskId>> {
        let mut batch = Vec::with_capacity(tasks.len());
        for task in tasks {
            let task = self.started(task)?;
            Self::refuse_engine_fields(&task)?;
            batch.push((self.checked(&task).await?, task));
        }
        let created = self.store()?.create_tasks(&batch, self.now()).await?;
        let mut ids = Vec::with_capacity(created.len());
        let mut conflict = None;
        for (created, (_, task)) in created.into_iter().zip(&batch) {
            if !created.created && conflict.is_none() {
                if let Err(e) = self.same_task(created.task_id, task).await {
                    conflict = Some(e);
                }
            }
            self.publish(created.changes).await;
            ids.push(created.task_id);
        }
        match conflict {
            Some(e) => Err(e),
            None => Ok(ids),
        }
    }

    /// `task` with its `delay_ms` turned into its `run_at`, by this engine's clock;
    /// [`Error::InvalidArgument`] when it has both.
    fn started(&self, mut task: NewTask) -> Result<NewTask> {
        if let Some(delay) = task.delay_ms.take() {
            if task.run_at.is_some() {
                return Err(Error::InvalidArgument(
                    "a task takes run_at or delay, not both".to_owned(),
                ));
            }
            task.run_at = Some(crate::clock::add_ms(self.now(), delay));
        }
        Ok(task)
    }

    /// [`Error::InvalidArgument`] when a caller's `task` sets what only the engine sets: a
    /// parent, an idempotency key of the engine's own (child or scheduled tasks).
    fn refuse_engine_fields(task: &NewTask) -> Result<()> {
        if task.parent.is_some() {
            return Err(Error::InvalidArgument(
                "a task's parent is set by the engine only: return Children from a handler"
                    .to_owned(),
            ));
        }
        let kept = [
            (children::CHILD_KEY_PREFIX, "child tasks"),
            (crate::schedule::SCHEDULE_KEY_PREFIX, "scheduled tasks"),
        ];
        if let Some(key) = task.idempotency_key.as_deref() {
            if let Some((prefix, whose)) = kept.iter().find(|(p, _)| key.starts_with(p)) {
                return Err(Error::InvalidArgument(format!(
                    "the idempotency key {key:?} starts with {prefix:?}, which the engine keeps for {whose}"
                )));
            }
        }
        Ok(())
    }

    /// `task` within the limits ([`crate::limits`]), and its template's graph.
    async fn checked(&self, task: &NewTask) -> Result<Arc<TaskGraph>> {
        limits::check_json(&task.context, "the context")?;
        if let Some(key) = &task.idempotency_key {
            limits::check_idempotency_key(key)?;
        }
        if let Some(traceparent) = &task.traceparent {
            crate::trace::parse_traceparent(traceparent)
                .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        }
        let graph = self
            .template(&task.namespace, &task.name, task.version.as_deref())
            .await?;
        let failures = graph.context_errors(&task.context);
        if !failures.is_empty() {
            return Err(Error::InvalidContext {
                template: format!("{}/{}", graph.namespace(), graph.name()),
                failures,
            });
        }
        Ok(graph)
    }

    /// [`Error::IdempotencyConflict`] unless the earlier task `id` (returned for `task`'s
    /// idempotency key) has `task`'s context (and its version, when `task` names one).
    async fn same_task(&self, id: TaskId, task: &NewTask) -> Result<()> {
        let earlier = self.task(id).await?;
        let other_version = task.version.as_ref().is_some_and(|v| *v != earlier.version);
        if earlier.context != task.context || other_version {
            return Err(Error::IdempotencyConflict {
                key: task.idempotency_key.clone().unwrap_or_default(),
                task: id,
            });
        }
        Ok(())
    }

    /// Claims up to `request.limit` ready steps, each with a lease of its `lease_ms` that
    /// starts once the store holds its write lock.
    pub async fn claim(&self, request: &ClaimRequest) -> Result<Vec<ClaimedStep>> {
        limits::check_claim_limit(request.limit)?;
        let now = || self.now();
        let (claimed, changes) = self.store()?.claim(request, &now).await?;
        self.publish(changes).await;
        Ok(claimed)
    }

    /// [`Engine::claim`], waiting up to `wait` for a step when none is ready (woken by work made
    /// ready in this process or, on PostgreSQL, by any engine; otherwise looking again every
    /// 50 ms). What the bindings' blocking `claim` calls.
    pub async fn claim_waiting(
        &self,
        request: &ClaimRequest,
        wait: Duration,
    ) -> Result<Vec<ClaimedStep>> {
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(crate::clock::at_most_a_century(wait))
            .unwrap_or(now);
        loop {
            let claimed = self.claim(request).await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !claimed.is_empty() || left.is_zero() {
                return Ok(claimed);
            }
            self.wait_for_work(left.min(Duration::from_millis(50)))
                .await;
        }
    }

    /// Reports a claimed attempt's result. Refused with [`Error::ClaimLost`] when the claim is no
    /// longer held (lease expired, task cancelled, step resolved).
    /// A result past [`crate::limits`] is refused with [`Error::InvalidArgument`] (nothing is
    /// recorded; the claim is still held).
    pub async fn complete(&self, step: StepId, attempt: u32, result: Value) -> Result<()> {
        self.report(step, attempt, result).await
    }

    /// Reports what a handler returned for a claimed attempt: a result (as
    /// [`Engine::complete`]), a decision step's [`crate::Decision`] (the steps it names run, its
    /// other dependents are skipped as not chosen) or a batchable step's [`crate::Batch`] (its
    /// worker step runs once per slice). An output the step's `type` does not allow fails the
    /// step for good. Refused like [`Engine::complete`] when the claim is lost or the output is
    /// past the limits.
    pub async fn report(
        &self,
        step: StepId,
        attempt: u32,
        output: impl Into<crate::HandlerOutput>,
    ) -> Result<()> {
        let outcome = Outcome::from(output.into());
        limits::check_outcome(&outcome)?;
        let outcome = self.spawned(step, attempt, outcome).await?;
        let reported = self
            .store()?
            .report(step, attempt, outcome.clone(), self.now())
            .await;
        let changes = match (reported, outcome) {
            (Ok(changes), _) => changes,
            (Err(e), Outcome::Children(ids)) if children::is_refusal(&e) => {
                // The children made for a report that was refused are not waited for (after a
                // store failure the report may be made again, and finds them).
                let mut changes = Changes::default();
                changes
                    .knocks
                    .push(crate::store::Knock::Orphaned(ids.into()));
                self.publish(changes).await;
                return Err(e);
            }
            (Err(e), _) => return Err(e),
        };
        self.publish(changes).await;
        Ok(())
    }

    /// Reports many claimed attempts at once (one transaction on the SQL stores); each report
    /// is accepted or refused on its own. An `Err` (the store failed) means none was recorded.
    /// A result past [`crate::limits`] fails its attempt for good instead (what a worker can do
    /// with it); failure messages are cut to [`limits::MAX_MESSAGE_BYTES`].
    pub async fn report_many(&self, mut reports: Vec<StepReport>) -> Result<Vec<Result<()>>> {
        within_limits(&mut reports);
        self.report_checked(reports).await
    }

    /// [`Engine::report_many`] for outcomes already within the limits (the worker session
    /// checks each one as its host hands it back, outside its lock).
    pub(crate) async fn report_checked(&self, reports: Vec<StepReport>) -> Result<Vec<Result<()>>> {
        let (send, prepared) = self.prepare(reports).await?;
        let (results, mut changes) = self.store()?.report_many(send, self.now()).await?;
        let results = prepared.results(results, &mut changes);
        self.publish_later(changes);
        Ok(results)
    }

    /// Reports many claimed attempts (as [`Engine::report_many`], the outcomes already within
    /// [`crate::limits`]) and then claims (as [`Engine::claim`]), in one store transaction on
    /// SQLite and PostgreSQL, the claim also taking the steps the reports made ready: what a
    /// worker session does when it has outcomes to write and free slots (one commit instead
    /// of two). Returns each report's result and the steps claimed. An `Err` means neither
    /// was done.
    pub async fn report_and_claim(
        &self,
        mut reports: Vec<StepReport>,
        request: &ClaimRequest,
    ) -> Result<(Vec<Result<()>>, Vec<ClaimedStep>)> {
        within_limits(&mut reports);
        self.report_checked_and_claim(reports, request).await
    }

    /// [`Engine::report_and_claim`] for outcomes already within the limits (as
    /// [`Engine::report_checked`]).
    pub(crate) async fn report_checked_and_claim(
        &self,
        reports: Vec<StepReport>,
        request: &ClaimRequest,
    ) -> Result<(Vec<Result<()>>, Vec<ClaimedStep>)> {
        limits::check_claim_limit(request.limit)?;
        let (reports, prepared) = self.prepare(reports).await?;
        let now = || self.now();
        let ((results, mut reported), (claimed, changes)) = self
            .store()?
            .report_and_claim(reports, request, &now)
            .await?;
        let results = prepared.results(results, &mut reported);
        // In causal order: what the reports made ready, then its claim.
        self.publish_later(reported);
        self.publish_later(changes);
        Ok((results, claimed))
    }

    /// Publishes custom event `name` from the running attempt `step`, with `payload`, to this
    /// engine's subscribers (and, in a Rails app, `ActiveSupport::Notifications`): an event the
    /// step's template declares for this step or for all its steps (see
    /// [`crate::template::events`]). Subscribers see it under its own name, with the step's
    /// task, step, step name and attempt, and the payload as its `detail`.
    ///
    /// [`Error::InvalidArgument`] when the event is not declared (the message lists those that
    /// are), when the payload breaks the event's schema (naming each failing place) or is past
    /// [`crate::limits`]; nothing is published then. Whether the attempt is still held is not
    /// checked here (a worker session's `publish` checks it: [`Error::ClaimLost`] there).
    pub fn publish_event(&self, step: &ClaimedStep, name: &str, payload: Value) -> Result<()> {
        self.publish_from(&EventSource::of(step), name, payload)
    }

    /// [`Engine::publish_event`] from what a worker session keeps of an attempt it holds.
    pub(crate) fn publish_from(
        &self,
        source: &EventSource,
        name: &str,
        payload: Value,
    ) -> Result<()> {
        limits::check_json(&payload, "the event's payload")?;
        if let Some(why) = source.events.refusal(name, &payload) {
            return Err(Error::InvalidArgument(format!(
                "step {:?} of {}/{}: {why}",
                &*source.step_name, &*source.namespace, &*source.task_name
            )));
        }
        let event = Event::new(name.to_owned(), source.step_id.task, self.now())
            .with_step(source.step_id, source.step_name.clone())
            .with_attempt(source.attempt)
            .with_detail(payload);
        self.inner.bus.publish(event);
        Ok(())
    }

    /// Reports a claimed attempt's failure.
    pub async fn fail(&self, step: StepId, attempt: u32, mut failure: StepFailure) -> Result<()> {
        failure.message = limits::message(failure.message);
        let changes = self
            .store()?
            .fail(step, attempt, &failure, self.now())
            .await?;
        self.publish(changes).await;
        Ok(())
    }

    /// Gives back a claimed attempt unfinished: the step is pending again at once and the
    /// attempt is not counted (what a stopping worker does with the steps it could not finish).
    pub async fn release(&self, step: StepId, attempt: u32) -> Result<()> {
        let changes = self.store()?.release(step, attempt, self.now()).await?;
        self.publish(changes).await;
        Ok(())
    }

    /// Extends a claimed attempt's lease by its `lease_ms`; returns the new expiry.
    pub async fn heartbeat(&self, step: StepId, attempt: u32) -> Result<Timestamp> {
        self.store()?.heartbeat(step, attempt, self.now()).await
    }

    /// Gives back every step whose lease has expired; returns how many.
    pub async fn reclaim_expired(&self) -> Result<usize> {
        let changes = self.store()?.reclaim_expired(self.now()).await?;
        let n = changes
            .transitions
            .iter()
            .filter(|t| t.event_name() == names::STEP_LEASE_EXPIRED)
            .count();
        self.publish(changes).await;
        Ok(n)
    }

    /// Cancels a task and its unfinished steps.
    pub async fn cancel_task(&self, task: TaskId) -> Result<()> {
        let changes = self.store()?.cancel_task(task, self.now()).await?;
        self.publish(changes).await;
        Ok(())
    }

    /// Pauses a task: none of its steps is handed out until it is resumed.
    pub async fn pause_task(&self, task: TaskId) -> Result<()> {
        let changes = self.store()?.pause_task(task, self.now()).await?;
        self.publish(changes).await;
        Ok(())
    }

    /// Resumes a paused task.
    pub async fn resume_task(&self, task: TaskId) -> Result<()> {
        let changes = self.store()?.resume_task(task, self.now()).await?;
        self.publish(changes).await;
        Ok(())
    }

    /// Runs a failed task again: its failed steps get a fresh attempt budget and the steps
    /// skipped on their account become pending.
    pub async fn retry_task(&self, task: TaskId) -> Result<()> {
        let changes = self.store()?.retry_task(task, self.now()).await?;
        self.publish(changes).await;
        Ok(())
    }

    /// An operator supplies the result of the step named `step` of `task`; its dependents run
    /// as if it had completed.
    pub async fn resolve_step(&self, task: TaskId, step: &str, result: Value) -> Result<()> {
        let store = self.store()?;
        let id = store.step_id(task, step).await?;
        let changes = store.resolve_step(id, result, self.now()).await?;
        self.publish(changes).await;
        Ok(())
    }

    /// Deletes the tasks that finished before `finished_before` (in one of `statuses`; `None`:
    /// any finished state), with their steps and transitions; returns how many. Their
    /// idempotency keys may be used again. [`Error::InvalidArgument`] for a state that is not
    /// a finished one.
    pub async fn purge(
        &self,
        finished_before: Timestamp,
        statuses: Option<&[crate::state::TaskState]>,
    ) -> Result<u64> {
        use crate::state::TaskState;
        let finished: Vec<TaskState> = TaskState::ALL
            .iter()
            .copied()
            .filter(|s| s.is_finished())
            .collect();
        let statuses = statuses.unwrap_or(&finished);
        if let Some(s) = statuses.iter().find(|s| !s.is_finished()) {
            return Err(Error::InvalidArgument(format!(
                "purge takes finished states ({}), not {s}",
                finished
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        self.store()?.purge(finished_before, statuses).await
    }

    /// A task with its steps.
    pub async fn task(&self, task: TaskId) -> Result<TaskView> {
        self.store()?.task(task).await
    }

    /// Tasks matching `filter`, newest first.
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskView>> {
        self.store()?.list_tasks(filter).await
    }

    /// A task's audit trail, oldest first.
    pub async fn transitions(&self, task: TaskId) -> Result<Vec<TransitionView>> {
        self.store()?.transitions(task).await
    }

    /// The lines the task's attempts logged (`step.log`, and in Python `logging` inside a
    /// handler; see [`crate::logs`]), by step, attempt and line; of the step named `step`
    /// only, when given. [`Error::TaskNotFound`] / [`Error::StepNotFound`] when there is no
    /// such task or step.
    pub async fn logs(
        &self,
        task: TaskId,
        step: Option<&str>,
    ) -> Result<Vec<crate::logs::LogView>> {
        let store = self.store()?;
        let index = match step {
            Some(name) => Some(store.step_id(task, name).await?.index),
            None => None,
        };
        store.logs(task, index).await
    }

    /// A task's DAG with each step's state.
    pub async fn graph(&self, task: TaskId) -> Result<GraphView> {
        Ok(GraphView::from(&self.task(task).await?))
    }

    /// Subscribes to lifecycle events whose name matches the glob `pattern` (`"step.*"`).
    pub fn subscribe(&self, pattern: &str) -> Result<Subscription> {
        self.store()?;
        self.inner
            .bus
            .subscribe(pattern)
            .map_err(|e| Error::InvalidArgument(e.to_string()))
    }

    /// What work the store holds.
    pub async fn work_status(&self) -> Result<WorkStatus> {
        self.store()?.work_status(None, self.now()).await
    }

    /// What work the store holds, counting as ready only the steps of `handlers`.
    pub async fn work_status_for(&self, handlers: &[Arc<str>]) -> Result<WorkStatus> {
        self.store()?.work_status(Some(handlers), self.now()).await
    }

    /// [`Engine::work_status_for`] the named handlers, or [`Engine::work_status`] for `None`.
    pub async fn work_status_of(&self, handlers: Option<Vec<String>>) -> Result<WorkStatus> {
        match handlers {
            Some(names) => {
                let names: Vec<Arc<str>> = names.into_iter().map(Into::into).collect();
                self.work_status_for(&names).await
            }
            None => self.work_status().await,
        }
    }

    /// The engine's metrics in the Prometheus (OpenMetrics) text format:
    /// `tasker_tasks_total{namespace,name,status}` (tasks that entered each status),
    /// `tasker_steps_total{namespace,task,step,outcome}` (completed, retried, failed,
    /// skipped, cancelled, resolved), the histograms `tasker_step_duration_seconds` and
    /// `tasker_ready_to_claimed_seconds{namespace,task,step}`, `tasker_leases_expired_total`
    /// — what this engine recorded since it opened — and `tasker_ready_steps{handler}`, the
    /// store's claimable steps now.
    pub async fn metrics(&self) -> Result<String> {
        let ready = self.store()?.ready_by_handler(self.now()).await?;
        Ok(match &self.inner.metrics {
            Some(metrics) => metrics.render(&ready),
            None => crate::metrics::Metrics::new().render(&ready),
        })
    }

    /// What the store holds, counted: tasks and steps per status, retries scheduled, steps a
    /// retry saved (complete after more than one attempt), lease expiries, and per handler
    /// the mean and 95th percentile duration of its finished steps. Read from the store, so
    /// the same from every process (the SQL stores scan their steps and transitions: an
    /// operator's call, not one for a hot loop).
    pub async fn stats(&self) -> Result<crate::view::Stats> {
        self.store()?.stats().await
    }

    /// Waits until a step may have become ready in this process (or `timeout` passes).
    pub async fn wait_for_work(&self, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, self.inner.work.notified()).await;
    }

    pub(crate) fn work_notify(&self) -> &Notify {
        &self.inner.work
    }

    /// Closes the engine: every later call fails with [`Error::Closed`].
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        if let Some(spans) = &self.inner.spans {
            // The spans still queued are sent now: a process that exits after closing its
            // engine loses none.
            spans.flush();
        }
        self.inner.work.notify_waiters();
    }

    /// Counts a worker session as running on this engine while the guard lives.
    pub(crate) fn deliverer(&self) -> Deliverer {
        self.inner.deliverers.fetch_add(1, Ordering::SeqCst);
        Deliverer(self.clone())
    }

    /// Whether [`Engine::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Follows up what `changes` leave for other tasks (see [`children`]), then publishes
    /// everything.
    async fn publish(&self, mut changes: Changes) {
        if !changes.knocks.is_empty() {
            self.follow_up(&mut changes).await;
        }
        self.publish_now(changes);
    }

    /// Publishes the events of `changes`, then wakes waiting workers.
    ///
    /// In that order: a worker woken by this change publishes its own events (`step.claimed`)
    /// only after this change's events (`step.completed`, `step.ready`) are out.
    fn publish_now(&self, changes: Changes) {
        // Waiting workers look again when a step became claimable, and when a task finished:
        // the last report of a run finishes its task, and a worker waiting in
        // `run_until_idle` must see that nothing is left rather than sleep a poll interval.
        let wake = !changes.ready.is_empty()
            || changes.freed
            || changes.transitions.iter().any(|t| {
                matches!(
                    t.change,
                    Change::Step {
                        event: StepEvent::RetryDue,
                        ..
                    } | Change::Task {
                        event: TaskEvent::Complete | TaskEvent::Fail,
                        ..
                    }
                )
            });
        if let Some(metrics) = &self.inner.metrics {
            metrics.observe(&changes.transitions);
        }
        if let Some(spans) = &self.inner.spans {
            spans.export(&changes.transitions);
        }
        // Deliveries written: sent at once by a worker of this engine, if one runs.
        if self.inner.deliverers.load(Ordering::Relaxed) > 0
            && changes
                .transitions
                .iter()
                .any(|t| t.task.as_ref().is_some_and(|of| !of.webhooks.is_empty()))
        {
            self.kick_deliveries();
        }
        self.publish_events(&changes);
        if wake {
            self.inner.work.notify_waiters();
        }
    }

    fn publish_events(&self, changes: &Changes) {
        let bus = &self.inner.bus;
        if !bus.has_subscribers() {
            return;
        }
        let mut events = Vec::new();
        for (i, t) in changes.transitions.iter().enumerate() {
            for (name, error) in event_names(&changes.transitions, i).into_iter().flatten() {
                if !bus.wants(name) {
                    continue;
                }
                events.push(event_of(t, name, error));
            }
        }
        if bus.wants(names::STEP_READY) {
            let at = self.now();
            for (step, name) in &changes.ready {
                events.push(
                    Event::new(names::STEP_READY, step.task, at).with_step(*step, name.clone()),
                );
            }
        }
        bus.publish_all(events);
    }
}

/// The events that transition `i` of `transitions` publishes, each with the error message to put
/// in its detail.
///
/// A failed attempt that will be retried publishes `step.retry_scheduled` (carrying the error),
/// not `step.failed`: `step.failed` means the step failed for good. A lease that expired on the
/// last attempt publishes `step.lease_expired` and then `step.failed`.
pub(crate) fn event_names(
    transitions: &[Transition],
    i: usize,
) -> [Option<(&'static str, Option<&str>)>; 2] {
    let t = &transitions[i];
    let Change::Step { index, event, .. } = t.change else {
        return [Some((t.event_name(), None)), None];
    };
    let same_step = |other: &&Transition| {
        other.task_id == t.task_id
            && matches!(other.change, Change::Step { index: j, .. } if j == index)
    };
    let reason = t.reason.as_deref();
    match event {
        StepEvent::Fail | StepEvent::LeaseExpired => {
            let retried = transitions[i + 1..]
                .iter()
                .find(same_step)
                .is_some_and(|next| {
                    matches!(
                        next.change,
                        Change::Step {
                            event: StepEvent::ScheduleRetry,
                            ..
                        }
                    )
                });
            let expired =
                (event == StepEvent::LeaseExpired).then_some((names::STEP_LEASE_EXPIRED, reason));
            let failed = (!retried).then_some((names::STEP_FAILED, reason));
            [expired, failed]
        }
        StepEvent::ScheduleRetry => {
            let error = transitions[..i]
                .iter()
                .rev()
                .find(same_step)
                .and_then(|previous| previous.reason.as_deref());
            [Some((names::STEP_RETRY_SCHEDULED, error)), None]
        }
        _ => [Some((t.event_name(), None)), None],
    }
}

/// The event `name` published for transition `t`.
pub(crate) fn event_of(t: &Transition, name: &'static str, error: Option<&str>) -> Event {
    let (from, to, step) = match t.change {
        Change::Task { from, to, .. } => (from.map(|s| s.as_str()), to.as_str(), None),
        Change::Step {
            index, from, to, ..
        } => (Some(from.as_str()), to.as_str(), Some(index)),
    };
    let mut detail = json!({
        "from": from,
        "to": to,
        "reason": t.reason,
    });
    if let Some(error) = error {
        detail["error"] = json!(error);
    }
    let mut event = Event::new(name, t.task_id, t.at).with_detail(detail);
    if let (Some(index), Some(step_name)) = (step, &t.step_name) {
        event = event
            .with_step(
                StepId {
                    task: t.task_id,
                    index,
                },
                step_name.clone(),
            )
            .with_attempt(t.attempt);
    }
    event
}

/// Each report's outcome brought within [`crate::limits`]: a result past them fails its attempt
/// for good instead, a failure's message is cut (what a worker can do with them).
fn within_limits(reports: &mut [StepReport]) {
    for report in reports {
        let outcome = std::mem::replace(&mut report.outcome, Outcome::Complete(Value::Null));
        report.outcome = limits::outcome(outcome);
        crate::logs::bound(&mut report.logs);
    }
}

/// What publishing a custom event needs of one attempt: the step, its template, and the events
/// it may publish (what a worker session keeps of each attempt it holds).
#[derive(Debug, Clone)]
pub(crate) struct EventSource {
    pub step_id: crate::ids::StepId,
    pub attempt: u32,
    pub step_name: Arc<str>,
    pub namespace: Arc<str>,
    pub task_name: Arc<str>,
    pub events: Arc<crate::template::DeclaredEvents>,
}

impl EventSource {
    /// The source of `step`'s events.
    pub fn of(step: &ClaimedStep) -> Self {
        EventSource {
            step_id: step.step_id,
            attempt: step.attempt,
            step_name: step.name.clone(),
            namespace: step.namespace.clone(),
            task_name: step.task_name.clone(),
            events: step.events.clone(),
        }
    }
}
