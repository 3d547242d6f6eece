/*
 * tests/core/test_w3c.c - W3C Trace Context and Baggage codecs: the
 * trace-context spec's valid/invalid traceparent vectors (incl. future
 * versions), round trips, tracestate rules, baggage parse/format/limits, and
 * inject/extract through a header callback.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core.h"
#include "tap.h"

#define TID "0af7651916cd43dd8448eb211c80319c"
#define SID "b7ad6b7169203331"

static int tp(const char *s)
{
    trace_context_t c;
    return trace_w3c_traceparent_parse(s, strlen(s), &c);
}

static void test_traceparent(void)
{
    static const char *valid[] = {
        "00-" TID "-" SID "-01",
        "00-" TID "-" SID "-00",
        "00-12345678901234567890123456789012-1234567890123456-01",
        "00-" TID "-" SID "-09", /* unknown flag bits: still valid */
        "cc-" TID "-" SID "-01-what-the-future-will-be-like",
        "01-" TID "-" SID "-01",
        "fe-" TID "-" SID "-01-",
        " 00-" TID "-" SID "-01\t", /* OWS around the value */
    };
    static const char *invalid[] = {
        "",
        "00",
        "ff-" TID "-" SID "-01",                 /* version ff is forbidden */
        "0-" TID "-" SID "-01",                  /* short version */
        "000-" TID "-" SID "-01",
        "0g-" TID "-" SID "-01",                 /* non-hex version */
        "00-" TID "-" SID "-01-",                /* version 00 with extra data */
        "00-" TID "-" SID "-01-extra",
        "cc-" TID "-" SID "-01.what-the-future", /* future: extra must start with '-' */
        "cc-" TID "-" SID "-01x",
        "00-0AF7651916CD43DD8448EB211C80319C-" SID "-01", /* upper case */
        "00-" TID "-B7AD6B7169203331-01",
        "00-" TID "-" SID "-0A",
        "00-00000000000000000000000000000000-" SID "-01", /* zero trace id */
        "00-" TID "-0000000000000000-01",                 /* zero span id */
        "00-" TID "-" SID "-0",
        "00-" TID "-" SID "-0g",
        "00-" TID "-" SID,
        "00_" TID "-" SID "-01",
        "00-" TID "_" SID "-01",
        "00-" TID "-" SID "_01",
        "00-0af7651916cd43dd8448eb211c80319-cb7ad6b7169203331-01", /* shifted dash */
        "00-" TID "-" SID "-01\x01",
        "00-" TID "-b7ad6b716920333-01x",
    };
    for (size_t i = 0; i < sizeof valid / sizeof *valid; i++)
        tap_check(tp(valid[i]) == 0, "traceparent valid: \"%s\"", valid[i]);
    for (size_t i = 0; i < sizeof invalid / sizeof *invalid; i++)
        tap_check(tp(invalid[i]) == -1, "traceparent invalid: \"%s\"", invalid[i]);

    trace_context_t c, d;
    const char *h = "cc-" TID "-" SID "-01-what-the-future-will-be-like";
    tap_check(trace_w3c_traceparent_parse(h, strlen(h), &c) == 0 && c.flags == 1 && c.is_remote,
              "future version parses the first four fields");
    char out[56];
    tap_check(trace_w3c_traceparent_format(&c, out) == 55 &&
                  strcmp(out, "00-" TID "-" SID "-01") == 0,
              "future version is re-emitted as version 00: %s", out);
    tap_check(trace_w3c_traceparent_parse(out, 55, &d) == 0 &&
                  memcmp(c.trace_id, d.trace_id, 16) == 0 && memcmp(c.span_id, d.span_id, 8) == 0 &&
                  c.flags == d.flags,
              "traceparent round trip");
    memset(&c, 0, sizeof c);
    tap_check(trace_w3c_traceparent_format(&c, out) == -EINVAL, "zero context is not formatted");
}

static int ts(const char *in, char *out, size_t cap)
{
    return trace_w3c_tracestate_parse(in, strlen(in), out, cap);
}

static void test_tracestate(void)
{
    char out[1024];
    int n;
    n = ts("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", out, sizeof out);
    tap_check(n > 0 && strncmp(out, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", (size_t)n) == 0,
              "tracestate: two members kept in order");
    n = ts(" rojo=1 ,\t, congo=2 ,", out, sizeof out);
    tap_check(n == 14 && strncmp(out, "rojo=1,congo=2", 14) == 0,
              "tracestate: OWS and empty members dropped (%d)", n);
    tap_check(ts("", out, sizeof out) == 0, "tracestate: empty header is empty");
    tap_check(ts("rojo=1,rojo=2", out, sizeof out) == -1, "tracestate: duplicate key invalid");
    tap_check(ts("Rojo=1", out, sizeof out) == -1, "tracestate: upper-case key invalid");
    tap_check(ts("1rojo=1", out, sizeof out) == -1, "tracestate: simple key starting with digit invalid");
    tap_check(ts("1tenant@vendor=1", out, sizeof out) > 0, "tracestate: multi-tenant key with digit tenant");
    tap_check(ts("tenant@1vendor=1", out, sizeof out) == -1, "tracestate: system-id must start lcalpha");
    tap_check(ts("t@abcdefghijklmno=1", out, sizeof out) == -1, "tracestate: system-id over 14 chars");
    tap_check(ts("rojo=", out, sizeof out) == -1, "tracestate: empty value invalid");
    tap_check(ts("rojo=a=b", out, sizeof out) == -1, "tracestate: '=' in value invalid");
    tap_check(ts("rojo", out, sizeof out) == -1, "tracestate: member without '=' invalid");
    tap_check(ts("rojo=a b", out, sizeof out) > 0, "tracestate: inner space in value ok");
    char big[2048];
    size_t o = 0;
    for (int i = 0; i < 32; i++)
        o += (size_t)snprintf(big + o, sizeof big - o, "%sk%d=v", i ? "," : "", i);
    tap_check(ts(big, out, sizeof out) > 0, "tracestate: 32 members accepted");
    snprintf(big + o, sizeof big - o, ",k32=v");
    tap_check(ts(big, out, sizeof out) == -1, "tracestate: 33 members invalid (dropped wholesale)");
    char key[300];
    memset(key, 'a', 257);
    key[257] = '\0';
    snprintf(big, sizeof big, "%s=1", key);
    tap_check(ts(big, out, sizeof out) == -1, "tracestate: key over 256 chars invalid");
    key[256] = '\0';
    snprintf(big, sizeof big, "%s=1", key);
    tap_check(ts(big, out, sizeof out) > 0, "tracestate: 256-char key valid");

    /* truncation to 512: long (>128) members go first */
    char val[200];
    memset(val, 'x', 199);
    val[199] = '\0';
    snprintf(big, sizeof big, "a=1,long=%s,b=%.100s,c=%.100s,d=%.100s", val, val, val, val);
    n = ts(big, out, TRACE_TRACESTATE_MAX);
    const char *v;
    size_t vl;
    tap_check(n > 0 && n <= 512 && trace_w3c_tracestate_get(out, (size_t)n, "long", 4, &v, &vl) == -ENOENT &&
                  trace_w3c_tracestate_get(out, (size_t)n, "a", 1, &v, &vl) == 0,
              "tracestate: over 512 bytes drops members over 128 chars first (%d)", n);

    /* set: our entry moves to the left, the old one goes */
    const char *st = "rojo=1,shop=old,congo=2";
    n = trace_w3c_tracestate_set(st, strlen(st), "shop", 4, "new", 3, out, sizeof out);
    tap_check(n > 0 && strncmp(out, "shop=new,rojo=1,congo=2", (size_t)n) == 0,
              "tracestate set: updated entry moved to the left: %.*s", n, out);
    tap_check(trace_w3c_tracestate_set(st, strlen(st), "Shop", 4, "x", 1, out, sizeof out) == -1,
              "tracestate set: invalid key refused");
    o = 0;
    for (int i = 0; i < 32; i++)
        o += (size_t)snprintf(big + o, sizeof big - o, "%sk%d=v", i ? "," : "", i);
    n = trace_w3c_tracestate_set(big, o, "shop", 4, "1", 1, out, sizeof out);
    tap_check(n > 0 && trace_w3c_tracestate_get(out, (size_t)n, "k31", 3, &v, &vl) == -ENOENT &&
                  trace_w3c_tracestate_get(out, (size_t)n, "k30", 3, &v, &vl) == 0,
              "tracestate set: at 32 members the rightmost goes");
    tap_check(trace_w3c_tracestate_get("rojo=1,congo=abc", 16, "congo", 5, &v, &vl) == 0 && vl == 3 &&
                  memcmp(v, "abc", 3) == 0,
              "tracestate get");
}

static void test_baggage(void)
{
    static trace_baggage_t b, b2;
    char out[TRACE_BAGGAGE_BYTES_MAX + 1];
    const char *h = "userId=alice, serverNode = DF%2028 ,isProduction=false;prop1;p2=v2";
    int n = trace_w3c_baggage_parse(h, strlen(h), &b);
    tap_check(n == 3, "baggage: three members (%d)", n);
    tap_check(n == 3 && b.m[1].value_len == 5 && memcmp(b.m[1].value, "DF 28", 5) == 0,
              "baggage: value percent-decoded, OWS trimmed");
    tap_check(n == 3 && b.m[2].props_len == 11 && memcmp(b.m[2].props, "prop1;p2=v2", 11) == 0,
              "baggage: properties kept");
    int l = trace_w3c_baggage_format(&b, out, sizeof out);
    tap_check(l > 0 && strcmp(out, "userId=alice,serverNode=DF%2028,isProduction=false;prop1;p2=v2") == 0,
              "baggage: format re-encodes: %s", out);
    tap_check(trace_w3c_baggage_parse(out, (size_t)l, &b2) == 3 && b2.m[1].value_len == 5 &&
                  memcmp(b2.m[1].value, "DF 28", 5) == 0,
              "baggage: round trip");
    tap_check(trace_w3c_baggage_parse("a=1,=2", 6, &b) == -1 && b.count == 0, "baggage: empty key invalid");
    tap_check(trace_w3c_baggage_parse("a=%zz", 5, &b) == -1, "baggage: bad percent escape invalid");
    tap_check(trace_w3c_baggage_parse("a=%2", 4, &b) == -1, "baggage: short percent escape invalid");
    tap_check(trace_w3c_baggage_parse("a=\"x\"", 5, &b) == -1, "baggage: DQUOTE in value invalid");
    tap_check(trace_w3c_baggage_parse("a b=1", 5, &b) == -1, "baggage: space in key invalid");
    tap_check(trace_w3c_baggage_parse("a=", 2, &b) == 1 && b.m[0].value_len == 0, "baggage: empty value ok");
    tap_check(trace_w3c_baggage_parse("", 0, &b) == 0, "baggage: empty header");
    char big[16384];
    size_t o = 0;
    for (int i = 0; i < 70; i++)
        o += (size_t)snprintf(big + o, sizeof big - o, "%sk%d=v", i ? "," : "", i);
    tap_check(trace_w3c_baggage_parse(big, o, &b) == 64, "baggage: members past 64 dropped");
    o = 0;
    for (int i = 0; i < 20; i++) {
        o += (size_t)snprintf(big + o, sizeof big - o, "%sk%d=", i ? "," : "", i);
        memset(big + o, 'v', 500);
        o += 500;
    }
    n = trace_w3c_baggage_parse(big, o, &b);
    tap_check(n > 0 && n < 20, "baggage: members past 8192 bytes dropped (%d of 20)", n);
    trace_w3c_baggage_parse("", 0, &b);
    tap_check(trace_w3c_baggage_set(&b, "k", 1, "a,b;c d", 7, NULL, 0) == 0 &&
                  trace_w3c_baggage_format(&b, out, sizeof out) > 0 && strcmp(out, "k=a%2Cb%3Bc%20d") == 0,
              "baggage: set and format percent-encodes: %s", out);
    tap_check(trace_w3c_baggage_set(&b, "k", 1, "2", 1, NULL, 0) == 0 && b.count == 1 &&
                  b.m[0].value[0] == '2',
              "baggage: set replaces an existing key");
    tap_check(trace_w3c_baggage_set(&b, "k k", 3, "2", 1, NULL, 0) == -1, "baggage: set refuses a bad key");
}

/* A carrier: a few headers. */
typedef struct {
    char name[4][32];
    char val[4][9000];
    int n;
} carrier_t;

static int c_set(void *arg, const char *name, const char *v, size_t vl)
{
    carrier_t *c = arg;
    snprintf(c->name[c->n], sizeof c->name[0], "%s", name);
    memcpy(c->val[c->n], v, vl);
    c->val[c->n][vl] = '\0';
    c->n++;
    return 0;
}

static const char *c_get(void *arg, const char *name, size_t *vl)
{
    carrier_t *c = arg;
    for (int i = 0; i < c->n; i++)
        if (strcmp(c->name[i], name) == 0) {
            *vl = strlen(c->val[i]);
            return c->val[i];
        }
    return NULL;
}

static void test_propagation(void)
{
    static carrier_t car;
    static trace_baggage_t bag, bag2;
    trace_context_t ctx, got;
    char tsb[TRACE_TRACESTATE_MAX];
    const char *h = "00-" TID "-" SID "-01";
    trace_w3c_traceparent_parse(h, strlen(h), &ctx);
    ctx.tracestate = "shop=1,rojo=2";
    ctx.tracestate_len = 13;
    trace_w3c_baggage_parse("user=alice", 10, &bag);
    tap_check(trace_inject(&ctx, &bag, c_set, &car) == 0 && car.n == 3, "inject sets three headers");
    tap_check(trace_extract(c_get, &car, &got, tsb, sizeof tsb, &bag2) == 0 &&
                  memcmp(got.trace_id, ctx.trace_id, 16) == 0 && got.is_remote && got.flags == 1 &&
                  got.tracestate_len == 13 && memcmp(got.tracestate, "shop=1,rojo=2", 13) == 0 &&
                  bag2.count == 1,
              "extract reads back what inject wrote");
    snprintf(car.val[0], sizeof car.val[0], "00-%s-%s-01", "00000000000000000000000000000000", SID);
    tap_check(trace_extract(c_get, &car, &got, tsb, sizeof tsb, NULL) == -ENOENT &&
                  !trace_id_is_valid(got.trace_id, 16),
              "invalid traceparent: ignored, a new trace starts");
    snprintf(car.val[0], sizeof car.val[0], "%s", h);
    snprintf(car.val[1], sizeof car.val[1], "BAD=1");
    tap_check(trace_extract(c_get, &car, &got, tsb, sizeof tsb, NULL) == 0 && got.tracestate_len == 0,
              "invalid tracestate dropped alone");
    ctx.flags = 0;
    car.n = 0;
    tap_check(trace_inject(&ctx, NULL, c_set, &car) == 0 && strcmp(car.val[0], "00-" TID "-" SID "-00") == 0,
              "unsampled context propagates with flags 00");
}

int main(void)
{
    test_traceparent();
    test_tracestate();
    test_baggage();
    test_propagation();
    return tap_done();
}
