#!/usr/bin/env bash
# Install the Debian (12, "bookworm") packages that spindle needs and that
# are not installed yet.
# SPDX-License-Identifier: MIT
#
# Usage: scripts/install-deps.sh [build|check|bench]
#   build  what `make` needs to build the library and the examples: a C
#          compiler, Meson, Ninja, pkg-config, and liburing for the io_uring
#          back-end (Meson builds without it where it is missing).
#   check  (default) build, plus what `make check` needs: cmocka, Spin,
#          valgrind, GLib (libspindle-glib and its test), clang-14 and
#          libFuzzer, and the real clients that the tests of the examples and
#          of the library run (socat, strace).
#   bench  build, plus the peers and tools for `make bench`.
#
# Quiet and quick when nothing is missing. As root it runs `apt-get update`
# once and installs what is missing, non-interactively. As another user it
# prints the command to run and exits 1 if anything is missing. On a system
# without dpkg it says so and exits 0 (install the equivalents by hand).
set -euo pipefail

# The package lists: the one place to change them.
BUILD_PKGS=(
    meson ninja-build pkg-config gcc libc6-dev   # build
    liburing-dev                                 # io_uring back-end (optional
                                                 # to meson; make bench needs it)
)
CHECK_PKGS=(
    libcmocka-dev                                # unit tests
    spin                                         # notify-protocol model
    valgrind                                     # make check: memcheck part
    libglib2.0-dev                               # libspindle-glib
    clang-14 libclang-rt-14-dev                  # API fuzzer (libFuzzer)
    strace                                       # tests/interest-syscalls.sh
    # The clients that tests/examples/*.sh run, one line per example.
    socat                                        # echo-server
    curl socat                                   # http-hello
    libnbd-bin qemu-utils python3                # nbd-server
)
BENCH_PKGS=(
    libuv1-dev libev-dev libevent-dev libglib2.0-dev   # the peers
    hyperfine                                          # timing whole runs
    libnbd-dev libnbd-bin qemu-utils nbdkit            # row nbd
    wrk                                                # row http
)

usage() {
    echo "usage: $0 [build|check|bench]" >&2
    exit 2
}

[ $# -le 1 ] || usage
case "${1:-check}" in
    build) wanted=("${BUILD_PKGS[@]}") ;;
    check) wanted=("${BUILD_PKGS[@]}" "${CHECK_PKGS[@]}") ;;
    bench) wanted=("${BUILD_PKGS[@]}" "${BENCH_PKGS[@]}") ;;
    -h|--help) usage ;;
    *) usage ;;
esac

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "install-deps: no dpkg here; install by hand the equivalents of:" \
         "${wanted[*]}" >&2
    exit 0
fi

missing=()
for pkg in "${wanted[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    # "ii " is installed; anything else (absent, removed, half-configured)
    # counts as missing.
    case "$status" in
        ii*) ;;
        *) missing+=("$pkg") ;;
    esac
done

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing Debian packages: ${missing[*]}" >&2
    echo "install-deps: as root, run: apt-get install ${missing[*]}" >&2
    echo "install-deps: (or: sudo $0 ${1:-check})" >&2
    exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt_opts=(-q -y -o Dpkg::Use-Pty=0 -o APT::Install-Recommends=false)
apt-get "${apt_opts[@]}" update </dev/null
apt-get "${apt_opts[@]}" install "${missing[@]}" </dev/null
echo "install-deps: done"
