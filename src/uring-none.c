/* Builds without liburing: no context is ever on io_uring.
 * SPDX-License-Identifier: MIT
 *
 * spindle-uring.h is not installed then (it includes <liburing.h>), but
 * the two functions exist, so that a program built against another spindle
 * still links and learns at run time that the ring is not there.
 */
#include "ctx.h"

#include <errno.h>

struct io_uring_sqe;
struct io_uring_cqe;
typedef void spindle_sqe_prep_fn(struct io_uring_sqe *sqe, void *opaque);
typedef void spindle_cqe_fn(void *opaque, const struct io_uring_cqe *cqe);

SPINDLE_API int spindle_add_sqe(spindle_ctx *ctx, spindle_sqe_prep_fn *prep,
                                spindle_cqe_fn *done, void *opaque);
SPINDLE_API bool spindle_has_io_uring(spindle_ctx *ctx);

bool sp_fdmon_io_uring_enable(spindle_ctx *ctx)
{
    (void)ctx;
    return false;
}

int spindle_add_sqe(spindle_ctx *ctx, spindle_sqe_prep_fn *prep,
                    spindle_cqe_fn *done, void *opaque)
{
    (void)opaque;
    return !ctx || !prep || !done ? -EINVAL : -ENOTSUP;
}

bool spindle_has_io_uring(spindle_ctx *ctx)
{
    (void)ctx;
    return false;
}
