/*
 * tests/fuzz/fuzz_gateway_json.c - the gateway's own parsers beside jansson
 * (services/gateway/gw_json.c, compiled in): the raw-member scanner that
 * finds "amount" in a body jansson accepted, the exact cents parser and the
 * JSON error body.  (Its request heads go through http1c_parse_request:
 * fuzz_http1_request.)  Asserts, as the gateway uses them:
 *  - a body jansson accepts (duplicates rejected) whose "amount" is a number:
 *    the scanner finds it, inside the body, and its text decodes to the very
 *    number jansson read;
 *  - gw_parse_cents on any bytes: success only for 1..13 digits, an optional
 *    '.' and at most two digits, > 0, and then the exact cents; else a reason;
 *  - gw_error_json on any message: a JSON object whose "error" is a string
 *    (the message itself when it is valid UTF-8).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "gateway.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_cents(const char *s, size_t n)
{
    int64_t cents = -1;
    const char *why = NULL;
    int rc = gw_parse_cents(s, n, &cents, &why);
    /* the reference: digits[.digits], by hand */
    size_t i = 0, ip = 0, fd = 0;
    int64_t v = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9' && ip < 14) {
        v = v * 10 + (s[i++] - '0');
        ip++;
    }
    bool good = ip >= 1 && ip <= 13;
    if (good && i < n && s[i] == '.') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9' && fd < 3) {
            v = v * 10 + (s[i++] - '0');
            fd++;
        }
    }
    good = good && fd <= 2 && i == n;
    for (size_t k = fd; k < 2; k++)
        v *= 10;
    good = good && v > 0;
    if (rc == 0) {
        if (!good || cents != v || why != NULL)
            abort();
    } else if (rc != -1 || good || why == NULL || strstr(why, "amount") == NULL) {
        abort();
    }
}

static void check_member(const char *body, size_t len)
{
    json_error_t je;
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (j == NULL)
        return;
    json_t *a = json_is_object(j) ? json_object_get(j, "amount") : NULL;
    size_t vl = 0;
    const char *raw = gw_json_member_raw(body, len, "amount", &vl);
    if (json_is_number(a)) {
        if (raw == NULL || raw < body || raw + vl > body + len || vl == 0)
            abort();
        json_t *n = json_loadb(raw, vl, JSON_DECODE_ANY, &je);
        if (n == NULL || !json_is_number(n))
            abort();
        double x = json_number_value(n), y = json_number_value(a);
        if (!(x == y || (isnan(x) && isnan(y))))
            abort();
        json_decref(n);
        check_cents(raw, vl);
    } else if (raw != NULL && (raw < body || raw + vl > body + len)) {
        abort();
    }
    /* the other members the gateway never scans this way: memory safety only */
    if (json_is_object(j)) {
        const char *r2 = gw_json_member_raw(body, len, "user_id", &vl);
        if (r2 != NULL && (r2 < body || r2 + vl > body + len))
            abort();
    }
    json_decref(j);
}

static void check_error_json(const char *msg, size_t n)
{
    char *m = malloc(n + 1);
    if (m == NULL)
        return;
    memcpy(m, msg, n);
    m[n] = '\0';
    size_t len = 0;
    char *s = gw_error_json(m, &len);
    json_error_t je;
    json_t *j = json_loadb(s, len, 0, &je);
    json_t *e = j ? json_object_get(j, "error") : NULL;
    if (len != strlen(s) || !json_is_string(e))
        abort();
    /* valid UTF-8 without NUL: the message comes back as it was */
    json_t *probe = json_stringn(m, strlen(m));
    if (probe != NULL && strlen(m) == n && strcmp(json_string_value(e), m) != 0)
        abort();
    json_decref(probe);
    json_decref(j);
    free(s);
    free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1);
    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    check_member(buf, size);
    check_cents(buf, size < 64 ? size : 64);
    check_error_json(buf, size < 512 ? size : 512);
    free(buf);
    return 0;
}
