/* Timers: one 4-ary heap per clock, ordered by (deadline, arm sequence).
 * SPDX-License-Identifier: MIT
 *
 * Every timer of a clock owns one entry of that clock's array, reserved
 * when it is created, so arming and disarming never allocate. The array
 * keeps the armed timers as a heap at its front and the disarmed ones
 * behind it; arming moves a timer across the boundary and sifts it,
 * disarming moves it back: O(log t) either way, and each timer knows its
 * slot. Entries hold their key (deadline, sequence), and the heap is 4-ary:
 * with a million timers a binary heap of pointers spent most of its time in
 * cache misses, one per level and comparison; here a level is one or two
 * cache lines and there are half as many levels.
 *
 * Equal deadlines fire in arming order thanks to the sequence number taken
 * when a timer is armed (compared modulo 2^32). The same number keeps a run
 * from being trapped: a run fires only due timers armed before it started,
 * so a callback that re-arms its timer in the past sees it fire in the next
 * iteration. Such a timer may sit at the root and hide due timers behind
 * it; due entries always form the top of the heap, so the run then
 * searches that top part for the earliest one it may fire (find_due).
 *
 * Timers may be armed and disarmed from any thread, so the heaps sit under
 * timer_lock; callbacks run without it. The deadline is also kept in an
 * atomic in the timer so that pending/expire_ns need no lock, and the
 * root's deadline in the heap so that an iteration with nothing due takes
 * no lock either.
 */
#include "ctx.h"

#include <errno.h>
#include <stdlib.h>

struct spindle_timer {
    spindle_ctx *ctx;
    spindle_io_fn *cb;
    void *opaque;
    _Atomic int64_t expire; /* -1 while disarmed */
    uint32_t slot;          /* timer_lock */
    spindle_clock clock;
};

#define ARITY 4

static bool earlier(const sp_timer_entry *a, const sp_timer_entry *b)
{
    if (a->deadline != b->deadline) {
        return a->deadline < b->deadline;
    }
    return (int32_t)(a->seq - b->seq) < 0;
}

static void put(sp_timer_heap *hp, uint32_t i, sp_timer_entry e)
{
    hp->slot[i] = e;
    e.timer->slot = i;
    /* Only the root of a non-empty heap is the next deadline; slot 0 is
     * also written while the heap is empty, as a disarmed timer's home. */
    if (i == 0 && hp->armed) {
        atomic_store_explicit(&hp->next_deadline, e.deadline,
                              memory_order_relaxed);
    }
}

static void sift_up(sp_timer_heap *hp, uint32_t i)
{
    sp_timer_entry e = hp->slot[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / ARITY;
        if (!earlier(&e, &hp->slot[parent])) {
            break;
        }
        put(hp, i, hp->slot[parent]);
        i = parent;
    }
    put(hp, i, e);
}

static void sift_down(sp_timer_heap *hp, uint32_t i)
{
    sp_timer_entry e = hp->slot[i];
    for (;;) {
        uint32_t first = ARITY * i + 1;
        if (first >= hp->armed) {
            break;
        }
        uint32_t end = first + ARITY < hp->armed ? first + ARITY : hp->armed;
        uint32_t best = first;
        for (uint32_t c = first + 1; c < end; c++) {
            if (earlier(&hp->slot[c], &hp->slot[best])) {
                best = c;
            }
        }
        if (!earlier(&hp->slot[best], &e)) {
            break;
        }
        put(hp, i, hp->slot[best]);
        i = best;
    }
    put(hp, i, e);
}

static void swap_slots(sp_timer_heap *hp, uint32_t a, uint32_t b)
{
    sp_timer_entry ea = hp->slot[a];
    put(hp, a, hp->slot[b]);
    put(hp, b, ea);
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
        /* The entry moved into the hole may belong above or below it. */
        if (i > 0 && earlier(&hp->slot[i], &hp->slot[(i - 1) / ARITY])) {
            sift_up(hp, i);
        } else {
            sift_down(hp, i);
        }
    }
    if (!hp->armed) {
        atomic_store_explicit(&hp->next_deadline, INT64_MAX,
                              memory_order_relaxed);
    }
    atomic_store_explicit(&t->expire, -1, memory_order_relaxed);
}

/* timer_lock held. Returns whether t is now the earliest of its clock. */
static bool heap_arm(spindle_ctx *ctx, spindle_timer *t, int64_t deadline)
{
    sp_timer_heap *hp = &ctx->timers[t->clock];
    atomic_store_explicit(&t->expire, deadline, memory_order_relaxed);
    if (!is_armed(hp, t)) {
        swap_slots(hp, t->slot, hp->armed);
        hp->armed++;
    }
    uint32_t i = t->slot;
    hp->slot[i].deadline = deadline;
    hp->slot[i].seq = ctx->timer_seq++;
    if (i > 0 && earlier(&hp->slot[i], &hp->slot[(i - 1) / ARITY])) {
        sift_up(hp, i);
    } else {
        sift_down(hp, i);
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
        /* 1.5x: a slot is reserved for every timer that exists, so the
         * slack is memory each timer pays for. */
        uint32_t cap = hp->capacity ? hp->capacity + hp->capacity / 2 : 16;
        sp_timer_entry *slots = sp_realloc(hp->slot, sizeof(*slots) * cap);
        if (!slots) {
            pthread_mutex_unlock(&ctx->timer_lock);
            free(t);
            errno = ENOMEM;
            return NULL;
        }
        hp->slot = slots;
        hp->capacity = cap;
    }
    put(hp, hp->count++, (sp_timer_entry){ .timer = t });
    pthread_mutex_unlock(&ctx->timer_lock);
    return t;
}

static void timer_arm(spindle_timer *t, int64_t expire_ns, bool anticipate)
{
    spindle_ctx *ctx = t->ctx;
    /* Negative values mean "disarmed" to pending/expire_ns; the clocks
     * never read below 0, so such a deadline is simply due. */
    if (expire_ns < 0) {
        expire_ns = 0;
    }
    pthread_mutex_lock(&ctx->timer_lock);
    bool first = false;
    sp_timer_heap *hp = &ctx->timers[t->clock];
    if (!anticipate || !is_armed(hp, t) ||
        expire_ns < atomic_load_explicit(&t->expire, memory_order_relaxed)) {
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

#define NO_SLOT UINT32_MAX

/* The earliest entry in the subtree at i that is due by `now` and was armed
 * before run_seq, or `best` if none is earlier. Due entries form the top of
 * the heap, and nothing below an entry is earlier than it, so the search
 * stops at entries not due and at the first fireable one on each path. */
static uint32_t find_due(const sp_timer_heap *hp, uint32_t i, int64_t now,
                         uint32_t run_seq, uint32_t best)
{
    if (i >= hp->armed || hp->slot[i].deadline > now) {
        return best;
    }
    if ((int32_t)(hp->slot[i].seq - run_seq) < 0) {
        return best == NO_SLOT || earlier(&hp->slot[i], &hp->slot[best])
                   ? i : best;
    }
    for (uint32_t c = ARITY * i + 1; c <= ARITY * i + ARITY; c++) {
        best = find_due(hp, c, now, run_seq, best);
    }
    return best;
}

static bool run_clock(spindle_ctx *ctx, spindle_clock clock)
{
    sp_timer_heap *hp = &ctx->timers[clock];
    int64_t next = atomic_load_explicit(&hp->next_deadline,
                                        memory_order_relaxed);
    if (next == INT64_MAX) {
        return false;
    }
    int64_t now = spindle_now_ns(clock);
    if (next > now) {
        /* A stale value only delays a timer armed by another thread, which
         * then wakes the loop anyway (timer_arm notifies). */
        return false;
    }

    bool progress = false;
    pthread_mutex_lock(&ctx->timer_lock);
    uint32_t run_seq = ctx->timer_seq;
    while (hp->armed) {
        uint32_t i = (int32_t)(hp->slot[0].seq - run_seq) < 0 &&
                             hp->slot[0].deadline <= now
                         ? 0 : find_due(hp, 0, now, run_seq, NO_SLOT);
        if (i == NO_SLOT) {
            break;
        }
        sp_timer_entry e = hp->slot[i];
        heap_remove(hp, e.timer);
        pthread_mutex_unlock(&ctx->timer_lock);
        /* The timer may be re-armed or freed by its callback: not touched
         * after this call. */
        e.timer->cb(e.timer->opaque);
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
    for (int c = SPINDLE_CLOCK_MONOTONIC; c <= SPINDLE_CLOCK_REALTIME; c++) {
        int64_t next = atomic_load_explicit(&ctx->timers[c].next_deadline,
                                            memory_order_relaxed);
        if (next == INT64_MAX) {
            continue;
        }
        int64_t left = next - spindle_now_ns(c);
        if (left < 0) {
            left = 0;
        }
        if (timeout < 0 || left < timeout) {
            timeout = left;
        }
    }
    return timeout;
}

int sp_timers_init(spindle_ctx *ctx)
{
    for (int c = SPINDLE_CLOCK_MONOTONIC; c <= SPINDLE_CLOCK_REALTIME; c++) {
        atomic_init(&ctx->timers[c].next_deadline, INT64_MAX);
    }
    return -pthread_mutex_init(&ctx->timer_lock, NULL);
}

void sp_timers_destroy(spindle_ctx *ctx)
{
    for (int c = SPINDLE_CLOCK_MONOTONIC; c <= SPINDLE_CLOCK_REALTIME; c++) {
        sp_timer_heap *hp = &ctx->timers[c];
        for (uint32_t i = 0; i < hp->count; i++) {
            free(hp->slot[i].timer);
        }
        free(hp->slot);
    }
    pthread_mutex_destroy(&ctx->timer_lock);
}
