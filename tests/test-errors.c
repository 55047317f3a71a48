/* Bad input that the other unit tests do not cover: each test checks one
 * row of docs/errors.md.
 * SPDX-License-Identifier: MIT
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NPIPES 64

typedef struct pipe_ev {
    int fd[2];
    unsigned reads;
} pipe_ev;

static void pipe_read_cb(void *opaque)
{
    pipe_ev *p = opaque;
    char buf[64];
    while (read(p->fd[0], buf, sizeof(buf)) > 0) {
        /* drain */
    }
    p->reads++;
}

static void poll_until(spindle_ctx *ctx, const unsigned *count,
                       unsigned target)
{
    for (unsigned i = 0; *count < target; i++) {
        assert_true(i < 100);
        spindle_poll(ctx, true);
    }
}

static void never_cb(void *opaque)
{
    (void)opaque;
    fail_msg("a callback that must not run ran");
}

/* ------------------------------------------------------------------------
 * Context
 */

/* $SPINDLE_BACKEND with an unknown value is ignored: AUTO takes io_uring
 * where the kernel allows it, and otherwise starts on poll and moves to
 * epoll at the 64th fd. */
static void unknown_backend_variable_is_ignored(void **state)
{
    char *saved = getenv("SPINDLE_BACKEND");
    saved = saved ? strdup(saved) : NULL;
    setenv("SPINDLE_BACKEND", "kqueue", 1);
    spindle_ctx *ctx = spindle_ctx_new();
    if (saved) {
        setenv("SPINDLE_BACKEND", saved, 1);
        free(saved);
    } else {
        unsetenv("SPINDLE_BACKEND");
    }
    assert_non_null(ctx);
    bool ring = harness_io_uring_usable();
    assert_string_equal(spindle_backend_name(ctx), ring ? "io_uring" : "poll");

    pipe_ev p[NPIPES];
    for (int i = 0; i < NPIPES; i++) {
        harness_pipe(p[i].fd);
        p[i].reads = 0;
        assert_int_equal(spindle_set_fd_handler(ctx, p[i].fd[0], false,
                                                pipe_read_cb, NULL, NULL,
                                                &p[i]), 0);
    }
    assert_string_equal(spindle_backend_name(ctx), ring ? "io_uring" : "epoll");

    spindle_ctx_free(ctx);
    for (int i = 0; i < NPIPES; i++) {
        close(p[i].fd[0]);
        close(p[i].fd[1]);
    }
}

/* ------------------------------------------------------------------------
 * fd handlers
 */

static void removing_negative_fd_returns_zero(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, -1, false, NULL, NULL, NULL,
                                            NULL), 0);
    assert_false(spindle_poll(ctx, false));
    spindle_ctx_free(ctx);
}

/* epoll refuses regular files (EPERM): the registration succeeds, the
 * context moves to poll for good, and the file's handler runs (a regular
 * file is always readable). */
static void regular_file_on_epoll_falls_back_to_poll(void **state)
{
    spindle_options o = { .backend = SPINDLE_BACKEND_EPOLL, .poll_max_ns = -1 };
    spindle_ctx *ctx = spindle_ctx_new_opts(&o);
    assert_non_null(ctx);
    assert_string_equal(spindle_backend_name(ctx), "epoll");

    FILE *f = tmpfile();
    assert_non_null(f);
    pipe_ev ev = { { fileno(f), -1 }, 0 };
    assert_int_equal(spindle_set_fd_handler(ctx, fileno(f), false,
                                            pipe_read_cb, NULL, NULL, &ev), 0);
    assert_string_equal(spindle_backend_name(ctx), "poll");
    poll_until(ctx, &ev.reads, 1);

    assert_int_equal(spindle_set_fd_handler(ctx, fileno(f), false, NULL, NULL,
                                            NULL, NULL), 0);
    spindle_ctx_free(ctx);
    fclose(f);
}

/* spindle_set_fd_poll() on a NULL context, a negative fd or an fd that is
 * not registered does nothing: the registered handler keeps working. */
static void set_fd_poll_with_bad_arguments_is_ignored(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    pipe_ev p, other;
    harness_pipe(p.fd);
    harness_pipe(other.fd);
    p.reads = 0;
    assert_int_equal(spindle_set_fd_handler(ctx, p.fd[0], false, pipe_read_cb,
                                            NULL, NULL, &p), 0);

    spindle_set_fd_poll(NULL, p.fd[0], never_cb, never_cb);
    spindle_set_fd_poll(ctx, -1, never_cb, never_cb);
    spindle_set_fd_poll(ctx, other.fd[0], never_cb, never_cb);
    spindle_set_event_notifier_poll(NULL, NULL, never_cb, never_cb);
    spindle_set_event_notifier_poll(ctx, NULL, never_cb, never_cb);

    assert_int_equal(write(p.fd[1], "x", 1), 1);
    poll_until(ctx, &p.reads, 1);
    spindle_ctx_free(ctx);
    close(p.fd[0]);
    close(p.fd[1]);
    close(other.fd[0]);
    close(other.fd[1]);
}

static void external_disable_and_enable_ignore_null(void **state)
{
    spindle_disable_external(NULL);
    spindle_enable_external(NULL);
    /* Nothing to observe but that the calls return. */
}

/* An enable without a matching disable is ignored: the count does not go
 * below zero, so the next disable still holds external handlers back. */
static void unbalanced_enable_external_is_ignored(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    pipe_ev p;
    harness_pipe(p.fd);
    p.reads = 0;
    assert_int_equal(spindle_set_fd_handler(ctx, p.fd[0], true, pipe_read_cb,
                                            NULL, NULL, &p), 0);

    spindle_enable_external(ctx);
    spindle_disable_external(ctx);
    assert_int_equal(write(p.fd[1], "x", 1), 1);
    harness_drain(ctx);
    assert_int_equal(p.reads, 0);

    spindle_enable_external(ctx);
    poll_until(ctx, &p.reads, 1);
    spindle_ctx_free(ctx);
    close(p.fd[0]);
    close(p.fd[1]);
}

/* ------------------------------------------------------------------------
 * Timers
 */

static void timer_new_with_negative_clock_fails_with_einval(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    unsigned n = 0;
    errno = 0;
    assert_null(spindle_timer_new(ctx, (spindle_clock)-1, harness_count_cb,
                                  &n));
    assert_int_equal(errno, EINVAL);
    spindle_ctx_free(ctx);
}

/* A negative deadline is a deadline in the past: the timer fires in the
 * next iteration. */
static void timer_with_negative_deadline_fires_in_next_iteration(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    unsigned fired = 0;
    spindle_timer *t = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC,
                                         harness_count_cb, &fired);
    assert_non_null(t);
    spindle_timer_mod(t, -5);
    assert_true(spindle_poll(ctx, false));
    assert_int_equal(fired, 1);
    harness_drain(ctx);
    assert_int_equal(fired, 1);
    spindle_ctx_free(ctx);
}

/* ... and until it has fired it is armed: pending, with a deadline that is
 * not the "not armed" value -1. */
static void timer_with_negative_deadline_is_pending_until_it_fires(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    unsigned fired = 0;
    spindle_timer *t = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC,
                                         harness_count_cb, &fired);
    assert_non_null(t);
    spindle_timer_mod(t, -5);
    bool pending = spindle_timer_pending(t);
    int64_t expire = spindle_timer_expire_ns(t);
    harness_drain(ctx);
    spindle_ctx_free(ctx);
    assert_true(pending);
    assert_true(expire != -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST(unknown_backend_variable_is_ignored),
        TEST(removing_negative_fd_returns_zero),
        TEST(regular_file_on_epoll_falls_back_to_poll),
        TEST(set_fd_poll_with_bad_arguments_is_ignored),
        TEST(external_disable_and_enable_ignore_null),
        TEST(unbalanced_enable_external_is_ignored),
        TEST(timer_new_with_negative_clock_fails_with_einval),
        TEST(timer_with_negative_deadline_fires_in_next_iteration),
        TEST(timer_with_negative_deadline_is_pending_until_it_fires),
    };
    return RUN_TESTS(tests);
}
