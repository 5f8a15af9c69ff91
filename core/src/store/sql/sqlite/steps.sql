-- The step rows of the tasks whose ids are in the JSON array $1.
SELECT * FROM tasker_workflow_steps WHERE task_id IN (SELECT value FROM json_each($1))
ORDER BY task_id, step_index
