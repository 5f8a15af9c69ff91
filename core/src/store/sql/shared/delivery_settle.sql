-- Settles attempt $2 of delivery $1 (still leased for it): status $3, next attempt at $4,
-- error $5, delivered at $6; $7 = 1 takes the attempt back (it was not sent).
UPDATE tasker_webhook_deliveries
SET status = $3, next_attempt_at = COALESCE($4, next_attempt_at), last_error = $5,
    delivered_at = $6, lease_owner = NULL, attempts = attempts - $7
WHERE id = $1 AND attempts = $2 AND status = 'delivering'
