/* libevent behind the bench adapter interface: event_active from another
 * thread (with evthread_use_pthreads), EV_READ|EV_PERSIST events, evtimer,
 * event_active for defer.
 * SPDX-License-Identifier: MIT */
#include <event2/event.h>
#include <event2/thread.h>

#include "../adapter.h"
#include "../bench.h"

static void *loop_new(const bench_loop_opts *o)
{
    static bool threads;
    if (!threads) {
        BENCH_CHECK(evthread_use_pthreads() == 0, "evthread_use_pthreads");
        threads = true;
    }
    /* libev exports a libevent emulation under the same names: make sure
     * the real libevent answered (see bench/meson.build). */
    BENCH_CHECK(event_get_version_number() >= 0x02000000, "not libevent 2: %s",
                event_get_version());
    struct event_base *b = event_base_new();
    BENCH_CHECK(b, "event_base_new");
    return b;
}
static void loop_free(void *loop) { event_base_free(loop); }
static void run_once(void *loop, bool blocking)
{
    /* Without NO_EXIT_ON_EMPTY a base with no added event (only events made
     * active from another thread) returns at once instead of sleeping. */
    event_base_loop(loop, (blocking ? EVLOOP_ONCE : EVLOOP_NONBLOCK) | EVLOOP_NO_EXIT_ON_EMPTY);
}

/* The struct event is the library's (event_new); the wrapper carries the
 * bench callback. */
typedef struct le_w {
    struct event *ev;
    bench_cb *cb;
    bench_defer_cb *dcb;
    void *arg;
} le_w;

static void ev_cb(evutil_socket_t fd, short what, void *p)
{
    le_w *w = p;
    w->cb(w->arg);
}
static le_w *w_new(void *loop, int fd, short what, bench_cb *cb, void *arg)
{
    le_w *w = bench_alloc(sizeof *w);
    w->cb = cb;
    w->arg = arg;
    w->ev = event_new(loop, fd, what, ev_cb, w);
    BENCH_CHECK(w->ev, "event_new");
    return w;
}
static void w_free(void *p)
{
    le_w *w = p;
    event_free(w->ev);
    bench_free(w);
}

static void *async_new(void *loop, bench_cb *cb, void *arg)
{
    return w_new(loop, -1, 0, cb, arg);
}
/* Thread-safe with evthread_use_pthreads: locks the base and wakes it. */
static void async_send(void *p) { event_active(((le_w *)p)->ev, EV_READ, 0); }

static void *fd_new(void *loop, int fd, bench_cb *cb, void *arg)
{
    le_w *w = w_new(loop, fd, EV_READ | EV_PERSIST, cb, arg);
    BENCH_CHECK(event_add(w->ev, NULL) == 0, "event_add");
    return w;
}

static void now_update(void *loop) { event_base_update_cache_time(loop); }
static void *timer_new(void *loop, bench_cb *cb, void *arg)
{
    return w_new(loop, -1, 0, cb, arg);
}
/* event_add on a pending timer moves it. The delay is relative to now,
 * read from the clock on every call outside the loop. */
static void timer_arm(void *p, int64_t delay_ns)
{
    struct timeval tv = {.tv_sec = delay_ns / 1000000000,
                         .tv_usec = delay_ns % 1000000000 / 1000};
    event_add(((le_w *)p)->ev, &tv);
}
static void timer_stop(void *p) { event_del(((le_w *)p)->ev); }

static void defer_cb(evutil_socket_t fd, short what, void *p)
{
    le_w *w = p;
    if (w->dcb(w->arg))
        event_active(w->ev, EV_READ, 0);
}
static void *defer_new(void *loop, bench_defer_cb *cb, void *arg)
{
    le_w *w = bench_alloc(sizeof *w);
    w->dcb = cb;
    w->arg = arg;
    w->ev = event_new(loop, -1, 0, defer_cb, w);
    BENCH_CHECK(w->ev, "event_new");
    return w;
}
static void defer_start(void *p) { event_active(((le_w *)p)->ev, EV_READ, 0); }

const bench_adapter adapter_libevent = {
    .name = "libevent",
    .timer_res_ns = 1000,
    .timer_ordered = true,
    .timer_any_thread = true,
    .timer_reads_clock = true,
    .loop_new = loop_new, .loop_free = loop_free, .run_once = run_once,
    .async_new = async_new, .async_send = async_send, .async_free = w_free,
    .fd_new = fd_new, .fd_free = w_free,
    .now_update = now_update, .timer_new = timer_new, .timer_arm = timer_arm,
    .timer_stop = timer_stop, .timer_free = w_free,
    .defer_new = defer_new, .defer_start = defer_start, .defer_free = w_free,
};
