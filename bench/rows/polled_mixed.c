/* polled-mixed: one spindle context serving a fast polled source and a
 * slow one, the case that per-handler polling windows are for.
 *
 * Fast: the loop sends a request through a cell in shared memory to a
 * peer thread that spins on it and answers at once through another cell,
 * which the loop's io_poll handler watches; the handler sends the next
 * request. Slow: another thread posts an event every 500 µs into a third
 * cell, watched by a second io_poll handler. Both sources follow the
 * virtio pattern of polled-rtt: while a handler is busy-polled (between
 * its poll_begin and poll_end) its source only writes memory, otherwise it
 * also sets the handler's event notifier.
 *
 * Reported: the fast round trip's p50 and p99 (each the median over the
 * repetitions) and the loop thread's CPU time per fast request, for the
 * fast source alone, with the slow one beside it, and with the slow one
 * under the old rule of one window for the whole context
 * (SPINDLE_POLL_WINDOW=shared), all in the same run.
 *
 * Three threads on what may be two CPUs: the loop and the fast peer spin,
 * the slow source mostly sleeps. Left to the scheduler, the loop and the
 * peer were sometimes put on one CPU, where each spin of one kept the
 * other from answering and every round trip became a sleep and a wake-up,
 * with or without the slow source (a placement artefact, not the loops'
 * behaviour). So this row pins them, whatever BENCH_PIN says: the loop
 * (with the slow source, which inherits its CPU and takes it for a few
 * microseconds every 500) on the first CPU, the peer on the second.
 * SPDX-License-Identifier: MIT */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include <spindle.h>

#include "rows.h"

#define SLOW_PERIOD_NS 500000

typedef struct source {
    /* The source's thread writes cell and reads polling: alone on their
     * line, so an event moves this line and no other. */
    _Alignas(64) _Atomic long cell; /* written by the source's thread */
    _Atomic bool polling;           /* between poll_begin and poll_end */
    _Alignas(64) spindle_notifier *n;
    long seen;                      /* the loop's */
} source;

typedef struct mixed {
    spindle_ctx *ctx;
    source fast, slow;
    _Alignas(64) _Atomic long request; /* loop -> fast peer */
    _Atomic bool stop;                 /* read by both threads */
    _Alignas(64) long sent;
    int64_t sent_at;
    double *rtt; /* one sample per fast round trip */
    long n_rtt, max_rtt;
    long slow_events;
    int64_t end; /* the loop stops sending after this time */
    bool done;   /* the last answer came */
} mixed;

/* Publish v; kick the notifier unless the handler is busy polling. The
 * store and the load are sequentially consistent, as are poll_end's store
 * and the io_poll check spindle makes after it: one side always sees the
 * other (no lost event). */
static void source_post(source *s, long v)
{
    atomic_store(&s->cell, v);
    if (!atomic_load(&s->polling))
        spindle_notifier_set(s->n);
}

static bool source_new_value(source *s)
{
    long v = atomic_load_explicit(&s->cell, memory_order_acquire);
    if (v == s->seen)
        return false;
    s->seen = v;
    return true;
}

static void send_request(mixed *m)
{
    m->sent_at = now_ns();
    atomic_store_explicit(&m->request, ++m->sent, memory_order_release);
}

static bool fast_poll(void *p)
{
    mixed *m = p;
    if (!source_new_value(&m->fast))
        return false;
    int64_t t = now_ns();
    if (m->n_rtt < m->max_rtt)
        m->rtt[m->n_rtt++] = (double)(t - m->sent_at);
    if (t < m->end)
        send_request(m);
    else
        m->done = true;
    return true;
}

static void fast_read(void *p)
{
    mixed *m = p;
    spindle_notifier_test_and_clear(m->fast.n);
    fast_poll(m);
}

static bool slow_poll(void *p)
{
    mixed *m = p;
    if (!source_new_value(&m->slow))
        return false;
    m->slow_events++;
    return true;
}

static void slow_read(void *p)
{
    mixed *m = p;
    spindle_notifier_test_and_clear(m->slow.n);
    slow_poll(m);
}

static void begin_fast(void *p) { atomic_store(&((mixed *)p)->fast.polling, true); }
static void end_fast(void *p) { atomic_store(&((mixed *)p)->fast.polling, false); }
static void begin_slow(void *p) { atomic_store(&((mixed *)p)->slow.polling, true); }
static void end_slow(void *p) { atomic_store(&((mixed *)p)->slow.polling, false); }

/* The fast peer: answers each request at once. */
static void *fast_peer(void *p)
{
    mixed *m = p;
    pin_thread_always(1);
    long last = 0;
    while (!atomic_load_explicit(&m->stop, memory_order_relaxed)) {
        long v = atomic_load_explicit(&m->request, memory_order_acquire);
        if (v != last) {
            last = v;
            source_post(&m->fast, v);
        }
    }
    return NULL;
}

/* The slow source: an event every 500 µs. */
static void *slow_source(void *p)
{
    mixed *m = p;
    int64_t next = now_ns() + SLOW_PERIOD_NS;
    for (long k = 1; !atomic_load_explicit(&m->stop, memory_order_relaxed); k++) {
        sleep_until_ns(next);
        source_post(&m->slow, k);
        next += SLOW_PERIOD_NS;
    }
    return NULL;
}

static void add_source(mixed *m, source *s, spindle_io_fn *rd, spindle_poll_fn *poll,
                       spindle_io_fn *begin, spindle_io_fn *end)
{
    s->n = spindle_notifier_new(false);
    BENCH_CHECK(s->n, "spindle_notifier_new");
    BENCH_CHECK(spindle_set_event_notifier(m->ctx, s->n, false, rd, poll, m) == 0,
                "spindle_set_event_notifier");
    spindle_set_event_notifier_poll(m->ctx, s->n, begin, end);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct mixed_sample {
    double p50, p99, cpu;
} mixed_sample;

static mixed_sample mixed_once(bool with_slow, bool shared, int64_t duration_ns)
{
    static mixed m; /* cache-line aligned cells */
    double *rtt = m.rtt;
    long max_rtt = m.max_rtt;
    memset(&m, 0, sizeof m);
    m.max_rtt = max_rtt ? max_rtt : 4000000;
    m.rtt = rtt ? rtt : malloc(sizeof *m.rtt * (size_t)m.max_rtt);
    BENCH_CHECK(m.rtt, "out of memory");

    if (shared)
        setenv("SPINDLE_POLL_WINDOW", "shared", 1);
    m.ctx = spindle_ctx_new();
    unsetenv("SPINDLE_POLL_WINDOW");
    BENCH_CHECK(m.ctx, "spindle_ctx_new");
    add_source(&m, &m.fast, fast_read, fast_poll, begin_fast, end_fast);
    if (with_slow)
        add_source(&m, &m.slow, slow_read, slow_poll, begin_slow, end_slow);

    pthread_t peer, slow;
    BENCH_CHECK(pthread_create(&peer, NULL, fast_peer, &m) == 0, "pthread_create");
    if (with_slow)
        BENCH_CHECK(pthread_create(&slow, NULL, slow_source, &m) == 0, "pthread_create");
    int64_t c0 = thread_cpu_ns();
    m.end = now_ns() + duration_ns;
    send_request(&m);
    while (!m.done)
        spindle_poll(m.ctx, true);
    int64_t cpu = thread_cpu_ns() - c0;
    atomic_store(&m.stop, true);
    pthread_join(peer, NULL);
    if (with_slow)
        pthread_join(slow, NULL);
    BENCH_CHECK(m.n_rtt > 0 && m.n_rtt == m.sent, "polled-mixed: %ld of %ld round trips",
                m.n_rtt, m.sent);
    /* On a loaded machine the slow thread may get few time slices: it must
     * have posted at all. */
    BENCH_CHECK(!with_slow || m.slow_events > 0, "polled-mixed: no slow event");
    if (getenv("BENCH_STATS")) {
        spindle_stats st;
        spindle_get_stats(m.ctx, &st);
        fprintf(stderr, "polled-mixed%s%s: %ld rtt, %ld slow; per 1000 rtt: kernel waits %.1f "
                "(blocking %.1f), poll hits %.0f, misses %.1f; window %lld ns\n",
                with_slow ? " +slow" : "", shared ? " shared" : "", m.n_rtt, m.slow_events,
                1000.0 * st.kernel_waits / m.n_rtt, 1000.0 * st.blocking_waits / m.n_rtt,
                1000.0 * st.poll_hits / m.n_rtt, 1000.0 * st.poll_misses / m.n_rtt,
                (long long)st.poll_ns);
    }
    spindle_set_event_notifier(m.ctx, m.fast.n, false, NULL, NULL, NULL);
    if (with_slow)
        spindle_set_event_notifier(m.ctx, m.slow.n, false, NULL, NULL, NULL);
    spindle_ctx_free(m.ctx);
    spindle_notifier_free(m.fast.n);
    if (with_slow)
        spindle_notifier_free(m.slow.n);

    qsort(m.rtt, (size_t)m.n_rtt, sizeof *m.rtt, cmp_double);
    return (mixed_sample){m.rtt[m.n_rtt / 2], m.rtt[m.n_rtt * 99 / 100],
                          (double)cpu / m.n_rtt};
}

void row_polled_mixed(void)
{
    static const struct {
        const char *label;
        bool slow, shared;
    } lines[] = {
        {"spindle fast alone", false, false},
        {"spindle + slow", true, false},
        {"spindle + slow, shared window", true, true},
    };
    int64_t duration = cfg.quick ? 100000000 : 300000000;
    pin_thread_always(0); /* the loop; threads it creates inherit this */
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        double p50[64], p99[64], cpu[64];
        mixed_once(lines[i].slow, lines[i].shared, duration / 10);
        for (int r = 0; r < cfg.reps; r++) {
            mixed_sample s = mixed_once(lines[i].slow, lines[i].shared, duration);
            p50[r] = s.p50;
            p99[r] = s.p99;
            cpu[r] = s.cpu;
        }
        result_add("polled-mixed", "fast p50", "ns/rtt", lines[i].label, KIND_SPINDLE, p50,
                   cfg.reps, "");
        result_add("polled-mixed", "fast p99", "ns/rtt", lines[i].label, KIND_SPINDLE, p99,
                   cfg.reps, "");
        result_add("polled-mixed", "loop cpu", "cpu-ns/rtt", lines[i].label, KIND_SPINDLE, cpu,
                   cfg.reps, "");
    }
    restore_main_pin();
}
