/*
 * An LD_PRELOAD shim for the latency rig of rbd-diffsync-bench: connect() to an address
 * listed in RBD_DIFFSYNC_LAT_MAP goes to the address it maps to instead (the delay proxy).
 *
 *   RBD_DIFFSYNC_LAT_MAP="10.0.0.5:6800=127.0.0.1:41234,10.0.0.5:6801=127.0.0.1:41235"
 *
 * IPv4 only; any other connect() is passed through untouched. Ceph's msgr2 accepts the
 * redirected connection: the client names the address it meant in its handshake, and the
 * OSD does not check where the TCP connection comes from.
 *
 * Build: gcc -shared -fPIC -O2 -o shim.so shim.c -ldl
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_ROUTES 64

struct route {
    struct in_addr from_ip;
    in_port_t from_port; /* network order */
    struct in_addr to_ip;
    in_port_t to_port;
};

static struct route routes[MAX_ROUTES];
static int nroutes;
static int (*real_connect)(int, const struct sockaddr *, socklen_t);
static pthread_once_t once = PTHREAD_ONCE_INIT;

/* Parses "ip:port" into network-order fields; returns 0 on success. */
static int parse_addr(const char *s, size_t len, struct in_addr *ip, in_port_t *port)
{
    char buf[64];
    if (len == 0 || len >= sizeof buf)
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *colon = strrchr(buf, ':');
    if (!colon)
        return -1;
    *colon = '\0';
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end != '\0' || p <= 0 || p > 65535)
        return -1;
    if (inet_pton(AF_INET, buf, ip) != 1)
        return -1;
    *port = htons((unsigned short)p);
    return 0;
}

static void init(void)
{
    real_connect = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    const char *map = getenv("RBD_DIFFSYNC_LAT_MAP");
    if (!map)
        return;
    const char *p = map;
    while (*p && nroutes < MAX_ROUTES) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        struct route r;
        if (eq && parse_addr(p, (size_t)(eq - p), &r.from_ip, &r.from_port) == 0 &&
            parse_addr(eq + 1, len - (size_t)(eq + 1 - p), &r.to_ip, &r.to_port) == 0)
            routes[nroutes++] = r;
        else
            fprintf(stderr, "latency shim: ignoring bad route '%.*s'\n", (int)len, p);
        if (!comma)
            break;
        p = comma + 1;
    }
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    pthread_once(&once, init);
    if (addr && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
        for (int i = 0; i < nroutes; i++) {
            if (routes[i].from_ip.s_addr == in->sin_addr.s_addr &&
                routes[i].from_port == in->sin_port) {
                struct sockaddr_in to = *in;
                to.sin_addr = routes[i].to_ip;
                to.sin_port = routes[i].to_port;
                return real_connect(fd, (const struct sockaddr *)&to, sizeof to);
            }
        }
    }
    return real_connect(fd, addr, len);
}
