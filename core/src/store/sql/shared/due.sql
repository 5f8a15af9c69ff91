-- What falls due at $1: steps whose lease ran out ('lease'), retries and the starts of tasks
-- to run later ('retry': the roots waiting for them), and tasks past their deadline
-- ('deadline', step 0); none with its keys (a claim takes the keyed ones when next
-- it finds them ready).
SELECT * FROM (
    SELECT 'lease' AS due, task_id, step_index, attempts,
        NULL AS ckey, NULL AS tkey, NULL AS rkey FROM tasker_workflow_steps
    WHERE status = 'in_progress' AND lease_expires_at <= $1
    ORDER BY lease_expires_at LIMIT 500
) AS leases
UNION ALL
SELECT * FROM (
    SELECT 'retry' AS due, task_id, step_index, attempts,
        NULL AS ckey, NULL AS tkey, NULL AS rkey FROM tasker_workflow_steps
    WHERE status = 'waiting_for_retry' AND next_attempt_at <= $1
    ORDER BY next_attempt_at LIMIT 500
) AS retries
UNION ALL
SELECT * FROM (
    SELECT 'retry' AS due, task_id, step_index, attempts,
        NULL AS ckey, NULL AS tkey, NULL AS rkey FROM tasker_workflow_steps
    WHERE status = 'pending' AND next_attempt_at <= $1
    ORDER BY next_attempt_at LIMIT 500
) AS starts
UNION ALL
SELECT * FROM (
    SELECT 'deadline' AS due, task_id, 0 AS step_index, 0 AS attempts,
        NULL AS ckey, NULL AS tkey, NULL AS rkey FROM tasker_tasks
    WHERE deadline_at IS NOT NULL AND deadline_at <= $1
        AND status IN ('pending', 'in_progress', 'paused')
    ORDER BY deadline_at LIMIT 500
) AS deadlines
