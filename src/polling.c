/* Adaptive busy polling: steps 2 and 5 of the iteration.
 * SPDX-License-Identifier: MIT
 *
 * Before sleeping, the loop calls every io_poll in a tight loop for up to
 * the current window, because a completion that arrives within a few
 * microseconds is found far sooner by a load than by a kernel wake-up (about
 * 20 µs for a sleeping vCPU). The window follows the wait times: waits
 * longer than poll_max_ns shrink it (polling would not have caught them),
 * shorter ones grow it. The context's own wake-up handler is one of the
 * polled handlers, so spindle_notify() ends a spin with no system call.
 *
 * A monitor that can be checked from user space (io_uring: its completion
 * ring) is checked in every round too, so fd events end a spin at no
 * system call and handlers without io_poll do not switch busy polling off;
 * with poll and epoll such a handler does, since only the kernel sees it.
 *
 * poll_begin/poll_end bracket the busy-polling state. It is entered once
 * and kept across non-blocking iterations, since each begin/end pair
 * usually means toggling a device's notifications; it is left only right
 * before a kernel wait that may sleep, followed by one more round of
 * io_poll in case an event slipped in while notifications were off.
 */
#include "ctx.h"

#include <errno.h>

#define CLOCK_STRIDE 8

/* One call of each enabled io_poll, and of the monitor's user-space check.
 * *hit: any returned true (the wake-up handler and the monitor included);
 * the result: any io_poll that is not the wake-up handler (the monitor's
 * events count as progress when they are dispatched). */
static bool poll_round(spindle_ctx *ctx, bool *hit)
{
    bool progress = false;
    for (sp_link *l = sp_list_first(&ctx->polled); l != &ctx->polled;
         l = sp_list_next(l)) {
        sp_handler *h = &sp_container_of(l, sp_polled_handler, polled)->h;
        if (sp_handler_enabled(ctx, h) && h->io_poll(h->opaque)) {
            *hit = true;
            progress |= !h->internal;
        }
    }
    const sp_fdmon *mon = atomic_load_explicit(&ctx->fdmon,
                                               memory_order_relaxed);
    if (mon->poll && mon->poll(ctx)) {
        *hit = true;
    }
    return progress;
}

/* Whether spinning can see every event: a handler without io_poll is seen
 * only by the kernel, unless the monitor itself is checked in user space. */
static bool polling_sees_all(spindle_ctx *ctx)
{
    return atomic_load_explicit(&ctx->fdmon, memory_order_relaxed)->poll ||
           !sp_handlers_unpolled(ctx);
}

/* A single round, as work: its time counts against the wait only if it did
 * nothing. work_ns is NULL when no one is measuring. */
static bool poll_round_once(spindle_ctx *ctx, int64_t *timeout,
                            int64_t *work_ns)
{
    bool hit = false;
    int64_t t0 = work_ns ? sp_now() : 0;
    bool progress = poll_round(ctx, &hit);
    if (hit) {
        *timeout = 0;
    }
    if (progress && work_ns) {
        *work_ns += sp_now() - t0;
    }
    return progress;
}

static void set_started(spindle_ctx *ctx, bool started, int64_t *work_ns)
{
    if (ctx->poll_started == started) {
        return;
    }
    ctx->poll_started = started;
    int64_t t0 = work_ns ? sp_now() : 0;
    for (sp_link *l = sp_list_first(&ctx->polled); l != &ctx->polled;
         l = sp_list_next(l)) {
        sp_polled_handler *p = sp_container_of(l, sp_polled_handler, polled);
        /* Per-handler state keeps begin and end strictly paired, also for
         * handlers registered or replaced while the state was on. */
        if (atomic_load_explicit(&p->h.deleted, memory_order_relaxed) ||
            atomic_load_explicit(&p->poll_started, memory_order_relaxed) ==
                started) {
            continue;
        }
        atomic_store_explicit(&p->poll_started, started, memory_order_relaxed);
        spindle_io_fn *fn = started ? p->poll_begin : p->poll_end;
        if (fn) {
            fn(p->h.opaque);
        }
    }
    if (work_ns) {
        *work_ns += sp_now() - t0;
    }
}

bool sp_polling_try(spindle_ctx *ctx, int64_t *timeout, int64_t *work_ns)
{
    int64_t window = atomic_load_explicit(&ctx->poll_ns, memory_order_relaxed);
    /* A timeout of -1 (infinite) compares as the largest value. */
    uint64_t max_ns = (uint64_t)*timeout < (uint64_t)window
                          ? (uint64_t)*timeout : (uint64_t)window;

    if (!max_ns || !polling_sees_all(ctx)) {
        /* Even without a window, one round may spare the kernel call. */
        return poll_round_once(ctx, timeout, work_ns);
    }

    set_started(ctx, true, work_ns);
    bool hit = false, progress;
    int64_t start = sp_now(), now = start, round_start = start;
    unsigned rounds = 0;
    do {
        progress = poll_round(ctx, &hit);
        /* A clock read costs more than a round of a few io_poll calls, so
         * the window is checked every CLOCK_STRIDE rounds; the rounds in
         * between count as work if one made progress. */
        if (hit || ++rounds % CLOCK_STRIDE == 0) {
            round_start = now;
            now = sp_now();
        }
        /* A handler without io_poll registered meanwhile means polling can
         * no longer see everything: go to the kernel. */
    } while (!hit && (uint64_t)(now - start) < max_ns &&
             polling_sees_all(ctx));

    if (hit) {
        SP_STAT_INC(ctx, poll_hits);
        *timeout = 0;
        if (progress && work_ns) {
            *work_ns += now - round_start;
        }
    } else {
        SP_STAT_INC(ctx, poll_misses);
        if (*timeout > 0) {
            int64_t spun = now - start;
            *timeout = spun < *timeout ? *timeout - spun : 0;
        }
    }
    return progress;
}

bool sp_polling_leave(spindle_ctx *ctx, int64_t *timeout, int64_t *work_ns)
{
    if (!ctx->poll_started) {
        return false;
    }
    set_started(ctx, false, work_ns);
    return poll_round_once(ctx, timeout, work_ns);
}

void sp_polling_adapt(spindle_ctx *ctx, int64_t block_ns)
{
    int64_t ns = atomic_load_explicit(&ctx->poll_ns, memory_order_relaxed);
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
    atomic_store_explicit(&ctx->poll_ns, ns, memory_order_relaxed);
}

int spindle_set_poll_params(spindle_ctx *ctx, int64_t max_ns, int64_t grow,
                            int64_t shrink)
{
    if (!ctx || max_ns < 0 || grow < 0 || shrink < 0) {
        return -EINVAL;
    }
    ctx->poll_max_ns = max_ns;
    ctx->poll_grow = grow;
    ctx->poll_shrink = shrink;
    atomic_store_explicit(&ctx->poll_ns, 0, memory_order_relaxed);
    return 0;
}

int64_t spindle_get_poll_ns(const spindle_ctx *ctx)
{
    if (!ctx) {
        return -EINVAL;
    }
    return atomic_load_explicit(&ctx->poll_ns, memory_order_relaxed);
}
