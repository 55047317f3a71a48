/* Loop threads: a thread that runs a context of its own (QEMU's IOThread).
 * SPDX-License-Identifier: MIT
 *
 * The thread runs blocking iterations until `stop` is set. Stopping is a
 * store followed by spindle_notify(), so it relies on the notify protocol
 * and cannot be lost: either the loop sees the notify before it sleeps and
 * does not sleep, or the notify writes the doorbell and ends the sleep;
 * either way the iteration returns and the loop reads `stop`, which the
 * accepting exchange of `notified` (or the re-check before the sleep) has
 * made visible, since the stopper stored it before notifying. Then the
 * stopper joins the thread, so when spindle_thread_free returns nothing of
 * the context runs any more, and frees the context.
 */
#include "ctx.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>

struct spindle_thread {
    pthread_t tid;
    spindle_ctx *ctx;
    atomic_bool stop;
    bool self_free; /* loop thread only: freed from one of its callbacks */
};

int sp_thread_start(pthread_t *tid, void *(*fn)(void *), void *arg,
                    const char *name)
{
    /* The library's threads block every signal: the program's handlers run
     * on its own threads, and a signal never interrupts a callback's or a
     * work function's system call. The new thread inherits the mask. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int r = pthread_create(tid, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (r != 0) {
        return -r;
    }
    pthread_setname_np(*tid, name);
    return 0;
}

static void *loop_main(void *opaque)
{
    spindle_thread *t = opaque;
    /* Acquire pairs with the release in spindle_thread_free (the notify
     * that follows it is what guarantees the load sees it in time). */
    while (!atomic_load_explicit(&t->stop, memory_order_acquire)) {
        spindle_poll(t->ctx, true);
    }
    if (t->self_free) {
        spindle_ctx_free(t->ctx);
        free(t);
    }
    return NULL;
}

spindle_thread *spindle_thread_new(const spindle_options *opts)
{
    spindle_thread *t = sp_calloc(1, sizeof(*t));
    if (!t) {
        errno = ENOMEM;
        return NULL;
    }
    t->ctx = spindle_ctx_new_opts(opts);
    if (!t->ctx) {
        int e = errno;
        free(t);
        errno = e;
        return NULL;
    }
    atomic_init(&t->stop, false);
    int r = sp_thread_start(&t->tid, loop_main, t, "spindle-loop");
    if (r < 0) {
        spindle_ctx_free(t->ctx);
        free(t);
        errno = -r;
        return NULL;
    }
    return t;
}

void spindle_thread_free(spindle_thread *t)
{
    if (!t) {
        return;
    }
    if (sp_on_loop_thread(t->ctx)) {
        /* From a callback of the loop itself: it cannot wait for itself.
         * The loop reads `stop` when the callback returns, and cleans up. */
        t->self_free = true;
        pthread_detach(pthread_self());
        atomic_store_explicit(&t->stop, true, memory_order_relaxed);
        return;
    }
    atomic_store_explicit(&t->stop, true, memory_order_release);
    spindle_notify(t->ctx);
    pthread_join(t->tid, NULL);
    spindle_ctx_free(t->ctx);
    free(t);
}

spindle_ctx *spindle_thread_ctx(spindle_thread *t)
{
    return t ? t->ctx : NULL;
}

/* spindle_thread_call: the caller waits on this, on its own stack. */
typedef struct thread_call {
    spindle_io_fn *fn;
    void *opaque;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
} thread_call;

static void thread_call_run(void *opaque)
{
    thread_call *c = opaque;
    c->fn(c->opaque);
    pthread_mutex_lock(&c->lock);
    c->done = true;
    /* Signalled under the lock: the waiter frees `c` (its stack frame) as
     * soon as it sees `done`, which it can only read once we unlock. */
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

int spindle_thread_call(spindle_thread *t, spindle_io_fn *fn, void *opaque)
{
    if (!t || !fn) {
        return -EINVAL;
    }
    if (sp_on_loop_thread(t->ctx)) {
        fn(opaque);
        return 0;
    }
    thread_call c = { .fn = fn, .opaque = opaque, .done = false };
    pthread_mutex_init(&c.lock, NULL);
    pthread_cond_init(&c.cond, NULL);
    int r = spindle_bh_oneshot(t->ctx, thread_call_run, &c);
    if (r == 0) {
        pthread_mutex_lock(&c.lock);
        while (!c.done) {
            pthread_cond_wait(&c.cond, &c.lock);
        }
        pthread_mutex_unlock(&c.lock);
    }
    pthread_cond_destroy(&c.cond);
    pthread_mutex_destroy(&c.lock);
    return r;
}
