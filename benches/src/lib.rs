//! Benchmarks of Tasker Core: the criterion benches under `benches/` (`cargo bench`), the
//! `throughput` harness, and what they share — the DAG shapes ([`dags`]), the SQL readiness
//! baseline ([`readiness_sql`]), the end-to-end workload ([`workload`]), fresh stores for each
//! run ([`stores`]) and the side-by-side ratio tables ([`report`]).
//!
//! `cargo bench` measures; `cargo test -p tasker-core-benches --benches` runs every bench once
//! at a small size (the smoke mode of the test command).

pub mod dags;
pub mod readiness_sql;
pub mod report;
pub mod stores;
pub mod workload;

/// True under `cargo bench` (criterion measures); false under `cargo test --benches`, where each
/// benchmark runs once as a smoke test and the benches pick small sizes.
pub fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A multi-thread tokio runtime for the benches that drive the engine.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Criterion for benchmarks whose iteration is a whole run of a workload (a second or more):
/// 10 samples of one run each, the first run as the only warm-up.
pub fn whole_run_criterion() -> criterion::Criterion {
    criterion::Criterion::default()
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(1))
        .measurement_time(std::time::Duration::from_secs(1))
        .configure_from_args()
}

/// The URL of the PostgreSQL server the benches use: `TASKER_BENCH_POSTGRES_URL`, else
/// `DATABASE_URL`, else the local server on 127.0.0.1:5432.
pub fn postgres_url() -> String {
    std::env::var("TASKER_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}
