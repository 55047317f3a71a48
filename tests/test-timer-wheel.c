/* The timer wheel alone (src/timer-wheel.c), driven by a made-up clock.
 * SPDX-License-Identifier: MIT
 *
 * The wheel is single-threaded and takes the time as an argument, so these
 * tests can put deadlines on every level's slot boundaries, jump hours
 * ahead or back in one step, and compare every run with a reference model
 * (a plain array searched for the earliest due timer): what the structure
 * makes delicate (cascades, carries into higher levels, opening slots
 * early, the late list, moving within a slot, far-future and past keys,
 * a clock that goes back) is checked in microseconds of real time.
 *
 * The model of a run: it fires, in (key, seq) order, the timers linked when
 * it started whose key is at or before its `now`; a timer linked during
 * the run waits for a later one. sp_wheel_next is never later than the
 * earliest key, and equal to it when asked to be exact.
 */
#include "harness.h"

#include <stdlib.h>
#include <string.h>

#include "timer-wheel.h"

#define NTIMERS 512
#define HOUR (INT64_C(3600) * 1000000000)

struct model_timer {
    bool armed;
    bool during_run; /* linked while the current run was in progress */
    int64_t key;
    uint32_t seq;
};

struct fixture {
    sp_wheel w;
    spindle_timer *t;  /* NTIMERS, 64-byte aligned */
    struct model_timer m[NTIMERS];
    uint32_t seq;
    int64_t now;
    uint64_t rng;
    unsigned fired;
};

static int setup(void **state)
{
    struct fixture *f = harness_fixture_new(state, sizeof(*f));
    f->t = aligned_alloc(64, NTIMERS * sizeof(spindle_timer));
    assert_non_null(f->t);
    memset(f->t, 0, NTIMERS * sizeof(spindle_timer));
    sp_wheel_init(&f->w, calloc(SP_WHEEL_BUCKETS, sizeof(sp_wheel_bucket)));
    assert_non_null(f->w.slot);
    f->now = 10 * HOUR; /* since boot: room to set the clock back */
    f->rng = 0x9e3779b97f4a7c15u;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    free(f->w.slot);
    free(f->t);
    free(f);
    return harness_watchdog_disarm(state);
}

#define WHEEL_TEST(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

static uint64_t rnd(struct fixture *f)
{
    return harness_rng(&f->rng);
}

static bool model_before(const struct model_timer *a,
                         const struct model_timer *b)
{
    if (a->key != b->key) {
        return a->key < b->key;
    }
    return (int32_t)(a->seq - b->seq) < 0;
}

/* Arm (or move) timer i to key, in the wheel and in the model. */
static void arm(struct fixture *f, unsigned i, int64_t key)
{
    if (!f->w.linked) {
        sp_wheel_settle(&f->w, f->now);
    }
    bool running = f->w.run_now != INT64_MIN;
    sp_wheel_move(&f->w, &f->t[i], key, f->seq);
    f->m[i] = (struct model_timer){ .armed = true, .during_run = running,
                                    .key = key, .seq = f->seq };
    f->seq++;
}

static void disarm(struct fixture *f, unsigned i)
{
    sp_wheel_remove(&f->w, &f->t[i]);
    f->m[i].armed = false;
}

/* The model's next timer to fire by `now`, or -1. */
static int model_due(struct fixture *f, int64_t now)
{
    int best = -1;
    for (unsigned i = 0; i < NTIMERS; i++) {
        const struct model_timer *m = &f->m[i];
        if (m->armed && !m->during_run && m->key <= now &&
            (best < 0 || model_before(m, &f->m[best]))) {
            best = (int)i;
        }
    }
    return best;
}

static int64_t model_min(struct fixture *f)
{
    int64_t min = INT64_MAX;
    for (unsigned i = 0; i < NTIMERS; i++) {
        if (f->m[i].armed && f->m[i].key < min) {
            min = f->m[i].key;
        }
    }
    return min;
}

/* Check sp_wheel_next against the model, inexact and exact; asked again
 * of the unchanged wheel (its memo answers), it must say the same. */
static void check_next(struct fixture *f)
{
    int64_t min = model_min(f);
    int64_t bound = sp_wheel_next(&f->w, f->now, false);
    assert_true(bound <= min);
    assert_int_equal(sp_wheel_next(&f->w, f->now, false), bound);
    assert_int_equal(sp_wheel_next(&f->w, f->now, true), min);
    assert_int_equal(sp_wheel_next(&f->w, f->now, true), min);
}

/* A run at f->now. Each fired timer may (per `rearm`) arm another one
 * during the run, at a random key (often already due): it must wait. */
static unsigned run(struct fixture *f, bool rearm)
{
    unsigned n = 0;
    /* A wheel that says a run would do nothing is taken at its word by
     * timer.c, which then skips it: the run must fire nothing. */
    bool quiet = sp_wheel_quiet(&f->w, f->now);
    int64_t outer = sp_wheel_start_run(&f->w, f->now);
    spindle_timer *t;
    while ((t = sp_wheel_due(&f->w))) {
        unsigned i = (unsigned)(t - f->t);
        int want = model_due(f, f->now);
        if (want != (int)i) {
            print_error("fired timer %u (key %lld seq %u), model says %d "
                        "(key %lld seq %u)\n", i, (long long)f->m[i].key,
                        f->m[i].seq, want,
                        want >= 0 ? (long long)f->m[want].key : -1LL,
                        want >= 0 ? f->m[want].seq : 0);
        }
        assert_int_equal((int)i, want);
        assert_true(t->key <= f->now);
        sp_wheel_remove(&f->w, t);
        f->m[i].armed = false;
        n++;
        if (rearm) {
            unsigned j = (unsigned)(rnd(f) % NTIMERS);
            arm(f, j, f->now - (int64_t)(rnd(f) % 3000) + 1000);
        }
    }
    assert_int_equal(model_due(f, f->now), -1);
    sp_wheel_end_run(&f->w, outer);
    if (quiet) {
        assert_int_equal(n, 0);
    }
    for (unsigned i = 0; i < NTIMERS; i++) {
        f->m[i].during_run = false;
    }
    f->fired += n;
    return n;
}

/* Keys on and next to the slot boundaries of level `level` after now. */
static int64_t boundary_key(struct fixture *f, unsigned level, int delta)
{
    unsigned shift = SP_WHEEL_RES_BITS + SP_WHEEL_SLOT_BITS * level;
    uint64_t k = shift >= 63 ? (uint64_t)INT64_MAX
                             : (((uint64_t)f->now >> shift) + 1 +
                                rnd(f) % 3) << shift;
    if (k > (uint64_t)INT64_MAX - 2) {
        k = (uint64_t)INT64_MAX - 2;
    }
    return (int64_t)k + delta;
}

/* ------------------------------------------------------------------------
 * Directed cases
 */

static void timers_on_every_level_boundary_fire_in_order(void **state)
{
    struct fixture *f = *state;
    unsigned i = 0;
    for (unsigned level = 0; level < SP_WHEEL_LEVELS && level < 7; level++) {
        for (int delta = -1; delta <= 1; delta++) {
            arm(f, i++, boundary_key(f, level, delta));
        }
    }
    check_next(f);
    /* Walk the clock forward a level at a time, then all the way. */
    for (unsigned level = 0; level < 7; level++) {
        f->now += (int64_t)1 << (SP_WHEEL_RES_BITS + 6 * level + 2);
        check_next(f);
        run(f, false);
    }
    f->now = INT64_MAX - 1;
    run(f, false);
    assert_int_equal(f->fired, i);
    assert_int_equal(f->w.linked, 0);
}

static void a_carry_through_every_level_cascades_what_it_reaches(void **state)
{
    struct fixture *f = *state;
    /* Start just before a boundary of the top levels, so that opening the
     * next level-0 slot carries all the way up. */
    f->now = ((int64_t)1 << 58) - 3000;
    for (unsigned i = 0; i < 64; i++) {
        arm(f, i, f->now + (int64_t)(rnd(f) % 20000));
    }
    for (unsigned i = 64; i < 128; i++) {
        arm(f, i, ((int64_t)1 << 58) + (int64_t)(rnd(f) % (1u << 30)));
    }
    while (f->w.linked) {
        f->now += (int64_t)(rnd(f) % 50000000);
        check_next(f);
        run(f, false);
    }
    assert_int_equal(f->fired, 128);
}

static void far_future_keys_wait_and_keep_their_order(void **state)
{
    struct fixture *f = *state;
    arm(f, 0, INT64_MAX);
    arm(f, 1, INT64_MAX - 1);
    arm(f, 2, INT64_MAX);
    arm(f, 3, f->now + HOUR);
    arm(f, 4, INT64_MAX / 2);
    check_next(f);
    assert_int_equal(run(f, false), 0);
    f->now += 2 * HOUR;
    assert_int_equal(run(f, false), 1);
    f->now = INT64_MAX / 2;
    assert_int_equal(run(f, false), 1);
    check_next(f);
    f->now = INT64_MAX;
    assert_int_equal(run(f, false), 3); /* 1, then 0 and 2 by arming order */
    assert_int_equal(f->w.linked, 0);
}

static void past_keys_fire_in_the_next_run_in_order(void **state)
{
    struct fixture *f = *state;
    for (unsigned i = 0; i < 100; i++) {
        int64_t key = i % 3 == 0 ? 0 : f->now - (int64_t)(rnd(f) % HOUR);
        arm(f, i, i % 7 == 0 ? f->now - 5 : key);
    }
    check_next(f);
    assert_int_equal(run(f, false), 100);
}

static void equal_keys_fire_in_arming_order_across_levels(void **state)
{
    struct fixture *f = *state;
    /* The same key armed from every distance: from far (it then cascades
     * down) and from near (it goes straight to a low level). */
    int64_t key = f->now + ((int64_t)1 << 40) + 12345;
    unsigned i = 0;
    while (key - f->now > 1) {
        arm(f, i++, key);
        f->now += (key - f->now) / 2;
        assert_int_equal(run(f, false), 0);
    }
    f->now = key;
    assert_int_equal(run(f, false), i);
}

static void moving_within_a_slot_and_out_of_it_keeps_the_order(void **state)
{
    struct fixture *f = *state;
    for (unsigned i = 0; i < 200; i++) {
        arm(f, i, f->now + HOUR + (int64_t)(rnd(f) % 1000000000));
    }
    for (unsigned k = 0; k < 20000; k++) {
        unsigned i = (unsigned)(rnd(f) % 200);
        uint64_t r = rnd(f);
        int64_t key = r % 4 == 0 ? f->t[i].key + (int64_t)(r % 1000)
                      : r % 4 == 1 ? f->now + HOUR + (int64_t)(r % 1000000000)
                      : r % 4 == 2 ? f->now + (int64_t)(r % 100000)
                                   : f->now - (int64_t)(r % 100000);
        arm(f, i, key);
        if (k % 1000 == 0) {
            check_next(f);
            run(f, true);
            f->now += (int64_t)(rnd(f) % 100000);
        }
    }
    f->now += 2 * HOUR;
    run(f, false);
    f->now += 2 * HOUR;
    run(f, false);
    assert_int_equal(f->w.linked, 0);
}

static void a_move_within_its_slot_changes_the_next_deadline(void **state)
{
    struct fixture *f = *state;
    /* Such a move touches only the timer (sp_wheel_move's fast path); the
     * timeout the wheel last gave must not outlive it. */
    for (unsigned i = 0; i < 4; i++) {
        arm(f, i, f->now + HOUR + 500 + (int64_t)i);
    }
    int64_t keys[] = { 100, 900, 499, 2000 };
    for (unsigned k = 0; k < 8; k++) {
        bool exact = k >= 4;
        assert_true(sp_wheel_next(&f->w, f->now, exact) <= model_min(f));
        arm(f, k % 2, f->now + HOUR + keys[k % 4]);
        int64_t next = sp_wheel_next(&f->w, f->now, exact);
        assert_true(next <= model_min(f));
        if (exact) {
            assert_int_equal(next, model_min(f));
        }
    }
}

static void a_clock_going_back_an_hour_loses_and_advances_nothing(void **state)
{
    struct fixture *f = *state;
    for (unsigned i = 0; i < 100; i++) {
        arm(f, i, f->now + (int64_t)(rnd(f) % (2 * HOUR)));
    }
    f->now += HOUR / 2;
    run(f, false);
    unsigned before = f->fired;
    f->now -= HOUR; /* the realtime clock is set back */
    check_next(f);
    assert_int_equal(run(f, false), 0);
    for (unsigned i = 100; i < 200; i++) {
        arm(f, i, f->now + (int64_t)(rnd(f) % HOUR));
    }
    check_next(f);
    f->now += HOUR / 4;
    run(f, true);
    f->now += 3 * HOUR;
    run(f, false);
    f->now += 3 * HOUR;
    run(f, false);
    assert_true(f->fired > before);
    assert_int_equal(f->w.linked, 0);
}

static void a_bucket_opened_early_leaves_nearer_timers_first(void **state)
{
    struct fixture *f = *state;
    /* The timeout computation opens the next slot ahead of the clock; a
     * timer armed after that for a key before it must still come first. */
    arm(f, 0, f->now + 50000);
    check_next(f);
    arm(f, 1, f->now + 20000);
    arm(f, 2, f->now + 50000);
    arm(f, 3, f->now + 49999);
    check_next(f);
    f->now += 60000;
    assert_int_equal(run(f, false), 4);
}

/* The staging state of a level (timer-wheel.c). */
static sp_wheel_stage *stage(struct fixture *f, unsigned level)
{
    return &f->w.stage[level - SP_WHEEL_STAGE_LEVEL];
}

static void a_big_far_bucket_is_staged_and_lands_in_order(void **state)
{
    struct fixture *f = *state;
    /* All in one level-3 slot: 2^28 ns. The clock walks to it in small
     * steps, so the wheel spreads it ahead of time; meanwhile timers are
     * moved, removed, and new ones armed into it. */
    int64_t slot3 = (int64_t)1 << (SP_WHEEL_RES_BITS + 3 * SP_WHEEL_SLOT_BITS);
    int64_t start = (f->now / slot3 + 2) * slot3;
    for (unsigned i = 0; i < 400; i++) {
        arm(f, i, start + (int64_t)(rnd(f) % (uint64_t)slot3));
    }
    bool seen_staging = false;
    unsigned k = 0;
    while (f->w.linked) {
        f->now += (int64_t)(rnd(f) % (uint64_t)(slot3 / 64));
        uint64_t r = rnd(f);
        unsigned i = (unsigned)(r % 400);
        if (r % 5 == 0) {
            disarm(f, i);
        } else if (r % 5 == 1 && k++ < 300) {
            arm(f, i, start + (int64_t)(rnd(f) % (uint64_t)slot3));
        } else if (r % 5 == 2 && k++ < 300) {
            arm(f, 400 + i % 100, start + (int64_t)(rnd(f) % (uint64_t)slot3));
        }
        /* The timers at the front of what is left to spread: the ones
         * whose neighbours the spreading moves. */
        sp_wheel_stage *st = stage(f, 3);
        for (unsigned s = 0; st->start >= 0 && s < SP_WHEEL_STRIPES; s++) {
            spindle_timer *head = st->left[s];
            if (head && rnd(f) % 2) {
                unsigned j = (unsigned)(head - f->t);
                if (rnd(f) % 2) {
                    disarm(f, j);
                } else {
                    arm(f, j, start + (int64_t)(rnd(f) % (uint64_t)slot3));
                }
            }
        }
        check_next(f);
        seen_staging |= st->start >= 0;
        run(f, r % 3 == 0);
    }
    assert_true(seen_staging);
}

static void levels_stage_side_by_side_and_the_first_part_is_staged_below(
    void **state)
{
    struct fixture *f = *state;
    /* Timers in the last level-3 slots before a level-4 boundary, and in
     * the level-4 bucket after it, most of them in its first level-3 part.
     * The clock starts 5 s before the boundary: the level-4 bucket is
     * staged from 4.3 s before it while the level-3 buckets before it come
     * due and are staged too, and its first part, which the wheel time
     * enters when the level-4 bucket lands, is staged by level 3 from the
     * level-4 spare set. Meanwhile timers are moved into all of it. */
    int64_t slot3 = (int64_t)1 << (SP_WHEEL_RES_BITS + 3 * SP_WHEEL_SLOT_BITS);
    int64_t slot4 = slot3 << SP_WHEEL_SLOT_BITS;
    int64_t b4 = (f->now / slot4 + 1) * slot4;
    f->now = b4 - 5 * INT64_C(1000000000);
    for (unsigned i = 0; i < 450; i++) {
        int64_t key = i < 150   ? b4 - 3 * slot3 + (int64_t)(rnd(f) % (uint64_t)(3 * slot3))
                      : i < 350 ? b4 + (int64_t)(rnd(f) % (uint64_t)slot3)
                                : b4 + slot3 + (int64_t)(rnd(f) % (uint64_t)(3 * slot3));
        arm(f, i, key);
    }
    bool side_by_side = false, first_part_below = false;
    while (f->w.linked) {
        f->now += (int64_t)(rnd(f) % (uint64_t)(slot3 / 64));
        uint64_t r = rnd(f);
        if (r % 4 == 0 && f->now < b4 + slot3) {
            unsigned i = (unsigned)(rnd(f) % 450);
            arm(f, i, f->now + (int64_t)(rnd(f) % (uint64_t)slot3));
        } else if (r % 4 == 1 && f->now < b4) {
            unsigned i = 150 + (unsigned)(rnd(f) % 200);
            arm(f, i, b4 + (int64_t)(rnd(f) % (uint64_t)slot3));
        }
        check_next(f);
        side_by_side |= stage(f, 3)->start >= 0 && stage(f, 4)->start >= 0;
        first_part_below |= stage(f, 3)->start == b4 && f->w.cur < b4;
        run(f, r % 3 == 0);
    }
    assert_true(side_by_side);
    assert_true(first_part_below);
}

static void a_clock_moving_forward_never_sets_the_wheel_time_back(void **state)
{
    struct fixture *f = *state;
    /* The loop's pattern: its timeout (which opens buckets ahead of the
     * clock), a run, a little time, on and on, with timers from a few us
     * to a second ahead and a big far bucket (staged). The wheel time may
     * run ahead of the clock, but never so far that the next run takes the
     * clock for one set back and places every timer again. */
    int64_t slot3 = (int64_t)1 << (SP_WHEEL_RES_BITS + 3 * SP_WHEEL_SLOT_BITS);
    for (unsigned i = 0; i < 64; i++) {
        arm(f, i, f->now + 2 * slot3 + (int64_t)(rnd(f) % (uint64_t)slot3));
    }
    int64_t end = f->now + 4 * slot3;
    unsigned next_i = 64;
    while (f->now < end) {
        if (rnd(f) % 4 == 0) {
            arm(f, next_i, f->now + (int64_t)(rnd(f) % (UINT64_C(1) << (rnd(f) % 30))));
            next_i = next_i + 1 < NTIMERS ? next_i + 1 : 64;
        }
        int64_t bound = sp_wheel_next(&f->w, f->now, false);
        assert_true(bound <= model_min(f));
        int64_t cur = f->w.cur;
        run(f, false);
        assert_true(f->w.cur >= cur);
        f->now += (int64_t)(rnd(f) % 50000);
    }
    assert_true(f->fired >= 64);
}

/* ------------------------------------------------------------------------
 * Random sequences against the model
 */

static void random_operations_agree_with_the_model(void **state)
{
    struct fixture *f = *state;
    for (unsigned op = 0; op < 60000; op++) {
        uint64_t r = rnd(f);
        unsigned i = (unsigned)(r % NTIMERS);
        switch ((r >> 16) % 16) {
        case 0: case 1: case 2: case 3: case 4: /* near: ns to ms */
            arm(f, i, f->now + (int64_t)(rnd(f) %
                                         (UINT64_C(1) << (rnd(f) % 24))));
            break;
        case 5: /* far: up to hours, or the end of time */
            arm(f, i, rnd(f) % 8 ? f->now + (int64_t)(rnd(f) % (4 * HOUR))
                                 : INT64_MAX - (int64_t)(rnd(f) % 3));
            break;
        case 6: /* on a slot boundary */
            arm(f, i, boundary_key(f, (unsigned)(rnd(f) % 7),
                                   (int)(rnd(f) % 3) - 1));
            break;
        case 7: /* past */
            arm(f, i, f->now - (int64_t)(rnd(f) % 100000));
            break;
        case 8: /* a key some other timer has */
            arm(f, i, f->m[rnd(f) % NTIMERS].key > 0
                          ? f->m[rnd(f) % NTIMERS].key : f->now);
            break;
        case 9: case 10:
            disarm(f, i);
            break;
        case 11: case 12: /* time passes: a little */
            f->now += (int64_t)(rnd(f) % (UINT64_C(1) << (rnd(f) % 22)));
            run(f, rnd(f) % 2);
            break;
        case 13: /* a lot */
            f->now += (int64_t)(rnd(f) % (UINT64_C(1) << (rnd(f) % 40)));
            run(f, false);
            break;
        case 14:
            check_next(f);
            break;
        default: /* the clock is set back, rarely */
            if (rnd(f) % 64 == 0 && f->now > 2 * HOUR) {
                f->now -= (int64_t)(rnd(f) % HOUR);
                check_next(f);
            }
            break;
        }
    }
    f->now = INT64_MAX;
    run(f, false);
    assert_int_equal(f->w.linked, 0);
    assert_true(f->fired > 10000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        WHEEL_TEST(timers_on_every_level_boundary_fire_in_order),
        WHEEL_TEST(a_carry_through_every_level_cascades_what_it_reaches),
        WHEEL_TEST(far_future_keys_wait_and_keep_their_order),
        WHEEL_TEST(past_keys_fire_in_the_next_run_in_order),
        WHEEL_TEST(equal_keys_fire_in_arming_order_across_levels),
        WHEEL_TEST(moving_within_a_slot_and_out_of_it_keeps_the_order),
        WHEEL_TEST(a_move_within_its_slot_changes_the_next_deadline),
        WHEEL_TEST(a_clock_going_back_an_hour_loses_and_advances_nothing),
        WHEEL_TEST(a_bucket_opened_early_leaves_nearer_timers_first),
        WHEEL_TEST(a_big_far_bucket_is_staged_and_lands_in_order),
        WHEEL_TEST(levels_stage_side_by_side_and_the_first_part_is_staged_below),
        WHEEL_TEST(a_clock_moving_forward_never_sets_the_wheel_time_back),
        WHEEL_TEST(random_operations_agree_with_the_model),
    };
    return RUN_TESTS(tests);
}
