-- Dynamic workflows. Decision steps: a step's count of required parents that were not chosen
-- (by a decision, or skipped as not chosen themselves), and, on a decision step that
-- completed, the indexes of the dependents it chose (a JSON array). Batches: the rows after a
-- task's template steps are instances of its batch worker steps, each naming its worker step
-- (of_step) and holding its slice (batch, JSON).
ALTER TABLE tasker_workflow_steps ADD COLUMN not_chosen_parents BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasker_workflow_steps ADD COLUMN chosen TEXT;
ALTER TABLE tasker_workflow_steps ADD COLUMN of_step BIGINT;
ALTER TABLE tasker_workflow_steps ADD COLUMN batch TEXT;
