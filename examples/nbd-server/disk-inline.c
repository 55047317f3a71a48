/* I/O that a loop thread does itself rather than hand to its engine
 * (disk.h), where the kernel lets it do so without waiting for long: reads
 * the page cache holds (pool engine) and buffered writes (every engine).
 *
 * Reads. RWF_NOWAIT makes the kernel return EAGAIN rather than go to the
 * disk, so a page-cache hit is copied right here and a miss goes to a
 * worker. The io_uring engine needs none of this: the kernel tries each
 * request without blocking first by itself.
 *
 * Buffered writes. A write into the page cache is a memory copy (a few
 * microseconds for 4 KiB), but a file system that cannot promise not to
 * block in it (ext4: RWF_NOWAIT gives EOPNOTSUPP) makes io_uring hand every
 * such write to one of its kernel worker threads, and the pool engine to
 * one of its own: a thread hand-off that costs more than the write, since
 * waking a sleeping worker takes tens of microseconds on a VM. Measured on
 * 2 vCPUs, ext4, 4 KiB random writes from a libnbd client: queue depth 1
 * p50 55-61 us through the ring, 29-32 us made here; depth 32, 62k-66k
 * IOPS through the ring, 87k-95k made here.
 *
 * The risk is the one the engines exist for: a write that does block (the
 * kernel throttling a process that dirtied too much memory, or reclaiming
 * memory for the new page) stops the loop thread and every connection on
 * it. So:
 * - where the file system accepts RWF_NOWAIT, the write is tried so and
 *   goes to the engine when it would block (EAGAIN);
 * - every write made here is timed, and one slower than the budget
 *   (--inline-writes, 5 ms by default) sends writes to the engine for a
 *   pause: 100 ms, doubled after every slow write that follows a pause, up
 *   to 6.4 s, and back to 100 ms after a fast one. A thread that keeps
 *   hitting slow writes therefore stalls once per pause at most;
 * - only plain writes of up to 256 KiB: a FUA write waits for the disk
 *   itself, and a large copy is long however fast the page cache is.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <sys/uio.h> /* RWF_NOWAIT */

#include "disk.h"

#define INLINE_WRITE_MAX_LEN (256u << 10)
#define PAUSE_FIRST_NS 100000000ll   /* 100 ms */
#define PAUSE_LONGEST_NS 6400000000ll /* 6.4 s */

void disk_inline_init(disk_inline *in, int64_t budget_ns)
{
    *in = (disk_inline){.budget_ns = budget_ns, .pause_ns = PAUSE_FIRST_NS, .nowait = true};
}

static bool read_cached(disk_io *io)
{
    return disk_file_rw(io, RWF_NOWAIT) == 0;
}

/* The write, or as much as the kernel takes without blocking when
 * in->nowait. 0, -EAGAIN (the rest is the engine's), or -errno. */
static int write_here(disk_inline *in, disk_io *io)
{
    int r = disk_file_rw(io, in->nowait ? RWF_NOWAIT : 0);
    if (r == -EOPNOTSUPP && in->nowait) {
        in->nowait = false; /* this file system cannot: time it instead */
        r = disk_file_rw(io, 0);
    }
    return r;
}

static bool write_inline(disk_inline *in, disk_io *io)
{
    if (!in->budget_ns || io->fua || io->len > INLINE_WRITE_MAX_LEN)
        return false;
    int64_t t0 = spindle_now_ns(SPINDLE_CLOCK_MONOTONIC);
    if (t0 < in->paused_until)
        return false;
    int r = write_here(in, io);
    int64_t t1 = spindle_now_ns(SPINDLE_CLOCK_MONOTONIC);
    if (t1 - t0 > in->budget_ns) {
        in->slow++;
        in->paused_until = t1 + in->pause_ns;
        if (in->pause_ns < PAUSE_LONGEST_NS)
            in->pause_ns *= 2;
    } else {
        in->pause_ns = PAUSE_FIRST_NS;
    }
    if (r == -EAGAIN)
        return false;
    in->made++;
    io->done(io, r);
    return true;
}

bool disk_try_inline(disk_inline *in, disk_io *io, bool page_cache_reads)
{
    if (io->fd != io->d->fd) /* O_DIRECT: always the disk's time */
        return false;
    if (io->op == DISK_READ && page_cache_reads && read_cached(io)) {
        io->done(io, 0);
        return true;
    }
    return io->op == DISK_WRITE && write_inline(in, io);
}
