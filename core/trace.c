/*
 * core/trace.c - spans, the per-process tracing state, and propagation.
 *
 * The span path (start, set, end) takes no lock, makes no system call
 * and never allocates: the caller owns the trace_span_t, whose inline
 * buffer already holds the record in its wire layout, so end is one clock
 * read, one ring reserve, one memcpy, one commit.  Time comes from the span
 * clock (trace_clock.c): rdtsc on an invariant TSC, else clock_gettime, with
 * a per-thread CLOCK_REALTIME anchor re-read every 100 ms; start = anchor +
 * ticks since it, end = start + ticks since start, as the design asks
 * (wall-clock start times, monotonic durations).
 *
 * Ring lanes: a thread acquires its lane lazily at its first sampled span
 * end (one CAS in ipc/), keeps it until it exits (pthread key destructor)
 * or trace_shutdown(); acquire failure counts RING_DROP_NO_LANE and is
 * retried at most once a second.  fork(): the child must not write into the
 * parent's lane, so an atfork handler bumps a generation that makes every
 * thread-local lane stale; the child acquires its own.
 */
#include "trace.h"
#include "span_record.h"
#include "trace_clock.h"
#include "trace_id.h"
#include "trace_w3c.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define TRACE_NAME_MAX 1024u /* bytes of a span/event name kept */
#define TRACE_STATUS_MSG_MAX 1024u
#define NS_PER_S 1000000000ULL

_Static_assert(TRACE_SPAN_BUF_SIZE >= SPAN_RECORD_HEADER_SIZE + 4 + TRACE_NAME_MAX + 4 + 510 +
                                          4 + TRACE_TRACESTATE_MAX + 64,
               "TRACE_SPAN_BUF_SIZE must hold the header, name, scope and tracestate");

typedef struct st_trace_tls_t {
    ring_producer_t *prod; /* this thread's lane, valid when gen == g.gen */
    uint32_t gen;
    uint64_t retry_mono;   /* no acquire attempt before this (after a failure) */
} trace_tls_t;

static _Thread_local trace_tls_t tls __attribute__((tls_model("initial-exec"))); /* see trace_id.c */

/* Process state: written by trace_init/shutdown (single-threaded by
 * contract) and the atfork child handler; read-only on the span path. */
static struct {
    bool inited;
    ring_t *ring;
    uint32_t max_payload; /* bytes of a record we may reserve */
    trace_sampler_t sampler;
    trace_limits_t limits;
    trace_sink_cb sink;
    void *sink_arg;
    uint32_t gen;          /* bumped by init, shutdown and fork */
    uint8_t resource[RING_LANE_META_MAX];
    uint32_t resource_len;
    uint32_t pid_off;      /* offset of process.pid's int64 in resource */
    char ring_name[256];
    pthread_mutex_t lock;  /* guards producers[] (acquire, thread exit, shutdown) */
    ring_producer_t *producers[RING_LANES_MAX];
    uint32_t nprod;
    pthread_key_t key;
} g = {
    .sampler = {TRACE_SAMPLER_PARENTBASED_ALWAYS_ON, 1.0, 0},
    .limits = {TRACE_LIMIT_DEFAULT, TRACE_LIMIT_UNLIMITED, TRACE_LIMIT_DEFAULT,
               TRACE_LIMIT_DEFAULT, TRACE_LIMIT_DEFAULT, TRACE_LIMIT_DEFAULT},
    .max_payload = TRACE_SPAN_BUF_SIZE,
    .gen = 1,
    .lock = PTHREAD_MUTEX_INITIALIZER,
};
static pthread_once_t once = PTHREAD_ONCE_INIT;

/* ------------------------------------------------------------------ clock */

/* Wall-clock now: the span clock (trace_clock.c: TSC or clock_gettime). */
uint64_t trace_now_ns(void)
{
    uint64_t t;
    return trace__clock_now(&t);
}

/* ------------------------------------------------------------------ lanes */

static void registry_remove_locked(ring_producer_t *p)
{
    for (uint32_t i = 0; i < g.nprod; i++)
        if (g.producers[i] == p) {
            g.producers[i] = g.producers[--g.nprod];
            ring_producer_release(p);
            return;
        }
}

/* pthread key destructor: the thread exits, give its lane back (unless
 * shutdown or a fork already took it out of the registry). */
static void trace__thread_exit(void *p)
{
    pthread_mutex_lock(&g.lock);
    registry_remove_locked(p);
    pthread_mutex_unlock(&g.lock);
}

static void trace__atfork_child(void)
{
    /* The parent's lanes stay the parent's: forget them, never release. */
    pthread_mutex_init(&g.lock, NULL);
    g.nprod = 0;
    g.gen++;
    if (g.pid_off) {
        int64_t pid = getpid();
        memcpy(g.resource + g.pid_off, &pid, 8);
    }
}

static void trace__once(void)
{
    pthread_key_create(&g.key, trace__thread_exit);
    pthread_atfork(NULL, NULL, trace__atfork_child);
}

static __attribute__((noinline)) ring_producer_t *trace__acquire(void)
{
    uint64_t now = trace__mono_ns();
    if (tls.gen == g.gen && now < tls.retry_mono) {
        ring_count_drop(g.ring, RING_DROP_NO_LANE, 1);
        return NULL;
    }
    tls.gen = g.gen;
    tls.prod = NULL;
    ring_producer_t *p;
    if (ring_producer_acquire(g.ring, g.resource, g.resource_len, &p) != 0) {
        tls.retry_mono = now + NS_PER_S;
        ring_count_drop(g.ring, RING_DROP_NO_LANE, 1);
        return NULL;
    }
    pthread_mutex_lock(&g.lock);
    g.producers[g.nprod++] = p; /* nprod < RING_LANES_MAX: one lane each */
    pthread_mutex_unlock(&g.lock);
    pthread_setspecific(g.key, p);
    tls.prod = p;
    return p;
}

/* ------------------------------------------------------------------- init */

typedef struct st_res_kv_t {
    const char *key;
    trace_attr_t a;
} res_kv_t;

static void res_put(res_kv_t *kv, size_t *n, size_t max, const char *key, const char *val,
                    size_t vlen)
{
    size_t i;
    for (i = 0; i < *n; i++)
        if (strcmp(kv[i].key, key) == 0)
            break;
    if (i == *n) {
        if (*n == max)
            return;
        (*n)++;
    }
    kv[i].key = key;
    kv[i].a = (trace_attr_t){.key = key, .key_len = strlen(key), .type = TRACE_ATTR_STRING,
                             .v.s = {val, vlen}};
}

static int build_resource(const trace_options_t *o, char *err, size_t errlen)
{
    enum { MAXKV = TRACE_BAGGAGE_MEMBERS_MAX + 16 };
    static trace_baggage_t env_attrs;  /* init-time only: keeps values alive */
    static char env_keys[TRACE_BAGGAGE_MEMBERS_MAX][256];
    static char host[256], instance[40];
    res_kv_t kv[MAXKV];
    size_t n = 0;

    if (gethostname(host, sizeof host) != 0)
        snprintf(host, sizeof host, "unknown");
    host[sizeof host - 1] = '\0';
    uint8_t u[16];
    trace_id_new(u);
    u[6] = (uint8_t)((u[6] & 0x0f) | 0x40); /* UUID v4 */
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);
    char hx[32];
    trace_id_hex(u, 16, hx);
    snprintf(instance, sizeof instance, "%.8s-%.4s-%.4s-%.4s-%.12s", hx, hx + 8, hx + 12,
             hx + 16, hx + 20);

    /* Lowest precedence first; later puts replace: detected < options <
     * OTEL_RESOURCE_ATTRIBUTES < OTEL_SERVICE_NAME. */
    const char *svc = o->service_name ? o->service_name : "unknown_service";
    res_put(kv, &n, MAXKV, "service.name", svc, strlen(svc));
    if (o->service_version && *o->service_version)
        res_put(kv, &n, MAXKV, "service.version", o->service_version,
                strlen(o->service_version));
    const char *inst = o->service_instance_id ? o->service_instance_id : instance;
    res_put(kv, &n, MAXKV, "service.instance.id", inst, strlen(inst));
    if (o->deployment_env && *o->deployment_env)
        res_put(kv, &n, MAXKV, "deployment.environment.name", o->deployment_env,
                strlen(o->deployment_env));
    res_put(kv, &n, MAXKV, "host.name", host, strlen(host));
    res_put(kv, &n, MAXKV, "telemetry.sdk.name", "shop-trace", 10);
    res_put(kv, &n, MAXKV, "telemetry.sdk.language", "c", 1);
    res_put(kv, &n, MAXKV, "telemetry.sdk.version", SHOP_VERSION, strlen(SHOP_VERSION));

    const char *ra = getenv("OTEL_RESOURCE_ATTRIBUTES");
    if (ra && *ra) {
        int c = trace_w3c_baggage_parse(ra, strlen(ra), &env_attrs);
        if (c < 0) {
            snprintf(err, errlen,
                     "OTEL_RESOURCE_ATTRIBUTES=%.200s: not a list of key=value (percent-encoded)",
                     ra);
            return -EINVAL;
        }
        for (int i = 0; i < c; i++) {
            const trace_baggage_member_t *m = &env_attrs.m[i];
            if (m->key_len >= sizeof env_keys[i])
                continue;
            memcpy(env_keys[i], m->key, m->key_len);
            env_keys[i][m->key_len] = '\0';
            res_put(kv, &n, MAXKV, env_keys[i], m->value, m->value_len);
        }
    }
    const char *sn = getenv("OTEL_SERVICE_NAME");
    if (sn && *sn)
        res_put(kv, &n, MAXKV, "service.name", sn, strlen(sn));

    /* process.pid last, at a known offset, so a forked child can patch it. */
    trace_attr_t attrs[MAXKV + 1];
    for (size_t i = 0; i < n; i++)
        attrs[i] = kv[i].a;
    int len = span_resource_encode(attrs, n, g.resource, sizeof g.resource - 32);
    if (len < 0)
        return len;
    trace_attr_t pid = {.key = "process.pid", .key_len = 11, .type = TRACE_ATTR_INT,
                        .v.i = getpid()};
    size_t pl = span_record__put_attr(g.resource + len, SPAN_ITEM_ATTR, &pid,
                                      TRACE_LIMIT_UNLIMITED);
    g.pid_off = (uint32_t)len + 8 + 11;
    uint16_t cnt;
    memcpy(&cnt, g.resource + 2, 2);
    cnt++;
    memcpy(g.resource + 2, &cnt, 2);
    g.resource_len = (uint32_t)(len + (int)pl);
    return 0;
}

int trace_init(const trace_options_t *opt, char *err, size_t errlen)
{
    static const trace_options_t none;
    int rc;
    if (g.inited) {
        snprintf(err, errlen, "trace_init: already initialised");
        return -EALREADY;
    }
    if (opt == NULL)
        opt = &none;
    pthread_once(&once, trace__once);
    trace_clock_mode_t clk;
    if ((rc = trace__clock_mode_from_env(&clk, err, errlen)) != 0)
        return rc;
    trace__clock_init(); /* calibrates (~2 ms) once per process, here not on a span */
    if (opt->sampler)
        g.sampler = *opt->sampler;
    else if ((rc = trace_sampler_from_env(&g.sampler, err, errlen)) != 0)
        return rc;
    if (opt->limits)
        g.limits = *opt->limits;
    else if ((rc = trace_limits_from_env(&g.limits, err, errlen)) != 0)
        return rc;
    if ((rc = build_resource(opt, err, errlen)) != 0)
        return rc;
    g.sink = opt->sink;
    g.sink_arg = opt->sink_arg;
    g.max_payload = TRACE_SPAN_BUF_SIZE;
    g.ring = NULL;
    snprintf(g.ring_name, sizeof g.ring_name, "%s",
             opt->ring_name ? opt->ring_name : TRACE_RING_NAME_DEFAULT);
    if (!opt->no_ring && opt->sink == NULL) {
        ring_geometry_t geo = {TRACE_RING_LANES_DEFAULT, TRACE_RING_MAX_RECORD_DEFAULT,
                               TRACE_RING_LANE_SIZE_DEFAULT};
        rc = ring_open(g.ring_name, opt->geometry ? opt->geometry : &geo, opt->create_ring,
                       &g.ring, err, errlen);
        if (rc != 0)
            return rc;
        uint32_t mr = ring_geometry(g.ring)->max_record;
        g.max_payload = mr > TRACE_RING_RECORD_OVERHEAD ? mr - TRACE_RING_RECORD_OVERHEAD : 0;
    }
    g.gen++;
    g.inited = true;
    return 0;
}

void trace_shutdown(void)
{
    if (!g.inited)
        return;
    pthread_mutex_lock(&g.lock);
    while (g.nprod)
        registry_remove_locked(g.producers[0]);
    pthread_mutex_unlock(&g.lock);
    pthread_setspecific(g.key, NULL);
    g.gen++;
    tls.prod = NULL;
    if (g.ring)
        ring_close(g.ring);
    g.ring = NULL;
    g.sink = NULL;
    g.inited = false;
}

const uint8_t *trace_resource(uint32_t *len)
{
    *len = g.resource_len;
    return g.resource;
}

static const char *sampler_name(trace_sampler_kind_t k)
{
    switch (k) {
    case TRACE_SAMPLER_ALWAYS_ON: return "always_on";
    case TRACE_SAMPLER_ALWAYS_OFF: return "always_off";
    case TRACE_SAMPLER_TRACEIDRATIO: return "traceidratio";
    case TRACE_SAMPLER_PARENTBASED_ALWAYS_ON: return "parentbased_always_on";
    case TRACE_SAMPLER_PARENTBASED_ALWAYS_OFF: return "parentbased_always_off";
    case TRACE_SAMPLER_PARENTBASED_TRACEIDRATIO: return "parentbased_traceidratio";
    }
    return "?";
}

int trace_describe(char *out, size_t cap)
{
    const trace_limits_t *l = &g.limits;
    char clk[64];
    trace__clock_init();
    trace__clock_describe(clk, sizeof clk);
    return snprintf(out, cap,
                    "trace: ring=%s%s max_payload=%u sampler=%s ratio=%g clock=%s limits: attrs=%u "
                    "value_len=%u events=%u links=%u event_attrs=%u link_attrs=%u",
                    g.ring_name, g.ring ? "" : " (not attached)", g.max_payload,
                    sampler_name(g.sampler.kind), g.sampler.ratio, clk, l->attr_count,
                    l->attr_value_len, l->event_count, l->link_count, l->event_attr_count,
                    l->link_attr_count);
}

/* ------------------------------------------------------------------ spans */

/* Non-zero checks of 16- and 8-byte ids with two loads (hot in start). */
static inline bool tid_ok(const uint8_t *id)
{
    uint64_t a, b;
    memcpy(&a, id, 8);
    memcpy(&b, id + 8, 8);
    return (a | b) != 0;
}
static inline bool sid_ok(const uint8_t *id)
{
    uint64_t a;
    memcpy(&a, id, 8);
    return a != 0;
}

__attribute__((noinline)) void trace__copy_long(uint8_t *dst, const void *src, size_t n)
{
    memcpy(dst, src, n);
}

static inline uint32_t room(const trace_span_t *s) { return s->_cap - s->_len; }

/* A NAME / TRACESTATE / STATUS_MSG item: tag, 0, u16 len, bytes. */
TRACE__INLINE void put_str_item(trace_span_t *s, uint8_t tag, const char *p, size_t n)
{
    uint32_t len = s->_len;
    s->_len = len + 4 + (uint32_t)n;
    uint8_t *q = s->_buf + len;
    q[0] = tag;
    q[1] = 0;
    trace__le16(q + 2, (uint16_t)n);
    trace__copy(q + 4, p, n);
}

void trace_span_start(trace_span_t *s, const trace_scope_t *scope, const char *name,
                      size_t name_len, trace_kind_t kind, const trace_context_t *parent)
{
    bool has_parent = parent != NULL && tid_ok(parent->trace_id) && sid_ok(parent->span_id);
    uint64_t ida, idb;
    if (has_parent) {
        memcpy(s->ctx.trace_id, parent->trace_id, TRACE_ID_SIZE);
        s->ctx.tracestate = parent->tracestate;
        s->ctx.tracestate_len = parent->tracestate_len;
    } else {
        do { /* trace_id_new, inline */
            ida = trace_id__next_inline();
            idb = trace_id__next_inline();
        } while ((ida | idb) == 0);
        memcpy(s->ctx.trace_id, &ida, 8);
        memcpy(s->ctx.trace_id + 8, &idb, 8);
        s->ctx.tracestate = NULL;
        s->ctx.tracestate_len = 0;
        parent = NULL;
    }
    do /* trace_id_new_span, inline */
        ida = trace_id__next_inline();
    while (ida == 0);
    memcpy(s->ctx.span_id, &ida, 8);
    s->ctx.is_remote = false;
    /* The common decisions inline: ALWAYS_ON/OFF, and ParentBased with a
     * parent (no sampler call); roots under ParentBased and ratio call it. */
    bool sampled;
    if (g.sampler.kind == TRACE_SAMPLER_ALWAYS_ON)
        sampled = true;
    else if (g.sampler.kind == TRACE_SAMPLER_ALWAYS_OFF)
        sampled = false;
    else if (has_parent && g.sampler.kind >= TRACE_SAMPLER_PARENTBASED_ALWAYS_ON)
        sampled = (parent->flags & TRACE_FLAG_SAMPLED) != 0;
    else
        sampled = trace_sampler_should_sample(&g.sampler, parent, s->ctx.trace_id);
    s->ctx.flags = (uint8_t)(sampled ? TRACE_FLAG_SAMPLED : 0);
    s->_recording = sampled;
    s->_len = 0;
    if (!sampled)
        return; /* context only: propagates with flags 00, writes nothing */

    s->_wall_start = trace__clock_now(&s->_t_start);
    s->_cap = TRACE_SPAN_BUF_SIZE;
    s->_attr_left = g.limits.attr_count;
    s->_event_left = g.limits.event_count;
    s->_link_left = g.limits.link_count;
    s->_vlimit = g.limits.attr_value_len;
    s->_dropped_attrs = s->_dropped_events = s->_dropped_links = 0;
    s->_sub_off = 0;
    s->_sub_left = 0;
    s->_nattrs = s->_nevents = s->_nlinks = 0;
    s->_truncated = 0;
    s->_status = TRACE_STATUS_UNSET;
    s->_kind = (uint8_t)(kind <= TRACE_KIND_CONSUMER ? kind : TRACE_KIND_INTERNAL);

    uint8_t *b = s->_buf;
    b[0] = SPAN_RECORD_VERSION;
    b[1] = s->_kind;
    b[3] = (uint8_t)(has_parent ? SPAN_RFLAG_HAS_PARENT |
                                      (parent->is_remote ? SPAN_RFLAG_PARENT_REMOTE : 0)
                                : 0);
    trace__le32(b + 4, s->ctx.flags);
    memcpy(b + 8, s->ctx.trace_id, 16);
    memcpy(b + 24, s->ctx.span_id, 8);
    if (has_parent)
        memcpy(b + 32, parent->span_id, 8);
    else
        memset(b + 32, 0, 8);
    trace__le64(b + 40, s->_wall_start);
    trace__le16(b + 74, 0);

    /* The length stays in a register: every byte store below may alias
     * s->_len for the compiler, so updating the field as we go would make
     * each step wait on a store-forwarded reload. */
    uint32_t len = SPAN_RECORD_HEADER_SIZE;
    size_t nlen = name_len < TRACE_NAME_MAX ? name_len : TRACE_NAME_MAX;
    uint8_t *q = b + len;
    q[0] = SPAN_ITEM_NAME;
    q[1] = 0;
    trace__le16(q + 2, (uint16_t)nlen);
    trace__copy(q + 4, name, nlen);
    len += 4 + (uint32_t)nlen;
    q = b + len;
    uint8_t nl = scope ? scope->name_len : 0, vl = scope ? scope->version_len : 0;
    q[0] = SPAN_ITEM_SCOPE;
    q[1] = nl;
    q[2] = vl;
    q[3] = 0;
    if (nl)
        trace__copy(q + 4, scope->name, nl);
    if (vl)
        trace__copy(q + 4 + nl, scope->version, vl);
    len += 4u + nl + vl;
    s->_len = len;
    if (s->ctx.tracestate_len && s->ctx.tracestate_len <= TRACE_TRACESTATE_MAX) {
        put_str_item(s, SPAN_ITEM_TRACESTATE, s->ctx.tracestate, s->ctx.tracestate_len);
        s->ctx.tracestate = (const char *)s->_buf + s->_len - s->ctx.tracestate_len;
    } else {
        s->ctx.tracestate = NULL;
        s->ctx.tracestate_len = 0;
    }
}

void trace__attr_slow(trace_span_t *s, const trace_attr_t *a)
{
    if (!s->_recording)
        return;
    if (s->_attr_left == 0) {
        s->_dropped_attrs++;
        return;
    }
    size_t need = span_record__attr_size(a, s->_vlimit);
    if (need == 0 || need > room(s)) {
        s->_dropped_attrs++;
        if (need)
            s->_truncated = 1;
        return;
    }
    s->_len += (uint32_t)span_record__put_attr(s->_buf + s->_len, SPAN_ITEM_ATTR, a, s->_vlimit);
    s->_attr_left--;
    s->_nattrs++;
}

void trace__attr_slow_raw(trace_span_t *s, const char *key, size_t klen, trace_attr_type_t type,
                          const char *str, size_t vlen, uint64_t bits)
{
    trace_attr_t a = {.key = key, .key_len = klen, .type = type};
    switch (type) {
    case TRACE_ATTR_STRING:
        a.v.s = (trace_str_t){str, vlen};
        break;
    case TRACE_ATTR_BOOL:
        a.v.b = bits != 0;
        break;
    case TRACE_ATTR_INT:
        a.v.i = (int64_t)bits;
        break;
    case TRACE_ATTR_DOUBLE:
        memcpy(&a.v.d, &bits, 8);
        break;
    default: /* arrays never come this way */
        s->_dropped_attrs += s->_recording ? 1 : 0;
        return;
    }
    trace__attr_slow(s, &a);
}

void trace_span_set_attr(trace_span_t *s, const trace_attr_t *a) { trace__attr_slow(s, a); }

void trace__set_status_slow(trace_span_t *s, trace_status_t code, const char *msg, size_t msg_len)
{
    if (!s->_recording || s->_status == TRACE_STATUS_OK || code == TRACE_STATUS_UNSET)
        return;
    if (code == TRACE_STATUS_OK) {
        s->_status = TRACE_STATUS_OK;
        return;
    }
    if (code != TRACE_STATUS_ERROR)
        return;
    s->_status = TRACE_STATUS_ERROR;
    if (msg_len > TRACE_STATUS_MSG_MAX)
        msg_len = TRACE_STATUS_MSG_MAX;
    if (msg_len == 0)
        return;
    if (4 + msg_len > room(s)) {
        s->_truncated = 1;
        return;
    }
    put_str_item(s, SPAN_ITEM_STATUS_MSG, msg, msg_len);
}

/* Attributes of the last event or link (tag EVENT_ATTR / LINK_ATTR); what
 * does not fit the limit or the room is counted in that item's dropped. */
static void sub_attrs(trace_span_t *s, uint8_t tag, const trace_attr_t *attrs, size_t n)
{
    uint32_t dropped = 0;
    for (size_t i = 0; i < n; i++) {
        size_t need = span_record__attr_size(&attrs[i], s->_vlimit);
        if (s->_sub_left == 0 || need == 0 || need > room(s)) {
            if (s->_sub_left && need)
                s->_truncated = 1;
            dropped++;
            continue;
        }
        s->_len += (uint32_t)span_record__put_attr(s->_buf + s->_len, tag, &attrs[i], s->_vlimit);
        s->_sub_left--;
    }
    if (dropped) {
        uint8_t *d = s->_buf + s->_sub_off + 4;
        uint32_t old;
        memcpy(&old, d, 4);
        trace__le32(d, old + dropped);
    }
}

void trace_span_add_event(trace_span_t *s, const char *name, size_t name_len, uint64_t time_ns,
                          const trace_attr_t *attrs, size_t n)
{
    if (!s->_recording)
        return;
    if (name_len > TRACE_NAME_MAX)
        name_len = TRACE_NAME_MAX;
    if (s->_event_left == 0 || 16 + name_len > room(s)) {
        if (s->_event_left)
            s->_truncated = 1;
        s->_dropped_events++;
        return;
    }
    if (time_ns == 0)
        time_ns = trace_now_ns();
    uint8_t *q = s->_buf + s->_len;
    q[0] = SPAN_ITEM_EVENT;
    q[1] = 0;
    trace__le16(q + 2, (uint16_t)name_len);
    trace__le32(q + 4, 0);
    trace__le64(q + 8, time_ns);
    trace__copy(q + 16, name, name_len);
    s->_sub_off = s->_len;
    s->_len += 16 + (uint32_t)name_len;
    s->_sub_left = g.limits.event_attr_count;
    s->_event_left--;
    s->_nevents++;
    sub_attrs(s, SPAN_ITEM_EVENT_ATTR, attrs, n);
}

void trace_span_add_link(trace_span_t *s, const trace_context_t *ctx, const trace_attr_t *attrs,
                         size_t n)
{
    if (!s->_recording)
        return;
    if (!trace_id_is_valid(ctx->trace_id, TRACE_ID_SIZE) ||
        !trace_id_is_valid(ctx->span_id, TRACE_SPAN_ID_SIZE)) {
        s->_dropped_links++; /* an invalid context cannot be linked */
        return;
    }
    size_t tsl = ctx->tracestate_len <= TRACE_TRACESTATE_MAX ? ctx->tracestate_len : 0;
    if (s->_link_left == 0 || 32 + tsl > room(s)) {
        if (s->_link_left)
            s->_truncated = 1;
        s->_dropped_links++;
        return;
    }
    uint8_t *q = s->_buf + s->_len;
    q[0] = SPAN_ITEM_LINK;
    q[1] = ctx->flags;
    trace__le16(q + 2, (uint16_t)tsl);
    trace__le32(q + 4, 0);
    memcpy(q + 8, ctx->trace_id, 16);
    memcpy(q + 24, ctx->span_id, 8);
    if (tsl)
        trace__copy(q + 32, ctx->tracestate, tsl);
    s->_sub_off = s->_len;
    s->_len += 32 + (uint32_t)tsl;
    s->_sub_left = g.limits.link_attr_count;
    s->_link_left--;
    s->_nlinks++;
    sub_attrs(s, SPAN_ITEM_LINK_ATTR, attrs, n);
}

/* Drops whole items from the end until the record fits limit. */
static uint32_t cut_to(trace_span_t *s, uint32_t limit)
{
    const uint8_t *items = s->_buf + SPAN_RECORD_HEADER_SIZE;
    uint32_t ilen = s->_len - SPAN_RECORD_HEADER_SIZE;
    uint32_t ilimit = limit - SPAN_RECORD_HEADER_SIZE;
    uint32_t off = 0, keep = 0, owner = 0, must = 0;
    span_record_item_t it;
    while (span_record_next(items, ilen, &off, &it) == 1) {
        if (it.tag == SPAN_ITEM_NAME || it.tag == SPAN_ITEM_SCOPE ||
            it.tag == SPAN_ITEM_TRACESTATE)
            must = off;
        if (off <= ilimit)
            keep = off;
    }
    if (must > ilimit)
        return 0;
    /* Walk again and count what lies past `keep`. */
    off = 0;
    uint32_t prev = 0;
    while (span_record_next(items, ilen, &off, &it) == 1) {
        bool dropped = prev >= keep;
        switch (it.tag) {
        case SPAN_ITEM_ATTR:
            if (dropped) {
                s->_nattrs--;
                s->_dropped_attrs++;
            }
            break;
        case SPAN_ITEM_EVENT:
        case SPAN_ITEM_LINK:
            owner = prev;
            if (dropped) {
                if (it.tag == SPAN_ITEM_EVENT) {
                    s->_nevents--;
                    s->_dropped_events++;
                } else {
                    s->_nlinks--;
                    s->_dropped_links++;
                }
            }
            break;
        case SPAN_ITEM_EVENT_ATTR:
        case SPAN_ITEM_LINK_ATTR:
            if (dropped && owner < keep) {
                uint8_t *d = s->_buf + SPAN_RECORD_HEADER_SIZE + owner + 4;
                uint32_t old;
                memcpy(&old, d, 4);
                trace__le32(d, old + 1);
            }
            break;
        default:
            break;
        }
        prev = off;
    }
    s->_len = SPAN_RECORD_HEADER_SIZE + keep;
    s->_truncated = 1;
    return s->_len;
}

/* The header fields known only at end, written into b (the span's buffer
 * or, on the ring path, the reserved record after the copy). */
TRACE__INLINE void finish_header(uint8_t *b, const trace_span_t *s, uint64_t end_ns)
{
    b[2] = s->_status;
    b[3] = (uint8_t)(s->_buf[3] | (s->_truncated ? SPAN_RFLAG_TRUNCATED : 0));
    trace__le64(b + 48, end_ns);
    trace__le32(b + 56, s->_dropped_attrs);
    trace__le32(b + 60, s->_dropped_events);
    trace__le32(b + 64, s->_dropped_links);
    trace__le16(b + 68, s->_nattrs);
    trace__le16(b + 70, s->_nevents);
    trace__le16(b + 72, s->_nlinks);
    trace__le32(b + 76, s->_len - SPAN_RECORD_HEADER_SIZE);
}

uint32_t trace__finish(trace_span_t *s, uint64_t end_ns, uint32_t limit, bool *truncated)
{
    if (s->_len > limit) {
        if (limit < SPAN_RECORD_HEADER_SIZE || cut_to(s, limit) == 0)
            return 0;
    }
    finish_header(s->_buf, s, end_ns);
    *truncated = s->_truncated != 0;
    return s->_len;
}


/* trace_span_end's rare cases: a sink, no ring, a record to cut. */
static __attribute__((noinline)) void end_slow(trace_span_t *s, uint64_t end)
{
    bool truncated;
    uint32_t len = trace__finish(s, end, g.max_payload, &truncated);
    if (g.sink) {
        if (len)
            g.sink(g.sink_arg, s->_buf, len, truncated);
        return;
    }
    if (g.ring == NULL)
        return;
    if (len == 0) { /* not even the name fits max_record: a config error */
        ring_count_drop(g.ring, RING_DROP_FULL, 1);
        return;
    }
    ring_producer_t *p = tls.prod;
    if (tls.gen != g.gen || p == NULL) {
        p = trace__acquire();
        if (p == NULL)
            return;
    }
    void *dst = ring_try_reserve_spsc(p, len);
    if (dst == NULL)
        return; /* full: the ring counted RING_DROP_FULL */
    memcpy(dst, s->_buf, len);
    ring_commit_spsc(p, truncated);
}

void trace_span_end(trace_span_t *s)
{
    if (!s->_recording)
        return;
    s->_recording = 0;
    uint64_t end = s->_wall_start + trace__clock_since(s->_t_start);
    ring_producer_t *p = tls.prod;
    uint32_t len = s->_len;
    if (__builtin_expect(g.sink != NULL || len > g.max_payload || p == NULL || tls.gen != g.gen,
                         0)) {
        end_slow(s, end);
        return;
    }
    uint8_t *dst = ring_try_reserve_spsc(p, len);
    if (dst == NULL)
        return; /* full: the ring counted RING_DROP_FULL */
    /* One copy of the buffer as it is, then the end-time fields straight
     * into the record: writing them into s->_buf first would make the
     * copy's wide loads wait for those narrow stores (no store forwarding). */
    memcpy(dst, s->_buf, len);
    finish_header(dst, s, end);
    ring_commit_spsc(p, s->_truncated != 0);
}

int trace_span_end_into(trace_span_t *s, uint64_t end_ns, void *out, size_t cap)
{
    if (!s->_recording)
        return 0;
    s->_recording = 0;
    if (end_ns == 0)
        end_ns = s->_wall_start + trace__clock_since(s->_t_start);
    bool truncated;
    uint32_t limit = cap < TRACE_SPAN_BUF_SIZE ? (uint32_t)cap : TRACE_SPAN_BUF_SIZE;
    uint32_t len = trace__finish(s, end_ns, limit, &truncated);
    if (len == 0)
        return -ENOSPC;
    memcpy(out, s->_buf, len);
    return (int)len;
}

/* ------------------------------------------------------------ propagation */

int trace_inject(const trace_context_t *ctx, const trace_baggage_t *bag,
                 trace_header_set_cb set, void *carrier)
{
    char tp[TRACE_TRACEPARENT_LEN + 1];
    int rc = trace_w3c_traceparent_format(ctx, tp);
    if (rc < 0)
        return rc;
    if ((rc = set(carrier, "traceparent", tp, TRACE_TRACEPARENT_LEN)) != 0)
        return rc;
    if (ctx->tracestate_len && ctx->tracestate &&
        (rc = set(carrier, "tracestate", ctx->tracestate, ctx->tracestate_len)) != 0)
        return rc;
    if (bag && bag->count) {
        char buf[TRACE_BAGGAGE_BYTES_MAX + 1];
        int n = trace_w3c_baggage_format(bag, buf, sizeof buf);
        if (n > 0 && (rc = set(carrier, "baggage", buf, (size_t)n)) != 0)
            return rc;
    }
    return 0;
}

int trace_extract(trace_header_get_cb get, void *carrier, trace_context_t *ctx, char *ts,
                  size_t tscap, trace_baggage_t *bag)
{
    size_t n = 0;
    const char *v;
    if (bag) {
        bag->count = 0;
        bag->_store_len = 0;
        if ((v = get(carrier, "baggage", &n)) != NULL)
            (void)trace_w3c_baggage_parse(v, n, bag); /* invalid: dropped alone */
    }
    memset(ctx, 0, sizeof *ctx);
    v = get(carrier, "traceparent", &n);
    if (v == NULL || trace_w3c_traceparent_parse(v, n, ctx) != 0) {
        memset(ctx, 0, sizeof *ctx);
        return -ENOENT;
    }
    if (ts && tscap && (v = get(carrier, "tracestate", &n)) != NULL) {
        size_t cap = tscap < TRACE_TRACESTATE_MAX ? tscap : TRACE_TRACESTATE_MAX;
        int l = trace_w3c_tracestate_parse(v, n, ts, cap);
        if (l > 0) {
            ctx->tracestate = ts;
            ctx->tracestate_len = (uint16_t)l;
        }
    }
    return 0;
}
