//! End-to-end throughput: steps/s of no-op Rust handlers through the engine.
//!
//! `throughput [--store URL] [--template diamond|wide|chain|batch|keyed|rated] [--tasks N] [--concurrency N]
//!             [--workers N] [--processes N] [--overlap] [--latency N] [--create N] [--step-ms N]
//!             [--no-metrics] [--smoke]` (`throughput --help` says what each does)
//!
//! Creates the tasks first, then runs the workers until idle and reports steps per second of
//! the run phase. With `--overlap` the workers start first and the tasks are created one at a
//! time while they run, timed from the first create to the last step complete (the peers'
//! workload: `--template chain --overlap`). With `--processes N` the workers run in N child processes (each with
//! `--workers` workers) instead of this one. `--latency N` instead measures ready → claimed
//! latency over N one-step tasks (see [`workload::latency`]); `--create N` the cost of creating
//! N tasks, one by one (p50/p99 latency) and through `create_tasks` in batches of 1,000 (see
//! [`workload::create_costs`]). `--template keyed` (the chain, each step keyed by customer
//! with limit 1) checks afterwards that no two steps of a customer overlapped in the records;
//! `--template rated` (one step, 50 per second) reports the rate the steps started at over
//! the first 10 s. `--step-ms N` makes each step take N ms (as a call to another service
//! would). `--no-metrics` opens every engine without metrics (to measure what they cost).
//! `--smoke` runs a tiny
//! configuration (used by the test command). The criterion bench `end_to_end` runs the same
//! workload; this harness is for one-off runs at any size.

use std::time::{Duration, Instant};

use anyhow::bail;
use tasker_core_benches::workload::{self, Placement, Template};

/// End-to-end throughput of no-op Rust handlers through the engine (see the module's docs).
#[derive(clap::Parser)]
#[command(name = "throughput")]
struct Args {
    /// The store: `memory:`, `sqlite://FILE` or a `postgres://` URL.
    #[arg(long, default_value = "memory:")]
    store: String,
    /// The workload's template: diamond, wide, chain, batch, keyed or rated.
    #[arg(long, default_value = "diamond", value_parser = Template::parse)]
    template: Template,
    /// How many tasks (the wide and batch templates make fewer, of more steps each).
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Steps each worker runs at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Workers in this process, or in each child process with `--processes`.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Run the workers in this many child processes instead of this one.
    #[arg(long, default_value_t = 0)]
    processes: usize,
    /// Instead: ready → claimed latency over this many one-step tasks.
    #[arg(long, default_value_t = 0)]
    latency: usize,
    /// Instead: the cost of creating this many tasks, one by one and in batches of 1,000.
    #[arg(long, default_value_t = 0)]
    create: usize,
    /// Each step takes this many ms (as a call to another service would).
    #[arg(long, default_value_t = 0)]
    step_ms: u64,
    /// Start the workers first and create the tasks one at a time while they run.
    #[arg(long)]
    overlap: bool,
    /// Open every engine without metrics (to measure what they cost).
    #[arg(long)]
    no_metrics: bool,
    /// A tiny run (50 tasks), as the test command makes.
    #[arg(long)]
    smoke: bool,
    /// A child process's part: run workers on the store (used by `--processes`).
    #[arg(long, hide = true)]
    worker_only: bool,
    /// With `--worker-only`: keep running until killed.
    #[arg(long, hide = true)]
    serve: bool,
}

fn parse_args() -> Args {
    let mut args = <Args as clap::Parser>::parse();
    if args.smoke {
        args.tasks = 50;
    }
    workload::set_step_ms(args.step_ms);
    workload::set_metrics(!args.no_metrics);
    args
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args();
    if args.worker_only {
        let engine = workload::open(&args.store).await?;
        if args.serve {
            // Until killed: the overlapped run's parent ends it when the work is done.
            let workers: Vec<_> = (0..args.workers)
                .map(|_| workload::noop_worker(&engine, args.concurrency))
                .collect();
            let runs: Vec<_> = workers
                .into_iter()
                .map(|w| tokio::spawn(async move { w.run().await }))
                .collect();
            for run in runs {
                run.await??;
            }
            return Ok(());
        }
        workload::run_workers(&engine, args.workers, args.concurrency).await?;
        return Ok(());
    }
    if args.latency > 0 {
        let samples = workload::latency(&args.store, args.latency).await?;
        println!(
            "store={} latency ready->claimed over {} tasks: p50={:.2} ms p99={:.2} ms max={:.2} ms",
            args.store,
            samples.len(),
            workload::percentile_ms(&samples, 0.5),
            workload::percentile_ms(&samples, 0.99),
            workload::percentile_ms(&samples, 1.0)
        );
        return Ok(());
    }
    if args.create > 0 {
        let engine = workload::open(&args.store).await?;
        workload::register(&engine, args.template).await?;
        let (latencies, single, batched) =
            workload::create_costs(&engine, args.template, args.create, 1000).await?;
        let us = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
        println!(
            "store={} template={} create_task: p50={} us p99={} us, {:.0} tasks/s; create_tasks of 1000: {:.0} tasks/s",
            args.store,
            args.template.name(),
            us(0.5),
            us(0.99),
            single,
            batched
        );
        return Ok(());
    }
    let engine = workload::open(&args.store).await?;
    // The wide template has 200× the steps of the diamond: keep the step count comparable.
    let tasks = match args.template {
        Template::Wide => (args.tasks / 200).max(1),
        Template::Batch => (args.tasks / 34).max(1),
        Template::Diamond | Template::Chain | Template::Keyed | Template::Rated => args.tasks,
    };
    let exe = std::env::current_exe()?;
    let placement = if args.processes > 0 {
        Placement::Processes {
            exe: &exe,
            processes: args.processes,
            workers: args.workers,
        }
    } else {
        Placement::InProcess {
            workers: args.workers,
        }
    };
    workload::register(&engine, args.template).await?;
    let before = workload::complete_tasks(&engine, args.template).await?;
    let setup = Instant::now();
    let creation = if args.overlap {
        workload::Creation::Overlapped
    } else {
        workload::Creation::First
    };
    let (steps, elapsed) = workload::run_once(
        &engine,
        &args.store,
        args.template,
        tasks,
        placement,
        args.concurrency,
        creation,
    )
    .await?;
    let total = setup.elapsed();
    let done = workload::complete_tasks(&engine, args.template).await? - before;
    if done != tasks {
        bail!("only {done} of {tasks} tasks completed");
    }
    let create = if args.overlap {
        "created while the workers ran, one at a time".to_owned()
    } else {
        format!(
            "create={:.0} tasks/s",
            tasks as f64 / (total - elapsed).as_secs_f64()
        )
    };
    let check = match args.template {
        Template::Keyed => format!(
            " (no two steps of a customer overlapped: {} steps checked)",
            workload::check_no_overlap(&engine).await?
        ),
        Template::Rated => {
            let (rate, n) = workload::start_rate(&engine, Duration::from_secs(10)).await?;
            format!(
                " ({n} started in the first 10 s: {rate:.1}/s for a limit of {}/s, {:+.1}%)",
                workload::RATE,
                (rate / workload::RATE - 1.0) * 100.0
            )
        }
        _ => String::new(),
    };
    println!(
        "store={} template={} tasks={tasks} steps={steps} processes={} workers={} concurrency={} {create} run={:.3}s => {:.0} steps/s{check}",
        args.store,
        args.template.name(),
        args.processes.max(1),
        args.workers,
        args.concurrency,
        elapsed.as_secs_f64(),
        steps as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
