/* http-hello's HTTP code, shared by its three builds (see http.h).
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common.h"
#include "http.h"

static const char body[] = "Hello, world!\n";
#define ANSWER_MAX 256 /* the longest answer head plus body */

/* Append an answer with the given status line to c->out. */
static void answer(http_conn *c, const char *status, bool head_only, bool keep_alive_10)
{
    int n = snprintf(c->out + c->out_len, HTTP_OUT_SIZE - c->out_len,
                     "HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n%s\r\n%s",
                     status, sizeof body - 1,
                     c->closing ? "Connection: close\r\n"
                     : keep_alive_10 ? "Connection: keep-alive\r\n" : "",
                     head_only ? "" : body);
    c->out_len += (size_t)n;
}

/* If the header line [p, end) is `name: value`, the value (leading blanks
 * skipped), else NULL. */
static const char *header_value(const char *p, const char *end, const char *name)
{
    size_t nl = strlen(name);
    if ((size_t)(end - p) <= nl || strncasecmp(p, name, nl) || p[nl] != ':')
        return NULL;
    for (p += nl + 1; p < end && (*p == ' ' || *p == '\t'); p++)
        ;
    return p;
}

/* Whether the value [v, end) holds the token tok (case-insensitive). */
static bool has_token(const char *v, const char *end, const char *tok)
{
    size_t tl = strlen(tok);
    for (; v && v + tl <= end; v++)
        if (!strncasecmp(v, tok, tl))
            return true;
    return false;
}

/* Answer the request whose head is [req, req + len), the last 4 bytes
 * being the blank line's CRLFCRLF. */
static void answer_request(http_conn *c, const char *req, size_t len)
{
    const char *end = req + len - 2; /* up to the final CRLF */
    const char *eol = memmem(req, (size_t)(end - req), "\r\n", 2);
    const char *sp1 = memchr(req, ' ', (size_t)(eol - req));
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
    if (!sp1 || !sp2 || sp1 == req || sp2 == sp1 + 1 || eol - sp2 - 1 != 8 ||
        memcmp(sp2 + 1, "HTTP/1.", 7) || (sp2[8] != '0' && sp2[8] != '1')) {
        c->closing = true;
        answer(c, "400 Bad Request", false, false);
        return;
    }
    bool http10 = sp2[8] == '0', keep_alive_10 = false;
    bool has_body = false;
    for (const char *line = eol + 2; line < end;) {
        const char *next = memmem(line, (size_t)(end - line), "\r\n", 2);
        next = next ? next : end;
        const char *v;
        if ((v = header_value(line, next, "Connection"))) {
            if (has_token(v, next, "close"))
                c->closing = true;
            if (has_token(v, next, "keep-alive"))
                keep_alive_10 = http10;
        }
        /* Requests with a body are not served (no GET needs one). */
        if (header_value(line, next, "Transfer-Encoding") ||
            ((v = header_value(line, next, "Content-Length")) && strtoul(v, NULL, 10) != 0))
            has_body = true;
        line = next + 2;
    }
    if (http10 && !keep_alive_10)
        c->closing = true;
    size_t mlen = (size_t)(sp1 - req);
    bool get = mlen == 3 && !memcmp(req, "GET", 3), head = mlen == 4 && !memcmp(req, "HEAD", 4);
    if (!get && !head) {
        c->closing = true;
        answer(c, "405 Method Not Allowed", false, false);
    } else if (has_body) {
        c->closing = true;
        answer(c, "400 Bad Request", false, false);
    } else {
        answer(c, "200 OK", head, keep_alive_10 && !c->closing);
    }
}

/* Answer every complete request in c->in, in order, while there is room in
 * c->out; keep what is left (an incomplete request) for later. */
static void answer_all(http_conn *c)
{
    size_t pos = 0;
    while (!c->closing && c->out_len + ANSWER_MAX <= HTTP_OUT_SIZE) {
        const char *head = c->in + pos;
        const char *blank = memmem(head, c->in_len - pos, "\r\n\r\n", 4);
        if (!blank) {
            if (pos == 0 && c->in_len == HTTP_IN_SIZE) { /* a head too long */
                c->closing = true;
                answer(c, "431 Request Header Fields Too Large", false, false);
            }
            break;
        }
        size_t len = (size_t)(blank + 4 - head);
        answer_request(c, head, len);
        pos += len;
    }
    if (c->closing)
        pos = c->in_len; /* whatever follows is not answered */
    memmove(c->in, c->in + pos, c->in_len - pos);
    c->in_len -= pos;
}

/* Send what is queued. false: the connection broke. */
static bool send_out(http_conn *c)
{
    while (c->out_off < c->out_len) {
        /* MSG_NOSIGNAL: a peer that went away gives EPIPE, not SIGPIPE. */
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK;
        c->out_off += (size_t)n;
    }
    c->out_off = c->out_len = 0;
    return true;
}

static int wants(const http_conn *c)
{
    bool pending = c->out_off < c->out_len;
    /* Nothing left to send after answer_all means nothing complete is left
     * to answer either (it stops only when c->out is full). */
    if (c->closing || c->peer_done)
        return pending ? HTTP_WANT_WRITE : 0;
    return (pending ? HTTP_WANT_WRITE : 0) | (c->in_len < HTTP_IN_SIZE ? HTTP_WANT_READ : 0);
}

int http_on_readable(http_conn *c, bool send_now)
{
    ssize_t n = -1;
    int err = EAGAIN;
    /* (With the buffer full, recv would return 0, which means EOF.) */
    while (c->in_len < HTTP_IN_SIZE) {
        n = recv(c->fd, c->in + c->in_len, HTTP_IN_SIZE - c->in_len, MSG_DONTWAIT);
        err = errno;
        if (n >= 0 || err != EINTR)
            break;
    }
    if (n < 0 && err != EAGAIN && err != EWOULDBLOCK)
        return 0;
    if (n > 0)
        c->in_len += (size_t)n;
    if (n == 0) /* the client is done sending: answer its requests, close */
        c->peer_done = true;
    answer_all(c);
    if (send_now && !send_out(c))
        return 0;
    return wants(c);
}

int http_on_writable(http_conn *c)
{
    if (!send_out(c))
        return 0;
    answer_all(c);
    if (!send_out(c))
        return 0;
    return wants(c);
}

bool http_parse_args(int argc, char **argv, const char *name, http_opts *o)
{
    long v;
    *o = (http_opts){.port = 0, .threads = 1};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-w")) {
            o->toggle_write = true;
        } else if (!strcmp(argv[i], "-n")) {
            o->no_busy_polling = true;
        } else if (!strcmp(argv[i], "-p") && i + 1 < argc) {
            if (!example_parse_long("port", argv[++i], 0, 65535, &v))
                return false;
            o->port = (int)v;
        } else if (!strcmp(argv[i], "-t") && i + 1 < argc) {
            if (!example_parse_long("thread count", argv[++i], 1, 256, &v))
                return false;
            o->threads = (int)v;
        } else {
            fprintf(stderr, "usage: %s [-p PORT] [-t THREADS] [-w] [-n]\n", name);
            return false;
        }
    }
    return true;
}

http_conn *http_accept(int listen_fd)
{
    int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0)
        return NULL;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    http_conn *c = malloc(sizeof *c);
    if (!c) {
        close(fd);
        errno = ENOMEM;
        return NULL;
    }
    c->fd = fd;
    c->closing = c->peer_done = false;
    c->in_len = c->out_off = c->out_len = 0;
    c->loop_data = NULL;
    c->prev = c->next = NULL;
    c->interest = 0;
    return c;
}

void http_conn_free(http_conn *c)
{
    close(c->fd);
    free(c);
}

void http_conn_link(http_conn **list, http_conn *c)
{
    c->prev = NULL;
    c->next = *list;
    if (*list)
        (*list)->prev = c;
    *list = c;
}

void http_conn_unlink(http_conn **list, http_conn *c)
{
    *(c->prev ? &c->prev->next : list) = c->next;
    if (c->next)
        c->next->prev = c->prev;
}
