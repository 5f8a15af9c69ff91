//! Concurrency keys and rate limits on every store, with an injected clock: a key at its limit
//! holds back its steps (and, at template level, its tasks) across claims and engines, lets
//! them go in priority order as holders finish, and a rate key gives out its tokens at its
//! rate. A template-level key is held from a task's first claim until it ends: pausing keeps
//! it, a task paused before it started holds none, a reopened task waits for room again, and a
//! child of the same key runs under its parent's hold.

mod support;

use std::time::Duration;

use serde_json::json;
use tasker_core::{ChildTask, Children, Engine, ManualClock, NewTask, TaskState};

use support::*;

/// `gate/step`: `charge` keyed by customer (limit 1), then `ship`, unkeyed.
const STEP_KEYED: &str = r#"
namespace: gate
name: step
version: 1.0.0
steps:
  - name: charge
    concurrency: { key: "customer:{{context.customer}}", limit: 1 }
  - name: ship
    depends_on: [charge]
"#;

/// `gate/task`: two steps, the whole task keyed by customer (limit 2).
const TASK_KEYED: &str = r#"
namespace: gate
name: task
version: 1.0.0
concurrency: { key: "customer:{{context.customer}}", limit: 2 }
steps:
  - name: first
  - name: second
    depends_on: [first]
"#;

/// `gate/tree`: one step, `grow`, whose handler (here the test) starts a child of the same
/// template while `depth` is over 0; the whole task keyed by customer (limit 1).
const TREE: &str = r#"
namespace: gate
name: tree
version: 1.0.0
concurrency: { key: "tree:{{context.customer}}", limit: 1 }
steps:
  - name: grow
"#;

/// `gate/relay`, keyless, and `gate/branch`, keyed `branch:{{context.customer}}` (limit 1):
/// one step each, `pass`, whose handler (the test) starts the next task of a chain.
const RELAY: &str = r#"
namespace: gate
name: relay
version: 1.0.0
steps:
  - name: pass
"#;
const BRANCH: &str = r#"
namespace: gate
name: branch
version: 1.0.0
concurrency: { key: "branch:{{context.customer}}", limit: 1 }
steps:
  - name: pass
"#;

/// `gate/hold` and `gate/due` (the second with a deadline of 1 s): one step each, both keyed
/// `shared:{{context.customer}}`, limit 1.
const HOLD: &str = r#"
namespace: gate
name: hold
version: 1.0.0
concurrency: { key: "shared:{{context.customer}}", limit: 1 }
steps:
  - name: work
"#;
const DUE: &str = r#"
namespace: gate
name: due
version: 1.0.0
deadline_ms: 1000
concurrency: { key: "shared:{{context.customer}}", limit: 1 }
steps:
  - name: work
    retry: { max_attempts: 1 }
"#;

/// `gate/rate`: one step with a rate key of 10 per second, bursts of 2.
const RATE: &str = r#"
namespace: gate
name: rate
version: 1.0.0
steps:
  - name: call
    rate_limit: { key: stripe, limit: 10, per_ms: 1000, burst: 2 }
"#;

async fn gated(store: StoreKind, clock: &ManualClock) -> Option<Engine> {
    let engine = engine_with(store, clock.clone(), &[]).await?;
    for t in [STEP_KEYED, TASK_KEYED, TREE, HOLD, DUE, RATE] {
        engine.register_template_str(t).await.unwrap();
    }
    Some(engine)
}

fn of(name: &str, customer: u32) -> NewTask {
    NewTask::new("gate", name).context(json!({ "customer": customer }))
}

fn customers(engine_claims: &[tasker_core::ClaimedStep]) -> Vec<u64> {
    engine_claims
        .iter()
        .map(|c| c.context["customer"].as_u64().unwrap())
        .collect()
}

per_store! {
    async fn a_step_key_at_its_limit_holds_back_exactly_its_steps(store) {
        let clock = ManualClock::new();
        let Some(engine) = gated(store, &clock).await else { return };
        // Customer 1 three times, customer 2 once.
        for c in [1, 1, 2, 1] {
            create(&engine, of("step", c)).await;
        }
        let first = claim(&engine, 10).await;
        let mut got = customers(&first);
        got.sort();
        assert_eq!(got, [1, 2], "{store}: one charge per customer");
        assert!(claim(&engine, 10).await.is_empty(), "{store}: both keys are at their limit");
        // Customer 1's charge completes: its ship and its next charge may go.
        let one = first.iter().find(|c| c.context["customer"] == 1).unwrap();
        complete(&engine, one, json!(null)).await;
        let next = claim(&engine, 10).await;
        let mut got: Vec<(String, u64)> = next.iter().map(|c| (c.name.to_string(), c.context["customer"].as_u64().unwrap())).collect();
        got.sort();
        assert_eq!(got, [("charge".to_string(), 1), ("ship".to_string(), 1)], "{store}");
        // The charge taken is the second task created for customer 1 (claim order).
        let charge = next.iter().find(|c| &*c.name == "charge").unwrap();
        let tasks = engine.list_tasks(&Default::default()).await.unwrap();
        let mut ones: Vec<_> = tasks.iter().filter(|t| t.context["customer"] == 1).collect();
        ones.sort_by_key(|t| t.created_at);
        assert_eq!(charge.step_id.task, ones[1].id, "{store}: released in claim order");
    }
}

per_store! {
    async fn a_failed_or_expired_holder_lets_its_key_go(store) {
        let clock = ManualClock::new();
        let Some(engine) = gated(store, &clock).await else { return };
        for _ in 0..3 {
            create(&engine, of("step", 7)).await;
        }
        let held = claim(&engine, 10).await;
        assert_eq!(held.len(), 1, "{store}");
        fail(&engine, &held[0], permanent("card declined")).await;
        let next = claim(&engine, 10).await;
        assert_eq!(next.len(), 1, "{store}: a failed holder let go");
        // Its lease runs out: the key is let go with it.
        clock.advance(Duration::from_secs(31));
        let again = claim(&engine, 10).await;
        assert_eq!(again.len(), 1, "{store}: an expired holder let go");
        assert_ne!(again[0].step_id, next[0].step_id, "{store}");
    }
}

per_store! {
    async fn a_template_key_holds_whole_tasks(store) {
        let clock = ManualClock::new();
        let Some(engine) = gated(store, &clock).await else { return };
        let tasks: Vec<_> = [
            create(&engine, of("task", 1)).await,
            create(&engine, of("task", 1)).await,
            create(&engine, of("task", 1)).await,
            create(&engine, of("task", 2)).await,
        ]
        .into();
        let first = claim(&engine, 10).await;
        assert_eq!(first.len(), 3, "{store}: two tasks of customer 1, one of customer 2");
        assert!(!first.iter().any(|c| c.step_id.task == tasks[2]), "{store}: the third waits");
        // A started task goes on: its second step is not held back by its own key.
        let a = first.iter().find(|c| c.step_id.task == tasks[0]).unwrap();
        complete(&engine, a, json!(1)).await;
        let second = claim(&engine, 10).await;
        assert_eq!(names(&second), ["second"], "{store}");
        assert_eq!(second[0].step_id.task, tasks[0], "{store}");
        complete(&engine, &second[0], json!(2)).await;
        assert_eq!(status(&engine, tasks[0]).await, TaskState::Complete, "{store}");
        // The task finished: the third task of customer 1 may start.
        let third = claim(&engine, 10).await;
        assert_eq!(third.len(), 1, "{store}");
        assert_eq!(third[0].step_id.task, tasks[2], "{store}");
    }
}

per_store! {
    async fn a_rate_key_gives_its_tokens_at_its_rate(store) {
        let clock = ManualClock::new();
        let Some(engine) = gated(store, &clock).await else { return };
        for _ in 0..20 {
            create(&engine, NewTask::new("gate", "rate")).await;
        }
        assert_eq!(claim(&engine, 20).await.len(), 2, "{store}: a full bucket of 2");
        assert!(claim(&engine, 20).await.is_empty(), "{store}: empty");
        clock.advance(Duration::from_millis(99));
        assert!(claim(&engine, 20).await.is_empty(), "{store}: a token comes back after 100 ms");
        clock.advance(Duration::from_millis(1));
        assert_eq!(claim(&engine, 20).await.len(), 1, "{store}");
        clock.advance(Duration::from_secs(10));
        assert_eq!(claim(&engine, 20).await.len(), 2, "{store}: never more than the burst");
    }
}

per_store! {
    async fn a_context_that_cannot_render_a_key_is_refused(store) {
        let clock = ManualClock::new();
        let Some(engine) = gated(store, &clock).await else { return };
        let e = engine
            .create_task(NewTask::new("gate", "step").context(json!({"customer": {"id": 1}})))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("context.customer"), "{store}: {e}");
        let e = engine.create_task(NewTask::new("gate", "task")).await.unwrap_err();
        assert!(matches!(e, tasker_core::Error::InvalidContext { .. }), "{store}: {e}");
        assert!(engine.list_tasks(&Default::default()).await.unwrap().is_empty(), "{store}");
        let bad = STEP_KEYED.replace("limit: 1", "limit: 0").replace("name: step", "name: bad");
        let e = engine.register_template_str(&bad).await.unwrap_err();
        assert!(e.to_string().contains("limit must be at least 1"), "{store}: {e}");
    }
}

per_store! {
    async fn a_report_lets_its_key_go_to_the_claim_made_with_it(store) {
        let clock = ManualClock::new();
        let Some(engine) = gated(store, &clock).await else { return };
        let first = create(&engine, of("step", 1)).await;
        let second = create(&engine, of("step", 1)).await;
        let held = claim(&engine, 10).await;
        assert_eq!(held.len(), 1, "{store}");
        assert_eq!(held[0].step_id.task, first, "{store}");
        // One store operation: the charge's report, and a claim that may take the key it let go.
        let report = tasker_core::store::StepReport {
            step: held[0].step_id,
            attempt: held[0].attempt,
            outcome: tasker_core::store::Outcome::Complete(json!(null)),
            logs: Vec::new(),
        };
        let (results, next) = engine.report_and_claim(vec![report], &any_handler(10)).await.unwrap();
        assert!(results[0].is_ok(), "{store}");
        let mut got: Vec<(tasker_core::TaskId, String)> = next.iter().map(|c| (c.step_id.task, c.name.to_string())).collect();
        got.sort();
        // The first task's ship (no key) and one charge: the second task's.
        let mut want = vec![(first, "ship".to_string()), (second, "charge".to_string())];
        want.sort();
        assert_eq!(got, want, "{store}");
    }
}

/// `gate/batch`: a batch of 3 slices whose worker step is keyed (limit 1).
const BATCH_KEYED: &str = r#"
namespace: gate
name: batch
version: 1.0.0
steps:
  - name: load
    type: batchable
    batch: { worker: slice, size: 1 }
  - name: slice
    type: batch_worker
    depends_on: [load]
    concurrency: { key: "slices", limit: 1 }
"#;

per_store! {
    async fn a_keyed_batch_runs_its_slices_one_at_a_time(store) {
        let clock = ManualClock::new();
        let Some(engine) = gated(store, &clock).await else { return };
        engine.register_template_str(BATCH_KEYED).await.unwrap();
        let task = create(&engine, NewTask::new("gate", "batch")).await;
        let load = claim_one(&engine, "load").await;
        engine.report(load.step_id, load.attempt, tasker_core::Batch::total(3)).await.unwrap();
        // The worker step itself holds nothing: its instances do, one at a time.
        for k in 0..3 {
            let slices = claim(&engine, 10).await;
            assert_eq!(slices.len(), 1, "{store}: slice {k}");
            complete(&engine, &slices[0], json!(k)).await;
        }
        assert_eq!(status(&engine, task).await, TaskState::Complete, "{store}");
    }
}

per_store! {
    async fn a_retried_task_is_counted_again(store) {
        let clock = ManualClock::new();
        let Some(engine) = gated(store, &clock).await else { return };
        let first = create(&engine, of("step", 9)).await;
        let held = claim(&engine, 10).await;
        fail(&engine, &held[0], permanent("declined")).await;
        assert_eq!(status(&engine, first).await, TaskState::Error, "{store}");
        engine.retry_task(first).await.unwrap();
        let again = claim(&engine, 10).await;
        assert_eq!(again.len(), 1, "{store}");
        // The reopened task holds the key: another task of the customer waits.
        create(&engine, of("step", 9)).await;
        assert!(claim(&engine, 10).await.is_empty(), "{store}: the key is held");
    }
}

per_store! {
    async fn a_task_paused_before_it_started_holds_no_slot(store) {
        let clock = ManualClock::new();
        let Some(engine) = gated(store, &clock).await else { return };
        let a = create(&engine, of("task", 3)).await;
        engine.pause_task(a).await.unwrap();
        let b = create(&engine, of("task", 3)).await;
        let c = create(&engine, of("task", 3)).await;
        // The paused task holds nothing: both others start (limit 2).
        let first = claim(&engine, 10).await;
        let mut started: Vec<_> = first.iter().map(|s| s.step_id.task).collect();
        started.sort();
        let mut want = vec![b, c];
        want.sort();
        assert_eq!(started, want, "{store}");
        // Resumed, it waits for room like any task that has not started.
        engine.resume_task(a).await.unwrap();
        assert!(claim(&engine, 10).await.is_empty(), "{store}: the key is at its limit");
        // A paused holder keeps its key: pausing b lets nothing in.
        let b_first = first.iter().find(|s| s.step_id.task == b).unwrap();
        complete(&engine, b_first, json!(1)).await;
        engine.pause_task(b).await.unwrap();
        assert!(claim(&engine, 10).await.is_empty(), "{store}: b paused still holds its key");
        // Resumed, b goes on without asking for room; cancelled, it lets the key go to a.
        engine.resume_task(b).await.unwrap();
        let second = claim(&engine, 10).await;
        assert_eq!(names(&second), ["second"], "{store}");
        assert_eq!(second[0].step_id.task, b, "{store}");
        engine.cancel_task(b).await.unwrap();
        let third = claim(&engine, 10).await;
        assert_eq!(third.len(), 1, "{store}");
        assert_eq!((third[0].step_id.task, &*third[0].name), (a, "first"), "{store}");
    }
}

per_store! {
    async fn a_reopened_task_waits_for_room_in_its_key(store) {
        let clock = ManualClock::new();
        let Some(engine) = gated(store, &clock).await else { return };
        let a = create(&engine, of("task", 4)).await;
        let b = create(&engine, of("task", 4)).await;
        let first = claim(&engine, 10).await;
        assert_eq!(first.len(), 2, "{store}");
        let a_first = first.iter().find(|s| s.step_id.task == a).unwrap();
        fail(&engine, a_first, permanent("declined")).await;
        assert_eq!(status(&engine, a).await, TaskState::Error, "{store}");
        // a let its key go when it failed: c takes the slot.
        let c = create(&engine, of("task", 4)).await;
        let next = claim(&engine, 10).await;
        assert_eq!(next.len(), 1, "{store}");
        assert_eq!(next[0].step_id.task, c, "{store}");
        // An operator reopens a: it is in progress, but the key is full (b and c hold it).
        engine.retry_task(a).await.unwrap();
        assert_eq!(status(&engine, a).await, TaskState::InProgress, "{store}");
        assert!(claim(&engine, 10).await.is_empty(), "{store}: a waits for room");
        // b ends: a starts again.
        let b_first = first.iter().find(|s| s.step_id.task == b).unwrap();
        complete(&engine, b_first, json!(1)).await;
        let b_second = claim_one(&engine, "second").await;
        assert_eq!(b_second.step_id.task, b, "{store}");
        complete(&engine, &b_second, json!(2)).await;
        assert_eq!(status(&engine, b).await, TaskState::Complete, "{store}");
        let again = claim(&engine, 10).await;
        assert_eq!(again.len(), 1, "{store}");
        assert_eq!((again[0].step_id.task, &*again[0].name), (a, "first"), "{store}");
    }
}

per_store! {
    async fn a_child_of_the_same_key_runs_under_its_parents_hold(store) {
        let clock = ManualClock::new();
        let Some(engine) = gated(store, &clock).await else { return };
        let tree = |depth: u32| NewTask::new("gate", "tree").context(json!({"customer": 5, "depth": depth}));
        let root = create(&engine, tree(2)).await;
        let other = create(&engine, tree(0)).await;
        // The root, its child and its grandchild run one after the other under the root's
        // hold (limit 1); the other tree waits for the whole of it.
        let mut grown = Vec::new();
        for depth in [2, 1, 0] {
            let got = claim(&engine, 10).await;
            assert_eq!(got.len(), 1, "{store}: depth {depth}: {:?}", names(&got));
            assert_ne!(got[0].step_id.task, other, "{store}: the other tree waits");
            assert_eq!(got[0].context["depth"], depth, "{store}");
            if depth > 0 {
                let child = ChildTask::new("gate", "tree", json!({"customer": 5, "depth": depth - 1}));
                engine.report(got[0].step_id, got[0].attempt, Children::of([child])).await.unwrap();
            } else {
                complete(&engine, &got[0], json!("leaf")).await;
            }
            grown.push(got[0].step_id.task);
        }
        for task in &grown {
            assert_eq!(status(&engine, *task).await, TaskState::Complete, "{store}");
        }
        assert_eq!(grown[0], root, "{store}");
        let last = claim(&engine, 10).await;
        assert_eq!(last.len(), 1, "{store}");
        assert_eq!(last[0].step_id.task, other, "{store}: the root let its key go");
    }
}

per_store! {
    async fn a_descendant_of_the_same_key_runs_under_the_hold_through_other_keys(store) {
        let clock = ManualClock::new();
        let Some(engine) = gated(store, &clock).await else { return };
        for t in [RELAY, BRANCH] {
            engine.register_template_str(t).await.unwrap();
        }
        let ctx = |depth: u32| json!({"customer": 6, "depth": depth});
        let root = create(&engine, NewTask::new("gate", "tree").context(ctx(1))).await;
        let other = create(&engine, NewTask::new("gate", "tree").context(ctx(0))).await;
        // tree (key tree:6, limit 1) → relay (no key) → branch (key branch:6) → tree (tree:6):
        // the last runs under the root's hold, where it waited for ever for the root to end.
        let mut got = claim(&engine, 10).await;
        assert_eq!(got.len(), 1, "{store}");
        assert_eq!(got[0].step_id.task, root, "{store}");
        for name in ["relay", "branch", "tree"] {
            let child = ChildTask::new("gate", name, ctx(0));
            engine.report(got[0].step_id, got[0].attempt, Children::of([child])).await.unwrap();
            got = claim(&engine, 10).await;
            assert_eq!(got.len(), 1, "{store}: the {name} child runs: {:?}", names(&got));
            assert_ne!(got[0].step_id.task, other, "{store}: the other tree waits");
            assert_eq!(status(&engine, got[0].step_id.task).await, TaskState::InProgress, "{store}");
        }
        complete(&engine, &got[0], json!("leaf")).await;
        assert_eq!(status(&engine, root).await, TaskState::Complete, "{store}: the chain ended");
        let last = claim(&engine, 10).await;
        assert_eq!(last.len(), 1, "{store}");
        assert_eq!(last[0].step_id.task, other, "{store}: the root let its key go");
    }
}

/// Undoes migration 0013 on the store of `url` (drops `key_hold`, puts back the index on
/// status), as a store written before it looks.
async fn before_key_holds(url: &str) {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    for sql in [
        "DROP INDEX tasker_tasks_holding",
        "ALTER TABLE tasker_tasks DROP COLUMN key_hold",
        "CREATE INDEX tasker_tasks_holding ON tasker_tasks (concurrency_key) WHERE status IN ('in_progress', 'paused') AND concurrency_key IS NOT NULL",
        "DELETE FROM _sqlx_migrations WHERE version = 13",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    conn.close().await.unwrap();
}

/// Each task's `key_hold` in the store of `url`.
async fn holds(url: &str) -> std::collections::HashMap<String, i64> {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let rows = sqlx::query("SELECT task_id, key_hold FROM tasker_tasks")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    rows.iter()
        .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1)))
        .collect()
}

per_store! {
    async fn migrating_a_store_from_before_key_holds_sets_each_tasks_hold(store) {
        if matches!(store, StoreKind::Memory) {
            return;
        }
        let Some(url) = store_url(store).await else { return };
        let clock = ManualClock::new();
        let engine = Engine::builder().url(&url).clock(std::sync::Arc::new(clock.clone())).build().await.unwrap();
        for t in [TASK_KEYED, TREE] {
            engine.register_template_str(t).await.unwrap();
        }
        // A paused task that never started, one that started and was paused, and a tree
        // whose child of the same key is pending.
        let never = create(&engine, of("task", 6)).await;
        engine.pause_task(never).await.unwrap();
        let started = create(&engine, of("task", 7)).await;
        let first = claim(&engine, 10).await;
        assert_eq!(first.len(), 1, "{store}");
        engine.pause_task(started).await.unwrap();
        let root = create(&engine, NewTask::new("gate", "tree").context(json!({"customer": 8, "depth": 1}))).await;
        let grow = claim_one(&engine, "grow").await;
        let child = ChildTask::new("gate", "tree", json!({"customer": 8, "depth": 0}));
        engine.report(grow.step_id, grow.attempt, Children::of([child])).await.unwrap();
        engine.close();
        before_key_holds(&url).await;
        let engine = Engine::builder().url(&url).clock(std::sync::Arc::new(clock.clone())).build().await.unwrap();
        let held = holds(&url).await;
        let kid = engine.task(root).await.unwrap().steps[0].children.clone().unwrap_or_default();
        assert_eq!(held[&never.to_string()], 0, "{store}: paused before it started");
        assert_eq!(held[&started.to_string()], 1, "{store}: paused after it started");
        assert_eq!(held[&root.to_string()], 1, "{store}: the parent");
        assert_eq!(kid.len(), 1, "{store}");
        assert_eq!(held[&kid[0].to_string()], 2, "{store}: the child runs under its parent's hold");
        // The child's step runs at once.
        let next = claim(&engine, 10).await;
        assert_eq!(next.len(), 1, "{store}");
        assert_eq!(next[0].step_id.task, kid[0], "{store}");
    }
}

per_store! {
    async fn a_task_that_ends_without_holding_its_key_frees_no_slot(store) {
        let clock = ManualClock::new();
        let Some(engine) = gated(store, &clock).await else { return };
        // b held the key once, failed (letting it go), and is reopened while a holds it.
        let b = create(&engine, of("due", 9)).await;
        let b_work = claim_one(&engine, "work").await;
        fail(&engine, &b_work, permanent("declined")).await;
        let a = create(&engine, of("hold", 9)).await;
        let a_work = claim_one(&engine, "work").await;
        assert_eq!(a_work.step_id.task, a, "{store}");
        engine.retry_task(b).await.unwrap();
        let c = create(&engine, of("hold", 9)).await;
        assert!(claim(&engine, 10).await.is_empty(), "{store}: a holds the key");
        // b's deadline passes while it waits: it fails, but it held nothing, so c still waits.
        clock.advance(Duration::from_millis(1500));
        assert!(claim(&engine, 10).await.is_empty(), "{store}: a still holds the key");
        assert_eq!(status(&engine, b).await, TaskState::Error, "{store}");
        complete(&engine, &a_work, json!(1)).await;
        let next = claim(&engine, 10).await;
        assert_eq!(next.len(), 1, "{store}");
        assert_eq!(next[0].step_id.task, c, "{store}");
    }
}
