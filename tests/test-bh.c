/* Unit tests: bottom halves (spindle_bh_*).
 * SPDX-License-Identifier: MIT
 *
 * Callbacks never call cmocka assertions (a failing assertion would longjmp
 * out of spindle_poll()); they record what they saw and the test body
 * asserts afterwards.
 */
#include "harness.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------
 * Helpers
 */

/* Deterministic PRNG (xorshift64*) so that a failure is reproducible. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * UINT64_C(2685821657736338717);
}

/* perm[0..n) = a shuffled permutation of 0..n-1 (Fisher-Yates). */
static void shuffled_permutation(unsigned *perm, unsigned n, uint64_t seed)
{
    uint64_t s = seed ? seed : 1;
    for (unsigned i = 0; i < n; i++) {
        perm[i] = i;
    }
    for (unsigned i = n - 1; i > 0; i--) {
        unsigned j = (unsigned)(rng_next(&s) % (i + 1));
        unsigned tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
}

/* A bottom half that records the order in which BHs run. */
#define ORDER_MAX 128
struct order_log {
    unsigned seq[ORDER_MAX];
    unsigned n;
};

struct order_entry {
    struct order_log *log;
    unsigned id;
};

static void order_cb(void *opaque)
{
    struct order_entry *e = opaque;
    if (e->log->n < ORDER_MAX) {
        e->log->seq[e->log->n] = e->id;
    }
    e->log->n++;
}

/* A BH callback that sets a flag. */
struct flag_bh {
    volatile bool ran;
    unsigned count;
};

static void flag_cb(void *opaque)
{
    struct flag_bh *f = opaque;
    f->count++;
    f->ran = true;
}

/* ------------------------------------------------------------------------
 * Scheduling
 */

static void bh_schedule_does_not_run_synchronously(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    unsigned count = 0;
    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &count);
    assert_non_null(bh);

    spindle_bh_schedule(bh);
    assert_int_equal(count, 0);

    assert_true(harness_poll(ctx, false));
    assert_int_equal(count, 1);

    spindle_bh_delete(bh);
    spindle_ctx_free(ctx);
}

static void bh_schedule_on_pending_bh_coalesces(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    unsigned count = 0;
    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &count);
    assert_non_null(bh);

    spindle_bh_schedule(bh);
    spindle_bh_schedule(bh);
    spindle_bh_schedule(bh);
    harness_drain(ctx);
    assert_int_equal(count, 1);

    /* Nothing is left scheduled. */
    assert_false(harness_poll(ctx, false));
    assert_int_equal(count, 1);

    spindle_bh_delete(bh);
    spindle_ctx_free(ctx);
}

static void bh_runs_once_per_schedule(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    unsigned count = 0;
    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &count);
    assert_non_null(bh);

    for (unsigned i = 1; i <= 5; i++) {
        spindle_bh_schedule(bh);
        harness_drain(ctx);
        assert_int_equal(count, i);
    }

    spindle_bh_delete(bh);
    spindle_ctx_free(ctx);
}

/* A BH that schedules itself from its callback, up to a cap (so that a
 * library that re-runs it within the same iteration fails the count instead
 * of hanging). */
#define RESCHEDULE_CAP 1000
struct self_resched {
    spindle_bh *bh;
    unsigned count;
};

static void self_resched_cb(void *opaque)
{
    struct self_resched *s = opaque;
    s->count++;
    if (s->count < RESCHEDULE_CAP) {
        spindle_bh_schedule(s->bh);
    }
}

static void bh_rescheduling_itself_runs_once_per_iteration(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct self_resched s = { 0 };
    s.bh = spindle_bh_new(ctx, self_resched_cb, &s);
    assert_non_null(s.bh);

    spindle_bh_schedule(s.bh);
    enum { N = 100 };
    for (unsigned i = 1; i <= N; i++) {
        assert_true(harness_poll(ctx, false));
        assert_int_equal(s.count, i);
    }
    assert_int_equal(s.count, N);

    spindle_bh_delete(s.bh);
    spindle_ctx_free(ctx);
}

static void bh_cancel_prevents_the_run(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    unsigned count = 0;
    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &count);
    assert_non_null(bh);

    spindle_bh_schedule(bh);
    spindle_bh_cancel(bh);
    assert_false(harness_poll(ctx, false));
    harness_drain(ctx);
    assert_int_equal(count, 0);

    spindle_bh_delete(bh);
    spindle_ctx_free(ctx);
}

static void bh_cancelled_bh_runs_when_scheduled_again(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    unsigned count = 0;
    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &count);
    assert_non_null(bh);

    spindle_bh_schedule(bh);
    spindle_bh_cancel(bh);
    spindle_bh_schedule(bh);
    harness_drain(ctx);
    assert_int_equal(count, 1);

    spindle_bh_delete(bh);
    spindle_ctx_free(ctx);
}

/* ------------------------------------------------------------------------
 * Deletion
 */

static void bh_delete_of_pending_bh_never_runs(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    unsigned count = 0;
    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &count);
    assert_non_null(bh);

    spindle_bh_schedule(bh);
    spindle_bh_delete(bh);
    assert_false(harness_poll(ctx, false));
    harness_drain(ctx);
    assert_int_equal(count, 0);

    spindle_ctx_free(ctx);
}

struct self_delete {
    spindle_bh *bh;
    unsigned count;
};

static void self_delete_cb(void *opaque)
{
    struct self_delete *s = opaque;
    s->count++;
    spindle_bh_delete(s->bh);
    s->bh = NULL;
}

static void bh_delete_from_its_own_callback(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct self_delete s = { 0 };
    s.bh = spindle_bh_new(ctx, self_delete_cb, &s);
    assert_non_null(s.bh);

    spindle_bh_schedule(s.bh);
    assert_true(harness_poll(ctx, false));
    assert_int_equal(s.count, 1);
    assert_null(s.bh);

    /* The deleted BH is gone: nothing runs any more. */
    assert_false(harness_poll(ctx, false));
    assert_int_equal(s.count, 1);

    spindle_ctx_free(ctx);
}

/* A's callback deletes B, which was scheduled right after A. */
struct delete_other {
    spindle_bh *victim;
    unsigned a_count;
    unsigned b_count;
};

static void delete_other_a_cb(void *opaque)
{
    struct delete_other *d = opaque;
    d->a_count++;
    spindle_bh_delete(d->victim);
    d->victim = NULL;
}

static void delete_other_b_cb(void *opaque)
{
    struct delete_other *d = opaque;
    d->b_count++;
}

static void bh_deleted_by_another_bh_callback_never_runs(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct delete_other d = { 0 };
    spindle_bh *a = spindle_bh_new(ctx, delete_other_a_cb, &d);
    assert_non_null(a);
    d.victim = spindle_bh_new(ctx, delete_other_b_cb, &d);
    assert_non_null(d.victim);

    /* Both are in the same batch; A runs first (FIFO) and deletes B. */
    spindle_bh_schedule(a);
    spindle_bh_schedule(d.victim);
    harness_drain(ctx);
    assert_int_equal(d.a_count, 1);
    assert_int_equal(d.b_count, 0);
    assert_null(d.victim);

    spindle_bh_delete(a);
    spindle_ctx_free(ctx);
}

/* ------------------------------------------------------------------------
 * Order
 */

static void bh_scheduled_from_one_thread_run_in_fifo_order(void **state)
{
    (void)state;
    enum { N = 100 };
    spindle_ctx *ctx = harness_ctx_new();
    struct order_log log = { .n = 0 };
    struct order_entry entries[N];
    spindle_bh *bhs[N];
    unsigned perm[N];

    for (unsigned i = 0; i < N; i++) {
        entries[i].log = &log;
        entries[i].id = i;
        bhs[i] = spindle_bh_new(ctx, order_cb, &entries[i]);
        assert_non_null(bhs[i]);
    }
    shuffled_permutation(perm, N, 0x5eed);
    for (unsigned k = 0; k < N; k++) {
        spindle_bh_schedule(bhs[perm[k]]);
    }
    harness_drain(ctx);

    assert_int_equal(log.n, N);
    for (unsigned k = 0; k < N; k++) {
        assert_int_equal(log.seq[k], perm[k]);
    }

    for (unsigned i = 0; i < N; i++) {
        spindle_bh_delete(bhs[i]);
    }
    spindle_ctx_free(ctx);
}

struct sched_thread_arg {
    spindle_bh **bhs;
    const unsigned *perm;
    unsigned n;
};

static void *schedule_in_order_thread(void *opaque)
{
    struct sched_thread_arg *a = opaque;
    for (unsigned k = 0; k < a->n; k++) {
        spindle_bh_schedule(a->bhs[a->perm[k]]);
    }
    return NULL;
}

static void bh_scheduled_from_another_thread_run_in_fifo_order(void **state)
{
    (void)state;
    enum { N = 100 };
    spindle_ctx *ctx = harness_ctx_new();
    struct order_log log = { .n = 0 };
    struct order_entry entries[N];
    spindle_bh *bhs[N];
    unsigned perm[N];

    for (unsigned i = 0; i < N; i++) {
        entries[i].log = &log;
        entries[i].id = i;
        bhs[i] = spindle_bh_new(ctx, order_cb, &entries[i]);
        assert_non_null(bhs[i]);
    }
    shuffled_permutation(perm, N, 0xfeed);

    struct sched_thread_arg arg = { bhs, perm, N };
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, schedule_in_order_thread, &arg),
                     0);
    assert_int_equal(pthread_join(th, NULL), 0);
    harness_drain(ctx);

    assert_int_equal(log.n, N);
    for (unsigned k = 0; k < N; k++) {
        assert_int_equal(log.seq[k], perm[k]);
    }

    for (unsigned i = 0; i < N; i++) {
        spindle_bh_delete(bhs[i]);
    }
    spindle_ctx_free(ctx);
}

/* ------------------------------------------------------------------------
 * Cross-thread wake-up
 */

static void *schedule_one_thread(void *opaque)
{
    spindle_bh_schedule(opaque);
    return NULL;
}

static void bh_scheduled_from_another_thread_wakes_blocking_poll(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct flag_bh f = { 0 };
    spindle_bh *bh = spindle_bh_new(ctx, flag_cb, &f);
    assert_non_null(bh);

    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, schedule_one_thread, bh), 0);
    /* Blocks until the other thread's schedule wakes the loop (a lost
     * wake-up hangs here and the watchdog fails the test). */
    harness_poll_until(ctx, &f.ran, 1000);
    assert_int_equal(pthread_join(th, NULL), 0);
    harness_drain(ctx);
    assert_int_equal(f.count, 1);

    spindle_bh_delete(bh);
    spindle_ctx_free(ctx);
}

/* ------------------------------------------------------------------------
 * Oneshot
 */

static void bh_oneshot_runs_once(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    unsigned count = 0;

    assert_int_equal(spindle_bh_oneshot(ctx, harness_count_cb, &count), 0);
    assert_int_equal(count, 0);
    assert_true(harness_poll(ctx, false));
    assert_int_equal(count, 1);
    /* It is gone (and freed: LeakSanitizer/valgrind check that). */
    assert_false(harness_poll(ctx, false));
    harness_drain(ctx);
    assert_int_equal(count, 1);

    spindle_ctx_free(ctx);
}

static void bh_oneshots_run_in_fifo_order(void **state)
{
    (void)state;
    enum { N = 50 };
    spindle_ctx *ctx = harness_ctx_new();
    struct order_log log = { .n = 0 };
    struct order_entry entries[N];

    for (unsigned i = 0; i < N; i++) {
        entries[i].log = &log;
        entries[i].id = i;
        assert_int_equal(spindle_bh_oneshot(ctx, order_cb, &entries[i]), 0);
    }
    harness_drain(ctx);
    assert_int_equal(log.n, N);
    for (unsigned k = 0; k < N; k++) {
        assert_int_equal(log.seq[k], k);
    }

    spindle_ctx_free(ctx);
}

/* ------------------------------------------------------------------------
 * Idle bottom halves
 */

static void bh_idle_runs_without_counting_as_progress(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    unsigned count = 0;
    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &count);
    assert_non_null(bh);

    spindle_bh_schedule_idle(bh);
    assert_int_equal(count, 0);
    assert_false(harness_poll(ctx, false));
    assert_int_equal(count, 1);

    /* It ran once and is no longer scheduled. */
    assert_false(harness_poll(ctx, false));
    assert_int_equal(count, 1);

    spindle_bh_delete(bh);
    spindle_ctx_free(ctx);
}

static void bh_idle_runs_in_blocking_poll(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct flag_bh f = { 0 };
    spindle_bh *bh = spindle_bh_new(ctx, flag_cb, &f);
    assert_non_null(bh);

    /* The idle BH bounds the sleep, so blocking iterations get to it. */
    spindle_bh_schedule_idle(bh);
    harness_poll_until(ctx, &f.ran, 100);
    assert_int_equal(f.count, 1);

    spindle_bh_delete(bh);
    spindle_ctx_free(ctx);
}

static void bh_idle_only_caps_compute_timeout_at_10ms(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    unsigned count = 0;
    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &count);
    assert_non_null(bh);

    spindle_bh_schedule_idle(bh);
    int64_t timeout = spindle_compute_timeout(ctx);
    assert_true(timeout > 0);
    assert_true(timeout <= INT64_C(10000000));

    spindle_bh_delete(bh);
    spindle_ctx_free(ctx);
}

static void bh_idle_caps_compute_timeout_below_a_far_timer(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    unsigned count = 0;
    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &count);
    assert_non_null(bh);
    spindle_timer *t = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC,
                                         harness_count_cb, &count);
    assert_non_null(t);

    /* A timer an hour away, and an idle BH: the sleep is still bounded. */
    spindle_timer_mod(t, spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) +
                             INT64_C(3600) * 1000000000);
    spindle_bh_schedule_idle(bh);
    int64_t timeout = spindle_compute_timeout(ctx);
    assert_true(timeout > 0);
    assert_true(timeout <= INT64_C(10000000));

    spindle_timer_free(t);
    spindle_bh_delete(bh);
    spindle_ctx_free(ctx);
}

/* ------------------------------------------------------------------------
 * spindle_compute_timeout
 */

static void compute_timeout_is_zero_with_a_bh_pending(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    unsigned count = 0;
    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &count);
    assert_non_null(bh);

    spindle_bh_schedule(bh);
    assert_int_equal(spindle_compute_timeout(ctx), 0);

    spindle_bh_delete(bh);
    spindle_ctx_free(ctx);
}

static void compute_timeout_is_zero_with_idle_and_normal_bh_pending(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    unsigned count = 0;
    spindle_bh *idle = spindle_bh_new(ctx, harness_count_cb, &count);
    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &count);
    assert_non_null(idle);
    assert_non_null(bh);

    spindle_bh_schedule_idle(idle);
    spindle_bh_schedule(bh);
    assert_int_equal(spindle_compute_timeout(ctx), 0);

    spindle_bh_delete(bh);
    spindle_bh_delete(idle);
    spindle_ctx_free(ctx);
}

static void compute_timeout_is_infinite_with_nothing_pending(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    unsigned count = 0;
    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &count);
    assert_non_null(bh);

    /* An unscheduled BH does not shorten the sleep. */
    assert_int_equal(spindle_compute_timeout(ctx), -1);

    spindle_bh_delete(bh);
    spindle_ctx_free(ctx);
}

static void compute_timeout_is_infinite_after_the_bh_ran(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    unsigned count = 0;
    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &count);
    assert_non_null(bh);

    spindle_bh_schedule(bh);
    harness_drain(ctx);
    assert_int_equal(count, 1);
    assert_int_equal(spindle_compute_timeout(ctx), -1);

    spindle_bh_delete(bh);
    spindle_ctx_free(ctx);
}

static void compute_timeout_is_infinite_after_cancel(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    unsigned count = 0;
    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &count);
    assert_non_null(bh);

    spindle_bh_schedule(bh);
    spindle_bh_cancel(bh);
    assert_int_equal(spindle_compute_timeout(ctx), -1);

    spindle_bh_delete(bh);
    spindle_ctx_free(ctx);
}

/* ------------------------------------------------------------------------
 * Nested iterations
 */

/* Outer iteration runs A; A schedules B and runs nested iterations until
 * B has run; B (a callback of the nested iteration) schedules C. */
struct nested_sched {
    spindle_ctx *ctx;
    spindle_bh *a, *b, *c;
    volatile bool b_ran;
    unsigned a_count, b_count, c_count;
    unsigned nested_iterations;
};

static void nested_sched_a_cb(void *opaque)
{
    struct nested_sched *n = opaque;
    n->a_count++;
    spindle_bh_schedule(n->b);
    while (!n->b_ran && n->nested_iterations < 1000) {
        spindle_poll(n->ctx, true);
        n->nested_iterations++;
    }
}

static void nested_sched_b_cb(void *opaque)
{
    struct nested_sched *n = opaque;
    n->b_count++;
    n->b_ran = true;
    spindle_bh_schedule(n->c);
}

static void nested_sched_c_cb(void *opaque)
{
    struct nested_sched *n = opaque;
    n->c_count++;
}

static void bh_scheduled_from_nested_poll_callback_runs_once(void **state)
{
    (void)state;
    struct nested_sched n = { 0 };
    n.ctx = harness_ctx_new();
    n.a = spindle_bh_new(n.ctx, nested_sched_a_cb, &n);
    n.b = spindle_bh_new(n.ctx, nested_sched_b_cb, &n);
    n.c = spindle_bh_new(n.ctx, nested_sched_c_cb, &n);
    assert_non_null(n.a);
    assert_non_null(n.b);
    assert_non_null(n.c);

    spindle_bh_schedule(n.a);
    assert_true(harness_poll(n.ctx, false));
    assert_int_equal(n.a_count, 1);
    assert_int_equal(n.b_count, 1);
    harness_drain(n.ctx);
    assert_int_equal(n.a_count, 1);
    assert_int_equal(n.b_count, 1);
    assert_int_equal(n.c_count, 1);

    spindle_bh_delete(n.a);
    spindle_bh_delete(n.b);
    spindle_bh_delete(n.c);
    spindle_ctx_free(n.ctx);
}

/* A and B are scheduled (in that order) before the first iteration, so the
 * outer iteration takes both in its batch and runs A first. A waits in a
 * nested blocking loop for B's effect: the nested iterations must run B out
 * of the outer batch. A library that hides B from nested iterations hangs
 * (the watchdog fails it) or spins (the iteration cap fails it). */
struct nested_wait {
    spindle_ctx *ctx;
    volatile bool b_ran;
    bool b_ran_nested;
    bool in_a;
    unsigned a_count, b_count;
    unsigned nested_iterations;
};

static void nested_wait_a_cb(void *opaque)
{
    struct nested_wait *n = opaque;
    n->a_count++;
    n->in_a = true;
    while (!n->b_ran && n->nested_iterations < 1000) {
        spindle_poll(n->ctx, true);
        n->nested_iterations++;
    }
    n->in_a = false;
}

static void nested_wait_b_cb(void *opaque)
{
    struct nested_wait *n = opaque;
    n->b_count++;
    n->b_ran_nested = n->in_a;
    n->b_ran = true;
}

static void bh_nested_poll_runs_bh_from_outer_batch(void **state)
{
    (void)state;
    struct nested_wait n = { 0 };
    n.ctx = harness_ctx_new();
    spindle_bh *a = spindle_bh_new(n.ctx, nested_wait_a_cb, &n);
    spindle_bh *b = spindle_bh_new(n.ctx, nested_wait_b_cb, &n);
    assert_non_null(a);
    assert_non_null(b);

    spindle_bh_schedule(a);
    spindle_bh_schedule(b);
    assert_true(harness_poll(n.ctx, false));
    assert_int_equal(n.a_count, 1);
    assert_true(n.b_ran);
    assert_true(n.b_ran_nested);
    assert_true(n.nested_iterations < 1000);

    /* B ran exactly once: the outer batch does not run it again. */
    harness_drain(n.ctx);
    assert_int_equal(n.a_count, 1);
    assert_int_equal(n.b_count, 1);

    spindle_bh_delete(a);
    spindle_bh_delete(b);
    spindle_ctx_free(n.ctx);
}

/* ------------------------------------------------------------------------
 * Bad input
 */

static void bh_null_handle_is_ignored(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();

    spindle_bh_schedule(NULL);
    spindle_bh_schedule_idle(NULL);
    spindle_bh_cancel(NULL);
    spindle_bh_delete(NULL);

    /* The context is untouched. */
    assert_int_equal(spindle_compute_timeout(ctx), -1);
    assert_false(harness_poll(ctx, false));
    spindle_ctx_free(ctx);
}

static void bh_new_with_null_cb_fails_with_einval(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    unsigned count = 0;

    errno = 0;
    assert_null(spindle_bh_new(ctx, NULL, &count));
    assert_int_equal(errno, EINVAL);

    spindle_ctx_free(ctx);
}

static void bh_new_with_null_ctx_fails_with_einval(void **state)
{
    (void)state;
    unsigned count = 0;

    errno = 0;
    assert_null(spindle_bh_new(NULL, harness_count_cb, &count));
    assert_int_equal(errno, EINVAL);
}

static void bh_oneshot_with_null_cb_returns_einval(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    unsigned count = 0;

    assert_int_equal(spindle_bh_oneshot(ctx, NULL, &count), -EINVAL);
    /* Nothing was scheduled. */
    assert_int_equal(spindle_compute_timeout(ctx), -1);
    assert_false(harness_poll(ctx, false));

    spindle_ctx_free(ctx);
}

static void bh_oneshot_with_null_ctx_returns_einval(void **state)
{
    (void)state;
    unsigned count = 0;

    assert_int_equal(spindle_bh_oneshot(NULL, harness_count_cb, &count),
                     -EINVAL);
    assert_int_equal(count, 0);
}

static void compute_timeout_with_null_ctx_returns_einval(void **state)
{
    (void)state;
    assert_int_equal(spindle_compute_timeout(NULL), -EINVAL);
}

/* ------------------------------------------------------------------------
 * Context teardown
 */

static void ctx_free_with_scheduled_bhs_runs_none_and_leaks_nothing(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    unsigned count = 0;

    spindle_bh *scheduled = spindle_bh_new(ctx, harness_count_cb, &count);
    spindle_bh *idle = spindle_bh_new(ctx, harness_count_cb, &count);
    spindle_bh *unscheduled = spindle_bh_new(ctx, harness_count_cb, &count);
    spindle_bh *cancelled = spindle_bh_new(ctx, harness_count_cb, &count);
    spindle_bh *deleted = spindle_bh_new(ctx, harness_count_cb, &count);
    assert_non_null(scheduled);
    assert_non_null(idle);
    assert_non_null(unscheduled);
    assert_non_null(cancelled);
    assert_non_null(deleted);

    spindle_bh_schedule(scheduled);
    spindle_bh_schedule_idle(idle);
    spindle_bh_schedule(cancelled);
    spindle_bh_cancel(cancelled);
    spindle_bh_schedule(deleted);
    spindle_bh_delete(deleted);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(spindle_bh_oneshot(ctx, harness_count_cb, &count), 0);
    }

    /* LeakSanitizer / valgrind report anything left behind. */
    spindle_ctx_free(ctx);
    assert_int_equal(count, 0);
}

static void ctx_free_after_bhs_ran_leaks_nothing(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    unsigned count = 0;

    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &count);
    assert_non_null(bh);
    spindle_bh_schedule(bh);
    assert_int_equal(spindle_bh_oneshot(ctx, harness_count_cb, &count), 0);
    harness_drain(ctx);
    assert_int_equal(count, 2);

    /* bh is owned by the context and released with it. */
    spindle_ctx_free(ctx);
    assert_int_equal(count, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST(bh_schedule_does_not_run_synchronously),
        TEST(bh_schedule_on_pending_bh_coalesces),
        TEST(bh_runs_once_per_schedule),
        TEST(bh_rescheduling_itself_runs_once_per_iteration),
        TEST(bh_cancel_prevents_the_run),
        TEST(bh_cancelled_bh_runs_when_scheduled_again),
        TEST(bh_delete_of_pending_bh_never_runs),
        TEST(bh_delete_from_its_own_callback),
        TEST(bh_deleted_by_another_bh_callback_never_runs),
        TEST(bh_scheduled_from_one_thread_run_in_fifo_order),
        TEST(bh_scheduled_from_another_thread_run_in_fifo_order),
        TEST(bh_scheduled_from_another_thread_wakes_blocking_poll),
        TEST(bh_oneshot_runs_once),
        TEST(bh_oneshots_run_in_fifo_order),
        TEST(bh_idle_runs_without_counting_as_progress),
        TEST(bh_idle_runs_in_blocking_poll),
        TEST(bh_idle_only_caps_compute_timeout_at_10ms),
        TEST(bh_idle_caps_compute_timeout_below_a_far_timer),
        TEST(compute_timeout_is_zero_with_a_bh_pending),
        TEST(compute_timeout_is_zero_with_idle_and_normal_bh_pending),
        TEST(compute_timeout_is_infinite_with_nothing_pending),
        TEST(compute_timeout_is_infinite_after_the_bh_ran),
        TEST(compute_timeout_is_infinite_after_cancel),
        TEST(bh_scheduled_from_nested_poll_callback_runs_once),
        TEST(bh_nested_poll_runs_bh_from_outer_batch),
        TEST(bh_null_handle_is_ignored),
        TEST(bh_new_with_null_cb_fails_with_einval),
        TEST(bh_new_with_null_ctx_fails_with_einval),
        TEST(bh_oneshot_with_null_cb_returns_einval),
        TEST(bh_oneshot_with_null_ctx_returns_einval),
        TEST(compute_timeout_with_null_ctx_returns_einval),
        TEST(ctx_free_with_scheduled_bhs_runs_none_and_leaks_nothing),
        TEST(ctx_free_after_bhs_ran_leaks_nothing),
    };
    return RUN_TESTS(tests);
}
