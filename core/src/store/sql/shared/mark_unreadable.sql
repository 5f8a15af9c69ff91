-- A task whose rows cannot be read is set to error, out of every claim ($2: now), and lets go
-- of its template-level key.
UPDATE tasker_tasks SET status = 'error', updated_at = $2, completed_at = $2, revision = revision + 1,
    key_hold = 0
WHERE task_id = $1 AND status <> 'error'
