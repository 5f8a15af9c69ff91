-- The named steps of a template version: $1 namespace, $2 name, $3 version, $4 a JSON array of
-- [step name, handler].
INSERT INTO tasker_named_steps (namespace, name, version, position, step_name, handler)
SELECT $1, $2, $3, key, value ->> 0, value ->> 1 FROM json_each($4)
