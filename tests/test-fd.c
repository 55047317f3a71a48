/* fd handlers: dispatch on pipes, eventfds and socketpairs; update and
 * removal (also from inside callbacks); argument checking; the AUTO switch
 * to epoll; external handlers; fds closed while registered; nesting.
 * SPDX-License-Identifier: MIT
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define MS 1000000LL

/* ------------------------------------------------------------------------
 * Helpers
 */

static const char *env_backend(void)
{
    const char *e = getenv("SPINDLE_BACKEND");
    return e ? e : "";
}

/* True when $SPINDLE_BACKEND leaves an AUTO context to choose by itself. */
static bool auto_mode(void)
{
    const char *e = env_backend();
    return strcmp(e, "poll") != 0 && strcmp(e, "epoll") != 0 &&
           strcmp(e, "io_uring") != 0;
}

static bool env_is(const char *name)
{
    return strcmp(env_backend(), name) == 0;
}

static void write_byte(int fd)
{
    assert_int_equal(write(fd, "x", 1), 1);
}

/* Read everything there is; true if end-of-file was seen. */
static bool drain_fd(int fd)
{
    char buf[4096];
    for (;;) {
        ssize_t r = read(fd, buf, sizeof(buf));
        if (r == 0) {
            return true;
        }
        if (r < 0) {
            return false;
        }
    }
}

static spindle_stats stats_of(const spindle_ctx *ctx)
{
    spindle_stats s;
    assert_int_equal(spindle_get_stats(ctx, &s), 0);
    return s;
}

/* Run blocking iterations until *count reaches target. */
static void poll_until_count(spindle_ctx *ctx, const unsigned *count,
                             unsigned target, unsigned max_iterations)
{
    unsigned i = 0;
    while (*count < target) {
        assert_true(i < max_iterations);
        harness_poll(ctx, true);
        i++;
    }
}

/* A handler's state: the fd it reads, how often it ran, and, for the
 * handlers that act on the context, the context and another handler. */
typedef struct handler {
    int fd;
    int wfd; /* a write end the handler writes to, if any */
    unsigned reads;
    unsigned writes;
    unsigned hangups;
    void *last_opaque;
    spindle_ctx *ctx;
    struct handler *other;
    bool inside;
    bool nested_progress;
} handler;

/* io_read: count, remember the opaque, consume what is readable. */
static void read_cb(void *opaque)
{
    handler *h = opaque;
    h->reads++;
    h->last_opaque = opaque;
    if (drain_fd(h->fd)) {
        h->hangups++;
    }
}

/* A second, distinct io_read (for updates). */
static void read_cb2(void *opaque)
{
    handler *h = opaque;
    h->reads++;
    h->last_opaque = opaque;
    drain_fd(h->fd);
}

/* io_read that counts but leaves the data in place. */
static void count_read_cb(void *opaque)
{
    handler *h = opaque;
    h->reads++;
    h->last_opaque = opaque;
}

static void count_write_cb(void *opaque)
{
    handler *h = opaque;
    h->writes++;
    h->last_opaque = opaque;
}

static void eventfd_read_cb(void *opaque)
{
    handler *h = opaque;
    eventfd_t v;
    h->reads++;
    h->last_opaque = opaque;
    (void)eventfd_read(h->fd, &v);
}

static void remove_fd(spindle_ctx *ctx, int fd)
{
    assert_int_equal(spindle_set_fd_handler(ctx, fd, false, NULL, NULL, NULL,
                                            NULL), 0);
}

/* ------------------------------------------------------------------------
 * Dispatch
 */

static void io_read_runs_when_readable_with_its_opaque(void **state)
{
    int p[2];
    harness_pipe(p);
    handler h = { .fd = p[0] };
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], false, read_cb, NULL,
                                            NULL, &h), 0);

    assert_false(harness_poll(ctx, false));
    assert_int_equal(h.reads, 0);

    write_byte(p[1]);
    poll_until_count(ctx, &h.reads, 1, 10);
    assert_ptr_equal(h.last_opaque, &h);

    /* Consumed: nothing more to dispatch. */
    assert_false(harness_poll(ctx, false));
    assert_int_equal(h.reads, 1);

    spindle_ctx_free(ctx);
    close(p[0]);
    close(p[1]);
}

static void io_read_runs_for_eventfd(void **state)
{
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    assert_true(efd >= 0);
    handler h = { .fd = efd };
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, efd, false, eventfd_read_cb,
                                            NULL, NULL, &h), 0);
    assert_false(harness_poll(ctx, false));

    assert_int_equal(eventfd_write(efd, 3), 0);
    poll_until_count(ctx, &h.reads, 1, 10);
    assert_ptr_equal(h.last_opaque, &h);
    assert_false(harness_poll(ctx, false));
    assert_int_equal(h.reads, 1);

    spindle_ctx_free(ctx);
    close(efd);
}

static void io_write_runs_when_writable_with_its_opaque(void **state)
{
    int p[2];
    harness_pipe(p);
    handler h = { .fd = p[1] };
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, p[1], false, NULL,
                                            count_write_cb, NULL, &h), 0);

    /* An empty pipe is writable at once: a non-blocking iteration sees it. */
    assert_true(harness_poll(ctx, false));
    assert_int_equal(h.writes, 1);
    assert_ptr_equal(h.last_opaque, &h);

    spindle_ctx_free(ctx);
    close(p[0]);
    close(p[1]);
}

static void io_write_does_not_run_while_pipe_is_full(void **state)
{
    int p[2];
    harness_pipe(p);
    char buf[4096];
    memset(buf, 'x', sizeof(buf));
    while (write(p[1], buf, sizeof(buf)) > 0) {
    }
    assert_int_equal(errno, EAGAIN);
    while (write(p[1], buf, 1) > 0) {
    }

    handler h = { .fd = p[1] };
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, p[1], false, NULL,
                                            count_write_cb, NULL, &h), 0);
    for (int i = 0; i < 5; i++) {
        assert_false(harness_poll(ctx, false));
    }
    assert_int_equal(h.writes, 0);

    /* Room again: io_write runs. */
    drain_fd(p[0]);
    poll_until_count(ctx, &h.writes, 1, 10);

    spindle_ctx_free(ctx);
    close(p[0]);
    close(p[1]);
}

static void io_read_runs_on_hangup(void **state)
{
    int p[2];
    harness_pipe(p);
    handler h = { .fd = p[0] };
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], false, read_cb, NULL,
                                            NULL, &h), 0);
    assert_false(harness_poll(ctx, false));

    close(p[1]); /* no data: only the hang-up makes the read end ready */
    poll_until_count(ctx, &h.hangups, 1, 10);
    assert_ptr_equal(h.last_opaque, &h);

    remove_fd(ctx, p[0]);
    spindle_ctx_free(ctx);
    close(p[0]);
}

static void io_read_and_io_write_run_in_the_same_iteration(void **state)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK |
                                SOCK_CLOEXEC, 0, sv), 0);
    handler h = { .fd = sv[0] };
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, sv[0], false, read_cb,
                                            count_write_cb, NULL, &h), 0);
    write_byte(sv[1]); /* sv[0] is now readable, and writable all along */

    assert_true(harness_poll(ctx, false));
    assert_int_equal(h.reads, 1);
    assert_int_equal(h.writes, 1);

    spindle_ctx_free(ctx);
    close(sv[0]);
    close(sv[1]);
}

/* ------------------------------------------------------------------------
 * Update and removal
 */

static void update_replaces_callbacks(void **state)
{
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    assert_true(efd >= 0);
    handler old = { .fd = efd };
    handler cur = { .fd = efd };
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, efd, false, eventfd_read_cb,
                                            NULL, NULL, &old), 0);
    assert_int_equal(eventfd_write(efd, 1), 0);
    poll_until_count(ctx, &old.reads, 1, 10);

    assert_int_equal(spindle_set_fd_handler(ctx, efd, false, read_cb2,
                                            NULL, NULL, &cur), 0);

    for (unsigned i = 1; i <= 3; i++) {
        assert_int_equal(eventfd_write(efd, 1), 0);
        poll_until_count(ctx, &cur.reads, i, 10);
        assert_ptr_equal(cur.last_opaque, &cur);
    }
    assert_int_equal(cur.reads, 3);
    assert_int_equal(old.reads, 1);

    spindle_ctx_free(ctx);
    close(efd);
}

static void removal_stops_dispatch(void **state)
{
    int p[2];
    harness_pipe(p);
    handler h = { .fd = p[0] };
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], false, count_read_cb,
                                            NULL, NULL, &h), 0);
    write_byte(p[1]);
    poll_until_count(ctx, &h.reads, 1, 10);

    remove_fd(ctx, p[0]); /* the byte is still there, unread */
    unsigned before = h.reads;
    for (int i = 0; i < 5; i++) {
        assert_false(harness_poll(ctx, false));
    }
    assert_int_equal(h.reads, before);

    spindle_ctx_free(ctx);
    close(p[0]);
    close(p[1]);
}

static void removing_unregistered_fd_returns_zero(void **state)
{
    int p[2];
    harness_pipe(p);
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], false, NULL, NULL, NULL,
                                            NULL), 0);
    assert_false(harness_poll(ctx, false));
    spindle_ctx_free(ctx);
    close(p[0]);
    close(p[1]);
}

static void removal_after_close_returns_zero(void **state)
{
    int p[2];
    harness_pipe(p);
    handler h = { .fd = p[0] };
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], false, read_cb, NULL,
                                            NULL, &h), 0);
    const char *backend = spindle_backend_name(ctx);
    close(p[0]);
    close(p[1]);
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], false, NULL, NULL, NULL,
                                            NULL), 0);
    assert_false(harness_poll(ctx, false));
    assert_int_equal(h.reads, 0);
    /* An ordinary removal, not a back-end failure (no fallback to poll). */
    assert_string_equal(spindle_backend_name(ctx), backend);
    spindle_ctx_free(ctx);
}

/* ------------------------------------------------------------------------
 * Argument checking
 */

static void registering_negative_fd_returns_ebadf(void **state)
{
    unsigned calls = 0;
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, -1, false, harness_count_cb,
                                            NULL, NULL, &calls), -EBADF);
    assert_int_equal(spindle_set_fd_handler(ctx, -42, false, NULL,
                                            harness_count_cb, NULL, &calls),
                     -EBADF);
    assert_false(harness_poll(ctx, false));
    spindle_ctx_free(ctx);
}

static void registering_closed_fd_returns_ebadf(void **state)
{
    int p[2];
    spindle_ctx *ctx = harness_ctx_new(); /* first: it opens fds itself */
    harness_pipe(p);
    close(p[0]);
    unsigned calls = 0;
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], false, harness_count_cb,
                                            NULL, NULL, &calls), -EBADF);
    assert_false(harness_poll(ctx, false));
    assert_int_equal(calls, 0);
    spindle_ctx_free(ctx);
    close(p[1]);
}

static void updating_closed_fd_returns_ebadf(void **state)
{
    int p[2];
    harness_pipe(p);
    handler h = { .fd = p[0] };
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], false, read_cb, NULL,
                                            NULL, &h), 0);
    close(p[0]);
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], false, read_cb2, NULL,
                                            NULL, &h), -EBADF);
    remove_fd(ctx, p[0]);
    spindle_ctx_free(ctx);
    close(p[1]);
}

static void set_fd_handler_null_ctx_returns_einval(void **state)
{
    int p[2];
    harness_pipe(p);
    unsigned calls = 0;
    assert_int_equal(spindle_set_fd_handler(NULL, p[0], false, harness_count_cb,
                                            NULL, NULL, &calls), -EINVAL);
    close(p[0]);
    close(p[1]);
}

/* ------------------------------------------------------------------------
 * Changes from inside callbacks
 */

static void remove_self_cb(void *opaque)
{
    handler *h = opaque;
    h->reads++;
    remove_fd(h->ctx, h->fd); /* leaves the data unread */
}

static void handler_removes_itself_from_its_callback(void **state)
{
    int p[2];
    harness_pipe(p);
    spindle_ctx *ctx = harness_ctx_new();
    handler h = { .fd = p[0], .ctx = ctx };
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], false, remove_self_cb,
                                            NULL, NULL, &h), 0);
    write_byte(p[1]);
    poll_until_count(ctx, &h.reads, 1, 10);
    for (int i = 0; i < 5; i++) {
        assert_false(harness_poll(ctx, false));
    }
    assert_int_equal(h.reads, 1);

    spindle_ctx_free(ctx);
    close(p[0]);
    close(p[1]);
}

/* Consume own byte and remove the other handler. */
static void remove_other_cb(void *opaque)
{
    handler *h = opaque;
    h->reads++;
    drain_fd(h->fd);
    remove_fd(h->ctx, h->other->fd);
}

static void handler_removes_other_ready_handler_in_same_iteration(void **state)
{
    int a[2], b[2];
    harness_pipe(a);
    harness_pipe(b);
    spindle_ctx *ctx = harness_ctx_new();
    handler ha = { .fd = a[0], .ctx = ctx };
    handler hb = { .fd = b[0], .ctx = ctx };
    ha.other = &hb;
    hb.other = &ha;
    assert_int_equal(spindle_set_fd_handler(ctx, a[0], false, remove_other_cb,
                                            NULL, NULL, &ha), 0);
    assert_int_equal(spindle_set_fd_handler(ctx, b[0], false, remove_other_cb,
                                            NULL, NULL, &hb), 0);
    write_byte(a[1]);
    write_byte(b[1]);

    /* Both are ready in this one iteration; whichever runs first removes
     * the other, which then must not run. */
    assert_true(harness_poll(ctx, false));
    assert_int_equal(ha.reads + hb.reads, 1);

    /* The loser stays removed: its byte and a new one are never seen. */
    handler *loser = ha.reads ? &hb : &ha;
    int loser_w = ha.reads ? b[1] : a[1];
    write_byte(loser_w);
    for (int i = 0; i < 5; i++) {
        assert_false(harness_poll(ctx, false));
    }
    assert_int_equal(loser->reads, 0);
    assert_int_equal(ha.reads + hb.reads, 1);

    spindle_ctx_free(ctx);
    close(a[0]);
    close(a[1]);
    close(b[0]);
    close(b[1]);
}

static void remove_and_reregister_self_cb(void *opaque)
{
    handler *h = opaque;
    h->reads++;
    drain_fd(h->fd);
    if (h->reads == 1) {
        remove_fd(h->ctx, h->fd);
        assert_int_equal(spindle_set_fd_handler(h->ctx, h->fd, false,
                                                remove_and_reregister_self_cb,
                                                NULL, NULL, h), 0);
    }
}

static void handler_removes_itself_then_reregisters(void **state)
{
    int p[2];
    harness_pipe(p);
    spindle_ctx *ctx = harness_ctx_new();
    handler h = { .fd = p[0], .ctx = ctx };
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], false,
                                            remove_and_reregister_self_cb,
                                            NULL, NULL, &h), 0);
    /* Every byte written is dispatched exactly once, before and after the
     * handler replaced itself. */
    for (unsigned i = 1; i <= 3; i++) {
        write_byte(p[1]);
        poll_until_count(ctx, &h.reads, i, 10);
        assert_false(harness_poll(ctx, false));
        assert_int_equal(h.reads, i);
    }

    spindle_ctx_free(ctx);
    close(p[0]);
    close(p[1]);
}

/* ------------------------------------------------------------------------
 * Many fds and the AUTO switch to epoll
 */

enum { MANY = 200, AUTO_SWITCH_AT = 64 };

static void ensure_fd_limit(rlim_t needed)
{
    struct rlimit rl;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < needed) {
        if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < needed) {
            skip();
        }
        rl.rlim_cur = needed;
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
}

static void many_pipes_dispatch_exactly_the_ready_ones_across_auto_switch(void **state)
{
    static int pipes[MANY][2];
    static handler hs[MANY];
    ensure_fd_limit(2 * MANY + 64);

    spindle_ctx *ctx = harness_ctx_new();
    const char *initial = spindle_backend_name(ctx);
    for (int i = 0; i < MANY; i++) {
        harness_pipe(pipes[i]);
        hs[i] = (handler){ .fd = pipes[i][0] };
        assert_int_equal(spindle_set_fd_handler(ctx, pipes[i][0], false,
                                                read_cb, NULL, NULL, &hs[i]),
                         0);
        const char *name = spindle_backend_name(ctx);
        if (strcmp(initial, "io_uring") == 0) {
            /* A ring from creation on (AUTO or asked): it never switches. */
            assert_string_equal(name, "io_uring");
        } else if (harness_embedded()) {
            /* An embedded context moves to epoll at once. */
            assert_string_equal(name, "epoll");
        } else if (auto_mode()) {
            /* Starts on poll, epoll from the 64th registration on. */
            assert_string_equal(name, i + 1 < AUTO_SWITCH_AT ? "poll"
                                                              : "epoll");
        } else if (env_is("poll")) {
            assert_string_equal(name, "poll");
        } else {
            assert_string_equal(name, initial);
            assert_string_equal(name, "epoll");
        }
    }

    assert_false(harness_poll(ctx, false));

    unsigned expected = 0;
    for (int i = 0; i < MANY; i += 3) {
        write_byte(pipes[i][1]);
        expected++;
    }
    unsigned total = 0;
    for (unsigned it = 0; total < expected; it++) {
        assert_true(it < 100);
        harness_poll(ctx, true);
        total = 0;
        for (int i = 0; i < MANY; i++) {
            total += hs[i].reads;
        }
    }
    harness_drain(ctx);
    for (int i = 0; i < MANY; i++) {
        assert_int_equal(hs[i].reads, i % 3 == 0 ? 1 : 0);
        if (hs[i].reads) {
            assert_ptr_equal(hs[i].last_opaque, &hs[i]);
        }
    }

    spindle_ctx_free(ctx);
    for (int i = 0; i < MANY; i++) {
        close(pipes[i][0]);
        close(pipes[i][1]);
    }
}

/* ------------------------------------------------------------------------
 * External handlers
 */

static void external_handler_not_dispatched_while_disabled(void **state)
{
    int p[2];
    harness_pipe(p);
    handler h = { .fd = p[0] };
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], true, read_cb, NULL,
                                            NULL, &h), 0);
    spindle_disable_external(ctx);
    write_byte(p[1]);
    for (int i = 0; i < 10; i++) {
        harness_poll(ctx, false);
    }
    assert_int_equal(h.reads, 0);

    spindle_enable_external(ctx);
    spindle_ctx_free(ctx);
    close(p[0]);
    close(p[1]);
}

static void external_event_delivered_after_enable(void **state)
{
    int p[2];
    harness_pipe(p);
    handler h = { .fd = p[0] };
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], true, read_cb, NULL,
                                            NULL, &h), 0);
    spindle_disable_external(ctx);
    write_byte(p[1]);
    harness_drain(ctx);
    assert_int_equal(h.reads, 0);

    spindle_enable_external(ctx);
    poll_until_count(ctx, &h.reads, 1, 10);
    assert_false(harness_poll(ctx, false));
    assert_int_equal(h.reads, 1);

    spindle_ctx_free(ctx);
    close(p[0]);
    close(p[1]);
}

static void disable_external_nests(void **state)
{
    int p[2];
    harness_pipe(p);
    handler h = { .fd = p[0] };
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], true, read_cb, NULL,
                                            NULL, &h), 0);
    spindle_disable_external(ctx);
    spindle_disable_external(ctx);
    write_byte(p[1]);

    spindle_enable_external(ctx); /* still disabled once */
    for (int i = 0; i < 10; i++) {
        harness_poll(ctx, false);
    }
    assert_int_equal(h.reads, 0);

    spindle_enable_external(ctx);
    poll_until_count(ctx, &h.reads, 1, 10);

    spindle_ctx_free(ctx);
    close(p[0]);
    close(p[1]);
}

static void internal_handler_dispatched_while_external_disabled(void **state)
{
    int e[2], i2[2];
    harness_pipe(e);
    harness_pipe(i2);
    handler ext = { .fd = e[0] };
    handler in = { .fd = i2[0] };
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, e[0], true, read_cb, NULL,
                                            NULL, &ext), 0);
    assert_int_equal(spindle_set_fd_handler(ctx, i2[0], false, read_cb, NULL,
                                            NULL, &in), 0);
    spindle_disable_external(ctx);
    write_byte(e[1]);
    write_byte(i2[1]);
    poll_until_count(ctx, &in.reads, 1, 10);
    assert_int_equal(ext.reads, 0);

    spindle_enable_external(ctx);
    spindle_ctx_free(ctx);
    close(e[0]);
    close(e[1]);
    close(i2[0]);
    close(i2[1]);
}

static bool poll_false_cb(void *opaque)
{
    (void)opaque;
    return false;
}

static void loop_does_not_spin_while_external_disabled(void **state)
{
    /* Two readable external handlers, with and without io_poll; the loop
     * must really sleep until the timer rather than wake for them over and
     * over. */
    int p[2];
    harness_pipe(p);
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    assert_true(efd >= 0);
    handler hp = { .fd = p[0] };
    handler he = { .fd = efd };
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], true, read_cb, NULL,
                                            NULL, &hp), 0);
    assert_int_equal(spindle_set_fd_handler(ctx, efd, true, eventfd_read_cb,
                                            NULL, poll_false_cb, &he), 0);
    spindle_disable_external(ctx);
    write_byte(p[1]);
    assert_int_equal(eventfd_write(efd, 1), 0);

    harness_poll_until_timer(ctx, 20 * MS, 10);
    assert_int_equal(hp.reads, 0);
    assert_int_equal(he.reads, 0);

    spindle_enable_external(ctx);
    spindle_ctx_free(ctx);
    close(p[0]);
    close(p[1]);
    close(efd);
}

/* ------------------------------------------------------------------------
 * fds closed while registered
 */

static void closed_registered_fd_does_not_make_loop_spin(void **state)
{
    int p[2];
    harness_pipe(p);
    handler h = { .fd = p[0] };
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], false, read_cb, NULL,
                                            NULL, &h), 0);
    assert_false(harness_poll(ctx, false));
    close(p[0]); /* without removing it */

    harness_poll_until_timer(ctx, 20 * MS, 10);
    assert_int_equal(h.reads, 0);

    remove_fd(ctx, p[0]);
    spindle_ctx_free(ctx);
    close(p[1]);
}

static void closed_registered_fd_is_counted_stale_on_poll_backend(void **state)
{
    if (harness_embedded()) {
        skip(); /* embedding moves a context from poll to epoll */
    }
    int p[2];
    harness_pipe(p);
    handler h = { .fd = p[0] };
    spindle_options o = { SPINDLE_BACKEND_POLL, -1, 0, 0, SPINDLE_URING_AUTO };
    spindle_ctx *ctx = spindle_ctx_new_opts(&o);
    assert_non_null(ctx);
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], false, read_cb, NULL,
                                            NULL, &h), 0);
    assert_false(harness_poll(ctx, false));
    assert_int_equal(stats_of(ctx).stale_fds, 0);
    close(p[0]);
    close(p[1]);

    /* Found closed once, disarmed, so counted once however many
     * iterations follow. (epoll drops a closed fd by itself and never sees
     * it, hence the explicit poll back-end.) */
    for (int i = 0; i < 5; i++) {
        assert_false(harness_poll(ctx, false));
    }
    assert_int_equal(h.reads, 0);
    assert_int_equal(stats_of(ctx).stale_fds, 1);

    remove_fd(ctx, p[0]);
    spindle_ctx_free(ctx);
}

static void registering_reused_fd_number_after_close_works(void **state)
{
    int p[2];
    harness_pipe(p);
    handler old = { .fd = p[0] };
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], false, read_cb, NULL,
                                            NULL, &old), 0);
    const char *backend = spindle_backend_name(ctx);
    int number = p[0];
    close(p[0]);
    close(p[1]);
    assert_false(harness_poll(ctx, false));

    /* A new pipe whose read end has the old number. */
    int q[2];
    harness_pipe(q);
    if (q[0] != number) {
        assert_int_equal(dup3(q[0], number, O_CLOEXEC), number);
        close(q[0]);
        q[0] = number;
    }
    handler cur = { .fd = q[0] };
    assert_int_equal(spindle_set_fd_handler(ctx, q[0], false, read_cb2, NULL,
                                            NULL, &cur), 0);
    write_byte(q[1]);
    poll_until_count(ctx, &cur.reads, 1, 10);
    assert_ptr_equal(cur.last_opaque, &cur);
    assert_int_equal(old.reads, 0);
    /* Handled as usual, not as a back-end failure (no fallback to poll). */
    assert_string_equal(spindle_backend_name(ctx), backend);

    spindle_ctx_free(ctx);
    close(q[0]);
    close(q[1]);
}

/* ------------------------------------------------------------------------
 * Nesting
 */

/* Outer handler: consume, make the inner handler's fd readable, then run
 * nested iterations until the inner handler has run. */
static void nest_outer_cb(void *opaque)
{
    handler *h = opaque;
    h->reads++;
    drain_fd(h->fd);
    h->inside = true;
    write_byte(h->wfd);
    for (int i = 0; i < 10 && h->other->reads == 0; i++) {
        if (spindle_poll(h->ctx, false)) {
            h->nested_progress = true;
        }
    }
    h->inside = false;
}

/* Inner handler: records whether the outer one was running. */
static void nest_inner_cb(void *opaque)
{
    handler *h = opaque;
    h->reads++;
    drain_fd(h->fd);
    h->inside = h->other->inside;
}

static void nested_poll_from_fd_callback_dispatches_other_handler(void **state)
{
    int a[2], b[2];
    harness_pipe(a);
    harness_pipe(b);
    spindle_ctx *ctx = harness_ctx_new();
    handler outer = { .fd = a[0], .wfd = b[1], .ctx = ctx };
    handler inner = { .fd = b[0], .ctx = ctx };
    outer.other = &inner;
    inner.other = &outer;
    assert_int_equal(spindle_set_fd_handler(ctx, a[0], false, nest_outer_cb,
                                            NULL, NULL, &outer), 0);
    assert_int_equal(spindle_set_fd_handler(ctx, b[0], false, nest_inner_cb,
                                            NULL, NULL, &inner), 0);
    write_byte(a[1]);
    poll_until_count(ctx, &outer.reads, 1, 10);

    assert_int_equal(inner.reads, 1);
    assert_true(inner.inside);          /* it ran inside the outer callback */
    assert_true(outer.nested_progress); /* and the nested call said so */
    assert_false(harness_poll(ctx, false));
    assert_int_equal(outer.reads, 1);
    assert_int_equal(inner.reads, 1);

    spindle_ctx_free(ctx);
    close(a[0]);
    close(a[1]);
    close(b[0]);
    close(b[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST(io_read_runs_when_readable_with_its_opaque),
        TEST(io_read_runs_for_eventfd),
        TEST(io_write_runs_when_writable_with_its_opaque),
        TEST(io_write_does_not_run_while_pipe_is_full),
        TEST(io_read_runs_on_hangup),
        TEST(io_read_and_io_write_run_in_the_same_iteration),
        TEST(update_replaces_callbacks),
        TEST(removal_stops_dispatch),
        TEST(removing_unregistered_fd_returns_zero),
        TEST(removal_after_close_returns_zero),
        TEST(registering_negative_fd_returns_ebadf),
        TEST(registering_closed_fd_returns_ebadf),
        TEST(updating_closed_fd_returns_ebadf),
        TEST(set_fd_handler_null_ctx_returns_einval),
        TEST(handler_removes_itself_from_its_callback),
        TEST(handler_removes_other_ready_handler_in_same_iteration),
        TEST(handler_removes_itself_then_reregisters),
        TEST(many_pipes_dispatch_exactly_the_ready_ones_across_auto_switch),
        TEST(external_handler_not_dispatched_while_disabled),
        TEST(external_event_delivered_after_enable),
        TEST(disable_external_nests),
        TEST(internal_handler_dispatched_while_external_disabled),
        TEST(loop_does_not_spin_while_external_disabled),
        TEST(closed_registered_fd_does_not_make_loop_spin),
        TEST(closed_registered_fd_is_counted_stale_on_poll_backend),
        TEST(registering_reused_fd_number_after_close_works),
        TEST(nested_poll_from_fd_callback_dispatches_other_handler),
    };
    return RUN_TESTS(tests);
}
