-- The retries and lease expiries of the trail, for Engine::stats: read from this small index
-- rather than by a scan of every transition.
CREATE INDEX tasker_transitions_retries ON tasker_transitions (event)
    WHERE event IN ('schedule_retry', 'lease_expired');
