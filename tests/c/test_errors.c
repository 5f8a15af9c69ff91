/*
 * test_errors.c — every error path of the C API: NULL arguments, strings that are not UTF-8,
 * malformed JSON, unknown and malformed ids, unknown templates, out-of-range numbers; each
 * failure returns its status, sets every out-pointer to NULL and leaves a thread-local message.
 * The _free functions accept NULL.
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tasker_core.h"
#include "tc_test.h"

#define BAD_UTF8 "\xff\xfe"
#define UNKNOWN_TASK "01890a5d-ac96-774b-bcce-b302099a8057" /* well-formed, never created */
#define MALFORMED_TASK "not-a-uuid"

static const char *TEMPLATE =
    "namespace: c_errors\n"
    "name: flow\n"
    "version: 1.0.0\n"
    "steps:\n"
    "  - name: first\n"
    "    handler: c_errors_first\n"
    "  - name: second\n"
    "    depends_on: [first]\n";

static void noop_handler(tc_step *step, void *user_data) {
    (void)user_data;
    tc_step_complete(step, "{}");
}

static void test_frees_accept_null(void) {
    tc_string_free(NULL);
    tc_worker_free(NULL);
    tc_claim_batch_free(NULL);
    tc_subscription_free(NULL);
    ASSERT_OK(tc_engine_close(NULL));
    ASSERT(tc_claim_batch_len(NULL) == 0);
    ASSERT(tc_claim_batch_get(NULL, 0) == NULL);
    ASSERT(tc_step_attempt(NULL) == 0);
}

static void test_open(void) {
    tc_engine *e = NULL;
    ASSERT_FAILS(TC_ERR_NULL, tc_engine_open("memory:", NULL));
    ASSERT_FAILS_OUT(TC_ERR_UTF8, e, tc_engine_open(BAD_UTF8, &e));
    ASSERT_FAILS_OUT(TC_ERR_INVALID_ARGUMENT, e, tc_engine_open("bogus://nowhere", &e));
    ASSERT_MESSAGE_HAS("bogus");
    /* A SQLite file in a directory that does not exist: the database cannot open it. */
    ASSERT_FAILS_OUT(TC_ERR_STORE, e,
                     tc_engine_open("sqlite:///nonexistent-tasker-dir/sub/t.db", &e));
    /* A store failure says how it failed; any other failure has no kind. */
    ASSERT(tc_last_error_kind() != NULL && strcmp(tc_last_error_kind(), "unavailable") == 0);
    ASSERT_FAILS(TC_ERR_NULL, tc_engine_open("memory:", NULL));
    ASSERT(tc_last_error_kind() == NULL);
}

static void test_templates(tc_engine *e) {
    ASSERT_FAILS(TC_ERR_NULL, tc_register_template(NULL, TEMPLATE));
    ASSERT_FAILS(TC_ERR_NULL, tc_register_template(e, NULL));
    ASSERT_FAILS(TC_ERR_UTF8, tc_register_template(e, "namespace: " BAD_UTF8 "\n"));
    ASSERT_FAILS(TC_ERR_TEMPLATE, tc_register_template(e, "{\"namespace\": "));
    ASSERT_OK(tc_register_template(e, TEMPLATE));
}

static void test_create_task(tc_engine *e) {
    char *out = NULL;
    ASSERT_FAILS_OUT(TC_ERR_NULL, out, tc_create_task(NULL, "c_errors", "flow", NULL, &out));
    ASSERT_FAILS_OUT(TC_ERR_NULL, out, tc_create_task(e, NULL, "flow", NULL, &out));
    ASSERT_FAILS_OUT(TC_ERR_NULL, out, tc_create_task(e, "c_errors", NULL, NULL, &out));
    ASSERT_FAILS(TC_ERR_NULL, tc_create_task(e, "c_errors", "flow", NULL, NULL));
    ASSERT_FAILS_OUT(TC_ERR_UTF8, out, tc_create_task(e, BAD_UTF8, "flow", NULL, &out));
    ASSERT_FAILS_OUT(TC_ERR_UTF8, out, tc_create_task(e, "c_errors", BAD_UTF8, NULL, &out));
    ASSERT_FAILS_OUT(TC_ERR_UTF8, out,
                     tc_create_task(e, "c_errors", "flow", "{\"a\": \"" BAD_UTF8 "\"}", &out));
    ASSERT_FAILS_OUT(TC_ERR_JSON, out, tc_create_task(e, "c_errors", "flow", "{not json", &out));
    ASSERT_FAILS_OUT(TC_ERR_JSON, out, tc_create_task(e, "c_errors", "flow", "", &out));
    ASSERT_FAILS_OUT(TC_ERR_NOT_FOUND, out,
                     tc_create_task(e, "c_errors", "no_such_template", NULL, &out));
    ASSERT_MESSAGE_HAS("no_such_template");
    ASSERT_FAILS_OUT(TC_ERR_NOT_FOUND, out,
                     tc_create_task(e, "no_such_namespace", "flow", NULL, &out));

    ASSERT_FAILS_OUT(TC_ERR_NULL, out,
                     tc_create_task_ex(NULL, "c_errors", "flow", NULL, NULL, NULL, 0, &out));
    ASSERT_FAILS(TC_ERR_NULL, tc_create_task_ex(e, "c_errors", "flow", NULL, NULL, NULL, 0, NULL));
    ASSERT_FAILS_OUT(TC_ERR_UTF8, out,
                     tc_create_task_ex(e, "c_errors", "flow", NULL, BAD_UTF8, NULL, 0, &out));
    ASSERT_FAILS_OUT(TC_ERR_UTF8, out,
                     tc_create_task_ex(e, "c_errors", "flow", NULL, NULL, BAD_UTF8, 0, &out));
    ASSERT_FAILS_OUT(TC_ERR_JSON, out,
                     tc_create_task_ex(e, "c_errors", "flow", "[1,", NULL, "k", 0, &out));
    ASSERT_FAILS_OUT(TC_ERR_INVALID_ARGUMENT, out,
                     tc_create_task_ex(e, "c_errors", "flow", NULL, "1.x", NULL, 0, &out));
    ASSERT_FAILS_OUT(TC_ERR_NOT_FOUND, out,
                     tc_create_task_ex(e, "c_errors", "flow", NULL, "2.0.0", NULL, 0, &out));
    ASSERT_MESSAGE_HAS("2.0.0");
}

/* The JSON views and the operator verbs share their argument checks; wrappers give them one
 * type each so that a table can list them. */
typedef tc_status (*json_view_fn)(tc_engine *, const char *, char **);
typedef tc_status (*verb_fn)(tc_engine *, const char *);

static tc_status view_task(tc_engine *e, const char *id, char **out) {
    return tc_task_json(e, id, out);
}
static tc_status view_transitions(tc_engine *e, const char *id, char **out) {
    return tc_transitions_json(e, id, out);
}
static tc_status view_graph(tc_engine *e, const char *id, char **out) {
    return tc_graph_json(e, id, out);
}
static tc_status verb_cancel(tc_engine *e, const char *id) { return tc_cancel_task(e, id); }
static tc_status verb_pause(tc_engine *e, const char *id) { return tc_pause_task(e, id); }
static tc_status verb_resume(tc_engine *e, const char *id) { return tc_resume_task(e, id); }
static tc_status verb_retry(tc_engine *e, const char *id) { return tc_retry_task(e, id); }

static void test_views_and_verbs(tc_engine *e, const char *task_id) {
    static const struct {
        const char *name;
        json_view_fn fn;
    } views[] = {
        {"tc_task_json", view_task},
        {"tc_transitions_json", view_transitions},
        {"tc_graph_json", view_graph},
    };
    for (size_t i = 0; i < sizeof views / sizeof *views; i++) {
        json_view_fn view = views[i].fn;
        char *out = NULL;
        printf("  %s\n", views[i].name);
        ASSERT_FAILS_OUT(TC_ERR_NULL, out, view(NULL, task_id, &out));
        ASSERT_FAILS_OUT(TC_ERR_NULL, out, view(e, NULL, &out));
        ASSERT_FAILS(TC_ERR_NULL, view(e, task_id, NULL));
        ASSERT_FAILS_OUT(TC_ERR_UTF8, out, view(e, BAD_UTF8, &out));
        ASSERT_FAILS_OUT(TC_ERR_INVALID_ARGUMENT, out, view(e, MALFORMED_TASK, &out));
        ASSERT_MESSAGE_HAS(MALFORMED_TASK);
        ASSERT_FAILS_OUT(TC_ERR_NOT_FOUND, out, view(e, UNKNOWN_TASK, &out));
        ASSERT_MESSAGE_HAS(UNKNOWN_TASK);
        ASSERT_OK(view(e, task_id, &out));
        ASSERT(out != NULL);
        tc_string_free(out);
    }

    static const struct {
        const char *name;
        verb_fn fn;
    } verbs[] = {
        {"tc_cancel_task", verb_cancel},
        {"tc_pause_task", verb_pause},
        {"tc_resume_task", verb_resume},
        {"tc_retry_task", verb_retry},
    };
    for (size_t i = 0; i < sizeof verbs / sizeof *verbs; i++) {
        verb_fn verb = verbs[i].fn;
        printf("  %s\n", verbs[i].name);
        ASSERT_FAILS(TC_ERR_NULL, verb(NULL, task_id));
        ASSERT_FAILS(TC_ERR_NULL, verb(e, NULL));
        ASSERT_FAILS(TC_ERR_UTF8, verb(e, BAD_UTF8));
        ASSERT_FAILS(TC_ERR_INVALID_ARGUMENT, verb(e, MALFORMED_TASK));
        ASSERT_FAILS(TC_ERR_NOT_FOUND, verb(e, UNKNOWN_TASK));
        ASSERT_MESSAGE_HAS(UNKNOWN_TASK);
    }
    /* The task was not touched by any of that. */
    ASSERT_TASK_STATUS(e, task_id, "pending");
    /* Refusals of the state machine. */
    ASSERT_FAILS(TC_ERR_INVALID_TRANSITION, tc_resume_task(e, task_id));
    ASSERT_FAILS(TC_ERR_INVALID_TRANSITION, tc_retry_task(e, task_id));

    /* resolve_step */
    ASSERT_FAILS(TC_ERR_NULL, tc_resolve_step(NULL, task_id, "first", "{}"));
    ASSERT_FAILS(TC_ERR_NULL, tc_resolve_step(e, NULL, "first", "{}"));
    ASSERT_FAILS(TC_ERR_NULL, tc_resolve_step(e, task_id, NULL, "{}"));
    ASSERT_FAILS(TC_ERR_NULL, tc_resolve_step(e, task_id, "first", NULL));
    ASSERT_FAILS(TC_ERR_UTF8, tc_resolve_step(e, task_id, BAD_UTF8, "{}"));
    ASSERT_FAILS(TC_ERR_UTF8, tc_resolve_step(e, task_id, "first", "\"" BAD_UTF8 "\""));
    ASSERT_FAILS(TC_ERR_JSON, tc_resolve_step(e, task_id, "first", "{\"unclosed\": "));
    ASSERT_FAILS(TC_ERR_INVALID_ARGUMENT, tc_resolve_step(e, MALFORMED_TASK, "first", "{}"));
    ASSERT_FAILS(TC_ERR_NOT_FOUND, tc_resolve_step(e, UNKNOWN_TASK, "first", "{}"));
    ASSERT_FAILS(TC_ERR_NOT_FOUND, tc_resolve_step(e, task_id, "third", "{}"));
    ASSERT_MESSAGE_HAS("third");
    ASSERT_STEP_STATUS(e, task_id, "first", "pending");
}

static void test_list(tc_engine *e) {
    char *out = NULL;
    ASSERT_FAILS_OUT(TC_ERR_NULL, out, tc_list_tasks_json(NULL, NULL, NULL, 10, &out));
    ASSERT_FAILS(TC_ERR_NULL, tc_list_tasks_json(e, NULL, NULL, 10, NULL));
    ASSERT_FAILS_OUT(TC_ERR_UTF8, out, tc_list_tasks_json(e, BAD_UTF8, NULL, 10, &out));
    ASSERT_FAILS_OUT(TC_ERR_UTF8, out, tc_list_tasks_json(e, NULL, BAD_UTF8, 10, &out));
    ASSERT_FAILS_OUT(TC_ERR_INVALID_ARGUMENT, out,
                     tc_list_tasks_json(e, "no_such_status", NULL, 10, &out));
    ASSERT_MESSAGE_HAS("no_such_status");
}

static void test_worker(tc_engine *e) {
    tc_worker *w = NULL;
    ASSERT_FAILS_OUT(TC_ERR_NULL, w, tc_worker_new(NULL, 1, &w));
    ASSERT_FAILS(TC_ERR_NULL, tc_worker_new(e, 1, NULL));
    ASSERT_FAILS_OUT(TC_ERR_INVALID_ARGUMENT, w, tc_worker_new(e, 0, &w));

    ASSERT_OK(tc_worker_new(e, 2, &w));
    ASSERT(w != NULL);
    ASSERT_FAILS(TC_ERR_NULL, tc_worker_register(NULL, "x", noop_handler, NULL));
    ASSERT_FAILS(TC_ERR_NULL, tc_worker_register(w, NULL, noop_handler, NULL));
    ASSERT_FAILS(TC_ERR_NULL, tc_worker_register(w, "x", NULL, NULL));
    ASSERT_FAILS(TC_ERR_UTF8, tc_worker_register(w, BAD_UTF8, noop_handler, NULL));
    ASSERT_OK(tc_worker_register(w, "x", noop_handler, NULL));
    ASSERT_FAILS(TC_ERR_NULL, tc_worker_run_until_idle(NULL, 10));
    tc_worker_free(w);
}

static void test_steps_and_claims(tc_engine *e, const char *task_id) {
    /* NULL steps */
    ASSERT_FAILS(TC_ERR_NULL, tc_step_complete(NULL, "{}"));
    ASSERT_FAILS(TC_ERR_NULL, tc_step_fail(NULL, "x", true, -1));
    ASSERT_FAILS(TC_ERR_NULL, tc_step_heartbeat(NULL));

    /* tc_claim's arguments */
    tc_claim_batch *batch = NULL;
    const char *handlers[] = {"c_errors_first", NULL};
    const char *bad_handlers[] = {BAD_UTF8};
    ASSERT_FAILS_OUT(TC_ERR_NULL, batch, tc_claim(NULL, "w", NULL, 0, 1, 0, &batch));
    ASSERT_FAILS_OUT(TC_ERR_NULL, batch, tc_claim(e, NULL, NULL, 0, 1, 0, &batch));
    ASSERT_FAILS(TC_ERR_NULL, tc_claim(e, "w", NULL, 0, 1, 0, NULL));
    ASSERT_FAILS_OUT(TC_ERR_NULL, batch, tc_claim(e, "w", NULL, 2, 1, 0, &batch));
    ASSERT_FAILS_OUT(TC_ERR_NULL, batch, tc_claim(e, "w", handlers, 2, 1, 0, &batch));
    ASSERT_FAILS_OUT(TC_ERR_UTF8, batch, tc_claim(e, BAD_UTF8, NULL, 0, 1, 0, &batch));
    ASSERT_FAILS_OUT(TC_ERR_UTF8, batch, tc_claim(e, "w", bad_handlers, 1, 1, 0, &batch));

    /* A handler nobody's step uses: an empty batch, not an error. */
    const char *nobody[] = {"c_errors_nobody"};
    ASSERT_OK(tc_claim(e, "w", nobody, 1, 10, 0, &batch));
    ASSERT(batch != NULL);
    ASSERT(tc_claim_batch_len(batch) == 0);
    ASSERT(tc_claim_batch_get(batch, 0) == NULL);
    tc_claim_batch_free(batch);

    /* A claimed step: malformed reports are refused without using up the report. */
    long long deadline = now_ms() + 10000;
    tc_step *step = NULL;
    while (step == NULL && now_ms() < deadline) {
        ASSERT_OK(tc_claim(e, "w", handlers, 1, 1, 200, &batch));
        if (tc_claim_batch_len(batch) == 1 &&
            strcmp(tc_step_task_id(tc_claim_batch_get(batch, 0)), task_id) == 0) {
            step = tc_claim_batch_get(batch, 0);
        } else {
            tc_claim_batch_free(batch);
        }
    }
    ASSERT(step != NULL);
    ASSERT(tc_claim_batch_get(batch, 1) == NULL);
    ASSERT(tc_claim_batch_get(batch, (size_t)-1) == NULL);
    ASSERT_FAILS(TC_ERR_NULL, tc_step_complete(step, NULL));
    ASSERT_FAILS(TC_ERR_JSON, tc_step_complete(step, "{\"no\": "));
    ASSERT_FAILS(TC_ERR_UTF8, tc_step_complete(step, "\"" BAD_UTF8 "\""));
    ASSERT_FAILS(TC_ERR_NULL, tc_step_fail(step, NULL, true, -1));
    ASSERT_FAILS(TC_ERR_UTF8, tc_step_fail(step, BAD_UTF8, true, -1));
    ASSERT_STEP_STATUS(e, task_id, "first", "in_progress");
    ASSERT_OK(tc_step_heartbeat(step));
    ASSERT_OK(tc_step_complete(step, "{\"ok\": true}"));
    ASSERT_FAILS(TC_ERR_INVALID_TRANSITION, tc_step_complete(step, "{}"));
    ASSERT_FAILS(TC_ERR_INVALID_TRANSITION, tc_step_fail(step, "late", false, -1));
    tc_claim_batch_free(batch);
    ASSERT_STEP_STATUS(e, task_id, "first", "complete");
}

static void test_subscriptions(tc_engine *e) {
    tc_subscription *sub = NULL;
    ASSERT_FAILS_OUT(TC_ERR_NULL, sub, tc_subscribe(NULL, "*", &sub));
    ASSERT_FAILS(TC_ERR_NULL, tc_subscribe(e, "*", NULL));
    ASSERT_FAILS_OUT(TC_ERR_UTF8, sub, tc_subscribe(e, BAD_UTF8, &sub));
    ASSERT_FAILS_OUT(TC_ERR_INVALID_ARGUMENT, sub, tc_subscribe(e, "step.[", &sub));

    char *out = NULL;
    ASSERT_FAILS_OUT(TC_ERR_NULL, out, tc_subscription_next_json(NULL, 0, &out));
    ASSERT_OK(tc_subscribe(e, "step.*", &sub));
    ASSERT_FAILS(TC_ERR_NULL, tc_subscription_next_json(sub, 0, NULL));
    tc_subscription_free(sub);
    /* A NULL pattern is not an error: it subscribes to every event. */
    sub = NULL;
    ASSERT_OK(tc_subscribe(e, NULL, &sub));
    ASSERT(sub != NULL);
    tc_subscription_free(sub);
}

/* The last error message belongs to the thread that failed. */
static char other_thread_message[256];
static int other_thread_saw_null_first;

static void *fail_on_another_thread(void *arg) {
    tc_engine *e = arg;
    other_thread_saw_null_first = tc_last_error_message() == NULL;
    char *out = NULL;
    if (tc_task_json(e, "other-thread-bad-id", &out) == TC_ERR_INVALID_ARGUMENT &&
        tc_last_error_message() != NULL) {
        snprintf(other_thread_message, sizeof other_thread_message, "%s",
                 tc_last_error_message());
    }
    return NULL;
}

static void test_messages_are_per_thread(tc_engine *e) {
    char *out = NULL;
    ASSERT_FAILS_OUT(TC_ERR_INVALID_ARGUMENT, out, tc_task_json(e, "main-thread-bad-id", &out));
    const char *mine = tc_last_error_message();
    ASSERT(mine != NULL && strstr(mine, "main-thread-bad-id") != NULL);

    pthread_t t;
    ASSERT(pthread_create(&t, NULL, fail_on_another_thread, e) == 0);
    ASSERT(pthread_join(t, NULL) == 0);
    ASSERT(other_thread_saw_null_first);
    ASSERT(strstr(other_thread_message, "other-thread-bad-id") != NULL);

    /* Unchanged here (no tc_ call on this thread since). */
    ASSERT(strstr(mine, "main-thread-bad-id") != NULL);
    ASSERT(strstr(tc_last_error_message(), "main-thread-bad-id") != NULL);
}

/* A tasker-core template in an environment: its overrides apply, its schema refuses a bad
 * context (TC_ERR_INVALID_ARGUMENT naming the path), and the claimed step carries its config. */
static void test_foreign_template_environment_and_schema(void) {
    static const char *CORE =
        "name: sync\n"
        "namespace_name: c_compat\n"
        "version: 1.0.0\n"
        "input_schema: {type: object, properties: {amount: {type: number}}}\n"
        "steps:\n"
        "  - name: pull\n"
        "    handler: {callable: Crm::Pull, initialization: {page: 5}}\n"
        "environments:\n"
        "  qa:\n"
        "    steps:\n"
        "      - {name: pull, handler: {initialization: {page: 9}}}\n";
    tc_engine *e = NULL;
    ASSERT_FAILS_OUT(TC_ERR_UTF8, e, tc_engine_open_env("memory:", BAD_UTF8, &e));
    /* Options as JSON: an unknown key or a wrong type is refused, naming it. */
    ASSERT_FAILS_OUT(TC_ERR_JSON, e, tc_engine_open_json("memory:", "{\"metric\": false}", &e));
    ASSERT_MESSAGE_HAS("metric");
    ASSERT_FAILS_OUT(TC_ERR_JSON, e, tc_engine_open_json("memory:", "{\"metrics\": 1}", &e));
    ASSERT_OK(tc_engine_open_json("memory:", "{\"metrics\": false, \"environment\": null}", &e));
    char *text = NULL;
    ASSERT_OK(tc_metrics(e, &text));
    ASSERT_SHOW(strstr(text, "tasker_tasks_total") == NULL, text);
    tc_string_free(text);
    ASSERT_OK(tc_engine_close(e));
    ASSERT_OK(tc_engine_open_json("memory:", "{\"environment\": \"qa\"}", &e));
    ASSERT_OK(tc_engine_close(e));
    ASSERT_OK(tc_engine_open_env("memory:", "qa", &e));
    ASSERT_OK(tc_register_template(e, CORE));
    char *id = NULL;
    ASSERT_FAILS_OUT(TC_ERR_INVALID_ARGUMENT, id,
                     tc_create_task(e, "c_compat", "sync", "{\"amount\": \"five\"}", &id));
    ASSERT_MESSAGE_HAS("/amount");
    ASSERT_OK(tc_create_task(e, "c_compat", "sync", "{\"amount\": 5}", &id));
    tc_claim_batch *batch = NULL;
    ASSERT_OK(tc_claim(e, "w", NULL, 0, 1, 0, &batch));
    ASSERT(tc_claim_batch_len(batch) == 1);
    const char *config = tc_step_config_json(tc_claim_batch_get(batch, 0));
    ASSERT(config != NULL && strstr(config, "\"page\":9") != NULL);
    tc_claim_batch_free(batch);
    tc_string_free(id);
    ASSERT_OK(tc_engine_close(e));
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    test_frees_accept_null();
    test_open();
    test_foreign_template_environment_and_schema();

    tc_engine *e = NULL;
    ASSERT_OK(tc_engine_open("memory:", &e));
    test_templates(e);
    test_create_task(e);

    char *task_id = NULL;
    ASSERT_OK(tc_create_task(e, "c_errors", "flow", "{\"x\": 1}", &task_id));
    test_views_and_verbs(e, task_id);
    test_list(e);
    test_worker(e);
    test_steps_and_claims(e, task_id);
    test_subscriptions(e);
    test_messages_are_per_thread(e);
    tc_string_free(task_id);
    ASSERT_OK(tc_engine_close(e));

    printf("test_errors: ok\n");
    return 0;
}
