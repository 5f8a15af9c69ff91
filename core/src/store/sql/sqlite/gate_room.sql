-- What holds each key a claim may take, one row per key (in the write transaction; a step
-- whose lease ran out holds its key until the claim gives it back): the steps in progress
-- with each step key of the JSON array $1, the tasks that hold each task key of $2 (key_hold
-- 1), and the bucket of each rate key of $3 (none yet: NULL tokens).
SELECT 'step' AS kind, k.value AS key, (SELECT count(*) FROM tasker_workflow_steps
        WHERE concurrency_key = k.value AND status = 'in_progress') AS n,
    NULL AS tokens, NULL AS at_ms
FROM json_each($1) AS k
UNION ALL
SELECT 'task', k.value, (SELECT count(*) FROM tasker_tasks
        WHERE concurrency_key = k.value AND key_hold = 1), NULL, NULL
FROM json_each($2) AS k
UNION ALL
SELECT 'rate', k.value, 0, b.tokens, b.at_ms
FROM json_each($3) AS k LEFT JOIN tasker_rate_limits b ON b.key = k.value
