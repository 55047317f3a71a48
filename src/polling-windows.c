/* Adaptive busy polling, the windows: step 5 of the iteration, and the
 * polling parameters.
 * SPDX-License-Identifier: MIT
 *
 * Each io_poll handler has its own window, and the loop spins for the
 * largest (polling.c). A window follows the waits its own handler's events
 * ended: longer than poll_max_ns, it shrinks (polling would not have caught
 * them); shorter, it grows. A wait that no handler event ended (a timer,
 * the timeout) teaches every window. One shared window, the rule before,
 * shrank on a slow source's long waits (a disk completing after a
 * millisecond) and so was closed exactly when a fast source (a virtqueue
 * answered within microseconds) would have profited; per handler, the slow
 * source closes only its own window. SPINDLE_POLL_WINDOW=shared brings the
 * old rule back (every wait adapts every window), for comparisons.
 *
 * What counts as waiting is the time from the start of the wait to the
 * event, less what was not waiting: io_poll rounds that made progress,
 * poll_begin/poll_end, and time the spin saw the thread not running. For an
 * event notifier (the context's own wake-up included) the wait ends when
 * the notifier was set, not when the loop's thread got to run: waking a
 * sleeping vCPU costs tens of microseconds on a VM, more than the window,
 * and counting it made windows collapse to 0 exactly when a peer answered
 * within a microsecond, and stay there, since every wait then included a
 * wake-up. An event found by the first round waited 0, which is within
 * every window: such an iteration changes no window.
 *
 * io_uring. Handlers without io_poll are busy-polled through the ring
 * too; they have no window, so the context's own (its wake-up handler's)
 * stands for them (sp_polling_note). A spin that the ring ends without
 * naming an event (to re-check an fd) taught nothing: no window changes.
 *
 * Idle handlers. A handler whose window has not adapted for SP_POLL_IDLE_NS
 * (its events stopped while other handlers' events kept ending the waits)
 * has a window that nothing updates. It moves to ctx->polled_idle: its
 * window no longer counts, and the spin calls its io_poll in its first
 * round only. Its next event brings it back. With poll and epoll an event
 * of an idle handler that comes during a spin is seen at the next spin's
 * first round or after the spin, at most a window late, and only for its
 * first event after a long quiet time. The context's wake-up handler stays
 * in every round (a notify must end a spin at once); only its window stops
 * counting. Handlers change lists in the outermost iteration only, under
 * the handler lock, so a walk further up the stack never finds its node
 * moved.
 *
 * Cost. Usually step 5 looks only at the handlers whose events ended the
 * wait (SP_WAIT_EVENTS of them are noted by the iteration); it looks at
 * every handler when all adapt, every eighth of SP_POLL_IDLE_NS to find
 * idle ones, after handlers were added or removed, and when the largest
 * window shrank.
 */
#include "ctx.h"

#include <errno.h>

/* Iterations whose first round finds an event skip clock reads; one in
 * this many reads the clock anyway, to keep time for idle handlers. */
#define CLOCK_SKIPS 64

/* ------------------------------------------------------------------------
 * Step 5
 */

/* The window rules (docs/design.md, polling windows), for one window. */
static void adapt_window(spindle_ctx *ctx, sp_polled_handler *p,
                         int64_t block_ns)
{
    int64_t ns = atomic_load_explicit(&p->poll_ns, memory_order_relaxed);
    int64_t max = ctx->poll_max_ns;

    if (block_ns <= ns) {
        return; /* the window caught it, or would have */
    }
    if (block_ns > max) {
        ns = ctx->poll_shrink ? ns / ctx->poll_shrink : 0;
    } else if (ns < max && block_ns < max) {
        int64_t grow = ctx->poll_grow ? ctx->poll_grow : SP_POLL_GROW_DEFAULT;
        ns = !ns ? SP_POLL_START_NS : ns > max / grow ? max : ns * grow;
        if (ns > max) {
            ns = max;
        }
    } else {
        return;
    }
    atomic_store_explicit(&p->poll_ns, ns, memory_order_relaxed);
}

/* When p's event came: when its notifier was set, if that happened during
 * the wait (the loop's thread then woke later), else now. Reading the
 * notifier needs list_lock while it may be removed, and thus freed, by
 * another thread: the caller holds it. */
static int64_t event_end(const sp_polled_handler *p, const sp_wait_info *w,
                         int64_t now)
{
    if (!w->slept || !p->notifier) {
        return now;
    }
    int64_t set = atomic_load_explicit(&p->notifier->set_ns,
                                       memory_order_relaxed);
    return set > w->start && set < now ? set : now;
}

/* The old rule's single wait: until the first event. */
static int64_t first_event_end(const sp_wait_info *w, int64_t now)
{
    int64_t first = now;
    for (unsigned i = 0; i < w->nevents; i++) {
        int64_t end = event_end(w->event[i], w, now);
        first = end < first ? end : first;
    }
    return first;
}

/* How long p waited, and its window adapted to that. */
static void adapt_handler(spindle_ctx *ctx, sp_polled_handler *p,
                          const sp_wait_info *w, int64_t end, int64_t now)
{
    adapt_window(ctx, p, end - w->start - w->unwaited_ns);
    p->adapted_ns = now;
    p->adapted_serial = w->serial;
}

/* Step 5 for the handlers whose events ended the wait, when that is all
 * there is to do: each adapts, the largest window follows. false: look at
 * every handler instead (one was idle, or the largest shrank). */
static bool adapt_events(spindle_ctx *ctx, sp_wait_info *w, int64_t now)
{
    int64_t largest = atomic_load_explicit(&ctx->poll_ns,
                                           memory_order_relaxed);
    for (unsigned i = 0; i < w->nevents; i++) {
        sp_polled_handler *p = w->event[i];
        if (p->idle) {
            return false;
        }
        if (p->adapted_serial == w->serial ||
            atomic_load_explicit(&p->h.deleted, memory_order_relaxed)) {
            continue;
        }
        int64_t before = atomic_load_explicit(&p->poll_ns,
                                              memory_order_relaxed);
        adapt_handler(ctx, p, w, event_end(p, w, now), now);
        int64_t ns = atomic_load_explicit(&p->poll_ns, memory_order_relaxed);
        if (ns < before && before == largest) {
            return false;
        }
        largest = ns > largest ? ns : largest;
    }
    atomic_store_explicit(&ctx->poll_ns, largest, memory_order_relaxed);
    return true;
}

typedef struct scan {
    sp_wait_info *w;
    int64_t now;
    int64_t shared_end;       /* the old rule: when the wait ended */
    bool all;                 /* every window adapts */
    bool may_move;            /* outermost iteration: lists may change */
    int64_t largest;
    sp_polled_handler *moves; /* to change lists once the walk is done */
} scan;

/* Step 5 looking at every handler: adapt those with events (or all),
 * decide which are idle, and find the largest window. */
static void scan_list(spindle_ctx *ctx, sp_link *head, scan *a)
{
    for (sp_link *l = sp_list_first(head); l != head; l = sp_list_next(l)) {
        sp_polled_handler *p = sp_container_of(l, sp_polled_handler, polled);
        if (atomic_load_explicit(&p->h.deleted, memory_order_relaxed)) {
            continue;
        }
        bool idle = p->idle;
        if (p->adapted_serial == a->w->serial) {
            idle = false; /* adapted already, by adapt_events() */
        } else if (a->all || p->event_serial == a->w->serial) {
            int64_t end = ctx->poll_shared ? a->shared_end
                          : p->event_serial == a->w->serial
                              ? event_end(p, a->w, a->now) : a->now;
            adapt_handler(ctx, p, a->w, end, a->now);
            idle = false;
        } else if (!p->adapted_ns) {
            p->adapted_ns = a->now; /* new, or new parameters */
            idle = false;
        } else if (a->now - p->adapted_ns > SP_POLL_IDLE_NS) {
            idle = true;
        }
        if (idle != p->idle && a->may_move) {
            if (p->h.internal) {
                p->idle = idle; /* it stays in every round */
            } else {
                p->move_next = a->moves;
                a->moves = p;
            }
        }
        if (!idle) {
            int64_t ns = atomic_load_explicit(&p->poll_ns,
                                              memory_order_relaxed);
            a->largest = ns > a->largest ? ns : a->largest;
        }
    }
}

static void scan_all(spindle_ctx *ctx, sp_wait_info *w, int64_t now)
{
    scan a = { .w = w, .now = now, .may_move = ctx->depth == 1,
               .all = !w->events || ctx->poll_shared };
    atomic_store_explicit(&ctx->poll_rescan, false, memory_order_relaxed);
    ctx->poll_scan_ns = now + SP_POLL_IDLE_NS / 8;
    if (ctx->poll_shared) {
        a.shared_end = first_event_end(w, now);
    }
    scan_list(ctx, &ctx->polled, &a);
    scan_list(ctx, &ctx->polled_idle, &a);
    if (a.moves && !w->slept) {
        sp_lockcnt_lock(&ctx->list_lock);
    }
    for (sp_polled_handler *p = a.moves; p; p = p->move_next) {
        /* Retired meanwhile: unlinked for good, leave it so. */
        if (!atomic_load_explicit(&p->h.deleted, memory_order_relaxed)) {
            sp_list_unlink(&p->polled);
            p->idle = !p->idle;
            sp_list_insert_head(p->idle ? &ctx->polled_idle : &ctx->polled,
                                &p->polled);
        }
    }
    if (a.moves && !w->slept) {
        sp_lockcnt_unlock(&ctx->list_lock);
    }
    atomic_store_explicit(&ctx->poll_ns, a.largest, memory_order_relaxed);
}

/* An iteration whose first round found its events waited 0, which is
 * within every window: no window changes, only the handlers' idle
 * bookkeeping is due. false: look at every handler after all (one was
 * idle, or it is time to). */
static bool mark_active(spindle_ctx *ctx, sp_wait_info *w, int64_t now)
{
    if (w->overflow || ctx->poll_shared || now >= ctx->poll_scan_ns ||
        atomic_load_explicit(&ctx->poll_rescan, memory_order_relaxed)) {
        return false;
    }
    for (unsigned i = 0; i < w->nevents; i++) {
        sp_polled_handler *p = w->event[i];
        if (p->idle) {
            return false;
        }
        p->adapted_ns = now;
    }
    return true;
}

void sp_polling_adapt(spindle_ctx *ctx, sp_wait_info *w, bool woken)
{
    ctx->wait = w->outer;
    if (!w->adapt || (w->cut && !w->events && !woken)) {
        return;
    }
    if (woken) {
        sp_polling_mark(w, ctx->wake_handler);
    }
    int64_t now;
    if (!w->start) {
        /* The first round found the event. The time is only needed to
         * tell idle handlers; once in a while it is read. */
        now = ++ctx->clock_skips % CLOCK_SKIPS && ctx->clock_ns
                  ? ctx->clock_ns : sp_now();
        ctx->clock_ns = now;
        if (mark_active(ctx, w, now)) {
            return;
        }
        w->start = now;
    } else if (w->hit_ns && !w->slept) {
        now = w->hit_ns; /* the spin's clock read when it found the event */
    } else {
        now = sp_now();
        ctx->clock_ns = now;
    }
    /* While the loop slept, another thread may remove a notifier's handler
     * and free the notifier; the lock keeps it registered while event_end()
     * reads it (and moves between lists need it anyway). An iteration that
     * did not sleep reads no notifier. */
    if (w->slept) {
        sp_lockcnt_lock(&ctx->list_lock);
    }
    /* Usually only the handlers whose events ended the wait change; every
     * handler is looked at when all adapt, to find idle ones now and then,
     * and when the largest window may have moved otherwise. */
    if (!w->events || w->overflow || ctx->poll_shared ||
        now >= ctx->poll_scan_ns ||
        atomic_load_explicit(&ctx->poll_rescan, memory_order_relaxed) ||
        !adapt_events(ctx, w, now)) {
        scan_all(ctx, w, now);
    }
    if (w->slept) {
        sp_lockcnt_unlock(&ctx->list_lock);
    }
}

/* ------------------------------------------------------------------------
 * Parameters and windows
 */

static void restart_windows(sp_link *head)
{
    for (sp_link *l = sp_list_first(head); l != head; l = sp_list_next(l)) {
        sp_polled_handler *p = sp_container_of(l, sp_polled_handler, polled);
        atomic_store_explicit(&p->poll_ns, 0, memory_order_relaxed);
        p->adapted_ns = 0;
    }
}

int spindle_set_poll_params(spindle_ctx *ctx, int64_t max_ns, int64_t grow,
                            int64_t shrink)
{
    if (!ctx || max_ns < 0 || grow < 0 || shrink < 0) {
        return -EINVAL;
    }
    sp_lockcnt_lock(&ctx->list_lock);
    ctx->poll_max_ns = max_ns;
    ctx->poll_grow = grow;
    ctx->poll_shrink = shrink;
    restart_windows(&ctx->polled);
    restart_windows(&ctx->polled_idle);
    atomic_store_explicit(&ctx->poll_ns, 0, memory_order_relaxed);
    /* Idle handlers, restarted, come back at step 5's next look. */
    atomic_store_explicit(&ctx->poll_rescan, true, memory_order_relaxed);
    sp_lockcnt_unlock(&ctx->list_lock);
    return 0;
}

int64_t spindle_get_poll_ns(const spindle_ctx *ctx)
{
    if (!ctx) {
        return -EINVAL;
    }
    return atomic_load_explicit(&ctx->poll_ns, memory_order_relaxed);
}

int64_t spindle_get_handler_poll_ns(spindle_ctx *ctx, int fd)
{
    if (!ctx) {
        return -EINVAL;
    }
    if (fd < 0) {
        return -EBADF;
    }
    int64_t ns = -ENOENT;
    sp_lockcnt_lock(&ctx->list_lock);
    sp_handler *h = fd < ctx->fd_table_size ? ctx->fd_table[fd] : NULL;
    if (h && h->io_poll) {
        ns = atomic_load_explicit(&sp_polled_of(h)->poll_ns,
                                  memory_order_relaxed);
    }
    sp_lockcnt_unlock(&ctx->list_lock);
    return ns;
}
