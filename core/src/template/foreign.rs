//! Templates of the Rails Tasker engine and of tasker-core, read unchanged: each format is
//! detected by its keys and mapped to the native [`TaskTemplate`], with a warning for each key
//! that has no meaning here (the native format stays strict), and the overrides of one
//! environment applied first (`environments.<env>`, in all three formats).
//!
//! | native | Rails Tasker | tasker-core |
//! |---|---|---|
//! | `namespace` | `namespace_name` (default `default`) | `namespace_name` |
//! | `steps` | `step_templates` | `steps` |
//! | `handler` | `handler_class` | `handler.callable` |
//! | `config` | `handler_config` | `handler.initialization` |
//! | `depends_on` | `depends_on_step` ∪ `depends_on_steps` | `dependencies` |
//! | `retry.max_attempts` | `default_retry_limit` (`default_retryable: false` → 1) | `retry.max_attempts` or `retry.limit` (0 → 1; `retryable: false` → 1) |
//! | `retry.backoff`, `backoff_base_ms`, `backoff_max_ms` | — | `retry.backoff`, `backoff_base_ms`, `max_backoff_ms` |
//! | `timeout_ms` | — | `timeout_seconds` × 1000 |
//! | `input_schema` | `schema` | `input_schema` |
//! | `events` (template) | `custom_events` | `domain_events` |
//! | `events` (step) | `custom_events` | `publishes_events` |

use serde_json::{Map, Value};

use super::{TaskTemplate, TemplateError};

/// Which format a template was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// This engine's own.
    Native,
    /// The Rails Tasker engine's (`step_templates`, `handler_class`).
    Rails,
    /// tasker-core's (`namespace_name`, `steps` with `handler.callable`).
    TaskerCore,
}

impl Format {
    /// `"native"`, `"rails"` or `"tasker_core"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Native => "native",
            Format::Rails => "rails",
            Format::TaskerCore => "tasker_core",
        }
    }

    /// The format of a template document: Rails Tasker's when it has `step_templates`,
    /// tasker-core's when it has `namespace_name` (and no `step_templates`), else native.
    pub fn of(document: &Value) -> Format {
        match document {
            Value::Object(map) if map.contains_key("step_templates") => Format::Rails,
            Value::Object(map) if map.contains_key("namespace_name") => Format::TaskerCore,
            _ => Format::Native,
        }
    }
}

/// A template read from any of the formats: the native template, the format it was written
/// in, and a warning for each key of that format that has no meaning here.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The template, mapped to the native format with the environment's overrides applied.
    pub template: TaskTemplate,
    /// The format detected.
    pub format: Format,
    /// What was not used, each naming the key (and the step).
    pub warnings: Vec<String>,
}

/// Reads `document` in whichever format it is written, with the overrides of `environment`
/// (when given and present) applied.
pub fn load(document: Value, environment: Option<&str>) -> Result<Loaded, TemplateError> {
    let format = Format::of(&document);
    let Value::Object(mut map) = document else {
        return TaskTemplate::from_value(document).map(|template| Loaded {
            template,
            format,
            warnings: Vec::new(),
        });
    };
    let steps_key = match format {
        Format::Rails => "step_templates",
        Format::Native | Format::TaskerCore => "steps",
    };
    let environments = map.remove("environments");
    let mut warnings = Vec::new();
    check_environments(environments.as_ref(), steps_key, format, &mut warnings)?;
    if let (Some(env), Some(Value::Object(envs))) = (environment, &environments) {
        if let Some(overrides) = envs.get(env) {
            apply_overrides(&mut map, steps_key, overrides, env)?;
        }
    }
    let native = match format {
        Format::Native => Value::Object(map),
        Format::Rails => rails(map, &mut warnings)?,
        Format::TaskerCore => tasker_core(map, &mut warnings)?,
    };
    let template = TaskTemplate::from_value(native)?;
    Ok(Loaded {
        template,
        format,
        warnings,
    })
}

/// Refuses `environments` that is not a map of maps; a key of an environment other than
/// `steps_key` is refused in the native format and a warning in the foreign ones (every
/// environment's, not only the one applied: a mistake shows before that environment runs).
fn check_environments(
    environments: Option<&Value>,
    steps_key: &str,
    format: Format,
    warnings: &mut Vec<String>,
) -> Result<(), TemplateError> {
    let envs = match environments {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(envs)) => envs,
        Some(_) => return Err(parse("environments must be a map of environment names")),
    };
    for (name, overrides) in envs {
        let keys = match overrides {
            Value::Null => continue,
            Value::Object(keys) => keys,
            _ => {
                return Err(parse(format!(
                    "environments.{name} must be a map with {steps_key}"
                )))
            }
        };
        for key in keys.keys().filter(|k| *k != steps_key) {
            let message = format!(
                "environments.{name}.{key} is not an override this engine applies (only \
                 {steps_key})"
            );
            if format == Format::Native {
                return Err(parse(message));
            }
            warnings.push(format!("{message}; ignored"));
        }
    }
    Ok(())
}

fn parse(message: impl Into<String>) -> TemplateError {
    TemplateError::Parse {
        format: "value",
        message: message.into(),
    }
}

/// Applies one environment's overrides (`{<steps_key>: [{name, …}]}`) to the steps of
/// `map`: each override names a step (or `ALL`), and its keys are merged into that step's —
/// objects key by key, a `null` leaving the base value as it is.
fn apply_overrides(
    map: &mut Map<String, Value>,
    steps_key: &str,
    overrides: &Value,
    env: &str,
) -> Result<(), TemplateError> {
    let entries = match overrides.get(steps_key) {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Array(entries)) => entries,
        Some(_) => {
            return Err(parse(format!(
                "environments.{env}.{steps_key} must be a list of step overrides"
            )))
        }
    };
    let Some(Value::Array(steps)) = map.get_mut(steps_key) else {
        return Ok(());
    };
    for entry in entries {
        let Some(name) = entry.get("name").and_then(Value::as_str) else {
            return Err(parse(format!(
                "each override in environments.{env}.{steps_key} needs the name of its step (or ALL)"
            )));
        };
        let mut matched = false;
        // The entry's other keys: its name picks the step, it does not rename it.
        let mut keys = entry.clone();
        if let Value::Object(keys) = &mut keys {
            keys.remove("name");
        }
        for step in steps.iter_mut() {
            if name == "ALL" || step.get("name").and_then(Value::as_str) == Some(name) {
                merge(step, &keys);
                matched = true;
            }
        }
        if !matched {
            return Err(parse(format!(
                "environments.{env}.{steps_key} overrides step {name:?}, which the template does not have"
            )));
        }
    }
    Ok(())
}

/// `over` merged into `base`: objects key by key, any other value replacing, `null` leaving
/// the base as it is.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (_, Value::Null) => {}
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                match base.get_mut(key) {
                    Some(slot) => merge(slot, value),
                    None => {
                        if !value.is_null() {
                            base.insert(key.clone(), without_nulls(value));
                        }
                    }
                }
            }
        }
        (base, over) => *base = over.clone(),
    }
}

/// `value` with the nulls of its maps left out (at any depth).
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// Takes `key` out of `map`, `None` when absent or null.
fn take(map: &mut Map<String, Value>, key: &str) -> Option<Value> {
    map.remove(key).filter(|v| !v.is_null())
}

/// A warning for each key left in `map` (keys of the foreign format with no meaning here),
/// naming `place` (`"the template"` or `step "x"`). Empty lists and nulls go unremarked.
fn leftovers(map: Map<String, Value>, place: &str, warnings: &mut Vec<String>) {
    for (key, value) in map {
        let empty = match &value {
            Value::Null => true,
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            _ => false,
        };
        if !empty {
            warnings.push(format!(
                "{place}: {key} is not used by this engine; ignored"
            ));
        }
    }
}

/// A string field, or an error naming it.
fn string(value: Value, field: &str) -> Result<Value, TemplateError> {
    match value {
        Value::String(_) => Ok(value),
        other => Err(parse(format!("{field} must be a string, not {other}"))),
    }
}

/// The template-level fields both foreign formats share: name, version, description.
fn common(
    map: &mut Map<String, Value>,
    out: &mut Map<String, Value>,
    default_namespace: Option<&str>,
) -> Result<(), TemplateError> {
    let namespace = match (take(map, "namespace_name"), default_namespace) {
        (Some(ns), _) => string(ns, "namespace_name")?,
        (None, Some(default)) => Value::String(default.to_owned()),
        (None, None) => return Err(parse("namespace_name is missing")),
    };
    out.insert("namespace".into(), namespace);
    for key in ["name", "version", "description"] {
        if let Some(v) = take(map, key) {
            out.insert(key.into(), v);
        }
    }
    Ok(())
}

/// How one foreign format names a template's parts.
struct Keys {
    /// The namespace when the template names none (`None`: it must).
    default_namespace: Option<&'static str>,
    /// The key of the context's JSON Schema.
    schema: &'static str,
    /// The key of the step list.
    steps: &'static str,
    /// The key of the template's custom events.
    events: &'static str,
    /// The key of a step's custom events.
    step_events: &'static str,
}

/// A foreign list of custom events (`key` at `place`) mapped to the native `events`: each a
/// name, or a map of which `name`, `description` and `schema` are kept (the rest is warned
/// of: tasker-core's `condition`, `delivery_mode`, `publisher`).
fn events(
    value: Value,
    key: &str,
    place: &str,
    warnings: &mut Vec<String>,
) -> Result<Value, TemplateError> {
    let Value::Array(list) = value else {
        return Err(parse(format!("{place}: {key} must be a list of events")));
    };
    let mut out = Vec::with_capacity(list.len());
    for event in list {
        match event {
            Value::String(_) => out.push(event),
            Value::Object(mut written) => {
                let mut e = Map::new();
                for field in ["name", "description", "schema"] {
                    if let Some(v) = take(&mut written, field) {
                        e.insert(field.into(), v);
                    }
                }
                let name = e.get("name").cloned().unwrap_or(Value::Null);
                let at = format!("{place} {key} {name}");
                if let Some(condition) = take(&mut written, "condition") {
                    warnings.push(format!(
                        "{at}: condition {condition} is not used: the event is published when \
                         the handler calls step.publish"
                    ));
                }
                leftovers(written, &at, warnings);
                out.push(Value::Object(e));
            }
            other => {
                return Err(parse(format!(
                    "{place}: each of {key} must be a name or a map with name, not {other}"
                )))
            }
        }
    }
    Ok(Value::Array(out))
}

/// A foreign template mapped to the native format: the template's own fields, then each step's
/// name and description and what `step` maps of the rest (from the step's map to the native
/// step's, `place` naming the step); every key left over is a warning.
fn mapped(
    mut map: Map<String, Value>,
    keys: Keys,
    warnings: &mut Vec<String>,
    mut step: impl FnMut(
        &mut Map<String, Value>,
        &mut Map<String, Value>,
        &str,
        &mut Vec<String>,
    ) -> Result<(), TemplateError>,
) -> Result<Value, TemplateError> {
    let mut out = Map::new();
    common(&mut map, &mut out, keys.default_namespace)?;
    if let Some(schema) = take(&mut map, keys.schema) {
        out.insert("input_schema".into(), schema);
    }
    if let Some(declared) = take(&mut map, keys.events) {
        let declared = events(declared, keys.events, "the template", warnings)?;
        out.insert("events".into(), declared);
    }
    let Some(Value::Array(steps)) = take(&mut map, keys.steps) else {
        return Err(parse(format!("{} must be a list of steps", keys.steps)));
    };
    let mut native = Vec::with_capacity(steps.len());
    for written in steps {
        let Value::Object(mut written) = written else {
            return Err(parse(format!("each of {} must be a map", keys.steps)));
        };
        let mut s = Map::new();
        let name = take(&mut written, "name").unwrap_or(Value::Null);
        let place = format!("step {name}");
        s.insert("name".into(), name);
        if let Some(d) = take(&mut written, "description") {
            s.insert("description".into(), d);
        }
        if let Some(declared) = take(&mut written, keys.step_events) {
            let declared = events(declared, keys.step_events, &place, warnings)?;
            s.insert("events".into(), declared);
        }
        step(&mut written, &mut s, &place, warnings)?;
        leftovers(written, &place, warnings);
        native.push(Value::Object(s));
    }
    out.insert("steps".into(), Value::Array(native));
    leftovers(map, "the template", warnings);
    Ok(Value::Object(out))
}

/// A Rails Tasker template mapped to the native format.
fn rails(map: Map<String, Value>, warnings: &mut Vec<String>) -> Result<Value, TemplateError> {
    let keys = Keys {
        default_namespace: Some("default"),
        schema: "schema",
        steps: "step_templates",
        events: "custom_events",
        step_events: "custom_events",
    };
    mapped(map, keys, warnings, |step, s, _, _| {
        if let Some(h) = take(step, "handler_class") {
            s.insert("handler".into(), string(h, "handler_class")?);
        }
        if let Some(c) = take(step, "handler_config") {
            s.insert("config".into(), c);
        }
        let mut parents: Vec<Value> = Vec::new();
        if let Some(one) = take(step, "depends_on_step") {
            parents.push(string(one, "depends_on_step")?);
        }
        match take(step, "depends_on_steps") {
            Some(Value::Array(many)) => parents.extend(many),
            Some(other) => {
                return Err(parse(format!(
                    "depends_on_steps must be a list of step names, not {other}"
                )))
            }
            None => {}
        }
        let mut seen = std::collections::HashSet::new();
        parents.retain(|p| seen.insert(p.to_string()));
        if !parents.is_empty() {
            s.insert("depends_on".into(), Value::Array(parents));
        }
        let limit = take(step, "default_retry_limit");
        let attempts = match (take(step, "default_retryable"), limit) {
            (Some(Value::Bool(false)), _) => Some(Value::from(1)),
            // A limit of 0 meant "no retries": one attempt.
            (_, Some(limit)) if limit.as_u64() == Some(0) => Some(Value::from(1)),
            (_, Some(limit)) => Some(limit),
            _ => None,
        };
        if let Some(attempts) = attempts {
            s.insert(
                "retry".into(),
                serde_json::json!({ "max_attempts": attempts }),
            );
        }
        Ok(())
    })
}

/// A tasker-core template mapped to the native format.
fn tasker_core(
    map: Map<String, Value>,
    warnings: &mut Vec<String>,
) -> Result<Value, TemplateError> {
    let keys = Keys {
        default_namespace: None,
        schema: "input_schema",
        steps: "steps",
        events: "domain_events",
        step_events: "publishes_events",
    };
    mapped(map, keys, warnings, |step, s, place, warnings| {
        match take(step, "handler") {
            Some(Value::Object(mut handler)) => {
                if let Some(c) = take(&mut handler, "callable") {
                    s.insert("handler".into(), string(c, "handler.callable")?);
                }
                if let Some(init) = take(&mut handler, "initialization") {
                    s.insert("config".into(), init);
                }
                leftovers(handler, &format!("{place} handler"), warnings);
            }
            Some(other) => {
                return Err(parse(format!(
                    "{place}: handler must be a map with callable, not {other}"
                )))
            }
            None => {}
        }
        if let Some(deps) = take(step, "dependencies") {
            s.insert("depends_on".into(), deps);
        }
        // `standard`, `decision` and `deferred_convergence` mean here what they mean there.
        if let Some(kind) = take(step, "type") {
            s.insert("type".into(), kind);
        }
        if let Some(retry) = take(step, "retry") {
            s.insert("retry".into(), core_retry(retry, place, warnings)?);
        }
        if let Some(t) = take(step, "timeout_seconds") {
            let seconds = t
                .as_f64()
                .filter(|t| t.is_finite() && *t >= 0.0)
                .ok_or_else(|| parse(format!("{place}: timeout_seconds must be a number")))?;
            s.insert(
                "timeout_ms".into(),
                Value::from((seconds * 1000.0).round() as u64),
            );
        }
        Ok(())
    })
}

/// tasker-core's `retry` mapped to the native one.
fn core_retry(
    retry: Value,
    place: &str,
    warnings: &mut Vec<String>,
) -> Result<Value, TemplateError> {
    let Value::Object(mut retry) = retry else {
        return Err(parse(format!("{place}: retry must be a map")));
    };
    let mut out = Map::new();
    let attempts = take(&mut retry, "max_attempts").or_else(|| take(&mut retry, "limit"));
    let retryable = take(&mut retry, "retryable");
    match (retryable, attempts) {
        (Some(Value::Bool(false)), _) => {
            out.insert("max_attempts".into(), Value::from(1));
        }
        (_, Some(n)) => {
            // A limit of 0 meant "no retries": one attempt.
            let n = if n.as_u64() == Some(0) {
                Value::from(1)
            } else {
                n
            };
            out.insert("max_attempts".into(), n);
        }
        _ => {}
    }
    for (from, to) in [
        ("backoff", "backoff"),
        ("backoff_base_ms", "backoff_base_ms"),
        ("max_backoff_ms", "backoff_max_ms"),
    ] {
        if let Some(v) = take(&mut retry, from) {
            out.insert(to.into(), v);
        }
    }
    leftovers(retry, &format!("{place} retry"), warnings);
    Ok(Value::Object(out))
}
