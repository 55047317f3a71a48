/* echo-server: a TCP echo server on spindle, written to be read first.
 * SPDX-License-Identifier: MIT
 *
 *     echo-server [-p PORT]
 *
 * Listens on 127.0.0.1:PORT (the default, 0, picks any free port) and
 * prints "listening on 127.0.0.1:PORT" as its first line on stdout. Every
 * byte a client sends comes back to it. SIGINT (Ctrl-C) or SIGTERM stop the
 * server cleanly: every connection closed, everything freed.
 *
 * What it shows, in reading order:
 * 1. A context, created from SPINDLE_OPTIONS_INIT, and the loop around
 *    spindle_poll() that the program writes itself (main, at the bottom).
 * 2. fd handlers: the listening socket has an io_read that accepts; each
 *    connection has an io_read and an io_write.
 * 3. Flow control with spindle_set_fd_interest(): a connection is only
 *    interested in "writable" while the kernel's socket buffer is full, and
 *    stops reading while it holds bytes it could not send yet, so a client
 *    that does not read its echo cannot make the server buffer without end.
 *    Changing the interest costs no allocation and no system call.
 * 4. Signals as just another fd handler, through signalfd(2); and SIGPIPE
 *    avoided with MSG_NOSIGNAL.
 *
 * Everything runs on one thread: callbacks run inside spindle_poll(), on
 * the thread that calls it. (For more cores, run one context per thread,
 * each with its own listening socket bound with SO_REUSEPORT.)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4 */
#endif
#include <spindle.h>

#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE 65536 /* per connection: what one read may take in */
#define ACCEPTS_PER_CALL 64 /* then let other handlers run */

typedef struct server server;

/* One client connection. buf[off, len) holds bytes read from the client
 * and not yet sent back; it is empty except while the socket buffer is
 * full. */
typedef struct conn {
    server *srv;
    int fd;
    size_t off, len;
    struct conn *prev, *next; /* all open connections, to close at exit */
    char buf[BUF_SIZE];
} conn;

struct server {
    spindle_ctx *ctx;
    int listen_fd;
    int signal_fd;
    bool accept_paused; /* out of fds: wait for a connection to close */
    bool stop;          /* set by the signal handler; ends the main loop */
    conn *conns;
    unsigned long served;
};

/* ------------------------------------------------------------------------
 * Connections
 */

static void conn_close(conn *c)
{
    server *srv = c->srv;
    /* Remove the handler first (all three callbacks NULL): from now on
     * spindle never calls it again, even later in this same iteration. */
    spindle_set_fd_handler(srv->ctx, c->fd, false, NULL, NULL, NULL, NULL);
    close(c->fd);
    if (c->prev) {
        c->prev->next = c->next;
    } else {
        srv->conns = c->next;
    }
    if (c->next) {
        c->next->prev = c->prev;
    }
    free(c);
    /* An fd is free again: if accepting had stopped for want of one,
     * resume. */
    if (srv->accept_paused) {
        srv->accept_paused = false;
        spindle_set_fd_interest(srv->ctx, srv->listen_fd, true, false);
    }
}

/* Send what is pending. Returns false if the connection was closed (an
 * error: the client went away). */
static bool conn_flush(conn *c)
{
    while (c->off < c->len) {
        /* MSG_NOSIGNAL: a client that closed makes send() fail with EPIPE
         * instead of killing the whole process with SIGPIPE. */
        ssize_t n = send(c->fd, c->buf + c->off, c->len - c->off,
                         MSG_NOSIGNAL);
        if (n > 0) {
            c->off += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return true; /* the socket buffer is full: the rest waits */
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            conn_close(c); /* EPIPE, ECONNRESET, ... */
            return false;
        }
    }
    c->off = c->len = 0;
    return true;
}

/* io_write: runs only while write interest is on, i.e. while bytes wait
 * for room in the socket buffer, and the kernel says there is room now. */
static void conn_writable(void *opaque)
{
    conn *c = opaque;
    if (!conn_flush(c)) {
        return;
    }
    if (c->len == 0) {
        /* All sent: stop waiting for "writable" (it would be reported at
         * every iteration, since an idle socket is always writable) and
         * read from the client again. */
        spindle_set_fd_interest(c->srv->ctx, c->fd, true, false);
    }
}

/* io_read: the client sent something, or closed, or the connection broke.
 * One read per call keeps the server fair: readiness is level-triggered,
 * so if more is waiting, spindle calls again in the next iteration. */
static void conn_readable(void *opaque)
{
    conn *c = opaque;
    ssize_t n = recv(c->fd, c->buf, sizeof(c->buf), 0);
    if (n == 0) {
        /* End of file: the client has sent everything and everything it
         * sent went back (reading is off while anything is pending). */
        conn_close(c);
        return;
    }
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            conn_close(c); /* ECONNRESET and the like */
        }
        return;
    }
    c->off = 0;
    c->len = (size_t)n;
    if (!conn_flush(c)) {
        return;
    }
    if (c->len > 0) {
        /* The socket buffer is full: wait until it drains (write interest
         * on), and read nothing more meanwhile (read interest off). */
        spindle_set_fd_interest(c->srv->ctx, c->fd, false, true);
    }
}

/* ------------------------------------------------------------------------
 * The listening socket
 */

static void accept_ready(void *opaque)
{
    server *srv = opaque;
    for (int i = 0; i < ACCEPTS_PER_CALL; i++) {
        int fd = accept4(srv->listen_fd, NULL, NULL,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
                errno == ENOMEM) {
                /* Out of fds or memory. The pending connection stays in the
                 * kernel's queue, so readiness would be reported again at
                 * once: stop listening until a connection closes. */
                if (srv->conns) {
                    srv->accept_paused = true;
                    spindle_set_fd_interest(srv->ctx, srv->listen_fd, false,
                                            false);
                }
            }
            /* EAGAIN: accepted all there was. ECONNABORTED, EINTR: a
             * client gave up; the next one is for the next call. */
            return;
        }
        conn *c = calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        c->srv = srv;
        c->fd = fd;
        /* Register with both callbacks, then turn write interest off: it
         * is only wanted while the socket buffer is full. */
        if (spindle_set_fd_handler(srv->ctx, fd, false, conn_readable,
                                   conn_writable, NULL, c) != 0) {
            free(c);
            close(fd);
            continue;
        }
        spindle_set_fd_interest(srv->ctx, fd, true, false);
        c->next = srv->conns;
        if (c->next) {
            c->next->prev = c;
        }
        srv->conns = c;
        srv->served++;
    }
}

static int listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -1;
    }
    int one = 1;
    struct sockaddr_in addr = {
        .sin_family = AF_INET,
        .sin_port = htons((uint16_t)port),
        .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
    };
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
        listen(fd, SOMAXCONN) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int bound_port(int fd)
{
    struct sockaddr_in addr;
    socklen_t len = sizeof(addr);
    if (getsockname(fd, (struct sockaddr *)&addr, &len) != 0) {
        return -1;
    }
    return ntohs(addr.sin_port);
}

/* ------------------------------------------------------------------------
 * Signals: SIGINT and SIGTERM are blocked (so they are not delivered the
 * usual way) and read from a signalfd, whose handler runs on the loop
 * thread like any other. That makes stopping an ordinary event: no code
 * runs in a signal handler.
 */

static void signal_ready(void *opaque)
{
    server *srv = opaque;
    struct signalfd_siginfo si;
    if (read(srv->signal_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        fprintf(stderr, "echo-server: %s, stopping\n",
                strsignal((int)si.ssi_signo));
        srv->stop = true;
    }
}

static int signals_to_fd(void)
{
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &mask, NULL) != 0) {
        return -1;
    }
    return signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
}

/* ------------------------------------------------------------------------
 */

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [-p PORT]   (PORT 0, the default: any)\n",
            argv0);
}

int main(int argc, char **argv)
{
    int port = 0, opt;
    while ((opt = getopt(argc, argv, "p:h")) != -1) {
        char *end;
        switch (opt) {
        case 'p':
            port = (int)strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || port < 0 || port > 65535) {
                usage(argv[0]);
                return 2;
            }
            break;
        default:
            usage(argv[0]);
            return opt == 'h' ? 0 : 2;
        }
    }
    if (optind != argc) {
        usage(argv[0]);
        return 2;
    }

    server srv = { .listen_fd = -1, .signal_fd = -1 };

    /* Start from the defaults, then say what differs. Busy polling only
     * helps with io_poll callbacks (user-space sources such as shared-memory
     * rings); this server has only sockets, whose handlers have no io_poll,
     * so on poll and epoll it would never spin anyway: turning it off says
     * so, and spares the loop its timing. */
    spindle_options options = SPINDLE_OPTIONS_INIT;
    options.poll_max_ns = 0;
    srv.ctx = spindle_ctx_new_opts(&options);
    if (!srv.ctx) {
        perror("echo-server: spindle_ctx_new_opts");
        return 1;
    }

    srv.signal_fd = signals_to_fd();
    srv.listen_fd = listen_on(port);
    if (srv.signal_fd < 0 || srv.listen_fd < 0) {
        perror("echo-server: setting up");
        return 1;
    }
    /* Readable on the listening socket means "a connection is waiting";
     * on the signalfd, "a signal arrived". Neither needs io_write. */
    if (spindle_set_fd_handler(srv.ctx, srv.listen_fd, false, accept_ready,
                               NULL, NULL, &srv) != 0 ||
        spindle_set_fd_handler(srv.ctx, srv.signal_fd, false, signal_ready,
                               NULL, NULL, &srv) != 0) {
        fprintf(stderr, "echo-server: cannot register handlers\n");
        return 1;
    }

    printf("listening on 127.0.0.1:%d\n", bound_port(srv.listen_fd));
    fflush(stdout);

    /* The loop: each spindle_poll(ctx, true) sleeps until something
     * happens, runs the callbacks that are due, and returns. The program
     * decides when to stop. */
    while (!srv.stop) {
        spindle_poll(srv.ctx, true);
    }

    /* Clean up: close every connection (each removes its handler), then
     * the listening socket and the signalfd. spindle_ctx_free() would drop
     * the registrations by itself, but it closes no fd: they are ours. */
    while (srv.conns) {
        conn_close(srv.conns);
    }
    spindle_set_fd_handler(srv.ctx, srv.listen_fd, false, NULL, NULL, NULL,
                           NULL);
    spindle_set_fd_handler(srv.ctx, srv.signal_fd, false, NULL, NULL, NULL,
                           NULL);
    close(srv.listen_fd);
    close(srv.signal_fd);
    spindle_ctx_free(srv.ctx);
    fprintf(stderr, "echo-server: served %lu connections\n", srv.served);
    return 0;
}
