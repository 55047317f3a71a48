/* timer-probe: spindle's timers alone, one workload per run, for callgrind
 * and for comparing builds of the timer code (docs/design.md, "Timers").
 *
 *   timer-probe fire [n]     arm n timers (deadlines 1 ms + a permutation
 *                            of 20 ns steps, as make bench's arm+fire row),
 *                            wait until all are due, fire them: ns per arm
 *                            and per fire; checks the order
 *   timer-probe churn [ops]  ops re-arms and stops of 10,000 timers armed
 *                            100 s ahead, as make bench's churn row
 *   timer-probe live [n]     n timers due over one second after a 50 ms
 *                            lead, fired by blocking iterations: CPU ns
 *                            per timer, lateness (largest, 99th percentile)
 *   timer-probe live-slow [n]  the same, and each iteration that took over
 *                            500 us of wall-clock time: when it started,
 *                            how long it took, the timers it fired, its
 *                            kernel waits (0: the time went to work or to
 *                            another thread; 1: mostly to a sleep)
 *
 * Under callgrind, the calls of one kind divided by their count give the
 * instructions per operation (spindle_timer_mod, spindle_poll).
 * SPDX-License-Identifier: MIT */
#include <spindle.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"

typedef struct probe {
    long n, fired;
    int64_t base;
    int64_t *delay;
    int32_t *order;
    float *late_us;
} probe;

typedef struct slot {
    probe *p;
    int32_t i;
} slot;

static void on_fire(void *opaque)
{
    slot *s = opaque;
    s->p->order[s->p->fired++] = s->i;
}

static void on_live(void *opaque)
{
    slot *s = opaque;
    probe *p = s->p;
    p->late_us[s->i] = (float)((now_ns() - (p->base + p->delay[s->i])) / 1e3);
    p->fired++;
}

static uint64_t lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void churn(spindle_ctx *ctx, long ops)
{
    enum { K = 10000 };
    static spindle_timer *t[K];
    static bool armed[K];
    probe p = {0};
    slot s = {&p, 0};
    uint32_t *pick = malloc(ops * sizeof *pick);
    int64_t *when = malloc(ops * sizeof *when);
    BENCH_CHECK(pick && when, "out of memory");
    int64_t base = now_ns();
    uint64_t seed = 42;
    for (long i = 0; i < K; i++) {
        t[i] = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC, on_fire, &s);
        spindle_timer_mod(t[i], base + 100000000000LL + (int64_t)(lcg(&seed) % 1000000) * 1000);
        armed[i] = true;
    }
    for (long o = 0; o < ops; o++) {
        uint64_t x = lcg(&seed);
        pick[o] = (uint32_t)(x % K) | (uint32_t)(((x >> 24) & 3) == 0) << 31;
        when[o] = base + 100000000000LL + (int64_t)(lcg(&seed) % 1000000) * 1000;
    }
    int64_t t0 = now_ns();
    for (long o = 0; o < ops; o++) {
        uint32_t i = pick[o] & 0x7fffffff;
        if ((pick[o] >> 31) && armed[i]) {
            spindle_timer_del(t[i]);
            armed[i] = false;
        } else {
            spindle_timer_mod(t[i], when[o]);
            armed[i] = true;
        }
    }
    int64_t t1 = now_ns();
    spindle_poll(ctx, false);
    BENCH_CHECK(p.fired == 0, "a timer fired during churn");
    printf("churn %.1f ns/op\n", (double)(t1 - t0) / ops);
    free(pick);
    free(when);
}

/* Blocking iterations until every timer fired, each timed with the
 * wall clock (a vDSO read: a clock read of the thread's CPU time would be a
 * system call per iteration, and change what is measured); the slow ones
 * are printed as they come. */
static void live_slow(spindle_ctx *ctx, probe *p)
{
    while (p->fired < p->n) {
        spindle_stats a, b;
        long fired = p->fired;
        spindle_get_stats(ctx, &a);
        int64_t t0 = now_ns();
        spindle_poll(ctx, true);
        int64_t t1 = now_ns();
        spindle_get_stats(ctx, &b);
        if (t1 - t0 > 500000 && fired > 0)
            printf("iteration at %.3f ms: %.0f us, %ld timers fired, %llu kernel waits\n",
                   (double)(t0 - p->base) / 1e6, (double)(t1 - t0) / 1e3, p->fired - fired,
                   (unsigned long long)(b.kernel_waits - a.kernel_waits));
    }
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    long n = argc > 2 ? atol(argv[2]) : 1000000;
    bool slow = !strcmp(mode, "live-slow"), live = slow || !strcmp(mode, "live");
    if (n <= 0 || (!live && strcmp(mode, "fire") && strcmp(mode, "churn"))) {
        fprintf(stderr, "usage: timer-probe fire|churn|live|live-slow [n]\n");
        return 2;
    }
    spindle_ctx *ctx = spindle_ctx_new();
    BENCH_CHECK(ctx, "spindle_ctx_new");
    if (!strcmp(mode, "churn")) {
        churn(ctx, n);
        spindle_ctx_free(ctx);
        return 0;
    }

    probe p = {.n = n};
    p.delay = malloc(n * sizeof *p.delay);
    p.order = malloc(n * sizeof *p.order);
    p.late_us = malloc(n * sizeof *p.late_us);
    slot *slots = malloc(n * sizeof *slots);
    spindle_timer **t = malloc(n * sizeof *t);
    BENCH_CHECK(p.delay && p.order && p.late_us && slots && t, "out of memory");
    for (long i = 0; i < n; i++) {
        int64_t rank = (int64_t)((i * 7919) % n);
        p.delay[i] = live ? 50000000 + rank * (1000000000 / n) : 1000000 + rank * 20;
        p.late_us[i] = -1; /* its pages faulted in now, not while timed */
        slots[i] = (slot){&p, (int32_t)i};
        t[i] = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC, live ? on_live : on_fire,
                                 &slots[i]);
        BENCH_CHECK(t[i], "spindle_timer_new");
    }
    p.base = now_ns();
    int64_t t0 = now_ns();
    for (long i = 0; i < n; i++)
        spindle_timer_mod(t[i], p.base + p.delay[i]);
    int64_t t1 = now_ns();
    if (live) {
        int64_t c0 = thread_cpu_ns();
        if (slow)
            live_slow(ctx, &p);
        while (p.fired < n)
            spindle_poll(ctx, true);
        int64_t c1 = thread_cpu_ns();
        qsort(p.late_us, n, sizeof *p.late_us, cmp_float);
        BENCH_CHECK(p.late_us[0] >= 0, "a timer fired early");
        printf("live %.1f CPU ns/timer, late max %.1f us, p99 %.1f us\n",
               (double)(c1 - c0) / n, p.late_us[n - 1], p.late_us[n - 1 - n / 100]);
    } else {
        sleep_until_ns(t1 + 1000000 + n * 20 + 3000000);
        int64_t t2 = now_ns();
        while (p.fired < n)
            spindle_poll(ctx, true);
        int64_t t3 = now_ns();
        for (long k = 1; k < n; k++)
            BENCH_CHECK(p.delay[p.order[k]] >= p.delay[p.order[k - 1]], "out of order");
        printf("arm %.1f ns, fire %.1f ns\n", (double)(t1 - t0) / n, (double)(t3 - t2) / n);
    }
    spindle_ctx_free(ctx);
    free(p.delay);
    free(p.order);
    free(p.late_us);
    free(slots);
    free(t);
    return 0;
}
