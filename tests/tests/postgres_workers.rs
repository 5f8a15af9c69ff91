//! Many workers — threads and processes — on one PostgreSQL: every step runs exactly once, a
//! killed worker's step comes back after its lease, concurrent creates with one idempotency key
//! make one task, and a database restart mid-run does not stop the run.
//!
//! These need `TASKER_TEST_POSTGRES_URL` (the test command starts a throwaway cluster); without
//! it they say so and return.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::json;
use tasker_core::{Engine, NewTask, StepState, TaskFilter, TaskId, TaskState};
use tasker_core_tests::{postgres_schema, read_runs, test_worker};

const DIAMOND: &str = "namespace: pg\nname: diamond\nversion: 1.0.0\n\
defaults: { retry: { max_attempts: 3, backoff_base_ms: 10, jitter: false } }\nsteps:\n\
  - { name: a, handler: work }\n\
  - { name: b, handler: work, depends_on: [a] }\n\
  - { name: c, handler: work, depends_on: [a] }\n\
  - { name: d, handler: work, depends_on: [a] }\n\
  - { name: e, handler: work, depends_on: [b, c, d] }\n";

async fn setup(template: &str) -> Option<(String, Engine, String)> {
    let Some(url) = postgres_schema().await else {
        eprintln!("skipped: TASKER_TEST_POSTGRES_URL is not set");
        return None;
    };
    let engine = Engine::open(&url).await.expect("open PostgreSQL");
    engine.register_template_str(template).await.unwrap();
    let runs = std::env::temp_dir()
        .join(format!("tasker-runs-{}", TaskId::new()))
        .display()
        .to_string();
    Some((url, engine, runs))
}

fn spawn_worker(url: &str, runs: &str, seconds: u64) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tasker-test-worker"))
        .args([url, runs, &seconds.to_string()])
        .spawn()
        .expect("start a worker process")
}

async fn all_tasks(engine: &Engine) -> Vec<tasker_core::TaskView> {
    engine
        .list_tasks(&TaskFilter {
            limit: 10_000,
            ..TaskFilter::default()
        })
        .await
        .unwrap()
}

async fn lease_expiries(engine: &Engine, tasks: &[tasker_core::TaskView]) -> usize {
    let mut n = 0;
    for t in tasks {
        n += engine
            .transitions(t.id)
            .await
            .unwrap()
            .iter()
            .filter(|tr| tr.event == "lease_expired")
            .count();
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_worker_threads_and_three_processes_run_every_step_exactly_once() {
    let Some((url, engine, runs)) = setup(DIAMOND).await else {
        return;
    };
    for i in 0..40 {
        engine
            .create_task(NewTask::new("pg", "diamond").context(json!({ "i": i, "sleep_ms": 3 })))
            .await
            .unwrap();
    }
    let processes: Vec<Child> = (0..3).map(|_| spawn_worker(&url, &runs, 90)).collect();
    let mut threads = Vec::new();
    for _ in 0..4 {
        let engine = Engine::open(&url).await.unwrap();
        let worker = test_worker(engine, &runs, 2);
        threads.push(tokio::spawn(async move {
            worker.run_until_idle(Duration::from_secs(90)).await
        }));
    }
    for t in threads {
        assert!(t.await.unwrap().unwrap().idle, "a worker thread timed out");
    }
    for mut p in processes {
        assert!(p.wait().unwrap().success(), "a worker process failed");
    }

    let tasks = all_tasks(&engine).await;
    assert_eq!(tasks.len(), 40);
    assert!(tasks.iter().all(|t| t.status == TaskState::Complete));
    let lines = read_runs(&runs);
    let mut per_step: HashMap<&str, usize> = HashMap::new();
    for (step, attempt, _) in &lines {
        *per_step.entry(step).or_default() += 1;
        assert_eq!(*attempt, 1, "{step} ran a second attempt");
    }
    assert_eq!(per_step.len(), 200, "every step ran");
    assert!(per_step.values().all(|&n| n == 1), "a step ran twice");
    let pids: std::collections::BTreeSet<u32> = lines.iter().map(|(_, _, p)| *p).collect();
    assert!(
        pids.len() >= 2,
        "the work was shared between processes: {pids:?}"
    );
    assert_eq!(lease_expiries(&engine, &tasks).await, 0);
    let _ = std::fs::remove_file(runs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_step_loses_its_step_to_another_after_the_lease() {
    let template = "namespace: pg\nname: crash\nversion: 1.0.0\nsteps:\n\
      - { name: s, handler: slow, timeout_ms: 1500, retry: { max_attempts: 3, backoff_base_ms: 0, jitter: false } }\n\
      - { name: t, handler: work, depends_on: [s] }\n";
    let Some((url, engine, runs)) = setup(template).await else {
        return;
    };
    let task = engine
        .create_task(NewTask::new("pg", "crash").context(json!({ "slow_ms": 600_000 })))
        .await
        .unwrap();
    let mut doomed = spawn_worker(&url, &runs, 600);
    let started = Instant::now();
    while read_runs(&runs).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the worker never started s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    doomed.kill().expect("SIGKILL the worker"); // std's kill is SIGKILL on Unix
    let _ = doomed.wait();

    let report = test_worker(engine.clone(), &runs, 2)
        .run_until_idle(Duration::from_secs(30))
        .await
        .unwrap();
    assert!(report.idle);
    let view = engine.task(task).await.unwrap();
    assert_eq!(view.status, TaskState::Complete);
    let s = view.step("s").unwrap();
    assert_eq!((s.status, s.attempts), (StepState::Complete, 2));
    let pids: Vec<u32> = read_runs(&runs).iter().map(|(_, _, p)| *p).collect();
    assert_eq!(pids.len(), 3, "s twice (killed, then re-run) and t once");
    assert_ne!(pids[0], pids[1], "the re-run happened in another process");
    assert_eq!(lease_expiries(&engine, &[view]).await, 1);
    let _ = std::fs::remove_file(runs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_with_one_idempotency_key_make_one_task() {
    let Some((url, engine, _)) = setup(DIAMOND).await else {
        return;
    };
    let mut creators = Vec::new();
    for _ in 0..8 {
        let engine = Engine::open(&url).await.unwrap();
        creators.push(tokio::spawn(async move {
            engine
                .create_task(NewTask::new("pg", "diamond").idempotency_key("order-7"))
                .await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for c in creators {
        ids.insert(c.await.unwrap().unwrap());
    }
    assert_eq!(ids.len(), 1, "one task id for one key");
    assert_eq!(all_tasks(&engine).await.len(), 1);
}

/// Restarts the throwaway cluster that the test command started.
fn restart_postgres() -> bool {
    let (Ok(bin), Ok(dir)) = (
        std::env::var("TASKER_PG_BIN"),
        std::env::var("TASKER_PG_DIR"),
    ) else {
        return false;
    };
    let pg_ctl = format!("{bin}/pg_ctl");
    let (data, log) = (format!("{dir}/data"), format!("{dir}/log"));
    // The log file keeps the restarted server off our pipes.
    let args = ["-D", &data, "-l", &log, "-m", "fast", "-w", "restart"];
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let mut command = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", pg_ctl.as_str()]);
        c
    } else {
        Command::new(&pg_ctl)
    };
    command
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_a_postgres_restart() {
    if std::env::var("TASKER_PG_DIR").is_err() {
        eprintln!("skipped: needs the throwaway cluster of the test command (DATABASE_URL given)");
        return;
    }
    // Short leases: a claim committed just as the connection died is never answered, and
    // comes back when its lease runs out.
    let Some((_, engine, runs)) =
        setup(&DIAMOND.replace("handler: work", "handler: work, timeout_ms: 3000")).await
    else {
        return;
    };
    for i in 0..30 {
        engine
            .create_task(NewTask::new("pg", "diamond").context(json!({ "i": i, "sleep_ms": 20 })))
            .await
            .unwrap();
    }
    let worker = test_worker(engine.clone(), &runs, 4);
    let run = tokio::spawn(async move { worker.run_until_idle(Duration::from_secs(120)).await });
    let started = Instant::now();
    while read_runs(&runs).len() < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no progress before the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let restarted = tokio::task::spawn_blocking(restart_postgres).await.unwrap();
    assert!(restarted, "pg_ctl restart failed");
    let report = run.await.unwrap().unwrap();
    assert!(
        report.idle,
        "the run finished after the restart: {report:?}"
    );
    let tasks = all_tasks(&engine).await;
    assert_eq!(tasks.len(), 30);
    assert!(
        tasks.iter().all(|t| t.status == TaskState::Complete),
        "{:?}",
        tasks.iter().map(|t| t.status).collect::<Vec<_>>()
    );
    let _ = std::fs::remove_file(runs);
}

/// Faults together: three worker processes on PostgreSQL, one of them killed with SIGKILL (and
/// replaced) every 300 ms for 30 s, and a `pg_ctl restart` in the middle. Afterwards every step
/// is complete exactly once in the records, and a step ran more than once only when the process
/// that ran it before died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_and_a_restart_lose_nothing_and_run_nothing_twice() {
    if std::env::var("TASKER_PG_DIR").is_err() {
        eprintln!("skipped: needs the throwaway cluster of the test command (DATABASE_URL given)");
        return;
    }
    // Leases of 2 s: a killed worker's steps come back soon; 50 attempts: many may die.
    let template = DIAMOND
        .replace("handler: work", "handler: work, lease_ms: 2000")
        .replace("max_attempts: 3", "max_attempts: 50");
    let Some((url, engine, runs)) = setup(&template).await else {
        return;
    };
    // About 20 s of work for 12 handlers: the kills and the restart land mid-run.
    let tasks = 300;
    for i in 0..tasks {
        engine
            .create_task(NewTask::new("pg", "diamond").context(json!({ "i": i, "sleep_ms": 150 })))
            .await
            .unwrap();
    }
    let mut workers: Vec<Child> = (0..3).map(|_| spawn_worker(&url, &runs, 300)).collect();
    let mut killed = std::collections::HashSet::new();
    let (started, mut restarted, mut victim) = (Instant::now(), false, 0);
    while started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let doomed = &mut workers[victim % 3];
        killed.insert(doomed.id());
        let _ = doomed.kill(); // SIGKILL
        let _ = doomed.wait();
        workers[victim % 3] = spawn_worker(&url, &runs, 300);
        victim += 1;
        if !restarted && started.elapsed() > Duration::from_secs(12) {
            assert!(
                read_runs(&runs).len() < tasks * 5,
                "work was left at the restart"
            );
            restarted = tokio::task::spawn_blocking(restart_postgres).await.unwrap();
            assert!(restarted, "pg_ctl restart failed");
        }
    }
    // The survivors (and one more) finish the rest: the dead ones' leases run out meanwhile.
    workers.push(spawn_worker(&url, &runs, 300));
    for mut w in workers {
        assert!(w.wait().unwrap().success(), "a surviving worker failed");
    }
    let all = all_tasks(&engine).await;
    assert_eq!(all.len(), tasks);
    assert!(all.iter().all(|t| t.status == TaskState::Complete));
    for t in &all {
        let trail = engine.transitions(t.id).await.unwrap();
        for step in &t.steps {
            let completions = trail
                .iter()
                .filter(|tr| tr.step.as_deref() == Some(&step.name) && tr.event == "complete")
                .count();
            assert_eq!(
                completions, 1,
                "step {} of {} completed {completions} times",
                step.name, t.id
            );
        }
    }
    let mut by_step: HashMap<String, Vec<(u32, u32)>> = HashMap::new();
    for (step, attempt, pid) in read_runs(&runs) {
        by_step.entry(step).or_default().push((attempt, pid));
    }
    assert_eq!(by_step.len(), tasks * 5, "every step ran");
    for (step, mut ran) in by_step {
        ran.sort();
        for (attempt, pid) in &ran[..ran.len() - 1] {
            assert!(
                killed.contains(pid),
                "step {step} attempt {attempt} ran in {pid}, which was not killed, and ran again: {ran:?}"
            );
        }
    }
    let pids: std::collections::HashSet<u32> = read_runs(&runs).iter().map(|r| r.2).collect();
    let mid_run = killed.iter().filter(|p| pids.contains(p)).count();
    assert!(
        mid_run >= 10,
        "only {mid_run} of the killed workers had run steps"
    );
    eprintln!("{victim} workers killed ({mid_run} had run steps), the server restarted once");
    let _ = std::fs::remove_file(runs);
}
