-- The log lines of task $1 (of its step $2 only, unless NULL), by step, attempt and line, each
-- with its step's name.
SELECT s.name AS step, l.step_index, l.attempt, l.at, l.level, l.message
FROM tasker_step_logs l
JOIN tasker_workflow_steps s ON s.task_id = l.task_id AND s.step_index = l.step_index
WHERE l.task_id = $1 AND ($2 IS NULL OR l.step_index = $2)
ORDER BY l.step_index, l.attempt, l.seq
