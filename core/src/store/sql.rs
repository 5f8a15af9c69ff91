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

use super::record::{Schedule, StepRecord, TaskRecord};
use super::{Changes, ClaimRequest, ClaimedStep, Created, NewTask, StepFailure, Store, WorkStatus};
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
    pub const TEMPLATE_VERSIONS: &str =
        "SELECT version FROM tasker_named_tasks WHERE namespace = $1 AND name = $2";
    pub const INSERT_TEMPLATE: &str = "INSERT INTO tasker_named_tasks \
        (namespace, name, version, template, created_at) VALUES ($1, $2, $3, $4, $5)";
    pub const TASK: &str = "SELECT * FROM tasker_tasks WHERE task_id = $1";
    pub const STEPS: &str =
        "SELECT * FROM tasker_workflow_steps WHERE task_id = $1 ORDER BY step_index";
    pub const TASK_BY_KEY: &str = "SELECT task_id FROM tasker_tasks \
        WHERE namespace = $1 AND name = $2 AND idempotency_key = $3";
    pub const INSERT_TASK: &str = "INSERT INTO tasker_tasks (task_id, namespace, name, version, \
        status, priority, context, idempotency_key, unfinished_steps, created_at, updated_at) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
    pub const INSERT_STEP: &str = "INSERT INTO tasker_workflow_steps (task_id, step_index, name, \
        handler, status, priority, attempts, max_attempts, unfinished_parents, \
        failed_required_parents, ready_at) VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, 0, $9)";
    pub const INSERT_EDGE: &str = "INSERT INTO tasker_workflow_step_edges \
        (task_id, from_step, to_step, requires_success) VALUES ($1, $2, $3, $4)";
    pub const UPDATE_TASK: &str = "UPDATE tasker_tasks SET status = $1, unfinished_steps = $2, \
        updated_at = $3, completed_at = $4 WHERE task_id = $5";
    pub const UPDATE_STEP: &str = "UPDATE tasker_workflow_steps SET status = $1, attempts = $2, \
        max_attempts = $3, unfinished_parents = $4, failed_required_parents = $5, \
        next_attempt_at = $6, lease_owner = $7, lease_expires_at = $8, result = $9, error = $10, \
        started_at = $11, completed_at = $12, ready_at = COALESCE($13, ready_at) \
        WHERE task_id = $14 AND step_index = $15";
    pub const INSERT_TRANSITION: &str = "INSERT INTO tasker_transitions (task_id, step_index, \
        step_name, from_state, to_state, event, reason, attempt, at) \
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
    pub const EXPIRED_LEASES: &str = "SELECT task_id, step_index, attempts \
        FROM tasker_workflow_steps WHERE status = 'in_progress' AND lease_expires_at <= $1";
    pub const DUE_RETRIES: &str = "SELECT task_id, step_index, attempts \
        FROM tasker_workflow_steps WHERE status = 'waiting_for_retry' AND next_attempt_at <= $1";
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
    pub const TRANSITIONS: &str = "SELECT * FROM tasker_transitions WHERE task_id = $1 ORDER BY id";
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
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|e| Error::InvalidArgument(format!("invalid store URL {url:?}: {e}")))?;
        let max = match dialect {
            Dialect::Sqlite if url.contains(":memory:") => 1,
            Dialect::Sqlite => 4,
            Dialect::Postgres => 8,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        // WAL with NORMAL: a commit survives the process crashing; an OS crash
                        // may lose the last transactions (SQLite's recommended pairing).
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA busy_timeout = 30000; PRAGMA foreign_keys = ON;",
                        )
                        .await?;
                    }
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
            ready_steps: queries::READY_STEPS.replace("{handlers}", handlers),
            work_status: queries::WORK_STATUS.replace("{handlers}", handlers),
            listener: parking_lot::Mutex::new(None),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies any migration not yet applied.
    pub async fn migrate(&self) -> Result<()> {
        self.dialect.migrator().run(&self.pool).await.map_err(db)
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

    async fn commit(&self, tx: Tx<'_>, changes: &Changes) -> Result<()> {
        let mut tx = tx;
        if self.dialect == Dialect::Postgres && wakes_workers(changes) {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(READY_CHANNEL)
                .execute(&mut *tx.tx)
                .await
                .map_err(db)?;
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
            .ok_or_else(|| Error::TemplateNotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                version: Some(version.to_owned()),
            })?;
        let graph = Arc::new(TaskTemplate::from_json(&text)?.compile()?);
        self.graphs.write().insert(key, graph.clone());
        Ok(graph)
    }

    /// Loads task `id`; `None` when `lock` is [`Lock::Skip`] and another transaction holds it.
    async fn load(
        &self,
        conn: &mut AnyConnection,
        id: TaskId,
        lock: Lock,
    ) -> Result<Option<TaskRecord>> {
        let sql = match (self.dialect, lock) {
            (Dialect::Postgres, Lock::Wait) => format!("{} FOR UPDATE", queries::TASK),
            (Dialect::Postgres, Lock::Skip) => format!("{} FOR UPDATE SKIP LOCKED", queries::TASK),
            _ => queries::TASK.to_owned(),
        };
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
        let row = match (row, lock) {
            (Some(row), _) => row,
            (None, Lock::Skip) => return Ok(None),
            (None, _) => return Err(Error::TaskNotFound(id)),
        };
        let namespace: String = row.try_get("namespace").map_err(db)?;
        let name: String = row.try_get("name").map_err(db)?;
        let version: String = row.try_get("version").map_err(db)?;
        let graph = self.graph(conn, &namespace, &name, &version).await?;
        let rows = sqlx::query(queries::STEPS)
            .bind(id.to_string())
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
        if rows.len() != graph.len() {
            return Err(Error::Store(format!(
                "task {id} has {} step rows, its template {} steps",
                rows.len(),
                graph.len()
            )));
        }
        let mut states = Vec::with_capacity(rows.len());
        let mut counters = Vec::with_capacity(rows.len());
        let mut steps = Vec::with_capacity(rows.len());
        for r in &rows {
            states.push(parse_state::<StepState>(r.try_get("status").map_err(db)?)?);
            counters.push(Counters {
                unfinished_parents: int(r, "unfinished_parents")? as u32,
                failed_required_parents: int(r, "failed_required_parents")? as u32,
            });
            steps.push(step_record(r)?);
        }
        let context: String = row.try_get("context").map_err(db)?;
        Ok(Some(TaskRecord {
            id,
            namespace: namespace.into(),
            name: name.into(),
            context: Arc::new(serde_json::from_str(&context).map_err(db)?),
            status: parse_state(row.try_get("status").map_err(db)?)?,
            priority: int(&row, "priority")? as i32,
            idempotency_key: row.try_get("idempotency_key").map_err(db)?,
            states,
            counters,
            steps,
            unfinished: int(&row, "unfinished_steps")? as u32,
            created_at: time(row.try_get("created_at").map_err(db)?).unwrap_or_default(),
            updated_at: time(row.try_get("updated_at").map_err(db)?).unwrap_or_default(),
            completed_at: time(row.try_get("completed_at").map_err(db)?),
            graph,
        }))
    }

    /// Locks and loads task `id`, runs `op` on it and writes back what changed, in the open
    /// transaction. `None` when `lock` is [`Lock::Skip`] and the task is held elsewhere.
    async fn update<T>(
        &self,
        conn: &mut AnyConnection,
        id: TaskId,
        lock: Lock,
        now: Timestamp,
        changes: &mut Changes,
        op: impl FnOnce(&mut TaskRecord, &mut ReadySet, &mut Changes) -> Result<T>,
    ) -> Result<Option<T>> {
        let Some(mut task) = self.load(conn, id, lock).await? else {
            return Ok(None);
        };
        let before = task.clone();
        let mut ready = ReadySet::default();
        let mark = changes.transitions.len();
        let out = op(&mut task, &mut ready, changes)?;
        save(
            conn,
            &before,
            &task,
            &ready,
            now,
            &changes.transitions[mark..],
        )
        .await?;
        Ok(Some(out))
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
        let out = self
            .update(&mut tx.tx, id, Lock::Wait, now, &mut changes, op)
            .await?
            .ok_or(Error::TaskNotFound(id))?;
        self.commit(tx, &changes).await?;
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
        let expired = sqlx::query(queries::EXPIRED_LEASES)
            .bind(ms(now))
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
        for r in expired {
            let (id, index, attempt) = step_key(&r)?;
            self.update(conn, id, Lock::Skip, now, changes, |t, s, c| {
                t.expire_lease(index, attempt, now, s, c);
                Ok(())
            })
            .await?;
        }
        let due = sqlx::query(queries::DUE_RETRIES)
            .bind(ms(now))
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
        for r in due {
            let (id, index, attempt) = step_key(&r)?;
            self.update(conn, id, Lock::Skip, now, changes, |t, s, c| {
                t.retry_due(index, attempt, now, s, c);
                Ok(())
            })
            .await?;
        }
        Ok(())
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

/// Writes the rows of `after` that differ from `before`, and the new transitions.
async fn save(
    conn: &mut AnyConnection,
    before: &TaskRecord,
    after: &TaskRecord,
    ready: &ReadySet,
    now: Timestamp,
    transitions: &[Transition],
) -> Result<()> {
    let id = after.id.to_string();
    let task_changed = before.status != after.status
        || before.unfinished != after.unfinished
        || before.updated_at != after.updated_at
        || before.completed_at != after.completed_at;
    if task_changed {
        sqlx::query(queries::UPDATE_TASK)
            .bind(after.status.as_str())
            .bind(after.unfinished as i64)
            .bind(ms(after.updated_at))
            .bind(after.completed_at.map(ms))
            .bind(&id)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
    }
    for i in 0..after.states.len() {
        let index = i as u32;
        let changed = before.states[i] != after.states[i]
            || before.counters[i] != after.counters[i]
            || before.steps[i] != after.steps[i]
            || ready.0.contains(&index);
        if !changed {
            continue;
        }
        let s = &after.steps[i];
        sqlx::query(queries::UPDATE_STEP)
            .bind(after.states[i].as_str())
            .bind(s.attempts as i64)
            .bind(s.max_attempts as i64)
            .bind(after.counters[i].unfinished_parents as i64)
            .bind(after.counters[i].failed_required_parents as i64)
            .bind(s.next_attempt_at.map(ms))
            .bind(s.lease.as_ref().map(|(o, _)| o.to_string()))
            .bind(s.lease.as_ref().map(|(_, e)| ms(*e)))
            .bind(s.result.as_deref().map(Value::to_string))
            .bind(s.error.clone())
            .bind(s.started_at.map(ms))
            .bind(s.completed_at.map(ms))
            .bind(ready.0.contains(&index).then(|| ms(now)))
            .bind(&id)
            .bind(index as i64)
            .execute(&mut *conn)
            .await
            .map_err(db)?;
    }
    insert_transitions(conn, transitions).await
}

async fn insert_transitions(conn: &mut AnyConnection, transitions: &[Transition]) -> Result<()> {
    for t in transitions {
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
        sqlx::query(queries::INSERT_TRANSITION)
            .bind(t.task_id.to_string())
            .bind(step)
            .bind(t.step_name.as_deref().map(str::to_owned))
            .bind(from)
            .bind(to)
            .bind(event)
            .bind(t.reason.clone())
            .bind(t.attempt as i64)
            .bind(ms(t.at))
            .execute(&mut *conn)
            .await
            .map_err(db)?;
    }
    Ok(())
}

/// The SQL stores are opened by URL; PostgreSQL engines also listen for wake-ups.
pub(crate) async fn open(url: &str, waker: Arc<Notify>) -> Result<SqlStore> {
    let store = SqlStore::open(url).await?;
    if store.dialect == Dialect::Postgres {
        store.listen(url, waker).await?;
    }
    Ok(store)
}

#[async_trait]
impl Store for SqlStore {
    async fn save_template(&self, graph: &TaskGraph) -> Result<()> {
        let text = serde_json::to_string(graph.template()).map_err(db)?;
        let mut tx = self.begin().await?;
        let existing: Option<String> = sqlx::query_scalar(queries::TEMPLATE)
            .bind(graph.namespace())
            .bind(graph.name())
            .bind(graph.version().to_string())
            .fetch_optional(&mut *tx.tx)
            .await
            .map_err(db)?;
        let conflict = || Error::TemplateConflict {
            namespace: graph.namespace().to_owned(),
            name: graph.name().to_owned(),
            version: graph.version().to_string(),
        };
        match existing {
            Some(old) if TaskTemplate::from_json(&old).ok().as_ref() == Some(graph.template()) => {
                Ok(())
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
                match inserted {
                    Ok(_) => tx.tx.commit().await.map_err(db),
                    // Registered concurrently by another engine: compare with that.
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        drop(tx);
                        Box::pin(self.save_template(graph)).await
                    }
                    Err(e) => Err(db(e)),
                }
            }
        }
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
        found.ok_or_else(|| Error::TemplateNotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            version: version.map(|v| v.to_string()),
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
            let found: Option<String> = sqlx::query_scalar(queries::TASK_BY_KEY)
                .bind(graph.namespace())
                .bind(graph.name())
                .bind(key.as_str())
                .fetch_optional(&mut *tx.tx)
                .await
                .map_err(db)?;
            if let Some(id) = found {
                return existing(id);
            }
        }
        let id = TaskId::new();
        let mut changes = Changes::default();
        let mut ready = ReadySet::default();
        let task = TaskRecord::create(id, graph.clone(), new, now, &mut ready, &mut changes);
        let id_text = id.to_string();
        let inserted = sqlx::query(queries::INSERT_TASK)
            .bind(&id_text)
            .bind(graph.namespace())
            .bind(graph.name())
            .bind(graph.version().to_string())
            .bind(task.status.as_str())
            .bind(task.priority as i64)
            .bind(task.context.to_string())
            .bind(task.idempotency_key.clone())
            .bind(task.unfinished as i64)
            .bind(ms(now))
            .bind(ms(now))
            .execute(&mut *tx.tx)
            .await;
        match inserted {
            Ok(_) => {}
            // Another engine created the task with this key between our look-up and insert.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                drop(tx);
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
        }
        for (i, spec) in graph.steps().iter().enumerate() {
            sqlx::query(queries::INSERT_STEP)
                .bind(&id_text)
                .bind(i as i64)
                .bind(&*spec.name)
                .bind(&*spec.handler)
                .bind(task.states[i].as_str())
                .bind(task.priority as i64)
                .bind(task.steps[i].max_attempts as i64)
                .bind(task.counters[i].unfinished_parents as i64)
                .bind(ready.0.contains(&(i as u32)).then(|| ms(now)))
                .execute(&mut *tx.tx)
                .await
                .map_err(db)?;
        }
        for i in 0..graph.len() as u32 {
            for edge in graph.children(i) {
                sqlx::query(queries::INSERT_EDGE)
                    .bind(&id_text)
                    .bind(i as i64)
                    .bind(edge.step as i64)
                    .bind(edge.requires_success)
                    .execute(&mut *tx.tx)
                    .await
                    .map_err(db)?;
            }
        }
        insert_transitions(&mut tx.tx, &changes.transitions).await?;
        self.commit(tx, &changes).await?;
        Ok(Created {
            task_id: id,
            created: true,
            changes,
        })
    }

    async fn claim(
        &self,
        request: &ClaimRequest,
        now: Timestamp,
    ) -> Result<(Vec<ClaimedStep>, Changes)> {
        let mut tx = self.begin().await?;
        let mut changes = Changes::default();
        self.reclaim_and_promote(&mut tx.tx, now, &mut changes)
            .await?;
        let candidates = sqlx::query(&self.ready_steps)
            .bind(handler_list(request.handlers.as_deref())?)
            .bind(request.limit.min(i64::MAX as usize) as i64)
            .fetch_all(&mut *tx.tx)
            .await
            .map_err(db)?;
        // Group by task: one lock and one load per task.
        let mut by_task: Vec<(TaskId, Vec<u32>)> = Vec::new();
        for r in &candidates {
            let (id, index, _) = step_key(r)?;
            match by_task.iter_mut().find(|(t, _)| *t == id) {
                Some((_, steps)) => steps.push(index),
                None => by_task.push((id, vec![index])),
            }
        }
        let mut claimed = Vec::with_capacity(candidates.len());
        for (id, indexes) in by_task {
            let steps = self
                .update(&mut tx.tx, id, Lock::Skip, now, &mut changes, |t, s, c| {
                    let mut out = Vec::new();
                    for index in indexes {
                        // Re-checked under the lock: another worker may have claimed it.
                        if t.is_claimable(index) {
                            out.push(t.claim(index, &request.worker_id, now, s, c)?);
                        }
                    }
                    Ok(out)
                })
                .await?;
            claimed.extend(steps.into_iter().flatten());
        }
        self.commit(tx, &changes).await?;
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

    async fn heartbeat(&self, step: StepId, attempt: u32, now: Timestamp) -> Result<Timestamp> {
        Ok(self
            .run(step.task, now, |t, s, _| t.heartbeat(step, attempt, now, s))
            .await?
            .0)
    }

    async fn reclaim_expired(&self, now: Timestamp) -> Result<Changes> {
        let mut tx = self.begin().await?;
        let mut changes = Changes::default();
        self.reclaim_and_promote(&mut tx.tx, now, &mut changes)
            .await?;
        self.commit(tx, &changes).await?;
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
        let mut conn = self.pool.acquire().await.map_err(db)?;
        self.load(&mut conn, task, Lock::None)
            .await?
            .ok_or(Error::TaskNotFound(task))?
            .step_named(name)
    }

    async fn task(&self, task: TaskId) -> Result<TaskView> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        Ok(self
            .load(&mut conn, task, Lock::None)
            .await?
            .ok_or(Error::TaskNotFound(task))?
            .view())
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
        let mut views = Vec::with_capacity(ids.len());
        for id in ids {
            let id: TaskId = id.parse()?;
            if let Some(task) = self.load(&mut conn, id, Lock::None).await? {
                views.push(task.view());
            }
        }
        Ok(views)
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
