//! Custom events a template declares: what a step's handler may publish with
//! `step.publish(name, payload)` (Rust: [`crate::Engine::publish_event`]).
//!
//! A template declares them for all its steps (native `events` at the top, tasker-core's
//! `domain_events`) or for one step (native `events` on the step, Rails Tasker's
//! `custom_events`, tasker-core's `publishes_events`). Each is a name (`order.shipped`), or
//! `{name, description, schema}` where `schema` is a JSON Schema every payload must satisfy.
//! The names `task.*` and `step.*` are the engine's own and cannot be declared.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::{TemplateError, MAX_NAME_LEN};

/// The most custom events one template or one step declares.
pub const MAX_EVENTS: usize = 100;

/// One declared custom event, as written: `order.shipped`, or
/// `{ name: order.shipped, description: …, schema: {…} }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventDecl {
    /// The event's name, as subscribers see it.
    pub name: String,
    /// What the event means, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON Schema (draft 7 or 2020-12) each payload must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
}

impl EventDecl {
    /// An event declared by name alone.
    pub fn named(name: impl Into<String>) -> Self {
        EventDecl {
            name: name.into(),
            description: None,
            schema: None,
        }
    }
}

impl From<&str> for EventDecl {
    fn from(name: &str) -> Self {
        EventDecl::named(name)
    }
}

impl From<String> for EventDecl {
    fn from(name: String) -> Self {
        EventDecl::named(name)
    }
}

impl<'de> Deserialize<'de> for EventDecl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            name: String,
            #[serde(default)]
            description: Option<String>,
            #[serde(default)]
            schema: Option<Value>,
        }
        match Value::deserialize(deserializer)? {
            Value::String(name) => Ok(EventDecl::named(name)),
            map @ Value::Object(_) => {
                let full: Full = serde_json::from_value(map).map_err(serde::de::Error::custom)?;
                Ok(EventDecl {
                    name: full.name,
                    description: full.description,
                    schema: full.schema,
                })
            }
            other => Err(serde::de::Error::custom(format!(
                "an event is a name or a map with `name` (and `description`, `schema`), not {other}"
            ))),
        }
    }
}

/// The custom events one step may publish: its own and its template's, each with its compiled
/// payload schema.
#[derive(Debug, Default)]
pub struct DeclaredEvents {
    events: HashMap<Arc<str>, Option<Arc<jsonschema::Validator>>>,
}

impl DeclaredEvents {
    /// Whether the step may publish `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.events.contains_key(name)
    }

    /// The names the step may publish, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.events.keys().map(|n| &**n).collect();
        names.sort_unstable();
        names
    }

    /// Whether nothing is declared.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Why `payload` may not be published as `name`: the event is not declared (the message
    /// lists those that are), or the payload breaks its schema (each failing place named);
    /// `None` when it may.
    pub fn refusal(&self, name: &str, payload: &Value) -> Option<String> {
        let Some(schema) = self.events.get(name) else {
            let declared = self.names();
            return Some(if declared.is_empty() {
                format!("the event {name:?} is not declared: this step declares no custom events")
            } else {
                format!(
                    "the event {name:?} is not declared for this step; it may publish: {}",
                    declared.join(", ")
                )
            });
        };
        let failures: Vec<String> = schema
            .as_ref()?
            .iter_errors(payload)
            .map(|e| {
                let path = e.instance_path().to_string();
                let at = if path.is_empty() {
                    "(the payload)".into()
                } else {
                    path
                };
                format!("{at}: {e}")
            })
            .collect();
        (!failures.is_empty()).then(|| {
            format!(
                "the payload of {name:?} breaks its schema: {}",
                failures.join("; ")
            )
        })
    }
}

/// Compiles the events of one scope (`step` names the step, `None` the template's), checked:
/// names well formed, not the engine's own, none twice; schemas valid.
fn compile_scope(
    decls: &[EventDecl],
    step: Option<&str>,
    into: &mut HashMap<Arc<str>, Option<Arc<jsonschema::Validator>>>,
) -> Result<(), TemplateError> {
    let invalid = |event: &str, message: String| TemplateError::InvalidEvent {
        step: step.map(str::to_owned),
        event: event.to_owned(),
        message,
    };
    if decls.len() > MAX_EVENTS {
        return Err(invalid(
            &decls[MAX_EVENTS].name,
            format!("more than {MAX_EVENTS} events are declared here"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for decl in decls {
        let name = decl.name.as_str();
        if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
            return Err(invalid(
                name,
                format!("an event name has 1 to {MAX_NAME_LEN} characters"),
            ));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._:-/".contains(*c)))
        {
            return Err(invalid(
                name,
                format!("{c:?} is not allowed (letters, digits and . _ : - / are)"),
            ));
        }
        if name.starts_with("task.") || name.starts_with("step.") {
            return Err(invalid(
                name,
                "the names task.* and step.* are the engine's own events".into(),
            ));
        }
        if !seen.insert(name) {
            return Err(invalid(name, "declared twice".into()));
        }
        let schema = decl
            .schema
            .as_ref()
            .map(|schema| {
                jsonschema::validator_for(schema)
                    .map(Arc::new)
                    .map_err(|e| invalid(name, format!("its schema is not valid: {e}")))
            })
            .transpose()?;
        // A step's own declaration replaces the template's of the same name.
        into.insert(Arc::from(name), schema);
    }
    Ok(())
}

/// The events of a template (`template`) and of each of its steps (`steps`, with their names):
/// for each step, what it may publish. Steps that declare none of their own share one set.
pub(super) fn compile(
    template: &[EventDecl],
    steps: &[(&str, &[EventDecl])],
) -> Result<Vec<Arc<DeclaredEvents>>, TemplateError> {
    let mut shared = HashMap::new();
    compile_scope(template, None, &mut shared)?;
    let shared = Arc::new(DeclaredEvents { events: shared });
    steps
        .iter()
        .map(|(step, own)| {
            if own.is_empty() {
                return Ok(shared.clone());
            }
            let mut events = shared.events.clone();
            compile_scope(own, Some(step), &mut events)?;
            Ok(Arc::new(DeclaredEvents { events }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn decls(value: Value) -> Vec<EventDecl> {
        serde_json::from_value(value).expect("declarations")
    }

    #[test]
    fn a_step_may_publish_its_own_events_and_its_template_s() {
        let template = decls(json!(["order.placed"]));
        let own = decls(json!([{"name": "payment.taken", "description": "money in"}]));
        let sets = compile(&template, &[("pay", &own), ("ship", &[])]).unwrap();
        assert_eq!(sets[0].names(), ["order.placed", "payment.taken"]);
        assert_eq!(sets[1].names(), ["order.placed"]);
        assert!(sets[1].refusal("order.placed", &json!({})).is_none());
        let refused = sets[1].refusal("payment.taken", &json!({})).unwrap();
        assert!(refused.contains("order.placed"), "{refused}");
    }

    #[test]
    fn a_payload_is_checked_against_its_schema() {
        let own = decls(json!([{
            "name": "payment.taken",
            "schema": {"type": "object", "required": ["amount"],
                       "properties": {"amount": {"type": "number"}}}
        }]));
        let sets = compile(&[], &[("pay", &own)]).unwrap();
        assert!(sets[0]
            .refusal("payment.taken", &json!({"amount": 3}))
            .is_none());
        let refused = sets[0]
            .refusal("payment.taken", &json!({"amount": "three"}))
            .unwrap();
        assert!(refused.contains("/amount"), "{refused}");
        let refused = sets[0].refusal("payment.taken", &json!({})).unwrap();
        assert!(refused.contains("amount"), "{refused}");
    }

    #[test]
    fn bad_declarations_are_refused_naming_the_event() {
        for (value, expected) in [
            (json!(["step.completed"]), "engine's own"),
            (json!(["a b"]), "not allowed"),
            (json!([""]), "1 to"),
            (json!(["x", "x"]), "declared twice"),
            (
                json!([{"name": "x", "schema": {"type": 5}}]),
                "schema is not valid",
            ),
        ] {
            let own = decls(value);
            let e = compile(&[], &[("s", &own)]).unwrap_err();
            assert!(e.to_string().contains(expected), "{e}");
        }
        let e = serde_json::from_value::<Vec<EventDecl>>(json!([{"name": "x", "when": 1}]))
            .unwrap_err();
        assert!(e.to_string().contains("when"), "{e}");
        let e = serde_json::from_value::<Vec<EventDecl>>(json!([3])).unwrap_err();
        assert!(e.to_string().contains("a name or a map"), "{e}");
    }
}
