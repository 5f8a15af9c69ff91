-- Step logs: the lines each attempt logged (at most 100 of 1 KiB), written with its report.
CREATE TABLE tasker_step_logs (
    task_id     TEXT    NOT NULL REFERENCES tasker_tasks (task_id),
    step_index  INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    level       TEXT    NOT NULL,
    message     TEXT    NOT NULL,
    PRIMARY KEY (task_id, step_index, attempt, seq)
);
