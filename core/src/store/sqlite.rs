//! The embedded SQLite store (sqlx): WAL mode, a busy timeout, and every operation in one
//! `BEGIN IMMEDIATE` transaction.
//!
//! An operation loads the task it touches into a [`TaskRecord`], calls the same method the
//! memory store calls, and writes back the rows that changed with the new transitions — so the
//! rules live in one place and nothing is ever half-written.

use std::collections::{BTreeSet, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::DateTime;
use parking_lot::RwLock;
use semver::Version;
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::record::{Schedule, StepRecord, TaskRecord};
use super::{Changes, ClaimRequest, ClaimedStep, Created, NewTask, StepFailure, Store, WorkStatus};
use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::ids::{StepId, TaskId};
use crate::readiness::Counters;
use crate::state::{Change, StepState, Transition};
use crate::template::{TaskGraph, TaskTemplate};
use crate::view::{TaskFilter, TaskView, TransitionView};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    writer: tokio::sync::Mutex<()>,
    graphs: RwLock<HashMap<(String, String, String), Arc<TaskGraph>>>,
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

fn json_text(v: &Value) -> String {
    v.to_string()
}

fn parse_json(text: Option<String>) -> Result<Option<Arc<Value>>> {
    text.map(|t| serde_json::from_str(&t).map(Arc::new).map_err(db))
        .transpose()
}

/// Steps that became ready during an operation (the claim order column is set for them).
#[derive(Default)]
struct ReadySet(BTreeSet<u32>);

impl Schedule for ReadySet {
    fn ready(&mut self, _task: &TaskRecord, index: u32) {
        self.0.insert(index);
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://path`, `sqlite::memory:`)
    /// and applies the migrations.
    pub async fn open(url: &str) -> Result<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::InvalidArgument(format!("invalid SQLite URL {url:?}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL with NORMAL: a commit survives the process crashing; only an OS crash or a
            // power cut may lose the last transactions (SQLite's recommended pairing).
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        // An in-memory database lives in one connection.
        let max = if url.contains(":memory:") { 1 } else { 4 };
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .connect_with(options)
            .await
            .map_err(db)?;
        let store = SqliteStore {
            pool,
            writer: tokio::sync::Mutex::new(()),
            graphs: RwLock::new(HashMap::new()),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies any migration not yet applied.
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await.map_err(db)
    }

    /// A write transaction. SQLite has one writer at a time: writers of this process queue on
    /// an async mutex (instead of sleeping in SQLite's busy handler); other processes are
    /// waited for by the busy timeout.
    async fn begin(
        &self,
    ) -> Result<(
        tokio::sync::MutexGuard<'_, ()>,
        sqlx::Transaction<'static, sqlx::Sqlite>,
    )> {
        let guard = self.writer.lock().await;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
        Ok((guard, tx))
    }

    async fn graph(
        &self,
        conn: &mut SqliteConnection,
        namespace: &str,
        name: &str,
        version: &str,
    ) -> Result<Arc<TaskGraph>> {
        let key = (namespace.to_owned(), name.to_owned(), version.to_owned());
        if let Some(g) = self.graphs.read().get(&key) {
            return Ok(g.clone());
        }
        let text: String = sqlx::query_scalar(
            "SELECT template FROM tasker_named_tasks WHERE namespace = ? AND name = ? AND version = ?",
        )
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

    async fn load(&self, conn: &mut SqliteConnection, id: TaskId) -> Result<TaskRecord> {
        let row = sqlx::query("SELECT * FROM tasker_tasks WHERE task_id = ?")
            .bind(id.to_string())
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?
            .ok_or(Error::TaskNotFound(id))?;
        let (namespace, name, version): (String, String, String) =
            (row.get("namespace"), row.get("name"), row.get("version"));
        let graph = self.graph(conn, &namespace, &name, &version).await?;
        let rows = sqlx::query(
            "SELECT * FROM tasker_workflow_steps WHERE task_id = ? ORDER BY step_index",
        )
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
            states.push(parse_state::<StepState>(r.get("status"))?);
            counters.push(Counters {
                unfinished_parents: r.get::<i64, _>("unfinished_parents") as u32,
                failed_required_parents: r.get::<i64, _>("failed_required_parents") as u32,
            });
            steps.push(step_record(r)?);
        }
        let context: String = row.get("context");
        Ok(TaskRecord {
            id,
            namespace: namespace.into(),
            name: name.into(),
            context: Arc::new(serde_json::from_str(&context).map_err(db)?),
            status: parse_state(row.get("status"))?,
            priority: row.get::<i64, _>("priority") as i32,
            idempotency_key: row.get("idempotency_key"),
            states,
            counters,
            steps,
            unfinished: row.get::<i64, _>("unfinished_steps") as u32,
            created_at: time(row.get("created_at")).unwrap_or_default(),
            updated_at: time(row.get("updated_at")).unwrap_or_default(),
            completed_at: time(row.get("completed_at")),
            graph,
        })
    }

    /// Writes back what `op` changed in task `id`, in the open transaction.
    async fn update<T>(
        &self,
        conn: &mut SqliteConnection,
        id: TaskId,
        now: Timestamp,
        changes: &mut Changes,
        op: impl FnOnce(&mut TaskRecord, &mut ReadySet, &mut Changes) -> Result<T>,
    ) -> Result<T> {
        let mut task = self.load(conn, id).await?;
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
        Ok(out)
    }

    async fn run<T>(
        &self,
        id: TaskId,
        now: Timestamp,
        op: impl FnOnce(&mut TaskRecord, &mut ReadySet, &mut Changes) -> Result<T>,
    ) -> Result<(T, Changes)> {
        let (_writer, mut tx) = self.begin().await?;
        let mut changes = Changes::default();
        let out = self.update(&mut tx, id, now, &mut changes, op).await?;
        tx.commit().await.map_err(db)?;
        Ok((out, changes))
    }

    /// Expired leases are given back, then due retries become pending.
    async fn reclaim_and_promote(
        &self,
        conn: &mut SqliteConnection,
        now: Timestamp,
        changes: &mut Changes,
    ) -> Result<()> {
        let expired = sqlx::query(
            "SELECT task_id, step_index, attempts FROM tasker_workflow_steps \
             WHERE status = 'in_progress' AND lease_expires_at <= ?",
        )
        .bind(ms(now))
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
        for r in expired {
            let (id, index, attempt) = step_key(&r)?;
            self.update(conn, id, now, changes, |t, s, c| {
                t.expire_lease(index, attempt, now, s, c);
                Ok(())
            })
            .await?;
        }
        let due = sqlx::query(
            "SELECT task_id, step_index, attempts FROM tasker_workflow_steps \
             WHERE status = 'waiting_for_retry' AND next_attempt_at <= ?",
        )
        .bind(ms(now))
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
        for r in due {
            let (id, index, attempt) = step_key(&r)?;
            self.update(conn, id, now, changes, |t, s, c| {
                t.retry_due(index, attempt, now, s, c);
                Ok(())
            })
            .await?;
        }
        Ok(())
    }
}

fn parse_state<S: FromStr>(text: String) -> Result<S>
where
    S::Err: std::fmt::Display,
{
    text.parse().map_err(db)
}

fn step_key(r: &SqliteRow) -> Result<(TaskId, u32, u32)> {
    let id: String = r.get("task_id");
    Ok((
        id.parse()?,
        r.get::<i64, _>("step_index") as u32,
        r.get::<i64, _>("attempts") as u32,
    ))
}

fn step_record(r: &SqliteRow) -> Result<StepRecord> {
    let owner: Option<String> = r.get("lease_owner");
    let expires = time(r.get("lease_expires_at"));
    Ok(StepRecord {
        attempts: r.get::<i64, _>("attempts") as u32,
        max_attempts: r.get::<i64, _>("max_attempts") as u32,
        next_attempt_at: time(r.get("next_attempt_at")),
        lease: owner.zip(expires).map(|(o, e)| (Arc::from(o), e)),
        result: parse_json(r.get("result"))?,
        error: r.get("error"),
        started_at: time(r.get("started_at")),
        completed_at: time(r.get("completed_at")),
    })
}

/// Writes the rows of `after` that differ from `before`, and the new transitions.
async fn save(
    conn: &mut SqliteConnection,
    before: &TaskRecord,
    after: &TaskRecord,
    ready: &ReadySet,
    now: Timestamp,
    transitions: &[Transition],
) -> Result<()> {
    let id = after.id.to_string();
    sqlx::query(
        "UPDATE tasker_tasks SET status = ?, unfinished_steps = ?, updated_at = ?, completed_at = ? \
         WHERE task_id = ?",
    )
    .bind(after.status.as_str())
    .bind(after.unfinished as i64)
    .bind(ms(after.updated_at))
    .bind(after.completed_at.map(ms))
    .bind(&id)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
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
        sqlx::query(
            "UPDATE tasker_workflow_steps SET status = ?, attempts = ?, max_attempts = ?, \
             unfinished_parents = ?, failed_required_parents = ?, next_attempt_at = ?, \
             lease_owner = ?, lease_expires_at = ?, result = ?, error = ?, started_at = ?, \
             completed_at = ?, ready_at = COALESCE(?, ready_at) WHERE task_id = ? AND step_index = ?",
        )
        .bind(after.states[i].as_str())
        .bind(s.attempts as i64)
        .bind(s.max_attempts as i64)
        .bind(after.counters[i].unfinished_parents as i64)
        .bind(after.counters[i].failed_required_parents as i64)
        .bind(s.next_attempt_at.map(ms))
        .bind(s.lease.as_ref().map(|(o, _)| o.to_string()))
        .bind(s.lease.as_ref().map(|(_, e)| ms(*e)))
        .bind(s.result.as_deref().map(json_text))
        .bind(s.error.as_deref())
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

async fn insert_transitions(conn: &mut SqliteConnection, transitions: &[Transition]) -> Result<()> {
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
        sqlx::query(
            "INSERT INTO tasker_transitions (task_id, step_index, step_name, from_state, to_state, \
             event, reason, attempt, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(t.task_id.to_string())
        .bind(step)
        .bind(t.step_name.as_deref())
        .bind(from)
        .bind(to)
        .bind(event)
        .bind(t.reason.as_deref())
        .bind(t.attempt as i64)
        .bind(ms(t.at))
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn save_template(&self, graph: &TaskGraph) -> Result<()> {
        let text = serde_json::to_string(graph.template()).map_err(db)?;
        let (_writer, mut tx) = self.begin().await?;
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT template FROM tasker_named_tasks WHERE namespace = ? AND name = ? AND version = ?",
        )
        .bind(graph.namespace())
        .bind(graph.name())
        .bind(graph.version().to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        match existing {
            Some(old) if TaskTemplate::from_json(&old).ok().as_ref() == Some(graph.template()) => {
                Ok(())
            }
            Some(_) => Err(Error::TemplateConflict {
                namespace: graph.namespace().to_owned(),
                name: graph.name().to_owned(),
                version: graph.version().to_string(),
            }),
            None => {
                sqlx::query(
                    "INSERT INTO tasker_named_tasks (namespace, name, version, template, created_at) \
                     VALUES (?, ?, ?, ?, ?)",
                )
                .bind(graph.namespace())
                .bind(graph.name())
                .bind(graph.version().to_string())
                .bind(text)
                .bind(ms(chrono::Utc::now()))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                tx.commit().await.map_err(db)
            }
        }
    }

    async fn resolve_template_version(
        &self,
        namespace: &str,
        name: &str,
        version: Option<&Version>,
    ) -> Result<Version> {
        let versions: Vec<String> = sqlx::query_scalar(
            "SELECT version FROM tasker_named_tasks WHERE namespace = ? AND name = ?",
        )
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
        let (_writer, mut tx) = self.begin().await?;
        if let Some(key) = &new.idempotency_key {
            let existing: Option<String> = sqlx::query_scalar(
                "SELECT task_id FROM tasker_tasks WHERE namespace = ? AND name = ? AND idempotency_key = ?",
            )
            .bind(graph.namespace())
            .bind(graph.name())
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
            if let Some(id) = existing {
                return Ok(Created {
                    task_id: id.parse()?,
                    created: false,
                    changes: Changes::default(),
                });
            }
        }
        let id = TaskId::new();
        let mut changes = Changes::default();
        let mut ready = ReadySet::default();
        let task = TaskRecord::create(id, graph.clone(), new, now, &mut ready, &mut changes);
        let id_text = id.to_string();
        sqlx::query(
            "INSERT INTO tasker_tasks (task_id, namespace, name, version, status, priority, context, \
             idempotency_key, unfinished_steps, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id_text)
        .bind(graph.namespace())
        .bind(graph.name())
        .bind(graph.version().to_string())
        .bind(task.status.as_str())
        .bind(task.priority as i64)
        .bind(json_text(&task.context))
        .bind(task.idempotency_key.as_deref())
        .bind(task.unfinished as i64)
        .bind(ms(now))
        .bind(ms(now))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        for (i, spec) in graph.steps().iter().enumerate() {
            let index = i as u32;
            sqlx::query(
                "INSERT INTO tasker_workflow_steps (task_id, step_index, name, handler, status, priority, \
                 attempts, max_attempts, unfinished_parents, failed_required_parents, ready_at) \
                 VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, 0, ?)",
            )
            .bind(&id_text)
            .bind(i as i64)
            .bind(&*spec.name)
            .bind(&*spec.handler)
            .bind(task.states[i].as_str())
            .bind(task.priority as i64)
            .bind(task.steps[i].max_attempts as i64)
            .bind(task.counters[i].unfinished_parents as i64)
            .bind(ready.0.contains(&index).then(|| ms(now)))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        for i in 0..graph.len() as u32 {
            for edge in graph.children(i) {
                sqlx::query(
                    "INSERT INTO tasker_workflow_step_edges (task_id, from_step, to_step, requires_success) \
                     VALUES (?, ?, ?, ?)",
                )
                .bind(&id_text)
                .bind(i as i64)
                .bind(edge.step as i64)
                .bind(edge.requires_success)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            }
        }
        insert_transitions(&mut tx, &changes.transitions).await?;
        tx.commit().await.map_err(db)?;
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
        let (_writer, mut tx) = self.begin().await?;
        let mut changes = Changes::default();
        self.reclaim_and_promote(&mut tx, now, &mut changes).await?;
        let handlers = request
            .handlers
            .as_ref()
            .map(|h| serde_json::to_string(&h.iter().map(|s| &**s).collect::<Vec<_>>()))
            .transpose()
            .map_err(db)?;
        let candidates = sqlx::query(
            "SELECT s.task_id, s.step_index, s.attempts FROM tasker_workflow_steps s \
             JOIN tasker_tasks t ON t.task_id = s.task_id \
             WHERE s.status = 'pending' AND s.unfinished_parents = 0 AND s.failed_required_parents = 0 \
               AND t.status IN ('pending', 'in_progress') \
               AND (?1 IS NULL OR s.handler IN (SELECT value FROM json_each(?1))) \
             ORDER BY s.priority DESC, s.ready_at, s.task_id, s.step_index LIMIT ?2",
        )
        .bind(handlers)
        .bind(request.limit.min(i64::MAX as usize) as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let mut claimed = Vec::with_capacity(candidates.len());
        for r in candidates {
            let (id, index, _) = step_key(&r)?;
            let step = self
                .update(&mut tx, id, now, &mut changes, |t, s, c| {
                    if !t.is_claimable(index) {
                        return Ok(None);
                    }
                    t.claim(index, &request.worker_id, now, s, c).map(Some)
                })
                .await?;
            claimed.extend(step);
        }
        tx.commit().await.map_err(db)?;
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
        let (_writer, mut tx) = self.begin().await?;
        let mut changes = Changes::default();
        self.reclaim_and_promote(&mut tx, now, &mut changes).await?;
        tx.commit().await.map_err(db)?;
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
        self.load(&mut conn, task).await?.step_named(name)
    }

    async fn task(&self, task: TaskId) -> Result<TaskView> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        Ok(self.load(&mut conn, task).await?.view())
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskView>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT task_id FROM tasker_tasks WHERE (?1 IS NULL OR status = ?1) \
             AND (?2 IS NULL OR namespace = ?2) AND (?3 IS NULL OR name = ?3) \
             ORDER BY task_id DESC LIMIT ?4",
        )
        .bind(filter.status.map(|s| s.as_str()))
        .bind(filter.namespace.as_deref())
        .bind(filter.name.as_deref())
        .bind(filter.limit.min(i64::MAX as usize) as i64)
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
        let mut views = Vec::with_capacity(ids.len());
        for id in ids {
            views.push(self.load(&mut conn, id.parse()?).await?.view());
        }
        Ok(views)
    }

    async fn transitions(&self, task: TaskId) -> Result<Vec<TransitionView>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        let exists: Option<String> =
            sqlx::query_scalar("SELECT task_id FROM tasker_tasks WHERE task_id = ?")
                .bind(task.to_string())
                .fetch_optional(&mut *conn)
                .await
                .map_err(db)?;
        if exists.is_none() {
            return Err(Error::TaskNotFound(task));
        }
        let rows = sqlx::query("SELECT * FROM tasker_transitions WHERE task_id = ? ORDER BY id")
            .bind(task.to_string())
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                let index: Option<i64> = r.get("step_index");
                Ok(TransitionView {
                    step_id: index.map(|i| StepId {
                        task,
                        index: i as u32,
                    }),
                    step: r.get("step_name"),
                    from: r.get("from_state"),
                    to: r.get("to_state"),
                    event: r.get("event"),
                    reason: r.get("reason"),
                    attempt: r.get::<i64, _>("attempt") as u32,
                    at: time(r.get("at")).unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn work_status(
        &self,
        handlers: Option<&[Arc<str>]>,
        _now: Timestamp,
    ) -> Result<WorkStatus> {
        let handlers = handlers
            .map(|h| serde_json::to_string(&h.iter().map(|s| &**s).collect::<Vec<_>>()))
            .transpose()
            .map_err(db)?;
        let row = sqlx::query(
            "SELECT \
               (SELECT COUNT(*) FROM tasker_workflow_steps s JOIN tasker_tasks t ON t.task_id = s.task_id \
                 WHERE s.status = 'pending' AND s.unfinished_parents = 0 AND s.failed_required_parents = 0 \
                   AND t.status IN ('pending', 'in_progress') \
                   AND (?1 IS NULL OR s.handler IN (SELECT value FROM json_each(?1)))) AS ready, \
               (SELECT COUNT(*) FROM tasker_workflow_steps WHERE status = 'in_progress') AS running, \
               (SELECT COUNT(*) FROM tasker_workflow_steps WHERE status = 'waiting_for_retry') AS waiting, \
               (SELECT MIN(CASE status WHEN 'waiting_for_retry' THEN next_attempt_at ELSE lease_expires_at END) \
                 FROM tasker_workflow_steps WHERE status IN ('waiting_for_retry', 'in_progress')) AS next_due",
        )
        .bind(handlers)
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(WorkStatus {
            ready: row.get::<i64, _>("ready") as u64,
            running: row.get::<i64, _>("running") as u64,
            waiting: row.get::<i64, _>("waiting") as u64,
            next_due: time(row.get("next_due")),
        })
    }
}
