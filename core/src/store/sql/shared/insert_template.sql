INSERT INTO tasker_named_tasks (namespace, name, version, template, created_at)
VALUES ($1, $2, $3, $4, $5)
