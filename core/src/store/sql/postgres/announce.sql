-- Wakes the engines that LISTEN: sent after a commit that made steps claimable, in a
-- transaction of its own (it writes nothing, so its commit waits for no flush and holds the
-- notify lock only for a moment).
SELECT pg_notify('tasker_ready', '')
