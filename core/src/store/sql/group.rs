//! Group commit, for a database that takes one writer at a time (SQLite): the hot operations of
//! one process — `create_task`, report batches, claims — wait in one queue, and this process's
//! committer takes every operation waiting and runs them as one write transaction.
//!
//! A group costs the same few calls into the driver however many operations it holds: the
//! write transaction begun with the claimable steps and the database's data version (one
//! call), the tasks to change that this process does not already hold as the database does
//! (one query, and one for the steps of tasks not cached), then every row written and the
//! commit (one call). The data version (SQLite's `PRAGMA data_version`) changes only when
//! another connection commits: while it holds, the tasks this process's writer last wrote are
//! taken from its cache unread. In between, each operation runs in memory on the loaded
//! tasks, in a fixed order — reports first, then expired leases and due retries, then claims,
//! which also take the steps that this group's reports made ready, then creates (which read
//! nothing: those that come while a group reads join it) — so a chain's next step can be
//! claimed in the transaction that completed its parent.
//!
//! The committer is a task of its own: an operation whose caller stops waiting still runs with
//! its group, and a caller that gives up never leaves the others' work half done. An operation
//! that finds nothing queued and no group running runs at once in its caller, alone (no
//! hand-off to pay for a lone operation); where there is no committer (its runtime is gone),
//! every operation runs that way.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use tokio::sync::oneshot;

use super::rows::ms;
use super::{db, due_keys, due_step, rows_of, Backend, Due, Edit, Lock, ReadySet, SqlStore, Tx};
use crate::clock::Timestamp;
use crate::error::{Error, Result, StoreErrorKind};
use crate::gate::Room;
use crate::ids::TaskId;
use crate::store::record::TaskRecord;
use crate::store::{Changes, ClaimRequest, ClaimedStep, Now, StepReport};

/// The most operations one group takes (more wait for the next).
const MAX_GROUP: usize = 64;

/// A new task, made in memory and waiting to be written.
pub(super) struct NewRecord {
    pub record: TaskRecord,
    pub ready: ReadySet,
    pub changes: Changes,
}

/// What became of one new task: written, or left out (its idempotency key was taken).
pub(super) struct Made {
    pub id: TaskId,
    pub changes: Changes,
    /// For a task left out: its namespace, name and idempotency key.
    pub key: Option<(Arc<str>, Arc<str>, String)>,
}

type Reply<T> = oneshot::Sender<Result<T>>;
/// What a report batch answers: each report's result, and what changed.
type Reported = (Vec<Result<()>>, Changes);
/// What a claim answers: the steps claimed, and what changed.
type Claimed = (Vec<ClaimedStep>, Changes);

/// One operation waiting for its group.
pub(super) enum Job {
    Create {
        tasks: Vec<NewRecord>,
        reply: Reply<Vec<Made>>,
    },
    Report {
        reports: Vec<StepReport>,
        now: Timestamp,
        reply: Reply<Reported>,
    },
    Claim {
        request: ClaimRequest,
        now: Timestamp,
        reply: Reply<Claimed>,
    },
}

/// What a job's reply channel brought: its answer, or an error when the committer stopped
/// before its group was written.
async fn answered<T>(answer: oneshot::Receiver<Result<T>>) -> Result<T> {
    answer.await.unwrap_or_else(|_| {
        Err(Error::store(
            StoreErrorKind::Unavailable,
            "the store's committer stopped before this operation's group was written",
        ))
    })
}

/// `e` once more, for another operation of its group.
fn again(e: &Error) -> Error {
    match e {
        Error::Store(s) => Error::Store(s.clone()),
        Error::Closed => Error::Closed,
        other => Error::store(StoreErrorKind::Other, other.to_string()),
    }
}

/// The queues into this process's committer.
#[derive(Debug, Default)]
pub(super) struct Committer {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    queue: parking_lot::Mutex<Queue>,
    /// Wakes the committer when a job is queued.
    wake: tokio::sync::Notify,
    /// Groups run so far.
    groups: std::sync::atomic::AtomicU64,
}

/// The jobs waiting, creates apart: they need no read, so a group takes those that come
/// while it reads as well.
#[derive(Default)]
struct Queue {
    /// Whether a committer takes the jobs queued (else each runs where it was made).
    running: bool,
    /// Whether a group is being run (by the committer, or by a caller that found nothing
    /// queued and nothing running: it runs its own operation at once, with no hand-off).
    busy: bool,
    creates: Vec<Job>,
    others: Vec<Job>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("running", &self.running)
            .field("busy", &self.busy)
            .field("creates", &self.creates.len())
            .field("others", &self.others.len())
            .finish()
    }
}

/// Marks the committer stopped when its task ends, however it ends (its runtime may shut
/// down): the jobs still queued are dropped, so their callers hear that it stopped.
struct Stopped(Arc<Shared>);

impl Drop for Stopped {
    fn drop(&mut self) {
        let mut queue = self.0.queue.lock();
        queue.running = false;
        queue.creates.clear();
        queue.others.clear();
    }
}

impl Committer {
    /// Starts the committer of `store` on the current runtime (it ends with the store).
    pub fn start<B: Backend>(store: &Arc<SqlStore<B>>) {
        let shared = store.committer.shared.clone();
        {
            let mut queue = shared.queue.lock();
            if queue.running {
                return;
            }
            queue.running = true;
        }
        let weak: Weak<SqlStore<B>> = Arc::downgrade(store);
        tokio::spawn(async move {
            let stopped = Stopped(shared);
            loop {
                let jobs = stopped.0.turn();
                if jobs.is_empty() {
                    if weak.strong_count() == 0 {
                        break;
                    }
                    stopped.0.wake.notified().await;
                    continue;
                }
                let turn = Turn(&stopped.0);
                let Some(store) = weak.upgrade() else {
                    break;
                };
                store.run_group(jobs, true).await;
                drop(turn);
            }
        });
    }

    /// Wakes the committer to end (its store is being dropped).
    pub fn stop(&self) {
        self.shared.wake.notify_one();
    }
}

/// A group being run: when it ends, however it ends, the next may start.
struct Turn<'a>(&'a Shared);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let waiting = {
            let mut queue = self.0.queue.lock();
            queue.busy = false;
            !queue.creates.is_empty() || !queue.others.is_empty()
        };
        if waiting {
            self.0.wake.notify_one();
        }
    }
}

impl Shared {
    /// The committer's next group: the jobs queued (up to [`MAX_GROUP`]), unless a group is
    /// being run; the committer is then busy.
    fn turn(&self) -> Vec<Job> {
        let mut queue = self.queue.lock();
        if queue.busy {
            return Vec::new();
        }
        let jobs = queue.take(MAX_GROUP, true);
        queue.busy = !jobs.is_empty();
        jobs
    }

    /// Up to `max` jobs queued, creates first (only creates unless `all`).
    fn take(&self, max: usize, all: bool) -> Vec<Job> {
        self.queue.lock().take(max, all)
    }
}

impl Queue {
    /// Up to `max` jobs queued, creates first (only creates unless `all`).
    fn take(&mut self, max: usize, all: bool) -> Vec<Job> {
        let n = self.creates.len().min(max);
        let mut jobs: Vec<Job> = self.creates.drain(..n).collect();
        if all {
            let n = self.others.len().min(max.saturating_sub(jobs.len()));
            jobs.extend(self.others.drain(..n));
        }
        jobs
    }
}

impl<B: Backend> SqlStore<B> {
    /// Runs `job` with the next group and waits for its answer (`make` builds the job around
    /// its reply channel).
    pub(super) async fn grouped<T>(&self, make: impl FnOnce(Reply<T>) -> Job) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.submit(vec![make(reply)]).await;
        answered(answer).await
    }

    /// Runs `jobs` together, in one group: at once, here, when nothing is queued or running
    /// (or there is no committer), else queued for the committer's next group. Returns once
    /// they ran or were queued; each answers on its reply channel.
    pub(super) async fn submit(&self, jobs: Vec<Job>) {
        let shared = &self.committer.shared;
        let (jobs, turn) = {
            let mut queue = shared.queue.lock();
            let idle = !queue.busy && queue.creates.is_empty() && queue.others.is_empty();
            if !queue.running {
                // No committer to take them.
                (Some(jobs), None)
            } else if idle {
                // Nothing queued or running: at once, here.
                queue.busy = true;
                (Some(jobs), Some(Turn(shared)))
            } else {
                for job in jobs {
                    match job {
                        Job::Create { .. } => queue.creates.push(job),
                        _ => queue.others.push(job),
                    }
                }
                (None, None)
            }
        };
        match jobs {
            Some(jobs) => {
                self.run_group(jobs, false).await;
                drop(turn);
            }
            None => shared.wake.notify_one(),
        }
    }

    /// A report batch and a claim in one write transaction (one group), the claim also
    /// taking the steps the reports made ready: on SQLite with this process's next group,
    /// elsewhere at once in a transaction of their own.
    pub(super) async fn report_and_claim_grouped(
        &self,
        reports: Vec<StepReport>,
        request: ClaimRequest,
        clock: Now<'_>,
    ) -> Result<crate::store::ReportedAndClaimed> {
        let now = clock();
        let (report_reply, reported) = oneshot::channel();
        let (claim_reply, claimed) = oneshot::channel();
        let jobs = vec![
            Job::Report {
                reports,
                now,
                reply: report_reply,
            },
            Job::Claim {
                request,
                now,
                reply: claim_reply,
            },
        ];
        if B::ONE_WRITER {
            self.submit(jobs).await;
        } else {
            // The claim's time is read again once the reported tasks are locked: waiting for
            // them must not eat into the leases.
            self.run_group_timed(jobs, false, Some(clock)).await;
        }
        let reported = answered(reported).await?;
        // The reports are recorded: a claim that failed (its group, when the queue put it in
        // the next one) is an empty one, the steps left for the next claim.
        let claimed = answered(claimed).await.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "claim after reports failed; claiming next time");
            (Vec::new(), Changes::default())
        });
        Ok((reported, claimed))
    }

    /// Runs `jobs` as one write transaction and answers each; the committer (`committer`)
    /// also takes the creates queued while the group reads (a caller running its own
    /// operation takes no other: it may stop waiting half way).
    async fn run_group(&self, jobs: Vec<Job>, committer: bool) {
        self.run_group_timed(jobs, committer, None).await;
    }

    /// [`SqlStore::run_group`], the claims' time read from `clock` (when given) once the
    /// tasks reported on are locked.
    async fn run_group_timed(&self, jobs: Vec<Job>, committer: bool, clock: Option<Now<'_>>) {
        self.committer
            .shared
            .groups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut group = Group::sort(jobs);
        let mut tx = match self.begin().await {
            Ok(tx) => tx,
            Err(e) => return group.fail(&e),
        };
        let loaded = match self.group_load(&mut tx, &mut group, clock).await {
            Ok(loaded) => loaded,
            Err(e) => {
                self.rollback(tx).await;
                return group.fail(&e);
            }
        };
        // Creates that came while the group read go with it.
        if committer && group.creates.len() < MAX_GROUP {
            let late = self
                .committer
                .shared
                .take(MAX_GROUP - group.creates.len(), false);
            group.add(late);
        }
        let mut tasks = Tasks::new(loaded.records);
        let mut room = loaded.room;
        let applied =
            match super::guarded(|| Ok(group.apply(&mut tasks, &loaded.claimable, &mut room))) {
                Ok(applied) => applied,
                Err(e) => {
                    self.rollback(tx).await;
                    return group.fail(&e);
                }
            };
        // The transitions in the order the operations ran.
        let transitions: Vec<_> = applied
            .reports
            .iter()
            .map(|(_, c)| c)
            .chain([&applied.due])
            .chain(applied.claims.iter().map(|(_, c)| c))
            .chain(
                group
                    .creates
                    .iter()
                    .flat_map(|(new, _)| new.iter().map(|n| &n.changes)),
            )
            .flat_map(|c| c.transitions.iter().cloned())
            .collect();
        let edits: Vec<Edit<'_>> = tasks
            .list
            .iter()
            .map(|(before, after, ready)| Edit {
                before: Some(before),
                after,
                ready,
            })
            .chain(group.creates.iter().flat_map(|(new, _)| {
                new.iter().map(|n| Edit {
                    before: None,
                    after: &n.record,
                    ready: &n.ready,
                })
            }))
            .collect();
        let buckets: Vec<_> = applied
            .claims
            .iter()
            .flat_map(|(_, c)| c.buckets.iter().cloned())
            .collect();
        let logs = applied.reports.iter().flat_map(|(_, c)| &c.logs);
        let (rows, revisions) = rows_of(&edits, group.latest, &transitions, &buckets, logs);
        // Other engines are woken for steps made ready and not claimed here (a lone writer
        // has no others to wake).
        let unclaimed = tasks
            .list
            .iter()
            .any(|(_, after, ready)| ready.0.iter().any(|&index| after.is_claimable(index)))
            || group
                .creates
                .iter()
                .flat_map(|(new, _)| new)
                .any(|n| !n.ready.0.is_empty());
        let freed = applied.reports.iter().any(|(_, c)| c.freed)
            || applied.due.freed
            || applied.claims.iter().any(|(_, c)| c.freed);
        let notify = !B::ONE_WRITER && super::wakes_workers(unclaimed || freed, &transitions);
        let written = self.commit(tx, Some((&rows, notify))).await;
        drop(rows);
        drop(edits);
        match written {
            Ok(created) => {
                let mut revisions = revisions.into_iter();
                for ((_, after, _), revision) in tasks.list.into_iter().zip(revisions.by_ref()) {
                    if let Some(revision) = revision {
                        self.cache.put(revision, after, B::ONE_WRITER);
                    }
                }
                group.answer(applied, revisions, &created, &self.cache);
            }
            Err(e) => group.fail(&e),
        }
    }

    /// The group's reads: the write transaction begun with the database's data version and
    /// the claimable steps for each handler filter, then the tasks the group touches that this
    /// writer does not hold as the database does. A group of creates alone reads nothing.
    async fn group_load(
        &self,
        tx: &mut Tx<'_, B>,
        group: &mut Group,
        clock: Option<Now<'_>>,
    ) -> Result<Loaded> {
        let mut loaded = Loaded {
            records: Vec::new(),
            claimable: Vec::with_capacity(group.filters.len()),
            room: Room::new(ms(group.claim_now)),
        };
        if group.reports.is_empty() && group.claims.is_empty() {
            return Ok(loaded);
        }
        let known = match tx {
            Tx::Writer { w, .. } => w.data_version,
            Tx::Pooled(_) => None,
        };
        let mut ids: Vec<TaskId> = group
            .reports
            .iter()
            .flat_map(|(reports, _, _)| reports.iter().map(|r| r.step.task))
            .collect();
        let mut unreadable = Vec::new();
        if !B::ONE_WRITER && !ids.is_empty() {
            // Where writers run side by side, the tasks reported on are locked first, waiting
            // for them (a report must not skip its task), before the claim's look (which skips
            // the tasks others hold, not these).
            let conn = tx.conn().await?;
            let (records, bad) = self.load_many(conn, &ids, Lock::Wait, &mut false).await?;
            loaded.records.extend(records);
            unreadable.extend(bad);
            ids.clear();
        }
        if let Some(clock) = clock {
            group.claims_at(clock());
        }
        let (conn, begin) = tx.conn_to_begin()?;
        let now = ms(group.claim_now);
        let mut reported: Vec<String> = group
            .reports
            .iter()
            .flat_map(|(reports, _, _)| reports.iter().map(|r| r.step.task.to_string()))
            .collect();
        reported.sort_unstable();
        reported.dedup();
        let mut filters = group.filters.iter();
        let first = filters.next().map(|f| look(f, &reported));
        let (version, rows) = if begin {
            B::begin_group(conn, now, first.as_ref())
                .await
                .map_err(db)?
        } else {
            let rows = match &first {
                Some(first) => B::claimable(conn, now, first).await.map_err(db)?,
                None => Vec::new(),
            };
            (None, rows)
        };
        let mut found = Vec::with_capacity(group.filters.len());
        if first.is_some() {
            found.push(rows);
        }
        for filter in filters {
            let rows = B::claimable(conn, now, &look(filter, &reported))
                .await
                .map_err(db)?;
            found.push(rows);
        }
        for rows in &found {
            loaded.claimable.push(due_keys(rows)?);
        }
        ids.extend(loaded.claimable.iter().flatten().map(|k| k.0));
        ids.sort();
        ids.dedup();
        let held: std::collections::HashSet<TaskId> = loaded.records.iter().map(|t| t.id).collect();
        ids.retain(|id| !held.contains(id));
        // No other connection wrote since this writer's last group: what it cached is current.
        // Otherwise nothing it cached before is (a later group must not trust it either).
        if version.is_none() || version != known {
            self.cache.distrust_written();
        } else {
            ids.retain(|&id| match self.cache.written(id) {
                Some(task) => {
                    loaded.records.push(task);
                    false
                }
                None => true,
            });
        }
        let (records, bad) = self.load_many(conn, &ids, Lock::Skip, &mut false).await?;
        loaded.records.extend(records);
        unreadable.extend(bad);
        // The keys the claims may take: those of the steps found, and those of the tasks
        // reported on (a report lets go of its step's keys; the step it makes ready may take
        // them). Counted last: where writers run side by side, a key's lock is taken once
        // this transaction holds every task row it will (no holder of a key waits for a row).
        let reported: std::collections::HashSet<TaskId> = group
            .reports
            .iter()
            .flat_map(|(reports, _, _)| reports.iter().map(|r| r.step.task))
            .collect();
        let all: Vec<&super::rows::DueStep> = if group.claims.is_empty() {
            Vec::new()
        } else {
            found.iter().flatten().collect()
        };
        let keyed = loaded
            .records
            .iter()
            .filter(|t| !group.claims.is_empty() && reported.contains(&t.id))
            .filter_map(|t| t.gates.as_deref());
        loaded.room = super::room_of::<B>(conn, &all, keyed, now).await?;
        if let (Some(clock), false) = (clock, loaded.room.is_empty()) {
            // Once the keys' locks are held: the claims' records never begin before the
            // let-go they waited for.
            let later = clock().max(group.claim_now);
            group.claims_at(later);
        }
        if !unreadable.is_empty() {
            Self::mark_unreadable(tx.conn().await?, &unreadable, group.latest).await?;
        }
        // The version the writer is at now (what it read and cached is current as of it; its
        // own commit does not change it).
        if let (Tx::Writer { w, .. }, Some(_)) = (tx, version) {
            w.data_version = version;
        }
        Ok(loaded)
    }
}

/// The look for ready steps of one handler filter (handlers, limit) of a group that reports
/// on the tasks `reported`.
fn look<'a>(
    (handlers, limit): &'a (Option<Vec<Arc<str>>>, usize),
    reported: &'a [String],
) -> super::Look<'a> {
    super::Look {
        handlers: handlers.as_deref(),
        limit: (*limit).min(i64::MAX as usize) as i64,
        reported,
    }
}

/// What a group read: its tasks, and per handler filter the steps to look at for claims.
struct Loaded {
    records: Vec<TaskRecord>,
    claimable: Vec<Vec<(TaskId, u32, u32, Due)>>,
    /// The room of the keys the claimable steps name.
    room: Room,
}

/// The loaded tasks: each as loaded, as changed, and the steps that became ready.
struct Tasks {
    list: Vec<(TaskRecord, TaskRecord, ReadySet)>,
    at: HashMap<TaskId, usize>,
}

impl Tasks {
    fn new(records: Vec<TaskRecord>) -> Self {
        let at = records.iter().enumerate().map(|(i, t)| (t.id, i)).collect();
        let list = records
            .into_iter()
            .map(|t| (t.clone(), t, ReadySet::default()))
            .collect();
        Tasks { list, at }
    }

    /// Task `id` as changed so far, with its ready set.
    fn get(&mut self, id: TaskId) -> Option<(&mut TaskRecord, &mut ReadySet)> {
        let i = *self.at.get(&id)?;
        let (_, after, ready) = &mut self.list[i];
        Some((after, ready))
    }
}

/// A group's operations by kind, each in arrival order.
struct Group {
    reports: Vec<(Vec<StepReport>, Timestamp, Reply<Reported>)>,
    claims: Vec<(ClaimRequest, Timestamp, Reply<Claimed>)>,
    creates: Vec<(Vec<NewRecord>, Reply<Vec<Made>>)>,
    /// Each handler filter of the claims, with the steps they want in all.
    filters: Vec<(Option<Vec<Arc<str>>>, usize)>,
    /// The time of the look for expired leases and due retries: the latest claim's.
    claim_now: Timestamp,
    /// The latest time of any operation (when the group's ready steps became ready).
    latest: Timestamp,
}

/// What the operations of a group did, in memory: each report batch's results, what the
/// expired leases and due retries changed, each claim's steps; each with its changes.
struct Applied {
    reports: Vec<(Vec<Result<()>>, Changes)>,
    due: Changes,
    claims: Vec<(Result<Vec<ClaimedStep>>, Changes)>,
}

impl Group {
    fn sort(jobs: Vec<Job>) -> Self {
        let mut group = Group {
            reports: Vec::new(),
            claims: Vec::new(),
            creates: Vec::new(),
            filters: Vec::new(),
            claim_now: Timestamp::default(),
            latest: Timestamp::default(),
        };
        group.add(jobs);
        group
    }

    /// Adds `jobs` to the group.
    fn add(&mut self, jobs: Vec<Job>) {
        let group = self;
        for job in jobs {
            match job {
                Job::Create { tasks, reply } => {
                    for t in &tasks {
                        group.latest = group.latest.max(t.record.of.created_at);
                    }
                    group.creates.push((tasks, reply));
                }
                Job::Report {
                    reports,
                    now,
                    reply,
                } => {
                    group.latest = group.latest.max(now);
                    group.reports.push((reports, now, reply));
                }
                Job::Claim {
                    request,
                    now,
                    reply,
                } => {
                    group.latest = group.latest.max(now);
                    group.claim_now = group.claim_now.max(now);
                    match group
                        .filters
                        .iter_mut()
                        .find(|(h, _)| *h == request.handlers)
                    {
                        Some((_, limit)) => *limit = limit.saturating_add(request.limit),
                        None => group
                            .filters
                            .push((request.handlers.clone(), request.limit)),
                    }
                    group.claims.push((request, now, reply));
                }
            }
        }
    }

    /// The claims made at `now` (read once the group holds what it waited for).
    fn claims_at(&mut self, now: Timestamp) {
        for (_, at, _) in &mut self.claims {
            *at = now;
        }
        if !self.claims.is_empty() {
            self.claim_now = now;
        }
        self.latest = self.latest.max(now);
    }

    /// Answers every operation with `e`.
    fn fail(self, e: &Error) {
        for (_, _, reply) in self.reports {
            let _ = reply.send(Err(again(e)));
        }
        for (_, _, reply) in self.claims {
            let _ = reply.send(Err(again(e)));
        }
        for (_, reply) in self.creates {
            let _ = reply.send(Err(again(e)));
        }
    }

    /// Runs the operations on `tasks` in memory: reports, then expired leases and due
    /// retries, then claims, each from its filter's steps in claim order and then from the
    /// steps made ready in this group.
    fn apply(
        &self,
        tasks: &mut Tasks,
        claimable: &[Vec<(TaskId, u32, u32, Due)>],
        room: &mut Room,
    ) -> Applied {
        let mut made_ready: Vec<(TaskId, u32)> = Vec::new();
        let mut reports = Vec::with_capacity(self.reports.len());
        for (batch, now, _) in &self.reports {
            let mut changes = Changes::default();
            let results: Vec<Result<()>> = batch
                .iter()
                .map(|r| {
                    let Some((t, s)) = tasks.get(r.step.task) else {
                        return Err(Error::TaskNotFound(r.step.task));
                    };
                    t.report_logged(r.clone(), *now, s, &mut changes)
                })
                .collect();
            made_ready.extend(changes.ready.iter().map(|(id, _)| (id.task, id.index)));
            reports.push((results, changes));
        }
        // Expired leases and due retries, once for the group (each filter's look found them).
        let mut due = Changes::default();
        let mut seen = std::collections::HashSet::new();
        for &(task, index, attempt, kind) in claimable.iter().flatten() {
            if kind == Due::Ready || !seen.insert((task, index, kind == Due::Deadline)) {
                continue;
            }
            if let Some((t, s)) = tasks.get(task) {
                due_step(t, (index, attempt, kind), self.claim_now, s, &mut due);
            }
        }
        made_ready.extend(due.ready.iter().map(|(id, _)| (id.task, id.index)));
        // What the reports and expired leases let go of is free for the claims.
        for c in reports.iter().map(|(_, c)| c).chain([&due]) {
            for tr in &c.transitions {
                if let Some(slot) = tasks.get(tr.task_id).and_then(|(t, _)| t.lets_go(tr)) {
                    room.release(&slot);
                }
            }
            for slot in &c.let_go {
                room.release(slot);
            }
        }
        let mut claims = Vec::with_capacity(self.claims.len());
        // A claim runs after the group's reports: its records never begin before theirs (a
        // key a report let go of may be what it takes).
        let reported_by = self.reports.iter().map(|(_, at, _)| *at).max();
        for (request, now, _) in &self.claims {
            let now = &reported_by.map_or(*now, |at| at.max(*now));
            let mut changes = Changes::default();
            let filter = self
                .filters
                .iter()
                .position(|(h, _)| *h == request.handlers);
            let candidates = filter
                .and_then(|f| claimable.get(f))
                .into_iter()
                .flatten()
                .map(|&(task, index, _, _)| (task, index))
                .chain(made_ready.iter().copied());
            let mut claimed = Ok(Vec::new());
            for (task, index) in candidates {
                let Ok(steps) = &mut claimed else { break };
                if steps.len() >= request.limit {
                    break;
                }
                let Some((t, s)) = tasks.get(task) else {
                    continue;
                };
                if t.is_claimable(index)
                    && request.wants(&t.spec(index).handler)
                    && crate::store::admitted(t, index, room, &mut changes)
                {
                    match t.claim(index, &request.worker_id, *now, s, &mut changes) {
                        Ok(step) => steps.push(step),
                        Err(e) => claimed = Err(e),
                    }
                }
            }
            claims.push((claimed, changes));
        }
        Applied {
            reports,
            due,
            claims,
        }
    }

    /// Answers each operation of a committed group: `revisions` are the new tasks' (in
    /// order), `created` the ids of those written (the others' keys were taken).
    fn answer(
        self,
        applied: Applied,
        mut revisions: impl Iterator<Item = Option<i64>>,
        created: &[String],
        cache: &super::RecordCache,
    ) {
        for ((_, _, reply), answer) in self.reports.into_iter().zip(applied.reports) {
            let _ = reply.send(Ok(answer));
        }
        let mut due = Some(applied.due);
        for ((_, _, reply), (claimed, changes)) in self.claims.into_iter().zip(applied.claims) {
            // The first claim publishes what the look for leases and retries changed.
            let mut all = due.take().unwrap_or_default();
            all.extend(changes);
            let _ = reply.send(claimed.map(|steps| (steps, all)));
        }
        for (new, reply) in self.creates {
            let made = made(new, revisions.by_ref(), created, cache, true);
            let _ = reply.send(Ok(made));
        }
    }
}

/// What became of each new task of `new`: written when its id is in `created` (then cached at
/// its revision, the next of `revisions`; as this process's writer wrote it when
/// `written_here`), else left out for its taken idempotency key.
pub(super) fn made(
    new: Vec<NewRecord>,
    revisions: impl IntoIterator<Item = Option<i64>>,
    created: &[String],
    cache: &super::RecordCache,
    written_here: bool,
) -> Vec<Made> {
    let created: std::collections::HashSet<&str> = created.iter().map(|s| &**s).collect();
    new.into_iter()
        .zip(revisions)
        .map(|(n, revision)| {
            let id = n.record.id;
            let written = created.contains(&*id.to_string());
            let key = if written {
                if let Some(revision) = revision {
                    cache.put(revision, n.record, written_here);
                }
                None
            } else {
                Some((
                    n.record.of.namespace.clone(),
                    n.record.of.name.clone(),
                    n.record.idempotency_key.clone().unwrap_or_default(),
                ))
            };
            Made {
                id,
                changes: n.changes,
                key,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use serde_json::json;

    use super::*;
    use crate::store::{NewTask, Outcome, Store};
    use crate::template::TaskTemplate;

    const CHAIN: &str = "namespace: g\nname: chain\nversion: 1.0.0\nsteps:\n  - name: a\n    handler: h\n  - name: b\n    handler: h\n    depends_on: [a]\n";

    async fn store() -> (
        Arc<SqlStore<super::super::sqlite::Sqlite>>,
        Arc<crate::template::TaskGraph>,
    ) {
        let path = std::env::temp_dir().join(format!("tasker-group-{}.db", TaskId::new()));
        let url = format!("sqlite://{}", path.display());
        let store = Arc::new(
            SqlStore::<super::super::sqlite::Sqlite>::open(&url, Arc::default())
                .await
                .unwrap(),
        );
        Committer::start(&store);
        let graph = Arc::new(TaskTemplate::from_yaml(CHAIN).unwrap().compile().unwrap());
        store.save_template(&graph).await.unwrap();
        (store, graph)
    }

    fn request(limit: usize) -> ClaimRequest {
        ClaimRequest {
            worker_id: "w".into(),
            handlers: None,
            limit,
        }
    }

    /// Holds the committer as if a group were running: jobs made meanwhile queue, and all
    /// of them run as the next group once it is dropped.
    fn hold<B: Backend>(store: &SqlStore<B>) -> Turn<'_> {
        let shared = &store.committer.shared;
        shared.queue.lock().busy = true;
        Turn(shared)
    }

    /// Polls `f` once: far enough for its job to be queued.
    async fn queue<F: std::future::Future + Unpin>(f: &mut F) {
        let _ = tokio::time::timeout(std::time::Duration::ZERO, f).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_creates_share_groups() {
        let (store, graph) = store().await;
        let tasks: Vec<NewTask> = (0..40).map(|_| NewTask::new("g", "chain")).collect();
        let made = futures::future::join_all(
            tasks
                .iter()
                .map(|t| store.create_task(graph.clone(), t, chrono::Utc::now())),
        )
        .await;
        let ids: std::collections::HashSet<TaskId> =
            made.into_iter().map(|c| c.unwrap().task_id).collect();
        assert_eq!(ids.len(), 40);
        let groups = store.committer.shared.groups.load(Relaxed);
        assert!(groups < 10, "40 creates made at once took {groups} groups");
        let claimed = store
            .claim(&request(100), &chrono::Utc::now)
            .await
            .unwrap()
            .0;
        assert_eq!(claimed.len(), 40, "every task's first step is claimable");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_takes_the_step_a_report_of_its_group_made_ready() {
        let (store, graph) = store().await;
        let task = store
            .create_task(graph, &NewTask::new("g", "chain"), chrono::Utc::now())
            .await
            .unwrap()
            .task_id;
        let a = store.claim(&request(1), &chrono::Utc::now).await.unwrap().0;
        assert_eq!(a.len(), 1);
        let before = store.committer.shared.groups.load(Relaxed);

        let turn = hold(&store);
        let report = StepReport::new(a[0].step_id, a[0].attempt, Outcome::Complete(json!("done")));
        let mut reported = Box::pin(store.report_many(vec![report], chrono::Utc::now()));
        queue(&mut reported).await;
        let five = request(5);
        let mut claim = Box::pin(store.claim(&five, &chrono::Utc::now));
        queue(&mut claim).await;
        drop(turn);
        let (results, _) = reported.await.unwrap();
        assert!(results[0].is_ok());
        let (claimed, changes) = claim.await.unwrap();
        assert_eq!(
            store.committer.shared.groups.load(Relaxed),
            before + 1,
            "one group"
        );
        assert_eq!(claimed.len(), 1, "b became ready in the same transaction");
        assert_eq!((claimed[0].step_id.task, &*claimed[0].name), (task, "b"));
        assert_eq!(claimed[0].inputs.0[0].1.as_ref(), &json!("done"));
        assert!(!changes.transitions.is_empty());
        let view = store.task(task).await.unwrap();
        assert_eq!(
            view.step("b").unwrap().status,
            crate::state::StepState::InProgress
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_key_twice_in_a_group_makes_one_task() {
        let (store, graph) = store().await;
        let keyed = NewTask::new("g", "chain").idempotency_key("k");
        let turn = hold(&store);
        let mut first = Box::pin(store.create_task(graph.clone(), &keyed, chrono::Utc::now()));
        queue(&mut first).await;
        let mut second = Box::pin(store.create_task(graph.clone(), &keyed, chrono::Utc::now()));
        queue(&mut second).await;
        drop(turn);
        let (first, second) = (first.await.unwrap(), second.await.unwrap());
        assert!(first.created && !second.created);
        assert_eq!(first.task_id, second.task_id);
        let all = store.list_tasks(&Default::default()).await.unwrap();
        assert_eq!(all.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_operation_whose_caller_left_still_runs_with_its_group() {
        let (store, graph) = store().await;
        let new = NewTask::new("g", "chain");
        let turn = hold(&store);
        let mut left = Box::pin(store.create_task(graph.clone(), &new, chrono::Utc::now()));
        queue(&mut left).await;
        drop(left);
        drop(turn);
        store
            .create_task(graph, &new, chrono::Utc::now())
            .await
            .unwrap();
        let all = store.list_tasks(&Default::default()).await.unwrap();
        assert_eq!(all.len(), 2, "the create whose caller left was written too");
    }
}
