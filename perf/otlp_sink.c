/*
 * perf/otlp_sink.c - the exporter benchmark's minimal OTLP/gRPC receiver:
 * an h2c server (nghttp2 server session on a blocking socket, one
 * connection at a time: a benchmark peer, not product code) that answers
 * every TraceService/Export at once with an empty ExportTraceServiceResponse.
 *
 *   otlp_sink PORT [EXPECT_SPANS [PIDFILE]]
 *   e.g.  otlp_sink 14317 2000000 var/bench-exporter/exporter.pid
 *
 * Prints "listening PORT" on stdout once bound (PORT 0: a free one).  Spans
 * are counted on the receive path by walking the request's wire format
 * just deep enough (ExportTraceServiceRequest.resource_spans(1) ->
 * ResourceSpans.scope_spans(2) -> ScopeSpans.spans(2): one Span each), after
 * gunzipping a compressed message; nothing is unpacked.  When EXPECT_SPANS
 * spans have been acknowledged (or on SIGTERM/SIGINT) it prints one JSON
 * line and exits: calls, spans, bytes (gRPC message bytes as received),
 * wall_ns from the first request's arrival to the acknowledgement of the
 * last span, and, when PIDFILE names a live process (the exporter), that
 * process's CPU time (cpu_ns: the sum of its threads' /proc schedstat run
 * times; cpu_tick_ns: utime+stime, 10 ms ticks) and VmHWM/RssAnon/RssShmem
 * (KiB) read at that
 * moment, so the benchmark needs no polling of its own.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>
#include <zlib.h>

typedef struct {
    uint8_t *buf;    /* DATA of the request so far */
    size_t len, cap;
    int gzip;        /* grpc-encoding: gzip */
    size_t sent;     /* bytes of the 5-byte response message sent */
} sink_stream_t;

static struct {
    uint64_t calls, spans, bytes, bad, expect;
    uint64_t t_first, t_last;
    const char *pidfile;
    uint8_t *zbuf;
    size_t zcap;
} st;

static volatile sig_atomic_t stop;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

/* Reads a varint; returns bytes used, 0 on bad input. */
static size_t sink_varint(const uint8_t *p, const uint8_t *end, uint64_t *v)
{
    uint64_t x = 0;
    for (size_t i = 0; i < 10 && p + i < end; i++) {
        x |= (uint64_t)(p[i] & 0x7f) << (7 * i);
        if (!(p[i] & 0x80)) {
            *v = x;
            return i + 1;
        }
    }
    return 0;
}

/* Counts the entries of length-delimited field `want` in p[0..len); with
 * depth > 0, counts inside each of them at the next level instead.
 * Returns -1 on malformed bytes. */
static long sink_count(const uint8_t *p, size_t len, const uint32_t *path, int depth)
{
    const uint8_t *end = p + len;
    long n = 0;
    while (p < end) {
        uint64_t key, l;
        size_t k = sink_varint(p, end, &key);
        if (!k)
            return -1;
        p += k;
        switch (key & 7) {
        case 0:
            if (!(k = sink_varint(p, end, &l)))
                return -1;
            p += k;
            break;
        case 1:
            p += 8;
            break;
        case 5:
            p += 4;
            break;
        case 2:
            if (!(k = sink_varint(p, end, &l)) || l > (uint64_t)(end - p - (long)k))
                return -1;
            p += k;
            if ((key >> 3) == path[0]) {
                if (depth == 0) {
                    n++;
                } else {
                    long c = sink_count(p, (size_t)l, path + 1, depth - 1);
                    if (c < 0)
                        return -1;
                    n += c;
                }
            }
            p += l;
            break;
        default:
            return -1;
        }
        if (p > end)
            return -1;
    }
    return n;
}

/* One complete request body: gRPC messages (5-byte prefix each). */
static void sink_request(sink_stream_t *s)
{
    static const uint32_t path[] = {1, 2, 2};
    size_t off = 0;
    while (off + 5 <= s->len) {
        uint32_t ml = (uint32_t)s->buf[off + 1] << 24 | (uint32_t)s->buf[off + 2] << 16 |
                      (uint32_t)s->buf[off + 3] << 8 | s->buf[off + 4];
        if (ml > s->len - off - 5) {
            st.bad++;
            return;
        }
        const uint8_t *m = s->buf + off + 5;
        size_t mlen = ml;
        st.bytes += 5 + ml;
        if (s->buf[off]) { /* compressed: gzip */
            z_stream z = {0};
            if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) {
                st.bad++;
                return;
            }
            z.next_in = (Bytef *)(uintptr_t)m;
            z.avail_in = ml;
            size_t outl = 0;
            int rc;
            do {
                if (st.zcap - outl < 65536) {
                    st.zcap = st.zcap ? st.zcap * 2 : 1 << 20;
                    st.zbuf = realloc(st.zbuf, st.zcap);
                    if (!st.zbuf) {
                        perror("otlp_sink: realloc");
                        exit(1);
                    }
                }
                z.next_out = st.zbuf + outl;
                z.avail_out = (uInt)(st.zcap - outl);
                rc = inflate(&z, Z_NO_FLUSH);
                outl = st.zcap - z.avail_out;
            } while (rc == Z_OK);
            inflateEnd(&z);
            if (rc != Z_STREAM_END) {
                st.bad++;
                return;
            }
            m = st.zbuf;
            mlen = outl;
        }
        long c = sink_count(m, mlen, path, 2);
        if (c < 0)
            st.bad++;
        else
            st.spans += (uint64_t)c;
        off += 5 + ml;
    }
}

static ssize_t sink_read_response(nghttp2_session *ses, int32_t sid, uint8_t *buf, size_t len,
                                  uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)src, (void)ud;
    sink_stream_t *s = nghttp2_session_get_stream_user_data(ses, sid);
    static const uint8_t empty_msg[5] = {0, 0, 0, 0, 0};
    size_t n = 5 - s->sent;
    if (n > len)
        n = len;
    memcpy(buf, empty_msg + s->sent, n);
    s->sent += n;
    if (s->sent == 5) {
        *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
        static const nghttp2_nv tr[] = {
            {(uint8_t *)"grpc-status", (uint8_t *)"0", 11, 1, NGHTTP2_NV_FLAG_NONE}};
        if (nghttp2_submit_trailer(ses, sid, tr, 1) != 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return (ssize_t)n;
}

static int sink_on_begin_headers(nghttp2_session *ses, const nghttp2_frame *f, void *ud)
{
    (void)ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    sink_stream_t *s = calloc(1, sizeof *s);
    if (!s)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    nghttp2_session_set_stream_user_data(ses, f->hd.stream_id, s);
    if (!st.t_first)
        st.t_first = now_ns();
    return 0;
}

static int sink_on_header(nghttp2_session *ses, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                          const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    (void)flags, (void)ud;
    sink_stream_t *s = nghttp2_session_get_stream_user_data(ses, f->hd.stream_id);
    if (s && nlen == 13 && !memcmp(name, "grpc-encoding", 13) && vlen == 4 && !memcmp(value, "gzip", 4))
        s->gzip = 1;
    return 0;
}

static int sink_on_data(nghttp2_session *ses, uint8_t flags, int32_t sid, const uint8_t *data, size_t len,
                        void *ud)
{
    (void)flags, (void)ud;
    sink_stream_t *s = nghttp2_session_get_stream_user_data(ses, sid);
    if (!s)
        return 0;
    if (s->len + len > s->cap) {
        size_t cap = s->cap ? s->cap : 256 * 1024;
        while (cap < s->len + len)
            cap *= 2;
        uint8_t *b = realloc(s->buf, cap);
        if (!b)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        s->buf = b;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, data, len);
    s->len += len;
    return 0;
}

static int sink_on_frame(nghttp2_session *ses, const nghttp2_frame *f, void *ud)
{
    (void)ud;
    if (!(f->hd.flags & NGHTTP2_FLAG_END_STREAM) ||
        (f->hd.type != NGHTTP2_DATA && f->hd.type != NGHTTP2_HEADERS))
        return 0;
    sink_stream_t *s = nghttp2_session_get_stream_user_data(ses, f->hd.stream_id);
    if (!s)
        return 0;
    st.calls++;
    sink_request(s);
    static const nghttp2_nv hdrs[] = {
        {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, NGHTTP2_NV_FLAG_NONE}};
    nghttp2_data_provider dp = {.read_callback = sink_read_response};
    if (nghttp2_submit_response(ses, f->hd.stream_id, hdrs, 2, &dp) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return 0;
}

static int sink_on_close(nghttp2_session *ses, int32_t sid, uint32_t code, void *ud)
{
    (void)code, (void)ud;
    sink_stream_t *s = nghttp2_session_get_stream_user_data(ses, sid);
    if (s) {
        nghttp2_session_set_stream_user_data(ses, sid, NULL);
        free(s->buf);
        free(s);
    }
    if (st.expect && st.spans >= st.expect && !st.t_last) {
        st.t_last = now_ns(); /* the response to the last span is written below, before exit */
        stop = 1;
    }
    return 0;
}

static int sink_flush(nghttp2_session *ses, int fd)
{
    for (;;) {
        const uint8_t *d;
        ssize_t n = nghttp2_session_mem_send(ses, &d);
        if (n < 0)
            return -1;
        if (n == 0)
            return 0;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(fd, d + off, (size_t)(n - off));
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                return -1;
            }
            off += w;
        }
    }
}

/* utime+stime (ns) and memory (KiB) of the process named in st.pidfile. */
static void sink_proc(char *out, size_t cap)
{
    out[0] = 0;
    FILE *f = st.pidfile ? fopen(st.pidfile, "r") : NULL;
    long pid = 0;
    if (!f || fscanf(f, "%ld", &pid) != 1) {
        if (f)
            fclose(f);
        return;
    }
    fclose(f);
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    unsigned long long ut = 0, stt = 0;
    if ((f = fopen(path, "r"))) {
        if (fgets(line, sizeof line, f)) {
            char *p = strrchr(line, ')');
            /* fields after ") ": state(3) ... utime(14) stime(15) */
            if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &stt) != 2)
                ut = stt = 0;
        }
        fclose(f);
    }
    long hz = sysconf(_SC_CLK_TCK);
    /* ns-precise: the run time of each of its threads (stat has 10 ms ticks) */
    unsigned long long run = 0;
    snprintf(path, sizeof path, "/proc/%ld/task", pid);
    DIR *d = opendir(path);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char tp[128];
        unsigned long long t = 0;
        snprintf(tp, sizeof tp, "/proc/%ld/task/%.32s/schedstat", pid, de->d_name);
        FILE *tf = fopen(tp, "r");
        if (tf && fscanf(tf, "%llu", &t) == 1)
            run += t;
        if (tf)
            fclose(tf);
    }
    if (d)
        closedir(d);
    unsigned long hwm = 0, anon = 0, shm = 0;
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    if ((f = fopen(path, "r"))) {
        while (fgets(line, sizeof line, f)) {
            sscanf(line, "VmHWM: %lu", &hwm);
            sscanf(line, "RssAnon: %lu", &anon);
            sscanf(line, "RssShmem: %lu", &shm);
        }
        fclose(f);
    }
    snprintf(out, cap, ", \"pid\": %ld, \"cpu_ns\": %llu, \"cpu_tick_ns\": %llu, \"vmhwm_kib\": %lu, \"rss_anon_kib\": %lu, \"rss_shmem_kib\": %lu",
             pid, run, (ut + stt) * (1000000000ull / (unsigned long long)hz), hwm, anon, shm);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: otlp_sink PORT [EXPECT_SPANS [PIDFILE]]\n");
        return 2;
    }
    int port = atoi(argv[1]);
    /* Bench experiments: answer each Export after OTLP_SINK_DELAY_US
     * (Jaeger takes ~1 ms), with a PING first when OTLP_SINK_PING=1. */
    const char *dv = getenv("OTLP_SINK_DELAY_US");
    unsigned delay_us = dv ? (unsigned)atoi(dv) : 0;
    bool ping = getenv("OTLP_SINK_PING") && atoi(getenv("OTLP_SINK_PING")) == 1;
    st.expect = argc > 2 ? strtoull(argv[2], NULL, 10) : 0;
    st.pidfile = argc > 3 ? argv[3] : NULL;
    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: a blocking read returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 16) != 0) {
        perror("otlp_sink: bind/listen(127.0.0.1)");
        return 1;
    }
    socklen_t al = sizeof a;
    getsockname(lfd, (struct sockaddr *)&a, &al);
    printf("listening %u\n", ntohs(a.sin_port));
    fflush(stdout);

    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, sink_on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, sink_on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, sink_on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, sink_on_frame);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, sink_on_close);
    size_t rcap = 1 << 20;
    uint8_t *rbuf = malloc(rcap);
    while (!stop) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR)
                continue;
            perror("otlp_sink: accept");
            return 1;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        nghttp2_session *ses;
        nghttp2_session_server_new(&ses, cb, NULL);
        /* Large windows: a 512-span request is ~200 KB; the 64 KiB default
         * would cost a round trip per window. */
        nghttp2_settings_entry set[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 100},
                                        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 24}};
        nghttp2_submit_settings(ses, NGHTTP2_FLAG_NONE, set, 2);
        nghttp2_session_set_local_window_size(ses, NGHTTP2_FLAG_NONE, 0, 1 << 30);
        int ok = sink_flush(ses, fd) == 0;
        while (ok && !stop) {
            ssize_t n = read(fd, rbuf, rcap);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            uint64_t calls0 = st.calls;
            if (nghttp2_session_mem_recv(ses, rbuf, (size_t)n) < 0)
                break;
            if (st.calls != calls0 && delay_us > 0) {
                if (ping) { /* what grpc-go does on reading a request: a PING first */
                    static const uint8_t pf[17] = {0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8};
                    if (write(fd, pf, sizeof pf) != (ssize_t)sizeof pf)
                        break;
                }
                usleep(delay_us);
            }
            if (sink_flush(ses, fd) != 0)
                break;
        }
        sink_flush(ses, fd);
        nghttp2_session_del(ses);
        close(fd);
    }
    if (!st.t_last)
        st.t_last = now_ns();
    char proc[256];
    sink_proc(proc, sizeof proc);
    printf("{\"calls\": %llu, \"spans\": %llu, \"bytes\": %llu, \"bad\": %llu, \"wall_ns\": %llu%s}\n",
           (unsigned long long)st.calls, (unsigned long long)st.spans, (unsigned long long)st.bytes,
           (unsigned long long)st.bad, (unsigned long long)(st.t_first ? st.t_last - st.t_first : 0), proc);
    nghttp2_session_callbacks_del(cb);
    free(rbuf);
    free(st.zbuf);
    close(lfd);
    return 0;
}
