/* SPDX-License-Identifier: MIT */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void watchdog_fired(int sig)
{
    static const char msg[] = "\nwatchdog: the test above hung; failing\n";
    (void)sig;
    if (write(STDERR_FILENO, msg, sizeof(msg) - 1) < 0) {
        /* nothing more to do: we are exiting anyway */
    }
    _exit(124);
}

int harness_watchdog_arm(void **state)
{
    (void)state;
    unsigned seconds = 60;
    const char *env = getenv("SPINDLE_TEST_WATCHDOG_S");
    if (env && atoi(env) > 0) {
        seconds = (unsigned)atoi(env);
    }
    signal(SIGALRM, watchdog_fired);
    alarm(seconds);
    return 0;
}

int harness_watchdog_disarm(void **state)
{
    (void)state;
    alarm(0);
    return 0;
}

void *harness_fixture_new(void **state, size_t size)
{
    harness_watchdog_arm(state);
    void *f = calloc(1, size);
    assert_non_null(f);
    *state = f;
    return f;
}

void harness_pipe(int fds[2])
{
    assert_int_equal(pipe2(fds, O_NONBLOCK | O_CLOEXEC), 0);
}

spindle_ctx *harness_ctx_new(void)
{
    spindle_ctx *ctx = spindle_ctx_new();
    assert_non_null(ctx);
    if (harness_embedded()) {
        /* As a host does when it takes the context in: from here on the
         * test sees the back-end the context will run on. */
        assert_true(spindle_get_fd(ctx) >= 0);
    }
    return ctx;
}

bool harness_embedded(void)
{
    const char *d = getenv("SPINDLE_TEST_DRIVER");
    return d && strcmp(d, "embed") == 0;
}

/* A host loop's iteration around one context. */
static bool embedded_iteration(spindle_ctx *ctx, bool blocking)
{
    int fd = spindle_get_fd(ctx);
    assert_true(fd >= 0);
    int64_t ns = spindle_prepare(ctx);
    assert_true(ns >= -1);
    if (!blocking) {
        /* A host that looks without sleeping, then runs what is ready (as
         * spindle_poll(ctx, false) does, io_poll calls included). */
        struct pollfd p = { .fd = fd, .events = POLLIN };
        assert_true(poll(&p, 1, 0) >= 0);
        return spindle_dispatch(ctx);
    }
    struct pollfd p = { .fd = fd, .events = POLLIN };
    struct timespec ts = { ns / 1000000000, ns % 1000000000 };
    int r = ppoll(&p, 1, ns < 0 ? NULL : &ts, NULL);
    assert_true(r >= 0 || errno == EINTR);
    if (!spindle_check(ctx, r > 0 && (p.revents & POLLIN))) {
        return false;
    }
    return spindle_dispatch(ctx);
}

bool harness_poll(spindle_ctx *ctx, bool blocking)
{
    if (harness_embedded()) {
        return embedded_iteration(ctx, blocking);
    }
    return spindle_poll(ctx, blocking);
}

unsigned harness_poll_until(spindle_ctx *ctx, const volatile bool *flag,
                            unsigned max_iterations)
{
    unsigned i = 0;
    while (!*flag) {
        assert_true(i < max_iterations);
        harness_poll(ctx, true);
        i++;
    }
    return i;
}

static void set_flag(void *opaque)
{
    *(bool *)opaque = true;
}

unsigned harness_poll_until_timer(spindle_ctx *ctx, int64_t delay_ns,
                                  unsigned max_iterations)
{
    bool fired = false;
    spindle_timer *t = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC,
                                         set_flag, &fired);
    assert_non_null(t);
    spindle_timer_mod(t, spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) + delay_ns);
    unsigned n = harness_poll_until(ctx, &fired, max_iterations);
    spindle_timer_free(t);
    return n;
}

unsigned harness_drain(spindle_ctx *ctx)
{
    unsigned n = 0;
    while (harness_poll(ctx, false)) {
        n++;
    }
    return n;
}

void harness_count_cb(void *opaque)
{
    (*(unsigned *)opaque)++;
}

int harness_ctx_setup(void **state)
{
    harness_watchdog_arm(state);
    /* As every other test's context: embedded runs take it in first. */
    *state = harness_ctx_new();
    return 0;
}

int harness_ctx_teardown(void **state)
{
    spindle_ctx_free(*state);
    return harness_watchdog_disarm(state);
}

uint64_t harness_rng(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * UINT64_C(2685821657736338717);
}

bool harness_io_uring_usable(void)
{
    static int usable = -1;
    if (usable < 0) {
        spindle_options o = { .backend = SPINDLE_BACKEND_IO_URING,
                              .poll_max_ns = -1 };
        spindle_ctx *ctx = spindle_ctx_new_opts(&o);
        usable = ctx && strcmp(spindle_backend_name(ctx), "io_uring") == 0;
        spindle_ctx_free(ctx);
    }
    return usable;
}

void harness_require_backend(void)
{
    /* Under valgrind (make check-valgrind), AUTO means epoll: valgrind 3.19
     * keeps its lock through io_uring_enter, so a thread that should wake a
     * loop asleep in a ring would never run. */
    const char *no_ring = getenv("SPINDLE_TEST_NO_RING");
    const char *b = getenv("SPINDLE_BACKEND");
    if (no_ring && *no_ring && (!b || !*b)) {
        setenv("SPINDLE_BACKEND", "epoll", 1);
    }
    const char *e = getenv("SPINDLE_BACKEND");
    if (e && strcmp(e, "io_uring") == 0 && !harness_io_uring_usable()) {
        fprintf(stderr, "SKIPPED: SPINDLE_BACKEND=io_uring, but this kernel "
                        "refuses io_uring (or spindle was built without "
                        "liburing): contexts fall back to epoll, so this run "
                        "would test nothing new\n");
        exit(77);
    }
}
