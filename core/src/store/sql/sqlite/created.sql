-- Which of the new tasks (their ids: the JSON array in the last parameter) were written.
SELECT task_id FROM tasker_tasks WHERE task_id IN (SELECT value FROM json_each(?))
