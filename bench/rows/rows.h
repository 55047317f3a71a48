/* spindle bench: the rows (one file each) and the raw floors.
 * SPDX-License-Identifier: MIT */
#ifndef BENCH_ROWS_H
#define BENCH_ROWS_H

#include <stdint.h>

#include "../adapter.h"
#include "../bench.h"

void row_wake(bool busy);
void row_polled(void);
void row_polled_low_load(void);
void row_fd_dispatch(void);
void row_timers(void);
void row_defer(void);
void row_memory(void);
void row_pool(void);

/* One measurement of a ping-pong: wall ns and CPU ns (both threads) per
 * round trip. */
typedef struct rtt_sample {
    double wall_ns, cpu_ns;
} rtt_sample;

/* Floors (bench/floors.c): the same work written against the kernel. */
rtt_sample floor_eventfd_rtt(long n, bool blocking);
rtt_sample floor_spin_rtt(long n);

/* fd-dispatch: N pipes; the callback on pipe i reads a byte and writes one
 * to pipe (i + 1) mod N. */
typedef struct fdd {
    int n;
    int *rfd, *wfd;
    long count, target; /* callbacks run; stop after target */
    struct fdd_slot *slots;
} fdd;
typedef struct fdd_slot {
    fdd *d;
    int i;
} fdd_slot;
void fdd_callback(void *slot);
/* The hand-written epoll loop: returns setup ns per fd, runs until
 * d->count reaches d->target. */
double floor_epoll_dispatch(fdd *d, double *ns_per_callback);

#endif
