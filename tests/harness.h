/* Shared helpers for spindle's cmocka tests.
 * SPDX-License-Identifier: MIT
 *
 * Every test runs under a watchdog: TEST() arms alarm() before the test and
 * disarms it after, so a hang (a lost wake-up, a deadlock) kills the test
 * program with a message instead of stalling CI. The limit is 60 s, or
 * $SPINDLE_TEST_WATCHDOG_S (valgrind and sanitizers are slower).
 */
#ifndef SPINDLE_TEST_HARNESS_H
#define SPINDLE_TEST_HARNESS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "spindle.h"

int harness_watchdog_arm(void **state);
int harness_watchdog_disarm(void **state);

/* For a file's fixture setup: arm the watchdog, and make *state a zeroed
 * fixture of size bytes, which it returns (the file's teardown frees it). */
void *harness_fixture_new(void **state, size_t size);

#define TEST(fn) \
    cmocka_unit_test_setup_teardown(fn, harness_watchdog_arm, \
                                    harness_watchdog_disarm)

/* A fixture: *state is a fresh context (back-end from $SPINDLE_BACKEND),
 * freed after the test (a test that frees it itself sets *state to NULL),
 * and the test runs under the watchdog, as with TEST(). */
int harness_ctx_setup(void **state);
int harness_ctx_teardown(void **state);

#define CTX_TEST(fn) \
    cmocka_unit_test_setup_teardown(fn, harness_ctx_setup, \
                                    harness_ctx_teardown)

/* Run a group of TEST()s; use as the body of main(). A run asked to test
 * io_uring ($SPINDLE_BACKEND=io_uring) where the kernel refuses it (or the
 * build has no liburing) exits 77, which meson reports as skipped, after
 * saying so on stderr. */
#define RUN_TESTS(group) \
    (harness_require_backend(), \
     cmocka_run_group_tests_name(__FILE__, group, NULL, NULL))

void harness_require_backend(void);

/* Whether a context asking for io_uring gets it here (kernel and build). */
bool harness_io_uring_usable(void);

/* A non-blocking, close-on-exec pipe; fails the test on error. */
void harness_pipe(int fds[2]);

/* A context with default options (the back-end comes from
 * $SPINDLE_BACKEND); fails the test on error. */
spindle_ctx *harness_ctx_new(void);

/* One iteration through the driver under test, as chosen by
 * $SPINDLE_TEST_DRIVER: spindle_poll() by default; with "embed", the
 * embedding API the way a host loop drives it (spindle_prepare, a ppoll on
 * spindle_get_fd for the time prepare allows, or none when not blocking,
 * spindle_check, spindle_dispatch), so that the same test bodies run both
 * ways, as QEMU runs its tests through aio_poll and through its GSource.
 * Returns what spindle_poll or spindle_dispatch returned (false when check
 * found nothing to dispatch). Nested iterations inside callbacks call
 * spindle_poll() directly either way. */
bool harness_poll(spindle_ctx *ctx, bool blocking);
/* Whether harness_poll drives contexts through the embedding API. */
bool harness_embedded(void);

/* Run blocking iterations until *flag becomes true; fails the test if that
 * takes more than max_iterations iterations. Returns the iterations used. */
unsigned harness_poll_until(spindle_ctx *ctx, const volatile bool *flag,
                            unsigned max_iterations);

/* Run blocking iterations until a timer delay_ns ahead fires; fails the
 * test beyond max_iterations (the loop spins instead of sleeping). Returns
 * the iterations used. */
unsigned harness_poll_until_timer(spindle_ctx *ctx, int64_t delay_ns,
                                  unsigned max_iterations);

/* Run non-blocking iterations until one makes no progress; returns how many
 * made progress. */
unsigned harness_drain(spindle_ctx *ctx);

/* A counter callback: increments the unsigned int that opaque points to. */
void harness_count_cb(void *opaque);

/* A deterministic PRNG (xorshift64*), so that a failure is reproducible:
 * the next number from the state *s (never 0). */
uint64_t harness_rng(uint64_t *s);

#endif
