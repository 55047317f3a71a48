/* Timers: one binary heap per clock, ordered by (deadline, arm sequence).
 * SPDX-License-Identifier: MIT
 *
 * Every timer of a clock owns one slot of that clock's array, reserved when
 * it is created, so arming and disarming never allocate. The array keeps
 * the armed timers as a heap at its front and the disarmed ones behind it;
 * arming moves a timer across the boundary and sifts it, disarming moves it
 * back: O(log t) either way, and each timer knows its slot.
 *
 * Equal deadlines fire in arming order thanks to the sequence number taken
 * when a timer is armed. The same number keeps a run from being trapped: a
 * run fires only timers armed before it started, so a callback that re-arms
 * its timer in the past sees it fire in the next iteration, not this one.
 * Sequence numbers are compared modulo 2^32.
 *
 * Timers may be armed and disarmed from any thread, so the heaps sit under
 * timer_lock; callbacks run without it. The deadline is also kept in an
 * atomic so that pending/expire_ns need no lock.
 */
#include "ctx.h"

#include <errno.h>
#include <stdlib.h>

struct spindle_timer {
    spindle_ctx *ctx;
    spindle_io_fn *cb;
    void *opaque;
    _Atomic int64_t expire; /* -1 while disarmed */
    int64_t deadline;       /* timer_lock: the heap key while armed */
    uint32_t seq;           /* timer_lock */
    uint32_t slot;          /* timer_lock */
    spindle_clock clock;
};

static bool earlier(const spindle_timer *a, const spindle_timer *b)
{
    if (a->deadline != b->deadline) {
        return a->deadline < b->deadline;
    }
    return (int32_t)(a->seq - b->seq) < 0;
}

static void put(sp_timer_heap *hp, uint32_t i, spindle_timer *t)
{
    hp->slot[i] = t;
    t->slot = i;
}

static void sift_up(sp_timer_heap *hp, uint32_t i)
{
    spindle_timer *t = hp->slot[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (!earlier(t, hp->slot[parent])) {
            break;
        }
        put(hp, i, hp->slot[parent]);
        i = parent;
    }
    put(hp, i, t);
}

static void sift_down(sp_timer_heap *hp, uint32_t i)
{
    spindle_timer *t = hp->slot[i];
    for (;;) {
        uint32_t child = 2 * i + 1;
        if (child >= hp->armed) {
            break;
        }
        if (child + 1 < hp->armed && earlier(hp->slot[child + 1],
                                             hp->slot[child])) {
            child++;
        }
        if (!earlier(hp->slot[child], t)) {
            break;
        }
        put(hp, i, hp->slot[child]);
        i = child;
    }
    put(hp, i, t);
}

static void swap_slots(sp_timer_heap *hp, uint32_t a, uint32_t b)
{
    spindle_timer *ta = hp->slot[a];
    put(hp, a, hp->slot[b]);
    put(hp, b, ta);
}

static bool is_armed(const sp_timer_heap *hp, const spindle_timer *t)
{
    return t->slot < hp->armed;
}

/* timer_lock held, t armed. Moves t to the first disarmed slot. */
static void heap_remove(sp_timer_heap *hp, spindle_timer *t)
{
    uint32_t i = t->slot, last = hp->armed - 1;
    swap_slots(hp, i, last);
    hp->armed--;
    if (i < hp->armed) {
        /* The timer moved into the hole may belong above or below it. */
        if (i > 0 && earlier(hp->slot[i], hp->slot[(i - 1) / 2])) {
            sift_up(hp, i);
        } else {
            sift_down(hp, i);
        }
    }
    atomic_store_explicit(&t->expire, -1, memory_order_relaxed);
}

/* timer_lock held. Returns whether t is now the earliest of its clock. */
static bool heap_arm(spindle_ctx *ctx, spindle_timer *t, int64_t deadline)
{
    sp_timer_heap *hp = &ctx->timers[t->clock];
    t->deadline = deadline;
    t->seq = ctx->timer_seq++;
    atomic_store_explicit(&t->expire, deadline, memory_order_relaxed);
    if (is_armed(hp, t)) {
        sift_up(hp, t->slot);
        sift_down(hp, t->slot);
    } else {
        swap_slots(hp, t->slot, hp->armed);
        hp->armed++;
        sift_up(hp, t->slot);
    }
    return t->slot == 0;
}

spindle_timer *spindle_timer_new(spindle_ctx *ctx, spindle_clock clock,
                                 spindle_io_fn *cb, void *opaque)
{
    if (!ctx || !cb || (unsigned)clock > SPINDLE_CLOCK_REALTIME) {
        errno = EINVAL;
        return NULL;
    }
    spindle_timer *t = sp_calloc(1, sizeof(*t));
    if (!t) {
        errno = ENOMEM;
        return NULL;
    }
    t->ctx = ctx;
    t->cb = cb;
    t->opaque = opaque;
    t->clock = clock;
    atomic_init(&t->expire, -1);

    sp_timer_heap *hp = &ctx->timers[clock];
    pthread_mutex_lock(&ctx->timer_lock);
    if (hp->count == hp->capacity) {
        uint32_t cap = hp->capacity ? hp->capacity * 2 : 16;
        spindle_timer **slots = sp_realloc(hp->slot, sizeof(*slots) * cap);
        if (!slots) {
            pthread_mutex_unlock(&ctx->timer_lock);
            free(t);
            errno = ENOMEM;
            return NULL;
        }
        hp->slot = slots;
        hp->capacity = cap;
    }
    put(hp, hp->count++, t);
    pthread_mutex_unlock(&ctx->timer_lock);
    return t;
}

static void timer_arm(spindle_timer *t, int64_t expire_ns, bool anticipate)
{
    spindle_ctx *ctx = t->ctx;
    pthread_mutex_lock(&ctx->timer_lock);
    bool first = false;
    if (!anticipate || !is_armed(&ctx->timers[t->clock], t) ||
        expire_ns < t->deadline) {
        first = heap_arm(ctx, t, expire_ns);
    }
    pthread_mutex_unlock(&ctx->timer_lock);
    if (first) {
        /* The loop may be sleeping towards a later deadline. */
        sp_notify_remote(ctx);
    }
}

void spindle_timer_mod(spindle_timer *t, int64_t expire_ns)
{
    if (t) {
        timer_arm(t, expire_ns, false);
    }
}

void spindle_timer_mod_anticipate(spindle_timer *t, int64_t expire_ns)
{
    if (t) {
        timer_arm(t, expire_ns, true);
    }
}

/* Disarm t and, if `release`, give its slot up and free it. */
static void timer_disarm(spindle_timer *t, bool release)
{
    sp_timer_heap *hp = &t->ctx->timers[t->clock];
    pthread_mutex_lock(&t->ctx->timer_lock);
    if (is_armed(hp, t)) {
        heap_remove(hp, t);
    }
    if (release) {
        /* Fill the hole with the last disarmed timer. */
        swap_slots(hp, t->slot, hp->count - 1);
        hp->count--;
    }
    pthread_mutex_unlock(&t->ctx->timer_lock);
    if (release) {
        free(t);
    }
}

void spindle_timer_del(spindle_timer *t)
{
    if (t) {
        timer_disarm(t, false);
    }
}

void spindle_timer_free(spindle_timer *t)
{
    if (t) {
        timer_disarm(t, true);
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

static bool run_clock(spindle_ctx *ctx, spindle_clock clock)
{
    sp_timer_heap *hp = &ctx->timers[clock];
    bool progress = false;
    int64_t now = 0;

    pthread_mutex_lock(&ctx->timer_lock);
    if (hp->armed) {
        now = spindle_now_ns(clock);
    }
    uint32_t run_seq = ctx->timer_seq;
    while (hp->armed) {
        spindle_timer *t = hp->slot[0];
        /* Armed during this run (seq not before run_seq): next time. */
        if (t->deadline > now || (int32_t)(t->seq - run_seq) >= 0) {
            break;
        }
        heap_remove(hp, t);
        pthread_mutex_unlock(&ctx->timer_lock);
        /* t may be re-armed or freed by its callback: not touched after. */
        t->cb(t->opaque);
        progress = true;
        pthread_mutex_lock(&ctx->timer_lock);
    }
    pthread_mutex_unlock(&ctx->timer_lock);
    return progress;
}

bool sp_timers_run(spindle_ctx *ctx)
{
    bool progress = run_clock(ctx, SPINDLE_CLOCK_MONOTONIC);
    progress |= run_clock(ctx, SPINDLE_CLOCK_REALTIME);
    return progress;
}

int64_t sp_timers_timeout(spindle_ctx *ctx)
{
    int64_t timeout = -1;
    pthread_mutex_lock(&ctx->timer_lock);
    for (int c = SPINDLE_CLOCK_MONOTONIC; c <= SPINDLE_CLOCK_REALTIME; c++) {
        sp_timer_heap *hp = &ctx->timers[c];
        if (!hp->armed) {
            continue;
        }
        int64_t left = hp->slot[0]->deadline - spindle_now_ns(c);
        if (left < 0) {
            left = 0;
        }
        if (timeout < 0 || left < timeout) {
            timeout = left;
        }
    }
    pthread_mutex_unlock(&ctx->timer_lock);
    return timeout;
}

int sp_timers_init(spindle_ctx *ctx)
{
    int r = pthread_mutex_init(&ctx->timer_lock, NULL);
    return -r;
}

void sp_timers_destroy(spindle_ctx *ctx)
{
    for (int c = SPINDLE_CLOCK_MONOTONIC; c <= SPINDLE_CLOCK_REALTIME; c++) {
        sp_timer_heap *hp = &ctx->timers[c];
        for (uint32_t i = 0; i < hp->count; i++) {
            free(hp->slot[i]);
        }
        free(hp->slot);
    }
    pthread_mutex_destroy(&ctx->timer_lock);
}
