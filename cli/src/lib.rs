//! `tasker`: see and act on the tasks of any Tasker Core store, from a terminal. The binary is
//! [`main`]; the dashboard's pieces ([`serve::Dashboard`], [`serve::router`]) are public for its
//! benchmark and for an embedding program.
//!
//! ```text
//! tasker --url sqlite://tasker.db tasks --status error
//! tasker show 0190b6c4-…            # steps, attempts, errors, the DAG
//! tasker retry 0190b6c4-…
//! tasker --json stats
//! ```
//!
//! Exit codes: 0 done, 1 not found (a task, step or template), 2 usage (a bad argument, URL or
//! `--result`, or an act the task's state refuses), 3 store error (unreachable, failed).

mod dag;
pub mod serve;
mod watch;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::SecondsFormat;
use clap::{Parser, Subcommand, ValueEnum};
use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;
use serde_json::{json, Value};
use tasker_core::error::ErrorKind;
use tasker_core::{Engine, TaskFilter, TaskId, TaskState, Timestamp};

/// See and act on the tasks of a Tasker Core store.
#[derive(Debug, Parser)]
#[command(name = "tasker", version, about, long_about = None)]
struct Cli {
    /// The store: `sqlite://FILE`, `postgres://USER@HOST/DB`, or `memory:`.
    #[arg(
        long,
        env = "TASKER_URL",
        default_value = "sqlite://tasker.db",
        global = true
    )]
    url: String,
    /// Print JSON instead of tables and text.
    #[arg(long, global = true)]
    json: bool,
    /// Give up on a store that does not answer within this many seconds (exit 3).
    #[arg(long, global = true, default_value_t = 10.0, value_name = "SECONDS")]
    connect_timeout: f64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List tasks, newest first.
    Tasks {
        /// Only tasks in this state (pending, in_progress, complete, error, cancelled, paused,
        /// resolved_manually).
        #[arg(long)]
        status: Option<String>,
        /// Only tasks of this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Only tasks of this template name.
        #[arg(long)]
        name: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// A task: its steps, attempts, errors and DAG.
    Show {
        /// The task's id.
        id: String,
    },
    /// A task's DAG as DOT, Mermaid or SVG.
    Graph {
        /// The task's id.
        id: String,
        /// The drawing's format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
    },
    /// The log lines a task's attempts wrote.
    Logs {
        /// The task's id.
        id: String,
        /// Only this step's.
        #[arg(long)]
        step: Option<String>,
    },
    /// Run a failed task's failed steps again.
    Retry {
        /// The task's id.
        id: String,
    },
    /// Cancel a task (and its children).
    Cancel {
        /// The task's id.
        id: String,
    },
    /// Pause a task: no step of it starts until it is resumed.
    Pause {
        /// The task's id.
        id: String,
    },
    /// Resume a paused task.
    Resume {
        /// The task's id.
        id: String,
    },
    /// Supply a step's result by hand: its dependents run as if it had completed.
    Resolve {
        /// The task's id.
        id: String,
        /// The step's name.
        step: String,
        /// The result, as JSON.
        #[arg(long)]
        result: String,
    },
    /// The registered templates.
    Templates,
    /// Register a template file (YAML or JSON; this engine's, Rails Tasker's or tasker-core's
    /// format).
    Register {
        /// The template file.
        file: PathBuf,
    },
    /// The cron schedules.
    Schedules,
    /// Delete finished tasks.
    Purge {
        /// Those that finished before this RFC 3339 time (e.g. 2026-11-01T00:00:00Z).
        #[arg(long)]
        finished_before: String,
        /// Only in this finished state (repeat for several; default: every finished state).
        #[arg(long = "status")]
        statuses: Vec<String>,
    },
    /// Tasks and steps per state, retries, recoveries, and each handler's timings.
    Stats,
    /// The Prometheus metrics text (the store's gauges; this process's counters are zero).
    Metrics,
    /// Apply the store's schema migrations (creates a SQLite file that is missing).
    Migrate,
    /// The web dashboard: the task list, each task's DAG, steps, logs and transitions, the
    /// operator's acts behind a token, and /metrics.
    Serve {
        /// The address to listen on (port 0: any free port; the first line printed says which).
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: String,
        /// The operator's token for the acts (one is made and printed when not given).
        #[arg(long, env = "TASKER_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Show everything, allow no act.
        #[arg(long)]
        read_only: bool,
        /// Serve every page under this path (such as /tasker, when a proxy mounts the
        /// dashboard beside another app).
        #[arg(long, default_value = "")]
        base_path: String,
        /// A host name the dashboard answers to besides IP addresses and localhost (the name
        /// a proxy or the browser uses for it); repeat for more.
        #[arg(long = "allowed-host", value_name = "HOST")]
        allowed_hosts: Vec<String>,
    },
    /// Live progress bars: of one task until it finishes, or of every unfinished task.
    Watch {
        /// The task to watch (every unfinished one when left out).
        id: Option<String>,
        /// How often to look, in milliseconds.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
        /// Without an id: stop once no task is unfinished (else run until interrupted).
        #[arg(long)]
        until_idle: bool,
    },
}

/// How `tasker graph` draws.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum GraphFormat {
    /// Graphviz DOT.
    Dot,
    /// A Mermaid flowchart.
    Mermaid,
    /// SVG, as the dashboard shows it.
    Svg,
}

/// Why a command failed, with its exit code.
#[derive(Debug)]
pub enum Failure {
    /// Exit 1: a task, step or template that is not there.
    NotFound(String),
    /// Exit 2: a bad argument, or an act the task's state refuses.
    Usage(String),
    /// Exit 3: the store could not be reached or failed.
    Store(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::NotFound(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Store(_) => 3,
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::NotFound(m) | Failure::Usage(m) | Failure::Store(m) => m,
        }
    }
}

impl From<tasker_core::Error> for Failure {
    fn from(e: tasker_core::Error) -> Self {
        let message = e.to_string();
        match e.kind() {
            ErrorKind::NotFound => Failure::NotFound(message),
            ErrorKind::Store => Failure::Store(message),
            ErrorKind::Template | ErrorKind::InvalidArgument | ErrorKind::InvalidTransition => {
                Failure::Usage(message)
            }
        }
    }
}

/// What a command comes to: done, or the failure that sets its exit code.
pub type Outcome = Result<(), Failure>;

/// The `tasker` binary: parses the command line, runs the command, and gives its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Two threads: the dashboard serves one page while it renders another.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tasker: cannot start: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("tasker: {}", f.message());
            ExitCode::from(f.code())
        }
    }
}

/// Opens the store of `cli.url` (a missing SQLite file is an error, except for the commands
/// that make one) and runs the command.
async fn run(cli: Cli) -> Outcome {
    let creates = matches!(cli.command, Command::Migrate | Command::Register { .. });
    if let Some(path) = sqlite_path(&cli.url).filter(|_| !creates) {
        if !std::path::Path::new(path).exists() {
            return Err(Failure::Store(format!(
                "no SQLite database at {path} (`tasker --url {} migrate` makes one)",
                shown(&cli.url)
            )));
        }
    }
    let wait = std::time::Duration::try_from_secs_f64(cli.connect_timeout)
        .map_err(|e| Failure::Usage(format!("--connect-timeout {}: {e}", cli.connect_timeout)))?;
    let open = Engine::builder().url(&cli.url).metrics(true).build();
    let engine = tokio::time::timeout(wait, open)
        .await
        .map_err(|_| {
            Failure::Store(format!(
                "cannot open {}: no answer within {wait:?}",
                shown(&cli.url)
            ))
        })?
        .map_err(|e| match e.kind() {
            ErrorKind::Store => Failure::Store(format!("cannot open {}: {e}", shown(&cli.url))),
            _ => Failure::Usage(format!("cannot open {}: {e}", shown(&cli.url))),
        })?;
    let out = Out { json: cli.json };
    let done = command(&engine, &out, cli.command).await;
    engine.close();
    done
}

/// The file of a SQLite URL (`None` for other stores and in-memory SQLite).
fn sqlite_path(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then_some(path)
}

/// Where output goes: JSON or text, on stdout.
struct Out {
    json: bool,
}

impl Out {
    /// `value` as pretty JSON with `--json`, else `text()`.
    fn print<T: Serialize>(&self, value: &T, text: impl FnOnce() -> String) -> Outcome {
        let body = if self.json {
            let mut s = serde_json::to_string_pretty(value)
                .map_err(|e| Failure::Store(format!("cannot write JSON: {e}")))?;
            s.push('\n');
            s
        } else {
            printable(&text())
        };
        let mut stdout = std::io::stdout().lock();
        // A closed pipe (`tasker tasks | head`) is not a failure.
        let _ = stdout.write_all(body.as_bytes());
        Ok(())
    }
}

/// `text` with every control character but newline and tab as U+FFFD: what handlers wrote
/// (errors, log lines, names) cannot move the cursor or recolour the terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\t' => c,
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// `url` with its password, if it has one, as `***` (for messages).
fn shown(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) if rest[..at].contains(':') => {
            let user = &rest[..at].split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        _ => url.to_owned(),
    }
}

/// A table without borders, as wide as the terminal allows (`COLUMNS` when stdout is not
/// one).
fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.iter().copied());
    if !t.is_tty() {
        if let Some(width) = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse::<u16>().ok())
        {
            t.set_width(width);
        }
    }
    t
}

/// Keeps `columns` of `t` unwrapped (ids and times are read whole, or copied).
fn whole(t: &mut Table, columns: &[usize]) {
    for &c in columns {
        if let Some(column) = t.column_mut(c) {
            column.set_constraint(comfy_table::ColumnConstraint::ContentWidth);
        }
    }
}

fn time(t: Option<Timestamp>) -> String {
    t.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// A time for a table cell: to the second, UTC, without the `T` and zone.
fn short_time(t: Timestamp) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn task_id(text: &str) -> Result<TaskId, Failure> {
    text.trim()
        .parse()
        .map_err(|e| Failure::Usage(format!("{text:?} is not a task id: {e}")))
}

fn state(text: &str) -> Result<TaskState, Failure> {
    text.parse().map_err(|_| {
        let names: Vec<&str> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
        Failure::Usage(format!(
            "unknown task state {text:?}: one of {}",
            names.join(", ")
        ))
    })
}

async fn command(engine: &Engine, out: &Out, command: Command) -> Outcome {
    match command {
        Command::Tasks {
            status,
            namespace,
            name,
            limit,
        } => {
            let filter = TaskFilter {
                status: status.as_deref().map(state).transpose()?,
                namespace,
                name,
                limit,
            };
            let tasks = engine.list_tasks(&filter).await?;
            out.print(&tasks, || {
                let mut t = table(&["ID", "TEMPLATE", "STATUS", "STEPS", "CREATED"]);
                for task in &tasks {
                    let p = &task.progress;
                    t.add_row(vec![
                        task.id.to_string(),
                        format!("{}/{} {}", task.namespace, task.name, task.version),
                        task.status.to_string(),
                        format!("{}/{}", watch::finished(p), p.total),
                        short_time(task.created_at),
                    ]);
                }
                whole(&mut t, &[0, 2, 4]);
                format!("{t}\n{} task(s)\n", tasks.len())
            })
        }
        Command::Show { id } => {
            let id = task_id(&id)?;
            let task = engine.task(id).await?;
            let graph = engine.graph(id).await?;
            out.print(&task, || show(&task, &graph))
        }
        Command::Graph { id, format } => {
            let graph = engine.graph(task_id(&id)?).await?;
            out.print(&graph, || match format {
                GraphFormat::Dot => dag::dot(&graph),
                GraphFormat::Mermaid => dag::mermaid(&graph),
                GraphFormat::Svg => dag::svg(&graph) + "\n",
            })
        }
        Command::Logs { id, step } => {
            let lines = engine.logs(task_id(&id)?, step.as_deref()).await?;
            out.print(&lines, || {
                let mut s = String::new();
                for l in &lines {
                    s.push_str(&format!(
                        "{} {}#{} {:<5} {}\n",
                        time(Some(l.at)),
                        l.step,
                        l.attempt,
                        l.level.as_str(),
                        l.message
                    ));
                }
                s
            })
        }
        Command::Retry { id } => act(engine, out, &id, Act::Retry).await,
        Command::Cancel { id } => act(engine, out, &id, Act::Cancel).await,
        Command::Pause { id } => act(engine, out, &id, Act::Pause).await,
        Command::Resume { id } => act(engine, out, &id, Act::Resume).await,
        Command::Resolve { id, step, result } => {
            let id = task_id(&id)?;
            let value: Value = serde_json::from_str(&result)
                .map_err(|e| Failure::Usage(format!("--result is not JSON ({e}): {result}")))?;
            engine.resolve_step(id, &step, value).await?;
            let task = engine.task(id).await?;
            let body = json!({"task_id": id, "step": step, "status": task.status});
            out.print(&body, || {
                format!(
                    "task {id}: step {step} resolved; the task is {}\n",
                    task.status
                )
            })
        }
        Command::Templates => {
            let templates = engine.templates().await?;
            out.print(&templates, || {
                let mut t = table(&["NAMESPACE", "NAME", "VERSION", "STEPS", "DESCRIPTION"]);
                for v in &templates {
                    t.add_row(vec![
                        v.namespace.clone(),
                        v.name.clone(),
                        v.version.clone(),
                        v.steps.to_string(),
                        v.description.clone().unwrap_or_default(),
                    ]);
                }
                format!("{t}\n")
            })
        }
        Command::Register { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
            let registered = engine.register_document_str(&text).await?;
            let summary = registered.summary();
            out.print(&summary, || {
                let g = &registered.graph;
                let mut s = format!(
                    "registered {}/{} {} ({} steps, {} format)\n",
                    g.namespace(),
                    g.name(),
                    g.version(),
                    g.steps().len(),
                    registered.format.as_str()
                );
                for w in &registered.warnings {
                    s.push_str(&format!("warning: {w}\n"));
                }
                s
            })
        }
        Command::Schedules => {
            let schedules = engine.schedules().await?;
            out.print(&schedules, || {
                let mut t = table(&["NAME", "CRON", "TIMEZONE", "TEMPLATE", "NEXT", "LAST TASK"]);
                for v in &schedules {
                    t.add_row(vec![
                        v.spec.name.clone(),
                        v.spec.cron.clone(),
                        v.spec.timezone.clone(),
                        format!("{}/{}", v.spec.namespace, v.spec.template),
                        time(v.next_at),
                        v.last_task.map(|t| t.to_string()).unwrap_or_default(),
                    ]);
                }
                format!("{t}\n")
            })
        }
        Command::Purge {
            finished_before,
            statuses,
        } => {
            let before = tasker_core::clock::parse_time(&finished_before, "--finished-before")?;
            let statuses = statuses
                .iter()
                .map(|s| state(s))
                .collect::<Result<Vec<_>, _>>()?;
            let only = (!statuses.is_empty()).then_some(statuses.as_slice());
            let purged = engine.purge(before, only).await?;
            out.print(&json!({"purged": purged}), || {
                format!("purged {purged} task(s)\n")
            })
        }
        Command::Stats => {
            let stats = engine.stats().await?;
            out.print(&stats, || {
                let counts = |m: &std::collections::BTreeMap<String, u64>| {
                    m.iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let mut s = format!(
                    "tasks: {}\nsteps: {}\nretries {}, recovered {}, lease expiries {}\n",
                    counts(&stats.tasks),
                    counts(&stats.steps),
                    stats.retries,
                    stats.recovered,
                    stats.lease_expiries
                );
                if !stats.handlers.is_empty() {
                    let mut t = table(&["HANDLER", "FINISHED", "MEAN MS", "P95 MS"]);
                    for h in &stats.handlers {
                        t.add_row(vec![
                            h.handler.clone(),
                            h.finished.to_string(),
                            format!("{:.1}", h.mean_ms),
                            h.p95_ms.to_string(),
                        ]);
                    }
                    s.push_str(&format!("{t}\n"));
                }
                s
            })
        }
        Command::Metrics => {
            let text = engine.metrics().await?;
            out.print(&json!({"metrics": text}), || text.clone())
        }
        Command::Migrate => {
            engine.migrate().await?;
            out.print(&json!({"migrated": true}), || "migrated\n".to_owned())
        }
        Command::Serve {
            bind,
            token,
            read_only,
            base_path,
            allowed_hosts,
        } => serve::run(engine, &bind, token, read_only, &base_path, &allowed_hosts).await,
        Command::Watch {
            id,
            interval_ms,
            until_idle,
        } => {
            let id = id.as_deref().map(task_id).transpose()?;
            let every = std::time::Duration::from_millis(interval_ms.max(10));
            watch::run(engine, out.json, id, every, until_idle).await
        }
    }
}

/// An operator's act on task `id`; prints the task's state after it.
async fn act(engine: &Engine, out: &Out, id: &str, act: Act) -> Outcome {
    let id = task_id(id)?;
    act.on(engine, id).await?;
    let done = act.done();
    let task = engine.task(id).await?;
    let body = json!({"task_id": id, "status": task.status});
    out.print(&body, || {
        format!("task {id} {done}; it is {}\n", task.status)
    })
}

/// An operator's act on a whole task (the command's and the dashboard's).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Act {
    Retry,
    Cancel,
    Pause,
    Resume,
}

impl Act {
    /// The act a dashboard route names (`retry`, `cancel`, `pause`, `resume`).
    pub(crate) fn named(verb: &str) -> Option<Act> {
        Some(match verb {
            "retry" => Act::Retry,
            "cancel" => Act::Cancel,
            "pause" => Act::Pause,
            "resume" => Act::Resume,
            _ => return None,
        })
    }

    fn done(self) -> &'static str {
        match self {
            Act::Retry => "retried",
            Act::Cancel => "cancelled",
            Act::Pause => "paused",
            Act::Resume => "resumed",
        }
    }

    /// Does it to task `id`.
    pub(crate) async fn on(self, engine: &Engine, id: TaskId) -> tasker_core::error::Result<()> {
        match self {
            Act::Retry => engine.retry_task(id).await,
            Act::Cancel => engine.cancel_task(id).await,
            Act::Pause => engine.pause_task(id).await,
            Act::Resume => engine.resume_task(id).await,
        }
    }
}

/// `tasker show`: the task, its steps and its DAG.
fn show(task: &tasker_core::TaskView, graph: &tasker_core::view::GraphView) -> String {
    let mut s = format!(
        "task      {}\ntemplate  {}/{} {}\nstatus    {}\npriority  {}\ncreated   {}\nupdated   {}\n",
        task.id,
        task.namespace,
        task.name,
        task.version,
        task.status,
        task.priority,
        time(Some(task.created_at)),
        time(Some(task.updated_at)),
    );
    if task.completed_at.is_some() {
        s.push_str(&format!("finished  {}\n", time(task.completed_at)));
    }
    if let Some(at) = task.deadline_at {
        s.push_str(&format!("deadline  {}\n", time(Some(at))));
    }
    if let Some(p) = &task.parent {
        s.push_str(&format!("parent    {} (step {})\n", p.task_id, p.step));
    }
    if let Some(key) = &task.idempotency_key {
        s.push_str(&format!("key       {key}\n"));
    }
    let mut t = table(&["STEP", "STATUS", "ATTEMPTS", "DURATION", "ERROR"]);
    for step in &task.steps {
        t.add_row(vec![
            step.name.clone(),
            step.status.to_string(),
            format!("{}/{}", step.attempts, step.max_attempts),
            step.duration_ms
                .map(|d| format!("{d} ms"))
                .unwrap_or_default(),
            step.error.clone().unwrap_or_default(),
        ]);
    }
    s.push_str(&format!("\n{t}\n\nDAG\n{}", dag::text(graph)));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            shown("postgres://app:s3cr:et@db:5432/x?sslmode=require"),
            "postgres://app:***@db:5432/x?sslmode=require"
        );
        assert_eq!(shown("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(shown("sqlite://tasker.db"), "sqlite://tasker.db");
        assert_eq!(shown("memory:"), "memory:");
    }

    #[test]
    fn control_characters_are_not_printed() {
        assert_eq!(
            printable("a\u{1b}[31mb\tc\n\u{9b}d"),
            "a\u{fffd}[31mb\tc\n\u{fffd}d"
        );
    }
}
