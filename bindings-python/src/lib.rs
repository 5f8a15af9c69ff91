//! `tasker_core._native`: the Python face of the engine. Thin by design: argument conversion
//! (JSON values through `pythonize`), error mapping, handle lifetimes, and the GIL released
//! whenever Rust waits. The worker's decisions are the core's `WorkerSession`; the Python threads
//! that run handlers (`tasker_core/_worker.py`) call it here; no Rust thread calls into Python.

#![deny(unsafe_code)]

/// Rust allocations of the extension: the runtime's threads allocate the steps that Python's
/// threads free, and glibc's malloc takes an arena lock on each such free (mimalloc does not).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyType};
use pythonize::pythonize;
use serde_json::Value;
use tasker_core::error::ErrorKind;
use tasker_core::events::Subscription as CoreSubscription;
use tasker_core::host::{ForkSafe, Owner};
use tasker_core::limits::MAX_JSON_DEPTH;
use tasker_core::store::{ClaimRequest, StepFailure};
use tasker_core::worker::{
    AttemptId, AttemptOutcome, Next, SessionConfig, WorkerSession as CoreSession,
};
use tasker_core::{Error, NewTask, StepId, TaskFilter, TaskId, TaskState};
use tokio::runtime::Runtime;

create_exception!(
    _native,
    TaskerError,
    PyException,
    "Base class of every error the engine raises."
);
create_exception!(
    _native,
    TemplateError,
    TaskerError,
    "A template is malformed or invalid, or a version is registered with other content."
);
create_exception!(
    _native,
    NotFoundError,
    TaskerError,
    "No template, task or step has that name or id."
);
create_exception!(
    _native,
    InvalidTransitionError,
    TaskerError,
    "The state machine refused the operation (e.g. cancelling a completed task)."
);
create_exception!(
    _native,
    ClaimLostError,
    InvalidTransitionError,
    "A report on a claim that is no longer held (lease expired, task cancelled, step resolved)."
);
create_exception!(
    _native,
    StoreError,
    TaskerError,
    "The database failed, or the engine is closed."
);
create_exception!(
    _native,
    InvalidArgumentError,
    TaskerError,
    "An argument is malformed: a URL, an id, a version, a pattern, a value that is not JSON."
);
create_exception!(
    _native,
    InvalidContextError,
    InvalidArgumentError,
    "create_task with a context that breaks its template's input_schema; the message names each failing path."
);
create_exception!(
    _native,
    IdempotencyConflictError,
    InvalidArgumentError,
    "create_task with an idempotency key seen before, for another context or version."
);

/// Maps an engine error to its Python exception class.
fn py_err(e: Error) -> PyErr {
    let message = e.to_string();
    match (&e, e.kind()) {
        (Error::ClaimLost { .. }, _) => ClaimLostError::new_err(message),
        (Error::IdempotencyConflict { .. }, _) => IdempotencyConflictError::new_err(message),
        (Error::InvalidContext { .. }, _) => InvalidContextError::new_err(message),
        (_, ErrorKind::Template) => TemplateError::new_err(message),
        (_, ErrorKind::NotFound) => NotFoundError::new_err(message),
        (_, ErrorKind::InvalidTransition) => InvalidTransitionError::new_err(message),
        (_, ErrorKind::InvalidArgument) => InvalidArgumentError::new_err(message),
        (_, ErrorKind::Store) => {
            let err = StoreError::new_err(message);
            Python::attach(|py| {
                let _ = err
                    .value(py)
                    .setattr("kind", e.store_kind().unwrap_or("other"));
            });
            err
        }
    }
}

fn invalid(message: impl Into<String>) -> PyErr {
    InvalidArgumentError::new_err(message.into())
}

fn runtime() -> PyResult<Arc<Runtime>> {
    tasker_core::host::runtime().map_err(py_err)
}

/// A Python object as a JSON value, in one pass: `None`, `bool`, `int` (64-bit), finite `float`,
/// `str`, and the containers pythonize accepts — `dict` and other mappings (with `str` keys),
/// `list`, `tuple`, `set`, `frozenset` and other sequences (`collections.deque`, …), dataclass
/// instances (their fields) — nested at
/// most the core's [`MAX_JSON_DEPTH`] levels (a value that contains itself is refused as too
/// deep, never followed for ever). Anything else, NaN and infinities (JSON has none; they would
/// silently become null) raise InvalidArgumentError naming what was wrong.
fn to_json(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Value> {
    convert(obj, what, 0)
}

/// What a ``type: decision`` step's handler returns: the names of the steps depending on it
/// that run (the others are skipped as not chosen), and the step's own result.
#[pyclass(module = "tasker_core._native", frozen)]
struct Decision {
    /// The names of the dependents that run.
    #[pyo3(get)]
    steps: Vec<String>,
    /// The decision step's result (handed to its children as their input).
    #[pyo3(get)]
    result: Py<PyAny>,
}

#[pymethods]
impl Decision {
    #[new]
    #[pyo3(signature = (steps, result = None))]
    fn new(py: Python<'_>, steps: &Bound<'_, PyAny>, result: Option<Py<PyAny>>) -> PyResult<Self> {
        let refuse = || {
            PyTypeError::new_err(format!(
                "steps must be a list of step names, not {}",
                steps
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        };
        if steps.is_instance_of::<PyString>() {
            return Err(refuse());
        }
        let steps: Vec<String> = steps.extract().map_err(|_| refuse())?;
        Ok(Decision {
            steps,
            result: result.unwrap_or_else(|| py.None()),
        })
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let result = self
            .result
            .bind(py)
            .repr()
            .map(|r| r.to_string())
            .unwrap_or_default();
        format!("Decision({:?}, result={result})", self.steps)
    }
}

/// What a ``type: batchable`` step's handler returns: ``Batch(items=[...])`` (each slice of the
/// batch's ``size`` takes its share of the items) or ``Batch(total=N)`` (each slice a range of
/// ``0..N``), and the step's own result.
#[pyclass(module = "tasker_core._native", frozen)]
struct Batch {
    /// The items, when the batch has items.
    #[pyo3(get)]
    items: Option<Py<PyAny>>,
    /// The total, when the batch has a total.
    #[pyo3(get)]
    total: Option<u64>,
    /// The batchable step's own result.
    #[pyo3(get)]
    result: Py<PyAny>,
}

#[pymethods]
impl Batch {
    #[new]
    #[pyo3(signature = (items = None, *, total = None, result = None))]
    fn new(
        py: Python<'_>,
        items: Option<Py<PyAny>>,
        total: Option<u64>,
        result: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        if items.is_some() == total.is_some() {
            return Err(PyTypeError::new_err(
                "a Batch takes items=[...] or total=N (one of them)",
            ));
        }
        Ok(Batch {
            items,
            total,
            result: result.unwrap_or_else(|| py.None()),
        })
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        match (&self.items, self.total) {
            (Some(items), _) => {
                let n = items.bind(py).len().unwrap_or(0);
                format!("Batch(items=<{n} items>)")
            }
            (None, total) => format!("Batch(total={})", total.unwrap_or(0)),
        }
    }
}

/// A task a handler starts as a child of its step (see [`Children`]).
#[pyclass(module = "tasker_core._native", frozen)]
struct ChildTask {
    /// The template's namespace.
    #[pyo3(get)]
    namespace: String,
    /// The template's name.
    #[pyo3(get)]
    name: String,
    /// The child's context.
    #[pyo3(get)]
    context: Py<PyAny>,
    /// The template version (``None``: the newest).
    #[pyo3(get)]
    version: Option<String>,
}

#[pymethods]
impl ChildTask {
    #[new]
    #[pyo3(signature = (namespace, name, context = None, version = None))]
    fn new(
        py: Python<'_>,
        namespace: String,
        name: String,
        context: Option<Py<PyAny>>,
        version: Option<String>,
    ) -> Self {
        ChildTask {
            namespace,
            name,
            context: context.unwrap_or_else(|| PyDict::new(py).into_any().unbind()),
            version,
        }
    }

    fn __repr__(&self) -> String {
        format!("ChildTask({:?}, {:?})", self.namespace, self.name)
    }
}

/// What a handler returns to start child tasks: its step waits (``waiting_for_children``)
/// until they have all finished, then completes with the list of their results in order (each
/// an object of the child's leaf steps' results by name), or fails when one failed.
#[pyclass(module = "tasker_core._native", frozen)]
struct Children {
    /// The child tasks, in order.
    #[pyo3(get)]
    tasks: Vec<Py<ChildTask>>,
}

#[pymethods]
impl Children {
    #[new]
    fn new(tasks: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut list = Vec::new();
        for (n, item) in tasks.try_iter()?.enumerate() {
            let item = item?;
            let child = item.cast::<ChildTask>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "child {n} must be a ChildTask, not {}",
                    item.get_type()
                ))
            })?;
            list.push(child.clone().unbind());
        }
        Ok(Children { tasks: list })
    }

    fn __repr__(&self) -> String {
        format!("Children(<{} tasks>)", self.tasks.len())
    }
}

/// An instant given to the engine: a `datetime` (naive ones are UTC) or an RFC 3339 string.
fn to_time(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<tasker_core::Timestamp> {
    let text: String = if let Ok(text) = obj.extract::<String>() {
        text
    } else if obj.hasattr("isoformat")? && obj.hasattr("tzinfo")? {
        let text: String = obj.call_method0("isoformat")?.extract()?;
        if obj.getattr("tzinfo")?.is_none() {
            format!("{text}+00:00")
        } else {
            text
        }
    } else {
        return Err(PyTypeError::new_err(format!(
            "{what} must be a datetime or an RFC 3339 string, not {}",
            obj.get_type()
        )));
    };
    tasker_core::clock::parse_time(&text, what).map_err(|e| invalid(e.to_string()))
}

/// A delay given to the engine: a `timedelta` or a number of seconds, in milliseconds.
fn to_delay_ms(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
    let seconds: f64 = if obj.hasattr("total_seconds")? {
        obj.call_method0("total_seconds")?.extract()?
    } else {
        obj.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "{what} must be a timedelta or a number of seconds, not {}",
                obj.get_type()
            ))
        })?
    };
    tasker_core::host::seconds_ms(seconds, what).map_err(|e| invalid(e.to_string()))
}

/// A handler's return value for the core: a [`Decision`], a [`Batch`], [`Children`] or a JSON
/// result.
fn output(obj: &Bound<'_, PyAny>) -> PyResult<tasker_core::HandlerOutput> {
    let py = obj.py();
    if let Ok(d) = obj.cast::<Decision>() {
        let d = d.get();
        return Ok(tasker_core::Decision {
            steps: d.steps.clone(),
            result: to_json(d.result.bind(py), "the result")?,
        }
        .into());
    }
    if let Ok(b) = obj.cast::<Batch>() {
        let b = b.get();
        let work = match (&b.items, b.total) {
            (Some(items), _) => match to_json(items.bind(py), "the batch's items")? {
                Value::Array(items) => tasker_core::store::BatchWork::Items(items),
                _ => return Err(invalid("the batch's items must be a list")),
            },
            (None, total) => tasker_core::store::BatchWork::Total(total.unwrap_or(0)),
        };
        let result = to_json(b.result.bind(py), "the result")?;
        return Ok(tasker_core::Batch { work, result }.into());
    }
    if let Ok(c) = obj.cast::<Children>() {
        let mut tasks = Vec::with_capacity(c.get().tasks.len());
        for child in &c.get().tasks {
            let child = child.get();
            tasks.push(tasker_core::ChildTask {
                namespace: child.namespace.clone(),
                name: child.name.clone(),
                version: child.version.clone(),
                context: to_json(child.context.bind(py), "a child task's context")?,
            });
        }
        return Ok(tasker_core::Children { tasks }.into());
    }
    to_json(obj, "the result").map(Into::into)
}

fn convert(obj: &Bound<'_, PyAny>, what: &str, depth: usize) -> PyResult<Value> {
    use pyo3::types::{
        PyBool, PyFloat, PyFrozenSet, PyInt, PyList, PyMapping, PySequence, PySet, PyTuple,
    };
    let not_json = |why: String| invalid(format!("{what} is not JSON-serialisable: {why}"));
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    if let Ok(i) = obj.cast::<PyInt>() {
        if let Ok(v) = i.extract::<i64>() {
            return Ok(Value::from(v));
        }
        return i
            .extract::<u64>()
            .map(Value::from)
            .map_err(|_| not_json(format!("{i} does not fit in 64 bits")));
    }
    if let Ok(f) = obj.cast::<PyFloat>() {
        let v = f.value();
        return serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| not_json(format!("{v} is not a finite number")));
    }
    if let Ok(text) = obj.cast::<PyString>() {
        return Ok(Value::String(text.to_cow()?.into_owned()));
    }
    let nested = |depth: usize| -> PyResult<usize> {
        if depth >= MAX_JSON_DEPTH {
            return Err(invalid(format!(
                "{what} nests deeper than {MAX_JSON_DEPTH} levels (or contains itself)"
            )));
        }
        Ok(depth + 1)
    };
    let key = |k: Bound<'_, PyAny>| -> PyResult<String> {
        match k.cast::<PyString>() {
            Ok(k) => Ok(k.to_cow()?.into_owned()),
            Err(_) => Err(not_json(format!(
                "a mapping key must be a str, not {}",
                k.get_type().name()?
            ))),
        }
    };
    if let Ok(d) = obj.cast::<PyDict>() {
        let depth = nested(depth)?;
        let mut map = serde_json::Map::with_capacity(d.len());
        for (k, v) in d.iter() {
            map.insert(key(k)?, convert(&v, what, depth)?);
        }
        return Ok(Value::Object(map));
    }
    let array = |items: &mut dyn Iterator<Item = PyResult<Bound<'_, PyAny>>>| -> PyResult<Value> {
        let depth = nested(depth)?;
        let mut out = Vec::new();
        for item in items {
            out.push(convert(&item?, what, depth)?);
        }
        Ok(Value::Array(out))
    };
    if let Ok(l) = obj.cast::<PyList>() {
        return array(&mut l.iter().map(Ok));
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        return array(&mut t.iter().map(Ok));
    }
    if let Ok(set) = obj.cast::<PySet>() {
        return array(&mut set.iter().map(Ok));
    }
    if let Ok(set) = obj.cast::<PyFrozenSet>() {
        return array(&mut set.iter().map(Ok));
    }
    if let Ok(m) = obj.cast::<PyMapping>() {
        let depth = nested(depth)?;
        let mut map = serde_json::Map::new();
        for item in m.items()?.iter() {
            let (k, v): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item.extract()?;
            map.insert(key(k)?, convert(&v, what, depth)?);
        }
        return Ok(Value::Object(map));
    }
    // A dataclass instance: a mapping of its fields (as pythonize and dataclasses.asdict do).
    let py = obj.py();
    if obj.hasattr(pyo3::intern!(py, "__dataclass_fields__"))? && !obj.is_instance_of::<PyType>() {
        let depth = nested(depth)?;
        let fields = py.import("dataclasses")?.call_method1("fields", (obj,))?;
        let mut map = serde_json::Map::new();
        for field in fields.try_iter()? {
            let name: String = field?.getattr(pyo3::intern!(py, "name"))?.extract()?;
            let value = obj.getattr(name.as_str())?;
            map.insert(name, convert(&value, what, depth)?);
        }
        return Ok(Value::Object(map));
    }
    let is_bytes = obj.is_instance_of::<pyo3::types::PyBytes>()
        || obj.is_instance_of::<pyo3::types::PyByteArray>();
    if !is_bytes {
        if let Ok(seq) = obj.cast::<PySequence>() {
            return array(&mut seq.try_iter()?);
        }
    }
    Err(not_json(format!(
        "a {} is not a JSON value",
        obj.get_type().name()?
    )))
}

/// A JSON value (or anything serde serialises) as a Python object.
fn to_py<T: serde::Serialize>(py: Python<'_>, value: &T) -> PyResult<Py<PyAny>> {
    pythonize(py, value)
        .map(Bound::unbind)
        .map_err(|e| StoreError::new_err(format!("cannot convert a value to Python: {e}")))
}

fn task_id(text: &str) -> PyResult<TaskId> {
    text.parse()
        .map_err(|e: tasker_core::ids::InvalidId| invalid(e.to_string()))
}

fn step_id(text: &str) -> PyResult<StepId> {
    text.parse()
        .map_err(|e: tasker_core::ids::InvalidId| invalid(e.to_string()))
}

/// A duration in seconds from Python: non-negative, finite, at most a year.
fn seconds(value: f64, what: &str) -> PyResult<Duration> {
    tasker_core::host::seconds(value, what).map_err(py_err)
}

/// The engine: templates, tasks, the worker protocol, views, operator verbs and events.
///
/// ``Engine(url=None)`` opens ``"memory:"``, ``"sqlite:///path.db"`` or ``"postgres://…"``;
/// without a URL, the SQLite file ``./tasker.db``. Usable as a context manager (closes on exit).
/// Every call that waits for the store or for work releases the GIL.
#[pyclass(module = "tasker_core._native", frozen)]
struct Engine {
    engine: ForkSafe<tasker_core::Engine>,
    runtime: ForkSafe<Arc<Runtime>>,
    owner: Owner,
}

impl Engine {
    /// Runs `f(engine)` on the runtime with the GIL released.
    fn call<T, F, Fut>(&self, py: Python<'_>, f: F) -> PyResult<T>
    where
        T: Send,
        F: FnOnce(tasker_core::Engine) -> Fut + Send,
        Fut: std::future::Future<Output = Result<T, Error>> + Send,
    {
        self.owner.check("engine").map_err(py_err)?;
        let engine = self.engine.clone();
        let runtime = self.runtime.clone();
        py.detach(move || runtime.block_on(f(engine)))
            .map_err(py_err)
    }
}

#[pymethods]
impl Engine {
    #[new]
    #[pyo3(signature = (url = None, environment = None, *, otlp_endpoint = None, metrics = true, allow_private_webhooks = false))]
    fn new(
        py: Python<'_>,
        url: Option<String>,
        environment: Option<String>,
        otlp_endpoint: Option<String>,
        metrics: bool,
        allow_private_webhooks: bool,
    ) -> PyResult<Self> {
        let runtime = runtime()?;
        let url = url.unwrap_or_else(|| tasker_core::engine::DEFAULT_URL.to_owned());
        let rt = runtime.clone();
        let options = tasker_core::engine::OpenOptions {
            environment,
            otlp_endpoint,
            metrics: Some(metrics),
            allow_private_webhooks: Some(allow_private_webhooks),
        };
        let engine = py
            .detach(move || rt.block_on(tasker_core::Engine::open_with(&url, options)))
            .map_err(py_err)?;
        Ok(Engine {
            engine: ForkSafe::new(engine),
            runtime: ForkSafe::new(runtime),
            owner: Owner::current(),
        })
    }

    /// The handler names of every template this engine has registered or read, each once,
    /// sorted (what ``Worker(engine, autoload=True)`` looks up).
    fn registered_handlers(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.call(py, |e| async move { Ok(e.registered_handlers()) })
    }

    /// The environment whose template overrides apply (``environment=``, else ``TASKER_ENV``,
    /// else ``RAILS_ENV``), or None.
    #[getter]
    fn environment(&self, py: Python<'_>) -> PyResult<Option<String>> {
        self.call(
            py,
            |e| async move { Ok(e.environment().map(str::to_owned)) },
        )
    }

    /// Validates and stores a template given as YAML or JSON text or as a dict, in this
    /// engine's format, Rails Tasker's or tasker-core's (detected by its keys). Returns
    /// ``{"namespace", "name", "version", "steps": [step names], "format", "warnings"}``.
    /// Raises TemplateError.
    #[pyo3(signature = (template))]
    fn register_template(
        &self,
        py: Python<'_>,
        template: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let registered = if let Ok(text) = template.cast::<PyString>() {
            let text: String = text.extract()?;
            self.call(
                py,
                move |e| async move { e.register_document_str(&text).await },
            )?
        } else if template.is_instance_of::<PyDict>() {
            let value = to_json(template, "the template")?;
            self.call(py, move |e| async move { e.register_document(value).await })?
        } else {
            return Err(PyTypeError::new_err(format!(
                "a template is YAML or JSON text (str) or a dict, not {}",
                template.get_type().name()?
            )));
        };
        to_py(py, &registered.summary())
    }

    /// Starts a task of template ``namespace/name`` (the newest version unless ``version`` is
    /// given) and returns its id. A second call with the same ``idempotency_key`` returns the
    /// first task's id. Steps of tasks with a higher ``priority`` are claimed first. Nothing of
    /// the task runs before ``run_at`` (a datetime, naive ones UTC, or an RFC 3339 string) or
    /// until ``delay`` (a timedelta or seconds) has passed; at most one of the two. With
    /// ``traceparent`` (a W3C trace context), the task's span continues the caller's trace.
    #[pyo3(signature = (namespace, name, context = None, version = None, idempotency_key = None, priority = 0, run_at = None, delay = None, traceparent = None))]
    #[allow(clippy::too_many_arguments)] // the keyword arguments of the Python API
    fn create_task(
        &self,
        py: Python<'_>,
        namespace: String,
        name: String,
        context: Option<&Bound<'_, PyAny>>,
        version: Option<String>,
        idempotency_key: Option<String>,
        priority: i32,
        run_at: Option<&Bound<'_, PyAny>>,
        delay: Option<&Bound<'_, PyAny>>,
        traceparent: Option<String>,
    ) -> PyResult<String> {
        let context = match context {
            Some(c) if !c.is_none() => to_json(c, "the context")?,
            _ => Value::Object(Default::default()),
        };
        let task = NewTask {
            namespace,
            name,
            version,
            context,
            idempotency_key,
            priority,
            parent: None,
            run_at: run_at.map(|t| to_time(t, "run_at")).transpose()?,
            delay_ms: delay.map(|d| to_delay_ms(d, "delay")).transpose()?,
            traceparent,
        };
        let id = self.call(py, move |e| async move { e.create_task(task).await })?;
        Ok(id.to_string())
    }

    /// Starts many tasks at once and returns their ids, in order. Each item is a mapping with
    /// ``create_task``'s arguments: ``namespace``, ``name`` and optionally ``context``,
    /// ``version``, ``idempotency_key``, ``priority``, ``run_at``, ``delay``. All are checked
    /// before any is written; those without an idempotency key are written in one transaction.
    fn create_tasks(&self, py: Python<'_>, tasks: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        let options = tasker_core::host::CREATE_TASK_OPTIONS;
        let known = |key: &str| key == "namespace" || key == "name" || options.contains(&key);
        let mut batch = Vec::new();
        for (n, item) in tasks.try_iter()?.enumerate() {
            let item = item?;
            let task = item.cast::<pyo3::types::PyMapping>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "task {n} must be a mapping, not {}",
                    item.get_type()
                ))
            })?;
            for key in task.keys()?.iter() {
                let key: String = key.extract()?;
                if !known(&key) {
                    return Err(PyTypeError::new_err(format!(
                        "task {n} has an unknown key {key:?} (expected namespace, name, {})",
                        options.join(", ")
                    )));
                }
            }
            let get = |key: &str| -> PyResult<Option<Bound<'_, PyAny>>> {
                Ok(task.get_item(key).ok().filter(|v| !v.is_none()))
            };
            let text = |key: &str| -> PyResult<Option<String>> {
                get(key)?.map(|v| v.extract::<String>()).transpose()
            };
            let required = |key: &str| -> PyResult<String> {
                text(key)?.ok_or_else(|| PyTypeError::new_err(format!("task {n} has no {key}")))
            };
            batch.push(NewTask {
                namespace: required("namespace")?,
                name: required("name")?,
                version: text("version")?,
                context: match get("context")? {
                    Some(c) => to_json(&c, "the context")?,
                    None => Value::Object(Default::default()),
                },
                idempotency_key: text("idempotency_key")?,
                priority: get("priority")?
                    .map(|p| p.extract::<i32>())
                    .transpose()?
                    .unwrap_or(0),
                parent: None,
                run_at: get("run_at")?.map(|t| to_time(&t, "run_at")).transpose()?,
                delay_ms: get("delay")?
                    .map(|d| to_delay_ms(&d, "delay"))
                    .transpose()?,
                traceparent: text("traceparent")?,
            });
        }
        let ids = self.call(py, move |e| async move { e.create_tasks(batch).await })?;
        Ok(ids.iter().map(ToString::to_string).collect())
    }

    /// Claims up to ``limit`` ready steps whose handler is in ``handlers`` (all when None) for
    /// ``worker_id``, each with a lease of its ``timeout_ms``. When none is ready, waits up to
    /// ``wait`` seconds for one. Returns a list of step dicts (step_id, task_id, name, handler,
    /// namespace, task_name, attempt, max_attempts, context, inputs, lease_expires_at,
    /// timeout_ms).
    #[pyo3(signature = (worker_id, handlers, limit, wait = 0.0))]
    fn claim(
        &self,
        py: Python<'_>,
        worker_id: String,
        handlers: Option<Vec<String>>,
        limit: usize,
        wait: f64,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let wait = seconds(wait, "wait")?;
        let request = ClaimRequest {
            worker_id: worker_id.into(),
            handlers: handlers.map(|h| h.into_iter().map(Into::into).collect()),
            limit,
        };
        // Wait in short slices with the GIL released, so Ctrl-C is seen between them.
        let deadline = Instant::now() + wait;
        let claimed = loop {
            let request = request.clone();
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            let claimed = self.call(py, move |e| async move {
                e.claim_waiting(&request, slice).await
            })?;
            if !claimed.is_empty() || Instant::now() >= deadline {
                break claimed;
            }
            py.check_signals()?;
        };
        claimed.iter().map(|s| to_py(py, &s.to_json())).collect()
    }

    /// Reports a claimed attempt's result (JSON-serialisable), or a decision step's
    /// ``Decision``. Raises ClaimLostError when the claim is no longer held,
    /// InvalidArgumentError when the result is not JSON.
    #[pyo3(signature = (step_id, attempt, result))]
    fn complete(
        &self,
        py: Python<'_>,
        step_id: &str,
        attempt: u32,
        result: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let step = self::step_id(step_id)?;
        let output = output(result)?;
        self.call(
            py,
            move |e| async move { e.report(step, attempt, output).await },
        )
    }

    /// Reports a claimed attempt's failure: retryable (after ``retry_after`` seconds if given,
    /// else the step's backoff) or not.
    #[pyo3(signature = (step_id, attempt, message, retryable = true, retry_after = None))]
    fn fail(
        &self,
        py: Python<'_>,
        step_id: &str,
        attempt: u32,
        message: String,
        retryable: bool,
        retry_after: Option<f64>,
    ) -> PyResult<()> {
        let step = self::step_id(step_id)?;
        let failure = failure(message, retryable, retry_after)?;
        self.call(
            py,
            move |e| async move { e.fail(step, attempt, failure).await },
        )
    }

    /// Extends a claimed attempt's lease by its timeout; returns the new expiry (RFC 3339).
    #[pyo3(signature = (step_id, attempt))]
    fn heartbeat(&self, py: Python<'_>, step_id: &str, attempt: u32) -> PyResult<String> {
        let step = self::step_id(step_id)?;
        let at = self.call(py, move |e| async move { e.heartbeat(step, attempt).await })?;
        Ok(serde_json::to_value(at)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| at.to_rfc3339()))
    }

    /// The task as a dict: id, namespace, name, version, status, context, priority,
    /// idempotency_key, progress, steps (status, attempts, result, error, duration_ms, …),
    /// created_at, updated_at, completed_at.
    #[pyo3(signature = (task_id))]
    fn task(&self, py: Python<'_>, task_id: &str) -> PyResult<Py<PyAny>> {
        let id = self::task_id(task_id)?;
        let view = self.call(py, move |e| async move { e.task(id).await })?;
        to_py(py, &view)
    }

    /// Tasks, newest first, filtered by status, namespace and template name.
    #[pyo3(signature = (status = None, namespace = None, name = None, limit = 100))]
    fn list_tasks(
        &self,
        py: Python<'_>,
        status: Option<&str>,
        namespace: Option<String>,
        name: Option<String>,
        limit: usize,
    ) -> PyResult<Py<PyAny>> {
        let status = status
            .map(|s| s.parse::<TaskState>().map_err(|e| invalid(e.to_string())))
            .transpose()?;
        let filter = TaskFilter {
            status,
            namespace,
            name,
            limit,
        };
        let views = self.call(py, move |e| async move { e.list_tasks(&filter).await })?;
        to_py(py, &views)
    }

    /// The task's audit trail, oldest first: dicts with step_id, step (None for the task),
    /// from, to, event, reason, attempt, at.
    #[pyo3(signature = (task_id))]
    fn transitions(&self, py: Python<'_>, task_id: &str) -> PyResult<Py<PyAny>> {
        let id = self::task_id(task_id)?;
        let trail = self.call(py, move |e| async move { e.transitions(id).await })?;
        to_py(py, &trail)
    }

    /// The lines the task's attempts logged (``step.log``, and ``logging`` records emitted
    /// inside a handler), by step, attempt and line: ``[{step, step_index, attempt, at, level,
    /// message}]``; of the step named ``step`` only, when given. Raises NotFoundError for an
    /// unknown task or step.
    #[pyo3(signature = (task_id, step = None))]
    fn logs(&self, py: Python<'_>, task_id: &str, step: Option<String>) -> PyResult<Py<PyAny>> {
        let id = self::task_id(task_id)?;
        let lines = self.call(
            py,
            move |e| async move { e.logs(id, step.as_deref()).await },
        )?;
        to_py(py, &lines)
    }

    /// The task's webhook deliveries, oldest first: ``[{id, task_id, event, url, status,
    /// attempts, last_error, created_at, delivered_at}]`` (status ``pending``, ``delivering``,
    /// ``delivered`` or ``failed``). Raises NotFoundError for an unknown task.
    fn webhook_deliveries(&self, py: Python<'_>, task_id: &str) -> PyResult<Py<PyAny>> {
        let id = self::task_id(task_id)?;
        let deliveries = self.call(py, move |e| async move { e.webhook_deliveries(id).await })?;
        to_py(py, &deliveries)
    }

    /// Sends the store's due webhook deliveries now (workers do every second); how many
    /// attempts it made.
    fn deliver_webhooks(&self, py: Python<'_>) -> PyResult<usize> {
        self.call(py, |e| async move { e.deliver_webhooks().await })
    }

    /// The task's DAG: ``{"task_id", "nodes": [{name, handler, status}], "edges": [{from, to,
    /// requires_success}]}``.
    #[pyo3(signature = (task_id))]
    fn graph(&self, py: Python<'_>, task_id: &str) -> PyResult<Py<PyAny>> {
        let id = self::task_id(task_id)?;
        let graph = self.call(py, move |e| async move { e.graph(id).await })?;
        to_py(py, &graph)
    }

    /// Cancels the task and its unfinished steps.
    #[pyo3(signature = (task_id))]
    fn cancel_task(&self, py: Python<'_>, task_id: &str) -> PyResult<()> {
        let id = self::task_id(task_id)?;
        self.call(py, move |e| async move { e.cancel_task(id).await })
    }

    /// Pauses the task: none of its steps is handed out until it is resumed.
    #[pyo3(signature = (task_id))]
    fn pause_task(&self, py: Python<'_>, task_id: &str) -> PyResult<()> {
        let id = self::task_id(task_id)?;
        self.call(py, move |e| async move { e.pause_task(id).await })
    }

    /// Resumes a paused task.
    #[pyo3(signature = (task_id))]
    fn resume_task(&self, py: Python<'_>, task_id: &str) -> PyResult<()> {
        let id = self::task_id(task_id)?;
        self.call(py, move |e| async move { e.resume_task(id).await })
    }

    /// Runs a failed task again: its failed steps get a fresh attempt budget.
    #[pyo3(signature = (task_id))]
    fn retry_task(&self, py: Python<'_>, task_id: &str) -> PyResult<()> {
        let id = self::task_id(task_id)?;
        self.call(py, move |e| async move { e.retry_task(id).await })
    }

    /// An operator supplies the result of step ``step`` of the task; its dependents run as if
    /// it had completed.
    #[pyo3(signature = (task_id, step, result))]
    fn resolve_step(
        &self,
        py: Python<'_>,
        task_id: &str,
        step: String,
        result: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let id = self::task_id(task_id)?;
        let result = to_json(result, "the result")?;
        self.call(py, move |e| async move {
            e.resolve_step(id, &step, result).await
        })
    }

    /// Subscribes to lifecycle events whose name matches the glob ``pattern`` (``"step.*"``).
    #[pyo3(signature = (pattern = "*"))]
    fn subscribe(&self, pattern: &str) -> PyResult<Subscription> {
        let sub = self.engine.subscribe(pattern).map_err(py_err)?;
        Ok(Subscription { sub: Arc::new(sub) })
    }

    /// What work there is: ``{"ready", "running", "waiting", "next_due"}`` (``ready`` counts
    /// only steps of ``handlers`` when given).
    #[pyo3(signature = (handlers = None))]
    fn work_status(&self, py: Python<'_>, handlers: Option<Vec<String>>) -> PyResult<Py<PyAny>> {
        let status = self.call(py, move |e| async move { e.work_status_of(handlers).await })?;
        to_py(py, &status)
    }

    /// This engine's metrics in the Prometheus text format (OpenMetrics): counters and
    /// histograms of what it recorded since it opened, and the store's ready steps per handler.
    fn metrics(&self, py: Python<'_>) -> PyResult<String> {
        self.call(py, |e| async move { e.metrics().await })
    }

    /// What the store holds, counted: ``{"tasks": {status: n}, "steps": {status: n},
    /// "retries", "recovered", "lease_expiries", "handlers": [{handler, finished, mean_ms,
    /// p95_ms}]}``.
    fn stats(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let stats = self.call(py, |e| async move { e.stats().await })?;
        to_py(py, &stats)
    }

    /// Gives back every step whose lease has expired; returns how many.
    fn reclaim_expired(&self, py: Python<'_>) -> PyResult<usize> {
        self.call(py, |e| async move { e.reclaim_expired().await })
    }

    /// Deletes the tasks that finished before ``finished_before`` (a datetime or RFC 3339
    /// string) whose state is one of ``statuses`` (default: any finished state), with their
    /// steps and transitions; returns how many.
    #[pyo3(signature = (finished_before, statuses = None))]
    fn purge(
        &self,
        py: Python<'_>,
        finished_before: &Bound<'_, PyAny>,
        statuses: Option<Vec<String>>,
    ) -> PyResult<u64> {
        let before = to_time(finished_before, "finished_before")?;
        let statuses = statuses
            .map(|list| {
                list.iter()
                    .map(|s| s.parse::<tasker_core::TaskState>())
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(|e| invalid(e.to_string()))?;
        self.call(py, move |e| async move {
            e.purge(before, statuses.as_deref()).await
        })
    }

    /// Registers (or replaces) durable cron schedule ``name``: each tick of ``cron`` (5 fields,
    /// or 6 with seconds first) in ``timezone`` creates one task of ``namespace/template`` with
    /// ``context``, however many engines share the store; ``overlap="skip"`` skips a tick while
    /// the last one's task still runs. Returns the schedule (with ``next_at``).
    #[pyo3(signature = (name, cron, namespace, template, context = None, timezone = None, overlap = None, version = None))]
    #[allow(clippy::too_many_arguments)] // the keyword arguments of the Python API
    fn schedule(
        &self,
        py: Python<'_>,
        name: String,
        cron: String,
        namespace: String,
        template: String,
        context: Option<&Bound<'_, PyAny>>,
        timezone: Option<String>,
        overlap: Option<String>,
        version: Option<String>,
    ) -> PyResult<Py<PyAny>> {
        let context = context
            .filter(|c| !c.is_none())
            .map(|c| to_json(c, "the context"))
            .transpose()?;
        let spec = tasker_core::schedule::ScheduleSpec::from_args(
            name,
            cron,
            namespace,
            template,
            context,
            timezone,
            overlap.as_deref(),
            version,
        )
        .map_err(|e| invalid(e.to_string()))?;
        let view = self.call(py, move |e| async move { e.schedule(spec).await })?;
        to_py(py, &view)
    }

    /// Removes schedule ``name``; whether there was one.
    fn unschedule(&self, py: Python<'_>, name: String) -> PyResult<bool> {
        self.call(py, move |e| async move { e.unschedule(&name).await })
    }

    /// Every schedule, by name.
    fn schedules(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let list = self.call(py, |e| async move { e.schedules().await })?;
        to_py(py, &list)
    }

    /// Creates the tasks of the schedules' ticks that fell due (workers do it every second);
    /// returns how many.
    fn fire_schedules(&self, py: Python<'_>) -> PyResult<usize> {
        self.call(py, |e| async move { e.fire_schedules().await })
    }

    /// Makes good the child tasks' follow-ups a crash left undone (workers do it every few
    /// seconds): settles the steps whose children all finished, cancels the children no step
    /// waits for any more. Returns how many tasks it changed.
    fn tend_children(&self, py: Python<'_>) -> PyResult<usize> {
        self.call(py, |e| async move { e.tend_children().await })
    }

    /// Applies the store's schema migrations not applied yet (opening does it too).
    fn migrate(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |e| async move { e.migrate().await })
    }

    /// Closes the engine: every later call raises StoreError.
    fn close(&self, py: Python<'_>) {
        // Without the GIL: closing sends the spans still queued (up to a few seconds).
        py.detach(|| self.engine.close());
    }

    /// Whether ``close()`` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.engine.is_closed()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) {
        py.detach(|| self.engine.close());
    }

    fn __repr__(&self) -> String {
        format!(
            "<tasker_core.Engine{}>",
            if self.engine.is_closed() {
                " closed"
            } else {
                ""
            }
        )
    }
}

/// A handler's failure: retryable (after ``retry_after`` seconds if given) or permanent.
fn failure(message: String, retryable: bool, retry_after: Option<f64>) -> PyResult<StepFailure> {
    tasker_core::host::failure(message, retryable, retry_after).map_err(py_err)
}

/// One worker's configuration and runs, one at a time (the core's ``Runs``): ``start`` begins
/// a run's ``WorkerSession``; ``stop`` stops the run under way or the next one to start.
#[pyclass(module = "tasker_core._native", frozen)]
struct WorkerRuns {
    engine: ForkSafe<tasker_core::Engine>,
    runtime: ForkSafe<Arc<Runtime>>,
    config: SessionConfig,
    runs: tasker_core::worker::Runs,
    /// The process its engine belongs to: a worker made before a fork cannot run in the child.
    owner: Owner,
}

#[pymethods]
impl WorkerRuns {
    #[new]
    #[pyo3(signature = (engine, concurrency, worker_id = None, poll_interval = 0.1, drain_timeout = 30.0))]
    fn new(
        engine: &Engine,
        concurrency: usize,
        worker_id: Option<String>,
        poll_interval: f64,
        drain_timeout: f64,
    ) -> PyResult<Self> {
        engine.owner.check("engine").map_err(py_err)?;
        let config = tasker_core::host::session_config(
            concurrency,
            worker_id,
            "py",
            poll_interval,
            drain_timeout,
        )
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(WorkerRuns {
            engine: ForkSafe::new((*engine.engine).clone()),
            runtime: ForkSafe::new((*engine.runtime).clone()),
            config,
            runs: Default::default(),
            owner: engine.owner,
        })
    }

    /// Starts a run for ``handlers`` (until idle, or until stopped), ending after ``timeout``
    /// seconds if given. Raises RuntimeError while a run is under way or without handlers.
    ///
    /// With ``step_type`` (``tasker_core.Step``), ``next`` returns instances of it, each with
    /// the claim's fields and ``_session`` in its ``__dict__``; without, plain dicts.
    #[pyo3(signature = (handlers, until_idle, timeout = None, step_type = None))]
    fn start(
        &self,
        handlers: Vec<String>,
        until_idle: bool,
        timeout: Option<f64>,
        step_type: Option<Py<PyType>>,
    ) -> PyResult<WorkerSession> {
        // Made before a fork: its engine's runtime and connections are the parent's (the
        // child would wait on them for ever).
        self.owner.check("worker").map_err(py_err)?;
        let mut config = self.config.clone().handlers(handlers);
        config.until_idle = until_idle;
        if let Some(t) = timeout {
            let t = tasker_core::host::seconds(t, "timeout")
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            config = config.timeout(t);
        }
        let session = {
            let _entered = self.runtime.enter();
            self.runs.start((*self.engine).clone(), config)
        }
        .map_err(|refused| PyRuntimeError::new_err(refused.to_string()))?;
        Ok(WorkerSession {
            session: ForkSafe::new(session),
            runtime: ForkSafe::new((*self.runtime).clone()),
            owner: self.owner,
            step_type,
        })
    }

    /// Stops the run under way, or the next one to start (that run returns at once).
    fn stop(&self) {
        self.runs.stop();
    }

    /// The run has returned.
    fn end(&self) {
        self.runs.end();
    }

    /// Whether a run is under way.
    #[getter]
    fn running(&self) -> bool {
        self.runs.current().is_some()
    }

    /// The owner recorded on this worker's leases.
    #[getter]
    fn worker_id(&self) -> String {
        self.config.worker_id.to_string()
    }
}

/// The core's worker session, driven by Python threads: each asks for the next attempt
/// (``next``, GIL released while it waits), runs the handler and hands the outcome back
/// (``complete`` / ``fail`` / ``timed_out``). Slots, claim and report batching, lease renewal,
/// timeouts, store back-off, drain and idleness are the core's. ``tasker_core.Worker`` is the
/// convenient loop over it.
#[pyclass(module = "tasker_core._native", frozen)]
struct WorkerSession {
    session: ForkSafe<CoreSession>,
    runtime: ForkSafe<Arc<Runtime>>,
    owner: Owner,
    /// What `next` makes of an attempt: instances of this class, or dicts.
    step_type: Option<Py<PyType>>,
}

impl WorkerSession {
    /// The claimed step as the host's step object: a `step_type` whose `__dict__` is the
    /// claim's dict with `_session`, made as `dataclasses.replace` would (`object.__new__`,
    /// then `object.__setattr__`: the class is frozen), or the dict itself.
    fn step_object(
        slf: &Bound<'_, Self>,
        step: &tasker_core::store::ClaimedStep,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let fields = to_py(py, step)?;
        let Some(step_type) = &slf.get().step_type else {
            return Ok(fields);
        };
        static NEW: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        static SETATTR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let object = py.get_type::<pyo3::types::PyAny>();
        let new = NEW.get_or_try_init(py, || object.getattr("__new__").map(Bound::unbind))?;
        let setattr =
            SETATTR.get_or_try_init(py, || object.getattr("__setattr__").map(Bound::unbind))?;
        let fields = fields.bind(py);
        fields.set_item(pyo3::intern!(py, "_session"), slf)?;
        let instance = new.bind(py).call1((step_type.bind(py),))?;
        setattr
            .bind(py)
            .call1((&instance, pyo3::intern!(py, "__dict__"), fields))?;
        Ok(instance.unbind())
    }

    fn check(&self) -> PyResult<()> {
        self.owner.check("worker session").map_err(py_err)
    }

    /// Hands an outcome back; ``None`` when taken, else why it was refused (to log).
    fn hand_back(
        &self,
        step_id: &str,
        attempt: u32,
        outcome: AttemptOutcome,
    ) -> PyResult<Option<String>> {
        let id = AttemptId {
            step: self::step_id(step_id)?,
            attempt,
        };
        Ok(self
            .session
            .report(id, outcome)
            .err()
            .map(|r| r.to_string()))
    }
}

#[pymethods]
impl WorkerSession {
    /// The next attempt as a step dict, waiting up to ``wait`` seconds with the GIL released;
    /// ``None`` when none came (see ``finished``).
    #[pyo3(signature = (wait = 0.1))]
    fn next(slf: &Bound<'_, Self>, wait: f64) -> PyResult<Option<Py<PyAny>>> {
        let (py, this) = (slf.py(), slf.get());
        this.check()?;
        let wait = seconds(wait, "wait")?;
        // Without giving up the GIL when an attempt is queued already.
        let next = match this.session.try_next() {
            Next::Empty => {
                let (session, runtime) = (this.session.clone(), this.runtime.clone());
                py.detach(move || runtime.block_on(session.next(wait)))
            }
            next => next,
        };
        match next {
            Next::Attempt(attempt) => Self::step_object(slf, &attempt.step).map(Some),
            Next::Empty | Next::Finished => Ok(None),
        }
    }

    /// Hands back a result (or a decision step's ``Decision``). Returns ``None`` when taken,
    /// else the reason it was refused (a late return after the timeout, say). A result that is
    /// not JSON fails the attempt for good ("result is not JSON-serialisable: …"), and that
    /// message is returned.
    fn complete(
        &self,
        step_id: &str,
        attempt: u32,
        result: &Bound<'_, PyAny>,
    ) -> PyResult<Option<String>> {
        self.check()?;
        let converted = output(result).map_err(|e| e.to_string());
        let (outcome, failed) = tasker_core::host::result_outcome(converted);
        Ok(self.hand_back(step_id, attempt, outcome)?.or(failed))
    }

    /// Hands back a failure: retryable (after ``retry_after`` seconds, else the backoff) or
    /// permanent. ``None`` when taken, else why it was refused.
    #[pyo3(signature = (step_id, attempt, message, retryable = true, retry_after = None))]
    fn fail(
        &self,
        step_id: &str,
        attempt: u32,
        message: String,
        retryable: bool,
        retry_after: Option<f64>,
    ) -> PyResult<Option<String>> {
        self.check()?;
        let failure = failure(message, retryable, retry_after)?;
        self.hand_back(step_id, attempt, AttemptOutcome::Fail(failure))
    }

    /// The host cancelled the handler at its deadline (an async handler): the attempt fails
    /// as timed out. ``None`` when taken, else why it was refused.
    fn timed_out(&self, step_id: &str, attempt: u32) -> PyResult<Option<String>> {
        self.check()?;
        self.hand_back(step_id, attempt, AttemptOutcome::TimedOut)
    }

    /// Renews the attempt's lease now; returns the new expiry (RFC 3339). Raises
    /// ClaimLostError when the attempt is no longer held.
    fn heartbeat(&self, py: Python<'_>, step_id: &str, attempt: u32) -> PyResult<String> {
        self.check()?;
        let id = AttemptId {
            step: self::step_id(step_id)?,
            attempt,
        };
        let (session, runtime) = (self.session.clone(), self.runtime.clone());
        let at = py
            .detach(move || runtime.block_on(session.heartbeat(id)))
            .map_err(py_err)?;
        Ok(serde_json::to_value(at)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| at.to_rfc3339()))
    }

    /// Publishes custom event ``name`` with ``payload`` (JSON-serialisable) from a running
    /// attempt: one its template declares for the step. Raises InvalidArgumentError when it is
    /// not declared or the payload breaks the event's schema, ClaimLostError when the attempt
    /// is no longer held.
    #[pyo3(signature = (step_id, attempt, name, payload = None))]
    fn publish(
        &self,
        step_id: &str,
        attempt: u32,
        name: &str,
        payload: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.check()?;
        let id = AttemptId {
            step: self::step_id(step_id)?,
            attempt,
        };
        let payload = match payload {
            Some(p) => to_json(p, "the event's payload")?,
            None => serde_json::Value::Null,
        };
        self.session.publish(id, name, payload).map_err(py_err)
    }

    /// Keeps ``message`` in the running attempt's log at ``level`` (debug, info, warn or
    /// error; Python's level names too), written with the attempt's outcome; whether it was
    /// kept (not once the attempt was handed back). Raises InvalidArgumentError for an
    /// unknown level.
    #[pyo3(signature = (step_id, attempt, message, level = "info"))]
    fn log(&self, step_id: &str, attempt: u32, message: &str, level: &str) -> PyResult<bool> {
        self.check()?;
        let id = AttemptId {
            step: self::step_id(step_id)?,
            attempt,
        };
        let level = level.parse().map_err(py_err)?;
        Ok(self.session.log(id, level, message))
    }

    /// Stops claiming; running handlers finish (up to the drain timeout), then it ends.
    fn stop(&self) {
        self.session.stop();
    }

    /// Ends at once: what is not reported is released (pending again, the attempt not counted).
    fn abort(&self) {
        self.session.abort();
    }

    /// Whether the session has ended.
    #[getter]
    fn finished(&self) -> bool {
        self.session.is_finished()
    }

    /// Waits up to ``wait`` seconds (GIL released) for the end; the counts ``{"completed",
    /// "failed", "lost", "released", "idle"}``, or ``None`` if it has not ended yet.
    #[pyo3(signature = (wait = 0.1))]
    fn result(&self, py: Python<'_>, wait: f64) -> PyResult<Option<Py<PyAny>>> {
        self.check()?;
        let wait = seconds(wait, "wait")?;
        let (session, runtime) = (self.session.clone(), self.runtime.clone());
        let report = py.detach(move || {
            runtime
                .block_on(async move { tokio::time::timeout(wait, session.finished()).await.ok() })
        });
        match report {
            None => Ok(None),
            Some(report) => to_py(py, &report.map_err(py_err)?).map(Some),
        }
    }
}

/// A subscription to lifecycle events: ``next(timeout=None)`` or iterate. Each event is a dict
/// with name, task_id, step_id, step_name, attempt, at and detail. A slow subscriber loses
/// events (counted in ``dropped``) instead of slowing the engine.
#[pyclass(module = "tasker_core._native", frozen)]
struct Subscription {
    sub: Arc<CoreSubscription>,
}

impl Subscription {
    fn wait(&self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<Option<Py<PyAny>>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            // Wait in short slices with the GIL released, so Ctrl-C is seen between them.
            let slice = match deadline {
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100)),
                None => Duration::from_millis(100),
            };
            let sub = self.sub.clone();
            if let Some(event) = py.detach(move || sub.next_timeout(slice)) {
                return to_py(py, &event.to_json()).map(Some);
            }
            py.check_signals()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
        }
    }
}

#[pymethods]
impl Subscription {
    /// The next event, or None after ``timeout`` seconds (None: wait until one comes).
    #[pyo3(signature = (timeout = None))]
    fn next(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<PyAny>>> {
        let timeout = timeout.map(|t| seconds(t, "timeout")).transpose()?;
        self.wait(py, timeout)
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.wait(py, None)
    }

    /// Events lost because this subscriber's queue was full.
    #[getter]
    fn dropped(&self) -> u64 {
        self.sub.dropped()
    }

    /// The glob this subscription matches.
    #[getter]
    fn pattern(&self) -> String {
        self.sub.pattern().to_owned()
    }
}

/// The native half of the ``tasker_core`` package.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Engine>()?;
    m.add_class::<Subscription>()?;
    m.add_class::<WorkerSession>()?;
    m.add_class::<WorkerRuns>()?;
    m.add_class::<Decision>()?;
    m.add_class::<Batch>()?;
    m.add_class::<ChildTask>()?;
    m.add_class::<Children>()?;
    m.add("TaskerError", py.get_type::<TaskerError>())?;
    m.add("TemplateError", py.get_type::<TemplateError>())?;
    m.add("NotFoundError", py.get_type::<NotFoundError>())?;
    m.add(
        "InvalidTransitionError",
        py.get_type::<InvalidTransitionError>(),
    )?;
    m.add("ClaimLostError", py.get_type::<ClaimLostError>())?;
    m.add("StoreError", py.get_type::<StoreError>())?;
    m.add(
        "InvalidArgumentError",
        py.get_type::<InvalidArgumentError>(),
    )?;
    m.add(
        "IdempotencyConflictError",
        py.get_type::<IdempotencyConflictError>(),
    )?;
    m.add("InvalidContextError", py.get_type::<InvalidContextError>())?;
    m.add("DEFAULT_URL", tasker_core::engine::DEFAULT_URL)?;
    Ok(())
}
