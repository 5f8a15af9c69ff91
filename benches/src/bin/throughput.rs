//! End-to-end throughput: steps/s of no-op Rust handlers through the engine.
//!
//! `throughput [--store URL] [--template diamond|wide] [--tasks N] [--concurrency N]
//!             [--workers N] [--processes N] [--latency N] [--smoke]`
//!
//! Creates the tasks first, then runs the workers until idle and reports steps per second of
//! the run phase. With `--processes N` the workers run in N child processes (each with
//! `--workers` workers) instead of this one. `--latency N` instead measures ready → claimed
//! latency over N one-step tasks created 20 ms apart while a worker waits (poll interval 10 s,
//! so only a wake-up — in-process, or LISTEN/NOTIFY on PostgreSQL through a second engine —
//! explains a short latency). `--smoke` runs a tiny configuration (used by the test command).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tasker_core::{ClaimedStep, Engine, HandlerError, NewTask, TaskFilter, TaskState, Worker};

const DIAMOND: &str = "namespace: bench\nname: diamond\nversion: 1.0.0\nsteps:\n  - name: a\n    handler: noop\n  - name: b\n    handler: noop\n    depends_on: [a]\n  - name: c\n    handler: noop\n    depends_on: [a]\n  - name: d\n    handler: noop\n    depends_on: [a]\n  - name: e\n    handler: noop\n    depends_on: [b, c, d]\n";

fn wide(width: usize) -> String {
    let mut t = String::from(
        "namespace: bench\nname: wide\nversion: 1.0.0\nsteps:\n  - name: root\n    handler: noop\n",
    );
    for i in 0..width {
        t.push_str(&format!(
            "  - name: s{i}\n    handler: noop\n    depends_on: [root]\n"
        ));
    }
    t
}

struct Args {
    store: String,
    template: String,
    tasks: usize,
    concurrency: usize,
    workers: usize,
    processes: usize,
    latency: usize,
    worker_only: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        store: "memory:".into(),
        template: "diamond".into(),
        tasks: 20_000,
        concurrency: 64,
        workers: 2,
        processes: 0,
        latency: 0,
        worker_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--store" => args.store = value()?,
            "--template" => args.template = value()?,
            "--tasks" => args.tasks = value()?.parse()?,
            "--concurrency" => args.concurrency = value()?.parse()?,
            "--workers" => args.workers = value()?.parse()?,
            "--processes" => args.processes = value()?.parse()?,
            "--latency" => args.latency = value()?.parse()?,
            "--worker-only" => args.worker_only = true,
            "--smoke" => args.tasks = 50,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

fn noop_worker(engine: &Engine, concurrency: usize) -> Worker {
    Worker::builder(engine.clone())
        .concurrency(concurrency)
        .handler("noop", |_s: ClaimedStep| async {
            Ok::<Value, HandlerError>(Value::Null)
        })
        .build()
}

/// Runs `workers` workers on `engine` until nothing is left.
async fn run_workers(engine: &Engine, workers: usize, concurrency: usize) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for _ in 0..workers {
        let worker = noop_worker(engine, concurrency);
        runs.push(tokio::spawn(async move {
            worker.run_until_idle(Duration::from_secs(600)).await
        }));
    }
    for run in runs {
        run.await??;
    }
    Ok(())
}

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Ready → claimed latency (see the module docs).
async fn latency(args: &Args) -> anyhow::Result<()> {
    let creator = Engine::open(&args.store).await?;
    creator
        .register_template_str(
            "namespace: bench\nname: ping\nversion: 1.0.0\nsteps: [{name: ping}]",
        )
        .await?;
    // On PostgreSQL the worker has its own engine: the wake-up must come through the database.
    let worker_engine = if args.store.starts_with("postgres") {
        Engine::open(&args.store).await?
    } else {
        creator.clone()
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let worker = Worker::builder(worker_engine)
        .poll_interval(Duration::from_secs(10))
        .handler("ping", move |step: ClaimedStep| {
            let tx = tx.clone();
            async move {
                let created = step.context["created_us"].as_u64().unwrap_or(0);
                let _ = tx.send(micros_now().saturating_sub(created));
                Ok::<Value, HandlerError>(Value::Null)
            }
        })
        .build();
    let running = worker.clone();
    let run = tokio::spawn(async move { running.run().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut samples = Vec::with_capacity(args.latency);
    for _ in 0..args.latency {
        tokio::time::sleep(Duration::from_millis(20)).await;
        creator
            .create_task(
                NewTask::new("bench", "ping").context(json!({ "created_us": micros_now() })),
            )
            .await?;
        let sample = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .context("no step was claimed within 30 s")?
            .context("the worker stopped")?;
        samples.push(sample);
    }
    worker.stop();
    run.await??;
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0;
    println!(
        "store={} latency ready->claimed over {} tasks: p50={:.2} ms p99={:.2} ms max={:.2} ms",
        args.store,
        samples.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if args.worker_only {
        let engine = Engine::open(&args.store).await?;
        return run_workers(&engine, args.workers, args.concurrency).await;
    }
    if args.latency > 0 {
        return latency(&args).await;
    }
    let engine = Engine::open(&args.store).await?;
    let (template, name) = match args.template.as_str() {
        "diamond" => (DIAMOND.to_owned(), "diamond"),
        "wide" => (wide(999), "wide"),
        other => bail!("unknown template {other}"),
    };
    let graph = engine.register_template_str(&template).await?;
    let tasks = if name == "wide" {
        (args.tasks / 200).max(1)
    } else {
        args.tasks
    };
    let setup = Instant::now();
    for i in 0..tasks {
        engine
            .create_task(NewTask::new("bench", name).context(json!({ "i": i })))
            .await?;
    }
    let setup = setup.elapsed();
    let steps = tasks * graph.len();

    let started = Instant::now();
    if args.processes > 0 {
        let exe = std::env::current_exe()?;
        let children: Vec<_> = (0..args.processes)
            .map(|_| {
                std::process::Command::new(&exe)
                    .args(["--worker-only", "--store", &args.store])
                    .args(["--workers", &args.workers.to_string()])
                    .args(["--concurrency", &args.concurrency.to_string()])
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        for mut child in children {
            if !child.wait()?.success() {
                bail!("a worker process failed");
            }
        }
    } else {
        run_workers(&engine, args.workers, args.concurrency).await?;
    }
    let elapsed = started.elapsed();

    let done = engine
        .list_tasks(&TaskFilter {
            status: Some(TaskState::Complete),
            limit: usize::MAX,
            ..TaskFilter::default()
        })
        .await?
        .len();
    if done != tasks {
        bail!("only {done} of {tasks} tasks completed");
    }
    println!(
        "store={} template={name} tasks={tasks} steps={steps} processes={} workers={} concurrency={} create={:.0} tasks/s run={:.3}s => {:.0} steps/s",
        args.store,
        args.processes.max(1),
        args.workers,
        args.concurrency,
        tasks as f64 / setup.as_secs_f64(),
        elapsed.as_secs_f64(),
        steps as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
