//! Readiness: the incremental and the full Rust forms against the same question answered by a
//! SQL function in PostgreSQL, the way the Rails Tasker engine answers it
//! (`benches/sql/readiness_baseline.sql`), on identical DAGs of 10 to 10,000 steps (chain,
//! fan-out, lattice, random), each half completed.
//!
//! * `sql` — one call of the function: the ready steps of the task, one round trip;
//! * `full` — [`readiness::evaluate`] over the whole task: the same answer from the states alone;
//! * `incremental` — what the engine does when the running step completes: update its
//!   children's counters and report what became ready ([`readiness::propagate_into`]);
//! * `sql-round-trip` — `SELECT 1`: the floor under every SQL figure.
//!
//! Before measuring, every graph's SQL answer is checked against the Rust one. PostgreSQL comes
//! from `TASKER_BENCH_POSTGRES_URL` (required when set), `DATABASE_URL` or 127.0.0.1:5432;
//! without a server the SQL side is skipped. `TASKER_BENCH_KEEP_SCHEMA=1` keeps the baseline's
//! schema afterwards, to look at its plans.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion};
use tasker_core::readiness::{self, Choices, Outcome, Release};
use tasker_core::{StepState, TaskGraph};
use tasker_core_benches::dags::{self, Shape};
use tasker_core_benches::readiness_sql::SqlBaseline;
use tasker_core_benches::report::{self, human_time, Table};
use tasker_core_benches::stores::{self, FreshStore, StoreKind};

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];
const GROUP: &str = "readiness";

struct Case {
    id: String,
    shape: Shape,
    steps: usize,
    graph: TaskGraph,
    states: Vec<StepState>,
    task_id: i64,
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for shape in Shape::ALL {
        for steps in SIZES {
            let graph = dags::graph(shape, steps);
            let states = dags::partly_completed(&graph);
            out.push(Case {
                id: format!("{}-{steps}", shape.name()),
                shape,
                steps,
                graph,
                states,
                task_id: out.len() as i64 + 1,
            });
        }
    }
    out
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let cases = cases();

    let sql = rt.block_on(async {
        if !stores::postgres_available().await {
            return None;
        }
        let fresh = FreshStore::new(StoreKind::Postgres, "readiness")
            .await
            .expect("a schema for the SQL baseline");
        let sql = SqlBaseline::create(&fresh.url)
            .await
            .expect("creating the SQL baseline's tables");
        for case in &cases {
            sql.load(case.task_id, &case.graph, &case.states)
                .await
                .expect("loading a graph into the SQL baseline");
            let from_sql: Vec<u32> = sql
                .ready(case.task_id)
                .await
                .expect("the SQL baseline's query")
                .into_iter()
                .map(|i| i as u32)
                .collect();
            assert_eq!(
                from_sql,
                dags::ready(&case.graph, &case.states),
                "{}: the SQL baseline and the Rust readiness disagree",
                case.id
            );
        }
        Some((sql, fresh))
    });

    let mut group = c.benchmark_group(GROUP);
    for case in &cases {
        group.bench_function(BenchmarkId::new("full", &case.id), |b| {
            b.iter(|| dags::ready(&case.graph, black_box(&case.states)))
        });
        if let Some(running) = case.states.iter().position(|s| *s == StepState::InProgress) {
            let running = running as u32;
            let (counters, _) = readiness::evaluate(&case.graph, &case.states, &Choices::EMPTY);
            group.bench_function(BenchmarkId::new("incremental", &case.id), |b| {
                b.iter_batched_ref(
                    || (counters.clone(), case.states.clone(), Release::default()),
                    |(counters, states, release)| {
                        states[running as usize] = StepState::Complete;
                        readiness::propagate_into(
                            &case.graph,
                            counters,
                            states,
                            &Choices::EMPTY,
                            black_box(running),
                            Outcome::Succeeded,
                            release,
                        );
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        if let Some((sql, _)) = &sql {
            group.bench_function(BenchmarkId::new("sql", &case.id), |b| {
                b.to_async(&rt)
                    .iter(|| async { sql.ready(case.task_id).await.expect("the SQL query") })
            });
        }
    }
    if let Some((sql, _)) = &sql {
        group.bench_function("sql-round-trip", |b| {
            b.to_async(&rt)
                .iter(|| async { sql.ping().await.expect("SELECT 1") })
        });
    }
    group.finish();
    c.final_summary();

    let mut table = Table::new(
        "Readiness: mean time per question, and how many times faster than SQL",
        &[
            "shape",
            "steps",
            "SQL function",
            "Rust full",
            "Rust incremental",
            "full vs SQL",
            "incremental vs SQL",
        ],
    );
    for case in &cases {
        let (Some(sql_ns), Some(full)) = (
            report::mean_ns(GROUP, "sql", &case.id),
            report::mean_ns(GROUP, "full", &case.id),
        ) else {
            continue;
        };
        let incremental = report::mean_ns(GROUP, "incremental", &case.id);
        table.row(vec![
            case.shape.name().to_owned(),
            format!("{}", case.steps),
            human_time(sql_ns),
            human_time(full),
            incremental.map(human_time).unwrap_or_else(|| "—".into()),
            format!("{:.0}×", sql_ns / full),
            incremental
                .map(|i| format!("{:.0}×", sql_ns / i))
                .unwrap_or_else(|| "—".into()),
        ]);
    }
    table.print();
    if let Some(ping) = report::mean_ns(GROUP, "sql-round-trip", "") {
        println!(
            "SELECT 1 round trip (the floor of every SQL figure): {}",
            human_time(ping)
        );
    }
    // TASKER_BENCH_KEEP_SCHEMA=1 leaves the tables for a look at the plans (EXPLAIN ANALYZE).
    if let Some((sql, fresh)) = sql {
        drop(sql);
        if std::env::var_os("TASKER_BENCH_KEEP_SCHEMA").is_some() {
            println!("kept the baseline's tables at {}", fresh.url);
        } else {
            rt.block_on(fresh.remove())
                .expect("dropping the baseline's schema");
        }
    }
}
