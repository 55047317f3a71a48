/* Loop threads: spindle_thread_new/free/ctx/call.
 * SPDX-License-Identifier: MIT
 *
 * Suite 'concurrency' (also under ThreadSanitizer, which is what checks
 * "no callback after spindle_thread_free returns": callbacks write a plain
 * variable that the test writes after the free, so a late callback is a
 * data race). Callbacks record what they saw; the test body asserts.
 */
#include "concurrency.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MS 1000000LL
#define CHURN SCALE(300u, 50u)

/* The fixture: one loop thread and what its callbacks record. */
typedef struct lt_fix {
    spindle_thread *t;
    spindle_ctx *ctx;
    pthread_t test_thread;
    atomic_uint runs;
    atomic_uint on_test_thread; /* callbacks that ran on the wrong thread */
    atomic_uintptr_t loop_id;   /* pthread_self() of the loop, as seen */
    int pipe[2];
    spindle_timer *timer;
    spindle_bh *bh;
    spindle_thread *self; /* for the callback that frees its own thread */
    long plain;                 /* written by callbacks without atomics */
    atomic_bool armed;          /* the self-freeing handler's registration
                                 * returned */
} lt_fix;

static int lt_setup(void **state)
{
    lt_fix *f = harness_fixture_new(state, sizeof(*f));
    f->test_thread = pthread_self();
    f->t = spindle_thread_new(NULL);
    assert_non_null(f->t);
    f->ctx = spindle_thread_ctx(f->t);
    assert_non_null(f->ctx);
    harness_pipe(f->pipe);
    return 0;
}

static int lt_teardown(void **state)
{
    lt_fix *f = *state;
    spindle_thread_free(f->t); /* NULL once a test freed it */
    close(f->pipe[0]);
    close(f->pipe[1]);
    free(f);
    return harness_watchdog_disarm(state);
}

#define LT_TEST(fn) cmocka_unit_test_setup_teardown(fn, lt_setup, lt_teardown)

static void record(lt_fix *f)
{
    if (pthread_equal(pthread_self(), f->test_thread)) {
        atomic_fetch_add(&f->on_test_thread, 1);
    }
    atomic_store(&f->loop_id, (uintptr_t)pthread_self());
    atomic_fetch_add(&f->runs, 1);
}

static void record_cb(void *opaque)
{
    record(opaque);
}

static void pipe_cb(void *opaque)
{
    lt_fix *f = opaque;
    char buf[16];
    while (read(f->pipe[0], buf, sizeof(buf)) > 0) {
    }
    record(f);
}

static void make_timer_cb(void *opaque)
{
    lt_fix *f = opaque;
    f->timer = spindle_timer_new(f->ctx, SPINDLE_CLOCK_MONOTONIC, record_cb,
                                 f);
}

static void free_timer_cb(void *opaque)
{
    lt_fix *f = opaque;
    spindle_timer_free(f->timer);
}

static int pool_work(void *arg)
{
    (void)arg;
    return 7;
}

static void pool_done(void *arg, int ret)
{
    lt_fix *f = arg;
    if (ret == 7) {
        record(f);
    }
}

/* ------------------------------------------------------------------------
 * Feeding the thread from another one
 */

static void other_threads_feed_the_loop_thread(void **state)
{
    lt_fix *f = *state;
    unsigned n = 0;

    /* A bottom half. */
    assert_int_equal(spindle_bh_oneshot(f->ctx, record_cb, f), 0);
    wait_uint_at_least(&f->runs, ++n);

    /* A timer, created on the loop thread, armed from here. */
    assert_int_equal(spindle_thread_call(f->t, make_timer_cb, f), 0);
    assert_non_null(f->timer);
    spindle_timer_mod(f->timer, spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) +
                                    MS);
    wait_uint_at_least(&f->runs, ++n);
    assert_int_equal(spindle_thread_call(f->t, free_timer_cb, f), 0);

    /* An fd handler. */
    assert_int_equal(spindle_set_fd_handler(f->ctx, f->pipe[0], false,
                                            pipe_cb, NULL, NULL, f), 0);
    assert_int_equal(write(f->pipe[1], "x", 1), 1);
    wait_uint_at_least(&f->runs, ++n);
    assert_int_equal(spindle_set_fd_handler(f->ctx, f->pipe[0], false, NULL,
                                            NULL, NULL, NULL), 0);

    /* The pool: done comes back on the loop thread. */
    assert_non_null(spindle_work_submit(f->ctx, pool_work, pool_done, f));
    wait_uint_at_least(&f->runs, ++n);

    assert_int_equal(atomic_load(&f->runs), n);
    assert_int_equal(atomic_load(&f->on_test_thread), 0);
}

static void thread_call_runs_on_the_loop_and_waits(void **state)
{
    lt_fix *f = *state;
    assert_int_equal(spindle_thread_call(f->t, record_cb, f), 0);
    /* It has returned, so the call ran. */
    assert_int_equal(atomic_load(&f->runs), 1);
    assert_int_equal(atomic_load(&f->on_test_thread), 0);
    assert_int_equal(spindle_thread_call(NULL, record_cb, f), -EINVAL);
    assert_int_equal(spindle_thread_call(f->t, NULL, f), -EINVAL);
}

/* ------------------------------------------------------------------------
 * Stopping
 */

static void spin_cb(void *opaque)
{
    lt_fix *f = opaque;
    f->plain++;
    atomic_fetch_add(&f->runs, 1);
    spindle_bh_schedule(f->bh);
}

static void make_spinner_cb(void *opaque)
{
    lt_fix *f = opaque;
    f->bh = spindle_bh_new(f->ctx, spin_cb, f);
    if (f->bh) {
        spindle_bh_schedule(f->bh);
    }
}

/* The loop never sleeps (a bottom half re-schedules itself); the stop
 * must still get through, and nothing may run once free returned. */
static void free_stops_a_busy_loop_and_no_callback_follows(void **state)
{
    lt_fix *f = *state;
    assert_int_equal(spindle_thread_call(f->t, make_spinner_cb, f), 0);
    assert_non_null(f->bh);
    wait_uint_at_least(&f->runs, 100);
    spindle_thread_free(f->t);
    f->t = NULL;
    /* A data race under TSan if a callback still ran. */
    long seen = f->plain;
    f->plain = -1;
    assert_true(seen >= 100);
    unsigned runs = atomic_load(&f->runs);
    for (int i = 0; i < 1000; i++) {
        sched_yield();
    }
    assert_int_equal(atomic_load(&f->runs), runs);
}

static void free_stops_a_sleeping_loop(void **state)
{
    lt_fix *f = *state;
    assert_int_equal(spindle_thread_call(f->t, record_cb, f), 0);
    spindle_thread_free(f->t); /* asleep with nothing to do */
    f->t = NULL;
}

/* Free right after new, or after a little work, many times: a stop that
 * arrives before, during or after the loop's first sleep is never lost. */
static void new_and_free_in_quick_succession_loses_no_stop(void **state)
{
    (void)state;
    for (unsigned i = 0; i < CHURN; i++) {
        spindle_thread *t = spindle_thread_new(NULL);
        assert_non_null(t);
        if (i % 2) {
            unsigned ran = 0;
            assert_int_equal(spindle_thread_call(t, harness_count_cb, &ran),
                             0);
            assert_int_equal(ran, 1);
        }
        spindle_thread_free(t);
    }
}

/* ------------------------------------------------------------------------
 * Freeing from the thread's own callback
 */

static int loop_threads_alive(void)
{
    DIR *d = opendir("/proc/self/task");
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') {
            continue;
        }
        char path[300], comm[32] = "";
        snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
        FILE *c = fopen(path, "r");
        if (c) {
            if (fgets(comm, sizeof(comm), c) &&
                strncmp(comm, "spindle-loop", 12) == 0) {
                n++;
            }
            fclose(c);
        }
    }
    closedir(d);
    return n;
}

static void self_free_cb(void *opaque)
{
    lt_fix *f = opaque;
    /* The pipe orders the registration before this call, but only the
     * kernel sees that: the acquire makes it visible to ThreadSanitizer
     * too (the registration's notify reads the context this frees). */
    while (!atomic_load_explicit(&f->armed, memory_order_acquire)) {
        sched_yield();
    }
    spindle_thread_free(f->self); /* returns at once */
    atomic_fetch_add(&f->runs, 1);
}

static void free_from_its_own_callback_stops_and_cleans_up(void **state)
{
    lt_fix *f = *state;
    assert_int_equal(loop_threads_alive(), 1);
    f->self = f->t;
    f->t = NULL; /* the thread will own itself */
    /* Triggered through the pipe, not a call into the context: the
     * context goes away with the thread, so no call of ours may still be
     * running in it then (spindle.h, spindle_thread_free). A BH scheduled
     * from here could run and free the context while spindle_bh_oneshot
     * was still notifying it. */
    assert_int_equal(spindle_set_fd_handler(f->ctx, f->pipe[0], false,
                                            self_free_cb, NULL, NULL, f), 0);
    atomic_store_explicit(&f->armed, true, memory_order_release);
    assert_int_equal(write(f->pipe[1], "x", 1), 1);
    wait_uint_at_least(&f->runs, 1);
    /* It stops after the callback and frees the context and itself (the
     * sanitizer builds check the memory); the thread then ends. */
    while (loop_threads_alive() > 0) {
        sched_yield();
    }
}

static void null_and_bad_arguments(void **state)
{
    (void)state;
    spindle_thread_free(NULL);
    assert_null(spindle_thread_ctx(NULL));
    spindle_options bad = { .backend = (spindle_backend)99 };
    errno = 0;
    assert_null(spindle_thread_new(&bad));
    assert_int_equal(errno, EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        LT_TEST(other_threads_feed_the_loop_thread),
        LT_TEST(thread_call_runs_on_the_loop_and_waits),
        LT_TEST(free_stops_a_busy_loop_and_no_callback_follows),
        LT_TEST(free_stops_a_sleeping_loop),
        TEST(new_and_free_in_quick_succession_loses_no_stop),
        LT_TEST(free_from_its_own_callback_stops_and_cleans_up),
        TEST(null_and_bad_arguments),
    };
    return RUN_TESTS(tests);
}
