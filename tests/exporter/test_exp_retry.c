/*
 * tests/exporter/test_exp_retry.c - exporter/retry.c: which gRPC codes are
 * retried (OTLP spec table), RetryInfo honoured, backoff bounds, budget.
 */
#include <string.h>

#include "exporter.h"
#include "grpc.h"
#include "otlp_proto.h"
#include "tap.h"

int main(void)
{
    static const struct {
        int code;
        bool retry, retry_with_info;
    } table[] = {
        {GRPC_STATUS_CANCELLED, true, true},          {GRPC_STATUS_UNKNOWN, false, false},
        {GRPC_STATUS_INVALID_ARGUMENT, false, false}, {GRPC_STATUS_DEADLINE_EXCEEDED, true, true},
        {GRPC_STATUS_NOT_FOUND, false, false},        {GRPC_STATUS_ALREADY_EXISTS, false, false},
        {GRPC_STATUS_PERMISSION_DENIED, false, false}, {GRPC_STATUS_RESOURCE_EXHAUSTED, false, true},
        {GRPC_STATUS_FAILED_PRECONDITION, false, false}, {GRPC_STATUS_ABORTED, true, true},
        {GRPC_STATUS_OUT_OF_RANGE, true, true},       {GRPC_STATUS_UNIMPLEMENTED, false, false},
        {GRPC_STATUS_INTERNAL, false, false},         {GRPC_STATUS_UNAVAILABLE, true, true},
        {GRPC_STATUS_DATA_LOSS, true, true},          {GRPC_STATUS_UNAUTHENTICATED, false, false},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        tap_check(retry_is_retryable(table[i].code, false) == table[i].retry &&
                      retry_is_retryable(table[i].code, true) == table[i].retry_with_info,
                  "%s: retryable %s, with RetryInfo %s", retry_status_name(table[i].code),
                  table[i].retry ? "yes" : "no", table[i].retry_with_info ? "yes" : "no");
    }
    retry_policy_t p;
    retry_policy_default(&p);
    bool ok = true;
    for (unsigned a = 0; a < 12; a++) {
        uint64_t d = 1000000000ull << (a < 5 ? a : 5);
        if (d > p.max_ns)
            d = p.max_ns;
        uint64_t lo = retry_backoff_ns(&p, a, 0), hi = retry_backoff_ns(&p, a, d / 2);
        uint64_t mid = retry_backoff_ns(&p, a, 0x123456789abcdefull);
        if (lo != d / 2 || hi != d / 2 + d / 2 || mid < lo || mid > hi)
            ok = false;
    }
    tap_check(ok, "backoff: attempt k waits in [d/2, d], d = min(1 s * 2^k, 30 s)");
    tap_check(retry_backoff_ns(&p, 100, ~0ull) <= p.max_ns, "backoff never exceeds max after many attempts");

    exp_result_t r = {.status = GRPC_STATUS_UNAVAILABLE, .message = "", .retry_delay_ns = -1, .partial_msg = ""};
    uint64_t now = 1000, dl = now + 60000000000ull;
    retry_verdict_t v = retry_decide(&p, &r, 0, now, dl, 7);
    tap_check(v.action == RETRY_AGAIN && v.delay_ns >= 500000000ull && v.delay_ns <= 1000000000ull,
              "UNAVAILABLE: retry after backoff (%llu ns)", (unsigned long long)v.delay_ns);
    r.retry_delay_ns = 3500000000ll;
    v = retry_decide(&p, &r, 0, now, dl, 7);
    tap_check(v.action == RETRY_AGAIN && v.delay_ns == 3500000000ull, "RetryInfo delay is honoured exactly");
    r.status = GRPC_STATUS_RESOURCE_EXHAUSTED;
    v = retry_decide(&p, &r, 0, now, dl, 7);
    tap_check(v.action == RETRY_AGAIN && v.delay_ns == 3500000000ull, "RESOURCE_EXHAUSTED with RetryInfo: retried");
    r.retry_delay_ns = -1;
    v = retry_decide(&p, &r, 0, now, dl, 7);
    tap_check(v.action == RETRY_GIVE_UP && v.reason == RING_DROP_REJECTED,
              "RESOURCE_EXHAUSTED without RetryInfo: dropped REJECTED");
    r.status = GRPC_STATUS_INVALID_ARGUMENT;
    v = retry_decide(&p, &r, 0, now, dl, 7);
    tap_check(v.action == RETRY_GIVE_UP && v.reason == RING_DROP_REJECTED, "INVALID_ARGUMENT: dropped REJECTED");
    r.status = GRPC_STATUS_UNAVAILABLE;
    r.retry_delay_ns = 5000000000ll;
    v = retry_decide(&p, &r, 3, now, now + 4000000000ull, 7);
    tap_check(v.action == RETRY_GIVE_UP && v.reason == RING_DROP_EXPIRED,
              "retry that would start after the export timeout: dropped EXPIRED");
    v = retry_decide(&p, &r, 3, dl + 1, dl, 7);
    tap_check(v.action == RETRY_GIVE_UP && v.reason == RING_DROP_EXPIRED, "past the deadline: EXPIRED");
    r.status = GRPC_STATUS_OK;
    v = retry_decide(&p, &r, 0, now, dl, 7);
    tap_check(v.action == RETRY_DONE, "OK: done");

    /* RetryInfo inside a google.rpc.Status, as grpc-status-details-bin carries it */
    Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
    d.seconds = 2;
    d.nanos = 500000000;
    Google__Rpc__RetryInfo ri = GOOGLE__RPC__RETRY_INFO__INIT;
    ri.retry_delay = &d;
    uint8_t rib[64];
    size_t ril = google__rpc__retry_info__pack(&ri, rib);
    Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT, other = GOOGLE__PROTOBUF__ANY__INIT;
    any.type_url = (char *)"type.googleapis.com/google.rpc.RetryInfo";
    any.value.data = rib;
    any.value.len = ril;
    other.type_url = (char *)"type.googleapis.com/google.rpc.DebugInfo";
    Google__Protobuf__Any *anys[] = {&other, &any};
    Google__Rpc__Status st = GOOGLE__RPC__STATUS__INIT;
    st.code = 14;
    st.n_details = 2;
    st.details = anys;
    uint8_t sb[256];
    size_t sl = google__rpc__status__pack(&st, sb);
    tap_check(retry_info_delay_ns(sb, sl) == 2500000000ll, "RetryInfo found among details: 2.5 s");
    st.n_details = 1;
    sl = google__rpc__status__pack(&st, sb);
    tap_check(retry_info_delay_ns(sb, sl) == -1, "no RetryInfo: -1");
    tap_check(retry_info_delay_ns((const uint8_t *)"\xff\xff\xff", 3) == -1, "malformed details: -1");
    tap_check(retry_info_delay_ns(NULL, 0) == -1, "no details: -1");
    return tap_done();
}
