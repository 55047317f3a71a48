/* libspindle-glib: a spindle context inside a real GMainLoop.
 * SPDX-License-Identifier: MIT
 *
 * Built when GLib is found. The GMainLoop also runs a GLib timeout and a
 * g_unix_fd_add watch, and the two loops feed each other: the GLib timeout
 * writes to a pipe that a spindle fd handler reads, a spindle timer writes
 * to a pipe that the GLib watch reads, a spindle pool job completes in the
 * GLib loop. Then, with the GLib loop about to sleep with no limit (its
 * poll function says so), another thread schedules a spindle bottom half:
 * only that can wake the loop and make it quit. A lost wake-up hangs (the
 * watchdog fails it).
 *
 * Callbacks record what they saw; the test body asserts afterwards.
 */
#include "concurrency.h"

#include <errno.h>
#include <glib-unix.h>
#include <glib.h>
#include <stdlib.h>
#include <unistd.h>

#include "spindle-glib.h"

#define TICKS 5

/* The fixture: a GMainContext and its loop, a spindle context attached to
 * it, and two pipes. */
typedef struct glib_fix {
    GMainContext *gctx;
    GMainLoop *loop;
    spindle_ctx *ctx;
    GSource *src;
    pthread_t loop_thread;
    pid_t loop_tid;
    int to_spindle[2]; /* GLib timeout writes, spindle fd handler reads */
    int to_glib[2];    /* spindle timer writes, GLib watch reads */

    unsigned ticks, spindle_reads, glib_reads, timer_fired, job_done;
    unsigned bh_from_glib; /* a spindle BH that a GLib callback scheduled */
    spindle_bh *glib_bh;
    unsigned wrong_thread;
    unsigned lag; /* a tick found its previous byte not yet read */
    atomic_uint idle_phase; /* all of the above done: the loop may idle */
    atomic_uint sleeping;   /* the loop is about to block with no limit */
    atomic_uint bh_runs;
} glib_fix;

static GPollFunc real_poll;
static glib_fix *poll_fix;

/* GLib's poll, noting when the loop is about to sleep with no limit in the
 * idle phase. */
static gint watching_poll(GPollFD *fds, guint n, gint timeout_ms)
{
    if (timeout_ms < 0 && atomic_load(&poll_fix->idle_phase)) {
        atomic_store(&poll_fix->sleeping, 1);
    }
    return real_poll(fds, n, timeout_ms);
}

static int glib_setup(void **state)
{
    glib_fix *f = harness_fixture_new(state, sizeof(*f));
    f->gctx = g_main_context_new();
    f->loop = g_main_loop_new(f->gctx, FALSE);
    real_poll = g_main_context_get_poll_func(f->gctx);
    poll_fix = f;
    g_main_context_set_poll_func(f->gctx, watching_poll);
    f->ctx = spindle_ctx_new();
    assert_non_null(f->ctx);
    f->src = spindle_glib_source_new(f->ctx);
    assert_non_null(f->src);
    g_source_attach(f->src, f->gctx);
    f->loop_thread = pthread_self();
    f->loop_tid = current_tid();
    harness_pipe(f->to_spindle);
    harness_pipe(f->to_glib);
    return 0;
}

static int glib_teardown(void **state)
{
    glib_fix *f = *state;
    /* The source goes before the context it drives. */
    g_source_destroy(f->src);
    g_source_unref(f->src);
    spindle_ctx_free(f->ctx);
    g_main_loop_unref(f->loop);
    g_main_context_unref(f->gctx);
    close(f->to_spindle[0]);
    close(f->to_spindle[1]);
    close(f->to_glib[0]);
    close(f->to_glib[1]);
    free(f);
    return harness_watchdog_disarm(state);
}

static void on_loop_thread(glib_fix *f)
{
    if (!pthread_equal(pthread_self(), f->loop_thread)) {
        f->wrong_thread++;
    }
}

static void drain(int fd)
{
    char buf[64];
    while (read(fd, buf, sizeof(buf)) > 0) {
    }
}

/* Once both loops have served each other, the GLib loop may go idle. */
static void maybe_idle(glib_fix *f)
{
    if (f->ticks == TICKS && f->spindle_reads == TICKS - 1 &&
        f->glib_reads >= 1 &&
        f->timer_fired == 1 && f->job_done == 1 && f->bh_from_glib == 1) {
        atomic_store(&f->idle_phase, 1);
    }
}

static gboolean glib_tick(gpointer data)
{
    glib_fix *f = data;
    on_loop_thread(f);
    /* The byte of the previous tick made the spindle source ready, and a
     * ready source is dispatched before the next tick. */
    if (f->spindle_reads != f->ticks) {
        f->lag++;
    }
    f->ticks++;
    if (f->ticks < TICKS) {
        if (write(f->to_spindle[1], "t", 1) != 1) {
            f->wrong_thread++;
        }
    } else {
        /* The last tick leaves nothing for GLib to wake up for: only the
         * spindle source, prepared after this callback, knows about this
         * bottom half. */
        spindle_bh_schedule(f->glib_bh);
    }
    maybe_idle(f);
    return f->ticks < TICKS ? G_SOURCE_CONTINUE : G_SOURCE_REMOVE;
}

static void spindle_read(void *opaque)
{
    glib_fix *f = opaque;
    on_loop_thread(f);
    drain(f->to_spindle[0]);
    f->spindle_reads++;
    maybe_idle(f);
}

static gboolean glib_fd_ready(gint fd, GIOCondition cond, gpointer data)
{
    glib_fix *f = data;
    (void)cond;
    on_loop_thread(f);
    drain(fd);
    f->glib_reads++;
    maybe_idle(f);
    return G_SOURCE_CONTINUE;
}

static void spindle_timer_cb(void *opaque)
{
    glib_fix *f = opaque;
    on_loop_thread(f);
    f->timer_fired++;
    if (write(f->to_glib[1], "s", 1) != 1) {
        f->wrong_thread++;
    }
    maybe_idle(f);
}

static int job_work(void *arg)
{
    (void)arg;
    return 42;
}

static void job_done(void *arg, int ret)
{
    glib_fix *f = arg;
    on_loop_thread(f);
    f->job_done += ret == 42;
    maybe_idle(f);
}

static void bh_from_glib_cb(void *opaque)
{
    glib_fix *f = opaque;
    on_loop_thread(f);
    f->bh_from_glib++;
    maybe_idle(f);
}

struct waker {
    glib_fix *f;
    spindle_bh *bh;
};

static void quit_bh(void *opaque)
{
    glib_fix *f = opaque;
    on_loop_thread(f);
    atomic_fetch_add(&f->bh_runs, 1);
    g_main_loop_quit(f->loop);
}

static void *waker_main(void *opaque)
{
    struct waker *w = opaque;
    while (!atomic_load(&w->f->sleeping)) {
        sched_yield();
    }
    wait_until_thread_sleeps(w->f->loop_tid);
    spindle_bh_schedule(w->bh);
    return NULL;
}

static void glib_loop_runs_spindle_and_its_own_sources(void **state)
{
    glib_fix *f = *state;

    GSource *tick = g_timeout_source_new(2);
    g_source_set_callback(tick, glib_tick, f, NULL);
    g_source_attach(tick, f->gctx);
    g_source_unref(tick);
    GSource *watch = g_unix_fd_source_new(f->to_glib[0], G_IO_IN);
    g_source_set_callback(watch, (GSourceFunc)(void (*)(void))glib_fd_ready,
                          f, NULL);
    g_source_attach(watch, f->gctx);

    assert_int_equal(spindle_set_fd_handler(f->ctx, f->to_spindle[0], false,
                                            spindle_read, NULL, NULL, f), 0);
    spindle_timer *t = spindle_timer_new(f->ctx, SPINDLE_CLOCK_MONOTONIC,
                                         spindle_timer_cb, f);
    assert_non_null(t);
    spindle_timer_mod(t, spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) + 3000000);
    assert_non_null(spindle_work_submit(f->ctx, job_work, job_done, f));
    f->glib_bh = spindle_bh_new(f->ctx, bh_from_glib_cb, f);
    assert_non_null(f->glib_bh);

    struct waker w = { .f = f };
    w.bh = spindle_bh_new(f->ctx, quit_bh, f);
    assert_non_null(w.bh);
    atomic_init(&f->bh_runs, 0);
    pthread_t thr;
    start_thread(&thr, waker_main, &w);

    g_main_loop_run(f->loop);
    join_thread(thr);

    assert_int_equal(f->wrong_thread, 0);
    assert_int_equal(f->ticks, TICKS);
    assert_int_equal(f->spindle_reads, TICKS - 1);
    assert_int_equal(f->lag, 0);
    assert_int_equal(f->glib_reads, 1);
    assert_int_equal(f->timer_fired, 1);
    assert_int_equal(f->job_done, 1);
    assert_int_equal(f->bh_from_glib, 1);
    /* The quit came from the bottom half, scheduled while the loop slept. */
    assert_int_equal(atomic_load(&f->sleeping), 1);
    assert_int_equal(atomic_load(&f->bh_runs), 1);

    g_source_destroy(watch);
    g_source_unref(watch);
    spindle_timer_free(t);
    spindle_bh_delete(w.bh);
    spindle_bh_delete(f->glib_bh);
    assert_int_equal(spindle_set_fd_handler(f->ctx, f->to_spindle[0], false,
                                            NULL, NULL, NULL, NULL), 0);
}

static void source_new_with_null_ctx_fails_with_einval(void **state)
{
    (void)state;
    errno = 0;
    assert_null(spindle_glib_source_new(NULL));
    assert_int_equal(errno, EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            glib_loop_runs_spindle_and_its_own_sources, glib_setup,
            glib_teardown),
        TEST(source_new_with_null_ctx_fails_with_einval),
    };
    return RUN_TESTS(tests);
}
