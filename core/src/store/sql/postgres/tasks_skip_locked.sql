-- The task rows of the ids $1 that no other transaction holds, locked in id order.
SELECT * FROM tasker_tasks WHERE task_id = ANY($1) ORDER BY task_id FOR UPDATE SKIP LOCKED
