/* spindle: an adaptive busy-polling event loop for Linux.
 * SPDX-License-Identifier: MIT
 *
 * One context (spindle_ctx) owns fd handlers, bottom halves (deferred calls)
 * and timers. spindle_poll() runs one iteration of the loop: it busy-polls
 * the user's io_poll callbacks for a few microseconds when events come fast,
 * and sleeps in the kernel (io_uring, epoll or ppoll) when they do not,
 * adapting a polling window per io_poll handler on every blocking
 * iteration. On io_uring the busy polling also sees every fd, by reading the
 * ring's completions.
 *
 * Conventions used throughout this header:
 * - Functions returning int return 0 on success or a negative errno value.
 *   Constructors return NULL and set errno.
 * - "Loop thread" means the thread currently running spindle_poll() on the
 *   context, or any thread while no iteration runs. Functions not marked
 *   "any thread" must be called from the loop thread only.
 * - Callbacks run on the loop thread, inside spindle_poll().
 * - Costs are given in terms of n = number of registered fd handlers,
 *   b = number of scheduled bottom halves, t = number of armed timers.
 */
#ifndef SPINDLE_H
#define SPINDLE_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define SPINDLE_API __attribute__((visibility("default")))
#else
#define SPINDLE_API
#endif

#define SPINDLE_VERSION_MAJOR 0
#define SPINDLE_VERSION_MINOR 1
#define SPINDLE_VERSION_PATCH 0

typedef struct spindle_ctx spindle_ctx;
typedef struct spindle_bh spindle_bh;
typedef struct spindle_timer spindle_timer;
typedef struct spindle_notifier spindle_notifier;

/* Callback for fd readiness, poll_begin/poll_end, bottom halves and timers. */
typedef void spindle_io_fn(void *opaque);
/* Busy-poll callback: check a user-space completion source (a ring, a flag
 * in shared memory) and process it. Return true if it made progress. It is
 * called very often while the loop spins, so it must be cheap when idle. */
typedef bool spindle_poll_fn(void *opaque);

typedef enum {
    SPINDLE_BACKEND_AUTO,     /* io_uring if usable, else poll, then epoll
                               * from 64 fds on */
    SPINDLE_BACKEND_POLL,     /* ppoll(2) over every registered fd: O(n) */
    SPINDLE_BACKEND_EPOLL,    /* epoll(7) from creation on */
    SPINDLE_BACKEND_IO_URING, /* io_uring; epoll where the kernel refuses it */
} spindle_backend;

/* io_uring only: how the kernel gets the loop's thread to take the
 * completions that another CPU caused (a peer's write to a watched socket,
 * a request finished by a kernel worker). Either way a sleeping loop is
 * woken and every event is seen; they differ in what a busy-polling loop
 * pays per event (docs/design.md, "Task work").
 *  - INTERRUPT: the kernel interrupts the loop's thread, and the spin finds
 *    the completion in the ring at no system call of its own. The
 *    interrupt costs both CPUs, dearly on a virtual machine.
 *  - COOPERATIVE: the completion waits for the thread's next system call;
 *    a spin that sees one pending makes that call, one per batch. On the
 *    2-vCPU development VM this is the faster choice for sockets, spinning
 *    or not: nbd-server at queue depth 1, 4 KiB reads, p50 about 50 us
 *    against about 100 us with INTERRUPT and the same 200 us window.
 *  - AUTO: INTERRUPT when the context busy polls (poll_max_ns > 0),
 *    COOPERATIVE when it does not. */
typedef enum spindle_uring_mode {
    SPINDLE_URING_AUTO,
    SPINDLE_URING_INTERRUPT,
    SPINDLE_URING_COOPERATIVE,
} spindle_uring_mode;

/* Options for spindle_ctx_new_opts(). Start from SPINDLE_OPTIONS_INIT, the
 * defaults, and change what you need:
 *
 *     spindle_options o = SPINDLE_OPTIONS_INIT;
 *     o.backend = SPINDLE_BACKEND_EPOLL;
 *     spindle_ctx *ctx = spindle_ctx_new_opts(&o);
 *
 * A zero-initialised struct (`spindle_options o = {0}`) is not the
 * defaults: its poll_max_ns of 0 turns busy polling off, whereas poll_grow
 * and poll_shrink (and spin_yield_ns) of 0 do mean their defaults. */
typedef struct spindle_options {
    spindle_backend backend; /* AUTO honours $SPINDLE_BACKEND */
    int64_t poll_max_ns;     /* < 0: default (32768); 0: busy polling off */
    int64_t poll_grow;       /* 0: default (2); must not be negative */
    int64_t poll_shrink;     /* 0: default (reset the window to 0 on shrink) */
    spindle_uring_mode uring_mode; /* io_uring only; see above */
    /* > 0: a busy-polling loop calls sched_yield(2) after every
     * spin_yield_ns of spinning, so that a thread waiting for the loop's
     * CPU runs at once instead of at the end of the loop's time slice
     * (milliseconds): on a machine with fewer CPUs than busy threads, often
     * the very thread that produces the awaited event (io_uring's kernel
     * worker finishing a buffered file write, a client on the same
     * machine). The kernel's own busy polling stops the same way when
     * another task needs the CPU. With nobody waiting the call returns at
     * once (about 0.7 us on the development VM); an event that comes
     * meanwhile is seen that much later. 4096 served nbd-server's buffered
     * writes 1.5 times faster; in the wake-rtt benchmark (two loops on two
     * CPUs) it made some runs slower (docs/design.md, "Spins that give
     * their CPU away"), hence not the default. 0 (the default): never;
     * negative: EINVAL. */
    int64_t spin_yield_ns;
} spindle_options;

/* The default options, as spindle_ctx_new() uses them: AUTO back-end,
 * polling window up to 32768 ns, growing by 2, reset to 0 on shrink, AUTO
 * io_uring mode, spins that never yield their CPU. */
#define SPINDLE_OPTIONS_INIT { SPINDLE_BACKEND_AUTO, -1, 0, 0, SPINDLE_URING_AUTO, 0 }

/* ------------------------------------------------------------------------
 * Context
 */

/* Create a context with default options (AUTO back-end, polling window up
 * to 32768 ns). Returns NULL with errno ENOMEM, EMFILE or ENFILE on resource
 * exhaustion; nothing is leaked then. Any thread. */
SPINDLE_API spindle_ctx *spindle_ctx_new(void);

/* Create a context with options; o may be NULL for the defaults (see
 * spindle_options and SPINDLE_OPTIONS_INIT). The back-end is chosen as
 * follows: SPINDLE_BACKEND_AUTO reads $SPINDLE_BACKEND ("poll", "epoll" or
 * "io_uring"; anything else is ignored) and otherwise takes io_uring where
 * the kernel allows it; without io_uring it starts on poll and switches to
 * epoll for good once 64 or more fds are registered.
 * SPINDLE_BACKEND_IO_URING takes io_uring, or epoll where the kernel
 * refuses io_uring (io_uring_setup fails with ENOSYS, EPERM or ENOMEM, or
 * the kernel is older than 5.13) or spindle was built without liburing. A
 * context never moves to or from io_uring after its creation.
 * SPINDLE_BACKEND_EPOLL uses epoll from creation on. Whatever was asked,
 * epoll failing (at creation, for example for want of an fd, or later)
 * makes the context fall back to poll for good; spindle_backend_name tells
 * which one runs.
 * $SPINDLE_POLL_WINDOW=shared makes every blocking wait adapt the window of
 * every io_poll handler, so that they all move together: the single
 * per-context window of QEMU before 2025, for comparisons (see
 * spindle_set_poll_params); anything else is ignored.
 *
 * When busy polling runs, and what it costs. On io_uring, busy polling
 * reads the ring's completions in every round, so it sees every registered
 * fd at no system call, and the loop spins whatever handlers exist. On poll
 * and epoll, busy polling can only see events that an io_poll callback
 * checks in user space, so the loop spins only while every registered fd
 * handler has an io_poll: a single handler without one (a listening
 * socket, a signalfd, a connection served by io_read alone) could have an
 * event that no io_poll would notice, so the loop goes straight to the
 * kernel wait, calling each io_poll once on the way, and the polling window
 * is never used. spindle_get_stats() shows it: unpolled_handlers counts the
 * handlers without io_poll, and poll_hits/poll_misses stay 0. While the loop
 * does spin, each round calls every io_poll, for up to the window (at most
 * poll_max_ns) until one makes progress: an io_poll must be a load from
 * memory; one that makes a system call (a recv(MSG_DONTWAIT) per connection,
 * say) costs that call per connection per round, more than the sleep it
 * saves. So: give io_poll to user-space sources (a ring in shared memory, a
 * flag another thread sets, a device's completion queue) and leave sockets
 * and other fds to io_read/io_write and the kernel wait. A plain socket
 * server gains nothing from busy polling on poll and epoll; poll_max_ns 0
 * says so explicitly. On io_uring it gains the wake-up of a sleeping loop
 * (tens of microseconds on a virtual machine) for events that come within
 * the window, at the price of the CPU spent spinning, and of an interrupt
 * of the loop thread per event so that the spin sees it without a system
 * call. A context made with poll_max_ns 0 on io_uring runs a cooperative
 * ring instead, whose events are taken at the loop's next system call: for
 * a throughput server whose clients share its CPUs that is the faster
 * choice (http-hello -n under wrk on 2 vCPUs: about 1.8x the requests/s of
 * the spinning default, level with epoll). Polling turned on later with
 * spindle_set_poll_params() still sees every event, at a system call per
 * batch of them.
 *
 * Errors: NULL + errno EINVAL (unknown back-end or io_uring mode, negative
 * grow or shrink),
 * ENOMEM, EMFILE, ENFILE. Any thread. */
SPINDLE_API spindle_ctx *spindle_ctx_new_opts(const spindle_options *o);

/* Release the context and everything it owns: fd handler registrations,
 * bottom halves (scheduled or not, oneshots included), timers (armed or not)
 * and event-notifier registrations, and (io_uring) the requests of
 * spindle_add_sqe() still in flight, which it cancels and waits for. Their
 * handles become invalid: do not use or free them afterwards. No callback
 * runs. User fds and spindle_notifier
 * objects are not closed or freed. Must not be called while an iteration
 * runs (not from a callback). NULL is ignored. Cost O(n + b + t). */
SPINDLE_API void spindle_ctx_free(spindle_ctx *ctx);

/* Run one iteration of the loop (docs/design.md): compute the timeout,
 * busy-poll io_poll callbacks for up to the largest window, wait in the
 * back-end if still needed, then run scheduled bottom halves, ready fd
 * handlers and expired timers. On io_uring the busy polling also reads the
 * ring's completions, so every fd is seen at no system call; with poll and
 * epoll a handler without io_poll switches busy polling off (only the
 * kernel sees its fd).
 *
 * Returns true if it made progress: a callback other than the context's own
 * wake-up ran (an fd handler, a non-idle bottom half, a timer, or an io_poll
 * that returned true). With blocking false it never sleeps. With blocking
 * true it sleeps until something happens, but may still return false
 * (a wake-up from spindle_notify, a signal, a change made on the loop thread
 * itself); callers loop until their own condition holds.
 *
 * Nested calls from a callback on the loop thread are allowed. A nested call
 * never calls an io_poll that is running further up the stack (a handler's
 * io_poll may thus wait for something with a nested loop without being
 * re-entered); everything else runs as usual in the nested call, that
 * handler's io_read and io_write included, and the handler is polled again
 * once its io_poll has returned. A call while another thread is inside
 * spindle_poll() on the same context returns false at once with errno
 * EBUSY and changes nothing. NULL: false, errno EINVAL.
 * Cost: O(ready handlers + scheduled bottom halves + fired timers) with
 * io_uring and epoll (each timer is moved at most once per wheel level on
 * its way to firing: docs/design.md); the poll back-end adds O(n). */
SPINDLE_API bool spindle_poll(spindle_ctx *ctx, bool blocking);

/* Wake the loop: a blocking spindle_poll() that is sleeping, or about to,
 * returns soon after. Costs no system call unless the loop has announced
 * that it is about to sleep in the kernel. Never loses a wake-up. Any
 * thread, async-signal-safe. NULL is ignored. */
SPINDLE_API void spindle_notify(spindle_ctx *ctx);

/* Set the busy-polling parameters and restart every window at 0.
 *
 * Each handler with an io_poll has its own polling window; before sleeping,
 * a blocking iteration busy-polls for the largest window among them (and
 * never past its timeout). A window adapts after each blocking iteration
 * that may wait: if the wait was at most the window, it is kept; over
 * max_ns, it shrinks (divided by shrink; shrink 0 resets it to 0); under
 * max_ns, it grows (from 0 to 4000 ns, else multiplied by grow), up to
 * max_ns. A wait that events of some handlers ended (an fd, an io_poll
 * that returned true, the context's own wake-up) adapts those handlers'
 * windows only; a wait that no handler event ended (a timer, the timeout)
 * adapts every window. So a slow source's long waits close its own window,
 * not a fast source's. The time waited runs from the start of the wait
 * (after a first round of io_poll calls that found nothing: an event that
 * round finds waited 0) to the event (for an event notifier, to the time it
 * was set, not the time the loop's thread woke up), minus work (io_poll
 * calls that made progress, poll_begin/poll_end) and minus time the loop's
 * thread was seen not running while it spun. Non-blocking iterations never
 * adapt.
 * A handler whose window has not adapted for a second (its events stopped
 * while other handlers' kept coming) is idle: its window stops counting and
 * its io_poll is called once per spin rather than once per round, until
 * its next event. On io_uring, fd handlers without an io_poll, which busy
 * polling sees through the ring, share one window: the context's own.
 *
 * max_ns 0 turns busy polling off; grow 0 means 2; shrink 0 means "reset
 * the window to 0" when it shrinks. Returns 0, or -EINVAL for a NULL
 * context or a negative parameter (nothing is changed then). Loop thread.
 * O(handlers with an io_poll). */
SPINDLE_API int spindle_set_poll_params(spindle_ctx *ctx, int64_t max_ns,
                                        int64_t grow, int64_t shrink);

/* How long the loop busy-polls now, in ns: the largest window among the
 * handlers that are not idle (0 when not polling). -EINVAL for NULL. Any
 * thread (the value may be stale by the time it is read). O(1). */
SPINDLE_API int64_t spindle_get_poll_ns(const spindle_ctx *ctx);

/* The polling window of fd's handler, in ns (see spindle_set_poll_params;
 * an idle handler keeps its window, which then does not count). -EINVAL
 * for a NULL context, -EBADF for a negative fd, -ENOENT if fd has no
 * handler with an io_poll. Any thread (the value may be stale by the time
 * it is read; it takes the handler lock briefly). O(1). */
SPINDLE_API int64_t spindle_get_handler_poll_ns(spindle_ctx *ctx, int fd);

/* The back-end in use: "poll", "epoll" or "io_uring". An AUTO context
 * without io_uring reports "poll" until it switches to epoll. NULL for a
 * NULL context.
 * Any thread (may change right after an AUTO switch or an epoll failure). */
SPINDLE_API const char *spindle_backend_name(const spindle_ctx *ctx);

/* How long a blocking iteration would sleep now, in ns: 0 if a non-idle
 * bottom half is scheduled; else the time to the earliest timer deadline
 * (capped at 10 ms while an idle bottom half is scheduled); else -1
 * (infinite). -EINVAL for NULL. Loop thread. Cost O(b), plus, when the
 * earliest deadline is far, O(timers in its slot of the wheel) (the loop's
 * own timeout skips that scan: it may wake early, never late). */
SPINDLE_API int64_t spindle_compute_timeout(spindle_ctx *ctx);

/* Counters for tuning busy polling. Updated by the loop thread; read them
 * from the loop thread (other threads may see values that tear between
 * fields, never a torn field). */
typedef struct spindle_stats {
    uint64_t iterations;     /* spindle_poll() calls that ran (not EBUSY) */
    uint64_t kernel_waits;   /* iterations that called the back-end wait */
    uint64_t blocking_waits; /* ... of them with a non-zero timeout */
    uint64_t poll_hits;      /* busy-poll spins ended by an event */
    uint64_t poll_misses;    /* busy-poll spins that ran out of window */
    uint64_t stale_fds;      /* registered fds found closed and disarmed */
    int64_t poll_ns;         /* the largest window: spindle_get_poll_ns */
    int64_t poll_max_ns;     /* its upper bound; 0: busy polling off */
    /* Registered fd handlers without io_poll (now, not a running count).
     * While it is not 0, poll and epoll do not busy-poll at all, whatever
     * poll_max_ns says: see spindle_ctx_new_opts(). io_uring busy-polls
     * anyway. */
    uint64_t unpolled_handlers;
    /* Interest changes passed to the kernel (spindle_set_fd_interest): one
     * epoll_ctl each on epoll, one request each on io_uring; poll has no
     * kernel state and counts none. */
    uint64_t interest_updates;
    uint64_t pool_workers;   /* thread-pool workers alive now */
    uint64_t pool_queued;    /* submitted jobs no worker has taken yet */
    /* System calls the back-end made on the loop thread: waits,
     * submissions, io_uring's re-checks. */
    uint64_t monitor_syscalls;
    /* Stretches of a spin in which the loop's thread was seen not running
     * (preempted, or its vCPU was): that time is not counted as waiting
     * when the windows adapt (spindle_set_poll_params). */
    uint64_t poll_stalls;
    /* sched_yield(2) calls of spinning loops (spindle_options.spin_yield_ns). */
    uint64_t poll_yields;
} spindle_stats;

/* Copy the counters into *out. 0, or -EINVAL if ctx or out is NULL. */
SPINDLE_API int spindle_get_stats(const spindle_ctx *ctx, spindle_stats *out);

/* ------------------------------------------------------------------------
 * File descriptors
 */

/* Register, update or remove the handler of fd.
 * - io_read runs when fd is readable, hung up or in error; io_write when it
 *   is writable or in error; io_poll is busy-polled (see spindle_poll_fn).
 *   All receive opaque. Readiness is level-triggered: a handler that leaves
 *   data unread is called again in a later iteration (on io_uring while the
 *   loop busy-polls other events: after at most 32 us of spinning). On
 *   io_uring during busy polling, a read made elsewhere between the event
 *   and the call (by another thread, or by the program between two
 *   iterations), or data that arrives while the handler is inside its own
 *   read, can leave a call with nothing to read: use non-blocking fds, as
 *   with any event loop. Also on io_uring,
 *   the kernel reports readiness through work it runs on the loop thread,
 *   which can come microseconds late while other threads' events on the
 *   same ring race with it: a non-blocking iteration may then miss an fd
 *   that became ready just before it, and a later one calls its handler
 *   (a blocking wait wakes for it). A handler registered, or whose
 *   interest is turned on, while its fd is ready is called by the next
 *   iteration on every back-end.
 * - Registering an fd that is already registered replaces its callbacks (a
 *   new record is installed; poll_begin/poll_end and the polling window
 *   carry over when both have an io_poll).
 * - All three of io_read, io_write and io_poll NULL removes the handler.
 *   Removing always succeeds, even after fd was closed. Once the removal
 *   returns on the loop thread, the handler is never called again; this
 *   holds from inside any callback, the handler's own included.
 * - is_external handlers are left alone (not dispatched, polled or waited
 *   on) while spindle_disable_external() is in force.
 * A registered fd that gets closed without being removed is disarmed: the
 * poll back-end sees it as invalid, stops waiting on it and counts it in
 * stats.stale_fds; epoll drops it by itself; io_uring keeps a reference to
 * the file until the handler is removed (its events still come), and when
 * the file hangs up or errs finds the fd closed and disarms it as poll does.
 * No callback runs for it and the loop does not spin; remove it (or
 * register the fd number again) as usual.
 * The handler waits for the events it has callbacks for: readable if io_read,
 * writable if io_write. To change that without re-registering (write
 * interest on only while a socket's buffer is full, say), use
 * spindle_set_fd_interest(): registering costs an allocation and, on epoll,
 * a system call each time; changing the interest costs neither.
 * Busy polling: on the poll and epoll back-ends a handler without io_poll
 * keeps the whole context from busy polling (spindle_ctx_new_opts() says
 * why and what to do instead); stats.unpolled_handlers counts them. On
 * io_uring it does not.
 * Returns 0; -EINVAL for a NULL context; -EBADF when registering or updating
 * a negative fd or one that is not open; -ENOMEM. Any thread: a change made
 * from another thread takes effect by the next iteration and wakes the loop.
 * Cost O(1) (plus an epoll_ctl with the epoll back-end, an fcntl with
 * io_uring, whose kernel request the loop's next submission carries). */
SPINDLE_API int spindle_set_fd_handler(spindle_ctx *ctx, int fd,
                                       bool is_external,
                                       spindle_io_fn *io_read,
                                       spindle_io_fn *io_write,
                                       spindle_poll_fn *io_poll,
                                       void *opaque);

/* Change which events the loop waits for on registered fd, keeping its
 * callbacks: read (io_read runs when fd is readable, hung up or in error)
 * and write (io_write runs when it is writable or in error). Registering
 * with spindle_set_fd_handler() sets both to "the callback is not NULL".
 * This is flow control for servers: register io_read and io_write once,
 * keep write interest off while replies go out in full, turn it on when a
 * send() comes back short (the socket's buffer is full) and off again once
 * io_write has sent the rest; turn read interest off to stop reading from a
 * peer that does not read its replies.
 * - Once this returns, a callback whose interest is off is not called, not
 *   even for readiness found earlier in the same iteration. One whose
 *   interest is turned on is called from the next wait on (level-triggered:
 *   readiness that arose meanwhile is reported).
 * - With write interest on and read interest off, a hang-up runs io_write
 *   (whose next write reports the error), so a closed peer is never silent.
 * - Both off: fd stays registered but is not waited on. io_poll, if any, is
 *   still busy-polled.
 * - Same behaviour on every back-end. The change is recorded and given to
 *   the kernel before the next wait, once per fd however often the interest
 *   changed meanwhile: epoll makes at most one epoll_ctl for it, none if the
 *   interest ended where it started; io_uring one request (an update of the
 *   fd's poll, carried by the wait's own system call); poll waits on the
 *   current interest at every ppoll and makes no extra call.
 * Cost O(1); never allocates and makes no system call. It takes the
 * handler lock for a few instructions (a futex wait only if another thread
 * is registering a handler at that very moment).
 * Returns 0; -EINVAL for a NULL context, or when want_read (want_write) is
 * true and io_read (io_write) is NULL, then nothing changes; -EBADF for a
 * negative fd; -ENOENT for an fd that is not registered. Loop thread. */
SPINDLE_API int spindle_set_fd_interest(spindle_ctx *ctx, int fd,
                                        bool want_read, bool want_write);

/* Set the callbacks run on fd's handler when the context starts busy polling
 * (poll_begin: for example disable the device's notifications) and when it
 * stops before sleeping in the kernel (poll_end: re-enable them). Each
 * receives the handler's opaque. A context enters the busy-polling state once
 * and keeps it across non-blocking iterations; it leaves it right before a
 * kernel wait with a non-zero timeout, and then checks every io_poll once
 * more, since an event may have raced with the re-enabled notifications.
 * Only handlers that have an io_poll have these callbacks (and on poll and
 * epoll the context busy-polls only while every handler has an io_poll: see
 * spindle_ctx_new_opts()), so register the io_poll first: this is ignored
 * for an fd whose handler has none, for an unregistered fd and for a NULL
 * context. Replacing the handler keeps
 * these callbacks as long as the new one has an io_poll. Loop thread. O(1). */
SPINDLE_API void spindle_set_fd_poll(spindle_ctx *ctx, int fd,
                                     spindle_io_fn *poll_begin,
                                     spindle_io_fn *poll_end);

/* Nestable: while disable has been called more often than enable, external
 * handlers (and event notifiers registered as external) are neither
 * dispatched nor polled nor waited on. Events that arrive meanwhile are
 * delivered once the count returns to zero. The loop does not spin while
 * disabled. Any thread. O(1); while disabled, an epoll context waits with
 * ppoll over the internal handlers, O(n) (io_uring keeps waiting on its
 * ring and holds external events back). An embedded context (see
 * spindle_get_fd) on poll or epoll also takes the external fds out of its
 * epoll set at its next spindle_prepare, and the enable that brings the
 * count to zero puts them back: O(external handlers) system calls. NULL is
 * ignored. */
SPINDLE_API void spindle_disable_external(spindle_ctx *ctx);
SPINDLE_API void spindle_enable_external(spindle_ctx *ctx);

/* ------------------------------------------------------------------------
 * Event notifiers: a settable flag backed by an fd (an eventfd, or a pipe in
 * builds configured with -Deventfd=false). They belong to the user, not to a
 * context; free them after removing their registration.
 */

/* Create a notifier, initially set if active. NULL + errno (EMFILE, ENFILE,
 * ENOMEM). Any thread. */
SPINDLE_API spindle_notifier *spindle_notifier_new(bool active);
/* Close and free it. NULL is ignored. */
SPINDLE_API void spindle_notifier_free(spindle_notifier *n);
/* Make the notifier's fd readable. Sets before a clear coalesce into one.
 * The first set since the last clear also records when, for the polling
 * window of a loop that it wakes (spindle_set_poll_params). 0, or -EINVAL
 * for NULL. Any thread, async-signal-safe. One write(2), and a clock read
 * for the first set. */
SPINDLE_API int spindle_notifier_set(spindle_notifier *n);
/* Return whether the notifier was set, and clear it. false for NULL. */
SPINDLE_API bool spindle_notifier_test_and_clear(spindle_notifier *n);
/* The fd to wait on (readable while set); -EINVAL for NULL. */
SPINDLE_API int spindle_notifier_fd(const spindle_notifier *n);

/* spindle_set_fd_handler() on the notifier's fd with io_read and io_poll
 * (no io_write). io_read and io_poll both NULL removes the registration.
 * io_read does not clear the notifier: call test_and_clear in it.
 * Returns as spindle_set_fd_handler, and -EINVAL for a NULL notifier.
 * Any thread. */
SPINDLE_API int spindle_set_event_notifier(spindle_ctx *ctx,
                                           spindle_notifier *n,
                                           bool is_external,
                                           spindle_io_fn *io_read,
                                           spindle_poll_fn *io_poll,
                                           void *opaque);
/* spindle_set_fd_poll() on the notifier's fd. Loop thread. */
SPINDLE_API void spindle_set_event_notifier_poll(spindle_ctx *ctx,
                                                 spindle_notifier *n,
                                                 spindle_io_fn *begin,
                                                 spindle_io_fn *end);

/* ------------------------------------------------------------------------
 * Bottom halves: deferred calls run by the loop thread in a later
 * iteration. Scheduling never allocates and never fails.
 */

/* Create an unscheduled bottom half. NULL + errno EINVAL (NULL ctx or cb) or
 * ENOMEM. Loop thread. O(1). */
SPINDLE_API spindle_bh *spindle_bh_new(spindle_ctx *ctx, spindle_io_fn *cb,
                                       void *opaque);
/* Schedule it: cb runs once on the loop thread in a later spindle_poll(),
 * never synchronously. Scheduling a scheduled bottom half does nothing (the
 * calls coalesce) and only a call that changes the state wakes the loop.
 * A bottom half that schedules itself from cb runs again in the next
 * iteration, not the same one. Bottom halves scheduled from one thread run
 * in the order they were scheduled, with one exception: a bottom half
 * cancelled and scheduled again before it ran keeps its first place in the
 * queue, or, if the loop had already taken that place's batch, runs in the
 * next iteration. Any thread; lock-free; O(1). NULL is ignored. */
SPINDLE_API void spindle_bh_schedule(spindle_bh *bh);
/* Schedule as an idle bottom half: it does not wake the loop, its run does
 * not count as progress, and while it is scheduled the loop sleeps at most
 * 10 ms. Any thread; lock-free; O(1). */
SPINDLE_API void spindle_bh_schedule_idle(spindle_bh *bh);
/* Unschedule it; a cancelled bottom half does not run until scheduled again.
 * Any thread; O(1). NULL is ignored. */
SPINDLE_API void spindle_bh_cancel(spindle_bh *bh);
/* Cancel and free it. Safe from inside any callback, its own included; a
 * scheduled bottom half that is deleted never runs. Loop thread. O(1). */
SPINDLE_API void spindle_bh_delete(spindle_bh *bh);
/* Run cb(opaque) once in a later iteration, then free what this allocated.
 * 0, -EINVAL (NULL ctx or cb) or -ENOMEM. Any thread. O(1). */
SPINDLE_API int spindle_bh_oneshot(spindle_ctx *ctx, spindle_io_fn *cb,
                                   void *opaque);

/* ------------------------------------------------------------------------
 * Timers: one-shot, on an absolute deadline in ns of their clock.
 *
 * Threads: spindle_timer_mod, _mod_in, _mod_anticipate, _del, _pending and
 * _expire_ns may be called from any thread; the rest from the loop thread.
 * On the thread running the iteration (from any callback) arming and
 * disarming take no lock. Another thread's change is applied by the loop
 * before its next timeout computation; it is visible to _pending and
 * _expire_ns at once, and wakes a sleeping loop when it asks for an earlier
 * deadline than the one the loop sleeps towards. Calls on one timer from
 * several threads at the same time take effect in some order, the last one
 * winning.
 *
 * Lateness: a loop that sleeps towards a deadline sleeps at least the
 * thread's timer slack (Linux: 50 us by default), on every back-end, so
 * that dense deadlines are fired in batches; while busy polling it spins
 * instead and fires within about a microsecond. A program that wants exact
 * short sleeps sets the loop thread's slack with prctl(PR_SET_TIMERSLACK).
 *
 * Memory: a timer takes 64 bytes, in blocks of 63 that its context keeps
 * (a freed timer's memory serves the context's next spindle_timer_new;
 * spindle_ctx_free releases it all), plus 60 KiB per clock for the wheel,
 * from the clock's first timer on.
 */

typedef enum { SPINDLE_CLOCK_MONOTONIC, SPINDLE_CLOCK_REALTIME } spindle_clock;

/* The clock's current time in ns (CLOCK_MONOTONIC or CLOCK_REALTIME);
 * -EINVAL for an unknown clock. Any thread. */
SPINDLE_API int64_t spindle_now_ns(spindle_clock clock);

/* Create a disarmed timer on the clock. NULL + errno EINVAL (NULL ctx or
 * cb, unknown clock) or ENOMEM. Reserves all that arming will need, so
 * arming never allocates and cannot fail. Loop thread. O(1). */
SPINDLE_API spindle_timer *spindle_timer_new(spindle_ctx *ctx,
                                             spindle_clock clock,
                                             spindle_io_fn *cb, void *opaque);
/* Arm (or re-arm) it to fire at expire_ns on its clock (a negative deadline
 * counts as 0, long past). It fires once, on the loop thread, in the first
 * iteration at or after the deadline, never before; it is no longer pending
 * when cb runs, and cb may re-arm or free it. A timer armed while timers
 * are running waits for a later iteration even if its deadline has passed.
 * Timers fire in deadline order, equal deadlines in the order they were
 * armed. A realtime timer fires when the realtime clock reaches its
 * deadline, wherever the clock was set meanwhile (a loop asleep when the
 * clock is set wakes at the time it computed before, then looks again).
 * Any thread (see above); never allocates. O(1); re-arming within the same
 * slot of the wheel (a deadline pushed back by a little) touches only the
 * timer. NULL is ignored. */
SPINDLE_API void spindle_timer_mod(spindle_timer *t, int64_t expire_ns);
/* Arm it delta_ns from now on its clock: spindle_timer_mod(t,
 * spindle_now_ns(clock) + delta_ns), saturating at INT64_MAX (a negative
 * delta is in the past, so the timer is due). The idle timeout of a
 * connection, re-armed on every read, is one call. Any thread; never
 * allocates. O(1) plus one clock read. NULL is ignored. */
SPINDLE_API void spindle_timer_mod_in(spindle_timer *t, int64_t delta_ns);
/* Like spindle_timer_mod, but only ever moves the deadline earlier: a timer
 * armed for an earlier time is left alone; a disarmed one is armed. Any
 * thread; never allocates. O(1). NULL is ignored. */
SPINDLE_API void spindle_timer_mod_anticipate(spindle_timer *t,
                                              int64_t expire_ns);
/* Disarm it (it will not fire until armed again); harmless on a disarmed
 * timer. Any thread; never allocates. O(1). NULL is ignored. */
SPINDLE_API void spindle_timer_del(spindle_timer *t);
/* Disarm and free it. Safe from inside any callback, its own included.
 * Loop thread. O(1). NULL is ignored. */
SPINDLE_API void spindle_timer_free(spindle_timer *t);
/* Whether it is armed (the last mod or del, from whatever thread, says).
 * Any thread. O(1). false for NULL. */
SPINDLE_API bool spindle_timer_pending(const spindle_timer *t);
/* Its deadline (a negative one asked for reads 0), or -1 if it is not armed
 * (or NULL). Any thread. O(1). */
SPINDLE_API int64_t spindle_timer_expire_ns(const spindle_timer *t);

/* ------------------------------------------------------------------------
 * Embedding: running the context inside another loop (GLib, libuv, a
 * hand-written poll loop) that does the sleeping. The host sleeps on one fd
 * and drives the context through prepare, check and dispatch, as GLib
 * drives a GSource (libspindle-glib, <spindle-glib.h>, is that adapter):
 *
 *     int fd = spindle_get_fd(ctx);
 *     for (;;) {
 *         int64_t ns = spindle_prepare(ctx);     // 0: work is ready
 *         struct pollfd p = { fd, POLLIN, 0 };
 *         ppoll(&p, 1, ns < 0 ? NULL : &(struct timespec){
 *                   ns / 1000000000, ns % 1000000000 }, NULL);
 *         if (spindle_check(ctx, p.revents != 0))
 *             spindle_dispatch(ctx);
 *     }
 *
 * Every feature works in this mode: fd handlers, bottom halves and timers,
 * wake-ups from other threads (spindle_notify, spindle_bh_schedule, ... end
 * the host's sleep), nested spindle_poll() from callbacks, the thread pool.
 * Busy polling does not: the host decides when to sleep and serves other
 * sources meanwhile, so the context neither spins in prepare nor adapts a
 * polling window; dispatch calls each io_poll once, as a non-blocking
 * spindle_poll() does, and io_poll handlers are otherwise served through
 * their fds (poll_end runs before the host sleeps). A context on the poll
 * back-end moves to epoll when first embedded (poll keeps no kernel state
 * that could make an fd readable). prepare, check and dispatch are for the
 * loop thread, the host's, and a context driven this way must not be driven
 * by spindle_poll() on another thread at the same time.
 */

/* The fd the host loop waits on for reading (POLLIN): it becomes readable
 * whenever the context has work: a ready fd handler, a due timer, a
 * scheduled bottom half, a notify. It is the context's own epoll set, the
 * same fd for the context's whole life, and belongs to the context (do not
 * close it or read from it). Returns the fd,
 * or -EINVAL (NULL), -EBUSY (another thread is inside an iteration),
 * -EMFILE, -ENFILE, -ENOMEM (nothing changed then; the context still works
 * with spindle_poll). Loop thread. O(1) after the first call. */
SPINDLE_API int spindle_get_fd(spindle_ctx *ctx);

/* Before the host sleeps: returns how long it may sleep on spindle_get_fd()
 * in ns: 0 means work is ready (call spindle_dispatch without sleeping), -1
 * means no limit. From a non-zero return on, a wake-up from any thread
 * makes the fd readable, until spindle_check or spindle_dispatch. Errors:
 * -EINVAL (NULL), -EBUSY (another thread is inside an iteration), or those
 * of spindle_get_fd. Loop thread. Cost O(b), no system call; O(n) system
 * calls in two rare cases: external handlers were disabled since the last
 * prepare (their fds leave the epoll set, so that they do not wake the host
 * meanwhile), or the handlers changed while epoll has refused an fd (a
 * regular file: the context then runs on poll, the host's sleep is bounded
 * to 1 ms and every check dispatches). Any io_poll calls made here (leaving
 * the busy-polling state that a spindle_poll left) may run user callbacks. */
SPINDLE_API int64_t spindle_prepare(spindle_ctx *ctx);

/* After the host's sleep: ends what prepare announced and returns whether
 * spindle_dispatch has work: fd_readable (what the host's wait said of
 * spindle_get_fd(); pass true if unknown), a wake-up, a scheduled bottom
 * half or a due timer. No system call. false for NULL or EBUSY. A host may
 * skip it and call spindle_dispatch directly. Loop thread. O(b). */
SPINDLE_API bool spindle_check(spindle_ctx *ctx, bool fd_readable);

/* Run what is ready without blocking: accept the wake-ups, collect ready
 * fds from the back-end, call each io_poll once, then run bottom halves, fd
 * handlers and expired timers. Returns progress as spindle_poll() does.
 * Nested spindle_poll() calls from its callbacks are allowed. NULL: false,
 * errno EINVAL; another thread inside an iteration: false, errno EBUSY.
 * Loop thread. Cost as a non-blocking spindle_poll(): one back-end wait
 * with zero timeout. */
SPINDLE_API bool spindle_dispatch(spindle_ctx *ctx);

/* ------------------------------------------------------------------------
 * Thread pool: blocking work (file I/O, DNS, compression) run on worker
 * threads, its completion delivered back to the loop thread. One pool per
 * context, created at first use; workers start when work finds none idle,
 * up to max_workers (default 64), and those above min_workers (default 0)
 * exit after SPINDLE_POOL_IDLE_MS without work.
 *
 * A finished job's done callback is delivered like any busy-polled event:
 * by the pool's own io_poll handler while the loop spins or runs (no system
 * call per completion), through an eventfd while it sleeps. A worker that
 * runs out of work spins for up to the loop's current polling window before
 * it sleeps (one worker at a time), so a loop that submits jobs back to
 * back hands them over without waking a thread; an idle loop has no window
 * and its workers do not spin. A job that no idle worker will take starts
 * a new worker (below max_workers) even while the others are busy, so work
 * functions may block, on each other too.
 */

/* Workers above min_workers exit after this many ms without work. */
#define SPINDLE_POOL_IDLE_MS 2000

typedef int spindle_work_fn(void *arg);           /* on a worker thread */
typedef void spindle_done_fn(void *arg, int ret); /* on the loop thread */
typedef struct spindle_work spindle_work;

/* Run work(arg) on a worker thread, then done(arg, ret) on the loop thread
 * with what work returned. done runs exactly once per submission (with
 * -ECANCELED if the job was cancelled), in a later iteration: never inside
 * this call, nor in the iteration that made it. done may be NULL. Jobs
 * start in submission order (they may finish in any order). Work functions
 * may call any function documented "any thread" on the context, this one
 * included. The handle is valid until done returns; it is only for
 * spindle_work_cancel. Returns NULL + errno: EINVAL (NULL ctx or work),
 * ENOMEM, EAGAIN (no worker thread could be started and none exists),
 * ECANCELED (the context is being freed). Any thread. Allocates at most one
 * 64-byte record (none when a recycled one is at hand); one mutex
 * acquisition; a futex wake-up only when it must wake a sleeping worker.
 * No system call when a worker is spinning for work. */
SPINDLE_API spindle_work *spindle_work_submit(spindle_ctx *ctx,
                                              spindle_work_fn *work,
                                              spindle_done_fn *done,
                                              void *arg);

/* Cancel a job that has not started: returns 0, and done(arg, -ECANCELED)
 * follows in a later iteration (not inside this call); work never runs.
 * -EBUSY if it is running or has finished (done follows with its result),
 * or was cancelled already; -EINVAL for NULL. Loop thread (the handle dies
 * when done returns, which happens there), or any thread that knows done
 * has not run yet. O(1). */
SPINDLE_API int spindle_work_cancel(spindle_work *w);

/* Bound the pool: 0 <= min_workers <= max_workers, max_workers >= 1, else
 * -EINVAL (NULL context too) and nothing changes. Starts workers up to
 * min_workers now (-EAGAIN if one could not be started; the bounds are set
 * anyway); workers above a lowered max_workers exit once idle. Any thread. */
SPINDLE_API int spindle_set_pool_params(spindle_ctx *ctx, int min_workers,
                                        int max_workers);

/* ------------------------------------------------------------------------
 * Loop threads: a thread that runs a context of its own, fed by other
 * threads through bottom halves, timers, fd handlers and the thread pool
 * (QEMU's IOThread: one context per core, fed from anywhere).
 */

typedef struct spindle_thread spindle_thread;

/* Create a context with opts (NULL: defaults) and a thread that runs its
 * loop (blocking spindle_poll() calls) until spindle_thread_free. The
 * thread blocks all signals. NULL + errno as spindle_ctx_new_opts, or
 * EAGAIN (no thread). Any thread. */
SPINDLE_API spindle_thread *spindle_thread_new(const spindle_options *opts);

/* Stop the thread, wait for it to finish, then free its context (as
 * spindle_ctx_free does: pending work is dropped, running work functions
 * are waited for). From any other thread: when it returns, no callback of
 * the context is running or will run. A stop is never lost, whether the
 * loop sleeps, spins or runs callbacks. From one of the thread's own
 * callbacks: returns at once; the loop stops when the callback returns and
 * the thread then frees the context and itself, so, as for
 * spindle_ctx_free, no other thread may still be inside a call on the
 * context then (a spindle_bh_schedule whose BH triggers the free may still
 * be notifying the context when the BH runs: trigger it through an fd, or
 * make sure such calls have returned). NULL is ignored. */
SPINDLE_API void spindle_thread_free(spindle_thread *t);

/* The thread's context; NULL for NULL. Any thread. Functions marked "loop
 * thread" (spindle_bh_new, spindle_timer_new, ...) must run on the loop
 * thread: call them from a callback there, for example through
 * spindle_thread_call. */
SPINDLE_API spindle_ctx *spindle_thread_ctx(spindle_thread *t);

/* Run fn(opaque) on the thread's loop and wait until it has returned (from
 * the loop thread itself it calls fn at once). 0, -EINVAL (NULL t or fn),
 * -ENOMEM. Any thread but one that the loop thread waits for. */
SPINDLE_API int spindle_thread_call(spindle_thread *t, spindle_io_fn *fn,
                                    void *opaque);

#ifdef __cplusplus
}
#endif

#endif /* SPINDLE_H */
