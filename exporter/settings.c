/*
 * exporter/settings.c - the [exporter] configuration keys and the
 * OpenTelemetry exporter variables -> exp_settings_t.
 *
 * Precedence (OTel SDK environment spec): the signal-specific
 * OTEL_EXPORTER_OTLP_TRACES_* variable (the key's own override, applied by
 * config_load) > the generic OTEL_EXPORTER_OTLP_* one (applied here) > the
 * file > the default.  Ranges are checked by config_load; this file adds
 * the rules between keys (max_export_batch_size <= max_queue_size, as the
 * SDK spec requires) and parses the endpoint and the headers list.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "exporter.h"

/* The generic variable for a key whose own variable is the _TRACES_ one,
 * when that one is unset. */
static const char *exp__generic(const config_t *c, config_id_t id, const char *generic, const char **origin)
{
    const char *o = config_origin(c, id);
    const char *g = getenv(generic);
    if (strncmp(o, "environment ", 12) != 0 && g) {
        *origin = generic;
        return g;
    }
    *origin = o;
    return config_text(c, id);
}

static int exp__bool(const char *v, bool *out)
{
    if (!strcasecmp(v, "true") || !strcasecmp(v, "1") || !strcasecmp(v, "yes") || !strcasecmp(v, "on"))
        *out = true;
    else if (!strcasecmp(v, "false") || !strcasecmp(v, "0") || !strcasecmp(v, "no") || !strcasecmp(v, "off"))
        *out = false;
    else
        return -1;
    return 0;
}

/* http[s]://ip:port[/], ip:port, [v6]:port. */
static int exp__endpoint(const char *v, bool insecure, exp_settings_t *s, char *why, size_t wl)
{
    const char *p = v;
    bool scheme = false;
    s->tls = !insecure;
    if (!strncmp(p, "http://", 7)) {
        p += 7, s->tls = false, scheme = true;
    } else if (!strncmp(p, "https://", 8)) {
        p += 8, s->tls = true, scheme = true;
    } else if (strstr(p, "://")) {
        snprintf(why, wl, "scheme must be http:// or https://");
        return -1;
    }
    (void)scheme;
    char hp[300];
    snprintf(hp, sizeof hp, "%s", p);
    char *slash = strchr(hp, '/');
    if (slash) {
        if (slash[1]) {
            snprintf(why, wl, "OTLP/gRPC takes no path");
            return -1;
        }
        *slash = 0;
    }
    snprintf(s->authority, sizeof s->authority, "%s", hp);
    char *host = hp, *colon;
    if (*host == '[') {
        char *end = strchr(host, ']');
        if (!end || end[1] != ':') {
            snprintf(why, wl, "expected [ipv6]:port");
            return -1;
        }
        *end = 0;
        host++;
        colon = end + 1;
    } else {
        colon = strrchr(host, ':');
        if (!colon) {
            snprintf(why, wl, "expected host:port");
            return -1;
        }
        *colon = 0;
    }
    char *e;
    long port = strtol(colon + 1, &e, 10);
    if (*e || port < 1 || port > 65535) {
        snprintf(why, wl, "port must be 1 to 65535");
        return -1;
    }
    unsigned char buf[16];
    const char *h = strcmp(host, "localhost") ? host : "127.0.0.1"; /* the one name resolved without DNS */
    if (strlen(h) >= sizeof s->host ||
        (inet_pton(AF_INET, h, buf) != 1 && inet_pton(AF_INET6, h, buf) != 1)) {
        snprintf(why, wl, "host must be a numeric address (no DNS on the loop)");
        return -1;
    }
    memcpy(s->host, h, strlen(h) + 1);
    s->port = (uint16_t)port;
    return 0;
}

/* W3C-baggage-like "k=v,k2=v2" (OTel spec), values percent-decoded. */
static int exp__headers(const char *v, exp_settings_t *s, char *why, size_t wl)
{
    size_t w = 0;
    s->n_headers = 0;
    const char *p = v;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        if (!*p)
            break;
        const char *eq = strchr(p, '='), *end = strchr(p, ',');
        if (!end)
            end = p + strlen(p);
        if (!eq || eq > end || eq == p) {
            snprintf(why, wl, "expected key=value pairs separated by ','");
            return -1;
        }
        if (s->n_headers == EXP_HEADERS_MAX) {
            snprintf(why, wl, "at most %d headers", EXP_HEADERS_MAX);
            return -1;
        }
        if (w + (size_t)(end - p) + 2 > sizeof s->header_store) {
            snprintf(why, wl, "too long");
            return -1;
        }
        char *k = s->header_store + w;
        for (const char *q = p; q < eq; q++)
            if (*q != ' ')
                s->header_store[w++] = (char)((*q >= 'A' && *q <= 'Z') ? *q + 32 : *q); /* h2 wants lower case */
        s->header_store[w++] = 0;
        char *val = s->header_store + w;
        for (const char *q = eq + 1; q < end; q++) {
            if (*q == '%' && q + 2 < end + 0 + 1 && q[1] && q[2]) {
                char hex[3] = {q[1], q[2], 0};
                char *e2;
                long x = strtol(hex, &e2, 16);
                if (!*e2) {
                    s->header_store[w++] = (char)x;
                    q += 2;
                    continue;
                }
            }
            s->header_store[w++] = *q;
        }
        while (w > 0 && s->header_store[w - 1] == ' ')
            w--;
        s->header_store[w++] = 0;
        s->hdr_key[s->n_headers] = k;
        s->hdr_val[s->n_headers] = val;
        s->n_headers++;
        p = end;
    }
    return 0;
}

int exp_settings_load(const config_t *c, exp_settings_t *s, char *err, size_t errlen)
{
    char why[160];
    const char *origin, *v;
    memset(s, 0, sizeof *s);

    v = exp__generic(c, CONFIG_EXPORTER_PROTOCOL, "OTEL_EXPORTER_OTLP_PROTOCOL", &origin);
    if (strcmp(v, "grpc") != 0) {
        snprintf(err, errlen, "%s=%s: only grpc is implemented ([exporter] protocol)", origin, v);
        return -EINVAL;
    }
    v = exp__generic(c, CONFIG_EXPORTER_INSECURE, "OTEL_EXPORTER_OTLP_INSECURE", &origin);
    bool insecure;
    if (exp__bool(v, &insecure) != 0) {
        snprintf(err, errlen, "%s=%s: [exporter] insecure must be true or false", origin, v);
        return -EINVAL;
    }
    v = exp__generic(c, CONFIG_EXPORTER_ENDPOINT, "OTEL_EXPORTER_OTLP_ENDPOINT", &origin);
    if (exp__endpoint(v, insecure, s, why, sizeof why) != 0) {
        snprintf(err, errlen, "%s=%s: [exporter] endpoint: %s", origin, v, why);
        return -EINVAL;
    }
    v = exp__generic(c, CONFIG_EXPORTER_COMPRESSION, "OTEL_EXPORTER_OTLP_COMPRESSION", &origin);
    if (strcmp(v, "gzip") && strcmp(v, "none")) {
        snprintf(err, errlen, "%s=%s: [exporter] compression must be none or gzip", origin, v);
        return -EINVAL;
    }
    s->gzip = !strcmp(v, "gzip");
    v = exp__generic(c, CONFIG_EXPORTER_TIMEOUT, "OTEL_EXPORTER_OTLP_TIMEOUT", &origin);
    char *e;
    long t = strtol(v, &e, 10);
    if (*e || !*v || t < 1 || t > 600000) {
        snprintf(err, errlen, "%s=%s: [exporter] timeout must be between 1 and 600000 (ms)", origin, v);
        return -EINVAL;
    }
    s->timeout_ns = (uint64_t)t * 1000000ull;
    v = exp__generic(c, CONFIG_EXPORTER_HEADERS, "OTEL_EXPORTER_OTLP_HEADERS", &origin);
    if (exp__headers(v, s, why, sizeof why) != 0) {
        snprintf(err, errlen, "%s=%s: [exporter] headers: %s", origin, v, why);
        return -EINVAL;
    }
    s->batch_max = (uint32_t)config_int(c, CONFIG_EXPORTER_BATCH);
    s->queue_max = (uint32_t)config_int(c, CONFIG_EXPORTER_QUEUE);
    if (s->batch_max > s->queue_max) {
        const char *ob = config_origin(c, CONFIG_EXPORTER_BATCH), *oq = config_origin(c, CONFIG_EXPORTER_QUEUE);
        snprintf(err, errlen,
                 "%s%s=%u is larger than %s%s=%u: [exporter] max_export_batch_size must be <= max_queue_size",
                 !strncmp(ob, "environment ", 12) ? ob + 12 : "max_export_batch_size from ",
                 !strncmp(ob, "environment ", 12) ? "" : ob, s->batch_max,
                 !strncmp(oq, "environment ", 12) ? oq + 12 : "max_queue_size from ",
                 !strncmp(oq, "environment ", 12) ? "" : oq, s->queue_max);
        return -EINVAL;
    }
    s->concurrent_max = (uint32_t)config_int(c, CONFIG_EXPORTER_CONCURRENT);
    s->delay_ns = (uint64_t)config_int(c, CONFIG_EXPORTER_DELAY) * 1000000ull;
    s->export_timeout_ns = (uint64_t)config_int(c, CONFIG_EXPORTER_EXPORT_TIMEOUT) * 1000000ull;
    snprintf(s->metrics_addr, sizeof s->metrics_addr, "%s", config_str(c, CONFIG_EXPORTER_METRICS_ADDRESS));
    unsigned char buf[16];
    if (inet_pton(AF_INET, s->metrics_addr, buf) != 1 && inet_pton(AF_INET6, s->metrics_addr, buf) != 1) {
        snprintf(err, errlen, "%s: [exporter] metrics_address = %s: must be a numeric IPv4/IPv6 address",
                 config_origin(c, CONFIG_EXPORTER_METRICS_ADDRESS), s->metrics_addr);
        return -EINVAL;
    }
    s->metrics_port = (uint16_t)config_int(c, CONFIG_EXPORTER_METRICS_PORT);
    s->ring_create = !strcmp(config_str(c, CONFIG_EXPORTER_RING_ATTACH), "create");
    return 0;
}

int exp_settings_describe(const exp_settings_t *s, char *out, size_t cap)
{
    return snprintf(out, cap,
                    "endpoint=%s://%s (%s:%u) compression=%s timeout=%llums headers=%zu "
                    "max_export_batch_size=%u max_queue_size=%u max_concurrent_exports=%u schedule_delay=%llums export_timeout=%llums "
                    "metrics=%s:%u ring_attach=%s",
                    s->tls ? "https" : "http", s->authority, s->host, s->port, s->gzip ? "gzip" : "none",
                    (unsigned long long)(s->timeout_ns / 1000000), s->n_headers, s->batch_max, s->queue_max, s->concurrent_max,
                    (unsigned long long)(s->delay_ns / 1000000),
                    (unsigned long long)(s->export_timeout_ns / 1000000), s->metrics_addr, s->metrics_port,
                    s->ring_create ? "create" : "wait");
}
