-- The log lines of the attempts reported: the tuple after VALUES is repeated once per row.
INSERT INTO tasker_step_logs (task_id, step_index, attempt, seq, at, level, message)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING
