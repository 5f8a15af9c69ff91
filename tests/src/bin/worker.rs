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
    // Started during a database restart, it waits for the server as a supervised process would.
    let mut tries = 0;
    let engine = loop {
        match Engine::open(&url).await {
            Ok(engine) => break engine,
            Err(e) if tries < 60 => {
                tries += 1;
                eprintln!("opening the engine: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let worker = tasker_core_tests::test_worker(engine, &runs, 4);
    let report = worker.run_until_idle(Duration::from_secs(seconds)).await?;
    println!("{report:?}");
    Ok(())
}
