-- Every registered template version, as JSON (ordered by the caller, as semver orders them).
SELECT template FROM tasker_named_tasks
