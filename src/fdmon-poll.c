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
 */
#include "ctx.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>

static int poll_update(spindle_ctx *ctx, sp_handler *old, sp_handler *new_h)
{
    (void)ctx;
    (void)old;
    /* No kernel state; only check that the fd is open. */
    return new_h && fcntl(new_h->fd, F_GETFD) < 0 ? -EBADF : 0;
}

static bool poll_reserve(spindle_ctx *ctx, unsigned n)
{
    if (n < ctx->pollcap) {
        return true;
    }
    unsigned cap = ctx->pollcap ? ctx->pollcap * 2 : 16;
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
        if (!poll_reserve(ctx, n)) {
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

/* Embedding: poll keeps no kernel state, so nothing could become readable
 * for a host loop. An embedded context therefore moves to epoll, once, as
 * AUTO does at 64 fds. After epoll failed (at that move or later, when it
 * gave up and fell back here) there is no fd: the embedding set then
 * watches the handlers' fds itself. */
static int poll_embed_fd(spindle_ctx *ctx)
{
    if (ctx->embed.epoll_tried || ctx->epollfd >= 0) {
        return -1;
    }
    ctx->embed.epoll_tried = true;
    sp_lockcnt_lock(&ctx->list_lock);
    ctx->epoll_auto = false;
    bool moved = sp_fdmon_epoll_enable(ctx);
    sp_lockcnt_unlock(&ctx->list_lock);
    return moved ? sp_fdmon_epoll.embed_fd(ctx) : -1;
}

const sp_fdmon sp_fdmon_poll = {
    .name = "poll",
    .update = poll_update,
    .wait = poll_wait,
    .need_wait = sp_handlers_unpolled,
    .embed_fd = poll_embed_fd,
};
