/* One NBD connection on a spindle loop thread: the handshake, then requests
 * served concurrently and answered out of order.
 *
 * How it sits on the loop:
 * - The socket is non-blocking and registered with spindle_set_fd_handler:
 *   a read handler while the connection accepts requests, a write handler
 *   only while replies are waiting because the socket buffer was full.
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
#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "nbd-proto.h"
#include "server.h"

#define IN_BUF_SIZE (64u << 10) /* receive buffer: headers, options, small writes */
#define OPT_MAX_LEN (16u << 10) /* longest option data taken in */
#define MAX_INFLIGHT 128        /* requests per connection before we stop reading */
#define MAX_OUT_BYTES (64u << 20) /* replies queued before we stop reading */
#define MAX_EXTENTS 512         /* extents per BLOCK_STATUS reply */
#define SEND_IOV 64             /* iovecs per sendmsg */

/* Something to send: up to two pieces (a header, then data), and what to do
 * once it is sent (or dropped because the connection closed). */
typedef struct out_item out_item;
struct out_item {
    out_item *next;
    struct iovec iov[2];
    int niov;
    void (*release)(out_item *o);
};

/* One transmission request, from its header to its reply. */
typedef struct nbd_req {
    out_item out; /* the reply; first, so an out_item is its request */
    conn *c;
    uint64_t cookie, off;
    uint32_t len;
    uint16_t type, flags;
    uint32_t buf_size; /* of buf, from the worker's buffer cache */
    void *buf;         /* READ/WRITE data, or BLOCK_STATUS extents */
    uint32_t have;     /* WRITE: payload bytes received so far */
    disk_io io;
    uint8_t hdr[32];   /* the reply's header */
} nbd_req;

/* A handshake reply: header and payload in one allocation. */
typedef struct opt_reply {
    out_item out;
    uint8_t data[];
} opt_reply;

typedef enum { PHASE_CLIENT_FLAGS, PHASE_OPTIONS, PHASE_TRANSMISSION } conn_phase;

struct conn {
    worker *w;
    conn *prev, *next; /* in w->conns while open */
    int fd;            /* -1 once closed */
    int refs;
    conn_phase phase;
    bool no_zeroes, structured, meta_alloc;
    bool draining;     /* read no more; close once every reply is out */
    bool shutdown;     /* server stopping: close once no I/O is in flight */
    bool processing;   /* inside conn_process: completions only queue */
    bool reg_read, reg_write; /* what is registered with the loop */
    int inflight;      /* requests whose I/O has not completed */
    /* Input: bytes in[pos, len) not parsed yet; a WRITE whose payload is
     * still arriving; payload bytes to throw away. */
    uint8_t *in;
    uint32_t in_pos, in_len;
    nbd_req *rx;
    uint64_t skip;
    /* Output: a queue of items, the first of which is sent from out_off. */
    out_item *out_head, **out_tail;
    size_t out_off, out_bytes;
};

static void conn_update(conn *c);
static void conn_process(conn *c);

/* ------------------------------------------------------------------------
 * Wire helpers. */

static uint8_t *put16(uint8_t *p, uint16_t v)
{
    v = htobe16(v);
    memcpy(p, &v, 2);
    return p + 2;
}
static uint8_t *put32(uint8_t *p, uint32_t v)
{
    v = htobe32(v);
    memcpy(p, &v, 4);
    return p + 4;
}
static uint8_t *put64(uint8_t *p, uint64_t v)
{
    v = htobe64(v);
    memcpy(p, &v, 8);
    return p + 8;
}
static uint16_t get16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return be16toh(v);
}
static uint32_t get32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return be32toh(v);
}
static uint64_t get64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return be64toh(v);
}

/* ------------------------------------------------------------------------
 * Lifetime. */

static void conn_put(conn *c)
{
    if (--c->refs > 0)
        return;
    worker *w = c->w;
    free(c->in);
    free(c);
    if (--w->n_conns == 0 && w->stopping)
        worker_drained(w);
}

static void req_free(nbd_req *r)
{
    if (r->buf)
        worker_buf_put(r->c->w, r->buf, r->buf_size);
    free(r);
}

static void req_release(out_item *o)
{
    req_free((nbd_req *)o);
}

/* Close the socket now: the client is gone, broke the protocol, or the
 * server is stopping. Queued replies are dropped; requests still in flight
 * finish on their own and then drop their reference. */
static void conn_close(conn *c)
{
    if (c->fd < 0)
        return;
    /* Removing the handler before close(): the loop must never watch an fd
     * number that may be reused by the next accept. */
    spindle_set_fd_handler(c->w->ctx, c->fd, false, NULL, NULL, NULL, NULL);
    close(c->fd);
    c->fd = -1;
    while (c->out_head) {
        out_item *o = c->out_head;
        c->out_head = o->next;
        o->release(o);
    }
    c->out_tail = &c->out_head;
    if (c->rx)
        req_free(c->rx);
    c->rx = NULL;
    *(c->prev ? &c->prev->next : &c->w->conns) = c->next;
    if (c->next)
        c->next->prev = c->prev;
    conn_put(c);
}

/* ------------------------------------------------------------------------
 * Output. */

static void conn_queue(conn *c, out_item *o)
{
    o->next = NULL;
    *c->out_tail = o;
    c->out_tail = &o->next;
    for (int i = 0; i < o->niov; i++)
        c->out_bytes += o->iov[i].iov_len;
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
        c->out_bytes -= (size_t)sent;
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

/* A handshake reply: option reply header plus len bytes of payload (the
 * caller fills them in through the returned pointer). */
static uint8_t *opt_reply_new(conn *c, uint32_t opt, uint32_t type, uint32_t len)
{
    opt_reply *r = malloc(sizeof *r + 20 + len);
    if (!r) {
        conn_close(c); /* cannot answer: the client would wait forever */
        return NULL;
    }
    uint8_t *p = put64(r->data, NBD_REP_MAGIC);
    p = put32(p, opt);
    p = put32(p, type);
    p = put32(p, len);
    r->out.iov[0] = (struct iovec){r->data, 20 + len};
    r->out.niov = 1;
    r->out.release = (void (*)(out_item *))free;
    conn_queue(c, &r->out);
    return p;
}

static void opt_reply_simple(conn *c, uint32_t opt, uint32_t type)
{
    opt_reply_new(c, opt, type, 0);
}

/* Raw bytes (the greeting, the NBD_OPT_EXPORT_NAME answer). */
static uint8_t *raw_new(conn *c, uint32_t len)
{
    opt_reply *r = malloc(sizeof *r + len);
    if (!r) {
        conn_close(c);
        return NULL;
    }
    memset(r->data, 0, len);
    r->out.iov[0] = (struct iovec){r->data, len};
    r->out.niov = 1;
    r->out.release = (void (*)(out_item *))free;
    conn_queue(c, &r->out);
    return r->data;
}

/* ------------------------------------------------------------------------
 * Handshake. */

static uint16_t transmission_flags(const conn *c)
{
    uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_CAN_MULTI_CONN;
    /* Every connection reaches the same file descriptor (or memory), so a
     * flush on one covers writes made on any: NBD_FLAG_CAN_MULTI_CONN lets
     * clients like nbdcopy open several connections. */
    if (c->w->srv->disk.readonly)
        f |= NBD_FLAG_READ_ONLY;
    else
        f |= NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM |
             NBD_FLAG_SEND_WRITE_ZEROES;
    if (c->structured)
        f |= NBD_FLAG_SEND_DF; /* reads are always answered in one chunk */
    return f;
}

static bool export_known(const conn *c, const uint8_t *name, uint32_t len)
{
    const char *e = c->w->srv->export_name;
    return len == strlen(e) && memcmp(name, e, len) == 0;
}

/* NBD_OPT_INFO and NBD_OPT_GO: name length, name, count of info requests,
 * the requests (16 bits each). */
static void opt_info_go(conn *c, uint32_t opt, const uint8_t *d, uint32_t len)
{
    if (len < 6) {
        opt_reply_simple(c, opt, NBD_REP_ERR_INVALID);
        return;
    }
    uint32_t nlen = get32(d);
    if (nlen > len - 6 || 4 + nlen + 2 + 2u * get16(d + 4 + nlen) != len) {
        opt_reply_simple(c, opt, NBD_REP_ERR_INVALID);
        return;
    }
    if (!export_known(c, d + 4, nlen)) {
        opt_reply_simple(c, opt, NBD_REP_ERR_UNKNOWN);
        return;
    }
    uint16_t n_info = get16(d + 4 + nlen);
    const uint8_t *info = d + 6 + nlen;
    const server *s = c->w->srv;
    uint8_t *p = opt_reply_new(c, opt, NBD_REP_INFO, 12);
    if (!p)
        return;
    p = put16(p, NBD_INFO_EXPORT);
    p = put64(p, s->disk.size);
    put16(p, transmission_flags(c));
    for (uint16_t i = 0; i < n_info; i++) {
        uint16_t want = get16(info + 2 * i);
        const char *text = want == NBD_INFO_NAME          ? s->export_name
                           : want == NBD_INFO_DESCRIPTION ? s->disk.name
                                                          : NULL;
        if (!text)
            continue; /* unknown requests are ignored; block sizes always come */
        uint32_t tlen = (uint32_t)strlen(text);
        if (!(p = opt_reply_new(c, opt, NBD_REP_INFO, 2 + tlen)))
            return;
        memcpy(put16(p, want), text, tlen);
    }
    /* Any offset and length are served (unaligned ones through the page
     * cache); 4 KiB is what is efficient. */
    if (!(p = opt_reply_new(c, opt, NBD_REP_INFO, 14)))
        return;
    p = put16(p, NBD_INFO_BLOCK_SIZE);
    p = put32(p, 1);
    p = put32(p, 4096);
    put32(p, NBD_MAX_PAYLOAD);
    opt_reply_simple(c, opt, NBD_REP_ACK);
    if (opt == NBD_OPT_GO)
        c->phase = PHASE_TRANSMISSION;
}

/* NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT: export name, then
 * queries. The one context is base:allocation. */
static void opt_meta(conn *c, uint32_t opt, const uint8_t *d, uint32_t len)
{
    static const char ctx_name[] = NBD_META_BASE_ALLOCATION;
    const uint32_t ctx_len = sizeof ctx_name - 1;
    bool set = opt == NBD_OPT_SET_META_CONTEXT;
    if (set)
        c->meta_alloc = false; /* a SET replaces earlier ones, even failing */
    if (!c->structured) {
        opt_reply_simple(c, opt, NBD_REP_ERR_INVALID);
        return;
    }
    /* Walk the queries once to check lengths before answering anything. */
    uint32_t nlen = len >= 4 ? get32(d) : UINT32_MAX;
    if (nlen > len - 8 || len < 8) {
        opt_reply_simple(c, opt, NBD_REP_ERR_INVALID);
        return;
    }
    uint32_t nq = get32(d + 4 + nlen), pos = 8 + nlen;
    bool match = !set && nq == 0; /* LIST with no query: everything */
    for (uint32_t i = 0; i < nq; i++) {
        if (len - pos < 4 || get32(d + pos) > len - pos - 4) {
            opt_reply_simple(c, opt, NBD_REP_ERR_INVALID);
            return;
        }
        uint32_t qlen = get32(d + pos);
        const uint8_t *q = d + pos + 4;
        if ((qlen == ctx_len && !memcmp(q, ctx_name, ctx_len)) ||
            (!set && qlen == 5 && !memcmp(q, "base:", 5)))
            match = true;
        pos += 4 + qlen;
    }
    if (pos != len) {
        opt_reply_simple(c, opt, NBD_REP_ERR_INVALID);
        return;
    }
    if (!export_known(c, d + 4, nlen)) {
        opt_reply_simple(c, opt, NBD_REP_ERR_UNKNOWN);
        return;
    }
    if (match) {
        uint8_t *p = opt_reply_new(c, opt, NBD_REP_META_CONTEXT, 4 + ctx_len);
        if (!p)
            return;
        memcpy(put32(p, set ? NBD_META_ID_ALLOCATION : 0), ctx_name, ctx_len);
        c->meta_alloc = set;
    }
    opt_reply_simple(c, opt, NBD_REP_ACK);
}

/* One option, its data complete in d. */
static void handle_option(conn *c, uint32_t opt, const uint8_t *d, uint32_t len)
{
    const server *s = c->w->srv;
    uint8_t *p;
    switch (opt) {
    case NBD_OPT_EXPORT_NAME:
        /* The old way in: no error reply is possible, so an unknown export
         * closes the connection. */
        if (!export_known(c, d, len)) {
            conn_close(c);
            return;
        }
        if (!(p = raw_new(c, 10 + (c->no_zeroes ? 0 : 124))))
            return;
        put16(put64(p, s->disk.size), transmission_flags(c));
        c->phase = PHASE_TRANSMISSION;
        return;
    case NBD_OPT_ABORT:
        opt_reply_simple(c, opt, NBD_REP_ACK);
        c->draining = true;
        return;
    case NBD_OPT_LIST:
        if (len) {
            opt_reply_simple(c, opt, NBD_REP_ERR_INVALID);
            return;
        }
        uint32_t nlen = (uint32_t)strlen(s->export_name), dlen = (uint32_t)strlen(s->disk.name);
        if (!(p = opt_reply_new(c, opt, NBD_REP_SERVER, 4 + nlen + dlen)))
            return;
        p = put32(p, nlen);
        memcpy(p, s->export_name, nlen);
        memcpy(p + nlen, s->disk.name, dlen); /* the description */
        opt_reply_simple(c, opt, NBD_REP_ACK);
        return;
    case NBD_OPT_INFO:
    case NBD_OPT_GO:
        opt_info_go(c, opt, d, len);
        return;
    case NBD_OPT_STRUCTURED_REPLY:
        if (len || c->structured) {
            opt_reply_simple(c, opt, NBD_REP_ERR_INVALID);
            return;
        }
        c->structured = true;
        opt_reply_simple(c, opt, NBD_REP_ACK);
        return;
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
        opt_meta(c, opt, d, len);
        return;
    default: /* STARTTLS (no TLS here) and anything newer */
        opt_reply_simple(c, opt, NBD_REP_ERR_UNSUP);
        return;
    }
}

/* ------------------------------------------------------------------------
 * Transmission: replies. */

/* Build the reply of r (err: 0 or an NBD error) and queue it. Structured
 * replies (when negotiated) answer reads with one data chunk and errors with
 * an error chunk; everything else gets the 16-byte simple reply. */
static void req_reply(nbd_req *r, uint32_t err)
{
    conn *c = r->c;
    uint8_t *p = r->hdr;
    out_item *o = &r->out;
    o->niov = 1;
    o->release = req_release;
    bool has_data = r->type == NBD_CMD_READ && r->len > 0;
    if (c->structured && (err || has_data || r->type == NBD_CMD_BLOCK_STATUS)) {
        uint16_t type = err ? NBD_REPLY_TYPE_ERROR
                        : has_data ? NBD_REPLY_TYPE_OFFSET_DATA
                        : NBD_REPLY_TYPE_BLOCK_STATUS;
        uint32_t payload = err ? 6 : has_data ? 8 + r->len : 4 + 8 * r->io.n_ext;
        p = put32(p, NBD_STRUCTURED_REPLY_MAGIC);
        p = put16(p, NBD_REPLY_FLAG_DONE);
        p = put16(p, type);
        p = put64(p, r->cookie);
        p = put32(p, payload);
        if (err) {
            p = put32(p, err);
            p = put16(p, 0); /* no message */
        } else if (has_data) {
            p = put64(p, r->off);
            o->iov[1] = (struct iovec){r->buf, r->len};
            o->niov = 2;
        } else {
            p = put32(p, NBD_META_ID_ALLOCATION);
            /* The extents go out from the buffer they were found in. */
            uint32_t *e = r->buf;
            for (uint32_t i = 0; i < 2 * r->io.n_ext; i++)
                e[i] = htobe32(e[i]);
            o->iov[1] = (struct iovec){r->buf, 8 * r->io.n_ext};
            o->niov = 2;
        }
    } else if (c->structured && r->type == NBD_CMD_READ) {
        /* An empty read: reads never get simple replies once structured. */
        p = put32(p, NBD_STRUCTURED_REPLY_MAGIC);
        p = put16(p, NBD_REPLY_FLAG_DONE);
        p = put16(p, NBD_REPLY_TYPE_NONE);
        p = put64(p, r->cookie);
        p = put32(p, 0);
    } else {
        p = put32(p, NBD_SIMPLE_REPLY_MAGIC);
        p = put32(p, err);
        p = put64(p, r->cookie);
        if (has_data && !err) {
            o->iov[1] = (struct iovec){r->buf, r->len};
            o->niov = 2;
        }
    }
    o->iov[0] = (struct iovec){r->hdr, (size_t)(p - r->hdr)};
    conn_queue(c, o);
}

/* Map a system error to the few the protocol knows. */
static uint32_t nbd_error(int neg_errno)
{
    switch (-neg_errno) {
    case 0:
        return 0;
    case EPERM:
    case EROFS:
        return NBD_EPERM;
    case ENOMEM:
        return NBD_ENOMEM;
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return NBD_ENOSPC;
    case EINVAL:
        return NBD_EINVAL;
    default:
        return NBD_EIO;
    }
}

/* After something changed (a reply queued, room in the socket, a request
 * finished): send, read more, or close, whichever is due now. */
static void conn_kick(conn *c)
{
    if (c->processing || c->fd < 0)
        return; /* conn_process does all of this when it returns */
    if (!conn_flush(c))
        return;
    conn_process(c);
}

/* The engine's completion: on the loop thread, after the I/O. */
static void req_io_done(disk_io *io, int ret)
{
    nbd_req *r = (nbd_req *)((char *)io - offsetof(nbd_req, io));
    conn *c = r->c;
    c->inflight--;
    if (c->fd < 0) { /* the client went away meanwhile */
        req_free(r);
        conn_put(c);
        return;
    }
    req_reply(r, nbd_error(ret));
    conn_kick(c);
    conn_put(c);
}

/* ------------------------------------------------------------------------
 * Transmission: requests. */

/* 0 if r may run, else the NBD error to answer it with. */
static uint32_t req_check(const conn *c, const nbd_req *r)
{
    const disk *d = &c->w->srv->disk;
    uint16_t allowed = NBD_CMD_FLAG_FUA;
    bool writes = false, ranged = true;
    switch (r->type) {
    case NBD_CMD_READ:
        if (c->structured)
            allowed |= NBD_CMD_FLAG_DF;
        if (r->len > NBD_MAX_PAYLOAD)
            return NBD_EINVAL;
        break;
    case NBD_CMD_WRITE:
    case NBD_CMD_TRIM:
        writes = true;
        break;
    case NBD_CMD_WRITE_ZEROES:
        writes = true;
        allowed |= NBD_CMD_FLAG_NO_HOLE;
        break;
    case NBD_CMD_FLUSH:
        ranged = false;
        break;
    case NBD_CMD_BLOCK_STATUS:
        if (!c->meta_alloc || r->len == 0)
            return NBD_EINVAL;
        allowed |= NBD_CMD_FLAG_REQ_ONE;
        break;
    default:
        return NBD_EINVAL; /* unknown command */
    }
    if (r->flags & ~allowed)
        return NBD_EINVAL;
    if (writes && d->readonly)
        return NBD_EPERM;
    if (ranged && (r->off > d->size || r->len > d->size - r->off))
        return r->type == NBD_CMD_WRITE || r->type == NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC
                                                                          : NBD_EINVAL;
    return 0;
}

/* A request is complete (its payload too): check it and start its I/O. */
static void req_start(conn *c, nbd_req *r)
{
    uint32_t err = req_check(c, r);
    if (err || (r->len == 0 && r->type != NBD_CMD_FLUSH)) {
        req_reply(r, err); /* nothing to do for an empty range */
        return;
    }
    static const disk_op ops[] = {
        [NBD_CMD_READ] = DISK_READ,   [NBD_CMD_WRITE] = DISK_WRITE,
        [NBD_CMD_FLUSH] = DISK_FLUSH, [NBD_CMD_TRIM] = DISK_TRIM,
        [NBD_CMD_WRITE_ZEROES] = DISK_ZERO, [NBD_CMD_BLOCK_STATUS] = DISK_EXTENTS,
    };
    r->io = (disk_io){
        .op = ops[r->type],
        .fua = r->flags & NBD_CMD_FLAG_FUA,
        .may_trim = !(r->flags & NBD_CMD_FLAG_NO_HOLE),
        .off = r->off,
        .len = r->len,
        .buf = r->buf,
        .done = req_io_done,
    };
    if (r->type == NBD_CMD_BLOCK_STATUS) {
        r->io.buf = NULL;
        r->io.ext = r->buf;
        r->io.max_ext = r->flags & NBD_CMD_FLAG_REQ_ONE ? 1 : MAX_EXTENTS;
    }
    c->inflight++;
    c->refs++; /* dropped by req_io_done */
    disk_submit(&c->w->eng, &r->io);
}

/* A 28-byte request header at h. Returns false on a protocol violation
 * (the connection must be dropped). */
static bool parse_request(conn *c, const uint8_t *h)
{
    if (get32(h) != NBD_REQUEST_MAGIC)
        return false;
    nbd_req *r = calloc(1, sizeof *r);
    if (!r)
        return false;
    r->c = c;
    r->flags = get16(h + 4);
    r->type = get16(h + 6);
    r->cookie = get64(h + 8);
    r->off = get64(h + 16);
    r->len = get32(h + 24);
    if (r->type == NBD_CMD_DISC) {
        /* No reply: answer what is in flight, then close. */
        free(r);
        c->draining = true;
        return true;
    }
    if (r->type == NBD_CMD_WRITE && r->len > NBD_MAX_PAYLOAD) {
        /* Too big to take: answer with an error and read past the data,
         * so the stream stays in step. */
        c->skip = r->len;
        req_reply(r, NBD_EINVAL);
        return true;
    }
    /* Reads longer than the maximum fail in req_check: no buffer for them. */
    uint32_t need = r->type == NBD_CMD_READ || r->type == NBD_CMD_WRITE
                        ? (r->len <= NBD_MAX_PAYLOAD ? r->len : 0)
                    : r->type == NBD_CMD_BLOCK_STATUS ? MAX_EXTENTS * 8
                                                      : 0;
    if (need) {
        r->buf = worker_buf_get(c->w, need);
        if (!r->buf) {
            if (r->type == NBD_CMD_WRITE)
                c->skip = r->len;
            req_reply(r, NBD_ENOMEM);
            return true;
        }
        r->buf_size = need;
    }
    if (r->type == NBD_CMD_WRITE && r->len > 0) {
        c->rx = r; /* its payload follows */
        return true;
    }
    req_start(c, r);
    return true;
}

/* ------------------------------------------------------------------------
 * Input. */

static bool conn_full(const conn *c)
{
    return c->inflight >= MAX_INFLIGHT || c->out_bytes >= MAX_OUT_BYTES;
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
            req_start(c, r);
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
                opt_reply_simple(c, opt, NBD_REP_ERR_TOO_BIG);
                break;
            }
            if (avail < 16 + len)
                return;
            c->in_pos += 16 + len;
            handle_option(c, opt, p + 16, len);
            break;
        }
        case PHASE_TRANSMISSION:
            if (avail < NBD_REQUEST_SIZE)
                return;
            c->in_pos += NBD_REQUEST_SIZE;
            if (!parse_request(c, p)) {
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
            req_start(c, r);
        }
        conn_parse(c);
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

/* Register what the connection now waits for: readable while it takes
 * requests, writable while replies wait for room. Only changes cost a call. */
static void conn_update(conn *c)
{
    if (c->fd < 0)
        return;
    bool want_read = !c->draining && !c->shutdown && !conn_full(c);
    bool want_write = c->out_head != NULL;
    if (want_read == c->reg_read && want_write == c->reg_write)
        return;
    int r = spindle_set_fd_handler(c->w->ctx, c->fd, false, want_read ? on_readable : NULL,
                                   want_write ? on_writable : NULL, NULL, c);
    if (r < 0) { /* out of memory: nothing would ever wake this connection */
        conn_close(c);
        return;
    }
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
    uint8_t *p = raw_new(c, 18);
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
        if (c)
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
