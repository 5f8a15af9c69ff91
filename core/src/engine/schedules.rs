//! Durable cron schedules: registered in the store, fired by whichever engine looks first (every
//! worker looks every second); each tick makes one task, keyed by the tick, so that engines
//! firing the same tick make one task between them, and moving a schedule on to its next tick
//! only succeeds for the engine whose view of it was current.

use std::time::Duration;

use super::Engine;
use crate::error::Result;
use crate::schedule::{tick_key, Overlap, ScheduleSpec, ScheduleView};
use crate::store::NewTask;

/// How often a worker fires the schedules that fell due.
pub(crate) const SCHEDULE_EVERY: Duration = Duration::from_secs(1);

impl Engine {
    /// Registers (or replaces) a durable cron schedule: each tick of `spec.cron` in
    /// `spec.timezone` creates one task of `spec.namespace/spec.template` with `spec.context`,
    /// however many engines share the store, its idempotency key `schedule:<name>:<tick>`.
    /// [`crate::Error::InvalidArgument`] for a bad name, cron expression, time zone or
    /// context; the template must exist (and the context satisfy its `input_schema`). The
    /// first tick is the first after now — unless the same spec was registered before (an app
    /// registering its schedules as it starts): then its next tick is kept, and the ticks
    /// missed while no engine ran are made as after any downtime.
    pub async fn schedule(&self, spec: ScheduleSpec) -> Result<ScheduleView> {
        let ticks = spec.ticks()?;
        // Checked here, not in `ticks` (which also reads stored schedules back).
        if spec.name.chars().any(char::is_control) {
            return Err(crate::Error::InvalidArgument(format!(
                "a schedule's name must not hold a control character (NUL, line break, …): {:?}",
                spec.name
            )));
        }
        let probe = NewTask {
            version: spec.version.clone(),
            context: spec.context.clone(),
            ..NewTask::new(spec.namespace.clone(), spec.template.clone())
        };
        self.checked(&probe).await?;
        let now = self.now();
        let next_at = ticks.next_after(now);
        if next_at.is_none() {
            return Err(crate::Error::InvalidArgument(format!(
                "schedule {:?}: the cron expression {:?} matches no time to come (such as \
                 February 30th)",
                spec.name,
                crate::limits::message(spec.cron.clone())
            )));
        }
        let store = self.store()?;
        store.save_schedule(&spec, next_at, now).await?;
        let saved = store.schedules(None).await?;
        Ok(saved
            .into_iter()
            .find(|s| s.spec.name == spec.name)
            .unwrap_or(ScheduleView {
                spec,
                next_at,
                last_task: None,
                created_at: now,
            }))
    }

    /// Removes schedule `name`; whether there was one. Tasks it made are left alone.
    pub async fn unschedule(&self, name: &str) -> Result<bool> {
        self.store()?.delete_schedule(name).await
    }

    /// Every schedule, by name.
    pub async fn schedules(&self) -> Result<Vec<ScheduleView>> {
        self.store()?.schedules(None).await
    }

    /// Fires the ticks that fell due (each schedule's, up to
    /// [`crate::schedule::MAX_CATCH_UP`] of them when its engines were down, only the latest
    /// under `overlap: skip`): one task per tick, unless the schedule's `overlap` is `skip` and
    /// the task of its last tick has not finished; returns how many tasks this call created.
    /// A tick whose task the store could not create is not passed (an `Err`, once the other
    /// schedules fired: the next call makes it). Workers call it every second.
    pub async fn fire_schedules(&self) -> Result<usize> {
        let store = self.store()?;
        let now = self.now();
        let mut made = 0;
        let mut failed = None;
        'schedules: for schedule in store.schedules(Some(now)).await? {
            let name = &schedule.spec.name;
            let Some(first) = schedule.next_at else {
                continue;
            };
            let ticks = match schedule.spec.ticks() {
                Ok(ticks) => ticks,
                Err(e) => {
                    tracing::warn!(schedule = %name, error = %e, "a schedule cannot be read");
                    continue;
                }
            };
            let (mut due, next) = ticks.due(first, now);
            if schedule.spec.overlap == Overlap::Skip {
                // Catching up: one task, for the latest tick (the others would overlap it).
                due.drain(..due.len().saturating_sub(1));
            }
            let mut last = schedule.last_task;
            let mut made_last = None;
            for tick in due {
                if schedule.spec.overlap == Overlap::Skip {
                    if let Some(previous) = last {
                        let running = store
                            .task_states(&[previous])
                            .await?
                            .first()
                            .is_some_and(|(_, s)| !s.is_finished());
                        if running {
                            tracing::info!(schedule = %name, %tick, "tick skipped: the last one's task still runs");
                            continue;
                        }
                    }
                }
                let task = NewTask {
                    version: schedule.spec.version.clone(),
                    context: schedule.spec.context.clone(),
                    idempotency_key: Some(tick_key(name, tick)),
                    ..NewTask::new(
                        schedule.spec.namespace.clone(),
                        schedule.spec.template.clone(),
                    )
                };
                match self.create_checked(task).await {
                    Ok((id, created)) => {
                        last = Some(id);
                        made_last = Some(id);
                        made += usize::from(created);
                    }
                    Err(e @ crate::error::Error::Closed) => return Err(e),
                    // Not moved on: the next firing makes it (its key makes it once). The other
                    // schedules still fire: one the store refuses must not stop them.
                    Err(e @ crate::error::Error::Store(_)) => {
                        tracing::warn!(schedule = %name, %tick, error = %e, "a scheduled task could not be written; the next firing tries again");
                        failed = Some(e);
                        continue 'schedules;
                    }
                    Err(e) => {
                        tracing::warn!(schedule = %name, %tick, error = %e, "a scheduled task could not be created; the tick is skipped");
                    }
                }
            }
            store
                .advance_schedule(name, first, next, made_last, now)
                .await?;
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(made),
        }
    }
}
