/* nbd-server: a Network Block Device server on spindle.
 *
 *   nbd-server [-p PORT] [-t THREADS] [-r] [--direct] [--engine E] [--poll-max NS]
 *              [--inline-writes NS] (FILE | --memory SIZE)
 *
 * Exports FILE (a regular file or a block device), or SIZE bytes of memory,
 * as the default export ("") on 127.0.0.1:PORT (PORT 0, the default, takes
 * any free port; the first line on stdout says which). Try it with the
 * NBD tools:
 *
 *   nbdinfo nbd://127.0.0.1:PORT
 *   qemu-img convert -O raw disk.img nbd://127.0.0.1:PORT
 *   nbdcopy nbd://127.0.0.1:PORT copy.img
 *
 * How it uses spindle (the files beside this one do the protocol):
 * - The main thread runs one context (spindle_ctx) with two fd handlers:
 *   the listening socket and a signalfd for SIGINT/SIGTERM.
 * - THREADS loop threads ("workers", spindle_thread_new(): a thread that
 *   runs a context of its own until spindle_thread_free() stops it).
 *   Every accepted connection goes to the next worker, round robin, through
 *   spindle_bh_oneshot(): a call that may be made from any thread and runs
 *   a function on the target loop's thread. From then on the connection
 *   lives on that thread (conn.c).
 * - Disk I/O goes through the worker's engine (disk.h).
 * - Each worker busy polls for up to 256 us (--poll-max; 0: off) before it
 *   sleeps: a client that sends its next request within the window finds
 *   the worker awake, which spares the wake-up of a sleeping CPU (tens of
 *   microseconds on a VM) at the cost of that CPU time. The window adapts
 *   (spindle_set_poll_params): it closes when requests stop coming. On
 *   io_uring the workers run cooperative rings (SPINDLE_URING_COOPERATIVE):
 *   the kernel does not interrupt a spinning worker for each event, the
 *   spin takes them with one system call per batch. Measured on 2 vCPUs,
 *   4 KiB reads at queue depth 1, p50: about 140 us with spindle's default
 *   32 us window, 100 us with 256 us and interrupts, 50 us cooperative.
 *   A spin also gives its CPU away every 4 us (spin_yield_ns): buffered
 *   writes are done by io_uring's kernel worker, a thread of this process
 *   that a spinning worker would otherwise keep waiting for a CPU (4 KiB
 *   writes at queue depth 32: about 37k IOPS without, 56k-64k with).
 * - SIGINT or SIGTERM: stop accepting, tell every worker to finish (each
 *   waits for its requests in flight, then closes its connections), wait
 *   until all have, free everything, exit 0.
 *
 * -r exports read-only; --direct bypasses the page cache (O_DIRECT) for
 * requests aligned to 4 KiB; --engine picks the disk engine (auto, uring,
 * pool, sync; see disk.h). Buffered writes are made by the loop thread
 * itself, not its engine, while each takes no longer than --inline-writes
 * ns (5 ms; 0: never), since handing one to a worker thread costs more
 * than the write (disk-inline.c). At exit, stderr says how many writes
 * were made where.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <spindle.h>

#include "../common.h"
#include "server.h"

/* ------------------------------------------------------------------------
 * Data buffers: a cache per worker, by power-of-two size class, so a steady
 * stream of requests does not go to malloc for each one. It keeps up to
 * BUF_KEEP_BYTES, enough for what nbdcopy has in flight (4 connections of
 * 64 requests of 256 KiB: 64 MiB). Buffers handed back to malloc are given
 * back to the kernel (unmapped, or trimmed off the top of the thread's
 * heap) and fault their pages in again when the next read fills them:
 * keeping 32 per class, nbdcopy read a 1 GiB export in 2.3 s on a VM where
 * page faults are dear; keeping 64 MiB, in 0.7 s. */

struct free_buf {
    struct free_buf *next;
};

#define BUF_CLASSES 14 /* 4 KiB .. 32 MiB */
#define BUF_KEEP_BYTES ((size_t)64 << 20)

static int buf_class(uint32_t size)
{
    int k = 0;
    while ((4096u << k) < size)
        k++;
    return k;
}

void *worker_buf_get(worker *w, uint32_t size)
{
    int k = buf_class(size);
    struct free_buf *b = w->free_bufs[k];
    if (b) {
        w->free_bufs[k] = b->next;
        w->free_buf_bytes -= (size_t)4096 << k;
        return b;
    }
    void *p;
    return posix_memalign(&p, DISK_BUF_ALIGN, (size_t)4096 << k) == 0 ? p : NULL;
}

void worker_buf_put(worker *w, void *buf, uint32_t size)
{
    int k = buf_class(size);
    size_t bytes = (size_t)4096 << k;
    if (w->free_buf_bytes + bytes > BUF_KEEP_BYTES) {
        free(buf);
        return;
    }
    struct free_buf *b = buf;
    b->next = w->free_bufs[k];
    w->free_bufs[k] = b;
    w->free_buf_bytes += bytes;
}

void worker_bufs_free(worker *w)
{
    for (int k = 0; k < BUF_CLASSES; k++)
        while (w->free_bufs[k]) {
            struct free_buf *b = w->free_bufs[k];
            w->free_bufs[k] = b->next;
            free(b);
        }
}

/* ------------------------------------------------------------------------
 * Accepting and stopping (main thread). */

static server srv;
static int listen_fd = -1, signal_fd = -1;
static int next_worker;
static spindle_timer *accept_timer; /* resumes accepting after EMFILE */

static void resume_accept(void *opaque)
{
    if (listen_fd >= 0)
        spindle_set_fd_interest(srv.main_ctx, listen_fd, true, false);
}

static void on_accept(void *opaque)
{
    for (;;) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of fds or memory: the connection stays in the
                 * kernel's queue and the socket stays readable, so the
                 * loop would call us again at once, round and round.
                 * Stop listening for a tenth of a second instead. */
                spindle_set_fd_interest(srv.main_ctx, listen_fd, false, false);
                spindle_timer_mod_in(accept_timer, 100000000); /* 0.1 s from now */
            }
            return; /* EAGAIN: all taken */
        }
        /* Replies are small and latency matters: no Nagle delay. */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn_hand_over(&srv.workers[next_worker], fd);
        next_worker = (next_worker + 1) % srv.n_workers;
    }
}

static void worker_close_all_bh(void *w) { worker_close_all(w); }

static void on_signal(void *opaque)
{
    if (!example_signalfd_read(signal_fd) || listen_fd < 0)
        return;
    spindle_set_fd_handler(srv.main_ctx, listen_fd, false, NULL, NULL, NULL, NULL);
    close(listen_fd);
    listen_fd = -1;
    for (int i = 0; i < srv.n_workers; i++)
        if (spindle_bh_oneshot(srv.workers[i].ctx, worker_close_all_bh, &srv.workers[i]) != 0)
            srv.workers_running--; /* cannot reach it: do not wait for it */
}

static void worker_done_main(void *w) { srv.workers_running--; }

/* On a worker's thread: its last connection is gone. */
void worker_drained(worker *w)
{
    /* If the main loop cannot be told, it never stops: so retry until it
     * can (oneshot fails only for want of a few bytes of memory). */
    while (spindle_bh_oneshot(w->srv->main_ctx, worker_done_main, w) != 0)
        sched_yield();
}

/* ------------------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr,
            "usage: nbd-server [-p PORT] [-t THREADS] [-r] [--direct] "
            "[--engine auto|uring|pool|sync] [--poll-max NS]\n"
            "                  [--inline-writes NS] (FILE | --memory SIZE[K|M|G])\n"
            "       nbd-server --engines   (the disk engines this machine offers)\n");
    exit(2);
}

/* --engines: which engines a loop thread's context gets here. */
static int list_engines(void)
{
    spindle_ctx *ctx = spindle_ctx_new();
    disk d = {.fd = -1};
    disk_engine e;
    if (!ctx)
        return 1;
    const char *sep = "";
    for (int k = ENGINE_URING; k <= ENGINE_SYNC; k++)
        if (disk_engine_init(&e, &d, ctx, k, 0) == 0) {
            printf("%s%s", sep, disk_engine_name(k));
            sep = " ";
        }
    disk_engine_init(&e, &d, ctx, ENGINE_AUTO, 0);
    printf("\nauto: %s\n", disk_engine_name(e.kind));
    spindle_ctx_free(ctx);
    return 0;
}

static bool parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    int shift = *end == 'K' ? 10 : *end == 'M' ? 20 : *end == 'G' ? 30 : *end == 'T' ? 40 : 0;
    if (errno || end == s || (shift && end[1]) || (!shift && *end) || v == 0 ||
        v > (UINT64_MAX >> shift))
        return false;
    *out = (uint64_t)v << shift;
    return true;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"memory", required_argument, NULL, 'm'},
        {"direct", no_argument, NULL, 'd'},
        {"engine", required_argument, NULL, 'e'},
        {"engines", no_argument, NULL, 'E'},
        {"poll-max", required_argument, NULL, 'P'},
        {"inline-writes", required_argument, NULL, 'I'},
        {NULL, 0, NULL, 0},
    };
    long port = 0, threads = 1, poll_max = 256000, inline_budget = DISK_INLINE_BUDGET_NS;
    bool readonly = false, direct = false;
    uint64_t mem_size = 0;
    srv.engine = ENGINE_AUTO;
    srv.export_name = "";
    int opt;
    while ((opt = getopt_long(argc, argv, "p:t:r", longopts, NULL)) != -1) {
        switch (opt) {
        case 'p':
            if (!example_parse_long("port", optarg, 0, 65535, &port))
                return 2;
            break;
        case 't':
            if (!example_parse_long("thread count", optarg, 1, 256, &threads))
                return 2;
            break;
        case 'r':
            readonly = true;
            break;
        case 'd':
            direct = true;
            break;
        case 'm':
            if (!parse_size(optarg, &mem_size)) {
                fprintf(stderr, "nbd-server: bad size '%s'\n", optarg);
                return 2;
            }
            break;
        case 'E':
            return list_engines();
        case 'P':
            if (!example_parse_long("polling window", optarg, 0, 1000000000, &poll_max))
                return 2;
            break;
        case 'I':
            if (!example_parse_long("inline write budget", optarg, 0, 1000000000,
                                    &inline_budget))
                return 2;
            break;
        case 'e': {
            int k = 0;
            while (k <= ENGINE_SYNC && strcmp(optarg, disk_engine_name(k)))
                k++;
            if (k > ENGINE_SYNC)
                usage();
            srv.engine = k;
            break;
        }
        default:
            usage();
        }
    }
    if ((optind == argc) == !mem_size || argc - optind > 1)
        usage();

    /* Signals first: SIGINT and SIGTERM are read from a signalfd by the
     * main loop (loop threads block every signal). */
    signal_fd = example_signalfd();
    int r = mem_size ? disk_open_memory(&srv.disk, mem_size, readonly)
                     : disk_open_file(&srv.disk, argv[optind], readonly, direct);
    if (signal_fd < 0 || r < 0) {
        fprintf(stderr, "nbd-server: %s: %s\n", mem_size ? "memory" : argv[optind],
                strerror(r < 0 ? -r : -signal_fd));
        return 1;
    }
    int bound_port;
    listen_fd = example_listen((int)port, false, &bound_port);
    if (listen_fd < 0) {
        fprintf(stderr, "nbd-server: cannot listen on port %ld: %s\n", port, strerror(-listen_fd));
        return 1;
    }

    srv.main_ctx = spindle_ctx_new();
    srv.n_workers = (int)threads;
    srv.workers = calloc((size_t)threads, sizeof *srv.workers);
    if (!srv.main_ctx || !srv.workers) {
        fprintf(stderr, "nbd-server: out of memory\n");
        return 1;
    }
    for (int i = 0; i < srv.n_workers; i++) {
        worker *w = &srv.workers[i];
        w->srv = &srv;
        w->index = i;
        spindle_options o = SPINDLE_OPTIONS_INIT;
        o.poll_max_ns = poll_max;
        o.uring_mode = SPINDLE_URING_COOPERATIVE;
        o.spin_yield_ns = 4096;
        spindle_thread *t = spindle_thread_new(&o);
        if (!t) {
            fprintf(stderr, "nbd-server: cannot start a loop thread\n");
            return 1;
        }
        w->thread = t;
        w->ctx = spindle_thread_ctx(t);
        r = disk_engine_init(&w->eng, &srv.disk, w->ctx, srv.engine, inline_budget);
        if (r < 0) {
            fprintf(stderr, "nbd-server: engine '%s' not available\n",
                    disk_engine_name(srv.engine));
            return 1;
        }
    }
    srv.workers_running = srv.n_workers;
    accept_timer = spindle_timer_new(srv.main_ctx, SPINDLE_CLOCK_MONOTONIC, resume_accept, NULL);
    if (!accept_timer ||
        spindle_set_fd_handler(srv.main_ctx, listen_fd, false, on_accept, NULL, NULL, NULL) ||
        spindle_set_fd_handler(srv.main_ctx, signal_fd, false, on_signal, NULL, NULL, NULL)) {
        fprintf(stderr, "nbd-server: cannot register the listening socket\n");
        return 1;
    }
    printf("listening on 127.0.0.1:%d\n", bound_port);
    fprintf(stderr, "nbd-server: %s, %llu bytes%s, %d loop thread%s, disk engine: %s\n",
            srv.disk.name, (unsigned long long)srv.disk.size, readonly ? ", read-only" : "",
            srv.n_workers, srv.n_workers > 1 ? "s" : "",
            srv.disk.mem ? "no (memory is copied inline)"
                         : disk_engine_name(srv.workers[0].eng.kind));
    fflush(stdout);

    /* Serve until a signal has stopped every worker. */
    while (listen_fd >= 0 || srv.workers_running > 0)
        spindle_poll(srv.main_ctx, true);

    disk_inline writes = {0};
    for (int i = 0; i < srv.n_workers; i++) {
        spindle_thread_free(srv.workers[i].thread);
        worker_bufs_free(&srv.workers[i]);
        writes.made += srv.workers[i].eng.inl.made;
        writes.slow += srv.workers[i].eng.inl.slow;
        writes.handed += srv.workers[i].eng.inl.handed;
    }
    if (!srv.disk.mem)
        fprintf(stderr,
                "nbd-server: writes: %llu made by the loop threads (%llu over the budget), "
                "%llu by the engine\n",
                (unsigned long long)writes.made, (unsigned long long)writes.slow,
                (unsigned long long)writes.handed);
    spindle_set_fd_handler(srv.main_ctx, signal_fd, false, NULL, NULL, NULL, NULL);
    spindle_ctx_free(srv.main_ctx);
    close(signal_fd);
    disk_close(&srv.disk);
    free(srv.workers);
    return 0;
}
