/* Child programs for tests/bench/bench.py, run as the CMD of the init under test.
 *
 *   helper zombies N READY GO STAMP
 *       The service.  Forks an intermediate process, which forks N children that
 *       _exit(0) at once; the intermediate does not wait for them, so they stay
 *       zombies.  Once all N are zombies (waitid WNOWAIT) the intermediate creates
 *       READY and blocks reading the FIFO GO.  When bench.py writes to GO, the
 *       intermediate writes CLOCK_MONOTONIC (ns) to STAMP and _exit()s: its N zombies
 *       are re-parented to PID 1 at once.  The service reaps the intermediate itself
 *       and then pause()s with default dispositions (so TERM kills it).
 *
 *   helper term READY STAMP
 *       Installs a SIGTERM handler that writes CLOCK_MONOTONIC (ns) to STAMP, then
 *       re-raises SIGTERM with the default action (the process dies of SIGTERM, as
 *       a program with the default disposition would).  Creates READY, then pause()s.
 *
 * Build: gcc -O2 -o helper helper.c   (bench.py does this itself, in a temp dir).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void write_stamp(int fd, long long ns) {
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%lld\n", ns);
    if (write(fd, buf, n) < 0) { /* nothing useful to do */ }
}

static void touch(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) { perror(path); _exit(1); }
    close(fd);
}

static int zombies(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: helper zombies N READY GO STAMP\n"); return 2; }
    int n = atoi(argv[2]);
    const char *ready = argv[3], *go = argv[4], *stamp = argv[5];
    pid_t mid = fork();
    if (mid < 0) { perror("fork"); return 1; }
    if (mid == 0) {
        pid_t *kids = calloc(n, sizeof *kids);
        for (int i = 0; i < n; i++) {
            pid_t k = fork();
            if (k < 0) { perror("fork (zombie)"); _exit(1); }
            if (k == 0) _exit(0);
            kids[i] = k;
        }
        /* Wait until every child has exited, without reaping it (WNOWAIT).  Not by
         * reading /proc/PID/stat: that would leave a /proc dentry per zombie, which the
         * kernel then has to flush at every reap, slowing down all the inits. */
        for (int i = 0; i < n; i++) {
            siginfo_t info;
            while (waitid(P_PID, kids[i], &info, WEXITED | WNOWAIT) < 0 && errno == EINTR) {}
        }
        int stamp_fd = open(stamp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (stamp_fd < 0) { perror(stamp); _exit(1); }
        touch(ready);
        int go_fd = open(go, O_RDONLY | O_CLOEXEC);  /* blocks until bench.py opens it */
        char c;
        while (read(go_fd, &c, 1) < 0 && errno == EINTR) {}
        write_stamp(stamp_fd, now_ns());
        _exit(0);  /* the n zombies are handed over to PID 1 here */
    }
    int status;
    while (waitpid(mid, &status, 0) < 0 && errno == EINTR) {}
    for (;;) pause();
}

static int term_fd = -1;

static void on_term(int sig) {
    write_stamp(term_fd, now_ns());
    signal(sig, SIG_DFL);
    raise(sig);  /* pending until the handler returns; then the default action kills us */
}

static int term(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: helper term READY STAMP\n"); return 2; }
    term_fd = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (term_fd < 0) { perror(argv[3]); return 1; }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    touch(argv[2]);
    for (;;) pause();
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "zombies") == 0) return zombies(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "term") == 0) return term(argc, argv);
    fprintf(stderr, "usage: helper zombies N READY GO STAMP | helper term READY STAMP\n");
    return 2;
}
