/*
 * core/span_record.c - the span record (the ring payload) and the producer
 * resource blob: item writers and decoders.
 *
 * The decoders run in the exporter on shared memory that any process on the
 * host may have scribbled on: every length is checked against the bytes
 * left before it is used, every enum against its range, counts against the
 * header; bad input returns -1 and never reads out of bounds.  Layout
 * byte by byte: docs/SPAN_RECORD.md.
 */
#include "span_record.h"

#include <errno.h>

static inline uint16_t rd16(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}
static inline uint32_t rd32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static inline uint64_t rd64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* ------------------------------------------------------------------ write */

size_t span_record__utf8_cut(const char *s, size_t n, uint32_t limit)
{
    if (n <= limit)
        return n; /* bytes >= characters */
    uint32_t chars = 0;
    for (size_t i = 0; i < n; i++) {
        if (((unsigned char)s[i] & 0xc0) != 0x80) { /* a character starts here */
            if (chars == limit)
                return i;
            chars++;
        }
    }
    return n;
}

static size_t attr_value_size(const trace_attr_t *a, uint32_t vlimit)
{
    size_t v = 0;
    switch (a->type) {
    case TRACE_ATTR_STRING:
        return span_record__utf8_cut(a->v.s.p, a->v.s.len, vlimit);
    case TRACE_ATTR_BOOL:
        return 1;
    case TRACE_ATTR_INT:
    case TRACE_ATTR_DOUBLE:
        return 8;
    case TRACE_ATTR_STRING_ARRAY:
        for (size_t i = 0; i < a->count; i++)
            v += 4 + span_record__utf8_cut(a->v.sa[i].p, a->v.sa[i].len, vlimit);
        return v;
    case TRACE_ATTR_BOOL_ARRAY:
        return a->count;
    case TRACE_ATTR_INT_ARRAY:
    case TRACE_ATTR_DOUBLE_ARRAY:
        return a->count * 8;
    }
    return SIZE_MAX; /* unknown type: refused by the caller */
}

size_t span_record__attr_size(const trace_attr_t *a, uint32_t vlimit)
{
    if (a->key_len > 0xffff)
        return 0;
    size_t v = attr_value_size(a, vlimit);
    if (v > 0xffffffffu - 8 || (a->type >= TRACE_ATTR_STRING_ARRAY && a->count > 0xffffffu))
        return 0;
    return 8 + a->key_len + v;
}

size_t span_record__put_attr(uint8_t *p, uint8_t tag, const trace_attr_t *a, uint32_t vlimit)
{
    size_t vlen = attr_value_size(a, vlimit);
    uint8_t *q = p + 8 + a->key_len;
    p[0] = tag;
    p[1] = (uint8_t)a->type;
    trace__le16(p + 2, (uint16_t)a->key_len);
    trace__le32(p + 4, (uint32_t)vlen);
    memcpy(p + 8, a->key, a->key_len);
    switch (a->type) {
    case TRACE_ATTR_STRING:
        memcpy(q, a->v.s.p, vlen);
        break;
    case TRACE_ATTR_BOOL:
        q[0] = a->v.b ? 1 : 0;
        break;
    case TRACE_ATTR_INT:
        memcpy(q, &a->v.i, 8);
        break;
    case TRACE_ATTR_DOUBLE:
        memcpy(q, &a->v.d, 8);
        break;
    case TRACE_ATTR_STRING_ARRAY:
        for (size_t i = 0; i < a->count; i++) {
            size_t n = span_record__utf8_cut(a->v.sa[i].p, a->v.sa[i].len, vlimit);
            trace__le32(q, (uint32_t)n);
            memcpy(q + 4, a->v.sa[i].p, n);
            q += 4 + n;
        }
        break;
    case TRACE_ATTR_BOOL_ARRAY:
        for (size_t i = 0; i < a->count; i++)
            q[i] = a->v.ba[i] ? 1 : 0;
        break;
    case TRACE_ATTR_INT_ARRAY:
        memcpy(q, a->v.ia, a->count * 8);
        break;
    case TRACE_ATTR_DOUBLE_ARRAY:
        memcpy(q, a->v.da, a->count * 8);
        break;
    }
    return 8 + a->key_len + vlen;
}

/* ------------------------------------------------------------------- read */

/* Checks an attribute value of `type` and returns its element count, -1. */
static int64_t attr_value_check(uint8_t type, const uint8_t *v, uint32_t n)
{
    switch (type) {
    case TRACE_ATTR_STRING:
        return 1;
    case TRACE_ATTR_BOOL:
        return (n == 1 && v[0] <= 1) ? 1 : -1;
    case TRACE_ATTR_INT:
    case TRACE_ATTR_DOUBLE:
        return n == 8 ? 1 : -1;
    case TRACE_ATTR_STRING_ARRAY: {
        uint32_t off = 0;
        int64_t cnt = 0;
        while (off < n) {
            if (n - off < 4)
                return -1;
            uint32_t l = rd32(v + off);
            if (l > n - off - 4)
                return -1;
            off += 4 + l;
            cnt++;
        }
        return cnt;
    }
    case TRACE_ATTR_BOOL_ARRAY:
        for (uint32_t i = 0; i < n; i++)
            if (v[i] > 1)
                return -1;
        return n;
    case TRACE_ATTR_INT_ARRAY:
    case TRACE_ATTR_DOUBLE_ARRAY:
        return (n % 8 == 0) ? (int64_t)(n / 8) : -1;
    default:
        return -1;
    }
}

int span_record_next(const uint8_t *items, uint32_t items_len, uint32_t *off,
                     span_record_item_t *it)
{
    uint32_t o = *off;
    if (o >= items_len)
        return o == items_len ? 0 : -1;
    const uint8_t *p = items + o;
    uint32_t left = items_len - o;
    if (left < 4)
        return -1;
    memset(it, 0, sizeof *it);
    it->tag = p[0];
    uint32_t size;
    switch (p[0]) {
    case SPAN_ITEM_NAME:
    case SPAN_ITEM_TRACESTATE:
    case SPAN_ITEM_STATUS_MSG:
        if (p[1] != 0)
            return -1;
        size = 4u + rd16(p + 2);
        if (size > left)
            return -1;
        it->key.p = (const char *)p + 4;
        it->key.len = rd16(p + 2);
        break;
    case SPAN_ITEM_SCOPE: /* tag, name_len u8, version_len u8, 0 */
        if (p[3] != 0)
            return -1;
        size = 4u + p[1] + p[2];
        if (size > left)
            return -1;
        it->key.p = (const char *)p + 4;
        it->key.len = p[1];
        it->value = p + 4 + p[1];
        it->value_len = p[2];
        break;
    case SPAN_ITEM_ATTR:
    case SPAN_ITEM_EVENT_ATTR:
    case SPAN_ITEM_LINK_ATTR: {
        if (left < 8)
            return -1;
        uint32_t kl = rd16(p + 2), vl = rd32(p + 4);
        if (kl > left - 8 || vl > left - 8 - kl)
            return -1;
        size = 8 + kl + vl;
        int64_t cnt = attr_value_check(p[1], p + 8 + kl, vl);
        if (cnt < 0)
            return -1;
        it->type = p[1];
        it->key.p = (const char *)p + 8;
        it->key.len = kl;
        it->value = p + 8 + kl;
        it->value_len = vl;
        it->count = (uint32_t)cnt;
        break;
    }
    case SPAN_ITEM_EVENT:
        if (left < 16 || p[1] != 0)
            return -1;
        size = 16u + rd16(p + 2);
        if (size > left)
            return -1;
        it->key.p = (const char *)p + 16;
        it->key.len = rd16(p + 2);
        it->count = rd32(p + 4);
        it->time_ns = rd64(p + 8);
        break;
    case SPAN_ITEM_LINK:
        if (left < 32)
            return -1;
        size = 32u + rd16(p + 2);
        if (size > left)
            return -1;
        it->type = p[1];
        it->key.p = (const char *)p + 32;
        it->key.len = rd16(p + 2);
        it->count = rd32(p + 4);
        it->trace_id = p + 8;
        it->span_id = p + 24;
        break;
    default:
        return -1; /* unknown item: the record is from another layout */
    }
    *off = o + size;
    return 1;
}

int span_record_decode(const void *buf, size_t len, span_record_t *out)
{
    return span_record_decode_items(buf, len, out, NULL, 0) < 0 ? -1 : 0;
}

int span_record_decode_items(const void *buf, size_t len, span_record_t *out,
                             span_record_item_t *items, uint32_t cap)
{
    const uint8_t *p = buf;
    if (p == NULL || len < SPAN_RECORD_HEADER_SIZE)
        return -1;
    memset(out, 0, sizeof *out);
    out->version = p[0];
    out->kind = p[1];
    out->status = p[2];
    out->rflags = p[3];
    if (out->version != SPAN_RECORD_VERSION || out->kind > TRACE_KIND_CONSUMER ||
        out->status > TRACE_STATUS_ERROR ||
        (out->rflags & ~(SPAN_RFLAG_PARENT_REMOTE | SPAN_RFLAG_TRUNCATED | SPAN_RFLAG_HAS_PARENT)))
        return -1;
    out->trace_flags = rd32(p + 4);
    memcpy(out->trace_id, p + 8, 16);
    memcpy(out->span_id, p + 24, 8);
    memcpy(out->parent_span_id, p + 32, 8);
    out->start_ns = rd64(p + 40);
    out->end_ns = rd64(p + 48);
    out->dropped_attrs = rd32(p + 56);
    out->dropped_events = rd32(p + 60);
    out->dropped_links = rd32(p + 64);
    out->n_attrs = rd16(p + 68);
    out->n_events = rd16(p + 70);
    out->n_links = rd16(p + 72);
    uint32_t body = rd32(p + 76);
    if (rd16(p + 74) != 0 || body != len - SPAN_RECORD_HEADER_SIZE)
        return -1;
    if (!trace_id_is_valid(out->trace_id, 16) || !trace_id_is_valid(out->span_id, 8))
        return -1;
    out->items = p + SPAN_RECORD_HEADER_SIZE;
    out->items_len = body;

    /* Walk every item once: validates them all and checks the counts. */
    uint32_t off = 0, na = 0, ne = 0, nl = 0, ni = 0;
    uint8_t owner = 0; /* SPAN_ITEM_EVENT or _LINK: who the sub-attributes belong to */
    bool named = false;
    span_record_item_t one;
    int rc;
    for (;;) {
        if (items != NULL && ni == cap)
            return -1; /* caller's array too small (cap below items_len / 4) */
        span_record_item_t *itp = items != NULL ? &items[ni] : &one;
        if ((rc = span_record_next(out->items, out->items_len, &off, itp)) != 1)
            break;
        ni++;
        switch (itp->tag) {
        case SPAN_ITEM_NAME:
            out->name = itp->key;
            named = true;
            break;
        case SPAN_ITEM_SCOPE:
            out->scope_name = itp->key;
            out->scope_version.p = (const char *)itp->value;
            out->scope_version.len = itp->value_len;
            break;
        case SPAN_ITEM_TRACESTATE:
            out->tracestate = itp->key;
            break;
        case SPAN_ITEM_STATUS_MSG:
            out->status_msg = itp->key;
            break;
        case SPAN_ITEM_ATTR:
            na++;
            break;
        case SPAN_ITEM_EVENT_ATTR:
            if (owner != SPAN_ITEM_EVENT)
                return -1;
            break;
        case SPAN_ITEM_LINK_ATTR:
            if (owner != SPAN_ITEM_LINK)
                return -1;
            break;
        case SPAN_ITEM_EVENT:
            owner = SPAN_ITEM_EVENT;
            ne++;
            break;
        case SPAN_ITEM_LINK:
            if (!trace_id_is_valid(itp->trace_id, 16) || !trace_id_is_valid(itp->span_id, 8))
                return -1;
            owner = SPAN_ITEM_LINK;
            nl++;
            break;
        }
    }
    if (rc < 0 || !named || na != out->n_attrs || ne != out->n_events || nl != out->n_links)
        return -1;
    return (int)ni;
}

int64_t span_record_array_int(const span_record_item_t *it, uint32_t i)
{
    int64_t v;
    memcpy(&v, it->value + (size_t)i * 8, 8);
    return v;
}

double span_record_array_double(const span_record_item_t *it, uint32_t i)
{
    double v;
    memcpy(&v, it->value + (size_t)i * 8, 8);
    return v;
}

bool span_record_array_bool(const span_record_item_t *it, uint32_t i) { return it->value[i] != 0; }

int span_record_array_str(const span_record_item_t *it, uint32_t *off, trace_str_t *out)
{
    uint32_t o = *off, n = it->value_len;
    if (o == n)
        return 0;
    if (o > n || n - o < 4)
        return -1;
    uint32_t l = rd32(it->value + o);
    if (l > n - o - 4)
        return -1;
    out->p = (const char *)it->value + o + 4;
    out->len = l;
    *off = o + 4 + l;
    return 1;
}

/* --------------------------------------------------------------- resource */

int span_resource_encode(const trace_attr_t *attrs, size_t n, uint8_t *out, size_t cap)
{
    if (cap < 4)
        return -ENOSPC;
    size_t o = 4;
    uint16_t cnt = 0;
    for (size_t i = 0; i < n && cnt < 0xffff; i++) {
        size_t need = span_record__attr_size(&attrs[i], TRACE_LIMIT_UNLIMITED);
        if (need == 0 || need > cap - o)
            continue; /* does not fit: left out */
        o += span_record__put_attr(out + o, SPAN_ITEM_ATTR, &attrs[i], TRACE_LIMIT_UNLIMITED);
        cnt++;
    }
    out[0] = SPAN_RESOURCE_VERSION;
    out[1] = 0;
    trace__le16(out + 2, cnt);
    return (int)o;
}

int span_resource_decode(const void *buf, size_t len, span_resource_t *out)
{
    const uint8_t *p = buf;
    if (p == NULL || len < 4 || len > 0xffffffffu || p[0] != SPAN_RESOURCE_VERSION || p[1] != 0)
        return -1;
    out->n_attrs = rd16(p + 2);
    out->items = p + 4;
    out->items_len = (uint32_t)(len - 4);
    uint32_t off = 0, na = 0;
    span_record_item_t it;
    int rc;
    while ((rc = span_record_next(out->items, out->items_len, &off, &it)) == 1) {
        if (it.tag != SPAN_ITEM_ATTR)
            return -1;
        na++;
    }
    return (rc < 0 || na != out->n_attrs) ? -1 : 0;
}
