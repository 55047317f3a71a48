/* spindle-glib: a spindle context as a GLib event source.
 * SPDX-License-Identifier: MIT
 *
 * Link with libspindle-glib (pkg-config module spindle-glib). Attach the
 * source to a GMainContext and the context's work (fd handlers, bottom
 * halves, timers, thread-pool completions) runs inside that context's
 * iterations, g_main_loop_run for example, interleaved with GLib's own
 * sources. It is spindle's embedding API (spindle.h: spindle_get_fd,
 * spindle_prepare, spindle_check, spindle_dispatch) behind GSourceFuncs.
 */
#ifndef SPINDLE_GLIB_H
#define SPINDLE_GLIB_H

#include <glib.h>
#include <spindle.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A new source (floating reference: g_source_attach it, then
 * g_source_unref) that runs ctx when the GMainContext it is attached to
 * iterates. The GMainContext's thread then is ctx's loop thread: do not run
 * spindle_poll on ctx from another thread meanwhile. Wake-ups from other
 * threads (spindle_bh_schedule, spindle_notify, ...) wake that
 * GMainContext. Timers are waited for with GLib's millisecond timeouts,
 * rounded up: they fire up to 1 ms late, never early. Busy polling is off
 * (see spindle.h, Embedding). The source does not own ctx: destroy the
 * source (g_source_destroy) before spindle_ctx_free(ctx). Returns NULL
 * with errno EINVAL for a NULL ctx, or the errors of spindle_get_fd. */
SPINDLE_API GSource *spindle_glib_source_new(spindle_ctx *ctx);

#ifdef __cplusplus
}
#endif

#endif /* SPINDLE_GLIB_H */
