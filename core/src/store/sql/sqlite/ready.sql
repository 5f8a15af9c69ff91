-- Claimable steps in claim order, after due.sql (whose $1 is now): for the handlers in the JSON
-- array $2 (any when NULL), at most $3 (the holders of keys among the tasks of the JSON array $4,
-- reported on in the same transaction, not counted).
SELECT 'ready' AS due, s.task_id, s.step_index, s.attempts, s.concurrency_key AS ckey,
    CASE WHEN t.key_hold = 0 THEN t.concurrency_key END AS tkey, s.rate_key AS rkey
FROM tasker_workflow_steps s JOIN tasker_tasks t ON t.task_id = s.task_id
WHERE s.status = 'pending' AND s.unfinished_parents = 0 AND s.failed_required_parents = 0
  AND t.status IN ('pending', 'in_progress')
  AND ($2 IS NULL OR s.handler IN (SELECT value FROM json_each($2)))
  -- Not those whose key is at its limit, or whose bucket is empty.
  AND (s.concurrency_key IS NULL OR (SELECT count(*) FROM tasker_workflow_steps h
      WHERE h.concurrency_key = s.concurrency_key AND h.status = 'in_progress'
        AND h.lease_expires_at > $1 AND h.task_id NOT IN (SELECT value FROM json_each($4)))
      < s.concurrency_limit)
  AND (t.concurrency_key IS NULL OR t.key_hold <> 0 OR (SELECT count(*)
      FROM tasker_tasks h WHERE h.concurrency_key = t.concurrency_key AND h.key_hold = 1
        AND h.task_id NOT IN (SELECT value FROM json_each($4))) < t.concurrency_limit)
  AND (s.rate_key IS NULL OR NOT EXISTS (SELECT 1 FROM tasker_rate_limits b
      WHERE b.key = s.rate_key AND b.tokens + MAX($1 - b.at_ms, 0) * b.refill_per_ms < 1))
ORDER BY s.priority DESC, s.ready_at, s.task_id, s.step_index
LIMIT $3
