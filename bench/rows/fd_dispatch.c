/* fd-dispatch, in the style of libevent's bench.c: N pipes, a read watcher
 * on each, 100 tokens circulating; each callback reads one byte and writes
 * one on to pipe (i + 1) mod N. ns per callback, and setup ns per watched
 * fd (registering the N watchers; the pipes and the loop exist already).
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "rows.h"

#define TOKENS 100
#define TIME_CAP_NS 200000000
#define MIN_CALLBACKS 500 /* five passes of the tokens at least */

void fdd_callback(void *p)
{
    fdd_slot *s = p;
    fdd *d = s->d;
    char c;
    ssize_t r = read(d->rfd[s->i], &c, 1);
    BENCH_CHECK(r == 1, "fd-dispatch: callback on pipe %d read %zd (errno %d)", s->i, r,
                errno);
    BENCH_CHECK(write(d->wfd[(s->i + 1) % d->n], &c, 1) == 1, "fd-dispatch: write");
    d->count++;
}

static void pipes_open(fdd *d, int n)
{
    d->n = n;
    d->rfd = calloc(n, sizeof *d->rfd);
    d->wfd = calloc(n, sizeof *d->wfd);
    d->slots = calloc(n, sizeof *d->slots);
    BENCH_CHECK(d->rfd && d->wfd && d->slots, "out of memory");
    for (int i = 0; i < n; i++) {
        int p[2];
        BENCH_CHECK(pipe2(p, O_NONBLOCK | O_CLOEXEC) == 0, "pipe2 #%d: %s", i,
                    strerror(errno));
        d->rfd[i] = p[0];
        d->wfd[i] = p[1];
        d->slots[i] = (fdd_slot){d, i};
    }
}

static void pipes_close(fdd *d)
{
    for (int i = 0; i < d->n; i++) {
        close(d->rfd[i]);
        close(d->wfd[i]);
    }
    free(d->rfd);
    free(d->wfd);
    free(d->slots);
}

static void tokens_start(fdd *d, long target)
{
    d->count = 0;
    d->target = target;
    for (int k = 0; k < TOKENS; k++)
        BENCH_CHECK(write(d->wfd[(long)k * d->n / TOKENS], "x", 1) == 1, "write");
}

/* Every token must still be somewhere: read them all back. */
static void tokens_check(fdd *d, const char *who)
{
    long left = 0;
    char buf[256];
    for (int i = 0; i < d->n; i++) {
        ssize_t r;
        while ((r = read(d->rfd[i], buf, sizeof buf)) > 0)
            left += r;
    }
    BENCH_CHECK(d->count >= d->target || d->count >= MIN_CALLBACKS, "%s: %ld callbacks of %ld", who, d->count, d->target);
    BENCH_CHECK(left == TOKENS, "%s: %ld tokens left in the pipes, not %d", who, left, TOKENS);
}

static void one_impl(fdd *d, const bench_impl *im, long target, double *ns, double *setup)
{
    void *loop = im->a->loop_new(&im->opts);
    void **h = malloc(d->n * sizeof *h);
    BENCH_CHECK(h, "out of memory");
    d->count = 0;
    int64_t t0 = now_ns();
    for (int i = 0; i < d->n; i++)
        h[i] = im->a->fd_new(loop, d->rfd[i], fdd_callback, &d->slots[i]);
    /* Some libraries (libev, libuv) only queue the registration and make
     * the epoll_ctl calls in the next iteration: count that iteration (no
     * token yet, so nothing dispatches) in the setup. */
    im->a->run_once(loop, false);
    int64_t t1 = now_ns();
    BENCH_CHECK(d->count == 0, "%s: a callback ran with no token", im->label);
    tokens_start(d, target);
    int64_t t2 = now_ns(), t3 = t2;
    /* Stop at the target count or after a time cap (an O(N) loop at large N
     * would take minutes): the rate is what counts. */
    while (d->count < d->target && t3 - t2 < TIME_CAP_NS) {
        im->a->run_once(loop, true);
        t3 = now_ns();
    }
    for (int i = 0; i < d->n; i++)
        im->a->fd_free(h[i]);
    im->a->loop_free(loop);
    free(h);
    tokens_check(d, im->label);
    *ns = (double)(t3 - t2) / d->count;
    *setup = (double)(t1 - t0) / d->n;
}

void row_fd_dispatch(void)
{
    int sizes[5], ns_ = 0;
    const int want[] = {100, 1000, 10000};
    for (int i = 0; i < 3; i++)
        if (want[i] <= cfg.max_fds_n && !(cfg.quick && want[i] == 10000))
            sizes[ns_++] = want[i];
    if (cfg.max_fds_n > sizes[ns_ - 1])
        sizes[ns_++] = cfg.max_fds_n;
    long target = cfg.quick ? 10000 : 30000;

    bench_impl impls[8];
    int k = 0;
    impls[k++] = (bench_impl){"spindle io_uring", &adapter_spindle,
                              {.backend = BACKEND_IO_URING}, KIND_SPINDLE};
    impls[k++] = (bench_impl){"spindle epoll", &adapter_spindle,
                              {.backend = BACKEND_EPOLL}, KIND_SPINDLE};
    /* Embedded in a host loop (a ppoll on spindle_get_fd, then
     * check and dispatch): what embedding adds to spindle_poll. */
    impls[k++] = (bench_impl){"spindle epoll embedded", &adapter_spindle_embedded,
                              {.backend = BACKEND_EPOLL}, KIND_SPINDLE};
    impls[k++] = (bench_impl){"spindle poll", &adapter_spindle,
                              {.backend = BACKEND_POLL}, KIND_SPINDLE};
    for (int i = 0; i < n_peer_impls; i++)
        impls[k++] = peer_impls[i];

    for (int s = 0; s < ns_; s++) {
        char param[32];
        snprintf(param, sizeof param, "N=%d%s", sizes[s],
                 s == ns_ - 1 && sizes[s] == cfg.max_fds_n ? " (max)" : "");
        fdd d;
        pipes_open(&d, sizes[s]);
        double v[64], setup[64];
        /* The floor: a hand-written epoll loop (first run untimed). */
        for (int r = -1; r < cfg.reps; r++) {
            int idx = r < 0 ? 0 : r;
            tokens_start(&d, r < 0 ? target / 10 : target);
            setup[idx] = floor_epoll_dispatch(&d, &v[idx]);
            tokens_check(&d, "floor: epoll");
        }
        result_add("fd-dispatch", param, "ns/callback", "floor: epoll", KIND_FLOOR, v,
                   cfg.reps, "");
        result_add("fd-dispatch", param, "setup ns/fd", "floor: epoll", KIND_FLOOR, setup,
                   cfg.reps, "");
        for (int i = 0; i < k; i++) {
            if (!impl_wanted(impls[i].label))
                continue;
            double dummy;
            one_impl(&d, &impls[i], target / 10, &dummy, &dummy);
            for (int r = 0; r < cfg.reps; r++)
                one_impl(&d, &impls[i], target, &v[r], &setup[r]);
            result_add("fd-dispatch", param, "ns/callback", impls[i].label, impls[i].kind, v,
                       cfg.reps, "");
            result_add("fd-dispatch", param, "setup ns/fd", impls[i].label, impls[i].kind,
                       setup, cfg.reps, "");
        }
        pipes_close(&d);
    }
}
