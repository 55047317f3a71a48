#!/bin/bash
# Run the API fuzzer for a bounded time from the committed seed corpus.
# SPDX-License-Identifier: MIT
#
# Usage: run-fuzz.sh FUZZER SEED_CORPUS WORKDIR [SECONDS]
# SECONDS defaults to $SPINDLE_FUZZ_SECONDS, else 60. New inputs go to
# WORKDIR/fuzz-corpus (the committed corpus is only read) and a crashing
# input to WORKDIR/fuzz-artifacts/. One job, one worker.
set -euo pipefail
fuzzer=$1
seeds=$2
work=$3
secs=${4:-${SPINDLE_FUZZ_SECONDS:-60}}
mkdir -p "$work/fuzz-corpus" "$work/fuzz-artifacts"
echo "run-fuzz: $fuzzer for ${secs}s from $seeds"
# Any failure must be a failure: the fuzzer's own exit codes (a crash
# through abort() can end in 77, meson's "skipped") are not passed on.
# Its output is kept in WORKDIR/fuzz.log too: a failure repeats its cause
# and the crashing input at the very end, where a log's tail (all that a
# CI summary may show) still has them.
status=0
"$fuzzer" -max_total_time="$secs" -max_len=1024 -timeout=20 \
    -print_final_stats=1 -artifact_prefix="$work/fuzz-artifacts/" \
    "$work/fuzz-corpus" "$seeds" 2>&1 | tee "$work/fuzz.log" ||
    status=$?
if [ "$status" -ne 0 ]; then
    echo "run-fuzz: the fuzzer failed (exit status $status); its cause:" >&2
    grep -E -m 12 'model mismatch|ERROR:|SUMMARY:|Seed:|deadly signal' \
        "$work/fuzz.log" >&2 || true
    for a in "$work"/fuzz-artifacts/*; do
        [ -f "$a" ] || continue
        echo "run-fuzz: input $a (replay: $fuzzer $a):" >&2
        od -An -tx1 -v "$a" | head -n 40 >&2
    done
    exit 1
fi
