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
    char tok[4097];
    memcpy(tok, hdr->value + 7, hdr->value_len - 7);
    tok[hdr->value_len - 7] = '\0';
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
