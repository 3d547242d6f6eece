/*
 * services/gateway/gw_auth.c - bearer tokens: JWT HS256 (libjwt) with the
 * key from [gateway] jwt_secret; verification per request and the token
 * printer behind `gateway --token USER_ID` (./shop token).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jwt.h>

#include "gateway.h"

/* Verified tokens, so a client's every request does not pay the base64,
 * JSON and HMAC of a full verification (about a fifth of the gateway's CPU
 * per request on GET /api/orders/{id}): direct-mapped on a hash of the
 * token, an entry holding the whole token text (a hit is a byte-for-byte
 * match with a token verified with this process's key, never a hash match
 * alone), its exp and sub.  exp is checked on every hit.  Tokens longer
 * than GW_AUTH_TOK_MAX are verified every time.  One loop thread: no lock. */
#define GW_AUTH_SLOTS 256u
#define GW_AUTH_TOK_MAX 480u

typedef struct {
    uint16_t len;                 /* token bytes; 0 = empty slot */
    long long exp;                /* unix seconds */
    char sub[GW_ID_MAX + 1];
    char tok[GW_AUTH_TOK_MAX];
} gw_auth_entry_t;

static gw_auth_entry_t gw_auth_cache[GW_AUTH_SLOTS];

static gw_auth_entry_t *gw_auth__slot(const char *tok, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)tok[i];
        h *= 1099511628211ull;
    }
    return &gw_auth_cache[(h ^ (h >> 32)) & (GW_AUTH_SLOTS - 1)];
}

/* Verifies "Bearer <jwt>" (HS256 with the configured key, exp required and
 * in the future, sub an id).  Returns 0 and the subject, or -1 with why. */
int gw_auth(gw_t *gw, const http1c_header_t *hdr, char *sub, const char **why)
{
    if (hdr == NULL) {
        *why = "missing bearer token";
        return -1;
    }
    if (hdr->value_len < 8 || !gw_streq_ci(hdr->value, 7, "bearer ") || hdr->value_len > 4096) {
        *why = "authorization must be a bearer token";
        return -1;
    }
    const char *t = hdr->value + 7;
    size_t tlen = hdr->value_len - 7;
    gw_auth_entry_t *e = tlen <= GW_AUTH_TOK_MAX ? gw_auth__slot(t, tlen) : NULL;
    if (e != NULL && e->len == tlen && memcmp(e->tok, t, tlen) == 0) {
        if (e->exp <= (long long)time(NULL)) {
            e->len = 0;
            *why = "token expired";
            return -1;
        }
        strcpy(sub, e->sub);
        return 0;
    }
    char tok[4097];
    memcpy(tok, t, tlen);
    tok[tlen] = '\0';
    jwt_t *j = NULL;
    if (jwt_decode(&j, tok, (const unsigned char *)gw->secret, (int)strlen(gw->secret)) != 0 ||
        j == NULL) {
        *why = "invalid token";
        return -1;
    }
    int rc = -1;
    if (jwt_get_alg(j) != JWT_ALG_HS256) {
        *why = "token algorithm must be HS256";
        goto out;
    }
    errno = 0;
    long exp = jwt_get_grant_int(j, "exp");
    if (errno != 0) {
        *why = "token has no exp";
        goto out;
    }
    if ((long long)exp <= (long long)time(NULL)) {
        *why = "token expired";
        goto out;
    }
    const char *s = jwt_get_grant(j, "sub");
    if (s == NULL || !gw_id_ok(s, strlen(s))) {
        *why = "token has no valid sub";
        goto out;
    }
    strcpy(sub, s);
    if (e != NULL) {
        e->len = (uint16_t)tlen;
        memcpy(e->tok, t, tlen);
        e->exp = (long long)exp;
        strcpy(e->sub, s);
    }
    rc = 0;
out:
    jwt_free(j);
    return rc;
}

int gw_auth_print_token(const config_t *cfg, const char *user)
{
    if (!gw_id_ok(user, strlen(user))) {
        gw_log("--token: user id must be 1..64 of [A-Za-z0-9._-]");
        return 2;
    }
    const char *key = config_str(cfg, CONFIG_GATEWAY_JWT_SECRET);
    jwt_t *j = NULL;
    char *s = NULL;
    long now = (long)time(NULL);
    if (jwt_new(&j) != 0 || jwt_add_grant(j, "sub", user) != 0 ||
        jwt_add_grant_int(j, "iat", now) != 0 ||
        jwt_add_grant_int(j, "exp", now + (long)config_int(cfg, CONFIG_GATEWAY_TOKEN_TTL)) != 0 ||
        jwt_set_alg(j, JWT_ALG_HS256, (const unsigned char *)key, (int)strlen(key)) != 0 ||
        (s = jwt_encode_str(j)) == NULL) {
        gw_log("jwt: cannot make a token");
        jwt_free(j);
        return 1;
    }
    printf("%s\n", s);
    free(s);
    jwt_free(j);
    return 0;
}
