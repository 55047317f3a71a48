/* The program that tests/interest-syscalls.sh runs under strace: it
 * toggles an fd's write interest a million times, and marks each phase
 * with a write(2) to fd -1 that strace shows and that fails harmlessly.
 * SPDX-License-Identifier: MIT
 *
 * Phases, between the markers:
 *   toggles      1,000,000 changes that end where they started: no system
 *                call at all
 *   wait-same    one iteration: no epoll_ctl (nothing changed in the end)
 *   wait-changed one net change, then one iteration: one epoll_ctl on
 *                epoll, none on poll
 *
 * With arguments, it times instead what a change of write interest costs
 * (the back-end from $SPINDLE_BACKEND):
 *   interest-toggle N MODE
 *     interest       2N spindle_set_fd_interest calls, no wait between
 *     interest-wait  N calls, each followed by a non-blocking iteration
 *                    (the change reaches the kernel every time)
 *     handler, handler-wait  the same through spindle_set_fd_handler
 *                    (re-registering with and without io_write)
 * and prints the ns per change (iterations included in the -wait modes).
 */
#include <spindle.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void marker(const char *name)
{
    ssize_t r = write(-1, name, strlen(name));
    (void)r;
}

static void on_io(void *opaque)
{
    (void)opaque;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Turn write interest on (true) or off, the way MODE says. */
static int set_write(spindle_ctx *ctx, int fd, bool on, bool by_handler)
{
    if (by_handler) {
        return spindle_set_fd_handler(ctx, fd, false, on_io,
                                      on ? on_io : NULL, NULL, NULL);
    }
    return spindle_set_fd_interest(ctx, fd, true, on);
}

static int time_changes(spindle_ctx *ctx, int fd, long n, const char *mode)
{
    bool by_handler = !strncmp(mode, "handler", 7);
    bool wait = strstr(mode, "-wait") != NULL;
    if ((!by_handler && strncmp(mode, "interest", 8)) || n <= 0) {
        fprintf(stderr, "usage: interest-toggle [N interest|interest-wait|"
                        "handler|handler-wait]\n");
        return 2;
    }
    long changes = wait ? n : 2 * n;
    int64_t t0 = now_ns();
    for (long i = 0; i < changes; i++) {
        if (set_write(ctx, fd, i & 1, by_handler) != 0) {
            return 1;
        }
        if (wait) {
            spindle_poll(ctx, false);
        }
    }
    int64_t t1 = now_ns();
    printf("%s on %s: %.1f ns per change\n", mode,
           spindle_backend_name(ctx), (double)(t1 - t0) / (double)changes);
    return 0;
}

int main(int argc, char **argv)
{
    int sv[2];
    spindle_ctx *ctx = spindle_ctx_new();
    if (!ctx || socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) != 0 ||
        spindle_set_fd_handler(ctx, sv[0], false, on_io, on_io, NULL, NULL)) {
        perror("interest-toggle: setup");
        return 1;
    }
    spindle_poll(ctx, false);
    spindle_poll(ctx, false);
    if (argc > 1) {
        int r = time_changes(ctx, sv[0], atol(argv[1]),
                             argc > 2 ? argv[2] : "interest");
        spindle_ctx_free(ctx);
        close(sv[0]);
        close(sv[1]);
        return r;
    }
    printf("backend %s\n", spindle_backend_name(ctx));
    fflush(stdout);

    marker("phase:toggles");
    for (int i = 0; i < 1000000; i++) {
        if (spindle_set_fd_interest(ctx, sv[0], true, false) ||
            spindle_set_fd_interest(ctx, sv[0], true, true)) {
            return 1;
        }
    }
    marker("phase:wait-same");
    spindle_poll(ctx, false);
    marker("phase:wait-changed");
    spindle_set_fd_interest(ctx, sv[0], false, true);
    spindle_set_fd_interest(ctx, sv[0], true, false);
    spindle_poll(ctx, false);
    marker("phase:end");

    spindle_ctx_free(ctx);
    close(sv[0]);
    close(sv[1]);
    return 0;
}
