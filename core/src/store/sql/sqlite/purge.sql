-- The tasks whose ids are in the JSON array $1, with their transitions, log lines, webhook
-- deliveries and steps.
DELETE FROM tasker_transitions WHERE task_id IN (SELECT value FROM json_each($1));
DELETE FROM tasker_step_logs WHERE task_id IN (SELECT value FROM json_each($1));
DELETE FROM tasker_webhook_deliveries WHERE task_id IN (SELECT value FROM json_each($1));
DELETE FROM tasker_workflow_steps WHERE task_id IN (SELECT value FROM json_each($1));
DELETE FROM tasker_tasks WHERE task_id IN (SELECT value FROM json_each($1))
