/* Timers armed and disarmed from threads other than the loop's.
 * SPDX-License-Identifier: MIT
 *
 * Suite 'concurrency', also run under ThreadSanitizer. While an iteration
 * runs on one thread, other threads' spindle_timer_mod/_anticipate/_del are
 * requests that the loop applies later (src/timer.c); these tests check
 * that requests are never lost, never fire a timer twice, keep the arming
 * order of equal deadlines, are visible to pending/expire_ns at once, and
 * wake a sleeping loop only when they ask for an earlier deadline.
 * Threads hand over with atomics and joins, never with sleeps (see
 * concurrency.h); only the test's own thread asserts.
 */
#include "concurrency.h"

#include <stdlib.h>
#include <string.h>

#define MS INT64_C(1000000)
#define HOUR (INT64_C(3600) * 1000 * MS)

/* Two threads, this many requests each: 10^6 in all, under TSan too. */
#define REARM_OPS 500000u
#define REARM_TIMERS 4096u

static spindle_ctx *ctx_of(void **state)
{
    return *state;
}

static int64_t mono_now(void)
{
    return spindle_now_ns(SPINDLE_CLOCK_MONOTONIC);
}

/* ------------------------------------------------------------------------
 * 10^6 re-arms from two threads at once, on the same timers, while the
 * loop runs
 */

struct rearm {
    spindle_timer *t[REARM_TIMERS];
    atomic_uint fires[REARM_TIMERS];
    atomic_uint past_requests; /* requests for a deadline already passed */
    int64_t base;
    uint64_t seed[2];
};

static void rearm_cb(void *opaque)
{
    atomic_fetch_add((atomic_uint *)opaque, 1);
}

struct rearm_arg {
    struct rearm *r;
    unsigned id;
};

static void *rearm_main(void *opaque)
{
    struct rearm_arg *a = opaque;
    struct rearm *r = a->r;
    uint64_t s = r->seed[a->id];
    for (unsigned k = 0; k < REARM_OPS; k++) {
        uint64_t x = harness_rng(&s);
        spindle_timer *t = r->t[x % REARM_TIMERS];
        switch ((x >> 20) % 16) {
        case 0:
            spindle_timer_del(t);
            break;
        case 1:
            spindle_timer_mod_anticipate(t, r->base + HOUR +
                                                (int64_t)(x % 1000000));
            break;
        case 2:
            if ((x >> 32) % 64 == 0) {
                /* Now and then due at once, so that firings race with the
                 * requests of both threads. */
                atomic_fetch_add(&r->past_requests, 1);
                spindle_timer_mod(t, r->base - 1);
                break;
            }
            /* fall through */
        default:
            spindle_timer_mod(t, r->base + HOUR + (int64_t)(x % 1000000000));
            break;
        }
    }
    return NULL;
}

static void timers_rearmed_by_two_threads_at_once_end_as_last_asked(
    void **state)
{
    spindle_ctx *ctx = ctx_of(state);
    struct rearm *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    r->base = mono_now();
    r->seed[0] = 0x1234;
    r->seed[1] = 0x5678;
    for (unsigned i = 0; i < REARM_TIMERS; i++) {
        atomic_init(&r->fires[i], 0);
        r->t[i] = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC, rearm_cb,
                                    &r->fires[i]);
        assert_non_null(r->t[i]);
    }
    atomic_init(&r->past_requests, 0);

    struct looper lp;
    looper_start(&lp, ctx);
    pthread_t th[2];
    struct rearm_arg args[2] = { { r, 0 }, { r, 1 } };
    start_thread(&th[0], rearm_main, &args[0]);
    start_thread(&th[1], rearm_main, &args[1]);
    join_thread(th[0]);
    join_thread(th[1]);
    /* Two more iterations: whatever their requests made due has fired. */
    looper_advance_to(&lp, looper_mark(&lp) + 2);
    unsigned before[REARM_TIMERS], past = 0;
    for (unsigned i = 0; i < REARM_TIMERS; i++) {
        before[i] = atomic_load(&r->fires[i]);
    }

    /* The last word, from this thread: a third of them due now, a third
     * far, a third disarmed. It shows at once, whatever the loop does. */
    for (unsigned i = 0; i < REARM_TIMERS; i++) {
        if (i % 3 == 0) {
            spindle_timer_mod(r->t[i], r->base - 2);
            past++;
        } else if (i % 3 == 1) {
            spindle_timer_mod(r->t[i], r->base + 2 * HOUR + i);
        } else {
            spindle_timer_del(r->t[i]);
        }
    }
    unsigned wrong = 0;
    for (unsigned i = 0; i < REARM_TIMERS; i++) {
        int64_t want = i % 3 == 0 ? r->base - 2
                       : i % 3 == 1 ? r->base + 2 * HOUR + i : -1;
        int64_t seen = spindle_timer_expire_ns(r->t[i]);
        /* One due now may have fired already. */
        wrong += seen != want && !(i % 3 == 0 && seen == -1);
    }
    assert_int_equal(wrong, 0);
    unsigned fired = 0;
    while (fired < past) {
        fired = 0;
        for (unsigned i = 0; i < REARM_TIMERS; i += 3) {
            fired += atomic_load(&r->fires[i]) > before[i];
        }
        spindle_notify(ctx);
        sched_yield();
    }
    looper_advance_to(&lp, looper_mark(&lp) + 2);
    looper_stop(&lp);

    unsigned total = 0, twice = 0, stray = 0, state_wrong = 0;
    for (unsigned i = 0; i < REARM_TIMERS; i++) {
        unsigned after = atomic_load(&r->fires[i]);
        total += after;
        if (i % 3 == 0) {
            twice += after - before[i] != 1;
            state_wrong += spindle_timer_pending(r->t[i]);
        } else {
            stray += after != before[i];
            state_wrong += spindle_timer_pending(r->t[i]) != (i % 3 == 1);
        }
    }
    assert_int_equal(twice, 0);
    assert_int_equal(stray, 0);
    assert_int_equal(state_wrong, 0);
    /* A firing needs a request for a passed deadline (ours, or theirs). */
    assert_true(total <= atomic_load(&r->past_requests) + past);

    for (unsigned i = 0; i < REARM_TIMERS; i++) {
        spindle_timer_free(r->t[i]);
    }
    free(r);
}

/* ------------------------------------------------------------------------
 * Requests made while the loop is inside an iteration
 */

enum { A, B, C, E, F, NT };

struct held {
    spindle_ctx *ctx;
    spindle_timer *t[NT];
    int64_t deadline;
    atomic_bool bh_in;    /* the loop is in the BH, holding the timers */
    atomic_bool requested;
    unsigned order[NT];
    unsigned n;
    /* Seen by the requesting thread right after its calls. */
    int64_t expire_seen[NT];
    bool pending_seen[NT];
};

static struct held *held_of_ids;
static unsigned held_ids[NT] = { A, B, C, E, F };

static void held_fire_cb(void *opaque)
{
    unsigned id = *(unsigned *)opaque;
    struct held *h = held_of_ids;
    if (h->n < NT) {
        h->order[h->n] = id;
    }
    h->n++;
}

/* A bottom half that keeps the loop thread inside the iteration until the
 * other thread has made its requests. */
static void held_bh_cb(void *opaque)
{
    struct held *h = opaque;
    atomic_store(&h->bh_in, true);
    while (!atomic_load(&h->requested)) {
        sched_yield();
    }
}

static void *held_requester_main(void *opaque)
{
    struct held *h = opaque;
    while (!atomic_load(&h->bh_in)) {
        sched_yield();
    }
    int64_t d = h->deadline;
    spindle_timer_mod(h->t[A], d);
    spindle_timer_mod(h->t[B], d);
    spindle_timer_mod(h->t[C], d);
    spindle_timer_mod(h->t[A], d);          /* again: now after C */
    spindle_timer_mod(h->t[E], d + 5);
    spindle_timer_mod_anticipate(h->t[E], d + 7);  /* later: ignored */
    spindle_timer_mod_anticipate(h->t[E], d - 5);  /* earlier: first */
    spindle_timer_mod(h->t[F], d);
    spindle_timer_del(h->t[F]);
    for (unsigned i = 0; i < NT; i++) {
        h->expire_seen[i] = spindle_timer_expire_ns(h->t[i]);
        h->pending_seen[i] = spindle_timer_pending(h->t[i]);
    }
    atomic_store(&h->requested, true);
    return NULL;
}

static void requests_from_another_thread_keep_the_arming_order(void **state)
{
    spindle_ctx *ctx = ctx_of(state);
    struct held h = { .ctx = ctx };
    held_of_ids = &h;
    atomic_init(&h.bh_in, false);
    atomic_init(&h.requested, false);
    for (unsigned i = 0; i < NT; i++) {
        h.t[i] = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC, held_fire_cb,
                                   &held_ids[i]);
        assert_non_null(h.t[i]);
    }
    h.deadline = mono_now() - MS; /* due at once */
    spindle_bh *bh = spindle_bh_new(ctx, held_bh_cb, &h);
    assert_non_null(bh);
    spindle_bh_schedule(bh);

    pthread_t th;
    start_thread(&th, held_requester_main, &h);
    /* This iteration runs the BH, which waits for the requests; the timers
     * run after it, in the same iteration or the next. */
    harness_drain(ctx);
    join_thread(th);
    harness_drain(ctx);

    int64_t d = h.deadline;
    assert_int_equal(h.expire_seen[A], d);
    assert_int_equal(h.expire_seen[E], d - 5);
    assert_false(h.pending_seen[F]);
    assert_int_equal(h.expire_seen[F], -1);
    assert_true(h.pending_seen[B]);

    assert_int_equal(h.n, 4);
    assert_int_equal(h.order[0], E);
    assert_int_equal(h.order[1], B);
    assert_int_equal(h.order[2], C);
    assert_int_equal(h.order[3], A);
    for (unsigned i = 0; i < NT; i++) {
        assert_false(spindle_timer_pending(h.t[i]));
        spindle_timer_free(h.t[i]);
    }
    spindle_bh_delete(bh);
    held_of_ids = NULL;
}

/* ------------------------------------------------------------------------
 * Waking the loop: only for an earlier deadline
 */

struct sleeper {
    pid_t loop_tid;
    spindle_timer **later;
    unsigned n_later;
    spindle_timer *near;
    int64_t far;
    atomic_uint woken_by_near;
    atomic_bool loop_ready;
    uint64_t iterations_before, iterations_after_later;
    spindle_ctx *ctx;
};

static void *sleeper_requester_main(void *opaque)
{
    struct sleeper *s = opaque;
    while (!atomic_load(&s->loop_ready)) {
        sched_yield();
    }
    wait_until_thread_sleeps(s->loop_tid);
    spindle_stats st;
    spindle_get_stats(s->ctx, &st);
    s->iterations_before = st.iterations;
    /* Later than the deadline it sleeps towards: no reason to wake it. */
    for (unsigned i = 0; i < s->n_later; i++) {
        spindle_timer_mod(s->later[i], s->far + 1 + i);
    }
    spindle_get_stats(s->ctx, &st);
    s->iterations_after_later = st.iterations;
    /* Earlier: wakes it. */
    spindle_timer_mod(s->near, mono_now() - 1);
    return NULL;
}

static void near_cb(void *opaque)
{
    atomic_fetch_add((atomic_uint *)opaque, 1);
}

static void a_request_wakes_the_loop_only_for_an_earlier_deadline(
    void **state)
{
    spindle_ctx *ctx = ctx_of(state);
    enum { LATER = 1000 };
    struct sleeper s = { .ctx = ctx, .n_later = LATER,
                         .loop_tid = current_tid() };
    unsigned never = 0;
    atomic_init(&s.woken_by_near, 0);
    atomic_init(&s.loop_ready, false);
    s.later = calloc(LATER, sizeof(*s.later));
    assert_non_null(s.later);
    for (unsigned i = 0; i < LATER; i++) {
        s.later[i] = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC,
                                       harness_count_cb, &never);
        assert_non_null(s.later[i]);
    }
    s.near = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC, near_cb,
                               &s.woken_by_near);
    spindle_timer *far = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC,
                                           harness_count_cb, &never);
    assert_non_null(s.near);
    assert_non_null(far);
    /* Beyond the watchdog: a loop the near request fails to wake hangs. */
    s.far = mono_now() + HOUR;
    spindle_timer_mod(far, s.far);
    /* No busy polling: the loop goes straight to sleep. */
    assert_int_equal(spindle_set_poll_params(ctx, 0, 0, 0), 0);

    pthread_t th;
    start_thread(&th, sleeper_requester_main, &s);
    atomic_store(&s.loop_ready, true);
    unsigned i = 0;
    while (atomic_load(&s.woken_by_near) == 0) {
        assert_true(i++ < 10000);
        spindle_poll(ctx, true);
    }
    join_thread(th);

    /* The thousand later requests did not make the loop iterate (it was
     * asleep before them); the earlier one did. Both were applied. */
    assert_int_equal(s.iterations_after_later, s.iterations_before);
    assert_int_equal(atomic_load(&s.woken_by_near), 1);
    assert_int_equal(never, 0);
    for (unsigned k = 0; k < LATER; k++) {
        assert_int_equal(spindle_timer_expire_ns(s.later[k]), s.far + 1 + k);
        spindle_timer_free(s.later[k]);
    }
    int64_t timeout = spindle_compute_timeout(ctx);
    assert_true(timeout > 0 && timeout <= HOUR);
    spindle_timer_free(far);
    spindle_timer_free(s.near);
    free(s.later);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        CTX_TEST(timers_rearmed_by_two_threads_at_once_end_as_last_asked),
        CTX_TEST(requests_from_another_thread_keep_the_arming_order),
        CTX_TEST(a_request_wakes_the_loop_only_for_an_earlier_deadline),
    };
    return RUN_TESTS(tests);
}
