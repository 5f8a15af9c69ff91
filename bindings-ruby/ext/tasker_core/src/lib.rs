//! `tasker_core/tasker_core_native`: the Ruby face of the engine. Thin by design: argument
//! conversion (JSON values through serde_magnus), error mapping to Ruby exception classes,
//! handle lifetimes, and the GVL released whenever Rust waits (rb_thread_call_without_gvl).
//! The worker loop lives in Ruby (lib/tasker_core/worker.rb) on Ruby threads; no Rust thread
//! ever calls into Ruby.

#![deny(unsafe_op_in_unsafe_fn)]

/// Rust allocations of the extension: the runtime's threads allocate the steps that Ruby's
/// threads free, and glibc's malloc takes an arena lock on each such free (mimalloc does not).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use magnus::prelude::*;
use magnus::scan_args::{get_kwargs, scan_args};
use magnus::{
    function, method, Error, ExceptionClass, RArray, RHash, RModule, RString, Ruby, Value,
};
use serde_json::Value as Json;
use tasker_core::error::ErrorKind;
use tasker_core::host::{ForkSafe, Owner};
use tasker_core::store::{ClaimRequest, StepFailure};
use tasker_core::worker::{AttemptId, AttemptOutcome, Next, SessionConfig, WorkerSession};
use tasker_core::{NewTask, StepId, TaskFilter, TaskId, TaskState};
use tokio::runtime::Runtime;

/// Runs `f` with the GVL released, so that other Ruby threads run meanwhile. `f` must not touch
/// Ruby objects (it only sees Rust data). It is handed a [`Cancel`] that Ruby's unblock function
/// fires when the thread is interrupted (Thread#raise, Thread#kill, a signal, process exit):
/// long waits select on it and return early, so the thread never hangs in Rust.
fn without_gvl<F: FnOnce(&Cancel) -> R, R>(f: F) -> Result<R, String> {
    struct Call<G, R> {
        f: Option<G>,
        cancel: Cancel,
        result: Option<std::thread::Result<R>>,
    }
    unsafe extern "C" fn trampoline<G: FnOnce(&Cancel) -> R, R>(data: *mut c_void) -> *mut c_void {
        // SAFETY: `data` is the `Call` below, alive and exclusively ours during the call.
        let call = unsafe { &mut *(data as *mut Call<G, R>) };
        if let Some(f) = call.f.take() {
            let cancel = call.cancel.clone();
            call.result = Some(catch_unwind(AssertUnwindSafe(|| f(&cancel))));
        }
        std::ptr::null_mut()
    }
    unsafe extern "C" fn unblock(data: *mut c_void) {
        // SAFETY: `data` is the `Cancel` inside the `Call` below, alive while the call runs
        // (Ruby calls the unblock function only during it). Firing it only touches atomics.
        let cancel = unsafe { &*(data as *const Cancel) };
        cancel.fire();
    }
    let mut call = Call {
        f: Some(f),
        cancel: Cancel::default(),
        result: None,
    };
    let cancel_ptr = &call.cancel as *const Cancel as *mut c_void;
    // SAFETY: the trampoline matches `Call<F, R>`; the unblock function gets the call's `Cancel`,
    // which outlives the call.
    unsafe {
        rb_sys::rb_thread_call_without_gvl(
            Some(trampoline::<F, R>),
            &mut call as *mut Call<F, R> as *mut c_void,
            Some(unblock),
            cancel_ptr,
        );
    }
    match call.result {
        Some(Ok(r)) => Ok(r),
        Some(Err(_)) => Err("internal panic in the engine".into()),
        None => Err("the engine call did not run".into()),
    }
}

/// Fired by Ruby's unblock function; waits select on it.
#[derive(Clone, Default)]
struct Cancel(Arc<tokio::sync::Notify>, Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    fn fire(&self) {
        self.1.store(true, std::sync::atomic::Ordering::Release);
        self.0.notify_waiters();
    }

    /// Runs `fut` unless the thread is interrupted first (then `None`).
    async fn run<T>(&self, fut: impl std::future::Future<Output = T>) -> Option<T> {
        let fired = self.0.notified();
        tokio::pin!(fired);
        fired.as_mut().enable();
        if self.1.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        tokio::select! {
            out = fut => Some(out),
            _ = fired => None,
        }
    }
}

fn ruby() -> Ruby {
    // Every function here is called by Ruby, on a Ruby thread.
    Ruby::get().expect("called from a Ruby thread")
}

/// The exception class `TaskerCore::<name>`.
fn error_class(ruby: &Ruby, name: &str) -> ExceptionClass {
    ruby.class_object()
        .const_get::<_, RModule>("TaskerCore")
        .and_then(|m| m.const_get::<_, ExceptionClass>(name))
        .unwrap_or_else(|_| ruby.exception_runtime_error())
}

fn rb_err(ruby: &Ruby, e: tasker_core::Error) -> Error {
    let class = match (&e, e.kind()) {
        (tasker_core::Error::ClaimLost { .. }, _) => "ClaimLostError",
        (tasker_core::Error::IdempotencyConflict { .. }, _) => "IdempotencyConflictError",
        (tasker_core::Error::InvalidContext { .. }, _) => "InvalidContextError",
        (_, ErrorKind::Template) => "TemplateError",
        (_, ErrorKind::NotFound) => "NotFoundError",
        (_, ErrorKind::InvalidTransition) => "InvalidTransitionError",
        (_, ErrorKind::InvalidArgument) => "InvalidArgumentError",
        (_, ErrorKind::Store) => "StoreError",
    };
    let class = error_class(ruby, class);
    if let Some(kind) = e.store_kind() {
        // A StoreError says how the store failed (`StoreError#kind`).
        if let Ok(exception) = class.new_instance((e.to_string(),)) {
            let _: Result<Value, Error> =
                exception.funcall("instance_variable_set", ("@kind", kind));
            return exception.into();
        }
    }
    Error::new(class, e.to_string())
}

fn invalid(ruby: &Ruby, message: impl Into<String>) -> Error {
    Error::new(error_class(ruby, "InvalidArgumentError"), message.into())
}

fn runtime(ruby: &Ruby) -> Result<Arc<Runtime>, Error> {
    // One per process, made again in a forked child (Puma, Unicorn, Spring).
    tasker_core::host::runtime().map_err(|e| rb_err(ruby, e))
}

/// The core's limit (`tasker_core::limits`): walked here first, so that a Hash or Array that
/// contains itself is refused before serde_magnus follows it for ever.
const MAX_DEPTH: usize = tasker_core::limits::MAX_JSON_DEPTH;

/// A Ruby value as JSON (Symbol keys and values become strings). NaN and infinities are
/// refused (JSON has none), and so are values nested deeper than [`MAX_DEPTH`].
fn to_json(ruby: &Ruby, value: Value, what: &str) -> Result<Json, Error> {
    check_value(ruby, value, what, 0)?;
    serde_magnus::deserialize::<_, Json>(ruby, value)
        .map_err(|e| invalid(ruby, format!("{what} is not JSON-serialisable: {e}")))
}

/// A handler's return value for the core: a `TaskerCore::Decision` (its `steps` and
/// `result`), a `TaskerCore::Batch` (its `items` or `total`, and `result`), a
/// `TaskerCore::Children` (its `tasks`, each `namespace`, `name`, `context`, `version`) or a
/// JSON result.
fn output(ruby: &Ruby, value: Value) -> Result<tasker_core::HandlerOutput, Error> {
    // Results are mostly Hashes: no constant lookup for them.
    if RHash::from_value(value).is_some() {
        return to_json(ruby, value, "the result").map(Into::into);
    }
    let class = |name: &str| {
        ruby.class_object()
            .const_get::<_, RModule>("TaskerCore")
            .and_then(|m| m.const_get::<_, magnus::RClass>(name))
            .ok()
    };
    if class("Decision").is_some_and(|c| value.is_kind_of(c)) {
        let steps: Vec<String> = value.funcall("steps", ())?;
        let result: Value = value.funcall("result", ())?;
        let result = to_json(ruby, result, "the result")?;
        return Ok(tasker_core::Decision { steps, result }.into());
    }
    if class("Batch").is_some_and(|c| value.is_kind_of(c)) {
        let items: Value = value.funcall("items", ())?;
        let total: Option<u64> = value.funcall("total", ())?;
        let result: Value = value.funcall("result", ())?;
        let work = match total {
            Some(total) => tasker_core::store::BatchWork::Total(total),
            None => match to_json(ruby, items, "the batch's items")? {
                Json::Array(items) => tasker_core::store::BatchWork::Items(items),
                _ => return Err(invalid(ruby, "the batch's items must be an Array")),
            },
        };
        let result = to_json(ruby, result, "the result")?;
        return Ok(tasker_core::Batch { work, result }.into());
    }
    if class("Children").is_some_and(|c| value.is_kind_of(c)) {
        let tasks: RArray = value.funcall("tasks", ())?;
        let mut children = Vec::with_capacity(tasks.len());
        for task in tasks.into_iter() {
            let context: Value = task.funcall("context", ())?;
            children.push(tasker_core::ChildTask {
                namespace: task.funcall("namespace", ())?,
                name: task.funcall("name", ())?,
                version: task.funcall("version", ())?,
                context: to_json(ruby, context, "a child task's context")?,
            });
        }
        return Ok(tasker_core::Children { tasks: children }.into());
    }
    to_json(ruby, value, "the result").map(Into::into)
}

fn check_value(ruby: &Ruby, value: Value, what: &str, depth: usize) -> Result<(), Error> {
    let container =
        magnus::RArray::from_value(value).is_some() || RHash::from_value(value).is_some();
    if container && depth >= MAX_DEPTH {
        return Err(invalid(
            ruby,
            format!("{what} nests deeper than {MAX_DEPTH} levels (or contains itself)"),
        ));
    }
    if let Some(f) = magnus::Float::from_value(value) {
        let v = f.to_f64();
        if !v.is_finite() {
            return Err(invalid(
                ruby,
                format!("{what} is not JSON-serialisable: {v} is not a finite number"),
            ));
        }
    } else if let Some(array) = magnus::RArray::from_value(value) {
        for item in array.into_iter() {
            check_value(ruby, item, what, depth + 1)?;
        }
    } else if let Some(hash) = RHash::from_value(value) {
        let mut result = Ok(());
        hash.foreach(|_key: Value, item: Value| {
            result = check_value(ruby, item, what, depth + 1);
            Ok(if result.is_ok() {
                magnus::r_hash::ForEach::Continue
            } else {
                magnus::r_hash::ForEach::Stop
            })
        })?;
        result?;
    }
    Ok(())
}

/// JSON (or anything serde serialises) as Ruby objects with String keys (through a JSON value:
/// serde_magnus would make Symbol keys of struct fields).
fn to_ruby<T: serde::Serialize>(ruby: &Ruby, value: &T) -> Result<Value, Error> {
    let json = serde_json::to_value(value)
        .map_err(|e| Error::new(error_class(ruby, "Error"), e.to_string()))?;
    json_to_ruby(ruby, &json)
}

/// A JSON value as Ruby objects (its object keys are strings already: no copy first).
fn json_to_ruby(ruby: &Ruby, json: &Json) -> Result<Value, Error> {
    serde_magnus::serialize::<_, Value>(ruby, json)
}

fn task_id(ruby: &Ruby, s: &str) -> Result<TaskId, Error> {
    s.parse()
        .map_err(|e: tasker_core::ids::InvalidId| invalid(ruby, e.to_string()))
}

fn step_id(ruby: &Ruby, s: &str) -> Result<StepId, Error> {
    s.parse()
        .map_err(|e: tasker_core::ids::InvalidId| invalid(ruby, e.to_string()))
}

/// An instant given to the engine: a `Time` or an RFC 3339 String.
fn to_time(ruby: &Ruby, value: Value, what: &str) -> Result<tasker_core::Timestamp, Error> {
    // strftime, not iso8601: Time#iso8601 is core only from Ruby 3.4 (before, `require "time"`).
    let text: String = if value.is_kind_of(ruby.class_time()) {
        value.funcall("strftime", ("%Y-%m-%dT%H:%M:%S.%N%:z",))?
    } else {
        String::try_convert(value)
            .map_err(|_| invalid(ruby, format!("{what} must be a Time or an RFC 3339 String")))?
    };
    tasker_core::clock::parse_time(&text, what).map_err(|e| rb_err(ruby, e))
}

/// A task with nothing set but its start: `run_at:` (see [`to_time`]) or `delay:` seconds.
fn start(
    ruby: &Ruby,
    run_at: Option<Option<Value>>,
    delay: Option<Option<f64>>,
) -> Result<NewTask, Error> {
    let mut task = NewTask::new("", "");
    task.run_at = run_at
        .flatten()
        .map(|t| to_time(ruby, t, "run_at"))
        .transpose()?;
    task.delay_ms = delay
        .flatten()
        .map(|d| tasker_core::host::seconds_ms(d, "delay").map_err(|e| rb_err(ruby, e)))
        .transpose()?;
    Ok(task)
}

fn seconds(ruby: &Ruby, value: f64, what: &str) -> Result<Duration, Error> {
    tasker_core::host::seconds(value, what).map_err(|e| rb_err(ruby, e))
}

/// The engine (`TaskerCore::Engine`).
#[magnus::wrap(class = "TaskerCore::Engine", free_immediately, size)]
struct Engine {
    engine: ForkSafe<tasker_core::Engine>,
    owner: Owner,
}

impl Engine {
    /// Runs the engine future `f` on the runtime with the GVL released.
    fn call<T: Send, Fut>(
        &self,
        ruby: &Ruby,
        f: impl FnOnce(tasker_core::Engine) -> Fut + Send,
    ) -> Result<T, Error>
    where
        Fut: std::future::Future<Output = Result<T, tasker_core::Error>> + Send,
    {
        self.owner.check("engine").map_err(|e| rb_err(ruby, e))?;
        let rt = runtime(ruby)?;
        let engine = self.engine.clone();
        without_gvl(move |_| rt.block_on(f(engine)))
            .map_err(|m| Error::new(error_class(ruby, "Error"), m))?
            .map_err(|e| rb_err(ruby, e))
    }

    fn new(args: &[Value]) -> Result<Self, Error> {
        let ruby = ruby();
        let args = scan_args::<(), (Option<Option<String>>,), (), (), RHash, ()>(args)?;
        let kw = get_kwargs::<
            _,
            (),
            (
                Option<Option<String>>,
                Option<Option<String>>,
                Option<bool>,
                Option<bool>,
            ),
            (),
        >(
            args.keywords,
            &[],
            &[
                "environment",
                "otlp_endpoint",
                "metrics",
                "allow_private_webhooks",
            ],
        )?;
        let (environment, otlp_endpoint, metrics, allow_private_webhooks) = kw.optional;
        let options = tasker_core::engine::OpenOptions {
            environment: environment.flatten(),
            otlp_endpoint: otlp_endpoint.flatten(),
            metrics,
            allow_private_webhooks,
        };
        let url = args
            .optional
            .0
            .flatten()
            .unwrap_or_else(|| tasker_core::engine::DEFAULT_URL.to_owned());
        let rt = runtime(&ruby)?;
        let engine =
            without_gvl(move |_| rt.block_on(tasker_core::Engine::open_with(&url, options)))
                .map_err(|m| Error::new(error_class(&ruby, "Error"), m))?
                .map_err(|e| rb_err(&ruby, e))?;
        Ok(Engine {
            engine: ForkSafe::new(engine),
            owner: Owner::current(),
        })
    }

    fn registered_handlers(&self) -> Result<Vec<String>, Error> {
        let ruby = ruby();
        self.call(&ruby, |e| async move { Ok(e.registered_handlers()) })
    }

    fn register_template(&self, template: Value) -> Result<Value, Error> {
        let ruby = ruby();
        let registered = if let Some(text) = RString::from_value(template) {
            let text = text.to_string()?;
            self.call(&ruby, move |e| async move {
                e.register_document_str(&text).await
            })?
        } else if RHash::from_value(template).is_some() {
            let value = to_json(&ruby, template, "the template")?;
            self.call(
                &ruby,
                move |e| async move { e.register_document(value).await },
            )?
        } else {
            return Err(Error::new(
                ruby.exception_type_error(),
                format!(
                    "a template is YAML or JSON text (String) or a Hash, not {}",
                    unsafe { template.classname() }
                ),
            ));
        };
        to_ruby(&ruby, &registered.summary())
    }

    fn create_task(&self, args: &[Value]) -> Result<String, Error> {
        let ruby = ruby();
        let args = scan_args::<(String, String), (), (), (), RHash, ()>(args)?;
        let (namespace, name) = args.required;
        let kw = get_kwargs::<
            _,
            (),
            (
                Option<Value>,
                Option<Option<String>>,
                Option<Option<String>>,
                Option<i32>,
                Option<Option<Value>>,
                Option<Option<f64>>,
                Option<Option<String>>,
            ),
            (),
        >(args.keywords, &[], &tasker_core::host::CREATE_TASK_OPTIONS)?;
        let (context, version, idempotency_key, priority, run_at, delay, traceparent) = kw.optional;
        let context = match context {
            Some(c) if !c.is_nil() => to_json(&ruby, c, "the context")?,
            _ => Json::Object(Default::default()),
        };
        let task = NewTask {
            namespace,
            name,
            version: version.flatten(),
            context,
            idempotency_key: idempotency_key.flatten(),
            priority: priority.unwrap_or(0),
            parent: None,
            traceparent: traceparent.flatten(),
            ..start(&ruby, run_at, delay)?
        };
        let id = self.call(&ruby, move |e| async move { e.create_task(task).await })?;
        Ok(id.to_string())
    }

    /// Many tasks at once: an Array of Hashes of create_task's arguments (Symbol or String
    /// keys: namespace, name; optionally context, version, idempotency_key, priority). All are
    /// checked before any is written; the ids, in order.
    fn create_tasks(&self, tasks: RArray) -> Result<Vec<String>, Error> {
        let ruby = ruby();
        let mut batch = Vec::with_capacity(tasks.len());
        for item in tasks.into_iter() {
            let given = RHash::try_convert(item)?;
            // Symbol keys in a fresh Hash: get_kwargs reads Symbols and may edit the Hash.
            let hash = ruby.hash_new();
            given.foreach(|key: Value, value: Value| {
                let key: String = key.funcall("to_s", ())?;
                hash.aset(ruby.to_symbol(key), value)?;
                Ok(magnus::r_hash::ForEach::Continue)
            })?;
            let kw = get_kwargs::<
                _,
                (String, String),
                (
                    Option<Value>,
                    Option<Option<String>>,
                    Option<Option<String>>,
                    Option<i32>,
                    Option<Option<Value>>,
                    Option<Option<f64>>,
                    Option<Option<String>>,
                ),
                (),
            >(
                hash,
                &["namespace", "name"],
                &tasker_core::host::CREATE_TASK_OPTIONS,
            )?;
            let (namespace, name) = kw.required;
            let (context, version, idempotency_key, priority, run_at, delay, traceparent) =
                kw.optional;
            batch.push(NewTask {
                namespace,
                name,
                version: version.flatten(),
                context: match context {
                    Some(c) if !c.is_nil() => to_json(&ruby, c, "the context")?,
                    _ => Json::Object(Default::default()),
                },
                idempotency_key: idempotency_key.flatten(),
                priority: priority.unwrap_or(0),
                parent: None,
                traceparent: traceparent.flatten(),
                ..start(&ruby, run_at, delay)?
            });
        }
        let ids = self.call(&ruby, move |e| async move { e.create_tasks(batch).await })?;
        Ok(ids.iter().map(ToString::to_string).collect())
    }

    fn claim(&self, args: &[Value]) -> Result<Value, Error> {
        let ruby = ruby();
        let args = scan_args::<(String, Option<Vec<String>>, usize), (Option<f64>,), (), (), (), ()>(
            args,
        )?;
        let (worker_id, handlers, limit) = args.required;
        let wait = seconds(&ruby, args.optional.0.unwrap_or(0.0), "wait")?;
        let request = ClaimRequest {
            worker_id: worker_id.into(),
            handlers: handlers.map(|h| h.into_iter().map(Into::into).collect()),
            limit,
        };
        let deadline = Instant::now() + wait;
        // Wait in short slices without the GVL, checking for interrupts between them.
        let claimed = loop {
            let request = request.clone();
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            let claimed = self.call(&ruby, move |e| async move {
                e.claim_waiting(&request, slice).await
            })?;
            if !claimed.is_empty() || Instant::now() >= deadline {
                break claimed;
            }
            ruby.thread_check_ints()?;
        };
        let list = Json::Array(claimed.iter().map(|s| s.to_json()).collect());
        json_to_ruby(&ruby, &list)
    }

    fn complete(&self, step_id: String, attempt: u32, result: Value) -> Result<(), Error> {
        let ruby = ruby();
        let step = self::step_id(&ruby, &step_id)?;
        let output = output(&ruby, result)?;
        self.call(&ruby, move |e| async move {
            e.report(step, attempt, output).await
        })
    }

    fn fail(&self, args: &[Value]) -> Result<(), Error> {
        let ruby = ruby();
        let args = scan_args::<
            (String, u32, String),
            (Option<bool>, Option<Option<f64>>),
            (),
            (),
            (),
            (),
        >(args)?;
        let (step_id, attempt, message) = args.required;
        let (retryable, retry_after) = args.optional;
        let step = self::step_id(&ruby, &step_id)?;
        let failure = failure(
            &ruby,
            message,
            retryable.unwrap_or(true),
            retry_after.flatten(),
        )?;
        self.call(&ruby, move |e| async move {
            e.fail(step, attempt, failure).await
        })
    }

    fn heartbeat(&self, step_id: String, attempt: u32) -> Result<Value, Error> {
        let ruby = ruby();
        let step = self::step_id(&ruby, &step_id)?;
        let at = self.call(
            &ruby,
            move |e| async move { e.heartbeat(step, attempt).await },
        )?;
        to_ruby(&ruby, &at)
    }

    fn task(&self, id: String) -> Result<Value, Error> {
        let ruby = ruby();
        let id = task_id(&ruby, &id)?;
        let view = self.call(&ruby, move |e| async move { e.task(id).await })?;
        to_ruby(&ruby, &view)
    }

    fn list_tasks(&self, args: &[Value]) -> Result<Value, Error> {
        let ruby = ruby();
        let args = scan_args::<(), (), (), (), RHash, ()>(args)?;
        let kw = get_kwargs::<
            _,
            (),
            (
                Option<Option<String>>,
                Option<Option<String>>,
                Option<Option<String>>,
                Option<usize>,
            ),
            (),
        >(
            args.keywords,
            &[],
            &["status", "namespace", "name", "limit"],
        )?;
        let (status, namespace, name, limit) = kw.optional;
        let status = status
            .flatten()
            .map(|s| {
                s.parse::<TaskState>()
                    .map_err(|e| invalid(&ruby, e.to_string()))
            })
            .transpose()?;
        let filter = TaskFilter {
            status,
            namespace: namespace.flatten(),
            name: name.flatten(),
            limit: limit.unwrap_or(100),
        };
        let views = self.call(&ruby, move |e| async move { e.list_tasks(&filter).await })?;
        to_ruby(&ruby, &views)
    }

    fn transitions(&self, id: String) -> Result<Value, Error> {
        let ruby = ruby();
        let id = task_id(&ruby, &id)?;
        let trail = self.call(&ruby, move |e| async move { e.transitions(id).await })?;
        to_ruby(&ruby, &trail)
    }

    /// The task's webhook deliveries, oldest first.
    fn webhook_deliveries(&self, id: String) -> Result<Value, Error> {
        let ruby = ruby();
        let id = task_id(&ruby, &id)?;
        let deliveries = self.call(
            &ruby,
            move |e| async move { e.webhook_deliveries(id).await },
        )?;
        to_ruby(&ruby, &deliveries)
    }

    /// Sends the due webhook deliveries now; how many attempts it made.
    fn deliver_webhooks(&self) -> Result<usize, Error> {
        let ruby = ruby();
        self.call(&ruby, |e| async move { e.deliver_webhooks().await })
    }

    /// `logs(task_id, step = nil)`: the lines the task's attempts logged (of step `step`
    /// only, unless nil).
    fn logs(&self, args: &[Value]) -> Result<Value, Error> {
        let ruby = ruby();
        let args = scan_args::<(String,), (Option<Option<String>>,), (), (), (), ()>(args)?;
        let id = task_id(&ruby, &args.required.0)?;
        let step = args.optional.0.flatten();
        let lines = self.call(
            &ruby,
            move |e| async move { e.logs(id, step.as_deref()).await },
        )?;
        to_ruby(&ruby, &lines)
    }

    fn graph(&self, id: String) -> Result<Value, Error> {
        let ruby = ruby();
        let id = task_id(&ruby, &id)?;
        let graph = self.call(&ruby, move |e| async move { e.graph(id).await })?;
        to_ruby(&ruby, &graph)
    }

    fn cancel_task(&self, id: String) -> Result<(), Error> {
        let ruby = ruby();
        let id = task_id(&ruby, &id)?;
        self.call(&ruby, move |e| async move { e.cancel_task(id).await })
    }

    fn pause_task(&self, id: String) -> Result<(), Error> {
        let ruby = ruby();
        let id = task_id(&ruby, &id)?;
        self.call(&ruby, move |e| async move { e.pause_task(id).await })
    }

    fn resume_task(&self, id: String) -> Result<(), Error> {
        let ruby = ruby();
        let id = task_id(&ruby, &id)?;
        self.call(&ruby, move |e| async move { e.resume_task(id).await })
    }

    fn retry_task(&self, id: String) -> Result<(), Error> {
        let ruby = ruby();
        let id = task_id(&ruby, &id)?;
        self.call(&ruby, move |e| async move { e.retry_task(id).await })
    }

    fn resolve_step(&self, id: String, step: String, result: Value) -> Result<(), Error> {
        let ruby = ruby();
        let id = task_id(&ruby, &id)?;
        let result = to_json(&ruby, result, "the result")?;
        self.call(&ruby, move |e| async move {
            e.resolve_step(id, &step, result).await
        })
    }

    fn subscribe(&self, args: &[Value]) -> Result<Subscription, Error> {
        let ruby = ruby();
        let args = scan_args::<(), (Option<String>,), (), (), (), ()>(args)?;
        let pattern = args.optional.0.unwrap_or_else(|| "*".to_owned());
        let sub = self
            .engine
            .subscribe(&pattern)
            .map_err(|e| rb_err(&ruby, e))?;
        Ok(Subscription { sub: Arc::new(sub) })
    }

    fn work_status(&self, args: &[Value]) -> Result<Value, Error> {
        let ruby = ruby();
        let args = scan_args::<(), (Option<Option<Vec<String>>>,), (), (), (), ()>(args)?;
        let handlers = args.optional.0.flatten();
        let status = self.call(
            &ruby,
            move |e| async move { e.work_status_of(handlers).await },
        )?;
        to_ruby(&ruby, &status)
    }

    /// purge(finished_before, statuses = nil): the finished tasks deleted.
    fn purge(&self, args: &[Value]) -> Result<u64, Error> {
        let ruby = ruby();
        let args = scan_args::<(Value,), (Option<Option<Vec<String>>>,), (), (), (), ()>(args)?;
        let before = to_time(&ruby, args.required.0, "finished_before")?;
        let statuses = args
            .optional
            .0
            .flatten()
            .map(|list| {
                list.iter()
                    .map(|s| s.parse::<tasker_core::TaskState>())
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(|e| invalid(&ruby, e.to_string()))?;
        self.call(&ruby, move |e| async move {
            e.purge(before, statuses.as_deref()).await
        })
    }

    /// schedule(name, cron, namespace, template, context: nil, timezone: nil, overlap: nil,
    /// version: nil): the schedule registered.
    fn schedule(&self, args: &[Value]) -> Result<Value, Error> {
        let ruby = ruby();
        let args = scan_args::<(String, String, String, String), (), (), (), RHash, ()>(args)?;
        let (name, cron, namespace, template) = args.required;
        let kw = get_kwargs::<
            _,
            (),
            (
                Option<Value>,
                Option<Option<String>>,
                Option<Option<String>>,
                Option<Option<String>>,
            ),
            (),
        >(
            args.keywords,
            &[],
            &["context", "timezone", "overlap", "version"],
        )?;
        let (context, timezone, overlap, version) = kw.optional;
        let context = context
            .filter(|c| !c.is_nil())
            .map(|c| to_json(&ruby, c, "the context"))
            .transpose()?;
        let spec = tasker_core::schedule::ScheduleSpec::from_args(
            name,
            cron,
            namespace,
            template,
            context,
            timezone.flatten(),
            overlap.flatten().as_deref(),
            version.flatten(),
        )
        .map_err(|e| rb_err(&ruby, e))?;
        let view = self.call(&ruby, move |e| async move { e.schedule(spec).await })?;
        to_ruby(&ruby, &view)
    }

    fn unschedule(&self, name: String) -> Result<bool, Error> {
        let ruby = ruby();
        self.call(&ruby, move |e| async move { e.unschedule(&name).await })
    }

    fn schedules(&self) -> Result<Value, Error> {
        let ruby = ruby();
        let list = self.call(&ruby, |e| async move { e.schedules().await })?;
        to_ruby(&ruby, &list)
    }

    fn fire_schedules(&self) -> Result<usize, Error> {
        let ruby = ruby();
        self.call(&ruby, |e| async move { e.fire_schedules().await })
    }

    fn tend_children(&self) -> Result<usize, Error> {
        let ruby = ruby();
        self.call(&ruby, |e| async move { e.tend_children().await })
    }

    /// metrics: this engine's metrics in the Prometheus text format (OpenMetrics).
    fn metrics(&self) -> Result<String, Error> {
        let ruby = ruby();
        self.call(&ruby, |e| async move { e.metrics().await })
    }

    /// stats: what the store holds, counted (a Hash).
    fn stats(&self) -> Result<Value, Error> {
        let ruby = ruby();
        let stats = self.call(&ruby, |e| async move { e.stats().await })?;
        to_ruby(&ruby, &stats)
    }

    fn reclaim_expired(&self) -> Result<usize, Error> {
        let ruby = ruby();
        self.call(&ruby, |e| async move { e.reclaim_expired().await })
    }

    fn migrate(&self) -> Result<(), Error> {
        let ruby = ruby();
        self.call(&ruby, |e| async move { e.migrate().await })
    }

    fn close(&self) {
        // Without the GVL: closing sends the spans still queued (up to a few seconds).
        let engine = self.engine.clone();
        let _ = without_gvl(move |_| engine.close());
    }

    /// Closed, or inherited across a fork (unusable in the child either way).
    fn is_closed(&self) -> bool {
        self.engine.is_closed() || !self.owner.is_current()
    }
}

/// A subscription to lifecycle events (`TaskerCore::Subscription`).
#[magnus::wrap(class = "TaskerCore::Subscription", free_immediately, size)]
struct Subscription {
    sub: Arc<tasker_core::Subscription>,
}

impl Subscription {
    fn next(&self, args: &[Value]) -> Result<Value, Error> {
        let ruby = ruby();
        let args = scan_args::<(), (), (), (), RHash, ()>(args)?;
        let kw = get_kwargs::<_, (), (Option<Option<f64>>,), ()>(args.keywords, &[], &["timeout"])?;
        let timeout = kw
            .optional
            .0
            .flatten()
            .map(|t| seconds(&ruby, t, "timeout"))
            .transpose()?;
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let slice = match deadline {
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100)),
                None => Duration::from_millis(100),
            };
            let sub = self.sub.clone();
            let event = without_gvl(move |_| sub.next_timeout(slice))
                .map_err(|m| Error::new(error_class(&ruby, "Error"), m))?;
            if let Some(event) = event {
                return json_to_ruby(&ruby, &event.to_json());
            }
            ruby.thread_check_ints()?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(ruby.qnil().as_value());
            }
        }
    }

    fn dropped(&self) -> u64 {
        self.sub.dropped()
    }

    fn pattern(&self) -> String {
        self.sub.pattern().to_owned()
    }
}

/// The core's worker session, driven by Ruby threads (`TaskerCore::WorkerSession`): each asks
/// for the next attempt (`next`, without the GVL while it waits), runs the handler and hands the
/// outcome back. Slots, batching, lease renewal, timeouts, back-off, drain and idleness are the
/// core's; `TaskerCore::Worker` is the convenient loop over it.
#[magnus::wrap(class = "TaskerCore::WorkerSession", free_immediately, size)]
struct Session {
    session: ForkSafe<WorkerSession>,
    runtime: ForkSafe<Arc<Runtime>>,
    owner: Owner,
}

fn failure(
    ruby: &Ruby,
    message: String,
    retryable: bool,
    retry_after: Option<f64>,
) -> Result<StepFailure, Error> {
    tasker_core::host::failure(message, retryable, retry_after).map_err(|e| rb_err(ruby, e))
}

/// One worker's configuration and runs, one at a time (the core's `Runs`;
/// `TaskerCore::WorkerRuns`): `start` begins a run's session; `stop` stops the run under way or
/// the next one to start.
#[magnus::wrap(class = "TaskerCore::WorkerRuns", free_immediately, size)]
struct WorkerRuns {
    engine: ForkSafe<tasker_core::Engine>,
    config: SessionConfig,
    runs: tasker_core::worker::Runs,
    /// The process its engine belongs to: a worker made before a fork cannot run in the child.
    owner: Owner,
}

/// An ArgumentError for a bad worker argument.
fn argument_error(ruby: &Ruby, e: tasker_core::Error) -> Error {
    Error::new(ruby.exception_arg_error(), e.to_string())
}

impl WorkerRuns {
    fn new(
        engine: &Engine,
        concurrency: usize,
        worker_id: Option<String>,
        poll_interval: f64,
        drain_timeout: f64,
    ) -> Result<Self, Error> {
        let ruby = ruby();
        engine.owner.check("engine").map_err(|e| rb_err(&ruby, e))?;
        let config = tasker_core::host::session_config(
            concurrency,
            worker_id,
            "rb",
            poll_interval,
            drain_timeout,
        )
        .map_err(|e| argument_error(&ruby, e))?;
        Ok(WorkerRuns {
            engine: ForkSafe::new((*engine.engine).clone()),
            config,
            runs: Default::default(),
            owner: engine.owner,
        })
    }

    /// Starts a run for `handlers`; RuntimeError while one is under way or without handlers.
    fn start(
        &self,
        handlers: Vec<String>,
        until_idle: bool,
        timeout: Option<f64>,
    ) -> Result<Session, Error> {
        let ruby = ruby();
        // Made before a fork: its engine's runtime and connections are the parent's (the
        // child would wait on them for ever).
        self.owner.check("worker").map_err(|e| rb_err(&ruby, e))?;
        let mut config = self.config.clone().handlers(handlers);
        config.until_idle = until_idle;
        if let Some(t) = timeout {
            let t =
                tasker_core::host::seconds(t, "timeout").map_err(|e| argument_error(&ruby, e))?;
            config = config.timeout(t);
        }
        let runtime = runtime(&ruby)?;
        let session = {
            let _entered = runtime.enter();
            self.runs.start((*self.engine).clone(), config)
        }
        .map_err(|refused| Error::new(ruby.exception_runtime_error(), refused.to_string()))?;
        Ok(Session {
            session: ForkSafe::new(session),
            runtime: ForkSafe::new(runtime),
            owner: self.owner,
        })
    }

    fn stop(&self) {
        self.runs.stop();
    }

    fn end(&self) {
        self.runs.end();
    }

    fn is_running(&self) -> bool {
        self.runs.current().is_some()
    }

    fn worker_id(&self) -> String {
        self.config.worker_id.to_string()
    }

    fn poll_interval(&self) -> f64 {
        self.config.poll_interval.as_secs_f64()
    }
}

impl Session {
    fn check(&self, ruby: &Ruby) -> Result<(), Error> {
        self.owner
            .check("worker session")
            .map_err(|e| rb_err(ruby, e))
    }

    /// The next attempt as a Hash, waiting up to `wait` seconds without the GVL; nil if none.
    fn next(&self, wait: f64) -> Result<Value, Error> {
        let ruby = ruby();
        self.check(&ruby)?;
        let wait = seconds(&ruby, wait, "wait")?;
        let next = match self.session.try_next() {
            Next::Empty => {
                let (session, rt) = (self.session.clone(), self.runtime.clone());
                without_gvl(move |cancel| rt.block_on(cancel.run(session.next(wait))))
                    .map_err(|m| Error::new(error_class(&ruby, "Error"), m))?
                    .unwrap_or(Next::Empty)
            }
            next => next,
        };
        match next {
            // Straight from the step (a map: String keys), without a JSON copy of its context.
            Next::Attempt(attempt) => serde_magnus::serialize::<_, Value>(&ruby, &attempt.step),
            Next::Empty | Next::Finished => Ok(ruby.qnil().as_value()),
        }
    }

    fn hand_back(
        &self,
        ruby: &Ruby,
        step_id: &str,
        attempt: u32,
        outcome: AttemptOutcome,
    ) -> Result<Option<String>, Error> {
        let id = AttemptId {
            step: self::step_id(ruby, step_id)?,
            attempt,
        };
        Ok(self
            .session
            .report(id, outcome)
            .err()
            .map(|r| r.to_string()))
    }

    /// Hands back a result: nil when taken, else why it was refused. A result that is not JSON
    /// fails the attempt for good, and that message is returned.
    fn complete(
        &self,
        step_id: String,
        attempt: u32,
        result: Value,
    ) -> Result<Option<String>, Error> {
        let ruby = ruby();
        self.check(&ruby)?;
        let converted = output(&ruby, result).map_err(|e| e.to_string());
        let (outcome, failed) = tasker_core::host::result_outcome(converted);
        Ok(self
            .hand_back(&ruby, &step_id, attempt, outcome)?
            .or(failed))
    }

    /// Hands back a failure: nil when taken, else why it was refused.
    fn fail(
        &self,
        step_id: String,
        attempt: u32,
        message: String,
        retryable: bool,
        retry_after: Option<f64>,
    ) -> Result<Option<String>, Error> {
        let ruby = ruby();
        self.check(&ruby)?;
        let failure = failure(&ruby, message, retryable, retry_after)?;
        self.hand_back(&ruby, &step_id, attempt, AttemptOutcome::Fail(failure))
    }

    /// Renews the attempt's lease now; the new expiry (RFC 3339).
    fn heartbeat(&self, step_id: String, attempt: u32) -> Result<Value, Error> {
        let ruby = ruby();
        self.check(&ruby)?;
        let id = AttemptId {
            step: self::step_id(&ruby, &step_id)?,
            attempt,
        };
        let (session, rt) = (self.session.clone(), self.runtime.clone());
        let at = without_gvl(move |_| rt.block_on(session.heartbeat(id)))
            .map_err(|m| Error::new(error_class(&ruby, "Error"), m))?
            .map_err(|e| rb_err(&ruby, e))?;
        to_ruby(&ruby, &at)
    }

    /// Publishes a custom event the step's template declares, from a running attempt.
    fn publish(
        &self,
        step_id: String,
        attempt: u32,
        name: String,
        payload: Value,
    ) -> Result<(), Error> {
        let ruby = ruby();
        self.check(&ruby)?;
        let id = AttemptId {
            step: self::step_id(&ruby, &step_id)?,
            attempt,
        };
        let payload = to_json(&ruby, payload, "the event's payload")?;
        self.session
            .publish(id, &name, payload)
            .map_err(|e| rb_err(&ruby, e))
    }

    /// Keeps a line of the running attempt's log at `level`; whether it was kept.
    fn log(
        &self,
        step_id: String,
        attempt: u32,
        message: String,
        level: String,
    ) -> Result<bool, Error> {
        let ruby = ruby();
        self.check(&ruby)?;
        let id = AttemptId {
            step: self::step_id(&ruby, &step_id)?,
            attempt,
        };
        let level = level.parse().map_err(|e| rb_err(&ruby, e))?;
        Ok(self.session.log(id, level, &message))
    }

    fn stop(&self) {
        self.session.stop();
    }

    fn abort(&self) {
        self.session.abort();
    }

    fn is_finished(&self) -> bool {
        self.session.is_finished()
    }

    /// The counts once ended (waiting up to `wait` seconds without the GVL), else nil.
    fn result(&self, wait: f64) -> Result<Value, Error> {
        let ruby = ruby();
        self.check(&ruby)?;
        let wait = seconds(&ruby, wait, "wait")?;
        let (session, rt) = (self.session.clone(), self.runtime.clone());
        let report = without_gvl(move |cancel| {
            rt.block_on(
                cancel
                    .run(async move { tokio::time::timeout(wait, session.finished()).await.ok() }),
            )
        })
        .map_err(|m| Error::new(error_class(&ruby, "Error"), m))?
        .flatten();
        match report {
            None => Ok(ruby.qnil().as_value()),
            Some(report) => to_ruby(&ruby, &report.map_err(|e| rb_err(&ruby, e))?),
        }
    }
}

#[magnus::init(name = "tasker_core_native")]
fn init(ruby: &Ruby) -> Result<(), Error> {
    let module = ruby.define_module("TaskerCore")?;
    let base = module.define_error("Error", ruby.exception_standard_error())?;
    for name in ["TemplateError", "NotFoundError", "StoreError"] {
        module.define_error(name, base)?;
    }
    let invalid = module.define_error("InvalidArgumentError", base)?;
    module.define_error("IdempotencyConflictError", invalid)?;
    module.define_error("InvalidContextError", invalid)?;
    let transition = module.define_error("InvalidTransitionError", base)?;
    module.define_error("ClaimLostError", transition)?;
    module.const_set("DEFAULT_URL", tasker_core::engine::DEFAULT_URL)?;

    let engine = module.define_class("Engine", ruby.class_object())?;
    engine.define_singleton_method("new", function!(Engine::new, -1))?;
    engine.define_method("register_template", method!(Engine::register_template, 1))?;
    engine.define_method(
        "registered_handlers",
        method!(Engine::registered_handlers, 0),
    )?;
    engine.define_method("create_task", method!(Engine::create_task, -1))?;
    engine.define_method("create_tasks", method!(Engine::create_tasks, 1))?;
    engine.define_method("claim", method!(Engine::claim, -1))?;
    engine.define_method("complete", method!(Engine::complete, 3))?;
    engine.define_method("fail", method!(Engine::fail, -1))?;
    engine.define_method("heartbeat", method!(Engine::heartbeat, 2))?;
    engine.define_method("task", method!(Engine::task, 1))?;
    engine.define_method("list_tasks", method!(Engine::list_tasks, -1))?;
    engine.define_method("transitions", method!(Engine::transitions, 1))?;
    engine.define_method("logs", method!(Engine::logs, -1))?;
    engine.define_method("webhook_deliveries", method!(Engine::webhook_deliveries, 1))?;
    engine.define_method("deliver_webhooks", method!(Engine::deliver_webhooks, 0))?;
    engine.define_method("graph", method!(Engine::graph, 1))?;
    engine.define_method("cancel_task", method!(Engine::cancel_task, 1))?;
    engine.define_method("pause_task", method!(Engine::pause_task, 1))?;
    engine.define_method("resume_task", method!(Engine::resume_task, 1))?;
    engine.define_method("retry_task", method!(Engine::retry_task, 1))?;
    engine.define_method("resolve_step", method!(Engine::resolve_step, 3))?;
    engine.define_method("subscribe", method!(Engine::subscribe, -1))?;
    engine.define_method("work_status", method!(Engine::work_status, -1))?;
    engine.define_method("metrics", method!(Engine::metrics, 0))?;
    engine.define_method("stats", method!(Engine::stats, 0))?;
    engine.define_method("reclaim_expired", method!(Engine::reclaim_expired, 0))?;
    engine.define_method("tend_children", method!(Engine::tend_children, 0))?;
    engine.define_method("purge", method!(Engine::purge, -1))?;
    engine.define_method("schedule", method!(Engine::schedule, -1))?;
    engine.define_method("unschedule", method!(Engine::unschedule, 1))?;
    engine.define_method("schedules", method!(Engine::schedules, 0))?;
    engine.define_method("fire_schedules", method!(Engine::fire_schedules, 0))?;
    engine.define_method("migrate", method!(Engine::migrate, 0))?;
    engine.define_method("close", method!(Engine::close, 0))?;
    engine.define_method("closed?", method!(Engine::is_closed, 0))?;

    let runs = module.define_class("WorkerRuns", ruby.class_object())?;
    runs.define_singleton_method("new", function!(WorkerRuns::new, 5))?;
    runs.define_method("start", method!(WorkerRuns::start, 3))?;
    runs.define_method("stop", method!(WorkerRuns::stop, 0))?;
    runs.define_method("end", method!(WorkerRuns::end, 0))?;
    runs.define_method("running?", method!(WorkerRuns::is_running, 0))?;
    runs.define_method("worker_id", method!(WorkerRuns::worker_id, 0))?;
    runs.define_method("poll_interval", method!(WorkerRuns::poll_interval, 0))?;

    let session = module.define_class("WorkerSession", ruby.class_object())?;
    session.define_method("next", method!(Session::next, 1))?;
    session.define_method("complete", method!(Session::complete, 3))?;
    session.define_method("fail", method!(Session::fail, 5))?;
    session.define_method("heartbeat", method!(Session::heartbeat, 2))?;
    session.define_method("publish", method!(Session::publish, 4))?;
    session.define_method("log", method!(Session::log, 4))?;
    session.define_method("stop", method!(Session::stop, 0))?;
    session.define_method("abort", method!(Session::abort, 0))?;
    session.define_method("finished?", method!(Session::is_finished, 0))?;
    session.define_method("result", method!(Session::result, 1))?;

    let sub = module.define_class("Subscription", ruby.class_object())?;
    sub.define_method("next", method!(Subscription::next, -1))?;
    sub.define_method("dropped", method!(Subscription::dropped, 0))?;
    sub.define_method("pattern", method!(Subscription::pattern, 0))?;
    Ok(())
}
