/*
 * test_config - the configuration file as an operator meets it: values and
 * sizes are read, environment variables win, and every bad value is refused
 * with the file, line, key, value and allowed range (design promise 7).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "tap.h"

static char path[64];

static void write_conf(const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        perror("write test config");
        exit(2);
    }
}

/* Loads `text`; returns the error message ("" on success). */
static const char *load(const char *text, config_t **out)
{
    static char err[512];
    config_t *c = NULL;
    err[0] = 0;
    write_conf(text);
    if (config_load(path, &c, err, sizeof err) != 0)
        return err;
    if (out)
        *out = c;
    else
        config_free(c);
    return "";
}

static int contains(const char *hay, const char *needle)
{
    return strstr(hay, needle) != NULL;
}

int main(void)
{
    config_t *c;
    const char *e;
    char want[128];

    snprintf(path, sizeof path, "/tmp/shop-config-test-%d.conf", (int)getpid());
    unsetenv("SHOP_CONFIG");
    unsetenv("SHOP_RING_LANES");
    unsetenv("OTEL_TRACES_SAMPLER");
    unsetenv("OTEL_TRACES_SAMPLER_ARG");

    e = load("# ring sizing\n[ring]\nlanes = 16\nlane_size = 4M\nmax_record = 32K\n"
             "[tracing]\nsampler = parentbased_traceidratio\nsampler_arg = 0.1\n",
             &c);
    if (tap_check(!*e, "a valid file loads (%s)", e)) {
        tap_check(config_int(c, CONFIG_RING_LANES) == 16, "ring.lanes read as 16");
        tap_check(config_int(c, CONFIG_RING_LANE_SIZE) == 4 << 20, "ring.lane_size 4M is 4194304 bytes");
        tap_check(config_int(c, CONFIG_RING_MAX_RECORD) == 32 << 10, "ring.max_record 32K is 32768 bytes");
        tap_check(!strcmp(config_str(c, CONFIG_TRACING_SAMPLER), "parentbased_traceidratio"), "sampler read");
        tap_check(config_ratio(c, CONFIG_TRACING_SAMPLER_ARG) == 0.1, "sampler_arg read as 0.1");
        snprintf(want, sizeof want, "%s:4", path);
        tap_check(!strcmp(config_origin(c, CONFIG_RING_LANE_SIZE), want), "origin of lane_size is file:4 (%s)",
                  config_origin(c, CONFIG_RING_LANE_SIZE));
        tap_check(!strcmp(config_str(c, CONFIG_RING_NAME), "/shop-trace"), "unset keys keep their default");
        config_free(c);
    }

    e = load("[ring]\nlanes = 16\n\nlane_size = 1000\n", NULL);
    snprintf(want, sizeof want, "%s:4:", path);
    tap_check(contains(e, want) && contains(e, "lane_size = 1000") && contains(e, "power of two") &&
                  contains(e, "65536") && contains(e, "268435456"),
              "lane_size not a power of two: file:line, key, value, range (%s)", e);

    e = load("[ring]\nlanes = 0\n", NULL);
    tap_check(contains(e, ":2:") && contains(e, "lanes = 0") && contains(e, "between 1 and 1024"),
              "lanes = 0 refused with the range (%s)", e);

    e = load("[ring]\nlanes = many\n", NULL);
    tap_check(contains(e, "lanes = many") && contains(e, "integer"), "non-number refused (%s)", e);

    e = load("[ring]\nlane = 4\n", NULL);
    tap_check(contains(e, ":2:") && contains(e, "unknown key 'lane'"), "unknown key named (%s)", e);

    e = load("[rings]\nlanes = 4\n", NULL);
    tap_check(contains(e, "unknown section [rings]"), "unknown section named (%s)", e);

    e = load("[ring]\nlanes 4\n", NULL);
    tap_check(contains(e, ":2:") && contains(e, "syntax"), "syntax error has its line (%s)", e);

    e = load("[ring]\nlane_size = 64K\nmax_record = 32K\n", NULL);
    tap_check(contains(e, "max_record") && contains(e, ":3:"),
              "max_record larger than a quarter lane refused at its line (%s)", e);

    e = load("[tracing]\nsampler = sometimes\n", NULL);
    tap_check(contains(e, "sampler = sometimes") && contains(e, "parentbased_traceidratio"),
              "unknown sampler lists the choices (%s)", e);

    e = load("[tracing]\nsampler_arg = 1.5\n", NULL);
    tap_check(contains(e, "between 0 and 1"), "ratio out of range refused (%s)", e);

    e = load("[ring]\nname = shop\n", NULL);
    tap_check(contains(e, "name = shop") && contains(e, "'/'"), "ring name must start with / (%s)", e);

    setenv("SHOP_RING_LANES", "8", 1);
    setenv("OTEL_TRACES_SAMPLER", "always_off", 1);
    e = load("[ring]\nlanes = 16\n", &c);
    if (tap_check(!*e, "file with environment overrides loads (%s)", e)) {
        tap_check(config_int(c, CONFIG_RING_LANES) == 8, "SHOP_RING_LANES=8 wins over the file's 16");
        tap_check(!strcmp(config_origin(c, CONFIG_RING_LANES), "environment SHOP_RING_LANES"),
                  "origin says environment");
        tap_check(!strcmp(config_str(c, CONFIG_TRACING_SAMPLER), "always_off"),
                  "OTEL_TRACES_SAMPLER overrides tracing.sampler");
        config_free(c);
    }
    setenv("SHOP_RING_LANES", "2000", 1);
    e = load("[ring]\n", NULL);
    tap_check(contains(e, "environment SHOP_RING_LANES=2000") && contains(e, "1024"),
              "bad environment value names the variable (%s)", e);
    unsetenv("SHOP_RING_LANES");
    unsetenv("OTEL_TRACES_SAMPLER");

    char err[256] = "";
    c = NULL;
    tap_check(config_load("/nonexistent/shop.conf", &c, err, sizeof err) < 0 && contains(err, "/nonexistent/shop.conf"),
              "a missing file is an error naming it (%s)", err);
    tap_check(config_lookup("ring.lane_size") == CONFIG_RING_LANE_SIZE && config_lookup("ring.nope") == -1,
              "lookup by section.key");

    /* Start-up as every process does it: file -> trace_init creates the ring
     * with the file's geometry, and the file's sampler and limits apply. */
    char ring_name[64], conf[512];
    snprintf(ring_name, sizeof ring_name, "/shop-config-test-%d", (int)getpid());
    snprintf(conf, sizeof conf,
             "[ring]\nname = %s\nlanes = 4\nlane_size = 64K\nmax_record = 4K\n"
             "[tracing]\nsampler = always_on\nattribute_count_limit = 5\n",
             ring_name);
    unsetenv("OTEL_ATTRIBUTE_COUNT_LIMIT");
    unsetenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT");
    e = load(conf, &c);
    err[0] = 0;
    config_trace_t store;
    trace_options_t opt = {.service_name = "config-test", .create_ring = true};
    if (tap_check(!*e && config_trace_options(c, &store, &opt, err, sizeof err) == 0,
                  "trace options from the file (%s%s)", e, err)) {
        tap_check(store.limits.attr_count == 5, "attribute_count_limit = 5 from the file");
        setenv("OTEL_ATTRIBUTE_COUNT_LIMIT", "7", 1);
        config_trace_t s2;
        trace_options_t o2 = {0};
        int rc2 = config_trace_options(c, &s2, &o2, err, sizeof err);
        tap_check(rc2 == 0 && s2.limits.attr_count == 7, "OTEL_ATTRIBUTE_COUNT_LIMIT=7 wins over the file (%u)",
                  s2.limits.attr_count);
        unsetenv("OTEL_ATTRIBUTE_COUNT_LIMIT");
        int rc = trace_init(&opt, err, sizeof err);
        if (tap_check(rc == 0, "trace_init creates the ring from the file (%s)", rc ? err : "ok")) {
            trace_span_t sp;
            trace_span_start(&sp, NULL, "config-span", 11, TRACE_KIND_INTERNAL, NULL);
            for (int i = 0; i < 8; i++)
                trace_span_set_int(&sp, "n", i);
            trace_span_end(&sp);
            ring_t *r = NULL;
            if (tap_check(ring_open(ring_name, NULL, false, &r, err, sizeof err) == 0, "ring %s exists", ring_name)) {
                const ring_geometry_t *g = ring_geometry(r);
                tap_check(g->lanes == 4 && g->lane_size == 65536 && g->max_record == 4096,
                          "its geometry is the file's: lanes %u lane_size %llu max_record %u", g->lanes,
                          (unsigned long long)g->lane_size, g->max_record);
                ring_stats_t st;
                ring_stats(r, &st);
                tap_check(st.written == 1, "the sampled span was written (written=%llu)",
                          (unsigned long long)st.written);
                ring_record_t rec;
                tap_check(ring_consumer_open(r, err, sizeof err) == 0 && ring_consumer_peek(r, &rec, 1) == 1,
                          "and can be read back");
                span_record_t sr = {0};
                int drc = span_record_decode(rec.data, rec.len, &sr);
                tap_check(drc == 0 && sr.n_attrs == 5 && sr.dropped_attrs == 3,
                          "the file's attribute limit applied: 5 kept, 3 dropped (%u/%u)", sr.n_attrs,
                          sr.dropped_attrs);
                ring_close(r);
            }
            trace_shutdown();
        }
        ring_unlink(ring_name);
        config_free(c);
    }

    unlink(path);
    return tap_done();
}
