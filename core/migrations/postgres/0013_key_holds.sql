-- Who holds a template-level concurrency key is the task's own column, not read from its
-- status: key_hold is 0 while the task does not hold its key (before its first claim, once it
-- finished), 1 while it holds it (from the claim that found it room until it finishes, paused
-- or not), 2 when it runs under its parent's hold of the same key. Only 1 counts.
ALTER TABLE tasker_tasks ADD COLUMN key_hold BIGINT NOT NULL DEFAULT 0;
-- The tasks that held their key before: in progress, or paused after one of their steps ran (a
-- task paused before it started holds none now).
UPDATE tasker_tasks SET key_hold = 1
WHERE concurrency_key IS NOT NULL AND (status = 'in_progress' OR (status = 'paused'
    AND EXISTS (SELECT 1 FROM tasker_workflow_steps s
        WHERE s.task_id = tasker_tasks.task_id AND s.attempts > 0)));
-- Unfinished children of a parent with the same key run under its hold (one that waited for
-- room its parent held runs now).
UPDATE tasker_tasks SET key_hold = 2
WHERE task_id IN (SELECT c.task_id FROM tasker_tasks c JOIN tasker_tasks p
        ON p.task_id = (c.parent::json->>'task_id') AND p.concurrency_key = c.concurrency_key
    WHERE c.parent IS NOT NULL AND c.status IN ('pending', 'in_progress', 'paused'));
DROP INDEX tasker_tasks_holding;
CREATE INDEX tasker_tasks_holding ON tasker_tasks (concurrency_key) WHERE key_hold = 1;
