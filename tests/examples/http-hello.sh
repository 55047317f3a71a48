#!/usr/bin/env bash
# http-hello (any of its builds: spindle, libuv, libev) against curl and raw
# sockets (socat): answers, keep-alive, pipelining in order, bad requests,
# clients that vanish, many at once; no fd leaked, exit 0 on SIGTERM. Then
# the same with -w (write interest toggled for every request) and -n (no
# busy polling: on io_uring, a cooperative ring).
#
#   http-hello.sh HTTP_HELLO
# SPDX-License-Identifier: MIT
set -euo pipefail

server=$1
. "$(dirname "$0")/server-lib.sh"
need curl socat python3 prlimit

# raw BYTES: send BYTES on one connection, half-close, print all the answer.
raw() {
    printf '%b' "$1" | socat -t 10 - "TCP:127.0.0.1:$port"
}

crlf() { printf '%s\r\n' "$@"; }
answer() { # answer STATUS [close] [head]: the exact bytes of one answer
    printf 'HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n' "$1"
    [ "${2:-}" = close ] && printf 'Connection: close\r\n'
    printf '\r\n'
    [ "${3:-}" = head ] || printf 'Hello, world!\n'
}

checks() {
    local url=http://127.0.0.1:$port
    [ "$(curl -sS "$url/")" = "Hello, world!" ] || fail "curl GET"
    ok "curl: GET answered with the body"
    curl -sSv "$url/a" "$url/b" >"$tmp/body" 2>"$tmp/curl.err"
    grep -qi 're-using existing connection' "$tmp/curl.err" || fail "keep-alive: $(cat "$tmp/curl.err")"
    [ "$(cat "$tmp/body")" = "$(printf 'Hello, world!\nHello, world!')" ] || fail "two GETs"
    ok "curl: two GETs on one kept-alive connection"
    curl -sSI "$url/" >"$tmp/head"
    grep -q '^HTTP/1.1 200 OK' "$tmp/head" && grep -q '^Content-Length: 14' "$tmp/head" ||
        fail "HEAD: $(cat "$tmp/head")"
    ok "curl: HEAD"
    [ "$(curl -s -o /dev/null -w '%{http_code}' -d x "$url/")" = 405 ] || fail "POST is not 405"
    ok "curl: POST gets 405"

    # Pipelining: four requests in one write, answered in order; the last
    # asks to close.
    raw "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nHEAD /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\nGET /4 HTTP/1.1\r\nConnection: close\r\n\r\n" >"$tmp/got"
    { answer '200 OK'; answer '200 OK' '' head; answer '200 OK'; answer '200 OK' close; } >"$tmp/want"
    cmp -s "$tmp/got" "$tmp/want" || fail "pipelined answers: $(cat -A "$tmp/got" | head -20)"
    ok "raw socket: 4 pipelined requests answered in order, then closed"

    # 2000 pipelined requests (more answers than the server buffers at once).
    { for i in $(seq 2000); do printf 'GET /%d HTTP/1.1\r\n\r\n' "$i"; done; } >"$tmp/many"
    socat -t 20 - "TCP:127.0.0.1:$port" <"$tmp/many" >"$tmp/got"
    [ "$(grep -c '^HTTP/1.1 200 OK' "$tmp/got")" = 2000 ] || fail "2000 pipelined: $(grep -c '^HTTP' "$tmp/got") answers"
    ok "raw socket: 2000 pipelined requests, 2000 answers"

    raw "GARBAGE\r\n\r\nGET / HTTP/1.1\r\n\r\n" >"$tmp/got"
    answer '400 Bad Request' close >"$tmp/want"
    cmp -s "$tmp/got" "$tmp/want" || fail "garbage: $(cat -A "$tmp/got")"
    ok "raw socket: a malformed request gets 400, then close (nothing after it answered)"
    { printf 'GET / HTTP/1.1\r\nX: '; head -c 9000 /dev/zero | tr '\0' a; printf '\r\n\r\n'; } >"$tmp/long"
    socat -t 10 - "TCP:127.0.0.1:$port" <"$tmp/long" >"$tmp/got"
    grep -q '^HTTP/1.1 431 ' "$tmp/got" || fail "9000-byte header: $(head -c 200 "$tmp/got")"
    ok "raw socket: a 9000-byte header gets 431"
    raw "GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc" | grep -q '^HTTP/1.1 400 ' || fail "GET with a body"
    ok "raw socket: a request with a body gets 400"
    raw "GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n" >"$tmp/got"
    answer '200 OK' close >"$tmp/want"
    cmp -s "$tmp/got" "$tmp/want" || fail "HTTP/1.0: $(cat -A "$tmp/got")"
    ok "raw socket: HTTP/1.0 without keep-alive: one answer, then close"

    # Clients that vanish: half a request; many requests, answers never read.
    printf 'GET / HT' | socat -u - "TCP:127.0.0.1:$port"
    socat -u - "TCP:127.0.0.1:$port" <"$tmp/many"
    # 50 clients at once.
    local pids=() i
    for i in $(seq 50); do
        curl -sS "$url/$i" >"$tmp/c$i" &
        pids+=($!)
    done
    for i in $(seq 50); do
        wait "${pids[$((i - 1))]}" || fail "curl client $i of 50 failed"
        [ "$(cat "$tmp/c$i")" = "Hello, world!" ] || fail "client $i of 50 got '$(cat "$tmp/c$i")'"
    done
    ok "vanishing clients survived; then 50 curl clients at once all answered"
}

start_server "$server" -t 2
checks
check_out_of_fds
[ "$(curl -sS "http://127.0.0.1:$port/")" = "Hello, world!" ] || fail "no service after the fd limit was raised"
ok "...and serving again once fds are free"
stop_server
start_server "$server" -w -n
checks
stop_server
echo "all http-hello checks passed"
