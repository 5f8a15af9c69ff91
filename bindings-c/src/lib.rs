//! The C ABI of Tasker Core. Thin by design: argument checks (NULL, UTF-8, JSON), error
//! mapping to [`tc_status`] plus a thread-local message, handle lifetimes, and a panic boundary
//! around every export. The header `include/tasker_core.h` is generated from these files by
//! cbindgen (`bindings-c/cbindgen.toml`); `tests/header.rs` fails when it drifts.

#![allow(non_camel_case_types)]
#![deny(unsafe_op_in_unsafe_fn)]

mod claim;
mod engine;
mod error;
mod ffi;
mod panic;
mod step;
mod subscription;
mod worker;

#[cfg(test)]
mod fuzz;

pub use claim::*;
pub use engine::*;
pub use error::*;
pub use step::*;
pub use subscription::*;
pub use worker::*;
