-- Decision steps: a step's count of required parents that were not chosen (by a decision, or
-- skipped as not chosen themselves), and, on a decision step that completed, the indexes of
-- the dependents it chose (a JSON array).
ALTER TABLE tasker_workflow_steps ADD COLUMN not_chosen_parents BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasker_workflow_steps ADD COLUMN chosen TEXT;
