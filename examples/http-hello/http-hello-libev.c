/* http-hello-libev: http-hello (see http-hello.c) on libev instead of
 * spindle, for `make bench` to compare the loops: the same HTTP code
 * (http.c), the same threads and sockets; each thread runs an ev_loop, each
 * socket has an ev_io watcher, changing interest is ev_io_stop, ev_io_set,
 * ev_io_start (libev applies it to the kernel before its next wait).
 *
 *   http-hello-libev [-p PORT] [-t THREADS] [-w]
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <ev.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "../common.h"
#include "http.h"

typedef struct worker {
    pthread_t tid;
    struct ev_loop *loop;
    ev_io accept_w;
    ev_timer pause_w; /* resumes accepting after EMFILE */
    ev_async stop_w;
    int listen_fd;
    http_conn *conns;
} worker;

typedef struct conn_watcher {
    ev_io io;
    http_conn *c;
    worker *w;
} conn_watcher;

static bool toggle_write;

static void conn_close(http_conn *c)
{
    conn_watcher *cw = c->loop_data;
    ev_io_stop(cw->w->loop, &cw->io);
    http_conn_unlink(&cw->w->conns, c);
    free(cw);
    http_conn_free(c);
}

static void conn_want(http_conn *c, int want)
{
    conn_watcher *cw = c->loop_data;
    if (!want) {
        conn_close(c);
        return;
    }
    if (want == c->interest)
        return;
    ev_io_stop(cw->w->loop, &cw->io);
    ev_io_set(&cw->io, c->fd,
              (want & HTTP_WANT_READ ? EV_READ : 0) | (want & HTTP_WANT_WRITE ? EV_WRITE : 0));
    ev_io_start(cw->w->loop, &cw->io);
    c->interest = want;
}

static void on_conn(struct ev_loop *loop, ev_io *io, int revents)
{
    http_conn *c = ((conn_watcher *)io)->c;
    if (revents & EV_READ) {
        int want = http_on_readable(c, !toggle_write);
        if (!want || !(revents & EV_WRITE)) {
            conn_want(c, want);
            return;
        }
    }
    if (revents & EV_WRITE)
        conn_want(c, http_on_writable(c));
}

static void on_resume(struct ev_loop *loop, ev_timer *t, int revents)
{
    worker *w = t->data;
    ev_io_start(loop, &w->accept_w);
}

static void on_accept(struct ev_loop *loop, ev_io *io, int revents)
{
    worker *w = io->data;
    http_conn *c;
    while ((c = http_accept(w->listen_fd))) {
        conn_watcher *cw = malloc(sizeof *cw);
        if (!cw) {
            http_conn_free(c);
            continue;
        }
        cw->c = c;
        cw->w = w;
        ev_io_init(&cw->io, on_conn, c->fd, 0);
        c->loop_data = cw;
        http_conn_link(&w->conns, c);
        conn_want(c, HTTP_WANT_READ);
    }
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        ev_io_stop(loop, &w->accept_w); /* out of fds: pause 0.1 s */
        ev_timer_set(&w->pause_w, 0.1, 0);
        ev_timer_start(loop, &w->pause_w);
    }
}

static void on_stop(struct ev_loop *loop, ev_async *a, int revents)
{
    ev_break(loop, EVBREAK_ALL);
}

static void *worker_main(void *opaque)
{
    worker *w = opaque;
    ev_run(w->loop, 0);
    return NULL;
}

int main(int argc, char **argv)
{
    http_opts o;
    if (!http_parse_args(argc, argv, "http-hello-libev", &o))
        return 2;
    toggle_write = o.toggle_write;
    int signal_fd = example_signalfd();
    worker *workers = calloc((size_t)o.threads, sizeof *workers);
    if (signal_fd < 0 || !workers)
        return 1;
    int port = o.port;
    for (int i = 0; i < o.threads; i++) {
        worker *w = &workers[i];
        w->listen_fd = example_listen(port, true, &port);
        w->loop = ev_loop_new(EVFLAG_AUTO);
        if (w->listen_fd < 0 || !w->loop) {
            fprintf(stderr, "http-hello-libev: cannot listen on port %d\n", port);
            return 1;
        }
        ev_io_init(&w->accept_w, on_accept, w->listen_fd, EV_READ);
        w->accept_w.data = w;
        ev_io_start(w->loop, &w->accept_w);
        ev_timer_init(&w->pause_w, on_resume, 0.1, 0);
        w->pause_w.data = w;
        ev_async_init(&w->stop_w, on_stop);
        ev_async_start(w->loop, &w->stop_w);
        if (pthread_create(&w->tid, NULL, worker_main, w) != 0)
            return 1;
    }
    printf("listening on 127.0.0.1:%d\n", port);
    fflush(stdout);

    example_signalfd_wait(signal_fd); /* until SIGINT or SIGTERM */

    for (int i = 0; i < o.threads; i++) {
        worker *w = &workers[i];
        ev_async_send(w->loop, &w->stop_w);
        pthread_join(w->tid, NULL);
        while (w->conns)
            conn_close(w->conns);
        ev_loop_destroy(w->loop);
        close(w->listen_fd);
    }
    close(signal_fd);
    free(workers);
    return 0;
}
