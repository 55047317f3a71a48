/* Adaptive busy polling, the spin: step 2 of the iteration, and leaving
 * the busy-polling state before step 3's kernel wait.
 * SPDX-License-Identifier: MIT
 *
 * Before sleeping, the loop calls every io_poll in a tight loop for up to a
 * window, because a completion that arrives within a few microseconds is
 * found far sooner by a load than by a kernel wake-up (about 20 µs for a
 * sleeping vCPU). The context's own wake-up handler is one of the polled
 * handlers, so spindle_notify() ends a spin with no system call. A monitor
 * that can be checked from user space (io_uring: its completion ring) is
 * checked once per round too, and then handlers without io_poll do not
 * switch busy polling off. How long the spin lasts, the largest of the
 * handlers' windows, is polling-windows.c's business.
 *
 * The clock. A clock read costs about as much as a round of a few io_poll
 * calls. An event that the first round finds was there already: the
 * iteration waited 0 for it and reads no clock at all. Only when the first
 * round found nothing does the wait start, with the first clock read; the
 * spin then reads the clock every CLOCK_STRIDE rounds, and a stride that
 * took far longer than the first one means the thread was not running
 * (preempted, or its vCPU was): that time is not waiting, and the spin goes
 * on for the rest of its window (never past the timeout).
 *
 * Giving the CPU away. A spin keeps its CPU from every other thread until
 * the scheduler's time slice ends, milliseconds later, and on a machine
 * with fewer CPUs than busy threads the thread kept waiting is often the
 * one the spin waits for: io_uring's kernel worker writing to the page
 * cache, a peer, a pool worker. So where its creator asks (spin_yield_ns,
 * off by default), every spin_yield_ns of spinning, at a clock read, the
 * loop calls sched_yield(): a thread waiting for this CPU runs now (the
 * stride then looks like a stall, and that time is not waiting), and with
 * none the call returns at once. The kernel's busy polling stops likewise
 * on need_resched(), which user space cannot read. nbd-server's 4 KiB
 * random writes at queue depth 32 went from 38k to 56k-64k IOPS with it
 * (docs/design.md, "Spins that give their CPU away").
 *
 * Idle handlers (polling-windows.c) are called in the first round of a spin
 * only, so they cost nothing per round.
 *
 * poll_begin/poll_end bracket the busy-polling state. It is entered once
 * and kept across non-blocking iterations, since each begin/end pair
 * usually means toggling a device's notifications; it is left only right
 * before a kernel wait that may sleep, followed by one more round of
 * io_poll in case an event slipped in while notifications were off.
 *
 * Nesting. A handler's io_poll may run a nested spindle_poll (to wait for
 * something it needs before it can finish). Its in_io_poll flag keeps the
 * nested iterations from calling it again, which would recurse until the
 * stack overflows; everything else runs as usual.
 */
#include "ctx.h"

#include <errno.h>
#include <sched.h>

#define CLOCK_STRIDE 8
/* A stride of rounds that takes this much longer than the first one, and
 * at least SPIN_STALL_NS, means the thread was not running meanwhile. */
#define SPIN_STALL_FACTOR 4
#define SPIN_STALL_NS 10000

enum { ROUND_HIT = 1, ROUND_PROGRESS = 2 };

/* One call of each enabled io_poll, except those running further up the
 * stack: of the spinning handlers, and in the first round of a spin also of
 * the idle ones; then the monitor's own user-space check, if it has one
 * (io_uring: its completion ring). A true return of an io_poll marks the
 * handler's event. Returns ROUND_HIT if an io_poll returned true (the
 * wake-up handler included) or the monitor has events, and ROUND_PROGRESS
 * if an io_poll that is not the wake-up handler's did (the monitor's
 * events make progress when step 6 dispatches them). */
static inline unsigned poll_round(spindle_ctx *ctx, const sp_fdmon *mon,
                                  sp_wait_info *w, bool first)
{
    unsigned result = 0;
    sp_link *head = &ctx->polled;
    for (;;) {
        for (sp_link *l = sp_list_first(head); l != head;
             l = sp_list_next(l)) {
            sp_polled_handler *p = sp_container_of(l, sp_polled_handler,
                                                   polled);
            if (p->in_io_poll || !sp_handler_enabled(ctx, &p->h)) {
                continue;
            }
            p->in_io_poll = true;
            bool made = p->h.io_poll(p->h.opaque);
            p->in_io_poll = false;
            if (made) {
                sp_polling_mark(w, p);
                result |= p->h.internal ? ROUND_HIT
                                        : ROUND_HIT | ROUND_PROGRESS;
            }
        }
        if (!first || head == &ctx->polled_idle) {
            break;
        }
        head = &ctx->polled_idle;
    }
    if (mon->poll && mon->poll(ctx)) {
        /* It noted its handlers' events; with none noted it ended the spin
         * for its own reasons, and the wait taught nothing. */
        w->cut = !w->events;
        result |= ROUND_HIT;
    }
    return result;
}

/* Whether spinning can see every event: a handler without io_poll is seen
 * only by the kernel, unless the monitor can be checked from user space. */
static inline bool polling_sees_all(spindle_ctx *ctx, const sp_fdmon *mon)
{
    return mon->poll || !atomic_load_explicit(&ctx->poll_disable_cnt,
                                              memory_order_relaxed);
}

/* The wait starts at the first clock read of an iteration, made once a
 * round of io_poll calls found nothing: an event that the first round finds
 * was there already, the iteration waited 0 for it, and a clock read (as
 * dear as a round) would only confirm that. */
static int64_t wait_clock(spindle_ctx *ctx, sp_wait_info *w)
{
    int64_t now = sp_now();
    if (!w->start) {
        w->start = now;
    }
    ctx->clock_ns = now;
    return now;
}

/* A single round of every handler. After the wait started (the round after
 * poll_end), its time counts against the wait only if it did nothing. */
static bool poll_once(spindle_ctx *ctx, sp_wait_info *w, int64_t *timeout)
{
    const sp_fdmon *mon = atomic_load_explicit(&ctx->fdmon,
                                               memory_order_acquire);
    int64_t t0 = w->adapt && w->start ? sp_now() : 0;
    unsigned r = poll_round(ctx, mon, w, true);
    bool progress = r & ROUND_PROGRESS;
    if (r & ROUND_HIT) {
        *timeout = 0;
    } else if (w->adapt) {
        wait_clock(ctx, w);
    }
    if (progress && t0) {
        w->unwaited_ns += sp_now() - t0;
    }
    return progress;
}

static void set_started_list(sp_link *head, bool started)
{
    for (sp_link *l = sp_list_first(head); l != head; l = sp_list_next(l)) {
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
}

/* Enter (started) or leave the busy-polling state; the caller checked
 * that this changes it. Once the wait started, this is work. */
static void set_started(spindle_ctx *ctx, bool started, sp_wait_info *w)
{
    ctx->poll_started = started;
    int64_t t0 = w->adapt && w->start ? sp_now() : 0;
    set_started_list(&ctx->polled, started);
    set_started_list(&ctx->polled_idle, started);
    if (t0) {
        w->unwaited_ns += sp_now() - t0;
    }
}

void sp_polling_begin(spindle_ctx *ctx, sp_wait_info *w, int64_t timeout)
{
    w->outer = ctx->wait;
    ctx->wait = w;
    w->serial = atomic_load_explicit(&ctx->iterations, memory_order_relaxed);
    /* Only iterations that may wait teach the windows: not the
     * non-blocking ones, nor blocking ones with work already due. */
    w->adapt = timeout && ctx->poll_max_ns;
    w->slept = false;
    w->events = false;
    w->overflow = false;
    w->cut = false;
    w->nevents = 0;
    w->start = 0;
    w->hit_ns = 0;
    w->unwaited_ns = 0;
}

bool sp_polling_try(spindle_ctx *ctx, sp_wait_info *w, int64_t *timeout)
{
    int64_t window = atomic_load_explicit(&ctx->poll_ns, memory_order_relaxed);
    const sp_fdmon *mon = atomic_load_explicit(&ctx->fdmon,
                                               memory_order_acquire);
    if (!window || !*timeout || !polling_sees_all(ctx, mon)) {
        /* Even without a window, one round may spare the kernel call. */
        return poll_once(ctx, w, timeout);
    }
    if (!ctx->poll_started) {
        set_started(ctx, true, w);
    }
    unsigned r = poll_round(ctx, mon, w, true);
    if (r & ROUND_HIT) {
        SP_STAT_INC(ctx, poll_hits);
        *timeout = 0;
        return r & ROUND_PROGRESS;
    }

    /* Nothing yet: the wait starts, and the spin with it (window > 0 means
     * poll_max_ns > 0, so this iteration adapts). */
    bool hit, progress;
    int64_t start = wait_clock(ctx, w), now = start;
    int64_t stride_ns = 0, stalled_ns = 0;
    int64_t yield_at = ctx->spin_yield_ns ? start + ctx->spin_yield_ns
                                          : INT64_MAX;
    unsigned rounds = 0;
    do {
        r = poll_round(ctx, mon, w, false);
        hit = r & ROUND_HIT;
        progress = r & ROUND_PROGRESS;
        /* A clock read costs more than a round of a few io_poll calls, so
         * the window is checked every CLOCK_STRIDE rounds; the rounds in
         * between count as work if one made progress. A stride that took
         * far longer than the first means the thread did not run. */
        if (hit || ++rounds % CLOCK_STRIDE == 0) {
            int64_t last = now;
            now = sp_now();
            int64_t took = now - last;
            if (progress) {
                w->unwaited_ns += took;
            } else if (!stride_ns) {
                stride_ns = took;
            } else if (took > SPIN_STALL_NS &&
                       took > SPIN_STALL_FACTOR * stride_ns) {
                stalled_ns += took - stride_ns;
                SP_STAT_INC(ctx, poll_stalls);
            }
            if (!hit && now >= yield_at) {
                /* Its cost falls in the next stride, as a stall if
                 * another thread ran. */
                sched_yield();
                SP_STAT_INC(ctx, poll_yields);
                yield_at = now + ctx->spin_yield_ns;
            }
        }
        /* The window counts time spent spinning, the timeout wall-clock
         * time (a timeout of -1 compares as the largest value). A handler
         * without io_poll registered meanwhile ends the spin, unless the
         * monitor sees it from user space. */
    } while (!hit && now - start - stalled_ns < window &&
             (uint64_t)(now - start) < (uint64_t)*timeout &&
             polling_sees_all(ctx, mon));

    ctx->clock_ns = now;
    w->unwaited_ns += stalled_ns;
    if (hit) {
        SP_STAT_INC(ctx, poll_hits);
        *timeout = 0;
        w->hit_ns = now;
    } else {
        SP_STAT_INC(ctx, poll_misses);
        if (*timeout > 0) {
            int64_t spun = now - start;
            *timeout = spun < *timeout ? *timeout - spun : 0;
        }
    }
    return progress;
}

bool sp_polling_leave(spindle_ctx *ctx, sp_wait_info *w, int64_t *timeout)
{
    if (!ctx->poll_started) {
        return false;
    }
    set_started(ctx, false, w);
    return poll_once(ctx, w, timeout);
}
