/* NBD transmission: requests checked and started on the disk engine, and
 * their replies (simple, or structured once negotiated) built when the I/O
 * completes, in whatever order it completes.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"

void request_free(nbd_req *r)
{
    if (r->buf) {
        worker_buf_put(r->c->w, r->buf, r->buf_size);
        r->c->buf_bytes -= r->buf_size;
    }
    free(r);
}

static void req_release(out_item *o)
{
    request_free((nbd_req *)o);
}

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

/* The engine's completion: on the loop thread, after the I/O. */
static void req_io_done(disk_io *io, int ret)
{
    nbd_req *r = (nbd_req *)((char *)io - offsetof(nbd_req, io));
    conn *c = r->c;
    c->inflight--;
    if (c->fd < 0) { /* the client went away meanwhile */
        request_free(r);
        conn_put(c);
        return;
    }
    req_reply(r, nbd_error(ret));
    conn_reply_ready(c);
    conn_put(c);
}

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
void request_start(conn *c, nbd_req *r)
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
bool request_parse(conn *c, const uint8_t *h)
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
        c->buf_bytes += need;
    }
    if (r->type == NBD_CMD_WRITE && r->len > 0) {
        c->rx = r; /* its payload follows */
        return true;
    }
    request_start(c, r);
    return true;
}

