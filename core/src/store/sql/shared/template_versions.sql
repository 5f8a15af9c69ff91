SELECT version FROM tasker_named_tasks WHERE namespace = $1 AND name = $2
