//! End-to-end throughput: steps/s of no-op Rust handlers through the engine.
//!
//! `throughput [--store URL] [--template diamond|wide] [--tasks N] [--concurrency N] [--workers N]`
//!
//! Creates the tasks first, then runs the workers until idle and reports steps per second of
//! the run phase. `--smoke` runs a tiny configuration (used by the test command).

use std::time::{Duration, Instant};

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
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        store: "memory:".into(),
        template: "diamond".into(),
        tasks: 20_000,
        concurrency: 64,
        workers: 2,
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
            "--smoke" => args.tasks = 50,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
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
    let mut runs = Vec::new();
    for _ in 0..args.workers {
        let worker = Worker::builder(engine.clone())
            .concurrency(args.concurrency)
            .handler("noop", |_s: ClaimedStep| async {
                Ok::<Value, HandlerError>(Value::Null)
            })
            .build();
        runs.push(tokio::spawn(async move {
            worker.run_until_idle(Duration::from_secs(600)).await
        }));
    }
    for run in runs {
        run.await??;
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
        "store={} template={name} tasks={tasks} steps={steps} workers={} concurrency={} create={:.0} tasks/s run={:.3}s => {:.0} steps/s",
        args.store,
        args.workers,
        args.concurrency,
        tasks as f64 / setup.as_secs_f64(),
        elapsed.as_secs_f64(),
        steps as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
