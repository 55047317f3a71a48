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
 */
#include <spindle.h>

#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
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

int main(void)
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
