-- The rate keys' buckets a claim took tokens from: the tuple after VALUES is repeated once per
-- row.
INSERT INTO tasker_rate_limits (key, tokens, at_ms, refill_per_ms)
VALUES (?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, at_ms = excluded.at_ms,
    refill_per_ms = excluded.refill_per_ms
