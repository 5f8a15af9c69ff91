//! The engine handle (`tc_engine`): open and close, templates, tasks, views, operator verbs.

use std::ffi::c_char;
use std::ptr;

use serde_json::Value;
use tasker_core::host::{ForkSafe, Owner};
use tasker_core::{Engine, Error, NewTask, TaskFilter, TaskId};

use crate::{error::*, ffi::*, panic::*};

/// An engine handle. Thread-safe: one engine may be used from many threads at once. After
/// `fork()` the child's copy refuses use (TC_ERR_STORE naming the fork: its connections belong
/// to the parent); open another engine in the child.
pub struct tc_engine {
    engine: ForkSafe<Engine>,
    owner: Owner,
}

impl tc_engine {
    /// The engine, unless this handle was inherited across `fork()`.
    pub(crate) fn engine(&self) -> Res<&Engine> {
        self.owner.check("engine")?;
        Ok(&self.engine)
    }

    pub(crate) fn run<T>(&self, f: impl std::future::Future<Output = Result<T, Error>>) -> Res<T> {
        Ok(runtime()?.block_on(f)?)
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
    unsafe { tc_engine_open_env(url, std::ptr::null(), out) }
}

/// tc_engine_open in `environment`: the environment whose template overrides apply
/// (`environments.<env>` in a template). NULL: `TASKER_ENV`, then `RAILS_ENV`, else none.
///
/// # Safety
/// `url` and `environment` are NULL or NUL-terminated strings; `out` is valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_engine_open_env(
    url: *const c_char,
    environment: *const c_char,
    out: *mut *mut tc_engine,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        with_out(out, || {
            let options = tasker_core::engine::OpenOptions {
                environment: opt_text(environment, "environment")?.map(str::to_owned),
                ..Default::default()
            };
            open(url, options)
        })
    }
}

/// tc_engine_open with `options_json` (NULL: none), a JSON object of: "environment" (as
/// tc_engine_open_env), "otlp_endpoint" (export traces to this base URL, as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` would), "metrics" (false: keep no counters) and
/// "allow_private_webhooks" (true: webhooks may go to loopback and private addresses). An
/// unknown key or a value of the wrong type is TC_ERR_JSON.
///
/// # Safety
/// `url` and `options_json` are NULL or NUL-terminated strings; `out` is valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_engine_open_json(
    url: *const c_char,
    options_json: *const c_char,
    out: *mut *mut tc_engine,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        with_out(out, || {
            let options = match opt_text(options_json, "options_json")? {
                Some(text) => serde_json::from_str(text)
                    .map_err(|e| Fail::new(TC_ERR_JSON, format!("options_json: {e}")))?,
                None => tasker_core::engine::OpenOptions::default(),
            };
            open(url, options)
        })
    }
}

/// A new handle on the engine opened on `url` (NULL: the default) with `options`.
///
/// # Safety
/// `url` is NULL or a NUL-terminated string.
unsafe fn open(
    url: *const c_char,
    options: tasker_core::engine::OpenOptions,
) -> Res<*mut tc_engine> {
    // SAFETY: forwarded contract.
    let url = unsafe { opt_text(url, "url")? }.unwrap_or(tasker_core::engine::DEFAULT_URL);
    let engine = runtime()?.block_on(Engine::open_with(url, options))?;
    Ok(Box::into_raw(Box::new(tc_engine {
        engine: ForkSafe::new(engine),
        owner: Owner::current(),
    })))
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
            // In a forked child the copy is only let go of (ForkSafe): nothing to close there.
            if engine.owner.is_current() {
                engine.engine.close();
            }
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
        e.run(e.engine()?.register_template_str(text)).map(drop)
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
                parent: None,
                run_at: None,
                delay_ms: None,
                traceparent: None,
            };
            let id = e.run(e.engine()?.create_task(task))?;
            Ok(out_string(id.to_string()))
        })
    }
}

/// Starts many tasks at once. `tasks_json` is a JSON array of objects with tc_create_task_ex's
/// arguments: "namespace" and "name", optionally "context", "version", "idempotency_key",
/// "priority", "run_at" (an RFC 3339 time: nothing of the task runs before) or
/// "delay_ms" (nothing runs until that long after its creation), and "traceparent" (the
/// caller's W3C trace context, which the task's span continues). All are checked before any
/// is written (an unknown key is TC_ERR_JSON); those without an idempotency key are written in
/// one transaction. On success `*out_ids_json` is
/// the JSON array of the task ids, in order, to free with tc_string_free.
///
/// # Safety
/// `engine` is a live handle; `tasks_json` NUL-terminated; `out_ids_json` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_create_tasks_json(
    engine: *const tc_engine,
    tasks_json: *const c_char,
    out_ids_json: *mut *mut c_char,
) -> tc_status {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Task {
        namespace: String,
        name: String,
        #[serde(default)]
        context: Option<Value>,
        #[serde(default)]
        version: Option<String>,
        #[serde(default)]
        idempotency_key: Option<String>,
        #[serde(default)]
        priority: i32,
        #[serde(default)]
        run_at: Option<String>,
        #[serde(default)]
        delay_ms: Option<u64>,
        #[serde(default)]
        traceparent: Option<String>,
    }
    // SAFETY: forwarded contracts.
    unsafe {
        with_out(out_ids_json, || {
            let e = handle(engine, "engine")?;
            let tasks: Vec<Task> = serde_json::from_str(text(tasks_json, "tasks_json")?)
                .map_err(|err| Fail::new(TC_ERR_JSON, format!("tasks_json: {err}")))?;
            let mut starts = Vec::with_capacity(tasks.len());
            for t in &tasks {
                let run_at = t
                    .run_at
                    .as_deref()
                    .map(|at| tasker_core::clock::parse_time(at, "run_at"))
                    .transpose()?;
                starts.push(run_at);
            }
            let tasks = tasks
                .into_iter()
                .zip(starts)
                .map(|(t, run_at)| NewTask {
                    namespace: t.namespace,
                    name: t.name,
                    context: t
                        .context
                        .unwrap_or_else(|| Value::Object(Default::default())),
                    version: t.version,
                    idempotency_key: t.idempotency_key,
                    priority: t.priority,
                    parent: None,
                    run_at,
                    delay_ms: t.delay_ms,
                    traceparent: t.traceparent,
                })
                .collect();
            let ids = e.run(e.engine()?.create_tasks(tasks))?;
            let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
            json_out(&ids)
        })
    }
}

/// A JSON view of one task, for the three view functions below.
///
/// # Safety
/// `engine` is NULL or a live handle; `task_id` NULL or NUL-terminated; `out_json` valid for
/// writes.
pub(crate) unsafe fn task_view<
    T: serde::Serialize,
    F: std::future::Future<Output = Result<T, Error>>,
>(
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
            let value = e.run(view(e.engine()?.clone(), id))?;
            json_out(&value)
        })
    }
}

/// What `view` reads of the engine, as JSON, for the functions of one engine-wide view.
///
/// # Safety
/// `engine` is NULL or a live handle; `out_json` valid for writes.
pub(crate) unsafe fn engine_json<
    T: serde::Serialize,
    F: std::future::Future<Output = Result<T, Error>>,
>(
    engine: *const tc_engine,
    out_json: *mut *mut c_char,
    view: impl FnOnce(Engine) -> F,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        with_out(out_json, || {
            let e = handle(engine, "engine")?;
            json_out(&e.run(view(e.engine()?.clone()))?)
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

/// The lines the task's attempts logged (tc_step_log), by step, attempt and line, as a JSON
/// array of `{"step", "step_index", "attempt", "at", "level", "message"}`; of the step named
/// `step` only, unless NULL. Free with tc_string_free. An unknown task or step is
/// TC_ERR_NOT_FOUND.
///
/// # Safety
/// `engine` is a live handle; `task_id` NUL-terminated; `step` NULL or NUL-terminated;
/// `out_json` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_logs_json(
    engine: *const tc_engine,
    task_id: *const c_char,
    step: *const c_char,
    out_json: *mut *mut c_char,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        with_out(out_json, || {
            let e = handle(engine, "engine")?;
            let id = self::task_id(text(task_id, "task_id")?)?;
            let step = opt_text(step, "step")?;
            let engine = e.engine()?.clone();
            let lines = e.run(async move { engine.logs(id, step).await })?;
            json_out(&lines)
        })
    }
}

/// The task's webhook deliveries as a JSON array, oldest first: `{"id", "task_id", "event",
/// "url", "status", "attempts", "last_error", "created_at", "delivered_at"}` (status
/// "pending", "delivering", "delivered" or "failed"). Free with tc_string_free.
///
/// # Safety
/// `engine` is a live handle; `task_id` NUL-terminated; `out_json` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_webhook_deliveries_json(
    engine: *const tc_engine,
    task_id: *const c_char,
    out_json: *mut *mut c_char,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        task_view(engine, task_id, out_json, |e, id| async move {
            e.webhook_deliveries(id).await
        })
    }
}

/// Sends the store's due webhook deliveries now (running workers do every second). When
/// `out_count` is not NULL, `*out_count` is how many attempts were made.
///
/// # Safety
/// `engine` is a live handle; `out_count` NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_deliver_webhooks(
    engine: *const tc_engine,
    out_count: *mut u64,
) -> tc_status {
    boundary(|| {
        // SAFETY: forwarded contracts.
        let e = unsafe { handle(engine, "engine")? };
        let sent = e.run(e.engine()?.deliver_webhooks())?;
        if !out_count.is_null() {
            // SAFETY: non-NULL and valid for writes by contract.
            unsafe { *out_count = sent as u64 };
        }
        Ok(())
    })
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
                        Fail::new(TC_ERR_INVALID_ARGUMENT, err.to_string())
                    })
                })
                .transpose()?;
            let filter = TaskFilter {
                status,
                namespace: opt_text(ns, "ns")?.map(str::to_owned),
                name: None,
                limit,
            };
            let tasks = e.run(e.engine()?.list_tasks(&filter))?;
            json_out(&tasks)
        })
    }
}

/// An operator verb on one task, for the four functions below.
///
/// # Safety
/// `engine` is NULL or a live handle; `task_id` NULL or NUL-terminated.
pub(crate) unsafe fn operator<F: std::future::Future<Output = Result<(), Error>>>(
    engine: *const tc_engine,
    task_id: *const c_char,
    verb: impl FnOnce(Engine, TaskId) -> F,
) -> tc_status {
    boundary(|| {
        // SAFETY: forwarded contracts.
        let (e, id) = unsafe { (handle(engine, "engine")?, text(task_id, "task_id")?) };
        let id = self::task_id(id)?;
        e.run(verb(e.engine()?.clone(), id))
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

/// Deletes the tasks that finished before `finished_before` (an RFC 3339 time) in one of the
/// states of `statuses_json` (a JSON array of state names; NULL: every finished state), with
/// their steps and transitions. When `out_count` is not NULL, `*out_count` is how many. An
/// unfinished state is TC_ERR_INVALID_ARGUMENT.
///
/// # Safety
/// `engine` is a live handle; `finished_before` NUL-terminated; `statuses_json` NULL or
/// NUL-terminated; `out_count` NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_purge(
    engine: *const tc_engine,
    finished_before: *const c_char,
    statuses_json: *const c_char,
    out_count: *mut u64,
) -> tc_status {
    boundary(|| {
        // SAFETY: forwarded contracts.
        let (e, before, statuses) = unsafe {
            (
                handle(engine, "engine")?,
                text(finished_before, "finished_before")?,
                opt_text(statuses_json, "statuses_json")?,
            )
        };
        let before = tasker_core::clock::parse_time(before, "finished_before")?;
        let statuses: Option<Vec<tasker_core::TaskState>> = statuses
            .map(serde_json::from_str)
            .transpose()
            .map_err(|err| Fail::new(TC_ERR_JSON, format!("statuses_json: {err}")))?;
        let purged = e.run(e.engine()?.purge(before, statuses.as_deref()))?;
        if !out_count.is_null() {
            // SAFETY: non-NULL and valid for writes by contract.
            unsafe { *out_count = purged };
        }
        Ok(())
    })
}

/// Registers (or replaces) a durable cron schedule. `spec_json` is a JSON object: "name",
/// "cron" (5 fields, or 6 with seconds first), "namespace", "template", and optionally
/// "context" (default {}), "timezone" (an IANA name, default "UTC"), "overlap" ("skip", the
/// default: a tick makes no task while the last one's still runs; or "allow") and "version".
/// Each tick creates one task however many engines share the store. On success `*out_json` is
/// the schedule with its "next_at", to free with tc_string_free. A bad cron expression or time
/// zone is TC_ERR_INVALID_ARGUMENT, text that is not such an object TC_ERR_JSON.
///
/// # Safety
/// `engine` is a live handle; `spec_json` NUL-terminated; `out_json` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_schedule_json(
    engine: *const tc_engine,
    spec_json: *const c_char,
    out_json: *mut *mut c_char,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        with_out(out_json, || {
            let e = handle(engine, "engine")?;
            let spec: tasker_core::schedule::ScheduleSpec =
                serde_json::from_str(text(spec_json, "spec_json")?)
                    .map_err(|err| Fail::new(TC_ERR_JSON, format!("spec_json: {err}")))?;
            let view = e.run(e.engine()?.schedule(spec))?;
            json_out(&view)
        })
    }
}

/// Removes schedule `name`; when `out_removed` is not NULL, `*out_removed` says whether there
/// was one.
///
/// # Safety
/// `engine` is a live handle; `name` NUL-terminated; `out_removed` NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_unschedule(
    engine: *const tc_engine,
    name: *const c_char,
    out_removed: *mut bool,
) -> tc_status {
    boundary(|| {
        // SAFETY: forwarded contracts.
        let (e, name) = unsafe { (handle(engine, "engine")?, text(name, "name")?) };
        let removed = e.run(e.engine()?.unschedule(name))?;
        if !out_removed.is_null() {
            // SAFETY: non-NULL and valid for writes by contract.
            unsafe { *out_removed = removed };
        }
        Ok(())
    })
}

/// Every schedule, by name, as a JSON array in `*out_json` (free with tc_string_free).
///
/// # Safety
/// `engine` is a live handle; `out_json` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_schedules_json(
    engine: *const tc_engine,
    out_json: *mut *mut c_char,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe { engine_json(engine, out_json, |e| async move { e.schedules().await }) }
}

/// This engine's metrics in the Prometheus text format (OpenMetrics) in `*out_text` (free
/// with tc_string_free): `tasker_tasks_total`, `tasker_steps_total`, the histograms
/// `tasker_step_duration_seconds` and `tasker_ready_to_claimed_seconds` — what this engine
/// recorded since it opened — and `tasker_ready_steps`, the store's claimable steps now.
///
/// # Safety
/// `engine` is a live handle; `out_text` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_metrics(
    engine: *const tc_engine,
    out_text: *mut *mut c_char,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe {
        with_out(out_text, || {
            let e = handle(engine, "engine")?;
            Ok(out_string(e.run(e.engine()?.metrics())?))
        })
    }
}

/// What the store holds, counted, as JSON in `*out_json` (free with tc_string_free):
/// `{"tasks": {status: n}, "steps": {status: n}, "retries", "recovered", "lease_expiries",
/// "handlers": [{"handler", "finished", "mean_ms", "p95_ms"}]}`.
///
/// # Safety
/// `engine` is a live handle; `out_json` valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_stats_json(
    engine: *const tc_engine,
    out_json: *mut *mut c_char,
) -> tc_status {
    // SAFETY: forwarded contracts.
    unsafe { engine_json(engine, out_json, |e| async move { e.stats().await }) }
}

/// Creates the tasks of the schedules' ticks that fell due (a worker does it every second);
/// when `out_count` is not NULL, `*out_count` is how many.
///
/// # Safety
/// `engine` is a live handle; `out_count` NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_fire_schedules(
    engine: *const tc_engine,
    out_count: *mut usize,
) -> tc_status {
    boundary(|| {
        // SAFETY: forwarded contract.
        let e = unsafe { handle(engine, "engine")? };
        let made = e.run(e.engine()?.fire_schedules())?;
        if !out_count.is_null() {
            // SAFETY: non-NULL and valid for writes by contract.
            unsafe { *out_count = made };
        }
        Ok(())
    })
}

/// Makes good the child tasks' follow-ups a crash left undone (workers do it every few
/// seconds; a host with its own loop over tc_claim calls it now and then): settles the steps
/// whose children have all finished, cancels the children no step waits for any more. When
/// `out_changed` is not NULL, `*out_changed` is how many tasks it changed.
///
/// # Safety
/// `engine` is a live handle; `out_changed` NULL or valid for writes.
#[no_mangle]
pub unsafe extern "C" fn tc_tend_children(
    engine: *const tc_engine,
    out_changed: *mut usize,
) -> tc_status {
    boundary(|| {
        // SAFETY: forwarded contract.
        let e = unsafe { handle(engine, "engine")? };
        let changed = e.run(e.engine()?.tend_children())?;
        if !out_changed.is_null() {
            // SAFETY: non-NULL and valid for writes by contract.
            unsafe { *out_changed = changed };
        }
        Ok(())
    })
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
        e.run(e.engine()?.resolve_step(id, step, result))
    })
}
