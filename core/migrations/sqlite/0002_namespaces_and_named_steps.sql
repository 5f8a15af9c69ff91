-- Namespaces and the named steps of each template version, as in the Rails Tasker engine.

CREATE TABLE tasker_task_namespaces (
    name       TEXT    PRIMARY KEY,
    created_at INTEGER NOT NULL
);
INSERT INTO tasker_task_namespaces (name, created_at)
    SELECT namespace, MIN(created_at) FROM tasker_named_tasks GROUP BY namespace;

CREATE TABLE tasker_named_steps (
    namespace  TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    version    TEXT    NOT NULL,
    position   INTEGER NOT NULL,
    step_name  TEXT    NOT NULL,
    handler    TEXT    NOT NULL,
    PRIMARY KEY (namespace, name, version, position),
    UNIQUE (namespace, name, version, step_name),
    FOREIGN KEY (namespace, name, version) REFERENCES tasker_named_tasks (namespace, name, version)
);
CREATE INDEX tasker_named_steps_handler ON tasker_named_steps (handler);
