-- Claimable steps in claim order, after due.sql (whose $1 is now): for the handlers in the JSON
-- array $2 (any when NULL), at most $3.
SELECT 'ready' AS due, s.task_id, s.step_index, s.attempts
FROM tasker_workflow_steps s JOIN tasker_tasks t ON t.task_id = s.task_id
WHERE s.status = 'pending' AND s.unfinished_parents = 0 AND s.failed_required_parents = 0
  AND t.status IN ('pending', 'in_progress')
  AND ($2 IS NULL OR s.handler IN (SELECT value FROM json_each($2)))
ORDER BY s.priority DESC, s.ready_at, s.task_id, s.step_index
LIMIT $3
