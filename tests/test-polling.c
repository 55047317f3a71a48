/* Busy polling: the adaptive windows (docs/design.md, polling windows), one per
 * io_poll handler; poll_begin and poll_end; io_poll calls and progress;
 * idle handlers; nested iterations inside io_poll; hand-off through shared
 * memory; the counters in spindle_stats.
 * SPDX-License-Identifier: MIT
 *
 * Every test runs on the fixture below: a fresh context and two pollers.
 * Waits of given lengths come from timers (a wait that no handler event
 * ends) and from timerfds (a wait that one handler's fd ends); their
 * lengths are the behaviour under test, with wide margins (1 ms against a
 * 200 ms maximum, 250 ms over it), never a stand-in for synchronisation.
 */
#include "harness.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
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
/* How long a window may go without adapting before its handler is idle
 * (spindle.h, spindle_set_poll_params). */
#define IDLE_NS (1000 * MS)

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

static int64_t now_ns(void)
{
    return spindle_now_ns(SPINDLE_CLOCK_MONOTONIC);
}

/* The window rules of docs/design.md (polling windows), to predict the next
 * window. */
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

/* Follows the largest window of one context across blocking iterations:
 * every iteration may keep it, grow it one step or shrink it one step,
 * nothing else; the changes are logged in order. (The largest moves like
 * one window as long as the windows move together: the tests that use a
 * tracker have no handler events, or only events of handlers whose
 * windows they do not compare.) */
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
 * start to the deadline) and at most (its duration seen from outside).
 * clean: the machine let the loop wait as the test meant it to, so the
 * rules decide the window; it started before the deadline by more than
 * its window, slept in the kernel, and was not seen preempted while it
 * spun. A loaded machine may start the loop after the deadline (or stop it
 * between t0 and its timeout computation until then): it then does not
 * block, and keeps every window. */
typedef struct {
    unsigned iterations;
    int64_t before, after;
    int64_t waited_at_least_ns;
    int64_t took_at_most_ns;
    bool clean;
} step;

/* Arm a timer delay_ns ahead and run single blocking iterations until it
 * fires; with a tracker, check each change of the largest window. A
 * wake-up before the deadline is allowed: it is just another iteration. */
static step run_timer(spindle_ctx *ctx, tracker *tr, int64_t delay_ns)
{
    bool fired = false;
    spindle_timer *t = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC,
                                         set_flag_cb, &fired);
    assert_non_null(t);
    uint64_t stalls = stats_of(ctx).poll_stalls;
    int64_t deadline = now_ns() + delay_ns;
    spindle_timer_mod(t, deadline);
    step s = { 0 };
    while (!fired) {
        assert_true(s.iterations < 100000);
        int64_t before = spindle_get_poll_ns(ctx);
        uint64_t blocked = stats_of(ctx).blocking_waits;
        int64_t t0 = now_ns();
        spindle_poll(ctx, true);
        int64_t t1 = now_ns();
        int64_t after = spindle_get_poll_ns(ctx);
        blocked = stats_of(ctx).blocking_waits - blocked;
        s.iterations++;
        if (tr) {
            tracker_note(tr, before, after);
        }
        if (fired) {
            s.before = before;
            s.after = after;
            s.waited_at_least_ns = deadline - t0 - DISPATCH_SLACK_NS;
            s.took_at_most_ns = t1 - t0;
            s.clean = s.waited_at_least_ns > before && blocked &&
                      stats_of(ctx).poll_stalls == stalls;
        }
    }
    spindle_timer_free(t);
    return s;
}

/* Whether a clean wait of delay_ns moves a window of window_ns (the rules
 * above, with ctx's parameters). */
static bool wait_moves(spindle_ctx *ctx, int64_t window_ns, int64_t delay_ns)
{
    int64_t max = stats_of(ctx).poll_max_ns;
    if (max == 0 || delay_ns <= window_ns) {
        return false;
    }
    return delay_ns < max ? window_ns < max : delay_ns > max && window_ns > 0;
}

/* A timed wait on a tracker. A step that was not clean and kept a window
 * that a clean one would have moved taught the test nothing: it runs
 * again. The iterations returned are those of every run. */
static step timer_step(tracker *tr, int64_t delay_ns)
{
    unsigned iterations = 0;
    for (unsigned tries = 0;; tries++) {
        assert_true(tries < 20);
        step s = run_timer(tr->ctx, tr, delay_ns);
        iterations += s.iterations;
        if (s.clean || s.after != s.before ||
            !wait_moves(tr->ctx, s.before, delay_ns)) {
            s.iterations = iterations;
            return s;
        }
    }
}

/* A wait of delay_ns, longer than the window and shorter than the maximum:
 * the iteration that fired the timer grew the window one step (unless the
 * machine stalled the loop longer than the maximum). */
static void grow_step_by(tracker *tr, int64_t delay_ns)
{
    step s = timer_step(tr, delay_ns);
    if (s.clean && s.took_at_most_ns < tr->p.max_ns) {
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
    unsigned countdown;         /* if set, io_poll reports progress at the
                                 * call that brings it to 0 */
    unsigned polls, poll_trues, reads;
    unsigned begins, ends;
    bool polling;               /* between poll_begin and poll_end */
    unsigned violations;        /* begin twice, end without begin, bad opaque */
    void *self;
    uint64_t blocking_waits_at_end;
    int64_t burn_ns;            /* io_poll busy-works this long */
    bool end_pending;
    unsigned notify_at;         /* if set, io_poll calls spindle_notify at
                                 * its call number notify_at */
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
        int64_t t0 = now_ns();
        while (now_ns() - t0 < h->burn_ns) {
        }
    }
    if (opaque != h->self) {
        h->violations++;
    }
    if (h->notify_at && h->polls == h->notify_at) {
        spindle_notify(h->ctx);
    }
    if (h->countdown && --h->countdown == 0) {
        h->poll_trues++;
        return true;
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
    eventfd_t v; /* an eventfd and a timerfd both read as 8 bytes */
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

/* Make h's fd a timerfd: its events then come when the test arms it. */
static void poller_use_timerfd(poller *h)
{
    close(h->fd);
    h->fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    assert_true(h->fd >= 0);
}

static int64_t window_of(const poller *h)
{
    return spindle_get_handler_poll_ns(h->ctx, h->fd);
}

/* ------------------------------------------------------------------------
 * The fixture: a context and two pollers on eventfds, a and b, not yet
 * registered. Every test gets a fresh one (and the watchdog).
 */

typedef struct {
    spindle_ctx *ctx;
    poller a, b;
} fixture;

static int fixture_setup(void **state)
{
    fixture *f = harness_fixture_new(state, sizeof(*f));
    f->ctx = harness_ctx_new();
    poller_init(&f->a, f->ctx, new_eventfd());
    poller_init(&f->b, f->ctx, new_eventfd());
    return 0;
}

static int fixture_teardown(void **state)
{
    fixture *f = *state;
    spindle_ctx_free(f->ctx);
    close(f->a.fd);
    close(f->b.fd);
    free(f);
    return harness_watchdog_disarm(state);
}

#define FIXTURE_TEST(fn) \
    cmocka_unit_test_setup_teardown(fn, fixture_setup, fixture_teardown)

/* ------------------------------------------------------------------------
 * The window of a context whose waits no handler event ends (timers): every
 * window moves together, as the single window before per-handler windows
 */

static void window_grows_from_4000_doubling_up_to_512000(void **state)
{
    fixture *f = *state;
    tracker tr;
    tracker_init(&tr, f->ctx, MAX_NS, 2, 4);

    assert_int_equal(grow_window_to(&tr, 512000), 512000);

    const int64_t expected[] = { 4000, 8000, 16000, 32000,
                                 64000, 128000, 256000, 512000 };
    assert_int_equal(tr.nchanges, 8);
    for (unsigned i = 0; i < 8; i++) {
        assert_int_equal(tr.changes[i], expected[i]);
    }
    assert_int_equal(stats_of(f->ctx).poll_ns, 512000);
}

static void window_grows_by_the_grow_factor(void **state)
{
    fixture *f = *state;
    tracker tr;
    tracker_init(&tr, f->ctx, MAX_NS, 3, 4);

    assert_int_equal(grow_window_to(&tr, 324000), 324000);

    const int64_t expected[] = { 4000, 12000, 36000, 108000, 324000 };
    assert_int_equal(tr.nchanges, 5);
    for (unsigned i = 0; i < 5; i++) {
        assert_int_equal(tr.changes[i], expected[i]);
    }
}

static void window_growth_is_capped_at_poll_max(void **state)
{
    /* Grow factor 200 under a 50 ms maximum, 2 ms waits: 4000, 800000,
     * then 160 ms is capped to 50 ms. A 2 ms wait is then within the
     * window: kept. */
    fixture *f = *state;
    tracker tr;
    tracker_init(&tr, f->ctx, 50 * MS, 200, 4);

    for (unsigned i = 0; spindle_get_poll_ns(f->ctx) < 50 * MS; i++) {
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
    assert_int_equal(spindle_get_poll_ns(f->ctx), 50 * MS);
}

static void window_shrinks_by_the_shrink_factor_after_long_waits(void **state)
{
    fixture *f = *state;
    tracker tr;
    tracker_init(&tr, f->ctx, MAX_NS, 2, 4);
    assert_int_equal(grow_window_to(&tr, 512000), 512000);

    tr.nchanges = 0;
    shrink_step(&tr);
    assert_int_equal(spindle_get_poll_ns(f->ctx), 128000);
    shrink_step(&tr);
    assert_int_equal(spindle_get_poll_ns(f->ctx), 32000);
    assert_int_equal(tr.nchanges, 2);
    assert_int_equal(stats_of(f->ctx).poll_ns, 32000);
}

static void window_resets_to_zero_on_long_wait_when_shrink_is_zero(void **state)
{
    fixture *f = *state;
    tracker tr;
    tracker_init(&tr, f->ctx, MAX_NS, 2, 0);
    grow_window_to(&tr, 8000);

    shrink_step(&tr);
    assert_int_equal(spindle_get_poll_ns(f->ctx), 0);
}

static void set_poll_params_restarts_window_at_zero(void **state)
{
    fixture *f = *state;
    tracker tr;
    tracker_init(&tr, f->ctx, MAX_NS, 2, 4);
    grow_window_to(&tr, 16000);

    assert_int_equal(spindle_set_poll_params(f->ctx, MAX_NS, 2, 4), 0);
    assert_int_equal(spindle_get_poll_ns(f->ctx), 0);
    assert_int_equal(stats_of(f->ctx).poll_ns, 0);
}

static void nonblocking_iterations_do_not_adapt_window(void **state)
{
    /* Non-blocking iterations that take far longer than the window (io_poll
     * works 50 us without progress), with and without progress: under the
     * blocking rules each of them would grow the window. */
    fixture *f = *state;
    poller *h = &f->a;
    poller_register(h, false);
    unsigned bh_runs = 0;
    spindle_bh *bh = spindle_bh_new(f->ctx, harness_count_cb, &bh_runs);
    assert_non_null(bh);
    tracker tr;
    tracker_init(&tr, f->ctx, MAX_NS, 2, 4);

    for (int round = 0; round < 2; round++) {
        int64_t w = spindle_get_poll_ns(f->ctx);
        int64_t hw = window_of(h);
        for (int i = 0; i < 50; i++) {
            if (i % 3 == 0) {
                spindle_bh_schedule(bh);
            }
            if (i % 5 == 0) {
                assert_int_equal(eventfd_write(h->fd, 1), 0);
            }
            h->burn_ns = 50 * US;
            spindle_poll(f->ctx, false);
            h->burn_ns = 0;
            assert_int_equal(spindle_get_poll_ns(f->ctx), w);
            assert_int_equal(window_of(h), hw);
        }
        /* From 0, then from a grown window. */
        grow_step(&tr);
        assert_true(spindle_get_poll_ns(f->ctx) > 0);
    }
    assert_true(bh_runs > 0);
    assert_true(h->reads > 0);

    spindle_bh_delete(bh);
}

static void zero_poll_max_keeps_window_at_zero(void **state)
{
    fixture *f = *state;
    poller_register(&f->a, false);
    tracker tr;
    tracker_init(&tr, f->ctx, 0, 2, 4);
    assert_int_equal(stats_of(f->ctx).poll_max_ns, 0);

    for (int i = 0; i < 5; i++) {
        timer_step(&tr, GROW_WAIT_NS);
        assert_int_equal(eventfd_write(f->a.fd, 1), 0);
        spindle_poll(f->ctx, true);
        spindle_poll(f->ctx, false);
        assert_int_equal(spindle_get_poll_ns(f->ctx), 0);
        assert_int_equal(window_of(&f->a), 0);
    }
    assert_int_equal(tr.nchanges, 0);
}

static void window_adapts_while_busy_polling_is_disabled(void **state)
{
    /* A handler without io_poll turns busy polling off, not adaptation. */
    fixture *f = *state;
    unsigned reads = 0;
    assert_int_equal(spindle_set_fd_handler(f->ctx, f->b.fd, false,
                                            harness_count_cb, NULL, NULL,
                                            &reads), 0);
    tracker tr;
    tracker_init(&tr, f->ctx, MAX_NS, 2, 4);

    assert_int_equal(grow_window_to(&tr, 16000), 16000);
    assert_int_equal(tr.nchanges, 3);
    assert_int_equal(tr.changes[0], 4000);
    assert_int_equal(tr.changes[2], 16000);
}

/* ------------------------------------------------------------------------
 * A window per handler
 */

typedef struct {
    int64_t a, b, largest;
    int64_t took_ns; /* the iteration with the event, seen from outside */
} windows;

static windows windows_now(fixture *f)
{
    return (windows){ window_of(&f->a), window_of(&f->b),
                      spindle_get_poll_ns(f->ctx), 0 };
}

/* One wait that h's fd ends: its timerfd fires delay_ns from now, and
 * blocking iterations run until h's io_read has run. An iteration before
 * that one (there should be none) must not change a window. *clean as in
 * a step: the loop started more than its window before the event was due,
 * and was not seen preempted while it spun. */
static windows fd_step_once(fixture *f, poller *h, int64_t delay_ns,
                            bool *clean)
{
    struct itimerspec its = { .it_value = { .tv_sec = delay_ns / 1000000000,
                                            .tv_nsec = delay_ns % 1000000000 } };
    uint64_t stalls = stats_of(f->ctx).poll_stalls;
    int64_t due = now_ns() + delay_ns; /* the event comes at or after it */
    assert_int_equal(timerfd_settime(h->fd, 0, &its, NULL), 0);
    unsigned reads0 = h->reads;
    windows w = windows_now(f);
    for (unsigned i = 0; h->reads == reads0; i++) {
        assert_true(i < 1000);
        windows before = windows_now(f);
        assert_int_equal(before.a, w.a);
        assert_int_equal(before.b, w.b);
        int64_t t0 = now_ns();
        spindle_poll(f->ctx, true);
        w = windows_now(f);
        w.took_ns = now_ns() - t0;
        *clean = due - t0 - DISPATCH_SLACK_NS > before.largest &&
                 stats_of(f->ctx).poll_stalls == stalls;
    }
    return w;
}

/* Whether a step from windows start to w taught the test something: it
 * was clean, moved a window, or was meant to move none. */
static bool step_counts(fixture *f, windows start, windows w, bool clean,
                        int64_t delay_ns)
{
    return clean || w.a != start.a || w.b != start.b ||
           !(wait_moves(f->ctx, start.a, delay_ns) ||
             wait_moves(f->ctx, start.b, delay_ns));
}

/* fd_step_once, run again until the step counts (timer_step). */
static windows fd_step(fixture *f, poller *h, int64_t delay_ns)
{
    windows start = windows_now(f);
    for (unsigned tries = 0;; tries++) {
        assert_true(tries < 20);
        bool clean = false;
        windows w = fd_step_once(f, h, delay_ns, &clean);
        if (step_counts(f, start, w, clean, delay_ns)) {
            return w;
        }
    }
}

/* One wait that a timer ends, delay_ns long, run again until it counts. */
static windows timer_step_all(fixture *f, int64_t delay_ns)
{
    windows start = windows_now(f);
    for (unsigned tries = 0;; tries++) {
        assert_true(tries < 20);
        step s = run_timer(f->ctx, NULL, delay_ns);
        windows w = windows_now(f);
        w.took_ns = s.took_at_most_ns;
        if (step_counts(f, start, w, s.clean, delay_ns)) {
            return w;
        }
    }
}

/* Poller a and b on timerfds, registered, and the test's parameters. */
static params two_sources(fixture *f)
{
    params p = { MAX_NS, 2, 4 };
    poller_use_timerfd(&f->a);
    poller_use_timerfd(&f->b);
    poller_register(&f->a, false);
    poller_register(&f->b, false);
    assert_int_equal(spindle_set_poll_params(f->ctx, p.max_ns, p.grow,
                                             p.shrink), 0);
    /* The registrations notified the context: take that wake-up now. */
    harness_drain(f->ctx);
    return p;
}

static void each_window_follows_its_own_handlers_events(void **state)
{
    /* Two sources with different event rates in one context: a, fast,
     * ends waits after 1 ms; b, slow, after 250 ms. Each wait adapts the
     * window of the handler whose event ended it and no other. The
     * context's own wake-up handler has no event, so the largest window
     * is the larger of the two. */
    fixture *f = *state;
    params p = two_sources(f);
    windows w = windows_now(f);
    assert_int_equal(w.a, 0);
    assert_int_equal(w.b, 0);

    /* b grows first, on three short waits; a is left alone. */
    const int64_t b_grows[] = { 4000, 8000, 16000 };
    for (int i = 0; i < 3; i++) {
        w = fd_step(f, &f->b, GROW_WAIT_NS);
        assert_true(w.took_ns < p.max_ns);
        assert_int_equal(w.b, b_grows[i]);
        assert_int_equal(w.a, 0);
        assert_int_equal(w.largest, w.b);
    }

    /* Then a's events come fast and b's slowly: a grows on each of its
     * waits, b shrinks on each of its own, neither touches the other. */
    const struct {
        bool fast;
        int64_t a, b;
    } seq[] = {
        { true, 4000, 16000 }, { true, 8000, 16000 }, { false, 8000, 4000 },
        { true, 16000, 4000 }, { true, 32000, 4000 }, { false, 32000, 1000 },
    };
    for (unsigned i = 0; i < sizeof(seq) / sizeof(seq[0]); i++) {
        if (seq[i].fast) {
            w = fd_step(f, &f->a, GROW_WAIT_NS);
            assert_true(w.took_ns < p.max_ns);
        } else {
            w = fd_step(f, &f->b, SHRINK_WAIT_NS);
        }
        assert_int_equal(w.a, seq[i].a);
        assert_int_equal(w.b, seq[i].b);
        assert_int_equal(w.largest, w.a > w.b ? w.a : w.b);
    }
    assert_int_equal(stats_of(f->ctx).poll_ns, 32000);
}

static void wait_no_handler_event_ended_adapts_every_window(void **state)
{
    fixture *f = *state;
    params p = two_sources(f);
    for (int i = 0; i < 3; i++) {
        fd_step(f, &f->a, GROW_WAIT_NS); /* a: 4000, 8000, 16000 */
    }
    windows w = fd_step(f, &f->b, GROW_WAIT_NS); /* b: 4000 */
    assert_int_equal(w.a, 16000);
    assert_int_equal(w.b, 4000);

    /* A timer ends the wait: both grow one step each, from their own
     * windows. (Arming the timer wakes the loop first: that iteration's
     * wait ended with the context's own wake-up, which adapts no user
     * handler's window.) */
    w = timer_step_all(f, GROW_WAIT_NS);
    assert_true(w.took_ns < p.max_ns);
    assert_int_equal(w.a, 32000);
    assert_int_equal(w.b, 8000);

    /* A long one: both shrink. */
    w = timer_step_all(f, SHRINK_WAIT_NS);
    assert_int_equal(w.a, 8000);
    assert_int_equal(w.b, 2000);
    assert_int_equal(w.largest, 8000);
}

static void loop_spins_for_the_largest_window(void **state)
{
    /* a's window opens to 512 us on its own events while b's stays 0; a
     * wait ended by a's fd then calls b's io_poll throughout a 512 us
     * spin, not once as b's own window would have it. */
    fixture *f = *state;
    two_sources(f);
    windows w;
    for (unsigned i = 0; (w = windows_now(f)).a < 512000; i++) {
        assert_true(i < 20);
        fd_step(f, &f->a, GROW_WAIT_NS);
    }
    assert_int_equal(w.a, 512000);
    assert_int_equal(w.b, 0);
    assert_int_equal(w.largest, 512000);

    unsigned polls0 = f->b.polls;
    fd_step(f, &f->a, GROW_WAIT_NS);
    /* Without spinning an iteration calls io_poll once, or twice when it
     * also leaves the polling state. */
    assert_true(f->b.polls - polls0 > 8);
    assert_int_equal(window_of(&f->b), 0);
}

static void set_poll_params_restarts_every_window(void **state)
{
    fixture *f = *state;
    params p = two_sources(f);
    fd_step(f, &f->a, GROW_WAIT_NS);
    fd_step(f, &f->b, GROW_WAIT_NS);
    windows w = timer_step_all(f, GROW_WAIT_NS);
    assert_int_equal(w.a, 8000);
    assert_int_equal(w.b, 8000);

    assert_int_equal(spindle_set_poll_params(f->ctx, p.max_ns, p.grow,
                                             p.shrink), 0);
    w = windows_now(f);
    assert_int_equal(w.a, 0);
    assert_int_equal(w.b, 0);
    assert_int_equal(w.largest, 0);
}

static void replaced_handler_keeps_its_window(void **state)
{
    fixture *f = *state;
    two_sources(f);
    fd_step(f, &f->a, GROW_WAIT_NS);
    fd_step(f, &f->a, GROW_WAIT_NS);
    assert_int_equal(window_of(&f->a), 8000);

    /* New callbacks (an io_write too; a timerfd is never writable), same
     * fd: the window belongs to the event source. */
    assert_int_equal(spindle_set_fd_handler(f->ctx, f->a.fd, false,
                                            poller_read, poller_read,
                                            poller_io_poll, &f->a), 0);
    assert_int_equal(window_of(&f->a), 8000);

    /* Without an io_poll it has no window; with one again, it starts at 0. */
    assert_int_equal(spindle_set_fd_handler(f->ctx, f->a.fd, false,
                                            poller_read, NULL, NULL,
                                            &f->a), 0);
    assert_int_equal(window_of(&f->a), -ENOENT);
    poller_register(&f->a, false);
    assert_int_equal(window_of(&f->a), 0);
}

static void handler_window_of_what_has_none_is_an_error(void **state)
{
    fixture *f = *state;
    poller_register(&f->a, false);
    assert_int_equal(spindle_get_handler_poll_ns(NULL, f->a.fd), -EINVAL);
    assert_int_equal(spindle_get_handler_poll_ns(f->ctx, -1), -EBADF);
    /* Not registered, then registered without an io_poll. */
    assert_int_equal(spindle_get_handler_poll_ns(f->ctx, f->b.fd), -ENOENT);
    assert_int_equal(spindle_set_fd_handler(f->ctx, f->b.fd, false,
                                            poller_read, NULL, NULL,
                                            &f->b), 0);
    assert_int_equal(spindle_get_handler_poll_ns(f->ctx, f->b.fd), -ENOENT);
    assert_int_equal(spindle_get_handler_poll_ns(f->ctx, 1 << 20), -ENOENT);
    assert_int_equal(spindle_get_handler_poll_ns(f->ctx, f->a.fd), 0);
}

/* ------------------------------------------------------------------------
 * Idle handlers
 */

static void idle_handler_leaves_the_spin_until_its_next_event(void **state)
{
    /* b's window opens to 40 ms on its own events, a's to 4 ms (grow
     * factor 10). Then only a has events, each found by the spin at once,
     * for more than the idle time: b's window, which nothing adapts, stops
     * counting, and b's io_poll runs once per spin instead of once per
     * round. b's next event brings it back. */
    fixture *f = *state;
    two_sources(f);
    assert_int_equal(spindle_set_poll_params(f->ctx, MAX_NS, 10, 4), 0);
    while (window_of(&f->b) < 20 * MS) {
        fd_step(f, &f->b, 20 * MS);
    }
    while (window_of(&f->a) < 2 * MS) {
        fd_step(f, &f->a, 2 * MS);
    }
    windows w = windows_now(f);
    assert_int_equal(w.a, 4 * MS);
    assert_int_equal(w.b, 40 * MS);
    assert_int_equal(w.largest, 40 * MS);

    /* A spin of 50 rounds (a's io_poll returns true at its 50th call)
     * calls b's io_poll in each round. (Each counted spin comes after a
     * non-blocking iteration: on io_uring that re-checks the timerfds read
     * last, which would otherwise end a spin early to look at them.) */
    harness_drain(f->ctx);
    unsigned polls0 = f->b.polls;
    f->a.countdown = 50;
    assert_true(spindle_poll(f->ctx, true));
    assert_int_equal(f->b.polls - polls0, 50);

    int64_t until = now_ns() + IDLE_NS + 100 * MS;
    while (now_ns() < until) {
        atomic_store(&f->a.ready, true);
        assert_true(spindle_poll(f->ctx, true));
    }
    /* a's window may have grown meanwhile (a preempted loop waits long),
     * b's has not moved: it no longer counts. */
    w = windows_now(f);
    assert_int_equal(w.b, 40 * MS);
    assert_int_equal(w.largest, w.a);
    harness_drain(f->ctx);
    polls0 = f->b.polls;
    f->a.countdown = 50;
    assert_true(spindle_poll(f->ctx, true));
    assert_int_equal(f->b.polls - polls0, 1);

    /* The context's wake-up handler has had no event either, but a notify
     * still ends a spin at once: a's io_poll notifies at its next call and
     * then returns false until its 1000th. */
    polls0 = f->a.polls;
    f->a.notify_at = f->a.polls + 1;
    f->a.countdown = 1000;
    assert_false(spindle_poll(f->ctx, true));
    assert_true(f->a.polls - polls0 <= 2);
    f->a.countdown = 0;
    f->a.notify_at = 0;

    /* b's event, found in the first round, brings it back. */
    atomic_store(&f->b.ready, true);
    assert_true(spindle_poll(f->ctx, true));
    assert_int_equal(f->b.poll_trues, 1);
    w = windows_now(f);
    assert_int_equal(w.largest, w.a > w.b ? w.a : w.b);
    harness_drain(f->ctx);
    polls0 = f->b.polls;
    f->a.countdown = 50;
    assert_true(spindle_poll(f->ctx, true));
    assert_int_equal(f->b.polls - polls0, 50);
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
    fixture *f = *state;
    poller *a = &f->a, *b = &f->b;
    poller_register(a, true);
    poller_register(b, true);
    tracker tr;
    tracker_init(&tr, f->ctx, MAX_NS, 2, 4);
    open_window(&tr, a);
    unsigned ab = a->begins, ae = a->ends, bb = b->begins, be = b->ends;

    enter_polling_state(&tr, a);
    /* Each handler got one poll_begin on entering, and no poll_end. */
    assert_int_equal(a->begins, ab + 1);
    assert_int_equal(b->begins, bb + 1);
    assert_int_equal(a->ends, ae);
    assert_int_equal(b->ends, be);

    /* Non-blocking iterations, some with progress, keep the state: no
     * begin or end at all. */
    for (int i = 0; i < 20; i++) {
        if (i % 4 == 0) {
            atomic_store(&b->ready, true);
        }
        spindle_poll(f->ctx, false);
    }
    assert_int_equal(b->poll_trues, 5);
    assert_int_equal(a->begins, ab + 1);
    assert_int_equal(b->begins, bb + 1);
    assert_int_equal(a->ends, ae);
    assert_int_equal(b->ends, be);
    assert_true(a->polling);
    assert_true(b->polling);
    assert_int_equal(a->violations + b->violations, 0);
}

static void poll_end_runs_right_before_a_kernel_wait(void **state)
{
    fixture *f = *state;
    poller *h = &f->a;
    poller_register(h, true);
    tracker tr;
    tracker_init(&tr, f->ctx, MAX_NS, 2, 4);
    open_window(&tr, h);
    enter_polling_state(&tr, h);
    spindle_poll(f->ctx, false);
    assert_true(h->polling);
    unsigned ends0 = h->ends;

    /* Blocking iterations until a 1 ms timer fires: the window (a few us)
     * runs out long before, so the loop sleeps, after poll_end. */
    bool fired = false;
    spindle_timer *t = spindle_timer_new(f->ctx, SPINDLE_CLOCK_MONOTONIC,
                                         set_flag_cb, &fired);
    assert_non_null(t);
    spindle_timer_mod(t, now_ns() + MS);
    h->end_pending = false;
    for (unsigned i = 0; !fired; i++) {
        assert_true(i < 100000);
        spindle_poll(f->ctx, true);
        if (h->end_pending) {
            /* The iteration that ran poll_end slept after it, once. */
            assert_int_equal(stats_of(f->ctx).blocking_waits,
                             h->blocking_waits_at_end + 1);
            h->end_pending = false;
        }
    }
    assert_true(h->ends > ends0);
    assert_false(h->polling);
    assert_int_equal(h->violations, 0);

    spindle_timer_free(t);
}

static void poll_begin_and_poll_end_alternate_strictly(void **state)
{
    /* A deterministic mix of blocking and non-blocking iterations. The
     * 10 ms maximum keeps the windows moving both ways: 30 us timer waits
     * grow them all, and so may eventfd wake-ups (a's: the loop spins its
     * whole window, then finds the fd; on io_uring the first round of a
     * spin finds it, a wait of 0), 20 ms timer waits shrink them all. The
     * maximum is far above 30 us because a VM's host may wake a sleeping
     * loop milliseconds late: with 100 us, the 30 us waits that slept
     * shrank the windows instead, and on io_uring (where nothing else
     * grows them) they stayed closed in one run in four. */
    fixture *f = *state;
    poller *a = &f->a, *b = &f->b;
    poller_register(a, true);
    poller_register(b, true);
    unsigned bh_runs = 0;
    spindle_bh *bh = spindle_bh_new(f->ctx, harness_count_cb, &bh_runs);
    assert_non_null(bh);
    assert_int_equal(spindle_set_poll_params(f->ctx, 10 * MS, 2, 4), 0);

    uint32_t rng = 12345;
    for (int op = 0; op < 200; op++) {
        rng = rng * 1103515245u + 12345u;
        switch ((rng >> 16) % 6) {
        case 0:
            run_timer(f->ctx, NULL, 20 * MS);
            break;
        case 5:
            run_timer(f->ctx, NULL, 30 * US);
            break;
        case 1:
            for (int i = 0; i < 3; i++) {
                spindle_poll(f->ctx, false);
            }
            break;
        case 2: {
            unsigned r0 = a->reads;
            assert_int_equal(eventfd_write(a->fd, 1), 0);
            for (unsigned i = 0; a->reads == r0; i++) {
                assert_true(i < 10);
                spindle_poll(f->ctx, true);
            }
            break;
        }
        case 3: {
            unsigned r0 = bh_runs;
            spindle_bh_schedule(bh);
            for (unsigned i = 0; bh_runs == r0; i++) {
                assert_true(i < 10);
                spindle_poll(f->ctx, true);
            }
            break;
        }
        case 4:
            atomic_store(&b->ready, true);
            for (unsigned i = 0; atomic_load(&b->ready); i++) {
                assert_true(i < 10);
                spindle_poll(f->ctx, (rng >> 8) & 1);
            }
            break;
        }
        /* Both handlers are always in the same state. */
        assert_int_equal(a->polling, b->polling);
    }
    assert_int_equal(a->violations, 0);
    assert_int_equal(b->violations, 0);
    assert_true(a->begins > 1);
    assert_true(a->ends > 0);
    assert_true(a->begins - a->ends <= 1);
    assert_int_equal(a->begins, b->begins);
    assert_int_equal(a->ends, b->ends);

    spindle_bh_delete(bh);
}

/* ------------------------------------------------------------------------
 * io_poll
 */

static void io_poll_called_once_per_iteration_with_zero_window(void **state)
{
    fixture *f = *state;
    poller *h = &f->a;
    poller_register(h, true);
    tracker tr;
    tracker_init(&tr, f->ctx, 0, 2, 4); /* the window stays 0 */

    for (int i = 0; i < 20; i++) {
        spindle_poll(f->ctx, false);
    }
    assert_int_equal(h->polls, 20);

    unsigned iterations = 0;
    for (int i = 0; i < 3; i++) {
        iterations += timer_step(&tr, GROW_WAIT_NS).iterations;
    }
    assert_int_equal(h->polls, 20 + iterations);
    assert_int_equal(h->begins, 0); /* never entered busy polling */
    assert_int_equal(h->violations, 0);
}

static void io_poll_returning_true_counts_as_progress(void **state)
{
    fixture *f = *state;
    poller *h = &f->a;
    poller_register(h, false);
    harness_drain(f->ctx);

    atomic_store(&h->ready, true);
    assert_true(spindle_poll(f->ctx, false));
    assert_int_equal(h->poll_trues, 1);
    assert_false(spindle_poll(f->ctx, false));
    assert_int_equal(h->reads, 0);
}

static void io_poll_true_ends_the_spin_and_counts_a_poll_hit(void **state)
{
    fixture *f = *state;
    poller *h = &f->a;
    poller_register(h, false);
    tracker tr;
    tracker_init(&tr, f->ctx, MAX_NS, 2, 4);
    grow_window_to(&tr, 512000);
    harness_drain(f->ctx);

    spindle_stats s0 = stats_of(f->ctx);
    unsigned polls0 = h->polls;
    atomic_store(&h->ready, true);
    /* No timer, no fd event: the spin seeing io_poll's true is the only
     * way this blocking iteration can end. The spin stops at that first
     * call, and the loop does not sleep: every handler has an io_poll and
     * the timeout became 0. */
    assert_true(spindle_poll(f->ctx, true));
    spindle_stats s1 = stats_of(f->ctx);
    assert_int_equal(h->poll_trues, 1);
    assert_int_equal(h->polls, polls0 + 1);
    assert_int_equal(s1.poll_hits, s0.poll_hits + 1);
    assert_int_equal(s1.poll_misses, s0.poll_misses);
    assert_int_equal(s1.kernel_waits, s0.kernel_waits);
    /* The event was there when the spin began: the wait was 0, within
     * every window, so none changed. */
    assert_int_equal(window_of(h), 512000);
    assert_int_equal(spindle_get_poll_ns(f->ctx), 512000);
}

static void spin_running_out_of_window_counts_a_poll_miss(void **state)
{
    fixture *f = *state;
    tracker tr;
    tracker_init(&tr, f->ctx, MAX_NS, 2, 4);
    grow_window_to(&tr, 64000);

    spindle_stats s0 = stats_of(f->ctx);
    grow_step(&tr); /* 1 ms of nothing: the 64 us spin runs out */
    spindle_stats s1 = stats_of(f->ctx);
    assert_true(s1.poll_misses > s0.poll_misses);
    assert_true(s1.blocking_waits > s0.blocking_waits);
}

static void busy_polling_calls_io_poll_repeatedly_within_the_window(void **state)
{
    fixture *f = *state;
    poller *h = &f->a;
    poller_register(h, false);
    tracker tr;
    tracker_init(&tr, f->ctx, MAX_NS, 2, 4);
    grow_window_to(&tr, 512000);

    unsigned polls0 = h->polls;
    step s = timer_step(&tr, GROW_WAIT_NS);
    /* Without spinning an iteration calls io_poll once, or twice when it
     * also leaves the polling state; a 512 us spin calls it many times. */
    assert_true(h->polls - polls0 > 4 * s.iterations);
}

/* A context with spin_yield_ns in place of the fixture's. */
static void use_ctx_with_spin_yield(fixture *f, int64_t spin_yield_ns)
{
    spindle_options o = SPINDLE_OPTIONS_INIT;
    o.spin_yield_ns = spin_yield_ns;
    spindle_ctx_free(f->ctx);
    f->ctx = spindle_ctx_new_opts(&o);
    assert_non_null(f->ctx);
    f->a.ctx = f->ctx;
    f->b.ctx = f->ctx;
}

/* A 1 ms wait with a 512 us window: the spin runs out its window, and
 * then the loop blocks. */
typedef struct {
    uint64_t yields;
    int64_t took_ns;
    step s;
} spin_yields;

static spin_yields yields_in_a_spin(fixture *f)
{
    poller_register(&f->a, false);
    tracker tr;
    tracker_init(&tr, f->ctx, MAX_NS, 2, 4);
    grow_window_to(&tr, 512000);
    uint64_t y0 = stats_of(f->ctx).poll_yields;
    int64_t t0 = now_ns();
    spin_yields r = { .s = timer_step(&tr, GROW_WAIT_NS) };
    r.took_ns = now_ns() - t0;
    r.yields = stats_of(f->ctx).poll_yields - y0;
    return r;
}

/* The yields of a spin are at least spin_yield_ns apart, and a spin as
 * long as 512 us (a clean one ran out its whole window) yields. */
static void check_yields(spin_yields r, int64_t spin_yield_ns)
{
    assert_true(r.yields <=
                (uint64_t)(r.took_ns / spin_yield_ns) + r.s.iterations);
    if (r.s.clean) {
        assert_true(r.yields >= 1);
    }
}

static void a_spin_yields_its_cpu_every_spin_yield_ns(void **state)
{
    fixture *f = *state;
    use_ctx_with_spin_yield(f, 4096);
    check_yields(yields_in_a_spin(f), 4096);
}

static void a_spin_yields_its_cpu_every_64000_ns_when_asked_so(void **state)
{
    fixture *f = *state;
    use_ctx_with_spin_yield(f, 64000);
    check_yields(yields_in_a_spin(f), 64000);
}

static void a_spin_never_yields_by_default(void **state)
{
    fixture *f = *state;
    spin_yields r = yields_in_a_spin(f);
    assert_int_equal(r.yields, 0);
    assert_true(stats_of(f->ctx).poll_misses > 0); /* it did spin */
}

static void handler_without_io_poll_disables_busy_polling(void **state)
{
    fixture *f = *state;
    if (strcmp(spindle_backend_name(f->ctx), "io_uring") == 0) {
        /* io_uring sees such a handler's fd from user space and keeps
         * polling: tests/test-uring.c tests that. */
        skip();
    }
    poller *h = &f->a;
    poller_register(h, true);
    int p[2];
    harness_pipe(p);
    unsigned reads = 0;
    assert_int_equal(spindle_set_fd_handler(f->ctx, p[0], false,
                                            harness_count_cb, NULL, NULL,
                                            &reads), 0);
    tracker tr;
    tracker_init(&tr, f->ctx, MAX_NS, 2, 4);
    spindle_stats s0 = stats_of(f->ctx);

    /* The window grows (4000, 8000, ...) but nothing spins: io_poll runs
     * once per iteration and the polling state is never entered. */
    unsigned iterations = 0;
    for (int i = 0; i < 5; i++) {
        iterations += timer_step(&tr, GROW_WAIT_NS).iterations;
        spindle_poll(f->ctx, false);
        iterations++;
    }
    assert_true(spindle_get_poll_ns(f->ctx) > 0);
    assert_int_equal(h->polls, iterations);
    assert_int_equal(h->begins, 0);
    assert_int_equal(h->ends, 0);
    spindle_stats s1 = stats_of(f->ctx);
    assert_int_equal(s1.poll_hits, s0.poll_hits);
    assert_int_equal(s1.poll_misses, s0.poll_misses);

    spindle_set_fd_handler(f->ctx, p[0], false, NULL, NULL, NULL, NULL);
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
    fixture *f = *state;
    spindle_ctx *ctx = f->ctx;
    int efd = f->a.fd;
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
}

/* ------------------------------------------------------------------------
 * Nested iterations inside io_poll (docs/design.md, polling windows: a
 * nested spindle_poll never calls an io_poll that is running further up
 * the stack)
 */

/* A handler whose io_poll, when it finds work, waits for something with a
 * nested blocking loop, as a device does that must drain a request before
 * it can go on. A call of its io_poll while it runs is counted and refused
 * (a real one would recurse until the stack overflows). */
typedef struct {
    spindle_ctx *ctx;
    int fd;
    atomic_bool work;
    bool running;
    unsigned calls, reentries, works, reads;
    /* What the nested loop waits for, and what it saw meanwhile. */
    bool nested;
    spindle_bh *bh;            /* scheduled by another thread */
    bool bh_ran, timer_fired;
    unsigned nested_iterations;
    poller *other;             /* another polled handler, with work */
    spindle_timer *timer;      /* due at once */
    pthread_t thread;
} waiter;

static void *waiter_thread(void *opaque)
{
    waiter *w = opaque;
    /* The handler's own fd: its io_read may still run in the nested loop. */
    assert_int_equal(eventfd_write(w->fd, 1), 0);
    spindle_bh_schedule(w->bh);
    return NULL;
}

static void waiter_bh(void *opaque)
{
    ((waiter *)opaque)->bh_ran = true;
}

static void waiter_read(void *opaque)
{
    waiter *w = opaque;
    eventfd_t v;
    (void)eventfd_read(w->fd, &v);
    w->reads++;
}

static bool waiter_io_poll(void *opaque)
{
    waiter *w = opaque;
    w->calls++;
    if (w->running) {
        w->reentries++;
        return false;
    }
    if (!atomic_exchange(&w->work, false)) {
        return false;
    }
    w->works++;
    if (!w->nested) {
        return true;
    }
    w->running = true;
    atomic_store(&w->other->ready, true);
    spindle_timer_mod(w->timer, 0);
    unsigned reads0 = w->reads;
    assert_int_equal(pthread_create(&w->thread, NULL, waiter_thread, w), 0);
    while (!w->bh_ran || w->reads == reads0 || !w->timer_fired ||
           atomic_load(&w->other->ready)) {
        assert_true(w->nested_iterations < 100000);
        spindle_poll(w->ctx, true);
        w->nested_iterations++;
    }
    assert_int_equal(pthread_join(w->thread, NULL), 0);
    w->running = false;
    return true;
}

static void waiter_setup(fixture *f, waiter *w)
{
    memset(w, 0, sizeof(*w));
    w->ctx = f->ctx;
    w->fd = f->a.fd; /* fixture's eventfd; poller a stays unregistered */
    atomic_init(&w->work, false);
    w->other = &f->b;
    w->bh = spindle_bh_new(f->ctx, waiter_bh, w);
    w->timer = spindle_timer_new(f->ctx, SPINDLE_CLOCK_MONOTONIC, set_flag_cb,
                                 &w->timer_fired);
    assert_non_null(w->bh);
    assert_non_null(w->timer);
    assert_int_equal(spindle_set_fd_handler(f->ctx, w->fd, false, waiter_read,
                                            NULL, waiter_io_poll, w), 0);
    poller_register(&f->b, true);
}

static void waiter_teardown(fixture *f, waiter *w)
{
    spindle_set_fd_handler(f->ctx, w->fd, false, NULL, NULL, NULL, NULL);
    spindle_bh_delete(w->bh);
    spindle_timer_free(w->timer);
}

/* Runs one work item of w through blocking iterations of the outer loop
 * and checks that its io_poll was never entered twice. */
static void waiter_run(fixture *f, waiter *w, bool nested)
{
    w->nested = nested;
    w->bh_ran = w->timer_fired = false;
    unsigned works0 = w->works;
    atomic_store(&w->work, true);
    for (unsigned i = 0; w->works == works0 || w->running; i++) {
        assert_true(i < 1000);
        spindle_poll(f->ctx, true);
    }
    assert_false(atomic_load(&w->work));
    assert_int_equal(w->reentries, 0);
}

static void nested_poll_inside_io_poll_skips_only_that_io_poll(void **state)
{
    fixture *f = *state;
    waiter w;
    waiter_setup(f, &w);
    harness_drain(f->ctx);

    waiter_run(f, &w, true);
    /* The nested loop ran the BH from the other thread, the timer, the
     * other polled handler and this handler's own io_read. */
    assert_true(w.bh_ran);
    assert_true(w.timer_fired);
    assert_int_equal(f->b.poll_trues, 1);
    assert_int_equal(w.reads, 1);
    assert_true(w.nested_iterations > 0);
    assert_int_equal(f->b.violations, 0);

    /* Back in the outer loop the handler is polled again. */
    unsigned calls0 = w.calls;
    waiter_run(f, &w, false);
    assert_true(w.calls > calls0);
    assert_int_equal(w.works, 2);

    waiter_teardown(f, &w);
}

static void nested_poll_inside_io_poll_skips_it_while_busy_polling(void **state)
{
    /* The same with the window open, so that the nested iterations spin:
     * every round of their spin leaves the running io_poll out. */
    fixture *f = *state;
    waiter w;
    waiter_setup(f, &w);
    tracker tr;
    tracker_init(&tr, f->ctx, MAX_NS, 2, 4);
    grow_window_to(&tr, 512000);
    harness_drain(f->ctx);

    for (int i = 0; i < 3; i++) {
        waiter_run(f, &w, true);
        assert_true(w.bh_ran);
        assert_true(w.timer_fired);
    }
    assert_int_equal(f->b.poll_trues, 3);
    assert_int_equal(w.reads, 3);
    unsigned calls0 = w.calls;
    waiter_run(f, &w, false);
    assert_true(w.calls > calls0);

    waiter_teardown(f, &w);
}

/* ------------------------------------------------------------------------
 * Counters
 */

static void stats_count_every_iteration(void **state)
{
    fixture *f = *state;
    spindle_ctx *ctx = f->ctx;
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
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        FIXTURE_TEST(window_grows_from_4000_doubling_up_to_512000),
        FIXTURE_TEST(window_grows_by_the_grow_factor),
        FIXTURE_TEST(window_growth_is_capped_at_poll_max),
        FIXTURE_TEST(window_shrinks_by_the_shrink_factor_after_long_waits),
        FIXTURE_TEST(window_resets_to_zero_on_long_wait_when_shrink_is_zero),
        FIXTURE_TEST(set_poll_params_restarts_window_at_zero),
        FIXTURE_TEST(nonblocking_iterations_do_not_adapt_window),
        FIXTURE_TEST(zero_poll_max_keeps_window_at_zero),
        FIXTURE_TEST(window_adapts_while_busy_polling_is_disabled),
        FIXTURE_TEST(each_window_follows_its_own_handlers_events),
        FIXTURE_TEST(wait_no_handler_event_ended_adapts_every_window),
        FIXTURE_TEST(loop_spins_for_the_largest_window),
        FIXTURE_TEST(set_poll_params_restarts_every_window),
        FIXTURE_TEST(replaced_handler_keeps_its_window),
        FIXTURE_TEST(handler_window_of_what_has_none_is_an_error),
        FIXTURE_TEST(idle_handler_leaves_the_spin_until_its_next_event),
        FIXTURE_TEST(poll_begin_runs_once_while_nonblocking_iterations_keep_polling),
        FIXTURE_TEST(poll_end_runs_right_before_a_kernel_wait),
        FIXTURE_TEST(poll_begin_and_poll_end_alternate_strictly),
        FIXTURE_TEST(io_poll_called_once_per_iteration_with_zero_window),
        FIXTURE_TEST(io_poll_returning_true_counts_as_progress),
        FIXTURE_TEST(io_poll_true_ends_the_spin_and_counts_a_poll_hit),
        FIXTURE_TEST(spin_running_out_of_window_counts_a_poll_miss),
        FIXTURE_TEST(busy_polling_calls_io_poll_repeatedly_within_the_window),
        FIXTURE_TEST(a_spin_yields_its_cpu_every_spin_yield_ns),
        FIXTURE_TEST(a_spin_yields_its_cpu_every_64000_ns_when_asked_so),
        FIXTURE_TEST(a_spin_never_yields_by_default),
        FIXTURE_TEST(handler_without_io_poll_disables_busy_polling),
        FIXTURE_TEST(polled_handoff_from_another_thread_is_seen_without_fd_write),
        FIXTURE_TEST(nested_poll_inside_io_poll_skips_only_that_io_poll),
        FIXTURE_TEST(nested_poll_inside_io_poll_skips_it_while_busy_polling),
        FIXTURE_TEST(stats_count_every_iteration),
    };
    return RUN_TESTS(tests);
}
