/* Busy polling: the adaptive window (docs/design.md, the iteration, step
 * 5), poll_begin and poll_end, io_poll calls and progress, hand-off through
 * shared memory, and the counters in spindle_stats.
 * SPDX-License-Identifier: MIT
 */
#include "harness.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define US 1000LL
#define MS 1000000LL
/* A maximum far above the 1 ms waits that grow the window, far below the
 * 250 ms waits that shrink it. */
#define MAX_NS (200 * MS)
#define GROW_WAIT_NS (1 * MS)
#define SHRINK_WAIT_NS (250 * MS)
/* Upper bound on the time between the end of the kernel wait and the
 * check of the timer deadline in the same iteration (no other work runs in
 * these tests). Used only to decide which window change a wait implies. */
#define DISPATCH_SLACK_NS (200 * US)

/* ------------------------------------------------------------------------
 * Helpers
 */

static void set_flag_cb(void *opaque)
{
    *(bool *)opaque = true;
}

static spindle_stats stats_of(const spindle_ctx *ctx)
{
    spindle_stats s;
    assert_int_equal(spindle_get_stats(ctx, &s), 0);
    return s;
}

static int new_eventfd(void)
{
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    assert_true(fd >= 0);
    return fd;
}

/* The window rules of docs/design.md (the iteration, step 5), to predict the next window. */
typedef struct {
    int64_t max_ns, grow, shrink;
} params;

static int64_t grown(const params *p, int64_t w)
{
    if (p->max_ns == 0) {
        return 0;
    }
    int64_t n = w ? w * (p->grow ? p->grow : 2) : 4000;
    return n > p->max_ns ? p->max_ns : n;
}

static int64_t shrunk(const params *p, int64_t w)
{
    if (p->max_ns == 0) {
        return 0;
    }
    return p->shrink ? w / p->shrink : 0;
}

/* Follows the window of one context across blocking iterations: every
 * iteration may keep it, grow it one step or shrink it one step, nothing
 * else; the changes are logged in order. */
typedef struct {
    spindle_ctx *ctx;
    params p;
    int64_t changes[256];
    unsigned nchanges;
} tracker;

static void tracker_init(tracker *tr, spindle_ctx *ctx, int64_t max_ns,
                         int64_t grow, int64_t shrink)
{
    memset(tr, 0, sizeof(*tr));
    tr->ctx = ctx;
    tr->p = (params){ max_ns, grow, shrink };
    assert_int_equal(spindle_set_poll_params(ctx, max_ns, grow, shrink), 0);
    assert_int_equal(spindle_get_poll_ns(ctx), 0);
}

static void tracker_note(tracker *tr, int64_t before, int64_t after)
{
    assert_true(after == before || after == grown(&tr->p, before) ||
                after == shrunk(&tr->p, before));
    if (after != before) {
        assert_true(tr->nchanges < 256);
        tr->changes[tr->nchanges++] = after;
    }
}

/* The outcome of one timed wait: the iteration that fired the timer, the
 * window around it, and how long it must have waited at least (from its
 * start to the deadline) and at most (its duration seen from outside). */
typedef struct {
    unsigned iterations;
    int64_t before, after;
    int64_t waited_at_least_ns;
    int64_t took_at_most_ns;
} step;

/* Arm a timer delay_ns ahead and run single blocking iterations until it
 * fires, checking each window change. A wake-up before the deadline (for
 * example from arming the timer) is allowed: it is just another iteration. */
static step timer_step(tracker *tr, int64_t delay_ns)
{
    bool fired = false;
    spindle_timer *t = spindle_timer_new(tr->ctx, SPINDLE_CLOCK_MONOTONIC,
                                         set_flag_cb, &fired);
    assert_non_null(t);
    int64_t deadline = spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) + delay_ns;
    spindle_timer_mod(t, deadline);
    step s = { 0 };
    while (!fired) {
        assert_true(s.iterations < 100000);
        int64_t before = spindle_get_poll_ns(tr->ctx);
        int64_t t0 = spindle_now_ns(SPINDLE_CLOCK_MONOTONIC);
        spindle_poll(tr->ctx, true);
        int64_t t1 = spindle_now_ns(SPINDLE_CLOCK_MONOTONIC);
        int64_t after = spindle_get_poll_ns(tr->ctx);
        s.iterations++;
        tracker_note(tr, before, after);
        if (fired) {
            s.before = before;
            s.after = after;
            s.waited_at_least_ns = deadline - t0 - DISPATCH_SLACK_NS;
            s.took_at_most_ns = t1 - t0;
        }
    }
    spindle_timer_free(t);
    return s;
}

/* A wait of delay_ns, longer than the window and shorter than the maximum:
 * the iteration that fired the timer grew the window one step. */
static void grow_step_by(tracker *tr, int64_t delay_ns)
{
    step s = timer_step(tr, delay_ns);
    if (s.waited_at_least_ns > s.before && s.took_at_most_ns < tr->p.max_ns) {
        assert_int_equal(s.after, grown(&tr->p, s.before));
    }
}

/* The usual growth step: 1 ms, over every window below 1 ms, far under a
 * 200 ms maximum. */
static void grow_step(tracker *tr)
{
    grow_step_by(tr, GROW_WAIT_NS);
}

/* Grow steps until the window is at least target. As each iteration moves
 * the window by one step at most, a target on the growth sequence is hit
 * exactly, except that one timer step may grow the window twice from 0 (a
 * wake-up from arming the timer is a short blocking iteration too). */
static int64_t grow_window_to(tracker *tr, int64_t target)
{
    for (unsigned i = 0; spindle_get_poll_ns(tr->ctx) < target; i++) {
        assert_true(i < 40);
        grow_step(tr);
    }
    return spindle_get_poll_ns(tr->ctx);
}

/* A 250 ms wait, over the maximum: the iteration that fired the timer
 * shrank the window one step. */
static void shrink_step(tracker *tr)
{
    step s = timer_step(tr, SHRINK_WAIT_NS);
    /* The firing iteration started some 250 ms before the deadline (an
     * early wake-up, if any, comes right after arming), so it waited over
     * the maximum. */
    assert_true(s.waited_at_least_ns > tr->p.max_ns);
    assert_int_equal(s.after, shrunk(&tr->p, s.before));
}

/* An fd handler with io_poll and poll_begin/poll_end that records how it
 * is called. */
typedef struct {
    spindle_ctx *ctx;
    int fd;
    atomic_bool ready;          /* io_poll reports progress once when set */
    unsigned polls, poll_trues, reads;
    unsigned begins, ends;
    bool polling;               /* between poll_begin and poll_end */
    unsigned violations;        /* begin twice, end without begin, bad opaque */
    void *self;
    uint64_t blocking_waits_at_end;
    int64_t burn_ns;            /* io_poll busy-works this long */
    bool end_pending;
} poller;

static void poller_init(poller *h, spindle_ctx *ctx, int fd)
{
    memset(h, 0, sizeof(*h));
    h->ctx = ctx;
    h->fd = fd;
    h->self = h;
    atomic_init(&h->ready, false);
}

static bool poller_io_poll(void *opaque)
{
    poller *h = opaque;
    h->polls++;
    if (h->burn_ns) {
        int64_t t0 = spindle_now_ns(SPINDLE_CLOCK_MONOTONIC);
        while (spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) - t0 < h->burn_ns) {
        }
    }
    if (opaque != h->self) {
        h->violations++;
    }
    if (atomic_exchange(&h->ready, false)) {
        h->poll_trues++;
        return true;
    }
    return false;
}

static void poller_read(void *opaque)
{
    poller *h = opaque;
    eventfd_t v;
    h->reads++;
    (void)eventfd_read(h->fd, &v);
}

static void poller_begin(void *opaque)
{
    poller *h = opaque;
    if (opaque != h->self || h->polling) {
        h->violations++;
    }
    h->polling = true;
    h->begins++;
}

static void poller_end(void *opaque)
{
    poller *h = opaque;
    if (opaque != h->self || !h->polling) {
        h->violations++;
    }
    h->polling = false;
    h->ends++;
    h->blocking_waits_at_end = stats_of(h->ctx).blocking_waits;
    h->end_pending = true;
}

static void poller_register(poller *h, bool with_begin_end)
{
    assert_int_equal(spindle_set_fd_handler(h->ctx, h->fd, false, poller_read,
                                            NULL, poller_io_poll, h), 0);
    if (with_begin_end) {
        spindle_set_fd_poll(h->ctx, h->fd, poller_begin, poller_end);
    }
}

/* ------------------------------------------------------------------------
 * The window
 */

static void window_grows_from_4000_doubling_up_to_512000(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    tracker tr;
    tracker_init(&tr, ctx, MAX_NS, 2, 4);

    assert_int_equal(grow_window_to(&tr, 512000), 512000);

    const int64_t expected[] = { 4000, 8000, 16000, 32000,
                                 64000, 128000, 256000, 512000 };
    assert_int_equal(tr.nchanges, 8);
    for (unsigned i = 0; i < 8; i++) {
        assert_int_equal(tr.changes[i], expected[i]);
    }
    assert_int_equal(stats_of(ctx).poll_ns, 512000);
    spindle_ctx_free(ctx);
}

static void window_grows_by_the_grow_factor(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    tracker tr;
    tracker_init(&tr, ctx, MAX_NS, 3, 4);

    assert_int_equal(grow_window_to(&tr, 324000), 324000);

    const int64_t expected[] = { 4000, 12000, 36000, 108000, 324000 };
    assert_int_equal(tr.nchanges, 5);
    for (unsigned i = 0; i < 5; i++) {
        assert_int_equal(tr.changes[i], expected[i]);
    }
    spindle_ctx_free(ctx);
}

static void window_growth_is_capped_at_poll_max(void **state)
{
    /* Grow factor 200 under a 50 ms maximum, 2 ms waits: 4000, 800000,
     * then 160 ms is capped to 50 ms. A 2 ms wait is then within the
     * window: kept. */
    spindle_ctx *ctx = harness_ctx_new();
    tracker tr;
    tracker_init(&tr, ctx, 50 * MS, 200, 4);

    for (unsigned i = 0; spindle_get_poll_ns(ctx) < 50 * MS; i++) {
        assert_true(i < 20);
        grow_step_by(&tr, 2 * MS);
    }
    for (int i = 0; i < 2; i++) {
        timer_step(&tr, 2 * MS);
    }
    const int64_t expected[] = { 4000, 800000, 50 * MS };
    assert_int_equal(tr.nchanges, 3);
    for (unsigned i = 0; i < 3; i++) {
        assert_int_equal(tr.changes[i], expected[i]);
    }
    assert_int_equal(spindle_get_poll_ns(ctx), 50 * MS);
    spindle_ctx_free(ctx);
}

static void window_shrinks_by_the_shrink_factor_after_long_waits(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    tracker tr;
    tracker_init(&tr, ctx, MAX_NS, 2, 4);
    assert_int_equal(grow_window_to(&tr, 512000), 512000);

    tr.nchanges = 0;
    shrink_step(&tr);
    assert_int_equal(spindle_get_poll_ns(ctx), 128000);
    shrink_step(&tr);
    assert_int_equal(spindle_get_poll_ns(ctx), 32000);
    assert_int_equal(tr.nchanges, 2);
    assert_int_equal(stats_of(ctx).poll_ns, 32000);
    spindle_ctx_free(ctx);
}

static void window_resets_to_zero_on_long_wait_when_shrink_is_zero(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    tracker tr;
    tracker_init(&tr, ctx, MAX_NS, 2, 0);
    grow_window_to(&tr, 8000);

    shrink_step(&tr);
    assert_int_equal(spindle_get_poll_ns(ctx), 0);
    spindle_ctx_free(ctx);
}

static void set_poll_params_restarts_window_at_zero(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    tracker tr;
    tracker_init(&tr, ctx, MAX_NS, 2, 4);
    grow_window_to(&tr, 16000);

    assert_int_equal(spindle_set_poll_params(ctx, MAX_NS, 2, 4), 0);
    assert_int_equal(spindle_get_poll_ns(ctx), 0);
    assert_int_equal(stats_of(ctx).poll_ns, 0);
    spindle_ctx_free(ctx);
}

static void nonblocking_iterations_do_not_adapt_window(void **state)
{
    /* Non-blocking iterations that take far longer than the window (io_poll
     * works 50 us without progress), with and without progress: under the
     * blocking rules each of them would grow the window. */
    spindle_ctx *ctx = harness_ctx_new();
    int efd = new_eventfd();
    poller h;
    poller_init(&h, ctx, efd);
    poller_register(&h, false);
    unsigned bh_runs = 0;
    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &bh_runs);
    assert_non_null(bh);
    tracker tr;
    tracker_init(&tr, ctx, MAX_NS, 2, 4);

    for (int round = 0; round < 2; round++) {
        int64_t w = spindle_get_poll_ns(ctx);
        for (int i = 0; i < 50; i++) {
            if (i % 3 == 0) {
                spindle_bh_schedule(bh);
            }
            if (i % 5 == 0) {
                assert_int_equal(eventfd_write(efd, 1), 0);
            }
            h.burn_ns = 50 * US;
            spindle_poll(ctx, false);
            h.burn_ns = 0;
            assert_int_equal(spindle_get_poll_ns(ctx), w);
        }
        /* From 0, then from a grown window. */
        grow_step(&tr);
        assert_true(spindle_get_poll_ns(ctx) > 0);
    }
    assert_true(bh_runs > 0);
    assert_true(h.reads > 0);

    spindle_bh_delete(bh);
    spindle_ctx_free(ctx);
    close(efd);
}

static void zero_poll_max_keeps_window_at_zero(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    tracker tr;
    tracker_init(&tr, ctx, 0, 2, 4);
    assert_int_equal(stats_of(ctx).poll_max_ns, 0);

    for (int i = 0; i < 5; i++) {
        timer_step(&tr, GROW_WAIT_NS);
        spindle_poll(ctx, false);
        assert_int_equal(spindle_get_poll_ns(ctx), 0);
    }
    assert_int_equal(tr.nchanges, 0);
    spindle_ctx_free(ctx);
}

static void window_adapts_while_busy_polling_is_disabled(void **state)
{
    /* A handler without io_poll turns busy polling off, not adaptation. */
    spindle_ctx *ctx = harness_ctx_new();
    int p[2];
    harness_pipe(p);
    unsigned reads = 0;
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], false, harness_count_cb,
                                            NULL, NULL, &reads), 0);
    tracker tr;
    tracker_init(&tr, ctx, MAX_NS, 2, 4);

    assert_int_equal(grow_window_to(&tr, 16000), 16000);
    assert_int_equal(tr.nchanges, 3);
    assert_int_equal(tr.changes[0], 4000);
    assert_int_equal(tr.changes[2], 16000);

    spindle_ctx_free(ctx);
    close(p[0]);
    close(p[1]);
}

/* ------------------------------------------------------------------------
 * poll_begin / poll_end
 */

/* Open the window, then put ctx in the busy-polling state and leave it
 * there: a blocking iteration whose spin is ended by io_poll returning true
 * does not sleep, so it does not run poll_end (docs/design.md, step 2). h is one of
 * the handlers. */
static void open_window(tracker *tr, poller *h)
{
    grow_window_to(tr, 4000);
    /* That wait ended any polling state before sleeping. */
    assert_false(h->polling);
}

static void enter_polling_state(tracker *tr, poller *h)
{
    atomic_store(&h->ready, true);
    assert_true(spindle_poll(tr->ctx, true));
    assert_false(atomic_load(&h->ready));
    assert_true(h->polling);
}

static void poll_begin_runs_once_while_nonblocking_iterations_keep_polling(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    int e1 = new_eventfd(), e2 = new_eventfd();
    poller a, b;
    poller_init(&a, ctx, e1);
    poller_init(&b, ctx, e2);
    poller_register(&a, true);
    poller_register(&b, true);
    tracker tr;
    tracker_init(&tr, ctx, MAX_NS, 2, 4);
    open_window(&tr, &a);
    unsigned ab = a.begins, ae = a.ends, bb = b.begins, be = b.ends;

    enter_polling_state(&tr, &a);
    /* Each handler got one poll_begin on entering, and no poll_end. */
    assert_int_equal(a.begins, ab + 1);
    assert_int_equal(b.begins, bb + 1);
    assert_int_equal(a.ends, ae);
    assert_int_equal(b.ends, be);

    /* Non-blocking iterations, some with progress, keep the state: no
     * begin or end at all. */
    for (int i = 0; i < 20; i++) {
        if (i % 4 == 0) {
            atomic_store(&b.ready, true);
        }
        spindle_poll(ctx, false);
    }
    assert_int_equal(b.poll_trues, 5);
    assert_int_equal(a.begins, ab + 1);
    assert_int_equal(b.begins, bb + 1);
    assert_int_equal(a.ends, ae);
    assert_int_equal(b.ends, be);
    assert_true(a.polling);
    assert_true(b.polling);
    assert_int_equal(a.violations + b.violations, 0);

    spindle_ctx_free(ctx);
    close(e1);
    close(e2);
}

static void poll_end_runs_right_before_a_kernel_wait(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    int efd = new_eventfd();
    poller h;
    poller_init(&h, ctx, efd);
    poller_register(&h, true);
    tracker tr;
    tracker_init(&tr, ctx, MAX_NS, 2, 4);
    open_window(&tr, &h);
    enter_polling_state(&tr, &h);
    spindle_poll(ctx, false);
    assert_true(h.polling);
    unsigned ends0 = h.ends;

    /* Blocking iterations until a 1 ms timer fires: the window (a few us)
     * runs out long before, so the loop sleeps, after poll_end. */
    bool fired = false;
    spindle_timer *t = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC,
                                         set_flag_cb, &fired);
    assert_non_null(t);
    spindle_timer_mod(t, spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) + MS);
    h.end_pending = false;
    for (unsigned i = 0; !fired; i++) {
        assert_true(i < 100000);
        spindle_poll(ctx, true);
        if (h.end_pending) {
            /* The iteration that ran poll_end slept after it, once. */
            assert_int_equal(stats_of(ctx).blocking_waits,
                             h.blocking_waits_at_end + 1);
            h.end_pending = false;
        }
    }
    assert_true(h.ends > ends0);
    assert_false(h.polling);
    assert_int_equal(h.violations, 0);

    spindle_timer_free(t);
    spindle_ctx_free(ctx);
    close(efd);
}

static void poll_begin_and_poll_end_alternate_strictly(void **state)
{
    /* A deterministic mix of blocking and non-blocking iterations. The
     * 100 us maximum keeps the window moving both ways: eventfd wake-ups
     * (the loop spins its whole window, then finds the fd) grow it, 1 ms
     * timer waits shrink it. */
    spindle_ctx *ctx = harness_ctx_new();
    int e1 = new_eventfd(), e2 = new_eventfd();
    poller a, b;
    poller_init(&a, ctx, e1);
    poller_init(&b, ctx, e2);
    poller_register(&a, true);
    poller_register(&b, true);
    unsigned bh_runs = 0;
    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &bh_runs);
    assert_non_null(bh);
    tracker tr;
    tracker_init(&tr, ctx, 100 * US, 2, 4);

    uint32_t rng = 12345;
    for (int op = 0; op < 200; op++) {
        rng = rng * 1103515245u + 12345u;
        switch ((rng >> 16) % 5) {
        case 0:
            timer_step(&tr, GROW_WAIT_NS);
            break;
        case 1:
            for (int i = 0; i < 3; i++) {
                spindle_poll(ctx, false);
            }
            break;
        case 2: {
            unsigned r0 = a.reads;
            assert_int_equal(eventfd_write(e1, 1), 0);
            for (unsigned i = 0; a.reads == r0; i++) {
                assert_true(i < 10);
                spindle_poll(ctx, true);
            }
            break;
        }
        case 3: {
            unsigned r0 = bh_runs;
            spindle_bh_schedule(bh);
            for (unsigned i = 0; bh_runs == r0; i++) {
                assert_true(i < 10);
                spindle_poll(ctx, true);
            }
            break;
        }
        default:
            atomic_store(&b.ready, true);
            for (unsigned i = 0; atomic_load(&b.ready); i++) {
                assert_true(i < 10);
                spindle_poll(ctx, (rng >> 8) & 1);
            }
            break;
        }
        /* Both handlers are always in the same state. */
        assert_int_equal(a.polling, b.polling);
    }
    assert_int_equal(a.violations, 0);
    assert_int_equal(b.violations, 0);
    assert_true(a.begins > 1);
    assert_true(a.ends > 0);
    assert_true(a.begins - a.ends <= 1);
    assert_int_equal(a.begins, b.begins);
    assert_int_equal(a.ends, b.ends);

    spindle_bh_delete(bh);
    spindle_ctx_free(ctx);
    close(e1);
    close(e2);
}

/* ------------------------------------------------------------------------
 * io_poll
 */

static void io_poll_called_once_per_iteration_with_zero_window(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    int efd = new_eventfd();
    poller h;
    poller_init(&h, ctx, efd);
    poller_register(&h, true);
    tracker tr;
    tracker_init(&tr, ctx, 0, 2, 4); /* the window stays 0 */

    for (int i = 0; i < 20; i++) {
        spindle_poll(ctx, false);
    }
    assert_int_equal(h.polls, 20);

    unsigned iterations = 0;
    for (int i = 0; i < 3; i++) {
        iterations += timer_step(&tr, GROW_WAIT_NS).iterations;
    }
    assert_int_equal(h.polls, 20 + iterations);
    assert_int_equal(h.begins, 0); /* never entered busy polling */
    assert_int_equal(h.violations, 0);

    spindle_ctx_free(ctx);
    close(efd);
}

static void io_poll_returning_true_counts_as_progress(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    int efd = new_eventfd();
    poller h;
    poller_init(&h, ctx, efd);
    poller_register(&h, false);
    harness_drain(ctx);

    atomic_store(&h.ready, true);
    assert_true(spindle_poll(ctx, false));
    assert_int_equal(h.poll_trues, 1);
    assert_false(spindle_poll(ctx, false));
    assert_int_equal(h.reads, 0);

    spindle_ctx_free(ctx);
    close(efd);
}

static void io_poll_true_ends_the_spin_and_counts_a_poll_hit(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    int efd = new_eventfd();
    poller h;
    poller_init(&h, ctx, efd);
    poller_register(&h, false);
    tracker tr;
    tracker_init(&tr, ctx, MAX_NS, 2, 4);
    grow_window_to(&tr, 512000);
    harness_drain(ctx);

    spindle_stats s0 = stats_of(ctx);
    unsigned polls0 = h.polls;
    atomic_store(&h.ready, true);
    /* No timer, no fd event: the spin seeing io_poll's true is the only
     * way this blocking iteration can end. The spin stops at that first
     * call, and the loop does not sleep: every handler has an io_poll and
     * the timeout became 0. */
    assert_true(spindle_poll(ctx, true));
    spindle_stats s1 = stats_of(ctx);
    assert_int_equal(h.poll_trues, 1);
    assert_int_equal(h.polls, polls0 + 1);
    assert_int_equal(s1.poll_hits, s0.poll_hits + 1);
    assert_int_equal(s1.poll_misses, s0.poll_misses);
    assert_int_equal(s1.blocking_waits, s0.blocking_waits);

    spindle_ctx_free(ctx);
    close(efd);
}

static void spin_running_out_of_window_counts_a_poll_miss(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    tracker tr;
    tracker_init(&tr, ctx, MAX_NS, 2, 4);
    grow_window_to(&tr, 64000);

    spindle_stats s0 = stats_of(ctx);
    grow_step(&tr); /* 1 ms of nothing: the 64 us spin runs out */
    spindle_stats s1 = stats_of(ctx);
    assert_true(s1.poll_misses > s0.poll_misses);
    assert_true(s1.blocking_waits > s0.blocking_waits);
    spindle_ctx_free(ctx);
}

static void busy_polling_calls_io_poll_repeatedly_within_the_window(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    int efd = new_eventfd();
    poller h;
    poller_init(&h, ctx, efd);
    poller_register(&h, false);
    tracker tr;
    tracker_init(&tr, ctx, MAX_NS, 2, 4);
    grow_window_to(&tr, 512000);

    unsigned polls0 = h.polls;
    step s = timer_step(&tr, GROW_WAIT_NS);
    /* Without spinning an iteration calls io_poll once, or twice when it
     * also leaves the polling state; a 512 us spin calls it many times. */
    assert_true(h.polls - polls0 > 4 * s.iterations);

    spindle_ctx_free(ctx);
    close(efd);
}

static void handler_without_io_poll_disables_busy_polling(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    if (strcmp(spindle_backend_name(ctx), "io_uring") == 0) {
        /* io_uring sees such a handler's fd from user space and keeps
         * polling: tests/test-uring.c tests that. */
        spindle_ctx_free(ctx);
        skip();
    }
    int efd = new_eventfd();
    poller h;
    poller_init(&h, ctx, efd);
    poller_register(&h, true);
    int p[2];
    harness_pipe(p);
    unsigned reads = 0;
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], false, harness_count_cb,
                                            NULL, NULL, &reads), 0);
    tracker tr;
    tracker_init(&tr, ctx, MAX_NS, 2, 4);
    spindle_stats s0 = stats_of(ctx);

    /* The window grows (4000, 8000, ...) but nothing spins: io_poll runs
     * once per iteration and the polling state is never entered. */
    unsigned iterations = 0;
    for (int i = 0; i < 5; i++) {
        iterations += timer_step(&tr, GROW_WAIT_NS).iterations;
        spindle_poll(ctx, false);
        iterations++;
    }
    assert_true(spindle_get_poll_ns(ctx) > 0);
    assert_int_equal(h.polls, iterations);
    assert_int_equal(h.begins, 0);
    assert_int_equal(h.ends, 0);
    spindle_stats s1 = stats_of(ctx);
    assert_int_equal(s1.poll_hits, s0.poll_hits);
    assert_int_equal(s1.poll_misses, s0.poll_misses);

    spindle_ctx_free(ctx);
    close(efd);
    close(p[0]);
    close(p[1]);
}

/* ------------------------------------------------------------------------
 * Polled hand-off from another thread
 */

enum { HANDOFF_ROUNDS = 50 };

typedef struct {
    atomic_bool flag;   /* the "completion" in shared memory */
    atomic_uint acks;   /* rounds the loop has seen */
    unsigned seen;
    unsigned reads;
} handoff;

static bool handoff_io_poll(void *opaque)
{
    handoff *h = opaque;
    if (atomic_exchange(&h->flag, false)) {
        h->seen++;
        atomic_store(&h->acks, h->seen);
        return true;
    }
    return false;
}

static void handoff_read(void *opaque)
{
    handoff *h = opaque;
    h->reads++;
}

static void *handoff_producer(void *opaque)
{
    handoff *h = opaque;
    for (unsigned i = 1; i <= HANDOFF_ROUNDS; i++) {
        atomic_store(&h->flag, true);
        while (atomic_load(&h->acks) < i) {
            sched_yield();
        }
    }
    return NULL;
}

static void polled_handoff_from_another_thread_is_seen_without_fd_write(void **state)
{
    /* The handler's eventfd is never written: only io_poll, reading memory
     * that another thread sets, can see the hand-off. A timer re-armed
     * 5 ms ahead bounds each sleep, since nothing would wake a loop that
     * went to sleep in the kernel. */
    spindle_ctx *ctx = harness_ctx_new();
    int efd = new_eventfd();
    handoff h;
    memset(&h, 0, sizeof(h));
    atomic_init(&h.flag, false);
    atomic_init(&h.acks, 0);
    assert_int_equal(spindle_set_fd_handler(ctx, efd, false, handoff_read,
                                            NULL, handoff_io_poll, &h), 0);
    bool timer_fired = false;
    spindle_timer *t = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC,
                                         set_flag_cb, &timer_fired);
    assert_non_null(t);

    pthread_t producer;
    assert_int_equal(pthread_create(&producer, NULL, handoff_producer, &h), 0);
    unsigned checked = 0;
    for (unsigned i = 0; h.seen < HANDOFF_ROUNDS; i++) {
        assert_true(i < 1000000);
        if (!spindle_timer_pending(t)) {
            spindle_timer_mod(t, spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) +
                                 5 * MS);
        }
        timer_fired = false;
        unsigned before = h.seen;
        bool progress = spindle_poll(ctx, true);
        assert_true(h.seen - before <= 1);
        if (h.seen != before && !timer_fired) {
            assert_true(progress);
            checked++;
        }
    }
    assert_int_equal(pthread_join(producer, NULL), 0);
    assert_int_equal(h.seen, HANDOFF_ROUNDS);
    assert_int_equal(h.reads, 0);
    assert_true(checked > 0);

    spindle_timer_free(t);
    spindle_ctx_free(ctx);
    close(efd);
}

/* ------------------------------------------------------------------------
 * Counters
 */

static void stats_count_every_iteration(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    unsigned runs = 0;
    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &runs);
    assert_non_null(bh);
    assert_int_equal(stats_of(ctx).iterations, 0);

    for (int i = 0; i < 7; i++) {
        spindle_poll(ctx, false);
    }
    assert_int_equal(stats_of(ctx).iterations, 7);
    for (int i = 0; i < 3; i++) {
        spindle_bh_schedule(bh); /* so the blocking iteration returns */
        assert_true(spindle_poll(ctx, true));
    }
    assert_int_equal(runs, 3);
    assert_int_equal(stats_of(ctx).iterations, 10);

    spindle_bh_delete(bh);
    spindle_ctx_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST(window_grows_from_4000_doubling_up_to_512000),
        TEST(window_grows_by_the_grow_factor),
        TEST(window_growth_is_capped_at_poll_max),
        TEST(window_shrinks_by_the_shrink_factor_after_long_waits),
        TEST(window_resets_to_zero_on_long_wait_when_shrink_is_zero),
        TEST(set_poll_params_restarts_window_at_zero),
        TEST(nonblocking_iterations_do_not_adapt_window),
        TEST(zero_poll_max_keeps_window_at_zero),
        TEST(window_adapts_while_busy_polling_is_disabled),
        TEST(poll_begin_runs_once_while_nonblocking_iterations_keep_polling),
        TEST(poll_end_runs_right_before_a_kernel_wait),
        TEST(poll_begin_and_poll_end_alternate_strictly),
        TEST(io_poll_called_once_per_iteration_with_zero_window),
        TEST(io_poll_returning_true_counts_as_progress),
        TEST(io_poll_true_ends_the_spin_and_counts_a_poll_hit),
        TEST(spin_running_out_of_window_counts_a_poll_miss),
        TEST(busy_polling_calls_io_poll_repeatedly_within_the_window),
        TEST(handler_without_io_poll_disables_busy_polling),
        TEST(polled_handoff_from_another_thread_is_seen_without_fd_write),
        TEST(stats_count_every_iteration),
    };
    return RUN_TESTS(tests);
}
