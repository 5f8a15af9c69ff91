//! Lifecycle events (`tc_subscription`).

use std::ffi::c_char;
use std::ptr;
use std::time::Duration;

use crate::{engine::*, error::*, ffi::*, panic::*};

/// A subscription to lifecycle events.
pub struct tc_subscription {
    pub(crate) sub: tasker_core::Subscription,
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
            let sub = e.engine()?.subscribe(pattern)?;
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
        boundary_void(|| drop(unsafe { Box::from_raw(sub) }));
    }
}
