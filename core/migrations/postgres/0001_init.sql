-- Tasker Core schema for PostgreSQL, modelled on the Rails Tasker engine's tables.
-- Times are milliseconds since the Unix epoch; JSON is stored as text.

CREATE TABLE tasker_named_tasks (               -- templates, one row per version
    namespace   TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    version     TEXT    NOT NULL,
    template    TEXT    NOT NULL,               -- the template as JSON
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (namespace, name, version)
);

CREATE TABLE tasker_tasks (
    task_id          TEXT    PRIMARY KEY,
    namespace        TEXT    NOT NULL,
    name             TEXT    NOT NULL,
    version          TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    priority         BIGINT  NOT NULL,
    context          TEXT    NOT NULL,
    idempotency_key  TEXT,
    unfinished_steps BIGINT  NOT NULL,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    completed_at     BIGINT,
    FOREIGN KEY (namespace, name, version) REFERENCES tasker_named_tasks (namespace, name, version)
);
CREATE UNIQUE INDEX tasker_tasks_idempotency ON tasker_tasks (namespace, name, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasker_tasks_status ON tasker_tasks (status, task_id);

CREATE TABLE tasker_workflow_steps (
    task_id                 TEXT    NOT NULL REFERENCES tasker_tasks (task_id),
    step_index              BIGINT  NOT NULL,
    name                    TEXT    NOT NULL,
    handler                 TEXT    NOT NULL,
    status                  TEXT    NOT NULL,
    priority                BIGINT  NOT NULL,   -- the task's, copied for the claim index
    attempts                BIGINT  NOT NULL,
    max_attempts            BIGINT  NOT NULL,
    unfinished_parents      BIGINT  NOT NULL,   -- readiness counters
    failed_required_parents BIGINT  NOT NULL,
    ready_at                BIGINT,            -- when it last became claimable (claim order)
    next_attempt_at         BIGINT,
    lease_owner             TEXT,
    lease_expires_at        BIGINT,
    result                  TEXT,
    error                   TEXT,
    started_at              BIGINT,
    completed_at            BIGINT,
    PRIMARY KEY (task_id, step_index)
);
CREATE INDEX tasker_steps_ready ON tasker_workflow_steps (handler, priority DESC, ready_at)
    WHERE status = 'pending' AND unfinished_parents = 0 AND failed_required_parents = 0;
CREATE INDEX tasker_steps_leases ON tasker_workflow_steps (lease_expires_at) WHERE status = 'in_progress';
CREATE INDEX tasker_steps_retries ON tasker_workflow_steps (next_attempt_at) WHERE status = 'waiting_for_retry';

CREATE TABLE tasker_workflow_step_edges (
    task_id          TEXT    NOT NULL,
    from_step        BIGINT  NOT NULL,
    to_step          BIGINT  NOT NULL,
    requires_success BOOLEAN NOT NULL,
    PRIMARY KEY (task_id, from_step, to_step),
    FOREIGN KEY (task_id, from_step) REFERENCES tasker_workflow_steps (task_id, step_index),
    FOREIGN KEY (task_id, to_step) REFERENCES tasker_workflow_steps (task_id, step_index)
);

-- The audit trail: task transitions have no step.
CREATE TABLE tasker_transitions (
    id          BIGSERIAL PRIMARY KEY,
    task_id     TEXT    NOT NULL REFERENCES tasker_tasks (task_id),
    step_index  BIGINT,
    step_name   TEXT,
    from_state  TEXT,
    to_state    TEXT    NOT NULL,
    event       TEXT    NOT NULL,
    reason      TEXT,
    attempt     BIGINT  NOT NULL,
    at          BIGINT  NOT NULL
);
CREATE INDEX tasker_transitions_task ON tasker_transitions (task_id, id);
