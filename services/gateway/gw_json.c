/*
 * services/gateway/gw_json.c - JSON helpers beside jansson: the raw text of
 * a member (so `amount` becomes integer cents exactly, never through a
 * double) and the {"error": ...} body.  Pure functions, no I/O.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "gateway.h"

/* Finds the raw text of top-level member `key` in a JSON object that
 * jansson already accepted (so the syntax is known good; only escapes in
 * member names need care).  Returns the value's start and length, or NULL. */
static const char *gw_json_skip_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}
static const char *gw_json_skip_string(const char *p, const char *e)
{
    p++; /* opening quote */
    while (p < e && *p != '"')
        p += (*p == '\\') ? 2 : 1;
    return p < e ? p + 1 : e;
}
static const char *gw_json_skip_value(const char *p, const char *e)
{
    if (p < e && *p == '"')
        return gw_json_skip_string(p, e);
    int depth = 0;
    while (p < e) {
        char c = *p;
        if (c == '"') {
            p = gw_json_skip_string(p, e);
            continue;
        }
        if (c == '{' || c == '[')
            depth++;
        else if (c == '}' || c == ']') {
            if (depth == 0)
                return p;
            depth--;
            if (depth == 0)
                return p + 1;
        } else if (c == ',' && depth == 0)
            return p;
        p++;
    }
    return p;
}
const char *gw_json_member_raw(const char *body, size_t len, const char *key, size_t *vlen)
{
    const char *p = body, *e = body + len;
    p = gw_json_skip_ws(p, e);
    if (p >= e || *p != '{')
        return NULL;
    p++;
    size_t klen = strlen(key);
    for (;;) {
        p = gw_json_skip_ws(p, e);
        if (p >= e || *p != '"')
            return NULL;
        /* decode the member name (escapes: \uXXXX below 0x80 and the simple ones) */
        char name[72];
        size_t n = 0;
        bool fits = true;
        const char *q = p + 1;
        while (q < e && *q != '"') {
            char c = *q++;
            if (c == '\\' && q < e) {
                char x = *q++;
                if (x == 'u' && e - q >= 4) {
                    char hex[5] = {q[0], q[1], q[2], q[3], 0};
                    long v = strtol(hex, NULL, 16);
                    q += 4;
                    c = v < 0x80 ? (char)v : '\x01';
                } else {
                    c = x == 'n' ? '\n' : x == 't' ? '\t' : x == 'r' ? '\r' : x == 'b' ? '\b'
                        : x == 'f' ? '\f' : x;
                }
            }
            if (n < sizeof name)
                name[n++] = c;
            else
                fits = false;
        }
        p = q < e ? q + 1 : e;
        p = gw_json_skip_ws(p, e);
        if (p >= e || *p != ':')
            return NULL;
        p = gw_json_skip_ws(p + 1, e);
        const char *v = p;
        p = gw_json_skip_value(p, e);
        if (fits && n == klen && memcmp(name, key, klen) == 0) {
            const char *ve = p;
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t' || ve[-1] == '\n' || ve[-1] == '\r'))
                ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        p = gw_json_skip_ws(p, e);
        if (p >= e || *p != ',')
            return NULL;
        p++;
    }
}

/* "99.99" -> 9999: a JSON number with at most two decimals, > 0, no
 * exponent, integer part of at most 13 digits.  Exact: no floating point.
 * Returns 0, or -1 with the reason. */
int gw_parse_cents(const char *s, size_t n, int64_t *out, const char **why)
{
    size_t i = 0;
    if (n > 0 && s[0] == '-') {
        *why = "amount must be > 0";
        return -1;
    }
    int64_t v = 0;
    size_t ip = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        v = v * 10 + (s[i] - '0');
        i++;
        if (++ip > 13) {
            *why = "amount is too large";
            return -1;
        }
    }
    if (ip == 0) {
        *why = "amount must be a number";
        return -1;
    }
    int fd = 0;
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            if (++fd > 2) {
                *why = "amount must have at most two decimal places";
                return -1;
            }
            v = v * 10 + (s[i] - '0');
            i++;
        }
    }
    if (i != n) {
        *why = "amount must be a plain decimal number (no exponent)";
        return -1;
    }
    for (; fd < 2; fd++)
        v *= 10;
    if (v <= 0) {
        *why = "amount must be > 0";
        return -1;
    }
    *out = v;
    return 0;
}

/* {"error": msg} with proper escaping. */
char *gw_error_json(const char *msg, size_t *len)
{
    json_t *o = json_pack("{s:s}", "error", msg);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (s == NULL) {
        s = strdup("{\"error\":\"internal error\"}");
        if (s == NULL)
            abort();
    }
    *len = strlen(s);
    return s;
}


size_t gw_json_put_str(char *out, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    char *o = out;
    *o++ = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char c = *p;
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
        } else if (c < 0x20) {
            *o++ = '\\';
            switch (c) {
            case '\b': *o++ = 'b'; break;
            case '\f': *o++ = 'f'; break;
            case '\n': *o++ = 'n'; break;
            case '\r': *o++ = 'r'; break;
            case '\t': *o++ = 't'; break;
            default:
                *o++ = 'u';
                *o++ = '0';
                *o++ = '0';
                *o++ = hex[c >> 4];
                *o++ = hex[c & 15];
            }
        } else {
            *o++ = (char)c; /* UTF-8 passes as it is (PostgreSQL's text is valid UTF-8) */
        }
    }
    *o++ = '"';
    return (size_t)(o - out);
}
