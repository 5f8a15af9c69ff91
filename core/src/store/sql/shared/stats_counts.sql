-- Tasks and steps per status, the retries and lease expiries in the trail, and the steps that
-- completed after more than one attempt: (kind, key, n).
SELECT 'task' AS kind, status AS key, COUNT(*) AS n FROM tasker_tasks GROUP BY status
UNION ALL
SELECT 'step', status, COUNT(*) FROM tasker_workflow_steps GROUP BY status
UNION ALL
SELECT 'event', event, COUNT(*) FROM tasker_transitions
WHERE event IN ('schedule_retry', 'lease_expired') GROUP BY event
UNION ALL
SELECT 'recovered', '', COUNT(*) FROM tasker_workflow_steps
WHERE status = 'complete' AND attempts > 1
