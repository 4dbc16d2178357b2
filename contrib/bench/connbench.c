/*
 * connbench: short-connection load generator and target for contrib/bench.
 *
 *   connbench serve PORT THREADS [ADDRESS]
 *       Listen on ADDRESS:PORT (default 127.0.0.1; backlog 4096); THREADS threads each loop:
 *       accept, write one byte, close.  Prints "ready" once listening and
 *       runs until killed.
 *
 *   connbench load PORT CONCURRENCY SECONDS MAX_CONNECTIONS [ADDRESS]
 *       CONCURRENCY threads each loop: socket, connect to ADDRESS:PORT (default 127.0.0.1),
 *       read one byte, close; the latency of one connection is the time
 *       from connect() to the first byte read.  Stops after SECONDS or
 *       MAX_CONNECTIONS attempts, whichever comes first, and prints one JSON
 *       object: attempts, successful connections, errors, elapsed seconds,
 *       connections per second and latency percentiles in microseconds.
 *       connect() and read() each time out after 2 s.
 *
 * Written in C so the load generator costs little CPU next to the proxy
 * under test: on a 2-core machine a Python client would be the bottleneck
 * of the direct baseline.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in target;
static int listen_fd;
static atomic_long next_slot;
static long max_slots;
static double deadline;
static long *latency_ns; /* -1: the attempt failed */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void set_timeouts(int fd) {
    struct timeval tv = {.tv_sec = 2, .tv_usec = 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

static long one_connection(void) {
    char byte;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    set_timeouts(fd);
    double start = now();
    long result = -1;
    if (connect(fd, (struct sockaddr *)&target, sizeof target) == 0 &&
        recv(fd, &byte, 1, 0) == 1)
        result = (long)((now() - start) * 1e9);
    close(fd);
    return result;
}

static void *load_worker(void *arg) {
    (void)arg;
    while (now() < deadline) {
        long slot = atomic_fetch_add(&next_slot, 1);
        if (slot >= max_slots)
            break;
        latency_ns[slot] = one_connection();
    }
    return NULL;
}

static void *serve_worker(void *arg) {
    (void)arg;
    for (;;) {
        int fd = accept(listen_fd, NULL, NULL);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE)
                usleep(1000);
            continue;
        }
        (void)!write(fd, "x", 1);
        close(fd);
    }
    return NULL;
}

static int cmp_long(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x > y) - (x < y);
}

static double percentile_us(const long *sorted, long n, double p) {
    if (n == 0)
        return -1;
    long i = (long)(p * (n - 1) + 0.5);
    return sorted[i] / 1e3;
}

static int serve(int port, int threads) {
    int one = 1;
    listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    target.sin_port = htons(port);
    if (bind(listen_fd, (struct sockaddr *)&target, sizeof target) < 0 ||
        listen(listen_fd, 4096) < 0) {
        perror("connbench serve");
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    pthread_t tid[64];
    if (threads < 1 || threads > 64)
        threads = 1;
    for (int i = 0; i < threads; i++)
        pthread_create(&tid[i], NULL, serve_worker, NULL);
    pthread_join(tid[0], NULL);
    return 0;
}

static int load(int port, int concurrency, double seconds, long max_connections) {
    if (concurrency < 1 || concurrency > 1024 || max_connections < 1)
        return 2;
    target.sin_port = htons(port);
    max_slots = max_connections;
    latency_ns = calloc(max_slots, sizeof(long));
    pthread_t *tid = calloc(concurrency, sizeof(pthread_t));
    if (!latency_ns || !tid)
        return 1;
    double start = now();
    deadline = start + seconds;
    for (int i = 0; i < concurrency; i++)
        pthread_create(&tid[i], NULL, load_worker, NULL);
    for (int i = 0; i < concurrency; i++)
        pthread_join(tid[i], NULL);
    double elapsed = now() - start;
    long attempts = atomic_load(&next_slot);
    if (attempts > max_slots)
        attempts = max_slots;
    long ok = 0;
    for (long i = 0; i < attempts; i++)
        if (latency_ns[i] >= 0)
            latency_ns[ok++] = latency_ns[i];
    qsort(latency_ns, ok, sizeof(long), cmp_long);
    printf("{\"attempts\": %ld, \"connections\": %ld, \"errors\": %ld, "
           "\"seconds\": %.3f, \"per_second\": %.1f, \"p50_us\": %.1f, "
           "\"p99_us\": %.1f, \"max_us\": %.1f}\n",
           attempts, ok, attempts - ok, elapsed, ok / elapsed,
           percentile_us(latency_ns, ok, 0.50), percentile_us(latency_ns, ok, 0.99),
           percentile_us(latency_ns, ok, 1.0));
    return 0;
}

static int set_address(const char *text) {
    if (inet_pton(AF_INET, text, &target.sin_addr) != 1) {
        fprintf(stderr, "connbench: not an IPv4 address: %s\n", text);
        return 0;
    }
    return 1;
}

int main(int argc, char **argv) {
    target.sin_family = AF_INET;
    target.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if ((argc == 4 || argc == 5) && strcmp(argv[1], "serve") == 0) {
        if (argc == 5 && !set_address(argv[4]))
            return 2;
        return serve(atoi(argv[2]), atoi(argv[3]));
    }
    if ((argc == 6 || argc == 7) && strcmp(argv[1], "load") == 0) {
        if (argc == 7 && !set_address(argv[6]))
            return 2;
        return load(atoi(argv[2]), atoi(argv[3]), atof(argv[4]), atol(argv[5]));
    }
    fprintf(stderr, "usage: connbench serve PORT THREADS [ADDRESS]\n"
                    "       connbench load PORT CONCURRENCY SECONDS MAX_CONNECTIONS [ADDRESS]\n");
    return 2;
}
