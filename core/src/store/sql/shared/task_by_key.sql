SELECT task_id FROM tasker_tasks WHERE namespace = $1 AND name = $2 AND idempotency_key = $3
