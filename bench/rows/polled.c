/* polled-rtt: the wake-rtt hand-off through shared memory watched by an
 * io_poll handler, the way a virtio device is served: while a loop busy
 * polls (between poll_begin and poll_end) the sender only writes the cell;
 * otherwise it also sets the loop's event notifier (one eventfd write),
 * whose io_read handler picks the request up. With polling off that is
 * every time. Floor: two threads spinning on one cache line.
 *
 * polled-rtt at low load: one request every 10, 50 or 200 µs from a thread
 * that spins on the clock; latency from send to callback, and the serving
 * loop's CPU time per request, polling on and off.
 * SPDX-License-Identifier: MIT */
#include <pthread.h>
#include <stdatomic.h>

#include <spindle.h>

#include "rows.h"

/* Where a side receives: the cell the other side writes and the flag it
 * reads (between poll_begin and poll_end). */
typedef struct inbox {
    _Atomic long cell;
    _Atomic bool polling;
} inbox;

/* Both inboxes share one cache line and nothing else is on it, so a
 * hand-off moves this line and no other, as the floor's single line does.
 * With a line per inbox a hand-off moved two: the sender's store took the
 * receiver's line from the receiver spinning on it, and the receiver's
 * answer took the sender's; on one line, the load that brings a request in
 * brings in the line the answer goes to. Between two vCPUs that hand a
 * line over in about 230 ns, the two-line layout cost 1000 ns per round
 * trip with no loop at all, against 480 ns for this one. */
static struct {
    _Alignas(64) inbox box[2];
} mail;

typedef struct side side;
struct side {
    inbox *in; /* &mail.box[0] or [1] */
    /* The side's own fields, written at every hand-off. */
    _Alignas(64) spindle_ctx *ctx;
    spindle_notifier *n;
    long seen;
    side *peer;
    bool (*process)(side *s, long v);
    /* ping-pong: */
    long count, target;
    int64_t cap; /* stop after this time even short of target */
    bool done;
    /* low load: */
    double lat_sum;
    _Atomic long served; /* read by the sending thread */
};

/* Publish v to s; kick its notifier unless it is busy polling. The store
 * and the load are sequentially consistent, as are poll_end's store and
 * the io_poll check spindle makes after it: one side always sees the
 * other (no lost request). */
static void side_send(side *s, long v)
{
    atomic_store(&s->in->cell, v);
    if (!atomic_load(&s->in->polling))
        spindle_notifier_set(s->n);
}

static bool side_check(side *s)
{
    long v = atomic_load_explicit(&s->in->cell, memory_order_acquire);
    if (v == s->seen)
        return false;
    s->seen = v;
    return s->process(s, v);
}

static bool io_poll(void *p) { return side_check(p); }
static void io_read(void *p)
{
    side *s = p;
    spindle_notifier_test_and_clear(s->n);
    side_check(s);
}
static void poll_begin(void *p) { atomic_store(&((side *)p)->in->polling, true); }
static void poll_end(void *p) { atomic_store(&((side *)p)->in->polling, false); }

static void side_init(side *s, inbox *in, bool poll_off, bool (*process)(side *, long))
{
    s->in = in;
    atomic_store(&in->cell, 0);
    atomic_store(&in->polling, false);
    spindle_options o = {.backend = SPINDLE_BACKEND_AUTO, .poll_max_ns = poll_off ? 0 : -1};
    s->ctx = spindle_ctx_new_opts(&o);
    s->n = spindle_notifier_new(false);
    BENCH_CHECK(s->ctx && s->n, "spindle context or notifier");
    s->process = process;
    BENCH_CHECK(spindle_set_event_notifier(s->ctx, s->n, false, io_read, io_poll, s) == 0,
                "spindle_set_event_notifier");
    spindle_set_event_notifier_poll(s->ctx, s->n, poll_begin, poll_end);
}

static void side_fini(side *s)
{
    spindle_set_event_notifier(s->ctx, s->n, false, NULL, NULL, NULL);
    spindle_ctx_free(s->ctx);
    spindle_notifier_free(s->n);
}

static bool b_process(side *s, long v) /* echo */
{
    side_send(s->peer, v);
    return true;
}

static bool a_process(side *s, long v)
{
    BENCH_CHECK(v == s->count + 1, "polled-rtt: got %ld, expected %ld", v, s->count + 1);
    if (++s->count < s->target && (s->count % 64 || now_ns() < s->cap))
        side_send(s->peer, s->count + 1);
    else
        s->done = true;
    return true;
}

typedef struct serve {
    side *s;
    atomic_bool stop;
    int64_t cpu;
} serve;

static void *serve_thread(void *p)
{
    serve *sv = p;
    pin_thread(1); /* the other side runs on CPU 0 (see main) */
    int64_t c0 = thread_cpu_ns();
    while (!atomic_load_explicit(&sv->stop, memory_order_acquire))
        spindle_poll(sv->s->ctx, true);
    sv->cpu = thread_cpu_ns() - c0;
    return NULL;
}

static void serve_stop(serve *sv, pthread_t t)
{
    atomic_store(&sv->stop, true);
    spindle_notify(sv->s->ctx);
    pthread_join(t, NULL);
}

/* BENCH_STATS=1: per side, per thousand round trips. B's are read while its
 * thread still runs: counters are written by one thread, so the values may
 * lag, never tear. */
static void print_stats(bool poll_off, side *a, side *b, long n)
{
    for (int i = 0; i < 2; i++) {
        spindle_stats st;
        spindle_get_stats(i ? b->ctx : a->ctx, &st);
        fprintf(stderr, "polled-rtt%s %s: %ld rtt; per 1000: iterations %.0f, kernel waits %.1f "
                "(blocking %.1f), poll hits %.0f, misses %.1f; window %lld ns\n",
                poll_off ? " (poll off)" : "", i ? "B (serving)" : "A", n,
                1000.0 * st.iterations / n, 1000.0 * st.kernel_waits / n,
                1000.0 * st.blocking_waits / n, 1000.0 * st.poll_hits / n,
                1000.0 * st.poll_misses / n, (long long)st.poll_ns);
    }
}

static rtt_sample polled_once(bool poll_off, long n)
{
    static side a, b; /* cache-line aligned */
    a = (side){.target = n};
    b = (side){0};
    side_init(&a, &mail.box[0], poll_off, a_process);
    side_init(&b, &mail.box[1], poll_off, b_process);
    a.peer = &b;
    b.peer = &a;
    serve sv = {.s = &b};
    pthread_t t;
    BENCH_CHECK(pthread_create(&t, NULL, serve_thread, &sv) == 0, "pthread_create");
    int64_t c0 = thread_cpu_ns(), t0 = now_ns();
    a.cap = t0 + bench_time_cap_ns();
    side_send(&b, 1);
    while (!a.done)
        spindle_poll(a.ctx, true);
    int64_t t1 = now_ns(), c1 = thread_cpu_ns();
    if (getenv("BENCH_STATS")) /* for tuning: what did the loops do per round trip */
        print_stats(poll_off, &a, &b, a.count);
    serve_stop(&sv, t);
    BENCH_CHECK(a.count > 0 && a.count <= n, "polled-rtt: %ld round trips (of %ld)",
                a.count, n);
    n = a.count;
    side_fini(&a);
    side_fini(&b);
    return (rtt_sample){(double)(t1 - t0) / n, (double)(c1 - c0 + sv.cpu) / n};
}

void row_polled(void)
{
    long n = cfg.quick ? 20000 : 100000;
    double wall[64], cpu[64];
    rtt_sample s;
    if (!getenv("BENCH_SKIP_FLOORS")) { /* for profiling spindle alone */
    floor_spin_rtt(n / 10);
    for (int r = 0; r < cfg.reps; r++) {
        s = floor_spin_rtt(n);
        wall[r] = s.wall_ns;
        cpu[r] = s.cpu_ns;
    }
    result_add("polled-rtt", "", "ns/rtt", "floor: spin", KIND_FLOOR, wall, cfg.reps, "");
    result_add("polled-rtt", "", "cpu-ns/rtt", "floor: spin", KIND_FLOOR, cpu, cfg.reps, "");
    }
    for (int off = 0; off < 2; off++) {
        const char *label = off ? "spindle (poll off)" : "spindle";
        long m = off ? n / 20 : n; /* sleeping round trips are ~100x slower */
        polled_once(off, m / 10);
        for (int r = 0; r < cfg.reps; r++) {
            s = polled_once(off, m);
            wall[r] = s.wall_ns;
            cpu[r] = s.cpu_ns;
        }
        result_add("polled-rtt", "", "ns/rtt", label, KIND_SPINDLE, wall, cfg.reps, "");
        result_add("polled-rtt", "", "cpu-ns/rtt", label, KIND_SPINDLE, cpu, cfg.reps, "");
    }
}

/* --- low load --- */

static bool low_process(side *s, long v)
{
    s->lat_sum += (double)(now_ns() - v);
    s->count++;
    atomic_store_explicit(&s->served, s->count, memory_order_release);
    return true;
}

static void low_once(bool poll_off, int64_t gap_ns, long n, double *lat, double *cpu)
{
    static side b;
    b = (side){0};
    side_init(&b, &mail.box[1], poll_off, low_process);
    serve sv = {.s = &b};
    pthread_t t;
    BENCH_CHECK(pthread_create(&t, NULL, serve_thread, &sv) == 0, "pthread_create");
    int64_t next = now_ns() + gap_ns;
    for (long i = 0; i < n; i++) {
        int64_t now;
        /* One request in flight at a time (the cell holds one): wait for
         * the previous to be served, then for its send time. */
        while (atomic_load_explicit(&b.served, memory_order_acquire) < i)
            ;
        while ((now = now_ns()) < next)
            ;
        side_send(&b, now); /* the payload is the send time */
        next += gap_ns;
        if (next < now)
            next = now + gap_ns; /* fell behind (preempted): keep the gap */
    }
    /* The last request must be served before stopping. */
    int64_t deadline = now_ns() + 1000000000;
    while (atomic_load_explicit(&b.served, memory_order_acquire) < n && now_ns() < deadline)
        ;
    serve_stop(&sv, t);
    BENCH_CHECK(b.count == n, "polled-rtt low load: %ld requests served of %ld", b.count, n);
    side_fini(&b);
    *lat = b.lat_sum / n;
    *cpu = (double)sv.cpu / n;
}

void row_polled_low_load(void)
{
    static const int gaps_us[] = {10, 50, 200};
    for (int g = 0; g < 3; g++) {
        char param[32];
        snprintf(param, sizeof param, "every %dus", gaps_us[g]);
        /* About 0.2 s per repetition (0.06 s quick). */
        long n = (cfg.quick ? 60000 : 200000) / gaps_us[g];
        for (int off = 0; off < 2; off++) {
            const char *label = off ? "spindle (poll off)" : "spindle";
            double lat[64], cpu[64];
            low_once(off, gaps_us[g] * 1000, n / 10, &lat[0], &cpu[0]);
            for (int r = 0; r < cfg.reps; r++)
                low_once(off, gaps_us[g] * 1000, n, &lat[r], &cpu[r]);
            result_add("polled-rtt low load", param, "latency ns", label, KIND_SPINDLE, lat,
                       cfg.reps, "");
            result_add("polled-rtt low load", param, "cpu-ns/request", label, KIND_SPINDLE,
                       cpu, cfg.reps, "");
        }
    }
}
