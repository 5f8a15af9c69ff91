//! End to end: steps/s of no-op Rust handlers through the engine on memory, SQLite and
//! PostgreSQL (workers in this process, and in 3 worker processes), for the 5-step diamond and
//! the 1,000-step wide template with the tasks created first, and for the peers' workload — the
//! 3-step chain, each task created one at a time while the workers run, timed from the first
//! create to the last step (`chain-overlap`); then `create_task` latency (p50 / p99) and
//! `create_tasks` throughput, and ready → claimed latency (p50 / p99), on each store.
//!
//! Each configuration runs on a fresh store (a temporary SQLite file, a PostgreSQL schema of its
//! own). One iteration creates its tasks (not timed), then times the workers from start until
//! idle; every step must have completed. PostgreSQL as in the readiness bench
//! (`TASKER_BENCH_POSTGRES_URL`, `DATABASE_URL` or 127.0.0.1:5432).

use std::path::Path;
use std::time::Duration;

use criterion::{BenchmarkId, SamplingMode, Throughput};
use tasker_core::Engine;
use tasker_core_benches::measuring;
use tasker_core_benches::report::{self, human_rate, Table};
use tasker_core_benches::stores::{self, FreshStore, StoreKind};
use tasker_core_benches::workload::{self, Creation, Placement, Template};

const GROUP: &str = "end_to_end";
/// Workers per process and handlers per worker, as in the `throughput` harness.
const WORKERS: usize = 2;
const CONCURRENCY: usize = 64;

struct Config {
    store: StoreKind,
    processes: usize,
    template: Template,
    tasks: usize,
    creation: Creation,
}

impl Config {
    /// Steps per iteration.
    fn steps(&self) -> usize {
        self.tasks * self.template.work()
    }

    fn id(&self) -> String {
        let placement = if self.processes > 0 {
            format!("{}-processes", self.processes)
        } else {
            "1-process".to_owned()
        };
        let overlap = match self.creation {
            Creation::First => "",
            Creation::Overlapped => "-overlap",
        };
        format!(
            "{}-{}{overlap}-{placement}",
            self.store.name(),
            self.template.name()
        )
    }
}

fn configs(postgres: bool) -> Vec<Config> {
    let full = measuring();
    // Steps per iteration: 20,000 on memory, 2,000 on the SQL stores; a handful when smoke testing.
    let tasks = |store: StoreKind, template: Template| match (full, store, template) {
        (false, _, Template::Diamond | Template::Chain | Template::Keyed | Template::Rated) => 10,
        (false, _, Template::Wide | Template::Batch) => 1,
        (
            true,
            StoreKind::Memory,
            Template::Diamond | Template::Chain | Template::Keyed | Template::Rated,
        ) => 4_000,
        (true, StoreKind::Memory, Template::Wide | Template::Batch) => 20,
        (true, _, Template::Diamond | Template::Chain | Template::Keyed | Template::Rated) => 400,
        (true, _, Template::Wide | Template::Batch) => 2,
    };
    let mut out = Vec::new();
    for (template, creation) in [
        (Template::Diamond, Creation::First),
        (Template::Wide, Creation::First),
        (Template::Chain, Creation::Overlapped),
    ] {
        let mut stores = vec![(StoreKind::Memory, 0), (StoreKind::Sqlite, 0)];
        if postgres {
            stores.extend([(StoreKind::Postgres, 0), (StoreKind::Postgres, 3)]);
        }
        for (store, processes) in stores {
            out.push(Config {
                store,
                processes,
                template,
                tasks: tasks(store, template),
                creation,
            });
        }
    }
    out
}

fn main() {
    let rt = tasker_core_benches::runtime();
    let mut c = tasker_core_benches::whole_run_criterion();
    let postgres = rt.block_on(stores::postgres_available());
    let exe = Path::new(env!("CARGO_BIN_EXE_throughput"));
    let configs = configs(postgres);

    let mut group = c.benchmark_group(GROUP);
    group.sampling_mode(SamplingMode::Flat);
    for config in &configs {
        let id = config.id();
        let fresh = rt
            .block_on(FreshStore::new(config.store, &id))
            .expect("a fresh store");
        let engine = rt
            .block_on(Engine::open(&fresh.url))
            .expect("opening the store");
        let placement = if config.processes > 0 {
            Placement::Processes {
                exe,
                processes: config.processes,
                workers: WORKERS,
            }
        } else {
            Placement::InProcess { workers: WORKERS }
        };
        let mut created = 0;
        rt.block_on(workload::register(&engine, config.template))
            .expect("registering the template");
        group.throughput(Throughput::Elements(config.steps() as u64));
        group.bench_function(BenchmarkId::new("steps", &id), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (_, elapsed) = rt
                        .block_on(workload::run_once(
                            &engine,
                            &fresh.url,
                            config.template,
                            config.tasks,
                            placement,
                            CONCURRENCY,
                            config.creation,
                        ))
                        .expect("a run of the workload");
                    created += config.tasks;
                    total += elapsed;
                }
                total
            })
        });
        let complete = rt
            .block_on(workload::complete_tasks(&engine, config.template))
            .expect("counting the complete tasks");
        assert_eq!(complete, created, "{id}: not every task completed");
        drop(engine);
        rt.block_on(fresh.remove()).expect("removing the store");
    }
    group.finish();
    c.final_summary();

    let mut table = Table::new(
        "End to end, no-op Rust handlers (2 workers of 64 handlers per process)",
        &[
            "store",
            "template",
            "tasks created",
            "worker processes",
            "steps/s",
        ],
    );
    for config in &configs {
        if let Some(ns) = report::mean_ns(GROUP, "steps", &config.id()) {
            let steps = config.steps() as f64;
            table.row(vec![
                config.store.name().to_owned(),
                config.template.name().to_owned(),
                match config.creation {
                    Creation::First => "first".to_owned(),
                    Creation::Overlapped => "one at a time, while the workers run".to_owned(),
                },
                format!("{}", config.processes.max(1)),
                human_rate(steps / (ns / 1e9)),
            ]);
        }
    }
    table.print();

    // What creating tasks costs, with no worker running: percentiles, so outside criterion.
    let creates = if measuring() { 2_000 } else { 20 };
    let mut creation = Table::new(
        &format!("create_task one at a time ({creates} diamond tasks) and create_tasks in batches of 1,000"),
        &["store", "create_task p50", "create_task p99", "one by one", "in batches"],
    );
    let mut kinds = vec![StoreKind::Memory, StoreKind::Sqlite];
    if postgres {
        kinds.push(StoreKind::Postgres);
    }
    for kind in kinds {
        let fresh = rt
            .block_on(FreshStore::new(kind, "creation"))
            .expect("a fresh store");
        let engine = rt
            .block_on(Engine::open(&fresh.url))
            .expect("opening the store");
        rt.block_on(workload::register(&engine, Template::Diamond))
            .expect("registering the template");
        let (sorted, single, batched) = rt
            .block_on(workload::create_costs(
                &engine,
                Template::Diamond,
                creates,
                1000,
            ))
            .expect("the creation run");
        creation.row(vec![
            kind.name().to_owned(),
            format!("{} µs", sorted[sorted.len() / 2]),
            format!(
                "{} µs",
                sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
            ),
            format!("{} tasks/s", human_rate(single)),
            format!("{} tasks/s", human_rate(batched)),
        ]);
        drop(engine);
        rt.block_on(fresh.remove()).expect("removing the store");
    }
    creation.print();

    // Ready → claimed latency: percentiles, not means, so measured outside criterion.
    let samples = if measuring() { 100 } else { 3 };
    let mut latency = Table::new(
        &format!("Ready → claimed latency over {samples} one-step tasks, 20 ms apart"),
        &["store", "wake-up", "p50", "p99"],
    );
    let mut kinds = vec![
        (StoreKind::Memory, "in-process"),
        (StoreKind::Sqlite, "in-process"),
    ];
    if postgres {
        kinds.push((StoreKind::Postgres, "LISTEN/NOTIFY, second engine"));
    }
    for (kind, how) in kinds {
        let fresh = rt
            .block_on(FreshStore::new(kind, "latency"))
            .expect("a fresh store");
        let sorted = rt
            .block_on(workload::latency(&fresh.url, samples))
            .expect("the latency run");
        latency.row(vec![
            kind.name().to_owned(),
            how.to_owned(),
            format!("{:.2} ms", workload::percentile_ms(&sorted, 0.5)),
            format!("{:.2} ms", workload::percentile_ms(&sorted, 0.99)),
        ]);
        rt.block_on(fresh.remove()).expect("removing the store");
    }
    latency.print();
}
