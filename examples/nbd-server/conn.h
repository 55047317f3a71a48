/* The NBD server's connections: what conn.c (the socket, the loop,
 * lifetime), handshake.c (option haggling) and requests.c (transmission)
 * share. A connection and everything in it belongs to one loop thread.
 * SPDX-License-Identifier: MIT */
#ifndef NBD_CONN_H
#define NBD_CONN_H

#include <endian.h>
#include <string.h>
#include <sys/uio.h>

#include "nbd-proto.h"
#include "server.h"

#define IN_BUF_SIZE (64u << 10) /* receive buffer: headers, options, small writes */
#define OPT_MAX_LEN (16u << 10) /* longest option data taken in */
#define MAX_INFLIGHT 128        /* requests per connection before we stop reading */
#define MAX_BUF_BYTES (64u << 20) /* data buffers held before we stop reading */
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
    bool flush_scheduled; /* flush_bh will send the replies queued */
    spindle_bh *flush_bh;
    int inflight;      /* requests whose I/O has not completed */
    size_t buf_bytes;  /* data buffers of requests not yet answered */
    /* Input: bytes in[pos, len) not parsed yet; a WRITE whose payload is
     * still arriving; payload bytes to throw away. */
    uint8_t *in;
    uint32_t in_pos, in_len;
    nbd_req *rx;
    uint64_t skip;
    /* Output: a queue of items, the first of which is sent from out_off. */
    out_item *out_head, **out_tail;
    size_t out_off;
};

/* Big-endian fields on the wire. */
static inline uint8_t *put16(uint8_t *p, uint16_t v)
{
    v = htobe16(v);
    memcpy(p, &v, 2);
    return p + 2;
}
static inline uint8_t *put32(uint8_t *p, uint32_t v)
{
    v = htobe32(v);
    memcpy(p, &v, 4);
    return p + 4;
}
static inline uint8_t *put64(uint8_t *p, uint64_t v)
{
    v = htobe64(v);
    memcpy(p, &v, 8);
    return p + 8;
}
static inline uint16_t get16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return be16toh(v);
}
static inline uint32_t get32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return be32toh(v);
}
static inline uint64_t get64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return be64toh(v);
}

/* conn.c */
void conn_put(conn *c);                   /* drop a reference */
void conn_close(conn *c);                 /* close the socket now (see conn.c) */
void conn_queue(conn *c, out_item *o);    /* queue o for sending */
void conn_kick(conn *c);                  /* send, read on or close, as due */
void conn_reply_ready(conn *c);           /* a completion queued a reply */
uint8_t *conn_queue_bytes(conn *c, uint32_t len); /* queue len zeroed bytes to fill */

/* handshake.c: one option, its data complete in d; a reply to opt of a
 * type that carries no data (an error, say). */
void handshake_option(conn *c, uint32_t opt, const uint8_t *d, uint32_t len);
void handshake_reply(conn *c, uint32_t opt, uint32_t type);
/* requests.c: a request header (NBD_REQUEST_SIZE bytes); false on a
 * protocol violation (drop the connection). */
bool request_parse(conn *c, const uint8_t *h);
/* requests.c: a request complete with its payload: check it, start it. */
void request_start(conn *c, nbd_req *r);
void request_free(nbd_req *r);

#endif
