-- Every step waiting for the child tasks it started (read from its partial index).
SELECT task_id, step_index, attempts FROM tasker_workflow_steps
WHERE status = 'waiting_for_children'
