//! Durable cron schedules on every store, with an injected clock: each tick makes one task
//! however many engines fire it, a restart loses no tick, overlapping ticks are skipped.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tasker_core::schedule::{Overlap, ScheduleSpec};
use tasker_core::{Engine, ManualClock, NewTask, TaskFilter, TaskState};

use support::*;

fn job() -> Template {
    template("sched", "job").raw("  - name: run\n")
}

/// A clock at 00:00:30 on a fixed day.
fn clock() -> ManualClock {
    ManualClock::at(
        chrono::DateTime::parse_from_rfc3339("2026-12-02T00:00:30Z")
            .unwrap()
            .with_timezone(&chrono::Utc),
    )
}

async fn open(url: &str, clock: &ManualClock) -> Engine {
    Engine::builder()
        .url(url)
        .clock(Arc::new(clock.clone()))
        .build()
        .await
        .unwrap()
}

fn every_minute(overlap: Overlap) -> ScheduleSpec {
    let mut spec = ScheduleSpec::new("minutely", "* * * * *", "sched", "job");
    spec.context = json!({"from": "schedule"});
    spec.overlap = overlap;
    spec
}

async fn tasks(engine: &Engine) -> Vec<tasker_core::TaskView> {
    engine.list_tasks(&TaskFilter::default()).await.unwrap()
}

per_store! {
    async fn a_schedule_makes_one_task_per_tick(store) {
        let clock = clock();
        let Some(engine) = engine_with(store, clock.clone(), &[job()]).await else { return };
        let view = engine.schedule(every_minute(Overlap::Allow)).await.unwrap();
        assert_eq!(view.next_at.map(|t| t.to_rfc3339()), Some("2026-12-02T00:01:00+00:00".into()), "{store}");
        assert_eq!(engine.fire_schedules().await.unwrap(), 0, "{store}: not yet");
        clock.advance(Duration::from_secs(30));
        assert_eq!(engine.fire_schedules().await.unwrap(), 1, "{store}: on the tick");
        assert_eq!(engine.fire_schedules().await.unwrap(), 0, "{store}: once");
        let made = tasks(&engine).await;
        assert_eq!(made.len(), 1, "{store}");
        assert_eq!(made[0].context, json!({"from": "schedule"}), "{store}");
        assert_eq!(made[0].idempotency_key.as_deref(), Some("schedule:minutely:2026-12-02T00:01:00.000Z"), "{store}");
        let listed = engine.schedules().await.unwrap();
        assert_eq!(listed.len(), 1, "{store}");
        assert_eq!(listed[0].last_task, Some(made[0].id), "{store}");
        assert_eq!(listed[0].next_at.map(|t| t.to_rfc3339()), Some("2026-12-02T00:02:00+00:00".into()), "{store}");
        assert!(engine.unschedule("minutely").await.unwrap(), "{store}");
        assert!(!engine.unschedule("minutely").await.unwrap(), "{store}");
        clock.advance(Duration::from_secs(120));
        assert_eq!(engine.fire_schedules().await.unwrap(), 0, "{store}: gone");
    }
}

per_store! {
    async fn an_overlapping_tick_is_skipped_while_the_last_task_runs(store) {
        let clock = clock();
        let Some(engine) = engine_with(store, clock.clone(), &[job()]).await else { return };
        engine.schedule(every_minute(Overlap::Skip)).await.unwrap();
        clock.advance(Duration::from_secs(30));
        assert_eq!(engine.fire_schedules().await.unwrap(), 1, "{store}");
        clock.advance(Duration::from_secs(60));
        assert_eq!(engine.fire_schedules().await.unwrap(), 0, "{store}: the first still runs");
        claim_and_complete(&engine, "run", json!(1)).await;
        clock.advance(Duration::from_secs(60));
        assert_eq!(engine.fire_schedules().await.unwrap(), 1, "{store}: it finished");
    }
}

per_store! {
    async fn bad_schedules_are_refused(store) {
        let clock = clock();
        let Some(engine) = engine_with(store, clock.clone(), &[job()]).await else { return };
        let mut bad = every_minute(Overlap::Skip);
        bad.cron = "every minute".into();
        assert_err!(engine.schedule(bad).await, tasker_core::Error::InvalidArgument(_), "{store}");
        let mut zone = every_minute(Overlap::Skip);
        zone.timezone = "Nowhere/Land".into();
        assert_err!(engine.schedule(zone).await, tasker_core::Error::InvalidArgument(_), "{store}");
        let mut never = every_minute(Overlap::Skip);
        never.cron = "0 0 30 2 *".into();
        let err = engine.schedule(never).await.unwrap_err();
        assert!(err.to_string().contains("matches no time to come"), "{store}: {err}");
        let unknown = ScheduleSpec::new("x", "* * * * *", "sched", "nope");
        assert!(engine.schedule(unknown).await.is_err(), "{store}");
        let keyed = NewTask::new("sched", "job").idempotency_key("schedule:minutely:x");
        assert_err!(engine.create_task(keyed).await, tasker_core::Error::InvalidArgument(_), "{store}");
        assert!(engine.schedules().await.unwrap().is_empty(), "{store}");
    }
}

/// Two engines on one SQL store fire the same ticks: one task each; engines down for three
/// ticks make all three when one comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_fire_each_tick_once_and_a_restart_loses_no_tick() {
    for (name, url) in sql_store_urls().await {
        let clock = clock();
        let first = open(&url, &clock).await;
        register(&first, &job()).await;
        let second = open(&url, &clock).await;
        first.schedule(every_minute(Overlap::Allow)).await.unwrap();
        for minute in 1..=3 {
            clock.advance(Duration::from_secs(if minute == 1 { 30 } else { 60 }));
            let (a, b) = tokio::join!(first.fire_schedules(), second.fire_schedules());
            assert_eq!(
                a.unwrap() + b.unwrap(),
                1,
                "{name}: tick {minute} made one task"
            );
        }
        assert_eq!(tasks(&first).await.len(), 3, "{name}");
        // Both engines stop; three ticks pass; one comes back.
        first.close();
        second.close();
        drop((first, second));
        clock.advance(Duration::from_secs(180));
        let back = open(&url, &clock).await;
        assert_eq!(
            back.fire_schedules().await.unwrap(),
            3,
            "{name}: the ticks missed"
        );
        let made = tasks(&back).await;
        assert_eq!(made.len(), 6, "{name}");
        assert!(
            made.iter().all(|t| t.status == TaskState::Pending),
            "{name}"
        );
        assert_eq!(back.fire_schedules().await.unwrap(), 0, "{name}");
    }
}

per_store! {
    async fn a_skipping_schedule_catches_up_with_its_latest_tick_only(store) {
        let clock = clock();
        let Some(engine) = engine_with(store, clock.clone(), &[job()]).await else { return };
        engine.schedule(every_minute(Overlap::Skip)).await.unwrap();
        clock.advance(Duration::from_secs(30 + 3 * 60));
        assert_eq!(engine.fire_schedules().await.unwrap(), 1, "{store}");
        let made = tasks(&engine).await;
        assert_eq!(made[0].idempotency_key.as_deref(), Some("schedule:minutely:2026-12-02T00:04:00.000Z"), "{store}");
    }
}

per_store! {
    async fn registering_the_same_schedule_again_keeps_the_missed_ticks(store) {
        let clock = clock();
        let Some(engine) = engine_with(store, clock.clone(), &[job()]).await else { return };
        engine.schedule(every_minute(Overlap::Allow)).await.unwrap();
        // Down for four ticks (00:01 to 00:04), then the app starts and registers its
        // schedules again.
        clock.advance(Duration::from_secs(30 + 3 * 60));
        let view = engine.schedule(every_minute(Overlap::Allow)).await.unwrap();
        assert_eq!(view.next_at.map(|t| t.to_rfc3339()), Some("2026-12-02T00:01:00+00:00".into()), "{store}: kept");
        assert_eq!(engine.fire_schedules().await.unwrap(), 4, "{store}: the missed ticks are made");
        // A changed spec starts from now.
        let mut hourly = every_minute(Overlap::Allow);
        hourly.cron = "0 * * * *".into();
        let view = engine.schedule(hourly).await.unwrap();
        assert_eq!(view.next_at.map(|t| t.to_rfc3339()), Some("2026-12-02T01:00:00+00:00".into()), "{store}");
    }
}

per_store! {
    async fn a_schedule_whose_task_cannot_be_made_does_not_stop_the_others_and_names_are_text(store) {
        let clock = clock();
        let Some(engine) = engine_with(store, clock.clone(), &[job()]).await else { return };
        let keyed = template("sched", "keyed").raw("  - name: run\n").yaml();
        let keyed = keyed.replace("steps:\n", "concurrency: { key: \"k:{{context.id}}\", limit: 1 }\nsteps:\n");
        engine.register_template_str(&keyed).await.unwrap();
        let mut first = ScheduleSpec::new("a-first", "* * * * *", "sched", "keyed");
        first.context = json!({"id": "ok"});
        engine.schedule(first).await.unwrap();
        let later = ScheduleSpec::new("b-later", "* * * * *", "sched", "job");
        engine.schedule(later).await.unwrap();
        // The first one's template changes under it: its context no longer makes a task.
        let v2 = keyed.replace("version: 1.0.0", "version: 2.0.0").replace("k:{{context.id}}", "k:{{context.missing}}");
        engine.register_template_str(&v2).await.unwrap();
        clock.advance(Duration::from_secs(30));
        engine.fire_schedules().await.unwrap();
        let made = tasks(&engine).await;
        assert!(made.iter().any(|t| t.name == "job"), "{store}: the later schedule fired: {made:?}");
        let err = engine.schedule(ScheduleSpec::new("bad\nname", "* * * * *", "sched", "job")).await.unwrap_err();
        assert!(err.to_string().contains("control character"), "{store}: {err}");
    }
}
