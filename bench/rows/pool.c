/* pool: empty jobs through each library's thread pool, done back on the
 * loop thread (spindle_work_submit, libuv's uv_queue_work, GLib's
 * GThreadPool with an idle source back to its loop), BENCH_POOL_WORKERS
 * workers each.
 * - "1 in flight": done submits the next job, so each job is a round trip
 *   from submit to done: ns per round trip, and CPU per job (every thread
 *   of the process). The floor is two threads spinning on one cache line.
 * - "all at once": every job submitted before the loop runs: ns per job of
 *   throughput, and CPU per job.
 * SPDX-License-Identifier: MIT */
#include "rows.h"

typedef struct pool_run {
    long n, done;
    bool chain;    /* done submits the next job */
    bool stopped;  /* the chain ended (count or time cap) */
    int64_t cap;   /* chained runs stop after this time even short of n */
    void *req;     /* the chained run's one request */
    const bench_adapter *a;
} pool_run;

static void empty_work(void *arg) { (void)arg; }

static void on_done(void *arg)
{
    pool_run *r = arg;
    r->done++;
    if (!r->chain)
        return;
    if (r->done < r->n && (r->done % 64 || now_ns() < r->cap))
        r->a->work_submit(r->req);
    else
        r->stopped = true;
}

static int64_t process_cpu_ns(void) { return bench_clock(CLOCK_PROCESS_CPUTIME_ID); }

static rtt_sample pool_once(const bench_impl *im, long n, bool chain)
{
    const bench_adapter *a = im->a;
    pool_run r = {.n = n, .chain = chain, .a = a};
    void *loop = a->loop_new(&im->opts);
    long nreq = chain ? 1 : n;
    void **reqs = malloc(nreq * sizeof *reqs);
    BENCH_CHECK(reqs, "out of memory");
    for (long i = 0; i < nreq; i++)
        reqs[i] = a->work_new(loop, empty_work, on_done, &r);
    r.req = reqs[0];

    int64_t c0 = process_cpu_ns(), t0 = now_ns();
    r.cap = t0 + bench_time_cap_ns();
    for (long i = 0; i < nreq; i++)
        a->work_submit(reqs[i]);
    while (chain ? !r.stopped : r.done < n)
        a->run_once(loop, true);
    int64_t t1 = now_ns(), c1 = process_cpu_ns();
    BENCH_CHECK(r.done > 0 && r.done <= n, "%s: %ld jobs done of %ld", im->label, r.done, n);
    n = r.done;

    for (long i = 0; i < nreq; i++)
        a->work_free(reqs[i]);
    free(reqs);
    a->loop_free(loop);
    return (rtt_sample){(double)(t1 - t0) / n, (double)(c1 - c0) / n};
}

static void emit(const char *param, const char *impl, int kind, rtt_sample *s, int reps)
{
    double wall[64], cpu[64];
    for (int i = 0; i < reps; i++) {
        wall[i] = s[i].wall_ns;
        cpu[i] = s[i].cpu_ns;
    }
    result_add("pool", param, "ns/job", impl, kind, wall, reps, "");
    result_add("pool", param, "cpu-ns/job", impl, kind, cpu, reps, "");
}

void row_pool(void)
{
    long n = cfg.quick ? 10000 : 100000;
    rtt_sample s[64];
    char serial[32], batch[32];
    snprintf(serial, sizeof serial, "1 in flight");
    snprintf(batch, sizeof batch, "%ld at once", n);

    floor_spin_rtt(n / 10);
    for (int r = 0; r < cfg.reps; r++)
        s[r] = floor_spin_rtt(n);
    emit(serial, "floor: spin", KIND_FLOOR, s, cfg.reps);

    bench_impl impls[8];
    int k = 0;
    impls[k++] = (bench_impl){"spindle", &adapter_spindle, {0}, KIND_SPINDLE};
    impls[k++] = (bench_impl){"spindle (poll off)", &adapter_spindle,
                              {.poll_off = true}, KIND_SPINDLE};
    for (int i = 0; i < n_peer_impls; i++)
        if (peer_impls[i].a->work_new)
            impls[k++] = peer_impls[i];
    for (int i = 0; i < k; i++) {
        if (!impl_wanted(impls[i].label))
            continue;
        for (int chain = 1; chain >= 0; chain--) {
            pool_once(&impls[i], n / 10, chain);
            for (int r = 0; r < cfg.reps; r++)
                s[r] = pool_once(&impls[i], n, chain);
            emit(chain ? serial : batch, impls[i].label, impls[i].kind, s, cfg.reps);
        }
    }
}
