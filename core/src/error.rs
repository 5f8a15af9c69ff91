//! The one error type of the crate's public API.
//!
//! Bindings map its variants once: to a Python exception hierarchy, Ruby exception classes and
//! C status codes (see [`Error::kind`]).

use crate::ids::{InvalidId, StepId, TaskId};
use crate::state::InvalidTransition;
use crate::template::TemplateError;

/// Everything that can go wrong in a call to the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A template was malformed or invalid.
    #[error("invalid template: {0}")]
    Template(#[from] TemplateError),
    /// No template has that namespace, name (and version).
    #[error("no template {namespace}/{name}{}", version.as_ref().map(|v| format!(" version {v}")).unwrap_or_default())]
    TemplateNotFound {
        /// The namespace asked for.
        namespace: String,
        /// The name asked for.
        name: String,
        /// The version asked for, if any.
        version: Option<String>,
    },
    /// A template with this namespace, name and version exists with different content.
    #[error("template {namespace}/{name} version {version} is already registered with different content; register a new version")]
    TemplateConflict {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Version.
        version: String,
    },
    /// No task has that id.
    #[error("no task {0}")]
    TaskNotFound(TaskId),
    /// The task has no such step.
    #[error("task {task} has no step {step:?}")]
    StepNotFound {
        /// The task.
        task: TaskId,
        /// The step name or index asked for.
        step: String,
    },
    /// A string that should be an id is not one.
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    /// The state machine refused the operation.
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
    /// The caller no longer holds the claim it reports on: the lease expired and the step was
    /// given back (or the task was cancelled). The report is refused.
    #[error("step {step} attempt {attempt} is no longer held by this worker (lease expired, step reclaimed or task cancelled)")]
    ClaimLost {
        /// The step reported on.
        step: StepId,
        /// The attempt the report named.
        attempt: u32,
    },
    /// An argument was malformed (a URL, JSON, a pattern, a limit).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A task's context breaks its template's `input_schema`: each failing place (a JSON
    /// pointer, `""` for the whole context) with what is wrong there.
    #[error("invalid context for {template}: {}", failures.iter().map(|(path, why)| format!("{}: {why}", if path.is_empty() { "(the context)" } else { path })).collect::<Vec<_>>().join("; "))]
    InvalidContext {
        /// `namespace/name` of the template.
        template: String,
        /// Each failing path with why.
        failures: Vec<(String, String)>,
    },
    /// `create_task` with an idempotency key seen before, for another context or version.
    #[error("the idempotency key {key:?} belongs to task {task}, created with another context or version")]
    IdempotencyConflict {
        /// The key.
        key: String,
        /// The task created with it.
        task: TaskId,
    },
    /// The storage backend failed; [`StoreError::kind`] says how.
    #[error("store error: {0}")]
    Store(StoreError),
    /// The engine was closed.
    #[error("the engine is closed")]
    Closed,
}

/// How a store failed, kept from the database driver's own error so that callers can tell a
/// lost connection (worth a retry) from a constraint or from rows that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreErrorKind {
    /// The database could not be reached or the connection was lost; a retry may succeed.
    Unavailable,
    /// A statement, a lock wait or the wait for a pooled connection ran out of time.
    Timeout,
    /// A constraint refused a write: a unique key taken by a concurrent writer, a
    /// serialization failure or a deadlock.
    Conflict,
    /// Stored rows could not be read: corrupt JSON, a state no version knows, a template gone.
    Corrupt,
    /// Anything else the store reported.
    Other,
}

impl StoreErrorKind {
    /// The kind's name: `unavailable`, `timeout`, `conflict`, `corrupt` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreErrorKind::Unavailable => "unavailable",
            StoreErrorKind::Timeout => "timeout",
            StoreErrorKind::Conflict => "conflict",
            StoreErrorKind::Corrupt => "corrupt",
            StoreErrorKind::Other => "other",
        }
    }
}

/// A failure of the storage backend: its [`StoreErrorKind`] and the driver's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    /// How the store failed.
    pub kind: StoreErrorKind,
    /// What the store said.
    pub message: String,
}

/// The coarse kind of an [`Error`], for mapping to other languages' error types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// [`Error::Template`], [`Error::TemplateConflict`].
    Template,
    /// [`Error::TemplateNotFound`], [`Error::TaskNotFound`], [`Error::StepNotFound`].
    NotFound,
    /// [`Error::InvalidTransition`], [`Error::ClaimLost`].
    InvalidTransition,
    /// [`Error::InvalidArgument`], [`Error::InvalidId`].
    InvalidArgument,
    /// [`Error::Store`], [`Error::Closed`].
    Store,
}

impl Error {
    /// [`Error::TemplateNotFound`] for `namespace/name` at `version` (any version when `None`).
    pub fn template_not_found(namespace: &str, name: &str, version: Option<String>) -> Error {
        Error::TemplateNotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            version,
        }
    }

    /// [`Error::Store`] of `kind` with `message`.
    pub fn store(kind: StoreErrorKind, message: impl Into<String>) -> Error {
        Error::Store(StoreError {
            kind,
            message: message.into(),
        })
    }

    /// For a store failure ([`ErrorKind::Store`]), how it failed as the bindings name it: the
    /// [`StoreErrorKind`]'s name, or `closed` for [`Error::Closed`].
    pub fn store_kind(&self) -> Option<&'static str> {
        match self {
            Error::Store(e) => Some(e.kind.as_str()),
            Error::Closed => Some("closed"),
            _ => None,
        }
    }

    /// The coarse kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Template(_) | Error::TemplateConflict { .. } => ErrorKind::Template,
            Error::TemplateNotFound { .. }
            | Error::TaskNotFound(_)
            | Error::StepNotFound { .. } => ErrorKind::NotFound,
            Error::InvalidTransition(_) | Error::ClaimLost { .. } => ErrorKind::InvalidTransition,
            Error::InvalidArgument(_)
            | Error::InvalidContext { .. }
            | Error::InvalidId(_)
            | Error::IdempotencyConflict { .. } => ErrorKind::InvalidArgument,
            Error::Store(_) | Error::Closed => ErrorKind::Store,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
