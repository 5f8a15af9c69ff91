-- Schedule $1 (spec $2, next tick $3) registered at $4, replacing one of the same name. The
-- same spec registered again (an app that registers its schedules as it starts) keeps its next
-- tick, so that the ticks missed while it was down are still made.
INSERT INTO tasker_schedules (name, spec, next_at, last_task_id, created_at, updated_at)
VALUES ($1, $2, $3, NULL, $4, $4)
ON CONFLICT (name) DO UPDATE SET spec = excluded.spec,
    next_at = CASE WHEN tasker_schedules.spec = excluded.spec THEN tasker_schedules.next_at
                   ELSE excluded.next_at END,
    updated_at = excluded.updated_at
