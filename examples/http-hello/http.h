/* http-hello's HTTP code, shared by its three builds (spindle, libuv,
 * libev): parsing, answering, and the socket reads and writes of one
 * connection. Only the event loop around it differs from build to build.
 *
 * The server answers every GET (and HEAD) with 200 and a short body, keeps
 * HTTP/1.1 connections open (keep-alive) and answers pipelined requests in
 * order. Anything else gets 400, 405 or 431 and the connection is closed
 * after the answer.
 * SPDX-License-Identifier: MIT */
#ifndef HTTP_HELLO_H
#define HTTP_HELLO_H

#include <stdbool.h>
#include <stddef.h>

#define HTTP_IN_SIZE 8192   /* the longest request head taken */
#define HTTP_OUT_SIZE 16384 /* answers queued before reading stops */

typedef struct http_conn {
    int fd;
    bool closing;            /* answer no further request; close once sent */
    bool peer_done;          /* the client sent all it will (EOF) */
    size_t in_len, out_off, out_len;
    char in[HTTP_IN_SIZE];   /* bytes received and not answered yet */
    char out[HTTP_OUT_SIZE]; /* answers not sent yet: out[out_off, out_len) */
    /* The build's own: its thread or watcher, links in its thread's list of
     * connections, the events it waits for now. */
    void *loop_data;
    struct http_conn *prev, *next;
    int interest;
} http_conn;

/* What a connection waits for next: a combination of these, or 0 when it
 * is finished and must be closed. */
enum { HTTP_WANT_READ = 1, HTTP_WANT_WRITE = 2 };

/* The socket is readable: read what is there, answer every complete request
 * in order and, if send_now, send the answers right away as far as the
 * socket takes them (send_now false leaves them for http_on_writable: the
 * "toggle write interest on every request" variant that the benchmark
 * measures). Returns what to wait for next, or 0 to close. */
int http_on_readable(http_conn *c, bool send_now);

/* The socket is writable: send what is queued, then answer requests that
 * were waiting for room. Returns as http_on_readable. */
int http_on_writable(http_conn *c);

/* Options of every build: -p PORT, -t THREADS, -w (the toggle variant). */
typedef struct http_opts {
    int port, threads;
    bool toggle_write;
    bool no_busy_polling; /* -n: spindle's loops do not spin (others never do) */
} http_opts;
/* Parse argv; on a bad one print usage and return false. */
bool http_parse_args(int argc, char **argv, const char *name, http_opts *o);

/* Accept one pending connection on listen_fd: a new http_conn (fd
 * non-blocking, close-on-exec, TCP_NODELAY), or NULL with errno set: EAGAIN
 * when none is waiting, EMFILE when out of fds, ... */
http_conn *http_accept(int listen_fd);
/* Close the socket and free c. */
void http_conn_free(http_conn *c);

/* A loop thread's list of its connections (through c->prev, c->next). */
void http_conn_link(http_conn **list, http_conn *c);
void http_conn_unlink(http_conn **list, http_conn *c);

#endif
