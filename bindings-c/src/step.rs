//! One claimed step (`tc_step`): its fields, and the reports of its outcome.

use std::ffi::{c_char, CString};
use std::ptr;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;
use tasker_core::store::StepFailure;
use tasker_core::worker::WorkerSession;
use tasker_core::{ClaimedStep, Engine, FailureKind};

use crate::{error::*, ffi::*, panic::*};

/// What a handler reported through its step.
pub(crate) enum Report {
    /// A result, a decision or a batch.
    Output(tasker_core::HandlerOutput),
    Fail(StepFailure),
}

/// One claimed step. Its strings are valid while the step is: until the handler returns (for a
/// worker's step) or until tc_claim_batch_free (for a claimed batch's step).
pub struct tc_step {
    pub(crate) step: ClaimedStep,
    pub(crate) engine: Engine,
    /// The worker session that handed the step to a handler (None: a claimed batch's step).
    pub(crate) session: Option<WorkerSession>,
    /// Reports go to the engine directly (a claimed batch) or back to the worker (a handler).
    pub(crate) direct: bool,
    pub(crate) report: Mutex<Option<Report>>,
    pub(crate) reported: std::sync::atomic::AtomicBool,
    /// The strings the accessors return, made on first use.
    pub(crate) name: OnceLock<CString>,
    pub(crate) id: OnceLock<CString>,
    pub(crate) task_id: OnceLock<CString>,
    pub(crate) context: OnceLock<CString>,
    pub(crate) inputs: OnceLock<CString>,
    pub(crate) config: OnceLock<CString>,
    pub(crate) batch: OnceLock<CString>,
    pub(crate) traceparent: OnceLock<CString>,
}

impl tc_step {
    pub(crate) fn new(step: ClaimedStep, engine: Engine, direct: bool) -> tc_step {
        tc_step {
            session: None,
            name: OnceLock::new(),
            id: OnceLock::new(),
            task_id: OnceLock::new(),
            context: OnceLock::new(),
            inputs: OnceLock::new(),
            config: OnceLock::new(),
            batch: OnceLock::new(),
            traceparent: OnceLock::new(),
            report: Mutex::new(None),
            reported: std::sync::atomic::AtomicBool::new(false),
            engine,
            direct,
            step,
        }
    }

    pub(crate) fn report(&self, report: Report) -> Res<()> {
        if self
            .reported
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return Err(Fail::new(
                TC_ERR_INVALID_TRANSITION,
                format!("step {} was already reported", self.step.step_id),
            ));
        }
        let outcome = if self.direct {
            let (id, attempt) = (self.step.step_id, self.step.attempt);
            let done = match report {
                Report::Output(o) => runtime()?.block_on(self.engine.report(id, attempt, o)),
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
pub(crate) unsafe fn step_str(
    step: *const tc_step,
    field: impl FnOnce(&tc_step) -> &OnceLock<CString>,
    make: impl FnOnce(&tc_step) -> String,
) -> *const c_char {
    // SAFETY: NULL or live by contract.
    let Some(s) = (unsafe { step.as_ref() }) else {
        return ptr::null();
    };
    // Behind the panic boundary too: NULL (and the message) should making the string panic.
    let mut out = ptr::null();
    crate::panic::boundary_void(|| out = field(s).get_or_init(|| c_string(make(s))).as_ptr());
    out
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

/// The step's config from its template as a JSON object (Rails Tasker's `handler_config`,
/// tasker-core's `handler.initialization`, after the engine's environment overrides; `{}` when
/// none). NULL if `step` is NULL. Valid while the step is; never free it.
///
/// # Safety
/// `step` is NULL or a live step.
#[no_mangle]
pub unsafe extern "C" fn tc_step_config_json(step: *const tc_step) -> *const c_char {
    // SAFETY: forwarded contract.
    unsafe { step_str(step, |s| &s.config, |s| s.step.config.to_string()) }
}

/// For an instance of a `batch_worker` step, its slice as JSON: `{"index", "start", "end"}`
/// and, for a batch of items, `"items"`. NULL for any other step (and if `step` is NULL).
/// Valid while the step is; never free it.
///
/// # Safety
/// `step` is NULL or a live step.
#[no_mangle]
pub unsafe extern "C" fn tc_step_batch_json(step: *const tc_step) -> *const c_char {
    // SAFETY: NULL or live by contract.
    if unsafe { step.as_ref() }.is_none_or(|s| s.step.batch.is_none()) {
        return ptr::null();
    }
    // SAFETY: forwarded contract.
    unsafe {
        step_str(
            step,
            |s| &s.batch,
            |s| {
                s.step
                    .batch
                    .as_deref()
                    .map(Value::to_string)
                    .unwrap_or_default()
            },
        )
    }
}

/// This attempt's W3C trace context (`00-<trace>-<span>-<flags>`): spans a handler starts
/// under it are children of the attempt's span. NULL for a task stored without a trace (and
/// if `step` is NULL). Valid while the step is; never free it.
///
/// # Safety
/// `step` is NULL or a live step.
#[no_mangle]
pub unsafe extern "C" fn tc_step_traceparent(step: *const tc_step) -> *const c_char {
    // SAFETY: NULL or live by contract.
    if unsafe { step.as_ref() }.is_none_or(|s| s.step.trace.is_none()) {
        return ptr::null();
    }
    // SAFETY: forwarded contract.
    unsafe {
        step_str(
            step,
            |s| &s.traceparent,
            |s| s.step.traceparent().unwrap_or_default(),
        )
    }
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
        s.report(Report::Output(result.into()))
    })
}

/// Reports the decision of a `type: decision` step: `steps_json` is a JSON array of the names of
/// the steps depending on it that run (the others are skipped with the reason "not chosen"),
/// `result_json` the step's own result (NULL: null). A `steps_json` that is not an array of
/// strings is TC_ERR_INVALID_ARGUMENT, text that is not JSON TC_ERR_JSON (nothing is reported;
/// the step may report again). Naming a step that does not depend on it, or deciding from a
/// step that is not a decision, fails the step for good. A second report of the same step is
/// TC_ERR_INVALID_TRANSITION; a claim that was lost, TC_ERR_CLAIM_LOST.
///
/// # Safety
/// `step` is a live step; `steps_json` NUL-terminated; `result_json` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tc_step_decide(
    step: *const tc_step,
    steps_json: *const c_char,
    result_json: *const c_char,
) -> tc_status {
    boundary(|| {
        // SAFETY: forwarded contracts.
        let (s, steps) = unsafe { (handle(step, "step")?, json(steps_json, "steps_json")?) };
        let steps: Vec<String> = serde_json::from_value(steps).map_err(|_| {
            Fail::new(
                TC_ERR_INVALID_ARGUMENT,
                "steps_json must be a JSON array of step names".into(),
            )
        })?;
        // SAFETY: forwarded contract.
        let result = unsafe { optional_json(result_json)? };
        s.report(Report::Output(
            tasker_core::Decision { steps, result }.into(),
        ))
    })
}

/// The JSON result `result_json` (NULL: null) of a `type: batchable` step.
///
/// # Safety
/// `result_json` NULL or NUL-terminated.
unsafe fn optional_json(result_json: *const c_char) -> Res<Value> {
    if result_json.is_null() {
        return Ok(Value::Null);
    }
    // SAFETY: NUL-terminated by contract.
    unsafe { json(result_json, "result_json") }
}

/// Reports the batch of a `type: batchable` step as items: `items_json` is a JSON array, of
/// which each instance of the step's `batch.worker` step takes a slice of `batch.size`
/// (tc_step_batch_json); `result_json` is the step's own result (NULL: null). An `items_json`
/// that is not an array is TC_ERR_INVALID_ARGUMENT, text that is not JSON TC_ERR_JSON (nothing
/// is reported). A batch from a step that is not batchable, or one of more than 10 000 slices,
/// fails the step for good. A second report is TC_ERR_INVALID_TRANSITION; a claim that was
/// lost, TC_ERR_CLAIM_LOST.
///
/// # Safety
/// `step` is a live step; `items_json` NUL-terminated; `result_json` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tc_step_batch_items(
    step: *const tc_step,
    items_json: *const c_char,
    result_json: *const c_char,
) -> tc_status {
    boundary(|| {
        // SAFETY: forwarded contracts.
        let (s, items) = unsafe { (handle(step, "step")?, json(items_json, "items_json")?) };
        let Value::Array(items) = items else {
            return Err(Fail::new(
                TC_ERR_INVALID_ARGUMENT,
                "items_json must be a JSON array".into(),
            ));
        };
        // SAFETY: forwarded contract.
        let result = unsafe { optional_json(result_json)? };
        let batch = tasker_core::Batch::items(items).with_result(result);
        s.report(Report::Output(batch.into()))
    })
}

/// Reports the batch of a `type: batchable` step as a total: each instance of its
/// `batch.worker` step covers a range `start … end` of `0 … total` in slices of `batch.size`.
/// Otherwise as tc_step_batch_items.
///
/// # Safety
/// `step` is a live step; `result_json` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tc_step_batch_total(
    step: *const tc_step,
    total: u64,
    result_json: *const c_char,
) -> tc_status {
    boundary(|| {
        // SAFETY: forwarded contracts.
        let (s, result) = unsafe { (handle(step, "step")?, optional_json(result_json)?) };
        let batch = tasker_core::Batch::total(total).with_result(result);
        s.report(Report::Output(batch.into()))
    })
}

/// Starts child tasks of the step: `children_json` is a JSON array of objects with
/// "namespace" and "name", optionally "context" (default {}) and "version" (default: the
/// newest). The step waits for them ("waiting_for_children") and then completes with the
/// array of their results in order — each an object of the child's leaf steps' results by
/// name — or fails for good when one fails or is cancelled (the others are cancelled).
/// Cancelling the parent task cancels its children. Text that is not JSON, or not such an
/// array (an unknown key), is TC_ERR_JSON and nothing is reported; an unknown template fails
/// the step for good. A second report is TC_ERR_INVALID_TRANSITION; a claim that was lost,
/// TC_ERR_CLAIM_LOST.
///
/// # Safety
/// `step` is a live step; `children_json` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tc_step_spawn(
    step: *const tc_step,
    children_json: *const c_char,
) -> tc_status {
    boundary(|| {
        // SAFETY: forwarded contracts.
        let (s, children) =
            unsafe { (handle(step, "step")?, text(children_json, "children_json")?) };
        let children: Vec<tasker_core::ChildTask> = serde_json::from_str(children)
            .map_err(|err| Fail::new(TC_ERR_JSON, format!("children_json: {err}")))?;
        let children = tasker_core::Children { tasks: children };
        s.report(Report::Output(children.into()))
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

/// Publishes the custom event `name` with the JSON `payload_json` (NULL: null) from the running
/// step, to the engine's subscribers: an event the step's template declares (`events`, Rails
/// Tasker's `custom_events`, tasker-core's `domain_events` / `publishes_events`). An
/// undeclared name, or a payload that breaks the event's schema, is TC_ERR_INVALID_ARGUMENT
/// (the message says why; nothing is published); a payload that is not JSON, TC_ERR_JSON; an
/// attempt its worker no longer holds, TC_ERR_CLAIM_LOST (a step of the low-level protocol,
/// tc_claim, is not checked for that).
///
/// # Safety
/// `step` is a live step; `name` NUL-terminated; `payload_json` NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tc_step_publish(
    step: *const tc_step,
    name: *const c_char,
    payload_json: *const c_char,
) -> tc_status {
    boundary(|| {
        // SAFETY: forwarded contracts.
        let (s, name) = unsafe { (handle(step, "step")?, text(name, "name")?) };
        let payload = if payload_json.is_null() {
            Value::Null
        } else {
            // SAFETY: NUL-terminated by contract.
            unsafe { json(payload_json, "payload_json")? }
        };
        match &s.session {
            Some(session) => session.publish(
                tasker_core::worker::AttemptId {
                    step: s.step.step_id,
                    attempt: s.step.attempt,
                },
                name,
                payload,
            ),
            None => s.engine.publish_event(&s.step, name, payload),
        }
        .map_err(Fail::from)
    })
}

/// Keeps `message` in the running attempt's log at `level` ("debug", "info", "warn" or
/// "error"), written with the attempt's outcome and read with tc_logs_json. An attempt keeps
/// its latest 100 lines of at most 1 KiB each; a line logged once the step was reported, or on
/// a step of the low-level protocol (tc_claim), is dropped (still TC_OK). An unknown level is
/// TC_ERR_INVALID_ARGUMENT.
///
/// # Safety
/// `step` is a live step; `level` and `message` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn tc_step_log(
    step: *const tc_step,
    level: *const c_char,
    message: *const c_char,
) -> tc_status {
    boundary(|| {
        // SAFETY: forwarded contracts.
        let (s, level, message) = unsafe {
            (
                handle(step, "step")?,
                text(level, "level")?,
                text(message, "message")?,
            )
        };
        let level: tasker_core::logs::LogLevel = level.parse().map_err(Fail::from)?;
        s.step.log(level, message);
        Ok(())
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
