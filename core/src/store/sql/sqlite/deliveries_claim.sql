-- Leases up to $3 due webhook deliveries to $2 at $1 (ms): pending ones whose attempt is due,
-- and delivering ones whose lease ran out, oldest first; each leased for its lease_ms (twice
-- its time limit).
UPDATE tasker_webhook_deliveries
SET status = 'delivering', attempts = attempts + 1, lease_owner = $2,
    next_attempt_at = $1 + lease_ms
WHERE id IN (
    SELECT id FROM tasker_webhook_deliveries
    WHERE status IN ('pending', 'delivering') AND next_attempt_at <= $1
    ORDER BY next_attempt_at
    LIMIT $3)
RETURNING id, event, hook, body, attempts
