//! A worker process for the multi-process tests: `tasker-test-worker URL RUNS_FILE SECONDS`.
//! Runs the test handlers (see `tasker_core_tests::test_worker`) until idle or for SECONDS.

use std::time::Duration;

use anyhow::Context;
use tasker_core::Engine;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .context("usage: tasker-test-worker URL RUNS_FILE SECONDS")?;
    let runs = args.next().context("RUNS_FILE missing")?;
    let seconds: u64 = args.next().context("SECONDS missing")?.parse()?;
    let engine = Engine::open(&url).await?;
    let worker = tasker_core_tests::test_worker(engine, &runs, 4);
    let report = worker.run_until_idle(Duration::from_secs(seconds)).await?;
    println!("{report:?}");
    Ok(())
}
