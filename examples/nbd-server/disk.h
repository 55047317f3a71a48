/* The export's backing store, and the one small interface through which the
 * NBD server does its disk I/O.
 *
 * A disk is a file (or block device) or an anonymous memory area, shared by
 * every loop thread. Each loop thread has a disk_engine that does the I/O
 * for the requests received on that thread, asynchronously: disk_submit()
 * starts an operation and returns; the operation's done callback runs later,
 * on the same loop thread, inside spindle_poll(). Engines:
 *
 * - uring: the request goes on the loop's own io_uring (spindle_add_sqe);
 *   the loop sees its completion while busy polling, at no system call.
 * - pool: a worker of the context's thread pool does the blocking call
 *   (spindle_work_submit); the loop runs the completion.
 * - sync: the blocking call runs right there on the loop thread, and done
 *   runs before disk_submit returns. Fine for page-cache hits, bad for
 *   anything slow (the whole loop thread waits).
 *
 * AUTO picks uring on a context that runs on io_uring, else pool. Which
 * engines are built depends on the spindle underneath: uring needs its
 * io_uring support (spindle-uring.h, liburing), pool its thread pool
 * (spindle_work_submit); without either, sync serves everything.
 *
 * Memory exports are always served inline (memcpy): that is not I/O.
 * SPDX-License-Identifier: MIT */
#ifndef NBD_DISK_H
#define NBD_DISK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <spindle.h>

/* Data buffers are aligned to this, so O_DIRECT accepts them. */
#define DISK_BUF_ALIGN 4096

typedef struct disk {
    const char *name;  /* the path, or "memory" */
    uint64_t size;     /* bytes */
    int fd;            /* -1 for a memory export */
    int fd_direct;     /* O_DIRECT fd for aligned requests, or -1 */
    uint32_t direct_align; /* what O_DIRECT needs of offsets and lengths */
    uint8_t *mem;      /* memory export, else NULL */
    bool readonly;
} disk;

typedef enum {
    DISK_READ,    /* len bytes at off into buf */
    DISK_WRITE,   /* len bytes from buf at off */
    DISK_FLUSH,   /* everything written so far reaches stable storage */
    DISK_TRIM,    /* the range is no longer needed (reads back as zeroes here) */
    DISK_ZERO,    /* the range reads back as zeroes */
    DISK_EXTENTS, /* which parts of the range are holes: fills ext */
} disk_op;

/* One extent of DISK_EXTENTS: length and NBD_STATE_* flags. */
typedef struct disk_extent {
    uint32_t len, flags;
} disk_extent;

typedef struct disk_io disk_io;
/* ret: 0, or a negative errno. Runs on the loop thread that submitted. */
typedef void disk_done_fn(disk_io *io, int ret);

struct disk_io {
    disk_op op;
    bool fua;         /* WRITE, TRIM, ZERO: on stable storage before done */
    bool may_trim;    /* ZERO: may deallocate (the client allowed holes) */
    uint64_t off;
    uint32_t len;
    void *buf;        /* READ, WRITE: len bytes, DISK_BUF_ALIGN-aligned */
    disk_extent *ext; /* EXTENTS: room for max_ext; n_ext is filled in */
    uint32_t max_ext, n_ext;
    disk_done_fn *done;
    /* The engine's own: bytes already moved (a short read or write is
     * resubmitted for the rest), the disk, the fd chosen for it. */
    uint32_t moved;
    disk *d;
    int fd;
    spindle_ctx *ctx;
};

typedef enum { ENGINE_AUTO, ENGINE_URING, ENGINE_POOL, ENGINE_SYNC } disk_engine_kind;

/* A loop thread's own I/O (disk-inline.c): its budget for a buffered
 * write, its pause, and counts of the writes made. */
typedef struct disk_inline {
    int64_t budget_ns;    /* a write slower than this pauses them; 0: none */
    int64_t paused_until; /* CLOCK_MONOTONIC ns: writes go to the engine */
    int64_t pause_ns;     /* the next pause */
    bool nowait;          /* RWF_NOWAIT first (false once refused) */
    uint64_t made;        /* writes made on the loop thread */
    uint64_t slow;        /* ...of which took longer than the budget */
    uint64_t handed;      /* writes the engine made */
} disk_inline;

/* The default budget: well above a page-cache copy of 256 KiB and above
 * the waits for the ext4 journal that any writer meets now and then (0.5
 * to 3.3 ms measured, a few a second under a stream of 4 KiB writes: with
 * a budget of 500 us, 12 to 23 of them per nbd row of make bench, their
 * pauses sent 6-17% of the writes to the engine), but below a throttled
 * write: the kernel's dirty throttling aims at sleeps of 10 ms and more. */
#define DISK_INLINE_BUDGET_NS 5000000

typedef struct disk_engine {
    disk *d;
    spindle_ctx *ctx;
    disk_engine_kind kind;
    disk_inline inl;
} disk_engine;

/* Open path as the export (a regular file or a block device); direct asks
 * for O_DIRECT (the page cache bypassed) where requests are aligned.
 * 0 or -errno. */
int disk_open_file(disk *d, const char *path, bool readonly, bool direct);
/* A zero-filled memory export of size bytes (pages allocated on first
 * write). 0 or -errno. */
int disk_open_memory(disk *d, uint64_t size, bool readonly);
void disk_close(disk *d);

/* Set up the engine of the loop thread running ctx. want ENGINE_AUTO picks
 * uring when ctx runs on io_uring, else pool. inline_budget_ns: buffered
 * writes are made on the loop thread while each takes no longer (0: never;
 * disk-inline.c). Returns 0, or -ENOTSUP when the engine asked for is not
 * available in this build or on this ctx. */
int disk_engine_init(disk_engine *e, disk *d, spindle_ctx *ctx, disk_engine_kind want,
                     int64_t inline_budget_ns);
const char *disk_engine_name(disk_engine_kind k);
/* Start io; io->done runs later on this loop thread (or before the return,
 * for the sync engine and memory exports). Never fails by itself: errors
 * come through done. */
void disk_submit(disk_engine *e, disk_io *io);

/* The blocking implementation of every operation, for the sync and pool
 * engines (any thread). 0 or -errno. */
int disk_do_blocking(disk *d, disk_io *io);
/* A file read or write of io, from io->moved on, with preadv2/pwritev2
 * flags (a FUA write adds RWF_DSYNC). With RWF_NOWAIT: -EAGAIN where the
 * kernel would have blocked, io->moved saying how far it got. 0 or
 * -errno. */
int disk_file_rw(disk_io *io, int rw_flags);

/* disk-inline.c: do io right here if the kernel allows it without a long
 * wait (page-cache reads only when page_cache_reads; the uring engine's
 * ring tries those itself). True when io is done (io->done has run);
 * false: the engine does it, or the rest of it (io->moved). */
void disk_inline_init(disk_inline *in, int64_t budget_ns);
bool disk_try_inline(disk_inline *in, disk_io *io, bool page_cache_reads);

/* The engines' back-ends: they start io (its d and fd set) and call
 * io->done from the loop thread when it completes. */
void disk_uring_submit(disk_io *io, spindle_ctx *ctx);
void disk_pool_submit(disk_io *io, spindle_ctx *ctx);

#endif
