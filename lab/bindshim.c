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
 *  - An execd passes the shim on: its shepherds, jobs, prologs, load sensors,
 *    `qrsh -inherit` and builtin rsh/qlogin ends speak from the exec host's
 *    address, as they would on a real host (qrsh and qlogin need it). qmaster
 *    removes the variables, so a JSV does not inherit them.
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
#include <stdarg.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#define BIND_ENV "GE_BIND_IP"

static struct in_addr bind_ip;
static int active;
static int (*real_bind)(int, const struct sockaddr *, socklen_t);
static int (*real_connect)(int, const struct sockaddr *, socklen_t);
static int (*real_execve)(const char *, char *const[], char *const[]);
static char preload_var[4200];   /* "LD_PRELOAD=<this shim>" */
static char bind_var[64];        /* "GE_BIND_IP=<address>" */

static int is_loopback(struct in_addr a) {
    return (ntohl(a.s_addr) >> 24) == 127;
}

__attribute__((constructor)) static void shim_init(void) {
    real_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    real_connect = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    real_execve = (int (*)(const char *, char *const[], char *const[]))dlsym(RTLD_NEXT, "execve");
    Dl_info info;
    if (dladdr((void *)shim_init, &info) && info.dli_fname) {
        /* Preloaded by bare name from a standard directory (the only way it survives
         * glibc's secure-execution mode): pass the bare name on too. */
        const char *slash = strrchr(info.dli_fname, '/');
        const char *base = slash ? slash + 1 : info.dli_fname;
        int bare = strncmp(info.dli_fname, "/usr/lib/", 9) == 0 ||
                   strncmp(info.dli_fname, "/lib/", 5) == 0;
        snprintf(preload_var, sizeof preload_var, "LD_PRELOAD=%s", bare ? base : info.dli_fname);
    }

    const char *ip = getenv(BIND_ENV);
    if (ip && inet_pton(AF_INET, ip, &bind_ip) == 1 && is_loopback(bind_ip)) {
        active = 1;
        snprintf(bind_var, sizeof bind_var, "GE_BIND_IP=%s", ip);
    }

    /* The settings are now in this process's memory; the real daemon must
     * not pass them on to the processes it starts. */
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        const char *base = strrchr(exe, '/');
        base = base ? base + 1 : exe;
        /* Only qmaster's children drop it. An exec host's processes keep it: a
         * shepherd, a job, `qrsh -inherit` and the builtin rsh/qlogin connections
         * must come from the host's own address, or the other end resolves
         * 127.0.0.1 to this machine's name and refuses them. */
        if (strcmp(base, "sge_qmaster") == 0) {
            unsetenv("LD_PRELOAD");
            unsetenv(BIND_ENV);
            preload_var[0] = '\0';  /* and its execs do not carry them on */
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

/* Son of Grid Engine's execd drops LD_PRELOAD from what it passes to its shepherds
 * (measured: GE_BIND_IP arrived, LD_PRELOAD did not), and the shepherd builds the job's
 * environment from the spooled environment file. So every exec of a pinned process
 * carries the two variables on, whatever environment it is given. */
static int has_var(char *const envp[], const char *name, size_t n) {
    for (size_t i = 0; envp && envp[i]; i++)
        if (strncmp(envp[i], name, n) == 0)
            return 1;
    return 0;
}

int execve(const char *path, char *const argv[], char *const envp[]) {
    if (!real_execve)
        return -1;
    if (!active || !preload_var[0] ||
        (has_var(envp, "LD_PRELOAD=", 11) && has_var(envp, "GE_BIND_IP=", 11)))
        return real_execve(path, argv, envp);
    size_t n = 0;
    while (envp && envp[n])
        n++;
    char **env = malloc((n + 3) * sizeof *env);
    if (!env)
        return real_execve(path, argv, envp);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(envp[i], "LD_PRELOAD=", 11) != 0 && strncmp(envp[i], "GE_BIND_IP=", 11) != 0)
            env[k++] = envp[i];
    env[k++] = preload_var;
    env[k++] = bind_var;
    env[k] = NULL;
    int rc = real_execve(path, argv, env);
    free(env);
    return rc;
}

/* glibc's exec*() and system() reach execve internally, past this shim: put the
 * variables back into environ first, so they inherit them. */
static void restore_environ(void) {
    if (active && preload_var[0]) {
        setenv("LD_PRELOAD", preload_var + 11, 1);
        setenv("GE_BIND_IP", bind_var + 11, 1);
    }
}

int execv(const char *path, char *const argv[]) {
    restore_environ();
    int (*real)(const char *, char *const[]) =
        (int (*)(const char *, char *const[]))dlsym(RTLD_NEXT, "execv");
    return real ? real(path, argv) : -1;
}

int execvp(const char *file, char *const argv[]) {
    restore_environ();
    int (*real)(const char *, char *const[]) =
        (int (*)(const char *, char *const[]))dlsym(RTLD_NEXT, "execvp");
    return real ? real(file, argv) : -1;
}

/* execl, execle and execlp: collect the list, then go through the wrappers above
 * (sge_execd starts its shepherds with one of these). */
#define MAX_LIST_ARGS 1024
static int collect(const char *arg0, va_list ap, char **argv) {
    int n = 0;
    argv[n++] = (char *)arg0;
    while (arg0 && n < MAX_LIST_ARGS - 1 && (argv[n] = va_arg(ap, char *)) != NULL)
        n++;
    argv[n] = NULL;
    return n;
}

int execl(const char *path, const char *arg0, ...) {
    char *argv[MAX_LIST_ARGS];
    va_list ap;
    va_start(ap, arg0);
    collect(arg0, ap, argv);
    va_end(ap);
    extern char **environ;
    return execve(path, argv, environ);
}

int execle(const char *path, const char *arg0, ...) {
    char *argv[MAX_LIST_ARGS];
    va_list ap;
    va_start(ap, arg0);
    collect(arg0, ap, argv);
    char **envp = va_arg(ap, char **);
    va_end(ap);
    return execve(path, argv, envp);
}

int execlp(const char *file, const char *arg0, ...) {
    char *argv[MAX_LIST_ARGS];
    va_list ap;
    va_start(ap, arg0);
    collect(arg0, ap, argv);
    va_end(ap);
    return execvp(file, argv);
}
