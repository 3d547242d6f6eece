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
 * Two encoders of the same request: otlp_encode, which writes the wire
 * format straight from the records (the exporter's; "direct encoder" below),
 * and otlp_encode_pbc, a protobuf-c message tree packed by protobuf-c, kept
 * as the reference the direct one is tested against (same bytes).
 *
 * Memory (protobuf-c path): every struct of a batch comes from the encoder's arena,
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

/* Direct encoder: a scope group (spans chained through w_next) and a
 * resource group (scopes chained through next), both in first-seen order. */
typedef struct {
    trace_str_t name, version;
    uint32_t res;          /* resource group */
    uint32_t first, last;  /* records, chained by w_next */
    uint32_t next;         /* next scope of the same resource, UINT32_MAX = end */
} otlp__wscope_t;

typedef struct {
    uint32_t lane;
    uint32_t first, last;  /* scopes */
} otlp__wres_t;

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
    /* Direct encoder (otlp_encode): scratch grown to the largest batch and
     * span seen, reused, freed with the encoder. */
    span_record_t *w_recs;   /* decoded records of the batch */
    uint32_t *w_next;        /* per record: next record of its scope, UINT32_MAX = end */
    otlp__wscope_t *w_scopes;
    otlp__wres_t *w_res;
    size_t w_cap;            /* entries of each of the four above */
    uint32_t *w_ifirst;      /* per record: its first item in w_items */
    uint32_t *w_icount;      /* per record: its item count */
    span_record_item_t *w_items; /* the items of every record of the batch, in
                              * record order (filled by the one decoding
                              * walk, read by the writer), then the
                              * resource's being written */
    uint32_t *w_slot;        /* indices into w_items of one attribute list */
    size_t w_items_cap;
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
    free(e->w_recs);
    free(e->w_next);
    free(e->w_scopes);
    free(e->w_res);
    free(e->w_ifirst);
    free(e->w_icount);
    free(e->w_items);
    free(e->w_slot);
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

long otlp_encode_pbc(otlp_encoder_t *e, const ring_record_t *recs, size_t n, otlp_meta_fn meta,
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

/* ------------------------------------------------------------- direct encoder
 *
 * otlp_encode writes the protobuf wire format straight from the records:
 * no message tree, no string copies, nothing allocated per span.  Each
 * length-delimited field is written with a guessed length width (1 byte
 * for a KeyValue, 2 for a Span, 3 for a ScopeSpans ...); when the body is
 * done its length is known, and if its varint needs another width the body
 * is moved (memmove of that body only, rare for the guesses below).  So
 * every varint is minimal and the bytes equal protobuf-c's packing of the
 * same message (fields in field-number order, proto3 zero values omitted,
 * oneof members always present), which tests/exporter/test_exp_otlp_fast
 * checks against otlp_encode_pbc.  Unlike protobuf-c, strings keep any NUL
 * byte they hold.
 *
 * Room: before each span the buffer gets 8 x record length + 512 bytes
 * free.  An item of n record bytes (header >= 4 bytes, attributes >= 8)
 * encodes to at most 4n + 16 bytes (the worst: a bool array element, 1
 * record byte -> AnyValue tag, length, tag, value), so that is a bound, and
 * a repeated key only shrinks the output.
 */

#define OTLP__LEN 2u /* wire types */
#define OTLP__I64 1u
#define OTLP__I32 5u
#define OTLP__TAG(field, wt) ((uint8_t)(((field) << 3) | (wt)))
#define OTLP__NONE UINT32_MAX

static inline unsigned otlp__vlen(uint64_t v)
{
    unsigned n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline uint8_t *otlp__vput(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

static inline uint8_t *otlp__fixed64(uint8_t *p, uint8_t tag, uint64_t v)
{
    *p++ = tag;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(p, &v, 8); /* fixed64 is little-endian on the wire: one store */
#else
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
#endif
    return p + 8;
}

/* Copies n bytes from s to d (not overlapping).  Keys and values are mostly
 * under 32 bytes: fixed-size loads and stores, overlapping in the middle,
 * cost a fraction of a memcpy call, which dominated the writer's
 * instruction count. */
static inline void otlp__copy(uint8_t *d, const void *src, size_t n)
{
    const uint8_t *s = src;
    uint64_t a, b, c, e;
    uint32_t x, y;
    if (n > 32) {
        memcpy(d, s, n);
    } else if (n >= 16) {
        memcpy(&a, s, 8);
        memcpy(&b, s + 8, 8);
        memcpy(&c, s + n - 16, 8);
        memcpy(&e, s + n - 8, 8);
        memcpy(d, &a, 8);
        memcpy(d + 8, &b, 8);
        memcpy(d + n - 16, &c, 8);
        memcpy(d + n - 8, &e, 8);
    } else if (n >= 8) {
        memcpy(&a, s, 8);
        memcpy(&b, s + n - 8, 8);
        memcpy(d, &a, 8);
        memcpy(d + n - 8, &b, 8);
    } else if (n >= 4) {
        memcpy(&x, s, 4);
        memcpy(&y, s + n - 4, 4);
        memcpy(d, &x, 4);
        memcpy(d + n - 4, &y, 4);
    } else if (n > 0) {
        d[0] = s[0];
        d[n / 2] = s[n / 2];
        d[n - 1] = s[n - 1];
    }
}

/* A proto3 string or bytes field: omitted when empty. */
static inline uint8_t *otlp__bytes(uint8_t *p, uint8_t tag, const void *s, size_t n)
{
    if (n == 0)
        return p;
    *p++ = tag;
    p = otlp__vput(p, n);
    otlp__copy(p, s, n);
    return p + n;
}

/* A proto3 varint field: omitted when zero. */
static inline uint8_t *otlp__uint(uint8_t *p, uint8_t tag, uint64_t v)
{
    if (v == 0)
        return p;
    *p++ = tag;
    return otlp__vput(p, v);
}

/* Opens a length-delimited field: tag, then `guess` bytes kept for the
 * length.  Returns where the body starts. */
static inline uint8_t *otlp__open(uint8_t *p, uint8_t tag, unsigned guess, uint8_t **mark)
{
    *p++ = tag;
    *mark = p;
    return p + guess;
}

/* Closes it: the body is mark+guess .. end.  Returns the new end. */
static inline uint8_t *otlp__close(uint8_t *mark, unsigned guess, uint8_t *end)
{
    size_t len = (size_t)(end - mark - guess);
    unsigned need = otlp__vlen(len);
    if (need != guess)
        memmove(mark + need, mark + guess, len);
    otlp__vput(mark, len);
    return mark + need + len;
}

/* AnyValue body of an attribute item.  NULL when a string array does not
 * walk (span_record_decode checked it: only a record changed under us). */
static uint8_t *otlp__w_value(uint8_t *p, const span_record_item_t *it)
{
    uint64_t u;
    uint8_t *m, *m2;
    switch (it->type) {
    case TRACE_ATTR_STRING: /* oneof: present even when empty */
        *p++ = OTLP__TAG(1, OTLP__LEN);
        p = otlp__vput(p, it->value_len);
        otlp__copy(p, it->value, it->value_len);
        return p + it->value_len;
    case TRACE_ATTR_BOOL:
        *p++ = OTLP__TAG(2, 0);
        *p++ = it->value[0] != 0;
        return p;
    case TRACE_ATTR_INT:
        memcpy(&u, it->value, 8);
        *p++ = OTLP__TAG(3, 0);
        return otlp__vput(p, u);
    case TRACE_ATTR_DOUBLE:
        memcpy(&u, it->value, 8);
        return otlp__fixed64(p, OTLP__TAG(4, OTLP__I64), u);
    case TRACE_ATTR_STRING_ARRAY:
    case TRACE_ATTR_BOOL_ARRAY:
    case TRACE_ATTR_INT_ARRAY:
    case TRACE_ATTR_DOUBLE_ARRAY:
        break;
    default:
        return NULL; /* span_record_decode refused it already */
    }
    p = otlp__open(p, OTLP__TAG(5, OTLP__LEN), it->count < 16 ? 1 : 2, &m);
    uint32_t off = 0;
    for (uint32_t i = 0; i < it->count; i++) {
        switch (it->type) {
        case TRACE_ATTR_STRING_ARRAY: {
            trace_str_t s;
            if (span_record_array_str(it, &off, &s) != 1)
                return NULL;
            p = otlp__open(p, OTLP__TAG(1, OTLP__LEN), 1, &m2);
            *p++ = OTLP__TAG(1, OTLP__LEN);
            p = otlp__vput(p, s.len);
            memcpy(p, s.p, s.len);
            p = otlp__close(m2, 1, p + s.len);
            break;
        }
        case TRACE_ATTR_BOOL_ARRAY:
            *p++ = OTLP__TAG(1, OTLP__LEN);
            *p++ = 2;
            *p++ = OTLP__TAG(2, 0);
            *p++ = span_record_array_bool(it, i);
            break;
        case TRACE_ATTR_INT_ARRAY:
            u = (uint64_t)span_record_array_int(it, i);
            *p++ = OTLP__TAG(1, OTLP__LEN);
            *p++ = (uint8_t)(1 + otlp__vlen(u));
            *p++ = OTLP__TAG(3, 0);
            p = otlp__vput(p, u);
            break;
        default: {
            double d = span_record_array_double(it, i);
            memcpy(&u, &d, 8);
            *p++ = OTLP__TAG(1, OTLP__LEN);
            *p++ = 9;
            p = otlp__fixed64(p, OTLP__TAG(4, OTLP__I64), u);
            break;
        }
        }
    }
    return otlp__close(m, it->count < 16 ? 1 : 2, p);
}

static inline bool otlp__same_key(const span_record_item_t *a, const span_record_item_t *b)
{
    return a->key.len == b->key.len && memcmp(a->key.p, b->key.p, a->key.len) == 0;
}

/* One bit of a 64-bit filter for a key: equal keys get equal bits, so a
 * key whose bit is not yet set is new without comparing it with the others
 * (most spans repeat no key). */
static inline uint64_t otlp__key_bit(const span_record_item_t *it)
{
    size_t n = it->key.len;
    unsigned h = n ? (unsigned)n * 7u + (uint8_t)it->key.p[0] * 3u + (uint8_t)it->key.p[n - 1] : 0u;
    return 1ull << (h & 63u);
}

/* Writes the attribute list made of the items its[i] for i in [from, to)
 * with tag `want` (stopping early at an item of tag `stop1` or `stop2`), as
 * repeated KeyValue field `tag`.  A repeated key keeps its first place and
 * its last value.  slot[] has room for to - from entries.  Returns the
 * new end, NULL on a bad value. */
static uint8_t *otlp__w_attrs(uint8_t *p, uint8_t tag, const span_record_item_t *its, uint32_t from,
                              uint32_t to, uint8_t want, uint8_t stop1, uint8_t stop2, uint32_t *slot)
{
    uint32_t ns = 0;
    uint64_t seen = 0; /* otlp__key_bit of the keys in slot[0..ns) */
    for (uint32_t i = from; i < to; i++) {
        uint8_t t = its[i].tag;
        if (t == stop1 || t == stop2)
            break;
        if (t != want)
            continue;
        uint64_t bit = otlp__key_bit(&its[i]);
        uint32_t j = ns;
        if (seen & bit)
            for (j = 0; j < ns && !otlp__same_key(&its[slot[j]], &its[i]); j++)
                ;
        seen |= bit;
        slot[j] = i; /* j == ns: a new key */
        if (j == ns)
            ns++;
    }
    for (uint32_t j = 0; j < ns; j++) {
        const span_record_item_t *it = &its[slot[j]];
        uint8_t *mk, *mv;
        p = otlp__open(p, tag, 1, &mk);
        p = otlp__bytes(p, OTLP__TAG(1, OTLP__LEN), it->key.p, it->key.len);
        p = otlp__open(p, OTLP__TAG(2, OTLP__LEN), 1, &mv);
        if (!(p = otlp__w_value(p, it)))
            return NULL;
        p = otlp__close(mv, 1, p);
        p = otlp__close(mk, 1, p);
    }
    return p;
}

/* Makes room for `n` items of one span.  Returns 0 or -ENOMEM. */
static int otlp__w_items(otlp_encoder_t *e, size_t n)
{
    if (n <= e->w_items_cap)
        return 0;
    size_t cap = n + n / 2 + 64;
    span_record_item_t *it = realloc(e->w_items, cap * sizeof *it);
    if (!it)
        return -ENOMEM;
    e->w_items = it;
    uint32_t *sl = realloc(e->w_slot, cap * sizeof *sl);
    if (!sl)
        return -ENOMEM;
    e->w_slot = sl;
    e->w_items_cap = cap;
    return 0;
}

/* Reads the items of a resource into e->w_items[base..].  Returns the
 * count, -1 when they do not walk, -ENOMEM. */
static long otlp__w_collect(otlp_encoder_t *e, size_t base, const uint8_t *items, uint32_t len)
{
    /* every item is >= 4 bytes */
    if (otlp__w_items(e, base + len / 4 + 1) != 0)
        return -ENOMEM;
    uint32_t off = 0, n = 0;
    int rc;
    while ((rc = span_record_next(items, len, &off, &e->w_items[base + n])) == 1)
        n++;
    return rc < 0 ? -1 : (long)n;
}

/* Makes room for `more` bytes after out[pos]. */
static int otlp__w_room(otlp_encoder_t *e, size_t pos, size_t more)
{
    if (pos + more <= e->out_cap)
        return 0;
    size_t cap = e->out_cap ? e->out_cap : 64 * 1024;
    while (cap < pos + more)
        cap *= 2;
    uint8_t *p = realloc(e->out, cap);
    if (!p)
        return -ENOMEM;
    e->out = p;
    e->out_cap = cap;
    return 0;
}

/* One Span, field numbers 1..16 in order.  Returns the new end, or NULL
 * when the record does not walk (p is then unchanged in meaning: the
 * caller rolls back). */
static uint8_t *otlp__w_span(otlp_encoder_t *e, uint8_t *p, const span_record_t *r,
                             const span_record_item_t *its, uint32_t n)
{
    uint8_t *ms;
    p = otlp__open(p, OTLP__TAG(2, OTLP__LEN), 2, &ms);
    *p++ = OTLP__TAG(1, OTLP__LEN);
    *p++ = TRACE_ID_SIZE;
    memcpy(p, r->trace_id, TRACE_ID_SIZE);
    p += TRACE_ID_SIZE;
    *p++ = OTLP__TAG(2, OTLP__LEN);
    *p++ = TRACE_SPAN_ID_SIZE;
    memcpy(p, r->span_id, TRACE_SPAN_ID_SIZE);
    p += TRACE_SPAN_ID_SIZE;
    p = otlp__bytes(p, OTLP__TAG(3, OTLP__LEN), r->tracestate.p, r->tracestate.len);
    if ((r->rflags & SPAN_RFLAG_HAS_PARENT) && trace_id_is_valid(r->parent_span_id, TRACE_SPAN_ID_SIZE)) {
        *p++ = OTLP__TAG(4, OTLP__LEN);
        *p++ = TRACE_SPAN_ID_SIZE;
        memcpy(p, r->parent_span_id, TRACE_SPAN_ID_SIZE);
        p += TRACE_SPAN_ID_SIZE;
    }
    p = otlp__bytes(p, OTLP__TAG(5, OTLP__LEN), r->name.p, r->name.len);
    p = otlp__uint(p, OTLP__TAG(6, 0), r->kind); /* record kind = OTLP number */
    if (r->start_ns)
        p = otlp__fixed64(p, OTLP__TAG(7, OTLP__I64), r->start_ns);
    if (r->end_ns)
        p = otlp__fixed64(p, OTLP__TAG(8, OTLP__I64), r->end_ns);
    if (r->n_attrs &&
        !(p = otlp__w_attrs(p, OTLP__TAG(9, OTLP__LEN), its, 0, n, SPAN_ITEM_ATTR, 0, 0, e->w_slot)))
        return NULL;
    p = otlp__uint(p, OTLP__TAG(10, 0), r->dropped_attrs);
    for (uint32_t i = 0; r->n_events && i < n; i++) {
        if (its[i].tag != SPAN_ITEM_EVENT)
            continue;
        uint8_t *m;
        /* an event with attributes is rarely under 128 bytes */
        unsigned g = i + 1 < n && its[i + 1].tag == SPAN_ITEM_EVENT_ATTR ? 2 : 1;
        p = otlp__open(p, OTLP__TAG(11, OTLP__LEN), g, &m);
        if (its[i].time_ns)
            p = otlp__fixed64(p, OTLP__TAG(1, OTLP__I64), its[i].time_ns);
        p = otlp__bytes(p, OTLP__TAG(2, OTLP__LEN), its[i].key.p, its[i].key.len);
        /* its attributes: EVENT_ATTR items up to the next EVENT or LINK */
        if (!(p = otlp__w_attrs(p, OTLP__TAG(3, OTLP__LEN), its, i + 1, n, SPAN_ITEM_EVENT_ATTR,
                                SPAN_ITEM_EVENT, SPAN_ITEM_LINK, e->w_slot)))
            return NULL;
        p = otlp__uint(p, OTLP__TAG(4, 0), its[i].count);
        p = otlp__close(m, g, p);
    }
    p = otlp__uint(p, OTLP__TAG(12, 0), r->dropped_events);
    for (uint32_t i = 0; r->n_links && i < n; i++) {
        if (its[i].tag != SPAN_ITEM_LINK)
            continue;
        uint8_t *m;
        unsigned g = i + 1 < n && its[i + 1].tag == SPAN_ITEM_LINK_ATTR ? 2 : 1;
        p = otlp__open(p, OTLP__TAG(13, OTLP__LEN), g, &m);
        *p++ = OTLP__TAG(1, OTLP__LEN);
        *p++ = TRACE_ID_SIZE;
        memcpy(p, its[i].trace_id, TRACE_ID_SIZE);
        p += TRACE_ID_SIZE;
        *p++ = OTLP__TAG(2, OTLP__LEN);
        *p++ = TRACE_SPAN_ID_SIZE;
        memcpy(p, its[i].span_id, TRACE_SPAN_ID_SIZE);
        p += TRACE_SPAN_ID_SIZE;
        p = otlp__bytes(p, OTLP__TAG(3, OTLP__LEN), its[i].key.p, its[i].key.len);
        if (!(p = otlp__w_attrs(p, OTLP__TAG(4, OTLP__LEN), its, i + 1, n, SPAN_ITEM_LINK_ATTR,
                                SPAN_ITEM_EVENT, SPAN_ITEM_LINK, e->w_slot)))
            return NULL;
        p = otlp__uint(p, OTLP__TAG(5, 0), its[i].count);
        if (its[i].type) { /* W3C trace flags only, fixed32 */
            *p++ = OTLP__TAG(6, OTLP__I32);
            *p++ = its[i].type;
            *p++ = 0;
            *p++ = 0;
            *p++ = 0;
        }
        p = otlp__close(m, g, p);
    }
    p = otlp__uint(p, OTLP__TAG(14, 0), r->dropped_links);
    if (r->status != TRACE_STATUS_UNSET) {
        uint8_t *m;
        p = otlp__open(p, OTLP__TAG(15, OTLP__LEN), 1, &m);
        if (r->status == TRACE_STATUS_ERROR)
            p = otlp__bytes(p, OTLP__TAG(2, OTLP__LEN), r->status_msg.p, r->status_msg.len);
        p = otlp__uint(p, OTLP__TAG(3, 0), r->status);
        p = otlp__close(m, 1, p);
    }
    /* flags = 16, fixed32: tag 16 << 3 | 5 = 133 takes two varint bytes */
    uint32_t fl = (r->trace_flags & 0xffu) | 0x100u | ((r->rflags & SPAN_RFLAG_PARENT_REMOTE) ? 0x200u : 0);
    *p++ = 0x85;
    *p++ = 0x01;
    for (int k = 0; k < 4; k++)
        *p++ = (uint8_t)(fl >> (8 * k));
    return otlp__close(ms, 2, p);
}

/* The Resource message of a lane (field 1 of ResourceSpans), always
 * present, empty when the lane has no valid metadata. */
static long otlp__w_resource(otlp_encoder_t *e, size_t pos, uint32_t lane, otlp_meta_fn meta, void *arg,
                             size_t base)
{
    const void *blob = NULL;
    int len = meta ? meta(arg, lane, &blob) : -ENOENT;
    span_resource_t sr;
    long ni = 0;
    if (len > 0 && span_resource_decode(blob, (size_t)len, &sr) == 0 && sr.n_attrs > 0) {
        if ((ni = otlp__w_collect(e, base, sr.items, sr.items_len)) < 0)
            ni = 0; /* resource_decode walked them: changed under us, send none */
    } else {
        len = 0;
    }
    if (ni == -ENOMEM || otlp__w_room(e, pos, 8u * (size_t)len + 512) != 0)
        return -ENOMEM;
    uint8_t *m, *p = otlp__open(e->out + pos, OTLP__TAG(1, OTLP__LEN), len < 100 ? 1 : 2, &m);
    uint8_t *q = otlp__w_attrs(p, OTLP__TAG(1, OTLP__LEN), e->w_items + base, 0, (uint32_t)ni,
                               SPAN_ITEM_ATTR, 0, 0, e->w_slot);
    if (!q)
        q = p; /* a bad value: the resource goes empty */
    p = otlp__close(m, len < 100 ? 1 : 2, q);
    return (long)(p - e->out);
}

/* Grows one per-record work array to `cap` elements of `elem` bytes; *arr is
 * kept on failure (the encoder's free releases it). */
static int otlp__grow(void **arr, size_t cap, size_t elem)
{
    void *p = realloc(*arr, cap * elem);
    if (!p)
        return -ENOMEM;
    *arr = p;
    return 0;
}

static int otlp__w_batch(otlp_encoder_t *e, size_t n)
{
    if (n <= e->w_cap)
        return 0;
    size_t cap = n < 64 ? 64 : n;
    if (otlp__grow((void **)&e->w_recs, cap, sizeof *e->w_recs) ||
        otlp__grow((void **)&e->w_next, cap, sizeof *e->w_next) ||
        otlp__grow((void **)&e->w_scopes, cap, sizeof *e->w_scopes) ||
        otlp__grow((void **)&e->w_res, cap, sizeof *e->w_res) ||
        otlp__grow((void **)&e->w_ifirst, cap, sizeof *e->w_ifirst) ||
        otlp__grow((void **)&e->w_icount, cap, sizeof *e->w_icount))
        return -ENOMEM;
    e->w_cap = cap;
    return 0;
}

static inline bool otlp__w_scope_is(const otlp__wscope_t *s, uint32_t ri, const span_record_t *r)
{
    return s->res == ri && s->name.len == r->scope_name.len && s->version.len == r->scope_version.len &&
           memcmp(s->name.p, r->scope_name.p, r->scope_name.len) == 0 &&
           memcmp(s->version.p, r->scope_version.p, r->scope_version.len) == 0;
}

long otlp_encode(otlp_encoder_t *e, const ring_record_t *recs, size_t n, otlp_meta_fn meta, void *meta_arg,
                 const uint8_t **out, uint64_t *bad)
{
    *bad = 0;
    if (n > UINT32_MAX - 1 || otlp__w_batch(e, n) != 0)
        return -ENOMEM;
    if (++e->gen == 0) { /* generation wrapped: clear the stamps */
        memset(e->lane_gen, 0, e->lanes_cap * sizeof *e->lane_gen);
        e->gen = 1;
    }
    /* Pass 1: decode (validates) and group, in first-seen order.  The
     * decoding walk keeps every item (w_items), so pass 2 does not walk the
     * records again. */
    span_record_t *rv = e->w_recs;
    otlp__wscope_t *sc = e->w_scopes;
    otlp__wres_t *rs = e->w_res;
    uint32_t nres = 0, nsc = 0, last = OTLP__NONE;
    size_t nitems = 0;
    for (uint32_t i = 0; i < n; i++) {
        span_record_t *r = &rv[i];
        e->w_next[i] = OTLP__NONE;
        /* an item is >= 4 bytes: len / 4 + 1 entries hold any record's */
        uint32_t room = recs[i].len / 4 + 1;
        if (otlp__w_items(e, nitems + room) != 0)
            return -ENOMEM;
        int ni = span_record_decode_items(recs[i].data, recs[i].len, r, e->w_items + nitems, room);
        if (ni < 0) {
            (*bad)++;
            r->items = NULL; /* marks it left out */
            continue;
        }
        e->w_ifirst[i] = (uint32_t)nitems;
        e->w_icount[i] = (uint32_t)ni;
        nitems += (size_t)ni;
        uint32_t lane = recs[i].lane;
        if (otlp__lanes(e, lane) != 0)
            return -ENOMEM;
        if (e->lane_gen[lane] != e->gen) {
            rs[nres] = (otlp__wres_t){.lane = lane, .first = OTLP__NONE, .last = OTLP__NONE};
            e->lane_gen[lane] = e->gen;
            e->lane_res[lane] = nres++;
        }
        uint32_t ri = e->lane_res[lane], si = OTLP__NONE;
        if (last != OTLP__NONE && otlp__w_scope_is(&sc[last], ri, r))
            si = last; /* runs of one scope are common */
        for (uint32_t k = rs[ri].first; si == OTLP__NONE && k != OTLP__NONE; k = sc[k].next)
            if (otlp__w_scope_is(&sc[k], ri, r))
                si = k;
        if (si == OTLP__NONE) {
            si = nsc++;
            sc[si] = (otlp__wscope_t){.name = r->scope_name, .version = r->scope_version, .res = ri,
                                      .first = i, .last = i, .next = OTLP__NONE};
            if (rs[ri].last == OTLP__NONE)
                rs[ri].first = si;
            else
                sc[rs[ri].last].next = si;
            rs[ri].last = si;
        } else {
            e->w_next[sc[si].last] = i;
            sc[si].last = i;
        }
        last = si;
    }
    /* Pass 2: write.  Outer marks are offsets: the buffer may move. */
    size_t pos = 0;
    for (uint32_t ri = 0; ri < nres; ri++) {
        if (otlp__w_room(e, pos, 16) != 0)
            return -ENOMEM;
        uint8_t *m;
        size_t mres = (size_t)(otlp__open(e->out + pos, OTLP__TAG(1, OTLP__LEN), 3, &m) - e->out) - 3;
        long r = otlp__w_resource(e, mres + 3, rs[ri].lane, meta, meta_arg, nitems);
        if (r < 0)
            return -ENOMEM;
        pos = (size_t)r;
        for (uint32_t k = rs[ri].first; k != OTLP__NONE; k = sc[k].next) {
            if (otlp__w_room(e, pos, 1024 + 2u * (sc[k].name.len + sc[k].version.len)) != 0)
                return -ENOMEM;
            uint8_t *ms, *mscope;
            uint8_t *p = otlp__open(e->out + pos, OTLP__TAG(2, OTLP__LEN), 3, &ms);
            size_t mss = (size_t)(ms - e->out);
            p = otlp__open(p, OTLP__TAG(1, OTLP__LEN), 1, &mscope);
            p = otlp__bytes(p, OTLP__TAG(1, OTLP__LEN), sc[k].name.p, sc[k].name.len);
            p = otlp__bytes(p, OTLP__TAG(2, OTLP__LEN), sc[k].version.p, sc[k].version.len);
            p = otlp__close(mscope, 1, p);
            pos = (size_t)(p - e->out);
            for (uint32_t i = sc[k].first; i != OTLP__NONE; i = e->w_next[i]) {
                if (otlp__w_room(e, pos, 8u * recs[i].len + 512) != 0)
                    return -ENOMEM;
                uint8_t *q = otlp__w_span(e, e->out + pos, &rv[i], e->w_items + e->w_ifirst[i],
                                          e->w_icount[i]);
                if (!q) { /* changed under us after decode: left out */
                    (*bad)++;
                    continue;
                }
                pos = (size_t)(q - e->out);
            }
            if (otlp__w_room(e, pos, 64) != 0)
                return -ENOMEM;
            p = otlp__bytes(e->out + pos, OTLP__TAG(3, OTLP__LEN), EXP_SCHEMA_URL, sizeof EXP_SCHEMA_URL - 1);
            pos = (size_t)(otlp__close(e->out + mss, 3, p) - e->out);
        }
        pos = (size_t)(otlp__close(e->out + mres, 3, e->out + pos) - e->out);
    }
    if (otlp__w_room(e, pos, 1) != 0)
        return -ENOMEM;
    *out = e->out;
    return (long)pos;
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
