//! The Rust order-fulfilment example runs to completion and shows what its handlers did.

use serde_json::json;
use tasker_core::{Engine, StepState, TaskState};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_fulfilment_example_completes_with_one_charge_retry() {
    let engine = Engine::open("memory:").await.unwrap();
    let task = tasker_core_examples::run(&engine, 7).await.unwrap();
    assert_eq!(task.status, TaskState::Complete);
    assert!(task.steps.iter().all(|s| s.status == StepState::Complete));
    let charge = task.step("charge").unwrap();
    assert_eq!(
        charge.attempts, 2,
        "the first charge attempt fails on purpose"
    );
    assert_eq!(
        task.step("ship").unwrap().result,
        Some(json!({ "tracking": "TRK-7" }))
    );
    assert_eq!(
        task.step("notify").unwrap().result,
        Some(json!({ "notified": true, "shipped": true }))
    );
    let audit = engine.transitions(task.id).await.unwrap();
    assert!(audit
        .iter()
        .any(|t| t.step.as_deref() == Some("charge") && t.to == "waiting_for_retry"));
}

#[tokio::test]
async fn an_order_without_an_id_fails_validation_for_good() {
    let engine = Engine::open("memory:").await.unwrap();
    engine
        .register_template_str(tasker_core_examples::TEMPLATE)
        .await
        .unwrap();
    let id = engine
        .create_task(tasker_core::NewTask::new("shop", "fulfil_order").context(json!({})))
        .await
        .unwrap();
    let report = tasker_core_examples::worker(&engine, 2)
        .run_until_idle(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    assert!(report.idle);
    let task = engine.task(id).await.unwrap();
    assert_eq!(task.status, TaskState::Error);
    assert_eq!(task.step("validate").unwrap().status, StepState::Error);
    assert_eq!(task.step("ship").unwrap().status, StepState::Skipped);
    // notify does not require ship to succeed, but ship was skipped because charge never ran:
    // a skipped parent has finished, so notify still runs.
    assert_eq!(task.step("notify").unwrap().status, StepState::Complete);
}
