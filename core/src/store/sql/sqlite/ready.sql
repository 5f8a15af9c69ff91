-- Claimable steps in claim order: for the handlers in the JSON array $1 (any when NULL), at most $2.
SELECT s.task_id, s.step_index, s.attempts
FROM tasker_workflow_steps s JOIN tasker_tasks t ON t.task_id = s.task_id
WHERE s.status = 'pending' AND s.unfinished_parents = 0 AND s.failed_required_parents = 0
  AND t.status IN ('pending', 'in_progress')
  AND ($1 IS NULL OR s.handler IN (SELECT value FROM json_each($1)))
ORDER BY s.priority DESC, s.ready_at, s.task_id, s.step_index
LIMIT $2
