//! The task and step state machines, as pure transition functions, and the transition record
//! that forms the audit trail.
//!
//! An illegal transition is an [`InvalidTransition`] error, never a silent no-op.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::ids::TaskId;

macro_rules! string_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        $vis enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            /// The stable snake_case name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownName { kind: stringify!($name), name: s.to_owned() }),
                }
            }
        }
    };
}

/// A name that is not one of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {name:?}")]
pub struct UnknownName {
    /// The enum's name.
    pub kind: &'static str,
    /// The offending text.
    pub name: String,
}

string_enum! {
    /// The state of a task.
    pub enum TaskState {
        /// Created; no step has been claimed yet.
        Pending => "pending",
        /// At least one step has been claimed.
        InProgress => "in_progress",
        /// Every step completed, was resolved manually, or was skipped by design.
        Complete => "complete",
        /// A step failed for good and nothing else can still run.
        Error => "error",
        /// Cancelled by an operator.
        Cancelled => "cancelled",
        /// Paused by an operator: nothing is handed out until it is resumed.
        Paused => "paused",
        /// An operator closed the failed task by hand.
        ResolvedManually => "resolved_manually",
    }
}

string_enum! {
    /// The state of a step.
    pub enum StepState {
        /// Not running; claimable once its parents allow it.
        Pending => "pending",
        /// Claimed by a worker that holds a lease on it.
        InProgress => "in_progress",
        /// The handler returned a result.
        Complete => "complete",
        /// The handler failed and no attempt is left (or the error was permanent).
        Error => "error",
        /// Failed with attempts left; becomes pending when its backoff has elapsed.
        WaitingForRetry => "waiting_for_retry",
        /// Cancelled with its task.
        Cancelled => "cancelled",
        /// Will not run: a parent it requires to succeed failed for good.
        Skipped => "skipped",
        /// An operator supplied its result.
        ResolvedManually => "resolved_manually",
        /// Its handler started child tasks; it completes when they have (or fails when one
        /// failed). It holds no lease meanwhile.
        WaitingForChildren => "waiting_for_children",
    }
}

string_enum! {
    /// What happens to a task.
    pub enum TaskEvent {
        /// The task was created.
        Create => "create",
        /// Its first step was claimed.
        Start => "start",
        /// Every step has finished well (possibly after an operator resolved the failed ones).
        Complete => "complete",
        /// A step failed for good and nothing else can run.
        Fail => "fail",
        /// An operator cancelled it.
        Cancel => "cancel",
        /// An operator paused it.
        Pause => "pause",
        /// An operator resumed it.
        Resume => "resume",
        /// An operator asked for its failed steps to run again.
        Retry => "retry",
        /// An operator closed the failed task by hand.
        ResolveManually => "resolve_manually",
        /// Its template's `deadline_ms` passed before it finished.
        DeadlineExceeded => "deadline_exceeded",
    }
}

string_enum! {
    /// What happens to a step.
    pub enum StepEvent {
        /// A worker claimed it.
        Claim => "claim",
        /// Its handler returned a result.
        Complete => "complete",
        /// Its handler failed.
        Fail => "fail",
        /// Its lease expired before it was completed or heartbeated.
        LeaseExpired => "lease_expired",
        /// A failed step with attempts left waits for its backoff.
        ScheduleRetry => "schedule_retry",
        /// Its backoff has elapsed.
        RetryDue => "retry_due",
        /// A parent it requires to succeed failed for good.
        Skip => "skip",
        /// Its task was cancelled.
        Cancel => "cancel",
        /// An operator supplied its result.
        ResolveManually => "resolve_manually",
        /// An operator retry gave it a fresh attempt budget.
        Reset => "reset",
        /// Its worker stopped before running it to the end and gave it back: pending again,
        /// the attempt not counted.
        Release => "release",
        /// A batch worker step's instances were released: it runs as they do.
        Expand => "expand",
        /// Its handler started child tasks: it waits for them.
        AwaitChildren => "await_children",
    }
}

/// An event that the state machine does not allow in the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {event} a {entity} that is {from}")]
pub struct InvalidTransition {
    /// `"task"` or `"step"`.
    pub entity: &'static str,
    /// The current state.
    pub from: &'static str,
    /// The refused event.
    pub event: &'static str,
}

impl TaskState {
    /// The state after `event`, or the refusal.
    ///
    /// ```
    /// use tasker_core::state::{TaskEvent, TaskState};
    /// assert_eq!(TaskState::Pending.next(TaskEvent::Start), Ok(TaskState::InProgress));
    /// assert!(TaskState::Complete.next(TaskEvent::Pause).is_err());
    /// ```
    pub fn next(self, event: TaskEvent) -> Result<TaskState, InvalidTransition> {
        use TaskEvent as E;
        use TaskState as S;
        let to = match (self, event) {
            (S::Pending, E::Start) => S::InProgress,
            (S::Pending | S::InProgress | S::Error, E::Complete) => S::Complete,
            (S::Pending | S::InProgress, E::Fail) => S::Error,
            (S::Pending | S::InProgress | S::Paused, E::DeadlineExceeded) => S::Error,
            (S::Pending | S::InProgress | S::Paused | S::Error, E::Cancel) => S::Cancelled,
            (S::Pending | S::InProgress, E::Pause) => S::Paused,
            (S::Paused, E::Resume) => S::InProgress,
            (S::Error, E::Retry) => S::InProgress,
            (S::Error, E::ResolveManually) => S::ResolvedManually,
            _ => {
                return Err(InvalidTransition {
                    entity: "task",
                    from: self.as_str(),
                    event: event.as_str(),
                })
            }
        };
        Ok(to)
    }

    /// No step of the task will be handed out again without an operator.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            TaskState::Complete
                | TaskState::Error
                | TaskState::Cancelled
                | TaskState::ResolvedManually
        )
    }

    /// Steps of the task may be claimed.
    pub fn is_runnable(self) -> bool {
        matches!(self, TaskState::Pending | TaskState::InProgress)
    }
}

impl StepState {
    /// The state after `event`, or the refusal.
    ///
    /// ```
    /// use tasker_core::state::{StepEvent, StepState};
    /// assert_eq!(StepState::Pending.next(StepEvent::Claim), Ok(StepState::InProgress));
    /// assert!(StepState::Complete.next(StepEvent::Fail).is_err());
    /// ```
    pub fn next(self, event: StepEvent) -> Result<StepState, InvalidTransition> {
        use StepEvent as E;
        use StepState as S;
        let to = match (self, event) {
            (S::Pending, E::Claim) => S::InProgress,
            (S::InProgress | S::WaitingForChildren, E::Complete) => S::Complete,
            (S::InProgress, E::Fail | E::LeaseExpired) => S::Error,
            (S::WaitingForChildren, E::Fail) => S::Error,
            (S::InProgress, E::AwaitChildren) => S::WaitingForChildren,
            (S::Error, E::ScheduleRetry) => S::WaitingForRetry,
            (S::WaitingForRetry, E::RetryDue) => S::Pending,
            (S::Pending | S::WaitingForRetry, E::Skip) => S::Skipped,
            (S::Pending, E::Expand) => S::InProgress,
            (
                S::Pending | S::InProgress | S::WaitingForRetry | S::WaitingForChildren,
                E::Cancel,
            ) => S::Cancelled,
            (
                S::Pending
                | S::InProgress
                | S::WaitingForChildren
                | S::WaitingForRetry
                | S::Error
                | S::Skipped
                | S::Cancelled,
                E::ResolveManually,
            ) => S::ResolvedManually,
            (S::Error | S::Skipped | S::Cancelled, E::Reset) => S::Pending,
            (S::InProgress, E::Release) => S::Pending,
            _ => {
                return Err(InvalidTransition {
                    entity: "step",
                    from: self.as_str(),
                    event: event.as_str(),
                })
            }
        };
        Ok(to)
    }

    /// The step will not run again without an operator (its children may look at it).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            StepState::Complete
                | StepState::Error
                | StepState::Cancelled
                | StepState::Skipped
                | StepState::ResolvedManually
        )
    }

    /// The step finished with a result its children can use.
    pub fn is_success(self) -> bool {
        matches!(self, StepState::Complete | StepState::ResolvedManually)
    }
}

/// What changed in one recorded transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The task's own state.
    Task {
        /// The state before; `None` when the task was created.
        from: Option<TaskState>,
        /// The state after.
        to: TaskState,
        /// What caused it.
        event: TaskEvent,
    },
    /// A step's state.
    Step {
        /// The step's index in the template.
        index: u32,
        /// The state before.
        from: StepState,
        /// The state after.
        to: StepState,
        /// What caused it.
        event: StepEvent,
    },
}

/// One entry of the audit trail.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The task.
    pub task_id: TaskId,
    /// What changed.
    pub change: Change,
    /// The step's name, for step transitions.
    pub step_name: Option<Arc<str>>,
    /// Why, in words (an error message, "lease expired", an operator's note).
    pub reason: Option<String>,
    /// The step's attempt number at the time (0 for task transitions).
    pub attempt: u32,
    /// When.
    pub at: Timestamp,
    /// What the observers of transitions (metrics, traces) need of the task: set by the store
    /// that recorded the transition.
    pub task: Option<Arc<TaskOf>>,
    /// For a step transition, when the state it leaves began, where the store knows it: for a
    /// claim, when the step became claimable; for the end of an attempt, when the attempt
    /// began.
    pub since: Option<Timestamp>,
}

/// A task as the observers of its transitions see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOf {
    /// Its template's namespace.
    pub namespace: Arc<str>,
    /// Its template's name.
    pub name: Arc<str>,
    /// When it was created.
    pub created_at: Timestamp,
    /// Its trace context (`None` for a task stored without one).
    pub trace: Option<crate::trace::TaskTrace>,
    /// Its template's webhooks (see [`crate::webhooks`]).
    pub webhooks: Arc<[Arc<crate::webhooks::Webhook>]>,
}

impl Transition {
    /// A task transition.
    pub fn task(
        task_id: TaskId,
        from: Option<TaskState>,
        to: TaskState,
        event: TaskEvent,
        at: Timestamp,
    ) -> Self {
        Transition {
            task_id,
            change: Change::Task { from, to, event },
            step_name: None,
            reason: None,
            attempt: 0,
            at,
            task: None,
            since: None,
        }
    }

    /// A step transition.
    pub fn step(
        task_id: TaskId,
        index: u32,
        name: &Arc<str>,
        (from, to): (StepState, StepState),
        event: StepEvent,
        attempt: u32,
        at: Timestamp,
    ) -> Self {
        Transition {
            task_id,
            change: Change::Step {
                index,
                from,
                to,
                event,
            },
            step_name: Some(name.clone()),
            reason: None,
            attempt,
            at,
            task: None,
            since: None,
        }
    }

    /// The same transition with a reason.
    pub fn because(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// The lifecycle event name this transition publishes.
    pub fn event_name(&self) -> &'static str {
        use crate::events::names as n;
        match self.change {
            Change::Task { event, .. } => match event {
                TaskEvent::Create => n::TASK_CREATED,
                TaskEvent::Start => n::TASK_STARTED,
                TaskEvent::Complete => n::TASK_COMPLETED,
                TaskEvent::Fail => n::TASK_FAILED,
                TaskEvent::Cancel => n::TASK_CANCELLED,
                TaskEvent::Pause => n::TASK_PAUSED,
                TaskEvent::Resume => n::TASK_RESUMED,
                TaskEvent::Retry => n::TASK_RETRIED,
                TaskEvent::ResolveManually => n::TASK_RESOLVED_MANUALLY,
                TaskEvent::DeadlineExceeded => n::TASK_FAILED,
            },
            Change::Step { event, .. } => match event {
                StepEvent::Claim => n::STEP_CLAIMED,
                StepEvent::Complete => n::STEP_COMPLETED,
                StepEvent::Fail => n::STEP_FAILED,
                StepEvent::LeaseExpired => n::STEP_LEASE_EXPIRED,
                StepEvent::ScheduleRetry => n::STEP_RETRY_SCHEDULED,
                StepEvent::RetryDue => n::STEP_READY,
                StepEvent::Skip => n::STEP_SKIPPED,
                StepEvent::Cancel => n::STEP_CANCELLED,
                StepEvent::ResolveManually => n::STEP_RESOLVED_MANUALLY,
                StepEvent::Reset => n::STEP_RETRIED,
                StepEvent::Release => n::STEP_RELEASED,
                StepEvent::Expand => n::STEP_EXPANDED,
                StepEvent::AwaitChildren => n::STEP_WAITING_FOR_CHILDREN,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn happy_path_of_a_step() {
        let s = StepState::Pending.next(StepEvent::Claim).unwrap();
        assert_eq!(s.next(StepEvent::Complete), Ok(StepState::Complete));
    }

    #[test]
    fn a_failed_step_with_attempts_left_waits_then_becomes_pending() {
        let s = StepState::InProgress.next(StepEvent::Fail).unwrap();
        let s = s.next(StepEvent::ScheduleRetry).unwrap();
        assert_eq!(s, StepState::WaitingForRetry);
        assert_eq!(s.next(StepEvent::RetryDue), Ok(StepState::Pending));
    }

    #[test]
    fn completing_a_step_that_is_not_running_is_refused() {
        let err = StepState::Pending.next(StepEvent::Complete).unwrap_err();
        assert_eq!(err.to_string(), "cannot complete a step that is pending");
        assert!(StepState::WaitingForRetry
            .next(StepEvent::Complete)
            .is_err());
    }

    #[test]
    fn finished_tasks_cannot_be_paused_or_resumed() {
        for s in [
            TaskState::Complete,
            TaskState::Cancelled,
            TaskState::ResolvedManually,
        ] {
            assert!(s.next(TaskEvent::Pause).is_err());
            assert!(s.next(TaskEvent::Resume).is_err());
        }
    }

    #[test]
    fn only_failed_tasks_can_be_retried() {
        for s in TaskState::ALL {
            assert_eq!(s.next(TaskEvent::Retry).is_ok(), *s == TaskState::Error);
        }
    }

    #[test]
    fn names_round_trip() {
        for s in StepState::ALL {
            assert_eq!(s.as_str().parse::<StepState>(), Ok(*s));
        }
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>(), Ok(*s));
        }
        assert!("done".parse::<TaskState>().is_err());
    }

    fn step_event() -> impl Strategy<Value = StepEvent> {
        proptest::sample::select(StepEvent::ALL)
    }
    fn task_event() -> impl Strategy<Value = TaskEvent> {
        proptest::sample::select(TaskEvent::ALL)
    }

    proptest! {
        #[test]
        fn a_completed_step_accepts_no_event(event in step_event()) {
            prop_assert!(StepState::Complete.next(event).is_err());
        }

        #[test]
        fn a_step_reaches_in_progress_only_by_a_claim_or_an_expansion_from_pending(
            events in proptest::collection::vec(step_event(), 0..40)
        ) {
            let mut s = StepState::Pending;
            for e in events {
                if let Ok(to) = s.next(e) {
                    if to == StepState::InProgress {
                        prop_assert_eq!(s, StepState::Pending);
                        prop_assert!(matches!(e, StepEvent::Claim | StepEvent::Expand));
                    }
                    s = to;
                }
            }
        }

        #[test]
        fn a_step_can_always_be_resolved_or_has_succeeded(
            events in proptest::collection::vec(step_event(), 0..40)
        ) {
            let mut s = StepState::Pending;
            for e in events {
                s = s.next(e).unwrap_or(s);
                let resolvable = s.next(StepEvent::ResolveManually).is_ok();
                prop_assert!(resolvable || s.is_success());
            }
        }

        #[test]
        fn cancelled_and_complete_tasks_stay_put(
            events in proptest::collection::vec(task_event(), 0..40)
        ) {
            for start in [TaskState::Complete, TaskState::Cancelled] {
                let mut s = start;
                for e in &events {
                    s = s.next(*e).unwrap_or(s);
                }
                prop_assert_eq!(s, start);
            }
        }
    }
}
