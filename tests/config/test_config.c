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

    unlink(path);
    return tap_done();
}
