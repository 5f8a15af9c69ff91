-- Ready steps for the handlers in the JSON array $1 (any when NULL), running and waiting steps,
-- and when the next lease runs out or retry is due.
SELECT
    (SELECT COUNT(*) FROM tasker_workflow_steps s JOIN tasker_tasks t ON t.task_id = s.task_id
      WHERE s.status = 'pending' AND s.unfinished_parents = 0 AND s.failed_required_parents = 0
        AND t.status IN ('pending', 'in_progress')
        AND ($1 IS NULL OR s.handler IN (SELECT value FROM json_each($1)))) AS ready,
    (SELECT COUNT(*) FROM tasker_workflow_steps WHERE status = 'in_progress') AS running,
    (SELECT COUNT(*) FROM tasker_workflow_steps WHERE status = 'waiting_for_retry') AS waiting,
    -- Each minimum read from its own partial index (one IN over both would scan the table).
    (SELECT MIN(due) FROM (
      SELECT MIN(next_attempt_at) AS due FROM tasker_workflow_steps
       WHERE status = 'waiting_for_retry'
      UNION ALL
      SELECT MIN(lease_expires_at) FROM tasker_workflow_steps WHERE status = 'in_progress'
    )) AS next_due
