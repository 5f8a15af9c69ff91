-- Per handler, its finished steps (complete or failed for good) with a start and an end: how
-- many, their mean duration and their 95th percentile by nearest rank (ceil(0.95 n), as
-- view::p95_rank), in milliseconds.
SELECT handler, COUNT(*) AS n, CAST(AVG(d) AS DOUBLE PRECISION) AS mean_ms,
    MAX(CASE WHEN rn = (95 * c + 99) / 100 THEN d END) AS p95_ms
FROM (
    SELECT handler,
        CASE WHEN completed_at > started_at THEN completed_at - started_at ELSE 0 END AS d,
        ROW_NUMBER() OVER (PARTITION BY handler ORDER BY completed_at - started_at) AS rn,
        COUNT(*) OVER (PARTITION BY handler) AS c
    FROM tasker_workflow_steps
    WHERE status IN ('complete', 'error') AND started_at IS NOT NULL
      AND completed_at IS NOT NULL
) AS f
GROUP BY handler
ORDER BY handler
