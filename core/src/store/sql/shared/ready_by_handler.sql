-- The steps claimable now, counted per handler.
SELECT s.handler, COUNT(*) AS ready
FROM tasker_workflow_steps s JOIN tasker_tasks t ON t.task_id = s.task_id
WHERE s.status = 'pending' AND s.unfinished_parents = 0 AND s.failed_required_parents = 0
  AND t.status IN ('pending', 'in_progress')
GROUP BY s.handler
ORDER BY s.handler
