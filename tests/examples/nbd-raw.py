#!/usr/bin/env python3
# A raw NBD client for what real clients never send: bad options, requests
# out of range, unknown commands, oversize lengths, broken magic, clients
# that vanish mid-request. Each check names the behaviour it asserts; any
# failure exits 1.
#
#   nbd-raw.py PORT SIZE [--readonly]
#
# SIZE is the export's size. The checks make no successful write, so the
# export must be byte-identical afterwards (the calling script compares).
# SPDX-License-Identifier: MIT
import socket
import struct
import sys

NBD_MAGIC, OPTS_MAGIC, REP_MAGIC = 0x4E42444D41474943, 0x49484156454F5054, 0x3E889045565A9
REQ_MAGIC, SIMPLE_MAGIC, STRUCT_MAGIC = 0x25609513, 0x67446698, 0x668E33EF
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO = 1, 2, 3, 6, 7
OPT_STRUCTURED, OPT_LIST_META, OPT_SET_META = 8, 9, 10
REP_ACK, REP_SERVER, REP_INFO, REP_META = 1, 2, 3, 4
ERR = 0x80000000
REP_ERR_UNSUP, REP_ERR_INVALID, REP_ERR_UNKNOWN, REP_ERR_TOO_BIG = ERR + 1, ERR + 3, ERR + 6, ERR + 9
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_ZERO, CMD_BLOCK_STATUS = 0, 1, 2, 3, 4, 6, 7
FLAG_READ_ONLY = 1 << 1
CMD_FLAG_REQ_ONE, CMD_FLAG_FAST_ZERO = 1 << 3, 1 << 4
EPERM, EINVAL, ENOSPC = 1, 22, 28
REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_ERROR = 1, 5, 0x8001

port, size = int(sys.argv[1]), int(sys.argv[2])
readonly = "--readonly" in sys.argv
failures = 0


def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures += 1


def connect():
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recvn(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError("server closed the connection")
        buf += chunk
    return buf


def closed_by_server(s):
    """True if the server closes the connection (EOF, or a reset)."""
    try:
        while s.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def greet(s, flags=3):
    magic, opts, _hflags = struct.unpack(">QQH", recvn(s, 18))
    assert magic == NBD_MAGIC and opts == OPTS_MAGIC, "bad greeting"
    s.sendall(struct.pack(">I", flags))


def send_opt(s, opt, data=b""):
    s.sendall(struct.pack(">QII", OPTS_MAGIC, opt, len(data)) + data)


def opt_reply(s):
    magic, opt, typ, length = struct.unpack(">QIII", recvn(s, 20))
    assert magic == REP_MAGIC, "bad option reply magic"
    return opt, typ, recvn(s, length)


def go_data(name=b"", infos=()):
    return struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos)) + b"".join(
        struct.pack(">H", i) for i in infos)


def meta_data(queries, name=b""):
    return struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries)) + b"".join(
        struct.pack(">I", len(q)) + q for q in queries)


def go(s, name=b""):
    """NBD_OPT_GO; returns (reply type, size, transmission flags)."""
    send_opt(s, OPT_GO, go_data(name))
    esize = eflags = None
    while True:
        _opt, typ, data = opt_reply(s)
        if typ == REP_INFO and struct.unpack(">H", data[:2])[0] == 0:
            esize, eflags = struct.unpack(">QH", data[2:12])
        if typ != REP_INFO:
            return typ, esize, eflags


def session(structured=False, meta=False):
    """A connection in transmission; returns it and the metadata context id."""
    s = connect()
    meta_id = None
    greet(s)
    if structured:
        send_opt(s, OPT_STRUCTURED)
        assert opt_reply(s)[1] == REP_ACK
    if meta:
        send_opt(s, OPT_SET_META, meta_data([b"base:allocation"]))
        _o, typ, data = opt_reply(s)
        assert typ == REP_META and data[4:] == b"base:allocation"
        meta_id = struct.unpack(">I", data[:4])[0]
        assert opt_reply(s)[1] == REP_ACK
    typ, esize, _eflags = go(s)
    assert typ == REP_ACK and esize == size, "GO failed"
    return s, meta_id


def request(s, typ, off, length, flags=0, cookie=7, payload=b""):
    s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, flags, typ, cookie, off, length) + payload)


def simple_reply(s, data_len=0):
    magic, err, cookie = struct.unpack(">IIQ", recvn(s, 16))
    assert magic == SIMPLE_MAGIC, "expected a simple reply"
    return err, cookie, (recvn(s, data_len) if not err and data_len else b"")


def chunk(s):
    magic, flags, typ, cookie, length = struct.unpack(">IHHQI", recvn(s, 20))
    assert magic == STRUCT_MAGIC, "expected a structured reply chunk"
    return flags, typ, cookie, recvn(s, length)


# --- handshake --------------------------------------------------------------

s = connect()
greet(s)
send_opt(s, 99)
check(opt_reply(s)[1] == REP_ERR_UNSUP, "unknown option: NBD_REP_ERR_UNSUP")
send_opt(s, OPT_GO, go_data(b"nosuch"))
check(opt_reply(s)[1] == REP_ERR_UNKNOWN, "NBD_OPT_GO for an unknown export: NBD_REP_ERR_UNKNOWN")
send_opt(s, OPT_GO, b"\x00\x00\x00\x09ab")
check(opt_reply(s)[1] == REP_ERR_INVALID, "NBD_OPT_GO with a name longer than its data: INVALID")
send_opt(s, OPT_LIST, b"x")
check(opt_reply(s)[1] == REP_ERR_INVALID, "NBD_OPT_LIST with data: NBD_REP_ERR_INVALID")
send_opt(s, OPT_LIST)
_o, typ, data = opt_reply(s)
check(typ == REP_SERVER and struct.unpack(">I", data[:4])[0] == 0 and opt_reply(s)[1] == REP_ACK,
      "NBD_OPT_LIST: the default export, then ACK")
send_opt(s, OPT_SET_META, meta_data([b"base:allocation"]))
check(opt_reply(s)[1] == REP_ERR_INVALID, "SET_META_CONTEXT before structured replies: INVALID")
send_opt(s, 42, bytes(1 << 20))
check(opt_reply(s)[1] == REP_ERR_TOO_BIG, "a 1 MiB option: NBD_REP_ERR_TOO_BIG, its data skipped")
send_opt(s, OPT_STRUCTURED)
check(opt_reply(s)[1] == REP_ACK, "...and the next option is understood (structured replies: ACK)")
send_opt(s, OPT_LIST_META, meta_data([b"base:"]))
_o, typ, data = opt_reply(s)
check(typ == REP_META and data[4:] == b"base:allocation" and opt_reply(s)[1] == REP_ACK,
      "LIST_META_CONTEXT base: lists base:allocation")
send_opt(s, OPT_SET_META, meta_data([b"x-unknown:thing"]))
check(opt_reply(s)[1] == REP_ACK, "SET_META_CONTEXT of an unknown namespace selects nothing: ACK")
send_opt(s, OPT_INFO, go_data(b"", (1, 2, 3)))
infos = {}
while True:
    _o, typ, data = opt_reply(s)
    if typ != REP_INFO:
        break
    infos[struct.unpack(">H", data[:2])[0]] = data[2:]
check(typ == REP_ACK and struct.unpack(">Q", infos[0][:8])[0] == size and 3 in infos,
      "NBD_OPT_INFO: export size and block sizes, then ACK")
check(bool(struct.unpack(">H", infos[0][8:10])[0] & FLAG_READ_ONLY) == readonly,
      "the read-only flag says " + str(readonly))
send_opt(s, OPT_ABORT)
check(opt_reply(s)[1] == REP_ACK and closed_by_server(s), "NBD_OPT_ABORT: ACK, then close")
s.close()

s = connect()
greet(s, flags=0x80)
check(closed_by_server(s), "unknown client flags: the server drops the connection")
s.close()

s = connect()
greet(s)
s.sendall(struct.pack(">QII", 0x1234, OPT_GO, 0))
check(closed_by_server(s), "an option without the IHAVEOPT magic: connection dropped")
s.close()

s = connect()
greet(s)
send_opt(s, OPT_EXPORT_NAME, b"nosuch")
check(closed_by_server(s), "NBD_OPT_EXPORT_NAME for an unknown export: connection closed")
s.close()

s = connect()
greet(s, flags=1)  # no NBD_FLAG_C_NO_ZEROES: 124 bytes of zeroes follow
send_opt(s, OPT_EXPORT_NAME)
esize, eflags = struct.unpack(">QH", recvn(s, 10))
check(esize == size and recvn(s, 124) == bytes(124), "NBD_OPT_EXPORT_NAME: size, flags, zeroes")
request(s, CMD_READ, 0, 512, cookie=1)
err, cookie, _d = simple_reply(s, 512)
check(err == 0 and cookie == 1, "...then transmission works")
s.close()

# --- transmission, simple replies -------------------------------------------

s, _ = session()
request(s, CMD_READ, 0, 4096, cookie=11)
err, cookie, first = simple_reply(s, 4096)
check(err == 0 and cookie == 11 and len(first) == 4096, "read: data with the request's cookie")
request(s, CMD_READ, size - 4096, 8192, cookie=12)
check(simple_reply(s)[:2] == (EINVAL, 12), "read past the end: EINVAL")
request(s, CMD_READ, 1 << 62, 1, cookie=13)
check(simple_reply(s)[:2] == (EINVAL, 13), "read at an offset far past the end: EINVAL")
request(s, CMD_READ, 0, 64 << 20, cookie=14)
check(simple_reply(s)[:2] == (EINVAL, 14), "64 MiB read (over the maximum): EINVAL")
request(s, 99, 0, 512, cookie=15)
check(simple_reply(s)[:2] == (EINVAL, 15), "unknown command: EINVAL")
request(s, CMD_READ, 0, 512, flags=1 << 9, cookie=16)
check(simple_reply(s)[:2] == (EINVAL, 16), "unknown command flag: EINVAL")
request(s, CMD_BLOCK_STATUS, 0, 4096, cookie=17)
check(simple_reply(s)[:2] == (EINVAL, 17), "block status without a metadata context: EINVAL")
if not readonly:
    request(s, CMD_ZERO, 0, 4096, flags=CMD_FLAG_FAST_ZERO, cookie=18)
    check(simple_reply(s)[:2] == (EINVAL, 18), "write zeroes with FAST_ZERO (not offered): EINVAL")
    request(s, CMD_WRITE, size - 512, 1024, cookie=19, payload=bytes(1024))
    check(simple_reply(s)[:2] == (ENOSPC, 19), "write past the end: ENOSPC, payload skipped")
    request(s, CMD_ZERO, size, 512, cookie=20)
    check(simple_reply(s)[:2] == (ENOSPC, 20), "write zeroes past the end: ENOSPC")
    request(s, CMD_TRIM, size - 512, 4096, cookie=21)
    check(simple_reply(s)[:2] == (EINVAL, 21), "trim past the end: EINVAL")
else:
    request(s, CMD_WRITE, 0, 512, cookie=22, payload=bytes(512))
    check(simple_reply(s)[:2] == (EPERM, 22), "read-only: write gets EPERM")
    request(s, CMD_TRIM, 0, 512, cookie=23)
    check(simple_reply(s)[:2] == (EPERM, 23), "read-only: trim gets EPERM")
    request(s, CMD_ZERO, 0, 512, cookie=24)
    check(simple_reply(s)[:2] == (EPERM, 24), "read-only: write zeroes gets EPERM")
big = (32 << 20) + 4096
request(s, CMD_WRITE, 0, big, cookie=25, payload=bytes(big))
check(simple_reply(s)[:2] == (EINVAL, 25), "write over the maximum: EINVAL, payload skipped")
request(s, CMD_READ, 0, 4096, cookie=26)
err, cookie, again = simple_reply(s, 4096)
check(err == 0 and cookie == 26 and again == first, "...and the stream is still in step")
# Pipelined requests: every one answered once, with its own cookie.
for i in range(200):
    request(s, CMD_READ, (i * 4096) % (size - 4096), 4096, cookie=1000 + i)
seen = sorted(simple_reply(s, 4096)[1] for _ in range(200))
check(seen == list(range(1000, 1200)), "200 pipelined reads: 200 replies, cookies matched")
request(s, CMD_READ, 0, 512, cookie=27)
request(s, CMD_DISC, 0, 0)
check(simple_reply(s, 512)[:2] == (0, 27) and closed_by_server(s),
      "NBD_CMD_DISC: requests before it answered, then close")
s.close()

# --- structured replies ------------------------------------------------------

s, meta_id = session(structured=True, meta=True)
request(s, CMD_READ, 4096, 8192, cookie=31)
flags, typ, cookie, data = chunk(s)
check(flags & 1 and typ == REPLY_TYPE_OFFSET_DATA and cookie == 31 and
      struct.unpack(">Q", data[:8])[0] == 4096 and len(data) == 8 + 8192,
      "structured read: one OFFSET_DATA chunk, flagged done")
request(s, CMD_READ, size, 512, cookie=32)
flags, typ, cookie, data = chunk(s)
check(flags & 1 and typ == REPLY_TYPE_ERROR and struct.unpack(">I", data[:4])[0] == EINVAL,
      "structured read past the end: an ERROR chunk with EINVAL")
request(s, CMD_BLOCK_STATUS, 0, size, cookie=33)
flags, typ, cookie, data = chunk(s)
ctx_id = struct.unpack(">I", data[:4])[0]
extents = [struct.unpack(">II", data[i:i + 8]) for i in range(4, len(data), 8)]
check(typ == REPLY_TYPE_BLOCK_STATUS and ctx_id == meta_id and extents and
      all(e[0] > 0 for e in extents) and sum(e[0] for e in extents) <= size,
      "block status: extents of base:allocation, none empty, within the export")
request(s, CMD_BLOCK_STATUS, 0, 4096, flags=CMD_FLAG_REQ_ONE, cookie=34)
flags, typ, cookie, data = chunk(s)
check(len(data) == 12 and 0 < struct.unpack(">I", data[4:8])[0] <= 4096,
      "block status with REQ_ONE: one extent, no longer than asked")
request(s, CMD_FLUSH, 0, 0, cookie=35)
check(simple_reply(s)[:2] == (0, 35), "flush: success")
s.close()

# --- broken and vanishing clients --------------------------------------------

s, _ = session()
s.sendall(struct.pack(">IHHQQI", 0xDEADBEEF, 0, CMD_READ, 1, 0, 512))
check(closed_by_server(s), "a request with a bad magic: connection dropped")
s.close()

# A write whose client goes away halfway through the payload: never applied.
s, _ = session()
request(s, CMD_WRITE, 0, 1 << 20, cookie=41, payload=b"\xee" * (1 << 19))
s.close()
# ... in the middle of a header ...
s, _ = session()
s.sendall(struct.pack(">IHH", REQ_MAGIC, 0, CMD_READ))
s.close()
# ... and with 64 reads in flight whose replies it never reads.
s, _ = session()
for i in range(64):
    request(s, CMD_READ, 0, 8 << 20, cookie=i)
s.close()

s, _ = session()
request(s, CMD_READ, 0, 4096, cookie=51)
err, cookie, after = simple_reply(s, 4096)
check(err == 0 and after == first, "after vanishing clients: the server answers, data unchanged")
request(s, CMD_DISC, 0, 0)
s.close()

print("%d check(s) failed" % failures if failures else "all checks passed")
sys.exit(1 if failures else 0)
