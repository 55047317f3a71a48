/* The fd monitor interface: how the loop waits for fd readiness.
 * SPDX-License-Identifier: MIT
 *
 * A monitor is a small table of functions, switched at run time (an AUTO
 * context moves from poll to epoll at 64 fds; epoll falls back to poll for
 * good when the kernel refuses it; io_uring is chosen at creation and
 * kept). The loop owns the iteration; a monitor only keeps the kernel's
 * view of the handler set and waits.
 *
 * Threads: update() runs with the handler lock held, on any thread, because
 * handlers may be registered from any thread. set_events() runs with the
 * lock held on the loop thread. Every other op runs on the loop thread
 * inside an iteration, with a walker count held, so no handler record that
 * a monitor reports can be freed before it is dispatched.
 *
 * A record's `events` is what the monitor was last told for it; its
 * `interest` is what the user wants now (spindle_set_fd_interest). The loop
 * brings the two together with set_events() right before every wait(), one
 * call per changed fd however often it changed (libev coalesces the same
 * way), so wait() may rely on events == interest for every record. A
 * monitor that reads the interest afresh at every wait (poll) leaves
 * set_events NULL.
 *
 * The last four ops are optional (NULL in the poll and epoll monitors);
 * io_uring uses them because its completions sit in user-space memory.
 */
#ifndef SPINDLE_FDMON_H
#define SPINDLE_FDMON_H

#include <stdbool.h>
#include <stdint.h>

#include "spindle.h"
#include "spindle-config.h"

typedef struct sp_handler sp_handler;

typedef struct sp_fdmon {
    const char *name;
    /* Replace `old` by `new` in the kernel's set; either may be NULL (a new
     * registration, a removal). Called before the records are installed or
     * retired: -EBADF (new_h's fd is not open) makes the registration fail
     * with nothing changed. The monitor checks that, so registration costs
     * no separate system call. Other failures are handled inside: a monitor
     * that cannot go on switches the context to poll. */
    int (*update)(spindle_ctx *ctx, sp_handler *old, sp_handler *new_h);
    /* Wait up to timeout_ns (-1: no limit, 0: do not block) and queue the
     * ready handlers with sp_ready_add(). */
    void (*wait)(spindle_ctx *ctx, int64_t timeout_ns);
    /* Make the kernel's set hold `events` (POLLIN/POLLOUT, maybe 0) for h,
     * which it holds with h->events now; the caller then stores events in
     * h->events. Failures are handled inside, as for update() (a closed fd
     * is left alone). NULL: the monitor keeps no per-fd kernel state. */
    void (*set_events)(spindle_ctx *ctx, sp_handler *h, int events);
    /* Whether wait() must run even with a zero timeout: busy polling
     * cannot see every event source, or the monitor has work queued. */
    bool (*need_wait)(spindle_ctx *ctx);
    /* Embedding (embed.c). The host loop sleeps on the context's epoll
     * set (ctx->epollfd), which must then be readable whenever wait(ctx, 0)
     * would queue a handler. Called on the loop thread, without the
     * handler lock, before every host sleep (spindle_prepare); `first` the
     * first time. A monitor that keeps no epoll set sets one up and keeps
     * it in step (poll: see fdmon-poll.c); one whose readiness lives
     * elsewhere puts a pollable fd for it into the set (io_uring: the ring
     * fd); one that defers kernel updates to its next wait pushes them
     * here. 0, or a negative errno when the context cannot be embedded.
     * NULL: nothing to do. */
    int (*embed)(spindle_ctx *ctx, bool first);

    /* Checked in every round of busy polling: true when events wait to be
     * dispatched (it may submit queued work; it never blocks). A monitor
     * with poll() sees every fd from user space, so handlers without
     * io_poll do not switch busy polling off. */
    bool (*poll)(spindle_ctx *ctx);
    /* Step 6, before the ready handlers run: turn what the kernel completed
     * into ready handlers and run completions of user requests. Returns
     * progress. Safe to re-enter from a nested iteration. */
    bool (*dispatch)(spindle_ctx *ctx);
    /* After h's callbacks ran (from sp_handlers_dispatch). */
    void (*dispatched)(spindle_ctx *ctx, sp_handler *h);
    /* spindle_ctx_free, before the handler records are freed: reap or
     * cancel every request in flight. */
    void (*destroy)(spindle_ctx *ctx);
} sp_fdmon;

extern const sp_fdmon sp_fdmon_poll;
extern const sp_fdmon sp_fdmon_epoll;
#if SPINDLE_HAVE_IO_URING
extern const sp_fdmon sp_fdmon_io_uring;
#endif

/* Set up the context's ring (io_uring back-end) before any handler exists.
 * false: the kernel refuses io_uring (or lacks what the monitor needs),
 * nothing is left behind and the caller falls back. Always false in builds
 * without liburing. */
bool sp_fdmon_io_uring_enable(spindle_ctx *ctx);

/* The poll monitor's scratch arrays (ctx->pollfds, ctx->pollnodes), with
 * room for at least n + 1 entries; false when they cannot grow. */
bool sp_pollfds_reserve(spindle_ctx *ctx, unsigned n);

/* Create the context's epoll set and add every live handler; on success
 * the context uses epoll from now on. Handler lock held. false: epoll is
 * unusable and the context stays on poll for good. */
bool sp_fdmon_epoll_enable(spindle_ctx *ctx);
/* Move fd's entry in the context's epoll set from `was` to `now` events
 * (0: not in the set), pointing at record h, whichever monitor is in use.
 * 0, or a negative errno from epoll_ctl. Handler lock held. */
int sp_fdmon_epoll_apply(spindle_ctx *ctx, int fd, sp_handler *h, int was,
                         int now);
/* The poll monitor has no set_events(), but an embedded context on poll
 * keeps an epoll set for its host: an interest change goes there (handler
 * lock held, before h->events takes the new value). */
void sp_fdmon_poll_embed_events(spindle_ctx *ctx, sp_handler *h, int events);

#endif
