//! Shared helpers of the conformance suite.
//!
//! Every scenario is written once and made one test per store by [`per_store!`] (a failure
//! names its store: `case::sqlite`), or loops over [`engines`] when it compares stores; adding
//! a store is one line here and every scenario runs against it.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tasker_core::error::Result;
use tasker_core::retry::FailureKind;
use tasker_core::store::{ClaimRequest, StepFailure};
use tasker_core::worker::RunReport;
use tasker_core::{
    ClaimedStep, Engine, HandlerError, ManualClock, NewTask, TaskId, TaskState, TaskView,
    TransitionView, Worker,
};
use tokio::task::JoinHandle;

/// Asserts that `result` is an error matching `pattern` (and `if` guard); the message after the
/// pattern is formatted into the panic, with the result that came instead.
#[allow(unused_macros)]
macro_rules! assert_err {
    ($result:expr, $pattern:pat $(if $guard:expr)?, $($message:tt)+) => {
        match $result {
            Err($pattern) $(if $guard)? => {}
            other => panic!(
                "{}: expected Err({}), got {:?}",
                format_args!($($message)+),
                stringify!($pattern),
                other
            ),
        }
    };
}
#[allow(unused_imports)]
pub(crate) use assert_err;

/// A store the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `memory:`.
    Memory,
    /// A fresh SQLite file.
    Sqlite,
    /// A fresh schema on the server `TASKER_TEST_POSTGRES_URL` names.
    Postgres,
}

impl StoreKind {
    /// `memory`, `sqlite` or `postgres`.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Memory => "memory",
            StoreKind::Sqlite => "sqlite",
            StoreKind::Postgres => "postgres",
        }
    }
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A fresh store of `kind`'s URL; `None` for PostgreSQL when `TASKER_TEST_POSTGRES_URL` is not
/// set.
async fn fresh_url(kind: StoreKind) -> Option<String> {
    match kind {
        StoreKind::Memory => Some("memory:".to_owned()),
        StoreKind::Sqlite => {
            let file =
                std::env::temp_dir().join(format!("tasker-test-{}.db", tasker_core::TaskId::new()));
            Some(format!("sqlite://{}", file.display()))
        }
        StoreKind::Postgres => postgres_schema().await,
    }
}

/// [`fresh_url`] for a test of `kind`, saying when it is skipped.
pub async fn store_url(kind: StoreKind) -> Option<String> {
    let url = fresh_url(kind).await;
    if url.is_none() {
        eprintln!("skipped: TASKER_TEST_POSTGRES_URL is not set");
    }
    url
}
/// An engine on a fresh store of `kind`, on the system clock, with `templates` registered;
/// `None` when the store is not under test (see [`store_url`]).
pub async fn real_time_engine_with(kind: StoreKind, templates: &[Template]) -> Option<Engine> {
    open_with(kind, None, templates).await
}
/// An engine on a fresh store of `kind`, reading the time from `clock`, with `templates`
/// registered; `None` when the store is not under test (see [`store_url`]).
pub async fn engine_with(
    kind: StoreKind,
    clock: ManualClock,
    templates: &[Template],
) -> Option<Engine> {
    open_with(kind, Some(Arc::new(clock)), templates).await
}

/// An engine on a fresh store of `kind`, on `clock` (the system clock when `None`), with
/// `templates` registered.
async fn open_with(
    kind: StoreKind,
    clock: Option<Arc<dyn tasker_core::Clock>>,
    templates: &[Template],
) -> Option<Engine> {
    let engine = open_engine(kind.name(), store_url(kind).await?, clock).await;
    for template in templates {
        register(&engine, template).await;
    }
    Some(engine)
}

/// An engine on `url` (the store called `name`), on `clock` (the system clock when `None`).
async fn open_engine(
    name: &str,
    url: String,
    clock: Option<Arc<dyn tasker_core::Clock>>,
) -> Engine {
    let mut builder = Engine::builder().url(url);
    if let Some(clock) = clock {
        builder = builder.clock(clock);
    }
    builder
        .build()
        .await
        .unwrap_or_else(|e| panic!("open the {name} store: {e}"))
}
/// One test per store: `per_store! { async fn case(store) { … } }` makes the tests
/// `case::memory`, `case::sqlite` and `case::postgres`, each with `store` its
/// [`StoreKind`], so that a failure names its store.
#[allow(unused_macros)]
macro_rules! per_store {
    ($(#[$meta:meta])* async fn $name:ident($store:ident) $body:block) => {
        $(#[$meta])*
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                let $store = $crate::support::StoreKind::Memory;
                $body
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let $store = $crate::support::StoreKind::Sqlite;
                $body
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let $store = $crate::support::StoreKind::Postgres;
                $body
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use per_store;

/// One engine per store under test, all reading the time from `clock`: memory, SQLite in a
/// fresh database file, and PostgreSQL in a fresh schema when `TASKER_TEST_POSTGRES_URL` names
/// a server (the test command starts one).
pub async fn engines(clock: ManualClock) -> Vec<(&'static str, Engine)> {
    each_store(Some(Arc::new(clock))).await
}

/// One engine per store under test on the system clock (for tests of real time: leases,
/// timeouts, drains), each with `templates` registered.
pub async fn real_time_engines_with(templates: &[Template]) -> Vec<(&'static str, Engine)> {
    let engines = each_store(None).await;
    register_all(&engines, templates).await;
    engines
}

/// The URL of each SQL store under test: a fresh SQLite file, and a fresh PostgreSQL schema
/// when `TASKER_TEST_POSTGRES_URL` names a server.
pub async fn sql_store_urls() -> Vec<(&'static str, String)> {
    let mut urls = Vec::new();
    for kind in [StoreKind::Sqlite, StoreKind::Postgres] {
        if let Some(url) = fresh_url(kind).await {
            urls.push((kind.name(), url));
        }
    }
    urls
}
/// One engine per store under test, on `clock` (the system clock when `None`).
async fn each_store(clock: Option<Arc<dyn tasker_core::Clock>>) -> Vec<(&'static str, Engine)> {
    let mut stores = vec![("memory", "memory:".to_owned())];
    stores.extend(sql_store_urls().await);
    let mut engines = Vec::new();
    for (name, url) in stores {
        engines.push((name, open_engine(name, url, clock.clone()).await));
    }
    engines
}
#[path = "../../../tests/postgres_schema.rs"]
mod postgres_schema_impl;
pub use postgres_schema_impl::postgres_schema;

/// [`engines`], each with `templates` registered.
pub async fn engines_with(
    clock: ManualClock,
    templates: &[Template],
) -> Vec<(&'static str, Engine)> {
    let engines = engines(clock).await;
    register_all(&engines, templates).await;
    engines
}

/// Registers `templates` on every engine.
async fn register_all(engines: &[(&'static str, Engine)], templates: &[Template]) {
    for (_, engine) in engines {
        for template in templates {
            register(engine, template).await;
        }
    }
}

/// Registers a template, panicking with the error if it is refused.
pub async fn register(engine: &Engine, template: &Template) {
    let yaml = template.yaml();
    engine
        .register_template_str(&yaml)
        .await
        .unwrap_or_else(|e| panic!("template refused: {e}\n{yaml}"));
}

/// Creates a task, panicking with the error if it is refused.
pub async fn create(engine: &Engine, task: NewTask) -> TaskId {
    engine
        .create_task(task)
        .await
        .unwrap_or_else(|e| panic!("create task: {e}"))
}

/// The task's current view.
pub async fn task_view(engine: &Engine, task: TaskId) -> TaskView {
    engine.task(task).await.expect("task view")
}

/// The task's current state.
pub async fn status(engine: &Engine, task: TaskId) -> TaskState {
    task_view(engine, task).await.status
}

/// A claim request for any handler.
pub fn any_handler(limit: usize) -> ClaimRequest {
    ClaimRequest {
        worker_id: "test-worker".into(),
        handlers: None,
        limit,
    }
}

/// A claim request for the named handlers only.
pub fn only_handlers(names: &[&str], limit: usize) -> ClaimRequest {
    ClaimRequest {
        worker_id: "test-worker".into(),
        handlers: Some(names.iter().map(|&n| Arc::from(n)).collect()),
        limit,
    }
}

/// Claims up to `limit` steps of any handler.
pub async fn claim(engine: &Engine, limit: usize) -> Vec<ClaimedStep> {
    engine.claim(&any_handler(limit)).await.expect("claim")
}

/// Claims exactly one step and checks its name.
pub async fn claim_one(engine: &Engine, name: &str) -> ClaimedStep {
    let mut claimed = claim(engine, 1).await;
    assert_eq!(
        claimed.len(),
        1,
        "expected to claim {name:?}, got {:?}",
        names(&claimed)
    );
    let step = claimed.remove(0);
    assert_eq!(&*step.name, name, "claimed the wrong step");
    step
}

/// Claims exactly the step `name` and checks the inputs its parents handed it.
pub async fn claim_one_with_inputs(engine: &Engine, name: &str, inputs: Value) -> ClaimedStep {
    let step = claim_one(engine, name).await;
    assert_eq!(step.inputs.to_json(), inputs, "the inputs of {name}");
    step
}

/// The names of claimed steps, sorted.
pub fn names(claimed: &[ClaimedStep]) -> Vec<String> {
    let mut names: Vec<String> = claimed.iter().map(|s| s.name.to_string()).collect();
    names.sort();
    names
}

/// The step called `name` among `claimed`.
pub fn named<'a>(claimed: &'a [ClaimedStep], name: &str) -> &'a ClaimedStep {
    claimed
        .iter()
        .find(|s| &*s.name == name)
        .unwrap_or_else(|| panic!("{name:?} not among {:?}", names(claimed)))
}

/// Completes a claimed step with `result`.
pub async fn complete(engine: &Engine, step: &ClaimedStep, result: Value) {
    engine
        .complete(step.step_id, step.attempt, result)
        .await
        .unwrap_or_else(|e| panic!("complete {}: {e}", step.name));
}

/// Fails a claimed step's current attempt with `failure`.
pub async fn fail(engine: &Engine, step: &ClaimedStep, failure: StepFailure) {
    engine
        .fail(step.step_id, step.attempt, failure)
        .await
        .unwrap_or_else(|e| panic!("fail {}: {e}", step.name));
}

/// Claims exactly the step `name` and completes it with `result`.
pub async fn claim_and_complete(engine: &Engine, name: &str, result: Value) -> ClaimedStep {
    let step = claim_one(engine, name).await;
    complete(engine, &step, result).await;
    step
}

/// Claims exactly the step `name` and fails its attempt with `failure`.
pub async fn claim_and_fail(engine: &Engine, name: &str, failure: StepFailure) -> ClaimedStep {
    let step = claim_one(engine, name).await;
    fail(engine, &step, failure).await;
    step
}

/// Claims the named steps one after the other, each completing with its own name.
pub async fn complete_in_order(engine: &Engine, names: &[&str]) {
    for &name in names {
        claim_and_complete(engine, name, Value::from(name)).await;
    }
}

/// A retryable failure using the step's backoff.
pub fn retryable(message: &str) -> StepFailure {
    StepFailure {
        message: message.to_owned(),
        kind: FailureKind::Retryable {
            retry_after_ms: None,
        },
    }
}

/// A retryable failure with the handler's own delay.
pub fn retryable_after(message: &str, after_ms: u64) -> StepFailure {
    StepFailure {
        message: message.to_owned(),
        kind: FailureKind::Retryable {
            retry_after_ms: Some(after_ms),
        },
    }
}

/// A permanent failure.
pub fn permanent(message: &str) -> StepFailure {
    StepFailure {
        message: message.to_owned(),
        kind: FailureKind::Permanent,
    }
}

/// `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The `(from, to)` pairs of one step's audit trail, oldest first.
pub async fn step_path(engine: &Engine, task: TaskId, step: &str) -> Vec<(String, String)> {
    transitions_of(engine, task, Some(step))
        .await
        .into_iter()
        .map(|t| (t.from.unwrap_or_default(), t.to))
        .collect()
}

/// The task's own `(from, to)` pairs, oldest first (`from` is empty for the creation).
pub async fn task_path(engine: &Engine, task: TaskId) -> Vec<(String, String)> {
    transitions_of(engine, task, None)
        .await
        .into_iter()
        .map(|t| (t.from.unwrap_or_default(), t.to))
        .collect()
}

/// The transitions of one step (or of the task itself when `step` is `None`).
pub async fn transitions_of(
    engine: &Engine,
    task: TaskId,
    step: Option<&str>,
) -> Vec<TransitionView> {
    engine
        .transitions(task)
        .await
        .expect("transitions")
        .into_iter()
        .filter(|t| t.step.as_deref() == step)
        .collect()
}

/// The reason recorded for the step's first failed attempt.
pub async fn first_failure_reason(engine: &Engine, task: TaskId, step: &str) -> Option<String> {
    transitions_of(engine, task, Some(step))
        .await
        .into_iter()
        .find(|t| t.to == "error")
        .unwrap_or_else(|| panic!("{step} never failed"))
        .reason
}

/// `[(from, to)]` from string pairs, for comparing with [`step_path`] and [`task_path`].
pub fn path(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(f, t)| (f.to_string(), t.to_string()))
        .collect()
}

/// The real-time limit of a worker run in these tests: generous, never reached when all is well.
pub const RUN_LIMIT: Duration = Duration::from_secs(10);

/// A worker whose `handlers` all answer `result`.
pub fn worker_answering(engine: &Engine, handlers: &[&str], result: Value) -> Worker {
    let mut builder = Worker::builder(engine.clone());
    for &name in handlers {
        let result = result.clone();
        builder = builder.handler(name, move |_step: ClaimedStep| {
            let result = result.clone();
            async move { Ok::<_, HandlerError>(result) }
        });
    }
    builder.build()
}

/// Starts `worker.run()` on its own task.
pub fn spawn_run(worker: &Worker) -> JoinHandle<Result<RunReport>> {
    let worker = worker.clone();
    tokio::spawn(async move { worker.run().await })
}

/// Waits (at most [`RUN_LIMIT`]) for a spawned run to return, panicking with `what` if it does not.
pub async fn finished(run: JoinHandle<Result<RunReport>>, what: &str) -> RunReport {
    tokio::time::timeout(RUN_LIMIT, run)
        .await
        .expect(what)
        .unwrap()
        .unwrap()
}

/// A task template built in code: [`template`], then one [`step`] after another.
#[derive(Debug, Clone)]
pub struct Template {
    namespace: String,
    name: String,
    version: String,
    default_retry: Option<Retry>,
    steps: Vec<Step>,
    raw: String,
}

/// A template `namespace`/`name` at version 1.0.0, with no steps yet.
pub fn template(namespace: &str, name: &str) -> Template {
    Template {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        version: "1.0.0".to_owned(),
        default_retry: None,
        steps: Vec::new(),
        raw: String::new(),
    }
}

impl Template {
    /// At this version instead of 1.0.0.
    pub fn version(mut self, version: &str) -> Self {
        self.version = version.to_owned();
        self
    }

    /// The retry policy of the steps that set none.
    pub fn default_retry(mut self, retry: Retry) -> Self {
        self.default_retry = Some(retry);
        self
    }

    /// Adds a step.
    pub fn step(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// Adds steps written as YAML (list items indented by two spaces), after the others.
    pub fn raw(mut self, steps: &str) -> Self {
        self.raw.push_str(steps);
        self
    }

    /// Adds steps, in order.
    pub fn steps(mut self, steps: impl IntoIterator<Item = Step>) -> Self {
        self.steps.extend(steps);
        self
    }

    /// The template as the YAML the engine reads.
    pub fn yaml(&self) -> String {
        let mut yaml = format!(
            "namespace: {}\nname: {}\nversion: {}\n",
            self.namespace, self.name, self.version
        );
        if let Some(retry) = &self.default_retry {
            writeln!(yaml, "defaults:\n  retry: {}", retry.yaml()).unwrap();
        }
        yaml.push_str("steps:\n");
        for step in &self.steps {
            writeln!(yaml, "  - name: {}", step.name).unwrap();
            if let Some(handler) = &step.handler {
                writeln!(yaml, "    handler: {handler}").unwrap();
            }
            if let Some(kind) = step.kind {
                writeln!(yaml, "    type: {kind}").unwrap();
            }
            if let Some(timeout) = step.timeout_ms {
                writeln!(yaml, "    timeout_ms: {timeout}").unwrap();
            }
            if let Some(lease) = step.lease_ms {
                writeln!(yaml, "    lease_ms: {lease}").unwrap();
            }
            if let Some(retry) = &step.retry {
                writeln!(yaml, "    retry: {}", retry.yaml()).unwrap();
            }
            if !step.depends_on.is_empty() {
                yaml.push_str("    depends_on:\n");
            }
            for (parent, requires_success) in &step.depends_on {
                if *requires_success {
                    writeln!(yaml, "      - {parent}").unwrap();
                } else {
                    writeln!(
                        yaml,
                        "      - {{ step: {parent}, requires_success: false }}"
                    )
                    .unwrap();
                }
            }
        }
        yaml.push_str(&self.raw);
        yaml
    }
}

/// One step of a [`Template`]: its handler is its name unless [`Step::handler`] says otherwise.
#[derive(Debug, Clone)]
pub struct Step {
    name: String,
    handler: Option<String>,
    timeout_ms: Option<u64>,
    lease_ms: Option<u64>,
    retry: Option<Retry>,
    depends_on: Vec<(String, bool)>,
    kind: Option<&'static str>,
}

/// A step called `name`, with no parents and the template's defaults.
pub fn step(name: &str) -> Step {
    Step {
        name: name.to_owned(),
        handler: None,
        timeout_ms: None,
        lease_ms: None,
        retry: None,
        depends_on: Vec::new(),
        kind: None,
    }
}

impl Step {
    /// Run by `handler`.
    pub fn handler(mut self, handler: &str) -> Self {
        self.handler = Some(handler.to_owned());
        self
    }

    /// Runs once every one of `parents` has completed.
    pub fn after(mut self, parents: &[impl AsRef<str>]) -> Self {
        self.depends_on
            .extend(parents.iter().map(|p| (p.as_ref().to_owned(), true)));
        self
    }

    /// Runs once `parent` has finished, whether it succeeded or not.
    pub fn after_any_outcome_of(mut self, parent: &str) -> Self {
        self.depends_on.push((parent.to_owned(), false));
        self
    }

    /// With a timeout (and, unless `lease_ms` says otherwise, a lease) of `ms` milliseconds.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// With a lease of `ms` (renewed by workers while the handler runs).
    pub fn lease_ms(mut self, ms: u64) -> Self {
        self.lease_ms = Some(ms);
        self
    }

    /// With its own retry policy.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Of this `type` (`decision`, `deferred_convergence`).
    pub fn kind(mut self, kind: &'static str) -> Self {
        self.kind = Some(kind);
        self
    }
}

/// `count` steps `{prefix}0`, `{prefix}1`, …, each run by `handler` after the one before.
pub fn chain_of(prefix: &str, count: usize, handler: &str) -> Vec<Step> {
    (0..count)
        .map(|i| {
            let step = step(&format!("{prefix}{i}")).handler(handler);
            if i == 0 {
                step
            } else {
                step.after(&[format!("{prefix}{}", i - 1)])
            }
        })
        .collect()
}

/// A retry policy: only the fields set here are written, the rest are the engine's defaults.
#[derive(Debug, Clone)]
pub struct Retry {
    max_attempts: u32,
    backoff_base_ms: Option<u64>,
    backoff_max_ms: Option<u64>,
}

/// At most `max_attempts` attempts (the first one included).
pub fn attempts(max_attempts: u32) -> Retry {
    Retry {
        max_attempts,
        backoff_base_ms: None,
        backoff_max_ms: None,
    }
}

impl Retry {
    /// A jitter-free backoff starting at `base_ms` (then doubling).
    pub fn backoff_ms(mut self, base_ms: u64) -> Self {
        self.backoff_base_ms = Some(base_ms);
        self
    }

    /// The backoff never grows beyond `max_ms`.
    pub fn backoff_max_ms(mut self, max_ms: u64) -> Self {
        self.backoff_max_ms = Some(max_ms);
        self
    }

    fn yaml(&self) -> String {
        let mut yaml = format!("{{ max_attempts: {}", self.max_attempts);
        if let Some(base) = self.backoff_base_ms {
            write!(yaml, ", backoff_base_ms: {base}").unwrap();
        }
        if let Some(max) = self.backoff_max_ms {
            write!(yaml, ", backoff_max_ms: {max}").unwrap();
        }
        if self.backoff_base_ms.is_some() {
            yaml.push_str(", jitter: false");
        }
        yaml.push_str(" }");
        yaml
    }
}

/// `tests/support/outage_proxy.py` in front of a PostgreSQL server: the store outage of the
/// worker conformance suite (the same program the Python, Ruby and C suites start).
pub struct OutageProxy {
    child: std::process::Child,
    pid: String,
    /// The proxy's stdout, past its first line: `down` after each cut, then its counts.
    out: std::sync::Mutex<std::io::BufReader<std::process::ChildStdout>>,
    /// `url` with the proxy's address in place of the server's.
    pub url: String,
}

impl OutageProxy {
    /// Starts a proxy to the server of `url`; it goes down for `down_for` on [`OutageProxy::cut`].
    pub fn start(url: &str, down_for: Duration) -> OutageProxy {
        use std::io::BufRead;
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/support/outage_proxy.py"
        );
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .arg(url)
            .arg(down_for.as_secs_f64().to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start python3 tests/support/outage_proxy.py");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("the proxy's stdout"));
        let mut first = String::new();
        out.read_line(&mut first).expect("the proxy's first line");
        let (pid, url) = first
            .trim()
            .split_once(' ')
            .unwrap_or_else(|| panic!("the proxy said {first:?}"));
        OutageProxy {
            pid: pid.to_owned(),
            url: url.to_owned(),
            out: std::sync::Mutex::new(out),
            child,
        }
    }

    /// Takes the proxy down (open connections cut, new ones refused until it is up again), and
    /// returns once it is down: the proxy says so on its stdout.
    pub fn cut(&self) {
        use std::io::BufRead;
        let status = std::process::Command::new("kill")
            .args(["-USR1", &self.pid])
            .status()
            .expect("kill -USR1 the proxy");
        assert!(status.success(), "the proxy is gone");
        let mut line = String::new();
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.read_line(&mut line)
            .expect("the proxy's answer to a cut");
        assert_eq!(line.trim(), "down", "the proxy said {line:?}");
    }

    /// Stops the proxy; how many connections it cut and refused.
    pub fn finish(mut self) -> (u64, u64) {
        use std::io::Read;
        drop(self.child.stdin.take());
        let mut out = String::new();
        let _ = self
            .out
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .read_to_string(&mut out);
        let _ = self.child.wait();
        let count = |key: &str| {
            out.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in the proxy's output {out:?}"))
        };
        (count("cut="), count("refused="))
    }
}

impl Drop for OutageProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
