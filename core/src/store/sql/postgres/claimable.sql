-- The steps a claim looks at, in one query: claimable ones in claim order ('ready') for the
-- handlers $2 (any when NULL), at most $3, skipping the tasks another transaction holds (so
-- that several engines do not all pick, and then skip, the same hot tasks); steps whose lease
-- ran out ('lease') and retries that are due ('retry') at $1.
SELECT * FROM (
    SELECT 'ready' AS due, s.task_id, s.step_index, s.attempts
    FROM tasker_workflow_steps s JOIN tasker_tasks t ON t.task_id = s.task_id
    WHERE s.status = 'pending' AND s.unfinished_parents = 0 AND s.failed_required_parents = 0
      AND t.status IN ('pending', 'in_progress')
      AND ($2::text[] IS NULL OR s.handler = ANY($2))
    ORDER BY s.priority DESC, s.ready_at, s.task_id, s.step_index
    LIMIT $3
    FOR UPDATE OF t SKIP LOCKED
) AS ready
UNION ALL
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
