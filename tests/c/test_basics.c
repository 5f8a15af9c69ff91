/*
 * test_basics.c — the C API's ordinary paths: version and status names, opening memory and
 * SQLite engines, templates (YAML, JSON, refusals), creating tasks, the JSON views, the operator
 * verbs and event subscriptions.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tasker_core.h"
#include "tc_test.h"

/* Version 1.0.0 of c_basics/order: two steps. */
static const char *ORDER_V1_YAML =
    "namespace: c_basics\n"
    "name: order\n"
    "version: 1.0.0\n"
    "description: two steps\n"
    "steps:\n"
    "  - name: validate\n"
    "  - name: charge\n"
    "    depends_on: [validate]\n";

/* Version 2.0.0 of the same template, with a third step: the newest. */
static const char *ORDER_V2_YAML =
    "namespace: c_basics\n"
    "name: order\n"
    "version: 2.0.0\n"
    "steps:\n"
    "  - name: validate\n"
    "  - name: charge\n"
    "    depends_on: [validate]\n"
    "  - name: ship\n"
    "    depends_on: [charge]\n";

/* A one-step template as JSON; the step's handler is named `c_basics_only`. */
static const char *SINGLE_JSON =
    "{\"namespace\": \"c_basics\", \"name\": \"single\", \"version\": \"1.0.0\","
    " \"steps\": [{\"name\": \"only\", \"handler\": \"c_basics_only\"}]}";

static void test_version_and_status_names(void) {
    /* Nothing has failed on this thread yet. */
    ASSERT(tc_last_error_message() == NULL);

    const char *v = tc_version();
    ASSERT(v != NULL);
    ASSERT(strlen(v) > 0);
    ASSERT(strchr(v, '.') != NULL);
    ASSERT(strcmp(tc_version(), v) == 0);

    static const struct {
        tc_status status;
        const char *name;
    } names[] = {
        {TC_OK, "TC_OK"},
        {TC_ERR_TEMPLATE, "TC_ERR_TEMPLATE"},
        {TC_ERR_NOT_FOUND, "TC_ERR_NOT_FOUND"},
        {TC_ERR_INVALID_TRANSITION, "TC_ERR_INVALID_TRANSITION"},
        {TC_ERR_CLAIM_LOST, "TC_ERR_CLAIM_LOST"},
        {TC_ERR_STORE, "TC_ERR_STORE"},
        {TC_ERR_INVALID_ARGUMENT, "TC_ERR_INVALID_ARGUMENT"},
        {TC_ERR_NULL, "TC_ERR_NULL"},
        {TC_ERR_UTF8, "TC_ERR_UTF8"},
        {TC_ERR_JSON, "TC_ERR_JSON"},
        {TC_ERR_CLOSED, "TC_ERR_CLOSED"},
        {TC_ERR_PANIC, "TC_ERR_PANIC"},
        {TC_ERR_CONFLICT, "TC_ERR_CONFLICT"},
    };
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        const char *name = tc_status_name(names[i].status);
        ASSERT_SHOW(name != NULL && strcmp(name, names[i].name) == 0, names[i].name);
    }
    /* The numbers are part of the ABI. */
    ASSERT(TC_OK == 0 && TC_ERR_TEMPLATE == -1 && TC_ERR_NOT_FOUND == -2);
    ASSERT(TC_ERR_INVALID_TRANSITION == -3 && TC_ERR_CLAIM_LOST == -4 && TC_ERR_STORE == -5);
    ASSERT(TC_ERR_INVALID_ARGUMENT == -6 && TC_ERR_NULL == -7 && TC_ERR_UTF8 == -8);
    ASSERT(TC_ERR_JSON == -9 && TC_ERR_CLOSED == -10 && TC_ERR_PANIC == -11);
    ASSERT(TC_ERR_CONFLICT == -12);
    /* Any int is a defined argument: numbers that are no status have a name too. */
    ASSERT(strcmp(tc_status_name(42), "TC_UNKNOWN") == 0);
    ASSERT(strcmp(tc_status_name(-1000), "TC_UNKNOWN") == 0);
}

static void test_open_and_close(void) {
    tc_engine *e = NULL;
    ASSERT_OK(tc_engine_open("memory:", &e));
    ASSERT(e != NULL);
    ASSERT_OK(tc_engine_close(e));

    /* A SQLite file keeps its tasks across engines. */
    char path[64], url[80];
    temp_sqlite(path, url);
    char *task_id = NULL;
    ASSERT_OK(tc_engine_open(url, &e));
    ASSERT_OK(tc_register_template(e, ORDER_V1_YAML));
    ASSERT_OK(tc_create_task(e, "c_basics", "order", "{\"order\": 7}", &task_id));
    ASSERT(task_id != NULL);
    ASSERT_OK(tc_engine_close(e));

    e = NULL;
    ASSERT_OK(tc_engine_open(url, &e));
    char *json = TASK_JSON(e, task_id);
    ASSERT_SHOW(tj_is(tj_get(json, "id"), task_id), json);
    ASSERT_SHOW(tj_is(tj_get(json, "status"), "pending"), json);
    ASSERT_SHOW(tj_int(tj_get(tj_get(json, "context"), "order")) == 7, json);
    tc_string_free(json);
    /* The template was stored too: a new task of it can be created. */
    char *second = NULL;
    ASSERT_OK(tc_create_task(e, "c_basics", "order", NULL, &second));
    tc_string_free(second);
    ASSERT_OK(tc_engine_close(e));
    tc_string_free(task_id);
    remove_sqlite(path);

    /* No URL: sqlite://tasker.db in the working directory. */
    char cwd[4096];
    ASSERT(getcwd(cwd, sizeof cwd) != NULL);
    char dir[] = "/tmp/tasker-c-default-XXXXXX";
    ASSERT(mkdtemp(dir) != NULL);
    ASSERT(chdir(dir) == 0);
    e = NULL;
    ASSERT_OK(tc_engine_open(NULL, &e));
    ASSERT(e != NULL);
    ASSERT_OK(tc_register_template(e, ORDER_V1_YAML));
    ASSERT_OK(tc_engine_close(e));
    ASSERT(access("tasker.db", F_OK) == 0);
    remove_sqlite("tasker.db");
    ASSERT(chdir(cwd) == 0);
    ASSERT(rmdir(dir) == 0);
}

static void test_templates(tc_engine *e) {
    ASSERT_OK(tc_register_template(e, ORDER_V1_YAML));
    ASSERT_OK(tc_register_template(e, SINGLE_JSON));
    /* The same content again is accepted. */
    ASSERT_OK(tc_register_template(e, ORDER_V1_YAML));
    ASSERT_OK(tc_register_template(e, ORDER_V2_YAML));

    /* The same version with other content is refused. */
    ASSERT_FAILS(TC_ERR_TEMPLATE,
                 tc_register_template(e,
                                      "namespace: c_basics\nname: order\nversion: 1.0.0\n"
                                      "steps:\n  - name: something_else\n"));
    ASSERT_MESSAGE_HAS("1.0.0");

    /* A cycle is refused with a message that names its steps. */
    ASSERT_FAILS(TC_ERR_TEMPLATE, tc_register_template(e,
                                                       "namespace: c_basics\n"
                                                       "name: loop\n"
                                                       "version: 1.0.0\n"
                                                       "steps:\n"
                                                       "  - name: alpha\n"
                                                       "    depends_on: [beta]\n"
                                                       "  - name: beta\n"
                                                       "    depends_on: [alpha]\n"));
    ASSERT_MESSAGE_HAS("alpha");
    ASSERT_MESSAGE_HAS("beta");
    ASSERT_MESSAGE_HAS("cycle");

    /* An unknown dependency, a duplicate name, no steps, unparsable text, a bad version. */
    ASSERT_FAILS(TC_ERR_TEMPLATE,
                 tc_register_template(e, "{\"namespace\": \"c_basics\", \"name\": \"unknown\","
                                         " \"version\": \"1.0.0\", \"steps\": [{\"name\": "
                                         "\"gamma\", \"depends_on\": [\"delta\"]}]}"));
    ASSERT_MESSAGE_HAS("delta");
    ASSERT_FAILS(TC_ERR_TEMPLATE,
                 tc_register_template(e, "namespace: c_basics\nname: dup\nversion: 1.0.0\n"
                                         "steps:\n  - name: twice\n  - name: twice\n"));
    ASSERT_MESSAGE_HAS("twice");
    ASSERT_FAILS(TC_ERR_TEMPLATE,
                 tc_register_template(e, "namespace: c_basics\nname: empty\nversion: 1.0.0\n"
                                         "steps: []\n"));
    ASSERT_FAILS(TC_ERR_TEMPLATE, tc_register_template(e, "namespace: [c_basics\n"));
    ASSERT_FAILS(TC_ERR_TEMPLATE,
                 tc_register_template(e, "namespace: c_basics\nname: badversion\nversion: one\n"
                                         "steps:\n  - name: a\n"));
}

static void test_create_task(tc_engine *e) {
    char *id = NULL;
    ASSERT_OK(tc_create_task(e, "c_basics", "order", "{\"order\": 42}", &id));
    ASSERT(id != NULL);
    ASSERT(strlen(id) == 36 && id[8] == '-' && id[13] == '-');

    char *json = TASK_JSON(e, id);
    ASSERT_SHOW(strstr(json, "\"status\"") != NULL, json);
    ASSERT_SHOW(tj_is(tj_get(json, "id"), id), json);
    ASSERT_SHOW(tj_is(tj_get(json, "namespace"), "c_basics"), json);
    ASSERT_SHOW(tj_is(tj_get(json, "name"), "order"), json);
    ASSERT_SHOW(tj_is(tj_get(json, "version"), "2.0.0"), json); /* the newest */
    ASSERT_SHOW(tj_is(tj_get(json, "status"), "pending"), json);
    ASSERT_SHOW(tj_int(tj_get(tj_get(json, "context"), "order")) == 42, json);
    ASSERT_SHOW(tj_len(tj_get(json, "steps")) == 3, json);
    ASSERT_SHOW(tj_is(tj_get(tj_step(json, "validate"), "status"), "pending"), json);
    ASSERT_SHOW(tj_get(json, "progress") != NULL, json);
    ASSERT_SHOW(tj_get(json, "created_at") != NULL, json);
    tc_string_free(json);
    tc_string_free(id);

    /* No context: an empty object. */
    ASSERT_OK(tc_create_task(e, "c_basics", "order", NULL, &id));
    json = TASK_JSON(e, id);
    const char *context = tj_ws(tj_get(json, "context"));
    ASSERT_SHOW(context && context[0] == '{' && *tj_ws(context + 1) == '}', json);
    tc_string_free(json);
    tc_string_free(id);

    /* An explicit version, an idempotency key and a priority. */
    char *first = NULL, *again = NULL, *other = NULL;
    ASSERT_OK(tc_create_task_ex(e, "c_basics", "order", "{\"order\": 1}", "1.0.0", "order-1", 5,
                                &first));
    ASSERT_OK(tc_create_task_ex(e, "c_basics", "order", "{\"order\": 1}", "1.0.0", "order-1", 5,
                                &again));
    ASSERT(strcmp(first, again) == 0);
    ASSERT_OK(tc_create_task_ex(e, "c_basics", "order", NULL, NULL, "order-2", 0, &other));
    ASSERT(strcmp(first, other) != 0);
    json = TASK_JSON(e, first);
    ASSERT_SHOW(tj_is(tj_get(json, "version"), "1.0.0"), json);
    ASSERT_SHOW(tj_int(tj_get(json, "priority")) == 5, json);
    ASSERT_SHOW(tj_is(tj_get(json, "idempotency_key"), "order-1"), json);
    ASSERT_SHOW(tj_len(tj_get(json, "steps")) == 2, json);
    tc_string_free(json);
    json = TASK_JSON(e, other);
    ASSERT_SHOW(tj_is(tj_get(json, "version"), "2.0.0"), json);
    tc_string_free(json);
    tc_string_free(first);
    tc_string_free(again);
    tc_string_free(other);

    /* A malformed version is an invalid argument; an unknown one is not found. */
    char *out = NULL;
    ASSERT_FAILS_OUT(TC_ERR_INVALID_ARGUMENT, out,
                     tc_create_task_ex(e, "c_basics", "order", NULL, "one", NULL, 0, &out));
    ASSERT_MESSAGE_HAS("one");
    ASSERT_FAILS_OUT(TC_ERR_NOT_FOUND, out,
                     tc_create_task_ex(e, "c_basics", "order", NULL, "9.9.9", NULL, 0, &out));

    /* The same idempotency key for another context is a conflict; the limits are the core's. */
    ASSERT_FAILS_OUT(TC_ERR_CONFLICT, out,
                     tc_create_task_ex(e, "c_basics", "order", "{\"order\": 2}", "1.0.0",
                                       "order-1", 5, &out));
    ASSERT_MESSAGE_HAS("order-1");
    char deep[200] = {0};
    for (int i = 0; i < 65; i++)
        strcat(deep, "[");
    for (int i = 0; i < 65; i++)
        strcat(deep, "]");
    ASSERT_FAILS_OUT(TC_ERR_INVALID_ARGUMENT, out,
                     tc_create_task_ex(e, "c_basics", "order", deep, NULL, NULL, 0, &out));
    ASSERT_MESSAGE_HAS("deeper than 64");
    char key[300];
    memset(key, 'k', 256);
    key[256] = 0;
    ASSERT_FAILS_OUT(TC_ERR_INVALID_ARGUMENT, out,
                     tc_create_task_ex(e, "c_basics", "order", NULL, NULL, key, 0, &out));
    ASSERT_MESSAGE_HAS("256 bytes");

    /* Many at once: the ids in order; a bad batch writes nothing. */
    char *ids = NULL;
    ASSERT_OK(tc_create_tasks_json(e,
                                   "[{\"namespace\": \"c_basics\", \"name\": \"order\", "
                                   "\"context\": {\"n\": 1}}, {\"namespace\": \"c_basics\", "
                                   "\"name\": \"order\", \"priority\": 2}]",
                                   &ids));
    ASSERT_SHOW(tj_len(ids) == 2, ids);
    char *second_id = tj_strdup(tj_at(ids, 1));
    json = TASK_JSON(e, second_id);
    ASSERT_SHOW(tj_int(tj_get(json, "priority")) == 2, json);
    tc_string_free(json);
    free(second_id);
    tc_string_free(ids);
    ASSERT_FAILS_OUT(TC_ERR_JSON, out,
                     tc_create_tasks_json(e, "[{\"namespace\": \"c_basics\", \"nme\": 1}]", &out));
    ASSERT_FAILS_OUT(TC_ERR_NOT_FOUND, out,
                     tc_create_tasks_json(e,
                                          "[{\"namespace\": \"c_basics\", \"name\": \"order\"}, "
                                          "{\"namespace\": \"c_basics\", \"name\": \"nope\"}]",
                                          &out));

    /* Later: a delay or a start time; a bad time writes nothing. */
    ASSERT_OK(tc_create_tasks_json(e,
                                   "[{\"namespace\": \"c_basics\", \"name\": \"order\", "
                                   "\"delay_ms\": 3600000}, {\"namespace\": \"c_basics\", "
                                   "\"name\": \"order\", \"run_at\": \"2999-01-01T00:00:00Z\"}]",
                                   &ids));
    char *later = tj_strdup(tj_at(ids, 1));
    json = TASK_JSON(e, later);
    ASSERT_SHOW(strstr(json, "\"next_attempt_at\":\"2999-01-01T00:00:00") != NULL, json);
    tc_string_free(json);
    free(later);
    tc_string_free(ids);
    ASSERT_FAILS_OUT(TC_ERR_INVALID_ARGUMENT, out,
                     tc_create_tasks_json(e,
                                          "[{\"namespace\": \"c_basics\", \"name\": \"order\", "
                                          "\"run_at\": \"soon\"}]",
                                          &out));
    ASSERT_MESSAGE_HAS("RFC 3339");

    /* Purge: finished tasks only, before a time. */
    uint64_t purged = 99;
    ASSERT_OK(tc_purge(e, "2000-01-01T00:00:00Z", NULL, &purged));
    ASSERT(purged == 0);
    ASSERT(tc_purge(e, "2999-01-01T00:00:00Z", "[\"pending\"]", NULL) == TC_ERR_INVALID_ARGUMENT);
    ASSERT(tc_purge(e, "2999-01-01T00:00:00Z", "[\"nope\"]", NULL) == TC_ERR_JSON);
    ASSERT_OK(tc_purge(e, "2999-01-01T00:00:00Z", "[\"cancelled\", \"complete\"]", NULL));

    /* A durable schedule: registered, listed, fired (nothing due yet), removed. */
    char *sched = NULL;
    ASSERT_OK(tc_schedule_json(e,
                               "{\"name\": \"nightly\", \"cron\": \"0 3 * * *\", "
                               "\"namespace\": \"c_basics\", \"template\": \"order\", "
                               "\"timezone\": \"Europe/Paris\"}",
                               &sched));
    ASSERT_SHOW(tj_is(tj_get(sched, "name"), "nightly"), sched);
    ASSERT_SHOW(tj_is(tj_get(sched, "overlap"), "skip"), sched);
    tc_string_free(sched);
    ASSERT_FAILS_OUT(TC_ERR_INVALID_ARGUMENT, out,
                     tc_schedule_json(e,
                                      "{\"name\": \"bad\", \"cron\": \"61 * * * *\", "
                                      "\"namespace\": \"c_basics\", \"template\": \"order\"}",
                                      &out));
    ASSERT_FAILS_OUT(TC_ERR_JSON, out, tc_schedule_json(e, "{\"name\": 1}", &out));
    ASSERT_OK(tc_schedules_json(e, &sched));
    ASSERT_SHOW(tj_len(sched) == 1, sched);
    tc_string_free(sched);
    size_t fired = 99;
    ASSERT_OK(tc_fire_schedules(e, &fired));
    ASSERT(fired == 0);
    bool removed = false;
    ASSERT_OK(tc_unschedule(e, "nightly", &removed));
    ASSERT(removed);
    ASSERT_OK(tc_unschedule(e, "nightly", &removed));
    ASSERT(!removed);
}

static void test_views(void) {
    tc_engine *own = NULL;
    ASSERT_OK(tc_engine_open("memory:", &own));
    ASSERT_OK(tc_register_template(own, ORDER_V1_YAML));
    ASSERT_OK(tc_register_template(own, SINGLE_JSON));
    char *ids[3];
    ASSERT_OK(tc_create_task(own, "c_basics", "order", "{\"n\": 0}", &ids[0]));
    ASSERT_OK(tc_create_task(own, "c_basics", "order", "{\"n\": 1}", &ids[1]));
    ASSERT_OK(tc_create_task(own, "c_basics", "single", "{\"n\": 2}", &ids[2]));
    ASSERT_OK(tc_cancel_task(own, ids[1]));

    char *json = NULL;
    ASSERT_OK(tc_list_tasks_json(own, NULL, NULL, 100, &json));
    ASSERT_SHOW(tj_len(json) == 3, json);
    /* Newest first. */
    ASSERT_SHOW(tj_is(tj_get(tj_at(json, 0), "id"), ids[2]), json);
    ASSERT_SHOW(tj_get(tj_at(json, 0), "status") != NULL, json);
    tc_string_free(json);
    ASSERT_OK(tc_list_tasks_json(own, "pending", NULL, 100, &json));
    ASSERT_SHOW(tj_len(json) == 2, json);
    tc_string_free(json);
    ASSERT_OK(tc_list_tasks_json(own, "cancelled", "c_basics", 100, &json));
    ASSERT_SHOW(tj_len(json) == 1 && tj_is(tj_get(tj_at(json, 0), "id"), ids[1]), json);
    tc_string_free(json);
    ASSERT_OK(tc_list_tasks_json(own, NULL, "elsewhere", 100, &json));
    ASSERT_SHOW(tj_len(json) == 0, json);
    tc_string_free(json);
    ASSERT_OK(tc_list_tasks_json(own, NULL, NULL, 1, &json));
    ASSERT_SHOW(tj_len(json) == 1, json);
    tc_string_free(json);

    /* The audit trail: the task's creation comes first; cancellation is in it. */
    ASSERT_OK(tc_transitions_json(own, ids[1], &json));
    ASSERT_SHOW(tj_len(json) >= 2 && tj_len(json) != (size_t)-1, json);
    ASSERT_SHOW(tj_is(tj_get(tj_at(json, 0), "to"), "pending"), json);
    ASSERT_SHOW(tj_get(tj_at(json, 0), "at") != NULL, json);
    ASSERT_SHOW(strstr(json, "\"cancelled\"") != NULL, json);
    tc_string_free(json);

    /* The graph: two nodes, one edge. */
    ASSERT_OK(tc_graph_json(own, ids[0], &json));
    ASSERT_SHOW(tj_is(tj_get(json, "task_id"), ids[0]), json);
    ASSERT_SHOW(tj_len(tj_get(json, "nodes")) == 2, json);
    ASSERT_SHOW(tj_is(tj_get(tj_at(tj_get(json, "nodes"), 0), "name"), "validate"), json);
    ASSERT_SHOW(tj_len(tj_get(json, "edges")) == 1, json);
    ASSERT_SHOW(tj_is(tj_get(tj_at(tj_get(json, "edges"), 0), "from"), "validate"), json);
    ASSERT_SHOW(tj_is(tj_get(tj_at(tj_get(json, "edges"), 0), "to"), "charge"), json);
    tc_string_free(json);

    for (int i = 0; i < 3; i++) tc_string_free(ids[i]);
    ASSERT_OK(tc_engine_close(own));
}

/* Claims the step of `task_id` that `handler` runs; the caller frees *batch. */
static tc_step *claim_step_of(tc_engine *e, const char *handler, const char *task_id,
                              tc_claim_batch **batch) {
    const char *handlers[] = {handler};
    long long deadline = now_ms() + 10000;
    while (now_ms() < deadline) {
        *batch = NULL;
        ASSERT_OK(tc_claim(e, "c-basics", handlers, 1, 1, 200, batch));
        ASSERT(*batch != NULL);
        if (tc_claim_batch_len(*batch) == 1) {
            tc_step *step = tc_claim_batch_get(*batch, 0);
            ASSERT(step != NULL);
            ASSERT(tc_claim_batch_get(*batch, 1) == NULL);
            if (strcmp(tc_step_task_id(step), task_id) == 0) return step;
        }
        tc_claim_batch_free(*batch);
    }
    ASSERT(!"no step was handed out in 10 s");
    return NULL;
}

static void test_operator_verbs(tc_engine *e) {
    char *id = NULL;

    /* pause / resume */
    ASSERT_OK(tc_create_task_ex(e, "c_basics", "order", NULL, "1.0.0", NULL, 0, &id));
    ASSERT_OK(tc_pause_task(e, id));
    ASSERT_TASK_STATUS(e, id, "paused");
    ASSERT_OK(tc_resume_task(e, id));
    /* The core's state machine resumes a paused task to in_progress (it does not remember
     * whether any step had started). */
    ASSERT_TASK_STATUS(e, id, "in_progress");
    ASSERT_STEP_STATUS(e, id, "validate", "pending");
    ASSERT_FAILS(TC_ERR_INVALID_TRANSITION, tc_resume_task(e, id));

    /* resolve_step: an operator supplies results; the task completes once all are resolved. */
    ASSERT_OK(tc_resolve_step(e, id, "validate", "{\"valid\": true}"));
    char *json = TASK_JSON(e, id);
    const char *step = tj_step(json, "validate");
    ASSERT_SHOW(tj_is(tj_get(step, "status"), "resolved_manually"), json);
    ASSERT_SHOW(strstr(json, "\"valid\"") != NULL, json);
    tc_string_free(json);
    ASSERT_FAILS(TC_ERR_NOT_FOUND, tc_resolve_step(e, id, "no_such_step", "{}"));
    ASSERT_MESSAGE_HAS("no_such_step");
    ASSERT_OK(tc_resolve_step(e, id, "charge", "{\"charged\": false}"));
    ASSERT_TASK_STATUS(e, id, "complete");
    tc_string_free(id);

    /* cancel a pending task; cancelling it again, or a completed task, is refused */
    ASSERT_OK(tc_create_task(e, "c_basics", "order", NULL, &id));
    ASSERT_OK(tc_cancel_task(e, id));
    ASSERT_TASK_STATUS(e, id, "cancelled");
    ASSERT_STEP_STATUS(e, id, "validate", "cancelled");
    ASSERT_FAILS(TC_ERR_INVALID_TRANSITION, tc_cancel_task(e, id));
    tc_string_free(id);

    ASSERT_OK(tc_create_task(e, "c_basics", "single", "{\"n\": 1}", &id));
    tc_claim_batch *batch = NULL;
    tc_step *s = claim_step_of(e, "c_basics_only", id, &batch);
    ASSERT(strcmp(tc_step_name(s), "only") == 0);
    ASSERT(tc_step_attempt(s) == 1);
    ASSERT_TASK_STATUS(e, id, "in_progress");
    ASSERT_OK(tc_step_complete(s, "{\"done\": true}"));
    tc_claim_batch_free(batch);
    ASSERT_TASK_STATUS(e, id, "complete");
    ASSERT_FAILS(TC_ERR_INVALID_TRANSITION, tc_cancel_task(e, id));
    ASSERT_FAILS(TC_ERR_INVALID_TRANSITION, tc_pause_task(e, id));
    tc_string_free(id);

    /* retry_task: a task failed for good runs again */
    ASSERT_OK(tc_create_task(e, "c_basics", "single", "{\"n\": 2}", &id));
    s = claim_step_of(e, "c_basics_only", id, &batch);
    ASSERT_OK(tc_step_fail(s, "card declined", false, -1));
    tc_claim_batch_free(batch);
    ASSERT_TASK_STATUS(e, id, "error");
    json = TASK_JSON(e, id);
    ASSERT_SHOW(tj_is(tj_get(tj_step(json, "only"), "status"), "error"), json);
    ASSERT_SHOW(tj_is(tj_get(tj_step(json, "only"), "error"), "card declined"), json);
    tc_string_free(json);
    ASSERT_OK(tc_retry_task(e, id));
    ASSERT_STEP_STATUS(e, id, "only", "pending");
    s = claim_step_of(e, "c_basics_only", id, &batch);
    ASSERT_OK(tc_step_complete(s, "{\"done\": true}"));
    tc_claim_batch_free(batch);
    ASSERT_TASK_STATUS(e, id, "complete");
    tc_string_free(id);
}

static void test_events(tc_engine *e) {
    tc_subscription *tasks = NULL, *resolved = NULL;
    ASSERT_OK(tc_subscribe(e, "task.*", &tasks));
    ASSERT(tasks != NULL);
    ASSERT_OK(tc_subscribe(e, "step.resolved_manually", &resolved));

    char *id = NULL;
    ASSERT_OK(tc_create_task(e, "c_basics", "order", NULL, &id));
    char *event = NULL;
    ASSERT_OK(tc_subscription_next_json(tasks, 5000, &event));
    ASSERT(event != NULL);
    ASSERT_SHOW(tj_is(tj_get(event, "name"), "task.created"), event);
    ASSERT_SHOW(tj_is(tj_get(event, "task_id"), id), event);
    ASSERT_SHOW(tj_get(event, "at") != NULL, event);
    tc_string_free(event);

    ASSERT_OK(tc_resolve_step(e, id, "validate", "{}"));
    ASSERT_OK(tc_subscription_next_json(resolved, 5000, &event));
    ASSERT(event != NULL);
    ASSERT_SHOW(tj_is(tj_get(event, "name"), "step.resolved_manually"), event);
    ASSERT_SHOW(tj_is(tj_get(event, "step_name"), "validate"), event);
    ASSERT_SHOW(tj_is(tj_get(event, "task_id"), id), event);
    tc_string_free(event);

    /* Drain the task events (nothing else happened to tasks), then a timeout gives NULL. */
    for (;;) {
        ASSERT_OK(tc_subscription_next_json(tasks, 100, &event));
        if (event == NULL) break;
        ASSERT_SHOW(strncmp(tj_ws(tj_get(event, "name")), "\"task.", 6) == 0, event);
        tc_string_free(event);
    }
    event = (char *)"sentinel";
    long long start = now_ms();
    ASSERT_OK(tc_subscription_next_json(tasks, 200, &event));
    ASSERT(event == NULL);
    ASSERT(now_ms() - start >= 150);
    event = (char *)"sentinel";
    ASSERT_OK(tc_subscription_next_json(resolved, 0, &event));
    ASSERT(event == NULL);

    tc_string_free(id);
    tc_subscription_free(tasks);
    /* A subscription with undelivered events is freed as well. */
    ASSERT_OK(tc_create_task(e, "c_basics", "order", NULL, &id));
    ASSERT_OK(tc_resolve_step(e, id, "validate", "{}"));
    tc_string_free(id);
    tc_subscription_free(resolved);
}

/* Concurrency keys from C: a key at its limit holds back its steps across claims; a step let
 * go lets the next one of its key start. */
static void test_concurrency_keys(void) {
    tc_engine *e = NULL;
    ASSERT_OK(tc_engine_open("memory:", &e));
    ASSERT_OK(tc_register_template(e,
                                   "namespace: c_keys\n"
                                   "name: charge\n"
                                   "version: 1.0.0\n"
                                   "steps:\n"
                                   "  - name: charge\n"
                                   "    concurrency: { key: \"customer:{{context.customer}}\", limit: 1 }\n"));
    static const char *contexts[] = {"{\"customer\": 1}", "{\"customer\": 1}", "{\"customer\": 2}"};
    for (size_t i = 0; i < 3; i++) {
        char *id = NULL;
        ASSERT_OK(tc_create_task_ex(e, "c_keys", "charge", contexts[i], NULL, NULL, 0, &id));
        tc_string_free(id);
    }
    /* A context that cannot render the key is refused, naming it. */
    char *bad = NULL;
    ASSERT(tc_create_task_ex(e, "c_keys", "charge", "{}", NULL, NULL, 0, &bad) ==
           TC_ERR_INVALID_ARGUMENT);
    ASSERT_MESSAGE_HAS("customer");
    tc_claim_batch *batch = NULL;
    ASSERT_OK(tc_claim(e, "c-keys", NULL, 0, 10, 0, &batch));
    /* One step per customer: the second of customer 1 waits. */
    ASSERT(tc_claim_batch_len(batch) == 2);
    tc_claim_batch *none = NULL;
    ASSERT_OK(tc_claim(e, "c-keys", NULL, 0, 10, 0, &none));
    ASSERT(tc_claim_batch_len(none) == 0);
    tc_claim_batch_free(none);
    for (size_t i = 0; i < 2; i++) {
        tc_step *step = tc_claim_batch_get(batch, i);
        if (strstr(tc_step_context_json(step), "1") != NULL)
            ASSERT_OK(tc_step_complete(step, "true"));
    }
    tc_claim_batch *next = NULL;
    ASSERT_OK(tc_claim(e, "c-keys", NULL, 0, 10, 0, &next));
    ASSERT(tc_claim_batch_len(next) == 1);
    ASSERT(strstr(tc_step_context_json(tc_claim_batch_get(next, 0)), "1") != NULL);
    tc_claim_batch_free(next);
    tc_claim_batch_free(batch);
    ASSERT_OK(tc_engine_close(e));
}

/* A webhook on task.completed to 127.0.0.1:1: refused by default; with allow_private_webhooks
 * tried (nothing listens: retried later). */
static void test_webhooks(const char *options, const char *status, const char *error) {
    tc_engine *e = NULL;
    ASSERT_OK(tc_engine_open_json("memory:", options, &e));
    ASSERT_OK(tc_register_template(e,
                                   "namespace: c_hooks\n"
                                   "name: hooked\n"
                                   "version: 1.0.0\n"
                                   "webhooks:\n"
                                   "  - on: [task.completed]\n"
                                   "    url: http://127.0.0.1:1/hook\n"
                                   "    timeout_ms: 500\n"
                                   "    retry: { backoff_base_ms: 60000, jitter: false }\n"
                                   "steps:\n"
                                   "  - name: only\n"));
    char *id = NULL;
    ASSERT_OK(tc_create_task(e, "c_hooks", "hooked", "{}", &id));
    tc_claim_batch *batch = NULL;
    ASSERT_OK(tc_claim(e, "c-hooks", NULL, 0, 1, 0, &batch));
    ASSERT(tc_claim_batch_len(batch) == 1);
    ASSERT_OK(tc_step_complete(tc_claim_batch_get(batch, 0), "true"));
    tc_claim_batch_free(batch);
    uint64_t sent = 0;
    ASSERT_OK(tc_deliver_webhooks(e, &sent));
    ASSERT(sent == 1);
    ASSERT_OK(tc_deliver_webhooks(e, NULL));
    char *json = NULL;
    ASSERT_OK(tc_webhook_deliveries_json(e, id, &json));
    ASSERT_SHOW(strstr(json, "\"event\":\"task.completed\"") != NULL, json);
    ASSERT_SHOW(strstr(json, status) != NULL && strstr(json, error) != NULL, json);
    tc_string_free(json);
    ASSERT(tc_webhook_deliveries_json(e, "01900000-0000-7000-8000-000000000000", &json) ==
           TC_ERR_NOT_FOUND);
    tc_string_free(id);
    ASSERT_OK(tc_engine_close(e));
}

int main(void) {
    test_version_and_status_names();
    test_open_and_close();

    tc_engine *e = NULL;
    ASSERT_OK(tc_engine_open("memory:", &e));
    test_templates(e);
    test_create_task(e);
    test_views();
    test_operator_verbs(e);
    test_events(e);
    ASSERT_OK(tc_engine_close(e));
    test_concurrency_keys();
    test_webhooks(NULL, "\"status\":\"failed\"", "refused: 127.0.0.1 is a loopback address");
    test_webhooks("{\"allow_private_webhooks\": true}", "\"status\":\"pending\"", "\"attempts\":1");

    printf("test_basics: ok\n");
    return 0;
}
