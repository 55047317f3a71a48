/* INTERIM loop threads (see loop-thread.h).
 * SPDX-License-Identifier: MIT */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "loop-thread.h"

struct loop_thread {
    pthread_t tid;
    spindle_ctx *ctx;
    atomic_bool quit;
};

static void *loop_thread_main(void *opaque)
{
    loop_thread *t = opaque;
    /* Pairs with the release store in loop_thread_quit. */
    while (!atomic_load_explicit(&t->quit, memory_order_acquire))
        spindle_poll(t->ctx, true);
    return NULL;
}

static void loop_thread_quit(void *opaque) /* a bottom half, on the loop */
{
    loop_thread *t = opaque;
    atomic_store_explicit(&t->quit, true, memory_order_release);
}

loop_thread *loop_thread_new(const spindle_options *o)
{
    loop_thread *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->ctx = spindle_ctx_new_opts(o);
    if (!t->ctx || pthread_create(&t->tid, NULL, loop_thread_main, t) != 0) {
        spindle_ctx_free(t->ctx);
        free(t);
        return NULL;
    }
    return t;
}

spindle_ctx *loop_thread_ctx(loop_thread *t) { return t->ctx; }

void loop_thread_free(loop_thread *t)
{
    /* The flag is set by a bottom half, inside the loop: the loop cannot be
     * asleep past it, and its next check ends the thread. */
    while (spindle_bh_oneshot(t->ctx, loop_thread_quit, t) != 0)
        sched_yield(); /* -ENOMEM: a few bytes; try again */
    pthread_join(t->tid, NULL);
    spindle_ctx_free(t->ctx);
    free(t);
}
