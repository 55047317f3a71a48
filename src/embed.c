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
 *                      fds without blocking, run BHs, handlers, timers
 *
 * The notify protocol is unchanged: prepare is L1-L4, the host's sleep is
 * L5, check (or dispatch, if the host skips check) is L6, and dispatch is
 * L7-L9. The only difference is who sleeps, and on what: the host, on the
 * embedding set, which holds the context's own doorbell among the other fds,
 * so a notify from any thread ends the host's sleep exactly as it ends
 * spindle_poll()'s. docs/notify-protocol.md ("Embedding") has the argument
 * and tests/spin/notify.pml checks it with -DEMBEDDED.
 *
 * The embedding set. The fd the host sleeps on must not change while the
 * context lives (hosts register it once), yet the fd monitor behind it may:
 * poll has no kernel state at all, and epoll can fall back to poll. So the
 * host gets an epoll set of its own, and that set holds:
 * - normally, the monitor's own pollable fd (sp_fdmon.embed_fd): the
 *   context's epoll set, nested, which is readable exactly when an epoll
 *   wait would report something. A poll context moves to epoll for this
 *   when it is first embedded; nesting costs one wake-up callback in the
 *   kernel and no system call;
 * - when the monitor has no such fd (epoll refused an fd and the context
 *   fell back to poll; external handlers are disabled, so the epoll set
 *   holds fds that must not wake anyone), the enabled handlers' fds one by
 *   one: the "mirror". It is rebuilt when the handler set changes
 *   (ctx->handler_gen) or externals are enabled or disabled, O(n) system
 *   calls each time: a slow path for rare states. An fd that even this set
 *   refuses (a regular file) cannot wake the host: then every host wait is
 *   bounded by SP_EMBED_RESCAN_NS and every check says "dispatch", so such
 *   an fd is looked at a thousand times a second rather than never.
 *
 * Busy polling is off in this mode: the host decides when to sleep and
 * serves other sources meanwhile, so spinning in prepare would burn CPU the
 * host did not ask for and starve its other sources, and the adaptive
 * window could not learn anything, since the host's sleep is not measured.
 * prepare takes the context out of the busy-polling state (poll_end runs)
 * if a spindle_poll() left it there, and dispatch calls each io_poll once,
 * as a non-blocking spindle_poll() does; io_poll handlers are then served
 * by their fds, as they are whenever the loop sleeps.
 */
#include "ctx.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

/* How long a host may sleep while the embedding set misses an fd. */
#define SP_EMBED_RESCAN_NS 1000000 /* 1 ms */

static int ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
    if (sp_fault_fails(SPINDLE_FAULT_EPOLL_CTL)) {
        errno = ENOMEM;
        return -1;
    }
    return epoll_ctl(epfd, op, fd, ev);
}

static void mirror_clear(spindle_ctx *ctx)
{
    sp_embed *e = &ctx->embed;
    for (unsigned i = 0; i < e->nmirror; i++) {
        /* ENOENT or EBADF: closed (and so dropped) meanwhile. */
        ctl(e->fd, EPOLL_CTL_DEL, e->mirror[i], NULL);
    }
    e->nmirror = 0;
    e->mirrored = false;
}

static bool mirror_reserve(sp_embed *e)
{
    if (e->nmirror < e->mirror_cap) {
        return true;
    }
    unsigned cap = e->mirror_cap ? e->mirror_cap * 2 : 16;
    int *m = sp_realloc(e->mirror, sizeof(*m) * cap);
    if (!m) {
        return false;
    }
    e->mirror = m;
    e->mirror_cap = cap;
    return true;
}

/* Make the set hold every enabled handler's fd, unless it already does. */
static void mirror_sync(spindle_ctx *ctx)
{
    sp_embed *e = &ctx->embed;
    bool ext_off = atomic_load_explicit(&ctx->external_disable_cnt,
                                        memory_order_relaxed) > 0;
    unsigned gen = atomic_load_explicit(&ctx->handler_gen,
                                        memory_order_relaxed);
    if (e->mirrored && gen == e->gen && ext_off == e->mirror_ext_off) {
        return;
    }
    mirror_clear(ctx);
    e->mirrored = true;
    e->incomplete = false;
    e->mirror_ext_off = ext_off;
    /* Under the lock, so that the generation read matches the list; a
     * change after it bumps the generation and notifies, and the next
     * prepare rebuilds. */
    sp_lockcnt_lock(&ctx->list_lock);
    e->gen = atomic_load_explicit(&ctx->handler_gen, memory_order_relaxed);
    for (sp_link *l = sp_list_first(&ctx->handlers); l != &ctx->handlers;
         l = sp_list_next(l)) {
        sp_handler *h = sp_container_of(l, sp_handler, all);
        if (!h->events || h->stale || (h->is_external && ext_off)) {
            continue;
        }
        if (!mirror_reserve(e)) {
            e->incomplete = true;
            break;
        }
        struct epoll_event ev = { .events = (uint32_t)h->events,
                                  .data.fd = h->fd };
        if (ctl(e->fd, EPOLL_CTL_ADD, h->fd, &ev) == 0) {
            e->mirror[e->nmirror++] = h->fd;
        } else if (errno != EBADF) {
            /* EPERM (a regular file: always ready, and the poll monitor
             * says so at every dispatch), ENOMEM, ENOSPC. */
            e->incomplete = true;
        }
    }
    sp_lockcnt_unlock(&ctx->list_lock);
}

/* Bring the embedding set in line with the monitor: creates it the first
 * time. Loop thread, inside sp_loop_enter. */
static int embed_sync(spindle_ctx *ctx)
{
    sp_embed *e = &ctx->embed;
    if (e->fd < 0) {
        e->fd = sp_fault_fd() ? -1 : epoll_create1(EPOLL_CLOEXEC);
        if (e->fd < 0) {
            return -errno;
        }
    }
    const sp_fdmon *mon = atomic_load_explicit(&ctx->fdmon,
                                               memory_order_acquire);
    int fd = mon->embed_fd ? mon->embed_fd(ctx) : -1;
    if (fd >= 0 && fd == e->member && !e->mirrored) {
        return 0; /* the common case: nothing changed */
    }
    if (e->member >= 0) {
        ctl(e->fd, EPOLL_CTL_DEL, e->member, NULL);
        e->member = -1;
    }
    if (fd >= 0) {
        struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
        if (ctl(e->fd, EPOLL_CTL_ADD, fd, &ev) == 0) {
            mirror_clear(ctx);
            e->member = fd;
            e->incomplete = false;
            return 0;
        }
        /* Out of memory in the kernel: the mirror is the way left. */
    }
    mirror_sync(ctx);
    return 0;
}

void sp_embed_destroy(spindle_ctx *ctx)
{
    if (ctx->embed.fd >= 0) {
        close(ctx->embed.fd);
    }
    free(ctx->embed.mirror);
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
    return r < 0 ? r : ctx->embed.fd;
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
        sp_walk_begin(ctx);
        found = sp_polling_leave(ctx, &t, NULL) || t == 0;
        sp_walk_end(ctx);
    }
    timeout = found ? 0 : spindle_compute_timeout(ctx);
    if (timeout && ctx->embed.incomplete &&
        (timeout < 0 || timeout > SP_EMBED_RESCAN_NS)) {
        timeout = SP_EMBED_RESCAN_NS;
    }
    /* L2-L4: from here on, a notify writes the doorbell, which is in the
     * embedding set, so it ends the host's sleep. */
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
    bool work = fd_readable || ctx->embed.incomplete ||
                atomic_load_explicit(&ctx->notified, memory_order_relaxed) ||
                sp_bh_scan(ctx) != SP_BH_NONE || sp_timers_timeout(ctx) == 0;
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
