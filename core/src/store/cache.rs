//! The SQL stores' cache of task aggregates, checked by revision.
//!
//! Every write of a task's rows gives the task row a new random `revision`. A store that loads
//! a task reads its row (under the task's lock when it will write) and, when the row's revision
//! is the one it cached, reuses the cached [`TaskRecord`] instead of reading and decoding every
//! step row. Random revisions make a stale entry harmless: a write that was rolled back, or made
//! by another process, leaves the row with a revision this cache never holds for other
//! contents, so the next load reads the rows again.
//!
//! An entry put by this process's writer ([`RecordCache::put`] with `written`: rows it just
//! wrote or read under the write lock) is also as the database holds it for as long as no
//! other connection writes — which SQLite tells ([`RecordCache::written`]); an entry put by a
//! reader may be older than one the writer put a moment before, and is never taken as current
//! that way.
//!
//! Finished tasks are not kept; past [`MAX_BYTES`] (the cached tasks' estimated memory:
//! contexts and results included, each up to 1 MiB) the cache starts afresh.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::record::TaskRecord;
use crate::ids::TaskId;

/// The most bytes, estimated over the cached tasks, kept before the cache is emptied.
pub const MAX_BYTES: usize = 256 << 20;

/// What one step of a cached task costs besides its result (its record, state and counters).
const STEP_BYTES: usize = 192;

/// Task aggregates by id, each with the revision of the rows it was read from or written as.
#[derive(Debug)]
pub(crate) struct RecordCache {
    inner: Mutex<Inner>,
    /// The most bytes kept, estimated over the cached tasks.
    limit: usize,
}

impl Default for RecordCache {
    fn default() -> Self {
        RecordCache::with_limit(MAX_BYTES)
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Each task's revision, record, estimated size and the epoch in which this process's
    /// writer put it (0: a reader put it).
    entries: HashMap<TaskId, (i64, TaskRecord, usize, u64)>,
    bytes: usize,
    /// Entries the writer put in an earlier epoch are no longer taken as written.
    epoch: u64,
}

impl RecordCache {
    /// A cache that keeps at most `limit` bytes (estimated).
    pub fn with_limit(limit: usize) -> Self {
        RecordCache {
            inner: Mutex::new(Inner {
                epoch: 1,
                ..Inner::default()
            }),
            limit,
        }
    }

    /// A fresh revision for a write: random from the operating system (a generator seeded in
    /// the process would repeat its numbers in every child forked from it, and two processes
    /// writing the same revision with different contents would read each other's tasks from
    /// their caches), positive, never 0 (the revision of rows written before revisions
    /// existed, which is never cached).
    pub fn new_revision() -> i64 {
        let bits = getrandom::u64().unwrap_or_else(|_| {
            // No OS randomness (it never fails on Linux): the process id tells forked
            // processes apart, the time and a local generator tell writes apart.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default();
            (u64::from(std::process::id()) << 40) ^ nanos ^ fastrand::u64(..)
        });
        (bits >> 1).max(1) as i64
    }

    /// A copy of task `id` as cached, when its rows are still at `revision` (never for 0).
    pub fn get(&self, id: TaskId, revision: i64) -> Option<TaskRecord> {
        if revision == 0 {
            return None;
        }
        let inner = self.inner.lock();
        match inner.entries.get(&id) {
            Some((cached, record, _, _)) if *cached == revision => Some(record.clone()),
            _ => None,
        }
    }

    /// Task `id` as this process's writer last wrote or read it under the write lock, when that
    /// is the entry cached (see the module docs for when it is the database's too).
    pub fn written(&self, id: TaskId) -> Option<TaskRecord> {
        let inner = self.inner.lock();
        match inner.entries.get(&id) {
            Some((_, record, _, epoch)) if *epoch != 0 && *epoch == inner.epoch => {
                Some(record.clone())
            }
            _ => None,
        }
    }

    /// No entry put so far is taken as written any more (another connection wrote, or a write
    /// may have committed without its entries being updated); they are still reused at their
    /// revision.
    pub fn distrust_written(&self) {
        self.inner.lock().epoch += 1;
    }

    /// Entry `ids` are no longer taken as written (their rows are about to change).
    pub fn distrust(&self, ids: impl IntoIterator<Item = TaskId>) {
        let mut inner = self.inner.lock();
        for id in ids {
            if let Some(entry) = inner.entries.get_mut(&id) {
                entry.3 = 0;
            }
        }
    }

    /// Caches `record` as its rows are at `revision` (a finished task, or rows at revision 0,
    /// written by a version without revisions, are dropped instead); `written` when this
    /// process's writer wrote the rows or read them under the write lock.
    pub fn put(&self, revision: i64, record: TaskRecord, written: bool) {
        let size = (!record.status.is_finished() && revision != 0).then(|| bytes_of(&record));
        let mut inner = self.inner.lock();
        if let Some((_, _, old, _)) = inner.entries.remove(&record.id) {
            inner.bytes -= old;
        }
        let Some(size) = size else {
            return;
        };
        if size > self.limit {
            return;
        }
        if inner.bytes + size > self.limit {
            inner.entries.clear();
            inner.bytes = 0;
        }
        inner.bytes += size;
        let epoch = if written { inner.epoch } else { 0 };
        inner
            .entries
            .insert(record.id, (revision, record, size, epoch));
    }

    /// The number of cached tasks.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }
}

/// A task's estimated memory: its steps, its context and its results.
fn bytes_of(record: &TaskRecord) -> usize {
    let results: usize = record
        .steps
        .iter()
        .filter_map(|s| s.result.as_deref())
        .map(value_bytes)
        .sum();
    let slices: usize = record.instances.iter().map(|i| value_bytes(&i.batch)).sum();
    STEP_BYTES * record.states.len() + value_bytes(&record.context) + results + slices
}

/// A JSON value's estimated memory: a node's size for each value, plus its strings' bytes.
fn value_bytes(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    let mut bytes = 0;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        bytes += std::mem::size_of::<Value>();
        match v {
            Value::String(s) => bytes += s.len(),
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => {
                for (k, v) in map {
                    bytes += k.len() + std::mem::size_of::<String>();
                    stack.push(v);
                }
            }
            _ => {}
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::state::TaskState;
    use crate::store::{Changes, NewTask};
    use crate::template::TaskTemplate;

    struct NoSchedule;
    impl crate::store::record::Schedule for NoSchedule {}

    fn record(steps: usize) -> TaskRecord {
        let mut yaml = String::from("namespace: c\nname: t\nversion: 1.0.0\nsteps:\n");
        for i in 0..steps {
            yaml.push_str(&format!("  - name: s{i}\n"));
        }
        let graph = Arc::new(TaskTemplate::from_yaml(&yaml).unwrap().compile().unwrap());
        let new = NewTask::new("c", "t").context(json!({}));
        TaskRecord::create(
            TaskId::new(),
            graph,
            &new,
            chrono::Utc::now(),
            &mut NoSchedule,
            &mut Changes::default(),
        )
    }

    #[test]
    fn a_cached_task_is_reused_only_at_its_revision() {
        let cache = RecordCache::default();
        let task = record(3);
        let id = task.id;
        cache.put(7, task, false);
        assert!(cache.get(id, 7).is_some());
        assert!(cache.get(id, 8).is_none(), "rows at another revision");
        assert!(cache.get(TaskId::new(), 7).is_none(), "another task");
    }

    #[test]
    fn only_what_the_writer_put_is_taken_as_written() {
        let cache = RecordCache::default();
        let task = record(2);
        let id = task.id;
        cache.put(1, task.clone(), true);
        assert!(cache.written(id).is_some());
        // A reader's older copy replaces it: it is no longer taken as the writer's.
        cache.put(2, task.clone(), false);
        assert!(cache.written(id).is_none());
        assert!(cache.get(id, 2).is_some(), "still reused at its revision");
        cache.put(3, task.clone(), true);
        assert!(cache.written(id).is_some());
        assert!(cache.written(TaskId::new()).is_none());
        // Another connection wrote: nothing put before is taken as written.
        cache.distrust_written();
        assert!(cache.written(id).is_none());
        assert!(cache.get(id, 3).is_some(), "still reused at its revision");
        cache.put(4, task.clone(), true);
        assert!(cache.written(id).is_some());
        cache.distrust([id]);
        assert!(cache.written(id).is_none());
    }

    #[test]
    fn finished_tasks_are_dropped_and_a_full_cache_starts_afresh() {
        let cache = RecordCache::default();
        let mut task = record(2);
        let id = task.id;
        cache.put(1, task.clone(), false);
        task.status = TaskState::Complete;
        cache.put(2, task, false);
        assert!(cache.get(id, 1).is_none() && cache.get(id, 2).is_none());
        assert_eq!(cache.len(), 0);

        let size = bytes_of(&record(26));
        let cache = RecordCache::with_limit(3 * size + size / 2);
        for _ in 0..4 {
            cache.put(RecordCache::new_revision(), record(26), false);
        }
        assert_eq!(cache.len(), 1, "the fourth task emptied the cache first");
    }

    #[test]
    fn the_budget_counts_contexts_and_results_not_only_steps() {
        let small = bytes_of(&record(1));
        let cache = RecordCache::with_limit(100 * small);
        let mut big = record(1);
        big.context = Arc::new(json!({"blob": "x".repeat(1 << 20)}));
        assert!(bytes_of(&big) > (1 << 20));
        cache.put(1, big, false);
        assert_eq!(
            cache.len(),
            0,
            "one task larger than the whole budget is not kept"
        );
        for _ in 0..10 {
            cache.put(RecordCache::new_revision(), record(1), false);
        }
        assert_eq!(cache.len(), 10);
        let mut heavy = record(1);
        heavy.steps[0].result = Some(Arc::new(json!(vec!["y".repeat(100); 10 * 100])));
        cache.put(2, heavy, false);
        assert!(
            cache.len() < 11,
            "a step's large result counts against the budget"
        );
    }

    #[test]
    fn rows_at_revision_zero_are_never_taken_from_the_cache() {
        let cache = RecordCache::default();
        let task = record(1);
        let id = task.id;
        cache.put(0, task, false);
        assert_eq!(cache.len(), 0);
        assert!(cache.get(id, 0).is_none());
    }

    #[test]
    fn revisions_are_positive_and_do_not_repeat() {
        let drawn: std::collections::HashSet<i64> =
            (0..10_000).map(|_| RecordCache::new_revision()).collect();
        assert_eq!(drawn.len(), 10_000);
        assert!(drawn.iter().all(|&r| r > 0));
    }
}
