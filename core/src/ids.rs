//! Identifiers of tasks and steps.
//!
//! A task is named by a UUIDv7 (time-ordered, so ids sort by creation). A step is named by its
//! task and its index in the task's template, which every store can resolve without a lookup
//! table. Both print and parse as plain strings (`"0190…"`, `"0190…/3"`) for the bindings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// The id of one task (one run of a template).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub Uuid);

impl TaskId {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        TaskId(Uuid::now_v7())
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A string that is not a valid task or step id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id {value:?}")]
pub struct InvalidId {
    /// `"task"` or `"step"`.
    pub kind: &'static str,
    /// The offending text.
    pub value: String,
}

impl FromStr for TaskId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(TaskId).map_err(|_| InvalidId {
            kind: "task",
            value: s.to_owned(),
        })
    }
}

/// The id of one step of one task: the task and the step's index in its template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StepId {
    /// The task the step belongs to.
    pub task: TaskId,
    /// The step's position in the template's `steps` list.
    pub index: u32,
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.task, self.index)
    }
}

impl FromStr for StepId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidId {
            kind: "step",
            value: s.to_owned(),
        };
        let (task, index) = s.split_once('/').ok_or_else(bad)?;
        Ok(StepId {
            task: task.parse().map_err(|_| bad())?,
            index: index.parse().map_err(|_| bad())?,
        })
    }
}

macro_rules! string_serde {
    ($ty:ty) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
string_serde!(TaskId);
string_serde!(StepId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_strings() {
        let step = StepId {
            task: TaskId::new(),
            index: 7,
        };
        assert_eq!(step.to_string().parse::<StepId>(), Ok(step));
        assert_eq!(step.task.to_string().parse::<TaskId>(), Ok(step.task));
    }

    #[test]
    fn malformed_ids_are_refused_with_their_text() {
        let err = "nope".parse::<TaskId>().unwrap_err();
        assert_eq!(err.value, "nope");
        assert!("x/1".parse::<StepId>().is_err());
        let task = TaskId::new();
        assert!(format!("{task}/-1").parse::<StepId>().is_err());
    }
}
