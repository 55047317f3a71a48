/* Event notifiers: a flag that an fd makes visible to poll and epoll.
 * SPDX-License-Identifier: MIT
 *
 * An eventfd where the build has one: set adds 1 to its counter, clear
 * reads the counter back to 0, so any number of sets between two clears
 * coalesce. The pipe fallback (-Deventfd=false) gets the same effect by
 * writing one byte per set (a full pipe means "already set") and draining
 * all of them on clear.
 */
#include "ctx.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
#if SPINDLE_HAVE_EVENTFD
#include <sys/eventfd.h>
#endif

int sp_notifier_init(struct spindle_notifier *n, bool active)
{
#if SPINDLE_HAVE_EVENTFD
    int fd = sp_fault_fd() ? -1 : eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    n->rfd = n->wfd = fd;
#else
    int fds[2];
    if (sp_fault_fd() || pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) {
        return -errno;
    }
    n->rfd = fds[0];
    n->wfd = fds[1];
#endif
    atomic_init(&n->set_ns, 0);
    if (active) {
        spindle_notifier_set(n);
    }
    return 0;
}

void sp_notifier_destroy(struct spindle_notifier *n)
{
    if (n->wfd != n->rfd) {
        close(n->wfd);
    }
    close(n->rfd);
}

spindle_notifier *spindle_notifier_new(bool active)
{
    spindle_notifier *n = sp_malloc(sizeof(*n));
    if (!n) {
        errno = ENOMEM;
        return NULL;
    }
    int r = sp_notifier_init(n, active);
    if (r < 0) {
        free(n);
        errno = -r;
        return NULL;
    }
    return n;
}

void spindle_notifier_free(spindle_notifier *n)
{
    if (n) {
        sp_notifier_destroy(n);
        free(n);
    }
}

int spindle_notifier_set(spindle_notifier *n)
{
    if (!n) {
        return -EINVAL;
    }
    /* The first set since the last clear records when: a loop that this
     * wakes counts its wait until here, not until its thread got to run
     * (polling-windows.c). The relaxed load skips the clock read on
     * repeated sets; the write below publishes the time to the loop, which
     * only takes it as a hint (any time outside its wait is ignored). */
    if (!atomic_load_explicit(&n->set_ns, memory_order_relaxed)) {
        int64_t none = 0;
        atomic_compare_exchange_strong_explicit(&n->set_ns, &none, sp_now(),
                                                memory_order_relaxed,
                                                memory_order_relaxed);
    }
#if SPINDLE_HAVE_EVENTFD
    uint64_t one = 1;
    ssize_t r;
    do {
        r = write(n->wfd, &one, sizeof(one));
    } while (r < 0 && errno == EINTR);
#else
    char byte = 1;
    ssize_t r;
    do {
        r = write(n->wfd, &byte, 1);
    } while (r < 0 && errno == EINTR);
#endif
    /* EAGAIN: the counter or the pipe is full, so it is set already. */
    if (r < 0 && errno != EAGAIN) {
        return -errno;
    }
    return 0;
}

bool spindle_notifier_test_and_clear(spindle_notifier *n)
{
    if (!n) {
        return false;
    }
    char buf[512];
    bool was_set = false;
    ssize_t r;
    /* Before the read: a set that comes in between leaves its time behind
     * with the fd cleared, which the loop ignores as a time before its
     * next wait; the other order could leave the fd set with no time. */
    atomic_store_explicit(&n->set_ns, 0, memory_order_relaxed);
    do {
        /* An eventfd returns its whole counter in one 8-byte read; a pipe
         * may need several reads. */
        r = read(n->rfd, buf, sizeof(buf));
        if (r > 0) {
            was_set = true;
        }
    } while ((r > 0 && n->rfd != n->wfd) || (r < 0 && errno == EINTR));
    return was_set;
}

int spindle_notifier_fd(const spindle_notifier *n)
{
    return n ? n->rfd : -EINVAL;
}

int spindle_set_event_notifier(spindle_ctx *ctx, spindle_notifier *n,
                               bool is_external, spindle_io_fn *io_read,
                               spindle_poll_fn *io_poll, void *opaque)
{
    if (!ctx || !n) {
        return -EINVAL;
    }
    return sp_handler_set(ctx, n->rfd, is_external, io_read, NULL, io_poll,
                          opaque, n, false);
}

void spindle_set_event_notifier_poll(spindle_ctx *ctx, spindle_notifier *n,
                                     spindle_io_fn *begin, spindle_io_fn *end)
{
    if (n) {
        spindle_set_fd_poll(ctx, n->rfd, begin, end);
    }
}
