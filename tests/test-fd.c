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

/* Register a handler with no io_poll; the registration must succeed. */
static void set_handler(spindle_ctx *ctx, int fd, bool external,
                        spindle_io_fn *io_read, spindle_io_fn *io_write,
                        handler *h)
{
    assert_int_equal(spindle_set_fd_handler(ctx, fd, external, io_read,
                                            io_write, NULL, h), 0);
}

static int new_eventfd(void)
{
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    assert_true(efd >= 0);
    return efd;
}

/* Close an end before teardown does: -1 keeps teardown from closing the
 * number again once something else may have it. */
static void close_end(int *fd)
{
    close(*fd);
    *fd = -1;
}

/* ------------------------------------------------------------------------
 * Fixtures
 *
 * A fresh context and the fds a test watches: a pipe p with a handler h for
 * its read end, a second pipe q, an eventfd. Teardown frees the context
 * (NULL if the test made none), then closes what is still open (not -1).
 */

struct fixture {
    spindle_ctx *ctx;
    int p[2];
    int q[2];
    int efd;
    handler h;
};

/* harness_ctx_new() rather than CTX_TEST's setup: in embedded runs it hands
 * the context to the host before the test starts, as these tests expect.
 * The context comes before the fds: it opens fds of its own, which must
 * not take the number of an end a test closes. */
static struct fixture *fixture_new(void **state, bool with_ctx)
{
    struct fixture *f = harness_fixture_new(state, sizeof(*f));
    f->p[0] = f->p[1] = f->q[0] = f->q[1] = f->efd = -1;
    if (with_ctx) {
        f->ctx = harness_ctx_new();
    }
    f->h.ctx = f->ctx;
    return f;
}

static int ctx_setup(void **state)
{
    fixture_new(state, true);
    return 0;
}

/* A fixture whose handler watches the read end of pipe p. */
static struct fixture *pipe_fixture(void **state, bool with_ctx)
{
    struct fixture *f = fixture_new(state, with_ctx);
    harness_pipe(f->p);
    f->h.fd = f->p[0];
    return f;
}

static int pipe_setup(void **state)
{
    pipe_fixture(state, true);
    return 0;
}

static int two_pipes_setup(void **state)
{
    pipe_setup(state);
    struct fixture *f = *state;
    harness_pipe(f->q);
    return 0;
}

static int eventfd_setup(void **state)
{
    struct fixture *f = fixture_new(state, true);
    f->efd = new_eventfd();
    f->h.fd = f->efd;
    return 0;
}

/* For the tests that need no context or make their own. */
static int pipe_without_ctx_setup(void **state)
{
    pipe_fixture(state, false);
    return 0;
}

static void close_if_open(int fd)
{
    if (fd >= 0) {
        close(fd);
    }
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    spindle_ctx_free(f->ctx);
    close_if_open(f->p[0]);
    close_if_open(f->p[1]);
    close_if_open(f->q[0]);
    close_if_open(f->q[1]);
    close_if_open(f->efd);
    free(f);
    return harness_watchdog_disarm(state);
}

#define WITH(setup, fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
#define WITH_CTX(fn) WITH(ctx_setup, fn)
#define WITH_PIPE(fn) WITH(pipe_setup, fn)
#define WITH_TWO_PIPES(fn) WITH(two_pipes_setup, fn)
#define WITH_EVENTFD(fn) WITH(eventfd_setup, fn)
#define WITH_PIPE_WITHOUT_CTX(fn) WITH(pipe_without_ctx_setup, fn)

/* ------------------------------------------------------------------------
 * Dispatch
 */

static void io_read_runs_when_readable_with_its_opaque(void **state)
{
    struct fixture *f = *state;
    set_handler(f->ctx, f->p[0], false, read_cb, NULL, &f->h);

    assert_false(harness_poll(f->ctx, false));
    assert_int_equal(f->h.reads, 0);

    write_byte(f->p[1]);
    poll_until_count(f->ctx, &f->h.reads, 1, 10);
    assert_ptr_equal(f->h.last_opaque, &f->h);

    /* Consumed: nothing more to dispatch. */
    assert_false(harness_poll(f->ctx, false));
    assert_int_equal(f->h.reads, 1);
}

static void io_read_runs_for_eventfd(void **state)
{
    struct fixture *f = *state;
    set_handler(f->ctx, f->efd, false, eventfd_read_cb, NULL, &f->h);
    assert_false(harness_poll(f->ctx, false));

    assert_int_equal(eventfd_write(f->efd, 3), 0);
    poll_until_count(f->ctx, &f->h.reads, 1, 10);
    assert_ptr_equal(f->h.last_opaque, &f->h);
    assert_false(harness_poll(f->ctx, false));
    assert_int_equal(f->h.reads, 1);
}

static void io_write_runs_when_writable_with_its_opaque(void **state)
{
    struct fixture *f = *state;
    f->h.fd = f->p[1];
    set_handler(f->ctx, f->p[1], false, NULL, count_write_cb, &f->h);

    /* An empty pipe is writable at once: a non-blocking iteration sees it. */
    assert_true(harness_poll(f->ctx, false));
    assert_int_equal(f->h.writes, 1);
    assert_ptr_equal(f->h.last_opaque, &f->h);
}

static void io_write_does_not_run_while_pipe_is_full(void **state)
{
    struct fixture *f = *state;
    char buf[4096];
    memset(buf, 'x', sizeof(buf));
    while (write(f->p[1], buf, sizeof(buf)) > 0) {
    }
    assert_int_equal(errno, EAGAIN);
    while (write(f->p[1], buf, 1) > 0) {
    }

    f->h.fd = f->p[1];
    set_handler(f->ctx, f->p[1], false, NULL, count_write_cb, &f->h);
    for (int i = 0; i < 5; i++) {
        assert_false(harness_poll(f->ctx, false));
    }
    assert_int_equal(f->h.writes, 0);

    /* Room again: io_write runs. */
    drain_fd(f->p[0]);
    poll_until_count(f->ctx, &f->h.writes, 1, 10);
}

static void io_read_runs_on_hangup(void **state)
{
    struct fixture *f = *state;
    set_handler(f->ctx, f->p[0], false, read_cb, NULL, &f->h);
    assert_false(harness_poll(f->ctx, false));

    /* No data: only the hang-up makes the read end ready. */
    close_end(&f->p[1]);
    poll_until_count(f->ctx, &f->h.hangups, 1, 10);
    assert_ptr_equal(f->h.last_opaque, &f->h);

    remove_fd(f->ctx, f->p[0]);
}

static void io_read_and_io_write_run_in_the_same_iteration(void **state)
{
    struct fixture *f = *state;
    /* A socketpair in the fixture's pipe slots: teardown closes it. */
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK |
                                SOCK_CLOEXEC, 0, f->p), 0);
    f->h.fd = f->p[0];
    set_handler(f->ctx, f->p[0], false, read_cb, count_write_cb, &f->h);
    write_byte(f->p[1]); /* p[0] is now readable, and writable all along */

    assert_true(harness_poll(f->ctx, false));
    assert_int_equal(f->h.reads, 1);
    assert_int_equal(f->h.writes, 1);
}

/* ------------------------------------------------------------------------
 * Update and removal
 */

static void update_replaces_callbacks(void **state)
{
    struct fixture *f = *state;
    handler old = { .fd = f->efd };
    handler cur = { .fd = f->efd };
    set_handler(f->ctx, f->efd, false, eventfd_read_cb, NULL, &old);
    assert_int_equal(eventfd_write(f->efd, 1), 0);
    poll_until_count(f->ctx, &old.reads, 1, 10);

    set_handler(f->ctx, f->efd, false, read_cb2, NULL, &cur);

    for (unsigned i = 1; i <= 3; i++) {
        assert_int_equal(eventfd_write(f->efd, 1), 0);
        poll_until_count(f->ctx, &cur.reads, i, 10);
        assert_ptr_equal(cur.last_opaque, &cur);
    }
    assert_int_equal(cur.reads, 3);
    assert_int_equal(old.reads, 1);
}

static void removal_stops_dispatch(void **state)
{
    struct fixture *f = *state;
    set_handler(f->ctx, f->p[0], false, count_read_cb, NULL, &f->h);
    write_byte(f->p[1]);
    poll_until_count(f->ctx, &f->h.reads, 1, 10);

    remove_fd(f->ctx, f->p[0]); /* the byte is still there, unread */
    unsigned before = f->h.reads;
    for (int i = 0; i < 5; i++) {
        assert_false(harness_poll(f->ctx, false));
    }
    assert_int_equal(f->h.reads, before);
}

static void removing_unregistered_fd_returns_zero(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(spindle_set_fd_handler(f->ctx, f->p[0], false, NULL, NULL,
                                            NULL, NULL), 0);
    assert_false(harness_poll(f->ctx, false));
}

static void removal_after_close_returns_zero(void **state)
{
    struct fixture *f = *state;
    set_handler(f->ctx, f->p[0], false, read_cb, NULL, &f->h);
    const char *backend = spindle_backend_name(f->ctx);
    close_end(&f->p[0]);
    close_end(&f->p[1]);
    assert_int_equal(spindle_set_fd_handler(f->ctx, f->h.fd, false, NULL, NULL,
                                            NULL, NULL), 0);
    assert_false(harness_poll(f->ctx, false));
    assert_int_equal(f->h.reads, 0);
    /* An ordinary removal, not a back-end failure (no fallback to poll). */
    assert_string_equal(spindle_backend_name(f->ctx), backend);
}

/* ------------------------------------------------------------------------
 * Argument checking
 */

static void registering_negative_fd_returns_ebadf(void **state)
{
    struct fixture *f = *state;
    unsigned calls = 0;
    assert_int_equal(spindle_set_fd_handler(f->ctx, -1, false,
                                            harness_count_cb, NULL, NULL,
                                            &calls), -EBADF);
    assert_int_equal(spindle_set_fd_handler(f->ctx, -42, false, NULL,
                                            harness_count_cb, NULL, &calls),
                     -EBADF);
    assert_false(harness_poll(f->ctx, false));
}

static void registering_closed_fd_returns_ebadf(void **state)
{
    struct fixture *f = *state;
    close_end(&f->p[0]);
    unsigned calls = 0;
    assert_int_equal(spindle_set_fd_handler(f->ctx, f->h.fd, false,
                                            harness_count_cb, NULL, NULL,
                                            &calls), -EBADF);
    assert_false(harness_poll(f->ctx, false));
    assert_int_equal(calls, 0);
}

static void updating_closed_fd_returns_ebadf(void **state)
{
    struct fixture *f = *state;
    set_handler(f->ctx, f->p[0], false, read_cb, NULL, &f->h);
    close_end(&f->p[0]);
    assert_int_equal(spindle_set_fd_handler(f->ctx, f->h.fd, false, read_cb2,
                                            NULL, NULL, &f->h), -EBADF);
    remove_fd(f->ctx, f->h.fd);
}

static void set_fd_handler_null_ctx_returns_einval(void **state)
{
    struct fixture *f = *state;
    unsigned calls = 0;
    assert_int_equal(spindle_set_fd_handler(NULL, f->p[0], false,
                                            harness_count_cb, NULL, NULL,
                                            &calls), -EINVAL);
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
    struct fixture *f = *state;
    set_handler(f->ctx, f->p[0], false, remove_self_cb, NULL, &f->h);
    write_byte(f->p[1]);
    poll_until_count(f->ctx, &f->h.reads, 1, 10);
    for (int i = 0; i < 5; i++) {
        assert_false(harness_poll(f->ctx, false));
    }
    assert_int_equal(f->h.reads, 1);
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
    struct fixture *f = *state;
    handler ha = { .fd = f->p[0], .ctx = f->ctx };
    handler hb = { .fd = f->q[0], .ctx = f->ctx };
    ha.other = &hb;
    hb.other = &ha;
    set_handler(f->ctx, f->p[0], false, remove_other_cb, NULL, &ha);
    set_handler(f->ctx, f->q[0], false, remove_other_cb, NULL, &hb);
    write_byte(f->p[1]);
    write_byte(f->q[1]);

    /* Both are ready in this one iteration; whichever runs first removes
     * the other, which then must not run. */
    assert_true(harness_poll(f->ctx, false));
    assert_int_equal(ha.reads + hb.reads, 1);

    /* The loser stays removed: its byte and a new one are never seen. */
    handler *loser = ha.reads ? &hb : &ha;
    int loser_w = ha.reads ? f->q[1] : f->p[1];
    write_byte(loser_w);
    for (int i = 0; i < 5; i++) {
        assert_false(harness_poll(f->ctx, false));
    }
    assert_int_equal(loser->reads, 0);
    assert_int_equal(ha.reads + hb.reads, 1);
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
    struct fixture *f = *state;
    set_handler(f->ctx, f->p[0], false, remove_and_reregister_self_cb, NULL,
                &f->h);
    /* Every byte written is dispatched exactly once, before and after the
     * handler replaced itself. */
    for (unsigned i = 1; i <= 3; i++) {
        write_byte(f->p[1]);
        poll_until_count(f->ctx, &f->h.reads, i, 10);
        assert_false(harness_poll(f->ctx, false));
        assert_int_equal(f->h.reads, i);
    }
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
    struct fixture *f = *state;
    static int pipes[MANY][2];
    static handler hs[MANY];
    ensure_fd_limit(2 * MANY + 64);

    const char *initial = spindle_backend_name(f->ctx);
    for (int i = 0; i < MANY; i++) {
        harness_pipe(pipes[i]);
        hs[i] = (handler){ .fd = pipes[i][0] };
        set_handler(f->ctx, pipes[i][0], false, read_cb, NULL, &hs[i]);
        const char *name = spindle_backend_name(f->ctx);
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

    assert_false(harness_poll(f->ctx, false));

    unsigned expected = 0;
    for (int i = 0; i < MANY; i += 3) {
        write_byte(pipes[i][1]);
        expected++;
    }
    unsigned total = 0;
    for (unsigned it = 0; total < expected; it++) {
        assert_true(it < 100);
        harness_poll(f->ctx, true);
        total = 0;
        for (int i = 0; i < MANY; i++) {
            total += hs[i].reads;
        }
    }
    harness_drain(f->ctx);
    for (int i = 0; i < MANY; i++) {
        assert_int_equal(hs[i].reads, i % 3 == 0 ? 1 : 0);
        if (hs[i].reads) {
            assert_ptr_equal(hs[i].last_opaque, &hs[i]);
        }
    }

    /* The context goes before the pipes it still watches; teardown would
     * free it only after these closes. */
    spindle_ctx_free(f->ctx);
    f->ctx = NULL;
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
    struct fixture *f = *state;
    set_handler(f->ctx, f->p[0], true, read_cb, NULL, &f->h);
    spindle_disable_external(f->ctx);
    write_byte(f->p[1]);
    for (int i = 0; i < 10; i++) {
        harness_poll(f->ctx, false);
    }
    assert_int_equal(f->h.reads, 0);

    spindle_enable_external(f->ctx);
}

static void external_event_delivered_after_enable(void **state)
{
    struct fixture *f = *state;
    set_handler(f->ctx, f->p[0], true, read_cb, NULL, &f->h);
    spindle_disable_external(f->ctx);
    write_byte(f->p[1]);
    harness_drain(f->ctx);
    assert_int_equal(f->h.reads, 0);

    spindle_enable_external(f->ctx);
    poll_until_count(f->ctx, &f->h.reads, 1, 10);
    assert_false(harness_poll(f->ctx, false));
    assert_int_equal(f->h.reads, 1);
}

static void disable_external_nests(void **state)
{
    struct fixture *f = *state;
    set_handler(f->ctx, f->p[0], true, read_cb, NULL, &f->h);
    spindle_disable_external(f->ctx);
    spindle_disable_external(f->ctx);
    write_byte(f->p[1]);

    spindle_enable_external(f->ctx); /* still disabled once */
    for (int i = 0; i < 10; i++) {
        harness_poll(f->ctx, false);
    }
    assert_int_equal(f->h.reads, 0);

    spindle_enable_external(f->ctx);
    poll_until_count(f->ctx, &f->h.reads, 1, 10);
}

static void internal_handler_dispatched_while_external_disabled(void **state)
{
    struct fixture *f = *state;
    handler ext = { .fd = f->p[0] };
    handler in = { .fd = f->q[0] };
    set_handler(f->ctx, f->p[0], true, read_cb, NULL, &ext);
    set_handler(f->ctx, f->q[0], false, read_cb, NULL, &in);
    spindle_disable_external(f->ctx);
    write_byte(f->p[1]);
    write_byte(f->q[1]);
    poll_until_count(f->ctx, &in.reads, 1, 10);
    assert_int_equal(ext.reads, 0);

    spindle_enable_external(f->ctx);
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
    struct fixture *f = *state;
    f->efd = new_eventfd();
    handler he = { .fd = f->efd };
    set_handler(f->ctx, f->p[0], true, read_cb, NULL, &f->h);
    assert_int_equal(spindle_set_fd_handler(f->ctx, f->efd, true,
                                            eventfd_read_cb, NULL,
                                            poll_false_cb, &he), 0);
    spindle_disable_external(f->ctx);
    write_byte(f->p[1]);
    assert_int_equal(eventfd_write(f->efd, 1), 0);

    harness_poll_until_timer(f->ctx, 20 * MS, 10);
    assert_int_equal(f->h.reads, 0);
    assert_int_equal(he.reads, 0);

    spindle_enable_external(f->ctx);
}

/* ------------------------------------------------------------------------
 * fds closed while registered
 */

static void closed_registered_fd_does_not_make_loop_spin(void **state)
{
    struct fixture *f = *state;
    set_handler(f->ctx, f->p[0], false, read_cb, NULL, &f->h);
    assert_false(harness_poll(f->ctx, false));
    close_end(&f->p[0]); /* without removing it */

    harness_poll_until_timer(f->ctx, 20 * MS, 10);
    assert_int_equal(f->h.reads, 0);

    remove_fd(f->ctx, f->h.fd);
}

static void closed_registered_fd_is_counted_stale_on_poll_backend(void **state)
{
    struct fixture *f = *state;
    if (harness_embedded()) {
        skip(); /* embedding moves a context from poll to epoll */
    }
    spindle_options o = { SPINDLE_BACKEND_POLL, -1, 0, 0, SPINDLE_URING_AUTO, 0 };
    f->ctx = spindle_ctx_new_opts(&o);
    assert_non_null(f->ctx);
    set_handler(f->ctx, f->p[0], false, read_cb, NULL, &f->h);
    assert_false(harness_poll(f->ctx, false));
    assert_int_equal(stats_of(f->ctx).stale_fds, 0);
    close_end(&f->p[0]);
    close_end(&f->p[1]);

    /* Found closed once, disarmed, so counted once however many
     * iterations follow. (epoll drops a closed fd by itself and never sees
     * it, hence the explicit poll back-end.) */
    for (int i = 0; i < 5; i++) {
        assert_false(harness_poll(f->ctx, false));
    }
    assert_int_equal(f->h.reads, 0);
    assert_int_equal(stats_of(f->ctx).stale_fds, 1);

    remove_fd(f->ctx, f->h.fd);
}

static void registering_reused_fd_number_after_close_works(void **state)
{
    struct fixture *f = *state;
    handler old = { .fd = f->p[0] };
    set_handler(f->ctx, f->p[0], false, read_cb, NULL, &old);
    const char *backend = spindle_backend_name(f->ctx);
    int number = f->p[0];
    close_end(&f->p[0]);
    close_end(&f->p[1]);
    assert_false(harness_poll(f->ctx, false));

    /* A new pipe whose read end has the old number. */
    harness_pipe(f->q);
    if (f->q[0] != number) {
        assert_int_equal(dup3(f->q[0], number, O_CLOEXEC), number);
        close(f->q[0]);
        f->q[0] = number;
    }
    handler cur = { .fd = f->q[0] };
    set_handler(f->ctx, f->q[0], false, read_cb2, NULL, &cur);
    write_byte(f->q[1]);
    poll_until_count(f->ctx, &cur.reads, 1, 10);
    assert_ptr_equal(cur.last_opaque, &cur);
    assert_int_equal(old.reads, 0);
    /* Handled as usual, not as a back-end failure (no fallback to poll). */
    assert_string_equal(spindle_backend_name(f->ctx), backend);
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
    struct fixture *f = *state;
    handler outer = { .fd = f->p[0], .wfd = f->q[1], .ctx = f->ctx };
    handler inner = { .fd = f->q[0], .ctx = f->ctx };
    outer.other = &inner;
    inner.other = &outer;
    set_handler(f->ctx, f->p[0], false, nest_outer_cb, NULL, &outer);
    set_handler(f->ctx, f->q[0], false, nest_inner_cb, NULL, &inner);
    write_byte(f->p[1]);
    poll_until_count(f->ctx, &outer.reads, 1, 10);

    assert_int_equal(inner.reads, 1);
    assert_true(inner.inside);          /* it ran inside the outer callback */
    assert_true(outer.nested_progress); /* and the nested call said so */
    assert_false(harness_poll(f->ctx, false));
    assert_int_equal(outer.reads, 1);
    assert_int_equal(inner.reads, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        WITH_PIPE(io_read_runs_when_readable_with_its_opaque),
        WITH_EVENTFD(io_read_runs_for_eventfd),
        WITH_PIPE(io_write_runs_when_writable_with_its_opaque),
        WITH_PIPE(io_write_does_not_run_while_pipe_is_full),
        WITH_PIPE(io_read_runs_on_hangup),
        WITH_CTX(io_read_and_io_write_run_in_the_same_iteration),
        WITH_EVENTFD(update_replaces_callbacks),
        WITH_PIPE(removal_stops_dispatch),
        WITH_PIPE(removing_unregistered_fd_returns_zero),
        WITH_PIPE(removal_after_close_returns_zero),
        WITH_CTX(registering_negative_fd_returns_ebadf),
        WITH_PIPE(registering_closed_fd_returns_ebadf),
        WITH_PIPE(updating_closed_fd_returns_ebadf),
        WITH_PIPE_WITHOUT_CTX(set_fd_handler_null_ctx_returns_einval),
        WITH_PIPE(handler_removes_itself_from_its_callback),
        WITH_TWO_PIPES(handler_removes_other_ready_handler_in_same_iteration),
        WITH_PIPE(handler_removes_itself_then_reregisters),
        WITH_CTX(many_pipes_dispatch_exactly_the_ready_ones_across_auto_switch),
        WITH_PIPE(external_handler_not_dispatched_while_disabled),
        WITH_PIPE(external_event_delivered_after_enable),
        WITH_PIPE(disable_external_nests),
        WITH_TWO_PIPES(internal_handler_dispatched_while_external_disabled),
        WITH_PIPE(loop_does_not_spin_while_external_disabled),
        WITH_PIPE(closed_registered_fd_does_not_make_loop_spin),
        WITH_PIPE_WITHOUT_CTX(
            closed_registered_fd_is_counted_stale_on_poll_backend),
        WITH_PIPE(registering_reused_fd_number_after_close_works),
        WITH_TWO_PIPES(nested_poll_from_fd_callback_dispatches_other_handler),
    };
    return RUN_TESTS(tests);
}
