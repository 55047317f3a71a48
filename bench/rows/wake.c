/* wake-rtt: two threads, each running its own loop; A wakes B through the
 * library's cross-thread call, B's callback wakes A. Sleeping loops
 * (blocking iterations) or busy ones (non-blocking iterations in a loop, so
 * nobody sleeps and only the library's signalling cost shows).
 * SPDX-License-Identifier: MIT */
#include <pthread.h>
#include <stdatomic.h>

#include "rows.h"

typedef struct wake {
    /* Set up before the threads start, read by both. */
    const bench_adapter *a;
    void *loop_a, *loop_b, *to_a, *to_b;
    long n;
    bool busy;
    /* Read by B at every iteration, written once at the end. */
    atomic_bool stop;
    /* A's own, written at every round trip: on a line of their own, or
     * every round trip would also move the line B reads stop from. */
    _Alignas(64) long count;
    int64_t cap; /* stop after this time even short of n */
    bool done;
} wake;

static void on_b(void *p) /* on B's loop: answer A */
{
    wake *w = p;
    w->a->async_send(w->to_a);
}

static void on_a(void *p) /* on A's loop: count, then wake B again */
{
    wake *w = p;
    if (++w->count < w->n && (w->count % 64 || now_ns() < w->cap))
        w->a->async_send(w->to_b);
    else
        w->done = true;
}

static void *thread_b(void *p)
{
    wake *w = p;
    pin_thread(1); /* the other side runs on CPU 0 (see main) */
    while (!atomic_load_explicit(&w->stop, memory_order_acquire))
        w->a->run_once(w->loop_b, !w->busy);
    return NULL;
}

/* n round trips (fewer if the time cap comes first), started by A. None is
 * in flight when it returns: A's last callback sends nothing. */
static void ping_pong(wake *w, long n)
{
    w->n = n;
    w->count = 0;
    w->done = false;
    w->cap = now_ns() + bench_time_cap_ns();
    w->a->async_send(w->to_b);
    while (!w->done)
        w->a->run_once(w->loop_a, !w->busy);
}

static rtt_sample wake_once(const bench_impl *im, long n, bool busy)
{
    wake w = {.a = im->a, .busy = busy};
    w.loop_a = w.a->loop_new(&im->opts);
    w.loop_b = w.a->loop_new(&im->opts);
    w.to_a = w.a->async_new(w.loop_a, on_a, &w);
    w.to_b = w.a->async_new(w.loop_b, on_b, &w);
    pthread_t t;
    clockid_t b_cpu;
    BENCH_CHECK(pthread_create(&t, NULL, thread_b, &w) == 0, "pthread_create");
    BENCH_CHECK(pthread_getcpuclockid(t, &b_cpu) == 0, "pthread_getcpuclockid");
    /* Untimed round trips on the same loops first, so that the timed ones
     * are round trips and not the start of B's thread and the first
     * iterations of two new loops (which, for spindle on io_uring, cost
     * as much as the next 1,800 round trips). */
    ping_pong(&w, n / 10 + 1);
    int64_t c0 = thread_cpu_ns(), b0 = bench_clock(b_cpu), t0 = now_ns();
    ping_pong(&w, n);
    int64_t t1 = now_ns(), c1 = thread_cpu_ns(), b1 = bench_clock(b_cpu);
    atomic_store(&w.stop, true);
    w.a->async_send(w.to_b); /* wake B to see stop */
    pthread_join(t, NULL);
    BENCH_CHECK(w.count > 0 && w.count <= n, "%s: %ld round trips (of %ld)", im->label,
                w.count, n);
    n = w.count;
    /* B may have answered once more after stop: drain it before freeing. */
    w.a->run_once(w.loop_a, false);
    w.a->async_free(w.to_a);
    w.a->async_free(w.to_b);
    w.a->loop_free(w.loop_a);
    w.a->loop_free(w.loop_b);
    return (rtt_sample){(double)(t1 - t0) / n, (double)(c1 - c0 + b1 - b0) / n};
}

static void emit(const char *row, const char *impl, int kind, rtt_sample *s, int reps,
                 const char *note)
{
    double wall[64], cpu[64];
    for (int i = 0; i < reps; i++) {
        wall[i] = s[i].wall_ns;
        cpu[i] = s[i].cpu_ns;
    }
    result_add(row, "", "ns/rtt", impl, kind, wall, reps, note);
    result_add(row, "", "cpu-ns/rtt", impl, kind, cpu, reps, note);
}

void row_wake(bool busy)
{
    const char *row = busy ? "wake-rtt busy" : "wake-rtt";
    /* Sleeping round trips take tens of µs; busy ones about one. */
    long n = busy ? (cfg.quick ? 5000 : 20000) : (cfg.quick ? 500 : 2000);
    rtt_sample s[64];

    /* One untimed run first: page faults, thread start, CPU frequency. */
    floor_eventfd_rtt(n / 10, !busy);
    for (int r = 0; r < cfg.reps; r++)
        s[r] = floor_eventfd_rtt(n, !busy);
    emit(row, busy ? "floor: eventfd nonblock" : "floor: eventfd blocking", KIND_FLOOR,
         s, cfg.reps, "");
    if (busy) {
        floor_spin_rtt(n / 10);
        for (int r = 0; r < cfg.reps; r++)
            s[r] = floor_spin_rtt(n);
        emit(row, "floor: spin", KIND_FLOOR, s, cfg.reps, "");
    }

    bench_impl impls[8];
    int k = 0;
    impls[k++] = (bench_impl){"spindle io_uring", &adapter_spindle,
                              {.backend = BACKEND_IO_URING}, KIND_SPINDLE};
    impls[k++] = (bench_impl){"spindle epoll", &adapter_spindle,
                              {.backend = BACKEND_EPOLL}, KIND_SPINDLE};
    impls[k++] = (bench_impl){"spindle poll", &adapter_spindle,
                              {.backend = BACKEND_POLL}, KIND_SPINDLE};
    if (!busy)
        impls[k++] = (bench_impl){"spindle (poll off)", &adapter_spindle,
                                  {.poll_off = true}, KIND_SPINDLE};
    for (int i = 0; i < n_peer_impls; i++)
        impls[k++] = peer_impls[i];
    for (int i = 0; i < k; i++) {
        if (!impl_wanted(impls[i].label))
            continue;
        wake_once(&impls[i], n / 10, busy);
        for (int r = 0; r < cfg.reps; r++)
            s[r] = wake_once(&impls[i], n, busy);
        emit(row, impls[i].label, impls[i].kind, s, cfg.reps, "");
    }
}
