/* spindle bench: the driver. Runs the rows, then prints one table and
 * writes bench/results/results.jsonl and chart.svg.
 *
 *   spindle-bench [--quick] [--reps N] [--out DIR] [ROW...]
 *   rows: wake wake-busy polled polled-low polled-mixed fd timers defer memory
 *         pool file-read nbd http
 * SPDX-License-Identifier: MIT */
#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "rows/rows.h"

const bench_impl peer_impls[] = {
    {"libuv", &adapter_libuv, {0}, KIND_PEER},
    {"libev", &adapter_libev, {0}, KIND_PEER},
    {"libevent", &adapter_libevent, {0}, KIND_PEER},
    {"glib", &adapter_glib, {0}, KIND_PEER},
};
const int n_peer_impls = sizeof peer_impls / sizeof peer_impls[0];

/* The load average: busy-polling rows mean little on a loaded machine. */
static double loadavg(void)
{
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1)
            l = -1;
        fclose(f);
    }
    return l;
}

static void cpu_model(char *buf, size_t n)
{
    snprintf(buf, n, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[256];
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "model name", 10)) {
            char *v = strchr(line, ':');
            if (v) {
                v += 1 + (v[1] == ' ');
                v[strcspn(v, "\n")] = 0;
                snprintf(buf, n, "%s", v);
            }
            break;
        }
    }
    fclose(f);
}

static int open_fds(void)
{
    int k = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 16;
    while (readdir(d))
        k++;
    closedir(d);
    return k;
}

/* Raise the fd limit to its hard limit, and work out the largest N for
 * fd-dispatch: N pipes need 2N fds, plus what the loops and stdio use. */
static void raise_fd_limit(long *limit)
{
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        getrlimit(RLIMIT_NOFILE, &rl);
    *limit = (long)rl.rlim_cur;
    long spare = *limit - open_fds() - 64; /* loops' own fds, with room */
    cfg.max_fds_n = (int)(spare / 2 > 1000000 ? 1000000 : spare / 2);
}

static void row_wake_sleeping(void) { row_wake(false); }
static void row_wake_busy(void) { row_wake(true); }

static bool want(int argc, char **argv, int first, const char *row)
{
    if (first >= argc)
        return true;
    for (int i = first; i < argc; i++)
        if (!strcmp(argv[i], row))
            return true;
    return false;
}

int main(int argc, char **argv)
{
    const char *out = "bench/results";
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--quick"))
            cfg.quick = true;
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            cfg.reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--out") && i + 1 < argc)
            out = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--quick] [--reps N] [--out DIR] [ROW...]\n"
                            "rows: wake wake-busy polled polled-low polled-mixed fd timers defer "
                            "memory pool file-read nbd http\n",
                    argv[0]);
            return 2;
        }
    }
    if (cfg.reps < 5 || cfg.reps > 64) {
        fprintf(stderr, "bench: --reps must be 5 to 64\n");
        return 2;
    }
    /* Its parent must exist; the rows write their logs there. */
    if (mkdir(out, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "bench: --out %s: %s\n", out, strerror(errno));
        return 2;
    }
    cfg.out_dir = out;
    long limit;
    raise_fd_limit(&limit);
    pin_thread(0); /* BENCH_PIN=1: the B side of every ping-pong takes CPU 1 */

    char cpu[160], machine[400], mjson[600];
    struct utsname u;
    uname(&u);
    cpu_model(cpu, sizeof cpu);
    snprintf(machine, sizeof machine, "%ld CPUs (nproc), %s, Linux %s %s, fd limit %ld, load %.2f at start",
             sysconf(_SC_NPROCESSORS_ONLN), cpu, u.release, u.machine, limit, loadavg());
    snprintf(mjson, sizeof mjson,
             "{\"machine\":{\"nproc\":%ld,\"cpu\":\"%s\",\"kernel\":\"%s\",\"arch\":\"%s\","
             "\"fd_limit\":%ld,\"loadavg\":%.2f},\"reps\":%d,\"quick\":%s}",
             sysconf(_SC_NPROCESSORS_ONLN), cpu, u.release, u.machine, limit, loadavg(), cfg.reps,
             cfg.quick ? "true" : "false");
    fprintf(stderr, "bench: %s; %d repetitions per cell%s\n", machine, cfg.reps,
            cfg.quick ? " (quick)" : "");

    static const struct {
        const char *name;
        void (*run)(void);
    } rows[] = {
        {"wake", row_wake_sleeping}, {"wake-busy", row_wake_busy},
        {"polled", row_polled},      {"polled-low", row_polled_low_load},
        {"polled-mixed", row_polled_mixed},
        {"fd", row_fd_dispatch},     {"timers", row_timers},
        {"defer", row_defer},        {"memory", row_memory},
        {"pool", row_pool},
        {"file-read", row_file_read},
        {"nbd", row_nbd},
        {"http", row_http},
    };
    int64_t start = now_ns();
    for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
        if (!want(argc, argv, i, rows[r].name))
            continue;
        int64_t t0 = now_ns();
        rows[r].run();
        fprintf(stderr, "bench: row %s took %.1f s\n", rows[r].name, (now_ns() - t0) / 1e9);
    }
    fprintf(stderr, "bench: all rows took %.1f s\n", (now_ns() - start) / 1e9);

    printf("spindle bench: %s\n%d repetitions per cell%s; lower is better, except for rates "
           "(/s, IOPS); /bestpeer and /floor divide the median by the best peer's median "
           "and by the best floor's.\n",
           machine, cfg.reps, cfg.quick ? " (QUICK=1: smaller sizes)" : "");
    results_print_table(stdout);
    char path[512];
    snprintf(path, sizeof path, "%s/results.jsonl", out);
    results_write_jsonl(path, mjson);
    snprintf(path, sizeof path, "%s/chart.svg", out);
    results_write_svg(path, machine);
    printf("\nwrote %s/results.jsonl and %s/chart.svg\n", out, out);
    return 0;
}
