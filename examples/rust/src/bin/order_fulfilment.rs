//! Runs the order-fulfilment example and prints each step's state, attempts and duration.
//!
//! Usage: `order_fulfilment [STORE_URL]` (default: the engine's default store).

use tasker_core::Engine;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("TASKER_DATABASE_URL").ok())
        .unwrap_or_else(|| tasker_core::engine::DEFAULT_URL.to_owned());
    let engine = Engine::open(&url).await?;
    let task = tasker_core_examples::run(&engine, 42).await?;
    println!(
        "task {} ({}/{} {}) on {url}: {}",
        task.id, task.namespace, task.name, task.version, task.status
    );
    println!(
        "{:<14} {:<18} {:>8} {:>12}  result",
        "step", "state", "attempts", "duration_ms"
    );
    for step in &task.steps {
        let duration = step
            .duration_ms
            .map(|d| d.to_string())
            .unwrap_or_else(|| "-".into());
        let result = step
            .result
            .as_ref()
            .map(|r| r.to_string())
            .unwrap_or_default();
        println!(
            "{:<14} {:<18} {:>8} {:>12}  {result}",
            step.name,
            step.status.as_str(),
            step.attempts,
            duration
        );
    }
    if task.status != tasker_core::TaskState::Complete {
        anyhow::bail!("the task ended {}", task.status);
    }
    Ok(())
}
