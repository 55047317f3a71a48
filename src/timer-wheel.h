/* The timer wheel: the structure that orders one clock's armed timers.
 * SPDX-License-Identifier: MIT
 *
 * Single-threaded: only the thread that holds the context's timers
 * (timer.c) calls these functions. timer-wheel.c explains the structure.
 */
#ifndef SPINDLE_TIMER_WHEEL_H
#define SPINDLE_TIMER_WHEEL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spindle.h"

/* Level 0 slots are 2^10 ns (about 1 us) wide; every level has 64 slots,
 * so level L slots are 2^(10 + 6L) ns wide. Nine levels cover every
 * deadline from 0 to INT64_MAX. */
#define SP_WHEEL_SLOT_BITS 6
#define SP_WHEEL_SLOTS (1u << SP_WHEEL_SLOT_BITS)
#define SP_WHEEL_RES_BITS 10
#define SP_WHEEL_LEVELS 9
/* Each bucket is this many lists, so that walking it keeps as many cache
 * misses in flight (timer-wheel.c). */
#ifndef SP_WHEEL_STRIPES
#define SP_WHEEL_STRIPES 8
#endif

/* One cache line. The first four fields belong to the wheel (loop side);
 * the others to timer.c, which documents them. */
struct spindle_timer {
    spindle_timer *next;     /* bucket, run or late list; slab free list */
    spindle_timer **pprev;   /* the pointer to this one; NULL: not linked */
    int64_t key;             /* the deadline the wheel placed it by */
    uint32_t seq;            /* arming order, for equal keys */
    _Atomic uint32_t ticket; /* order of a request from another thread */
    _Atomic int64_t expire;  /* the deadline last asked for; -1: disarmed */
    spindle_io_fn *cb;
    void *opaque;
    _Atomic(spindle_timer *) qnext; /* the request queue; NULL: not in it */
};

typedef spindle_timer *sp_wheel_bucket[SP_WHEEL_SLOTS][SP_WHEEL_STRIPES];

/* Levels from this one up spread their next big bucket ahead of time
 * (staging, timer-wheel.c), each over a spare set of buckets of its own. */
#ifndef SP_WHEEL_STAGE_LEVEL
#define SP_WHEEL_STAGE_LEVEL 3 /* >= SP_WHEEL_LEVELS: no staging */
#endif
#define SP_WHEEL_STAGED \
    (SP_WHEEL_STAGE_LEVEL < SP_WHEEL_LEVELS ? SP_WHEEL_LEVELS - SP_WHEEL_STAGE_LEVEL : 0)
/* The levels' buckets, then one spare set per staging level. */
#define SP_WHEEL_BUCKETS (SP_WHEEL_LEVELS + SP_WHEEL_STAGED)

/* One level's staging: the bucket being spread over the level's spare set,
 * by its start (-1: none), and the count of the next one. */
typedef struct sp_wheel_stage {
    int64_t start;
    spindle_timer *left[SP_WHEEL_STRIPES]; /* not spread yet */
    uint64_t nonempty;                     /* of the spare set; may be stale */
    /* The next bucket last counted (its start; -1: none) and whether it
     * held enough to stage; a small verdict is forgotten when a timer is
     * placed in that bucket. */
    int64_t counted_start;
    bool counted_big;
} sp_wheel_stage;

typedef struct sp_wheel {
    int64_t cur;             /* wheel time: where the unopened part starts */
    int64_t run_now;         /* the running run's `now`; INT64_MIN: none */
    size_t linked;           /* timers in the wheel, run and late list */
    spindle_timer *run;      /* opened timers, sorted by (key, seq) */
    spindle_timer *run_last;
    spindle_timer *late;     /* keys before cur, not yet sorted into run */
    uint64_t nonempty[SP_WHEEL_LEVELS]; /* may be stale: set, yet empty */
    /* Bit L: level L stages a bucket (stage[].start), or holds a small
     * verdict on its next one (stage[].counted_big): what placing a timer
     * at that level must look at. */
    uint16_t staging, small;
    sp_wheel_bucket *slot; /* [SP_WHEEL_BUCKETS] */
    /* sp_wheel_next's last answer (memo_next, for memo_exact), which holds
     * for any `now` in [memo_from, memo_until) until the wheel changes:
     * every change clears memo_valid (timer-wheel.c). */
    bool memo_valid, memo_exact;
    int64_t memo_next, memo_from, memo_until;
    /* Timers placed again, sorted or scanned so far (cascades, staging,
     * opening, an exact timeout): work that takes time. A caller compares
     * it before and after a call to know whether the time it read before
     * the call is stale. */
    uint64_t work;
    /* Levels SP_WHEEL_STAGE_LEVEL and up, lowest first; last, as arming
     * and disarming look at them only while a level stages. */
    sp_wheel_stage stage[SP_WHEEL_STAGED ? SP_WHEEL_STAGED : 1];
} sp_wheel;

/* `buckets`: SP_WHEEL_BUCKETS zeroed buckets, which the caller allocates
 * (and frees): 60 KiB. */
void sp_wheel_init(sp_wheel *w, sp_wheel_bucket *buckets);
/* Before inserting into an empty wheel: start the wheel time at `now`. */
void sp_wheel_settle(sp_wheel *w, int64_t now);
/* Link t by t->key (>= 0) and t->seq; O(1). */
void sp_wheel_insert(sp_wheel *w, spindle_timer *t);
/* Link t, or move it if it is linked, by key and seq; O(1). */
void sp_wheel_move(sp_wheel *w, spindle_timer *t, int64_t key, uint32_t seq);
/* Unlink t if it is linked; O(1). */
void sp_wheel_remove(sp_wheel *w, spindle_timer *t);

/* A run fires, in (key, seq) order, the timers due by `now` that were
 * armed before it started: start_run, then sp_wheel_due until it returns
 * NULL, unlinking each timer it returns before running its callback; then
 * end_run with what start_run returned (runs nest). */
int64_t sp_wheel_start_run(sp_wheel *w, int64_t now);
spindle_timer *sp_wheel_due(sp_wheel *w);
void sp_wheel_end_run(sp_wheel *w, int64_t outer);

/* A time at or before the earliest key: exactly it when `exact`, or when
 * that costs little (see timer-wheel.c); INT64_MAX with nothing linked.
 * Asked again of an unchanged wheel, it answers in O(1). */
int64_t sp_wheel_next(sp_wheel *w, int64_t now, bool exact);
/* Whether a run at `now` would do nothing: no timer due, no work pending.
 * Known only from sp_wheel_next's last answer, so false whenever the wheel
 * changed since; O(1). */
bool sp_wheel_quiet(const sp_wheel *w, int64_t now);

#endif
