-- The webhook outbox: one row per event per webhook, written with the transition that made the
-- event. A row is due at next_attempt_at: pending (its next attempt) or delivering (its lease
-- runs out then, and another engine takes it).
CREATE TABLE tasker_webhook_deliveries (
    id              TEXT    PRIMARY KEY,
    task_id         TEXT    NOT NULL,
    event           TEXT    NOT NULL,
    hook            TEXT    NOT NULL,
    lease_ms        BIGINT  NOT NULL,
    body            TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending',
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL,
    lease_owner     TEXT,
    last_error      TEXT,
    created_at      BIGINT  NOT NULL,
    delivered_at    BIGINT
);
CREATE INDEX tasker_webhook_deliveries_due ON tasker_webhook_deliveries (next_attempt_at)
    WHERE status IN ('pending', 'delivering');
CREATE INDEX tasker_webhook_deliveries_task ON tasker_webhook_deliveries (task_id, created_at);
