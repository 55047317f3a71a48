/* Realtime timers when the realtime clock is set forward or back.
 * SPDX-License-Identifier: MIT
 *
 * Setting the machine's clock would disturb everything else on it, so this
 * program defines its own clock_gettime(), which adds `shift` to
 * CLOCK_REALTIME and passes every other clock through. The library's calls
 * reach it: an executable's definition of a symbol comes before libc's
 * (ELF interposition). A jump of the clock is then one store.
 */
#include "harness.h"

#include <dlfcn.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MS INT64_C(1000000)
#define HOUR (INT64_C(3600) * 1000 * MS)

static _Atomic int64_t shift;

int clock_gettime(clockid_t id, struct timespec *ts)
{
    static int (*real)(clockid_t, struct timespec *);
    if (!real) {
        void *sym = dlsym(RTLD_NEXT, "clock_gettime");
        memcpy(&real, &sym, sizeof(real)); /* POSIX: a function's address */
    }
    int r = real(id, ts);
    int64_t s = atomic_load(&shift);
    if (r == 0 && id == CLOCK_REALTIME && s) {
        int64_t ns = (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec + s;
        ts->tv_sec = ns / 1000000000;
        ts->tv_nsec = ns % 1000000000;
    }
    return r;
}

/* The fixture of harness.h, with the clock set right first and after. */
static int setup(void **state)
{
    atomic_store(&shift, 0);
    return harness_ctx_setup(state);
}

static int teardown(void **state)
{
    atomic_store(&shift, 0);
    return harness_ctx_teardown(state);
}

#define CLOCK_TEST(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

static int64_t real_now(void)
{
    return spindle_now_ns(SPINDLE_CLOCK_REALTIME);
}

/* Timers that log the order they fire in, and the realtime clock then. */
#define N 100
struct log {
    unsigned order[N];
    int64_t at[N];
    unsigned n;
};

struct entry {
    struct log *log;
    spindle_timer *t;
    unsigned id;
    int64_t deadline;
};

static void log_cb(void *opaque)
{
    struct entry *e = opaque;
    if (e->log->n < N) {
        e->log->order[e->log->n] = e->id;
        e->log->at[e->log->n] = real_now();
    }
    e->log->n++;
}

static void new_entries(spindle_ctx *ctx, struct log *log, struct entry *e)
{
    for (unsigned i = 0; i < N; i++) {
        e[i] = (struct entry){ .log = log, .id = i };
        e[i].t = spindle_timer_new(ctx, SPINDLE_CLOCK_REALTIME, log_cb, &e[i]);
        assert_non_null(e[i].t);
    }
}

static void free_entries(struct entry *e)
{
    for (unsigned i = 0; i < N; i++) {
        spindle_timer_free(e[i].t);
    }
}

/* Arm them 1 h + i s ahead, in a shuffled order. */
static void arm_hours_ahead(struct entry *e)
{
    int64_t now = real_now();
    for (unsigned k = 0; k < N; k++) {
        unsigned i = (k * 37) % N;
        e[i].deadline = now + HOUR + (int64_t)i * 1000 * MS;
        spindle_timer_mod(e[i].t, e[i].deadline);
    }
}

static void check_fired_in_order_never_early(struct log *log,
                                             struct entry *e)
{
    assert_int_equal(log->n, N);
    for (unsigned k = 0; k < N; k++) {
        assert_int_equal(log->order[k], k);
        assert_true(log->at[k] >= e[log->order[k]].deadline);
    }
}

static void realtime_timers_fire_in_order_when_the_clock_jumps_ahead(
    void **state)
{
    spindle_ctx *ctx = *state;
    struct log log = { .n = 0 };
    struct entry e[N];
    new_entries(ctx, &log, e);
    arm_hours_ahead(e);
    assert_false(spindle_poll(ctx, false));

    atomic_store(&shift, 2 * HOUR); /* past all of them at once */
    harness_drain(ctx);
    check_fired_in_order_never_early(&log, e);
    assert_int_equal(spindle_compute_timeout(ctx), -1);
    free_entries(e);
}

static void realtime_timers_wait_when_the_clock_jumps_back(void **state)
{
    spindle_ctx *ctx = *state;
    struct log log = { .n = 0 };
    struct entry e[N];
    new_entries(ctx, &log, e);
    arm_hours_ahead(e);
    atomic_store(&shift, HOUR + 10 * 1000 * MS); /* ten of them due */
    harness_drain(ctx);
    assert_int_equal(log.n, 11);

    /* Back by a day: nothing fires early, and the timeout is to the next
     * deadline on the clock as it now reads. */
    atomic_store(&shift, -24 * HOUR);
    assert_false(spindle_poll(ctx, false));
    assert_int_equal(log.n, 11);
    int64_t before = real_now();
    int64_t timeout = spindle_compute_timeout(ctx);
    assert_true(timeout > 24 * HOUR);
    assert_true(timeout <= e[11].deadline - before);

    /* Timers armed on the clock as it now reads work as ever. */
    struct log near_log = { .n = 0 };
    struct entry near[N];
    new_entries(ctx, &near_log, near);
    int64_t now = real_now();
    for (unsigned i = 0; i < N; i++) {
        near[i].deadline = now + (int64_t)((i * 7) % N) * 10000;
        spindle_timer_mod(near[i].t, near[i].deadline);
    }
    while (near_log.n < N) {
        spindle_poll(ctx, true);
    }
    assert_int_equal(log.n, 11);
    for (unsigned k = 1; k < N; k++) {
        assert_true(near[near_log.order[k]].deadline >=
                    near[near_log.order[k - 1]].deadline);
        assert_true(near_log.at[k] >= near[near_log.order[k]].deadline);
    }

    /* Forward again, past the rest: they fire, in order. */
    atomic_store(&shift, 2 * HOUR);
    harness_drain(ctx);
    check_fired_in_order_never_early(&log, e);
    free_entries(near);
    free_entries(e);
}

static void monotonic_timers_ignore_realtime_jumps(void **state)
{
    spindle_ctx *ctx = *state;
    unsigned count = 0;
    spindle_timer *t = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC,
                                         harness_count_cb, &count);
    assert_non_null(t);
    spindle_timer_mod(t, spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) + HOUR);
    atomic_store(&shift, 2 * HOUR);
    assert_false(spindle_poll(ctx, false));
    atomic_store(&shift, -2 * HOUR);
    assert_false(spindle_poll(ctx, false));
    assert_int_equal(count, 0);
    assert_true(spindle_compute_timeout(ctx) > HOUR - 60 * 1000 * MS);
    spindle_timer_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        CLOCK_TEST(realtime_timers_fire_in_order_when_the_clock_jumps_ahead),
        CLOCK_TEST(realtime_timers_wait_when_the_clock_jumps_back),
        CLOCK_TEST(monotonic_timers_ignore_realtime_jumps),
    };
    return RUN_TESTS(tests);
}
