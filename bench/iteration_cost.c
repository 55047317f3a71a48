/* iteration-cost: one thread, blocking iterations of one context, for
 * counting instructions per iteration with callgrind (counts are
 * repeatable on a busy machine, timings are not).
 *
 *   iteration-cost MODE N IDLE
 *   MODE hit:  the polled handler's io_poll returns true at every call, so
 *              each spin ends in its first round;
 *        spin: it returns true at every 16th call, a spin of 16 rounds;
 *   N iterations after a warm-up that opens the window to about 1 ms;
 *   IDLE more polled handlers that never have an event.
 *
 * Instructions per iteration, without the set-up: run it for two N and
 * divide the difference, e.g.
 *   for n in 2000 12000; do valgrind --tool=callgrind
 *     --callgrind-out-file=/dev/null build-bench/bench/iteration-cost hit $n 0;
 *   done
 * and (Ir(12000) - Ir(2000)) / 10000. A spin that runs out (valgrind
 * translating code the first time) ends with a 20 ms timer; stderr counts
 * them ("timer waits"), each adds a few thousand instructions.
 * SPDX-License-Identifier: MIT */
#include <spindle.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

typedef struct source {
    unsigned calls, every; /* true at every `every`-th call; 0: never */
} source;

static bool io_poll(void *p)
{
    source *s = p;
    return s->every && ++s->calls % s->every == 0;
}

static void io_read(void *p) { (void)p; }
static void fired(void *p) { *(bool *)p = true; }

int main(int argc, char **argv)
{
    if (argc != 4 || (strcmp(argv[1], "hit") && strcmp(argv[1], "spin"))) {
        fprintf(stderr, "usage: %s hit|spin N IDLE\n", argv[0]);
        return 2;
    }
    long n = atol(argv[2]);
    int idle = atoi(argv[3]);
    spindle_ctx *ctx = spindle_ctx_new();
    if (!ctx || idle < 0 || idle > 256)
        return 1;
    spindle_set_poll_params(ctx, 1000000000, 2, 0);
    static source fast, quiet[256];
    static int fds[257];
    for (int i = 0; i <= idle; i++) {
        fds[i] = eventfd(0, EFD_NONBLOCK);
        if (fds[i] < 0 || spindle_set_fd_handler(ctx, fds[i], false, io_read, NULL, io_poll,
                                                 i ? &quiet[i - 1] : &fast) != 0)
            return 1;
    }
    /* Open the window (to 1-2 ms) with timer-ended waits of 1 ms. */
    bool f;
    spindle_timer *t = spindle_timer_new(ctx, SPINDLE_CLOCK_MONOTONIC, fired, &f);
    for (int i = 0; i < 14; i++) {
        f = false;
        spindle_timer_mod(t, spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) + 1000000);
        while (!f)
            spindle_poll(ctx, true);
    }
    fast.every = !strcmp(argv[1], "hit") ? 1 : 16;
    long timer_waits = -1;
    f = true;
    for (long i = 0; i < n; i++) {
        if (f) {
            f = false;
            timer_waits++;
            spindle_timer_mod(t, spindle_now_ns(SPINDLE_CLOCK_MONOTONIC) + 20000000);
        }
        spindle_poll(ctx, true);
    }
    fprintf(stderr, "timer waits %ld, window %lld ns\n", timer_waits,
            (long long)spindle_get_poll_ns(ctx));
    spindle_ctx_free(ctx);
    for (int i = 0; i <= idle; i++)
        close(fds[i]);
    return 0;
}
