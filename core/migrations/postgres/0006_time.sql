-- Time. A task's deadline (its template's deadline_ms after its start), cleared once it
-- finished; the roots of a task to run later are pending steps with a next_attempt_at (its
-- start). The scan for what falls due reads both from these partial indexes.
ALTER TABLE tasker_tasks ADD COLUMN deadline_at BIGINT;
CREATE INDEX tasker_tasks_deadline ON tasker_tasks (deadline_at) WHERE deadline_at IS NOT NULL;
CREATE INDEX tasker_steps_delayed ON tasker_workflow_steps (next_attempt_at)
    WHERE status = 'pending' AND next_attempt_at IS NOT NULL;
