/*
 * tests/core/test_sampler.c - samplers: ratio 0, 1, 0.25 (statistical bounds),
 * parent-based behaviour for sampled/unsampled remote/local parents, the
 * OTEL_TRACES_SAMPLER[_ARG] and OTEL_*_LIMIT parsing and their errors, and
 * that unsampled spans write nothing but still propagate flags 00.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core.h"
#include "tap.h"

static int ratio_count(const trace_sampler_t *s, int n)
{
    int k = 0;
    uint8_t id[16];
    for (int i = 0; i < n; i++) {
        trace_id_new(id);
        k += trace_sampler_should_sample(s, NULL, id);
    }
    return k;
}

static int records;
static void sink(void *arg, const void *rec, uint32_t len, bool truncated)
{
    (void)arg, (void)rec, (void)len, (void)truncated;
    records++;
}

int main(void)
{
    char err[256] = "";
    trace_sampler_t s;
    const int n = 200000;

    tap_check(trace_sampler_parse("traceidratio", "0", &s, err, sizeof err) == 0 && ratio_count(&s, n) == 0,
              "traceidratio 0 samples nothing");
    tap_check(trace_sampler_parse("traceidratio", "1", &s, err, sizeof err) == 0 && ratio_count(&s, n) == n,
              "traceidratio 1 samples everything");
    trace_sampler_parse("traceidratio", "0.25", &s, err, sizeof err);
    int k = ratio_count(&s, n);
    tap_check(k > n / 4 - 2000 && k < n / 4 + 2000, "traceidratio 0.25: %d of %d (expect ~%d)", k, n, n / 4);
    /* consistency: the decision is a function of the trace id */
    uint8_t id[16];
    memset(id, 0, 16);
    id[9] = 0x10; /* R = 0x10 << 48 = 1/16 of 2^56: sampled at 0.25? no: R < 0.75 * 2^56 */
    tap_check(!trace_sampler_should_sample(&s, NULL, id), "ratio uses the low 56 bits: small R not sampled at 0.25");
    id[9] = 0xf0;
    tap_check(trace_sampler_should_sample(&s, NULL, id), "ratio uses the low 56 bits: large R sampled at 0.25");

    trace_context_t sampled = {.flags = 1, .is_remote = true}, unsampled = {.flags = 0, .is_remote = true};
    trace_id_new(sampled.trace_id);
    trace_id_new_span(sampled.span_id);
    memcpy(unsampled.trace_id, sampled.trace_id, 16);
    memcpy(unsampled.span_id, sampled.span_id, 8);
    static const char *pb[] = {"parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"};
    for (int i = 0; i < 3; i++) {
        trace_sampler_parse(pb[i], i == 2 ? "0" : NULL, &s, err, sizeof err);
        for (int remote = 0; remote < 2; remote++) {
            sampled.is_remote = unsampled.is_remote = remote;
            tap_check(trace_sampler_should_sample(&s, &sampled, sampled.trace_id),
                      "%s: sampled %s parent -> sampled", pb[i], remote ? "remote" : "local");
            tap_check(!trace_sampler_should_sample(&s, &unsampled, sampled.trace_id),
                      "%s: unsampled %s parent -> not sampled", pb[i], remote ? "remote" : "local");
        }
        trace_id_new(id);
        tap_check(trace_sampler_should_sample(&s, NULL, id) == (i == 0), "%s: root uses the delegate", pb[i]);
    }
    tap_check(trace_sampler_parse("always_off", NULL, &s, err, sizeof err) == 0 &&
                  !trace_sampler_should_sample(&s, &sampled, sampled.trace_id),
              "always_off ignores a sampled parent");
    tap_check(trace_sampler_parse("always_on", NULL, &s, err, sizeof err) == 0 &&
                  trace_sampler_should_sample(&s, &unsampled, sampled.trace_id),
              "always_on ignores an unsampled parent");

    /* environment */
    setenv("OTEL_TRACES_SAMPLER", "bogus", 1);
    tap_check(trace_sampler_from_env(&s, err, sizeof err) == -EINVAL && strstr(err, "OTEL_TRACES_SAMPLER=bogus"),
              "unknown sampler: error names variable and value: %s", err);
    setenv("OTEL_TRACES_SAMPLER", "traceidratio", 1);
    setenv("OTEL_TRACES_SAMPLER_ARG", "1.5", 1);
    tap_check(trace_sampler_from_env(&s, err, sizeof err) == -EINVAL && strstr(err, "OTEL_TRACES_SAMPLER_ARG=1.5"),
              "ratio out of range: error names variable and value: %s", err);
    setenv("OTEL_TRACES_SAMPLER_ARG", "abc", 1);
    tap_check(trace_sampler_from_env(&s, err, sizeof err) == -EINVAL, "non-numeric ratio refused");
    setenv("OTEL_TRACES_SAMPLER_ARG", "0.5", 1);
    tap_check(trace_sampler_from_env(&s, err, sizeof err) == 0 && s.kind == TRACE_SAMPLER_TRACEIDRATIO &&
                  s.ratio == 0.5,
              "traceidratio 0.5 from the environment");
    unsetenv("OTEL_TRACES_SAMPLER");
    unsetenv("OTEL_TRACES_SAMPLER_ARG");
    tap_check(trace_sampler_from_env(&s, err, sizeof err) == 0 && s.kind == TRACE_SAMPLER_PARENTBASED_ALWAYS_ON,
              "default sampler is parentbased_always_on");

    trace_limits_t l;
    setenv("OTEL_ATTRIBUTE_COUNT_LIMIT", "10", 1);
    setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "20", 1);
    setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", "3", 1);
    setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "7", 1);
    tap_check(trace_limits_from_env(&l, err, sizeof err) == 0 && l.attr_count == 20 && l.event_attr_count == 10 &&
                  l.event_count == 3 && l.attr_value_len == 7 && l.link_count == 128,
              "limits from the environment, span-specific wins");
    setenv("OTEL_SPAN_LINK_COUNT_LIMIT", "-1", 1);
    tap_check(trace_limits_from_env(&l, err, sizeof err) == -EINVAL && strstr(err, "OTEL_SPAN_LINK_COUNT_LIMIT=-1"),
              "bad limit: error names variable and value: %s", err);
    unsetenv("OTEL_SPAN_LINK_COUNT_LIMIT");
    unsetenv("OTEL_ATTRIBUTE_COUNT_LIMIT");
    unsetenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT");
    unsetenv("OTEL_SPAN_EVENT_COUNT_LIMIT");
    unsetenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT");
    setenv("OTEL_TRACES_SAMPLER", "nope", 1);
    trace_options_t o = {.no_ring = true};
    tap_check(trace_init(&o, err, sizeof err) == -EINVAL && strstr(err, "OTEL_TRACES_SAMPLER=nope"),
              "trace_init refuses a bad sampler: %s", err);
    unsetenv("OTEL_TRACES_SAMPLER");

    /* unsampled spans: write nothing, propagate flags 00 */
    trace_sampler_parse("always_off", NULL, &s, err, sizeof err);
    o = (trace_options_t){.sampler = &s, .sink = sink};
    tap_check(trace_init(&o, err, sizeof err) == 0, "init with always_off and a sink");
    static const trace_scope_t scope = TRACE_SCOPE("test", "1");
    trace_span_t sp;
    trace_span_start(&sp, &scope, "x", 1, TRACE_KIND_SERVER, NULL);
    trace_span_set_str(&sp, "k", "v");
    trace_span_end(&sp);
    tap_check(records == 0 && !trace_span_is_recording(&sp), "unsampled span writes nothing");
    tap_check(trace_id_is_valid(sp.ctx.trace_id, 16) && trace_id_is_valid(sp.ctx.span_id, 8) && sp.ctx.flags == 0,
              "unsampled span still has a context with flags 00");
    trace_shutdown();
    return tap_done();
}
