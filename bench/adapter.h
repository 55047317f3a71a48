/* The one interface every library sits behind, so that two rows differ only
 * in the library. Each adapter uses its library the idiomatic way; the rows
 * (bench/rows/) know nothing of any library.
 * SPDX-License-Identifier: MIT */
#ifndef BENCH_ADAPTER_H
#define BENCH_ADAPTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef void bench_cb(void *arg);
/* A deferred callback returns true to run again in the next iteration. */
typedef bool bench_defer_cb(void *arg);

enum { BACKEND_DEFAULT, BACKEND_POLL, BACKEND_EPOLL, BACKEND_IO_URING };

/* An asynchronous file read (the file-read row): the row fills the first
 * fields; the adapter keeps its library's request in lib[]; cb(arg, bytes
 * read or -errno) runs on the loop thread. */
typedef void bench_read_cb(void *arg, int res);
typedef struct bench_read {
    int fd;
    void *buf;
    unsigned len;
    int64_t off;
    bench_read_cb *cb;
    void *arg;
    _Alignas(16) unsigned char lib[512];
} bench_read;

typedef struct bench_loop_opts {
    int backend;   /* spindle only: BACKEND_* */
    bool poll_off; /* spindle only: busy polling off (poll_max_ns = 0) */
} bench_loop_opts;

typedef struct bench_adapter {
    const char *name;
    /* Timer deadlines: their granularity, whether timers due in the same
     * iteration run in deadline order, and whether a relative arm reads the
     * clock on every call (rather than the loop's cached time). */
    int64_t timer_res_ns;
    bool timer_ordered;
    bool timer_reads_clock;
    /* Whether timer_arm/timer_stop may be called from another thread while
     * the loop runs (the library locks or queues, and wakes the loop). */
    bool timer_any_thread;
    /* sizeof the handle the user owns for a watched fd or a timer (0 when the
     * library allocates it: that shows in the allocator deltas instead). */
    size_t fd_handle_size, timer_handle_size;

    void *(*loop_new)(const bench_loop_opts *o);
    void (*loop_free)(void *loop);
    /* One iteration; blocking false never sleeps. */
    void (*run_once)(void *loop, bool blocking);

    /* Cross-thread call: send from any thread; cb runs on the loop. */
    void *(*async_new)(void *loop, bench_cb *cb, void *arg);
    void (*async_send)(void *a);
    void (*async_free)(void *a);

    /* Level-triggered read watcher. */
    void *(*fd_new)(void *loop, int fd, bench_cb *cb, void *arg);
    void (*fd_free)(void *h);

    /* One-shot timers; timer_arm is relative to the time taken by the last
     * now_update (as the loops' cached times are). Arming an armed timer
     * moves it. */
    void (*now_update)(void *loop);
    void *(*timer_new)(void *loop, bench_cb *cb, void *arg);
    void (*timer_arm)(void *t, int64_t delay_ns);
    void (*timer_stop)(void *t);
    void (*timer_free)(void *t);

    /* Deferred call: defer_start once; it runs again while cb returns true. */
    void *(*defer_new)(void *loop, bench_defer_cb *cb, void *arg);
    void (*defer_start)(void *d);
    void (*defer_free)(void *d);

    /* Thread pool (NULL where the library has none): a reusable request
     * that runs work on a worker thread, then done back on the loop. One
     * request is in flight at a time; a pool of BENCH_POOL_WORKERS threads
     * serves the loop. */
    void *(*work_new)(void *loop, bench_cb *work, bench_cb *done, void *arg);
    void (*work_submit)(void *w);
    void (*work_free)(void *w);
    /* Start one file read (NULL: the library has none). */
    void (*read_start)(void *loop, bench_read *r);
} bench_adapter;

/* Every pool gets this many workers (libuv's default). */
#define BENCH_POOL_WORKERS 4

extern const bench_adapter adapter_spindle, adapter_spindle_embedded,
    adapter_libuv, adapter_libev, adapter_libevent, adapter_glib;

/* A library with options: one line of a table. */
typedef struct bench_impl {
    const char *label;
    const bench_adapter *a;
    bench_loop_opts opts;
    int kind; /* KIND_SPINDLE or KIND_PEER */
} bench_impl;

/* The peers, in table order. */
extern const bench_impl peer_impls[];
extern const int n_peer_impls;

#endif
