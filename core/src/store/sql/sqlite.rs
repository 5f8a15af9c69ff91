//! The SQLite backend, on sqlx's SQLite driver: lists of ids go in as JSON arrays read with
//! JSON1 (`json_each`), rows as multi-row binds, and one operation's writes are one call into
//! the driver's thread.

use std::str::FromStr;
use std::sync::Arc;

use sqlx::sqlite::{SqliteArguments, SqliteConnectOptions, SqliteConnection};
use sqlx::{Pool, Row as _};
use tokio::sync::Notify;

use super::rows::{DueStep, GateRow, Rows, StatusRow, StepRow, TaskRow};
use super::{db, impl_backend, own_params, pool_options, Dialect, Lock, Look};
use crate::error::{Error, Result};
use crate::template::TaskGraph;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

const TASKS: &str = include_str!("sqlite/tasks.sql");
/// [`TASKS`], the write transaction begun first: one call.
const BEGIN_TASKS: &str = concat!("BEGIN IMMEDIATE;\n", include_str!("sqlite/tasks.sql"));
const STEPS: &str = include_str!("sqlite/steps.sql");
/// Expired leases and due retries ($1: now), then the claimable steps ($2, $3): one call.
const CLAIMABLE: &str = concat!(
    include_str!("shared/due.sql"),
    ";\n",
    include_str!("sqlite/ready.sql")
);
/// The write transaction begun, then the database's data version (one row, see the file).
const BEGIN_VERSION: &str = concat!(
    "BEGIN IMMEDIATE;\n",
    include_str!("sqlite/data_version.sql")
);
/// [`BEGIN_VERSION`], then [`CLAIMABLE`]: one call.
const BEGIN_VERSION_CLAIMABLE: &str = concat!(
    "BEGIN IMMEDIATE;\n",
    include_str!("sqlite/data_version.sql"),
    ";\n",
    include_str!("shared/due.sql"),
    ";\n",
    include_str!("sqlite/ready.sql")
);
const WORK_STATUS: &str = include_str!("sqlite/work_status.sql");
const NAMED_STEPS: &str = include_str!("sqlite/named_steps.sql");
const TASKS_UPSERT: &str = include_str!("sqlite/tasks_upsert.sql");
const TASKS_INSERT: &str = include_str!("sqlite/tasks_insert.sql");
const STEPS_UPSERT: &str = include_str!("sqlite/steps_upsert.sql");
const TRANSITIONS_INSERT: &str = include_str!("sqlite/transitions_insert.sql");
const BUCKETS_UPSERT: &str = include_str!("sqlite/buckets_upsert.sql");
const LOGS_INSERT: &str = include_str!("sqlite/logs_insert.sql");
const DELIVERIES_INSERT: &str = include_str!("sqlite/deliveries_insert.sql");
const DELIVERIES_CLAIM: &str = include_str!("sqlite/deliveries_claim.sql");
const GATE_ROOM: &str = include_str!("sqlite/gate_room.sql");
const CREATED: &str = include_str!("sqlite/created.sql");
const TASK_STATES: &str = include_str!("sqlite/task_states.sql");
const PURGE_FIND: &str = include_str!("sqlite/purge_find.sql");
const PURGE: &str = include_str!("sqlite/purge.sql");

/// `sql` (one of the `VALUES (?, …)` statements above) for `rows` rows: its tuple repeated.
/// Multi-row binds, not JSON: SQLite reads bound values far faster than it extracts them
/// from JSON text.
fn for_rows(sql: &str, rows: usize) -> String {
    let start = sql.find("VALUES (").map(|i| i + "VALUES ".len());
    let end = start.and_then(|s| sql[s..].find(')').map(|e| s + e + 1));
    let (Some(start), Some(end)) = (start, end) else {
        return sql.to_owned();
    };
    let tuple = &sql[start..end];
    let mut out = String::with_capacity(sql.len() + rows * (tuple.len() + 2));
    out.push_str(&sql[..start]);
    for i in 0..rows {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(tuple);
    }
    out.push_str(&sql[end..]);
    out
}

/// The statements writing `rows` — new task rows inserted (left out, with their steps and
/// transitions, when their idempotency key is taken), the others upserted, then steps and
/// transitions — one text for one call into the driver's thread, ending with the query of
/// which new tasks were written when there are any; empty when there is nothing to write.
fn write_text(rows: &Rows<'_>) -> String {
    let new = rows.tasks.iter().filter(|t| t.new).count();
    let mut text = String::new();
    for (sql, n) in [
        (TASKS_INSERT, new),
        (TASKS_UPSERT, rows.tasks.len() - new),
        (STEPS_UPSERT, rows.steps.len()),
        (TRANSITIONS_INSERT, rows.transitions.len()),
        (BUCKETS_UPSERT, rows.buckets.len()),
        (LOGS_INSERT, rows.logs.len()),
        (DELIVERIES_INSERT, rows.deliveries.len()),
    ] {
        // At most 500 rows a statement: well under SQLite's 32,766 parameters.
        let mut left = n;
        while left > 0 {
            let rows = left.min(500);
            text.push_str(&for_rows(sql, rows));
            text.push_str(";\n");
            left -= rows;
        }
    }
    if new > 0 {
        text.push_str(CREATED);
        text.push_str(";\n");
    }
    text
}

/// `rows` bound in the order of [`write_text`].
fn bind_rows<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Sqlite, SqliteArguments<'q>>,
    rows: &'q Rows<'_>,
) -> sqlx::Result<sqlx::query::Query<'q, sqlx::Sqlite, SqliteArguments<'q>>> {
    let new = rows.tasks.iter().filter(|t| t.new);
    for t in new.chain(rows.tasks.iter().filter(|t| !t.new)) {
        q = q
            .bind(&*t.task_id)
            .bind(t.namespace)
            .bind(t.name)
            .bind(&*t.version)
            .bind(t.status)
            .bind(t.priority)
            .bind(&*t.context)
            .bind(t.idempotency_key)
            .bind(t.unfinished_steps)
            .bind(t.created_at)
            .bind(t.updated_at)
            .bind(t.completed_at)
            .bind(t.revision)
            .bind(t.parent.as_deref())
            .bind(t.deadline_at)
            .bind(t.concurrency_key)
            .bind(t.concurrency_limit)
            .bind(t.traceparent.as_deref())
            .bind(t.trace_parent.as_deref())
            .bind(t.key_hold);
    }
    for s in &rows.steps {
        q = q
            .bind(&*s.task_id)
            .bind(s.step_index)
            .bind(s.name)
            .bind(s.handler)
            .bind(s.status)
            .bind(s.priority)
            .bind(s.attempts)
            .bind(s.max_attempts)
            .bind(s.unfinished_parents)
            .bind(s.failed_required_parents)
            .bind(s.ready_at)
            .bind(s.next_attempt_at)
            .bind(s.lease_owner)
            .bind(s.lease_expires_at)
            .bind(s.result.as_deref())
            .bind(s.error)
            .bind(s.started_at)
            .bind(s.completed_at)
            .bind(s.not_chosen_parents)
            .bind(s.chosen.as_deref())
            .bind(s.of_step)
            .bind(s.batch.as_deref())
            .bind(s.children.as_deref())
            .bind(s.concurrency_key)
            .bind(s.concurrency_limit)
            .bind(s.rate_key);
    }
    for r in &rows.transitions {
        q = q
            .bind(&*r.task_id)
            .bind(r.step_index)
            .bind(r.step_name)
            .bind(r.from_state)
            .bind(r.to_state)
            .bind(r.event)
            .bind(r.reason)
            .bind(r.attempt)
            .bind(r.at);
    }
    for b in &rows.buckets {
        q = q
            .bind(b.key)
            .bind(b.tokens)
            .bind(b.at_ms)
            .bind(b.refill_per_ms);
    }
    for l in &rows.logs {
        q = q
            .bind(&*l.task_id)
            .bind(l.step_index)
            .bind(l.attempt)
            .bind(l.seq)
            .bind(l.at)
            .bind(l.level)
            .bind(l.message);
    }
    for d in &rows.deliveries {
        q = q
            .bind(&*d.id)
            .bind(&*d.task_id)
            .bind(d.event)
            .bind(&*d.hook)
            .bind(d.lease_ms)
            .bind(&*d.body)
            .bind(d.at)
            .bind(d.at);
    }
    let new: Vec<&str> = rows
        .tasks
        .iter()
        .filter(|t| t.new)
        .map(|t| &*t.task_id)
        .collect();
    if !new.is_empty() {
        q = q.bind(json(&new)?);
    }
    Ok(q)
}

/// Runs `text` (from [`write_text`], with `BEGIN` or `COMMIT` around it) with `rows` bound:
/// the ids of the new tasks written.
async fn run_write(
    c: &mut SqliteConnection,
    text: &str,
    rows: &Rows<'_>,
) -> sqlx::Result<Vec<String>> {
    let found = bind_rows(sqlx::query(text), rows)?.fetch_all(c).await?;
    found.iter().map(|row| row.try_get(0)).collect()
}

/// SQLite's `synchronous` level, from the store URL (`sqlite://tasker.db?synchronous=full`):
/// `normal` (the default; with WAL a commit survives the process crashing, an OS crash or a
/// power loss may lose the last transactions) or `full` / `extra` (each commit is on disk
/// before it returns: power-loss durability, slower).
pub const SQLITE_SYNCHRONOUS: (&str, &str) = ("synchronous", "normal");

/// `url` without its `synchronous` parameter, and the `PRAGMA` statements of each new
/// SQLite connection.
fn session(url: &str) -> Result<(String, String)> {
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

/// A JSON array of `items` (the rows of one batch).
fn json<T: serde::Serialize>(items: &[T]) -> sqlx::Result<String> {
    serde_json::to_string(items).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

/// The handler names as a JSON array, `None` for any.
fn handler_list(handlers: Option<&[Arc<str>]>) -> sqlx::Result<Option<String>> {
    handlers
        .map(|h| json(&h.iter().map(|s| &**s).collect::<Vec<_>>()))
        .transpose()
}

/// The embedded SQLite store.
#[derive(Debug)]
pub(super) struct Sqlite;

impl_backend! {
impl Backend for Sqlite {
    type Db = sqlx::Sqlite;
    const DIALECT: Dialect = Dialect::Sqlite;
    const BEGIN: &'static str = "BEGIN IMMEDIATE";
    const BEGIN_READ: &'static str = "BEGIN";
    const ONE_WRITER: bool = true;

    async fn named_steps(
        c: &mut SqliteConnection,
        graph: &TaskGraph,
        version: &str,
    ) -> sqlx::Result<()> {
        let steps: Vec<(&str, &str)> = graph
            .steps()
            .iter()
            .map(|s| (&*s.name, &*s.handler))
            .collect();
        sqlx::query(NAMED_STEPS)
            .bind(graph.namespace())
            .bind(graph.name())
            .bind(version)
            .bind(json(&steps)?)
            .execute(c)
            .await?;
        Ok(())
    }

    async fn connect(url: &str) -> Result<Pool<sqlx::Sqlite>> {
        let in_memory = url.contains(":memory:");
        // Create the file when missing.
        let url = if !url.contains("mode=") && !in_memory {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}mode=rwc")
        } else {
            url.to_owned()
        };
        let (url, session) = session(&url)?;
        let options = SqliteConnectOptions::from_str(&url)
            .map_err(|e| Error::InvalidArgument(format!("invalid store URL {url:?}: {e}")))?;
        // WAL, with NORMAL (SQLite's recommended pairing) unless the URL asks for FULL.
        pool_options(if in_memory { 1 } else { 4 }, in_memory, session)
            .connect_with(options)
            .await
            .map_err(db)
    }

    async fn migrate(pool: &Pool<sqlx::Sqlite>) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATIONS.run(pool).await
    }

    async fn tasks(
        c: &mut SqliteConnection,
        ids: &[String],
        _lock: Lock,
        begin: bool,
    ) -> sqlx::Result<Vec<TaskRow>> {
        // The write transaction (BEGIN IMMEDIATE) is the lock.
        let sql = if begin { BEGIN_TASKS } else { TASKS };
        sqlx::query_as(sql).bind(json(ids)?).fetch_all(c).await
    }

    async fn steps(c: &mut SqliteConnection, ids: &[String]) -> sqlx::Result<Vec<StepRow>> {
        sqlx::query_as(STEPS).bind(json(ids)?).fetch_all(c).await
    }

    async fn purge(
        c: &mut SqliteConnection,
        before: i64,
        statuses: &[&str],
        limit: i64,
    ) -> sqlx::Result<u64> {
        let ids: Vec<String> = sqlx::query_scalar(PURGE_FIND)
            .bind(before)
            .bind(json(statuses)?)
            .bind(limit)
            .fetch_all(&mut *c)
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let ids_json = json(&ids)?;
        // One text, three statements: each binds the same ids.
        sqlx::query(PURGE)
            .bind(&ids_json)
            .bind(&ids_json)
            .bind(&ids_json)
            .execute(&mut *c)
            .await?;
        Ok(ids.len() as u64)
    }

    async fn task_states(
        c: &mut SqliteConnection,
        ids: &[String],
    ) -> sqlx::Result<Vec<(String, String)>> {
        sqlx::query_as(TASK_STATES).bind(json(ids)?).fetch_all(c).await
    }

    async fn write(c: &mut SqliteConnection, rows: &Rows<'_>) -> sqlx::Result<()> {
        let text = write_text(rows);
        if !text.is_empty() {
            run_write(c, &text, rows).await?;
        }
        Ok(())
    }

    async fn create(c: &mut SqliteConnection, rows: &Rows<'_>) -> sqlx::Result<Vec<String>> {
        // One short transaction, begun, written and committed in one call.
        Self::write_commit(c, rows, true).await
    }

    async fn claimable(
        c: &mut SqliteConnection,
        now: i64,
        look: &Look<'_>,
    ) -> sqlx::Result<Vec<DueStep>> {
        sqlx::query_as(CLAIMABLE)
            .bind(now)
            .bind(handler_list(look.handlers)?)
            .bind(look.limit)
            .bind(json(look.reported)?)
            .fetch_all(c)
            .await
    }

    async fn gate_room(
        c: &mut SqliteConnection,
        steps: &[&str],
        tasks: &[&str],
        rates: &[&str],
    ) -> sqlx::Result<Vec<GateRow>> {
        // In the write transaction: one writer at a time, nothing to lock.
        sqlx::query_as(GATE_ROOM)
            .bind(json(steps)?)
            .bind(json(tasks)?)
            .bind(json(rates)?)
            .fetch_all(c)
            .await
    }

    async fn begin_group(
        c: &mut SqliteConnection,
        now: i64,
        claim: Option<&Look<'_>>,
    ) -> sqlx::Result<(Option<i64>, Vec<DueStep>)> {
        let mut rows: Vec<DueStep> = match claim {
            Some(look) => {
                sqlx::query_as(BEGIN_VERSION_CLAIMABLE)
                    .bind(now)
                    .bind(handler_list(look.handlers)?)
                    .bind(look.limit)
                    .bind(json(look.reported)?)
                    .fetch_all(c)
                    .await?
            }
            None => sqlx::query_as(BEGIN_VERSION).fetch_all(c).await?,
        };
        let version = match rows.first() {
            Some(row) if row.due == "version" => Some(row.key.step_index),
            _ => None,
        };
        if version.is_some() {
            rows.remove(0);
        }
        Ok((version, rows))
    }

    async fn write_commit(
        c: &mut SqliteConnection,
        rows: &Rows<'_>,
        begin: bool,
    ) -> sqlx::Result<Vec<String>> {
        let begin = if begin { "BEGIN IMMEDIATE;\n" } else { "" };
        let text = format!("{begin}{}COMMIT;", write_text(rows));
        run_write(c, &text, rows).await
    }

    async fn work_status(
        c: &mut SqliteConnection,
        handlers: Option<&[Arc<str>]>,
        now: i64,
    ) -> sqlx::Result<StatusRow> {
        sqlx::query_as(WORK_STATUS)
            .bind(handler_list(handlers)?)
            .bind(now)
            .fetch_one(c)
            .await
    }

    async fn clock_ms(_pool: &Pool<sqlx::Sqlite>) -> sqlx::Result<Option<i64>> {
        // The database is a file on this machine: its clock is the host's.
        Ok(None)
    }

    async fn listen(_url: &str, _waker: Arc<Notify>) -> Result<Option<tokio::task::JoinHandle<()>>> {
        // One process's engines share their waker; nothing to listen to.
        Ok(None)
    }
}
}
