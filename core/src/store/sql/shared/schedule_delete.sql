-- Schedule $1 removed.
DELETE FROM tasker_schedules WHERE name = $1
