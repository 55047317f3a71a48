/* defer: a callback that schedules itself for the next iteration, a
 * million times (spindle bottom half, uv_idle, ev_idle, event_active,
 * g_idle): ns per callback.
 * SPDX-License-Identifier: MIT */
#include "rows.h"

typedef struct defer_run {
    long n, count;
} defer_run;

static bool on_defer(void *p)
{
    defer_run *d = p;
    return ++d->count < d->n;
}

static double defer_once(const bench_impl *im, long n)
{
    const bench_adapter *a = im->a;
    defer_run d = {.n = n};
    void *loop = a->loop_new(&im->opts);
    void *h = a->defer_new(loop, on_defer, &d);
    int64_t t0 = now_ns();
    a->defer_start(h);
    while (d.count < n)
        a->run_once(loop, true);
    int64_t t1 = now_ns();
    /* It must have stopped: one more iteration runs nothing. */
    a->run_once(loop, false);
    BENCH_CHECK(d.count == n, "%s: %ld deferred calls of %ld", im->label, d.count, n);
    a->defer_free(h);
    a->loop_free(loop);
    return (double)(t1 - t0) / n;
}

void row_defer(void)
{
    long n = cfg.quick ? 100000 : 1000000;
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
        double v[64];
        defer_once(&impls[i], n / 10);
        for (int r = 0; r < cfg.reps; r++)
            v[r] = defer_once(&impls[i], n);
        /* libevent runs an event re-activated from its own callback in the same
         * pass over the active queue: no kernel poll between two calls. */
        result_add("defer", param, "ns/callback", impls[i].label, impls[i].kind, v, cfg.reps,
                   impls[i].a == &adapter_libevent ? "runs again in the same pass (no poll)" : "");
    }
}
