/* http-hello: a minimal HTTP/1.1 server on spindle.
 *
 *   http-hello [-p PORT] [-t THREADS] [-w] [-n]
 *
 * Answers every GET with "Hello, world!" on 127.0.0.1:PORT (0, the default:
 * any free port; the first line on stdout says which), keeps connections
 * open and answers pipelined requests in order. Try it:
 *
 *   curl http://127.0.0.1:PORT/
 *   wrk -c 50 http://127.0.0.1:PORT/
 *
 * The HTTP part (http.c) is shared with http-hello-libuv and
 * http-hello-libev, the same server on libuv and on libev: only the event
 * loop differs, so `make bench` can compare the loops.
 *
 * How it uses spindle:
 * - THREADS loop threads (spindle_thread_new(): a thread running a context
 *   of its own until spindle_thread_free()), each with a listening socket
 *   of its own: all of them listen on the same port (SO_REUSEPORT) and the
 *   kernel spreads new connections over them. A connection stays on the thread that accepted it, so nothing is
 *   shared and nothing is locked.
 * - Every socket is an fd handler: spindle_set_fd_handler(ctx, fd, ...,
 *   io_read, io_write, io_poll, opaque) calls io_read when the socket is
 *   readable and io_write when it is writable, on the loop thread.
 * - A connection waits for "readable" while it takes requests, and for
 *   "writable" only while answers wait for room in the socket's buffer
 *   (wrk and curl read fast, so that is rare): the handler is registered
 *   once with both callbacks, and spindle_set_fd_interest() switches which
 *   one the loop waits for. -w instead turns write interest on for every
 *   request and answers from io_write: the variant `make bench` uses to
 *   measure what changing interest costs.
 * - The loop threads busy-poll for up to 256 us before they sleep, longer
 *   than a client's turnaround on the same machine, so a lone connection's
 *   next request is usually found by the spin (about 40 us p50 at one wrk
 *   connection against 140 us without polling, on the 2-vCPU development
 *   VM). On io_uring they run cooperative rings: the kernel leaves each
 *   event to the spin's next system call instead of interrupting the loop
 *   thread for it, which halved the requests served at 50 connections
 *   (spindle.h, spindle_uring_mode). A spin also gives its CPU to wrk
 *   every 4 us (spin_yield_ns) when they share one. -n turns
 *   polling off (poll_max_ns 0).
 * - The main thread runs a context too, with one handler: a signalfd, which
 *   turns SIGINT and SIGTERM into a readable fd. Then every thread stops,
 *   every connection is closed, and the program exits with status 0.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <spindle.h>

#include "../common.h"
#include "http.h"

typedef struct worker {
    spindle_thread *thread;
    spindle_ctx *ctx;
    int listen_fd;
    http_conn *conns; /* this thread's connections */
    spindle_timer *accept_timer; /* resumes accepting after EMFILE */
} worker;

static bool toggle_write; /* -w */

static void conn_close(http_conn *c)
{
    worker *w = c->loop_data;
    /* Remove the handler before closing the fd, so the loop never watches
     * a number that the next accept() may reuse. */
    spindle_set_fd_handler(w->ctx, c->fd, false, NULL, NULL, NULL, NULL);
    http_conn_unlink(&w->conns, c);
    http_conn_free(c);
}

/* Wait for what the connection wants next (HTTP_WANT_READ and/or
 * HTTP_WANT_WRITE); nothing means it is finished. The handler was
 * registered once, with both callbacks; spindle_set_fd_interest() only
 * changes which of them the loop waits for: no allocation, and on epoll at
 * most one epoll_ctl per change, made before the loop's next wait. */
static void conn_want(http_conn *c, int want)
{
    worker *w = c->loop_data;
    if (!want) {
        conn_close(c);
        return;
    }
    if (want != c->interest)
        spindle_set_fd_interest(w->ctx, c->fd, want & HTTP_WANT_READ, want & HTTP_WANT_WRITE);
    c->interest = want;
}

static void on_readable(void *opaque)
{
    http_conn *c = opaque;
    conn_want(c, http_on_readable(c, !toggle_write));
}

static void on_writable(void *opaque)
{
    http_conn *c = opaque;
    conn_want(c, http_on_writable(c));
}

static void resume_accept(void *opaque)
{
    worker *w = opaque;
    spindle_set_fd_interest(w->ctx, w->listen_fd, true, false);
}

/* Out of fds or memory: the connection stays in the kernel's queue and the
 * socket stays readable, so the loop would call on_accept again at once,
 * round and round. Stop listening for a tenth of a second instead. */
static void pause_accept(worker *w)
{
    if (!w->accept_timer) /* made here: timers are made on the loop thread */
        w->accept_timer = spindle_timer_new(w->ctx, SPINDLE_CLOCK_MONOTONIC, resume_accept, w);
    if (!w->accept_timer)
        return;
    spindle_set_fd_interest(w->ctx, w->listen_fd, false, false);
    spindle_timer_mod_in(w->accept_timer, 100000000); /* 0.1 s from now */
}

/* The listening socket is readable: take every connection waiting. */
static void on_accept(void *opaque)
{
    worker *w = opaque;
    http_conn *c;
    while ((c = http_accept(w->listen_fd))) {
        /* Both callbacks, so that interest can change later; readable only
         * for now (writable would fire at once: the buffer is empty). */
        if (spindle_set_fd_handler(w->ctx, c->fd, false, on_readable, on_writable, NULL, c)) {
            http_conn_free(c);
            continue;
        }
        c->loop_data = w;
        http_conn_link(&w->conns, c);
        c->interest = HTTP_WANT_READ | HTTP_WANT_WRITE;
        conn_want(c, HTTP_WANT_READ);
    }
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
        pause_accept(w);
}

static int signal_fd;
static bool stop;

static void on_signal(void *opaque)
{
    if (example_signalfd_read(signal_fd))
        stop = true;
}

int main(int argc, char **argv)
{
    http_opts o;
    if (!http_parse_args(argc, argv, "http-hello", &o))
        return 2;
    toggle_write = o.toggle_write;
    /* Before any thread starts: they inherit the blocked signals. */
    signal_fd = example_signalfd();
    spindle_ctx *main_ctx = spindle_ctx_new();
    worker *workers = calloc((size_t)o.threads, sizeof *workers);
    if (signal_fd < 0 || !main_ctx || !workers ||
        spindle_set_fd_handler(main_ctx, signal_fd, false, on_signal, NULL, NULL, NULL)) {
        fprintf(stderr, "http-hello: cannot set up\n");
        return 1;
    }
    spindle_options loop_opts = SPINDLE_OPTIONS_INIT;
    loop_opts.poll_max_ns = o.no_busy_polling ? 0 : 256000;
    loop_opts.uring_mode = SPINDLE_URING_COOPERATIVE;
    loop_opts.spin_yield_ns = 4096;
    int port = o.port;
    for (int i = 0; i < o.threads; i++) {
        worker *w = &workers[i];
        w->listen_fd = example_listen(port, true, &port); /* the same port for all */
        w->thread = w->listen_fd >= 0 ? spindle_thread_new(&loop_opts) : NULL;
        if (!w->thread) {
            fprintf(stderr, "http-hello: cannot listen on port %d or start a thread\n", port);
            return 1;
        }
        w->ctx = spindle_thread_ctx(w->thread);
        /* spindle_set_fd_handler may be called from any thread: the loop
         * thread picks the new handler up at its next iteration. */
        if (spindle_set_fd_handler(w->ctx, w->listen_fd, false, on_accept, NULL, NULL, w)) {
            fprintf(stderr, "http-hello: cannot register the listening socket\n");
            return 1;
        }
    }
    printf("listening on 127.0.0.1:%d\n", port);
    fflush(stdout);

    while (!stop)
        spindle_poll(main_ctx, true);

    for (int i = 0; i < o.threads; i++) {
        worker *w = &workers[i];
        spindle_thread_free(w->thread); /* stops the thread, frees its context */
        close(w->listen_fd);
        while (w->conns) { /* the loop has stopped: no callback runs any more */
            http_conn *c = w->conns;
            w->conns = c->next;
            http_conn_free(c);
        }
    }
    spindle_ctx_free(main_ctx);
    close(signal_fd);
    free(workers);
    return 0;
}
