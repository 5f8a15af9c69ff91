//! Status codes, the thread-local message of the last failure, and the library's static strings.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, CStr, CString};
use std::ptr;

use tasker_core::error::ErrorKind;
use tasker_core::Error;

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
    /// tc_create_task with an idempotency key seen before, for another context or version.
    TC_ERR_CONFLICT = -12,
}

pub(crate) use tc_status::*;

/// A failure on its way out: the status and the message for `tc_last_error_message`.
pub(crate) struct Fail {
    pub(crate) status: tc_status,
    pub(crate) message: String,
    /// How the store failed, for a store failure (`tc_last_error_kind`).
    pub(crate) kind: Option<&'static CStr>,
}

impl Fail {
    /// A failure with `status` and `message`, not of the store.
    pub(crate) fn new(status: tc_status, message: String) -> Fail {
        Fail {
            status,
            message,
            kind: None,
        }
    }
}

pub(crate) type Res<T> = Result<T, Fail>;

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        let status = match (&e, e.kind()) {
            (Error::ClaimLost { .. }, _) => TC_ERR_CLAIM_LOST,
            (Error::IdempotencyConflict { .. }, _) => TC_ERR_CONFLICT,
            (Error::Closed, _) => TC_ERR_CLOSED,
            (_, ErrorKind::Template) => TC_ERR_TEMPLATE,
            (_, ErrorKind::NotFound) => TC_ERR_NOT_FOUND,
            (_, ErrorKind::InvalidTransition) => TC_ERR_INVALID_TRANSITION,
            (_, ErrorKind::InvalidArgument) => TC_ERR_INVALID_ARGUMENT,
            (_, ErrorKind::Store) => TC_ERR_STORE,
        };
        Fail {
            status,
            message: e.to_string(),
            kind: e.store_kind().map(kind_name),
        }
    }
}

/// A store failure's kind as a static C string.
fn kind_name(kind: &str) -> &'static CStr {
    match kind {
        "unavailable" => c"unavailable",
        "timeout" => c"timeout",
        "conflict" => c"conflict",
        "corrupt" => c"corrupt",
        "closed" => c"closed",
        _ => c"other",
    }
}

thread_local! {
    /// The kind of the last failure on this thread, when it was a store failure.
    static LAST_KIND: Cell<Option<&'static CStr>> = const { Cell::new(None) };
}

/// The last failure's store kind (cleared by every new message: set after it).
pub(crate) fn set_last_kind(kind: Option<&'static CStr>) {
    LAST_KIND.with(|k| k.set(kind));
}

/// How the last failure on this thread's store failed, when it was `TC_ERR_STORE` or
/// `TC_ERR_CLOSED`: "unavailable" (the database cannot be reached or the connection was lost;
/// a retry may succeed), "timeout" (a statement, a lock wait or the wait for a connection ran
/// out of time), "conflict" (a unique key taken concurrently, a serialization failure, a
/// deadlock), "corrupt" (stored rows cannot be read), "other", or "closed" (the engine was
/// closed). NULL after any other failure, or none. A static string: never free it.
#[no_mangle]
pub extern "C" fn tc_last_error_kind() -> *const c_char {
    LAST_KIND.with(|k| k.get().map_or(ptr::null(), CStr::as_ptr))
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

pub(crate) fn set_last_error(message: String) {
    // A kind, if the failure has one, is set after the message.
    LAST_KIND.with(|k| k.set(None));
    let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|slot| *slot.borrow_mut() = Some(message));
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

/// The name of a status, e.g. "TC_ERR_NOT_FOUND"; "TC_UNKNOWN" for a number that is no
/// status. Takes an `int`, not the enum: any number a caller passes is defined behaviour. A
/// static string: never free it.
#[no_mangle]
pub extern "C" fn tc_status_name(status: c_int) -> *const c_char {
    const NAMES: [(tc_status, &CStr); 13] = [
        (TC_OK, c"TC_OK"),
        (TC_ERR_TEMPLATE, c"TC_ERR_TEMPLATE"),
        (TC_ERR_NOT_FOUND, c"TC_ERR_NOT_FOUND"),
        (TC_ERR_INVALID_TRANSITION, c"TC_ERR_INVALID_TRANSITION"),
        (TC_ERR_CLAIM_LOST, c"TC_ERR_CLAIM_LOST"),
        (TC_ERR_STORE, c"TC_ERR_STORE"),
        (TC_ERR_INVALID_ARGUMENT, c"TC_ERR_INVALID_ARGUMENT"),
        (TC_ERR_NULL, c"TC_ERR_NULL"),
        (TC_ERR_UTF8, c"TC_ERR_UTF8"),
        (TC_ERR_JSON, c"TC_ERR_JSON"),
        (TC_ERR_CLOSED, c"TC_ERR_CLOSED"),
        (TC_ERR_PANIC, c"TC_ERR_PANIC"),
        (TC_ERR_CONFLICT, c"TC_ERR_CONFLICT"),
    ];
    NAMES
        .iter()
        .find(|(s, _)| *s as c_int == status)
        .map_or(c"TC_UNKNOWN", |(_, name)| name)
        .as_ptr()
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
