/* Helpers shared by the concurrency tests (test-threads.c, test-stress.c).
 * SPDX-License-Identifier: MIT
 *
 * Threads hand over with C11 atomics and pthread_join, never with sleeps.
 * Only the test's own thread calls cmocka assertions; helper threads and
 * callbacks count what they saw in atomics.
 *
 * struct looper numbers a loop thread's iterations, for the tests that check
 * "not called after a change returned": a change made from another thread
 * may still be missed by the iteration in progress when it returns, and
 * must be seen by every iteration that starts after that one (spindle.h:
 * "takes effect by the next iteration").
 */
#ifndef SPINDLE_TEST_CONCURRENCY_H
#define SPINDLE_TEST_CONCURRENCY_H

#include "harness.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif
#ifndef UNDER_TSAN
#define UNDER_TSAN 0
#endif

/* Iteration counts: full size natively, smaller under ThreadSanitizer
 * (5-15x slower, and the concurrency programs run once per back-end). */
#if UNDER_TSAN
#define SCALE(native, tsan) (tsan)
#else
#define SCALE(native, tsan) (native)
#endif

/* A full fence between a thread's own earlier accesses and its later ones.
 * Used where the test reasons "if the other thread's iteration started
 * after I read its counter, it sees what I did before": a store (the
 * library's, made by a call that returned) followed by a load (the
 * counter), against the loop's store of the counter followed by its loads
 * of the library's state. That store-then-load pattern needs a full fence
 * on both sides. ThreadSanitizer does not model fences (GCC warns about
 * them); there the sequentially consistent read-modify-writes next to each
 * fence are the barrier on x86 and TSan checks races, not reorderings. */
static inline void full_fence(void)
{
#if !UNDER_TSAN
    atomic_thread_fence(memory_order_seq_cst);
#endif
}

static inline pid_t current_tid(void)
{
    return (pid_t)syscall(SYS_gettid);
}

/* Wait (yielding) until *v >= target. Bounded by the harness watchdog. */
static inline void wait_uint_at_least(atomic_uint *v, unsigned target)
{
    while (atomic_load(v) < target) {
        sched_yield();
    }
}

/* Read thread tid's scheduler state in /proc until it is 'S' (interruptible
 * sleep, i.e. blocked in ppoll/epoll_wait) or after a bounded number of
 * reads. Returns whether it was seen asleep; callers go on either way. */
static inline bool wait_until_thread_sleeps(pid_t tid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/task/%d/stat", (int)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return false;
    }
    bool asleep = false;
    for (unsigned tries = 0; tries < 20000 && !asleep; tries++) {
        char buf[512];
        ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
        if (n <= 0) {
            break;
        }
        buf[n] = '\0';
        /* "tid (comm) S ...": comm may hold spaces and parentheses, so the
         * state follows the last ')'. */
        const char *p = strrchr(buf, ')');
        if (p && p[1] == ' ' && p[2] == 'S') {
            asleep = true;
        } else {
            sched_yield();
        }
    }
    close(fd);
    return asleep;
}

static inline void start_thread(pthread_t *t, void *(*fn)(void *), void *arg)
{
    assert_int_equal(pthread_create(t, NULL, fn, arg), 0);
}

static inline void join_thread(pthread_t t)
{
    assert_int_equal(pthread_join(t, NULL), 0);
}

/* A loop thread: runs blocking iterations on ctx until told to stop, and
 * numbers them. iter counts completed iterations; a callback runs during
 * iteration iter + 1 (read on the loop thread itself). After each
 * iteration, a full fence pairs with the fence that a changing thread puts
 * between its change and its reading of iter (see full_fence()): if that
 * thread read iter == r, then every iteration from r + 2 on started after
 * its change and must see it. */
struct looper {
    spindle_ctx *ctx;
    pthread_t thread;
    atomic_ullong iter;
    atomic_bool stop;
    atomic_int tid;
};

static inline void *looper_main(void *opaque)
{
    struct looper *lp = opaque;
    atomic_store(&lp->tid, (int)current_tid());
    while (!atomic_load(&lp->stop)) {
        spindle_poll(lp->ctx, true);
        atomic_fetch_add(&lp->iter, 1);
        full_fence();
    }
    return NULL;
}

static inline void looper_start(struct looper *lp, spindle_ctx *ctx)
{
    lp->ctx = ctx;
    atomic_init(&lp->iter, 0);
    atomic_init(&lp->stop, false);
    atomic_init(&lp->tid, 0);
    start_thread(&lp->thread, looper_main, lp);
}

/* Stop it: the notify must wake it wherever it is (the stop flag is
 * published before the notify, as any work is). */
static inline void looper_stop(struct looper *lp)
{
    atomic_store(&lp->stop, true);
    spindle_notify(lp->ctx);
    join_thread(lp->thread);
}

/* The number of the iteration in progress, read from a callback. */
static inline unsigned long long looper_current(struct looper *lp)
{
    return atomic_load(&lp->iter) + 1;
}

/* Called by another thread right after a change returned: the number of
 * completed iterations, ordered after the change (see struct looper). */
static inline unsigned long long looper_mark(struct looper *lp)
{
    full_fence();
    return atomic_fetch_add(&lp->iter, 0);
}

/* Make the loop complete iterations until iter >= target, kicking it with
 * spindle_notify() (it may be asleep with nothing to do). */
static inline void looper_advance_to(struct looper *lp,
                                     unsigned long long target)
{
    while (atomic_load(&lp->iter) < target) {
        spindle_notify(lp->ctx);
        sched_yield();
    }
}

#endif
