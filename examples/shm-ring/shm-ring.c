/* shm-ring: two processes sharing a ring of messages in memory, the
 * consumer on spindle, with virtio-style notification suppression.
 *
 *   shm-ring [-n COUNT] [-i INTERVAL_US] [--polling on|off|both]
 *
 * A producer process puts COUNT messages (each carrying the time it was
 * sent) into a ring in shared memory, one every INTERVAL_US microseconds
 * (default 20), and "kicks" the consumer through an eventfd so that a
 * sleeping consumer wakes up. The consumer prints the latency from send to
 * receipt and how many kicks each message cost, with spindle's busy
 * polling on and off. That is the point of the example: a kick is a system
 * call for the producer and a wake-up for the consumer, and busy polling
 * makes most of them unnecessary.
 *
 * How the consumer uses spindle:
 * - The kick is a spindle_notifier (an eventfd), registered with
 *   spindle_set_event_notifier(): its io_read runs when the consumer was
 *   woken by a kick, and its io_poll, ring_poll(), checks the ring itself,
 *   in user space, with no system call.
 * - Before sleeping in the kernel, spindle calls the io_poll callbacks in a
 *   tight loop for a short window ("busy polling"), which adapts to how
 *   fast events come: a message that arrives within it is taken without
 *   any sleep or wake-up.
 * - spindle_set_event_notifier_poll() adds poll_begin and poll_end, run
 *   when the loop starts busy polling and when it stops to sleep. Here they
 *   set and clear a flag in the shared memory, `no_kick`, which tells the
 *   producer not to kick while the consumer polls anyway: the notification
 *   suppression of virtio rings. After poll_end, spindle checks every
 *   io_poll once more, so a message that slipped in just as the flag was
 *   cleared (the producer saw it still set, and did not kick) is not left
 *   waiting.
 * - With polling off (poll_max_ns = 0), poll_begin never runs, the producer
 *   kicks for every message, and every message wakes the consumer.
 *
 * The program checks that every message arrived once and in order, and
 * exits with status 1 if not.
 * SPDX-License-Identifier: MIT */
#include <getopt.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <spindle.h>

#include "../common.h"

#define RING_SLOTS 256 /* a power of two */

/* The shared memory. Producer and consumer each write their own cache
 * line, so they do not slow each other down. */
typedef struct ring {
    alignas(64) atomic_uint tail; /* next slot the producer fills */
    alignas(64) atomic_uint head; /* next slot the consumer reads */
    alignas(64) atomic_int no_kick; /* 1 while the consumer busy-polls */
    atomic_long kicks;              /* kicks the producer made */
    alignas(64) struct {
        int64_t sent_ns;
        uint64_t seq;
    } slot[RING_SLOTS];
} ring;

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* ------------------------------------------------------------------------
 * The producer (a child process; no spindle here). */

static void produce(ring *r, spindle_notifier *kick, long count, int64_t interval_ns)
{
    int64_t next = now_ns();
    for (long seq = 0; seq < count; seq++) {
        /* Wait for the send time, spinning: a fast device, not a sleepy
         * one (sleeping would take tens of microseconds on its own). */
        while (now_ns() < next)
            ;
        next += interval_ns;
        unsigned t = atomic_load_explicit(&r->tail, memory_order_relaxed);
        while (t - atomic_load_explicit(&r->head, memory_order_acquire) == RING_SLOTS)
            ; /* full: the consumer is behind */
        r->slot[t % RING_SLOTS].sent_ns = now_ns();
        r->slot[t % RING_SLOTS].seq = (uint64_t)seq;
        /* Publish the message (pairs with the consumer's acquire load of
         * tail), then, after a full barrier, look at no_kick. The consumer
         * does the mirror image in poll_end: clear no_kick, full barrier,
         * look at tail. Of the two, at least one sees the other's write:
         * either we kick, or spindle's check after poll_end finds the
         * message. */
        atomic_store_explicit(&r->tail, t + 1, memory_order_release);
        atomic_thread_fence(memory_order_seq_cst);
        if (!atomic_load_explicit(&r->no_kick, memory_order_relaxed)) {
            spindle_notifier_set(kick);
            atomic_fetch_add_explicit(&r->kicks, 1, memory_order_relaxed);
        }
    }
}

/* ------------------------------------------------------------------------
 * The consumer (on spindle). */

typedef struct consumer {
    ring *r;
    spindle_notifier *kick;
    long count, received;
    bool out_of_order;
    int64_t *latency_ns;
} consumer;

/* io_poll: take every message in the ring. Cheap when there is none: two
 * loads from shared memory. */
static bool ring_poll(void *opaque)
{
    consumer *c = opaque;
    ring *r = c->r;
    unsigned h = atomic_load_explicit(&r->head, memory_order_relaxed);
    unsigned t = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (h == t)
        return false;
    int64_t now = now_ns();
    for (; h != t; h++) {
        if (r->slot[h % RING_SLOTS].seq != (uint64_t)c->received)
            c->out_of_order = true;
        if (c->received < c->count)
            c->latency_ns[c->received++] = now - r->slot[h % RING_SLOTS].sent_ns;
    }
    /* Hand the slots back (pairs with the producer's acquire load). */
    atomic_store_explicit(&r->head, h, memory_order_release);
    return true;
}

/* io_read: a kick woke us. */
static void on_kick(void *opaque)
{
    consumer *c = opaque;
    spindle_notifier_test_and_clear(c->kick);
    ring_poll(c);
}

static void poll_begin(void *opaque) /* busy polling starts: no kicks needed */
{
    consumer *c = opaque;
    atomic_store_explicit(&c->r->no_kick, 1, memory_order_relaxed);
}

static void poll_end(void *opaque) /* about to sleep: kick me again */
{
    consumer *c = opaque;
    atomic_store_explicit(&c->r->no_kick, 0, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst); /* pairs with produce()'s */
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* One run: fork a producer, consume everything, print one line. false if a
 * message went missing or came out of order. */
static bool run(ring *r, bool polling, long count, int64_t interval_ns)
{
    memset(r, 0, sizeof *r);
    spindle_notifier *kick = spindle_notifier_new(false);
    spindle_options o = SPINDLE_OPTIONS_INIT; /* the defaults; then: */
    if (!polling)
        o.poll_max_ns = 0; /* busy polling off */
    spindle_ctx *ctx = spindle_ctx_new_opts(&o);
    consumer c = {.r = r, .kick = kick, .count = count};
    c.latency_ns = calloc((size_t)count, sizeof *c.latency_ns);
    if (!kick || !ctx || !c.latency_ns ||
        spindle_set_event_notifier(ctx, kick, false, on_kick, ring_poll, &c)) {
        fprintf(stderr, "shm-ring: cannot set up the consumer\n");
        exit(1);
    }
    spindle_set_event_notifier_poll(ctx, kick, poll_begin, poll_end);

    /* The child inherits the shared mapping and the notifier's eventfd. */
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        perror("shm-ring: fork");
        exit(1);
    }
    if (pid == 0) {
        produce(r, kick, count, interval_ns);
        _exit(0);
    }
    struct timespec cpu0, cpu1;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu0);
    while (c.received < count)
        spindle_poll(ctx, true);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu1);
    int st;
    waitpid(pid, &st, 0);

    spindle_stats stats;
    spindle_get_stats(ctx, &stats);
    long kicks = atomic_load(&r->kicks);
    qsort(c.latency_ns, (size_t)count, sizeof *c.latency_ns, cmp_i64);
    double cpu_ns = (double)(cpu1.tv_sec - cpu0.tv_sec) * 1e9 + (double)(cpu1.tv_nsec - cpu0.tv_nsec);
    printf("polling %-3s  %8.1f %8.1f   %6ld of %ld (%.3f per message)  %8ld  %8.0f\n",
           polling ? "on" : "off", (double)c.latency_ns[count / 2] / 1000.0,
           (double)c.latency_ns[count * 99 / 100] / 1000.0, kicks, count,
           (double)kicks / (double)count, (long)stats.blocking_waits, cpu_ns / (double)count);
    bool ok = !c.out_of_order && WIFEXITED(st) && WEXITSTATUS(st) == 0;
    if (c.out_of_order)
        fprintf(stderr, "shm-ring: messages arrived out of order\n");
    spindle_set_event_notifier(ctx, kick, false, NULL, NULL, NULL);
    spindle_ctx_free(ctx);
    spindle_notifier_free(kick);
    free(c.latency_ns);
    return ok;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {{"polling", required_argument, NULL, 'P'},
                                             {NULL, 0, NULL, 0}};
    long count = 20000, interval_us = 20;
    bool on = true, off = true;
    int opt;
    while ((opt = getopt_long(argc, argv, "n:i:", longopts, NULL)) != -1) {
        if (opt == 'n' && example_parse_long("count", optarg, 1, 10000000, &count))
            continue;
        if (opt == 'i' && example_parse_long("interval", optarg, 0, 1000000, &interval_us))
            continue;
        if (opt == 'P' && (!strcmp(optarg, "on") || !strcmp(optarg, "off") || !strcmp(optarg, "both"))) {
            on = strcmp(optarg, "off") != 0;
            off = strcmp(optarg, "on") != 0;
            continue;
        }
        fprintf(stderr, "usage: shm-ring [-n COUNT] [-i INTERVAL_US] [--polling on|off|both]\n");
        return 2;
    }
    ring *r = mmap(NULL, sizeof(ring), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED) {
        perror("shm-ring: mmap");
        return 1;
    }
    double load = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &load) != 1)
            load = -1;
        fclose(f);
    }
    /* Busy polling pays when there is a CPU to spin on: on a loaded
     * machine the spinning consumer and producer wait for time slices. */
    printf("shm-ring: %ld messages, one every %ld us (load average %.2f on %ld CPUs)\n", count,
           interval_us, load, sysconf(_SC_NPROCESSORS_ONLN));
    printf("            latency us (p50, p99)   kicks                              "
           "sleeps  cpu ns/msg\n");
    bool ok = true;
    if (on)
        ok &= run(r, true, count, interval_us * 1000);
    if (off)
        ok &= run(r, false, count, interval_us * 1000);
    munmap(r, sizeof(ring));
    return ok ? 0 : 1;
}
