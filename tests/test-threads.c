/* Concurrency tests: wake-ups and changes made from other threads.
 * SPDX-License-Identifier: MIT
 *
 * Suite 'concurrency', also run under ThreadSanitizer. Every test uses real
 * pthreads; threads hand over with C11 atomics, condition variables and
 * pthread_join, never with sleeps, and no test passes or fails on a
 * duration. A lost wake-up shows as a loop that never returns: the
 * harness's watchdog (tests/harness.c) turns it into a failure.
 *
 * Only the test's own thread calls cmocka assertions (an assertion longjmps
 * and must not do so from a helper thread or from inside spindle_poll());
 * helper threads and callbacks count what they saw in atomics and the test
 * body asserts afterwards.
 *
 * Several tests need "the loop thread is asleep in the kernel": a helper
 * thread then reads the loop thread's state in /proc (Linux) until it shows
 * 'S' (sleeping) or a bounded number of reads has been made. Either way the
 * test goes on: a thread that is merely about to sleep is a case the notify
 * protocol must handle too. /proc only makes the sleeping case likely.
 *
 * Tests that check "not called after a change returned" number the loop's
 * iterations: a change made from another thread may still be missed by the
 * iteration in progress when it returns, and must be seen by every
 * iteration that starts after that one (spindle.h: "takes effect by the
 * next iteration"). See struct looper in concurrency.h.
 */
#include "concurrency.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#define PINGPONG_ROUNDS SCALE(100000u, 50000u)
#define WAKE_ROUNDS SCALE(200u, 50u)
#define FD_CHURN_OPS SCALE(6000u, 1500u)
#define TIMER_DEL_ROUNDS SCALE(3000u, 600u)
#define PRODUCERS 4
#define PRODUCER_ITEMS SCALE(2500u, 500u)
#define EXTERNAL_ROUNDS SCALE(100u, 30u)

/* Upper bound on blocking iterations for one expected event: generous (a
 * wake-up may be spurious, busy polling may end early), and an iteration
 * count, not a time. */
#define MAX_ITERATIONS_PER_EVENT 10000u

/* ------------------------------------------------------------------------
 * Helpers
 */

static void write_byte(int fd)
{
    char c = 'x';
    assert_int_equal(write(fd, &c, 1), 1);
}

static void drain_fd(int fd)
{
    char buf[64];
    while (read(fd, buf, sizeof(buf)) > 0) {
    }
}

/* A context on the back-end from $SPINDLE_BACKEND with busy polling up to
 * poll_max_ns (< 0: the default window; 0: off). With polling off every
 * blocking iteration that finds nothing to do announces a sleep and waits
 * in the kernel, which is where a lost wake-up happens; with it on, most
 * wake-ups are caught by polling the context's own notifier. */
static spindle_ctx *ctx_with_polling(int64_t poll_max_ns)
{
    spindle_options o = { .backend = SPINDLE_BACKEND_AUTO,
                          .poll_max_ns = poll_max_ns };
    spindle_ctx *ctx = spindle_ctx_new_opts(&o);
    assert_non_null(ctx);
    return ctx;
}

/* The loop thread of a test that runs its loop on the test's own thread
 * knows which side it is on through this. */
static _Thread_local int loop_side = -1;

/* ------------------------------------------------------------------------
 * A bottom half scheduled from another thread wakes a blocking poll
 */

struct remote_wake {
    spindle_ctx *ctx;
    spindle_bh *bh;
    pid_t loop_tid;
    unsigned rounds;
    atomic_uint round;      /* the round the loop thread is in */
    atomic_uint started;    /* the last round the helper acted in */
    atomic_uint runs;       /* bottom-half runs */
    atomic_uint wrong_thread;
    atomic_uint asleep;     /* rounds in which the loop was seen asleep */
};

static void remote_wake_bh_cb(void *opaque)
{
    struct remote_wake *w = opaque;
    if (loop_side != 0) {
        atomic_fetch_add(&w->wrong_thread, 1);
    }
    atomic_fetch_add(&w->runs, 1);
}

static void *bh_scheduler_main(void *opaque)
{
    struct remote_wake *w = opaque;
    for (unsigned k = 1; k <= w->rounds; k++) {
        wait_uint_at_least(&w->round, k);
        if (wait_until_thread_sleeps(w->loop_tid)) {
            atomic_fetch_add(&w->asleep, 1);
        }
        atomic_store(&w->started, k);
        spindle_bh_schedule(w->bh);
    }
    return NULL;
}

static void bh_scheduled_from_another_thread_wakes_blocking_poll(void **state)
{
    (void)state;
    struct remote_wake w = { .rounds = WAKE_ROUNDS };
    w.ctx = harness_ctx_new();
    w.bh = spindle_bh_new(w.ctx, remote_wake_bh_cb, &w);
    assert_non_null(w.bh);
    w.loop_tid = current_tid();
    loop_side = 0;

    pthread_t t;
    start_thread(&t, bh_scheduler_main, &w);
    for (unsigned k = 1; k <= w.rounds; k++) {
        atomic_store(&w.round, k);
        /* Nothing else to do: without the helper's wake-up this blocks
         * for good (and the watchdog fails the test). */
        unsigned i = 0;
        while (atomic_load(&w.runs) < k) {
            assert_true(i++ < MAX_ITERATIONS_PER_EVENT);
            spindle_poll(w.ctx, true);
        }
    }
    join_thread(t);
    loop_side = -1;

    print_message("loop seen asleep in the kernel in %u of %u rounds\n",
                  atomic_load(&w.asleep), w.rounds);
    assert_int_equal(atomic_load(&w.runs), w.rounds);
    assert_int_equal(atomic_load(&w.wrong_thread), 0);
    spindle_bh_delete(w.bh);
    spindle_ctx_free(w.ctx);
}

/* ------------------------------------------------------------------------
 * spindle_notify from another thread wakes a blocking poll
 */

static void *notifier_main(void *opaque)
{
    struct remote_wake *w = opaque;
    for (unsigned k = 1; k <= w->rounds; k++) {
        wait_uint_at_least(&w->round, k);
        if (wait_until_thread_sleeps(w->loop_tid)) {
            atomic_fetch_add(&w->asleep, 1);
        }
        atomic_store(&w->started, k);
        spindle_notify(w->ctx);
    }
    return NULL;
}

static void notify_from_another_thread_wakes_blocking_poll(void **state)
{
    (void)state;
    struct remote_wake w = { .rounds = WAKE_ROUNDS };
    w.ctx = harness_ctx_new();
    w.loop_tid = current_tid();

    pthread_t t;
    start_thread(&t, notifier_main, &w);
    for (unsigned k = 1; k <= w.rounds; k++) {
        atomic_store(&w.round, k);
        /* A wake-up left over from the previous round may end the first
         * poll early; poll again until the helper has acted in this round.
         * It notifies after publishing `started`, so that wake-up cannot
         * have been consumed by a poll that saw `started` < k. */
        unsigned i = 0;
        do {
            assert_true(i++ < MAX_ITERATIONS_PER_EVENT);
            spindle_poll(w.ctx, true);
        } while (atomic_load(&w.started) < k);
    }
    join_thread(t);
    print_message("loop seen asleep in the kernel in %u of %u rounds\n",
                  atomic_load(&w.asleep), w.rounds);
    spindle_ctx_free(w.ctx);
}

/* ------------------------------------------------------------------------
 * Cross-thread ping-pong through bottom halves
 */

struct pingpong {
    spindle_ctx *ctx[2];
    spindle_bh *bh[2];
    unsigned target;
    atomic_uint count;
    atomic_bool done;
    atomic_uint wrong_thread;
};

struct pingpong_side {
    struct pingpong *pp;
    int me;
};

static void pingpong_bh_cb(void *opaque)
{
    struct pingpong_side *s = opaque;
    struct pingpong *pp = s->pp;
    if (loop_side != s->me) {
        atomic_fetch_add(&pp->wrong_thread, 1);
    }
    unsigned c = atomic_fetch_add(&pp->count, 1) + 1;
    if (c >= pp->target) {
        atomic_store(&pp->done, true);
        spindle_notify(pp->ctx[!s->me]);   /* let the other loop see done */
    } else {
        spindle_bh_schedule(pp->bh[!s->me]);
    }
}

static void *pingpong_bh_loop_main(void *opaque)
{
    struct pingpong_side *s = opaque;
    loop_side = s->me;
    while (!atomic_load(&s->pp->done)) {
        spindle_poll(s->pp->ctx[s->me], true);
    }
    return NULL;
}

static void bh_ping_pong(int64_t poll_max_ns)
{
    struct pingpong pp = { .target = PINGPONG_ROUNDS };
    struct pingpong_side side[2] = { { &pp, 0 }, { &pp, 1 } };
    for (int i = 0; i < 2; i++) {
        pp.ctx[i] = ctx_with_polling(poll_max_ns);
        pp.bh[i] = spindle_bh_new(pp.ctx[i], pingpong_bh_cb, &side[i]);
        assert_non_null(pp.bh[i]);
    }
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        start_thread(&t[i], pingpong_bh_loop_main, &side[i]);
    }
    /* Serve from here: scheduling from a third thread is fine. */
    spindle_bh_schedule(pp.bh[0]);
    for (int i = 0; i < 2; i++) {
        join_thread(t[i]);
    }
    /* Exactly target runs: a bottom half run twice for one schedule would
     * have started a second ball and overshot. */
    assert_int_equal(atomic_load(&pp.count), pp.target);
    assert_int_equal(atomic_load(&pp.wrong_thread), 0);
    for (int i = 0; i < 2; i++) {
        spindle_bh_delete(pp.bh[i]);
        spindle_ctx_free(pp.ctx[i]);
    }
}

static void bh_ping_pong_between_two_threads_loses_no_wakeup(void **state)
{
    (void)state;
    bh_ping_pong(-1);
}

static void bh_ping_pong_without_busy_polling_loses_no_wakeup(void **state)
{
    (void)state;
    bh_ping_pong(0);
}

/* ------------------------------------------------------------------------
 * Cross-thread ping-pong through spindle_notify and a shared counter
 */

struct notify_pingpong {
    spindle_ctx *ctx[2];
    unsigned target;
    atomic_uint count;   /* side (count % 2) has the ball */
};

struct notify_pingpong_side {
    struct notify_pingpong *np;
    int me;
};

static void *notify_pingpong_main(void *opaque)
{
    struct notify_pingpong_side *s = opaque;
    struct notify_pingpong *np = s->np;
    for (;;) {
        unsigned c = atomic_load(&np->count);
        if (c >= np->target) {
            break;
        }
        if ((int)(c % 2) == s->me) {
            /* Publish, then notify: the other side's poll must return. */
            atomic_store(&np->count, c + 1);
            spindle_notify(np->ctx[!s->me]);
        } else {
            spindle_poll(np->ctx[s->me], true);
        }
    }
    return NULL;
}

static void notify_ping_pong(int64_t poll_max_ns)
{
    struct notify_pingpong np = { .target = PINGPONG_ROUNDS };
    struct notify_pingpong_side side[2] = { { &np, 0 }, { &np, 1 } };
    for (int i = 0; i < 2; i++) {
        np.ctx[i] = ctx_with_polling(poll_max_ns);
    }
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        start_thread(&t[i], notify_pingpong_main, &side[i]);
    }
    for (int i = 0; i < 2; i++) {
        join_thread(t[i]);
    }
    assert_int_equal(atomic_load(&np.count), np.target);
    for (int i = 0; i < 2; i++) {
        spindle_ctx_free(np.ctx[i]);
    }
}

static void notify_ping_pong_between_two_threads_loses_no_wakeup(void **state)
{
    (void)state;
    notify_ping_pong(-1);
}

static void notify_ping_pong_without_busy_polling_loses_no_wakeup(void **state)
{
    (void)state;
    notify_ping_pong(0);
}

/* ------------------------------------------------------------------------
 * fd handlers registered, replaced and removed from another thread while
 * the loop iterates
 */

#define CHURN_FDS 8

struct churn_rec {
    unsigned magic;
    atomic_ullong removed_after; /* looper_mark() after removal; ~0: live */
    atomic_ullong last_call;     /* the last iteration that called it */
    atomic_uint calls;
};

#define CHURN_MAGIC 0x5a17c0deu

static struct looper churn_looper;
static atomic_uint churn_bad_opaque;

static void churn_read_cb(void *opaque)
{
    struct churn_rec *rec = opaque;
    if (rec->magic != CHURN_MAGIC) {
        atomic_fetch_add(&churn_bad_opaque, 1);
        return;
    }
    atomic_store(&rec->last_call, looper_current(&churn_looper));
    atomic_fetch_add(&rec->calls, 1);
    /* The fd stays readable (never drained): the handler is called on
     * every iteration while it is registered. */
}

static void churn_retire(struct churn_rec *rec)
{
    atomic_store(&rec->removed_after, looper_mark(&churn_looper));
}

static void fd_handler_removed_from_another_thread_is_not_called_later(void **state)
{
    (void)state;
    const unsigned ops = FD_CHURN_OPS;
    spindle_ctx *ctx = harness_ctx_new();
    int fds[CHURN_FDS][2];
    for (int i = 0; i < CHURN_FDS; i++) {
        harness_pipe(fds[i]);
        write_byte(fds[i][1]);
    }
    struct churn_rec *recs = calloc(ops, sizeof(*recs));
    assert_non_null(recs);
    for (unsigned k = 0; k < ops; k++) {
        recs[k].magic = CHURN_MAGIC;
        atomic_init(&recs[k].removed_after, ~0ull);
        atomic_init(&recs[k].last_call, 0);
        atomic_init(&recs[k].calls, 0);
    }
    atomic_store(&churn_bad_opaque, 0);
    struct churn_rec *current[CHURN_FDS] = { 0 };
    unsigned failed_calls = 0, called = 0, waited = 0;

    looper_start(&churn_looper, ctx);
    for (unsigned k = 0; k < ops; k++) {
        unsigned slot = k % CHURN_FDS;
        int fd = fds[slot][0];
        struct churn_rec *old = current[slot];
        struct churn_rec *rec = &recs[k];
        if (old && (k / CHURN_FDS) % 3 == 1) {
            /* Remove. */
            if (spindle_set_fd_handler(ctx, fd, false, NULL, NULL, NULL,
                                       NULL) != 0) {
                failed_calls++;
            }
            churn_retire(old);
            current[slot] = NULL;
            continue;
        }
        /* Register, or replace the handler in place (an update installs a
         * new record; the old callbacks and opaque are retired). */
        if (spindle_set_fd_handler(ctx, fd, false, churn_read_cb, NULL, NULL,
                                   rec) != 0) {
            failed_calls++;
        }
        if (old) {
            churn_retire(old);
        }
        current[slot] = rec;
        if (k % 4 == 0) {
            /* Make sure some handlers are removed while being called. */
            wait_uint_at_least(&rec->calls, 1);
            waited++;
        }
    }
    for (int i = 0; i < CHURN_FDS; i++) {
        if (current[i]) {
            assert_int_equal(spindle_set_fd_handler(ctx, fds[i][0], false,
                                                    NULL, NULL, NULL, NULL), 0);
            churn_retire(current[i]);
        }
    }
    /* Two more iterations: anything still racing is over. */
    looper_advance_to(&churn_looper, atomic_load(&churn_looper.iter) + 2);
    looper_stop(&churn_looper);

    unsigned late = 0;
    for (unsigned k = 0; k < ops; k++) {
        unsigned long long removed = atomic_load(&recs[k].removed_after);
        unsigned long long last = atomic_load(&recs[k].last_call);
        if (atomic_load(&recs[k].calls) > 0) {
            called++;
        }
        /* Called at most during the iteration in progress when the
         * removal returned (removed + 1), never in a later one. */
        if (removed != ~0ull && last != 0 && last > removed + 1) {
            if (late < 5) {
                print_error("handler %u called in iteration %llu, removed "
                            "after iteration %llu\n", k, last, removed);
            }
            late++;
        }
    }
    assert_int_equal(failed_calls, 0);
    assert_int_equal(atomic_load(&churn_bad_opaque), 0);
    assert_int_equal(late, 0);
    /* The handlers waited for above did run: the check was not vacuous. */
    assert_true(called >= waited);
    assert_true(waited > 0);

    spindle_ctx_free(ctx);
    for (int i = 0; i < CHURN_FDS; i++) {
        close(fds[i][0]);
        close(fds[i][1]);
    }
    free(recs);
}

/* ------------------------------------------------------------------------
 * Registering an fd from another thread wakes the loop and gets dispatched
 */

struct remote_fd {
    spindle_ctx *ctx;
    int fd;
    pid_t loop_tid;
    unsigned rounds;
    atomic_uint round;
    atomic_uint dispatched;
    atomic_uint failed;
};

static void remote_fd_read_cb(void *opaque)
{
    struct remote_fd *r = opaque;
    atomic_fetch_add(&r->dispatched, 1);
}

static void *fd_registrar_main(void *opaque)
{
    struct remote_fd *r = opaque;
    for (unsigned k = 1; k <= r->rounds; k++) {
        wait_uint_at_least(&r->round, k);
        wait_until_thread_sleeps(r->loop_tid);
        if (spindle_set_fd_handler(r->ctx, r->fd, false, remote_fd_read_cb,
                                   NULL, NULL, r) != 0) {
            atomic_fetch_add(&r->failed, 1);
        }
    }
    return NULL;
}

static void fd_registered_from_another_thread_wakes_loop_and_is_dispatched(void **state)
{
    (void)state;
    struct remote_fd r = { .rounds = WAKE_ROUNDS };
    int fds[2];
    harness_pipe(fds);
    write_byte(fds[1]);   /* readable from the start, and stays so */
    r.ctx = harness_ctx_new();
    r.fd = fds[0];
    r.loop_tid = current_tid();

    pthread_t t;
    start_thread(&t, fd_registrar_main, &r);
    for (unsigned k = 1; k <= r.rounds; k++) {
        atomic_store(&r.round, k);
        unsigned i = 0;
        while (atomic_load(&r.dispatched) < k) {
            assert_true(i++ < MAX_ITERATIONS_PER_EVENT);
            assert_int_equal(atomic_load(&r.failed), 0);
            spindle_poll(r.ctx, true);
        }
        /* On the loop thread: once this returns the handler is gone. */
        assert_int_equal(spindle_set_fd_handler(r.ctx, r.fd, false, NULL,
                                                NULL, NULL, NULL), 0);
        assert_int_equal(atomic_load(&r.dispatched), k);
    }
    join_thread(t);
    assert_int_equal(atomic_load(&r.failed), 0);
    spindle_ctx_free(r.ctx);
    close(fds[0]);
    close(fds[1]);
}

/* ------------------------------------------------------------------------
 * An earlier timer armed from another thread wakes a loop sleeping on a
 * far one
 */

struct remote_timer {
    spindle_ctx *ctx;
    spindle_timer *near;
    pid_t loop_tid;
    unsigned rounds;
    atomic_uint round;
    atomic_uint near_fired;
    atomic_uint far_fired;
};

static void near_timer_cb(void *opaque)
{
    struct remote_timer *r = opaque;
    atomic_fetch_add(&r->near_fired, 1);
}

static void far_timer_cb(void *opaque)
{
    struct remote_timer *r = opaque;
    atomic_fetch_add(&r->far_fired, 1);
}

static void *timer_armer_main(void *opaque)
{
    struct remote_timer *r = opaque;
    for (unsigned k = 1; k <= r->rounds; k++) {
        wait_uint_at_least(&r->round, k);
        wait_until_thread_sleeps(r->loop_tid);
        spindle_timer_mod(r->near,
                          spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) + 1000000);
    }
    return NULL;
}

static void earlier_timer_armed_from_another_thread_wakes_loop_sleeping_on_far_timer(void **state)
{
    (void)state;
    struct remote_timer r = { .rounds = SCALE(50u, 20u) };
    r.ctx = harness_ctx_new();
    r.loop_tid = current_tid();
    r.near = spindle_timer_new(r.ctx, SPINDLE_CLOCK_MONOTONIC, near_timer_cb,
                               &r);
    spindle_timer *far = spindle_timer_new(r.ctx, SPINDLE_CLOCK_MONOTONIC,
                                           far_timer_cb, &r);
    assert_non_null(r.near);
    assert_non_null(far);
    /* An hour away: far beyond the watchdog, so a loop that misses the
     * near timer's wake-up hangs and fails instead of passing late. */
    spindle_timer_mod(far, spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) +
                               INT64_C(3600) * 1000000000);

    pthread_t t;
    start_thread(&t, timer_armer_main, &r);
    for (unsigned k = 1; k <= r.rounds; k++) {
        atomic_store(&r.round, k);
        unsigned i = 0;
        while (atomic_load(&r.near_fired) < k) {
            assert_true(i++ < MAX_ITERATIONS_PER_EVENT);
            spindle_poll(r.ctx, true);
        }
        assert_int_equal(atomic_load(&r.near_fired), k);
    }
    join_thread(t);
    assert_int_equal(atomic_load(&r.far_fired), 0);
    assert_true(spindle_timer_pending(far));
    assert_false(spindle_timer_pending(r.near));
    spindle_timer_free(far);
    spindle_timer_free(r.near);
    spindle_ctx_free(r.ctx);
}

/* ------------------------------------------------------------------------
 * spindle_timer_del from another thread
 */

/* One timer per round, armed once and deleted once, so that a firing is
 * attributed to its round without doubt (a callback may legitimately run
 * after the deletion returned, during the iteration in progress, by which
 * time the next round may have started). */
static struct looper tdel_looper;
static atomic_ullong *tdel_fired_iter;   /* per round: iteration that fired */
static atomic_uint *tdel_fires;          /* per round: times fired */

static void tdel_cb(void *opaque)
{
    unsigned k = (unsigned)(uintptr_t)opaque;
    atomic_store(&tdel_fired_iter[k], looper_current(&tdel_looper));
    atomic_fetch_add(&tdel_fires[k], 1);
}

static void timer_deleted_from_another_thread_does_not_fire_later(void **state)
{
    (void)state;
    const unsigned rounds = TIMER_DEL_ROUNDS;
    spindle_ctx *ctx = harness_ctx_new();
    spindle_timer **timers = calloc(rounds, sizeof(*timers));
    assert_non_null(timers);
    for (unsigned k = 0; k < rounds; k++) {
        timers[k] = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC, tdel_cb,
                                      (void *)(uintptr_t)k);
        assert_non_null(timers[k]);
    }
    tdel_fired_iter = calloc(rounds, sizeof(*tdel_fired_iter));
    tdel_fires = calloc(rounds, sizeof(*tdel_fires));
    unsigned long long *removed = calloc(rounds, sizeof(*removed));
    assert_non_null(tdel_fired_iter);
    assert_non_null(tdel_fires);
    assert_non_null(removed);
    for (unsigned k = 0; k < rounds; k++) {
        atomic_init(&tdel_fired_iter[k], 0);
        atomic_init(&tdel_fires[k], 0);
    }
    unsigned still_pending = 0, fired_rounds = 0;

    looper_start(&tdel_looper, ctx);
    for (unsigned k = 0; k < rounds; k++) {
        spindle_timer *t = timers[k];
        /* Deadlines from already passed to 150 us away: the arm wakes the
         * loop, and the deletion races with the firing. */
        int64_t now = spindle_now_ns(SPINDLE_CLOCK_MONOTONIC);
        spindle_timer_mod(t, now + (int64_t)(k % 4) * 50000 - 50000);
        if (k % 8 == 0) {
            /* Sometimes let it fire first: then the deletion is a no-op. */
            wait_uint_at_least(&tdel_fires[k], 1);
        }
        spindle_timer_del(t);
        removed[k] = looper_mark(&tdel_looper);
        if (spindle_timer_pending(t) || spindle_timer_expire_ns(t) != -1) {
            still_pending++;
        }
    }
    looper_advance_to(&tdel_looper, atomic_load(&tdel_looper.iter) + 2);
    looper_stop(&tdel_looper);

    unsigned late = 0, double_fire = 0;
    for (unsigned k = 0; k < rounds; k++) {
        unsigned fires = atomic_load(&tdel_fires[k]);
        unsigned long long at = atomic_load(&tdel_fired_iter[k]);
        if (fires > 0) {
            fired_rounds++;
        }
        if (fires > 1) {
            double_fire++;
        }
        if (fires > 0 && at > removed[k] + 1) {
            if (late < 5) {
                print_error("round %u: timer fired in iteration %llu, deleted "
                            "after iteration %llu\n", k, at, removed[k]);
            }
            late++;
        }
    }
    assert_int_equal(still_pending, 0);
    assert_int_equal(double_fire, 0);
    assert_int_equal(late, 0);
    assert_true(fired_rounds >= rounds / 8);

    for (unsigned k = 0; k < rounds; k++) {
        spindle_timer_free(timers[k]);
    }
    free(timers);
    spindle_ctx_free(ctx);
    free(removed);
    free(tdel_fires);
    free(tdel_fired_iter);
}

/* ------------------------------------------------------------------------
 * Many threads scheduling oneshots and bottom halves at one context
 */

struct item {
    atomic_uint runs;
};

struct producer {
    spindle_ctx *ctx;
    spindle_bh **bhs;        /* PRODUCER_ITEMS, created by the loop thread */
    struct item *oneshots;   /* PRODUCER_ITEMS */
    atomic_uint failed;
};

static atomic_uint item_wrong_thread;

static void item_cb(void *opaque)
{
    struct item *it = opaque;
    if (loop_side != 0) {
        atomic_fetch_add(&item_wrong_thread, 1);
    }
    atomic_fetch_add(&it->runs, 1);
}

struct bh_item {
    struct item item;
    atomic_uint *total;
};

static void bh_item_cb(void *opaque)
{
    struct bh_item *b = opaque;
    item_cb(&b->item);
    atomic_fetch_add(b->total, 1);
}

static atomic_uint *oneshot_total;

static void oneshot_item_cb(void *opaque)
{
    item_cb(opaque);
    atomic_fetch_add(oneshot_total, 1);
}

static void *producer_main(void *opaque)
{
    struct producer *p = opaque;
    for (unsigned j = 0; j < PRODUCER_ITEMS; j++) {
        if (spindle_bh_oneshot(p->ctx, oneshot_item_cb, &p->oneshots[j]) != 0) {
            atomic_fetch_add(&p->failed, 1);
        }
        spindle_bh_schedule(p->bhs[j]);
    }
    return NULL;
}

static void oneshots_and_bhs_from_four_threads_each_run_exactly_once(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    atomic_uint total;
    atomic_init(&total, 0);
    oneshot_total = &total;
    atomic_store(&item_wrong_thread, 0);
    struct producer prod[PRODUCERS];
    struct bh_item *bh_items = calloc(PRODUCERS * PRODUCER_ITEMS,
                                      sizeof(*bh_items));
    assert_non_null(bh_items);
    for (int t = 0; t < PRODUCERS; t++) {
        prod[t].ctx = ctx;
        atomic_init(&prod[t].failed, 0);
        prod[t].bhs = calloc(PRODUCER_ITEMS, sizeof(*prod[t].bhs));
        prod[t].oneshots = calloc(PRODUCER_ITEMS, sizeof(*prod[t].oneshots));
        assert_non_null(prod[t].bhs);
        assert_non_null(prod[t].oneshots);
        for (unsigned j = 0; j < PRODUCER_ITEMS; j++) {
            struct bh_item *b = &bh_items[t * PRODUCER_ITEMS + j];
            atomic_init(&b->item.runs, 0);
            b->total = &total;
            atomic_init(&prod[t].oneshots[j].runs, 0);
            prod[t].bhs[j] = spindle_bh_new(ctx, bh_item_cb, b);
            assert_non_null(prod[t].bhs[j]);
        }
    }
    const unsigned expected = PRODUCERS * PRODUCER_ITEMS * 2;

    loop_side = 0;
    pthread_t th[PRODUCERS];
    for (int t = 0; t < PRODUCERS; t++) {
        start_thread(&th[t], producer_main, &prod[t]);
    }
    /* This thread is the loop: it must be woken for whatever arrives. */
    while (atomic_load(&total) < expected) {
        spindle_poll(ctx, true);
    }
    for (int t = 0; t < PRODUCERS; t++) {
        join_thread(th[t]);
    }
    harness_drain(ctx);   /* anything run twice would show up now */
    loop_side = -1;

    assert_int_equal(atomic_load(&total), expected);
    assert_int_equal(atomic_load(&item_wrong_thread), 0);
    for (int t = 0; t < PRODUCERS; t++) {
        assert_int_equal(atomic_load(&prod[t].failed), 0);
        for (unsigned j = 0; j < PRODUCER_ITEMS; j++) {
            assert_int_equal(atomic_load(&prod[t].oneshots[j].runs), 1);
            assert_int_equal(
                atomic_load(&bh_items[t * PRODUCER_ITEMS + j].item.runs), 1);
            spindle_bh_delete(prod[t].bhs[j]);
        }
        free(prod[t].bhs);
        free(prod[t].oneshots);
    }
    free(bh_items);
    spindle_ctx_free(ctx);
}

/* ------------------------------------------------------------------------
 * Bottom halves scheduled from one thread run in that order, with other
 * threads scheduling at the same time
 */

struct ordered_bh {
    unsigned producer;
    unsigned index;
};

static unsigned order_next[PRODUCERS];   /* loop thread only */
static atomic_uint order_violations;
static atomic_uint order_total;

static void ordered_bh_cb(void *opaque)
{
    struct ordered_bh *o = opaque;
    if (o->index != order_next[o->producer]) {
        atomic_fetch_add(&order_violations, 1);
    }
    order_next[o->producer] = o->index + 1;
    atomic_fetch_add(&order_total, 1);
}

struct order_producer {
    spindle_bh **bhs;
};

static void *order_producer_main(void *opaque)
{
    struct order_producer *p = opaque;
    for (unsigned j = 0; j < PRODUCER_ITEMS; j++) {
        spindle_bh_schedule(p->bhs[j]);
    }
    return NULL;
}

static void bhs_scheduled_from_one_thread_run_in_that_order(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct ordered_bh *obs = calloc(PRODUCERS * PRODUCER_ITEMS, sizeof(*obs));
    spindle_bh **bhs = calloc(PRODUCERS * PRODUCER_ITEMS, sizeof(*bhs));
    assert_non_null(obs);
    assert_non_null(bhs);
    struct order_producer prod[PRODUCERS];
    for (unsigned t = 0; t < PRODUCERS; t++) {
        order_next[t] = 0;
        prod[t].bhs = &bhs[t * PRODUCER_ITEMS];
        for (unsigned j = 0; j < PRODUCER_ITEMS; j++) {
            obs[t * PRODUCER_ITEMS + j] = (struct ordered_bh){ t, j };
            bhs[t * PRODUCER_ITEMS + j] =
                spindle_bh_new(ctx, ordered_bh_cb, &obs[t * PRODUCER_ITEMS + j]);
            assert_non_null(bhs[t * PRODUCER_ITEMS + j]);
        }
    }
    atomic_store(&order_violations, 0);
    atomic_store(&order_total, 0);
    const unsigned expected = PRODUCERS * PRODUCER_ITEMS;

    pthread_t th[PRODUCERS];
    for (unsigned t = 0; t < PRODUCERS; t++) {
        start_thread(&th[t], order_producer_main, &prod[t]);
    }
    while (atomic_load(&order_total) < expected) {
        spindle_poll(ctx, true);
    }
    for (unsigned t = 0; t < PRODUCERS; t++) {
        join_thread(th[t]);
    }
    harness_drain(ctx);

    assert_int_equal(atomic_load(&order_total), expected);
    assert_int_equal(atomic_load(&order_violations), 0);
    for (unsigned t = 0; t < PRODUCERS; t++) {
        assert_int_equal(order_next[t], PRODUCER_ITEMS);
    }
    for (unsigned i = 0; i < expected; i++) {
        spindle_bh_delete(bhs[i]);
    }
    free(bhs);
    free(obs);
    spindle_ctx_free(ctx);
}

/* ------------------------------------------------------------------------
 * spindle_poll while another thread is inside spindle_poll: EBUSY
 */

struct busy {
    spindle_ctx *ctx;
    int fd;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool inside;      /* under lock */
    bool release;     /* under lock */
    atomic_bool stop;
    atomic_uint bh_runs;
    atomic_uint timer_runs;
    atomic_uint wrong_thread;
};

static void busy_read_cb(void *opaque)
{
    struct busy *b = opaque;
    drain_fd(b->fd);
    /* Hold the loop thread inside spindle_poll() until released. */
    pthread_mutex_lock(&b->lock);
    b->inside = true;
    pthread_cond_broadcast(&b->cond);
    while (!b->release) {
        pthread_cond_wait(&b->cond, &b->lock);
    }
    pthread_mutex_unlock(&b->lock);
}

static void busy_bh_cb(void *opaque)
{
    struct busy *b = opaque;
    if (loop_side != 1) {
        atomic_fetch_add(&b->wrong_thread, 1);
    }
    atomic_fetch_add(&b->bh_runs, 1);
}

static void busy_timer_cb(void *opaque)
{
    struct busy *b = opaque;
    if (loop_side != 1) {
        atomic_fetch_add(&b->wrong_thread, 1);
    }
    atomic_fetch_add(&b->timer_runs, 1);
}

static void *busy_loop_main(void *opaque)
{
    struct busy *b = opaque;
    loop_side = 1;
    while (!atomic_load(&b->stop)) {
        spindle_poll(b->ctx, true);
    }
    return NULL;
}

static void poll_while_another_thread_is_inside_poll_returns_ebusy_and_changes_nothing(void **state)
{
    (void)state;
    struct busy b = { 0 };
    int fds[2];
    harness_pipe(fds);
    b.ctx = harness_ctx_new();
    b.fd = fds[0];
    pthread_mutex_init(&b.lock, NULL);
    pthread_cond_init(&b.cond, NULL);
    spindle_bh *bh = spindle_bh_new(b.ctx, busy_bh_cb, &b);
    spindle_timer *timer = spindle_timer_new(b.ctx, SPINDLE_CLOCK_MONOTONIC,
                                             busy_timer_cb, &b);
    assert_non_null(bh);
    assert_non_null(timer);
    assert_int_equal(spindle_set_fd_handler(b.ctx, b.fd, false, busy_read_cb,
                                            NULL, NULL, &b), 0);

    /* No bottom half, no timer: the other thread sleeps until the pipe
     * becomes readable, then parks in the handler. */
    pthread_t t;
    start_thread(&t, busy_loop_main, &b);
    write_byte(fds[1]);
    pthread_mutex_lock(&b.lock);
    while (!b.inside) {
        pthread_cond_wait(&b.cond, &b.lock);
    }
    pthread_mutex_unlock(&b.lock);

    /* Work that a wrongly admitted poll would run. */
    spindle_bh_schedule(bh);
    spindle_timer_mod(timer, spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) - 1);
    write_byte(fds[1]);

    errno = 0;
    assert_false(spindle_poll(b.ctx, false));
    assert_int_equal(errno, EBUSY);
    errno = 0;
    assert_false(spindle_poll(b.ctx, true));
    assert_int_equal(errno, EBUSY);
    assert_int_equal(atomic_load(&b.bh_runs), 0);
    assert_int_equal(atomic_load(&b.timer_runs), 0);
    assert_true(spindle_timer_pending(timer));

    /* Release the owner: it runs the work, each piece exactly once. */
    pthread_mutex_lock(&b.lock);
    b.release = true;
    pthread_cond_broadcast(&b.cond);
    pthread_mutex_unlock(&b.lock);
    wait_uint_at_least(&b.bh_runs, 1);
    wait_uint_at_least(&b.timer_runs, 1);
    atomic_store(&b.stop, true);
    spindle_notify(b.ctx);
    join_thread(t);

    assert_int_equal(atomic_load(&b.bh_runs), 1);
    assert_int_equal(atomic_load(&b.timer_runs), 1);
    assert_int_equal(atomic_load(&b.wrong_thread), 0);
    /* The context is free again: this thread may iterate it now. */
    errno = 0;
    spindle_poll(b.ctx, false);
    assert_int_not_equal(errno, EBUSY);

    assert_int_equal(spindle_set_fd_handler(b.ctx, b.fd, false, NULL, NULL,
                                            NULL, NULL), 0);
    spindle_bh_delete(bh);
    spindle_timer_free(timer);
    spindle_ctx_free(b.ctx);
    pthread_cond_destroy(&b.cond);
    pthread_mutex_destroy(&b.lock);
    close(fds[0]);
    close(fds[1]);
}

/* ------------------------------------------------------------------------
 * spindle_disable_external / spindle_enable_external from another thread
 */

static struct looper ext_looper;
static atomic_ullong ext_disabled_after;   /* ~0: not disabled */
static atomic_uint ext_calls;
static atomic_uint ext_violations;
static int ext_fd;

static void ext_read_cb(void *opaque)
{
    (void)opaque;
    unsigned long long since = atomic_load(&ext_disabled_after);
    if (since != ~0ull && looper_current(&ext_looper) > since + 1) {
        atomic_fetch_add(&ext_violations, 1);
    }
    drain_fd(ext_fd);
    atomic_fetch_add(&ext_calls, 1);
}

static void external_disabled_and_enabled_from_another_thread(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    int fds[2];
    harness_pipe(fds);
    ext_fd = fds[0];
    atomic_store(&ext_disabled_after, ~0ull);
    atomic_store(&ext_calls, 0);
    atomic_store(&ext_violations, 0);
    assert_int_equal(spindle_set_fd_handler(ctx, fds[0], true, ext_read_cb,
                                            NULL, NULL, NULL), 0);
    looper_start(&ext_looper, ctx);

    for (unsigned k = 1; k <= EXTERNAL_ROUNDS; k++) {
        /* Disabled twice, enabled once: still disabled (it nests). */
        spindle_disable_external(ctx);
        spindle_disable_external(ctx);
        spindle_enable_external(ctx);
        unsigned long long r = looper_mark(&ext_looper);
        atomic_store(&ext_disabled_after, r);
        /* Let the iteration in progress end: every later one must see the
         * disable. */
        looper_advance_to(&ext_looper, r + 1);
        unsigned before = atomic_load(&ext_calls);

        /* An event arrives while disabled, and the loop iterates (kicked
         * by notifies): it must not dispatch the handler. */
        write_byte(fds[1]);
        looper_advance_to(&ext_looper, r + 4);
        assert_int_equal(atomic_load(&ext_violations), 0);
        assert_int_equal(atomic_load(&ext_calls), before);

        /* Enabling wakes the loop, which delivers the pending event. */
        atomic_store(&ext_disabled_after, ~0ull);
        spindle_enable_external(ctx);
        wait_uint_at_least(&ext_calls, before + 1);
    }
    looper_stop(&ext_looper);
    assert_int_equal(atomic_load(&ext_violations), 0);
    assert_int_equal(atomic_load(&ext_calls), EXTERNAL_ROUNDS);

    assert_int_equal(spindle_set_fd_handler(ctx, fds[0], true, NULL, NULL,
                                            NULL, NULL), 0);
    spindle_ctx_free(ctx);
    close(fds[0]);
    close(fds[1]);
}

/* ------------------------------------------------------------------------
 * Interest changes on the loop thread while another thread registers and
 * removes handlers (growing the fd table and the dirty list's table beside
 * it, and moving an AUTO context to epoll)
 */

#define INTEREST_PIPES 100
#define INTEREST_ROUNDS SCALE(30u, 6u)

struct interest_race {
    spindle_ctx *ctx;
    int pipes[INTEREST_PIPES][2];
    atomic_uint failed;
    atomic_uint iterations; /* the loop's, so that the rounds interleave */
    atomic_bool done;
};

static void interest_noop_cb(void *opaque)
{
    (void)opaque;
}

static void *interest_registrar_main(void *opaque)
{
    struct interest_race *r = opaque;
    for (unsigned k = 0; k < INTEREST_ROUNDS; k++) {
        wait_uint_at_least(&r->iterations, k + 1);
        for (int i = 0; i < INTEREST_PIPES; i++) {
            if (spindle_set_fd_handler(r->ctx, r->pipes[i][0], false,
                                       interest_noop_cb, NULL, NULL,
                                       NULL) != 0) {
                atomic_fetch_add(&r->failed, 1);
            }
        }
        for (int i = 0; i < INTEREST_PIPES; i++) {
            spindle_set_fd_handler(r->ctx, r->pipes[i][0], false, NULL, NULL,
                                   NULL, NULL);
        }
    }
    atomic_store(&r->done, true);
    return NULL;
}

static unsigned interest_writes; /* loop thread only */

static void interest_write_cb(void *opaque)
{
    (void)opaque;
    interest_writes++;
}

/* Each iteration ends a burst of changes with write interest on or off: a
 * writable socket must then run io_write exactly once or not at all,
 * whatever the other thread did to the handler set meanwhile. */
static void interest_changes_race_with_registration_from_another_thread(
    void **state)
{
    (void)state;
    struct interest_race r = { .ctx = harness_ctx_new() };
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv),
                     0);
    for (int i = 0; i < INTEREST_PIPES; i++) {
        harness_pipe(r.pipes[i]);
    }
    assert_int_equal(spindle_set_fd_handler(r.ctx, sv[0], false,
                                            interest_noop_cb,
                                            interest_write_cb, NULL, NULL),
                     0);
    interest_writes = 0;

    pthread_t t;
    start_thread(&t, interest_registrar_main, &r);
    for (bool on = false; !atomic_load(&r.done); on = !on) {
        for (int i = 0; i < 3; i++) {
            assert_int_equal(spindle_set_fd_interest(r.ctx, sv[0], true, i & 1),
                             0);
        }
        assert_int_equal(spindle_set_fd_interest(r.ctx, sv[0], true, on), 0);
        unsigned before = interest_writes;
        spindle_poll(r.ctx, false);
        assert_int_equal(interest_writes, before + (on ? 1 : 0));
        atomic_fetch_add(&r.iterations, 1);
    }
    join_thread(t);
    assert_int_equal(atomic_load(&r.failed), 0);
    assert_true(atomic_load(&r.iterations) >= INTEREST_ROUNDS);

    spindle_ctx_free(r.ctx);
    for (int i = 0; i < INTEREST_PIPES; i++) {
        close(r.pipes[i][0]);
        close(r.pipes[i][1]);
    }
    close(sv[0]);
    close(sv[1]);
}

/* ------------------------------------------------------------------------
 * Polled event notifiers removed and freed by another thread
 */

#define NOTIFIER_CHURN SCALE(1000u, 200u)

static atomic_uint churn_reads;

static void churn_notifier_read(void *opaque)
{
    (void)opaque; /* the notifier may be freed already: not touched */
    atomic_fetch_add(&churn_reads, 1);
}

static bool churn_notifier_poll(void *opaque)
{
    (void)opaque;
    return false;
}

static void polled_notifier_freed_right_after_removal_from_another_thread(void **state)
{
    /* A loop woken by an event notifier reads when it was set, to adapt
     * the handler's polling window; meanwhile another thread removes the
     * registration and frees the notifier at once, which the API allows.
     * The loop must not read the freed notifier (ASan, TSan), reading
     * windows from this thread must see a window or -ENOENT, and the loop
     * goes on. */
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct looper lp;
    atomic_store(&churn_reads, 0);
    looper_start(&lp, ctx);
    unsigned windows = 0;
    for (unsigned i = 0; i < NOTIFIER_CHURN; i++) {
        spindle_notifier *n = spindle_notifier_new(false);
        assert_non_null(n);
        int fd = spindle_notifier_fd(n);
        assert_int_equal(spindle_set_event_notifier(ctx, n, false,
                                                    churn_notifier_read,
                                                    churn_notifier_poll, NULL),
                         0);
        unsigned reads = atomic_load(&churn_reads);
        assert_int_equal(spindle_notifier_set(n), 0);
        if (i % 2) {
            /* Every other round, until the loop has run its read. Not by
             * kicking it with spindle_notify(): a notify ends a spin at
             * once, and a spin that found an event leaves out the kernel
             * wait when every handler has an io_poll, so a loop kept busy
             * by notifies never sees this fd, whose io_poll says false. */
            wait_uint_at_least(&churn_reads, reads + 1);
        }
        int64_t w = spindle_get_handler_poll_ns(ctx, fd);
        assert_true(w >= 0);
        windows++;
        assert_int_equal(spindle_set_event_notifier(ctx, n, false, NULL, NULL,
                                                    NULL), 0);
        spindle_notifier_free(n);
        w = spindle_get_handler_poll_ns(ctx, fd);
        assert_true(w == -ENOENT || w >= 0); /* the number may be reused */
        assert_true(spindle_get_poll_ns(ctx) >= 0);
    }
    looper_stop(&lp);
    assert_int_equal(windows, NOTIFIER_CHURN);
    assert_true(atomic_load(&churn_reads) >= NOTIFIER_CHURN / 2);
    spindle_ctx_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST(bh_scheduled_from_another_thread_wakes_blocking_poll),
        TEST(notify_from_another_thread_wakes_blocking_poll),
        TEST(bh_ping_pong_between_two_threads_loses_no_wakeup),
        TEST(bh_ping_pong_without_busy_polling_loses_no_wakeup),
        TEST(notify_ping_pong_between_two_threads_loses_no_wakeup),
        TEST(notify_ping_pong_without_busy_polling_loses_no_wakeup),
        TEST(fd_handler_removed_from_another_thread_is_not_called_later),
        TEST(fd_registered_from_another_thread_wakes_loop_and_is_dispatched),
        TEST(earlier_timer_armed_from_another_thread_wakes_loop_sleeping_on_far_timer),
        TEST(timer_deleted_from_another_thread_does_not_fire_later),
        TEST(oneshots_and_bhs_from_four_threads_each_run_exactly_once),
        TEST(bhs_scheduled_from_one_thread_run_in_that_order),
        TEST(poll_while_another_thread_is_inside_poll_returns_ebusy_and_changes_nothing),
        TEST(external_disabled_and_enabled_from_another_thread),
        TEST(interest_changes_race_with_registration_from_another_thread),
        TEST(polled_notifier_freed_right_after_removal_from_another_thread),
    };
    /* SPINDLE_TEST_FILTER=pattern (cmocka's * and ? wildcards) runs only
     * the matching tests, e.g. to repeat one under a debugger. */
    const char *filter = getenv("SPINDLE_TEST_FILTER");
    if (filter && *filter) {
        cmocka_set_test_filter(filter);
    }
    return RUN_TESTS(tests);
}
