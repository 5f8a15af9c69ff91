//! The SQL stores (sqlx): the embedded SQLite default and PostgreSQL for many workers, one
//! implementation over sqlx's `Any` driver with the few statements that differ per
//! [`Dialect`].
//!
//! An operation runs in one transaction: it locks and loads the task it touches into a
//! [`TaskRecord`], calls the same method the memory store calls, and writes back the rows that
//! changed with the new transitions — so the rules live in one place and nothing is ever
//! half-written.
//!
//! * **SQLite**: WAL mode, `synchronous = NORMAL`, a busy timeout, and `BEGIN IMMEDIATE`
//!   transactions (one writer at a time; writers of one process queue on an async mutex).
//! * **PostgreSQL**: the task row is the lock (`SELECT … FOR UPDATE`); claims skip tasks that
//!   another worker holds (`FOR UPDATE SKIP LOCKED`), so many workers in many processes claim
//!   without blocking each other and never claim a step twice. A transaction that makes steps
//!   ready sends `NOTIFY tasker_ready`; every engine on the database `LISTEN`s and wakes its
//!   workers at once (polling remains the fallback).

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::DateTime;
use parking_lot::RwLock;
use semver::Version;
use serde_json::Value;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Executor as _, Row};
use tokio::sync::Notify;

use super::cache::RecordCache;
use super::record::{Schedule, StepRecord, TaskRecord};
use super::{
    Changes, ClaimRequest, ClaimedStep, Created, NewTask, Now, Outcome, StepFailure, StepReport,
    Store, WorkStatus,
};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::ids::{StepId, TaskId};
use crate::readiness::Counters;
use crate::state::{Change, StepEvent, StepState, Transition};
use crate::template::{TaskGraph, TaskTemplate};
use crate::view::{TaskFilter, TaskView, TransitionView};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The channel PostgreSQL engines `LISTEN` on for ready steps.
pub const READY_CHANNEL: &str = "tasker_ready";

/// Which database a [`SqlStore`] speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite, embedded.
    Sqlite,
    /// PostgreSQL, shared by many workers.
    Postgres,
}

impl Dialect {
    /// The dialect of a store URL (`sqlite:…`, `postgres://…`, `postgresql://…`).
    pub fn of(url: &str) -> Option<Dialect> {
        match url.split_once(':').map(|(s, _)| s) {
            Some("sqlite") => Some(Dialect::Sqlite),
            Some("postgres" | "postgresql") => Some(Dialect::Postgres),
            _ => None,
        }
    }

    fn begin(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        }
    }

    /// A read-only transaction with one snapshot for a view's two statements.
    fn begin_read(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN",
            Dialect::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        }
    }

    fn migrator(self) -> &'static sqlx::migrate::Migrator {
        match self {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::Postgres => &POSTGRES_MIGRATIONS,
        }
    }
}

/// How a task row is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lock {
    /// A plain read (views).
    None,
    /// Wait for the row lock (operations on a named task).
    Wait,
    /// Take the row lock or skip the task (claims and the reaper).
    Skip,
}

/// The named statements. Placeholders are `$n`, which both SQLite and PostgreSQL accept.
mod queries {
    pub const TEMPLATE: &str =
        "SELECT template FROM tasker_named_tasks WHERE namespace = $1 AND name = $2 AND version = $3";
    pub const INSERT_NAMESPACE: &str = "INSERT INTO tasker_task_namespaces (name, created_at) \
        VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
    /// Completed with the value tuples.
    pub const INSERT_NAMED_STEPS: &str = "INSERT INTO tasker_named_steps \
        (namespace, name, version, position, step_name, handler) VALUES";
    pub const TEMPLATE_VERSIONS: &str =
        "SELECT version FROM tasker_named_tasks WHERE namespace = $1 AND name = $2";
    pub const INSERT_TEMPLATE: &str = "INSERT INTO tasker_named_tasks \
        (namespace, name, version, template, created_at) VALUES ($1, $2, $3, $4, $5)";
    /// Completed with ` IN (…)`.
    pub const TASKS: &str = "SELECT * FROM tasker_tasks WHERE task_id";
    /// Completed with ` IN (…)`.
    pub const STEPS: &str = "SELECT * FROM tasker_workflow_steps WHERE task_id";
    pub const TASK_BY_KEY: &str = "SELECT task_id FROM tasker_tasks \
        WHERE namespace = $1 AND name = $2 AND idempotency_key = $3";
    /// Completed with the value tuples and [`UPSERT_TASKS_SET`].
    pub const UPSERT_TASKS: &str = "INSERT INTO tasker_tasks (task_id, namespace, name, version, \
        status, priority, context, idempotency_key, unfinished_steps, created_at, updated_at, \
        completed_at, revision) VALUES";
    pub const UPSERT_TASKS_SET: &str = "ON CONFLICT (task_id) DO UPDATE SET \
        status = excluded.status, unfinished_steps = excluded.unfinished_steps, \
        updated_at = excluded.updated_at, completed_at = excluded.completed_at, \
        revision = excluded.revision";
    /// Completed with the value tuples and [`UPSERT_STEPS_SET`].
    pub const UPSERT_STEPS: &str = "INSERT INTO tasker_workflow_steps (task_id, step_index, name, \
        handler, status, priority, attempts, max_attempts, unfinished_parents, \
        failed_required_parents, ready_at, next_attempt_at, lease_owner, lease_expires_at, result, \
        error, started_at, completed_at) VALUES";
    pub const UPSERT_STEPS_SET: &str = "ON CONFLICT (task_id, step_index) DO UPDATE SET \
        status = excluded.status, attempts = excluded.attempts, \
        max_attempts = excluded.max_attempts, unfinished_parents = excluded.unfinished_parents, \
        failed_required_parents = excluded.failed_required_parents, \
        ready_at = COALESCE(excluded.ready_at, tasker_workflow_steps.ready_at), \
        next_attempt_at = excluded.next_attempt_at, lease_owner = excluded.lease_owner, \
        lease_expires_at = excluded.lease_expires_at, result = excluded.result, \
        error = excluded.error, started_at = excluded.started_at, \
        completed_at = excluded.completed_at";
    /// Completed with the value tuples.
    pub const INSERT_EDGES: &str = "INSERT INTO tasker_workflow_step_edges \
        (task_id, from_step, to_step, requires_success) VALUES";
    /// Completed with the value tuples.
    pub const INSERT_TRANSITIONS: &str = "INSERT INTO tasker_transitions (task_id, step_index, \
        step_name, from_state, to_state, event, reason, attempt, at) VALUES";
    pub const EXPIRED_LEASES: &str = "SELECT task_id, step_index, attempts \
        FROM tasker_workflow_steps WHERE status = 'in_progress' AND lease_expires_at <= $1 \
        ORDER BY lease_expires_at LIMIT 500";
    pub const DUE_RETRIES: &str = "SELECT task_id, step_index, attempts \
        FROM tasker_workflow_steps WHERE status = 'waiting_for_retry' AND next_attempt_at <= $1 \
        ORDER BY next_attempt_at LIMIT 500";
    /// `{handlers}` is the dialect's set of handler names from the JSON array in `$1`.
    pub const READY_STEPS: &str = "SELECT s.task_id, s.step_index, s.attempts \
        FROM tasker_workflow_steps s JOIN tasker_tasks t ON t.task_id = s.task_id \
        WHERE s.status = 'pending' AND s.unfinished_parents = 0 \
          AND s.failed_required_parents = 0 AND t.status IN ('pending', 'in_progress') \
          AND ($1 IS NULL OR s.handler IN ({handlers})) \
        ORDER BY s.priority DESC, s.ready_at, s.task_id, s.step_index LIMIT $2";
    pub const WORK_STATUS: &str = "SELECT \
        (SELECT COUNT(*) FROM tasker_workflow_steps s JOIN tasker_tasks t ON t.task_id = s.task_id \
          WHERE s.status = 'pending' AND s.unfinished_parents = 0 \
            AND s.failed_required_parents = 0 AND t.status IN ('pending', 'in_progress') \
            AND ($1 IS NULL OR s.handler IN ({handlers}))) AS ready, \
        (SELECT COUNT(*) FROM tasker_workflow_steps WHERE status = 'in_progress') AS running, \
        (SELECT COUNT(*) FROM tasker_workflow_steps WHERE status = 'waiting_for_retry') AS waiting, \
        (SELECT MIN(CASE status WHEN 'waiting_for_retry' THEN next_attempt_at \
                                ELSE lease_expires_at END) \
           FROM tasker_workflow_steps \
          WHERE status IN ('waiting_for_retry', 'in_progress')) AS next_due";
    pub const LIST_TASKS: &str = "SELECT task_id FROM tasker_tasks \
        WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR namespace = $2) \
          AND ($3 IS NULL OR name = $3) ORDER BY task_id DESC LIMIT $4";
    pub const TASK_EXISTS: &str = "SELECT task_id FROM tasker_tasks WHERE task_id = $1";
    /// A task whose rows cannot be read: set to `error`, out of every claim (`$2`: now).
    pub const MARK_UNREADABLE: &str = "UPDATE tasker_tasks SET status = 'error', \
        updated_at = $2, completed_at = $2, revision = revision + 1 \
        WHERE task_id = $1 AND status <> 'error'";
    /// The transition recorded with [`MARK_UNREADABLE`] (`$2`: the reason, `$3`: now).
    pub const UNREADABLE_TRANSITION: &str = "INSERT INTO tasker_transitions (task_id, step_index, \
        step_name, from_state, to_state, event, reason, attempt, at) \
        VALUES ($1, NULL, NULL, NULL, 'error', 'unreadable', $2, 0, $3)";
    pub const TRANSITIONS: &str = "SELECT * FROM tasker_transitions WHERE task_id = $1 ORDER BY id";
}

/// The PostgreSQL session timeouts, with their defaults: a stuck session (a lock held by a
/// hung client, a runaway statement, a transaction left open) cannot stall every report.
/// Each may be given in the store URL (`postgres://…?lock_timeout=2s`), in PostgreSQL's
/// duration syntax (`0` turns it off).
pub const POSTGRES_TIMEOUTS: [(&str, &str); 3] = [
    ("lock_timeout", "10s"),
    ("statement_timeout", "60s"),
    ("idle_in_transaction_session_timeout", "60s"),
];

/// `url` without the engine's own parameters `params` (each with its default), and their
/// values: the URL's, checked by `valid` (`what` describes a valid one), else the defaults.
fn own_params(
    url: &str,
    params: &[(&'static str, &'static str)],
    valid: impl Fn(&str) -> bool,
    what: &str,
) -> Result<(String, Vec<(&'static str, String)>)> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let mut values: Vec<(&'static str, String)> = params
        .iter()
        .map(|(name, default)| (*name, (*default).to_owned()))
        .collect();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match values.iter_mut().find(|(name, _)| *name == key) {
            Some((name, slot)) => {
                if !valid(value) {
                    return Err(Error::InvalidArgument(format!(
                        "{name} in the store URL must be {what}, not {value:?}"
                    )));
                }
                *slot = value.to_owned();
            }
            None => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, values))
}

/// `url` without the [`POSTGRES_TIMEOUTS`] parameters, and the `SET` statements that apply
/// them (the URL's values, else the defaults) to each new connection.
fn postgres_session(url: &str) -> Result<(String, String)> {
    let duration =
        |v: &str| !v.is_empty() && v.len() <= 16 && v.bytes().all(|b| b.is_ascii_alphanumeric());
    let (url, values) = own_params(
        url,
        &POSTGRES_TIMEOUTS,
        duration,
        "a duration such as 5s or 500ms",
    )?;
    let session = values
        .iter()
        .map(|(name, value)| format!("SET {name} = '{value}';"))
        .collect::<Vec<_>>()
        .join(" ");
    Ok((url, session))
}

/// SQLite's `synchronous` level, from the store URL (`sqlite://tasker.db?synchronous=full`):
/// `normal` (the default; with WAL a commit survives the process crashing, an OS crash or a
/// power loss may lose the last transactions) or `full` / `extra` (each commit is on disk
/// before it returns: power-loss durability, slower).
pub const SQLITE_SYNCHRONOUS: (&str, &str) = ("synchronous", "normal");

/// `url` without its `synchronous` parameter, and the `PRAGMA` statements of each new
/// SQLite connection.
fn sqlite_session(url: &str) -> Result<(String, String)> {
    let level = |v: &str| matches!(v.to_ascii_lowercase().as_str(), "normal" | "full" | "extra");
    let (url, values) = own_params(url, &[SQLITE_SYNCHRONOUS], level, "normal, full or extra")?;
    let level = values[0].1.to_ascii_uppercase();
    Ok((
        url,
        format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {level}; \
             PRAGMA busy_timeout = 30000; PRAGMA foreign_keys = ON;"
        ),
    ))
}

/// The SQLite and PostgreSQL [`Store`].
#[derive(Debug)]
pub struct SqlStore {
    pool: AnyPool,
    dialect: Dialect,
    /// SQLite writers of this process queue here instead of sleeping in the busy handler.
    writer: tokio::sync::Mutex<()>,
    graphs: RwLock<HashMap<(String, String, String), Arc<TaskGraph>>>,
    ready_steps: String,
    work_status: String,
    listener: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Task aggregates as last read or written, reused while their revision holds.
    cache: RecordCache,
}

impl Drop for SqlStore {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.lock().take() {
            listener.abort();
        }
    }
}

fn db(e: impl std::fmt::Display) -> Error {
    Error::Store(e.to_string())
}

fn ms(t: Timestamp) -> i64 {
    t.timestamp_millis()
}

fn time(ms: Option<i64>) -> Option<Timestamp> {
    ms.and_then(DateTime::from_timestamp_millis)
}

fn parse_json(text: Option<String>) -> Result<Option<Arc<Value>>> {
    text.map(|t| serde_json::from_str(&t).map(Arc::new).map_err(db))
        .transpose()
}

fn parse_state<S: FromStr>(text: String) -> Result<S>
where
    S::Err: std::fmt::Display,
{
    text.parse().map_err(db)
}

fn int(r: &AnyRow, column: &str) -> Result<i64> {
    r.try_get::<i64, _>(column).map_err(db)
}

fn step_key(r: &AnyRow) -> Result<(TaskId, u32, u32)> {
    let id: String = r.try_get("task_id").map_err(db)?;
    Ok((
        id.parse()?,
        int(r, "step_index")? as u32,
        int(r, "attempts")? as u32,
    ))
}

fn step_record(r: &AnyRow) -> Result<StepRecord> {
    let owner: Option<String> = r.try_get("lease_owner").map_err(db)?;
    let expires = time(r.try_get("lease_expires_at").map_err(db)?);
    Ok(StepRecord {
        attempts: int(r, "attempts")? as u32,
        max_attempts: int(r, "max_attempts")? as u32,
        next_attempt_at: time(r.try_get("next_attempt_at").map_err(db)?),
        lease: owner.zip(expires).map(|(o, e)| (Arc::from(o), e)),
        result: parse_json(r.try_get("result").map_err(db)?)?,
        error: r.try_get("error").map_err(db)?,
        started_at: time(r.try_get("started_at").map_err(db)?),
        completed_at: time(r.try_get("completed_at").map_err(db)?),
    })
}

fn handler_list(handlers: Option<&[Arc<str>]>) -> Result<Option<String>> {
    handlers
        .map(|h| serde_json::to_string(&h.iter().map(|s| &**s).collect::<Vec<_>>()))
        .transpose()
        .map_err(db)
}

/// Steps that became ready during an operation (their claim-order column is set).
#[derive(Default)]
struct ReadySet(BTreeSet<u32>);

impl Schedule for ReadySet {
    fn ready(&mut self, _task: &TaskRecord, index: u32) {
        self.0.insert(index);
    }
}

/// A write transaction (and, on SQLite, this process's writer turn).
struct Tx<'a> {
    _writer: Option<tokio::sync::MutexGuard<'a, ()>>,
    tx: sqlx::Transaction<'static, sqlx::Any>,
}

impl SqlStore {
    /// Opens the database at `url` (`sqlite://path`, `sqlite::memory:`, `postgres://…`),
    /// creating a SQLite file if missing, and applies the migrations.
    pub async fn open(url: &str) -> Result<SqlStore> {
        let dialect = Dialect::of(url)
            .ok_or_else(|| Error::InvalidArgument(format!("not an SQL store URL: {url:?}")))?;
        sqlx::any::install_default_drivers();
        let url = match dialect {
            // Create the file when missing.
            Dialect::Sqlite if !url.contains("mode=") && !url.contains(":memory:") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let (url, session) = match dialect {
            Dialect::Postgres => postgres_session(&url)?,
            Dialect::Sqlite => sqlite_session(&url)?,
        };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|e| Error::InvalidArgument(format!("invalid store URL {url:?}: {e}")))?;
        let max = match dialect {
            Dialect::Sqlite if url.contains(":memory:") => 1,
            Dialect::Sqlite => 4,
            Dialect::Postgres => 8,
        };
        let in_memory = dialect == Dialect::Sqlite && url.contains(":memory:");
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            // An in-memory SQLite database lives as long as its one connection.
            .min_connections(u32::from(in_memory))
            .idle_timeout((!in_memory).then_some(Duration::from_secs(600)))
            .max_lifetime((!in_memory).then_some(Duration::from_secs(1800)))
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                let session = session.clone();
                Box::pin(async move {
                    // PostgreSQL: the session timeouts. SQLite: WAL, with NORMAL (SQLite's
                    // recommended pairing) unless the URL asks for FULL.
                    conn.execute(session.as_str()).await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(db)?;
        let handlers = match dialect {
            Dialect::Sqlite => "SELECT value FROM json_each($1)",
            Dialect::Postgres => "SELECT json_array_elements_text(CAST($1 AS json))",
        };
        let store = SqlStore {
            pool,
            dialect,
            writer: tokio::sync::Mutex::new(()),
            graphs: RwLock::new(HashMap::new()),
            // On PostgreSQL the candidates skip tasks another transaction holds, so that
            // several engines do not all pick (and then skip) the same hot tasks.
            ready_steps: match dialect {
                Dialect::Sqlite => queries::READY_STEPS.replace("{handlers}", handlers),
                Dialect::Postgres => format!(
                    "{} FOR UPDATE OF t SKIP LOCKED",
                    queries::READY_STEPS.replace("{handlers}", handlers)
                ),
            },
            work_status: queries::WORK_STATUS.replace("{handlers}", handlers),
            listener: parking_lot::Mutex::new(None),
            cache: RecordCache::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies any migration not yet applied. A few tries: two processes opening a new SQLite
    /// file at once race to migrate it (PostgreSQL's migrator takes an advisory lock).
    pub async fn migrate(&self) -> Result<()> {
        let mut tries = 0;
        loop {
            match self.dialect.migrator().run(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(e) if tries < 5 && self.dialect == Dialect::Sqlite => {
                    tries += 1;
                    tracing::debug!(error = %e, "migration raced another process; trying again");
                    tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                }
                Err(e) => return Err(db(e)),
            }
        }
    }

    /// The dialect spoken.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    async fn begin(&self) -> Result<Tx<'_>> {
        let writer = match self.dialect {
            Dialect::Sqlite => Some(self.writer.lock().await),
            Dialect::Postgres => None,
        };
        let tx = self
            .pool
            .begin_with(self.dialect.begin())
            .await
            .map_err(db)?;
        Ok(Tx {
            _writer: writer,
            tx,
        })
    }

    /// Commits when `result` is `Ok`, else rolls back at once — so that no lock outlives a
    /// refused operation (a dropped transaction would roll back only when its connection is
    /// next used).
    async fn finish<T>(&self, tx: Tx<'_>, result: Result<T>, changes: &Changes) -> Result<T> {
        match result {
            Ok(value) => {
                self.commit(tx, changes).await?;
                Ok(value)
            }
            Err(e) => {
                let _ = tx.tx.rollback().await;
                Err(e)
            }
        }
    }

    async fn commit(&self, tx: Tx<'_>, changes: &Changes) -> Result<()> {
        let mut tx = tx;
        if self.dialect == Dialect::Postgres && wakes_workers(changes) {
            let notified = sqlx::query("SELECT pg_notify($1, '')")
                .bind(READY_CHANNEL)
                .execute(&mut *tx.tx)
                .await;
            if let Err(e) = notified {
                let _ = tx.tx.rollback().await;
                return Err(db(e));
            }
        }
        tx.tx.commit().await.map_err(db)
    }

    async fn graph(
        &self,
        conn: &mut AnyConnection,
        namespace: &str,
        name: &str,
        version: &str,
    ) -> Result<Arc<TaskGraph>> {
        let key = (namespace.to_owned(), name.to_owned(), version.to_owned());
        if let Some(g) = self.graphs.read().get(&key) {
            return Ok(g.clone());
        }
        let text: String = sqlx::query_scalar(queries::TEMPLATE)
            .bind(namespace)
            .bind(name)
            .bind(version)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?
            .ok_or_else(|| Error::template_not_found(namespace, name, Some(version.to_owned())))?;
        let graph = Arc::new(TaskTemplate::from_json(&text)?.compile()?);
        self.graphs.write().insert(key, graph.clone());
        Ok(graph)
    }

    /// Loads the tasks `ids` (locked as `lock` says; with [`Lock::Skip`], tasks that another
    /// transaction holds are left out), in id order; with the tasks whose rows could not be
    /// read (corrupt JSON, a state no version knows, a template that is gone), and why. Those
    /// are left out: one bad task never fails a claim, a report batch or a listing of others.
    async fn load_many(
        &self,
        conn: &mut AnyConnection,
        ids: &[TaskId],
        lock: Lock,
    ) -> Result<(Vec<TaskRecord>, Vec<(TaskId, String)>)> {
        let mut unreadable = Vec::new();
        let mut ids: Vec<TaskId> = ids.to_vec();
        ids.sort();
        ids.dedup();
        let mut records = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_ROWS) {
            let list = placeholders(self.dialect, chunk.len(), 1, 1);
            // Rows are locked in id order, so two batches never wait for each other in a cycle.
            let suffix = match (self.dialect, lock) {
                (Dialect::Postgres, Lock::Wait) => " FOR UPDATE",
                (Dialect::Postgres, Lock::Skip) => " FOR UPDATE SKIP LOCKED",
                _ => "",
            };
            let sql = format!("{} IN {list} ORDER BY task_id{suffix}", queries::TASKS);
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(id.to_string());
            }
            let tasks = query.fetch_all(&mut *conn).await.map_err(db)?;
            if tasks.is_empty() {
                continue;
            }
            // A task whose rows are at the revision cached is not read again; for the others,
            // the revision their rows are read at.
            let mut cached: Vec<std::result::Result<TaskRecord, i64>> =
                Vec::with_capacity(tasks.len());
            let mut missing: Vec<String> = Vec::new();
            for row in &tasks {
                let id: String = row.try_get("task_id").map_err(db)?;
                let revision = int(row, "revision")?;
                match self.cache.get(id.parse()?, revision) {
                    Some(task) => cached.push(Ok(task)),
                    None => {
                        missing.push(id);
                        cached.push(Err(revision));
                    }
                }
            }
            let steps = if missing.is_empty() {
                Vec::new()
            } else {
                let sql = format!(
                    "{} IN {} ORDER BY task_id, step_index",
                    queries::STEPS,
                    placeholders(self.dialect, missing.len(), 1, 1)
                );
                let mut query = sqlx::query(&sql);
                for id in &missing {
                    query = query.bind(id.as_str());
                }
                query.fetch_all(&mut *conn).await.map_err(db)?
            };
            let mut steps = steps.iter().peekable();
            for (row, hit) in tasks.iter().zip(cached) {
                let revision = match hit {
                    Ok(task) => {
                        records.push(task);
                        continue;
                    }
                    Err(revision) => revision,
                };
                let id: String = row.try_get("task_id").map_err(db)?;
                let rows: Vec<&AnyRow> = std::iter::from_fn(|| {
                    steps.next_if(|r| {
                        r.try_get::<String, _>("task_id").ok().as_deref() == Some(id.as_str())
                    })
                })
                .collect();
                match self.decode(conn, row, &rows).await {
                    Ok(task) => {
                        self.cache.put(revision, task.clone());
                        records.push(task);
                    }
                    Err(Error::Closed) => return Err(Error::Closed),
                    Err(e) => {
                        let why = match e {
                            Error::Store(why) => why,
                            other => other.to_string(),
                        };
                        tracing::error!(task = %id, error = %why, "a task's rows cannot be read; it is set to error");
                        unreadable.push((id.parse()?, format!("unreadable: {why}")));
                    }
                }
            }
        }
        Ok((records, unreadable))
    }

    /// A task from its row and its step rows.
    async fn decode(
        &self,
        conn: &mut AnyConnection,
        row: &AnyRow,
        steps: &[&AnyRow],
    ) -> Result<TaskRecord> {
        let mut task = self.task_record(conn, row).await?;
        for r in steps {
            task.states
                .push(parse_state::<StepState>(r.try_get("status").map_err(db)?)?);
            task.counters.push(Counters {
                unfinished_parents: int(r, "unfinished_parents")? as u32,
                failed_required_parents: int(r, "failed_required_parents")? as u32,
            });
            task.steps.push(step_record(r)?);
        }
        if task.states.len() != task.graph.len() {
            return Err(Error::Store(format!(
                "{} step rows, its template {} steps",
                task.states.len(),
                task.graph.len()
            )));
        }
        Ok(task)
    }

    /// Sets each unreadable task to `error` with its reason (on `conn`: the open transaction
    /// when there is one); the caller's work goes on without them.
    async fn mark_unreadable(
        conn: &mut AnyConnection,
        unreadable: &[(TaskId, String)],
        now: Timestamp,
    ) -> Result<()> {
        for (id, why) in unreadable {
            let marked = sqlx::query(queries::MARK_UNREADABLE)
                .bind(id.to_string())
                .bind(ms(now))
                .execute(&mut *conn)
                .await
                .map_err(db)?;
            if marked.rows_affected() > 0 {
                sqlx::query(queries::UNREADABLE_TRANSITION)
                    .bind(id.to_string())
                    .bind(crate::limits::message(why.clone()))
                    .bind(ms(now))
                    .execute(&mut *conn)
                    .await
                    .map_err(db)?;
            }
        }
        Ok(())
    }

    /// A task row as a record without its steps.
    async fn task_record(&self, conn: &mut AnyConnection, row: &AnyRow) -> Result<TaskRecord> {
        let id: String = row.try_get("task_id").map_err(db)?;
        let namespace: String = row.try_get("namespace").map_err(db)?;
        let name: String = row.try_get("name").map_err(db)?;
        let version: String = row.try_get("version").map_err(db)?;
        let graph = self.graph(conn, &namespace, &name, &version).await?;
        let context: String = row.try_get("context").map_err(db)?;
        let n = graph.len();
        Ok(TaskRecord {
            id: id.parse()?,
            namespace: namespace.into(),
            name: name.into(),
            context: Arc::new(serde_json::from_str(&context).map_err(db)?),
            status: parse_state(row.try_get("status").map_err(db)?)?,
            priority: int(row, "priority")? as i32,
            idempotency_key: row.try_get("idempotency_key").map_err(db)?,
            states: Vec::with_capacity(n),
            counters: Vec::with_capacity(n),
            steps: Vec::with_capacity(n),
            unfinished: int(row, "unfinished_steps")? as u32,
            created_at: time(row.try_get("created_at").map_err(db)?).unwrap_or_default(),
            updated_at: time(row.try_get("updated_at").map_err(db)?).unwrap_or_default(),
            completed_at: time(row.try_get("completed_at").map_err(db)?),
            graph,
        })
    }

    /// Loads the tasks `ids` (see [`SqlStore::load_many`]), runs `op` on each, and writes back
    /// what changed — a few statements for the whole batch, in the open transaction. Returns
    /// each loaded task's id with what `op` returned.
    async fn modify<T>(
        &self,
        conn: &mut AnyConnection,
        ids: &[TaskId],
        lock: Lock,
        now: Timestamp,
        changes: &mut Changes,
        mut op: impl FnMut(&mut TaskRecord, &mut ReadySet, &mut Changes) -> Result<T>,
    ) -> Result<Vec<(TaskId, T)>> {
        let (mut tasks, unreadable) = self.load_many(conn, ids, lock).await?;
        Self::mark_unreadable(conn, &unreadable, now).await?;
        let mark = changes.transitions.len();
        let mut edits = Vec::with_capacity(tasks.len());
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks.iter_mut() {
            let before = task.clone();
            let mut ready = ReadySet::default();
            out.push((task.id, op(task, &mut ready, changes)?));
            edits.push((before, ready));
        }
        let edits: Vec<Edit<'_>> = edits
            .iter()
            .zip(&tasks)
            .map(|((before, ready), after)| Edit {
                before: Some(before),
                after,
                ready,
            })
            .collect();
        let written = save(
            conn,
            self.dialect,
            &edits,
            now,
            &changes.transitions[mark..],
        )
        .await
        .map_err(db)?;
        drop(edits);
        // Cached as written, before the commit: should it fail, the rows keep a revision that
        // no cached entry has.
        for (task, revision) in tasks.into_iter().zip(written) {
            if let Some(revision) = revision {
                self.cache.put(revision, task);
            }
        }
        Ok(out)
    }

    /// One operation on one named task, in its own transaction.
    async fn run<T>(
        &self,
        id: TaskId,
        now: Timestamp,
        op: impl FnOnce(&mut TaskRecord, &mut ReadySet, &mut Changes) -> Result<T>,
    ) -> Result<(T, Changes)> {
        let mut tx = self.begin().await?;
        let mut changes = Changes::default();
        let mut op = Some(op);
        let result = self
            .modify(
                &mut tx.tx,
                &[id],
                Lock::Wait,
                now,
                &mut changes,
                |t, s, c| match op.take() {
                    Some(op) => op(t, s, c).map(Some),
                    None => Ok(None),
                },
            )
            .await
            .and_then(|out| {
                out.into_iter()
                    .next()
                    .and_then(|(_, out)| out)
                    .ok_or(Error::TaskNotFound(id))
            });
        let out = self.finish(tx, result, &changes).await?;
        Ok((out, changes))
    }

    /// Expired leases are given back, then due retries become pending (tasks that another
    /// transaction holds are left for it).
    async fn reclaim_and_promote(
        &self,
        conn: &mut AnyConnection,
        now: Timestamp,
        changes: &mut Changes,
    ) -> Result<()> {
        for (sql, expire) in [
            (queries::EXPIRED_LEASES, true),
            (queries::DUE_RETRIES, false),
        ] {
            let rows = sqlx::query(sql)
                .bind(ms(now))
                .fetch_all(&mut *conn)
                .await
                .map_err(db)?;
            if rows.is_empty() {
                continue;
            }
            let keys: Vec<(TaskId, u32, u32)> = rows.iter().map(step_key).collect::<Result<_>>()?;
            let ids: Vec<TaskId> = keys.iter().map(|k| k.0).collect();
            self.modify(conn, &ids, Lock::Skip, now, changes, |t, s, c| {
                let id = t.id;
                for &(_, index, attempt) in keys.iter().filter(|k| k.0 == id) {
                    if expire {
                        t.expire_lease(index, attempt, now, s, c);
                    } else {
                        t.retry_due(index, attempt, now, s, c);
                    }
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// The namespace and the named steps of a newly registered template version.
    async fn save_named_steps(
        &self,
        conn: &mut AnyConnection,
        graph: &TaskGraph,
    ) -> std::result::Result<(), sqlx::Error> {
        sqlx::query(queries::INSERT_NAMESPACE)
            .bind(graph.namespace())
            .bind(ms(chrono::Utc::now()))
            .execute(&mut *conn)
            .await?;
        let version = graph.version().to_string();
        for (c, chunk) in graph.steps().chunks(MAX_ROWS).enumerate() {
            let sql = format!(
                "{} {}",
                queries::INSERT_NAMED_STEPS,
                placeholders(self.dialect, 6, chunk.len(), 1)
            );
            let mut q = sqlx::query(&sql);
            for (i, step) in chunk.iter().enumerate() {
                q = q
                    .bind(graph.namespace())
                    .bind(graph.name())
                    .bind(version.as_str())
                    .bind((c * MAX_ROWS + i) as i64)
                    .bind(&*step.name)
                    .bind(&*step.handler);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// The body of [`Store::claim`], in the open transaction.
    async fn claim_in(
        &self,
        conn: &mut AnyConnection,
        request: &ClaimRequest,
        now: Timestamp,
        changes: &mut Changes,
    ) -> Result<Vec<ClaimedStep>> {
        self.reclaim_and_promote(conn, now, changes).await?;
        let candidates = sqlx::query(&self.ready_steps)
            .bind(handler_list(request.handlers.as_deref())?)
            .bind(request.limit.min(i64::MAX as usize) as i64)
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
        let keys: Vec<(TaskId, u32, u32)> =
            candidates.iter().map(step_key).collect::<Result<_>>()?;
        let ids: Vec<TaskId> = keys.iter().map(|k| k.0).collect();
        // Tasks another worker holds are skipped; their steps go to the next claim.
        let mut claimed: Vec<ClaimedStep> = self
            .modify(conn, &ids, Lock::Skip, now, changes, |t, s, c| {
                let mut out = Vec::new();
                let id = t.id;
                for &(_, index, _) in keys.iter().filter(|k| k.0 == id) {
                    // Re-checked under the lock: another worker may have claimed it.
                    if t.is_claimable(index) {
                        out.push(t.claim(index, &request.worker_id, now, s, c)?);
                    }
                }
                Ok(out)
            })
            .await?
            .into_iter()
            .flat_map(|(_, steps)| steps)
            .collect();
        // Hand them out in claim order (priority, then readiness), not lock order.
        claimed.sort_by_key(|c| {
            keys.iter()
                .position(|k| (k.0, k.1) == (c.step_id.task, c.step_id.index))
        });
        Ok(claimed)
    }

    /// Task `id` read without a lock, from one snapshot; [`Error::Store`] naming why when its
    /// rows cannot be read (it is set to `error`).
    async fn view_record(&self, id: TaskId) -> Result<TaskRecord> {
        let (mut records, unreadable) = self.view_load(&[id]).await?;
        if let Some((_, why)) = unreadable.into_iter().next() {
            return Err(Error::Store(format!("task {id} is {why}")));
        }
        records.pop().ok_or(Error::TaskNotFound(id))
    }

    /// Tasks `ids` read without a lock, from one snapshot, in id order; those whose rows cannot
    /// be read are left out (and set to `error`).
    async fn view_records(&self, ids: &[TaskId]) -> Result<Vec<TaskRecord>> {
        Ok(self.view_load(ids).await?.0)
    }

    async fn view_load(&self, ids: &[TaskId]) -> Result<(Vec<TaskRecord>, Vec<(TaskId, String)>)> {
        let mut tx = self
            .pool
            .begin_with(self.dialect.begin_read())
            .await
            .map_err(db)?;
        let loaded = self.load_many(&mut tx, ids, Lock::None).await;
        let _ = tx.rollback().await;
        let (records, unreadable) = loaded?;
        if !unreadable.is_empty() {
            // Outside the read transaction (it may be read-only), in one of its own.
            let mut tx = self.begin().await?;
            let marked = Self::mark_unreadable(&mut tx.tx, &unreadable, chrono::Utc::now()).await;
            self.finish(tx, marked, &Changes::default()).await?;
        }
        Ok((records, unreadable))
    }

    /// Starts the `LISTEN` loop that wakes `waker` when another engine makes steps ready.
    async fn listen(&self, url: &str, waker: Arc<Notify>) -> Result<()> {
        let mut listener = sqlx::postgres::PgListener::connect(url).await.map_err(db)?;
        listener.listen(READY_CHANNEL).await.map_err(db)?;
        let task = tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(_) => waker.notify_waiters(),
                    Err(e) => {
                        // PgListener reconnects on the next recv; polling covers the gap.
                        tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                        waker.notify_waiters();
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        if let Some(old) = self.listener.lock().replace(task) {
            old.abort();
        }
        Ok(())
    }
}

/// Whether `changes` made a step claimable (workers elsewhere should look).
fn wakes_workers(changes: &Changes) -> bool {
    !changes.ready.is_empty()
        || changes.transitions.iter().any(|t| {
            matches!(
                t.change,
                Change::Step {
                    event: StepEvent::RetryDue,
                    ..
                }
            )
        })
}

/// The most rows one multi-row statement writes (well under both databases' parameter limits).
const MAX_ROWS: usize = 500;

/// `($k, $k+1, …), (…)`: `rows` tuples of `cols` placeholders numbered from `first` — plain
/// `?` on SQLite, where numbered parameters are looked up by name (quadratic in a statement of
/// thousands of parameters).
fn placeholders(dialect: Dialect, cols: usize, rows: usize, first: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            match dialect {
                Dialect::Sqlite => out.push('?'),
                Dialect::Postgres => {
                    out.push('$');
                    out.push_str(&(first + r * cols + c).to_string());
                }
            }
        }
        out.push(')');
    }
    out
}

/// One task to write back: `before` is `None` for a new task.
struct Edit<'a> {
    before: Option<&'a TaskRecord>,
    after: &'a TaskRecord,
    ready: &'a ReadySet,
}

/// Writes the task and step rows that differ from what was loaded, and the new transitions:
/// one multi-row upsert per table, whatever the number of tasks. Returns, per edit, the new
/// revision of a task that changed (see [`RecordCache`]).
async fn save(
    conn: &mut AnyConnection,
    dialect: Dialect,
    edits: &[Edit<'_>],
    now: Timestamp,
    transitions: &[Transition],
) -> std::result::Result<Vec<Option<i64>>, sqlx::Error> {
    let mut steps: Vec<(&TaskRecord, usize, bool)> = Vec::new();
    let mut revisions: Vec<Option<i64>> = Vec::with_capacity(edits.len());
    let mut tasks: Vec<(&TaskRecord, i64)> = Vec::new();
    for e in edits {
        let written = steps.len();
        for i in 0..e.after.states.len() {
            let ready = e.ready.0.contains(&(i as u32));
            let changed = e.before.is_none_or(|b| {
                b.states[i] != e.after.states[i]
                    || b.counters[i] != e.after.counters[i]
                    || b.steps[i] != e.after.steps[i]
            });
            if changed || ready {
                steps.push((e.after, i, ready));
            }
        }
        // Any change to the task or its steps gives the task row a new revision.
        let changed = steps.len() > written
            || e.before.is_none_or(|b| {
                b.status != e.after.status
                    || b.unfinished != e.after.unfinished
                    || b.updated_at != e.after.updated_at
                    || b.completed_at != e.after.completed_at
            });
        let revision = changed.then(RecordCache::new_revision);
        if let Some(revision) = revision {
            tasks.push((e.after, revision));
        }
        revisions.push(revision);
    }
    for chunk in tasks.chunks(MAX_ROWS) {
        let sql = format!(
            "{} {} {}",
            queries::UPSERT_TASKS,
            placeholders(dialect, 13, chunk.len(), 1),
            queries::UPSERT_TASKS_SET
        );
        let mut q = sqlx::query(&sql);
        for &(t, revision) in chunk {
            q = q
                .bind(t.id.to_string())
                .bind(t.namespace.to_string())
                .bind(t.name.to_string())
                .bind(t.graph.version().to_string())
                .bind(t.status.as_str())
                .bind(t.priority as i64)
                .bind(t.context.to_string())
                .bind(t.idempotency_key.clone())
                .bind(t.unfinished as i64)
                .bind(ms(t.created_at))
                .bind(ms(t.updated_at))
                .bind(t.completed_at.map(ms))
                .bind(revision);
        }
        q.execute(&mut *conn).await?;
    }
    for chunk in steps.chunks(MAX_ROWS) {
        let sql = format!(
            "{} {} {}",
            queries::UPSERT_STEPS,
            placeholders(dialect, 18, chunk.len(), 1),
            queries::UPSERT_STEPS_SET
        );
        let mut q = sqlx::query(&sql);
        for &(t, i, ready) in chunk {
            let spec = t.graph.step(i as u32);
            let s = &t.steps[i];
            q = q
                .bind(t.id.to_string())
                .bind(i as i64)
                .bind(spec.name.to_string())
                .bind(spec.handler.to_string())
                .bind(t.states[i].as_str())
                .bind(t.priority as i64)
                .bind(s.attempts as i64)
                .bind(s.max_attempts as i64)
                .bind(t.counters[i].unfinished_parents as i64)
                .bind(t.counters[i].failed_required_parents as i64)
                .bind(ready.then(|| ms(now)))
                .bind(s.next_attempt_at.map(ms))
                .bind(s.lease.as_ref().map(|(o, _)| o.to_string()))
                .bind(s.lease.as_ref().map(|(_, e)| ms(*e)))
                .bind(s.result.as_deref().map(Value::to_string))
                .bind(s.error.clone())
                .bind(s.started_at.map(ms))
                .bind(s.completed_at.map(ms));
        }
        q.execute(&mut *conn).await?;
    }
    for chunk in transitions.chunks(MAX_ROWS) {
        let sql = format!(
            "{} {}",
            queries::INSERT_TRANSITIONS,
            placeholders(dialect, 9, chunk.len(), 1)
        );
        let mut q = sqlx::query(&sql);
        for t in chunk {
            let (step, from, to, event) = match t.change {
                Change::Task { from, to, event } => {
                    (None, from.map(|s| s.as_str()), to.as_str(), event.as_str())
                }
                Change::Step {
                    index,
                    from,
                    to,
                    event,
                } => (
                    Some(index as i64),
                    Some(from.as_str()),
                    to.as_str(),
                    event.as_str(),
                ),
            };
            q = q
                .bind(t.task_id.to_string())
                .bind(step)
                .bind(t.step_name.as_deref().map(str::to_owned))
                .bind(from)
                .bind(to)
                .bind(event)
                .bind(t.reason.clone())
                .bind(t.attempt as i64)
                .bind(ms(t.at));
        }
        q.execute(&mut *conn).await?;
    }
    Ok(revisions)
}

/// The edges of each task's graph (in the open transaction), in multi-row statements.
async fn insert_edges(
    conn: &mut AnyConnection,
    dialect: Dialect,
    tasks: &[(TaskId, &TaskGraph)],
) -> std::result::Result<(), sqlx::Error> {
    let mut edges: Vec<(String, u32, u32, bool)> = Vec::new();
    for (id, graph) in tasks {
        let id = id.to_string();
        for i in 0..graph.len() as u32 {
            for e in graph.children(i) {
                edges.push((id.clone(), i, e.step, e.requires_success));
            }
        }
    }
    for chunk in edges.chunks(MAX_ROWS) {
        let sql = format!(
            "{} {}",
            queries::INSERT_EDGES,
            placeholders(dialect, 4, chunk.len(), 1)
        );
        let mut q = sqlx::query(&sql);
        for (id, from, to, requires_success) in chunk {
            q = q
                .bind(id.as_str())
                .bind(*from as i64)
                .bind(*to as i64)
                .bind(*requires_success);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// The SQL stores are opened by URL; PostgreSQL engines also listen for wake-ups.
pub(crate) async fn open(url: &str, waker: Arc<Notify>) -> Result<SqlStore> {
    let store = SqlStore::open(url).await?;
    if store.dialect == Dialect::Postgres {
        // The listener's connection only waits: it takes the URL without the timeouts.
        store.listen(&postgres_session(url)?.0, waker).await?;
    }
    Ok(store)
}

#[async_trait]
impl Store for SqlStore {
    async fn clock_offset_ms(&self, host: &dyn crate::clock::Clock) -> Result<Option<i64>> {
        if self.dialect != Dialect::Postgres {
            return Ok(None);
        }
        let before = host.now();
        let db: i64 = sqlx::query_scalar(
            "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        let after = host.now();
        // The server read its clock about half way through the round trip.
        let host_ms = (ms(before) + ms(after)) / 2;
        Ok(Some(db - host_ms))
    }

    async fn migrate(&self) -> Result<()> {
        SqlStore::migrate(self).await
    }

    async fn save_template(&self, graph: &TaskGraph) -> Result<()> {
        let text = serde_json::to_string(graph.template()).map_err(db)?;
        let mut tx = self.begin().await?;
        let existing: Option<String> = match sqlx::query_scalar(queries::TEMPLATE)
            .bind(graph.namespace())
            .bind(graph.name())
            .bind(graph.version().to_string())
            .fetch_optional(&mut *tx.tx)
            .await
        {
            Ok(found) => found,
            Err(e) => return self.finish(tx, Err(db(e)), &Changes::default()).await,
        };
        let conflict = || Error::TemplateConflict {
            namespace: graph.namespace().to_owned(),
            name: graph.name().to_owned(),
            version: graph.version().to_string(),
        };
        let result = match existing {
            Some(old) if TaskTemplate::from_json(&old).ok().as_ref() == Some(graph.template()) => {
                Ok(false)
            }
            Some(_) => Err(conflict()),
            None => {
                let inserted = sqlx::query(queries::INSERT_TEMPLATE)
                    .bind(graph.namespace())
                    .bind(graph.name())
                    .bind(graph.version().to_string())
                    .bind(text)
                    .bind(ms(chrono::Utc::now()))
                    .execute(&mut *tx.tx)
                    .await;
                let inserted = match inserted {
                    Ok(_) => self
                        .save_named_steps(&mut tx.tx, graph)
                        .await
                        .map(|()| false),
                    Err(e) => Err(e),
                };
                match inserted {
                    Ok(again) => Ok(again),
                    // Registered concurrently by another engine: compare with that.
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(true),
                    Err(e) => Err(db(e)),
                }
            }
        };
        let again = self.finish(tx, result, &Changes::default()).await?;
        if again {
            return self.save_template(graph).await;
        }
        Ok(())
    }

    async fn resolve_template_version(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&Version>,
    ) -> Result<Version> {
        let versions: Vec<String> = sqlx::query_scalar(queries::TEMPLATE_VERSIONS)
            .bind(namespace)
            .bind(name)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let mut parsed: Vec<Version> = versions.iter().filter_map(|v| v.parse().ok()).collect();
        parsed.sort();
        let found = match version {
            Some(v) => parsed.into_iter().find(|p| p == v),
            None => parsed.pop(),
        };
        found.ok_or_else(|| {
            Error::template_not_found(namespace, name, version.map(|v| v.to_string()))
        })
    }

    async fn load_template(
        &self,
        namespace: &str,
        name: &str,
        version: &Version,
    ) -> Result<TaskTemplate> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let graph = self
            .graph(&mut conn, namespace, name, &version.to_string())
            .await?;
        Ok(graph.template().clone())
    }

    async fn create_task(
        &self,
        graph: Arc<TaskGraph>,
        new: &NewTask,
        now: Timestamp,
    ) -> Result<Created> {
        let existing = |id: String| -> Result<Created> {
            Ok(Created {
                task_id: id.parse()?,
                created: false,
                changes: Changes::default(),
            })
        };
        let mut tx = self.begin().await?;
        if let Some(key) = &new.idempotency_key {
            let found: Option<String> = match sqlx::query_scalar(queries::TASK_BY_KEY)
                .bind(graph.namespace())
                .bind(graph.name())
                .bind(key.as_str())
                .fetch_optional(&mut *tx.tx)
                .await
            {
                Ok(found) => found,
                Err(e) => return self.finish(tx, Err(db(e)), &Changes::default()).await,
            };
            if let Some(id) = found {
                let _ = tx.tx.rollback().await;
                return existing(id);
            }
        }
        let id = TaskId::new();
        let mut changes = Changes::default();
        let mut ready = ReadySet::default();
        let task = TaskRecord::create(id, graph.clone(), new, now, &mut ready, &mut changes);
        let inserted = save(
            &mut tx.tx,
            self.dialect,
            &[Edit {
                before: None,
                after: &task,
                ready: &ready,
            }],
            now,
            &changes.transitions,
        )
        .await;
        let revision = match inserted {
            Ok(revisions) => revisions.first().copied().flatten(),
            // Another engine created the task with this key between our look-up and insert.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                let _ = tx.tx.rollback().await;
                let found: Option<String> = sqlx::query_scalar(queries::TASK_BY_KEY)
                    .bind(graph.namespace())
                    .bind(graph.name())
                    .bind(new.idempotency_key.as_deref().unwrap_or_default())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(db)?;
                return match found {
                    Some(id) => existing(id),
                    None => Err(db(e)),
                };
            }
            Err(e) => return Err(db(e)),
        };
        if let Err(e) = insert_edges(&mut tx.tx, self.dialect, &[(id, &graph)]).await {
            let _ = tx.tx.rollback().await;
            return Err(db(e));
        }
        self.commit(tx, &changes).await?;
        if let Some(revision) = revision {
            self.cache.put(revision, task);
        }
        Ok(Created {
            task_id: id,
            created: true,
            changes,
        })
    }

    /// Tasks without an idempotency key in one transaction (one commit, one fsync on SQLite);
    /// keyed ones one by one, as `create_task` does (each may meet an earlier task).
    async fn create_tasks(
        &self,
        tasks: &[(Arc<TaskGraph>, NewTask)],
        now: Timestamp,
    ) -> Result<Vec<Created>> {
        let mut created: Vec<Option<Created>> = (0..tasks.len()).map(|_| None).collect();
        let (keyed, plain): (Vec<usize>, Vec<usize>) =
            (0..tasks.len()).partition(|&i| tasks[i].1.idempotency_key.is_some());
        for chunk in plain.chunks(500) {
            let mut records = Vec::with_capacity(chunk.len());
            let mut all = Changes::default();
            for &i in chunk {
                let (graph, new) = &tasks[i];
                let (mut ready, mut changes) = (ReadySet::default(), Changes::default());
                let record = TaskRecord::create(
                    TaskId::new(),
                    graph.clone(),
                    new,
                    now,
                    &mut ready,
                    &mut changes,
                );
                all.extend(changes.clone());
                records.push((i, record, ready, changes));
            }
            let mut tx = self.begin().await?;
            let edits: Vec<Edit<'_>> = records
                .iter()
                .map(|(_, after, ready, _)| Edit {
                    before: None,
                    after,
                    ready,
                })
                .collect();
            let saved = save(&mut tx.tx, self.dialect, &edits, now, &all.transitions).await;
            drop(edits);
            let revisions = match saved {
                Ok(revisions) => revisions,
                Err(e) => {
                    let _ = tx.tx.rollback().await;
                    return Err(db(e));
                }
            };
            let graphs: Vec<(TaskId, &TaskGraph)> = records
                .iter()
                .map(|(_, r, _, _)| (r.id, &*r.graph))
                .collect();
            let edges = insert_edges(&mut tx.tx, self.dialect, &graphs).await;
            drop(graphs);
            if let Err(e) = edges {
                let _ = tx.tx.rollback().await;
                return Err(db(e));
            }
            self.commit(tx, &all).await?;
            for ((i, record, _, changes), revision) in records.into_iter().zip(revisions) {
                let task_id = record.id;
                if let Some(revision) = revision {
                    self.cache.put(revision, record);
                }
                created[i] = Some(Created {
                    task_id,
                    created: true,
                    changes,
                });
            }
        }
        for i in keyed {
            let (graph, new) = &tasks[i];
            created[i] = Some(self.create_task(graph.clone(), new, now).await?);
        }
        Ok(created.into_iter().flatten().collect())
    }

    async fn claim(
        &self,
        request: &ClaimRequest,
        now: Now<'_>,
    ) -> Result<(Vec<ClaimedStep>, Changes)> {
        let mut tx = self.begin().await?;
        // Read once the write lock is held: waiting for it must not eat into the leases.
        let now = now();
        let mut changes = Changes::default();
        let result = self.claim_in(&mut tx.tx, request, now, &mut changes).await;
        let claimed = self.finish(tx, result, &changes).await?;
        Ok((claimed, changes))
    }

    async fn complete(
        &self,
        step: StepId,
        attempt: u32,
        result: Value,
        now: Timestamp,
    ) -> Result<Changes> {
        Ok(self
            .run(step.task, now, |t, s, c| {
                t.complete(step, attempt, result, now, s, c)
            })
            .await?
            .1)
    }

    async fn fail(
        &self,
        step: StepId,
        attempt: u32,
        failure: &StepFailure,
        now: Timestamp,
    ) -> Result<Changes> {
        Ok(self
            .run(step.task, now, |t, s, c| {
                t.fail(step, attempt, failure, now, s, c)
            })
            .await?
            .1)
    }

    async fn report_many(
        &self,
        reports: Vec<StepReport>,
        now: Timestamp,
    ) -> Result<(Vec<Result<()>>, Changes)> {
        let ids: Vec<TaskId> = reports.iter().map(|r| r.step.task).collect();
        let mut slots: Vec<Option<StepReport>> = reports.into_iter().map(Some).collect();
        let mut results: Vec<Result<()>> =
            ids.iter().map(|&t| Err(Error::TaskNotFound(t))).collect();
        let mut tx = self.begin().await?;
        let mut changes = Changes::default();
        // One lock, load and write for the whole batch; each task's reports in order.
        let outcomes = self
            .modify(
                &mut tx.tx,
                &ids,
                Lock::Wait,
                now,
                &mut changes,
                |t, s, c| {
                    let mut out = Vec::new();
                    for (slot, report) in slots.iter_mut().enumerate() {
                        let Some(r) = report.take_if(|r| r.step.task == t.id) else {
                            continue;
                        };
                        let result = match r.outcome {
                            Outcome::Complete(v) => t.complete(r.step, r.attempt, v, now, s, c),
                            Outcome::Fail(f) => t.fail(r.step, r.attempt, &f, now, s, c),
                        };
                        out.push((slot, result));
                    }
                    Ok(out)
                },
            )
            .await;
        let outcomes = self.finish(tx, outcomes, &changes).await?;
        for (slot, result) in outcomes.into_iter().flat_map(|(_, o)| o) {
            results[slot] = result;
        }
        Ok((results, changes))
    }

    async fn release(&self, step: StepId, attempt: u32, now: Timestamp) -> Result<Changes> {
        Ok(self
            .run(step.task, now, |t, s, c| {
                t.release(step, attempt, now, s, c)
            })
            .await?
            .1)
    }

    async fn heartbeat(&self, step: StepId, attempt: u32, now: Timestamp) -> Result<Timestamp> {
        Ok(self
            .run(step.task, now, |t, s, _| t.heartbeat(step, attempt, now, s))
            .await?
            .0)
    }

    async fn reclaim_expired(&self, now: Timestamp) -> Result<Changes> {
        let mut tx = self.begin().await?;
        let mut changes = Changes::default();
        let result = self
            .reclaim_and_promote(&mut tx.tx, now, &mut changes)
            .await;
        self.finish(tx, result, &changes).await?;
        Ok(changes)
    }

    async fn cancel_task(&self, id: TaskId, now: Timestamp) -> Result<Changes> {
        Ok(self.run(id, now, |t, s, c| t.cancel(now, s, c)).await?.1)
    }

    async fn pause_task(&self, id: TaskId, now: Timestamp) -> Result<Changes> {
        Ok(self.run(id, now, |t, _, c| t.pause(now, c)).await?.1)
    }

    async fn resume_task(&self, id: TaskId, now: Timestamp) -> Result<Changes> {
        Ok(self.run(id, now, |t, s, c| t.resume(now, s, c)).await?.1)
    }

    async fn retry_task(&self, id: TaskId, now: Timestamp) -> Result<Changes> {
        Ok(self.run(id, now, |t, s, c| t.retry(now, s, c)).await?.1)
    }

    async fn resolve_step(&self, step: StepId, result: Value, now: Timestamp) -> Result<Changes> {
        Ok(self
            .run(step.task, now, |t, s, c| t.resolve(step, result, now, s, c))
            .await?
            .1)
    }

    async fn step_id(&self, task: TaskId, name: &str) -> Result<StepId> {
        self.view_record(task).await?.step_named(name)
    }

    async fn task(&self, task: TaskId) -> Result<TaskView> {
        Ok(self.view_record(task).await?.view())
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskView>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let ids: Vec<String> = sqlx::query_scalar(queries::LIST_TASKS)
            .bind(filter.status.map(|s| s.as_str()))
            .bind(filter.namespace.clone())
            .bind(filter.name.clone())
            .bind(filter.limit.min(i64::MAX as usize) as i64)
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
        drop(conn);
        let ids: Vec<TaskId> = ids.iter().map(|id| id.parse()).collect::<Result<_, _>>()?;
        let mut tasks = self.view_records(&ids).await?;
        tasks.sort_by_key(|t| std::cmp::Reverse(t.id));
        Ok(tasks.iter().map(TaskRecord::view).collect())
    }

    async fn transitions(&self, task: TaskId) -> Result<Vec<TransitionView>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let exists: Option<String> = sqlx::query_scalar(queries::TASK_EXISTS)
            .bind(task.to_string())
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
        if exists.is_none() {
            return Err(Error::TaskNotFound(task));
        }
        let rows = sqlx::query(queries::TRANSITIONS)
            .bind(task.to_string())
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                let index: Option<i64> = r.try_get("step_index").map_err(db)?;
                Ok(TransitionView {
                    step_id: index.map(|i| StepId {
                        task,
                        index: i as u32,
                    }),
                    step: r.try_get("step_name").map_err(db)?,
                    from: r.try_get("from_state").map_err(db)?,
                    to: r.try_get("to_state").map_err(db)?,
                    event: r.try_get("event").map_err(db)?,
                    reason: r.try_get("reason").map_err(db)?,
                    attempt: int(r, "attempt")? as u32,
                    at: time(r.try_get("at").map_err(db)?).unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn work_status(
        &self,
        handlers: Option<&[Arc<str>]>,
        _now: Timestamp,
    ) -> Result<WorkStatus> {
        let row = sqlx::query(&self.work_status)
            .bind(handler_list(handlers)?)
            .fetch_one(&self.pool)
            .await
            .map_err(db)?;
        Ok(WorkStatus {
            ready: int(&row, "ready")? as u64,
            running: int(&row, "running")? as u64,
            waiting: int(&row, "waiting")? as u64,
            next_due: time(row.try_get("next_due").map_err(db)?),
        })
    }
}
