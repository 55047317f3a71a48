/* spindle behind the bench adapter interface: bottom halves for the
 * cross-thread call and for defer, fd handlers, spindle timers, the thread
 * pool. adapter_spindle_embedded is the same context run the way a host
 * loop embeds it (spindle_get_fd, prepare/check/dispatch around a ppoll).
 * SPDX-License-Identifier: MIT */
#include <poll.h>
#include <spindle.h>
#include <spindle-uring.h>

#include "../adapter.h"
#include "../bench.h"

/* Timers are armed on an absolute deadline: now_update takes the base the
 * other loops keep as their cached time. One timer loop at a time. */
static int64_t base_ns;

static void *loop_new(const bench_loop_opts *o)
{
    spindle_options so = {.backend = SPINDLE_BACKEND_AUTO, .poll_max_ns = -1};
    if (o->backend == BACKEND_POLL)
        so.backend = SPINDLE_BACKEND_POLL;
    else if (o->backend == BACKEND_EPOLL)
        so.backend = SPINDLE_BACKEND_EPOLL;
    else if (o->backend == BACKEND_IO_URING)
        so.backend = SPINDLE_BACKEND_IO_URING;
    if (o->poll_off)
        so.poll_max_ns = 0;
    spindle_ctx *ctx = spindle_ctx_new_opts(&so);
    BENCH_CHECK(ctx, "spindle_ctx_new_opts failed");
    return ctx;
}

/* BENCH_STATS=1 prints what each context did: for tuning, not for the table. */
static void loop_free(void *loop)
{
    spindle_stats st;
    if (getenv("BENCH_STATS") && spindle_get_stats(loop, &st) == 0)
        fprintf(stderr,
                "spindle stats: %llu iterations, %llu kernel waits (%llu blocking), "
                "%llu poll hits, %llu poll misses, window %lld ns, %llu monitor syscalls, "
                "%llu stalls, %llu yields (%s)\n",
                (unsigned long long)st.iterations, (unsigned long long)st.kernel_waits,
                (unsigned long long)st.blocking_waits, (unsigned long long)st.poll_hits,
                (unsigned long long)st.poll_misses, (long long)st.poll_ns,
                (unsigned long long)st.monitor_syscalls, (unsigned long long)st.poll_stalls,
                (unsigned long long)st.poll_yields, spindle_backend_name(loop));
    spindle_ctx_free(loop);
}

static void run_once(void *loop, bool blocking) { spindle_poll(loop, blocking); }

/* A host loop's iteration: one ppoll on the context's fd for as long as
 * prepare allows (not at all when not blocking or when work is ready), then
 * check and dispatch. */
static void *loop_new_embedded(const bench_loop_opts *o)
{
    spindle_ctx *ctx = loop_new(o);
    BENCH_CHECK(spindle_get_fd(ctx) >= 0, "spindle_get_fd failed");
    return ctx;
}

static void run_once_embedded(void *loop, bool blocking)
{
    spindle_ctx *ctx = loop;
    int64_t ns = spindle_prepare(ctx);
    BENCH_CHECK(ns >= -1, "spindle_prepare: %lld", (long long)ns);
    bool readable = true;
    if (blocking && ns != 0) {
        struct pollfd p = {.fd = spindle_get_fd(ctx), .events = POLLIN};
        struct timespec ts = {ns / 1000000000, ns % 1000000000};
        readable = ppoll(&p, 1, ns < 0 ? NULL : &ts, NULL) > 0;
    }
    if (spindle_check(ctx, readable))
        spindle_dispatch(ctx);
}

/* A bottom half is spindle's cross-thread call: scheduling it from another
 * thread wakes the loop (with no system call while the loop is awake). */
static void *async_new(void *loop, bench_cb *cb, void *arg)
{
    spindle_bh *bh = spindle_bh_new(loop, cb, arg);
    BENCH_CHECK(bh, "spindle_bh_new failed");
    return bh;
}
static void async_send(void *a) { spindle_bh_schedule(a); }
static void async_free(void *a) { spindle_bh_delete(a); }

/* The fd handler is owned by the context; the handle only remembers which
 * one to remove. */
typedef struct sp_fd {
    spindle_ctx *ctx;
    int fd;
} sp_fd;

static void *fd_new(void *loop, int fd, bench_cb *cb, void *arg)
{
    sp_fd *h = bench_alloc(sizeof *h);
    h->ctx = loop;
    h->fd = fd;
    int r = spindle_set_fd_handler(loop, fd, false, cb, NULL, NULL, arg);
    BENCH_CHECK(r == 0, "spindle_set_fd_handler: %d", r);
    return h;
}

static void fd_free(void *p)
{
    sp_fd *h = p;
    spindle_set_fd_handler(h->ctx, h->fd, false, NULL, NULL, NULL, NULL);
    bench_free(h);
}

static void now_update(void *loop) { base_ns = spindle_now_ns(SPINDLE_CLOCK_MONOTONIC); }

static void *timer_new(void *loop, bench_cb *cb, void *arg)
{
    spindle_timer *t = spindle_timer_new(loop, SPINDLE_CLOCK_MONOTONIC, cb, arg);
    BENCH_CHECK(t, "spindle_timer_new failed");
    return t;
}
static void timer_arm(void *t, int64_t delay_ns) { spindle_timer_mod(t, base_ns + delay_ns); }
static void timer_stop(void *t) { spindle_timer_del(t); }
static void timer_free(void *t) { spindle_timer_free(t); }

/* Defer: a bottom half that schedules itself again from its callback. */
typedef struct sp_defer {
    spindle_bh *bh;
    bench_defer_cb *cb;
    void *arg;
} sp_defer;

static void defer_run(void *p)
{
    sp_defer *d = p;
    if (d->cb(d->arg))
        spindle_bh_schedule(d->bh);
}

static void *defer_new(void *loop, bench_defer_cb *cb, void *arg)
{
    sp_defer *d = bench_alloc(sizeof *d);
    d->cb = cb;
    d->arg = arg;
    d->bh = spindle_bh_new(loop, defer_run, d);
    BENCH_CHECK(d->bh, "spindle_bh_new failed");
    return d;
}
static void defer_start(void *p) { spindle_bh_schedule(((sp_defer *)p)->bh); }
static void defer_free(void *p)
{
    sp_defer *d = p;
    spindle_bh_delete(d->bh);
    bench_free(d);
}

/* A file read is a request of the user's on the context's ring. */
static void read_prep(struct io_uring_sqe *sqe, void *p)
{
    bench_read *r = p;
    io_uring_prep_read(sqe, r->fd, r->buf, r->len, (uint64_t)r->off);
}

static void read_done(void *p, const struct io_uring_cqe *cqe)
{
    bench_read *r = p;
    r->cb(r->arg, cqe->res);
}

static void read_start(void *loop, bench_read *r)
{
    int e = spindle_add_sqe(loop, read_prep, read_done, r);
    BENCH_CHECK(e == 0, "spindle_add_sqe: %d", e);
}

/* The pool: a request remembers what to run; the library allocates (and
 * recycles) its own job record per submission. */
typedef struct sp_work {
    spindle_ctx *ctx;
    bench_cb *work, *done;
    void *arg;
} sp_work;

static int work_run(void *p)
{
    sp_work *w = p;
    w->work(w->arg);
    return 0;
}
static void work_done(void *p, int ret)
{
    sp_work *w = p;
    w->done(w->arg);
}
static void *work_new(void *loop, bench_cb *work, bench_cb *done, void *arg)
{
    sp_work *w = bench_alloc(sizeof *w);
    *w = (sp_work){loop, work, done, arg};
    BENCH_CHECK(spindle_set_pool_params(loop, 0, BENCH_POOL_WORKERS) == 0,
                "spindle_set_pool_params");
    return w;
}
static void work_submit(void *p)
{
    sp_work *w = p;
    BENCH_CHECK(spindle_work_submit(w->ctx, work_run, work_done, w),
                "spindle_work_submit failed");
}
static void work_free(void *p) { bench_free(p); }

/* What the two ways of running a context share. */
#define SPINDLE_ADAPTER_OPS                                                      \
    .timer_res_ns = 1, .timer_ordered = true, .timer_any_thread = true,         \
    .loop_free = loop_free,                                                     \
    .async_new = async_new, .async_send = async_send, .async_free = async_free, \
    .fd_new = fd_new, .fd_free = fd_free, .now_update = now_update,             \
    .timer_new = timer_new, .timer_arm = timer_arm, .timer_stop = timer_stop,   \
    .timer_free = timer_free, .defer_new = defer_new,                           \
    .defer_start = defer_start, .defer_free = defer_free,                       \
    .work_new = work_new, .work_submit = work_submit, .work_free = work_free, \
    .read_start = read_start

const bench_adapter adapter_spindle = {
    .name = "spindle",
    .loop_new = loop_new,
    .run_once = run_once,
    SPINDLE_ADAPTER_OPS,
};

const bench_adapter adapter_spindle_embedded = {
    .name = "spindle (embedded)",
    .loop_new = loop_new_embedded,
    .run_once = run_once_embedded,
    SPINDLE_ADAPTER_OPS,
};
