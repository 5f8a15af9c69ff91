//! Task templates: the DAG of steps as written (YAML, JSON or a JSON value), its validation, and
//! the immutable [`TaskGraph`] it compiles into.
//!
//! A [`TaskTemplate`] is plain data that mirrors the document a user writes. [`TaskTemplate::compile`]
//! checks it (names, sizes, semver version, retry policies, timeouts, dependencies, cycles) and
//! resolves every step's handler, retry policy and timeout against the template-wide defaults.
//! The resulting [`TaskGraph`] stores parents and children as compact adjacency arrays and a
//! topological order, so that readiness checks never touch a hash map or allocate.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::retry::RetryPolicy;

pub mod builder;
mod compile;
pub mod events;
pub mod foreign;
mod graph;

pub use builder::{StepBuilder, TemplateBuilder};
pub use events::{DeclaredEvents, EventDecl};
pub use foreign::{Format, Loaded};
pub use graph::{output_refusal, BatchPlan, Edge, Reported, StepSpec, TaskGraph};

/// The most steps a template may have.
pub const MAX_STEPS: usize = 10_000;
/// The longest namespace, template name, step name or handler name, in characters.
pub const MAX_NAME_LEN: usize = 200;
/// The most dependencies a single step may list.
pub const MAX_DEPENDENCIES: usize = 1_000;
/// A step's timeout when neither the step nor the template defaults name one (5 minutes).
pub const DEFAULT_TIMEOUT_MS: u64 = 300_000;
/// The longest timeout a step may have (7 days); anything longer is taken for a mistake.
pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 60 * 60 * 1_000;
/// The longest lease a step gets when it names none: its lease is `min(timeout_ms, 30 s)`.
pub const DEFAULT_LEASE_MS: u64 = 30_000;

/// A task template as written: a namespace, a name, a semver version and a list of steps.
///
/// Unknown fields are refused, so that a typo such as `depend_on` is an error rather than a
/// silently missing dependency. Nothing is checked beyond the shape of the document until
/// [`TaskTemplate::compile`].
///
/// ```
/// use tasker_core::template::TaskTemplate;
///
/// let template = TaskTemplate::parse(
///     r#"
/// namespace: shop
/// name: fulfil_order
/// version: 1.0.0
/// steps:
///   - name: validate
///   - name: charge
///     depends_on: [validate]
/// "#,
/// )?;
/// assert_eq!(template.steps.len(), 2);
/// # Ok::<(), tasker_core::template::TemplateError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskTemplate {
    /// The group the template belongs to, e.g. `shop`.
    pub namespace: String,
    /// The template's name within its namespace, e.g. `fulfil_order`.
    pub name: String,
    /// A semantic version such as `1.0.0`; checked by [`TaskTemplate::compile`].
    pub version: String,
    /// What the template does, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Template-wide defaults for the steps' retry policy and timeout.
    #[serde(default, skip_serializing_if = "StepDefaults::is_empty")]
    pub defaults: StepDefaults,
    /// A JSON Schema (draft 7 or 2020-12, as its `$schema` says; 2020-12 when it says none)
    /// that every task's context must satisfy: `create_task` refuses one that does not,
    /// naming each failing path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<serde_json::Value>,
    /// Custom events every step of the template may publish (see [`events`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventDecl>,
    /// How long a task may take, in milliseconds from its start (its `run_at`, else its
    /// creation): a task not finished by then goes to `error` ("deadline exceeded"), its
    /// running steps' reports refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// At most `limit` tasks of this template with the same key in progress at once, across
    /// every worker of the store (a task holds its key from its first claim until it
    /// finishes): `{key: "customer:{{context.customer_id}}", limit: 1}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<crate::gate::ConcurrencySpec>,
    /// Where its tasks' lifecycle events are POSTed (see [`crate::webhooks`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<crate::webhooks::WebhookSpec>,
    /// The steps, in the order written; a compiled step's index is its position here.
    pub steps: Vec<StepTemplate>,
}

/// Template-wide defaults for every step that does not set its own value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StepDefaults {
    /// The retry policy of steps without their own `retry`. A step's `retry` replaces this
    /// policy whole: the fields it omits take [`RetryPolicy::default`] values, not these.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// The timeout of steps without their own `timeout_ms`, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The lease of steps without their own `lease_ms`, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
}

impl StepDefaults {
    /// Whether no default is set (then the built-in defaults apply).
    pub fn is_empty(&self) -> bool {
        self.retry.is_none() && self.timeout_ms.is_none() && self.lease_ms.is_none()
    }
}

/// One step of a template as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepTemplate {
    /// The step's name, unique within the template.
    pub name: String,
    /// The name of the handler a worker registers for this step; defaults to the step's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// What the step does, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The steps that must finish before this one may run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
    /// This step's retry policy; replaces the template default whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// The longest one attempt may run, in milliseconds; past it the attempt fails as
    /// retryable ("timed out").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The length of a claim's lease, in milliseconds (default `min(timeout_ms, 30000)`). The
    /// worker renews it while the handler runs, so another worker gets the step only about
    /// `lease_ms` after its holder's process is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    /// Any JSON object, handed to the step's handler as `step.config` (Rails Tasker's
    /// `handler_config`, tasker-core's `handler.initialization`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Map<String, serde_json::Value>>,
    /// Custom events this step may publish besides its template's (see [`events`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventDecl>,
    /// What kind of step it is (`type` in the document): a plain step, a decision that
    /// chooses which of its dependents run, or a convergence that waits for the chosen ones.
    #[serde(
        default,
        rename = "type",
        skip_serializing_if = "StepKind::is_standard"
    )]
    pub kind: StepKind,
    /// For a `batchable` step: the `batch_worker` step run once per slice of what its handler
    /// returns, the slice size, how many slices run at once, and what a failed slice does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSpec>,
    /// At most `limit` steps with the same key in progress at once, across every worker of
    /// the store: `{key: "customer:{{context.customer_id}}", limit: 1}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<crate::gate::ConcurrencySpec>,
    /// Claims start steps with this key at most at this rate, across every worker of the
    /// store: `{key: "stripe", limit: 100, per_ms: 1000}` (see [`crate::gate`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<crate::gate::RateLimitSpec>,
}

/// A `batchable` step's `batch`: `{worker, size, parallelism, on_failure}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// The `batch_worker` step (depending on this one) run once per slice.
    pub worker: String,
    /// Items per slice (1 … [`MAX_BATCH_SIZE`]; default 100).
    #[serde(default = "BatchSpec::default_size")]
    pub size: u64,
    /// How many slices may run at once (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// What a slice that failed for good does (default `fail_fast`).
    #[serde(default)]
    pub on_failure: OnFailure,
}

impl BatchSpec {
    fn default_size() -> u64 {
        100
    }

    /// A batch run by `worker` in slices of `size` items, all at once, failing fast.
    pub fn new(worker: impl Into<String>, size: u64) -> Self {
        BatchSpec {
            worker: worker.into(),
            size,
            parallelism: None,
            on_failure: OnFailure::FailFast,
        }
    }
}

/// What a slice of a batch that failed for good does to the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// The slices not started are skipped and the worker step fails at once (its dependents
    /// are skipped as after any failure).
    #[default]
    FailFast,
    /// The other slices run; the worker step completes once all have finished, the failed
    /// slices' results `null` in its dependents' input, and the task ends in `error`.
    Continue,
}

/// The most items one slice of a batch may take.
pub const MAX_BATCH_SIZE: u64 = 1_000_000;
/// The most slices one batch may make (one step instance each).
pub const MAX_SLICES: usize = 10_000;

/// A step's `type`.
///
/// * `standard` (the default): runs once its parents allow it.
/// * `decision`: its handler returns a decision naming which of the steps that depend on it
///   run; the others are skipped with the reason "not chosen", and so are the steps that
///   require one of those.
/// * `deferred_convergence`: runs once each of its dependencies has completed or was not
///   chosen; a chosen dependency that failed skips it as usual.
/// * `batchable`: its handler returns a batch (items, or a total); the engine runs its
///   `batch.worker` step once per slice.
/// * `batch_worker`: never handed out itself: its instances are, one per slice, and it finishes
///   when they have (its dependents get the list of their results, in slice order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// A plain step.
    #[default]
    Standard,
    /// Chooses which of its dependents run.
    Decision,
    /// Runs once every dependency has completed or was not chosen.
    DeferredConvergence,
    /// Returns a batch (items or a total): its `batch.worker` step runs once per slice.
    Batchable,
    /// Runs once per slice of its batchable parent's batch, as instances `name[0]`, `name[1]`…
    BatchWorker,
}

impl StepKind {
    /// Whether this is the default kind (left out when a template is written back).
    pub fn is_standard(&self) -> bool {
        *self == StepKind::Standard
    }

    /// The name written in templates.
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Standard => "standard",
            StepKind::Decision => "decision",
            StepKind::DeferredConvergence => "deferred_convergence",
            StepKind::Batchable => "batchable",
            StepKind::BatchWorker => "batch_worker",
        }
    }
}

/// One entry of a step's `depends_on`: a plain step name, or
/// `{ step: name, requires_success: bool }`.
///
/// `requires_success` defaults to `true`: the step runs only if its parent succeeded. With
/// `false` the step runs once the parent has finished, whether it succeeded or failed for good.
///
/// It serializes untagged (a string, or a map). Deserialization accepts the same two forms and
/// names the offending field when a map is wrong (unknown or missing key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Dependency {
    /// `depends_on: [validate]`: the parent must have succeeded.
    Name(String),
    /// `depends_on: [{ step: ship, requires_success: false }]`.
    Edge {
        /// The parent step's name.
        step: String,
        /// Whether the parent must have succeeded (`true`) or merely finished (`false`).
        requires_success: bool,
    },
}

impl Dependency {
    /// The parent step's name.
    pub fn step(&self) -> &str {
        match self {
            Dependency::Name(step) | Dependency::Edge { step, .. } => step,
        }
    }

    /// Whether the parent must have succeeded for this step to run.
    pub fn requires_success(&self) -> bool {
        match self {
            Dependency::Name(_) => true,
            Dependency::Edge {
                requires_success, ..
            } => *requires_success,
        }
    }
}

impl<'de> Deserialize<'de> for Dependency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(field_identifier, rename_all = "snake_case")]
        enum Field {
            Step,
            RequiresSuccess,
        }

        struct DependencyVisitor;

        impl<'de> Visitor<'de> for DependencyVisitor {
            type Value = Dependency;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a step name or a map { step: <name>, requires_success: <bool> }")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Dependency, E> {
                Ok(Dependency::Name(value.to_owned()))
            }

            fn visit_string<E: de::Error>(self, value: String) -> Result<Dependency, E> {
                Ok(Dependency::Name(value))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Dependency, A::Error> {
                let mut step: Option<String> = None;
                let mut requires_success: Option<bool> = None;
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::Step => {
                            if step.is_some() {
                                return Err(de::Error::duplicate_field("step"));
                            }
                            step = Some(map.next_value()?);
                        }
                        Field::RequiresSuccess => {
                            if requires_success.is_some() {
                                return Err(de::Error::duplicate_field("requires_success"));
                            }
                            requires_success = Some(map.next_value()?);
                        }
                    }
                }
                let step = step.ok_or_else(|| de::Error::missing_field("step"))?;
                Ok(Dependency::Edge {
                    step,
                    requires_success: requires_success.unwrap_or(true),
                })
            }
        }

        deserializer.deserialize_any(DependencyVisitor)
    }
}

/// Why a template was refused. Every variant names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The document is not valid YAML or JSON, or does not have the template's shape (a missing
    /// or unknown field, a wrong type). `message` carries the line and column when known.
    #[error("invalid {format} template: {message}")]
    Parse {
        /// `"yaml"`, `"json"` or `"value"` (a `serde_json::Value`).
        format: &'static str,
        /// The parser's description of the problem.
        message: String,
    },
    /// A namespace, template name, step name or handler name is empty or blank.
    #[error("the {field} must not be empty")]
    EmptyName {
        /// `"namespace"`, `"name"`, `"step name"` or `"handler"`.
        field: &'static str,
    },
    /// A name is longer than [`MAX_NAME_LEN`] characters.
    #[error("the {field} {} is longer than {limit} characters", shorten(name))]
    NameTooLong {
        /// `"namespace"`, `"name"`, `"step name"` or `"handler"`.
        field: &'static str,
        /// The offending name, in full.
        name: String,
        /// The limit, in characters.
        limit: usize,
    },
    /// A name holds a control character (a NUL, a line break, a tab, …): names are kept in
    /// text columns (PostgreSQL's cannot hold a NUL), metric labels and page titles.
    #[error(
        "the {field} {} holds a control character (NUL, line break, tab, …)",
        shorten(name)
    )]
    NameWithControl {
        /// `"namespace"`, `"name"`, `"step name"` or `"handler"`.
        field: &'static str,
        /// The offending name, in full.
        name: String,
    },
    /// The version is not a semantic version such as `1.0.0`.
    #[error("version {version:?} is not a semantic version such as 1.0.0: {message}")]
    InvalidVersion {
        /// The version as written.
        version: String,
        /// What the semver parser found wrong.
        message: String,
    },
    /// The template has no steps.
    #[error("template {template:?} has no steps")]
    EmptySteps {
        /// `"namespace/name"`.
        template: String,
    },
    /// The template has more than [`MAX_STEPS`] steps.
    #[error("the template has {count} steps; the limit is {limit}")]
    TooManySteps {
        /// How many steps the template has.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A step lists more than [`MAX_DEPENDENCIES`] dependencies.
    #[error("step {step:?} has {count} dependencies; the limit is {limit}")]
    TooManyDependencies {
        /// The step's name.
        step: String,
        /// How many dependencies it lists.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// Two steps have the same name.
    #[error("step name {step:?} is used by more than one step")]
    DuplicateStep {
        /// The repeated name.
        step: String,
    },
    /// A step depends on a step the template does not have.
    #[error("step {step:?} depends on unknown step {dependency:?}")]
    UnknownDependency {
        /// The step whose `depends_on` is wrong.
        step: String,
        /// The name that matches no step.
        dependency: String,
    },
    /// A step lists the same dependency more than once.
    #[error("step {step:?} lists dependency {dependency:?} more than once")]
    DuplicateDependency {
        /// The step whose `depends_on` is wrong.
        step: String,
        /// The repeated dependency.
        dependency: String,
    },
    /// The dependencies form a cycle, so no step on it could ever run.
    ///
    /// `path` starts and ends with the same step, and each step in it is a dependency of the
    /// next one (work would flow left to right): `["a", "b", "c", "a"]` means `b` depends on
    /// `a`, `c` on `b` and `a` on `c`. A step that depends on itself gives `["a", "a"]`.
    #[error("cycle: {}", path.join(" -> "))]
    Cycle {
        /// The steps on the cycle, the first repeated at the end.
        path: Vec<String>,
    },
    /// A `concurrency` or `rate_limit` cannot work (a zero limit, a key that is not a key
    /// template).
    #[error("{message}")]
    InvalidLimit {
        /// What is wrong, naming the step (or the template).
        message: String,
    },
    /// A webhook is invalid (no event, an event pattern matching none, a URL that is not http
    /// or https, a time limit or retry policy out of range); the message names it.
    #[error("{message}")]
    InvalidWebhook {
        /// What is wrong, naming the webhook by its position.
        message: String,
    },
    /// A step's retry policy (its own or the inherited default) cannot work.
    #[error("step {step:?} has an invalid retry policy: {message}")]
    InvalidRetry {
        /// The step's name.
        step: String,
        /// What is wrong with the policy.
        message: String,
    },
    /// A step's timeout (its own or the inherited default) is zero or longer than 7 days.
    #[error(
        "step {step:?} has an invalid timeout of {timeout_ms} ms: it must be between 1 ms and 7 days ({MAX_TIMEOUT_MS} ms)"
    )]
    InvalidTimeout {
        /// The step's name.
        step: String,
        /// The timeout, in milliseconds.
        timeout_ms: u64,
    },
    /// A declared custom event is malformed: a bad or reserved name, declared twice, or a
    /// payload schema that is not a JSON Schema.
    #[error("{}custom event {event:?}: {message}", step.as_ref().map(|s| format!("step {s:?}: ")).unwrap_or_default())]
    InvalidEvent {
        /// The step that declares it (`None`: the template's own `events`).
        step: Option<String>,
        /// The event's name as written.
        event: String,
        /// What is wrong.
        message: String,
    },
    /// The template's `input_schema` is not a JSON Schema.
    #[error("the input_schema is not a valid JSON Schema: {message}")]
    InvalidSchema {
        /// What the schema compiler found wrong.
        message: String,
    },
    /// A step's `type` does not fit where it stands: a `deferred_convergence` step without
    /// dependencies, or a `decision` step that no step depends on.
    #[error("step {step:?} of type {kind}: {message}")]
    InvalidStepKind {
        /// The step's name.
        step: String,
        /// Its `type` as written.
        kind: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A step's lease (its own or the inherited default) is zero or longer than 7 days.
    #[error(
        "step {step:?} has an invalid lease of {lease_ms} ms: it must be between 1 ms and 7 days ({MAX_TIMEOUT_MS} ms)"
    )]
    InvalidLease {
        /// The step's name.
        step: String,
        /// The lease, in milliseconds.
        lease_ms: u64,
    },
}

/// A quoted name, cut short when it is too long to print whole.
fn shorten(name: &str) -> String {
    const SHOWN: usize = 40;
    match name.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{:?}…", &name[..end]),
        None => format!("{name:?}"),
    }
}

impl TaskTemplate {
    /// Reads a template from YAML.
    pub fn from_yaml(text: &str) -> Result<Self, TemplateError> {
        serde_norway::from_str(text).map_err(|e| TemplateError::Parse {
            format: "yaml",
            message: e.to_string(),
        })
    }

    /// Reads a template from JSON.
    pub fn from_json(text: &str) -> Result<Self, TemplateError> {
        serde_json::from_str(text).map_err(|e| TemplateError::Parse {
            format: "json",
            message: e.to_string(),
        })
    }

    /// Reads a template from JSON when its first non-blank character is `{`, and from YAML
    /// otherwise. A leading byte-order mark is ignored.
    ///
    /// (A YAML document written as a single flow mapping, `{namespace: …}`, is therefore read as
    /// JSON; write it in block style or as JSON.)
    ///
    /// ```
    /// use tasker_core::template::TaskTemplate;
    ///
    /// let yaml = TaskTemplate::parse("namespace: demo\nname: hello\nversion: 1.0.0\nsteps: [{name: greet}]")?;
    /// let json = TaskTemplate::parse(
    ///     r#"{"namespace": "demo", "name": "hello", "version": "1.0.0", "steps": [{"name": "greet"}]}"#,
    /// )?;
    /// assert_eq!(yaml, json);
    /// # Ok::<(), tasker_core::template::TemplateError>(())
    /// ```
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let json = text.trim_start().starts_with('{');
        check_text(text, if json { "json" } else { "yaml" })?;
        if json {
            Self::from_json(text)
        } else {
            Self::from_yaml(text)
        }
    }

    /// A template document (any format) read from YAML or JSON text into a JSON value, as
    /// [`TaskTemplate::parse`] reads the text, for [`foreign::load`].
    pub fn document(text: &str) -> Result<serde_json::Value, TemplateError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let json = text.trim_start().starts_with('{');
        let format = if json { "json" } else { "yaml" };
        check_text(text, format)?;
        let parsed = if json {
            serde_json::from_str(text).map_err(|e| e.to_string())
        } else {
            serde_norway::from_str(text).map_err(|e| e.to_string())
        };
        parsed.map_err(|message| TemplateError::Parse { format, message })
    }

    /// Reads a template from a JSON value (a Python dict or a Ruby Hash arrives as one).
    pub fn from_value(value: serde_json::Value) -> Result<Self, TemplateError> {
        serde_json::from_value(value).map_err(|e| TemplateError::Parse {
            format: "value",
            message: e.to_string(),
        })
    }
}

/// The most bytes a template's text may have.
pub const MAX_TEMPLATE_BYTES: usize = 1 << 20;

/// Refuses, before parsing, a text larger than [`MAX_TEMPLATE_BYTES`] or whose brackets and
/// braces nest deeper than a template can ([`crate::limits::MAX_JSON_DEPTH`] levels of
/// `config` inside the template's own few): the YAML parser takes time quadratic in such
/// nesting (a 400 KB text of brackets took minutes), which would stall whoever registers it.
fn check_text(text: &str, format: &'static str) -> Result<(), TemplateError> {
    let refuse = |message: String| TemplateError::Parse { format, message };
    if text.len() > MAX_TEMPLATE_BYTES {
        return Err(refuse(format!(
            "the text is {} bytes; a template may have at most {} KiB",
            text.len(),
            MAX_TEMPLATE_BYTES / 1024
        )));
    }
    let limit = crate::limits::MAX_JSON_DEPTH + 8;
    let (mut depth, mut quote, mut escaped, mut comment) = (0usize, None::<u8>, false, false);
    let mut previous = b'\n';
    for &b in text.as_bytes() {
        match (quote, b) {
            _ if comment => comment = b != b'\n',
            (Some(_), _) if escaped => escaped = false,
            (Some(b'"'), b'\\') => escaped = true,
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            // A quoted scalar starts a token (an apostrophe inside a word is plain text).
            (None, b'"' | b'\'') if b" \t\n[{,:".contains(&previous) => quote = Some(b),
            (None, b'#') if previous.is_ascii_whitespace() => comment = true,
            (None, b'[' | b'{') => {
                depth += 1;
                if depth > limit {
                    return Err(refuse(format!("it nests deeper than {limit} levels")));
                }
            }
            (None, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        previous = b;
    }
    Ok(())
}

impl FromStr for TaskTemplate {
    type Err = TemplateError;

    /// Same as [`TaskTemplate::parse`].
    fn from_str(text: &str) -> Result<Self, TemplateError> {
        Self::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The template from `shared/API.md`.
    const API_EXAMPLE: &str = r#"
namespace: shop
name: fulfil_order
version: 1.0.0               # semver string; create_task picks the newest when none is given
description: Validate, charge and ship an order
steps:
  - name: validate            # unique within the template
    handler: validate         # handler name a worker registers; defaults to the step's name
    timeout_ms: 30000         # a claimed step not completed or heartbeated by then is retried
  - name: charge
    depends_on: [validate]
    retry: { max_attempts: 5, backoff_base_ms: 200, backoff_max_ms: 60000, jitter: true }
  - name: reserve_stock
    depends_on: [validate]
  - name: ship
    depends_on: [charge, reserve_stock]
  - name: notify
    depends_on:
      - { step: ship, requires_success: false }   # runs once ship has finished, even if it failed
"#;

    fn compile_err(text: &str) -> TemplateError {
        TaskTemplate::parse(text)
            .expect("the document parses")
            .compile()
            .expect_err("the template is refused")
    }

    fn with_steps(steps: &str) -> String {
        format!("namespace: t\nname: g\nversion: 1.0.0\nsteps:\n{steps}")
    }

    fn step(name: &str, depends_on: &[&str]) -> StepTemplate {
        StepTemplate {
            name: name.to_owned(),
            handler: None,
            description: None,
            depends_on: depends_on
                .iter()
                .map(|d| Dependency::Name((*d).to_owned()))
                .collect(),
            retry: None,
            timeout_ms: None,
            lease_ms: None,
            config: None,
            events: Vec::new(),
            kind: StepKind::Standard,
            batch: None,
            concurrency: None,
            rate_limit: None,
        }
    }

    fn template(steps: Vec<StepTemplate>) -> TaskTemplate {
        TaskTemplate {
            deadline_ms: None,
            concurrency: None,
            webhooks: Vec::new(),
            namespace: "t".to_owned(),
            name: "g".to_owned(),
            version: "1.0.0".to_owned(),
            description: None,
            defaults: StepDefaults::default(),
            input_schema: None,
            events: Vec::new(),
            steps,
        }
    }

    fn names(graph: &TaskGraph, edges: &[Edge]) -> Vec<(String, bool)> {
        edges
            .iter()
            .map(|e| (graph.step(e.step).name.to_string(), e.requires_success))
            .collect()
    }

    fn assert_api_example_graph(graph: &TaskGraph) {
        assert_eq!(graph.namespace(), "shop");
        assert_eq!(graph.name(), "fulfil_order");
        assert_eq!(graph.version(), &semver::Version::new(1, 0, 0));
        assert_eq!(graph.len(), 5);
        assert!(!graph.is_empty());
        assert_eq!(graph.edge_count(), 5);
        let ix = |name: &str| graph.index_of(name).expect("step exists");
        assert_eq!(
            (0..5)
                .map(|i| graph.step(i).name.to_string())
                .collect::<Vec<_>>(),
            ["validate", "charge", "reserve_stock", "ship", "notify"]
        );
        assert_eq!(graph.index_of("pack"), None);
        assert_eq!(graph.roots().collect::<Vec<_>>(), [ix("validate")]);
        assert_eq!(graph.topological_order(), &[0, 1, 2, 3, 4]);

        assert_eq!(
            names(graph, graph.children(ix("validate"))),
            [
                ("charge".to_owned(), true),
                ("reserve_stock".to_owned(), true)
            ]
        );
        assert_eq!(
            names(graph, graph.parents(ix("ship"))),
            [
                ("charge".to_owned(), true),
                ("reserve_stock".to_owned(), true)
            ]
        );
        assert_eq!(
            names(graph, graph.parents(ix("notify"))),
            [("ship".to_owned(), false)]
        );
        assert_eq!(
            names(graph, graph.children(ix("ship"))),
            [("notify".to_owned(), false)]
        );
        assert!(graph.children(ix("notify")).is_empty());

        let validate = graph.step(ix("validate"));
        assert_eq!(&*validate.handler, "validate");
        assert_eq!(validate.timeout_ms, 30_000);
        let charge = graph.step(ix("charge"));
        assert_eq!(&*charge.handler, "charge", "handler defaults to the name");
        assert_eq!(
            charge.retry,
            RetryPolicy {
                max_attempts: 5,
                backoff_base_ms: 200,
                backoff_max_ms: 60_000,
                jitter: true,
                backoff: crate::retry::Backoff::Exponential,
            }
        );
    }

    #[test]
    fn api_example_yaml_compiles_into_the_expected_graph() {
        let template = TaskTemplate::from_yaml(API_EXAMPLE).unwrap();
        assert_eq!(
            template.description.as_deref(),
            Some("Validate, charge and ship an order")
        );
        let graph = template.compile().unwrap();
        assert_api_example_graph(&graph);
        assert_eq!(graph.step(4).retry, RetryPolicy::default());
        assert_eq!(graph.step(1).timeout_ms, DEFAULT_TIMEOUT_MS);
        assert_eq!(graph.template(), &template);
    }

    #[test]
    fn steps_inherit_template_defaults_unless_they_set_their_own() {
        let text = API_EXAMPLE.replace(
            "steps:\n",
            "defaults:\n  retry: { max_attempts: 7, jitter: false }\n  timeout_ms: 45000\nsteps:\n",
        );
        let graph = TaskTemplate::parse(&text).unwrap().compile().unwrap();
        assert_api_example_graph(&graph);
        let notify = graph.step(graph.index_of("notify").unwrap());
        assert_eq!(
            notify.retry,
            RetryPolicy {
                max_attempts: 7,
                jitter: false,
                ..RetryPolicy::default()
            }
        );
        assert_eq!(notify.timeout_ms, 45_000);
        // A step's own values win, and its retry replaces the default whole.
        let validate = graph.step(graph.index_of("validate").unwrap());
        assert_eq!(validate.timeout_ms, 30_000);
        assert_eq!(validate.retry.max_attempts, 7);
        let charge = graph.step(graph.index_of("charge").unwrap());
        assert_eq!(charge.retry.max_attempts, 5);
        assert!(charge.retry.jitter);
    }

    #[test]
    fn a_partial_step_retry_fills_the_rest_from_the_built_in_policy() {
        let text = with_steps("  - name: a\n    retry: { max_attempts: 9 }\n").replace(
            "steps:",
            "defaults: { retry: { backoff_base_ms: 5 } }\nsteps:",
        );
        let graph = TaskTemplate::parse(&text).unwrap().compile().unwrap();
        assert_eq!(
            graph.step(0).retry,
            RetryPolicy {
                max_attempts: 9,
                ..RetryPolicy::default()
            }
        );
    }

    #[test]
    fn api_example_as_json_compiles_into_the_same_graph() {
        let json = r#"
        {
          "namespace": "shop", "name": "fulfil_order", "version": "1.0.0",
          "description": "Validate, charge and ship an order",
          "steps": [
            { "name": "validate", "handler": "validate", "timeout_ms": 30000 },
            { "name": "charge", "depends_on": ["validate"],
              "retry": { "max_attempts": 5, "backoff_base_ms": 200, "backoff_max_ms": 60000, "jitter": true } },
            { "name": "reserve_stock", "depends_on": ["validate"] },
            { "name": "ship", "depends_on": ["charge", "reserve_stock"] },
            { "name": "notify", "depends_on": [{ "step": "ship", "requires_success": false }] }
          ]
        }"#;
        let from_json = TaskTemplate::from_json(json).unwrap();
        assert_eq!(TaskTemplate::parse(json).unwrap(), from_json);
        assert_eq!(from_json, TaskTemplate::from_yaml(API_EXAMPLE).unwrap());
        assert_api_example_graph(&from_json.compile().unwrap());
    }

    #[test]
    fn from_value_reads_a_json_value_and_round_trips() {
        let original = TaskTemplate::from_yaml(API_EXAMPLE).unwrap();
        let value = serde_json::to_value(&original).unwrap();
        assert_eq!(
            value["steps"][4]["depends_on"][0]["requires_success"],
            false
        );
        assert_eq!(value["steps"][3]["depends_on"][0], "charge");
        assert!(value.get("defaults").is_none());
        let again = TaskTemplate::from_value(value).unwrap();
        assert_eq!(again, original);
        assert_api_example_graph(&again.compile().unwrap());

        let built = TaskTemplate::from_value(serde_json::json!({
            "namespace": "n", "name": "x", "version": "2.1.0-beta.1",
            "steps": [{ "name": "a" }, { "name": "b", "depends_on": [{ "step": "a" }] }]
        }))
        .unwrap();
        let graph = built.compile().unwrap();
        assert_eq!(
            graph.version(),
            &semver::Version::parse("2.1.0-beta.1").unwrap()
        );
        assert_eq!(
            graph.parents(1),
            &[Edge {
                step: 0,
                requires_success: true
            }]
        );
    }

    #[test]
    fn parse_picks_json_for_a_brace_and_yaml_otherwise() {
        let json = "\u{feff}  \n {\"namespace\":\"a\",\"name\":\"b\",\"version\":\"1.0.0\",\"steps\":[{\"name\":\"s\"}]}";
        assert!(TaskTemplate::parse(json).is_ok());
        let not_json = "{namespace: a}";
        assert!(matches!(
            TaskTemplate::parse(not_json),
            Err(TemplateError::Parse { format: "json", .. })
        ));
        let yaml: TaskTemplate = with_steps("  - name: s\n").parse().unwrap();
        assert_eq!(yaml.steps[0].name, "s");
    }

    #[test]
    fn a_template_in_dependency_order_keeps_its_order_and_ties_follow_the_template() {
        let graph = TaskTemplate::parse(&with_steps(
            "  - name: d\n    depends_on: [b, c]\n  - name: c\n  - name: a\n  - name: b\n    depends_on: [a]\n",
        ))
        .unwrap()
        .compile()
        .unwrap();
        // c (1) and a (2) are ready first; then b (3) after a; then d (0).
        assert_eq!(graph.topological_order(), &[1, 2, 3, 0]);
        assert_eq!(graph.roots().collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn malformed_yaml_is_refused_with_its_position() {
        let err = TaskTemplate::parse("namespace: shop\nname: x: y\n").unwrap_err();
        let TemplateError::Parse { format, message } = &err else {
            panic!("expected a parse error, got {err:?}");
        };
        assert_eq!(*format, "yaml");
        assert!(message.contains("line 2 column 8"), "{message}");
        assert!(err.to_string().starts_with("invalid yaml template: "));
    }

    #[test]
    fn malformed_json_is_refused_with_its_position() {
        let err =
            TaskTemplate::parse("{\n  \"namespace\": \"shop\",\n  \"name\": \"x\" \"version\"\n}")
                .unwrap_err();
        let TemplateError::Parse { format, message } = &err else {
            panic!("expected a parse error, got {err:?}");
        };
        assert_eq!(*format, "json");
        assert!(message.contains("line 3 column"), "{message}");
    }

    #[test]
    fn a_misspelt_field_is_refused_not_ignored() {
        let err = TaskTemplate::parse(&with_steps(
            "  - name: a\n  - name: b\n    depend_on: [a]\n",
        ))
        .unwrap_err();
        let TemplateError::Parse { message, .. } = &err else {
            panic!("expected a parse error, got {err:?}");
        };
        assert!(message.contains("unknown field `depend_on`"), "{message}");
        assert!(message.contains("line 7"), "{message}");

        let top =
            TaskTemplate::parse("namespace: a\nname: b\nversion: 1.0.0\nstep: []\n").unwrap_err();
        assert!(top.to_string().contains("unknown field `step`"), "{top}");

        let edge = TaskTemplate::parse(&with_steps(
            "  - name: a\n  - name: b\n    depends_on: [{ step: a, requires_sucess: false }]\n",
        ))
        .unwrap_err();
        assert!(
            edge.to_string().contains("unknown field `requires_sucess`"),
            "{edge}"
        );

        let retry = TaskTemplate::from_value(serde_json::json!({
            "namespace": "a", "name": "b", "version": "1.0.0",
            "steps": [{ "name": "a", "retry": { "max_attempt": 2 } }]
        }))
        .unwrap_err();
        assert!(
            matches!(&retry, TemplateError::Parse { format: "value", message } if message.contains("max_attempt")),
            "{retry:?}"
        );
    }

    #[test]
    fn a_dependency_map_without_a_step_is_refused() {
        let err = TaskTemplate::parse(&with_steps(
            "  - name: a\n  - name: b\n    depends_on: [{ requires_success: false }]\n",
        ))
        .unwrap_err();
        assert!(err.to_string().contains("missing field `step`"), "{err}");
    }

    #[test]
    fn a_blank_namespace_is_refused() {
        let text = with_steps("  - name: a\n").replace("namespace: t", "namespace: '  '");
        assert_eq!(
            compile_err(&text),
            TemplateError::EmptyName { field: "namespace" }
        );
        let err = compile_err(&with_steps("  - name: ''\n"));
        assert_eq!(err, TemplateError::EmptyName { field: "step name" });
        assert_eq!(err.to_string(), "the step name must not be empty");
    }

    #[test]
    fn a_name_longer_than_the_limit_is_refused() {
        let long = "x".repeat(MAX_NAME_LEN + 1);
        let err = compile_err(&with_steps(&format!("  - name: {long}\n")));
        assert_eq!(
            err,
            TemplateError::NameTooLong {
                field: "step name",
                name: long.clone(),
                limit: MAX_NAME_LEN
            }
        );
        assert!(
            err.to_string().contains("longer than 200 characters"),
            "{err}"
        );
        assert!(
            err.to_string().len() < 120,
            "the message shortens the name: {err}"
        );
        // The limit counts characters, not bytes.
        let accented = "é".repeat(MAX_NAME_LEN);
        assert!(
            TaskTemplate::parse(&with_steps(&format!("  - name: {accented}\n")))
                .unwrap()
                .compile()
                .is_ok()
        );
    }

    #[test]
    fn a_version_that_is_not_semver_is_refused() {
        let err = compile_err(&with_steps("  - name: a\n").replace("1.0.0", "'1.0'"));
        let TemplateError::InvalidVersion { version, message } = &err else {
            panic!("expected InvalidVersion, got {err:?}");
        };
        assert_eq!(version, "1.0");
        assert!(!message.is_empty());
        assert!(err
            .to_string()
            .starts_with("version \"1.0\" is not a semantic version"));
    }

    #[test]
    fn a_template_without_steps_is_refused() {
        let err = compile_err("namespace: shop\nname: empty\nversion: 1.0.0\nsteps: []\n");
        assert_eq!(
            err,
            TemplateError::EmptySteps {
                template: "shop/empty".to_owned()
            }
        );
        assert_eq!(err.to_string(), "template \"shop/empty\" has no steps");
    }

    #[test]
    fn more_than_ten_thousand_steps_are_refused() {
        let steps = (0..=MAX_STEPS)
            .map(|i| step(&format!("s{i}"), &[]))
            .collect();
        assert_eq!(
            template(steps).compile().unwrap_err(),
            TemplateError::TooManySteps {
                count: MAX_STEPS + 1,
                limit: MAX_STEPS
            }
        );
    }

    #[test]
    fn a_step_with_too_many_dependencies_is_refused() {
        let parents: Vec<String> = (0..=MAX_DEPENDENCIES).map(|i| format!("p{i}")).collect();
        let mut steps: Vec<StepTemplate> = parents.iter().map(|p| step(p, &[])).collect();
        let refs: Vec<&str> = parents.iter().map(String::as_str).collect();
        steps.push(step("fan_in", &refs));
        assert_eq!(
            template(steps).compile().unwrap_err(),
            TemplateError::TooManyDependencies {
                step: "fan_in".to_owned(),
                count: MAX_DEPENDENCIES + 1,
                limit: MAX_DEPENDENCIES
            }
        );
    }

    #[test]
    fn two_steps_with_the_same_name_are_refused() {
        let err = compile_err(&with_steps("  - name: a\n  - name: b\n  - name: a\n"));
        assert_eq!(
            err,
            TemplateError::DuplicateStep {
                step: "a".to_owned()
            }
        );
        assert!(err.to_string().contains("\"a\""));
    }

    #[test]
    fn an_unknown_dependency_is_refused_naming_both_steps() {
        let err = compile_err(&with_steps("  - name: ship\n    depends_on: [pack]\n"));
        assert_eq!(
            err,
            TemplateError::UnknownDependency {
                step: "ship".to_owned(),
                dependency: "pack".to_owned()
            }
        );
        assert_eq!(
            err.to_string(),
            "step \"ship\" depends on unknown step \"pack\""
        );
    }

    #[test]
    fn a_dependency_listed_twice_is_refused() {
        let err = compile_err(&with_steps(
            "  - name: a\n  - name: b\n    depends_on: [a, { step: a, requires_success: false }]\n",
        ));
        assert_eq!(
            err,
            TemplateError::DuplicateDependency {
                step: "b".to_owned(),
                dependency: "a".to_owned()
            }
        );
        assert_eq!(
            err.to_string(),
            "step \"b\" lists dependency \"a\" more than once"
        );
    }

    #[test]
    fn a_three_step_cycle_is_refused_with_its_path() {
        let err = compile_err(&with_steps(
            "  - name: start\n  - name: a\n    depends_on: [start, c]\n  - name: b\n    depends_on: [a]\n  - name: c\n    depends_on: [b]\n  - name: end\n    depends_on: [c]\n",
        ));
        assert_eq!(
            err,
            TemplateError::Cycle {
                path: vec!["a".into(), "b".into(), "c".into(), "a".into()]
            }
        );
        assert_eq!(err.to_string(), "cycle: a -> b -> c -> a");
    }

    #[test]
    fn a_cycle_is_reported_from_its_first_step_in_the_template() {
        // The same loop as above, written in another order: the path starts at the step
        // written first and follows the direction of work.
        let err = compile_err(&with_steps(
            "  - name: c\n    depends_on: [b]\n  - name: a\n    depends_on: [c]\n  - name: b\n    depends_on: [a]\n",
        ));
        assert_eq!(err.to_string(), "cycle: c -> a -> b -> c");
    }

    #[test]
    fn a_step_depending_on_itself_is_a_cycle() {
        let err = compile_err(&with_steps("  - name: a\n    depends_on: [a]\n"));
        assert_eq!(
            err,
            TemplateError::Cycle {
                path: vec!["a".into(), "a".into()]
            }
        );
        assert_eq!(err.to_string(), "cycle: a -> a");
    }

    #[test]
    fn max_attempts_past_a_thousand_is_refused() {
        let text = with_steps("  - name: charge\n    retry: { max_attempts: 4294967295 }\n");
        let err = text.parse::<TaskTemplate>().unwrap().compile().unwrap_err();
        assert_eq!(
            err,
            TemplateError::InvalidRetry {
                step: "charge".into(),
                message: "max_attempts must be at most 1000, not 4294967295".to_owned()
            }
        );
        let ok = with_steps("  - name: charge\n    retry: { max_attempts: 1000 }\n");
        assert!(ok.parse::<TaskTemplate>().unwrap().compile().is_ok());
    }

    #[test]
    fn max_attempts_of_zero_is_refused() {
        let err = compile_err(&with_steps(
            "  - name: charge\n    retry: { max_attempts: 0 }\n",
        ));
        assert_eq!(
            err,
            TemplateError::InvalidRetry {
                step: "charge".to_owned(),
                message: "max_attempts must be at least 1 (it counts the first attempt)".to_owned()
            }
        );
    }

    #[test]
    fn an_inherited_bad_retry_names_the_step_and_the_defaults() {
        let text = with_steps("  - name: a\n").replace(
            "steps:",
            "defaults: { retry: { backoff_base_ms: 10, backoff_max_ms: 5 } }\nsteps:",
        );
        let err = compile_err(&text);
        let TemplateError::InvalidRetry { step, message } = &err else {
            panic!("expected InvalidRetry, got {err:?}");
        };
        assert_eq!(step, "a");
        assert!(message.contains("backoff_base_ms (10) must not exceed backoff_max_ms (5)"));
        assert!(message.contains("defaults"));
    }

    #[test]
    fn a_zero_or_absurd_timeout_is_refused() {
        let err = compile_err(&with_steps("  - name: a\n    timeout_ms: 0\n"));
        assert_eq!(
            err,
            TemplateError::InvalidTimeout {
                step: "a".to_owned(),
                timeout_ms: 0
            }
        );
        let week_and_a_bit = MAX_TIMEOUT_MS + 1;
        let err = compile_err(&with_steps(&format!(
            "  - name: a\n    timeout_ms: {week_and_a_bit}\n"
        )));
        assert!(
            matches!(err, TemplateError::InvalidTimeout { timeout_ms, .. } if timeout_ms == week_and_a_bit)
        );
        let exactly_a_week =
            with_steps(&format!("  - name: a\n    timeout_ms: {MAX_TIMEOUT_MS}\n"));
        assert!(TaskTemplate::parse(&exactly_a_week)
            .unwrap()
            .compile()
            .is_ok());
    }

    #[test]
    fn a_blank_handler_is_refused() {
        let err = compile_err(&with_steps("  - name: a\n    handler: ' '\n"));
        assert_eq!(err, TemplateError::EmptyName { field: "handler" });
    }

    #[test]
    fn a_ten_thousand_step_chain_compiles_without_recursion() {
        let steps: Vec<StepTemplate> = (0..MAX_STEPS)
            .map(|i| {
                let parent = i.checked_sub(1).map(|p| format!("s{p}"));
                step(
                    &format!("s{i}"),
                    &parent.iter().map(String::as_str).collect::<Vec<_>>(),
                )
            })
            .collect();
        // Written last to first, so that the order has to be worked out.
        let graph = template(steps.into_iter().rev().collect())
            .compile()
            .unwrap();
        assert_eq!(graph.len(), MAX_STEPS);
        assert_eq!(graph.edge_count(), MAX_STEPS - 1);
        let order: Vec<u32> = (0..MAX_STEPS as u32).rev().collect();
        assert_eq!(graph.topological_order(), order.as_slice());
        assert_eq!(graph.roots().collect::<Vec<_>>(), [MAX_STEPS as u32 - 1]);
    }

    #[test]
    fn a_ten_thousand_step_loop_is_found_without_recursion() {
        let n = MAX_STEPS;
        let steps: Vec<StepTemplate> = (0..n)
            .map(|i| step(&format!("s{i}"), &[&format!("s{}", (i + n - 1) % n)]))
            .collect();
        let TemplateError::Cycle { path } = template(steps).compile().unwrap_err() else {
            panic!("expected a cycle");
        };
        assert_eq!(path.len(), n + 1);
        assert_eq!(path[0], "s0");
        assert_eq!(path[1], "s1");
        assert_eq!(path[n], "s0");
    }

    /// A random DAG over `n` steps: edges go from a lower to a higher "rank"; `order` is the
    /// position in the template of each rank (a shuffle), so the template is not sorted.
    #[derive(Debug, Clone)]
    struct RandomDag {
        n: usize,
        edges: Vec<(usize, usize, bool)>,
        order: Vec<usize>,
    }

    fn random_dag() -> impl Strategy<Value = RandomDag> {
        (1usize..40).prop_flat_map(|n| {
            (
                proptest::collection::vec((0..n, 0..n, any::<bool>()), 0..(n * 3)),
                Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
            )
                .prop_map(move |(raw, order)| {
                    let mut seen = std::collections::BTreeSet::new();
                    let edges = raw
                        .into_iter()
                        .filter(|(a, b, _)| a != b)
                        .map(|(a, b, rs)| (a.min(b), a.max(b), rs))
                        .filter(|(a, b, _)| seen.insert((*a, *b)))
                        .collect();
                    RandomDag { n, edges, order }
                })
        })
    }

    /// The template for `dag` plus `extra` edges (parent rank, child rank); step of rank `r`
    /// is called `r{r}` and sits at position `order[r]`.
    fn dag_template(dag: &RandomDag, extra: &[(usize, usize)]) -> TaskTemplate {
        let mut steps: Vec<Option<StepTemplate>> = vec![None; dag.n];
        for rank in 0..dag.n {
            let mut depends_on: Vec<Dependency> = dag
                .edges
                .iter()
                .filter(|(_, child, _)| *child == rank)
                .map(|(parent, _, rs)| Dependency::Edge {
                    step: format!("r{parent}"),
                    requires_success: *rs,
                })
                .collect();
            for (parent, _) in extra.iter().filter(|(_, child)| *child == rank) {
                if !depends_on.iter().any(|d| d.step() == format!("r{parent}")) {
                    depends_on.push(Dependency::Name(format!("r{parent}")));
                }
            }
            steps[dag.order[rank]] = Some(StepTemplate {
                depends_on,
                ..step(&format!("r{rank}"), &[])
            });
        }
        template(steps.into_iter().map(Option::unwrap).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_dags_compile_with_parents_before_children(dag in random_dag()) {
            let template = dag_template(&dag, &[]);
            let graph = template.compile().unwrap();
            prop_assert_eq!(graph.len(), dag.n);
            prop_assert_eq!(graph.edge_count(), dag.edges.len());

            let order = graph.topological_order();
            let mut position = vec![usize::MAX; dag.n];
            for (at, &step) in order.iter().enumerate() {
                prop_assert_eq!(position[step as usize], usize::MAX, "a step appears twice");
                position[step as usize] = at;
            }
            prop_assert_eq!(order.len(), dag.n);

            for child in 0..dag.n as u32 {
                for edge in graph.parents(child) {
                    prop_assert!(position[edge.step as usize] < position[child as usize]);
                    let back = Edge { step: child, requires_success: edge.requires_success };
                    prop_assert!(graph.children(edge.step).contains(&back));
                }
                prop_assert_eq!(&*graph.step(child).name, template.steps[child as usize].name.as_str());
            }
            let children_total: usize = (0..dag.n as u32).map(|i| graph.children(i).len()).sum();
            prop_assert_eq!(children_total, dag.edges.len());
            for &(parent, child, rs) in &dag.edges {
                let p = graph.index_of(&format!("r{parent}")).unwrap();
                let c = graph.index_of(&format!("r{child}")).unwrap();
                let wanted = Edge { step: p, requires_success: rs };
                prop_assert!(graph.parents(c).contains(&wanted));
            }
        }

        #[test]
        fn random_graphs_with_a_back_edge_report_a_real_cycle(
            dag in random_dag().prop_filter("needs two steps", |d| d.n >= 2),
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 2..6),
        ) {
            // A forward path through increasing ranks, closed by an edge back to its start.
            let mut path: Vec<usize> = picks.iter().map(|p| p.index(dag.n)).collect();
            path.sort_unstable();
            path.dedup();
            prop_assume!(path.len() >= 2);
            let mut extra: Vec<(usize, usize)> = path.windows(2).map(|w| (w[0], w[1])).collect();
            extra.push((path[path.len() - 1], path[0]));

            let template = dag_template(&dag, &extra);
            let err = template.compile().unwrap_err();
            let TemplateError::Cycle { path: cycle } = &err else {
                return Err(TestCaseError::fail(format!("expected a cycle, got {err:?}")));
            };
            prop_assert!(cycle.len() >= 3);
            prop_assert_eq!(cycle.first(), cycle.last());
            let inner = &cycle[..cycle.len() - 1];
            let distinct: std::collections::BTreeSet<&String> = inner.iter().collect();
            prop_assert_eq!(distinct.len(), inner.len(), "no step twice inside the loop");
            for pair in cycle.windows(2) {
                let child = template.steps.iter().find(|s| s.name == pair[1]).unwrap();
                prop_assert!(
                    child.depends_on.iter().any(|d| d.step() == pair[0]),
                    "{} does not depend on {}", pair[1], pair[0]
                );
            }
        }
    }
}
