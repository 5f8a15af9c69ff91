-- Up to $3 tasks in a state of the JSON array $2 that finished before $1.
SELECT task_id FROM tasker_tasks
WHERE status IN (SELECT value FROM json_each($2)) AND completed_at < $1
LIMIT $3
