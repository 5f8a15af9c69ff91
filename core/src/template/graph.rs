//! The compiled graph: a template's steps with their policies resolved and its dependency
//! edges as compact adjacency arrays, immutable once built by [`TaskTemplate::compile`].

use std::collections::HashMap;
use std::sync::Arc;

use super::{DeclaredEvents, TaskTemplate};
use crate::retry::RetryPolicy;

/// A dependency edge as stored in a [`TaskGraph`].
///
/// In [`TaskGraph::parents`] `step` is the parent; in [`TaskGraph::children`] it is the child.
/// `requires_success` is the same flag on the edge either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// The index of the step at the other end of the edge.
    pub step: u32,
    /// Whether the parent must have succeeded (`true`) or merely finished (`false`) for the
    /// child to run.
    pub requires_success: bool,
}

/// A step of a compiled graph, with its handler, retry policy and timeout resolved.
#[derive(Debug, Clone)]
pub struct StepSpec {
    /// The step's name.
    pub name: Arc<str>,
    /// The handler to run: the template's `handler`, else the step's name.
    pub handler: Arc<str>,
    /// The step's retry policy: its own, else the template default, else the built-in one.
    pub retry: RetryPolicy,
    /// The step's timeout in milliseconds: its own, else the template default, else
    /// [`super::DEFAULT_TIMEOUT_MS`].
    pub timeout_ms: u64,
    /// The length of a claim's lease in milliseconds: its own, else the template default, else
    /// `min(timeout_ms, DEFAULT_LEASE_MS)`.
    pub lease_ms: u64,
    /// The step's `config` (a JSON object, `{}` when none), handed to its handler.
    pub config: Arc<serde_json::Value>,
    /// The custom events the step may publish: its own and its template's.
    pub events: Arc<DeclaredEvents>,
    /// The step's `type`.
    pub kind: super::StepKind,
    /// The names of the steps that depend on it, in template order.
    pub dependents: Arc<[Arc<str>]>,
    /// A `batchable` step's batch, a `batch_worker` step's batchable parent.
    pub batch: Option<BatchPlan>,
    /// The step's `concurrency`.
    pub concurrency: Option<crate::gate::Concurrency>,
    /// The step's `rate_limit`.
    pub rate_limit: Option<crate::gate::RateLimit>,
}

/// How a batch runs, on both of its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPlan {
    /// The `batchable` step.
    pub batchable: u32,
    /// The `batch_worker` step run once per slice.
    pub worker: u32,
    /// Items per slice.
    pub size: u64,
    /// How many slices run at once.
    pub parallelism: u32,
    /// What a slice that failed for good does.
    pub on_failure: super::OnFailure,
}

impl StepSpec {
    /// Why this step may not report `reported`, if it may not; see [`output_refusal`].
    pub fn refusal(&self, reported: Reported<'_>) -> Option<String> {
        output_refusal(&self.name, self.kind, &self.dependents, reported)
    }
}

/// What a handler reported, as far as its step's `type` cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported<'a> {
    /// A plain result.
    Result,
    /// A decision choosing these steps.
    Decision(&'a [String]),
    /// A batch.
    Batch,
    /// Child tasks to start.
    Children,
}

impl Reported<'_> {
    fn what(self) -> &'static str {
        match self {
            Reported::Result => "a plain result",
            Reported::Decision(_) => "a decision",
            Reported::Batch => "a batch",
            Reported::Children => "child tasks",
        }
    }
}

/// Why step `name` of `kind`, on which `dependents` depend, may not report `reported`, if it
/// may not: a decision step must decide, and only among the steps that depend on it; a
/// batchable step must return a batch; no other step may do either. The message is the step's
/// permanent failure.
pub fn output_refusal(
    name: &str,
    kind: super::StepKind,
    dependents: &[Arc<str>],
    reported: Reported<'_>,
) -> Option<String> {
    refusal_text(name, kind, dependents, reported).map(crate::limits::message)
}

fn refusal_text(
    name: &str,
    kind: super::StepKind,
    dependents: &[Arc<str>],
    reported: Reported<'_>,
) -> Option<String> {
    use super::StepKind;
    match (kind, reported) {
        (StepKind::Decision, Reported::Decision(chosen)) => {
            // A set when both lists are long: a decision may name thousands of steps.
            let set: Option<std::collections::HashSet<&str>> = (chosen.len() > 8
                && dependents.len() > 8)
                .then(|| dependents.iter().map(|d| &**d).collect());
            let stranger = chosen.iter().find(|c| match &set {
                Some(set) => !set.contains(c.as_str()),
                None => !dependents.iter().any(|d| **d == ***c),
            })?;
            let dependents: Vec<&str> = dependents.iter().map(|d| &**d).collect();
            Some(format!(
                "decision step {name:?} chose {:?}, which does not depend on it (its dependents: {})",
                crate::limits::message(stranger.clone()),
                dependents.join(", ")
            ))
        }
        (StepKind::Decision, other) => Some(format!(
            "decision step {name:?} returned {}: its handler must return a decision naming the steps to run",
            other.what()
        )),
        (StepKind::Batchable, Reported::Batch) => None,
        (StepKind::Batchable, other) => Some(format!(
            "batchable step {name:?} returned {}: its handler must return a batch (items or a total)",
            other.what()
        )),
        (_, Reported::Decision(_)) => Some(format!(
            "step {name:?} returned a decision, but it is not a decision step (type: decision)"
        )),
        (_, Reported::Batch) => Some(format!(
            "step {name:?} returned a batch, but it is not a batchable step (type: batchable)"
        )),
        (_, Reported::Result | Reported::Children) => None,
    }
}

/// A validated template compiled into an immutable DAG; built only by
/// [`TaskTemplate::compile`].
///
/// Steps keep the template's order: index `i` is `template().steps[i]`. Parents and children
/// are stored as compact adjacency arrays, so [`TaskGraph::parents`] and
/// [`TaskGraph::children`] are plain slices.
///
/// Methods taking a step index panic when given an index this graph never gave out (one not
/// below [`TaskGraph::len`]); indices from [`TaskGraph::index_of`], [`TaskGraph::roots`],
/// [`TaskGraph::topological_order`] and the edges are always valid.
#[derive(Debug, Clone)]
pub struct TaskGraph {
    pub(super) template: TaskTemplate,
    pub(super) version: semver::Version,
    /// The compiled `input_schema`.
    pub(super) schema: Option<Arc<jsonschema::Validator>>,
    /// The template's `concurrency`.
    pub(super) concurrency: Option<crate::gate::Concurrency>,
    /// Whether any step, or the template, has a concurrency key or a rate limit.
    pub(super) gated: bool,
    /// The template's webhooks, checked.
    pub(super) webhooks: Arc<[Arc<crate::webhooks::Webhook>]>,
    pub(super) steps: Vec<StepSpec>,
    pub(super) index: HashMap<Arc<str>, u32>,
    pub(super) parent_offsets: Vec<u32>,
    pub(super) parent_edges: Vec<Edge>,
    pub(super) child_offsets: Vec<u32>,
    pub(super) child_edges: Vec<Edge>,
    pub(super) topo: Vec<u32>,
}

impl TaskGraph {
    /// The template's namespace.
    pub fn namespace(&self) -> &str {
        &self.template.namespace
    }

    /// The template's name.
    pub fn name(&self) -> &str {
        &self.template.name
    }

    /// The template's version, parsed.
    pub fn version(&self) -> &semver::Version {
        &self.version
    }

    /// The template's webhooks, checked (see [`crate::webhooks`]).
    pub fn webhooks(&self) -> &Arc<[Arc<crate::webhooks::Webhook>]> {
        &self.webhooks
    }

    /// The template this graph was compiled from, for storage and display.
    pub fn template(&self) -> &TaskTemplate {
        &self.template
    }

    /// The number of steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether the graph has no steps; never true for a compiled template.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The step at `index`.
    ///
    /// # Panics
    ///
    /// When `index` is not below [`TaskGraph::len`].
    pub fn step(&self, index: u32) -> &StepSpec {
        &self.steps[index as usize]
    }

    /// Why `context` breaks the template's `input_schema`: each failing place as a JSON
    /// pointer (`""` for the whole context) with what is wrong there; empty when it satisfies
    /// the schema, or there is none.
    pub fn context_errors(&self, context: &serde_json::Value) -> Vec<(String, String)> {
        let mut errors: Vec<(String, String)> = match &self.schema {
            Some(schema) => schema
                .iter_errors(context)
                .map(|e| (e.instance_path().to_string(), e.to_string()))
                .collect(),
            None => Vec::new(),
        };
        if let Err(e) = self.gates(context) {
            errors.extend(e);
        }
        errors
    }

    /// The concurrency keys and rate keys of a task whose context is `context`, rendered
    /// (`None` when the template has none); each key the context cannot render otherwise, as
    /// `(path, why)`.
    pub fn gates(
        &self,
        context: &serde_json::Value,
    ) -> Result<Option<crate::gate::Gates>, Vec<(String, String)>> {
        use crate::gate::{Gates, StepGates};
        if !self.gated {
            return Ok(None);
        }
        let mut errors = Vec::new();
        let mut render = |key: &crate::gate::KeyTemplate| -> Arc<str> {
            match key.render(context) {
                Ok(k) => k.into(),
                Err(e) => {
                    errors.push(("".to_owned(), e));
                    Arc::from("")
                }
            }
        };
        let task = self.concurrency.as_ref().map(|c| (render(&c.key), c.limit));
        let steps = self
            .steps
            .iter()
            .map(|s| StepGates {
                concurrency: s.concurrency.as_ref().map(|c| (render(&c.key), c.limit)),
                rate: s.rate_limit.as_ref().map(|r| (render(&r.key), r.rate)),
            })
            .collect();
        if errors.is_empty() {
            Ok(Some(Gates { task, steps }))
        } else {
            Err(errors)
        }
    }

    /// All steps, in template order.
    pub fn steps(&self) -> &[StepSpec] {
        &self.steps
    }

    /// The edges to the step's parents, in the order its `depends_on` lists them.
    ///
    /// # Panics
    ///
    /// When `index` is not below [`TaskGraph::len`].
    pub fn parents(&self, index: u32) -> &[Edge] {
        let i = index as usize;
        &self.parent_edges[self.parent_offsets[i] as usize..self.parent_offsets[i + 1] as usize]
    }

    /// The edges to the steps that depend on this one, in template order.
    ///
    /// # Panics
    ///
    /// When `index` is not below [`TaskGraph::len`].
    pub fn children(&self, index: u32) -> &[Edge] {
        let i = index as usize;
        &self.child_edges[self.child_offsets[i] as usize..self.child_offsets[i + 1] as usize]
    }

    /// The index of the step called `name`, if there is one.
    pub fn index_of(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    /// Every step once, parents before their children; among steps whose parents are all
    /// placed, the one first in the template comes first (so a template already written in
    /// dependency order keeps its order).
    pub fn topological_order(&self) -> &[u32] {
        &self.topo
    }

    /// The steps without parents, in template order.
    pub fn roots(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len() as u32).filter(move |&i| self.parents(i).is_empty())
    }

    /// The number of dependency edges.
    pub fn edge_count(&self) -> usize {
        self.parent_edges.len()
    }
}
