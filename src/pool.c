/* The thread pool: blocking work on worker threads, done on the loop thread.
 * SPDX-License-Identifier: MIT
 *
 * Submission. A job is a 64-byte record, taken from a free list or
 * allocated, queued FIFO under the pool's mutex. The submitter wakes a
 * sleeping worker (a condition variable) or starts a new one when no idle
 * worker will take the job and fewer than max_workers run: workers start
 * lazily, when work finds none idle.
 *
 * Completion. The worker pushes the finished record on a lock-free stack and
 * then plays the notifier's part of the notify protocol
 * (sp_notify_request): it rings the pool's eventfd only if the loop has
 * announced a sleep. The loop takes completions in the pool's handler: its
 * io_poll (checked on every spin and once in every iteration, so a loop
 * that is busy polling or running pays no system call per completion) and
 * its io_read (the eventfd, after a sleep). Like any io_poll handler, the
 * pool is then one more event source of the busy-polling loop.
 *
 * Workers spin. A worker that runs out of work spins for up to the loop's
 * current polling window before it sleeps: a loop that submits jobs back to
 * back (done submitting the next one) hands each over to a spinning worker
 * through shared memory, instead of a futex wake-up that costs a sleeping
 * vCPU tens of microseconds. An idle loop has shrunk its window to zero, so
 * its workers go straight to sleep. One worker spins at a time: it is
 * enough to catch the next job, and on a small machine more spinners would
 * take the CPUs that the submitter and the loop need.
 *
 * Delivery and nesting. done callbacks may run nested iterations, to wait
 * for another job, say. The batch being delivered is therefore kept on the
 * pool, not on the C stack, so a nested delivery carries on with it; and
 * since a nested iteration need not call an io_poll that is running
 * further up, the pool has a bottom half too, which nested iterations
 * always run: it is scheduled while a delivery has more to do, and by
 * workers that complete while one is under way (`delivering`, a Dekker pair
 * with the completion stack, below). When the outermost delivery ends it
 * cancels the bottom half and looks at the stack once more.
 *
 * "A later iteration": a job that a callback submits and that a fast worker
 * finishes while that same iteration is still running is held back until
 * the next one (records carry the iteration number of their submission).
 *
 * Idle workers above min_workers exit after SPINDLE_POOL_IDLE_MS; they
 * leave their thread handle on a list, joined at the next start of a
 * worker or when the pool is freed, so no thread is ever left unjoined.
 *
 * Freeing the context: queued jobs are dropped without their done (the
 * context, and so the loop that would run done, is going away), running
 * work functions are waited for (they may still use the context), then
 * everything is freed. No done runs after spindle_ctx_free starts.
 */
#include "ctx.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define SP_POOL_MAX_DEFAULT 64
/* Recycled records kept: enough for a burst, bounded so that one burst
 * does not pin its memory for good. */
#define SP_POOL_FREE_MAX 1024
/* Spinning workers read the clock every this many checks of the queue. */
#define SP_POOL_SPIN_STRIDE 64

/* Changed under pool->lock. A job leaves QUEUED once; after that it is
 * only delivered, so nothing needs to know whether it still runs. */
enum work_state { WORK_QUEUED, WORK_STARTED, WORK_CANCELLED };

struct spindle_work {
    spindle_work *next;  /* queue, completion stack, delivery or free list */
    spindle_work *prev;  /* queue only */
    spindle_work_fn *fn;
    spindle_done_fn *done;
    void *arg;
    sp_pool *pool;
    uint64_t epoch;      /* ctx->iterations when submitted */
    int ret;
    int state;           /* enum work_state */
};

typedef struct sp_worker {
    pthread_t tid;
    sp_pool *pool;
    struct sp_worker *next; /* on pool->exited, once it has left */
} sp_worker;

struct sp_pool {
    spindle_ctx *ctx;

    /* Submission side, under lock. */
    pthread_mutex_t lock;
    pthread_cond_t work_cond;  /* idle workers sleep here */
    pthread_cond_t exit_cond;  /* the pool's destruction waits here */
    spindle_work *head, *tail; /* the queue */
    atomic_uint queued;        /* its length; spinning workers read it */
    spindle_work *free_list;   /* recycled records */
    unsigned nfree;
    int min_workers, max_workers;
    int nworkers;              /* started and not yet left */
    /* Who will take a queued job without a new worker being started: */
    int spinning;              /* spinning for work without the lock */
    int starting;              /* started, not yet looking at the queue */
    int woken;                 /* signalled, not yet awake */
    int idle;                  /* asleep on work_cond, not yet signalled */
    sp_worker *exited;         /* left, not joined yet */
    bool stopping;

    /* The three groups of fields are written by different threads at
     * different times: 64 bytes between them keep them off each other's
     * cache lines, so that a worker's push does not take the line that a
     * submitter is locking, nor the loop's private fields. */
    char pad1[64];

    /* Completion side: workers and the loop. */
    _Atomic(spindle_work *) done_stack; /* finished, newest first */
    atomic_uint delivering; /* nesting depth of deliveries (loop writes) */
    atomic_bool rung;         /* doorbell written, not yet drained */

    char pad2[64];

    /* The loop's own. */
    spindle_work *pending, *pending_tail; /* taken, not delivered */
    spindle_work *loop_free;  /* recycled, for loop-thread submits */
    unsigned loop_nfree;
    struct spindle_notifier doorbell;
    spindle_bh *bh;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* ---- completion (any thread) */

static void complete(sp_pool *p, spindle_work *w)
{
    spindle_work *head = atomic_load_explicit(&p->done_stack,
                                              memory_order_relaxed);
    do {
        w->next = head;
        /* seq_cst: publishes the record (and ret) to the loop's exchange
         * in deliver(), and is ordered before the load of `delivering`
         * below: the Dekker pair with deliver()'s store of it. */
    } while (!atomic_compare_exchange_weak_explicit(
        &p->done_stack, &head, w, memory_order_seq_cst,
        memory_order_relaxed));

    if (atomic_load_explicit(&p->delivering, memory_order_seq_cst)) {
        /* A delivery is under way: it, or a nested iteration inside it,
         * runs the bottom half (which notifies if the loop sleeps). */
        spindle_bh_schedule(p->bh);
    } else if (sp_notify_request(p->ctx) &&
               !atomic_exchange_explicit(&p->rung, true,
                                         memory_order_seq_cst)) {
        /* One write per wake-up, however many workers finish meanwhile;
         * pool_read explains why a skipped write loses nothing. */
        spindle_notifier_set(&p->doorbell);
    }
}

/* ---- delivery (loop thread) */

static spindle_work *reverse(spindle_work *w)
{
    spindle_work *out = NULL;
    while (w) {
        spindle_work *next = w->next;
        w->next = out;
        out = w;
        w = next;
    }
    return out;
}

/* Keep a delivered record for the next submission: in the loop's own cache
 * (no lock) while it has room, else on *spill for recycle_spill(). */
static void recycle(sp_pool *p, spindle_work *w, spindle_work **spill)
{
    if (p->loop_nfree < SP_POOL_FREE_MAX) {
        w->next = p->loop_free;
        p->loop_free = w;
        p->loop_nfree++;
    } else {
        w->next = *spill;
        *spill = w;
    }
}

/* Give what the loop's cache had no room for to other submitters (one lock
 * per delivery), and free what the shared list has no room for either. */
static void recycle_spill(sp_pool *p, spindle_work *spill)
{
    if (!spill) {
        return;
    }
    pthread_mutex_lock(&p->lock);
    while (spill && p->nfree < SP_POOL_FREE_MAX) {
        spindle_work *next = spill->next;
        spill->next = p->free_list;
        p->free_list = spill;
        p->nfree++;
        spill = next;
    }
    pthread_mutex_unlock(&p->lock);
    while (spill) {
        spindle_work *next = spill->next;
        free(spill);
        spill = next;
    }
}

static bool deliver(sp_pool *p)
{
    if (!atomic_load_explicit(&p->done_stack, memory_order_relaxed) &&
        !p->pending) {
        return false; /* the idle case: one load */
    }
    unsigned depth = atomic_load_explicit(&p->delivering,
                                          memory_order_relaxed);
    /* seq_cst store, then the exchange: pairs with complete(). A worker
     * whose push the exchange misses sees `delivering` and schedules the
     * bottom half. */
    atomic_store_explicit(&p->delivering, depth + 1, memory_order_seq_cst);
    spindle_work *batch = reverse(atomic_exchange_explicit(
        &p->done_stack, NULL, memory_order_seq_cst));
    if (batch) {
        if (p->pending) {
            p->pending_tail->next = batch;
        } else {
            p->pending = batch;
        }
        while (batch->next) {
            batch = batch->next;
        }
        p->pending_tail = batch;
    }

    uint64_t now = atomic_load_explicit(&p->ctx->iterations,
                                        memory_order_relaxed);
    spindle_work *later = NULL, *later_tail = NULL, *spill = NULL;
    bool progress = false;
    spindle_work *w;
    while ((w = p->pending) != NULL) {
        p->pending = w->next;
        if (w->epoch == now) {
            /* Submitted in this very iteration: the next one runs it. */
            w->next = NULL;
            if (later_tail) {
                later_tail->next = w;
            } else {
                later = w;
            }
            later_tail = w;
            continue;
        }
        if (p->pending) {
            /* If done runs a nested loop, it delivers the rest. */
            spindle_bh_schedule(p->bh);
        }
        spindle_done_fn *done = w->done;
        void *arg = w->arg;
        int ret = w->ret;
        /* Recycled before done runs, so a done that submits the next job
         * (the common chain) reuses this record. */
        recycle(p, w, &spill);
        if (done) {
            done(arg, ret);
        }
        progress = true;
    }
    if (later) {
        later_tail->next = NULL;
        p->pending = later;
        p->pending_tail = later_tail;
    }
    recycle_spill(p, spill);

    atomic_store_explicit(&p->delivering, depth, memory_order_seq_cst);
    if (depth == 0) {
        spindle_bh_cancel(p->bh);
        /* After the store above (seq_cst): a worker that saw `delivering`
         * and whose schedule the cancel undid pushed before this load. */
        if (p->pending ||
            atomic_load_explicit(&p->done_stack, memory_order_seq_cst)) {
            spindle_bh_schedule(p->bh);
        }
    }
    return progress;
}

static bool pool_poll(void *opaque)
{
    return deliver(opaque);
}

static void pool_read(void *opaque)
{
    sp_pool *p = opaque;
    /* Drain, then clear `rung` (seq_cst), then take the stack (seq_cst, in
     * deliver): a worker whose exchange in complete() still saw `rung` set
     * came before the clear, so its push came before the take; one that
     * saw it clear writes the doorbell again. (Clearing before the drain
     * could drain that new write and leave `rung` set on an empty doorbell,
     * and every later worker would skip its write: a lost wake-up.) */
    spindle_notifier_test_and_clear(&p->doorbell);
    atomic_store_explicit(&p->rung, false, memory_order_seq_cst);
    deliver(p);
}

static void pool_bh(void *opaque)
{
    deliver(opaque);
}

/* ---- the queue (lock held) */

static void queue_unlink(sp_pool *p, spindle_work *w)
{
    if (w->prev) {
        w->prev->next = w->next;
    } else {
        p->head = w->next;
    }
    if (w->next) {
        w->next->prev = w->prev;
    } else {
        p->tail = w->prev;
    }
    atomic_store_explicit(&p->queued,
                          atomic_load_explicit(&p->queued,
                                               memory_order_relaxed) - 1,
                          memory_order_relaxed);
}

/* ---- workers */

static void reap(sp_worker *w)
{
    while (w) {
        sp_worker *next = w->next;
        pthread_join(w->tid, NULL);
        free(w);
        w = next;
    }
}

/* Wait for work without the lock, for up to window ns; true if some came. */
static bool spin_for_work(sp_pool *p, int64_t window)
{
    int64_t end = sp_now() + window;
    for (unsigned i = 1;; i++) {
        if (atomic_load_explicit(&p->queued, memory_order_relaxed)) {
            return true;
        }
        if (i % SP_POOL_SPIN_STRIDE == 0 && sp_now() >= end) {
            return false;
        }
        cpu_relax();
    }
}

static void *worker_main(void *opaque)
{
    sp_worker *self = opaque;
    sp_pool *p = self->pool;
    bool spun = false; /* already spun since the last job */

    pthread_mutex_lock(&p->lock);
    p->starting--;
    for (;;) {
        if (p->stopping) {
            break;
        }
        spindle_work *w = p->head;
        if (w) {
            queue_unlink(p, w);
            w->state = WORK_STARTED;
            pthread_mutex_unlock(&p->lock);

            w->ret = w->fn(w->arg);
            complete(p, w); /* w belongs to the loop from here on */

            spun = false;
            pthread_mutex_lock(&p->lock);
            continue;
        }
        if (p->nworkers > p->max_workers) {
            break;
        }
        /* One spinner is enough to catch the next job (a submitter wakes
         * sleepers for the others), and more would take CPUs from the
         * submitter on a small machine. */
        int64_t window = spun || p->spinning ? 0
                                             : spindle_get_poll_ns(p->ctx);
        if (window > 0) {
            spun = true;
            p->spinning++;
            pthread_mutex_unlock(&p->lock);
            spin_for_work(p, window);
            pthread_mutex_lock(&p->lock);
            p->spinning--;
            continue;
        }
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += SPINDLE_POOL_IDLE_MS / 1000;
        until.tv_nsec += (SPINDLE_POOL_IDLE_MS % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        p->idle++;
        int r = pthread_cond_timedwait(&p->work_cond, &p->lock, &until);
        /* Sleepers are interchangeable: whoever wakes first answers a
         * signal that a submitter counted (`woken`), whatever woke it. */
        if (p->woken > 0) {
            p->woken--;
        } else {
            p->idle--;
        }
        spun = false;
        if (r == ETIMEDOUT && !p->head && p->nworkers > p->min_workers) {
            break;
        }
    }
    p->nworkers--;
    self->next = p->exited;
    p->exited = self;
    if (p->stopping) {
        pthread_cond_broadcast(&p->exit_cond);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

/* Lock held. Start one worker; a negative errno if none could be. */
static int start_worker(sp_pool *p)
{
    /* Join the workers that left, so their handles do not pile up. The
     * lock is dropped meanwhile: a leaving worker takes it to leave. */
    sp_worker *gone = p->exited;
    p->exited = NULL;
    if (gone) {
        pthread_mutex_unlock(&p->lock);
        reap(gone);
        pthread_mutex_lock(&p->lock);
        if (p->stopping) {
            return -ECANCELED;
        }
    }
    sp_worker *w = sp_calloc(1, sizeof(*w));
    if (!w) {
        return -ENOMEM;
    }
    w->pool = p;
    int r = sp_thread_start(&w->tid, worker_main, w, "spindle-worker");
    if (r < 0) {
        free(w);
        return r;
    }
    p->nworkers++;
    p->starting++;
    return 0;
}

/* ---- the pool */

static sp_pool *pool_new(spindle_ctx *ctx)
{
    sp_pool *p = sp_calloc(1, sizeof(*p));
    if (!p) {
        errno = ENOMEM;
        return NULL;
    }
    p->ctx = ctx;
    p->min_workers = 0;
    p->max_workers = SP_POOL_MAX_DEFAULT;
    pthread_mutex_init(&p->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&p->work_cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&p->exit_cond, NULL);

    int r = sp_notifier_init(&p->doorbell, false);
    if (r < 0) {
        goto fail;
    }
    p->bh = sp_bh_new_detached(ctx, pool_bh, p);
    if (!p->bh) {
        r = -ENOMEM;
        goto fail_doorbell;
    }
    r = sp_handler_set(ctx, p->doorbell.rfd, false, pool_read, NULL,
                       pool_poll, p, &p->doorbell, false);
    if (r < 0) {
        goto fail_bh;
    }
    return p;

fail_bh:
    spindle_bh_delete(p->bh);
fail_doorbell:
    sp_notifier_destroy(&p->doorbell);
fail:
    pthread_cond_destroy(&p->exit_cond);
    pthread_cond_destroy(&p->work_cond);
    pthread_mutex_destroy(&p->lock);
    free(p);
    errno = -r;
    return NULL;
}

/* The pool, created at first use (any thread). NULL + errno. */
static sp_pool *pool_get(spindle_ctx *ctx)
{
    /* Acquire pairs with the release below: the pool is fully built. */
    sp_pool *p = atomic_load_explicit(&ctx->pool, memory_order_acquire);
    if (p) {
        return p;
    }
    pthread_mutex_lock(&ctx->pool_lock);
    p = atomic_load_explicit(&ctx->pool, memory_order_relaxed);
    if (!p) {
        p = pool_new(ctx);
        if (p) {
            atomic_store_explicit(&ctx->pool, p, memory_order_release);
        }
    }
    pthread_mutex_unlock(&ctx->pool_lock);
    return p;
}

static void free_chain(spindle_work *w)
{
    while (w) {
        spindle_work *next = w->next;
        free(w);
        w = next;
    }
}

void sp_pool_destroy(spindle_ctx *ctx)
{
    sp_pool *p = atomic_load_explicit(&ctx->pool, memory_order_acquire);
    if (!p) {
        return;
    }
    pthread_mutex_lock(&p->lock);
    p->stopping = true;
    free_chain(p->head); /* queued: dropped, their done never runs */
    p->head = p->tail = NULL;
    pthread_cond_broadcast(&p->work_cond);
    while (p->nworkers > 0) {
        pthread_cond_wait(&p->exit_cond, &p->lock);
    }
    sp_worker *gone = p->exited;
    p->exited = NULL;
    pthread_mutex_unlock(&p->lock);
    reap(gone);

    /* No worker is left: what is on the stacks and lists is ours. */
    free_chain(atomic_load_explicit(&p->done_stack, memory_order_acquire));
    free_chain(p->pending);
    free_chain(p->loop_free);
    free_chain(p->free_list);
    spindle_bh_delete(p->bh);
    /* The handler record goes with the context's others; its fd now. */
    sp_handler_set(ctx, p->doorbell.rfd, false, NULL, NULL, NULL, NULL,
                   NULL, false);
    sp_notifier_destroy(&p->doorbell);
    pthread_cond_destroy(&p->exit_cond);
    pthread_cond_destroy(&p->work_cond);
    pthread_mutex_destroy(&p->lock);
    free(p);
    atomic_store_explicit(&ctx->pool, NULL, memory_order_relaxed);
}

void sp_pool_counts(spindle_ctx *ctx, uint64_t *workers, uint64_t *queued)
{
    sp_pool *p = atomic_load_explicit(&ctx->pool, memory_order_acquire);
    *workers = *queued = 0;
    if (p) {
        pthread_mutex_lock(&p->lock);
        *workers = (uint64_t)p->nworkers;
        *queued = atomic_load_explicit(&p->queued, memory_order_relaxed);
        pthread_mutex_unlock(&p->lock);
    }
}

/* ---- the API */

spindle_work *spindle_work_submit(spindle_ctx *ctx, spindle_work_fn *work,
                                  spindle_done_fn *done, void *arg)
{
    if (!ctx || !work) {
        errno = EINVAL;
        return NULL;
    }
    sp_pool *p = pool_get(ctx);
    if (!p) {
        return NULL;
    }
    /* The loop thread's own recycled records need no lock. */
    bool on_loop = sp_on_loop_thread(ctx);
    spindle_work *w = NULL;
    if (on_loop && p->loop_free) {
        w = p->loop_free;
        p->loop_free = w->next;
        p->loop_nfree--;
    }

    pthread_mutex_lock(&p->lock);
    if (p->stopping) {
        pthread_mutex_unlock(&p->lock);
        if (w) {
            free(w);
        }
        errno = ECANCELED;
        return NULL;
    }
    if (!w && p->free_list) {
        w = p->free_list;
        p->free_list = w->next;
        p->nfree--;
    }
    if (!w) {
        w = sp_malloc(sizeof(*w));
        if (!w) {
            pthread_mutex_unlock(&p->lock);
            errno = ENOMEM;
            return NULL;
        }
    }
    *w = (spindle_work){
        .prev = p->tail,
        .fn = work,
        .done = done,
        .arg = arg,
        .pool = p,
        .epoch = atomic_load_explicit(&ctx->iterations, memory_order_relaxed),
        .state = WORK_QUEUED,
    };
    if (p->tail) {
        p->tail->next = w;
    } else {
        p->head = w;
    }
    p->tail = w;
    unsigned queued = atomic_load_explicit(&p->queued,
                                           memory_order_relaxed) + 1;
    atomic_store_explicit(&p->queued, queued, memory_order_relaxed);

    /* A job that no spinning, starting or already signalled worker will
     * take gets a sleeping worker signalled for it, or a new worker (busy
     * workers do not count: their work may block for good). */
    bool wake = false;
    if (queued > (unsigned)(p->spinning + p->starting + p->woken)) {
        if (p->idle > 0) {
            p->idle--;
            p->woken++;
            wake = true;
        } else if (p->nworkers < p->max_workers) {
            int r = start_worker(p);
            if (r < 0 && (p->nworkers == 0 || p->stopping)) {
                /* Nobody would ever run it. (start_worker may have dropped
                 * the lock, but with no worker nobody took the job.) */
                queue_unlink(p, w);
                pthread_mutex_unlock(&p->lock);
                free(w);
                errno = r == -ENOMEM ? ENOMEM
                        : r == -ECANCELED ? ECANCELED : EAGAIN;
                return NULL;
            }
        }
    }
    pthread_mutex_unlock(&p->lock);
    if (wake) {
        pthread_cond_signal(&p->work_cond);
    }
    return w;
}

int spindle_work_cancel(spindle_work *w)
{
    if (!w) {
        return -EINVAL;
    }
    sp_pool *p = w->pool;
    pthread_mutex_lock(&p->lock);
    if (w->state != WORK_QUEUED) {
        pthread_mutex_unlock(&p->lock);
        return -EBUSY;
    }
    queue_unlink(p, w);
    w->state = WORK_CANCELLED;
    w->ret = -ECANCELED;
    /* Not in the iteration that cancels it either. */
    w->epoch = atomic_load_explicit(&p->ctx->iterations,
                                    memory_order_relaxed);
    pthread_mutex_unlock(&p->lock);
    /* Delivered like a finished job, so done runs in a later iteration. */
    complete(p, w);
    return 0;
}

int spindle_set_pool_params(spindle_ctx *ctx, int min_workers,
                            int max_workers)
{
    if (!ctx || min_workers < 0 || max_workers < 1 ||
        min_workers > max_workers) {
        return -EINVAL;
    }
    sp_pool *p = pool_get(ctx);
    if (!p) {
        return -errno;
    }
    int r = 0;
    pthread_mutex_lock(&p->lock);
    p->min_workers = min_workers;
    p->max_workers = max_workers;
    while (r == 0 && !p->stopping && p->nworkers < min_workers) {
        r = start_worker(p);
    }
    pthread_mutex_unlock(&p->lock);
    /* Idle workers re-check their bound (a lowered max) and go back to
     * sleep otherwise. */
    pthread_cond_broadcast(&p->work_cond);
    return r == -ENOMEM ? -ENOMEM : r < 0 ? -EAGAIN : 0;
}
