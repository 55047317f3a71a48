/* timers: one million one-shot timers armed (handles created beforehand,
 * untimed, as the peers' handles are preallocated) and fired: ns per arm,
 * ns per fire; each must fire once, in deadline order. Churn: re-arming and
 * stopping 10,000 armed timers a million times: ns per operation, on the
 * loop's thread (between iterations, and inside a callback) and from
 * another thread while the loop runs (libraries that allow it). The live
 * second: a million timers due over one second, fired by a loop running
 * as it would: CPU per timer and lateness.
 * SPDX-License-Identifier: MIT */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "rows.h"

typedef struct tm_run {
    long n, fired;
    int64_t *delay;  /* per timer, ns after the base */
    int32_t *order;  /* timers in the order they fired */
    uint8_t *count;  /* fires per timer */
} tm_run;

typedef struct tm_slot {
    tm_run *run;
    int32_t i;
} tm_slot;

static void on_fire(void *p)
{
    tm_slot *s = p;
    tm_run *r = s->run;
    if (r->fired < r->n)
        r->order[r->fired] = s->i;
    r->fired++;
    r->count[s->i]++;
}

/* Deadlines 1 ms + a permutation of 0..n-1 times 20 ns: armed out of
 * order, spread over 20 ms for a million (7919 is prime, so i * 7919 mod n
 * is a permutation whenever n is not a multiple of it). */
#define SPREAD_NS 20

static void arm_fire(const bench_impl *im, long n, double *arm_ns, double *fire_ns)
{
    const bench_adapter *a = im->a;
    tm_run r = {.n = n};
    r.delay = malloc(n * sizeof *r.delay);
    r.order = malloc(n * sizeof *r.order);
    r.count = calloc(n, 1);
    tm_slot *slots = malloc(n * sizeof *slots);
    void **t = malloc(n * sizeof *t);
    BENCH_CHECK(r.delay && r.order && r.count && slots && t, "out of memory");
    void *loop = a->loop_new(&im->opts);
    for (long i = 0; i < n; i++) {
        r.delay[i] = 1000000 + (int64_t)((i * 7919) % n) * SPREAD_NS;
        slots[i] = (tm_slot){&r, (int32_t)i};
        t[i] = a->timer_new(loop, on_fire, &slots[i]);
    }
    a->now_update(loop);
    int64_t t0 = now_ns();
    for (long i = 0; i < n; i++)
        a->timer_arm(t[i], r.delay[i]);
    int64_t t1 = now_ns();
    /* Let every deadline pass, so the firing is timed without idle waits. */
    sleep_until_ns(t1 + 1000000 + n * SPREAD_NS + 3000000);
    int64_t t2 = now_ns();
    while (r.fired < n)
        a->run_once(loop, true);
    int64_t t3 = now_ns();
    a->run_once(loop, false);

    BENCH_CHECK(r.fired == n, "%s: %ld timers fired of %ld", im->label, r.fired, n);
    for (long i = 0; i < n; i++)
        BENCH_CHECK(r.count[i] == 1, "%s: timer %ld fired %d times", im->label, i, r.count[i]);
    if (a->timer_ordered) {
        /* In the library's own resolution; one that reads the clock on each
         * arm may shift a deadline by up to the time the arming took. */
        int64_t res = a->timer_res_ns, slack = a->timer_reads_clock ? t1 - t0 : 0;
        for (long k = 1; k < n; k++) {
            int64_t prev = r.delay[r.order[k - 1]], cur = r.delay[r.order[k]];
            if (res > 1) {
                prev = (prev + res - 1) / res * res;
                cur = (cur + res - 1) / res * res;
            }
            BENCH_CHECK(cur + slack + (a->timer_reads_clock ? res : 0) >= prev,
                        "%s: timer %d (deadline +%lld ns) fired after timer %d (+%lld ns)",
                        im->label, r.order[k], (long long)cur, r.order[k - 1],
                        (long long)prev);
        }
    }
    for (long i = 0; i < n; i++)
        a->timer_free(t[i]);
    a->loop_free(loop);
    free(r.delay);
    free(r.order);
    free(r.count);
    free(slots);
    free(t);
    *arm_ns = (double)(t1 - t0) / n;
    *fire_ns = (double)(t3 - t2) / n;
}

/* Far enough ahead that none fires even on a slow, loaded machine. */
#define CHURN_AHEAD_NS 100000000000LL

static uint64_t lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return *s >> 33;
}

/* Churn: k timers armed 100 s or more ahead (none fires); each operation picks
 * one at random and stops it (if armed, one time in four) or moves it to a
 * new random deadline. The random choices are drawn before the clock starts. */
typedef struct churn_run {
    const bench_adapter *a;
    void *loop;
    long k, ops;
    void **t;
    bool *armed;
    uint32_t *pick;
    int64_t *when;
    tm_run r;
    tm_slot slot;
    /* Cross-thread variant: the loop thread runs until `done`. */
    void *async;
    atomic_bool done;
    long ops_done; /* fewer than ops if the time cap came first */
    int64_t t0, t1;
} churn_run;

static void churn_setup(churn_run *c, const bench_impl *im, long k, long ops)
{
    *c = (churn_run){.a = im->a, .k = k, .ops = ops};
    c->loop = c->a->loop_new(&im->opts);
    c->t = malloc(k * sizeof *c->t);
    c->armed = calloc(k, 1);
    c->r.count = calloc(1, 1);
    c->slot = (tm_slot){&c->r, 0};
    c->pick = malloc(ops * sizeof *c->pick);
    c->when = malloc(ops * sizeof *c->when);
    BENCH_CHECK(c->t && c->armed && c->r.count && c->pick && c->when, "out of memory");
    for (long i = 0; i < k; i++)
        c->t[i] = c->a->timer_new(c->loop, on_fire, &c->slot);
    c->a->now_update(c->loop);
    uint64_t seed = 42;
    for (long i = 0; i < k; i++) {
        c->a->timer_arm(c->t[i], CHURN_AHEAD_NS + (int64_t)(lcg(&seed) % 1000000) * 1000);
        c->armed[i] = true;
    }
    for (long o = 0; o < ops; o++) {
        uint64_t x = lcg(&seed);
        c->pick[o] = (uint32_t)(x % k) | (uint32_t)(((x >> 24) & 3) == 0) << 31;
        c->when[o] = CHURN_AHEAD_NS + (int64_t)(lcg(&seed) % 1000000) * 1000;
    }
}

static void churn_ops_range(churn_run *c, long from, long to)
{
    const bench_adapter *a = c->a;
    for (long o = from; o < to; o++) {
        uint32_t i = c->pick[o] & 0x7fffffff;
        if ((c->pick[o] >> 31) && c->armed[i]) {
            a->timer_stop(c->t[i]);
            c->armed[i] = false;
        } else {
            a->timer_arm(c->t[i], c->when[o]);
            c->armed[i] = true;
        }
    }
}

static void churn_ops(churn_run *c) { churn_ops_range(c, 0, c->ops); }

static void churn_teardown(churn_run *c, const char *label)
{
    c->a->run_once(c->loop, false);
    BENCH_CHECK(c->r.fired == 0, "%s: %ld timers fired during churn", label, c->r.fired);
    for (long i = 0; i < c->k; i++)
        c->a->timer_free(c->t[i]);
    if (c->async)
        c->a->async_free(c->async);
    c->a->loop_free(c->loop);
    free(c->t);
    free(c->armed);
    free(c->pick);
    free(c->when);
    free(c->r.count);
}

static double churn(const bench_impl *im, long k, long ops)
{
    churn_run c;
    churn_setup(&c, im, k, ops);
    int64_t t0 = now_ns();
    churn_ops(&c);
    int64_t t1 = now_ns();
    churn_teardown(&c, im->label);
    return (double)(t1 - t0) / ops;
}

/* The same operations made where a server makes them: inside a callback
 * of the loop (a deferred call that runs once), as a handler re-arms its
 * connection's timeout on every read. spindle takes no lock there; from
 * outside an iteration (churn above) it takes one compare-and-swap per
 * call. */
static bool churn_in_callback(void *p)
{
    churn_run *c = p;
    c->t0 = now_ns();
    churn_ops(c);
    c->t1 = now_ns();
    return false;
}

static double churn_callback(const bench_impl *im, long k, long ops)
{
    churn_run c;
    churn_setup(&c, im, k, ops);
    void *d = c.a->defer_new(c.loop, churn_in_callback, &c);
    c.a->defer_start(d);
    while (c.t1 == 0)
        c.a->run_once(c.loop, false);
    c.a->defer_free(d);
    churn_teardown(&c, im->label);
    return (double)(c.t1 - c.t0) / ops;
}

/* Cross-thread churn: the same operations made by another thread while the
 * loop thread runs blocking iterations (the library applies them, locking or
 * queueing, and wakes the loop when it must). Reported: ns per operation on
 * the thread making them, and the CPU the loop thread spent meanwhile, per
 * operation (applying them, waking up), which a same-thread churn pays
 * inline. */
static void churn_wake(void *p) { (void)p; }

/* Capped in time as the ping-pong rows are: GLib's loop wakes up for each
 * operation, 90 us apiece on a VM, which made one repetition 90 s. */
#define CHURN_REMOTE_CHUNK 4096

static void *churn_thread(void *p)
{
    churn_run *c = p;
    c->t0 = now_ns();
    int64_t cap = c->t0 + bench_time_cap_ns();
    long o = 0;
    do {
        long end = o + CHURN_REMOTE_CHUNK < c->ops ? o + CHURN_REMOTE_CHUNK : c->ops;
        churn_ops_range(c, o, end);
        o = end;
    } while (o < c->ops && now_ns() < cap);
    c->ops_done = o;
    c->t1 = now_ns();
    atomic_store(&c->done, true);
    c->a->async_send(c->async);
    return NULL;
}

static void churn_remote(const bench_impl *im, long k, long ops, double *op_ns,
                         double *loop_cpu_ns)
{
    churn_run c;
    churn_setup(&c, im, k, ops);
    c.async = c.a->async_new(c.loop, churn_wake, NULL);
    atomic_init(&c.done, false);
    pthread_t th;
    int64_t cpu0 = thread_cpu_ns();
    BENCH_CHECK(pthread_create(&th, NULL, churn_thread, &c) == 0, "pthread_create");
    while (!atomic_load(&c.done))
        c.a->run_once(c.loop, true);
    pthread_join(th, NULL);
    c.a->run_once(c.loop, false); /* whatever was queued last */
    int64_t cpu1 = thread_cpu_ns();
    churn_teardown(&c, im->label);
    *op_ns = (double)(c.t1 - c.t0) / c.ops_done;
    *loop_cpu_ns = (double)(cpu1 - cpu0) / c.ops_done;
}

/* The live second: n timers armed on deadlines spread evenly, one per
 * microsecond (a million: one second; QUICK=1's 100,000: a tenth, at the
 * same rate), after a lead that leaves every library time to arm them all
 * (1 µs a timer: GLib takes 330 ns; a run where arming outlasts the lead is
 * noted, as its first timers are then late by that), then blocking
 * iterations until all
 * have fired: the loop thread's CPU time per timer, and how late they fired
 * (the clock in the callback minus the deadline in the library's
 * resolution): the largest and the 99th percentile. */
#define LIVE_SPACING_NS 1000
#define LIVE_LEAD_NS(n) (50000000LL + (n) * 1000LL)

typedef struct live_run {
    long n, fired;
    int64_t base, res;
    int64_t *delay;
    float *late_us;
} live_run;

typedef struct live_slot {
    live_run *r;
    int32_t i;
} live_slot;

static void on_live(void *p)
{
    live_slot *s = p;
    live_run *r = s->r;
    int64_t d = r->delay[s->i];
    if (r->res > 1)
        d = (d + r->res - 1) / r->res * r->res;
    r->late_us[s->i] = (float)((now_ns() - (r->base + d)) / 1e3);
    r->fired++;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static bool live(const bench_impl *im, long n, double *cpu_ns, double *late_max_us,
                 double *late_p99_us)
{
    const bench_adapter *a = im->a;
    live_run r = {.n = n, .res = a->timer_res_ns};
    r.delay = malloc(n * sizeof *r.delay);
    r.late_us = malloc(n * sizeof *r.late_us);
    live_slot *slots = malloc(n * sizeof *slots);
    void **t = malloc(n * sizeof *t);
    BENCH_CHECK(r.delay && r.late_us && slots && t, "out of memory");
    void *loop = a->loop_new(&im->opts);
    for (long i = 0; i < n; i++) {
        r.delay[i] = LIVE_LEAD_NS(n) + (int64_t)((i * 7919) % n) * LIVE_SPACING_NS;
        r.late_us[i] = -1;
        slots[i] = (live_slot){&r, (int32_t)i};
        t[i] = a->timer_new(loop, on_live, &slots[i]);
    }
    /* Before the library's own base (now_update), in its resolution: its
     * deadlines are then at or after base + delay. */
    r.base = now_ns();
    if (r.res > 1)
        r.base = r.base / r.res * r.res;
    a->now_update(loop);
    for (long i = 0; i < n; i++)
        a->timer_arm(t[i], r.delay[i]);
    bool overran = now_ns() >= r.base + LIVE_LEAD_NS(n);
    int64_t c0 = thread_cpu_ns();
    while (r.fired < n)
        a->run_once(loop, true);
    int64_t c1 = thread_cpu_ns();
    BENCH_CHECK(r.fired == n, "%s: %ld timers fired of %ld", im->label, r.fired, n);
    /* spindle never fires early; a peer may (libevent reads a coarse clock),
     * which shows as a negative lateness. */
    for (long i = 0; i < n && im->kind == KIND_SPINDLE; i++)
        BENCH_CHECK(r.late_us[i] >= 0, "%s: timer %ld fired early (%.1f us)", im->label, i,
                    r.late_us[i]);
    qsort(r.late_us, n, sizeof *r.late_us, cmp_float);
    *cpu_ns = (double)(c1 - c0) / n;
    *late_max_us = r.late_us[n - 1];
    *late_p99_us = r.late_us[n - 1 - n / 100];
    for (long i = 0; i < n; i++)
        a->timer_free(t[i]);
    a->loop_free(loop);
    free(r.delay);
    free(r.late_us);
    free(slots);
    free(t);
    return overran;
}

void row_timers(void)
{
    long n = cfg.quick ? 100000 : 1000000, ops = cfg.quick ? 100000 : 1000000;
    bench_impl impls[8];
    int k = 0;
    impls[k++] = (bench_impl){"spindle", &adapter_spindle, {0}, KIND_SPINDLE};
    for (int i = 0; i < n_peer_impls; i++)
        impls[k++] = peer_impls[i];
    char param[32];
    snprintf(param, sizeof param, "n=%ld", n);
    for (int i = 0; i < k; i++) {
        if (!impl_wanted(impls[i].label))
            continue;
        double arm[64], fire[64], d;
        arm_fire(&impls[i], n / 10, &d, &d);
        for (int r = 0; r < cfg.reps; r++)
            arm_fire(&impls[i], n, &arm[r], &fire[r]);
        const char *note = impls[i].a->timer_ordered ? ""
                           : "order not checked: ready sources run in attach order";
        result_add("timers arm+fire", param, "ns/arm", impls[i].label, impls[i].kind, arm,
                   cfg.reps, "");
        result_add("timers arm+fire", param, "ns/fire", impls[i].label, impls[i].kind, fire,
                   cfg.reps, note);
    }
    snprintf(param, sizeof param, "10k armed");
    for (int i = 0; i < k; i++) {
        if (!impl_wanted(impls[i].label))
            continue;
        double v[64];
        churn(&impls[i], 10000, ops / 10);
        for (int r = 0; r < cfg.reps; r++)
            v[r] = churn(&impls[i], 10000, ops);
        result_add("timers churn", param, "ns/op", impls[i].label, impls[i].kind, v, cfg.reps,
                   "");
    }
    for (int i = 0; i < k; i++) {
        if (!impl_wanted(impls[i].label))
            continue;
        double v[64];
        churn_callback(&impls[i], 10000, ops / 10);
        for (int r = 0; r < cfg.reps; r++)
            v[r] = churn_callback(&impls[i], 10000, ops);
        result_add("timers churn callback", param, "ns/op", impls[i].label, impls[i].kind, v,
                   cfg.reps, "inside a callback of the loop");
    }
    for (int i = 0; i < k; i++) {
        if (!impl_wanted(impls[i].label) || !impls[i].a->timer_any_thread)
            continue;
        double v[64], w[64], d;
        churn_remote(&impls[i], 10000, ops / 10, &d, &d);
        for (int r = 0; r < cfg.reps; r++)
            churn_remote(&impls[i], 10000, ops, &v[r], &w[r]);
        result_add("timers churn x-thread", param, "ns/op", impls[i].label, impls[i].kind, v,
                   cfg.reps, "on the thread making the changes");
        result_add("timers churn x-thread", param, "loop CPU ns/op", impls[i].label,
                   impls[i].kind, w, cfg.reps, "the loop thread's, applying them");
    }
    /* The live second also without busy polling: with the default window
     * the loop spins through the microsecond gaps between deadlines (its
     * waits are all shorter than the window), which costs the whole core
     * and buys lateness; the poll-off line shows the sleeping loop. */
    snprintf(param, sizeof param, "n=%ld", n);
    memmove(&impls[2], &impls[1], sizeof *impls * (size_t)(k - 1));
    impls[1] = (bench_impl){"spindle (poll off)", &adapter_spindle, {.poll_off = true},
                            KIND_SPINDLE};
    k++;
    for (int i = 0; i < k; i++) {
        if (!impl_wanted(impls[i].label))
            continue;
        double cpu[64], mx[64], p99[64];
        bool overran = false;
        for (int r = 0; r < cfg.reps; r++)
            overran |= live(&impls[i], n, &cpu[r], &mx[r], &p99[r]);
        const char *note = overran ? "arming outlasted the lead: includes that"
                           : impls[i].a->timer_res_ns >= 1000000 ? "ms deadlines" : "";
        result_add("timers live second", param, "CPU ns/timer", impls[i].label,
                   impls[i].kind, cpu, cfg.reps, "");
        result_add("timers live second", param, "us late, max", impls[i].label,
                   impls[i].kind, mx, cfg.reps, note);
        result_add("timers live second", param, "us late, p99", impls[i].label,
                   impls[i].kind, p99, cfg.reps, note);
    }
}
