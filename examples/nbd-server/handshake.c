/* The NBD handshake ("fixed newstyle" option haggling): the client asks
 * for the list of exports, details of one, structured replies, metadata
 * contexts, and finally picks the export (NBD_OPT_GO, or the older
 * NBD_OPT_EXPORT_NAME); each option gets one or more replies. Serves one
 * export, named by the server (the default export, "").
 * SPDX-License-Identifier: MIT */
#include <string.h>

#include "conn.h"

/* Queue an option reply of type with len bytes of payload; the caller
 * fills them in through the pointer returned (NULL: out of memory, and the
 * connection is closed). */
static uint8_t *opt_reply_new(conn *c, uint32_t opt, uint32_t type, uint32_t len)
{
    uint8_t *p = conn_queue_bytes(c, 20 + len);
    if (!p)
        return NULL;
    p = put64(p, NBD_REP_MAGIC);
    p = put32(p, opt);
    p = put32(p, type);
    return put32(p, len);
}

void handshake_reply(conn *c, uint32_t opt, uint32_t type)
{
    opt_reply_new(c, opt, type, 0);
}

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
        handshake_reply(c, opt, NBD_REP_ERR_INVALID);
        return;
    }
    uint32_t nlen = get32(d);
    if (nlen > len - 6 || 4 + nlen + 2 + 2u * get16(d + 4 + nlen) != len) {
        handshake_reply(c, opt, NBD_REP_ERR_INVALID);
        return;
    }
    if (!export_known(c, d + 4, nlen)) {
        handshake_reply(c, opt, NBD_REP_ERR_UNKNOWN);
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
    handshake_reply(c, opt, NBD_REP_ACK);
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
        handshake_reply(c, opt, NBD_REP_ERR_INVALID);
        return;
    }
    /* Walk the queries once to check lengths before answering anything. */
    uint32_t nlen = len >= 4 ? get32(d) : UINT32_MAX;
    if (nlen > len - 8 || len < 8) {
        handshake_reply(c, opt, NBD_REP_ERR_INVALID);
        return;
    }
    uint32_t nq = get32(d + 4 + nlen), pos = 8 + nlen;
    bool match = !set && nq == 0; /* LIST with no query: everything */
    for (uint32_t i = 0; i < nq; i++) {
        if (len - pos < 4 || get32(d + pos) > len - pos - 4) {
            handshake_reply(c, opt, NBD_REP_ERR_INVALID);
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
        handshake_reply(c, opt, NBD_REP_ERR_INVALID);
        return;
    }
    if (!export_known(c, d + 4, nlen)) {
        handshake_reply(c, opt, NBD_REP_ERR_UNKNOWN);
        return;
    }
    if (match) {
        uint8_t *p = opt_reply_new(c, opt, NBD_REP_META_CONTEXT, 4 + ctx_len);
        if (!p)
            return;
        memcpy(put32(p, set ? NBD_META_ID_ALLOCATION : 0), ctx_name, ctx_len);
        c->meta_alloc = set;
    }
    handshake_reply(c, opt, NBD_REP_ACK);
}

/* One option, its data complete in d. */
void handshake_option(conn *c, uint32_t opt, const uint8_t *d, uint32_t len)
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
        if (!(p = conn_queue_bytes(c, 10 + (c->no_zeroes ? 0 : 124))))
            return;
        put16(put64(p, s->disk.size), transmission_flags(c));
        c->phase = PHASE_TRANSMISSION;
        return;
    case NBD_OPT_ABORT:
        handshake_reply(c, opt, NBD_REP_ACK);
        c->draining = true;
        return;
    case NBD_OPT_LIST:
        if (len) {
            handshake_reply(c, opt, NBD_REP_ERR_INVALID);
            return;
        }
        uint32_t nlen = (uint32_t)strlen(s->export_name), dlen = (uint32_t)strlen(s->disk.name);
        if (!(p = opt_reply_new(c, opt, NBD_REP_SERVER, 4 + nlen + dlen)))
            return;
        p = put32(p, nlen);
        memcpy(p, s->export_name, nlen);
        memcpy(p + nlen, s->disk.name, dlen); /* the description */
        handshake_reply(c, opt, NBD_REP_ACK);
        return;
    case NBD_OPT_INFO:
    case NBD_OPT_GO:
        opt_info_go(c, opt, d, len);
        return;
    case NBD_OPT_STRUCTURED_REPLY:
        if (len || c->structured) {
            handshake_reply(c, opt, NBD_REP_ERR_INVALID);
            return;
        }
        c->structured = true;
        handshake_reply(c, opt, NBD_REP_ACK);
        return;
    case NBD_OPT_LIST_META_CONTEXT:
    case NBD_OPT_SET_META_CONTEXT:
        opt_meta(c, opt, d, len);
        return;
    default: /* STARTTLS (no TLS here) and anything newer */
        handshake_reply(c, opt, NBD_REP_ERR_UNSUP);
        return;
    }
}

