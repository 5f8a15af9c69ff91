-- Every schedule whose next tick is at or before $1 (NULL: every schedule), by name.
SELECT spec, next_at, last_task_id, created_at FROM tasker_schedules
WHERE $1 IS NULL OR next_at <= $1
ORDER BY name
