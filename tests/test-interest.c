/* spindle_set_fd_interest: turning an fd's read and write interest on and
 * off without re-registering it, on every back-end; the changes coalesce
 * into at most one kernel call per fd per wait; the error cases.
 * SPDX-License-Identifier: MIT
 *
 * Every test starts from the same fixture: a context, a non-blocking
 * AF_UNIX socketpair, and a handler on end[0] with an io_read and an
 * io_write that count their calls. end[0] is writable from the start (its
 * buffer is empty), and readable once end[1] writes to it.
 *
 * Whether an interest change reached the kernel is read from
 * stats.interest_updates (one epoll_ctl each on epoll, none on poll);
 * tests/interest-syscalls.sh checks the same claims against the system
 * calls strace sees, and tests/test-faults.c against allocations.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MS 1000000LL
#define TOGGLES 1000000

typedef struct fixture {
    spindle_ctx *ctx;
    int end[2];         /* end[0] is registered */
    unsigned reads;
    unsigned writes;
    /* What io_read does besides counting: turn write interest off. */
    bool read_turns_write_off;
} fixture;

static void on_read(void *opaque)
{
    fixture *f = opaque;
    char buf[256];
    f->reads++;
    while (read(f->end[0], buf, sizeof(buf)) > 0) {
        /* consume, so that level-triggered readiness ends */
    }
    if (f->read_turns_write_off) {
        assert_int_equal(spindle_set_fd_interest(f->ctx, f->end[0], true,
                                                 false), 0);
    }
}

static void on_write(void *opaque)
{
    fixture *f = opaque;
    f->writes++;
}

static int setup(void **state)
{
    fixture *f = harness_fixture_new(state, sizeof(*f));
    f->ctx = harness_ctx_new();
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK |
                                SOCK_CLOEXEC, 0, f->end), 0);
    assert_int_equal(spindle_set_fd_handler(f->ctx, f->end[0], false, on_read,
                                            on_write, NULL, f), 0);
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    spindle_ctx_free(f->ctx);
    if (f->end[0] >= 0) {
        close(f->end[0]);
    }
    if (f->end[1] >= 0) {
        close(f->end[1]);
    }
    free(f);
    return harness_watchdog_disarm(state);
}

#define TEST_F(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

static bool backend_is(const spindle_ctx *ctx, const char *name)
{
    return strcmp(spindle_backend_name(ctx), name) == 0;
}

static uint64_t interest_updates(const spindle_ctx *ctx)
{
    spindle_stats s;
    assert_int_equal(spindle_get_stats(ctx, &s), 0);
    return s.interest_updates;
}

static void send_bytes(fixture *f)
{
    assert_int_equal(write(f->end[1], "ping", 4), 4);
}

/* Non-blocking iterations: enough for any ready fd to be dispatched. */
static void run_iterations(spindle_ctx *ctx, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        harness_poll(ctx, false);
    }
}

/* ------------------------------------------------------------------------
 * Semantics
 */

static void registering_waits_for_both_callbacks(void **state)
{
    fixture *f = *state;
    send_bytes(f);
    run_iterations(f->ctx, 2);
    assert_true(f->reads >= 1);
    assert_true(f->writes >= 1);
}

static void write_interest_off_stops_io_write_while_writable(void **state)
{
    fixture *f = *state;
    assert_int_equal(spindle_set_fd_interest(f->ctx, f->end[0], true, false),
                     0);
    run_iterations(f->ctx, 5);
    assert_int_equal(f->writes, 0);

    assert_int_equal(spindle_set_fd_interest(f->ctx, f->end[0], true, true),
                     0);
    run_iterations(f->ctx, 1);
    assert_int_equal(f->writes, 1);
}

static void read_interest_off_holds_data_back_until_turned_on(void **state)
{
    fixture *f = *state;
    assert_int_equal(spindle_set_fd_interest(f->ctx, f->end[0], false, false),
                     0);
    send_bytes(f);
    run_iterations(f->ctx, 5);
    assert_int_equal(f->reads, 0);
    assert_int_equal(f->writes, 0);

    /* Level-triggered: the data that arrived meanwhile is reported. */
    assert_int_equal(spindle_set_fd_interest(f->ctx, f->end[0], true, false),
                     0);
    run_iterations(f->ctx, 1);
    assert_int_equal(f->reads, 1);
    assert_int_equal(f->writes, 0);
}

/* The wait found end[0] readable and writable; io_read runs first and turns
 * write interest off: io_write must not run, though its readiness was
 * found before the change. */
static void interest_turned_off_by_a_callback_holds_in_the_same_iteration(
    void **state)
{
    fixture *f = *state;
    f->read_turns_write_off = true;
    send_bytes(f);
    run_iterations(f->ctx, 1);
    assert_int_equal(f->reads, 1);
    assert_int_equal(f->writes, 0);
    run_iterations(f->ctx, 3);
    assert_int_equal(f->writes, 0);
}

static void reregistering_resets_interest_to_the_callbacks(void **state)
{
    fixture *f = *state;
    assert_int_equal(spindle_set_fd_interest(f->ctx, f->end[0], true, false),
                     0);
    run_iterations(f->ctx, 2);
    assert_int_equal(f->writes, 0);

    assert_int_equal(spindle_set_fd_handler(f->ctx, f->end[0], false, on_read,
                                            on_write, NULL, f), 0);
    run_iterations(f->ctx, 1);
    assert_int_equal(f->writes, 1);
}

/* A change still pending when the fd is removed and registered again must
 * not leak into the new registration. */
static void pending_change_does_not_outlive_removal(void **state)
{
    fixture *f = *state;
    assert_int_equal(spindle_set_fd_interest(f->ctx, f->end[0], false, false),
                     0);
    assert_int_equal(spindle_set_fd_handler(f->ctx, f->end[0], false, NULL,
                                            NULL, NULL, NULL), 0);
    assert_int_equal(spindle_set_fd_handler(f->ctx, f->end[0], false, on_read,
                                            on_write, NULL, f), 0);
    send_bytes(f);
    run_iterations(f->ctx, 1);
    assert_int_equal(f->reads, 1);
    assert_int_equal(f->writes, 1);
}

/* Both off: the fd is not waited on, so a readable, writable fd neither
 * runs a callback nor keeps a blocking loop from sleeping until its timer. */
static void no_interest_lets_the_loop_sleep(void **state)
{
    fixture *f = *state;
    assert_int_equal(spindle_set_fd_interest(f->ctx, f->end[0], false, false),
                     0);
    send_bytes(f);
    /* Ten iterations at most: a spinning loop would take thousands. */
    harness_poll_until_timer(f->ctx, 20 * MS, 10);
    assert_int_equal(f->reads, 0);
    assert_int_equal(f->writes, 0);
}

/* A handler on another fd, that removes itself from io_write. */
typedef struct other_fd {
    spindle_ctx *ctx;
    int fd;
    unsigned reads;
    unsigned writes;
} other_fd;

static void other_read(void *opaque)
{
    ((other_fd *)opaque)->reads++;
}

static void other_write_and_remove(void *opaque)
{
    other_fd *o = opaque;
    o->writes++;
    spindle_set_fd_handler(o->ctx, o->fd, false, NULL, NULL, NULL, NULL);
}

/* A pipe's read end reports a hang-up alone (it is never writable). With
 * read interest off, io_write gets it, rather than the loop seeing it at
 * every wait with no one to consume it. */
static void hangup_with_read_interest_off_runs_io_write(void **state)
{
    fixture *f = *state;
    int p[2];
    harness_pipe(p);
    other_fd o = { .ctx = f->ctx, .fd = p[0] };
    assert_int_equal(spindle_set_fd_handler(f->ctx, p[0], false, other_read,
                                            other_write_and_remove, NULL, &o),
                     0);
    assert_int_equal(spindle_set_fd_interest(f->ctx, p[0], false, true), 0);
    assert_int_equal(spindle_set_fd_interest(f->ctx, f->end[0], false, false),
                     0);
    close(p[1]);
    for (unsigned i = 0; i < 10 && !o.writes; i++) {
        harness_poll(f->ctx, true);
    }
    assert_int_equal(o.writes, 1);
    assert_int_equal(o.reads, 0);
    close(p[0]);
}

static void nested_cb(void *opaque)
{
    fixture *f = opaque;
    f->reads++;
    char buf[16];
    while (read(f->end[0], buf, sizeof(buf)) > 0) {
    }
    /* Turn write interest on from inside a callback, then wait for it in a
     * nested iteration: it must be applied before the nested wait. */
    assert_int_equal(spindle_set_fd_interest(f->ctx, f->end[0], true, true),
                     0);
    for (unsigned i = 0; i < 5 && !f->writes; i++) {
        spindle_poll(f->ctx, true);
    }
}

static void change_made_in_a_callback_reaches_a_nested_wait(void **state)
{
    fixture *f = *state;
    assert_int_equal(spindle_set_fd_handler(f->ctx, f->end[0], false,
                                            nested_cb, on_write, NULL, f), 0);
    assert_int_equal(spindle_set_fd_interest(f->ctx, f->end[0], true, false),
                     0);
    send_bytes(f);
    harness_poll(f->ctx, true);
    assert_int_equal(f->reads, 1);
    assert_true(f->writes >= 1);
}

static void read_only_cb(void *opaque)
{
    (*(unsigned *)opaque)++;
}

/* A change made on poll is applied when an AUTO context moves to epoll:
 * the switch adds every fd with what the kernel was last told, and the
 * pending change follows at the next wait. */
static void pending_change_survives_the_switch_to_epoll(void **state)
{
    fixture *f = *state;
    enum { N = 70 };
    int p[N][2];
    unsigned dummy = 0;

    assert_int_equal(spindle_set_fd_interest(f->ctx, f->end[0], true, false),
                     0);
    for (int i = 0; i < N; i++) {
        harness_pipe(p[i]);
        assert_int_equal(spindle_set_fd_handler(f->ctx, p[i][0], false,
                                                read_only_cb, NULL, NULL,
                                                &dummy), 0);
    }
    /* Whatever the back-end now (AUTO: epoll since the 64th fd). */
    run_iterations(f->ctx, 3);
    assert_int_equal(f->writes, 0);
    assert_int_equal(spindle_set_fd_interest(f->ctx, f->end[0], true, true),
                     0);
    run_iterations(f->ctx, 1);
    assert_int_equal(f->writes, 1);
    assert_int_equal(dummy, 0);
    for (int i = 0; i < N; i++) {
        close(p[i][0]);
        close(p[i][1]);
    }
}

/* ------------------------------------------------------------------------
 * Cost: changes coalesce into one kernel call per fd per wait
 */

static void toggling_a_million_times_back_to_the_start_costs_no_kernel_call(
    void **state)
{
    fixture *f = *state;
    run_iterations(f->ctx, 1);
    uint64_t before = interest_updates(f->ctx);
    for (int i = 0; i < TOGGLES; i++) {
        assert_int_equal(spindle_set_fd_interest(f->ctx, f->end[0], true,
                                                 false), 0);
        assert_int_equal(spindle_set_fd_interest(f->ctx, f->end[0], true,
                                                 true), 0);
    }
    unsigned writes = f->writes;
    run_iterations(f->ctx, 1);
    assert_int_equal(interest_updates(f->ctx), before);
    assert_int_equal(f->writes, writes + 1); /* still waiting for writable */
}

static void many_changes_before_a_wait_cost_one_kernel_call_on_epoll(
    void **state)
{
    fixture *f = *state;
    run_iterations(f->ctx, 1);
    uint64_t before = interest_updates(f->ctx);
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(spindle_set_fd_interest(f->ctx, f->end[0], i & 1,
                                                 true), 0);
        assert_int_equal(spindle_set_fd_interest(f->ctx, f->end[0], true,
                                                 false), 0);
    }
    run_iterations(f->ctx, 3);
    assert_int_equal(f->writes, 1); /* from the first iteration only */
    /* epoll: one epoll_ctl for the net change; io_uring: one poll update
     * (carried by its next submission); poll keeps no kernel state. */
    assert_int_equal(interest_updates(f->ctx) - before,
                     backend_is(f->ctx, "epoll") ||
                             backend_is(f->ctx, "io_uring")
                         ? 1
                         : 0);
}

/* ------------------------------------------------------------------------
 * Errors
 */

static void null_ctx_returns_einval(void **state)
{
    fixture *f = *state;
    assert_int_equal(spindle_set_fd_interest(NULL, f->end[0], true, true),
                     -EINVAL);
}

static void negative_fd_returns_ebadf(void **state)
{
    fixture *f = *state;
    assert_int_equal(spindle_set_fd_interest(f->ctx, -1, true, true), -EBADF);
}

static void unregistered_fd_returns_enoent(void **state)
{
    fixture *f = *state;
    /* Open, but not registered. */
    assert_int_equal(spindle_set_fd_interest(f->ctx, f->end[1], true, false),
                     -ENOENT);
    /* Far beyond any fd the context has seen. */
    assert_int_equal(spindle_set_fd_interest(f->ctx, 1 << 20, false, false),
                     -ENOENT);
}

static void removed_fd_returns_enoent(void **state)
{
    fixture *f = *state;
    assert_int_equal(spindle_set_fd_handler(f->ctx, f->end[0], false, NULL,
                                            NULL, NULL, NULL), 0);
    assert_int_equal(spindle_set_fd_interest(f->ctx, f->end[0], true, false),
                     -ENOENT);
}

/* Asking for a direction that has no callback fails and changes nothing. */
static void interest_without_its_callback_returns_einval(void **state)
{
    fixture *f = *state;
    unsigned reads = 0;
    int p[2];
    harness_pipe(p);
    assert_int_equal(spindle_set_fd_handler(f->ctx, p[0], false, read_only_cb,
                                            NULL, NULL, &reads), 0);
    assert_int_equal(spindle_set_fd_interest(f->ctx, p[0], false, true),
                     -EINVAL);
    assert_int_equal(write(p[1], "x", 1), 1);
    run_iterations(f->ctx, 1);
    assert_int_equal(reads, 1); /* read interest still on */
    close(p[0]);
    close(p[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST_F(registering_waits_for_both_callbacks),
        TEST_F(write_interest_off_stops_io_write_while_writable),
        TEST_F(read_interest_off_holds_data_back_until_turned_on),
        TEST_F(interest_turned_off_by_a_callback_holds_in_the_same_iteration),
        TEST_F(reregistering_resets_interest_to_the_callbacks),
        TEST_F(pending_change_does_not_outlive_removal),
        TEST_F(no_interest_lets_the_loop_sleep),
        TEST_F(hangup_with_read_interest_off_runs_io_write),
        TEST_F(change_made_in_a_callback_reaches_a_nested_wait),
        TEST_F(pending_change_survives_the_switch_to_epoll),
        TEST_F(toggling_a_million_times_back_to_the_start_costs_no_kernel_call),
        TEST_F(many_changes_before_a_wait_cost_one_kernel_call_on_epoll),
        TEST_F(null_ctx_returns_einval),
        TEST_F(negative_fd_returns_ebadf),
        TEST_F(unregistered_fd_returns_enoent),
        TEST_F(removed_fd_returns_enoent),
        TEST_F(interest_without_its_callback_returns_einval),
    };
    return RUN_TESTS(tests);
}
