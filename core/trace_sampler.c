/*
 * core/trace_sampler.c - OTel samplers (SDK spec "Sampling") and span
 * limits (SDK spec "Span Limits"), configured from OTEL_* variables.
 *
 * TraceIdRatioBased: we follow the consistent-probability rule of the
 * current OTel spec (and W3C Trace Context level 2's random trace-id bits):
 * R = the lowest 56 bits of the trace id (bytes 9..15 read big-endian),
 * T = round((1 - ratio) * 2^56), sampled iff R >= T.  Every process and
 * every SDK using this rule agrees on the decision for a given trace id,
 * and a lower ratio's sampled set is a subset of a higher one's.
 */
#include "core.h"
#include "trace_sampler.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define TWO_POW_56 72057594037927936.0

uint64_t trace_sampler__randomness(const uint8_t *id)
{
    uint64_t r = 0;
    for (int i = 9; i < 16; i++)
        r = r << 8 | id[i];
    return r;
}

static const struct {
    const char *name;
    trace_sampler_kind_t kind;
} sampler_names[] = {
    {"always_on", TRACE_SAMPLER_ALWAYS_ON},
    {"always_off", TRACE_SAMPLER_ALWAYS_OFF},
    {"traceidratio", TRACE_SAMPLER_TRACEIDRATIO},
    {"parentbased_always_on", TRACE_SAMPLER_PARENTBASED_ALWAYS_ON},
    {"parentbased_always_off", TRACE_SAMPLER_PARENTBASED_ALWAYS_OFF},
    {"parentbased_traceidratio", TRACE_SAMPLER_PARENTBASED_TRACEIDRATIO},
};

int trace_sampler_parse(const char *name, const char *arg, trace_sampler_t *out, char *err,
                        size_t errlen)
{
    size_t i, n = sizeof sampler_names / sizeof sampler_names[0];
    for (i = 0; i < n; i++)
        if (strcmp(name, sampler_names[i].name) == 0)
            break;
    if (i == n) {
        snprintf(err, errlen,
                 "OTEL_TRACES_SAMPLER=%s: unknown sampler (always_on, always_off, traceidratio, "
                 "parentbased_always_on, parentbased_always_off, parentbased_traceidratio)",
                 name);
        return -EINVAL;
    }
    out->kind = sampler_names[i].kind;
    out->ratio = 1.0;
    if ((out->kind == TRACE_SAMPLER_TRACEIDRATIO ||
         out->kind == TRACE_SAMPLER_PARENTBASED_TRACEIDRATIO) &&
        arg != NULL && *arg != '\0') {
        char *end;
        errno = 0;
        double r = strtod(arg, &end);
        while (*end == ' ')
            end++;
        if (errno != 0 || end == arg || *end != '\0' || !(r >= 0.0 && r <= 1.0)) {
            snprintf(err, errlen,
                     "OTEL_TRACES_SAMPLER_ARG=%s: not a probability for %s (0.0 to 1.0)", arg,
                     name);
            return -EINVAL;
        }
        out->ratio = r;
    }
    double t = round((1.0 - out->ratio) * TWO_POW_56);
    out->threshold = (uint64_t)t;
    return 0;
}

int trace_sampler_from_env(trace_sampler_t *out, char *err, size_t errlen)
{
    const char *name = getenv("OTEL_TRACES_SAMPLER");
    if (name == NULL || *name == '\0')
        name = "parentbased_always_on";
    return trace_sampler_parse(name, getenv("OTEL_TRACES_SAMPLER_ARG"), out, err, errlen);
}

bool trace_sampler_should_sample(const trace_sampler_t *s, const trace_context_t *parent,
                                 const uint8_t *trace_id)
{
    bool has_parent = parent != NULL && trace_id_is_valid(parent->trace_id, TRACE_ID_SIZE);
    switch (s->kind) {
    case TRACE_SAMPLER_ALWAYS_ON:
        return true;
    case TRACE_SAMPLER_ALWAYS_OFF:
        return false;
    case TRACE_SAMPLER_TRACEIDRATIO:
        return trace_sampler__randomness(trace_id) >= s->threshold;
    case TRACE_SAMPLER_PARENTBASED_ALWAYS_ON:
    case TRACE_SAMPLER_PARENTBASED_ALWAYS_OFF:
    case TRACE_SAMPLER_PARENTBASED_TRACEIDRATIO:
        /* ParentBased defaults: a sampled parent (remote or local) -> sample,
         * an unsampled one -> drop; only a root consults the delegate. */
        if (has_parent)
            return (parent->flags & TRACE_FLAG_SAMPLED) != 0;
        if (s->kind == TRACE_SAMPLER_PARENTBASED_ALWAYS_ON)
            return true;
        if (s->kind == TRACE_SAMPLER_PARENTBASED_ALWAYS_OFF)
            return false;
        return trace_sampler__randomness(trace_id) >= s->threshold;
    }
    return false; /* unreachable: every kind is handled above */
}

void trace_limits_default(trace_limits_t *l)
{
    l->attr_count = TRACE_LIMIT_DEFAULT;
    l->attr_value_len = TRACE_LIMIT_UNLIMITED;
    l->event_count = TRACE_LIMIT_DEFAULT;
    l->link_count = TRACE_LIMIT_DEFAULT;
    l->event_attr_count = TRACE_LIMIT_DEFAULT;
    l->link_attr_count = TRACE_LIMIT_DEFAULT;
}

/* Reads a non-negative integer variable into *v when set.  0 = ok/unset. */
static int env_u32(const char *var, uint32_t *v, char *err, size_t errlen)
{
    const char *s = getenv(var);
    if (s == NULL || *s == '\0')
        return 0;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || *s == '-' || x > UINT32_MAX - 1ULL) {
        snprintf(err, errlen, "%s=%s: not a non-negative integer (0 to %u)", var, s,
                 UINT32_MAX - 1u);
        return -EINVAL;
    }
    *v = (uint32_t)x;
    return 0;
}

int trace_limits_from_env(trace_limits_t *l, char *err, size_t errlen)
{
    int rc;
    trace_limits_default(l);
    /* The general OTEL_ATTRIBUTE_* first, then the span-specific ones win. */
    uint32_t gcount = l->attr_count, glen = l->attr_value_len;
    if ((rc = env_u32("OTEL_ATTRIBUTE_COUNT_LIMIT", &gcount, err, errlen)) != 0 ||
        (rc = env_u32("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", &glen, err, errlen)) != 0)
        return rc;
    l->attr_count = gcount;
    l->attr_value_len = glen;
    l->event_attr_count = gcount;
    l->link_attr_count = gcount;
    if ((rc = env_u32("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", &l->attr_count, err, errlen)) != 0 ||
        (rc = env_u32("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", &l->attr_value_len, err,
                      errlen)) != 0 ||
        (rc = env_u32("OTEL_SPAN_EVENT_COUNT_LIMIT", &l->event_count, err, errlen)) != 0 ||
        (rc = env_u32("OTEL_SPAN_LINK_COUNT_LIMIT", &l->link_count, err, errlen)) != 0 ||
        (rc = env_u32("OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT", &l->event_attr_count, err, errlen)) !=
            0 ||
        (rc = env_u32("OTEL_LINK_ATTRIBUTE_COUNT_LIMIT", &l->link_attr_count, err, errlen)) != 0)
        return rc;
    return 0;
}
