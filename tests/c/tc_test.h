/*
 * tc_test.h — what the C tests share: ASSERT macros that print file:line, the status and
 * tc_last_error_message(); a few lines of JSON reading (enough to look up a key of an object or
 * an element of an array in the JSON text the library returns); time and temp-file helpers.
 *
 * Header-only (static functions), included by each tests/c/test_*.c; not part of the API.
 */
#ifndef TC_TEST_H
#define TC_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "tasker_core.h"

/* ---- failing loudly ---------------------------------------------------------------------- */

/* Prints what failed with the thread's last error message and ends the process at once (from
 * any thread: _Exit does not wait for the library's threads). */
_Noreturn static inline void tc_test_fail_(const char *file, int line, const char *what,
                                           const char *detail) {
    const char *m = tc_last_error_message();
    char message[1024];
    snprintf(message, sizeof message, "%s", m ? m : "(none)");
    fprintf(stderr, "%s:%d: FAILED: %s%s%s\n    tc_last_error_message(): %s\n", file, line,
            what, detail ? "\n    " : "", detail ? detail : "", message);
    fflush(stdout);
    fflush(stderr);
    _Exit(1);
}

_Noreturn static inline void tc_test_status_fail_(const char *file, int line, const char *call,
                                                  tc_status got, tc_status expected) {
    /* Read the message before any other tc_ call can replace it. */
    const char *m = tc_last_error_message();
    char message[1024];
    snprintf(message, sizeof message, "%s", m ? m : "(none)");
    const char *got_name = tc_status_name(got);
    const char *expected_name = tc_status_name(expected);
    fprintf(stderr,
            "%s:%d: FAILED: %s\n    returned %s (%d), expected %s (%d)\n"
            "    tc_last_error_message(): %s\n",
            file, line, call, got_name ? got_name : "?", (int)got,
            expected_name ? expected_name : "?", (int)expected, message);
    fflush(stdout);
    fflush(stderr);
    _Exit(1);
}

#define ASSERT(cond)                                                                            \
    do {                                                                                        \
        if (!(cond)) tc_test_fail_(__FILE__, __LINE__, #cond, NULL);                            \
    } while (0)

/* ASSERT with a string shown beside the failure (e.g. the JSON that did not match). */
#define ASSERT_SHOW(cond, text)                                                                 \
    do {                                                                                        \
        if (!(cond)) tc_test_fail_(__FILE__, __LINE__, #cond, (text));                          \
    } while (0)

#define ASSERT_STATUS(call, expected)                                                           \
    do {                                                                                        \
        tc_status got_ = (call);                                                                \
        if (got_ != (expected))                                                                 \
            tc_test_status_fail_(__FILE__, __LINE__, #call, got_, (expected));                  \
    } while (0)

#define ASSERT_OK(call) ASSERT_STATUS(call, TC_OK)

/* The call fails with `expected` and leaves a message for this thread. */
#define ASSERT_FAILS(expected, call)                                                            \
    do {                                                                                        \
        ASSERT_STATUS(call, expected);                                                          \
        ASSERT(tc_last_error_message() != NULL);                                                \
        ASSERT(tc_last_error_message()[0] != '\0');                                             \
    } while (0)

/* The call fails with `expected` and sets the out-pointer `out` to NULL (it is first set to a
 * non-NULL sentinel, so that a library that leaves it alone is caught). */
#define ASSERT_FAILS_OUT(expected, out, call)                                                   \
    do {                                                                                        \
        static char sentinel_;                                                                  \
        (out) = (void *)&sentinel_;                                                             \
        ASSERT_FAILS(expected, call);                                                           \
        ASSERT((void *)(out) == NULL);                                                          \
    } while (0)

/* The last error message contains `text`. */
#define ASSERT_MESSAGE_HAS(text)                                                                \
    do {                                                                                        \
        const char *m_ = tc_last_error_message();                                               \
        if (m_ == NULL || strstr(m_, (text)) == NULL)                                           \
            tc_test_fail_(__FILE__, __LINE__, "tc_last_error_message() contains " #text, NULL);  \
    } while (0)

/* ---- reading the JSON the library returns ------------------------------------------------ */
/* Each function takes a pointer into JSON text at (or before whitespace before) a value. */

static inline const char *tj_ws(const char *p) {
    while (p && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* p at the opening quote; returns the position after the closing quote, or NULL. */
static inline const char *tj_skip_string(const char *p) {
    p++;
    while (*p && *p != '"') {
        if (*p == '\\' && p[1]) p++;
        p++;
    }
    return *p ? p + 1 : NULL;
}

/* Returns the position after the value at p, or NULL on malformed text. */
static inline const char *tj_skip(const char *p) {
    p = tj_ws(p);
    if (!p || !*p) return NULL;
    if (*p == '"') return tj_skip_string(p);
    if (*p == '{' || *p == '[') {
        int depth = 0;
        while (*p) {
            if (*p == '"') {
                p = tj_skip_string(p);
                if (!p) return NULL;
                continue;
            }
            if (*p == '{' || *p == '[') depth++;
            if (*p == '}' || *p == ']') {
                if (--depth == 0) return p + 1;
            }
            p++;
        }
        return NULL;
    }
    while (*p && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n') p++;
    return p;
}

/* The value of `key` in the object at obj (its own keys, not nested ones); NULL if absent. */
static inline const char *tj_get(const char *obj, const char *key) {
    const char *p = tj_ws(obj);
    if (!p || *p != '{') return NULL;
    p = tj_ws(p + 1);
    size_t key_len = strlen(key);
    while (*p == '"') {
        const char *k = p + 1;
        const char *after = tj_skip_string(p);
        if (!after) return NULL;
        size_t len = (size_t)(after - 1 - k);
        p = tj_ws(after);
        if (*p != ':') return NULL;
        p = tj_ws(p + 1);
        if (len == key_len && memcmp(k, key, len) == 0) return p;
        p = tj_ws(tj_skip(p));
        if (!p || *p != ',') return NULL;
        p = tj_ws(p + 1);
    }
    return NULL;
}

/* The index-th element of the array at arr; NULL when out of range or not an array. */
static inline const char *tj_at(const char *arr, size_t index) {
    const char *p = tj_ws(arr);
    if (!p || *p != '[') return NULL;
    p = tj_ws(p + 1);
    if (*p == ']') return NULL;
    for (size_t i = 0;; i++) {
        if (i == index) return p;
        p = tj_ws(tj_skip(p));
        if (!p || *p != ',') return NULL;
        p = tj_ws(p + 1);
    }
}

/* The number of elements of the array at arr; (size_t)-1 when it is not an array. */
static inline size_t tj_len(const char *arr) {
    const char *p = tj_ws(arr);
    if (!p || *p != '[') return (size_t)-1;
    size_t n = 0;
    while (tj_at(arr, n)) n++;
    return n;
}

/* Whether the value at v is the JSON string `s` (compared without unescaping). */
static inline int tj_is(const char *v, const char *s) {
    v = tj_ws(v);
    if (!v || *v != '"') return 0;
    size_t n = strlen(s);
    return strncmp(v + 1, s, n) == 0 && v[1 + n] == '"';
}

static inline int tj_is_null(const char *v) {
    v = tj_ws(v);
    return v && strncmp(v, "null", 4) == 0;
}

/* The integer at v; -999999 when it is not a number. */
static inline long tj_int(const char *v) {
    v = tj_ws(v);
    if (!v || !((*v >= '0' && *v <= '9') || *v == '-')) return -999999;
    return strtol(v, NULL, 10);
}

/* A malloc'd copy of the string at v (without unescaping); NULL when it is not a string. */
static inline char *tj_strdup(const char *v) {
    v = tj_ws(v);
    if (!v || *v != '"') return NULL;
    const char *end = tj_skip_string(v);
    if (!end) return NULL;
    size_t n = (size_t)(end - v - 2);
    char *s = malloc(n + 1);
    if (!s) return NULL;
    memcpy(s, v + 1, n);
    s[n] = '\0';
    return s;
}

/* The step object named `name` in a task's JSON (tc_task_json); NULL if absent. */
static inline const char *tj_step(const char *task_json, const char *name) {
    const char *steps = tj_get(task_json, "steps");
    for (size_t i = 0; steps && tj_at(steps, i); i++) {
        const char *step = tj_at(steps, i);
        if (tj_is(tj_get(step, "name"), name)) return step;
    }
    return NULL;
}

/* ---- the engine's views, checked --------------------------------------------------------- */

/* The task's JSON (free with tc_string_free); fails the test if the call fails. */
static inline char *tc_test_task_json_(const char *file, int line, tc_engine *e,
                                       const char *task_id) {
    char *json = NULL;
    tc_status s = tc_task_json(e, task_id, &json);
    if (s != TC_OK) tc_test_status_fail_(file, line, "tc_task_json", s, TC_OK);
    if (json == NULL) tc_test_fail_(file, line, "tc_task_json returned NULL JSON", NULL);
    return json;
}
#define TASK_JSON(e, id) tc_test_task_json_(__FILE__, __LINE__, (e), (id))

#define ASSERT_TASK_STATUS(e, id, status)                                                       \
    do {                                                                                        \
        char *j_ = TASK_JSON((e), (id));                                                        \
        ASSERT_SHOW(tj_is(tj_get(j_, "status"), (status)), j_);                                 \
        tc_string_free(j_);                                                                     \
    } while (0)

#define ASSERT_STEP_STATUS(e, id, step, status)                                                 \
    do {                                                                                        \
        char *j_ = TASK_JSON((e), (id));                                                        \
        ASSERT_SHOW(tj_step(j_, (step)) != NULL, j_);                                           \
        ASSERT_SHOW(tj_is(tj_get(tj_step(j_, (step)), "status"), (status)), j_);                \
        tc_string_free(j_);                                                                     \
    } while (0)

/* ---- time and files ---------------------------------------------------------------------- */

static inline long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* A fresh, empty file /tmp/tasker-c-XXXXXX for a SQLite store: its path and its URL. */
static inline void temp_sqlite(char path[64], char url[80]) {
    snprintf(path, 64, "/tmp/tasker-c-XXXXXX");
    int fd = mkstemp(path);
    ASSERT(fd >= 0);
    close(fd);
    snprintf(url, 80, "sqlite://%s", path); /* path is absolute: sqlite:///tmp/… */
}

/* Removes the SQLite file and its companions. */
static inline void remove_sqlite(const char *path) {
    static const char *const suffixes[] = {"", "-wal", "-shm", "-journal"};
    for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
        char p[96];
        snprintf(p, sizeof p, "%s%s", path, suffixes[i]);
        unlink(p);
    }
}

#endif /* TC_TEST_H */
