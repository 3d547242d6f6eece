/*
 * exporter/retry.c - the OTLP exporter's failure policy, pure functions.
 *
 * From the OTLP specification ("Failures" for OTLP/gRPC): the codes
 * CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE and
 * DATA_LOSS are retryable; RESOURCE_EXHAUSTED only when the server sent a
 * google.rpc.RetryInfo (it is saying "come back later", not "too big");
 * every other code drops the batch.  When RetryInfo is present its
 * retry_delay is waited exactly; otherwise exponential backoff with jitter.
 * The batch's budget is the BSP export timeout: a retry that could not
 * start before it ends gives the batch up as EXPIRED.
 */
#include <string.h>

#include "exporter.h"
#include "grpc.h"
#include "otlp_proto.h"

void retry_policy_default(retry_policy_t *p)
{
    p->initial_ns = 1000000000ull;
    p->max_ns = 30000000000ull;
}

bool retry_is_retryable(int status, bool has_retry_info)
{
    switch (status) {
    case GRPC_STATUS_CANCELLED:
    case GRPC_STATUS_DEADLINE_EXCEEDED:
    case GRPC_STATUS_ABORTED:
    case GRPC_STATUS_OUT_OF_RANGE:
    case GRPC_STATUS_UNAVAILABLE:
    case GRPC_STATUS_DATA_LOSS:
        return true;
    case GRPC_STATUS_RESOURCE_EXHAUSTED:
        return has_retry_info;
    default:
        return false;
    }
}

uint64_t retry_backoff_ns(const retry_policy_t *p, unsigned attempt, uint64_t rnd)
{
    uint64_t d = p->initial_ns;
    for (unsigned i = 0; i < attempt && d < p->max_ns; i++)
        d = d > p->max_ns / 2 ? p->max_ns : d * 2;
    if (d > p->max_ns)
        d = p->max_ns;
    /* "equal jitter": half fixed so retries never bunch up at ~0, half
     * random so exporters that failed together do not retry together. */
    uint64_t half = d / 2;
    return half + (half ? rnd % (half + 1) : 0);
}

retry_verdict_t retry_decide(const retry_policy_t *p, const exp_result_t *r, unsigned attempt,
                             uint64_t now_ns, uint64_t deadline_ns, uint64_t rnd)
{
    retry_verdict_t v = {.action = RETRY_DONE, .delay_ns = 0, .reason = RING_DROP_REJECTED};
    if (r->status == GRPC_STATUS_OK)
        return v;
    bool has_ri = r->retry_delay_ns >= 0;
    if (!retry_is_retryable(r->status, has_ri)) {
        v.action = RETRY_GIVE_UP;
        return v;
    }
    uint64_t d = has_ri ? (uint64_t)r->retry_delay_ns : retry_backoff_ns(p, attempt, rnd);
    if (now_ns >= deadline_ns || d >= deadline_ns - now_ns) {
        v.action = RETRY_GIVE_UP;
        v.reason = RING_DROP_EXPIRED;
        return v;
    }
    v.action = RETRY_AGAIN;
    v.delay_ns = d;
    return v;
}

int64_t retry_info_delay_ns(const uint8_t *details, size_t len)
{
    if (!details || !len)
        return -1;
    Google__Rpc__Status *st = google__rpc__status__unpack(NULL, len, details);
    if (!st)
        return -1;
    int64_t out = -1;
    for (size_t i = 0; i < st->n_details && out < 0; i++) {
        Google__Protobuf__Any *a = st->details[i];
        if (!a || !a->type_url)
            continue;
        const char *slash = strrchr(a->type_url, '/');
        const char *name = slash ? slash + 1 : a->type_url;
        if (strcmp(name, "google.rpc.RetryInfo") != 0)
            continue;
        Google__Rpc__RetryInfo *ri = google__rpc__retry_info__unpack(NULL, a->value.len, a->value.data);
        if (!ri)
            continue;
        if (ri->retry_delay && ri->retry_delay->seconds >= 0 && ri->retry_delay->nanos >= 0 &&
            ri->retry_delay->seconds < 86400 * 365)
            out = ri->retry_delay->seconds * 1000000000ll + ri->retry_delay->nanos;
        else
            out = 0;
        google__rpc__retry_info__free_unpacked(ri, NULL);
    }
    google__rpc__status__free_unpacked(st, NULL);
    return out;
}

const char *retry_status_name(int status)
{
    switch (status) {
#define RETRY__NAME(name, num) case num: return #name;
        GRPC_STATUS_MAP(RETRY__NAME)
#undef RETRY__NAME
    default: return "?";
    }
}
