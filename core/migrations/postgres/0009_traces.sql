-- Traces: a task's own span context (W3C traceparent) and the caller's span it continues.
ALTER TABLE tasker_tasks ADD COLUMN traceparent TEXT;
ALTER TABLE tasker_tasks ADD COLUMN trace_parent TEXT;
