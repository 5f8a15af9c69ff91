//! Arguments across the boundary: C strings, JSON, ids, handles; strings handed out; the runtime.

use std::ffi::{c_char, CStr, CString};
use std::sync::Arc;

use serde_json::Value;
use tasker_core::TaskId;
use tokio::runtime::Runtime;

use crate::error::*;

/// A required string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for the call.
pub(crate) unsafe fn text<'a>(p: *const c_char, what: &str) -> Res<&'a str> {
    if p.is_null() {
        return Err(Fail::new(TC_ERR_NULL, format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let bytes = unsafe { CStr::from_ptr(p) };
    bytes
        .to_str()
        .map_err(|e| Fail::new(TC_ERR_UTF8, format!("{what} is not UTF-8: {e}")))
}

/// An optional string argument (NULL = none).
///
/// # Safety
/// As [`text`].
pub(crate) unsafe fn opt_text<'a>(p: *const c_char, what: &str) -> Res<Option<&'a str>> {
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
pub(crate) unsafe fn json(p: *const c_char, what: &str) -> Res<Value> {
    // SAFETY: forwarded contract.
    let s = unsafe { text(p, what) }?;
    serde_json::from_str(s)
        .map_err(|e| Fail::new(TC_ERR_JSON, format!("{what} is not valid JSON: {e}")))
}

pub(crate) fn task_id(s: &str) -> Res<TaskId> {
    s.parse()
        .map_err(|e: tasker_core::ids::InvalidId| Fail::new(TC_ERR_INVALID_ARGUMENT, e.to_string()))
}

/// A string for the caller to free with `tc_string_free`.
pub(crate) fn out_string(s: String) -> *mut c_char {
    c_string(s).into_raw()
}

/// `s` as a C string, a NUL inside written as `\u0000` (JSON's spelling of it).
pub(crate) fn c_string(s: String) -> CString {
    CString::new(s.replace('\0', "\\u0000")).unwrap_or_default()
}

pub(crate) fn json_out<T: serde::Serialize>(value: &T) -> Res<*mut c_char> {
    serde_json::to_string(value)
        .map(out_string)
        .map_err(|e| Fail::new(TC_ERR_STORE, format!("cannot encode JSON: {e}")))
}

pub(crate) fn runtime() -> Res<Arc<Runtime>> {
    tasker_core::host::runtime().map_err(Fail::from)
}

/// Borrows a handle argument.
///
/// # Safety
/// `p` is NULL or a live handle of this type.
pub(crate) unsafe fn handle<'a, T>(p: *const T, what: &str) -> Res<&'a T> {
    // SAFETY: NULL or live by the caller's contract.
    unsafe { p.as_ref() }.ok_or_else(|| Fail::new(TC_ERR_NULL, format!("{what} is NULL")))
}
