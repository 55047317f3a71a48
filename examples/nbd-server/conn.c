/* One NBD connection on a spindle loop thread: its socket, its buffers, its
 * lifetime. What it says is in handshake.c (option haggling) and
 * requests.c (transmission): requests served concurrently and answered out
 * of order.
 *
 * How it sits on the loop:
 * - The socket is non-blocking and registered once, with a read and a
 *   write callback; spindle_set_fd_interest() then keeps the loop waiting
 *   for readable while the connection takes requests, and for writable only
 *   while replies wait for room in the socket's buffer.
 * - Each request becomes a disk_io (disk.h) handed to the thread's engine;
 *   its completion runs on this same loop thread, builds the reply and
 *   sends it. Replies leave in the order their I/O completes, which is what
 *   NBD allows: the client matches them by cookie.
 * - Nothing here ever blocks, and nothing needs a lock: a connection lives
 *   on one loop thread from the moment conn_start runs there.
 *
 * Lifetime: the connection holds one reference for its socket and one per
 * request whose I/O is in flight. Closing the socket (client gone, protocol
 * error, shutdown) drops the first; completions that arrive afterwards free
 * their request and drop theirs; the last one frees the connection. So a
 * client that vanishes mid-request never leaves an I/O writing into freed
 * memory.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"

static void conn_update(conn *c);
static void conn_process(conn *c);

/* ------------------------------------------------------------------------
 * Lifetime. */

void conn_put(conn *c)
{
    if (--c->refs > 0)
        return;
    worker *w = c->w;
    spindle_bh_delete(c->flush_bh); /* a scheduled one never runs */
    free(c->in);
    free(c);
    if (--w->n_conns == 0 && w->stopping)
        worker_drained(w);
}

/* Close the socket now: the client is gone, broke the protocol, or the
 * server is stopping. Queued replies are dropped; requests still in flight
 * finish on their own and then drop their reference. */
void conn_close(conn *c)
{
    if (c->fd < 0)
        return;
    /* Removing the handler before close(): the loop must never watch an fd
     * number that may be reused by the next accept. shutdown() tells the
     * client at once, even if something in the kernel still holds the
     * socket for a moment after close() (a request on an io_uring). */
    spindle_set_fd_handler(c->w->ctx, c->fd, false, NULL, NULL, NULL, NULL);
    shutdown(c->fd, SHUT_RDWR);
    close(c->fd);
    c->fd = -1;
    while (c->out_head) {
        out_item *o = c->out_head;
        c->out_head = o->next;
        o->release(o);
    }
    c->out_tail = &c->out_head;
    c->out_off = 0;
    if (c->rx)
        request_free(c->rx);
    c->rx = NULL;
    *(c->prev ? &c->prev->next : &c->w->conns) = c->next;
    if (c->next)
        c->next->prev = c->prev;
    conn_put(c);
}

/* ------------------------------------------------------------------------
 * Output. */

void conn_queue(conn *c, out_item *o)
{
    o->next = NULL;
    *c->out_tail = o;
    c->out_tail = &o->next;
}

/* Send what is queued, as far as the socket takes it: one sendmsg carries
 * many replies. Returns false if the connection was closed. */
static bool conn_flush(conn *c)
{
    while (c->out_head) {
        struct iovec iov[SEND_IOV];
        int n = 0;
        size_t skip = c->out_off;
        for (out_item *o = c->out_head; o && n < SEND_IOV - 1; o = o->next)
            for (int i = 0; i < o->niov; i++) {
                iov[n] = o->iov[i];
                if (skip >= iov[n].iov_len) { /* sent by an earlier call */
                    skip -= iov[n].iov_len;
                    continue;
                }
                iov[n].iov_base = (char *)iov[n].iov_base + skip;
                iov[n].iov_len -= skip;
                skip = 0;
                n++;
            }
        struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        /* MSG_NOSIGNAL: a client that vanished gives EPIPE, not SIGPIPE. */
        ssize_t sent = sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (sent < 0 && errno == EINTR)
            continue;
        if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return true; /* the write handler resumes once there is room */
        if (sent < 0) {
            conn_close(c);
            return false;
        }
        /* Release the items sent in full; keep the offset into the next. */
        size_t done = c->out_off + (size_t)sent;
        while (c->out_head) {
            out_item *o = c->out_head;
            size_t len = 0;
            for (int i = 0; i < o->niov; i++)
                len += o->iov[i].iov_len;
            if (done < len)
                break;
            done -= len;
            c->out_head = o->next;
            if (!c->out_head)
                c->out_tail = &c->out_head;
            o->release(o);
        }
        c->out_off = done;
    }
    return true;
}

/* Bytes to send, in one allocation with their queue item. */
typedef struct blob {
    out_item out;
    uint8_t data[];
} blob;

static void blob_release(out_item *o)
{
    free(o); /* the blob: o is its first member */
}

uint8_t *conn_queue_bytes(conn *c, uint32_t len)
{
    blob *b = malloc(sizeof *b + len);
    if (!b) {
        conn_close(c); /* cannot answer: the client would wait forever */
        return NULL;
    }
    memset(b->data, 0, len);
    b->out.iov[0] = (struct iovec){b->data, len};
    b->out.niov = 1;
    b->out.release = blob_release;
    conn_queue(c, &b->out);
    return b->data;
}

/* After something changed (a reply queued, room in the socket, a request
 * finished): send, read more, or close, whichever is due now. */
void conn_kick(conn *c)
{
    if (c->processing || c->fd < 0)
        return; /* conn_process does all of this when it returns */
    if (!conn_flush(c))
        return;
    conn_process(c);
}

/* A completion queued a reply (outside conn_process, which sends what it
 * queues itself). The first reply of an iteration goes out at once: a lone
 * request, as at queue depth 1, waits for nothing. Replies that complete
 * after it in the same iteration (an io_uring batch reaped together) wait
 * for flush_bh, a bottom half that runs early in the next iteration and
 * sends them all with one sendmsg. */
void conn_reply_ready(conn *c)
{
    if (c->processing || c->fd < 0 || c->flush_scheduled)
        return;
    c->flush_scheduled = true;
    spindle_bh_schedule(c->flush_bh);
    conn_kick(c);
}

static void on_flush(void *opaque)
{
    conn *c = opaque;
    c->flush_scheduled = false;
    c->refs++;
    conn_kick(c);
    conn_put(c);
}

/* ------------------------------------------------------------------------
 * Input. */

/* Enough requests in flight, or enough memory held for their data (a
 * client that sends reads and never reads the replies, say): stop reading
 * until some are answered. */
static bool conn_full(const conn *c)
{
    return c->inflight >= MAX_INFLIGHT || c->buf_bytes >= MAX_BUF_BYTES;
}

/* Whether the connection is waiting in the middle of a message. */
static bool mid_message(const conn *c)
{
    return c->rx || c->skip || c->in_pos < c->in_len;
}

/* Parse and act on everything complete in the input buffer. */
static void conn_parse(conn *c)
{
    while (c->fd >= 0 && !c->draining && !conn_full(c)) {
        uint32_t avail = c->in_len - c->in_pos;
        const uint8_t *p = c->in + c->in_pos;
        if (c->skip) {
            uint32_t n = avail < c->skip ? avail : (uint32_t)c->skip;
            c->skip -= n;
            c->in_pos += n;
            if (c->skip)
                return;
            continue;
        }
        if (c->rx) { /* a write's payload, partly in the buffer */
            nbd_req *r = c->rx;
            uint32_t n = r->len - r->have < avail ? r->len - r->have : avail;
            memcpy((char *)r->buf + r->have, p, n);
            r->have += n;
            c->in_pos += n;
            if (r->have < r->len)
                return;
            c->rx = NULL;
            request_start(c, r);
            continue;
        }
        switch (c->phase) {
        case PHASE_CLIENT_FLAGS: {
            if (avail < 4)
                return;
            uint32_t flags = get32(p);
            c->in_pos += 4;
            if (flags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
                conn_close(c); /* the protocol says: drop unknown flags */
                return;
            }
            c->no_zeroes = flags & NBD_FLAG_C_NO_ZEROES;
            c->phase = PHASE_OPTIONS;
            break;
        }
        case PHASE_OPTIONS: {
            if (avail < 16)
                return;
            if (get64(p) != NBD_OPTS_MAGIC) {
                conn_close(c);
                return;
            }
            uint32_t opt = get32(p + 8), len = get32(p + 12);
            if (len > OPT_MAX_LEN) {
                c->in_pos += 16;
                c->skip = len;
                handshake_reply(c, opt, NBD_REP_ERR_TOO_BIG);
                break;
            }
            if (avail < 16 + len)
                return;
            c->in_pos += 16 + len;
            handshake_option(c, opt, p + 16, len);
            break;
        }
        case PHASE_TRANSMISSION:
            if (avail < NBD_REQUEST_SIZE)
                return;
            c->in_pos += NBD_REQUEST_SIZE;
            if (!request_parse(c, p)) {
                conn_close(c);
                return;
            }
            break;
        }
    }
}

/* Read from the socket while there is something to read and room for it.
 * A write's payload beyond what the buffer holds goes straight into the
 * request's own buffer: large writes are copied once, by the kernel. */
static void conn_receive(conn *c)
{
    for (int round = 0; round < 8 && c->fd >= 0 && !c->draining && !conn_full(c); round++) {
        nbd_req *r = c->rx;
        void *dst;
        size_t room;
        if (r && c->in_pos == c->in_len) {
            dst = (char *)r->buf + r->have;
            room = r->len - r->have;
        } else {
            if (c->in_pos == c->in_len)
                c->in_pos = c->in_len = 0;
            else if (c->in_pos > IN_BUF_SIZE / 2 || c->in_len == IN_BUF_SIZE) {
                memmove(c->in, c->in + c->in_pos, c->in_len - c->in_pos);
                c->in_len -= c->in_pos;
                c->in_pos = 0;
            }
            dst = c->in + c->in_len;
            room = IN_BUF_SIZE - c->in_len;
        }
        ssize_t n = recv(c->fd, dst, room, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            /* End of stream (or an error). Between requests the client may
             * still read what is in flight; in the middle of one it broke
             * the protocol: drop the connection. */
            if (n < 0 || mid_message(c) || c->phase != PHASE_TRANSMISSION)
                conn_close(c);
            else
                c->draining = true;
            return;
        }
        if (dst == c->in + c->in_len)
            c->in_len += (uint32_t)n;
        else
            r->have += (uint32_t)n;
        if (r && r->have == r->len && c->rx == r) {
            c->rx = NULL;
            request_start(c, r);
        }
        conn_parse(c);
        /* Less than there was room for: the socket is drained for now. The
         * loop calls us again when more arrives (readiness is
         * level-triggered), so no recv() just to hear EAGAIN. */
        if ((size_t)n < room)
            return;
    }
}

/* ------------------------------------------------------------------------
 * The loop's callbacks. */

static void on_readable(void *opaque)
{
    conn *c = opaque;
    c->refs++; /* keep c alive until we are done with it */
    c->processing = true;
    conn_receive(c);
    c->processing = false;
    conn_kick(c);
    conn_put(c);
}

static void on_writable(void *opaque)
{
    conn *c = opaque;
    c->refs++;
    conn_kick(c);
    conn_put(c);
}

/* Tell the loop what the connection now waits for: readable while it takes
 * requests, writable while replies wait for room. The handler has both
 * callbacks from the start; spindle_set_fd_interest() switches between
 * them without allocating (on epoll, at most one epoll_ctl per change,
 * made before the loop's next wait). */
static void conn_update(conn *c)
{
    if (c->fd < 0)
        return;
    bool want_read = !c->draining && !c->shutdown && !conn_full(c);
    bool want_write = c->out_head != NULL;
    if (want_read == c->reg_read && want_write == c->reg_write)
        return;
    spindle_set_fd_interest(c->w->ctx, c->fd, want_read, want_write);
    c->reg_read = want_read;
    c->reg_write = want_write;
}

/* Act on the input already buffered, send, then close or (re)register. */
static void conn_process(conn *c)
{
    c->processing = true;
    conn_parse(c);
    c->processing = false;
    if (c->fd >= 0 && !conn_flush(c))
        return;
    if (c->fd < 0)
        return;
    bool idle = c->inflight == 0 && !c->out_head;
    if ((c->draining && idle && !c->rx) || (c->shutdown && c->inflight == 0)) {
        conn_close(c);
        return;
    }
    conn_update(c);
}

/* Runs on the worker's loop thread (a oneshot bottom half scheduled by
 * conn_hand_over): from here on, the connection belongs to this thread. */
static void conn_start(void *opaque)
{
    conn *c = opaque;
    worker *w = c->w;
    w->n_conns++;
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    /* Connections handed over before a shutdown started reach their loop
     * before worker_close_all does: both are bottom halves scheduled by the
     * main thread, and those run in the order they were scheduled. */
    c->shutdown = w->stopping;
    /* The greeting: magic, "IHAVEOPT", handshake flags. */
    c->refs++;
    uint8_t *p = NULL;
    c->flush_bh = spindle_bh_new(w->ctx, on_flush, c);
    if (!c->flush_bh ||
        spindle_set_fd_handler(w->ctx, c->fd, false, on_readable, on_writable, NULL, c) != 0)
        conn_close(c); /* out of memory */
    else
        p = conn_queue_bytes(c, 18);
    c->reg_read = c->reg_write = true;
    if (p) {
        p = put64(p, NBD_MAGIC);
        p = put64(p, NBD_OPTS_MAGIC);
        put16(p, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
        conn_kick(c);
    }
    conn_put(c);
}

void conn_hand_over(worker *w, int fd)
{
    conn *c = calloc(1, sizeof *c);
    if (c)
        c->in = malloc(IN_BUF_SIZE);
    if (!c || !c->in) {
        free(c);
        close(fd);
        return;
    }
    c->w = w;
    c->fd = fd;
    c->refs = 1;
    c->out_tail = &c->out_head;
    /* spindle_bh_oneshot may be called from any thread: conn_start runs in
     * a later iteration of w's loop, on w's thread. */
    if (spindle_bh_oneshot(w->ctx, conn_start, c) != 0) {
        free(c->in);
        free(c);
        close(fd);
    }
}

void worker_close_all(worker *w)
{
    w->stopping = true;
    conn *next;
    for (conn *c = w->conns; c; c = next) {
        next = c->next;
        c->shutdown = true;
        c->refs++;
        conn_kick(c);
        conn_put(c);
    }
    if (w->n_conns == 0)
        worker_drained(w);
}
