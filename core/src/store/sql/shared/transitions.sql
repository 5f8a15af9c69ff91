SELECT * FROM tasker_transitions WHERE task_id = $1 ORDER BY id
