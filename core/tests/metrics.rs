//! `Engine::metrics` on every store, with an injected clock: the counters and histograms follow
//! what the engine recorded (outcomes, retries, lease expiries, durations, waits), and the ready
//! gauge the store's claimable steps.

mod support;

use std::time::Duration;

use serde_json::json;
use tasker_core::{Engine, ManualClock, NewTask, TaskState};

use support::*;

/// `sig/m`: `a`, then `b` (retried) and `c` beside it.
const CHAIN: &str = r#"
namespace: sig
name: m
version: 1.0.0
steps:
  - name: a
  - name: b
    handler: flaky
    depends_on: [a]
    retry: { max_attempts: 3 }
  - name: c
    depends_on: [a]
"#;

/// `sig/lease`: one step of one attempt whose lease runs out.
const LEASE: &str = r#"
namespace: sig
name: lease
version: 1.0.0
steps:
  - name: slow
    lease_ms: 1000
    retry: { max_attempts: 1 }
"#;

/// The value of the sample `sample` (its name and labels as the text writes them).
fn value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{sample}: {v:?} is not a number"))
        })
}

fn assert_sample(text: &str, sample: &str, expected: f64) {
    let got = value(text, sample).unwrap_or_else(|| panic!("no {sample} in\n{text}"));
    assert!(
        (got - expected).abs() < 1e-9,
        "{sample}: {got}, expected {expected}\n{text}"
    );
}

async fn opened(store: StoreKind, clock: &ManualClock) -> Option<Engine> {
    let engine = engine_with(store, clock.clone(), &[]).await?;
    for t in [CHAIN, LEASE] {
        engine.register_template_str(t).await.unwrap();
    }
    Some(engine)
}

/// `sig/m` run with `b` retried once (`a` waits 50 ms and runs 200 ms, `c` runs 300 ms), a
/// `sig/lease` task whose one attempt's lease runs out (it fails), then one task of each
/// left ready.
async fn run_scenario(engine: &Engine, clock: &ManualClock, store: StoreKind) {
    let task = create(engine, NewTask::new("sig", "m")).await;
    clock.advance(Duration::from_millis(50));
    let a = claim_one(engine, "a").await;
    clock.advance(Duration::from_millis(200));
    complete(engine, &a, json!(1)).await;
    let mut both = claim(engine, 2).await;
    both.sort_by_key(|s| s.name.clone());
    fail(engine, &both[0], retryable_after("flaky", 100)).await;
    clock.advance(Duration::from_millis(300));
    complete(engine, &both[1], json!(3)).await;
    let b = claim_one(engine, "b").await;
    complete(engine, &b, json!(2)).await;
    assert_eq!(status(engine, task).await, TaskState::Complete, "{store}");

    let lease = create(engine, NewTask::new("sig", "lease")).await;
    let slow = claim_one(engine, "slow").await;
    assert_eq!(slow.attempt, 1);
    clock.advance(Duration::from_millis(2_000));
    assert_eq!(engine.reclaim_expired().await.unwrap(), 1, "{store}");
    assert_eq!(status(engine, lease).await, TaskState::Error, "{store}");
    // Left ready: one `a` and one `slow`.
    create(engine, NewTask::new("sig", "m")).await;
    create(engine, NewTask::new("sig", "lease")).await;
}

per_store! {
    async fn the_metrics_follow_outcomes_retries_expiries_and_times(store) {
        let clock = ManualClock::new();
        let Some(engine) = opened(store, &clock).await else { return };
        run_scenario(&engine, &clock, store).await;
        let text = engine.metrics().await.unwrap();
        let m = r#"namespace="sig",name="m""#;
        assert_sample(&text, &format!(r#"tasker_tasks_total{{{m},status="pending"}}"#), 2.0);
        assert_sample(&text, &format!(r#"tasker_tasks_total{{{m},status="in_progress"}}"#), 1.0);
        assert_sample(&text, &format!(r#"tasker_tasks_total{{{m},status="complete"}}"#), 1.0);
        assert_sample(
            &text,
            r#"tasker_tasks_total{namespace="sig",name="lease",status="error"}"#,
            1.0,
        );
        let step = |s: &str| format!(r#"namespace="sig",task="m",step="{s}""#);
        for (s, outcome, n) in [("a", "completed", 1.0), ("b", "retried", 1.0),
            ("b", "completed", 1.0), ("c", "completed", 1.0)]
        {
            let sample = format!(r#"tasker_steps_total{{{},outcome="{outcome}"}}"#, step(s));
            assert_sample(&text, &sample, n);
        }
        assert_eq!(value(&text, &format!(r#"tasker_steps_total{{{},outcome="failed"}}"#, step("b"))), None);
        assert_sample(
            &text,
            r#"tasker_steps_total{namespace="sig",task="lease",step="slow",outcome="failed"}"#,
            1.0,
        );
        assert_sample(&text, "tasker_leases_expired_total", 1.0);
        // `a` waited 50 ms for its claim and ran 200 ms; `b` ran twice, `c` 300 ms.
        assert_sample(&text, &format!("tasker_ready_to_claimed_seconds_sum{{{}}}", step("a")), 0.05);
        assert_sample(&text, &format!("tasker_step_duration_seconds_sum{{{}}}", step("a")), 0.2);
        assert_sample(&text, &format!("tasker_step_duration_seconds_count{{{}}}", step("b")), 2.0);
        assert_sample(&text, &format!("tasker_ready_to_claimed_seconds_count{{{}}}", step("b")), 2.0);
        // Its retry was due 100 ms after the failure, and claimed 200 ms after that.
        assert_sample(&text, &format!("tasker_ready_to_claimed_seconds_sum{{{}}}", step("b")), 0.2);
        assert_sample(&text, &format!("tasker_step_duration_seconds_sum{{{}}}", step("c")), 0.3);
        assert_sample(
            &text,
            r#"tasker_step_duration_seconds_sum{namespace="sig",task="lease",step="slow"}"#,
            2.0,
        );
        assert_sample(&text, r#"tasker_ready_steps{handler="a"}"#, 1.0);
        assert_sample(&text, r#"tasker_ready_steps{handler="slow"}"#, 1.0);
        assert_eq!(value(&text, r#"tasker_ready_steps{handler="flaky"}"#), None, "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}

per_store! {
    async fn an_engine_opened_without_metrics_counts_nothing(store) {
        let Some(url) = store_url(store).await else { return };
        let engine = Engine::builder().url(url).metrics(false).build().await.unwrap();
        engine.register_template_str(LEASE).await.unwrap();
        create(&engine, NewTask::new("sig", "lease")).await;
        let text = engine.metrics().await.unwrap();
        assert_eq!(value(&text, r#"tasker_tasks_total{namespace="sig",name="lease",status="pending"}"#), None, "{text}");
        assert_sample(&text, r#"tasker_ready_steps{handler="slow"}"#, 1.0);
    }
}

per_store! {
    async fn the_stats_count_the_store(store) {
        let clock = ManualClock::new();
        let Some(engine) = opened(store, &clock).await else { return };
        run_scenario(&engine, &clock, store).await;
        let stats = engine.stats().await.unwrap();
        let n = |m: &std::collections::BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
        assert_eq!(n(&stats.tasks, "complete"), 1, "{store}: {stats:?}");
        assert_eq!(n(&stats.tasks, "error"), 1, "{store}: {stats:?}");
        assert_eq!(n(&stats.tasks, "pending"), 2, "{store}: {stats:?}");
        assert_eq!(n(&stats.steps, "complete"), 3, "{store}: {stats:?}");
        assert_eq!(n(&stats.steps, "error"), 1, "{store}: {stats:?}");
        assert_eq!(n(&stats.steps, "pending"), 4, "{store}: {stats:?}");
        assert_eq!((stats.retries, stats.recovered, stats.lease_expiries), (1, 1, 1), "{store}");
        let of = |h: &str| stats.handlers.iter().find(|s| s.handler == h).cloned();
        let a = of("a").expect("a's stats");
        assert_eq!((a.finished, a.mean_ms, a.p95_ms), (1, 200.0, 200), "{store}");
        let c = of("c").expect("c's stats");
        assert_eq!((c.finished, c.p95_ms), (1, 300), "{store}");
        // `b` (handler `flaky`) is timed by its last attempt, which took no time.
        assert_eq!(of("flaky").map(|s| (s.finished, s.p95_ms)), Some((1, 0)), "{store}");
        let names: Vec<&str> = stats.handlers.iter().map(|s| s.handler.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "{store}: in handler order");
    }
}
