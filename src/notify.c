/* The notify protocol: waking the loop at no system call unless it sleeps.
 * SPDX-License-Identifier: MIT
 *
 * Two flags form a Dekker pair (docs/notify-protocol.md has the whole
 * argument and tests/spin/notify.pml the model):
 *   notifier: publish work; notified = true; then read notify_me and write
 *             the context's eventfd only if it is set.
 *   loop:     notify_me = true; then read notified and sleep only if clear;
 *             after the wait notify_me = false, then clear notified before
 *             looking at the work.
 * Each side's store must be ordered before its load. Both are seq_cst
 * operations on the two flags, so they fall in one total order: either the
 * notifier sees notify_me and writes the eventfd, or the loop sees notified
 * and does not sleep. A lost wake-up would need each side to miss the
 * other's store, which the total order excludes.
 *
 * notified is set with an exchange (a read-modify-write), not a plain
 * store, so that the loop's clearing exchange, which reads the last value,
 * synchronizes with every notifier whose set came before it, not just the
 * last one: all their published work is then visible to the loop.
 */
#include "ctx.h"

#include <errno.h>

_Thread_local char sp_thread_tag __attribute__((tls_model("initial-exec")));

bool sp_on_loop_thread(const spindle_ctx *ctx)
{
    return atomic_load_explicit(&ctx->owner, memory_order_relaxed) ==
           sp_thread_id();
}

bool sp_notify_request(spindle_ctx *ctx)
{
    /* N2-N4: seq_cst exchange then seq_cst load, the notifier's side of
     * the Dekker pair with sp_notify_announce(). */
    atomic_exchange_explicit(&ctx->notified, true, memory_order_seq_cst);
    /* The doorbell the caller rings then records when it was set: the
     * loop adapts its polling windows to that, not to when its vCPU got
     * to run (polling-windows.c). */
    return atomic_load_explicit(&ctx->notify_me, memory_order_seq_cst);
}

void spindle_notify(spindle_ctx *ctx)
{
    if (ctx && sp_notify_request(ctx)) {
        spindle_notifier_set(&ctx->wake);
    }
}

void sp_notify_remote(spindle_ctx *ctx)
{
    /* The loop thread reads every BH, timer and handler change again before
     * its next wait, so it never needs to wake itself. */
    if (!sp_on_loop_thread(ctx)) {
        spindle_notify(ctx);
    }
}

bool sp_notify_announce(spindle_ctx *ctx)
{
    atomic_store_explicit(&ctx->notify_me, true, memory_order_seq_cst);
    if (atomic_load_explicit(&ctx->notified, memory_order_seq_cst)) {
        /* Work came in since the timeout was computed: do not sleep. */
        atomic_store_explicit(&ctx->notify_me, false, memory_order_relaxed);
        return false;
    }
    return true;
}

void sp_notify_withdraw(spindle_ctx *ctx)
{
    /* Relaxed: a notifier that still sees the flag only writes the eventfd
     * once too often, which the next wait drains. */
    atomic_store_explicit(&ctx->notify_me, false, memory_order_relaxed);
}

bool sp_notify_accept(spindle_ctx *ctx)
{
    /* The relaxed test keeps the common case (no wake-up) to one load; the
     * exchange, seq_cst, synchronizes with the notifiers as explained above
     * and is ordered before the loop reads the BH list. */
    if (!atomic_load_explicit(&ctx->notified, memory_order_relaxed)) {
        return false;
    }
    return atomic_exchange_explicit(&ctx->notified, false,
                                    memory_order_seq_cst);
}

void sp_notify_wake_read(void *opaque)
{
    spindle_ctx *ctx = opaque;
    spindle_notifier_test_and_clear(&ctx->wake);
}

bool sp_notify_wake_poll(void *opaque)
{
    /* A hint only: sp_notify_accept() does the synchronizing read. */
    spindle_ctx *ctx = opaque;
    return atomic_load_explicit(&ctx->notified, memory_order_relaxed);
}
