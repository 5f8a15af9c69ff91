-- The task rows of the ids $1, in id order.
SELECT * FROM tasker_tasks WHERE task_id = ANY($1) ORDER BY task_id
