/*
 * tools/payment-sim/payment_sim.c - shop-payment-sim, the external payment
 * processor the stack, the demo and the tests talk to: an HTTP/1.1 server on
 * the io_uring loop with configurable latency, declines, errors and hangs.
 *
 * Usage:
 *   shop-payment-sim                      # ./shop.conf or $SHOP_CONFIG, [payment_sim]
 *   shop-payment-sim --config shop.conf --port 0   # any free port (printed)
 *   shop-payment-sim --check-config
 *   curl -s -XPOST localhost:9099/v1/charges \
 *        -d '{"order_id":"o-1","amount_cents":1299,"currency":"USD"}'
 *   curl -s localhost:9099/stats
 *
 * API:
 *   POST /v1/charges  {"order_id": str, "amount_cents": int > 0, "currency": "XXX"}
 *     200 {"status":"approved","charge_id":"ch_<16 hex>"}
 *     402 {"status":"declined","reason":"card_declined"|"insufficient_funds"}
 *     500 {"status":"error","reason":"processor_error"}
 *     400 {"error":"..."} for a malformed body; no answer at all for a hang.
 *   GET /health  200 {"status":"ok"}
 *   GET /stats   200 {"charges":N,"approved":N,"declined":N,"errors":N,"hung":N,
 *                     "bad_requests":N,"last_traceparent":"00-..."}
 *
 * Outcome of a charge, deterministic so tests and demos are reproducible:
 *   1. magic order-id prefixes: "decline-" -> 402 card_declined,
 *      "error-" -> 500, "hang-" -> never answered, "slow-" -> answered
 *      (approved) after 10 x latency_ms;
 *   2. magic amounts: 40201 -> 402 insufficient_funds, 50001 -> 500,
 *      40801 -> never answered;
 *   3. otherwise u = hash(seed, order_id) in [0, 1): u < error_rate -> 500;
 *      < error_rate + decline_rate -> 402 card_declined; < ... + hang_rate ->
 *      hang; else approved.  Latency = latency_ms + (hash2 % (jitter_ms+1)).
 *   The charge id is derived from the order id (same order, same charge id:
 *   the processor is idempotent per order id, like a real one's
 *   Idempotency-Key); every call is still counted in /stats.
 * Each charge logs one line on stderr with the traceparent it carried.
 *
 * Requests are parsed strictly (core/http1_client.h's pure parser): head
 * <= 8 KiB, <= 32 headers, body <= 4 KiB with Content-Length (chunked
 * requests get 411), one request at a time per connection (no pipelining).
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "http1_client.h"
#include "loop.h"

#define SIM_MAX_HEAD 8192u
#define SIM_MAX_HEADERS 32u
#define SIM_MAX_BODY 4096u

typedef struct {
    uint64_t charges, approved, declined, errors, hung, bad_requests, conns;
    char last_traceparent[TRACE_TRACEPARENT_LEN + 1];
} sim_stats_t;

typedef struct {
    loop_t *loop;
    uint32_t latency_ms, jitter_ms;
    double decline_rate, error_rate, hang_rate;
    uint64_t seed;
    sim_stats_t st;
    struct st_sim_conn_t *conns;
} sim_t;

typedef struct st_sim_conn_t {
    struct st_sim_conn_t *next, *prev; /* every open connection (closed on exit) */
    sim_t *sim;
    loop_conn_t *lc;
    char buf[SIM_MAX_HEAD + SIM_MAX_BODY];
    size_t len;          /* bytes in buf; len <= sizeof buf */
    bool busy;           /* a response is pending (latency timer or hang) */
    bool closing;
    bool close_after;    /* Connection: close asked */
    loop_timer_t timer;
    int resp_status;
    char resp_body[256];
} sim_conn_t;

static sim_t g_sim;

/* FNV-1a 64 then a splitmix64 finaliser: a good spread from short ids. */
static uint64_t sim_hash(uint64_t seed, const char *s, size_t n, uint64_t salt)
{
    uint64_t h = 1469598103934665603ull ^ seed ^ (salt * 0x9e3779b97f4a7c15ull);
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h;
}

/* ------------------------------------------------------------ tiny JSON
 * Finds top-level "key" in a flat JSON object and returns its value: a
 * string (without quotes; escapes refused) or a bare number.  Pure. */
static int sim_json_get(const char *b, size_t n, const char *key, const char **v, size_t *vlen,
                        bool *is_str)
{
    size_t klen = strlen(key), i = 0;
    while (i < n && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n'))
        i++;
    if (i >= n || b[i] != '{')
        return -1;
    i++;
    for (;;) {
        while (i < n && strchr(" \t\r\n", b[i]) && b[i] != '\0')
            i++;
        if (i < n && b[i] == '}')
            return -ENOENT;
        if (i >= n || b[i] != '"')
            return -1;
        size_t ks = ++i;
        while (i < n && b[i] != '"' && b[i] != '\\')
            i++;
        if (i >= n || b[i] != '"')
            return -1;
        size_t ke = i++;
        while (i < n && strchr(" \t\r\n", b[i]) && b[i] != '\0')
            i++;
        if (i >= n || b[i] != ':')
            return -1;
        i++;
        while (i < n && strchr(" \t\r\n", b[i]) && b[i] != '\0')
            i++;
        if (i >= n)
            return -1;
        const char *vs;
        size_t vl;
        bool str;
        if (b[i] == '"') {
            size_t s = ++i;
            while (i < n && b[i] != '"' && b[i] != '\\' && (unsigned char)b[i] >= 0x20)
                i++;
            if (i >= n || b[i] != '"')
                return -1;
            vs = b + s;
            vl = i - s;
            i++;
            str = true;
        } else {
            size_t s = i;
            while (i < n && (b[i] == '-' || (b[i] >= '0' && b[i] <= '9')))
                i++;
            if (i == s)
                return -1;
            vs = b + s;
            vl = i - s;
            str = false;
        }
        if (ke - ks == klen && memcmp(b + ks, key, klen) == 0) {
            *v = vs;
            *vlen = vl;
            *is_str = str;
            return 0;
        }
        while (i < n && strchr(" \t\r\n", b[i]) && b[i] != '\0')
            i++;
        if (i < n && b[i] == ',') {
            i++;
            continue;
        }
        if (i < n && b[i] == '}')
            return -ENOENT;
        return -1;
    }
}

/* -------------------------------------------------------------- server */

static void sim_conn_closed(loop_conn_t *lc, void *data)
{
    (void)lc;
    sim_conn_t *c = data;
    loop_timer_stop(c->sim->loop, &c->timer);
    if (c->prev)
        c->prev->next = c->next;
    else
        c->sim->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    free(c);
}

static void sim_close(sim_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    loop_timer_stop(c->sim->loop, &c->timer);
    loop_conn_close(c->lc, sim_conn_closed);
}

static void sim_process(sim_conn_t *c);

static void sim_respond(sim_conn_t *c, int status, const char *body)
{
    const char *reason = status == 200   ? "OK"
                         : status == 400 ? "Bad Request"
                         : status == 402 ? "Payment Required"
                         : status == 404 ? "Not Found"
                         : status == 405 ? "Method Not Allowed"
                         : status == 411 ? "Length Required"
                         : status == 413 ? "Content Too Large"
                         : status == 431 ? "Request Header Fields Too Large"
                                         : "Internal Server Error";
    char out[1024];
    int n = snprintf(out, sizeof out,
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "%s\r\n%s",
                     status, reason, strlen(body), c->close_after ? "Connection: close\r\n" : "",
                     body);
    if (n < 0 || (size_t)n >= sizeof out || loop_conn_write_copy(c->lc, out, (size_t)n) != 0) {
        sim_close(c);
        return;
    }
    if (c->close_after)
        sim_close(c);
}

static void sim_bad(sim_conn_t *c, int status, const char *msg)
{
    char body[128];
    snprintf(body, sizeof body, "{\"error\":\"%s\"}", msg);
    c->sim->st.bad_requests++;
    c->close_after = true;
    sim_respond(c, status, body);
}

static void sim_timer(loop_t *loop, loop_timer_t *t, void *arg)
{
    (void)loop;
    (void)t;
    sim_conn_t *c = arg;
    c->busy = false;
    sim_respond(c, c->resp_status, c->resp_body);
    if (!c->closing)
        sim_process(c); /* a request that arrived meanwhile */
}

static void sim_charge(sim_conn_t *c, const http1c_header_t *hd, size_t nh, const char *body,
                       size_t blen)
{
    sim_t *s = c->sim;
    const char *oid, *amt, *cur;
    size_t oidl, amtl, curl;
    bool str;
    if (sim_json_get(body, blen, "order_id", &oid, &oidl, &str) != 0 || !str || oidl == 0 ||
        oidl > 64) {
        sim_bad(c, 400, "order_id: missing or not a string of 1..64 bytes");
        return;
    }
    if (sim_json_get(body, blen, "amount_cents", &amt, &amtl, &str) != 0 || str || amtl > 15 ||
        amt[0] == '-' || amt[0] == '0') {
        sim_bad(c, 400, "amount_cents: missing or not a positive integer");
        return;
    }
    int64_t amount = 0;
    for (size_t i = 0; i < amtl; i++) {
        if (amt[i] < '0' || amt[i] > '9') {
            sim_bad(c, 400, "amount_cents: not an integer");
            return;
        }
        amount = amount * 10 + (amt[i] - '0');
    }
    if (sim_json_get(body, blen, "currency", &cur, &curl, &str) != 0 || !str || curl != 3) {
        sim_bad(c, 400, "currency: missing or not a 3-letter code");
        return;
    }
    s->st.charges++;
    const http1c_header_t *tp = http1c_find_header(hd, nh, "traceparent");
    if (tp != NULL && tp->value_len == TRACE_TRACEPARENT_LEN) {
        memcpy(s->st.last_traceparent, tp->value, tp->value_len);
        s->st.last_traceparent[tp->value_len] = '\0';
    }
#define PFX(p) (oidl >= sizeof(p) - 1 && memcmp(oid, p, sizeof(p) - 1) == 0)
    uint64_t h = sim_hash(s->seed, oid, oidl, 1);
    double u = (double)(h >> 11) * (1.0 / 9007199254740992.0);
    uint64_t lat = s->latency_ms + sim_hash(s->seed, oid, oidl, 2) % ((uint64_t)s->jitter_ms + 1);
    const char *outcome;
    if (PFX("decline-") || amount == 40201 ||
        (!PFX("error-") && !PFX("hang-") && !PFX("slow-") && amount != 50001 && amount != 40801 &&
         u >= s->error_rate && u < s->error_rate + s->decline_rate)) {
        c->resp_status = 402;
        snprintf(c->resp_body, sizeof c->resp_body, "{\"status\":\"declined\",\"reason\":\"%s\"}",
                 amount == 40201 ? "insufficient_funds" : "card_declined");
        s->st.declined++;
        outcome = "declined";
    } else if (PFX("error-") || amount == 50001 ||
               (!PFX("hang-") && !PFX("slow-") && amount != 40801 && u < s->error_rate)) {
        c->resp_status = 500;
        snprintf(c->resp_body, sizeof c->resp_body,
                 "{\"status\":\"error\",\"reason\":\"processor_error\"}");
        s->st.errors++;
        outcome = "error";
    } else if (PFX("hang-") || amount == 40801 ||
               (!PFX("slow-") && u >= s->error_rate + s->decline_rate &&
                u < s->error_rate + s->decline_rate + s->hang_rate)) {
        s->st.hung++;
        outcome = "hang";
        c->busy = true; /* never answered; the caller's timeout closes us */
    } else {
        c->resp_status = 200;
        snprintf(c->resp_body, sizeof c->resp_body,
                 "{\"status\":\"approved\",\"charge_id\":\"ch_%016" PRIx64 "\"}",
                 sim_hash(s->seed, oid, oidl, 3));
        s->st.approved++;
        outcome = "approved";
        if (PFX("slow-"))
            lat = (uint64_t)s->latency_ms * 10u;
    }
#undef PFX
    fprintf(stderr, "shop-payment-sim: charge order_id=%.*s amount_cents=%" PRId64
            " currency=%.*s -> %s (%" PRIu64 " ms) traceparent=%.*s\n",
            (int)oidl, oid, amount, (int)curl, cur, outcome, lat,
            tp ? (int)tp->value_len : 1, tp ? tp->value : "-");
    if (strcmp(outcome, "hang") == 0)
        return;
    c->busy = true;
    loop_timer_start(s->loop, &c->timer, lat * 1000000u, 0, sim_timer, c);
}

/* Handles every complete request in c->buf (one at a time). */
static void sim_process(sim_conn_t *c)
{
    while (!c->busy && !c->closing && c->len > 0) {
        http1c_head_t h;
        http1c_header_t hd[SIM_MAX_HEADERS];
        int hl = http1c_parse_request(c->buf, c->len, &h, hd, SIM_MAX_HEADERS);
        if (hl == -2) {
            if (c->len >= SIM_MAX_HEAD)
                sim_bad(c, 431, "request head too large");
            return;
        }
        if (hl < 0) {
            sim_bad(c, 400, "malformed request");
            return;
        }
        if (h.chunked) {
            sim_bad(c, 411, "chunked requests are not accepted; send Content-Length");
            return;
        }
        size_t bl = h.content_length > 0 ? (size_t)h.content_length : 0;
        if (bl > SIM_MAX_BODY) {
            sim_bad(c, 413, "body larger than 4096 bytes");
            return;
        }
        if (c->len - (size_t)hl < bl)
            return; /* need more */
        c->close_after = h.conn_close;
        char body[SIM_MAX_BODY];
        memcpy(body, c->buf + hl, bl);
        http1c_header_t hcopy[SIM_MAX_HEADERS];
        char headbuf[SIM_MAX_HEAD];
        /* keep the head alive while we shift the buffer: copy it first */
        memcpy(headbuf, c->buf, (size_t)hl);
        for (size_t i = 0; i < h.num_headers; i++) {
            hcopy[i] = hd[i];
            hcopy[i].name = headbuf + (hd[i].name - c->buf);
            hcopy[i].value = headbuf + (hd[i].value - c->buf);
        }
        const char *m = headbuf + (h.method - c->buf), *t = headbuf + (h.target - c->buf);
        size_t used = (size_t)hl + bl;
        memmove(c->buf, c->buf + used, c->len - used);
        c->len -= used;
#define IS(s, n, lit) ((n) == sizeof(lit) - 1 && memcmp((s), (lit), (n)) == 0)
        if (IS(t, h.target_len, "/v1/charges")) {
            if (!IS(m, h.method_len, "POST")) {
                sim_bad(c, 405, "use POST");
                return;
            }
            sim_charge(c, hcopy, h.num_headers, body, bl);
        } else if (IS(t, h.target_len, "/health")) {
            sim_respond(c, 200, "{\"status\":\"ok\"}");
        } else if (IS(t, h.target_len, "/stats")) {
            char out[512];
            sim_stats_t *st = &c->sim->st;
            snprintf(out, sizeof out,
                     "{\"charges\":%" PRIu64 ",\"approved\":%" PRIu64 ",\"declined\":%" PRIu64
                     ",\"errors\":%" PRIu64 ",\"hung\":%" PRIu64 ",\"bad_requests\":%" PRIu64
                     ",\"last_traceparent\":\"%s\"}",
                     st->charges, st->approved, st->declined, st->errors, st->hung,
                     st->bad_requests, st->last_traceparent);
            sim_respond(c, 200, out);
        } else {
            sim_bad(c, 404, "no such path");
        }
#undef IS
    }
}

static void sim_read(loop_conn_t *lc, ssize_t n, const void *buf, void *data)
{
    (void)lc;
    sim_conn_t *c = data;
    if (c->closing)
        return;
    if (n <= 0) {
        sim_close(c);
        return;
    }
    if (c->len + (size_t)n > sizeof c->buf) {
        c->busy = false;
        sim_bad(c, 413, "request too large");
        return;
    }
    memcpy(c->buf + c->len, buf, (size_t)n);
    c->len += (size_t)n;
    sim_process(c);
}

static void sim_accept(loop_listener_t *l, loop_conn_t *lc, void *arg)
{
    (void)l;
    sim_t *s = arg;
    sim_conn_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        loop_conn_close(lc, NULL);
        return;
    }
    c->sim = s;
    c->lc = lc;
    loop_timer_init(&c->timer);
    loop_conn_set_data(lc, c);
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->st.conns++;
    if (loop_conn_read_start(lc, sim_read) != 0)
        sim_close(c);
}

static void sim_signal(loop_t *loop, int signo, void *arg)
{
    (void)signo;
    (void)arg;
    loop_stop(loop);
}

static void sim_log_line(void *u, const char *s)
{
    (void)u;
    if (strncmp(s, "payment_sim.", 12) == 0)
        fprintf(stderr, "shop-payment-sim: config: %s\n", s);
}

int main(int argc, char **argv)
{
    const char *cfg = NULL;
    bool check = false;
    long port_override = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            cfg = argv[++i];
        } else if (strcmp(argv[i], "--check-config") == 0) {
            check = true;
        } else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            char *end;
            port_override = strtol(argv[++i], &end, 10);
            if (*end != '\0' || port_override < 0 || port_override > 65535) {
                fprintf(stderr, "shop-payment-sim: --port %s: not a port\n", argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "usage: shop-payment-sim [--config FILE] [--port N] [--check-config]\n");
            return 2;
        }
    }
    char err[512];
    config_t *conf;
    if (config_load(cfg, &conf, err, sizeof err) != 0) {
        fprintf(stderr, "shop-payment-sim: %s\n", err);
        return 2;
    }
    if (check) {
        printf("ok\n");
        config_free(conf);
        return 0;
    }
    sim_t *s = &g_sim;
    s->latency_ms = (uint32_t)config_int(conf, CONFIG_PAYMENT_SIM_LATENCY);
    s->jitter_ms = (uint32_t)config_int(conf, CONFIG_PAYMENT_SIM_JITTER);
    s->decline_rate = config_ratio(conf, CONFIG_PAYMENT_SIM_DECLINE_RATE);
    s->error_rate = config_ratio(conf, CONFIG_PAYMENT_SIM_ERROR_RATE);
    s->hang_rate = config_ratio(conf, CONFIG_PAYMENT_SIM_HANG_RATE);
    s->seed = (uint64_t)config_int(conf, CONFIG_PAYMENT_SIM_SEED);
    config_dump(conf, sim_log_line, NULL);
    char addr[64];
    snprintf(addr, sizeof addr, "%s", config_str(conf, CONFIG_PAYMENT_SIM_ADDRESS));
    uint16_t port = (uint16_t)(port_override >= 0 ? port_override
                                                  : config_int(conf, CONFIG_PAYMENT_SIM_PORT));
    config_free(conf);

    int ret = loop_create(&s->loop, NULL);
    if (ret != 0) {
        fprintf(stderr, "shop-payment-sim: loop_create: %s\n", strerror(-ret));
        return 1;
    }
    loop_signal(s->loop, SIGTERM, sim_signal, NULL);
    loop_signal(s->loop, SIGINT, sim_signal, NULL);
    signal(SIGPIPE, SIG_IGN);
    loop_listener_t *l;
    ret = loop_listen(s->loop, addr, port, 512, sim_accept, s, &l);
    if (ret != 0) {
        fprintf(stderr, "shop-payment-sim: listen %s:%u: %s\n", addr, port, strerror(-ret));
        loop_destroy(s->loop);
        return 1;
    }
    printf("shop-payment-sim listening on %s:%u\n", addr, loop_listener_port(l));
    fflush(stdout);
    ret = loop_run(s->loop);
    fprintf(stderr,
            "shop-payment-sim: stopping: connections=%" PRIu64 " charges=%" PRIu64
            " approved=%" PRIu64 " declined=%" PRIu64 " errors=%" PRIu64 " hung=%" PRIu64
            " bad_requests=%" PRIu64 "\n",
            s->st.conns, s->st.charges, s->st.approved, s->st.declined, s->st.errors, s->st.hung,
            s->st.bad_requests);
    for (sim_conn_t *c = s->conns; c != NULL; c = c->next)
        sim_close(c);
    loop_destroy(s->loop);
    return ret == 0 ? 0 : 1;
}
