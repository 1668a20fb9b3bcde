/* The baselines of bench/oneshot.py, compiled by it with cc.
 *
 *   oneshot_client qmp SOCKET        the least a one-shot QMP client does: connect, read the
 *                                    greeting, qmp_capabilities, query-status, print the reply
 *   oneshot_client time IN CMD ARGS  runs CMD once (stdin from IN, output discarded) and prints
 *                                    "WALL_US PEAK_RSS_KIB EXIT_CODE"
 *
 * `time` is a small process that forks (not vfork) before exec, so the child's peak RSS
 * (getrusage's maxrss carries the pre-exec image over) starts from this tiny image, not
 * from a Python interpreter's. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char buf[65536];
static size_t have;

/* One line of the reply stream into line (without the newline); 0 at EOF. */
static int read_line(int fd, char* line, size_t cap) {
    for (;;) {
        char* nl = memchr(buf, '\n', have);
        if (nl) {
            size_t n = (size_t)(nl - buf);
            if (n >= cap) n = cap - 1;
            memcpy(line, buf, n);
            line[n] = 0;
            have -= (size_t)(nl - buf) + 1;
            memmove(buf, nl + 1, have);
            return 1;
        }
        ssize_t r = read(fd, buf + have, sizeof buf - have);
        if (r <= 0) return 0;
        have += (size_t)r;
    }
}

/* The next reply (not an event). */
static int read_reply(int fd, char* line, size_t cap) {
    while (read_line(fd, line, cap))
        if (strstr(line, "\"return\"") || strstr(line, "\"error\"")) return 1;
    return 0;
}

static int qmp(const char* path) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr*)&a, sizeof a) != 0) return perror("connect"), 1;
    static char line[65536];
    if (!read_line(fd, line, sizeof line)) return 1; /* greeting */
    const char caps[] = "{\"execute\":\"qmp_capabilities\"}\n";
    const char status[] = "{\"execute\":\"query-status\"}\n";
    if (write(fd, caps, sizeof caps - 1) < 0 || !read_reply(fd, line, sizeof line)) return 1;
    if (write(fd, status, sizeof status - 1) < 0 || !read_reply(fd, line, sizeof line)) return 1;
    puts(line);
    close(fd);
    return 0;
}

static int timed(const char* in, char** argv) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    if (pid < 0) return perror("fork"), 1;
    if (pid == 0) {
        int i = open(in, O_RDONLY), o = open("/dev/null", O_WRONLY);
        if (i < 0 || o < 0) _exit(126);
        dup2(i, 0), dup2(o, 1), dup2(o, 2);
        execvp(argv[0], argv);
        _exit(127);
    }
    int status = 0;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0) return perror("wait4"), 1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long us = (t1.tv_sec - t0.tv_sec) * 1000000L + (t1.tv_nsec - t0.tv_nsec) / 1000;
    printf("%ld %ld %d\n", us, ru.ru_maxrss, WIFEXITED(status) ? WEXITSTATUS(status) : 128);
    return 0;
}

int main(int argc, char** argv) {
    if (argc == 3 && strcmp(argv[1], "qmp") == 0) return qmp(argv[2]);
    if (argc >= 4 && strcmp(argv[1], "time") == 0) return timed(argv[2], argv + 3);
    fprintf(stderr, "usage: oneshot_client qmp SOCKET | time IN CMD [ARGS...]\n");
    return 2;
}
