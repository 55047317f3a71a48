/* spindle bench: the raw floors, written against the kernel directly, so
 * that a row shows what the library adds to what cannot be avoided.
 * SPDX-License-Identifier: MIT */
#include <pthread.h>
#include <stdatomic.h>
#include <errno.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "rows/rows.h"

/* --- eventfd ping-pong: blocking reads (both threads sleep) or
 * non-blocking reads in a busy loop (nobody sleeps). --- */
typedef struct efd_pp {
    int to_a, to_b;
    bool blocking;
    atomic_bool stop;
    int64_t cpu_b;
} efd_pp;

static void efd_wait(int fd, bool blocking)
{
    uint64_t v;
    for (;;) {
        ssize_t r = read(fd, &v, sizeof v);
        if (r == sizeof v)
            return;
        BENCH_CHECK(!blocking && errno == EAGAIN, "eventfd read: %zd", r);
    }
}

static void efd_signal(int fd)
{
    uint64_t one = 1;
    BENCH_CHECK(write(fd, &one, sizeof one) == sizeof one, "eventfd write");
}

static void *efd_b(void *p)
{
    efd_pp *pp = p;
    pin_thread(1); /* the other side runs on CPU 0 (see main) */
    int64_t c0 = thread_cpu_ns();
    for (;;) {
        efd_wait(pp->to_b, pp->blocking);
        if (atomic_load(&pp->stop))
            break;
        efd_signal(pp->to_a);
    }
    pp->cpu_b = thread_cpu_ns() - c0;
    return NULL;
}

rtt_sample floor_eventfd_rtt(long n, bool blocking)
{
    int flags = EFD_CLOEXEC | (blocking ? 0 : EFD_NONBLOCK);
    efd_pp pp = {.to_a = eventfd(0, flags), .to_b = eventfd(0, flags), .blocking = blocking};
    BENCH_CHECK(pp.to_a >= 0 && pp.to_b >= 0, "eventfd");
    pthread_t t;
    BENCH_CHECK(pthread_create(&t, NULL, efd_b, &pp) == 0, "pthread_create");
    int64_t c0 = thread_cpu_ns(), t0 = now_ns();
    int64_t cap = t0 + bench_time_cap_ns();
    long i = 0;
    while (i < n && (i % 64 || now_ns() < cap)) {
        efd_signal(pp.to_b);
        efd_wait(pp.to_a, blocking);
        i++;
    }
    int64_t t1 = now_ns(), c1 = thread_cpu_ns();
    n = i;
    atomic_store(&pp.stop, true);
    efd_signal(pp.to_b);
    pthread_join(t, NULL);
    close(pp.to_a);
    close(pp.to_b);
    return (rtt_sample){(double)(t1 - t0) / n, (double)(c1 - c0 + pp.cpu_b) / n};
}

/* --- two threads spinning on one cache line: A stores an odd value, B
 * answers with the next even one. The cost of moving a line between
 * cores and back. --- */
typedef struct spin_pp {
    _Alignas(64) _Atomic long cell;
    long n;
    int64_t cpu_b;
} spin_pp;

static void *spin_b(void *p)
{
    spin_pp *pp = p;
    pin_thread(1); /* the other side runs on CPU 0 (see main) */
    int64_t c0 = thread_cpu_ns();
    for (long i = 0;; i++) {
        long want = 2 * i + 1, v;
        while ((v = atomic_load_explicit(&pp->cell, memory_order_acquire)) != want)
            if (v < 0)
                goto out;
        atomic_store_explicit(&pp->cell, want + 1, memory_order_release);
    }
out:
    pp->cpu_b = thread_cpu_ns() - c0;
    return NULL;
}

rtt_sample floor_spin_rtt(long n)
{
    static spin_pp pp;
    atomic_store(&pp.cell, 0);
    pp.n = n;
    pthread_t t;
    BENCH_CHECK(pthread_create(&t, NULL, spin_b, &pp) == 0, "pthread_create");
    int64_t c0 = thread_cpu_ns(), t0 = now_ns();
    int64_t cap = t0 + bench_time_cap_ns();
    long i = 0;
    while (i < n && (i % 64 || now_ns() < cap)) {
        atomic_store_explicit(&pp.cell, 2 * i + 1, memory_order_release);
        while (atomic_load_explicit(&pp.cell, memory_order_acquire) != 2 * i + 2)
            ;
        i++;
    }
    int64_t t1 = now_ns(), c1 = thread_cpu_ns();
    n = i;
    atomic_store(&pp.cell, -1);
    pthread_join(t, NULL);
    return (rtt_sample){(double)(t1 - t0) / n, (double)(c1 - c0 + pp.cpu_b) / n};
}

/* --- fd-dispatch with a hand-written level-triggered epoll loop: what any
 * library's dispatch adds to epoll_wait + read + write. --- */
double floor_epoll_dispatch(fdd *d, double *ns_per_callback)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    BENCH_CHECK(ep >= 0, "epoll_create1");
    int64_t t0 = now_ns(); /* registration only, as for the libraries */
    for (int i = 0; i < d->n; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &d->slots[i]};
        BENCH_CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, d->rfd[i], &ev) == 0, "epoll_ctl");
    }
    double setup = (double)(now_ns() - t0) / d->n;
    struct epoll_event evs[256];
    int64_t t1 = now_ns();
    while (d->count < d->target) {
        int k = epoll_wait(ep, evs, 256, -1);
        BENCH_CHECK(k > 0 || errno == EINTR, "epoll_wait");
        for (int i = 0; i < k; i++)
            fdd_callback(evs[i].data.ptr);
    }
    *ns_per_callback = (double)(now_ns() - t1) / d->count;
    close(ep);
    return setup;
}
