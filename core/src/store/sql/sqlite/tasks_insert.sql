-- New task rows: the tuple after VALUES is repeated once per row. A task whose idempotency key
-- is taken is left out, and so are its steps and transitions (steps.sql, transitions.sql).
INSERT INTO tasker_tasks (task_id, namespace, name, version, status, priority, context,
    idempotency_key, unfinished_steps, created_at, updated_at, completed_at, revision, parent,
    deadline_at, concurrency_key, concurrency_limit, traceparent, trace_parent, key_hold)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING
