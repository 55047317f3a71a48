/* spindle bench: the raw floors, written against the kernel directly, so
 * that a row shows what the library adds to what cannot be avoided.
 * SPDX-License-Identifier: MIT */
#include <pthread.h>
#include <stdatomic.h>
#include <errno.h>
#include <sys/epoll.h>
#include <liburing.h>
#include <string.h>
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

/* --- file-read: the measurement shared by the floor and the libraries
 * (bench/rows/file_read.c), then the floor, a plain liburing loop: submit
 * and wait for one, reap what is there, queue the next reads. --- */
int64_t fr_next_off(fr_run *r)
{
    r->rng ^= r->rng << 13;
    r->rng ^= r->rng >> 7;
    r->rng ^= r->rng << 17;
    return (int64_t)(r->rng % ((1LL << 30) / FR_BLOCK)) * FR_BLOCK;
}

void fr_start(fr_run *r)
{
    if (r->lat_cap < r->target) {
        free(r->lat);
        r->lat = malloc(sizeof(*r->lat) * (size_t)r->target);
        BENCH_CHECK(r->lat, "out of memory");
        r->lat_cap = r->target;
    }
    r->rng = 0x2545f4914f6cdd1dull;
    r->done = 0;
    r->cap_at = now_ns() + bench_time_cap_ns();
    r->cpu0 = bench_clock(CLOCK_PROCESS_CPUTIME_ID);
    r->t0 = now_ns();
}

void fr_record(fr_run *r, int res, int64_t latency_ns)
{
    BENCH_CHECK(res == FR_BLOCK, "file-read: a read returned %d", res);
    BENCH_CHECK(r->done < r->lat_cap, "file-read: more reads than issued");
    r->lat[r->done++] = latency_ns;
}

void fr_stop(fr_run *r)
{
    r->t1 = now_ns();
    r->cpu1 = bench_clock(CLOCK_PROCESS_CPUTIME_ID);
    BENCH_CHECK(r->done > 0, "file-read: no read completed");
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

fr_summary fr_summarize(const fr_run *r)
{
    qsort(r->lat, (size_t)r->done, sizeof(*r->lat), cmp_i64);
    return (fr_summary){
        .ns_per_read = (double)(r->t1 - r->t0) / r->done,
        .p50 = (double)r->lat[r->done / 2],
        .p99 = (double)r->lat[r->done * 99 / 100],
        .cpu_per_read = (double)(r->cpu1 - r->cpu0) / r->done,
    };
}

void floor_liburing_read(fr_run *r, void *bufs)
{
    struct io_uring ring;
    BENCH_CHECK(io_uring_queue_init(64, &ring, 0) == 0, "io_uring_queue_init");
    int64_t t0[64];
    long issued = 0;
    fr_start(r);
    for (int i = 0; i < r->depth; i++) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
        io_uring_prep_read(sqe, r->fd, (char *)bufs + (size_t)i * FR_BLOCK, FR_BLOCK,
                           (uint64_t)fr_next_off(r));
        io_uring_sqe_set_data64(sqe, (uint64_t)i);
        t0[i] = now_ns();
        issued++;
    }
    while (r->done < issued) {
        int e = io_uring_submit_and_wait(&ring, 1);
        BENCH_CHECK(e >= 0 || e == -EINTR, "io_uring_submit_and_wait: %d", e);
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;
        io_uring_for_each_cqe(&ring, head, cqe) {
            int i = (int)cqe->user_data;
            fr_record(r, cqe->res, now_ns() - t0[i]);
            n++;
            if (issued < r->target && now_ns() < r->cap_at) {
                struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
                io_uring_prep_read(sqe, r->fd, (char *)bufs + (size_t)i * FR_BLOCK, FR_BLOCK,
                                   (uint64_t)fr_next_off(r));
                io_uring_sqe_set_data64(sqe, (uint64_t)i);
                t0[i] = now_ns();
                issued++;
            }
        }
        io_uring_cq_advance(&ring, n);
    }
    fr_stop(r);
    io_uring_queue_exit(&ring);
}
