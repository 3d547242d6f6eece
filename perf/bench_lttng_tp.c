/*
 * perf/bench_lttng_tp.c - builds the probes of the shop_bench LTTng-UST
 * provider (bench_lttng_tp.h) into the bench program.
 */
#define LTTNG_UST_TRACEPOINT_CREATE_PROBES
#include "bench_lttng_tp.h"
