/* spindle bench: helpers shared by the driver, the rows and the adapters.
 * SPDX-License-Identifier: MIT */
#ifndef BENCH_H
#define BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* A benchmark that did not do its work must never print a time: fail the
 * whole run, loudly. */
#define BENCH_FAIL(...)                                                      \
    do {                                                                     \
        fprintf(stderr, "bench: FAILED (%s:%d): ", __FILE__, __LINE__);      \
        fprintf(stderr, __VA_ARGS__);                                        \
        fputc('\n', stderr);                                                 \
        exit(1);                                                             \
    } while (0)
#define BENCH_CHECK(cond, ...)                                               \
    do {                                                                     \
        if (!(cond))                                                         \
            BENCH_FAIL(__VA_ARGS__);                                         \
    } while (0)

static inline int64_t bench_clock(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
static inline int64_t now_ns(void) { return bench_clock(CLOCK_MONOTONIC); }
/* CPU time of the calling thread: what a loop costs, sleeping excluded. */
static inline int64_t thread_cpu_ns(void)
{
    return bench_clock(CLOCK_THREAD_CPUTIME_ID);
}

/* Sleep until an absolute CLOCK_MONOTONIC time. */
void sleep_until_ns(int64_t t);

/* Run parameters, set by the driver (QUICK=1 shrinks the sizes). */
typedef struct bench_cfg {
    int reps;       /* repetitions per cell (>= 5) */
    bool quick;
    int max_fds_n;  /* largest N for fd-dispatch the fd limit allows */
    const char *out_dir; /* results, logs, and scratch files (the nbd image) */
} bench_cfg;
extern bench_cfg cfg;

/* A timed repetition stops at its count or after this long, whichever comes
 * first (rates are what is reported): on a loaded machine a ping-pong can
 * cost a scheduler time slice per round trip. */
static inline int64_t bench_time_cap_ns(void)
{
    return cfg.quick ? 150000000 : 500000000;
}

/* Allocations the adapters make for their own wrappers (a watcher plus the
 * bench callback): counted so the memory row can subtract them and report
 * only what the library itself needs. */
void *bench_alloc(size_t size);
void bench_free(void *p);
bool impl_wanted(const char *label);
void pin_thread(int idx);
void pin_thread_always(int idx);
void restore_main_pin(void);
extern size_t bench_alloc_bytes; /* chunk bytes currently held */

/* Other programs (bench/proc.c): servers and load generators for the nbd
 * and http rows. */
#include <sys/types.h>
bool tool_found(const char *name);      /* in PATH, or a path that runs */
int free_tcp_port(void);                /* on 127.0.0.1 */
/* Start argv, with env ("NAME=VALUE") added to its environment if not
 * NULL, stdout and stderr to log_path (or /dev/null if NULL). */
pid_t proc_start(char *const argv[], const char *env, const char *log_path);
/* Wait until pid accepts connections on 127.0.0.1:port (10 s at most). */
void server_wait_port(pid_t pid, int port, const char *log_path);
int proc_wait(pid_t pid);               /* its exit status (128 + signal) */
/* The same, but kill it after timeout_ns (< 0: never) and return -1. */
int proc_wait_timeout(pid_t pid, int64_t timeout_ns);
void server_stop(pid_t pid);            /* SIGTERM, reap (SIGKILL after 10 s) */
int64_t proc_cpu_ns(pid_t pid);         /* user + system, all threads */

/* Results: one call per cell. Lower is better for every metric except
 * rates (a metric ending in "/s", or IOPS), where higher is.
 * kind: the library under test, a peer, or a raw floor. */
enum { KIND_SPINDLE, KIND_PEER, KIND_FLOOR };
void result_add(const char *row, const char *param, const char *metric,
                const char *impl, int kind, const double *v, int n,
                const char *note);
void results_print_table(FILE *f);
double bench_median(const double *v, int n); /* n from 1 to 64 */
void results_write_jsonl(const char *path, const char *machine_json);
void results_write_svg(const char *path, const char *machine);

#endif
