-- The named steps of a template version: $1 namespace, $2 name, $3 version, $4 the step names
-- and $5 their handlers, in order.
INSERT INTO tasker_named_steps (namespace, name, version, position, step_name, handler)
SELECT $1, $2, $3, u.position - 1, u.step_name, u.handler
FROM UNNEST($4::text[], $5::text[]) WITH ORDINALITY AS u(step_name, handler, position)
