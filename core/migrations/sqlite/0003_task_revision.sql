-- A random revision, new on every write of a task's rows: a store that cached the task's
-- aggregate at this revision reuses it instead of reading every step row again.
ALTER TABLE tasker_tasks ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;
