-- The step rows of the tasks $1.
SELECT * FROM tasker_workflow_steps WHERE task_id = ANY($1) ORDER BY task_id, step_index
