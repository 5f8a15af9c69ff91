/*
 * test_conformance.c — the worker conformance suite, C side: the cases of
 * core/tests/worker_conformance.rs through the C ABI (../shared/API.md § "Worker semantics").
 * A C handler cannot be killed: past timeout_ms its attempt fails ("timed out") and its late
 * report is refused; the lease is renewed while a handler runs; a dead worker's step comes back;
 * with TASKER_TEST_POSTGRES_URL, a PostgreSQL outage in the middle of a run is waited out
 * (tests/support/outage_proxy.py, the proxy every language's suite starts).
 */
#define _POSIX_C_SOURCE 200809L

#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tasker_core.h"
#include "tc_test.h"

static const char *TIMEOUT_YAML = "namespace: conf\nname: timeout\nversion: 1.0.0\nsteps:\n"
                                  "  - name: s\n    timeout_ms: 300\n"
                                  "    retry: { max_attempts: 2, backoff_base_ms: 1, jitter: false }\n";
static const char *LEASE_YAML = "namespace: conf\nname: lease\nversion: 1.0.0\nsteps:\n"
                                "  - name: s\n    timeout_ms: 20000\n    lease_ms: 1000\n";
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
    /* Three leases long: the worker renews it meanwhile (leases of 1 s: valgrind on a busy
     * machine can hold a renewal up for a few hundred milliseconds). */
    sleep_ms(3000);
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

/* The outage proxy: a python3 child whose stdin and stdout are pipes. */
typedef struct {
    pid_t child, proxy;
    FILE *in, *out;
    char url[512];
} outage_proxy;

static void proxy_start(outage_proxy *p, const char *url) {
    int to[2], from[2];
    ASSERT(pipe(to) == 0 && pipe(from) == 0);
    p->child = fork();
    ASSERT(p->child >= 0);
    if (p->child == 0) {
        dup2(to[0], 0);
        dup2(from[1], 1);
        close(to[1]);
        close(from[0]);
        execlp("python3", "python3", "tests/support/outage_proxy.py", url, "1.5", (char *)NULL);
        _exit(127);
    }
    close(to[0]);
    close(from[1]);
    p->in = fdopen(to[1], "w");
    p->out = fdopen(from[0], "r");
    long pid = 0;
    ASSERT(fscanf(p->out, "%ld %511s", &pid, p->url) == 2);
    p->proxy = (pid_t)pid;
}

/* Stops the proxy: how many connections it cut and refused, added. */
static long proxy_finish(outage_proxy *p) {
    fclose(p->in);
    long cut = -1, refused = -1;
    ASSERT(fscanf(p->out, " cut=%ld refused=%ld", &cut, &refused) == 2);
    fclose(p->out);
    int status = 0;
    waitpid(p->child, &status, 0);
    return cut + refused;
}

static atomic_int outage_cut = 0;

static void first_cuts(tc_step *step, void *user_data) {
    outage_proxy *p = user_data;
    if (atomic_exchange(&outage_cut, 1) == 0) {
        /* The proxy says "down" once it is: the report below meets the outage. (" %15s" skips
         * the end of the proxy's first line, which proxy_start's fscanf left unread.) */
        char word[16] = {0};
        kill(p->proxy, SIGUSR1);
        ASSERT(fscanf(p->out, " %15s", word) == 1 && strcmp(word, "down") == 0);
    }
    tc_step_complete(step, "\"first\"");
}

static void second(tc_step *step, void *user_data) {
    (void)user_data;
    tc_step_complete(step, "\"second\"");
}

/* The PostgreSQL server unreachable for 1.5 s in the middle of a run: the worker waits it out,
 * and no outcome is lost (each step completes in its first attempt). */
static void store_outage(const char *base) {
    char schema[64], sql[256], url[512];
    snprintf(schema, sizeof schema, "tasker_test_c_%ld", (long)getpid());
    snprintf(sql, sizeof sql, "psql -q \"%s\" -c 'CREATE SCHEMA %s'", base, schema);
    ASSERT(system(sql) == 0);
    snprintf(url, sizeof url, "%s%soptions=-c%%20search_path%%3D%s", base,
             strchr(base, '?') ? "&" : "?", schema);
    outage_proxy p;
    proxy_start(&p, url);
    tc_engine *e = NULL;
    ASSERT_OK(tc_engine_open(p.url, &e));
    ASSERT_OK(tc_register_template(e, "namespace: conf\nname: outage\nversion: 1.0.0\nsteps:\n"
                                      "  - name: first\n  - name: second\n"
                                      "    depends_on: [first]\n"));
    char *ids[20];
    for (int i = 0; i < 20; i++)
        ASSERT_OK(tc_create_task(e, "conf", "outage", NULL, &ids[i]));
    tc_worker *w = NULL;
    ASSERT_OK(tc_worker_new(e, 4, &w));
    ASSERT_OK(tc_worker_register(w, "first", first_cuts, &p));
    ASSERT_OK(tc_worker_register(w, "second", second, NULL));
    long long started = now_ms();
    ASSERT_OK(tc_worker_run_until_idle(w, 60000));
    ASSERT(outage_cut == 1);
    ASSERT(now_ms() - started >= 1500);
    tc_worker_free(w);
    for (int i = 0; i < 20; i++) {
        char *task = TASK_JSON(e, ids[i]);
        ASSERT_SHOW(tj_is(tj_get(task, "status"), "complete"), task);
        ASSERT_SHOW(tj_int(tj_get(tj_step(task, "first"), "attempts")) == 1, task);
        ASSERT_SHOW(tj_int(tj_get(tj_step(task, "second"), "attempts")) == 1, task);
        tc_string_free(task);
        tc_string_free(ids[i]);
    }
    ASSERT_OK(tc_engine_close(e));
    ASSERT(proxy_finish(&p) > 0);
    snprintf(sql, sizeof sql, "psql -q \"%s\" -c 'DROP SCHEMA %s CASCADE' >/dev/null 2>&1", base,
             schema);
    if (system(sql) != 0)
        fprintf(stderr, "could not drop schema %s\n", schema);
}

static void run(tc_engine *e, const char *handler, tc_handler_fn fn) {
    tc_worker *w = NULL;
    ASSERT_OK(tc_worker_new(e, 2, &w));
    ASSERT_OK(tc_worker_register(w, handler, fn, NULL));
    ASSERT_OK(tc_worker_run_until_idle(w, 60000));
    tc_worker_free(w);
}

static void done(tc_step *step, void *user_data) {
    (void)user_data;
    tc_step_complete(step, "\"from the child\"");
}

/* After fork() (a prefork server): the child's copy of the parent's engine is refused with a
 * message naming the fork; an engine the child opens on the same SQLite file works (it used
 * to hang on its first claim: the parent's runtime threads do not exist in the child). */
static void forked_child(void) {
    char path[64], url[80];
    temp_sqlite(path, url);
    tc_engine *e = NULL;
    ASSERT_OK(tc_engine_open(url, &e));
    ASSERT_OK(tc_register_template(e, "namespace: conf\nname: forked\nversion: 1.0.0\n"
                                      "steps:\n  - name: s\n"));
    char *first = NULL, *second = NULL;
    ASSERT_OK(tc_create_task(e, "conf", "forked", NULL, &first));
    run(e, "s", recovered); /* the runtime and the pool in use before the fork */
    ASSERT_OK(tc_create_task(e, "conf", "forked", NULL, &second));
    fflush(NULL);
    /* The child's verdict comes through a pipe: under valgrind its exit status also counts
     * what it leaks on purpose (the parent's connections, never to be closed there). */
    int verdict[2];
    ASSERT(pipe(verdict) == 0);
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        close(verdict[0]);
        char code = '0';
        char *id = NULL;
        tc_engine *child = NULL;
        tc_worker *w = NULL;
        char *task = NULL;
        if (tc_create_task(e, "conf", "forked", NULL, &id) != TC_ERR_STORE)
            code = '2';
        else if (!strstr(tc_last_error_message(), "fork"))
            code = '3';
        else if (tc_engine_open(url, &child) != TC_OK)
            code = '4';
        else if (tc_worker_new(child, 2, &w) != TC_OK ||
                 tc_worker_register(w, "s", done, NULL) != TC_OK ||
                 tc_worker_run_until_idle(w, 20000) != TC_OK)
            code = '5';
        else if (tc_task_json(child, second, &task) != TC_OK || !strstr(task, "from the child"))
            code = '6';
        tc_string_free(task);
        tc_worker_free(w);
        tc_engine_close(child);
        tc_engine_close(e); /* the inherited copy: let go of, not closed */
        if (write(verdict[1], &code, 1) != 1)
            _exit(7);
        _exit(0);
    }
    close(verdict[1]);
    int status = -1;
    long long deadline = now_ms() + 60000;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (now_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            ASSERT_SHOW(0, "the forked child hung");
        }
        sleep_ms(20);
    }
    char code = 'x';
    ASSERT(read(verdict[0], &code, 1) == 1);
    close(verdict[0]);
    char what[40];
    snprintf(what, sizeof what, "the forked child failed: %c", code);
    ASSERT_SHOW(code == '0', what);
    char *task = TASK_JSON(e, second);
    ASSERT_SHOW(tj_is(tj_get(task, "status"), "complete"), task);
    tc_string_free(task);
    tc_string_free(first);
    tc_string_free(second);
    ASSERT_OK(tc_engine_close(e));
    remove_sqlite(path);
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
        /* The same step each time (no aliasing &mut inside); NULL past the end. */
        ASSERT(tc_claim_batch_get(dead, 0) == tc_claim_batch_get(dead, 0));
        ASSERT(tc_claim_batch_get(dead, 1) == NULL);
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
    forked_child();
    const char *postgres = getenv("TASKER_TEST_POSTGRES_URL");
    if (postgres && *postgres)
        store_outage(postgres);
    else
        printf("test_conformance: the store outage skipped (no TASKER_TEST_POSTGRES_URL)\n");
    printf("test_conformance: ok\n");
    return 0;
}
