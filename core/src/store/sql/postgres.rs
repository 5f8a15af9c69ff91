//! The PostgreSQL backend, on sqlx's PostgreSQL driver: batches go in as one array per column
//! (read with `UNNEST`), an operation's writes are one statement, and `create_task` is one
//! statement in all (one round trip, its own transaction).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener};
use sqlx::{Pool, Row as _};
use tokio::sync::Notify;

use super::rows::{DueStep, GateRow, Rows, StatusRow, StepRow, TaskRow};
use super::{db, impl_backend, own_params, pool_options, Dialect, Lock, Look};
use crate::error::{Error, Result};
use crate::template::TaskGraph;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

const TASKS: &str = include_str!("postgres/tasks.sql");
const TASKS_FOR_UPDATE: &str = include_str!("postgres/tasks_for_update.sql");
const TASKS_SKIP_LOCKED: &str = include_str!("postgres/tasks_skip_locked.sql");
const STEPS: &str = include_str!("postgres/steps.sql");
/// The steps a claim looks at, in one query: the ready ones (locked), then the expired leases
/// and due retries.
const CLAIMABLE: &str = concat!(
    include_str!("postgres/ready.sql"),
    include_str!("shared/due.sql")
);
const WORK_STATUS: &str = include_str!("postgres/work_status.sql");
const NAMED_STEPS: &str = include_str!("postgres/named_steps.sql");
const WRITE: &str = include_str!("postgres/write.sql");
const GATE_LOCK: &str = include_str!("postgres/gate_lock.sql");
const GATE_ROOM: &str = include_str!("postgres/gate_room.sql");
const CREATE: &str = include_str!("postgres/create.sql");
const CLOCK: &str = include_str!("postgres/clock.sql");
const DELIVERIES_CLAIM: &str = include_str!("postgres/deliveries_claim.sql");

/// The channel PostgreSQL engines `LISTEN` on for ready steps.
pub const READY_CHANNEL: &str = "tasker_ready";

/// The PostgreSQL session timeouts, with their defaults: a stuck session (a lock held by a
/// hung client, a runaway statement, a transaction left open) cannot stall every report.
/// Each may be given in the store URL (`postgres://…?lock_timeout=2s`), in PostgreSQL's
/// duration syntax (`0` turns it off).
pub const POSTGRES_TIMEOUTS: [(&str, &str); 3] = [
    ("lock_timeout", "10s"),
    ("statement_timeout", "60s"),
    ("idle_in_transaction_session_timeout", "60s"),
];

/// `url` without the [`POSTGRES_TIMEOUTS`] parameters, and the `SET` statements that apply
/// them (the URL's values, else the defaults) to each new connection.
fn session(url: &str) -> Result<(String, String)> {
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

const TASK_STATES: &str = include_str!("postgres/task_states.sql");
const PURGE: &str = include_str!("postgres/purge.sql");

/// The PostgreSQL store.
#[derive(Debug)]
pub(super) struct Postgres;

/// Column `$field` of every row in `$rows`, as one array bind.
macro_rules! column {
    ($rows:expr, $field:ident) => {
        $rows.iter().map(|r| r.$field).collect::<Vec<_>>()
    };
    ($rows:expr, ref $field:ident) => {
        $rows.iter().map(|r| &*r.$field).collect::<Vec<&str>>()
    };
    ($rows:expr, opt $field:ident) => {
        $rows
            .iter()
            .map(|r| r.$field.as_deref())
            .collect::<Vec<Option<&str>>>()
    };
}

/// `rows` bound to `$1`–`$54` of [`WRITE`] or [`CREATE`].
fn bind_rows<'q>(
    sql: &'q str,
    rows: &'q Rows<'_>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let (t, s, r) = (&rows.tasks, &rows.steps, &rows.transitions);
    sqlx::query(sql)
        .bind(column!(t, ref task_id))
        .bind(column!(t, namespace))
        .bind(column!(t, name))
        .bind(column!(t, ref version))
        .bind(column!(t, status))
        .bind(column!(t, priority))
        .bind(column!(t, ref context))
        .bind(column!(t, idempotency_key))
        .bind(column!(t, unfinished_steps))
        .bind(column!(t, created_at))
        .bind(column!(t, updated_at))
        .bind(column!(t, completed_at))
        .bind(column!(t, revision))
        .bind(column!(s, ref task_id))
        .bind(column!(s, step_index))
        .bind(column!(s, name))
        .bind(column!(s, handler))
        .bind(column!(s, status))
        .bind(column!(s, priority))
        .bind(column!(s, attempts))
        .bind(column!(s, max_attempts))
        .bind(column!(s, unfinished_parents))
        .bind(column!(s, failed_required_parents))
        .bind(column!(s, ready_at))
        .bind(column!(s, next_attempt_at))
        .bind(column!(s, lease_owner))
        .bind(column!(s, lease_expires_at))
        .bind(column!(s, opt result))
        .bind(column!(s, error))
        .bind(column!(s, started_at))
        .bind(column!(s, completed_at))
        .bind(column!(r, ref task_id))
        .bind(column!(r, step_index))
        .bind(column!(r, step_name))
        .bind(column!(r, from_state))
        .bind(column!(r, to_state))
        .bind(column!(r, event))
        .bind(column!(r, reason))
        .bind(column!(r, attempt))
        .bind(column!(r, at))
        .bind(column!(s, not_chosen_parents))
        .bind(column!(s, opt chosen))
        .bind(column!(s, of_step))
        .bind(column!(s, opt batch))
        .bind(column!(t, opt parent))
        .bind(column!(s, opt children))
        .bind(column!(t, deadline_at))
        .bind(column!(s, concurrency_key))
        .bind(column!(s, concurrency_limit))
        .bind(column!(s, rate_key))
        .bind(column!(t, concurrency_key))
        .bind(column!(t, concurrency_limit))
        .bind(column!(t, opt traceparent))
        .bind(column!(t, opt trace_parent))
}

/// The webhook deliveries of `rows` bound to the next seven parameters of `q`.
fn bind_deliveries<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    rows: &'q Rows<'_>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let d = &rows.deliveries;
    q.bind(column!(d, ref id))
        .bind(column!(d, ref task_id))
        .bind(column!(d, event))
        .bind(column!(d, ref hook))
        .bind(column!(d, lease_ms))
        .bind(column!(d, ref body))
        .bind(column!(d, at))
}

/// `rows` bound to `$1`–`$62` of [`CREATE`]: those of [`bind_rows`], the deliveries and the
/// tasks' key holds.
fn bind_create<'q>(
    rows: &'q Rows<'_>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let t = &rows.tasks;
    bind_deliveries(bind_rows(CREATE, rows), rows).bind(column!(t, key_hold))
}

/// `rows` bound to `$1`–`$73` of [`WRITE`]: those of [`bind_rows`], the buckets, the log
/// lines, the deliveries and the tasks' key holds.
fn bind_write<'q>(
    rows: &'q Rows<'_>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let (b, l) = (&rows.buckets, &rows.logs);
    let q = bind_rows(WRITE, rows)
        .bind(column!(b, key))
        .bind(column!(b, tokens))
        .bind(column!(b, at_ms))
        .bind(column!(b, refill_per_ms))
        .bind(column!(l, ref task_id))
        .bind(column!(l, step_index))
        .bind(column!(l, attempt))
        .bind(column!(l, seq))
        .bind(column!(l, at))
        .bind(column!(l, level))
        .bind(column!(l, message));
    let t = &rows.tasks;
    bind_deliveries(q, rows).bind(column!(t, key_hold))
}

/// The handler names as an array, `None` for any.
fn handler_list(handlers: Option<&[Arc<str>]>) -> Option<Vec<&str>> {
    handlers.map(|h| h.iter().map(|s| &**s).collect())
}

impl_backend! {
impl Backend for Postgres {
    type Db = sqlx::Postgres;
    const DIALECT: Dialect = Dialect::Postgres;
    const BEGIN: &'static str = "BEGIN";
    const BEGIN_READ: &'static str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
    const ONE_WRITER: bool = false;
    const ANNOUNCE: Option<&'static str> = Some(include_str!("postgres/announce.sql"));

    async fn connect(url: &str) -> Result<Pool<sqlx::Postgres>> {
        let (url, session) = session(url)?;
        let options = PgConnectOptions::from_str(&url)
            .map_err(|e| Error::InvalidArgument(format!("invalid store URL {url:?}: {e}")))?;
        pool_options(8, false, session)
            .connect_with(options)
            .await
            .map_err(db)
    }

    async fn migrate(pool: &Pool<sqlx::Postgres>) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATIONS.run(pool).await
    }

    async fn named_steps(
        c: &mut PgConnection,
        graph: &TaskGraph,
        version: &str,
    ) -> sqlx::Result<()> {
        let names: Vec<&str> = graph.steps().iter().map(|s| &*s.name).collect();
        let handlers: Vec<&str> = graph.steps().iter().map(|s| &*s.handler).collect();
        sqlx::query(NAMED_STEPS)
            .bind(graph.namespace())
            .bind(graph.name())
            .bind(version)
            .bind(names)
            .bind(handlers)
            .execute(c)
            .await?;
        Ok(())
    }

    async fn tasks(
        c: &mut PgConnection,
        ids: &[String],
        lock: Lock,
        _begin: bool,
    ) -> sqlx::Result<Vec<TaskRow>> {
        // Transactions are begun by sqlx (`_begin` is never set here).
        let sql = match lock {
            Lock::None => TASKS,
            Lock::Wait => TASKS_FOR_UPDATE,
            Lock::Skip => TASKS_SKIP_LOCKED,
        };
        // Planned for each call (see `steps`).
        sqlx::query_as(sql)
            .bind(ids)
            .persistent(false)
            .fetch_all(c)
            .await
    }

    async fn purge(
        c: &mut PgConnection,
        before: i64,
        statuses: &[&str],
        limit: i64,
    ) -> sqlx::Result<u64> {
        let purged: i64 = sqlx::query_scalar(PURGE)
            .bind(before)
            .bind(statuses)
            .bind(limit)
            .fetch_one(c)
            .await?;
        Ok(u64::try_from(purged).unwrap_or(0))
    }

    async fn task_states(
        c: &mut PgConnection,
        ids: &[String],
    ) -> sqlx::Result<Vec<(String, String)>> {
        sqlx::query_as(TASK_STATES)
            .bind(ids)
            .persistent(false)
            .fetch_all(c)
            .await
    }

    async fn steps(c: &mut PgConnection, ids: &[String]) -> sqlx::Result<Vec<StepRow>> {
        // Planned for each call, for its ids: a plan kept from a connection's first calls, made
        // while the table was small, would scan the whole table ever after.
        sqlx::query_as(STEPS)
            .bind(ids)
            .persistent(false)
            .fetch_all(c)
            .await
    }

    async fn write(c: &mut PgConnection, rows: &Rows<'_>) -> sqlx::Result<()> {
        bind_write(rows).execute(c).await?;
        Ok(())
    }

    async fn create(c: &mut PgConnection, rows: &Rows<'_>) -> sqlx::Result<Vec<String>> {
        // One statement: its own transaction, one round trip.
        let written = bind_create(rows).fetch_all(c).await?;
        written.iter().map(|row| row.try_get(0)).collect()
    }

    async fn claimable(
        c: &mut PgConnection,
        now: i64,
        look: &Look<'_>,
    ) -> sqlx::Result<Vec<DueStep>> {
        sqlx::query_as(CLAIMABLE)
            .bind(now)
            .bind(handler_list(look.handlers))
            .bind(look.limit)
            .bind(look.reported)
            .fetch_all(c)
            .await
    }

    async fn gate_room(
        c: &mut PgConnection,
        steps: &[&str],
        tasks: &[&str],
        rates: &[&str],
    ) -> sqlx::Result<Vec<GateRow>> {
        let locks: Vec<String> = (steps.iter().map(|k| format!("s:{k}")))
            .chain(tasks.iter().map(|k| format!("t:{k}")))
            .chain(rates.iter().map(|k| format!("r:{k}")))
            .collect();
        let taken: Vec<String> = sqlx::query_scalar(GATE_LOCK)
            .bind(&locks)
            .fetch_all(&mut *c)
            .await?;
        let taken: std::collections::HashSet<&str> = taken.iter().map(|k| k.as_str()).collect();
        let mine = |prefix: &str, keys: &[&str]| -> Vec<String> {
            keys.iter()
                .filter(|k| taken.contains(format!("{prefix}{k}").as_str()))
                .map(|k| k.to_string())
                .collect()
        };
        // A statement of its own, after the locks: it sees what the claims before committed.
        // The keys another claim holds are not counted: they have no room in this one.
        sqlx::query_as(GATE_ROOM)
            .bind(mine("s:", steps))
            .bind(mine("t:", tasks))
            .bind(mine("r:", rates))
            .fetch_all(c)
            .await
    }

    async fn work_status(
        c: &mut PgConnection,
        handlers: Option<&[Arc<str>]>,
        now: i64,
    ) -> sqlx::Result<StatusRow> {
        sqlx::query_as(WORK_STATUS)
            .bind(handler_list(handlers))
            .bind(now)
            .fetch_one(c)
            .await
    }

    async fn clock_ms(pool: &Pool<sqlx::Postgres>) -> sqlx::Result<Option<i64>> {
        sqlx::query_scalar(CLOCK).fetch_one(pool).await.map(Some)
    }

    async fn listen(url: &str, waker: Arc<Notify>) -> Result<Option<tokio::task::JoinHandle<()>>> {
        // The listener's connection only waits: it takes the URL without the timeouts.
        let (url, _) = session(url)?;
        let mut listener = PgListener::connect(&url).await.map_err(db)?;
        listener.listen(READY_CHANNEL).await.map_err(db)?;
        Ok(Some(tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    // One worker of this process looks (it wakes the next when its claim
                    // comes back full): not every worker for every step made ready elsewhere.
                    Ok(_) => waker.notify_one(),
                    Err(e) => {
                        // PgListener reconnects on the next recv; polling covers the gap.
                        tracing::warn!(error = %e, "LISTEN connection lost; reconnecting");
                        waker.notify_waiters();
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        })))
    }
}
}
