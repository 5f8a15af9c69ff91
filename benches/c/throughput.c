/*
 * Steps/s of no-op C handlers through the C ABI: the C side of the throughput harness.
 *
 *   cc -O2 -std=c11 benches/c/throughput.c $(pkg-config --cflags --libs tasker_core) -o throughput-c
 *   ./throughput-c [STORE_URL] [TASKS] [CONCURRENCY]
 *
 * Creates TASKS tasks of the 5-step diamond template, runs one worker until idle, and divides
 * the steps by the run's wall time (the same workload as `throughput --template diamond`).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "tasker_core.h"

static const char *DIAMOND =
    "namespace: bench\nname: diamond\nversion: 1.0.0\nsteps:\n"
    "  - {name: a, handler: noop}\n"
    "  - {name: b, handler: noop, depends_on: [a]}\n"
    "  - {name: c, handler: noop, depends_on: [a]}\n"
    "  - {name: d, handler: noop, depends_on: [a]}\n"
    "  - {name: e, handler: noop, depends_on: [b, c, d]}\n";

static void noop(tc_step *step, void *user_data) {
    (void)user_data;
    tc_step_complete(step, "null");
}

static int check(tc_status status, const char *what) {
    if (status != TC_OK) {
        fprintf(stderr, "%s: %s: %s\n", what, tc_status_name(status), tc_last_error_message());
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *url = argc > 1 ? argv[1] : "memory:";
    long tasks = argc > 2 ? atol(argv[2]) : 5000;
    unsigned concurrency = argc > 3 ? (unsigned)atoi(argv[3]) : 64;
    tc_engine *engine = NULL;
    tc_worker *worker = NULL;
    if (check(tc_engine_open(url, &engine), "open") || check(tc_register_template(engine, DIAMOND), "register")) {
        return 1;
    }
    for (long i = 0; i < tasks; i++) {
        char *id = NULL;
        if (check(tc_create_task(engine, "bench", "diamond", "{}", &id), "create")) {
            return 1;
        }
        tc_string_free(id);
    }
    if (check(tc_worker_new(engine, concurrency, &worker), "worker") ||
        check(tc_worker_register(worker, "noop", noop, NULL), "register handler")) {
        return 1;
    }
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    if (check(tc_worker_run_until_idle(worker, 600000), "run")) {
        return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    double seconds = (double)(end.tv_sec - start.tv_sec) + (double)(end.tv_nsec - start.tv_nsec) / 1e9;
    printf("c store=%s tasks=%ld steps=%ld concurrency=%u run=%.3fs => %.0f steps/s\n", url, tasks, tasks * 5,
           concurrency, seconds, (double)(tasks * 5) / seconds);
    tc_worker_free(worker);
    return check(tc_engine_close(engine), "close");
}
