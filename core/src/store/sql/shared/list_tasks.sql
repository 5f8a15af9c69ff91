SELECT task_id FROM tasker_tasks
WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR namespace = $2) AND ($3 IS NULL OR name = $3)
ORDER BY task_id DESC LIMIT $4
