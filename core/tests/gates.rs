//! Concurrency keys and rate limits on every store, with an injected clock: a key at its limit
//! holds back its steps (and, at template level, its tasks) across claims and engines, lets
//! them go in priority order as holders finish, and a rate key gives out its tokens at its
//! rate.

mod support;

use std::time::Duration;

use serde_json::json;
use tasker_core::{Engine, ManualClock, NewTask, TaskState};

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
    for t in [STEP_KEYED, TASK_KEYED, RATE] {
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
