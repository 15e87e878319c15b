/*
 * bindshim.c - LD_PRELOAD shim that pins a Grid Engine daemon to one loopback
 * address, so several sge_execd can run on one machine as different hosts.
 *
 *   GE_BIND_IP=127.0.0.11 LD_PRELOAD=/path/bindshim.so sge_execd
 *
 * Why: commlib (SGE 8.1.9) reverse-resolves the peer's source IP and refuses
 * the connection unless that name equals the host name the peer claims; an
 * unbound socket on lo always speaks from 127.0.0.1. And every execd listens
 * on 0.0.0.0:6445, so a second one on the same machine cannot bind.
 *
 *  - bind(0.0.0.0:port) becomes bind(GE_BIND_IP:port).
 *  - connect() of an unbound IPv4 socket to a loopback address first binds it
 *    to GE_BIND_IP:0, so the peer sees the right source address.
 *  - Inside the daemon binary itself (sge_execd, sge_qmaster) the variables
 *    are removed from the environment, so shepherds, jobs, prologs and load
 *    sensors do not inherit the shim.
 *
 * Only 127.0.0.0/8 is accepted; anything else leaves the shim inactive.
 * commlib in 8.1.9 uses AF_INET only, so IPv6 sockets are left alone.
 *
 * Build: gcc -shared -fPIC -O2 -o bindshim.so bindshim.c -ldl
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BIND_ENV "GE_BIND_IP"

static struct in_addr bind_ip;
static int active;
static int (*real_bind)(int, const struct sockaddr *, socklen_t);
static int (*real_connect)(int, const struct sockaddr *, socklen_t);

static int is_loopback(struct in_addr a) {
    return (ntohl(a.s_addr) >> 24) == 127;
}

__attribute__((constructor)) static void shim_init(void) {
    real_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    real_connect = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");

    const char *ip = getenv(BIND_ENV);
    if (ip && inet_pton(AF_INET, ip, &bind_ip) == 1 && is_loopback(bind_ip))
        active = 1;

    /* The settings are now in this process's memory; the real daemon must
     * not pass them on to the processes it starts. */
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        const char *base = strrchr(exe, '/');
        base = base ? base + 1 : exe;
        if (strcmp(base, "sge_execd") == 0 || strcmp(base, "sge_qmaster") == 0) {
            unsetenv("LD_PRELOAD");
            unsetenv(BIND_ENV);
        }
    }
}

int bind(int fd, const struct sockaddr *sa, socklen_t len) {
    if (!real_bind)
        return -1;
    if (active && sa && sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in sin;
        memcpy(&sin, sa, sizeof sin);
        if (sin.sin_addr.s_addr == htonl(INADDR_ANY)) {
            sin.sin_addr = bind_ip;
            return real_bind(fd, (const struct sockaddr *)&sin, sizeof sin);
        }
    }
    return real_bind(fd, sa, len);
}

int connect(int fd, const struct sockaddr *sa, socklen_t len) {
    if (!real_connect)
        return -1;
    if (active && sa && sa->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in dst, cur;
        socklen_t cl = sizeof cur;
        memcpy(&dst, sa, sizeof dst);
        if (is_loopback(dst.sin_addr) &&
            getsockname(fd, (struct sockaddr *)&cur, &cl) == 0 &&
            cur.sin_family == AF_INET && cur.sin_port == 0) {
            struct sockaddr_in me;
            memset(&me, 0, sizeof me);
            me.sin_family = AF_INET;
            me.sin_addr = bind_ip;
            /* best effort: if it fails, connect from the default address */
            (void)real_bind(fd, (const struct sockaddr *)&me, sizeof me);
        }
    }
    return real_connect(fd, sa, len);
}
