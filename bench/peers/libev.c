/* libev behind the bench adapter interface: ev_async, ev_io, ev_timer,
 * ev_idle, each embedded in a small struct with the bench callback (the
 * libev idiom: the watcher lives in the user's own struct).
 * SPDX-License-Identifier: MIT */
#include <ev.h>

#include "../adapter.h"
#include "../bench.h"

static void *loop_new(const bench_loop_opts *o)
{
    struct ev_loop *l = ev_loop_new(EVFLAG_AUTO);
    BENCH_CHECK(l, "ev_loop_new failed");
    return l;
}
static void loop_free(void *loop) { ev_loop_destroy(loop); }
static void run_once(void *loop, bool blocking)
{
    ev_run(loop, blocking ? EVRUN_ONCE : EVRUN_NOWAIT);
}

typedef struct ev_async_w {
    ev_async w;
    struct ev_loop *loop;
    bench_cb *cb;
    void *arg;
} ev_async_w;

static void async_cb(struct ev_loop *l, ev_async *w, int revents)
{
    ev_async_w *a = (ev_async_w *)w;
    a->cb(a->arg);
}
static void *async_new(void *loop, bench_cb *cb, void *arg)
{
    ev_async_w *a = bench_alloc(sizeof *a);
    a->loop = loop;
    a->cb = cb;
    a->arg = arg;
    ev_async_init(&a->w, async_cb);
    ev_async_start(loop, &a->w);
    return a;
}
static void async_send(void *p)
{
    ev_async_w *a = p;
    ev_async_send(a->loop, &a->w);
}
static void async_free(void *p)
{
    ev_async_w *a = p;
    ev_async_stop(a->loop, &a->w);
    bench_free(a);
}

typedef struct ev_io_w {
    ev_io w;
    struct ev_loop *loop;
    bench_cb *cb;
    void *arg;
} ev_io_w;

static void io_cb(struct ev_loop *l, ev_io *w, int revents)
{
    ev_io_w *h = (ev_io_w *)w;
    h->cb(h->arg);
}
static void *fd_new(void *loop, int fd, bench_cb *cb, void *arg)
{
    ev_io_w *h = bench_alloc(sizeof *h);
    h->loop = loop;
    h->cb = cb;
    h->arg = arg;
    ev_io_init(&h->w, io_cb, fd, EV_READ);
    ev_io_start(loop, &h->w);
    return h;
}
static void fd_free(void *p)
{
    ev_io_w *h = p;
    ev_io_stop(h->loop, &h->w);
    bench_free(h);
}

typedef struct ev_timer_w {
    ev_timer w;
    struct ev_loop *loop;
    bench_cb *cb;
    void *arg;
} ev_timer_w;

static void now_update(void *loop) { ev_now_update(loop); }
static void timer_cb(struct ev_loop *l, ev_timer *w, int revents)
{
    ev_timer_w *t = (ev_timer_w *)w;
    t->cb(t->arg);
}
static void *timer_new(void *loop, bench_cb *cb, void *arg)
{
    ev_timer_w *t = bench_alloc(sizeof *t);
    t->loop = loop;
    t->cb = cb;
    t->arg = arg;
    ev_timer_init(&t->w, timer_cb, 0., 0.);
    return t;
}
/* libev's own idiom for moving an armed timer is ev_timer_again (adjusts it
 * in the heap); a stopped one is set and started. */
static void timer_arm(void *p, int64_t delay_ns)
{
    ev_timer_w *t = p;
    if (ev_is_active(&t->w)) {
        t->w.repeat = delay_ns * 1e-9;
        ev_timer_again(t->loop, &t->w);
        t->w.repeat = 0.;
    } else {
        ev_timer_set(&t->w, delay_ns * 1e-9, 0.);
        ev_timer_start(t->loop, &t->w);
    }
}
static void timer_stop(void *p)
{
    ev_timer_w *t = p;
    ev_timer_stop(t->loop, &t->w);
}
static void timer_free(void *p)
{
    timer_stop(p);
    bench_free(p);
}

typedef struct ev_idle_w {
    ev_idle w;
    struct ev_loop *loop;
    bench_defer_cb *cb;
    void *arg;
} ev_idle_w;

static void idle_cb(struct ev_loop *l, ev_idle *w, int revents)
{
    ev_idle_w *d = (ev_idle_w *)w;
    if (!d->cb(d->arg))
        ev_idle_stop(l, w);
}
static void *defer_new(void *loop, bench_defer_cb *cb, void *arg)
{
    ev_idle_w *d = bench_alloc(sizeof *d);
    d->loop = loop;
    d->cb = cb;
    d->arg = arg;
    ev_idle_init(&d->w, idle_cb);
    return d;
}
static void defer_start(void *p)
{
    ev_idle_w *d = p;
    ev_idle_start(d->loop, &d->w);
}
static void defer_free(void *p)
{
    ev_idle_w *d = p;
    ev_idle_stop(d->loop, &d->w);
    bench_free(d);
}

const bench_adapter adapter_libev = {
    .name = "libev",
    .timer_res_ns = 1,
    .timer_ordered = true,
    .fd_handle_size = sizeof(ev_io),
    .timer_handle_size = sizeof(ev_timer),
    .loop_new = loop_new, .loop_free = loop_free, .run_once = run_once,
    .async_new = async_new, .async_send = async_send, .async_free = async_free,
    .fd_new = fd_new, .fd_free = fd_free,
    .now_update = now_update, .timer_new = timer_new, .timer_arm = timer_arm,
    .timer_stop = timer_stop, .timer_free = timer_free,
    .defer_new = defer_new, .defer_start = defer_start, .defer_free = defer_free,
};
