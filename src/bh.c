/* Bottom halves: calls deferred to the loop thread.
 * SPDX-License-Identifier: MIT
 *
 * Scheduling is lock-free from any thread: a compare-and-swap on the BH's
 * flags decides whether this call changes anything (so repeated schedules
 * coalesce and only the first wakes the loop), and the one call that finds
 * the BH unlisted pushes it on the context's stack with another CAS.
 *
 * The loop takes the whole stack with one exchange and reverses it, which
 * gives the order the pushes were made in: FIFO for the BHs that one thread
 * scheduled. That batch, a "slice", is run in full; BHs scheduled while it
 * runs (a BH scheduling itself included) go on the stack again and wait for
 * the next iteration. A nested spindle_poll() from a BH continues the outer
 * slices before its own, oldest first, so a BH scheduled earlier is never
 * overtaken and a nested loop waiting for one does not hang.
 *
 * Flags: LISTED means "on the stack or in a slice" and is cleared only by
 * the loop when it takes the BH out; SCHEDULED means "run it". cancel just
 * clears SCHEDULED, leaving the BH listed; delete marks it DELETED and
 * frees it at once unless it is listed, in which case the loop frees it
 * when it takes it out. Nothing here allocates, so nothing can fail.
 *
 * A BH cancelled and scheduled again while still listed cannot be moved in
 * the stack, so it is marked REQUEUE with the batch epoch of that schedule.
 * If the loop reaches it in a batch taken before that schedule, it pushes
 * it back instead of running it: a schedule never runs in the iteration
 * that was already under way. Its order among other BHs is then that of
 * the push back, not of the schedule (the one exception to FIFO order).
 *
 * Cost per iteration: O(scheduled BHs), for both running them and the
 * timeout computation that looks for non-idle ones.
 */
#include "ctx.h"

#include <errno.h>
#include <stdlib.h>

enum {
    BH_LISTED = 1u << 0,
    BH_SCHEDULED = 1u << 1,
    BH_IDLE = 1u << 2,
    BH_DELETED = 1u << 3,
    BH_ONESHOT = 1u << 4,
    BH_REQUEUE = 1u << 5,
};

struct spindle_bh {
    spindle_ctx *ctx;
    spindle_io_fn *cb;
    void *opaque;
    atomic_uint flags;
    atomic_uint requeue_epoch; /* ctx->bh_epoch when REQUEUE was set */
    spindle_bh *next;     /* stack or slice; written before publication */
    spindle_bh *all_next; /* loop thread: every non-oneshot BH, for free */
    spindle_bh **all_pprev;
};

struct sp_bh_slice {
    spindle_bh *head;
    sp_bh_slice *next; /* the slice of the next nested level */
};

static void push(spindle_ctx *ctx, spindle_bh *bh)
{
    spindle_bh *head = atomic_load_explicit(&ctx->bh_stack,
                                            memory_order_relaxed);
    do {
        bh->next = head;
        /* Release: the BH's fields and `next` are visible to the loop's
         * acquiring exchange in sp_bh_poll(). */
    } while (!atomic_compare_exchange_weak_explicit(
        &ctx->bh_stack, &head, bh, memory_order_release,
        memory_order_relaxed));
}

static void schedule(spindle_bh *bh, bool idle)
{
    /* Read before the BH is published: once pushed, the loop may run it
     * and free it (a oneshot, or a BH its callback deletes). */
    spindle_ctx *ctx = bh->ctx;
    unsigned old = atomic_load_explicit(&bh->flags, memory_order_relaxed);
    unsigned want;
    do {
        if (old & BH_SCHEDULED) {
            /* Coalesce. An idle schedule never demotes a pending one; a
             * normal schedule promotes a pending idle one. */
            if (idle || !(old & BH_IDLE)) {
                return;
            }
        }
        want = (old | BH_LISTED | BH_SCHEDULED) & ~(unsigned)BH_IDLE;
        if (idle) {
            want |= BH_IDLE;
        }
        if ((old & BH_LISTED) && !(old & BH_SCHEDULED)) {
            /* Cancelled, still listed: see above. The CAS publishes the
             * epoch with the flag. */
            want |= BH_REQUEUE;
            atomic_store_explicit(&bh->requeue_epoch,
                                  atomic_load_explicit(&ctx->bh_epoch,
                                                       memory_order_relaxed),
                                  memory_order_relaxed);
        }
    } while (!atomic_compare_exchange_weak_explicit(
        &bh->flags, &old, want, memory_order_acq_rel, memory_order_relaxed));

    if (!(old & BH_LISTED)) {
        push(ctx, bh);
    }
    if (!idle) {
        sp_notify_remote(ctx);
    }
}

spindle_bh *sp_bh_new_detached(spindle_ctx *ctx, spindle_io_fn *cb,
                               void *opaque)
{
    spindle_bh *bh = sp_calloc(1, sizeof(*bh));
    if (!bh) {
        errno = ENOMEM;
        return NULL;
    }
    bh->ctx = ctx;
    bh->cb = cb;
    bh->opaque = opaque;
    atomic_init(&bh->flags, 0);
    return bh;
}

spindle_bh *spindle_bh_new(spindle_ctx *ctx, spindle_io_fn *cb, void *opaque)
{
    if (!ctx || !cb) {
        errno = EINVAL;
        return NULL;
    }
    spindle_bh *bh = sp_bh_new_detached(ctx, cb, opaque);
    if (!bh) {
        return NULL;
    }
    bh->all_next = ctx->bh_all;
    if (ctx->bh_all) {
        ctx->bh_all->all_pprev = &bh->all_next;
    }
    ctx->bh_all = bh;
    bh->all_pprev = &ctx->bh_all;
    return bh;
}

void spindle_bh_schedule(spindle_bh *bh)
{
    if (bh) {
        schedule(bh, false);
    }
}

void spindle_bh_schedule_idle(spindle_bh *bh)
{
    if (bh) {
        schedule(bh, true);
    }
}

void spindle_bh_cancel(spindle_bh *bh)
{
    if (bh) {
        atomic_fetch_and_explicit(&bh->flags,
                                  ~(unsigned)(BH_SCHEDULED | BH_IDLE),
                                  memory_order_relaxed);
    }
}

void spindle_bh_delete(spindle_bh *bh)
{
    if (!bh) {
        return;
    }
    if (bh->all_pprev) {
        *bh->all_pprev = bh->all_next;
        if (bh->all_next) {
            bh->all_next->all_pprev = bh->all_pprev;
        }
    }
    unsigned old = atomic_fetch_or_explicit(&bh->flags, BH_DELETED,
                                            memory_order_acq_rel);
    atomic_fetch_and_explicit(&bh->flags, ~(unsigned)(BH_SCHEDULED | BH_IDLE),
                              memory_order_relaxed);
    /* LISTED is cleared only on this (the loop) thread, so it cannot
     * change under us: if set, the loop frees the BH when it reaches it. */
    if (!(old & BH_LISTED)) {
        free(bh);
    }
}

int spindle_bh_oneshot(spindle_ctx *ctx, spindle_io_fn *cb, void *opaque)
{
    if (!ctx || !cb) {
        return -EINVAL;
    }
    spindle_bh *bh = sp_calloc(1, sizeof(*bh));
    if (!bh) {
        return -ENOMEM;
    }
    bh->ctx = ctx;
    bh->cb = cb;
    bh->opaque = opaque;
    atomic_init(&bh->flags, BH_ONESHOT);
    schedule(bh, false);
    return 0;
}

static spindle_bh *reverse(spindle_bh *bh)
{
    spindle_bh *out = NULL;
    while (bh) {
        spindle_bh *next = bh->next;
        bh->next = out;
        out = bh;
        bh = next;
    }
    return out;
}

static spindle_bh *take_next(spindle_ctx *ctx)
{
    for (sp_bh_slice *s = ctx->bh_slices; s; s = s->next) {
        if (s->head) {
            spindle_bh *bh = s->head;
            s->head = bh->next;
            return bh;
        }
    }
    return NULL;
}

bool sp_bh_poll(spindle_ctx *ctx)
{
    /* One epoch per iteration: schedules that read this value or a later
     * one came after this iteration took its batch. Only this thread
     * writes it, so no atomic add is needed. */
    unsigned epoch = atomic_load_explicit(&ctx->bh_epoch,
                                          memory_order_relaxed) + 1;
    atomic_store_explicit(&ctx->bh_epoch, epoch, memory_order_relaxed);
    if (!atomic_load_explicit(&ctx->bh_stack, memory_order_relaxed) &&
        !ctx->bh_slices) {
        return false;
    }

    sp_bh_slice slice = {
        .head = reverse(atomic_exchange_explicit(&ctx->bh_stack, NULL,
                                                 memory_order_acquire)),
    };
    sp_bh_slice **tail = &ctx->bh_slices;
    while (*tail) {
        tail = &(*tail)->next;
    }
    *tail = &slice;

    bool progress = false;
    spindle_bh *bh;
    while ((bh = take_next(ctx)) != NULL) {
        unsigned f = atomic_load_explicit(&bh->flags, memory_order_acquire);
        if ((f & (BH_REQUEUE | BH_SCHEDULED)) == (BH_REQUEUE | BH_SCHEDULED) &&
            (int)(atomic_load_explicit(&bh->requeue_epoch,
                                       memory_order_relaxed) - epoch) >= 0) {
            atomic_fetch_and_explicit(&bh->flags, ~(unsigned)BH_REQUEUE,
                                      memory_order_relaxed);
            push(ctx, bh); /* still LISTED: for the next iteration */
            continue;
        }
        /* Clearing LISTED re-opens the BH to scheduling: from here on a
         * schedule pushes it again, for the next iteration. */
        f = atomic_fetch_and_explicit(
            &bh->flags,
            ~(unsigned)(BH_LISTED | BH_SCHEDULED | BH_IDLE | BH_REQUEUE),
            memory_order_acq_rel);
        if (f & BH_DELETED) {
            free(bh);
            continue;
        }
        if (f & BH_SCHEDULED) {
            progress |= !(f & BH_IDLE);
            bh->cb(bh->opaque);
        }
        if (f & BH_ONESHOT) {
            free(bh);
        }
    }

    /* Nested levels have removed their slices, so ours is the last. */
    *tail = NULL;
    return progress;
}

static enum sp_bh_state scan_chain(const spindle_bh *bh, enum sp_bh_state st)
{
    for (; bh; bh = bh->next) {
        unsigned f = atomic_load_explicit(&bh->flags, memory_order_relaxed);
        if ((f & BH_SCHEDULED) && !(f & BH_DELETED)) {
            if (!(f & BH_IDLE)) {
                return SP_BH_BUSY;
            }
            st = SP_BH_IDLE_ONLY;
        }
    }
    return st;
}

enum sp_bh_state sp_bh_scan(spindle_ctx *ctx)
{
    /* Only the loop takes BHs off the stack and only it frees listed ones,
     * so walking the stack here is safe while other threads push. */
    enum sp_bh_state st = scan_chain(
        atomic_load_explicit(&ctx->bh_stack, memory_order_acquire),
        SP_BH_NONE);
    for (sp_bh_slice *s = ctx->bh_slices; s && st != SP_BH_BUSY; s = s->next) {
        st = scan_chain(s->head, st);
    }
    return st;
}

void sp_bh_destroy_all(spindle_ctx *ctx)
{
    /* Listed BHs that no handle reaches any more: oneshots and deleted
     * ones. The others are freed through the list of all BHs. */
    spindle_bh *bh = atomic_exchange_explicit(&ctx->bh_stack, NULL,
                                              memory_order_acquire);
    while (bh) {
        spindle_bh *next = bh->next;
        unsigned f = atomic_load_explicit(&bh->flags, memory_order_relaxed);
        if (f & (BH_ONESHOT | BH_DELETED)) {
            free(bh);
        }
        bh = next;
    }
    while ((bh = ctx->bh_all) != NULL) {
        ctx->bh_all = bh->all_next;
        free(bh);
    }
}
