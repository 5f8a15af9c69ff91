-- New webhook deliveries of tasks whose rows exist: the tuple after VALUES is repeated once per
-- row.
INSERT INTO tasker_webhook_deliveries (id, task_id, event, hook, lease_ms, body, next_attempt_at,
    created_at)
SELECT * FROM (VALUES (?, ?, ?, ?, ?, ?, ?, ?)) AS v
WHERE EXISTS (SELECT 1 FROM tasker_tasks t WHERE t.task_id = v.column2)
