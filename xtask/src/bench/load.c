/* cebload: the bench's lean traffic generator (compiled by `cargo xtask bench` with gcc).
 *
 *   cebload MODE CLIENT_NS SERVER_NS LISTEN_PORT DIAL_IP DIAL_PORT SECS CPU
 *
 * MODE: crr (connect, read a 1-byte answer, close; the client closes first, as netperf's
 * TCP_CRR), rr (one TCP connection, 64-byte request/response), urr (the same over UDP).
 * CLIENT_NS/SERVER_NS: network namespace files (/run/netns/X). The server is a forked
 * child that enters SERVER_NS and listens on LISTEN_PORT; the client enters CLIENT_NS and
 * dials DIAL_IP:DIAL_PORT for SECS seconds. Both are pinned to CPU. Prints one line:
 *   n=<completed> secs=<elapsed> slow=<connections that took >= 1 s, or failed>
 *   cpu_us=<user+sys of client and server> p50_us=<> p99_us=<>
 * Nothing per connection but socket/connect/read/close (crr) or write/read (rr): no poll,
 * no options, no timers; the clock is the vDSO's. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MSG 64
#define MAX_SAMPLES (8u << 20)

static void die(const char *what) {
    fprintf(stderr, "cebload: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void enter(const char *ns) {
    int fd = open(ns, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die(ns);
    if (setns(fd, CLONE_NEWNET) != 0) die("setns");
    close(fd);
}

static void pin(int cpu) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    if (sched_setaffinity(0, sizeof s, &s) != 0) die("sched_setaffinity");
}

static int full(int fd, char *b, int len, int rd) {
    int done = 0;
    while (done < len) {
        ssize_t r = rd ? read(fd, b + done, len - done) : write(fd, b + done, len - done);
        if (r <= 0) return -1;
        done += r;
    }
    return 0;
}

static void serve(const char *mode, int port, int ready) {
    int udp = !strcmp(mode, "urr");
    int l = socket(AF_INET, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
    if (l < 0) die("socket");
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (bind(l, (struct sockaddr *)&a, sizeof a) != 0) die("bind");
    if (!udp && listen(l, 4096) != 0) die("listen");
    if (write(ready, "r", 1) != 1) die("ready");
    close(ready);
    char b[MSG];
    if (udp) {
        for (;;) {
            struct sockaddr_in p;
            socklen_t pl = sizeof p;
            ssize_t r = recvfrom(l, b, sizeof b, 0, (struct sockaddr *)&p, &pl);
            if (r > 0) sendto(l, b, r, 0, (struct sockaddr *)&p, pl);
        }
    }
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c < 0) continue;
        if (!strcmp(mode, "crr")) {
            /* Answer, then wait for the client's close: TIME_WAIT stays on its side. */
            if (write(c, "x", 1) == 1) while (read(c, b, sizeof b) > 0) {}
        } else {
            setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            while (full(c, b, MSG, 1) == 0 && full(c, b, MSG, 0) == 0) {}
        }
        close(c);
    }
}

static int cmp(const void *x, const void *y) {
    uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
    return a < b ? -1 : a > b;
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: cebload crr|rr|urr CLIENT_NS SERVER_NS LISTEN_PORT DIAL_IP DIAL_PORT SECS CPU\n");
        return 2;
    }
    const char *mode = argv[1];
    int lport = atoi(argv[4]), cpu = atoi(argv[8]);
    double secs = atof(argv[7]);
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[6]))};
    if (inet_pton(AF_INET, argv[5], &dst.sin_addr) != 1) {
        fprintf(stderr, "cebload: bad address %s\n", argv[5]);
        return 2;
    }
    pin(cpu);
    int p[2];
    if (pipe(p) != 0) die("pipe");
    pid_t srv = fork();
    if (srv < 0) die("fork");
    if (srv == 0) {
        close(p[0]);
        enter(argv[3]);
        serve(mode, lport, p[1]);
        return 0;
    }
    close(p[1]);
    char c;
    if (read(p[0], &c, 1) != 1) {
        fprintf(stderr, "cebload: server did not start\n");
        waitpid(srv, NULL, 0);
        return 1;
    }
    enter(argv[2]);
    uint64_t n = 0, slow = 0;
    uint32_t *lat = NULL;
    int udp = !strcmp(mode, "urr"), crr = !strcmp(mode, "crr"), err = 0;
    char b[MSG];
    memset(b, 'x', sizeof b);
    double start = now(), t = start, end = start + secs;
    if (crr) {
        while (t < end) {
            int s = socket(AF_INET, SOCK_STREAM, 0);
            if (s < 0) { err = errno; break; }
            int ok = connect(s, (struct sockaddr *)&dst, sizeof dst) == 0 && read(s, b, 1) == 1;
            if (!ok && errno != ETIMEDOUT && errno != ECONNREFUSED && errno != ECONNRESET) {
                err = errno;
                close(s);
                break;
            }
            close(s);
            double t2 = now();
            if (ok && t2 - t < 1.0) n++;
            else if (++slow >= 3 && slow * 2 >= n + slow) { err = ETIMEDOUT; t = t2; break; }
            t = t2;
        }
    } else {
        lat = malloc(MAX_SAMPLES * sizeof *lat);
        if (!lat) die("malloc");
        int s = socket(AF_INET, udp ? SOCK_DGRAM : SOCK_STREAM, 0);
        if (s < 0) die("socket");
        int one = 1;
        if (udp) {
            struct timeval tv = {.tv_sec = 1};
            setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        } else {
            setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        if (connect(s, (struct sockaddr *)&dst, sizeof dst) != 0) { err = errno; goto out; }
        while (t < end) {
            int ok;
            if (udp) ok = send(s, b, MSG, 0) == MSG && recv(s, b, MSG, 0) == MSG;
            else ok = full(s, b, MSG, 0) == 0 && full(s, b, MSG, 1) == 0;
            double t2 = now();
            if (ok) {
                if (n < MAX_SAMPLES) lat[n] = (uint32_t)((t2 - t) * 1e9);
                n++;
            } else if (!udp || errno != EAGAIN) {
                err = errno;
                break;
            } else {
                slow++;
            }
            t = t2;
        }
        close(s);
    }
out:
    t = now();
    kill(srv, SIGKILL);
    struct rusage ru, rc;
    wait4(srv, NULL, 0, &rc);
    getrusage(RUSAGE_SELF, &ru);
    double cpu_us = (ru.ru_utime.tv_sec + rc.ru_utime.tv_sec + ru.ru_stime.tv_sec + rc.ru_stime.tv_sec) * 1e6 +
                    (ru.ru_utime.tv_usec + rc.ru_utime.tv_usec + ru.ru_stime.tv_usec + rc.ru_stime.tv_usec);
    double p50 = 0, p99 = 0;
    if (lat && n) {
        uint64_t k = n < MAX_SAMPLES ? n : MAX_SAMPLES;
        qsort(lat, k, sizeof *lat, cmp);
        p50 = lat[(k - 1) / 2] / 1e3;
        p99 = lat[(k * 99 - 1) / 100] / 1e3;
    }
    printf("n=%llu secs=%.6f slow=%llu cpu_us=%.0f p50_us=%.2f p99_us=%.2f\n", (unsigned long long)n, t - start,
           (unsigned long long)slow, cpu_us, p50, p99);
    if (err) {
        errno = err;
        die(crr ? "connections" : "request/response");
    }
    return 0;
}
