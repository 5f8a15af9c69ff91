SELECT template FROM tasker_named_tasks WHERE namespace = $1 AND name = $2 AND version = $3
