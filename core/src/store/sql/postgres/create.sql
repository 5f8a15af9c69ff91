-- New tasks in one statement (one round trip, its own transaction): the task rows ($1–$13, $45, $47,
-- $51–$54, $62), their step rows ($14–$31, $41–$44, $46, $48–$50), transitions ($32–$40) and webhook
-- deliveries ($55–$61), each column an array. A task whose idempotency key is taken is left out
-- with its steps, transitions and deliveries; the ids written are returned.
WITH tasks AS (
    INSERT INTO tasker_tasks (task_id, namespace, name, version, status, priority, context,
        idempotency_key, unfinished_steps, created_at, updated_at, completed_at, revision, parent,
        deadline_at, concurrency_key, concurrency_limit, traceparent, trace_parent, key_hold)
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
        $6::int8[], $7::text[], $8::text[], $9::int8[], $10::int8[], $11::int8[], $12::int8[],
        $13::int8[], $45::text[], $47::int8[], $51::text[], $52::int8[], $53::text[],
        $54::text[], $62::int8[])
    ON CONFLICT DO NOTHING
    RETURNING task_id
), steps AS (
    INSERT INTO tasker_workflow_steps (task_id, step_index, name, handler, status, priority,
        attempts, max_attempts, unfinished_parents, failed_required_parents, ready_at,
        next_attempt_at, lease_owner, lease_expires_at, result, error, started_at, completed_at,
        not_chosen_parents, chosen, of_step, batch, children, concurrency_key, concurrency_limit,
        rate_key)
    SELECT u.* FROM UNNEST($14::text[], $15::int8[], $16::text[], $17::text[], $18::text[],
        $19::int8[], $20::int8[], $21::int8[], $22::int8[], $23::int8[], $24::int8[],
        $25::int8[], $26::text[], $27::int8[], $28::text[], $29::text[], $30::int8[],
        $31::int8[], $41::int8[], $42::text[], $43::int8[], $44::text[],
        $46::text[], $48::text[], $49::int8[], $50::text[]) AS u(task_id)
    WHERE u.task_id IN (SELECT task_id FROM tasks)
), transitions AS (
    INSERT INTO tasker_transitions (task_id, step_index, step_name, from_state, to_state, event,
        reason, attempt, at)
    SELECT u.task_id, u.step_index, u.step_name, u.from_state, u.to_state, u.event, u.reason,
        u.attempt, u.at
    FROM UNNEST($32::text[], $33::int8[], $34::text[], $35::text[], $36::text[], $37::text[],
        $38::text[], $39::int8[], $40::int8[]) WITH ORDINALITY
        AS u(task_id, step_index, step_name, from_state, to_state, event, reason, attempt, at, n)
    WHERE u.task_id IN (SELECT task_id FROM tasks)
    ORDER BY u.n
), deliveries AS (
    INSERT INTO tasker_webhook_deliveries (id, task_id, event, hook, lease_ms, body,
        next_attempt_at, created_at)
    SELECT u.id, u.task_id, u.event, u.hook, u.lease_ms, u.body, u.at, u.at
    FROM UNNEST($55::text[], $56::text[], $57::text[], $58::text[], $59::int8[], $60::text[],
        $61::int8[])
        AS u(id, task_id, event, hook, lease_ms, body, at)
    WHERE u.task_id IN (SELECT task_id FROM tasks)
)
SELECT task_id FROM tasks
