/* The thread-pool engine (disk.h): a worker of the context's pool makes the
 * blocking system call (spindle_work_submit); the loop thread gets the
 * completion. The engine for contexts without io_uring, and for what the
 * ring does not do here (trim, zeroing, extents).
 * SPDX-License-Identifier: MIT */
#include <errno.h>

#include "disk.h"

static int work(void *opaque) /* on a pool worker */
{
    disk_io *io = opaque;
    return disk_do_blocking(io->d, io);
}

static void done(void *opaque, int ret) /* on the loop thread */
{
    disk_io *io = opaque;
    io->done(io, ret);
}

void disk_pool_submit(disk_io *io, spindle_ctx *ctx)
{
    if (!spindle_work_submit(ctx, work, done, io))
        io->done(io, -errno); /* ENOMEM: the request fails, cleanly */
}
