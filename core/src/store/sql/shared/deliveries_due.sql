-- Whether a webhook delivery is due at $1 (ms): read first, so that looking for none takes no
-- write lock.
SELECT EXISTS (
    SELECT 1 FROM tasker_webhook_deliveries
    WHERE status IN ('pending', 'delivering') AND next_attempt_at <= $1)
