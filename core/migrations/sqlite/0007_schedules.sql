-- Durable cron schedules: each registered schedule (its spec as JSON), its next tick, and the
-- task its last tick made (for overlap: skip). Engines fire the due ones, each moving next_at
-- on only if no other engine did first.
CREATE TABLE tasker_schedules (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    next_at INTEGER,
    last_task_id TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX tasker_schedules_next_at ON tasker_schedules (next_at) WHERE next_at IS NOT NULL;
