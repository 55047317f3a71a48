/* spindle-glib: a spindle context as a GSource.
 * SPDX-License-Identifier: MIT
 *
 * GLib's iteration is prepare (every source says how long the context may
 * sleep), one poll over every source's fds, check (is the source ready?),
 * dispatch. spindle's embedding API splits its own iteration the same way,
 * so each GSourceFunc is one call: the source's only fd is
 * spindle_get_fd(), and what GLib's poll said of it is passed to
 * spindle_check, which then needs no system call. GLib may call prepare
 * without check (when a source of higher priority is ready); the next
 * prepare simply announces again, as spindle_prepare allows.
 */
#include "spindle-glib.h"

#include <errno.h>

typedef struct spindle_gsource {
    GSource source;
    spindle_ctx *ctx;
    gpointer tag;
} spindle_gsource;

/* When another thread is inside this context's spindle_poll (a misuse),
 * look again this often rather than spin or sleep for ever. */
#define BUSY_RETRY_MS 10

static gboolean source_prepare(GSource *s, gint *timeout_ms)
{
    spindle_gsource *sg = (spindle_gsource *)s;
    int64_t ns = spindle_prepare(sg->ctx);
    if (ns == 0) {
        *timeout_ms = 0;
        return TRUE;
    }
    if (ns == -1) {
        *timeout_ms = -1;
    } else if (ns < 0) {
        *timeout_ms = BUSY_RETRY_MS;
    } else {
        /* Rounded up: a timer never fires early. */
        int64_t ms = (ns + 999999) / 1000000;
        *timeout_ms = ms > G_MAXINT ? G_MAXINT : (gint)ms;
    }
    return FALSE;
}

static gboolean source_check(GSource *s)
{
    spindle_gsource *sg = (spindle_gsource *)s;
    return spindle_check(sg->ctx, g_source_query_unix_fd(s, sg->tag) != 0);
}

static gboolean source_dispatch(GSource *s, GSourceFunc cb, gpointer data)
{
    (void)cb;
    (void)data;
    spindle_dispatch(((spindle_gsource *)s)->ctx);
    return G_SOURCE_CONTINUE;
}

static GSourceFuncs source_funcs = {
    .prepare = source_prepare,
    .check = source_check,
    .dispatch = source_dispatch,
};

GSource *spindle_glib_source_new(spindle_ctx *ctx)
{
    if (!ctx) {
        errno = EINVAL;
        return NULL;
    }
    int fd = spindle_get_fd(ctx);
    if (fd < 0) {
        errno = -fd;
        return NULL;
    }
    GSource *s = g_source_new(&source_funcs, sizeof(spindle_gsource));
    spindle_gsource *sg = (spindle_gsource *)s;
    sg->ctx = ctx;
    sg->tag = g_source_add_unix_fd(s, fd, G_IO_IN);
    g_source_set_name(s, "spindle");
    /* A callback may iterate the GMainContext, as it may call spindle_poll
     * (spindle's iterations nest). It also spares GLib from taking the fd
     * out of its poll set around every dispatch, which costs two wake-ups
     * of its own context each time. */
    g_source_set_can_recurse(s, TRUE);
    return s;
}
