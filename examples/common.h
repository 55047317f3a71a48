/* Plumbing that the example servers share and that has nothing to do with
 * spindle: a listening socket on 127.0.0.1, SIGINT/SIGTERM as a file
 * descriptor, number parsing. Each example's own file shows the loop.
 * SPDX-License-Identifier: MIT */
#ifndef EXAMPLES_COMMON_H
#define EXAMPLES_COMMON_H

#include <stdbool.h>

/* A non-blocking, close-on-exec TCP socket listening on 127.0.0.1:port
 * (port 0: any free port). With reuseport, several sockets may listen on the
 * same port and the kernel spreads new connections over them (SO_REUSEPORT):
 * one per loop thread. The port actually bound goes to *bound_port.
 * Returns the fd, or -errno. */
int example_listen(int port, bool reuseport, int *bound_port);

/* Block SIGINT and SIGTERM in the calling thread (threads started later
 * inherit that), ignore SIGPIPE (a write to a peer that has gone away then
 * fails with EPIPE instead of killing the process), and return a non-blocking
 * signalfd that becomes readable when SIGINT or SIGTERM arrives: a loop
 * watches it like any other fd. Call it before starting any thread.
 * Returns the fd, or -errno. */
int example_signalfd(void);

/* Read one pending signal from a signalfd; returns its number, or 0. */
int example_signalfd_read(int fd);
/* Block until a signal arrives on the signalfd (for a thread that has
 * nothing else to do); returns its number. */
int example_signalfd_wait(int fd);

/* Parse a decimal number in [min, max]; false (and a message on stderr
 * naming what) if s is not one. */
bool example_parse_long(const char *what, const char *s, long min, long max, long *out);

#endif
