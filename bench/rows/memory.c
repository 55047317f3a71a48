/* memory: bytes per registered fd handler and per armed timer, allocator
 * overhead included (mallinfo2 deltas around registering 10,000 of them,
 * minus the bench's own wrappers), plus sizeof the handle the user owns
 * where the library has one. And the idle cost: CPU used by a context that
 * has nothing to do, with default polling.
 * SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <malloc.h>
#include <stdatomic.h>
#include <pthread.h>
#include <unistd.h>

#include <spindle.h>

#include "rows.h"

#define COUNT 10000

static size_t heap_bytes(void)
{
    struct mallinfo2 m = mallinfo2();
    return m.uordblks + m.hblkhd; /* small chunks in use + mmapped ones */
}

static void nop(void *arg) {}

static double fd_bytes(const bench_impl *im, int *rfd)
{
    const bench_adapter *a = im->a;
    void *loop = a->loop_new(&im->opts);
    void **h = malloc(COUNT * sizeof *h);
    BENCH_CHECK(h, "out of memory");
    a->run_once(loop, false); /* lazily created state comes first */
    size_t m0 = heap_bytes(), w0 = bench_alloc_bytes;
    for (int i = 0; i < COUNT; i++)
        h[i] = a->fd_new(loop, rfd[i], nop, NULL);
    a->run_once(loop, false); /* registrations some libraries defer */
    size_t m1 = heap_bytes(), w1 = bench_alloc_bytes;
    for (int i = 0; i < COUNT; i++)
        a->fd_free(h[i]);
    a->loop_free(loop);
    free(h);
    return ((double)(m1 - m0) - (double)(w1 - w0)) / COUNT + (double)a->fd_handle_size;
}

static double timer_bytes(const bench_impl *im)
{
    const bench_adapter *a = im->a;
    void *loop = a->loop_new(&im->opts);
    void **t = malloc(COUNT * sizeof *t);
    BENCH_CHECK(t, "out of memory");
    a->run_once(loop, false);
    a->now_update(loop);
    size_t m0 = heap_bytes(), w0 = bench_alloc_bytes;
    for (int i = 0; i < COUNT; i++) {
        t[i] = a->timer_new(loop, nop, NULL);
        a->timer_arm(t[i], 3600000000000 + (int64_t)i * 1000);
    }
    size_t m1 = heap_bytes(), w1 = bench_alloc_bytes;
    for (int i = 0; i < COUNT; i++)
        a->timer_free(t[i]);
    a->loop_free(loop);
    free(t);
    return ((double)(m1 - m0) - (double)(w1 - w0)) / COUNT + (double)a->timer_handle_size;
}

/* Idle: a thread runs blocking iterations of a spindle context (default
 * polling) that has an io_poll handler and nothing to do. */
typedef struct idle_run {
    spindle_ctx *ctx;
    atomic_bool stop;
    int64_t cpu;
} idle_run;

static bool idle_poll(void *arg) { return false; }
static void idle_read(void *arg) {}

static void *idle_thread(void *p)
{
    idle_run *ir = p;
    int64_t c0 = thread_cpu_ns();
    while (!atomic_load(&ir->stop))
        spindle_poll(ir->ctx, true);
    ir->cpu = thread_cpu_ns() - c0;
    return NULL;
}

static double idle_cpu_percent(int64_t ns)
{
    idle_run ir = {.ctx = spindle_ctx_new()};
    spindle_notifier *n = spindle_notifier_new(false);
    BENCH_CHECK(ir.ctx && n, "spindle_ctx_new");
    spindle_set_event_notifier(ir.ctx, n, false, idle_read, idle_poll, NULL);
    pthread_t t;
    int64_t t0 = now_ns();
    BENCH_CHECK(pthread_create(&t, NULL, idle_thread, &ir) == 0, "pthread_create");
    sleep_until_ns(t0 + ns);
    atomic_store(&ir.stop, true);
    spindle_notify(ir.ctx);
    pthread_join(t, NULL);
    int64_t wall = now_ns() - t0;
    spindle_set_event_notifier(ir.ctx, n, false, NULL, NULL, NULL);
    spindle_ctx_free(ir.ctx);
    spindle_notifier_free(n);
    return 100.0 * (double)ir.cpu / (double)wall;
}

void row_memory(void)
{
    int *rfd = malloc(2 * COUNT * sizeof *rfd);
    BENCH_CHECK(rfd, "out of memory");
    BENCH_CHECK(cfg.max_fds_n >= COUNT / 2, "fd limit too low for the memory row");
    /* 10,000 fds: the read ends of 5,000 pipes and their write ends (the
     * watchers never fire, so which end does not matter). */
    for (int i = 0; i < COUNT; i += 2) {
        BENCH_CHECK(pipe2(&rfd[i], O_CLOEXEC) == 0, "pipe2");
    }
    bench_impl impls[8];
    int k = 0;
    impls[k++] = (bench_impl){"spindle", &adapter_spindle, {0}, KIND_SPINDLE};
    for (int i = 0; i < n_peer_impls; i++)
        impls[k++] = peer_impls[i];
    for (int i = 0; i < k; i++) {
        if (!impl_wanted(impls[i].label))
            continue;
        double v[64], w[64];
        for (int r = 0; r < cfg.reps; r++) {
            v[r] = fd_bytes(&impls[i], rfd);
            w[r] = timer_bytes(&impls[i]);
        }
        char note[96] = "";
        if (impls[i].a->fd_handle_size)
            snprintf(note, sizeof note, "includes the user-owned handle: %zu bytes",
                     impls[i].a->fd_handle_size);
        result_add("memory", "10k fds", "bytes/fd handler", impls[i].label, impls[i].kind, v,
                   cfg.reps, note);
        note[0] = 0;
        if (impls[i].a->timer_handle_size)
            snprintf(note, sizeof note, "includes the user-owned handle: %zu bytes",
                     impls[i].a->timer_handle_size);
        result_add("memory", "10k timers", "bytes/armed timer", impls[i].label,
                   impls[i].kind, w, cfg.reps, note);
    }
    for (int i = 0; i < COUNT; i++)
        close(rfd[i]);
    free(rfd);

    double v[64];
    for (int r = 0; r < cfg.reps; r++)
        v[r] = idle_cpu_percent(cfg.quick ? 200000000 : 500000000);
    result_add("idle", "default polling", "% of a core", "spindle", KIND_SPINDLE, v, cfg.reps,
               "blocking iterations, an io_poll handler, nothing to do");
}
