-- Up to $3 steps waiting for the child tasks they started, after step ($1, $2) (NULL: from the
-- start) in task and index order, read from their partial index.
SELECT task_id, step_index, attempts FROM tasker_workflow_steps
WHERE status = 'waiting_for_children'
  AND ($1 IS NULL OR task_id > $1 OR (task_id = $1 AND step_index > $2))
ORDER BY task_id, step_index
LIMIT $3
