#!/usr/bin/env bash
# Count, with strace, the system calls that spindle_set_fd_interest costs:
# none per change, none at the next wait for a million changes that end
# where they started, one epoll_ctl (epoll) or none (poll) for a net change.
# SPDX-License-Identifier: MIT
#
# Usage: interest-syscalls.sh PATH/TO/interest-toggle  (SPINDLE_BACKEND
# picks the back-end, as for every test). Exit 77 (skipped) without strace.
set -euo pipefail

prog=$1
if ! command -v strace >/dev/null || ! strace -o /dev/null true 2>/dev/null; then
    echo "strace missing or not permitted here: skipped"
    exit 77
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
out=$(strace -qq -o "$log" "$prog")
echo "$out"
backend=${out#backend }

# Lines of the trace between two markers (write(-1, "phase:NAME", ...)).
phase() {
    awk -v from="\"phase:$1\"" -v to="\"phase:$2\"" '
        index($0, "write(-1, " from) { on = 1; next }
        index($0, "write(-1, " to) { on = 0 }
        on' "$log"
}
count() { grep -c "$1" || true; }

fail=0
check() { # name got want
    if [ "$2" -eq "$3" ]; then
        echo "ok:   $1: $2"
    else
        echo "FAIL: $1: $2, expected $3"
        fail=1
    fi
}

toggles=$(phase toggles wait-same | count .)
check "system calls during 1,000,000 interest changes" "$toggles" 0
same=$(phase wait-same wait-changed | count 'epoll_ctl(')
check "epoll_ctl at the wait after changes that ended where they started" "$same" 0
want=0
[ "$backend" = epoll ] && want=1
changed=$(phase wait-changed end | count 'epoll_ctl(')
check "epoll_ctl at the wait after one net change ($backend)" "$changed" "$want"
# The markers themselves must be in the trace, or the counts mean nothing.
check "phase markers found" "$(count 'write(-1, "phase:' < "$log")" 4
exit $fail
