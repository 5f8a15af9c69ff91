//! Validation and compilation: a [`TaskTemplate`] checked (names, limits, retry policies,
//! timeouts, dependencies, cycles, schemas, events) and compiled into a [`TaskGraph`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use super::{
    events, Edge, EventDecl, StepKind, StepSpec, StepTemplate, TaskGraph, TaskTemplate,
    TemplateError, DEFAULT_LEASE_MS, DEFAULT_TIMEOUT_MS, MAX_DEPENDENCIES, MAX_NAME_LEN, MAX_STEPS,
    MAX_TIMEOUT_MS,
};
use crate::gate::{Concurrency, RateLimit};
use crate::retry::RetryPolicy;

impl TaskTemplate {
    /// Validates the template and builds its immutable [`TaskGraph`].
    ///
    /// Checks, in this order: namespace and name (non-blank, at most [`MAX_NAME_LEN`]
    /// characters); the version (semver); that there is at least one and at most
    /// [`MAX_STEPS`] steps; then each step: its name, that the name is unique, its handler
    /// name, its resolved retry policy and timeout, the number of its dependencies; then every
    /// dependency (known, not the step itself, not listed twice); and finally that the
    /// dependencies form no cycle. The first problem found is returned.
    ///
    /// Each step's handler, retry policy and timeout are resolved here: the step's own value,
    /// else the template's `defaults`, else the built-in default (the step's name,
    /// [`RetryPolicy::default`], [`DEFAULT_TIMEOUT_MS`]).
    ///
    /// Runs in O(V log V + E) time for V steps and E dependencies, without recursion.
    ///
    /// ```
    /// use tasker_core::template::{TaskTemplate, TemplateError};
    ///
    /// let graph = TaskTemplate::parse(
    ///     r#"
    /// namespace: shop
    /// name: fulfil_order
    /// version: 1.0.0
    /// steps:
    ///   - name: ship
    ///     depends_on: [charge]
    ///   - name: charge
    /// "#,
    /// )?
    /// .compile()?;
    /// let charge = graph.index_of("charge").unwrap();
    /// assert_eq!(graph.topological_order(), &[charge, graph.index_of("ship").unwrap()]);
    /// assert_eq!(graph.children(charge)[0].step, graph.index_of("ship").unwrap());
    ///
    /// let looped = TaskTemplate::parse(
    ///     "namespace: x\nname: y\nversion: 1.0.0\nsteps:\n  - { name: a, depends_on: [b] }\n  - { name: b, depends_on: [a] }",
    /// )?;
    /// assert_eq!(looped.compile().unwrap_err().to_string(), "cycle: a -> b -> a");
    /// # Ok::<(), TemplateError>(())
    /// ```
    pub fn compile(&self) -> Result<TaskGraph, TemplateError> {
        for (field, name) in self.names() {
            check_name(field, name)?;
        }
        let version =
            semver::Version::parse(&self.version).map_err(|e| TemplateError::InvalidVersion {
                version: self.version.clone(),
                message: e.to_string(),
            })?;
        if self.steps.is_empty() {
            return Err(TemplateError::EmptySteps {
                template: format!("{}/{}", self.namespace, self.name),
            });
        }
        if self.steps.len() > MAX_STEPS {
            return Err(TemplateError::TooManySteps {
                count: self.steps.len(),
                limit: MAX_STEPS,
            });
        }

        // Each step on its own: names, handler, retry, timeout, dependency count.
        let n = self.steps.len();
        let mut index: HashMap<Arc<str>, u32> = HashMap::with_capacity(n);
        let mut specs: Vec<StepSpec> = Vec::with_capacity(n);
        let mut edge_total = 0usize;
        for (i, step) in self.steps.iter().enumerate() {
            let name: Arc<str> = Arc::from(step.name.as_str());
            if index.insert(Arc::clone(&name), i as u32).is_some() {
                return Err(TemplateError::DuplicateStep {
                    step: step.name.clone(),
                });
            }
            let handler = match &step.handler {
                Some(handler) => Arc::from(handler.as_str()),
                None => Arc::clone(&name),
            };
            let retry = self.resolve_retry(step)?;
            let timeout_ms = step
                .timeout_ms
                .or(self.defaults.timeout_ms)
                .unwrap_or(DEFAULT_TIMEOUT_MS);
            if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
                return Err(TemplateError::InvalidTimeout {
                    step: step.name.clone(),
                    timeout_ms,
                });
            }
            let lease_ms = step
                .lease_ms
                .or(self.defaults.lease_ms)
                .unwrap_or(timeout_ms.min(DEFAULT_LEASE_MS));
            if lease_ms == 0 || lease_ms > MAX_TIMEOUT_MS {
                return Err(TemplateError::InvalidLease {
                    step: step.name.clone(),
                    lease_ms,
                });
            }
            if step.depends_on.len() > MAX_DEPENDENCIES {
                return Err(TemplateError::TooManyDependencies {
                    step: step.name.clone(),
                    count: step.depends_on.len(),
                    limit: MAX_DEPENDENCIES,
                });
            }
            edge_total += step.depends_on.len();
            specs.push(StepSpec {
                name,
                handler,
                retry,
                timeout_ms,
                lease_ms,
                config: Arc::new(serde_json::Value::Object(
                    step.config.clone().unwrap_or_default(),
                )),
                events: Arc::default(),
                kind: step.kind,
                dependents: Arc::from(Vec::new()),
                batch: None,
                concurrency: step
                    .concurrency
                    .as_ref()
                    .map(|c| {
                        Concurrency::compile(c, &format!("step {:?}'s concurrency", step.name))
                    })
                    .transpose()
                    .map_err(|message| TemplateError::InvalidLimit { message })?,
                rate_limit: step
                    .rate_limit
                    .as_ref()
                    .map(|r| RateLimit::compile(r, &format!("step {:?}'s rate_limit", step.name)))
                    .transpose()
                    .map_err(|message| TemplateError::InvalidLimit { message })?,
            });
        }
        let scopes: Vec<(&str, &[EventDecl])> = self
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.events.as_slice()))
            .collect();
        for (spec, events) in specs
            .iter_mut()
            .zip(events::compile(&self.events, &scopes)?)
        {
            spec.events = events;
        }

        // Dependencies: resolve names into the parents' adjacency arrays.
        let mut parent_offsets: Vec<u32> = Vec::with_capacity(n + 1);
        let mut parent_edges: Vec<Edge> = Vec::with_capacity(edge_total);
        // `listed_by[p] == i` once step `i` has listed `p`: finds repeats without a set per step.
        let mut listed_by: Vec<u32> = vec![u32::MAX; n];
        parent_offsets.push(0);
        for (i, step) in self.steps.iter().enumerate() {
            let child = i as u32;
            for dependency in &step.depends_on {
                let Some(&parent) = index.get(dependency.step()) else {
                    return Err(TemplateError::UnknownDependency {
                        step: step.name.clone(),
                        dependency: dependency.step().to_owned(),
                    });
                };
                if parent == child {
                    return Err(TemplateError::Cycle {
                        path: vec![step.name.clone(), step.name.clone()],
                    });
                }
                if listed_by[parent as usize] == child {
                    return Err(TemplateError::DuplicateDependency {
                        step: step.name.clone(),
                        dependency: dependency.step().to_owned(),
                    });
                }
                listed_by[parent as usize] = child;
                parent_edges.push(Edge {
                    step: parent,
                    requires_success: dependency.requires_success(),
                });
            }
            parent_offsets.push(parent_edges.len() as u32);
        }

        // Children: the same edges seen from the parent, by a counting sort (children in
        // template order).
        let mut child_offsets: Vec<u32> = vec![0; n + 1];
        for edge in &parent_edges {
            child_offsets[edge.step as usize + 1] += 1;
        }
        for i in 0..n {
            child_offsets[i + 1] += child_offsets[i];
        }
        let mut fill: Vec<u32> = child_offsets[..n].to_vec();
        let placeholder = Edge {
            step: u32::MAX,
            requires_success: true,
        };
        let mut child_edges: Vec<Edge> = vec![placeholder; parent_edges.len()];
        for child in 0..n {
            let range = parent_offsets[child] as usize..parent_offsets[child + 1] as usize;
            for edge in &parent_edges[range] {
                let slot = &mut fill[edge.step as usize];
                child_edges[*slot as usize] = Edge {
                    step: child as u32,
                    requires_success: edge.requires_success,
                };
                *slot += 1;
            }
        }

        for (i, step) in self.steps.iter().enumerate() {
            let refuse = |message: &str| {
                Err(TemplateError::InvalidStepKind {
                    step: step.name.clone(),
                    kind: step.kind.as_str(),
                    message: message.to_owned(),
                })
            };
            match step.kind {
                StepKind::DeferredConvergence if step.depends_on.is_empty() => {
                    return refuse("it has no dependencies to converge")
                }
                StepKind::Decision if child_offsets[i] == child_offsets[i + 1] => {
                    return refuse("no step depends on it, so it has nothing to choose from")
                }
                _ => {}
            }
        }

        self.plan_batches(&index, &parent_offsets, &parent_edges, &mut specs)?;
        let names: Vec<Arc<str>> = specs.iter().map(|s| Arc::clone(&s.name)).collect();
        for (i, spec) in specs.iter_mut().enumerate() {
            let range = child_offsets[i] as usize..child_offsets[i + 1] as usize;
            spec.dependents = child_edges[range]
                .iter()
                .map(|e| Arc::clone(&names[e.step as usize]))
                .collect();
        }

        let topo = topological_order(&parent_offsets, &parent_edges, &child_offsets, &child_edges)
            .map_err(|cycle| TemplateError::Cycle {
                path: cycle
                    .into_iter()
                    .map(|i| self.steps[i as usize].name.clone())
                    .collect(),
            })?;

        let schema = self
            .input_schema
            .as_ref()
            .map(|schema| {
                jsonschema::validator_for(schema)
                    .map(Arc::new)
                    .map_err(|e| TemplateError::InvalidSchema {
                        message: e.to_string(),
                    })
            })
            .transpose()?;
        let concurrency = self
            .concurrency
            .as_ref()
            .map(|c| Concurrency::compile(c, "the template's concurrency"))
            .transpose()
            .map_err(|message| TemplateError::InvalidLimit { message })?;
        if self.webhooks.len() > crate::webhooks::MAX_WEBHOOKS {
            return Err(TemplateError::InvalidWebhook {
                message: format!(
                    "a template has at most {} webhooks",
                    crate::webhooks::MAX_WEBHOOKS
                ),
            });
        }
        let webhooks = self
            .webhooks
            .iter()
            .enumerate()
            .map(|(n, spec)| crate::webhooks::Webhook::compile(spec, n).map(Arc::new))
            .collect::<Result<Arc<[_]>, _>>()
            .map_err(|message| TemplateError::InvalidWebhook { message })?;
        let gated = concurrency.is_some()
            || specs
                .iter()
                .any(|s| s.concurrency.is_some() || s.rate_limit.is_some());
        Ok(TaskGraph {
            template: self.clone(),
            version,
            schema,
            concurrency,
            gated,
            webhooks,
            steps: specs,
            index,
            parent_offsets,
            parent_edges,
            child_offsets,
            child_edges,
            topo,
        })
    }

    /// Each `batchable` step's batch, checked: its worker is a `batch_worker` step that depends
    /// on it and on no other batchable step's batch, sizes are in range, and no step's name
    /// could be taken for one of the worker's instances (`worker[0]`).
    fn plan_batches(
        &self,
        index: &HashMap<Arc<str>, u32>,
        parent_offsets: &[u32],
        parent_edges: &[Edge],
        specs: &mut [StepSpec],
    ) -> Result<(), TemplateError> {
        let refuse = |step: &StepTemplate, message: String| TemplateError::InvalidStepKind {
            step: step.name.clone(),
            kind: step.kind.as_str(),
            message,
        };
        for (i, step) in self.steps.iter().enumerate() {
            let Some(batch) = &step.batch else {
                if step.kind == StepKind::Batchable {
                    return Err(refuse(step, "it needs a batch: {worker, size}".into()));
                }
                continue;
            };
            if step.kind != StepKind::Batchable {
                return Err(refuse(step, "only a batchable step has a batch".into()));
            }
            let worker = match index.get(batch.worker.as_str()) {
                Some(&w) if self.steps[w as usize].kind == StepKind::BatchWorker => w,
                _ => {
                    return Err(refuse(
                        step,
                        format!(
                            "its batch.worker {:?} is not a batch_worker step",
                            batch.worker
                        ),
                    ))
                }
            };
            // Its only parent: the batch's slices run once this step has made them, and the
            // worker step ends with them (another parent could skip it while they wait).
            let range = parent_offsets[worker as usize] as usize
                ..parent_offsets[worker as usize + 1] as usize;
            let parents = &parent_edges[range];
            if !matches!(parents, [only] if only.step == i as u32 && only.requires_success) {
                return Err(refuse(
                    step,
                    format!(
                        "its batch.worker {:?} must depend on it, and on nothing else",
                        batch.worker
                    ),
                ));
            }
            if specs[worker as usize].batch.is_some() {
                return Err(refuse(
                    step,
                    format!("{:?} is the worker of another batch already", batch.worker),
                ));
            }
            if batch.size == 0 || batch.size > super::MAX_BATCH_SIZE {
                return Err(refuse(
                    step,
                    format!("batch.size must be between 1 and {}", super::MAX_BATCH_SIZE),
                ));
            }
            if batch.parallelism == Some(0) {
                return Err(refuse(step, "batch.parallelism must be at least 1".into()));
            }
            let prefix = format!("{}[", batch.worker);
            if let Some(clash) = self.steps.iter().find(|s| s.name.starts_with(&prefix)) {
                return Err(refuse(
                    step,
                    format!(
                        "step {:?} could be taken for an instance of {:?}",
                        clash.name, batch.worker
                    ),
                ));
            }
            let plan = super::BatchPlan {
                batchable: i as u32,
                worker,
                size: batch.size,
                parallelism: batch.parallelism.unwrap_or(u32::MAX),
                on_failure: batch.on_failure,
            };
            specs[i].batch = Some(plan);
            specs[worker as usize].batch = Some(plan);
        }
        if let Some(orphan) = (0..self.steps.len())
            .find(|&w| self.steps[w].kind == StepKind::BatchWorker && specs[w].batch.is_none())
        {
            let step = &self.steps[orphan];
            return Err(refuse(
                step,
                "no batchable step names it as its batch.worker".into(),
            ));
        }
        Ok(())
    }

    /// The retry policy that applies to `step`, checked.
    fn resolve_retry(&self, step: &StepTemplate) -> Result<RetryPolicy, TemplateError> {
        let (retry, inherited) = match (step.retry, self.defaults.retry) {
            (Some(own), _) => (own, false),
            (None, Some(default)) => (default, true),
            (None, None) => return Ok(RetryPolicy::default()),
        };
        match retry.problem(crate::limits::MAX_ATTEMPTS) {
            None => Ok(retry),
            Some(message) => Err(TemplateError::InvalidRetry {
                step: step.name.clone(),
                message: if inherited {
                    format!("{message} (inherited from the template's defaults)")
                } else {
                    message
                },
            }),
        }
    }
}

/// Refuses a blank name or one longer than [`MAX_NAME_LEN`] characters.
fn check_name(field: &'static str, name: &str) -> Result<(), TemplateError> {
    if name.trim().is_empty() {
        return Err(TemplateError::EmptyName { field });
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(TemplateError::NameTooLong {
            field,
            name: name.to_owned(),
            limit: MAX_NAME_LEN,
        });
    }
    Ok(())
}

impl TaskTemplate {
    /// Every name the template gives, with what it names: its namespace and name, then each
    /// step's name and handler.
    fn names(&self) -> impl Iterator<Item = (&'static str, &String)> {
        [("namespace", &self.namespace), ("name", &self.name)]
            .into_iter()
            .chain(self.steps.iter().flat_map(|s| {
                std::iter::once(("step name", &s.name))
                    .chain(s.handler.as_ref().map(|h| ("handler", h)))
            }))
    }

    /// The checks made only when a template is registered, on top of [`TaskTemplate::compile`]
    /// (which also reads back what a store holds, and so must keep accepting what an earlier
    /// version stored): no control character in a name, and webhooks as
    /// [`crate::webhooks::Webhook::check_new`] wants them.
    pub fn check_new(&self) -> Result<(), TemplateError> {
        for (field, name) in self.names() {
            if name.chars().any(char::is_control) {
                return Err(TemplateError::NameWithControl {
                    field,
                    name: name.clone(),
                });
            }
        }
        for (n, hook) in self.webhooks.iter().enumerate() {
            crate::webhooks::Webhook::check_new(hook, n)
                .map_err(|message| TemplateError::InvalidWebhook { message })?;
        }
        Ok(())
    }
}

/// Kahn's algorithm, always taking the ready step that comes first in the template. On a cycle,
/// returns one cycle's steps (parent before child, the first repeated at the end).
fn topological_order(
    parent_offsets: &[u32],
    parent_edges: &[Edge],
    child_offsets: &[u32],
    child_edges: &[Edge],
) -> Result<Vec<u32>, Vec<u32>> {
    let n = parent_offsets.len() - 1;
    let mut waiting: Vec<u32> = (0..n)
        .map(|i| parent_offsets[i + 1] - parent_offsets[i])
        .collect();
    let mut ready: BinaryHeap<Reverse<u32>> = (0..n as u32)
        .filter(|&i| waiting[i as usize] == 0)
        .map(Reverse)
        .collect();
    let mut order: Vec<u32> = Vec::with_capacity(n);
    while let Some(Reverse(step)) = ready.pop() {
        order.push(step);
        let range =
            child_offsets[step as usize] as usize..child_offsets[step as usize + 1] as usize;
        for edge in &child_edges[range] {
            let count = &mut waiting[edge.step as usize];
            *count -= 1;
            if *count == 0 {
                ready.push(Reverse(edge.step));
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }

    // Every step left over still waits for a parent that is left over too, so walking from
    // one such step to such a parent, again and again, must come back to a step already seen.
    const UNSEEN: u32 = u32::MAX;
    let mut seen_at: Vec<u32> = vec![UNSEEN; n];
    let mut walk: Vec<u32> = Vec::new();
    let mut current = (0..n).find(|&i| waiting[i] > 0).unwrap_or(0) as u32;
    let start = loop {
        if seen_at[current as usize] != UNSEEN {
            break seen_at[current as usize] as usize;
        }
        seen_at[current as usize] = walk.len() as u32;
        walk.push(current);
        let range = parent_offsets[current as usize] as usize
            ..parent_offsets[current as usize + 1] as usize;
        match parent_edges[range]
            .iter()
            .find(|edge| waiting[edge.step as usize] > 0)
        {
            Some(edge) => current = edge.step,
            // Unreachable: a left-over step always has a left-over parent.
            None => break walk.len() - 1,
        }
    };
    // The walk went from child to parent; turn the loop around and start it at the step that
    // comes first in the template.
    let mut cycle: Vec<u32> = walk[start..].iter().rev().copied().collect();
    let first = cycle
        .iter()
        .enumerate()
        .min_by_key(|&(_, &step)| step)
        .map_or(0, |(position, _)| position);
    cycle.rotate_left(first);
    cycle.push(cycle[0]);
    Err(cycle)
}
