/* The context and its iteration.
 * SPDX-License-Identifier: MIT
 *
 * spindle_poll() below is the whole iteration and reads top to bottom as
 * the numbered steps of docs/design.md ("The iteration"); each step's
 * machinery lives in the file named beside it.
 */
#include "ctx.h"

#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

static spindle_backend backend_from_env(void)
{
    const char *v = getenv("SPINDLE_BACKEND");
    if (!v) {
        return SPINDLE_BACKEND_AUTO;
    }
    if (!strcmp(v, "poll")) {
        return SPINDLE_BACKEND_POLL;
    }
    if (!strcmp(v, "epoll")) {
        return SPINDLE_BACKEND_EPOLL;
    }
    if (!strcmp(v, "io_uring")) {
        return SPINDLE_BACKEND_IO_URING;
    }
    return SPINDLE_BACKEND_AUTO;
}

spindle_ctx *spindle_ctx_new(void)
{
    return spindle_ctx_new_opts(NULL);
}

spindle_ctx *spindle_ctx_new_opts(const spindle_options *o)
{
    spindle_options opt = SPINDLE_OPTIONS_INIT;
    if (o) {
        opt = *o;
    }
    if ((unsigned)opt.backend > SPINDLE_BACKEND_IO_URING ||
        (unsigned)opt.uring_mode > SPINDLE_URING_COOPERATIVE ||
        opt.poll_grow < 0 || opt.poll_shrink < 0 || opt.spin_yield_ns < 0) {
        errno = EINVAL;
        return NULL;
    }
    if (opt.backend == SPINDLE_BACKEND_AUTO) {
        opt.backend = backend_from_env();
    }

    spindle_ctx *ctx = sp_calloc(1, sizeof(*ctx));
    if (!ctx) {
        errno = ENOMEM;
        return NULL;
    }
    ctx->poll_max_ns = opt.poll_max_ns < 0 ? SP_POLL_MAX_NS_DEFAULT
                                           : opt.poll_max_ns;
    ctx->poll_grow = opt.poll_grow;
    ctx->poll_shrink = opt.poll_shrink;
    ctx->spin_yield_ns = opt.spin_yield_ns;
    ctx->uring_coop = opt.uring_mode == SPINDLE_URING_AUTO
                          ? ctx->poll_max_ns == 0
                          : opt.uring_mode == SPINDLE_URING_COOPERATIVE;
    const char *rule = getenv("SPINDLE_POLL_WINDOW");
    ctx->poll_shared = rule && !strcmp(rule, "shared");
    ctx->epollfd = -1;
    atomic_init(&ctx->fdmon, &sp_fdmon_poll);
    ctx->epoll_auto = opt.backend == SPINDLE_BACKEND_AUTO;

    int r = sp_timers_init(ctx);
    if (r < 0) {
        goto fail_ctx;
    }
    r = sp_notifier_init(&ctx->wake, false);
    if (r < 0) {
        goto fail_timers;
    }
    sp_handlers_init(ctx);
    pthread_mutex_init(&ctx->pool_lock, NULL);
    /* Before any handler exists, so every registration goes through the
     * chosen monitor. AUTO and IO_URING try the ring first; when the kernel
     * refuses it (ENOSYS, EPERM, ENOMEM, missing opcodes) AUTO carries on
     * as without io_uring (poll, then epoll at 64 fds) and IO_URING takes
     * epoll. Failing epoll leaves the context on poll. */
    bool on_ring = false;
    if (opt.backend == SPINDLE_BACKEND_AUTO ||
        opt.backend == SPINDLE_BACKEND_IO_URING) {
        on_ring = sp_fdmon_io_uring_enable(ctx);
    }
    if (on_ring) {
        ctx->epoll_auto = false;
    } else if (opt.backend == SPINDLE_BACKEND_EPOLL ||
               opt.backend == SPINDLE_BACKEND_IO_URING) {
        sp_fdmon_epoll_enable(ctx);
    }
    /* The context's own wake-up: polled, so a busy loop sees a notify at
     * no system call, and waited on, so a sleeping loop is woken. */
    r = sp_handler_set(ctx, ctx->wake.rfd, false, sp_notify_wake_read, NULL,
                       sp_notify_wake_poll, ctx, &ctx->wake, true);
    if (r < 0) {
        goto fail_handlers;
    }
    return ctx;

fail_handlers:
    pthread_mutex_destroy(&ctx->pool_lock);
    if (atomic_load_explicit(&ctx->fdmon, memory_order_relaxed)->destroy) {
        atomic_load_explicit(&ctx->fdmon, memory_order_relaxed)->destroy(ctx);
    }
    sp_handlers_destroy(ctx);
    sp_notifier_destroy(&ctx->wake);
fail_timers:
    sp_timers_destroy(ctx);
fail_ctx:
    free(ctx);
    errno = -r;
    return NULL;
}

void spindle_ctx_free(spindle_ctx *ctx)
{
    if (!ctx) {
        return;
    }
    /* The pool first: running work functions may still use the context's
     * any-thread calls, so everything else must outlive them. */
    sp_pool_destroy(ctx);
    pthread_mutex_destroy(&ctx->pool_lock);
    sp_bh_destroy_all(ctx);
    sp_timers_destroy(ctx);
    const sp_fdmon *mon = atomic_load_explicit(&ctx->fdmon,
                                               memory_order_acquire);
    if (mon->destroy) {
        mon->destroy(ctx); /* requests in flight reaped or cancelled */
    }
    sp_handlers_destroy(ctx);
    sp_notifier_destroy(&ctx->wake);
    free(ctx);
}

bool sp_loop_enter(spindle_ctx *ctx)
{
    uintptr_t self = sp_thread_id();
    uintptr_t owner = atomic_load_explicit(&ctx->owner, memory_order_relaxed);
    if (owner == self) {
        ctx->depth++;
        return true;
    }
    /* Taking `owner` takes the timers too: callbacks on this thread then
     * arm them without a lock (timer.c). Acquire pairs with the release in
     * sp_loop_leave() and in a timer call's let go: a thread that takes
     * over the context sees what the previous holder left. */
    for (unsigned spins = 0;; spins++) {
        owner = 0;
        if (atomic_compare_exchange_strong_explicit(&ctx->owner, &owner, self,
                                                    memory_order_acquire,
                                                    memory_order_relaxed)) {
            break;
        }
        if (owner != SP_OWNER_TIMER_CALL) {
            return false; /* another thread's iteration */
        }
        sp_backoff(spins); /* one timer call; it is short */
    }
    ctx->depth = 1;
    return true;
}

void sp_loop_leave(spindle_ctx *ctx)
{
    if (--ctx->depth == 0) {
        atomic_store_explicit(&ctx->owner, 0, memory_order_release);
    }
}

void sp_backoff(unsigned spins)
{
    if (spins < 64) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    } else {
        sched_yield();
    }
}

int64_t sp_compute_timeout(spindle_ctx *ctx, bool exact)
{
    enum sp_bh_state bh = sp_bh_scan(ctx);
    if (bh == SP_BH_BUSY) {
        return 0;
    }
    int64_t timeout = sp_timers_timeout(ctx, exact);
    if (bh == SP_BH_IDLE_ONLY &&
        (timeout < 0 || timeout > SP_IDLE_BH_TIMEOUT_NS)) {
        timeout = SP_IDLE_BH_TIMEOUT_NS;
    }
    return timeout;
}

bool spindle_poll(spindle_ctx *ctx, bool blocking)
{
    if (!ctx) {
        errno = EINVAL;
        return false;
    }
    if (!sp_loop_enter(ctx)) {
        errno = EBUSY;
        return false;
    }
    bool progress = sp_iterate(ctx, blocking, false);
    sp_loop_leave(ctx);
    return progress;
}

bool sp_iterate(spindle_ctx *ctx, bool blocking, bool drain)
{
    SP_STAT_INC(ctx, iterations);

    bool progress;

    sp_walk_begin(ctx);

    /* 1. How long may this iteration sleep? (bh.c, timer.c) */
    int64_t timeout = blocking ? sp_compute_timeout(ctx, false) : 0;

    /* From here, handler events are this iteration's: step 5 adapts the
     * windows of the handlers whose events ended its wait
     * (polling-windows.c). */
    sp_wait_info w;
    sp_polling_begin(ctx, &w, timeout);

    /* 2. Busy-poll the io_poll handlers (polling.c). A drain has no step
     * 2 here: its host has slept already; it calls them after step 4. */
    progress = drain ? false : sp_polling_try(ctx, &w, &timeout);

    /* 3. Wait in the kernel if polling cannot be enough (fdmon-*.c): to
     * sleep, leave the busy-polling state, then announce the sleep; without
     * sleeping, only if the monitor needs a wait to see every event (or the
     * host of an embedded context has just waited: a drain). */
    if (timeout) {
        progress |= sp_polling_leave(ctx, &w, &timeout);
    }
    const sp_fdmon *mon = atomic_load_explicit(&ctx->fdmon,
                                               memory_order_acquire);
    bool need_wait = drain || mon->need_wait(ctx);
    if (timeout || need_wait) {
        /* handlers.c: interest changes reach the kernel only now, once per
         * fd whatever happened to it since the last wait (after the last
         * io_poll call, which may change some, and before announcing). */
        sp_interest_apply(ctx);
        /* notify.c: from here a notifier writes the eventfd; a wake-up
         * that came meanwhile makes the wait not sleep, or not happen. */
        w.slept = timeout && sp_notify_announce(ctx);
    }
    if (w.slept || need_wait) {
        SP_STAT_INC(ctx, kernel_waits);
        if (w.slept) {
            SP_STAT_INC(ctx, blocking_waits);
        }
        mon = atomic_load_explicit(&ctx->fdmon, memory_order_acquire);
        mon->wait(ctx, w.slept ? timeout : 0);

        /* 4. Withdraw the announcement. */
        if (w.slept) {
            sp_notify_withdraw(ctx);
        }
    }
    /* 4. Accept the wake-ups: what they announced is looked at below. */
    bool woken = sp_notify_accept(ctx);
    if (drain) {
        /* Each io_poll once, after the accept: what an io_poll source
         * published before a notify that the accept consumed must be
         * looked at before the host's next prepare announces a sleep (a
         * spindle_poll does it in the next iteration's step 2). */
        progress |= sp_polling_try(ctx, &w, &timeout);
    }

    /* 5. Adapt the windows to the time waited (polling-windows.c). */
    sp_polling_adapt(ctx, &w, woken);

    /* 6. Bottom halves, what the monitor completed (io_uring: fd events
     * and user requests), ready handlers, then expired timers. */
    progress |= sp_bh_poll(ctx);
    mon = atomic_load_explicit(&ctx->fdmon, memory_order_acquire);
    if (mon->dispatch) {
        progress |= mon->dispatch(ctx);
    }
    progress |= sp_handlers_dispatch(ctx);
    sp_walk_end(ctx);
    progress |= sp_timers_run(ctx);
    return progress;
}

int64_t spindle_compute_timeout(spindle_ctx *ctx)
{
    if (!ctx) {
        return -EINVAL;
    }
    return sp_compute_timeout(ctx, true);
}

const char *spindle_backend_name(const spindle_ctx *ctx)
{
    if (!ctx) {
        return NULL;
    }
    return atomic_load_explicit(&ctx->fdmon, memory_order_acquire)->name;
}

int spindle_get_stats(const spindle_ctx *ctx, spindle_stats *out)
{
    if (!ctx || !out) {
        return -EINVAL;
    }
#define SP_STAT_READ(field) \
    atomic_load_explicit(&ctx->field, memory_order_relaxed)
    *out = (spindle_stats){
        .iterations = SP_STAT_READ(iterations),
        .kernel_waits = SP_STAT_READ(kernel_waits),
        .blocking_waits = SP_STAT_READ(blocking_waits),
        .poll_hits = SP_STAT_READ(poll_hits),
        .poll_misses = SP_STAT_READ(poll_misses),
        .stale_fds = SP_STAT_READ(stale_fds),
        .interest_updates = SP_STAT_READ(interest_updates),
        .unpolled_handlers = (uint64_t)SP_STAT_READ(poll_disable_cnt),
        .monitor_syscalls = SP_STAT_READ(monitor_syscalls),
        .poll_stalls = SP_STAT_READ(poll_stalls),
        .poll_yields = SP_STAT_READ(poll_yields),
        .poll_ns = SP_STAT_READ(poll_ns),
        .poll_max_ns = ctx->poll_max_ns,
    };
#undef SP_STAT_READ
    /* The pool's counts are read under its lock, which a const context
     * still lets us take. */
    sp_pool_counts((spindle_ctx *)ctx, &out->pool_workers, &out->pool_queued);
    return 0;
}
