/* Long stress: the concurrency tests' ideas, longer and with more threads.
 * SPDX-License-Identifier: MIT
 *
 * Suite 'concurrency' (so also run under ThreadSanitizer, once per
 * back-end). `make check` runs the short form (a few seconds per test);
 * `make stress` runs the long form: every count is multiplied by
 * $SPINDLE_STRESS_SCALE (default 1; `make stress` uses 20, which makes the
 * wake-up ring 10^6 cross-thread wake-ups natively).
 *
 * No sleeps and no time limits decide a result: threads hand over with
 * atomics and pthread_join; a lost wake-up is a loop that never returns,
 * which the harness's watchdog turns into a failure, and every test checks
 * its counts exactly. Helper threads and callbacks only count; the test's
 * own thread asserts (see concurrency.h).
 */
#include "concurrency.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RING 3                          /* threads in the wake-up ring */
#define RING_HOPS SCALE(50000u, 20000u)  /* x scale; x20 = 10^6 natively */
#define PRODUCERS 4
#define PRODUCER_ITEMS 16               /* BHs (and oneshots) per producer */
#define PRODUCER_ROUNDS SCALE(1500u, 600u)
#define CHURNERS 2
#define CHURN_PIPES 4                   /* per churner */
#define CHURN_NOTIFIERS 2               /* per churner */
#define CHURN_OPS SCALE(3000u, 2000u)   /* per churner */
#define MODIFIERS 2
#define MOD_TIMERS 16                   /* per modifier */
#define MOD_OPS SCALE(20000u, 8000u)    /* per modifier */
#define MOD_WAIT_EVERY 8                /* ops between waits for a fire */

static unsigned stress_scale(void)
{
    const char *env = getenv("SPINDLE_STRESS_SCALE");
    long v = env ? strtol(env, NULL, 10) : 1;
    return v > 0 && v <= 100000 ? (unsigned)v : 1;
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (double)(t1.tv_sec - t0->tv_sec) +
           (double)(t1.tv_nsec - t0->tv_nsec) / 1e9;
}

/* A small xorshift generator per thread: reproducible, no locks. */
static uint32_t rnd(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

/* ------------------------------------------------------------------------
 * A token passed around a ring of loop threads, each hop a cross-thread
 * wake-up by another mechanism: a bottom half, spindle_notify plus a flag,
 * an event notifier, a timer armed in the past, a pipe write. Busy polling
 * is off, so a loop with nothing to do sleeps in the kernel and every hop
 * has to wake it. One token: a lost wake-up stops the ring for good.
 */

enum { VIA_BH, VIA_NOTIFY, VIA_NOTIFIER, VIA_TIMER, VIA_FD, VIA_COUNT };
static const char *const via_name[VIA_COUNT] = {
    "bottom half", "spindle_notify", "event notifier", "timer", "pipe"
};

struct ring;

struct ring_node {
    struct ring *ring;
    int me;
    spindle_ctx *ctx;
    spindle_bh *bh;
    spindle_notifier *notifier;
    spindle_timer *timer;
    int pipe[2];
    atomic_uint mailbox;   /* VIA_NOTIFY: 1 = the token is here */
    atomic_uint received[VIA_COUNT];
    atomic_uint wrong_thread;
};

struct ring {
    struct ring_node node[RING];
    unsigned target;
    atomic_uint hops;       /* hops made */
    atomic_bool done;
    atomic_uint sent[VIA_COUNT];
};

static _Thread_local int ring_side = -1;

/* The token arrived at node n by `via`: count it and pass it on. */
static void ring_receive(struct ring_node *n, int via)
{
    struct ring *r = n->ring;
    if (ring_side != n->me) {
        atomic_fetch_add(&n->wrong_thread, 1);
    }
    atomic_fetch_add(&n->received[via], 1);
    unsigned h = atomic_fetch_add(&r->hops, 1) + 1;
    if (h >= r->target) {
        atomic_store(&r->done, true);
        for (int i = 0; i < RING; i++) {
            spindle_notify(r->node[i].ctx);
        }
        return;
    }
    struct ring_node *next = &r->node[(n->me + 1) % RING];
    int how = (int)(h % VIA_COUNT);
    atomic_fetch_add(&r->sent[how], 1);
    switch (how) {
    case VIA_BH:
        spindle_bh_schedule(next->bh);
        break;
    case VIA_NOTIFY:
        atomic_store(&next->mailbox, 1);
        spindle_notify(next->ctx);
        break;
    case VIA_NOTIFIER:
        spindle_notifier_set(next->notifier);
        break;
    case VIA_TIMER:
        spindle_timer_mod(next->timer,
                          spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) - 1);
        break;
    default: {
        char c = 't';
        if (write(next->pipe[1], &c, 1) != 1) {
            abort(); /* a non-blocking pipe holding at most one byte */
        }
        break;
    }
    }
}

static void ring_bh_cb(void *opaque) { ring_receive(opaque, VIA_BH); }
static void ring_timer_cb(void *opaque) { ring_receive(opaque, VIA_TIMER); }

static void ring_notifier_cb(void *opaque)
{
    struct ring_node *n = opaque;
    if (spindle_notifier_test_and_clear(n->notifier)) {
        ring_receive(n, VIA_NOTIFIER);
    }
}

static void ring_fd_cb(void *opaque)
{
    struct ring_node *n = opaque;
    char c;
    while (read(n->pipe[0], &c, 1) == 1) {
        ring_receive(n, VIA_FD);
    }
}

static void *ring_main(void *opaque)
{
    struct ring_node *n = opaque;
    ring_side = n->me;
    while (!atomic_load(&n->ring->done)) {
        spindle_poll(n->ctx, true);
        if (atomic_exchange(&n->mailbox, 0)) {
            ring_receive(n, VIA_NOTIFY);
        }
    }
    return NULL;
}

static void wakeup_ring_loses_no_wakeup(void **state)
{
    (void)state;
    struct ring *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    r->target = RING_HOPS * stress_scale();
    for (int i = 0; i < RING; i++) {
        struct ring_node *n = &r->node[i];
        n->ring = r;
        n->me = i;
        spindle_options o = { .backend = SPINDLE_BACKEND_AUTO,
                              .poll_max_ns = 0 };
        n->ctx = spindle_ctx_new_opts(&o);
        assert_non_null(n->ctx);
        n->bh = spindle_bh_new(n->ctx, ring_bh_cb, n);
        n->timer = spindle_timer_new(n->ctx, SPINDLE_CLOCK_MONOTONIC,
                                     ring_timer_cb, n);
        n->notifier = spindle_notifier_new(false);
        assert_non_null(n->bh);
        assert_non_null(n->timer);
        assert_non_null(n->notifier);
        assert_int_equal(spindle_set_event_notifier(n->ctx, n->notifier, false,
                                                    ring_notifier_cb, NULL, n),
                         0);
        harness_pipe(n->pipe);
        assert_int_equal(spindle_set_fd_handler(n->ctx, n->pipe[0], false,
                                                ring_fd_cb, NULL, NULL, n), 0);
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pthread_t th[RING];
    for (int i = 0; i < RING; i++) {
        start_thread(&th[i], ring_main, &r->node[i]);
    }
    /* Serve the first hop from here. */
    atomic_fetch_add(&r->sent[VIA_BH], 1);
    spindle_bh_schedule(r->node[0].bh);
    for (int i = 0; i < RING; i++) {
        join_thread(th[i]);
    }
    double secs = seconds_since(&t0);
    print_message("%u cross-thread wake-ups in %.2f s (%.0f/s)\n",
                  atomic_load(&r->hops), secs,
                  atomic_load(&r->hops) / (secs > 0 ? secs : 1));

    /* Exactly target hops: a wake-up delivered twice would have started a
     * second token and overshot; every one sent was received once. */
    assert_int_equal(atomic_load(&r->hops), r->target);
    unsigned sent_total = 0, received_total = 0;
    for (int v = 0; v < VIA_COUNT; v++) {
        unsigned rec = 0;
        for (int i = 0; i < RING; i++) {
            rec += atomic_load(&r->node[i].received[v]);
        }
        if (rec != atomic_load(&r->sent[v])) {
            print_error("%s: %u sent, %u received\n", via_name[v],
                        atomic_load(&r->sent[v]), rec);
        }
        assert_int_equal(rec, atomic_load(&r->sent[v]));
        sent_total += atomic_load(&r->sent[v]);
        received_total += rec;
    }
    assert_int_equal(received_total, r->target);
    assert_int_equal(sent_total, r->target);
    for (int i = 0; i < RING; i++) {
        struct ring_node *n = &r->node[i];
        assert_int_equal(atomic_load(&n->wrong_thread), 0);
        assert_int_equal(spindle_set_fd_handler(n->ctx, n->pipe[0], false,
                                                NULL, NULL, NULL, NULL), 0);
        assert_int_equal(spindle_set_event_notifier(n->ctx, n->notifier, false,
                                                    NULL, NULL, NULL), 0);
        spindle_ctx_free(n->ctx);
        spindle_notifier_free(n->notifier);
        close(n->pipe[0]);
        close(n->pipe[1]);
    }
    free(r);
}

/* ------------------------------------------------------------------------
 * Four threads scheduling bottom halves and oneshots at one context, round
 * after round: every one runs exactly once per schedule, and each
 * producer's items run in the order it scheduled them.
 */

struct prod_item {
    unsigned producer;
    unsigned index;
    atomic_uint runs;
};

struct stress_producer {
    spindle_ctx *ctx;
    unsigned me;
    unsigned rounds;
    spindle_bh *bh[PRODUCER_ITEMS];
    struct prod_item item[PRODUCER_ITEMS];
    atomic_uint done;          /* runs of this producer's BHs and oneshots */
    atomic_uint oneshot_runs;
    atomic_uint failed;
    unsigned next;             /* loop thread only: expected sequence */
    atomic_uint out_of_order;
};

static struct stress_producer producers[PRODUCERS];
static atomic_uint producer_total;
static _Thread_local bool on_loop_thread;
static atomic_uint producer_wrong_thread;

/* Items of one round run in the order 0: BH 0, 1: oneshot 0, 2: BH 1, ... */
static void producer_saw(struct stress_producer *p, unsigned seq_in_round)
{
    if (!on_loop_thread) {
        atomic_fetch_add(&producer_wrong_thread, 1);
    }
    if (p->next % (2 * PRODUCER_ITEMS) != seq_in_round) {
        atomic_fetch_add(&p->out_of_order, 1);
    }
    p->next++;
    atomic_fetch_add(&p->done, 1);
    atomic_fetch_add(&producer_total, 1);
}

static void producer_bh_cb(void *opaque)
{
    struct prod_item *it = opaque;
    atomic_fetch_add(&it->runs, 1);
    producer_saw(&producers[it->producer], 2 * it->index);
}

static void producer_oneshot_cb(void *opaque)
{
    uintptr_t v = (uintptr_t)opaque;
    struct stress_producer *p = &producers[v % PRODUCERS];
    atomic_fetch_add(&p->oneshot_runs, 1);
    producer_saw(p, 2 * (unsigned)(v / PRODUCERS) + 1);
}

static void *stress_producer_main(void *opaque)
{
    struct stress_producer *p = opaque;
    for (unsigned r = 1; r <= p->rounds; r++) {
        for (unsigned j = 0; j < PRODUCER_ITEMS; j++) {
            spindle_bh_schedule(p->bh[j]);
            if (spindle_bh_oneshot(p->ctx, producer_oneshot_cb,
                                   (void *)(uintptr_t)(j * PRODUCERS + p->me))
                != 0) {
                atomic_fetch_add(&p->failed, 1);
                return NULL;
            }
        }
        /* All of this round ran before the next one reschedules them. */
        wait_uint_at_least(&p->done, r * 2 * PRODUCER_ITEMS);
    }
    return NULL;
}

static void four_producers_each_item_runs_exactly_once_in_order(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    const unsigned rounds = PRODUCER_ROUNDS * stress_scale();
    atomic_store(&producer_total, 0);
    atomic_store(&producer_wrong_thread, 0);
    for (unsigned t = 0; t < PRODUCERS; t++) {
        struct stress_producer *p = &producers[t];
        memset(p, 0, sizeof(*p));
        p->ctx = ctx;
        p->me = t;
        p->rounds = rounds;
        for (unsigned j = 0; j < PRODUCER_ITEMS; j++) {
            p->item[j].producer = t;
            p->item[j].index = j;
            p->bh[j] = spindle_bh_new(ctx, producer_bh_cb, &p->item[j]);
            assert_non_null(p->bh[j]);
        }
    }
    const unsigned expected = PRODUCERS * rounds * 2 * PRODUCER_ITEMS;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    on_loop_thread = true;
    pthread_t th[PRODUCERS];
    for (unsigned t = 0; t < PRODUCERS; t++) {
        start_thread(&th[t], stress_producer_main, &producers[t]);
    }
    /* This thread is the loop: it must be woken for whatever arrives. */
    unsigned failed = 0;
    while (atomic_load(&producer_total) < expected) {
        failed = 0;
        for (unsigned t = 0; t < PRODUCERS; t++) {
            failed += atomic_load(&producers[t].failed);
        }
        if (failed) {
            break;
        }
        spindle_poll(ctx, true);
    }
    for (unsigned t = 0; t < PRODUCERS; t++) {
        join_thread(th[t]);
    }
    harness_drain(ctx);   /* anything run twice would show up now */
    on_loop_thread = false;
    double secs = seconds_since(&t0);
    print_message("%u bottom-half and oneshot runs from %d threads in %.2f s\n",
                  atomic_load(&producer_total), PRODUCERS, secs);

    assert_int_equal(failed, 0);
    assert_int_equal(atomic_load(&producer_total), expected);
    assert_int_equal(atomic_load(&producer_wrong_thread), 0);
    for (unsigned t = 0; t < PRODUCERS; t++) {
        struct stress_producer *p = &producers[t];
        assert_int_equal(atomic_load(&p->done), rounds * 2 * PRODUCER_ITEMS);
        assert_int_equal(atomic_load(&p->oneshot_runs), rounds * PRODUCER_ITEMS);
        assert_int_equal(atomic_load(&p->out_of_order), 0);
        for (unsigned j = 0; j < PRODUCER_ITEMS; j++) {
            assert_int_equal(atomic_load(&p->item[j].runs), rounds);
            spindle_bh_delete(p->bh[j]);
        }
    }
    spindle_ctx_free(ctx);
}

/* ------------------------------------------------------------------------
 * Two threads registering, replacing and removing handlers (pipes and event
 * notifiers, all kept readable) while a third dispatches: no handler is
 * called in an iteration that started after its removal returned.
 */

struct churn_rec {
    unsigned magic;
    atomic_ullong removed_after; /* looper_mark() after removal; ~0: live */
    atomic_ullong last_call;     /* the last iteration that called it */
    atomic_uint calls;
};

#define CHURN_MAGIC 0x5a17c0deu
#define CHURN_SLOTS (CHURN_PIPES + CHURN_NOTIFIERS)

static struct looper churn_looper;
static atomic_uint churn_bad_opaque;

static void churn_cb(void *opaque)
{
    struct churn_rec *rec = opaque;
    if (rec->magic != CHURN_MAGIC) {
        atomic_fetch_add(&churn_bad_opaque, 1);
        return;
    }
    atomic_store(&rec->last_call, looper_current(&churn_looper));
    atomic_fetch_add(&rec->calls, 1);
}

struct churner {
    spindle_ctx *ctx;
    unsigned ops;
    uint32_t seed;
    int pipes[CHURN_PIPES][2];
    spindle_notifier *notifiers[CHURN_NOTIFIERS];
    struct churn_rec *recs;      /* ops */
    struct churn_rec *current[CHURN_SLOTS];
    atomic_uint failed;
    atomic_uint waited;
};

static int churn_set(struct churner *c, unsigned slot, struct churn_rec *rec,
                     bool ext)
{
    if (slot < CHURN_PIPES) {
        return spindle_set_fd_handler(c->ctx, c->pipes[slot][0], ext,
                                      rec ? churn_cb : NULL, NULL, NULL, rec);
    }
    return spindle_set_event_notifier(c->ctx, c->notifiers[slot - CHURN_PIPES],
                                      ext, rec ? churn_cb : NULL, NULL, rec);
}

static void churn_retire(struct churn_rec *rec)
{
    atomic_store(&rec->removed_after, looper_mark(&churn_looper));
}

static void *churner_main(void *opaque)
{
    struct churner *c = opaque;
    for (unsigned k = 0; k < c->ops; k++) {
        uint32_t x = rnd(&c->seed);
        unsigned slot = x % CHURN_SLOTS;
        struct churn_rec *old = c->current[slot];
        struct churn_rec *rec = &c->recs[k];
        if (old && (x >> 8) % 3 == 0) {
            if (churn_set(c, slot, NULL, false) != 0) {
                atomic_fetch_add(&c->failed, 1);
            }
            churn_retire(old);
            c->current[slot] = NULL;
            continue;
        }
        /* Register or replace; now and then as an external handler, which
         * is dispatched as well since nobody disables external ones. */
        if (churn_set(c, slot, rec, (x >> 12) % 4 == 0) != 0) {
            atomic_fetch_add(&c->failed, 1);
        }
        if (old) {
            churn_retire(old);
        }
        c->current[slot] = rec;
        if ((x >> 16) % 8 == 0) {
            /* Make sure some handlers are removed while being called. */
            wait_uint_at_least(&rec->calls, 1);
            atomic_fetch_add(&c->waited, 1);
        }
    }
    for (unsigned s = 0; s < CHURN_SLOTS; s++) {
        if (c->current[s]) {
            if (churn_set(c, s, NULL, false) != 0) {
                atomic_fetch_add(&c->failed, 1);
            }
            churn_retire(c->current[s]);
            c->current[s] = NULL;
        }
    }
    return NULL;
}

static void handler_churn_from_two_threads_never_calls_removed_handlers(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    const unsigned ops = CHURN_OPS * stress_scale();
    struct churner ch[CHURNERS];
    atomic_store(&churn_bad_opaque, 0);
    for (int t = 0; t < CHURNERS; t++) {
        struct churner *c = &ch[t];
        memset(c, 0, sizeof(*c));
        c->ctx = ctx;
        c->ops = ops;
        c->seed = 0x9e3779b9u * (unsigned)(t + 1);
        for (int i = 0; i < CHURN_PIPES; i++) {
            harness_pipe(c->pipes[i]);
            char b = 'x';
            assert_int_equal(write(c->pipes[i][1], &b, 1), 1); /* readable */
        }
        for (int i = 0; i < CHURN_NOTIFIERS; i++) {
            c->notifiers[i] = spindle_notifier_new(true);   /* readable */
            assert_non_null(c->notifiers[i]);
        }
        c->recs = calloc(ops, sizeof(*c->recs));
        assert_non_null(c->recs);
        for (unsigned k = 0; k < ops; k++) {
            c->recs[k].magic = CHURN_MAGIC;
            atomic_init(&c->recs[k].removed_after, ~0ull);
        }
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    looper_start(&churn_looper, ctx);
    pthread_t th[CHURNERS];
    for (int t = 0; t < CHURNERS; t++) {
        start_thread(&th[t], churner_main, &ch[t]);
    }
    for (int t = 0; t < CHURNERS; t++) {
        join_thread(th[t]);
    }
    /* Two more iterations: anything still racing is over. */
    looper_advance_to(&churn_looper, atomic_load(&churn_looper.iter) + 2);
    looper_stop(&churn_looper);
    double secs = seconds_since(&t0);

    unsigned late = 0, called = 0, waited = 0, failed = 0;
    unsigned long long calls = 0;
    for (int t = 0; t < CHURNERS; t++) {
        struct churner *c = &ch[t];
        failed += atomic_load(&c->failed);
        waited += atomic_load(&c->waited);
        for (unsigned k = 0; k < ops; k++) {
            struct churn_rec *rec = &c->recs[k];
            unsigned long long removed = atomic_load(&rec->removed_after);
            unsigned long long last = atomic_load(&rec->last_call);
            unsigned n = atomic_load(&rec->calls);
            calls += n;
            called += n > 0;
            /* Called at most during the iteration in progress when the
             * removal returned (removed + 1), never in a later one. */
            if (removed != ~0ull && last != 0 && last > removed + 1) {
                if (late < 5) {
                    print_error("churner %d handler %u called in iteration "
                                "%llu, removed after iteration %llu\n", t, k,
                                last, removed);
                }
                late++;
            }
        }
    }
    print_message("%u handler changes from %d threads, %llu calls in %llu "
                  "iterations, %.2f s\n", CHURNERS * ops, CHURNERS, calls,
                  (unsigned long long)atomic_load(&churn_looper.iter), secs);
    assert_int_equal(failed, 0);
    assert_int_equal(atomic_load(&churn_bad_opaque), 0);
    assert_int_equal(late, 0);
    /* The handlers waited for did run: the check was not vacuous. */
    assert_true(waited > 0);
    assert_true(called >= waited);

    spindle_ctx_free(ctx);
    for (int t = 0; t < CHURNERS; t++) {
        for (int i = 0; i < CHURN_PIPES; i++) {
            close(ch[t].pipes[i][0]);
            close(ch[t].pipes[i][1]);
        }
        for (int i = 0; i < CHURN_NOTIFIERS; i++) {
            spindle_notifier_free(ch[t].notifiers[i]);
        }
        free(ch[t].recs);
    }
}

/* ------------------------------------------------------------------------
 * Two threads re-arming (mod, mod_anticipate) and disarming timers while
 * the loop fires them: each callback runs at or after the deadline it
 * fired for, no timer fires more often than it was armed, and the last arm
 * of each one fires.
 *
 * Which arm a firing belongs to is not observable, so each timer keeps,
 * under its own mutex, the lowest deadline of the arms made since its last
 * callback (`low`); its modifier updates it and arms under that mutex. The
 * callback, under the mutex, checks now >= low (the arm it fired for is one
 * of those, so its deadline is >= low) and restarts low from the timer's
 * current deadline if it was re-armed meanwhile. The library runs callbacks
 * without its own timer lock, so the two locks never nest the other way.
 */

struct mod_timer {
    spindle_timer *t;
    pthread_mutex_t lock;
    int64_t low;             /* under lock; INT64_MAX: no arm since fire */
    unsigned arms;           /* under lock: calls that (may) have armed */
    unsigned ops;            /* under lock */
    unsigned fires;          /* under lock */
    unsigned last_arm_op;    /* under lock: op number of the last arm */
    unsigned fired_after_op; /* under lock: ops at the last callback */
    unsigned early;          /* under lock: fired before its deadline */
    unsigned unarmed;        /* under lock: fired with no arm recorded */
};

struct modifier {
    struct mod_timer *timers; /* MOD_TIMERS */
    unsigned ops;
    uint32_t seed;
};

static void mod_timer_cb(void *opaque)
{
    struct mod_timer *m = opaque;
    pthread_mutex_lock(&m->lock);
    int64_t now = spindle_now_ns(SPINDLE_CLOCK_MONOTONIC);
    if (m->low == INT64_MAX) {
        m->unarmed++;
    } else if (now < m->low) {
        m->early++;
    }
    m->fires++;
    /* Re-armed by the modifier after the library took it to fire: that arm
     * is still to come. Otherwise every arm so far has fired. */
    if (spindle_timer_pending(m->t)) {
        m->low = spindle_timer_expire_ns(m->t);
    } else {
        m->low = INT64_MAX;
        m->fired_after_op = m->ops;
    }
    pthread_mutex_unlock(&m->lock);
}

static void mod_arm(struct mod_timer *m, int64_t deadline, bool anticipate)
{
    pthread_mutex_lock(&m->lock);
    if (deadline < m->low) {
        m->low = deadline;
    }
    if (anticipate) {
        spindle_timer_mod_anticipate(m->t, deadline);
    } else {
        spindle_timer_mod(m->t, deadline);
    }
    m->arms++;
    m->last_arm_op = ++m->ops;
    pthread_mutex_unlock(&m->lock);
}

static void *modifier_main(void *opaque)
{
    struct modifier *md = opaque;
    for (unsigned k = 0; k < md->ops; k++) {
        uint32_t x = rnd(&md->seed);
        struct mod_timer *m = &md->timers[x % MOD_TIMERS];
        if (k % MOD_WAIT_EVERY == MOD_WAIT_EVERY - 1) {
            /* Arm one due now and wait for it to fire (only this thread
             * modifies it), so that firing and modifying interleave. */
            pthread_mutex_lock(&m->lock);
            unsigned before = m->fires;
            pthread_mutex_unlock(&m->lock);
            mod_arm(m, spindle_now_ns(SPINDLE_CLOCK_MONOTONIC), false);
            for (;;) {
                pthread_mutex_lock(&m->lock);
                bool fired = m->fires > before;
                pthread_mutex_unlock(&m->lock);
                if (fired) {
                    break;
                }
                sched_yield();
            }
            continue;
        }
        /* Deadlines 0 to ~65 us ahead: many fire while being modified. */
        int64_t deadline = spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) +
                           (int64_t)((x >> 8) % 65536);
        switch ((x >> 28) % 4) {
        case 0:
        case 1:
            mod_arm(m, deadline, false);
            break;
        case 2:
            mod_arm(m, deadline, true);
            break;
        default:
            pthread_mutex_lock(&m->lock);
            spindle_timer_del(m->t);
            m->ops++;
            pthread_mutex_unlock(&m->lock);
            break;
        }
    }
    /* A last arm for every timer: each must fire once more. */
    for (unsigned i = 0; i < MOD_TIMERS; i++) {
        mod_arm(&md->timers[i], spindle_now_ns(SPINDLE_CLOCK_MONOTONIC), false);
    }
    return NULL;
}

static bool mod_timer_final_fired(struct mod_timer *m)
{
    pthread_mutex_lock(&m->lock);
    bool fired = m->fired_after_op >= m->last_arm_op;
    pthread_mutex_unlock(&m->lock);
    return fired;
}

static void timers_modified_from_two_threads_while_firing(void **state)
{
    (void)state;
    spindle_ctx *ctx = harness_ctx_new();
    const unsigned ops = MOD_OPS * stress_scale();
    struct mod_timer *timers = calloc(MODIFIERS * MOD_TIMERS, sizeof(*timers));
    assert_non_null(timers);
    struct modifier md[MODIFIERS];
    /* Created before the loop thread starts: timer_new is for the loop
     * thread, or any thread while no iteration runs. */
    for (unsigned i = 0; i < MODIFIERS * MOD_TIMERS; i++) {
        struct mod_timer *m = &timers[i];
        pthread_mutex_init(&m->lock, NULL);
        m->low = INT64_MAX;
        m->t = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC, mod_timer_cb, m);
        assert_non_null(m->t);
    }
    for (int t = 0; t < MODIFIERS; t++) {
        md[t] = (struct modifier){ .timers = &timers[t * MOD_TIMERS],
                                   .ops = ops,
                                   .seed = 0x2545f491u * (uint32_t)(t + 1) };
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct looper lp;
    looper_start(&lp, ctx);
    pthread_t th[MODIFIERS];
    for (int t = 0; t < MODIFIERS; t++) {
        start_thread(&th[t], modifier_main, &md[t]);
    }
    for (int t = 0; t < MODIFIERS; t++) {
        join_thread(th[t]);
    }
    /* Every last arm fires: the loop is woken by them (a lost wake-up would
     * leave one pending until the watchdog fires). */
    for (unsigned i = 0; i < MODIFIERS * MOD_TIMERS; i++) {
        while (!mod_timer_final_fired(&timers[i])) {
            sched_yield();
        }
    }
    looper_stop(&lp);
    double secs = seconds_since(&t0);

    unsigned fires = 0, arms = 0, early = 0, unarmed = 0, over = 0;
    unsigned pending = 0;
    for (unsigned i = 0; i < MODIFIERS * MOD_TIMERS; i++) {
        struct mod_timer *m = &timers[i];
        fires += m->fires;
        arms += m->arms;
        early += m->early;
        unarmed += m->unarmed;
        over += m->fires > m->arms;
        pending += spindle_timer_pending(m->t);
    }
    print_message("%u timer operations from %d threads, %u arms, %u fires, "
                  "%.2f s\n", MODIFIERS * (ops + MOD_TIMERS), MODIFIERS, arms,
                  fires, secs);
    assert_int_equal(early, 0);
    assert_int_equal(unarmed, 0);
    assert_int_equal(over, 0);
    assert_int_equal(pending, 0);
    /* At least the waited-for ones and the last arms fired. */
    assert_true(fires >= MODIFIERS * (ops / MOD_WAIT_EVERY + MOD_TIMERS));

    for (unsigned i = 0; i < MODIFIERS * MOD_TIMERS; i++) {
        spindle_timer_free(timers[i].t);
        pthread_mutex_destroy(&timers[i].lock);
    }
    free(timers);
    spindle_ctx_free(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        TEST(wakeup_ring_loses_no_wakeup),
        TEST(four_producers_each_item_runs_exactly_once_in_order),
        TEST(handler_churn_from_two_threads_never_calls_removed_handlers),
        TEST(timers_modified_from_two_threads_while_firing),
    };
    const char *filter = getenv("SPINDLE_TEST_FILTER");
    if (filter && *filter) {
        cmocka_set_test_filter(filter);
    }
    print_message("stress scale %u (SPINDLE_STRESS_SCALE)\n", stress_scale());
    return RUN_TESTS(tests);
}
