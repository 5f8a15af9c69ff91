-- The transition recorded with mark_unreadable.sql ($2: the reason, $3: now).
INSERT INTO tasker_transitions
    (task_id, step_index, step_name, from_state, to_state, event, reason, attempt, at)
VALUES ($1, NULL, NULL, NULL, 'error', 'unreadable', $2, 0, $3)
