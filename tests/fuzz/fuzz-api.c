/* libFuzzer target: an input is a sequence of API operations on one
 * context, checked against a reference model of the API contract (spindle.h).
 * SPDX-License-Identifier: MIT
 *
 * Built with clang -fsanitize=fuzzer,address,undefined (tests/fuzz/meson.build,
 * `make check-fuzz`, `make fuzz`). The library's sources are compiled into
 * the target with the same sanitizers and coverage instrumentation.
 *
 * Input format. Byte 0 picks the context's options (back-end, busy polling
 * on or off). The rest is read as operations: an opcode byte, then one or
 * two argument bytes (a slot number, a deadline code, a length). Every
 * callback the library runs reads one more byte: if its low bit is set, the
 * callback performs one operation itself (scheduling, deleting its own or
 * another object, removing handlers, arming timers, a nested non-blocking
 * spindle_poll while the nesting depth is below MAX_DEPTH, ...). At the end
 * of the input two more iterations run, then the context is freed (LSan
 * checks that it released what it owned).
 *
 * Only one thread and only non-blocking iterations are used, so the outcome
 * is deterministic; timers are armed either in the past (a few ns after
 * 1 ms of monotonic time: always expired) or ~73 years ahead (never in this
 * run), so wall time does not matter.
 *
 * The model (what is checked; any mismatch prints a line and aborts):
 * - Bottom halves: one FIFO of listed entries (scheduled, or cancelled but
 *   not yet taken by the loop). Scheduling a cancelled entry that is still
 *   listed keeps its place, unless the iteration that reaches it started no
 *   later than that schedule: then the loop pushes it to the end of the
 *   queue instead of running it (so a schedule never runs in the iteration
 *   already under way).
 *   An iteration runs, before anything else, every entry listed when it
 *   started (its boundary), in FIFO order, each scheduled one exactly once;
 *   a BH scheduled while the BH phase runs waits for a later iteration
 *   (a nested iteration runs it). Cancelled and deleted BHs never run. No
 *   callback runs outside spindle_poll (never synchronously).
 * - Timers: a run fires the expired timers armed before it started, in
 *   (deadline, arm order) order, each once, and is complete: none of them
 *   is left when spindle_poll returns. A timer is not pending in its
 *   callback; pending/expire_ns agree with the model after every operation.
 *   mod_anticipate only moves a deadline earlier (or arms). mod_in (the
 *   mod opcode with bit 0x20 in its deadline code) arms at now plus its
 *   delay, past or far (the deadline it reports is checked, then used).
 * - fd handlers and event notifiers: a removed or replaced registration is
 *   never called after the call that removed it returned; an external one is
 *   not called while external handlers are disabled; one whose interest is
 *   off (spindle_set_fd_interest) is not called; a handler runs at most
 *   once per iteration; a top-level iteration calls every handler whose fd
 *   was ready when it started and still is at the end, whose registration
 *   and interest did not change, and that was not external-disabled
 *   meanwhile (level-triggered readiness of pipes and notifiers).
 *   set_fd_interest returns -ENOENT for an unregistered slot and -EINVAL
 *   for the direction without a callback (nothing changes then);
 *   registering turns the interest back on.
 * - Notifiers: test_and_clear returns the model's "set" flag (sets
 *   coalesce).
 * - spindle_poll's return value is true exactly when a non-idle BH, a
 *   handler or a timer ran in that iteration (checked for iterations that
 *   did not nest another), and spindle_compute_timeout matches: 0 with a
 *   non-idle BH pending or an expired timer armed, at most 10 ms with an
 *   idle one, a large value with only far timers, -1 with nothing.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "spindle.h"

#define NBH 8
#define NTIMER 8
#define NPIPE 4
#define NNOTIF 2
#define NFD (2 * NPIPE + NNOTIF) /* read ends, write ends, notifiers */
#define MAX_DEPTH 3
#define MAX_RECS 512
#define MAX_QUEUE 256
#define MAX_ONESHOTS 64
#define MAX_FRAMES 8
#define PIPE_CAP 4096 /* bytes we ever keep in one pipe */

#define PAST_BASE 1000000LL                 /* 1 ms of monotonic time */
#define FUTURE_BASE (INT64_MAX / 4)          /* ~73 years from boot */
#define IDLE_TIMEOUT_NS 10000000LL

/* ------------------------------------------------------------------------
 * Failure reporting
 */

static void fail(const char *fmt, ...)
    __attribute__((noreturn, format(printf, 1, 2)));

static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "\nspindle model mismatch: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

#define CHECK(cond, ...) \
    do { \
        if (!(cond)) { \
            fail(__VA_ARGS__); \
        } \
    } while (0)

/* ------------------------------------------------------------------------
 * State: the real objects and the model
 */

enum rec_kind { REC_BH, REC_ONESHOT, REC_TIMER, REC_READ, REC_WRITE, REC_NOTIF };

/* One per created object or registration; the callbacks' opaque. Records
 * live until the end of the input, so a wrong call is a model mismatch and
 * not a use-after-free in the harness. */
struct rec {
    enum rec_kind kind;
    int slot;                   /* BH/timer slot, fd index */
    bool live;                  /* current object / registration */
    unsigned long long last_frame; /* handlers: last iteration that called */
    unsigned long long top_called; /* handlers: top-level poll that called */
};

struct qentry {
    int rec;
    unsigned long long seq;
    bool scheduled; /* false: cancelled but still listed */
    bool idle;
    /* Cancelled, then scheduled again while still listed: the library
     * pushes it back (to the end of the queue) when an iteration that
     * started no later than that schedule reaches it, instead of running
     * it; requeue_epoch is the number of iterations started by then. */
    bool requeue;
    unsigned long long requeue_epoch;
};

struct bh_slot {
    spindle_bh *bh;
    int rec; /* -1: empty */
};

struct timer_slot {
    spindle_timer *t;
    int rec;  /* -1: empty */
    bool armed;
    int64_t deadline;
    unsigned long long seq;
};

struct fd_slot {
    int fd;
    int rec;      /* current registration, -1: none */
    bool ext;
    bool interest; /* the registration's one direction is wanted */
    size_t bytes; /* pipe read ends: bytes in the pipe */
    bool disturbed; /* changed during the current top-level poll */
    bool ready_at_start;
};

enum phase { PH_BH, PH_HANDLERS, PH_TIMERS };

struct frame {
    unsigned long long id;
    unsigned long long epoch; /* iterations started, this one included */
    unsigned long long bh_boundary;
    unsigned long long timer_boundary;
    enum phase phase;
    bool progress;
    bool nested; /* it ran a nested iteration */
};

static int pipes[NPIPE][2];
static spindle_notifier *notifs[NNOTIF];
static bool notif_set[NNOTIF];

static spindle_ctx *ctx;
static const uint8_t *in_data;
static size_t in_size, in_pos;

static unsigned long long model_epoch; /* iterations started */
static struct rec recs[MAX_RECS];
static int nrecs;
static struct qentry queue[MAX_QUEUE];
static int qlen;
static unsigned long long qseq;
static struct bh_slot bhs[NBH];
static struct timer_slot timers[NTIMER];
static unsigned long long timer_seq;
static struct fd_slot fds[NFD];
static unsigned disable_cnt;
static bool ext_disturbed;
static int oneshots;

static struct frame frames[MAX_FRAMES];
static int depth;
static unsigned long long frame_ids;
static unsigned long long top_id;

static uint8_t next_byte(void)
{
    return in_pos < in_size ? in_data[in_pos++] : 0;
}

static int new_rec(enum rec_kind kind, int slot)
{
    if (nrecs == MAX_RECS) {
        return -1;
    }
    recs[nrecs] = (struct rec){ .kind = kind, .slot = slot, .live = true };
    return nrecs++;
}

static bool fd_is_notifier(int i) { return i >= 2 * NPIPE; }
static bool fd_is_write_end(int i) { return i >= NPIPE && i < 2 * NPIPE; }

/* Whether fd slot i is ready for its registration (level-triggered). */
static bool fd_ready(int i)
{
    if (fd_is_notifier(i)) {
        return notif_set[i - 2 * NPIPE];
    }
    if (fd_is_write_end(i)) {
        return true; /* never more than PIPE_CAP bytes in a pipe */
    }
    return fds[i].bytes > 0;
}

/* ------------------------------------------------------------------------
 * The model's checks at phase boundaries
 */

static void queue_remove(int k)
{
    memmove(&queue[k], &queue[k + 1], sizeof(queue[0]) * (size_t)(qlen - k - 1));
    qlen--;
}

static int queue_find_rec(int rec)
{
    for (int k = 0; k < qlen; k++) {
        if (queue[k].rec == rec) {
            return k;
        }
    }
    return -1;
}

/* The BH phase of frame f is over: everything listed at its start has
 * been taken; a scheduled one left there was skipped. */
/* Whether the library, reaching entry k in iteration f, pushes it back. */
static bool pushed_back(const struct frame *f, int k)
{
    return queue[k].scheduled && queue[k].requeue &&
           queue[k].requeue_epoch >= f->epoch;
}

/* Entry k moves to the end of the queue, for a later iteration. */
static void push_back(int k)
{
    struct qentry e = queue[k];
    queue_remove(k);
    e.requeue = false;
    e.seq = ++qseq;
    queue[qlen++] = e;
}

static void end_bh_phase(struct frame *f)
{
    while (qlen > 0 && queue[0].seq <= f->bh_boundary) {
        if (pushed_back(f, 0)) {
            push_back(0);
            continue;
        }
        CHECK(!queue[0].scheduled,
              "BH record %d (seq %llu) listed when iteration %llu started "
              "did not run in it", queue[0].rec, queue[0].seq, f->id);
        queue_remove(0);
    }
    f->phase = PH_HANDLERS;
}

/* The timer the current run must fire next, or -1: the earliest expired
 * timer (deadline, then arm order) armed before the run started. */

static int expected_timer(unsigned long long boundary)
{
    int best = -1;
    for (int i = 0; i < NTIMER; i++) {
        struct timer_slot *t = &timers[i];
        if (t->rec < 0 || !t->armed || t->deadline >= FUTURE_BASE ||
            t->seq >= boundary) {
            continue;
        }
        if (best < 0 || t->deadline < timers[best].deadline ||
            (t->deadline == timers[best].deadline && t->seq < timers[best].seq)) {
            best = i;
        }
    }
    return best;
}

/* A handler or timer callback of frame f: the phases before it are over. */
static void enter_phase(struct frame *f, enum phase ph)
{
    if (f->phase == PH_BH) {
        end_bh_phase(f);
    }
    if (ph == PH_HANDLERS) {
        CHECK(f->phase == PH_HANDLERS, "a handler ran after the timers of "
              "iteration %llu", f->id);
    } else if (f->phase != PH_TIMERS) {
        /* No user code runs between the handlers and the timer run. */
        f->timer_boundary = timer_seq;
        f->phase = PH_TIMERS;
    }
}

static struct frame *cur_frame(const char *what)
{
    CHECK(depth > 0, "%s callback ran outside spindle_poll", what);
    return &frames[depth - 1];
}

/* ------------------------------------------------------------------------
 * Callbacks
 */

static void run_op(void);

static void maybe_act(void)
{
    if (next_byte() & 1) {
        run_op();
    }
}

static void bh_cb(void *opaque)
{
    int r = (int)((struct rec *)opaque - recs);
    struct frame *f = cur_frame("BH");
    CHECK(recs[r].live, "deleted BH record %d ran", r);
    CHECK(f->phase == PH_BH, "BH record %d ran after the BH phase of "
          "iteration %llu", r, f->id);
    /* Entries the loop passed on its way here that it pushed back. */
    for (int j = 0; j < qlen && queue[j].rec != r; ) {
        if (queue[j].seq <= f->bh_boundary && pushed_back(f, j)) {
            push_back(j);
        } else {
            j++;
        }
    }
    int k = queue_find_rec(r);
    CHECK(k >= 0, "BH record %d ran but is not scheduled", r);
    CHECK(queue[k].scheduled, "cancelled BH record %d ran", r);
    CHECK(!pushed_back(f, k), "BH record %d, cancelled and scheduled again "
          "in iteration %llu, ran in it", r, f->id);
    CHECK(queue[k].seq <= f->bh_boundary,
          "BH record %d scheduled during iteration %llu ran in it", r, f->id);
    /* Entries before it were taken by the loop: they must be cancelled
     * ones, or it overtook them. */
    for (int j = 0; j < k; j++) {
        CHECK(!queue[j].scheduled, "BH record %d ran before BH record %d, "
              "scheduled earlier", r, queue[j].rec);
    }
    bool idle = queue[k].idle;
    for (int j = 0; j <= k; j++) {
        queue_remove(0);
    }
    if (!idle) {
        f->progress = true;
    }
    if (recs[r].kind == REC_ONESHOT) {
        recs[r].live = false; /* freed by the library after the call */
    }
    maybe_act();
}

static void timer_cb(void *opaque)
{
    int r = (int)((struct rec *)opaque - recs);
    struct frame *f = cur_frame("timer");
    CHECK(recs[r].live, "freed timer record %d fired", r);
    enter_phase(f, PH_TIMERS);
    int i = recs[r].slot;
    struct timer_slot *t = &timers[i];
    CHECK(t->rec == r && t->armed, "timer %d (record %d) fired while not "
          "armed", i, r);
    CHECK(t->deadline < FUTURE_BASE, "timer %d fired before its deadline", i);
    int want = expected_timer(f->timer_boundary);
    CHECK(want == i, "timer %d fired, expected timer %d (by deadline, then "
          "arm order, armed before the run)", i, want);
    CHECK(!spindle_timer_pending(t->t), "timer %d pending in its callback", i);
    CHECK(spindle_timer_expire_ns(t->t) == -1,
          "timer %d has a deadline in its callback", i);
    t->armed = false;
    f->progress = true;
    maybe_act();
}

static void handler_cb(int r, enum rec_kind kind)
{
    struct frame *f = cur_frame("handler");
    struct rec *rc = &recs[r];
    CHECK(rc->kind == kind, "handler record %d called through the wrong "
          "callback", r);
    CHECK(rc->live, "removed or replaced handler record %d (fd slot %d) "
          "called", r, rc->slot);
    struct fd_slot *s = &fds[rc->slot];
    CHECK(!s->ext || disable_cnt == 0, "external handler on fd slot %d "
          "called while external handlers are disabled", rc->slot);
    CHECK(s->interest, "handler on fd slot %d called with its interest off",
          rc->slot);
    CHECK(rc->last_frame != f->id, "handler on fd slot %d called twice in "
          "iteration %llu", rc->slot, f->id);
    enter_phase(f, PH_HANDLERS);
    rc->last_frame = f->id;
    rc->top_called = top_id;
    f->progress = true;
    maybe_act();
}

static void read_cb(void *opaque) { handler_cb((int)((struct rec *)opaque - recs), REC_READ); }
static void write_cb(void *opaque) { handler_cb((int)((struct rec *)opaque - recs), REC_WRITE); }
static void notif_cb(void *opaque) { handler_cb((int)((struct rec *)opaque - recs), REC_NOTIF); }

/* ------------------------------------------------------------------------
 * Iterations
 */

static void do_poll(void)
{
    if (depth == MAX_DEPTH) {
        return;
    }
    bool top = depth == 0;
    if (top) {
        top_id = frame_ids + 1;
        ext_disturbed = false;
        for (int i = 0; i < NFD; i++) {
            fds[i].disturbed = false;
            fds[i].ready_at_start = fds[i].rec >= 0 && fd_ready(i) &&
                                    fds[i].interest &&
                                    (!fds[i].ext || disable_cnt == 0);
        }
    } else {
        frames[depth - 1].nested = true;
    }
    struct frame *f = &frames[depth++];
    *f = (struct frame){ .id = ++frame_ids, .epoch = ++model_epoch,
                         .bh_boundary = qseq, .phase = PH_BH };
    errno = 0;
    bool ret = spindle_poll(ctx, false);
    CHECK(errno != EBUSY, "spindle_poll returned EBUSY on the loop thread");
    f = &frames[depth - 1];
    if (f->phase == PH_BH) {
        end_bh_phase(f);
    }
    unsigned long long boundary = f->phase == PH_TIMERS ? f->timer_boundary
                                                        : timer_seq;
    int left = expected_timer(boundary);
    CHECK(left < 0, "expired timer %d was not fired by iteration %llu", left,
          f->id);
    if (!f->nested) {
        CHECK(ret == f->progress, "spindle_poll returned %d, but callbacks "
              "that count as progress %s", ret,
              f->progress ? "ran" : "did not run");
    }
    depth--;
    if (top) {
        for (int i = 0; i < NFD; i++) {
            struct fd_slot *s = &fds[i];
            if (!s->ready_at_start || s->disturbed || s->rec < 0 ||
                (s->ext && ext_disturbed) || !fd_ready(i)) {
                continue;
            }
            CHECK(recs[s->rec].top_called == top_id, "handler on fd slot %d "
                  "was ready during iteration %llu and was not called", i,
                  top_id);
        }
    }
}

/* ------------------------------------------------------------------------
 * Operations
 */

static void check_timer(int i)
{
    struct timer_slot *t = &timers[i];
    if (t->rec < 0) {
        return;
    }
    CHECK(spindle_timer_pending(t->t) == t->armed,
          "timer %d: pending %d, model %d", i, spindle_timer_pending(t->t),
          t->armed);
    CHECK(spindle_timer_expire_ns(t->t) == (t->armed ? t->deadline : -1),
          "timer %d: expire_ns %lld, model %lld", i,
          (long long)spindle_timer_expire_ns(t->t),
          (long long)(t->armed ? t->deadline : -1));
}

static int64_t deadline_of(uint8_t code)
{
    return (code & 0x10 ? FUTURE_BASE : PAST_BASE) + (code & 0x0f);
}

/* spindle_timer_mod_in with a delay that makes the deadline past (18 min
 * ago, or 0 if the clock is younger) or far (FUTURE_BASE from now): the
 * deadline it reports must be now plus the delay, for a `now` taken during
 * the call. Returns it, for the model. */
static int64_t mod_in(spindle_timer *t, uint8_t code)
{
    int64_t delta = code & 0x10 ? FUTURE_BASE + (code & 0x0f)
                                : -(INT64_C(1) << 40) - (code & 0x0f);
    int64_t before = spindle_now_ns(SPINDLE_CLOCK_MONOTONIC);
    spindle_timer_mod_in(t, delta);
    int64_t after = spindle_now_ns(SPINDLE_CLOCK_MONOTONIC);
    int64_t dl = spindle_timer_expire_ns(t);
    int64_t lo = before + delta, hi = after + delta;
    lo = lo < 0 ? 0 : lo;
    hi = hi < 0 ? 0 : hi;
    CHECK(dl >= lo && dl <= hi, "mod_in(%lld): deadline %lld, not in "
          "[%lld, %lld]", (long long)delta, (long long)dl, (long long)lo,
          (long long)hi);
    return dl;
}

static void bh_schedule_model(int r, bool idle)
{
    int k = queue_find_rec(r);
    if (k >= 0) {
        if (!queue[k].scheduled) {
            queue[k].scheduled = true;
            queue[k].idle = idle;
            queue[k].requeue = true;
            queue[k].requeue_epoch = model_epoch;
        } else if (!idle) {
            queue[k].idle = false; /* promotes a pending idle one */
        }
        return;
    }
    CHECK(qlen < MAX_QUEUE, "harness: queue overflow");
    queue[qlen++] = (struct qentry){ .rec = r, .seq = ++qseq,
                                     .scheduled = true, .idle = idle };
}

static void set_handler(int i, bool on, bool ext)
{
    struct fd_slot *s = &fds[i];
    int r = -1;
    if (on) {
        enum rec_kind kind = fd_is_notifier(i) ? REC_NOTIF
                             : fd_is_write_end(i) ? REC_WRITE : REC_READ;
        r = new_rec(kind, i);
        if (r < 0) {
            return;
        }
    }
    int ret;
    if (fd_is_notifier(i)) {
        ret = spindle_set_event_notifier(ctx, notifs[i - 2 * NPIPE], ext,
                                         on ? notif_cb : NULL, NULL,
                                         on ? &recs[r] : NULL);
    } else {
        ret = spindle_set_fd_handler(ctx, s->fd, ext,
                                     on && !fd_is_write_end(i) ? read_cb : NULL,
                                     on && fd_is_write_end(i) ? write_cb : NULL,
                                     NULL, on ? &recs[r] : NULL);
    }
    CHECK(ret == 0, "registering fd slot %d returned %d", i, ret);
    if (s->rec >= 0) {
        recs[s->rec].live = false;
    }
    s->rec = r;
    s->ext = on && ext;
    s->interest = on;
    s->disturbed = true;
}

/* Interest in slot i's one direction (read for read ends and notifiers,
 * write for write ends) on or off; `wrong` asks for the other direction
 * as well, which has no callback. */
static void set_interest(int i, bool on, bool wrong)
{
    struct fd_slot *s = &fds[i];
    bool writer = fd_is_write_end(i);
    bool want_read = writer ? wrong : on;
    bool want_write = writer ? on : wrong;
    int ret = spindle_set_fd_interest(ctx, s->fd, want_read, want_write);
    int expect = s->rec < 0 ? -ENOENT : wrong ? -EINVAL : 0;
    CHECK(ret == expect, "set_fd_interest on fd slot %d (%s %d, other "
          "direction %d) returned %d, expected %d", i,
          writer ? "write" : "read", on, wrong, ret, expect);
    if (ret == 0) {
        s->interest = on;
        s->disturbed = true;
    }
}

static void run_op(void)
{
    uint8_t op = next_byte();
    uint8_t a = next_byte();
    switch (op % 25) {
    case 0: { /* bh_new */
        struct bh_slot *b = &bhs[a % NBH];
        if (b->rec >= 0) {
            break;
        }
        int r = new_rec(REC_BH, a % NBH);
        if (r < 0) {
            break;
        }
        b->bh = spindle_bh_new(ctx, bh_cb, &recs[r]);
        CHECK(b->bh, "spindle_bh_new failed: %d", errno);
        b->rec = r;
        break;
    }
    case 1:
    case 2: { /* schedule, schedule_idle */
        struct bh_slot *b = &bhs[a % NBH];
        if (b->rec < 0) {
            break;
        }
        bool idle = op % 24 == 2;
        if (idle) {
            spindle_bh_schedule_idle(b->bh);
        } else {
            spindle_bh_schedule(b->bh);
        }
        bh_schedule_model(b->rec, idle);
        break;
    }
    case 3: { /* cancel */
        struct bh_slot *b = &bhs[a % NBH];
        if (b->rec < 0) {
            break;
        }
        spindle_bh_cancel(b->bh);
        int k = queue_find_rec(b->rec);
        if (k >= 0) {
            queue[k].scheduled = false;
            queue[k].idle = false;
        }
        break;
    }
    case 4: { /* delete */
        struct bh_slot *b = &bhs[a % NBH];
        if (b->rec < 0) {
            break;
        }
        spindle_bh_delete(b->bh);
        int k = queue_find_rec(b->rec);
        if (k >= 0) {
            queue_remove(k);
        }
        recs[b->rec].live = false;
        b->rec = -1;
        b->bh = NULL;
        break;
    }
    case 5: { /* oneshot */
        if (oneshots == MAX_ONESHOTS) {
            break;
        }
        int r = new_rec(REC_ONESHOT, -1);
        if (r < 0) {
            break;
        }
        oneshots++;
        CHECK(spindle_bh_oneshot(ctx, bh_cb, &recs[r]) == 0,
              "spindle_bh_oneshot failed");
        bh_schedule_model(r, false);
        break;
    }
    case 6: { /* timer_new */
        struct timer_slot *t = &timers[a % NTIMER];
        if (t->rec >= 0) {
            break;
        }
        int r = new_rec(REC_TIMER, a % NTIMER);
        if (r < 0) {
            break;
        }
        t->t = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC, timer_cb,
                                 &recs[r]);
        CHECK(t->t, "spindle_timer_new failed: %d", errno);
        t->rec = r;
        t->armed = false;
        check_timer(a % NTIMER);
        break;
    }
    case 7:
    case 8: { /* mod (or mod_in), mod_anticipate */
        int i = a % NTIMER;
        struct timer_slot *t = &timers[i];
        uint8_t code = next_byte();
        int64_t dl = deadline_of(code);
        if (t->rec < 0) {
            break;
        }
        if (op % 24 == 7 && (code & 0x20)) {
            dl = mod_in(t->t, code);
        } else if (op % 24 == 7) {
            spindle_timer_mod(t->t, dl);
        } else {
            spindle_timer_mod_anticipate(t->t, dl);
            if (t->armed && dl >= t->deadline) {
                check_timer(i);
                break;
            }
        }
        t->armed = true;
        t->deadline = dl;
        t->seq = timer_seq++;
        check_timer(i);
        break;
    }
    case 9: { /* del */
        int i = a % NTIMER;
        if (timers[i].rec < 0) {
            break;
        }
        spindle_timer_del(timers[i].t);
        timers[i].armed = false;
        check_timer(i);
        break;
    }
    case 10: { /* free */
        struct timer_slot *t = &timers[a % NTIMER];
        if (t->rec < 0) {
            break;
        }
        spindle_timer_free(t->t);
        recs[t->rec].live = false;
        t->rec = -1;
        t->t = NULL;
        t->armed = false;
        break;
    }
    case 11: /* register or update a handler */
        set_handler(a % NFD, true, a & 0x80);
        break;
    case 12: /* remove a handler */
        set_handler(a % NFD, false, false);
        break;
    case 13: { /* write to a pipe */
        int p = a % NPIPE;
        size_t n = (size_t)(a >> 2) % 8 + 1;
        if (fds[p].bytes + n > PIPE_CAP) {
            break;
        }
        char buf[8] = { 0 };
        CHECK(write(pipes[p][1], buf, n) == (ssize_t)n, "write to pipe failed");
        fds[p].bytes += n;
        break;
    }
    case 14: { /* drain a pipe, or read one byte */
        int p = a % NPIPE;
        char buf[PIPE_CAP];
        size_t want = a & 0x80 ? 1 : sizeof(buf);
        ssize_t n = read(pipes[p][0], buf, want);
        size_t expect = fds[p].bytes < want ? fds[p].bytes : want;
        CHECK(n == (expect ? (ssize_t)expect : -1), "pipe %d: read %zd, "
              "model %zu", p, n, expect);
        if (n > 0) {
            fds[p].bytes -= (size_t)n;
            fds[p].disturbed = true;
        }
        break;
    }
    case 15: /* notifier set */
        CHECK(spindle_notifier_set(notifs[a % NNOTIF]) == 0,
              "spindle_notifier_set failed");
        notif_set[a % NNOTIF] = true;
        break;
    case 16: { /* notifier test_and_clear */
        int n = a % NNOTIF;
        bool was = spindle_notifier_test_and_clear(notifs[n]);
        CHECK(was == notif_set[n], "notifier %d: test_and_clear %d, model %d",
              n, was, notif_set[n]);
        notif_set[n] = false;
        fds[2 * NPIPE + n].disturbed = true;
        break;
    }
    case 17: /* disable external */
        if (disable_cnt < 4) {
            spindle_disable_external(ctx);
            disable_cnt++;
            ext_disturbed = true;
        }
        break;
    case 18: /* enable external */
        if (disable_cnt > 0) {
            spindle_enable_external(ctx);
            disable_cnt--;
        }
        break;
    case 19:
    case 20: /* an iteration (nested inside a callback) */
        do_poll();
        break;
    case 21: /* wake-up: not progress by itself */
        spindle_notify(ctx);
        break;
    case 22: { /* compute_timeout, on the loop thread outside callbacks */
        if (depth > 0) {
            break;
        }
        bool busy = false, idle = false, past = false, future = false;
        for (int k = 0; k < qlen; k++) {
            if (queue[k].scheduled) {
                busy |= !queue[k].idle;
                idle |= queue[k].idle;
            }
        }
        for (int i = 0; i < NTIMER; i++) {
            if (timers[i].rec >= 0 && timers[i].armed) {
                past |= timers[i].deadline < FUTURE_BASE;
                future |= timers[i].deadline >= FUTURE_BASE;
            }
        }
        int64_t to = spindle_compute_timeout(ctx);
        if (busy || past) {
            CHECK(to == 0, "compute_timeout %lld, expected 0", (long long)to);
        } else if (idle) {
            CHECK(to > 0 && to <= IDLE_TIMEOUT_NS, "compute_timeout %lld "
                  "with only an idle BH pending", (long long)to);
        } else if (future) {
            CHECK(to > IDLE_TIMEOUT_NS, "compute_timeout %lld with only far "
                  "timers", (long long)to);
        } else {
            CHECK(to == -1, "compute_timeout %lld with nothing pending",
                  (long long)to);
        }
        break;
    }
    case 24: /* fd interest on or off */
        set_interest(a % NFD, a & 0x40, a & 0x80);
        break;
    default: /* 23: pending/expire_ns of every timer */
        for (int i = 0; i < NTIMER; i++) {
            check_timer(i);
        }
        break;
    }
}

/* ------------------------------------------------------------------------
 * libFuzzer entry points
 */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    for (int p = 0; p < NPIPE; p++) {
        if (pipe2(pipes[p], O_NONBLOCK | O_CLOEXEC) != 0) {
            abort();
        }
    }
    for (int n = 0; n < NNOTIF; n++) {
        notifs[n] = spindle_notifier_new(false);
        if (!notifs[n]) {
            abort();
        }
    }
    return 0;
}

static void reset(void)
{
    char buf[PIPE_CAP];
    for (int p = 0; p < NPIPE; p++) {
        while (read(pipes[p][0], buf, sizeof(buf)) > 0) {
        }
    }
    for (int n = 0; n < NNOTIF; n++) {
        spindle_notifier_test_and_clear(notifs[n]);
        notif_set[n] = false;
    }
    nrecs = 0;
    qlen = 0;
    qseq = 0;
    timer_seq = 0;
    disable_cnt = 0;
    oneshots = 0;
    depth = 0;
    frame_ids = 0;
    for (int i = 0; i < NBH; i++) {
        bhs[i] = (struct bh_slot){ .rec = -1 };
    }
    for (int i = 0; i < NTIMER; i++) {
        timers[i] = (struct timer_slot){ .rec = -1 };
    }
    for (int i = 0; i < NFD; i++) {
        int fd = i < NPIPE ? pipes[i][0]
                 : i < 2 * NPIPE ? pipes[i - NPIPE][1]
                 : spindle_notifier_fd(notifs[i - 2 * NPIPE]);
        fds[i] = (struct fd_slot){ .fd = fd, .rec = -1 };
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0) {
        return 0;
    }
    reset();
    static const spindle_backend backends[3] = {
        SPINDLE_BACKEND_AUTO, SPINDLE_BACKEND_POLL, SPINDLE_BACKEND_EPOLL
    };
    spindle_options o = { .backend = backends[data[0] % 3],
                          .poll_max_ns = data[0] & 4 ? 0 : -1 };
    ctx = spindle_ctx_new_opts(&o);
    CHECK(ctx, "spindle_ctx_new_opts failed: %d", errno);
    in_data = data + 1;
    in_size = size - 1;
    in_pos = 0;
    while (in_pos < in_size) {
        run_op();
    }
    /* Input used up: callbacks do nothing more. Two last iterations check
     * what is still pending. */
    do_poll();
    do_poll();
    spindle_ctx_free(ctx);
    ctx = NULL;
    return 0;
}
