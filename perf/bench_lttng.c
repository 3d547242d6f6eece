/*
 * perf/bench_lttng.c - the LTTng-UST baseline of `./shop bench ring`: the
 * same span payload (bench_span.h) recorded as one shop_bench:span event
 * per span, in the same harness loop as bench_ring (bench_harness.h).
 *
 * Needs a live session with the event enabled (perf/bench-ring.sh makes
 * one).  Usage, by hand:
 *   lttng create b --snapshot -o var/lttng && lttng enable-event -u 'shop_bench:*' && lttng start
 *   bench_lttng --producers 2 --spans 2000000
 *   lttng destroy b
 *
 * Per span, like core's tracing API does (and with core's own functions):
 * the parent's trace id, a new span id from core's id generator, core's
 * clock (trace_now_ns) at start and at end (LTTng adds its own event
 * timestamp), then the tracepoint, which serialises the 14 fields into
 * LTTng's per-CPU shared-memory buffer.
 */
#define LTTNG_UST_TRACEPOINT_DEFINE
#include "bench_lttng_tp.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_harness.h"
#include "bench_span.h"
#include "core.h"

/* The remote parent every span continues, as in bench_ring. */
static trace_context_t bench_lttng_parent;

static int bench_lttng__setup(bench_ctl_t *ctl)
{
    snprintf(ctl->name, sizeof(ctl->name), "lttng");
    return 0;
}

static int bench_lttng__init(bench_ctl_t *ctl, uint32_t k)
{
    (void)ctl;
    memset(&bench_lttng_parent, 0, sizeof(bench_lttng_parent));
    trace_id_new(bench_lttng_parent.trace_id);
    trace_id_new_span(bench_lttng_parent.span_id);
    bench_lttng_parent.span_id[0] ^= (uint8_t)k;
    bench_lttng_parent.flags = TRACE_FLAG_SAMPLED;
    bench_lttng_parent.is_remote = true;
    /* The LTTng-UST constructor registered this process with the session
     * daemon before main(); the enabler may land a moment later. */
    for (int i = 0; i < 5000; i++) {
        if (lttng_ust_tracepoint_enabled(shop_bench, span)) return 0;
        usleep(1000);
    }
    fprintf(stderr, "bench_lttng: shop_bench:span is not enabled: is a session with "
                    "'lttng enable-event -u shop_bench:*' started?\n");
    return -ENOENT;
}

/* What trace_span_start + trace_span_end do besides encoding: the parent's
 * trace id, a new span id from core's generator, core's clock at start and
 * at end.  Then one event with every field. */
static inline void bench_lttng__span(const trace_context_t *parent)
{
    uint64_t sid, pid;
    trace_id_new_span((uint8_t *)&sid);
    memcpy(&pid, parent->span_id, 8);
    uint64_t start = trace_now_ns();
    uint64_t end = trace_now_ns();
    bench_lttng_ev_t ev = {
        .trace_id = parent->trace_id, .span_id = sid, .parent_id = pid,
        .name = BENCH_SPAN_NAME, .kind = BENCH_SPAN_KIND, .start_ns = start, .end_ns = end,
        .method = BENCH_V_METHOD, .route = BENCH_V_ROUTE, .path = BENCH_V_PATH,
        .scheme = BENCH_V_SCHEME, .status_code = BENCH_V_STATUS_CODE,
        .client = BENCH_V_CLIENT, .status = BENCH_SPAN_STATUS};
    lttng_ust_tracepoint(shop_bench, span, &ev);
}

static int bench_lttng__run(bench_ctl_t *ctl, uint32_t k, uint32_t *samples, uint64_t n)
{
    const trace_context_t *parent = &bench_lttng_parent;
    if (samples) {
        BENCH_TIMED_LOOP(samples, n, i, bench_lttng__span(parent));
        ctl->prod[k].written += n; /* LTTng counts its own losses; see teardown */
    } else {
        for (uint64_t i = 0; i < n; i++) bench_lttng__span(parent);
    }
    return 0;
}

static void bench_lttng__fini(bench_ctl_t *ctl, uint32_t k)
{
    (void)ctl;
    (void)k;
}

static const bench_ops_t bench_lttng_ops = {
    .impl = "lttng",
    .setup = bench_lttng__setup,
    .producer_init = bench_lttng__init,
    .producer_run = bench_lttng__run,
    .producer_fini = bench_lttng__fini,
};

int main(int argc, char **argv)
{
    return bench_main(argc, argv, &bench_lttng_ops);
}
