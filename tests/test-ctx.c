/* Context life cycle: creation and options, argument checking, freeing a
 * context with everything still attached, and running out of fds.
 * SPDX-License-Identifier: MIT
 */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEFAULT_POLL_MAX_NS 32768
/* A maximum window far above the 1 ms waits used to grow the window. */
#define BIG_POLL_MAX_NS 200000000LL
#define MS 1000000LL

/* ------------------------------------------------------------------------
 * Helpers
 */

static const char *env_backend(void)
{
    const char *e = getenv("SPINDLE_BACKEND");
    return e ? e : "";
}

/* What an AUTO context reports right after creation in this run: io_uring
 * where the kernel allows it, unless the variable forces poll or epoll;
 * without io_uring, the variable's epoll or io_uring mean epoll, and
 * anything else starts on poll. */
static const char *auto_backend_at_creation(void)
{
    const char *e = env_backend();
    if (strcmp(e, "poll") == 0) {
        return "poll";
    }
    if (strcmp(e, "epoll") == 0) {
        return "epoll";
    }
    if (harness_io_uring_usable()) {
        return "io_uring";
    }
    return strcmp(e, "io_uring") == 0 ? "epoll" : "poll";
}

static void set_flag_cb(void *opaque)
{
    *(bool *)opaque = true;
}

static bool poll_false_cb(void *opaque)
{
    (void)opaque;
    return false;
}

static spindle_stats stats_of(const spindle_ctx *ctx)
{
    spindle_stats s;
    memset(&s, 0xa5, sizeof(s));
    assert_int_equal(spindle_get_stats(ctx, &s), 0);
    return s;
}

/* Arm a timer delay_ns ahead and run blocking iterations until it fires. */
static void wait_for_timer(spindle_ctx *ctx, int64_t delay_ns)
{
    bool fired = false;
    spindle_timer *t = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC,
                                         set_flag_cb, &fired);
    assert_non_null(t);
    spindle_timer_mod(t, spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) + delay_ns);
    harness_poll_until(ctx, &fired, 100000);
    spindle_timer_free(t);
}

/* Give ctx a non-zero polling window (docs/design.md, the iteration, step
 * 5: a blocking wait of
 * 1 ms, far under a 200 ms maximum, grows the window from 0 to 4000 ns), so
 * that a later call that wrongly restarted the window would show. */
static int64_t open_window(spindle_ctx *ctx)
{
    assert_int_equal(spindle_set_poll_params(ctx, BIG_POLL_MAX_NS, 2, 4), 0);
    for (int i = 0; i < 20 && spindle_get_poll_ns(ctx) == 0; i++) {
        wait_for_timer(ctx, MS);
    }
    int64_t w = spindle_get_poll_ns(ctx);
    assert_true(w > 0);
    return w;
}

/* ------------------------------------------------------------------------
 * Creation and options
 */

static void ctx_new_creates_context_on_expected_backend(void **state)
{
    spindle_ctx *ctx = spindle_ctx_new();
    assert_non_null(ctx);
    assert_string_equal(spindle_backend_name(ctx), auto_backend_at_creation());
    spindle_ctx_free(ctx);
}

static void ctx_new_opts_null_uses_default_options(void **state)
{
    spindle_ctx *ctx = spindle_ctx_new_opts(NULL);
    assert_non_null(ctx);
    assert_string_equal(spindle_backend_name(ctx), auto_backend_at_creation());
    spindle_stats s = stats_of(ctx);
    assert_int_equal(s.poll_max_ns, DEFAULT_POLL_MAX_NS);
    assert_int_equal(s.poll_ns, 0);
    assert_int_equal(spindle_get_poll_ns(ctx), 0);
    spindle_ctx_free(ctx);
}

/* SPINDLE_OPTIONS_INIT is what spindle_ctx_new() uses; a zeroed struct is
 * not (its poll_max_ns of 0 turns busy polling off). */
static void options_init_gives_the_defaults_and_zero_init_does_not(void **state)
{
    spindle_options o = SPINDLE_OPTIONS_INIT;
    assert_int_equal(o.backend, SPINDLE_BACKEND_AUTO);
    spindle_ctx *ctx = spindle_ctx_new_opts(&o);
    assert_non_null(ctx);
    assert_string_equal(spindle_backend_name(ctx), auto_backend_at_creation());
    assert_int_equal(stats_of(ctx).poll_max_ns, DEFAULT_POLL_MAX_NS);
    spindle_ctx_free(ctx);

    spindle_options zero;
    memset(&zero, 0, sizeof(zero));
    ctx = spindle_ctx_new_opts(&zero);
    assert_non_null(ctx);
    assert_int_equal(stats_of(ctx).poll_max_ns, 0);
    spindle_ctx_free(ctx);
}

static void ctx_new_opts_auto_backend_follows_environment(void **state)
{
    spindle_options o = { SPINDLE_BACKEND_AUTO, -1, 0, 0, SPINDLE_URING_AUTO, 0 };
    spindle_ctx *ctx = spindle_ctx_new_opts(&o);
    assert_non_null(ctx);
    assert_string_equal(spindle_backend_name(ctx), auto_backend_at_creation());
    spindle_ctx_free(ctx);
}

static void ctx_new_opts_poll_backend_reports_poll(void **state)
{
    /* An explicit back-end is not overridden by $SPINDLE_BACKEND. */
    spindle_options o = { SPINDLE_BACKEND_POLL, -1, 0, 0, SPINDLE_URING_AUTO, 0 };
    spindle_ctx *ctx = spindle_ctx_new_opts(&o);
    assert_non_null(ctx);
    assert_string_equal(spindle_backend_name(ctx), "poll");
    spindle_ctx_free(ctx);
}

static void ctx_new_opts_epoll_backend_reports_epoll(void **state)
{
    spindle_options o = { SPINDLE_BACKEND_EPOLL, -1, 0, 0, SPINDLE_URING_AUTO, 0 };
    spindle_ctx *ctx = spindle_ctx_new_opts(&o);
    assert_non_null(ctx);
    assert_string_equal(spindle_backend_name(ctx), "epoll");
    spindle_ctx_free(ctx);
}

static void ctx_new_opts_io_uring_backend_reports_io_uring_or_epoll(void **state)
{
    /* Header: io_uring where the kernel allows it, else epoll. */
    spindle_options o = { SPINDLE_BACKEND_IO_URING, -1, 0, 0, SPINDLE_URING_AUTO, 0 };
    spindle_ctx *ctx = spindle_ctx_new_opts(&o);
    assert_non_null(ctx);
    assert_string_equal(spindle_backend_name(ctx),
                        harness_io_uring_usable() ? "io_uring" : "epoll");
    spindle_ctx_free(ctx);
}

static void ctx_new_opts_rejects_negative_grow(void **state)
{
    spindle_options o = { SPINDLE_BACKEND_AUTO, -1, -1, 0, SPINDLE_URING_AUTO, 0 };
    errno = 0;
    assert_null(spindle_ctx_new_opts(&o));
    assert_int_equal(errno, EINVAL);
}

static void ctx_new_opts_rejects_negative_shrink(void **state)
{
    spindle_options o = { SPINDLE_BACKEND_AUTO, -1, 0, -2, SPINDLE_URING_AUTO, 0 };
    errno = 0;
    assert_null(spindle_ctx_new_opts(&o));
    assert_int_equal(errno, EINVAL);
}

static void ctx_new_opts_rejects_negative_spin_yield(void **state)
{
    spindle_options o = SPINDLE_OPTIONS_INIT;
    o.spin_yield_ns = -1;
    errno = 0;
    assert_null(spindle_ctx_new_opts(&o));
    assert_int_equal(errno, EINVAL);
}

static void ctx_new_opts_rejects_unknown_backend(void **state)
{
    spindle_options o = { (spindle_backend)42, -1, 0, 0, SPINDLE_URING_AUTO, 0 };
    errno = 0;
    assert_null(spindle_ctx_new_opts(&o));
    assert_int_equal(errno, EINVAL);

    o.backend = (spindle_backend)-1;
    errno = 0;
    assert_null(spindle_ctx_new_opts(&o));
    assert_int_equal(errno, EINVAL);
}

static void ctx_new_opts_rejects_unknown_uring_mode(void **state)
{
    spindle_options o = SPINDLE_OPTIONS_INIT;
    o.uring_mode = (spindle_uring_mode)3;
    errno = 0;
    assert_null(spindle_ctx_new_opts(&o));
    assert_int_equal(errno, EINVAL);
}

static void ctx_new_opts_negative_poll_max_means_default(void **state)
{
    const int64_t values[] = { -1, -12345, INT64_MIN };
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        spindle_options o = { SPINDLE_BACKEND_AUTO, values[i], 0, 0, SPINDLE_URING_AUTO, 0 };
        spindle_ctx *ctx = spindle_ctx_new_opts(&o);
        assert_non_null(ctx);
        assert_int_equal(stats_of(ctx).poll_max_ns, DEFAULT_POLL_MAX_NS);
        spindle_ctx_free(ctx);
    }
}

static void ctx_new_opts_zero_poll_max_turns_polling_off(void **state)
{
    spindle_options o = { SPINDLE_BACKEND_AUTO, 0, 0, 0, SPINDLE_URING_AUTO, 0 };
    spindle_ctx *ctx = spindle_ctx_new_opts(&o);
    assert_non_null(ctx);
    assert_int_equal(stats_of(ctx).poll_max_ns, 0);
    /* A wait far under any maximum would grow an enabled window. */
    wait_for_timer(ctx, MS);
    assert_int_equal(spindle_get_poll_ns(ctx), 0);
    spindle_ctx_free(ctx);
}

static void ctx_new_opts_keeps_given_poll_max(void **state)
{
    spindle_options o = { SPINDLE_BACKEND_AUTO, 100000, 3, 5, SPINDLE_URING_AUTO, 0 };
    spindle_ctx *ctx = spindle_ctx_new_opts(&o);
    assert_non_null(ctx);
    spindle_stats s = stats_of(ctx);
    assert_int_equal(s.poll_max_ns, 100000);
    assert_int_equal(s.poll_ns, 0);
    spindle_ctx_free(ctx);
}

/* ------------------------------------------------------------------------
 * spindle_set_poll_params
 */

static void set_poll_params_sets_the_maximum(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_poll_params(ctx, 123456, 2, 2), 0);
    assert_int_equal(stats_of(ctx).poll_max_ns, 123456);
    assert_int_equal(spindle_set_poll_params(ctx, 0, 0, 0), 0);
    assert_int_equal(stats_of(ctx).poll_max_ns, 0);
    spindle_ctx_free(ctx);
}

static void set_poll_params_rejects_null_ctx(void **state)
{
    assert_int_equal(spindle_set_poll_params(NULL, 1000, 2, 2), -EINVAL);
}

/* Call with a bad parameter set and check that neither the maximum nor the
 * (non-zero) window moved. */
static void check_rejected_params(int64_t max_ns, int64_t grow, int64_t shrink)
{
    spindle_ctx *ctx = harness_ctx_new();
    int64_t window = open_window(ctx);

    assert_int_equal(spindle_set_poll_params(ctx, max_ns, grow, shrink),
                     -EINVAL);

    spindle_stats s = stats_of(ctx);
    assert_int_equal(s.poll_max_ns, BIG_POLL_MAX_NS);
    assert_int_equal(s.poll_ns, window);
    assert_int_equal(spindle_get_poll_ns(ctx), window);
    spindle_ctx_free(ctx);
}

static void set_poll_params_rejects_negative_max_and_changes_nothing(void **state)
{
    check_rejected_params(-1, 2, 2);
}

static void set_poll_params_rejects_negative_grow_and_changes_nothing(void **state)
{
    check_rejected_params(1000, -2, 2);
}

static void set_poll_params_rejects_negative_shrink_and_changes_nothing(void **state)
{
    check_rejected_params(1000, 2, -3);
}

/* ------------------------------------------------------------------------
 * NULL handles
 */

static void get_poll_ns_rejects_null(void **state)
{
    assert_int_equal(spindle_get_poll_ns(NULL), -EINVAL);
}

/* stats.unpolled_handlers says why busy polling is off: it counts the live
 * handlers without io_poll (not the context's own wake-up), and while it is
 * not 0 poll and epoll never spin, so poll_hits and poll_misses stay put
 * even with a window open. */
static void stats_count_handlers_without_io_poll(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    int a[2], b[2];
    harness_pipe(a);
    harness_pipe(b);
    assert_int_equal(stats_of(ctx).unpolled_handlers, 0);

    int64_t window = open_window(ctx);
    assert_true(window > 0);
    assert_int_equal(spindle_set_fd_handler(ctx, a[0], false, set_flag_cb,
                                            NULL, NULL, NULL), 0);
    assert_int_equal(spindle_set_fd_handler(ctx, b[0], false, set_flag_cb,
                                            NULL, poll_false_cb, NULL), 0);
    assert_int_equal(stats_of(ctx).unpolled_handlers, 1);

    spindle_stats before = stats_of(ctx);
    for (int i = 0; i < 5; i++) {
        wait_for_timer(ctx, MS / 10);
    }
    spindle_stats after = stats_of(ctx);
    if (strcmp(spindle_backend_name(ctx), "io_uring") == 0) {
        /* io_uring sees a's fd from user space: it spins all the same. */
        assert_true(after.poll_misses > before.poll_misses);
    } else {
        assert_int_equal(after.poll_hits, before.poll_hits);
        assert_int_equal(after.poll_misses, before.poll_misses);
    }

    /* Giving the handler an io_poll makes every handler pollable. */
    assert_int_equal(spindle_set_fd_handler(ctx, a[0], false, set_flag_cb,
                                            NULL, poll_false_cb, NULL), 0);
    assert_int_equal(stats_of(ctx).unpolled_handlers, 0);
    assert_int_equal(spindle_set_fd_handler(ctx, a[0], false, set_flag_cb,
                                            NULL, NULL, NULL), 0);
    assert_int_equal(stats_of(ctx).unpolled_handlers, 1);
    assert_int_equal(spindle_set_fd_handler(ctx, a[0], false, NULL, NULL, NULL,
                                            NULL), 0);
    assert_int_equal(stats_of(ctx).unpolled_handlers, 0);

    spindle_ctx_free(ctx);
    close(a[0]);
    close(a[1]);
    close(b[0]);
    close(b[1]);
}

static void get_stats_rejects_null_arguments(void **state)
{
    spindle_stats s;
    assert_int_equal(spindle_get_stats(NULL, &s), -EINVAL);
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_get_stats(ctx, NULL), -EINVAL);
    spindle_ctx_free(ctx);
}

static void backend_name_of_null_is_null(void **state)
{
    assert_null(spindle_backend_name(NULL));
}

static void poll_null_ctx_fails_with_einval(void **state)
{
    errno = 0;
    assert_false(spindle_poll(NULL, false));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_false(spindle_poll(NULL, true));
    assert_int_equal(errno, EINVAL);
}

static void compute_timeout_rejects_null(void **state)
{
    assert_int_equal(spindle_compute_timeout(NULL), -EINVAL);
}

/* These two fail by crashing. */
static void notify_ignores_null(void **state)
{
    spindle_notify(NULL);
}

static void ctx_free_ignores_null(void **state)
{
    spindle_ctx_free(NULL);
}

/* ------------------------------------------------------------------------
 * Iterations on an empty context
 */

static void compute_timeout_of_fresh_context_is_infinite(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_compute_timeout(ctx), -1);
    spindle_ctx_free(ctx);
}

static void nonblocking_poll_with_nothing_registered_returns_false(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    for (int i = 0; i < 10; i++) {
        assert_false(spindle_poll(ctx, false));
    }
    assert_int_equal(stats_of(ctx).iterations, 10);
    spindle_ctx_free(ctx);
}

static void nonblocking_poll_never_blocks(void **state)
{
    /* Something to wait for, none of it ready: an fd nobody writes (with
     * and without io_poll) and a timer 30 s ahead. An iteration that slept
     * would either hang (the watchdog fails the test) or fire the timer. */
    int p[2];
    harness_pipe(p);
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    assert_true(efd >= 0);
    unsigned reads = 0;
    bool fired = false;

    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], false, harness_count_cb,
                                            NULL, NULL, &reads), 0);
    assert_int_equal(spindle_set_fd_handler(ctx, efd, false, harness_count_cb,
                                            NULL, poll_false_cb, &reads), 0);
    spindle_timer *t = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC,
                                         set_flag_cb, &fired);
    assert_non_null(t);
    spindle_timer_mod(t, spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) + 30000 * MS);
    harness_drain(ctx); /* a wake-up caused by arming is not a sleep */

    uint64_t before = stats_of(ctx).blocking_waits;
    for (int i = 0; i < 100; i++) {
        assert_false(spindle_poll(ctx, false));
    }
    assert_false(fired);
    assert_int_equal(reads, 0);
    assert_int_equal(stats_of(ctx).blocking_waits, before);

    spindle_timer_free(t);
    spindle_ctx_free(ctx);
    close(p[0]);
    close(p[1]);
    close(efd);
}

static void notify_before_blocking_poll_is_not_lost(void **state)
{
    /* Nothing registered, no timer: only the pending wake-up can end this
     * blocking iteration (a lost one hangs until the watchdog fires). The
     * context's own wake-up is not progress. */
    spindle_ctx *ctx = harness_ctx_new();
    spindle_notify(ctx);
    assert_false(spindle_poll(ctx, true));
    spindle_ctx_free(ctx);
}

/* ------------------------------------------------------------------------
 * spindle_ctx_free with everything attached
 */

static void ctx_free_releases_attachments_and_keeps_user_fds_open(void **state)
{
    int p[2];
    harness_pipe(p);
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    assert_true(efd >= 0);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK |
                                SOCK_CLOEXEC, 0, sv), 0);
    spindle_notifier *n = spindle_notifier_new(false);
    assert_non_null(n);
    int nfd = spindle_notifier_fd(n);
    assert_true(nfd >= 0);
    unsigned calls = 0;

    spindle_ctx *ctx = harness_ctx_new();
    assert_int_equal(spindle_set_fd_handler(ctx, p[0], false, harness_count_cb,
                                            NULL, NULL, &calls), 0);
    assert_int_equal(spindle_set_fd_handler(ctx, efd, true, harness_count_cb,
                                            NULL, poll_false_cb, &calls), 0);
    spindle_set_fd_poll(ctx, efd, harness_count_cb, harness_count_cb);
    /* One quiet iteration so that the context has really run. */
    assert_false(spindle_poll(ctx, false));
    calls = 0;

    assert_int_equal(spindle_set_fd_handler(ctx, sv[0], false, harness_count_cb,
                                            harness_count_cb, NULL, &calls), 0);
    assert_int_equal(spindle_set_event_notifier(ctx, n, false, harness_count_cb,
                                                poll_false_cb, &calls), 0);
    spindle_bh *scheduled = spindle_bh_new(ctx, harness_count_cb, &calls);
    spindle_bh *idle = spindle_bh_new(ctx, harness_count_cb, &calls);
    spindle_bh *unscheduled = spindle_bh_new(ctx, harness_count_cb, &calls);
    assert_non_null(scheduled);
    assert_non_null(idle);
    assert_non_null(unscheduled);
    spindle_bh_schedule(scheduled);
    spindle_bh_schedule_idle(idle);
    assert_int_equal(spindle_bh_oneshot(ctx, harness_count_cb, &calls), 0);

    int64_t now = spindle_now_ns(SPINDLE_CLOCK_MONOTONIC);
    spindle_timer *late = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC,
                                            harness_count_cb, &calls);
    spindle_timer *due = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC,
                                           harness_count_cb, &calls);
    spindle_timer *idle_timer = spindle_timer_new(ctx, SPINDLE_CLOCK_REALTIME,
                                                  harness_count_cb, &calls);
    assert_non_null(late);
    assert_non_null(due);
    assert_non_null(idle_timer);
    spindle_timer_mod(late, now + 60000 * MS);
    spindle_timer_mod(due, now - 1);

    /* Pending readiness everywhere. */
    assert_int_equal(write(p[1], "x", 1), 1);
    assert_int_equal(eventfd_write(efd, 1), 0);
    assert_int_equal(spindle_notifier_set(n), 0);
    spindle_disable_external(ctx);

    spindle_ctx_free(ctx);

    assert_int_equal(calls, 0); /* no callback runs */
    const int fds[] = { p[0], p[1], efd, sv[0], sv[1], nfd };
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
        assert_true(fcntl(fds[i], F_GETFD) != -1);
    }
    /* The notifier belongs to the user and still works. */
    assert_int_equal(spindle_notifier_fd(n), nfd);
    assert_true(spindle_notifier_test_and_clear(n));
    assert_false(spindle_notifier_test_and_clear(n));
    spindle_notifier_free(n);

    close(p[0]);
    close(p[1]);
    close(efd);
    close(sv[0]);
    close(sv[1]);
}

/* The number of fds this process has open. */
static int open_fd_count(void)
{
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (e->d_name[0] != '.') {
            n++;
        }
    }
    closedir(d);
    return n - 1; /* the directory's own fd */
}

static void ctx_free_closes_the_contexts_own_fds(void **state)
{
    /* With 70 fds registered an AUTO context has switched to epoll, so
     * every kind of internal fd exists by the time it is freed. */
    enum { N = 70 };
    int p[N][2];
    int before = open_fd_count();
    spindle_ctx *ctx = harness_ctx_new();
    unsigned calls = 0;
    for (int i = 0; i < N; i++) {
        harness_pipe(p[i]);
        assert_int_equal(spindle_set_fd_handler(ctx, p[i][0], false,
                                                harness_count_cb, NULL, NULL,
                                                &calls), 0);
    }
    assert_false(spindle_poll(ctx, false));
    spindle_ctx_free(ctx);
    for (int i = 0; i < N; i++) {
        close(p[i][0]);
        close(p[i][1]);
    }
    assert_int_equal(open_fd_count(), before);
}

/* ------------------------------------------------------------------------
 * Running out of file descriptors
 */

enum { MAX_FILLERS = 1024, MAX_FREED = 8 };

/* How many more fds this process can open now; leaves the table as found. */
static int count_free_fds(int base)
{
    int got[64];
    int n = 0;
    while (n < 64) {
        int fd = fcntl(base, F_DUPFD_CLOEXEC, 0);
        if (fd < 0) {
            break;
        }
        got[n++] = fd;
    }
    for (int i = 0; i < n; i++) {
        close(got[i]);
    }
    return n;
}

/* Runs in a forked child (its fd table is private) and reports through its
 * exit status: 0 for success, otherwise the number of the failed check. No
 * cmocka assertion here: a failure must not unwind into the parent's
 * runner. */
static int emfile_child(void)
{
    static int fillers[MAX_FILLERS];
    struct rlimit rl;

    alarm(60);
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        return 2;
    }
    if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > 256) {
        rl.rlim_cur = 256;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            return 3;
        }
    }
    int base = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (base < 0) {
        return 4;
    }
    int n = 0;
    for (;;) {
        int fd = fcntl(base, F_DUPFD_CLOEXEC, 0);
        if (fd < 0) {
            if (errno != EMFILE) {
                return 5;
            }
            break;
        }
        if (n == MAX_FILLERS) {
            return 6;
        }
        fillers[n++] = fd;
    }

    /* The table is full: creation fails cleanly. */
    errno = 0;
    spindle_ctx *ctx = spindle_ctx_new();
    if (ctx) {
        return 7;
    }
    if (errno != EMFILE && errno != ENFILE) {
        return 8;
    }
    if (count_free_fds(base) != 0) {
        return 9;
    }

    /* Free one fd at a time: each failure leaves every free fd free (no
     * half-built context keeps one), until there is room for a context. */
    int freed = 0;
    while (!ctx) {
        if (freed == MAX_FREED || n == 0) {
            return 10;
        }
        close(fillers[--n]);
        freed++;
        errno = 0;
        ctx = spindle_ctx_new();
        if (!ctx) {
            if (errno != EMFILE && errno != ENFILE) {
                return 11;
            }
            if (count_free_fds(base) != freed) {
                return 12;
            }
        }
    }
    if (spindle_poll(ctx, false)) {
        return 13;
    }
    spindle_ctx_free(ctx);
    if (count_free_fds(base) != freed) { /* freeing returns every fd */
        return 14;
    }

    /* With the table back to normal, a context is created and works. */
    while (n > 0) {
        close(fillers[--n]);
    }
    ctx = spindle_ctx_new();
    if (!ctx) {
        return 15;
    }
    unsigned calls = 0;
    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &calls);
    if (!bh) {
        return 16;
    }
    spindle_bh_schedule(bh);
    for (int i = 0; i < 10 && calls == 0; i++) {
        spindle_poll(ctx, true);
    }
    if (calls != 1) {
        return 17;
    }
    spindle_bh_delete(bh);
    spindle_ctx_free(ctx);
    close(base);
    return 0;
}

static void ctx_new_fails_with_emfile_and_recovers(void **state)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* exit(), not _exit(): LeakSanitizer checks the child too. */
        exit(emfile_child());
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST(ctx_new_creates_context_on_expected_backend),
        TEST(ctx_new_opts_null_uses_default_options),
        TEST(options_init_gives_the_defaults_and_zero_init_does_not),
        TEST(ctx_new_opts_auto_backend_follows_environment),
        TEST(ctx_new_opts_poll_backend_reports_poll),
        TEST(ctx_new_opts_epoll_backend_reports_epoll),
        TEST(ctx_new_opts_io_uring_backend_reports_io_uring_or_epoll),
        TEST(ctx_new_opts_rejects_negative_grow),
        TEST(ctx_new_opts_rejects_negative_shrink),
        TEST(ctx_new_opts_rejects_negative_spin_yield),
        TEST(ctx_new_opts_rejects_unknown_backend),
        TEST(ctx_new_opts_rejects_unknown_uring_mode),
        TEST(ctx_new_opts_negative_poll_max_means_default),
        TEST(ctx_new_opts_zero_poll_max_turns_polling_off),
        TEST(ctx_new_opts_keeps_given_poll_max),
        TEST(set_poll_params_sets_the_maximum),
        TEST(set_poll_params_rejects_null_ctx),
        TEST(set_poll_params_rejects_negative_max_and_changes_nothing),
        TEST(set_poll_params_rejects_negative_grow_and_changes_nothing),
        TEST(set_poll_params_rejects_negative_shrink_and_changes_nothing),
        TEST(get_poll_ns_rejects_null),
        TEST(get_stats_rejects_null_arguments),
        TEST(stats_count_handlers_without_io_poll),
        TEST(backend_name_of_null_is_null),
        TEST(poll_null_ctx_fails_with_einval),
        TEST(compute_timeout_rejects_null),
        TEST(notify_ignores_null),
        TEST(ctx_free_ignores_null),
        TEST(compute_timeout_of_fresh_context_is_infinite),
        TEST(nonblocking_poll_with_nothing_registered_returns_false),
        TEST(nonblocking_poll_never_blocks),
        TEST(notify_before_blocking_poll_is_not_lost),
        TEST(ctx_free_releases_attachments_and_keeps_user_fds_open),
        TEST(ctx_free_closes_the_contexts_own_fds),
        TEST(ctx_new_fails_with_emfile_and_recovers),
    };
    return RUN_TESTS(tests);
}
