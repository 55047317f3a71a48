/* nbd: examples/nbd-server (spindle) against qemu-nbd (QEMU's own
 * AioContext loop) and nbdkit's file plugin, serving the same image file
 * (1 GiB, fully written, on the disk that holds bench/results) over TCP on
 * 127.0.0.1, one server process at a time:
 *
 * - 4 KiB random reads and writes at queue depth 1 (latency p50/p99 of
 *   each request, as the client sees it) and at queue depth 32 (IOPS, and
 *   the server process's CPU time per request, all its threads), from a
 *   small libnbd client in this file;
 * - nbdcopy out (export to null:) and in (a 1 GiB file to the export, with
 *   a flush at the end), MB/s.
 *
 * Configurations: nbd-server on the page cache (on its default back-end,
 * and on epoll) and with --direct (O_DIRECT for aligned requests); qemu-nbd with --aio=io_uring and with
 * --aio=native (both --cache=none, i.e. O_DIRECT) and with its defaults
 * (a thread pool on the page cache); nbdkit file (threads, page cache).
 * Compare page cache with page cache and O_DIRECT with O_DIRECT: each line
 * says which in its note.
 * SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <libnbd.h>
#include <spindle.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rows.h"

#define BLOCK 4096
#define DEPTH 32

typedef struct nbd_impl {
    const char *label;
    int kind;
    bool direct; /* serves with O_DIRECT */
    const char *tool;
    const char *env; /* for nbd-server: its loops' back-end */
} nbd_impl;

/* nbd-server on its default back-end (AUTO: io_uring where the kernel
 * allows it, with the io_uring disk engine) and on epoll (thread-pool
 * engine); the note says which. */
static const nbd_impl impls[] = {
    {"nbd-server", KIND_SPINDLE, false, NBD_SERVER_PATH, NULL},
    {"nbd-server epoll", KIND_SPINDLE, false, NBD_SERVER_PATH, "SPINDLE_BACKEND=epoll"},
    {"nbd-server --direct", KIND_SPINDLE, true, NBD_SERVER_PATH, NULL},
    {"qemu-nbd io_uring,none", KIND_PEER, true, "qemu-nbd", NULL},
    {"qemu-nbd native,none", KIND_PEER, true, "qemu-nbd", NULL},
    {"qemu-nbd defaults", KIND_PEER, false, "qemu-nbd", NULL},
    {"nbdkit file", KIND_PEER, false, "nbdkit", NULL},
};
#define N_IMPLS (int)(sizeof impls / sizeof impls[0])

static char img_path[512], src_path[512];
static uint64_t img_size;

/* The server's command line for impl k on port. */
static void server_argv(int k, int port, char **argv, char *portbuf)
{
    snprintf(portbuf, 16, "%d", port);
    int n = 0;
    if (!strcmp(impls[k].tool, NBD_SERVER_PATH)) {
        argv[n++] = NBD_SERVER_PATH;
        argv[n++] = "-p";
        argv[n++] = portbuf;
        if (impls[k].direct)
            argv[n++] = "--direct";
    } else if (!strcmp(impls[k].tool, "qemu-nbd")) {
        static char *fixed[] = {"qemu-nbd", "-f", "raw", "-b", "127.0.0.1", "-x", "",
                                "--persistent", "--shared=8", NULL};
        for (int i = 0; fixed[i]; i++)
            argv[n++] = fixed[i];
        argv[n++] = "-p";
        argv[n++] = portbuf;
        if (strstr(impls[k].label, "io_uring"))
            argv[n++] = "--aio=io_uring";
        if (strstr(impls[k].label, "native"))
            argv[n++] = "--aio=native";
        if (impls[k].direct)
            argv[n++] = "--cache=none";
    } else {
        static char *fixed[] = {"nbdkit", "--foreground", "--exit-with-parent", "-i",
                                "127.0.0.1", NULL};
        for (int i = 0; fixed[i]; i++)
            argv[n++] = fixed[i];
        argv[n++] = "-p";
        argv[n++] = portbuf;
        argv[n++] = "file";
    }
    argv[n++] = img_path;
    argv[n] = NULL;
}

/* ------------------------------------------------------------------------
 * The images: random data, written in full (no holes). */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void write_random_file(const char *path, uint64_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    BENCH_CHECK(fd >= 0, "%s: %s", path, strerror(errno));
    static uint64_t buf[1 << 17]; /* 1 MiB */
    for (uint64_t done = 0; done < size; done += sizeof buf) {
        for (size_t i = 0; i < sizeof buf / 8; i++)
            buf[i] = rng();
        BENCH_CHECK(write(fd, buf, sizeof buf) == (ssize_t)sizeof buf, "write %s: %s", path,
                    strerror(errno));
    }
    BENCH_CHECK(fsync(fd) == 0 && close(fd) == 0, "fsync %s", path);
}

static bool direct_supported(const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (fd < 0)
        return false;
    close(fd);
    return true;
}

/* ------------------------------------------------------------------------
 * The libnbd client. */

static struct nbd_handle *client_connect(int port)
{
    struct nbd_handle *h = nbd_create();
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    BENCH_CHECK(h && nbd_connect_tcp(h, "127.0.0.1", p) == 0, "nbd connect: %s",
                nbd_get_error());
    BENCH_CHECK(nbd_get_size(h) == (int64_t)img_size, "nbd: export size %lld",
                (long long)nbd_get_size(h));
    return h;
}

static uint64_t random_offset(void)
{
    return rng() % (img_size / BLOCK) * BLOCK;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Queue depth 1 for dur_ns: p50 and p99 of the request latencies. */
static void qd1(struct nbd_handle *h, bool write, int64_t dur_ns, double *p50, double *p99)
{
    static int64_t lat[1 << 20];
    static char buf[BLOCK] __attribute__((aligned(BLOCK)));
    long n = 0;
    int64_t end = now_ns() + dur_ns;
    while (n < (long)(sizeof lat / sizeof lat[0])) {
        uint64_t off = random_offset();
        int64_t t0 = now_ns();
        int r = write ? nbd_pwrite(h, buf, BLOCK, off, 0) : nbd_pread(h, buf, BLOCK, off, 0);
        int64_t t1 = now_ns();
        BENCH_CHECK(r == 0, "nbd %s: %s", write ? "pwrite" : "pread", nbd_get_error());
        lat[n++] = t1 - t0;
        if (t1 >= end)
            break;
    }
    BENCH_CHECK(n >= 10, "nbd: only %ld requests", n);
    qsort(lat, (size_t)n, sizeof lat[0], cmp_i64);
    *p50 = (double)lat[n / 2];
    *p99 = (double)lat[n * 99 / 100];
}

static int on_complete(void *opaque, int *error)
{
    long *done = opaque;
    BENCH_CHECK(*error == 0, "nbd: a queued request failed: %s", strerror(*error));
    (*done)++;
    return 1; /* retire the command */
}

/* Queue depth DEPTH for dur_ns: requests per second, and the server's CPU
 * ns per request. */
static void qd32(struct nbd_handle *h, pid_t server, bool write, int64_t dur_ns, double *iops,
                 double *cpu_per_req)
{
    static char bufs[DEPTH][BLOCK] __attribute__((aligned(BLOCK)));
    long issued = 0, done = 0;
    nbd_completion_callback cb = {.callback = on_complete, .user_data = &done};
    int64_t c0 = proc_cpu_ns(server), t0 = now_ns(), end = t0 + dur_ns;
    while (now_ns() < end) {
        while (nbd_aio_in_flight(h) < DEPTH) {
            char *buf = bufs[issued++ % DEPTH];
            int64_t cookie = write ? nbd_aio_pwrite(h, buf, BLOCK, random_offset(), cb, 0)
                                   : nbd_aio_pread(h, buf, BLOCK, random_offset(), cb, 0);
            BENCH_CHECK(cookie >= 0, "nbd aio: %s", nbd_get_error());
        }
        BENCH_CHECK(nbd_poll(h, -1) >= 0, "nbd_poll: %s", nbd_get_error());
    }
    while (nbd_aio_in_flight(h) > 0)
        BENCH_CHECK(nbd_poll(h, -1) >= 0, "nbd_poll: %s", nbd_get_error());
    int64_t t1 = now_ns(), c1 = proc_cpu_ns(server);
    BENCH_CHECK(done == issued && done > 0, "nbd: %ld of %ld requests completed", done, issued);
    *iops = (double)done * 1e9 / (double)(t1 - t0);
    *cpu_per_req = (double)(c1 - c0) / (double)done;
}

/* nbdcopy in or out, once: MB/s. */
static double nbdcopy(int port, bool in)
{
    char uri[64];
    snprintf(uri, sizeof uri, "nbd://127.0.0.1:%d", port);
    char *argv_in[] = {"nbdcopy", "--flush", src_path, uri, NULL};
    char *argv_out[] = {"nbdcopy", uri, "null:", NULL};
    int64_t t0 = now_ns();
    pid_t pid = proc_start(in ? argv_in : argv_out, NULL, NULL);
    int st = proc_wait_timeout(pid, 120 * 1000000000ll);
    int64_t t1 = now_ns();
    BENCH_CHECK(st != -1, "nbdcopy %s did not finish in 120 s", in ? "in" : "out");
    BENCH_CHECK(st == 0, "nbdcopy %s failed (status %d)", in ? "in" : "out", st);
    return (double)img_size / 1e6 / ((double)(t1 - t0) / 1e9);
}

/* ------------------------------------------------------------------------ */

/* What AUTO gives here, for the notes of nbd-server's default lines. */
static const char *auto_backend(void)
{
    static char b[48];
    spindle_ctx *ctx = spindle_ctx_new();
    bool uring = ctx && !strcmp(spindle_backend_name(ctx), "io_uring");
    snprintf(b, sizeof b, ", AUTO: %s", uring ? "io_uring, io_uring engine"
                                              : "epoll, pool engine");
    spindle_ctx_free(ctx);
    return b;
}

static void run_impl(int k)
{
    const nbd_impl *im = &impls[k];
    int reps = cfg.reps, port = free_tcp_port();
    int64_t dur = cfg.quick ? 100000000 : 400000000;
    char *argv[24], portbuf[16], log[600];
    server_argv(k, port, argv, portbuf);
    /* One log per line, named by its label: each server's last words
     * (nbd-server's count of where writes were made) stay readable. */
    int at = snprintf(log, sizeof log, "%s/nbd-", cfg.out_dir);
    for (const char *l = im->label; *l && at < (int)sizeof log - 5; l++)
        log[at++] = isalnum((unsigned char)*l) ? *l : '-';
    snprintf(log + at, sizeof log - (size_t)at, ".log");
    pid_t pid = proc_start(argv, im->env, log);
    server_wait_port(pid, port, log);
    char note[96];
    snprintf(note, sizeof note, "%s%s", im->direct ? "O_DIRECT" : "page cache",
             im->kind != KIND_SPINDLE ? ""
             : im->env ? ", pool engine" : auto_backend());

    struct nbd_handle *h = client_connect(port);
    double a[64], b[64];
    qd1(h, false, dur / 2, &a[0], &b[0]); /* warm-up, untimed */
    for (int w = 0; w < 2; w++) {
        const char *row = w ? "nbd randwrite 4k" : "nbd randread 4k";
        for (int r = 0; r < reps; r++)
            qd1(h, w, dur, &a[r], &b[r]);
        result_add(row, "QD1", "p50 ns", im->label, im->kind, a, reps, note);
        result_add(row, "QD1", "p99 ns", im->label, im->kind, b, reps, note);
        for (int r = 0; r < reps; r++)
            qd32(h, pid, w, dur, &a[r], &b[r]);
        result_add(row, "QD32", "IOPS", im->label, im->kind, a, reps, note);
        result_add(row, "QD32", "server cpu-ns/req", im->label, im->kind, b, reps, note);
    }
    nbd_shutdown(h, 0);
    nbd_close(h);

    for (int in = 0; in < 2; in++) {
        for (int r = 0; r < reps; r++)
            a[r] = nbdcopy(port, in);
        result_add("nbd nbdcopy", in ? "in" : "out", "MB/s", im->label, im->kind, a, reps,
                   note);
    }
    server_stop(pid);
}

void row_nbd(void)
{
    if (!tool_found("nbdcopy")) {
        fprintf(stderr, "bench: nbd row skipped: nbdcopy not installed "
                        "(scripts/install-deps.sh bench)\n");
        return;
    }
    img_size = cfg.quick ? 256ull << 20 : 1ull << 30;
    snprintf(img_path, sizeof img_path, "%s/nbd-export.img", cfg.out_dir);
    snprintf(src_path, sizeof src_path, "%s/nbd-source.img", cfg.out_dir);
    write_random_file(src_path, img_size);
    bool direct = direct_supported(src_path); /* the export's directory */
    if (!direct)
        fprintf(stderr, "bench: nbd: %s does not take O_DIRECT: O_DIRECT lines skipped\n",
                cfg.out_dir);
    for (int k = 0; k < N_IMPLS; k++) {
        if (!impl_wanted(impls[k].label))
            continue;
        if (!tool_found(impls[k].tool)) {
            fprintf(stderr, "bench: nbd: %s not installed, line skipped\n", impls[k].tool);
            continue;
        }
        if (impls[k].direct && !direct)
            continue;
        /* Every line gets a fresh export: the state of the page cache and
         * of the file system's journal that a line leaves behind changes
         * what writes cost the next one. Run alone right after the export
         * was written, nbdkit served 52k-55k 4 KiB writes a second at
         * queue depth 32 and nbd-server 85k-92k (two runs each); as the
         * last and the first line of the row, 82k-89k and 64k-78k. */
        write_random_file(img_path, img_size);
        run_impl(k);
    }
    unlink(img_path);
    unlink(src_path);
}
