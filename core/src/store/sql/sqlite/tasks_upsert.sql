-- Task rows, new or changed: the tuple after VALUES is repeated once per row.
INSERT INTO tasker_tasks (task_id, namespace, name, version, status, priority, context,
    idempotency_key, unfinished_steps, created_at, updated_at, completed_at, revision, parent,
    deadline_at, concurrency_key, concurrency_limit, traceparent, trace_parent, key_hold)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (task_id) DO UPDATE SET
    status = excluded.status, unfinished_steps = excluded.unfinished_steps,
    updated_at = excluded.updated_at, completed_at = excluded.completed_at,
    revision = excluded.revision, deadline_at = excluded.deadline_at,
    key_hold = excluded.key_hold
