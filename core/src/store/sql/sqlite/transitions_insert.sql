-- New transitions of tasks whose rows exist, in order: the tuple after VALUES is repeated once
-- per row.
INSERT INTO tasker_transitions (task_id, step_index, step_name, from_state, to_state, event,
    reason, attempt, at)
SELECT * FROM (VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)) AS v
WHERE EXISTS (SELECT 1 FROM tasker_tasks t WHERE t.task_id = v.column1)
