/*
 * test_threads.c — a host with its own threads driving the low-level protocol: four pthreads
 * loop tc_claim / tc_step_complete / tc_claim_batch_free on one engine until 50 tasks of a
 * three-step chain are complete. Each step is completed exactly once, never before its parent;
 * a late report after the task was cancelled is refused with TC_ERR_CLAIM_LOST.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tasker_core.h"
#include "tc_test.h"

static const char *CHAIN_YAML =
    "namespace: c_threads\n"
    "name: chain\n"
    "version: 1.0.0\n"
    "steps:\n"
    "  - name: a\n"
    "  - name: b\n"
    "    depends_on: [a]\n"
    "  - name: c\n"
    "    depends_on: [b]\n";

static const char *VICTIM_YAML =
    "namespace: c_threads\n"
    "name: victim\n"
    "version: 1.0.0\n"
    "steps:\n"
    "  - name: victim\n";

#define TASKS 50
#define STEPS 3
#define THREADS 4

static tc_engine *engine;
static char *task_ids[TASKS];       /* written before the threads start */
static atomic_int done[TASKS][STEPS]; /* completions per step */
static atomic_int total_done;
static atomic_int failures;
static atomic_int claimed_by[THREADS];

#define THREAD_CHECK(cond)                                                                      \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            const char *m_ = tc_last_error_message();                                           \
            fprintf(stderr, "%s:%d: thread check failed: %s (last error: %s)\n", __FILE__,      \
                    __LINE__, #cond, m_ ? m_ : "none");                                         \
            atomic_fetch_add(&failures, 1);                                                     \
        }                                                                                       \
    } while (0)

static int task_index(const char *task_id) {
    for (int i = 0; i < TASKS; i++)
        if (strcmp(task_ids[i], task_id) == 0) return i;
    return -1;
}

static void work_on(tc_step *step, int thread) {
    const char *name = tc_step_name(step);
    int t = task_index(tc_step_task_id(step));
    THREAD_CHECK(t >= 0);
    THREAD_CHECK(name != NULL && strlen(name) == 1 && name[0] >= 'a' && name[0] <= 'c');
    if (t < 0 || name == NULL) return;
    int s = name[0] - 'a';

    /* The step id names the step's index in the template. */
    char suffix[8];
    snprintf(suffix, sizeof suffix, "/%d", s);
    const char *id = tc_step_id(step);
    THREAD_CHECK(id != NULL && strlen(id) > 2 && strcmp(id + strlen(id) - 2, suffix) == 0);

    /* A step runs after its parent completed; its inputs carry the parent's result. */
    const char *inputs = tc_step_inputs_json(step);
    if (s > 0) {
        THREAD_CHECK(atomic_load(&done[t][s - 1]) == 1);
        char parent[8];
        snprintf(parent, sizeof parent, "\"%c\"", 'a' + s - 1);
        THREAD_CHECK(inputs != NULL && strstr(inputs, parent) != NULL);
    }
    THREAD_CHECK(tc_step_attempt(step) == 1);
    THREAD_CHECK(strstr(tc_step_context_json(step), "\"n\"") != NULL);

    /* Counted before the report, so that the child's claim sees it. */
    atomic_fetch_add(&done[t][s], 1);
    char result[64];
    snprintf(result, sizeof result, "{\"by\":%d,\"step\":\"%c\"}", thread, 'a' + s);
    if (s == 1) THREAD_CHECK(tc_step_heartbeat(step) == TC_OK);
    tc_status st = tc_step_complete(step, result);
    THREAD_CHECK(st == TC_OK);
    if (st == TC_OK) atomic_fetch_add(&total_done, 1);
}

static void *host_thread(void *arg) {
    int thread = (int)(size_t)arg;
    char worker_id[32];
    snprintf(worker_id, sizeof worker_id, "c-host-%d", thread);
    long long deadline = now_ms() + 120000;
    while (atomic_load(&total_done) < TASKS * STEPS && now_ms() < deadline &&
           atomic_load(&failures) == 0) {
        tc_claim_batch *batch = NULL;
        tc_status st = tc_claim(engine, worker_id, NULL, 0, 2, 50, &batch);
        THREAD_CHECK(st == TC_OK);
        if (st != TC_OK) break;
        size_t n = tc_claim_batch_len(batch);
        THREAD_CHECK(n <= 2);
        THREAD_CHECK(tc_claim_batch_get(batch, n) == NULL);
        for (size_t i = 0; i < n; i++) {
            tc_step *step = tc_claim_batch_get(batch, i);
            THREAD_CHECK(step != NULL);
            if (step) work_on(step, thread);
        }
        atomic_fetch_add(&claimed_by[thread], (int)n);
        tc_claim_batch_free(batch);
    }
    return NULL;
}

/* Claims the victim step of `task_id`; the caller frees *batch. */
static tc_step *claim_victim(const char *task_id, tc_claim_batch **batch) {
    const char *handlers[] = {"victim"};
    long long deadline = now_ms() + 10000;
    while (now_ms() < deadline) {
        ASSERT_OK(tc_claim(engine, "c-host-late", handlers, 1, 1, 200, batch));
        if (tc_claim_batch_len(*batch) == 1 &&
            strcmp(tc_step_task_id(tc_claim_batch_get(*batch, 0)), task_id) == 0)
            return tc_claim_batch_get(*batch, 0);
        tc_claim_batch_free(*batch);
    }
    ASSERT(!"the victim step was not handed out in 10 s");
    return NULL;
}

static void test_late_reports_after_cancel_are_refused(void) {
    ASSERT_OK(tc_register_template(engine, VICTIM_YAML));

    char *id = NULL;
    tc_claim_batch *batch = NULL;
    ASSERT_OK(tc_create_task(engine, "c_threads", "victim", NULL, &id));
    tc_step *step = claim_victim(id, &batch);
    ASSERT_OK(tc_cancel_task(engine, id));
    ASSERT_TASK_STATUS(engine, id, "cancelled");
    ASSERT_FAILS(TC_ERR_CLAIM_LOST, tc_step_complete(step, "{\"late\":true}"));
    tc_claim_batch_free(batch);
    ASSERT_STEP_STATUS(engine, id, "victim", "cancelled");
    tc_string_free(id);

    /* The same for a failure report and a heartbeat. */
    ASSERT_OK(tc_create_task(engine, "c_threads", "victim", NULL, &id));
    step = claim_victim(id, &batch);
    ASSERT_OK(tc_cancel_task(engine, id));
    ASSERT_FAILS(TC_ERR_CLAIM_LOST, tc_step_heartbeat(step));
    ASSERT_FAILS(TC_ERR_CLAIM_LOST, tc_step_fail(step, "late", true, -1));
    tc_claim_batch_free(batch);
    ASSERT_TASK_STATUS(engine, id, "cancelled");
    tc_string_free(id);
}

int main(void) {
    ASSERT_OK(tc_engine_open("memory:", &engine));
    ASSERT_OK(tc_register_template(engine, CHAIN_YAML));
    for (int i = 0; i < TASKS; i++) {
        char context[32];
        snprintf(context, sizeof context, "{\"n\":%d}", i);
        ASSERT_OK(tc_create_task(engine, "c_threads", "chain", context, &task_ids[i]));
    }

    long long start = now_ms();
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++)
        ASSERT(pthread_create(&threads[i], NULL, host_thread, (void *)(size_t)i) == 0);
    for (int i = 0; i < THREADS; i++) ASSERT(pthread_join(threads[i], NULL) == 0);
    printf("%d steps in %lld ms; claimed per thread:", TASKS * STEPS, now_ms() - start);
    for (int i = 0; i < THREADS; i++) printf(" %d", atomic_load(&claimed_by[i]));
    printf("\n");

    ASSERT(atomic_load(&failures) == 0);
    ASSERT(atomic_load(&total_done) == TASKS * STEPS);
    for (int t = 0; t < TASKS; t++)
        for (int s = 0; s < STEPS; s++) ASSERT(atomic_load(&done[t][s]) == 1);

    /* Every task is complete, by the list and by each task's own view. */
    char *json = NULL;
    ASSERT_OK(tc_list_tasks_json(engine, "complete", "c_threads", 1000, &json));
    ASSERT_SHOW(tj_len(json) == TASKS, json);
    tc_string_free(json);
    for (int t = 0; t < TASKS; t++) {
        json = TASK_JSON(engine, task_ids[t]);
        ASSERT_SHOW(tj_is(tj_get(json, "status"), "complete"), json);
        const char *c = tj_step(json, "c");
        ASSERT_SHOW(tj_int(tj_get(c, "attempts")) == 1, json);
        const char *result = tj_get(c, "result");
        ASSERT_SHOW(result != NULL && strstr(result, "\"by\"") != NULL, json);
        tc_string_free(json);
    }
    /* Nothing is left to claim. */
    tc_claim_batch *batch = NULL;
    ASSERT_OK(tc_claim(engine, "c-host-main", NULL, 0, 10, 0, &batch));
    ASSERT(tc_claim_batch_len(batch) == 0);
    tc_claim_batch_free(batch);

    test_late_reports_after_cancel_are_refused();

    for (int i = 0; i < TASKS; i++) tc_string_free(task_ids[i]);
    ASSERT_OK(tc_engine_close(engine));
    printf("test_threads: ok\n");
    return 0;
}
