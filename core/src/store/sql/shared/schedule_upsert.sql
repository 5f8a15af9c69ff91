-- Schedule $1 (spec $2, next tick $3) registered at $4, replacing one of the same name.
INSERT INTO tasker_schedules (name, spec, next_at, last_task_id, created_at, updated_at)
VALUES ($1, $2, $3, NULL, $4, $4)
ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, next_at = excluded.next_at,
    updated_at = excluded.updated_at
