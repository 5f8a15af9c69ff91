-- Every row an operation changed, in one statement: the task rows ($1–$13, $45, $47, $51–$54,
-- $73), the step rows ($14–$31, $41–$44, $46, $48–$50), new or changed, the new transitions
-- ($32–$40), the rate buckets ($55–$58), the attempts' log lines ($59–$65) and the webhook
-- deliveries ($66–$72), each column an array. (The
-- wake-up of the other engines is sent after the commit, on a connection of its own: a
-- NOTIFY in this transaction would hold PostgreSQL's one notify lock through the commit's
-- flush, and every writing transaction would wait for the one before.)
WITH tasks AS (
    INSERT INTO tasker_tasks (task_id, namespace, name, version, status, priority, context,
        idempotency_key, unfinished_steps, created_at, updated_at, completed_at, revision, parent,
        deadline_at, concurrency_key, concurrency_limit, traceparent, trace_parent, key_hold)
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
        $6::int8[], $7::text[], $8::text[], $9::int8[], $10::int8[], $11::int8[], $12::int8[],
        $13::int8[], $45::text[], $47::int8[], $51::text[], $52::int8[], $53::text[],
        $54::text[], $73::int8[])
    ON CONFLICT (task_id) DO UPDATE SET
        status = excluded.status, unfinished_steps = excluded.unfinished_steps,
        updated_at = excluded.updated_at, completed_at = excluded.completed_at,
        revision = excluded.revision, deadline_at = excluded.deadline_at,
        key_hold = excluded.key_hold
), steps AS (
    INSERT INTO tasker_workflow_steps AS s (task_id, step_index, name, handler, status, priority,
        attempts, max_attempts, unfinished_parents, failed_required_parents, ready_at,
        next_attempt_at, lease_owner, lease_expires_at, result, error, started_at, completed_at,
        not_chosen_parents, chosen, of_step, batch, children, concurrency_key, concurrency_limit,
        rate_key)
    SELECT * FROM UNNEST($14::text[], $15::int8[], $16::text[], $17::text[], $18::text[],
        $19::int8[], $20::int8[], $21::int8[], $22::int8[], $23::int8[], $24::int8[],
        $25::int8[], $26::text[], $27::int8[], $28::text[], $29::text[], $30::int8[],
        $31::int8[], $41::int8[], $42::text[], $43::int8[], $44::text[],
        $46::text[], $48::text[], $49::int8[], $50::text[])
    ON CONFLICT (task_id, step_index) DO UPDATE SET
        status = excluded.status, attempts = excluded.attempts,
        max_attempts = excluded.max_attempts, unfinished_parents = excluded.unfinished_parents,
        failed_required_parents = excluded.failed_required_parents,
        ready_at = COALESCE(excluded.ready_at, s.ready_at),
        next_attempt_at = excluded.next_attempt_at, lease_owner = excluded.lease_owner,
        lease_expires_at = excluded.lease_expires_at, result = excluded.result,
        error = excluded.error, started_at = excluded.started_at,
        completed_at = excluded.completed_at, not_chosen_parents = excluded.not_chosen_parents,
        chosen = excluded.chosen, of_step = excluded.of_step,
        batch = COALESCE(excluded.batch, s.batch), children = excluded.children
), transitions AS (
    INSERT INTO tasker_transitions (task_id, step_index, step_name, from_state, to_state, event,
        reason, attempt, at)
    SELECT u.task_id, u.step_index, u.step_name, u.from_state, u.to_state, u.event, u.reason,
        u.attempt, u.at
    FROM UNNEST($32::text[], $33::int8[], $34::text[], $35::text[], $36::text[], $37::text[],
        $38::text[], $39::int8[], $40::int8[]) WITH ORDINALITY
        AS u(task_id, step_index, step_name, from_state, to_state, event, reason, attempt, at, n)
    ORDER BY u.n
), buckets AS (
    -- The rate keys' buckets a claim took tokens from ($55–$58).
    INSERT INTO tasker_rate_limits AS b (key, tokens, at_ms, refill_per_ms)
    SELECT * FROM UNNEST($55::text[], $56::float8[], $57::int8[], $58::float8[])
    ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, at_ms = excluded.at_ms,
        refill_per_ms = excluded.refill_per_ms
), logs AS (
    -- The log lines of the attempts reported ($59–$65).
    INSERT INTO tasker_step_logs (task_id, step_index, attempt, seq, at, level, message)
    SELECT * FROM UNNEST($59::text[], $60::int8[], $61::int8[], $62::int8[], $63::int8[],
        $64::text[], $65::text[])
    ON CONFLICT DO NOTHING
), deliveries AS (
    -- The webhook deliveries of the events ($66–$72).
    INSERT INTO tasker_webhook_deliveries (id, task_id, event, hook, lease_ms, body,
        next_attempt_at, created_at)
    SELECT u.id, u.task_id, u.event, u.hook, u.lease_ms, u.body, u.at, u.at
    FROM UNNEST($66::text[], $67::text[], $68::text[], $69::text[], $70::int8[], $71::text[],
        $72::int8[])
        AS u(id, task_id, event, hook, lease_ms, body, at)
)
SELECT 1
