-- The task rows of the ids $1, locked in id order (two batches never wait for each other in a
-- cycle).
SELECT * FROM tasker_tasks WHERE task_id = ANY($1) ORDER BY task_id FOR UPDATE
