/* libuv behind the bench adapter interface: uv_async_send, uv_poll,
 * uv_timer (millisecond deadlines), uv_idle, uv_queue_work.
 * SPDX-License-Identifier: MIT */
#include <uv.h>

#include "../adapter.h"
#include "../bench.h"

static void *loop_new(const bench_loop_opts *o)
{
    uv_loop_t *l = bench_alloc(sizeof *l);
    BENCH_CHECK(uv_loop_init(l) == 0, "uv_loop_init");
    return l;
}

static void close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Handles must be closed and their close callbacks run before the loop
 * closes; the bench's handles are already freed by then, so close what is
 * left (nothing, normally). */
static void loop_free(void *loop)
{
    uv_walk(loop, close_walk, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    BENCH_CHECK(uv_loop_close(loop) == 0, "uv_loop_close");
    bench_free(loop);
}

static void run_once(void *loop, bool blocking)
{
    uv_run(loop, blocking ? UV_RUN_ONCE : UV_RUN_NOWAIT);
}

/* Every wrapper embeds its handle first; the handle's data is unused. Freeing
 * closes the handle and runs the loop until its close callback frees us. */
typedef struct uv_w {
    union {
        uv_handle_t h;
        uv_async_t async;
        uv_poll_t poll;
        uv_timer_t timer;
        uv_idle_t idle;
    } u;
    bench_cb *cb;
    bench_defer_cb *dcb;
    void *arg;
} uv_w;

static void on_closed(uv_handle_t *h) { bench_free(h); }
static void w_free(void *p)
{
    uv_w *w = p;
    uv_loop_t *loop = w->u.h.loop;
    uv_close(&w->u.h, on_closed);
    uv_run(loop, UV_RUN_NOWAIT);
}

static void async_cb(uv_async_t *h)
{
    uv_w *w = (uv_w *)h;
    w->cb(w->arg);
}
static void *async_new(void *loop, bench_cb *cb, void *arg)
{
    uv_w *w = bench_alloc(sizeof *w);
    w->cb = cb;
    w->arg = arg;
    BENCH_CHECK(uv_async_init(loop, &w->u.async, async_cb) == 0, "uv_async_init");
    return w;
}
static void async_send(void *p) { uv_async_send(&((uv_w *)p)->u.async); }

static void poll_cb(uv_poll_t *h, int status, int events)
{
    uv_w *w = (uv_w *)h;
    w->cb(w->arg);
}
static void *fd_new(void *loop, int fd, bench_cb *cb, void *arg)
{
    uv_w *w = bench_alloc(sizeof *w);
    w->cb = cb;
    w->arg = arg;
    BENCH_CHECK(uv_poll_init(loop, &w->u.poll, fd) == 0, "uv_poll_init");
    BENCH_CHECK(uv_poll_start(&w->u.poll, UV_READABLE, poll_cb) == 0, "uv_poll_start");
    return w;
}
/* Freeing many: close now, and let loop_free or the next run collect. */
static void fd_free(void *p)
{
    uv_w *w = p;
    uv_close(&w->u.h, on_closed);
}

static void now_update(void *loop) { uv_update_time(loop); }
static void timer_cb(uv_timer_t *h)
{
    uv_w *w = (uv_w *)h;
    w->cb(w->arg);
}
static void *timer_new(void *loop, bench_cb *cb, void *arg)
{
    uv_w *w = bench_alloc(sizeof *w);
    w->cb = cb;
    w->arg = arg;
    BENCH_CHECK(uv_timer_init(loop, &w->u.timer) == 0, "uv_timer_init");
    return w;
}
/* libuv counts in whole milliseconds: round up, never fire early. */
static void timer_arm(void *p, int64_t delay_ns)
{
    uv_w *w = p;
    uv_timer_start(&w->u.timer, timer_cb, (uint64_t)(delay_ns + 999999) / 1000000, 0);
}
static void timer_stop(void *p) { uv_timer_stop(&((uv_w *)p)->u.timer); }
static void timer_free(void *p)
{
    uv_w *w = p;
    uv_close(&w->u.h, on_closed);
}

static void idle_cb(uv_idle_t *h)
{
    uv_w *w = (uv_w *)h;
    if (!w->dcb(w->arg))
        uv_idle_stop(h);
}
static void *defer_new(void *loop, bench_defer_cb *cb, void *arg)
{
    uv_w *w = bench_alloc(sizeof *w);
    w->dcb = cb;
    w->arg = arg;
    BENCH_CHECK(uv_idle_init(loop, &w->u.idle) == 0, "uv_idle_init");
    return w;
}
static void defer_start(void *p) { uv_idle_start(&((uv_w *)p)->u.idle, idle_cb); }

/* uv_queue_work: the request is the user's (reused for each submission);
 * libuv's pool is process-wide, UV_THREADPOOL_SIZE threads (default 4),
 * and completions come back through an eventfd and uv_async. */
typedef struct uv_job {
    uv_work_t req;
    uv_loop_t *loop;
    bench_cb *work, *done;
    void *arg;
} uv_job;

static void job_work(uv_work_t *r)
{
    uv_job *j = (uv_job *)r;
    j->work(j->arg);
}
static void job_after(uv_work_t *r, int status)
{
    uv_job *j = (uv_job *)r;
    BENCH_CHECK(status == 0, "uv_queue_work: status %d", status);
    j->done(j->arg);
}
static void *work_new(void *loop, bench_cb *work, bench_cb *done, void *arg)
{
    uv_job *j = bench_alloc(sizeof *j);
    j->loop = loop;
    j->work = work;
    j->done = done;
    j->arg = arg;
    return j;
}
static void work_submit(void *p)
{
    uv_job *j = p;
    BENCH_CHECK(uv_queue_work(j->loop, &j->req, job_work, job_after) == 0,
                "uv_queue_work");
}

/* uv_fs_read: a blocking pread on libuv's thread pool. */
_Static_assert(sizeof(uv_fs_t) <= sizeof(((bench_read *)0)->lib), "uv_fs_t fits");

static void on_read(uv_fs_t *req)
{
    bench_read *r = req->data;
    int res = (int)req->result;
    uv_fs_req_cleanup(req);
    r->cb(r->arg, res);
}

static void read_start(void *loop, bench_read *r)
{
    uv_fs_t *req = (uv_fs_t *)(void *)r->lib;
    req->data = r;
    uv_buf_t b = uv_buf_init(r->buf, r->len);
    int e = uv_fs_read(loop, req, r->fd, &b, 1, r->off, on_read);
    req->data = r;
    BENCH_CHECK(e == 0, "uv_fs_read: %d", e);
}

const bench_adapter adapter_libuv = {
    .name = "libuv",
    .timer_res_ns = 1000000,
    .timer_ordered = true,
    .fd_handle_size = sizeof(uv_poll_t),
    .timer_handle_size = sizeof(uv_timer_t),
    .loop_new = loop_new, .loop_free = loop_free, .run_once = run_once,
    .async_new = async_new, .async_send = async_send, .async_free = w_free,
    .fd_new = fd_new, .fd_free = fd_free,
    .now_update = now_update, .timer_new = timer_new, .timer_arm = timer_arm,
    .timer_stop = timer_stop, .timer_free = timer_free,
    .defer_new = defer_new, .defer_start = defer_start, .defer_free = w_free,
    .work_new = work_new, .work_submit = work_submit, .work_free = bench_free,
    .read_start = read_start,
};
