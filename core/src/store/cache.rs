//! The SQL stores' cache of task aggregates, checked by revision.
//!
//! Every write of a task's rows gives the task row a new random `revision`. A store that loads
//! a task reads its row (under the task's lock when it will write) and, when the row's revision
//! is the one it cached, reuses the cached [`TaskRecord`] instead of reading and decoding every
//! step row. Random revisions make a stale entry harmless: a write that was rolled back, or made
//! by another process, leaves the row with a revision this cache never holds for other
//! contents, so the next load reads the rows again.
//!
//! Finished tasks are not kept; past [`MAX_STEPS`] cached steps the cache starts afresh.

use std::collections::HashMap;

use parking_lot::Mutex;

use super::record::TaskRecord;
use crate::ids::TaskId;

/// The most steps, summed over the cached tasks, kept before the cache is emptied.
pub const MAX_STEPS: usize = 1_000_000;

/// Task aggregates by id, each with the revision of the rows it was read from or written as.
#[derive(Debug)]
pub(crate) struct RecordCache {
    inner: Mutex<Inner>,
    /// The most steps kept, summed over the cached tasks.
    limit: usize,
}

impl Default for RecordCache {
    fn default() -> Self {
        RecordCache::with_limit(MAX_STEPS)
    }
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<TaskId, (i64, TaskRecord)>,
    steps: usize,
}

impl RecordCache {
    /// A cache that keeps at most `limit` steps.
    pub fn with_limit(limit: usize) -> Self {
        RecordCache {
            inner: Mutex::default(),
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
            Some((cached, record)) if *cached == revision => Some(record.clone()),
            _ => None,
        }
    }

    /// Caches `record` as its rows are at `revision` (a finished task, or rows at revision 0,
    /// written by a version without revisions, are dropped instead).
    pub fn put(&self, revision: i64, record: TaskRecord) {
        let mut inner = self.inner.lock();
        if let Some((_, old)) = inner.entries.remove(&record.id) {
            inner.steps -= old.states.len();
        }
        if record.status.is_finished() || revision == 0 {
            return;
        }
        if inner.steps + record.states.len() > self.limit {
            inner.entries.clear();
            inner.steps = 0;
        }
        inner.steps += record.states.len();
        inner.entries.insert(record.id, (revision, record));
    }

    /// The number of cached tasks.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }
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
        cache.put(7, task);
        assert!(cache.get(id, 7).is_some());
        assert!(cache.get(id, 8).is_none(), "rows at another revision");
        assert!(cache.get(TaskId::new(), 7).is_none(), "another task");
    }

    #[test]
    fn finished_tasks_are_dropped_and_a_full_cache_starts_afresh() {
        let cache = RecordCache::default();
        let mut task = record(2);
        let id = task.id;
        cache.put(1, task.clone());
        task.status = TaskState::Complete;
        cache.put(2, task);
        assert!(cache.get(id, 1).is_none() && cache.get(id, 2).is_none());
        assert_eq!(cache.len(), 0);

        let cache = RecordCache::with_limit(100);
        for _ in 0..4 {
            cache.put(RecordCache::new_revision(), record(26));
        }
        assert_eq!(cache.len(), 1, "the fourth task emptied the cache first");
    }

    #[test]
    fn rows_at_revision_zero_are_never_taken_from_the_cache() {
        let cache = RecordCache::default();
        let task = record(1);
        let id = task.id;
        cache.put(0, task);
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
