/* Timers: the public calls, which thread may touch the wheels, and the
 * requests of the others.
 * SPDX-License-Identifier: MIT
 *
 * Each clock has a wheel (timer-wheel.c) that orders its armed timers.
 * The wheels, the slabs the timers live in and the sequence counter belong
 * to whoever holds the context's `owner` word:
 *   - the thread running the iteration takes it in sp_loop_enter and keeps
 *     it to sp_loop_leave, so a callback that arms, re-arms or disarms a
 *     timer (the common case: a timeout re-armed on every read) touches the
 *     wheel directly, with no lock and no atomic read-modify-write;
 *   - any other thread takes it (SP_OWNER_TIMER_CALL) with one
 *     compare-and-swap when no iteration runs, for the length of one call
 *     (and wakes the loop if
 *     it armed a timer earlier than `wake_at`: a host loop embedding the
 *     context sleeps outside any iteration, between spindle_prepare and
 *     spindle_check);
 *   - a thread that cannot take it (an iteration runs elsewhere) does not
 *     wait: spindle_timer_mod/mod_anticipate/del store the new deadline in
 *     the timer's `expire` and queue the timer on the context's request
 *     stack (lock-free, linked through the timer itself, so nothing is
 *     allocated), then wake the loop if the deadline is earlier than the
 *     one it sleeps towards (`wake_at`). The holder drains the stack before
 *     its own changes, before each timeout computation and before each run
 *     of timers, applying every queued timer's latest request.
 * Requests coalesce: a timer is queued at most once, and the drain applies
 * what its `expire` says then. Each request takes a ticket from a counter,
 * and a drained batch gets sequence numbers in ticket order, so that equal
 * deadlines still fire in the order they were asked for even when a timer
 * was asked for again while queued (it keeps its place on the stack).
 *
 * `expire` is what pending/expire_ns report: the latest request, from any
 * thread. The wheel orders timers by `key`, the deadline it placed them by,
 * which only the holder writes. A run fires a timer with a compare-and-swap
 * of `expire` from its key to -1: if another thread asked for something
 * else in between, the swap fails and the queued request decides instead.
 *
 * Memory: a timer is one cache line in a slab of 63 that belongs to its
 * clock (the slab header, found by aligning the timer's address down, says
 * which). Freed timers go on the clock's free list for the next
 * spindle_timer_new; slabs are released with the context. Under
 * AddressSanitizer and valgrind a freed timer is marked inaccessible, so a
 * use after free is still reported.
 */
#include "ctx.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>

#if defined(__SANITIZE_ADDRESS__)
#define SP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SP_ASAN 1
#endif
#endif
#ifdef SP_ASAN
#include <sanitizer/asan_interface.h>
#else
#define ASAN_POISON_MEMORY_REGION(a, n) ((void)(a), (void)(n))
#define ASAN_UNPOISON_MEMORY_REGION(a, n) ((void)(a), (void)(n))
#endif
#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define SP_VALGRIND 1
#endif
#endif
#ifndef SP_VALGRIND
#define VALGRIND_MAKE_MEM_NOACCESS(a, n) ((void)(a), (void)(n))
#define VALGRIND_MAKE_MEM_UNDEFINED(a, n) ((void)(a), (void)(n))
#endif

#define SLAB_BYTES 4096

struct sp_timer_slab {
    sp_timer_clock *clock;
    sp_timer_slab *next;
    spindle_timer timers[] __attribute__((aligned(64)));
};

#define SLAB_TIMERS \
    ((SLAB_BYTES - offsetof(sp_timer_slab, timers)) / sizeof(spindle_timer))

_Static_assert(sizeof(spindle_timer) == 64, "a timer is one cache line");

static sp_timer_clock *clock_of(const spindle_timer *t)
{
    uintptr_t slab = (uintptr_t)t & ~(uintptr_t)(SLAB_BYTES - 1);
    return ((const sp_timer_slab *)slab)->clock;
}

/* A free timer keeps only its `next` (the free list) readable. */
static void mark_free(spindle_timer *t)
{
    char *rest = (char *)t + sizeof(t->next);
    ASAN_POISON_MEMORY_REGION(rest, sizeof(*t) - sizeof(t->next));
    VALGRIND_MAKE_MEM_NOACCESS(rest, sizeof(*t) - sizeof(t->next));
}

static void mark_used(spindle_timer *t)
{
    ASAN_UNPOISON_MEMORY_REGION(t, sizeof(*t));
    VALGRIND_MAKE_MEM_UNDEFINED(t, sizeof(*t));
}

/* ------------------------------------------------------------------------
 * Holding the timers
 */

enum hold { HELD_BY_ITERATION, HELD_NOW, NOT_HELD };

static enum hold try_hold(spindle_ctx *ctx)
{
    uintptr_t owner = atomic_load_explicit(&ctx->owner, memory_order_relaxed);
    if (owner == sp_thread_id()) {
        return HELD_BY_ITERATION; /* taken in sp_loop_enter() */
    }
    /* The relaxed look saves the read-modify-write while someone holds
     * them. Acquire pairs with the release of the last holder (let_go(),
     * sp_loop_leave()): this thread sees the wheels as it left them. */
    if (owner == 0 &&
        atomic_compare_exchange_strong_explicit(&ctx->owner, &owner,
                                                SP_OWNER_TIMER_CALL,
                                                memory_order_acquire,
                                                memory_order_relaxed)) {
        return HELD_NOW;
    }
    return NOT_HELD;
}

static void let_go(spindle_ctx *ctx)
{
    atomic_store_explicit(&ctx->owner, 0, memory_order_release);
}

/* For the calls only the loop thread may make (SPEC section 1: or any
 * thread while no iteration runs): holders other than an iteration keep
 * them for one call. Returns whether the caller must let go. */
static bool hold_wait(spindle_ctx *ctx)
{
    for (unsigned spins = 0;; spins++) {
        enum hold h = try_hold(ctx);
        if (h != NOT_HELD) {
            return h == HELD_NOW;
        }
        if (spins == 64) {
            /* Called while another thread's iteration runs, against the
             * rules: end its sleep rather than wait for a wake-up. */
            spindle_notify(ctx);
        }
        sp_backoff(spins);
    }
}

/* ------------------------------------------------------------------------
 * Placing timers (holder only)
 */

static void place(sp_timer_clock *c, spindle_timer *t, int64_t expire,
                  uint32_t seq)
{
    if (expire < 0) {
        sp_wheel_remove(&c->wheel, t);
        return;
    }
    if (!c->wheel.linked) {
        sp_wheel_settle(&c->wheel, spindle_now_ns(c->clock));
    }
    sp_wheel_move(&c->wheel, t, expire, seq);
}

/* ------------------------------------------------------------------------
 * Requests from threads that do not hold the timers
 */

/* The bottom of the request stack, and the mark of a timer being pushed:
 * a queued timer's qnext is never NULL. */
#define QUEUE_END ((spindle_timer *)(uintptr_t)1)
#define QUEUE_CLAIMED ((spindle_timer *)(uintptr_t)2)

static void request(spindle_ctx *ctx, sp_timer_clock *c, spindle_timer *t,
                    int64_t expire, bool anticipate)
{
    /* seq_cst, as is the claim of qnext below: with drain_queue()'s
     * clearing of qnext and its load of expire, a Dekker pair. Either this
     * call finds the timer no longer queued and queues it again, or the
     * drain that dequeued it reads this deadline. */
    if (anticipate) {
        int64_t cur = atomic_load_explicit(&t->expire, memory_order_relaxed);
        do {
            if (cur >= 0 && cur <= expire) {
                return;
            }
        } while (!atomic_compare_exchange_weak_explicit(
            &t->expire, &cur, expire, memory_order_seq_cst,
            memory_order_relaxed));
    } else {
        atomic_store_explicit(&t->expire, expire, memory_order_seq_cst);
    }
    atomic_store_explicit(&t->ticket,
                          atomic_fetch_add_explicit(&ctx->timer_tickets, 1,
                                                    memory_order_relaxed),
                          memory_order_relaxed);

    spindle_timer *none = NULL;
    if (atomic_compare_exchange_strong_explicit(&t->qnext, &none,
                                                QUEUE_CLAIMED,
                                                memory_order_seq_cst,
                                                memory_order_relaxed)) {
        spindle_timer *head = atomic_load_explicit(&ctx->timer_queue,
                                                   memory_order_relaxed);
        do {
            atomic_store_explicit(&t->qnext, head, memory_order_relaxed);
            /* Release: the drain's acquiring exchange sees qnext. seq_cst:
             * with the load of wake_at below and the loop's store of
             * wake_at then load of the stack in sp_timers_timeout(), a
             * Dekker pair: either the loop sees this timer queued and does
             * not sleep, or this thread sees the deadline it sleeps to. */
        } while (!atomic_compare_exchange_weak_explicit(
            &ctx->timer_queue, &head, t, memory_order_seq_cst,
            memory_order_relaxed));
    }
    if (expire >= 0 &&
        expire < atomic_load_explicit(&c->wake_at, memory_order_seq_cst)) {
        spindle_notify(ctx);
    }
}

static uint32_t ticket_of(spindle_timer *t)
{
    return atomic_load_explicit(&t->ticket, memory_order_relaxed);
}

static spindle_timer *qnext_of(spindle_timer *t)
{
    return atomic_load_explicit(&t->qnext, memory_order_relaxed);
}

/* Apply every queued request. Holder only. */
static void drain_queue(spindle_ctx *ctx)
{
    /* Acquire pairs with the pushes' release. */
    spindle_timer *list = atomic_exchange_explicit(
        &ctx->timer_queue, QUEUE_END, memory_order_acquire);

    /* Sequence numbers in ticket order (modulo 2^32): the batch's tickets
     * span [lo, lo + span]. */
    uint32_t lo = ticket_of(list), hi = lo;
    for (spindle_timer *t = list; t != QUEUE_END; t = qnext_of(t)) {
        uint32_t k = ticket_of(t);
        lo = (int32_t)(k - lo) < 0 ? k : lo;
        hi = (int32_t)(k - hi) > 0 ? k : hi;
    }
    uint32_t base = ctx->timer_seq, span = hi - lo;
    ctx->timer_seq = base + span + 1;

    for (spindle_timer *t = list, *next; t != QUEUE_END; t = next) {
        next = qnext_of(t);
        /* See request(). */
        atomic_exchange_explicit(&t->qnext, NULL, memory_order_seq_cst);
        int64_t expire = atomic_load_explicit(&t->expire,
                                              memory_order_seq_cst);
        /* A request made since the first pass is the newest. */
        uint32_t off = ticket_of(t) - lo;
        place(clock_of(t), t, expire, base + (off > span ? span : off));
    }
}

static inline void drain(spindle_ctx *ctx)
{
    if (atomic_load_explicit(&ctx->timer_queue, memory_order_relaxed) !=
        QUEUE_END) {
        drain_queue(ctx);
    }
}

/* ------------------------------------------------------------------------
 * The public calls
 */

spindle_timer *spindle_timer_new(spindle_ctx *ctx, spindle_clock clock,
                                 spindle_io_fn *cb, void *opaque)
{
    if (!ctx || !cb || (unsigned)clock > SPINDLE_CLOCK_REALTIME) {
        errno = EINVAL;
        return NULL;
    }
    bool taken = hold_wait(ctx);
    sp_timer_clock *c = &ctx->timers[clock];
    if (!c->wheel.slot) {
        /* The clock's first timer: its wheel. */
        sp_wheel_bucket *buckets = sp_calloc(SP_WHEEL_BUCKETS,
                                             sizeof(*buckets));
        if (!buckets) {
            if (taken) {
                let_go(ctx);
            }
            errno = ENOMEM;
            return NULL;
        }
        sp_wheel_init(&c->wheel, buckets);
    }
    if (!c->free) {
        sp_timer_slab *s = sp_aligned_alloc(SLAB_BYTES, SLAB_BYTES);
        if (!s) {
            if (taken) {
                let_go(ctx);
            }
            errno = ENOMEM;
            return NULL;
        }
        s->clock = c;
        s->next = c->slabs;
        c->slabs = s;
        for (size_t i = SLAB_TIMERS; i-- > 0;) {
            s->timers[i].next = c->free;
            c->free = &s->timers[i];
            mark_free(&s->timers[i]);
        }
    }
    spindle_timer *t = c->free;
    c->free = t->next;
    mark_used(t);
    t->next = NULL;
    t->pprev = NULL;
    t->key = -1;
    t->seq = 0;
    atomic_init(&t->ticket, 0);
    atomic_init(&t->expire, -1);
    t->cb = cb;
    t->opaque = opaque;
    atomic_init(&t->qnext, NULL);
    if (taken) {
        let_go(ctx);
    }
    return t;
}

static void arm(spindle_timer *t, int64_t expire, bool anticipate)
{
    sp_timer_clock *c = clock_of(t);
    spindle_ctx *ctx = c->ctx;
    /* Negative values mean "disarmed" to pending/expire_ns; the clocks
     * never read below 0, so such a deadline is simply due. */
    if (expire < 0) {
        expire = 0;
    }
    enum hold h = try_hold(ctx);
    if (h == NOT_HELD) {
        request(ctx, c, t, expire, anticipate);
        return;
    }
    drain(ctx); /* requests made before this call come first */
    int64_t cur = atomic_load_explicit(&t->expire, memory_order_relaxed);
    bool moved = !anticipate || cur < 0 || expire < cur;
    if (moved) {
        atomic_store_explicit(&t->expire, expire, memory_order_relaxed);
        place(c, t, expire, ctx->timer_seq++);
    }
    if (h == HELD_NOW) {
        let_go(ctx);
        /* No iteration runs, but a host loop may sleep between
         * spindle_prepare and spindle_check on the timeout prepare
         * computed (embed.c). This thread took the timers after prepare
         * let them go, so it reads the wake_at prepare stored. */
        if (moved && expire < atomic_load_explicit(&c->wake_at,
                                                   memory_order_seq_cst)) {
            spindle_notify(ctx);
        }
    }
}

void spindle_timer_mod(spindle_timer *t, int64_t expire_ns)
{
    if (t) {
        arm(t, expire_ns, false);
    }
}

void spindle_timer_mod_anticipate(spindle_timer *t, int64_t expire_ns)
{
    if (t) {
        arm(t, expire_ns, true);
    }
}

void spindle_timer_mod_in(spindle_timer *t, int64_t delta_ns)
{
    if (!t) {
        return;
    }
    int64_t now = spindle_now_ns(clock_of(t)->clock);
    arm(t, delta_ns > INT64_MAX - now ? INT64_MAX : now + delta_ns, false);
}

void spindle_timer_del(spindle_timer *t)
{
    if (!t) {
        return;
    }
    sp_timer_clock *c = clock_of(t);
    spindle_ctx *ctx = c->ctx;
    enum hold h = try_hold(ctx);
    if (h == NOT_HELD) {
        request(ctx, c, t, -1, false);
        return;
    }
    drain(ctx);
    atomic_store_explicit(&t->expire, -1, memory_order_relaxed);
    sp_wheel_remove(&c->wheel, t);
    if (h == HELD_NOW) {
        let_go(ctx);
    }
}

void spindle_timer_free(spindle_timer *t)
{
    if (!t) {
        return;
    }
    sp_timer_clock *c = clock_of(t);
    spindle_ctx *ctx = c->ctx;
    bool taken = hold_wait(ctx);
    drain(ctx); /* takes t off the request stack, if it is on it */
    sp_wheel_remove(&c->wheel, t);
    t->next = c->free;
    c->free = t;
    mark_free(t);
    if (taken) {
        let_go(ctx);
    }
}

bool spindle_timer_pending(const spindle_timer *t)
{
    return t && atomic_load_explicit(&t->expire, memory_order_relaxed) >= 0;
}

int64_t spindle_timer_expire_ns(const spindle_timer *t)
{
    return t ? atomic_load_explicit(&t->expire, memory_order_relaxed) : -1;
}

/* ------------------------------------------------------------------------
 * The loop's side (ctx.c)
 */

bool sp_timers_run(spindle_ctx *ctx)
{
    drain(ctx);
    bool progress = false;
    for (int k = SPINDLE_CLOCK_MONOTONIC; k <= SPINDLE_CLOCK_REALTIME; k++) {
        sp_timer_clock *c = &ctx->timers[k];
        if (!c->wheel.linked) {
            continue;
        }
        int64_t now = spindle_now_ns(c->clock);
        if (sp_wheel_quiet(&c->wheel, now)) {
            continue; /* what this iteration's timeout saw still holds */
        }
        int64_t outer = sp_wheel_start_run(&c->wheel, now);
        spindle_timer *t;
        while ((t = sp_wheel_due(&c->wheel))) {
            sp_wheel_remove(&c->wheel, t);
            /* Fails if another thread asked for something else since the
             * wheel placed it (request()): its queued request decides. */
            int64_t key = t->key;
            if (!atomic_compare_exchange_strong_explicit(
                    &t->expire, &key, -1, memory_order_seq_cst,
                    memory_order_relaxed)) {
                continue;
            }
            /* The next one's user data is likely touched by its callback:
             * fetch it while this one runs. */
            if (c->wheel.run) {
                __builtin_prefetch(c->wheel.run->opaque);
            }
            /* The timer may be re-armed or freed by its callback: not
             * touched after this call. */
            t->cb(t->opaque);
            progress = true;
        }
        sp_wheel_end_run(&c->wheel, outer);
    }
    return progress;
}

/* Timers moved by a timeout computation past which the clock is read
 * again: a few microseconds of work. */
#define STALE_WORK 256

/* One clock's part of the timeout (-1: none armed), published for
 * request(). */
static int64_t clock_timeout(sp_timer_clock *c, bool exact)
{
    int64_t next = INT64_MAX, now = 0;
    bool armed = c->wheel.linked;
    if (armed) {
        now = spindle_now_ns(c->clock);
        uint64_t work = c->wheel.work;
        next = sp_wheel_next(&c->wheel, now, exact);
        if (c->wheel.work - work > STALE_WORK) {
            /* The wheel cascaded or staged a big bucket (milliseconds, at
             * hundreds of thousands of timers): the timeout runs from
             * now, or the loop would sleep that much past the deadline. */
            now = spindle_now_ns(c->clock);
        }
    }
    /* seq_cst: see request(). Unchanged, it needs no store: a request
     * that reads it decides as it would after one. */
    if (atomic_load_explicit(&c->wake_at, memory_order_relaxed) != next) {
        atomic_store_explicit(&c->wake_at, next, memory_order_seq_cst);
    }
    /* Even at INT64_MAX, an armed timer is a deadline, not "none". */
    return armed ? (next > now ? next - now : 0) : -1;
}

int64_t sp_timers_timeout(spindle_ctx *ctx, bool exact)
{
    bool taken = hold_wait(ctx); /* spindle_compute_timeout() */
    int64_t timeout = 0;
    /* A request that came in meanwhile (the check below pairs with
     * request()) is applied and the timeout computed again, once; if
     * requests keep coming, the loop does not sleep and the run (step 6)
     * applies them. */
    for (int round = 0; round < 2; round++) {
        drain(ctx);
        timeout = -1;
        for (int k = SPINDLE_CLOCK_MONOTONIC; k <= SPINDLE_CLOCK_REALTIME;
             k++) {
            int64_t left = clock_timeout(&ctx->timers[k], exact);
            if (left >= 0 && (timeout < 0 || left < timeout)) {
                timeout = left;
            }
        }
        if (atomic_load_explicit(&ctx->timer_queue, memory_order_seq_cst) ==
            QUEUE_END) {
            break;
        }
        timeout = 0;
    }
    if (taken) {
        let_go(ctx);
    }
    return timeout;
}

int sp_timers_init(spindle_ctx *ctx)
{
    atomic_init(&ctx->timer_queue, QUEUE_END);
    atomic_init(&ctx->timer_tickets, 0);
    for (int k = SPINDLE_CLOCK_MONOTONIC; k <= SPINDLE_CLOCK_REALTIME; k++) {
        sp_timer_clock *c = &ctx->timers[k];
        c->ctx = ctx;
        c->clock = (spindle_clock)k;
        sp_wheel_init(&c->wheel, NULL);
        /* Until a timeout is computed nothing sleeps on one: no deadline
         * is earlier than this, so no change needs to wake anybody. */
        atomic_init(&c->wake_at, INT64_MIN);
    }
    return 0;
}

void sp_timers_destroy(spindle_ctx *ctx)
{
    for (int k = SPINDLE_CLOCK_MONOTONIC; k <= SPINDLE_CLOCK_REALTIME; k++) {
        sp_timer_slab *s = ctx->timers[k].slabs;
        while (s) {
            sp_timer_slab *next = s->next;
            free(s);
            s = next;
        }
        free(ctx->timers[k].wheel.slot);
    }
}
