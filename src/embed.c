/* Embedding: running a context inside another program's loop.
 * SPDX-License-Identifier: MIT
 *
 * A host loop (GLib, a hand-written poll loop, another library's loop)
 * cannot call spindle_poll(), because it does its own sleeping. It gets one
 * fd instead, spindle_get_fd(), and drives the context in three steps that
 * split the iteration around the host's sleep, as a GSource does:
 *
 *   spindle_prepare()  steps 1-3 up to the sleep: compute the timeout and,
 *                      if it is not zero, announce the sleep (notify.c)
 *   (the host sleeps on the fd, for at most that timeout)
 *   spindle_check()    withdraw the announcement; is there work?
 *   spindle_dispatch() steps 4-6: accept the wake-ups, collect the ready
 *                      fds without blocking, call each io_poll once (after
 *                      the accept: see sp_iterate), run BHs, handlers,
 *                      timers
 *
 * The notify protocol is unchanged: prepare is L1-L4, the host's sleep is
 * L5, check (or dispatch, if the host skips check) is L6, and dispatch is
 * L7-L9. Only the sleeper differs: the host, on a set that holds the
 * context's own doorbell among the other fds, so a notify from any thread
 * ends the host's sleep exactly as it ends spindle_poll()'s.
 * docs/notify-protocol.md ("Embedding") has the argument, and
 * tests/spin/notify.pml checks it with -DEMBEDDED.
 *
 * The fd. The host sleeps on the context's own epoll set, so a ready fd
 * makes it readable at no extra cost. (An epoll set of the host's own that
 * nested the context's would be simpler to keep stable, but every event on
 * every fd would then run one more wake-up callback in the kernel, even
 * while the host is busy dispatching: about a tenth more per callback in
 * the fd-dispatch benchmark.) So the set must stay right for the host in
 * the states where the monitor itself does not wait on it:
 * - a context on poll moves to epoll when first embedded (the monitor's
 *   embed op); where epoll cannot take every fd and the context runs on
 *   poll, poll keeps the set in step for the host (fdmon-poll.c), and a fd
 *   that the set refuses (a regular file) makes it "incomplete": every
 *   host sleep is then bounded by SP_EMBED_RESCAN_NS and every check says
 *   "dispatch", so such an fd is served a thousand times a second rather
 *   than never;
 * - while external handlers are disabled, their fds would wake the host
 *   for events that must wait: prepare takes them out of the set (the
 *   epoll monitor's own waits skip them anyway, borrowing poll's wait),
 *   the monitors' update() keeps new ones out meanwhile, and
 *   spindle_enable_external() puts them back before it notifies. O(n)
 *   system calls per change of that state: a slow path.
 *
 * Busy polling is off in this mode: the host decides when to sleep and
 * serves other sources meanwhile, so spinning in prepare would burn CPU the
 * host did not ask for and starve its other sources, and the adaptive
 * window could not learn anything, since the host's sleep is not measured.
 * prepare takes the context out of the busy-polling state (poll_end runs)
 * if a spindle_poll() left it there, and dispatch calls each io_poll once,
 * as a non-blocking spindle_poll() does; io_poll handlers are otherwise
 * served by their fds, as they are whenever the loop sleeps.
 */
#include "ctx.h"

#include <errno.h>
#include <sys/epoll.h>

/* How long a host may sleep while the set misses a refused fd. */
#define SP_EMBED_RESCAN_NS 1000000 /* 1 ms */

/* Handler lock held. Take the external handlers' fds out of the set, or
 * put them back. */
static void externals_set(spindle_ctx *ctx, bool out)
{
    ctx->embed.ext_out = out;
    if (ctx->uring) {
        return; /* the set holds only the ring's fd; the ring itself holds
                 * external events back while they are disabled */
    }
    for (sp_link *l = sp_list_first(&ctx->handlers); l != &ctx->handlers;
         l = sp_list_next(l)) {
        sp_handler *h = sp_container_of(l, sp_handler, all);
        if (h->is_external && h->events && !h->stale) {
            /* Errors: the fd was closed (dropped by the kernel already);
             * or, putting back, refused, which a poll context records as
             * incomplete through its own update() path next time. */
            sp_fdmon_epoll_apply(ctx, h->fd, h, out ? h->events : 0,
                                 out ? 0 : h->events);
        }
    }
}

/* Loop thread. Before a host sleep: keep disabled external fds out. (Ones
 * registered meanwhile are kept out by the monitors' update().) */
static void externals_sync(spindle_ctx *ctx)
{
    bool off = atomic_load_explicit(&ctx->external_disable_cnt,
                                    memory_order_relaxed) > 0;
    if (off == ctx->embed.ext_out) {
        return; /* the common case: one load */
    }
    sp_lockcnt_lock(&ctx->list_lock);
    /* Read again under the lock: spindle_enable_external syncs under it
     * too, so whichever comes last sees the final count. */
    off = atomic_load_explicit(&ctx->external_disable_cnt,
                               memory_order_relaxed) > 0;
    if (off != ctx->embed.ext_out) {
        externals_set(ctx, off);
    }
    sp_lockcnt_unlock(&ctx->list_lock);
}

void sp_embed_external_enabled(spindle_ctx *ctx)
{
    sp_lockcnt_lock(&ctx->list_lock);
    if (ctx->embed.ext_out &&
        atomic_load_explicit(&ctx->external_disable_cnt,
                             memory_order_relaxed) == 0) {
        externals_set(ctx, false);
    }
    sp_lockcnt_unlock(&ctx->list_lock);
}

/* Make the context's epoll set right for the host. Loop thread, inside
 * sp_loop_enter. */
static int embed_sync(spindle_ctx *ctx)
{
    bool first = !ctx->embed.active;
    if (first) {
        sp_lockcnt_lock(&ctx->list_lock);
        ctx->embed.active = true;
        sp_lockcnt_unlock(&ctx->list_lock);
    }
    const sp_fdmon *mon = atomic_load_explicit(&ctx->fdmon,
                                               memory_order_acquire);
    int r = mon->embed ? mon->embed(ctx, first) : 0;
    if (r < 0) {
        if (first) {
            sp_lockcnt_lock(&ctx->list_lock);
            ctx->embed.active = false;
            sp_lockcnt_unlock(&ctx->list_lock);
        }
        return r;
    }
    externals_sync(ctx);
    return 0;
}

int spindle_get_fd(spindle_ctx *ctx)
{
    if (!ctx) {
        return -EINVAL;
    }
    if (!sp_loop_enter(ctx)) {
        return -EBUSY;
    }
    int r = embed_sync(ctx);
    sp_loop_leave(ctx);
    return r < 0 ? r : ctx->epollfd;
}

int64_t spindle_prepare(spindle_ctx *ctx)
{
    if (!ctx) {
        return -EINVAL;
    }
    if (!sp_loop_enter(ctx)) {
        return -EBUSY;
    }
    int64_t timeout = embed_sync(ctx);
    if (timeout < 0) {
        goto out;
    }
    /* Out of the busy-polling state, as before any sleep: poll_end, then
     * one more round of io_poll, since an event may have raced with the
     * re-enabled notifications. A round that found something leaves work
     * to dispatch. (This comes before the timeout, which must see what
     * those calls scheduled: they run on this thread, so they do not
     * notify.) */
    bool found = false;
    if (ctx->poll_started) {
        int64_t t = -1;
        sp_wait_info w; /* measures nothing: the host's wait is its own */
        sp_walk_begin(ctx);
        sp_polling_begin(ctx, &w, 0);
        found = sp_polling_leave(ctx, &w, &t) || t == 0;
        sp_polling_adapt(ctx, &w, false);
        sp_walk_end(ctx);
    }
    /* Interest changes made since the last wait (by the callbacks of the
     * last dispatch, say) reach the kernel now, before the host sleeps, as
     * they do before spindle_poll()'s wait. */
    sp_interest_apply(ctx);
    timeout = found ? 0 : sp_compute_timeout(ctx, false);
    if (timeout &&
        atomic_load_explicit(&ctx->embed.incomplete, memory_order_relaxed) &&
        (timeout < 0 || timeout > SP_EMBED_RESCAN_NS)) {
        timeout = SP_EMBED_RESCAN_NS;
    }
    /* L2-L4: from here on, a notify writes the doorbell, which is in the
     * set, so it ends the host's sleep. */
    if (timeout && !sp_notify_announce(ctx)) {
        timeout = 0;
    }
out:
    sp_loop_leave(ctx);
    return timeout;
}

bool spindle_check(spindle_ctx *ctx, bool fd_readable)
{
    if (!ctx || !sp_loop_enter(ctx)) {
        return false;
    }
    /* L6. A relaxed store, as after spindle_poll()'s wait. */
    sp_notify_withdraw(ctx);
    /* Hints only: dispatch does the synchronizing accept (L7-L8), and what
     * they miss is caught by the next prepare's re-check of `notified`. */
    bool work = fd_readable ||
                atomic_load_explicit(&ctx->embed.incomplete,
                                     memory_order_relaxed) ||
                atomic_load_explicit(&ctx->notified, memory_order_relaxed) ||
                sp_bh_scan(ctx) != SP_BH_NONE ||
                sp_timers_timeout(ctx, false) == 0;
    sp_loop_leave(ctx);
    return work;
}

bool spindle_dispatch(spindle_ctx *ctx)
{
    if (!ctx) {
        errno = EINVAL;
        return false;
    }
    if (!sp_loop_enter(ctx)) {
        errno = EBUSY;
        return false;
    }
    /* L6 for hosts that skip check (prepare said 0, or the host knows the
     * fd was readable). */
    sp_notify_withdraw(ctx);
    bool progress = sp_iterate(ctx, false, true);
    sp_loop_leave(ctx);
    return progress;
}
