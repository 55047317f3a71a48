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

#include <limits.h>
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

static uint64_t bucket_start(const sp_wheel *w, unsigned level, unsigned d)
{
    unsigned s = shift_of(level), above = s + SP_WHEEL_SLOT_BITS;
    uint64_t high = above >= 64 ? 0 : ((uint64_t)w->cur >> above) << above;
    return high | ((uint64_t)d << s);
}

/* Whether a key goes on the late list rather than into a bucket. */
static bool is_late(const sp_wheel *w, int64_t key)
{
    return (uint64_t)key < (uint64_t)w->cur ||
           (w->run_now != NOT_RUNNING && key <= w->run_now);
}

/* Staging (below): the levels that stage, each one's state and spare set. */
static bool stages(unsigned level)
{
    return level >= SP_WHEEL_STAGE_LEVEL && level < SP_WHEEL_LEVELS;
}

static sp_wheel_stage *stage_of(sp_wheel *w, unsigned level)
{
    return &w->stage[level - SP_WHEEL_STAGE_LEVEL];
}

static sp_wheel_bucket *spare_of(sp_wheel *w, unsigned level)
{
    return &w->slot[SP_WHEEL_LEVELS + level - SP_WHEEL_STAGE_LEVEL];
}

/* Whether this bucket of the wheel is being staged (or is the part of the
 * bucket staged one level up that this level stages: its start is in the
 * next slot of the level above, not this one's). */
static bool is_staged(const sp_wheel *w, unsigned level, unsigned d)
{
    return (w->staging >> level & 1) && stages(level) &&
           w->stage[level - SP_WHEEL_STAGE_LEVEL].start ==
               (int64_t)bucket_start(w, level, d);
}

/* A small verdict on the bucket starting at `start` no longer holds. */
static void recount(sp_wheel *w, unsigned level, int64_t start)
{
    if (stages(level) && (w->small >> level & 1) &&
        stage_of(w, level)->counted_start == start) {
        stage_of(w, level)->counted_start = -1;
        w->small &= (uint16_t)~(1u << level);
    }
}

/* Into the spare set of the bucket staged at `level`, by the digit of the
 * level below; or, if the level below stages that part of it already,
 * into that one's. */
static void place_staged(sp_wheel *w, unsigned level, spindle_timer *t)
{
    for (;;) {
        sp_wheel_stage *s = stage_of(w, level);
        unsigned below = level - 1, sub = digit((uint64_t)t->key, below);
        int64_t start = s->start + ((int64_t)sub << shift_of(below));
        if (stages(below) && stage_of(w, below)->start == start) {
            level = below;
            continue;
        }
        recount(w, below, start);
        push(&(*spare_of(w, level))[sub][stripe_of(t)], t);
        s->nonempty |= (uint64_t)1 << sub;
        return;
    }
}

static void place(sp_wheel *w, spindle_timer *t)
{
    if ((uint64_t)t->key < (uint64_t)w->cur) {
        push(&w->late, t);
        return;
    }
    unsigned level, d;
    spindle_timer **list = bucket_of(w, t, (uint64_t)t->key, &level, &d);
    if ((w->staging | w->small) >> level & 1) {
        int64_t start = (int64_t)bucket_start(w, level, d);
        if ((w->staging >> level & 1) && stage_of(w, level)->start == start) {
            place_staged(w, level, t);
            return;
        }
        recount(w, level, start);
    }
    push(list, t);
    w->nonempty[level] |= (uint64_t)1 << d;
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
                w->work++;
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

/* ------------------------------------------------------------------------
 * Staging. A cascade moves a whole bucket at once, and a bucket far up
 * holds every timer due within its slot: at a million timers a second a
 * level-3 slot (268 ms) holds 268,000, several milliseconds of work during
 * which due timers wait. So each level at or above SP_WHEEL_STAGE_LEVEL
 * spreads its next bucket, if big, ahead of time over a spare set of 64
 * buckets of its own, laid out as the level below will be once the wheel
 * time reaches it: after each run, SP_WHEEL_STAGE_BUDGET timers; in a
 * timeout computation, as many as fit before the deadline the loop is
 * about to sleep to (work that delays nothing due; a loop that sleeps
 * through the staging window would otherwise do none). Timers armed for it
 * meanwhile go straight there. When the wheel time reaches it, the level
 * below is empty (the wheel time never passes a timer), and the spare set
 * takes its place.
 *
 * The levels stage independently: a level-4 bucket is staged 4.3 s ahead,
 * while the level-3 buckets before it come due and must be staged too.
 * And the first part of a staged bucket, the one the wheel time enters
 * when it lands, would be cascaded at once: so the level below stages that
 * part, from the spare set above, as it would the next bucket of its own.
 * A bucket being staged is known by its start, which tells such a part
 * (whose start is in the next slot of the level above) from the wheel's
 * bucket of the same digit.
 */

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

/* Spread up to `budget` timers of the bucket staged at `level`; returns
 * what is left of the budget. */
static unsigned stage_spread(sp_wheel *w, unsigned level, unsigned budget)
{
    sp_wheel_stage *s = stage_of(w, level);
    bool more;
    do {
        more = false;
        for (unsigned k = 0; k < SP_WHEEL_STRIPES && budget; k++) {
            spindle_timer *t = s->left[k];
            if (t) {
                s->left[k] = t->next;
                if (t->next) {
                    /* A timer may be removed from what is left meanwhile. */
                    t->next->pprev = &s->left[k];
                    __builtin_prefetch(t->next, 1);
                    more = true;
                }
                w->work++;
                place_staged(w, level, t);
                budget--;
            }
        }
    } while (more && budget);
    return budget;
}

/* Whether a bucket's lists hold at least `n` timers (it counts that far).
 * The stripes are walked side by side, as in place_all(): counting 4096
 * timers one list at a time waited for one cache miss after another, 0.3
 * to 0.6 ms during which due timers waited too. */
static bool bucket_holds(sp_wheel *w, spindle_timer *const *lists,
                         unsigned n)
{
    w->work += n; /* at most */
    spindle_timer *t[SP_WHEEL_STRIPES];
    bool more = false;
    for (unsigned k = 0; k < SP_WHEEL_STRIPES; k++) {
        t[k] = lists[k];
        more |= t[k] != NULL;
    }
    while (more) {
        more = false;
        for (unsigned k = 0; k < SP_WHEEL_STRIPES; k++) {
            if (t[k]) {
                if (--n == 0) {
                    return true;
                }
                t[k] = t[k]->next;
                more |= t[k] != NULL;
            }
        }
    }
    return false;
}

/* The next bucket `level` should stage, if it holds at least STAGE_MIN
 * timers (a smaller one cascades at once in well under a millisecond): its
 * next non-empty bucket or, past the level's last one, the first part of
 * the bucket staged one level up. Returns its lists (NULL: none), its
 * start, and when its staging should start (a quarter of its slot width
 * before it). */
static spindle_timer **stage_next(sp_wheel *w, unsigned level,
                                  int64_t *start, int64_t *at)
{
    sp_wheel_stage *s = stage_of(w, level);
    spindle_timer **lists;
    unsigned from = digit((uint64_t)w->cur, level) + 1;
    uint64_t bits = from >= SP_WHEEL_SLOTS
                        ? 0
                        : w->nonempty[level] & (~(uint64_t)0 << from);
    while (bits && bucket_empty(w, level, (unsigned)__builtin_ctzll(bits))) {
        w->nonempty[level] &= ~(bits & -bits); /* stale */
        bits &= bits - 1;
    }
    if (bits) {
        unsigned i = (unsigned)__builtin_ctzll(bits);
        *start = (int64_t)bucket_start(w, level, i);
        lists = w->slot[level][i];
    } else if (stages(level + 1) && stage_of(w, level + 1)->start >= 0 &&
               (stage_of(w, level + 1)->nonempty & 1)) {
        *start = stage_of(w, level + 1)->start;
        lists = (*spare_of(w, level + 1))[0];
    } else {
        return NULL;
    }
    if (s->counted_start != *start) {
        /* Counted once per bucket: the loop asks on every timeout. */
        s->counted_start = *start;
        s->counted_big = bucket_holds(w, lists, STAGE_MIN);
        w->small = (uint16_t)(s->counted_big ? w->small & ~(1u << level)
                                             : w->small | 1u << level);
    }
    *at = *start - ((int64_t)1 << (shift_of(level) - 2));
    return s->counted_big ? lists : NULL;
}

/* Start staging at each level whose time has come, and spread part of what
 * is staged, lowest level (soonest due) first: SP_WHEEL_STAGE_BUDGET
 * timers, or as many as fit before `until` (what is due next). */
static void stage_work(sp_wheel *w, int64_t now, int64_t until)
{
    int64_t fit = until > now ? (until - now) / STAGE_NS_PER_TIMER : 0;
    fit = fit < SP_WHEEL_STAGE_BUDGET ? SP_WHEEL_STAGE_BUDGET : fit;
    unsigned budget = fit > UINT32_MAX ? UINT32_MAX : (unsigned)fit;
    for (unsigned l = SP_WHEEL_STAGE_LEVEL; l < SP_WHEEL_LEVELS && budget;
         l++) {
        sp_wheel_stage *s = stage_of(w, l);
        if (s->start < 0) {
            int64_t start, at;
            spindle_timer **lists = stage_next(w, l, &start, &at);
            if (!lists || at > now) {
                continue;
            }
            s->start = start;
            w->staging |= (uint16_t)(1u << l);
            for (unsigned k = 0; k < SP_WHEEL_STRIPES; k++) {
                s->left[k] = lists[k];
                if (s->left[k]) {
                    s->left[k]->pprev = &s->left[k];
                }
                lists[k] = NULL;
            }
            if (stages(l + 1) && start == stage_of(w, l + 1)->start) {
                stage_of(w, l + 1)->nonempty &= ~(uint64_t)1;
            }
        }
        budget = stage_spread(w, l, budget);
    }
}

/* The wheel time reached the bucket staged at `level`: its spare set
 * becomes the level below. */
static void stage_land(sp_wheel *w, unsigned level)
{
    sp_wheel_stage *s = stage_of(w, level);
    stage_spread(w, level, UINT32_MAX);
    unsigned below = level - 1;
    sp_wheel_bucket *spare = spare_of(w, level);
    for (uint64_t bits = s->nonempty; bits; bits &= bits - 1) {
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
    w->nonempty[below] |= s->nonempty;
    w->nonempty[level] &= ~((uint64_t)1 << digit((uint64_t)s->start, level));
    s->nonempty = 0;
    s->start = -1;
    w->staging &= (uint16_t)~(1u << level);
}

/* Cascade a bucket whose slot the wheel time just entered. */
static void cascade(sp_wheel *w, unsigned level, unsigned d)
{
    if (is_staged(w, level, d)) {
        stage_land(w, level);
        /* The wheel time is at the start of the slot: the first slot of the
         * level below is its own, which must be emptied (or landed, if
         * that level staged it). */
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
        w->work++;
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
        w->work++;
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
    for (unsigned l = SP_WHEEL_STAGE_LEVEL; l < SP_WHEEL_LEVELS; l++) {
        sp_wheel_stage *s = stage_of(w, l);
        sp_wheel_bucket *spare = spare_of(w, l);
        for (unsigned k = 0; k < SP_WHEEL_STRIPES; k++) {
            for (spindle_timer *t = s->left[k], *next; t; t = next) {
                next = t->next;
                t->next = all;
                all = t;
            }
            s->left[k] = NULL;
        }
        for (unsigned d = 0; d < SP_WHEEL_SLOTS; d++) {
            for (unsigned k = 0; k < SP_WHEEL_STRIPES; k++) {
                for (spindle_timer *t = (*spare)[d][k], *next; t; t = next) {
                    next = t->next;
                    t->next = all;
                    all = t;
                }
                (*spare)[d][k] = NULL;
            }
        }
        *s = (sp_wheel_stage){ .start = -1, .counted_start = -1 };
    }
    w->staging = w->small = 0;
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
    for (unsigned l = SP_WHEEL_STAGE_LEVEL; l < SP_WHEEL_LEVELS; l++) {
        *stage_of(w, l) = (sp_wheel_stage){ .start = -1, .counted_start = -1 };
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
        /* (While the level stages, relinking is right whichever bucket it
         * stages: no need to find out here.) */
        if (((old ^ (uint64_t)key) >> shift_of(level)) == 0 &&
            !(w->staging >> level & 1)) {
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

/* A search for the earliest key of a bucket, which gives up past `max`
 * timers. */
struct scan {
    int64_t min;
    unsigned n, max;
};

static bool scan_lists(struct scan *sc, spindle_timer *const *lists,
                       unsigned n)
{
    for (unsigned k = 0; k < n; k++) {
        for (spindle_timer *t = lists[k]; t; t = t->next) {
            if (++sc->n > sc->max) {
                return false;
            }
            sc->min = t->key < sc->min ? t->key : sc->min;
        }
    }
    return true;
}

/* A staged bucket: what is left to spread, its spare set, and the part of
 * it that the level below stages. */
static bool scan_staged(sp_wheel *w, unsigned level, struct scan *sc)
{
    for (;;) {
        sp_wheel_stage *s = stage_of(w, level);
        if (!scan_lists(sc, s->left, SP_WHEEL_STRIPES) ||
            !scan_lists(sc, &(*spare_of(w, level))[0][0],
                        SP_WHEEL_SLOTS * SP_WHEEL_STRIPES)) {
            return false;
        }
        if (!stages(level - 1) || stage_of(w, level - 1)->start != s->start) {
            return true;
        }
        level--;
    }
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
        struct scan sc = { .min = INT64_MAX, .max = exact ? UINT_MAX : SCAN_MAX };
        bool all = is_staged(w, level, d) ? scan_staged(w, level, &sc)
                                          : scan_lists(&sc, w->slot[level][d],
                                                       SP_WHEEL_STRIPES);
        w->work += sc.n; /* an exact answer may walk a big bucket */
        if (!all) {
            return (int64_t)start < late ? (int64_t)start : late;
        }
        int64_t min = sc.min;
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
    for (unsigned l = SP_WHEEL_STAGE_LEVEL; l < SP_WHEEL_LEVELS; l++) {
        int64_t start, at;
        if (stage_of(w, l)->start < 0 && stage_next(w, l, &start, &at)) {
            if (!exact && at > now && at < next) {
                /* Wake when staging should start, not sleep through it. */
                next = at;
            }
            until = at < until ? at : until;
        }
    }
    w->memo_valid = w->run_now == NOT_RUNNING && !w->staging;
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
