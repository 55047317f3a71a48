#!/usr/bin/env bash
# Model-check spindle's notify protocol with Spin.
# SPDX-License-Identifier: MIT
#
# Usage: check-notify-model.sh SPIN_DIR
#   SPIN_DIR holds notify.pml (meson passes tests/spin).
#
# Exits 0 only if
#   - the real protocol verifies with no error (no lost wake-up, no failed
#     assertion) for 2 notifiers x 3 rounds and 3 notifiers x 3 rounds,
#     over the full state space, and
#   - every broken variant makes Spin find a lost wake-up (an invalid end
#     state: the loop asleep for good with work left unconsumed).
# See docs/notify-protocol.md.
set -u

if [ $# -ne 1 ] || [ ! -f "$1/notify.pml" ]; then
    echo "usage: $0 SPIN_DIR (a directory holding notify.pml)" >&2
    exit 2
fi
model=$(cd "$1" && pwd)/notify.pml

for tool in spin "${CC:-gcc}"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "check-notify-model: '$tool' not found" >&2
        exit 2
    fi
done
cc=${CC:-gcc}

work=$(mktemp -d "${TMPDIR:-/tmp}/spindle-spin.XXXXXX") || exit 2
trap 'rm -rf "$work"' EXIT

failures=0

# run_pan NAME SPIN_FLAGS...: generate, compile and run the verifier for one
# variant of the model in its own directory; leaves pan's output in
# $work/NAME/pan.out and sets $errors, $states, $elapsed.
run_pan() {
    local name=$1
    shift
    local dir=$work/$name
    mkdir -p "$dir" && cp "$model" "$dir/notify.pml" || return 1
    (
        cd "$dir" || exit 1
        spin "$@" -a notify.pml >spin.out 2>&1 || { cat spin.out; exit 1; }
        # Safety properties only (assertions and invalid end states): a
        # lost wake-up is a state where no process can move.
        "$cc" -O2 -DSAFETY -o pan pan.c >cc.out 2>&1 || { cat cc.out; exit 1; }
        ./pan -m1000000 >pan.out 2>&1
        # pan exits 0 even when it finds errors; parse its report.
        exit 0
    ) || return 1
    local out=$dir/pan.out
    errors=$(sed -n 's/.*errors: \([0-9][0-9]*\).*/\1/p' "$out" | head -n 1)
    states=$(sed -n 's/^ *\([0-9][0-9]*\) states, stored.*/\1/p' "$out" | head -n 1)
    elapsed=$(sed -n 's/^pan: elapsed time \([0-9.e+-]*\).*/\1/p' "$out" | head -n 1)
    [ -n "$errors" ] && [ -n "$states" ]
}

# The real protocol must verify completely with no error.
expect_verified() {
    local name=$1
    shift
    if ! run_pan "$name" "$@"; then
        echo "FAIL  $name: could not generate, build or run the verifier"
        [ -f "$work/$name/pan.out" ] && cat "$work/$name/pan.out"
        failures=$((failures + 1))
        return
    fi
    local out=$work/$name/pan.out
    if [ "$errors" != 0 ]; then
        echo "FAIL  $name: $errors error(s) in the real protocol"
        cat "$out"
        (cd "$work/$name" && spin "$@" -t -p notify.pml | tail -n 60)
        failures=$((failures + 1))
    elif grep -q -e 'Search not completed' -e 'max search depth too small' \
            "$out"; then
        echo "FAIL  $name: the search did not cover the whole state space"
        cat "$out"
        failures=$((failures + 1))
    elif ! grep -A1 '^unreached in proctype loop' "$out" | grep -q '(0 of'; then
        # A model whose loop never reaches its end would verify vacuously.
        echo "FAIL  $name: part of the loop is unreachable"
        cat "$out"
        failures=$((failures + 1))
    else
        echo "ok    $name: verified, no lost wake-up ($states states, ${elapsed}s)"
    fi
}

# A broken variant must make Spin find the lost wake-up.
expect_violation() {
    local name=$1
    shift
    if ! run_pan "$name" "$@"; then
        echo "FAIL  $name: could not generate, build or run the verifier"
        [ -f "$work/$name/pan.out" ] && cat "$work/$name/pan.out"
        failures=$((failures + 1))
        return
    fi
    local out=$work/$name/pan.out
    if [ "$errors" = 0 ]; then
        echo "FAIL  $name: Spin found no error in a broken variant"
        cat "$out"
        failures=$((failures + 1))
    elif ! grep -q 'invalid end state' "$out"; then
        echo "FAIL  $name: Spin found an error, but not a lost wake-up"
        cat "$out"
        failures=$((failures + 1))
    else
        local depth
        depth=$(sed -n 's/.*invalid end state (at depth \([0-9]*\)).*/\1/p' "$out")
        echo "ok    $name: lost wake-up found as expected" \
             "(invalid end state at depth $depth, $states states, ${elapsed}s)"
        # SPINDLE_SPIN_TRAIL=1 prints the counterexample, step by step.
        if [ -n "${SPINDLE_SPIN_TRAIL:-}" ]; then
            (cd "$work/$name" && spin "$@" -t -p -g notify.pml)
        fi
    fi
}

expect_verified  "protocol-2x3" -DNOTIFIERS=2 -DROUNDS=3
expect_verified  "protocol-3x3" -DNOTIFIERS=3 -DROUNDS=3
expect_violation "broken-loop-no-recheck" -DBROKEN_LOOP
expect_violation "broken-notifier-reads-notify_me-first" -DBROKEN_NOTIFIER
expect_violation "broken-accept-consumes-before-clearing" -DBROKEN_ACCEPT
# The same protocol driven by a host loop (src/embed.c).
expect_verified  "embedded-2x3" -DEMBEDDED -DNOTIFIERS=2 -DROUNDS=3
expect_verified  "embedded-3x2" -DEMBEDDED -DNOTIFIERS=3 -DROUNDS=2
expect_violation "embedded-broken-prepare-no-recheck" -DEMBEDDED -DBROKEN_LOOP
expect_violation "embedded-broken-check-accepts" -DEMBEDDED -DBROKEN_CHECK

if [ "$failures" -ne 0 ]; then
    echo "notify protocol model: $failures check(s) FAILED"
    exit 1
fi
echo "notify protocol model: all checks passed"
exit 0
