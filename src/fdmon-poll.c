/* The poll fd monitor: ppoll(2) over every live handler.
 * SPDX-License-Identifier: MIT
 *
 * The portable fallback and the AUTO start: it keeps no kernel state, so
 * update() has nothing to do and wait() builds the fd array afresh from the
 * handler list each time: O(n) per wait, which is why AUTO moves to epoll at
 * 64 fds. For the same reason it waits on each handler's current interest
 * and needs no set_events(): an interest change costs it nothing. Because
 * it is stateless, the epoll monitor also borrows wait() while external
 * handlers are disabled.
 *
 * The fd array is the context's scratch, used only between filling it and
 * reading the results back, with no callback in between, so nested
 * iterations can share it.
 *
 * If the array cannot grow, the wait looks at the fds that fit without
 * sleeping, rather than sleep blind to the others.
 *
 * An fd that was closed behind the loop's back comes back as POLLNVAL on
 * every call; reporting it would spin the loop, so the record is marked
 * stale, left out of later waits and counted in the statistics.
 *
 * Embedding needs an epoll set that a host loop can sleep on, which poll
 * does not have: a context on poll moves to epoll when it is first
 * embedded. Where epoll cannot hold every fd (it refused one: the context
 * fell back to poll, before or after it was embedded), poll keeps waiting
 * on everything and keeps an epoll set beside it for the host, best effort:
 * update() applies every change to it too, and a refused fd makes the
 * embedding "incomplete" (embed.c then bounds the host's sleep).
 */
#include "ctx.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>

/* Lock held. Move fd's entry in the epoll set kept for an embedding host
 * (nothing when not embedded); a refusal leaves the set incomplete until a
 * later embed() finds every fd accepted. */
static void embed_move(spindle_ctx *ctx, int fd, sp_handler *h, int was,
                       int now)
{
    if (!ctx->embed.active || ctx->epollfd < 0) {
        return;
    }
    int r = sp_fdmon_epoll_apply(ctx, fd, h, was,
                                 h && sp_embed_keeps_out(ctx, h) ? 0 : now);
    if (r < 0 && r != -EBADF) {
        atomic_store_explicit(&ctx->embed.incomplete, true,
                              memory_order_relaxed);
    }
}

void sp_fdmon_poll_embed_events(spindle_ctx *ctx, sp_handler *h, int events)
{
    embed_move(ctx, h->fd, h, h->events, events);
}

static int poll_update(spindle_ctx *ctx, sp_handler *old, sp_handler *new_h)
{
    /* No kernel state; only check that the fd is open. */
    if (new_h && fcntl(new_h->fd, F_GETFD) < 0) {
        return -EBADF;
    }
    embed_move(ctx, new_h ? new_h->fd : old->fd, new_h,
               old ? old->events : 0, new_h ? new_h->events : 0);
    return 0;
}

bool sp_pollfds_reserve(spindle_ctx *ctx, unsigned n)
{
    if (n < ctx->pollcap) {
        return true;
    }
    unsigned cap = ctx->pollcap ? ctx->pollcap * 2 : 16;
    while (cap <= n) {
        cap *= 2;
    }
    struct pollfd *fds = sp_realloc(ctx->pollfds, sizeof(*fds) * cap);
    if (!fds) {
        return false;
    }
    ctx->pollfds = fds;
    sp_handler **nodes = sp_realloc(ctx->pollnodes, sizeof(*nodes) * cap);
    if (!nodes) {
        return false;
    }
    ctx->pollnodes = nodes;
    ctx->pollcap = cap;
    return true;
}

static void poll_wait(spindle_ctx *ctx, int64_t timeout_ns)
{
    unsigned n = 0;
    bool complete = true;

    for (sp_link *l = sp_list_first(&ctx->handlers); l != &ctx->handlers;
         l = sp_list_next(l)) {
        sp_handler *h = sp_container_of(l, sp_handler, all);
        if (!h->interest || h->stale || !sp_handler_enabled(ctx, h)) {
            continue;
        }
        if (!sp_pollfds_reserve(ctx, n)) {
            /* Out of memory: look at the fds that fit without sleeping,
             * since an fd left out (the wake-up one, say) could never end
             * the sleep. The loop spins until memory is back. */
            complete = false;
            break;
        }
        ctx->pollfds[n] = (struct pollfd){ .fd = h->fd, .events = h->interest };
        ctx->pollnodes[n++] = h;
    }

    struct timespec ts = { .tv_sec = timeout_ns / 1000000000,
                           .tv_nsec = timeout_ns % 1000000000 };
    if (!complete) {
        ts = (struct timespec){ 0, 0 };
        timeout_ns = 0;
    }
    int r = ppoll(ctx->pollfds, n, timeout_ns < 0 ? NULL : &ts, NULL);
    SP_STAT_INC(ctx, monitor_syscalls);
    for (unsigned i = 0; r > 0 && i < n; i++) {
        int revents = ctx->pollfds[i].revents;
        if (!revents) {
            continue;
        }
        r--;
        if (revents & POLLNVAL) {
            ctx->pollnodes[i]->stale = true;
            SP_STAT_INC(ctx, stale_fds);
            continue;
        }
        sp_ready_add(ctx, ctx->pollnodes[i], revents);
    }
}

/* Handler lock held. Put every enabled handler into the epoll set (a fresh
 * one the first time); true if it took them all. */
static bool embed_fill(spindle_ctx *ctx)
{
    bool complete = true;
    for (sp_link *l = sp_list_first(&ctx->handlers); l != &ctx->handlers;
         l = sp_list_next(l)) {
        sp_handler *h = sp_container_of(l, sp_handler, all);
        if (!h->events || h->stale || sp_embed_keeps_out(ctx, h)) {
            continue;
        }
        int r = sp_fdmon_epoll_apply(ctx, h->fd, h, 0, h->events);
        complete &= r == 0 || r == -EBADF;
    }
    return complete;
}

static int poll_embed(spindle_ctx *ctx, bool first)
{
    sp_embed *e = &ctx->embed;
    unsigned gen = atomic_load_explicit(&ctx->handler_gen,
                                        memory_order_relaxed);
    if (!first && (!atomic_load_explicit(&e->incomplete,
                                         memory_order_relaxed) ||
                   gen == e->retry_gen)) {
        return 0;
    }
    int r = 0;
    sp_lockcnt_lock(&ctx->list_lock);
    if (first) {
        ctx->epoll_auto = false;
        /* A set left from an earlier fallback to poll is stale (removals
         * were not applied to it) and no host has seen it yet. */
        if (ctx->epollfd >= 0) {
            close(ctx->epollfd);
            ctx->epollfd = -1;
        } else if (sp_fdmon_epoll_enable(ctx)) {
            sp_lockcnt_unlock(&ctx->list_lock);
            return 0; /* on epoll from now on: its set is the host's */
        }
        ctx->epollfd = sp_fault_fd() ? -1 : epoll_create1(EPOLL_CLOEXEC);
        if (ctx->epollfd < 0) {
            r = -errno;
            goto out;
        }
    }
    /* First fill, or a retry of refused fds after the handlers changed. */
    e->retry_gen = atomic_load_explicit(&ctx->handler_gen,
                                        memory_order_relaxed);
    atomic_store_explicit(&e->incomplete, !embed_fill(ctx),
                          memory_order_relaxed);
out:
    sp_lockcnt_unlock(&ctx->list_lock);
    return r;
}

const sp_fdmon sp_fdmon_poll = {
    .name = "poll",
    .update = poll_update,
    .wait = poll_wait,
    .need_wait = sp_handlers_unpolled,
    .embed = poll_embed,
};
