-- The task rows of the ids in the JSON array $1, in id order.
SELECT * FROM tasker_tasks WHERE task_id IN (SELECT value FROM json_each($1)) ORDER BY task_id
