-- Claimable steps in claim order ('ready'), for the handlers $2 (any when NULL), at most $3,
-- skipping the tasks another transaction holds (so that several engines do not all pick, and
-- then skip, the same hot tasks). Followed by shared/due.sql (its $1: now) in one query.
SELECT * FROM (
    SELECT 'ready' AS due, s.task_id, s.step_index, s.attempts
    FROM tasker_workflow_steps s JOIN tasker_tasks t ON t.task_id = s.task_id
    WHERE s.status = 'pending' AND s.unfinished_parents = 0 AND s.failed_required_parents = 0
      AND t.status IN ('pending', 'in_progress')
      AND ($2::text[] IS NULL OR s.handler = ANY($2))
    ORDER BY s.priority DESC, s.ready_at, s.task_id, s.step_index
    LIMIT $3
    FOR UPDATE OF t SKIP LOCKED
) AS ready
UNION ALL
