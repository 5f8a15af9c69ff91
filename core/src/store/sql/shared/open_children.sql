-- Up to $2 unfinished tasks that have a parent, after task $1 (NULL: from the start) in id
-- order, each with its parent step (JSON), read from their partial index.
SELECT task_id, parent FROM tasker_tasks
WHERE parent IS NOT NULL AND status IN ('pending', 'in_progress', 'paused')
  AND ($1 IS NULL OR task_id > $1)
ORDER BY task_id
LIMIT $2
