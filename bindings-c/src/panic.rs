//! The panic boundary around every export, and out-pointer handling.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use crate::error::*;

/// Runs `body` behind the panic boundary and turns its result into a status.
pub(crate) fn boundary(body: impl FnOnce() -> Res<()>) -> tc_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => TC_OK,
        Ok(Err(Fail {
            status,
            message,
            kind,
        })) => {
            set_last_error(message);
            set_last_kind(kind);
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

/// Runs a function without a status (the frees) behind the panic boundary: a panic is caught
/// and left in tc_last_error_message.
pub(crate) fn boundary_void(body: impl FnOnce()) {
    let _ = boundary(|| {
        body();
        Ok(())
    });
}

/// Clears `*out` (so it is NULL on failure) and hands it to `body` to fill on success.
///
/// # Safety
/// `out` is NULL or valid for writes.
pub(crate) unsafe fn with_out<T>(
    out: *mut *mut T,
    body: impl FnOnce() -> Res<*mut T>,
) -> tc_status {
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
