/* GLib behind the bench adapter interface, each on its own GMainContext:
 * a GSource made ready with g_source_set_ready_time(src, 0) from another
 * thread (thread-safe; it wakes the context) for the cross-thread call,
 * g_unix_fd_source for fds, the same ready-time GSource for re-armable
 * timers (g_timeout_source can only be created at arm time), and
 * g_idle_source for defer, and a GThreadPool whose jobs hand their
 * completion back to the loop with an idle source.
 * SPDX-License-Identifier: MIT */
#include <glib.h>
#include <glib-unix.h>

#include "../adapter.h"
#include "../bench.h"

typedef struct gl_loop {
    GMainContext *ctx;
    gint64 base_us;
    GThreadPool *pool; /* created at the first work request */
} gl_loop;

static void *loop_new(const bench_loop_opts *o)
{
    gl_loop *l = bench_alloc(sizeof *l);
    l->ctx = g_main_context_new();
    return l;
}
static void loop_free(void *loop)
{
    gl_loop *l = loop;
    if (l->pool)
        g_thread_pool_free(l->pool, FALSE, TRUE);
    g_main_context_unref(l->ctx);
    bench_free(l);
}
static void run_once(void *loop, bool blocking)
{
    g_main_context_iteration(((gl_loop *)loop)->ctx, blocking);
}

/* A source that dispatches when its ready time comes: the callback and its
 * argument live in the source (GLib allocates it). */
typedef struct ready_src {
    GSource src;
    bench_cb *cb;
    void *arg;
    gl_loop *loop;
} ready_src;

static gboolean ready_dispatch(GSource *s, GSourceFunc f, gpointer data)
{
    ready_src *r = (ready_src *)s;
    g_source_set_ready_time(s, -1);
    r->cb(r->arg);
    return G_SOURCE_CONTINUE;
}
static GSourceFuncs ready_funcs = {.dispatch = ready_dispatch};

static void *ready_new(void *loop, bench_cb *cb, void *arg)
{
    gl_loop *l = loop;
    ready_src *r = (ready_src *)g_source_new(&ready_funcs, sizeof *r);
    r->cb = cb;
    r->arg = arg;
    r->loop = l;
    g_source_attach(&r->src, l->ctx);
    return r;
}
static void ready_free(void *p)
{
    g_source_destroy(p);
    g_source_unref(p);
}

static void async_send(void *p) { g_source_set_ready_time(p, 0); }

typedef struct gl_fd {
    GSource *src;
    bench_cb *cb;
    void *arg;
} gl_fd;

static gboolean fd_cb(gint fd, GIOCondition cond, gpointer p)
{
    gl_fd *h = p;
    h->cb(h->arg);
    return G_SOURCE_CONTINUE;
}
static void *fd_new(void *loop, int fd, bench_cb *cb, void *arg)
{
    gl_fd *h = bench_alloc(sizeof *h);
    h->cb = cb;
    h->arg = arg;
    h->src = g_unix_fd_source_new(fd, G_IO_IN);
    g_source_set_callback(h->src, (GSourceFunc)(void (*)(void))fd_cb, h, NULL);
    g_source_attach(h->src, ((gl_loop *)loop)->ctx);
    return h;
}
static void fd_free(void *p)
{
    gl_fd *h = p;
    g_source_destroy(h->src);
    g_source_unref(h->src);
    bench_free(h);
}

static void now_update(void *loop) { ((gl_loop *)loop)->base_us = g_get_monotonic_time(); }
/* GLib's ready time is in µs; round up, never fire early. */
static void timer_arm(void *p, int64_t delay_ns)
{
    ready_src *r = p;
    g_source_set_ready_time(&r->src, r->loop->base_us + (delay_ns + 999) / 1000);
}
static void timer_stop(void *p) { g_source_set_ready_time(p, -1); }

typedef struct gl_defer {
    GMainContext *ctx;
    bench_defer_cb *cb;
    void *arg;
} gl_defer;

static gboolean idle_cb(gpointer p)
{
    gl_defer *d = p;
    return d->cb(d->arg) ? G_SOURCE_CONTINUE : G_SOURCE_REMOVE;
}
static void *defer_new(void *loop, bench_defer_cb *cb, void *arg)
{
    gl_defer *d = bench_alloc(sizeof *d);
    d->ctx = ((gl_loop *)loop)->ctx;
    d->cb = cb;
    d->arg = arg;
    return d;
}
/* g_idle_add, on our context rather than the default one. */
static void defer_start(void *p)
{
    gl_defer *d = p;
    GSource *s = g_idle_source_new();
    g_source_set_callback(s, idle_cb, d, NULL);
    g_source_attach(s, d->ctx);
    g_source_unref(s);
}
static void defer_free(void *p) { bench_free(p); }

/* GThreadPool: the worker runs the job, then attaches an idle source to
 * the loop's context (which wakes it) to run done there. */
typedef struct gl_work {
    gl_loop *loop;
    bench_cb *work, *done;
    void *arg;
} gl_work;

static gboolean work_done_idle(gpointer p)
{
    gl_work *w = p;
    w->done(w->arg);
    return G_SOURCE_REMOVE;
}
static void pool_func(gpointer data, gpointer user)
{
    gl_work *w = data;
    w->work(w->arg);
    GSource *s = g_idle_source_new();
    g_source_set_callback(s, work_done_idle, w, NULL);
    g_source_attach(s, w->loop->ctx);
    g_source_unref(s);
}
static void *work_new(void *loop, bench_cb *work, bench_cb *done, void *arg)
{
    gl_loop *l = loop;
    if (!l->pool) {
        l->pool = g_thread_pool_new(pool_func, NULL, BENCH_POOL_WORKERS, FALSE, NULL);
        BENCH_CHECK(l->pool, "g_thread_pool_new");
    }
    gl_work *w = bench_alloc(sizeof *w);
    *w = (gl_work){l, work, done, arg};
    return w;
}
static void work_submit(void *p)
{
    gl_work *w = p;
    BENCH_CHECK(g_thread_pool_push(w->loop->pool, w, NULL), "g_thread_pool_push");
}

const bench_adapter adapter_glib = {
    .name = "glib",
    .timer_res_ns = 1000,
    .timer_ordered = false, /* sources due together run in attach order */
    .timer_any_thread = true,
    .loop_new = loop_new, .loop_free = loop_free, .run_once = run_once,
    .async_new = ready_new, .async_send = async_send, .async_free = ready_free,
    .fd_new = fd_new, .fd_free = fd_free,
    .now_update = now_update, .timer_new = ready_new, .timer_arm = timer_arm,
    .timer_stop = timer_stop, .timer_free = ready_free,
    .defer_new = defer_new, .defer_start = defer_start, .defer_free = defer_free,
    .work_new = work_new, .work_submit = work_submit, .work_free = defer_free,
};
