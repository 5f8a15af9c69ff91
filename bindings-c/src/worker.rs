//! The worker (`tc_worker`): C handlers run on threads the core's worker session drives.

use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tasker_core::host::{ForkSafe, Owner};
use tasker_core::worker::{AttemptOutcome, Next, SessionConfig, WorkerSession};
use tasker_core::{Engine, HandlerError};
use tokio::runtime::Runtime;

use crate::{engine::*, error::*, ffi::*, panic::*, step::*};

#[derive(Clone, Copy)]
pub(crate) struct UserData(*mut c_void);

impl UserData {
    /// The pointer (a method, so that closures capture the whole Send wrapper).
    pub(crate) fn get(self) -> *mut c_void {
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

pub(crate) type CHandlers = HashMap<String, (tc_handler_fn, UserData)>;

/// One of the worker's threads: takes attempts from the session, calls their C handler (outside
/// the async runtime) and hands back what it reported.
pub(crate) fn c_host(rt: Arc<Runtime>, session: WorkerSession, handlers: Arc<CHandlers>) {
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
            None => AttemptOutcome::Fail(
                HandlerError::retryable(format!(
                    "no handler registered for {:?}",
                    attempt.step.handler
                ))
                .to_failure(),
            ),
            Some(&(fn_, user_data)) => {
                let mut s = tc_step::new(attempt.step, session.engine().clone(), false);
                s.session = Some(session.clone());
                // A C function cannot unwind; the guard is for the Rust around it.
                let _ = catch_unwind(AssertUnwindSafe(|| fn_(&mut s, user_data.get())));
                match s.report.into_inner().ok().flatten() {
                    Some(Report::Output(o)) => o.into(),
                    Some(Report::Fail(f)) => AttemptOutcome::Fail(f),
                    None => AttemptOutcome::Fail(
                        HandlerError::retryable("the handler returned without reporting")
                            .to_failure(),
                    ),
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
    pub(crate) engine: ForkSafe<Engine>,
    /// Refused in a forked child, as its engine is.
    pub(crate) owner: Owner,
    pub(crate) concurrency: u32,
    pub(crate) handlers: HashMap<String, (tc_handler_fn, UserData)>,
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
                return Err(Fail::new(
                    TC_ERR_INVALID_ARGUMENT,
                    "concurrency must be at least 1".into(),
                ));
            }
            Ok(Box::into_raw(Box::new(tc_worker {
                engine: ForkSafe::new(e.engine()?.clone()),
                owner: Owner::current(),
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
        let w = unsafe { worker.as_mut() }
            .ok_or_else(|| Fail::new(TC_ERR_NULL, "worker is NULL".into()))?;
        // SAFETY: forwarded contract.
        let name = unsafe { text(handler_name, "handler_name")? };
        let fn_ = r#fn.ok_or_else(|| Fail::new(TC_ERR_NULL, "fn is NULL".into()))?;
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
        w.owner.check("worker")?;
        let rt = runtime()?;
        let mut config = SessionConfig::until_idle(w.concurrency as usize)
            .timeout(Duration::from_millis(timeout_ms.min(u64::MAX / 2)));
        config.worker_id = tasker_core::worker::default_worker_id("c").into();
        config.handlers = Some(w.handlers.keys().map(|n| n.as_str().into()).collect());
        // Handler threads take attempts back to back.
        config.wake_on_demand = true;
        let session = {
            let _entered = rt.enter();
            WorkerSession::start((*w.engine).clone(), config)
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
                    return Err(Fail::new(
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
        boundary_void(|| drop(unsafe { Box::from_raw(worker) }));
    }
}
