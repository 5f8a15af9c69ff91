-- Leases up to $3 due webhook deliveries to $2 at $1 (ms): pending ones whose attempt is due,
-- and delivering ones whose lease ran out, oldest first; each leased for its lease_ms (twice
-- its time limit).
UPDATE tasker_webhook_deliveries d
SET status = 'delivering', attempts = d.attempts + 1, lease_owner = $2,
    next_attempt_at = $1 + d.lease_ms
WHERE d.id IN (
    SELECT id FROM tasker_webhook_deliveries
    WHERE status IN ('pending', 'delivering') AND next_attempt_at <= $1
    ORDER BY next_attempt_at
    LIMIT $3
    FOR UPDATE SKIP LOCKED)
RETURNING d.id, d.event, d.hook, d.body, d.attempts
