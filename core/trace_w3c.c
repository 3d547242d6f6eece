/*
 * core/trace_w3c.c - W3C Trace Context (traceparent, tracestate) and W3C
 * Baggage codecs.  Parsers never allocate, never read past `len`, and treat
 * anything off-grammar as invalid (-1): the caller then ignores the header
 * and starts a new trace, as Trace Context section 3 asks.
 *
 * References: https://www.w3.org/TR/trace-context/ (sections 3.2 and 3.3,
 * version handling in 3.2.4 and 4.3) and https://www.w3.org/TR/baggage/
 * (grammar in 3.3.1, limits in 3.3.2: 64 members, 8192 bytes).
 */
#include "core.h"
#include "trace_w3c.h"

#include <errno.h>

static inline bool is_ows(char c) { return c == ' ' || c == '\t'; }
static inline bool is_lcalpha(char c) { return c >= 'a' && c <= 'z'; }
static inline bool is_digit(char c) { return c >= '0' && c <= '9'; }

static void trim_ows(const char **s, size_t *len)
{
    while (*len && is_ows(**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len && is_ows((*s)[*len - 1]))
        (*len)--;
}

/* ------------------------------------------------------------ traceparent */

int trace_w3c_traceparent_parse(const char *s, size_t len, trace_context_t *out)
{
    uint8_t ver, flags;
    trace_context_t c;

    trim_ows(&s, &len);
    if (len < TRACE_TRACEPARENT_LEN)
        return -1;
    if (trace_id_unhex(s, 1, &ver) != 0 || ver == 0xff || s[2] != '-')
        return -1;
    /* Version 00 is exactly 55 chars.  A higher version may append fields,
     * which must start with '-' (3.2.4: parse the known prefix, ignore the rest). */
    if (ver == 0 && len != TRACE_TRACEPARENT_LEN)
        return -1;
    if (len > TRACE_TRACEPARENT_LEN && s[TRACE_TRACEPARENT_LEN] != '-')
        return -1;
    if (trace_id_unhex(s + 3, 16, c.trace_id) != 0 || s[35] != '-' ||
        trace_id_unhex(s + 36, 8, c.span_id) != 0 || s[52] != '-' ||
        trace_id_unhex(s + 53, 1, &flags) != 0)
        return -1;
    if (!trace_id_is_valid(c.trace_id, TRACE_ID_SIZE) ||
        !trace_id_is_valid(c.span_id, TRACE_SPAN_ID_SIZE))
        return -1;
    c.flags = flags;
    c.is_remote = true;
    c.tracestate = NULL;
    c.tracestate_len = 0;
    *out = c;
    return 0;
}

int trace_w3c_traceparent_format(const trace_context_t *c, char *out)
{
    if (!trace_id_is_valid(c->trace_id, TRACE_ID_SIZE) ||
        !trace_id_is_valid(c->span_id, TRACE_SPAN_ID_SIZE))
        return -EINVAL;
    out[0] = '0';
    out[1] = '0';
    out[2] = '-';
    trace_id_hex(c->trace_id, 16, out + 3);
    out[35] = '-';
    trace_id_hex(c->span_id, 8, out + 36);
    out[52] = '-';
    trace_id_hex(&c->flags, 1, out + 53);
    out[55] = '\0';
    return (int)TRACE_TRACEPARENT_LEN;
}

/* ------------------------------------------------------------- tracestate */

static inline bool ts_keychar(char c)
{
    return is_lcalpha(c) || is_digit(c) || c == '_' || c == '-' || c == '*' || c == '/';
}

bool trace_w3c__ts_key_ok(const char *k, size_t n)
{
    const char *at = memchr(k, '@', n);
    if (at == NULL) {
        /* simple-key = lcalpha 0*255( lcalpha / DIGIT / "_" / "-"/ "*" / "/" ) */
        if (n == 0 || n > 256 || !is_lcalpha(k[0]))
            return false;
        for (size_t i = 1; i < n; i++)
            if (!ts_keychar(k[i]))
                return false;
        return true;
    }
    /* multi-tenant-key = tenant-id "@" system-id
     * tenant-id = ( lcalpha / DIGIT ) 0*240( keychar )
     * system-id = lcalpha 0*13( keychar ) */
    size_t tn = (size_t)(at - k), sn = n - tn - 1;
    if (tn == 0 || tn > 241 || sn == 0 || sn > 14)
        return false;
    if (!is_lcalpha(k[0]) && !is_digit(k[0]))
        return false;
    for (size_t i = 1; i < tn; i++)
        if (!ts_keychar(k[i]))
            return false;
    if (!is_lcalpha(at[1]))
        return false;
    for (size_t i = 1; i < sn; i++)
        if (!ts_keychar(at[1 + i]))
            return false;
    return true;
}

/* nblk-chr = %x21-2B / %x2D-3C / %x3E-7E ; chr = %x20 / nblk-chr */
static inline bool ts_nblk(char c)
{
    unsigned char u = (unsigned char)c;
    return u >= 0x21 && u <= 0x7e && u != ',' && u != '=';
}

bool trace_w3c__ts_value_ok(const char *v, size_t n)
{
    if (n == 0 || n > 256 || !ts_nblk(v[n - 1]))
        return false;
    for (size_t i = 0; i + 1 < n; i++)
        if (v[i] != ' ' && !ts_nblk(v[i]))
            return false;
    return true;
}

typedef struct st_ts_member_t {
    const char *p;
    uint16_t len;  /* whole "key=value" */
    uint16_t klen; /* key part */
} ts_member_t;

/* Splits and validates; returns the member count or -1. */
static int ts_split(const char *s, size_t len, ts_member_t *m)
{
    int n = 0;
    size_t i = 0;
    while (i <= len) {
        const char *comma = memchr(s + i, ',', len - i);
        size_t end = comma ? (size_t)(comma - s) : len;
        const char *p = s + i;
        size_t plen = end - i;
        trim_ows(&p, &plen);
        if (plen > 0) { /* empty members are allowed and skipped (3.3.1.1) */
            const char *eq = memchr(p, '=', plen);
            if (eq == NULL)
                return -1;
            size_t klen = (size_t)(eq - p);
            if (!trace_w3c__ts_key_ok(p, klen) ||
                !trace_w3c__ts_value_ok(eq + 1, plen - klen - 1))
                return -1;
            if (n == (int)TRACE_TRACESTATE_MEMBERS_MAX)
                return -1; /* more than 32 members: invalid */
            for (int j = 0; j < n; j++)
                if (m[j].klen == klen && memcmp(m[j].p, p, klen) == 0)
                    return -1; /* duplicate key */
            m[n].p = p;
            m[n].len = (uint16_t)plen;
            m[n].klen = (uint16_t)klen;
            n++;
        }
        if (comma == NULL)
            break;
        i = end + 1;
    }
    return n;
}

/* Joins members into out, truncating per 3.3.1.5 when over cap: members
 * over 128 bytes go first (rightmost first), then from the right. */
static int ts_join(ts_member_t *m, int n, char *out, size_t cap)
{
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += m[i].len + (i ? 1u : 0u);
    while (n > 0 && total > cap) {
        int victim = n - 1;
        for (int i = n - 1; i >= 0; i--)
            if (m[i].len > 128) {
                victim = i;
                break;
            }
        total -= m[victim].len + (n > 1 ? 1u : 0u);
        memmove(&m[victim], &m[victim + 1], (size_t)(n - victim - 1) * sizeof *m);
        n--;
    }
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        if (i)
            out[o++] = ',';
        memmove(out + o, m[i].p, m[i].len);
        o += m[i].len;
    }
    return (int)o;
}

int trace_w3c_tracestate_parse(const char *s, size_t len, char *out, size_t cap)
{
    ts_member_t m[TRACE_TRACESTATE_MEMBERS_MAX];
    int n = ts_split(s, len, m);
    if (n < 0)
        return -1;
    /* members point into s; when out overlaps s (in-place), join moves
     * left-to-right only toward lower addresses, so memmove keeps it safe */
    return ts_join(m, n, out, cap);
}

int trace_w3c_tracestate_set(const char *ts, size_t tslen, const char *key, size_t klen,
                             const char *val, size_t vlen, char *out, size_t cap)
{
    ts_member_t m[TRACE_TRACESTATE_MEMBERS_MAX];
    int n;
    if (!trace_w3c__ts_key_ok(key, klen) || !trace_w3c__ts_value_ok(val, vlen))
        return -1;
    if (klen + 1 + vlen > cap)
        return -ENOSPC;
    n = ts_split(ts, tslen, m);
    if (n < 0)
        n = 0; /* an invalid old state is dropped (3.3.1.1) */
    int k = 0;
    for (int i = 0; i < n; i++)
        if (!(m[i].klen == klen && memcmp(m[i].p, key, klen) == 0))
            m[k++] = m[i];
    n = k < (int)TRACE_TRACESTATE_MEMBERS_MAX ? k : (int)TRACE_TRACESTATE_MEMBERS_MAX - 1;
    /* Join the old members after room for ours; then write ours in front.
     * The old members may live in out itself, so join into a scratch copy. */
    char tmp[TRACE_TRACESTATE_MAX * 2];
    size_t head = klen + 1 + vlen;
    size_t room = cap - head > sizeof tmp ? sizeof tmp : cap - head;
    int rest = ts_join(m, n, tmp, room > 0 ? room - (n > 0 ? 1 : 0) : 0);
    if (rest < 0)
        return -1;
    memcpy(out, key, klen);
    out[klen] = '=';
    memcpy(out + klen + 1, val, vlen);
    size_t o = head;
    if (rest > 0) {
        out[o++] = ',';
        memcpy(out + o, tmp, (size_t)rest);
        o += (size_t)rest;
    }
    return (int)o;
}

int trace_w3c_tracestate_get(const char *ts, size_t tslen, const char *key, size_t klen,
                             const char **val, size_t *vlen)
{
    ts_member_t m[TRACE_TRACESTATE_MEMBERS_MAX];
    int n = ts_split(ts, tslen, m);
    for (int i = 0; i < n; i++)
        if (m[i].klen == klen && memcmp(m[i].p, key, klen) == 0) {
            *val = m[i].p + klen + 1;
            *vlen = m[i].len - klen - 1u;
            return 0;
        }
    return -ENOENT;
}

/* ---------------------------------------------------------------- baggage */

/* token (RFC 9110): tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" /
 * "-" / "." / "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA */
static inline bool is_tchar(char c)
{
    if (is_lcalpha(c) || is_digit(c) || (c >= 'A' && c <= 'Z'))
        return true;
    return memchr("!#$%&'*+-.^_`|~", c, 15) != NULL && c != '\0';
}

static bool token_ok(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!is_tchar(s[i]))
            return false;
    return true;
}

/* baggage-octet = %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E */
static inline bool is_bagoctet(char c)
{
    unsigned char u = (unsigned char)c;
    return u >= 0x21 && u <= 0x7e && u != '"' && u != ',' && u != ';' && u != '\\';
}

static inline int hexval(char c)
{
    if (is_digit(c))
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decodes a value into out (room >= n).  Returns the length or -1. */
static int pct_decode(const char *v, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_bagoctet(v[i]))
            return -1;
        if (v[i] == '%') {
            int hi, lo;
            if (i + 2 >= n)
                return -1;
            hi = hexval(v[i + 1]);
            lo = hexval(v[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            out[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            out[o++] = v[i];
        }
    }
    return (int)o;
}

/* property = key OWS "=" OWS value / key OWS, properties split by ';' */
static bool props_ok(const char *p, size_t n)
{
    size_t i = 0;
    while (i <= n) {
        const char *semi = memchr(p + i, ';', n - i);
        size_t end = semi ? (size_t)(semi - p) : n;
        const char *q = p + i;
        size_t qn = end - i;
        trim_ows(&q, &qn);
        const char *eq = memchr(q, '=', qn);
        const char *k = q, *v = NULL;
        size_t kn = qn, vn = 0;
        if (eq) {
            kn = (size_t)(eq - q);
            v = eq + 1;
            vn = qn - kn - 1;
            trim_ows(&k, &kn);
            trim_ows(&v, &vn);
        }
        if (!token_ok(k, kn))
            return false;
        for (size_t j = 0; j < vn; j++)
            if (!is_bagoctet(v[j]))
                return false;
        if (semi == NULL)
            break;
        i = end + 1;
    }
    return true;
}

int trace_w3c_baggage_parse(const char *s, size_t len, trace_baggage_t *b)
{
    b->count = 0;
    b->_store_len = 0;
    trim_ows(&s, &len);
    if (len == 0)
        return 0;
    size_t i = 0;
    while (i <= len) {
        const char *comma = memchr(s + i, ',', len - i);
        size_t end = comma ? (size_t)(comma - s) : len;
        const char *p = s + i;
        size_t plen = end - i;
        trim_ows(&p, &plen);
        const char *semi = memchr(p, ';', plen);
        size_t kvlen = semi ? (size_t)(semi - p) : plen;
        const char *eq = memchr(p, '=', kvlen);
        if (eq == NULL)
            goto bad;
        const char *k = p, *v = eq + 1;
        size_t kn = (size_t)(eq - p), vn = kvlen - kn - 1;
        trim_ows(&k, &kn);
        trim_ows(&v, &vn);
        if (!token_ok(k, kn) || kn > 0xffff)
            goto bad;
        const char *pr = NULL;
        size_t prn = 0;
        if (semi) {
            pr = semi + 1;
            prn = plen - kvlen - 1;
            trim_ows(&pr, &prn);
            if (!props_ok(pr, prn))
                goto bad;
        }
        /* Limits (3.3.2): members past 64, or ending past 8192 bytes, go. */
        bool keep = b->count < TRACE_BAGGAGE_MEMBERS_MAX && end <= TRACE_BAGGAGE_BYTES_MAX;
        if (keep) {
            int dn = pct_decode(v, vn, b->_store + b->_store_len);
            if (dn < 0)
                goto bad;
            trace_baggage_member_t *m = &b->m[b->count++];
            m->key = k;
            m->key_len = (uint16_t)kn;
            m->value = b->_store + b->_store_len;
            m->value_len = (uint16_t)dn;
            m->props = pr;
            m->props_len = (uint16_t)prn;
            b->_store_len += (uint32_t)dn;
        } else {
            for (size_t j = 0; j < vn; j++)
                if (!is_bagoctet(v[j]))
                    goto bad;
        }
        if (comma == NULL)
            break;
        i = end + 1;
    }
    return (int)b->count;
bad:
    b->count = 0;
    b->_store_len = 0;
    return -1;
}

int trace_w3c_baggage_set(trace_baggage_t *b, const char *key, size_t klen, const char *val,
                          size_t vlen, const char *props, size_t plen)
{
    if (!token_ok(key, klen) || klen > 0xffff || plen > 0xffff || (plen && !props_ok(props, plen)))
        return -1;
    uint32_t idx = b->count;
    for (uint32_t i = 0; i < b->count; i++)
        if (b->m[i].key_len == klen && memcmp(b->m[i].key, key, klen) == 0)
            idx = i;
    if (idx == b->count && b->count >= TRACE_BAGGAGE_MEMBERS_MAX)
        return -ENOSPC;
    if (vlen > sizeof b->_store - b->_store_len)
        return -ENOSPC;
    memcpy(b->_store + b->_store_len, val, vlen);
    trace_baggage_member_t *m = &b->m[idx];
    m->key = key;
    m->key_len = (uint16_t)klen;
    m->value = b->_store + b->_store_len;
    m->value_len = (uint16_t)vlen;
    m->props = props;
    m->props_len = (uint16_t)plen;
    b->_store_len += (uint32_t)vlen;
    if (idx == b->count)
        b->count++;
    return 0;
}

int trace_w3c_baggage_format(const trace_baggage_t *b, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t limit = cap < TRACE_BAGGAGE_BYTES_MAX ? cap : TRACE_BAGGAGE_BYTES_MAX;
    size_t o = 0;
    for (uint32_t i = 0; i < b->count; i++) {
        const trace_baggage_member_t *m = &b->m[i];
        size_t need = (o ? 1u : 0u) + m->key_len + 1 + (m->props_len ? 1u + m->props_len : 0u);
        for (size_t j = 0; j < m->value_len; j++)
            need += (is_bagoctet(m->value[j]) && m->value[j] != '%') ? 1 : 3;
        if (o + need > limit)
            continue; /* dropped: would pass the limit (3.3.2) */
        if (o)
            out[o++] = ',';
        memcpy(out + o, m->key, m->key_len);
        o += m->key_len;
        out[o++] = '=';
        for (size_t j = 0; j < m->value_len; j++) {
            char c = m->value[j];
            if (is_bagoctet(c) && c != '%') {
                out[o++] = c;
            } else {
                out[o++] = '%';
                out[o++] = hex[(unsigned char)c >> 4];
                out[o++] = hex[(unsigned char)c & 15];
            }
        }
        if (m->props_len) {
            out[o++] = ';';
            memcpy(out + o, m->props, m->props_len);
            o += m->props_len;
        }
    }
    if (o < cap)
        out[o] = '\0';
    return (int)o;
}
