//! The low-level protocol: claimed batches (`tc_claim_batch`).

use std::ffi::c_char;
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use tasker_core::store::ClaimRequest;

use crate::{engine::*, error::*, ffi::*, panic::*, step::*};

/// Steps handed out by tc_claim; owns them.
pub struct tc_claim_batch {
    /// Never resized after tc_claim, so pointers to its steps stay valid.
    pub(crate) steps: Vec<tc_step>,
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
                    return Err(Fail::new(
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
            let engine = e.engine()?.clone();
            let claimed = runtime()?.block_on(engine.claim_waiting(&request, wait))?;
            let steps = claimed
                .into_iter()
                .map(|s| tc_step::new(s, engine.clone(), true))
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
    let Some(len) = (unsafe { batch.as_ref() }).map(|b| b.steps.len()) else {
        return ptr::null_mut();
    };
    if index >= len {
        return ptr::null_mut();
    }
    // SAFETY: live by contract and `index` in range. The pointer comes from the buffer
    // (`as_mut_ptr` makes no reference to the steps), so the pointers two calls return, or
    // one call returns twice, never alias a `&mut`.
    unsafe { (*batch).steps.as_mut_ptr().add(index) }
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
        boundary_void(|| drop(unsafe { Box::from_raw(batch) }));
    }
}
