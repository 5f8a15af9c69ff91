-- What holds each key a claim may take at $4 (read after gate_lock.sql, so the claims that
-- held the keys before are seen): the steps in progress with step key in $1, the tasks in
-- progress or paused with task key in $2, and the buckets of rate keys $3.
SELECT 'step' AS kind, concurrency_key AS key, count(*) AS n, NULL::float8 AS tokens,
    NULL::int8 AS at_ms
FROM tasker_workflow_steps
WHERE concurrency_key = ANY($1::text[]) AND status = 'in_progress' AND lease_expires_at > $4
GROUP BY concurrency_key
UNION ALL
SELECT 'task', concurrency_key, count(*), NULL, NULL FROM tasker_tasks
WHERE concurrency_key = ANY($2::text[]) AND status IN ('in_progress', 'paused')
GROUP BY concurrency_key
UNION ALL
SELECT 'rate', key, 0, tokens, at_ms FROM tasker_rate_limits WHERE key = ANY($3::text[])
