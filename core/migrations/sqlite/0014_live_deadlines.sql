-- A failed task keeps its deadline (retry_task reopens it under the same one), so the index of
-- deadlines still to watch, and the next-due time read from it, hold unfinished tasks only: a
-- failed task's past deadline made every idle worker look again at once, for ever.
DROP INDEX tasker_tasks_deadline;
CREATE INDEX tasker_tasks_deadline ON tasker_tasks (deadline_at)
    WHERE deadline_at IS NOT NULL AND status IN ('pending', 'in_progress', 'paused');
