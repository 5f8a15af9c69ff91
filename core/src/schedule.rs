//! Durable cron schedules: what a schedule is, and when it ticks (pure; the engine fires the
//! ticks that fell due, see [`crate::Engine::fire_schedules`]).
//!
//! A schedule's `cron` has 5 fields (minute, hour, day of month, month, day of week) or 6 with
//! seconds first, read by the `croner` crate; its ticks are computed in its `timezone` (an IANA
//! name such as `Europe/Paris`, by `chrono-tz`), so that `0 9 * * *` is 09:00 there across
//! daylight-saving changes. Each tick creates one task, keyed `schedule:<name>:<tick>`, so that
//! however many engines fire the same tick, one task is made.

use std::str::FromStr;

use chrono::{SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::ids::TaskId;

/// The prefix of the idempotency keys of scheduled tasks, which callers may not use.
pub const SCHEDULE_KEY_PREFIX: &str = "schedule:";

/// The most ticks one firing creates for a schedule that fell behind (its engines were down):
/// older ones are skipped.
pub const MAX_CATCH_UP: usize = 100;

/// What a tick does while the task of the tick before is still running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// The tick makes no task.
    #[default]
    Skip,
    /// The tick makes its task anyway.
    Allow,
}

impl FromStr for Overlap {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "skip" => Ok(Overlap::Skip),
            "allow" => Ok(Overlap::Allow),
            other => Err(Error::InvalidArgument(format!(
                "overlap must be \"skip\" or \"allow\", not {other:?}"
            ))),
        }
    }
}

impl Overlap {
    /// `skip` or `allow`.
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::Allow => "allow",
        }
    }
}

/// A schedule as registered with [`crate::Engine::schedule`]; as JSON (what the C binding
/// reads), its fields by name, `version`, `context`, `timezone` and `overlap` optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Its name, unique in the store.
    pub name: String,
    /// The cron expression.
    pub cron: String,
    /// The template's namespace.
    pub namespace: String,
    /// The template's name.
    pub template: String,
    /// The template version (`None`: the newest at each tick).
    #[serde(default)]
    pub version: Option<String>,
    /// Each task's context (`{}` when left out).
    #[serde(default = "empty_object")]
    pub context: Value,
    /// The IANA time zone the cron expression is read in (`UTC` when left out).
    #[serde(default = "utc")]
    pub timezone: String,
    /// What a tick does while the previous tick's task still runs (`skip` when left out).
    #[serde(default)]
    pub overlap: Overlap,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

fn utc() -> String {
    "UTC".to_owned()
}

impl ScheduleSpec {
    /// The schedule the bindings' `schedule(name, cron, namespace, template, context=None,
    /// timezone="UTC", overlap="skip", version=None)` describes.
    #[allow(clippy::too_many_arguments)] // the keyword arguments of the bindings
    pub fn from_args(
        name: String,
        cron: String,
        namespace: String,
        template: String,
        context: Option<Value>,
        timezone: Option<String>,
        overlap: Option<&str>,
        version: Option<String>,
    ) -> Result<Self> {
        Ok(ScheduleSpec {
            context: context.unwrap_or_else(empty_object),
            timezone: timezone.unwrap_or_else(utc),
            overlap: overlap.map(str::parse).transpose()?.unwrap_or_default(),
            version,
            ..ScheduleSpec::new(name, cron, namespace, template)
        })
    }

    /// A schedule of `template` in `namespace` on `cron`, in UTC, with an empty context and
    /// overlapping ticks skipped.
    pub fn new(
        name: impl Into<String>,
        cron: impl Into<String>,
        namespace: impl Into<String>,
        template: impl Into<String>,
    ) -> Self {
        ScheduleSpec {
            name: name.into(),
            cron: cron.into(),
            namespace: namespace.into(),
            template: template.into(),
            version: None,
            context: empty_object(),
            timezone: utc(),
            overlap: Overlap::Skip,
        }
    }

    /// Its ticks, or [`Error::InvalidArgument`] naming what is wrong (the name, the cron
    /// expression, the time zone).
    pub fn ticks(&self) -> Result<Ticks> {
        if self.name.is_empty() || self.name.len() > 200 {
            return Err(Error::InvalidArgument(
                "a schedule's name must be 1 to 200 bytes long".to_owned(),
            ));
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(&self.cron)
            .map_err(|e| {
                Error::InvalidArgument(format!(
                    "schedule {:?}: the cron expression {:?} is not valid (5 fields, or 6 with \
                     seconds first): {e}",
                    self.name,
                    crate::limits::message(self.cron.clone())
                ))
            })?;
        let zone: chrono_tz::Tz = self.timezone.parse().map_err(|_| {
            Error::InvalidArgument(format!(
                "schedule {:?}: {:?} is not an IANA time zone (such as UTC or Europe/Paris)",
                self.name,
                crate::limits::message(self.timezone.clone())
            ))
        })?;
        Ok(Ticks { cron, zone })
    }
}

/// When a schedule ticks.
#[derive(Debug, Clone)]
pub struct Ticks {
    cron: croner::Cron,
    zone: chrono_tz::Tz,
}

impl Ticks {
    /// The first tick after `at`, if there is one (always later than `at`). Where the clocks
    /// go back and an hour is repeated, a schedule of several times a day ticks in both passes
    /// of it (`0 * * * *` in New York on the first Sunday of November: 05:00, 06:00 and 07:00
    /// UTC), a schedule of one time a day once, at the first.
    pub fn next_after(&self, at: Timestamp) -> Option<Timestamp> {
        let plain = self.next_local_after(at);
        // The search runs on local times: from `at`, the repeated hour's second pass lies
        // behind it. Near such a change, the ticks from an hour before are looked through for
        // the earliest after `at`.
        let hour = chrono::TimeDelta::hours(1);
        let horizon = plain.map_or(at + hour * 2, |p| p.min(at + hour * 2));
        let offset = |t: Timestamp| {
            use chrono::Offset;
            t.with_timezone(&self.zone).offset().fix().local_minus_utc()
        };
        if offset(at - hour) <= offset(horizon) {
            return plain;
        }
        let mut best = plain;
        let from = (at - hour).with_timezone(&self.zone);
        // Bounded: three hours of a schedule that ticks every second.
        for tick in self.cron.iter_after(from).take(12_000) {
            let tick = tick.with_timezone(&Utc).trunc_subsecs(0);
            if tick > at && best.is_none_or(|b| tick < b) {
                best = Some(tick);
            }
            if tick > horizon + hour {
                break;
            }
        }
        best
    }

    /// The first tick after `at` by croner's search on local times.
    fn next_local_after(&self, at: Timestamp) -> Option<Timestamp> {
        let mut from = at;
        // A bounded number of tries: an hour repeated by a clock change is the only way back.
        for _ in 0..4 {
            let local = from.with_timezone(&self.zone);
            let next = self
                .cron
                .find_next_occurrence(&local, false)
                .ok()?
                .with_timezone(&Utc)
                .trunc_subsecs(0);
            if next > at {
                return Some(next);
            }
            from += chrono::TimeDelta::hours(1);
        }
        None
    }

    /// The ticks from `first` (itself a tick) up to `now`, at most [`MAX_CATCH_UP`] of them
    /// (the latest ones), and the first tick after `now`. A schedule far behind is not walked
    /// through: the oldest of the latest ticks is found stepping back from `now`.
    pub fn due(&self, first: Timestamp, now: Timestamp) -> (Vec<Timestamp>, Option<Timestamp>) {
        let mut start = first;
        let mut back = now;
        for _ in 0..MAX_CATCH_UP {
            let local = back.with_timezone(&self.zone);
            // Whole seconds: croner keeps the fraction of the time it starts from.
            let found = self.cron.find_previous_occurrence(&local, true).ok();
            match found.map(|t| t.with_timezone(&Utc).trunc_subsecs(0)) {
                Some(t) if t > first => {
                    start = t;
                    back = t - chrono::TimeDelta::seconds(1);
                }
                _ => {
                    start = first;
                    break;
                }
            }
        }
        let mut due = Vec::new();
        let mut at = Some(start);
        while let Some(t) = at.filter(|&t| t <= now) {
            due.push(t);
            at = self.next_after(t);
        }
        let older = due.len().saturating_sub(MAX_CATCH_UP);
        due.drain(..older);
        (due, at)
    }
}

/// A schedule as a store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleView {
    /// What was registered.
    #[serde(flatten)]
    pub spec: ScheduleSpec,
    /// Its next tick (`None`: its cron expression never matches again).
    pub next_at: Option<Timestamp>,
    /// The task its last tick made.
    pub last_task: Option<TaskId>,
    /// When it was registered.
    pub created_at: Timestamp,
}

/// The idempotency key of the task of tick `at` of schedule `name`.
pub fn tick_key(name: &str, at: Timestamp) -> String {
    format!(
        "{SCHEDULE_KEY_PREFIX}{name}:{}",
        at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    use proptest::prelude::*;

    fn at_ms(ms: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_millis(ms)
    }

    fn t(s: &str) -> Timestamp {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_and_six_field_expressions_and_time_zones() {
        let mut spec = ScheduleSpec::new("s", "0 9 * * *", "n", "t");
        spec.timezone = "Europe/Paris".into();
        let ticks = spec.ticks().unwrap();
        // 09:00 in Paris is 08:00 UTC in winter, 07:00 in summer.
        assert_eq!(
            ticks.next_after(t("2026-12-02T00:00:00Z")),
            Some(t("2026-12-02T08:00:00Z"))
        );
        assert_eq!(
            ticks.next_after(t("2026-07-02T00:00:00Z")),
            Some(t("2026-07-02T07:00:00Z"))
        );
        let every_ten_seconds = ScheduleSpec::new("s", "*/10 * * * * *", "n", "t")
            .ticks()
            .unwrap();
        assert_eq!(
            every_ten_seconds.next_after(t("2026-12-02T00:00:01Z")),
            Some(t("2026-12-02T00:00:10Z"))
        );
    }

    #[test]
    fn the_repeated_hour_of_a_clock_change_ticks_in_both_passes_for_interval_schedules() {
        let walk = |cron: &str, zone: &str, from: &str, n: usize| {
            let mut spec = ScheduleSpec::new("s", cron, "n", "t");
            spec.timezone = zone.into();
            let ticks = spec.ticks().unwrap();
            let mut at = t(from);
            let mut out = Vec::new();
            for _ in 0..n {
                at = ticks.next_after(at).unwrap();
                out.push(at.to_rfc3339());
            }
            out
        };
        // New York falls back at 06:00 UTC on 2026-11-01 (01:00 EDT, then 01:00 EST).
        assert_eq!(
            walk("0 * * * *", "America/New_York", "2026-11-01T04:30:00Z", 4),
            [
                "2026-11-01T05:00:00+00:00",
                "2026-11-01T06:00:00+00:00",
                "2026-11-01T07:00:00+00:00",
                "2026-11-01T08:00:00+00:00"
            ]
        );
        // London falls back at 01:00 UTC on 2026-10-25.
        assert_eq!(
            walk("*/30 * * * *", "Europe/London", "2026-10-25T00:10:00Z", 5),
            [
                "2026-10-25T00:30:00+00:00",
                "2026-10-25T01:00:00+00:00",
                "2026-10-25T01:30:00+00:00",
                "2026-10-25T02:00:00+00:00",
                "2026-10-25T02:30:00+00:00"
            ]
        );
        // One time a day: once, at the first 01:30.
        assert_eq!(
            walk("30 1 * * *", "America/New_York", "2026-11-01T04:00:00Z", 2),
            ["2026-11-01T05:30:00+00:00", "2026-11-02T06:30:00+00:00"]
        );
    }

    #[test]
    fn bad_schedules_are_refused_naming_the_part() {
        let bad = |cron: &str, tz: &str| {
            let mut spec = ScheduleSpec::new("s", cron, "n", "t");
            spec.timezone = tz.into();
            spec.ticks().unwrap_err().to_string()
        };
        assert!(bad("61 * * * *", "UTC").contains("cron expression"));
        assert!(bad("* * *", "UTC").contains("cron expression"));
        assert!(bad("* * * * *", "Mars/Olympus").contains("time zone"));
        assert!(ScheduleSpec::new("", "* * * * *", "n", "t")
            .ticks()
            .is_err());
    }

    #[test]
    fn a_schedule_that_fell_behind_catches_up_on_its_latest_ticks() {
        let ticks = ScheduleSpec::new("s", "* * * * *", "n", "t")
            .ticks()
            .unwrap();
        let first = t("2026-12-02T00:00:00Z");
        let (due, next) = ticks.due(first, t("2026-12-02T00:02:30Z"));
        assert_eq!(
            due,
            [first, t("2026-12-02T00:01:00Z"), t("2026-12-02T00:02:00Z")]
        );
        assert_eq!(next, Some(t("2026-12-02T00:03:00Z")));
        let (due, _) = ticks.due(first, t("2026-12-03T00:00:00Z"));
        assert_eq!(due.len(), MAX_CATCH_UP);
        assert_eq!(due.last(), Some(&t("2026-12-03T00:00:00Z")));
    }

    #[test]
    fn a_repeated_hour_never_takes_a_tick_back() {
        // Europe/Paris falls back at 03:00 on 2026-10-25: 02:00–03:00 happens twice.
        let mut spec = ScheduleSpec::new("s", "*/30 * * * *", "n", "t");
        spec.timezone = "Europe/Paris".into();
        let ticks = spec.ticks().unwrap();
        let mut at = t("2026-10-24T22:00:00Z");
        for _ in 0..12 {
            let next = ticks.next_after(at).unwrap();
            assert!(next > at, "{next} after {at}");
            assert!(
                next - at <= chrono::TimeDelta::hours(2),
                "{next} after {at}"
            );
            at = next;
        }
    }

    proptest! {
        #[test]
        fn ticks_increase_and_none_is_skipped(minute in 0u32..60, start in 0i64..10_000_000) {
            let spec = ScheduleSpec::new("s", format!("{minute} * * * *"), "n", "t");
            let ticks = spec.ticks().unwrap();
            let at = at_ms(1_700_000_000_000 + start * 1000).unwrap();
            let first = ticks.next_after(at).unwrap();
            prop_assert!(first > at);
            prop_assert!(first - at <= chrono::TimeDelta::hours(1));
            let (due, next) = ticks.due(first, first + chrono::TimeDelta::hours(5));
            prop_assert_eq!(due.len(), 6);
            for pair in due.windows(2) {
                prop_assert_eq!(pair[1] - pair[0], chrono::TimeDelta::hours(1));
            }
            prop_assert_eq!(next, Some(*due.last().unwrap() + chrono::TimeDelta::hours(1)));
        }
    }
}
