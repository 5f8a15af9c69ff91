//! Property-based fuzzing of the JSON and text that cross the C ABI (a unit test: the C
//! library's crate has no Rust library to link an integration test against) (proptest, stable Rust):
//! arbitrary bytes as a template, a context or a result never panic (no TC_ERR_PANIC), and
//! are either accepted or refused with a typed status and a message.

use std::ffi::{c_char, CStr, CString};
use std::ptr;

use crate::*;
use proptest::prelude::*;

fn cstring(bytes: &[u8]) -> CString {
    CString::new(
        bytes
            .iter()
            .copied()
            .filter(|&b| b != 0)
            .collect::<Vec<u8>>(),
    )
    .expect("no NUL left")
}

fn message() -> String {
    let m = tc_last_error_message();
    assert!(!m.is_null(), "a failure leaves a message");
    // SAFETY: a NUL-terminated string owned by the library until the next call.
    unsafe { CStr::from_ptr(m) }.to_string_lossy().into_owned()
}

/// Bytes that look like JSON more often than random ones do.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        prop::collection::vec(
            prop::sample::select(b"{}[]\":,0123456789.eE+-truefalsnl \\u\xc3\xa9".to_vec()),
            0..200
        ),
    ]
}

struct Engine(*mut tc_engine);

impl Engine {
    fn open() -> Engine {
        let mut e = ptr::null_mut();
        // SAFETY: a valid URL and out pointer.
        assert_eq!(
            unsafe { tc_engine_open(c"memory:".as_ptr(), &mut e) },
            tc_status::TC_OK
        );
        let template = c"namespace: f\nname: t\nversion: 1.0.0\nsteps: [{name: a}]\n";
        // SAFETY: a live engine and a NUL-terminated template.
        assert_eq!(
            unsafe { tc_register_template(e, template.as_ptr()) },
            tc_status::TC_OK
        );
        Engine(e)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // SAFETY: opened above, closed once.
        unsafe { tc_engine_close(self.0) };
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_templates_and_contexts_never_panic(template in jsonish(), context in jsonish()) {
        let e = Engine::open();
        let template = cstring(&template);
        // SAFETY: a live engine and NUL-terminated text.
        let status = unsafe { tc_register_template(e.0, template.as_ptr()) };
        prop_assert_ne!(status, tc_status::TC_ERR_PANIC);
        if status != tc_status::TC_OK {
            prop_assert!(!message().is_empty());
        }
        let context = cstring(&context);
        let mut id: *mut c_char = ptr::null_mut();
        // SAFETY: a live engine, NUL-terminated strings, NULL for the optional ones.
        let status = unsafe {
            tc_create_task_ex(e.0, c"f".as_ptr(), c"t".as_ptr(), context.as_ptr(), ptr::null(),
                ptr::null(), 0, &mut id)
        };
        prop_assert_ne!(status, tc_status::TC_ERR_PANIC);
        if status == tc_status::TC_OK {
            prop_assert!(!id.is_null());
            // SAFETY: a string from the library.
            unsafe { tc_string_free(id) };
        } else {
            prop_assert!(id.is_null());
            prop_assert!(
                matches!(status, tc_status::TC_ERR_JSON | tc_status::TC_ERR_UTF8
                    | tc_status::TC_ERR_INVALID_ARGUMENT),
                "{status:?}: {}", message());
        }
    }

    #[test]
    fn arbitrary_results_never_panic(result in jsonish()) {
        let e = Engine::open();
        let mut id: *mut c_char = ptr::null_mut();
        // SAFETY: as above.
        let status = unsafe {
            tc_create_task(e.0, c"f".as_ptr(), c"t".as_ptr(), ptr::null(), &mut id)
        };
        prop_assert_eq!(status, tc_status::TC_OK);
        // SAFETY: a string from the library.
        unsafe { tc_string_free(id) };
        let mut batch = ptr::null_mut();
        // SAFETY: a live engine; no handler filter.
        let status = unsafe { tc_claim(e.0, c"fuzz".as_ptr(), ptr::null(), 0, 1, 0, &mut batch) };
        prop_assert_eq!(status, tc_status::TC_OK);
        // SAFETY: a live batch.
        let step = unsafe { tc_claim_batch_get(batch, 0) };
        prop_assert!(!step.is_null());
        let result = cstring(&result);
        // SAFETY: a live step and a NUL-terminated string.
        let status = unsafe { tc_step_complete(step, result.as_ptr()) };
        prop_assert_ne!(status, tc_status::TC_ERR_PANIC);
        if status != tc_status::TC_OK {
            prop_assert!(matches!(status, tc_status::TC_ERR_JSON | tc_status::TC_ERR_UTF8),
                "{status:?}: {}", message());
        }
        // SAFETY: the batch, freed once.
        unsafe { tc_claim_batch_free(batch) };
    }
}
