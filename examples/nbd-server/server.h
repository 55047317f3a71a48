/* What the NBD server's files share: the server (one per process), its loop
 * threads ("workers") and the entry points of the connection code.
 * SPDX-License-Identifier: MIT */
#ifndef NBD_SERVER_H
#define NBD_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include <spindle.h>

#include "disk.h"

/* The largest read or write payload accepted (advertised to clients as the
 * maximum block size): 32 MiB, what the protocol says every server should
 * take. */
#define NBD_MAX_PAYLOAD (32u << 20)

typedef struct conn conn;
typedef struct worker worker;

typedef struct server {
    disk disk;
    const char *export_name;   /* the one export: "" is the default export */
    disk_engine_kind engine;   /* asked for with --engine */
    int n_workers;
    worker *workers;
    spindle_ctx *main_ctx;     /* the acceptor's loop */
    int workers_running;       /* main thread only: workers not yet drained */
} server;

/* One loop thread: its context, its engine, its connections. Everything
 * but ctx is touched only by that loop thread. */
struct worker {
    server *srv;
    int index;
    spindle_ctx *ctx;
    spindle_thread *thread; /* the loop thread running ctx */
    disk_engine eng;
    conn *conns;         /* open connections */
    int n_conns;         /* connections not yet freed */
    bool stopping;       /* shutting down: refuse new connections */
    /* Freed data buffers kept for reuse, by size class (4 KiB << k), and
     * their total size. */
    struct free_buf *free_bufs[14];
    size_t free_buf_bytes;
};

/* Any thread: hand an accepted socket to w; its loop thread takes it from
 * there (greeting, handshake, requests). Closes fd on failure. */
void conn_hand_over(worker *w, int fd);

/* w's loop thread: stop every connection (no further requests are read; a
 * connection closes once its requests in flight have completed). When the
 * last one is gone, worker_drained(w) runs. */
void worker_close_all(worker *w);
void worker_drained(worker *w); /* in nbd-server.c */

/* Data buffers, DISK_BUF_ALIGN-aligned, from w's cache (w's loop thread).
 * NULL when out of memory. */
void *worker_buf_get(worker *w, uint32_t size);
void worker_buf_put(worker *w, void *buf, uint32_t size);
void worker_bufs_free(worker *w);

#endif
