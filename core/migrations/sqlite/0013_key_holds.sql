-- Who holds a template-level concurrency key is the task's own column, not read from its
-- status: key_hold is 0 while the task does not hold its key (before its first claim, once it
-- finished), 1 while it holds it (from the claim that found it room until it finishes, paused
-- or not), 2 when it runs under its parent's hold of the same key. Only 1 counts. The tasks
-- that held their key before this migration (in progress or paused) hold it still.
ALTER TABLE tasker_tasks ADD COLUMN key_hold INTEGER NOT NULL DEFAULT 0;
UPDATE tasker_tasks SET key_hold = 1
    WHERE concurrency_key IS NOT NULL AND status IN ('in_progress', 'paused');
DROP INDEX tasker_tasks_holding;
CREATE INDEX tasker_tasks_holding ON tasker_tasks (concurrency_key) WHERE key_hold = 1;
