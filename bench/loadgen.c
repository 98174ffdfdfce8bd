/* A lean HTTP/1.1 keep-alive load generator for bench/events_workers.py (loopback only).
 *
 * On a 2-core machine the load generator competes with the server it loads: the Python client of
 * bench/tmf_http.py costs 20-40 us of CPU per request, a third of what the events port costs,
 * which would cap what two workers can show. This one is epoll and pre-encoded requests: a few us.
 *
 *   loadgen HOST PORT REQUESTS CONNECTIONS RATE TIMEOUT
 *
 * REQUESTS is a file of raw HTTP requests separated by NUL bytes; CONNECTIONS keep-alive
 * connections with one request in flight each; RATE 0 sends as fast as answers come back
 * (latency from the send), RATE > 0 offers that many requests a second, open loop (latency from
 * the scheduled send time, so queueing shows). Prints "acked failed seconds p50 p99 max" (latencies
 * in seconds); 201 is acknowledged, any other status failed. Stops after TIMEOUT seconds at most.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    long request;   /* index of the request in flight, -1 when idle */
    double since;   /* when its latency counts from */
    char buffer[8192];
    size_t held;
} conn_t;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static char **requests;
static size_t *sizes;
static long total, next_request, acked, failed;
static double *latencies, started, rate;

static conn_t **idle;
static int idle_count, timer;

static void send_one(conn_t *c, long request, double since) {
    c->request = request;
    c->since = since;
    const char *at = requests[request];
    size_t left = sizes[request];
    while (left > 0) {
        ssize_t n = write(c->fd, at, left);
        if (n < 0) { if (errno == EINTR) continue; perror("write"); exit(1); }
        at += n; left -= (size_t)n;
    }
}

/* Send the requests that are due on idle connections; arm the timer for the next one. */
static void pump(void) {
    while (idle_count > 0 && next_request < total) {
        double t = now(), due = rate > 0 ? started + next_request / rate : t;
        if (due > t) {
            struct itimerspec at = {.it_value = {(time_t)due, (long)((due - (time_t)due) * 1e9)}};
            timerfd_settime(timer, TFD_TIMER_ABSTIME, &at, NULL);
            return;
        }
        send_one(idle[--idle_count], next_request++, due);
    }
}

/* Whether the buffer holds a whole response; its status in *status. */
static int complete(conn_t *c, int *status) {
    c->buffer[c->held < sizeof c->buffer ? c->held : sizeof c->buffer - 1] = 0;
    char *end = strstr(c->buffer, "\r\n\r\n");
    if (end == NULL) return 0;
    long length = 0;
    for (char *p = c->buffer; p < end; p++) {
        if ((p == c->buffer || p[-1] == '\n') && strncasecmp(p, "content-length:", 15) == 0) {
            length = strtol(p + 15, NULL, 10);
            break;
        }
    }
    if ((size_t)(end + 4 - c->buffer) + (size_t)length > c->held) return 0;
    *status = atoi(c->buffer + 9);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 7) { fprintf(stderr, "usage: loadgen HOST PORT REQUESTS CONNECTIONS RATE TIMEOUT\n"); return 2; }
    int port = atoi(argv[2]), connections = atoi(argv[4]);
    rate = atof(argv[5]);
    double timeout = atof(argv[6]);
    FILE *file = fopen(argv[3], "rb");
    if (file == NULL) { perror(argv[3]); return 1; }
    struct stat info;
    fstat(fileno(file), &info);
    char *data = malloc((size_t)info.st_size + 1);
    if (fread(data, 1, (size_t)info.st_size, file) != (size_t)info.st_size) { perror("read"); return 1; }
    fclose(file);
    data[info.st_size] = 0;
    for (off_t i = 0; i <= info.st_size; i++) total += data[i] == 0;
    requests = malloc(sizeof(char *) * (size_t)total);
    sizes = malloc(sizeof(size_t) * (size_t)total);
    latencies = malloc(sizeof(double) * (size_t)total);
    long k = 0;
    for (char *p = data; k < total; k++) {
        requests[k] = p;
        sizes[k] = strlen(p);
        p += sizes[k] + 1;
    }
    int poll = epoll_create1(0);
    conn_t *pool = calloc((size_t)connections, sizeof(conn_t));
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, argv[1], &address.sin_addr);
    for (int i = 0; i < connections; i++) {
        pool[i].fd = socket(AF_INET, SOCK_STREAM, 0);
        pool[i].request = -1;
        int one = 1;
        setsockopt(pool[i].fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(pool[i].fd, (struct sockaddr *)&address, sizeof address) < 0) { perror("connect"); return 1; }
        struct epoll_event event = {.events = EPOLLIN, .data.ptr = &pool[i]};
        epoll_ctl(poll, EPOLL_CTL_ADD, pool[i].fd, &event);
    }
    timer = timerfd_create(CLOCK_MONOTONIC, 0);
    struct epoll_event tick = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(poll, EPOLL_CTL_ADD, timer, &tick);
    idle = malloc(sizeof(conn_t *) * (size_t)connections);
    for (int i = connections - 1; i >= 0; i--) idle[idle_count++] = &pool[i];
    started = now() + 0.01;
    pump();
    long answered = 0;
    struct epoll_event events[256];
    while (answered < total && now() - started < timeout) {
        int ready = epoll_wait(poll, events, 256, 100);
        for (int e = 0; e < ready; e++) {
            conn_t *c = events[e].data.ptr;
            if (c == NULL) {
                unsigned long long fired;
                if (read(timer, &fired, sizeof fired) < 0 && errno != EAGAIN) { perror("timer"); return 1; }
                pump();
                continue;
            }
            ssize_t n = read(c->fd, c->buffer + c->held, sizeof c->buffer - 1 - c->held);
            if (n <= 0) { fprintf(stderr, "connection closed by the server\n"); return 1; }
            c->held += (size_t)n;
            int status;
            if (c->request < 0 || !complete(c, &status)) continue;
            latencies[acked] = now() - c->since;
            if (status == 201) acked++; else failed++;
            answered++;
            c->held = 0;
            c->request = -1;
            idle[idle_count++] = c;
            pump();
        }
    }
    double seconds = now() - started;
    qsort(latencies, (size_t)acked, sizeof(double), compare);
    double p50 = acked ? latencies[(long)(0.50 * acked)] : -1, p99 = acked ? latencies[(long)(0.99 * acked)] : -1;
    printf("%ld %ld %.6f %.6f %.6f %.6f\n", acked, failed, seconds, p50, p99, acked ? latencies[acked - 1] : -1);
    return 0;
}
