-- Ready steps for the handlers $1 (any when NULL), running and waiting steps (retries, and the
-- roots of tasks to run later), and when the next lease runs out, retry or start is due or
-- deadline passes, or an empty rate bucket has a token again.
SELECT
    (SELECT COUNT(*) FROM tasker_workflow_steps s JOIN tasker_tasks t ON t.task_id = s.task_id
      WHERE s.status = 'pending' AND s.unfinished_parents = 0 AND s.failed_required_parents = 0
        AND t.status IN ('pending', 'in_progress')
        AND ($1::text[] IS NULL OR s.handler = ANY($1))) AS ready,
    (SELECT COUNT(*) FROM tasker_workflow_steps WHERE status = 'in_progress') AS running,
    (SELECT COUNT(*) FROM tasker_workflow_steps WHERE status = 'waiting_for_retry')
      + (SELECT COUNT(*) FROM tasker_workflow_steps
          WHERE status = 'pending' AND next_attempt_at IS NOT NULL) AS waiting,
    -- Each minimum read from its own partial index (one IN over both would scan the table).
    LEAST(
      (SELECT MIN(next_attempt_at) FROM tasker_workflow_steps WHERE status = 'waiting_for_retry'),
      (SELECT MIN(lease_expires_at) FROM tasker_workflow_steps WHERE status = 'in_progress'),
      (SELECT MIN(next_attempt_at) FROM tasker_workflow_steps
        WHERE status = 'pending' AND next_attempt_at IS NOT NULL),
      (SELECT MIN(deadline_at) FROM tasker_tasks
        WHERE deadline_at IS NOT NULL AND status IN ('pending', 'in_progress', 'paused')),
      -- The next token of an empty bucket, when still to come at $2.
      (SELECT MIN(n) FROM (SELECT at_ms + CEIL((1 - tokens) / refill_per_ms)::int8 AS n
        FROM tasker_rate_limits WHERE tokens < 1) AS b WHERE n > $2)
    ) AS next_due
