-- Schedule $1 moved from tick $2 on to $3 (with $4, the task its last tick made, unless NULL)
-- at $5, unless another engine moved it first.
UPDATE tasker_schedules
SET next_at = $3, last_task_id = COALESCE($4, last_task_id), updated_at = $5
WHERE name = $1 AND next_at = $2
