/* INTERIM: a thread that runs one spindle context's loop until it is freed.
 * spindle's own loop threads (spindle_thread_new, spindle_thread_ctx,
 * spindle_thread_free) replace this once they land; the calls map one to
 * one.
 * SPDX-License-Identifier: MIT */
#ifndef EXAMPLES_LOOP_THREAD_H
#define EXAMPLES_LOOP_THREAD_H

#include <spindle.h>

typedef struct loop_thread loop_thread;

/* Create a context (o: options, NULL for the defaults) and a thread that
 * runs spindle_poll() on it. NULL on failure. */
loop_thread *loop_thread_new(const spindle_options *o);
/* Its context: other threads feed it with bottom halves, timers, handlers. */
spindle_ctx *loop_thread_ctx(loop_thread *t);
/* Stop the thread (from another thread), join it, free the context. */
void loop_thread_free(loop_thread *t);

#endif
