//! FFI overhead: the same workload — tasks of the 5-step diamond on `memory:`, one worker of 64
//! handlers, no-op handlers — driven from Rust, and through the bindings from Python (the wheel
//! in `target/pyvenv`), Ruby (the installed gem) and C (`benches/c/throughput.c` against
//! `target/release/libtasker_core.so`), measured side by side and reported as ratios to Rust.
//!
//! Each binding program times its own run phase and prints `run=<seconds>s`; process start-up
//! and task creation are not timed. A binding that is not built is skipped with the script that
//! builds it (`scripts/python.sh`, `scripts/ruby.sh`, `scripts/c.sh`) — unless
//! `TASKER_BENCH_REQUIRE_BINDINGS` is set (the test command's smoke run), when that is an error.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{BenchmarkId, SamplingMode, Throughput};
use tasker_core::Engine;
use tasker_core_benches::measuring;
use tasker_core_benches::report::{self, human_rate, Table};
use tasker_core_benches::workload::{self, Placement, Template};

const GROUP: &str = "ffi";
const CONCURRENCY: usize = 64;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A binding's command line for `tasks` tasks, or why it is not available.
fn binding(language: &str) -> Result<Command, String> {
    let root = root();
    match language {
        "python" => {
            let python = root.join("target/pyvenv/bin/python");
            if !python.exists() {
                return Err("no venv with the wheel: run scripts/python.sh".into());
            }
            let mut cmd = Command::new(python);
            cmd.arg(root.join("benches/python/throughput.py"));
            Ok(cmd)
        }
        "ruby" => {
            let loads = Command::new("ruby")
                .args(["-e", "require 'tasker_core'"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if !loads {
                return Err("ruby cannot require tasker_core: run scripts/ruby.sh".into());
            }
            let mut cmd = Command::new("ruby");
            cmd.arg(root.join("benches/ruby/throughput.rb"));
            Ok(cmd)
        }
        "c" => {
            let lib = root.join("target/release");
            if !lib.join("libtasker_core.so").exists() {
                return Err("no target/release/libtasker_core.so: run scripts/c.sh".into());
            }
            let exe = root.join("target/throughput-c");
            let built = Command::new("cc")
                .args(["-O2", "-std=c11", "-Wall", "-Werror"])
                .arg(root.join("benches/c/throughput.c"))
                .arg("-I")
                .arg(root.join("include"))
                .arg("-L")
                .arg(&lib)
                .args(["-ltasker_core", "-o"])
                .arg(&exe)
                .status()
                .map_err(|e| format!("cc: {e}"))?;
            if !built.success() {
                return Err("benches/c/throughput.c did not compile".into());
            }
            let mut cmd = Command::new(exe);
            cmd.env("LD_LIBRARY_PATH", lib);
            Ok(cmd)
        }
        other => Err(format!("unknown language {other}")),
    }
}

/// Runs a binding program once; the run phase it timed.
fn run_binding(cmd: &mut Command, tasks: usize) -> Duration {
    let out = cmd
        .args(["memory:", &tasks.to_string(), &CONCURRENCY.to_string()])
        .output()
        .expect("starting the binding's program");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seconds: f64 = stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("run=")?.strip_suffix('s')?.parse().ok())
        .unwrap_or_else(|| panic!("no run=<seconds>s in {stdout:?}"));
    Duration::from_secs_f64(seconds)
}

fn main() {
    let rt = tasker_core_benches::runtime();
    let mut c = tasker_core_benches::whole_run_criterion();
    let tasks = if measuring() { 5_000 } else { 20 };
    let require = std::env::var_os("TASKER_BENCH_REQUIRE_BINDINGS").is_some();

    let mut group = c.benchmark_group(GROUP);
    group.sampling_mode(SamplingMode::Flat);
    let steps = tasks * Template::Diamond.steps();
    group.throughput(Throughput::Elements(steps as u64));
    group.bench_function(BenchmarkId::new("diamond", "rust"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // A fresh engine per run, as each binding program opens its own.
                let engine = rt.block_on(Engine::open("memory:")).expect("memory engine");
                rt.block_on(workload::register(&engine, Template::Diamond))
                    .expect("registering the template");
                let (_, elapsed) = rt
                    .block_on(workload::run_once(
                        &engine,
                        "memory:",
                        Template::Diamond,
                        tasks,
                        Placement::InProcess { workers: 1 },
                        CONCURRENCY,
                        workload::Creation::First,
                    ))
                    .expect("the Rust run");
                total += elapsed;
            }
            total
        })
    });
    let mut languages = Vec::new();
    for language in ["python", "ruby", "c"] {
        match binding(language) {
            Ok(mut cmd) => {
                languages.push(language);
                group.bench_function(BenchmarkId::new("diamond", language), |b| {
                    b.iter_custom(|iters| (0..iters).map(|_| run_binding(&mut cmd, tasks)).sum())
                });
            }
            Err(why) if require => panic!("{language}: {why}"),
            Err(why) => eprintln!("skipping {language}: {why}"),
        }
    }
    group.finish();
    c.final_summary();

    let Some(rust) = report::mean_ns(GROUP, "diamond", "rust") else {
        return;
    };
    let steps = steps as f64;
    let mut table = Table::new(
        &format!("FFI overhead: {tasks} diamond tasks on memory, one worker of {CONCURRENCY}, no-op handlers"),
        &["driven from", "steps/s", "Rust is … faster"],
    );
    table.row(vec![
        "Rust".into(),
        human_rate(steps / (rust / 1e9)),
        "1.00×".into(),
    ]);
    for language in languages {
        if let Some(ns) = report::mean_ns(GROUP, "diamond", language) {
            table.row(vec![
                language.into(),
                human_rate(steps / (ns / 1e9)),
                format!("{:.2}×", ns / rust),
            ]);
        }
    }
    table.print();
}
