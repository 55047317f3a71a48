#!/usr/bin/env bash
# shm-ring: every message arrives once and in order (the program checks and
# exits 1 otherwise), with busy polling on and off; with polling off the
# producer kicks for every message, with polling on never more often.
# (How much polling saves depends on the machine's load: that is for the
# reader to see in the output, not for a test to assert.)
#
#   shm-ring.sh SHM_RING
# SPDX-License-Identifier: MIT
set -euo pipefail

out=$("$1" -n 20000 -i 10) || { echo "FAIL: shm-ring exited with $?"; echo "$out"; exit 1; }
echo "$out"
kicks() { # kicks MODE: "K N" from the line of that mode
    sed -n "s/^polling $1 .* \([0-9]*\) of \([0-9]*\) (.*/\1 \2/p" <<<"$out"
}
read -r on_k on_n <<<"$(kicks on)"
read -r off_k off_n <<<"$(kicks off)"
[ "${on_n:-}" = 20000 ] && [ "${off_n:-}" = 20000 ] || { echo "FAIL: no result lines"; exit 1; }
echo "ok   20000 messages in order, polling on and off"
[ "$off_k" -eq "$off_n" ] || { echo "FAIL: polling off: $off_k kicks for $off_n messages"; exit 1; }
echo "ok   polling off: one kick per message ($off_k)"
[ "$on_k" -le "$on_n" ] || { echo "FAIL: polling on: $on_k kicks for $on_n messages"; exit 1; }
echo "ok   polling on: $on_k kicks for $on_n messages"
