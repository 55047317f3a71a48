/* spindle bench: other programs as peers (servers and load generators for
 * the nbd and http rows): start them, wait for their port, read their CPU
 * time, stop them.
 * SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

bool tool_found(const char *name)
{
    const char *path = getenv("PATH");
    char buf[4096];
    if (strchr(name, '/'))
        return access(name, X_OK) == 0;
    while (path && *path) {
        size_t n = strcspn(path, ":");
        snprintf(buf, sizeof buf, "%.*s/%s", (int)n, path, name);
        if (access(buf, X_OK) == 0)
            return true;
        path += n + (path[n] == ':');
    }
    return false;
}

int free_tcp_port(void)
{
    /* Bind port 0, read what the kernel chose, let it go: the server about
     * to be started takes it (nothing else on this machine asks for
     * ports in the meantime, in practice). */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    BENCH_CHECK(fd >= 0, "socket: %s", strerror(errno));
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    BENCH_CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
                    getsockname(fd, (struct sockaddr *)&a, &len) == 0,
                "bind: %s", strerror(errno));
    close(fd);
    return ntohs(a.sin_port);
}

static bool port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* Servers still running: a bench that fails (BENCH_FAIL exits) must not
 * leave them behind. */
static pid_t live[8];

static void kill_live(void)
{
    for (int i = 0; i < 8; i++)
        if (live[i] > 0) {
            kill(live[i], SIGKILL);
            waitpid(live[i], NULL, 0);
        }
}

pid_t proc_start(char *const argv[], const char *env, const char *log_path)
{
    static bool registered;
    if (!registered)
        registered = atexit(kill_live) == 0;
    pid_t pid = fork();
    BENCH_CHECK(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        int fd = open(log_path ? log_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int null = open("/dev/null", O_RDONLY);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        if (null >= 0)
            dup2(null, 0);
        if (env)
            putenv((char *)env);
        execvp(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    for (int i = 0; i < 8; i++)
        if (live[i] == 0) {
            live[i] = pid;
            break;
        }
    return pid;
}

void server_wait_port(pid_t pid, int port, const char *log_path)
{
    for (int i = 0; i < 1000; i++) { /* 10 s */
        if (port_open(port))
            return;
        int st;
        BENCH_CHECK(waitpid(pid, &st, WNOHANG) == 0, "server exited before listening (see %s)",
                    log_path ? log_path : "its output");
        sleep_until_ns(now_ns() + 10000000);
    }
    BENCH_FAIL("server pid %d: nothing listens on port %d after 10 s (see %s)", (int)pid, port,
               log_path ? log_path : "its output");
}

int proc_wait(pid_t pid)
{
    return proc_wait_timeout(pid, -1);
}

int proc_wait_timeout(pid_t pid, int64_t timeout_ns)
{
    int st;
    int64_t end = timeout_ns < 0 ? INT64_MAX : now_ns() + timeout_ns;
    for (;;) {
        pid_t r = waitpid(pid, &st, timeout_ns < 0 ? 0 : WNOHANG);
        if (r == pid)
            break;
        BENCH_CHECK(r == 0 || errno == EINTR, "waitpid: %s", strerror(errno));
        if (r == 0 && now_ns() >= end) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            st = -1;
            break;
        }
        if (r == 0)
            sleep_until_ns(now_ns() + 5000000); /* a child that takes seconds */
    }
    for (int i = 0; i < 8; i++)
        if (live[i] == pid)
            live[i] = 0;
    if (st == -1)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

void server_stop(pid_t pid)
{
    kill(pid, SIGTERM);
    if (proc_wait_timeout(pid, 10 * 1000000000ll) == -1)
        fprintf(stderr, "bench: server pid %d did not stop within 10 s of SIGTERM: killed\n",
                (int)pid);
}

int64_t proc_cpu_ns(pid_t pid)
{
    /* utime and stime (fields 14 and 15 of /proc/PID/stat) sum every
     * thread of the process, in clock ticks. */
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    BENCH_CHECK(f, "%s: %s", path, strerror(errno));
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    unsigned long long ut = 0, st = 0;
    BENCH_CHECK(p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut,
                            &st) == 2,
                "cannot parse %s", path);
    return (int64_t)((ut + st) * (1000000000ull / (unsigned long long)sysconf(_SC_CLK_TCK)));
}
