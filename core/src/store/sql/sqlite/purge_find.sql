-- Up to $3 tasks in a state of the JSON array $2 that finished before $1 — not a child whose
-- parent still runs (its parent step still reads it).
SELECT t.task_id FROM tasker_tasks t
WHERE t.status IN (SELECT value FROM json_each($2)) AND t.completed_at < $1
  AND NOT EXISTS (
      SELECT 1 FROM tasker_tasks p
      WHERE t.parent IS NOT NULL AND p.task_id = json_extract(t.parent, '$.task_id')
        AND p.status IN ('pending', 'in_progress', 'paused'))
LIMIT $3
