//! The SQL stores (sqlx): the embedded SQLite default and PostgreSQL for many workers, each on
//! sqlx's own driver (`sqlite`, `postgres`) behind one `Backend` trait, with every
//! statement static text in a `.sql` file beside its store (`shared/` holds the statements
//! both speak alike).
//!
//! An operation runs in one transaction: it locks and loads the task it touches into a
//! `TaskRecord`, calls the same method the memory store calls, and writes back the rows that
//! changed with the new transitions (one batch, `rows::Rows`) — so the rules live in one
//! place and nothing is ever half-written.
//!
//! * **SQLite**: WAL mode, `synchronous = NORMAL` (selectable), a busy timeout, and
//!   `BEGIN IMMEDIATE` transactions (one writer at a time; writers of one process queue on an
//!   async mutex). A batch is written with one round trip to the driver's thread.
//! * **PostgreSQL**: the task row is the lock (`SELECT … FOR UPDATE`); claims skip tasks that
//!   another worker holds (`FOR UPDATE SKIP LOCKED`), so many workers in many processes claim
//!   without blocking each other and never claim a step twice. A batch is one statement of
//!   array binds; `create_task` is one statement in all. A write that makes steps ready sends
//!   `NOTIFY tasker_ready`; every engine on the database `LISTEN`s and wakes its workers at
//!   once (polling remains the fallback).

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::DateTime;
use parking_lot::RwLock;
use semver::Version;
use serde_json::Value;
use sqlx::{Database, Pool};
use tokio::sync::Notify;

use super::cache::RecordCache;
use super::record::{Schedule, StepRecord, TaskRecord};
use super::{
    Changes, ClaimRequest, ClaimedStep, Created, NewTask, Now, Outcome, ReportedAndClaimed,
    StepReport, Store, WorkStatus,
};
use crate::clock::Timestamp;
use crate::error::{Error, Result, StoreErrorKind};
use crate::ids::{StepId, TaskId};
use crate::readiness::{Choices, Counters};
use crate::state::{Change, StepEvent, StepState, TaskState};
use crate::template::{TaskGraph, TaskTemplate};
use crate::view::{TaskFilter, TaskView, TransitionView};

mod group;
mod postgres;
mod rows;
mod sqlite;

pub use postgres::{POSTGRES_TIMEOUTS, READY_CHANNEL};
pub use sqlite::SQLITE_SYNCHRONOUS;

use crate::gate::{Bucket, Room, Slot};
use rows::{ms, Rows, StepKey, StepRow, StepWrite, TaskRow, TaskWrite, TransitionWrite};

/// Which database a SQL store speaks to.
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

/// The statements both databases speak alike (`$n` placeholders, the same types).
mod shared {
    pub const TEMPLATE: &str = include_str!("shared/template.sql");
    pub const TEMPLATE_VERSIONS: &str = include_str!("shared/template_versions.sql");
    pub const TEMPLATES: &str = include_str!("shared/templates.sql");
    pub const INSERT_TEMPLATE: &str = include_str!("shared/insert_template.sql");
    pub const INSERT_NAMESPACE: &str = include_str!("shared/insert_namespace.sql");
    pub const TASK_BY_KEY: &str = include_str!("shared/task_by_key.sql");
    pub const DUE: &str = include_str!("shared/due.sql");
    pub const LIST_TASKS: &str = include_str!("shared/list_tasks.sql");
    pub const TASK_EXISTS: &str = include_str!("shared/task_exists.sql");
    pub const MARK_UNREADABLE: &str = include_str!("shared/mark_unreadable.sql");
    pub const UNREADABLE_TRANSITION: &str = include_str!("shared/unreadable_transition.sql");
    pub const TRANSITIONS: &str = include_str!("shared/transitions.sql");
    pub const LOGS: &str = include_str!("shared/logs.sql");
    pub const DELIVERY_SETTLE: &str = include_str!("shared/delivery_settle.sql");
    pub const DELIVERIES: &str = include_str!("shared/deliveries.sql");
    pub const DELIVERIES_DUE: &str = include_str!("shared/deliveries_due.sql");
    pub const READY_BY_HANDLER: &str = include_str!("shared/ready_by_handler.sql");
    pub const STATS_COUNTS: &str = include_str!("shared/stats_counts.sql");
    pub const STATS_DURATIONS: &str = include_str!("shared/stats_durations.sql");
    pub const WAITING_FOR_CHILDREN: &str = include_str!("shared/waiting_for_children.sql");
    pub const OPEN_CHILDREN: &str = include_str!("shared/open_children.sql");
    pub const SCHEDULE_UPSERT: &str = include_str!("shared/schedule_upsert.sql");
    pub const SCHEDULE_DELETE: &str = include_str!("shared/schedule_delete.sql");
    pub const SCHEDULES: &str = include_str!("shared/schedules.sql");
    pub const SCHEDULE_ADVANCE: &str = include_str!("shared/schedule_advance.sql");
}

/// How a delivery's attempt is settled: status, next attempt, error, delivery time, and 1 to
/// take the attempt back (0 to count it).
type DeliverySettled<'a> = (&'a str, Option<i64>, Option<&'a str>, Option<i64>, i64);

/// A connection of backend `B`'s driver.
type Conn<B> = <<B as Backend>::Db as Database>::Connection;

/// What differs between the two databases: connecting, migrating, and the statements whose
/// text or binds are the database's own. Everything else — locking, loading, the cache,
/// deciding what to write — is [`SqlStore`]'s, once.
#[async_trait]
trait Backend: std::fmt::Debug + Send + Sync + Sized + 'static {
    /// The sqlx driver.
    type Db: Database;
    /// Which database.
    const DIALECT: Dialect;
    /// The statement that opens a write transaction.
    const BEGIN: &'static str;
    /// A read-only transaction with one snapshot for a view's two statements.
    const BEGIN_READ: &'static str;

    /// Whether the database takes one writer at a time (this process then writes through one
    /// kept connection, [`Writer`]).
    const ONE_WRITER: bool;
    /// The statement that wakes the other engines' listeners, where there are any
    /// ([`Backend::listen`]); sent after the commits that made steps claimable.
    const ANNOUNCE: Option<&'static str> = None;

    /// Runs `sql` (no binds), such as `BEGIN` or `ROLLBACK`.
    async fn execute(c: &mut Conn<Self>, sql: &'static str) -> sqlx::Result<()>;
    /// Writes `rows` and commits the transaction begun by hand on `c` (begun first when
    /// `begin`); SQLite does it in one call. The ids of the new tasks written: on SQLite each
    /// new task whose idempotency key is taken is left out, elsewhere a taken key fails the
    /// write.
    async fn write_commit(
        c: &mut Conn<Self>,
        rows: &Rows<'_>,
        begin: bool,
    ) -> sqlx::Result<Vec<String>> {
        if begin {
            Self::execute(c, Self::BEGIN).await?;
        }
        if !rows.is_empty() {
            Self::write(c, rows).await?;
        }
        Self::execute(c, "COMMIT").await?;
        Ok(rows
            .tasks
            .iter()
            .filter(|t| t.new)
            .map(|t| t.task_id.clone())
            .collect())
    }
    /// Begins the write transaction on `c` and reads, in the same call where the database
    /// allows it, how many times other connections have changed the database (SQLite's
    /// `data_version`; `None` where nothing tells) and the steps to look at for a claim of
    /// `claim` at `now` (see [`Backend::claimable`]).
    async fn begin_group(
        c: &mut Conn<Self>,
        now: i64,
        claim: Option<&Look<'_>>,
    ) -> sqlx::Result<(Option<i64>, Vec<rows::DueStep>)> {
        Self::execute(c, Self::BEGIN).await?;
        let rows = match claim {
            Some(look) => Self::claimable(c, now, look).await?,
            None => Vec::new(),
        };
        Ok((None, rows))
    }
    /// Steps to look at for a claim, in one query: whose lease ran out (`lease`), whose retry
    /// is due (`retry`) at `now`, and the claimable ones in claim order (`ready`) as `look`
    /// says.
    async fn claimable(
        c: &mut Conn<Self>,
        now: i64,
        look: &Look<'_>,
    ) -> sqlx::Result<Vec<rows::DueStep>>;
    /// What holds the keys a claim may take: the step keys `steps`, task keys `tasks` and
    /// rate keys `rates`; where other writers run beside this one, each key locked first
    /// until the transaction ends (so that one claim at a time counts and takes it), and
    /// those another claim has locked left out (a key without a row has no room).
    async fn gate_room(
        c: &mut Conn<Self>,
        steps: &[&str],
        tasks: &[&str],
        rates: &[&str],
    ) -> sqlx::Result<Vec<rows::GateRow>>;
    /// A pool on `url`, each connection set up for the engine.
    async fn connect(url: &str) -> Result<Pool<Self::Db>>;
    /// Applies the migrations not yet applied.
    async fn migrate(pool: &Pool<Self::Db>)
        -> std::result::Result<(), sqlx::migrate::MigrateError>;
    /// The template of `namespace/name` at `version`, as JSON.
    async fn template(
        c: &mut Conn<Self>,
        namespace: &str,
        name: &str,
        version: &str,
    ) -> sqlx::Result<Option<String>>;
    /// The versions of `namespace/name`.
    async fn template_versions(
        c: &mut Conn<Self>,
        namespace: &str,
        name: &str,
    ) -> sqlx::Result<Vec<String>>;
    /// Every registered template version's JSON text.
    async fn templates(c: &mut Conn<Self>) -> sqlx::Result<Vec<String>>;
    /// Registers a template version (its JSON `text`), its namespace and its named steps.
    async fn insert_template(
        c: &mut Conn<Self>,
        graph: &TaskGraph,
        text: &str,
        now: i64,
    ) -> sqlx::Result<()>;
    /// The named steps of `graph` at `version`, in order.
    async fn named_steps(c: &mut Conn<Self>, graph: &TaskGraph, version: &str) -> sqlx::Result<()>;
    /// The task rows of `ids` (sorted), locked as `lock` says; the write transaction begun
    /// first when `begin` (in the same call).
    async fn tasks(
        c: &mut Conn<Self>,
        ids: &[String],
        lock: Lock,
        begin: bool,
    ) -> sqlx::Result<Vec<TaskRow>>;
    /// The step rows of the tasks `ids`, by task and index.
    async fn steps(c: &mut Conn<Self>, ids: &[String]) -> sqlx::Result<Vec<StepRow>>;
    /// Writes `rows` (upserts).
    async fn write(c: &mut Conn<Self>, rows: &Rows<'_>) -> sqlx::Result<()>;
    /// Inserts new tasks (`rows`), leaving out each whose idempotency key is taken (with its
    /// steps and transitions), in one transaction of its own on `c` (out of any
    /// transaction); the ids written.
    async fn create(c: &mut Conn<Self>, rows: &Rows<'_>) -> sqlx::Result<Vec<String>>;
    /// The task of `namespace/name` created with idempotency key `key`.
    async fn task_by_key(
        c: &mut Conn<Self>,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> sqlx::Result<Option<String>>;
    /// Steps whose lease ran out and retries that are due at `now`.
    async fn due(c: &mut Conn<Self>, now: i64) -> sqlx::Result<Vec<rows::DueStep>>;
    /// The counts of `work_status` at `now`.
    async fn work_status(
        c: &mut Conn<Self>,
        handlers: Option<&[Arc<str>]>,
        now: i64,
    ) -> sqlx::Result<rows::StatusRow>;
    /// The ids of tasks matching `filter`, newest first.
    async fn list_tasks(c: &mut Conn<Self>, filter: &TaskFilter) -> sqlx::Result<Vec<String>>;
    /// Up to `limit` steps waiting for children, after `after` (task, index).
    async fn waiting_for_children(
        c: &mut Conn<Self>,
        after: Option<(&str, i64)>,
        limit: i64,
    ) -> sqlx::Result<Vec<StepKey>>;
    /// Up to `limit` unfinished tasks with a parent, after task `after`: each id and its parent
    /// (JSON).
    async fn open_children(
        c: &mut Conn<Self>,
        after: Option<&str>,
        limit: i64,
    ) -> sqlx::Result<Vec<(String, String)>>;
    /// Deletes up to `limit` tasks in a state of `statuses` that finished before `before`,
    /// with their steps and transitions (in the open transaction); how many.
    async fn purge(
        c: &mut Conn<Self>,
        before: i64,
        statuses: &[&str],
        limit: i64,
    ) -> sqlx::Result<u64>;
    /// Each of the tasks `ids` that exists, with its state, in id order.
    async fn task_states(c: &mut Conn<Self>, ids: &[String])
        -> sqlx::Result<Vec<(String, String)>>;
    /// Registers a schedule: name, spec (JSON), next tick, now.
    async fn schedule_upsert(
        c: &mut Conn<Self>,
        name: &str,
        spec: &str,
        next_at: Option<i64>,
        now: i64,
    ) -> sqlx::Result<()>;
    /// Removes a schedule; rows affected.
    async fn schedule_delete(c: &mut Conn<Self>, name: &str) -> sqlx::Result<u64>;
    /// The schedules due by `due_by` (all when `None`): spec, next tick, last task, created.
    #[allow(clippy::type_complexity)]
    async fn schedules(
        c: &mut Conn<Self>,
        due_by: Option<i64>,
    ) -> sqlx::Result<Vec<(String, Option<i64>, Option<String>, i64)>>;
    /// Moves a schedule on from one tick to the next; rows affected.
    async fn schedule_advance(
        c: &mut Conn<Self>,
        name: &str,
        from: i64,
        to: Option<i64>,
        last_task: Option<&str>,
        now: i64,
    ) -> sqlx::Result<u64>;
    /// Whether task `id` exists.
    async fn task_exists(c: &mut Conn<Self>, id: &str) -> sqlx::Result<bool>;
    /// Task `id`'s transitions in order.
    async fn transitions(c: &mut Conn<Self>, id: &str) -> sqlx::Result<Vec<rows::TransitionRow>>;
    /// Leases up to `limit` due webhook deliveries to `owner` at `now`.
    async fn deliveries_claim(
        c: &mut Conn<Self>,
        now: i64,
        owner: &str,
        limit: i64,
    ) -> sqlx::Result<Vec<rows::DeliveryRow>>;
    /// Settles attempt `attempt` of delivery `id`: status, next attempt, error, delivery time,
    /// and 1 to take the attempt back (0 to count it); rows affected.
    async fn delivery_settle(
        c: &mut Conn<Self>,
        id: &str,
        attempt: i64,
        settled: DeliverySettled<'_>,
    ) -> sqlx::Result<u64>;
    /// Task `id`'s webhook deliveries, oldest first.
    async fn deliveries(c: &mut Conn<Self>, id: &str) -> sqlx::Result<Vec<rows::DeliveryViewRow>>;
    /// Whether a webhook delivery is due at `now`.
    async fn deliveries_due(c: &mut Conn<Self>, now: i64) -> sqlx::Result<bool>;
    /// Task `id`'s log lines (of step `step` only, when given), in order.
    async fn logs(
        c: &mut Conn<Self>,
        id: &str,
        step: Option<i64>,
    ) -> sqlx::Result<Vec<rows::LogRow>>;
    /// The steps claimable now per handler: (handler, count), in handler order.
    async fn ready_by_handler(c: &mut Conn<Self>) -> sqlx::Result<Vec<(String, i64)>>;
    /// The counts of [`crate::view::Stats`]: (kind, key, n) (see `shared/stats_counts.sql`).
    async fn stats_counts(c: &mut Conn<Self>) -> sqlx::Result<Vec<(String, String, i64)>>;
    /// Per handler: finished steps, mean and p95 duration in ms.
    async fn stats_durations(
        c: &mut Conn<Self>,
    ) -> sqlx::Result<Vec<(String, i64, Option<f64>, Option<i64>)>>;
    /// Sets task `id` to `error` with the transition saying `why`, unless it is there already.
    async fn mark_unreadable(c: &mut Conn<Self>, id: &str, why: &str, now: i64)
        -> sqlx::Result<()>;
    /// The database server's clock in milliseconds, when it is another machine's.
    async fn clock_ms(pool: &Pool<Self::Db>) -> sqlx::Result<Option<i64>>;
    /// Starts waking `waker` when another engine makes steps ready (a no-op where there is no
    /// other engine to hear from).
    async fn listen(url: &str, waker: Arc<Notify>) -> Result<Option<tokio::task::JoinHandle<()>>>;
}

/// `impl Backend for $backend { type Db = $db; … }` with the statements of [`shared`] added as
/// methods (one text, each driver's own types).
macro_rules! impl_backend {
    (impl Backend for $backend:ty { type Db = $db:ty; $($body:tt)* }) => {
        #[async_trait::async_trait]
        impl $crate::store::sql::Backend for $backend {
        type Db = $db;
        $($body)*
        // The backend's own text (its module's `DELIVERIES_CLAIM`), the same binds.
        async fn deliveries_claim(
            c: &mut <$db as sqlx::Database>::Connection,
            now: i64,
            owner: &str,
            limit: i64,
        ) -> sqlx::Result<Vec<$crate::store::sql::rows::DeliveryRow>> {
            sqlx::query_as(DELIVERIES_CLAIM)
                .bind(now)
                .bind(owner)
                .bind(limit)
                .fetch_all(c)
                .await
        }

        async fn template(
            c: &mut <$db as sqlx::Database>::Connection,
            namespace: &str,
            name: &str,
            version: &str,
        ) -> sqlx::Result<Option<String>> {
            sqlx::query_scalar($crate::store::sql::shared::TEMPLATE)
                .bind(namespace)
                .bind(name)
                .bind(version)
                .fetch_optional(c)
                .await
        }

        async fn templates(c: &mut <$db as sqlx::Database>::Connection) -> sqlx::Result<Vec<String>> {
            sqlx::query_scalar($crate::store::sql::shared::TEMPLATES)
                .fetch_all(c)
                .await
        }

        async fn template_versions(
            c: &mut <$db as sqlx::Database>::Connection,
            namespace: &str,
            name: &str,
        ) -> sqlx::Result<Vec<String>> {
            sqlx::query_scalar($crate::store::sql::shared::TEMPLATE_VERSIONS)
                .bind(namespace)
                .bind(name)
                .fetch_all(c)
                .await
        }

        async fn execute(
            c: &mut <$db as sqlx::Database>::Connection,
            sql: &'static str,
        ) -> sqlx::Result<()> {
            sqlx::Executor::execute(c, sql).await?;
            Ok(())
        }

        async fn task_by_key(
            c: &mut <$db as sqlx::Database>::Connection,
            namespace: &str,
            name: &str,
            key: &str,
        ) -> sqlx::Result<Option<String>> {
            sqlx::query_scalar($crate::store::sql::shared::TASK_BY_KEY)
                .bind(namespace)
                .bind(name)
                .bind(key)
                .fetch_optional(c)
                .await
        }

        async fn due(
            c: &mut <$db as sqlx::Database>::Connection,
            now: i64,
        ) -> sqlx::Result<Vec<$crate::store::sql::rows::DueStep>> {
            sqlx::query_as($crate::store::sql::shared::DUE)
                .bind(now)
                .fetch_all(c)
                .await
        }

        async fn list_tasks(
            c: &mut <$db as sqlx::Database>::Connection,
            filter: &$crate::view::TaskFilter,
        ) -> sqlx::Result<Vec<String>> {
            sqlx::query_scalar($crate::store::sql::shared::LIST_TASKS)
                .bind(filter.status.map(|s| s.as_str()))
                .bind(filter.namespace.as_deref())
                .bind(filter.name.as_deref())
                .bind(filter.limit.min(i64::MAX as usize) as i64)
                .fetch_all(c)
                .await
        }

        async fn waiting_for_children(
            c: &mut <$db as sqlx::Database>::Connection,
            after: Option<(&str, i64)>,
            limit: i64,
        ) -> sqlx::Result<Vec<$crate::store::sql::rows::StepKey>> {
            sqlx::query_as($crate::store::sql::shared::WAITING_FOR_CHILDREN)
                .bind(after.map(|a| a.0))
                .bind(after.map(|a| a.1))
                .bind(limit)
                .fetch_all(c)
                .await
        }

        async fn open_children(
            c: &mut <$db as sqlx::Database>::Connection,
            after: Option<&str>,
            limit: i64,
        ) -> sqlx::Result<Vec<(String, String)>> {
            sqlx::query_as($crate::store::sql::shared::OPEN_CHILDREN)
                .bind(after)
                .bind(limit)
                .fetch_all(c)
                .await
        }

        async fn schedule_upsert(
            c: &mut <$db as sqlx::Database>::Connection,
            name: &str,
            spec: &str,
            next_at: Option<i64>,
            now: i64,
        ) -> sqlx::Result<()> {
            sqlx::query($crate::store::sql::shared::SCHEDULE_UPSERT)
                .bind(name)
                .bind(spec)
                .bind(next_at)
                .bind(now)
                .execute(c)
                .await?;
            Ok(())
        }

        async fn schedule_delete(
            c: &mut <$db as sqlx::Database>::Connection,
            name: &str,
        ) -> sqlx::Result<u64> {
            Ok(sqlx::query($crate::store::sql::shared::SCHEDULE_DELETE)
                .bind(name)
                .execute(c)
                .await?
                .rows_affected())
        }

        async fn schedules(
            c: &mut <$db as sqlx::Database>::Connection,
            due_by: Option<i64>,
        ) -> sqlx::Result<Vec<(String, Option<i64>, Option<String>, i64)>> {
            sqlx::query_as($crate::store::sql::shared::SCHEDULES)
                .bind(due_by)
                .fetch_all(c)
                .await
        }

        async fn schedule_advance(
            c: &mut <$db as sqlx::Database>::Connection,
            name: &str,
            from: i64,
            to: Option<i64>,
            last_task: Option<&str>,
            now: i64,
        ) -> sqlx::Result<u64> {
            Ok(sqlx::query($crate::store::sql::shared::SCHEDULE_ADVANCE)
                .bind(name)
                .bind(from)
                .bind(to)
                .bind(last_task)
                .bind(now)
                .execute(c)
                .await?
                .rows_affected())
        }

        async fn task_exists(
            c: &mut <$db as sqlx::Database>::Connection,
            id: &str,
        ) -> sqlx::Result<bool> {
            let found: Option<String> =
                sqlx::query_scalar($crate::store::sql::shared::TASK_EXISTS)
                    .bind(id)
                    .fetch_optional(c)
                    .await?;
            Ok(found.is_some())
        }

        async fn stats_counts(
            c: &mut <$db as sqlx::Database>::Connection,
        ) -> sqlx::Result<Vec<(String, String, i64)>> {
            sqlx::query_as($crate::store::sql::shared::STATS_COUNTS)
                .fetch_all(c)
                .await
        }

        async fn stats_durations(
            c: &mut <$db as sqlx::Database>::Connection,
        ) -> sqlx::Result<Vec<(String, i64, Option<f64>, Option<i64>)>> {
            sqlx::query_as($crate::store::sql::shared::STATS_DURATIONS)
                .fetch_all(c)
                .await
        }

        async fn ready_by_handler(
            c: &mut <$db as sqlx::Database>::Connection,
        ) -> sqlx::Result<Vec<(String, i64)>> {
            sqlx::query_as($crate::store::sql::shared::READY_BY_HANDLER)
                .fetch_all(c)
                .await
        }

        async fn transitions(
            c: &mut <$db as sqlx::Database>::Connection,
            id: &str,
        ) -> sqlx::Result<Vec<$crate::store::sql::rows::TransitionRow>> {
            sqlx::query_as($crate::store::sql::shared::TRANSITIONS)
                .bind(id)
                .fetch_all(c)
                .await
        }

        async fn delivery_settle(
            c: &mut <$db as sqlx::Database>::Connection,
            id: &str,
            attempt: i64,
            (status, next, error, delivered, uncount): $crate::store::sql::DeliverySettled<'_>,
        ) -> sqlx::Result<u64> {
            Ok(sqlx::query($crate::store::sql::shared::DELIVERY_SETTLE)
                .bind(id)
                .bind(attempt)
                .bind(status)
                .bind(next)
                .bind(error)
                .bind(delivered)
                .bind(uncount)
                .execute(c)
                .await?
                .rows_affected())
        }

        async fn deliveries_due(
            c: &mut <$db as sqlx::Database>::Connection,
            now: i64,
        ) -> sqlx::Result<bool> {
            sqlx::query_scalar($crate::store::sql::shared::DELIVERIES_DUE)
                .bind(now)
                .fetch_one(c)
                .await
        }

        async fn deliveries(
            c: &mut <$db as sqlx::Database>::Connection,
            id: &str,
        ) -> sqlx::Result<Vec<$crate::store::sql::rows::DeliveryViewRow>> {
            sqlx::query_as($crate::store::sql::shared::DELIVERIES)
                .bind(id)
                .fetch_all(c)
                .await
        }

        async fn logs(
            c: &mut <$db as sqlx::Database>::Connection,
            id: &str,
            step: Option<i64>,
        ) -> sqlx::Result<Vec<$crate::store::sql::rows::LogRow>> {
            sqlx::query_as($crate::store::sql::shared::LOGS)
                .bind(id)
                .bind(step)
                .fetch_all(c)
                .await
        }

        async fn mark_unreadable(
            c: &mut <$db as sqlx::Database>::Connection,
            id: &str,
            why: &str,
            now: i64,
        ) -> sqlx::Result<()> {
            let marked = sqlx::query($crate::store::sql::shared::MARK_UNREADABLE)
                .bind(id)
                .bind(now)
                .execute(&mut *c)
                .await?;
            if marked.rows_affected() > 0 {
                sqlx::query($crate::store::sql::shared::UNREADABLE_TRANSITION)
                    .bind(id)
                    .bind(why)
                    .bind(now)
                    .execute(&mut *c)
                    .await?;
            }
            Ok(())
        }

        async fn insert_template(
            c: &mut <$db as sqlx::Database>::Connection,
            graph: &$crate::template::TaskGraph,
            text: &str,
            now: i64,
        ) -> sqlx::Result<()> {
            let version = graph.version().to_string();
            sqlx::query($crate::store::sql::shared::INSERT_TEMPLATE)
                .bind(graph.namespace())
                .bind(graph.name())
                .bind(version.as_str())
                .bind(text)
                .bind(now)
                .execute(&mut *c)
                .await?;
            sqlx::query($crate::store::sql::shared::INSERT_NAMESPACE)
                .bind(graph.namespace())
                .bind(now)
                .execute(&mut *c)
                .await?;
            Self::named_steps(c, graph, &version).await
        }
        }
    };
}
use impl_backend;

/// A store failure from sqlx, with its kind kept.
fn db(e: sqlx::Error) -> Error {
    let kind = match &e {
        sqlx::Error::Database(d) => {
            let code = d.code().unwrap_or_default();
            match d.kind() {
                sqlx::error::ErrorKind::UniqueViolation => StoreErrorKind::Conflict,
                _ => match &*code {
                    // PostgreSQL: serialization failure, deadlock.
                    "40001" | "40P01" => StoreErrorKind::Conflict,
                    // PostgreSQL: lock_timeout, statement_timeout, idle in transaction.
                    // SQLite: SQLITE_BUSY, SQLITE_LOCKED (and their extended codes).
                    "55P03" | "57014" | "25P03" => StoreErrorKind::Timeout,
                    c if c.starts_with("08") || c.starts_with("57P") => StoreErrorKind::Unavailable,
                    c if sqlite_busy(c) => StoreErrorKind::Timeout,
                    // SQLite: SQLITE_CANTOPEN (a file or directory that is not there).
                    c if sqlite_primary(c) == Some(14) => StoreErrorKind::Unavailable,
                    _ => StoreErrorKind::Other,
                },
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => StoreErrorKind::Unavailable,
        sqlx::Error::PoolTimedOut => StoreErrorKind::Timeout,
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::RowNotFound
        | sqlx::Error::TypeNotFound { .. } => StoreErrorKind::Corrupt,
        _ => StoreErrorKind::Other,
    };
    Error::store(kind, e.to_string())
}

/// Whether SQLite's result `code` (primary or extended) is SQLITE_BUSY (5) or SQLITE_LOCKED
/// (6).
fn sqlite_busy(code: &str) -> bool {
    matches!(sqlite_primary(code), Some(5 | 6))
}

/// SQLite's primary result code of `code` (primary or extended).
fn sqlite_primary(code: &str) -> Option<i64> {
    code.parse::<i64>().ok().map(|c| c & 0xff)
}

/// Rows that cannot be read, naming why.
fn corrupt(why: impl std::fmt::Display) -> Error {
    Error::store(StoreErrorKind::Corrupt, why.to_string())
}

fn time(ms: Option<i64>) -> Option<Timestamp> {
    ms.and_then(DateTime::from_timestamp_millis)
}

fn parse_state<S: FromStr>(text: &str) -> Result<S>
where
    S::Err: std::fmt::Display,
{
    text.parse().map_err(corrupt)
}

fn count(n: i64, what: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| corrupt(format!("{what} {n} is out of range")))
}

fn step_key(k: &StepKey) -> Result<(TaskId, u32, u32)> {
    Ok((
        k.task_id.parse()?,
        count(k.step_index, "step_index")?,
        count(k.attempts, "attempts")?,
    ))
}

/// Why a step is looked at for a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Its lease ran out.
    Lease,
    /// Its retry, or its task's start, is due.
    Retry,
    /// Its task is past its deadline (the step is 0).
    Deadline,
    /// It is claimable.
    Ready,
}

/// What a claim's look for ready steps takes: the handlers (any when `None`), at most `limit`
/// steps, and the tasks reported on in the same transaction (their steps' hold on a key does
/// not keep others' steps out of the look: the reports may let go of it first).
pub(super) struct Look<'a> {
    pub handlers: Option<&'a [Arc<str>]>,
    pub limit: i64,
    pub reported: &'a [String],
}

/// The room of the keys the steps of `rows` name and of every key of `also`, as the store
/// holds them at `now` (under their locks, where writers run side by side); nothing is read
/// when there is no key.
async fn room_of<'a, B: Backend>(
    conn: &mut Conn<B>,
    rows: &[&'a rows::DueStep],
    also: impl Iterator<Item = &'a crate::gate::Gates>,
    now: i64,
) -> Result<Room> {
    let mut room = Room::new(now);
    let (mut steps, mut tasks, mut rates): (Vec<&str>, Vec<&str>, Vec<&str>) = Default::default();
    for r in rows {
        steps.extend(r.ckey.as_deref());
        tasks.extend(r.tkey.as_deref());
        rates.extend(r.rkey.as_deref());
    }
    for gates in also {
        for (kind, key) in gates.keys() {
            match kind {
                crate::gate::Kind::Step => steps.push(key),
                crate::gate::Kind::Task => tasks.push(key),
                crate::gate::Kind::Rate => rates.push(key),
            }
        }
    }
    for keys in [&mut steps, &mut tasks, &mut rates] {
        keys.sort_unstable();
        keys.dedup();
    }
    if steps.is_empty() && tasks.is_empty() && rates.is_empty() {
        return Ok(room);
    }
    let found = B::gate_room(conn, &steps, &tasks, &rates)
        .await
        .map_err(db)?;
    // A key without a row (another claim is taking it) has no room.
    for row in found {
        let key: Arc<str> = row.key.as_str().into();
        let n = u32::try_from(row.n).unwrap_or(u32::MAX);
        match row.kind.as_str() {
            "step" => room.count(Slot::Step(key), n),
            "task" => room.count(Slot::Task(key), n),
            _ => room.bucket(
                key,
                row.tokens
                    .zip(row.at_ms)
                    .map(|(tokens, at_ms)| Bucket { tokens, at_ms }),
            ),
        }
    }
    Ok(room)
}

/// The steps of a claim query: task, index, attempts and why.
fn due_keys(rows: &[rows::DueStep]) -> Result<Vec<(TaskId, u32, u32, Due)>> {
    rows.iter()
        .map(|d| {
            let (task, index, attempts) = step_key(&d.key)?;
            let due = match d.due.as_str() {
                "lease" => Due::Lease,
                "retry" => Due::Retry,
                "deadline" => Due::Deadline,
                "ready" => Due::Ready,
                other => return Err(corrupt(format!("a claim query said {other:?}"))),
            };
            Ok((task, index, attempts, due))
        })
        .collect()
}

fn step_record(r: &StepRow) -> Result<StepRecord> {
    Ok(StepRecord {
        attempts: count(r.attempts, "attempts")?,
        max_attempts: count(r.max_attempts, "max_attempts")?,
        next_attempt_at: time(r.next_attempt_at),
        lease: r
            .lease_owner
            .as_deref()
            .zip(time(r.lease_expires_at))
            .map(|(o, e)| (Arc::from(o), e)),
        result: r
            .result
            .as_deref()
            .map(|t| serde_json::from_str(t).map(Arc::new).map_err(corrupt))
            .transpose()?,
        error: r.error.clone(),
        started_at: time(r.started_at),
        completed_at: time(r.completed_at),
        ready_at: time(r.ready_at),
        children: r
            .children
            .as_deref()
            .map(|t| {
                serde_json::from_str::<Vec<TaskId>>(t)
                    .map(Into::into)
                    .map_err(corrupt)
            })
            .transpose()?,
    })
}

/// `op`, or the store error a panic in it is: a bug in an operation fails that operation (its
/// transaction is rolled back, nothing is written) and leaves the store, and every other
/// caller's work, running.
pub(super) fn guarded<T>(op: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(op)).unwrap_or_else(|panic| {
        let why = crate::worker::panic_message(&*panic);
        tracing::error!(panic = %why, "a store operation panicked; it is rolled back");
        Err(Error::store(
            StoreErrorKind::Other,
            format!("internal error (the operation was rolled back): {why}"),
        ))
    })
}

/// The instance of a batch worker step a step row beyond the template's steps holds.
fn instance_row(
    graph: &TaskGraph,
    r: &StepRow,
) -> std::result::Result<super::record::Instance, String> {
    let of = r
        .of_step
        .and_then(|o| u32::try_from(o).ok())
        .filter(|&o| (o as usize) < graph.len())
        .filter(|&o| graph.step(o).kind == crate::template::StepKind::BatchWorker)
        .ok_or("no batch worker step")?;
    let batch = r.batch.as_deref().ok_or("no slice")?;
    let batch: Value = serde_json::from_str(batch).map_err(|e| e.to_string())?;
    Ok(super::record::Instance {
        of,
        name: r.name.as_str().into(),
        batch: Arc::new(batch),
    })
}

/// Gives back step `index`'s lease when it ran out (`lease`), or makes its retry pending
/// when due; a lease that ran out may leave a retry due at once (no backoff).
fn due_step(
    t: &mut TaskRecord,
    (index, attempt, due): (u32, u32, Due),
    now: Timestamp,
    s: &mut ReadySet,
    c: &mut Changes,
) {
    match due {
        Due::Deadline => return t.expire_deadline(now, s, c),
        Due::Lease => t.expire_lease(index, attempt, now, s, c),
        Due::Retry | Due::Ready => {}
    }
    let attempts = t.steps[index as usize].attempts;
    t.retry_due(index, attempts, now, s, c);
}

/// The claim of `request` on task `t`: its steps among `keys` whose lease ran out or whose
/// retry is due are given back or made pending, then its steps among `keys` that are claimable
/// (checked again: another worker may have claimed one) are claimed while `left` lasts.
fn claim_task(
    t: &mut TaskRecord,
    keys: &[(TaskId, u32, u32, Due)],
    request: &ClaimRequest,
    now: Timestamp,
    (left, room): (&mut usize, &mut Room),
    s: &mut ReadySet,
    c: &mut Changes,
) -> Result<Vec<ClaimedStep>> {
    let id = t.id;
    let mine = || keys.iter().filter(move |k| k.0 == id);
    let (mark, gone) = (c.transitions.len(), c.let_go.len());
    for &(_, index, attempt, kind) in mine().filter(|k| k.3 != Due::Ready) {
        due_step(t, (index, attempt, kind), now, s, c);
    }
    // What the expired leases and deadlines let go of is free for the claims.
    for slot in c.transitions[mark..].iter().filter_map(|tr| t.lets_go(tr)) {
        room.release(&slot);
    }
    for slot in &c.let_go[gone..] {
        room.release(slot);
    }
    let mut out = Vec::new();
    for &(_, index, _, _) in mine() {
        if *left > 0
            && t.is_claimable(index)
            && request.wants(&t.spec(index).handler)
            && super::admitted(t, index, room, c)
        {
            out.push(t.claim(index, &request.worker_id, now, s, c)?);
            *left -= 1;
        }
    }
    Ok(out)
}

/// The steps each task's claim took, in the order of `keys` (claim order, not lock order).
fn in_claim_order(
    claimed: Vec<(TaskId, Vec<ClaimedStep>)>,
    keys: &[(TaskId, u32, u32, Due)],
) -> Vec<ClaimedStep> {
    let mut claimed: Vec<ClaimedStep> = claimed.into_iter().flat_map(|(_, s)| s).collect();
    claimed.sort_by_key(|c| {
        keys.iter()
            .position(|k| (k.0, k.1) == (c.step_id.task, c.step_id.index))
    });
    claimed
}

/// Steps that became ready during an operation (their claim-order column is set).
#[derive(Default)]
struct ReadySet(BTreeSet<u32>);

impl Schedule for ReadySet {
    fn ready(&mut self, _task: &TaskRecord, index: u32) {
        self.0.insert(index);
    }
}

/// The connection this process writes through when the database takes one writer at a time
/// (SQLite): kept between operations, so that its page cache stays warm and no two of this
/// process's writers wait on each other in the database's busy handler.
#[derive(Debug)]
struct Writer<B: Backend> {
    conn: Option<WriterConn<B>>,
    /// A transaction was begun and not yet ended (an operation was dropped half way): the next
    /// one rolls it back first.
    open: bool,
    /// The database's data version (see [`Backend::begin_group`]) as the last group on this
    /// connection read it and committed: while it holds, no other connection has written
    /// since, and the tasks this writer cached are as the database holds them.
    data_version: Option<i64>,
}

/// The writer's connection: taken out of the pool for good (a file), or borrowed from it for
/// one operation (an in-memory database, whose one connection also serves the views).
enum WriterConn<B: Backend> {
    Kept(Conn<B>),
    Borrowed(sqlx::pool::PoolConnection<B::Db>),
}

impl<B: Backend> std::fmt::Debug for WriterConn<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WriterConn::Kept(_) => "Kept",
            WriterConn::Borrowed(_) => "Borrowed",
        })
    }
}

impl<B: Backend> WriterConn<B> {
    fn get(&mut self) -> &mut Conn<B> {
        match self {
            WriterConn::Kept(conn) => conn,
            WriterConn::Borrowed(conn) => conn,
        }
    }
}

/// A write transaction: a pooled one (PostgreSQL), or this process's writer with a
/// transaction begun by hand (SQLite), whose writes and `COMMIT` go in one call.
enum Tx<'a, B: Backend> {
    Pooled(sqlx::Transaction<'static, B::Db>),
    /// `begun` once `BEGIN` was sent: it goes with the transaction's first statement.
    Writer {
        w: tokio::sync::MutexGuard<'a, Writer<B>>,
        begun: bool,
    },
}

fn writer_gone() -> Error {
    Error::store(
        StoreErrorKind::Unavailable,
        "the writer's connection is gone",
    )
}

impl<B: Backend> Tx<'_, B> {
    /// The transaction's connection, the transaction begun.
    async fn conn(&mut self) -> Result<&mut Conn<B>> {
        match self {
            Tx::Pooled(tx) => Ok(&mut **tx),
            Tx::Writer { w, begun } => {
                let conn = w.conn.as_mut().ok_or_else(writer_gone)?.get();
                if !*begun {
                    B::execute(conn, B::BEGIN).await.map_err(db)?;
                    *begun = true;
                }
                Ok(conn)
            }
        }
    }

    /// The transaction's connection, and whether the next statement must begin it (it is
    /// then taken as begun).
    fn conn_to_begin(&mut self) -> Result<(&mut Conn<B>, bool)> {
        match self {
            Tx::Pooled(tx) => Ok((&mut **tx, false)),
            Tx::Writer { w, begun } => {
                let begin = !*begun;
                *begun = true;
                Ok((w.conn.as_mut().ok_or_else(writer_gone)?.get(), begin))
            }
        }
    }

    /// Not begun after all: the statement meant to begin it was not sent.
    fn not_begun(&mut self) {
        if let Tx::Writer { begun, .. } = self {
            *begun = false;
        }
    }
}

/// How long the newest version of a template, once read, is taken as the newest: a version
/// registered through this store is seen at once, one registered by another process within
/// this time.
pub const NEWEST_FOR: Duration = Duration::from_secs(1);

/// The most tasks one statement loads or one create batch writes.
const MAX_ROWS: usize = 500;

/// How many tasks [`Store::purge`] deletes in one transaction.
const PURGE_BATCH: i64 = 500;

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

/// The pool settings both backends share: at most `max` connections, kept `idle_timeout` /
/// `max_lifetime` unless `keep` (an in-memory SQLite database lives as long as its one
/// connection), each new connection set up with the statements `session`.
fn pool_options<DB: Database>(max: u32, keep: bool, session: String) -> sqlx::pool::PoolOptions<DB>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(max)
        .min_connections(u32::from(keep))
        .idle_timeout((!keep).then_some(Duration::from_secs(600)))
        .max_lifetime((!keep).then_some(Duration::from_secs(1800)))
        .acquire_timeout(Duration::from_secs(30))
        // A connection still in a transaction is rolled back before it is handed out: a read
        // cut short (its future dropped between the driver's BEGIN and the transaction's own
        // bookkeeping) leaves one behind, and every BEGIN on it would fail. (Rolled back, not
        // closed: an in-memory database lives in its one connection.) A rollback that fails
        // closes it.
        .before_acquire(|conn, _| {
            Box::pin(async move {
                while sqlx::Connection::is_in_transaction(conn) {
                    <DB::TransactionManager as sqlx::TransactionManager>::rollback(conn).await?;
                }
                Ok(true)
            })
        })
        .after_connect(move |conn, _| {
            let session = session.clone();
            Box::pin(async move {
                sqlx::Executor::execute(&mut *conn, session.as_str()).await?;
                Ok(())
            })
        })
}

/// The SQLite or PostgreSQL [`Store`], on backend `B`.
#[derive(Debug)]
struct SqlStore<B: Backend> {
    pool: Pool<B::Db>,
    /// SQLite writers of this process queue here instead of sleeping in the busy handler.
    writer: tokio::sync::Mutex<Writer<B>>,
    /// Whether the writer's connection is kept between operations (not for an in-memory
    /// SQLite database: its one connection also serves the views).
    keep_writer: bool,
    graphs: RwLock<HashMap<(String, String, String), Arc<TaskGraph>>>,
    /// The newest version of each template as last read, and when: reused for
    /// [`NEWEST_FOR`], so that a `create_task` naming no version costs no extra round trip.
    newest: RwLock<HashMap<(String, String), (Version, std::time::Instant)>>,
    listener: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Wakes the task that sends [`Backend::ANNOUNCE`] (one statement for the commits that
    /// asked while the one before was sent), and that task.
    announcer: Option<(Arc<Notify>, tokio::task::JoinHandle<()>)>,
    /// Task aggregates as last read or written, reused while their revision holds.
    cache: RecordCache,
    /// Whether the last claim found steps (the next one then skips its first look).
    claims_found: std::sync::atomic::AtomicBool,
    /// Where the hot operations wait for their group, on a database with one writer.
    committer: group::Committer,
}

impl<B: Backend> Drop for SqlStore<B> {
    fn drop(&mut self) {
        // A borrowed pooled connection goes back to its pool on a runtime; out of one it is
        // closed instead.
        if let Some(WriterConn::Borrowed(conn)) = self.writer.get_mut().conn.take() {
            if tokio::runtime::Handle::try_current().is_err() {
                drop(conn.leak());
            }
        }
        if let Some(listener) = self.listener.lock().take() {
            listener.abort();
        }
        if let Some((_, announcer)) = &self.announcer {
            announcer.abort();
        }
        self.committer.stop();
    }
}

/// Opens the SQL store at `url` (`sqlite://path`, `sqlite::memory:`, `postgres://…`),
/// creating a SQLite file if missing, and applies the migrations; PostgreSQL engines also
/// listen for wake-ups on `waker`.
pub(crate) async fn open(url: &str, waker: Arc<Notify>) -> Result<Arc<dyn Store>> {
    match Dialect::of(url) {
        Some(Dialect::Sqlite) => {
            let store = Arc::new(SqlStore::<sqlite::Sqlite>::open(url, waker).await?);
            group::Committer::start(&store);
            Ok(store)
        }
        Some(Dialect::Postgres) => Ok(Arc::new(
            SqlStore::<postgres::Postgres>::open(url, waker).await?,
        )),
        None => Err(Error::InvalidArgument(format!(
            "not an SQL store URL: {url:?}"
        ))),
    }
}

impl<B: Backend> SqlStore<B> {
    async fn open(url: &str, waker: Arc<Notify>) -> Result<Self> {
        let pool = B::connect(url).await?;
        let store = SqlStore {
            announcer: B::ANNOUNCE.map(|sql| announcer::<B>(pool.clone(), sql)),
            pool,
            writer: tokio::sync::Mutex::new(Writer {
                conn: None,
                open: false,
                data_version: None,
            }),
            keep_writer: !url.contains(":memory:"),
            graphs: RwLock::new(HashMap::new()),
            newest: RwLock::new(HashMap::new()),
            listener: parking_lot::Mutex::new(None),
            cache: RecordCache::default(),
            claims_found: std::sync::atomic::AtomicBool::new(false),
            committer: group::Committer::default(),
        };
        store.migrate().await?;
        *store.listener.lock() = B::listen(url, waker).await?;
        Ok(store)
    }

    /// Asks for the other engines to be woken: steps became claimable in a commit.
    fn announce(&self) {
        if let Some((wake, _)) = &self.announcer {
            wake.notify_one();
        }
    }

    /// Applies any migration not yet applied. A few tries: two processes opening a new SQLite
    /// file at once race to migrate it (PostgreSQL's migrator takes an advisory lock).
    async fn migrate(&self) -> Result<()> {
        let mut tries = 0;
        loop {
            match B::migrate(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(e) if tries < 5 && B::DIALECT == Dialect::Sqlite => {
                    tries += 1;
                    tracing::debug!(error = %e, "migration raced another process; trying again");
                    tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                }
                Err(sqlx::migrate::MigrateError::Execute(e)) => return Err(db(e)),
                Err(e) => return Err(Error::store(StoreErrorKind::Other, e.to_string())),
            }
        }
    }

    async fn begin(&self) -> Result<Tx<'_, B>> {
        if !B::ONE_WRITER {
            return Ok(Tx::Pooled(
                self.pool.begin_with(B::BEGIN).await.map_err(db)?,
            ));
        }
        let mut w = self.writer().await?;
        w.open = true;
        Ok(Tx::Writer { w, begun: false })
    }

    /// This process's writer, its connection taken from the pool when it has none, out of any
    /// transaction (one left open by an operation dropped half way is rolled back).
    async fn writer(&self) -> Result<tokio::sync::MutexGuard<'_, Writer<B>>> {
        let mut writer = self.writer.lock().await;
        if writer.conn.is_none() {
            let conn = self.pool.acquire().await.map_err(db)?;
            // A kept connection is the store's own: dropped with it, in or out of a runtime.
            writer.conn = Some(if self.keep_writer {
                WriterConn::Kept(conn.detach())
            } else {
                WriterConn::Borrowed(conn)
            });
            writer.open = false;
            writer.data_version = None;
        }
        let Writer {
            conn,
            open,
            data_version,
        } = &mut *writer;
        if let (Some(conn), true) = (conn.as_mut(), *open) {
            // Its commit may have gone through without the cache hearing of it.
            *data_version = None;
            let _ = B::execute(conn.get(), "ROLLBACK").await;
            *open = false;
        }
        Ok(writer)
    }

    /// Writes `rows` (when given) and commits: one call on SQLite. On an error the
    /// transaction is rolled back. The ids of the new tasks among `rows` that were written
    /// (new tasks are written so only through this process's writer).
    async fn commit(&self, tx: Tx<'_, B>, rows: Option<(&Rows<'_>, bool)>) -> Result<Vec<String>> {
        match tx {
            Tx::Pooled(mut tx) => {
                if let Some((rows, _)) = rows.filter(|(r, _)| !r.is_empty()) {
                    if let Err(e) = B::write(&mut tx, rows).await {
                        let _ = tx.rollback().await;
                        return Err(db(e));
                    }
                }
                tx.commit().await.map_err(db)?;
                if rows.is_some_and(|(_, notify)| notify) {
                    self.announce();
                }
                Ok(Vec::new())
            }
            Tx::Writer { mut w, begun } => {
                let empty = Rows::default();
                let (rows, notify) = rows.unwrap_or((&empty, false));
                let notify = notify && !rows.is_empty();
                if !begun && rows.is_empty() {
                    self.done_writing(&mut w, true);
                    return Ok(Vec::new());
                }
                let Some(conn) = w.conn.as_mut().map(WriterConn::get) else {
                    return Err(writer_gone());
                };
                let written = B::write_commit(conn, rows, !begun).await;
                // A failure half way leaves the transaction open.
                let clean = written.is_ok() || B::execute(conn, "ROLLBACK").await.is_ok();
                self.done_writing(&mut w, clean);
                if notify && written.is_ok() {
                    self.announce();
                }
                written.map_err(db)
            }
        }
    }

    /// Rolls back at once — so that no lock outlives a refused operation (a dropped
    /// transaction would roll back only when its connection is next used).
    async fn rollback(&self, tx: Tx<'_, B>) {
        match tx {
            Tx::Pooled(tx) => {
                let _ = tx.rollback().await;
            }
            Tx::Writer { mut w, begun } => {
                let rolled = match w.conn.as_mut().map(WriterConn::get) {
                    Some(_) if !begun => true,
                    Some(conn) => B::execute(conn, "ROLLBACK").await.is_ok(),
                    None => false,
                };
                self.done_writing(&mut w, rolled);
            }
        }
    }

    /// The writer's transaction is over: `clean` when it was committed or rolled back. A
    /// connection whose transaction may still be open is closed, never handed to the pool
    /// (an in-memory database keeps it: the next operation rolls back first).
    fn done_writing(&self, w: &mut Writer<B>, clean: bool) {
        if clean {
            w.open = false;
            if !self.keep_writer {
                w.conn = None;
            }
        } else if self.keep_writer {
            // Closed: never back to the pool with a transaction that may be open.
            w.conn = None;
            w.open = false;
        } else {
            w.open = true;
        }
        if !clean {
            w.data_version = None;
        }
    }

    /// Commits when `result` is `Ok` (with no rows to write), else rolls back.
    async fn finish<T>(&self, tx: Tx<'_, B>, result: Result<T>) -> Result<T> {
        match result {
            Ok(value) => {
                self.commit(tx, None).await?;
                Ok(value)
            }
            Err(e) => {
                self.rollback(tx).await;
                Err(e)
            }
        }
    }

    async fn graph(
        &self,
        conn: &mut Conn<B>,
        namespace: &str,
        name: &str,
        version: &str,
    ) -> Result<Arc<TaskGraph>> {
        let key = (namespace.to_owned(), name.to_owned(), version.to_owned());
        if let Some(g) = self.graphs.read().get(&key) {
            return Ok(g.clone());
        }
        let text = B::template(conn, namespace, name, version)
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
    ///
    /// With `begin` set, the first statement begins the write transaction (and `begin` is
    /// cleared).
    async fn load_many(
        &self,
        conn: &mut Conn<B>,
        ids: &[TaskId],
        lock: Lock,
        begin: &mut bool,
    ) -> Result<(Vec<TaskRecord>, Vec<(TaskId, String)>)> {
        let mut unreadable = Vec::new();
        let mut ids: Vec<TaskId> = ids.to_vec();
        ids.sort();
        ids.dedup();
        let mut records = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_ROWS) {
            let chunk: Vec<String> = chunk.iter().map(TaskId::to_string).collect();
            let tasks = B::tasks(conn, &chunk, lock, std::mem::take(begin))
                .await
                .map_err(db)?;
            if tasks.is_empty() {
                continue;
            }
            // A task whose rows are at the revision cached is not read again.
            let mut cached: Vec<Option<TaskRecord>> = Vec::with_capacity(tasks.len());
            let mut missing: Vec<String> = Vec::new();
            for row in &tasks {
                let hit = self.cache.get(row.task_id.parse()?, row.revision);
                if hit.is_none() {
                    missing.push(row.task_id.clone());
                }
                cached.push(hit);
            }
            let steps = if missing.is_empty() {
                Vec::new()
            } else {
                B::steps(conn, &missing).await.map_err(db)?
            };
            // The step rows come by task, in the tasks' order: each task's are the next run.
            let mut at = 0;
            for (row, hit) in tasks.iter().zip(cached) {
                if let Some(task) = hit {
                    records.push(task);
                    continue;
                }
                let start = at;
                while steps.get(at).is_some_and(|r| r.task_id == row.task_id) {
                    at += 1;
                }
                match self.decode(conn, row, &steps[start..at]).await {
                    Ok(task) => {
                        self.cache
                            .put(row.revision, task.clone(), lock != Lock::None);
                        records.push(task);
                    }
                    Err(Error::Closed) => return Err(Error::Closed),
                    Err(Error::Store(e)) if e.kind != StoreErrorKind::Corrupt => {
                        return Err(Error::Store(e))
                    }
                    Err(e) => {
                        let why = match e {
                            Error::Store(e) => e.message,
                            other => other.to_string(),
                        };
                        tracing::error!(task = %row.task_id, error = %why, "a task's rows cannot be read; it is set to error");
                        unreadable.push((row.task_id.parse()?, format!("unreadable: {why}")));
                    }
                }
            }
        }
        Ok((records, unreadable))
    }

    /// A task from its row and its step rows.
    async fn decode(
        &self,
        conn: &mut Conn<B>,
        row: &TaskRow,
        steps: &[StepRow],
    ) -> Result<TaskRecord> {
        let graph = self
            .graph(conn, &row.namespace, &row.name, &row.version)
            .await
            .map_err(|e| match e {
                Error::Store(e) => Error::Store(e),
                other => corrupt(other),
            })?;
        let n = graph.len();
        if steps.len() < n {
            return Err(corrupt(format!(
                "{} step rows, its template {n} steps",
                steps.len()
            )));
        }
        let mut task = TaskRecord {
            id: row.task_id.parse()?,
            of: Arc::new(crate::state::TaskOf {
                namespace: row.namespace.as_str().into(),
                name: row.name.as_str().into(),
                created_at: time(Some(row.created_at)).unwrap_or_default(),
                // One that cannot be read leaves the task without a trace (nothing else
                // depends on it).
                trace: row
                    .traceparent
                    .as_deref()
                    .and_then(|t| crate::trace::TaskTrace::stored(t, row.trace_parent.as_deref())),
                webhooks: graph.webhooks().clone(),
            }),
            context: Arc::new(serde_json::from_str(&row.context).map_err(corrupt)?),
            status: parse_state(&row.status)?,
            priority: i32::try_from(row.priority)
                .map_err(|_| corrupt(format!("priority {} is out of range", row.priority)))?,
            idempotency_key: row.idempotency_key.clone(),
            parent: row
                .parent
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(corrupt)?,
            states: Vec::with_capacity(n),
            counters: Vec::with_capacity(n),
            choices: Choices::default(),
            instances: Vec::new(),
            batches: Vec::new(),
            steps: Vec::with_capacity(n),
            unfinished: count(row.unfinished_steps, "unfinished_steps")?,
            deadline_at: time(row.deadline_at),
            gates: None,
            key_hold: super::record::KeyHold::of_code(row.key_hold)
                .ok_or_else(|| corrupt(format!("key_hold {} is not a hold", row.key_hold)))?,
            updated_at: time(Some(row.updated_at)).unwrap_or_default(),
            completed_at: time(row.completed_at),
            graph,
        };
        task.gates = super::record::gates_of(&task.graph, &task.context);
        for (i, r) in steps.iter().enumerate() {
            task.states.push(parse_state::<StepState>(&r.status)?);
            task.counters.push(Counters {
                unfinished_parents: count(r.unfinished_parents, "unfinished_parents")?,
                failed_required_parents: count(
                    r.failed_required_parents,
                    "failed_required_parents",
                )?,
                not_chosen_parents: count(r.not_chosen_parents, "not_chosen_parents")?,
            });
            if let Some(chosen) = &r.chosen {
                let chosen: Vec<u32> = serde_json::from_str(chosen).map_err(corrupt)?;
                if chosen.iter().any(|&c| c as usize >= n) {
                    return Err(corrupt(format!(
                        "step {i} chose a step beyond the template's"
                    )));
                }
                task.choices.record(i as u32, chosen);
            }
            if i >= n {
                let instance = instance_row(&task.graph, r).map_err(|why| {
                    corrupt(format!("step row {i} is no instance of a batch: {why}"))
                })?;
                task.instances.push(instance);
            }
            task.steps.push(step_record(r)?);
        }
        task.index_batches();
        Ok(task)
    }

    /// Sets each unreadable task to `error` with its reason (on `conn`: the open transaction
    /// when there is one); the caller's work goes on without them.
    async fn mark_unreadable(
        conn: &mut Conn<B>,
        unreadable: &[(TaskId, String)],
        now: Timestamp,
    ) -> Result<()> {
        for (id, why) in unreadable {
            let why = crate::limits::message(why.clone());
            B::mark_unreadable(conn, &id.to_string(), &why, ms(now))
                .await
                .map_err(db)?;
        }
        Ok(())
    }

    /// The operation of a write transaction: loads the tasks `ids` (see
    /// [`SqlStore::load_many`]) on `tx`, runs `op` on each, writes back what changed (one
    /// batch for them all) and commits — on SQLite the writes and the commit in one call.
    /// Returns each loaded task's id with what `op` returned; when `op` fails nothing is
    /// written.
    async fn apply<T>(
        &self,
        mut tx: Tx<'_, B>,
        ids: &[TaskId],
        lock: Lock,
        now: Timestamp,
        changes: &mut Changes,
        op: impl FnMut(&mut TaskRecord, &mut ReadySet, &mut Changes) -> Result<T>,
    ) -> Result<Vec<(TaskId, T)>> {
        match self.apply_in(&mut tx, ids, lock, now, changes, op).await {
            Ok((out, tasks, edits)) => {
                let edits: Vec<Edit<'_>> = edits
                    .iter()
                    .zip(&tasks)
                    .map(|((before, ready), after)| Edit {
                        before: Some(before),
                        after,
                        ready,
                    })
                    .collect();
                let (rows, written) = rows_of(
                    &edits,
                    now,
                    &changes.transitions,
                    &changes.buckets,
                    &changes.logs,
                );
                let notify = wakes_workers(
                    !changes.ready.is_empty() || changes.freed,
                    &changes.transitions,
                );
                if B::ONE_WRITER {
                    // Cached as they were, these tasks must not be taken as written by a group
                    // that runs between this commit and the cache's update below.
                    self.cache.distrust(tasks.iter().map(|t| t.id));
                }
                self.commit(tx, Some((&rows, notify))).await?;
                drop(rows);
                drop(edits);
                for (task, revision) in tasks.into_iter().zip(written) {
                    if let Some(revision) = revision {
                        // Put after the writer's lock is let go: not taken as written.
                        self.cache.put(revision, task, !B::ONE_WRITER);
                    }
                }
                Ok(out)
            }
            Err(e) => {
                self.rollback(tx).await;
                Err(e)
            }
        }
    }

    /// The part of [`SqlStore::apply`] before the write: what `op` returned, the tasks after
    /// it, and each as it was with the steps that became ready.
    #[allow(clippy::type_complexity)]
    async fn apply_in<T>(
        &self,
        tx: &mut Tx<'_, B>,
        ids: &[TaskId],
        lock: Lock,
        now: Timestamp,
        changes: &mut Changes,
        mut op: impl FnMut(&mut TaskRecord, &mut ReadySet, &mut Changes) -> Result<T>,
    ) -> Result<(
        Vec<(TaskId, T)>,
        Vec<TaskRecord>,
        Vec<(TaskRecord, ReadySet)>,
    )> {
        let (conn, mut begin) = tx.conn_to_begin()?;
        let loaded = self.load_many(conn, ids, lock, &mut begin).await;
        if begin {
            tx.not_begun();
        }
        let (mut tasks, unreadable) = loaded?;
        if !unreadable.is_empty() {
            Self::mark_unreadable(tx.conn().await?, &unreadable, now).await?;
        }
        let mut edits = Vec::with_capacity(tasks.len());
        let mut out = Vec::with_capacity(tasks.len());
        for task in tasks.iter_mut() {
            let before = task.clone();
            let mut ready = ReadySet::default();
            out.push((task.id, guarded(|| op(task, &mut ready, changes))?));
            edits.push((before, ready));
        }
        Ok((out, tasks, edits))
    }

    /// One operation on one named task, in its own transaction.
    async fn run<T>(
        &self,
        id: TaskId,
        now: Timestamp,
        op: impl FnOnce(&mut TaskRecord, &mut ReadySet, &mut Changes) -> Result<T>,
    ) -> Result<(T, Changes)> {
        let tx = self.begin().await?;
        let mut changes = Changes::default();
        let mut op = Some(op);
        let out = self
            .apply(
                tx,
                &[id],
                Lock::Wait,
                now,
                &mut changes,
                |t, s, c| match op.take() {
                    Some(op) => op(t, s, c).map(Some),
                    None => Ok(None),
                },
            )
            .await?
            .into_iter()
            .next()
            .and_then(|(_, out)| out)
            .ok_or(Error::TaskNotFound(id))?;
        Ok((out, changes))
    }

    /// Expired leases given back and due retries made pending, in one transaction (tasks
    /// that another transaction holds are left for it).
    async fn reclaim(&self, now: Timestamp) -> Result<Changes> {
        let mut tx = self.begin().await?;
        let mut changes = Changes::default();
        let due = match tx.conn().await {
            Ok(conn) => B::due(conn, ms(now)).await.map_err(db),
            Err(e) => Err(e),
        };
        let due = match due {
            Ok(due) => due,
            Err(e) => {
                self.rollback(tx).await;
                return Err(e);
            }
        };
        let keys = match due_keys(&due) {
            Ok(keys) => keys,
            Err(e) => {
                self.rollback(tx).await;
                return Err(e);
            }
        };
        let ids: Vec<TaskId> = keys.iter().map(|k| k.0).collect();
        self.apply(tx, &ids, Lock::Skip, now, &mut changes, |t, s, c| {
            let id = t.id;
            for &(_, index, attempt, kind) in keys.iter().filter(|k| k.0 == id) {
                due_step(t, (index, attempt, kind), now, s, c);
            }
            Ok(())
        })
        .await?;
        Ok(changes)
    }

    /// The body of [`Store::claim`]: expired leases and due retries first, then the claimable
    /// steps (those among them too), one query and one write for all.
    async fn claim_with(
        &self,
        mut tx: Tx<'_, B>,
        request: &ClaimRequest,
        clock: Now<'_>,
        changes: &mut Changes,
    ) -> Result<Vec<ClaimedStep>> {
        // Read once the write lock is held: waiting for it must not eat into the leases.
        let now = clock();
        let found = match tx.conn().await {
            Ok(conn) => match self.claimable_rows(conn, request, now).await {
                Ok(rows) => {
                    let all: Vec<&rows::DueStep> = rows.iter().collect();
                    match room_of::<B>(conn, &all, std::iter::empty(), ms(now)).await {
                        Ok(room) => due_keys(&rows).map(|keys| (keys, room)),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let (mut keys, mut room) = match found {
            Ok(found) => found,
            Err(e) => {
                self.rollback(tx).await;
                return Err(e);
            }
        };
        // Once the keys' locks are held (the holders before let go by now): the claims'
        // records never begin before the let-go they waited for.
        let now = if room.is_empty() {
            now
        } else {
            clock().max(now)
        };
        // Claim order: the ready steps as the query ordered them, then those made pending now.
        keys.sort_by_key(|k| k.3 != Due::Ready);
        let ids: Vec<TaskId> = keys.iter().map(|k| k.0).collect();
        let mut left = request.limit;
        // Tasks another worker holds are skipped; their steps go to the next claim.
        let claimed = self
            .apply(tx, &ids, Lock::Skip, now, changes, |t, s, c| {
                claim_task(t, &keys, request, now, (&mut left, &mut room), s, c)
            })
            .await?;
        Ok(in_claim_order(claimed, &keys))
    }

    /// The steps a claim looks at (see [`Backend::claimable`]).
    async fn claimable(
        &self,
        conn: &mut Conn<B>,
        request: &ClaimRequest,
        now: Timestamp,
    ) -> Result<Vec<(TaskId, u32, u32, Due)>> {
        due_keys(&self.claimable_rows(conn, request, now).await?)
    }

    /// The rows of [`SqlStore::claimable`].
    async fn claimable_rows(
        &self,
        conn: &mut Conn<B>,
        request: &ClaimRequest,
        now: Timestamp,
    ) -> Result<Vec<rows::DueStep>> {
        let look = Look {
            handlers: request.handlers.as_deref(),
            limit: request.limit.min(i64::MAX as usize) as i64,
            reported: &[],
        };
        B::claimable(conn, ms(now), &look).await.map_err(db)
    }

    /// Task `id` read without a lock, from one snapshot; a corrupt-store error naming why when
    /// its rows cannot be read (it is set to `error`).
    async fn view_record(&self, id: TaskId) -> Result<TaskRecord> {
        let (mut records, unreadable) = self.view_load(&[id]).await?;
        if let Some((_, why)) = unreadable.into_iter().next() {
            return Err(corrupt(format!("task {id} is {why}")));
        }
        records.pop().ok_or(Error::TaskNotFound(id))
    }

    /// Tasks `ids` read without a lock, from one snapshot, in id order; those whose rows cannot
    /// be read are left out (and set to `error`).
    async fn view_records(&self, ids: &[TaskId]) -> Result<Vec<TaskRecord>> {
        Ok(self.view_load(ids).await?.0)
    }

    async fn view_load(&self, ids: &[TaskId]) -> Result<(Vec<TaskRecord>, Vec<(TaskId, String)>)> {
        let mut tx = self.pool.begin_with(B::BEGIN_READ).await.map_err(db)?;
        let loaded = self.load_many(&mut tx, ids, Lock::None, &mut false).await;
        let _ = tx.rollback().await;
        let (records, unreadable) = loaded?;
        if !unreadable.is_empty() {
            // Outside the read transaction (it may be read-only), in one of its own.
            let mut tx = self.begin().await?;
            let marked = match tx.conn().await {
                Ok(conn) => Self::mark_unreadable(conn, &unreadable, chrono::Utc::now()).await,
                Err(e) => Err(e),
            };
            self.finish(tx, marked).await?;
        }
        Ok((records, unreadable))
    }

    /// New tasks, at most [`MAX_ROWS`] of them: written in one transaction (on PostgreSQL one
    /// statement), each whose idempotency key is taken left out and answered with the task
    /// that holds it.
    async fn create_batch(
        &self,
        tasks: &[(Arc<TaskGraph>, &NewTask)],
        now: Timestamp,
    ) -> Result<Vec<Created>> {
        let records: Vec<group::NewRecord> = tasks
            .iter()
            .map(|(graph, new)| {
                let (mut ready, mut changes) = (ReadySet::default(), Changes::default());
                let record = TaskRecord::create(
                    TaskId::new(),
                    graph.clone(),
                    new,
                    now,
                    &mut ready,
                    &mut changes,
                );
                group::NewRecord {
                    record,
                    ready,
                    changes,
                }
            })
            .collect();
        let made = if B::ONE_WRITER {
            self.grouped(|reply| group::Job::Create {
                tasks: records,
                reply,
            })
            .await?
        } else {
            self.create_now(records, now).await?
        };
        let mut out = Vec::with_capacity(made.len());
        // One connection for every key found taken (a task not written).
        let mut lookup = None;
        for made in made {
            let Some((namespace, name, key)) = made.key else {
                out.push(Created {
                    task_id: made.id,
                    created: true,
                    changes: made.changes,
                });
                continue;
            };
            // Its key was taken, by an earlier task or by a concurrent create.
            let conn = match &mut lookup {
                Some(conn) => conn,
                None => lookup.insert(self.pool.acquire().await.map_err(db)?),
            };
            let found = B::task_by_key(conn, &namespace, &name, &key)
                .await
                .map_err(db)?
                .ok_or_else(|| {
                    Error::store(
                        StoreErrorKind::Conflict,
                        format!("the idempotency key {key:?} was taken, and its task is gone"),
                    )
                })?;
            out.push(Created {
                task_id: found.parse()?,
                created: false,
                changes: Changes::default(),
            });
        }
        Ok(out)
    }

    /// New tasks written at once, on a pooled connection in one transaction of their own (one
    /// statement on PostgreSQL).
    async fn create_now(
        &self,
        records: Vec<group::NewRecord>,
        now: Timestamp,
    ) -> Result<Vec<group::Made>> {
        let transitions: Vec<_> = records
            .iter()
            .flat_map(|n| n.changes.transitions.iter().cloned())
            .collect();
        let ready = records.iter().any(|n| !n.changes.ready.is_empty());
        let edits: Vec<Edit<'_>> = records
            .iter()
            .map(|n| Edit {
                before: None,
                after: &n.record,
                ready: &n.ready,
            })
            .collect();
        let (rows, revisions) = rows_of(&edits, now, &transitions, &[], []);
        let notify = wakes_workers(ready, &transitions);
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let written = B::create(&mut conn, &rows).await.map_err(db)?;
        if notify && !written.is_empty() {
            self.announce();
        }
        drop(rows);
        drop(edits);
        Ok(group::made(
            records,
            revisions,
            &written,
            &self.cache,
            false,
        ))
    }
}

/// The task that sends `sql` (the wake-up of [`Backend::ANNOUNCE`]) on a connection of `pool`
/// each time it is woken; the requests made while one is sent are answered by the next. Not
/// in the writing transaction: on PostgreSQL a `NOTIFY` holds the database's notify lock from
/// the commit until its WAL is flushed, so that every transaction that notified would wait
/// for the flush of the one before (the group commit of concurrent writers lost).
fn announcer<B: Backend>(
    pool: Pool<B::Db>,
    sql: &'static str,
) -> (Arc<Notify>, tokio::task::JoinHandle<()>) {
    let wake = Arc::new(Notify::new());
    let woken = wake.clone();
    let task = tokio::spawn(async move {
        loop {
            woken.notified().await;
            let sent = match pool.acquire().await {
                Ok(mut conn) => B::execute(&mut conn, sql).await,
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                // The others still look on their own every poll interval.
                tracing::debug!(error = %e, "could not wake the other engines");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    (wake, task)
}

/// Whether a write made a step claimable (workers elsewhere should look): steps became ready,
/// or a retry fell due.
fn wakes_workers(ready: bool, transitions: &[crate::state::Transition]) -> bool {
    ready
        || transitions.iter().any(|t| {
            matches!(
                t.change,
                Change::Step {
                    event: StepEvent::RetryDue,
                    ..
                }
            )
        })
}

/// One task to write back: `before` is `None` for a new task.
struct Edit<'a> {
    before: Option<&'a TaskRecord>,
    after: &'a TaskRecord,
    ready: &'a ReadySet,
}

/// The task and step rows that differ from what was loaded, the new transitions, the buckets
/// and the attempts' log lines. Returns them with, per edit, the new revision of a task that
/// changed (see [`RecordCache`]).
fn rows_of<'a>(
    edits: &[Edit<'a>],
    now: Timestamp,
    transitions: &'a [crate::state::Transition],
    buckets: &'a [(Arc<str>, Bucket, crate::gate::Rate)],
    logs: impl IntoIterator<Item = &'a crate::logs::AttemptLog>,
) -> (Rows<'a>, Vec<Option<i64>>) {
    let mut rows = Rows::default();
    let mut revisions: Vec<Option<i64>> = Vec::with_capacity(edits.len());
    for e in edits {
        let written = rows.steps.len();
        for i in 0..e.after.states.len() {
            let ready = e.ready.0.contains(&(i as u32));
            // A step beyond the loaded ones is an instance a batch made in this operation.
            let new = e.before.is_none_or(|b| i >= b.states.len());
            let changed = new
                || e.before.is_some_and(|b| {
                    b.states[i] != e.after.states[i]
                        || b.counters[i] != e.after.counters[i]
                        || b.steps[i] != e.after.steps[i]
                });
            // When it became claimable: its record says (a retry's due time, not the time
            // the store noticed).
            let ready_at = |i: usize| e.after.steps[i].ready_at.unwrap_or(now);
            if changed || ready {
                rows.steps.push(StepWrite::new(
                    e.after,
                    i,
                    ready.then(|| ms(ready_at(i))),
                    new,
                ));
            }
        }
        // Any change to the task or its steps gives the task row a new revision.
        let changed = rows.steps.len() > written
            || e.before.is_none_or(|b| {
                b.status != e.after.status
                    || b.key_hold != e.after.key_hold
                    || b.unfinished != e.after.unfinished
                    || b.updated_at != e.after.updated_at
                    || b.completed_at != e.after.completed_at
            });
        let revision = changed.then(RecordCache::new_revision);
        if let Some(revision) = revision {
            rows.tasks
                .push(TaskWrite::new(e.after, revision, e.before.is_none()));
        }
        revisions.push(revision);
    }
    rows.transitions = transitions.iter().map(TransitionWrite::new).collect();
    rows.logs = logs.into_iter().flat_map(rows::LogWrite::of).collect();
    rows.deliveries = crate::webhooks::deliveries_of(transitions)
        .into_iter()
        .map(rows::DeliveryWrite::new)
        .collect();
    // Each bucket as the last claim to take from it left it.
    for (i, (key, b, rate)) in buckets.iter().enumerate() {
        if buckets[i + 1..].iter().all(|(k, _, _)| k != key) {
            rows.buckets.push(rows::BucketWrite {
                key,
                tokens: b.tokens,
                at_ms: b.at_ms,
                refill_per_ms: f64::from(rate.limit) / rate.per_ms as f64,
            });
        }
    }
    (rows, revisions)
}

#[async_trait]
impl<B: Backend> Store for SqlStore<B> {
    async fn clock_offset_ms(&self, host: &dyn crate::clock::Clock) -> Result<Option<i64>> {
        let before = host.now();
        let Some(db_ms) = B::clock_ms(&self.pool).await.map_err(db)? else {
            return Ok(None);
        };
        let after = host.now();
        // The server read its clock about half way through the round trip.
        let host_ms = (ms(before) + ms(after)) / 2;
        Ok(Some(db_ms - host_ms))
    }

    async fn migrate(&self) -> Result<()> {
        SqlStore::migrate(self).await
    }

    async fn save_template(&self, graph: &TaskGraph) -> Result<()> {
        let text = serde_json::to_string(graph.template())
            .map_err(|e| Error::store(StoreErrorKind::Other, e.to_string()))?;
        let version = graph.version().to_string();
        let mut tx = self.begin().await?;
        let existing =
            match B::template(tx.conn().await?, graph.namespace(), graph.name(), &version).await {
                Ok(found) => found,
                Err(e) => return self.finish(tx, Err(db(e))).await,
            };
        let conflict = || Error::TemplateConflict {
            namespace: graph.namespace().to_owned(),
            name: graph.name().to_owned(),
            version: version.clone(),
        };
        let result = match existing {
            Some(old) if TaskTemplate::from_json(&old).ok().as_ref() == Some(graph.template()) => {
                Ok(false)
            }
            Some(_) => Err(conflict()),
            None => {
                match B::insert_template(tx.conn().await?, graph, &text, ms(chrono::Utc::now()))
                    .await
                {
                    Ok(()) => Ok(false),
                    // Registered concurrently by another engine: compare with that.
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(true),
                    Err(e) => Err(db(e)),
                }
            }
        };
        let again = self.finish(tx, result).await?;
        if again {
            return self.save_template(graph).await;
        }
        self.newest
            .write()
            .remove(&(graph.namespace().to_owned(), graph.name().to_owned()));
        Ok(())
    }

    async fn resolve_template_version(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&Version>,
    ) -> Result<Version> {
        let key = (namespace.to_owned(), name.to_owned());
        if version.is_none() {
            if let Some((newest, at)) = self.newest.read().get(&key) {
                if at.elapsed() < NEWEST_FOR {
                    return Ok(newest.clone());
                }
            }
        }
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let versions = B::template_versions(&mut conn, namespace, name)
            .await
            .map_err(db)?;
        let mut parsed: Vec<Version> = versions.iter().filter_map(|v| v.parse().ok()).collect();
        parsed.sort();
        let found = match version {
            Some(v) => parsed.into_iter().find(|p| p == v),
            None => parsed.pop(),
        };
        if let (None, Some(newest)) = (version, &found) {
            self.newest
                .write()
                .insert(key, (newest.clone(), std::time::Instant::now()));
        }
        found.ok_or_else(|| {
            Error::template_not_found(namespace, name, version.map(|v| v.to_string()))
        })
    }

    async fn templates(&self) -> Result<Vec<crate::view::TemplateView>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let texts = B::templates(&mut conn).await.map_err(db)?;
        // One that cannot be read (written by a newer version, say) is left out of the list,
        // not made the list's failure.
        let templates: Vec<TaskTemplate> = texts
            .iter()
            .filter_map(|t| match TaskTemplate::from_json(t) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, "a stored template cannot be read; not listed");
                    None
                }
            })
            .collect();
        Ok(crate::view::TemplateView::listing(&templates))
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
        self.create_batch(&[(graph, new)], now)
            .await?
            .pop()
            .ok_or_else(|| Error::store(StoreErrorKind::Other, "no task was created"))
    }

    /// [`MAX_ROWS`] tasks at a time, each batch in one transaction (one commit).
    async fn create_tasks(
        &self,
        tasks: &[(Arc<TaskGraph>, NewTask)],
        now: Timestamp,
    ) -> Result<Vec<Created>> {
        let mut created = Vec::with_capacity(tasks.len());
        for chunk in tasks.chunks(MAX_ROWS) {
            let batch: Vec<(Arc<TaskGraph>, &NewTask)> =
                chunk.iter().map(|(g, n)| (g.clone(), n)).collect();
            created.extend(self.create_batch(&batch, now).await?);
        }
        Ok(created)
    }

    async fn claim(
        &self,
        request: &ClaimRequest,
        now: Now<'_>,
    ) -> Result<(Vec<ClaimedStep>, Changes)> {
        use std::sync::atomic::Ordering::Relaxed;
        if B::ONE_WRITER {
            if !self.claims_found.load(Relaxed) {
                // After a claim that found nothing, a look first, on a reading connection: a
                // claim that finds nothing takes no write lock.
                let mut conn = self.pool.acquire().await.map_err(db)?;
                let probe = ClaimRequest {
                    limit: 1,
                    ..request.clone()
                };
                if self.claimable(&mut conn, &probe, now()).await?.is_empty() {
                    return Ok((Vec::new(), Changes::default()));
                }
            }
            // With the next group: it waits for one group at most.
            let now = now();
            let request = request.clone();
            let (claimed, changes) = self
                .grouped(|reply| group::Job::Claim {
                    request,
                    now,
                    reply,
                })
                .await?;
            self.claims_found.store(!claimed.is_empty(), Relaxed);
            return Ok((claimed, changes));
        }
        let mut changes = Changes::default();
        let tx = self.begin().await?;
        let claimed = self.claim_with(tx, request, now, &mut changes).await?;
        Ok((claimed, changes))
    }

    async fn report_and_claim(
        &self,
        reports: Vec<StepReport>,
        request: &ClaimRequest,
        now: Now<'_>,
    ) -> Result<ReportedAndClaimed> {
        use std::sync::atomic::Ordering::Relaxed;
        let out = self
            .report_and_claim_grouped(reports, request.clone(), now)
            .await?;
        self.claims_found.store(!out.1 .0.is_empty(), Relaxed);
        Ok(out)
    }

    async fn report(
        &self,
        step: StepId,
        attempt: u32,
        outcome: Outcome,
        now: Timestamp,
    ) -> Result<Changes> {
        Ok(self
            .run(step.task, now, |t, s, c| {
                t.report(step, attempt, outcome, now, s, c)
            })
            .await?
            .1)
    }

    async fn report_many(
        &self,
        reports: Vec<StepReport>,
        now: Timestamp,
    ) -> Result<(Vec<Result<()>>, Changes)> {
        if B::ONE_WRITER {
            return self
                .grouped(|reply| group::Job::Report {
                    reports,
                    now,
                    reply,
                })
                .await;
        }
        let mut results: Vec<Result<()>> = reports
            .iter()
            .map(|r| Err(Error::TaskNotFound(r.step.task)))
            .collect();
        let mut slots: Vec<Option<StepReport>> = reports.into_iter().map(Some).collect();
        let mut changes = Changes::default();
        let ids: Vec<TaskId> = slots.iter().flatten().map(|r| r.step.task).collect();
        let tx = self.begin().await?;
        // One lock, load and write for the whole batch; each task's reports in order.
        let outcomes = self
            .apply(tx, &ids, Lock::Wait, now, &mut changes, |t, s, c| {
                let mut out = Vec::new();
                for (slot, report) in slots.iter_mut().enumerate() {
                    let Some(r) = report.take_if(|r| r.step.task == t.id) else {
                        continue;
                    };
                    out.push((slot, t.report_logged(r, now, s, c)));
                }
                Ok(out)
            })
            .await?;
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
        self.reclaim(now).await
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

    async fn settle_children(
        &self,
        step: StepId,
        children: &[TaskId],
        settled: super::Settled,
        now: Timestamp,
    ) -> Result<Changes> {
        Ok(self
            .run(step.task, now, |t, s, c| {
                t.settle_children(step, children, settled, now, s, c)
            })
            .await?
            .1)
    }

    async fn purge(&self, finished_before: Timestamp, statuses: &[TaskState]) -> Result<u64> {
        let statuses: Vec<&str> = statuses
            .iter()
            .filter(|s| s.is_finished())
            .map(|s| s.as_str())
            .collect();
        let mut total = 0;
        loop {
            let mut tx = self.begin().await?;
            let purged = match tx.conn().await {
                Ok(conn) => B::purge(conn, ms(finished_before), &statuses, PURGE_BATCH)
                    .await
                    .map_err(db),
                Err(e) => Err(e),
            };
            let purged = self.finish(tx, purged).await?;
            total += purged;
            if purged < PURGE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    async fn save_schedule(
        &self,
        spec: &crate::schedule::ScheduleSpec,
        next_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<()> {
        let text = serde_json::to_string(spec)
            .map_err(|e| Error::store(StoreErrorKind::Other, e.to_string()))?;
        let mut tx = self.begin().await?;
        let saved = match tx.conn().await {
            Ok(c) => B::schedule_upsert(c, &spec.name, &text, next_at.map(ms), ms(now))
                .await
                .map_err(db),
            Err(e) => Err(e),
        };
        self.finish(tx, saved).await
    }

    async fn delete_schedule(&self, name: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let deleted = match tx.conn().await {
            Ok(c) => B::schedule_delete(c, name).await.map_err(db),
            Err(e) => Err(e),
        };
        Ok(self.finish(tx, deleted).await? > 0)
    }

    async fn schedules(
        &self,
        due_by: Option<Timestamp>,
    ) -> Result<Vec<crate::schedule::ScheduleView>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let rows = B::schedules(&mut conn, due_by.map(ms)).await.map_err(db)?;
        rows.into_iter()
            .map(|(spec, next_at, last_task, created_at)| {
                Ok(crate::schedule::ScheduleView {
                    spec: serde_json::from_str(&spec).map_err(corrupt)?,
                    next_at: time(next_at),
                    last_task: last_task.map(|t| t.parse()).transpose()?,
                    created_at: time(Some(created_at)).unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn advance_schedule(
        &self,
        name: &str,
        from: Timestamp,
        to: Option<Timestamp>,
        last_task: Option<TaskId>,
        now: Timestamp,
    ) -> Result<bool> {
        let last = last_task.map(|t| t.to_string());
        let mut tx = self.begin().await?;
        let moved = match tx.conn().await {
            Ok(c) => B::schedule_advance(c, name, ms(from), to.map(ms), last.as_deref(), ms(now))
                .await
                .map_err(db),
            Err(e) => Err(e),
        };
        Ok(self.finish(tx, moved).await? > 0)
    }

    async fn task_states(&self, ids: &[TaskId]) -> Result<Vec<(TaskId, TaskState)>> {
        let mut ids = ids.to_vec();
        ids.sort();
        ids.dedup();
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let mut states = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(MAX_ROWS) {
            let chunk: Vec<String> = chunk.iter().map(TaskId::to_string).collect();
            for (id, status) in B::task_states(&mut conn, &chunk).await.map_err(db)? {
                states.push((id.parse()?, parse_state(&status)?));
            }
        }
        Ok(states)
    }

    async fn waiting_for_children(
        &self,
        after: Option<StepId>,
        limit: usize,
    ) -> Result<Vec<StepId>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let after = after.map(|s| (s.task.to_string(), i64::from(s.index)));
        let after = after.as_ref().map(|(t, i)| (t.as_str(), *i));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let keys = B::waiting_for_children(&mut conn, after, limit)
            .await
            .map_err(db)?;
        keys.iter()
            .map(|k| step_key(k).map(|(task, index, _)| StepId { task, index }))
            .collect()
    }

    async fn open_children(
        &self,
        after: Option<TaskId>,
        limit: usize,
    ) -> Result<Vec<(TaskId, super::ParentLink)>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let after = after.map(|t| t.to_string());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = B::open_children(&mut conn, after.as_deref(), limit)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|(id, parent)| Ok((id.parse()?, serde_json::from_str(parent).map_err(corrupt)?)))
            .collect()
    }

    async fn step_id(&self, task: TaskId, name: &str) -> Result<StepId> {
        self.view_record(task).await?.step_named(name)
    }

    async fn task(&self, task: TaskId) -> Result<TaskView> {
        Ok(self.view_record(task).await?.view())
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskView>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let ids = B::list_tasks(&mut conn, filter).await.map_err(db)?;
        drop(conn);
        let ids: Vec<TaskId> = ids.iter().map(|id| id.parse()).collect::<Result<_, _>>()?;
        let mut tasks = self.view_records(&ids).await?;
        tasks.sort_by_key(|t| std::cmp::Reverse(t.id));
        Ok(tasks.iter().map(TaskRecord::view).collect())
    }

    async fn claim_deliveries(
        &self,
        owner: &str,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<crate::webhooks::Delivery>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Most looks find none: they take no write lock.
        let mut conn = self.pool.acquire().await.map_err(db)?;
        if !B::deliveries_due(&mut conn, ms(now)).await.map_err(db)? {
            return Ok(Vec::new());
        }
        drop(conn);
        let mut tx = self.begin().await?;
        let claimed = match tx.conn().await {
            Ok(c) => B::deliveries_claim(c, ms(now), owner, limit)
                .await
                .map_err(db),
            Err(e) => Err(e),
        };
        let rows = self.finish(tx, claimed).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let attempt = u32::try_from(r.attempts).unwrap_or(u32::MAX);
            match serde_json::from_str(&r.hook) {
                Ok(hook) => out.push(crate::webhooks::Delivery {
                    hook,
                    attempt,
                    id: r.id,
                    event: r.event,
                    body: r.body,
                }),
                Err(e) => {
                    // Unreadable: failed on its own, the others of the batch sent.
                    let error = format!("its webhook cannot be read: {e}");
                    tracing::warn!(delivery = %r.id, %error, "webhook delivery failed for good");
                    let failed = crate::webhooks::Settlement::Failed { error };
                    // Not settled: its lease runs out and it is looked at again.
                    if let Err(e) = self.settle_delivery(&r.id, attempt, &failed, now).await {
                        tracing::warn!(delivery = %r.id, error = %e, "could not settle a webhook delivery");
                    }
                }
            }
        }
        Ok(out)
    }

    async fn settle_delivery(
        &self,
        id: &str,
        attempt: u32,
        settled: &crate::webhooks::Settlement,
        now: Timestamp,
    ) -> Result<bool> {
        let row = settled.row(now);
        let set = (
            row.status,
            row.next_attempt_at.map(ms),
            row.error,
            row.delivered_at.map(ms),
            i64::from(row.uncount),
        );
        let mut tx = self.begin().await?;
        let settled = match tx.conn().await {
            Ok(c) => B::delivery_settle(c, id, i64::from(attempt), set)
                .await
                .map_err(db),
            Err(e) => Err(e),
        };
        Ok(self.finish(tx, settled).await? > 0)
    }

    async fn webhook_deliveries(&self, task: TaskId) -> Result<Vec<crate::webhooks::DeliveryView>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let id = task.to_string();
        let rows = B::deliveries(&mut conn, &id).await.map_err(db)?;
        if rows.is_empty() && !B::task_exists(&mut conn, &id).await.map_err(db)? {
            return Err(Error::TaskNotFound(task));
        }
        rows.into_iter()
            .map(|r| {
                let hook: crate::webhooks::Webhook = serde_json::from_str(&r.hook)
                    .map_err(|e| corrupt(format!("webhook delivery {}: {e}", r.id)))?;
                Ok(crate::webhooks::DeliveryView {
                    task_id: r.task_id.parse()?,
                    url: hook.url,
                    id: r.id,
                    event: r.event,
                    status: r.status,
                    attempts: count(r.attempts, "attempts")?,
                    last_error: r.last_error,
                    created_at: time(Some(r.created_at)).unwrap_or_default(),
                    delivered_at: time(r.delivered_at),
                })
            })
            .collect()
    }

    async fn logs(&self, task: TaskId, step: Option<u32>) -> Result<Vec<crate::logs::LogView>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let id = task.to_string();
        let rows = B::logs(&mut conn, &id, step.map(i64::from))
            .await
            .map_err(db)?;
        if rows.is_empty() && !B::task_exists(&mut conn, &id).await.map_err(db)? {
            return Err(Error::TaskNotFound(task));
        }
        rows.into_iter()
            .map(|r| {
                Ok(crate::logs::LogView {
                    step: r.step,
                    step_index: count(r.step_index, "step_index")?,
                    attempt: count(r.attempt, "attempt")?,
                    at: time(Some(r.at)).unwrap_or_default(),
                    level: r.level.parse()?,
                    message: r.message,
                })
            })
            .collect()
    }

    async fn transitions(&self, task: TaskId) -> Result<Vec<TransitionView>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let id = task.to_string();
        if !B::task_exists(&mut conn, &id).await.map_err(db)? {
            return Err(Error::TaskNotFound(task));
        }
        let rows = B::transitions(&mut conn, &id).await.map_err(db)?;
        rows.into_iter()
            .map(|r| {
                Ok(TransitionView {
                    step_id: r
                        .step_index
                        .map(|i| count(i, "step_index").map(|index| StepId { task, index }))
                        .transpose()?,
                    step: r.step_name,
                    from: r.from_state,
                    to: r.to_state,
                    event: r.event,
                    reason: r.reason,
                    attempt: count(r.attempt, "attempt")?,
                    at: time(Some(r.at)).unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn stats(&self) -> Result<crate::view::Stats> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let counts = B::stats_counts(&mut conn).await.map_err(db)?;
        let durations = B::stats_durations(&mut conn).await.map_err(db)?;
        let mut stats = crate::view::Stats::default();
        for (kind, key, n) in counts {
            let n = n.max(0) as u64;
            match (kind.as_str(), key.as_str()) {
                ("task", _) => {
                    stats.tasks.insert(key, n);
                }
                ("step", _) => {
                    stats.steps.insert(key, n);
                }
                ("event", "schedule_retry") => stats.retries = n,
                ("event", "lease_expired") => stats.lease_expiries = n,
                ("recovered", _) => stats.recovered = n,
                _ => {}
            }
        }
        stats.handlers = durations
            .into_iter()
            .map(|(handler, n, mean, p95)| crate::view::HandlerStats {
                handler,
                finished: n.max(0) as u64,
                mean_ms: mean.unwrap_or(0.0),
                p95_ms: p95.unwrap_or(0).max(0) as u64,
            })
            .collect();
        Ok(stats)
    }

    async fn ready_by_handler(&self, _now: Timestamp) -> Result<Vec<(String, u64)>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let rows = B::ready_by_handler(&mut conn).await.map_err(db)?;
        Ok(rows
            .into_iter()
            .map(|(handler, n)| (handler, n.max(0) as u64))
            .collect())
    }

    async fn work_status(
        &self,
        handlers: Option<&[Arc<str>]>,
        now: Timestamp,
    ) -> Result<WorkStatus> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let row = B::work_status(&mut conn, handlers, ms(now))
            .await
            .map_err(db)?;
        Ok(WorkStatus {
            ready: row.ready.max(0) as u64,
            running: row.running.max(0) as u64,
            waiting: row.waiting.max(0) as u64,
            next_due: time(row.next_due),
        })
    }
}

#[cfg(test)]
mod guard_tests {
    use super::*;

    #[test]
    fn a_panicking_operation_is_a_store_error_and_a_sound_one_runs() {
        let refused: Result<()> = guarded(|| panic!("index out of bounds"));
        let err = refused.unwrap_err();
        assert_eq!(err.kind(), crate::error::ErrorKind::Store);
        assert!(err.to_string().contains("index out of bounds"), "{err}");
        assert_eq!(guarded(|| Ok(7)).unwrap(), 7);
    }
}
