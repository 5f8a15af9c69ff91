-- The state of each task of the ids $1, in id order.
SELECT task_id, status FROM tasker_tasks WHERE task_id = ANY($1) ORDER BY task_id
