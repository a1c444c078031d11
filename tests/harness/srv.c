/* The only program of the runtime tiers' image (tests/harness/runtime.rs),
 * built static by the test: `srv pause` sleeps until signalled (the sandbox
 * "pause" process); `srv serve NAME PORT` answers every TCP connection on
 * PORT with "NAME <peer address>\n" and every UDP datagram to PORT with
 * "NAME <peer address>", over IPv4 and IPv6. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void bye(int sig) { (void)sig; _exit(0); }

static void peer(const struct sockaddr_storage *a, char *out, size_t n) {
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const void *)a;
        inet_ntop(AF_INET6, &s->sin6_addr, out, n);
        if (strncmp(out, "::ffff:", 7) == 0 && strchr(out, '.'))
            memmove(out, out + 7, strlen(out + 7) + 1);
    } else {
        const struct sockaddr_in *s = (const void *)a;
        inet_ntop(AF_INET, &s->sin_addr, out, n);
    }
}

/* A dual-stack socket on PORT, or IPv4 only where IPv6 is off. */
static int listener(int type, int port) {
    int one = 1, zero = 0;
    int fd = socket(AF_INET6, type, 0);
    if (fd >= 0) {
        struct sockaddr_in6 a6 = {0};
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons(port);
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, (void *)&a6, sizeof a6) == 0)
            return fd;
        close(fd);
    }
    struct sockaddr_in a4 = {0};
    a4.sin_family = AF_INET;
    a4.sin_port = htons(port);
    fd = socket(AF_INET, type, 0);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, (void *)&a4, sizeof a4) != 0) {
        perror("bind");
        exit(1);
    }
    return fd;
}

int main(int argc, char **argv) {
    signal(SIGTERM, bye);
    signal(SIGINT, bye);
    if (argc < 4 || strcmp(argv[1], "serve") != 0) {
        for (;;)
            pause();
    }
    const char *name = argv[2];
    int port = atoi(argv[3]);
    int t = listener(SOCK_STREAM, port), u = listener(SOCK_DGRAM, port);
    if (listen(t, 128) != 0) {
        perror("listen");
        return 1;
    }
    for (;;) {
        struct pollfd p[2] = {{t, POLLIN, 0}, {u, POLLIN, 0}};
        if (poll(p, 2, -1) < 0)
            continue;
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        char ip[INET6_ADDRSTRLEN + 1], msg[512];
        if (p[0].revents) {
            int c = accept(t, (void *)&ss, &len);
            if (c >= 0) {
                peer(&ss, ip, sizeof ip);
                int n = snprintf(msg, sizeof msg, "%s %s\n", name, ip);
                if (write(c, msg, n) < 0)
                    perror("write");
                shutdown(c, SHUT_WR);
                close(c);
            }
        }
        if (p[1].revents) {
            len = sizeof ss;
            char buf[1500];
            if (recvfrom(u, buf, sizeof buf, 0, (void *)&ss, &len) >= 0) {
                peer(&ss, ip, sizeof ip);
                int n = snprintf(msg, sizeof msg, "%s %s", name, ip);
                sendto(u, msg, n, 0, (void *)&ss, len);
            }
        }
    }
}
