/* The context's io_uring ring, shared by the fd monitor
 * (fdmon-io_uring.c) and user requests (uring-requests.c).
 * SPDX-License-Identifier: MIT
 *
 * Only the loop thread touches the ring. The one part other threads reach
 * is the change queue, under the handler lock (list_lock).
 */
#ifndef SPINDLE_URING_H
#define SPINDLE_URING_H

#include <liburing.h>

#include "ctx.h"

/* A request's user_data: the address of its record (8-byte aligned) with a
 * tag in the low bits. 0 marks the monitor's own bookkeeping requests
 * (poll removals, cancellations), whose completions are dropped. */
enum {
    SP_RING_TAG_POLL = 1, /* an fd handler's multishot poll: sp_handler */
    SP_RING_TAG_REQ = 2,  /* a spindle_add_sqe() request: sp_uring_req */
    SP_RING_TAG_UPDATE = 3, /* a poll update (interest): sp_handler */
    SP_RING_TAG_MASK = 7,
};

typedef struct sp_uring_req sp_uring_req;

typedef struct sp_uring {
    struct io_uring ring;

    /* Records whose kernel request must be added or removed, in order;
     * list_lock. `owned` counts the ring-owned records not yet released:
     * the queue, the re-check set and the poll scratch never hold more, so
     * reserving that much up front keeps removal from ever failing. */
    sp_handler **changes;
    unsigned nchanges, changes_cap, owned;
    atomic_bool changes_pending; /* nchanges != 0, readable without lock */

    /* Loop thread. */
    sp_handler **recheck; /* reported fds that may still be ready */
    unsigned nrecheck, recheck_cap;
    unsigned polls_armed; /* poll requests whose last CQE is not reaped */
    unsigned removing;    /* ... of them with a removal sent */
    unsigned updating;    /* poll updates in flight */
    bool closing;         /* spindle_ctx_free: re-arm nothing */
    unsigned rounds;      /* ring_poll() calls, to space clock reads */
    int64_t slack_ns;     /* the loop thread's timer slack; -1: not read */
    int64_t recheck_stamp; /* when a spin first looked at the re-check set
                            * after the last dispatch; 0: not yet */
    /* Per fd (loop thread; grown when an fd is armed): the CQ tail seen
     * right after its handler last ran, or after its poll was armed. Kept
     * by fd rather than in the record, which has no room; a retired
     * record sharing the fd has its CQEs skipped anyway. */
    uint32_t *seq;
    unsigned seq_cap;

    /* User requests (loop thread): in flight, and records kept for reuse. */
    sp_uring_req *reqs;
    sp_uring_req *spare;
    unsigned nreqs, nspare;
} sp_uring;

/* A zeroed SQE, making room by submitting when the queue is full; NULL if
 * the kernel takes nothing (it is out of memory). */
struct io_uring_sqe *sp_uring_get_sqe(spindle_ctx *ctx);

/* user requests (uring-requests.c) */

/* Route a completion to its request's done(); the record is freed at the
 * request's last completion. Returns true (a completion is progress). */
bool sp_uring_req_complete(spindle_ctx *ctx, sp_uring_req *r,
                           const struct io_uring_cqe *cqe, bool call);
/* spindle_ctx_free: ask the kernel to cancel every request in flight. */
void sp_uring_reqs_cancel(spindle_ctx *ctx);
/* spindle_ctx_free, after the ring is gone: free every record. */
void sp_uring_reqs_destroy(sp_uring *u);

#endif
