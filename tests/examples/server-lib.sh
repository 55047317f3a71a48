# What the example servers' test scripts share (sourced, after
# `set -euo pipefail`): a scratch directory, fail/ok, and starting and
# stopping a server that prints `listening on 127.0.0.1:PORT` first.
# SPDX-License-Identifier: MIT

# need TOOL...: skip the test (exit 77) when a client is not installed.
need() {
    local tool
    for tool in "$@"; do
        if ! command -v "$tool" >/dev/null; then
            echo "SKIP: $tool is not installed (scripts/install-deps.sh check installs it)"
            exit 77
        fi
    done
}

# Failures are reported on fd 3, the test's own output: a check that fails
# inside a command whose output is discarded (a client run as
# `nbdinfo ... >/dev/null` that times out, say) must still say so. A
# command that fails outside an explicit check says so too before the
# script exits (set -e), instead of ending the test without a word.
exec 3>&1
set -E
trap 'echo "FAIL: line $LINENO: $BASH_COMMAND (status $?)" >&3' ERR

tmp=$(mktemp -d)
srv_pid=
cleanup() {
    local st=$?
    [ "$st" -eq 0 ] || [ "$st" -eq 77 ] || echo "(exit status $st)" >&3
    if [ -n "$srv_pid" ]; then
        kill -9 "$srv_pid" 2>/dev/null || true
        wait "$srv_pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&3
    if [ -s "$tmp/server.err" ]; then sed 's/^/  server: /' "$tmp/server.err" >&3; fi
    exit 1
}
ok() { echo "ok   $*"; }

# start_server PROGRAM ARGS...: start it (stderr to $tmp/server.err), read
# its first line; sets srv_pid and port. If the caller defines
# server_warm_up, it runs next: the fd count that stop_server comes back to
# is taken after it, once what a server sets up lazily on its first
# requests (a thread pool's notifier, say) exists.
start_server() {
    coproc SRV { exec "$@" 2>"$tmp/server.err"; }
    srv_pid=$SRV_PID
    local line
    read -r -t 30 -u "${SRV[0]}" line || fail "no 'listening on' line from $*"
    [[ $line =~ ^listening\ on\ 127\.0\.0\.1:([0-9]+)$ ]] || fail "first line was '$line'"
    port=${BASH_REMATCH[1]}
    echo "== $(basename "$1") ${*:2} (port $port)"
    if declare -F server_warm_up >/dev/null; then server_warm_up; fi
    fds_at_start=$(ls "/proc/$srv_pid/fd" | wc -l)
}

# stop_server: every connection's fds must be gone once the clients are
# (the server notices each EOF on its own time: wait for that, boundedly),
# then SIGTERM must stop it with status 0.
stop_server() {
    local fds i rc=0
    for i in $(seq 200); do
        fds=$(ls "/proc/$srv_pid/fd" | wc -l)
        [ "$fds" -le "$fds_at_start" ] && break
        sleep 0.05
    done
    [ "$fds" -le "$fds_at_start" ] || fail "fd leak: $fds_at_start fds at start, $fds at the end"
    kill -TERM "$srv_pid"
    wait "$srv_pid" || rc=$?
    srv_pid=
    [ "$rc" -eq 0 ] || fail "exit status $rc after SIGTERM"
    ok "no fd leaked ($fds_at_start fds), SIGTERM: exit 0"
}

# check_out_of_fds: lower the server's fd limit to what it has open plus
# two, and hold six connections open: the ones it cannot accept wait in
# the kernel's queue and keep the listening socket readable, and the server
# must not spin on them (well under half a CPU second in a second). Then
# the limit goes back up and the connections close; the caller checks that
# the server serves again.
check_out_of_fds() {
    local i c0 c1 ticks holder
    prlimit --pid "$srv_pid" --nofile=$((fds_at_start + 2)):
    python3 - "$port" >"$tmp/fds.out" 2>&1 <<'PY' &
import socket, sys, time
held = [socket.create_connection(("127.0.0.1", int(sys.argv[1]))) for _ in range(6)]
print("connected", flush=True)
time.sleep(3)
PY
    holder=$!
    for i in $(seq 200); do
        grep -q connected "$tmp/fds.out" 2>/dev/null && break
        sleep 0.05
    done
    grep -q connected "$tmp/fds.out" || fail "could not open 6 connections"
    c0=$(awk '{ print $14 + $15 }' "/proc/$srv_pid/stat")
    sleep 1
    c1=$(awk '{ print $14 + $15 }' "/proc/$srv_pid/stat")
    ticks=$(getconf CLK_TCK)
    [ $((c1 - c0)) -lt $((ticks / 2)) ] ||
        fail "out of fds: the server used $((c1 - c0)) of $ticks CPU ticks in a second"
    ok "out of fds: no busy loop ($((c1 - c0)) CPU ticks of $ticks in a second)"
    wait "$holder" || fail "the connections' holder failed: $(cat "$tmp/fds.out")"
    prlimit --pid "$srv_pid" --nofile=1024: || fail "prlimit: could not raise the limit again"
}
