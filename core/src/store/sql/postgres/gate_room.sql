-- What holds each key a claim may take, one row per key (read after gate_lock.sql, so the
-- claims that held the keys before are seen; a step whose lease ran out holds its key until
-- the claim gives it back): the steps in progress with each step key of $1, the tasks that
-- hold each task key of $2 (key_hold 1), and the bucket of each rate key of $3 (none
-- yet: NULL tokens).
SELECT 'step' AS kind, k AS key, (SELECT count(*) FROM tasker_workflow_steps
        WHERE concurrency_key = k AND status = 'in_progress') AS n,
    NULL::float8 AS tokens, NULL::int8 AS at_ms
FROM unnest($1::text[]) AS k
UNION ALL
SELECT 'task', k, (SELECT count(*) FROM tasker_tasks
        WHERE concurrency_key = k AND key_hold = 1), NULL, NULL
FROM unnest($2::text[]) AS k
UNION ALL
SELECT 'rate', k, 0, b.tokens, b.at_ms
FROM unnest($3::text[]) AS k LEFT JOIN tasker_rate_limits b ON b.key = k
