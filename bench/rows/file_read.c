/* file-read: 4 KiB reads at random offsets of a 1 GiB file, keeping 1 or 32
 * in flight: spindle's requests on its ring (spindle_add_sqe), with busy
 * polling on and off, libuv's uv_fs_read (thread pool) and a plain liburing
 * loop (the floor). ns per read (the inverse of IOPS, given in the note),
 * latency p50/p99 from submission to completion callback, and CPU ns per
 * read (the whole process: thread pools and io_uring workers included).
 *
 * The file ($BENCH_FILE, default /var/tmp/spindle-bench-1g.dat) is written
 * once and reused. Reads use O_DIRECT where the file system allows it, so
 * they reach the device; otherwise the page cache, as the output says.
 * SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rows.h"

#define FILE_SIZE (1LL << 30)
#define MAX_DEPTH 32

static const char *file_path(void)
{
    const char *p = getenv("BENCH_FILE");
    return p ? p : "/var/tmp/spindle-bench-1g.dat";
}

/* The file, written with pseudo-random bytes if it is not there yet. */
static void file_make(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && st.st_size == FILE_SIZE)
        return;
    fprintf(stderr, "bench: file-read: writing %s (1 GiB, once)\n", path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    BENCH_CHECK(fd >= 0, "file-read: create %s: %s", path, strerror(errno));
    enum { CHUNK = 1 << 20 };
    uint64_t *buf = malloc(CHUNK), x = 0x9e3779b97f4a7c15ull;
    BENCH_CHECK(buf, "out of memory");
    for (long long done = 0; done < FILE_SIZE; done += CHUNK) {
        for (size_t i = 0; i < CHUNK / sizeof *buf; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf[i] = x;
        }
        BENCH_CHECK(write(fd, buf, CHUNK) == CHUNK, "file-read: write: %s", strerror(errno));
    }
    BENCH_CHECK(fsync(fd) == 0 && close(fd) == 0, "file-read: fsync");
    free(buf);
}

static void *aligned_buffers(void)
{
    void *p = NULL;
    BENCH_CHECK(posix_memalign(&p, 4096, (size_t)MAX_DEPTH * FR_BLOCK) == 0,
                "out of memory");
    memset(p, 0, (size_t)MAX_DEPTH * FR_BLOCK);
    return p;
}

/* --- one library through the adapter --- */

typedef struct slot {
    struct fr_run *run;
    bench_read r;
    int64_t t0;
} slot;

typedef struct lib_run {
    fr_run *run;
    const bench_adapter *a;
    void *loop;
    slot s[MAX_DEPTH];
    long issued;
} lib_run;

static void issue(lib_run *l, slot *s)
{
    s->r.off = fr_next_off(l->run);
    s->t0 = now_ns();
    l->issued++;
    l->a->read_start(l->loop, &s->r);
}

static void on_read(void *arg, int res)
{
    slot *s = arg;
    lib_run *l = (lib_run *)s->run->user;
    fr_record(s->run, res, now_ns() - s->t0);
    if (l->issued < s->run->target && now_ns() < s->run->cap_at)
        issue(l, s);
}

static void lib_once(fr_run *run, const bench_impl *im, void *bufs)
{
    lib_run l = {.run = run, .a = im->a};
    run->user = &l;
    l.loop = im->a->loop_new(&im->opts);
    for (int i = 0; i < run->depth; i++) {
        l.s[i] = (slot){.run = run};
        l.s[i].r = (bench_read){.fd = run->fd, .buf = (char *)bufs + (size_t)i * FR_BLOCK,
                                .len = FR_BLOCK, .cb = on_read, .arg = &l.s[i]};
    }
    fr_start(run);
    for (int i = 0; i < run->depth; i++)
        issue(&l, &l.s[i]);
    while (run->done < l.issued)
        im->a->run_once(l.loop, true);
    fr_stop(run);
    im->a->loop_free(l.loop);
}

/* --- the row --- */

typedef struct cell {
    double ns[64], p50[64], p99[64], cpu[64], iops[64];
} cell;

static void emit(const char *param, const char *impl, int kind, cell *c, const char *how)
{
    double iops[64];
    memcpy(iops, c->iops, sizeof iops);
    /* The median IOPS for the note (sorting a copy). */
    for (int i = 1; i < cfg.reps; i++)
        for (int j = i; j > 0 && iops[j - 1] > iops[j]; j--) {
            double t = iops[j];
            iops[j] = iops[j - 1];
            iops[j - 1] = t;
        }
    char note[96];
    snprintf(note, sizeof note, "%.0f IOPS, %s", iops[cfg.reps / 2], how);
    result_add("file-read", param, "ns/read", impl, kind, c->ns, cfg.reps, note);
    result_add("file-read", param, "p50 ns", impl, kind, c->p50, cfg.reps, "");
    result_add("file-read", param, "p99 ns", impl, kind, c->p99, cfg.reps, "");
    result_add("file-read", param, "cpu-ns/read", impl, kind, c->cpu, cfg.reps, "");
}

static void take(cell *c, int r, const fr_run *run)
{
    fr_summary s = fr_summarize(run);
    c->ns[r] = s.ns_per_read;
    c->p50[r] = s.p50;
    c->p99[r] = s.p99;
    c->cpu[r] = s.cpu_per_read;
    c->iops[r] = 1e9 / s.ns_per_read;
}

void row_file_read(void)
{
    const char *path = file_path();
    file_make(path);
    bool direct = true;
    int fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (fd < 0 && errno == EINVAL) {
        direct = false;
        fd = open(path, O_RDONLY | O_CLOEXEC);
    }
    BENCH_CHECK(fd >= 0, "file-read: open %s: %s", path, strerror(errno));
    const char *how = direct ? "O_DIRECT" : "page cache (no O_DIRECT here)";
    fprintf(stderr, "bench: file-read: %s, %s\n", path, how);
    void *bufs = aligned_buffers();

    bench_impl impls[4];
    int k = 0;
    impls[k++] = (bench_impl){"spindle io_uring", &adapter_spindle,
                              {.backend = BACKEND_IO_URING}, KIND_SPINDLE};
    impls[k++] = (bench_impl){"spindle io_uring (poll off)", &adapter_spindle,
                              {.backend = BACKEND_IO_URING, .poll_off = true},
                              KIND_SPINDLE};
    impls[k++] = (bench_impl){"libuv", &adapter_libuv, {0}, KIND_PEER};

    static const int depths[] = {1, 32};
    for (int d = 0; d < 2; d++) {
        char param[32];
        snprintf(param, sizeof param, "depth %d", depths[d]);
        long target = cfg.quick ? 20000 : 200000;
        fr_run run = {.fd = fd, .depth = depths[d], .target = target};
        cell c;
        /* The floor, first untimed. */
        for (int r = -1; r < cfg.reps; r++) {
            run.target = r < 0 ? target / 10 : target;
            floor_liburing_read(&run, bufs);
            if (r >= 0)
                take(&c, r, &run);
        }
        emit(param, "floor: liburing", KIND_FLOOR, &c, how);
        for (int i = 0; i < k; i++) {
            if (!impl_wanted(impls[i].label))
                continue;
            run.target = target / 10;
            lib_once(&run, &impls[i], bufs);
            run.target = target;
            for (int r = 0; r < cfg.reps; r++) {
                lib_once(&run, &impls[i], bufs);
                take(&c, r, &run);
            }
            emit(param, impls[i].label, impls[i].kind, &c, how);
        }
    }
    free(bufs);
    close(fd);
}
