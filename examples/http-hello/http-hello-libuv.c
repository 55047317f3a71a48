/* http-hello-libuv: http-hello (see http-hello.c) on libuv instead of
 * spindle, for `make bench` to compare the loops: the same HTTP code
 * (http.c), the same threads and sockets; each thread runs a uv_loop_t,
 * each socket has a uv_poll_t watcher (libuv's fd watcher: its uv_tcp_t
 * streams would bring libuv's own buffering, and then more than the loop
 * would differ), changing interest is uv_poll_start with the new events.
 *
 *   http-hello-libuv [-p PORT] [-t THREADS] [-w]
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <uv.h>

#include "../common.h"
#include "http.h"

typedef struct worker {
    pthread_t tid;
    uv_loop_t loop;
    uv_poll_t accept_w;
    uv_timer_t pause_w; /* resumes accepting after EMFILE */
    uv_async_t stop_w;
    int listen_fd;
    http_conn *conns;
} worker;

typedef struct conn_watcher {
    uv_poll_t poll;
    http_conn *c;
    worker *w;
} conn_watcher;

static bool toggle_write;

static void on_closed(uv_handle_t *h)
{
    conn_watcher *cw = (conn_watcher *)h;
    http_conn_free(cw->c); /* the fd is closed once libuv let go of it */
    free(cw);
}

static void conn_close(http_conn *c)
{
    conn_watcher *cw = c->loop_data;
    http_conn_unlink(&cw->w->conns, c);
    uv_close((uv_handle_t *)&cw->poll, on_closed);
}

static void on_conn(uv_poll_t *p, int status, int events);

static void conn_want(http_conn *c, int want)
{
    conn_watcher *cw = c->loop_data;
    if (!want) {
        conn_close(c);
        return;
    }
    if (want == c->interest)
        return;
    uv_poll_start(&cw->poll,
                  (want & HTTP_WANT_READ ? UV_READABLE : 0) |
                      (want & HTTP_WANT_WRITE ? UV_WRITABLE : 0),
                  on_conn);
    c->interest = want;
}

static void on_conn(uv_poll_t *p, int status, int events)
{
    http_conn *c = ((conn_watcher *)p)->c;
    if (status < 0) { /* an error on the socket (libuv has stopped the watcher) */
        conn_close(c);
        return;
    }
    if (events & UV_READABLE) {
        int want = http_on_readable(c, !toggle_write);
        if (!want || !(events & UV_WRITABLE)) {
            conn_want(c, want);
            return;
        }
    }
    if (events & UV_WRITABLE)
        conn_want(c, http_on_writable(c));
}

static void on_accept(uv_poll_t *p, int status, int events);

static void on_resume(uv_timer_t *t)
{
    worker *w = t->data;
    uv_poll_start(&w->accept_w, UV_READABLE, on_accept);
}

static void on_accept(uv_poll_t *p, int status, int events)
{
    worker *w = p->data;
    http_conn *c;
    while ((c = http_accept(w->listen_fd))) {
        conn_watcher *cw = malloc(sizeof *cw);
        if (!cw || uv_poll_init(&w->loop, &cw->poll, c->fd) != 0) {
            free(cw);
            http_conn_free(c);
            continue;
        }
        cw->c = c;
        cw->w = w;
        c->loop_data = cw;
        http_conn_link(&w->conns, c);
        conn_want(c, HTTP_WANT_READ);
    }
    if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        uv_poll_stop(&w->accept_w); /* out of fds: pause 0.1 s */
        uv_timer_start(&w->pause_w, on_resume, 100, 0);
    }
}

static void on_stop(uv_async_t *a)
{
    worker *w = a->data;
    while (w->conns)
        conn_close(w->conns);
    uv_close((uv_handle_t *)&w->accept_w, NULL);
    uv_close((uv_handle_t *)&w->pause_w, NULL);
    uv_close((uv_handle_t *)&w->stop_w, NULL);
    /* uv_run returns once every handle is closed. */
}

static void *worker_main(void *opaque)
{
    worker *w = opaque;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    return NULL;
}

int main(int argc, char **argv)
{
    http_opts o;
    if (!http_parse_args(argc, argv, "http-hello-libuv", &o))
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
        if (w->listen_fd < 0 || uv_loop_init(&w->loop) != 0 ||
            uv_poll_init(&w->loop, &w->accept_w, w->listen_fd) != 0 ||
            uv_timer_init(&w->loop, &w->pause_w) != 0 ||
            uv_async_init(&w->loop, &w->stop_w, on_stop) != 0) {
            fprintf(stderr, "http-hello-libuv: cannot listen on port %d\n", port);
            return 1;
        }
        w->accept_w.data = w->stop_w.data = w->pause_w.data = w;
        uv_poll_start(&w->accept_w, UV_READABLE, on_accept);
        if (pthread_create(&w->tid, NULL, worker_main, w) != 0)
            return 1;
    }
    printf("listening on 127.0.0.1:%d\n", port);
    fflush(stdout);

    example_signalfd_wait(signal_fd); /* until SIGINT or SIGTERM */

    for (int i = 0; i < o.threads; i++) {
        worker *w = &workers[i];
        uv_async_send(&w->stop_w);
        pthread_join(w->tid, NULL);
        uv_loop_close(&w->loop);
        close(w->listen_fd);
    }
    close(signal_fd);
    free(workers);
    return 0;
}
