#!/usr/bin/env bash
# examples/echo-server against real socat clients (make check, suite
# 'example'):
#   1. 200 clients at once, each sending 1 MiB of its own random data and
#      comparing the echo byte for byte;
#   2. clients that vanish mid-transfer: readers that stop reading and exit
#      (their socket closes with data unread: a reset), writers that never
#      read and are killed, clients that connect and leave at once;
#   3. the server still echoes, and holds exactly the fds it held before
#      the clients came (/proc/PID/fd);
#   4. SIGTERM stops it with exit status 0; so does SIGINT while a client is
#      still connected (under ASan, LeakSanitizer checks that exit too).
# SPDX-License-Identifier: MIT
#
# Usage: echo-server.sh PATH/TO/echo-server. Exit 77 (skipped) without
# socat (scripts/install-deps.sh check installs it).
set -euo pipefail

server=$1
CLIENTS=${ECHO_CLIENTS:-200}
VANISHING=${ECHO_VANISHING:-20}
MIB=1048576

if ! command -v socat >/dev/null; then
    echo "socat is not installed: skipped"
    exit 77
fi

tmp=$(mktemp -d)
pid=
cleanup() {
    local status=$?
    [ -z "$pid" ] || kill -KILL "$pid" 2>/dev/null || true
    jobs -p | xargs -r kill -KILL 2>/dev/null || true
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*"
    echo "--- server stderr:"
    cat "$tmp/err" || true
    exit 1
}

# Start the server; its first line on stdout names the port.
start_server() {
    rm -f "$tmp/out"
    mkfifo "$tmp/out"
    "$server" -p 0 >"$tmp/out" 2>"$tmp/err" &
    pid=$!
    exec 3<"$tmp/out"
    local line
    read -r -t 30 line <&3 || fail "no first line from the server"
    [[ $line =~ ^listening\ on\ 127\.0\.0\.1:([0-9]+)$ ]] ||
        fail "unexpected first line: '$line'"
    port=${BASH_REMATCH[1]}
    echo "server $pid: $line"
}

# The server's open fds, but for an epoll set: the loop creates one, for
# good, when an AUTO context reaches 64 fds (phase 1 does that), so it is
# not a leak.
fd_count() {
    local n=0 f
    for f in "/proc/$pid/fd"/*; do
        [ "$(readlink "$f" 2>/dev/null)" = "anon_inode:[eventpoll]" ] || n=$((n + 1))
    done
    echo "$n"
}

# Wait (up to 30 s) until the server holds exactly $1 fds: it closes a
# vanished client's socket when it next hears from it.
wait_fds() {
    local want=$1 n
    for _ in $(seq 300); do
        n=$(fd_count)
        [ "$n" -eq "$want" ] && return 0
        sleep 0.1
    done
    ls -l "/proc/$pid/fd"
    ss -tn "sport = :$port" || true
    fail "server holds $n fds, expected $want"
}

# One client: send file $1, read the echo and compare it byte for byte.
# -t 60: after sending everything, wait up to 60 s for the rest of the echo.
echo_client() {
    timeout 120 socat -t 60 - "TCP:127.0.0.1:$port" <"$1" | cmp -s - "$1"
}

stop_server() { # signal
    kill "-$1" "$pid"
    local status=0
    wait "$pid" || status=$?
    exec 3<&-
    pid=
    [ "$status" -eq 0 ] || fail "server exited with status $status on SIG$1"
    grep -q "stopping" "$tmp/err" || fail "no 'stopping' message on SIG$1"
    echo "ok: SIG$1 stopped the server cleanly (exit status 0)"
}

start_server
fds_before=$(fd_count)

# 1. Every client its own random MiB.
head -c $((CLIENTS * MIB)) /dev/urandom | split -a 3 -d -b $MIB - "$tmp/in."
start=$(date +%s.%N)
pids=()
for f in "$tmp"/in.*; do
    echo_client "$f" &
    pids+=($!)
done
bad=0
for p in "${pids[@]}"; do
    wait "$p" || bad=$((bad + 1))
done
end=$(date +%s.%N)
[ "$bad" -eq 0 ] || fail "$bad of $CLIENTS clients got a wrong or short echo"
echo "ok: $CLIENTS clients at once, 1 MiB each, echoed byte for byte" \
     "($(echo "$start $end" | awk '{printf "%.1f", $2 - $1}') s)"

# 2. Clients that vanish mid-transfer.
pids=()
for _ in $(seq "$VANISHING"); do
    # Sends 8 MiB, reads 64 KiB of the echo, then its reader exits: socat
    # dies writing to the closed pipe, its socket closes with data unread.
    { cat "$tmp"/in.00{0..7} | socat - "TCP:127.0.0.1:$port" 2>/dev/null |
        head -c 65536 >/dev/null; } &
    pids+=($!)
    # Sends without ever reading, and is killed at some point while the
    # server may be blocked writing to it.
    timeout -s KILL 1 socat -u /dev/urandom "TCP:127.0.0.1:$port" \
        2>/dev/null &
    pids+=($!)
    # Connects and leaves.
    socat -u /dev/null "TCP:127.0.0.1:$port" &
    pids+=($!)
done
for p in "${pids[@]}"; do
    # Their exit statuses (and bash's "Killed" notices) are failures by
    # design.
    wait "$p" 2>/dev/null || true
done
kill -0 "$pid" 2>/dev/null || fail "the server died"
echo "ok: $((3 * VANISHING)) vanishing clients, the server is alive"

# 3. It still works, and every client's fd is closed.
echo_client "$tmp/in.000" || fail "echo after the vanishing clients"
wait_fds "$fds_before"
echo "ok: still echoes; $fds_before fds before the clients and after"

# 4. Signals.
stop_server TERM

start_server
fds_before=$(fd_count)
# A client that stays connected: its input is a FIFO that this script
# holds open.
mkfifo "$tmp/hold"
socat - "TCP:127.0.0.1:$port" <"$tmp/hold" >/dev/null &
exec 4>"$tmp/hold"
wait_fds $((fds_before + 1))
stop_server INT
exec 4>&-
wait
