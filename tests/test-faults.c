/* Fault injection: every allocation, fd creation and epoll_ctl that a public
 * operation makes is made to fail in turn, and the operation must give a
 * clean error (or the documented fallback to poll), leak nothing (memory:
 * LeakSanitizer in the 'fault' make configuration; fds: counted here) and
 * leave the context usable.
 * SPDX-License-Identifier: MIT
 *
 * Only built with -Dfault_injection=true (suite 'fault'). Each scenario is
 * a function run(kind, n) that sets up with no fault armed, arms the nth
 * operation of `kind`, runs the operation under test, reads how many
 * operations of that kind ran, disarms, then checks the outcome and that
 * the context still works. walk() runs it for n = 1, 2, ... until the
 * scenario has fewer than n operations of that kind (no nth failure point).
 */
#include "harness.h"
#include "fault-hook.h"

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MS 1000000LL
#define NKINDS SPINDLE_FAULT_KINDS

static const char *const kind_name[NKINDS] = {
    [SPINDLE_FAULT_ALLOC] = "alloc",
    [SPINDLE_FAULT_FD] = "fd",
    [SPINDLE_FAULT_EPOLL_CTL] = "epoll_ctl",
    [SPINDLE_FAULT_IO_URING] = "io_uring",
};

static unsigned long total_points;

/* ------------------------------------------------------------------------
 * Helpers
 */

/* Open fds of this process (the directory stream's own fd included, the
 * same way every time). */
static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    int n = 0;
    while (readdir(d)) {
        n++;
    }
    closedir(d);
    return n;
}

/* The back-end a context created with `b` gets when nothing fails, and
 * the ones it may fall back to when a part of its setup fails: a refused
 * ring means epoll (IO_URING) or poll (AUTO); a failed epoll means poll. */
static const char *backend_expected(spindle_backend b, const char **fallback1,
                                    const char **fallback2)
{
    const char *e = getenv("SPINDLE_BACKEND");
    if (b == SPINDLE_BACKEND_AUTO && e) {
        b = !strcmp(e, "poll")       ? SPINDLE_BACKEND_POLL
            : !strcmp(e, "epoll")    ? SPINDLE_BACKEND_EPOLL
            : !strcmp(e, "io_uring") ? SPINDLE_BACKEND_IO_URING
                                     : SPINDLE_BACKEND_AUTO;
    }
    bool ring = harness_io_uring_usable();
    *fallback1 = *fallback2 = NULL;
    switch (b) {
    case SPINDLE_BACKEND_POLL:
        return "poll";
    case SPINDLE_BACKEND_EPOLL:
        *fallback1 = "poll";
        return "epoll";
    case SPINDLE_BACKEND_IO_URING:
        if (!ring) {
            *fallback1 = "poll";
            return "epoll";
        }
        *fallback1 = "epoll";
        *fallback2 = "poll";
        return "io_uring";
    default:
        *fallback1 = ring ? "poll" : NULL;
        return ring ? "io_uring" : "poll";
    }
}

/* An AUTO context that the kernel's refusal of io_uring (forced through
 * the fault hook) leaves on poll, as on a kernel without io_uring. */
static spindle_ctx *ctx_new_auto_without_ring(void)
{
    spindle_options o = { .backend = SPINDLE_BACKEND_AUTO, .poll_max_ns = -1 };
    spindle_fault_arm(SPINDLE_FAULT_IO_URING, 1);
    spindle_ctx *ctx = spindle_ctx_new_opts(&o);
    spindle_fault_arm(SPINDLE_FAULT_IO_URING, 0);
    assert_non_null(ctx);
    assert_string_equal(spindle_backend_name(ctx), "poll");
    return ctx;
}

/* The errno a failure of this kind must surface as. */
static int kind_errno(enum spindle_fault_kind kind)
{
    return kind == SPINDLE_FAULT_FD ? EMFILE : ENOMEM;
}

/* The nth operation of kind fails; the scenario returns
 * spindle_fault_seen(kind), read right after the operation under test. */
typedef unsigned long scenario_fn(enum spindle_fault_kind kind,
                                  unsigned long n);

static void walk(const char *name, scenario_fn *run)
{
    unsigned long points[NKINDS] = { 0 }, sum = 0;
    for (int k = 0; k < NKINDS; k++) {
        for (unsigned long n = 1;; n++) {
            assert_true(n < 100000); /* a scenario that never ends */
            int fds = count_fds();
            unsigned long seen = run((enum spindle_fault_kind)k, n);
            /* Whatever failed, every fd the scenario opened is closed. */
            assert_int_equal(count_fds(), fds);
            if (seen < n) {
                break;
            }
            points[k]++;
        }
        sum += points[k];
    }
    print_message("fault points: %-34s %s %lu, %s %lu, %s %lu, %s %lu: "
                  "%lu\n", name, kind_name[0], points[0], kind_name[1],
                  points[1], kind_name[2], points[2], kind_name[3], points[3],
                  sum);
    total_points += sum;
}

/* A pipe and a read handler on its read end (or a socketpair, whose end
 * fd[0] also has a write handler: see sock_open). */
typedef struct pipe_ev {
    int fd[2];
    unsigned reads;
    unsigned writes;
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

static void pipe_open(pipe_ev *p)
{
    harness_pipe(p->fd);
    p->reads = 0;
    p->writes = 0;
}

static void pipe_close(pipe_ev *p)
{
    close(p->fd[0]);
    close(p->fd[1]);
}

static void pipe_poke(pipe_ev *p)
{
    assert_int_equal(write(p->fd[1], "x", 1), 1);
}

static int pipe_register(spindle_ctx *ctx, pipe_ev *p)
{
    return spindle_set_fd_handler(ctx, p->fd[0], false, pipe_read_cb, NULL,
                                  NULL, p);
}

/* Blocking iterations until *count reaches target (a bounded number). */
static void poll_until(spindle_ctx *ctx, const unsigned *count,
                       unsigned target)
{
    for (unsigned i = 0; *count < target; i++) {
        assert_true(i < 100);
        spindle_poll(ctx, true);
    }
}

/* Non-blocking iterations until one makes no progress. */
static void drain(spindle_ctx *ctx)
{
    for (unsigned i = 0; spindle_poll(ctx, false); i++) {
        assert_true(i < 1000);
    }
}

/* The context works: a bottom half runs, a pipe is registered and
 * dispatched, a timer fires, and the back-end did not change meanwhile. */
static void assert_usable(spindle_ctx *ctx)
{
    const char *backend = spindle_backend_name(ctx);
    assert_non_null(backend);

    unsigned ran = 0;
    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &ran);
    assert_non_null(bh);
    spindle_bh_schedule(bh);
    poll_until(ctx, &ran, 1);
    spindle_bh_delete(bh);

    pipe_ev p;
    pipe_open(&p);
    assert_int_equal(pipe_register(ctx, &p), 0);
    pipe_poke(&p);
    poll_until(ctx, &p.reads, 1);
    assert_int_equal(spindle_set_fd_handler(ctx, p.fd[0], false, NULL, NULL,
                                            NULL, NULL), 0);
    pipe_close(&p);

    unsigned fired = 0;
    spindle_timer *t = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC,
                                         harness_count_cb, &fired);
    assert_non_null(t);
    spindle_timer_mod(t, spindle_now_ns(SPINDLE_CLOCK_MONOTONIC));
    poll_until(ctx, &fired, 1);
    spindle_timer_free(t);

    assert_string_equal(spindle_backend_name(ctx), backend);
}

/* ------------------------------------------------------------------------
 * Context creation
 */

/* AUTO: spindle_ctx_new() (back-end from $SPINDLE_BACKEND). */
static spindle_backend create_backend;

static unsigned long run_ctx_new(enum spindle_fault_kind kind,
                                 unsigned long n)
{
    spindle_options o = { .backend = create_backend, .poll_max_ns = -1 };
    const char *fb1, *fb2;
    const char *want = backend_expected(create_backend, &fb1, &fb2);

    spindle_fault_arm(kind, n);
    spindle_ctx *ctx = create_backend == SPINDLE_BACKEND_AUTO
                           ? spindle_ctx_new()
                           : spindle_ctx_new_opts(&o);
    int err = errno;
    unsigned long seen = spindle_fault_seen(kind);
    spindle_fault_arm(kind, 0);

    if (seen >= n) {
        if (!ctx) {
            assert_int_equal(err, kind_errno(kind));
        } else {
            /* The failures a context survives: the ring's or epoll's
             * setup, which fall back. */
            const char *got = spindle_backend_name(ctx);
            if (strcmp(got, want) != 0) {
                assert_true((fb1 && !strcmp(got, fb1)) ||
                            (fb2 && !strcmp(got, fb2)));
            }
        }
    } else {
        assert_non_null(ctx);
        assert_string_equal(spindle_backend_name(ctx), want);
    }
    if (!ctx) {
        /* Nothing was left broken: the next creation works. */
        ctx = spindle_ctx_new_opts(&o);
        assert_non_null(ctx);
    }
    assert_usable(ctx);
    spindle_ctx_free(ctx);
    return seen;
}

static void faults_in_ctx_new_default(void **state)
{
    create_backend = SPINDLE_BACKEND_AUTO;
    walk("ctx_new (default options)", run_ctx_new);
}

static void faults_in_ctx_new_opts_epoll(void **state)
{
    create_backend = SPINDLE_BACKEND_EPOLL;
    walk("ctx_new_opts (EPOLL)", run_ctx_new);
}

static void faults_in_ctx_new_opts_io_uring(void **state)
{
    create_backend = SPINDLE_BACKEND_IO_URING;
    walk("ctx_new_opts (IO_URING)", run_ctx_new);
}

static void faults_in_ctx_new_opts_poll(void **state)
{
    create_backend = SPINDLE_BACKEND_POLL;
    walk("ctx_new_opts (POLL)", run_ctx_new);
}

/* ------------------------------------------------------------------------
 * fd handlers
 */

/* Registering a first fd. -ENOMEM leaves it unregistered; an epoll_ctl
 * failure registers it and moves the context to poll. */
static unsigned long run_fd_register(enum spindle_fault_kind kind,
                                     unsigned long n)
{
    spindle_ctx *ctx = harness_ctx_new();
    char before[16];
    snprintf(before, sizeof(before), "%s", spindle_backend_name(ctx));
    pipe_ev p;
    pipe_open(&p);

    spindle_fault_arm(kind, n);
    int r = pipe_register(ctx, &p);
    unsigned long seen = spindle_fault_seen(kind);
    spindle_fault_arm(kind, 0);

    if (seen >= n && r != 0) {
        assert_int_equal(r, -ENOMEM);
        assert_int_equal(kind, SPINDLE_FAULT_ALLOC);
        /* Not registered: a ready pipe is not dispatched. */
        pipe_poke(&p);
        drain(ctx);
        assert_int_equal(p.reads, 0);
        assert_int_equal(pipe_register(ctx, &p), 0);
    } else {
        assert_int_equal(r, 0);
        if (seen >= n) {
            assert_int_equal(kind, SPINDLE_FAULT_EPOLL_CTL);
            assert_string_equal(before, "epoll");
            assert_string_equal(spindle_backend_name(ctx), "poll");
        }
        pipe_poke(&p);
    }
    poll_until(ctx, &p.reads, 1);
    assert_usable(ctx);
    spindle_ctx_free(ctx);
    pipe_close(&p);
    return seen;
}

static void faults_in_fd_handler_registration(void **state)
{
    walk("set_fd_handler (first fd)", run_fd_register);
}

/* The 64th user fd of an AUTO context (with $SPINDLE_BACKEND unset): the
 * switch to epoll allocates the record, may grow the fd table, creates the
 * epoll fd and adds every handler with epoll_ctl. */
#define NPIPES 65

static unsigned long run_auto_switch(enum spindle_fault_kind kind,
                                     unsigned long n)
{
    pipe_ev p[NPIPES];
    spindle_ctx *ctx = ctx_new_auto_without_ring();
    for (int i = 0; i < NPIPES; i++) {
        pipe_open(&p[i]);
    }
    for (int i = 0; i < 63; i++) {
        assert_int_equal(pipe_register(ctx, &p[i]), 0);
    }
    assert_string_equal(spindle_backend_name(ctx), "poll");

    spindle_fault_arm(kind, n);
    int r = pipe_register(ctx, &p[63]);
    unsigned long seen = spindle_fault_seen(kind);
    spindle_fault_arm(kind, 0);

    if (seen < n) {
        assert_int_equal(r, 0);
        assert_string_equal(spindle_backend_name(ctx), "epoll");
    } else if (r != 0) {
        /* The 64th registration failed: no switch yet; it comes with the
         * registration that succeeds. */
        assert_int_equal(r, -ENOMEM);
        assert_int_equal(kind, SPINDLE_FAULT_ALLOC);
        assert_string_equal(spindle_backend_name(ctx), "poll");
        assert_int_equal(pipe_register(ctx, &p[63]), 0);
        assert_string_equal(spindle_backend_name(ctx), "epoll");
    } else {
        /* epoll failed: the fd is registered and the context stays on
         * poll for good, also past the threshold. */
        assert_true(kind == SPINDLE_FAULT_FD ||
                    kind == SPINDLE_FAULT_EPOLL_CTL);
        assert_string_equal(spindle_backend_name(ctx), "poll");
        assert_int_equal(pipe_register(ctx, &p[64]), 0);
        assert_string_equal(spindle_backend_name(ctx), "poll");
    }
    /* The first and the last registered fds are dispatched. */
    pipe_poke(&p[0]);
    pipe_poke(&p[63]);
    poll_until(ctx, &p[0].reads, 1);
    poll_until(ctx, &p[63].reads, 1);
    assert_usable(ctx);
    spindle_ctx_free(ctx);
    for (int i = 0; i < NPIPES; i++) {
        pipe_close(&p[i]);
    }
    return seen;
}

static void faults_in_auto_switch_to_epoll(void **state)
{
    /* AUTO must choose by itself here, whatever this run's back-end is. */
    char *saved = getenv("SPINDLE_BACKEND");
    saved = saved ? strdup(saved) : NULL;
    unsetenv("SPINDLE_BACKEND");
    walk("set_fd_handler (64th fd, AUTO switch)", run_auto_switch);
    if (saved) {
        setenv("SPINDLE_BACKEND", saved, 1);
        free(saved);
    }
}

/* Updating a registered fd: on -ENOMEM the old callbacks stay. */
static unsigned long run_fd_update(enum spindle_fault_kind kind,
                                   unsigned long n)
{
    spindle_ctx *ctx = harness_ctx_new();
    char before[16];
    snprintf(before, sizeof(before), "%s", spindle_backend_name(ctx));
    pipe_ev a, b; /* the same pipe, two handler states */
    pipe_open(&a);
    b = a;
    assert_int_equal(pipe_register(ctx, &a), 0);

    spindle_fault_arm(kind, n);
    int r = pipe_register(ctx, &b);
    unsigned long seen = spindle_fault_seen(kind);
    spindle_fault_arm(kind, 0);

    pipe_poke(&a);
    if (seen >= n && r != 0) {
        assert_int_equal(r, -ENOMEM);
        assert_int_equal(kind, SPINDLE_FAULT_ALLOC);
        poll_until(ctx, &a.reads, 1);
        assert_int_equal(b.reads, 0);
    } else {
        assert_int_equal(r, 0);
        if (seen >= n) {
            assert_int_equal(kind, SPINDLE_FAULT_EPOLL_CTL);
            assert_string_equal(before, "epoll");
            assert_string_equal(spindle_backend_name(ctx), "poll");
        }
        poll_until(ctx, &b.reads, 1);
        assert_int_equal(a.reads, 0);
    }
    assert_usable(ctx);
    spindle_ctx_free(ctx);
    pipe_close(&a);
    return seen;
}

static void faults_in_fd_handler_update(void **state)
{
    walk("set_fd_handler (update)", run_fd_update);
}

/* Removing always succeeds, whatever fails underneath. */
static unsigned long run_fd_remove(enum spindle_fault_kind kind,
                                   unsigned long n)
{
    spindle_ctx *ctx = harness_ctx_new();
    pipe_ev p;
    pipe_open(&p);
    assert_int_equal(pipe_register(ctx, &p), 0);

    spindle_fault_arm(kind, n);
    int r = spindle_set_fd_handler(ctx, p.fd[0], false, NULL, NULL, NULL,
                                   NULL);
    unsigned long seen = spindle_fault_seen(kind);
    spindle_fault_arm(kind, 0);

    assert_int_equal(r, 0);
    if (seen >= n) {
        /* epoll_ctl(DEL) failed: epoll lost track, so poll takes over. */
        assert_int_equal(kind, SPINDLE_FAULT_EPOLL_CTL);
        assert_string_equal(spindle_backend_name(ctx), "poll");
    }
    pipe_poke(&p);
    drain(ctx);
    assert_int_equal(p.reads, 0);
    assert_usable(ctx);
    spindle_ctx_free(ctx);
    pipe_close(&p);
    return seen;
}

static void faults_in_fd_handler_removal(void **state)
{
    walk("set_fd_handler (removal)", run_fd_remove);
}

/* ------------------------------------------------------------------------
 * Bottom halves
 */

static unsigned long run_bh_new(enum spindle_fault_kind kind, unsigned long n)
{
    spindle_ctx *ctx = harness_ctx_new();
    unsigned ran = 0;

    spindle_fault_arm(kind, n);
    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &ran);
    int err = errno;
    unsigned long seen = spindle_fault_seen(kind);
    spindle_fault_arm(kind, 0);

    if (seen >= n) {
        assert_null(bh);
        assert_int_equal(err, ENOMEM);
    } else {
        assert_non_null(bh);
        spindle_bh_schedule(bh);
        poll_until(ctx, &ran, 1);
        spindle_bh_delete(bh);
    }
    assert_usable(ctx);
    spindle_ctx_free(ctx);
    return seen;
}

static void faults_in_bh_new(void **state)
{
    walk("bh_new", run_bh_new);
}

static unsigned long run_bh_oneshot(enum spindle_fault_kind kind,
                                    unsigned long n)
{
    spindle_ctx *ctx = harness_ctx_new();
    unsigned ran = 0;

    spindle_fault_arm(kind, n);
    int r = spindle_bh_oneshot(ctx, harness_count_cb, &ran);
    unsigned long seen = spindle_fault_seen(kind);
    spindle_fault_arm(kind, 0);

    if (seen >= n) {
        assert_int_equal(r, -ENOMEM);
        drain(ctx);
        assert_int_equal(ran, 0);
    } else {
        assert_int_equal(r, 0);
        poll_until(ctx, &ran, 1);
        drain(ctx);
        assert_int_equal(ran, 1);
    }
    assert_usable(ctx);
    spindle_ctx_free(ctx);
    return seen;
}

static void faults_in_bh_oneshot(void **state)
{
    walk("bh_oneshot", run_bh_oneshot);
}

/* Scheduling, cancelling, arming and disarming never allocate, create an
 * fd or call epoll_ctl (spindle.h): there is no failure point to walk. */
static void scheduling_and_arming_never_fail(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    unsigned ran = 0, fired = 0;
    spindle_bh *bh = spindle_bh_new(ctx, harness_count_cb, &ran);
    spindle_timer *t = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC,
                                         harness_count_cb, &fired);
    assert_non_null(bh);
    assert_non_null(t);
    for (int k = 0; k < NKINDS; k++) {
        spindle_fault_arm((enum spindle_fault_kind)k, 1);
    }
    spindle_bh_schedule(bh);
    spindle_bh_cancel(bh);
    spindle_bh_schedule_idle(bh);
    spindle_bh_schedule(bh);
    spindle_timer_mod(t, spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) + 1000 * MS);
    spindle_timer_mod_anticipate(t, spindle_now_ns(SPINDLE_CLOCK_MONOTONIC));
    spindle_timer_del(t);
    spindle_timer_mod(t, spindle_now_ns(SPINDLE_CLOCK_MONOTONIC));
    unsigned long seen[NKINDS];
    for (int k = 0; k < NKINDS; k++) {
        seen[k] = spindle_fault_seen((enum spindle_fault_kind)k);
        spindle_fault_arm((enum spindle_fault_kind)k, 0);
    }
    for (int k = 0; k < NKINDS; k++) {
        assert_int_equal(seen[k], 0);
    }
    poll_until(ctx, &ran, 1);
    poll_until(ctx, &fired, 1);
    spindle_ctx_free(ctx);
}

/* ------------------------------------------------------------------------
 * Interest changes (spindle_set_fd_interest)
 */

static void pipe_write_cb(void *opaque)
{
    ((pipe_ev *)opaque)->writes++;
}

/* A socketpair with a read and a write handler on s->fd[0]. */
static void sock_open(spindle_ctx *ctx, pipe_ev *s)
{
    memset(s, 0, sizeof(*s));
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK |
                                SOCK_CLOEXEC, 0, s->fd), 0);
    assert_int_equal(spindle_set_fd_handler(ctx, s->fd[0], false,
                                            pipe_read_cb, pipe_write_cb, NULL,
                                            s), 0);
}

static bool on_epoll(spindle_ctx *ctx)
{
    return !strcmp(spindle_backend_name(ctx), "epoll");
}

/* A million changes that end where they started allocate nothing, create
 * no fd and make no epoll_ctl, neither when made nor at the next wait; one
 * net change costs one epoll_ctl at the next wait (none on poll). */
static void interest_changes_never_allocate_and_coalesce(void **state)
{
    spindle_ctx *ctx = harness_ctx_new();
    pipe_ev s;
    sock_open(ctx, &s);
    /* First waits: the poll monitor sizes its array. (Not drain(): s is
     * always writable, so every iteration makes progress.) */
    spindle_poll(ctx, false);
    spindle_poll(ctx, false);
    unsigned writes = s.writes;

    for (int k = 0; k < NKINDS; k++) {
        spindle_fault_arm((enum spindle_fault_kind)k, 1);
    }
    for (int i = 0; i < 1000000; i++) {
        spindle_set_fd_interest(ctx, s.fd[0], true, false);
        spindle_set_fd_interest(ctx, s.fd[0], true, true);
    }
    spindle_poll(ctx, false);
    unsigned long seen[NKINDS];
    for (int k = 0; k < NKINDS; k++) {
        seen[k] = spindle_fault_seen((enum spindle_fault_kind)k);
        spindle_fault_arm((enum spindle_fault_kind)k, 0);
    }
    for (int k = 0; k < NKINDS; k++) {
        assert_int_equal(seen[k], 0);
    }
    assert_int_equal(s.writes, writes + 1); /* still waiting for writable */

    spindle_fault_arm(SPINDLE_FAULT_EPOLL_CTL, 0);
    for (int i = 0; i < 1000; i++) {
        spindle_set_fd_interest(ctx, s.fd[0], true, true);
        spindle_set_fd_interest(ctx, s.fd[0], true, false);
    }
    spindle_poll(ctx, false);
    assert_int_equal(spindle_fault_seen(SPINDLE_FAULT_EPOLL_CTL),
                     on_epoll(ctx) ? 1 : 0);
    assert_int_equal(s.writes, writes + 1);

    spindle_ctx_free(ctx);
    pipe_close(&s);
}

/* The epoll_ctl that applies an interest change fails: epoll has lost
 * track, so the context falls back to poll, which honours the interest. */
static unsigned long run_interest_change(enum spindle_fault_kind kind,
                                         unsigned long n)
{
    spindle_ctx *ctx = harness_ctx_new();
    pipe_ev s;
    sock_open(ctx, &s);
    spindle_poll(ctx, false);
    bool was_epoll = on_epoll(ctx);
    unsigned writes = s.writes;

    assert_int_equal(spindle_set_fd_interest(ctx, s.fd[0], true, false), 0);
    spindle_fault_arm(kind, n);
    spindle_poll(ctx, false);
    unsigned long seen = spindle_fault_seen(kind);
    spindle_fault_arm(kind, 0);

    if (seen >= n) {
        assert_int_equal(kind, SPINDLE_FAULT_EPOLL_CTL);
        assert_true(was_epoll);
        assert_string_equal(spindle_backend_name(ctx), "poll");
    }
    drain(ctx);
    assert_int_equal(s.writes, writes);
    assert_int_equal(write(s.fd[1], "x", 1), 1);
    poll_until(ctx, &s.reads, 1);
    assert_int_equal(spindle_set_fd_interest(ctx, s.fd[0], true, true), 0);
    poll_until(ctx, &s.writes, writes + 1);
    assert_usable(ctx);
    spindle_ctx_free(ctx);
    pipe_close(&s);
    return seen;
}

static void faults_in_interest_change(void **state)
{
    walk("set_fd_interest (applied at the wait)", run_interest_change);
}

/* ------------------------------------------------------------------------
 * Timers
 */

#define MAX_EXISTING 64
static unsigned existing_timers; /* timers created before the faulty one */

static unsigned long run_timer_new(enum spindle_fault_kind kind,
                                   unsigned long n)
{
    spindle_ctx *ctx = harness_ctx_new();
    spindle_timer *old[MAX_EXISTING];
    unsigned fired[MAX_EXISTING] = { 0 }, new_fired = 0;
    for (unsigned i = 0; i < existing_timers; i++) {
        old[i] = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC,
                                   harness_count_cb, &fired[i]);
        assert_non_null(old[i]);
    }

    spindle_fault_arm(kind, n);
    spindle_timer *t = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC,
                                         harness_count_cb, &new_fired);
    int err = errno;
    unsigned long seen = spindle_fault_seen(kind);
    spindle_fault_arm(kind, 0);

    if (seen >= n) {
        assert_null(t);
        assert_int_equal(err, ENOMEM);
        t = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC, harness_count_cb,
                              &new_fired);
        assert_non_null(t);
    } else {
        assert_non_null(t);
    }
    /* Every timer, old and new, is intact: each fires exactly once. */
    int64_t now = spindle_now_ns(SPINDLE_CLOCK_MONOTONIC);
    for (unsigned i = 0; i < existing_timers; i++) {
        spindle_timer_mod(old[i], now + i);
    }
    spindle_timer_mod(t, now);
    poll_until(ctx, &new_fired, 1);
    for (unsigned i = 0; i < existing_timers; i++) {
        poll_until(ctx, &fired[i], 1);
    }
    drain(ctx);
    assert_int_equal(new_fired, 1);
    for (unsigned i = 0; i < existing_timers; i++) {
        assert_int_equal(fired[i], 1);
        assert_false(spindle_timer_pending(old[i]));
    }
    assert_usable(ctx);
    spindle_ctx_free(ctx); /* frees the timers too */
    return seen;
}

static void faults_in_first_timer_new(void **state)
{
    existing_timers = 0;
    walk("timer_new (first timer)", run_timer_new);
}

static void faults_in_17th_timer_new(void **state)
{
    existing_timers = 16;
    walk("timer_new (17th timer: heap growth)", run_timer_new);
}

/* Timers live in blocks of 63 per clock (src/timer.c): the 64th needs a
 * new one. */
static void faults_in_64th_timer_new(void **state)
{
    existing_timers = 63;
    walk("timer_new (64th timer: a new slab)", run_timer_new);
}

/* ------------------------------------------------------------------------
 * Event notifiers
 */

static unsigned long run_notifier_new(enum spindle_fault_kind kind,
                                      unsigned long n)
{
    spindle_fault_arm(kind, n);
    spindle_notifier *e = spindle_notifier_new(true);
    int err = errno;
    unsigned long seen = spindle_fault_seen(kind);
    spindle_fault_arm(kind, 0);

    if (seen >= n) {
        assert_null(e);
        assert_int_equal(err, kind_errno(kind));
        e = spindle_notifier_new(true);
    }
    assert_non_null(e);
    assert_true(spindle_notifier_test_and_clear(e));
    assert_false(spindle_notifier_test_and_clear(e));
    assert_int_equal(spindle_notifier_set(e), 0);
    assert_true(spindle_notifier_test_and_clear(e));
    spindle_notifier_free(e);
    return seen;
}

static void faults_in_notifier_new(void **state)
{
    walk("notifier_new", run_notifier_new);
}

typedef struct notifier_ev {
    spindle_notifier *e;
    unsigned reads;
} notifier_ev;

static void notifier_read_cb(void *opaque)
{
    notifier_ev *ev = opaque;
    if (spindle_notifier_test_and_clear(ev->e)) {
        ev->reads++;
    }
}

static unsigned long run_event_notifier_register(enum spindle_fault_kind kind,
                                                 unsigned long n)
{
    spindle_ctx *ctx = harness_ctx_new();
    char before[16];
    snprintf(before, sizeof(before), "%s", spindle_backend_name(ctx));
    notifier_ev ev = { spindle_notifier_new(false), 0 };
    assert_non_null(ev.e);

    spindle_fault_arm(kind, n);
    int r = spindle_set_event_notifier(ctx, ev.e, false, notifier_read_cb,
                                       NULL, &ev);
    unsigned long seen = spindle_fault_seen(kind);
    spindle_fault_arm(kind, 0);

    if (seen >= n && r != 0) {
        assert_int_equal(r, -ENOMEM);
        assert_int_equal(kind, SPINDLE_FAULT_ALLOC);
        assert_int_equal(spindle_notifier_set(ev.e), 0);
        drain(ctx);
        assert_int_equal(ev.reads, 0);
        assert_int_equal(spindle_set_event_notifier(ctx, ev.e, false,
                                                    notifier_read_cb, NULL,
                                                    &ev), 0);
    } else {
        assert_int_equal(r, 0);
        if (seen >= n) {
            assert_int_equal(kind, SPINDLE_FAULT_EPOLL_CTL);
            assert_string_equal(before, "epoll");
            assert_string_equal(spindle_backend_name(ctx), "poll");
        }
        assert_int_equal(spindle_notifier_set(ev.e), 0);
    }
    poll_until(ctx, &ev.reads, 1);
    assert_usable(ctx);
    spindle_ctx_free(ctx);
    spindle_notifier_free(ev.e);
    return seen;
}

static void faults_in_event_notifier_registration(void **state)
{
    walk("set_event_notifier", run_event_notifier_register);
}

/* ------------------------------------------------------------------------
 * The iteration itself: the poll back-end sizes its pollfd array on the
 * first wait (and whenever the handler count outgrows it: the context's own
 * wake-up fd comes last, so it is the one left out). An allocation
 * failure there must not make the loop blind: a registered fd that is
 * already readable is dispatched by the blocking iterations that follow,
 * before a far timer (a safety net: without it a loop that waits on no fd
 * at all would sleep for ever) fires.
 */

static void set_flag_cb(void *opaque)
{
    *(bool *)opaque = true;
}

/* A user-space completion source with nothing to report: the handler also
 * has an fd, so the kernel wait must still include it. */
static bool idle_poll_cb(void *opaque)
{
    (void)opaque;
    return false;
}

/* User pipes registered before the iteration under test; the ready one is
 * the first registered. With more than 16 the array must grow: then it is
 * sized to 16 beforehand, so that the growth is the failure point. */
static int iteration_pipes;

static unsigned long run_iteration(enum spindle_fault_kind kind,
                                   unsigned long n)
{
    spindle_options o = { .backend = SPINDLE_BACKEND_POLL, .poll_max_ns = -1 };
    spindle_ctx *ctx = spindle_ctx_new_opts(&o);
    assert_non_null(ctx);
    pipe_ev p[NPIPES];
    for (int i = 0; i < iteration_pipes; i++) {
        pipe_open(&p[i]);
    }
    if (iteration_pipes > 16) {
        /* One wait (non-blocking) sizes the array for 16 fds: it needs a
         * handler without io_poll. */
        assert_int_equal(pipe_register(ctx, &p[0]), 0);
        spindle_poll(ctx, false);
    }
    for (int i = 0; i < iteration_pipes; i++) {
        assert_int_equal(spindle_set_fd_handler(ctx, p[i].fd[0], false,
                                                pipe_read_cb, NULL,
                                                idle_poll_cb, &p[i]), 0);
    }
    bool safety_fired = false;
    spindle_timer *safety = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC,
                                              set_flag_cb, &safety_fired);
    assert_non_null(safety);
    spindle_timer_mod(safety, spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) +
                                  2000 * MS);
    /* Consume the wake-ups the calls above posted, without a kernel wait
     * (every handler has an io_poll, and this iteration does not block),
     * so that the blocking iteration below really waits in the kernel. */
    spindle_poll(ctx, false);
    pipe_poke(&p[0]);

    spindle_fault_arm(kind, n);
    spindle_poll(ctx, true);
    unsigned long seen = spindle_fault_seen(kind);
    spindle_fault_arm(kind, 0);

    for (unsigned i = 0; i < 3 && !p[0].reads && !safety_fired; i++) {
        spindle_poll(ctx, true);
    }
    unsigned reads = p[0].reads;
    bool blind = safety_fired;
    spindle_timer_free(safety);
    if (!blind && reads) {
        assert_usable(ctx);
    }
    spindle_ctx_free(ctx);
    for (int i = 0; i < iteration_pipes; i++) {
        pipe_close(&p[i]);
    }

    if (blind || !reads) {
        print_message("BUG: %s failure %lu in a blocking iteration (poll "
                      "back-end, %d user fds): the readable pipe was %s; "
                      "the loop %s\n", kind_name[kind], n, iteration_pipes,
                      reads ? "dispatched late" : "never dispatched",
                      blind ? "slept until the 2 s safety timer fired"
                            : "made no progress");
    }
    assert_false(blind);
    assert_int_equal(reads, 1);
    return seen;
}

static void faults_in_first_wait_on_poll_backend(void **state)
{
    iteration_pipes = 1;
    walk("spindle_poll (first wait, poll back-end)", run_iteration);
}

static void faults_in_wait_growing_past_16_fds_on_poll_backend(void **state)
{
    iteration_pipes = 17;
    walk("spindle_poll (17 fds: array growth)", run_iteration);
}

/* ------------------------------------------------------------------------
 * Embedding
 */

/* A host iteration: prepare, a ppoll on the fd for what prepare allows
 * (capped: a context that lost its epoll set may bound it anyway), check,
 * dispatch. */
static void host_iteration(spindle_ctx *ctx, int fd)
{
    int64_t ns = spindle_prepare(ctx);
    assert_true(ns >= -1);
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int r = poll(&p, 1, ns < 0 ? 1000 : (int)((ns + 999999) / 1000000));
    assert_true(r >= 0);
    if (spindle_check(ctx, r > 0)) {
        spindle_dispatch(ctx);
    }
}

/* Taking a context in (spindle_get_fd, which also moves it to epoll). The
 * embedding set's creation failing is the one error; every other failure
 * leaves the context embedded, maybe watching each fd itself. */
static unsigned long run_get_fd(enum spindle_fault_kind kind,
                                unsigned long n)
{
    spindle_ctx *ctx = harness_ctx_new();
    pipe_ev p;
    pipe_open(&p);
    assert_int_equal(pipe_register(ctx, &p), 0);
    drain(ctx);

    spindle_fault_arm(kind, n);
    int fd = spindle_get_fd(ctx);
    unsigned long seen = spindle_fault_seen(kind);
    spindle_fault_arm(kind, 0);

    if (fd < 0) {
        assert_true(seen >= n);
        assert_int_equal(fd, -kind_errno(kind));
        fd = spindle_get_fd(ctx); /* nothing was left broken */
    }
    assert_true(fd >= 0);
    pipe_poke(&p);
    for (unsigned i = 0; p.reads < 1; i++) {
        assert_true(i < 100);
        host_iteration(ctx, fd);
    }
    assert_int_equal(spindle_set_fd_handler(ctx, p.fd[0], false, NULL, NULL,
                                            NULL, NULL), 0);
    assert_usable(ctx);
    spindle_ctx_free(ctx);
    pipe_close(&p);
    return seen;
}

static void faults_in_get_fd(void **state)
{
    walk("spindle_get_fd", run_get_fd);
}

/* ------------------------------------------------------------------------
 * Thread pool
 */

static int pool_work(void *arg)
{
    (void)arg;
    return 5;
}

static void pool_done(void *arg, int ret)
{
    *(unsigned *)arg += ret == 5;
}

/* The first submission creates the pool (its record, eventfd, handler and
 * bottom half) and starts a worker. A failure gives NULL and the errno of
 * what failed, and leaves the context (and a later submission) working. */
static unsigned long run_first_submit(enum spindle_fault_kind kind,
                                      unsigned long n)
{
    spindle_ctx *ctx = harness_ctx_new();
    unsigned done = 0;

    spindle_fault_arm(kind, n);
    spindle_work *w = spindle_work_submit(ctx, pool_work, pool_done, &done);
    int err = errno;
    unsigned long seen = spindle_fault_seen(kind);
    spindle_fault_arm(kind, 0);

    unsigned want = 1;
    if (!w) {
        assert_true(seen >= n);
        assert_int_equal(err, kind_errno(kind));
        want = 0;
    }
    assert_non_null(spindle_work_submit(ctx, pool_work, pool_done, &done));
    want++;
    for (unsigned i = 0; done < want; i++) {
        assert_true(i < 1000);
        spindle_poll(ctx, true);
    }
    assert_int_equal(done, want);
    assert_usable(ctx);
    spindle_ctx_free(ctx);
    return seen;
}

static void faults_in_first_work_submit(void **state)
{
    walk("spindle_work_submit (first)", run_first_submit);
}

/* ------------------------------------------------------------------------ */

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST(faults_in_ctx_new_default),
        TEST(faults_in_ctx_new_opts_epoll),
        TEST(faults_in_ctx_new_opts_io_uring),
        TEST(faults_in_ctx_new_opts_poll),
        TEST(faults_in_fd_handler_registration),
        TEST(faults_in_auto_switch_to_epoll),
        TEST(faults_in_fd_handler_update),
        TEST(faults_in_fd_handler_removal),
        TEST(faults_in_bh_new),
        TEST(faults_in_bh_oneshot),
        TEST(scheduling_and_arming_never_fail),
        TEST(interest_changes_never_allocate_and_coalesce),
        TEST(faults_in_interest_change),
        TEST(faults_in_first_timer_new),
        TEST(faults_in_17th_timer_new),
        TEST(faults_in_64th_timer_new),
        TEST(faults_in_notifier_new),
        TEST(faults_in_event_notifier_registration),
        TEST(faults_in_first_wait_on_poll_backend),
        TEST(faults_in_wait_growing_past_16_fds_on_poll_backend),
        TEST(faults_in_get_fd),
        TEST(faults_in_first_work_submit),
    };
    int failed = RUN_TESTS(tests);
    print_message("fault points covered in total (SPINDLE_BACKEND=%s): %lu\n",
                  getenv("SPINDLE_BACKEND") ? getenv("SPINDLE_BACKEND") : "",
                  total_points);
    return failed;
}
