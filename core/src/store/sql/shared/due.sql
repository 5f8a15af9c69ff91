-- Steps whose lease ran out ('lease') and retries that are due ('retry') at $1.
SELECT * FROM (
    SELECT 'lease' AS due, task_id, step_index, attempts FROM tasker_workflow_steps
    WHERE status = 'in_progress' AND lease_expires_at <= $1
    ORDER BY lease_expires_at LIMIT 500
) AS leases
UNION ALL
SELECT * FROM (
    SELECT 'retry' AS due, task_id, step_index, attempts FROM tasker_workflow_steps
    WHERE status = 'waiting_for_retry' AND next_attempt_at <= $1
    ORDER BY next_attempt_at LIMIT 500
) AS retries
