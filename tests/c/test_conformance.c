/*
 * test_conformance.c — the worker conformance suite, C side: the cases of
 * core/tests/worker_conformance.rs through the C ABI (../shared/API.md § "Worker semantics").
 * A C handler cannot be killed: past timeout_ms its attempt fails ("timed out") and its late
 * report is refused; the lease is renewed while a handler runs; a dead worker's step comes back.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tasker_core.h"
#include "tc_test.h"

static const char *TIMEOUT_YAML = "namespace: conf\nname: timeout\nversion: 1.0.0\nsteps:\n"
                                  "  - name: s\n    timeout_ms: 300\n"
                                  "    retry: { max_attempts: 2, backoff_base_ms: 1, jitter: false }\n";
static const char *LEASE_YAML = "namespace: conf\nname: lease\nversion: 1.0.0\nsteps:\n"
                                "  - name: s\n    timeout_ms: 20000\n    lease_ms: 300\n";
static const char *DEAD_YAML = "namespace: conf\nname: dead\nversion: 1.0.0\nsteps:\n"
                               "  - name: s\n    lease_ms: 200\n"
                               "    retry: { max_attempts: 3, backoff_base_ms: 1, jitter: false }\n";

static void slow_first(tc_step *step, void *user_data) {
    (void)user_data;
    if (tc_step_attempt(step) == 1) {
        sleep_ms(900); /* past the 300 ms timeout: this report comes too late */
        tc_step_complete(step, "\"late\"");
        return;
    }
    tc_step_complete(step, "\"on time\"");
}

static void long_running(tc_step *step, void *user_data) {
    (void)user_data;
    sleep_ms(1500); /* five leases long: the worker renews it meanwhile */
    tc_step_complete(step, "\"alive\"");
}

static void recovered(tc_step *step, void *user_data) {
    (void)user_data;
    tc_step_complete(step, "\"recovered\"");
}

static int count_events(tc_engine *e, const char *id, const char *event) {
    char *json = NULL;
    ASSERT_OK(tc_transitions_json(e, id, &json));
    int n = 0;
    for (size_t i = 0; i < tj_len(json); i++) {
        const char *t = tj_at(json, i);
        if (tj_is(tj_get(t, "event"), event))
            n++;
    }
    tc_string_free(json);
    return n;
}

static void run(tc_engine *e, const char *handler, tc_handler_fn fn) {
    tc_worker *w = NULL;
    ASSERT_OK(tc_worker_new(e, 2, &w));
    ASSERT_OK(tc_worker_register(w, handler, fn, NULL));
    ASSERT_OK(tc_worker_run_until_idle(w, 60000));
    tc_worker_free(w);
}

int main(void) {
    char path[64], url[80];
    temp_sqlite(path, url);
    const char *urls[] = {"memory:", url};
    for (int u = 0; u < 2; u++) {
        tc_engine *e = NULL;
        ASSERT_OK(tc_engine_open(urls[u], &e));
        ASSERT_OK(tc_register_template(e, TIMEOUT_YAML));
        ASSERT_OK(tc_register_template(e, LEASE_YAML));
        ASSERT_OK(tc_register_template(e, DEAD_YAML));

        /* timeout_ms bounds an attempt; the late report is refused; the step runs again. */
        char *id = NULL;
        ASSERT_OK(tc_create_task(e, "conf", "timeout", NULL, &id));
        run(e, "s", slow_first);
        char *task = TASK_JSON(e, id);
        const char *s = tj_step(task, "s");
        ASSERT(tj_is(tj_get(s, "status"), "complete"));
        ASSERT(tj_is(tj_get(s, "result"), "on time"));
        ASSERT(tj_int(tj_get(s, "attempts")) == 2);
        tc_string_free(task);
        ASSERT(count_events(e, id, "fail") == 1);
        tc_string_free(id);

        /* The lease is renewed while a long handler runs: one attempt, no expiry. */
        ASSERT_OK(tc_create_task(e, "conf", "lease", NULL, &id));
        run(e, "s", long_running);
        task = TASK_JSON(e, id);
        ASSERT(tj_int(tj_get(tj_step(task, "s"), "attempts")) == 1);
        tc_string_free(task);
        ASSERT(count_events(e, id, "lease_expired") == 0);
        tc_string_free(id);

        /* A dead worker's step comes back after its lease. */
        ASSERT_OK(tc_create_task(e, "conf", "dead", NULL, &id));
        tc_claim_batch *dead = NULL;
        ASSERT_OK(tc_claim(e, "dead-worker", NULL, 0, 1, 0, &dead));
        ASSERT(tc_claim_batch_len(dead) == 1);
        run(e, "s", recovered);
        task = TASK_JSON(e, id);
        ASSERT(tj_is(tj_get(tj_step(task, "s"), "status"), "complete"));
        ASSERT(tj_int(tj_get(tj_step(task, "s"), "attempts")) == 2);
        tc_string_free(task);
        ASSERT(count_events(e, id, "lease_expired") == 1);
        tc_claim_batch_free(dead);
        tc_string_free(id);

        ASSERT_OK(tc_engine_close(e));
    }
    remove_sqlite(path);
    printf("test_conformance: ok\n");
    return 0;
}
