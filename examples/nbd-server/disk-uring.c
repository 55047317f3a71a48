/* The io_uring engine (disk.h): reads, writes and flushes go on the loop's
 * own ring with spindle_add_sqe(). The request is submitted together with
 * the loop's next kernel call (or busy-polling round), and its completion
 * comes back as a callback on the loop thread; while the loop busy-polls,
 * it finds the completion in the ring's memory at no system call. A fast
 * device (or a page-cache hit) is served without the loop ever sleeping.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <spindle-uring.h>

#include "disk.h"

static void done_cqe(void *opaque, const struct io_uring_cqe *cqe);

/* Fill the SQE for what is left of io. */
static void prep(struct io_uring_sqe *sqe, void *opaque)
{
    disk_io *io = opaque;
    char *buf = (char *)io->buf + io->moved;
    unsigned left = io->len - io->moved;
    uint64_t at = io->off + io->moved;
    switch (io->op) {
    case DISK_READ:
        io_uring_prep_read(sqe, io->fd, buf, left, at);
        break;
    case DISK_WRITE:
        io_uring_prep_write(sqe, io->fd, buf, left, at);
        if (io->fua) /* write through to stable storage: FUA */
            sqe->rw_flags = RWF_DSYNC;
        break;
    default: /* DISK_FLUSH */
        io_uring_prep_fsync(sqe, io->fd, IORING_FSYNC_DATASYNC);
        break;
    }
}

static void start(disk_io *io, spindle_ctx *ctx)
{
    int r = spindle_add_sqe(ctx, prep, done_cqe, io);
    if (r < 0)
        io->done(io, r); /* -ENOMEM or -EBUSY: the request fails, cleanly */
}

void disk_uring_submit(disk_io *io, spindle_ctx *ctx)
{
    io->ctx = ctx;
    start(io, ctx);
}

/* The completion, on the loop thread: a short read or write (allowed, if
 * rare for files) is sent again for the rest. */
static void done_cqe(void *opaque, const struct io_uring_cqe *cqe)
{
    disk_io *io = opaque;
    int res = cqe->res;
    if (io->op == DISK_FLUSH || res < 0) {
        if (res == -EINTR || res == -EAGAIN) {
            start(io, io->ctx);
            return;
        }
        io->done(io, res < 0 ? res : 0);
        return;
    }
    if (res == 0) {
        io->done(io, -EIO); /* the file shrank behind our back */
        return;
    }
    io->moved += (uint32_t)res;
    if (io->moved < io->len)
        start(io, io->ctx);
    else
        io->done(io, 0);
}
