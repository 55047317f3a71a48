/* fd handlers: registration from any thread, dispatch on the loop thread.
 * SPDX-License-Identifier: MIT
 *
 * The loop walks two lists (every handler; handlers with an io_poll) while
 * other threads may register or remove handlers. Writers hold the lockcnt's
 * lock; the loop counts itself as a walker for the whole iteration. A record
 * is never edited once published: an update inserts a new record and
 * retires the old one. A retired record is unlinked at once (a walker on it
 * still finds its way on) and freed right away if no iteration runs, or
 * else by the last walker to leave (sp_walk_end). That is what makes removal
 * from inside a callback, or from another thread mid-iteration, safe.
 *
 * fd_table maps an fd to its live record in O(1), so registration does not
 * walk the list; it is only touched under the lock.
 *
 * Interest (spindle_set_fd_interest) is the exception to "never edited":
 * flow control in a server turns write interest on and off once per short
 * write, and a new record per change would allocate and cost a kernel call
 * each time. So the loop thread changes `interest` in place, under the
 * lock (which keeps fd_table and the dirty table still while it looks the
 * fd up), and only it reads that field: the poll monitor's wait and
 * dispatch run on the loop thread. What other threads read, `events` (the
 * monitor's view, which registration compares against), changes only in
 * sp_interest_apply(), under the lock, right before the next wait.
 *
 * With io_uring the kernel holds the record's address as a request's
 * user_data until the request's last completion, which may come iterations
 * after the retirement. Such records are SP_RING_OWNED: retire() leaves them
 * to the ring, which hands them back through sp_handler_release() when
 * their last request has completed; from there the walkers' rule above
 * applies as to any other retired record.
 */
#include "ctx.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Retired records are chained through all.prev, which walkers never read
 * and which nothing else needs once the record is unlinked. */
static sp_handler *zombie_next(const sp_handler *h)
{
    return h->all.prev ? sp_container_of(h->all.prev, sp_handler, all) : NULL;
}

static void free_chain(sp_handler *h)
{
    while (h) {
        sp_handler *next = zombie_next(h);
        free(h->io_poll ? (void *)sp_polled_of(h) : (void *)h);
        h = next;
    }
}

void sp_walk_begin(spindle_ctx *ctx)
{
    sp_lockcnt_inc(&ctx->list_lock);
}

void sp_walk_end(spindle_ctx *ctx)
{
    /* Zombies are only ever added under the lock, so a NULL seen here may
     * miss one being added right now; the next iteration frees it. */
    if (!atomic_load_explicit(&ctx->zombies, memory_order_relaxed)) {
        sp_lockcnt_dec(&ctx->list_lock);
        return;
    }
    if (sp_lockcnt_dec_and_lock(&ctx->list_lock)) {
        sp_handler *z = atomic_exchange_explicit(&ctx->zombies, NULL,
                                                 memory_order_relaxed);
        sp_lockcnt_unlock(&ctx->list_lock);
        free_chain(z);
    }
}

bool sp_handlers_unpolled(spindle_ctx *ctx)
{
    return atomic_load_explicit(&ctx->poll_disable_cnt,
                                memory_order_relaxed) > 0;
}

void sp_ready_add(spindle_ctx *ctx, sp_handler *h, int revents)
{
    /* epoll hands records over through the kernel, which orders them but
     * which ThreadSanitizer cannot see; this acquire pairs with the release
     * stores of `deleted` that publish and retire a record, and makes the
     * hand-over visible to it. A plain load on x86. */
    (void)atomic_load_explicit(&h->deleted, memory_order_acquire);
    h->revents = (short)revents;
    sp_polling_note(ctx, h); /* for step 5: h's window adapts */
    if (!h->queued) {
        h->queued = true;
        h->ready_next = ctx->ready;
        ctx->ready = h;
    }
}

bool sp_handlers_dispatch(spindle_ctx *ctx)
{
    bool progress = false;
    sp_handler *h;
    void (*dispatched)(spindle_ctx *, sp_handler *) =
        atomic_load_explicit(&ctx->fdmon, memory_order_relaxed)->dispatched;

    while ((h = ctx->ready) != NULL) {
        ctx->ready = h->ready_next;
        h->queued = false;
        int revents = h->revents;
        /* Each call may remove any handler, this one included, or turn its
         * interest off: check again before every call. Events of a disabled
         * external handler are dropped here and reported again
         * (level-triggered) once enabled. */
        if ((revents & (POLLIN | POLLHUP | POLLERR)) && h->io_read &&
            (h->interest & POLLIN) && sp_handler_enabled(ctx, h)) {
            h->io_read(h->opaque);
            progress |= !h->internal;
        }
        /* A hang-up that io_read cannot see (read interest off) goes to
         * io_write, whose next write reports it: otherwise the kernel would
         * report it at every wait and nothing would consume it. */
        int write_on = POLLOUT | POLLERR |
                       (h->interest & POLLIN ? 0 : POLLHUP);
        if ((revents & write_on) && h->io_write && (h->interest & POLLOUT) &&
            sp_handler_enabled(ctx, h)) {
            h->io_write(h->opaque);
            progress = true;
        }
        if (dispatched) {
            dispatched(ctx, h);
        }
    }
    return progress;
}

static int fd_table_reserve(spindle_ctx *ctx, int fd)
{
    if (fd < ctx->fd_table_size) {
        return 0;
    }
    int size = ctx->fd_table_size ? ctx->fd_table_size : 64;
    while (size <= fd) {
        size *= 2;
    }
    sp_handler **t = sp_realloc(ctx->fd_table, sizeof(*t) * (size_t)size);
    if (!t) {
        return -ENOMEM;
    }
    ctx->fd_table = t;
    int *d = sp_realloc(ctx->dirty_next, sizeof(*d) * (size_t)size);
    if (!d) {
        return -ENOMEM; /* fd_table grew, its size did not: harmless */
    }
    ctx->dirty_next = d;
    memset(t + ctx->fd_table_size, 0,
           sizeof(*t) * (size_t)(size - ctx->fd_table_size));
    memset(d + ctx->fd_table_size, 0,
           sizeof(*d) * (size_t)(size - ctx->fd_table_size));
    ctx->fd_table_size = size;
    return 0;
}

/* Lock held. The live record of fd, or NULL. */
static sp_handler *lookup(spindle_ctx *ctx, int fd)
{
    return fd < ctx->fd_table_size ? ctx->fd_table[fd] : NULL;
}

/* Lock held. Insert a filled record; it takes over `old`'s poll state and
 * window, which belong to the fd, not to the record. */
static void install(spindle_ctx *ctx, sp_handler *h, sp_handler *old)
{
    if (h->io_poll && old && old->io_poll) {
        sp_polled_handler *p = sp_polled_of(h), *o = sp_polled_of(old);
        p->poll_begin = o->poll_begin;
        p->poll_end = o->poll_end;
        atomic_init(&p->poll_started,
                    atomic_load_explicit(&o->poll_started,
                                         memory_order_relaxed));
        atomic_init(&p->poll_ns, atomic_load_explicit(&o->poll_ns,
                                                      memory_order_relaxed));
    }
    sp_list_insert_head(&ctx->handlers, &h->all);
    if (h->io_poll) {
        sp_list_insert_head(&ctx->polled, &sp_polled_of(h)->polled);
        /* Its window counts from the loop's next look at every handler. */
        atomic_store_explicit(&ctx->poll_rescan, true, memory_order_relaxed);
    } else {
        atomic_fetch_add_explicit(&ctx->poll_disable_cnt, 1,
                                  memory_order_relaxed);
    }
    ctx->fd_table[h->fd] = h;
}

/* Lock held. Returns the record if the caller may free it now. */
static sp_handler *retire(spindle_ctx *ctx, sp_handler *old)
{
    /* Release: see sp_ready_add(). */
    atomic_store_explicit(&old->deleted, true, memory_order_release);
    sp_list_unlink(&old->all);
    if (old->io_poll) {
        sp_list_unlink(&sp_polled_of(old)->polled);
        atomic_store_explicit(&ctx->poll_rescan, true, memory_order_relaxed);
    } else {
        atomic_fetch_sub_explicit(&ctx->poll_disable_cnt, 1,
                                  memory_order_relaxed);
    }
    if (ctx->fd_table[old->fd] == old) {
        ctx->fd_table[old->fd] = NULL;
    }
    if (old->ring_flags & SP_RING_OWNED) {
        return NULL; /* the ring releases it after its last completion */
    }
    if (sp_lockcnt_count(&ctx->list_lock) == 0) {
        return old;
    }
    sp_handler *next = atomic_load_explicit(&ctx->zombies,
                                            memory_order_relaxed);
    old->all.prev = next ? &next->all : NULL;
    atomic_store_explicit(&ctx->zombies, old, memory_order_relaxed);
    return NULL;
}

void sp_handler_release(spindle_ctx *ctx, sp_handler *h, bool locked)
{
    if (!locked) {
        sp_lockcnt_lock(&ctx->list_lock);
    }
    bool now = sp_lockcnt_count(&ctx->list_lock) == 0;
    if (!now) {
        sp_handler *next = atomic_load_explicit(&ctx->zombies,
                                                memory_order_relaxed);
        h->all.prev = next ? &next->all : NULL;
        atomic_store_explicit(&ctx->zombies, h, memory_order_relaxed);
    }
    if (!locked) {
        sp_lockcnt_unlock(&ctx->list_lock);
    }
    if (now) {
        h->all.prev = NULL;
        free_chain(h);
    }
}

int sp_handler_set(spindle_ctx *ctx, int fd, bool is_external,
                   spindle_io_fn *io_read, spindle_io_fn *io_write,
                   spindle_poll_fn *io_poll, void *opaque,
                   struct spindle_notifier *notifier, bool internal)
{
    sp_handler *h = NULL;
    bool removing = !io_read && !io_write && !io_poll;

    if (!ctx) {
        return -EINVAL;
    }
    if (removing) {
        if (fd < 0) {
            return 0;
        }
    } else {
        if (fd < 0) {
            return -EBADF; /* a closed fd is caught by the monitor */
        }
        /* Only busy-polled handlers pay for the busy-polling fields. */
        if (io_poll) {
            sp_polled_handler *p = sp_calloc(1, sizeof(*p));
            if (p) {
                p->notifier = notifier;
                atomic_init(&p->poll_ns, 0);
            }
            h = p ? &p->h : NULL;
        } else {
            h = sp_calloc(1, sizeof(*h));
        }
        if (!h) {
            return -ENOMEM;
        }
        h->fd = fd;
        h->io_read = io_read;
        h->io_write = io_write;
        h->io_poll = io_poll;
        h->opaque = opaque;
        h->events = (uint8_t)((io_read ? POLLIN : 0) | (io_write ? POLLOUT : 0));
        h->interest = h->events;
        h->is_external = is_external;
        h->internal = internal;
        /* Publishes the fields above to the loop: see sp_ready_add(). */
        atomic_store_explicit(&h->deleted, false, memory_order_release);
    }

    sp_lockcnt_lock(&ctx->list_lock);
    sp_handler *old = lookup(ctx, fd);
    if (h && fd_table_reserve(ctx, fd) < 0) {
        sp_lockcnt_unlock(&ctx->list_lock);
        free(h->io_poll ? (void *)sp_polled_of(h) : (void *)h);
        return -ENOMEM;
    }
    if (!h && !old) {
        sp_lockcnt_unlock(&ctx->list_lock);
        return 0;
    }
    int r = atomic_load_explicit(&ctx->fdmon, memory_order_relaxed)
                ->update(ctx, old, h);
    if (r < 0) { /* only when registering: removal cannot fail */
        sp_lockcnt_unlock(&ctx->list_lock);
        if (h) {
            free(h->io_poll ? (void *)sp_polled_of(h) : (void *)h);
        }
        return r;
    }
    if (h) {
        install(ctx, h, old);
        if (internal) {
            ctx->wake_handler = sp_polled_of(h); /* never replaced */
        }
    }
    sp_handler *free_now = old ? retire(ctx, old) : NULL;
    /* Written under the lock only; relaxed: the embedding set reads it
     * under the lock too, or as a hint that the next notify confirms. */
    atomic_store_explicit(&ctx->handler_gen,
                          atomic_load_explicit(&ctx->handler_gen,
                                               memory_order_relaxed) + 1,
                          memory_order_relaxed);
    if (!internal && h && !old) {
        ctx->user_fds++;
    } else if (!internal && !h && old) {
        ctx->user_fds--;
    }
    if (ctx->epoll_auto && ctx->user_fds >= SP_EPOLL_THRESHOLD) {
        ctx->epoll_auto = false;
        sp_fdmon_epoll_enable(ctx);
    }
    sp_lockcnt_unlock(&ctx->list_lock);

    sp_notify_remote(ctx);
    if (free_now) {
        free_now->all.prev = NULL;
        free_chain(free_now);
    }
    return 0;
}

int spindle_set_fd_handler(spindle_ctx *ctx, int fd, bool is_external,
                           spindle_io_fn *io_read, spindle_io_fn *io_write,
                           spindle_poll_fn *io_poll, void *opaque)
{
    return sp_handler_set(ctx, fd, is_external, io_read, io_write, io_poll,
                          opaque, NULL, false);
}

void spindle_set_fd_poll(spindle_ctx *ctx, int fd, spindle_io_fn *poll_begin,
                         spindle_io_fn *poll_end)
{
    if (!ctx || fd < 0) {
        return;
    }
    /* In place, but under the lock: only the loop thread calls this and
     * walks the lists; the lock keeps writers that copy these fields into a
     * replacement record from reading them half-changed. */
    sp_lockcnt_lock(&ctx->list_lock);
    sp_handler *h = lookup(ctx, fd);
    if (h && h->io_poll && !h->internal) {
        sp_polled_of(h)->poll_begin = poll_begin;
        sp_polled_of(h)->poll_end = poll_end;
    }
    sp_lockcnt_unlock(&ctx->list_lock);
}

int spindle_set_fd_interest(spindle_ctx *ctx, int fd, bool want_read,
                            bool want_write)
{
    if (!ctx) {
        return -EINVAL;
    }
    if (fd < 0) {
        return -EBADF;
    }
    int r = 0;
    sp_lockcnt_lock(&ctx->list_lock);
    sp_handler *h = lookup(ctx, fd);
    if (!h || h->internal) {
        r = -ENOENT;
    } else if ((want_read && !h->io_read) || (want_write && !h->io_write)) {
        r = -EINVAL; /* no callback would ever run for it */
    } else {
        h->interest = (uint8_t)((want_read ? POLLIN : 0) |
                                (want_write ? POLLOUT : 0));
        /* Listed once, however often it changes before the next wait. */
        if (h->interest != h->events && !ctx->dirty_next[fd]) {
            ctx->dirty_next[fd] = ctx->dirty_head < 0 ? SP_DIRTY_END
                                                      : ctx->dirty_head + 1;
            ctx->dirty_head = fd;
        }
    }
    sp_lockcnt_unlock(&ctx->list_lock);
    return r;
}

void sp_interest_apply(spindle_ctx *ctx)
{
    if (ctx->dirty_head < 0) {
        return; /* the common case: no lock taken */
    }
    sp_lockcnt_lock(&ctx->list_lock);
    for (int fd = ctx->dirty_head; fd >= 0;) {
        int next = ctx->dirty_next[fd] - 1; /* SP_DIRTY_END gives -2 */
        ctx->dirty_next[fd] = 0;
        /* NULL: removed meanwhile. A replacement record starts with
         * interest == events, so it is skipped as well. */
        sp_handler *h = lookup(ctx, fd);
        if (h && h->interest != h->events) {
            /* Re-read for each fd: a failing epoll hands over to poll. */
            const sp_fdmon *mon = atomic_load_explicit(&ctx->fdmon,
                                                       memory_order_relaxed);
            if (mon->set_events) {
                mon->set_events(ctx, h, h->interest);
                SP_STAT_INC(ctx, interest_updates);
            } else {
                sp_fdmon_poll_embed_events(ctx, h, h->interest);
            }
            h->events = h->interest;
        }
        fd = next;
    }
    ctx->dirty_head = -1;
    sp_lockcnt_unlock(&ctx->list_lock);
}

void spindle_disable_external(spindle_ctx *ctx)
{
    if (ctx) {
        atomic_fetch_add_explicit(&ctx->external_disable_cnt, 1,
                                  memory_order_relaxed);
    }
}

void spindle_enable_external(spindle_ctx *ctx)
{
    if (!ctx) {
        return;
    }
    unsigned n = atomic_load_explicit(&ctx->external_disable_cnt,
                                      memory_order_relaxed);
    do {
        if (n == 0) {
            return; /* unbalanced enable: ignored */
        }
    } while (!atomic_compare_exchange_weak_explicit(
        &ctx->external_disable_cnt, &n, n - 1, memory_order_relaxed,
        memory_order_relaxed));
    if (n == 1) {
        /* An embedded context put them out of its epoll set. */
        sp_embed_external_enabled(ctx);
        /* The loop may sleep without the external fds in its set. */
        sp_notify_remote(ctx);
    }
}

void sp_handlers_init(spindle_ctx *ctx)
{
    sp_lockcnt_init(&ctx->list_lock);
    sp_list_init(&ctx->handlers);
    sp_list_init(&ctx->polled);
    sp_list_init(&ctx->polled_idle);
    ctx->dirty_head = -1;
    atomic_init(&ctx->zombies, NULL);
    atomic_init(&ctx->poll_disable_cnt, 0);
    atomic_init(&ctx->external_disable_cnt, 0);
    atomic_init(&ctx->handler_gen, 0);
}

void sp_handlers_destroy(spindle_ctx *ctx)
{
    sp_link *l = sp_list_first(&ctx->handlers);
    while (l != &ctx->handlers) {
        sp_link *next = sp_list_next(l);
        sp_handler *h = sp_container_of(l, sp_handler, all);
        h->all.prev = NULL;
        free_chain(h);
        l = next;
    }
    free_chain(atomic_load_explicit(&ctx->zombies, memory_order_relaxed));
    free(ctx->fd_table);
    free(ctx->dirty_next);
    free(ctx->pollfds);
    free(ctx->pollnodes);
    if (ctx->epollfd >= 0) {
        close(ctx->epollfd);
    }
}
