/* The io_uring fd monitor, and the context's ring.
 * SPDX-License-Identifier: MIT
 *
 * Every live handler with events has one multishot poll request in the
 * ring (Linux 5.13+), whose user_data is the handler's record. The kernel
 * posts a completion (CQE) into memory shared with user space whenever
 * the fd is woken, so busy polling finds fd events by reading the
 * completion ring: no system call of the loop's own per event.
 *
 * Level-triggered readiness on top of wake-ups. spindle promises that a
 * handler which leaves data unread is called again; a multishot poll only
 * reports new wake-ups. So every fd reported ready joins the re-check set,
 * and an fd in it that no new CQE reported in a later iteration is looked
 * at again with one ppoll(2) (zero timeout) for the whole set: before the
 * loop sleeps (never sleep on a ready fd) and in the dispatch step of every
 * later iteration. An fd that is served in every iteration (a new event
 * each time, the busy-polling case) gets a fresh CQE each time and never
 * needs the ppoll: no system call per event. An fd whose handler left data
 * behind is called again in the next iteration, or, while the loop spins
 * waiting for other events, after at most 32 us of spinning (ring_poll).
 * A poll just armed (a registration, interest back on) joins the set too:
 * the kernel posts the first CQE of an fd that is ready already through
 * task work on the loop thread, which may run only after the submitting
 * io_uring_enter has returned (when another CPU is adding task work for
 * this thread at that moment: seen 255 times in 2,000,000 registrations
 * with a second thread's fd busy on the same ring), and the iteration
 * must not pass over a handler whose fd was ready before it started.
 *
 * A CQE can also be stale: posted for a wake-up whose data was read in
 * the meantime (by the user between two iterations, or by a handler that
 * drains its fd after another handler wrote to it). Outside busy polling
 * the loop pays system calls anyway (it slept, or the iteration does not
 * spin), so there every CQE of a user fd is confirmed by the same ppoll
 * before its handler runs, exactly like epoll's level-triggered report.
 * While busy polling a CQE is taken at its word, which is what makes an
 * event cost no system call; only a CQE posted before its handler's last
 * run ended (its index in the ring below the tail seen then, kept per fd in
 * u->seq) is confirmed, since that run may have read what caused it; so
 * is the first CQE after a run that a ppoll report started without a CQE
 * (RING_AHEAD: the ppoll may have seen readiness whose CQE the kernel
 * posts later). So a spurious call (a read finding nothing) needs a race
 * with a read outside the loop during busy polling, or data written while
 * the handler is inside its read; handlers read non-blocking fds anyway.
 * Every hang-up or error is confirmed too, because the fd may have been
 * closed behind the loop's back: a closed fd shows as POLLNVAL, and the
 * record is disarmed and counted stale, as on the poll back-end. (The ring
 * holds a reference to the file while its poll is armed: closing the fd
 * does not end the poll by itself.)
 *
 * Threads. Only the loop thread touches the ring. update() runs on any
 * thread under the handler lock and only queues the record on the change
 * queue; the loop applies the queue (poll add or remove SQEs) at its next
 * submission, which the busy-polling spin and the wait both make. The
 * registration's notify wakes a sleeping loop for it.
 *
 * Interest changes (spindle_set_fd_interest) reach set_events() under the
 * handler lock right before a wait: an armed poll gets an update of its
 * mask (IORING_POLL_UPDATE_EVENTS) in the wait's own submission, and one
 * that the kernel is busy with (-EALREADY) is updated again; no interest
 * at all removes the poll, and interest coming back re-arms it.
 *
 * Removal races. A record known to the kernel is SP_RING_OWNED: retire()
 * leaves it to the ring. The loop cancels the poll (disarm()); the last
 * CQE (no IORING_CQE_F_MORE) may come iterations later, and CQEs of a
 * retired record are skipped (`deleted`), so only then, and once it left
 * the change queue and the re-check set, is the record released to the
 * handler lists' walker rule (sp_handler_release). A user_data therefore
 * never outlives its record.
 *
 * Completions are consumed in the dispatch step (step 6), one at a time
 * from the ring's head, and only those present on entry: a nested
 * iteration (from a callback) carries on from the same head, so each CQE
 * is handled exactly once, by whichever level reaches it first.
 *
 * Waiting: the timeout travels in io_uring_enter (IORING_ENTER_EXT_ARG,
 * Linux 5.11): the kernel reads it during the call, so no timeout request
 * lingers and no timespec has to outlive the submission. A wait that a
 * signal or a short submission cut short returns early, which spindle_poll
 * allows; a short submission is retried first.
 *
 * Task work. The kernel posts a poll's CQE from work it runs on the loop
 * thread. By default it interrupts the thread for that (an inter-processor
 * interrupt when the thread is running on another CPU), so completions
 * appear while the loop spins in user space: what makes busy polling cost
 * no system call. That interrupt is dear in a VM: a context can ask for a
 * cooperative ring instead (COOP_TASKRUN, Linux 5.19; spindle_uring_mode),
 * whose work runs at the loop's next system call, and contexts with busy
 * polling off get one by default, since they make that call anyway. The
 * kernel then flags pending work in the SQ ring (TASKRUN_FLAG), and a wait
 * or a spin that sees the flag enters the kernel to run it: a busy-polling
 * loop still sees every event, at a system call per batch. Measured on 2
 * vCPUs: http-hello under wrk, 50 connections, 64-70k requests/s with
 * interrupts, 121-128k cooperative (polling off), epoll 92-115k; nbd-server
 * at queue depth 1, p50 about 100 us with interrupts and 50 us cooperative,
 * both spinning up to 200 us. DEFER_TASKRUN is not used: it would run the
 * work only inside io_uring_enter, never at the handlers' own system
 * calls.
 */
#include "uring.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <unistd.h>

#define SQ_ENTRIES 256
#define CQ_ENTRIES 4096

/* h->ring_state: the request's state in the low bits, and flags. */
enum {
    RING_IDLE = 0,     /* no request in the kernel */
    RING_ARMED = 1,    /* a multishot poll */
    RING_REMOVING = 2, /* ... with a removal sent; its last CQE pending */
    RING_STATE = 3,
    RING_RECHECK = 4,  /* in the re-check set */
    RING_UPDATING = 8, /* a poll update in flight (its CQE names h) */
    RING_RESEND = 16,  /* the mask changed again meanwhile: update again */
    RING_CONFIRM = 32, /* in the set to confirm a CQE it consumed */
    RING_AHEAD = 64,   /* its handler ran on a ppoll report that no CQE
                        * stood for: that readiness's CQE may come yet */
};

static unsigned state(const sp_handler *h)
{
    return h->ring_state & RING_STATE;
}

static void set_state(sp_handler *h, unsigned st)
{
    h->ring_state = (uint8_t)((h->ring_state & ~RING_STATE) | st);
}

/* Whether the ring is done with h: no request, no queue or set holding it,
 * no update whose CQE will name it. */
static bool ring_done_with(const sp_handler *h)
{
    /* RING_CONFIRM and RING_AHEAD are hints about CQEs to come, not a
     * hold: a retired record gets none it would act on. */
    unsigned holds = h->ring_state & ~(unsigned)(RING_CONFIRM | RING_AHEAD);
    return holds == RING_IDLE && !(h->ring_flags & SP_RING_QUEUED);
}

/* Completions the kernel posted that the loop has not consumed. */
static bool cq_ready(sp_uring *u)
{
    /* Acquire pairs with the kernel's release of the tail: the CQEs below
     * it are written. */
    return io_uring_smp_load_acquire(u->ring.cq.ktail) != *u->ring.cq.khead;
}

/* Completions wait in the kernel until an io_uring_enter with GETEVENTS:
 * those that did not fit the ring (NODROP), and, on a cooperative ring,
 * those whose task work has not run yet (see the top of the file). */
static bool kernel_holds_completions(sp_uring *u)
{
    return IO_URING_READ_ONCE(*u->ring.sq.kflags) &
           (IORING_SQ_CQ_OVERFLOW | IORING_SQ_TASKRUN);
}

/* SQEs prepared that the kernel has not taken yet. */
static bool sq_pending(sp_uring *u)
{
    /* khead moves only inside our own io_uring_enter calls. */
    return u->ring.sq.sqe_tail != *u->ring.sq.khead;
}

/* Hand the prepared SQEs to the kernel and, if `wait`, sleep until a
 * completion arrives or *ts passes (NULL: no limit). Returns the number of
 * SQEs taken, or -errno: -ETIME, -EINTR, or an error of the submission. */
static int ring_enter(spindle_ctx *ctx, sp_uring *u, bool wait,
                      struct __kernel_timespec *ts)
{
    struct io_uring_sq *sq = &u->ring.sq;
    if (sq->sqe_head != sq->sqe_tail) {
        sq->sqe_head = sq->sqe_tail;
        /* Release: the SQE stores come before the tail that publishes
         * them (the kernel reads the tail with acquire). */
        io_uring_smp_store_release(sq->ktail, sq->sqe_tail);
    }
    unsigned to_submit = sq->sqe_tail - *sq->khead;
    bool flush = kernel_holds_completions(u);
    if (!to_submit && !wait && !flush) {
        return 0;
    }
    SP_STAT_INC(ctx, monitor_syscalls);
    if (!wait) {
        return io_uring_enter2(u->ring.ring_fd, to_submit, 0,
                               flush ? IORING_ENTER_GETEVENTS : 0, NULL, 0);
    }
    struct io_uring_getevents_arg arg = { .ts = (uint64_t)(uintptr_t)ts };
    return io_uring_enter2(u->ring.ring_fd, to_submit, 1,
                           IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG,
                           (sigset_t *)(void *)&arg, sizeof(arg));
}

/* The SQ is full: submit what is prepared, except an unfinished link
 * chain at its end (the last SQE links to one not added yet), which the
 * kernel would cut at the submission's end. A chain as long as the whole
 * queue cannot be kept together. */
static void make_room(spindle_ctx *ctx, sp_uring *u)
{
    struct io_uring_sq *sq = &u->ring.sq;
    unsigned unpublished = sq->sqe_tail - sq->sqe_head, keep = 0;
    while (keep < unpublished) {
        const struct io_uring_sqe *s =
            &sq->sqes[(sq->sqe_tail - keep - 1) & sq->ring_mask];
        if (!(s->flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK))) {
            break;
        }
        keep++;
    }
    if (keep == sq->sqe_tail - *sq->khead) {
        keep = 0;
    }
    sq->sqe_tail -= keep;
    ring_enter(ctx, u, false, NULL);
    sq->sqe_tail += keep;
}

struct io_uring_sqe *sp_uring_get_sqe(spindle_ctx *ctx)
{
    sp_uring *u = ctx->uring;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
    if (!sqe) {
        make_room(ctx, u);
        sqe = io_uring_get_sqe(&u->ring);
        if (!sqe) {
            return NULL;
        }
    }
    memset(sqe, 0, sizeof(*sqe));
    return sqe;
}

/* ---- the handler records' requests */

static void release(spindle_ctx *ctx, sp_uring *u, sp_handler *h, bool locked)
{
    if (!locked) {
        sp_lockcnt_lock(&ctx->list_lock);
    }
    u->owned--;
    sp_handler_release(ctx, h, true);
    if (!locked) {
        sp_lockcnt_unlock(&ctx->list_lock);
    }
}

static void mark_recheck(sp_uring *u, sp_handler *h);

static bool arm(spindle_ctx *ctx, sp_uring *u, sp_handler *h, int events)
{
    if ((unsigned)h->fd >= u->seq_cap) {
        unsigned cap = u->seq_cap ? u->seq_cap : 64;
        while (cap <= (unsigned)h->fd) {
            cap *= 2;
        }
        uint32_t *seq = sp_realloc(u->seq, sizeof(*seq) * cap);
        if (!seq) {
            return false; /* stays queued: tried again at the next pass */
        }
        u->seq = seq;
        u->seq_cap = cap;
    }
    struct io_uring_sqe *sqe = sp_uring_get_sqe(ctx);
    if (!sqe) {
        return false;
    }
    /* CQEs from here on are news to this fd. */
    u->seq[h->fd] = io_uring_smp_load_acquire(u->ring.cq.ktail);
    io_uring_prep_poll_multishot(sqe, h->fd, (unsigned)events);
    io_uring_sqe_set_data64(sqe, (uintptr_t)h | SP_RING_TAG_POLL);
    set_state(h, RING_ARMED);
    u->polls_armed++;
    /* An fd that is ready already must not wait for its first CQE: see
     * the top of the file. */
    mark_recheck(u, h);
    return true;
}

/* A new mask for h's armed poll. Its CQE (tagged UPDATE) names h, which
 * stays alive until then (RING_UPDATING). */
static bool update_mask(spindle_ctx *ctx, sp_uring *u, sp_handler *h,
                        int events)
{
    struct io_uring_sqe *sqe = sp_uring_get_sqe(ctx);
    if (!sqe) {
        return false;
    }
    u->updating++;
    /* The new user_data must be 0 unless it is updated too (EINVAL). */
    io_uring_prep_poll_update(sqe, (uintptr_t)h | SP_RING_TAG_POLL, 0,
                              (unsigned)events, IORING_POLL_UPDATE_EVENTS);
    io_uring_sqe_set_data64(sqe, (uintptr_t)h | SP_RING_TAG_UPDATE);
    h->ring_state |= RING_UPDATING;
    return true;
}

static bool disarm(spindle_ctx *ctx, sp_uring *u, sp_handler *h)
{
    struct io_uring_sqe *sqe = sp_uring_get_sqe(ctx);
    if (!sqe) {
        return false;
    }
    /* A cancel, not a POLL_REMOVE: a removal that meets a wake-up of the
     * poll being processed (task work queued from another CPU) fails with
     * -EALREADY and leaves the poll armed, so its last CQE never came and
     * the record stayed REMOVING for good (an nbd-server that toggled its
     * listening socket's interest stopped accepting). A cancel marks the
     * poll and lets whoever owns it end it. Its own completion carries
     * user_data 0 and is dropped; the poll's last CQE (-ECANCELED) ends the
     * record's request. */
    io_uring_prep_cancel64(sqe, (uintptr_t)h | SP_RING_TAG_POLL, 0);
    set_state(h, RING_REMOVING);
    u->removing++;
    return true;
}

/* Lock held. false: no SQE now; the record stays queued. */
static bool apply_one(spindle_ctx *ctx, sp_uring *u, sp_handler *h)
{
    /* The lock orders this load after retire()'s store. */
    if (atomic_load_explicit(&h->deleted, memory_order_relaxed)) {
        if (state(h) == RING_ARMED) {
            return disarm(ctx, u, h);
        }
        if (ring_done_with(h)) {
            release(ctx, u, h, true);
        }
        /* REMOVING: the last CQE releases it; in the re-check set: the
         * set's next pass does; an update in flight: its CQE does. */
        return true;
    }
    if (state(h) == RING_IDLE && h->events && !h->stale && !u->closing) {
        return arm(ctx, u, h, h->events);
    }
    return true;
}

static bool reserve(sp_handler ***arr, unsigned *cap, unsigned n)
{
    if (n <= *cap) {
        return true;
    }
    unsigned c = *cap ? *cap : 16;
    while (c < n) {
        c *= 2;
    }
    sp_handler **a = sp_realloc(*arr, sizeof(*a) * c);
    if (!a) {
        return false;
    }
    *arr = a;
    *cap = c;
    return true;
}

/* Apply the change queue: poll adds and removals go into the SQ. */
static void apply_changes(spindle_ctx *ctx, sp_uring *u)
{
    /* Acquire pairs with the release in enqueue(); the lock orders the
     * rest. A flag seen clear may miss a change being queued right now:
     * its notify brings the loop back. */
    if (!atomic_load_explicit(&u->changes_pending, memory_order_acquire)) {
        return;
    }
    sp_lockcnt_lock(&ctx->list_lock);
    /* Room for every record that may be reported, before any is armed:
     * reporting never allocates. */
    unsigned done = 0;
    if (reserve(&u->recheck, &u->recheck_cap, u->owned) &&
        sp_pollfds_reserve(ctx, u->owned)) {
        for (; done < u->nchanges; done++) {
            sp_handler *h = u->changes[done];
            h->ring_flags &= ~SP_RING_QUEUED; /* apply_one may release h */
            if (!apply_one(ctx, u, h)) {
                h->ring_flags |= SP_RING_QUEUED;
                break;
            }
        }
    }
    memmove(u->changes, u->changes + done,
            sizeof(*u->changes) * (u->nchanges - done));
    u->nchanges -= done;
    atomic_store_explicit(&u->changes_pending, u->nchanges != 0,
                          memory_order_relaxed);
    sp_lockcnt_unlock(&ctx->list_lock);
}

/* Lock held. */
static void enqueue(sp_uring *u, sp_handler *h)
{
    if (h->ring_flags & SP_RING_QUEUED) {
        return;
    }
    h->ring_flags |= SP_RING_QUEUED;
    u->changes[u->nchanges++] = h;
    /* Release: pairs with the acquire in apply_changes(). */
    atomic_store_explicit(&u->changes_pending, true, memory_order_release);
}

static int ring_update(spindle_ctx *ctx, sp_handler *old, sp_handler *new_h)
{
    sp_uring *u = ctx->uring;
    /* The kernel hears of the fd only at the loop's next submission:
     * check now that it is open. */
    if (new_h && fcntl(new_h->fd, F_GETFD) < 0) {
        return -EBADF;
    }
    if (new_h && new_h->events) {
        if (!reserve(&u->changes, &u->changes_cap, u->owned + 1)) {
            return -ENOMEM;
        }
        new_h->ring_flags |= SP_RING_OWNED;
        u->owned++;
        enqueue(u, new_h);
    }
    if (old && (old->ring_flags & SP_RING_OWNED)) {
        enqueue(u, old); /* retire() marks it deleted right after */
    }
    return 0;
}

/* ---- reporting, and the re-check set */

/* Remember to look at h's fd again. Entries that are queued on the ready
 * list are left alone (their handler runs this iteration); the others are
 * ppolled at the set's next pass. */
static void mark_recheck(sp_uring *u, sp_handler *h)
{
    if (!(h->ring_state & RING_RECHECK)) {
        h->ring_state |= RING_RECHECK;
        u->recheck[u->nrecheck++] = h; /* room reserved in apply_changes */
    }
}

/* h's fd showed revents. Queue the handler, and remember to look again
 * (level-triggered); a disabled external handler only waits in the set
 * until it is enabled. */
static void report(spindle_ctx *ctx, sp_uring *u, sp_handler *h, int revents)
{
    if (sp_handler_enabled(ctx, h)) {
        sp_ready_add(ctx, h, revents);
    }
    /* The context's own wake-up handler reads its eventfd empty. */
    if (!h->internal) {
        mark_recheck(u, h);
    }
}

static void mark_stale(spindle_ctx *ctx, sp_uring *u, sp_handler *h)
{
    h->stale = true;
    SP_STAT_INC(ctx, stale_fds);
    if (state(h) == RING_ARMED) {
        disarm(ctx, u, h); /* no SQE: its CQEs are skipped meanwhile */
    }
}

/* Look again, with one ppoll for all, at the fds in the re-check set whose
 * handler is not queued to run (before a sleep, and in every dispatch step
 * after the completions: those reported anew in this iteration are queued
 * and wait for the next). Returns whether one is ready (it is queued). */
static bool recheck(spindle_ctx *ctx, sp_uring *u)
{
    unsigned n = 0, keep = 0;
    for (unsigned i = 0; i < u->nrecheck; i++) {
        sp_handler *h = u->recheck[i];
        bool deleted = atomic_load_explicit(&h->deleted, memory_order_acquire);
        if (deleted || h->stale || state(h) != RING_ARMED) {
            h->ring_state &= ~(RING_RECHECK | RING_CONFIRM);
            if (deleted && ring_done_with(h)) {
                release(ctx, u, h, false);
            }
            continue;
        }
        if (h->queued || !sp_handler_enabled(ctx, h)) {
            u->recheck[keep++] = h;
            continue;
        }
        h->ring_state &= ~RING_RECHECK;
        ctx->pollfds[n] = (struct pollfd){ .fd = h->fd, .events = h->events };
        ctx->pollnodes[n++] = h;
    }
    u->nrecheck = keep;
    if (!n) {
        return false;
    }
    static const struct timespec zero;
    int r = ppoll(ctx->pollfds, n, &zero, NULL);
    SP_STAT_INC(ctx, monitor_syscalls);
    if (r < 0) {
        /* Nothing learnt (EINTR, ENOMEM): keep them for the next pass. */
        for (unsigned i = 0; i < n; i++) {
            mark_recheck(u, ctx->pollnodes[i]);
        }
        return false;
    }
    bool ready = false;
    for (unsigned i = 0; i < n; i++) {
        sp_handler *h = ctx->pollnodes[i];
        bool confirming = h->ring_state & RING_CONFIRM;
        h->ring_state &= ~RING_CONFIRM;
        int revents = ctx->pollfds[i].revents;
        if (!revents) {
            continue;
        }
        if (revents & POLLNVAL) {
            mark_stale(ctx, u, h);
            continue;
        }
        /* Readiness that no consumed CQE stood for (data left unread, or
         * new data whose CQE the kernel's task work has yet to post): the
         * handler runs now, and the CQE that may follow is confirmed, not
         * taken at its word, or its call would find nothing to read. */
        if (!confirming) {
            h->ring_state |= RING_AHEAD;
        }
        report(ctx, u, h, revents);
        ready = true;
    }
    return ready;
}

/* A poll request's last CQE: release a retired record; re-arm a live one
 * whose request the kernel ended (a full CQ, a file that cannot wait) or
 * that was removed for want of interest, if it has interest again. */
static void poll_ended(spindle_ctx *ctx, sp_uring *u, sp_handler *h, int res)
{
    unsigned was = state(h);
    u->polls_armed--;
    u->removing -= was == RING_REMOVING;
    set_state(h, RING_IDLE);
    /* Acquire pairs with retire()'s release: a retired record was queued
     * before it was marked, so SP_RING_QUEUED is seen as it is. */
    if (atomic_load_explicit(&h->deleted, memory_order_acquire)) {
        if (ring_done_with(h)) {
            release(ctx, u, h, false);
        }
        return;
    }
    if (h->stale || u->closing || !h->events) {
        return;
    }
    if (was == RING_ARMED && res < 0 && res != -ECANCELED &&
        res != -ENOMEM && res != -EAGAIN && res != -EBUSY) {
        mark_stale(ctx, u, h); /* an fd the kernel cannot poll */
        return;
    }
    if (!arm(ctx, u, h, h->events)) {
        sp_lockcnt_lock(&ctx->list_lock);
        enqueue(u, h); /* apply_changes retries */
        sp_lockcnt_unlock(&ctx->list_lock);
    }
}

static void poll_completion(spindle_ctx *ctx, sp_uring *u, sp_handler *h,
                            const struct io_uring_cqe *c, uint32_t idx)
{
    bool live = !atomic_load_explicit(&h->deleted, memory_order_acquire) &&
                !h->stale && state(h) == RING_ARMED && !u->closing;
    if (live && c->res > 0) {
        int revents = c->res;
        /* Taken at its word only while busy polling; a hang-up or error,
         * or a CQE that may predate a run of this handler, never: see the
         * top of the file. */
        if (!h->internal &&
            (!ctx->poll_started || (revents & (POLLHUP | POLLERR)) ||
             (h->ring_state & RING_AHEAD) ||
             (int32_t)(idx - u->seq[h->fd]) < 0)) {
            h->ring_state = (uint8_t)((h->ring_state & ~RING_AHEAD) |
                                      RING_CONFIRM);
            mark_recheck(u, h);
        } else {
            report(ctx, u, h, revents);
        }
    }
    if (!(c->flags & IORING_CQE_F_MORE)) {
        poll_ended(ctx, u, h, c->res); /* may release h: last use */
    }
}

/* The CQE of a poll update: -EALREADY means the kernel was posting an event
 * of the poll meanwhile and kept the old mask: send it again. Other
 * failures mean the poll is ending, and its last CQE re-arms it. */
static void update_completion(spindle_ctx *ctx, sp_uring *u, sp_handler *h,
                              int res)
{
    bool resend = res == -EALREADY || (h->ring_state & RING_RESEND);
    h->ring_state &= ~(RING_UPDATING | RING_RESEND);
    u->updating--;
    bool deleted = atomic_load_explicit(&h->deleted, memory_order_acquire);
    if (deleted) {
        if (ring_done_with(h)) {
            release(ctx, u, h, false);
        }
        return;
    }
    if (resend && state(h) == RING_ARMED && !u->closing) {
        update_mask(ctx, u, h, h->events);
        /* The kernel still polls the old mask: readiness under the new one
         * (write interest just turned on, say) is looked at with this
         * iteration's ppoll, not left to the resent update's CQE. */
        mark_recheck(u, h);
    }
}

/* Consume the CQEs present now (not those that arrive meanwhile). */
static bool consume(spindle_ctx *ctx, sp_uring *u, bool call)
{
    struct io_uring_cq *cq = &u->ring.cq;
    bool progress = false;
    unsigned end = io_uring_smp_load_acquire(cq->ktail);
    for (;;) {
        unsigned head = *cq->khead;
        if ((int)(end - head) <= 0) {
            break; /* a nested iteration may have gone past `end` */
        }
        struct io_uring_cqe c = cq->cqes[head & cq->ring_mask];
        /* Release: the copy is taken before the kernel may reuse the
         * slot; and the CQE is ours alone before any callback runs. */
        io_uring_smp_store_release(cq->khead, head + 1);
        void *rec = (void *)(uintptr_t)(c.user_data & ~(uint64_t)SP_RING_TAG_MASK);
        switch (c.user_data & SP_RING_TAG_MASK) {
        case SP_RING_TAG_POLL:
            poll_completion(ctx, u, rec, &c, head);
            break;
        case SP_RING_TAG_UPDATE:
            update_completion(ctx, u, rec, c.res);
            break;
        case SP_RING_TAG_REQ:
            progress |= sp_uring_req_complete(ctx, rec, &c, call);
            break;
        default:
            break; /* the monitor's own bookkeeping */
        }
    }
    return progress;
}

/* Name the handlers whose fd completions are pending to step 5, which
 * adapts their polling windows (polling-windows.c): the completions
 * themselves are consumed only in step 6. A record named by a CQE outlives
 * it (see the top of the file), so the peek reads valid memory. */
static void note_events(spindle_ctx *ctx, sp_uring *u)
{
    struct io_uring_cq *cq = &u->ring.cq;
    unsigned end = io_uring_smp_load_acquire(cq->ktail);
    for (unsigned head = *cq->khead; (int)(end - head) > 0; head++) {
        const struct io_uring_cqe *c = &cq->cqes[head & cq->ring_mask];
        if ((c->user_data & SP_RING_TAG_MASK) == SP_RING_TAG_POLL &&
            c->res > 0) {
            sp_polling_note(ctx, (sp_handler *)(uintptr_t)(
                                     c->user_data & ~(uint64_t)SP_RING_TAG_MASK));
        }
    }
}

/* ---- the monitor's ops */

static void ring_wait(spindle_ctx *ctx, int64_t timeout_ns)
{
    sp_uring *u = ctx->uring;
    apply_changes(ctx, u);
    if (timeout_ns && (ctx->ready || cq_ready(u) || recheck(ctx, u))) {
        timeout_ns = 0; /* something is ready already: do not sleep */
    }
    /* ppoll and epoll_pwait2 sleep at least the thread's timer slack (50 us
     * by default), which lets the kernel batch wake-ups; io_uring's wait
     * applies none, so a loop whose next timer is a microsecond away would
     * go in and out of the kernel without ever sleeping (measured: a
     * million timers over a second cost a whole core on io_uring, 45% on
     * epoll). Honour the slack here too; a program that wants exact short
     * sleeps sets it to 1 ns with prctl(PR_SET_TIMERSLACK), as QEMU does. */
    if (u->slack_ns < 0) {
        int r = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
        u->slack_ns = r < 0 ? 0 : r;
    }
    if (timeout_ns > 0 && timeout_ns < u->slack_ns) {
        timeout_ns = u->slack_ns;
    }
    struct __kernel_timespec ts = { .tv_sec = timeout_ns / 1000000000,
                                    .tv_nsec = timeout_ns % 1000000000 };
    for (int i = 0; i < 8; i++) {
        int r = ring_enter(ctx, u, timeout_ns != 0,
                           timeout_ns < 0 ? NULL : &ts);
        /* A short submission returns without waiting: go again for the
         * rest. Any error ends the wait: -ETIME, -EINTR (spindle_poll may
         * return early on a signal), or a kernel short of memory. */
        if (r < 0 || !sq_pending(u)) {
            break;
        }
    }
    note_events(ctx, u);
}

static bool ring_need_wait(spindle_ctx *ctx)
{
    sp_uring *u = ctx->uring;
    return cq_ready(u) || sq_pending(u) || kernel_holds_completions(u) ||
           atomic_load_explicit(&u->changes_pending, memory_order_relaxed);
}

/* Every round of busy polling: submit what waits (registrations, user
 * requests), then look at the completion ring, all in user space unless
 * there was something to submit. A spin waits for fds in the re-check set
 * to be re-reported for at most RECHECK_GRACE_NS (the default window)
 * after the iteration that ran them: then it ends, as after an event, and
 * the dispatch step re-checks them, so that a handler that left data
 * unread is not kept waiting for a whole (maybe long) window. The clock is
 * read every RECHECK_STRIDE rounds only, and the grace starts at the first
 * of those reads after that iteration (not with a clock read of its own in
 * every dispatch step, which cost each iteration of an fd-serving loop
 * one: 30 ns on the development VM); a spin that finds an event before
 * then reads no clock for it at all. */
#define RECHECK_GRACE_NS SP_POLL_MAX_NS_DEFAULT
#define RECHECK_STRIDE 16

static bool ring_poll(spindle_ctx *ctx)
{
    sp_uring *u = ctx->uring;
    /* Interest changes made by callbacks go out now, not only before the
     * next wait: the spin may run a long window meanwhile. */
    sp_interest_apply(ctx);
    if (atomic_load_explicit(&u->changes_pending, memory_order_relaxed) ||
        sq_pending(u) || kernel_holds_completions(u)) {
        apply_changes(ctx, u);
        ring_enter(ctx, u, false, NULL);
    }
    if (cq_ready(u)) {
        note_events(ctx, u);
        return true;
    }
    if (!u->nrecheck || ++u->rounds % RECHECK_STRIDE) {
        return false;
    }
    int64_t now = sp_now();
    if (!u->recheck_stamp) {
        u->recheck_stamp = now;
        return false;
    }
    return now - u->recheck_stamp > RECHECK_GRACE_NS;
}

static bool ring_dispatch(spindle_ctx *ctx)
{
    sp_uring *u = ctx->uring;
    bool progress = consume(ctx, u, true);
    recheck(ctx, u);
    u->recheck_stamp = 0; /* the grace starts at the spin's next look */
    return progress;
}

static void ring_dispatched(spindle_ctx *ctx, sp_handler *h)
{
    sp_uring *u = ctx->uring;
    /* CQEs for this fd at or past this index were posted after the
     * handler's reads. (An fd never armed has no slot, and no CQE.) */
    if ((unsigned)h->fd < u->seq_cap) {
        u->seq[h->fd] = io_uring_smp_load_acquire(u->ring.cq.ktail);
    }
}

/* Interest changes (handler lock held, loop thread, before a wait). */
static void ring_set_events(spindle_ctx *ctx, sp_handler *h, int events)
{
    sp_uring *u = ctx->uring;
    if (!(h->ring_flags & SP_RING_OWNED) || h->stale) {
        return; /* registered without events: nothing to watch */
    }
    switch (state(h)) {
    case RING_ARMED:
        if (!events) {
            disarm(ctx, u, h); /* its last CQE leaves it idle */
        } else if (h->ring_state & RING_UPDATING) {
            /* One update in flight at a time (its CQE names h): the next
             * goes out with h->events when that one completes. */
            h->ring_state |= RING_RESEND;
        } else {
            update_mask(ctx, u, h, events);
        }
        break;
    case RING_IDLE:
        if (events && !(h->ring_flags & SP_RING_QUEUED)) {
            arm(ctx, u, h, events);
        }
        break;
    default:
        break; /* REMOVING: its last CQE re-arms with h->events */
    }
}

static void ring_destroy(spindle_ctx *ctx)
{
    sp_uring *u = ctx->uring;
    u->closing = true;
    /* No iteration runs: released records are freed at once. Cancel every
     * user request and reap until each has posted its last CQE, so that
     * the kernel writes no buffer of the user's once this returns. Remove
     * every fd poll too and reap its last CQE: a ring closed with a poll
     * still armed is not torn down until the process exits (measured on
     * Linux 6.18: about 150 KiB of kernel memory per context created and
     * freed, which a fuzzer making thousands a second turned into an OOM
     * kill). Retired records still queued get their removal from
     * apply_changes (closing: it arms nothing), live ones here. */
    sp_uring_reqs_cancel(ctx);
    apply_changes(ctx, u);
    for (sp_link *l = sp_list_first(&ctx->handlers); l != &ctx->handlers;
         l = sp_list_next(l)) {
        sp_handler *h = sp_container_of(l, sp_handler, all);
        if ((h->ring_flags & SP_RING_OWNED) && state(h) == RING_ARMED) {
            disarm(ctx, u, h);
        }
    }
    struct __kernel_timespec ts = { .tv_sec = 0, .tv_nsec = 100000000 };
    for (int idle = 0;
         (u->polls_armed || u->updating || u->nreqs) && idle < 50;) {
        int r = ring_enter(ctx, u, !cq_ready(u), &ts);
        idle = r == -ETIME ? idle + 1 : 0;
        consume(ctx, u, false);
    }
    for (unsigned i = 0; i < u->nrecheck; i++) {
        sp_handler *h = u->recheck[i];
        h->ring_state &= ~RING_RECHECK;
        if (atomic_load_explicit(&h->deleted, memory_order_relaxed) &&
            ring_done_with(h)) {
            release(ctx, u, h, false);
        }
    }
    io_uring_queue_exit(&u->ring);
    sp_uring_reqs_destroy(u);
    /* Still queued, or still waiting for a CQE that never came: retired
     * records are not on the handler lists, so free them here. */
    for (unsigned i = 0; i < u->nchanges; i++) {
        if (atomic_load_explicit(&u->changes[i]->deleted,
                                 memory_order_relaxed)) {
            sp_handler *h = u->changes[i];
            free(h->io_poll ? (void *)sp_polled_of(h) : (void *)h);
        }
    }
    free(u->changes);
    free(u->recheck);
    free(u->seq);
    free(u);
    ctx->uring = NULL;
}

/* Embedding (embed.c): the host sleeps on the context's epoll set, which
 * holds only the ring's fd: readable while CQEs wait. Before each host
 * sleep, send what is queued and re-check the fds that may still be ready
 * (as ring_wait does before a sleep); when one is, or a handler is still
 * queued, a no-op request makes the ring readable, so the host does not
 * sleep on work. */
static int ring_embed(spindle_ctx *ctx, bool first)
{
    sp_uring *u = ctx->uring;
    if (first && ctx->epollfd < 0) {
        int epfd = sp_fault_fd() ? -1 : epoll_create1(EPOLL_CLOEXEC);
        if (epfd < 0) {
            return -errno;
        }
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, u->ring.ring_fd, &ev) < 0) {
            int e = -errno;
            close(epfd);
            return e;
        }
        ctx->epollfd = epfd;
    }
    sp_walk_begin(ctx); /* the re-check may queue handlers */
    /* Interest changes too (prepare applies them only after this): they
     * become poll updates that must be submitted before the host sleeps. */
    sp_interest_apply(ctx);
    apply_changes(ctx, u);
    if (!cq_ready(u) && (ctx->ready || recheck(ctx, u))) {
        struct io_uring_sqe *sqe = sp_uring_get_sqe(ctx);
        if (sqe) {
            io_uring_prep_nop(sqe); /* user_data 0: its CQE is dropped */
        }
    }
    ring_enter(ctx, u, false, NULL);
    sp_walk_end(ctx);
    return 0;
}

const sp_fdmon sp_fdmon_io_uring = {
    .name = "io_uring",
    .update = ring_update,
    .wait = ring_wait,
    .set_events = ring_set_events,
    .need_wait = ring_need_wait,
    .poll = ring_poll,
    .dispatch = ring_dispatch,
    .dispatched = ring_dispatched,
    .destroy = ring_destroy,
    .embed = ring_embed,
};

/* What the monitor needs of the kernel: multishot poll requests (5.13,
 * whose other novelty, resource tags, is the feature bit checked), waits
 * with a timeout argument (5.11), no dropped completions, and the
 * opcodes. */
static bool kernel_fits(struct io_uring *ring, unsigned features)
{
    const unsigned need = IORING_FEAT_NODROP | IORING_FEAT_EXT_ARG |
                          IORING_FEAT_RSRC_TAGS;
    if ((features & need) != need) {
        return false;
    }
    struct io_uring_probe *p = io_uring_get_probe_ring(ring);
    if (!p) {
        return false;
    }
    bool ok = io_uring_opcode_supported(p, IORING_OP_POLL_ADD) &&
              io_uring_opcode_supported(p, IORING_OP_POLL_REMOVE) &&
              io_uring_opcode_supported(p, IORING_OP_ASYNC_CANCEL);
    io_uring_free_probe(p);
    return ok;
}

bool sp_fdmon_io_uring_enable(spindle_ctx *ctx)
{
    if (sp_fault_fails(SPINDLE_FAULT_IO_URING) || sp_fault_fd()) {
        return false;
    }
    sp_uring *u = sp_calloc(1, sizeof(*u));
    if (!u) {
        return false;
    }
    u->slack_ns = -1;
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    /* SUBMIT_ALL (5.18): a bad SQE does not hold back those after it.
     * Cooperative task work without busy polling: see the top of the
     * file. */
    p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP |
              IORING_SETUP_SUBMIT_ALL;
    if (ctx->uring_coop) {
        p.flags |= IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    }
    p.cq_entries = CQ_ENTRIES;
    int r = io_uring_queue_init_params(SQ_ENTRIES, &u->ring, &p);
    if (r == -EINVAL) {
        memset(&p, 0, sizeof(p));
        p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP;
        p.cq_entries = CQ_ENTRIES;
        r = io_uring_queue_init_params(SQ_ENTRIES, &u->ring, &p);
    }
    if (r < 0) {
        free(u); /* ENOSYS, EPERM, ENOMEM: the caller falls back */
        return false;
    }
    if (!kernel_fits(&u->ring, p.features)) {
        io_uring_queue_exit(&u->ring);
        free(u);
        return false;
    }
    atomic_init(&u->changes_pending, false);
    ctx->uring = u;
    atomic_store_explicit(&ctx->fdmon, &sp_fdmon_io_uring,
                          memory_order_release);
    return true;
}
