/* The context's layout and the functions the files of src/ share.
 * SPDX-License-Identifier: MIT
 *
 * One section per concept, in the order of the iteration. Fields are
 * grouped by which thread may touch them; every shared field is an atomic
 * or is protected by the lock its comment names.
 */
#ifndef SPINDLE_CTX_H
#define SPINDLE_CTX_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "spindle.h"
#include "spindle-config.h"
#include "fault.h"
#include "fdmon.h"
#include "list.h"
#include "lockcnt.h"
#include "timer-wheel.h"

#define SP_EPOLL_THRESHOLD 64           /* user fds before AUTO picks epoll */
#define SP_POLL_MAX_NS_DEFAULT 32768
#define SP_POLL_GROW_DEFAULT 2
#define SP_POLL_START_NS 4000
/* A handler whose window has not adapted for this long leaves the spin
 * (polling-windows.c explains) until its next event. */
#define SP_POLL_IDLE_NS 1000000000      /* 1 s */
#define SP_IDLE_BH_TIMEOUT_NS 10000000  /* 10 ms */
#define SP_DIRTY_END (-1)               /* ctx->dirty_next: last on the list */

/* ---- clock.c */

static inline int64_t sp_clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The one time source for the loop's own measurements. */
static inline int64_t sp_now(void)
{
    return sp_clock_ns(CLOCK_MONOTONIC);
}

/* ---- notifier.c */

struct spindle_notifier {
    int rfd; /* waited on; readable while set */
    int wfd; /* written by set; the same fd as rfd for an eventfd */
    /* When it was first set since the last clear (0: not since), so that a
     * loop woken by it knows when its event came (polling-windows.c). */
    _Atomic int64_t set_ns;
};

int sp_notifier_init(struct spindle_notifier *n, bool active);
void sp_notifier_destroy(struct spindle_notifier *n);

/* ---- handlers.c */

/* A registration. Records are replaced, never edited, while other threads
 * may read them: an update installs a new record and retires the old. The
 * one exception is the interest (spindle_set_fd_interest): `interest` is
 * the loop thread's own, and `events` changes only under list_lock.
 * Kept small (72 bytes) because a server may register tens of thousands:
 * what only busy-polled handlers need lives in sp_polled_handler. */
struct sp_handler {
    sp_link all;  /* every live handler, walked by the poll monitor; once
                   * retired, all.prev chains it on ctx->zombies */
    sp_handler *ready_next; /* loop thread: ctx->ready, while `queued` */
    spindle_io_fn *io_read;
    spindle_io_fn *io_write;
    spindle_poll_fn *io_poll; /* non-NULL: this is a sp_polled_handler */
    void *opaque;
    int fd;
    short revents;     /* loop thread: what the last wait reported */
    uint8_t events;    /* POLLIN and/or POLLOUT as the monitor was last
                        * told (its kernel set); list_lock */
    uint8_t interest;  /* what the loop waits for and dispatches: equal to
                        * `events` but for a change not yet applied (fd on
                        * ctx's dirty list). Written by the loop thread
                        * under list_lock, read by the loop thread */
    atomic_bool deleted;
    bool is_external;
    bool internal;     /* the context's own wake-up: never progress */
    bool stale;        /* loop thread: found closed, no longer waited on */
    bool queued;       /* loop thread: on ctx->ready */
    /* The io_uring monitor's bookkeeping (fdmon-io_uring.c), in two
     * bytes since they are written under different rules. */
    uint8_t ring_flags; /* list_lock: SP_RING_OWNED, SP_RING_QUEUED */
    uint8_t ring_state; /* loop thread: fdmon-io_uring.c's state bits */
};
#define SP_RING_OWNED 1  /* the ring frees it, not retire() */
#define SP_RING_QUEUED 2 /* on the ring's change queue */
_Static_assert(sizeof(sp_handler) <= 72, "a handler record fits 80-byte "
               "malloc chunks: see the memory row of make bench");

typedef struct sp_polled_handler {
    sp_handler h;
    sp_link polled;            /* in ctx->polled, or in ctx->polled_idle
                                * while idle (polling-windows.c); list_lock */
    spindle_io_fn *poll_begin; /* changed in place by spindle_set_fd_poll(),
                                * under the lock, on the loop thread only */
    spindle_io_fn *poll_end;
    /* An event notifier's registration: when the notifier was set tells
     * when an event that woke the loop came. NULL for a plain fd. */
    struct spindle_notifier *notifier;
    /* Its polling window. Written by the loop thread, read by others under
     * list_lock; it belongs to the fd, so a replacement record takes it
     * over. */
    _Atomic int64_t poll_ns;
    /* Loop thread only. */
    int64_t adapted_ns;        /* when the window last adapted; 0: not yet */
    uint64_t event_serial;     /* the iteration of its last event */
    uint64_t adapted_serial;   /* the iteration that last adapted it */
    struct sp_polled_handler *move_next; /* step 5: changing lists */
    atomic_bool poll_started;  /* poll_begin ran, poll_end not yet */
    bool in_io_poll;           /* its io_poll is running: nested loops
                                * leave it out */
    bool idle;                 /* on ctx->polled_idle (or, for the wake-up
                                * handler, its window does not count) */
} sp_polled_handler;

static inline sp_polled_handler *sp_polled_of(sp_handler *h)
{
    return sp_container_of(h, sp_polled_handler, h);
}

/* Queue h on the context's ready list (loop thread, from a monitor's
 * wait()). One list serves all nesting levels: a nested iteration dispatches
 * what an outer one had queued, so a handler runs once, and a nested loop
 * waiting for it cannot hang. */
void sp_ready_add(spindle_ctx *ctx, sp_handler *h, int revents);

void sp_handlers_init(spindle_ctx *ctx);
void sp_handlers_destroy(spindle_ctx *ctx);
/* notifier: the event notifier whose fd this is (NULL for a plain fd);
 * internal: the context's own wake-up handler. */
int sp_handler_set(spindle_ctx *ctx, int fd, bool is_external,
                   spindle_io_fn *io_read, spindle_io_fn *io_write,
                   spindle_poll_fn *io_poll, void *opaque,
                   struct spindle_notifier *notifier, bool internal);
/* Whether the loop may call h now (inline, below the context). */
static inline bool sp_handler_enabled(spindle_ctx *ctx, const sp_handler *h);
bool sp_handlers_dispatch(spindle_ctx *ctx);
/* Tell the monitor about the interest changes made since the last call
 * (spindle_set_fd_interest): at most one kernel call per fd, none for an fd
 * whose interest ended where it started. Loop thread, before every wait(),
 * so that a wait never sees an fd on the dirty list. */
void sp_interest_apply(spindle_ctx *ctx);
/* Whether some live handler has no io_poll, so that busy polling cannot
 * see every event: the need_wait() of the poll and epoll monitors. */
bool sp_handlers_unpolled(spindle_ctx *ctx);
/* Free a retired record that the io_uring monitor owned, once no walker
 * can still stand on it (now if no iteration runs). Takes the lock unless
 * `locked`. */
void sp_handler_release(spindle_ctx *ctx, sp_handler *h, bool locked);
/* Bracket every walk of the lists (lockcnt.h). */
void sp_walk_begin(spindle_ctx *ctx);
void sp_walk_end(spindle_ctx *ctx);

/* ---- notify.c */

/* The notifier's half of the protocol (N2 to N4) for a wake-up source with
 * a doorbell fd of its own: sets `notified` and returns true if the loop
 * has announced a sleep, in which case the caller must ring its doorbell
 * (an fd the loop waits on). spindle_notify() is this plus the context's
 * own doorbell; the thread pool rings its completion eventfd instead. */
bool sp_notify_request(spindle_ctx *ctx);
bool sp_notify_announce(spindle_ctx *ctx); /* false: a wake-up is pending */
void sp_notify_withdraw(spindle_ctx *ctx);
/* Returns whether spindle_notify() was called since the last accept. */
bool sp_notify_accept(spindle_ctx *ctx);
void sp_notify_wake_read(void *opaque);
bool sp_notify_wake_poll(void *opaque);
/* spindle_notify(), skipped when the caller is the thread inside this
 * context's iteration: that thread re-reads everything before it sleeps. */
void sp_notify_remote(spindle_ctx *ctx);
/* This thread's identity, as stored in ctx->owner: the address of a
 * thread-local (notify.c). initial-exec: the library is loaded with the
 * program, and the default model would cost a __tls_get_addr call on
 * every spindle_poll and every timer arm. Inline, as timer arms ask. */
extern _Thread_local char sp_thread_tag __attribute__((tls_model("initial-exec")));
static inline uintptr_t sp_thread_id(void)
{
    return (uintptr_t)&sp_thread_tag;
}
/* ctx->owner while a thread outside any iteration is inside one timer
 * call (timer.c): never a thread's identity, which is an address. One word
 * for both holders, so that an iteration takes the context and its timers
 * with one compare-and-swap. */
#define SP_OWNER_TIMER_CALL ((uintptr_t)1)
/* Waiting for a holder that is about to let go: pause, then yield. */
void sp_backoff(unsigned spins);
/* Whether the calling thread is inside an iteration of ctx. */
bool sp_on_loop_thread(const spindle_ctx *ctx);

/* ---- polling.c (the spin) and polling-windows.c (step 5) */

/* Handler events an iteration notes for step 5 before it walks them all. */
#define SP_WAIT_EVENTS 8

/* What one iteration's wait teaches the windows (step 5). */
typedef struct sp_wait_info {
    struct sp_wait_info *outer; /* of the iteration this one nests in */
    uint64_t serial;    /* this iteration: marks its handler events */
    bool adapt;         /* it may wait, so it adapts the windows */
    bool slept;         /* it announced a sleep and waited in the kernel */
    bool events;        /* some handler event ended the wait */
    bool overflow;      /* more polled handlers had events than fit */
    bool cut;           /* the monitor ended the spin with no event named
                         * (io_uring, to re-check fds): nothing to learn */
    unsigned nevents;
    struct sp_polled_handler *event[SP_WAIT_EVENTS];
    int64_t start;      /* when the wait started (adapt only): the first
                         * clock read, after a first round of io_poll calls
                         * that found nothing; 0 until then */
    int64_t hit_ns;     /* when a spin that an event ended stopped; 0: none */
    int64_t unwaited_ns; /* of the time since, what was not waiting: work
                          * (io_poll rounds that made progress, poll_begin
                          * and poll_end) and time the thread did not run */
} sp_wait_info;

/* Before step 2: from here, handler events are marked as this
 * iteration's. timeout: step 1's. */
void sp_polling_begin(spindle_ctx *ctx, sp_wait_info *w, int64_t timeout);
/* Step 2. *timeout is updated: 0 after any hit, else reduced by the time
 * spun. */
bool sp_polling_try(spindle_ctx *ctx, sp_wait_info *w, int64_t *timeout);
/* Before a kernel wait with a non-zero timeout: leave the busy-polling
 * state and check every io_poll once more. */
bool sp_polling_leave(spindle_ctx *ctx, sp_wait_info *w, int64_t *timeout);
/* Step 5, after the wait: adapt the windows of the handlers whose events
 * ended it (woken: the context's own wake-up did), or of every handler if
 * none did. Ends what sp_polling_begin() started. */
void sp_polling_adapt(spindle_ctx *ctx, sp_wait_info *w, bool woken);

/* ---- bh.c */

typedef struct sp_bh_slice sp_bh_slice;

enum sp_bh_state { SP_BH_NONE, SP_BH_IDLE_ONLY, SP_BH_BUSY };
enum sp_bh_state sp_bh_scan(spindle_ctx *ctx);
/* A bottom half that belongs to a part of the library rather than to the
 * user: any thread may create it (it is not on the context's list of BHs),
 * and its owner deletes it with spindle_bh_delete() before the context is
 * freed. NULL + errno ENOMEM. */
spindle_bh *sp_bh_new_detached(spindle_ctx *ctx, spindle_io_fn *cb,
                               void *opaque);
bool sp_bh_poll(spindle_ctx *ctx);
void sp_bh_destroy_all(spindle_ctx *ctx);

/* ---- timer.c, timer-wheel.c */

typedef struct sp_timer_slab sp_timer_slab;

/* One clock's timers. The wheel and the slabs belong to whoever holds the
 * context's timers (timer.c); wake_at is read by any thread. */
typedef struct sp_timer_clock {
    sp_wheel wheel;
    spindle_ctx *ctx;
    spindle_clock clock;
    sp_timer_slab *slabs;    /* where this clock's timers live */
    spindle_timer *free;     /* freed timers, for the next spindle_timer_new */
    /* The deadline the loop last computed its timeout from (INT64_MAX:
     * none; INT64_MIN: never computed): another thread asking for an
     * earlier one wakes it. */
    _Atomic int64_t wake_at;
} sp_timer_clock;

int sp_timers_init(spindle_ctx *ctx);
void sp_timers_destroy(spindle_ctx *ctx);
bool sp_timers_run(spindle_ctx *ctx);
/* ns to the earliest deadline, -1: none armed. With `exact` false it may
 * be shorter (never longer) when that saves a scan (timer-wheel.c). */
int64_t sp_timers_timeout(spindle_ctx *ctx, bool exact);

/* ---- embed.c */

/* Embedding in a host loop: the host sleeps on the context's epoll set
 * (ctx->epollfd). Loop thread, but for the fields marked otherwise. */
typedef struct sp_embed {
    bool active;      /* list_lock: spindle_get_fd/prepare has run */
    bool ext_out;     /* list_lock: external fds are out of the set */
    unsigned retry_gen; /* poll monitor: when refused fds were last tried */
    atomic_bool incomplete; /* a handler's fd is not in the set (refused) */
} sp_embed;

/* Whether h's fd stays out of the embedding set for now (a disabled
 * external handler). Handler lock held. */
static inline bool sp_embed_keeps_out(const spindle_ctx *ctx,
                                      const sp_handler *h);
/* spindle_enable_external brought the count to zero: put the external fds
 * back into the set (any thread). */
void sp_embed_external_enabled(spindle_ctx *ctx);

/* ---- pool.c */

typedef struct sp_pool sp_pool;

/* Stop the workers (waiting for running work functions), drop queued work
 * without calling done, and free the pool: first thing in ctx_free. */
void sp_pool_destroy(spindle_ctx *ctx);
/* Worker threads alive now, and jobs waiting for one (statistics). */
void sp_pool_counts(spindle_ctx *ctx, uint64_t *workers, uint64_t *queued);

/* ---- thread.c */

/* Start a thread of the library's (a worker, a loop thread): all signals
 * blocked, named `name`. 0 or a negative errno. */
int sp_thread_start(pthread_t *tid, void *(*fn)(void *), void *arg,
                    const char *name);

/* ---- the context (ctx.c) */

/* spindle_compute_timeout(). For the loop's own wait (`exact` false), the
 * timers may answer early, never late, rather than scan a bucket of far
 * timers on every iteration (timer-wheel.c). */
int64_t sp_compute_timeout(spindle_ctx *ctx, bool exact);

/* One thread at a time runs the iteration; the same thread may nest.
 * false: another thread is inside it. */
bool sp_loop_enter(spindle_ctx *ctx);
void sp_loop_leave(spindle_ctx *ctx);
/* One iteration (SPEC section 2), inside sp_loop_enter/leave. `drain`:
 * the caller is a host loop that has already waited on the embedding set
 * (embed.c), so the back-end is always asked for ready fds, without
 * blocking, even when busy polling could see every event source. */
bool sp_iterate(spindle_ctx *ctx, bool blocking, bool drain);

/* Counters are written by the loop thread only; a relaxed store keeps
 * readers on other threads free of torn values without an atomic add. */
#define SP_STAT_INC(ctx, field)                                          \
    atomic_store_explicit(&(ctx)->field, atomic_load_explicit(           \
        &(ctx)->field, memory_order_relaxed) + 1, memory_order_relaxed)

struct spindle_ctx {
    /* Which thread runs the iteration (the address of a thread-local), or
     * SP_OWNER_TIMER_CALL, and how deeply the iteration is nested. */
    _Atomic uintptr_t owner;
    unsigned depth;

    /* Notify protocol (notify.c, docs/notify-protocol.md). */
    atomic_bool notified;
    atomic_bool notify_me;
    struct spindle_notifier wake;

    /* Handlers (handlers.c). Lists and table change under list_lock. */
    sp_lockcnt list_lock;
    sp_link handlers;
    sp_link polled;         /* handlers with an io_poll that spin */
    sp_link polled_idle;    /* ... and those left out of the spin (idle) */
    struct sp_polled_handler *wake_handler; /* the context's own */
    sp_handler **fd_table;  /* list_lock */
    /* The dirty list: fds whose interest changed since the monitor was
     * last told, chained through a table beside fd_table (list_lock):
     * dirty_next[fd] is 0 (not listed), SP_DIRTY_END, or the next fd + 1.
     * Kept by fd rather than by record, so a record that is replaced or
     * removed meanwhile needs no unlinking. dirty_head is written under
     * list_lock by the loop thread, the only thread that reads it. */
    int *dirty_next;
    int dirty_head;         /* -1: empty */
    int fd_table_size;      /* list_lock */
    unsigned user_fds;      /* list_lock */
    /* Bumped (under list_lock) by every registration change, so that the
     * embedding set can tell when its copy of the handler set is stale. */
    atomic_uint handler_gen;
    atomic_int poll_disable_cnt; /* live handlers without io_poll */
    _Atomic(sp_handler *) zombies;
    sp_handler *ready;      /* loop thread: found ready, not dispatched */
    atomic_uint external_disable_cnt;

    /* The fd monitor; replaced under list_lock, read by the loop. */
    _Atomic(const sp_fdmon *) fdmon;
    bool epoll_auto;        /* list_lock: AUTO may still switch to epoll */
    int epollfd;            /* -1 until epoll is set up */
    struct pollfd *pollfds; /* loop thread: the poll monitor's scratch */
    sp_handler **pollnodes;
    unsigned pollcap;

    /* The io_uring monitor's state (fdmon-io_uring.c); NULL on poll and
     * epoll. Set at creation only. */
    struct sp_uring *uring;
    bool uring_coop;           /* a cooperative ring (spindle_uring_mode) */

    /* Adaptive busy polling (polling*.c). Loop thread, but for poll_ns,
     * which any thread may read. */
    _Atomic int64_t poll_ns;   /* the largest window of the spinning
                                * handlers: how long the loop spins */
    int64_t poll_max_ns, poll_grow, poll_shrink;
    int64_t spin_yield_ns;      /* spindle_options.spin_yield_ns; 0: never */
    bool poll_started;
    bool poll_shared;          /* $SPINDLE_POLL_WINDOW=shared: every wait
                                * adapts every window (the old rule) */
    sp_wait_info *wait;        /* the running iteration's, for marking the
                                * handler events of its wait */
    int64_t poll_scan_ns;      /* when step 5 next looks at every handler */
    int64_t clock_ns;          /* the loop's last clock read (polling*.c) */
    unsigned clock_skips;      /* iterations that did not read it */
    atomic_bool poll_rescan;   /* ... or at once: a handler with an io_poll
                                * was added or removed */

    /* Bottom halves (bh.c). */
    _Atomic(spindle_bh *) bh_stack; /* scheduled, newest first; any thread */
    atomic_uint bh_epoch;           /* batches taken; written by the loop */
    sp_bh_slice *bh_slices;         /* loop thread: batches being run */
    spindle_bh *bh_all;             /* loop thread: every non-oneshot BH */

    /* Timers (timer.c). The clocks and timer_seq belong to whoever holds
     * `owner`: the thread running the iteration, or a thread that takes it
     * for one call while none runs (SP_OWNER_TIMER_CALL). Other threads
     * queue their requests on timer_queue (a stack of timers, linked by
     * qnext). */
    uint32_t timer_seq;
    _Atomic(spindle_timer *) timer_queue;
    _Atomic uint32_t timer_tickets;
    sp_timer_clock timers[2];

    /* Embedding in a host loop (embed.c). */
    sp_embed embed;

    /* The thread pool (pool.c): created at first use under pool_lock,
     * then read without it. */
    _Atomic(sp_pool *) pool;
    pthread_mutex_t pool_lock;

    /* Statistics: loop thread writes (SP_STAT_INC). */
    _Atomic uint64_t iterations, kernel_waits, blocking_waits;
    _Atomic uint64_t poll_hits, poll_misses, stale_fds, interest_updates;
    _Atomic uint64_t monitor_syscalls, poll_stalls, poll_yields;
};

static inline bool sp_embed_keeps_out(const spindle_ctx *ctx,
                                      const sp_handler *h)
{
    return h && h->is_external && ctx->embed.ext_out;
}

/* ---- inline helpers that need the context */

static inline bool sp_handler_enabled(spindle_ctx *ctx, const sp_handler *h)
{
    return !atomic_load_explicit(&h->deleted, memory_order_relaxed) &&
           (!h->is_external ||
            !atomic_load_explicit(&ctx->external_disable_cnt,
                                  memory_order_relaxed));
}

/* Note an event of p (an io_poll hit, its fd found ready, the wake-up) in
 * the running iteration w, for step 5 (polling-windows.c). */
static inline void sp_polling_mark(sp_wait_info *w, sp_polled_handler *p)
{
    w->events = true;
    if (p->event_serial == w->serial) {
        return;
    }
    p->event_serial = w->serial;
    if (w->nevents < SP_WAIT_EVENTS) {
        w->event[w->nevents++] = p;
    } else {
        w->overflow = true;
    }
}

/* A monitor found h's fd ready: note it for step 5, which adapts h's
 * polling window. A handler without io_poll has none: on a monitor that
 * busy polling sees every fd through (io_uring), the context's own window,
 * its wake-up handler's, stands for such handlers; elsewhere their events
 * teach no window. Outside steps 2 to 4 (ctx->wait is then another
 * iteration's, or none) the event teaches nothing. */
static inline void sp_polling_note(spindle_ctx *ctx, sp_handler *h)
{
    if (!ctx->wait) {
        return;
    }
    if (h->io_poll) {
        sp_polling_mark(ctx->wait, sp_container_of(h, sp_polled_handler, h));
    } else if (atomic_load_explicit(&ctx->fdmon, memory_order_relaxed)
                   ->poll) {
        sp_polling_mark(ctx->wait, ctx->wake_handler);
    } else {
        ctx->wait->events = true;
    }
}

#endif
