-- Every unfinished task that has a parent, with its parent step (JSON), read from its partial
-- index.
SELECT task_id, parent FROM tasker_tasks
WHERE parent IS NOT NULL AND status IN ('pending', 'in_progress', 'paused')
