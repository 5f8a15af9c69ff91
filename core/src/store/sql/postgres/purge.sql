-- Up to $3 tasks in a state of $2 that finished before $1 — not a child whose parent still
-- runs (its parent step still reads it) — with their transitions, log lines, webhook deliveries and steps, in one
-- statement: how many tasks.
WITH doomed AS (
    SELECT t.task_id FROM tasker_tasks t
    WHERE t.status = ANY($2) AND t.completed_at < $1
      AND NOT EXISTS (
          SELECT 1 FROM tasker_tasks p
          WHERE t.parent IS NOT NULL AND p.task_id = (t.parent::json ->> 'task_id')
            AND p.status IN ('pending', 'in_progress', 'paused'))
    ORDER BY t.task_id
    LIMIT $3
    FOR UPDATE OF t SKIP LOCKED
), transitions AS (
    DELETE FROM tasker_transitions WHERE task_id IN (SELECT task_id FROM doomed)
), logs AS (
    DELETE FROM tasker_step_logs WHERE task_id IN (SELECT task_id FROM doomed)
), deliveries AS (
    DELETE FROM tasker_webhook_deliveries WHERE task_id IN (SELECT task_id FROM doomed)
), steps AS (
    DELETE FROM tasker_workflow_steps WHERE task_id IN (SELECT task_id FROM doomed)
), tasks AS (
    DELETE FROM tasker_tasks WHERE task_id IN (SELECT task_id FROM doomed) RETURNING 1
)
SELECT COUNT(*) FROM tasks
