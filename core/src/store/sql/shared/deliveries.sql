-- Task $1's webhook deliveries, oldest first.
SELECT id, task_id, event, hook, status, attempts, last_error, created_at, delivered_at
FROM tasker_webhook_deliveries WHERE task_id = $1 ORDER BY created_at, id
