-- How many times other connections changed the database (SQLite's data_version), as one row
-- shaped like those of due.sql (the number as step_index): read first in a group's write
-- transaction, so that a group knows when the tasks this process cached are still current.
SELECT 'version' AS due, '' AS task_id, data_version AS step_index, 0 AS attempts,
    NULL AS ckey, NULL AS tkey, NULL AS rkey
FROM pragma_data_version
