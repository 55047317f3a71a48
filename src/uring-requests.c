/* User requests on the context's ring: spindle_add_sqe().
 * SPDX-License-Identifier: MIT
 *
 * Each request gets a small record (done, opaque) whose address, tagged,
 * is the SQE's user_data; the fd monitor's dispatch step routes its CQEs
 * here. Records are kept on a list while in flight, so that
 * spindle_ctx_free() can cancel them, and recycled through a short free
 * list, since a storage loop queues and completes them at a high rate.
 */
#include "uring.h"
#include "spindle-uring.h"

#include <errno.h>
#include <stdlib.h>

#define SPARE_MAX 256

struct sp_uring_req {
    spindle_cqe_fn *done;
    void *opaque;
    sp_uring_req *prev, *next;
};

_Static_assert(_Alignof(sp_uring_req) > SP_RING_TAG_MASK,
               "the tag lives in the record address's low bits");

bool spindle_has_io_uring(spindle_ctx *ctx)
{
    return ctx && ctx->uring;
}

static sp_uring_req *req_alloc(sp_uring *u)
{
    sp_uring_req *r = u->spare;
    if (r) {
        u->spare = r->next;
        u->nspare--;
        return r;
    }
    return sp_malloc(sizeof(*r));
}

static void req_recycle(sp_uring *u, sp_uring_req *r)
{
    if (u->nspare >= SPARE_MAX) {
        free(r);
        return;
    }
    r->next = u->spare;
    u->spare = r;
    u->nspare++;
}

int spindle_add_sqe(spindle_ctx *ctx, spindle_sqe_prep_fn *prep,
                    spindle_cqe_fn *done, void *opaque)
{
    if (!ctx || !prep || !done) {
        return -EINVAL;
    }
    sp_uring *u = ctx->uring;
    if (!u) {
        return -ENOTSUP;
    }
    sp_uring_req *r = req_alloc(u);
    if (!r) {
        return -ENOMEM;
    }
    struct io_uring_sqe *sqe = sp_uring_get_sqe(ctx);
    if (!sqe) {
        req_recycle(u, r);
        return -EBUSY;
    }
    prep(sqe, opaque);
    /* Ours, whatever prep wrote: it routes the completion; and every
     * request must complete visibly, or its record would never be freed. */
    sqe->user_data = (uintptr_t)r | SP_RING_TAG_REQ;
    sqe->flags &= (__u8)~IOSQE_CQE_SKIP_SUCCESS;
    r->done = done;
    r->opaque = opaque;
    r->prev = NULL;
    r->next = u->reqs;
    if (u->reqs) {
        u->reqs->prev = r;
    }
    u->reqs = r;
    u->nreqs++;
    return 0;
}

bool sp_uring_req_complete(spindle_ctx *ctx, sp_uring_req *r,
                           const struct io_uring_cqe *cqe, bool call)
{
    sp_uring *u = ctx->uring;
    spindle_cqe_fn *done = r->done;
    void *opaque = r->opaque;
    if (!(cqe->flags & IORING_CQE_F_MORE)) {
        /* The last CQE: recycle first, so that done may queue anew. */
        if (r->prev) {
            r->prev->next = r->next;
        } else {
            u->reqs = r->next;
        }
        if (r->next) {
            r->next->prev = r->prev;
        }
        u->nreqs--;
        req_recycle(u, r);
    }
    if (call) {
        done(opaque, cqe);
    }
    return call;
}

void sp_uring_reqs_cancel(spindle_ctx *ctx)
{
    sp_uring *u = ctx->uring;
    for (sp_uring_req *r = u->reqs; r; r = r->next) {
        struct io_uring_sqe *sqe = sp_uring_get_sqe(ctx);
        if (!sqe) {
            return; /* what is left completes by itself, or times out */
        }
        /* Its own completion carries user_data 0 and is dropped. */
        io_uring_prep_cancel64(sqe, (uintptr_t)r | SP_RING_TAG_REQ, 0);
    }
}

void sp_uring_reqs_destroy(sp_uring *u)
{
    while (u->reqs) {
        sp_uring_req *r = u->reqs;
        u->reqs = r->next;
        free(r);
    }
    while (u->spare) {
        sp_uring_req *r = u->spare;
        u->spare = r->next;
        free(r);
    }
}
