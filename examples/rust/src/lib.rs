//! The order-fulfilment workflow (`examples/order_fulfilment.yaml`) with Rust handlers.
//!
//! `charge` fails its first attempt with a retryable "gateway busy" error and a short
//! `retry_after`, so a run shows a retry; everything else succeeds.

use std::time::Duration;

use serde_json::{json, Value};
use tasker_core::{ClaimedStep, Engine, HandlerError, NewTask, TaskId, TaskView, Worker};

/// The template, as the other languages' examples read it too.
pub const TEMPLATE: &str = include_str!("../../order_fulfilment.yaml");

fn order_id(step: &ClaimedStep) -> Result<i64, HandlerError> {
    step.context
        .get("order")
        .and_then(Value::as_i64)
        .ok_or_else(|| HandlerError::permanent("context has no integer \"order\""))
}

/// A worker with the five handlers of the example.
pub fn worker(engine: &Engine, concurrency: usize) -> Worker {
    Worker::builder(engine.clone())
        .concurrency(concurrency)
        .handler("validate", |step: ClaimedStep| async move {
            let order = order_id(&step)?;
            Ok(json!({ "order": order, "valid": true }))
        })
        .handler("charge", |step: ClaimedStep| async move {
            if step.attempt == 1 {
                return Err(HandlerError::retry_after(
                    "gateway busy",
                    Duration::from_millis(50),
                ));
            }
            Ok(json!({ "charged": true, "amount_cents": 4200 }))
        })
        .handler("reserve_stock", |_step: ClaimedStep| async move {
            Ok(json!({ "reserved": 1 }))
        })
        .handler("ship", |step: ClaimedStep| async move {
            let charged = step
                .inputs
                .get("charge")
                .and_then(|c| c.get("charged"))
                .and_then(Value::as_bool);
            if charged != Some(true) {
                return Err(HandlerError::permanent("refusing to ship an unpaid order"));
            }
            Ok(json!({ "tracking": format!("TRK-{}", order_id(&step)?) }))
        })
        .handler("notify", |step: ClaimedStep| async move {
            let shipped = !step.inputs.get("ship").is_none_or(Value::is_null);
            Ok(json!({ "notified": true, "shipped": shipped }))
        })
        .build()
}

/// Registers the template, creates one order task and works it to the end.
pub async fn run(engine: &Engine, order: i64) -> Result<TaskView, tasker_core::Error> {
    engine.register_template_str(TEMPLATE).await?;
    let task: TaskId = engine
        .create_task(NewTask::new("shop", "fulfil_order").context(json!({ "order": order })))
        .await?;
    worker(engine, 4)
        .run_until_idle(Duration::from_secs(30))
        .await?;
    engine.task(task).await
}
