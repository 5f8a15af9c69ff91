/*
 * test_worker.c — tc_worker running C handlers: an order-fulfilment-like workflow whose handlers
 * read the context and their parents' results, a retryable failure with retry_after_ms, a
 * handler that returns without reporting (failed, retried), a permanent failure that skips the
 * dependents, reporting twice, a decision step choosing one of two branches (tc_step_decide)
 * before a deferred convergence, a batch of items run one slice at a time (tc_step_batch_items,
 * tc_step_batch_json), and the concurrency limit (4) measured with a C11 atomic.
 *
 * Handlers run on the library's threads, so they do not ASSERT: they count what went wrong
 * (HANDLER_CHECK) and main() asserts the count is zero.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tasker_core.h"
#include "tc_test.h"

/* validate -> (charge, reserve_stock) -> ship -> notify. charge's backoff is ten minutes, so
 * only its handler's retry_after_ms (10 ms) lets it run again within the test. */
static const char *FULFIL_YAML =
    "namespace: c_worker\n"
    "name: fulfil\n"
    "version: 1.0.0\n"
    "events: [order.noted]\n"
    "steps:\n"
    "  - name: validate\n"
    "    config: { limit: 7 }\n"
    "    events: [{ name: order.validated, schema: { type: object, required: [order] } }]\n"
    "  - name: charge\n"
    "    depends_on: [validate]\n"
    "    retry: { max_attempts: 3, backoff_base_ms: 600000, backoff_max_ms: 600000,"
    " jitter: false }\n"
    "  - name: reserve_stock\n"
    "    depends_on: [validate]\n"
    "    retry: { max_attempts: 3, backoff_base_ms: 10, backoff_max_ms: 20 }\n"
    "  - name: ship\n"
    "    depends_on: [charge, reserve_stock]\n"
    "  - name: notify\n"
    "    depends_on:\n"
    "      - { step: ship, requires_success: false }\n";

/* doomed fails for good: after_doomed (requires its success) is skipped, cleanup (does not)
 * runs; the task ends in error. */
static const char *DOOMED_YAML =
    "namespace: c_worker\n"
    "name: doomed\n"
    "version: 1.0.0\n"
    "steps:\n"
    "  - name: doomed\n"
    "  - name: after_doomed\n"
    "    depends_on: [doomed]\n"
    "  - name: cleanup\n"
    "    depends_on:\n"
    "      - { step: doomed, requires_success: false }\n";

/* route decides between small and large; converge runs after whichever was chosen. */
static const char *ROUTE_YAML =
    "namespace: c_worker\n"
    "name: route\n"
    "version: 1.0.0\n"
    "steps:\n"
    "  - { name: route, type: decision }\n"
    "  - { name: small, depends_on: [route] }\n"
    "  - { name: large, depends_on: [route] }\n"
    "  - { name: converge, type: deferred_convergence, depends_on: [small, large] }\n";

/* load makes a batch of five items in slices of two; chunk runs once per slice, one at a time;
 * total_up gets the three slices' results in order. */
static const char *BATCH_YAML =
    "namespace: c_worker\n"
    "name: batch\n"
    "version: 1.0.0\n"
    "steps:\n"
    "  - { name: load, type: batchable, batch: { worker: chunk, size: 2, parallelism: 1 } }\n"
    "  - { name: chunk, type: batch_worker, depends_on: [load] }\n"
    "  - { name: total_up, depends_on: [chunk] }\n";

/* A step starting two child tasks of `kid`, and one that gets their results. */
static const char *FAMILY_YAML =
    "namespace: c_worker\n"
    "name: family\n"
    "version: 1.0.0\n"
    "steps:\n"
    "  - { name: spawn }\n"
    "  - { name: gather, depends_on: [spawn] }\n";

static const char *KID_YAML =
    "namespace: c_worker\n"
    "name: kid\n"
    "version: 1.0.0\n"
    "steps:\n"
    "  - { name: kid_step }\n";

/* Twelve independent steps with one slow handler, to fill the worker. */
static const char *FANOUT_YAML =
    "namespace: c_worker\n"
    "name: fanout\n"
    "version: 1.0.0\n"
    "steps:\n"
    "  - { name: s01, handler: slow }\n  - { name: s02, handler: slow }\n"
    "  - { name: s03, handler: slow }\n  - { name: s04, handler: slow }\n"
    "  - { name: s05, handler: slow }\n  - { name: s06, handler: slow }\n"
    "  - { name: s07, handler: slow }\n  - { name: s08, handler: slow }\n"
    "  - { name: s09, handler: slow }\n  - { name: s10, handler: slow }\n"
    "  - { name: s11, handler: slow }\n  - { name: s12, handler: slow }\n";

#define CONCURRENCY 4

static atomic_int failures;
static atomic_int running, max_running;
static atomic_int calls_validate, calls_charge, calls_reserve, calls_ship, calls_notify;
static atomic_int calls_doomed, calls_after_doomed, calls_cleanup, calls_slow;
static atomic_int calls_route, calls_small, calls_large, calls_converge;
static atomic_int calls_load, calls_chunk, chunks_running, calls_total_up;
static atomic_int calls_spawn, calls_kid, calls_gather;
static atomic_int second_complete_status = 1, late_fail_status = 1;
static int user_data_tag; /* its address is every handler's user_data */
static tc_engine *engine;  /* for handlers that call the engine */

#define HANDLER_CHECK(cond)                                                                     \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            fprintf(stderr, "%s:%d: handler check failed: %s\n", __FILE__, __LINE__, #cond);    \
            atomic_fetch_add(&failures, 1);                                                     \
        }                                                                                       \
    } while (0)

#define HANDLER_OK(call)                                                                        \
    do {                                                                                        \
        tc_status s_ = (call);                                                                  \
        if (s_ != TC_OK) {                                                                      \
            const char *m_ = tc_last_error_message();                                           \
            fprintf(stderr, "%s:%d: %s returned %d: %s\n", __FILE__, __LINE__, #call, (int)s_,  \
                    m_ ? m_ : "(no message)");                                                  \
            atomic_fetch_add(&failures, 1);                                                     \
        }                                                                                       \
    } while (0)

/* Every handler starts with enter() and ends with leave(): `running` counts the handlers that
 * run right now, `max_running` the most seen at once. */
static void enter(tc_step *step, void *user_data) {
    int now = atomic_fetch_add(&running, 1) + 1;
    int seen = atomic_load(&max_running);
    while (now > seen && !atomic_compare_exchange_weak(&max_running, &seen, now)) {
    }
    HANDLER_CHECK(user_data == &user_data_tag);
    HANDLER_CHECK(step != NULL);
    HANDLER_CHECK(tc_step_attempt(step) >= 1);
    /* The step id is "<task id>/<index>". */
    const char *task_id = tc_step_task_id(step);
    const char *step_id = tc_step_id(step);
    HANDLER_CHECK(task_id != NULL && strlen(task_id) == 36);
    HANDLER_CHECK(step_id != NULL && task_id != NULL &&
                  strncmp(step_id, task_id, strlen(task_id)) == 0 &&
                  step_id[strlen(task_id)] == '/');
    HANDLER_CHECK(tc_step_context_json(step) != NULL);
    HANDLER_CHECK(tc_step_inputs_json(step) != NULL);
    HANDLER_CHECK(tc_step_config_json(step) != NULL);
}

static void leave(void) { atomic_fetch_sub(&running, 1); }

/* The integer after "key": in JSON text, or -1 (strstr: enough for these flat objects). */
static long int_after(const char *json, const char *key) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":", key);
    const char *at = strstr(json, pattern);
    if (!at) return -1;
    at += strlen(pattern);
    while (*at == ' ') at++;
    return strtol(at, NULL, 10);
}

/* Whether JSON text has "key": value, allowing a space after the colon. */
static int has_pair(const char *json, const char *key, const char *value) {
    char compact[128], spaced[128];
    snprintf(compact, sizeof compact, "\"%s\":%s", key, value);
    snprintf(spaced, sizeof spaced, "\"%s\": %s", key, value);
    return strstr(json, compact) != NULL || strstr(json, spaced) != NULL;
}

static void validate(tc_step *step, void *user_data) {
    enter(step, user_data);
    atomic_fetch_add(&calls_validate, 1);
    HANDLER_CHECK(strcmp(tc_step_name(step), "validate") == 0);
    HANDLER_CHECK(strcmp(tc_step_id(step) + 36, "/0") == 0);
    long order = int_after(tc_step_context_json(step), "order");
    HANDLER_CHECK(order == 42);
    /* The step's config from its template. */
    HANDLER_CHECK(int_after(tc_step_config_json(step), "limit") == 7);
    /* Its attempt's trace context: 00-<32 hex>-<16 hex>-<2 hex>. */
    const char *traceparent = tc_step_traceparent(step);
    HANDLER_CHECK(traceparent != NULL && strlen(traceparent) == 55 &&
                  strncmp(traceparent, "00-", 3) == 0);
    HANDLER_CHECK(tc_step_traceparent(NULL) == NULL);
    /* Custom events: the step's own and its template's; an undeclared one, or a payload
     * breaking the event's schema, is refused with a message naming why. */
    HANDLER_OK(tc_step_publish(step, "order.validated", "{\"order\":42}"));
    HANDLER_OK(tc_step_publish(step, "order.noted", NULL));
    HANDLER_CHECK(tc_step_publish(step, "order.lost", "{}") == TC_ERR_INVALID_ARGUMENT);
    const char *why = tc_last_error_message();
    HANDLER_CHECK(why != NULL && strstr(why, "order.noted, order.validated") != NULL);
    HANDLER_CHECK(tc_step_publish(step, "order.validated", "{}") == TC_ERR_INVALID_ARGUMENT);
    HANDLER_CHECK(tc_step_publish(step, "order.validated", "{") == TC_ERR_JSON);
    HANDLER_CHECK(tc_step_publish(step, NULL, NULL) == TC_ERR_NULL);
    char result[64];
    snprintf(result, sizeof result, "{\"order\":%ld,\"valid\":true}", order);
    HANDLER_OK(tc_step_complete(step, result));
    leave();
}

/* Fails its first attempt (retryable, again in 10 ms), completes the second. */
static void charge(tc_step *step, void *user_data) {
    enter(step, user_data);
    atomic_fetch_add(&calls_charge, 1);
    const char *inputs = tc_step_inputs_json(step);
    HANDLER_CHECK(strcmp(tc_step_id(step) + 36, "/1") == 0);
    HANDLER_CHECK(strstr(inputs, "\"validate\"") != NULL);
    HANDLER_CHECK(has_pair(inputs, "valid", "true"));
    HANDLER_CHECK(int_after(tc_step_context_json(step), "order") == 42);
    /* Its log, kept per attempt and written with the outcome. */
    HANDLER_OK(tc_step_log(step, "info", "charging"));
    HANDLER_CHECK(tc_step_log(step, "loud", "x") == TC_ERR_INVALID_ARGUMENT);
    HANDLER_CHECK(tc_step_log(step, NULL, "x") == TC_ERR_NULL);
    if (tc_step_attempt(step) == 1) {
        HANDLER_OK(tc_step_log(step, "error", "the gateway is busy"));
        HANDLER_OK(tc_step_fail(step, "gateway busy", true, 10));
    } else {
        HANDLER_CHECK(tc_step_attempt(step) == 2);
        HANDLER_OK(tc_step_complete(step, "{\"charged\":true,\"amount_cents\":4200}"));
    }
    leave();
}

/* Returns without reporting on its first attempt: that attempt has failed (retryable). */
static void reserve_stock(tc_step *step, void *user_data) {
    enter(step, user_data);
    atomic_fetch_add(&calls_reserve, 1);
    if (tc_step_attempt(step) >= 2) HANDLER_OK(tc_step_complete(step, "{\"reserved\":1}"));
    leave();
}

/* Heartbeats, completes, then reports twice more: both refused. */
static void ship(tc_step *step, void *user_data) {
    enter(step, user_data);
    atomic_fetch_add(&calls_ship, 1);
    const char *inputs = tc_step_inputs_json(step);
    HANDLER_CHECK(has_pair(inputs, "charged", "true"));
    HANDLER_CHECK(has_pair(inputs, "reserved", "1"));
    HANDLER_OK(tc_step_heartbeat(step));
    HANDLER_OK(tc_step_complete(step, "{\"tracking\":\"TRK-42\"}"));
    atomic_store(&second_complete_status, tc_step_complete(step, "{\"tracking\":\"again\"}"));
    atomic_store(&late_fail_status, tc_step_fail(step, "too late", false, -1));
    leave();
}

/* Also calls the engine from inside a handler: the task is still in progress. */
static void notify(tc_step *step, void *user_data) {
    enter(step, user_data);
    atomic_fetch_add(&calls_notify, 1);
    HANDLER_CHECK(has_pair(tc_step_inputs_json(step), "tracking", "\"TRK-42\""));
    char *task = NULL;
    HANDLER_OK(tc_task_json(engine, tc_step_task_id(step), &task));
    HANDLER_CHECK(task != NULL && tj_is(tj_get(task, "status"), "in_progress"));
    HANDLER_CHECK(task != NULL && tj_is(tj_get(tj_step(task, "notify"), "status"), "in_progress"));
    tc_string_free(task);
    HANDLER_OK(tc_step_complete(step, "{\"notified\":true}"));
    leave();
}

static void doomed(tc_step *step, void *user_data) {
    enter(step, user_data);
    atomic_fetch_add(&calls_doomed, 1);
    HANDLER_OK(tc_step_fail(step, "card declined", false, -1));
    leave();
}

static void after_doomed(tc_step *step, void *user_data) {
    enter(step, user_data);
    atomic_fetch_add(&calls_after_doomed, 1);
    HANDLER_OK(tc_step_complete(step, "{}"));
    leave();
}

/* Runs although its parent failed; the parent's input is null. */
static void cleanup(tc_step *step, void *user_data) {
    enter(step, user_data);
    atomic_fetch_add(&calls_cleanup, 1);
    HANDLER_CHECK(has_pair(tc_step_inputs_json(step), "doomed", "null"));
    HANDLER_OK(tc_step_complete(step, "{\"cleaned\":true}"));
    leave();
}

/* Bad decisions are refused (nothing reported), then the large branch is chosen. */
static void route(tc_step *step, void *user_data) {
    enter(step, user_data);
    atomic_fetch_add(&calls_route, 1);
    HANDLER_CHECK(tc_step_decide(step, "\"large\"", NULL) == TC_ERR_INVALID_ARGUMENT);
    HANDLER_CHECK(tc_step_decide(step, "[1]", NULL) == TC_ERR_INVALID_ARGUMENT);
    HANDLER_CHECK(tc_step_decide(step, "[", NULL) == TC_ERR_JSON);
    HANDLER_CHECK(tc_step_decide(step, NULL, NULL) == TC_ERR_NULL);
    HANDLER_OK(tc_step_decide(step, "[\"large\"]", "{\"amount\":9000}"));
    HANDLER_CHECK(tc_step_decide(step, "[\"small\"]", NULL) == TC_ERR_INVALID_TRANSITION);
    leave();
}

static void small(tc_step *step, void *user_data) {
    enter(step, user_data);
    atomic_fetch_add(&calls_small, 1);
    HANDLER_OK(tc_step_complete(step, "{}"));
    leave();
}

/* Gets the decision's result as its input. */
static void large(tc_step *step, void *user_data) {
    enter(step, user_data);
    atomic_fetch_add(&calls_large, 1);
    HANDLER_CHECK(int_after(tc_step_inputs_json(step), "amount") == 9000);
    HANDLER_OK(tc_step_complete(step, "{\"approved\":true}"));
    leave();
}

/* Sees the branch that ran, not the one passed over. */
static void converge(tc_step *step, void *user_data) {
    enter(step, user_data);
    atomic_fetch_add(&calls_converge, 1);
    const char *inputs = tc_step_inputs_json(step);
    HANDLER_CHECK(strstr(inputs, "\"large\"") != NULL && strstr(inputs, "\"small\"") == NULL);
    HANDLER_OK(tc_step_complete(step, "{\"done\":true}"));
    leave();
}

/* Bad batches are refused (nothing reported), then five items are sliced. */
static void load(tc_step *step, void *user_data) {
    enter(step, user_data);
    atomic_fetch_add(&calls_load, 1);
    HANDLER_CHECK(tc_step_batch_json(step) == NULL);
    HANDLER_CHECK(tc_step_batch_items(step, "{\"items\":[]}", NULL) == TC_ERR_INVALID_ARGUMENT);
    HANDLER_CHECK(tc_step_batch_items(step, "[1,", NULL) == TC_ERR_JSON);
    HANDLER_OK(tc_step_batch_items(step, "[1,2,3,4,5]", "{\"rows\":5}"));
    leave();
}

/* Sums its slice's items; never two slices at once (parallelism 1). */
static void chunk(tc_step *step, void *user_data) {
    enter(step, user_data);
    atomic_fetch_add(&calls_chunk, 1);
    HANDLER_CHECK(atomic_fetch_add(&chunks_running, 1) == 0);
    const char *slice = tc_step_batch_json(step);
    HANDLER_CHECK(slice != NULL && strstr(slice, "\"items\"") != NULL);
    long sum = 0;
    const char *items = slice ? strchr(strstr(slice, "\"items\""), '[') : NULL;
    for (const char *at = items ? items + 1 : ""; *at && *at != ']'; at++)
        if (*at >= '0' && *at <= '9') sum += strtol(at, (char **)&at, 10), at--;
    char result[32];
    snprintf(result, sizeof result, "{\"sum\":%ld}", sum);
    sleep_ms(5);
    atomic_fetch_sub(&chunks_running, 1);
    HANDLER_OK(tc_step_complete(step, result));
    leave();
}

/* Gets the slices' results in slice order. */
static void total_up(tc_step *step, void *user_data) {
    enter(step, user_data);
    atomic_fetch_add(&calls_total_up, 1);
    const char *inputs = tc_step_inputs_json(step);
    HANDLER_CHECK(strstr(inputs, "[{\"sum\":3},{\"sum\":7},{\"sum\":5}]") != NULL);
    HANDLER_OK(tc_step_complete(step, "{}"));
    leave();
}

/* Bad children are refused (nothing reported), then two children of `kid` are started. */
static void spawn(tc_step *step, void *user_data) {
    enter(step, user_data);
    atomic_fetch_add(&calls_spawn, 1);
    HANDLER_CHECK(tc_step_spawn(step, "[{\"namespace\":\"c_worker\"}]") == TC_ERR_JSON);
    HANDLER_CHECK(tc_step_spawn(step, "{\"x\":1") == TC_ERR_JSON);
    HANDLER_OK(tc_step_spawn(step,
                             "[{\"namespace\":\"c_worker\",\"name\":\"kid\",\"context\":{\"i\":0}},"
                             "{\"namespace\":\"c_worker\",\"name\":\"kid\",\"context\":{\"i\":1}}]"));
    leave();
}

static void kid_step(tc_step *step, void *user_data) {
    enter(step, user_data);
    atomic_fetch_add(&calls_kid, 1);
    char result[32];
    snprintf(result, sizeof result, "{\"i\":%ld}", int_after(tc_step_context_json(step), "i"));
    HANDLER_OK(tc_step_complete(step, result));
    leave();
}

/* Gets the children's leaf results in order. */
static void gather(tc_step *step, void *user_data) {
    enter(step, user_data);
    atomic_fetch_add(&calls_gather, 1);
    const char *inputs = tc_step_inputs_json(step);
    HANDLER_CHECK(strstr(inputs, "[{\"kid_step\":{\"i\":0}},{\"kid_step\":{\"i\":1}}]") != NULL);
    HANDLER_OK(tc_step_complete(step, "{}"));
    leave();
}

static void slow(tc_step *step, void *user_data) {
    enter(step, user_data);
    atomic_fetch_add(&calls_slow, 1);
    sleep_ms(30);
    HANDLER_OK(tc_step_complete(step, "{\"slept_ms\":30}"));
    leave();
}

/* Drains `sub` and counts its events named `name` about step `a` and about step `b`. */
static void count_events(tc_subscription *sub, const char *name, const char *a, int *count_a,
                         const char *b, int *count_b) {
    *count_a = *count_b = 0;
    for (;;) {
        char *event = NULL;
        ASSERT_OK(tc_subscription_next_json(sub, 0, &event));
        if (!event) return;
        if (tj_is(tj_get(event, "name"), name)) {
            if (tj_is(tj_get(event, "step_name"), a)) (*count_a)++;
            if (tj_is(tj_get(event, "step_name"), b)) (*count_b)++;
        }
        tc_string_free(event);
    }
}

int main(void) {
    tc_engine *e = NULL;
    ASSERT_OK(tc_engine_open("memory:", &e));
    engine = e;
    ASSERT_OK(tc_register_template(e, FULFIL_YAML));
    ASSERT_OK(tc_register_template(e, DOOMED_YAML));
    ASSERT_OK(tc_register_template(e, FANOUT_YAML));
    ASSERT_OK(tc_register_template(e, ROUTE_YAML));
    ASSERT_OK(tc_register_template(e, BATCH_YAML));
    ASSERT_OK(tc_register_template(e, FAMILY_YAML));
    ASSERT_OK(tc_register_template(e, KID_YAML));

    tc_subscription *retries = NULL, *orders = NULL;
    ASSERT_OK(tc_subscribe(e, "step.retry_scheduled", &retries));
    ASSERT_OK(tc_subscribe(e, "order.*", &orders));

    char *order = NULL, *failing = NULL, *fanout = NULL, *routed = NULL, *batched = NULL;
    char *family = NULL;
    ASSERT_OK(tc_create_task(e, "c_worker", "fulfil", "{\"order\":42}", &order));
    ASSERT_OK(tc_create_task(e, "c_worker", "doomed", NULL, &failing));
    ASSERT_OK(tc_create_task(e, "c_worker", "fanout", NULL, &fanout));
    ASSERT_OK(tc_create_task(e, "c_worker", "route", NULL, &routed));
    ASSERT_OK(tc_create_task(e, "c_worker", "batch", NULL, &batched));
    ASSERT_OK(tc_create_task(e, "c_worker", "family", NULL, &family));

    tc_worker *w = NULL;
    ASSERT_OK(tc_worker_new(e, CONCURRENCY, &w));
    static const struct {
        const char *name;
        tc_handler_fn fn;
    } handlers[] = {
        {"validate", validate},         {"charge", charge},   {"reserve_stock", reserve_stock},
        {"ship", ship},                 {"notify", notify},   {"doomed", doomed},
        {"after_doomed", after_doomed}, {"cleanup", cleanup}, {"slow", slow},
        {"route", route},               {"small", small},     {"large", large},
        {"converge", converge},         {"load", load},       {"chunk", chunk},
        {"total_up", total_up},         {"spawn", spawn},     {"kid_step", kid_step},
        {"gather", gather},
    };
    for (size_t i = 0; i < sizeof handlers / sizeof *handlers; i++)
        ASSERT_OK(tc_worker_register(w, handlers[i].name, handlers[i].fn, &user_data_tag));

    long long start = now_ms();
    ASSERT_OK(tc_worker_run_until_idle(w, 60000));
    long long took = now_ms() - start;
    printf("run_until_idle: %lld ms, at most %d handlers at once\n", took,
           atomic_load(&max_running));

    ASSERT(atomic_load(&failures) == 0);
    ASSERT(atomic_load(&running) == 0);

    /* The order: every step complete; charge and reserve_stock needed two attempts. */
    char *json = TASK_JSON(e, order);
    ASSERT_SHOW(tj_is(tj_get(json, "status"), "complete"), json);
    static const struct {
        const char *step;
        long attempts;
    } expected[] = {
        {"validate", 1}, {"charge", 2}, {"reserve_stock", 2}, {"ship", 1}, {"notify", 1},
    };
    for (size_t i = 0; i < sizeof expected / sizeof *expected; i++) {
        const char *step = tj_step(json, expected[i].step);
        ASSERT_SHOW(step != NULL, json);
        ASSERT_SHOW(tj_is(tj_get(step, "status"), "complete"), json);
        ASSERT_SHOW(tj_int(tj_get(step, "attempts")) == expected[i].attempts, json);
    }
    const char *shipped = tj_get(tj_step(json, "ship"), "result");
    ASSERT_SHOW(shipped != NULL && strstr(shipped, "TRK-42") != NULL, json);
    tc_string_free(json);
    ASSERT(atomic_load(&calls_validate) == 1);
    ASSERT(atomic_load(&calls_charge) == 2);
    ASSERT(atomic_load(&calls_reserve) == 2);
    ASSERT(atomic_load(&calls_ship) == 1);
    ASSERT(atomic_load(&calls_notify) == 1);
    ASSERT(atomic_load(&second_complete_status) == TC_ERR_INVALID_TRANSITION);
    ASSERT(atomic_load(&late_fail_status) == TC_ERR_INVALID_TRANSITION);

    /* The metrics count them: charge failed once (retried), then completed. */
    char *metrics = NULL;
    ASSERT_OK(tc_metrics(e, &metrics));
    ASSERT_SHOW(strstr(metrics, "tasker_steps_total{namespace=\"c_worker\",task=\"fulfil\","
                                "step=\"charge\",outcome=\"retried\"} 1\n") != NULL,
                metrics);
    ASSERT_SHOW(strstr(metrics, "tasker_steps_total{namespace=\"c_worker\",task=\"fulfil\","
                                "step=\"charge\",outcome=\"completed\"} 1\n") != NULL,
                metrics);
    ASSERT_SHOW(strstr(metrics, "# EOF\n") != NULL, metrics);
    tc_string_free(metrics);
    ASSERT(tc_metrics(e, NULL) == TC_ERR_NULL);
    char *stats = NULL;
    ASSERT_OK(tc_stats_json(e, &stats));
    ASSERT_SHOW(strstr(stats, "\"handlers\"") != NULL && strstr(stats, "\"charge\"") != NULL,
                stats);
    ASSERT_SHOW(tj_int(tj_get(stats, "recovered")) >= 2, stats);
    tc_string_free(stats);

    /* charge's two attempts logged their lines; an unknown step is not found. */
    ASSERT_OK(tc_logs_json(e, order, "charge", &json));
    const char *first = strstr(json, "\"charging\"");
    ASSERT_SHOW(first != NULL && strstr(first + 1, "\"charging\"") != NULL, json);
    ASSERT_SHOW(strstr(json, "\"the gateway is busy\"") != NULL, json);
    ASSERT_SHOW(strstr(json, "\"level\":\"error\"") != NULL, json);
    tc_string_free(json);
    ASSERT(tc_logs_json(e, order, "nope", &json) == TC_ERR_NOT_FOUND);
    ASSERT_OK(tc_logs_json(e, order, NULL, &json));
    ASSERT_SHOW(strstr(json, "\"step\":\"charge\"") != NULL, json);
    tc_string_free(json);

    /* Both failed attempts were scheduled for a retry; the audit trail shows them. */
    ASSERT_OK(tc_transitions_json(e, order, &json));
    ASSERT_SHOW(strstr(json, "\"waiting_for_retry\"") != NULL, json);
    tc_string_free(json);
    int charge_retries, reserve_retries;
    count_events(retries, "step.retry_scheduled", "charge", &charge_retries, "reserve_stock",
                 &reserve_retries);
    ASSERT(charge_retries == 1);
    ASSERT(reserve_retries == 1);
    tc_subscription_free(retries);

    /* The two custom events validate published, in order, with their payloads. */
    char *event = NULL;
    ASSERT_OK(tc_subscription_next_json(orders, 1000, &event));
    ASSERT_SHOW(event != NULL && tj_is(tj_get(event, "name"), "order.validated"), event);
    ASSERT_SHOW(int_after(tj_get(event, "detail"), "order") == 42, event);
    ASSERT_SHOW(tj_is(tj_get(event, "step_name"), "validate"), event);
    tc_string_free(event);
    ASSERT_OK(tc_subscription_next_json(orders, 1000, &event));
    ASSERT_SHOW(event != NULL && tj_is(tj_get(event, "name"), "order.noted"), event);
    tc_string_free(event);
    ASSERT_OK(tc_subscription_next_json(orders, 50, &event));
    ASSERT_SHOW(event == NULL, event);
    tc_subscription_free(orders);

    /* The permanent failure: no retry, its required dependent skipped, the other ran. */
    json = TASK_JSON(e, failing);
    ASSERT_SHOW(tj_is(tj_get(json, "status"), "error"), json);
    ASSERT_SHOW(tj_is(tj_get(tj_step(json, "doomed"), "status"), "error"), json);
    ASSERT_SHOW(tj_int(tj_get(tj_step(json, "doomed"), "attempts")) == 1, json);
    ASSERT_SHOW(tj_is(tj_get(tj_step(json, "doomed"), "error"), "card declined"), json);
    ASSERT_SHOW(tj_is(tj_get(tj_step(json, "after_doomed"), "status"), "skipped"), json);
    ASSERT_SHOW(tj_is(tj_get(tj_step(json, "cleanup"), "status"), "complete"), json);
    tc_string_free(json);
    ASSERT(atomic_load(&calls_doomed) == 1);
    ASSERT(atomic_load(&calls_after_doomed) == 0);
    ASSERT(atomic_load(&calls_cleanup) == 1);

    /* The decision: large ran, small was passed over, the convergence ran after it. */
    json = TASK_JSON(e, routed);
    ASSERT_SHOW(tj_is(tj_get(json, "status"), "complete"), json);
    ASSERT_SHOW(tj_is(tj_get(tj_step(json, "small"), "status"), "skipped"), json);
    ASSERT_SHOW(tj_is(tj_get(tj_step(json, "small"), "skip_reason"), "not chosen"), json);
    ASSERT_SHOW(tj_is(tj_get(tj_step(json, "converge"), "status"), "complete"), json);
    tc_string_free(json);
    ASSERT(atomic_load(&calls_route) == 1);
    ASSERT(atomic_load(&calls_small) == 0);
    ASSERT(atomic_load(&calls_large) == 1);
    ASSERT(atomic_load(&calls_converge) == 1);

    /* The batch: three slices, one at a time, then the step after them. */
    ASSERT_TASK_STATUS(e, batched, "complete");
    json = TASK_JSON(e, batched);
    ASSERT_SHOW(tj_is(tj_get(tj_step(json, "chunk[2]"), "instance_of"), "chunk"), json);
    tc_string_free(json);
    ASSERT(atomic_load(&calls_load) == 1);
    ASSERT(atomic_load(&calls_chunk) == 3);
    ASSERT(atomic_load(&calls_total_up) == 1);

    /* The family: two children ran, the step after the spawning one got their results. */
    ASSERT_TASK_STATUS(e, family, "complete");
    json = TASK_JSON(e, family);
    ASSERT_SHOW(tj_is(tj_get(tj_step(json, "spawn"), "status"), "complete"), json);
    tc_string_free(json);
    ASSERT(atomic_load(&calls_spawn) == 1);
    ASSERT(atomic_load(&calls_kid) == 2);
    ASSERT(atomic_load(&calls_gather) == 1);
    size_t tended = 99;
    ASSERT_OK(tc_tend_children(e, &tended));
    ASSERT(tended == 0);
    ASSERT_OK(tc_tend_children(e, NULL));

    /* The fan-out: all twelve ran, never more than CONCURRENCY handlers at once. */
    ASSERT_TASK_STATUS(e, fanout, "complete");
    ASSERT(atomic_load(&calls_slow) == 12);
    ASSERT(atomic_load(&max_running) <= CONCURRENCY);
    ASSERT(atomic_load(&max_running) >= 2);

    /* Nothing is left: a second run returns at once. */
    start = now_ms();
    ASSERT_OK(tc_worker_run_until_idle(w, 60000));
    ASSERT(now_ms() - start < 10000);
    ASSERT(atomic_load(&calls_slow) == 12);

    tc_worker_free(w);
    tc_string_free(order);
    tc_string_free(failing);
    tc_string_free(fanout);
    tc_string_free(family);
    tc_string_free(routed);
    tc_string_free(batched);
    ASSERT_OK(tc_engine_close(e));
    printf("test_worker: ok\n");
    return 0;
}
