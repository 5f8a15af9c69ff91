/*
 * order_fulfilment.c — the order-fulfilment workflow of examples/order_fulfilment.yaml with C
 * handlers, as the Rust, Python and Ruby examples run it.
 *
 *   cargo build --release -p tasker-core-c
 *   cc -std=c11 -pthread -I include examples/c/order_fulfilment.c -L target/release \
 *      -ltasker_core -o order_fulfilment
 *   LD_LIBRARY_PATH=target/release ./order_fulfilment [TEMPLATE.yaml [STORE_URL]]
 *
 * TEMPLATE.yaml defaults to examples/order_fulfilment.yaml, STORE_URL to the engine's default
 * (the SQLite file ./tasker.db); "memory:" keeps nothing.
 *
 * validate -> (charge, reserve_stock) -> ship -> notify. charge fails its first attempt with a
 * retryable "gateway busy" error and a 50 ms retry_after, so a run shows a retry; everything
 * else succeeds. The program prints each step's state and exits 1 unless the task completed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tasker_core.h"

/* ---- the handlers ----------------------------------------------------------------------- */
/* Each runs on one of the worker's threads and reports through its step handle. JSON comes in
 * as text; these handlers only need strstr to read it. */

/* The integer after "order": in the task's context; 0 when there is none. */
static long order_id(const tc_step *step) {
    const char *at = strstr(tc_step_context_json(step), "\"order\":");
    if (at == NULL) return 0;
    return strtol(at + strlen("\"order\":"), NULL, 10);
}

static void validate(tc_step *step, void *user_data) {
    (void)user_data;
    long order = order_id(step);
    if (order == 0) {
        tc_step_fail(step, "context has no integer \"order\"", false, -1); /* permanent */
        return;
    }
    char result[64];
    snprintf(result, sizeof result, "{\"order\":%ld,\"valid\":true}", order);
    tc_step_complete(step, result);
}

static void charge(tc_step *step, void *user_data) {
    (void)user_data;
    if (tc_step_attempt(step) == 1) {
        tc_step_fail(step, "gateway busy", true, 50); /* retryable, again in 50 ms */
        return;
    }
    tc_step_complete(step, "{\"charged\":true,\"amount_cents\":4200}");
}

static void reserve_stock(tc_step *step, void *user_data) {
    (void)user_data;
    tc_step_complete(step, "{\"reserved\":1}");
}

static void ship(tc_step *step, void *user_data) {
    (void)user_data;
    /* inputs: {"charge": {...}, "reserve_stock": {...}}, each parent's result */
    if (strstr(tc_step_inputs_json(step), "\"charged\":true") == NULL) {
        tc_step_fail(step, "refusing to ship an unpaid order", false, -1);
        return;
    }
    char result[64];
    snprintf(result, sizeof result, "{\"tracking\":\"TRK-%ld\"}", order_id(step));
    tc_step_complete(step, result);
}

static void notify(tc_step *step, void *user_data) {
    (void)user_data;
    /* ship's result, or null when ship failed (notify runs either way) */
    int shipped = strstr(tc_step_inputs_json(step), "\"ship\":null") == NULL;
    tc_step_complete(step, shipped ? "{\"notified\":true,\"shipped\":true}"
                                   : "{\"notified\":true,\"shipped\":false}");
}

/* ---- reading the task's JSON ------------------------------------------------------------ */

/* The end of the JSON object or array starting at p (just after its closing bracket). */
static const char *skip_nested(const char *p) {
    int depth = 0;
    for (; *p; p++) {
        if (*p == '"') { /* skip a string, with its escapes */
            for (p++; *p && *p != '"'; p++)
                if (*p == '\\' && p[1]) p++;
            if (!*p) return p;
        } else if (*p == '{' || *p == '[') {
            depth++;
        } else if ((*p == '}' || *p == ']') && --depth == 0) {
            return p + 1;
        }
    }
    return p;
}

/* Copies the value of "key": in [from, to) into buf: a string without its quotes, or a number,
 * true, false or null as written. Empty when absent. The objects printed here have no nested
 * object before the keys looked up, except for values that do not contain them. */
static void field(const char *from, const char *to, const char *key, char *buf, size_t size) {
    char pattern[64];
    snprintf(pattern, sizeof pattern, "\"%s\":", key);
    buf[0] = '\0';
    const char *at = strstr(from, pattern);
    if (at == NULL || at >= to) return;
    at += strlen(pattern);
    if (*at == '"') at++;
    size_t n = strcspn(at, "\",}]");
    if (n >= size) n = size - 1;
    memcpy(buf, at, n);
    buf[n] = '\0';
}

/* Prints the task's status and a line per step; returns whether the task is complete. */
static int print_task(const char *json, const char *url) {
    const char *steps = strstr(json, "\"steps\":[");
    const char *end = json + strlen(json);
    char id[64], ns[64], name[64], version[32], status[32];
    /* The task's own fields come before its steps. */
    const char *own_end = steps ? steps : end;
    field(json, own_end, "id", id, sizeof id);
    field(json, own_end, "namespace", ns, sizeof ns);
    field(json, own_end, "name", name, sizeof name);
    field(json, own_end, "version", version, sizeof version);
    field(json, own_end, "status", status, sizeof status);
    printf("task %s (%s/%s %s) on %s: %s\n", id, ns, name, version, url, status);

    printf("%-14s %-18s %8s %12s\n", "step", "state", "attempts", "duration_ms");
    if (steps != NULL) {
        const char *p = steps + strlen("\"steps\":[");
        while (*p == '{') { /* one step object per iteration */
            const char *step_end = skip_nested(p);
            char step[64], state[32], attempts[16], duration[24];
            field(p, step_end, "name", step, sizeof step);
            field(p, step_end, "status", state, sizeof state);
            field(p, step_end, "attempts", attempts, sizeof attempts);
            field(p, step_end, "duration_ms", duration, sizeof duration);
            printf("%-14s %-18s %8s %12s\n", step, state,
                   attempts, strcmp(duration, "null") == 0 ? "-" : duration);
            p = step_end;
            if (*p == ',') p++;
        }
    }
    return strcmp(status, "complete") == 0;
}

/* ---- main ------------------------------------------------------------------------------- */

/* Prints the failure of `what` with the library's message; returns 1. */
static int report(const char *what, tc_status status) {
    const char *message = tc_last_error_message();
    fprintf(stderr, "error: %s: %s: %s\n", what, tc_status_name(status),
            message ? message : "(no message)");
    return 1;
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    size_t size = 0, cap = 4096;
    char *text = malloc(cap);
    size_t n;
    while (text && (n = fread(text + size, 1, cap - size - 1, f)) > 0) {
        size += n;
        if (cap - size < 2) {
            char *bigger = realloc(text, cap * 2);
            if (bigger == NULL) {
                free(text);
                text = NULL;
                break;
            }
            text = bigger;
            cap *= 2;
        }
    }
    fclose(f);
    if (text) text[size] = '\0';
    return text;
}

int main(int argc, char **argv) {
    const char *template_path = argc > 1 ? argv[1] : "examples/order_fulfilment.yaml";
    const char *url = argc > 2 ? argv[2] : NULL; /* NULL: sqlite://tasker.db */

    char *yaml = read_file(template_path);
    if (yaml == NULL) {
        fprintf(stderr, "error: cannot read %s\n", template_path);
        return 1;
    }

    int exit_code = 1;
    tc_engine *engine = NULL;
    tc_worker *worker = NULL;
    char *task_id = NULL;
    char *json = NULL;
    tc_status s;

    if ((s = tc_engine_open(url, &engine)) != TC_OK) {
        exit_code = report("cannot open the engine", s);
        goto done;
    }
    if ((s = tc_register_template(engine, yaml)) != TC_OK) {
        exit_code = report("cannot register the template", s);
        goto done;
    }
    if ((s = tc_create_task(engine, "shop", "fulfil_order", "{\"order\":42}", &task_id)) !=
        TC_OK) {
        exit_code = report("cannot create the task", s);
        goto done;
    }

    if ((s = tc_worker_new(engine, 4, &worker)) != TC_OK) {
        exit_code = report("cannot make a worker", s);
        goto done;
    }
    static const struct {
        const char *name;
        tc_handler_fn fn;
    } handlers[] = {
        {"validate", validate}, {"charge", charge}, {"reserve_stock", reserve_stock},
        {"ship", ship},         {"notify", notify},
    };
    for (size_t i = 0; i < sizeof handlers / sizeof *handlers; i++) {
        if ((s = tc_worker_register(worker, handlers[i].name, handlers[i].fn, NULL)) != TC_OK) {
            exit_code = report("cannot register a handler", s);
            goto done;
        }
    }
    /* Works until nothing is ready, running or waiting for a retry (at most 30 s). */
    if ((s = tc_worker_run_until_idle(worker, 30000)) != TC_OK) {
        exit_code = report("the worker failed", s);
        goto done;
    }

    if ((s = tc_task_json(engine, task_id, &json)) != TC_OK) {
        exit_code = report("cannot read the task", s);
        goto done;
    }
    if (print_task(json, url ? url : "sqlite://tasker.db")) {
        exit_code = 0;
    } else {
        fprintf(stderr, "error: the task did not complete\n");
    }

done:
    tc_string_free(json);
    tc_string_free(task_id);
    tc_worker_free(worker); /* before the engine it works on */
    tc_engine_close(engine);
    free(yaml);
    return exit_code;
}
