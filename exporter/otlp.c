/*
 * exporter/otlp.c - span records -> one OTLP ExportTraceServiceRequest.
 *
 * Records come straight from the ring (untrusted shared memory): each is
 * validated by span_record_decode and walked with span_record_next; bytes
 * fields (ids) point into the records, which stay mapped until released.
 * Grouping: one ResourceSpans per lane (the lane's metadata blob is that
 * producer's resource; a lane is only re-claimed once drained, so records
 * and blob match), then one ScopeSpans per (scope name, version), each with
 * schema_url EXP_SCHEMA_URL.  Order of spans is kept inside a scope.
 *
 * Memory: every protobuf-c struct of a batch comes from the encoder's arena,
 * a list of chunks reset (not freed) between batches, so a steady exporter
 * allocates nothing per batch; the output buffer grows to the largest batch
 * and is reused.  Both are bounded by max_export_batch_size x max_record.
 *
 * Rules (OTel spec): repeated attribute keys keep the LAST value ("setting
 * an attribute with the same key overwrites"), in the first key's place;
 * a status message is sent only when the code is ERROR; OTLP span flags are
 * the W3C trace flags plus bit 8 (HAS_IS_REMOTE, we always know) and bit 9
 * (IS_REMOTE) for the parent; links carry only the trace flags (whether a
 * link's context was remote is not in the record).
 * Limit: protobuf-c packs `string` fields with strlen, so a string holding
 * a NUL byte is cut there.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exporter.h"
#include "otlp_proto.h"

typedef Opentelemetry__Proto__Common__V1__AnyValue any_t;
typedef Opentelemetry__Proto__Common__V1__ArrayValue arr_t;
typedef Opentelemetry__Proto__Common__V1__KeyValue kv_t;
typedef Opentelemetry__Proto__Common__V1__InstrumentationScope scope_t;
typedef Opentelemetry__Proto__Resource__V1__Resource res_t;
typedef Opentelemetry__Proto__Trace__V1__ResourceSpans rspans_t;
typedef Opentelemetry__Proto__Trace__V1__ScopeSpans sspans_t;
typedef Opentelemetry__Proto__Trace__V1__Span span_t;
typedef Opentelemetry__Proto__Trace__V1__Span__Event event_t;
typedef Opentelemetry__Proto__Trace__V1__Span__Link link_t;
typedef Opentelemetry__Proto__Trace__V1__Status status_t;
typedef Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest req_t;

#define OTLP__CHUNK (256u * 1024u)
/* Arena bytes kept between batches; more is given back after a batch. */
#define OTLP__KEEP (64u * 1024u * 1024u)

typedef struct otlp__chunk {
    struct otlp__chunk *next;
    size_t cap, used;
    _Alignas(16) unsigned char data[];
} otlp__chunk_t;

/* A scope group of the batch being built. */
typedef struct {
    uint32_t res;          /* index into the resource groups */
    trace_str_t name, version;
    uint32_t count, fill;  /* spans in it; spans placed so far */
    sspans_t *ss;
} otlp__scope_t;

struct st_otlp_encoder_t {
    otlp__chunk_t *chunks; /* list; chunks[0] is the current one */
    otlp__chunk_t *cur;
    size_t arena_total;
    uint8_t *out;          /* packed request */
    size_t out_cap;
    uint32_t *lane_gen;    /* per lane: batch generation that created its group */
    uint32_t *lane_res;    /* per lane: resource group index (valid when gen matches) */
    uint32_t lanes_cap;
    uint32_t gen;
};

/* ------------------------------------------------------------- arena */

static void *otlp__alloc(otlp_encoder_t *e, size_t n)
{
    n = (n + 15u) & ~(size_t)15u;
    otlp__chunk_t *c = e->cur;
    while (c && c->used + n > c->cap)
        c = c->next;
    if (!c) {
        size_t cap = n > OTLP__CHUNK ? n : OTLP__CHUNK;
        c = malloc(sizeof *c + cap);
        if (!c)
            return NULL;
        c->cap = cap;
        c->used = 0;
        c->next = e->chunks;
        e->chunks = c;
        e->arena_total += cap;
    }
    e->cur = c;
    void *p = c->data + c->used;
    c->used += n;
    return p;
}

static void otlp__reset(otlp_encoder_t *e)
{
    otlp__chunk_t **pp = &e->chunks;
    size_t kept = 0;
    while (*pp) {
        otlp__chunk_t *c = *pp;
        if (kept + c->cap > OTLP__KEEP) {
            *pp = c->next;
            e->arena_total -= c->cap;
            free(c);
            continue;
        }
        kept += c->cap;
        c->used = 0;
        pp = &c->next;
    }
    e->cur = e->chunks;
}

static char *otlp__str(otlp_encoder_t *e, const char *p, size_t n)
{
    if (n == 0)
        return (char *)protobuf_c_empty_string;
    char *s = otlp__alloc(e, n + 1);
    if (!s)
        return NULL;
    memcpy(s, p, n);
    s[n] = 0;
    return s;
}

otlp_encoder_t *otlp_encoder_new(void)
{
    otlp_encoder_t *e = calloc(1, sizeof *e);
    return e;
}

void otlp_encoder_free(otlp_encoder_t *e)
{
    if (!e)
        return;
    while (e->chunks) {
        otlp__chunk_t *c = e->chunks;
        e->chunks = c->next;
        free(c);
    }
    free(e->out);
    free(e->lane_gen);
    free(e->lane_res);
    free(e);
}

/* ------------------------------------------------------------- values */

static any_t *otlp__value(otlp_encoder_t *e, const span_record_item_t *it)
{
    any_t *v = otlp__alloc(e, sizeof *v);
    if (!v)
        return NULL;
    /* AnyValue.value is a oneof: "" must still be sent (field 1, length 0),
     * but protobuf-c skips a oneof string that is protobuf_c_empty_string,
     * which otlp__str returns for "": empty values use this one instead. */
    static char oneof_empty[1];
    *v = (any_t)OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__INIT;
    switch (it->type) {
    case TRACE_ATTR_STRING:
        v->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE;
        v->string_value = it->value_len ? otlp__str(e, (const char *)it->value, it->value_len) : oneof_empty;
        if (!v->string_value)
            return NULL;
        return v;
    case TRACE_ATTR_BOOL:
        v->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BOOL_VALUE;
        v->bool_value = it->value[0] != 0;
        return v;
    case TRACE_ATTR_INT:
        v->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_INT_VALUE;
        memcpy(&v->int_value, it->value, 8);
        return v;
    case TRACE_ATTR_DOUBLE:
        v->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_DOUBLE_VALUE;
        memcpy(&v->double_value, it->value, 8);
        return v;
    case TRACE_ATTR_STRING_ARRAY:
    case TRACE_ATTR_BOOL_ARRAY:
    case TRACE_ATTR_INT_ARRAY:
    case TRACE_ATTR_DOUBLE_ARRAY:
        break;
    default:
        return NULL; /* span_record_decode already refused it: loud, not a default */
    }
    arr_t *a = otlp__alloc(e, sizeof *a);
    any_t **vals = it->count ? otlp__alloc(e, it->count * sizeof *vals) : NULL;
    any_t *elems = it->count ? otlp__alloc(e, it->count * sizeof *elems) : NULL;
    if (!a || (it->count && (!vals || !elems)))
        return NULL;
    *a = (arr_t)OPENTELEMETRY__PROTO__COMMON__V1__ARRAY_VALUE__INIT;
    a->n_values = it->count;
    a->values = vals;
    uint32_t off = 0;
    for (uint32_t i = 0; i < it->count; i++) {
        any_t *x = &elems[i];
        *x = (any_t)OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__INIT;
        vals[i] = x;
        switch (it->type) {
        case TRACE_ATTR_STRING_ARRAY: {
            trace_str_t s;
            if (span_record_array_str(it, &off, &s) != 1)
                return NULL;
            x->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE;
            x->string_value = s.len ? otlp__str(e, s.p, s.len) : oneof_empty;
            if (!x->string_value)
                return NULL;
            break;
        }
        case TRACE_ATTR_BOOL_ARRAY:
            x->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BOOL_VALUE;
            x->bool_value = span_record_array_bool(it, i);
            break;
        case TRACE_ATTR_INT_ARRAY:
            x->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_INT_VALUE;
            x->int_value = span_record_array_int(it, i);
            break;
        default:
            x->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_DOUBLE_VALUE;
            x->double_value = span_record_array_double(it, i);
            break;
        }
    }
    v->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_ARRAY_VALUE;
    v->array_value = a;
    return v;
}

/* Sets key = value in kvs[0..*n): a repeated key overwrites the earlier
 * value in place (last wins).  kvs has room for one more.  O(n) per key:
 * records hold at most a few hundred attributes (record size bound). */
static int otlp__kv_put(otlp_encoder_t *e, kv_t **kvs, size_t *n, const span_record_item_t *it)
{
    any_t *v = otlp__value(e, it);
    if (!v)
        return -ENOMEM;
    for (size_t i = 0; i < *n; i++) {
        const char *k = kvs[i]->key;
        if (strncmp(k, it->key.p, it->key.len) == 0 && k[it->key.len] == 0) {
            kvs[i]->value = v;
            return 0;
        }
    }
    kv_t *kv = otlp__alloc(e, sizeof *kv);
    if (!kv)
        return -ENOMEM;
    *kv = (kv_t)OPENTELEMETRY__PROTO__COMMON__V1__KEY_VALUE__INIT;
    if (!(kv->key = otlp__str(e, it->key.p, it->key.len)))
        return -ENOMEM;
    kv->value = v;
    kvs[(*n)++] = kv;
    return 0;
}

/* ------------------------------------------------------------- spans */

/* Builds one Span from a decoded record.  Returns NULL on -ENOMEM or when
 * the items do not walk (then the record counts as bad). */
static span_t *otlp__span(otlp_encoder_t *e, const span_record_t *r, int *bad)
{
    span_t *s = otlp__alloc(e, sizeof *s);
    if (!s)
        return NULL;
    *s = (span_t)OPENTELEMETRY__PROTO__TRACE__V1__SPAN__INIT;
    /* *r is a caller's stack copy: the ids go to the arena (32 bytes) */
    uint8_t *ids = otlp__alloc(e, TRACE_ID_SIZE + 2 * TRACE_SPAN_ID_SIZE);
    if (!ids)
        return NULL;
    memcpy(ids, r->trace_id, TRACE_ID_SIZE);
    memcpy(ids + TRACE_ID_SIZE, r->span_id, TRACE_SPAN_ID_SIZE);
    memcpy(ids + TRACE_ID_SIZE + TRACE_SPAN_ID_SIZE, r->parent_span_id, TRACE_SPAN_ID_SIZE);
    s->trace_id.data = ids;
    s->trace_id.len = TRACE_ID_SIZE;
    s->span_id.data = ids + TRACE_ID_SIZE;
    s->span_id.len = TRACE_SPAN_ID_SIZE;
    if ((r->rflags & SPAN_RFLAG_HAS_PARENT) && trace_id_is_valid(r->parent_span_id, TRACE_SPAN_ID_SIZE)) {
        s->parent_span_id.data = ids + TRACE_ID_SIZE + TRACE_SPAN_ID_SIZE;
        s->parent_span_id.len = TRACE_SPAN_ID_SIZE;
    }
    s->flags = (r->trace_flags & 0xffu) | 0x100u | ((r->rflags & SPAN_RFLAG_PARENT_REMOTE) ? 0x200u : 0);
    s->kind = (Opentelemetry__Proto__Trace__V1__Span__SpanKind)r->kind; /* record kind = OTLP number */
    s->start_time_unix_nano = r->start_ns;
    s->end_time_unix_nano = r->end_ns;
    s->dropped_attributes_count = r->dropped_attrs;
    s->dropped_events_count = r->dropped_events;
    s->dropped_links_count = r->dropped_links;
    if (!(s->name = otlp__str(e, r->name.p, r->name.len)) ||
        !(s->trace_state = otlp__str(e, r->tracestate.p, r->tracestate.len)))
        return NULL;
    if (r->status != TRACE_STATUS_UNSET) {
        status_t *st = otlp__alloc(e, sizeof *st);
        if (!st)
            return NULL;
        *st = (status_t)OPENTELEMETRY__PROTO__TRACE__V1__STATUS__INIT;
        st->code = (Opentelemetry__Proto__Trace__V1__Status__StatusCode)r->status;
        if (r->status == TRACE_STATUS_ERROR && !(st->message = otlp__str(e, r->status_msg.p, r->status_msg.len)))
            return NULL;
        s->status = st;
    }
    /* Pass 1: count attributes per event and link (arrays are sized once). */
    uint32_t *ev_n = r->n_events ? otlp__alloc(e, r->n_events * sizeof *ev_n) : NULL;
    uint32_t *ln_n = r->n_links ? otlp__alloc(e, r->n_links * sizeof *ln_n) : NULL;
    if ((r->n_events && !ev_n) || (r->n_links && !ln_n))
        return NULL;
    if (ev_n) /* memset(NULL, 0, 0) is undefined behaviour (UBSan) */
        memset(ev_n, 0, r->n_events * sizeof *ev_n);
    if (ln_n)
        memset(ln_n, 0, r->n_links * sizeof *ln_n);
    span_record_item_t it;
    uint32_t off = 0;
    int ev = -1, ln = -1, rc;
    while ((rc = span_record_next(r->items, r->items_len, &off, &it)) == 1) {
        if (it.tag == SPAN_ITEM_EVENT)
            ev++;
        else if (it.tag == SPAN_ITEM_LINK)
            ln++;
        else if (it.tag == SPAN_ITEM_EVENT_ATTR && ev >= 0 && ev < r->n_events)
            ev_n[ev]++;
        else if (it.tag == SPAN_ITEM_LINK_ATTR && ln >= 0 && ln < r->n_links)
            ln_n[ln]++;
    }
    if (rc < 0 || ev + 1 != r->n_events || ln + 1 != r->n_links) {
        *bad = 1;
        return NULL;
    }
    s->attributes = r->n_attrs ? otlp__alloc(e, r->n_attrs * sizeof *s->attributes) : NULL;
    s->events = r->n_events ? otlp__alloc(e, r->n_events * sizeof *s->events) : NULL;
    s->links = r->n_links ? otlp__alloc(e, r->n_links * sizeof *s->links) : NULL;
    if ((r->n_attrs && !s->attributes) || (r->n_events && !s->events) || (r->n_links && !s->links))
        return NULL;
    /* Pass 2: fill. */
    event_t *cev = NULL;
    link_t *cln = NULL;
    off = 0;
    while (span_record_next(r->items, r->items_len, &off, &it) == 1) {
        switch (it.tag) {
        case SPAN_ITEM_NAME:
        case SPAN_ITEM_SCOPE:
        case SPAN_ITEM_TRACESTATE:
        case SPAN_ITEM_STATUS_MSG:
            break; /* decoded into *r already */
        case SPAN_ITEM_ATTR:
            if (s->n_attributes >= r->n_attrs) { *bad = 1; return NULL; }
            if (otlp__kv_put(e, s->attributes, &s->n_attributes, &it) != 0)
                return NULL;
            break;
        case SPAN_ITEM_EVENT: {
            cev = otlp__alloc(e, sizeof *cev);
            if (!cev)
                return NULL;
            *cev = (event_t)OPENTELEMETRY__PROTO__TRACE__V1__SPAN__EVENT__INIT;
            cev->time_unix_nano = it.time_ns;
            cev->dropped_attributes_count = it.count;
            uint32_t na = ev_n[s->n_events];
            if (!(cev->name = otlp__str(e, it.key.p, it.key.len)) ||
                (na && !(cev->attributes = otlp__alloc(e, na * sizeof *cev->attributes))))
                return NULL;
            s->events[s->n_events++] = cev;
            break;
        }
        case SPAN_ITEM_LINK: {
            cln = otlp__alloc(e, sizeof *cln);
            if (!cln)
                return NULL;
            *cln = (link_t)OPENTELEMETRY__PROTO__TRACE__V1__SPAN__LINK__INIT;
            cln->trace_id.data = (uint8_t *)it.trace_id;
            cln->trace_id.len = TRACE_ID_SIZE;
            cln->span_id.data = (uint8_t *)it.span_id;
            cln->span_id.len = TRACE_SPAN_ID_SIZE;
            cln->flags = it.type; /* W3C trace flags only */
            cln->dropped_attributes_count = it.count;
            uint32_t na = ln_n[s->n_links];
            if (!(cln->trace_state = otlp__str(e, it.key.p, it.key.len)) ||
                (na && !(cln->attributes = otlp__alloc(e, na * sizeof *cln->attributes))))
                return NULL;
            s->links[s->n_links++] = cln;
            break;
        }
        case SPAN_ITEM_EVENT_ATTR:
            if (otlp__kv_put(e, cev->attributes, &cev->n_attributes, &it) != 0)
                return NULL;
            break;
        case SPAN_ITEM_LINK_ATTR:
            if (otlp__kv_put(e, cln->attributes, &cln->n_attributes, &it) != 0)
                return NULL;
            break;
        default:
            *bad = 1; /* unknown tag: span_record_decode refuses these; never silently */
            return NULL;
        }
    }
    return s;
}

static rspans_t *otlp__resource(otlp_encoder_t *e, uint32_t lane, otlp_meta_fn meta, void *arg)
{
    rspans_t *rs = otlp__alloc(e, sizeof *rs);
    res_t *res = otlp__alloc(e, sizeof *res);
    if (!rs || !res)
        return NULL;
    *rs = (rspans_t)OPENTELEMETRY__PROTO__TRACE__V1__RESOURCE_SPANS__INIT;
    *res = (res_t)OPENTELEMETRY__PROTO__RESOURCE__V1__RESOURCE__INIT;
    rs->resource = res;
    const void *blob = NULL;
    int len = meta ? meta(arg, lane, &blob) : -ENOENT;
    span_resource_t sr;
    if (len <= 0 || span_resource_decode(blob, (size_t)len, &sr) != 0 || sr.n_attrs == 0)
        return rs; /* no (valid) resource: spans still go, under an empty resource */
    res->attributes = otlp__alloc(e, sr.n_attrs * sizeof *res->attributes);
    if (!res->attributes)
        return NULL;
    span_record_item_t it;
    uint32_t off = 0;
    while (span_record_next(sr.items, sr.items_len, &off, &it) == 1 && res->n_attributes < sr.n_attrs)
        if (it.tag == SPAN_ITEM_ATTR && otlp__kv_put(e, res->attributes, &res->n_attributes, &it) != 0)
            return NULL;
    return rs;
}

static int otlp__lanes(otlp_encoder_t *e, uint32_t lane)
{
    if (lane < e->lanes_cap)
        return 0;
    uint32_t cap = lane + 64;
    uint32_t *g = realloc(e->lane_gen, cap * sizeof *g);
    if (!g)
        return -ENOMEM;
    e->lane_gen = g;
    uint32_t *r = realloc(e->lane_res, cap * sizeof *r);
    if (!r)
        return -ENOMEM;
    e->lane_res = r;
    memset(g + e->lanes_cap, 0, (cap - e->lanes_cap) * sizeof *g);
    e->lanes_cap = cap;
    return 0;
}

long otlp_encode(otlp_encoder_t *e, const ring_record_t *recs, size_t n, otlp_meta_fn meta,
                 void *meta_arg, const uint8_t **out, uint64_t *bad)
{
    otlp__reset(e);
    if (++e->gen == 0) { /* generation wrapped: clear the stamps */
        memset(e->lane_gen, 0, e->lanes_cap * sizeof *e->lane_gen);
        e->gen = 1;
    }
    *bad = 0;
    rspans_t **rsv = otlp__alloc(e, (n ? n : 1) * sizeof *rsv);       /* <= one per span */
    otlp__scope_t *sc = otlp__alloc(e, (n ? n : 1) * sizeof *sc);      /* <= one per span */
    span_t **spans = otlp__alloc(e, (n ? n : 1) * sizeof *spans);
    uint32_t *scope_of = otlp__alloc(e, (n ? n : 1) * sizeof *scope_of);
    uint32_t *res_nscopes = otlp__alloc(e, (n ? n : 1) * sizeof *res_nscopes);
    if (!rsv || !sc || !spans || !scope_of || !res_nscopes)
        return -ENOMEM;
    uint32_t nres = 0, nsc = 0, last = UINT32_MAX;
    for (size_t i = 0; i < n; i++) {
        span_record_t r;
        spans[i] = NULL;
        if (span_record_decode(recs[i].data, recs[i].len, &r) != 0) {
            (*bad)++;
            continue;
        }
        int isbad = 0;
        span_t *s = otlp__span(e, &r, &isbad);
        if (!s) {
            if (!isbad)
                return -ENOMEM;
            (*bad)++;
            continue;
        }
        uint32_t lane = recs[i].lane;
        if (otlp__lanes(e, lane) != 0)
            return -ENOMEM;
        if (e->lane_gen[lane] != e->gen) {
            if (!(rsv[nres] = otlp__resource(e, lane, meta, meta_arg)))
                return -ENOMEM;
            res_nscopes[nres] = 0;
            e->lane_gen[lane] = e->gen;
            e->lane_res[lane] = nres++;
        }
        uint32_t ri = e->lane_res[lane], si = UINT32_MAX;
        /* Scope lookup: the previous span's scope first (runs are common). */
        if (last != UINT32_MAX && sc[last].res == ri && sc[last].name.len == r.scope_name.len &&
            sc[last].version.len == r.scope_version.len &&
            memcmp(sc[last].name.p, r.scope_name.p, r.scope_name.len) == 0 &&
            memcmp(sc[last].version.p, r.scope_version.p, r.scope_version.len) == 0)
            si = last;
        for (uint32_t k = 0; si == UINT32_MAX && k < nsc; k++)
            if (sc[k].res == ri && sc[k].name.len == r.scope_name.len &&
                sc[k].version.len == r.scope_version.len &&
                memcmp(sc[k].name.p, r.scope_name.p, r.scope_name.len) == 0 &&
                memcmp(sc[k].version.p, r.scope_version.p, r.scope_version.len) == 0)
                si = k;
        if (si == UINT32_MAX) {
            si = nsc++;
            sc[si] = (otlp__scope_t){.res = ri, .name = r.scope_name, .version = r.scope_version};
            res_nscopes[ri]++;
        }
        sc[si].count++;
        spans[i] = s;
        scope_of[i] = si;
        last = si;
    }
    /* Build ScopeSpans and hang them under their resources. */
    for (uint32_t ri = 0; ri < nres; ri++) {
        rsv[ri]->scope_spans = otlp__alloc(e, (res_nscopes[ri] ? res_nscopes[ri] : 1) * sizeof(sspans_t *));
        if (!rsv[ri]->scope_spans)
            return -ENOMEM;
    }
    for (uint32_t k = 0; k < nsc; k++) {
        sspans_t *ss = otlp__alloc(e, sizeof *ss);
        scope_t *scp = otlp__alloc(e, sizeof *scp);
        if (!ss || !scp)
            return -ENOMEM;
        *ss = (sspans_t)OPENTELEMETRY__PROTO__TRACE__V1__SCOPE_SPANS__INIT;
        *scp = (scope_t)OPENTELEMETRY__PROTO__COMMON__V1__INSTRUMENTATION_SCOPE__INIT;
        if (!(scp->name = otlp__str(e, sc[k].name.p, sc[k].name.len)) ||
            !(scp->version = otlp__str(e, sc[k].version.p, sc[k].version.len)) ||
            !(ss->spans = otlp__alloc(e, sc[k].count * sizeof *ss->spans)))
            return -ENOMEM;
        ss->scope = scp;
        ss->schema_url = (char *)EXP_SCHEMA_URL;
        sc[k].ss = ss;
        rspans_t *rs = rsv[sc[k].res];
        rs->scope_spans[rs->n_scope_spans++] = ss;
    }
    for (size_t i = 0; i < n; i++)
        if (spans[i]) {
            sspans_t *ss = sc[scope_of[i]].ss;
            ss->spans[ss->n_spans++] = spans[i];
        }
    req_t req = OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_REQUEST__INIT;
    req.n_resource_spans = nres;
    req.resource_spans = rsv;
    size_t sz = opentelemetry__proto__collector__trace__v1__export_trace_service_request__get_packed_size(&req);
    if (sz > e->out_cap) {
        size_t cap = sz + sz / 4 + 1024;
        uint8_t *p = realloc(e->out, cap);
        if (!p)
            return -ENOMEM;
        e->out = p;
        e->out_cap = cap;
    }
    size_t w = opentelemetry__proto__collector__trace__v1__export_trace_service_request__pack(&req, e->out);
    *out = e->out;
    return (long)w;
}

int otlp_parse_response(const uint8_t *buf, size_t len, uint64_t *rejected, char *msg, size_t cap)
{
    *rejected = 0;
    if (cap)
        msg[0] = 0;
    if (len == 0)
        return 0;
    Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceResponse *r =
        opentelemetry__proto__collector__trace__v1__export_trace_service_response__unpack(NULL, len, buf);
    if (!r)
        return -1;
    if (r->partial_success) {
        *rejected = r->partial_success->rejected_spans > 0 ? (uint64_t)r->partial_success->rejected_spans : 0;
        if (cap && r->partial_success->error_message)
            snprintf(msg, cap, "%s", r->partial_success->error_message);
    }
    opentelemetry__proto__collector__trace__v1__export_trace_service_response__free_unpacked(r, NULL);
    return 0;
}
