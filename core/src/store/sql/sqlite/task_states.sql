-- The state of each task whose id is in the JSON array $1, in id order.
SELECT task_id, status FROM tasker_tasks WHERE task_id IN (SELECT value FROM json_each($1))
ORDER BY task_id
