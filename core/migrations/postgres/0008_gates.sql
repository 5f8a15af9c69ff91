-- Concurrency keys and rate limits. A step's key (its template step's concurrency, rendered
-- from the task's context) and limit, and its rate key; a task's key and limit (its
-- template's concurrency). A claim counts a key's holders from the partial indexes: steps in
-- progress, tasks in progress or paused. A rate key's token bucket: its tokens as of at_ms,
-- and the tokens that come back per millisecond.
ALTER TABLE tasker_workflow_steps ADD COLUMN concurrency_key TEXT;
ALTER TABLE tasker_workflow_steps ADD COLUMN concurrency_limit BIGINT;
ALTER TABLE tasker_workflow_steps ADD COLUMN rate_key TEXT;
ALTER TABLE tasker_tasks ADD COLUMN concurrency_key TEXT;
ALTER TABLE tasker_tasks ADD COLUMN concurrency_limit BIGINT;
CREATE INDEX tasker_steps_holding ON tasker_workflow_steps (concurrency_key)
    WHERE status = 'in_progress' AND concurrency_key IS NOT NULL;
CREATE INDEX tasker_tasks_holding ON tasker_tasks (concurrency_key)
    WHERE status IN ('in_progress', 'paused') AND concurrency_key IS NOT NULL;
CREATE TABLE tasker_rate_limits (
    key TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    at_ms BIGINT NOT NULL,
    refill_per_ms DOUBLE PRECISION NOT NULL
);
