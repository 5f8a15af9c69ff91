//! The C ABI of Tasker Core. Thin by design: argument checks (NULL, UTF-8, JSON), error
//! mapping to [`tc_status`] plus a thread-local message, handle lifetimes, and a panic boundary
//! around every export. The header `include/tasker_core.h` is generated from this file by
//! cbindgen (`bindings-c/cbindgen.toml`); `tests/header.rs` fails when it drifts.

#![allow(non_camel_case_types)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use serde_json::Value;
use tasker_core::error::ErrorKind;
use tasker_core::store::{ClaimRequest, StepFailure};
use tasker_core::worker::{AttemptOutcome, Next, SessionConfig, WorkerSession};
use tasker_core::{ClaimedStep, Engine, Error, FailureKind, NewTask, TaskFilter, TaskId};
use tokio::runtime::Runtime;

/// The result of every call that can fail. Numbers are stable.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tc_status {
    /// Success.
    TC_OK = 0,
    /// The template is malformed or invalid, or its version exists with other content.
    TC_ERR_TEMPLATE = -1,
    /// No template, task or step has that name or id.
    TC_ERR_NOT_FOUND = -2,
    /// The state machine refused the operation (e.g. cancelling a completed task, reporting a
    /// step twice).
    TC_ERR_INVALID_TRANSITION = -3,
    /// A report on a claim that is no longer held (lease expired, task cancelled, step resolved).
    TC_ERR_CLAIM_LOST = -4,
    /// The database failed.
    TC_ERR_STORE = -5,
    /// A malformed id, URL, version or pattern, or a number out of range.
    TC_ERR_INVALID_ARGUMENT = -6,
    /// A required pointer argument was NULL.
    TC_ERR_NULL = -7,
    /// A string argument was not UTF-8.
    TC_ERR_UTF8 = -8,
    /// A JSON argument did not parse.
    TC_ERR_JSON = -9,
    /// The engine was closed.
    TC_ERR_CLOSED = -10,
    /// An internal panic was caught at the boundary (a bug: please report it).
    TC_ERR_PANIC = -11,
}

use tc_status::*;

/// A failure on its way out: the status and the message for `tc_last_error_message`.
struct Fail(tc_status, String);

type Res<T> = Result<T, Fail>;

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        let status = match (&e, e.kind()) {
            (Error::ClaimLost { .. }, _) => TC_ERR_CLAIM_LOST,
            (Error::Closed, _) => TC_ERR_CLOSED,
            (_, ErrorKind::Template) => TC_ERR_TEMPLATE,
            (_, ErrorKind::NotFound) => TC_ERR_NOT_FOUND,
            (_, ErrorKind::InvalidTransition) => TC_ERR_INVALID_TRANSITION,
            (_, ErrorKind::InvalidArgument) => TC_ERR_INVALID_ARGUMENT,
            (_, ErrorKind::Store) => TC_ERR_STORE,
        };
        Fail(status, e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

fn set_last_error(message: String) {
    let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = Some(message));
}

/// Runs `body` behind the panic boundary and turns its result into a status.
fn boundary(body: impl FnOnce() -> Res<()>) -> tc_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => TC_OK,
        Ok(Err(Fail(status, message))) => {
            set_last_error(message);
            status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(format!("internal panic: {what}"));
            TC_ERR_PANIC
        }
    }
}

/// Clears `*out` (so it is NULL on failure) and hands it to `body` to fill on success.
///
/// # Safety
/// `out` is NULL or valid for writes.
unsafe fn with_out<T>(out: *mut *mut T, body: impl FnOnce() -> Res<*mut T>) -> tc_status {
    if out.is_null() {
        set_last_error("the out-pointer argument is NULL".into());
        return TC_ERR_NULL;
    }
    // SAFETY: `out` is non-NULL and, by the caller's contract, valid for writes.
    unsafe { *out = ptr::null_mut() };
    boundary(|| {
        let value = body()?;
        // SAFETY: as above.
        unsafe { *out = value };
        Ok(())
    })
}

/// A required string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for the call.
unsafe fn text<'a>(p: *const c_char, what: &str) -> Res<&'a str> {
    if p.is_null() {
        return Err(Fail(TC_ERR_NULL, format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let bytes = unsafe { CStr::from_ptr(p) };
    bytes
        .to_str()
        .map_err(|e| Fail(TC_ERR_UTF8, format!("{what} is not UTF-8: {e}")))
}

/// An optional string argument (NULL = none).
///
/// # Safety
/// As [`text`].
unsafe fn opt_text<'a>(p: *const c_char, what: &str) -> Res<Option<&'a str>> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: forwarded contract.
        unsafe { text(p, what) }.map(Some)
    }
}

/// A JSON argument.
///
/// # Safety
/// As [`text`].
unsafe fn json(p: *const c_char, what: &str) -> Res<Value> {
    // SAFETY: forwarded contract.
    let s = unsafe { text(p, what) }?;
    serde_json::from_str(s).map_err(|e| Fail(TC_ERR_JSON, format!("{what} is not valid JSON: {e}")))
}

fn task_id(s: &str) -> Res<TaskId> {
    s.parse()
        .map_err(|e: tasker_core::ids::InvalidId| Fail(TC_ERR_INVALID_ARGUMENT, e.to_string()))
}

/// A string for the caller to free with `tc_string_free`.
fn out_string(s: String) -> *mut c_char {
    CString::new(s.replace('\0', "\\u0000"))
        .unwrap_or_default()
        .into_raw()
}

fn json_out<T: serde::Serialize>(value: &T) -> Res<*mut c_char> {
    serde_json::to_string(value)
        .map(out_string)
        .map_err(|e| Fail(TC_ERR_STORE, format!("cannot encode JSON: {e}")))
}

fn runtime() -> Res<Arc<Runtime>> {
    tasker_core::host::runtime().map_err(Fail::from)
}

/// Borrows a handle argument.
///
/// # Safety
/// `p` is NULL or a live handle of this type.
unsafe fn handle<'a, T>(p: *const T, what: &str) -> Res<&'a T> {
    // SAFETY: NULL or live by the caller's contract.
    unsafe { p.as_ref() }.ok_or_else(|| Fail(TC_ERR_NULL, format!("{what} is NULL")))
}

/// An engine handle. Thread-safe: one engine may be used from many threads at once.
pub struct tc_engine {
    engine: Engine,
}

impl tc_engine {
    fn run<T>(&self, f: impl std::future::Future<Output = Result<T, Error>>) -> Res<T> {
        Ok(runtime()?.block_on(f)?)
    }
}

/// The library's version, e.g. "0.1.0". A static string: never free it.
#[no_mangle]
pub extern "C" fn tc_version() -> *const c_char {
    static VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    VERSION.as_ptr()
}

/// The message of the last failure on this thread, or NULL if there was none. Valid until the
/// next failing call on this thread; never free it.
#[no_mangle]
pub extern "C" fn tc_last_error_message() -> *const c_char {
    LAST_ERROR.with(|slot| slot.borrow().as_ref().map_or(ptr::null(), |m| m.as_ptr()))
}

/// The name of a status, e.g. "TC_ERR_NOT_FOUND". A static string: never free it.
#[no_mangle]
pub extern "C" fn tc_status_name(status: tc_status) -> *const c_char {
    let name: &'static CStr = match status {
        TC_OK => c"TC_OK",
        TC_ERR_TEMPLATE => c"TC_ERR_TEMPLATE",
        TC_ERR_NOT_FOUND => c"TC_ERR_NOT_FOUND",
        TC_ERR_INVALID_TRANSITION => c"TC_ERR_INVALID_TRANSITION",
        TC_ERR_CLAIM_LOST => c"TC_ERR_CLAIM_LOST",
        TC_ERR_STORE => c"TC_ERR_STORE",
        TC_ERR_INVALID_ARGUMENT => c"TC_ERR_INVALID_ARGUMENT",
        TC_ERR_NULL => c"TC_ERR_NULL",
        TC_ERR_UTF8 => c"TC_ERR_UTF8",
        TC_ERR_JSON => c"TC_ERR_JSON",
        TC_ERR_CLOSED => c"TC_ERR_CLOSED",
        TC_ERR_PANIC => c"TC_ERR_PANIC",
    };
    name.as_ptr()
}

/// Frees a string the library returned through a `char **out` argument. NULL is fine.
///
/// # Safety
/// `s` is NULL or a string from this library not freed before.
#[no_mangle]
pub unsafe extern "C" fn tc_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: made by CString::into_raw in out_string, freed once by contract.
        drop(unsafe { CString::from_raw(s) });
    }
}

/// Opens an engine on `url` ("memory:", "sqlite:///path.db", "postgres://…"; NULL: the SQLite
/// file ./tasker.db). On success `*out` is a handle to free with tc_engine_close.
///
/// # Safety
/// `url` is NULL or a NUL-terminated string; `out` is valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_engine_open(url: *const c_char, out: *mut *mut tc_engine) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        with_out(out, || {
            let url = opt_text(url, "url")?.unwrap_or(tasker_core::engine::DEFAULT_URL);
            let engine = runtime()?.block_on(Engine::open(url))?;
            Ok(Box::into_raw(Box::new(tc_engine { engine })))
        })
    }
}

/// Closes the engine and frees the handle. NULL is fine. Workers and subscriptions made from it
/// must not be used afterwards (free them first).
///
/// # Safety
/// `engine` is NULL or a handle from tc_engine_open not freed before.
#[no_mangle]
pub unsafe extern "C" fn tc_engine_close(engine: *mut tc_engine) -> tc_status {
    boundary(|| {
        if !engine.is_null() {
            // SAFETY: made by Box::into_raw in tc_engine_open, freed once by contract.
            let engine = unsafe { Box::from_raw(engine) };
            engine.engine.close();
        }
        Ok(())
    })
}

/// Validates and stores a template given as YAML or JSON text.
///
/// # Safety
/// `engine` is a live handle; `yaml_or_json` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn tc_register_template(
    engine: *const tc_engine,
    yaml_or_json: *const c_char,
) -> tc_status {
    boundary(|| {
        // SAFETY: forwarded contracts.
        let (e, text) = unsafe {
            (
                handle(engine, "engine")?,
                self::text(yaml_or_json, "template")?,
            )
        };
        e.run(e.engine.register_template_str(text)).map(drop)
    })
}

/// Starts a task of the newest version of template `ns/name` with the JSON `context_json`
/// (NULL: {}). On success `*out_task_id` is the task id, to free with tc_string_free.
///
/// # Safety
/// `engine` is a live handle; strings are NUL-terminated (context may be NULL); `out_task_id`
/// is valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_create_task(
    engine: *const tc_engine,
    ns: *const c_char,
    name: *const c_char,
    context_json: *const c_char,
    out_task_id: *mut *mut c_char,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        tc_create_task_ex(
            engine,
            ns,
            name,
            context_json,
            ptr::null(),
            ptr::null(),
            0,
            out_task_id,
        )
    }
}

/// tc_create_task with a template `version` (NULL: newest), an `idempotency_key` (NULL: none; a
/// key seen before for the template returns the first task's id) and a `priority` (higher
/// first).
///
/// # Safety
/// As tc_create_task; `version` and `idempotency_key` are NULL or NUL-terminated.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn tc_create_task_ex(
    engine: *const tc_engine,
    ns: *const c_char,
    name: *const c_char,
    context_json: *const c_char,
    version: *const c_char,
    idempotency_key: *const c_char,
    priority: i32,
    out_task_id: *mut *mut c_char,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        with_out(out_task_id, || {
            let e = handle(engine, "engine")?;
            let task = NewTask {
                namespace: text(ns, "namespace")?.to_owned(),
                name: text(name, "name")?.to_owned(),
                context: if context_json.is_null() {
                    Value::Object(Default::default())
                } else {
                    json(context_json, "context_json")?
                },
                version: opt_text(version, "version")?.map(str::to_owned),
                idempotency_key: opt_text(idempotency_key, "idempotency_key")?.map(str::to_owned),
                priority,
            };
            let id = e.run(e.engine.create_task(task))?;
            Ok(out_string(id.to_string()))
        })
    }
}

/// A JSON view of one task, for the three view functions below.
///
/// # Safety
/// `engine` is NULL or a live handle; `task_id` NULL or NUL-terminated; `out_json` valid for
/// writes.
unsafe fn task_view<T: serde::Serialize, F: std::future::Future<Output = Result<T, Error>>>(
    engine: *const tc_engine,
    task_id: *const c_char,
    out_json: *mut *mut c_char,
    view: impl FnOnce(Engine, TaskId) -> F,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        with_out(out_json, || {
            let e = handle(engine, "engine")?;
            let id = self::task_id(text(task_id, "task_id")?)?;
            let value = e.run(view(e.engine.clone(), id))?;
            json_out(&value)
        })
    }
}

/// The task as JSON (same fields as Python's engine.task): free with tc_string_free.
///
/// # Safety
/// `engine` is a live handle; `task_id` NUL-terminated; `out_json` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_task_json(
    engine: *const tc_engine,
    task_id: *const c_char,
    out_json: *mut *mut c_char,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        task_view(engine, task_id, out_json, |e, id| async move {
            e.task(id).await
        })
    }
}

/// The task's audit trail as a JSON array: free with tc_string_free.
///
/// # Safety
/// `engine` is a live handle; `task_id` NUL-terminated; `out_json` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_transitions_json(
    engine: *const tc_engine,
    task_id: *const c_char,
    out_json: *mut *mut c_char,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        task_view(engine, task_id, out_json, |e, id| async move {
            e.transitions(id).await
        })
    }
}

/// The task's DAG with each step's state as JSON: free with tc_string_free.
///
/// # Safety
/// `engine` is a live handle; `task_id` NUL-terminated; `out_json` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_graph_json(
    engine: *const tc_engine,
    task_id: *const c_char,
    out_json: *mut *mut c_char,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        task_view(engine, task_id, out_json, |e, id| async move {
            e.graph(id).await
        })
    }
}

/// Tasks as a JSON array, newest first, filtered by `status` and namespace `ns` (NULL: any);
/// at most `limit`. Free with tc_string_free.
///
/// # Safety
/// `engine` is a live handle; strings NULL or NUL-terminated; `out_json` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_list_tasks_json(
    engine: *const tc_engine,
    status: *const c_char,
    ns: *const c_char,
    limit: usize,
    out_json: *mut *mut c_char,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        with_out(out_json, || {
            let e = handle(engine, "engine")?;
            let status = opt_text(status, "status")?
                .map(|s| {
                    s.parse().map_err(|err: tasker_core::state::UnknownName| {
                        Fail(TC_ERR_INVALID_ARGUMENT, err.to_string())
                    })
                })
                .transpose()?;
            let filter = TaskFilter {
                status,
                namespace: opt_text(ns, "ns")?.map(str::to_owned),
                name: None,
                limit,
            };
            let tasks = e.run(e.engine.list_tasks(&filter))?;
            json_out(&tasks)
        })
    }
}

/// An operator verb on one task, for the four functions below.
///
/// # Safety
/// `engine` is NULL or a live handle; `task_id` NULL or NUL-terminated.
unsafe fn operator<F: std::future::Future<Output = Result<(), Error>>>(
    engine: *const tc_engine,
    task_id: *const c_char,
    verb: impl FnOnce(Engine, TaskId) -> F,
) -> tc_status {
    boundary(|| {
        // SAFETY: forwarded contracts.
        let (e, id) = unsafe { (handle(engine, "engine")?, text(task_id, "task_id")?) };
        let id = self::task_id(id)?;
        e.run(verb(e.engine.clone(), id))
    })
}

/// Cancels the task and its unfinished steps.
///
/// # Safety
/// `engine` is a live handle; `task_id` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tc_cancel_task(
    engine: *const tc_engine,
    task_id: *const c_char,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        operator(
            engine,
            task_id,
            |e, id| async move { e.cancel_task(id).await },
        )
    }
}

/// Pauses the task: none of its steps is handed out until it is resumed.
///
/// # Safety
/// `engine` is a live handle; `task_id` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tc_pause_task(
    engine: *const tc_engine,
    task_id: *const c_char,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        operator(
            engine,
            task_id,
            |e, id| async move { e.pause_task(id).await },
        )
    }
}

/// Resumes a paused task.
///
/// # Safety
/// `engine` is a live handle; `task_id` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tc_resume_task(
    engine: *const tc_engine,
    task_id: *const c_char,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        operator(
            engine,
            task_id,
            |e, id| async move { e.resume_task(id).await },
        )
    }
}

/// Runs a failed task again: its failed steps get a fresh attempt budget.
///
/// # Safety
/// `engine` is a live handle; `task_id` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tc_retry_task(
    engine: *const tc_engine,
    task_id: *const c_char,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        operator(
            engine,
            task_id,
            |e, id| async move { e.retry_task(id).await },
        )
    }
}

/// An operator supplies the JSON result of step `step_name` of the task; its dependents run as
/// if it had completed.
///
/// # Safety
/// `engine` is a live handle; strings NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tc_resolve_step(
    engine: *const tc_engine,
    task_id: *const c_char,
    step_name: *const c_char,
    result_json: *const c_char,
) -> tc_status {
    boundary(|| {
        // SAFETY: forwarded contracts.
        let (e, id, step, result) = unsafe {
            (
                handle(engine, "engine")?,
                text(task_id, "task_id")?,
                text(step_name, "step_name")?,
                json(result_json, "result_json")?,
            )
        };
        let id = self::task_id(id)?;
        e.run(e.engine.resolve_step(id, step, result))
    })
}

/// What a handler reported through its step.
enum Report {
    Complete(Value),
    Fail(StepFailure),
}

/// One claimed step. Its strings are valid while the step is: until the handler returns (for a
/// worker's step) or until tc_claim_batch_free (for a claimed batch's step).
pub struct tc_step {
    step: ClaimedStep,
    engine: Engine,
    /// The worker session that handed the step to a handler (None: a claimed batch's step).
    session: Option<WorkerSession>,
    /// Reports go to the engine directly (a claimed batch) or back to the worker (a handler).
    direct: bool,
    report: Mutex<Option<Report>>,
    reported: std::sync::atomic::AtomicBool,
    /// The strings the accessors return, made on first use.
    name: OnceLock<CString>,
    id: OnceLock<CString>,
    task_id: OnceLock<CString>,
    context: OnceLock<CString>,
    inputs: OnceLock<CString>,
}

fn c_string(s: String) -> CString {
    CString::new(s.replace('\0', "\\u0000")).unwrap_or_default()
}

impl tc_step {
    fn new(step: ClaimedStep, engine: Engine, direct: bool) -> tc_step {
        tc_step {
            session: None,
            name: OnceLock::new(),
            id: OnceLock::new(),
            task_id: OnceLock::new(),
            context: OnceLock::new(),
            inputs: OnceLock::new(),
            report: Mutex::new(None),
            reported: std::sync::atomic::AtomicBool::new(false),
            engine,
            direct,
            step,
        }
    }

    fn report(&self, report: Report) -> Res<()> {
        if self
            .reported
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return Err(Fail(
                TC_ERR_INVALID_TRANSITION,
                format!("step {} was already reported", self.step.step_id),
            ));
        }
        let outcome = if self.direct {
            let (id, attempt) = (self.step.step_id, self.step.attempt);
            let done = match report {
                Report::Complete(v) => runtime()?.block_on(self.engine.complete(id, attempt, v)),
                Report::Fail(f) => runtime()?.block_on(self.engine.fail(id, attempt, f)),
            };
            done.map_err(Fail::from)
        } else {
            if let Ok(mut slot) = self.report.lock() {
                *slot = Some(report);
            }
            Ok(())
        };
        if outcome.is_err() {
            // Refused by the store: the caller may try again (e.g. after a store error).
            self.reported
                .store(false, std::sync::atomic::Ordering::Release);
        }
        outcome
    }
}

/// One of a step's strings, made on first use.
///
/// # Safety
/// `step` is NULL or a live step.
unsafe fn step_str(
    step: *const tc_step,
    field: impl FnOnce(&tc_step) -> &OnceLock<CString>,
    make: impl FnOnce(&tc_step) -> String,
) -> *const c_char {
    // SAFETY: NULL or live by contract.
    match unsafe { step.as_ref() } {
        Some(s) => field(s).get_or_init(|| c_string(make(s))).as_ptr(),
        None => ptr::null(),
    }
}

/// The step's name in its template. NULL if `step` is NULL. Valid while the step is; never free it.
///
/// # Safety
/// `step` is NULL or a live step.
#[no_mangle]
pub unsafe extern "C" fn tc_step_name(step: *const tc_step) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { step_str(step, |s| &s.name, |s| s.step.name.to_string()) }
}

/// The step's id, "<task-uuid>/<index>". NULL if `step` is NULL. Valid while the step is; never free it.
///
/// # Safety
/// `step` is NULL or a live step.
#[no_mangle]
pub unsafe extern "C" fn tc_step_id(step: *const tc_step) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { step_str(step, |s| &s.id, |s| s.step.step_id.to_string()) }
}

/// The step's task id. NULL if `step` is NULL. Valid while the step is; never free it.
///
/// # Safety
/// `step` is NULL or a live step.
#[no_mangle]
pub unsafe extern "C" fn tc_step_task_id(step: *const tc_step) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { step_str(step, |s| &s.task_id, |s| s.step.task_id().to_string()) }
}

/// The task's context as JSON. NULL if `step` is NULL. Valid while the step is; never free it.
///
/// # Safety
/// `step` is NULL or a live step.
#[no_mangle]
pub unsafe extern "C" fn tc_step_context_json(step: *const tc_step) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { step_str(step, |s| &s.context, |s| s.step.context.to_string()) }
}

/// The parents' results as a JSON object {"parent": result, …}. NULL if `step` is NULL. Valid while the step is; never free it.
///
/// # Safety
/// `step` is NULL or a live step.
#[no_mangle]
pub unsafe extern "C" fn tc_step_inputs_json(step: *const tc_step) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { step_str(step, |s| &s.inputs, |s| s.step.inputs.to_json().to_string()) }
}

/// The attempt number, 1-based; 0 if `step` is NULL.
///
/// # Safety
/// `step` is NULL or a live step.
#[no_mangle]
pub unsafe extern "C" fn tc_step_attempt(step: *const tc_step) -> u32 {
    // SAFETY: NULL or live by contract.
    unsafe { step.as_ref() }.map_or(0, |s| s.step.attempt)
}

/// Reports the step's JSON result. A second report of the same step is
/// TC_ERR_INVALID_TRANSITION; a claim that was lost, TC_ERR_CLAIM_LOST.
///
/// # Safety
/// `step` is a live step; `result_json` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tc_step_complete(
    step: *const tc_step,
    result_json: *const c_char,
) -> tc_status {
    boundary(|| {
        // SAFETY: forwarded contracts.
        let (s, result) = unsafe { (handle(step, "step")?, json(result_json, "result_json")?) };
        s.report(Report::Complete(result))
    })
}

/// Reports the step's failure with `message`: `retryable` (after `retry_after_ms`, or the
/// step's backoff when negative) or permanent.
///
/// # Safety
/// `step` is a live step; `message` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tc_step_fail(
    step: *const tc_step,
    message: *const c_char,
    retryable: bool,
    retry_after_ms: i64,
) -> tc_status {
    boundary(|| {
        // SAFETY: forwarded contracts.
        let (s, message) = unsafe { (handle(step, "step")?, text(message, "message")?) };
        let kind = if retryable {
            FailureKind::Retryable {
                retry_after_ms: u64::try_from(retry_after_ms).ok(),
            }
        } else {
            FailureKind::Permanent
        };
        s.report(Report::Fail(StepFailure {
            message: message.to_owned(),
            kind,
        }))
    })
}

/// Extends the step's lease by its timeout (for long handlers).
///
/// # Safety
/// `step` is a live step.
#[no_mangle]
pub unsafe extern "C" fn tc_step_heartbeat(step: *const tc_step) -> tc_status {
    boundary(|| {
        // SAFETY: NULL or live by contract.
        let s = unsafe { handle(step, "step")? };
        let rt = runtime()?;
        match &s.session {
            Some(session) => rt.block_on(session.heartbeat(tasker_core::worker::AttemptId {
                step: s.step.step_id,
                attempt: s.step.attempt,
            })),
            None => rt.block_on(s.engine.heartbeat(s.step.step_id, s.step.attempt)),
        }
        .map(drop)
        .map_err(Fail::from)
    })
}

#[derive(Clone, Copy)]
struct UserData(*mut c_void);

impl UserData {
    /// The pointer (a method, so that closures capture the whole Send wrapper).
    fn get(self) -> *mut c_void {
        self.0
    }
}
// SAFETY: the host promises (docs/c.md, the header) that a handler and its user data may be
// used from the worker's threads.
unsafe impl Send for UserData {}
// SAFETY: as above.
unsafe impl Sync for UserData {}

/// A handler: called with the step and the registered user data on one of the worker's
/// threads; it reports with tc_step_complete or tc_step_fail before returning.
pub type tc_handler_fn = extern "C" fn(step: *mut tc_step, user_data: *mut c_void);

type CHandlers = HashMap<String, (tc_handler_fn, UserData)>;

/// One of the worker's threads: takes attempts from the session, calls their C handler (outside
/// the async runtime) and hands back what it reported.
fn c_host(rt: Arc<Runtime>, session: WorkerSession, handlers: Arc<CHandlers>) {
    loop {
        let next = match session.try_next() {
            Next::Empty => rt.block_on(session.next(Duration::from_millis(500))),
            next => next,
        };
        let attempt = match next {
            Next::Attempt(attempt) => attempt,
            Next::Empty => continue,
            Next::Finished => return,
        };
        let id = attempt.id();
        let outcome = match handlers.get(&*attempt.step.handler) {
            None => AttemptOutcome::Fail(StepFailure {
                message: format!("no handler registered for {:?}", attempt.step.handler),
                kind: FailureKind::Retryable {
                    retry_after_ms: None,
                },
            }),
            Some(&(fn_, user_data)) => {
                let mut s = tc_step::new(attempt.step, session.engine().clone(), false);
                s.session = Some(session.clone());
                // A C function cannot unwind; the guard is for the Rust around it.
                let _ = catch_unwind(AssertUnwindSafe(|| fn_(&mut s, user_data.get())));
                match s.report.into_inner().ok().flatten() {
                    Some(Report::Complete(v)) => AttemptOutcome::Complete(v),
                    Some(Report::Fail(f)) => AttemptOutcome::Fail(f),
                    None => AttemptOutcome::Fail(StepFailure {
                        message: "the handler returned without reporting".into(),
                        kind: FailureKind::Retryable {
                            retry_after_ms: None,
                        },
                    }),
                }
            }
        };
        if let Err(refused) = session.report(id, outcome) {
            tracing::warn!(step = %id.step, attempt = id.attempt, %refused, "outcome refused");
        }
    }
}

/// A worker: runs registered C handlers for claimed steps with a concurrency limit.
pub struct tc_worker {
    engine: Engine,
    concurrency: u32,
    handlers: HashMap<String, (tc_handler_fn, UserData)>,
}

/// A worker on `engine` running at most `concurrency` (≥ 1) handlers at once. Free it with
/// tc_worker_free (before closing the engine).
///
/// # Safety
/// `engine` is a live handle; `out` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_worker_new(
    engine: *const tc_engine,
    concurrency: u32,
    out: *mut *mut tc_worker,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        with_out(out, || {
            let e = handle(engine, "engine")?;
            if concurrency == 0 {
                return Err(Fail(
                    TC_ERR_INVALID_ARGUMENT,
                    "concurrency must be at least 1".into(),
                ));
            }
            Ok(Box::into_raw(Box::new(tc_worker {
                engine: e.engine.clone(),
                concurrency,
                handlers: HashMap::new(),
            })))
        })
    }
}

/// Registers `fn` (with `user_data`, passed back on every call) for steps whose handler is
/// `handler_name`. Handlers run on the worker's threads: they and their user data must be
/// thread-safe.
///
/// # Safety
/// `worker` is a live handle; `handler_name` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tc_worker_register(
    worker: *mut tc_worker,
    handler_name: *const c_char,
    r#fn: Option<extern "C" fn(step: *mut tc_step, user_data: *mut c_void)>,
    user_data: *mut c_void,
) -> tc_status {
    boundary(|| {
        // SAFETY: NULL or live (and not shared during the call) by contract.
        let w =
            unsafe { worker.as_mut() }.ok_or_else(|| Fail(TC_ERR_NULL, "worker is NULL".into()))?;
        // SAFETY: forwarded contract.
        let name = unsafe { text(handler_name, "handler_name")? };
        let fn_ = r#fn.ok_or_else(|| Fail(TC_ERR_NULL, "fn is NULL".into()))?;
        w.handlers
            .insert(name.to_owned(), (fn_, UserData(user_data)));
        Ok(())
    })
}

/// Runs the worker until no step is ready, running or waiting for a retry, or until
/// `timeout_ms` (both TC_OK). Blocks the calling thread; handlers run on other threads.
///
/// # Safety
/// `worker` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn tc_worker_run_until_idle(
    worker: *const tc_worker,
    timeout_ms: u64,
) -> tc_status {
    boundary(|| {
        // SAFETY: NULL or live by contract.
        let w = unsafe { handle(worker, "worker")? };
        let rt = runtime()?;
        let mut config = SessionConfig::until_idle(w.concurrency as usize)
            .timeout(Duration::from_millis(timeout_ms.min(u64::MAX / 2)));
        config.worker_id = tasker_core::worker::default_worker_id("c").into();
        config.handlers = Some(w.handlers.keys().map(|n| n.as_str().into()).collect());
        // Handler threads take attempts back to back.
        config.wake_on_demand = true;
        let session = {
            let _entered = rt.enter();
            WorkerSession::start(w.engine.clone(), config)
        };
        let handlers = Arc::new(w.handlers.clone());
        let mut threads = Vec::with_capacity(w.concurrency as usize);
        for i in 0..w.concurrency {
            let (rt, host, handlers) = (rt.clone(), session.clone(), handlers.clone());
            let spawned = thread::Builder::new()
                .name(format!("tasker-core-c-{i}"))
                .spawn(move || c_host(rt, host, handlers));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    session.abort();
                    return Err(Fail(
                        TC_ERR_STORE,
                        format!("cannot start a worker thread: {e}"),
                    ));
                }
            }
        }
        let report = rt.block_on(session.finished());
        for t in threads {
            let _ = t.join();
        }
        report.map(drop).map_err(Fail::from)
    })
}

/// Frees a worker. NULL is fine.
///
/// # Safety
/// `worker` is NULL or a handle from tc_worker_new not freed before, and not running.
#[no_mangle]
pub unsafe extern "C" fn tc_worker_free(worker: *mut tc_worker) {
    if !worker.is_null() {
        // SAFETY: made by Box::into_raw in tc_worker_new, freed once by contract.
        drop(unsafe { Box::from_raw(worker) });
    }
}

/// Steps handed out by tc_claim; owns them.
pub struct tc_claim_batch {
    /// Never resized after tc_claim, so pointers to its steps stay valid.
    steps: Vec<tc_step>,
}

/// The low-level protocol: claims up to `limit` ready steps whose handler is one of the
/// `handler_count` names in `handlers` (NULL and 0: any handler) for `worker_id`, waiting up
/// to `wait_ms` for one when none is ready. `*out` is a batch (possibly empty) to free with
/// tc_claim_batch_free; report each step with tc_step_complete / tc_step_fail. Thread-safe.
///
/// # Safety
/// `engine` is a live handle; `worker_id` NUL-terminated; `handlers` NULL or an array of
/// `handler_count` NUL-terminated strings; `out` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_claim(
    engine: *const tc_engine,
    worker_id: *const c_char,
    handlers: *const *const c_char,
    handler_count: usize,
    limit: usize,
    wait_ms: u64,
    out: *mut *mut tc_claim_batch,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        with_out(out, || {
            let e = handle(engine, "engine")?;
            let worker_id = text(worker_id, "worker_id")?;
            let handlers = match (handlers.is_null(), handler_count) {
                (true, 0) => None,
                (true, _) => {
                    return Err(Fail(
                        TC_ERR_NULL,
                        "handlers is NULL but handler_count is not 0".into(),
                    ))
                }
                (false, n) => {
                    let names = std::slice::from_raw_parts(handlers, n);
                    let mut list = Vec::with_capacity(n);
                    for &name in names {
                        list.push(Arc::<str>::from(text(name, "a handler name")?));
                    }
                    Some(list)
                }
            };
            let request = ClaimRequest {
                worker_id: worker_id.into(),
                handlers,
                limit,
            };
            let wait = Duration::from_millis(wait_ms.min(86_400_000));
            let engine = e.engine.clone();
            let claimed = runtime()?.block_on(engine.claim_waiting(&request, wait))?;
            let steps = claimed
                .into_iter()
                .map(|s| tc_step::new(s, e.engine.clone(), true))
                .collect();
            Ok(Box::into_raw(Box::new(tc_claim_batch { steps })))
        })
    }
}

/// The number of steps in the batch; 0 for NULL.
///
/// # Safety
/// `batch` is NULL or a live batch.
#[no_mangle]
pub unsafe extern "C" fn tc_claim_batch_len(batch: *const tc_claim_batch) -> usize {
    // SAFETY: NULL or live by contract.
    unsafe { batch.as_ref() }.map_or(0, |b| b.steps.len())
}

/// Step `index` of the batch, owned by the batch (valid until tc_claim_batch_free); NULL when
/// out of range.
///
/// # Safety
/// `batch` is NULL or a live batch.
#[no_mangle]
pub unsafe extern "C" fn tc_claim_batch_get(
    batch: *mut tc_claim_batch,
    index: usize,
) -> *mut tc_step {
    // SAFETY: NULL or live by contract.
    unsafe { batch.as_mut() }
        .and_then(|b| b.steps.get_mut(index))
        .map_or(ptr::null_mut(), |s| s as *mut tc_step)
}

/// Frees a batch and its steps. NULL is fine. Steps not reported are not failed: their lease
/// runs out and they are handed out again.
///
/// # Safety
/// `batch` is NULL or a batch from tc_claim not freed before.
#[no_mangle]
pub unsafe extern "C" fn tc_claim_batch_free(batch: *mut tc_claim_batch) {
    if !batch.is_null() {
        // SAFETY: made by Box::into_raw in tc_claim, freed once by contract.
        drop(unsafe { Box::from_raw(batch) });
    }
}

/// A subscription to lifecycle events.
pub struct tc_subscription {
    sub: tasker_core::Subscription,
}

/// Subscribes to events whose name matches the glob `pattern` ("step.*"; NULL: all). Free
/// with tc_subscription_free.
///
/// # Safety
/// `engine` is a live handle; `pattern` NULL or NUL-terminated; `out` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_subscribe(
    engine: *const tc_engine,
    pattern: *const c_char,
    out: *mut *mut tc_subscription,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        with_out(out, || {
            let e = handle(engine, "engine")?;
            let pattern = opt_text(pattern, "pattern")?.unwrap_or("*");
            let sub = e.engine.subscribe(pattern)?;
            Ok(Box::into_raw(Box::new(tc_subscription { sub })))
        })
    }
}

/// The next event as JSON (free with tc_string_free), waiting up to `timeout_ms`; on timeout
/// `*out_json` is NULL and the status TC_OK.
///
/// # Safety
/// `sub` is a live subscription; `out_json` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_subscription_next_json(
    sub: *const tc_subscription,
    timeout_ms: u64,
    out_json: *mut *mut c_char,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        with_out(out_json, || {
            let s = handle(sub, "sub")?;
            match s
                .sub
                .next_timeout(Duration::from_millis(timeout_ms.min(86_400_000)))
            {
                Some(event) => json_out(&event.to_json()),
                None => Ok(ptr::null_mut()),
            }
        })
    }
}

/// Frees a subscription. NULL is fine.
///
/// # Safety
/// `sub` is NULL or a handle from tc_subscribe not freed before.
#[no_mangle]
pub unsafe extern "C" fn tc_subscription_free(sub: *mut tc_subscription) {
    if !sub.is_null() {
        // SAFETY: made by Box::into_raw in tc_subscribe, freed once by contract.
        drop(unsafe { Box::from_raw(sub) });
    }
}
