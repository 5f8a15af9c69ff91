SELECT task_id FROM tasker_tasks WHERE task_id = $1
