-- The readiness baseline: "which steps of this task may run now?" answered in PostgreSQL the
-- way the Rails Tasker engine answers it (a SQL function over the steps, their dependency edges
-- and their states, called once per question), written the way a competent Rails developer
-- would: every lookup indexed, one round trip, the current state a column on the step row (the
-- Rails engine derives it from its transitions table, which only costs the SQL side more).
--
-- Ready: pending (or waiting for a retry whose time has come) with attempts left, and no parent
-- that is unfinished or that failed while the edge requires success.

CREATE TABLE bench_steps (
    task_id      bigint  NOT NULL,
    step_id      integer NOT NULL,
    state        text    NOT NULL DEFAULT 'pending',
    attempts     integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 3,
    retry_at     timestamptz,
    PRIMARY KEY (task_id, step_id)
);

-- The candidates of a task: its pending and waiting steps only.
CREATE INDEX bench_steps_runnable ON bench_steps (task_id, step_id)
    WHERE state IN ('pending', 'waiting_for_retry');

CREATE TABLE bench_edges (
    task_id          bigint  NOT NULL,
    from_step        integer NOT NULL,
    to_step          integer NOT NULL,
    requires_success boolean NOT NULL DEFAULT true,
    -- A step's parents, found from the child.
    PRIMARY KEY (task_id, to_step, from_step)
);

-- PL/pgSQL, as the Rails engine's function is: the server keeps the query's plan between calls
-- (a LANGUAGE sql function would be inlined and planned again on every call, which costs more
-- than running it on a small task).
CREATE FUNCTION bench_ready_steps(p_task bigint)
RETURNS TABLE (step_id integer)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT s.step_id
    FROM bench_steps s
    WHERE s.task_id = p_task
      AND (s.state = 'pending'
           OR (s.state = 'waiting_for_retry' AND s.retry_at <= now()))
      AND s.attempts < s.max_attempts
      AND NOT EXISTS (
          SELECT 1
          FROM bench_edges e
          JOIN bench_steps p ON p.task_id = e.task_id AND p.step_id = e.from_step
          WHERE e.task_id = s.task_id
            AND e.to_step = s.step_id
            AND (p.state NOT IN ('complete', 'resolved_manually', 'error', 'skipped', 'cancelled')
                 OR (e.requires_success AND p.state NOT IN ('complete', 'resolved_manually')))
      )
    ORDER BY s.step_id;
END;
$$;
