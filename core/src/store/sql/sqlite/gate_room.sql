-- What holds each key a claim may take at $4 (in the write transaction): the steps in
-- progress with a step key of the JSON array $1, the tasks in progress or paused with a task
-- key of $2, and the buckets of the rate keys of $3.
SELECT 'step' AS kind, concurrency_key AS key, count(*) AS n, NULL AS tokens, NULL AS at_ms
FROM tasker_workflow_steps
WHERE concurrency_key IN (SELECT value FROM json_each($1)) AND status = 'in_progress'
  AND lease_expires_at > $4
GROUP BY concurrency_key
UNION ALL
SELECT 'task', concurrency_key, count(*), NULL, NULL FROM tasker_tasks
WHERE concurrency_key IN (SELECT value FROM json_each($2)) AND status IN ('in_progress', 'paused')
GROUP BY concurrency_key
UNION ALL
SELECT 'rate', key, 0, tokens, at_ms FROM tasker_rate_limits
WHERE key IN (SELECT value FROM json_each($3))
