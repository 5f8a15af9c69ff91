-- Child tasks. A task started by a step's handler names that step (parent, JSON:
-- {"task_id", "step", "index"}; never changes), and the step keeps the ids of the children it
-- started (children, a JSON array). The engine's tending of children (crash recovery) reads
-- the unfinished children and the steps waiting for theirs from these partial indexes.
ALTER TABLE tasker_tasks ADD COLUMN parent TEXT;
ALTER TABLE tasker_workflow_steps ADD COLUMN children TEXT;
CREATE INDEX tasker_tasks_open_children ON tasker_tasks (task_id)
    WHERE parent IS NOT NULL AND status IN ('pending', 'in_progress', 'paused');
CREATE INDEX tasker_steps_waiting_for_children ON tasker_workflow_steps (task_id, step_index)
    WHERE status = 'waiting_for_children';
