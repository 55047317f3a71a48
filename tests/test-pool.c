/* The thread pool: spindle_work_submit, spindle_work_cancel,
 * spindle_set_pool_params, and freeing a context with work in flight.
 * SPDX-License-Identifier: MIT
 *
 * Suite 'concurrency' (also under ThreadSanitizer), run through
 * spindle_poll and through the embedding API (harness_poll). Work
 * functions run on worker threads and done callbacks inside the loop: they
 * record what they saw in atomics and the test body asserts afterwards.
 * Slow jobs wait on a gate that the test opens; nothing waits on a sleep.
 */
#include "concurrency.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MS 1000000LL
#define JOBS 1000u
#define WORKERS 4

/* A gate that slow work functions wait at until the test opens it. */
typedef struct gate {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool open;
} gate;

static void gate_pass(gate *g)
{
    pthread_mutex_lock(&g->lock);
    while (!g->open) {
        pthread_cond_wait(&g->cond, &g->lock);
    }
    pthread_mutex_unlock(&g->lock);
}

static void gate_open(gate *g)
{
    pthread_mutex_lock(&g->lock);
    g->open = true;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
}

/* The fixture: a context, its loop thread (the test's), a gate, and one
 * record per job. */
typedef struct job {
    struct pool_fix *f;
    unsigned index;
    spindle_work *w;
    atomic_uint work_runs;
    atomic_uint done_runs;
    atomic_int ret;
    atomic_uint wrong_thread; /* done ran off the loop thread */
    uint64_t submit_iter, done_iter;
} job;

typedef struct pool_fix {
    spindle_ctx *ctx;
    pthread_t loop_thread;
    gate gate;
    job jobs[JOBS];
    atomic_uint started, running, max_running, done_total;
    atomic_uint children_left; /* work that submits more work */
} pool_fix;

static int pool_setup(void **state)
{
    pool_fix *f = harness_fixture_new(state, sizeof(*f));
    f->ctx = harness_ctx_new();
    f->loop_thread = pthread_self();
    pthread_mutex_init(&f->gate.lock, NULL);
    pthread_cond_init(&f->gate.cond, NULL);
    for (unsigned i = 0; i < JOBS; i++) {
        f->jobs[i].f = f;
        f->jobs[i].index = i;
        atomic_init(&f->jobs[i].ret, -1);
    }
    return 0;
}

static int pool_teardown(void **state)
{
    pool_fix *f = *state;
    if (f->ctx) {
        gate_open(&f->gate); /* a failed test may have left jobs waiting */
        spindle_ctx_free(f->ctx);
    }
    pthread_cond_destroy(&f->gate.cond);
    pthread_mutex_destroy(&f->gate.lock);
    free(f);
    return harness_watchdog_disarm(state);
}

#define POOL_TEST(fn) cmocka_unit_test_setup_teardown(fn, pool_setup, pool_teardown)

static spindle_stats stats_of(spindle_ctx *ctx)
{
    spindle_stats s;
    assert_int_equal(spindle_get_stats(ctx, &s), 0);
    return s;
}

/* Blocking iterations until n jobs are done (an iteration count bound: a
 * hang is the watchdog's). */
static void poll_until_done(pool_fix *f, unsigned n)
{
    for (unsigned i = 0; atomic_load(&f->done_total) < n; i++) {
        assert_true(i < 100u * JOBS + 1000u);
        harness_poll(f->ctx, true);
    }
}

static void note_running(pool_fix *f, int delta)
{
    unsigned now = atomic_fetch_add(&f->running, (unsigned)delta) + delta;
    unsigned max = atomic_load(&f->max_running);
    while (now > max && !atomic_compare_exchange_weak(&f->max_running, &max,
                                                      now)) {
    }
}

static int quick_work(void *arg)
{
    job *j = arg;
    note_running(j->f, 1);
    atomic_fetch_add(&j->work_runs, 1);
    atomic_fetch_add(&j->f->started, 1);
    note_running(j->f, -1);
    return (int)j->index;
}

static int slow_work(void *arg)
{
    job *j = arg;
    note_running(j->f, 1);
    atomic_fetch_add(&j->work_runs, 1);
    atomic_fetch_add(&j->f->started, 1);
    gate_pass(&j->f->gate);
    note_running(j->f, -1);
    return (int)j->index;
}

static void count_done(void *arg, int ret)
{
    job *j = arg;
    if (!pthread_equal(pthread_self(), j->f->loop_thread)) {
        atomic_fetch_add(&j->wrong_thread, 1);
    }
    atomic_store(&j->ret, ret);
    atomic_fetch_add(&j->done_runs, 1);
    atomic_fetch_add(&j->f->done_total, 1);
}

/* ------------------------------------------------------------------------
 * Completion
 */

static void thousand_jobs_on_four_workers_each_done_once_on_the_loop_thread(
    void **state)
{
    pool_fix *f = *state;
    assert_int_equal(spindle_set_pool_params(f->ctx, 0, WORKERS), 0);
    for (unsigned i = 0; i < JOBS; i++) {
        f->jobs[i].w = spindle_work_submit(f->ctx, quick_work, count_done,
                                           &f->jobs[i]);
        assert_non_null(f->jobs[i].w);
    }
    /* Never inside submit: nothing ran done yet (only the loop runs it). */
    assert_int_equal(atomic_load(&f->done_total), 0);
    assert_true(stats_of(f->ctx).pool_workers <= WORKERS);

    poll_until_done(f, JOBS);
    harness_drain(f->ctx);
    for (unsigned i = 0; i < JOBS; i++) {
        assert_int_equal(atomic_load(&f->jobs[i].work_runs), 1);
        assert_int_equal(atomic_load(&f->jobs[i].done_runs), 1);
        assert_int_equal(atomic_load(&f->jobs[i].ret), (int)i);
        assert_int_equal(atomic_load(&f->jobs[i].wrong_thread), 0);
    }
    assert_true(atomic_load(&f->max_running) <= WORKERS);
    spindle_stats st = stats_of(f->ctx);
    assert_true(st.pool_workers >= 1 && st.pool_workers <= WORKERS);
    assert_int_equal(st.pool_queued, 0);
}

/* A done that submits the next job and waits until that job's work has
 * finished: the finished job sits in the pool while the iteration is still
 * running, and must still be delivered in a later one. */
static void chain_done(void *arg, int ret);

static void chain_submit(pool_fix *f, unsigned i)
{
    job *j = &f->jobs[i];
    j->submit_iter = stats_of(f->ctx).iterations;
    j->w = spindle_work_submit(f->ctx, quick_work, chain_done, j);
    if (!j->w) {
        atomic_fetch_add(&j->wrong_thread, 1); /* reported by the body */
        return;
    }
    while (!atomic_load(&j->work_runs)) {
        sched_yield();
    }
}

static void chain_done(void *arg, int ret)
{
    job *j = arg;
    j->done_iter = stats_of(j->f->ctx).iterations;
    count_done(arg, ret);
    if (j->index + 1 < 100) {
        chain_submit(j->f, j->index + 1);
    }
}

static void done_runs_in_a_later_iteration_than_its_submit(void **state)
{
    pool_fix *f = *state;
    chain_submit(f, 0);
    assert_int_equal(atomic_load(&f->done_total), 0);
    poll_until_done(f, 100);
    for (unsigned i = 0; i < 100; i++) {
        assert_int_equal(atomic_load(&f->jobs[i].wrong_thread), 0);
        assert_int_equal(atomic_load(&f->jobs[i].done_runs), 1);
        assert_true(f->jobs[i].done_iter > f->jobs[i].submit_iter);
    }
}

/* Rounds of WORKERS jobs that finish together (a barrier) while the loop
 * sleeps: their completions race each other for the doorbell and race the
 * loop draining it. A lost wake-up hangs (the watchdog fails it). */
#define RACE_ROUNDS SCALE(3000u, 300u)

static pthread_barrier_t race_barrier;

static int racing_work(void *arg)
{
    pthread_barrier_wait(&race_barrier);
    return quick_work(arg);
}

static void racing_completions_lose_no_wakeup(void **state)
{
    pool_fix *f = *state;
    assert_int_equal(spindle_set_pool_params(f->ctx, WORKERS, WORKERS), 0);
    assert_int_equal(pthread_barrier_init(&race_barrier, NULL, WORKERS), 0);
    for (unsigned round = 1; round <= RACE_ROUNDS; round++) {
        for (unsigned i = 0; i < WORKERS; i++) {
            assert_non_null(spindle_work_submit(f->ctx, racing_work,
                                                count_done, &f->jobs[i]));
        }
        poll_until_done(f, round * WORKERS);
    }
    pthread_barrier_destroy(&race_barrier);
    for (unsigned i = 0; i < WORKERS; i++) {
        assert_int_equal(atomic_load(&f->jobs[i].done_runs), RACE_ROUNDS);
    }
}

/* ------------------------------------------------------------------------
 * Cancellation
 */

static void cancel_half_of_100_slow_jobs(void **state)
{
    pool_fix *f = *state;
    enum { N = 100 };
    assert_int_equal(spindle_set_pool_params(f->ctx, 0, WORKERS), 0);
    for (unsigned i = 0; i < N; i++) {
        f->jobs[i].w = spindle_work_submit(f->ctx, slow_work, count_done,
                                           &f->jobs[i]);
        assert_non_null(f->jobs[i].w);
    }
    /* Four run (and wait at the gate); the rest are queued. */
    wait_uint_at_least(&f->started, WORKERS);
    assert_int_equal(atomic_load(&f->started), WORKERS);

    unsigned cancelled = 0;
    for (unsigned i = 1; i < N; i += 2) {
        int r = spindle_work_cancel(f->jobs[i].w);
        if (atomic_load(&f->jobs[i].work_runs)) {
            assert_int_equal(r, -EBUSY); /* running */
        } else {
            assert_int_equal(r, 0);
            cancelled++;
            /* A second cancel finds it no longer queued. */
            assert_int_equal(spindle_work_cancel(f->jobs[i].w), -EBUSY);
        }
    }
    assert_true(cancelled >= N / 2 - WORKERS);
    /* Never inside cancel. */
    assert_int_equal(atomic_load(&f->done_total), 0);

    gate_open(&f->gate);
    poll_until_done(f, N);
    harness_drain(f->ctx);
    unsigned got_ecanceled = 0;
    for (unsigned i = 0; i < N; i++) {
        job *j = &f->jobs[i];
        assert_int_equal(atomic_load(&j->done_runs), 1);
        assert_int_equal(atomic_load(&j->wrong_thread), 0);
        if (atomic_load(&j->ret) == -ECANCELED) {
            assert_int_equal(i % 2, 1);
            assert_int_equal(atomic_load(&j->work_runs), 0);
            got_ecanceled++;
        } else {
            assert_int_equal(atomic_load(&j->ret), (int)i);
            assert_int_equal(atomic_load(&j->work_runs), 1);
        }
    }
    assert_int_equal(got_ecanceled, cancelled);
    assert_int_equal(atomic_load(&f->done_total), N);
}

static void cancel_of_a_finished_job_returns_ebusy(void **state)
{
    pool_fix *f = *state;
    job *j = &f->jobs[0];
    j->w = spindle_work_submit(f->ctx, quick_work, count_done, j);
    assert_non_null(j->w);
    while (!atomic_load(&j->work_runs)) {
        sched_yield();
    }
    /* Finished or about to: either way, too late. */
    assert_int_equal(spindle_work_cancel(j->w), -EBUSY);
    poll_until_done(f, 1);
    assert_int_equal(atomic_load(&j->ret), 0);
    assert_int_equal(spindle_work_cancel(NULL), -EINVAL);
}

/* ------------------------------------------------------------------------
 * Work that submits more work
 */

#define FANOUT 3
#define DEPTH 3 /* 1 + 3 + 9 + 27 = 40 jobs */

static int spawning_work(void *arg)
{
    job *j = arg;
    pool_fix *f = j->f;
    atomic_fetch_add(&j->work_runs, 1);
    /* Tree numbering: children of i are FANOUT*i+1 .. FANOUT*i+FANOUT. */
    unsigned level = 0;
    for (unsigned first = 0, width = 1; first + width <= j->index;
         first += width, width *= FANOUT) {
        level++;
    }
    if (level < DEPTH) {
        for (unsigned c = 1; c <= FANOUT; c++) {
            job *child = &f->jobs[FANOUT * j->index + c];
            if (!spindle_work_submit(f->ctx, spawning_work, count_done,
                                     child)) {
                atomic_fetch_add(&child->wrong_thread, 1);
            }
        }
    }
    return (int)j->index;
}

static void work_that_submits_more_work(void **state)
{
    pool_fix *f = *state;
    unsigned total = 1 + FANOUT + FANOUT * FANOUT + FANOUT * FANOUT * FANOUT;
    assert_int_equal(spindle_set_pool_params(f->ctx, 0, WORKERS), 0);
    assert_non_null(spindle_work_submit(f->ctx, spawning_work, count_done,
                                        &f->jobs[0]));
    poll_until_done(f, total);
    harness_drain(f->ctx);
    for (unsigned i = 0; i < total; i++) {
        assert_int_equal(atomic_load(&f->jobs[i].wrong_thread), 0);
        assert_int_equal(atomic_load(&f->jobs[i].work_runs), 1);
        assert_int_equal(atomic_load(&f->jobs[i].done_runs), 1);
        assert_int_equal(atomic_load(&f->jobs[i].ret), (int)i);
    }
    assert_int_equal(atomic_load(&f->done_total), total);
}

/* ------------------------------------------------------------------------
 * A done that runs a nested loop to wait for another job
 */

static void nested_waiter_done(void *arg, int ret)
{
    job *j = arg;
    pool_fix *f = j->f;
    count_done(arg, ret);
    job *other = &f->jobs[1];
    other->w = spindle_work_submit(f->ctx, quick_work, count_done, other);
    for (unsigned i = 0; other->w && !atomic_load(&other->done_runs) &&
                         i < 100000; i++) {
        spindle_poll(f->ctx, true);
    }
}

static void done_may_wait_for_another_job_in_a_nested_loop(void **state)
{
    pool_fix *f = *state;
    assert_non_null(spindle_work_submit(f->ctx, quick_work,
                                        nested_waiter_done, &f->jobs[0]));
    poll_until_done(f, 2);
    assert_int_equal(atomic_load(&f->jobs[0].done_runs), 1);
    assert_int_equal(atomic_load(&f->jobs[1].done_runs), 1);
    assert_int_equal(atomic_load(&f->jobs[1].ret), 1);
}

/* ------------------------------------------------------------------------
 * Bounds and idle workers
 */

typedef struct ticker {
    spindle_ctx *ctx;
    spindle_timer *t;
} ticker;

static void tick_cb(void *opaque)
{
    ticker *tk = opaque;
    spindle_timer_mod(tk->t, spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) +
                                 20 * MS);
}

static void idle_workers_above_min_exit(void **state)
{
    pool_fix *f = *state;
    assert_int_equal(spindle_set_pool_params(f->ctx, 1, WORKERS), 0);
    assert_int_equal(stats_of(f->ctx).pool_workers, 1); /* min, at once */
    for (unsigned i = 0; i < WORKERS; i++) {
        assert_non_null(spindle_work_submit(f->ctx, slow_work, count_done,
                                            &f->jobs[i]));
    }
    wait_uint_at_least(&f->started, WORKERS);
    assert_int_equal(stats_of(f->ctx).pool_workers, WORKERS);
    gate_open(&f->gate);
    poll_until_done(f, WORKERS);

    /* Watch the count fall, one iteration per tick of a 20 ms timer that
     * re-arms itself: the loop is idle, its window (hence the workers'
     * spin) closes. The bound is the watchdog. */
    ticker tk = { .ctx = f->ctx };
    tk.t = spindle_timer_new(f->ctx, SPINDLE_CLOCK_MONOTONIC, tick_cb, &tk);
    assert_non_null(tk.t);
    tick_cb(&tk);
    while (stats_of(f->ctx).pool_workers > 1) {
        harness_poll(f->ctx, true);
    }
    spindle_timer_free(tk.t);
    assert_int_equal(stats_of(f->ctx).pool_workers, 1);

    /* The pool still works, and grows again on demand. */
    assert_non_null(spindle_work_submit(f->ctx, quick_work, count_done,
                                        &f->jobs[WORKERS]));
    poll_until_done(f, WORKERS + 1);
}

static void bad_pool_params_are_refused(void **state)
{
    pool_fix *f = *state;
    assert_int_equal(spindle_set_pool_params(NULL, 0, 1), -EINVAL);
    assert_int_equal(spindle_set_pool_params(f->ctx, -1, 1), -EINVAL);
    assert_int_equal(spindle_set_pool_params(f->ctx, 0, 0), -EINVAL);
    assert_int_equal(spindle_set_pool_params(f->ctx, 3, 2), -EINVAL);
    assert_int_equal(spindle_set_pool_params(f->ctx, 2, 2), 0);
    assert_int_equal(stats_of(f->ctx).pool_workers, 2);

    errno = 0;
    assert_null(spindle_work_submit(NULL, quick_work, count_done, NULL));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(spindle_work_submit(f->ctx, NULL, count_done, NULL));
    assert_int_equal(errno, EINVAL);
}

/* ------------------------------------------------------------------------
 * Freeing the context with work queued and running
 */

struct freer {
    pool_fix *f;
    atomic_uint freeing;
};

static void *gate_opener_main(void *opaque)
{
    struct freer *fr = opaque;
    wait_uint_at_least(&fr->freeing, 1);
    /* Give the free a chance to be under way; it is correct either way. */
    for (int i = 0; i < 100; i++) {
        sched_yield();
    }
    gate_open(&fr->f->gate);
    return NULL;
}

/* Work that, once let through, keeps using the context: a submit (refused
 * while the context is being freed) and a oneshot (never run). */
static int clinging_work(void *arg)
{
    job *j = arg;
    atomic_fetch_add(&j->work_runs, 1);
    atomic_fetch_add(&j->f->started, 1);
    gate_pass(&j->f->gate);
    spindle_work *w = spindle_work_submit(j->f->ctx, quick_work, count_done,
                                          j);
    if (!w && errno != ECANCELED) {
        atomic_fetch_add(&j->wrong_thread, 1);
    }
    spindle_bh_oneshot(j->f->ctx, harness_count_cb, &(unsigned){ 0 });
    return 0;
}

static void ctx_free_with_work_queued_and_running(void **state)
{
    pool_fix *f = *state;
    enum { N = 50 };
    assert_int_equal(spindle_set_pool_params(f->ctx, 0, WORKERS), 0);
    /* Some finished and waiting for delivery, some running, some queued. */
    for (unsigned i = 0; i < 5; i++) {
        assert_non_null(spindle_work_submit(f->ctx, quick_work, count_done,
                                            &f->jobs[i]));
    }
    while (atomic_load(&f->started) < 5) {
        sched_yield();
    }
    for (unsigned i = 5; i < N; i++) {
        assert_non_null(spindle_work_submit(f->ctx, clinging_work,
                                            count_done, &f->jobs[i]));
    }
    wait_uint_at_least(&f->started, 5 + WORKERS);

    struct freer fr = { .f = f };
    atomic_init(&fr.freeing, 0);
    pthread_t t;
    start_thread(&t, gate_opener_main, &fr);
    atomic_store(&fr.freeing, 1);
    spindle_ctx_free(f->ctx);
    f->ctx = NULL;
    join_thread(t);

    /* No done ran: the loop never ran again. The four running jobs were
     * waited for; jobs still queued when the free began never ran (how
     * many workers took before that depends on the gate's timing). */
    assert_int_equal(atomic_load(&f->done_total), 0);
    unsigned ran = 0;
    for (unsigned i = 5; i < N; i++) {
        assert_true(atomic_load(&f->jobs[i].work_runs) <= 1);
        ran += atomic_load(&f->jobs[i].work_runs);
        assert_int_equal(atomic_load(&f->jobs[i].wrong_thread), 0);
    }
    assert_true(ran >= WORKERS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        POOL_TEST(thousand_jobs_on_four_workers_each_done_once_on_the_loop_thread),
        POOL_TEST(done_runs_in_a_later_iteration_than_its_submit),
        POOL_TEST(racing_completions_lose_no_wakeup),
        POOL_TEST(cancel_half_of_100_slow_jobs),
        POOL_TEST(cancel_of_a_finished_job_returns_ebusy),
        POOL_TEST(work_that_submits_more_work),
        POOL_TEST(done_may_wait_for_another_job_in_a_nested_loop),
        POOL_TEST(bad_pool_params_are_refused),
        POOL_TEST(ctx_free_with_work_queued_and_running),
        POOL_TEST(idle_workers_above_min_exit),
    };
    return RUN_TESTS(tests);
}
