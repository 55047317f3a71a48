/* spindle-uring: your own io_uring requests on a context's ring.
 * SPDX-License-Identifier: MIT
 *
 * A context on the io_uring back-end (spindle_backend_name() says
 * "io_uring") owns a ring that it also uses to watch its fds. This header
 * lets you put requests of your own on it (file reads and writes, sends,
 * timeouts, ...), prepared with liburing's io_uring_prep_* helpers, and get
 * each completion back as a callback on the loop thread, like QEMU's
 * aio_add_sqe(). Completions are found by busy polling without a system
 * call and count as progress.
 *
 * Installed only where spindle was built with liburing; link with
 * `pkg-config --libs spindle liburing`.
 */
#ifndef SPINDLE_URING_H_PUBLIC
#define SPINDLE_URING_H_PUBLIC

#include <liburing.h>
#include <stdbool.h>

#include "spindle.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Fill sqe (zeroed beforehand) with one request, typically with an
 * io_uring_prep_* helper. The library owns sqe->user_data (it routes the
 * completion) and clears IOSQE_CQE_SKIP_SUCCESS (each request gets its
 * done call); every other field and flag is yours, IOSQE_IO_LINK included.
 * Must not call into the context. */
typedef void spindle_sqe_prep_fn(struct io_uring_sqe *sqe, void *opaque);
/* A completion of the request: cqe->res and cqe->flags are the kernel's;
 * cqe is valid during the call only. */
typedef void spindle_cqe_fn(void *opaque, const struct io_uring_cqe *cqe);

/* Queue one request on the context's ring. prep fills its SQE now; the
 * request is submitted by the loop at its next kernel call or polling round
 * (in the same system call as the loop's own requests), and done(opaque,
 * cqe) runs on the loop thread in the dispatch step of a later iteration,
 * once per CQE: once for an ordinary request, once per completion for a
 * multishot one (the last without IORING_CQE_F_MORE). done may queue more
 * requests, and a nested spindle_poll() from done may run completions that
 * an outer iteration reaped; each runs once.
 *
 * Linked requests: call spindle_add_sqe once per SQE, in order, with
 * IOSQE_IO_LINK on all but the last; a full submission queue is flushed
 * without cutting a chain (unless the chain is longer than the queue,
 * 256 entries). A full queue is never an error.
 *
 * spindle_ctx_free() with requests in flight cancels them and waits until
 * the kernel has finished with each (so their buffers may be freed after
 * it returns); their done is not called.
 *
 * Returns 0; -EINVAL for a NULL ctx, prep or done; -ENOTSUP when ctx is not
 * on io_uring (spindle_has_io_uring() false); -ENOMEM; -EBUSY if the kernel
 * takes no request at all (it is out of memory). Loop thread only. O(1)
 * (a system call only when the queue is full). */
SPINDLE_API int spindle_add_sqe(spindle_ctx *ctx, spindle_sqe_prep_fn *prep,
                                spindle_cqe_fn *done, void *opaque);

/* Whether ctx runs on io_uring, so that spindle_add_sqe() works: an AUTO
 * or IO_URING context where the kernel allowed io_uring at creation. A
 * context never changes to or from io_uring later. false for NULL. Any
 * thread. */
SPINDLE_API bool spindle_has_io_uring(spindle_ctx *ctx);

#ifdef __cplusplus
}
#endif

#endif
