/* The timer wheel: one clock's armed timers, in the order they must fire.
 * SPDX-License-Identifier: MIT
 *
 * A hierarchical timing wheel with a sorted near part, after the kernel's
 * timer wheel (with cascades) and Netty's: arming and disarming are O(1),
 * and a timer is touched a few times over its whole life, each time as
 * part of a batch, instead of once per heap level on every operation.
 *
 * Nine levels of 64 buckets. A level-L bucket holds the timers whose keys
 * agree with `cur` (the wheel time: where the unopened part of the wheel
 * starts) on every bit above level L's six bits and differ from it in
 * those: level 0 slots are 2^10 ns wide, level L slots 2^(10 + 6L) ns.
 * Buckets are unsorted lists (push at the head); every level has a bitmap
 * of the buckets that may be non-empty (a set bit may be stale; whoever
 * finds its bucket empty clears it). The earliest timers are always in the
 * first non-empty bucket of the lowest non-empty level.
 *
 * Timers leave the wheel in time order. When the earliest bucket is due,
 * it is *cascaded* if above level 0: `cur` moves to its start and each of
 * its timers is placed again relative to it, landing lower. A level-0
 * bucket is *opened*: its timers are sorted by (key, seq) and appended to
 * the run, a sorted list, and `cur` moves past it (a carry into the next
 * slot of a higher level cascades that slot). Every key in the run is
 * below `cur`, every key in the buckets at or above it, so the run's head
 * is the earliest timer of all. Buckets are opened one at a time while
 * firing, so the timers being sorted and fired are still in cache from
 * the cascade that brought them down.
 *
 * A timer armed for a key below `cur` (in the past, or within the slot
 * just opened) goes on the late list, which is sorted and merged into the
 * run before the next run of timers and before each timeout computation.
 * During a run, a timer armed for a key at or before that run's `now` goes
 * there too, so that it waits for a later run (SPEC: a timer armed while
 * timers run never fires in that run).
 *
 * Keys are the deadlines in ns of the clock; only the realtime clock can go
 * backwards. If it goes back by more than a slot or two, every timer is
 * placed again from the new time (O(t), once per jump), so that the late
 * list does not fill with every timer armed until the clock catches up.
 *
 * Costs: insert and remove O(1). Each timer is moved once per level it
 * descends (at most 8) and sorted once in its level-0 bucket. The timeout
 * is exact unless the earliest timers are in a bucket that is more than
 * one level-1 slot away and holds more than SCAN_MAX timers; the loop then
 * wakes at that bucket's start, at most once per level. Asked again of an
 * unchanged wheel, the timeout costs O(1) (the memo, at sp_wheel_next).
 */
#include "timer-wheel.h"

#include <stddef.h>

#define RES ((uint64_t)1 << SP_WHEEL_RES_BITS)
#define SLOT_MASK ((uint64_t)SP_WHEEL_SLOTS - 1)
/* Buckets that start within this of `now` are cascaded or opened ahead of
 * time by a timeout computation, so that the loop sleeps to an exact
 * deadline; it bounds how far `cur` runs ahead of the clock, hence which
 * new timers go on the late list. One level-1 slot. */
#define EARLY_NS ((int64_t)1 << (SP_WHEEL_RES_BITS + SP_WHEEL_SLOT_BITS))
/* A bucket above level 0 this small is scanned for its earliest key. */
#define SCAN_MAX 8
#define NOT_RUNNING INT64_MIN

static unsigned shift_of(unsigned level)
{
    return SP_WHEEL_RES_BITS + SP_WHEEL_SLOT_BITS * level;
}

static unsigned digit(uint64_t t, unsigned level)
{
    return (unsigned)((t >> shift_of(level)) & SLOT_MASK);
}

static bool before(const spindle_timer *a, const spindle_timer *b)
{
    if (a->key != b->key) {
        return a->key < b->key;
    }
    /* Modulo 2^32: equal keys armed 2^31 armings apart are misordered. */
    return (int32_t)(a->seq - b->seq) < 0;
}

/* ------------------------------------------------------------------------
 * Lists. pprev points at whatever points at the timer; `next` is the first
 * field, so a pprev that is not a list head is the previous timer.
 */

_Static_assert(offsetof(spindle_timer, next) == 0, "next must come first");

static void push(spindle_timer **head, spindle_timer *t)
{
    spindle_timer *first = *head;
    t->next = first;
    t->pprev = head;
    if (first) {
        first->pprev = &t->next;
    }
    *head = t;
}

static spindle_timer *run_prev(sp_wheel *w, spindle_timer *t)
{
    return t->pprev == &w->run ? NULL : (spindle_timer *)(void *)t->pprev;
}

/* Insert t into the run right after `pos` (NULL: at the head). */
static void run_insert_after(sp_wheel *w, spindle_timer *pos, spindle_timer *t)
{
    push(pos ? &pos->next : &w->run, t);
    if (pos == w->run_last) {
        w->run_last = t;
    }
}

static spindle_timer *merge(spindle_timer *a, spindle_timer *b)
{
    spindle_timer *head, **tail = &head;
    while (a && b) {
        if (before(b, a)) {
            *tail = b;
            tail = &b->next;
            b = b->next;
        } else {
            *tail = a;
            tail = &a->next;
            a = a->next;
        }
    }
    *tail = a ? a : b;
    return head;
}

/* Sort the timers of `n` lists linked by `next` into one (pprev is left
 * stale): bottom-up merge sort, part[i] holding 2^i timers, as in Linux's
 * list_sort. */
static spindle_timer *sort(spindle_timer **lists, unsigned n)
{
    spindle_timer *part[64] = { NULL };
    unsigned top = 0;
    for (unsigned k = 0; k < n; k++) {
        spindle_timer *list = lists[k];
        while (list) {
            spindle_timer *t = list;
            list = list->next;
            t->next = NULL;
            unsigned i = 0;
            for (; part[i]; i++) {
                t = merge(part[i], t);
                part[i] = NULL;
            }
            part[i] = t;
            if (i > top) {
                top = i;
            }
        }
    }
    spindle_timer *out = NULL;
    for (unsigned i = 0; i <= top; i++) {
        if (part[i]) {
            out = out ? merge(part[i], out) : part[i];
        }
    }
    return out;
}

/* ------------------------------------------------------------------------
 * Placing and moving timers
 */

static unsigned stripe_of(const spindle_timer *t)
{
    return (unsigned)((uintptr_t)t / sizeof(*t)) % SP_WHEEL_STRIPES;
}

/* The bucket list for a key at or after cur, and its level and digit. */
static spindle_timer **bucket_of(sp_wheel *w, const spindle_timer *t,
                                 uint64_t key, unsigned *level, unsigned *d)
{
    uint64_t x = (key ^ (uint64_t)w->cur) >> SP_WHEEL_RES_BITS;
    *level = x ? (63u - (unsigned)__builtin_clzll(x)) / SP_WHEEL_SLOT_BITS
               : 0;
    *d = digit(key, *level);
    return &w->slot[*level][*d][stripe_of(t)];
}

/* Whether a key goes on the late list rather than into a bucket. */
static bool is_late(const sp_wheel *w, int64_t key)
{
    return (uint64_t)key < (uint64_t)w->cur ||
           (w->run_now != NOT_RUNNING && key <= w->run_now);
}

static bool is_staged(const sp_wheel *w, unsigned level, unsigned d)
{
    return w->stage_level && level == w->stage_level && d == w->stage_digit;
}

/* Into the staging area: by the digit of the level below the staged one. */
static void place_staged(sp_wheel *w, spindle_timer *t)
{
    unsigned sub = digit((uint64_t)t->key, w->stage_level - 1);
    push(&w->slot[SP_WHEEL_LEVELS][sub][stripe_of(t)], t);
    w->stage_nonempty |= (uint64_t)1 << sub;
}

static void place(sp_wheel *w, spindle_timer *t)
{
    if ((uint64_t)t->key < (uint64_t)w->cur) {
        push(&w->late, t);
        return;
    }
    unsigned level, d;
    spindle_timer **list = bucket_of(w, t, (uint64_t)t->key, &level, &d);
    if (is_staged(w, level, d)) {
        place_staged(w, t);
        return;
    }
    push(list, t);
    w->nonempty[level] |= (uint64_t)1 << d;
    if (d == w->counted_digit[level] && !w->counted_big[level]) {
        w->counted_start[level] = -1; /* it grew: count it again */
    }
}

static bool bucket_empty(const sp_wheel *w, unsigned level, unsigned d)
{
    if (is_staged(w, level, d)) {
        return false;
    }
    for (unsigned k = 0; k < SP_WHEEL_STRIPES; k++) {
        if (w->slot[level][d][k]) {
            return false;
        }
    }
    return true;
}

static void take_bucket(sp_wheel *w, unsigned level, unsigned d,
                        spindle_timer **lists)
{
    for (unsigned k = 0; k < SP_WHEEL_STRIPES; k++) {
        lists[k] = w->slot[level][d][k];
        w->slot[level][d][k] = NULL;
    }
    w->nonempty[level] &= ~((uint64_t)1 << d);
}

/* Place again every timer of a taken bucket. The stripes are walked side by
 * side, each one's next timer fetched while the others are placed: a walk
 * of one list would wait for a cache miss at every timer. */
static void place_all(sp_wheel *w, spindle_timer **lists)
{
    bool more;
    do {
        more = false;
        for (unsigned k = 0; k < SP_WHEEL_STRIPES; k++) {
            spindle_timer *t = lists[k];
            if (t) {
                lists[k] = t->next;
                if (t->next) {
                    __builtin_prefetch(t->next, 1);
                    more = true;
                }
                place(w, t);
            }
        }
    } while (more);
}

/* Bring a taken bucket's timers into the cache, the stripes side by side,
 * before the sort walks them one list at a time. */
static void fetch(spindle_timer **lists)
{
    spindle_timer *t[SP_WHEEL_STRIPES];
    bool more;
    for (unsigned k = 0; k < SP_WHEEL_STRIPES; k++) {
        t[k] = lists[k];
    }
    do {
        more = false;
        for (unsigned k = 0; k < SP_WHEEL_STRIPES; k++) {
            if (t[k] && (t[k] = t[k]->next)) {
                __builtin_prefetch(t[k]);
                more = true;
            }
        }
    } while (more);
}

static uint64_t bucket_start(const sp_wheel *w, unsigned level, unsigned d)
{
    unsigned s = shift_of(level), above = s + SP_WHEEL_SLOT_BITS;
    uint64_t high = above >= 64 ? 0 : ((uint64_t)w->cur >> above) << above;
    return high | ((uint64_t)d << s);
}

/* ------------------------------------------------------------------------
 * Staging. A cascade moves a whole bucket at once, and a bucket far up
 * holds every timer due within its slot: at a million timers a second a
 * level-3 slot (268 ms) holds 268,000, several milliseconds of work during
 * which due timers wait. So the next bucket of a level at or above
 * SP_WHEEL_STAGE_LEVEL is spread ahead of time over a spare set of 64
 * buckets laid out as the level below it will be once the wheel time
 * reaches it: after each run, SP_WHEEL_STAGE_BUDGET timers; in a timeout
 * computation, as many as fit before the deadline the loop is about to
 * sleep to (work that delays nothing due; a loop that sleeps through the
 * staging window would otherwise do none). Timers armed for it meanwhile go
 * straight there. When the wheel time reaches it, the level below is empty
 * (the wheel time never passes a timer), and the spare set takes its place:
 * what is left to cascade at once is its first slot.
 */

#ifndef SP_WHEEL_STAGE_LEVEL
#define SP_WHEEL_STAGE_LEVEL 3 /* >= SP_WHEEL_LEVELS: no staging */
#endif
#ifndef SP_WHEEL_STAGE_BUDGET
#define SP_WHEEL_STAGE_BUDGET 2048 /* timers spread per call, at least */
#endif
/* Spreading a timer costs about 10 ns (one cache miss, overlapped with
 * others'): a generous estimate, to finish before the next deadline. */
#define STAGE_NS_PER_TIMER 40
#ifndef SP_WHEEL_STAGE_MIN
#define SP_WHEEL_STAGE_MIN 4096 /* timers: smaller buckets are not staged */
#endif
#define STAGE_MIN SP_WHEEL_STAGE_MIN

static void stage_spread(sp_wheel *w, unsigned budget)
{
    bool more;
    do {
        more = false;
        for (unsigned k = 0; k < SP_WHEEL_STRIPES && budget; k++) {
            spindle_timer *t = w->stage_left[k];
            if (t) {
                w->stage_left[k] = t->next;
                if (t->next) {
                    /* A timer may be removed from what is left meanwhile. */
                    t->next->pprev = &w->stage_left[k];
                    __builtin_prefetch(t->next, 1);
                    more = true;
                }
                place_staged(w, t);
                budget--;
            }
        }
    } while (more && budget);
}

/* Whether a bucket holds at least `n` timers (it counts that far). */
static bool bucket_holds(const sp_wheel *w, unsigned level, unsigned d,
                         unsigned n)
{
    spindle_timer *const *lists = w->slot[level][d];
    for (unsigned k = 0; k < SP_WHEEL_STRIPES; k++) {
        for (spindle_timer *t = lists[k]; t; t = t->next) {
            if (--n == 0) {
                return true;
            }
        }
    }
    return false;
}

/* The bucket to stage next: the next one of the highest level at or above
 * SP_WHEEL_STAGE_LEVEL that has one with at least STAGE_MIN timers (a
 * smaller one cascades at once in well under a millisecond), and when its
 * staging should start (a quarter of its slot width before it). false:
 * none. */
static bool stage_next(sp_wheel *w, unsigned *level, unsigned *d,
                       int64_t *at)
{
    for (unsigned l = SP_WHEEL_LEVELS; l-- > SP_WHEEL_STAGE_LEVEL;) {
        unsigned from = digit((uint64_t)w->cur, l) + 1;
        uint64_t bits = from >= SP_WHEEL_SLOTS ? 0
                        : w->nonempty[l] & (~(uint64_t)0 << from);
        if (!bits) {
            continue;
        }
        unsigned i = (unsigned)__builtin_ctzll(bits);
        int64_t start = (int64_t)bucket_start(w, l, i);
        if (w->counted_start[l] != start || w->counted_digit[l] != i) {
            /* Counted once per bucket: the loop asks on every timeout. */
            w->counted_start[l] = start;
            w->counted_digit[l] = (uint8_t)i;
            w->counted_big[l] = bucket_holds(w, l, i, STAGE_MIN);
        }
        if (!w->counted_big[l]) {
            continue;
        }
        *level = l;
        *d = i;
        *at = start - ((int64_t)1 << (shift_of(l) - 2));
        return true;
    }
    return false;
}

/* Start staging the next bucket if its time has come, and spread part of
 * it: SP_WHEEL_STAGE_BUDGET timers, or as many as fit before `until` (what
 * is due next). */
static void stage_work(sp_wheel *w, int64_t now, int64_t until)
{
    unsigned l, d;
    int64_t at;
    if (!w->stage_level && stage_next(w, &l, &d, &at) && at <= now) {
        for (unsigned k = 0; k < SP_WHEEL_STRIPES; k++) {
            w->stage_left[k] = w->slot[l][d][k];
            if (w->stage_left[k]) {
                w->stage_left[k]->pprev = &w->stage_left[k];
            }
            w->slot[l][d][k] = NULL;
        }
        w->stage_level = l;
        w->stage_digit = d;
    }
    if (w->stage_level) {
        int64_t fit = until > now ? (until - now) / STAGE_NS_PER_TIMER : 0;
        fit = fit < SP_WHEEL_STAGE_BUDGET ? SP_WHEEL_STAGE_BUDGET : fit;
        stage_spread(w, fit > UINT32_MAX ? UINT32_MAX : (unsigned)fit);
    }
}

/* The wheel time reached the staged bucket: its spare set becomes the level
 * below. */
static void stage_land(sp_wheel *w)
{
    stage_spread(w, UINT32_MAX);
    unsigned below = w->stage_level - 1;
    sp_wheel_bucket *spare = &w->slot[SP_WHEEL_LEVELS];
    for (uint64_t bits = w->stage_nonempty; bits; bits &= bits - 1) {
        unsigned j = (unsigned)__builtin_ctzll(bits);
        for (unsigned k = 0; k < SP_WHEEL_STRIPES; k++) {
            spindle_timer *first = (*spare)[j][k];
            w->slot[below][j][k] = first;
            if (first) {
                first->pprev = &w->slot[below][j][k];
            }
            (*spare)[j][k] = NULL;
        }
    }
    w->nonempty[below] |= w->stage_nonempty;
    w->nonempty[w->stage_level] &= ~((uint64_t)1 << w->stage_digit);
    w->stage_nonempty = 0;
    w->stage_level = 0;
}

/* Cascade a bucket whose slot the wheel time just entered. */
static void cascade(sp_wheel *w, unsigned level, unsigned d)
{
    if (is_staged(w, level, d)) {
        stage_land(w);
        /* The wheel time is at the start of the slot: the first slot of the
         * level below is its own, which must be empty. */
        if (level > 1) {
            cascade(w, level - 1, digit((uint64_t)w->cur, level - 1));
        }
        return;
    }
    spindle_timer *lists[SP_WHEEL_STRIPES];
    take_bucket(w, level, d, lists);
    place_all(w, lists);
}

/* Move the wheel time forward to `cur`. If that carries into the next slot
 * of a higher level, that slot's timers now agree with `cur` on its digit:
 * they belong lower, so it is cascaded. (The levels below it are empty: the
 * wheel time never passes a timer.) */
static void set_cur(sp_wheel *w, uint64_t cur)
{
    uint64_t changed = ((uint64_t)w->cur ^ cur) >>
                       (SP_WHEEL_RES_BITS + SP_WHEEL_SLOT_BITS);
    w->cur = (int64_t)cur;
    if (changed) {
        unsigned level = 1 + (63u - (unsigned)__builtin_clzll(changed)) /
                                 SP_WHEEL_SLOT_BITS;
        if (level < SP_WHEEL_LEVELS) {
            cascade(w, level, digit(cur, level));
        }
    }
}

/* The first non-empty bucket: at level 0 from cur's slot on, above it after
 * cur's slot (cur's own slot there is always empty). */
static bool earliest(sp_wheel *w, unsigned *level, unsigned *d)
{
    for (unsigned l = 0; l < SP_WHEEL_LEVELS; l++) {
        uint64_t bits = w->nonempty[l];
        if (!bits) {
            continue;
        }
        unsigned from = digit((uint64_t)w->cur, l) + (l > 0);
        bits = from >= SP_WHEEL_SLOTS ? 0 : bits & (~(uint64_t)0 << from);
        while (bits) {
            unsigned i = (unsigned)__builtin_ctzll(bits);
            if (!bucket_empty(w, l, i)) {
                *level = l;
                *d = i;
                return true;
            }
            w->nonempty[l] &= ~((uint64_t)1 << i);
            bits &= bits - 1;
        }
    }
    return false;
}

/* Cascade the bucket, or open it if at level 0. */
static void step(sp_wheel *w, unsigned level, unsigned d)
{
    uint64_t start = bucket_start(w, level, d);
    if (level > 0) {
        /* The levels below are empty, so nothing is passed over. */
        w->cur = (int64_t)start;
        cascade(w, level, d);
        return;
    }
    spindle_timer *lists[SP_WHEEL_STRIPES];
    take_bucket(w, level, d, lists);
    set_cur(w, start + RES);
    fetch(lists);
    spindle_timer *list = sort(lists, SP_WHEEL_STRIPES);
    spindle_timer **pp = w->run_last ? &w->run_last->next : &w->run;
    *pp = list;
    for (spindle_timer *t = list; t; t = t->next) {
        t->pprev = pp;
        pp = &t->next;
        w->run_last = t;
    }
}

/* Cascade or open the earliest bucket if it starts at or before `limit`.
 * Returns false when there is no such bucket. */
static bool advance(sp_wheel *w, int64_t limit)
{
    unsigned level, d;
    if (!earliest(w, &level, &d) || limit < 0 ||
        bucket_start(w, level, d) > (uint64_t)limit) {
        return false;
    }
    step(w, level, d);
    return true;
}

/* Sort the late list into the run. The run's tail is where new timers
 * usually go (their keys are near now), so the walk starts there. */
static void merge_late(sp_wheel *w)
{
    spindle_timer *list = w->late;
    if (!list) {
        return;
    }
    w->late = NULL;
    /* After the realtime clock went back, some may belong in the wheel. */
    spindle_timer *early = NULL;
    while (list) {
        spindle_timer *next = list->next;
        if ((uint64_t)list->key >= (uint64_t)w->cur) {
            place(w, list);
        } else {
            list->next = early;
            early = list;
        }
        list = next;
    }
    list = sort(&early, 1);
    /* Largest first, walking back from the tail. */
    spindle_timer *rev = NULL;
    while (list) {
        spindle_timer *next = list->next;
        list->next = rev;
        rev = list;
        list = next;
    }
    spindle_timer *pos = w->run_last;
    while (rev) {
        spindle_timer *t = rev;
        rev = rev->next;
        while (pos && before(t, pos)) {
            pos = run_prev(w, pos);
        }
        run_insert_after(w, pos, t);
    }
}

/* The realtime clock went back: place every timer again from `now`. */
static void rebase(sp_wheel *w, int64_t now)
{
    /* During a run, the late list holds the timers armed in it: they stay
     * there, so as not to fire in it (merge_late sorts them out later). */
    spindle_timer *all = NULL;
    if (w->run_now == NOT_RUNNING) {
        all = w->late;
        w->late = NULL;
    }
    for (spindle_timer *t = w->run, *next; t; t = next) {
        next = t->next;
        t->next = all;
        all = t;
    }
    w->run = w->run_last = NULL;
    if (w->stage_level) {
        for (unsigned k = 0; k < SP_WHEEL_STRIPES; k++) {
            for (spindle_timer *t = w->stage_left[k], *next; t; t = next) {
                next = t->next;
                t->next = all;
                all = t;
            }
            w->stage_left[k] = NULL;
        }
        for (unsigned d = 0; d < SP_WHEEL_SLOTS; d++) {
            for (unsigned k = 0; k < SP_WHEEL_STRIPES; k++) {
                for (spindle_timer *t = w->slot[SP_WHEEL_LEVELS][d][k], *next;
                     t; t = next) {
                    next = t->next;
                    t->next = all;
                    all = t;
                }
                w->slot[SP_WHEEL_LEVELS][d][k] = NULL;
            }
        }
        w->stage_nonempty = 0;
        w->stage_level = 0;
    }
    for (unsigned l = 0; l < SP_WHEEL_LEVELS; l++) {
        for (unsigned d = 0; d < SP_WHEEL_SLOTS; d++) {
            spindle_timer *lists[SP_WHEEL_STRIPES];
            take_bucket(w, l, d, lists);
            for (unsigned k = 0; k < SP_WHEEL_STRIPES; k++) {
                for (spindle_timer *t = lists[k], *next; t; t = next) {
                    next = t->next;
                    t->next = all;
                    all = t;
                }
            }
        }
        w->nonempty[l] = 0;
    }
    w->cur = now > 0 ? (int64_t)((uint64_t)now & ~(RES - 1)) : 0;
    spindle_timer *lists[SP_WHEEL_STRIPES] = { all };
    place_all(w, lists);
}

static void check_clock(sp_wheel *w, int64_t now)
{
    if (now < w->cur - EARLY_NS - 2 * (int64_t)RES) {
        rebase(w, now);
    }
}

/* ------------------------------------------------------------------------
 * The interface (timer-wheel.h)
 */

void sp_wheel_init(sp_wheel *w, sp_wheel_bucket *buckets)
{
    *w = (sp_wheel){ .run_now = NOT_RUNNING, .slot = buckets };
    for (unsigned l = 0; l < SP_WHEEL_LEVELS; l++) {
        w->counted_start[l] = -1;
    }
}


void sp_wheel_settle(sp_wheel *w, int64_t now)
{
    if (w->linked) {
        return;
    }
    w->memo_valid = false;
    /* Empty: start the wheel time at the clock, so new timers land in the
     * lowest levels that fit them (fewer cascades later). */
    for (unsigned l = 0; l < SP_WHEEL_LEVELS; l++) {
        w->nonempty[l] = 0;
    }
    w->cur = now > 0 ? (int64_t)((uint64_t)now & ~(RES - 1)) : 0;
}

void sp_wheel_insert(sp_wheel *w, spindle_timer *t)
{
    w->memo_valid = false;
    w->linked++;
    if (is_late(w, t->key)) {
        push(&w->late, t);
    } else {
        place(w, t);
    }
}

void sp_wheel_move(sp_wheel *w, spindle_timer *t, int64_t key, uint32_t seq)
{
    /* A timer in a bucket is where bucket_of() says: the wheel time never
     * passed its bucket (that would have cascaded or opened it) and is not
     * behind the time it was placed from. If the new key agrees with the
     * old one on every bit from that bucket's digit up, both map to it, and
     * only the key changes: a timeout pushed back by a little, the common
     * case, touches nothing but the timer. */
    uint64_t cur = (uint64_t)w->cur, old = (uint64_t)t->key;
    if (t->pprev && old >= cur && (uint64_t)key >= cur &&
        (w->run_now == NOT_RUNNING ||
         ((int64_t)old > w->run_now && key > w->run_now))) {
        unsigned level, d;
        bucket_of(w, t, (uint64_t)key, &level, &d);
        if (((old ^ (uint64_t)key) >> shift_of(level)) == 0 &&
            !is_staged(w, level, d)) {
            t->key = key;
            t->seq = seq;
            w->memo_valid = false;
            return;
        }
    }
    sp_wheel_remove(w, t);
    t->key = key;
    t->seq = seq;
    sp_wheel_insert(w, t);
}

void sp_wheel_remove(sp_wheel *w, spindle_timer *t)
{
    if (!t->pprev) {
        return;
    }
    w->memo_valid = false;
    if (t == w->run_last) {
        w->run_last = run_prev(w, t);
    }
    *t->pprev = t->next;
    if (t->next) {
        t->next->pprev = t->pprev;
    }
    t->pprev = NULL;
    w->linked--;
}

int64_t sp_wheel_start_run(sp_wheel *w, int64_t now)
{
    w->memo_valid = false;
    check_clock(w, now);
    merge_late(w);
    int64_t outer = w->run_now;
    w->run_now = now;
    return outer;
}

spindle_timer *sp_wheel_due(sp_wheel *w)
{
    for (;;) {
        spindle_timer *t = w->run;
        if (t) {
            return t->key <= w->run_now ? t : NULL;
        }
        if (!advance(w, w->run_now)) {
            return NULL;
        }
    }
}

void sp_wheel_end_run(sp_wheel *w, int64_t outer)
{
    w->memo_valid = false;
    stage_work(w, w->run_now, w->run_now);
    w->run_now = outer;
}

/* `until`: the answer holds for every `now` before it while the wheel does
 * not change (time alone would make it cascade or open a bucket). */
static int64_t next_key(sp_wheel *w, int64_t now, bool exact, int64_t *until)
{
    *until = INT64_MAX;
    if (!w->linked) {
        sp_wheel_settle(w, now);
        return INT64_MAX;
    }
    check_clock(w, now);
    int64_t late = INT64_MAX;
    if (w->run_now == NOT_RUNNING) {
        merge_late(w);
    } else {
        /* A run is in progress (this is a nested iteration's timeout): its
         * late timers must not join the run it is walking. */
        for (spindle_timer *t = w->late; t; t = t->next) {
            late = t->key < late ? t->key : late;
        }
    }
    for (;;) {
        if (w->run) {
            return w->run->key < late ? w->run->key : late;
        }
        unsigned level, d;
        if (!earliest(w, &level, &d)) {
            return late;
        }
        uint64_t start = bucket_start(w, level, d);
        /* Not a bucket further ahead, even at level 0: opening it would
         * put the wheel time that far ahead of the clock, and the next run
         * would take the clock for one set back (check_clock). */
        if ((int64_t)start <= now + EARLY_NS) {
            step(w, level, d);
            continue;
        }
        *until = (int64_t)start - EARLY_NS;
        /* Its earliest key is the earliest of the wheel. */
        int64_t min = INT64_MAX;
        unsigned n = 0;
        /* A staged bucket is what is left of it plus the spare set. */
        bool staged = is_staged(w, level, d);
        spindle_timer **lists[2] = {
            staged ? w->stage_left : w->slot[level][d],
            &w->slot[SP_WHEEL_LEVELS][0][0],
        };
        unsigned nlists[2] = {
            SP_WHEEL_STRIPES,
            staged ? SP_WHEEL_SLOTS * SP_WHEEL_STRIPES : 0,
        };
        for (unsigned g = 0; g < 2; g++) {
            for (unsigned k = 0; k < nlists[g]; k++) {
                for (spindle_timer *t = lists[g][k]; t; t = t->next) {
                    if (++n > SCAN_MAX && !exact) {
                        return (int64_t)start < late ? (int64_t)start : late;
                    }
                    min = t->key < min ? t->key : min;
                }
            }
        }
        return min < late ? min : late;
    }
}

/* The memo. A loop asks for its timeout on every iteration, mostly of a
 * wheel that has not changed since it last asked: an answer that still
 * holds is returned as it is, and a run that it shows to have nothing to
 * do is skipped (sp_wheel_quiet). Together they cost hundreds of
 * instructions per iteration otherwise, with even one timer armed. The
 * answer holds until the wheel changes, the clock reaches the time a
 * bucket must be cascaded or opened or staging must start, or the clock
 * goes back far enough to rebase the wheel. Not kept during runs, nor
 * while staging (each call spreads more). */
static bool memo_holds(const sp_wheel *w, int64_t now)
{
    return w->memo_valid && now >= w->memo_from && now < w->memo_until;
}

int64_t sp_wheel_next(sp_wheel *w, int64_t now, bool exact)
{
    if (memo_holds(w, now) && w->memo_exact == exact) {
        return w->memo_next;
    }
    int64_t until;
    int64_t next = next_key(w, now, exact, &until);
    /* The loop is about to wait until `next`: staging work done now delays
     * nothing that is due, so do as much as that time allows. */
    stage_work(w, now, next);
    unsigned l, d;
    int64_t at;
    if (!w->stage_level && stage_next(w, &l, &d, &at)) {
        if (!exact && at > now && at < next) {
            /* Wake when staging should start, not sleep through it. */
            next = at;
        }
        until = at < until ? at : until;
    }
    w->memo_valid = w->run_now == NOT_RUNNING && !w->stage_level;
    w->memo_exact = exact;
    w->memo_next = next;
    w->memo_from = w->cur - EARLY_NS - 2 * (int64_t)RES; /* check_clock */
    w->memo_until = until;
    return next;
}

bool sp_wheel_quiet(const sp_wheel *w, int64_t now)
{
    /* memo_next is at or before every key, and the memo holds only while
     * the late list is empty and no staging is under way. */
    return memo_holds(w, now) && now < w->memo_next;
}
