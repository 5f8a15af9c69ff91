-- Up to $3 tasks in a state of $2 that finished before $1, with their transitions and steps,
-- in one statement: how many tasks.
WITH doomed AS (
    SELECT task_id FROM tasker_tasks
    WHERE status = ANY($2) AND completed_at < $1
    LIMIT $3
    FOR UPDATE
), transitions AS (
    DELETE FROM tasker_transitions WHERE task_id IN (SELECT task_id FROM doomed)
), steps AS (
    DELETE FROM tasker_workflow_steps WHERE task_id IN (SELECT task_id FROM doomed)
), tasks AS (
    DELETE FROM tasker_tasks WHERE task_id IN (SELECT task_id FROM doomed) RETURNING 1
)
SELECT COUNT(*) FROM tasks
