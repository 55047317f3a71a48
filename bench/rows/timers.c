/* timers: one million one-shot timers armed (handles created beforehand,
 * untimed, as the peers' handles are preallocated) and fired: ns per arm,
 * ns per fire; each must fire once, in deadline order. Churn: re-arming and
 * stopping 10,000 armed timers a million times: ns per operation.
 * SPDX-License-Identifier: MIT */
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
 * new random deadline. */
static double churn(const bench_impl *im, long k, long ops)
{
    const bench_adapter *a = im->a;
    void *loop = a->loop_new(&im->opts);
    void **t = malloc(k * sizeof *t);
    bool *armed = calloc(k, 1);
    long fired = 0;
    tm_run r = {.n = 0};
    tm_slot slot = {&r, 0};
    BENCH_CHECK(t && armed, "out of memory");
    r.count = calloc(1, 1);
    r.order = NULL;
    for (long i = 0; i < k; i++)
        t[i] = a->timer_new(loop, on_fire, &slot);
    a->now_update(loop);
    uint64_t seed = 42;
    for (long i = 0; i < k; i++) {
        a->timer_arm(t[i], CHURN_AHEAD_NS + (int64_t)(lcg(&seed) % 1000000) * 1000);
        armed[i] = true;
    }
    /* The operations' random choices, drawn before the clock starts. */
    uint32_t *pick = malloc(ops * sizeof *pick);
    int64_t *when = malloc(ops * sizeof *when);
    BENCH_CHECK(pick && when, "out of memory");
    for (long o = 0; o < ops; o++) {
        uint64_t x = lcg(&seed);
        pick[o] = (uint32_t)(x % k) | (uint32_t)(((x >> 24) & 3) == 0) << 31;
        when[o] = CHURN_AHEAD_NS + (int64_t)(lcg(&seed) % 1000000) * 1000;
    }
    int64_t t0 = now_ns();
    for (long o = 0; o < ops; o++) {
        uint32_t i = pick[o] & 0x7fffffff;
        if ((pick[o] >> 31) && armed[i]) {
            a->timer_stop(t[i]);
            armed[i] = false;
        } else {
            a->timer_arm(t[i], when[o]);
            armed[i] = true;
        }
    }
    int64_t t1 = now_ns();
    a->run_once(loop, false);
    fired = r.fired;
    BENCH_CHECK(fired == 0, "%s: %ld timers fired during churn", im->label, fired);
    for (long i = 0; i < k; i++)
        a->timer_free(t[i]);
    a->loop_free(loop);
    free(t);
    free(armed);
    free(pick);
    free(when);
    free(r.count);
    return (double)(t1 - t0) / ops;
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
}
