/* Unit tests: event notifiers (spindle_notifier_*, spindle_set_event_notifier)
 * and the external-disable count as it applies to them.
 * SPDX-License-Identifier: MIT
 *
 * Callbacks never call cmocka assertions (a failing assertion would longjmp
 * out of spindle_poll()); they record what they saw and the test body
 * asserts afterwards.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------
 * Helpers
 */

/* Whether fd is readable right now (poll(2) with a zero timeout). */
static bool fd_readable(int fd)
{
    struct pollfd pfd = { .fd = fd, .events = POLLIN };
    int r = poll(&pfd, 1, 0);
    assert_true(r >= 0);
    return r == 1 && (pfd.revents & POLLIN);
}

static spindle_notifier *notifier_new_checked(bool active)
{
    spindle_notifier *n = spindle_notifier_new(active);
    assert_non_null(n);
    return n;
}

/* What an io_read / io_poll pair saw. */
struct reader {
    spindle_notifier *n;
    unsigned reads;         /* io_read calls */
    unsigned cleared;       /* io_read calls that found it set */
    void *last_opaque;      /* opaque of the last io_read */
    unsigned poll_calls;    /* io_poll calls */
    bool work;              /* user-space work for io_poll */
    unsigned poll_handled;  /* io_poll calls that found work */
    volatile bool got;      /* set by io_read */
};

/* io_read: clear the notifier and count. */
static void reader_read(void *opaque)
{
    struct reader *r = opaque;
    r->reads++;
    r->last_opaque = opaque;
    if (spindle_notifier_test_and_clear(r->n)) {
        r->cleared++;
    }
    r->got = true;
}

/* io_poll: consume user-space work, if any. */
static bool reader_poll(void *opaque)
{
    struct reader *r = opaque;
    r->poll_calls++;
    if (r->work) {
        r->work = false;
        r->poll_handled++;
        return true;
    }
    return false;
}

/* A second io_read, to tell which registration is in force. */
static void other_read(void *opaque)
{
    struct reader *r = opaque;
    r->reads += 1000;
    spindle_notifier_test_and_clear(r->n);
}

/* ------------------------------------------------------------------------
 * The notifier object
 */

static void notifier_new_inactive_is_clear(void **state)
{
    (void)state;
    spindle_notifier *n = notifier_new_checked(false);
    assert_false(spindle_notifier_test_and_clear(n));
    spindle_notifier_free(n);
}

static void notifier_new_active_is_set(void **state)
{
    (void)state;
    spindle_notifier *n = notifier_new_checked(true);
    assert_true(spindle_notifier_test_and_clear(n));
    assert_false(spindle_notifier_test_and_clear(n));
    spindle_notifier_free(n);
}

static void notifier_fd_is_open(void **state)
{
    (void)state;
    spindle_notifier *n = notifier_new_checked(false);
    int fd = spindle_notifier_fd(n);
    assert_true(fd >= 0);
    assert_true(fcntl(fd, F_GETFD) != -1);
    spindle_notifier_free(n);
}

static void notifier_set_makes_its_fd_readable(void **state)
{
    (void)state;
    spindle_notifier *n = notifier_new_checked(false);
    int fd = spindle_notifier_fd(n);

    assert_false(fd_readable(fd));
    assert_int_equal(spindle_notifier_set(n), 0);
    assert_true(fd_readable(fd));

    spindle_notifier_free(n);
}

static void notifier_test_and_clear_makes_its_fd_unreadable(void **state)
{
    (void)state;
    spindle_notifier *n = notifier_new_checked(false);
    int fd = spindle_notifier_fd(n);

    assert_int_equal(spindle_notifier_set(n), 0);
    assert_true(spindle_notifier_test_and_clear(n));
    assert_false(fd_readable(fd));

    spindle_notifier_free(n);
}

static void notifier_sets_before_a_clear_coalesce(void **state)
{
    (void)state;
    spindle_notifier *n = notifier_new_checked(false);

    for (int i = 0; i < 5; i++) {
        assert_int_equal(spindle_notifier_set(n), 0);
    }
    assert_true(spindle_notifier_test_and_clear(n));
    assert_false(spindle_notifier_test_and_clear(n));
    assert_false(fd_readable(spindle_notifier_fd(n)));

    spindle_notifier_free(n);
}

static void notifier_can_be_set_again_after_a_clear(void **state)
{
    (void)state;
    spindle_notifier *n = notifier_new_checked(false);

    for (int i = 0; i < 3; i++) {
        assert_int_equal(spindle_notifier_set(n), 0);
        assert_true(spindle_notifier_test_and_clear(n));
        assert_false(spindle_notifier_test_and_clear(n));
    }

    spindle_notifier_free(n);
}

/* ------------------------------------------------------------------------
 * Registration and dispatch
 */

static void event_notifier_dispatches_io_read_with_its_opaque_when_set(
    void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct reader r = { 0 };
    r.n = notifier_new_checked(false);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, false, reader_read,
                                                NULL, &r), 0);
    assert_int_equal(spindle_notifier_set(r.n), 0);
    assert_true(harness_poll(ctx, false));
    assert_int_equal(r.reads, 1);
    assert_int_equal(r.cleared, 1);
    assert_ptr_equal(r.last_opaque, &r);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, false, NULL, NULL,
                                                NULL), 0);
    spindle_ctx_free(ctx);
    spindle_notifier_free(r.n);
}

static void event_notifier_is_not_dispatched_while_clear(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct reader r = { 0 };
    r.n = notifier_new_checked(false);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, false, reader_read,
                                                NULL, &r), 0);
    assert_false(harness_poll(ctx, false));
    harness_drain(ctx);
    assert_int_equal(r.reads, 0);

    /* Set then cleared by the user before the loop looked: still nothing. */
    assert_int_equal(spindle_notifier_set(r.n), 0);
    assert_true(spindle_notifier_test_and_clear(r.n));
    assert_false(harness_poll(ctx, false));
    assert_int_equal(r.reads, 0);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, false, NULL, NULL,
                                                NULL), 0);
    spindle_ctx_free(ctx);
    spindle_notifier_free(r.n);
}

static void event_notifier_registered_while_set_is_dispatched(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct reader r = { 0 };
    r.n = notifier_new_checked(true);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, false, reader_read,
                                                NULL, &r), 0);
    harness_drain(ctx);
    assert_int_equal(r.reads, 1);
    assert_int_equal(r.cleared, 1);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, false, NULL, NULL,
                                                NULL), 0);
    spindle_ctx_free(ctx);
    spindle_notifier_free(r.n);
}

static void event_notifier_dispatches_once_per_set_and_clear(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct reader r = { 0 };
    r.n = notifier_new_checked(false);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, false, reader_read,
                                                NULL, &r), 0);
    for (unsigned i = 1; i <= 10; i++) {
        /* Several sets coalesce into one dispatch. */
        assert_int_equal(spindle_notifier_set(r.n), 0);
        assert_int_equal(spindle_notifier_set(r.n), 0);
        harness_drain(ctx);
        assert_int_equal(r.reads, i);
        assert_int_equal(r.cleared, i);
    }

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, false, NULL, NULL,
                                                NULL), 0);
    spindle_ctx_free(ctx);
    spindle_notifier_free(r.n);
}

static void event_notifier_removal_stops_dispatch(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct reader r = { 0 };
    r.n = notifier_new_checked(false);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, false, reader_read,
                                                reader_poll, &r), 0);
    assert_int_equal(spindle_set_event_notifier(ctx, r.n, false, NULL, NULL,
                                                NULL), 0);
    unsigned polls_before = r.poll_calls;
    assert_int_equal(spindle_notifier_set(r.n), 0);
    r.work = true;
    assert_false(harness_poll(ctx, false));
    harness_drain(ctx);
    assert_int_equal(r.reads, 0);
    assert_int_equal(r.poll_calls, polls_before);
    /* The loop did not consume the notification. */
    assert_true(spindle_notifier_test_and_clear(r.n));

    spindle_ctx_free(ctx);
    spindle_notifier_free(r.n);
}

/* io_read removes its own registration. */
struct self_remove {
    spindle_ctx *ctx;
    spindle_notifier *n;
    unsigned reads;
};

static void self_remove_read(void *opaque)
{
    struct self_remove *s = opaque;
    s->reads++;
    spindle_set_event_notifier(s->ctx, s->n, false, NULL, NULL, NULL);
    /* Left set on purpose: a later dispatch would show up in reads. */
}

static void event_notifier_removed_by_its_own_callback_is_not_called_again(
    void **state)
{
    (void)state;
    struct self_remove s = { 0 };
    s.ctx = harness_ctx_new();
    s.n = notifier_new_checked(false);

    assert_int_equal(spindle_set_event_notifier(s.ctx, s.n, false,
                                                self_remove_read, NULL, &s), 0);
    assert_int_equal(spindle_notifier_set(s.n), 0);
    assert_true(harness_poll(s.ctx, false));
    assert_int_equal(s.reads, 1);
    harness_drain(s.ctx);
    assert_int_equal(s.reads, 1);
    assert_true(spindle_notifier_test_and_clear(s.n));

    spindle_ctx_free(s.ctx);
    spindle_notifier_free(s.n);
}

static void event_notifier_reregistration_replaces_the_callbacks(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct reader r = { 0 };
    r.n = notifier_new_checked(false);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, false, reader_read,
                                                NULL, &r), 0);
    assert_int_equal(spindle_set_event_notifier(ctx, r.n, false, other_read,
                                                NULL, &r), 0);
    assert_int_equal(spindle_notifier_set(r.n), 0);
    harness_drain(ctx);
    assert_int_equal(r.reads, 1000);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, false, NULL, NULL,
                                                NULL), 0);
    spindle_ctx_free(ctx);
    spindle_notifier_free(r.n);
}

static void event_notifier_can_move_to_another_context(void **state)
{
    (void)state;
    spindle_ctx *a = harness_ctx_new();
    spindle_ctx *b = harness_ctx_new();
    struct reader r = { 0 };
    r.n = notifier_new_checked(false);

    assert_int_equal(spindle_set_event_notifier(a, r.n, false, reader_read,
                                                NULL, &r), 0);
    assert_int_equal(spindle_set_event_notifier(a, r.n, false, NULL, NULL,
                                                NULL), 0);
    assert_int_equal(spindle_set_event_notifier(b, r.n, false, reader_read,
                                                NULL, &r), 0);
    assert_int_equal(spindle_notifier_set(r.n), 0);
    assert_false(harness_poll(a, false));
    assert_int_equal(r.reads, 0);
    assert_true(harness_poll(b, false));
    assert_int_equal(r.reads, 1);

    assert_int_equal(spindle_set_event_notifier(b, r.n, false, NULL, NULL,
                                                NULL), 0);
    spindle_ctx_free(a);
    spindle_ctx_free(b);
    spindle_notifier_free(r.n);
}

static void *set_thread(void *opaque)
{
    spindle_notifier_set(opaque);
    return NULL;
}

static void event_notifier_set_from_another_thread_wakes_blocking_poll(
    void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct reader r = { 0 };
    r.n = notifier_new_checked(false);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, false, reader_read,
                                                NULL, &r), 0);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, set_thread, r.n), 0);
    /* Blocks in the back-end until the fd becomes readable. */
    harness_poll_until(ctx, &r.got, 1000);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(r.reads, 1);
    assert_int_equal(r.cleared, 1);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, false, NULL, NULL,
                                                NULL), 0);
    spindle_ctx_free(ctx);
    spindle_notifier_free(r.n);
}

/* ------------------------------------------------------------------------
 * io_poll
 */

static void event_notifier_io_poll_is_polled(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct reader r = { 0 };
    r.n = notifier_new_checked(false);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, false, reader_read,
                                                reader_poll, &r), 0);
    /* Work shows up in user space only (the notifier stays clear): only
     * io_poll can see it. */
    r.work = true;
    assert_true(harness_poll(ctx, false));
    assert_true(r.poll_calls >= 1);
    assert_int_equal(r.poll_handled, 1);
    assert_int_equal(r.reads, 0);

    /* Called again on later iterations; finding nothing is no progress. */
    unsigned calls = r.poll_calls;
    assert_false(harness_poll(ctx, false));
    assert_true(r.poll_calls > calls);
    assert_int_equal(r.poll_handled, 1);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, false, NULL, NULL,
                                                NULL), 0);
    spindle_ctx_free(ctx);
    spindle_notifier_free(r.n);
}

static void event_notifier_with_only_io_poll_is_polled(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct reader r = { 0 };
    r.n = notifier_new_checked(false);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, false, NULL,
                                                reader_poll, &r), 0);
    r.work = true;
    assert_true(harness_poll(ctx, false));
    assert_int_equal(r.poll_handled, 1);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, false, NULL, NULL,
                                                NULL), 0);
    spindle_ctx_free(ctx);
    spindle_notifier_free(r.n);
}

/* ------------------------------------------------------------------------
 * External notifiers and spindle_disable_external
 */

static void external_event_notifier_is_not_dispatched_while_disabled(
    void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct reader r = { 0 };
    r.n = notifier_new_checked(false);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, true, reader_read,
                                                NULL, &r), 0);
    spindle_disable_external(ctx);
    assert_int_equal(spindle_notifier_set(r.n), 0);
    for (int i = 0; i < 10; i++) {
        assert_false(harness_poll(ctx, false));
    }
    assert_int_equal(r.reads, 0);

    spindle_enable_external(ctx);
    assert_int_equal(spindle_set_event_notifier(ctx, r.n, true, NULL, NULL,
                                                NULL), 0);
    spindle_ctx_free(ctx);
    spindle_notifier_free(r.n);
}

static void external_event_notifier_set_while_disabled_is_dispatched_after_enable(
    void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct reader r = { 0 };
    r.n = notifier_new_checked(false);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, true, reader_read,
                                                NULL, &r), 0);
    spindle_disable_external(ctx);
    assert_int_equal(spindle_notifier_set(r.n), 0);
    harness_drain(ctx);
    assert_int_equal(r.reads, 0);

    spindle_enable_external(ctx);
    harness_poll_until(ctx, &r.got, 1000);
    assert_int_equal(r.reads, 1);
    assert_int_equal(r.cleared, 1);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, true, NULL, NULL,
                                                NULL), 0);
    spindle_ctx_free(ctx);
    spindle_notifier_free(r.n);
}

static void disable_external_nests(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct reader r = { 0 };
    r.n = notifier_new_checked(false);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, true, reader_read,
                                                NULL, &r), 0);
    spindle_disable_external(ctx);
    spindle_disable_external(ctx);
    assert_int_equal(spindle_notifier_set(r.n), 0);
    spindle_enable_external(ctx);
    /* One disable is still in force. */
    harness_drain(ctx);
    assert_int_equal(r.reads, 0);

    spindle_enable_external(ctx);
    harness_drain(ctx);
    assert_int_equal(r.reads, 1);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, true, NULL, NULL,
                                                NULL), 0);
    spindle_ctx_free(ctx);
    spindle_notifier_free(r.n);
}

static void external_event_notifier_io_poll_is_not_called_while_disabled(
    void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct reader r = { 0 };
    r.n = notifier_new_checked(false);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, true, reader_read,
                                                reader_poll, &r), 0);
    spindle_disable_external(ctx);
    r.work = true;
    for (int i = 0; i < 10; i++) {
        assert_false(harness_poll(ctx, false));
    }
    assert_int_equal(r.poll_calls, 0);
    assert_int_equal(r.poll_handled, 0);

    spindle_enable_external(ctx);
    assert_true(harness_poll(ctx, false));
    assert_int_equal(r.poll_handled, 1);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, true, NULL, NULL,
                                                NULL), 0);
    spindle_ctx_free(ctx);
    spindle_notifier_free(r.n);
}

static void internal_event_notifier_is_dispatched_while_external_disabled(
    void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct reader r = { 0 };
    r.n = notifier_new_checked(false);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, false, reader_read,
                                                NULL, &r), 0);
    spindle_disable_external(ctx);
    assert_int_equal(spindle_notifier_set(r.n), 0);
    harness_poll_until(ctx, &r.got, 1000);
    assert_int_equal(r.reads, 1);
    spindle_enable_external(ctx);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, false, NULL, NULL,
                                                NULL), 0);
    spindle_ctx_free(ctx);
    spindle_notifier_free(r.n);
}

/* ------------------------------------------------------------------------
 * Bad input
 */

static void notifier_null_handle_is_rejected(void **state)
{
    (void)state;
    assert_int_equal(spindle_notifier_set(NULL), -EINVAL);
    assert_false(spindle_notifier_test_and_clear(NULL));
    assert_int_equal(spindle_notifier_fd(NULL), -EINVAL);
    spindle_notifier_free(NULL);
}

static void set_event_notifier_with_null_notifier_returns_einval(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    unsigned count = 0;
    assert_int_equal(spindle_set_event_notifier(ctx, NULL, false,
                                                harness_count_cb, NULL, &count),
                     -EINVAL);
    assert_false(harness_poll(ctx, false));
    assert_int_equal(count, 0);
    spindle_ctx_free(ctx);
}

static void set_event_notifier_with_null_ctx_returns_einval(void **state)
{
    (void)state;
    struct reader r = { 0 };
    r.n = notifier_new_checked(true);
    assert_int_equal(spindle_set_event_notifier(NULL, r.n, false, reader_read,
                                                NULL, &r), -EINVAL);
    /* The notifier is untouched. */
    assert_true(spindle_notifier_test_and_clear(r.n));
    spindle_notifier_free(r.n);
}

static void set_event_notifier_poll_with_null_arguments_is_ignored(
    void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    spindle_notifier *n = notifier_new_checked(false);
    unsigned count = 0;

    spindle_set_event_notifier_poll(ctx, NULL, harness_count_cb,
                                    harness_count_cb);
    spindle_set_event_notifier_poll(NULL, n, harness_count_cb,
                                    harness_count_cb);
    /* And on a notifier that is not registered. */
    spindle_set_event_notifier_poll(ctx, n, harness_count_cb,
                                    harness_count_cb);
    harness_drain(ctx);
    assert_int_equal(count, 0);

    spindle_ctx_free(ctx);
    spindle_notifier_free(n);
}

/* ------------------------------------------------------------------------
 * Context teardown
 */

static void ctx_free_leaves_a_registered_notifier_usable(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    struct reader r = { 0 };
    r.n = notifier_new_checked(false);
    int fd = spindle_notifier_fd(r.n);

    assert_int_equal(spindle_set_event_notifier(ctx, r.n, true, reader_read,
                                                reader_poll, &r), 0);
    assert_int_equal(spindle_notifier_set(r.n), 0);
    spindle_ctx_free(ctx); /* no callback runs, the notifier is kept */
    assert_int_equal(r.reads, 0);

    assert_int_equal(spindle_notifier_fd(r.n), fd);
    assert_true(fcntl(fd, F_GETFD) != -1);
    assert_true(fd_readable(fd));
    assert_true(spindle_notifier_test_and_clear(r.n));
    assert_int_equal(spindle_notifier_set(r.n), 0);
    assert_true(spindle_notifier_test_and_clear(r.n));

    /* And it can be registered with a new context. */
    spindle_ctx *ctx2 = harness_ctx_new();
    assert_int_equal(spindle_set_event_notifier(ctx2, r.n, false, reader_read,
                                                NULL, &r), 0);
    assert_int_equal(spindle_notifier_set(r.n), 0);
    harness_drain(ctx2);
    assert_int_equal(r.reads, 1);
    assert_int_equal(spindle_set_event_notifier(ctx2, r.n, false, NULL, NULL,
                                                NULL), 0);
    spindle_ctx_free(ctx2);
    spindle_notifier_free(r.n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST(notifier_new_inactive_is_clear),
        TEST(notifier_new_active_is_set),
        TEST(notifier_fd_is_open),
        TEST(notifier_set_makes_its_fd_readable),
        TEST(notifier_test_and_clear_makes_its_fd_unreadable),
        TEST(notifier_sets_before_a_clear_coalesce),
        TEST(notifier_can_be_set_again_after_a_clear),
        TEST(event_notifier_dispatches_io_read_with_its_opaque_when_set),
        TEST(event_notifier_is_not_dispatched_while_clear),
        TEST(event_notifier_registered_while_set_is_dispatched),
        TEST(event_notifier_dispatches_once_per_set_and_clear),
        TEST(event_notifier_removal_stops_dispatch),
        TEST(event_notifier_removed_by_its_own_callback_is_not_called_again),
        TEST(event_notifier_reregistration_replaces_the_callbacks),
        TEST(event_notifier_can_move_to_another_context),
        TEST(event_notifier_set_from_another_thread_wakes_blocking_poll),
        TEST(event_notifier_io_poll_is_polled),
        TEST(event_notifier_with_only_io_poll_is_polled),
        TEST(external_event_notifier_is_not_dispatched_while_disabled),
        TEST(external_event_notifier_set_while_disabled_is_dispatched_after_enable),
        TEST(disable_external_nests),
        TEST(external_event_notifier_io_poll_is_not_called_while_disabled),
        TEST(internal_event_notifier_is_dispatched_while_external_disabled),
        TEST(notifier_null_handle_is_rejected),
        TEST(set_event_notifier_with_null_notifier_returns_einval),
        TEST(set_event_notifier_with_null_ctx_returns_einval),
        TEST(set_event_notifier_poll_with_null_arguments_is_ignored),
        TEST(ctx_free_leaves_a_registered_notifier_usable),
    };
    return RUN_TESTS(tests);
}
