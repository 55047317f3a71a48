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
 * The fixture: a context, a notifier and a reader that watches it
 *
 * The teardown removes whatever registration a test leaves in force, and
 * checks that the removal succeeds, so that every test still checks it and
 * a test that fails half-way leaks neither the context nor the notifier's
 * fd into the tests after it.
 */

struct fixture {
    spindle_ctx *ctx;
    spindle_notifier *n;
    struct reader r;            /* r.n is n; the opaque of register_reader */
    spindle_ctx *registered_in; /* where the teardown must remove n, if set */
    bool external;              /* how n was registered there */
};

/* Register n in ctx with the reader as opaque; the teardown removes it. */
static void register_reader(struct fixture *f, spindle_ctx *ctx,
                            bool external, spindle_io_fn *io_read,
                            spindle_poll_fn *io_poll)
{
    assert_int_equal(spindle_set_event_notifier(ctx, f->n, external, io_read,
                                                io_poll, &f->r), 0);
    f->registered_in = ctx;
    f->external = external;
}

/* Returns what the removal returned; the teardown has nothing left to remove
 * either way. */
static int unregister_reader(struct fixture *f)
{
    spindle_ctx *ctx = f->registered_in;
    f->registered_in = NULL;
    return spindle_set_event_notifier(ctx, f->n, f->external, NULL, NULL,
                                      NULL);
}

static int fixture_setup(void **state, bool active)
{
    struct fixture *f = harness_fixture_new(state, sizeof(*f));
    f->ctx = harness_ctx_new();
    f->n = notifier_new_checked(active);
    f->r.n = f->n;
    return 0;
}

/* Most tests start from a clear notifier... */
static int setup(void **state)
{
    return fixture_setup(state, false);
}

/* ...those about a notifier created set start from one. */
static int setup_active(void **state)
{
    return fixture_setup(state, true);
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    int removed = f->registered_in ? unregister_reader(f) : 0;
    spindle_ctx_free(f->ctx);
    spindle_notifier_free(f->n);
    free(f);
    harness_watchdog_disarm(state);
    /* Checked last, so that a failed removal still frees everything. */
    assert_int_equal(removed, 0);
    return 0;
}

#define NOTIFIER_TEST(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
#define ACTIVE_NOTIFIER_TEST(fn) \
    cmocka_unit_test_setup_teardown(fn, setup_active, teardown)

/* ------------------------------------------------------------------------
 * The notifier object
 */

static void notifier_new_inactive_is_clear(void **state)
{
    struct fixture *f = *state;
    assert_false(spindle_notifier_test_and_clear(f->n));
}

static void notifier_new_active_is_set(void **state)
{
    struct fixture *f = *state;
    assert_true(spindle_notifier_test_and_clear(f->n));
    assert_false(spindle_notifier_test_and_clear(f->n));
}

static void notifier_fd_is_open(void **state)
{
    struct fixture *f = *state;
    int fd = spindle_notifier_fd(f->n);
    assert_true(fd >= 0);
    assert_true(fcntl(fd, F_GETFD) != -1);
}

static void notifier_set_makes_its_fd_readable(void **state)
{
    struct fixture *f = *state;
    int fd = spindle_notifier_fd(f->n);

    assert_false(fd_readable(fd));
    assert_int_equal(spindle_notifier_set(f->n), 0);
    assert_true(fd_readable(fd));
}

static void notifier_test_and_clear_makes_its_fd_unreadable(void **state)
{
    struct fixture *f = *state;
    int fd = spindle_notifier_fd(f->n);

    assert_int_equal(spindle_notifier_set(f->n), 0);
    assert_true(spindle_notifier_test_and_clear(f->n));
    assert_false(fd_readable(fd));
}

static void notifier_sets_before_a_clear_coalesce(void **state)
{
    struct fixture *f = *state;

    for (int i = 0; i < 5; i++) {
        assert_int_equal(spindle_notifier_set(f->n), 0);
    }
    assert_true(spindle_notifier_test_and_clear(f->n));
    assert_false(spindle_notifier_test_and_clear(f->n));
    assert_false(fd_readable(spindle_notifier_fd(f->n)));
}

static void notifier_can_be_set_again_after_a_clear(void **state)
{
    struct fixture *f = *state;

    for (int i = 0; i < 3; i++) {
        assert_int_equal(spindle_notifier_set(f->n), 0);
        assert_true(spindle_notifier_test_and_clear(f->n));
        assert_false(spindle_notifier_test_and_clear(f->n));
    }
}

/* ------------------------------------------------------------------------
 * Registration and dispatch
 */

static void event_notifier_dispatches_io_read_with_its_opaque_when_set(
    void **state)
{
    struct fixture *f = *state;

    register_reader(f, f->ctx, false, reader_read, NULL);
    assert_int_equal(spindle_notifier_set(f->n), 0);
    assert_true(harness_poll(f->ctx, false));
    assert_int_equal(f->r.reads, 1);
    assert_int_equal(f->r.cleared, 1);
    assert_ptr_equal(f->r.last_opaque, &f->r);
}

static void event_notifier_is_not_dispatched_while_clear(void **state)
{
    struct fixture *f = *state;

    register_reader(f, f->ctx, false, reader_read, NULL);
    assert_false(harness_poll(f->ctx, false));
    harness_drain(f->ctx);
    assert_int_equal(f->r.reads, 0);

    /* Set then cleared by the user before the loop looked: still nothing. */
    assert_int_equal(spindle_notifier_set(f->n), 0);
    assert_true(spindle_notifier_test_and_clear(f->n));
    assert_false(harness_poll(f->ctx, false));
    assert_int_equal(f->r.reads, 0);
}

static void event_notifier_registered_while_set_is_dispatched(void **state)
{
    struct fixture *f = *state;

    register_reader(f, f->ctx, false, reader_read, NULL);
    harness_drain(f->ctx);
    assert_int_equal(f->r.reads, 1);
    assert_int_equal(f->r.cleared, 1);
}

static void event_notifier_dispatches_once_per_set_and_clear(void **state)
{
    struct fixture *f = *state;

    register_reader(f, f->ctx, false, reader_read, NULL);
    for (unsigned i = 1; i <= 10; i++) {
        /* Several sets coalesce into one dispatch. */
        assert_int_equal(spindle_notifier_set(f->n), 0);
        assert_int_equal(spindle_notifier_set(f->n), 0);
        harness_drain(f->ctx);
        assert_int_equal(f->r.reads, i);
        assert_int_equal(f->r.cleared, i);
    }
}

static void event_notifier_removal_stops_dispatch(void **state)
{
    struct fixture *f = *state;

    register_reader(f, f->ctx, false, reader_read, reader_poll);
    assert_int_equal(unregister_reader(f), 0);
    unsigned polls_before = f->r.poll_calls;
    assert_int_equal(spindle_notifier_set(f->n), 0);
    f->r.work = true;
    assert_false(harness_poll(f->ctx, false));
    harness_drain(f->ctx);
    assert_int_equal(f->r.reads, 0);
    assert_int_equal(f->r.poll_calls, polls_before);
    /* The loop did not consume the notification. */
    assert_true(spindle_notifier_test_and_clear(f->n));
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
    struct fixture *f = *state;
    struct self_remove s = { .ctx = f->ctx, .n = f->n };

    /* Not register_reader: the callback, not the teardown, removes it. */
    assert_int_equal(spindle_set_event_notifier(s.ctx, s.n, false,
                                                self_remove_read, NULL, &s), 0);
    assert_int_equal(spindle_notifier_set(s.n), 0);
    assert_true(harness_poll(s.ctx, false));
    assert_int_equal(s.reads, 1);
    harness_drain(s.ctx);
    assert_int_equal(s.reads, 1);
    assert_true(spindle_notifier_test_and_clear(s.n));
}

static void event_notifier_reregistration_replaces_the_callbacks(void **state)
{
    struct fixture *f = *state;

    register_reader(f, f->ctx, false, reader_read, NULL);
    register_reader(f, f->ctx, false, other_read, NULL);
    assert_int_equal(spindle_notifier_set(f->n), 0);
    harness_drain(f->ctx);
    assert_int_equal(f->r.reads, 1000);
}

static void event_notifier_can_move_to_another_context(void **state)
{
    struct fixture *f = *state;
    spindle_ctx *a = f->ctx;
    spindle_ctx *b = harness_ctx_new();

    register_reader(f, a, false, reader_read, NULL);
    assert_int_equal(unregister_reader(f), 0);
    register_reader(f, b, false, reader_read, NULL);
    assert_int_equal(spindle_notifier_set(f->n), 0);
    assert_false(harness_poll(a, false));
    assert_int_equal(f->r.reads, 0);
    assert_true(harness_poll(b, false));
    assert_int_equal(f->r.reads, 1);

    /* b is this test's own: the registration in it must go before it. */
    assert_int_equal(unregister_reader(f), 0);
    spindle_ctx_free(b);
}

static void *set_thread(void *opaque)
{
    spindle_notifier_set(opaque);
    return NULL;
}

static void event_notifier_set_from_another_thread_wakes_blocking_poll(
    void **state)
{
    struct fixture *f = *state;

    register_reader(f, f->ctx, false, reader_read, NULL);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, set_thread, f->n), 0);
    /* Blocks in the back-end until the fd becomes readable. */
    harness_poll_until(f->ctx, &f->r.got, 1000);
    assert_int_equal(pthread_join(th, NULL), 0);
    assert_int_equal(f->r.reads, 1);
    assert_int_equal(f->r.cleared, 1);
}

/* ------------------------------------------------------------------------
 * io_poll
 */

static void event_notifier_io_poll_is_polled(void **state)
{
    struct fixture *f = *state;

    register_reader(f, f->ctx, false, reader_read, reader_poll);
    /* Work shows up in user space only (the notifier stays clear): only
     * io_poll can see it. */
    f->r.work = true;
    assert_true(harness_poll(f->ctx, false));
    assert_true(f->r.poll_calls >= 1);
    assert_int_equal(f->r.poll_handled, 1);
    assert_int_equal(f->r.reads, 0);

    /* Called again on later iterations; finding nothing is no progress. */
    unsigned calls = f->r.poll_calls;
    assert_false(harness_poll(f->ctx, false));
    assert_true(f->r.poll_calls > calls);
    assert_int_equal(f->r.poll_handled, 1);
}

static void event_notifier_with_only_io_poll_is_polled(void **state)
{
    struct fixture *f = *state;

    register_reader(f, f->ctx, false, NULL, reader_poll);
    f->r.work = true;
    assert_true(harness_poll(f->ctx, false));
    assert_int_equal(f->r.poll_handled, 1);
}

/* ------------------------------------------------------------------------
 * External notifiers and spindle_disable_external
 */

static void external_event_notifier_is_not_dispatched_while_disabled(
    void **state)
{
    struct fixture *f = *state;

    register_reader(f, f->ctx, true, reader_read, NULL);
    spindle_disable_external(f->ctx);
    assert_int_equal(spindle_notifier_set(f->n), 0);
    for (int i = 0; i < 10; i++) {
        assert_false(harness_poll(f->ctx, false));
    }
    assert_int_equal(f->r.reads, 0);

    spindle_enable_external(f->ctx);
}

static void external_event_notifier_set_while_disabled_is_dispatched_after_enable(
    void **state)
{
    struct fixture *f = *state;

    register_reader(f, f->ctx, true, reader_read, NULL);
    spindle_disable_external(f->ctx);
    assert_int_equal(spindle_notifier_set(f->n), 0);
    harness_drain(f->ctx);
    assert_int_equal(f->r.reads, 0);

    spindle_enable_external(f->ctx);
    harness_poll_until(f->ctx, &f->r.got, 1000);
    assert_int_equal(f->r.reads, 1);
    assert_int_equal(f->r.cleared, 1);
}

static void disable_external_nests(void **state)
{
    struct fixture *f = *state;

    register_reader(f, f->ctx, true, reader_read, NULL);
    spindle_disable_external(f->ctx);
    spindle_disable_external(f->ctx);
    assert_int_equal(spindle_notifier_set(f->n), 0);
    spindle_enable_external(f->ctx);
    /* One disable is still in force. */
    harness_drain(f->ctx);
    assert_int_equal(f->r.reads, 0);

    spindle_enable_external(f->ctx);
    harness_drain(f->ctx);
    assert_int_equal(f->r.reads, 1);
}

static void external_event_notifier_io_poll_is_not_called_while_disabled(
    void **state)
{
    struct fixture *f = *state;

    register_reader(f, f->ctx, true, reader_read, reader_poll);
    spindle_disable_external(f->ctx);
    f->r.work = true;
    for (int i = 0; i < 10; i++) {
        assert_false(harness_poll(f->ctx, false));
    }
    assert_int_equal(f->r.poll_calls, 0);
    assert_int_equal(f->r.poll_handled, 0);

    spindle_enable_external(f->ctx);
    assert_true(harness_poll(f->ctx, false));
    assert_int_equal(f->r.poll_handled, 1);
}

static void internal_event_notifier_is_dispatched_while_external_disabled(
    void **state)
{
    struct fixture *f = *state;

    register_reader(f, f->ctx, false, reader_read, NULL);
    spindle_disable_external(f->ctx);
    assert_int_equal(spindle_notifier_set(f->n), 0);
    harness_poll_until(f->ctx, &f->r.got, 1000);
    assert_int_equal(f->r.reads, 1);
    spindle_enable_external(f->ctx);
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
    struct fixture *f = *state;
    unsigned count = 0;
    assert_int_equal(spindle_set_event_notifier(f->ctx, NULL, false,
                                                harness_count_cb, NULL, &count),
                     -EINVAL);
    assert_false(harness_poll(f->ctx, false));
    assert_int_equal(count, 0);
}

static void set_event_notifier_with_null_ctx_returns_einval(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(spindle_set_event_notifier(NULL, f->n, false, reader_read,
                                                NULL, &f->r), -EINVAL);
    /* The notifier is untouched. */
    assert_true(spindle_notifier_test_and_clear(f->n));
}

static void set_event_notifier_poll_with_null_arguments_is_ignored(
    void **state)
{
    struct fixture *f = *state;
    unsigned count = 0;

    spindle_set_event_notifier_poll(f->ctx, NULL, harness_count_cb,
                                    harness_count_cb);
    spindle_set_event_notifier_poll(NULL, f->n, harness_count_cb,
                                    harness_count_cb);
    /* And on a notifier that is not registered. */
    spindle_set_event_notifier_poll(f->ctx, f->n, harness_count_cb,
                                    harness_count_cb);
    harness_drain(f->ctx);
    assert_int_equal(count, 0);
}

/* ------------------------------------------------------------------------
 * Context teardown
 */

static void ctx_free_leaves_a_registered_notifier_usable(void **state)
{
    struct fixture *f = *state;
    int fd = spindle_notifier_fd(f->n);

    register_reader(f, f->ctx, true, reader_read, reader_poll);
    assert_int_equal(spindle_notifier_set(f->n), 0);
    spindle_ctx_free(f->ctx); /* no callback runs, the notifier is kept */
    /* The registration went with the context: nothing left to remove. */
    f->ctx = NULL;
    f->registered_in = NULL;
    assert_int_equal(f->r.reads, 0);

    assert_int_equal(spindle_notifier_fd(f->n), fd);
    assert_true(fcntl(fd, F_GETFD) != -1);
    assert_true(fd_readable(fd));
    assert_true(spindle_notifier_test_and_clear(f->n));
    assert_int_equal(spindle_notifier_set(f->n), 0);
    assert_true(spindle_notifier_test_and_clear(f->n));

    /* And it can be registered with a new context. */
    f->ctx = harness_ctx_new();
    register_reader(f, f->ctx, false, reader_read, NULL);
    assert_int_equal(spindle_notifier_set(f->n), 0);
    harness_drain(f->ctx);
    assert_int_equal(f->r.reads, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        NOTIFIER_TEST(notifier_new_inactive_is_clear),
        ACTIVE_NOTIFIER_TEST(notifier_new_active_is_set),
        NOTIFIER_TEST(notifier_fd_is_open),
        NOTIFIER_TEST(notifier_set_makes_its_fd_readable),
        NOTIFIER_TEST(notifier_test_and_clear_makes_its_fd_unreadable),
        NOTIFIER_TEST(notifier_sets_before_a_clear_coalesce),
        NOTIFIER_TEST(notifier_can_be_set_again_after_a_clear),
        NOTIFIER_TEST(event_notifier_dispatches_io_read_with_its_opaque_when_set),
        NOTIFIER_TEST(event_notifier_is_not_dispatched_while_clear),
        ACTIVE_NOTIFIER_TEST(event_notifier_registered_while_set_is_dispatched),
        NOTIFIER_TEST(event_notifier_dispatches_once_per_set_and_clear),
        NOTIFIER_TEST(event_notifier_removal_stops_dispatch),
        NOTIFIER_TEST(event_notifier_removed_by_its_own_callback_is_not_called_again),
        NOTIFIER_TEST(event_notifier_reregistration_replaces_the_callbacks),
        NOTIFIER_TEST(event_notifier_can_move_to_another_context),
        NOTIFIER_TEST(event_notifier_set_from_another_thread_wakes_blocking_poll),
        NOTIFIER_TEST(event_notifier_io_poll_is_polled),
        NOTIFIER_TEST(event_notifier_with_only_io_poll_is_polled),
        NOTIFIER_TEST(external_event_notifier_is_not_dispatched_while_disabled),
        NOTIFIER_TEST(external_event_notifier_set_while_disabled_is_dispatched_after_enable),
        NOTIFIER_TEST(disable_external_nests),
        NOTIFIER_TEST(external_event_notifier_io_poll_is_not_called_while_disabled),
        NOTIFIER_TEST(internal_event_notifier_is_dispatched_while_external_disabled),
        TEST(notifier_null_handle_is_rejected),
        NOTIFIER_TEST(set_event_notifier_with_null_notifier_returns_einval),
        ACTIVE_NOTIFIER_TEST(set_event_notifier_with_null_ctx_returns_einval),
        NOTIFIER_TEST(set_event_notifier_poll_with_null_arguments_is_ignored),
        NOTIFIER_TEST(ctx_free_leaves_a_registered_notifier_usable),
    };
    return RUN_TESTS(tests);
}
