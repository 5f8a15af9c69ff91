//! Templates written in code: `TaskTemplate::builder(namespace, name, version)` and
//! [`StepBuilder`], producing the same [`TaskTemplate`] a document gives, checked the same way
//! ([`TemplateBuilder::build`] compiles it).
//!
//! ```
//! use tasker_core::template::{StepBuilder, TaskTemplate};
//! use tasker_core::RetryPolicy;
//!
//! let template = TaskTemplate::builder("shop", "fulfil_order", "1.0.0")
//!     .step("validate")
//!     .step(StepBuilder::new("charge").depends_on(["validate"]).retry(RetryPolicy {
//!         max_attempts: 5,
//!         ..RetryPolicy::default()
//!     }))
//!     .step(StepBuilder::new("notify").after_any_outcome_of("charge"))
//!     .build()?;
//! assert_eq!(template.steps.len(), 3);
//! let looped = TaskTemplate::builder("x", "y", "1.0.0")
//!     .step(StepBuilder::new("a").depends_on(["b"]))
//!     .step(StepBuilder::new("b").depends_on(["a"]))
//!     .build();
//! assert_eq!(looped.unwrap_err().to_string(), "cycle: a -> b -> a");
//! # Ok::<(), tasker_core::template::TemplateError>(())
//! ```

use serde_json::{Map, Value};

use super::{
    Dependency, EventDecl, StepDefaults, StepKind, StepTemplate, TaskTemplate, TemplateError,
};
use crate::retry::RetryPolicy;

/// Builds a [`TaskTemplate`] step by step; see the module docs.
#[derive(Debug, Clone)]
pub struct TemplateBuilder {
    template: TaskTemplate,
}

impl TaskTemplate {
    /// A template built in code, starting with no steps.
    pub fn builder(
        namespace: impl Into<String>,
        name: impl Into<String>,
        version: impl Into<String>,
    ) -> TemplateBuilder {
        TemplateBuilder {
            template: TaskTemplate {
                deadline_ms: None,
                concurrency: None,
                webhooks: Vec::new(),
                namespace: namespace.into(),
                name: name.into(),
                version: version.into(),
                description: None,
                defaults: StepDefaults::default(),
                input_schema: None,
                events: Vec::new(),
                steps: Vec::new(),
            },
        }
    }
}

impl TemplateBuilder {
    /// What the template does, for people.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.template.description = Some(description.into());
        self
    }

    /// At most `limit` tasks with key `key` (e.g. `customer:{{context.customer_id}}`) in
    /// progress at once, across every worker of the store.
    pub fn concurrency(mut self, key: impl Into<String>, limit: u32) -> Self {
        self.template.concurrency = Some(crate::gate::ConcurrencySpec {
            key: key.into(),
            limit,
        });
        self
    }

    /// The JSON Schema every task's context must satisfy.
    pub fn input_schema(mut self, schema: Value) -> Self {
        self.template.input_schema = Some(schema);
        self
    }

    /// A custom event every step may publish (see [`super::events`]).
    pub fn event(mut self, event: impl Into<EventDecl>) -> Self {
        self.template.events.push(event.into());
        self
    }

    /// The defaults of steps that do not set their own retry policy, timeout or lease.
    pub fn defaults(mut self, defaults: StepDefaults) -> Self {
        self.template.defaults = defaults;
        self
    }

    /// Adds a step (a name alone, or a [`StepBuilder`]).
    pub fn step(mut self, step: impl Into<StepBuilder>) -> Self {
        self.template.steps.push(step.into().0);
        self
    }

    /// The template, checked as a registered one is ([`TaskTemplate::compile`]): the first
    /// problem is the error.
    pub fn build(self) -> Result<TaskTemplate, TemplateError> {
        self.template.compile()?;
        Ok(self.template)
    }
}

/// One step of a [`TemplateBuilder`].
#[derive(Debug, Clone)]
pub struct StepBuilder(StepTemplate);

impl StepBuilder {
    /// A step called `name`, run by the handler of that name, with no parents.
    pub fn new(name: impl Into<String>) -> Self {
        StepBuilder(StepTemplate {
            name: name.into(),
            handler: None,
            description: None,
            depends_on: Vec::new(),
            retry: None,
            timeout_ms: None,
            lease_ms: None,
            config: None,
            events: Vec::new(),
            kind: StepKind::Standard,
            batch: None,
            concurrency: None,
            rate_limit: None,
        })
    }

    /// At most `limit` steps with key `key` (e.g. `customer:{{context.customer_id}}`) in
    /// progress at once, across every worker of the store.
    pub fn concurrency(mut self, key: impl Into<String>, limit: u32) -> Self {
        self.0.concurrency = Some(crate::gate::ConcurrencySpec {
            key: key.into(),
            limit,
        });
        self
    }

    /// Claims start steps with key `key` at most `limit` per `per_ms` (the default burst),
    /// across every worker of the store.
    pub fn rate_limit(mut self, key: impl Into<String>, limit: u32, per_ms: u64) -> Self {
        self.0.rate_limit = Some(crate::gate::RateLimitSpec {
            key: key.into(),
            limit,
            per_ms,
            burst: None,
        });
        self
    }

    /// Run by `handler` instead of the handler named like the step.
    pub fn handler(mut self, handler: impl Into<String>) -> Self {
        self.0.handler = Some(handler.into());
        self
    }

    /// What the step does, for people.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.0.description = Some(description.into());
        self
    }

    /// Runs once every one of `parents` has completed.
    pub fn depends_on<S: Into<String>>(mut self, parents: impl IntoIterator<Item = S>) -> Self {
        self.0
            .depends_on
            .extend(parents.into_iter().map(|p| Dependency::Name(p.into())));
        self
    }

    /// Runs once `parent` has finished, whether it succeeded or failed for good.
    pub fn after_any_outcome_of(mut self, parent: impl Into<String>) -> Self {
        self.0.depends_on.push(Dependency::Edge {
            step: parent.into(),
            requires_success: false,
        });
        self
    }

    /// Its own retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.0.retry = Some(retry);
        self
    }

    /// The longest one attempt may run, in milliseconds.
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.0.timeout_ms = Some(ms);
        self
    }

    /// The length of a claim's lease, in milliseconds.
    pub fn lease_ms(mut self, ms: u64) -> Self {
        self.0.lease_ms = Some(ms);
        self
    }

    /// The config handed to the step's handler (`step.config`).
    pub fn config(mut self, config: Map<String, Value>) -> Self {
        self.0.config = Some(config);
        self
    }

    /// Its `type`: a decision, a deferred convergence, a batchable step or batch worker, or (the
    /// default) a plain step.
    pub fn kind(mut self, kind: StepKind) -> Self {
        self.0.kind = kind;
        self
    }

    /// A `batchable` step whose `batch.worker` step runs once per slice.
    pub fn batch(mut self, batch: super::BatchSpec) -> Self {
        self.0.kind = StepKind::Batchable;
        self.0.batch = Some(batch);
        self
    }

    /// A custom event this step may publish besides its template's (see [`super::events`]).
    pub fn event(mut self, event: impl Into<EventDecl>) -> Self {
        self.0.events.push(event.into());
        self
    }
}

impl From<&str> for StepBuilder {
    fn from(name: &str) -> Self {
        StepBuilder::new(name)
    }
}

impl From<String> for StepBuilder {
    fn from(name: String) -> Self {
        StepBuilder::new(name)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_built_template_is_the_one_its_document_gives() {
        let built = TaskTemplate::builder("shop", "order", "1.0.0")
            .description("d")
            .input_schema(json!({"type": "object"}))
            .event("order.placed")
            .step(StepBuilder::new("validate").timeout_ms(500).lease_ms(100))
            .step(
                StepBuilder::new("charge")
                    .handler("pay")
                    .event("order.charged")
                    .depends_on(["validate"])
                    .config(
                        json!({"gateway": "x"})
                            .as_object()
                            .cloned()
                            .unwrap_or_default(),
                    ),
            )
            .step(StepBuilder::new("notify").after_any_outcome_of("charge"))
            .build()
            .unwrap();
        let written = TaskTemplate::parse(
            "namespace: shop\nname: order\nversion: 1.0.0\ndescription: d\ninput_schema: {type: object}\nevents: [order.placed]\nsteps:\n  - {name: validate, timeout_ms: 500, lease_ms: 100}\n  - {name: charge, handler: pay, depends_on: [validate], config: {gateway: x}, events: [order.charged]}\n  - {name: notify, depends_on: [{step: charge, requires_success: false}]}\n",
        )
        .unwrap();
        assert_eq!(built, written);
    }

    #[test]
    fn a_built_template_is_checked_as_any_other() {
        let err = TaskTemplate::builder("shop", "order", "1.0.0")
            .step(StepBuilder::new("a").depends_on(["missing"]))
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "step \"a\" depends on unknown step \"missing\""
        );
        let empty = TaskTemplate::builder("shop", "order", "1.0.0").build();
        assert!(matches!(empty, Err(TemplateError::EmptySteps { .. })));
        let bad_version = TaskTemplate::builder("shop", "order", "one")
            .step("a")
            .build();
        assert!(matches!(
            bad_version,
            Err(TemplateError::InvalidVersion { .. })
        ));
    }
}
