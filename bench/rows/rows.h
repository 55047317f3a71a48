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
void row_polled_mixed(void);
void row_fd_dispatch(void);
void row_timers(void);
void row_defer(void);
void row_memory(void);
void row_pool(void);
void row_file_read(void);
void row_nbd(void);
void row_http(void);

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

/* file-read: a run of 4 KiB reads at random offsets, `depth` in flight,
 * until `target` reads or the time cap; what it measured. */
#define FR_BLOCK 4096
typedef struct fr_run {
    int fd, depth;
    long target, done;
    uint64_t rng;
    int64_t t0, t1, cpu0, cpu1, cap_at;
    int64_t *lat; /* one latency per read, ns */
    long lat_cap;
    void *user; /* the driver's */
} fr_run;
typedef struct fr_summary {
    double ns_per_read, p50, p99, cpu_per_read;
} fr_summary;
int64_t fr_next_off(fr_run *r);
void fr_start(fr_run *r);
void fr_record(fr_run *r, int res, int64_t latency_ns);
void fr_stop(fr_run *r);
fr_summary fr_summarize(const fr_run *r);
/* The plain liburing loop: the same reads, with the ring used directly. */
void floor_liburing_read(fr_run *r, void *bufs);

#endif
