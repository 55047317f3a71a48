/* spindle bench: small helpers (sleeping, counted allocations).
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>

#include "bench.h"

bench_cfg cfg = {.reps = 5};
size_t bench_alloc_bytes;

void sleep_until_ns(int64_t t)
{
    struct timespec ts = {.tv_sec = t / 1000000000, .tv_nsec = t % 1000000000};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

/* glibc's in-use chunk is the usable size plus one size word: that is what
 * mallinfo2's uordblks counts, so that is what we subtract. */
static size_t chunk_size(void *p)
{
    return malloc_usable_size(p) + sizeof(size_t);
}

void *bench_alloc(size_t size)
{
    void *p = calloc(1, size);
    BENCH_CHECK(p, "out of memory");
    bench_alloc_bytes += chunk_size(p);
    return p;
}

void bench_free(void *p)
{
    if (p) {
        bench_alloc_bytes -= chunk_size(p);
        free(p);
    }
}

/* BENCH_ONLY=spindle (a prefix of the line's label) runs those lines only:
 * for profiling one library with perf or callgrind. Floors are kept unless
 * BENCH_SKIP_FLOORS is set. */
bool impl_wanted(const char *label)
{
    const char *only = getenv("BENCH_ONLY");
    return !only || !strncmp(label, only, strlen(only));
}

/* The CPUs the process was given, read once: threads inherit the pinned
 * affinity of the thread that created them. */
static cpu_set_t allowed;
static int n_allowed = -1;

static void read_allowed(void)
{
    if (n_allowed < 0)
        n_allowed = sched_getaffinity(0, sizeof allowed, &allowed) == 0 ? CPU_COUNT(&allowed) : 0;
}

/* Pin the calling thread to the idx-th CPU the process may run on (no-op on
 * a single CPU), whatever BENCH_PIN says. */
void pin_thread_always(int idx)
{
    cpu_set_t one;
    read_allowed();
    if (n_allowed < 2)
        return;
    for (int cpu = 0, k = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &allowed))
            continue;
        if (k++ == idx) {
            CPU_ZERO(&one);
            CPU_SET(cpu, &one);
            pthread_setaffinity_np(pthread_self(), sizeof one, &one);
            return;
        }
    }
}

/* Give the main thread back the placement main() chose, once a row that
 * pinned it is done: every CPU the process was given, or the first one
 * under BENCH_PIN=1 (otherwise the rows after it would run unpinned). */
void restore_main_pin(void)
{
    read_allowed();
    if (n_allowed > 0)
        pthread_setaffinity_np(pthread_self(), sizeof allowed, &allowed);
    pin_thread(0); /* what main() does */
}

/* With BENCH_PIN=1, pin the calling thread to the idx-th CPU it may run on
 * (no-op on a single CPU): the two sides of a ping-pong then always run on
 * different cores, so
 * a run measures one thing (a cross-core wake-up) rather than wherever the
 * scheduler happened to put the threads. */
void pin_thread(int idx)
{
    if (!getenv("BENCH_PIN"))
        return; /* opt-in: on this VM pinning made every ping-pong slower and noisier */
    pin_thread_always(idx);
}
