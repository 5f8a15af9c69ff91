-- Step rows, new or changed, of tasks whose rows exist: the tuple after VALUES is repeated once
-- per row.
INSERT INTO tasker_workflow_steps (task_id, step_index, name, handler, status, priority,
    attempts, max_attempts, unfinished_parents, failed_required_parents, ready_at,
    next_attempt_at, lease_owner, lease_expires_at, result, error, started_at, completed_at,
    not_chosen_parents, chosen, of_step, batch, children, concurrency_key, concurrency_limit,
    rate_key)
SELECT * FROM (VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)) AS v
WHERE EXISTS (SELECT 1 FROM tasker_tasks t WHERE t.task_id = v.column1)
ON CONFLICT (task_id, step_index) DO UPDATE SET
    status = excluded.status, attempts = excluded.attempts,
    max_attempts = excluded.max_attempts, unfinished_parents = excluded.unfinished_parents,
    failed_required_parents = excluded.failed_required_parents,
    ready_at = COALESCE(excluded.ready_at, tasker_workflow_steps.ready_at),
    next_attempt_at = excluded.next_attempt_at, lease_owner = excluded.lease_owner,
    lease_expires_at = excluded.lease_expires_at, result = excluded.result,
    error = excluded.error, started_at = excluded.started_at,
    completed_at = excluded.completed_at, not_chosen_parents = excluded.not_chosen_parents,
    chosen = excluded.chosen, of_step = excluded.of_step,
    batch = COALESCE(excluded.batch, tasker_workflow_steps.batch), children = excluded.children
