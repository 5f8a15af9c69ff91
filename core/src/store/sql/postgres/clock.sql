-- The database server's clock, in milliseconds since the Unix epoch.
SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)
