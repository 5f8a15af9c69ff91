//! The end-to-end workload shared by the `throughput` harness and the criterion benches: tasks
//! of a template created up front, then no-op Rust handlers run until nothing is left.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tasker_core::{ClaimedStep, Engine, HandlerError, NewTask, TaskFilter, TaskState, Worker};

/// The 5-step diamond: `a`, then `b`, `c`, `d` in parallel, then `e`.
pub const DIAMOND: &str = "namespace: bench\nname: diamond\nversion: 1.0.0\nsteps:\n  - name: a\n    handler: noop\n  - name: b\n    handler: noop\n    depends_on: [a]\n  - name: c\n    handler: noop\n    depends_on: [a]\n  - name: d\n    handler: noop\n    depends_on: [a]\n  - name: e\n    handler: noop\n    depends_on: [b, c, d]\n";

/// The peers' workload: a chain of three no-op steps.
pub const CHAIN: &str = "namespace: bench\nname: chain\nversion: 1.0.0\nsteps:\n  - name: a\n    handler: noop\n  - name: b\n    handler: noop\n    depends_on: [a]\n  - name: c\n    handler: noop\n    depends_on: [b]\n";

/// [`CHAIN`] with every step keyed by customer, limit 1: no two steps of a customer at once
/// (the tasks' customers are `i % CUSTOMERS`).
pub const KEYED: &str = "namespace: bench\nname: keyed\nversion: 1.0.0\nsteps:\n  - name: a\n    handler: noop\n    concurrency: {key: \"customer:{{context.customer}}\", limit: 1}\n  - name: b\n    handler: noop\n    depends_on: [a]\n    concurrency: {key: \"customer:{{context.customer}}\", limit: 1}\n  - name: c\n    handler: noop\n    depends_on: [b]\n    concurrency: {key: \"customer:{{context.customer}}\", limit: 1}\n";

/// One no-op step with a rate limit of [`RATE`] per second (the default burst, a tenth).
pub const RATED: &str = "namespace: bench\nname: rated\nversion: 1.0.0\nsteps:\n  - name: call\n    handler: noop\n    rate_limit: {key: bench, limit: 50, per_ms: 1000}\n";

/// The rate of [`RATED`], per second.
pub const RATE: f64 = 50.0;

/// How many customers the tasks are spread over (`context.customer`).
pub const CUSTOMERS: usize = 10;

/// The steps of the wide template that depend on its root.
const WIDE_CHILDREN: usize = 999;

/// The workflow templates of the end-to-end figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    /// [`DIAMOND`], 5 steps.
    Diamond,
    /// One root and 999 steps that depend on it: 1,000 steps.
    Wide,
    /// [`CHAIN`], 3 steps (the workload the peers are compared on).
    Chain,
    /// [`BATCH`]: a batchable step whose batch of [`BATCH_TOTAL`] in slices of 100 runs as 100
    /// instances of its worker step, then one step after them: 102 steps run per task.
    Batch,
    /// [`KEYED`]: the chain, each step keyed by customer with limit 1.
    Keyed,
    /// [`RATED`]: one step, rate-limited to [`RATE`] per second across every worker.
    Rated,
}

/// A batch: `load` returns a total of [`BATCH_TOTAL`], `slice` runs per 100 of it, `done` after.
pub const BATCH: &str = "namespace: bench\nname: batch\nversion: 1.0.0\nsteps:\n  - name: load\n    handler: batch_load\n    type: batchable\n    batch: {worker: slice, size: 100}\n  - name: slice\n    handler: noop\n    type: batch_worker\n    depends_on: [load]\n  - name: done\n    handler: noop\n    depends_on: [slice]\n";
/// The total each task of [`BATCH`] slices: 100 slices.
pub const BATCH_TOTAL: u64 = 10_000;

impl Template {
    /// Parses `diamond` or `wide`.
    pub fn parse(name: &str) -> anyhow::Result<Template> {
        match name {
            "diamond" => Ok(Template::Diamond),
            "wide" => Ok(Template::Wide),
            "chain" => Ok(Template::Chain),
            "batch" => Ok(Template::Batch),
            "keyed" => Ok(Template::Keyed),
            "rated" => Ok(Template::Rated),
            other => bail!(
                "unknown template {other:?}: expected diamond, wide, chain, batch, keyed or rated"
            ),
        }
    }

    /// The template's name.
    pub fn name(self) -> &'static str {
        match self {
            Template::Diamond => "diamond",
            Template::Wide => "wide",
            Template::Chain => "chain",
            Template::Batch => "batch",
            Template::Keyed => "keyed",
            Template::Rated => "rated",
        }
    }

    /// How many steps its template has.
    pub fn steps(self) -> usize {
        match self {
            Template::Diamond => 5,
            Template::Wide => 1 + WIDE_CHILDREN,
            Template::Chain | Template::Batch | Template::Keyed => 3,
            Template::Rated => 1,
        }
    }

    /// How many steps workers run per task (a batch's worker step runs as its instances).
    pub fn work(self) -> usize {
        match self {
            Template::Batch => 2 + BATCH_TOTAL.div_ceil(100) as usize,
            other => other.steps(),
        }
    }

    /// The template's YAML text.
    pub fn text(self) -> String {
        match self {
            Template::Diamond => DIAMOND.to_owned(),
            Template::Chain => CHAIN.to_owned(),
            Template::Batch => BATCH.to_owned(),
            Template::Keyed => KEYED.to_owned(),
            Template::Rated => RATED.to_owned(),
            Template::Wide => {
                let mut t = String::from(
                    "namespace: bench\nname: wide\nversion: 1.0.0\nsteps:\n  - name: root\n    handler: noop\n",
                );
                for i in 0..WIDE_CHILDREN {
                    t.push_str(&format!(
                        "  - name: s{i}\n    handler: noop\n    depends_on: [root]\n"
                    ));
                }
                t
            }
        }
    }
}

/// How long each `noop` step takes, in milliseconds (0: it returns at once); see
/// [`set_step_ms`].
static STEP_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Makes each `noop` step of this process (and of the worker processes it starts) take `ms`
/// milliseconds, as a call to another service would.
pub fn set_step_ms(ms: u64) {
    STEP_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}

fn step_ms() -> u64 {
    STEP_MS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether the engines of this process (and of the worker processes it starts) keep metrics;
/// see [`set_metrics`].
static METRICS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Opens this process's engines, and those of the worker processes it starts, with metrics
/// (the default) or without (`--no-metrics`: to measure what they cost).
pub fn set_metrics(on: bool) {
    METRICS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// An engine on `store`, with metrics or not as [`set_metrics`] said.
pub async fn open(store: &str) -> Result<Engine, tasker_core::Error> {
    Engine::builder()
        .url(store)
        .metrics(METRICS.load(std::sync::atomic::Ordering::Relaxed))
        .build()
        .await
}

/// The command that starts a worker process of this harness on `store`, with this process's
/// settings.
fn worker_command(
    exe: &std::path::Path,
    store: &str,
    workers: usize,
    concurrency: usize,
) -> std::process::Command {
    let mut command = std::process::Command::new(exe);
    command
        .args(["--worker-only", "--store", store])
        .args(["--workers", &workers.to_string()])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--step-ms", &step_ms().to_string()]);
    if !METRICS.load(std::sync::atomic::Ordering::Relaxed) {
        command.arg("--no-metrics");
    }
    command
}

/// A worker with one no-op handler, `noop` (taking [`set_step_ms`] each).
pub fn noop_worker(engine: &Engine, concurrency: usize) -> Worker {
    Worker::builder(engine.clone())
        .concurrency(concurrency)
        .handler("noop", |_s: ClaimedStep| async {
            let ms = step_ms();
            if ms > 0 {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Ok::<Value, HandlerError>(Value::Null)
        })
        .handler("batch_load", |_s: ClaimedStep| async {
            Ok::<_, HandlerError>(tasker_core::Batch::total(BATCH_TOTAL))
        })
        .build()
}

/// Runs `workers` no-op workers on `engine` until nothing is left; the steps they completed.
pub async fn run_workers(
    engine: &Engine,
    workers: usize,
    concurrency: usize,
) -> anyhow::Result<u64> {
    let mut runs = Vec::new();
    for _ in 0..workers {
        let worker = noop_worker(engine, concurrency);
        runs.push(tokio::spawn(async move {
            worker.run_until_idle(Duration::from_secs(600)).await
        }));
    }
    let mut completed = 0;
    for run in runs {
        completed += run.await??.completed;
    }
    Ok(completed)
}

/// Runs the workers in `processes` child processes of `exe` (the `throughput` harness, each
/// with `--worker-only` and `workers` workers) until each is idle.
pub fn run_worker_processes(
    exe: &Path,
    store: &str,
    processes: usize,
    workers: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let children: Vec<_> = (0..processes)
        .map(|_| {
            worker_command(exe, store, workers, concurrency)
                .spawn()
                .with_context(|| format!("starting {}", exe.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    for mut child in children {
        if !child.wait()?.success() {
            bail!("a worker process failed");
        }
    }
    Ok(())
}

/// Registers `template` on `engine`.
pub async fn register(engine: &Engine, template: Template) -> anyhow::Result<()> {
    let graph = engine.register_template_str(&template.text()).await?;
    if graph.len() != template.steps() {
        bail!(
            "the {} template has {} steps, not {}",
            template.name(),
            graph.len(),
            template.steps()
        );
    }
    Ok(())
}

/// Creates `tasks` tasks of `template` (registered) on `engine`; the number of steps made.
pub async fn create_tasks(
    engine: &Engine,
    template: Template,
    tasks: usize,
) -> anyhow::Result<usize> {
    for i in 0..tasks {
        engine
            .create_task(NewTask::new("bench", template.name()).context(context(i)))
            .await?;
    }
    Ok(tasks * template.work())
}

/// Task `i`'s context: its number and its customer.
fn context(i: usize) -> Value {
    json!({ "i": i, "customer": i % CUSTOMERS })
}

/// Checks the records of the keyed run: no two steps of one customer ever in progress at
/// once (each step from its claim to its completion, as its transitions say); the number of
/// steps checked.
pub async fn check_no_overlap(engine: &Engine) -> anyhow::Result<usize> {
    let tasks = tasks_named(engine, "keyed", None).await?;
    let mut spans: Vec<(u64, i64, i64)> = Vec::new();
    for task in &tasks {
        let customer = task.context["customer"].as_u64().unwrap_or_default();
        let mut started = std::collections::HashMap::new();
        for t in engine.transitions(task.id).await? {
            let (Some(step), us) = (t.step.clone(), t.at.timestamp_micros()) else {
                continue;
            };
            match t.to.as_str() {
                "in_progress" => {
                    started.insert(step, us);
                }
                _ if t.from.as_deref() == Some("in_progress") => {
                    if let Some(from) = started.remove(&step) {
                        spans.push((customer, from, us));
                    }
                }
                _ => {}
            }
        }
    }
    spans.sort();
    for pair in spans.windows(2) {
        let ((c1, _, end), (c2, start, _)) = (pair[0], pair[1]);
        if c1 == c2 && start < end {
            bail!("two steps of customer {c1} overlapped: one ran until {end} µs, the next began at {start} µs");
        }
    }
    Ok(spans.len())
}

/// The rate at which the rated run's steps started, per second, over the first `window` after
/// the first start; and how many started in it.
pub async fn start_rate(engine: &Engine, window: Duration) -> anyhow::Result<(f64, usize)> {
    let tasks = tasks_named(engine, "rated", None).await?;
    let mut starts = Vec::new();
    for task in &tasks {
        for t in engine.transitions(task.id).await? {
            if t.step.is_some() && t.to == "in_progress" {
                starts.push(t.at.timestamp_millis());
            }
        }
    }
    starts.sort_unstable();
    let Some(&first) = starts.first() else {
        bail!("no step started");
    };
    let end = first + window.as_millis() as i64;
    let n = starts.iter().filter(|&&s| s < end).count();
    Ok((n as f64 / window.as_secs_f64(), n))
}

/// Creation as users pay for it, with no worker running: `create_task` one at a time (the
/// latency of each, in microseconds, sorted) and the same number through `create_tasks` in
/// batches of `batch`; returns (the latencies, tasks/s one by one, tasks/s in batches).
pub async fn create_costs(
    engine: &Engine,
    template: Template,
    tasks: usize,
    batch: usize,
) -> anyhow::Result<(Vec<u64>, f64, f64)> {
    let mut latencies = Vec::with_capacity(tasks);
    let started = Instant::now();
    for i in 0..tasks {
        let one = Instant::now();
        engine
            .create_task(NewTask::new("bench", template.name()).context(context(i)))
            .await?;
        latencies.push(one.elapsed().as_micros() as u64);
    }
    let single = tasks as f64 / started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let started = Instant::now();
    let mut made = 0;
    while made < tasks {
        let n = batch.max(1).min(tasks - made);
        let batch: Vec<NewTask> = (made..made + n)
            .map(|i| NewTask::new("bench", template.name()).context(context(i)))
            .collect();
        made += engine.create_tasks(batch).await?.len();
    }
    let batched = tasks as f64 / started.elapsed().as_secs_f64();
    Ok((latencies, single, batched))
}

/// When the tasks of a run are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    /// All of them first; the run phase is timed alone.
    First,
    /// The peers' way of counting: the workers run first, the tasks are created one at a time
    /// while they work, and the time runs from the first create to the last step complete.
    Overlapped,
}

async fn run_overlapped(
    engine: &Engine,
    store: &str,
    template: Template,
    tasks: usize,
    placement: Placement<'_>,
    concurrency: usize,
) -> anyhow::Result<(usize, Duration)> {
    let mut local = Vec::new();
    let mut children = Vec::new();
    match placement {
        Placement::InProcess { workers } => {
            for _ in 0..workers {
                let worker = noop_worker(engine, concurrency);
                let running = worker.clone();
                local.push((worker, tokio::spawn(async move { running.run().await })));
            }
        }
        Placement::Processes {
            exe,
            processes,
            workers,
        } => {
            for _ in 0..processes {
                children.push(
                    worker_command(exe, store, workers, concurrency)
                        .arg("--serve")
                        .spawn()
                        .with_context(|| format!("starting {}", exe.display()))?,
                );
            }
        }
    }
    let started = Instant::now();
    let steps = create_tasks(engine, template, tasks).await?;
    let handlers: Vec<std::sync::Arc<str>> = vec!["noop".into(), "batch_load".into()];
    let deadline = started + Duration::from_secs(600);
    loop {
        let status = engine.work_status_for(&handlers).await?;
        if status.is_idle() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the overlapped run did not finish in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    for (worker, run) in local {
        worker.stop();
        run.await??;
    }
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok((steps, elapsed))
}

/// How the workers of one run are placed.
#[derive(Debug, Clone, Copy)]
pub enum Placement<'a> {
    /// `workers` workers in this process.
    InProcess {
        /// Workers.
        workers: usize,
    },
    /// `processes` child processes of the harness at `exe`, `workers` workers each.
    Processes {
        /// The `throughput` executable.
        exe: &'a Path,
        /// Child processes.
        processes: usize,
        /// Workers per process.
        workers: usize,
    },
}

/// Creates `tasks` tasks of `template` (registered) on `engine` (opened on `store`), runs the workers until
/// idle and returns the steps and the run phase's wall time. Every step must have completed.
/// With [`Creation::Overlapped`], the tasks are created while the workers run (and timed).
pub async fn run_once(
    engine: &Engine,
    store: &str,
    template: Template,
    tasks: usize,
    placement: Placement<'_>,
    concurrency: usize,
    creation: Creation,
) -> anyhow::Result<(usize, Duration)> {
    if creation == Creation::Overlapped {
        return run_overlapped(engine, store, template, tasks, placement, concurrency).await;
    }
    let steps = create_tasks(engine, template, tasks).await?;
    let started = Instant::now();
    match placement {
        Placement::InProcess { workers } => {
            let completed = run_workers(engine, workers, concurrency).await?;
            let elapsed = started.elapsed();
            if completed != steps as u64 {
                bail!("{completed} of {steps} steps completed");
            }
            Ok((steps, elapsed))
        }
        Placement::Processes {
            exe,
            processes,
            workers,
        } => {
            let store = store.to_owned();
            let exe = exe.to_owned();
            tokio::task::spawn_blocking(move || {
                run_worker_processes(&exe, &store, processes, workers, concurrency)
            })
            .await??;
            Ok((steps, started.elapsed()))
        }
    }
}

/// The number of complete tasks of `template` on `engine`.
pub async fn complete_tasks(engine: &Engine, template: Template) -> anyhow::Result<usize> {
    Ok(
        tasks_named(engine, template.name(), Some(TaskState::Complete))
            .await?
            .len(),
    )
}

/// Every task of the template `name` on `engine` (in `status` when given).
async fn tasks_named(
    engine: &Engine,
    name: &str,
    status: Option<TaskState>,
) -> anyhow::Result<Vec<tasker_core::TaskView>> {
    Ok(engine
        .list_tasks(&TaskFilter {
            status,
            name: Some(name.to_owned()),
            limit: usize::MAX,
            ..TaskFilter::default()
        })
        .await?)
}

fn micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Ready → claimed latency in microseconds over `samples` one-step tasks created 20 ms apart
/// while a worker waits with a 10 s poll interval, so only a wake-up (in-process, or
/// LISTEN/NOTIFY through a second engine on PostgreSQL) explains a short latency.
pub async fn latency(store: &str, samples: usize) -> anyhow::Result<Vec<u64>> {
    let creator = open(store).await?;
    creator
        .register_template_str(
            "namespace: bench\nname: ping\nversion: 1.0.0\nsteps: [{name: ping}]",
        )
        .await?;
    let worker_engine = if store.starts_with("postgres") {
        open(store).await?
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
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
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
        out.push(sample);
    }
    worker.stop();
    run.await??;
    out.sort_unstable();
    Ok(out)
}

/// The `p`-quantile (0..=1) of sorted `samples`, in milliseconds.
pub fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}
