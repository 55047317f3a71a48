/* The export's backing store: opening it, the memory export, the blocking
 * implementation of every operation, and the choice of engine (disk.h).
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "disk.h"
#if NBD_HAVE_URING
#include <spindle-uring.h>
#endif
#include "nbd-proto.h"

int disk_open_file(disk *d, const char *path, bool readonly, bool direct)
{
    memset(d, 0, sizeof *d);
    d->name = path;
    d->readonly = readonly;
    d->fd_direct = -1;
    int mode = (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC;
    d->fd = open(path, mode);
    if (d->fd < 0)
        return -errno;
    struct stat st;
    if (fstat(d->fd, &st) != 0)
        goto fail;
    if (S_ISREG(st.st_mode)) {
        d->size = (uint64_t)st.st_size;
    } else if (S_ISBLK(st.st_mode)) {
        if (ioctl(d->fd, BLKGETSIZE64, &d->size) != 0)
            goto fail;
    } else {
        errno = EINVAL;
        goto fail;
    }
    if (direct) {
        /* Requests aligned to 4 KiB (offset and length) bypass the page
         * cache; others go through it on d->fd. Linux keeps the two
         * coherent: a direct read first writes back cached dirty pages of
         * its range, a direct write drops them. */
        d->fd_direct = open(path, mode | O_DIRECT);
        if (d->fd_direct < 0)
            goto fail;
        d->direct_align = 4096;
    }
    return 0;
fail:;
    int err = errno;
    disk_close(d);
    return -err;
}

int disk_open_memory(disk *d, uint64_t size, bool readonly)
{
    memset(d, 0, sizeof *d);
    d->name = "memory";
    d->readonly = readonly;
    d->fd = d->fd_direct = -1;
    d->size = size;
    /* Anonymous private pages read as zeroes until written, and
     * MADV_DONTNEED gives them back (trim). MAP_NORESERVE: a large export
     * costs only what is written. */
    void *p = mmap(NULL, size ? size : 1, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    d->mem = p;
    return 0;
}

void disk_close(disk *d)
{
    if (d->mem)
        munmap(d->mem, d->size ? d->size : 1);
    if (d->fd >= 0)
        close(d->fd);
    if (d->fd_direct >= 0)
        close(d->fd_direct);
    d->mem = NULL;
    d->fd = d->fd_direct = -1;
}

/* ------------------------------------------------------------------------
 * Memory export: every operation is a memory copy, done inline. */

static void mem_zero(disk *d, uint64_t off, uint64_t len)
{
    /* Whole pages go back to the kernel (they read as zeroes again); the
     * partial pages at either end are cleared by hand. */
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t first = (off + page - 1) / page * page, last = (off + len) / page * page;
    if (first < last && madvise(d->mem + first, last - first, MADV_DONTNEED) == 0) {
        memset(d->mem + off, 0, first - off);
        memset(d->mem + last, 0, off + len - last);
    } else {
        memset(d->mem + off, 0, len);
    }
}

static int mem_do(disk *d, disk_io *io)
{
    switch (io->op) {
    case DISK_READ:
        memcpy(io->buf, d->mem + io->off, io->len);
        return 0;
    case DISK_WRITE:
        memcpy(d->mem + io->off, io->buf, io->len);
        return 0;
    case DISK_FLUSH:
        return 0;
    case DISK_TRIM:
    case DISK_ZERO:
        mem_zero(d, io->off, io->len);
        return 0;
    case DISK_EXTENTS:
        /* Pages that were never written do read as zeroes, but a page
         * that is not resident may also be in swap: say "data" (status 0),
         * which is always correct. */
        io->ext[0] = (disk_extent){io->len, 0};
        io->n_ext = 1;
        return 0;
    }
    return -EINVAL;
}

/* ------------------------------------------------------------------------
 * Files: blocking system calls. */

/* The O_DIRECT fd for requests it takes, else the ordinary one. */
static int file_fd(const disk *d, const disk_io *io)
{
    uint32_t a = d->direct_align;
    if (d->fd_direct >= 0 && io->off % a == 0 && io->len % a == 0)
        return d->fd_direct;
    return d->fd;
}

int disk_file_rw(disk_io *io, int rw_flags)
{
    int fd = io->fd;
    if (io->op == DISK_WRITE && io->fua)
        rw_flags |= RWF_DSYNC;
    while (io->moved < io->len) {
        struct iovec v = {(char *)io->buf + io->moved, io->len - io->moved};
        off_t at = (off_t)(io->off + io->moved);
        ssize_t n = io->op == DISK_READ ? preadv2(fd, &v, 1, at, rw_flags)
                                        : pwritev2(fd, &v, 1, at, rw_flags);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return -EIO; /* the file shrank behind our back */
        io->moved += (uint32_t)n;
    }
    return 0;
}

/* Write zeroes the slow way, for files that cannot fallocate. */
static int file_write_zeroes(disk *d, uint64_t off, uint64_t len)
{
    static const char zeroes[65536];
    while (len > 0) {
        size_t n = len < sizeof zeroes ? (size_t)len : sizeof zeroes;
        ssize_t w = pwrite(d->fd, zeroes, n, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? -errno : -EIO;
        off += (uint64_t)w;
        len -= (uint64_t)w;
    }
    return 0;
}

static int file_zero(disk *d, disk_io *io)
{
    off_t off = (off_t)io->off, len = (off_t)io->len;
    /* A hole reads as zeroes and costs nothing; when the client wants the
     * range allocated (NO_HOLE), zero it in place instead. */
    if (io->op == DISK_TRIM || io->may_trim) {
        if (fallocate(d->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len) == 0)
            return 0;
        if (io->op == DISK_TRIM)
            return errno == EOPNOTSUPP ? 0 : -errno; /* trim is only advice */
    }
    if (fallocate(d->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, off, len) == 0)
        return 0;
    if (errno != EOPNOTSUPP)
        return -errno;
    return file_write_zeroes(d, io->off, io->len);
}

/* Holes and data in [off, off + len), from SEEK_DATA/SEEK_HOLE. */
static int file_extents(disk *d, disk_io *io)
{
    uint64_t pos = io->off, end = io->off + io->len;
    io->n_ext = 0;
    while (pos < end && io->n_ext < io->max_ext) {
        off_t data = lseek(d->fd, (off_t)pos, SEEK_DATA);
        if (data < 0 && errno == ENXIO)
            data = (off_t)end; /* nothing but hole from pos on */
        else if (data < 0)
            data = (off_t)pos; /* not supported (EINVAL): call it data */
        uint64_t stop;
        uint32_t flags;
        if ((uint64_t)data > pos) {
            stop = (uint64_t)data;
            flags = NBD_STATE_HOLE | NBD_STATE_ZERO;
        } else {
            off_t hole = lseek(d->fd, (off_t)pos, SEEK_HOLE);
            stop = hole > (off_t)pos ? (uint64_t)hole : end;
            flags = 0;
        }
        if (stop > end)
            stop = end;
        io->ext[io->n_ext++] = (disk_extent){(uint32_t)(stop - pos), flags};
        pos = stop;
    }
    return 0;
}

int disk_do_blocking(disk *d, disk_io *io)
{
    if (d->mem)
        return mem_do(d, io);
    int r;
    switch (io->op) {
    case DISK_READ:
    case DISK_WRITE:
        return disk_file_rw(io, 0);
    case DISK_FLUSH:
        return fdatasync(d->fd) == 0 ? 0 : -errno;
    case DISK_TRIM:
    case DISK_ZERO:
        r = file_zero(d, io);
        if (r == 0 && io->fua && fdatasync(d->fd) != 0)
            r = -errno;
        return r;
    case DISK_EXTENTS:
        return file_extents(d, io);
    }
    return -EINVAL;
}

/* ------------------------------------------------------------------------
 * Engines. */

const char *disk_engine_name(disk_engine_kind k)
{
    static const char *names[] = {"auto", "uring", "pool", "sync"};
    return names[k];
}

int disk_engine_init(disk_engine *e, disk *d, spindle_ctx *ctx, disk_engine_kind want,
                     int64_t inline_budget_ns)
{
#if NBD_HAVE_URING
    bool uring = spindle_has_io_uring(ctx);
#else
    bool uring = false; /* spindle built without liburing */
#endif
    bool pool = NBD_HAVE_POOL;
    if (want == ENGINE_AUTO)
        want = uring ? ENGINE_URING : pool ? ENGINE_POOL : ENGINE_SYNC;
    if ((want == ENGINE_URING && !uring) || (want == ENGINE_POOL && !pool))
        return -ENOTSUP;
    e->d = d;
    e->ctx = ctx;
    e->kind = want;
    disk_inline_init(&e->inl, inline_budget_ns);
    return 0;
}

void disk_submit(disk_engine *e, disk_io *io)
{
    io->moved = 0;
    io->d = e->d;
    io->fd = e->d->mem ? -1 : file_fd(e->d, io);
    /* Memory is no I/O: it is copied inline, whatever the engine. */
    if (e->d->mem || e->kind == ENGINE_SYNC) {
        e->inl.made += !e->d->mem && io->op == DISK_WRITE;
        io->done(io, disk_do_blocking(e->d, io));
        return;
    }
    if (disk_try_inline(&e->inl, io, e->kind == ENGINE_POOL))
        return;
    e->inl.handed += io->op == DISK_WRITE;
    /* Reads, writes and flushes go on the ring; trim, zeroing and extents
     * (fallocate and lseek, with fallbacks) are rare: the pool does them,
     * or without one the loop thread. */
#if NBD_HAVE_URING
    if (e->kind == ENGINE_URING &&
        (io->op == DISK_READ || io->op == DISK_WRITE || io->op == DISK_FLUSH)) {
        disk_uring_submit(io, e->ctx);
        return;
    }
#endif
#if NBD_HAVE_POOL
    disk_pool_submit(io, e->ctx);
#else
    io->done(io, disk_do_blocking(e->d, io));
#endif
}
