#!/usr/bin/env bash
# nbd-server against real NBD clients: nbdinfo and nbdcopy (libnbd-bin),
# qemu-img and qemu-io (qemu-utils), plus nbd-raw.py for the requests that
# real clients never send.
#
#   nbd-server.sh NBD_SERVER
#
# Every part checks data byte for byte: what the clients wrote is mirrored
# into a local copy of the image, and the export must equal it afterwards.
# The server must survive everything, leak no fd, and exit 0 on SIGTERM.
# SPDX-License-Identifier: MIT
set -euo pipefail

server=$1
here=$(cd "$(dirname "$0")" && pwd)
. "$here/server-lib.sh"
need nbdinfo nbdcopy qemu-img qemu-io python3 sha256sum prlimit

# Every client runs under a timeout: a hang fails the test at once, with
# the state of the server's sockets, rather than at meson's timeout.
client() {
    local rc=0
    timeout 120 "$@" || rc=$?
    [ "$rc" -ne 124 ] || fail "$1 did not finish in 120 s; sockets: $(ss -tan | grep ":$port " | tr -s ' ')"
    return "$rc"
}
for tool in nbdinfo nbdcopy qemu-img qemu-io; do
    eval "$tool() { client $tool \"\$@\"; }"
done

# Before the fd count: block status queries (served by the thread pool
# where there is one) on four connections, which reach every loop thread
# (connections go to them in turn; the tests use at most two).
server_warm_up() {
    uri=nbd://127.0.0.1:$port
    for i in 1 2 3 4; do nbdinfo --map "$uri" >/dev/null; done
    echo "   $(sed -n 's/^nbd-server: //p' "$tmp/server.err")"
}

# mirror FILE OFFSET LENGTH BYTE: what a qemu-io write of BYTE does, locally.
mirror() {
    head -c "$3" /dev/zero | tr '\0' "\\$(printf '%03o' "$4")" |
        dd of="$1" bs=64K oflag=seek_bytes seek="$2" conv=notrunc status=none
}

# same_as_export FILE WHAT: copy the whole export out and compare with FILE.
same_as_export() {
    nbdcopy "$uri" "$tmp/out.img"
    cmp -s "$tmp/out.img" "$1" || fail "$2: the export differs from the expected image"
    ok "$2"
}

# ---------------------------------------------------------------------------
# 1. A 256 MiB random image in and out, on two loop threads.
MiB=1048576
size=$((256 * MiB))
head -c "$size" /dev/urandom >"$tmp/src.img"
truncate -s "$size" "$tmp/export.img"
start_server "$server" -t 2 "$tmp/export.img"

nbdinfo --json "$uri" >"$tmp/info.json"
for want in '"export-size": '$size '"can_multi_conn": true' '"can_trim": true' \
            '"can_zero": true' '"can_fua": true' '"can_flush": true' '"is_read_only": false'; do
    grep -q "$want" "$tmp/info.json" || fail "nbdinfo: $want not in $(cat "$tmp/info.json")"
done
ok "nbdinfo: size, multi-conn, trim, zero, FUA, flush"
nbdinfo --list "$uri" | grep -q 'export="":' || fail "nbdinfo --list shows no default export"
ok "nbdinfo --list: the default export"
if nbdinfo nbd://127.0.0.1:$port/nosuch >/dev/null 2>&1; then fail "unknown export accepted"; fi
ok "nbdinfo of an unknown export: refused"

want=$(sha256sum <"$tmp/src.img")
nbdcopy --connections=4 "$tmp/src.img" "$uri"
[ "$(sha256sum <"$tmp/export.img")" = "$want" ] || fail "after nbdcopy in, the file differs"
ok "nbdcopy in (4 connections): the file's checksum matches"
qemu-img convert -f raw -O raw "$uri" "$tmp/out.img"
[ "$(sha256sum <"$tmp/out.img")" = "$want" ] || fail "qemu-img convert out: checksum differs"
ok "qemu-img convert out: checksum matches"
rm -f "$tmp/out.img"
nbdcopy "$uri" "$tmp/out.img"
[ "$(sha256sum <"$tmp/out.img")" = "$want" ] || fail "nbdcopy out: checksum differs"
ok "nbdcopy out: checksum matches"
rm -f "$tmp/out.img"

# data_checks MIRROR SLOTS: on the export at $uri, whose content MIRROR
# holds: pattern writes at random offsets (aligned or not, some with FUA:
# qemu-io's default cache mode, writethrough, would make every one FUA),
# one in each of SLOTS 4 MiB slots, read back with pattern checks; trim and
# write zeroes, read back as zeroes, a trimmed range reported as a hole; the
# whole export copied out and compared with MIRROR, into which each write
# was mirrored.
data_checks() {
    local img=$1 slots=$2 i off len byte fua writes=() reads=()
    for i in $(seq 0 $((slots - 1))); do
        off=$((i * 4 * MiB + RANDOM * 64 % (3 * MiB)))
        len=$((1 + RANDOM * 37 % (700 * 1024)))
        byte=$((i * 37 % 255 + 1))
        fua=$([ $((i % 4)) -eq 0 ] && echo -f || true)
        writes+=(-c "write -q $fua -P $byte $off $len")
        reads+=(-c "read -q -P $byte $off $len")
        mirror "$img" "$off" "$len" "$byte"
    done
    qemu-io -f raw -t writeback "${writes[@]}" "$uri" >"$tmp/qemu-io.out" 2>&1 || fail "qemu-io writes: $(cat "$tmp/qemu-io.out")"
    qemu-io -f raw "${reads[@]}" "$uri" >"$tmp/qemu-io.out" 2>&1 || fail "qemu-io reads: $(cat "$tmp/qemu-io.out")"
    [ ! -s "$tmp/qemu-io.out" ] || fail "qemu-io pattern check (seed $seed): $(head "$tmp/qemu-io.out")"
    ok "qemu-io: $slots pattern writes at random offsets read back (seed $seed)"

    qemu-io -f raw -c "discard -q $((4 * MiB)) $((8 * MiB))" -c "read -q -P 0 $((4 * MiB)) $((8 * MiB))" \
        -c "write -q -z $((20 * MiB + 3)) $((3 * MiB))" -c "read -q -P 0 $((20 * MiB + 3)) $((3 * MiB))" \
        -c "write -q -z -u $((30 * MiB)) $((2 * MiB))" -c "read -q -P 0 $((30 * MiB)) $((2 * MiB))" \
        "$uri" >"$tmp/qemu-io.out" 2>&1 || fail "qemu-io trim/zero: $(cat "$tmp/qemu-io.out")"
    [ ! -s "$tmp/qemu-io.out" ] || fail "trim/zero read back: $(cat "$tmp/qemu-io.out")"
    mirror "$img" $((4 * MiB)) $((8 * MiB)) 0
    mirror "$img" $((20 * MiB + 3)) $((3 * MiB)) 0
    mirror "$img" $((30 * MiB)) $((2 * MiB)) 0
    ok "qemu-io: trim, write zeroes (with and without unmap) read back as zeroes"
    nbdinfo --map "$uri" | awk -v at=$((4 * MiB)) '$1 == at && /hole/ { found = 1 } END { exit !found }' ||
        fail "block status: no hole at the trimmed range: $(nbdinfo --map "$uri")"
    ok "nbdinfo --map: the trimmed range is a hole"
    same_as_export "$img" "...and the whole export equals the mirrored image"
}

# 2. and 3.: pattern writes, trim, write zeroes.
seed=${NBD_TEST_SEED:-$$}
RANDOM=$seed
data_checks "$tmp/src.img" 64

# 4. Four clients at once, each writing and checking its own 16 MiB with its
# own pattern; then the whole export is checked.
pids=()
for k in 0 1 2 3; do
    off=$(((64 + 16 * k) * MiB))
    mirror "$tmp/src.img" "$off" $((16 * MiB)) $((0xa0 + k))
    qemu-io -f raw -c "write -q -P $((0xa0 + k)) $off $((16 * MiB))" \
        -c "read -q -P $((0xa0 + k)) $off $((16 * MiB))" "$uri" >"$tmp/client$k.out" 2>&1 &
    pids+=($!)
done
for k in 0 1 2 3; do
    wait "${pids[$k]}" || fail "concurrent client $k: $(cat "$tmp/client$k.out")"
    [ ! -s "$tmp/client$k.out" ] || fail "concurrent client $k: $(cat "$tmp/client$k.out")"
done
ok "4 qemu-io clients at once, each read its own writes back"
same_as_export "$tmp/src.img" "...and the whole export equals the mirrored image"
stop_server

# 4b. Every disk engine this machine offers (AUTO was the one above): the
# same checks on a 48 MiB file.
for engine in $("$server" --engines | head -1); do
    head -c $((48 * MiB)) /dev/urandom >"$tmp/engine.img"
    cp "$tmp/engine.img" "$tmp/engine.mirror"
    start_server "$server" --engine "$engine" "$tmp/engine.img"
    data_checks "$tmp/engine.mirror" 12
    stop_server
done

# 4c. Buffered writes made by the loop thread itself (disk-inline.c), on
# the engines that hand I/O to another thread: 32 plain 4 KiB writes and 4
# FUA ones (cache mode writeback), read back, and the server's count at
# exit of where they were made. FUA writes always go to the engine; with
# the default budget the loop makes plain writes itself, with budget 0
# never, and with a budget of 1 ns every write it makes is over budget and
# sends the next ones to the engine for a pause (100 ms, then longer).
MADE_RE='^nbd-server: writes: ([0-9]+) made by the loop threads \(([0-9]+) over the budget\), ([0-9]+) by the engine$'
inline_writes() { # BUDGET|default ENGINE: sets made, slow, handed
    local w=() r=() opt=() i line
    [ "$1" = default ] || opt=(--inline-writes "$1")
    for i in $(seq 0 35); do
        w+=(-c "write -q $([ "$i" -ge 32 ] && echo -f || true) -P $((i + 1)) $((i * 65536)) 4096")
        r+=(-c "read -q -P $((i + 1)) $((i * 65536)) 4096")
    done
    start_server "$server" --engine "$2" "${opt[@]}" "$tmp/engine.img"
    qemu-io -f raw -t writeback "${w[@]}" "${r[@]}" "$uri" >"$tmp/qemu-io.out" 2>&1 || fail "qemu-io: $(cat "$tmp/qemu-io.out")"
    [ ! -s "$tmp/qemu-io.out" ] || fail "budget $1: writes read back wrong: $(head "$tmp/qemu-io.out")"
    stop_server
    line=$(grep -E "$MADE_RE" "$tmp/server.err") || fail "no count of writes at exit"
    [[ $line =~ $MADE_RE ]]
    made=${BASH_REMATCH[1]} slow=${BASH_REMATCH[2]} handed=${BASH_REMATCH[3]}
    [ $((made + handed)) -eq 36 ] || fail "budget $1: $line; 36 writes were sent"
}
for engine in $("$server" --engines | head -1); do
    [ "$engine" != sync ] || continue
    inline_writes default "$engine"
    [ "$made" -ge 1 ] && [ "$handed" -ge 4 ] || fail "$engine, default budget: $made made, $handed by the engine"
    ok "$engine, default budget: $made of 32 plain writes made by the loop thread, FUA ones by the engine"
    inline_writes 0 "$engine"
    [ "$made" -eq 0 ] || fail "$engine, budget 0: $made writes made by the loop thread"
    ok "$engine, budget 0: every write made by the engine"
    inline_writes 1 "$engine"
    [ "$made" -ge 1 ] && [ "$slow" -eq "$made" ] && [ "$handed" -ge 5 ] ||
        fail "$engine, budget 1 ns: $made made, $slow over budget, $handed by the engine"
    ok "$engine, budget 1 ns: $made made (each over budget), then paused: $handed by the engine"
done

# 5. Bad requests, broken and vanishing clients (nbd-raw.py): error replies
# or a clean close, the export unchanged, the server still serving.
head -c $((16 * MiB)) /dev/urandom >"$tmp/small.img"
cp "$tmp/small.img" "$tmp/small.orig"
start_server "$server" "$tmp/small.img"
python3 "$here/nbd-raw.py" "$port" $((16 * MiB)) >"$tmp/raw.out" || fail "nbd-raw.py: $(grep -v '^ok' "$tmp/raw.out")"
ok "nbd-raw.py: $(grep -c '^ok' "$tmp/raw.out") protocol checks"
cmp -s "$tmp/small.img" "$tmp/small.orig" || fail "the export changed under bad requests"
ok "...and the export is unchanged"
stop_server

# 6. Out of fds (the limit lowered to what the server has open, plus two):
# the pending connections wait in the kernel's queue and the server does
# not spin on them (well under half a CPU second in a second); once the
# limit is back, everyone is served.
start_server "$server" --memory 16M
check_out_of_fds
nbdinfo --size "nbd://127.0.0.1:$port" >/dev/null || fail "no service after the fd limit was raised"
ok "...and serving again once fds are free"
stop_server

# 7. Read-only (-r), on a memory export: reads work, writes get EPERM.
start_server "$server" -r --memory 16M
python3 "$here/nbd-raw.py" "$port" $((16 * MiB)) --readonly >"$tmp/raw.out" ||
    fail "nbd-raw.py --readonly: $(grep -v '^ok' "$tmp/raw.out")"
ok "read-only: $(grep -c '^ok' "$tmp/raw.out") protocol checks, writes refused with EPERM"
if qemu-io -f raw -c "write 0 4096" "$uri" >"$tmp/qemu-io.out" 2>&1 &&
    ! grep -q 'not permitted\|read-only\|Read-only' "$tmp/qemu-io.out"; then
    fail "read-only export accepted a write from qemu-io: $(cat "$tmp/qemu-io.out")"
fi
ok "read-only: qemu-io cannot write"
stop_server

echo "all nbd-server checks passed"
