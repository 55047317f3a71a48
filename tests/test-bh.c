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

/* perm[0..n) = a shuffled permutation of 0..n-1 (Fisher-Yates). */
static void shuffled_permutation(unsigned *perm, unsigned n, uint64_t seed)
{
    uint64_t s = seed ? seed : 1;
    for (unsigned i = 0; i < n; i++) {
        perm[i] = i;
    }
    for (unsigned i = n - 1; i > 0; i--) {
        unsigned j = (unsigned)(harness_rng(&s) % (i + 1));
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

/* n BHs on ctx, the i-th logging id i to log when it runs. */
static void order_bhs_new(spindle_ctx *ctx, struct order_log *log,
                          struct order_entry *entries, spindle_bh **bhs,
                          unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        entries[i].log = log;
        entries[i].id = i;
        bhs[i] = spindle_bh_new(ctx, order_cb, &entries[i]);
        assert_non_null(bhs[i]);
    }
}

static void order_bhs_delete(spindle_bh **bhs, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        spindle_bh_delete(bhs[i]);
    }
}

/* All n ran, exactly in the order expected[0..n). */
static void assert_ran_in_order(const struct order_log *log,
                                const unsigned *expected, unsigned n)
{
    assert_int_equal(log->n, n);
    for (unsigned k = 0; k < n; k++) {
        assert_int_equal(log->seq[k], expected[k]);
    }
}

/* ------------------------------------------------------------------------
 * Fixtures
 *
 * Every test but the NULL-context ones gets a fresh context; most also get
 * a bottom half that counts its runs in count. The context comes from
 * harness_ctx_new(), not CTX_TEST's setup, so that embedded runs hand it to
 * the host before the test starts, as these tests always did.
 */

struct fixture {
    spindle_ctx *ctx;
    spindle_bh *bh;
    unsigned count;
};

static int ctx_setup(void **state)
{
    struct fixture *f = harness_fixture_new(state, sizeof(*f));
    f->ctx = harness_ctx_new();
    return 0;
}

static int counting_bh_setup(void **state)
{
    ctx_setup(state);
    struct fixture *f = *state;
    f->bh = spindle_bh_new(f->ctx, harness_count_cb, &f->count);
    assert_non_null(f->bh);
    return 0;
}

/* A test that deletes f->bh or frees f->ctx itself sets it to NULL (both
 * calls ignore NULL). The BH goes first: it must not outlive its context. */
static int teardown(void **state)
{
    struct fixture *f = *state;
    spindle_bh_delete(f->bh);
    spindle_ctx_free(f->ctx);
    free(f);
    return harness_watchdog_disarm(state);
}

#define WITH_CTX(fn) cmocka_unit_test_setup_teardown(fn, ctx_setup, teardown)
#define WITH_COUNTING_BH(fn) \
    cmocka_unit_test_setup_teardown(fn, counting_bh_setup, teardown)

/* ------------------------------------------------------------------------
 * Scheduling
 */

static void bh_schedule_does_not_run_synchronously(void **state)
{
    struct fixture *f = *state;

    spindle_bh_schedule(f->bh);
    assert_int_equal(f->count, 0);

    assert_true(harness_poll(f->ctx, false));
    assert_int_equal(f->count, 1);
}

static void bh_schedule_on_pending_bh_coalesces(void **state)
{
    struct fixture *f = *state;

    spindle_bh_schedule(f->bh);
    spindle_bh_schedule(f->bh);
    spindle_bh_schedule(f->bh);
    harness_drain(f->ctx);
    assert_int_equal(f->count, 1);

    /* Nothing is left scheduled. */
    assert_false(harness_poll(f->ctx, false));
    assert_int_equal(f->count, 1);
}

static void bh_runs_once_per_schedule(void **state)
{
    struct fixture *f = *state;

    for (unsigned i = 1; i <= 5; i++) {
        spindle_bh_schedule(f->bh);
        harness_drain(f->ctx);
        assert_int_equal(f->count, i);
    }
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
    struct fixture *f = *state;
    struct self_resched s = { 0 };
    s.bh = spindle_bh_new(f->ctx, self_resched_cb, &s);
    assert_non_null(s.bh);

    spindle_bh_schedule(s.bh);
    enum { N = 100 };
    for (unsigned i = 1; i <= N; i++) {
        assert_true(harness_poll(f->ctx, false));
        assert_int_equal(s.count, i);
    }
    assert_int_equal(s.count, N);

    spindle_bh_delete(s.bh);
}

static void bh_cancel_prevents_the_run(void **state)
{
    struct fixture *f = *state;

    spindle_bh_schedule(f->bh);
    spindle_bh_cancel(f->bh);
    assert_false(harness_poll(f->ctx, false));
    harness_drain(f->ctx);
    assert_int_equal(f->count, 0);
}

static void bh_cancelled_bh_runs_when_scheduled_again(void **state)
{
    struct fixture *f = *state;

    spindle_bh_schedule(f->bh);
    spindle_bh_cancel(f->bh);
    spindle_bh_schedule(f->bh);
    harness_drain(f->ctx);
    assert_int_equal(f->count, 1);
}

/* ------------------------------------------------------------------------
 * Deletion
 */

static void bh_delete_of_pending_bh_never_runs(void **state)
{
    struct fixture *f = *state;

    spindle_bh_schedule(f->bh);
    spindle_bh_delete(f->bh);
    f->bh = NULL;
    assert_false(harness_poll(f->ctx, false));
    harness_drain(f->ctx);
    assert_int_equal(f->count, 0);
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
    struct fixture *f = *state;
    struct self_delete s = { 0 };
    s.bh = spindle_bh_new(f->ctx, self_delete_cb, &s);
    assert_non_null(s.bh);

    spindle_bh_schedule(s.bh);
    assert_true(harness_poll(f->ctx, false));
    assert_int_equal(s.count, 1);
    assert_null(s.bh);

    /* The deleted BH is gone: nothing runs any more. */
    assert_false(harness_poll(f->ctx, false));
    assert_int_equal(s.count, 1);
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
    struct fixture *f = *state;
    struct delete_other d = { 0 };
    spindle_bh *a = spindle_bh_new(f->ctx, delete_other_a_cb, &d);
    assert_non_null(a);
    d.victim = spindle_bh_new(f->ctx, delete_other_b_cb, &d);
    assert_non_null(d.victim);

    /* Both are in the same batch; A runs first (FIFO) and deletes B. */
    spindle_bh_schedule(a);
    spindle_bh_schedule(d.victim);
    harness_drain(f->ctx);
    assert_int_equal(d.a_count, 1);
    assert_int_equal(d.b_count, 0);
    assert_null(d.victim);

    spindle_bh_delete(a);
}

/* ------------------------------------------------------------------------
 * Order
 */

static void bh_scheduled_from_one_thread_run_in_fifo_order(void **state)
{
    struct fixture *f = *state;
    enum { N = 100 };
    struct order_log log = { .n = 0 };
    struct order_entry entries[N];
    spindle_bh *bhs[N];
    unsigned perm[N];

    order_bhs_new(f->ctx, &log, entries, bhs, N);
    shuffled_permutation(perm, N, 0x5eed);
    for (unsigned k = 0; k < N; k++) {
        spindle_bh_schedule(bhs[perm[k]]);
    }
    harness_drain(f->ctx);

    assert_ran_in_order(&log, perm, N);
    order_bhs_delete(bhs, N);
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
    struct fixture *f = *state;
    enum { N = 100 };
    struct order_log log = { .n = 0 };
    struct order_entry entries[N];
    spindle_bh *bhs[N];
    unsigned perm[N];

    order_bhs_new(f->ctx, &log, entries, bhs, N);
    shuffled_permutation(perm, N, 0xfeed);

    struct sched_thread_arg arg = { bhs, perm, N };
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, schedule_in_order_thread, &arg),
                     0);
    assert_int_equal(pthread_join(th, NULL), 0);
    harness_drain(f->ctx);

    assert_ran_in_order(&log, perm, N);
    order_bhs_delete(bhs, N);
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
    struct fixture *f = *state;
    struct flag_bh flag = { 0 };
    spindle_bh *bh = spindle_bh_new(f->ctx, flag_cb, &flag);
    assert_non_null(bh);

    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, schedule_one_thread, bh), 0);
    /* Blocks until the other thread's schedule wakes the loop (a lost
     * wake-up hangs here and the watchdog fails the test). */
    harness_poll_until(f->ctx, &flag.ran, 1000);
    assert_int_equal(pthread_join(th, NULL), 0);
    harness_drain(f->ctx);
    assert_int_equal(flag.count, 1);

    spindle_bh_delete(bh);
}

/* ------------------------------------------------------------------------
 * Oneshot
 */

static void bh_oneshot_runs_once(void **state)
{
    struct fixture *f = *state;

    assert_int_equal(spindle_bh_oneshot(f->ctx, harness_count_cb, &f->count),
                     0);
    assert_int_equal(f->count, 0);
    assert_true(harness_poll(f->ctx, false));
    assert_int_equal(f->count, 1);
    /* It is gone (and freed: LeakSanitizer/valgrind check that). */
    assert_false(harness_poll(f->ctx, false));
    harness_drain(f->ctx);
    assert_int_equal(f->count, 1);
}

static void bh_oneshots_run_in_fifo_order(void **state)
{
    struct fixture *f = *state;
    enum { N = 50 };
    struct order_log log = { .n = 0 };
    struct order_entry entries[N];
    unsigned in_order[N];

    for (unsigned i = 0; i < N; i++) {
        entries[i].log = &log;
        entries[i].id = i;
        in_order[i] = i;
        assert_int_equal(spindle_bh_oneshot(f->ctx, order_cb, &entries[i]), 0);
    }
    harness_drain(f->ctx);
    assert_ran_in_order(&log, in_order, N);
}

/* ------------------------------------------------------------------------
 * Idle bottom halves
 */

static void bh_idle_runs_without_counting_as_progress(void **state)
{
    struct fixture *f = *state;

    spindle_bh_schedule_idle(f->bh);
    assert_int_equal(f->count, 0);
    assert_false(harness_poll(f->ctx, false));
    assert_int_equal(f->count, 1);

    /* It ran once and is no longer scheduled. */
    assert_false(harness_poll(f->ctx, false));
    assert_int_equal(f->count, 1);
}

static void bh_idle_runs_in_blocking_poll(void **state)
{
    struct fixture *f = *state;
    struct flag_bh flag = { 0 };
    spindle_bh *bh = spindle_bh_new(f->ctx, flag_cb, &flag);
    assert_non_null(bh);

    /* The idle BH bounds the sleep, so blocking iterations get to it. */
    spindle_bh_schedule_idle(bh);
    harness_poll_until(f->ctx, &flag.ran, 100);
    assert_int_equal(flag.count, 1);

    spindle_bh_delete(bh);
}

static void bh_idle_only_caps_compute_timeout_at_10ms(void **state)
{
    struct fixture *f = *state;

    spindle_bh_schedule_idle(f->bh);
    int64_t timeout = spindle_compute_timeout(f->ctx);
    assert_true(timeout > 0);
    assert_true(timeout <= INT64_C(10000000));
}

static void bh_idle_caps_compute_timeout_below_a_far_timer(void **state)
{
    struct fixture *f = *state;
    spindle_timer *t = spindle_timer_new(f->ctx, SPINDLE_CLOCK_MONOTONIC,
                                         harness_count_cb, &f->count);
    assert_non_null(t);

    /* A timer an hour away, and an idle BH: the sleep is still bounded. */
    spindle_timer_mod(t, spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) +
                             INT64_C(3600) * 1000000000);
    spindle_bh_schedule_idle(f->bh);
    int64_t timeout = spindle_compute_timeout(f->ctx);
    assert_true(timeout > 0);
    assert_true(timeout <= INT64_C(10000000));

    spindle_timer_free(t);
}

/* ------------------------------------------------------------------------
 * spindle_compute_timeout
 */

static void compute_timeout_is_zero_with_a_bh_pending(void **state)
{
    struct fixture *f = *state;

    spindle_bh_schedule(f->bh);
    assert_int_equal(spindle_compute_timeout(f->ctx), 0);
}

static void compute_timeout_is_zero_with_idle_and_normal_bh_pending(void **state)
{
    struct fixture *f = *state;
    spindle_bh *idle = spindle_bh_new(f->ctx, harness_count_cb, &f->count);
    assert_non_null(idle);

    spindle_bh_schedule_idle(idle);
    spindle_bh_schedule(f->bh);
    assert_int_equal(spindle_compute_timeout(f->ctx), 0);

    spindle_bh_delete(idle);
}

static void compute_timeout_is_infinite_with_nothing_pending(void **state)
{
    struct fixture *f = *state;

    /* An unscheduled BH does not shorten the sleep. */
    assert_int_equal(spindle_compute_timeout(f->ctx), -1);
}

static void compute_timeout_is_infinite_after_the_bh_ran(void **state)
{
    struct fixture *f = *state;

    spindle_bh_schedule(f->bh);
    harness_drain(f->ctx);
    assert_int_equal(f->count, 1);
    assert_int_equal(spindle_compute_timeout(f->ctx), -1);
}

static void compute_timeout_is_infinite_after_cancel(void **state)
{
    struct fixture *f = *state;

    spindle_bh_schedule(f->bh);
    spindle_bh_cancel(f->bh);
    assert_int_equal(spindle_compute_timeout(f->ctx), -1);
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
    struct fixture *f = *state;
    struct nested_sched n = { 0 };
    n.ctx = f->ctx;
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
    struct fixture *f = *state;
    struct nested_wait n = { 0 };
    n.ctx = f->ctx;
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
}

/* ------------------------------------------------------------------------
 * Bad input
 */

static void bh_null_handle_is_ignored(void **state)
{
    struct fixture *f = *state;

    spindle_bh_schedule(NULL);
    spindle_bh_schedule_idle(NULL);
    spindle_bh_cancel(NULL);
    spindle_bh_delete(NULL);

    /* The context is untouched. */
    assert_int_equal(spindle_compute_timeout(f->ctx), -1);
    assert_false(harness_poll(f->ctx, false));
}

static void bh_new_with_null_cb_fails_with_einval(void **state)
{
    struct fixture *f = *state;

    errno = 0;
    assert_null(spindle_bh_new(f->ctx, NULL, &f->count));
    assert_int_equal(errno, EINVAL);
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
    struct fixture *f = *state;

    assert_int_equal(spindle_bh_oneshot(f->ctx, NULL, &f->count), -EINVAL);
    /* Nothing was scheduled. */
    assert_int_equal(spindle_compute_timeout(f->ctx), -1);
    assert_false(harness_poll(f->ctx, false));
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
 * Context teardown (these free the context themselves: that is the test)
 */

static void ctx_free_with_scheduled_bhs_runs_none_and_leaks_nothing(void **state)
{
    struct fixture *f = *state;
    spindle_ctx *ctx = f->ctx;
    unsigned *count = &f->count;

    spindle_bh *scheduled = spindle_bh_new(ctx, harness_count_cb, count);
    spindle_bh *idle = spindle_bh_new(ctx, harness_count_cb, count);
    spindle_bh *unscheduled = spindle_bh_new(ctx, harness_count_cb, count);
    spindle_bh *cancelled = spindle_bh_new(ctx, harness_count_cb, count);
    spindle_bh *deleted = spindle_bh_new(ctx, harness_count_cb, count);
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
        assert_int_equal(spindle_bh_oneshot(ctx, harness_count_cb, count), 0);
    }

    /* LeakSanitizer / valgrind report anything left behind. */
    spindle_ctx_free(ctx);
    f->ctx = NULL;
    assert_int_equal(f->count, 0);
}

static void ctx_free_after_bhs_ran_leaks_nothing(void **state)
{
    struct fixture *f = *state;

    spindle_bh *bh = spindle_bh_new(f->ctx, harness_count_cb, &f->count);
    assert_non_null(bh);
    spindle_bh_schedule(bh);
    assert_int_equal(spindle_bh_oneshot(f->ctx, harness_count_cb, &f->count),
                     0);
    harness_drain(f->ctx);
    assert_int_equal(f->count, 2);

    /* bh is owned by the context and released with it. */
    spindle_ctx_free(f->ctx);
    f->ctx = NULL;
    assert_int_equal(f->count, 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        WITH_COUNTING_BH(bh_schedule_does_not_run_synchronously),
        WITH_COUNTING_BH(bh_schedule_on_pending_bh_coalesces),
        WITH_COUNTING_BH(bh_runs_once_per_schedule),
        WITH_CTX(bh_rescheduling_itself_runs_once_per_iteration),
        WITH_COUNTING_BH(bh_cancel_prevents_the_run),
        WITH_COUNTING_BH(bh_cancelled_bh_runs_when_scheduled_again),
        WITH_COUNTING_BH(bh_delete_of_pending_bh_never_runs),
        WITH_CTX(bh_delete_from_its_own_callback),
        WITH_CTX(bh_deleted_by_another_bh_callback_never_runs),
        WITH_CTX(bh_scheduled_from_one_thread_run_in_fifo_order),
        WITH_CTX(bh_scheduled_from_another_thread_run_in_fifo_order),
        WITH_CTX(bh_scheduled_from_another_thread_wakes_blocking_poll),
        WITH_CTX(bh_oneshot_runs_once),
        WITH_CTX(bh_oneshots_run_in_fifo_order),
        WITH_COUNTING_BH(bh_idle_runs_without_counting_as_progress),
        WITH_CTX(bh_idle_runs_in_blocking_poll),
        WITH_COUNTING_BH(bh_idle_only_caps_compute_timeout_at_10ms),
        WITH_COUNTING_BH(bh_idle_caps_compute_timeout_below_a_far_timer),
        WITH_COUNTING_BH(compute_timeout_is_zero_with_a_bh_pending),
        WITH_COUNTING_BH(
            compute_timeout_is_zero_with_idle_and_normal_bh_pending),
        WITH_COUNTING_BH(compute_timeout_is_infinite_with_nothing_pending),
        WITH_COUNTING_BH(compute_timeout_is_infinite_after_the_bh_ran),
        WITH_COUNTING_BH(compute_timeout_is_infinite_after_cancel),
        WITH_CTX(bh_scheduled_from_nested_poll_callback_runs_once),
        WITH_CTX(bh_nested_poll_runs_bh_from_outer_batch),
        WITH_CTX(bh_null_handle_is_ignored),
        WITH_CTX(bh_new_with_null_cb_fails_with_einval),
        TEST(bh_new_with_null_ctx_fails_with_einval),
        WITH_CTX(bh_oneshot_with_null_cb_returns_einval),
        TEST(bh_oneshot_with_null_ctx_returns_einval),
        TEST(compute_timeout_with_null_ctx_returns_einval),
        WITH_CTX(ctx_free_with_scheduled_bhs_runs_none_and_leaks_nothing),
        WITH_CTX(ctx_free_after_bhs_ran_leaks_nothing),
    };
    return RUN_TESTS(tests);
}
