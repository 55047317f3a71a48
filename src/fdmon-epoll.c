/* The epoll fd monitor.
 * SPDX-License-Identifier: MIT
 *
 * Each live handler with events sits in the context's epoll set with its
 * record as the event's data, so a wait costs O(ready handlers), not
 * O(registered). A replaced record is swapped in with EPOLL_CTL_MOD; a
 * retired one may still come back from a wait that was already running,
 * which is safe because records are freed only after the loop stops
 * walking (handlers.c), and dispatch skips retired ones. An interest change
 * (spindle_set_fd_interest) is one EPOLL_CTL_MOD at the next wait, or an
 * ADD or DEL when it goes from or to no interest at all, since an fd in the
 * set with no events would still report errors and hang-ups.
 *
 * Pitfalls handled here:
 * - The kernel drops an fd from the set when its last reference is closed,
 *   so a closed registered fd is silently no longer waited on, and a MOD on
 *   a reused fd number may find nothing (ENOENT: add it instead).
 * - epoll_ctl refuses some fds (EPERM: regular files). Any failure other than
 *   a closed fd makes the context fall back to poll for good, as epoll has
 *   lost track of the handler set. The epoll fd stays open until the context
 *   is freed: the loop may be waiting on it right now.
 * - Nanosecond timeouts need epoll_pwait2 (Linux 5.11); without it, the
 *   timeout is rounded up to whole milliseconds so timers never fire early.
 * - While external handlers are disabled the loop must not wait on them;
 *   rather than edit the set, that rare state borrows the poll monitor's
 *   wait, which skips them.
 */
#include "ctx.h"

#include <errno.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <unistd.h>

_Static_assert(EPOLLIN == POLLIN && EPOLLOUT == POLLOUT &&
               EPOLLERR == POLLERR && EPOLLHUP == POLLHUP,
               "epoll and poll event bits are used interchangeably");

#define EPOLL_BATCH 128

static void epoll_give_up(spindle_ctx *ctx)
{
    ctx->epoll_auto = false;
    atomic_store_explicit(&ctx->fdmon, &sp_fdmon_poll, memory_order_release);
}

static int ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
    if (sp_fault_fails(SPINDLE_FAULT_EPOLL_CTL)) {
        errno = ENOMEM;
        return -1;
    }
    return epoll_ctl(epfd, op, fd, ev);
}

/* Move fd's entry in the set from `was` to `now` events (0: not in the
 * set), pointing at record h. */
int sp_fdmon_epoll_apply(spindle_ctx *ctx, int fd, sp_handler *h, int was,
                         int now)
{
    if (now) {
        struct epoll_event ev = { .events = (uint32_t)now, .data.ptr = h };
        int op = was ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
        int r = ctl(ctx->epollfd, op, fd, &ev);
        if (r < 0 && errno == ENOENT && op == EPOLL_CTL_MOD) {
            r = ctl(ctx->epollfd, EPOLL_CTL_ADD, fd, &ev);
        } else if (r < 0 && errno == EEXIST && op == EPOLL_CTL_ADD) {
            r = ctl(ctx->epollfd, EPOLL_CTL_MOD, fd, &ev);
        }
        return r < 0 ? -errno : 0;
    }
    if (was) {
        int r = ctl(ctx->epollfd, EPOLL_CTL_DEL, fd, NULL);
        return r < 0 && errno != ENOENT && errno != EBADF ? -errno : 0;
    }
    return 0;
}

static int epoll_update(spindle_ctx *ctx, sp_handler *old, sp_handler *new_h)
{
    /* An embedded context keeps disabled external fds out of its set. */
    int r = sp_fdmon_epoll_apply(ctx, new_h ? new_h->fd : old->fd, new_h,
                                 old ? old->events : 0,
                                 new_h && !sp_embed_keeps_out(ctx, new_h)
                                     ? new_h->events : 0);
    if (r == -EBADF || r == 0) {
        return r;
    }
    epoll_give_up(ctx);
    return sp_fdmon_poll.update(ctx, old, new_h);
}

static void epoll_set_events(spindle_ctx *ctx, sp_handler *h, int events)
{
    int r = sp_fdmon_epoll_apply(ctx, h->fd, h, h->events,
                                 sp_embed_keeps_out(ctx, h) ? 0 : events);
    /* EBADF: closed behind the loop's back, so no longer in the set. */
    if (r < 0 && r != -EBADF) {
        epoll_give_up(ctx);
    }
}

bool sp_fdmon_epoll_enable(spindle_ctx *ctx)
{
    if (ctx->epollfd < 0) {
        ctx->epollfd = sp_fault_fd() ? -1 : epoll_create1(EPOLL_CLOEXEC);
        if (ctx->epollfd < 0) {
            return false;
        }
    }
    for (sp_link *l = sp_list_first(&ctx->handlers); l != &ctx->handlers;
         l = sp_list_next(l)) {
        sp_handler *h = sp_container_of(l, sp_handler, all);
        int r = sp_fdmon_epoll_apply(ctx, h->fd, h, 0, h->events);
        /* EBADF: closed behind the loop's back; nothing to wait on. */
        if (r < 0 && r != -EBADF) {
            close(ctx->epollfd);
            ctx->epollfd = -1;
            return false;
        }
    }
    atomic_store_explicit(&ctx->fdmon, &sp_fdmon_epoll, memory_order_release);
    return true;
}

static int epoll_wait_ns(int epfd, struct epoll_event *events,
                         int64_t timeout_ns)
{
#ifdef SYS_epoll_pwait2
    static atomic_bool no_pwait2;
    if (!atomic_load_explicit(&no_pwait2, memory_order_relaxed)) {
        struct timespec ts = { .tv_sec = timeout_ns / 1000000000,
                               .tv_nsec = timeout_ns % 1000000000 };
        int r = (int)syscall(SYS_epoll_pwait2, epfd, events, EPOLL_BATCH,
                             timeout_ns < 0 ? NULL : &ts, NULL, 0);
        if (r >= 0 || errno != ENOSYS) {
            return r;
        }
        atomic_store_explicit(&no_pwait2, true, memory_order_relaxed);
    }
#endif
    int ms = timeout_ns < 0 ? -1
             : timeout_ns > (int64_t)INT32_MAX * 1000000
                 ? INT32_MAX
                 : (int)((timeout_ns + 999999) / 1000000);
    return epoll_wait(epfd, events, EPOLL_BATCH, ms);
}

static void epoll_wait_fn(spindle_ctx *ctx, int64_t timeout_ns)
{
    if (atomic_load_explicit(&ctx->external_disable_cnt, memory_order_relaxed)) {
        sp_fdmon_poll.wait(ctx, timeout_ns);
        return;
    }
    struct epoll_event events[EPOLL_BATCH];
    int n = epoll_wait_ns(ctx->epollfd, events, timeout_ns);
    SP_STAT_INC(ctx, monitor_syscalls);
    if (n < 0) {
        if (errno != EINTR) {
            sp_lockcnt_lock(&ctx->list_lock);
            epoll_give_up(ctx);
            sp_lockcnt_unlock(&ctx->list_lock);
        }
        return;
    }
    for (int i = 0; i < n; i++) {
        sp_ready_add(ctx, events[i].data.ptr, (int)events[i].events);
    }
}

/* Embedding: the host sleeps on this very set, which holds every handler
 * (embed.c keeps disabled external ones out). Nothing to push. */
static int epoll_embed(spindle_ctx *ctx, bool first)
{
    (void)ctx;
    (void)first;
    return 0;
}

const sp_fdmon sp_fdmon_epoll = {
    .name = "epoll",
    .update = epoll_update,
    .wait = epoll_wait_fn,
    .set_events = epoll_set_events,
    .need_wait = sp_handlers_unpolled,
    .embed = epoll_embed,
};
